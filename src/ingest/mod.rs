//! Ingest: an uploaded NAR, plain or compressed, becomes chunks and a NAR record, in one streaming
//! pass with bounded memory.
//!
//! The upload is decompressed ([`compression`]), parsed by the streaming NAR reader, and its
//! regular files' bytes — the content stream — are cut by the [`ContentChunker`] into chunks that
//! are uploaded concurrently (at most [`IngestOptions::upload_concurrency`] at once) while the
//! parse goes on. The tree becomes directories ([`TreeBuilder`]). Only when the whole NAR has been
//! read and checked, and every chunk is durable, is the NAR record written: nothing of a rejected
//! NAR becomes reachable. The whole pass runs under a GC lease ([`Lease`]).

pub mod compression;
pub mod digests;
pub mod import;
mod tree;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::task::JoinSet;

pub use compression::{Compression, CompressionError};
use digests::{DigestingReader, Digests, Want};
use tree::TreeBuilder;

use crate::backend::BackendError;
use crate::castore::chunk::{PutOutcome, chunk_key};
use crate::castore::directory::DirectoryError;
use crate::castore::lease::Lease;
use crate::castore::{ChunkRef, ChunkStore, ChunkerParams, ContentChunker, Digest, NarRecord};
use crate::nix::nar::{NarError, NarEvent, NarReader};

/// How an ingest runs.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// The chunker (the format's [`ChunkerParams::V1`] unless a test injects others).
    pub chunker: ChunkerParams,
    /// At most this many chunk uploads at once.
    pub upload_concurrency: usize,
    /// The upload's key ends with `.br` (brotli has no magic bytes).
    pub br_suffix: bool,
    /// The NarHash the NAR must have (e.g. from its narinfo), if known.
    pub expected_nar_hash: Option<[u8; 32]>,
    /// The NarSize the NAR must have, if known.
    pub expected_nar_size: Option<u64>,
    /// How long to wait for a running GC to end before giving up (it makes the client retry).
    pub gc_wait: Duration,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            chunker: ChunkerParams::V1,
            upload_concurrency: 8,
            br_suffix: false,
            expected_nar_hash: None,
            expected_nar_size: None,
            gc_wait: Duration::from_secs(120),
        }
    }
}

/// What an ingest made.
#[derive(Debug, Clone)]
pub struct Ingested {
    /// The NAR record, now durable at its key.
    pub record: NarRecord,
    /// The upload as received (its MD5 is the upload's ETag).
    pub received: Digests,
    /// How the upload was compressed.
    pub compression: Compression,
    /// Chunks in the content stream.
    pub chunks: usize,
    /// Chunks uploaded (the others already existed).
    pub chunks_uploaded: usize,
    /// Bytes written to the backend for chunks (compressed).
    pub stored_chunk_bytes: u64,
}

/// Why an upload was not ingested.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The chunker parameters are not usable.
    #[error(transparent)]
    Chunker(#[from] crate::castore::chunker::InvalidParams),
    /// The compression is not one nargate reads.
    #[error(transparent)]
    Compression(#[from] CompressionError),
    /// The NAR is malformed (or its compressed stream is, reported as I/O).
    #[error("invalid NAR: {0}")]
    Nar(#[from] NarError),
    /// The tree breaks a rule (a size overflows).
    #[error("invalid NAR tree: {0}")]
    Tree(#[from] DirectoryError),
    /// The upload could not be read.
    #[error("reading the upload: {0}")]
    Read(#[source] std::io::Error),
    /// The NAR's hash is not the one expected.
    #[error("NarHash mismatch: expected sha256:{expected}, got sha256:{actual}")]
    NarHashMismatch {
        /// Expected, nixbase32.
        expected: String,
        /// Computed, nixbase32.
        actual: String,
    },
    /// The NAR's size is not the one expected.
    #[error("NarSize mismatch: expected {expected}, got {actual}")]
    NarSizeMismatch {
        /// Expected.
        expected: u64,
        /// Counted.
        actual: u64,
    },
    /// A GC ran during the ingest and did not end in time, or removed what the ingest needs.
    #[error("a garbage collection is in progress; retry the upload later")]
    GcConflict,
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Reads a NAR upload from `body` into `store` and writes its NAR record.
pub async fn ingest_nar<R>(
    store: &ChunkStore,
    body: R,
    options: &IngestOptions,
) -> Result<Ingested, IngestError>
where
    R: AsyncRead + Unpin + Send,
{
    let chunker = ContentChunker::new(options.chunker)?;
    let lease = Lease::acquire(store.backend().clone(), "nar ingest").await?;
    let result = ingest_under_lease(store, body, options, chunker, &lease).await;
    // A lease left behind only delays GC until it expires: not worth failing the upload for.
    let _ = lease.release().await;
    result
}

async fn ingest_under_lease<R>(
    store: &ChunkStore,
    body: R,
    options: &IngestOptions,
    mut chunker: ContentChunker,
    lease: &Lease,
) -> Result<Ingested, IngestError>
where
    R: AsyncRead + Unpin + Send,
{
    let mut received =
        BufReader::with_capacity(256 << 10, DigestingReader::new(body, Want { md5: true, sha256: false }));
    let head = received.fill_buf().await.map_err(IngestError::Read)?;
    let compression = Compression::detect(head, options.br_suffix)?;
    // An uncompressed upload is the NAR: its MD5 is computed once, on the way in.
    let nar_md5 = compression != Compression::None;
    let nar_bytes =
        DigestingReader::new(compression.decoder(&mut received), Want { md5: nar_md5, sha256: true });
    let mut nar = NarReader::new(nar_bytes);

    let mut uploads = Uploads::new(store.clone(), options.upload_concurrency, lease.may_skip_existing());
    let mut tree = TreeBuilder::default();
    let mut buf = vec![0u8; 256 << 10];
    let mut ready = Vec::new();
    while let Some(event) = nar.next().await? {
        match event {
            NarEvent::Directory { name } => tree.start_directory(name),
            NarEvent::EndDirectory => tree.end_directory()?,
            NarEvent::Symlink { name, target } => tree.symlink(name, target),
            NarEvent::File { name, executable, size } => {
                chunker.start_file(size, &mut ready);
                let mut hasher = blake3::Hasher::new();
                loop {
                    let n = nar.read_contents(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    chunker.push(&buf[..n], &mut ready);
                    uploads.add_all(&mut ready).await?;
                }
                chunker.end_file(size, &mut ready);
                uploads.add_all(&mut ready).await?;
                tree.file(name, Digest::from(hasher.finalize()), size, executable);
            }
        }
    }
    chunker.finish(&mut ready);
    uploads.add_all(&mut ready).await?;
    let nar_digests = nar.into_inner().digests();
    // The reader ends only after a complete root node, so a tree is always there.
    let (root, directories) = tree.finish().ok_or(NarError::UnexpectedEof)?;
    let (chunks, uploaded, stored_chunk_bytes) = uploads.finish().await?;

    // The decoders read multi-member streams to the end; any byte after the last one is garbage.
    if received.read(&mut [0u8; 1]).await.map_err(IngestError::Read)? != 0 {
        return Err(NarError::TrailingData.into());
    }
    let received_digests = received.into_inner().digests();
    let nar_md5 = nar_digests.md5.or(received_digests.md5).unwrap_or_default();
    let nar_hash = nar_digests.sha256.unwrap_or_default();
    check_expected(options, &nar_hash, nar_digests.size)?;

    let record = NarRecord {
        root,
        directories,
        nar_hash,
        nar_size: nar_digests.size,
        nar_md5,
        chunker: options.chunker,
        chunks,
    };
    if lease.must_recheck() {
        recheck_after_gc(store, lease, &record, options).await?;
    }
    store.backend().put(&record.key(), Bytes::from(record.encode())).await?;
    Ok(Ingested {
        chunks: record.chunks.len(),
        record,
        received: received_digests,
        compression,
        chunks_uploaded: uploaded,
        stored_chunk_bytes,
    })
}

fn check_expected(options: &IngestOptions, nar_hash: &[u8; 32], nar_size: u64) -> Result<(), IngestError> {
    use crate::nix::nixbase32::encode;
    if let Some(expected) = options.expected_nar_hash
        && expected != *nar_hash
    {
        return Err(IngestError::NarHashMismatch { expected: encode(&expected), actual: encode(nar_hash) });
    }
    if let Some(expected) = options.expected_nar_size
        && expected != nar_size
    {
        return Err(IngestError::NarSizeMismatch { expected, actual: nar_size });
    }
    Ok(())
}

/// A GC ran while this ingest started (or its lease lapsed): wait for the GC to end, then make
/// sure every chunk the record references survived it.
async fn recheck_after_gc(
    store: &ChunkStore,
    lease: &Lease,
    record: &NarRecord,
    options: &IngestOptions,
) -> Result<(), IngestError> {
    if !lease.wait_for_gc(Duration::from_millis(500), options.gc_wait).await? {
        return Err(IngestError::GcConflict);
    }
    let mut seen = HashSet::new();
    for chunk in &record.chunks {
        if seen.insert(chunk.digest) {
            match store.backend().head(&chunk_key(&chunk.digest)).await {
                Ok(_) => {}
                Err(BackendError::NotFound { .. }) => return Err(IngestError::GcConflict),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Chunk uploads in flight: at most `limit` at once, each chunk of this NAR uploaded once.
struct Uploads {
    store: ChunkStore,
    limit: usize,
    skip_existing: bool,
    in_flight: JoinSet<Result<PutOutcome, BackendError>>,
    chunks: Vec<ChunkRef>,
    seen: HashSet<Digest>,
    uploaded: usize,
    stored_bytes: u64,
}

impl Uploads {
    fn new(store: ChunkStore, limit: usize, skip_existing: bool) -> Self {
        Uploads {
            store,
            limit: limit.max(1),
            skip_existing,
            in_flight: JoinSet::new(),
            chunks: Vec::new(),
            seen: HashSet::new(),
            uploaded: 0,
            stored_bytes: 0,
        }
    }

    /// Records and starts uploading every chunk in `ready` (emptying it), waiting for earlier
    /// uploads while `limit` are in flight.
    async fn add_all(&mut self, ready: &mut Vec<Bytes>) -> Result<(), BackendError> {
        for data in ready.drain(..) {
            let digest = Digest::of(&data);
            // Chunk sizes never exceed the chunker's maximum (≤ 16 MiB), so they fit in u32.
            self.chunks.push(ChunkRef { digest, size: data.len() as u32 });
            if !self.seen.insert(digest) {
                continue;
            }
            while self.in_flight.len() >= self.limit {
                self.join_one().await?;
            }
            let (store, skip) = (self.store.clone(), self.skip_existing);
            self.in_flight.spawn(async move { store.put(digest, data, skip).await });
        }
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), BackendError> {
        if let Some(joined) = self.in_flight.join_next().await {
            let outcome = joined.map_err(|e| BackendError::Io {
                key: "chunk upload".into(),
                source: std::io::Error::other(e),
            })??;
            self.uploaded += usize::from(outcome.uploaded);
            self.stored_bytes += outcome.stored_bytes;
        }
        Ok(())
    }

    /// Waits for every upload; returns the chunk list, chunks uploaded and bytes stored.
    async fn finish(mut self) -> Result<(Vec<ChunkRef>, usize, u64), BackendError> {
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        Ok((self.chunks, self.uploaded, self.stored_bytes))
    }
}
