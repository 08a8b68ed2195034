//! The one envelope of every record the gateway writes: a 4-byte magic naming the record's kind, a
//! version byte, then the record serialized with `postcard` (a compact, stable binary encoding of
//! serde types). Chunks are not records: they carry only a codec tag (see [`super::chunk`]).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The kinds of record, each with its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A NAR record (`nars/<narhash>`).
    Nar,
    /// A directory, as hashed for its digest (kept inside NAR records).
    Directory,
    /// A path info (`caches/<bucket>/pathinfo/<storehash>`).
    PathInfo,
    /// A bucket's settings (`caches/<bucket>/bucket`).
    Bucket,
    /// A narinfo waiting for its NAR (`caches/<bucket>/pending/…`).
    Pending,
    /// An ingest in progress (`leases/<id>`).
    Lease,
    /// A GC sweep in progress (`locks/gc`).
    Lock,
    /// A cache's membership of a NAR (`caches/<bucket>/nars/<narhash>`).
    CacheNar,
    /// A client key pair (`credentials/<access key id>`).
    Credentials,
    /// A multipart upload in progress (`uploads/<bucket>/<id>`).
    Upload,
    /// A finished multipart upload (`uploads/.completed/<bucket>/<id>`).
    CompletedUpload,
    /// What an upload key of a cache names (`caches/<bucket>/uploadkeys/<key>`).
    UploadKey,
    /// The store's figures as last counted (`stats/summary`).
    Summary,
}

impl RecordKind {
    /// The 4-byte magic that starts records of this kind.
    pub const fn magic(self) -> &'static [u8; 4] {
        match self {
            RecordKind::Nar => b"NGNR",
            RecordKind::Directory => b"NGDR",
            RecordKind::PathInfo => b"NGPI",
            RecordKind::Bucket => b"NGBK",
            RecordKind::Pending => b"NGPD",
            RecordKind::Lease => b"NGLS",
            RecordKind::Lock => b"NGLK",
            RecordKind::CacheNar => b"NGCN",
            RecordKind::Credentials => b"NGCR",
            RecordKind::Upload => b"NGUP",
            RecordKind::CompletedUpload => b"NGUC",
            RecordKind::UploadKey => b"NGUK",
            RecordKind::Summary => b"NGST",
        }
    }
}

/// Why a stored record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The record does not start with the magic of the kind expected.
    #[error("not a {kind:?} record (bad magic)")]
    BadMagic {
        /// The kind expected.
        kind: RecordKind,
    },
    /// The record's version is one this build does not know.
    #[error("{kind:?} record version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion {
        /// The kind expected.
        kind: RecordKind,
        /// The version found.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// The body does not decode.
    #[error("{kind:?} record is malformed: {source}")]
    Malformed {
        /// The kind expected.
        kind: RecordKind,
        /// What the decoder said.
        #[source]
        source: postcard::Error,
    },
    /// The body decodes but breaks a rule of its kind.
    #[error("{kind:?} record is invalid: {reason}")]
    Invalid {
        /// The kind expected.
        kind: RecordKind,
        /// The rule broken.
        reason: String,
    },
}

/// Serializes `value` as a record of `kind`, version `version`.
pub fn encode<T: Serialize>(kind: RecordKind, version: u8, value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(kind.magic());
    out.push(version);
    // Serializing our own plain structs into a Vec cannot fail.
    postcard::to_io(value, &mut out).expect("postcard serialization into a Vec");
    out
}

/// Reads a record of `kind` and `version`; trailing bytes after the body are an error.
pub fn decode<T: DeserializeOwned>(kind: RecordKind, version: u8, bytes: &[u8]) -> Result<T, RecordError> {
    let body = bytes.strip_prefix(kind.magic()).ok_or(RecordError::BadMagic { kind })?;
    let (&found, body) = body.split_first().ok_or(RecordError::BadMagic { kind })?;
    if found != version {
        return Err(RecordError::UnsupportedVersion { kind, found, supported: version });
    }
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|source| RecordError::Malformed { kind, source })?;
    if !rest.is_empty() {
        return Err(RecordError::Invalid { kind, reason: format!("{} trailing bytes", rest.len()) });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Sample {
        a: u64,
        b: String,
    }

    #[test]
    fn golden_envelope() {
        let bytes = encode(RecordKind::Lease, 1, &Sample { a: 300, b: "x".into() });
        // magic, version, varint(300) = ac 02, len 1, 'x'
        assert_eq!(hex::encode(&bytes), "4e474c5301ac020178");
        assert_eq!(decode::<Sample>(RecordKind::Lease, 1, &bytes).unwrap(), Sample { a: 300, b: "x".into() });
    }

    #[test]
    fn rejects_wrong_kind_version_and_trailing_bytes() {
        let bytes = encode(RecordKind::Lease, 1, &Sample { a: 1, b: String::new() });
        assert!(matches!(decode::<Sample>(RecordKind::Lock, 1, &bytes), Err(RecordError::BadMagic { .. })));
        assert!(matches!(
            decode::<Sample>(RecordKind::Lease, 2, &bytes),
            Err(RecordError::UnsupportedVersion { found: 1, .. })
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode::<Sample>(RecordKind::Lease, 1, &longer), Err(RecordError::Invalid { .. })));
        assert!(matches!(
            decode::<Sample>(RecordKind::Lease, 1, &bytes[..6]),
            Err(RecordError::Malformed { .. })
        ));
    }
}
