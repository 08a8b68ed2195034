//! Garbage collection (DESIGN.md, "GC"): mark and sweep on the backend's time, safe against
//! ingests and commits running at the same time.
//!
//! [`collect`] runs the phases in order:
//!
//! 1. **Lock** ([`lock`]): write `locks/gc`; its LastModified is the start, T0. Ingests that
//!    start from now on see it and follow the protocol (upload every chunk, re-check before
//!    committing).
//! 2. **Retention** ([`retention`]): remove the store paths that buckets keep no longer, but for
//!    those a kept path needs.
//! 3. **Leases**: wait until every lease begun before T0 has ended or expired.
//! 4. **Mark** ([`mark`]): the NARs that path infos, the caches' NAR entries and pending
//!    narinfos name, and NAR records younger than the grace period, then the chunks of those
//!    records, as a sorted list (16 bytes per marked chunk).
//! 5. **Sweep** ([`sweep`]): unmarked NAR records, then unmarked chunks, older than T0 − grace,
//!    each HEADed just before its DELETE and spared if written since; expired leases; listing
//!    entries of keys that are gone; abandoned multipart uploads.
//!
//! 6. **Count** ([`stats`]): the store's figures, saved as the stats summary.
//!
//! With `dry_run` nothing is locked, waited for, deleted or counted: the report says what would
//! go.

pub mod lock;
pub mod mark;
pub mod progress;
pub mod retention;
pub mod stats;
pub mod sweep;
pub mod verify;

use std::time::{Duration, SystemTime};

use crate::backend::{BackendError, DynBackend};
use crate::cache::CommitError;
use crate::cache::uploads::UploadError;
use crate::castore::lease::LOCK_TTL;

pub use lock::{GcLock, backend_now};
pub use progress::{NoProgress, Progress};

/// How a GC runs.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Nothing written less than this long before the GC started is removed.
    pub grace: Duration,
    /// Report what would be removed; lock, wait for and delete nothing.
    pub dry_run: bool,
    /// Multipart uploads nothing was written to for this long are removed.
    pub abandon_after: Duration,
    /// The TTL of the GC lock (it is refreshed every quarter of it).
    pub lock_ttl: Duration,
    /// How long to wait after writing the lock before reading it back.
    pub settle: Duration,
    /// How often to look again at leases the GC waits for.
    pub poll: Duration,
    /// Backend requests in flight at once.
    pub concurrency: usize,
}

/// [`GcOptions::grace`] by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: DEFAULT_GRACE,
            dry_run: false,
            abandon_after: crate::cache::uploads::DEFAULT_ABANDON_AFTER,
            lock_ttl: LOCK_TTL,
            settle: Duration::from_secs(1),
            poll: Duration::from_secs(1),
            concurrency: 16,
        }
    }
}

/// Objects of one kind that a GC looked at, kept and removed (with their bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Objects looked at.
    pub looked_at: u64,
    /// Their bytes.
    pub looked_at_bytes: u64,
    /// Objects kept.
    pub kept: u64,
    /// Their bytes.
    pub kept_bytes: u64,
    /// Objects removed (or, in a dry run, that would be).
    pub removed: u64,
    /// Their bytes.
    pub removed_bytes: u64,
}

impl std::ops::Add for Tally {
    type Output = Tally;

    fn add(self, other: Tally) -> Tally {
        Tally {
            looked_at: self.looked_at + other.looked_at,
            looked_at_bytes: self.looked_at_bytes + other.looked_at_bytes,
            kept: self.kept + other.kept,
            kept_bytes: self.kept_bytes + other.kept_bytes,
            removed: self.removed + other.removed,
            removed_bytes: self.removed_bytes + other.removed_bytes,
        }
    }
}

impl Tally {
    /// Counts an object looked at and kept.
    pub fn keep(&mut self, size: u64) {
        self.looked_at += 1;
        self.looked_at_bytes += size;
        self.kept += 1;
        self.kept_bytes += size;
    }

    /// Counts an object looked at and removed.
    pub fn remove(&mut self, size: u64) {
        self.looked_at += 1;
        self.looked_at_bytes += size;
        self.removed += 1;
        self.removed_bytes += size;
    }
}

/// What a GC did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Whether it was a dry run (nothing was removed; the figures say what would be).
    pub dry_run: bool,
    /// Chunks.
    pub chunks: Tally,
    /// NAR records.
    pub nar_records: Tally,
    /// Leases.
    pub leases: Tally,
    /// Listing-index entries.
    pub index_entries: Tally,
    /// Abandoned multipart uploads removed.
    pub uploads_removed: usize,
    /// Store paths removed by retention, as `bucket/<hash>-<name>`.
    pub retention_removed: Vec<String>,
    /// NARs that a bucket names but whose record is missing (`nargate verify` tells more).
    pub missing_records: u64,
    /// The store as counted after the sweep and saved as the stats summary, and when (not in
    /// a dry run; `None` also if the count failed: the GC itself did not).
    pub stats: Option<(stats::StoreStats, SystemTime)>,
}

/// Why a GC stopped.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Another GC holds a live lock.
    #[error("another GC is running (it holds locks/gc, owner {owner}); try again when it is done")]
    Locked {
        /// The lock's owner.
        owner: String,
    },
    /// The lock stopped being this GC's while it ran (it outlived its TTL and another GC took it).
    #[error("this GC lost locks/gc (now {owner}) and stopped before deleting more")]
    LostLock {
        /// Who holds it now.
        owner: String,
    },
    /// A record that decides what is kept cannot be read: nothing is swept.
    #[error("{key} cannot be read ({reason}): nothing was swept; run `nargate verify`")]
    Unreadable {
        /// The record's key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A cache operation (retention) failed.
    #[error(transparent)]
    Cache(#[from] CommitError),
    /// Removing abandoned uploads failed.
    #[error(transparent)]
    Uploads(#[from] UploadError),
}

/// Runs one GC over `backend` (see the [module documentation](self)).
pub async fn collect(
    backend: &DynBackend,
    options: &GcOptions,
    progress: &dyn Progress,
) -> Result<GcReport, GcError> {
    let lock = if options.dry_run {
        None
    } else {
        Some(GcLock::acquire(backend.clone(), options.lock_ttl, options.settle).await?)
    };
    let started = match &lock {
        Some(lock) => lock.started(),
        None => backend_now(backend).await?,
    };
    let result = run(backend, options, progress, started, lock.as_ref()).await;
    if let Some(lock) = lock {
        let released = lock.release().await;
        let mut report = result?;
        released?;
        // The store as the GC left it: the summary `/metrics` shows.
        match stats::recount(backend).await {
            Ok(counted) => report.stats = Some(counted),
            Err(e) => tracing::warn!("counting the store after the GC failed: {e}"),
        }
        return Ok(report);
    }
    result
}

async fn run(
    backend: &DynBackend,
    options: &GcOptions,
    progress: &dyn Progress,
    started: SystemTime,
    lock: Option<&GcLock>,
) -> Result<GcReport, GcError> {
    let cutoff = started.checked_sub(options.grace).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut report = GcReport { dry_run: options.dry_run, ..Default::default() };
    report.retention_removed = retention::apply(backend, options.dry_run, progress).await?;
    if let Some(lock) = lock {
        sweep::wait_for_leases(backend, started, lock.owner(), options.poll, progress).await?;
    }
    let roots = mark::roots(backend, options.concurrency, progress).await?;
    let marked = mark::nar_records(backend, &roots, cutoff, options.concurrency, progress).await?;
    report.missing_records = marked.missing_records;
    if let Some(lock) = lock {
        lock.check().await?;
    }
    let sweeper =
        sweep::Sweeper { backend, cutoff, dry_run: options.dry_run, concurrency: options.concurrency };
    report.nar_records = marked.kept + sweeper.remove_all(&marked.unmarked, progress, "NAR records").await?;
    report.chunks = sweeper.chunks(marked.chunks.as_slice(), progress, lock).await?;
    report.leases = sweeper.leases(progress).await?;
    report.index_entries = sweeper.index_entries(&roots, progress).await?;
    if !options.dry_run {
        report.uploads_removed =
            crate::cache::uploads::remove_abandoned(backend, options.abandon_after).await?;
    }
    Ok(report)
}
