//! The serving benchmark: `cargo bench --bench serve`.
//!
//! `nargate serve` runs as a separate process over a Garage bucket (Garage started on loopback as
//! the tests start it); the same NARs are also stored as plain objects in another Garage bucket,
//! the baseline: a direct GET from Garage. Both are read with aws-sdk-s3 through the same client
//! stack (path-style, nargate's quick-ack connection pool, response checksums not validated), and
//! every figure is printed against its baseline measured in the same run, as a ratio:
//! - 1 MiB ranged GETs at random offsets of a NAR of large files, cold (chunks not yet fetched by
//!   the gateway) and warm (the same range again), and at offset 0 and near the end;
//! - whole-NAR GET throughput for the large-file NAR and for a NAR of 20,000 small files;
//! - narinfo GET latency on one kept-alive connection, against a 13 KB object from Garage;
//! - 64 concurrent whole-NAR GETs, total throughput, and the gateway process's peak RSS.
//!
//! Direct and gateway requests alternate, so that load from elsewhere (2 cores, tests running at
//! the same time) falls on both alike.

mod common;
use common::content;
use common::serving::{
    Side, client, cpu_of, garage_pid, ingest_store_path, loadavg, median, mib_per_s, ms, start_gateway,
};

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/common/garage.rs"]
#[allow(dead_code)]
mod garage;

use nargate::backend::s3::S3Backend;
use nargate::backend::{Backend, DynBackend};
use nargate::cache::{BucketRecord, Cache};
use nargate::castore::ChunkStore;
use nargate::ingest::Ingested;
use nargate::nix::nar::{NarNode, write_nar};
use nargate::nix::nixbase32;
use rand::{Rng, SeedableRng};

/// Runs of each latency figure.
const LATENCY_RUNS: usize = 50;
/// Runs of each whole-NAR throughput figure.
const THROUGHPUT_RUNS: usize = 3;
/// Concurrent whole-NAR GETs.
const CONCURRENT: usize = 64;
/// The size of a ranged GET.
const RANGE: u64 = 1 << 20;
/// The bucket (cache) the gateway serves.
const CACHE: &str = "cache";

/// A NAR of five 32 MiB files.
fn large_files() -> Vec<u8> {
    let files = (0..5u64)
        .map(|i| {
            let node = NarNode::File { executable: true, contents: content(32 << 20, i) };
            (format!("lib{i:02}.so").into_bytes(), node)
        })
        .collect();
    write_nar(&NarNode::Directory(vec![(b"lib".to_vec(), NarNode::Directory(files))])).unwrap()
}

/// A NAR of 20,000 files of 0.5–16 KiB in 100 directories.
fn small_files() -> Vec<u8> {
    let dirs = (0..100u64)
        .map(|d| {
            let files = (0..200u64)
                .map(|f| {
                    let i = d * 200 + f;
                    let n = 512 + (i as usize * 7919) % (16 << 10);
                    let node = NarNode::File { executable: false, contents: content(n, 1000 + i) };
                    (format!("f{i:05}").into_bytes(), node)
                })
                .collect();
            (format!("d{d:03}").into_bytes(), NarNode::Directory(files))
        })
        .collect();
    write_nar(&NarNode::Directory(vec![(b"share".to_vec(), NarNode::Directory(dirs))])).unwrap()
}

/// One generated NAR, as both sides serve it.
struct Nar {
    name: &'static str,
    size: u64,
    /// Its key in the gateway's bucket: `nar/<narhash>.nar`.
    gateway_key: String,
    /// Its key in the direct bucket.
    direct_key: String,
    /// Content-stream offsets where its chunks start, and the stream's length.
    chunk_starts: Vec<u64>,
    /// The store path's hash part.
    store_hash: String,
}

/// Ingests `nar` into the cache and commits a store path for it, as an upload of the NAR and its
/// narinfo would.
async fn ingest(
    store: &ChunkStore,
    cache: &Cache,
    name: &'static str,
    nar: &[u8],
) -> (Nar, Ingested, String) {
    let (ingested, info) = ingest_store_path(store, cache, name, nar).await;
    let record = &ingested.record;
    let hash = nixbase32::encode(&record.nar_hash);
    let store_hash = info.store_path.hash_part();
    let mut chunk_starts = vec![0];
    for chunk in &record.chunks {
        chunk_starts.push(chunk_starts.last().unwrap() + u64::from(chunk.size));
    }
    let nar = Nar {
        name,
        size: record.nar_size,
        gateway_key: format!("nar/{hash}.nar"),
        direct_key: format!("{name}.nar"),
        chunk_starts,
        store_hash,
    };
    (nar, ingested, info.render())
}

impl Nar {
    /// The chunks a ranged read of `range` (NAR offsets) may touch. A NAR offset is at most the
    /// NAR's framing (< 4 KiB here) past its content-stream offset, so a margin covers it.
    fn chunks_of(&self, range: &Range<u64>) -> Range<usize> {
        let (start, end) = (range.start.saturating_sub(4096), range.end);
        let first = self.chunk_starts.partition_point(|&s| s <= start).saturating_sub(1);
        let last = self.chunk_starts.partition_point(|&s| s < end);
        first..last.min(self.chunk_starts.len() - 1)
    }
}

/// CPU used by the gateway, Garage and this process (the client).
#[derive(Default)]
struct Cpu {
    gateway: Duration,
    garage: Duration,
    client: Duration,
}

impl Cpu {
    fn now(gateway: u32, garage: u32) -> Cpu {
        Cpu { gateway: cpu_of(gateway), garage: cpu_of(garage), client: cpu_of(std::process::id()) }
    }

    fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            gateway: self.gateway.saturating_sub(earlier.gateway),
            garage: self.garage.saturating_sub(earlier.garage),
            client: self.client.saturating_sub(earlier.client),
        }
    }

    fn add(&self, other: &Cpu) -> Cpu {
        Cpu {
            gateway: self.gateway + other.gateway,
            garage: self.garage + other.garage,
            client: self.client + other.client,
        }
    }
}

/// Established TCP connections of this process to `127.0.0.1:port`.
fn connections_to(port: u16) -> usize {
    let mut inodes = HashSet::new();
    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(link) = std::fs::read_link(fd.path()) {
            let link = link.to_string_lossy().into_owned();
            if let Some(inode) = link.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    tcp.lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let remote_port = f[2].rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            remote_port == Some(port) && f[3] == "01" && inodes.contains(f[9])
        })
        .count()
}

fn port_of(endpoint: &str) -> u16 {
    endpoint.rsplit_once(':').unwrap().1.trim_end_matches('/').parse().unwrap()
}

/// A latency line: the gateway's figure, the baseline's, the ratio and the target.
fn latency_line(what: &str, gateway: Duration, direct: Duration, target: &str) {
    println!(
        "{what}: gateway {}, direct {}, ratio {:.2}{target}",
        ms(gateway),
        ms(direct),
        gateway.as_secs_f64() / direct.as_secs_f64()
    );
}

/// `runs` GETs of the same key and range, alternating between two sides: medians of each.
async fn alternate(
    a: (&Side, &str),
    b: (&Side, &str),
    range: Option<Range<u64>>,
    runs: usize,
) -> (Duration, Duration) {
    let (mut ta, mut tb) = (vec![], vec![]);
    for _ in 0..runs {
        ta.push(a.0.time(a.1, range.clone()).await);
        tb.push(b.0.time(b.1, range.clone()).await);
    }
    (median(ta), median(tb))
}

/// `CONCURRENT` whole-NAR GETs at once, alternating between the NARs: bytes and wall time.
async fn concurrent(side: &Side, keys: &[String]) -> (u64, Duration) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|i| {
            let (side, key) = (side.clone(), keys[i % keys.len()].clone());
            tokio::spawn(async move { side.get(&key, None).await })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("a concurrent GET");
    }
    (total, start.elapsed())
}

#[tokio::main]
async fn main() {
    let begun = Instant::now();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("nargate serve benchmark: the gateway as a process over Garage, against GETs of the same NARs");
    println!("stored as plain objects in Garage (\"direct\"); medians; ratios gateway/direct (time) or");
    println!("gateway÷direct (throughput). {cores} cores, load average {} at start.", loadavg());

    let (large, small) = tokio::task::spawn_blocking(|| (large_files(), small_files())).await.unwrap();
    let garage = tokio::task::spawn_blocking(garage::garage).await.unwrap();
    let (backend_bucket, direct_bucket) = (garage.create_bucket().await, garage.create_bucket().await);

    // The gateway's backend, filled through the library.
    let backend: DynBackend = Arc::new(S3Backend::new(garage.config(&backend_bucket)).await.unwrap());
    let store = ChunkStore::new(backend.clone(), 64 << 20);
    let cache = Cache::new(backend.clone(), CACHE);
    cache.create(BucketRecord::new_now()).await.expect("create the cache");
    let start = Instant::now();
    let (large_nar, large_ingest, narinfo_text) = ingest(&store, &cache, "large-files", &large).await;
    let (small_nar, small_ingest, _) = ingest(&store, &cache, "small-files", &small).await;
    let ingest_time = start.elapsed();

    // The baseline: the same NARs (and a 13 KB object, and the narinfo) as plain objects.
    let direct_backend = S3Backend::new(garage.config(&direct_bucket)).await.unwrap();
    direct_backend.put(&large_nar.direct_key, bytes::Bytes::from(large)).await.unwrap();
    direct_backend.put(&small_nar.direct_key, bytes::Bytes::from(small)).await.unwrap();
    direct_backend.put("small-object", bytes::Bytes::from(content(13_000, 13))).await.unwrap();
    let narinfo_key = format!("{}.narinfo", large_nar.store_hash);
    direct_backend.put(&narinfo_key, bytes::Bytes::from(narinfo_text.clone().into_bytes())).await.unwrap();

    for (nar, ingested) in [(&large_nar, &large_ingest), (&small_nar, &small_ingest)] {
        println!(
            "NAR {}: {:.1} MiB, {} chunks ({:.1} MiB stored)",
            nar.name,
            nar.size as f64 / f64::from(1 << 20),
            ingested.chunks,
            ingested.stored_chunk_bytes as f64 / f64::from(1 << 20)
        );
    }
    println!(
        "setup: ingest into Garage {:.1} s; setup total {:.1} s",
        ingest_time.as_secs_f64(),
        begun.elapsed().as_secs_f64()
    );

    let (gateway_process, client_id, client_secret) =
        start_gateway(&garage.endpoint, &backend_bucket, &garage.key_id, &garage.secret_key).await;
    let gw_endpoint = gateway_process.endpoint.clone();
    let gateway_client = |quickack| client(&gw_endpoint, "us-east-1", client_id, &client_secret, quickack);
    let direct_client =
        |quickack| client(&garage.endpoint, "garage", &garage.key_id, &garage.secret_key, quickack);
    let gw = Side { client: gateway_client(true), bucket: CACHE.into() };
    let direct = Side { client: direct_client(true), bucket: direct_bucket.clone() };
    println!(
        "gateway: {} (pid {}), default settings (read_ahead 8, chunk cache 64 MiB); both clients: aws-sdk-s3 over \
         nargate's quick-ack pool (kept-alive connections, TCP_QUICKACK), no response checksum validation",
        gateway_process.endpoint,
        gateway_process.child.id()
    );
    // Warm up: connections, the gateway's key and bucket lookups.
    gw.get("nix-cache-info", None).await;
    direct.get("small-object", None).await;
    println!();

    // Whole NARs first: they read through the chunk cache, so they leave it empty for the ranges.
    println!("== whole-NAR GET, one at a time ({THROUGHPUT_RUNS} runs each, alternating) ==");
    let garage_pid = garage_pid();
    let mut single_cpu_per_mib = 0.0;
    for nar in [&large_nar, &small_nar] {
        let (mut g, mut d) = (vec![], vec![]);
        let (mut g_cpu, mut d_cpu) = (Cpu::default(), Cpu::default());
        for _ in 0..THROUGHPUT_RUNS {
            let before = Cpu::now(gateway_process.child.id(), garage_pid);
            g.push(gw.time(&nar.gateway_key, None).await);
            let between = Cpu::now(gateway_process.child.id(), garage_pid);
            d.push(direct.time(&nar.direct_key, None).await);
            g_cpu = g_cpu.add(&between.since(&before));
            d_cpu = d_cpu.add(&Cpu::now(gateway_process.child.id(), garage_pid).since(&between));
        }
        let (g, d) = (mib_per_s(nar.size, median(g)), mib_per_s(nar.size, median(d)));
        let target = if nar.name == "large-files" { 1.0 } else { 0.8 };
        println!(
            "{}: gateway {g:.0} MiB/s, direct {d:.0} MiB/s, ratio {:.2} (target ≥ {target:.1})",
            nar.name,
            g / d
        );
        let per_get = |c: Duration| format!("{:.0}", c.as_secs_f64() * 1e3 / THROUGHPUT_RUNS as f64);
        println!(
            "  CPU ms per GET, through the gateway: gateway {}, Garage {}, client {}; direct: Garage {}, client {}",
            per_get(g_cpu.gateway),
            per_get(g_cpu.garage),
            per_get(g_cpu.client),
            per_get(d_cpu.garage),
            per_get(d_cpu.client)
        );
        single_cpu_per_mib += g_cpu.gateway.as_secs_f64()
            / (nar.size as f64 / f64::from(1 << 20) * THROUGHPUT_RUNS as f64)
            / 2.0;
    }
    println!();

    println!("== {CONCURRENT} concurrent whole-NAR GETs, half of each NAR ==");
    let keys = |f: fn(&Nar) -> &String| vec![f(&large_nar).clone(), f(&small_nar).clone()];
    let (before_hwm, _) = gateway_process.memory();
    let before = Cpu::now(gateway_process.child.id(), garage_pid);
    let (bytes, g) = concurrent(&gw, &keys(|n| &n.gateway_key)).await;
    let cpu = Cpu::now(gateway_process.child.id(), garage_pid).since(&before);
    let (hwm, rss) = gateway_process.memory();
    let (direct_bytes, d) = concurrent(&direct, &keys(|n| &n.direct_key)).await;
    assert_eq!(bytes, direct_bytes);
    let (g, d) = (mib_per_s(bytes, g), mib_per_s(bytes, d));
    println!(
        "total {:.0} MiB: gateway {g:.0} MiB/s, direct {d:.0} MiB/s, ratio {:.2}",
        bytes as f64 / f64::from(1 << 20),
        g / d,
    );
    let cpu_per_mib = cpu.gateway.as_secs_f64() / (bytes as f64 / f64::from(1 << 20));
    println!(
        "  through the gateway: gateway CPU {:.1} s, Garage CPU {:.1} s; gateway CPU per MiB served {:.2} ms, {:.2} ms \
         one GET at a time: concurrent readers of one NAR share its chunk GETs (and decoding)",
        cpu.gateway.as_secs_f64(),
        cpu.garage.as_secs_f64(),
        cpu_per_mib * 1e3,
        single_cpu_per_mib * 1e3
    );
    println!(
        "gateway peak RSS (VmHWM) {hwm:.0} MiB (target ≤ 256 MiB; {before_hwm:.0} MiB before the run), VmRSS after {rss:.0} MiB"
    );
    println!();

    println!("== small GETs on one kept-alive connection ({LATENCY_RUNS} runs each, alternating) ==");
    let narinfo_gateway_key = format!("{}.narinfo", large_nar.store_hash);
    let served = gw.get(&narinfo_gateway_key, None).await;
    for quickack in [true, false] {
        let (gw_port, garage_port) = (port_of(&gateway_process.endpoint), port_of(&garage.endpoint));
        let before = (connections_to(gw_port), connections_to(garage_port));
        let gw = Side { client: gateway_client(quickack), bucket: CACHE.into() };
        let direct = Side { client: direct_client(quickack), bucket: direct_bucket.clone() };
        gw.get(&narinfo_gateway_key, None).await;
        direct.get("small-object", None).await;
        direct.get(&narinfo_key, None).await;
        let (n, small_object) =
            alternate((&gw, &narinfo_gateway_key), (&direct, "small-object"), None, LATENCY_RUNS).await;
        let (_, direct_narinfo) =
            alternate((&gw, "nix-cache-info"), (&direct, &narinfo_key), None, LATENCY_RUNS).await;
        let opened = (connections_to(gw_port) - before.0, connections_to(garage_port) - before.1);
        let stack =
            if quickack { "quick-ack pool" } else { "the SDK's own client (its plain kept-alive pool)" };
        println!(
            "client: {stack}; connections it opened for these 200 GETs: {} to the gateway, {} to Garage",
            opened.0, opened.1
        );
        println!(
            "  narinfo ({served} B) from the gateway {} (target ≤ 2 ms); direct from Garage: a 13 KB object {}, the \
             same narinfo as a plain object {}; ratio gateway narinfo / Garage 13 KB {:.2}",
            ms(n),
            ms(small_object),
            ms(direct_narinfo),
            n.as_secs_f64() / small_object.as_secs_f64()
        );
    }
    println!();

    // Cold 1 MiB ranges: each covers only chunks no earlier request touched.
    println!("== 1 MiB ranged GETs of {} ==", large_nar.name);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut touched = HashSet::new();
    let at_start = 0..RANGE;
    let near_end = large_nar.size - RANGE - 1000..large_nar.size - 1000;
    for range in [&at_start, &near_end] {
        touched.extend(large_nar.chunks_of(range));
    }
    let mut cold_ranges = vec![];
    for _ in 0..5000 {
        if cold_ranges.len() == LATENCY_RUNS {
            break;
        }
        let offset = rng.gen_range(0..large_nar.size - RANGE);
        let range = offset..offset + RANGE;
        let chunks = large_nar.chunks_of(&range);
        if chunks.clone().all(|c| !touched.contains(&c)) {
            touched.extend(chunks);
            cold_ranges.push(range);
        }
    }
    let (gw_large, direct_large) =
        ((&gw, large_nar.gateway_key.as_str()), (&direct, large_nar.direct_key.as_str()));
    let (mut cold, mut cold_direct, mut warm, mut warm_direct) = (vec![], vec![], vec![], vec![]);
    let (mut cold_cpu, mut warm_cpu) = (Duration::ZERO, Duration::ZERO);
    for range in &cold_ranges {
        cold_direct.push(direct.time(direct_large.1, Some(range.clone())).await);
        let cpu = gateway_process.cpu();
        cold.push(gw.time(gw_large.1, Some(range.clone())).await);
        cold_cpu += gateway_process.cpu() - cpu;
        warm_direct.push(direct.time(direct_large.1, Some(range.clone())).await);
        let cpu = gateway_process.cpu();
        warm.push(gw.time(gw_large.1, Some(range.clone())).await);
        warm_cpu += gateway_process.cpu() - cpu;
    }
    let n = cold_ranges.len();
    latency_line(
        &format!("random offsets, cold (first touch of its chunks; segment table cached; n={n})"),
        median(cold),
        median(cold_direct),
        " (target ≤ 1.2)",
    );
    latency_line(
        &format!("random offsets, warm (the same range again: chunks cached; n={n})"),
        median(warm),
        median(warm_direct),
        " (target ≤ 1.2)",
    );
    let covered: Vec<u64> = cold_ranges
        .iter()
        .map(|r| {
            let c = large_nar.chunks_of(&(r.start + 4096..r.end));
            large_nar.chunk_starts[c.end] - large_nar.chunk_starts[c.start]
        })
        .collect();
    println!(
        "  gateway CPU per GET: cold {:.2} ms, warm {:.2} ms; a cold 1 MiB range covers {:.2} MiB of chunks on average",
        cold_cpu.as_secs_f64() * 1e3 / n as f64,
        warm_cpu.as_secs_f64() * 1e3 / n as f64,
        covered.iter().sum::<u64>() as f64 / n as f64 / f64::from(1 << 20)
    );
    let mut ends = vec![];
    for (what, range) in [("offset 0", &at_start), ("near the end", &near_end)] {
        let cold_direct = direct.time(direct_large.1, Some(range.clone())).await;
        let cold = gw.time(gw_large.1, Some(range.clone())).await;
        let (warm, warm_direct) = alternate(gw_large, direct_large, Some(range.clone()), LATENCY_RUNS).await;
        latency_line(&format!("{what}, cold (n=1)"), cold, cold_direct, "");
        latency_line(&format!("{what}, warm (n={LATENCY_RUNS})"), warm, warm_direct, "");
        ends.push(warm);
    }
    println!(
        "  warm near the end / offset 0 through the gateway: ratio {:.2} (target ~1)",
        ends[1].as_secs_f64() / ends[0].as_secs_f64()
    );

    // The same over the small-files NAR, whose segment table has 20,000 files.
    let (gw_small, direct_small) =
        ((&gw, small_nar.gateway_key.as_str()), (&direct, small_nar.direct_key.as_str()));
    let mut ends = vec![];
    for (what, range) in
        [("offset 0", 0..RANGE), ("near the end", small_nar.size - RANGE - 1000..small_nar.size - 1000)]
    {
        let (warm, warm_direct) = alternate(gw_small, direct_small, Some(range), LATENCY_RUNS).await;
        latency_line(&format!("{}: {what}, warm (n={LATENCY_RUNS})", small_nar.name), warm, warm_direct, "");
        ends.push(warm);
    }
    println!(
        "  warm near the end / offset 0 through the gateway: ratio {:.2} (target ~1)",
        ends[1].as_secs_f64() / ends[0].as_secs_f64()
    );

    let (hwm, _) = gateway_process.memory();
    println!();
    println!(
        "gateway peak RSS at the end {hwm:.0} MiB; load average {} at the end; {:.0} s in all",
        loadavg(),
        begun.elapsed().as_secs_f64()
    );
    drop(gateway_process);
}
