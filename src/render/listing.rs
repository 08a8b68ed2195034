//! The NAR listing (`<storehash>.ls`): the JSON that Nix writes next to a narinfo when a binary
//! cache has `write-nar-listing=1`, rendered from a NAR record alone (no chunk reads).
//!
//! The format is the one Nix 2.8 writes (its `listNar` through its own `JSONObject` writer), byte
//! for byte, as `tests/listing.rs` checks against real Nix:
//!
//! ```text
//! {"version":1,"root":NODE}
//! NODE = {"type":"regular","size":N[,"executable":true],"narOffset":M}
//!      | {"type":"symlink","target":"…"}
//!      | {"type":"directory","entries":{"NAME":NODE,…}}
//! ```
//!
//! - No whitespace anywhere, no trailing newline.
//! - Keys in exactly that order (not sorted); `executable` only when true.
//! - `narOffset` is the NAR offset of a file's first content byte (just after the length of its
//!   contents), written for every regular file, empty ones included.
//! - Entries in NAR order: names sorted by their bytes, as unsigned bytes. An empty directory is
//!   `"entries":{}`.
//! - Strings (names, symlink targets) are escaped as Nix 2.8's `toJSON` does: `"` and `\` as `\"`
//!   and `\\`; newline, carriage return and tab as `\n`, `\r`, `\t`; the other bytes below 0x20 as
//!   `\u00xx` (lowercase hex; so backspace and form feed are `\u0008`, `\u000c`); every other byte,
//!   DEL and bytes ≥ 0x80 included, verbatim. A name or target that is not UTF-8 therefore makes
//!   a listing that is not UTF-8 (nor strictly JSON): Nix does that, and so do we, which is why
//!   the listing is bytes, not a `String`.
//!
//! Later Nix releases write listings with nlohmann::json, which sorts the keys of every object
//! (`{"root":…,"version":1}`, `{"executable":true,"narOffset":M,"size":N,"type":"regular"}`) and
//! refuses names that are not UTF-8. Nix reads listings with a JSON parser, so either key order
//! is accepted; nargate writes what Nix 2.8 writes.
//!
//! The offsets come from walking the tree with the [`NarWriter`] into a writer that only counts
//! bytes, skipping each file's contents: the same framing as the segment table's, nothing
//! recomputed by hand.

use std::collections::HashMap;

use crate::castore::directory::{Directory, Node};
use crate::castore::{Digest, NarRecord};
use crate::nix::nar::{NarError, NarWriter};

/// Why a NAR record has no listing (a record that passed [`NarRecord::validate`] always has one).
#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    /// A directory the tree references is not in the closure.
    #[error("directory {0} missing from the NAR record's closure")]
    MissingDirectory(Digest),
    /// The tree breaks a NAR rule (a name, the order of entries, a symlink target, nesting).
    #[error(transparent)]
    Nar(#[from] NarError),
    /// The tree's NAR is not the size the record says, so its offsets would be wrong.
    #[error("the tree's NAR would be {rendered} bytes, the record says {recorded}")]
    SizeMismatch {
        /// Size of the NAR the tree renders to.
        rendered: u64,
        /// The record's NarSize.
        recorded: u64,
    },
}

/// The NAR listing JSON of the NAR described by `record`, byte-identical to what Nix 2.8 writes
/// (see the [module documentation](self)). Bytes, not a `String`: names that are not UTF-8 are
/// written verbatim, as Nix does.
pub fn nar_listing(record: &NarRecord) -> Result<Vec<u8>, ListingError> {
    let dirs = record.directory_index();
    let mut listing = Listing {
        nar: NarWriter::new(Counter::default()).map_err(NarError::from)?,
        dirs: &dirs,
        // About 64 bytes per node is typical; this only avoids early reallocations.
        json: Vec::with_capacity(
            64 * (1 + record.directories.iter().map(|d| d.entries.len()).sum::<usize>()),
        ),
    };
    listing.json.extend_from_slice(br#"{"version":1,"root":"#);
    listing.node(&record.root)?;
    listing.json.push(b'}');
    let rendered = listing.nar.finish().map_err(NarError::from)?.0;
    if rendered != record.nar_size {
        return Err(ListingError::SizeMismatch { rendered, recorded: record.nar_size });
    }
    Ok(listing.json)
}

/// An [`std::io::Write`] that counts the bytes written to it: the NAR offset, as the writer goes.
#[derive(Debug, Default)]
struct Counter(u64);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The walk: the NAR writer (for offsets) and the JSON written so far.
struct Listing<'a> {
    nar: NarWriter<Counter>,
    dirs: &'a HashMap<Digest, &'a Directory>,
    json: Vec<u8>,
}

impl Listing<'_> {
    /// Writes `node`'s JSON object, and its NAR framing into the counter.
    fn node(&mut self, node: &Node) -> Result<(), ListingError> {
        match node {
            Node::File { size, executable, .. } => {
                self.nar.file_header(*executable, *size).map_err(NarError::from)?;
                let nar_offset = self.nar.get_ref().0;
                // The contents are not read: they are only counted.
                self.nar.get_mut().0 += size;
                self.nar.file_trailer(*size).map_err(NarError::from)?;
                self.json.extend_from_slice(br#"{"type":"regular","size":"#);
                self.number(*size);
                if *executable {
                    self.json.extend_from_slice(br#","executable":true"#);
                }
                self.json.extend_from_slice(br#","narOffset":"#);
                self.number(nar_offset);
                self.json.push(b'}');
            }
            Node::Symlink { target } => {
                self.nar.symlink(target).map_err(NarError::from)?;
                self.json.extend_from_slice(br#"{"type":"symlink","target":"#);
                write_json_string(&mut self.json, target);
                self.json.push(b'}');
            }
            Node::Directory { digest, .. } => {
                let dir = self.dirs.get(digest).ok_or(ListingError::MissingDirectory(*digest))?;
                self.nar.directory_start().map_err(NarError::from)?;
                self.json.extend_from_slice(br#"{"type":"directory","entries":{"#);
                for (i, entry) in dir.entries.iter().enumerate() {
                    self.nar.entry_start(&entry.name).map_err(NarError::from)?;
                    if i > 0 {
                        self.json.push(b',');
                    }
                    write_json_string(&mut self.json, &entry.name);
                    self.json.push(b':');
                    self.node(&entry.node)?;
                    self.nar.entry_end().map_err(NarError::from)?;
                }
                self.nar.directory_end().map_err(NarError::from)?;
                self.json.extend_from_slice(b"}}");
            }
        }
        Ok(())
    }

    fn number(&mut self, n: u64) {
        self.json.extend_from_slice(n.to_string().as_bytes());
    }
}

/// Appends `s` as a JSON string, quoted and escaped as Nix 2.8 does (see the
/// [module documentation](self)).
fn write_json_string(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..0x20 => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::castore::ChunkerParams;
    use crate::castore::directory::Entry;
    use crate::nix::nar::{NarNode, write_nar};

    fn json_string(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_json_string(&mut out, s);
        out
    }

    /// Escaping as Nix 2.8's `toJSON(std::string)` does (checked against real Nix in
    /// `tests/listing.rs`).
    #[test]
    fn escapes_as_nix_2_8() {
        assert_eq!(json_string(b"plain name"), b"\"plain name\"");
        assert_eq!(json_string(br#"a"b\c"#), br#""a\"b\\c""#);
        assert_eq!(json_string(b"\n\r\t"), br#""\n\r\t""#);
        assert_eq!(json_string(b"\x00\x01\x08\x0c\x1f"), br#""\u0000\u0001\u0008\u000c\u001f""#);
        assert_eq!(json_string(b"/ \x7f"), b"\"/ \x7f\"");
        // UTF-8 and bytes that are not UTF-8 pass through; so do U+2028 and U+2029.
        assert_eq!(json_string("é\u{2028}".as_bytes()), "\"é\u{2028}\"".as_bytes());
        assert_eq!(json_string(b"\xff\x80"), b"\"\xff\x80\"");
    }

    /// A record whose tree is `node` (no directories, no chunks: a symlink or an empty file).
    fn flat_record(root: Node, nar: &NarNode) -> NarRecord {
        NarRecord {
            root,
            directories: vec![],
            nar_hash: [0; 32],
            nar_size: write_nar(nar).unwrap().len() as u64,
            nar_md5: [0; 16],
            chunker: ChunkerParams::V1,
            chunks: vec![],
        }
    }

    #[test]
    fn top_level_symlink_and_empty_file() {
        let record = flat_record(
            Node::Symlink { target: b"/nix/store/x\"y".to_vec() },
            &NarNode::Symlink { target: b"/nix/store/x\"y".to_vec() },
        );
        assert_eq!(
            nar_listing(&record).unwrap(),
            br#"{"version":1,"root":{"type":"symlink","target":"/nix/store/x\"y"}}"#
        );
        let record = flat_record(
            Node::File { digest: Digest::of(b""), size: 0, executable: true },
            &NarNode::File { executable: true, contents: vec![] },
        );
        // magic (24), `(`, `type`, `regular` (16 each), `executable` (24), `""` (8), `contents` (16),
        // the length (8): 128.
        assert_eq!(
            nar_listing(&record).unwrap(),
            br#"{"version":1,"root":{"type":"regular","size":0,"executable":true,"narOffset":128}}"#
        );
    }

    #[test]
    fn errors() {
        let empty_dir = Directory::default();
        let root = Node::Directory { digest: empty_dir.digest(), size: 0 };
        let mut record = flat_record(root, &NarNode::Directory(vec![]));
        assert!(matches!(nar_listing(&record), Err(ListingError::MissingDirectory(_))));
        record.directories.push(empty_dir);
        assert_eq!(
            nar_listing(&record).unwrap(),
            br#"{"version":1,"root":{"type":"directory","entries":{}}}"#
        );
        record.nar_size += 8;
        assert!(matches!(nar_listing(&record), Err(ListingError::SizeMismatch { .. })));
        // A tree that is no NAR (unsorted entries) is refused by the writer, not listed.
        let link = Node::Symlink { target: b"t".to_vec() };
        let unsorted = Directory {
            entries: vec![
                Entry { name: b"b".to_vec(), node: link.clone() },
                Entry { name: b"a".to_vec(), node: link },
            ],
        };
        record.root = Node::Directory { digest: unsorted.digest(), size: 0 };
        record.directories = vec![unsorted];
        assert!(matches!(nar_listing(&record), Err(ListingError::Nar(NarError::UnsortedEntries { .. }))));
    }
}
