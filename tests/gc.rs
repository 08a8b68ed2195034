//! GC over a real S3 backend (Garage): after deletes, a GC with no grace leaves exactly what the
//! remaining store paths reach, and they still read back byte-identical; GC waits for ingests
//! that began before it, and an ingest that begins during it follows the lock; retention keeps
//! closures whole.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use common::gateway::{TestGateway, fixture_nars, start};
use common::pseudo_random;
use nargate::backend::{self, DynBackend};
use nargate::cache::{BucketSettings, PathInfo};
use nargate::castore::NarRecord;
use nargate::castore::chunk::chunk_key;
use nargate::castore::lease::{GC_LOCK_KEY, Lease, LeaseRecord};
use nargate::gc::{self, GcError, GcOptions, NoProgress};
use nargate::nix::nixbase32;

/// GC options for tests: no grace, no settling.
fn no_grace() -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        settle: Duration::from_millis(50),
        poll: Duration::from_millis(200),
        ..Default::default()
    }
}

/// What the store's buckets reach, worked out here from the records: the NAR records that a path
/// info or a bucket's NAR entry names, and their chunks.
async fn reachable(backend: &DynBackend) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut nars = BTreeSet::new();
    for object in backend::list_all(backend.as_ref(), "caches/").await.unwrap() {
        let parts: Vec<&str> = object.key.split('/').collect();
        match parts.as_slice() {
            ["caches", _, "pathinfo", _] => {
                let info =
                    PathInfo::decode(&backend::get_bytes(backend.as_ref(), &object.key).await.unwrap())
                        .unwrap();
                nars.insert(format!("nars/{}", nixbase32::encode(&info.nar_hash)));
            }
            ["caches", _, "nars", hash, ..] => {
                nars.insert(format!("nars/{hash}"));
            }
            _ => {}
        }
    }
    let mut chunks = BTreeSet::new();
    for key in &nars {
        let record = NarRecord::decode(&backend::get_bytes(backend.as_ref(), key).await.unwrap()).unwrap();
        chunks.extend(record.chunks.iter().map(|c| chunk_key(&c.digest)));
    }
    (nars, chunks)
}

async fn keys(backend: &DynBackend, prefix: &str) -> BTreeSet<String> {
    backend::list_all(backend.as_ref(), prefix).await.unwrap().into_iter().map(|o| o.key).collect()
}

/// A NAR of one file of `size` pseudo-random bytes, and its NarHash (nixbase32).
fn generated_nar(size: usize, seed: u64) -> (Vec<u8>, String) {
    let mut w = nargate::nix::nar::writer::NarWriter::new(Vec::new()).unwrap();
    w.file(false, &pseudo_random(size, seed)).unwrap();
    let nar = w.finish().unwrap();
    use sha2::Digest as _;
    let hash: [u8; 32] = sha2::Sha256::digest(&nar).into();
    (nar, nixbase32::encode(&hash))
}

async fn put(gw: &TestGateway, bucket: &str, key: &str, body: Vec<u8>) {
    gw.client().put_object().bucket(bucket).key(key).body(ByteStream::from(body)).send().await.unwrap();
}

async fn delete(gw: &TestGateway, bucket: &str, key: &str) {
    gw.client().delete_object().bucket(bucket).key(key).send().await.unwrap();
}

async fn get(gw: &TestGateway, bucket: &str, key: &str) -> Vec<u8> {
    let out = gw.client().get_object().bucket(bucket).key(key).send().await.unwrap();
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_leaves_exactly_what_the_remaining_paths_reach() {
    let gw = start(common::garage_backend().await).await;
    let backend = gw.backend.clone();
    // Two buckets hold the same fixture NARs (stored once); "drop" also has a NAR of its own.
    gw.import("keep", false, &["cache-none"]).await;
    gw.import("drop", false, &["cache-xz"]).await;
    let (own_nar, own_hash) = generated_nar(3 << 20, 11);
    put(&gw, "drop", &format!("nar/{own_hash}.nar"), own_nar).await;
    let fixtures = fixture_nars();
    let symlink = fixtures.iter().find(|(path, _, _)| path.ends_with("-single-symlink")).unwrap();
    let symlink_hash = symlink.0.strip_prefix("/nix/store/").unwrap().split_once('-').unwrap().0.to_owned();
    let chunks_before = keys(&backend, "chunks/").await;
    let nars_before = keys(&backend, "nars/").await;
    assert_eq!(
        nars_before.len(),
        5,
        "four fixture NARs, stored once for both buckets, and the generated one"
    );

    // Nothing deleted yet: a GC removes nothing.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = gc::collect(&backend, &no_grace(), &NoProgress).await.unwrap();
    assert_eq!((report.chunks.removed, report.nar_records.removed), (0, 0), "{report:?}");
    assert_eq!(keys(&backend, "chunks/").await, chunks_before);

    // The single-symlink path goes from both buckets (narinfo and NAR), the generated NAR from
    // "drop"; "keep" loses the hello path's narinfo but still holds its NAR.
    for bucket in ["keep", "drop"] {
        delete(&gw, bucket, &format!("{symlink_hash}.narinfo")).await;
        delete(&gw, bucket, &format!("nar/{}.nar", symlink.1)).await;
    }
    delete(&gw, "drop", &format!("nar/{own_hash}.nar")).await;
    // A crash in the middle of a delete: the path info is gone, its listing entries stay.
    let app = fixtures.iter().find(|(path, _, _)| path.ends_with("-app")).unwrap();
    let app_hash = app.0.strip_prefix("/nix/store/").unwrap().split_once('-').unwrap().0.to_owned();
    backend.delete(&format!("caches/drop/pathinfo/{app_hash}")).await.unwrap();
    // A lease left by a dead ingest: expired, it is removed, and GC does not wait for it.
    let dead = LeaseRecord { purpose: "dead".into(), ttl_secs: 1, started: 0, aware_of: None };
    backend.put("leases/dead", Bytes::from(dead.encode())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let report = gc::collect(&backend, &no_grace(), &NoProgress).await.unwrap();
    let (nars, chunks) = reachable(&backend).await;
    assert_eq!(keys(&backend, "nars/").await, nars, "NAR records: exactly those reached");
    assert_eq!(keys(&backend, "chunks/").await, chunks, "chunks: exactly those reached");
    assert_eq!(nars.len(), 3, "the symlink's and the generated NAR's records went");
    assert_eq!(report.nar_records.removed, 2, "{report:?}");
    assert!(report.chunks.removed >= 3, "the generated NAR's chunks went: {report:?}");
    assert_eq!(report.chunks.removed as usize, chunks_before.len() - chunks.len());
    assert_eq!(report.leases.removed, 1, "{report:?}");
    assert!(keys(&backend, "leases/").await.is_empty());
    assert!(keys(&backend, GC_LOCK_KEY).await.is_empty(), "the lock is released");
    // The stale listing entries of the app path in "drop" went; nothing lists it any more.
    assert_eq!(report.index_entries.removed, 3, "{report:?}");
    let listed: Vec<String> = gw
        .client()
        .list_objects_v2()
        .bucket("drop")
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .map(|o| o.key().unwrap().to_owned())
        .collect();
    assert!(!listed.iter().any(|k| k.contains(&app_hash)), "{listed:?}");

    // What remains reads back as Nix wrote it.
    for (path, nar_hash, bytes) in &fixtures {
        if path.ends_with("-single-symlink") {
            continue;
        }
        assert_eq!(&get(&gw, "keep", &format!("nar/{nar_hash}.nar")).await, bytes, "{path}");
    }

    // A second GC finds nothing more to remove.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = gc::collect(&backend, &no_grace(), &NoProgress).await.unwrap();
    assert_eq!((again.chunks.removed, again.nar_records.removed, again.index_entries.removed), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_waits_for_earlier_ingests_and_later_ones_follow_its_lock() {
    let backend = common::garage_backend().await;
    // An ingest that began before the GC: the GC does not mark until it ends.
    let early = Lease::acquire(backend.clone(), "early ingest").await.unwrap();
    assert!(early.may_skip_existing());
    let options = GcOptions { grace: Duration::ZERO, ..no_grace() };
    let running = tokio::spawn({
        let backend = backend.clone();
        async move { gc::collect(&backend, &options, &NoProgress).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!running.is_finished(), "GC went on while an earlier ingest ran");
    assert!(keys(&backend, GC_LOCK_KEY).await.len() == 1, "GC holds its lock while it waits");

    // An ingest that begins now sees the lock: it may not skip existing chunks, must re-check,
    // and the GC does not wait for it.
    let late = Lease::acquire(backend.clone(), "late ingest").await.unwrap();
    assert!(!late.may_skip_existing());
    assert!(late.must_recheck().await);
    // A second GC is refused while the first holds the lock.
    match gc::collect(&backend, &no_grace(), &NoProgress).await {
        Err(GcError::Locked { .. }) => {}
        other => panic!("a second GC ran: {other:?}"),
    }
    early.release().await.unwrap();
    let report =
        tokio::time::timeout(Duration::from_secs(20), running).await.expect("GC ended").unwrap().unwrap();
    assert_eq!(report.leases.kept, 1, "the late ingest's lease stays: {report:?}");
    // The late ingest's re-check: its lease written again, the lock gone.
    assert!(late.renew_and_wait_for_gc(Duration::from_millis(100), Duration::from_secs(5)).await.unwrap());
    late.release().await.unwrap();
    assert!(keys(&backend, "leases/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_what_kept_paths_reference() {
    let gw = start(common::garage_backend().await).await;
    let backend = gw.backend.clone();
    gw.import("old", false, &["cache-none"]).await;
    let cache = gw.cache("old");
    // Every path but `app` was uploaded ten days ago; `app` references `hello` and
    // `single-file`; `single-symlink` is referenced by nothing.
    let ten_days = 10 * 86_400;
    for object in backend::list_all(backend.as_ref(), "caches/old/pathinfo/").await.unwrap() {
        let mut info =
            PathInfo::decode(&backend::get_bytes(backend.as_ref(), &object.key).await.unwrap()).unwrap();
        if !info.store_path.ends_with("-app") {
            info.uploaded -= ten_days;
            backend.put(&object.key, Bytes::from(info.encode())).await.unwrap();
        }
    }
    let mut settings = cache.settings().await.unwrap().unwrap();
    settings.apply(&BucketSettings { retention_secs: Some(7 * 86_400), ..Default::default() });
    cache.set_settings(&settings).await.unwrap();

    let dry = gc::collect(&backend, &GcOptions { dry_run: true, ..no_grace() }, &NoProgress).await.unwrap();
    let doomed: Vec<&str> = dry.retention_removed.iter().map(String::as_str).collect();
    assert_eq!(doomed.len(), 1, "{doomed:?}");
    assert!(doomed[0].starts_with("old/") && doomed[0].ends_with("-single-symlink"), "{doomed:?}");
    assert_eq!(keys(&backend, "caches/old/pathinfo/").await.len(), 4, "a dry run removes nothing");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = gc::collect(&backend, &no_grace(), &NoProgress).await.unwrap();
    assert_eq!(report.retention_removed, dry.retention_removed);
    assert_eq!(report.nar_records.removed, 1, "the unreferenced path's NAR went with it: {report:?}");
    let fixtures = fixture_nars();
    for (path, nar_hash, bytes) in &fixtures {
        let key = format!("nar/{nar_hash}.nar");
        if path.ends_with("-single-symlink") {
            let missing = gw.client().head_object().bucket("old").key(&key).send().await;
            assert!(missing.is_err(), "{path} is still there");
        } else {
            assert_eq!(&get(&gw, "old", &key).await, bytes, "{path}");
        }
    }
    let (nars, chunks) = reachable(&backend).await;
    assert_eq!(keys(&backend, "nars/").await, nars);
    assert_eq!(keys(&backend, "chunks/").await, chunks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_missing_and_corrupt_chunks_and_repairs_listing_entries() {
    use nargate::backend::fault::FaultyBackend;
    use nargate::gc::verify::{VerifyOptions, verify};
    let faulty = std::sync::Arc::new(FaultyBackend::new(common::garage::garage_s3_backend().await));
    let backend: DynBackend = faulty.clone();
    let gw = start(backend.clone()).await;
    gw.import("cache", false, &["cache-none"]).await;
    let clean =
        verify(&backend, &VerifyOptions { deep: true, ..Default::default() }, &NoProgress).await.unwrap();
    assert!(clean.problems.is_empty(), "{:?}", clean.problems);
    assert_eq!((clean.store_paths, clean.nar_records, clean.rendered), (4, 4, 4));

    // One chunk of `hello` deleted, one of `single-file` corrupt on every read.
    let fixtures = fixture_nars();
    let chunk_of = |suffix: &'static str| {
        let backend = backend.clone();
        let hash = fixtures.iter().find(|(p, _, _)| p.ends_with(suffix)).unwrap().1.clone();
        async move {
            let record = NarRecord::decode(
                &backend::get_bytes(backend.as_ref(), &format!("nars/{hash}")).await.unwrap(),
            )
            .unwrap();
            chunk_key(&record.chunks[0].digest)
        }
    };
    let (deleted, corrupt) = (chunk_of("-hello").await, chunk_of("-single-file").await);
    assert_ne!(deleted, corrupt);
    backend.delete(&deleted).await.unwrap();
    faulty.corrupt_gets(corrupt.clone());
    let shallow = verify(&backend, &VerifyOptions::default(), &NoProgress).await.unwrap();
    let keys_of = |report: &nargate::gc::verify::VerifyReport| -> Vec<String> {
        report.problems.iter().map(|p| format!("{} {}", p.key, p.what)).collect()
    };
    assert_eq!(keys_of(&shallow), vec![format!("{deleted} chunk missing")]);
    let deep =
        verify(&backend, &VerifyOptions { deep: true, ..Default::default() }, &NoProgress).await.unwrap();
    let found = keys_of(&deep);
    assert!(found.iter().any(|p| p.starts_with(&format!("{corrupt} chunk unreadable"))), "{found:?}");
    assert!(found.iter().any(|p| p.contains("does not render")), "{found:?}");
    assert!(deep.has_unrepaired());
    faulty.clear();

    // A listing entry lost (a crash mid-commit): found, and --repair writes it again.
    let app = fixtures.iter().find(|(p, _, _)| p.ends_with("-app")).unwrap();
    let app_hash = app.0.strip_prefix("/nix/store/").unwrap().split_once('-').unwrap().0.to_owned();
    let entry_prefix = gw.cache("cache").keys().index_entry_prefix(&format!("{app_hash}.narinfo"));
    let entries = keys(&backend, &entry_prefix).await;
    assert_eq!(entries.len(), 1);
    backend.delete(entries.first().unwrap()).await.unwrap();
    let listed = |gw: &TestGateway| {
        let client = gw.client();
        async move {
            let out = client.list_objects_v2().bucket("cache").send().await.unwrap();
            out.contents().iter().map(|o| o.key().unwrap().to_owned()).collect::<Vec<_>>()
        }
    };
    assert!(!listed(&gw).await.contains(&format!("{app_hash}.narinfo")));
    let found = verify(&backend, &VerifyOptions::default(), &NoProgress).await.unwrap();
    assert!(
        keys_of(&found).iter().any(|p| p.contains(&format!("not listed: {app_hash}.narinfo"))),
        "{:?}",
        keys_of(&found)
    );
    let repaired =
        verify(&backend, &VerifyOptions { repair: true, ..Default::default() }, &NoProgress).await.unwrap();
    let unrepaired: Vec<&str> =
        repaired.problems.iter().filter(|p| !p.repaired).map(|p| p.key.as_str()).collect();
    assert_eq!(unrepaired, vec![deleted.as_str()], "the missing chunk cannot be repaired");
    assert_eq!(keys(&backend, &entry_prefix).await, entries, "the entry is back, as it was");
    assert!(listed(&gw).await.contains(&format!("{app_hash}.narinfo")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_paths_nar_bytes_and_stored_chunks() {
    let gw = start(common::garage_backend().await).await;
    let backend = gw.backend.clone();
    gw.import("one", false, &["cache-none"]).await;
    gw.import("two", false, &["cache-zstd"]).await;
    let (own_nar, own_hash) = generated_nar(2 << 20, 5);
    put(&gw, "two", &format!("nar/{own_hash}.nar"), own_nar.clone()).await;
    let stats = gc::stats::compute(&backend, None).await.unwrap();
    let fixture_bytes: u64 = fixture_nars().iter().map(|(_, _, nar)| nar.len() as u64).sum();
    let chunk_objects = backend::list_all(backend.as_ref(), "chunks/").await.unwrap();
    let chunk_bytes: u64 = chunk_objects.iter().map(|o| o.size).sum();
    let one = &stats.buckets["one"];
    let two = &stats.buckets["two"];
    assert_eq!((one.store_paths, one.nars, one.logical_nar_bytes), (4, 4, fixture_bytes));
    assert_eq!(
        (two.store_paths, two.nars, two.logical_nar_bytes),
        (4, 5, fixture_bytes + own_nar.len() as u64)
    );
    assert_eq!((stats.distinct_nars, stats.distinct_nar_bytes), (5, fixture_bytes + own_nar.len() as u64));
    assert_eq!(
        (stats.chunks, stats.chunk_bytes, stats.nar_records),
        (chunk_objects.len() as u64, chunk_bytes, 5)
    );
    // "two" uses every chunk; "one" all but the generated NAR's.
    assert_eq!(two.stored_chunk_bytes, chunk_bytes);
    assert!(one.stored_chunk_bytes < chunk_bytes && one.stored_chunk_bytes > 0);
    assert!((stats.dedup_ratio() - stats.distinct_nar_bytes as f64 / chunk_bytes as f64).abs() < 1e-9);
    let only = gc::stats::compute(&backend, Some("one")).await.unwrap();
    assert_eq!(only.buckets.keys().collect::<Vec<_>>(), vec!["one"]);
    assert_eq!(only.buckets["one"], *one);
}
