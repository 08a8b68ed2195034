//! The range stream as an HTTP body: dropping it stops its fetches, a long range reads through the
//! chunk cache while short ones fill it, and a NAR of many small files streams in large buffers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use nargate::backend::DynBackend;
use nargate::backend::counting::CountingBackend;
use nargate::backend::fault::FaultyBackend;
use nargate::castore::{ChunkStore, ChunkerParams, Digest};
use nargate::ingest::{IngestOptions, ingest_nar};
use nargate::nix::nar::{NarNode, write_nar};
use nargate::render::segment::SegmentKind;
use nargate::render::{RenderConfig, Renderer};

use common::pseudo_random;

fn file(contents: Vec<u8>) -> NarNode {
    NarNode::File { executable: false, contents }
}

async fn read(renderer: &Renderer, hash: &[u8; 32], range: std::ops::Range<u64>) -> Vec<Bytes> {
    renderer.range(hash, range).await.unwrap().try_collect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_stops_its_chunk_fetches() {
    // started → 300 ms of latency → completed → the files.
    let (_dir, fs) = common::fs_backend();
    let completed = Arc::new(CountingBackend::new(fs.clone()));
    let slow = Arc::new(FaultyBackend::new(completed.clone() as DynBackend));
    let started = Arc::new(CountingBackend::new(slow.clone() as DynBackend));
    let nar = write_nar(&file(pseudo_random(12 << 20, 1))).unwrap();
    let ingested = ingest_nar(&ChunkStore::new(fs, 0), &nar[..], &IngestOptions::default()).await.unwrap();
    assert!(ingested.chunks > 6, "{} chunks", ingested.chunks);
    let hash = ingested.record.nar_hash;
    let read_ahead = 4;
    let config = RenderConfig { read_ahead, ..RenderConfig::default() };
    let renderer = Renderer::new(ChunkStore::new(started.clone(), 64 << 20), config);
    // The first chunk is cached (a short read keeps it), so the first buffer comes at once while
    // the read-ahead waits for the backend.
    read(&renderer, &hash, 1000..2000).await;
    slow.set_latency(Duration::from_millis(300));
    started.reset();
    completed.reset();

    let mut stream = renderer.range(&hash, 0..u64::MAX).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.len() >= 64 << 10 && first == nar[..first.len()]);
    drop(stream);
    tokio::time::sleep(Duration::from_millis(900)).await;

    let begun = started.gets_with_prefix("chunks/");
    assert!(begun <= read_ahead as u64, "{begun} chunk GETs began with a read-ahead of {read_ahead}");
    assert_eq!(completed.gets_with_prefix("chunks/"), 0, "every fetch ended with the stream");
    assert_eq!(completed.counts().total(), 0);
}

#[tokio::test]
async fn a_long_range_reads_through_the_chunk_cache_and_short_ones_fill_it() {
    let (_dir, fs) = common::fs_backend();
    let counting = Arc::new(CountingBackend::new(fs));
    let backend: DynBackend = counting.clone();
    let nar = write_nar(&file(pseudo_random(60_000, 2))).unwrap();
    let options = IngestOptions { chunker: ChunkerParams::TINY, ..Default::default() };
    let store = ChunkStore::new(backend, 64 << 20);
    let ingested = ingest_nar(&store, &nar[..], &options).await.unwrap();
    let hash = ingested.record.nar_hash;
    let renderer = Renderer::new(store, RenderConfig::default());
    let table = renderer.table(&hash).await.unwrap();
    let chunks = table.chunks().len() as u64;
    assert!(chunks > 2 * RenderConfig::default().cached_range_chunks as u64, "{chunks} chunks");
    let content = table.segments().iter().find(|s| s.kind == SegmentKind::Content).unwrap().nar_offset;
    // Ten bytes inside chunk `i`.
    let inside = |i: usize| {
        let at = content + table.chunk_start(i) + 1;
        at..at + 10
    };
    let chunk_gets = |range: std::ops::Range<u64>| {
        let renderer = renderer.clone();
        let counting = counting.clone();
        let nar = &nar;
        async move {
            counting.reset();
            let out = read(&renderer, &hash, range.clone()).await.concat();
            assert!(out == slice(nar, &range));
            counting.gets_with_prefix("chunks/")
        }
    };

    assert_eq!(chunk_gets(inside(5)).await, 1);
    assert_eq!(chunk_gets(inside(5)).await, 0, "a short read keeps its chunk");
    assert_eq!(chunk_gets(0..u64::MAX).await, chunks - 1, "a whole read is served the cached chunk");
    assert_eq!(chunk_gets(inside(7)).await, 1, "the whole read kept nothing");
    assert_eq!(chunk_gets(inside(7)).await, 0);
    assert_eq!(chunk_gets(inside(5)).await, 0, "nor evicted what was cached");

    // A seekable reader keeps the first chunks after a seek, and reads the rest through.
    let mut reader = renderer.open(&hash).await.unwrap();
    let mut all = vec![];
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut all).await.unwrap();
    assert!(all == nar);
    let cached = RenderConfig::default().cached_range_chunks;
    assert_eq!(chunk_gets(inside(cached - 1)).await, 0);
    assert_eq!(chunk_gets(inside(cached + 1)).await, 1);
}

/// Bytes `range` of `nar`, clamped to its end as the renderer clamps.
fn slice<'a>(nar: &'a [u8], range: &std::ops::Range<u64>) -> &'a [u8] {
    &nar[range.start as usize..range.end.min(nar.len() as u64) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_of_a_chunk_share_one_get_whether_they_keep_it_or_not() {
    let (_dir, fs) = common::fs_backend();
    let slow = Arc::new(FaultyBackend::new(fs));
    let counting = Arc::new(CountingBackend::new(slow.clone() as DynBackend));
    let store = ChunkStore::new(counting.clone(), 1 << 20);
    let chunk = |seed| {
        let data = Bytes::from(pseudo_random(5000, seed));
        (Digest::of(&data), data)
    };
    let (a, a_data) = chunk(1);
    let (b, b_data) = chunk(2);
    let (c, c_data) = chunk(3);
    for (digest, data) in [(a, &a_data), (b, &b_data), (c, &c_data)] {
        store.put(digest, data.clone(), false).await.unwrap();
    }
    slow.set_latency(Duration::from_millis(200));
    counting.reset();

    let (x, y, z) =
        tokio::join!(store.get_uncached(a, 5000), store.get(a, 5000), store.get_uncached(a, 5000));
    assert!([x.unwrap(), y.unwrap(), z.unwrap()].iter().all(|d| *d == a_data));
    assert_eq!(counting.gets_with_prefix("chunks/"), 1, "one GET for three readers");
    assert_eq!(store.get_uncached(a, 5000).await.unwrap(), a_data);
    assert_eq!(counting.gets_with_prefix("chunks/"), 1, "a reader that keeps it kept it");

    counting.reset();
    for _ in 0..2 {
        assert_eq!(store.get_uncached(b, 5000).await.unwrap(), b_data);
    }
    assert_eq!(counting.gets_with_prefix("chunks/"), 2, "reads through the cache keep nothing");

    // A reader cancelled while it runs the shared fetch fails no other reader.
    counting.reset();
    let (cancelled, kept) =
        tokio::join!(tokio::time::timeout(Duration::from_millis(50), store.get(c, 5000)), async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            store.get(c, 5000).await
        },);
    assert!(cancelled.is_err());
    assert_eq!(kept.unwrap(), c_data);
    assert_eq!(counting.gets_with_prefix("chunks/"), 2, "the second reader fetched it again");
}

#[tokio::test]
async fn many_small_files_stream_in_large_buffers_and_large_files_without_copies() {
    let (_dir, backend) = common::fs_backend();
    let mut entries: Vec<(Vec<u8>, NarNode)> = (0..20_000u64)
        .map(|i| (format!("f{i:05}").into_bytes(), file(pseudo_random(i as usize % 40, i))))
        .collect();
    entries.push((b"zbig".to_vec(), file(pseudo_random(2 << 20, 7))));
    let nar = write_nar(&NarNode::Directory(entries)).unwrap();
    let store = ChunkStore::new(backend, 64 << 20);
    let hash = ingest_nar(&store, &nar[..], &IngestOptions::default()).await.unwrap().record.nar_hash;
    let renderer = Renderer::new(store, RenderConfig::default());

    let whole = read(&renderer, &hash, 0..u64::MAX).await;
    assert!(whole.concat() == nar);
    let min = RenderConfig::default().min_buffer_bytes;
    for (i, buffer) in whole.iter().enumerate().rev().skip(1) {
        assert!(buffer.len() >= min, "buffer {i} of {} holds {} bytes", whole.len(), buffer.len());
    }
    assert!(whole.len() as u64 <= nar.len() as u64 / min as u64 + 4, "{} buffers", whole.len());

    // A long slice of a chunk goes out as it is: read twice, it is the cached chunk's memory.
    let table = renderer.table(&hash).await.unwrap();
    let big = (0..table.segments().len() - 1).find(|&i| table.segment_len(i) == 2 << 20).unwrap();
    let big = table.segments()[big].nar_offset;
    let range = big + 1000..big + 200_000;
    let first = read(&renderer, &hash, range.clone()).await;
    let again = read(&renderer, &hash, range.clone()).await;
    assert_eq!(first.len(), 1);
    assert!(first[0] == slice(&nar, &range));
    assert_eq!(first[0].as_ptr(), again[0].as_ptr(), "a zero-copy slice of the cached chunk");
}
