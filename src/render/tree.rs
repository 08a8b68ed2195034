//! A store path's tree as objects (`tree/<hash>-<name>…`, the bucket setting `browse`): every
//! regular file, symlink and empty directory of a NAR under a key of its own, in byte order of
//! keys, each file with where its bytes sit in the NAR, so that reading it is a ranged render.
//!
//! Built from a NAR record's root node and directory closure and the NAR's segment table, without
//! touching file contents. The keys, after `tree/<hash>-<name>`:
//!
//! | node | key |
//! |---|---|
//! | the root, a file or a symlink | `` (the store path's own key) |
//! | a regular file or a symlink at `a/b` | `/a/b` |
//! | an empty directory at `a/d` | `/a/d/` (a zero-byte folder marker, as S3 tools write) |
//! | the root, an empty directory | `/` |
//!
//! Non-empty directories have no key: they are the common prefixes of the keys under them.
//!
//! Names are bytes in a NAR, keys are UTF-8: a name's valid UTF-8 is kept as it is, each byte that
//! is not valid UTF-8 is written `%XX` (uppercase hex), and a `%` followed by two hex digits is
//! written `%25`, so that no two names share a key ([`encode_name`]).

use std::sync::Arc;

use crate::castore::directory::Node;
use crate::castore::{Digest, NarRecord};
use crate::render::segment::{SegmentKind, SegmentTable};

/// Why a tree cannot be built from a record (a validated record's always can).
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A directory the tree references is not in the closure.
    #[error("directory {0} missing from the NAR record's closure")]
    MissingDirectory(Digest),
    /// The segment table's content segments are not the tree's files.
    #[error("the segment table does not match the tree: {0}")]
    TableMismatch(&'static str),
}

/// What a key of a tree names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeNode {
    /// A regular file.
    File {
        /// BLAKE3 of its contents.
        digest: Digest,
        /// Its size.
        size: u64,
        /// Whether Nix marks it executable.
        executable: bool,
        /// The NAR offset of its first content byte (0 for an empty file).
        nar_offset: u64,
    },
    /// A symbolic link: the object's bytes are its target.
    Symlink {
        /// Its target, as bytes.
        target: Vec<u8>,
    },
    /// An empty directory: a zero-byte folder marker.
    EmptyDirectory,
}

impl TreeNode {
    /// The object's size: a file's, a symlink target's length, 0 for a folder marker.
    pub fn size(&self) -> u64 {
        match self {
            TreeNode::File { size, .. } => *size,
            TreeNode::Symlink { target } => target.len() as u64,
            TreeNode::EmptyDirectory => 0,
        }
    }

    /// The object's ETag: the BLAKE3 (64 hex digits, so no client takes it for an MD5) of its
    /// bytes — a file's from its directory entry, a symlink's of its target.
    pub fn etag(&self) -> String {
        match self {
            TreeNode::File { digest, .. } => digest.to_hex(),
            TreeNode::Symlink { target } => Digest::of(target).to_hex(),
            TreeNode::EmptyDirectory => Digest::of(b"").to_hex(),
        }
    }
}

/// One key of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// The key after `tree/<hash>-<name>` (see the [module documentation](self)).
    pub key: String,
    /// What it names.
    pub node: TreeNode,
}

/// A store path's tree: its keys in byte order, and the segment table its files are read from.
#[derive(Debug, Clone)]
pub struct StoreTree {
    table: Arc<SegmentTable>,
    entries: Vec<TreeEntry>,
    root_is_directory: bool,
}

impl StoreTree {
    /// The tree of `record`, whose segment table is `table`.
    pub fn build(record: &NarRecord, table: Arc<SegmentTable>) -> Result<Self, TreeError> {
        let dirs = record.directory_index();
        let mut walk = Walk { dirs: &dirs, entries: vec![], stream_offset: 0, files: vec![] };
        let root_is_directory = matches!(record.root, Node::Directory { .. });
        let root_key = if root_is_directory { "/" } else { "" };
        walk.node(&record.root, &mut String::from(root_key))?;
        // The files of non-zero size, in NAR order, are the table's content segments, in order.
        let mut contents = table
            .segments()
            .iter()
            .filter(|s| s.kind == SegmentKind::Content)
            .map(|s| (s.nar_offset, s.stream_offset));
        let sentinel = table.segments().last().map(|s| s.nar_offset);
        for &(index, stream_offset) in &walk.files {
            let (nar_offset, at) =
                contents.next().ok_or(TreeError::TableMismatch("fewer content segments than files"))?;
            if at != stream_offset || Some(nar_offset) == sentinel {
                return Err(TreeError::TableMismatch("a file's span is not its content segment"));
            }
            if let TreeNode::File { nar_offset: offset, .. } = &mut walk.entries[index].node {
                *offset = nar_offset;
            }
        }
        if contents.next().map(|(nar_offset, _)| Some(nar_offset)) != Some(sentinel) {
            return Err(TreeError::TableMismatch("more content segments than files"));
        }
        let mut entries = walk.entries;
        entries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        entries.shrink_to_fit();
        Ok(StoreTree { table, entries, root_is_directory })
    }

    /// The segment table the files are read from.
    pub fn table(&self) -> &Arc<SegmentTable> {
        &self.table
    }

    /// Every key, in byte order.
    pub fn entries(&self) -> &[TreeEntry] {
        &self.entries
    }

    /// Whether the root is a directory (so the store path is a common prefix, not an object).
    pub fn root_is_directory(&self) -> bool {
        self.root_is_directory
    }

    /// The entry of `key` (after `tree/<hash>-<name>`).
    pub fn get(&self, key: &str) -> Option<&TreeEntry> {
        self.entries.binary_search_by(|e| e.key.as_str().cmp(key)).ok().map(|i| &self.entries[i])
    }

    /// The index of the first entry whose key is at or after `key`.
    pub fn first_at_or_after(&self, key: &str) -> usize {
        self.entries.partition_point(|e| e.key.as_str() < key)
    }

    /// The index of the first entry at or after `from` whose key is neither `prefix` nor under it
    /// (keys under a prefix are contiguous and follow it).
    pub fn first_past(&self, from: usize, prefix: &str) -> usize {
        let from = from.min(self.entries.len());
        from + self.entries[from..].partition_point(|e| e.key.as_str() <= prefix || e.key.starts_with(prefix))
    }

    /// Approximate memory held (not counting the shared segment table), for a cache's weigher.
    pub fn weight(&self) -> usize {
        self.entries
            .iter()
            .map(|e| {
                std::mem::size_of::<TreeEntry>()
                    + e.key.len()
                    + match &e.node {
                        TreeNode::Symlink { target } => target.len(),
                        _ => 0,
                    }
            })
            .sum::<usize>()
            + 64
    }
}

/// The walk: keys so far, and where each file of non-zero size starts in the content stream.
struct Walk<'a> {
    dirs: &'a std::collections::HashMap<Digest, &'a crate::castore::directory::Directory>,
    entries: Vec<TreeEntry>,
    stream_offset: u64,
    /// (index in `entries`, content-stream offset) of each file of non-zero size, in NAR order.
    files: Vec<(usize, u64)>,
}

impl Walk<'_> {
    /// Adds `node` under `key` (a directory's key ends with `/`), in NAR order.
    fn node(&mut self, node: &Node, key: &mut String) -> Result<(), TreeError> {
        match node {
            Node::File { digest, size, executable } => {
                if *size > 0 {
                    self.files.push((self.entries.len(), self.stream_offset));
                    self.stream_offset += size;
                }
                let node =
                    TreeNode::File { digest: *digest, size: *size, executable: *executable, nar_offset: 0 };
                self.entries.push(TreeEntry { key: key.clone(), node });
            }
            Node::Symlink { target } => self
                .entries
                .push(TreeEntry { key: key.clone(), node: TreeNode::Symlink { target: target.clone() } }),
            Node::Directory { digest, .. } => {
                let dir = self.dirs.get(digest).ok_or(TreeError::MissingDirectory(*digest))?;
                if dir.entries.is_empty() {
                    self.entries.push(TreeEntry { key: key.clone(), node: TreeNode::EmptyDirectory });
                }
                let len = key.len();
                for entry in &dir.entries {
                    encode_name(&entry.name, key);
                    if matches!(entry.node, Node::Directory { .. }) {
                        key.push('/');
                    }
                    self.node(&entry.node, key)?;
                    key.truncate(len);
                }
            }
        }
        Ok(())
    }
}

/// Appends the key form of the NAR name `name` to `out`: valid UTF-8 as it is, each other byte
/// as `%XX`, and `%` as `%25` where two hex digits follow it (see the
/// [module documentation](self)).
pub fn encode_name(name: &[u8], out: &mut String) {
    use std::fmt::Write as _;
    for chunk in name.utf8_chunks() {
        let valid = chunk.valid();
        for (i, c) in valid.char_indices() {
            let next = valid.as_bytes().get(i + 1..i + 3);
            if c == '%' && next.is_some_and(|n| n.iter().all(u8::is_ascii_hexdigit)) {
                out.push_str("%25");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::castore::directory::{Directory, Entry};
    use crate::castore::{ChunkRef, ChunkerParams};
    use crate::nix::nar::{NarNode, write_nar};

    fn encoded(name: &[u8]) -> String {
        let mut out = String::new();
        encode_name(name, &mut out);
        out
    }

    #[test]
    fn names_encode_one_to_one() {
        assert_eq!(encoded(b"plain name"), "plain name");
        assert_eq!(encoded("é ü".as_bytes()), "é ü");
        assert_eq!(encoded(b"a\xffb\x80"), "a%FFb%80");
        assert_eq!(encoded(b"100%"), "100%");
        assert_eq!(encoded(b"%zz"), "%zz");
        // Else `%FF` would be the key of both the name `%FF` and the byte 0xff.
        assert_eq!(encoded(b"%FF"), "%25FF");
        assert_eq!(encoded(b"%\xff"), "%%FF");
        assert_ne!(encoded(b"%FF"), encoded(b"\xff"));
    }

    /// A record and table of a tree: root dir with `b/` (file `x`, empty dir `e`), `b-c` (a
    /// symlink), `a` (an executable file), `z` (an empty file).
    fn sample() -> (NarRecord, Arc<SegmentTable>) {
        let empty = Directory::default();
        let b = Directory {
            entries: vec![
                Entry { name: b"e".to_vec(), node: Node::Directory { digest: empty.digest(), size: 0 } },
                Entry {
                    name: b"x".to_vec(),
                    node: Node::File { digest: Digest::of(b"xx"), size: 2, executable: false },
                },
            ],
        };
        let root = Directory {
            entries: vec![
                Entry {
                    name: b"a".to_vec(),
                    node: Node::File { digest: Digest::of(b"aaa"), size: 3, executable: true },
                },
                Entry { name: b"b".to_vec(), node: Node::Directory { digest: b.digest(), size: 2 } },
                Entry { name: b"b-c".to_vec(), node: Node::Symlink { target: b"a".to_vec() } },
                Entry {
                    name: b"z".to_vec(),
                    node: Node::File { digest: Digest::of(b""), size: 0, executable: false },
                },
            ],
        };
        let nar = NarNode::Directory(vec![
            (b"a".to_vec(), NarNode::File { executable: true, contents: b"aaa".to_vec() }),
            (
                b"b".to_vec(),
                NarNode::Directory(vec![
                    (b"e".to_vec(), NarNode::Directory(vec![])),
                    (b"x".to_vec(), NarNode::File { executable: false, contents: b"xx".to_vec() }),
                ]),
            ),
            (b"b-c".to_vec(), NarNode::Symlink { target: b"a".to_vec() }),
            (b"z".to_vec(), NarNode::File { executable: false, contents: vec![] }),
        ]);
        let bytes = write_nar(&nar).unwrap();
        let record = NarRecord {
            root: Node::Directory { digest: root.digest(), size: 5 },
            directories: vec![root, b, empty],
            nar_hash: [0; 32],
            nar_size: bytes.len() as u64,
            nar_md5: [0; 16],
            chunker: ChunkerParams::TINY,
            chunks: vec![ChunkRef { digest: Digest::of(b"aaaxx"), size: 5 }],
        };
        let table = Arc::new(SegmentTable::build(&record).unwrap());
        (record, table)
    }

    #[test]
    fn keys_in_byte_order_with_their_spans() {
        let (record, table) = sample();
        let tree = StoreTree::build(&record, table).unwrap();
        let keys: Vec<&str> = tree.entries().iter().map(|e| e.key.as_str()).collect();
        // `-` sorts before `/`: `b-c` comes before `b/…`, unlike NAR order.
        assert_eq!(keys, ["/a", "/b-c", "/b/e/", "/b/x", "/z"]);
        assert!(tree.root_is_directory());
        let TreeNode::File { nar_offset, size, executable, .. } = tree.get("/a").unwrap().node else {
            panic!("not a file")
        };
        assert_eq!((size, executable), (3, true));
        assert_eq!(tree.table().stream_offset_at(nar_offset), 0);
        let TreeNode::File { nar_offset: x, .. } = tree.get("/b/x").unwrap().node else { panic!() };
        assert_eq!(tree.table().stream_offset_at(x), 3);
        assert_eq!(tree.get("/b"), None);
        assert_eq!(tree.get("/b/e/").unwrap().node, TreeNode::EmptyDirectory);
        assert_eq!(tree.get("/b-c").unwrap().node.size(), 1);
        assert_eq!(tree.first_past(0, "/b/"), 4);
        assert_eq!(tree.first_at_or_after("/b/"), 2);
        assert_eq!(tree.get("/a").unwrap().node.etag(), Digest::of(b"aaa").to_hex());
    }

    #[test]
    fn top_level_file_is_the_store_path_itself() {
        let nar = NarNode::File { executable: false, contents: b"hi".to_vec() };
        let record = NarRecord {
            root: Node::File { digest: Digest::of(b"hi"), size: 2, executable: false },
            directories: vec![],
            nar_hash: [0; 32],
            nar_size: write_nar(&nar).unwrap().len() as u64,
            nar_md5: [0; 16],
            chunker: ChunkerParams::TINY,
            chunks: vec![ChunkRef { digest: Digest::of(b"hi"), size: 2 }],
        };
        let table = Arc::new(SegmentTable::build(&record).unwrap());
        let tree = StoreTree::build(&record, table).unwrap();
        assert!(!tree.root_is_directory());
        assert_eq!(tree.entries().len(), 1);
        assert_eq!(tree.entries()[0].key, "");
    }
}
