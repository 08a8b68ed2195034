//! The repair pass: commits every pending narinfo whose NAR its bucket now holds, so that a crash
//! (or a lost client) between the two halves of an upload never leaves a store path
//! half-visible for long. Run at start, periodically, and by `nargate repair`.

use std::collections::BTreeSet;

use super::{Cache, CommitError, list_buckets};
use crate::backend::{self, DynBackend};

/// What a repair pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Buckets looked at.
    pub buckets: usize,
    /// Pending narinfos found.
    pub pending: usize,
    /// Store paths committed.
    pub committed: usize,
}

impl Cache {
    /// Commits every pending narinfo of this cache whose NAR the cache holds; returns how many
    /// were pending and how many committed. One LIST of the pending records, one read per NAR.
    pub async fn repair(&self) -> Result<RepairReport, CommitError> {
        let root = self.keys.pending_root();
        let pending = backend::list_all(self.backend.as_ref(), &root).await?;
        let nar_hashes: BTreeSet<&str> = pending
            .iter()
            .filter_map(|o| o.key.strip_prefix(&root)?.split_once('/').map(|(h, _)| h))
            .collect();
        let mut report = RepairReport { buckets: 1, pending: pending.len(), committed: 0 };
        for nar_hash in nar_hashes {
            let Some(bytes) = self.get(&self.keys.cache_nar(nar_hash)).await? else { continue };
            let held = super::CacheNar::decode(&bytes)?;
            let committed = self.commit_waiting(nar_hash, &held).await?;
            for path in &committed {
                tracing::info!(bucket = %self.bucket, store_path = %path, "repair committed a pending narinfo");
            }
            report.committed += committed.len();
        }
        Ok(report)
    }
}

/// Runs the repair pass over every bucket on `backend`.
pub async fn repair_all(backend: &DynBackend) -> Result<RepairReport, CommitError> {
    let mut total = RepairReport::default();
    for (bucket, _) in list_buckets(backend).await? {
        let report = Cache::new(backend.clone(), &bucket).repair().await?;
        total.buckets += 1;
        total.pending += report.pending;
        total.committed += report.committed;
    }
    Ok(total)
}
