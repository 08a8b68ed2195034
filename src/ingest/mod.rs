//! Ingest: an uploaded NAR, plain or compressed, becomes chunks and a NAR record, in one streaming
//! pass with bounded memory.
//!
//! The upload is decompressed ([`compression`]), parsed by the streaming NAR reader, and its
//! regular files' bytes — the content stream — are cut by the [`ContentChunker`] into chunks that
//! are uploaded concurrently (at most [`IngestOptions::upload_concurrency`] at once) while the
//! parse goes on. The tree becomes directories ([`TreeBuilder`]). Only when the whole NAR has been
//! read and checked, and every chunk is durable, is the NAR record written: nothing of a rejected
//! NAR becomes reachable. The whole pass runs under a GC lease ([`Lease`]).
//!
//! The work is spread over the cores as a pipeline of stages joined by bounded queues of blocks
//! (reference-counted [`Bytes`], never copied between stages), so memory stays bounded and a slow
//! stage holds back the ones before it:
//!
//! ```text
//! body ─▶ reader (the caller's task) ─┬─▶ MD5 of the upload [, SHA-256 when it is the NAR]  (thread)
//!                                     └─▶ decoder (task, if compressed) ─┬─▶ MD5 + SHA-256 of the NAR  (thread)
//!                                                                        └─▶ parse, BLAKE3, chunking (task)
//!                                                                              └─▶ per chunk: zstd (blocking
//!                                                                                  pool), upload (tasks)
//! ```
//!
//! **Bounds on hostile input**, each breach its own [`IngestError`]: the NAR reader's fixed
//! bounds (names of at most 255 bytes, symlink targets of 4,095, directories 256 deep), the
//! number of entries ([`IngestOptions::max_entries`]), the size of the NAR record's tree and chunk
//! list ([`IngestOptions::max_record_bytes`], which bounds the width of directories too), and the
//! xz decoder's memory ([`IngestOptions::xz_memory_limit`]). The other decoders' memory is bounded
//! by their formats (zstd's window by libzstd's default limit of 128 MiB; brotli without large
//! windows 16 MiB; bzip2, gzip and lz4 a few MiB at most).

pub mod compression;
pub mod digests;
pub mod import;
mod tree;

use std::collections::HashSet;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::io::StreamReader;
use tokio_util::task::AbortOnDropHandle;

pub use compression::{Compression, CompressionError};
use digests::{Digests, HashWorker, Want};
use tree::TreeBuilder;

use crate::backend::BackendError;
use crate::castore::chunk::{PutOutcome, ZSTD_LEVEL, chunk_key};
use crate::castore::directory::{Directory, DirectoryError, Node};
use crate::castore::lease::{Lease, LeaseTimes};
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
    /// The SHA-256 of the upload, when the body's stream checks the bytes against it itself and
    /// fails before its end if they differ (a SigV4 request's signed `x-amz-content-sha256`,
    /// which s3s verifies): an uncompressed upload's NarHash is then this, and the ingest saves
    /// its own SHA-256 pass.
    pub verified_sha256: Option<[u8; 32]>,
    /// The MD5 of the upload, when the body's stream checks the bytes against it itself (a
    /// `Content-MD5`, which the gateway's body checks): the ingest then saves its own MD5 pass.
    pub verified_md5: Option<[u8; 16]>,
    /// How long to wait for a running GC to end before giving up (it makes the client retry).
    pub gc_wait: Duration,
    /// The most entries (regular files, directories and symlinks, the root included) a NAR may
    /// have ([`IngestError::TooManyEntries`]).
    pub max_entries: u64,
    /// The most bytes the NAR record may take for its tree (the directory closure) and chunk list
    /// ([`IngestError::RecordTooLarge`]). It bounds what an ingest holds in memory for the tree,
    /// and the width of directories.
    pub max_record_bytes: u64,
    /// The most memory, in bytes, the xz decoder may use ([`IngestError::XzMemoryLimit`]).
    pub xz_memory_limit: u64,
    /// The zstd level chunks are compressed with (no part of the format: any level reads back).
    pub zstd_level: i32,
    /// Whether chunks are compressed at all: `false` stores them raw, for a backend that
    /// compresses what it stores itself (Garage does by default), which saves the ingest's most
    /// expensive pass for bytes that end up compressed at rest anyway.
    pub compress_chunks: bool,
    /// The timers of the GC lease the ingest runs under (the defaults unless a test shortens them).
    pub lease_times: LeaseTimes,
}

/// [`IngestOptions::max_entries`] by default: ten times the largest store paths of nixpkgs.
pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;
/// [`IngestOptions::max_record_bytes`] by default (a NAR record takes about 50 to 100 bytes per
/// entry: a million entries fit).
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 128 << 20;
/// [`IngestOptions::xz_memory_limit`] by default: twice what `xz -9` needs to decompress (65 MiB;
/// Nix's default, `xz -6`, needs 9 MiB).
pub const DEFAULT_XZ_MEMORY_LIMIT: u64 = 128 << 20;

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            chunker: ChunkerParams::V1,
            upload_concurrency: 8,
            br_suffix: false,
            expected_nar_hash: None,
            expected_nar_size: None,
            verified_sha256: None,
            verified_md5: None,
            gc_wait: Duration::from_secs(120),
            max_entries: DEFAULT_MAX_ENTRIES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            xz_memory_limit: DEFAULT_XZ_MEMORY_LIMIT,
            zstd_level: ZSTD_LEVEL,
            compress_chunks: true,
            lease_times: LeaseTimes::default(),
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
    /// The NAR has more entries than [`IngestOptions::max_entries`].
    #[error(
        "the NAR has more than {max} entries (files, directories and symlinks), the limit (ingest.max_entries)"
    )]
    TooManyEntries {
        /// The limit.
        max: u64,
    },
    /// The NAR's tree and chunk list would take more than [`IngestOptions::max_record_bytes`].
    #[error(
        "the NAR's directory listing and chunk list take more than {max} bytes, the limit (ingest.max_record_bytes)"
    )]
    RecordTooLarge {
        /// The limit.
        max: u64,
    },
    /// The xz stream needs more memory to decompress than [`IngestOptions::xz_memory_limit`].
    #[error(
        "the xz stream needs more than {limit} bytes of memory to decompress, the limit (ingest.xz_memory_limit_bytes)"
    )]
    XzMemoryLimit {
        /// The limit.
        limit: u64,
    },
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

/// The size of the blocks the upload is read in, and passed between the stages in.
const BLOCK: usize = 256 << 10;
/// Blocks that may wait between two stages.
const QUEUE: usize = 4;
/// The bytes a chunk takes in the NAR record's chunk list, at most (digest, size).
const CHUNK_REF_BYTES: u64 = 40;

/// Reads a NAR upload from `body` into `store` and writes its NAR record, under a lease of its
/// own that ends with it. A caller that goes on to commit the NAR to a cache takes the lease
/// itself and holds it until the commit is done ([`ingest_nar_under`]): a GC that starts in
/// between would otherwise see a NAR record that nothing references yet.
///
/// `body` is read in the caller's task; the rest of the work runs in tasks and threads of its own
/// (see the [module documentation](self)), which end with it, also when this future is dropped.
pub async fn ingest_nar<R>(
    store: &ChunkStore,
    body: R,
    options: &IngestOptions,
) -> Result<Ingested, IngestError>
where
    R: AsyncRead + Unpin + Send,
{
    let lease = take_lease(store, options).await?;
    let result = ingest_nar_under(store, body, options, &lease).await;
    // A lease left behind only delays GC until it expires: not worth failing the upload for.
    let _ = lease.release().await;
    result
}

/// Takes the GC lease an ingest runs under (DESIGN.md, "GC"), with the options' timers.
pub async fn take_lease(store: &ChunkStore, options: &IngestOptions) -> Result<Lease, IngestError> {
    Ok(Lease::acquire_with(store.backend().clone(), "nar ingest", options.lease_times).await?)
}

/// [`ingest_nar`] under a lease the caller took with [`take_lease`] and releases after
/// committing what this ingest wrote.
pub async fn ingest_nar_under<R>(
    store: &ChunkStore,
    body: R,
    options: &IngestOptions,
    lease: &Lease,
) -> Result<Ingested, IngestError>
where
    R: AsyncRead + Unpin + Send,
{
    let chunker = ContentChunker::new(options.chunker)?;
    ingest_under_lease(store, body, options, chunker, lease).await
}

async fn ingest_under_lease<R>(
    store: &ChunkStore,
    mut body: R,
    options: &IngestOptions,
    chunker: ContentChunker,
    lease: &Lease,
) -> Result<Ingested, IngestError>
where
    R: AsyncRead + Unpin + Send,
{
    let first = read_block(&mut body, NAR_MAGIC_LEN).await.map_err(IngestError::Read)?;
    let compression = Compression::detect(&first, options.br_suffix)?;
    // An uncompressed upload is the NAR: its digests are computed once, on the way in (not at
    // all those that the body's stream verifies).
    let uncompressed = compression == Compression::None;
    let received = HashWorker::start(Want {
        md5: options.verified_md5.is_none(),
        sha256: uncompressed && options.verified_sha256.is_none(),
    });
    let (nar_tx, nar_rx) = mpsc::channel(QUEUE);
    let parse = AbortOnDropHandle::new(tokio::spawn(parse(
        nar_rx,
        store.clone(),
        options.clone(),
        chunker,
        lease.may_skip_existing(),
    )));
    let (upload_tx, decoder) = if compression == Compression::None {
        (nar_tx, None)
    } else {
        let (upload_tx, upload_rx) = mpsc::channel(QUEUE);
        let decode = decode(upload_rx, nar_tx, compression, options.xz_memory_limit);
        (upload_tx, Some(AbortOnDropHandle::new(tokio::spawn(decode))))
    };
    let feed = feed(body, first, &received, upload_tx);
    let (fed, decoded, parsed) = tokio::join!(feed, join_opt(decoder), join(parse));
    let mut received = received.finish().await;
    // The body's stream ended without an error: its bytes have the digests it verified.
    received.md5 = received.md5.or(options.verified_md5);
    if uncompressed && received.sha256.is_none() {
        received.sha256 = options.verified_sha256;
    }
    // The first failure is the one to report: a read error makes everything after it fail, and
    // a decoder error makes the parse fail.
    fed?;
    let nar_digests = match decoded? {
        Some(nar_digests) => nar_digests,
        None => received.clone(),
    };
    let Parsed { root, directories, chunks, uploaded, stored_chunk_bytes } = parsed?;
    let nar_md5 = nar_digests.md5.unwrap_or_default();
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
    if lease.must_recheck().await {
        recheck_after_gc(store, lease, &record, options).await?;
    }
    store.backend().put(&record.key(), Bytes::from(record.encode())).await?;
    Ok(Ingested {
        chunks: record.chunks.len(),
        record,
        received,
        compression,
        chunks_uploaded: uploaded,
        stored_chunk_bytes,
    })
}

/// The bytes [`Compression::detect`] looks at: as long as the NAR magic's length field.
const NAR_MAGIC_LEN: usize = 8;

/// Reads the next block of `reader`: up to [`BLOCK`] bytes, at least `min` unless the input ends
/// first (empty at its end).
async fn read_block<R: AsyncRead + Unpin>(reader: &mut R, min: usize) -> std::io::Result<Bytes> {
    let mut block = BytesMut::with_capacity(BLOCK);
    while block.len() < min.max(1) && reader.read_buf(&mut block).await? != 0 {}
    Ok(block.freeze())
}

/// The reader stage: reads the upload block by block, hands each to the upload's hash worker and
/// to the next stage (the decoder, or the parse), and stops at the end of the upload, at a read
/// error, or when the next stage has stopped (it failed; its error is the one reported).
async fn feed<R: AsyncRead + Unpin>(
    mut body: R,
    first: Bytes,
    hash: &HashWorker,
    next: mpsc::Sender<std::io::Result<Bytes>>,
) -> Result<(), IngestError> {
    let mut block = first;
    while !block.is_empty() {
        hash.update(block.clone()).await;
        if next.send(Ok(block)).await.is_err() {
            return Ok(());
        }
        block = match read_block(&mut body, BLOCK).await {
            Ok(block) => block,
            Err(e) => {
                // The next stages see the stream end early; the read error is the one reported.
                let _ = next.send(Err(std::io::Error::other("the upload could not be read"))).await;
                return Err(IngestError::Read(e));
            }
        };
    }
    Ok(())
}

/// The decoder stage: decompresses the upload's blocks, hands the NAR's blocks to its own hash
/// worker and to the parse, and checks that nothing follows the compressed stream. Returns the
/// NAR's digests.
async fn decode(
    upload: mpsc::Receiver<std::io::Result<Bytes>>,
    parse: mpsc::Sender<std::io::Result<Bytes>>,
    compression: Compression,
    xz_memory_limit: u64,
) -> Result<Digests, IngestError> {
    let hash = HashWorker::start(Want { md5: true, sha256: true });
    let result = decode_into(upload, &parse, &hash, compression, xz_memory_limit).await;
    if result.is_err() {
        // The parse must not take a stream cut short for a whole NAR; this error is reported.
        let _ = parse.send(Err(std::io::Error::other("the upload could not be decompressed"))).await;
    }
    drop(parse);
    let digests = hash.finish().await;
    result.map(|()| digests)
}

async fn decode_into(
    upload: mpsc::Receiver<std::io::Result<Bytes>>,
    parse: &mpsc::Sender<std::io::Result<Bytes>>,
    hash: &HashWorker,
    compression: Compression,
    xz_memory_limit: u64,
) -> Result<(), IngestError> {
    let mut input = StreamReader::new(Blocks(upload));
    let mut decoder = compression.decoder_with_limits(&mut input, xz_memory_limit);
    let failed = |e: std::io::Error| {
        if compression == Compression::Xz && compression::is_memory_limit_error(&e) {
            IngestError::XzMemoryLimit { limit: xz_memory_limit }
        } else {
            IngestError::Nar(e.into())
        }
    };
    loop {
        let block = read_block(&mut decoder, BLOCK).await.map_err(failed)?;
        if block.is_empty() {
            break;
        }
        hash.update(block.clone()).await;
        if parse.send(Ok(block)).await.is_err() {
            return Ok(()); // the parse failed: its error is reported
        }
    }
    drop(decoder);
    // The decoders read multi-member streams to the end; any byte after the last one is garbage.
    if !input.fill_buf().await.map_err(failed)?.is_empty() {
        return Err(NarError::TrailingData.into());
    }
    Ok(())
}

/// A queue of blocks as a stream, for a [`StreamReader`].
struct Blocks(mpsc::Receiver<std::io::Result<Bytes>>);

impl futures::Stream for Blocks {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// What the parse stage made of the NAR.
struct Parsed {
    root: Node,
    directories: Vec<Directory>,
    chunks: Vec<ChunkRef>,
    uploaded: usize,
    stored_chunk_bytes: u64,
}

/// The parse stage: reads the NAR from its blocks, builds its tree, hashes and chunks its
/// contents, and uploads the chunks (at most `upload_concurrency` at once).
async fn parse(
    blocks: mpsc::Receiver<std::io::Result<Bytes>>,
    store: ChunkStore,
    options: IngestOptions,
    mut chunker: ContentChunker,
    skip_existing: bool,
) -> Result<Parsed, IngestError> {
    let mut nar = NarReader::new(StreamReader::new(Blocks(blocks)));
    let level = options.compress_chunks.then_some(options.zstd_level);
    let mut uploads = Uploads::new(store, options.upload_concurrency, skip_existing, level);
    let mut tree = TreeBuilder::default();
    let mut buf = vec![0u8; BLOCK];
    let mut ready = Vec::new();
    let mut entries = 0u64;
    while let Some(event) = nar.next().await? {
        if !matches!(event, NarEvent::EndDirectory) {
            entries += 1;
            if entries > options.max_entries {
                return Err(IngestError::TooManyEntries { max: options.max_entries });
            }
        }
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
        if tree.record_bytes() + uploads.chunks.len() as u64 * CHUNK_REF_BYTES > options.max_record_bytes {
            return Err(IngestError::RecordTooLarge { max: options.max_record_bytes });
        }
    }
    chunker.finish(&mut ready);
    uploads.add_all(&mut ready).await?;
    if tree.record_bytes() + uploads.chunks.len() as u64 * CHUNK_REF_BYTES > options.max_record_bytes {
        return Err(IngestError::RecordTooLarge { max: options.max_record_bytes });
    }
    // The reader ends only after a complete root node, so a tree is always there.
    let (root, directories) = tree.finish().ok_or(NarError::UnexpectedEof)?;
    let (chunks, uploaded, stored_chunk_bytes) = uploads.finish().await?;
    Ok(Parsed { root, directories, chunks, uploaded, stored_chunk_bytes })
}

/// Waits for a stage's task; a panic in it is carried on.
async fn join<T>(task: AbortOnDropHandle<Result<T, IngestError>>) -> Result<T, IngestError> {
    match task.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only dropping the handle aborts the task, and the handle is held here.
        Err(e) => Err(IngestError::Read(std::io::Error::other(e))),
    }
}

/// Waits for the decoder stage, if there is one: the NAR's digests.
async fn join_opt(
    task: Option<AbortOnDropHandle<Result<Digests, IngestError>>>,
) -> Result<Option<Digests>, IngestError> {
    match task {
        Some(task) => join(task).await.map(Some),
        None => Ok(None),
    }
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

/// A GC ran while this ingest started (or its lease lapsed): write the lease again, wait for the
/// GC to end, then make sure every chunk the record references survived it — in that order, or
/// a GC starting in between could miss this ingest.
async fn recheck_after_gc(
    store: &ChunkStore,
    lease: &Lease,
    record: &NarRecord,
    options: &IngestOptions,
) -> Result<(), IngestError> {
    if !lease.renew_and_wait_for_gc(Duration::from_millis(500), options.gc_wait).await? {
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
    zstd_level: Option<i32>,
    in_flight: JoinSet<Result<PutOutcome, BackendError>>,
    chunks: Vec<ChunkRef>,
    seen: HashSet<Digest>,
    uploaded: usize,
    stored_bytes: u64,
}

impl Uploads {
    fn new(store: ChunkStore, limit: usize, skip_existing: bool, zstd_level: Option<i32>) -> Self {
        Uploads {
            store,
            limit: limit.max(1),
            skip_existing,
            zstd_level,
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
            let (store, skip, level) = (self.store.clone(), self.skip_existing, self.zstd_level);
            self.in_flight.spawn(async move { store.put_at_level(digest, data, skip, level).await });
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
