//! Content-defined chunking of a store path's content stream.
//!
//! The content stream is the bytes of all regular files of a store path, concatenated in NAR
//! order. [`ContentChunker`] cuts it with FastCDC (v2020, normalization level 1), and forces a
//! boundary at the start and at the end of every file of at least the minimum chunk size, so a
//! large file is chunked on its own, whatever its neighbours, while small files flow together.
//! The cut points depend only on the bytes and the [`ChunkerParams`], which the NAR record keeps:
//! the same NAR always makes the same chunks.

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// The chunker's parameters: its algorithm version and chunk sizes in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// The chunking algorithm's version (1: FastCDC v2020, level 1, forced file boundaries).
    pub version: u8,
    /// Minimum chunk size (except where a boundary is forced, and at the stream's end).
    pub min: u32,
    /// Average chunk size; a power of two.
    pub avg: u32,
    /// Maximum chunk size.
    pub max: u32,
}

/// Why chunker parameters cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunker parameters {0:?}: need version 1, {min}<=min<=avg<=max<={max}, avg a power of two", min = fastcdc::v2020::MINIMUM_MIN, max = fastcdc::v2020::MAXIMUM_MAX)]
pub struct InvalidParams(pub ChunkerParams);

impl ChunkerParams {
    /// The format's chunk sizes: 256 KiB / 1 MiB / 4 MiB (the cost per backend object dominates).
    pub const V1: ChunkerParams = ChunkerParams { version: 1, min: 256 << 10, avg: 1 << 20, max: 4 << 20 };

    /// Tiny chunks (64 B / 256 B / 1 KiB) so tests make many chunks from small data.
    pub const TINY: ChunkerParams = ChunkerParams { version: 1, min: 64, avg: 256, max: 1024 };

    /// Checks the parameters are ones this build can chunk with.
    pub fn validate(&self) -> Result<(), InvalidParams> {
        use fastcdc::v2020::*;
        let ok = self.version == 1
            && (MINIMUM_MIN..=MINIMUM_MAX).contains(&self.min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&self.avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&self.max)
            && self.min <= self.avg
            && self.avg <= self.max
            && self.avg.is_power_of_two();
        if ok { Ok(()) } else { Err(InvalidParams(*self)) }
    }
}

/// Cuts a content stream into chunks as its bytes arrive, holding at most about one maximum chunk.
#[derive(Debug)]
pub struct ContentChunker {
    params: ChunkerParams,
    masks: Masks,
    pending: BytesMut,
}

#[derive(Debug, Clone, Copy)]
struct Masks {
    small: u64,
    large: u64,
}

impl ContentChunker {
    /// A chunker with the given parameters.
    pub fn new(params: ChunkerParams) -> Result<Self, InvalidParams> {
        params.validate()?;
        // FastCDC's normalization level 1: a harder mask below the average size, an easier above.
        let bits = params.avg.trailing_zeros() as usize;
        let masks = Masks { small: fastcdc::v2020::MASKS[bits + 1], large: fastcdc::v2020::MASKS[bits - 1] };
        Ok(ContentChunker { params, masks, pending: BytesMut::new() })
    }

    /// The parameters in use.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Whether a file of `size` bytes gets boundaries forced at both of its ends.
    pub fn is_large_file(&self, size: u64) -> bool {
        size >= u64::from(self.params.min)
    }

    /// A file of `size` bytes starts: a large one closes the chunk in progress.
    pub fn start_file(&mut self, size: u64, out: &mut Vec<Bytes>) {
        if self.is_large_file(size) {
            self.flush(out);
        }
    }

    /// A file of `size` bytes ends: a large one closes its last chunk.
    pub fn end_file(&mut self, size: u64, out: &mut Vec<Bytes>) {
        if self.is_large_file(size) {
            self.flush(out);
        }
    }

    /// Adds bytes of the stream; pushes every chunk that is now complete onto `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Bytes>) {
        self.pending.extend_from_slice(data);
        // A cut within the first `max` bytes depends on nothing after them.
        while self.pending.len() >= self.params.max as usize {
            out.push(self.take_chunk());
        }
    }

    /// The stream ends: pushes the remaining chunks onto `out`.
    pub fn finish(mut self, out: &mut Vec<Bytes>) {
        self.flush(out);
    }

    fn flush(&mut self, out: &mut Vec<Bytes>) {
        while !self.pending.is_empty() {
            out.push(self.take_chunk());
        }
    }

    /// Cuts the next chunk off the pending bytes. It is copied out, so a chunk in flight does not
    /// pin the chunker's whole buffer (memory stays at about one buffer plus the chunks in flight).
    fn take_chunk(&mut self) -> Bytes {
        let n = self.cut_point();
        let chunk = Bytes::copy_from_slice(&self.pending[..n]);
        self.pending.advance(n);
        chunk
    }

    fn cut_point(&self) -> usize {
        let p = &self.params;
        let (_, n) = fastcdc::v2020::cut(
            &self.pending,
            p.min as usize,
            p.avg as usize,
            p.max as usize,
            self.masks.small,
            self.masks.large,
            self.masks.small << 1,
            self.masks.large << 1,
        );
        n.max(1).min(self.pending.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.r#gen()).collect()
    }

    /// Chunks a list of files (as the content stream would see them), feeding `step` bytes at a time.
    fn chunk_files(params: ChunkerParams, files: &[&[u8]], step: usize) -> Vec<Bytes> {
        let mut c = ContentChunker::new(params).unwrap();
        let mut out = vec![];
        for f in files {
            c.start_file(f.len() as u64, &mut out);
            for piece in f.chunks(step.max(1)) {
                c.push(piece, &mut out);
            }
            c.end_file(f.len() as u64, &mut out);
        }
        c.finish(&mut out);
        out
    }

    #[test]
    fn chunks_concatenate_to_the_stream_and_respect_sizes() {
        let data = random(200_000, 1);
        let chunks = chunk_files(ChunkerParams::TINY, &[&data], 777);
        assert_eq!(chunks.concat(), data);
        assert!(chunks.len() > 100);
        for c in &chunks[..chunks.len() - 1] {
            assert!((64..=1024).contains(&c.len()), "{}", c.len());
        }
    }

    #[test]
    fn cut_points_do_not_depend_on_how_bytes_arrive() {
        let data = random(50_000, 2);
        let a = chunk_files(ChunkerParams::TINY, &[&data], 1);
        let b = chunk_files(ChunkerParams::TINY, &[&data], 50_000);
        let c = chunk_files(ChunkerParams::TINY, &[&data], 4095);
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn a_large_file_is_chunked_the_same_whatever_its_neighbours() {
        let big = random(20_000, 3);
        let left = random(100, 4);
        let other = random(33, 5);
        let alone = chunk_files(ChunkerParams::TINY, &[&big], 100);
        let with_neighbours = chunk_files(ChunkerParams::TINY, &[&left, &big, &other], 100);
        for chunk in &alone {
            assert!(with_neighbours.contains(chunk));
        }
    }

    #[test]
    fn small_files_share_chunks() {
        let files: Vec<Vec<u8>> = (0..1000).map(|i| random(40, 100 + i)).collect();
        let refs: Vec<&[u8]> = files.iter().map(|f| f.as_slice()).collect();
        let chunks = chunk_files(ChunkerParams::TINY, &refs, 7);
        assert_eq!(chunks.concat(), files.concat());
        assert!(chunks.len() < 1000 * 40 / 200, "{} chunks", chunks.len());
    }

    #[test]
    fn params_are_validated() {
        assert!(ChunkerParams::V1.validate().is_ok());
        assert!(ChunkerParams::TINY.validate().is_ok());
        assert!(ChunkerParams { avg: 1000, ..ChunkerParams::TINY }.validate().is_err());
        assert!(ChunkerParams { version: 2, ..ChunkerParams::TINY }.validate().is_err());
        assert!(ChunkerParams { min: 2048, ..ChunkerParams::TINY }.validate().is_err());
    }
}
