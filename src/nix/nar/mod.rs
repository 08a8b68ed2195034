//! The NAR (Nix ARchive) format: a streaming reader, a writer, and an in-memory tree for tests.
//!
//! A NAR is a sequence of *strings*: a little-endian u64 length, the bytes, and zero bytes up to
//! the next multiple of 8. It starts with the string `nix-archive-1`, then one node:
//!
//! ```text
//! node      = "(" "type" ( regular | symlink | directory ) ")"
//! regular   = "regular" [ "executable" "" ] "contents" <contents>
//! symlink   = "symlink" "target" <target>
//! directory = "directory" { "entry" "(" "name" <name> "node" node ")" }
//! ```
//!
//! Directory entries are strictly sorted by the bytes of their names, and names are non-empty,
//! without `/` or NUL, and not `.` or `..`. A NAR is canonical: one tree has exactly one NAR, so
//! [`reader::NarReader`] accepts nothing that [`writer::NarWriter`] would not write. Lengths are
//! bounded by the `MAX_*` constants below, so that a hostile NAR cannot make a reader allocate
//! without limit.

pub mod reader;
pub mod tree;
pub mod writer;

pub use reader::{NarEvent, NarReader};
pub use tree::{NarNode, read_nar_tree, write_nar};
pub use writer::NarWriter;

/// The first string of every NAR.
pub const MAGIC: &[u8] = b"nix-archive-1";
/// Opens a node or a directory entry.
pub const OPEN: &[u8] = b"(";
/// Closes a node or a directory entry.
pub const CLOSE: &[u8] = b")";
/// Precedes a node's type.
pub const TYPE: &[u8] = b"type";
/// The type of a regular file.
pub const REGULAR: &[u8] = b"regular";
/// Marks a regular file executable; followed by the empty string.
pub const EXECUTABLE: &[u8] = b"executable";
/// Precedes a regular file's contents.
pub const CONTENTS: &[u8] = b"contents";
/// The type of a symlink.
pub const SYMLINK: &[u8] = b"symlink";
/// Precedes a symlink's target.
pub const TARGET: &[u8] = b"target";
/// The type of a directory.
pub const DIRECTORY: &[u8] = b"directory";
/// Begins a directory entry.
pub const ENTRY: &[u8] = b"entry";
/// Precedes a directory entry's name.
pub const NAME: &[u8] = b"name";
/// Precedes a directory entry's node.
pub const NODE: &[u8] = b"node";

/// The longest token a reader accepts where it expects one of the tokens above. The longest real
/// token, `nix-archive-1`, has 13 bytes.
pub const MAX_TOKEN_LEN: u64 = 64;
/// The longest directory entry name, in bytes (`NAME_MAX` on Linux and macOS).
pub const MAX_NAME_LEN: u64 = 255;
/// The longest symlink target, in bytes (`PATH_MAX` on Linux, less its NUL).
pub const MAX_TARGET_LEN: u64 = 4095;
/// The deepest nesting of directories, the root directory counting as 1.
pub const MAX_DEPTH: usize = 256;

/// Why a NAR is invalid, or could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NarError {
    /// The input does not start with the string `nix-archive-1`.
    #[error("not a NAR: bad magic")]
    BadMagic,
    /// A token other than the one the grammar allows here.
    #[error("expected {expected}, found {found:?}")]
    UnexpectedToken {
        /// What the grammar allows here, e.g. `"entry" or ")"`.
        expected: &'static str,
        /// The token found (lossily decoded; at most [`MAX_TOKEN_LEN`] bytes).
        found: String,
    },
    /// A string's padding holds a byte other than zero.
    #[error("non-zero padding byte")]
    NonZeroPadding,
    /// A directory entry's name sorts before the previous entry's.
    #[error("directory entry {name:?} is not sorted after {previous:?}")]
    UnsortedEntries {
        /// The previous entry's name (lossily decoded).
        previous: String,
        /// This entry's name (lossily decoded).
        name: String,
    },
    /// Two entries of one directory have the same name.
    #[error("duplicate directory entry {0:?}")]
    DuplicateEntry(String),
    /// A directory entry name that is empty, `.`, `..`, or holds `/` or NUL.
    #[error("invalid directory entry name {0:?}")]
    InvalidName(String),
    /// A symlink target that is empty or holds NUL.
    #[error("invalid symlink target {0:?}")]
    InvalidTarget(String),
    /// A string longer than its bound.
    #[error("{what} is {len} bytes long, more than {max}")]
    TooLong {
        /// What the string is: `token`, `name` or `symlink target`.
        what: &'static str,
        /// Its length as the NAR states it.
        len: u64,
        /// The bound: [`MAX_TOKEN_LEN`], [`MAX_NAME_LEN`] or [`MAX_TARGET_LEN`].
        max: u64,
    },
    /// Directories nested more than [`MAX_DEPTH`] deep.
    #[error("directories nested more than {MAX_DEPTH} deep")]
    TooDeep,
    /// The input ends before the root node does.
    #[error("unexpected end of NAR")]
    UnexpectedEof,
    /// Bytes follow the end of the root node.
    #[error("trailing data after the end of the NAR")]
    TrailingData,
    /// An earlier call of this reader failed (or was cancelled): it cannot continue.
    #[error("NAR reader used after an error")]
    ReaderFailed,
    /// A writer was called out of the order of the grammar (a bug in the caller, not bad input).
    #[error("NAR writer misused: {0}")]
    WriterMisuse(&'static str),
    /// The underlying reader or writer failed.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for NarError {
    /// Wraps an I/O error; an error that carries a `NarError` (as [`NarWriter`]'s do) is unwrapped
    /// back into it, and an unexpected EOF becomes [`NarError::UnexpectedEof`].
    fn from(error: std::io::Error) -> Self {
        match error.downcast::<NarError>() {
            Ok(error) => error,
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => NarError::UnexpectedEof,
            Err(error) => NarError::Io(error),
        }
    }
}

impl From<NarError> for std::io::Error {
    /// Carries a `NarError` through `std::io` interfaces; [`NarError::Io`] is unwrapped.
    fn from(error: NarError) -> Self {
        match error {
            NarError::Io(error) => error,
            NarError::UnexpectedEof => {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, NarError::UnexpectedEof)
            }
            error => std::io::Error::new(std::io::ErrorKind::InvalidData, error),
        }
    }
}

/// The number of zero bytes that pad a string of `len` bytes to a multiple of 8.
pub fn padding_len(len: u64) -> usize {
    // Below 8, so the cast cannot truncate.
    ((8 - len % 8) % 8) as usize
}

/// The length of a string of `len` bytes in a NAR: length field, bytes and padding.
pub fn string_len(len: u64) -> u64 {
    8 + len + padding_len(len) as u64
}

/// Checks a directory entry name: non-empty, at most [`MAX_NAME_LEN`] bytes, not `.` or `..`,
/// without `/` or NUL.
pub fn validate_name(name: &[u8]) -> Result<(), NarError> {
    if name.len() as u64 > MAX_NAME_LEN {
        return Err(NarError::TooLong { what: "name", len: name.len() as u64, max: MAX_NAME_LEN });
    }
    if name.is_empty() || name == b"." || name == b".." || name.iter().any(|&b| b == b'/' || b == 0) {
        return Err(NarError::InvalidName(lossy(name)));
    }
    Ok(())
}

/// Checks a symlink target: non-empty, at most [`MAX_TARGET_LEN`] bytes, without NUL.
pub fn validate_target(target: &[u8]) -> Result<(), NarError> {
    if target.len() as u64 > MAX_TARGET_LEN {
        return Err(NarError::TooLong {
            what: "symlink target",
            len: target.len() as u64,
            max: MAX_TARGET_LEN,
        });
    }
    if target.is_empty() || target.contains(&0) {
        return Err(NarError::InvalidTarget(lossy(target)));
    }
    Ok(())
}

/// Checks that directory entry `name` may follow `previous`: strictly greater, byte-wise.
pub fn check_order(previous: Option<&[u8]>, name: &[u8]) -> Result<(), NarError> {
    match previous {
        Some(previous) if previous == name => Err(NarError::DuplicateEntry(lossy(name))),
        Some(previous) if previous > name => {
            Err(NarError::UnsortedEntries { previous: lossy(previous), name: lossy(name) })
        }
        _ => Ok(()),
    }
}

/// Decodes bytes for an error message (they are bounded by the `MAX_*` constants).
fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests;
