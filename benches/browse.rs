//! The browsing benchmark: `cargo bench --bench browse`.
//!
//! `nargate serve` runs as a separate process over a Garage bucket whose cache browses
//! (`tree/…`); the same NARs are also stored as plain objects in another Garage bucket, the
//! baseline. Printed, from one run, against baselines measured in the same run:
//! - reading every file of a Python standard library store path (the NAR of `/usr/lib/python3.*`,
//!   dumped by `nix-store --dump`: ~1,400 files, as Nix would store it) through the gateway — a
//!   ListObjectsV2 walk of `tree/<hash>-python/` and a GET of each file, written to disk — against
//!   a direct GET of its whole NAR from Garage piped into `nix-store --restore`; one reader, and 8
//!   concurrent GETs (as rclone's transfers);
//! - the latency of one small file from a large NAR (five NARs of 96 MiB), cold (the gateway has
//!   seen neither the store path nor its chunks) and warm, against a direct ranged GET of the same
//!   bytes from Garage.

mod common;
use common::content;
use common::serving::{Side, client, ingest_store_path, loadavg, median, ms, start_gateway};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/common/garage.rs"]
#[allow(dead_code)]
mod garage;
#[path = "../tests/common/nix.rs"]
#[allow(dead_code)]
mod nix;

use futures::StreamExt;
use nargate::backend::s3::S3Backend;
use nargate::backend::{Backend, DynBackend};
use nargate::cache::{BucketRecord, BucketSettings, Cache};
use nargate::castore::ChunkStore;
use nargate::nix::nar::{NarNode, write_nar};
use nargate::render::{SegmentTable, StoreTree, TreeNode};

/// The bucket (cache) the gateway serves.
const CACHE: &str = "cache";
/// Runs of each latency figure.
const LATENCY_RUNS: usize = 50;
/// Large NARs, one cold sample each.
const LARGE_NARS: u64 = 5;
/// Concurrent GETs of the concurrent walk.
const CONCURRENCY: usize = 8;

/// The Python standard library directory of this machine.
fn python_stdlib() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("python3."))
                && p.join("os.py").is_file()
        })
        .collect();
    found.sort();
    found.pop().expect("no /usr/lib/python3.*/os.py: install python3 (the benchmark reads its stdlib)")
}

/// A NAR of three 32 MiB files and a 2 KiB configuration file.
fn large_nar(seed: u64) -> Vec<u8> {
    let lib: Vec<(Vec<u8>, NarNode)> = (0..3u64)
        .map(|i| {
            let node = NarNode::File { executable: true, contents: content(32 << 20, seed * 10 + i) };
            (format!("lib{i:02}.so").into_bytes(), node)
        })
        .collect();
    let etc = NarNode::Directory(vec![(
        b"small.conf".to_vec(),
        NarNode::File { executable: false, contents: content(2048, seed * 10 + 9) },
    )]);
    write_nar(&NarNode::Directory(vec![(b"etc".to_vec(), etc), (b"lib".to_vec(), NarNode::Directory(lib))]))
        .unwrap()
}

/// Every key under `prefix`, listed by the gateway.
async fn list_keys(side: &Side, prefix: &str) -> Vec<(String, u64)> {
    let mut out = vec![];
    let mut token = None;
    loop {
        let reply = side
            .client
            .list_objects_v2()
            .bucket(&side.bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .expect("list");
        out.extend(reply.contents().iter().map(|o| (o.key().unwrap().to_owned(), o.size().unwrap() as u64)));
        token = reply.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            return out;
        }
    }
}

/// GETs `key` whole into memory.
async fn fetch(side: &Side, key: &str) -> Vec<u8> {
    let out = side.client.get_object().bucket(&side.bucket).key(key).send().await.expect("GET");
    out.body.collect().await.expect("body").into_bytes().to_vec()
}

/// Walks `tree/<base>/` through the gateway and writes every key (files, symlinks as files holding
/// their targets, empty directories) under `to`, `concurrency` GETs at a time: (keys, bytes, time).
async fn walk_gateway(side: &Side, base: &str, to: &Path, concurrency: usize) -> (usize, u64, Duration) {
    let start = Instant::now();
    let prefix = format!("tree/{base}/");
    let keys = list_keys(side, &prefix).await;
    let bytes: u64 = keys.iter().map(|(_, s)| s).sum();
    let count = keys.len();
    futures::stream::iter(keys)
        .map(|(key, _)| {
            let (side, prefix, to) = (side.clone(), prefix.clone(), to.to_owned());
            async move {
                let body = fetch(&side, &key).await;
                let relative = key.strip_prefix(&prefix).unwrap();
                let path = to.join(relative);
                let marker = relative.ends_with('/');
                tokio::task::spawn_blocking(move || {
                    if marker {
                        std::fs::create_dir_all(path).unwrap();
                    } else {
                        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                        std::fs::write(path, body).unwrap();
                    }
                })
                .await
                .unwrap();
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    (count, bytes, start.elapsed())
}

/// GETs the whole NAR `key` from Garage and pipes it into `nix-store --restore to`.
async fn restore_direct(side: &Side, key: &str, nix: &nix::Nix, to: &Path) -> Duration {
    let start = Instant::now();
    let mut command = nix.command(&nix.nix_store);
    command.arg("--restore").arg(to).stdin(std::process::Stdio::piped());
    let mut child = command.spawn().expect("nix-store --restore");
    let mut stdin = child.stdin.take().unwrap();
    let out = side.client.get_object().bucket(&side.bucket).key(key).send().await.expect("GET");
    let mut body = out.body;
    while let Some(piece) = body.next().await {
        let piece = piece.expect("body");
        stdin = tokio::task::spawn_blocking(move || {
            std::io::Write::write_all(&mut stdin, &piece).unwrap();
            stdin
        })
        .await
        .unwrap();
    }
    drop(stdin);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "nix-store --restore failed");
    start.elapsed()
}

/// GETs `range` of `key` and drains it.
async fn time_range(side: &Side, key: &str, range: std::ops::Range<u64>) -> Duration {
    let start = Instant::now();
    assert_eq!(side.get(key, Some(range.clone())).await, range.end - range.start);
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let begun = Instant::now();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "nargate browse benchmark: files of store paths through `tree/` of a gateway process over Garage,"
    );
    println!("against direct GETs of the same NARs stored as plain objects in Garage; medians.");
    println!("{cores} cores, load average {} at start.", loadavg());

    let nix = nix::Nix::new();
    let stdlib = python_stdlib();
    let python = nix.run_ok(&nix.nix_store, ["--dump".as_ref(), stdlib.as_os_str()]).stdout;
    let garage = tokio::task::spawn_blocking(garage::garage).await.unwrap();
    let (backend_bucket, direct_bucket) = (garage.create_bucket().await, garage.create_bucket().await);
    let backend: DynBackend = Arc::new(S3Backend::new(garage.config(&backend_bucket)).await.unwrap());
    let direct_backend = S3Backend::new(garage.config(&direct_bucket)).await.unwrap();
    let store = ChunkStore::new(backend.clone(), 64 << 20);
    let cache = Cache::new(backend.clone(), CACHE);
    let mut settings = BucketRecord::new_now();
    settings.apply(&BucketSettings { browse: Some(true), ..Default::default() });
    cache.create(settings).await.expect("create the cache");

    let (python_ingest, python_info) = ingest_store_path(&store, &cache, "python3-stdlib", &python).await;
    let python_base = python_info.store_path.base_name();
    direct_backend.put("python.nar", bytes::Bytes::from(python.clone())).await.unwrap();
    let python_tree = StoreTree::build(
        &python_ingest.record,
        Arc::new(SegmentTable::build(&python_ingest.record).unwrap()),
    )
    .unwrap();
    let python_files =
        python_tree.entries().iter().filter(|e| matches!(e.node, TreeNode::File { .. })).count();
    println!(
        "python stdlib: {} ({} files, {} keys in tree/, NAR {:.1} MiB, {} chunks)",
        stdlib.display(),
        python_files,
        python_tree.entries().len(),
        python.len() as f64 / f64::from(1 << 20),
        python_ingest.chunks
    );

    // The large NARs, and where their small file is.
    let mut large = vec![];
    for seed in 0..LARGE_NARS {
        let nar = large_nar(seed);
        let (ingested, info) = ingest_store_path(&store, &cache, "large", &nar).await;
        let tree =
            StoreTree::build(&ingested.record, Arc::new(SegmentTable::build(&ingested.record).unwrap()))
                .unwrap();
        let entry = tree.get("/etc/small.conf").expect("the small file");
        let TreeNode::File { nar_offset, size, .. } = entry.node else { panic!("not a file") };
        let direct_key = format!("large-{seed}.nar");
        direct_backend.put(&direct_key, bytes::Bytes::from(nar)).await.unwrap();
        let gateway_key = format!("tree/{}/etc/small.conf", info.store_path.base_name());
        large.push((gateway_key, direct_key, nar_offset..nar_offset + size));
    }
    println!(
        "large NARs: {LARGE_NARS} of {:.0} MiB, each with a 2 KiB file; setup {:.1} s",
        (96u64 << 20) as f64 / f64::from(1 << 20),
        begun.elapsed().as_secs_f64()
    );

    let (gateway_process, client_id, client_secret) =
        start_gateway(&garage.endpoint, &backend_bucket, &garage.key_id, &garage.secret_key).await;
    let gw = Side {
        client: client(&gateway_process.endpoint, "us-east-1", client_id, &client_secret, true),
        bucket: CACHE.into(),
    };
    let direct = Side {
        client: client(&garage.endpoint, "garage", &garage.key_id, &garage.secret_key, true),
        bucket: direct_bucket.clone(),
    };
    gw.get("nix-cache-info", None).await;
    direct.get("large-0.nar", Some(0..1)).await;
    println!();

    println!("== every file of the python stdlib store path ==");
    for (runs, (what, concurrency)) in [
        ("cold, one GET at a time", 1),
        ("warm, one GET at a time", 1),
        ("warm, 8 concurrent GETs", CONCURRENCY),
    ]
    .into_iter()
    .enumerate()
    {
        let to = nix.path(&format!("walk-{runs}"));
        let (keys, bytes, g) = walk_gateway(&gw, &python_base, &to, concurrency).await;
        let restored = nix.path(&format!("restored-{runs}"));
        let d = restore_direct(&direct, "python.nar", &nix, &restored).await;
        let diff = std::process::Command::new("diff")
            .args(["-r", "--no-dereference"])
            .arg(&to)
            .arg(&restored)
            .output()
            .unwrap();
        // Symlinks were written as files holding their targets: `diff` may report only those.
        let differences =
            String::from_utf8_lossy(&diff.stdout).lines().filter(|l| !l.contains("symbolic link")).count();
        assert_eq!(differences, 0, "the walked files differ from the restored NAR");
        println!(
            "{what}: gateway {} ({keys} GETs + {} LISTs, {:.1} MiB), direct GET + nix-store --restore {}, ratio {:.2}",
            ms(g),
            keys.div_ceil(1000),
            bytes as f64 / f64::from(1 << 20),
            ms(d),
            g.as_secs_f64() / d.as_secs_f64()
        );
    }
    println!();

    println!("== one 2 KiB file of a 96 MiB NAR ==");
    let (mut cold, mut cold_direct) = (vec![], vec![]);
    for (gateway_key, direct_key, range) in &large {
        cold_direct.push(time_range(&direct, direct_key, range.clone()).await);
        cold.push(time_range(&gw, gateway_key, 0..range.end - range.start).await);
    }
    let (mut warm, mut warm_direct) = (vec![], vec![]);
    let (gateway_key, direct_key, range) = &large[0];
    for _ in 0..LATENCY_RUNS {
        warm_direct.push(time_range(&direct, direct_key, range.clone()).await);
        warm.push(time_range(&gw, gateway_key, 0..range.end - range.start).await);
    }
    let line = |what: &str, g: Duration, d: Duration| {
        println!(
            "{what}: gateway {}, direct ranged GET {}, ratio {:.2}",
            ms(g),
            ms(d),
            g.as_secs_f64() / d.as_secs_f64()
        )
    };
    line(
        &format!("cold (store path, NAR record and chunk not yet seen; n={LARGE_NARS})"),
        median(cold),
        median(cold_direct),
    );
    line(&format!("warm (n={LATENCY_RUNS})"), median(warm), median(warm_direct));
    println!();
    println!("load average {} at the end; {:.0} s in all", loadavg(), begun.elapsed().as_secs_f64());
    drop(gateway_process);
}
