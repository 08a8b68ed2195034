//! The `nix` module against a real binary cache made by Nix 2.8 (`tests/fixtures`, see its
//! README). Names, hashes and sizes are read from the fixture files, never hard-coded.

use std::path::{Path, PathBuf};

use async_compression::tokio::bufread::{
    BrotliDecoder, BzDecoder, GzipDecoder, Lz4Decoder, XzDecoder, ZstdDecoder,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use nargate::nix::hash::{format_sha256, parse_sha256};
use nargate::nix::nar::{NarEvent, NarNode, NarReader, read_nar_tree, write_nar};
use nargate::nix::narinfo::NarInfo;
use nargate::nix::nixbase32;
use nargate::nix::signing::{PublicKey, SecretKey, sign_narinfo, verify_narinfo};
use nargate::nix::store_path::{STORE_DIR, StorePath};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, BufReader};

/// The seven caches, one per compression Nix 2.8 writes (but lzip).
const CACHES: [&str; 7] =
    ["cache-none", "cache-xz", "cache-zstd", "cache-bzip2", "cache-br", "cache-lz4", "cache-gzip"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// One line of `nars/INDEX`: a store path, its NAR's hash and size, and the NAR file's bytes.
struct IndexedNar {
    store_path: StorePath,
    nar_hash: String,
    nar_size: u64,
    bytes: Vec<u8>,
}

fn index() -> Vec<IndexedNar> {
    let dir = fixtures().join("nars");
    let index = std::fs::read_to_string(dir.join("INDEX")).unwrap();
    let nars: Vec<IndexedNar> = index
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let [path, nar_hash, nar_size] = fields[..] else { panic!("bad INDEX line {line:?}") };
            let store_path = StorePath::parse(path).unwrap();
            let bytes = std::fs::read(dir.join(format!("{}.nar", store_path.base_name()))).unwrap();
            IndexedNar {
                store_path,
                nar_hash: nar_hash.to_string(),
                nar_size: nar_size.parse().unwrap(),
                bytes,
            }
        })
        .collect();
    assert_eq!(nars.len(), 4, "the README describes four store paths");
    nars
}

/// Every narinfo of one cache: its file name, its text.
fn narinfos(cache: &str) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = std::fs::read_dir(fixtures().join(cache))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "narinfo"))
        .map(|path| {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    found.sort();
    assert_eq!(found.len(), 4, "{cache} has four narinfos");
    found
}

fn public_key() -> PublicKey {
    PublicKey::parse(&std::fs::read_to_string(fixtures().join("public.key")).unwrap()).unwrap()
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
}

#[test]
fn index_hashes_match_the_nar_files() {
    for nar in index() {
        assert_eq!(nar.bytes.len() as u64, nar.nar_size, "{}", nar.store_path);
        let digest: [u8; 32] = Sha256::digest(&nar.bytes).into();
        assert_eq!(format_sha256(&digest), nar.nar_hash, "{}", nar.store_path);
        assert_eq!(parse_sha256(&nar.nar_hash).unwrap(), digest);
        let b32 = nar.nar_hash.strip_prefix("sha256:").unwrap();
        assert_eq!(nixbase32::decode(b32).unwrap(), digest);
    }
}

#[test]
fn every_nar_parses_and_rewrites_to_the_same_bytes() {
    for nar in index() {
        let tree = block_on(read_nar_tree(&nar.bytes[..])).unwrap();
        assert_eq!(write_nar(&tree).unwrap(), nar.bytes, "{}", nar.store_path);
    }
}

/// Streams a NAR with [`NarReader`], reading contents in odd-sized pieces, and returns its events
/// and the total of its contents' bytes, which are also hashed to check they are the right ones.
async fn stream<R: AsyncRead + Unpin>(reader: R) -> (Vec<NarEvent>, u64, [u8; 32]) {
    let mut reader = NarReader::new(reader);
    let mut events = Vec::new();
    let mut total = 0;
    let mut hasher = Sha256::new();
    let mut buf = [0; 1000];
    while let Some(event) = reader.next().await.unwrap() {
        if let NarEvent::File { size, .. } = event {
            let mut read = 0;
            loop {
                match reader.read_contents(&mut buf).await.unwrap() {
                    0 => break,
                    n => {
                        hasher.update(&buf[..n]);
                        read += n as u64;
                    }
                }
            }
            assert_eq!(read, size);
            total += size;
        }
        events.push(event);
    }
    (events, total, hasher.finalize().into())
}

/// The bytes of every file in a tree, concatenated in NAR order.
fn content_stream(node: &NarNode, out: &mut Vec<u8>) {
    match node {
        NarNode::File { contents, .. } => out.extend_from_slice(contents),
        NarNode::Symlink { .. } => {}
        NarNode::Directory(entries) => entries.iter().for_each(|(_, node)| content_stream(node, out)),
    }
}

#[test]
fn streaming_reader_sees_every_content_byte() {
    for nar in index() {
        let tree = block_on(read_nar_tree(&nar.bytes[..])).unwrap();
        let mut contents = Vec::new();
        content_stream(&tree, &mut contents);
        let (events, total, digest) = block_on(stream(&nar.bytes[..]));
        assert_eq!(total, contents.len() as u64, "{}", nar.store_path);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&contents)));
        assert!(!events.is_empty());
    }
}

#[test]
fn hello_has_every_node_kind() {
    let nar = index().into_iter().find(|n| n.store_path.name() == "hello").unwrap();
    let tree = block_on(read_nar_tree(&nar.bytes[..])).unwrap();

    #[derive(Default, Debug)]
    struct Seen {
        executable: bool,
        plain: bool,
        empty_file: bool,
        sizes_8_and_9: (bool, bool),
        symlink: bool,
        empty_dir: bool,
        non_ascii_name_with_space: bool,
        max_depth: usize,
        large_file: bool,
    }
    fn walk(node: &NarNode, depth: usize, seen: &mut Seen) {
        seen.max_depth = seen.max_depth.max(depth);
        match node {
            NarNode::File { executable, contents } => {
                seen.executable |= *executable;
                seen.plain |= !*executable;
                seen.empty_file |= contents.is_empty();
                seen.sizes_8_and_9.0 |= contents.len() == 8;
                seen.sizes_8_and_9.1 |= contents.len() == 9;
                seen.large_file |= contents.len() > 1 << 20;
            }
            NarNode::Symlink { .. } => seen.symlink = true,
            NarNode::Directory(entries) => {
                seen.empty_dir |= entries.is_empty();
                for (name, node) in entries {
                    seen.non_ascii_name_with_space |= !name.is_ascii() && name.contains(&b' ');
                    walk(node, depth + 1, seen);
                }
            }
        }
    }
    let mut seen = Seen::default();
    walk(&tree, 0, &mut seen);
    let Seen { executable, plain, empty_file, sizes_8_and_9, symlink, empty_dir, .. } = seen;
    assert!(executable && plain && empty_file && symlink && empty_dir, "{seen:?}");
    assert_eq!(sizes_8_and_9, (true, true));
    assert!(seen.non_ascii_name_with_space && seen.large_file, "{seen:?}");
    assert!(seen.max_depth >= 10, "{seen:?}");
}

#[test]
fn narinfos_render_byte_identically() {
    for cache in CACHES {
        for (file, text) in narinfos(cache) {
            let info = NarInfo::parse(&text).unwrap_or_else(|e| panic!("{cache}/{file}: {e}"));
            assert_eq!(info.render(), text, "{cache}/{file}");
            assert_eq!(format!("{}.narinfo", info.store_path.hash_part()), file);
            assert!(info.extra.is_empty(), "{cache}/{file}: Nix 2.8 writes no unknown fields");
        }
    }
}

#[test]
fn narinfos_agree_with_the_index_and_the_files() {
    let index = index();
    for cache in CACHES {
        for (file, text) in narinfos(cache) {
            let info = NarInfo::parse(&text).unwrap();
            let nar = index.iter().find(|n| n.store_path == info.store_path).unwrap();
            assert_eq!(info.nar_hash, nar.nar_hash, "{cache}/{file}");
            assert_eq!(info.nar_size, nar.nar_size, "{cache}/{file}");
            let compressed = std::fs::read(fixtures().join(cache).join(&info.url)).unwrap();
            assert_eq!(info.file_size, Some(compressed.len() as u64), "{cache}/{file}");
            let file_hash: [u8; 32] = Sha256::digest(&compressed).into();
            assert_eq!(info.file_hash, Some(format_sha256(&file_hash)), "{cache}/{file}");
            for reference in info.reference_paths().unwrap() {
                assert!(index.iter().any(|n| n.store_path == reference), "{reference}");
            }
        }
    }
}

/// Decompresses `bytes` as `compression` says, as a stream.
fn decoder<'a>(compression: &str, bytes: &'a [u8]) -> Box<dyn AsyncRead + Unpin + 'a> {
    let input = BufReader::new(bytes);
    match compression {
        "none" => Box::new(input),
        "xz" => Box::new(XzDecoder::new(input)),
        "zstd" => Box::new(ZstdDecoder::new(input)),
        "bzip2" => Box::new(BzDecoder::new(input)),
        "br" => Box::new(BrotliDecoder::new(input)),
        "lz4" => Box::new(Lz4Decoder::new(input)),
        "gzip" => Box::new(GzipDecoder::new(input)),
        other => panic!("unknown compression {other}"),
    }
}

#[test]
fn compressed_nars_stream_through_the_reader() {
    let index = index();
    for cache in CACHES {
        for (file, text) in narinfos(cache) {
            let info = NarInfo::parse(&text).unwrap();
            let compressed = std::fs::read(fixtures().join(cache).join(&info.url)).unwrap();
            let nar = index.iter().find(|n| n.store_path == info.store_path).unwrap();
            let tree = block_on(read_nar_tree(decoder(info.compression_or_default(), &compressed)))
                .unwrap_or_else(|e| panic!("{cache}/{file}: {e}"));
            assert_eq!(write_nar(&tree).unwrap(), nar.bytes, "{cache}/{file}");
        }
    }
}

#[test]
fn every_signature_verifies_with_the_fixture_key() {
    let key = public_key();
    let mut with_references = 0;
    for cache in CACHES {
        for (file, text) in narinfos(cache) {
            let info = NarInfo::parse(&text).unwrap();
            assert_eq!(info.sigs.len(), 1, "{cache}/{file}");
            assert!(verify_narinfo(&info, std::slice::from_ref(&key)), "{cache}/{file}");
            assert!(key.verify(&info.fingerprint().unwrap(), &info.sigs[0]));
            if info.references.len() >= 3 {
                with_references += 1;
                assert!(info.deriver.is_some(), "{cache}/{file}");
            }
        }
    }
    assert_eq!(with_references, CACHES.len(), "each cache has the `-app` narinfo");
}

#[test]
fn fingerprint_has_nix_form() {
    let info = narinfos("cache-none")
        .into_iter()
        .map(|(_, text)| NarInfo::parse(&text).unwrap())
        .find(|info| info.references.len() >= 3)
        .unwrap();
    let fingerprint = info.fingerprint().unwrap();
    let parts: Vec<&str> = fingerprint.split(';').collect();
    assert_eq!(parts[..4], ["1", &info.store_path.to_string(), &info.nar_hash, &info.nar_size.to_string()]);
    let references: Vec<&str> = parts[4].split(',').collect();
    assert_eq!(references.len(), info.references.len());
    assert!(references.is_sorted());
    assert!(references.iter().all(|r| r.starts_with(&format!("{STORE_DIR}/"))));
}

#[test]
fn tampered_narinfos_fail_verification() {
    let key = public_key();
    for (file, text) in narinfos("cache-none") {
        let info = NarInfo::parse(&text).unwrap();
        let mut tampered = vec![];
        let mut t = info.clone();
        t.nar_size += 1;
        tampered.push(t);
        let mut t = info.clone();
        let mut digest = t.nar_hash_digest().unwrap();
        digest[0] ^= 1;
        t.nar_hash = format_sha256(&digest);
        tampered.push(t);
        let mut t = info.clone();
        t.store_path = StorePath::from_parts(*info.store_path.hash(), "other").unwrap();
        tampered.push(t);
        let mut t = info.clone();
        if t.references.pop().is_some() {
            tampered.push(t);
        } else {
            t.references.push(info.store_path.base_name());
            tampered.push(t);
        }
        let mut t = info.clone();
        let (name, data) = t.sigs[0].split_once(':').unwrap();
        let mut bytes = STANDARD.decode(data).unwrap();
        bytes[10] ^= 1;
        t.sigs[0] = format!("{name}:{}", STANDARD.encode(bytes));
        tampered.push(t);
        for t in tampered {
            assert!(!verify_narinfo(&t, std::slice::from_ref(&key)), "{file}: {t:?}");
        }
        // Re-rendered text that was edited does not verify either.
        let edited = text.replace(&format!("NarSize: {}", info.nar_size), "NarSize: 1");
        assert!(!verify_narinfo(&NarInfo::parse(&edited).unwrap(), std::slice::from_ref(&key)));
    }
}

#[test]
fn our_signatures_verify_alongside_nix_ones() {
    let ours = SecretKey::generate("nargate-test-1").unwrap();
    for (file, text) in narinfos("cache-none") {
        let mut info = NarInfo::parse(&text).unwrap();
        sign_narinfo(&mut info, &ours).unwrap();
        let reparsed = NarInfo::parse(&info.render()).unwrap();
        assert_eq!(reparsed.sigs.len(), 2, "{file}");
        assert!(verify_narinfo(&reparsed, &[ours.to_public()]), "{file}");
        assert!(verify_narinfo(&reparsed, &[public_key()]), "{file}");
    }
}

/// Nix's `makeStorePath("source", hash, name)`: the path of a `fixed:r:sha256` content address.
fn fixed_recursive_sha256_path(digest: &[u8; 32], name: &str) -> StorePath {
    let fingerprint = format!("source:sha256:{}:{STORE_DIR}:{name}", hex::encode(digest));
    let hash = nixbase32::compress_hash(&Sha256::digest(fingerprint.as_bytes()), 20);
    StorePath::from_parts(hash.try_into().unwrap(), name).unwrap()
}

#[test]
fn content_addressed_paths_recompute() {
    let mut checked = 0;
    for (file, text) in narinfos("cache-none") {
        let info = NarInfo::parse(&text).unwrap();
        let Some(ca) = &info.ca else { continue };
        let hash = ca.strip_prefix("fixed:r:").expect("the fixtures' CA paths are fixed:r:sha256");
        let digest = parse_sha256(hash).unwrap();
        assert_eq!(fixed_recursive_sha256_path(&digest, info.store_path.name()), info.store_path, "{file}");
        checked += 1;
    }
    assert!(checked >= 2, "single-file and single-symlink are content-addressed");
}

#[test]
fn fixture_public_key_round_trips() {
    let text = std::fs::read_to_string(fixtures().join("public.key")).unwrap();
    assert_eq!(public_key().to_string(), text.trim());
}
