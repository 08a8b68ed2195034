//! The segment table of a NAR: its bytes as an ordered list of literal framing and content spans.
//!
//! Built from a NAR record's root node and directory closure, without touching file contents: the
//! NAR writer writes each file's header and trailer around a hole, and the hole becomes a content
//! segment, the file's span of the content stream. Content segments appear in content-stream
//! order, so any NAR byte range maps to one contiguous range of the content stream.

use bytes::Bytes;

use crate::castore::directory::{Directory, Node};
use crate::castore::{ChunkRef, Digest, NarRecord};
use crate::nix::nar::{NarError, NarWriter};

/// What a segment's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// NAR framing, from `literals[at..]`.
    Literal {
        /// Offset into the table's literal bytes.
        at: u64,
    },
    /// File contents: the content stream from the segment's `stream_offset`.
    Content,
}

/// One segment: where it starts in the NAR, how many content bytes precede it, what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Its first byte's offset in the NAR.
    pub nar_offset: u64,
    /// Content-stream bytes before it (for a content segment: where its span starts).
    pub stream_offset: u64,
    /// Literal or content.
    pub kind: SegmentKind,
}

/// Why a table cannot be built from a record.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The tree is not one a NAR can hold (a validated record's always is).
    #[error(transparent)]
    Nar(#[from] NarError),
    /// A directory the tree references is not in the closure.
    #[error("directory {0} missing from the NAR record's closure")]
    MissingDirectory(Digest),
    /// The tree's NAR is not the size the record says.
    #[error("rendered NAR would be {rendered} bytes, the record says {recorded}")]
    SizeMismatch {
        /// Rendered size.
        rendered: u64,
        /// The record's NarSize.
        recorded: u64,
    },
}

/// A NAR's segments, its literal bytes and its content stream's chunks.
#[derive(Debug, Clone)]
pub struct SegmentTable {
    nar_size: u64,
    literals: Bytes,
    /// Sorted by `nar_offset`; ends with a sentinel at `nar_size`.
    segments: Vec<Segment>,
    chunks: Vec<ChunkRef>,
    /// `chunk_starts[i]`: content-stream offset of chunk `i`; one more entry: the stream's length.
    chunk_starts: Vec<u64>,
}

/// Collects literal bytes and segments as the writer emits framing.
#[derive(Default)]
struct Collector {
    literals: Vec<u8>,
    segments: Vec<Segment>,
    nar_offset: u64,
    stream_offset: u64,
    /// Literal bytes not yet closed into a segment start here.
    open_literal: usize,
}

impl std::io::Write for Collector {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.literals.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Collector {
    /// Closes the literal bytes written since the last segment into a literal segment.
    fn close_literal(&mut self) {
        let len = (self.literals.len() - self.open_literal) as u64;
        if len > 0 {
            self.segments.push(Segment {
                nar_offset: self.nar_offset,
                stream_offset: self.stream_offset,
                kind: SegmentKind::Literal { at: self.open_literal as u64 },
            });
            self.nar_offset += len;
            self.open_literal = self.literals.len();
        }
    }

    /// Adds a content segment of `size` bytes (a file's contents).
    fn content(&mut self, size: u64) {
        self.close_literal();
        if size > 0 {
            self.segments.push(Segment {
                nar_offset: self.nar_offset,
                stream_offset: self.stream_offset,
                kind: SegmentKind::Content,
            });
            self.nar_offset += size;
            self.stream_offset += size;
        }
    }
}

impl SegmentTable {
    /// Builds the table of a (validated) NAR record.
    pub fn build(record: &NarRecord) -> Result<Self, TableError> {
        let dirs = record.directory_index();
        let mut writer = NarWriter::new(Collector::default()).map_err(NarError::from)?;
        write_node(&mut writer, &record.root, &dirs)?;
        let mut collector = writer.into_inner();
        collector.close_literal();
        if collector.nar_offset != record.nar_size {
            return Err(TableError::SizeMismatch {
                rendered: collector.nar_offset,
                recorded: record.nar_size,
            });
        }
        collector.segments.push(Segment {
            nar_offset: collector.nar_offset,
            stream_offset: collector.stream_offset,
            kind: SegmentKind::Content,
        });
        let mut chunk_starts = Vec::with_capacity(record.chunks.len() + 1);
        let mut at = 0u64;
        chunk_starts.push(0);
        for c in &record.chunks {
            at += u64::from(c.size);
            chunk_starts.push(at);
        }
        collector.segments.shrink_to_fit();
        Ok(SegmentTable {
            nar_size: record.nar_size,
            literals: Bytes::from(collector.literals),
            segments: collector.segments,
            chunks: record.chunks.clone(),
            chunk_starts,
        })
    }

    /// The NAR's size.
    pub fn nar_size(&self) -> u64 {
        self.nar_size
    }

    /// The segments (the last one a sentinel at the NAR's end).
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The content stream's chunks.
    pub fn chunks(&self) -> &[ChunkRef] {
        &self.chunks
    }

    /// Approximate memory held, for the cache's weigher.
    pub fn weight(&self) -> usize {
        self.literals.len()
            + self.segments.len() * std::mem::size_of::<Segment>()
            + self.chunks.len() * (std::mem::size_of::<ChunkRef>() + 8)
            + 128
    }

    /// The index of the segment holding NAR offset `offset` (< nar_size).
    pub fn segment_at(&self, offset: u64) -> usize {
        self.segments.partition_point(|s| s.nar_offset <= offset).saturating_sub(1)
    }

    /// The segment `i`'s length in bytes.
    pub fn segment_len(&self, i: usize) -> u64 {
        self.segments[i + 1].nar_offset - self.segments[i].nar_offset
    }

    /// The content-stream offset of the first content byte at or after NAR offset `offset`.
    pub fn stream_offset_at(&self, offset: u64) -> u64 {
        if offset >= self.nar_size {
            return self.chunk_starts[self.chunks.len()];
        }
        let seg = &self.segments[self.segment_at(offset)];
        match seg.kind {
            SegmentKind::Content => seg.stream_offset + (offset - seg.nar_offset),
            SegmentKind::Literal { .. } => seg.stream_offset,
        }
    }

    /// The literal bytes of segment `i` from `skip` bytes in, `len` bytes long.
    pub fn literal(&self, i: usize, skip: u64, len: u64) -> Bytes {
        match self.segments[i].kind {
            SegmentKind::Literal { at } => {
                self.literals.slice((at + skip) as usize..(at + skip + len) as usize)
            }
            SegmentKind::Content => Bytes::new(),
        }
    }

    /// The indices of the chunks covering content-stream range `[start, end)`.
    pub fn chunks_covering(&self, start: u64, end: u64) -> std::ops::Range<usize> {
        if start >= end {
            return 0..0;
        }
        let first = self.chunk_starts.partition_point(|&s| s <= start) - 1;
        let last = self.chunk_starts.partition_point(|&s| s < end);
        first..last.min(self.chunks.len())
    }

    /// The content-stream offset where chunk `i` starts.
    pub fn chunk_start(&self, i: usize) -> u64 {
        self.chunk_starts[i]
    }
}

fn write_node(
    w: &mut NarWriter<Collector>,
    node: &Node,
    dirs: &std::collections::HashMap<Digest, &Directory>,
) -> Result<(), TableError> {
    match node {
        Node::File { size, executable, .. } => {
            w.file_header(*executable, *size).map_err(NarError::from)?;
            w.get_mut().content(*size);
            w.file_trailer(*size).map_err(NarError::from)?;
        }
        Node::Symlink { target } => w.symlink(target).map_err(NarError::from)?,
        Node::Directory { digest, .. } => {
            let dir = dirs.get(digest).ok_or(TableError::MissingDirectory(*digest))?;
            w.directory_start().map_err(NarError::from)?;
            for entry in &dir.entries {
                w.entry_start(&entry.name).map_err(NarError::from)?;
                write_node(w, &entry.node, dirs)?;
                w.entry_end().map_err(NarError::from)?;
            }
            w.directory_end().map_err(NarError::from)?;
        }
    }
    Ok(())
}
