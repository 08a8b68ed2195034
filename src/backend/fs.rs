//! A backend in a local directory: the embedded default, so `nargate serve` needs no server.
//!
//! # Layout on disk
//!
//! A key is split at `/` into components, and each component becomes one path element (or
//! several, when long). Within a name, the bytes `a`–`z`, `0`–`9`, `_` and `-` stand for
//! themselves and every other byte is written `%XX` (two uppercase hex digits) — upper-case letters
//! too, so keys that differ only in case stay distinct on case-insensitive file systems. The
//! escaped name then gets a suffix that says what it is:
//!
//! - `<esc>.o`: an object file, holding the key's last component;
//! - `<esc>.d`: a directory, for a component followed by `/`;
//! - `<esc>.p`: a directory holding the next [`PIECE_LEN`] bytes of a long component, which goes
//!   on inside it (a file name may be 255 bytes at most; escaping can triple a component).
//!
//! So `a/b` is `a.d/b.o` and `a/b/c` is `a.d/b.d/c.o`: both can exist. An empty component is an
//! empty name (`a//b` is `a.d/.d/b.o`; a trailing `/` ends in `.o`). A component is cut into pieces
//! of exactly [`PIECE_LEN`] bytes while at least that many remain, so the last piece is always
//! shorter (possibly empty). Escaped names never hold a `.`, so the suffix is unambiguous, and
//! names without one of these suffixes (such as the temporary area `.tmp`) are never objects.
//!
//! An object file starts with a header, followed by the data verbatim. Version 2, which this
//! backend writes, is (integers little-endian):
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | the magic `NGFO` |
//! | 4 | 1 | the version, 2 |
//! | 5 | 3 | zero |
//! | 8 | 16 | the MD5 of the data (the ETag) |
//! | 24 | 4 | `n`, the length of the attribute block (u32, at most [`MAX_ATTRIBUTES_LEN`]) |
//! | 28 | `n` | the attribute block |
//! | 28 + `n` | … | the data |
//!
//! The attribute block is the object's [`Attributes`] in `postcard` (the encoding of every
//! record), or empty for none (the default: records and chunks carry none).
//! Version 1 (files written before attributes existed, still read) is the first [`HEADER_LEN`]
//! bytes of that with version 1, and the data right after them. HEAD and LIST read only the
//! first 28 bytes (the size is the file's length less the data's offset), GET and stat the
//! attribute block too; ranged GETs seek past the header. LastModified is the file's mtime.
//!
//! # Atomic writes
//!
//! A PUT writes a temporary file in `<root>/.tmp`, fsyncs it, renames it onto the object's path
//! and fsyncs the directory. A streaming PUT writes the header with a zero MD5 first, then the
//! body as it arrives, and writes the MD5 into the header once the body has ended (and matched
//! the client's Content-MD5), before the fsync (metadata known only at the body's end —
//! [`PutOptions::late_metadata`] — makes a new temporary file instead, the final header followed by
//! the data copied from the first); on any error, or when the put is dropped, the
//! temporary file is removed. So a reader sees the old object or the new one, and a crash leaves at
//! most a stray temporary file (removed when a backend is next opened, once it is an hour old).
//! DELETE removes the file and any directories it leaves empty.
//!
//! # Listing
//!
//! The children of a directory are sorted by the key bytes they stand for — an object by its
//! component, a `.d` directory by its component followed by `/`, a `.p` directory by its piece —
//! and, thanks to the fixed piece length, no two siblings' key ranges interleave, so a pre-order
//! walk yields keys in byte order. The walk skips subtrees outside the prefix, before the start
//! key or inside a common prefix already returned, and stops once the page is full plus one key.
//! A page reads every entry of the directories on its way (directories are unordered), but only
//! the headers of the objects it returns.
//!
//! A key can take about three times its length as a path (escapes, suffixes), so the root's own
//! path should stay under 1,000 bytes to keep every path within Linux's 4,096.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{
    Attributes, Backend, BackendError, ByteStream, GetResult, ListPage, ListRequest, ObjectMeta, PutOptions,
    resolve_range, validate_key,
};

/// The length in bytes of the fixed header that starts every object file: all of a version-1
/// header, the part before the attribute block's length in version 2.
pub const HEADER_LEN: u64 = 24;

/// Where the MD5 sits in a header.
const MD5_OFFSET: u64 = 8;

/// The length of a version-2 header without its attribute block.
const V2_PREFIX_LEN: u64 = HEADER_LEN + 4;

/// The longest attribute block a header may hold.
pub const MAX_ATTRIBUTES_LEN: u32 = 64 * 1024;

/// The magic that starts every object file.
const MAGIC: &[u8; 4] = b"NGFO";

/// The version of the object file format that this backend writes.
const VERSION: u8 = 2;

/// The version of object files written before attributes existed (read, not written).
const VERSION_1: u8 = 1;

/// The number of key bytes in each `.p` piece of a long component (at most 240 bytes escaped).
pub const PIECE_LEN: usize = 80;

/// The directory under the root that holds files being written.
const TMP_DIR: &str = ".tmp";

/// How old a temporary file must be before opening a backend removes it.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// How many times a PUT retries when a concurrent DELETE removed a directory it made.
const RENAME_ATTEMPTS: usize = 16;

/// The size of the buffers a GET streams the file in.
const READ_BUF: usize = 256 * 1024;

/// Ranges up to this size are read whole, in one blocking call; larger ones are streamed.
const WHOLE_READ_MAX: u64 = 16 << 20;

/// Reads `len` bytes at `offset` of the object file of `key`.
fn read_at(key: &str, file: &File, offset: u64, len: u64) -> Result<Bytes, BackendError> {
    use std::os::unix::fs::FileExt;
    let mut data = vec![0u8; len as usize];
    file.read_exact_at(&mut data, offset)
        .map_err(|source| BackendError::Io { key: key.to_owned(), source })?;
    Ok(Bytes::from(data))
}

/// An object bucket in a local directory.
#[derive(Debug, Clone)]
pub struct FsBackend {
    root: PathBuf,
}

impl FsBackend {
    /// Opens (creating it if needed) a backend rooted at `root`, and removes temporary files
    /// that writes interrupted at least an hour ago left behind.
    pub fn new(root: PathBuf) -> Result<Self, BackendError> {
        let io_err = |source| BackendError::Io { key: root.display().to_string(), source };
        fs::create_dir_all(root.join(TMP_DIR)).map_err(io_err)?;
        remove_stale_tmp(&root.join(TMP_DIR));
        Ok(FsBackend { root })
    }

    /// The directory this backend keeps its objects in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs blocking file-system work on the blocking thread pool.
    async fn blocking<T, F>(&self, key: &str, work: F) -> Result<T, BackendError>
    where
        F: FnOnce(&Path) -> Result<T, BackendError> + Send + 'static,
        T: Send + 'static,
    {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || work(&root))
            .await
            .map_err(|e| BackendError::Io { key: key.to_owned(), source: io::Error::other(e) })?
    }
}

#[async_trait]
impl Backend for FsBackend {
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, BackendError> {
        validate_key(key)?;
        let owned = key.to_owned();
        let (file, meta, header, attributes, range, whole) = self
            .blocking(key, move |root| {
                let (file, meta, header) = open_object(root, &owned)?;
                let attributes = read_attributes(&owned, &file, &header)?;
                let range = resolve_range(&owned, range, meta.size)?;
                // Chunks and records: read in the same blocking call, into one buffer.
                let whole = (range.end - range.start <= WHOLE_READ_MAX)
                    .then(|| {
                        read_at(&owned, &file, header.data_offset + range.start, range.end - range.start)
                    })
                    .transpose()?;
                Ok((file, meta, header, attributes, range, whole))
            })
            .await?;
        if let Some(data) = whole {
            let body = futures::stream::once(async move { Ok(data) }).boxed();
            return Ok(GetResult { meta, range, attributes, body });
        }
        let mut file = tokio::fs::File::from_std(file);
        file.seek(SeekFrom::Start(header.data_offset + range.start))
            .await
            .map_err(|source| BackendError::Io { key: key.to_owned(), source })?;
        let owned = key.to_owned();
        let body = ReaderStream::with_capacity(file.take(range.end - range.start), READ_BUF)
            .map_err(move |source| BackendError::Io { key: owned.clone(), source })
            .boxed();
        Ok(GetResult { meta, range, attributes, body })
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<ObjectMeta, BackendError> {
        validate_key(key)?;
        let owned = key.to_owned();
        self.blocking(key, move |root| write_object(root, &owned, &body)).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, BackendError> {
        validate_key(key)?;
        let owned = key.to_owned();
        self.blocking(key, move |root| open_object(root, &owned).map(|(_, meta, _)| meta)).await
    }

    async fn stat(&self, key: &str) -> Result<(ObjectMeta, Attributes), BackendError> {
        validate_key(key)?;
        let owned = key.to_owned();
        self.blocking(key, move |root| {
            let (file, meta, header) = open_object(root, &owned)?;
            Ok((meta, read_attributes(&owned, &file, &header)?))
        })
        .await
    }

    async fn put_stream(
        &self,
        key: &str,
        mut body: ByteStream,
        options: PutOptions,
    ) -> Result<ObjectMeta, BackendError> {
        use tokio::io::AsyncWriteExt;
        validate_key(key)?;
        let io_err = |source| BackendError::Io { key: key.to_owned(), source };
        // The MD5 is not known yet: a zero one stands in until the body has ended.
        let header = encode_header(&[0; 16], &encode_attributes(key, &options.attributes)?);
        let data_offset = header.len() as u64;
        let owned = key.to_owned();
        let (tmp, file) = self
            .blocking(key, move |root| {
                let io_err = |source| BackendError::Io { key: owned.clone(), source };
                let mut tmp = new_tmp(root).map_err(io_err)?;
                tmp.write_all(&header).map_err(io_err)?;
                let file = tmp.as_file().try_clone().map_err(io_err)?;
                // From here on the path alone removes the file when the put fails or is dropped.
                Ok((tmp.into_temp_path(), file))
            })
            .await?;
        let mut file = tokio::fs::File::from_std(file);
        let mut md5 = Md5::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            md5.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(io_err)?;
        }
        file.flush().await.map_err(io_err)?;
        let md5: [u8; 16] = md5.finalize().into();
        options.check_md5(key, &md5)?;
        // Metadata that came with the body's end makes a longer header: then the data moves to a
        // file of its own behind it (rare: trailer checksums of plain objects).
        let attributes = options.final_attributes();
        let late_header = (attributes != options.attributes)
            .then(|| encode_attributes(key, &attributes).map(|block| encode_header(&md5, &block)))
            .transpose()?;
        let file = file.into_std().await;
        let owned = key.to_owned();
        self.blocking(key, move |root| {
            use std::os::unix::fs::FileExt;
            let io_err = |source| BackendError::Io { key: owned.clone(), source };
            let (file, tmp) = match late_header {
                None => {
                    file.write_all_at(&md5, MD5_OFFSET).map_err(io_err)?;
                    (file, tmp)
                }
                Some(header) => rewrite_header(root, &file, data_offset, &header).map_err(io_err)?,
            };
            file.sync_all().map_err(io_err)?;
            let last_modified = file.metadata().and_then(|m| m.modified()).map_err(io_err)?;
            drop(file);
            persist(root, &owned, tmp).map_err(io_err)?;
            Ok(ObjectMeta { key: owned.clone(), size, etag: hex::encode(md5), last_modified })
        })
        .await
    }

    async fn list(&self, request: &ListRequest) -> Result<ListPage, BackendError> {
        let owned = request.clone();
        self.blocking(&request.prefix, move |root| list_page(root, &owned)).await
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        validate_key(key)?;
        let owned = key.to_owned();
        self.blocking(key, move |root| delete_object(root, &owned)).await
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and names

/// What a name in the tree stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `.o`: an object file; the name is the key's last component (or its last piece).
    Object,
    /// `.d`: a directory for a component followed by `/`.
    Dir,
    /// `.p`: a directory for a [`PIECE_LEN`]-byte piece of a component that goes on inside it.
    Piece,
}

impl Kind {
    fn suffix(self) -> &'static str {
        match self {
            Kind::Object => ".o",
            Kind::Dir => ".d",
            Kind::Piece => ".p",
        }
    }
}

/// Whether `b` stands for itself in a name.
fn is_plain(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
}

/// The name for key bytes `part` of the given kind.
fn encode_name(part: &[u8], kind: Kind) -> String {
    let mut name = String::with_capacity(part.len() * 3 + 2);
    for &b in part {
        if is_plain(b) {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    name.push_str(kind.suffix());
    name
}

/// The key bytes and kind a name stands for, or `None` if this backend would not have written it.
fn decode_name(name: &OsStr) -> Option<(Vec<u8>, Kind)> {
    let name = name.to_str()?;
    let (body, kind) = if let Some(body) = name.strip_suffix(".o") {
        (body, Kind::Object)
    } else if let Some(body) = name.strip_suffix(".d") {
        (body, Kind::Dir)
    } else {
        (name.strip_suffix(".p")?, Kind::Piece)
    };
    let mut out = Vec::with_capacity(body.len());
    let mut bytes = body.bytes();
    while let Some(b) = bytes.next() {
        if is_plain(b) {
            out.push(b);
        } else if b == b'%' {
            let hi = hex_digit(bytes.next()?)?;
            let lo = hex_digit(bytes.next()?)?;
            out.push(hi << 4 | lo);
        } else {
            return None;
        }
    }
    // Only canonical names: no `/`, a piece is exactly PIECE_LEN bytes, a last piece shorter.
    let canonical = !out.contains(&b'/')
        && match kind {
            Kind::Piece => out.len() == PIECE_LEN,
            Kind::Object | Kind::Dir => out.len() < PIECE_LEN,
        };
    (canonical && encode_name(&out, kind) == name).then_some((out, kind))
}

/// The value of an uppercase hex digit.
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The path of `key`'s object file, relative to the root.
fn key_path(key: &str) -> PathBuf {
    let mut path = PathBuf::new();
    let mut components = key.as_bytes().split(|&b| b == b'/').peekable();
    while let Some(mut rest) = components.next() {
        while rest.len() >= PIECE_LEN {
            path.push(encode_name(&rest[..PIECE_LEN], Kind::Piece));
            rest = &rest[PIECE_LEN..];
        }
        let kind = if components.peek().is_some() { Kind::Dir } else { Kind::Object };
        path.push(encode_name(rest, kind));
    }
    path
}

// ---------------------------------------------------------------------------------------------
// Object files

/// The header of a (version 2) object file holding data with this MD5 and this attribute block.
fn encode_header(md5: &[u8; 16], attributes: &[u8]) -> Vec<u8> {
    let mut header = Vec::with_capacity(V2_PREFIX_LEN as usize + attributes.len());
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&[VERSION, 0, 0, 0]);
    header.extend_from_slice(md5);
    // The block's length is checked when it is encoded: it fits.
    header.extend_from_slice(&(attributes.len() as u32).to_le_bytes());
    header.extend_from_slice(attributes);
    header
}

/// What an object file's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    /// The MD5 of the data.
    md5: [u8; 16],
    /// The length of the attribute block (0 in version 1), which starts at [`V2_PREFIX_LEN`].
    attributes_len: u32,
    /// Where the data starts.
    data_offset: u64,
}

/// The header that the first bytes of an object file (up to [`V2_PREFIX_LEN`] of them) hold, if
/// it is one this backend wrote.
fn decode_header(start: &[u8]) -> Option<Header> {
    if start.len() < HEADER_LEN as usize || &start[..4] != MAGIC || start[5..8] != [0; 3] {
        return None;
    }
    let md5 = start[8..24].try_into().ok()?;
    match start[4] {
        VERSION_1 => Some(Header { md5, attributes_len: 0, data_offset: HEADER_LEN }),
        VERSION => {
            let attributes_len = u32::from_le_bytes(start.get(24..28)?.try_into().ok()?);
            (attributes_len <= MAX_ATTRIBUTES_LEN).then_some(Header {
                md5,
                attributes_len,
                data_offset: V2_PREFIX_LEN + u64::from(attributes_len),
            })
        }
        _ => None,
    }
}

/// The attribute block for `attributes`: empty for none, else their `postcard` encoding.
fn encode_attributes(key: &str, attributes: &Attributes) -> Result<Vec<u8>, BackendError> {
    if *attributes == Attributes::default() {
        return Ok(Vec::new());
    }
    let invalid = |message: String| BackendError::Io {
        key: key.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, message),
    };
    let block =
        postcard::to_stdvec(attributes).map_err(|e| invalid(format!("unencodable attributes: {e}")))?;
    if block.len() > MAX_ATTRIBUTES_LEN as usize {
        return Err(invalid(format!("attributes of {} bytes, more than {MAX_ATTRIBUTES_LEN}", block.len())));
    }
    Ok(block)
}

/// The attributes an attribute block holds, if it is one [`encode_attributes`] wrote.
fn decode_attributes(block: &[u8]) -> Option<Attributes> {
    if block.is_empty() {
        return Some(Attributes::default());
    }
    match postcard::take_from_bytes(block) {
        Ok((attributes, [])) => Some(attributes),
        _ => None,
    }
}

/// An [`io::ErrorKind::InvalidData`] error for a file that this backend did not write.
fn not_an_object(key: &str, what: &str) -> BackendError {
    let message = format!("not an object file written by nargate's fs backend: {what}");
    BackendError::Io { key: key.to_owned(), source: io::Error::new(io::ErrorKind::InvalidData, message) }
}

/// Reads the attributes of an open object file with this header.
fn read_attributes(key: &str, file: &File, header: &Header) -> Result<Attributes, BackendError> {
    if header.attributes_len == 0 {
        return Ok(Attributes::default());
    }
    let block = read_at(key, file, V2_PREFIX_LEN, u64::from(header.attributes_len))?;
    decode_attributes(&block).ok_or_else(|| not_an_object(key, "bad attribute block"))
}

/// The error for a missing object, or an I/O error.
fn not_found_or_io(key: &str, source: io::Error) -> BackendError {
    if matches!(source.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) {
        BackendError::NotFound { key: key.to_owned() }
    } else {
        BackendError::Io { key: key.to_owned(), source }
    }
}

/// Opens `key`'s object file and reads its metadata and header.
fn open_object(root: &Path, key: &str) -> Result<(File, ObjectMeta, Header), BackendError> {
    let mut file = File::open(root.join(key_path(key))).map_err(|e| not_found_or_io(key, e))?;
    let (meta, header) = read_meta(&mut file, key)?;
    Ok((file, meta, header))
}

/// Reads the metadata of an open object file from its header (the first [`V2_PREFIX_LEN`]
/// bytes, not the attribute block) and the file's size and mtime.
fn read_meta(file: &mut File, key: &str) -> Result<(ObjectMeta, Header), BackendError> {
    let io_err = |source| BackendError::Io { key: key.to_owned(), source };
    let stat = file.metadata().map_err(io_err)?;
    let mut start = Vec::with_capacity(V2_PREFIX_LEN as usize);
    // A version-1 file may be shorter than a version-2 prefix: take what there is.
    file.take(V2_PREFIX_LEN).read_to_end(&mut start).map_err(io_err)?;
    let header = decode_header(&start).filter(|h| stat.is_file() && stat.len() >= h.data_offset);
    let header = header.ok_or_else(|| not_an_object(key, "bad header"))?;
    let meta = ObjectMeta {
        key: key.to_owned(),
        size: stat.len() - header.data_offset,
        etag: hex::encode(header.md5),
        last_modified: stat.modified().map_err(io_err)?,
    };
    Ok((meta, header))
}

/// A new temporary file for a put.
fn new_tmp(root: &Path) -> io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new().prefix("put-").tempfile_in(root.join(TMP_DIR))
}

/// A new temporary object file with `header` and the data of `file` from `data_offset` on (copied
/// in the kernel where it can be), and its path, which removes it when dropped.
fn rewrite_header(
    root: &Path,
    mut file: &File,
    data_offset: u64,
    header: &[u8],
) -> io::Result<(File, tempfile::TempPath)> {
    use std::io::Seek;
    let mut tmp = new_tmp(root)?;
    tmp.write_all(header)?;
    file.seek(SeekFrom::Start(data_offset))?;
    io::copy(&mut file, tmp.as_file_mut())?;
    let copy = tmp.as_file().try_clone()?;
    Ok((copy, tmp.into_temp_path()))
}

/// Writes `key`'s object file (without attributes) atomically and durably.
fn write_object(root: &Path, key: &str, body: &[u8]) -> Result<ObjectMeta, BackendError> {
    let io_err = |source| BackendError::Io { key: key.to_owned(), source };
    let md5: [u8; 16] = Md5::digest(body).into();
    let mut tmp = new_tmp(root).map_err(io_err)?;
    tmp.write_all(&encode_header(&md5, &[])).map_err(io_err)?;
    tmp.write_all(body).map_err(io_err)?;
    tmp.as_file().sync_all().map_err(io_err)?;
    let last_modified = tmp.as_file().metadata().and_then(|m| m.modified()).map_err(io_err)?;
    persist(root, key, tmp.into_temp_path()).map_err(io_err)?;
    Ok(ObjectMeta { key: key.to_owned(), size: body.len() as u64, etag: hex::encode(md5), last_modified })
}

/// Renames a written and fsynced temporary file onto `key`'s path, making the directories it
/// needs, and makes the rename durable.
fn persist(root: &Path, key: &str, mut tmp: tempfile::TempPath) -> io::Result<()> {
    let rel = key_path(key);
    let target = root.join(&rel);
    let parent = target.parent().unwrap_or(root);
    // A concurrent DELETE may remove a directory we have just made (once it is empty): then
    // make it again.
    let mut attempts = 0;
    loop {
        let error = match create_dirs(root, rel.parent().unwrap_or(Path::new(""))) {
            Ok(()) => match tmp.persist(&target) {
                Ok(()) => break,
                Err(e) => {
                    tmp = e.path;
                    e.error
                }
            },
            Err(e) => e,
        };
        if error.kind() != io::ErrorKind::NotFound || attempts == RENAME_ATTEMPTS {
            return Err(error);
        }
        attempts += 1;
    }
    match sync_dir(parent) {
        // The object was deleted (and its directory with it) as soon as it was written.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

/// Creates the directories of `rel` under `root` that are missing, each durably.
fn create_dirs(root: &Path, rel: &Path) -> io::Result<()> {
    let mut dir = root.to_path_buf();
    for component in rel.components() {
        let parent = dir.clone();
        dir.push(component);
        match fs::create_dir(&dir) {
            Ok(()) => sync_dir(&parent)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes the entries of a directory durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Deletes `key`'s object file, then the directories that this leaves empty.
fn delete_object(root: &Path, key: &str) -> Result<(), BackendError> {
    let rel = key_path(key);
    match fs::remove_file(root.join(&rel)) {
        Ok(()) => {}
        Err(e) => {
            return match not_found_or_io(key, e) {
                BackendError::NotFound { .. } => Ok(()),
                other => Err(other),
            };
        }
    }
    // Best effort: a directory that is not empty (or anything else) ends the pruning.
    let mut dir = rel.parent();
    while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
        if fs::remove_dir(root.join(d)).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// Removes temporary files older than [`STALE_TMP_AGE`]: writes that a crash interrupted.
fn remove_stale_tmp(tmp_dir: &Path) {
    let Ok(entries) = fs::read_dir(tmp_dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let modified = entry.metadata().and_then(|m| m.modified());
        let stale = modified.is_ok_and(|m| now.duration_since(m).unwrap_or_default() > STALE_TMP_AGE);
        if stale && let Err(e) = fs::remove_file(entry.path()) {
            tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove stale temporary file");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Listing

/// One entry of a directory, as the listing walk sees it.
struct Child {
    /// The key bytes it adds to its directory's: the component (objects), the component and `/`
    /// (`.d` directories) or the piece (`.p` directories). Siblings sort by this.
    sort: Vec<u8>,
    kind: Kind,
    name: std::ffi::OsString,
}

/// Where a listing resumes.
enum Resume {
    /// From the start of the prefix.
    Start,
    /// After this key.
    AfterKey(String),
    /// After every key under this common prefix.
    AfterPrefix(String),
}

/// The continuation token for a page that ended with this key or common prefix.
fn encode_token(last: &str, is_prefix: bool) -> String {
    format!("{}{last}", if is_prefix { 'p' } else { 'k' })
}

/// Where a continuation token says to resume.
fn decode_token(token: &str) -> Result<Resume, BackendError> {
    if let Some(key) = token.strip_prefix('k') {
        Ok(Resume::AfterKey(key.to_owned()))
    } else if let Some(prefix) = token.strip_prefix('p') {
        Ok(Resume::AfterPrefix(prefix.to_owned()))
    } else {
        Err(BackendError::InvalidKey {
            key: token.to_owned(),
            reason: "not a continuation token of the fs backend",
        })
    }
}

/// Lists one page.
fn list_page(root: &Path, request: &ListRequest) -> Result<ListPage, BackendError> {
    let resume = match (&request.continuation_token, &request.start_after) {
        (Some(token), _) => decode_token(token)?,
        (None, Some(key)) => Resume::AfterKey(key.clone()),
        (None, None) => Resume::Start,
    };
    let (after, skip) = match resume {
        Resume::Start => (None, None),
        Resume::AfterKey(key) => (Some(key.into_bytes()), None),
        Resume::AfterPrefix(prefix) => (Some(prefix.clone().into_bytes()), Some(prefix.into_bytes())),
    };
    let mut walk = Walk {
        prefix: request.prefix.as_bytes(),
        delimiter: request.delimiter.as_deref().filter(|d| !d.is_empty()),
        after,
        skip,
        max_keys: match request.max_keys {
            0 => 1000,
            n => n.min(1000),
        },
        page: ListPage::default(),
        last: None,
    };
    walk.dir(root, &mut Vec::new())?;
    Ok(walk.page)
}

/// Whether a walk goes on.
enum Flow {
    Continue,
    /// The page is full and there is more.
    Full,
}

/// The state of one page's walk through the tree.
struct Walk<'a> {
    prefix: &'a [u8],
    delimiter: Option<&'a str>,
    /// Only keys strictly after this one.
    after: Option<Vec<u8>>,
    /// The last common prefix returned: keys under it are skipped.
    skip: Option<Vec<u8>>,
    max_keys: usize,
    page: ListPage,
    /// The last key or common prefix on the page, and whether it is a common prefix.
    last: Option<(String, bool)>,
}

impl Walk<'_> {
    /// Walks the directory `dir`, whose keys all start with `base`.
    fn dir(&mut self, dir: &Path, base: &mut Vec<u8>) -> Result<Flow, BackendError> {
        for child in sorted_children(dir, base)? {
            let base_len = base.len();
            base.extend_from_slice(&child.sort);
            let flow = self.child(dir, &child, base);
            base.truncate(base_len);
            match flow? {
                Some(Flow::Continue) => {}
                Some(Flow::Full) => return Ok(Flow::Full),
                // Past the prefix: so are all later siblings.
                None => break,
            }
        }
        Ok(Flow::Continue)
    }

    /// Visits one child whose keys all start with `start` (objects: whose key is `start`).
    /// `None` means the child, and every later sibling, is past the prefix.
    fn child(
        &mut self,
        dir: &Path,
        child: &Child,
        start: &mut Vec<u8>,
    ) -> Result<Option<Flow>, BackendError> {
        let is_object = child.kind == Kind::Object;
        let in_prefix = start.starts_with(self.prefix);
        if !in_prefix && (is_object || !self.prefix.starts_with(start)) {
            return Ok((start.as_slice() < self.prefix).then_some(Flow::Continue));
        }
        if let Some(after) = &self.after {
            let (start, after) = (start.as_slice(), after.as_slice());
            let all_before =
                if is_object { start <= after } else { start < after && !after.starts_with(start) };
            if all_before {
                return Ok(Some(Flow::Continue));
            }
        }
        if self.skip.as_ref().is_some_and(|cp| start.starts_with(cp)) {
            return Ok(Some(Flow::Continue));
        }
        if !is_object {
            return self.dir(&dir.join(&child.name), start).map(Some);
        }
        let Ok(key) = std::str::from_utf8(start) else {
            tracing::warn!(dir = %dir.display(), name = ?child.name, "skipping a file whose key is not UTF-8");
            return Ok(Some(Flow::Continue));
        };
        self.object(dir, &child.name, key).map(Some)
    }

    /// Puts the object `key` on the page, or the common prefix it rolls up into.
    fn object(&mut self, dir: &Path, name: &OsStr, key: &str) -> Result<Flow, BackendError> {
        let rolled_up = self.delimiter.and_then(|d| {
            let at = key.get(self.prefix.len()..)?.find(d)?;
            key.get(..self.prefix.len() + at + d.len())
        });
        if self.is_full() {
            self.page.next_continuation_token =
                self.last.as_ref().map(|(last, is_prefix)| encode_token(last, *is_prefix));
            return Ok(Flow::Full);
        }
        if let Some(common_prefix) = rolled_up {
            self.page.common_prefixes.push(common_prefix.to_owned());
            self.skip = Some(common_prefix.as_bytes().to_vec());
            self.last = Some((common_prefix.to_owned(), true));
            return Ok(Flow::Continue);
        }
        let mut file = match File::open(dir.join(name)) {
            Ok(file) => file,
            // Deleted since we read the directory.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Flow::Continue),
            Err(source) => {
                return Err(BackendError::Io { key: key.to_owned(), source });
            }
        };
        self.page.objects.push(read_meta(&mut file, key)?.0);
        self.last = Some((key.to_owned(), false));
        Ok(Flow::Continue)
    }

    fn is_full(&self) -> bool {
        self.page.objects.len() + self.page.common_prefixes.len() >= self.max_keys
    }
}

/// The children of `dir` that this backend wrote, in the byte order of the keys they hold.
fn sorted_children(dir: &Path, base: &[u8]) -> Result<Vec<Child>, BackendError> {
    let io_err = |source| BackendError::Io { key: String::from_utf8_lossy(base).into_owned(), source };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        // Removed by a concurrent DELETE since its parent was read.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(e)),
    };
    let mut children = Vec::new();
    for entry in entries {
        let name = entry.map_err(io_err)?.file_name();
        let Some((mut sort, kind)) = decode_name(&name) else {
            if !(base.is_empty() && name == TMP_DIR) {
                tracing::warn!(dir = %dir.display(), ?name, "ignoring a file the fs backend did not write");
            }
            continue;
        };
        if kind == Kind::Dir {
            sort.push(b'/');
        }
        children.push(Child { sort, kind, name });
    }
    // Sort keys are distinct: an object's `x` and a directory's `x/` differ, and a piece has a
    // length no other name has without a `/`.
    children.sort_unstable_by(|a, b| a.sort.cmp(&b.sort));
    Ok(children)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_are_pinned() {
        let cases = [
            ("a", "a.o"),
            ("a/b", "a.d/b.o"),
            ("a/b/c", "a.d/b.d/c.o"),
            ("A.b c", "%41%2Eb%20c.o"),
            ("a//b/", "a.d/.d/b.d/.o"),
            ("/", ".d/.o"),
            ("é", "%C3%A9.o"),
            ("nar/x-y_z.nar", "nar.d/x-y_z%2Enar.o"),
        ];
        for (key, path) in cases {
            assert_eq!(key_path(key), PathBuf::from(path), "{key}");
        }
    }

    #[test]
    fn long_components_are_cut_into_pieces() {
        let piece = "x".repeat(PIECE_LEN);
        let p = format!("{piece}.p");
        assert_eq!(key_path(&"x".repeat(PIECE_LEN - 1)), PathBuf::from(format!("{}.o", &piece[1..])));
        assert_eq!(key_path(&piece), PathBuf::from(format!("{p}/.o")));
        assert_eq!(key_path(&format!("{piece}xy/z")), PathBuf::from(format!("{p}/xy.d/z.o")));
        assert_eq!(key_path(&"x".repeat(2 * PIECE_LEN + 1)), PathBuf::from(format!("{p}/{p}/x.o")));
        // The longest name: a piece of bytes that all need escaping.
        let name = encode_name(&[0xff; PIECE_LEN], Kind::Piece);
        assert!(name.len() <= 255, "{}", name.len());
    }

    #[test]
    fn names_round_trip_and_foreign_names_are_refused() {
        for (part, kind) in [(&b"a.B %"[..], Kind::Object), (b"", Kind::Dir), (&[7; PIECE_LEN], Kind::Piece)]
        {
            let name = encode_name(part, kind);
            assert_eq!(decode_name(OsStr::new(&name)), Some((part.to_vec(), kind)));
        }
        for name in [".tmp", "a", "a.x", "A.o", "%2e.o", "%4.o", "a.b.o", "x.p", "a%2Fb.o", "put-123"] {
            assert_eq!(decode_name(OsStr::new(name)), None, "{name}");
        }
    }

    #[test]
    fn header_is_pinned() {
        let md5: [u8; 16] = Md5::digest(b"hello").into();
        let header = encode_header(&md5, &[]);
        assert_eq!(hex::encode(&header), "4e47464f020000005d41402abc4b2a76b9719d911017c59200000000");
        let expected = Header { md5, attributes_len: 0, data_offset: 28 };
        assert_eq!(decode_header(&header), Some(expected));
        let mut bad = header.clone();
        bad[4] = 3;
        assert_eq!(decode_header(&bad), None);
        // A version-2 header cut before its block's length, or with a block over the limit.
        assert_eq!(decode_header(&header[..24]), None);
        let mut huge = header;
        huge[24..28].copy_from_slice(&(MAX_ATTRIBUTES_LEN + 1).to_le_bytes());
        assert_eq!(decode_header(&huge), None);
    }

    #[test]
    fn attributes_are_pinned() -> Result<(), BackendError> {
        let attributes = Attributes {
            content_type: Some("text/plain".into()),
            content_encoding: None,
            cache_control: Some("no-cache".into()),
            content_disposition: None,
            content_language: Some("en".into()),
            metadata: [("a".to_owned(), "1".to_owned()), ("bc".to_owned(), "23".to_owned())].into(),
        };
        let block = encode_attributes("k", &attributes)?;
        assert_eq!(
            hex::encode(&block),
            concat!(
                "010a746578742f706c61696e", // Some("text/plain")
                "00",                       // None
                "01086e6f2d6361636865",     // Some("no-cache")
                "00",                       // None
                "0102656e",                 // Some("en")
                "02",
                "0161",
                "0131",
                "026263",
                "023233", // {"a": "1", "bc": "23"}
            )
        );
        assert_eq!(decode_attributes(&block), Some(attributes));
        let md5 = [0xab; 16];
        let header = encode_header(&md5, &block);
        assert_eq!(&header[24..28], &(block.len() as u32).to_le_bytes());
        assert_eq!(decode_header(&header[..28]).map(|h| h.data_offset), Some(28 + block.len() as u64));
        // No attributes, no block; a block with bytes after the attributes is refused.
        assert_eq!(encode_attributes("k", &Attributes::default())?, Vec::<u8>::new());
        assert_eq!(decode_attributes(&[]), Some(Attributes::default()));
        assert_eq!(decode_attributes(&[block, vec![0]].concat()), None);
        Ok(())
    }

    #[tokio::test]
    async fn version_1_files_are_still_read() -> Result<(), BackendError> {
        let dir = tempfile::tempdir().map_err(|source| BackendError::Io { key: String::new(), source })?;
        let backend = FsBackend::new(dir.path().into())?;
        // Written as the backend wrote objects before attributes existed: a 24-byte header.
        let write_v1 = |key: &str, data: &[u8]| {
            let md5: [u8; 16] = Md5::digest(data).into();
            let mut file = [&MAGIC[..], &[VERSION_1, 0, 0, 0], &md5].concat();
            file.extend_from_slice(data);
            let path = dir.path().join(key_path(key));
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, file).expect("write");
        };
        write_v1("old/data", b"hello, version 1");
        write_v1("old/empty", b"");
        write_v1("old/large", &vec![7; (WHOLE_READ_MAX + 1) as usize]);

        let got = backend.get("old/data", None).await?;
        assert_eq!(
            (got.meta.size, got.meta.etag.as_str()),
            (16, hex::encode(Md5::digest(b"hello, version 1")).as_str())
        );
        assert_eq!(got.attributes, Attributes::default());
        assert_eq!(got.bytes().await?, "hello, version 1");
        assert_eq!(backend.get("old/data", Some(7..14)).await?.bytes().await?, "version");
        let (meta, attributes) = backend.stat("old/data").await?;
        assert_eq!((meta.size, attributes), (16, Attributes::default()));
        assert_eq!(backend.head("old/empty").await?.size, 0);
        assert_eq!(backend.get("old/empty", None).await?.bytes().await?, "");
        let large = backend.get("old/large", Some(1..WHOLE_READ_MAX + 1)).await?;
        assert_eq!(large.bytes().await?.len() as u64, WHOLE_READ_MAX);

        let page = backend.list(&ListRequest { prefix: "old/".into(), ..Default::default() }).await?;
        let sizes: Vec<(String, u64)> = page.objects.into_iter().map(|o| (o.key, o.size)).collect();
        let expected = [("old/data", 16), ("old/empty", 0), ("old/large", WHOLE_READ_MAX + 1)];
        assert_eq!(sizes, expected.map(|(k, s)| (k.to_owned(), s)));

        // An overwrite writes version 2.
        backend.put("old/data", Bytes::from_static(b"new")).await?;
        let file = fs::read(dir.path().join(key_path("old/data"))).expect("read");
        assert_eq!(file[4], VERSION);
        assert_eq!(backend.get("old/data", None).await?.bytes().await?, "new");
        Ok(())
    }

    #[test]
    fn tokens_round_trip() {
        assert!(matches!(decode_token(&encode_token("a/b", false)), Ok(Resume::AfterKey(k)) if k == "a/b"));
        assert!(matches!(decode_token(&encode_token("a/", true)), Ok(Resume::AfterPrefix(p)) if p == "a/"));
        assert!(decode_token("zzz").is_err());
    }
}
