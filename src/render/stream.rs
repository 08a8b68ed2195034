//! Rendering a byte range of a NAR as a stream of buffers, fit to be an HTTP response body.
//!
//! The range's segments are walked in order: literal segments are sliced out of the table, content
//! segments out of the chunks that cover the range's span of the content stream. Those chunks are
//! fetched in order, up to `read_ahead` at once, each in a task of its own so fetching goes on
//! while the consumer writes; dropping the stream aborts those tasks, so a client that hangs up
//! leaves no fetch running. The first [`StreamOptions::cached_chunks`] chunks go through the
//! chunk cache, the rest are read through it (served from it, never filling it).
//!
//! Pieces are coalesced into buffers of at least [`StreamOptions::min_buffer`] bytes: a piece that
//! is at least that long and meets an empty buffer goes out as it is (a zero-copy slice of a
//! chunk or of the table's literals), anything else is copied into the buffer until it is full,
//! so a NAR of many small files makes buffers of tens of KiB, not one per NAR token.

use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};
use tokio_util::task::AbortOnDropHandle;

use super::RenderError;
use super::segment::{SegmentKind, SegmentTable};
use crate::castore::{ChunkRef, ChunkStore};

/// How a range stream reads its chunks and cuts its buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// Chunks fetched ahead of the consumer (at least 1 is).
    pub read_ahead: usize,
    /// How many of the range's chunks, counted from its first, are read through the chunk cache
    /// and kept there; the others are served from the cache when they are in it, else fetched
    /// without being kept.
    pub cached_chunks: usize,
    /// Every buffer but the last holds at least this many bytes (0: one buffer per piece).
    pub min_buffer: usize,
}

/// A verified chunk and where it starts in the content stream.
type LoadedChunk = (u64, Bytes);

struct State {
    table: Arc<SegmentTable>,
    pos: u64,
    end: u64,
    chunks: BoxStream<'static, Result<LoadedChunk, RenderError>>,
    current: Option<LoadedChunk>,
    min_buffer: usize,
    /// Bytes copied so far into the next buffer.
    buffer: BytesMut,
    /// The part of the last piece that did not fit into the buffer it filled.
    carry: Bytes,
}

/// The indices of `table`'s chunks that NAR bytes `range` cover (none for an empty range).
pub fn chunks_covering(table: &SegmentTable, range: &Range<u64>) -> Range<usize> {
    table.chunks_covering(table.stream_offset_at(range.start), table.stream_offset_at(range.end))
}

/// Streams NAR bytes `range` (clamped to the NAR's size) of `table`, reading chunks from `store`.
pub fn render_range(
    table: Arc<SegmentTable>,
    store: ChunkStore,
    range: Range<u64>,
    options: StreamOptions,
) -> BoxStream<'static, Result<Bytes, RenderError>> {
    let end = range.end.min(table.nar_size());
    let pos = range.start.min(end);
    let chunks = fetch_chunks(&table, store, pos..end, options);
    let state = State {
        table,
        pos,
        end,
        chunks,
        current: None,
        min_buffer: options.min_buffer,
        buffer: BytesMut::new(),
        carry: Bytes::new(),
    };
    stream::try_unfold(state, |mut s| async move { Ok(s.next_buffer().await?.map(|buffer| (buffer, s))) })
        .boxed()
}

/// The chunks covering NAR range `range`, in order, fetched ahead in tasks that end when the
/// stream is dropped.
fn fetch_chunks(
    table: &SegmentTable,
    store: ChunkStore,
    range: Range<u64>,
    options: StreamOptions,
) -> BoxStream<'static, Result<LoadedChunk, RenderError>> {
    let wanted: Vec<(u64, ChunkRef)> =
        chunks_covering(table, &range).map(|i| (table.chunk_start(i), table.chunks()[i])).collect();
    stream::iter(wanted.into_iter().enumerate())
        .map(move |(n, (at, chunk))| {
            let store = store.clone();
            let keep = n < options.cached_chunks;
            AbortOnDropHandle::new(tokio::spawn(async move {
                let data = match keep {
                    true => store.get(chunk.digest, chunk.size).await,
                    false => store.get_uncached(chunk.digest, chunk.size).await,
                };
                data.map(|data| (at, data))
            }))
        })
        .buffered(options.read_ahead.max(1))
        .map(|joined| match joined {
            Ok(Ok(loaded)) => Ok(loaded),
            Ok(Err(e)) => Err(RenderError::Chunk(e)),
            Err(e) => Err(RenderError::Task(e.to_string())),
        })
        .boxed()
}

impl State {
    /// The next buffer: a long piece as it is, or pieces copied together until `min_buffer`
    /// bytes or the end of the range; `None` after the end.
    async fn next_buffer(&mut self) -> Result<Option<Bytes>, RenderError> {
        loop {
            let piece = if !self.carry.is_empty() {
                std::mem::take(&mut self.carry)
            } else if self.pos < self.end {
                let piece = self.next_piece().await?;
                self.pos += piece.len() as u64;
                piece
            } else {
                return Ok((!self.buffer.is_empty()).then(|| self.buffer.split().freeze()));
            };
            if self.buffer.is_empty() && piece.len() >= self.min_buffer {
                return Ok(Some(piece));
            }
            if self.buffer.is_empty() {
                self.buffer.reserve(self.min_buffer);
            }
            let n = piece.len().min(self.min_buffer - self.buffer.len());
            self.buffer.extend_from_slice(&piece[..n]);
            self.carry = piece.slice(n..);
            if self.buffer.len() >= self.min_buffer {
                return Ok(Some(self.buffer.split().freeze()));
            }
        }
    }

    /// The next piece from `pos`: the rest of a literal segment, or of a content segment within
    /// the current chunk.
    async fn next_piece(&mut self) -> Result<Bytes, RenderError> {
        let i = self.table.segment_at(self.pos);
        let seg = self.table.segments()[i];
        let skip = self.pos - seg.nar_offset;
        let len = (self.table.segment_len(i) - skip).min(self.end - self.pos);
        match seg.kind {
            SegmentKind::Literal { .. } => Ok(self.table.literal(i, skip, len)),
            SegmentKind::Content => {
                let at = seg.stream_offset + skip;
                let (start, data) = self.chunk_holding(at).await?;
                let from = (at - start) as usize;
                let n = (len as usize).min(data.len() - from);
                Ok(data.slice(from..from + n))
            }
        }
    }

    /// The chunk holding content-stream offset `at`, pulling chunks until it arrives.
    async fn chunk_holding(&mut self, at: u64) -> Result<LoadedChunk, RenderError> {
        loop {
            if let Some((start, data)) = &self.current
                && *start <= at
                && at < *start + data.len() as u64
            {
                return Ok((*start, data.clone()));
            }
            match self.chunks.next().await {
                Some(chunk) => self.current = Some(chunk?),
                None => return Err(RenderError::ShortContent { offset: at }),
            }
        }
    }
}
