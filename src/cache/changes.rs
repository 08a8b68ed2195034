//! What a cache's writes change in its figures (store paths, NARs, logical bytes), told as they
//! happen to a [`ChangeSink`]: the gateway's metrics keep the stats summary current with them
//! between counts (see [`crate::gc::stats`]).

use std::fmt::Debug;

/// A change to one bucket's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BucketChange {
    /// Store paths added (or, negative, removed).
    pub store_paths: i64,
    /// NARs added or removed.
    pub nars: i64,
    /// Their NarSize, added or removed.
    pub logical_nar_bytes: i64,
    /// Chunk bytes written to the backend (compressed) for the bucket's new NARs.
    pub stored_chunk_bytes: i64,
    /// Chunk objects written for them.
    pub chunks: i64,
}

impl BucketChange {
    /// A store path added (`+1`) or removed (`-1`).
    pub fn store_paths(count: i64) -> Self {
        BucketChange { store_paths: count, ..Default::default() }
    }

    /// A NAR of `nar_size` bytes added (`count` 1) or removed (`count` -1).
    pub fn nar(count: i64, nar_size: u64) -> Self {
        let size = i64::try_from(nar_size).unwrap_or(i64::MAX);
        BucketChange { nars: count, logical_nar_bytes: count * size, ..Default::default() }
    }
}

/// Told of every change a cache's writes make to its figures.
pub trait ChangeSink: Send + Sync + Debug {
    /// `bucket`'s figures changed by `change`.
    fn changed(&self, bucket: &str, change: BucketChange);
}
