//! Rendering a byte range of a NAR as a stream of buffers.
//!
//! The range's segments are walked in order: literal segments are sliced out of the table, content
//! segments out of the chunks that cover the range's span of the content stream. Those chunks are
//! fetched in order, up to `read_ahead` at once, each in a task of its own so fetching goes on
//! while the consumer writes. Every buffer is a zero-copy slice of a literal or a verified chunk.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};

use super::RenderError;
use super::segment::{SegmentKind, SegmentTable};
use crate::castore::ChunkStore;

/// A verified chunk and where it starts in the content stream.
type LoadedChunk = (u64, Bytes);

struct State {
    table: Arc<SegmentTable>,
    pos: u64,
    end: u64,
    chunks: BoxStream<'static, Result<LoadedChunk, RenderError>>,
    current: Option<LoadedChunk>,
}

/// Streams NAR bytes `range` (clamped to the NAR's size) of `table`, reading chunks from `store`.
pub fn render_range(
    table: Arc<SegmentTable>,
    store: ChunkStore,
    range: Range<u64>,
    read_ahead: usize,
) -> BoxStream<'static, Result<Bytes, RenderError>> {
    let end = range.end.min(table.nar_size());
    let pos = range.start.min(end);
    let chunks =
        fetch_chunks(&table, store, table.stream_offset_at(pos), table.stream_offset_at(end), read_ahead);
    let state = State { table, pos, end, chunks, current: None };
    stream::try_unfold(state, |mut s| async move {
        if s.pos >= s.end {
            return Ok(None);
        }
        let piece = s.next_piece().await?;
        s.pos += piece.len() as u64;
        Ok(Some((piece, s)))
    })
    .boxed()
}

/// The chunks covering content-stream range `[start, end)`, in order, fetched ahead.
fn fetch_chunks(
    table: &SegmentTable,
    store: ChunkStore,
    start: u64,
    end: u64,
    read_ahead: usize,
) -> BoxStream<'static, Result<LoadedChunk, RenderError>> {
    let wanted: Vec<(u64, crate::castore::ChunkRef)> =
        table.chunks_covering(start, end).map(|i| (table.chunk_start(i), table.chunks()[i])).collect();
    stream::iter(wanted)
        .map(move |(at, chunk)| {
            let store = store.clone();
            tokio::spawn(async move { store.get(chunk.digest, chunk.size).await.map(|data| (at, data)) })
        })
        .buffered(read_ahead.max(1))
        .map(|joined| match joined {
            Ok(Ok(loaded)) => Ok(loaded),
            Ok(Err(e)) => Err(RenderError::Chunk(e)),
            Err(e) => Err(RenderError::Task(e.to_string())),
        })
        .boxed()
}

impl State {
    /// The next buffer from `pos`: the rest of a literal segment, or of a content segment within
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
