//! Nodes and directories: a store path's tree, without file contents.
//!
//! A directory is encoded canonically (entries strictly sorted by name bytes) as a
//! [`RecordKind::Directory`] record, and addressed by the BLAKE3 of that encoding. Its size is the
//! number of content bytes under it, so a file's offset in the content stream follows from its
//! path alone.

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::record::{self, RecordKind};
use crate::nix::nar::{NarError, check_order, validate_name, validate_target};

/// The version of the directory encoding.
pub const DIRECTORY_VERSION: u8 = 1;

/// One node of a tree: a file, a directory or a symlink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Node {
    /// A regular file.
    File {
        /// BLAKE3 of its contents.
        digest: Digest,
        /// Its size in bytes.
        size: u64,
        /// Whether it is executable.
        executable: bool,
    },
    /// A directory.
    Directory {
        /// BLAKE3 of its canonical encoding.
        digest: Digest,
        /// Content bytes under it.
        size: u64,
    },
    /// A symbolic link.
    Symlink {
        /// Its target, as bytes.
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
    },
}

impl Node {
    /// The number of content-stream bytes this node holds (0 for a symlink).
    pub fn content_size(&self) -> u64 {
        match self {
            Node::File { size, .. } | Node::Directory { size, .. } => *size,
            Node::Symlink { .. } => 0,
        }
    }
}

/// A named entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The entry's name, as bytes.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// What it is.
    pub node: Node,
}

/// A directory: its entries, strictly sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// The entries, strictly ascending by name bytes.
    pub entries: Vec<Entry>,
}

/// Why a directory (or a tree of them) is invalid.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// An entry breaks a NAR rule (its name, its order, a symlink target): the same rules as the
    /// NAR reader's, so every stored directory renders as a valid NAR.
    #[error(transparent)]
    Nar(#[from] NarError),
    /// The content size of a directory overflows.
    #[error("directory size overflows")]
    SizeOverflow,
}

impl Directory {
    /// The canonical encoding, whose BLAKE3 is the directory's digest.
    pub fn encode(&self) -> Vec<u8> {
        record::encode(RecordKind::Directory, DIRECTORY_VERSION, self)
    }

    /// The directory's digest: BLAKE3 of its canonical encoding.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.encode())
    }

    /// The content bytes under this directory: the sum of its entries' sizes.
    pub fn size(&self) -> Result<u64, DirectoryError> {
        self.entries
            .iter()
            .try_fold(0u64, |acc, e| acc.checked_add(e.node.content_size()))
            .ok_or(DirectoryError::SizeOverflow)
    }

    /// Checks names, targets and order of the entries (not the nodes they point to).
    pub fn validate(&self) -> Result<(), DirectoryError> {
        let mut previous: Option<&[u8]> = None;
        for entry in &self.entries {
            validate_name(&entry.name)?;
            check_order(previous, &entry.name)?;
            if let Node::Symlink { target } = &entry.node {
                validate_target(target)?;
            }
            previous = Some(&entry.name);
        }
        self.size()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Directory {
        Directory {
            entries: vec![
                Entry { name: b"bin".to_vec(), node: Node::Directory { digest: Digest([1; 32]), size: 9 } },
                Entry {
                    name: b"hello".to_vec(),
                    node: Node::File { digest: Digest([2; 32]), size: 300, executable: true },
                },
                Entry { name: b"link".to_vec(), node: Node::Symlink { target: b"hello".to_vec() } },
            ],
        }
    }

    /// Pins the canonical directory encoding: changing it changes every digest (a migration).
    #[test]
    fn golden_bytes() {
        let enc = sample().encode();
        let expected = concat!(
            "4e474452",
            "01",
            "03", // magic, version, 3 entries
            "03",
            "62696e",
            "01",
            "0101010101010101010101010101010101010101010101010101010101010101",
            "09",
            "05",
            "68656c6c6f",
            "00",
            "0202020202020202020202020202020202020202020202020202020202020202",
            "ac02",
            "01",
            "04",
            "6c696e6b",
            "02",
            "05",
            "68656c6c6f",
        );
        assert_eq!(hex::encode(&enc), expected);
        assert_eq!(sample().size().unwrap(), 309);
    }

    #[test]
    fn validation() {
        assert!(sample().validate().is_ok());
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'x'; 256][..]] {
            let mut dir = sample();
            dir.entries[0].name = bad.to_vec();
            assert!(matches!(dir.validate(), Err(DirectoryError::Nar(_))), "{bad:?}");
        }
        let mut unsorted = sample();
        unsorted.entries.swap(0, 1);
        assert!(matches!(unsorted.validate(), Err(DirectoryError::Nar(NarError::UnsortedEntries { .. }))));
        let mut dup = sample();
        dup.entries[1].name = b"bin".to_vec();
        assert!(matches!(dup.validate(), Err(DirectoryError::Nar(NarError::DuplicateEntry(_)))));
        let mut empty_target = sample();
        empty_target.entries[2].node = Node::Symlink { target: vec![] };
        assert!(matches!(empty_target.validate(), Err(DirectoryError::Nar(NarError::InvalidTarget(_)))));
        let mut overflow = sample();
        overflow.entries[0].node = Node::Directory { digest: Digest([1; 32]), size: u64::MAX };
        assert!(matches!(overflow.validate(), Err(DirectoryError::SizeOverflow)));
    }
}
