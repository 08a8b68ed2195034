//! The sweep: what a GC removes, and the wait for the ingests that began before it.
//!
//! Every candidate is older than the cutoff (T0 − grace) by its listing; each is HEADed just
//! before its DELETE and spared if it was written since the cutoff (an ingest wrote the chunk
//! again). Deletes run `concurrency` at once.

use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};

use super::mark::{BucketView, ChunkMark, Roots, chunk_mark, parse_nar_hash};
use super::{GcError, GcLock, Progress, Tally, backend_now};
use crate::backend::{self, BackendError, DynBackend, ObjectMeta, Pages};
use crate::cache::keys::{CacheKeys, IndexEntry};
use crate::castore::Digest;
use crate::castore::lease::{LEASES_PREFIX, LeaseRecord, unix_secs};

/// Removes what the mark left unmarked.
pub struct Sweeper<'a> {
    /// The store.
    pub backend: &'a DynBackend,
    /// Only objects last written before this go.
    pub cutoff: SystemTime,
    /// Count what would go; delete nothing.
    pub dry_run: bool,
    /// Deletes in flight at once.
    pub concurrency: usize,
}

impl Sweeper<'_> {
    /// Removes each of `candidates` that is still older than the cutoff.
    pub async fn remove_all(
        &self,
        candidates: &[ObjectMeta],
        progress: &dyn Progress,
        what: &str,
    ) -> Result<Tally, GcError> {
        progress.start(&format!("sweep: {what}"), Some(candidates.len() as u64));
        let tally = self.remove_batch(candidates, progress).await?;
        progress.finish(&format!("{} {what} removed, {} spared", tally.removed, tally.kept));
        Ok(tally)
    }

    async fn remove_batch(
        &self,
        candidates: &[ObjectMeta],
        progress: &dyn Progress,
    ) -> Result<Tally, GcError> {
        let outcomes: Vec<(u64, bool)> = futures::stream::iter(candidates.iter().cloned())
            .map(|object| {
                let (backend, cutoff, dry_run) = (self.backend.clone(), self.cutoff, self.dry_run);
                async move {
                    let removed = remove_one(&backend, &object, cutoff, dry_run).await?;
                    Ok::<_, GcError>((object.size, removed))
                }
            })
            .buffer_unordered(self.concurrency.max(1))
            .try_collect()
            .await?;
        progress.advance(outcomes.len() as u64);
        let mut tally = Tally::default();
        for (size, removed) in outcomes {
            if removed { tally.remove(size) } else { tally.keep(size) }
        }
        Ok(tally)
    }

    /// Lists the chunks and removes those not in `marked` (sorted) and older than the cutoff,
    /// page by page: the listing comes in digest order, so one pass merges the two.
    pub async fn chunks(
        &self,
        marked: &[ChunkMark],
        progress: &dyn Progress,
        lock: Option<&GcLock>,
    ) -> Result<Tally, GcError> {
        progress.start("sweep: chunks", None);
        let mut tally = Tally::default();
        let mut next = 0;
        let mut pages = Pages::new(self.backend.as_ref(), "chunks/");
        while let Some(page) = pages.next_page().await? {
            let mut candidates = vec![];
            for object in page {
                let digest = object.key.strip_prefix("chunks/").and_then(Digest::from_hex);
                let is_marked = digest.is_some_and(|digest| {
                    let mark = chunk_mark(&digest);
                    while next < marked.len() && marked[next] < mark {
                        next += 1;
                    }
                    marked.get(next) == Some(&mark)
                });
                if is_marked || digest.is_none() || object.last_modified >= self.cutoff {
                    tally.keep(object.size);
                    progress.advance(1);
                } else {
                    candidates.push(object);
                }
            }
            if !candidates.is_empty()
                && let Some(lock) = lock
            {
                // A GC that lost its lock must not delete more.
                lock.check().await?;
            }
            tally = tally + self.remove_batch(&candidates, progress).await?;
        }
        progress.finish(&format!("{} chunks kept, {} removed", tally.kept, tally.removed));
        Ok(tally)
    }

    /// Removes the leases that have expired (not rewritten within their TTL).
    pub async fn leases(&self, progress: &dyn Progress) -> Result<Tally, GcError> {
        progress.start("sweep: leases", None);
        let now = backend_now(self.backend).await?;
        let mut tally = Tally::default();
        let mut expired = vec![];
        for object in backend::list_all(self.backend.as_ref(), LEASES_PREFIX).await? {
            match read_lease(self.backend, &object.key).await? {
                Some((lease, meta)) if is_expired(&lease, &meta, now) => expired.push(meta),
                Some((_, meta)) => tally.keep(meta.size),
                None => {}
            }
        }
        // Expired by the backend's clock: the cutoff is now, whatever the grace.
        let sweeper = Sweeper { cutoff: now - Duration::from_secs(1), ..*self };
        let removed = sweeper.remove_batch(&expired, progress).await?;
        progress.finish(&format!("{} expired leases removed", removed.removed));
        Ok(tally + removed)
    }

    /// Removes the listing-index entries of keys that are gone (their path info or NAR entry
    /// was removed, and the entry is older than the cutoff).
    pub async fn index_entries(&self, roots: &Roots, progress: &dyn Progress) -> Result<Tally, GcError> {
        progress.start("sweep: listing entries", None);
        let mut tally = Tally::default();
        for (bucket, view) in &roots.buckets {
            let keys = CacheKeys::new(bucket);
            let prefix = keys.index_prefix();
            let mut pages = Pages::new(self.backend.as_ref(), &prefix);
            while let Some(page) = pages.next_page().await? {
                let mut stale = vec![];
                for object in page {
                    let entry = object.key.strip_prefix(&prefix).and_then(IndexEntry::parse);
                    let gone = entry.is_some_and(|entry| !shows(view, &entry.key));
                    if gone && object.last_modified < self.cutoff {
                        stale.push(object);
                    } else {
                        tally.keep(object.size);
                        progress.advance(1);
                    }
                }
                tally = tally + self.remove_batch(&stale, progress).await?;
            }
        }
        progress.finish(&format!("{} stale listing entries removed", tally.removed));
        Ok(tally)
    }
}

/// HEADs `object` and deletes it unless it was written since `cutoff`; returns whether it went
/// (in a dry run: whether it would).
async fn remove_one(
    backend: &DynBackend,
    object: &ObjectMeta,
    cutoff: SystemTime,
    dry_run: bool,
) -> Result<bool, GcError> {
    if dry_run {
        return Ok(true);
    }
    match backend.head(&object.key).await {
        Ok(now) if now.last_modified >= cutoff => Ok(false),
        Ok(_) => {
            backend.delete(&object.key).await?;
            Ok(true)
        }
        // Gone already (another GC, or a delete): nothing to do, nothing removed by us.
        Err(BackendError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether a bucket that shows `view` has the visible key `key` (keys the GC does not know of
/// count as shown).
pub fn shows(view: &BucketView, key: &str) -> bool {
    if let Some(nar_hash) = key.strip_prefix("nar/").and_then(|k| k.strip_suffix(".nar")) {
        return parse_nar_hash(nar_hash).is_some_and(|hash| view.holds_nar(&hash));
    }
    if let Some(store_hash) = key.strip_suffix(".narinfo").or_else(|| key.strip_suffix(".ls"))
        && !store_hash.contains('/')
    {
        return view.path(store_hash).is_some();
    }
    if let Some(base) = key.strip_prefix("store/").and_then(|k| k.strip_suffix(".nar")) {
        let hash = base.split_once('-').map_or(base, |(hash, _)| hash);
        return view.path(hash) == Some(base);
    }
    true
}

/// Reads a lease: `None` if it went in the meantime. A lease that cannot be read counts as just
/// begun, with the default TTL.
async fn read_lease(backend: &DynBackend, key: &str) -> Result<Option<(LeaseRecord, ObjectMeta)>, GcError> {
    match backend::get_bytes_with_meta(backend.as_ref(), key).await {
        Ok((bytes, meta)) => {
            let record = LeaseRecord::decode(&bytes).unwrap_or(LeaseRecord {
                purpose: "unreadable".into(),
                ttl_secs: crate::castore::lease::LEASE_TTL.as_secs(),
                started: 0,
                aware_of: None,
            });
            Ok(Some((record, meta)))
        }
        Err(BackendError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether a lease last written at `meta.last_modified` has outlived its TTL at `now`.
fn is_expired(lease: &LeaseRecord, meta: &ObjectMeta, now: SystemTime) -> bool {
    now.duration_since(meta.last_modified).is_ok_and(|age| age > Duration::from_secs(lease.ttl_secs))
}

/// Waits until every lease begun before `started` (T0) has ended or expired, but for those that
/// saw this GC's lock (`owner`): they follow the protocol. Looks again every `poll`.
pub async fn wait_for_leases(
    backend: &DynBackend,
    started: SystemTime,
    owner: &str,
    poll: Duration,
    progress: &dyn Progress,
) -> Result<(), GcError> {
    progress.start("wait for ingests begun before the GC", None);
    let t0 = unix_secs(started);
    loop {
        let now = backend_now(backend).await?;
        let mut waiting = 0u64;
        for object in backend::list_all(backend.as_ref(), LEASES_PREFIX).await? {
            let Some((lease, meta)) = read_lease(backend, &object.key).await? else { continue };
            // A start in T0's own second may be before it: waited for.
            let began_before = lease.started <= t0;
            let aware = lease.aware_of.as_deref() == Some(owner);
            if began_before && !aware && !is_expired(&lease, &meta, now) {
                waiting += 1;
            }
        }
        if waiting == 0 {
            progress.finish("no ingest begun before the GC is left");
            return Ok(());
        }
        progress.advance(0);
        tracing::info!(waiting, "GC waits for ingests that began before it");
        tokio::time::sleep(poll).await;
    }
}
