//! What the store promises, counted: dedup of large files whatever their neighbours, few objects
//! for many small files, cold ranged reads in a bounded number of backend requests, integrity
//! errors for corrupt chunks, nothing reachable from a rejected NAR, and every bound on hostile input.

mod common;

use std::sync::Arc;

use futures::TryStreamExt;
use nargate::backend::counting::CountingBackend;
use nargate::backend::fault::FaultyBackend;
use nargate::backend::{Backend, DynBackend};
use nargate::castore::{ChunkError, ChunkStore, ChunkerParams};
use nargate::ingest::{IngestError, IngestOptions, ingest_nar};
use nargate::nix::nar::{NarNode, write_nar};
use nargate::render::{RenderConfig, RenderError, Renderer};

use common::pseudo_random;

fn file(contents: Vec<u8>) -> NarNode {
    NarNode::File { executable: false, contents }
}

async fn count(backend: &dyn Backend, prefix: &str) -> (usize, u64) {
    let objects = nargate::backend::list_all(backend, prefix).await.unwrap();
    (objects.len(), objects.iter().map(|o| o.size).sum())
}

#[tokio::test]
async fn a_shared_large_file_is_stored_once_whatever_its_neighbours() {
    let (_dir, backend) = common::fs_backend();
    let store = ChunkStore::new(backend.clone(), 1 << 20);
    let options = IngestOptions::default();
    let big = pseudo_random(12 << 20, 1);
    let first = NarNode::Directory(vec![
        (b"a-small".to_vec(), file(pseudo_random(3000, 2))),
        (b"big".to_vec(), file(big.clone())),
        (b"c-small".to_vec(), file(pseudo_random(100_000, 3))),
    ]);
    let second = NarNode::Directory(vec![
        (b"b-other".to_vec(), file(pseudo_random(777, 4))),
        (b"c-big".to_vec(), file(big)),
        (b"d-other".to_vec(), file(pseudo_random(300_000, 5))),
        (b"e-link".to_vec(), NarNode::Symlink { target: b"c-big".to_vec() }),
    ]);
    ingest_nar(&store, &write_nar(&first).unwrap()[..], &options).await.unwrap();
    let (_, before) = count(backend.as_ref(), "chunks/").await;
    let ingested = ingest_nar(&store, &write_nar(&second).unwrap()[..], &options).await.unwrap();
    let (_, after) = count(backend.as_ref(), "chunks/").await;
    let neighbours = 777 + 300_000;
    let new_bytes = after - before;
    assert!(
        new_bytes < neighbours + u64::from(ChunkerParams::V1.max),
        "the shared 12 MiB file added {new_bytes} bytes"
    );
    assert!(ingested.chunks_uploaded < ingested.chunks, "chunks already stored are not uploaded again");
}

#[tokio::test]
async fn ten_thousand_small_files_make_few_chunks() {
    let (_dir, backend) = common::fs_backend();
    let store = ChunkStore::new(backend.clone(), 1 << 20);
    let entries =
        (0..10_000u64).map(|i| (format!("f{i:05}").into_bytes(), file(pseudo_random(1024, i)))).collect();
    let nar = write_nar(&NarNode::Directory(entries)).unwrap();
    let ingested = ingest_nar(&store, &nar[..], &IngestOptions::default()).await.unwrap();
    let (chunks, _) = count(backend.as_ref(), "chunks/").await;
    assert!(chunks < 100, "{chunks} chunk objects for 10,000 files of 1 KiB");
    assert_eq!(chunks, ingested.chunks);
    // And it renders back.
    let renderer = Renderer::new(store, RenderConfig::default());
    let out: Vec<bytes::Bytes> =
        renderer.range(&ingested.record.nar_hash, 0..u64::MAX).await.unwrap().try_collect().await.unwrap();
    assert!(out.concat() == nar);
}

#[tokio::test]
async fn a_cold_ranged_read_costs_the_record_and_its_chunks_at_any_offset() {
    let (_dir, inner) = common::fs_backend();
    let counting = Arc::new(CountingBackend::new(inner));
    let backend: DynBackend = counting.clone();
    let store = ChunkStore::new(backend.clone(), 1 << 20);
    let entries =
        (0..40u64).map(|i| (format!("f{i:03}").into_bytes(), file(pseudo_random(300_000, i)))).collect();
    let nar = write_nar(&NarNode::Directory(entries)).unwrap();
    let ingested = ingest_nar(&store, &nar[..], &IngestOptions::default()).await.unwrap();
    assert!(ingested.chunks >= 30);
    let size = nar.len() as u64;
    for offset in [0, size / 2, size - 5000] {
        counting.reset();
        let cold = Renderer::new(ChunkStore::new(backend.clone(), 1 << 20), RenderConfig::default());
        let out: Vec<bytes::Bytes> = cold
            .range(&ingested.record.nar_hash, offset..offset + 4096)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert!(out.concat() == nar[offset as usize..offset as usize + 4096]);
        let counts = counting.counts();
        assert_eq!(counting.gets_with_prefix("nars/"), 1, "one NAR record read at offset {offset}");
        let chunk_gets = counting.gets_with_prefix("chunks/");
        assert!((1..=2).contains(&chunk_gets), "{chunk_gets} chunk reads at offset {offset}");
        assert_eq!(counts.total(), 1 + chunk_gets, "no other request at offset {offset}: {counts:?}");
    }
}

#[tokio::test]
async fn a_corrupt_chunk_is_an_integrity_error_not_data() {
    let (_dir, inner) = common::fs_backend();
    let faulty = Arc::new(FaultyBackend::new(inner));
    let backend: DynBackend = faulty.clone();
    let store = ChunkStore::new(backend.clone(), 1 << 20);
    let nar = write_nar(&file(pseudo_random(5000, 7))).unwrap();
    let options = IngestOptions { chunker: ChunkerParams::TINY, ..Default::default() };
    let ingested = ingest_nar(&store, &nar[..], &options).await.unwrap();
    faulty.corrupt_gets("chunks/");
    let cold = Renderer::new(ChunkStore::new(backend.clone(), 1 << 20), RenderConfig::default());
    let result: Result<Vec<bytes::Bytes>, RenderError> =
        cold.range(&ingested.record.nar_hash, 0..u64::MAX).await.unwrap().try_collect().await;
    assert!(matches!(result, Err(RenderError::Chunk(ChunkError::Integrity { .. }))), "{result:?}");

    faulty.clear();
    faulty.truncate_gets("chunks/");
    let cold = Renderer::new(ChunkStore::new(backend.clone(), 1 << 20), RenderConfig::default());
    let mut reader = cold.open(&ingested.record.nar_hash).await.unwrap();
    let mut out = vec![];
    let err = tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut out).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn a_rejected_nar_leaves_nothing_reachable() {
    let (_dir, backend) = common::fs_backend();
    let store = ChunkStore::new(backend.clone(), 1 << 20);
    let good = write_nar(&NarNode::Directory(vec![
        (b"a".to_vec(), file(pseudo_random(4000, 8))),
        (b"b".to_vec(), file(pseudo_random(4000, 9))),
    ]))
    .unwrap();
    let options = IngestOptions { chunker: ChunkerParams::TINY, ..Default::default() };
    // Truncated after some content, trailing garbage, and a corrupt compressed stream.
    let mut garbage = good.clone();
    garbage.extend_from_slice(&[0; 8]);
    let mut xz = vec![];
    let mut encoder = async_compression::tokio::bufread::XzEncoder::new(&good[..]);
    tokio::io::AsyncReadExt::read_to_end(&mut encoder, &mut xz).await.unwrap();
    let n = xz.len();
    xz[n / 2] ^= 0xff;
    let mut br_then_garbage = vec![];
    let mut encoder = async_compression::tokio::bufread::BrotliEncoder::new(&good[..]);
    tokio::io::AsyncReadExt::read_to_end(&mut encoder, &mut br_then_garbage).await.unwrap();
    br_then_garbage.extend_from_slice(b"garbage");
    let br = IngestOptions { br_suffix: true, ..options.clone() };
    let err = ingest_nar(&store, &br_then_garbage[..], &br).await.unwrap_err();
    assert!(matches!(err, IngestError::Nar(nargate::nix::nar::NarError::TrailingData)), "{err}");
    for bad in [&good[..good.len() - 100], &garbage[..], &xz[..]] {
        let err = ingest_nar(&store, bad, &options).await.unwrap_err();
        assert!(matches!(err, IngestError::Nar(_)), "{err}");
    }
    let (records, _) = count(backend.as_ref(), "nars/").await;
    assert_eq!(records, 0, "no NAR record of a rejected NAR");
    let (leases, _) = count(backend.as_ref(), "leases/").await;
    assert_eq!(leases, 0);

    let lzip = b"LZIP\x01rest".to_vec();
    assert!(matches!(ingest_nar(&store, &lzip[..], &options).await, Err(IngestError::Compression(_))));
}

/// DESIGN.md's GC protocol, ingest side: with `locks/gc` present an ingest uploads every chunk (no
/// skipping), waits for the lock to go, and commits only if everything it references survived.
#[tokio::test]
async fn ingest_under_a_gc_lock_uploads_all_waits_and_rechecks() {
    use bytes::Bytes;
    use std::time::Duration;
    let (_dir, backend) = common::fs_backend();
    let store = ChunkStore::new(backend.clone(), 1 << 20);
    let nar = write_nar(&file(pseudo_random(20_000, 11))).unwrap();
    let options = IngestOptions {
        chunker: ChunkerParams::TINY,
        gc_wait: Duration::from_secs(20),
        ..Default::default()
    };
    let first = ingest_nar(&store, &nar[..], &options).await.unwrap();
    let unique = count(backend.as_ref(), "chunks/").await.0;
    backend.delete(&first.record.key()).await.unwrap();

    // 1. The lock goes away after a while: the ingest re-uploads everything, then commits.
    backend.put("locks/gc", Bytes::from_static(b"gc")).await.unwrap();
    let releaser = {
        let backend = backend.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            backend.delete("locks/gc").await.unwrap();
        })
    };
    let second = ingest_nar(&store, &nar[..], &options).await.unwrap();
    releaser.await.unwrap();
    assert_eq!(second.chunks_uploaded, unique, "under a GC lock no chunk is skipped");
    assert!(backend.head(&second.record.key()).await.is_ok());
    backend.delete(&second.record.key()).await.unwrap();

    // 2. The "GC" sweeps a chunk before releasing the lock: the ingest commits nothing.
    backend.put("locks/gc", Bytes::from_static(b"gc")).await.unwrap();
    backend.delete(&nargate::castore::chunk::chunk_key(&first.record.chunks[0].digest)).await.unwrap();
    let sweeper = {
        let backend = backend.clone();
        let victim = nargate::castore::chunk::chunk_key(&first.record.chunks[0].digest);
        tokio::spawn(async move {
            // Wait until the ingest has re-uploaded the victim (deleted above), then sweep it.
            while backend.head(&victim).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            backend.delete(&victim).await.unwrap();
            backend.delete("locks/gc").await.unwrap();
        })
    };
    let err = ingest_nar(&store, &nar[..], &options).await.unwrap_err();
    sweeper.await.unwrap();
    assert!(matches!(err, IngestError::GcConflict), "{err}");
    assert!(backend.head(&first.record.key()).await.is_err(), "no NAR record committed");

    // 3. A GC that outlasts the wait makes the upload fail (the client retries later).
    backend.put("locks/gc", Bytes::from_static(b"gc")).await.unwrap();
    let short = IngestOptions { gc_wait: Duration::from_millis(600), ..options.clone() };
    let err = ingest_nar(&store, &nar[..], &short).await.unwrap_err();
    assert!(matches!(err, IngestError::GcConflict), "{err}");
    assert_eq!(count(backend.as_ref(), "leases/").await.0, 0, "leases are released");
}

#[tokio::test]
async fn concurrent_cold_opens_of_one_nar_read_its_record_once() {
    let (_dir, inner) = common::fs_backend();
    let counting = Arc::new(CountingBackend::new(inner));
    let backend: DynBackend = counting.clone();
    let store = ChunkStore::new(backend.clone(), 1 << 20);
    let nar = write_nar(&file(pseudo_random(50_000, 12))).unwrap();
    let options = IngestOptions { chunker: ChunkerParams::TINY, ..Default::default() };
    let hash = ingest_nar(&store, &nar[..], &options).await.unwrap().record.nar_hash;
    counting.reset();
    let cold = Renderer::new(ChunkStore::new(backend.clone(), 1 << 20), RenderConfig::default());
    let opens = (0..16).map(|_| {
        let cold = cold.clone();
        tokio::spawn(async move {
            let out: Vec<bytes::Bytes> =
                cold.range(&hash, 1000..2000).await.unwrap().try_collect().await.unwrap();
            out.concat()
        })
    });
    for read in futures::future::join_all(opens).await {
        assert!(read.unwrap() == nar[1000..2000]);
    }
    assert_eq!(counting.gets_with_prefix("nars/"), 1, "16 concurrent misses build one table");
    let table = cold.table(&hash).await.unwrap();
    let covering = table.chunks_covering(table.stream_offset_at(1000), table.stream_offset_at(2000)).len();
    assert_eq!(
        counting.gets_with_prefix("chunks/"),
        covering as u64,
        "one GET per chunk, shared by all readers"
    );
}

/// A NAR of `dirs` directories of `files` files each (plus a symlink per directory).
fn wide_nar(dirs: usize, files: usize) -> Vec<u8> {
    let tree = (0..dirs)
        .map(|d| {
            let mut entries: Vec<(Vec<u8>, NarNode)> = (0..files)
                .map(|f| {
                    (format!("file-{f:05}").into_bytes(), file(pseudo_random(10, (d * files + f) as u64)))
                })
                .collect();
            entries.push((b"link".to_vec(), NarNode::Symlink { target: b"file-00000".to_vec() }));
            (format!("dir-{d:03}").into_bytes(), NarNode::Directory(entries))
        })
        .collect();
    write_nar(&NarNode::Directory(tree)).unwrap()
}

/// Each bound on hostile input is its own error, whose message names the setting, and a NAR
/// that breaks one leaves nothing reachable; a NAR right at a bound goes in.
#[tokio::test]
async fn every_bound_on_hostile_input_is_enforced_and_named() {
    let (_dir, backend) = common::fs_backend();
    let store = ChunkStore::new(backend.clone(), 0);
    let defaults = IngestOptions { chunker: ChunkerParams::TINY, ..Default::default() };
    // 1 root + 4 directories × (50 files + 1 symlink + the directory itself) = 209 entries.
    let nar = wide_nar(4, 50);

    let at_limit = IngestOptions { max_entries: 209, ..defaults.clone() };
    let ingested = ingest_nar(&store, &nar[..], &at_limit).await.unwrap();
    backend.delete(&ingested.record.key()).await.unwrap();
    let over = IngestOptions { max_entries: 208, ..defaults.clone() };
    let err = ingest_nar(&store, &nar[..], &over).await.unwrap_err();
    assert!(matches!(err, IngestError::TooManyEntries { max: 208 }), "{err}");
    assert!(err.to_string().contains("ingest.max_entries") && err.to_string().contains("208"), "{err}");

    // The record takes what its directories and chunk list take encoded (while a directory is
    // open, its entries count at an upper bound of their size): a bound well above it lets the
    // NAR in, one below it does not.
    let record_len = {
        let record = &ingested.record;
        let dirs: u64 = record.directories.iter().map(|d| d.encode().len() as u64).sum();
        dirs + record.chunks.len() as u64 * 40
    };
    let fits = IngestOptions { max_record_bytes: record_len * 5 / 4, ..defaults.clone() };
    ingest_nar(&store, &nar[..], &fits).await.unwrap();
    backend.delete(&ingested.record.key()).await.unwrap();
    for max in [record_len / 2, 100] {
        let small = IngestOptions { max_record_bytes: max, ..defaults.clone() };
        let err = ingest_nar(&store, &nar[..], &small).await.unwrap_err();
        assert!(matches!(err, IngestError::RecordTooLarge { max: m } if m == max), "{err}");
        assert!(err.to_string().contains("ingest.max_record_bytes"), "{err}");
    }
    // One directory far wider than the bound is refused while it is read, not after.
    let wide = wide_nar(1, 20_000);
    let small = IngestOptions { max_record_bytes: 64 << 10, ..defaults.clone() };
    let err = ingest_nar(&store, &wide[..], &small).await.unwrap_err();
    assert!(matches!(err, IngestError::RecordTooLarge { .. }), "{err}");

    // xz's default preset needs about 9 MiB to decompress.
    let mut xz = vec![];
    let mut encoder = async_compression::tokio::bufread::XzEncoder::new(&nar[..]);
    tokio::io::AsyncReadExt::read_to_end(&mut encoder, &mut xz).await.unwrap();
    let tight = IngestOptions { xz_memory_limit: 1 << 20, ..defaults.clone() };
    let err = ingest_nar(&store, &xz[..], &tight).await.unwrap_err();
    assert!(matches!(err, IngestError::XzMemoryLimit { limit } if limit == 1 << 20), "{err}");
    assert!(err.to_string().contains("ingest.xz_memory_limit_bytes"), "{err}");
    let ingested = ingest_nar(&store, &xz[..], &defaults).await.unwrap();
    assert_eq!(ingested.record.nar_size, nar.len() as u64);
    backend.delete(&ingested.record.key()).await.unwrap();

    let (records, _) = count(backend.as_ref(), "nars/").await;
    assert_eq!(records, 0, "no NAR record of a refused NAR");
    assert_eq!(count(backend.as_ref(), "leases/").await.0, 0, "leases are released");
}

/// An upload that fails to read is a read error (the gateway's "incomplete body"), whether the
/// NAR before the failure was complete or not, compressed or not.
#[tokio::test]
async fn a_failing_body_is_a_read_error() {
    use tokio::io::AsyncReadExt;
    let (_dir, backend) = common::fs_backend();
    let store = ChunkStore::new(backend.clone(), 0);
    let nar = write_nar(&file(pseudo_random(600_000, 21))).unwrap();
    let mut zst = vec![];
    async_compression::tokio::bufread::ZstdEncoder::new(&nar[..]).read_to_end(&mut zst).await.unwrap();
    let failing_after = |bytes: &[u8]| {
        tokio_util::io::StreamReader::new(futures::stream::iter([
            Ok(bytes::Bytes::copy_from_slice(bytes)),
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle")),
        ]))
    };
    for body in [&nar[..], &nar[..300_000], &zst[..], &zst[..zst.len() / 2]] {
        let err = ingest_nar(&store, failing_after(body), &IngestOptions::default()).await.unwrap_err();
        assert!(matches!(&err, IngestError::Read(e) if e.kind() == std::io::ErrorKind::TimedOut), "{err}");
    }
    assert_eq!(count(backend.as_ref(), "nars/").await.0, 0);
}

/// `compress_chunks = false` (for a backend that compresses itself) stores every chunk raw,
/// compressible or not, and the NAR renders back the same; the default compresses what shrinks.
#[tokio::test]
async fn chunks_are_stored_raw_when_compression_is_off() {
    let nar = write_nar(&NarNode::Directory(vec![
        (b"noise".to_vec(), file(pseudo_random(2 << 20, 7))),
        (b"text".to_vec(), file(b"compressible text\n".repeat(200_000))),
    ]))
    .unwrap();
    for compress_chunks in [false, true] {
        let (_dir, backend) = common::fs_backend();
        let store = ChunkStore::new(backend.clone(), 1 << 20);
        let options = IngestOptions { compress_chunks, ..IngestOptions::default() };
        let ingested = ingest_nar(&store, &nar[..], &options).await.unwrap();
        let mut codecs = std::collections::BTreeSet::new();
        for chunk in nargate::backend::list_all(backend.as_ref(), "chunks/").await.unwrap() {
            let stored = nargate::backend::get_bytes(backend.as_ref(), &chunk.key).await.unwrap();
            codecs.insert(stored[0]);
        }
        let expected = if compress_chunks { vec![0, 1] } else { vec![0] };
        assert_eq!(codecs.into_iter().collect::<Vec<u8>>(), expected, "compress_chunks = {compress_chunks}");
        let renderer = Renderer::new(ChunkStore::new(backend.clone(), 1 << 20), RenderConfig::default());
        let out: Vec<bytes::Bytes> = renderer
            .range(&ingested.record.nar_hash, 0..nar.len() as u64)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert!(out.concat() == nar, "compress_chunks = {compress_chunks}: the NAR renders back");
    }
}
