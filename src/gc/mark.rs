//! The mark phase: what a GC keeps.
//!
//! [`roots`] lists every cache's records once: path infos (each read, for the NAR it names), the
//! caches' NAR entries and their users, and pending narinfos (their keys name the NAR).
//! [`nar_records`] then lists the NAR records: those named, and those younger than the grace
//! period, are read for their chunks; the others are unmarked. Marked chunks are kept as a sorted
//! list of 16-byte marks (digest prefixes, see [`ChunkMark`]), to be merged against the chunk
//! listing, which comes in the same order.

use std::collections::BTreeMap;
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
/// listing entries). Held as sorted vectors: 32 bytes per NAR, one base name per store path.
#[derive(Debug, Default)]
pub struct Roots {
    /// Every NAR some cache names (by a path info, a NAR entry or a pending narinfo).
    pub nars: SortedSet<[u8; 32]>,
    /// What each bucket shows.
    pub buckets: BTreeMap<String, BucketView>,
}

/// What one bucket shows: the NARs it holds and its store paths. Filled with
/// [`add_nar`](Self::add_nar) and [`add_path`](Self::add_path), then [`finish`](Self::finish)ed
/// before it is asked.
#[derive(Debug, Default)]
pub struct BucketView {
    cache_nars: SortedSet<[u8; 32]>,
    /// Base names (`<hash>-<name>`): sorted, they are sorted by hash part.
    paths: Vec<Box<str>>,
}

impl BucketView {
    /// Adds a NAR the bucket holds (`nar/<narhash>.nar`).
    pub fn add_nar(&mut self, nar_hash: [u8; 32]) {
        self.cache_nars.add(std::iter::once(nar_hash));
    }

    /// Adds a store path by its base name (`<hash>-<name>`).
    pub fn add_path(&mut self, base_name: &str) {
        self.paths.push(base_name.into());
    }

    /// Sorts what was added, so that it can be asked (adding more needs another `finish`).
    pub fn finish(&mut self) {
        self.cache_nars.finish();
        self.paths.sort_unstable();
        self.paths.dedup();
        self.paths.shrink_to_fit();
    }

    /// Whether the bucket holds the NAR `nar_hash`.
    pub fn holds_nar(&self, nar_hash: &[u8; 32]) -> bool {
        self.cache_nars.contains(nar_hash)
    }

    /// The NARs the bucket holds, in order.
    pub fn nars(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.cache_nars.iter()
    }

    /// The base name of the bucket's store path whose hash part is `hash`.
    pub fn path(&self, hash: &str) -> Option<&str> {
        let at = self.paths.partition_point(|p| hash_part(p) < hash);
        self.paths.get(at).map(|p| &**p).filter(|p| hash_part(p) == hash)
    }
}

/// The hash part of a base name (`<hash>-<name>`).
fn hash_part(base_name: &str) -> &str {
    base_name.split_once('-').map_or(base_name, |(hash, _)| hash)
}

/// A set kept as a sorted vector: values are appended, and sorted and deduplicated whenever the
/// appended tail grows past half of what is already distinct; the vector grows by a quarter at a
/// time. Memory stays within about 1.5 × 1.25 values per distinct value while it fills, and one
/// value each once [`finish`](Self::finish)ed.
#[derive(Debug)]
pub struct SortedSet<T> {
    values: Vec<T>,
    distinct: usize,
}

impl<T> Default for SortedSet<T> {
    fn default() -> Self {
        SortedSet { values: vec![], distinct: 0 }
    }
}

impl<T: Ord + Copy> SortedSet<T> {
    /// Adds `values` (the set is unsorted until [`finish`](Self::finish)).
    pub fn add(&mut self, values: impl IntoIterator<Item = T>) {
        for value in values {
            if self.values.len() == self.values.capacity() {
                // Grown by a quarter, not doubled: the spare capacity stays small.
                self.values.reserve_exact((self.values.len() / 4).max(1024));
            }
            self.values.push(value);
        }
        if self.values.len() > self.distinct + (self.distinct / 2).max(1 << 16) {
            self.compact();
        }
    }

    /// Sorts and deduplicates, and gives back spare capacity.
    pub fn finish(&mut self) {
        self.compact();
        self.values.shrink_to_fit();
    }

    fn compact(&mut self) {
        self.values.sort_unstable();
        self.values.dedup();
        self.distinct = self.values.len();
    }

    /// Whether `value` is in the set (once finished).
    pub fn contains(&self, value: &T) -> bool {
        self.values.binary_search(value).is_ok()
    }

    /// The values, in order (once finished).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.values.iter()
    }

    /// The values, in order (once finished).
    pub fn as_slice(&self) -> &[T] {
        &self.values
    }

    /// How many distinct values (once finished).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// What the mark keeps of a chunk digest: its first 16 bytes, big-endian, so that marks sort as
/// the digests (and the chunk listing) do. Two chunks that share 128 bits of BLAKE3 are
/// astronomically unlikely (about 10^-25 in a store of 10^7 chunks), and would only keep an
/// unmarked chunk one GC longer: a mark can keep too much, never too little.
pub type ChunkMark = u128;

/// The mark of `digest`.
pub fn chunk_mark(digest: &Digest) -> ChunkMark {
    let mut prefix = [0u8; 16];
    prefix.copy_from_slice(&digest.0[..16]);
    u128::from_be_bytes(prefix)
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
                        roots.nars.add([hash]);
                        if !user {
                            view.add_nar(hash);
                        }
                    }
                }
                CacheKey::Pending { nar_hash } => roots.nars.add(parse_nar_hash(nar_hash)),
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
            roots.nars.add([info.nar_hash]);
            if let Ok(path) = StorePath::parse(&info.store_path) {
                roots.buckets.entry(bucket).or_default().add_path(&path.base_name());
            }
        }
        progress.advance(page.len() as u64);
    }
    roots.nars.finish();
    roots.buckets.values_mut().for_each(BucketView::finish);
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
    /// The marks of every chunk a kept NAR record references, sorted, each once.
    pub chunks: SortedSet<ChunkMark>,
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
                marked.chunks.add(record.chunks.iter().map(|c| chunk_mark(&c.digest)));
            }
            progress.advance(1);
        }
    }
    marked.chunks.finish();
    marked.missing_records = roots.nars.len() as u64 - found_roots;
    progress.finish(&format!(
        "{} NAR records kept, {} unmarked, {} chunks marked",
        marked.kept.kept,
        marked.unmarked.len(),
        marked.chunks.len()
    ));
    Ok(marked)
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
        let mut marked = SortedSet::default();
        let digests: Vec<Digest> = (0..200_000u32).map(|i| Digest::of(&(i % 70_000).to_le_bytes())).collect();
        for batch in digests.chunks(1000) {
            marked.add(batch.iter().map(chunk_mark));
            // Within 1.5 values per distinct one (or the first 2^16), grown by a quarter.
            let bound = (marked.distinct + (marked.distinct / 2).max(1 << 16) + 1000) * 5 / 4 + 1024;
            assert!(marked.values.capacity() <= bound, "{} > {bound}", marked.values.capacity());
        }
        marked.finish();
        assert_eq!(marked.len(), 70_000);
        assert_eq!(marked.values.capacity(), 70_000, "16 bytes a mark once finished");
        assert!(marked.as_slice().windows(2).all(|w| w[0] < w[1]));
        assert!(digests.iter().all(|d| marked.contains(&chunk_mark(d))));
        assert!(!marked.contains(&chunk_mark(&Digest::of(b"not added"))));
    }

    #[test]
    fn marks_sort_as_their_digests() {
        let mut digests: Vec<Digest> = (0..1000u32).map(|i| Digest::of(&i.to_le_bytes())).collect();
        digests.sort();
        assert!(digests.windows(2).all(|w| chunk_mark(&w[0]) < chunk_mark(&w[1])));
    }

    #[test]
    fn a_bucket_view_finds_paths_by_hash_part() {
        let mut view = BucketView::default();
        for base in ["bbbb-two", "aaaa-one", "cccc-three", "aaaa-one"] {
            view.add_path(base);
        }
        view.add_nar([7; 32]);
        view.finish();
        assert_eq!(view.path("aaaa"), Some("aaaa-one"));
        assert_eq!(view.path("cccc"), Some("cccc-three"));
        assert_eq!(view.path("abcd"), None);
        assert_eq!(view.path("zzzz"), None);
        assert!(view.holds_nar(&[7; 32]));
        assert!(!view.holds_nar(&[8; 32]));
    }
}
