//! Chunks at rest, and the chunk store that writes and reads them.
//!
//! A chunk is stored at `chunks/<blake3 hex of the uncompressed bytes>` as a one-byte codec tag
//! followed by the payload: [`CODEC_RAW`] (the bytes as they are) or [`CODEC_ZSTD`] (a zstd frame,
//! used only when it is smaller). Every read is verified against the digest and size the caller
//! expects: a mismatch is an [`ChunkError::Integrity`] error, never data. Verified chunks are kept
//! in a `moka` cache weighed by their size, so readers in small pieces do not fetch a chunk again;
//! a read may also go *through* the cache ([`ChunkStore::get_uncached`]: served from it, never
//! filling it), so that one long read does not evict what small readers rely on. Concurrent reads
//! of one chunk, cached or not, share one backend GET.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::OnceCell;

use super::digest::Digest;
use crate::backend::{self, BackendError, DynBackend};
use crate::metrics::{CacheKind, Metrics};

/// Codec tag: the payload is the chunk's bytes.
pub const CODEC_RAW: u8 = 0;
/// Codec tag: the payload is a zstd frame of the chunk's bytes.
pub const CODEC_ZSTD: u8 = 1;
/// The zstd level chunks are compressed with by default (ingest may choose another: the level is
/// no part of the format). Level 1 against 3, measured on 1.36 GB of real binaries and libraries
/// chunked as ingest chunks them: 9% more bytes stored, about twice the speed (see the README).
pub const ZSTD_LEVEL: i32 = 1;

/// The backend key of a chunk.
pub fn chunk_key(digest: &Digest) -> String {
    format!("chunks/{}", digest.to_hex())
}

/// Why a chunk could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The backend failed (a missing chunk is [`BackendError::NotFound`]).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The stored bytes are not the chunk they should be: corrupt, truncated, or of another codec.
    #[error("integrity error in chunk {digest}: {reason}")]
    Integrity {
        /// The chunk's expected digest.
        digest: Digest,
        /// What did not match.
        reason: String,
    },
}

/// Encodes a chunk for storage at [`ZSTD_LEVEL`]; see [`encode_chunk_at`].
pub fn encode_chunk(data: &[u8]) -> Vec<u8> {
    encode_chunk_at(data, ZSTD_LEVEL)
}

/// Encodes a chunk for storage: zstd at `level` when that is smaller, else raw. One buffer of the
/// chunk's size plus one byte, whichever codec wins: compression writes into it and gives up as
/// soon as the frame would not be smaller than the data.
pub fn encode_chunk_at(data: &[u8], level: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.resize(data.len(), 0);
    if data.len() > 1
        && let Ok(n) = zstd::bulk::compress_to_buffer(data, &mut out[1..], level)
    {
        out[0] = CODEC_ZSTD;
        out.truncate(n + 1);
        return out;
    }
    out.clear();
    out.push(CODEC_RAW);
    out.extend_from_slice(data);
    out
}

/// Encodes a chunk for storage uncompressed ([`CODEC_RAW`]).
pub fn encode_chunk_raw(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(CODEC_RAW);
    out.extend_from_slice(data);
    out
}

/// Decodes a stored chunk and checks it is `size` bytes whose BLAKE3 is `digest`.
pub fn decode_chunk(digest: &Digest, size: u32, stored: Bytes) -> Result<Bytes, ChunkError> {
    let integrity = |reason: String| ChunkError::Integrity { digest: *digest, reason };
    let data = match stored.first() {
        Some(&CODEC_RAW) => stored.slice(1..),
        Some(&CODEC_ZSTD) => {
            // Decompress at most `size` bytes: a bomb or a longer chunk fails here.
            let out = zstd::bulk::decompress(&stored[1..], size as usize)
                .map_err(|e| integrity(format!("zstd: {e}")))?;
            Bytes::from(out)
        }
        Some(tag) => return Err(integrity(format!("unknown codec tag {tag}"))),
        None => return Err(integrity("empty object".into())),
    };
    if data.len() != size as usize {
        return Err(integrity(format!("{} bytes, expected {size}", data.len())));
    }
    if Digest::of(&data) != *digest {
        return Err(integrity("BLAKE3 mismatch".into()));
    }
    Ok(data)
}

/// Writes and reads chunks on a backend, with a cache of verified chunks.
#[derive(Clone)]
pub struct ChunkStore {
    backend: DynBackend,
    cache: moka::future::Cache<Digest, Bytes>,
    loads: Arc<Loads>,
    metrics: Metrics,
}

impl std::fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStore").field("backend", &self.backend).finish_non_exhaustive()
    }
}

/// What writing a chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    /// Whether the chunk was uploaded (false: it was already there and could be skipped).
    pub uploaded: bool,
    /// The bytes written to the backend (0 when skipped).
    pub stored_bytes: u64,
}

impl ChunkStore {
    /// A chunk store over `backend`, caching up to `cache_bytes` of verified chunks.
    pub fn new(backend: DynBackend, cache_bytes: u64) -> Self {
        let cache = moka::future::Cache::builder()
            .weigher(|_k: &Digest, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .max_capacity(cache_bytes)
            .build();
        ChunkStore { backend, cache, loads: Arc::default(), metrics: Metrics::default() }
    }

    /// The same store, counting its cache's hits and misses (and the renderer's over it) in
    /// `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The metrics this store's cache lookups are counted in.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The backend the chunks live on.
    pub fn backend(&self) -> &DynBackend {
        &self.backend
    }

    /// Writes a chunk whose digest is `digest`. With `skip_existing` (allowed only under an ingest
    /// lease while no GC runs: see DESIGN.md), a chunk already present is not uploaded again.
    /// Compression (at [`ZSTD_LEVEL`]) runs off the async threads.
    pub async fn put(
        &self,
        digest: Digest,
        data: Bytes,
        skip_existing: bool,
    ) -> Result<PutOutcome, BackendError> {
        self.put_at_level(digest, data, skip_existing, Some(ZSTD_LEVEL)).await
    }

    /// Writes a chunk as [`put`](Self::put) does, compressed at zstd `level`, or stored raw
    /// when `level` is `None` (for a backend that compresses what it stores itself).
    pub async fn put_at_level(
        &self,
        digest: Digest,
        data: Bytes,
        skip_existing: bool,
        level: Option<i32>,
    ) -> Result<PutOutcome, BackendError> {
        let key = chunk_key(&digest);
        if skip_existing {
            match self.backend.head(&key).await {
                Ok(_) => return Ok(PutOutcome { uploaded: false, stored_bytes: 0 }),
                Err(BackendError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let encoded = match level {
            Some(level) => tokio::task::spawn_blocking(move || encode_chunk_at(&data, level))
                .await
                .map_err(|e| BackendError::Io { key: key.clone(), source: std::io::Error::other(e) })?,
            None => encode_chunk_raw(&data),
        };
        let stored_bytes = encoded.len() as u64;
        self.backend.put(&key, Bytes::from(encoded)).await?;
        Ok(PutOutcome { uploaded: true, stored_bytes })
    }

    /// Reads a chunk, verified against `digest` and `size`, through the cache: a cached chunk
    /// costs no request, a fetched one is kept. Concurrent reads of one chunk share one GET.
    pub async fn get(&self, digest: Digest, size: u32) -> Result<Bytes, ChunkError> {
        self.read(digest, size, true).await
    }

    /// Reads a chunk as [`get`](Self::get) does (from the cache if it is there, sharing a GET
    /// already in flight), but does not keep what it fetches: for reads too long to cache.
    pub async fn get_uncached(&self, digest: Digest, size: u32) -> Result<Bytes, ChunkError> {
        self.read(digest, size, false).await
    }

    async fn read(&self, digest: Digest, size: u32, keep: bool) -> Result<Bytes, ChunkError> {
        let cached = self.cache.get(&digest).await;
        self.metrics.record_cache(CacheKind::Chunk, cached.is_some());
        if let Some(data) = cached {
            // A table that expects another size for this digest is damaged: never serve it.
            if data.len() != size as usize {
                return Err(ChunkError::Integrity {
                    digest,
                    reason: format!("cached chunk has {} bytes, the table expects {size}", data.len()),
                });
            }
            return Ok(data);
        }
        let load = self.loads.join(digest);
        let backend = self.backend.clone();
        let outcome = load
            .cell
            .get_or_init(|| async move { fetch(backend, digest, size).await.map_err(Arc::new) })
            .await
            .clone();
        // A reader that keeps the chunk inserts it before it leaves the load, so that a reader
        // that missed the cache finds either the load still in flight or the chunk cached.
        if keep && let Ok(data) = &outcome {
            self.cache.insert(digest, data.clone()).await;
        }
        drop(load);
        outcome.map_err(unshare)
    }
}

/// Fetches, decodes and verifies one chunk (large zstd chunks are decoded off the async threads).
async fn fetch(backend: DynBackend, digest: Digest, size: u32) -> Result<Bytes, ChunkError> {
    let stored = backend::get_bytes(backend.as_ref(), &chunk_key(&digest)).await?;
    if stored.len() > 1 << 20 && stored.first() == Some(&CODEC_ZSTD) {
        tokio::task::spawn_blocking(move || decode_chunk(&digest, size, stored))
            .await
            .map_err(|e| ChunkError::Integrity { digest, reason: format!("decoder task: {e}") })?
    } else {
        decode_chunk(&digest, size, stored)
    }
}

/// The outcome of one chunk load, shared by the readers that wait for it.
type LoadCell = OnceCell<Result<Bytes, Arc<ChunkError>>>;

/// Chunk loads in flight, by digest, with how many readers wait for each. The last reader to
/// leave a load, done or dropped, removes it. A reader dropped while it runs the load's fetch
/// hands the fetch over to the next waiter (`OnceCell`), so cancelling one reader fails no other.
#[derive(Default)]
struct Loads(Mutex<HashMap<Digest, (Arc<LoadCell>, usize)>>);

impl Loads {
    /// Joins the load of `digest` in flight, or starts one.
    fn join(&self, digest: Digest) -> JoinedLoad<'_> {
        let mut map = self.lock();
        let (cell, readers) = map.entry(digest).or_insert_with(|| (Arc::new(LoadCell::new()), 0));
        *readers += 1;
        JoinedLoad { loads: self, digest, cell: cell.clone() }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Digest, (Arc<LoadCell>, usize)>> {
        // Every change to the map is whole, so it is consistent even if a holder panicked.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One reader's share of a load; dropping it leaves the load.
struct JoinedLoad<'a> {
    loads: &'a Loads,
    digest: Digest,
    cell: Arc<LoadCell>,
}

impl Drop for JoinedLoad<'_> {
    fn drop(&mut self) {
        let mut map = self.loads.lock();
        // The entry is this load's: it stays in the map while it has readers.
        if let Some((_, readers)) = map.get_mut(&self.digest) {
            *readers -= 1;
            if *readers == 0 {
                map.remove(&self.digest);
            }
        }
    }
}

/// Turns the shared error of a coalesced cache load back into an owned one.
fn unshare(e: Arc<ChunkError>) -> ChunkError {
    match Arc::try_unwrap(e) {
        Ok(e) => e,
        Err(shared) => match shared.as_ref() {
            ChunkError::Integrity { digest, reason } => {
                ChunkError::Integrity { digest: *digest, reason: reason.clone() }
            }
            ChunkError::Backend(BackendError::NotFound { key }) => {
                ChunkError::Backend(BackendError::NotFound { key: key.clone() })
            }
            ChunkError::Backend(other) => ChunkError::Backend(BackendError::Remote {
                op: "GET",
                key: String::new(),
                message: other.to_string(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_chunk_encoding() {
        // Incompressible bytes are stored raw behind tag 0.
        assert_eq!(encode_chunk(b"abc"), b"\0abc");
        // Compressible bytes are a zstd frame behind tag 1.
        let zeros = vec![0u8; 4096];
        let enc = encode_chunk(&zeros);
        assert_eq!(enc[0], CODEC_ZSTD);
        assert_eq!(&enc[1..5], &[0x28, 0xb5, 0x2f, 0xfd]); // zstd magic
        assert!(enc.len() < 100);
        for level in [-1, 1, 3, 19] {
            let enc = encode_chunk_at(&zeros, level);
            assert_eq!(enc[0], CODEC_ZSTD);
            assert_eq!(decode_chunk(&Digest::of(&zeros), 4096, enc.into()).unwrap(), zeros);
        }
    }

    #[test]
    fn decode_verifies() {
        let data = vec![7u8; 5000];
        let d = Digest::of(&data);
        let enc = Bytes::from(encode_chunk(&data));
        assert_eq!(decode_chunk(&d, 5000, enc.clone()).unwrap(), data);
        assert!(matches!(decode_chunk(&d, 4999, enc.clone()), Err(ChunkError::Integrity { .. })));
        assert!(matches!(
            decode_chunk(&Digest([0; 32]), 5000, enc.clone()),
            Err(ChunkError::Integrity { .. })
        ));
        let mut corrupt = enc.to_vec();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert!(matches!(decode_chunk(&d, 5000, corrupt.into()), Err(ChunkError::Integrity { .. })));
        assert!(matches!(decode_chunk(&d, 5000, Bytes::new()), Err(ChunkError::Integrity { .. })));
        assert!(matches!(
            decode_chunk(&d, 5000, Bytes::from_static(&[9, 1])),
            Err(ChunkError::Integrity { .. })
        ));
        let raw = Bytes::from(encode_chunk(b"xyz"));
        assert_eq!(decode_chunk(&Digest::of(b"xyz"), 3, raw).unwrap(), &b"xyz"[..]);
    }
}
