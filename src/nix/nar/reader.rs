//! A streaming, validating NAR reader.
//!
//! [`NarReader`] turns a NAR into a sequence of [`NarEvent`]s. File contents are never buffered:
//! after a [`NarEvent::File`] the caller reads them with [`NarReader::read_contents`] (or not at
//! all: the next call to [`NarReader::next`] skips them). Every rule of the format is checked as
//! the bytes arrive, so a NAR that reads to the end without an error is canonical.

use std::mem;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{
    CLOSE, CONTENTS, DIRECTORY, ENTRY, EXECUTABLE, MAGIC, MAX_DEPTH, MAX_NAME_LEN, MAX_TARGET_LEN,
    MAX_TOKEN_LEN, NAME, NODE, NarError, OPEN, REGULAR, SYMLINK, TARGET, TYPE, check_order, padding_len,
    validate_name, validate_target,
};

/// One step through a NAR, in the order of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarEvent {
    /// A regular file begins; `size` bytes of contents follow (read with
    /// [`NarReader::read_contents`]).
    File {
        /// The directory entry's name, or `None` for the root node.
        name: Option<Bytes>,
        /// Whether the file is executable.
        executable: bool,
        /// The length of its contents.
        size: u64,
    },
    /// A symlink.
    Symlink {
        /// The directory entry's name, or `None` for the root node.
        name: Option<Bytes>,
        /// Where it points: non-empty, without NUL, at most [`MAX_TARGET_LEN`] bytes.
        target: Bytes,
    },
    /// A directory begins; its entries follow as events, then [`NarEvent::EndDirectory`].
    Directory {
        /// The directory entry's name, or `None` for the root node.
        name: Option<Bytes>,
    },
    /// The innermost open directory ends.
    EndDirectory,
}

/// Where the reader is in the archive.
#[derive(Debug)]
enum State {
    /// Nothing read yet.
    Start,
    /// Inside a regular file of `size` bytes, `remaining` of which are unread.
    Contents { size: u64, remaining: u64 },
    /// A file's contents and padding are read; its `)` is next.
    FileEnd,
    /// A node ended: next is the `)` of its directory entry, or, for the root, the end of input.
    NodeEnd,
    /// Inside a directory: next is `entry` or the directory's `)`.
    InDirectory,
    /// The root node ended and the input is at EOF.
    Done,
    /// An operation failed or was cancelled; the reader cannot continue.
    Failed,
}

/// A token read where the grammar expects one: at most [`MAX_TOKEN_LEN`] bytes, on the stack.
struct Token {
    bytes: [u8; MAX_TOKEN_LEN as usize],
    len: usize,
}

impl Token {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn is(&self, token: &[u8]) -> bool {
        self.as_bytes() == token
    }

    /// The token as text for an error message.
    fn lossy(&self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
}

/// A streaming NAR reader over any [`AsyncRead`]. See the [module documentation](self).
///
/// It reads the framing in small pieces (8 bytes for a length, a few more for a token): give it a
/// buffered reader (e.g. [`tokio::io::BufReader`]) if small reads of the source are costly.
///
/// Errors are final: after one, every call fails with [`NarError::ReaderFailed`]. The futures of
/// [`next`](Self::next) and [`read_contents`](Self::read_contents) are not cancel-safe: dropping
/// one before it completes leaves the reader failed in the same way.
#[derive(Debug)]
pub struct NarReader<R> {
    reader: R,
    state: State,
    /// One frame per open directory, innermost last: the name of its last entry so far.
    dirs: Vec<Option<Bytes>>,
}

impl<R: AsyncRead + Unpin> NarReader<R> {
    /// A reader of the NAR that `reader` yields, from its first byte.
    pub fn new(reader: R) -> Self {
        Self { reader, state: State::Start, dirs: Vec::new() }
    }

    /// The next event; `Ok(None)` once the root node is complete *and* the input is at EOF
    /// (bytes after the root node are [`NarError::TrailingData`]).
    ///
    /// If the caller did not read all of a file's contents, this reads and discards the rest.
    pub async fn next(&mut self) -> Result<Option<NarEvent>, NarError> {
        let mut state = mem::replace(&mut self.state, State::Failed);
        loop {
            state = match state {
                State::Start => {
                    self.read_magic().await?;
                    return self.read_node(None).await;
                }
                State::Contents { size, remaining } => {
                    self.skip(remaining).await?;
                    self.read_padding(size).await?;
                    State::FileEnd
                }
                State::FileEnd => {
                    self.expect(CLOSE).await?;
                    State::NodeEnd
                }
                State::NodeEnd if self.dirs.is_empty() => {
                    self.expect_eof().await?;
                    self.state = State::Done;
                    return Ok(None);
                }
                State::NodeEnd => {
                    self.expect(CLOSE).await?; // closes the directory entry
                    State::InDirectory
                }
                State::InDirectory => return self.read_entry().await,
                State::Done => {
                    self.state = State::Done;
                    return Ok(None);
                }
                State::Failed => return Err(NarError::ReaderFailed),
            }
        }
    }

    /// Reads the current file's contents into `buf`, returning how many bytes it read: `Ok(0)` at
    /// the end of the contents (also when `buf` is empty, or when no file is being read).
    ///
    /// When the last byte of the contents has been read, this also reads and checks the padding
    /// that follows it.
    pub async fn read_contents(&mut self, buf: &mut [u8]) -> Result<usize, NarError> {
        let (size, remaining) = match self.state {
            State::Contents { size, remaining } => (size, remaining),
            State::Failed => return Err(NarError::ReaderFailed),
            _ => return Ok(0),
        };
        if remaining > 0 && buf.is_empty() {
            return Ok(0);
        }
        self.state = State::Failed;
        let want = buf.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let read = match want {
            0 => 0,
            want => match self.reader.read(&mut buf[..want]).await? {
                0 => return Err(NarError::UnexpectedEof),
                read => read,
            },
        };
        let remaining = remaining - read as u64;
        self.state = if remaining == 0 {
            self.read_padding(size).await?;
            State::FileEnd
        } else {
            State::Contents { size, remaining }
        };
        Ok(read)
    }

    /// The underlying reader, positioned wherever reading stopped.
    pub fn into_inner(self) -> R {
        self.reader
    }

    /// Reads the magic string: anything but `nix-archive-1` is [`NarError::BadMagic`], and input
    /// that ends while it still matches is [`NarError::UnexpectedEof`].
    async fn read_magic(&mut self) -> Result<(), NarError> {
        let mut expected = [0u8; 24];
        expected[..8].copy_from_slice(&(MAGIC.len() as u64).to_le_bytes());
        expected[8..8 + MAGIC.len()].copy_from_slice(MAGIC);
        let mut got = [0u8; 24];
        let mut filled = 0;
        while filled < got.len() {
            match self.reader.read(&mut got[filled..]).await? {
                0 => break,
                n => filled += n,
            }
            if got[..filled] != expected[..filled] {
                return Err(NarError::BadMagic);
            }
        }
        if filled < got.len() {
            return Err(NarError::UnexpectedEof);
        }
        Ok(())
    }

    /// Reads the beginning of a node, `( type …`: up to its contents for a file, to its end for a
    /// symlink, up to its first entry for a directory. `name` is its entry's name (`None` for the
    /// root).
    async fn read_node(&mut self, name: Option<Bytes>) -> Result<Option<NarEvent>, NarError> {
        self.expect(OPEN).await?;
        self.expect(TYPE).await?;
        let kind = self.read_token().await?;
        let (event, state) = if kind.is(REGULAR) {
            let mut token = self.read_token().await?;
            let executable = token.is(EXECUTABLE);
            if executable {
                self.expect(b"").await?;
                token = self.read_token().await?;
            }
            if !token.is(CONTENTS) {
                let expected = if executable { "\"contents\"" } else { "\"executable\" or \"contents\"" };
                return Err(NarError::UnexpectedToken { expected, found: token.lossy() });
            }
            let size = self.read_u64().await?;
            (NarEvent::File { name, executable, size }, State::Contents { size, remaining: size })
        } else if kind.is(SYMLINK) {
            self.expect(TARGET).await?;
            let target = self.read_string("symlink target", MAX_TARGET_LEN).await?;
            validate_target(&target)?;
            self.expect(CLOSE).await?;
            (NarEvent::Symlink { name, target }, State::NodeEnd)
        } else if kind.is(DIRECTORY) {
            if self.dirs.len() >= MAX_DEPTH {
                return Err(NarError::TooDeep);
            }
            self.dirs.push(None);
            (NarEvent::Directory { name }, State::InDirectory)
        } else {
            return Err(NarError::UnexpectedToken {
                expected: "\"regular\", \"symlink\" or \"directory\"",
                found: kind.lossy(),
            });
        };
        self.state = state;
        Ok(Some(event))
    }

    /// Inside a directory: reads its next entry up to the entry's node, or the directory's end.
    async fn read_entry(&mut self) -> Result<Option<NarEvent>, NarError> {
        let token = self.read_token().await?;
        if token.is(CLOSE) {
            self.dirs.pop();
            self.state = State::NodeEnd;
            return Ok(Some(NarEvent::EndDirectory));
        }
        if !token.is(ENTRY) {
            return Err(NarError::UnexpectedToken { expected: "\"entry\" or \")\"", found: token.lossy() });
        }
        self.expect(OPEN).await?;
        self.expect(NAME).await?;
        let name = self.read_string("name", MAX_NAME_LEN).await?;
        validate_name(&name)?;
        let Some(last) = self.dirs.last_mut() else {
            return Err(NarError::ReaderFailed); // InDirectory always has an open directory
        };
        check_order(last.as_deref(), &name)?;
        *last = Some(name.clone());
        self.expect(NODE).await?;
        self.read_node(Some(name)).await
    }

    /// Reads a token and checks that it is `token`.
    async fn expect(&mut self, token: &'static [u8]) -> Result<(), NarError> {
        let found = self.read_token().await?;
        if found.is(token) {
            Ok(())
        } else {
            Err(NarError::UnexpectedToken { expected: quoted(token), found: found.lossy() })
        }
    }

    /// Reads a string where the grammar expects a token.
    async fn read_token(&mut self) -> Result<Token, NarError> {
        let len = self.read_u64().await?;
        if len > MAX_TOKEN_LEN {
            return Err(NarError::TooLong { what: "token", len, max: MAX_TOKEN_LEN });
        }
        let mut token = Token { bytes: [0; MAX_TOKEN_LEN as usize], len: len as usize };
        self.reader.read_exact(&mut token.bytes[..token.len]).await?;
        self.read_padding(len).await?;
        Ok(token)
    }

    /// Reads a string of at most `max` bytes (`what` names it in errors).
    async fn read_string(&mut self, what: &'static str, max: u64) -> Result<Bytes, NarError> {
        let len = self.read_u64().await?;
        if len > max {
            return Err(NarError::TooLong { what, len, max });
        }
        let mut bytes = vec![0; len as usize];
        self.reader.read_exact(&mut bytes).await?;
        self.read_padding(len).await?;
        Ok(bytes.into())
    }

    /// Reads a little-endian u64.
    async fn read_u64(&mut self) -> Result<u64, NarError> {
        let mut bytes = [0; 8];
        self.reader.read_exact(&mut bytes).await?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Reads and checks the padding after a string of `len` bytes.
    async fn read_padding(&mut self, len: u64) -> Result<(), NarError> {
        let mut padding = [0; 8];
        let padding = &mut padding[..padding_len(len)];
        self.reader.read_exact(padding).await?;
        if padding.iter().any(|&b| b != 0) {
            return Err(NarError::NonZeroPadding);
        }
        Ok(())
    }

    /// Reads and discards `len` bytes.
    async fn skip(&mut self, len: u64) -> Result<(), NarError> {
        let skipped = tokio::io::copy(&mut (&mut self.reader).take(len), &mut tokio::io::sink()).await?;
        if skipped < len {
            return Err(NarError::UnexpectedEof);
        }
        Ok(())
    }

    /// Checks that the input is at its end.
    async fn expect_eof(&mut self) -> Result<(), NarError> {
        match self.reader.read(&mut [0; 1]).await? {
            0 => Ok(()),
            _ => Err(NarError::TrailingData),
        }
    }
}

/// A token as it is shown in [`NarError::UnexpectedToken`].
fn quoted(token: &[u8]) -> &'static str {
    match token {
        b"(" => "\"(\"",
        b")" => "\")\"",
        b"type" => "\"type\"",
        b"contents" => "\"contents\"",
        b"target" => "\"target\"",
        b"name" => "\"name\"",
        b"node" => "\"node\"",
        b"" => "\"\"",
        _ => "another token",
    }
}
