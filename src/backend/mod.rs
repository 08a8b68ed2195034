//! The object-bucket abstraction every durable byte goes through.
//!
//! One small async trait, [`Backend`], with two implementations — [`s3`] (any S3 endpoint, through
//! aws-sdk-s3) and [`fs`] (a local directory, the embedded default) — and tiny wrappers of the same
//! trait that add behaviour: [`counting`] counts requests, [`fault`] injects failures for tests,
//! [`metered`] times every request for the gateway's metrics; [`memory`] keeps objects in memory
//! with a clock a test controls, for simulations.
//! [`quickack`] is the S3 backend's HTTP client for servers that stall kept-alive connections.
//! Keys are UTF-8 strings of 1 to 1,024 bytes, as S3 allows.
//!
//! Beyond get/put/head/list/delete, operations are added as clients need them, the `object_store`
//! way: [`Attributes`] (content type, encoding, user metadata …) that [`Backend::put_stream`]
//! stores and [`Backend::get`] and [`Backend::stat`] return, and a streaming put that never holds
//! a whole object in memory.

pub mod counting;
pub mod fault;
pub mod fs;
pub mod memory;
pub mod metered;
pub mod quickack;
pub mod s3;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

/// The longest key a backend accepts, in bytes (S3's limit).
pub const MAX_KEY_LEN: usize = 1024;

/// What a backend knows about one stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag, without the surrounding quotes (the MD5 hex of the bytes for single-part uploads).
    pub etag: String,
    /// When the backend last wrote it: the backend's clock, never a gateway's.
    pub last_modified: SystemTime,
}

/// A request for one page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListRequest {
    /// Only keys that start with this prefix.
    pub prefix: String,
    /// Roll keys up to the first occurrence of this delimiter after the prefix into common prefixes.
    pub delimiter: Option<String>,
    /// Only keys strictly greater than this one. As in S3, the keys after it still roll up into
    /// their common prefix, even where that prefix sorts before it (`a/` after `a/1`).
    pub start_after: Option<String>,
    /// The token a previous page returned, to go on from there.
    pub continuation_token: Option<String>,
    /// At most this many keys plus common prefixes (1..=1000; 0 means 1000).
    pub max_keys: usize,
}

/// One page of a listing, in byte order of keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// The objects on this page.
    pub objects: Vec<ObjectMeta>,
    /// The common prefixes on this page (with a delimiter), each ending with the delimiter.
    pub common_prefixes: Vec<String>,
    /// Present when there is more: pass it back as [`ListRequest::continuation_token`].
    pub next_continuation_token: Option<String>,
}

/// What clients set on an object and get back on GET/HEAD.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attributes {
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Content-Encoding`.
    pub content_encoding: Option<String>,
    /// `Cache-Control`.
    pub cache_control: Option<String>,
    /// `Content-Disposition`.
    pub content_disposition: Option<String>,
    /// `Content-Language`.
    pub content_language: Option<String>,
    /// User metadata (`x-amz-meta-<name>`), names lowercase, without the prefix.
    pub metadata: BTreeMap<String, String>,
}

/// A body streamed into a put.
pub type ByteStream = BoxStream<'static, Result<Bytes, BackendError>>;

/// User metadata only known once a put's body has ended (a checksum that came as a trailer after
/// the last byte): whoever produces the body fills it before the body's stream ends, and the
/// backend reads it after it consumed the body, before the object becomes visible.
#[derive(Debug, Clone, Default)]
pub struct LateMetadata(Arc<Mutex<BTreeMap<String, String>>>);

impl LateMetadata {
    /// Adds `entries` (names lowercase, without `x-amz-meta-`).
    pub fn extend(&self, entries: impl IntoIterator<Item = (String, String)>) {
        self.lock().extend(entries);
    }

    /// The entries added so far.
    pub fn entries(&self) -> BTreeMap<String, String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        // A panic while the map was held leaves it consistent (each change is one call).
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Options of a streaming put.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// The attributes stored with the object.
    pub attributes: Attributes,
    /// The MD5 the client sent (Content-MD5): a mismatch fails the put and nothing becomes visible.
    pub content_md5: Option<[u8; 16]>,
    /// The caller needs no ETag that is the body's MD5 (a staged part, whose MD5 the caller
    /// computes itself): a backend may then check the transfer by a cheaper checksum than a
    /// Content-MD5 and save an MD5 pass. With [`content_md5`](Self::content_md5) set, the MD5
    /// is computed all the same, to check it.
    pub md5_unneeded: bool,
    /// Metadata stored with the object too, known once the body has ended: a backend reads it
    /// (through [`final_attributes`](Self::final_attributes)) only after the body's last byte.
    pub late_metadata: LateMetadata,
}

impl PutOptions {
    /// The attributes to store once the body has ended: [`attributes`](Self::attributes) with
    /// the [`late_metadata`](Self::late_metadata) added.
    pub fn final_attributes(&self) -> Attributes {
        let mut attributes = self.attributes.clone();
        attributes.metadata.extend(self.late_metadata.entries());
        attributes
    }

    /// Checks the MD5 of the bytes received against [`content_md5`](Self::content_md5), if
    /// the client sent one: a mismatch is [`BackendError::DigestMismatch`].
    pub fn check_md5(&self, key: &str, received: &[u8; 16]) -> Result<(), BackendError> {
        match self.content_md5 {
            Some(expected) if expected != *received => {
                Err(BackendError::DigestMismatch { key: key.to_owned() })
            }
            _ => Ok(()),
        }
    }
}

/// The body of a GET: its bytes as a stream, and the object's metadata.
pub struct GetResult {
    /// The whole object's metadata (size is the whole object's, not the range's).
    pub meta: ObjectMeta,
    /// The byte range this body holds.
    pub range: Range<u64>,
    /// The object's attributes.
    pub attributes: Attributes,
    /// The bytes of `range`.
    pub body: BoxStream<'static, Result<Bytes, BackendError>>,
}

impl GetResult {
    /// Collects the whole body into one buffer.
    pub async fn bytes(self) -> Result<Bytes, BackendError> {
        use futures::TryStreamExt;
        let chunks: Vec<Bytes> = self.body.try_collect().await?;
        if chunks.len() == 1 {
            return Ok(chunks.into_iter().next().unwrap_or_default());
        }
        let mut buf = bytes::BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
        for c in chunks {
            buf.extend_from_slice(&c);
        }
        Ok(buf.freeze())
    }
}

impl std::fmt::Debug for GetResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetResult")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .field("attributes", &self.attributes)
            .finish_non_exhaustive()
    }
}

/// Why a backend request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// There is no object with this key.
    #[error("object not found: {key}")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// The key is not one a backend can hold (empty, over 1,024 bytes, …).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key given.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The byte range asked for does not lie within the object.
    #[error("range {start}..{end} not satisfiable for {key} of {size} bytes")]
    InvalidRange {
        /// The key asked for.
        key: String,
        /// The range's start.
        start: u64,
        /// The range's end (exclusive).
        end: u64,
        /// The object's size.
        size: u64,
    },
    /// A local I/O error (fs backend).
    #[error("I/O error on {key}: {source}")]
    Io {
        /// The key concerned.
        key: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The remote store failed or could not be reached (S3 backend), after retries.
    #[error("backend request {op} {key} failed: {message}")]
    Remote {
        /// The operation (GET, PUT, …).
        op: &'static str,
        /// The key concerned.
        key: String,
        /// What the backend said.
        message: String,
    },
    /// The MD5 the client sent (Content-MD5) does not match the bytes received.
    #[error("Content-MD5 does not match the body received for {key}")]
    DigestMismatch {
        /// The key being written.
        key: String,
    },
    /// The streamed body of a put failed (the client went away, …).
    #[error("the body of the put of {key} failed: {message}")]
    Body {
        /// The key being written.
        key: String,
        /// What went wrong.
        message: String,
    },
    /// A failure injected by a test wrapper.
    #[error("injected fault on {op} {key}")]
    Injected {
        /// The operation.
        op: &'static str,
        /// The key concerned.
        key: String,
    },
}

/// An object bucket: the only way nargate reads or writes durable state.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// Reads an object, or the byte range `range` of it (clamped to the object's end; an empty
    /// range, or one that starts at or beyond the end, is [`BackendError::InvalidRange`]).
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, BackendError>;

    /// Writes an object whole, atomically: readers see the old object or the new, never a part.
    async fn put(&self, key: &str, body: Bytes) -> Result<ObjectMeta, BackendError>;

    /// Reads an object's metadata.
    async fn head(&self, key: &str) -> Result<ObjectMeta, BackendError>;

    /// Reads an object's metadata and attributes.
    async fn stat(&self, key: &str) -> Result<(ObjectMeta, Attributes), BackendError>;

    /// Writes an object from a stream, atomically (readers see the old object or the whole new
    /// one, never a part; a body error or an MD5 mismatch leaves nothing behind), never holding
    /// more than a bounded buffer (one part) in memory. An error of the body stream is returned
    /// as it came.
    async fn put_stream(
        &self,
        key: &str,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<ObjectMeta, BackendError>;

    /// Lists one page of keys, in byte order.
    async fn list(&self, request: &ListRequest) -> Result<ListPage, BackendError>;

    /// Deletes an object; deleting a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<(), BackendError>;
}

/// A shared handle to any backend.
pub type DynBackend = Arc<dyn Backend>;

/// Checks that `key` is one every backend can hold: 1 to [`MAX_KEY_LEN`] bytes.
pub fn validate_key(key: &str) -> Result<(), BackendError> {
    if key.is_empty() {
        return Err(BackendError::InvalidKey { key: key.to_owned(), reason: "empty key" });
    }
    if key.len() > MAX_KEY_LEN {
        return Err(BackendError::InvalidKey { key: key.to_owned(), reason: "longer than 1024 bytes" });
    }
    Ok(())
}

/// Reads a whole object into memory (for records and chunks, which are small).
pub async fn get_bytes(backend: &dyn Backend, key: &str) -> Result<Bytes, BackendError> {
    backend.get(key, None).await?.bytes().await
}

/// Reads a whole object into memory, with its metadata.
pub async fn get_bytes_with_meta(
    backend: &dyn Backend,
    key: &str,
) -> Result<(Bytes, ObjectMeta), BackendError> {
    let result = backend.get(key, None).await?;
    let meta = result.meta.clone();
    Ok((result.bytes().await?, meta))
}

/// Lists every object under `prefix`, following continuation tokens page by page.
pub async fn list_all(backend: &dyn Backend, prefix: &str) -> Result<Vec<ObjectMeta>, BackendError> {
    let mut objects = vec![];
    let mut request = ListRequest { prefix: prefix.to_owned(), ..Default::default() };
    loop {
        let page = backend.list(&request).await?;
        objects.extend(page.objects);
        match page.next_continuation_token {
            Some(token) => request.continuation_token = Some(token),
            None => return Ok(objects),
        }
    }
}

/// The pages of a listing of every object under a prefix, one LIST at a time, so that a pass over
/// millions of keys holds one page in memory.
#[derive(Debug)]
pub struct Pages<'a> {
    backend: &'a dyn Backend,
    request: ListRequest,
    done: bool,
}

impl<'a> Pages<'a> {
    /// The pages of the objects under `prefix`.
    pub fn new(backend: &'a dyn Backend, prefix: &str) -> Self {
        Pages {
            backend,
            request: ListRequest { prefix: prefix.to_owned(), ..Default::default() },
            done: false,
        }
    }

    /// The next page's objects, or `None` after the last.
    pub async fn next_page(&mut self) -> Result<Option<Vec<ObjectMeta>>, BackendError> {
        if self.done {
            return Ok(None);
        }
        let page = self.backend.list(&self.request).await?;
        match page.next_continuation_token {
            Some(token) => self.request.continuation_token = Some(token),
            None => self.done = true,
        }
        Ok(Some(page.objects))
    }
}

/// The byte range of an object of `size` bytes that a GET of `range` returns: all of it for
/// `None`, else `range` with its end clamped to the object's end. A range that is empty, or starts
/// at or beyond the end (so any range of an empty object), is [`BackendError::InvalidRange`], as
/// S3 answers 416.
pub fn resolve_range(key: &str, range: Option<Range<u64>>, size: u64) -> Result<Range<u64>, BackendError> {
    match range {
        None => Ok(0..size),
        Some(r) if r.start < r.end && r.start < size => Ok(r.start..r.end.min(size)),
        Some(r) => Err(BackendError::InvalidRange { key: key.to_owned(), start: r.start, end: r.end, size }),
    }
}

/// The kinds of backend request, for wrappers that count or fail them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// [`Backend::get`].
    Get,
    /// [`Backend::put`] and [`Backend::put_stream`].
    Put,
    /// [`Backend::head`] and [`Backend::stat`].
    Head,
    /// [`Backend::list`].
    List,
    /// [`Backend::delete`].
    Delete,
}

impl Op {
    /// The HTTP-style name of the operation (`GET`, `PUT`, …), as error messages use it.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Get => "GET",
            Op::Put => "PUT",
            Op::Head => "HEAD",
            Op::List => "LIST",
            Op::Delete => "DELETE",
        }
    }
}

/// A shared handle is a backend too, so wrappers such as
/// [`CountingBackend`](counting::CountingBackend) can wrap a [`DynBackend`].
#[async_trait]
impl Backend for Arc<dyn Backend> {
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, BackendError> {
        self.as_ref().get(key, range).await
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<ObjectMeta, BackendError> {
        self.as_ref().put(key, body).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, BackendError> {
        self.as_ref().head(key).await
    }

    async fn stat(&self, key: &str) -> Result<(ObjectMeta, Attributes), BackendError> {
        self.as_ref().stat(key).await
    }

    async fn put_stream(
        &self,
        key: &str,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<ObjectMeta, BackendError> {
        self.as_ref().put_stream(key, body, options).await
    }

    async fn list(&self, request: &ListRequest) -> Result<ListPage, BackendError> {
        self.as_ref().list(request).await
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.as_ref().delete(key).await
    }
}
