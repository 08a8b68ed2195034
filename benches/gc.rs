//! The GC benchmark: `cargo bench --bench gc`.
//!
//! A generated store on a Garage bucket: 10,000 store paths, each committed as an upload commits
//! it, each of a NAR of 10 chunks of its own (100,000 chunks). Half the NARs are then deleted from
//! the bucket, and one GC with no grace removes what they alone reached. It prints:
//! - the GC's time and backend requests per object it looked at, against a LIST of every key of
//!   the store (the least any mark and sweep must do) in the same run;
//! - the peak RSS of `nargate gc` and `nargate verify` as processes over the same store, and of
//!   `nargate gc` over a store with a tenth of its marked chunks (written the same way, nothing
//!   deleted): the difference per marked chunk is what the mark costs as the store grows.
//!
//! `GC_BENCH_PATHS` sets the number of store paths (default 10,000).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/common/garage.rs"]
#[allow(dead_code)]
mod garage;

use bytes::Bytes;
use futures::StreamExt;
use nargate::backend::counting::CountingBackend;
use nargate::backend::s3::S3Backend;
use nargate::backend::{self, DynBackend};
use nargate::cache::{BucketRecord, Cache};
use nargate::castore::chunk::{chunk_key, encode_chunk};
use nargate::castore::{ChunkRef, ChunkerParams, Digest, NarRecord, Node};
use nargate::gc::{self, GcOptions, NoProgress};
use nargate::nix::narinfo::NarInfo;
use nargate::nix::nixbase32;
use nargate::nix::store_path::StorePath;

/// Chunks per NAR.
const CHUNKS_PER_NAR: usize = 10;
/// Bytes per chunk (the GC reads no chunk: their size does not matter to it).
const CHUNK_BYTES: usize = 64;
/// Requests in flight while the store is generated.
const WRITERS: usize = 64;

/// The NAR record of store path `i`: one file whose contents are its 10 chunks.
fn record(i: u64) -> (NarRecord, Vec<(Digest, Bytes)>) {
    let chunks: Vec<(Digest, Bytes)> = (0..CHUNKS_PER_NAR as u64)
        .map(|c| {
            let mut data = vec![0u8; CHUNK_BYTES];
            data[..16].copy_from_slice(&(i * 1000 + c).to_le_bytes().repeat(2));
            (Digest::of(&data), Bytes::from(encode_chunk(&data)))
        })
        .collect();
    let content_size = (CHUNKS_PER_NAR * CHUNK_BYTES) as u64;
    let nar_hash: [u8; 32] = *blake3::hash(&i.to_le_bytes()).as_bytes();
    let record = NarRecord {
        root: Node::File { digest: Digest::of(&i.to_le_bytes()), size: content_size, executable: false },
        directories: vec![],
        nar_hash,
        // A NAR of one regular file: 112 bytes of framing around its contents.
        nar_size: content_size + 112,
        nar_md5: [0; 16],
        chunker: ChunkerParams::TINY,
        chunks: chunks
            .iter()
            .map(|(digest, _)| ChunkRef { digest: *digest, size: CHUNK_BYTES as u32 })
            .collect(),
    };
    (record, chunks)
}

/// Writes store path `i`: its chunks and NAR record, then lands the NAR and commits its narinfo
/// as an upload does.
async fn write_path(backend: &DynBackend, cache: &Cache, i: u64) {
    let (record, chunks) = record(i);
    futures::stream::iter(chunks)
        .for_each_concurrent(CHUNKS_PER_NAR, |(digest, body)| async move {
            backend.put(&chunk_key(&digest), body).await.unwrap();
        })
        .await;
    backend.put(&record.key(), Bytes::from(record.encode())).await.unwrap();
    cache.nar_landed(&record).await.unwrap();
    let hash = nixbase32::encode(&blake3::hash(format!("path {i}").as_bytes()).as_bytes()[..20]);
    let path = StorePath::parse(&format!("/nix/store/{hash}-path-{i}")).unwrap();
    let url = format!("nar/{}.nar", nixbase32::encode(&record.nar_hash));
    let info = NarInfo::new(path, url, &record.nar_hash, record.nar_size);
    cache.narinfo_arrived(&hash, &info).await.unwrap();
}

/// Runs `nargate ARGS --config CONFIG` and samples its peak RSS (VmHWM) until it exits: MiB.
fn peak_rss_mib(config: &std::path::Path, args: &[&str]) -> f64 {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nargate"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("NARGATE_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(args)
        .arg("--config")
        .arg(config)
        .env("NARGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nargate");
    let mut peak = 0.0f64;
    loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            && let Some(kb) = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))
            && let Ok(kb) = kb.trim().trim_end_matches("kB").trim().parse::<f64>()
        {
            peak = peak.max(kb / 1024.0);
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "nargate {args:?} failed");
            return peak;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A configuration for the `nargate` command over `bucket` of `garage`.
fn config_for(garage: &garage::Garage, bucket: &str) -> tempfile::NamedTempFile {
    let toml = format!(
        "[backend]\ntype = \"s3\"\nendpoint = \"{}\"\nregion = \"garage\"\nbucket = \"{bucket}\"\npath_style = true\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
        garage.endpoint, garage.key_id, garage.secret_key
    );
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::io::Write::write_all(&mut file, toml.as_bytes()).unwrap();
    file
}

#[tokio::main]
async fn main() {
    let paths: u64 = std::env::var("GC_BENCH_PATHS").map_or(10_000, |n| n.parse().expect("a number"));
    let garage = tokio::task::spawn_blocking(garage::garage).await.unwrap();
    let (bucket, small) = (garage.create_bucket().await, garage.create_bucket().await);
    let counting = Arc::new(CountingBackend::new(S3Backend::new(garage.config(&bucket)).await.unwrap()));
    let backend: DynBackend = counting.clone();
    let cache = Cache::new(backend.clone(), "bench");
    cache.create(BucketRecord::new_now()).await.unwrap();

    let started = Instant::now();
    futures::stream::iter(0..paths)
        .for_each_concurrent(WRITERS / CHUNKS_PER_NAR, |i| {
            let (backend, cache) = (backend.clone(), cache.clone());
            async move { write_path(&backend, &cache, i).await }
        })
        .await;
    let objects = backend::list_all(backend.as_ref(), "").await.unwrap().len();
    // The small store: a twentieth of the paths, none deleted: a tenth of the big store's marked
    // chunks.
    let small_paths = paths / 20;
    let small_backend: DynBackend = Arc::new(S3Backend::new(garage.config(&small)).await.unwrap());
    let small_cache = Cache::new(small_backend.clone(), "bench");
    small_cache.create(BucketRecord::new_now()).await.unwrap();
    futures::stream::iter(0..small_paths)
        .for_each_concurrent(WRITERS / CHUNKS_PER_NAR, |i| {
            let (backend, cache) = (small_backend.clone(), small_cache.clone());
            async move { write_path(&backend, &cache, i).await }
        })
        .await;
    println!(
        "generated {paths} store paths, {} chunks, {objects} objects in {:.0} s",
        paths as usize * CHUNKS_PER_NAR,
        started.elapsed().as_secs_f64()
    );
    // Half the NARs leave the bucket (and their store paths with them).
    futures::stream::iter((0..paths).filter(|i| i % 2 == 1))
        .for_each_concurrent(WRITERS, |i| {
            let cache = cache.clone();
            async move {
                cache.remove_nar(&record(i).0.nar_hash).await.unwrap();
            }
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The baseline: one LIST of every key of the store.
    let before = counting.counts();
    let listed = Instant::now();
    let keys = backend::list_all(backend.as_ref(), "").await.unwrap().len();
    let list_time = listed.elapsed();
    let list_requests = counting.counts().total() - before.total();

    let before = counting.counts();
    let collecting = Instant::now();
    let options = GcOptions {
        grace: Duration::ZERO,
        settle: Duration::from_millis(100),
        concurrency: 32,
        ..Default::default()
    };
    let report = gc::collect(&backend, &options, &NoProgress).await.unwrap();
    let gc_time = collecting.elapsed();
    let requests = counting.counts();
    let (gets, puts, heads, lists, deletes) = (
        requests.get - before.get,
        requests.put - before.put,
        requests.head - before.head,
        requests.list - before.list,
        requests.delete - before.delete,
    );
    let total = requests.total() - before.total();
    let looked_at = report.chunks.looked_at + report.nar_records.looked_at + report.index_entries.looked_at;
    assert_eq!(report.chunks.removed as usize, (paths as usize / 2) * CHUNKS_PER_NAR, "{report:?}");
    assert_eq!(report.nar_records.removed, paths / 2);

    println!(
        "store: {keys} keys; GC removed {} chunks and {} NAR records",
        report.chunks.removed, report.nar_records.removed
    );
    println!(
        "GC: {:.2} s, {total} backend requests ({gets} GET, {puts} PUT, {heads} HEAD, {lists} LIST, {deletes} DELETE) = {:.2} per object looked at ({looked_at})",
        gc_time.as_secs_f64(),
        total as f64 / looked_at as f64
    );
    println!(
        "baseline, a LIST of every key: {:.2} s, {list_requests} requests; GC / LIST time = {:.1}x",
        list_time.as_secs_f64(),
        gc_time.as_secs_f64() / list_time.as_secs_f64()
    );

    let store_config = config_for(garage, &bucket);
    let small_config = config_for(garage, &small);
    let small_rss = tokio::task::spawn_blocking({
        let path = small_config.path().to_owned();
        move || peak_rss_mib(&path, &["gc", "--grace", "0"])
    })
    .await
    .unwrap();
    let (gc_rss, verify_rss) = tokio::task::spawn_blocking({
        let path = store_config.path().to_owned();
        move || (peak_rss_mib(&path, &["gc", "--grace", "0"]), peak_rss_mib(&path, &["verify"]))
    })
    .await
    .unwrap();
    let marked = (paths as usize / 2) * CHUNKS_PER_NAR;
    let small_marked = small_paths as usize * CHUNKS_PER_NAR;
    println!(
        "peak RSS: nargate gc {gc_rss:.1} MiB ({marked} chunks marked), nargate verify {verify_rss:.1} MiB; nargate gc of the small store {small_rss:.1} MiB ({small_marked} marked): {:.0} bytes per marked chunk more",
        ((gc_rss - small_rss).max(0.0) * (1 << 20) as f64) / (marked - small_marked) as f64
    );
}
