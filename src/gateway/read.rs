//! GET and HEAD of objects: every virtual key rendered, plain objects passed through.
//!
//! | key | what answers it |
//! |---|---|
//! | `nix-cache-info` | generated from the bucket's settings |
//! | `<storehash>.narinfo` | the path info, as the narinfo this cache serves (its own signature added) |
//! | `<storehash>.ls` | the NAR listing, rendered from the NAR record |
//! | `nar/<narhash>.nar` | the NAR, rendered from its segment table and chunks |
//! | `store/<storehash>-<name>.nar` | the same NAR under the store path's name |
//! | `tree/<storehash>-<name>[/<path>]` | (buckets that browse) one file's span of the NAR, a symlink's target, an empty directory's marker |
//! | anything else | the plain object, ranges straight through to the backend |
//!
//! Virtual keys are visible where the bucket's listing index has them, with the index entry's
//! size, ETag and time, so HEAD, GET and listings agree. A cold `nar/` GET is two sequential
//! backend round trips before its first chunk: the index entry and the NAR record at once, then
//! the chunks.
//!
//! These requests reach the gateway as an s3s custom route (after s3s checked the signature), so
//! that ranges and preconditions are read from the raw headers: see [`super::conditional`].

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use s3s::{Body, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use super::Gateway;
use super::conditional::{Verdict, evaluate, parse_range};
use super::error::{backend_error, commit_error, internal, render_error};
use super::target::Target;
use crate::backend::{Attributes, BackendError, ObjectMeta};
use crate::cache::Cache;
use crate::nix::nixbase32;
use crate::render::{RenderError, SegmentTable, TreeNode};

/// The bucket and key of a GET or HEAD of an object, found when the route matched.
#[derive(Debug, Clone)]
pub struct Located {
    /// The bucket.
    pub bucket: String,
    /// The object key.
    pub key: String,
}

/// Query parameters a GET or HEAD of an object may carry (others name sub-resources, such as
/// `?acl` or `?uploadId`, which s3s dispatches itself).
const OBJECT_QUERY: &[&str] = &[
    "partNumber",
    "versionId",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "x-id",
    "AWSAccessKeyId",
    "Signature",
    "Expires",
];

/// Whether a GET or HEAD with this query reads an object (not one of its sub-resources).
pub fn is_object_read(uri: &Uri) -> bool {
    query_pairs(uri).all(|(name, _)| OBJECT_QUERY.contains(&name.as_ref()) || name.starts_with("X-Amz-"))
}

/// The decoded name/value pairs of a URI's query.
pub(super) fn query_pairs(uri: &Uri) -> impl Iterator<Item = (String, String)> + '_ {
    let decode =
        |s: &str| urlencoding::decode(&s.replace('+', " ")).map(|c| c.into_owned()).unwrap_or_default();
    uri.query().unwrap_or_default().split('&').filter(|p| !p.is_empty()).map(move |pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(name), decode(value))
    })
}

/// A readable object: what it is, and how to get its bytes.
struct Readable {
    meta: ObjectMeta,
    content_type: &'static str,
    /// User metadata (`x-amz-meta-…`) and the like.
    attributes: Attributes,
    body: Source,
}

impl Readable {
    /// A readable object with no attributes of its own.
    fn new(meta: ObjectMeta, content_type: &'static str, body: Source) -> Self {
        Readable { meta, content_type, attributes: Attributes::default(), body }
    }
}

/// Where a readable object's bytes come from.
enum Source {
    /// Generated text.
    Bytes(Bytes),
    /// A rendered NAR, from its segment table.
    Nar(Arc<SegmentTable>),
    /// A span of a rendered NAR (a file of a store path's tree) from this NAR offset.
    NarSpan(Arc<SegmentTable>, u64),
}

impl Gateway {
    /// Answers a GET or HEAD of an object.
    pub(super) async fn read_object(&self, req: S3Request<Body>) -> S3Result<S3Response<Body>> {
        let located: Located =
            req.extensions.get().cloned().ok_or_else(|| internal("", &"a read without its location"))?;
        let head = req.method == Method::HEAD;
        let whole_part = match query_pairs(&req.uri).find(|(name, _)| name == "partNumber") {
            None => false,
            Some((_, n)) if n == "1" => true,
            Some(_) => {
                let mut e = S3Error::with_message(
                    S3ErrorCode::Custom("InvalidPartNumber".into()),
                    "The requested partnumber is not satisfiable",
                );
                e.set_status_code(StatusCode::RANGE_NOT_SATISFIABLE);
                return Err(e);
            }
        };
        let overrides = ResponseOverrides::from_request(&req.uri, &req.headers);
        let cache = self.cache(&located.bucket);
        let target = Target::of(&located.key);
        let no_bucket = || s3_error!(NoSuchBucket);
        if target == Target::Plain {
            cache.bucket_record().await.map_err(|e| commit_error(&located.key, e))?.ok_or_else(no_bucket)?;
            return self.read_plain(&cache, &located.key, &req.headers, head, whole_part, &overrides).await;
        }
        // The bucket record is read at once with what the key needs (concurrent reads of it share
        // one GET), so a cold NAR GET is one round trip before its chunks.
        let (bucket, readable) =
            tokio::join!(cache.bucket_record(), self.resolve(&cache, target, &located.key));
        bucket.map_err(|e| commit_error(&located.key, e))?.ok_or_else(no_bucket)?;
        let readable = readable?;
        let range_header = header_range(&req.headers, whole_part);
        let plan = plan(&req.headers, &readable.meta, range_header)?;
        let mut response =
            plan.response(&readable.meta, readable.content_type, &readable.attributes, &overrides);
        if head || plan.status == StatusCode::NOT_MODIFIED {
            return Ok(response);
        }
        let range = plan.range.clone();
        let stream = self.stream(&located.key, readable.body, range);
        response.output = sized_body(stream, plan.range.end - plan.range.start);
        Ok(response)
    }

    /// The bytes `range` of a readable object, each failure logged with its key.
    fn stream(
        &self,
        key: &str,
        source: Source,
        range: Range<u64>,
    ) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
        match source {
            Source::Bytes(bytes) => {
                futures::stream::once(
                    async move { Ok(bytes.slice(range.start as usize..range.end as usize)) },
                )
                .boxed()
            }
            Source::Nar(table) => {
                logged_io(key, self.inner.renderer.range_of(table, range), RenderError::into_io)
            }
            Source::NarSpan(table, at) => {
                let span = at + range.start..at + range.end;
                logged_io(key, self.inner.renderer.range_of(table, span), RenderError::into_io)
            }
        }
    }

    /// The whole of object `key` of `bucket` (plain or virtual), with its metadata and
    /// attributes: the source of a CopyObject.
    pub(super) async fn object_source(
        &self,
        bucket: &str,
        key: &str,
    ) -> S3Result<(ObjectMeta, Attributes, crate::backend::ByteStream)> {
        let cache = self.cache(bucket);
        let target = Target::of(key);
        let (record, readable) = tokio::join!(cache.bucket_record(), async {
            match target {
                Target::Plain => None,
                target => Some(self.resolve(&cache, target, key).await),
            }
        });
        record.map_err(|e| commit_error(key, e))?.ok_or_else(|| s3_error!(NoSuchBucket))?;
        let Some(readable) = readable else {
            let got = cache.get_plain(key, None).await.map_err(|e| backend_error(key, e))?;
            return Ok((got.meta, got.attributes, got.body));
        };
        let readable = readable?;
        let attributes =
            Attributes { content_type: Some(readable.content_type.to_owned()), ..Default::default() };
        let owned = key.to_owned();
        let body = self
            .stream(key, readable.body, 0..readable.meta.size)
            .map_err(move |source| BackendError::Io { key: owned.clone(), source })
            .boxed();
        Ok((readable.meta, attributes, body))
    }

    /// What a virtual key is, if this bucket shows it.
    async fn resolve(&self, cache: &Cache, target: Target, key: &str) -> S3Result<Readable> {
        let not_found = || s3_error!(NoSuchKey);
        let failed = |e| commit_error(key, e);
        match target {
            Target::CacheInfo => {
                let Some(bucket) = cache.bucket_record().await.map_err(failed)? else {
                    return Err(not_found());
                };
                Ok(Readable::new(
                    Cache::nix_cache_info_meta(&bucket),
                    "text/x-nix-cache-info",
                    Source::Bytes(Bytes::from(bucket.0.nix_cache_info())),
                ))
            }
            Target::NarInfo { store_hash } => {
                let (visible, path) = tokio::join!(cache.visible(key), cache.path_info(&store_hash));
                let (Some(visible), Some(path)) = (visible.map_err(failed)?, path.map_err(failed)?) else {
                    return Err(not_found());
                };
                let text = cache.served_narinfo(&path).await.map_err(failed)?.render();
                let (size, etag) = (text.len() as u64, crate::cache::md5_hex(text.as_bytes()));
                let meta = if (size, etag.as_str()) == (visible.size, visible.etag.as_str()) {
                    visible.as_ref().clone()
                } else {
                    // The text changed (the bucket's signing key did): list it as it is now.
                    cache.replace_visible(&visible, size, &etag).await.map_err(failed)?
                };
                Ok(Readable::new(meta, "text/x-nix-narinfo", Source::Bytes(Bytes::from(text))))
            }
            Target::Listing { store_hash } => {
                let (visible, path) = tokio::join!(cache.visible(key), cache.path_info(&store_hash));
                let (Some(visible), Some(path)) = (visible.map_err(failed)?, path.map_err(failed)?) else {
                    return Err(not_found());
                };
                let listing =
                    self.inner.renderer.listing(&path.nar_hash).await.map_err(|e| render_error(key, e))?;
                check_size(key, &visible, listing.len() as u64)?;
                Ok(Readable::new(
                    visible.as_ref().clone(),
                    "application/json",
                    Source::Bytes(Bytes::from(listing)),
                ))
            }
            Target::Nar { nar_hash } => {
                let (visible, table) = tokio::join!(cache.visible(key), self.inner.renderer.table(&nar_hash));
                let visible = visible.map_err(failed)?.ok_or_else(not_found)?;
                let table = table.map_err(|e| render_error(key, e))?;
                check_size(key, &visible, table.nar_size())?;
                Ok(Readable::new(visible.as_ref().clone(), NAR_CONTENT_TYPE, Source::Nar(table)))
            }
            Target::StoreNar { store_path } => {
                let store_hash = store_path.hash_part();
                let (visible, path) = tokio::join!(cache.visible(key), cache.path_info(&store_hash));
                let (Some(visible), Some(path)) = (visible.map_err(failed)?, path.map_err(failed)?) else {
                    return Err(not_found());
                };
                if path.store_path != store_path.to_absolute() {
                    return Err(not_found());
                }
                let table =
                    self.inner.renderer.table(&path.nar_hash).await.map_err(|e| render_error(key, e))?;
                check_size(key, &visible, table.nar_size())?;
                tracing::debug!(%key, nar = %nixbase32::encode(&path.nar_hash), "store path alias");
                Ok(Readable::new(visible.as_ref().clone(), NAR_CONTENT_TYPE, Source::Nar(table)))
            }
            Target::Tree { store_path, path } => {
                let tree = cache
                    .browse(&self.inner.renderer, &store_path)
                    .await
                    .map_err(failed)?
                    .ok_or_else(not_found)?;
                let entry = tree.tree.get(&path).ok_or_else(not_found)?;
                let mut attributes = Attributes::default();
                let body = match &entry.node {
                    TreeNode::File { executable, nar_offset, .. } => {
                        if *executable {
                            attributes.metadata.insert("executable".into(), "true".into());
                        }
                        Source::NarSpan(tree.tree.table().clone(), *nar_offset)
                    }
                    TreeNode::Symlink { target } => {
                        attributes.metadata.insert("symlink-target".into(), header_text(target));
                        Source::Bytes(Bytes::copy_from_slice(target))
                    }
                    TreeNode::EmptyDirectory => Source::Bytes(Bytes::new()),
                };
                Ok(Readable { meta: tree.meta(entry), content_type: DEFAULT_CONTENT_TYPE, attributes, body })
            }
            Target::NarUpload | Target::StoreView | Target::Plain => Err(not_found()),
        }
    }

    /// GET or HEAD of a plain object: one backend request (a stat first only when preconditions
    /// or a suffix range need the object's metadata before its bytes).
    async fn read_plain(
        &self,
        cache: &Cache,
        key: &str,
        headers: &HeaderMap,
        head: bool,
        whole_part: bool,
        overrides: &ResponseOverrides,
    ) -> S3Result<S3Response<Body>> {
        let range_header = header_range(headers, whole_part);
        let conditional =
            ["if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if-range"]
                .iter()
                .any(|h| headers.contains_key(*h));
        let suffix = matches!(range_header, Some(super::conditional::RangeSpec::Suffix(_)));
        if head || conditional || suffix {
            let (meta, attributes) = cache.stat_plain(key).await.map_err(|e| backend_error(key, e))?;
            let plan = plan(headers, &meta, range_header)?;
            let mut response = plan.response(&meta, DEFAULT_CONTENT_TYPE, &attributes, overrides);
            if head || plan.status == StatusCode::NOT_MODIFIED {
                return Ok(response);
            }
            let got =
                cache.get_plain(key, Some(plan.range.clone())).await.map_err(|e| backend_error(key, e))?;
            if got.meta.etag != meta.etag {
                // Replaced between the stat and the GET: the client retries and sees the new one.
                return Err(s3_error!(PreconditionFailed, "the object changed while it was read"));
            }
            response.output = sized_body(
                logged_io(key, got.body, std::io::Error::other),
                plan.range.end - plan.range.start,
            );
            return Ok(response);
        }
        let wanted = range_header.map(|spec| match spec {
            super::conditional::RangeSpec::FromTo(a, b) => a..b.saturating_add(1),
            super::conditional::RangeSpec::From(a) => a..u64::MAX,
            super::conditional::RangeSpec::Suffix(_) => 0..u64::MAX,
        });
        let got = match cache.get_plain(key, wanted).await {
            Ok(got) => got,
            Err(BackendError::InvalidRange { size, .. }) => return Err(invalid_range(size)),
            Err(e) => return Err(backend_error(key, e)),
        };
        let plan = Plan {
            status: if range_header.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK },
            range: got.range.clone(),
        };
        let mut response = plan.response(&got.meta, DEFAULT_CONTENT_TYPE, &got.attributes, overrides);
        response.output =
            sized_body(logged_io(key, got.body, std::io::Error::other), got.range.end - got.range.start);
        Ok(response)
    }
}

/// The content type of NARs.
const NAR_CONTENT_TYPE: &str = "application/x-nix-nar";

/// The content type of a plain object stored without one.
const DEFAULT_CONTENT_TYPE: &str = "binary/octet-stream";

/// `bytes` as a header value: printable ASCII as it is, every other byte and `%` as `%XX`.
fn header_text(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A visible key's listed size must be what the gateway renders for it.
fn check_size(key: &str, visible: &ObjectMeta, rendered: u64) -> S3Result<()> {
    if visible.size == rendered {
        return Ok(());
    }
    Err(internal(key, &format!("listed with {} bytes, renders {rendered}", visible.size)))
}

/// The Range header to honour: none for `partNumber=1` (the whole object is its only part).
fn header_range(headers: &HeaderMap, whole_part: bool) -> Option<super::conditional::RangeSpec> {
    if whole_part {
        return None;
    }
    headers.get(http::header::RANGE).and_then(|v| v.to_str().ok()).and_then(parse_range)
}

/// 416, saying how large the object is.
fn invalid_range(size: u64) -> S3Error {
    let mut e = S3Error::with_message(S3ErrorCode::InvalidRange, "The requested range is not satisfiable");
    // s3s replaces the error response's headers by these: keep it an XML error.
    let mut headers = HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
        headers.insert(http::header::CONTENT_RANGE, value);
    }
    e.set_headers(headers);
    e
}

/// How a GET or HEAD is answered.
#[derive(Debug, Clone)]
struct Plan {
    status: StatusCode,
    range: Range<u64>,
}

/// Evaluates preconditions and the range of a read of the object `meta`.
fn plan(
    headers: &HeaderMap,
    meta: &ObjectMeta,
    spec: Option<super::conditional::RangeSpec>,
) -> S3Result<Plan> {
    match evaluate(headers, &meta.etag, meta.last_modified) {
        Verdict::PreconditionFailed => Err(s3_error!(
            PreconditionFailed,
            "At least one of the pre-conditions you specified did not hold"
        )),
        Verdict::NotModified => Ok(Plan { status: StatusCode::NOT_MODIFIED, range: 0..0 }),
        Verdict::Serve { use_range } => match spec.filter(|_| use_range) {
            None => Ok(Plan { status: StatusCode::OK, range: 0..meta.size }),
            Some(spec) => match spec.resolve(meta.size) {
                Some(range) => Ok(Plan { status: StatusCode::PARTIAL_CONTENT, range }),
                None => Err(invalid_range(meta.size)),
            },
        },
    }
}

/// The `response-*` query parameters of a GET, which override response headers.
#[derive(Debug, Default)]
struct ResponseOverrides {
    headers: Vec<(http::HeaderName, String)>,
    /// `x-amz-checksum-mode: ENABLED`: the stored checksums of a plain object are shown.
    checksum_mode: bool,
}

impl ResponseOverrides {
    fn from_request(uri: &Uri, headers: &HeaderMap) -> Self {
        let checksum_mode =
            headers.get("x-amz-checksum-mode").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"enabled"));
        let mut out = vec![];
        for (name, value) in query_pairs(uri) {
            let header = match name.as_str() {
                "response-cache-control" => http::header::CACHE_CONTROL,
                "response-content-disposition" => http::header::CONTENT_DISPOSITION,
                "response-content-encoding" => http::header::CONTENT_ENCODING,
                "response-content-language" => http::header::CONTENT_LANGUAGE,
                "response-content-type" => http::header::CONTENT_TYPE,
                "response-expires" => http::header::EXPIRES,
                _ => continue,
            };
            out.push((header, value));
        }
        ResponseOverrides { headers: out, checksum_mode }
    }
}

impl Plan {
    /// The response's status and headers (its body is set by the caller).
    fn response(
        &self,
        meta: &ObjectMeta,
        content_type: &str,
        attributes: &Attributes,
        overrides: &ResponseOverrides,
    ) -> S3Response<Body> {
        let mut headers = HeaderMap::new();
        let mut set = |name: http::HeaderName, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        };
        set(http::header::ETAG, &format!("\"{}\"", meta.etag));
        set(http::header::LAST_MODIFIED, &httpdate::fmt_http_date(meta.last_modified));
        set(http::header::ACCEPT_RANGES, "bytes");
        if self.status != StatusCode::NOT_MODIFIED {
            set(http::header::CONTENT_LENGTH, &(self.range.end - self.range.start).to_string());
            set(http::header::CONTENT_TYPE, attributes.content_type.as_deref().unwrap_or(content_type));
            for (name, value) in [
                (http::header::CONTENT_ENCODING, &attributes.content_encoding),
                (http::header::CACHE_CONTROL, &attributes.cache_control),
                (http::header::CONTENT_DISPOSITION, &attributes.content_disposition),
                (http::header::CONTENT_LANGUAGE, &attributes.content_language),
            ] {
                if let Some(value) = value {
                    set(name, value);
                }
            }
            for (name, value) in &attributes.metadata {
                // Checksums stored with the object are headers of their own, when asked for.
                let header = match name.strip_prefix(super::body::CHECKSUM_PREFIX) {
                    // Whole-object checksums describe whole responses only (S3 omits them for ranges).
                    Some(_) if overrides.checksum_mode && self.status == StatusCode::OK => name.clone(),
                    Some(_) => continue,
                    None => format!("x-amz-meta-{name}"),
                };
                if let Ok(name) = http::HeaderName::from_bytes(header.as_bytes()) {
                    set(name, value);
                }
            }
            for (name, value) in &overrides.headers {
                set(name.clone(), value);
            }
        }
        if self.status == StatusCode::PARTIAL_CONTENT {
            let range = format!("bytes {}-{}/{}", self.range.start, self.range.end - 1, meta.size);
            set(http::header::CONTENT_RANGE, &range);
        }
        let mut response = S3Response::with_status(Body::empty(), self.status);
        response.headers = headers;
        response
    }
}

/// A body as I/O results for hyper, each failure (which aborts the response) logged with the key.
fn logged_io<E: std::fmt::Display + 'static>(
    key: &str,
    body: BoxStream<'static, Result<Bytes, E>>,
    into_io: fn(E) -> std::io::Error,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    let key = key.to_owned();
    body.map(move |piece| {
        piece.map_err(|e| {
            tracing::error!(%key, "the body failed after the response started: {e}");
            into_io(e)
        })
    })
    .boxed()
}

/// A response body of exactly `len` bytes from `stream`: a stream that fails, ends early or runs
/// long is an error, which makes hyper abort the connection, so the client sees a truncated
/// transfer, never a short "complete" one.
fn sized_body(stream: BoxStream<'static, Result<Bytes, std::io::Error>>, len: u64) -> Body {
    Body::http_body_unsync(SizedBody { stream, remaining: len })
}

/// See [`sized_body`].
struct SizedBody {
    stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
    remaining: u64,
}

impl http_body::Body for SizedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        match self.stream.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(bytes))) => {
                let n = bytes.len() as u64;
                if n > self.remaining {
                    return Poll::Ready(Some(Err(std::io::Error::other("the body ran past its length"))));
                }
                self.remaining -= n;
                Poll::Ready(Some(Ok(http_body::Frame::data(bytes))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the body ended early",
            )))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}
