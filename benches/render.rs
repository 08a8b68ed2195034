//! The renderer's benchmark: `cargo bench --bench render` (optionally `-- --mib 512`).
//!
//! Generates a NAR of at least 256 MiB with both large files and many small ones, ingests it into
//! the fs backend, and prints, from one run:
//! - render throughput of the whole NAR (cold chunk cache) against `cat` of the NAR file (ratio);
//! - ranged-read latency (64 KiB, cold caches) at offset 0 against near the end (ratio ~1);
//! - stored bytes ÷ NAR bytes, and ÷ the NAR compressed with `zstd -3`;
//! - on Garage (started on loopback as the tests do), for each [`ConnectionMode`]: the latency of a
//!   GET of a 13 KB and of a 1.5 MB object; whole-NAR render against a direct GET of the same NAR
//!   stored as one object; and a 64 KiB ranged read near the end, cold and with the segment table
//!   cached, against a direct ranged GET.

mod common;
use common::content;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
#[path = "../tests/common/garage.rs"]
#[allow(dead_code)]
mod garage;

use nargate::backend::DynBackend;
use nargate::backend::fs::FsBackend;
use nargate::backend::s3::{ConnectionMode, S3Backend, S3Config};
use nargate::castore::ChunkStore;
use nargate::ingest::{IngestOptions, ingest_nar};
use nargate::nix::nar::{NarNode, write_nar};
use nargate::render::{RenderConfig, Renderer};
use tokio::io::AsyncReadExt;

fn tree(total_mib: usize) -> NarNode {
    let large = total_mib * 3 / 4;
    let mut root = vec![];
    for i in 0..(large / 32).max(1) {
        root.push((
            format!("lib{i:02}.so").into_bytes(),
            NarNode::File { executable: true, contents: content(32 << 20, i as u64) },
        ));
    }
    let mut small = vec![];
    let mut bytes = 0;
    let mut i = 0u64;
    while bytes < (total_mib - large) << 20 {
        let n = 512 + (i as usize * 7919) % 16384;
        small.push((
            format!("f{i:06}").into_bytes(),
            NarNode::File { executable: false, contents: content(n, 1000 + i) },
        ));
        bytes += n;
        i += 1;
    }
    root.push((b"share".to_vec(), NarNode::Directory(small)));
    NarNode::Directory(root)
}

async fn drain(
    mut stream: futures::stream::BoxStream<'static, Result<bytes::Bytes, nargate::render::RenderError>>,
) -> u64 {
    let mut n = 0;
    while let Some(piece) = stream.next().await {
        n += piece.expect("render").len() as u64;
    }
    n
}

async fn cat_throughput(path: &Path) -> (u64, Duration) {
    let start = Instant::now();
    let mut child =
        tokio::process::Command::new("cat").arg(path).stdout(Stdio::piped()).spawn().expect("cat");
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = out.read(&mut buf).await.unwrap();
        if r == 0 {
            break;
        }
        n += r as u64;
    }
    child.wait().await.unwrap();
    (n, start.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib = args
        .iter()
        .position(|a| a == "--mib")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(256usize);
    let dir = tempfile::tempdir().unwrap();
    let nar = write_nar(&tree(mib)).unwrap();
    let nar_path = dir.path().join("big.nar");
    std::fs::write(&nar_path, &nar).unwrap();
    let nar_size = nar.len() as u64;
    println!("NAR: {:.1} MiB", nar_size as f64 / (1 << 20) as f64);

    let backend: DynBackend = Arc::new(FsBackend::new(dir.path().join("store")).unwrap());
    let store = ChunkStore::new(backend.clone(), 256 << 20);
    let start = Instant::now();
    let ingested = ingest_nar(&store, &nar[..], &IngestOptions::default()).await.unwrap();
    let ingest_time = start.elapsed();
    drop(nar);
    println!(
        "ingest: {:.0} MiB/s ({} chunks, {:.1} s)",
        mib_per_s(nar_size, ingest_time),
        ingested.chunks,
        ingest_time.as_secs_f64()
    );
    let hash = ingested.record.nar_hash;

    // Warm the page cache for both sides, then measure.
    cat_throughput(&nar_path).await;
    let mut cat_times = vec![];
    for _ in 0..3 {
        let (n, time) = cat_throughput(&nar_path).await;
        assert_eq!(n, nar_size);
        cat_times.push(time);
    }
    let cat_time = median(cat_times);
    let mut render_times = vec![];
    for _ in 0..3 {
        let renderer = Renderer::new(ChunkStore::new(backend.clone(), 64 << 20), RenderConfig::default());
        let start = Instant::now();
        let n = drain(renderer.range(&hash, 0..u64::MAX).await.unwrap()).await;
        render_times.push(start.elapsed());
        assert_eq!(n, nar_size);
    }
    let render_time = median(render_times);
    println!(
        "whole NAR: render {:.0} MiB/s, cat {:.0} MiB/s, ratio render/cat = {:.2}",
        mib_per_s(nar_size, render_time),
        mib_per_s(nar_size, cat_time),
        cat_time.as_secs_f64() / render_time.as_secs_f64()
    );

    let latency = |offset: u64| {
        let backend = backend.clone();
        async move {
            let mut times = vec![];
            for _ in 0..15 {
                let renderer =
                    Renderer::new(ChunkStore::new(backend.clone(), 64 << 20), RenderConfig::default());
                let start = Instant::now();
                drain(renderer.range(&hash, offset..offset + 65536).await.unwrap()).await;
                times.push(start.elapsed());
            }
            median(times)
        }
    };
    let at_start = latency(0).await;
    let at_end = latency(nar_size - 70_000).await;
    println!(
        "cold 64 KiB ranged read: offset 0 {:.2} ms, near the end {:.2} ms, ratio end/start = {:.2}",
        at_start.as_secs_f64() * 1e3,
        at_end.as_secs_f64() * 1e3,
        at_end.as_secs_f64() / at_start.as_secs_f64()
    );

    for mode in [ConnectionMode::Reuse, ConnectionMode::QuickAck, ConnectionMode::NewPerRequest] {
        garage_figures(&nar_path, nar_size, mode).await;
    }

    let stored = dir_size(&dir.path().join("store"));
    let zstd = std::process::Command::new("zstd")
        .args(["-3", "-q", "-c", "-T0"])
        .arg(&nar_path)
        .output()
        .expect("zstd");
    let zstd_size = zstd.stdout.len() as u64;
    println!(
        "stored {:.1} MiB: stored/NAR = {:.3}, stored/zstd-3 = {:.3} (zstd -3: {:.1} MiB)",
        stored as f64 / (1 << 20) as f64,
        stored as f64 / nar_size as f64,
        stored as f64 / zstd_size as f64,
        zstd_size as f64 / (1 << 20) as f64
    );
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { dir_size(&entry.path()) } else { meta.len() };
    }
    total
}

/// Time of `f` as the median of `runs` runs.
async fn timed<F, Fut>(runs: usize, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = vec![];
    for _ in 0..runs {
        let start = Instant::now();
        f().await;
        times.push(start.elapsed());
    }
    median(times)
}

/// The same NAR on Garage: rendered from chunks against stored whole, as a plain S3 cache holds it.
async fn garage_figures(nar_path: &Path, nar_size: u64, connections: ConnectionMode) {
    let garage = tokio::task::spawn_blocking(garage::garage).await.unwrap();
    let config = S3Config { connections, ..garage.config(&garage.create_bucket().await) };
    let backend: DynBackend = Arc::new(S3Backend::new(config).await.unwrap());
    println!("Garage, connections {connections:?}:");
    let nar = bytes::Bytes::from(std::fs::read(nar_path).unwrap());
    backend.put("whole.nar", nar.clone()).await.unwrap();
    let store = ChunkStore::new(backend.clone(), 64 << 20);
    let start = Instant::now();
    let hash = ingest_nar(&store, &nar[..], &IngestOptions::default()).await.unwrap().record.nar_hash;
    let ingest_time = start.elapsed();
    drop(nar);

    // Latency of a GET of one small and one medium object (the connection warmed first).
    let mut object_gets = vec![];
    for (key, size, runs) in [("small", 13_000, 50), ("medium", 1_500_000, 20)] {
        backend.put(key, bytes::Bytes::from(content(size, size as u64))).await.unwrap();
        backend.get(key, None).await.unwrap().bytes().await.unwrap();
        object_gets.push(
            timed(runs, || async {
                assert_eq!(backend.get(key, None).await.unwrap().bytes().await.unwrap().len(), size);
            })
            .await,
        );
    }
    println!(
        "  GET of one object: 13 KB {:.2} ms, 1.5 MB {:.2} ms",
        object_gets[0].as_secs_f64() * 1e3,
        object_gets[1].as_secs_f64() * 1e3
    );

    let direct = timed(3, || async {
        let mut body = backend.get("whole.nar", None).await.unwrap().body;
        let mut n = 0;
        while let Some(piece) = body.next().await {
            n += piece.unwrap().len() as u64;
        }
        assert_eq!(n, nar_size);
    })
    .await;
    let rendered = timed(3, || async {
        let cold = Renderer::new(ChunkStore::new(backend.clone(), 64 << 20), RenderConfig::default());
        assert_eq!(drain(cold.range(&hash, 0..u64::MAX).await.unwrap()).await, nar_size);
    })
    .await;
    println!(
        "  ingest {:.0} MiB/s; whole NAR: render {:.0} MiB/s, direct GET {:.0} MiB/s, ratio render/direct = {:.2}",
        mib_per_s(nar_size, ingest_time),
        mib_per_s(nar_size, rendered),
        mib_per_s(nar_size, direct),
        direct.as_secs_f64() / rendered.as_secs_f64()
    );

    let at = nar_size - 70_000;
    let direct = timed(15, || async {
        backend.get("whole.nar", Some(at..at + 65536)).await.unwrap().bytes().await.unwrap();
    })
    .await;
    let cold = timed(15, || async {
        let cold = Renderer::new(ChunkStore::new(backend.clone(), 64 << 20), RenderConfig::default());
        drain(cold.range(&hash, at..at + 65536).await.unwrap()).await;
    })
    .await;
    let warm_renderer = Renderer::new(ChunkStore::new(backend.clone(), 0), RenderConfig::default());
    warm_renderer.table(&hash).await.unwrap();
    let warm = timed(15, || async {
        drain(warm_renderer.range(&hash, at..at + 65536).await.unwrap()).await;
    })
    .await;
    println!(
        "  64 KiB ranged read near the end: direct GET {:.2} ms, render cold {:.2} ms (ratio {:.2}), table cached {:.2} ms (ratio {:.2})",
        direct.as_secs_f64() * 1e3,
        cold.as_secs_f64() * 1e3,
        cold.as_secs_f64() / direct.as_secs_f64(),
        warm.as_secs_f64() * 1e3,
        warm.as_secs_f64() / direct.as_secs_f64()
    );
}
