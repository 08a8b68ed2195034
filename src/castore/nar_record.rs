//! The NAR record: all it takes to render and serve one NAR, in one backend object.
//!
//! Stored at `nars/<narhash>` (NarHash as nixbase32), it holds the root node, the directory closure
//! (root to leaves), NarHash, NarSize, the NAR's MD5 (its S3 ETag), the chunker's parameters and
//! the content stream's chunk list. It depends only on the NAR's bytes and the chunker, so writing
//! it twice is harmless. [`NarRecord::decode`] validates everything a renderer relies on.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::chunker::ChunkerParams;
use super::digest::Digest;
use super::directory::{Directory, Node};
use super::record::{self, RecordError, RecordKind};
use crate::nix::nar::{MAX_DEPTH, validate_target};

/// The version of the NAR record encoding.
pub const NAR_RECORD_VERSION: u8 = 1;

/// One chunk of a content stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// BLAKE3 of the chunk's bytes.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u32,
}

/// A NAR, as stored: its tree, its identity and its content stream's chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NarRecord {
    /// The root node (unnamed).
    pub root: Node,
    /// Every directory reachable from the root, once each, root first, in breadth-first order.
    pub directories: Vec<Directory>,
    /// SHA-256 of the NAR.
    pub nar_hash: [u8; 32],
    /// The NAR's size in bytes.
    pub nar_size: u64,
    /// MD5 of the NAR (its S3 ETag).
    pub nar_md5: [u8; 16],
    /// The chunker that cut the content stream.
    pub chunker: ChunkerParams,
    /// The content stream's chunks, in order.
    pub chunks: Vec<ChunkRef>,
}

/// The backend key of the NAR record for `nar_hash`.
pub fn nar_record_key(nar_hash: &[u8; 32]) -> String {
    format!("nars/{}", crate::nix::nixbase32::encode(nar_hash))
}

impl NarRecord {
    /// The record's backend key.
    pub fn key(&self) -> String {
        nar_record_key(&self.nar_hash)
    }

    /// The content stream's length: the sum of the chunk sizes.
    pub fn content_size(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.size)).sum()
    }

    /// Serializes the record.
    pub fn encode(&self) -> Vec<u8> {
        record::encode(RecordKind::Nar, NAR_RECORD_VERSION, self)
    }

    /// Reads and validates a record.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let record: NarRecord = record::decode(RecordKind::Nar, NAR_RECORD_VERSION, bytes)?;
        record.validate().map_err(|reason| RecordError::Invalid { kind: RecordKind::Nar, reason })?;
        Ok(record)
    }

    /// The directory with `digest`, from the closure.
    pub fn directory_index(&self) -> HashMap<Digest, &Directory> {
        self.directories.iter().map(|d| (d.digest(), d)).collect()
    }

    /// Checks the closure (every directory valid, reached, present once, its digest and size as
    /// its parent says, nesting bounded), and that the chunks cover exactly the root's content.
    pub fn validate(&self) -> Result<(), String> {
        self.chunker.validate().map_err(|e| e.to_string())?;
        let by_digest: HashMap<Digest, &Directory> = self.directory_index();
        if by_digest.len() != self.directories.len() {
            return Err("a directory appears twice in the closure".into());
        }
        let mut reached = HashSet::new();
        let mut frontier: Vec<(&Node, usize)> = vec![(&self.root, 0)];
        while let Some((node, depth)) = frontier.pop() {
            match node {
                Node::Symlink { target } => validate_target(target).map_err(|e| e.to_string())?,
                Node::File { .. } => {}
                Node::Directory { digest, size } => {
                    // The root directory counts as level 1, as in the NAR reader.
                    if depth >= MAX_DEPTH {
                        return Err(format!("nesting deeper than {MAX_DEPTH}"));
                    }
                    let dir = by_digest.get(digest).ok_or_else(|| format!("directory {digest} missing"))?;
                    if reached.insert(*digest) {
                        dir.validate().map_err(|e| e.to_string())?;
                        if dir.size().map_err(|e| e.to_string())? != *size {
                            return Err(format!("directory {digest} size mismatch"));
                        }
                        frontier.extend(dir.entries.iter().map(|e| (&e.node, depth + 1)));
                    } else if dir.size().ok() != Some(*size) {
                        return Err(format!("directory {digest} size mismatch"));
                    }
                }
            }
        }
        if reached.len() != self.directories.len() {
            return Err("the closure holds directories the root does not reach".into());
        }
        if let (Node::Directory { digest, .. }, Some(first)) = (&self.root, self.directories.first())
            && first.digest() != *digest
        {
            return Err("the closure does not start with the root".into());
        }
        let mut total = 0u64;
        for c in &self.chunks {
            if c.size == 0 || c.size > self.chunker.max {
                return Err(format!("chunk {} has size {}", c.digest, c.size));
            }
            total += u64::from(c.size);
        }
        if total != self.root.content_size() {
            return Err(format!("chunks hold {total} bytes, the tree {}", self.root.content_size()));
        }
        Ok(())
    }
}

/// Orders a closure root to leaves (breadth first, each directory once), from any map of digests.
pub fn order_closure(root: &Node, mut dirs: HashMap<Digest, Directory>) -> Vec<Directory> {
    let mut out = Vec::with_capacity(dirs.len());
    let mut queue = std::collections::VecDeque::new();
    if let Node::Directory { digest, .. } = root {
        queue.push_back(*digest);
    }
    while let Some(d) = queue.pop_front() {
        if let Some(dir) = dirs.remove(&d) {
            for e in &dir.entries {
                if let Node::Directory { digest, .. } = &e.node {
                    queue.push_back(*digest);
                }
            }
            out.push(dir);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::castore::directory::Entry;

    fn sample() -> NarRecord {
        let bin = Directory {
            entries: vec![Entry {
                name: b"hello".to_vec(),
                node: Node::File { digest: Digest([3; 32]), size: 5, executable: true },
            }],
        };
        let root = Directory {
            entries: vec![
                Entry { name: b"bin".to_vec(), node: Node::Directory { digest: bin.digest(), size: 5 } },
                Entry { name: b"lib".to_vec(), node: Node::Symlink { target: b"bin".to_vec() } },
            ],
        };
        NarRecord {
            root: Node::Directory { digest: root.digest(), size: 5 },
            directories: vec![root, bin],
            nar_hash: [7; 32],
            nar_size: 400,
            nar_md5: [9; 16],
            chunker: ChunkerParams::TINY,
            chunks: vec![ChunkRef { digest: Digest([3; 32]), size: 5 }],
        }
    }

    /// Pins the NAR record encoding: changing it is a migration, never an accident.
    #[test]
    fn golden_bytes() {
        let bytes = sample().encode();
        let hex = hex::encode(&bytes);
        assert_eq!(hex, GOLDEN);
        assert_eq!(NarRecord::decode(&bytes).unwrap(), sample());
    }

    const GOLDEN: &str = concat!(
        "4e474e5201",                                                           // magic NGNR, version 1
        "0160a56313ed8f90874d58564a904322ee009a2f4c0e2657a87dd81d022aa8cae405", // root: directory (tag 1), digest, size 5
        "02",                                                                   // 2 directories
        "020362696e0162b85ca99ab5348c88d1ceadf112ba5cb8a7b414f2692df6552b05584339077e05036c6962020362696e", // root dir: bin -> directory, lib -> symlink bin
        "010568656c6c6f0003030303030303030303030303030303030303030303030303030303030303030501", // bin: hello -> file (tag 0), digest, size 5, executable
        "0707070707070707070707070707070707070707070707070707070707070707",                     // NarHash
        "9003",                                                                                 // NarSize 400
        "09090909090909090909090909090909",                                                     // MD5
        "014080028008", // chunker: version 1, 64, 256, 1024
        "01030303030303030303030303030303030303030303030303030303030303030305", // 1 chunk: digest, size 5
    );

    #[test]
    fn invalid_closures_are_refused() {
        let mut missing = sample();
        missing.directories.pop();
        let mut extra = sample();
        extra.directories.push(Directory::default());
        let mut not_root_first = sample();
        not_root_first.directories.reverse();
        let mut short_chunks = sample();
        short_chunks.chunks[0].size = 4;
        let mut big_chunk = sample();
        big_chunk.chunks[0].size = 2000;
        let mut wrong_size = sample();
        wrong_size.root = Node::Directory { digest: wrong_size.directories[0].digest(), size: 6 };
        for (what, bad) in [
            ("missing directory", missing),
            ("unreachable directory", extra),
            ("root not first", not_root_first),
            ("chunks shorter than the tree", short_chunks),
            ("chunk above the maximum", big_chunk),
            ("directory size", wrong_size),
        ] {
            let err = NarRecord::decode(&bad.encode()).unwrap_err();
            assert!(matches!(err, RecordError::Invalid { .. }), "{what}: {err}");
        }
    }
}
