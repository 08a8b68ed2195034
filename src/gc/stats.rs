//! `nargate stats`: what the store holds and what dedup saves, from records and listings (no
//! chunk is read): a bucket's listing entries carry each visible key's size, the chunk listing
//! each chunk's stored size, and the NAR records of a bucket's NARs name the chunks it uses.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};

use super::GcError;
use super::mark::parse_nar_hash;
use crate::backend::{self, BackendError, DynBackend, Pages};
use crate::cache::keys::{CacheKeys, IndexEntry};
use crate::cache::list_buckets;
use crate::castore::{Digest, NarRecord};

/// One bucket's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketStats {
    /// Store paths (narinfos listed).
    pub store_paths: u64,
    /// NARs held (`nar/<narhash>.nar` listed).
    pub nars: u64,
    /// The NARs' bytes, uncompressed: what clients download.
    pub logical_nar_bytes: u64,
    /// The bytes, as stored, of the distinct chunks the bucket's NARs use (chunks shared with
    /// other buckets count in each).
    pub stored_chunk_bytes: u64,
}

/// The store's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreStats {
    /// By bucket.
    pub buckets: BTreeMap<String, BucketStats>,
    /// Distinct NARs over every bucket.
    pub distinct_nars: u64,
    /// Their bytes, uncompressed (a NAR two buckets hold counts once).
    pub distinct_nar_bytes: u64,
    /// Chunk objects stored.
    pub chunks: u64,
    /// Their bytes as stored (compressed).
    pub chunk_bytes: u64,
    /// NAR records stored.
    pub nar_records: u64,
}

impl StoreStats {
    /// Logical NAR bytes (counted once per distinct NAR) per stored chunk byte: what dedup and
    /// compression save together (0 for an empty store).
    pub fn dedup_ratio(&self) -> f64 {
        if self.chunk_bytes == 0 { 0.0 } else { self.distinct_nar_bytes as f64 / self.chunk_bytes as f64 }
    }
}

/// Counts the store, or only `bucket` and the store-wide chunks: one LIST per 1,000 listing
/// entries of each bucket, per 1,000 chunks and per 1,000 NAR records, and one GET per NAR a
/// bucket holds. Holds the stored size of every chunk (about 50 bytes each) while it counts.
pub async fn compute(backend: &DynBackend, bucket: Option<&str>) -> Result<StoreStats, GcError> {
    let mut stats = StoreStats::default();
    let mut chunk_sizes: HashMap<Digest, u64> = HashMap::new();
    let mut pages = Pages::new(backend.as_ref(), "chunks/");
    while let Some(page) = pages.next_page().await? {
        stats.chunks += page.len() as u64;
        stats.chunk_bytes += page.iter().map(|o| o.size).sum::<u64>();
        for object in page {
            if let Some(digest) = object.key.strip_prefix("chunks/").and_then(Digest::from_hex) {
                chunk_sizes.insert(digest, object.size);
            }
        }
    }
    let buckets: Vec<String> = match bucket {
        Some(bucket) => vec![bucket.to_owned()],
        None => list_buckets(backend).await?.into_iter().map(|(name, _)| name).collect(),
    };
    let mut distinct: HashMap<String, u64> = HashMap::new();
    for name in buckets {
        let prefix = CacheKeys::new(&name).index_prefix();
        let mut figures = BucketStats::default();
        let mut held = vec![];
        let mut pages = Pages::new(backend.as_ref(), &prefix);
        while let Some(page) = pages.next_page().await? {
            for object in page {
                let Some(entry) = IndexEntry::parse(&object.key[prefix.len()..]) else { continue };
                if entry.key.ends_with(".narinfo") && !entry.key.contains('/') {
                    figures.store_paths += 1;
                } else if let Some(hash) = entry.key.strip_prefix("nar/").and_then(|k| k.strip_suffix(".nar"))
                {
                    figures.nars += 1;
                    figures.logical_nar_bytes += entry.size;
                    distinct.insert(hash.to_owned(), entry.size);
                    held.extend(parse_nar_hash(hash));
                }
            }
        }
        let used = chunks_used(backend, held).await?;
        figures.stored_chunk_bytes = used.iter().filter_map(|d| chunk_sizes.get(d)).sum();
        stats.buckets.insert(name, figures);
    }
    stats.distinct_nars = distinct.len() as u64;
    stats.distinct_nar_bytes = distinct.values().sum();
    let mut pages = Pages::new(backend.as_ref(), "nars/");
    while let Some(page) = pages.next_page().await? {
        stats.nar_records += page.len() as u64;
    }
    Ok(stats)
}

/// The distinct chunks the NARs `held` use, from their records (a missing record adds none).
async fn chunks_used(backend: &DynBackend, held: Vec<[u8; 32]>) -> Result<HashSet<Digest>, GcError> {
    let records: Vec<Option<NarRecord>> = futures::stream::iter(held)
        .map(|hash| {
            let backend = backend.clone();
            async move {
                let key = crate::castore::nar_record::nar_record_key(&hash);
                match backend::get_bytes(backend.as_ref(), &key).await {
                    Ok(bytes) => Ok(NarRecord::decode(&bytes).ok()),
                    Err(BackendError::NotFound { .. }) => Ok(None),
                    Err(e) => Err(GcError::from(e)),
                }
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    Ok(records.into_iter().flatten().flat_map(|r| r.chunks.into_iter().map(|c| c.digest)).collect())
}
