//! A NAR writer, low-level enough to leave "holes" for file contents.
//!
//! [`NarWriter`] writes the NAR grammar piece by piece. A node is a header, what is inside it, and
//! a trailer:
//!
//! - a file: [`file_header`](NarWriter::file_header), then its `size` bytes of contents (written
//!   by the caller into [`get_mut`](NarWriter::get_mut), or not at all: the renderer puts a content
//!   segment there), then [`file_trailer`](NarWriter::file_trailer); or [`file`](NarWriter::file)
//!   for the three at once;
//! - a symlink: [`symlink`](NarWriter::symlink), all of it;
//! - a directory: [`directory_start`](NarWriter::directory_start), then for each entry
//!   [`entry_start`](NarWriter::entry_start), the entry's node, [`entry_end`](NarWriter::entry_end),
//!   then [`directory_end`](NarWriter::directory_end).
//!
//! The root node follows the magic that [`new`](NarWriter::new) writes. The writer checks the
//! order of the calls, entry names and their sorting, symlink targets and nesting depth: a misuse
//! writes nothing and returns an [`io::Error`] that carries the [`NarError`] (convert it back with
//! `NarError::from`).

use std::io::{self, Write};

use super::{
    CLOSE, CONTENTS, DIRECTORY, ENTRY, EXECUTABLE, MAGIC, MAX_DEPTH, NAME, NODE, NarError, OPEN, REGULAR,
    SYMLINK, TARGET, TYPE, check_order, padding_len, validate_name, validate_target,
};

/// An open directory: the name of its last entry, and whether that entry is still open.
#[derive(Debug)]
struct Frame {
    last: Option<Vec<u8>>,
    entry_open: bool,
}

/// A NAR writer into any [`Write`]. See the [module documentation](self).
#[derive(Debug)]
pub struct NarWriter<W: Write> {
    writer: W,
    /// A node is due: the root after the magic, or an entry's after `entry_start`.
    node_due: bool,
    /// The size of the file whose header is written and whose trailer is not.
    open_file: Option<u64>,
    /// The open directories, innermost last.
    dirs: Vec<Frame>,
}

impl<W: Write> NarWriter<W> {
    /// A writer into `writer`; writes the magic `nix-archive-1`. The root node is due next.
    pub fn new(writer: W) -> io::Result<Self> {
        let mut this = Self { writer, node_due: true, open_file: None, dirs: Vec::new() };
        this.write_str(MAGIC)?;
        Ok(this)
    }

    /// Writes a regular file's node up to its contents: `( type regular [executable ""] contents
    /// <size>`. The caller then supplies exactly `size` bytes of contents, and calls
    /// [`file_trailer`](Self::file_trailer).
    pub fn file_header(&mut self, executable: bool, size: u64) -> io::Result<()> {
        self.begin_node()?;
        self.write_strs(&[OPEN, TYPE, REGULAR])?;
        if executable {
            self.write_strs(&[EXECUTABLE, b""])?;
        }
        self.write_str(CONTENTS)?;
        self.writer.write_all(&size.to_le_bytes())?;
        self.open_file = Some(size);
        Ok(())
    }

    /// Ends a regular file of `size` bytes (the size given to [`file_header`](Self::file_header)):
    /// writes the padding of its contents, then `)`.
    pub fn file_trailer(&mut self, size: u64) -> io::Result<()> {
        if self.open_file != Some(size) {
            return Err(misuse("file_trailer without a file_header of that size"));
        }
        self.writer.write_all(&[0; 8][..padding_len(size)])?;
        self.write_str(CLOSE)?;
        self.open_file = None;
        Ok(())
    }

    /// Writes a whole regular file node: header, contents and trailer.
    pub fn file(&mut self, executable: bool, contents: &[u8]) -> io::Result<()> {
        let size = contents.len() as u64;
        self.file_header(executable, size)?;
        self.writer.write_all(contents)?;
        self.file_trailer(size)
    }

    /// Writes a whole symlink node: `( type symlink target <target> )`.
    pub fn symlink(&mut self, target: &[u8]) -> io::Result<()> {
        validate_target(target)?;
        self.begin_node()?;
        self.write_strs(&[OPEN, TYPE, SYMLINK, TARGET, target, CLOSE])
    }

    /// Begins a directory node: `( type directory`. Entries follow, then
    /// [`directory_end`](Self::directory_end).
    pub fn directory_start(&mut self) -> io::Result<()> {
        if self.dirs.len() >= MAX_DEPTH {
            return Err(NarError::TooDeep.into());
        }
        self.begin_node()?;
        self.write_strs(&[OPEN, TYPE, DIRECTORY])?;
        self.dirs.push(Frame { last: None, entry_open: false });
        Ok(())
    }

    /// Begins an entry of the innermost open directory: `entry ( name <name> node`. Its node is
    /// due next, then [`entry_end`](Self::entry_end). Names must be valid and strictly increasing.
    pub fn entry_start(&mut self, name: &[u8]) -> io::Result<()> {
        validate_name(name)?;
        if self.node_due || self.open_file.is_some() {
            return Err(misuse("entry_start inside an unfinished node"));
        }
        let Some(frame) = self.dirs.last_mut() else {
            return Err(misuse("entry_start outside a directory"));
        };
        if frame.entry_open {
            return Err(misuse("entry_start inside an open entry"));
        }
        check_order(frame.last.as_deref(), name)?;
        frame.last = Some(name.to_vec());
        frame.entry_open = true;
        self.node_due = true;
        self.write_strs(&[ENTRY, OPEN, NAME, name, NODE])
    }

    /// Ends the current directory entry, after its node: `)`.
    pub fn entry_end(&mut self) -> io::Result<()> {
        if self.node_due || self.open_file.is_some() {
            return Err(misuse("entry_end before its node is complete"));
        }
        match self.dirs.last_mut() {
            Some(frame) if frame.entry_open => frame.entry_open = false,
            _ => return Err(misuse("entry_end without an open entry")),
        }
        self.write_str(CLOSE)
    }

    /// Ends the innermost open directory: `)`.
    pub fn directory_end(&mut self) -> io::Result<()> {
        if self.node_due || self.open_file.is_some() {
            return Err(misuse("directory_end inside an unfinished node"));
        }
        match self.dirs.last() {
            Some(frame) if !frame.entry_open => self.dirs.pop(),
            _ => return Err(misuse("directory_end without an open directory")),
        };
        self.write_str(CLOSE)
    }

    /// Whether the root node is complete.
    pub fn is_complete(&self) -> bool {
        !self.node_due && self.open_file.is_none() && self.dirs.is_empty()
    }

    /// The underlying writer (e.g. to write a file's contents, or to take the bytes so far).
    pub fn get_ref(&self) -> &W {
        &self.writer
    }

    /// The underlying writer, mutably (e.g. to write a file's contents, or to take the bytes so
    /// far). Writing framing into it directly breaks the NAR.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.writer
    }

    /// Checks that the root node is complete, flushes, and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.is_complete() {
            return Err(misuse("finish before the root node is complete"));
        }
        self.writer.flush()?;
        Ok(self.writer)
    }

    /// The underlying writer, whether or not the NAR is complete.
    pub fn into_inner(self) -> W {
        self.writer
    }

    /// Checks that a node is due, and marks it written.
    fn begin_node(&mut self) -> io::Result<()> {
        if !self.node_due {
            return Err(misuse("a node where none is due"));
        }
        self.node_due = false;
        Ok(())
    }

    /// Writes strings, each as length, bytes and padding.
    fn write_strs(&mut self, strs: &[&[u8]]) -> io::Result<()> {
        strs.iter().try_for_each(|s| self.write_str(s))
    }

    /// Writes one string: length, bytes and padding.
    fn write_str(&mut self, s: &[u8]) -> io::Result<()> {
        let len = s.len() as u64;
        self.writer.write_all(&len.to_le_bytes())?;
        self.writer.write_all(s)?;
        self.writer.write_all(&[0; 8][..padding_len(len)])
    }
}

/// The error of a call out of the grammar's order.
fn misuse(what: &'static str) -> io::Error {
    NarError::WriterMisuse(what).into()
}
