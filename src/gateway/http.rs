//! The thin HTTP layer in front of s3s, and the admin listener.
//!
//! Every accepted connection gets TCP_NODELAY. Each request then passes through [`handle`]:
//! `/health` is answered here; `POST` form uploads (which s3s would read into memory before any
//! check) and requests with several `Authorization` headers are refused; an `Authorization:
//! Basic` header (Nix's HTTP binary cache store with a netrc sends one on every request) is
//! checked against the key pairs, stripped, and the request marked [`BasicAuthenticated`] so that
//! s3s sees an unsigned request the access policy admits. Every response carries an
//! `x-amz-request-id`, and every S3 error body its `RequestId`.
//!
//! Every request is measured here: its body bytes received and its response body bytes sent
//! (both bodies are wrapped), its S3 operation (named by s3s's access check or the read route
//! through an [`Operation`] slot in the request's extensions; else [`operation_of`] derives it
//! from the method, path and query), status and duration. When its response ends (or is dropped:
//! the client went away), it is counted in the gateway's [`Metrics`] and logged, one line per
//! request, at target `nargate::request`.
//!
//! [`serve_admin`] serves `/metrics` (the [`Metrics`] as Prometheus text) and `/health` on a
//! listener of their own. Both listeners shut down the same way ([`accept_until`]): told to
//! stop, the listener is closed at once (new connections are refused), idle connections close,
//! requests in flight run on for up to the grace period.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use s3s::service::S3Service;
use s3s::{Body, S3Error, S3ErrorCode};
use tokio::net::TcpListener;

use super::Gateway;
use super::auth::BasicAuthenticated;
use crate::metrics::Metrics;

/// How [`serve_with`] and [`serve_admin`] serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How long, once told to stop, requests in flight may run on before they are cut off.
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions { shutdown_grace: crate::config::DEFAULT_SHUTDOWN_GRACE }
    }
}

/// What happened at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// The connections open when the listener stopped accepting.
    pub connections: usize,
    /// Whether the grace period ran out with requests still running (they were cut off).
    pub cut_off: bool,
}

/// Serves `gateway` on `listener` until `shutdown` completes, then lets requests in flight finish
/// for up to the default grace period ([`ServeOptions::default`]).
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with(listener, gateway, shutdown, &ServeOptions::default()).await.map(drop)
}

/// Serves `gateway` on `listener` until `shutdown` completes, then closes the listener and lets
/// requests in flight finish for up to `options.shutdown_grace`.
pub async fn serve_with(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()>,
    options: &ServeOptions,
) -> std::io::Result<Stopped> {
    let s3 = gateway.s3_service();
    accept_until(listener, Role::S3(gateway, s3), shutdown, options.shutdown_grace).await
}

/// Serves the admin endpoints on `listener` until `shutdown` completes: `GET /metrics` (the
/// text of `metrics`) and `GET /health`; every other path is 404.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
    options: &ServeOptions,
) -> std::io::Result<Stopped> {
    accept_until(listener, Role::Admin(metrics), shutdown, options.shutdown_grace).await
}

/// What a listener serves.
#[derive(Clone)]
enum Role {
    /// The S3 API.
    S3(Gateway, S3Service),
    /// `/metrics` and `/health`.
    Admin(Metrics),
}

impl Role {
    async fn call(self, req: Request<Incoming>) -> Result<Response<Body>, s3s::HttpError> {
        match self {
            Role::S3(gateway, s3) => handle(&gateway, &s3, req).await,
            Role::Admin(metrics) => Ok(admin(&metrics, &req)),
        }
    }
}

/// Accepts connections on `listener` and serves `role` on each until `shutdown` completes; then
/// drops the listener (new connections are refused), tells every connection to finish its
/// request in flight and close, and waits for them for up to `grace`.
async fn accept_until(
    listener: TcpListener,
    role: Role,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<Stopped> {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.as_mut() => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "TCP_NODELAY: {e}");
        }
        let role = role.clone();
        let service = hyper::service::service_fn(move |req| role.clone().call(req));
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    let address = listener.local_addr().ok();
    drop(listener);
    let open = graceful.count();
    tracing::info!(
        listener = ?address,
        connections = open,
        grace_secs = grace.as_secs_f64(),
        "stopped accepting; waiting for the requests in flight"
    );
    let cut_off = tokio::select! {
        () = graceful.shutdown() => false,
        () = tokio::time::sleep(grace) => {
            tracing::warn!(listener = ?address, "requests still running after the grace period were cut off");
            true
        }
    };
    Ok(Stopped { connections: open, cut_off })
}

/// The admin listener's answer.
fn admin(metrics: &Metrics, req: &Request<Incoming>) -> Response<Body> {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" if read => (StatusCode::OK, crate::metrics::CONTENT_TYPE, metrics.render().into()),
        "/health" if read => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        "/metrics" | "/health" => {
            (StatusCode::METHOD_NOT_ALLOWED, "text/plain", Bytes::from_static(b"GET or HEAD only\n"))
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"the admin listener serves /metrics and /health\n"),
        ),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A fresh request id: the process's start time and a counter, as hex.
fn request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static START: OnceLock<u64> = OnceLock::new();
    let start = *START.get_or_init(crate::cache::now_secs);
    format!("{start:08X}{:08X}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The S3 operation of a request, for its metrics and log line: set (once) by whatever part of
/// the gateway learns it, read by the HTTP layer when the response ends. Cloned into the
/// request's extensions.
#[derive(Debug, Clone, Default)]
pub(super) struct Operation(Arc<OnceLock<String>>);

impl Operation {
    /// Names the operation; a later name is ignored.
    pub(super) fn set(extensions: &http::Extensions, name: impl Into<String>) {
        if let Some(slot) = extensions.get::<Operation>() {
            let _ = slot.0.set(name.into());
        }
    }
}

/// One request, through this layer and s3s, measured.
async fn handle(
    gateway: &Gateway,
    s3: &S3Service,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, s3s::HttpError> {
    let mut exchange = Exchange::start(gateway, &req);
    let operation = Operation::default();
    req.extensions_mut().insert(operation.clone());
    let response = match screen(gateway, &mut req).await {
        Ok(Some(response)) => {
            let _ = operation.0.set("Health".into());
            (exchange.bucket, exchange.key) = Default::default();
            response
        }
        Ok(None) => {
            let received = exchange.received.clone();
            let req = req.map(|inner| Body::http_body(Counted::new(inner, received, None)));
            match s3.call(req).await {
                Ok(response) => super::multipart::one_xml_declaration(response),
                Err(e) => {
                    exchange.name(&operation);
                    exchange.status = 500;
                    exchange.finish(0, false);
                    return Err(e);
                }
            }
        }
        Err(e) => error_response(e),
    };
    exchange.name(&operation);
    exchange.status = response.status().as_u16();
    let response = with_request_id(response, &exchange.id);
    Ok(response.map(|inner| Body::http_body_unsync(Counted::new(inner, Arc::default(), Some(exchange)))))
}

/// What is known of a request while it runs: counted and logged when its response ends, or,
/// if it is dropped first (the client went away before the response began), as status 499.
struct Exchange {
    metrics: Metrics,
    id: String,
    op: String,
    method: Method,
    bucket: String,
    key: String,
    status: u16,
    received: Arc<AtomicU64>,
    start: Instant,
    finished: bool,
}

/// The status an [`Exchange`] dropped before its response began is counted and logged with
/// (nginx's "client closed request").
const CLIENT_CLOSED: u16 = 499;

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.finished {
            self.status = CLIENT_CLOSED;
            self.finish(0, false);
        }
    }
}

impl Exchange {
    /// A request begins.
    fn start(gateway: &Gateway, req: &Request<Incoming>) -> Exchange {
        let metrics = gateway.metrics().clone();
        metrics.add_in_flight(1);
        let (bucket, key) = gateway.target(req.uri(), req.headers()).unwrap_or_default();
        let op = operation_of(req.method(), req.uri(), req.headers(), &bucket, &key).to_owned();
        Exchange {
            metrics,
            id: request_id(),
            op,
            method: req.method().clone(),
            bucket,
            key,
            status: 0,
            received: Arc::default(),
            start: Instant::now(),
            finished: false,
        }
    }

    /// Takes the operation's name from `operation`, if something named it.
    fn name(&mut self, operation: &Operation) {
        if let Some(name) = operation.0.get() {
            self.op.clone_from(name);
        }
    }

    /// Its response ended (`complete`: its body was sent whole) after `sent` body bytes.
    fn finish(&mut self, sent: u64, complete: bool) {
        self.finished = true;
        let status = self.status;
        let elapsed = self.start.elapsed();
        let received = self.received.load(Ordering::Relaxed);
        self.metrics.add_in_flight(-1);
        self.metrics.record_request(&self.op, status, received, sent, elapsed);
        tracing::info!(
            target: "nargate::request",
            id = %self.id,
            op = %self.op,
            method = %self.method,
            bucket = %self.bucket,
            key = %self.key,
            status,
            bytes_in = received,
            bytes_out = sent,
            ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3,
            complete,
            "request"
        );
    }
}

pin_project_lite::pin_project! {
    /// A body that counts the data bytes it passes on into `bytes`; one that carries an
    /// [`Exchange`] (a response's) ends it when the body ends, fails or is dropped.
    struct Counted<B> {
        #[pin]
        inner: B,
        bytes: Arc<AtomicU64>,
        // The body's exact length, when it was known at the start.
        length: Option<u64>,
        exchange: Option<Exchange>,
    }

    impl<B> PinnedDrop for Counted<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(mut exchange) = this.exchange.take() {
                // Dropped before its end was polled: complete if all of it was sent.
                let sent = this.bytes.load(Ordering::Relaxed);
                exchange.finish(sent, *this.length == Some(sent));
            }
        }
    }
}

impl<B: http_body::Body<Data = Bytes>> Counted<B> {
    fn new(inner: B, bytes: Arc<AtomicU64>, exchange: Option<Exchange>) -> Self {
        Counted { length: inner.size_hint().exact(), inner, bytes, exchange }
    }
}

impl<B: http_body::Body<Data = Bytes>> http_body::Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                this.bytes.fetch_add(len, Ordering::Relaxed);
            }
            Some(Err(_)) | None => {
                if let Some(mut exchange) = this.exchange.take() {
                    exchange.finish(this.bytes.load(Ordering::Relaxed), frame.is_none());
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The S3 operation a request asks for, from its method, query and the bucket and key it names
/// (as [`Gateway::target`] found them): for requests that s3s does not name (refused before
/// its routing: bad signatures, malformed requests). The common operations are told apart;
/// `Unknown` stands for the rest.
pub(super) fn operation_of(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    bucket: &str,
    key: &str,
) -> &'static str {
    let query: Vec<String> = super::read::query_pairs(uri).map(|(name, _)| name).collect();
    let has = |name: &str| query.iter().any(|q| q == name);
    let copy = headers.contains_key("x-amz-copy-source");
    match (bucket.is_empty(), key.is_empty(), method.as_str()) {
        (true, _, "GET") => "ListBuckets",
        (false, true, "GET") if has("uploads") => "ListMultipartUploads",
        (false, true, "GET") if has("location") => "GetBucketLocation",
        (false, true, "GET") if query.iter().any(|q| q == "list-type") => {
            if uri.query().is_some_and(|q| q.split('&').any(|p| p == "list-type=2")) {
                "ListObjectsV2"
            } else {
                "ListObjects"
            }
        }
        (false, true, "GET") => "ListObjects",
        (false, true, "HEAD") => "HeadBucket",
        (false, true, "PUT") => "CreateBucket",
        (false, true, "DELETE") => "DeleteBucket",
        (false, true, "POST") if has("delete") => "DeleteObjects",
        (false, false, "GET") if has("uploadId") => "ListParts",
        (false, false, "GET") => "GetObject",
        (false, false, "HEAD") => "HeadObject",
        (false, false, "PUT") if has("uploadId") && copy => "UploadPartCopy",
        (false, false, "PUT") if has("uploadId") => "UploadPart",
        (false, false, "PUT") if copy => "CopyObject",
        (false, false, "PUT") => "PutObject",
        (false, false, "DELETE") if has("uploadId") => "AbortMultipartUpload",
        (false, false, "DELETE") => "DeleteObject",
        (false, false, "POST") if has("uploads") => "CreateMultipartUpload",
        (false, false, "POST") if has("uploadId") => "CompleteMultipartUpload",
        _ => "Unknown",
    }
}

/// Answers what this layer answers itself, and turns Basic credentials into a mark.
async fn screen(gateway: &Gateway, req: &mut Request<Incoming>) -> Result<Option<Response<Body>>, S3Error> {
    if req.uri().path() == "/health" && matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut response = Response::new(Body::from(Bytes::from_static(b"ok\n")));
        response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return Ok(Some(response));
    }
    if *req.method() == Method::POST {
        let content_type = req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        if content_type
            .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("multipart/form-data"))
        {
            return Err(S3Error::with_message(
                S3ErrorCode::NotImplemented,
                "POST form uploads are not supported",
            ));
        }
    }
    let mut authorizations = req.headers().get_all(http::header::AUTHORIZATION).iter();
    let (Some(authorization), None) = (authorizations.next(), authorizations.next()) else {
        if req.headers().contains_key(http::header::AUTHORIZATION) {
            return Err(S3Error::with_message(S3ErrorCode::InvalidRequest, "several Authorization headers"));
        }
        return Ok(None);
    };
    let Some(encoded) = authorization.to_str().ok().and_then(|v| v.strip_prefix("Basic ")) else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| S3Error::with_message(S3ErrorCode::InvalidArgument, "malformed Basic credentials"))?;
    let (id, secret) = decoded.split_once(':').unwrap_or((&decoded, ""));
    let Some(expected) = gateway.secret(id).await? else {
        return Err(S3Error::with_message(
            S3ErrorCode::InvalidAccessKeyId,
            "The access key id you provided does not exist in our records.",
        ));
    };
    if !constant_time_eq(expected.as_bytes(), secret.as_bytes()) {
        return Err(S3Error::with_message(
            S3ErrorCode::SignatureDoesNotMatch,
            "The secret you provided is not this key's",
        ));
    }
    req.headers_mut().remove(http::header::AUTHORIZATION);
    req.extensions_mut().insert(BasicAuthenticated { access_key_id: id.to_owned() });
    Ok(None)
}

/// Compares secrets without leaking where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The XML response of an S3 error raised by this layer.
fn error_response(e: S3Error) -> Response<Body> {
    match e.to_http_response() {
        Ok(response) => response,
        Err(_) => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    }
}

/// Adds the request id: as `x-amz-request-id`, and into an error body that lacks one.
fn with_request_id(response: Response<Body>, id: &str) -> Response<Body> {
    let (mut parts, mut body) = response.into_parts();
    if let Ok(value) = HeaderValue::from_str(id) {
        parts.headers.insert("x-amz-request-id", value);
    }
    let is_error_xml = parts.status.as_u16() >= 400
        && parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/xml"));
    if is_error_xml && let Some(bytes) = body.bytes() {
        let text = String::from_utf8_lossy(&bytes);
        if !text.contains("<RequestId>")
            && let Some(at) = text.rfind("</Error>")
        {
            let with_id = format!("{}<RequestId>{id}</RequestId>{}", &text[..at], &text[at..]);
            parts.headers.remove(http::header::CONTENT_LENGTH);
            body = Body::from(with_id);
        }
    }
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: &str, uri: &str, headers: &[(&str, &str)], bucket: &str, key: &str) -> &'static str {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        operation_of(&method, &uri.parse().unwrap(), &map, bucket, key)
    }

    #[test]
    fn operations_are_named_from_method_path_and_query() {
        let copy = [("x-amz-copy-source", "/b/src")];
        for (method, uri, headers, bucket, key, expected) in [
            ("GET", "/", &[][..], "", "", "ListBuckets"),
            ("GET", "/b", &[], "b", "", "ListObjects"),
            ("GET", "/b?list-type=2&prefix=nar%2F", &[], "b", "", "ListObjectsV2"),
            ("GET", "/b?list-type=1", &[], "b", "", "ListObjects"),
            ("GET", "/b?uploads", &[], "b", "", "ListMultipartUploads"),
            ("GET", "/b?location", &[], "b", "", "GetBucketLocation"),
            ("HEAD", "/b", &[], "b", "", "HeadBucket"),
            ("PUT", "/b", &[], "b", "", "CreateBucket"),
            ("DELETE", "/b", &[], "b", "", "DeleteBucket"),
            ("POST", "/b?delete", &[], "b", "", "DeleteObjects"),
            ("GET", "/b/nar/x.nar", &[], "b", "nar/x.nar", "GetObject"),
            ("GET", "/b/k?uploadId=1", &[], "b", "k", "ListParts"),
            ("HEAD", "/b/k", &[], "b", "k", "HeadObject"),
            ("PUT", "/b/k", &[], "b", "k", "PutObject"),
            ("PUT", "/b/k", &copy, "b", "k", "CopyObject"),
            ("PUT", "/b/k?partNumber=2&uploadId=1", &[], "b", "k", "UploadPart"),
            ("PUT", "/b/k?partNumber=2&uploadId=1", &copy, "b", "k", "UploadPartCopy"),
            ("DELETE", "/b/k", &[], "b", "k", "DeleteObject"),
            ("DELETE", "/b/k?uploadId=1", &[], "b", "k", "AbortMultipartUpload"),
            ("POST", "/b/k?uploads", &[], "b", "k", "CreateMultipartUpload"),
            ("POST", "/b/k?uploadId=1", &[], "b", "k", "CompleteMultipartUpload"),
            ("POST", "/b/k", &[], "b", "k", "Unknown"),
            ("PATCH", "/b", &[], "b", "", "Unknown"),
            ("PUT", "/", &[], "", "", "Unknown"),
        ] {
            assert_eq!(op(method, uri, headers, bucket, key), expected, "{method} {uri}");
        }
    }

    #[test]
    fn the_operation_slot_keeps_its_first_name() {
        let mut extensions = http::Extensions::new();
        Operation::set(&extensions, "Ignored");
        let slot = Operation::default();
        extensions.insert(slot.clone());
        Operation::set(&extensions, "GetObject");
        Operation::set(&extensions, "HeadObject");
        assert_eq!(slot.0.get().map(String::as_str), Some("GetObject"));
    }
}
