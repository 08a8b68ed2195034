//! A short-lived cache of the small records that GETs would read again and again: bucket
//! records, NAR entries, path infos and visible listing-index entries (DESIGN.md, "Serving").
//!
//! Entries live for a TTL. A gateway's own writes and deletes invalidate the entries they touch
//! at once, so one gateway reads its own writes; misses are never cached, so an object another
//! gateway created is visible at once; a delete or a settings change made through another gateway
//! shows within the TTL.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::records::{BucketRecord, CacheNar, PathInfo};
use crate::backend::{BackendError, ObjectMeta};

/// One cached record, by kind.
#[derive(Debug, Clone)]
pub enum Cached {
    /// A bucket record and the backend's metadata of it (its time).
    Bucket(Arc<(BucketRecord, ObjectMeta)>),
    /// A path info.
    PathInfo(Arc<PathInfo>),
    /// A cache's NAR entry.
    CacheNar(CacheNar),
    /// The newest listing-index entry of a visible key.
    Visible(Arc<ObjectMeta>),
}

/// Why a coalesced load found no record.
enum Miss<E> {
    /// There is none (not cached: another gateway may create it at any time).
    Absent,
    /// The load failed.
    Failed(E),
}

/// Settings of a [`MetaCache`].
#[derive(Debug, Clone, Copy)]
pub struct MetaConfig {
    /// At most this many records are kept (0 turns the cache off).
    pub max_entries: u64,
    /// How long a record is served from the cache.
    pub ttl: Duration,
}

/// The default number of records kept.
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;

/// The default TTL: how late another gateway's deletes and setting changes may show.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig { max_entries: DEFAULT_MAX_ENTRIES, ttl: DEFAULT_TTL }
    }
}

/// The metadata cache, keyed by the backend key of each record; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct MetaCache {
    inner: Option<moka::future::Cache<String, Cached>>,
}

impl std::fmt::Debug for MetaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaCache").field("enabled", &self.inner.is_some()).finish()
    }
}

impl MetaCache {
    /// A cache with `config`'s size and TTL.
    pub fn new(config: MetaConfig) -> Self {
        if config.max_entries == 0 || config.ttl.is_zero() {
            return MetaCache::disabled();
        }
        let inner =
            moka::future::Cache::builder().max_capacity(config.max_entries).time_to_live(config.ttl).build();
        MetaCache { inner: Some(inner) }
    }

    /// No caching: every read goes to the backend (the command-line tools use this).
    pub fn disabled() -> Self {
        MetaCache { inner: None }
    }

    /// The record at `key`, from the cache or from `load` (whose `None`, a miss, is not cached).
    /// Concurrent loads of one key share one backend read.
    pub async fn get_or_load<E, F>(&self, key: &str, load: F) -> Result<Option<Cached>, E>
    where
        F: Future<Output = Result<Option<Cached>, E>>,
        E: From<BackendError> + std::fmt::Display + Send + Sync + 'static,
    {
        let Some(inner) = &self.inner else { return load.await };
        let shared = inner
            .try_get_with(key.to_owned(), async {
                match load.await {
                    Ok(Some(value)) => Ok(value),
                    Ok(None) => Err(Miss::Absent),
                    Err(e) => Err(Miss::Failed(e)),
                }
            })
            .await;
        match shared {
            Ok(value) => Ok(Some(value)),
            Err(miss) => match Arc::try_unwrap(miss) {
                Ok(Miss::Absent) => Ok(None),
                Ok(Miss::Failed(e)) => Err(e),
                Err(shared) => match shared.as_ref() {
                    Miss::Absent => Ok(None),
                    // A waiter of another caller's failed load: the same failure, as a message.
                    Miss::Failed(e) => Err(E::from(BackendError::Remote {
                        op: "GET",
                        key: key.to_owned(),
                        message: e.to_string(),
                    })),
                },
            },
        }
    }

    /// Forgets the record at `key` (after this gateway wrote or deleted it).
    pub async fn invalidate(&self, key: &str) {
        if let Some(inner) = &self.inner {
            inner.invalidate(key).await;
        }
    }
}
