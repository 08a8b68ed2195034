//! Property tests of the renderer: random trees → NAR → ingest (tiny chunks) → every random read
//! of the renderer equals the slice of the original NAR, whatever the seeks before it.

mod common;

use futures::TryStreamExt;
use nargate::castore::{ChunkStore, ChunkerParams};
use nargate::ingest::{IngestOptions, ingest_nar};
use nargate::nix::nar::{NarNode, write_nar};
use nargate::render::{RenderConfig, Renderer};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// File contents of the sizes that matter: empty, around 8-byte padding edges, small, and large
/// enough to span many tiny chunks.
fn contents() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![]),
        proptest::collection::vec(any::<u8>(), 1..=17),
        proptest::collection::vec(any::<u8>(), 18..2000),
        (2000usize..40_000, any::<u64>()).prop_map(|(n, seed)| pseudo_random(n, seed)),
    ]
}

use common::pseudo_random;

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z]{1,6}".prop_map(String::into_bytes),
        Just("with space é".as_bytes().to_vec()),
        proptest::collection::vec(1u8..=255, 1..20)
            .prop_filter("valid name", |n| !n.contains(&b'/') && n != b"." && n != b".."),
    ]
}

fn tree() -> impl Strategy<Value = NarNode> {
    let leaf = prop_oneof![
        (any::<bool>(), contents()).prop_map(|(executable, contents)| NarNode::File { executable, contents }),
        "[a-z./]{1,30}".prop_map(|t| NarNode::Symlink { target: t.into_bytes() }),
    ];
    leaf.prop_recursive(6, 60, 8, |inner| {
        proptest::collection::btree_map(name(), inner, 0..8)
            .prop_map(|entries| NarNode::Directory(entries.into_iter().collect()))
    })
}

/// Reads (offset, length) pairs through one seekable reader, in the given order, and through
/// range streams, checking every result against the NAR, and that every buffer of a stream but
/// its last holds at least `min_buffer` bytes.
async fn check_reads(
    nar: &[u8],
    node_reads: &[(u64, u64)],
    renderer: &Renderer,
    hash: &[u8; 32],
    min_buffer: usize,
) {
    let mut reader = renderer.open(hash).await.unwrap();
    let size = nar.len() as u64;
    for &(offset, len) in node_reads {
        let offset = offset % (size + 2);
        reader.seek(std::io::SeekFrom::Start(offset)).await.unwrap();
        let mut out = vec![];
        (&mut reader).take(len).read_to_end(&mut out).await.unwrap();
        let lo = offset.min(size) as usize;
        let hi = (offset + len).min(size) as usize;
        assert!(out == nar[lo..hi], "seek+read {len} at {offset} of {size}");

        let streamed: Vec<bytes::Bytes> =
            renderer.range(hash, offset..offset + len).await.unwrap().try_collect().await.unwrap();
        assert!(streamed.concat() == nar[lo..hi], "range {len} at {offset} of {size}");
        let short = streamed.iter().rev().skip(1).filter(|b| b.len() < min_buffer.max(1)).count();
        assert_eq!(short, 0, "buffers shorter than {min_buffer} before the last");
    }
    reader.seek(std::io::SeekFrom::Start(0)).await.unwrap();
    let mut all = vec![];
    reader.read_to_end(&mut all).await.unwrap();
    assert!(all == nar, "whole NAR");
}

/// Renderer settings that exercise buffer coalescing (every piece alone, tiny buffers, the
/// default) and both caching policies (read through from the first chunk on, or caching many).
fn settings() -> impl Strategy<Value = (usize, usize)> {
    (
        prop_oneof![Just(0usize), 1usize..40, Just(1000), Just(64 << 10)],
        prop_oneof![Just(0usize), Just(2), Just(1000)],
    )
}

async fn ingest_and_check(
    node: &NarNode,
    reads: &[(u64, u64)],
    (min_buffer_bytes, cached_range_chunks): (usize, usize),
) {
    let nar = write_nar(node).unwrap();
    let (_dir, backend) = common::fs_backend();
    let store = ChunkStore::new(backend, 1 << 20);
    let options = IngestOptions { chunker: ChunkerParams::TINY, ..Default::default() };
    let ingested = ingest_nar(&store, &nar[..], &options).await.unwrap();
    assert_eq!(ingested.record.nar_size, nar.len() as u64);
    let config =
        RenderConfig { table_cache_bytes: 1 << 20, read_ahead: 3, cached_range_chunks, min_buffer_bytes };
    let renderer = Renderer::new(store, config);
    check_reads(&nar, reads, &renderer, &ingested.record.nar_hash, min_buffer_bytes).await;
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_reads_equal_the_nar(
        node in tree(),
        reads in proptest::collection::vec((any::<u64>(), prop_oneof![1u64..16, 16u64..3000, 3000u64..100_000]), 1..12),
        settings in settings(),
    ) {
        runtime().block_on(ingest_and_check(&node, &reads, settings));
    }
}

#[test]
fn thousands_of_tiny_files_and_deep_nesting() {
    let mut files: Vec<(Vec<u8>, NarNode)> = (0..3000)
        .map(|i| {
            (
                format!("f{i:05}").into_bytes(),
                NarNode::File { executable: i % 7 == 0, contents: pseudo_random(i % 23, i as u64) },
            )
        })
        .collect();
    let mut deep = NarNode::File { executable: false, contents: b"bottom".to_vec() };
    for _ in 0..100 {
        deep = NarNode::Directory(vec![(b"d".to_vec(), deep)]);
    }
    files.push((b"zdeep".to_vec(), deep));
    let node = NarNode::Directory(files);
    let size = write_nar(&node).unwrap().len() as u64;
    let reads: Vec<(u64, u64)> =
        (0..40).map(|i| (size * i / 40 + i, 1 + i * 97)).chain([(size - 1, 1), (0, size)]).collect();
    for settings in [(0, 16), (7, 0), (64 << 10, 16)] {
        runtime().block_on(ingest_and_check(&node, &reads, settings));
    }
}

#[test]
fn top_level_file_and_symlink() {
    for node in [
        NarNode::File { executable: true, contents: pseudo_random(10_000, 9) },
        NarNode::File { executable: false, contents: vec![] },
        NarNode::Symlink { target: b"/nix/store/somewhere".to_vec() },
        NarNode::Directory(vec![]),
    ] {
        let size = write_nar(&node).unwrap().len() as u64;
        let reads = [(0, size), (size / 3, 17), (size - 1, 5), (size, 1)];
        for settings in [(0, 16), (5, 0), (64 << 10, 16)] {
            runtime().block_on(ingest_and_check(&node, &reads, settings));
        }
    }
}
