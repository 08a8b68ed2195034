//! The gateway's metrics: a small registry of counters, gauges and fixed-bucket histograms over
//! atomics, written out in the Prometheus text exposition format (version 0.0.4) by
//! [`Metrics::render`] for the admin listener's `/metrics`.
//!
//! Labels come from small fixed sets (S3 operation names, HTTP statuses, backend [`Op`]s,
//! [`CacheKind`]s) and bucket names, so no client can make a series without bound. What is
//! measured, and where:
//!
//! | metric | type | labels | recorded by |
//! |---|---|---|---|
//! | `nargate_requests_total` | counter | `op`, `status` | the HTTP layer, when a response ends |
//! | `nargate_request_bytes_total` | counter | `op` | request body bytes received |
//! | `nargate_response_bytes_total` | counter | `op` | response body bytes sent |
//! | `nargate_request_duration_seconds` | histogram | `op` | request start to response end |
//! | `nargate_requests_in_flight` | gauge | | requests whose response has not ended |
//! | `nargate_cache_hits_total`, `nargate_cache_misses_total` | counter | `cache` | the renderer's and the chunk store's cache lookups |
//! | `nargate_backend_requests_total` | counter | `op` | [`MeteredBackend`](crate::backend::metered::MeteredBackend) |
//! | `nargate_backend_errors_total` | counter | `op` | the same, for requests that failed |
//! | `nargate_backend_request_duration_seconds` | histogram | `op` | the same (a GET until its body starts) |
//! | `nargate_bucket_store_paths`, `nargate_bucket_nars`, `nargate_bucket_logical_nar_bytes`, `nargate_bucket_stored_chunk_bytes` | gauge | `bucket` | the stats summary: [`Metrics::set_store_stats`], then each write's [`BucketChange`] |
//! | `nargate_store_distinct_nars`, `nargate_store_distinct_nar_bytes`, `nargate_store_chunks`, `nargate_store_chunk_bytes`, `nargate_store_nar_records`, `nargate_store_dedup_ratio` | gauge | | the same |
//! | `nargate_stats_counted_timestamp_seconds` | gauge | | when the summary was last counted |
//!
//! ```
//! use std::time::Duration;
//! use nargate::metrics::{CacheKind, Metrics};
//!
//! let metrics = Metrics::new();
//! metrics.record_request("GetObject", 200, 0, 1234, Duration::from_millis(3));
//! metrics.record_cache(CacheKind::Chunk, true);
//! let mut stats = nargate::gc::stats::StoreStats::default();
//! stats.apply("cache", &nargate::cache::BucketChange::nar(1, 1000));
//! metrics.set_store_stats(stats, std::time::SystemTime::UNIX_EPOCH);
//! let text = metrics.render();
//! assert!(text.contains("nargate_requests_total{op=\"GetObject\",status=\"200\"} 1\n"));
//! assert!(text.contains("nargate_cache_hits_total{cache=\"chunk\"} 1\n"));
//! assert!(text.contains("nargate_bucket_logical_nar_bytes{bucket=\"cache\"} 1000\n"));
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::backend::Op;
use crate::cache::{BucketChange, ChangeSink};
use crate::gc::stats::StoreStats;

/// The upper bounds, in seconds, of the buckets of every latency histogram (`+Inf` follows).
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The caches whose lookups are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheKind {
    /// The renderer's segment tables (one per NAR).
    SegmentTable,
    /// The renderer's store-path trees (buckets that browse).
    Tree,
    /// The chunk store's verified chunks.
    Chunk,
}

impl CacheKind {
    /// Every kind, in the order they are written.
    pub const ALL: [CacheKind; 3] = [CacheKind::SegmentTable, CacheKind::Tree, CacheKind::Chunk];

    /// The `cache` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheKind::SegmentTable => "segment_table",
            CacheKind::Tree => "tree",
            CacheKind::Chunk => "chunk",
        }
    }
}

/// Every backend operation, in the order they are written.
const BACKEND_OPS: [Op; 5] = [Op::Get, Op::Put, Op::Head, Op::List, Op::Delete];

fn op_index(op: Op) -> usize {
    match op {
        Op::Get => 0,
        Op::Put => 1,
        Op::Head => 2,
        Op::List => 3,
        Op::Delete => 4,
    }
}

/// A histogram over [`LATENCY_BUCKETS`]: a count per bucket (not cumulative; [`Metrics::render`]
/// adds them up), the sum in nanoseconds, and the count.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&le| secs <= le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// How many observations there were.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines of `name` with `labels` (`key="value"`
    /// pairs, already escaped, or empty).
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        // The count is read first: observations landing meanwhile may make a bucket exceed it,
        // never fall short of it, so `+Inf` (written as the count) is at least every bucket.
        let count = self.count();
        let mut cumulative = 0;
        for (le, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {}", cumulative.min(count));
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// What is kept per S3 operation and status.
#[derive(Debug, Default, Clone, Copy)]
struct RequestTotals {
    count: u64,
    bytes_in: u64,
    bytes_out: u64,
}

/// The registry; shared through [`Metrics`].
#[derive(Debug, Default)]
struct Registry {
    requests: Mutex<BTreeMap<(String, u16), RequestTotals>>,
    request_durations: Mutex<BTreeMap<String, Arc<Histogram>>>,
    in_flight: AtomicI64,
    cache_hits: [AtomicU64; 3],
    cache_misses: [AtomicU64; 3],
    backend_requests: [AtomicU64; 5],
    backend_errors: [AtomicU64; 5],
    backend_durations: [Histogram; 5],
    stats: Mutex<Option<(StoreStats, SystemTime)>>,
}

/// A handle to a metrics registry: cheap to clone, every clone records into the same registry.
/// [`Default`] makes a fresh, empty one.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    registry: Arc<Registry>,
}

/// Locks a map whose every update is whole, so it stays consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Metrics {
    /// A fresh, empty registry.
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Records a finished request: its S3 operation (or what the HTTP layer called it), its
    /// status, the body bytes received and sent, and how long it took to its response's end.
    pub fn record_request(&self, op: &str, status: u16, bytes_in: u64, bytes_out: u64, elapsed: Duration) {
        {
            let mut requests = lock(&self.registry.requests);
            let totals = match requests.get_mut(&(op.to_owned(), status)) {
                Some(totals) => totals,
                None => requests.entry((op.to_owned(), status)).or_default(),
            };
            totals.count += 1;
            totals.bytes_in += bytes_in;
            totals.bytes_out += bytes_out;
        }
        let histogram = {
            let mut durations = lock(&self.registry.request_durations);
            match durations.get(op) {
                Some(histogram) => histogram.clone(),
                None => durations.entry(op.to_owned()).or_default().clone(),
            }
        };
        histogram.observe(elapsed);
    }

    /// A request started (`+1`) or its response ended (`-1`), for `nargate_requests_in_flight`.
    pub fn add_in_flight(&self, delta: i64) {
        self.registry.in_flight.fetch_add(delta, Ordering::Relaxed);
    }

    /// Records a lookup in the cache `kind`: a hit or a miss.
    pub fn record_cache(&self, kind: CacheKind, hit: bool) {
        let counters = if hit { &self.registry.cache_hits } else { &self.registry.cache_misses };
        counters[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Records a backend request of kind `op`: whether it succeeded, and how long it took.
    pub fn record_backend(&self, op: Op, ok: bool, elapsed: Duration) {
        let i = op_index(op);
        self.registry.backend_requests[i].fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.registry.backend_errors[i].fetch_add(1, Ordering::Relaxed);
        }
        self.registry.backend_durations[i].observe(elapsed);
    }

    /// Publishes the store's figures, as counted at `counted_at` (the stats summary): they
    /// replace what was published, and each write's change is added to them from now on.
    pub fn set_store_stats(&self, stats: StoreStats, counted_at: SystemTime) {
        *lock(&self.registry.stats) = Some((stats, counted_at));
    }

    /// The store's figures as published (the summary and the changes since), if counted yet.
    pub fn store_stats(&self) -> Option<(StoreStats, SystemTime)> {
        lock(&self.registry.stats).clone()
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let r = &*self.registry;
        let mut out = String::new();
        let requests = lock(&r.requests).clone();

        header(&mut out, "nargate_requests_total", "counter", "HTTP requests, by S3 operation and status.");
        for ((op, status), totals) in &requests {
            let _ = writeln!(
                out,
                "nargate_requests_total{{op=\"{}\",status=\"{status}\"}} {}",
                escape(op),
                totals.count
            );
        }
        let mut by_op: BTreeMap<&str, RequestTotals> = BTreeMap::new();
        for ((op, _), totals) in &requests {
            let sum = by_op.entry(op).or_default();
            sum.bytes_in += totals.bytes_in;
            sum.bytes_out += totals.bytes_out;
        }
        header(&mut out, "nargate_request_bytes_total", "counter", "Request body bytes received.");
        for (op, totals) in &by_op {
            let _ = writeln!(out, "nargate_request_bytes_total{{op=\"{}\"}} {}", escape(op), totals.bytes_in);
        }
        header(&mut out, "nargate_response_bytes_total", "counter", "Response body bytes sent.");
        for (op, totals) in &by_op {
            let _ =
                writeln!(out, "nargate_response_bytes_total{{op=\"{}\"}} {}", escape(op), totals.bytes_out);
        }
        let durations = lock(&r.request_durations).clone();
        header(
            &mut out,
            "nargate_request_duration_seconds",
            "histogram",
            "Time from a request's start to its response's end, by S3 operation.",
        );
        for (op, histogram) in &durations {
            histogram.write(&mut out, "nargate_request_duration_seconds", &format!("op=\"{}\"", escape(op)));
        }
        header(&mut out, "nargate_requests_in_flight", "gauge", "Requests whose response has not ended.");
        let _ = writeln!(out, "nargate_requests_in_flight {}", r.in_flight.load(Ordering::Relaxed));

        for (name, help, counters) in [
            ("nargate_cache_hits_total", "Cache lookups that found their entry.", &r.cache_hits),
            ("nargate_cache_misses_total", "Cache lookups that had to load their entry.", &r.cache_misses),
        ] {
            header(&mut out, name, "counter", help);
            for kind in CacheKind::ALL {
                let value = counters[kind as usize].load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{cache=\"{}\"}} {value}", kind.as_str());
            }
        }

        for (name, help, counters) in [
            ("nargate_backend_requests_total", "Requests to the backend, by operation.", &r.backend_requests),
            (
                "nargate_backend_errors_total",
                "Backend requests that failed, by operation.",
                &r.backend_errors,
            ),
        ] {
            header(&mut out, name, "counter", help);
            for op in BACKEND_OPS {
                let value = counters[op_index(op)].load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{op=\"{}\"}} {value}", op.as_str());
            }
        }
        header(
            &mut out,
            "nargate_backend_request_duration_seconds",
            "histogram",
            "Latency of backend requests, by operation (a GET until its body starts).",
        );
        for op in BACKEND_OPS {
            r.backend_durations[op_index(op)].write(
                &mut out,
                "nargate_backend_request_duration_seconds",
                &format!("op=\"{}\"", op.as_str()),
            );
        }

        if let Some((stats, counted_at)) = lock(&r.stats).clone() {
            write_store_stats(&mut out, &stats, counted_at);
        }
        out
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a metric.
impl ChangeSink for Metrics {
    fn changed(&self, bucket: &str, change: BucketChange) {
        if let Some((stats, _)) = lock(&self.registry.stats).as_mut() {
            stats.apply(bucket, &change);
        }
    }
}

/// Writes the stats summary's gauges.
fn write_store_stats(out: &mut String, stats: &StoreStats, counted_at: SystemTime) {
    type Figure = fn(&crate::gc::stats::BucketStats) -> u64;
    let per_bucket: [(&str, &str, Figure); 4] = [
        ("nargate_bucket_store_paths", "Store paths a bucket holds.", |b| b.store_paths),
        ("nargate_bucket_nars", "NARs a bucket holds.", |b| b.nars),
        ("nargate_bucket_logical_nar_bytes", "NAR bytes a bucket serves (the NarSize of its NARs).", |b| {
            b.logical_nar_bytes
        }),
        (
            "nargate_bucket_stored_chunk_bytes",
            "Chunk bytes a bucket's NARs take in the backend (shared chunks count in each bucket).",
            |b| b.stored_chunk_bytes,
        ),
    ];
    for (name, help, figure) in per_bucket {
        header(out, name, "gauge", help);
        for (bucket, figures) in &stats.buckets {
            let _ = writeln!(out, "{name}{{bucket=\"{}\"}} {}", escape(bucket), figure(figures));
        }
    }
    let store: [(&str, &str, f64); 6] = [
        ("nargate_store_distinct_nars", "Distinct NARs over every bucket.", stats.distinct_nars as f64),
        (
            "nargate_store_distinct_nar_bytes",
            "Their bytes (a NAR two buckets hold counts once).",
            stats.distinct_nar_bytes as f64,
        ),
        ("nargate_store_chunks", "Chunk objects stored.", stats.chunks as f64),
        ("nargate_store_chunk_bytes", "Their bytes as stored (compressed).", stats.chunk_bytes as f64),
        ("nargate_store_nar_records", "NAR records stored.", stats.nar_records as f64),
        (
            "nargate_store_dedup_ratio",
            "Distinct NAR bytes per stored chunk byte: what dedup and compression save.",
            stats.dedup_ratio(),
        ),
    ];
    for (name, help, value) in store {
        header(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    let counted = counted_at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    header(
        out,
        "nargate_stats_counted_timestamp_seconds",
        "gauge",
        "When the stats summary was last counted.",
    );
    let _ = writeln!(out, "nargate_stats_counted_timestamp_seconds {counted}");
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value as the text format wants: `\`, `"` and newlines.
fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `series` (name and labels exactly as written) in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn requests_are_counted_by_op_and_status() {
        let metrics = Metrics::new();
        metrics.record_request("GetObject", 200, 0, 100, Duration::from_millis(2));
        metrics.record_request("GetObject", 200, 0, 50, Duration::from_millis(20));
        metrics.record_request("GetObject", 404, 0, 7, Duration::from_millis(1));
        metrics.record_request("PutObject", 200, 4096, 0, Duration::from_secs(30));
        let clone = metrics.clone();
        clone.add_in_flight(2);
        clone.add_in_flight(-1);
        let text = metrics.render();
        assert_eq!(sample(&text, "nargate_requests_total{op=\"GetObject\",status=\"200\"}"), Some(2.0));
        assert_eq!(sample(&text, "nargate_requests_total{op=\"GetObject\",status=\"404\"}"), Some(1.0));
        assert_eq!(sample(&text, "nargate_requests_total{op=\"PutObject\",status=\"200\"}"), Some(1.0));
        assert_eq!(sample(&text, "nargate_response_bytes_total{op=\"GetObject\"}"), Some(157.0));
        assert_eq!(sample(&text, "nargate_request_bytes_total{op=\"PutObject\"}"), Some(4096.0));
        assert_eq!(sample(&text, "nargate_requests_in_flight"), Some(1.0));
        let get = "nargate_request_duration_seconds_bucket{op=\"GetObject\",le=";
        assert_eq!(sample(&text, &format!("{get}\"0.0005\"}}")), Some(0.0));
        assert_eq!(sample(&text, &format!("{get}\"0.001\"}}")), Some(1.0), "a bound includes its value");
        assert_eq!(sample(&text, &format!("{get}\"0.0025\"}}")), Some(2.0));
        assert_eq!(sample(&text, &format!("{get}\"0.025\"}}")), Some(3.0));
        let put = "nargate_request_duration_seconds_bucket{op=\"PutObject\",le=";
        assert_eq!(sample(&text, &format!("{put}\"10\"}}")), Some(0.0), "30 s is above every bound");
        assert_eq!(sample(&text, &format!("{put}\"+Inf\"}}")), Some(1.0));
        assert_eq!(sample(&text, "nargate_request_duration_seconds_sum{op=\"PutObject\"}"), Some(30.0));
        assert_eq!(sample(&text, "nargate_request_duration_seconds_count{op=\"GetObject\"}"), Some(3.0));
    }

    #[test]
    fn caches_backend_and_buckets() {
        let metrics = Metrics::new();
        metrics.record_cache(CacheKind::SegmentTable, false);
        metrics.record_cache(CacheKind::SegmentTable, true);
        metrics.record_cache(CacheKind::SegmentTable, true);
        metrics.record_cache(CacheKind::Chunk, false);
        metrics.record_backend(Op::Get, true, Duration::from_micros(300));
        metrics.record_backend(Op::Get, false, Duration::from_millis(70));
        metrics.record_backend(Op::List, true, Duration::from_millis(3));
        metrics.changed("cache", BucketChange::store_paths(1));
        assert!(!metrics.render().contains("nargate_bucket_"), "nothing before the first count");
        let mut counted =
            StoreStats { chunks: 4, chunk_bytes: 400, distinct_nar_bytes: 1000, ..Default::default() };
        counted.apply("other", &BucketChange::nar(1, 1));
        metrics.set_store_stats(counted.clone(), SystemTime::UNIX_EPOCH + Duration::from_secs(77));
        counted.buckets.clear();
        counted.apply("cache", &BucketChange::nar(1, 1000));
        counted.apply("cache", &BucketChange { stored_chunk_bytes: 400, ..Default::default() });
        counted.chunk_bytes = 400;
        metrics.set_store_stats(counted, SystemTime::UNIX_EPOCH + Duration::from_secs(99));
        metrics.changed("cache", BucketChange::nar(1, 1000));
        metrics.changed("cache", BucketChange::store_paths(1));
        metrics.changed("cache", BucketChange { stored_chunk_bytes: 100, chunks: 1, ..Default::default() });
        let text = metrics.render();
        assert_eq!(sample(&text, "nargate_cache_hits_total{cache=\"segment_table\"}"), Some(2.0));
        assert_eq!(sample(&text, "nargate_cache_misses_total{cache=\"segment_table\"}"), Some(1.0));
        assert_eq!(sample(&text, "nargate_cache_misses_total{cache=\"chunk\"}"), Some(1.0));
        assert_eq!(sample(&text, "nargate_cache_hits_total{cache=\"tree\"}"), Some(0.0));
        assert_eq!(sample(&text, "nargate_backend_requests_total{op=\"GET\"}"), Some(2.0));
        assert_eq!(sample(&text, "nargate_backend_errors_total{op=\"GET\"}"), Some(1.0));
        assert_eq!(sample(&text, "nargate_backend_requests_total{op=\"LIST\"}"), Some(1.0));
        assert_eq!(sample(&text, "nargate_backend_requests_total{op=\"DELETE\"}"), Some(0.0));
        let get = "nargate_backend_request_duration_seconds_bucket{op=\"GET\",le=";
        assert_eq!(sample(&text, &format!("{get}\"0.0005\"}}")), Some(1.0));
        assert_eq!(sample(&text, &format!("{get}\"0.05\"}}")), Some(1.0));
        assert_eq!(sample(&text, &format!("{get}\"0.1\"}}")), Some(2.0));
        assert_eq!(sample(&text, &format!("{get}\"+Inf\"}}")), Some(2.0));
        let sum = sample(&text, "nargate_backend_request_duration_seconds_sum{op=\"GET\"}").unwrap();
        assert!((sum - 0.0703).abs() < 1e-9, "{sum}");
        assert_eq!(sample(&text, "nargate_bucket_logical_nar_bytes{bucket=\"cache\"}"), Some(2000.0));
        assert_eq!(sample(&text, "nargate_bucket_nars{bucket=\"cache\"}"), Some(2.0));
        assert_eq!(sample(&text, "nargate_bucket_store_paths{bucket=\"cache\"}"), Some(1.0));
        assert_eq!(sample(&text, "nargate_bucket_stored_chunk_bytes{bucket=\"cache\"}"), Some(500.0));
        assert_eq!(sample(&text, "nargate_store_chunks"), Some(5.0));
        assert_eq!(sample(&text, "nargate_store_chunk_bytes"), Some(500.0));
        assert_eq!(sample(&text, "nargate_store_dedup_ratio"), Some(2.0));
        assert_eq!(sample(&text, "nargate_stats_counted_timestamp_seconds"), Some(99.0));
        assert!(!text.contains("other"), "a new count replaces the old: {text}");
    }

    /// Every line is a comment (`# HELP` or `# TYPE`, once per metric, before its samples) or a
    /// sample `name{labels} value`; every histogram's buckets are cumulative, end in `+Inf`, and
    /// `+Inf` equals `_count`.
    #[test]
    fn the_text_is_well_formed() {
        let metrics = Metrics::new();
        for (i, op) in ["GetObject", "odd \"op\"\\\nname"].into_iter().enumerate() {
            for ms in [0, 1, 4, 40, 400, 4000, 40_000] {
                metrics.record_request(op, 200 + i as u16, 1, 2, Duration::from_millis(ms));
            }
        }
        metrics.record_backend(Op::Put, true, Duration::from_millis(12));
        let mut stats = StoreStats::default();
        stats.apply("b\"q", &BucketChange::nar(1, 3));
        metrics.set_store_stats(stats, SystemTime::now());
        let text = metrics.render();
        assert!(text.ends_with('\n'));
        assert!(text.contains("op=\"odd \\\"op\\\"\\\\\\nname\""), "label values are escaped: {text}");

        let mut typed: BTreeMap<String, String> = BTreeMap::new();
        /// A histogram as read back: its (`le`, value) buckets and its `_count`.
        type ReadBack = (Vec<(f64, f64)>, Option<f64>);
        let mut histograms: BTreeMap<String, ReadBack> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(typed.insert(name.to_owned(), kind.to_owned()).is_none(), "one TYPE for {name}");
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number: {line}"));
            let name = series.split('{').next().unwrap();
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{line}");
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s).filter(|b| typed.get(*b).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(name);
            assert!(typed.contains_key(base), "a TYPE line before {line}");
            if base != name {
                let labels = series[name.len()..].to_owned();
                let key = format!("{base}{}", labels.split(",le=").next().unwrap().trim_end_matches('}'));
                let entry = histograms.entry(key).or_default();
                if name.ends_with("_bucket") {
                    let le = labels.rsplit_once("le=\"").unwrap().1.trim_end_matches("\"}");
                    let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() };
                    entry.0.push((le, value));
                } else if name.ends_with("_count") {
                    entry.1 = Some(value);
                }
            }
        }
        assert!(histograms.len() >= 7, "{histograms:?}");
        for (key, (buckets, count)) in histograms {
            assert_eq!(buckets.len(), LATENCY_BUCKETS.len() + 1, "{key}");
            assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "cumulative: {key}");
            assert_eq!(buckets.last().map(|b| b.0), Some(f64::INFINITY), "{key}");
            assert_eq!(buckets.last().map(|b| b.1), count, "+Inf is the count: {key}");
        }
        let request_count = "nargate_request_duration_seconds_count{op=\"GetObject\"}";
        assert_eq!(sample(&text, request_count), Some(7.0));
    }
}
