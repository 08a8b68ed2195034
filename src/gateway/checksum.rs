//! Checksums of objects (`x-amz-checksum-*`): the running hashers of the algorithms S3 knows,
//! how a plain object keeps its checksums (as metadata named like the headers, which reads with
//! `x-amz-checksum-mode: ENABLED` show), and the checksum of an object a multipart upload
//! writes, computed as the staged parts stream into it:
//!
//! | type | algorithms | the object's checksum |
//! |---|---|---|
//! | `COMPOSITE` | CRC32, CRC32C, SHA-1, SHA-256 | the checksum of the parts' raw checksums concatenated, base64, then `-<parts>` |
//! | `FULL_OBJECT` | CRC32, CRC32C, CRC64NVME | the checksum of the whole object, base64 |
//!
//! (as S3 documents in "Checking object integrity"). The parts' own checksums were checked when
//! they were uploaded; the staged bytes are checked against their MD5s as they stream. When every
//! part kept its checksum of the upload's algorithm, the object's is made from those alone
//! ([`from_part_checksums`]: a full-object CRC by combining the parts' CRCs), without reading a
//! byte; that is also how a NAR upload, whose bytes go to the ingest, gets its checksum.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use s3s::crypto::Checksum as _;
use s3s::dto::{Checksum, ChecksumAlgorithm, ChecksumType};
use s3s::{S3Result, s3_error};

use super::body::{ALGORITHMS, CHECKSUM_PREFIX, set_value, value_of};
use crate::backend::{BackendError, ByteStream, LateMetadata};

/// The metadata name under which an object keeps its checksum type (`FULL_OBJECT` or
/// `COMPOSITE`), shown as the `x-amz-checksum-type` header with its checksums.
pub const CHECKSUM_TYPE: &str = "x-amz-checksum-type";

/// The metadata entry that keeps checksum `value` of algorithm `alg` with an object.
pub fn entry(alg: &str, value: &str) -> (String, String) {
    (format!("{CHECKSUM_PREFIX}{alg}"), value.to_owned())
}

/// The metadata entry of checksum type `type_`.
fn type_entry(type_: &str) -> (String, String) {
    (CHECKSUM_TYPE.to_owned(), type_.to_owned())
}

/// The metadata entries that keep `checksum` (all of a whole body: `FULL_OBJECT`) with a plain
/// object: none if it holds no value.
pub fn full_object_entries(checksum: &Checksum) -> Vec<(String, String)> {
    let mut entries: Vec<_> = ALGORITHMS
        .iter()
        .filter_map(|alg| Some(entry(alg, super::body::value_of(checksum, alg)?.trim())))
        .collect();
    if !entries.is_empty() {
        entries.push(type_entry(ChecksumType::FULL_OBJECT));
    }
    entries
}

/// The checksums of `checksum` that are set, by algorithm (`crc32`, …): what a staged part keeps.
pub fn part_entries(checksum: &Checksum) -> BTreeMap<String, String> {
    ALGORITHMS
        .iter()
        .filter_map(|alg| value_of(checksum, alg).map(|value| ((*alg).to_owned(), value.trim().to_owned())))
        .collect()
}

/// The checksums and checksum type that `metadata` keeps (see [`entry`] and [`CHECKSUM_TYPE`]).
pub fn from_metadata(metadata: &BTreeMap<String, String>) -> (Checksum, Option<ChecksumType>) {
    let mut checksum = Checksum::default();
    for alg in ALGORITHMS {
        if let Some(value) = metadata.get(&format!("{CHECKSUM_PREFIX}{alg}")) {
            set_value(&mut checksum, alg, value.clone());
        }
    }
    (checksum, metadata.get(CHECKSUM_TYPE).map(|t| ChecksumType::from(t.clone())))
}

/// One running checksum.
pub(super) enum Hasher {
    Crc32(s3s::crypto::Crc32),
    Crc32c(s3s::crypto::Crc32c),
    Crc64Nvme(s3s::crypto::Crc64Nvme),
    Sha1(s3s::crypto::Sha1),
    Sha256(s3s::crypto::Sha256),
}

impl Hasher {
    /// A hasher of algorithm `alg` (one of [`ALGORITHMS`]; SHA-256 for any other).
    pub(super) fn new(alg: &str) -> Hasher {
        match alg {
            "crc32" => Hasher::Crc32(s3s::crypto::Crc32::new()),
            "crc32c" => Hasher::Crc32c(s3s::crypto::Crc32c::new()),
            "crc64nvme" => Hasher::Crc64Nvme(s3s::crypto::Crc64Nvme::new()),
            "sha1" => Hasher::Sha1(s3s::crypto::Sha1::new()),
            _ => Hasher::Sha256(s3s::crypto::Sha256::new()),
        }
    }

    /// Hashes `data`.
    pub(super) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Crc32(h) => h.update(data),
            Hasher::Crc32c(h) => h.update(data),
            Hasher::Crc64Nvme(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
        }
    }

    /// The raw checksum (CRCs big-endian, as S3 encodes them).
    pub(super) fn finalize(self) -> Vec<u8> {
        match self {
            Hasher::Crc32(h) => h.finalize().as_ref().to_vec(),
            Hasher::Crc32c(h) => h.finalize().as_ref().to_vec(),
            Hasher::Crc64Nvme(h) => h.finalize().as_ref().to_vec(),
            Hasher::Sha1(h) => h.finalize().as_ref().to_vec(),
            Hasher::Sha256(h) => h.finalize().as_ref().to_vec(),
        }
    }
}

/// The base64 of `raw`, as checksums travel.
fn base64(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// How the checksum of a multipart upload's object is made (CreateMultipartUpload's
/// `x-amz-checksum-algorithm` and `x-amz-checksum-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultipartChecksum {
    /// The algorithm, one of [`ALGORITHMS`].
    pub algorithm: &'static str,
    /// `FULL_OBJECT` (the whole object's checksum) rather than `COMPOSITE`.
    pub full_object: bool,
}

impl MultipartChecksum {
    /// What CreateMultipartUpload asked for: `None` without an algorithm. As in S3, the type
    /// defaults to `FULL_OBJECT` for CRC64NVME and `COMPOSITE` for the others, and a type the
    /// algorithm cannot have (`FULL_OBJECT` SHA, `COMPOSITE` CRC64NVME) is InvalidRequest.
    pub fn from_request(
        algorithm: Option<&ChecksumAlgorithm>,
        type_: Option<&ChecksumType>,
    ) -> S3Result<Option<Self>> {
        // A type without an algorithm names no checksum: nothing to make.
        let Some(algorithm) = algorithm else { return Ok(None) };
        let name = algorithm.as_str().to_ascii_lowercase();
        let algorithm = ALGORITHMS
            .iter()
            .copied()
            .find(|a| *a == name)
            .ok_or_else(|| s3_error!(InvalidRequest, "unknown checksum algorithm {name}"))?;
        let full_object = match type_.map(ChecksumType::as_str) {
            None => algorithm == "crc64nvme",
            Some(ChecksumType::FULL_OBJECT) => true,
            Some(ChecksumType::COMPOSITE) => false,
            Some(other) => return Err(s3_error!(InvalidRequest, "unknown checksum type {other}")),
        };
        let crc = algorithm.starts_with("crc");
        if (full_object && !crc) || (!full_object && algorithm == "crc64nvme") {
            return Err(s3_error!(
                InvalidRequest,
                "The {} checksum type cannot be used with the {algorithm} checksum algorithm.",
                if full_object { "FULL_OBJECT" } else { "COMPOSITE" }
            ));
        }
        Ok(Some(MultipartChecksum { algorithm, full_object }))
    }

    /// The checksum type's name.
    pub fn type_name(&self) -> &'static str {
        if self.full_object { ChecksumType::FULL_OBJECT } else { ChecksumType::COMPOSITE }
    }

    /// As an upload record keeps it: `<algorithm> <type>`.
    pub fn encode(&self) -> String {
        format!("{} {}", self.algorithm, self.type_name())
    }

    /// What [`encode`](Self::encode) wrote.
    pub fn decode(text: &str) -> Option<Self> {
        let (algorithm, type_) = text.split_once(' ')?;
        let algorithm = ALGORITHMS.iter().copied().find(|a| *a == algorithm)?;
        let full_object = match type_ {
            ChecksumType::FULL_OBJECT => true,
            ChecksumType::COMPOSITE => false,
            _ => return None,
        };
        Some(MultipartChecksum { algorithm, full_object })
    }

    /// The upload's algorithm as s3s names it.
    pub fn algorithm(&self) -> ChecksumAlgorithm {
        ChecksumAlgorithm::from(self.algorithm.to_ascii_uppercase())
    }

    /// The upload's checksum type as s3s names it.
    pub fn checksum_type(&self) -> ChecksumType {
        ChecksumType::from_static(self.type_name())
    }
}

/// The object checksum, as metadata entries, of a multipart upload made by `checksum` from parts
/// whose own checksums (base64, as kept with the staged parts) and sizes are `parts` — what
/// [`checksummed`] computes from their bytes; `None` if a part has no checksum (or not a valid
/// one) of the algorithm.
pub fn from_part_checksums(
    checksum: MultipartChecksum,
    parts: &[(Option<&str>, u64)],
) -> Option<Vec<(String, String)>> {
    let raws: Vec<Vec<u8>> = parts
        .iter()
        .map(|(value, _)| base64::engine::general_purpose::STANDARD.decode((*value)?).ok())
        .collect::<Option<_>>()?;
    let value = if checksum.full_object {
        let algorithm = match checksum.algorithm {
            "crc32" => crc_fast::CrcAlgorithm::Crc32IsoHdlc,
            "crc32c" => crc_fast::CrcAlgorithm::Crc32Iscsi,
            "crc64nvme" => crc_fast::CrcAlgorithm::Crc64Nvme,
            _ => return None,
        };
        let width = if checksum.algorithm == "crc64nvme" { 8 } else { 4 };
        let mut combined: Option<u64> = None;
        for (raw, (_, size)) in raws.iter().zip(parts) {
            if raw.len() != width {
                return None;
            }
            // S3's CRCs are the big-endian bytes of the value.
            let mut bytes = [0u8; 8];
            bytes[8 - width..].copy_from_slice(raw);
            let crc = u64::from_be_bytes(bytes);
            combined = Some(match combined {
                None => crc,
                Some(before) => crc_fast::checksum_combine(algorithm, before, crc, *size),
            });
        }
        // (Complete refuses an upload of no part: a CRC of no byte is 0 anyway.)
        let combined = combined.unwrap_or(0);
        base64(&combined.to_be_bytes()[8 - width..])
    } else {
        let mut of_sums = Hasher::new(checksum.algorithm);
        of_sums.update(&raws.concat());
        format!("{}-{}", base64(&of_sums.finalize()), parts.len())
    };
    Some(vec![entry(checksum.algorithm, &value), type_entry(checksum.type_name())])
}

/// The running checksum of an object made of parts of known sizes.
struct PartSums {
    checksum: MultipartChecksum,
    /// The sizes of the parts not begun yet.
    sizes: std::vec::IntoIter<u64>,
    /// The bytes of the current part still to come.
    left: u64,
    /// The current part's checksum (`COMPOSITE`), or the whole object's (`FULL_OBJECT`).
    hasher: Option<Hasher>,
    /// The raw checksums of the parts done (`COMPOSITE`).
    sums: Vec<u8>,
    parts: usize,
}

impl PartSums {
    fn new(checksum: MultipartChecksum, sizes: Vec<u64>) -> Self {
        let hasher = checksum.full_object.then(|| Hasher::new(checksum.algorithm));
        PartSums { checksum, sizes: sizes.into_iter(), left: 0, hasher, sums: vec![], parts: 0 }
    }

    fn update(&mut self, mut data: &[u8]) {
        if self.checksum.full_object {
            if let Some(hasher) = &mut self.hasher {
                hasher.update(data);
            }
            return;
        }
        while !data.is_empty() {
            if self.left == 0 {
                self.close_part();
                // Bytes past the parts announced (which the staging refuses) count as one more.
                self.left = self.sizes.next().unwrap_or(u64::MAX);
                self.hasher = Some(Hasher::new(self.checksum.algorithm));
            }
            let take = data.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
            if let Some(hasher) = &mut self.hasher {
                hasher.update(&data[..take]);
            }
            self.left -= take as u64;
            data = &data[take..];
        }
    }

    fn close_part(&mut self) {
        if let Some(hasher) = self.hasher.take() {
            self.sums.extend(hasher.finalize());
            self.parts += 1;
        }
    }

    /// The object's checksum, as metadata entries.
    fn finish(mut self) -> Vec<(String, String)> {
        let value = if self.checksum.full_object {
            base64(&self.hasher.take().map(Hasher::finalize).unwrap_or_default())
        } else {
            self.close_part();
            // Parts with no byte (an empty last part) have checksums too.
            for _ in self.sizes.by_ref() {
                self.sums.extend(Hasher::new(self.checksum.algorithm).finalize());
                self.parts += 1;
            }
            let mut of_sums = Hasher::new(self.checksum.algorithm);
            of_sums.update(&self.sums);
            format!("{}-{}", base64(&of_sums.finalize()), self.parts)
        };
        vec![entry(self.checksum.algorithm, &value), type_entry(self.checksum.type_name())]
    }
}

/// The whole object's checksum a client sends with CompleteMultipartUpload, to be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// Its algorithm, the upload's.
    pub algorithm: &'static str,
    /// Its value, base64 (for a COMPOSITE checksum with or without its `-N`).
    pub value: String,
}

impl Claimed {
    /// The error of an object whose checksum is not the one claimed.
    pub fn mismatch(&self) -> s3s::S3Error {
        s3s::S3Error::with_message(
            s3s::S3ErrorCode::BadDigest,
            format!(
                "The x-amz-checksum-{} you specified did not match the calculated checksum.",
                self.algorithm
            ),
        )
    }
}

/// The checksum `sent` with a Complete of an upload made by `upload` (`None` if it sends none):
/// one of another algorithm than the upload's, or with an upload that has none, cannot be
/// checked, and is InvalidRequest, as in S3.
pub fn claimed_for(upload: Option<MultipartChecksum>, sent: &Checksum) -> S3Result<Option<Claimed>> {
    let Some((algorithm, value)) = ALGORITHMS.iter().find_map(|a| Some((*a, value_of(sent, a)?))) else {
        return Ok(None);
    };
    match upload {
        Some(upload) if upload.algorithm == algorithm => {
            Ok(Some(Claimed { algorithm, value: value.trim().to_owned() }))
        }
        _ => Err(s3_error!(
            InvalidRequest,
            "The upload was not created with the {algorithm} checksum algorithm that Complete names."
        )),
    }
}

/// Whether the object checksum of `entries` (metadata entries) is the one `claimed`.
pub fn matches(claimed: &Claimed, entries: &[(String, String)]) -> bool {
    let name = format!("{CHECKSUM_PREFIX}{}", claimed.algorithm);
    entries.iter().any(|(k, v)| {
        *k == name && (*v == claimed.value || v.split_once('-').is_some_and(|(sum, _)| sum == claimed.value))
    })
}

/// `body`, the staged parts of `sizes` concatenated, computing the object's `checksum` on the
/// way: once `body` has ended, and before the stream says so, its entries are added to `late` —
/// or, if they are not the `claimed` checksum, the stream ends with an error instead.
pub fn checksummed(
    body: ByteStream,
    sizes: Vec<u64>,
    checksum: MultipartChecksum,
    claimed: Option<Claimed>,
    late: LateMetadata,
) -> ByteStream {
    Checksummed { body, sums: Some(PartSums::new(checksum, sizes)), claimed, late }.boxed()
}

/// See [`checksummed`].
struct Checksummed {
    body: ByteStream,
    sums: Option<PartSums>,
    claimed: Option<Claimed>,
    late: LateMetadata,
}

impl Stream for Checksummed {
    type Item = Result<Bytes, BackendError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let polled = this.body.poll_next_unpin(cx);
        match &polled {
            Poll::Ready(Some(Ok(piece))) => {
                if let Some(sums) = &mut this.sums {
                    sums.update(piece);
                }
            }
            Poll::Ready(Some(Err(_))) => this.sums = None,
            Poll::Ready(None) => {
                if let Some(sums) = this.sums.take() {
                    let entries = sums.finish();
                    if let Some(claimed) = &this.claimed
                        && !matches(claimed, &entries)
                    {
                        let key = format!(
                            "the object of a multipart upload (x-amz-checksum-{})",
                            claimed.algorithm
                        );
                        return Poll::Ready(Some(Err(BackendError::DigestMismatch { key })));
                    }
                    this.late.extend(entries);
                }
            }
            Poll::Pending => {}
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn raw(alg: &str, data: &[u8]) -> Vec<u8> {
        let mut hasher = Hasher::new(alg);
        hasher.update(data);
        hasher.finalize()
    }

    async fn checksum_of(parts: &[&'static [u8]], checksum: MultipartChecksum, chunk: usize) -> String {
        let whole: Vec<u8> = parts.concat();
        let pieces: Vec<Result<Bytes, BackendError>> =
            whole.chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let late = LateMetadata::default();
        let sizes = parts.iter().map(|p| p.len() as u64).collect();
        let body = checksummed(futures::stream::iter(pieces).boxed(), sizes, checksum, None, late.clone());
        let got: Vec<Bytes> = body.try_collect().await.unwrap();
        assert_eq!(got.concat(), whole);
        let entries = late.entries();
        assert_eq!(entries[CHECKSUM_TYPE], checksum.type_name());
        entries[&format!("{CHECKSUM_PREFIX}{}", checksum.algorithm)].clone()
    }

    /// Whatever the chunks, a composite checksum is of the parts' checksums, a full one of the
    /// whole.
    #[tokio::test]
    async fn composite_and_full_object_checksums() {
        let parts: [&'static [u8]; 3] = [b"hello ", b"wide ", b"world"];
        for chunk in [1, 4, 100] {
            for alg in ["crc32", "crc32c", "sha1", "sha256"] {
                let composite = MultipartChecksum { algorithm: alg, full_object: false };
                let sums: Vec<u8> = parts.iter().flat_map(|p| raw(alg, p)).collect();
                let expected = format!("{}-3", base64(&raw(alg, &sums)));
                assert_eq!(checksum_of(&parts, composite, chunk).await, expected, "{alg} by {chunk}");
            }
            let full = MultipartChecksum { algorithm: "crc64nvme", full_object: true };
            let expected = base64(&raw("crc64nvme", b"hello wide world"));
            assert_eq!(checksum_of(&parts, full, chunk).await, expected);
        }
        let with_empty_last = [b"ab" as &'static [u8], b""];
        let composite = MultipartChecksum { algorithm: "crc32", full_object: false };
        let sums = [raw("crc32", b"ab"), raw("crc32", b"")].concat();
        let expected = format!("{}-2", base64(&raw("crc32", &sums)));
        assert_eq!(checksum_of(&with_empty_last, composite, 1).await, expected);
    }

    /// The checksum made from the parts' own checksums is the one made from their bytes, for
    /// every algorithm and type; a part without one makes none.
    #[tokio::test]
    async fn checksums_from_the_parts_checksums_are_those_of_their_bytes() {
        let parts: [&'static [u8]; 4] = [b"hello ", b"wide and ", b"", b"world of bytes"];
        let cases = [
            ("crc32", false),
            ("crc32", true),
            ("crc32c", false),
            ("crc32c", true),
            ("crc64nvme", true),
            ("sha1", false),
            ("sha256", false),
        ];
        for (algorithm, full_object) in cases {
            let checksum = MultipartChecksum { algorithm, full_object };
            let sums: Vec<String> = parts.iter().map(|p| base64(&raw(algorithm, p))).collect();
            let with_sums: Vec<(Option<&str>, u64)> =
                sums.iter().zip(parts).map(|(s, p)| (Some(s.as_str()), p.len() as u64)).collect();
            let entries: BTreeMap<String, String> =
                from_part_checksums(checksum, &with_sums).unwrap().into_iter().collect();
            let of_bytes = checksum_of(&parts, checksum, 3).await;
            assert_eq!(
                entries[&format!("{CHECKSUM_PREFIX}{algorithm}")],
                of_bytes,
                "{algorithm} {full_object}"
            );
            assert_eq!(entries[CHECKSUM_TYPE], checksum.type_name());
            let mut missing = with_sums.clone();
            missing[1].0 = None;
            assert_eq!(from_part_checksums(checksum, &missing), None, "{algorithm}: a part without");
        }
    }

    #[test]
    fn upload_checksums_parse_as_s3_allows() {
        let alg = |a: &'static str| ChecksumAlgorithm::from_static(a);
        let type_ = |t: &'static str| ChecksumType::from_static(t);
        let parsed = |a, t: Option<&ChecksumType>| MultipartChecksum::from_request(Some(&alg(a)), t);
        let crc64 = parsed(ChecksumAlgorithm::CRC64NVME, None).unwrap().unwrap();
        assert_eq!((crc64.algorithm, crc64.full_object), ("crc64nvme", true));
        let crc32 = parsed(ChecksumAlgorithm::CRC32, None).unwrap().unwrap();
        assert_eq!((crc32.algorithm, crc32.full_object), ("crc32", false));
        let full = parsed(ChecksumAlgorithm::CRC32C, Some(&type_(ChecksumType::FULL_OBJECT))).unwrap();
        assert_eq!(full.unwrap().encode(), "crc32c FULL_OBJECT");
        assert!(parsed(ChecksumAlgorithm::SHA256, Some(&type_(ChecksumType::FULL_OBJECT))).is_err());
        assert!(parsed(ChecksumAlgorithm::CRC64NVME, Some(&type_(ChecksumType::COMPOSITE))).is_err());
        assert_eq!(MultipartChecksum::from_request(None, None).unwrap(), None);
        for checksum in [crc64, crc32] {
            assert_eq!(MultipartChecksum::decode(&checksum.encode()), Some(checksum));
        }
        assert_eq!(MultipartChecksum::decode("md5 COMPOSITE"), None);
    }
}
