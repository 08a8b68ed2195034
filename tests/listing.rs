//! NAR listings (`<storehash>.ls`) rendered from NAR records are byte for byte the ones real Nix
//! writes.
//!
//! Nix (Debian's `nix-bin`, Nix 2.8; `.ci/install-tools.sh` installs it, and a test panics when it
//! is missing, never skips) writes the listings: `nix copy --from file://<cache> --to
//! 'file://<out>?write-nar-listing=true&compression=none' --all` writes `<out>/<storehash>.ls` for
//! every path it copies. Copying into a binary cache checks no signatures, so hand-made caches of
//! unsigned narinfos (of NARs made with the project's NAR writer) are copied just as the fixture
//! cache is. Each NAR is ingested into a chunk store on the fs backend, and [`nar_listing`] of its
//! record must equal Nix's file.
//!
//! Nix runs as in `tests/nix_accepts.rs`: environment cleared, `HOME`, the XDG dirs,
//! `NIX_CONF_DIR`, `NIX_STATE_DIR`, `NIX_LOG_DIR` and `TMPDIR` in a temp dir, and only file://
//! stores in that temp dir: nothing is written to `/nix`, no daemon, no network.

mod common;

use common::nix::{Nix, copy_dir};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nargate::castore::{ChunkStore, ChunkerParams, NarRecord};
use nargate::ingest::{IngestOptions, ingest_nar};
use nargate::nix::nar::{MAX_NAME_LEN, NarNode, write_nar};
use nargate::nix::narinfo::NarInfo;
use nargate::nix::store_path::StorePath;
use nargate::render::listing::nar_listing;
use sha2::{Digest as _, Sha256};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The narinfos of the binary cache in `dir`, sorted by file name.
fn narinfos(dir: &Path) -> Vec<NarInfo> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "narinfo"))
        .collect();
    paths.sort();
    paths.iter().map(|path| NarInfo::parse(&std::fs::read_to_string(path).unwrap()).unwrap()).collect()
}

/// The NAR record that ingesting `nar` makes.
async fn ingest(store: &ChunkStore, nar: &[u8], chunker: ChunkerParams) -> NarRecord {
    let options = IngestOptions { chunker, ..Default::default() };
    ingest_nar(store, nar, &options).await.unwrap().record
}

/// The listing Nix wrote for `info`'s store path into the cache at `dir`.
fn nix_listing(dir: &Path, info: &NarInfo) -> Vec<u8> {
    let path = dir.join(format!("{}.ls", info.store_path.hash_part()));
    std::fs::read(&path).unwrap_or_else(|e| panic!("Nix wrote no listing {}: {e}", path.display()))
}

/// Asserts equal listings, showing both (lossily) when they differ.
#[track_caller]
fn assert_same_listing(ours: &[u8], nix: &[u8], what: &str) {
    assert!(
        ours == nix,
        "listing of {what} differs from Nix's:\n ours: {}\n  nix: {}",
        String::from_utf8_lossy(ours),
        String::from_utf8_lossy(nix)
    );
}

/// The four fixture store paths (the `…-hello` one has every node kind, empty and executable
/// files, a non-ASCII name with spaces, deep nesting and a 1 MiB file; the others are a top-level
/// file, a top-level symlink, and a directory with an absolute symlink).
#[tokio::test]
async fn fixture_listings_are_nix_s() {
    let nix = Nix::new();
    let cache = nix.path("cache");
    copy_dir(&fixtures().join("cache-none"), &cache);
    let out = nix.listings(&cache, "out");

    let (_dir, backend) = common::fs_backend();
    let store = ChunkStore::new(backend, 64 << 20);
    let infos = narinfos(&cache);
    assert_eq!(infos.len(), 4, "the fixture README describes four store paths");
    for info in &infos {
        let nar = std::fs::read(fixtures().join("nars").join(format!("{}.nar", info.store_path.base_name())))
            .unwrap();
        // The listing does not depend on the chunker (the generated trees use the tiny one).
        let record = ingest(&store, &nar, ChunkerParams::V1).await;
        assert_eq!(record.nar_size, info.nar_size);
        let expected = nix_listing(&out, info);
        assert_same_listing(&nar_listing(&record).unwrap(), &expected, &info.store_path.to_absolute());
    }
    // The comparison covered what the fixture README promises.
    let hello = infos.iter().find(|info| info.store_path.name() == "hello").expect("a `…-hello` path");
    let hello = String::from_utf8(nix_listing(&out, hello)).unwrap();
    for part in [
        r#""executable":true"#,
        r#""size":0,"narOffset":"#,
        r#""type":"symlink""#,
        r#""entries":{}"#,
        "\"üñí cödé\":",
        r#""size":1048583,"#,
    ] {
        assert!(hello.contains(part), "no {part} in {hello}");
    }
}

/// Deterministic pseudo-random numbers (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Bytes names and targets are made of: ones JSON escapes, ones it does not, and ones not UTF-8.
const NAME_BYTES: &[u8] = b"ab.Z09 -\"\\\n\r\t\x01\x08\x0c\x1b\x1f\x7f\x80\xc3\xa9\xff";

fn random_name(rng: &mut Rng) -> Vec<u8> {
    loop {
        let len = 1 + rng.below(6) as usize;
        let name: Vec<u8> = (0..len).map(|_| *rng.pick(NAME_BYTES)).collect();
        if name != b"." && name != b".." {
            return name;
        }
    }
}

/// A random node `depth` levels from the bottom: files of sizes around the padding edges (and
/// some larger ones, several chunks long with the tiny chunker), symlinks, directories.
fn random_node(rng: &mut Rng, depth: u32) -> NarNode {
    match rng.below(if depth == 0 { 2 } else { 4 }) {
        0 => {
            let size = match rng.below(4) {
                0 => 0,
                1 => rng.below(17),
                2 => 1 + rng.below(100),
                _ => 1000 + rng.below(3000),
            } as usize;
            NarNode::File { executable: rng.below(2) == 0, contents: common::pseudo_random(size, rng.0) }
        }
        1 => NarNode::Symlink { target: random_name(rng) },
        _ => {
            let mut entries = BTreeMap::new();
            for _ in 0..rng.below(6) {
                entries.insert(random_name(rng), random_node(rng, depth - 1));
            }
            NarNode::Directory(entries.into_iter().collect())
        }
    }
}

/// A directory with an entry for every byte a name may hold, alone and after a letter, files
/// of every size from 0 to 17 bytes (executable or not), symlinks whose targets hold every byte,
/// an empty directory, a name of the longest length, and nesting.
fn every_byte_tree() -> NarNode {
    let mut entries = BTreeMap::new();
    for b in 1..=255u8 {
        if b == b'/' {
            continue;
        }
        if b != b'.' {
            entries.insert(
                vec![b],
                NarNode::File { executable: b % 2 == 0, contents: vec![b; usize::from(b % 18)] },
            );
        }
        entries.insert(vec![b'n', b], NarNode::Symlink { target: vec![b'x', b, b'y'] });
    }
    let all_bytes: Vec<u8> = (1..=255u8).collect();
    entries.insert(b"all-bytes-target".to_vec(), NarNode::Symlink { target: all_bytes });
    entries.insert(b"empty dir".to_vec(), NarNode::Directory(vec![]));
    entries.insert(
        vec![b'L'; MAX_NAME_LEN as usize],
        NarNode::File { executable: false, contents: b"long".to_vec() },
    );
    let mut nested = NarNode::File { executable: true, contents: b"deep \"\\ file".to_vec() };
    for level in (0..12u8).rev() {
        nested = NarNode::Directory(vec![(vec![b'd', b'\n', b'0' + level % 10, b'\xff'], nested)]);
    }
    entries.insert(b"nested".to_vec(), nested);
    NarNode::Directory(entries.into_iter().collect())
}

/// Trees made with the project's NAR writer: names and targets that need escaping (and some
/// that are not UTF-8), every file size around the padding edges, top-level files and symlinks,
/// and random trees.
#[tokio::test]
async fn generated_listings_are_nix_s() {
    let mut trees = vec![
        every_byte_tree(),
        NarNode::File { executable: true, contents: vec![] },
        NarNode::File { executable: false, contents: vec![] },
        NarNode::File { executable: true, contents: b"#!/bin/sh\n".to_vec() },
        NarNode::Symlink { target: b"\"quoted\"\\\t\x01\xff".to_vec() },
        NarNode::Directory(vec![]),
    ];
    let mut rng = Rng(0x5eed_1157);
    trees.extend((0..40).map(|_| random_node(&mut rng, 5)));

    // A binary cache of unsigned narinfos, one per tree, NARs uncompressed.
    let nix = Nix::new();
    let cache = nix.path("cache");
    std::fs::create_dir_all(cache.join("nar")).unwrap();
    std::fs::write(cache.join("nix-cache-info"), "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n")
        .unwrap();
    let mut nars = vec![];
    for (i, tree) in trees.iter().enumerate() {
        let nar = write_nar(tree).unwrap();
        let nar_hash: [u8; 32] = Sha256::digest(&nar).into();
        let store_hash: [u8; 20] = nar_hash[..20].try_into().unwrap();
        let store_path = StorePath::from_parts(store_hash, &format!("listing-{i}")).unwrap();
        let url = format!("nar/{i}.nar");
        std::fs::write(cache.join(&url), &nar).unwrap();
        let mut info = NarInfo::new(store_path, url, &nar_hash, nar.len() as u64);
        info.compression = Some("none".into());
        std::fs::write(cache.join(format!("{}.narinfo", info.store_path.hash_part())), info.render())
            .unwrap();
        nars.push((info, nar));
    }
    let out = nix.listings(&cache, "out");

    let (_dir, backend) = common::fs_backend();
    let store = ChunkStore::new(backend, 64 << 20);
    for (info, nar) in &nars {
        let record = ingest(&store, nar, ChunkerParams::TINY).await;
        let expected = nix_listing(&out, info);
        assert_same_listing(&nar_listing(&record).unwrap(), &expected, &info.store_path.to_absolute());
    }
    // Nix writes names that are not UTF-8 verbatim: its listing is not UTF-8 either.
    let every_byte = nix_listing(&out, &nars[0].0);
    assert!(std::str::from_utf8(&every_byte).is_err());
    for escaped in
        [&br#""\"":"#[..], br#""\\":"#, br#""\n":"#, br#""\u001f":"#, br#""\u0008":"#, b"\"\x7f\":"]
    {
        assert!(
            every_byte.windows(escaped.len()).any(|w| w == escaped),
            "no {} in Nix's listing",
            String::from_utf8_lossy(escaped)
        );
    }
}
