//! A NAR as an `AsyncRead + AsyncSeek`: any offset, by binary search, with read-ahead.
//!
//! A seek only moves the position (checked arithmetic: an overflow or a negative position is an
//! error, never a panic); the next read starts a fresh [`render_range`] stream from there. The
//! first chunks read after a seek are kept in the chunk cache, so seeking within them costs no
//! backend request; a long sequential read goes on through the cache without filling it.

use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures::stream::{BoxStream, StreamExt};
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};

use super::RenderError;
use super::segment::SegmentTable;
use super::stream::{StreamOptions, render_range};
use crate::castore::ChunkStore;

/// A seekable reader of one NAR.
pub struct NarReader {
    table: Arc<SegmentTable>,
    store: ChunkStore,
    options: StreamOptions,
    pos: u64,
    stream: Option<BoxStream<'static, Result<Bytes, RenderError>>>,
    pending: Bytes,
}

impl std::fmt::Debug for NarReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NarReader").field("pos", &self.pos).field("nar_size", &self.table.nar_size()).finish()
    }
}

impl NarReader {
    /// A reader at offset 0 of the NAR of `table`. Each seek starts a stream with `options`
    /// (their `cached_chunks` count from the position sought).
    pub fn new(table: Arc<SegmentTable>, store: ChunkStore, options: StreamOptions) -> Self {
        NarReader { table, store, options, pos: 0, stream: None, pending: Bytes::new() }
    }

    /// The NAR's size.
    pub fn nar_size(&self) -> u64 {
        self.table.nar_size()
    }
}

impl AsyncRead for NarReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.pending.is_empty() {
            if this.pos >= this.table.nar_size() {
                return Poll::Ready(Ok(()));
            }
            let stream = this.stream.get_or_insert_with(|| {
                render_range(this.table.clone(), this.store.clone(), this.pos..u64::MAX, this.options)
            });
            match stream.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(bytes))) => this.pending = bytes,
                Poll::Ready(Some(Err(e))) => {
                    this.stream = None;
                    return Poll::Ready(Err(e.into_io()));
                }
                Poll::Ready(None) => {
                    this.stream = None;
                    return Poll::Ready(Err(RenderError::ShortContent { offset: this.pos }.into_io()));
                }
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        this.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for NarReader {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let invalid =
            || io::Error::new(io::ErrorKind::InvalidInput, "seek to a negative or overflowing position");
        let new = match position {
            SeekFrom::Start(n) => n,
            SeekFrom::Current(d) => self.pos.checked_add_signed(d).ok_or_else(invalid)?,
            SeekFrom::End(d) => self.table.nar_size().checked_add_signed(d).ok_or_else(invalid)?,
        };
        if new != self.pos {
            self.pos = new;
            self.stream = None;
            self.pending = Bytes::new();
        }
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}
