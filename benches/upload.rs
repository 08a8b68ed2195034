//! The upload benchmark: `cargo bench --bench upload`.
//!
//! `nargate serve` runs as a separate process over a Garage bucket; NARs of 256 MiB, each
//! different so that nothing dedups, are uploaded to `nar/<narhash>.nar` through the gateway with
//! aws-sdk-s3, and the same bytes are PUT straight to another Garage bucket, the baseline, in the
//! same run and alternating:
//! - one PutObject at a time: throughput, gateway ÷ direct (target ≥ 0.8);
//! - 8 MiB multipart uploads (parts sent 4 at a time, as SDK transfer managers do), against
//!   direct multipart uploads and against the direct PutObjects;
//! - 8 concurrent 256 MiB PutObjects: total throughput and the gateway's peak RSS;
//! - then PutObjects of the worst case, generated content that barely compresses.
//!
//! The NARs hold real files (ELF libraries and executables from `/usr`, which is what store paths
//! mostly hold) with a few bytes changed per NAR; `NARGATE_BENCH_CONTENT=synthetic` makes every
//! NAR of generated content instead. For profiling, `NARGATE_BENCH_ONLY=gateway` (or `direct`)
//! only PUTs every NAR, one at a time, through the gateway (or straight to Garage), and prints
//! each throughput.

mod common;
use common::serving::{client, cpu_of, garage_pid, loadavg, median, mib_per_s, start_gateway};
use common::{REAL_FILE_DIRS, real_files};

use std::path::PathBuf;
use std::time::{Duration, Instant};

#[path = "../tests/common/garage.rs"]
#[allow(dead_code)]
mod garage;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use nargate::nix::nar::{NarNode, write_nar};
use nargate::nix::nixbase32;
use sha2::Digest as _;

/// The size of each NAR's content.
const NAR_MIB: usize = 256;
/// Runs of each single-upload figure.
const RUNS: usize = 4;
/// Concurrent uploads.
const CONCURRENT: usize = 8;
/// Multipart part size.
const PART: usize = 8 << 20;
/// Parts in flight at once.
const PARTS_AT_ONCE: usize = 4;
/// The bucket (cache) the gateway serves.
const CACHE: &str = "cache";

/// What the NARs are made of.
#[derive(Clone, Copy, PartialEq)]
enum Content {
    /// Real files ([`REAL_FILE_DIRS`]: ELF libraries and executables; on Debian 12, 462 files
    /// with libLLVM last, which zstd level 1 stores in a third of their size), with 8 bytes that
    /// differ from NAR to NAR (and file to file) every 16 KiB, so that nothing dedups while the
    /// content compresses as the files do.
    Files,
    /// Generated content (mostly random words) that zstd shrinks by only about a tenth: the worst
    /// case for the gateway, which compresses every chunk.
    Synthetic,
}

impl Content {
    fn name(self) -> &'static str {
        match self {
            Content::Files => "real files",
            Content::Synthetic => "synthetic content",
        }
    }
}

/// A NAR of about 256 MiB of `content`, different for each `seed`.
fn nar(content: Content, files: &[(PathBuf, Vec<u8>)], seed: u64) -> Bytes {
    let entries = match content {
        Content::Synthetic => (0..8u64)
            .map(|i| {
                let contents = common::content((NAR_MIB / 8) << 20, seed * 100 + i);
                (format!("lib{i:02}.so").into_bytes(), NarNode::File { executable: false, contents })
            })
            .collect(),
        Content::Files => {
            let mut x = (seed + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            files
                .iter()
                .enumerate()
                .map(|(i, (path, data))| {
                    let mut contents = data.clone();
                    for at in (0..contents.len()).step_by(16 << 10) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let end = (at + 8).min(contents.len());
                        contents[at..end].copy_from_slice(&x.to_le_bytes()[..end - at]);
                    }
                    let base = path.file_name().map_or("file".into(), |n| n.to_string_lossy().into_owned());
                    (format!("{i:05}-{base}").into_bytes(), NarNode::File { executable: true, contents })
                })
                .collect()
        }
    };
    Bytes::from(write_nar(&NarNode::Directory(vec![(b"lib".to_vec(), NarNode::Directory(entries))])).unwrap())
}

/// The gateway key of a NAR: `nar/<narhash>.nar`.
fn key_of(nar: &[u8]) -> String {
    format!("nar/{}.nar", nixbase32::encode(sha2::Sha256::digest(nar).as_slice()))
}

/// One PutObject of `body`: its time.
async fn put(client: &Client, bucket: &str, key: &str, body: Bytes) -> Duration {
    let start = Instant::now();
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {bucket}/{key}: {}", DisplayErrorContext(&e)));
    start.elapsed()
}

/// A multipart upload of `body` in `PART`-byte parts, `PARTS_AT_ONCE` at a time: its time.
async fn multipart(client: &Client, bucket: &str, key: &str, body: Bytes) -> Duration {
    let start = Instant::now();
    let created = client.create_multipart_upload().bucket(bucket).key(key).send().await.unwrap();
    let id = created.upload_id().unwrap().to_owned();
    let parts: Vec<(i32, Bytes)> = (0..body.len().div_ceil(PART))
        .map(|i| (i as i32 + 1, body.slice(i * PART..((i + 1) * PART).min(body.len()))))
        .collect();
    let mut done = vec![];
    for batch in parts.chunks(PARTS_AT_ONCE) {
        let uploads: Vec<_> = batch
            .iter()
            .map(|(n, part)| {
                let (client, bucket, key, id, n, part) =
                    (client.clone(), bucket.to_owned(), key.to_owned(), id.clone(), *n, part.clone());
                tokio::spawn(async move {
                    let out = client
                        .upload_part()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(id)
                        .part_number(n)
                        .body(ByteStream::from(part))
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("UploadPart {n}: {}", DisplayErrorContext(&e)));
                    CompletedPart::builder().part_number(n).e_tag(out.e_tag().unwrap()).build()
                })
            })
            .collect();
        for upload in uploads {
            done.push(upload.await.unwrap());
        }
    }
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
        .send()
        .await
        .unwrap_or_else(|e| panic!("Complete {bucket}/{key}: {}", DisplayErrorContext(&e)));
    start.elapsed()
}

/// The processes whose CPU time is counted: the gateway, Garage, and this one (the client).
struct Processes {
    gateway: u32,
    garage: u32,
}

/// CPU time used, per process.
#[derive(Default, Clone, Copy)]
struct Cpu {
    gateway: Duration,
    garage: Duration,
    client: Duration,
}

impl Processes {
    fn cpu(&self) -> Cpu {
        Cpu { gateway: cpu_of(self.gateway), garage: cpu_of(self.garage), client: cpu_of(std::process::id()) }
    }

    /// Runs `f`, adding the CPU time each process used meanwhile to `total`.
    async fn counted<F: std::future::Future<Output = Duration>>(&self, total: &mut Cpu, f: F) -> Duration {
        let before = self.cpu();
        let took = f.await;
        let after = self.cpu();
        total.gateway += after.gateway - before.gateway;
        total.garage += after.garage - before.garage;
        total.client += after.client - before.client;
        took
    }
}

/// Prints where the CPU went, in milliseconds per MiB uploaded, through the gateway and direct.
fn cpu_line(bytes: u64, gateway: Cpu, direct: Cpu) {
    let per_mib = |d: Duration| d.as_secs_f64() * 1000.0 / (bytes as f64 / f64::from(1 << 20));
    println!(
        "  CPU ms per MiB: through the gateway: gateway {:.1} + Garage {:.1} + client {:.1} = {:.1}; direct: Garage {:.1} + client {:.1} = {:.1}",
        per_mib(gateway.gateway),
        per_mib(gateway.garage),
        per_mib(gateway.client),
        per_mib(gateway.gateway + gateway.garage + gateway.client),
        per_mib(direct.garage),
        per_mib(direct.client),
        per_mib(direct.garage + direct.client),
    );
}

#[tokio::main]
async fn main() {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "nargate upload benchmark: {NAR_MIB} MiB NARs uploaded through the gateway (a process over Garage) to"
    );
    println!(
        "nar/<narhash>.nar, against PUTs of the same bytes straight to Garage (\"direct\"); medians of {RUNS}"
    );
    println!("runs, alternating; ratios gateway÷direct. {cores} cores, load average {} at start.", loadavg());

    let seeds = 2 * RUNS + CONCURRENT;
    let content = match std::env::var("NARGATE_BENCH_CONTENT").as_deref() {
        Ok("synthetic") => Content::Synthetic,
        _ => Content::Files,
    };
    let (nars, files) = tokio::task::spawn_blocking(move || {
        let files = if content == Content::Files { real_files(NAR_MIB << 20) } else { vec![] };
        let nars: Vec<Bytes> = (0..seeds as u64).map(|seed| nar(content, &files, seed)).collect();
        (nars, files.len())
    })
    .await
    .unwrap();
    let size = nars[0].len() as u64;
    match content {
        Content::Files => println!(
            "NARs of {}: {files} files from {}, {:.0} MiB",
            content.name(),
            REAL_FILE_DIRS.join(" and "),
            size as f64 / f64::from(1 << 20)
        ),
        Content::Synthetic => println!("NARs of {}: 8 files of {} MiB", content.name(), NAR_MIB / 8),
    }
    let garage = tokio::task::spawn_blocking(garage::garage).await.unwrap();
    let (backend_bucket, direct_bucket) = (garage.create_bucket().await, garage.create_bucket().await);
    let (gateway, client_id, client_secret) =
        start_gateway(&garage.endpoint, &backend_bucket, &garage.key_id, &garage.secret_key).await;
    let gw = client(&gateway.endpoint, "us-east-1", client_id, &client_secret, true);
    let direct = client(&garage.endpoint, "garage", &garage.key_id, &garage.secret_key, true);
    gw.create_bucket().bucket(CACHE).send().await.unwrap();
    // The gateway inherits the environment: `NARGATE_*` variables set for the run are its settings.
    let settings: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("NARGATE_INGEST_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let settings = if settings.is_empty() { "default settings".to_owned() } else { settings.join(" ") };
    println!(
        "gateway: {} (pid {}), {settings}; clients: aws-sdk-s3 with its default request checksums",
        gateway.endpoint,
        gateway.child.id()
    );
    println!();

    if let Ok(side) = std::env::var("NARGATE_BENCH_ONLY") {
        // For profiling one side alone: every NAR PUT through the gateway, or straight to Garage.
        let (client, bucket) =
            if side == "direct" { (&direct, direct_bucket.as_str()) } else { (&gw, CACHE) };
        for nar in &nars {
            let took = put(client, bucket, &key_of(nar), nar.clone()).await;
            println!("{side} PutObject: {:.0} MiB/s", mib_per_s(size, took));
        }
        return;
    }

    let processes = Processes { gateway: gateway.child.id(), garage: garage_pid() };
    let sides = Sides { gateway: &gw, direct: &direct, direct_bucket: &direct_bucket, processes: &processes };
    let mut next = nars.iter();

    let put_runs = sides.alternate(Way::Put, next.by_ref().take(RUNS)).await;
    put_runs.print("PutObject, one at a time", size, None);
    let multipart_runs = sides.alternate(Way::Multipart, next.by_ref().take(RUNS)).await;
    multipart_runs.print("8 MiB multipart, one upload at a time", size, Some(&put_runs));

    let batch: Vec<Bytes> = next.cloned().collect();
    let mut times = vec![];
    for (side, bucket, prefix) in [(&gw, CACHE, ""), (&direct, direct_bucket.as_str(), "c-")] {
        let start = Instant::now();
        let tasks: Vec<_> = batch
            .iter()
            .map(|nar| {
                let (client, bucket, key, nar) =
                    (side.clone(), bucket.to_owned(), format!("{prefix}{}", key_of(nar)), nar.clone());
                tokio::spawn(async move { put(&client, &bucket, &key, nar).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        times.push(start.elapsed());
    }
    let total = size * batch.len() as u64;
    let (g, d) = (mib_per_s(total, times[0]), mib_per_s(total, times[1]));
    println!(
        "{CONCURRENT} concurrent PutObjects, total: gateway {g:.0} MiB/s, direct {d:.0} MiB/s, ratio {:.2}",
        g / d
    );
    let (peak, now) = gateway.memory();
    println!(
        "gateway peak RSS {peak:.0} MiB (now {now:.0} MiB) after {CONCURRENT} concurrent {NAR_MIB} MiB uploads"
    );

    if content != Content::Synthetic {
        println!();
        println!("the worst case, {}:", Content::Synthetic.name());
        let worst: Vec<Bytes> =
            (0..RUNS as u64).map(|seed| nar(Content::Synthetic, &[], 1000 + seed)).collect();
        let worst_runs = sides.alternate(Way::Put, worst.iter()).await;
        worst_runs.print("PutObject, one at a time", worst[0].len() as u64, None);
    }
}

/// How a NAR is uploaded.
#[derive(Clone, Copy)]
enum Way {
    Put,
    Multipart,
}

/// The two ways to Garage: through the gateway, and straight.
struct Sides<'a> {
    gateway: &'a Client,
    direct: &'a Client,
    direct_bucket: &'a str,
    processes: &'a Processes,
}

/// The times and CPU of NARs uploaded both ways.
struct Runs {
    gateway: Vec<Duration>,
    direct: Vec<Duration>,
    gateway_cpu: Cpu,
    direct_cpu: Cpu,
}

impl Sides<'_> {
    /// Uploads each of `nars` `way` through the gateway, then straight to Garage, alternating.
    async fn alternate<'n>(&self, way: Way, nars: impl Iterator<Item = &'n Bytes>) -> Runs {
        let mut runs =
            Runs { gateway: vec![], direct: vec![], gateway_cpu: Cpu::default(), direct_cpu: Cpu::default() };
        for nar in nars {
            let key = key_of(nar);
            let through = upload(way, self.gateway, CACHE, &key, nar.clone());
            runs.gateway.push(self.processes.counted(&mut runs.gateway_cpu, through).await);
            let straight = upload(way, self.direct, self.direct_bucket, &key, nar.clone());
            runs.direct.push(self.processes.counted(&mut runs.direct_cpu, straight).await);
        }
        runs
    }
}

/// Uploads `nar` to `key` the `way` given: its time.
async fn upload(way: Way, client: &Client, bucket: &str, key: &str, nar: Bytes) -> Duration {
    match way {
        Way::Put => put(client, bucket, key, nar).await,
        Way::Multipart => multipart(client, bucket, key, nar).await,
    }
}

impl Runs {
    /// Prints the throughputs, their ratio (also against `baseline`'s direct uploads, the issue's
    /// baseline for multipart) and the CPU per MiB.
    fn print(&self, what: &str, bytes: u64, baseline: Option<&Runs>) {
        let (g, d) =
            (mib_per_s(bytes, median(self.gateway.clone())), mib_per_s(bytes, median(self.direct.clone())));
        print!("{what}: gateway {g:.0} MiB/s, direct {d:.0} MiB/s, ratio {:.2}", g / d);
        if let Some(baseline) = baseline {
            let put = mib_per_s(bytes, median(baseline.direct.clone()));
            print!("; against a direct PutObject ({put:.0} MiB/s) {:.2}", g / put);
        }
        println!(" (target ≥ 0.8)");
        cpu_line(bytes * self.gateway.len() as u64, self.gateway_cpu, self.direct_cpu);
    }
}
