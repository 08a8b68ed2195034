//! `nargate verify`: checks that what the buckets show is whole.
//!
//! For each bucket: every path info has its NAR record, the bucket's NAR entry and the path infos
//! of its references (the closure); every NAR entry has its record; every record its chunks;
//! every listing entry a key that is there, and every key its listing entry. `deep` also reads
//! every chunk (its BLAKE3 checked) and renders every NAR against its NarHash. `repair` rewrites
//! what can be derived — listing entries (by committing the path again, which is idempotent),
//! stale entries removed, pending commits — and says what cannot be.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use futures::StreamExt;
use sha2::Digest as _;

use super::mark::{BucketView, parse_nar_hash};
use super::sweep::shows;
use super::{GcError, Progress};
use crate::backend::{self, BackendError, DynBackend, Pages};
use crate::cache::keys::IndexEntry;
use crate::cache::{Cache, PathInfo, list_buckets};
use crate::castore::chunk::chunk_key;
use crate::castore::{ChunkStore, Digest, NarRecord};
use crate::nix::nixbase32;
use crate::nix::store_path::StorePath;
use crate::render::{RenderConfig, Renderer};

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The backend key concerned.
    pub key: String,
    /// What is wrong.
    pub what: String,
    /// Whether `--repair` fixed it.
    pub repaired: bool,
}

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Buckets checked.
    pub buckets: usize,
    /// Store paths checked.
    pub store_paths: usize,
    /// NAR records checked.
    pub nar_records: usize,
    /// Distinct chunks checked (present; with `deep`, read and hashed).
    pub chunks: usize,
    /// NARs rendered against their NarHash (`deep`).
    pub rendered: usize,
    /// Everything found wrong, in the order found.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether a problem is left unrepaired.
    pub fn has_unrepaired(&self) -> bool {
        self.problems.iter().any(|p| !p.repaired)
    }

    fn problem(&mut self, key: impl Into<String>, what: impl Into<String>) {
        let (key, what) = (key.into(), what.into());
        tracing::warn!(%key, "{what}");
        self.problems.push(Problem { key, what, repaired: false });
    }
}

/// How to verify.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only this bucket (default: all).
    pub bucket: Option<String>,
    /// Read every chunk and render every NAR.
    pub deep: bool,
    /// Rewrite what can be derived.
    pub repair: bool,
}

/// What one bucket holds, from one listing of its records.
#[derive(Default)]
struct Listed {
    path_infos: Vec<String>,
    index: Vec<(String, IndexEntry)>,
}

/// Verifies the store's buckets (see the [module documentation](self)).
pub async fn verify(
    backend: &DynBackend,
    options: &VerifyOptions,
    progress: &dyn Progress,
) -> Result<VerifyReport, GcError> {
    let mut report = VerifyReport::default();
    let buckets: Vec<String> = match &options.bucket {
        Some(bucket) => vec![bucket.clone()],
        None => list_buckets(backend).await?.into_iter().map(|(name, _)| name).collect(),
    };
    // The NAR records every checked bucket names, with the buckets naming them.
    let mut records: BTreeMap<[u8; 32], BTreeSet<String>> = BTreeMap::new();
    for bucket in &buckets {
        progress.start(&format!("verify bucket {bucket}"), None);
        let cache = Cache::new(backend.clone(), bucket);
        if cache.settings().await?.is_none() {
            report.problem(cache.keys().bucket(), "no such bucket");
            continue;
        }
        report.buckets += 1;
        let (mut view, listed) = list_bucket(backend, &cache, &mut report).await?;
        for hash in view.nars() {
            records.entry(*hash).or_default().insert(bucket.clone());
        }
        let path_hashes: HashSet<&str> =
            listed.path_infos.iter().filter_map(|key| key.rsplit_once('/')).map(|(_, hash)| hash).collect();
        let index_keys: HashSet<&str> = listed.index.iter().map(|(_, e)| e.key.as_str()).collect();
        let mut to_commit = vec![];
        for key in &listed.path_infos {
            let info = read_path_info(backend, key, &mut report).await?;
            let path = info.as_ref().map(|info| StorePath::parse(&info.store_path));
            let (Some(info), Some(Ok(path))) = (info.as_ref(), path) else {
                if let Some(info) = &info {
                    report.problem(key, format!("store path {:?} does not parse", info.store_path));
                }
                // Its narinfo is still the bucket's (if not its `store/` alias).
                view.add_path(key.rsplit_once('/').map_or(key.as_str(), |(_, hash)| hash));
                continue;
            };
            report.store_paths += 1;
            progress.advance(1);
            records.entry(info.nar_hash).or_default().insert(bucket.clone());
            view.add_path(&path.base_name());
            let hash = path.hash_part();
            if !view.holds_nar(&info.nar_hash) {
                report.problem(
                    key,
                    format!("its NAR {} is not held by the bucket", nixbase32::encode(&info.nar_hash)),
                );
            }
            for reference in &info.references {
                let referenced = reference.split_once('-').map_or(reference.as_str(), |(h, _)| h);
                if !path_hashes.contains(referenced) {
                    report.problem(
                        key,
                        format!("its reference {reference} is not in the bucket: the closure is broken"),
                    );
                }
            }
            let wanted =
                [format!("{hash}.narinfo"), format!("{hash}.ls"), format!("store/{}.nar", path.base_name())];
            let missing: Vec<&String> = wanted.iter().filter(|k| !index_keys.contains(k.as_str())).collect();
            if !missing.is_empty() {
                report.problem(
                    key,
                    format!(
                        "not listed: {}",
                        missing.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                );
                to_commit.push((report.problems.len() - 1, info.clone()));
            }
        }
        view.finish();
        let mut to_land = vec![];
        for hash in view.nars() {
            let visible = format!("nar/{}.nar", nixbase32::encode(hash));
            if !index_keys.contains(visible.as_str()) {
                report.problem(
                    cache.keys().cache_nar(&nixbase32::encode(hash)),
                    format!("{visible} is not listed"),
                );
                to_land.push((report.problems.len() - 1, *hash));
            }
        }
        let mut stale = vec![];
        for (key, entry) in &listed.index {
            if !shows(&view, &entry.key) {
                report.problem(key, format!("listing entry of {} but the key is gone", entry.key));
                stale.push((report.problems.len() - 1, key.clone()));
            }
        }
        if options.repair {
            repair_bucket(backend, &cache, &mut report, to_commit, to_land, stale).await?;
        }
        progress.finish(&format!("bucket {bucket} checked"));
    }
    check_records(backend, &records, options.deep, &mut report, progress).await?;
    Ok(report)
}

/// Lists a bucket's records once: its path infos, NAR entries and listing entries.
async fn list_bucket(
    backend: &DynBackend,
    cache: &Cache,
    report: &mut VerifyReport,
) -> Result<(BucketView, Listed), GcError> {
    let root = cache.keys().root().to_owned();
    let index_prefix = cache.keys().index_prefix();
    let (mut view, mut listed) = (BucketView::default(), Listed::default());
    let mut pages = Pages::new(backend.as_ref(), &root);
    while let Some(page) = pages.next_page().await? {
        for object in page {
            let rest = &object.key[root.len()..];
            if rest.starts_with("pathinfo/") {
                // Its store path joins the view once the path info is read.
                listed.path_infos.push(object.key);
            } else if let Some(nar) = rest.strip_prefix("nars/") {
                if let Some(hash) = parse_nar_hash(nar) {
                    view.add_nar(hash);
                }
            } else if object.key.starts_with(&index_prefix) {
                match IndexEntry::parse(&object.key[index_prefix.len()..]) {
                    Some(entry) => listed.index.push((object.key, entry)),
                    None => report.problem(&object.key, "listing entry whose name does not parse"),
                }
            }
        }
    }
    view.finish();
    Ok((view, listed))
}

async fn read_path_info(
    backend: &DynBackend,
    key: &str,
    report: &mut VerifyReport,
) -> Result<Option<PathInfo>, GcError> {
    match backend::get_bytes(backend.as_ref(), key).await {
        Ok(bytes) => match PathInfo::decode(&bytes) {
            Ok(info) => Ok(Some(info)),
            Err(e) => {
                report.problem(key, format!("path info does not decode: {e}"));
                Ok(None)
            }
        },
        Err(BackendError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `--repair` of one bucket: commits again the paths whose entries are missing, lands again the
/// NARs whose entry is missing, removes stale entries, runs the pending commits.
async fn repair_bucket(
    backend: &DynBackend,
    cache: &Cache,
    report: &mut VerifyReport,
    to_commit: Vec<(usize, PathInfo)>,
    to_land: Vec<(usize, [u8; 32])>,
    stale: Vec<(usize, String)>,
) -> Result<(), GcError> {
    for (problem, info) in to_commit {
        let Some(nar) = cache.cache_nar(&info.nar_hash).await? else { continue };
        cache.commit(&info.narinfo()?, &nar).await?;
        report.problems[problem].repaired = true;
    }
    for (problem, hash) in to_land {
        match backend::get_bytes(backend.as_ref(), &crate::castore::nar_record::nar_record_key(&hash)).await {
            Ok(bytes) => {
                let record = NarRecord::decode(&bytes).map_err(|e| GcError::Unreadable {
                    key: crate::castore::nar_record::nar_record_key(&hash),
                    reason: e.to_string(),
                })?;
                cache.nar_landed(&record).await?;
                report.problems[problem].repaired = true;
            }
            Err(BackendError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for (problem, key) in stale {
        backend.delete(&key).await?;
        report.problems[problem].repaired = true;
    }
    cache.repair().await?;
    Ok(())
}

/// Checks every named NAR record: there, decodable, its chunks there (one merge against the chunk
/// listing); with `deep`, every chunk read and hashed and every NAR rendered against its NarHash.
async fn check_records(
    backend: &DynBackend,
    records: &BTreeMap<[u8; 32], BTreeSet<String>>,
    deep: bool,
    report: &mut VerifyReport,
    progress: &dyn Progress,
) -> Result<(), GcError> {
    progress.start("verify NAR records", Some(records.len() as u64));
    let mut chunks: Vec<(Digest, u32)> = vec![];
    let mut loaded = vec![];
    for hash in records.keys() {
        let key = crate::castore::nar_record::nar_record_key(hash);
        progress.advance(1);
        match backend::get_bytes(backend.as_ref(), &key).await {
            Ok(bytes) => match NarRecord::decode(&bytes) {
                Ok(record) if record.nar_hash == *hash => {
                    report.nar_records += 1;
                    chunks.extend(record.chunks.iter().map(|c| (c.digest, c.size)));
                    loaded.push((*hash, record.nar_size));
                }
                Ok(_) => report.problem(&key, "the record is of another NAR"),
                Err(e) => report.problem(&key, format!("NAR record does not decode: {e}")),
            },
            Err(BackendError::NotFound { .. }) => {
                let by: Vec<&str> = records[hash].iter().map(String::as_str).collect();
                report.problem(&key, format!("NAR record missing (named by bucket {})", by.join(", ")));
            }
            Err(e) => return Err(e.into()),
        }
    }
    progress.finish(&format!("{} NAR records", report.nar_records));
    chunks.sort_unstable();
    chunks.dedup();
    report.chunks = chunks.len();
    progress.start("verify chunks", Some(chunks.len() as u64));
    let mut present = 0;
    let mut pages = Pages::new(backend.as_ref(), "chunks/");
    let mut next = 0;
    while let Some(page) = pages.next_page().await? {
        for object in page {
            let Some(digest) = object.key.strip_prefix("chunks/").and_then(Digest::from_hex) else {
                continue;
            };
            while next < chunks.len() && chunks[next].0 < digest {
                report.problem(chunk_key(&chunks[next].0), "chunk missing");
                next += 1;
            }
            if chunks.get(next).is_some_and(|c| c.0 == digest) {
                present += 1;
                next += 1;
                progress.advance(1);
            }
        }
    }
    for missing in &chunks[next..] {
        report.problem(chunk_key(&missing.0), "chunk missing");
    }
    progress.finish(&format!("{present} of {} chunks present", chunks.len()));
    if !deep {
        return Ok(());
    }
    let store = ChunkStore::new(backend.clone(), 0);
    progress.start("verify chunks: read and hash", Some(chunks.len() as u64));
    let mut reads = futures::stream::iter(chunks.iter().copied())
        .map(|(digest, size)| {
            let store = store.clone();
            async move { (digest, store.get_uncached(digest, size).await) }
        })
        .buffer_unordered(16);
    while let Some((digest, read)) = reads.next().await {
        progress.advance(1);
        match read {
            Ok(_) => {}
            Err(crate::castore::ChunkError::Backend(BackendError::NotFound { .. })) => {}
            Err(e) => report.problem(chunk_key(&digest), format!("chunk unreadable: {e}")),
        }
    }
    drop(reads);
    progress.finish("chunks read");
    let renderer = Renderer::new(store, RenderConfig::default());
    progress.start("verify NARs: render and hash", Some(loaded.len() as u64));
    for (hash, size) in loaded {
        progress.advance(1);
        let key = crate::castore::nar_record::nar_record_key(&hash);
        match render_hash(&renderer, &hash, size).await {
            Ok((rendered, rendered_size)) if rendered == hash && rendered_size == size => {
                report.rendered += 1
            }
            Ok((rendered, rendered_size)) => report.problem(
                &key,
                format!(
                    "renders to sha256:{} ({rendered_size} bytes), not its NarHash",
                    nixbase32::encode(&rendered)
                ),
            ),
            Err(e) => report.problem(&key, format!("does not render: {e}")),
        }
    }
    progress.finish(&format!("{} NARs rendered", report.rendered));
    Ok(())
}

/// Renders a whole NAR; returns its SHA-256 and size.
async fn render_hash(
    renderer: &Renderer,
    hash: &[u8; 32],
    size: u64,
) -> Result<([u8; 32], u64), crate::render::RenderError> {
    let mut body = renderer.range(hash, 0..size).await?;
    let (mut sha, mut len) = (sha2::Sha256::new(), 0u64);
    while let Some(piece) = body.next().await {
        let piece = piece?;
        len += piece.len() as u64;
        sha.update(&piece);
    }
    Ok((sha.finalize().into(), len))
}
