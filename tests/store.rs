//! The core round trip on real backends: NAR → ingest → chunks + NAR record → renderer → the same
//! bytes, for every fixture NAR from every fixture cache, on the fs backend and on Garage.

mod common;

use std::path::{Path, PathBuf};

use nargate::backend::{DynBackend, ListRequest};
use nargate::cache::md5_hex;
use nargate::castore::{ChunkStore, ChunkerParams};
use nargate::ingest::{IngestOptions, ingest_nar};
use nargate::nix::narinfo::NarInfo;
use nargate::render::{RenderConfig, Renderer};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every (narinfo, compressed NAR path) of every fixture cache.
fn fixture_uploads() -> Vec<(NarInfo, PathBuf)> {
    let mut out = vec![];
    let mut caches: Vec<_> = std::fs::read_dir(fixtures()).unwrap().map(|e| e.unwrap().path()).collect();
    caches.sort();
    for cache in caches.into_iter().filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("cache-"))
    {
        for entry in std::fs::read_dir(&cache).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "narinfo") {
                let info = NarInfo::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
                let nar = cache.join(&info.url);
                out.push((info, nar));
            }
        }
    }
    assert_eq!(out.len(), 28, "7 caches of 4 store paths");
    out
}

/// Whether an upload is brotli-compressed, known (as Nix names it) by its `.br` suffix.
fn is_br(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "br")
}

/// The raw NAR of a store path, as `nix-store --dump` wrote it.
fn fixture_nar(info: &NarInfo) -> Vec<u8> {
    std::fs::read(fixtures().join("nars").join(format!("{}.nar", info.store_path.base_name()))).unwrap()
}

async fn round_trip_all_fixtures(backend: DynBackend) {
    let store = ChunkStore::new(backend.clone(), 64 << 20);
    let renderer = Renderer::new(store.clone(), RenderConfig::default());
    for params in [ChunkerParams::V1, ChunkerParams::TINY] {
        for (info, nar_path) in fixture_uploads() {
            let options =
                IngestOptions { chunker: params, br_suffix: is_br(&nar_path), ..Default::default() };
            let upload = std::fs::read(&nar_path).unwrap();
            let ingested = ingest_nar(&store, &upload[..], &options).await.unwrap();
            let expected_hash = info.nar_hash_digest().unwrap();
            assert_eq!(ingested.record.nar_hash, expected_hash, "{}", nar_path.display());
            assert_eq!(ingested.record.nar_size, info.nar_size);
            assert_eq!(ingested.received.size, upload.len() as u64);
            assert_eq!(ingested.received.md5.map(hex::encode), Some(md5_hex(&upload)), "the upload's ETag");
            assert_eq!(hex::encode(ingested.record.nar_md5), md5_hex(&fixture_nar(&info)), "the NAR's ETag");
            assert_eq!(ingested.compression.nix_name(), info.compression.as_deref().unwrap_or("none"));

            // A fresh renderer (cold caches) reads the NAR back byte for byte.
            let cold = Renderer::new(ChunkStore::new(backend.clone(), 1 << 20), RenderConfig::default());
            let expected = fixture_nar(&info);
            for r in [&renderer, &cold] {
                let mut reader = r.open(&expected_hash).await.unwrap();
                let mut out = vec![];
                reader.read_to_end(&mut out).await.unwrap();
                assert!(out == expected, "{} renders differently", nar_path.display());
            }
        }
    }
}

#[tokio::test]
async fn fixtures_round_trip_on_fs() {
    let (_dir, backend) = common::fs_backend();
    round_trip_all_fixtures(backend).await;
}

#[tokio::test]
async fn fixtures_round_trip_on_garage() {
    round_trip_all_fixtures(common::garage_backend().await).await;
}

#[tokio::test]
async fn seeks_read_the_right_bytes() {
    let (_dir, backend) = common::fs_backend();
    let store = ChunkStore::new(backend, 64 << 20);
    let (info, path) =
        fixture_uploads().into_iter().find(|(i, _)| i.store_path.name().ends_with("hello")).unwrap();
    let options =
        IngestOptions { chunker: ChunkerParams::TINY, br_suffix: is_br(&path), ..Default::default() };
    let ingested = ingest_nar(&store, &std::fs::read(path).unwrap()[..], &options).await.unwrap();
    assert!(ingested.chunks > 100);
    let nar = fixture_nar(&info);
    let renderer = Renderer::new(store, RenderConfig::default());
    let mut reader = renderer.open(&ingested.record.nar_hash).await.unwrap();
    let size = nar.len() as u64;
    for (from, len) in [(size - 10, 100u64), (0, 13), (size / 2, 5000), (7, 1), (size, 10), (size + 5, 1)] {
        reader.seek(std::io::SeekFrom::Start(from)).await.unwrap();
        let mut out = vec![];
        (&mut reader).take(len).read_to_end(&mut out).await.unwrap();
        let lo = (from as usize).min(nar.len());
        let hi = ((from + len) as usize).min(nar.len());
        assert_eq!(out, nar[lo..hi], "read {len} at {from}");
    }
    reader.seek(std::io::SeekFrom::End(-3)).await.unwrap();
    let mut tail = vec![];
    reader.read_to_end(&mut tail).await.unwrap();
    assert_eq!(tail, nar[nar.len() - 3..]);
    assert!(reader.seek(std::io::SeekFrom::Current(-(size as i64) - 1)).await.is_err());
    // Past the end is a valid position that reads nothing; beyond u64 is an error, not a panic.
    assert_eq!(reader.seek(std::io::SeekFrom::End(1000)).await.unwrap(), size + 1000);
    assert_eq!(reader.read(&mut [0u8; 10]).await.unwrap(), 0);
    reader.seek(std::io::SeekFrom::Start(u64::MAX)).await.unwrap();
    assert!(reader.seek(std::io::SeekFrom::Current(1)).await.is_err());
}

#[tokio::test]
async fn nar_hash_or_size_mismatch_writes_no_record() {
    let (_dir, backend) = common::fs_backend();
    let store = ChunkStore::new(backend.clone(), 1 << 20);
    let (info, path) =
        fixture_uploads().into_iter().find(|(i, _)| i.store_path.name().ends_with("app")).unwrap();
    let upload = std::fs::read(&path).unwrap();
    let mut other_hash = info.nar_hash_digest().unwrap();
    other_hash[0] ^= 1;
    let wrong_hash =
        IngestOptions { expected_nar_hash: Some(other_hash), br_suffix: is_br(&path), ..Default::default() };
    let err = ingest_nar(&store, &upload[..], &wrong_hash).await.unwrap_err();
    assert!(matches!(err, nargate::ingest::IngestError::NarHashMismatch { .. }), "{err}");
    let wrong_size = IngestOptions {
        expected_nar_size: Some(info.nar_size + 1),
        br_suffix: is_br(&path),
        ..Default::default()
    };
    let err = ingest_nar(&store, &upload[..], &wrong_size).await.unwrap_err();
    assert!(matches!(err, nargate::ingest::IngestError::NarSizeMismatch { .. }), "{err}");
    let records = backend.list(&ListRequest { prefix: "nars/".into(), ..Default::default() }).await.unwrap();
    assert!(records.objects.is_empty());
    let leases = backend.list(&ListRequest { prefix: "leases/".into(), ..Default::default() }).await.unwrap();
    assert!(leases.objects.is_empty(), "the lease is released");
}
