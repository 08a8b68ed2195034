//! Builds a NAR's tree of directories from the reader's events, bottom up, keeping count of the
//! bytes the NAR record will take for it.

use std::collections::HashMap;

use bytes::Bytes;

use crate::castore::Digest;
use crate::castore::directory::{Directory, DirectoryError, Entry, Node};
use crate::castore::nar_record::order_closure;

/// An upper bound of the encoded size of one entry, beyond its name and symlink target: the
/// name's length (2 bytes at most for 255), the node's tag (1), a digest (32), a size (10 at
/// most) and the executable flag (1).
const ENTRY_OVERHEAD: u64 = 48;

/// Collects nodes as the NAR reader announces them; a directory is encoded and addressed when it
/// ends. The reader has already checked names and their order.
///
/// [`record_bytes`](Self::record_bytes) is about what the directories take in the NAR record:
/// the encoded size of every distinct directory ended so far, plus an upper bound for the
/// entries of the directories still open (so it may run a little above the final size while a
/// directory is open, never below it). It also bounds the memory the builder holds (a small
/// multiple).
#[derive(Debug, Default)]
pub(super) struct TreeBuilder {
    open: Vec<(Option<Bytes>, Vec<Entry>, u64)>,
    directories: HashMap<Digest, Directory>,
    root: Option<Node>,
    record_bytes: u64,
}

impl TreeBuilder {
    pub(super) fn start_directory(&mut self, name: Option<Bytes>) {
        self.open.push((name, Vec::new(), 0));
    }

    pub(super) fn end_directory(&mut self) -> Result<(), DirectoryError> {
        let Some((name, entries, entry_bytes)) = self.open.pop() else { return Ok(()) };
        self.record_bytes -= entry_bytes;
        let directory = Directory { entries };
        let size = directory.size()?;
        // As `Directory::digest`, keeping the encoding's length.
        let encoded = directory.encode();
        let digest = Digest::of(&encoded);
        if let std::collections::hash_map::Entry::Vacant(slot) = self.directories.entry(digest) {
            self.record_bytes += encoded.len() as u64;
            slot.insert(directory);
        }
        self.add(name, Node::Directory { digest, size });
        Ok(())
    }

    pub(super) fn symlink(&mut self, name: Option<Bytes>, target: Bytes) {
        self.add(name, Node::Symlink { target: target.to_vec() });
    }

    pub(super) fn file(&mut self, name: Option<Bytes>, digest: Digest, size: u64, executable: bool) {
        self.add(name, Node::File { digest, size, executable });
    }

    /// About the bytes the tree will take in the NAR record (see the type's documentation).
    pub(super) fn record_bytes(&self) -> u64 {
        self.record_bytes
    }

    fn add(&mut self, name: Option<Bytes>, node: Node) {
        match (self.open.last_mut(), name) {
            (Some((_, entries, entry_bytes)), Some(name)) => {
                let target = match &node {
                    Node::Symlink { target } => target.len() as u64,
                    _ => 0,
                };
                let bytes = ENTRY_OVERHEAD + name.len() as u64 + target;
                *entry_bytes += bytes;
                self.record_bytes += bytes;
                entries.push(Entry { name: name.to_vec(), node });
            }
            _ => self.root = Some(node),
        }
    }

    /// The root node and its closure, root to leaves; None if no root node was seen.
    pub(super) fn finish(self) -> Option<(Node, Vec<Directory>)> {
        let root = self.root?;
        let closure = order_closure(&root, self.directories);
        Some((root, closure))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_bytes_follow_what_the_record_holds() {
        let mut tree = TreeBuilder::default();
        tree.start_directory(None);
        for copy in [&b"a"[..], b"b"] {
            tree.start_directory(Some(Bytes::copy_from_slice(copy)));
            for i in 0..100u32 {
                let name = Bytes::from(format!("file-{i:03}"));
                tree.file(Some(name), Digest([1; 32]), 10, false);
            }
            let open = tree.record_bytes();
            tree.end_directory().unwrap();
            if copy == b"a" {
                // Ended, the directory takes its encoded size, which the bound covered.
                assert!(tree.record_bytes() < open, "{} < {open}", tree.record_bytes());
                assert!(tree.record_bytes() > 100 * 40);
            }
        }
        let both = tree.record_bytes();
        tree.symlink(Some(Bytes::from_static(b"c")), Bytes::from(vec![b'x'; 1000]));
        assert_eq!(tree.record_bytes(), both + ENTRY_OVERHEAD + 1 + 1000);
        tree.end_directory().unwrap();
        let total = tree.record_bytes();
        let (_, closure) = tree.finish().unwrap();
        // `a` and `b` are one directory, stored (and counted) once.
        assert_eq!(closure.len(), 2);
        let encoded: u64 = closure.iter().map(|d| d.encode().len() as u64).sum();
        assert_eq!(total, encoded);
    }
}
