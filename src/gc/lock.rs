//! GC's side of the lock (`locks/gc`): taken before anything is looked at, refreshed while the
//! GC runs, released at its end; a lock that outlived its TTL belongs to a dead GC and is
//! replaced.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::Mutex;

use super::GcError;
use crate::backend::{BackendError, DynBackend};
use crate::castore::lease::{GC_LOCK_KEY, LockRecord, read_lock};

/// The key GC writes to read the backend's clock.
const CLOCK_KEY: &str = "locks/clock";

/// The backend's time now: the LastModified of a small object written for it.
pub async fn backend_now(backend: &DynBackend) -> Result<SystemTime, BackendError> {
    Ok(backend.put(CLOCK_KEY, Bytes::new()).await?.last_modified)
}

/// GC's lock, held until [`GcLock::release`].
#[derive(Debug)]
pub struct GcLock {
    backend: DynBackend,
    record: LockRecord,
    /// When the lock was first written, by the backend's clock: the GC's start (T0).
    started: SystemTime,
    /// Whether the lock is still ours; held across every write, so none is in flight after the
    /// release.
    held: Arc<Mutex<bool>>,
    refresher: tokio::task::JoinHandle<()>,
}

impl GcLock {
    /// Takes the lock: fails with [`GcError::Locked`] if another GC holds a live one. After
    /// writing it, waits `settle` and reads it back, so that of two GCs that started at once
    /// only the one whose write landed last goes on.
    pub async fn acquire(backend: DynBackend, ttl: Duration, settle: Duration) -> Result<GcLock, GcError> {
        let now = backend_now(&backend).await?;
        if let Some(lock) = read_lock(backend.as_ref()).await?
            && lock.is_live(now)
        {
            return Err(GcError::Locked { owner: lock.owner() });
        }
        let record =
            LockRecord { owner: hex::encode(rand::random::<[u8; 8]>()), ttl_secs: ttl.as_secs().max(1) };
        let body = Bytes::from(record.encode());
        let started = backend.put(GC_LOCK_KEY, body.clone()).await?.last_modified;
        tokio::time::sleep(settle).await;
        match read_lock(backend.as_ref()).await? {
            Some(lock) if lock.record.as_ref() == Some(&record) => {}
            other => {
                return Err(GcError::Locked {
                    owner: other.map_or_else(|| "none".to_owned(), |l| l.owner()),
                });
            }
        }
        let held = Arc::new(Mutex::new(true));
        let refresher = tokio::spawn(refresh(backend.clone(), body, ttl / 4, held.clone()));
        Ok(GcLock { backend, record, started, held, refresher })
    }

    /// When the GC started (T0), by the backend's clock.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// The lock's owner id.
    pub fn owner(&self) -> &str {
        &self.record.owner
    }

    /// Checks that the lock is still ours (a GC that lost it must stop before deleting more).
    pub async fn check(&self) -> Result<(), GcError> {
        match read_lock(self.backend.as_ref()).await? {
            Some(lock) if lock.record.as_ref() == Some(&self.record) => Ok(()),
            other => Err(GcError::LostLock { owner: other.map_or_else(|| "none".to_owned(), |l| l.owner()) }),
        }
    }

    /// Releases the lock: stops refreshing (waiting for a refresh in flight), then deletes it if
    /// it is still ours.
    pub async fn release(self) -> Result<(), GcError> {
        *self.held.lock().await = false;
        self.refresher.abort();
        if let Some(lock) = read_lock(self.backend.as_ref()).await?
            && lock.record.as_ref() == Some(&self.record)
        {
            self.backend.delete(GC_LOCK_KEY).await?;
        }
        Ok(())
    }
}

impl Drop for GcLock {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

/// Rewrites the lock every `every` while it is held.
async fn refresh(backend: DynBackend, body: Bytes, every: Duration, held: Arc<Mutex<bool>>) {
    loop {
        tokio::time::sleep(every).await;
        let held = held.lock().await;
        if !*held {
            return;
        }
        if let Err(e) = backend.put(GC_LOCK_KEY, body.clone()).await {
            tracing::warn!("could not refresh the GC lock: {e}");
        }
    }
}
