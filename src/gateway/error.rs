//! How the core's errors become S3 errors.
//!
//! A missing object is NoSuchKey; a key the backend cannot hold is KeyTooLongError; anything that
//! says stored data is damaged (a record that does not decode, a chunk that fails its digest) is
//! an InternalError, logged with the key, never wrong bytes; a backend that cannot be reached is
//! ServiceUnavailable, so clients retry.

use s3s::{S3Error, S3ErrorCode};

use crate::backend::BackendError;
use crate::cache::CommitError;
use crate::ingest::IngestError;
use crate::render::RenderError;

/// The S3 error for a failed backend request about `key`.
pub fn backend_error(key: &str, e: BackendError) -> S3Error {
    match e {
        BackendError::NotFound { .. } => S3Error::new(S3ErrorCode::NoSuchKey),
        BackendError::InvalidKey { .. } => S3Error::with_message(
            S3ErrorCode::KeyTooLongError,
            "Your key is too long for this gateway's store.",
        ),
        BackendError::InvalidRange { .. } => {
            S3Error::with_message(S3ErrorCode::InvalidRange, "The requested range is not satisfiable")
        }
        BackendError::DigestMismatch { .. } => S3Error::with_message(
            S3ErrorCode::BadDigest,
            "The Content-MD5 you specified did not match what we received.",
        ),
        BackendError::Body { message, .. } => {
            S3Error::with_message(S3ErrorCode::IncompleteBody, format!("the request body failed: {message}"))
        }
        BackendError::Remote { .. } | BackendError::Io { .. } | BackendError::Injected { .. } => {
            tracing::error!(%key, "backend request failed: {e}");
            S3Error::with_message(
                S3ErrorCode::ServiceUnavailable,
                "The gateway's store did not answer; retry.",
            )
        }
    }
}

/// An InternalError, logged with the key and the cause.
pub fn internal(key: &str, cause: &dyn std::fmt::Display) -> S3Error {
    tracing::error!(%key, "internal error: {cause}");
    S3Error::with_message(S3ErrorCode::InternalError, "We encountered an internal error. Please try again.")
}

/// The S3 error for a failed read or commit of a cache's records about `key`.
pub fn commit_error(key: &str, e: CommitError) -> S3Error {
    match e {
        CommitError::Backend(e) => backend_error(key, e),
        CommitError::Render(e) => render_error(key, e),
        other => internal(key, &other),
    }
}

/// The S3 error for a NAR that could not be rendered, before its first byte was sent.
pub fn render_error(key: &str, e: RenderError) -> S3Error {
    match e {
        RenderError::NotFound(_) => internal(key, &"a visible NAR has no NAR record"),
        RenderError::Backend(e) => backend_error(key, e),
        other => internal(key, &other),
    }
}

/// The S3 error for an upload that could not be ingested. What is wrong with the upload is a
/// 4xx (Nix retries a 5xx with an empty body and hangs): a NAR that is not one → InvalidRequest,
/// one that is not the NAR expected → BadDigest, a running GC → 409 OperationAborted; a body
/// that failed → its own error ([`backend_error`]: IncompleteBody for a client that went).
pub fn ingest_error(key: &str, e: IngestError) -> S3Error {
    let (code, message) = match e {
        IngestError::Backend(e) => return backend_error(key, e),
        IngestError::Chunker(e) => return internal(key, &e),
        e @ IngestError::GcConflict => {
            let mut error = S3Error::with_message(S3ErrorCode::OperationAborted, e.to_string());
            error.set_status_code(http::StatusCode::CONFLICT);
            return error;
        }
        e @ (IngestError::NarHashMismatch { .. } | IngestError::NarSizeMismatch { .. }) => {
            (S3ErrorCode::BadDigest, e.to_string())
        }
        // A body is a stream of the backend's results: its own errors (the client went, a
        // staged part could not be read, a checksum the body checks did not match) are those.
        IngestError::Read(read) => {
            let message = format!("reading the upload: {read}");
            match read.into_inner().map(|inner| inner.downcast::<BackendError>()) {
                Some(Ok(body)) => return backend_error(key, *body),
                _ => (S3ErrorCode::IncompleteBody, message),
            }
        }
        e => (S3ErrorCode::InvalidRequest, e.to_string()),
    };
    S3Error::with_message(code, message)
}
