//! The ingest side of GC's protocol (DESIGN.md, "GC"): an ingest first writes its lease
//! (`leases/<id>`, refreshed while it runs), then looks for `locks/gc`. With no lock it may skip
//! uploading chunks that already exist; with a lock it uploads every chunk, waits until the lock is
//! gone, and HEADs everything it references before committing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::record::{self, RecordKind};
use crate::backend::{BackendError, DynBackend};

/// The key of GC's lock.
pub const GC_LOCK_KEY: &str = "locks/gc";
/// The version of the lease record.
pub const LEASE_VERSION: u8 = 1;
/// How often a running ingest rewrites its lease.
pub const LEASE_REFRESH: Duration = Duration::from_secs(60);
/// How long a lease that is not refreshed counts as live (GC waits for live leases).
pub const LEASE_TTL: Duration = Duration::from_secs(300);
/// An ingest whose last successful refresh is older than [`LEASE_TTL`] less this margin may have
/// been outlived by its lease, so it re-checks before committing.
pub const LEASE_MARGIN: Duration = Duration::from_secs(60);

/// What a lease record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Why the lease exists (e.g. the upload it covers), for operators.
    pub purpose: String,
    /// How long, in seconds, the lease lives after its LastModified unless refreshed.
    pub ttl_secs: u64,
}

/// An ingest's lease: written on [`Lease::acquire`], refreshed in the background, deleted on
/// [`Lease::release`] (or left to expire if the process dies).
#[derive(Debug)]
pub struct Lease {
    backend: DynBackend,
    key: String,
    gc_was_locked: bool,
    last_refreshed: Arc<Mutex<Instant>>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Writes a new lease, then looks for GC's lock.
    pub async fn acquire(backend: DynBackend, purpose: &str) -> Result<Lease, BackendError> {
        let key = format!("leases/{}", hex::encode(rand::random::<[u8; 16]>()));
        let body = Bytes::from(record::encode(
            RecordKind::Lease,
            LEASE_VERSION,
            &LeaseRecord { purpose: purpose.to_owned(), ttl_secs: LEASE_TTL.as_secs() },
        ));
        let written = Instant::now();
        backend.put(&key, body.clone()).await?;
        let gc_was_locked = gc_locked(backend.as_ref()).await?;
        let last_refreshed = Arc::new(Mutex::new(written));
        let refresher = {
            let (backend, key, last) = (backend.clone(), key.clone(), last_refreshed.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LEASE_REFRESH).await;
                    let attempt = Instant::now();
                    if backend.put(&key, body.clone()).await.is_ok() {
                        *last.lock().unwrap_or_else(|p| p.into_inner()) = attempt;
                    }
                }
            })
        };
        Ok(Lease { backend, key, gc_was_locked, last_refreshed, refresher })
    }

    /// Whether uploads may skip chunks that already exist: only if no GC was running when the
    /// lease was taken.
    pub fn may_skip_existing(&self) -> bool {
        !self.gc_was_locked
    }

    /// Whether the ingest must re-check, before committing, that everything it references exists:
    /// a GC was running when it started, or its lease may have expired (its last successful
    /// refresh is older than the TTL less the margin).
    pub fn must_recheck(&self) -> bool {
        let last = *self.last_refreshed.lock().unwrap_or_else(|p| p.into_inner());
        self.gc_was_locked || last.elapsed() > LEASE_TTL.saturating_sub(LEASE_MARGIN)
    }

    /// Waits until no GC holds the lock, polling every `interval`, for at most `timeout`.
    pub async fn wait_for_gc(&self, interval: Duration, timeout: Duration) -> Result<bool, BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if !gc_locked(self.backend.as_ref()).await? {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Ends the lease: stops refreshing and deletes it.
    pub async fn release(self) -> Result<(), BackendError> {
        self.refresher.abort();
        self.backend.delete(&self.key).await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

/// Whether GC's lock exists.
pub async fn gc_locked(backend: &dyn crate::backend::Backend) -> Result<bool, BackendError> {
    match backend.head(GC_LOCK_KEY).await {
        Ok(_) => Ok(true),
        Err(BackendError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the lease record: GC (another process, maybe another version) reads it.
    #[test]
    fn golden_bytes() {
        let lease = LeaseRecord { purpose: "nar".into(), ttl_secs: 300 };
        let bytes = record::encode(RecordKind::Lease, LEASE_VERSION, &lease);
        assert_eq!(hex::encode(&bytes), "4e474c5301036e6172ac02");
        assert_eq!(record::decode::<LeaseRecord>(RecordKind::Lease, LEASE_VERSION, &bytes).unwrap(), lease);
    }
}
