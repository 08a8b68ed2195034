//! The ingest benchmark: `cargo bench --bench ingest`.
//!
//! Garage runs on loopback (started as the tests start it). One generated NAR of ≥ 256 MiB (large
//! files and a few thousand small ones, contents that compress somewhat) is written, in the same
//! run, by each [`CASES`] entry: the baseline, a direct PUT of the NAR's bytes to Garage as one
//! object; [`ingest_nar`] into a Garage-backed chunk store; and into an fs-backed one. Runs of
//! the cases alternate, so that load from elsewhere (2 shared cores) falls on all alike; each
//! figure is the median of its runs, and every throughput is printed against the baseline's, as a
//! ratio. Every ingest run gets a fresh bucket (or directory), so nothing is deduplicated against
//! an earlier run. The ingest reads its body through a `StreamReader` of 64 KiB pieces, as the
//! gateway feeds it an HTTP body.
//!
//! Then the peak resident memory (VmHWM) of a child process (this binary again, with
//! `INGEST_BENCH_CHILD` set) that runs 8 concurrent ingests of distinct 256 MiB NARs, read from
//! files, into Garage.
//!
//! A new case is a function `fn(&Bench, &Bytes) -> BoxFuture<Duration>` (it sets up what it needs
//! untimed, and returns the time of the write alone) and a line in [`CASES`].
//!
//! `cargo bench --bench ingest -- --zstd-levels <dir>…` instead measures the chunk compression
//! trade on real files: every regular file under the directories, in one content stream, chunked
//! as ingest chunks it, each chunk compressed at several zstd levels: stored bytes and MiB/s.

mod common;
use common::serving::{cpu_of, garage_pid};
use common::{content, walk};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/common/garage.rs"]
#[allow(dead_code)]
mod garage;

use bytes::Bytes;
use futures::future::BoxFuture;
use nargate::backend::fs::FsBackend;
use nargate::backend::s3::{S3Backend, S3Config};
use nargate::backend::{Backend, DynBackend};
use nargate::castore::{ChunkStore, ChunkerParams, ContentChunker};
use nargate::ingest::{IngestOptions, Ingested, ingest_nar};
use nargate::nix::nar::{NarNode, write_nar};

/// Runs of each case.
const RUNS: usize = 3;
/// Concurrent ingests of the memory figure.
const CONCURRENT: usize = 8;
/// The size of the pieces the ingest's body arrives in.
const PIECE: usize = 64 << 10;
/// The environment variable that makes this binary the memory figure's child process.
const CHILD_VAR: &str = "INGEST_BENCH_CHILD";

/// What every case may use.
struct Bench {
    garage: &'static garage::Garage,
    /// The baseline's bucket.
    direct: S3Backend,
    /// Where fs-backed cases make their directories.
    scratch: tempfile::TempDir,
}

/// A case: sets up (untimed), writes the NAR, returns the time of the write.
type CaseFn = for<'a> fn(&'a Bench, &'a Bytes) -> BoxFuture<'a, Duration>;

/// The cases, in the order of each round; the first is the baseline of the ratios.
const CASES: &[(&str, CaseFn)] = &[
    ("direct PUT to Garage (one PutObject, Content-MD5)", direct_put),
    ("ingest into Garage", ingest_garage),
    ("ingest into fs", ingest_fs),
];

fn direct_put<'a>(bench: &'a Bench, nar: &'a Bytes) -> BoxFuture<'a, Duration> {
    Box::pin(async move {
        let start = Instant::now();
        bench.direct.put("nar/direct.nar", nar.clone()).await.expect("direct PUT");
        start.elapsed()
    })
}

fn ingest_garage<'a>(bench: &'a Bench, nar: &'a Bytes) -> BoxFuture<'a, Duration> {
    Box::pin(async move {
        let bucket = bench.garage.create_bucket().await;
        let backend: DynBackend = Arc::new(S3Backend::new(bench.garage.config(&bucket)).await.unwrap());
        timed_ingest(backend, nar).await
    })
}

fn ingest_fs<'a>(bench: &'a Bench, nar: &'a Bytes) -> BoxFuture<'a, Duration> {
    Box::pin(async move {
        let dir = tempfile::tempdir_in(bench.scratch.path()).unwrap();
        let backend: DynBackend = Arc::new(FsBackend::new(dir.path().to_owned()).unwrap());
        let elapsed = timed_ingest(backend, nar).await;
        tokio::task::spawn_blocking(move || drop(dir)).await.unwrap();
        elapsed
    })
}

/// Ingests `nar` into `backend` with the default options, fed as an HTTP body would be.
async fn timed_ingest(backend: DynBackend, nar: &Bytes) -> Duration {
    let store = ChunkStore::new(backend, 0);
    let start = Instant::now();
    let ingested = ingest_nar(&store, body(nar.clone()), &options()).await.expect("ingest");
    let elapsed = start.elapsed();
    assert_eq!(ingested.record.nar_size, nar.len() as u64);
    elapsed
}

/// The ingests' options: the defaults, and the zstd level of `INGEST_BENCH_ZSTD_LEVEL` if set.
fn options() -> IngestOptions {
    let mut options = IngestOptions::default();
    if let Ok(level) = std::env::var("INGEST_BENCH_ZSTD_LEVEL") {
        options.zstd_level = level.parse().expect("INGEST_BENCH_ZSTD_LEVEL: a zstd level");
    }
    options
}

/// `nar` as an `AsyncRead` of [`PIECE`]-sized pieces.
fn body(nar: Bytes) -> impl tokio::io::AsyncRead + Unpin + Send {
    let pieces = (0..nar.len().div_ceil(PIECE))
        .map(move |i| Ok::<_, std::io::Error>(nar.slice(i * PIECE..((i + 1) * PIECE).min(nar.len()))));
    tokio_util::io::StreamReader::new(futures::stream::iter(pieces))
}

/// A NAR of about 256 MiB: 24 files of 10 MiB and 2,000 files of 1–16 KiB in 20 directories.
fn generated_nar(seed: u64) -> Vec<u8> {
    let large = (0..24u64)
        .map(|i| {
            let node = NarNode::File { executable: i % 3 == 0, contents: content(10 << 20, seed * 1000 + i) };
            (format!("lib{i:02}.so").into_bytes(), node)
        })
        .collect();
    let dirs = (0..20u64)
        .map(|d| {
            let files = (0..100u64)
                .map(|f| {
                    let i = d * 100 + f;
                    let n = 1024 + (i as usize * 7919) % (15 << 10);
                    let node =
                        NarNode::File { executable: false, contents: content(n, seed * 1000 + 100 + i) };
                    (format!("f{i:04}").into_bytes(), node)
                })
                .collect();
            (format!("d{d:02}").into_bytes(), NarNode::Directory(files))
        })
        .collect();
    write_nar(&NarNode::Directory(vec![
        (b"lib".to_vec(), NarNode::Directory(large)),
        (b"share".to_vec(), NarNode::Directory(dirs)),
    ]))
    .unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    mib(bytes) / d.as_secs_f64()
}

fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// A field of `/proc/self/status`, in KiB.
fn status_kib(name: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix(name)).unwrap();
    line.trim().trim_end_matches("kB").trim().parse().unwrap()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if let Some(i) = args.iter().position(|a| a == "--zstd-levels") {
        return zstd_levels(&args[i + 1..]);
    }
    if let Ok(spec) = std::env::var(CHILD_VAR) {
        return child(&spec).await;
    }
    let begun = Instant::now();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "nargate ingest benchmark: a generated NAR written by each case, {RUNS} runs alternating, medians;"
    );
    println!("ratios against the first case. {cores} cores, load average {} at start.", loadavg());

    let nar = Bytes::from(tokio::task::spawn_blocking(|| generated_nar(0)).await.unwrap());
    let garage = tokio::task::spawn_blocking(garage::garage).await.unwrap();
    let direct = S3Backend::new(garage.config(&garage.create_bucket().await)).await.unwrap();
    let bench = Bench { garage, direct, scratch: tempfile::tempdir().unwrap() };
    // Warm up: connections, and Garage's first bucket writes.
    direct_put(&bench, &nar).await;

    // A filter (the first free argument) keeps the baseline and the cases whose name holds it,
    // and skips the memory figure.
    let filter = args.iter().find(|a| !a.starts_with("--"));
    let cases: Vec<&(&str, CaseFn)> = CASES
        .iter()
        .enumerate()
        .filter(|(i, (name, _))| *i == 0 || filter.is_none_or(|f| name.contains(f.as_str())))
        .map(|(_, case)| case)
        .collect();
    let garage_pid = garage_pid();
    let mut times: Vec<Vec<Duration>> = vec![vec![]; cases.len()];
    let mut cpu = vec![(Duration::ZERO, Duration::ZERO); cases.len()];
    for _ in 0..RUNS {
        for (i, (_, case)) in cases.iter().enumerate() {
            let before = (cpu_of(std::process::id()), cpu_of(garage_pid));
            times[i].push(case(&bench, &nar).await);
            cpu[i].0 += cpu_of(std::process::id()) - before.0;
            cpu[i].1 += cpu_of(garage_pid) - before.1;
        }
    }
    let size = nar.len() as u64;
    println!("NAR: {:.1} MiB, 2,024 files; zstd level of the ingests {}", mib(size), options().zstd_level);
    let baseline = mib_per_s(size, median(times[0].clone()));
    for (((name, _), times), (own, garage)) in cases.iter().zip(times).zip(cpu) {
        let t = mib_per_s(size, median(times));
        let per_mib = |d: Duration| d.as_secs_f64() * 1e3 / (mib(size) * RUNS as f64);
        println!(
            "{name}: {t:.0} MiB/s, ratio {:.2}; CPU per MiB: this process {:.1} ms, Garage {:.1} ms",
            t / baseline,
            per_mib(own),
            per_mib(garage)
        );
    }
    let stored = stored_bytes(&nar).await;
    println!(
        "  chunks stored by an ingest: {:.1} MiB for {:.1} MiB of NAR",
        mib(stored.stored_chunk_bytes),
        mib(nar.len() as u64)
    );
    drop(nar);
    println!();
    if filter.is_some() {
        return;
    }

    println!(
        "== {CONCURRENT} concurrent ingests of distinct 256 MiB NARs into Garage, in a child process =="
    );
    let dir = bench.scratch.path().join("nars");
    std::fs::create_dir(&dir).unwrap();
    for seed in 1..=CONCURRENT as u64 {
        let path = dir.join(format!("{seed}.nar"));
        tokio::task::spawn_blocking(move || std::fs::write(path, generated_nar(seed)))
            .await
            .unwrap()
            .unwrap();
    }
    let bucket = garage.create_bucket().await;
    let config = garage.config(&bucket);
    let spec = [
        config.endpoint.unwrap(),
        config.bucket,
        config.access_key_id.unwrap(),
        config.secret_access_key.unwrap(),
        dir.display().to_string(),
    ]
    .join("\n");
    let output = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_VAR, spec)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("the child process");
    assert!(output.status.success(), "the child process failed: {}", output.status);
    print!("{}", String::from_utf8_lossy(&output.stdout));
    println!();
    println!("load average {} at the end; {:.0} s in all", loadavg(), begun.elapsed().as_secs_f64());
}

/// One more ingest into fs, for its counts.
async fn stored_bytes(nar: &Bytes) -> Ingested {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::new(Arc::new(FsBackend::new(dir.path().to_owned()).unwrap()), 0);
    ingest_nar(&store, body(nar.clone()), &options()).await.expect("ingest")
}

/// The child process: `CONCURRENT` ingests of the NAR files in the directory the spec names, into
/// the Garage bucket it names; prints the time, the throughput and the peak RSS.
async fn child(spec: &str) {
    let [endpoint, bucket, key_id, secret, dir] = spec.lines().collect::<Vec<_>>()[..] else {
        panic!("bad {CHILD_VAR}")
    };
    let config = S3Config {
        endpoint: Some(endpoint.into()),
        region: "garage".into(),
        bucket: bucket.into(),
        path_style: true,
        access_key_id: Some(key_id.into()),
        secret_access_key: Some(secret.into()),
        ..S3Config::default()
    };
    let backend: DynBackend = Arc::new(S3Backend::new(config).await.unwrap());
    let store = ChunkStore::new(backend, 0);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let before = status_kib("VmHWM:");
    let start = Instant::now();
    let tasks: Vec<_> = paths
        .into_iter()
        .map(|path| {
            let store = store.clone();
            tokio::spawn(async move {
                let file = tokio::fs::File::open(&path).await.unwrap();
                ingest_nar(&store, file, &options()).await.expect("ingest").record.nar_size
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    let elapsed = start.elapsed();
    println!(
        "{:.0} MiB in {:.1} s: {:.0} MiB/s in all; peak RSS (VmHWM) {:.0} MiB ({:.0} MiB before the ingests)",
        mib(total),
        elapsed.as_secs_f64(),
        mib_per_s(total, elapsed),
        status_kib("VmHWM:") as f64 / 1024.0,
        before as f64 / 1024.0
    );
}

/// Chunks every regular file under `dirs` (one content stream, as ingest chunks a NAR) and
/// compresses each chunk at several zstd levels: stored bytes and speed of each.
fn zstd_levels(dirs: &[String]) {
    let mut files = vec![];
    for dir in dirs {
        walk(Path::new(dir), &mut files);
    }
    let mut chunker = ContentChunker::new(ChunkerParams::V1).unwrap();
    let mut chunks = vec![];
    for file in &files {
        let Ok(data) = std::fs::read(file) else { continue };
        chunker.start_file(data.len() as u64, &mut chunks);
        chunker.push(&data, &mut chunks);
        chunker.end_file(data.len() as u64, &mut chunks);
    }
    chunker.finish(&mut chunks);
    let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    println!("{} files, {:.1} MiB, {} chunks", files.len(), mib(total), chunks.len());
    for level in [-1, 1, 2, 3, 5] {
        let start = Instant::now();
        let mut stored = 0u64;
        for chunk in &chunks {
            let compressed = zstd::bulk::compress(chunk, level).unwrap();
            stored += 1 + compressed.len().min(chunk.len()) as u64;
        }
        let elapsed = start.elapsed();
        println!(
            "zstd level {level:>2}: {:.1} MiB stored ({:.1}%), {:.0} MiB/s on one core",
            mib(stored),
            100.0 * stored as f64 / total as f64,
            mib_per_s(total, elapsed)
        );
    }
}
