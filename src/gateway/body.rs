//! The body of an upload as the gateway reads it: streamed (never held whole), its MD5 (the
//! ETag) and any checksum the client sent computed on the way through, and checked at its end:
//! `Content-MD5`, `x-amz-checksum-*` as a header or as an aws-chunked trailer (s3s decodes the
//! framing and verifies the trailer's signature; the values are ours to check). A trailer's
//! checksum, once it matched, is handed on as metadata of the body's end
//! ([`Receipt::late_metadata`]), so that a plain object keeps it as it keeps a header's. A body
//! that stalls longer than the idle timeout ends with an error instead of holding the request open.
//!
//! The stream ends in an error on any failure, so that whatever consumes it (a backend put, the
//! ingest) stops and commits nothing; the [`Receipt`] then says why, for the S3 error.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::Digest as _;
use s3s::dto::{Checksum, StreamingBlob};
use s3s::{S3Error, S3ErrorCode, TrailingHeaders, s3_error};

use super::checksum::Hasher;
use crate::backend::{BackendError, ByteStream, LateMetadata};

/// The prefix of the checksum headers; also the names under which a plain object's checksums
/// are kept in its metadata (user metadata with this prefix is not accepted).
pub const CHECKSUM_PREFIX: &str = "x-amz-checksum-";

/// The checksum algorithms S3 knows, by the name of their header.
pub const ALGORITHMS: [&str; 5] = ["crc32", "crc32c", "crc64nvme", "sha1", "sha256"];

/// What the client said the body must match.
#[derive(Debug, Default)]
pub struct Expected {
    /// `Content-MD5`, decoded.
    pub content_md5: Option<[u8; 16]>,
    /// `x-amz-checksum-*` values given as headers (base64, as sent).
    pub checksum: Checksum,
    /// The algorithms whose checksum comes as a trailer (`x-amz-trailer`).
    pub trailer: Vec<&'static str>,
    /// The trailers, once the body has been read.
    pub trailing_headers: Option<TrailingHeaders>,
}

impl Expected {
    /// What a request's headers promise about its body. A malformed `Content-MD5` is
    /// InvalidDigest.
    pub fn from_request(
        headers: &http::HeaderMap,
        trailing_headers: Option<TrailingHeaders>,
    ) -> Result<Expected, S3Error> {
        let content_md5 = match headers.get("content-md5") {
            None => None,
            Some(value) => Some(decode_content_md5(value.to_str().unwrap_or_default())?),
        };
        let header = |alg: &str| {
            headers.get(format!("x-amz-checksum-{alg}")).and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        let checksum = Checksum {
            checksum_crc32: header("crc32"),
            checksum_crc32c: header("crc32c"),
            checksum_crc64nvme: header("crc64nvme"),
            checksum_sha1: header("sha1"),
            checksum_sha256: header("sha256"),
            ..Default::default()
        };
        let trailer = headers
            .get_all("x-amz-trailer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| {
                let alg = name.trim().to_ascii_lowercase();
                ALGORITHMS.iter().copied().find(|a| alg.strip_prefix("x-amz-checksum-") == Some(*a))
            })
            .collect();
        Ok(Expected { content_md5, checksum, trailer, trailing_headers })
    }

    /// The checksums given as headers, as metadata entries to keep with a plain object (those
    /// of trailers, checked once the body has ended, are the [`Receipt::late_metadata`]).
    pub fn header_checksums(&self) -> Vec<(String, String)> {
        super::checksum::full_object_entries(&self.checksum)
    }

    /// The algorithms to compute: those with a value in a header or a trailer.
    fn algorithms(&self) -> Vec<&'static str> {
        let mut algorithms: Vec<&'static str> =
            ALGORITHMS.iter().copied().filter(|a| value_of(&self.checksum, a).is_some()).collect();
        for alg in &self.trailer {
            if !algorithms.contains(alg) {
                algorithms.push(alg);
            }
        }
        algorithms
    }
}

/// The body's SHA-256 as the request signed it, when s3s verifies the body against it as it
/// streams: a SigV4 request (by header or presigned; `signed_v4`) whose `x-amz-content-sha256` is
/// a hex SHA-256 rather than `UNSIGNED-PAYLOAD` or a streaming mode. s3s then wraps the body in
/// its `UploadStream`, which ends the body with an error instead of its end when the bytes
/// differ, so whoever reads the body to its end without an error has read bytes of this hash.
/// (SigV2 and anonymous requests are not checked: `None`.)
pub fn verified_sha256(headers: &http::HeaderMap, signed_v4: bool) -> Option<[u8; 32]> {
    let value = headers.get("x-amz-content-sha256")?.to_str().ok()?;
    let mut hash = [0u8; 32];
    (signed_v4 && value.len() == 64 && hex::decode_to_slice(value, &mut hash).is_ok()).then_some(hash)
}

/// A `Content-MD5` header's value, decoded (InvalidDigest when it is not 16 bytes of base64).
pub fn decode_content_md5(b64: &str) -> Result<[u8; 16], S3Error> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| s3_error!(InvalidDigest, "The Content-MD5 you specified is not valid base64"))?;
    <[u8; 16]>::try_from(bytes)
        .map_err(|_| s3_error!(InvalidDigest, "The Content-MD5 you specified is not 16 bytes"))
}

/// The value of checksum `alg` in `checksum`.
pub fn value_of<'a>(checksum: &'a Checksum, alg: &str) -> Option<&'a str> {
    match alg {
        "crc32" => checksum.checksum_crc32.as_deref(),
        "crc32c" => checksum.checksum_crc32c.as_deref(),
        "crc64nvme" => checksum.checksum_crc64nvme.as_deref(),
        "sha1" => checksum.checksum_sha1.as_deref(),
        "sha256" => checksum.checksum_sha256.as_deref(),
        _ => None,
    }
}

/// What a whole body turned out to be.
#[derive(Debug, Clone)]
pub struct Received {
    /// The checksums the client asked for, computed (base64).
    pub checksum: Checksum,
}

/// Why a body was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyError {
    /// The client's stream failed or ended early.
    #[error("the request body failed: {0}")]
    Client(String),
    /// No byte arrived for the idle timeout.
    #[error("no byte of the request body arrived for {0:?}")]
    Idle(Duration),
    /// The body's SHA-256 is not the signed `x-amz-content-sha256` (s3s found it out).
    #[error("The x-amz-content-sha256 you specified did not match what we received.")]
    PayloadSha256,
    /// `Content-MD5` does not match.
    #[error("The Content-MD5 you specified did not match what we received.")]
    ContentMd5,
    /// An `x-amz-checksum-*` value does not match.
    #[error("The {0} you specified did not match the calculated checksum.")]
    Checksum(String),
    /// A checksum value is not base64 of the right length.
    #[error("Value for x-amz-checksum-{0} header is invalid.")]
    InvalidChecksum(&'static str),
    /// A trailer the request announced never came.
    #[error("the trailer x-amz-checksum-{0} announced by x-amz-trailer is missing")]
    MissingTrailer(&'static str),
}

impl BodyError {
    /// The S3 error of this failure.
    pub fn to_s3(&self) -> S3Error {
        let code = match self {
            BodyError::Client(_) | BodyError::Idle(_) => S3ErrorCode::IncompleteBody,
            BodyError::ContentMd5 | BodyError::Checksum(_) => S3ErrorCode::BadDigest,
            BodyError::InvalidChecksum(_) | BodyError::MissingTrailer(_) => S3ErrorCode::InvalidRequest,
            // S3's own code for it, which s3s does not know.
            BodyError::PayloadSha256 => {
                let mut error = S3Error::with_message(
                    S3ErrorCode::Custom("XAmzContentSHA256Mismatch".into()),
                    self.to_string(),
                );
                error.set_status_code(http::StatusCode::BAD_REQUEST);
                return error;
            }
        };
        S3Error::with_message(code, self.to_string())
    }
}

/// How a body ended, once it has: shared by the stream and whoever answers the request.
#[derive(Debug, Clone, Default)]
pub struct Receipt {
    outcome: Arc<Mutex<Option<Result<Received, BodyError>>>>,
    late: LateMetadata,
}

impl Receipt {
    /// The checksums that came as trailers, as metadata entries to keep with a plain object:
    /// filled once they matched, before the body's stream ends (see
    /// [`PutOptions::late_metadata`](crate::backend::PutOptions::late_metadata)).
    pub fn late_metadata(&self) -> LateMetadata {
        self.late.clone()
    }

    /// The body's outcome, if it was read to its end or failed.
    pub fn outcome(&self) -> Option<Result<Received, BodyError>> {
        self.outcome.lock().ok().and_then(|g| g.clone())
    }

    /// The failure of the body, if it failed.
    pub fn failure(&self) -> Option<BodyError> {
        self.outcome().and_then(Result::err)
    }

    fn set(&self, outcome: Result<Received, BodyError>) {
        if let Ok(mut guard) = self.outcome.lock() {
            guard.get_or_insert(outcome);
        }
    }
}

/// A request body being received (see the module docs).
struct Receiving {
    key: String,
    body: Option<StreamingBlob>,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    md5: Option<md5::Md5>,
    hashers: Vec<(&'static str, Hasher)>,
    expected: Expected,
    receipt: Receipt,
}

/// Reads `body` as a [`ByteStream`] that fails on a stall of `idle`, on a client error, and at
/// its end when a digest does not match; the [`Receipt`] tells the outcome.
pub fn receive(
    key: &str,
    body: Option<StreamingBlob>,
    expected: Expected,
    idle: Duration,
) -> (ByteStream, Receipt) {
    let receipt = Receipt::default();
    let hashers = expected.algorithms().into_iter().map(|alg| (alg, Hasher::new(alg))).collect();
    let receiving = Receiving {
        key: key.to_owned(),
        body,
        idle,
        timer: None,
        md5: expected.content_md5.map(|_| md5::Md5::new()),
        hashers,
        expected,
        receipt: receipt.clone(),
    };
    (receiving.boxed(), receipt)
}

impl Receiving {
    fn fail(&mut self, error: BodyError) -> Poll<Option<Result<Bytes, BackendError>>> {
        self.body = None;
        let message = error.to_string();
        let backend = match error {
            BodyError::ContentMd5 => BackendError::DigestMismatch { key: self.key.clone() },
            _ => BackendError::Body { key: self.key.clone(), message },
        };
        self.receipt.set(Err(error));
        Poll::Ready(Some(Err(backend)))
    }

    /// The body ended: every digest checked.
    fn finish(&mut self) -> Result<Received, BodyError> {
        // MD5 is computed only to check a Content-MD5 (the backend and the ingest know it).
        let md5: Option<[u8; 16]> = self.md5.take().map(|h| h.finalize().into());
        if md5.is_some() && md5 != self.expected.content_md5 {
            return Err(BodyError::ContentMd5);
        }
        let trailers = self.expected.trailing_headers.as_ref().and_then(TrailingHeaders::take);
        let mut computed = Checksum::default();
        let mut from_trailers = Checksum::default();
        for (alg, hasher) in std::mem::take(&mut self.hashers) {
            let value = base64::engine::general_purpose::STANDARD.encode(hasher.finalize());
            let header = value_of(&self.expected.checksum, alg).map(str::to_owned);
            if header.is_none() {
                set_value(&mut from_trailers, alg, value.clone());
            }
            let given = header.or_else(|| {
                let name = format!("x-amz-checksum-{alg}");
                trailers.as_ref().and_then(|t| t.get(&name)).and_then(|v| v.to_str().ok()).map(str::to_owned)
            });
            let Some(given) = given else { return Err(BodyError::MissingTrailer(alg)) };
            let decoded = base64::engine::general_purpose::STANDARD.decode(given.trim()).ok();
            let expected_len = base64::engine::general_purpose::STANDARD.decode(&value).map(|v| v.len()).ok();
            if decoded.as_ref().map(Vec::len) != expected_len {
                return Err(BodyError::InvalidChecksum(alg));
            }
            if given.trim() != value {
                return Err(BodyError::Checksum(format!("x-amz-checksum-{alg}")));
            }
            set_value(&mut computed, alg, value);
        }
        // Every digest matched: the trailers' checksums may be kept.
        self.receipt.late.extend(super::checksum::full_object_entries(&from_trailers));
        Ok(Received { checksum: computed })
    }
}

/// Sets checksum `alg` of `checksum` to `value`.
pub fn set_value(checksum: &mut Checksum, alg: &str, value: String) {
    let slot = match alg {
        "crc32" => &mut checksum.checksum_crc32,
        "crc32c" => &mut checksum.checksum_crc32c,
        "crc64nvme" => &mut checksum.checksum_crc64nvme,
        "sha1" => &mut checksum.checksum_sha1,
        _ => &mut checksum.checksum_sha256,
    };
    *slot = Some(value);
}

impl Stream for Receiving {
    type Item = Result<Bytes, BackendError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(body) = this.body.as_mut() else { return Poll::Ready(None) };
        match Pin::new(body).poll_next(cx) {
            Poll::Ready(Some(Ok(piece))) => {
                this.timer = None;
                if let Some(md5) = &mut this.md5 {
                    md5.update(&piece);
                }
                for (_, hasher) in &mut this.hashers {
                    hasher.update(&piece);
                }
                Poll::Ready(Some(Ok(piece)))
            }
            Poll::Ready(Some(Err(e))) => {
                let message = e.to_string();
                // s3s's check of a signed payload's hash (its `UploadStreamError`) says so only in
                // its message.
                if message.contains("Sha256Mismatch") {
                    return this.fail(BodyError::PayloadSha256);
                }
                this.fail(BodyError::Client(message))
            }
            Poll::Ready(None) => match this.finish() {
                Ok(received) => {
                    this.body = None;
                    this.receipt.set(Ok(received));
                    Poll::Ready(None)
                }
                Err(e) => this.fail(e),
            },
            Poll::Pending => {
                let idle = this.idle;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => this.fail(BodyError::Idle(idle)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}
