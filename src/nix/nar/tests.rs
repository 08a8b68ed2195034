//! Tests of the NAR reader and writer: golden bytes, every rule broken on purpose, truncation,
//! tiny reads, and write → read → write round trips of random trees.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};

use super::*;

/// Encodes each part as a NAR string (length, bytes, zero padding): every NAR is a sequence of
/// strings, so this builds valid and invalid NARs alike, independently of [`NarWriter`].
fn strings(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(&(part.len() as u64).to_le_bytes());
        out.extend_from_slice(part);
        out.resize(out.len().next_multiple_of(8), 0);
    }
    out
}

/// A NAR of a root directory with the given entries, each `(name, node strings)`.
fn directory(entries: &[(&[u8], &[&[u8]])]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = vec![b"nix-archive-1", b"(", b"type", b"directory"];
    for (name, node) in entries {
        parts.extend_from_slice(&[b"entry", b"(", b"name", name, b"node"]);
        parts.extend_from_slice(node);
        parts.push(b")");
    }
    parts.push(b")");
    strings(&parts)
}

const FILE_NODE: &[&[u8]] = &[b"(", b"type", b"regular", b"contents", b"abc", b")"];

/// A tree with every kind of node, padding edges, and nesting.
fn sample_tree() -> NarNode {
    let file = |executable, contents: &[u8]| NarNode::File { executable, contents: contents.into() };
    NarNode::Directory(vec![
        (b"bin".to_vec(), NarNode::Directory(vec![(b"hello".to_vec(), file(true, b"#!/bin/sh\n"))])),
        (b"eight".to_vec(), file(false, b"12345678")),
        (b"empty".to_vec(), file(false, b"")),
        (b"empty-dir".to_vec(), NarNode::Directory(vec![])),
        (b"link".to_vec(), NarNode::Symlink { target: b"bin/hello".to_vec() }),
        (b"nine".to_vec(), file(false, b"123456789")),
        ("sp\u{e4}ce name".as_bytes().to_vec(), file(false, b"x")),
    ])
}

/// Reads `bytes` as a NAR tree.
fn read(bytes: &[u8]) -> Result<NarNode, NarError> {
    block_on(read_nar_tree(bytes))
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
}

/// An [`AsyncRead`] that yields one byte per read, and is not ready every other poll.
struct Trickle<R> {
    inner: R,
    pending: bool,
}

impl<R> Trickle<R> {
    fn new(inner: R) -> Self {
        Self { inner, pending: false }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Trickle<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.pending = !self.pending;
        if self.pending {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut one = [0u8; 1];
        let mut small = ReadBuf::new(&mut one);
        match Pin::new(&mut self.inner).poll_read(cx, &mut small) {
            Poll::Ready(Ok(())) => {
                buf.put_slice(small.filled());
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// Asserts that reading `bytes` fails with an error matching `pattern`.
macro_rules! assert_rejects {
    ($bytes:expr, $pattern:pat) => {{
        let result = read(&$bytes);
        assert!(matches!(result, Err($pattern)), "expected {}, got {result:?}", stringify!($pattern));
    }};
}

#[test]
fn padding() {
    let expected = [(0, 0), (1, 7), (7, 1), (8, 0), (9, 7), (13, 3), (u64::MAX, 1)];
    for (len, pad) in expected {
        assert_eq!(padding_len(len), pad, "{len}");
    }
    assert_eq!(string_len(0), 8);
    assert_eq!(string_len(13), 24);
}

#[test]
fn names() {
    for ok in [&b"a"[..], b"...", b".a", b"a b", b"\xff", &[b'x'; 255]] {
        assert!(validate_name(ok).is_ok());
    }
    for bad in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0"] {
        assert!(matches!(validate_name(bad), Err(NarError::InvalidName(_))));
    }
    assert!(matches!(
        validate_name(&[b'x'; 256]),
        Err(NarError::TooLong { what: "name", len: 256, max: 255 })
    ));
}

#[test]
fn order() {
    assert!(check_order(None, b"a").is_ok());
    assert!(check_order(Some(b"a"), b"b").is_ok());
    assert!(check_order(Some(b"a"), b"a0").is_ok());
    assert!(check_order(Some(b"B"), b"a").is_ok());
    assert!(matches!(check_order(Some(b"b"), b"a"), Err(NarError::UnsortedEntries { .. })));
    assert!(matches!(check_order(Some(b"a"), b"a"), Err(NarError::DuplicateEntry(_))));
}

#[test]
fn io_error_round_trip() {
    let io: std::io::Error = NarError::NonZeroPadding.into();
    assert!(matches!(NarError::from(io), NarError::NonZeroPadding));
    let io: std::io::Error = NarError::UnexpectedEof.into();
    assert_eq!(io.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(matches!(NarError::from(io), NarError::UnexpectedEof));
    let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
    assert!(matches!(NarError::from(eof), NarError::UnexpectedEof));
    let other = std::io::Error::other("disk on fire");
    assert!(matches!(NarError::from(other), NarError::Io(_)));
}

#[test]
fn golden_single_file() {
    let nar = write_nar(&NarNode::File { executable: false, contents: b"abc".to_vec() }).unwrap();
    let expected = strings(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents", b"abc", b")"]);
    assert_eq!(nar, expected);
    assert_eq!(&nar[..24], b"\x0d\0\0\0\0\0\0\0nix-archive-1\0\0\0");

    let exe = write_nar(&NarNode::File { executable: true, contents: vec![] }).unwrap();
    let expected =
        strings(&[b"nix-archive-1", b"(", b"type", b"regular", b"executable", b"", b"contents", b"", b")"]);
    assert_eq!(exe, expected);
}

#[test]
fn golden_directory() {
    let tree = NarNode::Directory(vec![
        (b"a".to_vec(), NarNode::File { executable: false, contents: b"abc".to_vec() }),
        (b"b".to_vec(), NarNode::Symlink { target: b"a".to_vec() }),
    ]);
    let symlink: &[&[u8]] = &[b"(", b"type", b"symlink", b"target", b"a", b")"];
    assert_eq!(write_nar(&tree).unwrap(), directory(&[(b"a", FILE_NODE), (b"b", symlink)]));
}

#[test]
fn events_in_order() {
    let nar = write_nar(&sample_tree()).unwrap();
    let events = block_on(async {
        let mut reader = NarReader::new(&nar[..]);
        let mut events = Vec::new();
        while let Some(event) = reader.next().await.unwrap() {
            events.push(event); // contents skipped by next()
        }
        events
    });
    let name = |s: &str| Some(bytes::Bytes::copy_from_slice(s.as_bytes()));
    let file = |n: &str, executable, size| NarEvent::File { name: name(n), executable, size };
    assert_eq!(
        events,
        vec![
            NarEvent::Directory { name: None },
            NarEvent::Directory { name: name("bin") },
            file("hello", true, 10),
            NarEvent::EndDirectory,
            file("eight", false, 8),
            file("empty", false, 0),
            NarEvent::Directory { name: name("empty-dir") },
            NarEvent::EndDirectory,
            NarEvent::Symlink { name: name("link"), target: "bin/hello".into() },
            file("nine", false, 9),
            file("sp\u{e4}ce name", false, 1),
            NarEvent::EndDirectory,
        ]
    );
}

#[test]
fn partial_contents_are_skipped() {
    let nar = write_nar(&sample_tree()).unwrap();
    block_on(async {
        let mut reader = NarReader::new(&nar[..]);
        let mut count = 0;
        while let Some(event) = reader.next().await.unwrap() {
            if let NarEvent::File { size, .. } = event {
                let mut buf = [0; 3];
                let n = reader.read_contents(&mut buf).await.unwrap();
                assert_eq!(n as u64, size.min(3));
                count += 1;
            } else {
                // Not in a file: nothing to read.
                assert_eq!(reader.read_contents(&mut [0; 4]).await.unwrap(), 0);
            }
        }
        assert_eq!(count, 5);
        assert!(reader.next().await.unwrap().is_none(), "stays done");
    });
}

#[test]
fn reads_one_byte_at_a_time() {
    let tree = sample_tree();
    let nar = write_nar(&tree).unwrap();
    assert_eq!(block_on(read_nar_tree(Trickle::new(&nar[..]))).unwrap(), tree);
}

#[test]
fn rejects_bad_magic() {
    assert_rejects!(strings(&[b"nix-archive-2", b"("]), NarError::BadMagic);
    assert_rejects!(strings(&[b"nix-archive-10"]), NarError::BadMagic);
    assert_rejects!(*b"\x28\xb5\x2f\xfd garbage, zstd magic", NarError::BadMagic);
    assert_rejects!(*b"not a NAR", NarError::BadMagic);
    assert_rejects!(Vec::new(), NarError::UnexpectedEof);
}

#[test]
fn rejects_bad_tokens() {
    let cases: &[(&[&[u8]], &str)] = &[
        (&[b"nix-archive-1", b"x"], "\"(\""),
        (&[b"nix-archive-1", b"(", b"tipe"], "\"type\""),
        (&[b"nix-archive-1", b"(", b"type", b"socket"], "\"regular\", \"symlink\" or \"directory\""),
        (&[b"nix-archive-1", b"(", b"type", b"regular", b"target"], "\"executable\" or \"contents\""),
        (&[b"nix-archive-1", b"(", b"type", b"regular", b"executable", b"x"], "\"\""),
        (&[b"nix-archive-1", b"(", b"type", b"regular", b"executable", b"", b"executable"], "\"contents\""),
        (&[b"nix-archive-1", b"(", b"type", b"regular", b"contents", b"", b"("], "\")\""),
        (&[b"nix-archive-1", b"(", b"type", b"symlink", b"contents"], "\"target\""),
        (&[b"nix-archive-1", b"(", b"type", b"symlink", b"target", b"a", b"entry"], "\")\""),
        (&[b"nix-archive-1", b"(", b"type", b"directory", b"name"], "\"entry\" or \")\""),
        (&[b"nix-archive-1", b"(", b"type", b"directory", b"entry", b"name"], "\"(\""),
        (&[b"nix-archive-1", b"(", b"type", b"directory", b"entry", b"(", b"node"], "\"name\""),
        (&[b"nix-archive-1", b"(", b"type", b"directory", b"entry", b"(", b"name", b"a", b"("], "\"node\""),
        // Upper case is not the token.
        (&[b"nix-archive-1", b"(", b"TYPE"], "\"type\""),
    ];
    for (parts, expected) in cases {
        let result = read(&strings(parts));
        match result {
            Err(NarError::UnexpectedToken { expected: e, .. }) if e == *expected => {}
            other => panic!("{parts:?}: expected {expected}, got {other:?}"),
        }
    }
    // A missing `)` after an entry's node.
    let mut nar = directory(&[(b"a", FILE_NODE)]);
    nar.truncate(nar.len() - 32); // drop the entry's `)` and the directory's `)`
    nar.extend(strings(&[b"entry"]));
    assert_rejects!(nar, NarError::UnexpectedToken { expected: "\")\"", .. });
}

#[test]
fn rejects_nonzero_padding() {
    let valid = strings(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents", b"abc", b")"]);
    assert!(read(&valid).is_ok());
    // Padding of the magic, of `(`, `type`, `regular`, the contents `abc`, and the last `)`.
    for offset in [21, 33, 53, 71, 100, 119] {
        let mut nar = valid.clone();
        assert_eq!(nar[offset], 0, "offset {offset} is padding");
        nar[offset] = 1;
        let result = read(&nar);
        if offset < 24 {
            assert!(matches!(result, Err(NarError::BadMagic)), "{offset}: {result:?}");
        } else {
            assert!(matches!(result, Err(NarError::NonZeroPadding)), "{offset}: {result:?}");
        }
    }
    // Padding of a name and of a symlink target.
    let name = directory(&[(b"a", FILE_NODE)]);
    let offset = name.windows(9).position(|w| w == b"a\0\0\0\0\0\0\0\x04").unwrap() + 1;
    let mut nar = name.clone();
    nar[offset] = 0xff;
    assert_rejects!(nar, NarError::NonZeroPadding);
    let mut nar = strings(&[b"nix-archive-1", b"(", b"type", b"symlink", b"target", b"ab", b")"]);
    let offset = nar.windows(2).position(|w| w == b"ab").unwrap() + 2;
    nar[offset + 5] = 0x20;
    assert_rejects!(nar, NarError::NonZeroPadding);
}

#[test]
fn rejects_unsorted_and_duplicate_entries() {
    assert!(read(&directory(&[(b"a", FILE_NODE), (b"b", FILE_NODE)])).is_ok());
    assert!(read(&directory(&[(b"B", FILE_NODE), (b"a", FILE_NODE)])).is_ok(), "byte order");
    assert!(read(&directory(&[(b"a", FILE_NODE), (b"a0", FILE_NODE)])).is_ok(), "prefix first");
    assert_rejects!(directory(&[(b"b", FILE_NODE), (b"a", FILE_NODE)]), NarError::UnsortedEntries { .. });
    assert_rejects!(directory(&[(b"a0", FILE_NODE), (b"a", FILE_NODE)]), NarError::UnsortedEntries { .. });
    assert_rejects!(directory(&[(b"a", FILE_NODE), (b"a", FILE_NODE)]), NarError::DuplicateEntry(_));
    assert_rejects!(
        directory(&[(b"a", FILE_NODE), (b"c", FILE_NODE), (b"b", FILE_NODE)]),
        NarError::UnsortedEntries { .. }
    );
}

#[test]
fn rejects_invalid_names() {
    for name in [&b""[..], b".", b"..", b"/", b"a/b", b"a/", b"\0", b"a\0b"] {
        let result = read(&directory(&[(name, FILE_NODE)]));
        assert!(matches!(result, Err(NarError::InvalidName(_))), "{name:?}: {result:?}");
    }
    for name in [&b"..."[..], b".a", b"a b", b"\xff\xfe", b"-"] {
        assert!(read(&directory(&[(name, FILE_NODE)])).is_ok(), "{name:?}");
    }
}

#[test]
fn rejects_invalid_symlink_targets() {
    for target in [&b""[..], b"a\0b"] {
        let nar = strings(&[b"nix-archive-1", b"(", b"type", b"symlink", b"target", target, b")"]);
        assert_rejects!(nar, NarError::InvalidTarget(_));
    }
}

#[test]
fn rejects_overlong_strings() {
    let token = [b'x'; 65];
    assert_rejects!(
        strings(&[b"nix-archive-1", b"(", &token]),
        NarError::TooLong { what: "token", len: 65, max: MAX_TOKEN_LEN }
    );
    // A 64-byte token is within bounds, and merely not a token.
    assert_rejects!(strings(&[b"nix-archive-1", b"(", &token[..64]]), NarError::UnexpectedToken { .. });
    let name = [b'x'; 256];
    assert_rejects!(
        directory(&[(&name, FILE_NODE)]),
        NarError::TooLong { what: "name", len: 256, max: MAX_NAME_LEN }
    );
    assert!(read(&directory(&[(&name[..255], FILE_NODE)])).is_ok());
    let target = [b'x'; 4096];
    let symlink =
        |target: &[u8]| strings(&[b"nix-archive-1", b"(", b"type", b"symlink", b"target", target, b")"]);
    assert_rejects!(symlink(&target), NarError::TooLong { what: "symlink target", len: 4096, max: 4095 });
    assert!(read(&symlink(&target[..4095])).is_ok());
    // A huge length is refused before anything is allocated.
    let mut nar = strings(&[b"nix-archive-1", b"("]);
    nar.extend_from_slice(&u64::MAX.to_le_bytes());
    assert_rejects!(nar, NarError::TooLong { what: "token", len: u64::MAX, .. });
}

/// A NAR of `depth` nested directories, each the single entry `d` of its parent.
fn nested(depth: usize) -> NarNode {
    let mut node = NarNode::Directory(vec![]);
    for _ in 1..depth {
        node = NarNode::Directory(vec![(b"d".to_vec(), node)]);
    }
    node
}

#[test]
fn rejects_too_deep() {
    let deepest = nested(MAX_DEPTH);
    let nar = write_nar(&deepest).unwrap();
    assert_eq!(read(&nar).unwrap(), deepest);
    assert!(matches!(write_nar(&nested(MAX_DEPTH + 1)), Err(NarError::TooDeep)));
    // The same NAR, made by hand one level deeper.
    let mut parts: Vec<&[u8]> = vec![b"nix-archive-1"];
    for _ in 0..MAX_DEPTH {
        parts.extend_from_slice(&[b"(", b"type", b"directory", b"entry", b"(", b"name", b"d", b"node"]);
    }
    parts.extend_from_slice(&[b"(", b"type", b"directory"]);
    assert_rejects!(strings(&parts), NarError::TooDeep);
}

#[test]
fn rejects_truncation_everywhere() {
    let nar = write_nar(&sample_tree()).unwrap();
    for len in 0..nar.len() {
        let result = read(&nar[..len]);
        assert!(matches!(result, Err(NarError::UnexpectedEof)), "truncated at {len}: {result:?}");
    }
}

#[test]
fn rejects_truncated_contents_with_read_contents() {
    let nar = write_nar(&NarNode::File { executable: false, contents: vec![7; 100] }).unwrap();
    let truncated = &nar[..nar.len() - 40];
    let result = block_on(async {
        let mut reader = NarReader::new(truncated);
        reader.next().await?;
        let mut buf = [0; 1000];
        while reader.read_contents(&mut buf).await? > 0 {}
        Ok::<_, NarError>(())
    });
    assert!(matches!(result, Err(NarError::UnexpectedEof)), "{result:?}");
}

#[test]
fn rejects_trailing_data() {
    for trailer in [&b"\0"[..], b"x", &[0; 8], &strings(&[b"nix-archive-1"])] {
        let mut nar = write_nar(&sample_tree()).unwrap();
        nar.extend_from_slice(trailer);
        assert_rejects!(nar, NarError::TrailingData);
    }
}

#[test]
fn errors_are_final() {
    let nar = strings(&[b"nix-archive-1", b"(", b"tipe"]);
    block_on(async {
        let mut reader = NarReader::new(&nar[..]);
        assert!(matches!(reader.next().await, Err(NarError::UnexpectedToken { .. })));
        assert!(matches!(reader.next().await, Err(NarError::ReaderFailed)));
        assert!(matches!(reader.read_contents(&mut [0; 8]).await, Err(NarError::ReaderFailed)));
    });
}

#[test]
fn writer_holes_match_whole_files() {
    let mut writer = NarWriter::new(Vec::new()).unwrap();
    writer.directory_start().unwrap();
    writer.entry_start(b"f").unwrap();
    writer.file_header(true, 5).unwrap();
    writer.get_mut().extend_from_slice(b"hello");
    writer.file_trailer(5).unwrap();
    writer.entry_end().unwrap();
    writer.directory_end().unwrap();
    assert!(writer.is_complete());
    let tree = NarNode::Directory(vec![(
        b"f".to_vec(),
        NarNode::File { executable: true, contents: b"hello".to_vec() },
    )]);
    assert_eq!(writer.finish().unwrap(), write_nar(&tree).unwrap());
}

#[test]
fn writer_refuses_misuse() {
    fn misuse(result: io::Result<()>) -> bool {
        matches!(result.map_err(NarError::from), Err(NarError::WriterMisuse(_)))
    }
    let new = || NarWriter::new(Vec::new()).unwrap();

    let mut w = new();
    assert!(misuse(w.entry_start(b"a")), "entry at the root");
    assert!(misuse(w.entry_end()));
    assert!(misuse(w.directory_end()));
    assert!(misuse(w.file_trailer(0)), "trailer without header");
    w.file_header(false, 3).unwrap();
    assert!(misuse(w.file_trailer(4)), "trailer of another size");
    assert!(misuse(w.symlink(b"x")), "node inside a file");
    w.file_trailer(3).unwrap();
    assert!(misuse(w.directory_start()), "second root node");
    assert!(w.is_complete(), "the writer counts calls, not content bytes");

    let mut w = new();
    assert!(misuse(w.file_header(false, 0).and_then(|()| w.file_header(false, 0))));
    let mut w = new();
    w.directory_start().unwrap();
    assert!(misuse(w.entry_end()), "no entry open");
    w.entry_start(b"b").unwrap();
    assert!(misuse(w.entry_end()), "entry without a node");
    assert!(misuse(w.entry_start(b"c")), "entry inside an entry");
    assert!(misuse(w.directory_end()), "directory with a node due");
    w.directory_start().unwrap();
    assert!(misuse(w.entry_end()), "inner directory still open");
    w.directory_end().unwrap();
    w.entry_end().unwrap();
    let unsorted = w.entry_start(b"a").map_err(NarError::from);
    assert!(matches!(unsorted, Err(NarError::UnsortedEntries { .. })));
    let duplicate = w.entry_start(b"b").map_err(NarError::from);
    assert!(matches!(duplicate, Err(NarError::DuplicateEntry(_))));
    assert!(matches!(w.entry_start(b"..").map_err(NarError::from), Err(NarError::InvalidName(_))));
    assert!(!w.is_complete());
    assert!(misuse(w.finish().map(drop)), "finish with a directory open");

    let mut w = new();
    let len = w.get_ref().len();
    assert!(matches!(w.symlink(b"").map_err(NarError::from), Err(NarError::InvalidTarget(_))));
    assert_eq!(w.get_ref().len(), len, "a refused call writes nothing");
    w.symlink(b"target").unwrap();
    assert!(w.finish().is_ok());
}

/// Valid entry names: 1 to 12 bytes, any but `/` and NUL, not `.` or `..`, often ASCII.
fn name_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z0-9._-]{1,8}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 1..12),
    ]
    .prop_filter("valid entry name", |name| validate_name(name).is_ok())
}

/// Random trees of every node kind, up to 4 levels of directories.
fn tree_strategy() -> impl Strategy<Value = NarNode> {
    let leaf = prop_oneof![
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(executable, contents)| NarNode::File { executable, contents }),
        proptest::collection::vec(1..=255u8, 1..20).prop_map(|target| NarNode::Symlink { target }),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        proptest::collection::btree_map(name_strategy(), inner, 0..6)
            .prop_map(|entries| NarNode::Directory(entries.into_iter().collect()))
    })
}

/// Every NAR that Nix wrote for the fixtures (`tests/fixtures/nars`) reads the same one byte at a
/// time as in one piece.
#[test]
fn fixture_nars_read_one_byte_at_a_time() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nars");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "nar") {
            let nar = std::fs::read(&path).unwrap();
            let whole = block_on(read_nar_tree(&nar[..])).unwrap();
            let trickled = block_on(read_nar_tree(Trickle::new(&nar[..]))).unwrap();
            assert_eq!(trickled, whole, "{}", path.display());
            count += 1;
        }
    }
    assert_eq!(count, 4, "the four fixture NARs");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn write_read_write_round_trips(tree in tree_strategy()) {
        let nar = write_nar(&tree).unwrap();
        let read_back = read(&nar).unwrap();
        prop_assert_eq!(&read_back, &tree);
        prop_assert_eq!(write_nar(&read_back).unwrap(), nar.clone());
        let trickled = block_on(read_nar_tree(Trickle::new(&nar[..]))).unwrap();
        prop_assert_eq!(trickled, tree);
    }

    #[test]
    fn reader_never_panics_on_mutations(
        tree in tree_strategy(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut nar = write_nar(&tree).unwrap();
        for (index, byte) in flips {
            let i = index.index(nar.len());
            nar[i] ^= byte | 1;
        }
        // Any outcome but a panic; a mutated NAR that still reads is canonical.
        if let Ok(tree) = read(&nar) {
            prop_assert_eq!(write_nar(&tree).unwrap(), nar);
        }
    }
}
