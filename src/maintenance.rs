//! The command line's maintenance commands: `gc`, `verify` and `stats`, with progress bars.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use nargate::gc::{self, GcOptions, GcReport, Progress, Tally};

use super::failure::{Failure, Result};
use super::{StoreArgs, open_store};

/// Keeps the memory of a maintenance command as its data structures need it: glibc's malloc
/// raises its mmap threshold (up to 32 MiB) each time a large block is freed, after which the
/// mark's growing vectors live in a heap arena, where each growth copies and leaves the old
/// block behind. A fixed threshold keeps large blocks mapped, where growth is an `mremap`. (The
/// GC benchmark measured 85 bytes of peak RSS per marked chunk without, 37 with.) `serve` keeps
/// glibc's default: there, the raised threshold spares an `mmap` per chunk buffer.
pub fn keep_large_blocks_mapped() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; it is called before the runtime's
    // threads allocate much, and any value is valid for M_MMAP_THRESHOLD up to 32 MiB.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

/// Progress bars on standard error, one per phase.
#[derive(Default)]
pub struct Bars {
    current: Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn start(&self, phase: &str, total: Option<u64>) {
        let bar = match total {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template("{msg:<40} [{bar:30}] {pos}/{len} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {msg:<40} {pos} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_message(phase.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        if let Some(old) = self.current.lock().unwrap_or_else(|p| p.into_inner()).replace(bar) {
            old.finish();
        }
    }

    fn advance(&self, steps: u64) {
        if let Some(bar) = &*self.current.lock().unwrap_or_else(|p| p.into_inner()) {
            bar.inc(steps);
        }
    }

    fn finish(&self, summary: &str) {
        if let Some(bar) = self.current.lock().unwrap_or_else(|p| p.into_inner()).take() {
            bar.finish_with_message(summary.to_owned());
        }
    }
}

/// A number of seconds as the largest whole unit (`30d`, `12h`, `90s`).
pub fn show_duration(secs: u64) -> String {
    for (unit, size) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// Bytes in MiB, for summaries.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn tally_line(name: &str, tally: &Tally, dry_run: bool) -> String {
    format!(
        "{name:<16} looked at {:>8} ({:>10}), kept {:>8} ({:>10}), {} {:>8} ({:>10})",
        tally.looked_at,
        mib(tally.looked_at_bytes),
        tally.kept,
        mib(tally.kept_bytes),
        if dry_run { "would remove" } else { "removed" },
        tally.removed,
        mib(tally.removed_bytes),
    )
}

/// The summary `nargate gc` prints.
pub fn gc_summary(report: &GcReport) -> String {
    let dry = report.dry_run;
    let mut lines = vec![
        tally_line("chunks", &report.chunks, dry),
        tally_line("NAR records", &report.nar_records, dry),
        tally_line("leases", &report.leases, dry),
        tally_line("listing entries", &report.index_entries, dry),
    ];
    if !dry {
        lines.push(format!("abandoned multipart uploads removed: {}", report.uploads_removed));
    }
    lines.push(format!(
        "store paths past their bucket's retention{}: {}",
        if dry { " (would be removed)" } else { " (removed)" },
        report.retention_removed.len()
    ));
    lines.extend(report.retention_removed.iter().map(|path| format!("  {path}")));
    if report.missing_records > 0 {
        lines.push(format!(
            "warning: {} NAR(s) named by a bucket have no record: run `nargate verify`",
            report.missing_records
        ));
    }
    if let Some((stats, _)) = &report.stats {
        lines.push(format!(
            "store counted: {} bucket(s), {} store path(s), {} distinct NAR(s) of {} in {} chunk(s) of {}; dedup ratio {:.2}",
            stats.buckets.len(),
            stats.buckets.values().map(|b| b.store_paths).sum::<u64>(),
            stats.distinct_nars,
            mib(stats.distinct_nar_bytes),
            stats.chunks,
            mib(stats.chunk_bytes),
            stats.dedup_ratio()
        ));
    }
    lines.join("\n")
}

/// `nargate gc`.
pub async fn gc(store: &StoreArgs, grace: Duration, dry_run: bool) -> Result<()> {
    let (config, backend) = open_store(store).await?;
    let options =
        GcOptions { grace, dry_run, abandon_after: config.uploads.abandon_after, ..Default::default() };
    let report =
        gc::collect(&backend, &options, &Bars::default()).await.map_err(|e| Failure(e.to_string()))?;
    println!("{}", gc_summary(&report));
    Ok(())
}

/// `nargate verify`: prints every problem with its key; fails if any is left unrepaired.
pub async fn verify(store: &StoreArgs, bucket: Option<String>, deep: bool, repair: bool) -> Result<()> {
    let (_, backend) = open_store(store).await?;
    let options = gc::verify::VerifyOptions { bucket, deep, repair };
    let report =
        gc::verify::verify(&backend, &options, &Bars::default()).await.map_err(|e| Failure(e.to_string()))?;
    for problem in &report.problems {
        let state = if problem.repaired {
            "repaired"
        } else if repair {
            "cannot be repaired"
        } else {
            "problem"
        };
        println!("{state}: {}: {}", problem.key, problem.what);
    }
    println!(
        "{} bucket(s), {} store path(s), {} NAR record(s), {} chunk(s){}: {} problem(s), {} repaired",
        report.buckets,
        report.store_paths,
        report.nar_records,
        report.chunks,
        if deep { format!(", {} NAR(s) rendered", report.rendered) } else { String::new() },
        report.problems.len(),
        report.problems.iter().filter(|p| p.repaired).count(),
    );
    if report.has_unrepaired() {
        return Err(Failure("the store has problems (see above)".into()));
    }
    Ok(())
}

/// `nargate stats`: counts the store (and, for the whole store, saves the count as the summary
/// `/metrics` shows).
pub async fn stats(store: &StoreArgs, bucket: Option<&str>) -> Result<()> {
    let (_, backend) = open_store(store).await?;
    let stats = match bucket {
        Some(bucket) => gc::stats::compute(&backend, Some(bucket)).await,
        None => gc::stats::recount(&backend).await.map(|(stats, _)| stats),
    }
    .map_err(|e| Failure(e.to_string()))?;
    for (name, figures) in &stats.buckets {
        println!(
            "bucket {name}: {} store path(s), {} NAR(s), {} of NARs in {} of chunks",
            figures.store_paths,
            figures.nars,
            mib(figures.logical_nar_bytes),
            mib(figures.stored_chunk_bytes)
        );
    }
    println!(
        "store: {} distinct NAR(s), {} of NARs; {} chunk(s), {} stored; {} NAR record(s); dedup ratio {:.2}",
        stats.distinct_nars,
        mib(stats.distinct_nar_bytes),
        stats.chunks,
        mib(stats.chunk_bytes),
        stats.nar_records,
        stats.dedup_ratio()
    );
    Ok(())
}

/// Runs a GC every `[gc] interval_secs` (if not zero) for as long as the gateway serves; a turn
/// that finds another gateway's GC running is skipped. Each GC's count of the store is
/// published to `metrics`.
pub fn spawn_gc(
    backend: nargate::backend::DynBackend,
    config: &nargate::config::Config,
    metrics: nargate::metrics::Metrics,
) {
    if config.gc.interval.is_zero() {
        return;
    }
    let (interval, options) = (
        config.gc.interval,
        GcOptions {
            grace: config.gc.grace,
            abandon_after: config.uploads.abandon_after,
            ..Default::default()
        },
    );
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            match gc::collect(&backend, &options, &gc::NoProgress).await {
                Ok(report) => {
                    tracing::info!(
                        chunks_removed = report.chunks.removed,
                        bytes_removed = report.chunks.removed_bytes,
                        nar_records_removed = report.nar_records.removed,
                        "scheduled GC done"
                    );
                    if let Some((stats, counted_at)) = report.stats {
                        metrics.set_store_stats(stats, counted_at);
                    }
                }
                Err(gc::GcError::Locked { owner }) => {
                    tracing::info!(%owner, "scheduled GC skipped: another GC is running")
                }
                Err(e) => tracing::warn!("scheduled GC failed: {e}"),
            }
        }
    });
}

/// Publishes the store's figures to `/metrics` for as long as the gateway serves: the stats
/// summary, loaded now and looked at again every `interval` (one GET), taken when another
/// gateway's GC or `nargate stats` counted the store since; counted here when it is missing or
/// older than `recount`. Between counts, the gateway's own writes change the figures (the
/// metrics are every bucket's change sink).
pub fn spawn_stats(
    backend: nargate::backend::DynBackend,
    metrics: nargate::metrics::Metrics,
    interval: Duration,
    recount: Duration,
) {
    tokio::spawn(async move {
        loop {
            if let Err(e) = refresh_stats(&backend, &metrics, recount).await {
                tracing::warn!("counting the store failed: {e}");
            }
            tokio::time::sleep(interval).await;
        }
    });
}

/// One look at the stats summary (see [`spawn_stats`]).
async fn refresh_stats(
    backend: &nargate::backend::DynBackend,
    metrics: &nargate::metrics::Metrics,
    recount: Duration,
) -> std::result::Result<(), gc::GcError> {
    let now = gc::backend_now(backend).await?;
    let published = metrics.store_stats().map(|(_, counted_at)| counted_at);
    let (stats, counted_at) = match gc::stats::load(backend).await? {
        Some((_, counted_at)) if Some(counted_at) == published && !too_old(counted_at, now, recount) => {
            return Ok(());
        }
        Some((stats, counted_at)) if !too_old(counted_at, now, recount) => (stats, counted_at),
        _ => gc::stats::recount(backend).await?,
    };
    metrics.set_store_stats(stats, counted_at);
    Ok(())
}

fn too_old(counted_at: std::time::SystemTime, now: std::time::SystemTime, recount: Duration) -> bool {
    now.duration_since(counted_at).is_ok_and(|age| age > recount)
}
