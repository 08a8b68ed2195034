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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::backend;
    use crate::backend::fault::FaultyBackend;
    use crate::backend::memory::MemoryBackend;
    use crate::castore::lease::{LEASES_PREFIX, Lease};

    /// A backend whose clock stands at `seconds` until moved.
    fn at(seconds: &Arc<AtomicU64>) -> MemoryBackend {
        let seconds = seconds.clone();
        MemoryBackend::new(Arc::new(move || {
            SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.load(Ordering::SeqCst))
        }))
    }

    #[tokio::test]
    async fn a_live_lock_stops_a_second_gc_and_a_dead_one_is_replaced() {
        let clock = Arc::new(AtomicU64::new(1_000_000));
        let backend: DynBackend = Arc::new(at(&clock));
        let ttl = Duration::from_secs(120);
        let first = GcLock::acquire(backend.clone(), ttl, Duration::ZERO).await.unwrap();
        assert_eq!(first.started(), SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
        clock.fetch_add(120, Ordering::SeqCst);
        match GcLock::acquire(backend.clone(), ttl, Duration::ZERO).await {
            Err(GcError::Locked { owner }) => assert_eq!(owner, first.owner()),
            other => panic!("a second GC took a live lock: {other:?}"),
        }
        // An ingest sees the live lock.
        let lease = Lease::acquire(backend.clone(), "test").await.unwrap();
        assert!(!lease.may_skip_existing());
        lease.release().await.unwrap();
        // The first GC died (its refresher with it): past the TTL its lock is dead.
        drop(first);
        clock.fetch_add(1, Ordering::SeqCst);
        let lease = Lease::acquire(backend.clone(), "test").await.unwrap();
        assert!(lease.may_skip_existing(), "an ingest ignores a dead lock");
        lease.release().await.unwrap();
        let second = GcLock::acquire(backend.clone(), ttl, Duration::ZERO).await.unwrap();
        second.check().await.unwrap();
        second.release().await.unwrap();
        assert!(read_lock(backend.as_ref()).await.unwrap().is_none(), "released");
    }

    #[tokio::test]
    async fn a_gc_that_lost_its_lock_leaves_the_new_one_alone() {
        let clock = Arc::new(AtomicU64::new(2_000_000));
        let backend: DynBackend = Arc::new(at(&clock));
        let ttl = Duration::from_secs(120);
        let stalled = GcLock::acquire(backend.clone(), ttl, Duration::ZERO).await.unwrap();
        clock.fetch_add(500, Ordering::SeqCst);
        let new = GcLock::acquire(backend.clone(), ttl, Duration::ZERO).await.unwrap();
        assert!(matches!(stalled.check().await, Err(GcError::LostLock { .. })));
        stalled.release().await.unwrap();
        new.check().await.expect("the stalled GC's release did not delete the new GC's lock");
    }

    #[tokio::test]
    async fn a_failed_lock_check_leaves_no_lease() {
        let clock = Arc::new(AtomicU64::new(3_000_000));
        let faulty = Arc::new(FaultyBackend::new(at(&clock)));
        let backend: DynBackend = faulty.clone();
        faulty.fail_op_prefix(crate::backend::Op::Get, GC_LOCK_KEY);
        assert!(Lease::acquire(backend.clone(), "test").await.is_err());
        faulty.clear();
        assert!(backend::list_all(backend.as_ref(), LEASES_PREFIX).await.unwrap().is_empty());
    }

    /// A backend whose PUTs, once begun, land whatever becomes of their caller, a while later:
    /// a request already on the wire.
    #[derive(Debug)]
    struct OnTheWire(Arc<MemoryBackend>);

    #[async_trait::async_trait]
    impl crate::backend::Backend for OnTheWire {
        async fn get(
            &self,
            key: &str,
            range: Option<std::ops::Range<u64>>,
        ) -> Result<crate::backend::GetResult, BackendError> {
            self.0.get(key, range).await
        }
        async fn put(&self, key: &str, body: Bytes) -> Result<crate::backend::ObjectMeta, BackendError> {
            let (inner, key) = (self.0.clone(), key.to_owned());
            let sent = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(15)).await;
                inner.put(&key, body).await
            });
            sent.await.map_err(|e| BackendError::Body { key: "lease".into(), message: e.to_string() })?
        }
        async fn head(&self, key: &str) -> Result<crate::backend::ObjectMeta, BackendError> {
            self.0.head(key).await
        }
        async fn stat(
            &self,
            key: &str,
        ) -> Result<(crate::backend::ObjectMeta, crate::backend::Attributes), BackendError> {
            self.0.stat(key).await
        }
        async fn put_stream(
            &self,
            key: &str,
            body: crate::backend::ByteStream,
            options: crate::backend::PutOptions,
        ) -> Result<crate::backend::ObjectMeta, BackendError> {
            self.0.put_stream(key, body, options).await
        }
        async fn list(
            &self,
            request: &crate::backend::ListRequest,
        ) -> Result<crate::backend::ListPage, BackendError> {
            self.0.list(request).await
        }
        async fn delete(&self, key: &str) -> Result<(), BackendError> {
            self.0.delete(key).await
        }
    }

    #[tokio::test]
    async fn no_refresh_brings_a_lease_back_after_its_release() {
        let clock = Arc::new(AtomicU64::new(4_000_000));
        let backend: DynBackend = Arc::new(OnTheWire(Arc::new(at(&clock))));
        let times = crate::castore::lease::LeaseTimes {
            refresh: Duration::from_millis(10),
            ttl: Duration::from_secs(5),
            margin: Duration::from_secs(1),
        };
        for _ in 0..20 {
            // Released while a refresh is on the wire.
            let lease = Lease::acquire_with(backend.clone(), "test", times).await.unwrap();
            tokio::time::sleep(Duration::from_millis(18)).await;
            lease.release().await.unwrap();
            tokio::time::sleep(Duration::from_millis(40)).await;
            assert!(
                backend::list_all(backend.as_ref(), LEASES_PREFIX).await.unwrap().is_empty(),
                "a refresh brought the lease back"
            );
        }
    }
}
