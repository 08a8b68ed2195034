//! `nargate stats`: what the store holds and what dedup saves, from records and listings (no
//! chunk is read): a bucket's listing entries carry each visible key's size, the chunk listing
//! each chunk's stored size, and the NAR records of a bucket's NARs name the chunks it uses.
//!
//! The figures are kept as a summary, [`SUMMARY_KEY`], so that `/metrics` costs nothing to scrape:
//! every GC and `nargate stats` count the store again and save it ([`recount`]); between counts,
//! each gateway adds to the summary it loaded what its own writes change (store paths, NARs and
//! their bytes as a commit or delete makes them, chunk bytes as an ingest writes them; see
//! [`crate::cache::changes`]). Another gateway's writes show at the next count.

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::GcError;
use super::mark::{ChunkMark, SortedSet, chunk_mark, parse_nar_hash};
use crate::backend::{self, BackendError, DynBackend, Pages};
use crate::cache::keys::{CacheKeys, IndexEntry};
use crate::cache::{BucketChange, list_buckets};
use crate::castore::record::{self, RecordError, RecordKind};
use crate::castore::{Digest, NarRecord};

/// One bucket's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// The key of the store's summary: its figures as last counted.
pub const SUMMARY_KEY: &str = "stats/summary";

const SUMMARY_VERSION: u8 = 1;

impl StoreStats {
    /// Adds what a write changed in `bucket` (a bucket not counted yet starts at zero). The
    /// store-wide distinct NARs are left to the next count: a NAR new to one bucket may be
    /// another's.
    pub fn apply(&mut self, bucket: &str, change: &BucketChange) {
        fn add(value: &mut u64, delta: i64) {
            *value = value.saturating_add_signed(delta);
        }
        let figures = match self.buckets.get_mut(bucket) {
            Some(figures) => figures,
            None => self.buckets.entry(bucket.to_owned()).or_default(),
        };
        add(&mut figures.store_paths, change.store_paths);
        add(&mut figures.nars, change.nars);
        add(&mut figures.logical_nar_bytes, change.logical_nar_bytes);
        add(&mut figures.stored_chunk_bytes, change.stored_chunk_bytes);
        add(&mut self.chunks, change.chunks);
        add(&mut self.chunk_bytes, change.stored_chunk_bytes);
    }

    /// The summary record of these figures.
    pub fn encode(&self) -> Vec<u8> {
        record::encode(RecordKind::Summary, SUMMARY_VERSION, self)
    }

    /// Reads a summary record.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        record::decode(RecordKind::Summary, SUMMARY_VERSION, bytes)
    }
}

/// Writes `stats` as the store's summary ([`SUMMARY_KEY`]); returns when it was counted (the
/// summary's LastModified, by the backend's clock).
pub async fn save(backend: &DynBackend, stats: &StoreStats) -> Result<SystemTime, GcError> {
    Ok(backend.put(SUMMARY_KEY, Bytes::from(stats.encode())).await?.last_modified)
}

/// The store's summary as last saved, and when; `None` if it was never counted (or its record
/// is one this build cannot read: it is counted again).
pub async fn load(backend: &DynBackend) -> Result<Option<(StoreStats, SystemTime)>, GcError> {
    match backend::get_bytes_with_meta(backend.as_ref(), SUMMARY_KEY).await {
        Ok((bytes, meta)) => match StoreStats::decode(&bytes) {
            Ok(stats) => Ok(Some((stats, meta.last_modified))),
            Err(e) => {
                tracing::warn!("the stats summary cannot be read ({e}): it will be counted again");
                Ok(None)
            }
        },
        Err(BackendError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Counts the whole store ([`compute`]) and saves it as the summary; returns the figures and
/// when they were counted.
pub async fn recount(backend: &DynBackend) -> Result<(StoreStats, SystemTime), GcError> {
    let stats = compute(backend, None).await?;
    let counted_at = save(backend, &stats).await?;
    Ok((stats, counted_at))
}

/// Counts the store, or only `bucket` and the store-wide chunks: one LIST per 1,000 listing
/// entries of each bucket, per 1,000 chunks and per 1,000 NAR records, and one GET per NAR a
/// bucket holds. Holds a 16-byte mark per chunk each bucket uses, and 40 bytes per distinct NAR,
/// while it counts: the chunk listing comes in digest order, and is merged once against every
/// bucket's sorted marks.
pub async fn compute(backend: &DynBackend, bucket: Option<&str>) -> Result<StoreStats, GcError> {
    let mut stats = StoreStats::default();
    let buckets: Vec<String> = match bucket {
        Some(bucket) => vec![bucket.to_owned()],
        None => list_buckets(backend).await?.into_iter().map(|(name, _)| name).collect(),
    };
    let mut distinct: SortedSet<([u8; 32], u64)> = SortedSet::default();
    let mut used = vec![];
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
                    && let Some(hash) = parse_nar_hash(hash)
                {
                    figures.nars += 1;
                    figures.logical_nar_bytes += entry.size;
                    distinct.add([(hash, entry.size)]);
                    held.push(hash);
                }
            }
        }
        used.push((name.clone(), chunks_used(backend, held).await?));
        stats.buckets.insert(name, figures);
    }
    distinct.finish();
    stats.distinct_nars = distinct.len() as u64;
    stats.distinct_nar_bytes = distinct.iter().map(|(_, size)| size).sum();
    // One pass over the chunks, a cursor per bucket into its marks.
    let mut cursors = vec![0usize; used.len()];
    let mut pages = Pages::new(backend.as_ref(), "chunks/");
    while let Some(page) = pages.next_page().await? {
        for object in page {
            stats.chunks += 1;
            stats.chunk_bytes += object.size;
            let Some(digest) = object.key.strip_prefix("chunks/").and_then(Digest::from_hex) else {
                continue;
            };
            let mark = chunk_mark(&digest);
            for ((name, marks), next) in used.iter().zip(&mut cursors) {
                let marks = marks.as_slice();
                while *next < marks.len() && marks[*next] < mark {
                    *next += 1;
                }
                if marks.get(*next) == Some(&mark)
                    && let Some(figures) = stats.buckets.get_mut(name)
                {
                    figures.stored_chunk_bytes += object.size;
                }
            }
        }
    }
    let mut pages = Pages::new(backend.as_ref(), "nars/");
    while let Some(page) = pages.next_page().await? {
        stats.nar_records += page.len() as u64;
    }
    Ok(stats)
}

/// The marks of the distinct chunks the NARs `held` use, from their records (a missing record
/// adds none), each record's marks added as it arrives.
async fn chunks_used(backend: &DynBackend, held: Vec<[u8; 32]>) -> Result<SortedSet<ChunkMark>, GcError> {
    let mut reads = futures::stream::iter(held)
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
        .buffer_unordered(16);
    let mut marks = SortedSet::default();
    while let Some(record) = reads.next().await {
        if let Some(record) = record? {
            marks.add(record.chunks.iter().map(|c| chunk_mark(&c.digest)));
        }
    }
    marks.finish();
    Ok(marks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_round_trips_and_changes_add_up() {
        let mut stats = StoreStats { chunks: 10, chunk_bytes: 1000, ..Default::default() };
        stats.apply("b", &BucketChange::store_paths(1));
        stats.apply("b", &BucketChange::nar(1, 500));
        stats.apply("b", &BucketChange { stored_chunk_bytes: 200, chunks: 2, ..Default::default() });
        let b = &stats.buckets["b"];
        assert_eq!((b.store_paths, b.nars, b.logical_nar_bytes, b.stored_chunk_bytes), (1, 1, 500, 200));
        assert_eq!((stats.chunks, stats.chunk_bytes), (12, 1200));
        stats.apply("b", &BucketChange::nar(-1, 500));
        stats.apply("b", &BucketChange::store_paths(-2));
        let b = &stats.buckets["b"];
        assert_eq!((b.store_paths, b.nars, b.logical_nar_bytes), (0, 0, 0), "never below zero");
        assert_eq!(StoreStats::decode(&stats.encode()).unwrap(), stats);
        assert!(StoreStats::decode(b"NGST\x02").is_err());
    }
}
