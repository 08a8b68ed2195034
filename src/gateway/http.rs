//! The thin HTTP layer in front of s3s.
//!
//! Every accepted connection gets TCP_NODELAY. Each request then passes through [`handle`]:
//! `/health` is answered here; `POST` form uploads (which s3s would read into memory before any
//! check) and requests with several `Authorization` headers are refused; an `Authorization:
//! Basic` header (Nix's HTTP binary cache store with a netrc sends one on every request) is
//! checked against the key pairs, stripped, and the request marked [`BasicAuthenticated`] so that
//! s3s sees an unsigned request the access policy admits. Every response carries an
//! `x-amz-request-id`, and every S3 error body its `RequestId`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use s3s::service::S3Service;
use s3s::{Body, S3Error, S3ErrorCode};
use tokio::net::TcpListener;

use super::Gateway;
use super::auth::BasicAuthenticated;

/// How long a shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `gateway` on `listener` until `shutdown` completes, then lets requests in flight finish
/// (for up to ten seconds).
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let s3 = gateway.s3_service();
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
        let (gateway, s3) = (gateway.clone(), s3.clone());
        let service = hyper::service::service_fn(move |req| {
            let (gateway, s3) = (gateway.clone(), s3.clone());
            async move { handle(&gateway, &s3, req).await }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("requests still running at shutdown were cut off"),
    }
    Ok(())
}

/// A fresh request id: the process's start time and a counter, as hex.
fn request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(crate::cache::now_secs);
    format!("{start:08X}{:08X}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// One request, through this layer and s3s.
async fn handle(
    gateway: &Gateway,
    s3: &S3Service,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, s3s::HttpError> {
    let id = request_id();
    let response = match screen(gateway, &mut req).await {
        Ok(Some(response)) => response,
        Ok(None) => super::multipart::one_xml_declaration(s3.call(req.map(Body::from)).await?),
        Err(e) => error_response(e),
    };
    Ok(with_request_id(response, &id))
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
