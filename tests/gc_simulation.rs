//! The GC simulation: in each of 1,000 seeded schedules, uploads of store paths whose NARs share
//! files (so chunks), deletes and GCs run at once over an in-memory backend, and a scheduling
//! wrapper reorders, delays and stalls every backend request as the seed says (stalls longer
//! than the lease and lock TTLs included, so leases lapse under running ingests; some GCs are
//! killed in the middle). Timers are scaled down (a lease lives 1 s, the lock 2 s). After each
//! schedule and a last GC with no grace: every committed store path renders byte-exact, and the
//! backend holds exactly the NAR records and chunks that the buckets reach.
//!
//! A failing schedule prints its seed; `NARGATE_SIM_SEED=N cargo test --test gc_simulation`
//! replays it (`NARGATE_SIM_SCHEDULES` sets how many run). The seed fixes the plan (which
//! uploads, deletes and GCs, when, which die) and every request's yields, delays and stalls; the
//! clock is real time, and ingest hashes and compresses on blocking threads, so the
//! interleaving of a replay is close to the failing run's, not always the same. (Tokio's paused
//! clock does not help: it stands still while ingest's blocking hash worker waits for input.)

mod common;

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use common::pseudo_random;
use futures::StreamExt;
use nargate::backend::memory::{Clock, MemoryBackend};
use nargate::backend::{
    self, Attributes, Backend, BackendError, ByteStream, DynBackend, GetResult, ListPage, ListRequest,
    ObjectMeta, PutOptions,
};
use nargate::cache::{BucketRecord, Cache, PathInfo};
use nargate::castore::chunk::chunk_key;
use nargate::castore::lease::LeaseTimes;
use nargate::castore::{ChunkStore, ChunkerParams, NarRecord};
use nargate::gc::{self, GcError, GcOptions, NoProgress};
use nargate::ingest::{IngestError, IngestOptions, ingest_nar_under, take_lease};
use nargate::nix::narinfo::NarInfo;
use nargate::nix::nixbase32;
use nargate::nix::store_path::StorePath;
use nargate::render::{RenderConfig, Renderer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Reorders and delays every request as its random source says.
#[derive(Debug)]
struct Scheduled {
    inner: MemoryBackend,
    rng: Mutex<StdRng>,
}

impl Scheduled {
    /// Before a request: yield to other tasks a few times, sometimes sleep a while, rarely stall
    /// past every TTL.
    async fn turn(&self) {
        let (yields, sleep) = {
            let mut rng = self.rng.lock().unwrap();
            let yields = rng.gen_range(0..4);
            let sleep = match rng.gen_range(0..1000) {
                0..=4 => Duration::from_millis(rng.gen_range(1500..3000)),
                5..=80 => Duration::from_millis(rng.gen_range(1..100)),
                _ => Duration::ZERO,
            };
            (yields, sleep)
        };
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
        if !sleep.is_zero() {
            tokio::time::sleep(sleep).await;
        }
    }
}

#[async_trait]
impl Backend for Scheduled {
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, BackendError> {
        self.turn().await;
        self.inner.get(key, range).await
    }
    async fn put(&self, key: &str, body: Bytes) -> Result<ObjectMeta, BackendError> {
        self.turn().await;
        self.inner.put(key, body).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, BackendError> {
        self.turn().await;
        self.inner.head(key).await
    }
    async fn stat(&self, key: &str) -> Result<(ObjectMeta, Attributes), BackendError> {
        self.turn().await;
        self.inner.stat(key).await
    }
    async fn put_stream(
        &self,
        key: &str,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<ObjectMeta, BackendError> {
        self.turn().await;
        self.inner.put_stream(key, body, options).await
    }
    async fn list(&self, request: &ListRequest) -> Result<ListPage, BackendError> {
        self.turn().await;
        self.inner.list(request).await
    }
    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.turn().await;
        self.inner.delete(key).await
    }
}

/// A store path of the simulation: its narinfo and NAR.
struct Path {
    info: NarInfo,
    nar: Vec<u8>,
}

/// Six store paths whose NARs are directories of files drawn from a pool of eight, so that NARs
/// share files, and so chunks.
fn paths(seed: u64) -> Vec<Path> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let files: Vec<Vec<u8>> = (0..8).map(|i| pseudo_random(rng.gen_range(100..6000), seed * 8 + i)).collect();
    (0..6)
        .map(|i| {
            let mut w = nargate::nix::nar::writer::NarWriter::new(Vec::new()).unwrap();
            w.directory_start().unwrap();
            let mut chosen: Vec<usize> =
                (0..rng.gen_range(1..4)).map(|_| rng.gen_range(0..files.len())).collect();
            chosen.sort();
            chosen.dedup();
            for f in chosen {
                w.entry_start(format!("f{f}").as_bytes()).unwrap();
                w.file(false, &files[f]).unwrap();
                w.entry_end().unwrap();
            }
            w.directory_end().unwrap();
            let nar = w.finish().unwrap();
            use sha2::Digest as _;
            let hash: [u8; 32] = sha2::Sha256::digest(&nar).into();
            let store_hash = nixbase32::encode(&rng.r#gen::<[u8; 20]>());
            let store_path = StorePath::parse(&format!("/nix/store/{store_hash}-p{i}")).unwrap();
            let info = NarInfo::new(
                store_path,
                format!("nar/{}.nar", nixbase32::encode(&hash)),
                &hash,
                nar.len() as u64,
            );
            Path { info, nar }
        })
        .collect()
}

fn ingest_options(path: &Path) -> IngestOptions {
    IngestOptions {
        chunker: ChunkerParams::TINY,
        expected_nar_hash: Some(path.info.nar_hash_digest().unwrap()),
        expected_nar_size: Some(path.info.nar_size),
        gc_wait: Duration::from_secs(20),
        lease_times: LeaseTimes {
            refresh: Duration::from_millis(200),
            ttl: Duration::from_secs(1),
            margin: Duration::from_millis(300),
        },
        ..Default::default()
    }
}

/// Uploads a path as a client does (NAR then narinfo, or narinfo then NAR). A GC conflict is
/// the 4xx a client retries: not a failure of the simulation.
async fn upload(store: &ChunkStore, cache: &Cache, path: &Path, narinfo_first: bool) -> Result<(), String> {
    let hash = path.info.store_path.hash_part();
    if narinfo_first {
        cache.narinfo_arrived(&hash, &path.info).await.map_err(|e| e.to_string())?;
    }
    let options = ingest_options(path);
    let lease = take_lease(store, &options).await.map_err(|e| e.to_string())?;
    let landed = async {
        let ingested = ingest_nar_under(store, &path.nar[..], &options, &lease).await?;
        cache.nar_landed(&ingested.record).await.map_err(|e| {
            IngestError::Backend(BackendError::Remote {
                op: "commit",
                key: hash.clone(),
                message: e.to_string(),
            })
        })?;
        Ok::<_, IngestError>(())
    }
    .await;
    let _ = lease.release().await;
    match landed {
        Ok(()) => {}
        Err(IngestError::GcConflict) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    }
    if !narinfo_first {
        cache.narinfo_arrived(&hash, &path.info).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn gc_options(grace: Duration) -> GcOptions {
    GcOptions {
        grace,
        concurrency: 4,
        lock_ttl: Duration::from_secs(2),
        settle: Duration::from_millis(20),
        poll: Duration::from_millis(50),
        ..Default::default()
    }
}

/// A GC whose lock was taken by another, or that found one running, did nothing wrong.
fn gc_outcome(result: Result<gc::GcReport, GcError>) -> Result<(), String> {
    match result {
        Ok(_) | Err(GcError::Locked { .. }) | Err(GcError::LostLock { .. }) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// One schedule.
async fn schedule(seed: u64) -> Result<(), String> {
    let clock: Clock = Arc::new(SystemTime::now);
    let backend: DynBackend = Arc::new(Scheduled {
        inner: MemoryBackend::new(clock),
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
    });
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31));
    let paths = Arc::new(paths(seed));
    let store = ChunkStore::new(backend.clone(), 0);
    let buckets = ["a", "b"];
    for bucket in buckets {
        Cache::new(backend.clone(), bucket)
            .create(BucketRecord::new_now())
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut tasks = tokio::task::JoinSet::new();
    let mut killed = vec![];
    for _ in 0..rng.gen_range(4..9) {
        let delay = Duration::from_millis(rng.gen_range(0..1500));
        let (i, bucket) = (rng.gen_range(0..paths.len()), buckets[rng.gen_range(0..2)]);
        let cache = Cache::new(backend.clone(), bucket);
        let (store, paths, backend) = (store.clone(), paths.clone(), backend.clone());
        match rng.gen_range(0..10) {
            0..=4 => {
                let narinfo_first = rng.gen_bool(0.3);
                tasks.spawn(async move {
                    tokio::time::sleep(delay).await;
                    upload(&store, &cache, &paths[i], narinfo_first).await
                });
            }
            5..=6 => {
                tasks.spawn(async move {
                    tokio::time::sleep(delay).await;
                    let path = &paths[i];
                    cache
                        .remove_store_path(&path.info.store_path.hash_part())
                        .await
                        .map_err(|e| e.to_string())?;
                    cache
                        .remove_nar(&path.info.nar_hash_digest().unwrap())
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(())
                });
            }
            _ => {
                let grace = Duration::from_millis(rng.gen_range(0..3) * 500);
                let kill_after =
                    rng.gen_bool(0.3).then(|| delay + Duration::from_millis(rng.gen_range(0..1000)));
                let handle = tasks.spawn(async move {
                    tokio::time::sleep(delay).await;
                    gc_outcome(gc::collect(&backend, &gc_options(grace), &NoProgress).await)
                });
                if let Some(after) = kill_after {
                    killed.push((after, handle));
                }
            }
        }
    }
    // The killer: GCs that die mid-way (their lock stays until it expires).
    let killer = tokio::spawn(async move {
        killed.sort_by_key(|(after, _)| *after);
        let begun = tokio::time::Instant::now();
        for (after, handle) in killed {
            tokio::time::sleep_until(begun + after).await;
            handle.abort();
        }
    });
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => result?,
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(format!("a task panicked: {e}")),
        }
    }
    killer.await.map_err(|e| e.to_string())?;

    // Quiet now: wait until every lease and lock has expired or gone; one GC with no grace
    // cleans up.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    gc::collect(&backend, &gc_options(Duration::ZERO), &NoProgress)
        .await
        .map_err(|e| format!("the last GC: {e}"))?;
    check(&backend, &paths).await
}

/// Every committed path renders byte-exact; the backend holds exactly what the buckets reach.
async fn check(backend: &DynBackend, paths: &[Path]) -> Result<(), String> {
    let renderer = Renderer::new(ChunkStore::new(backend.clone(), 0), RenderConfig::default());
    let mut nars = BTreeSet::new();
    let all = backend::list_all(backend.as_ref(), "caches/").await.map_err(|e| e.to_string())?;
    for object in &all {
        let parts: Vec<&str> = object.key.split('/').collect();
        match parts.as_slice() {
            ["caches", _, "pathinfo", _] => {
                let bytes =
                    backend::get_bytes(backend.as_ref(), &object.key).await.map_err(|e| e.to_string())?;
                let info = PathInfo::decode(&bytes).map_err(|e| e.to_string())?;
                let expected = paths
                    .iter()
                    .find(|p| p.info.store_path.to_string() == info.store_path)
                    .ok_or("an unknown store path")?;
                let mut body = renderer
                    .range(&info.nar_hash, 0..info.nar_size)
                    .await
                    .map_err(|e| format!("committed {} does not render: {e}", info.store_path))?;
                let mut rendered = vec![];
                while let Some(piece) = body.next().await {
                    rendered.extend_from_slice(
                        &piece.map_err(|e| format!("{} breaks off: {e}", info.store_path))?,
                    );
                }
                if rendered != expected.nar {
                    return Err(format!("{} renders other bytes", info.store_path));
                }
                nars.insert(format!("nars/{}", nixbase32::encode(&info.nar_hash)));
            }
            ["caches", _, "nars", hash, ..] | ["caches", _, "pending", hash, _] => {
                nars.insert(format!("nars/{hash}"));
            }
            _ => {}
        }
    }
    let mut chunks = BTreeSet::new();
    let stored_nars: BTreeSet<String> = backend::list_all(backend.as_ref(), "nars/")
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|o| o.key)
        .collect();
    for key in nars.intersection(&stored_nars) {
        let bytes = backend::get_bytes(backend.as_ref(), key).await.map_err(|e| e.to_string())?;
        let record = NarRecord::decode(&bytes).map_err(|e| e.to_string())?;
        chunks.extend(record.chunks.iter().map(|c| chunk_key(&c.digest)));
    }
    let stored_chunks: BTreeSet<String> = backend::list_all(backend.as_ref(), "chunks/")
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|o| o.key)
        .collect();
    let reached: BTreeSet<String> = nars.intersection(&stored_nars).cloned().collect();
    if stored_nars != reached {
        return Err(format!(
            "NAR records left that nothing reaches: {:?}",
            stored_nars.difference(&reached).collect::<Vec<_>>()
        ));
    }
    if stored_chunks != chunks {
        let unreached: Vec<_> = stored_chunks.difference(&chunks).collect();
        let lost: Vec<_> = chunks.difference(&stored_chunks).collect();
        return Err(format!(
            "chunks: {} left unreached, {} reached but missing",
            unreached.len(),
            lost.len()
        ));
    }
    Ok(())
}

#[test]
fn gc_is_safe_under_concurrent_ingest_in_seeded_schedules() {
    let seeds: Vec<u64> = match std::env::var("NARGATE_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("NARGATE_SIM_SEED is a number")],
        Err(_) => {
            let count = std::env::var("NARGATE_SIM_SCHEDULES").map_or(1000, |n| n.parse().expect("a number"));
            (0..count).collect()
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Schedules mostly wait (their timers are real): many run at once.
    let failures: Vec<String> = runtime.block_on(
        futures::stream::iter(seeds)
            .map(|seed| async move { (seed, schedule(seed).await) })
            .buffer_unordered(128)
            .filter_map(|(seed, result)| async move {
                result.err().map(|e| {
                    format!("schedule {seed} failed: {e}\n  replay it: NARGATE_SIM_SEED={seed} cargo test --test gc_simulation")
                })
            })
            .collect(),
    );
    assert!(failures.is_empty(), "{} schedule(s) failed:\n{}", failures.len(), failures.join("\n"));
}
