//! Builds a NAR's tree of directories from the reader's events, bottom up.

use std::collections::HashMap;

use bytes::Bytes;

use crate::castore::Digest;
use crate::castore::directory::{Directory, DirectoryError, Entry, Node};
use crate::castore::nar_record::order_closure;

/// Collects nodes as the NAR reader announces them; a directory is encoded and addressed when it
/// ends. The reader has already checked names and their order.
#[derive(Debug, Default)]
pub(super) struct TreeBuilder {
    open: Vec<(Option<Bytes>, Vec<Entry>)>,
    directories: HashMap<Digest, Directory>,
    root: Option<Node>,
}

impl TreeBuilder {
    pub(super) fn start_directory(&mut self, name: Option<Bytes>) {
        self.open.push((name, Vec::new()));
    }

    pub(super) fn end_directory(&mut self) -> Result<(), DirectoryError> {
        let Some((name, entries)) = self.open.pop() else { return Ok(()) };
        let directory = Directory { entries };
        let size = directory.size()?;
        let digest = directory.digest();
        self.directories.entry(digest).or_insert(directory);
        self.add(name, Node::Directory { digest, size });
        Ok(())
    }

    pub(super) fn symlink(&mut self, name: Option<Bytes>, target: Bytes) {
        self.add(name, Node::Symlink { target: target.to_vec() });
    }

    pub(super) fn file(&mut self, name: Option<Bytes>, digest: Digest, size: u64, executable: bool) {
        self.add(name, Node::File { digest, size, executable });
    }

    fn add(&mut self, name: Option<Bytes>, node: Node) {
        match (self.open.last_mut(), name) {
            (Some((_, entries)), Some(name)) => entries.push(Entry { name: name.to_vec(), node }),
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
