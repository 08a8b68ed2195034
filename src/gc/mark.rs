//! The mark phase: what a GC keeps.
//!
//! [`roots`] lists every cache's records once: path infos (each read, for the NAR it names), the
//! caches' NAR entries and their users, and pending narinfos (their keys name the NAR).
//! [`nar_records`] then lists the NAR records: those named, and those younger than the grace
//! period, are read for their chunks; the others are unmarked. Marked chunks are kept as a sorted
//! list of digests, 32 bytes each, to be merged against the chunk listing, which comes in the
//! same order.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::SystemTime;

use futures::{StreamExt, TryStreamExt};

use super::{GcError, Progress, Tally};
use crate::backend::{self, BackendError, DynBackend, ObjectMeta, Pages};
use crate::cache::PathInfo;
use crate::castore::record::RecordError;
use crate::castore::{Digest, NarRecord};
use crate::nix::nixbase32;
use crate::nix::store_path::StorePath;

/// What the caches name: the roots of the mark, and what each bucket shows (to find stale
/// listing entries).
#[derive(Debug, Default)]
pub struct Roots {
    /// Every NAR some cache names (by a path info, a NAR entry or a pending narinfo).
    pub nars: BTreeSet<[u8; 32]>,
    /// What each bucket shows.
    pub buckets: BTreeMap<String, BucketView>,
}

/// What one bucket shows.
#[derive(Debug, Default)]
pub struct BucketView {
    /// The NARs the bucket holds (`nar/<narhash>.nar`).
    pub cache_nars: HashSet<[u8; 32]>,
    /// Its store paths: base name (`<hash>-<name>`) by hash part.
    pub paths: HashMap<String, String>,
}

/// One record of a cache, as its key tells.
enum CacheKey<'a> {
    PathInfo,
    CacheNar { nar_hash: &'a str, user: bool },
    Pending { nar_hash: &'a str },
    Other,
}

/// Splits `caches/<bucket>/<kind>/<rest>` into the bucket and what the key is.
fn parse_cache_key(key: &str) -> Option<(&str, CacheKey<'_>)> {
    let rest = key.strip_prefix("caches/")?;
    let (bucket, rest) = rest.split_once('/')?;
    let kind = match rest.split_once('/') {
        Some(("pathinfo", _)) => CacheKey::PathInfo,
        Some(("nars", rest)) => match rest.split_once('/') {
            Some((nar_hash, _)) => CacheKey::CacheNar { nar_hash, user: true },
            None => CacheKey::CacheNar { nar_hash: rest, user: false },
        },
        Some(("pending", rest)) => CacheKey::Pending { nar_hash: rest.split_once('/')?.0 },
        _ => CacheKey::Other,
    };
    Some((bucket, kind))
}

/// A NAR hash as keys spell it (nixbase32 of 32 bytes).
pub fn parse_nar_hash(text: &str) -> Option<[u8; 32]> {
    nixbase32::decode(text).ok()?.try_into().ok()
}

/// Lists every cache's records and collects the roots (one LIST per 1,000 records, one GET per
/// path info, `concurrency` at once).
pub async fn roots(
    backend: &DynBackend,
    concurrency: usize,
    progress: &dyn Progress,
) -> Result<Roots, GcError> {
    progress.start("mark: caches", None);
    let mut roots = Roots::default();
    let mut pages = Pages::new(backend.as_ref(), "caches/");
    while let Some(page) = pages.next_page().await? {
        let mut path_infos = vec![];
        for object in &page {
            let Some((bucket, kind)) = parse_cache_key(&object.key) else { continue };
            let view = roots.buckets.entry(bucket.to_owned()).or_default();
            match kind {
                CacheKey::PathInfo => path_infos.push((bucket.to_owned(), object.key.clone())),
                CacheKey::CacheNar { nar_hash, user } => {
                    if let Some(hash) = parse_nar_hash(nar_hash) {
                        roots.nars.insert(hash);
                        if !user {
                            view.cache_nars.insert(hash);
                        }
                    }
                }
                CacheKey::Pending { nar_hash } => roots.nars.extend(parse_nar_hash(nar_hash)),
                CacheKey::Other => {}
            }
        }
        let infos: Vec<_> = futures::stream::iter(path_infos)
            .map(|(bucket, key)| {
                let backend = backend.clone();
                async move { Ok::<_, GcError>((bucket, read_record(&backend, &key, PathInfo::decode).await?)) }
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await?;
        for (bucket, info) in infos {
            let Some(info) = info else { continue };
            roots.nars.insert(info.nar_hash);
            if let Ok(path) = StorePath::parse(&info.store_path) {
                roots.buckets.entry(bucket).or_default().paths.insert(path.hash_part(), path.base_name());
            }
        }
        progress.advance(page.len() as u64);
    }
    progress.finish(&format!("{} NARs named by {} buckets", roots.nars.len(), roots.buckets.len()));
    Ok(roots)
}

/// Reads the record at `key` with `decode`: `None` if it went in the meantime; a record that
/// does not decode is an error (what it keeps cannot be known).
pub(super) async fn read_record<T>(
    backend: &DynBackend,
    key: &str,
    decode: fn(&[u8]) -> Result<T, RecordError>,
) -> Result<Option<T>, GcError> {
    match backend::get_bytes(backend.as_ref(), key).await {
        Ok(bytes) => decode(&bytes)
            .map(Some)
            .map_err(|e| GcError::Unreadable { key: key.to_owned(), reason: e.to_string() }),
        Err(BackendError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The outcome of marking NAR records.
#[derive(Debug, Default)]
pub struct Marked {
    /// Every chunk a kept NAR record references, sorted, each once.
    pub chunks: Vec<Digest>,
    /// The NAR records nothing keeps (candidates for the sweep).
    pub unmarked: Vec<ObjectMeta>,
    /// The NAR records kept.
    pub kept: Tally,
    /// NARs named by a cache whose record is missing.
    pub missing_records: u64,
}

/// Lists the NAR records: reads those named in `roots` or written since `cutoff`, marking their
/// chunks; the others are unmarked.
pub async fn nar_records(
    backend: &DynBackend,
    roots: &Roots,
    cutoff: SystemTime,
    concurrency: usize,
    progress: &dyn Progress,
) -> Result<Marked, GcError> {
    progress.start("mark: NAR records", None);
    let mut marked = Marked::default();
    let mut chunks = MarkedChunks::default();
    let mut found_roots = 0u64;
    let mut pages = Pages::new(backend.as_ref(), "nars/");
    while let Some(page) = pages.next_page().await? {
        let mut keep = vec![];
        for object in page {
            let named = object.key.strip_prefix("nars/").and_then(parse_nar_hash);
            let is_root = named.is_some_and(|hash| roots.nars.contains(&hash));
            found_roots += u64::from(is_root);
            // A key under nars/ that is no NAR record's is none of GC's business: kept.
            if is_root || named.is_none() || object.last_modified >= cutoff {
                keep.push(object);
            } else {
                marked.unmarked.push(object);
            }
        }
        // Each record's chunks are marked as it arrives: no page of records is held.
        let mut reads = futures::stream::iter(keep)
            .map(|object| {
                let backend = backend.clone();
                async move {
                    // A key under nars/ that is no NAR record's has no chunks to mark.
                    let record = match object.key.strip_prefix("nars/").and_then(parse_nar_hash) {
                        Some(_) => read_record(&backend, &object.key, NarRecord::decode).await?,
                        None => None,
                    };
                    Ok::<_, GcError>((object.size, record))
                }
            })
            .buffer_unordered(concurrency.max(1));
        while let Some(read) = reads.next().await {
            let (size, record) = read?;
            marked.kept.keep(size);
            if let Some(record) = record {
                chunks.add(record.chunks.iter().map(|c| c.digest));
            }
            progress.advance(1);
        }
    }
    marked.chunks = chunks.finish();
    marked.missing_records = roots.nars.len() as u64 - found_roots;
    progress.finish(&format!(
        "{} NAR records kept, {} unmarked, {} chunks marked",
        marked.kept.kept,
        marked.unmarked.len(),
        marked.chunks.len()
    ));
    Ok(marked)
}

/// Marked chunk digests: appended as records are read, sorted and deduplicated whenever they
/// have doubled, the vector grown by a quarter at a time, so that memory stays within about
/// 32 bytes per distinct chunk, and twice that only while duplicates accumulate.
#[derive(Debug, Default)]
struct MarkedChunks {
    digests: Vec<Digest>,
    distinct: usize,
}

impl MarkedChunks {
    fn add(&mut self, digests: impl ExactSizeIterator<Item = Digest>) {
        if self.digests.capacity() - self.digests.len() < digests.len() {
            // Grown by a quarter, not doubled: the spare capacity stays small.
            self.digests.reserve_exact(digests.len().max(self.digests.len() / 4).max(1024));
        }
        self.digests.extend(digests);
        if self.digests.len() > 2 * self.distinct.max(1 << 16) {
            self.digests.sort_unstable();
            self.digests.dedup();
            self.distinct = self.digests.len();
        }
    }

    fn finish(mut self) -> Vec<Digest> {
        self.digests.sort_unstable();
        self.digests.dedup();
        self.digests.shrink_to_fit();
        self.digests
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keys_name_their_bucket_and_nar() {
        let hash = "0".repeat(52);
        assert!(matches!(
            parse_cache_key(&format!("caches/b/nars/{hash}")),
            Some(("b", CacheKey::CacheNar { user: false, .. }))
        ));
        assert!(matches!(
            parse_cache_key(&format!("caches/b/nars/{hash}/abc")),
            Some(("b", CacheKey::CacheNar { user: true, nar_hash })) if nar_hash == hash
        ));
        assert!(matches!(
            parse_cache_key(&format!("caches/b/pending/{hash}/abc")),
            Some(("b", CacheKey::Pending { .. }))
        ));
        assert!(matches!(parse_cache_key("caches/b/pathinfo/abc"), Some(("b", CacheKey::PathInfo))));
        assert!(matches!(parse_cache_key("caches/b/bucket"), Some(("b", CacheKey::Other))));
        assert!(parse_cache_key("chunks/x").is_none());
        assert_eq!(parse_nar_hash(&hash), Some([0; 32]));
        assert_eq!(parse_nar_hash("xyz"), None);
    }

    #[test]
    fn marked_chunks_come_out_sorted_once_each() {
        let mut marked = MarkedChunks::default();
        let digests: Vec<Digest> = (0..200_000u32).map(|i| Digest::of(&(i % 70_000).to_le_bytes())).collect();
        for batch in digests.chunks(1000) {
            marked.add(batch.iter().copied());
        }
        let out = marked.finish();
        assert_eq!(out.len(), 70_000);
        assert!(out.windows(2).all(|w| w[0] < w[1]));
    }
}
