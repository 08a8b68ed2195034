//! GC's protocol (DESIGN.md, "GC"), its ingest side, and the records both sides read.
//!
//! An ingest first writes its lease (`leases/<id>`, refreshed while it runs), then looks for
//! `locks/gc`. With no live lock it may skip uploading chunks that already exist; with one it
//! uploads every chunk, and before committing writes its lease again, waits until the lock is
//! gone, and HEADs everything it references. A lock is live while its LastModified is within its
//! TTL of the backend's time (the LastModified of a write just made): a dead GC's lock is ignored.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::record::{self, RecordError, RecordKind};
use crate::backend::{self, Backend, BackendError, DynBackend, ObjectMeta};

/// The key of GC's lock.
pub const GC_LOCK_KEY: &str = "locks/gc";
/// The prefix of every lease.
pub const LEASES_PREFIX: &str = "leases/";
/// The version of the lease record (version 1 had no `started`; it is still read).
pub const LEASE_VERSION: u8 = 2;
/// The version of the lock record.
pub const LOCK_VERSION: u8 = 1;
/// How often a running ingest rewrites its lease.
pub const LEASE_REFRESH: Duration = Duration::from_secs(60);
/// How long a lease that is not refreshed counts as live (GC waits for live leases).
pub const LEASE_TTL: Duration = Duration::from_secs(300);
/// An ingest whose last successful refresh is older than [`LEASE_TTL`] less this margin may have
/// been outlived by its lease, so it re-checks before committing.
pub const LEASE_MARGIN: Duration = Duration::from_secs(60);
/// How long GC's lock lives unless refreshed.
pub const LOCK_TTL: Duration = Duration::from_secs(120);

/// What a lease record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Why the lease exists (e.g. the upload it covers), for operators.
    pub purpose: String,
    /// How long, in seconds, the lease lives after its LastModified unless refreshed.
    pub ttl_secs: u64,
    /// When the lease was first written (its first LastModified, seconds since the Unix epoch):
    /// refreshes keep it, so GC knows which ingests began before it did.
    pub started: u64,
    /// The owner of the GC lock this ingest has seen (and so follows the protocol for): that GC
    /// need not wait for it.
    pub aware_of: Option<String>,
}

/// The lease record as version 1 wrote it.
#[derive(Deserialize)]
struct LeaseRecordV1 {
    purpose: String,
    ttl_secs: u64,
}

impl LeaseRecord {
    /// Serializes the record.
    pub fn encode(&self) -> Vec<u8> {
        record::encode(RecordKind::Lease, LEASE_VERSION, self)
    }

    /// Reads the record, of version 2 or 1 (whose start is unknown: read as the epoch, so GC
    /// waits for it).
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.get(RecordKind::Lease.magic().len()) == Some(&1) {
            let v1: LeaseRecordV1 = record::decode(RecordKind::Lease, 1, bytes)?;
            return Ok(LeaseRecord {
                purpose: v1.purpose,
                ttl_secs: v1.ttl_secs,
                started: 0,
                aware_of: None,
            });
        }
        record::decode(RecordKind::Lease, LEASE_VERSION, bytes)
    }
}

/// What GC's lock record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// The GC holding the lock (random), so a GC can tell its own lock from another's.
    pub owner: String,
    /// How long, in seconds, the lock lives after its LastModified unless refreshed.
    pub ttl_secs: u64,
}

impl LockRecord {
    /// Serializes the record.
    pub fn encode(&self) -> Vec<u8> {
        record::encode(RecordKind::Lock, LOCK_VERSION, self)
    }

    /// Reads the record.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        record::decode(RecordKind::Lock, LOCK_VERSION, bytes)
    }
}

/// GC's lock as found in the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundLock {
    /// Its record (`None` when it cannot be read: such a lock counts, with [`LOCK_TTL`]).
    pub record: Option<LockRecord>,
    /// Its metadata (LastModified is when it was last refreshed).
    pub meta: ObjectMeta,
}

impl FoundLock {
    /// The owner named by the record (`?` if it cannot be read).
    pub fn owner(&self) -> String {
        self.record.as_ref().map_or_else(|| "?".to_owned(), |r| r.owner.clone())
    }

    /// Whether the lock is live at the backend time `now`: refreshed within its TTL.
    pub fn is_live(&self, now: SystemTime) -> bool {
        let ttl = self.record.as_ref().map_or(LOCK_TTL, |r| Duration::from_secs(r.ttl_secs));
        now.duration_since(self.meta.last_modified).map_or(true, |age| age <= ttl)
    }
}

/// Reads GC's lock, if there is one.
pub async fn read_lock(backend: &dyn Backend) -> Result<Option<FoundLock>, BackendError> {
    match backend::get_bytes_with_meta(backend, GC_LOCK_KEY).await {
        Ok((bytes, meta)) => Ok(Some(FoundLock { record: LockRecord::decode(&bytes).ok(), meta })),
        Err(BackendError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// When a lease's timers run: the defaults, or shorter ones in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimes {
    /// How often the lease is rewritten.
    pub refresh: Duration,
    /// How long it lives unless rewritten.
    pub ttl: Duration,
    /// The ingest re-checks if its last rewrite is older than `ttl - margin`.
    pub margin: Duration,
}

impl Default for LeaseTimes {
    fn default() -> Self {
        LeaseTimes { refresh: LEASE_REFRESH, ttl: LEASE_TTL, margin: LEASE_MARGIN }
    }
}

/// The part of a lease its refresher and its owner share.
#[derive(Debug)]
struct LeaseState {
    /// What the lease says.
    record: LeaseRecord,
    /// When the lease was last written (this process's clock).
    last_written: Instant,
    /// Set by [`Lease::release`]: from then on nothing rewrites the lease.
    ended: bool,
}

/// An ingest's lease: written on [`Lease::acquire`], refreshed in the background, deleted on
/// [`Lease::release`] (or left to expire if the process dies).
#[derive(Debug)]
pub struct Lease {
    backend: DynBackend,
    key: String,
    times: LeaseTimes,
    gc_was_locked: bool,
    /// Held across every write of the lease, so that no refresh is in flight after the release.
    state: Arc<Mutex<LeaseState>>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Writes a new lease, then looks for GC's lock (with the default timers).
    pub async fn acquire(backend: DynBackend, purpose: &str) -> Result<Lease, BackendError> {
        Self::acquire_with(backend, purpose, LeaseTimes::default()).await
    }

    /// Writes a new lease, then looks for GC's lock. If the look fails, the lease is deleted
    /// before the error is returned.
    pub async fn acquire_with(
        backend: DynBackend,
        purpose: &str,
        times: LeaseTimes,
    ) -> Result<Lease, BackendError> {
        let key = format!("{LEASES_PREFIX}{}", hex::encode(rand::random::<[u8; 16]>()));
        let mut record = LeaseRecord {
            purpose: purpose.to_owned(),
            ttl_secs: times.ttl.as_secs(),
            started: 0,
            aware_of: None,
        };
        let written = Instant::now();
        let looked = async {
            // The first write tells the backend's time; the lock is judged against it.
            let now = backend.put(&key, Bytes::from(record.encode())).await?.last_modified;
            let lock = read_lock(backend.as_ref()).await?.filter(|lock| lock.is_live(now));
            record.started = unix_secs(now);
            record.aware_of = lock.as_ref().map(FoundLock::owner);
            // The second keeps the start, and tells a running GC that this ingest saw its lock.
            backend.put(&key, Bytes::from(record.encode())).await?;
            Ok::<_, BackendError>(lock.is_some())
        };
        let gc_was_locked = match looked.await {
            Ok(locked) => locked,
            Err(e) => {
                let _ = backend.delete(&key).await;
                return Err(e);
            }
        };
        let state = Arc::new(Mutex::new(LeaseState { record, last_written: written, ended: false }));
        let refresher = tokio::spawn(refresh(backend.clone(), key.clone(), times, state.clone()));
        Ok(Lease { backend, key, times, gc_was_locked, state, refresher })
    }

    /// The lease's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether uploads may skip chunks that already exist: only if no live GC lock was there when
    /// the lease was taken.
    pub fn may_skip_existing(&self) -> bool {
        !self.gc_was_locked
    }

    /// Whether the ingest must re-check, before committing, that everything it references exists:
    /// a GC was running when it started, or its lease may have expired (its last successful
    /// write is older than the TTL less the margin).
    pub async fn must_recheck(&self) -> bool {
        let last = self.state.lock().await.last_written;
        self.gc_was_locked || last.elapsed() > self.times.ttl.saturating_sub(self.times.margin)
    }

    /// The first half of a re-check, in the order GC's protocol needs: writes the lease again
    /// (so a GC starting from now on waits for it), then waits until no live GC lock is left,
    /// polling every `interval` for at most `timeout`. Returns whether the lock went; the
    /// caller then HEADs what it references.
    pub async fn renew_and_wait_for_gc(
        &self,
        interval: Duration,
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        let deadline = Instant::now() + timeout;
        loop {
            // Each poll writes the lease: that keeps it live, tells the GC seen last that this
            // ingest waits for it, and its LastModified is the backend's time, against which the
            // lock's age is judged.
            let now = self.write().await?;
            let Some(lock) = read_lock(self.backend.as_ref()).await?.filter(|lock| lock.is_live(now)) else {
                return Ok(true);
            };
            self.state.lock().await.record.aware_of = Some(lock.owner());
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Writes the lease now; returns the backend's time of the write.
    async fn write(&self) -> Result<SystemTime, BackendError> {
        let mut state = self.state.lock().await;
        let attempt = Instant::now();
        let meta = self.backend.put(&self.key, Bytes::from(state.record.encode())).await?;
        state.last_written = attempt;
        Ok(meta.last_modified)
    }

    /// Ends the lease: waits for any refresh in flight, stops refreshing, and deletes it.
    pub async fn release(self) -> Result<(), BackendError> {
        self.state.lock().await.ended = true;
        self.refresher.abort();
        self.backend.delete(&self.key).await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

/// The refresher: rewrites the lease every `times.refresh`, holding the state's lock across each
/// write, until the lease is released.
async fn refresh(backend: DynBackend, key: String, times: LeaseTimes, state: Arc<Mutex<LeaseState>>) {
    loop {
        tokio::time::sleep(times.refresh).await;
        let mut state = state.lock().await;
        if state.ended {
            return;
        }
        let attempt = Instant::now();
        if backend.put(&key, Bytes::from(state.record.encode())).await.is_ok() {
            state.last_written = attempt;
        }
    }
}

/// Seconds since the Unix epoch of a backend time (0 for a time before it).
pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the lease and lock records: GC (another process, maybe another version) reads them.
    #[test]
    fn golden_bytes() {
        let lease =
            LeaseRecord { purpose: "nar".into(), ttl_secs: 300, started: 5, aware_of: Some("ab".into()) };
        assert_eq!(hex::encode(lease.encode()), "4e474c5302036e6172ac020501026162");
        assert_eq!(LeaseRecord::decode(&lease.encode()).unwrap(), lease);
        // Version 1 is still read, with an unknown start.
        let v1 = LeaseRecord::decode(&hex::decode("4e474c5301036e6172ac02").unwrap()).unwrap();
        assert_eq!(v1, LeaseRecord { started: 0, aware_of: None, ..lease });
        let lock = LockRecord { owner: "ab".into(), ttl_secs: 120 };
        assert_eq!(hex::encode(lock.encode()), "4e474c4b0102616278");
        assert_eq!(LockRecord::decode(&lock.encode()).unwrap(), lock);
    }

    #[test]
    fn a_lock_is_live_within_its_ttl_of_the_backends_time() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let lock = FoundLock {
            record: Some(LockRecord { owner: "x".into(), ttl_secs: 10 }),
            meta: ObjectMeta { key: GC_LOCK_KEY.into(), size: 0, etag: String::new(), last_modified: at },
        };
        assert!(lock.is_live(at));
        assert!(lock.is_live(at + Duration::from_secs(10)));
        assert!(!lock.is_live(at + Duration::from_secs(11)));
        // A backend clock behind the lock's time: live.
        assert!(lock.is_live(at - Duration::from_secs(5)));
        let unreadable = FoundLock { record: None, ..lock };
        assert!(unreadable.is_live(at + LOCK_TTL));
        assert!(!unreadable.is_live(at + LOCK_TTL + Duration::from_secs(1)));
    }
}
