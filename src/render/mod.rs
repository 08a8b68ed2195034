//! Rendering NARs from the content-addressed store.
//!
//! - [`segment`]: the segment table of a NAR (literal framing + content spans).
//! - [`listing`]: the NAR listing (`<storehash>.ls`) of a NAR record, as Nix writes it.
//! - [`tree`]: a store path's files, symlinks and empty directories as keys (`tree/…`), each
//!   file with its span of the NAR.
//! - [`stream`]: a byte range of a NAR as a stream of buffers, chunks fetched ahead concurrently.
//! - [`reader`]: a NAR as `AsyncRead + AsyncSeek`.
//!
//! [`Renderer`] ties them to a backend: it loads NAR records, keeps their segment tables in a
//! `moka` cache weighed by size (concurrent misses on one NAR build it once), and reads chunks
//! through the chunk store's cache of verified chunks.

pub mod listing;
pub mod reader;
pub mod segment;
pub mod stream;
pub mod tree;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;

pub use reader::NarReader;
pub use segment::{SegmentTable, TableError};
pub use stream::StreamOptions;
pub use tree::{StoreTree, TreeEntry, TreeError, TreeNode};

use crate::backend::{self, BackendError};
use crate::castore::nar_record::nar_record_key;
use crate::castore::record::RecordError;
use crate::castore::{ChunkError, ChunkStore, NarRecord};
use crate::metrics::CacheKind;

/// Why a NAR could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// No NAR record for this NarHash.
    #[error("no NAR record for sha256:{0}")]
    NotFound(String),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The NAR record is corrupt or of an unknown version.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The NAR record's tree does not render (a validated record always does).
    #[error(transparent)]
    Table(#[from] TableError),
    /// A chunk is missing or fails verification.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// The chunk list ended before the content stream did.
    #[error("content stream ends early at offset {offset}")]
    ShortContent {
        /// The content-stream offset that had no chunk.
        offset: u64,
    },
    /// The NAR listing cannot be rendered (a validated record's always can).
    #[error(transparent)]
    Listing(#[from] listing::ListingError),
    /// The store path's tree cannot be built (a validated record's always can).
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// The NAR record stored for one NarHash carries another.
    #[error("the NAR record of sha256:{wanted} is that of sha256:{found}")]
    WrongRecord {
        /// The NarHash asked for.
        wanted: String,
        /// The NarHash the record holds.
        found: String,
    },
    /// A fetch task failed, or a load shared with other readers failed (its message).
    #[error("chunk fetch task failed: {0}")]
    Task(String),
}

impl RenderError {
    /// An owned copy of an error shared by the waiters of one coalesced load: the variants
    /// callers tell apart (not found, integrity) are kept, the rest become messages.
    fn to_owned_lossy(&self) -> RenderError {
        match self {
            RenderError::NotFound(hash) => RenderError::NotFound(hash.clone()),
            RenderError::WrongRecord { wanted, found } => {
                RenderError::WrongRecord { wanted: wanted.clone(), found: found.clone() }
            }
            RenderError::Chunk(ChunkError::Integrity { digest, reason }) => {
                RenderError::Chunk(ChunkError::Integrity { digest: *digest, reason: reason.clone() })
            }
            other => RenderError::Task(other.to_string()),
        }
    }

    /// As an I/O error, for `AsyncRead`: integrity failures are `InvalidData`.
    pub fn into_io(self) -> std::io::Error {
        let kind = match &self {
            RenderError::Chunk(ChunkError::Integrity { .. }) | RenderError::ShortContent { .. } => {
                std::io::ErrorKind::InvalidData
            }
            RenderError::NotFound(_) => std::io::ErrorKind::NotFound,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, self)
    }
}

/// The error of a cache load, owned (the waiters of one load share it).
fn unshare(e: Arc<RenderError>) -> RenderError {
    Arc::try_unwrap(e).unwrap_or_else(|shared| shared.to_owned_lossy())
}

/// Reads the NAR record of `nar_hash`, which must carry that NarHash.
async fn load_record(
    backend: &crate::backend::DynBackend,
    nar_hash: &[u8; 32],
) -> Result<NarRecord, RenderError> {
    let bytes = match backend::get_bytes(backend.as_ref(), &nar_record_key(nar_hash)).await {
        Err(BackendError::NotFound { .. }) => {
            return Err(RenderError::NotFound(crate::nix::nixbase32::encode(nar_hash)));
        }
        other => other?,
    };
    let record = NarRecord::decode(&bytes)?;
    if record.nar_hash != *nar_hash {
        return Err(RenderError::WrongRecord {
            wanted: crate::nix::nixbase32::encode(nar_hash),
            found: crate::nix::nixbase32::encode(&record.nar_hash),
        });
    }
    Ok(record)
}

/// Settings of a [`Renderer`].
#[derive(Debug, Clone, Copy)]
pub struct RenderConfig {
    /// Capacity of the segment-table cache, in bytes; the cache of trees ([`Renderer::tree`]) has
    /// the same.
    pub table_cache_bytes: u64,
    /// Chunks fetched ahead of the reader.
    pub read_ahead: usize,
    /// The longest range, in chunks, whose chunks [`Renderer::range`] keeps in the chunk cache:
    /// a longer range (a whole-NAR download) reads through the cache — it is served the chunks
    /// that are there, and keeps none it fetches — so that it does not evict the chunks that
    /// readers in small pieces (rclone mounts, 128 KiB at a time) rely on. A [`NarReader`] keeps
    /// the first this many chunks it reads after each seek. Default 16 (~16 MiB of chunks).
    pub cached_range_chunks: usize,
    /// The smallest buffer a range stream yields, but for its last: smaller pieces (NAR framing,
    /// small files) are copied together up to this size, longer chunk slices go out without a
    /// copy. Default 64 KiB; 0 yields every piece as it is.
    pub min_buffer_bytes: usize,
}

impl Default for RenderConfig {
    fn default() -> Self {
        RenderConfig {
            table_cache_bytes: 256 << 20,
            read_ahead: 8,
            cached_range_chunks: 16,
            min_buffer_bytes: 64 << 10,
        }
    }
}

impl RenderConfig {
    /// The options of a stream whose first `cached_chunks` chunks are kept in the chunk cache.
    fn stream_options(&self, cached_chunks: usize) -> StreamOptions {
        StreamOptions { read_ahead: self.read_ahead, cached_chunks, min_buffer: self.min_buffer_bytes }
    }
}

/// Renders stored NARs: loads and caches their segment tables, reads their chunks.
#[derive(Clone)]
pub struct Renderer {
    chunks: ChunkStore,
    tables: moka::future::Cache<[u8; 32], Arc<SegmentTable>>,
    trees: moka::future::Cache<[u8; 32], Arc<StoreTree>>,
    config: RenderConfig,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer").field("chunks", &self.chunks).finish_non_exhaustive()
    }
}

impl Renderer {
    /// A renderer reading from `chunks` (and its backend).
    pub fn new(chunks: ChunkStore, config: RenderConfig) -> Self {
        let tables = moka::future::Cache::builder()
            .weigher(|_k: &[u8; 32], t: &Arc<SegmentTable>| u32::try_from(t.weight()).unwrap_or(u32::MAX))
            .max_capacity(config.table_cache_bytes)
            .build();
        let trees = moka::future::Cache::builder()
            .weigher(|_k: &[u8; 32], t: &Arc<StoreTree>| u32::try_from(t.weight()).unwrap_or(u32::MAX))
            .max_capacity(config.table_cache_bytes)
            .build();
        Renderer { chunks, tables, trees, config }
    }

    /// The segment table of the NAR with `nar_hash`: from the cache, or built from its record with
    /// one backend GET (concurrent misses share it).
    pub async fn table(&self, nar_hash: &[u8; 32]) -> Result<Arc<SegmentTable>, RenderError> {
        let backend = self.chunks.backend().clone();
        let hash = *nar_hash;
        let entry = self
            .tables
            .entry(hash)
            .or_try_insert_with(async move {
                let record = load_record(&backend, &hash).await?;
                Ok::<_, RenderError>(Arc::new(SegmentTable::build(&record)?))
            })
            .await
            .map_err(unshare)?;
        self.chunks.metrics().record_cache(CacheKind::SegmentTable, !entry.is_fresh());
        Ok(entry.into_value())
    }

    /// The tree (files as keys, see [`tree`]) of the NAR with `nar_hash`: from its own cache
    /// (weighed like the segment tables, with the same capacity), or built from its record with
    /// one backend GET (concurrent misses share it), its segment table taken from the table
    /// cache or built from the same record and cached there too.
    pub async fn tree(&self, nar_hash: &[u8; 32]) -> Result<Arc<StoreTree>, RenderError> {
        let backend = self.chunks.backend().clone();
        let (hash, tables, metrics) = (*nar_hash, self.tables.clone(), self.chunks.metrics().clone());
        let entry = self
            .trees
            .entry(hash)
            .or_try_insert_with(async move {
                let record = load_record(&backend, &hash).await?;
                let cached = tables.get(&hash).await;
                metrics.record_cache(CacheKind::SegmentTable, cached.is_some());
                let table = match cached {
                    Some(table) => table,
                    None => {
                        let table = Arc::new(SegmentTable::build(&record)?);
                        tables.insert(hash, table.clone()).await;
                        table
                    }
                };
                Ok::<_, RenderError>(Arc::new(StoreTree::build(&record, table)?))
            })
            .await
            .map_err(unshare)?;
        self.chunks.metrics().record_cache(CacheKind::Tree, !entry.is_fresh());
        Ok(entry.into_value())
    }

    /// A seekable reader of the NAR with `nar_hash`.
    pub async fn open(&self, nar_hash: &[u8; 32]) -> Result<NarReader, RenderError> {
        let options = self.config.stream_options(self.config.cached_range_chunks);
        Ok(NarReader::new(self.table(nar_hash).await?, self.chunks.clone(), options))
    }

    /// The NAR listing (`<storehash>.ls` JSON) of the NAR with `nar_hash`, from its record.
    pub async fn listing(&self, nar_hash: &[u8; 32]) -> Result<Vec<u8>, RenderError> {
        let record = load_record(self.chunks.backend(), nar_hash).await?;
        Ok(listing::nar_listing(&record)?)
    }

    /// Bytes `range` of the NAR with `nar_hash`, as a stream (the range is clamped to the NAR).
    /// A range of more than [`RenderConfig::cached_range_chunks`] chunks reads through the chunk
    /// cache. Dropping the stream stops its chunk fetches.
    pub async fn range(
        &self,
        nar_hash: &[u8; 32],
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes, RenderError>>, RenderError> {
        Ok(self.range_of(self.table(nar_hash).await?, range))
    }

    /// Bytes `range` of the NAR of `table` (from [`Renderer::table`]), as [`Renderer::range`].
    pub fn range_of(
        &self,
        table: Arc<SegmentTable>,
        range: Range<u64>,
    ) -> BoxStream<'static, Result<Bytes, RenderError>> {
        let covering = stream::chunks_covering(&table, &range).len();
        let cached = if covering <= self.config.cached_range_chunks { covering } else { 0 };
        stream::render_range(table, self.chunks.clone(), range, self.config.stream_options(cached))
    }
}
