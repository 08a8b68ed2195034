//! The staging store of multipart uploads (DESIGN.md, "Data model": `uploads/<bucket>/<id>/…`).
//!
//! Everything lives in the backend, so any gateway over it can take any part of any upload:
//!
//! | key | what |
//! |---|---|
//! | `uploads/<bucket>/<id>` | the upload: its key, creation time and the object's attributes ([`UploadRecord`]) |
//! | `uploads/<bucket>/<id>/data/<part>.<token>` | one part's bytes, streamed in, never held whole |
//! | `uploads/<bucket>/<id>/parts/<part>.<md5>.<size>.<token>` | an empty marker, written once its data is durable: the part's MD5 and size for ListParts and Complete, from a LIST |
//! | `uploads/.completed/<bucket>/<id>` | a finished upload's key and ETag ([`CompletedUpload`]), so that a retried Complete still answers success |
//!
//! Part numbers are five digits, zero-padded, so a LIST returns parts in order. A part uploaded
//! again gets a new token: its old marker and data stay until Complete or Abort removes the
//! upload, and Complete takes, of a part number's markers, the one whose MD5 the client names
//! (ListParts shows the newest). [`remove_abandoned`] removes uploads nothing was written to for a
//! grace period, by the backend's clock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::backend::{
    self, Attributes, BackendError, ByteStream, DynBackend, ListRequest, ObjectMeta, PutOptions,
};
use crate::castore::record::{self, RecordError, RecordKind};

/// The smallest part S3 accepts, but for the last one of an upload.
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// The highest part number (S3's limit: an upload has at most 10,000 parts).
pub const MAX_PART_NUMBER: u32 = 10_000;
/// How long an upload nothing was written to is kept, by default.
pub const DEFAULT_ABANDON_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
/// The version of the records of this module.
pub const UPLOAD_RECORDS_VERSION: u8 = 1;

/// The prefix of every key of this module.
const ROOT: &str = "uploads/";
/// The prefix of the records of finished uploads (a bucket name never starts with `.`).
const COMPLETED: &str = "uploads/.completed/";
/// The key [`remove_abandoned`] writes to read the backend's clock.
const CLOCK: &str = "uploads/.now";

/// How multipart uploads behave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadOptions {
    /// Uploads nothing was written to for this long are removed by [`remove_abandoned`].
    pub abandon_after: Duration,
    /// The smallest part but the last ([`MIN_PART_SIZE`], as S3; tests may inject less).
    pub min_part_size: u64,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions { abandon_after: DEFAULT_ABANDON_AFTER, min_part_size: MIN_PART_SIZE }
    }
}

/// An upload in progress (`uploads/<bucket>/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// The object key the upload writes.
    pub key: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// The attributes the object gets.
    pub attributes: Attributes,
}

/// A finished upload (`uploads/.completed/<bucket>/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletedUpload {
    /// The object key it wrote.
    pub key: String,
    /// The ETag Complete answered.
    pub etag: String,
    /// The checksum entries Complete answered (kept as the record object's metadata, not in
    /// the record, whose format stays as it was).
    #[serde(skip)]
    pub checksums: BTreeMap<String, String>,
}

impl UploadRecord {
    /// Serializes the record.
    pub fn encode(&self) -> Vec<u8> {
        record::encode(RecordKind::Upload, UPLOAD_RECORDS_VERSION, self)
    }

    /// Reads the record.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        record::decode(RecordKind::Upload, UPLOAD_RECORDS_VERSION, bytes)
    }
}

impl CompletedUpload {
    /// Serializes the record.
    pub fn encode(&self) -> Vec<u8> {
        record::encode(RecordKind::CompletedUpload, UPLOAD_RECORDS_VERSION, self)
    }

    /// Reads the record.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        record::decode(RecordKind::CompletedUpload, UPLOAD_RECORDS_VERSION, bytes)
    }
}

/// Why a staging operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A stored record is corrupt.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// No upload has this id (never created, aborted, or removed as abandoned).
    #[error("no upload {id}")]
    NoSuchUpload {
        /// The id given.
        id: String,
    },
    /// A part number outside 1..=10,000.
    #[error("part number {number} is not in 1..={MAX_PART_NUMBER}")]
    InvalidPartNumber {
        /// The number given.
        number: i64,
    },
    /// Complete names a part that is not staged with that ETag.
    #[error("part {number} with ETag {etag:?} was not uploaded")]
    InvalidPart {
        /// The part number.
        number: u32,
        /// The ETag named.
        etag: String,
    },
    /// Complete names a part with a checksum it was not uploaded with.
    #[error("part {number} was not uploaded with the x-amz-checksum-{algorithm} that Complete names")]
    PartChecksum {
        /// The part number.
        number: u32,
        /// The algorithm.
        algorithm: String,
    },
    /// Complete's parts are not in ascending order (or repeat one).
    #[error("the list of parts was not in ascending order")]
    InvalidPartOrder,
    /// Complete names no part.
    #[error("the upload names no part")]
    NoParts,
    /// A part but the last is smaller than the minimum.
    #[error("part {number} is {size} bytes, less than the minimum of {min} for all but the last part")]
    EntityTooSmall {
        /// The part number.
        number: u32,
        /// Its size.
        size: u64,
        /// The minimum.
        min: u64,
    },
}

/// One staged part, as its marker says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedPart {
    /// Its number (1..=10,000).
    pub number: u32,
    /// MD5 of its bytes: its ETag.
    pub md5: [u8; 16],
    /// Its size.
    pub size: u64,
    /// When its marker was written (the backend's clock).
    pub last_modified: SystemTime,
    /// The checksums it was uploaded with (`x-amz-checksum-*`), by algorithm (`crc32`, …), base64
    /// as S3 shows them; kept in its marker's name as hex.
    pub checksums: BTreeMap<String, String>,
    /// Which upload of this part number it is.
    token: String,
}

impl StagedPart {
    /// The part's ETag: the MD5 hex of its bytes.
    pub fn etag(&self) -> String {
        hex::encode(self.md5)
    }
}

/// An open upload, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    /// Its id.
    pub id: String,
    /// Its record.
    pub record: UploadRecord,
    /// When it was created (its record's LastModified).
    pub initiated: SystemTime,
}

/// The ETag of an object made of `parts`, as S3 gives it: the MD5 of the parts' binary MD5s
/// concatenated, hex, then `-` and the number of parts.
pub fn multipart_etag(parts: &[StagedPart]) -> String {
    use md5::Digest as _;
    let mut hasher = md5::Md5::new();
    for part in parts {
        hasher.update(part.md5);
    }
    format!("{}-{}", hex::encode(hasher.finalize()), parts.len())
}

/// Checks a part number from a client: 1..=10,000.
pub fn part_number(number: i64) -> Result<u32, UploadError> {
    u32::try_from(number)
        .ok()
        .filter(|n| (1..=MAX_PART_NUMBER).contains(n))
        .ok_or(UploadError::InvalidPartNumber { number })
}

/// Whether `id` has the form of an upload id this module makes (32 lowercase hex digits), so that
/// no id from a client reaches outside its upload's keys.
fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The staged uploads of one bucket.
#[derive(Debug, Clone)]
pub struct Uploads {
    backend: DynBackend,
    bucket: String,
    min_part_size: u64,
}

impl Uploads {
    /// The uploads of `bucket` on `backend`.
    pub fn new(backend: DynBackend, bucket: &str, options: &UploadOptions) -> Self {
        Uploads { backend, bucket: bucket.to_owned(), min_part_size: options.min_part_size }
    }

    fn prefix(&self) -> String {
        format!("{ROOT}{}/", self.bucket)
    }

    fn record_key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix())
    }

    fn staging_prefix(&self, id: &str) -> String {
        format!("{}{id}/", self.prefix())
    }

    fn marker_prefix(&self, id: &str) -> String {
        format!("{}parts/", self.staging_prefix(id))
    }

    fn data_key(&self, id: &str, number: u32, token: &str) -> String {
        format!("{}data/{number:05}.{token}", self.staging_prefix(id))
    }

    fn completed_key(&self, id: &str) -> String {
        format!("{COMPLETED}{}/{id}", self.bucket)
    }

    /// Starts an upload of `key` whose object gets `attributes`; returns its id (random,
    /// URL-safe).
    pub async fn create(&self, key: &str, attributes: Attributes) -> Result<String, UploadError> {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let record = UploadRecord { key: key.to_owned(), created: super::now_secs(), attributes };
        self.backend.put(&self.record_key(&id), Bytes::from(record.encode())).await?;
        Ok(id)
    }

    /// The record of the open upload `id`, or [`UploadError::NoSuchUpload`].
    pub async fn record(&self, id: &str) -> Result<UploadRecord, UploadError> {
        match self.open_record(id).await? {
            Some(record) => Ok(record),
            None => Err(UploadError::NoSuchUpload { id: id.to_owned() }),
        }
    }

    async fn open_record(&self, id: &str) -> Result<Option<UploadRecord>, UploadError> {
        if !valid_id(id) {
            return Ok(None);
        }
        match backend::get_bytes(self.backend.as_ref(), &self.record_key(id)).await {
            Ok(bytes) => Ok(Some(UploadRecord::decode(&bytes)?)),
            Err(BackendError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The record of the finished upload `id`, if it finished within the grace period.
    pub async fn completed(&self, id: &str) -> Result<Option<CompletedUpload>, UploadError> {
        if !valid_id(id) {
            return Ok(None);
        }
        match self.backend.get(&self.completed_key(id), None).await {
            Ok(got) => {
                let checksums = got.attributes.metadata.clone();
                let mut done = CompletedUpload::decode(&got.bytes().await?)?;
                done.checksums = checksums;
                Ok(Some(done))
            }
            Err(BackendError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Stages part `number` of upload `id` of `key` from `body`, streamed to the backend (never
    /// held whole); `content_md5`, if given, is checked ([`BackendError::DigestMismatch`]). The
    /// upload must be open and of `key` ([`UploadError::NoSuchUpload`], before the body is read).
    /// `checksums`, asked once the body is staged, are the part's checksums to keep (by algorithm,
    /// base64).
    pub async fn put_part(
        &self,
        id: &str,
        key: &str,
        number: u32,
        body: ByteStream,
        content_md5: Option<[u8; 16]>,
        checksums: impl FnOnce() -> BTreeMap<String, String>,
    ) -> Result<StagedPart, UploadError> {
        self.check_open(id, key).await?;
        self.stage_part(id, number, body, content_md5, checksums).await
    }

    /// Checks that upload `id` is open and of `key` ([`UploadError::NoSuchUpload`]): what
    /// [`put_part`](Self::put_part) does before it reads the body.
    pub async fn check_open(&self, id: &str, key: &str) -> Result<(), UploadError> {
        if self.record(id).await?.key != key {
            return Err(UploadError::NoSuchUpload { id: id.to_owned() });
        }
        Ok(())
    }

    /// [`put_part`](Self::put_part) of an upload [`check_open`](Self::check_open) found open.
    pub async fn stage_part(
        &self,
        id: &str,
        number: u32,
        body: ByteStream,
        content_md5: Option<[u8; 16]>,
        checksums: impl FnOnce() -> BTreeMap<String, String>,
    ) -> Result<StagedPart, UploadError> {
        let token = hex::encode(rand::random::<[u8; 8]>());
        let digest = Arc::new(Mutex::new((<md5::Md5 as md5::Digest>::new(), 0u64)));
        let hashing = digest.clone();
        let body = body
            .inspect_ok(move |piece| {
                if let Ok(mut state) = hashing.lock() {
                    md5::Digest::update(&mut state.0, piece);
                    state.1 += piece.len() as u64;
                }
            })
            .boxed();
        let data_key = self.data_key(id, number, &token);
        // The part's MD5 is computed above, once; the backend need not compute it again. A part
        // is visible only through its marker, so bytes that fail the Content-MD5 check may land.
        let options = PutOptions { md5_unneeded: true, ..Default::default() };
        self.backend.put_stream(&data_key, body, options).await?;
        let (md5, size) = {
            let state = digest.lock().map_err(|_| BackendError::Body {
                key: data_key.clone(),
                message: "the part's digest was poisoned".into(),
            })?;
            let md5: [u8; 16] = md5::Digest::finalize(state.0.clone()).into();
            (md5, state.1)
        };
        if content_md5.is_some_and(|expected| expected != md5) {
            // Unmarked, it is no part; removing it now saves its bytes until the upload ends.
            let _ = self.backend.delete(&data_key).await;
            return Err(BackendError::DigestMismatch { key: data_key }.into());
        }
        let checksums: BTreeMap<String, String> =
            checksums().into_iter().filter(|(alg, value)| marker_checksum(alg, value).is_some()).collect();
        let mut marker = format!("{}{number:05}.{}.{size}.{token}", self.marker_prefix(id), hex::encode(md5));
        for (alg, value) in &checksums {
            marker.push_str(&marker_checksum(alg, value).unwrap_or_default());
        }
        let written = self.backend.put(&marker, Bytes::new()).await?;
        Ok(StagedPart { number, md5, size, last_modified: written.last_modified, checksums, token })
    }

    /// Every staged marker of upload `id`, in part order (a part uploaded more than once appears
    /// once per upload of it). One LIST per 1,000 markers.
    async fn markers(&self, id: &str) -> Result<Vec<StagedPart>, UploadError> {
        let prefix = self.marker_prefix(id);
        let objects = backend::list_all(self.backend.as_ref(), &prefix).await?;
        Ok(objects.iter().filter_map(|o| parse_marker(o, &prefix)).collect())
    }

    /// The parts of open upload `id`, in order, the newest of each number.
    pub async fn parts(&self, id: &str) -> Result<Vec<StagedPart>, UploadError> {
        self.record(id).await?;
        let mut parts: Vec<StagedPart> = vec![];
        for part in self.markers(id).await? {
            match parts.last_mut() {
                Some(last) if last.number == part.number => {
                    if (part.last_modified, &part.token) > (last.last_modified, &last.token) {
                        *last = part;
                    }
                }
                _ => parts.push(part),
            }
        }
        Ok(parts)
    }

    /// The staged parts that Complete's list `requested` (part number, ETag) names, in its order:
    /// checks the order, that each part is staged with that ETag, and the minimum size of all but
    /// the last, as S3 does.
    pub async fn select(
        &self,
        id: &str,
        requested: &[(u32, String)],
    ) -> Result<Vec<StagedPart>, UploadError> {
        if requested.is_empty() {
            return Err(UploadError::NoParts);
        }
        if requested.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(UploadError::InvalidPartOrder);
        }
        let markers = self.markers(id).await?;
        let mut chosen = Vec::with_capacity(requested.len());
        for (number, etag) in requested {
            let etag = etag.trim_matches('"').to_ascii_lowercase();
            let found = markers.iter().find(|m| m.number == *number && m.etag() == etag);
            let part = found
                .cloned()
                .ok_or_else(|| UploadError::InvalidPart { number: *number, etag: etag.clone() })?;
            chosen.push(part);
        }
        if let Some(small) = chosen[..chosen.len() - 1].iter().find(|p| p.size < self.min_part_size) {
            return Err(UploadError::EntityTooSmall {
                number: small.number,
                size: small.size,
                min: self.min_part_size,
            });
        }
        Ok(chosen)
    }

    /// The bytes of `parts` of upload `id`, concatenated in order: one part read at a time, each
    /// checked against its size and MD5 as it streams.
    pub fn body(&self, id: &str, parts: &[StagedPart]) -> ByteStream {
        let uploads = self.clone();
        let reads: Vec<(String, StagedPart)> =
            parts.iter().map(|p| (self.data_key(id, p.number, &p.token), p.clone())).collect();
        futures::stream::iter(reads)
            .then(move |(key, part)| {
                let backend = uploads.backend.clone();
                async move {
                    let got = backend.get(&key, None).await?;
                    if got.meta.size != part.size {
                        let source = std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("staged part has {} bytes, its marker says {}", got.meta.size, part.size),
                        );
                        return Err(BackendError::Io { key, source });
                    }
                    Ok(super::verify_md5(&key, got.body, part.md5.to_vec()))
                }
            })
            .try_flatten()
            .boxed()
    }

    /// Records that upload `id` finished as an object with `etag` and `checksums` (metadata
    /// entries), then removes its staging and its record.
    pub async fn finish(
        &self,
        id: &str,
        record: &UploadRecord,
        etag: &str,
        checksums: BTreeMap<String, String>,
    ) -> Result<(), UploadError> {
        let done = CompletedUpload { key: record.key.clone(), etag: etag.to_owned(), checksums };
        let body = futures::stream::once(futures::future::ready(Ok(Bytes::from(done.encode())))).boxed();
        let attributes = Attributes { metadata: done.checksums, ..Default::default() };
        let options = PutOptions { attributes, ..Default::default() };
        self.backend.put_stream(&self.completed_key(id), body, options).await?;
        self.remove(id).await
    }

    /// Aborts the open upload `id`: removes its parts and its record.
    pub async fn abort(&self, id: &str) -> Result<(), UploadError> {
        self.record(id).await?;
        self.remove(id).await
    }

    /// Removes upload `id`'s staging, then its record (so that a crash half-way leaves an upload
    /// that can be removed again).
    async fn remove(&self, id: &str) -> Result<(), UploadError> {
        for object in backend::list_all(self.backend.as_ref(), &self.staging_prefix(id)).await? {
            self.backend.delete(&object.key).await?;
        }
        self.backend.delete(&self.record_key(id)).await?;
        Ok(())
    }

    /// The open uploads of the bucket, in order of key, then of initiation: one LIST per 1,000
    /// uploads and one GET per upload (records hold the keys, which may be too long for a key).
    pub async fn list(&self) -> Result<Vec<OpenUpload>, UploadError> {
        let mut request =
            ListRequest { prefix: self.prefix(), delimiter: Some("/".into()), ..Default::default() };
        let mut uploads = vec![];
        loop {
            let page = self.backend.list(&request).await?;
            for object in &page.objects {
                let Some(id) = object.key.strip_prefix(&request.prefix).filter(|id| valid_id(id)) else {
                    continue;
                };
                if let Some(record) = self.open_record(id).await? {
                    uploads.push(OpenUpload { id: id.to_owned(), record, initiated: object.last_modified });
                }
            }
            match page.next_continuation_token {
                Some(token) => request.continuation_token = Some(token),
                None => break,
            }
        }
        uploads.sort_by(|a, b| (&a.record.key, a.initiated, &a.id).cmp(&(&b.record.key, b.initiated, &b.id)));
        Ok(uploads)
    }

    /// Removes every upload of the bucket, open or finished (when the bucket is deleted).
    pub async fn remove_all(&self) -> Result<(), BackendError> {
        for prefix in [self.prefix(), format!("{COMPLETED}{}/", self.bucket)] {
            let mut objects = backend::list_all(self.backend.as_ref(), &prefix).await?;
            // Staging before records: records sort first.
            objects.reverse();
            for object in objects {
                self.backend.delete(&object.key).await?;
            }
        }
        Ok(())
    }
}

/// The user-metadata name under which a plain object written by a multipart upload keeps the
/// ETag Complete answered (`<md5 of the parts' MD5s>-<parts>`), so that HEAD and GET report it as
/// S3 does. Clients cannot set it: [`Attributes`] from a client must go through
/// [`client_metadata_allowed`].
pub const ETAG_METADATA: &str = "nargate-multipart-etag";

/// The user-metadata name under which an upload's record keeps how the object's checksum is
/// made (CreateMultipartUpload's checksum algorithm and type, as the gateway writes them); it is
/// not kept with the object. Clients cannot set it either.
pub const CHECKSUM_METADATA: &str = "nargate-multipart-checksum";

/// Whether a client may set user metadata `name` (lowercase): not the gateway's own.
pub fn client_metadata_allowed(name: &str) -> bool {
    name != ETAG_METADATA && name != CHECKSUM_METADATA
}

/// The attributes of an object written by a multipart upload whose ETag is `etag`.
pub fn with_etag(mut attributes: Attributes, etag: &str) -> Attributes {
    attributes.metadata.insert(ETAG_METADATA.to_owned(), etag.to_owned());
    attributes
}

/// Moves the ETag a multipart upload stored with a plain object from its attributes into its
/// metadata, where reads report it.
pub fn report_etag(meta: &mut ObjectMeta, attributes: &mut Attributes) {
    if let Some(etag) = attributes.metadata.remove(ETAG_METADATA) {
        meta.etag = etag;
    }
}

/// Decodes a part marker's key (`<prefix><part>.<md5>.<size>.<token>`).
fn parse_marker(object: &ObjectMeta, prefix: &str) -> Option<StagedPart> {
    let mut fields = object.key.strip_prefix(prefix)?.split('.');
    let number = fields.next()?.parse().ok().filter(|n| (1..=MAX_PART_NUMBER).contains(n))?;
    let md5 = <[u8; 16]>::try_from(hex::decode(fields.next()?).ok()?).ok()?;
    let size = fields.next()?.parse().ok()?;
    let token = fields.next()?.to_owned();
    let mut checksums = BTreeMap::new();
    for field in fields {
        let (alg, value) = field.split_once('-')?;
        let raw = hex::decode(value).ok().filter(|raw| Some(raw.len()) == checksum_len(alg))?;
        checksums.insert(alg.to_owned(), base64::engine::general_purpose::STANDARD.encode(raw));
    }
    Some(StagedPart { number, md5, size, last_modified: object.last_modified, checksums, token })
}

/// The length in bytes of a checksum of `alg`, one of S3's algorithms.
fn checksum_len(alg: &str) -> Option<usize> {
    match alg {
        "crc32" | "crc32c" => Some(4),
        "crc64nvme" => Some(8),
        "sha1" => Some(20),
        "sha256" => Some(32),
        _ => None,
    }
}

/// A part checksum as its marker's name carries it: `.<alg>-<hex>` (`None` if it is not one).
fn marker_checksum(alg: &str, base64_value: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::STANDARD.decode(base64_value).ok()?;
    (Some(raw.len()) == checksum_len(alg)).then(|| format!(".{alg}-{}", hex::encode(raw)))
}

/// Removes every upload nothing was written to for `abandon_after` (by the backend's clock: the
/// time of a small object this writes), and the records of uploads that finished longer ago than
/// that; returns how many uploads it removed. One LIST per 1,000 staged objects.
pub async fn remove_abandoned(backend: &DynBackend, abandon_after: Duration) -> Result<usize, UploadError> {
    let now = backend.put(CLOCK, Bytes::new()).await?.last_modified;
    let Some(cutoff) = now.checked_sub(abandon_after) else { return Ok(0) };
    let objects = backend::list_all(backend.as_ref(), ROOT).await?;
    // Objects of one upload are adjacent in key order: its record `b/id`, then `b/id/…`.
    let mut groups: Vec<(String, Vec<ObjectMeta>)> = vec![];
    for object in objects {
        let Some(rest) = object.key.strip_prefix(ROOT) else { continue };
        let group = if let Some(done) = rest.strip_prefix(".completed/") {
            format!(".completed/{done}")
        } else if rest.starts_with('.') {
            continue;
        } else {
            let mut components = rest.splitn(3, '/');
            match (components.next(), components.next()) {
                (Some(bucket), Some(id)) => format!("{bucket}/{id}"),
                _ => continue,
            }
        };
        match groups.last_mut() {
            Some((name, members)) if *name == group => members.push(object),
            _ => groups.push((group, vec![object])),
        }
    }
    let mut removed = 0;
    for (name, mut members) in groups {
        if members.iter().any(|m| m.last_modified > cutoff) {
            continue;
        }
        members.reverse();
        for member in members {
            backend.delete(&member.key).await?;
        }
        if !name.starts_with(".completed/") {
            tracing::info!(upload = %name, "removed an abandoned multipart upload");
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the encodings: changing one is a migration.
    #[test]
    fn golden_bytes() {
        let record = UploadRecord {
            key: "k".into(),
            created: 2,
            attributes: Attributes { content_type: Some("t".into()), ..Default::default() },
        };
        assert_eq!(hex::encode(record.encode()), "4e47555001016b0201017400000000 00".replace(' ', ""));
        assert_eq!(UploadRecord::decode(&record.encode()).unwrap(), record);
        // The checksums are the record object's metadata, not part of the record.
        let checksums = BTreeMap::from([("x-amz-checksum-crc32".to_owned(), "AAAAAA==".to_owned())]);
        let done = CompletedUpload { key: "k".into(), etag: "e-2".into(), checksums };
        assert_eq!(hex::encode(done.encode()), "4e475543 01 016b 03652d32".replace(' ', ""));
        let decoded = CompletedUpload::decode(&done.encode()).unwrap();
        assert_eq!(decoded, CompletedUpload { checksums: BTreeMap::new(), ..done });
    }

    #[test]
    fn etag_of_parts_is_md5_of_md5s() {
        let part = |number, data: &[u8]| StagedPart {
            number,
            md5: crate::cache::md5(data),
            size: data.len() as u64,
            last_modified: SystemTime::UNIX_EPOCH,
            checksums: BTreeMap::new(),
            token: String::new(),
        };
        let parts = [part(1, b"hello "), part(2, b"world")];
        let joined = [crate::cache::md5(b"hello "), crate::cache::md5(b"world")].concat();
        assert_eq!(multipart_etag(&parts), format!("{}-2", crate::cache::md5_hex(&joined)));
    }

    #[test]
    fn part_numbers_and_ids() {
        assert!(matches!(part_number(0), Err(UploadError::InvalidPartNumber { number: 0 })));
        assert!(matches!(part_number(10_001), Err(UploadError::InvalidPartNumber { .. })));
        assert!(matches!(part_number(-1), Err(UploadError::InvalidPartNumber { .. })));
        assert_eq!(part_number(1).unwrap(), 1);
        assert_eq!(part_number(10_000).unwrap(), 10_000);
        assert!(valid_id(&"0a".repeat(16)));
        assert!(!valid_id("../../caches/x/bucket"));
        assert!(!valid_id(&"0A".repeat(16)));
    }

    #[test]
    fn markers_parse() {
        let meta = |key: &str| ObjectMeta {
            key: key.into(),
            size: 0,
            etag: String::new(),
            last_modified: SystemTime::UNIX_EPOCH,
        };
        let md5 = "00112233445566778899aabbccddeeff";
        let part = parse_marker(&meta(&format!("p/00042.{md5}.7.tok")), "p/").unwrap();
        assert_eq!((part.number, part.etag(), part.size, part.token.as_str()), (42, md5.into(), 7, "tok"));
        assert_eq!(parse_marker(&meta(&format!("p/00000.{md5}.7.tok")), "p/"), None);
        assert_eq!(parse_marker(&meta(&format!("p/00001.{md5}.7.tok.x")), "p/"), None);
        assert_eq!(parse_marker(&meta("p/00001.zz.7.tok"), "p/"), None);
        // A part's checksums follow, as hex; what is not one is no marker.
        let crc = marker_checksum("crc32", "AAECAw==").unwrap();
        assert_eq!(crc, ".crc32-00010203");
        let part = parse_marker(&meta(&format!("p/00042.{md5}.7.tok{crc}")), "p/").unwrap();
        assert_eq!(part.checksums, BTreeMap::from([("crc32".to_owned(), "AAECAw==".to_owned())]));
        assert_eq!(marker_checksum("crc32", "AAEC"), None, "a CRC32 has 4 bytes");
        assert_eq!(marker_checksum("md4", "AAECAw=="), None);
        assert_eq!(parse_marker(&meta(&format!("p/00001.{md5}.7.tok.crc32-0001")), "p/"), None);
        assert_eq!(parse_marker(&meta(&format!("p/00001.{md5}.7.tok.md4-00010203")), "p/"), None);
    }

    #[tokio::test]
    async fn stage_select_stream_and_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let backend: DynBackend = Arc::new(crate::backend::fs::FsBackend::new(dir.path().join("b")).unwrap());
        let options = UploadOptions { min_part_size: 4, ..Default::default() };
        let uploads = Uploads::new(backend.clone(), "cache", &options);
        let id = uploads.create("a/key", Attributes::default()).await.unwrap();
        let body = |data: &'static [u8]| futures::stream::iter([Ok(Bytes::from_static(data))]).boxed();
        let two = uploads.put_part(&id, "a/key", 2, body(b"world"), None, BTreeMap::new).await.unwrap();
        let first = uploads.put_part(&id, "a/key", 1, body(b"hell"), None, BTreeMap::new).await.unwrap();
        // Uploaded again: the newest shows, either can be completed.
        let again = uploads.put_part(&id, "a/key", 1, body(b"hello "), None, BTreeMap::new).await.unwrap();
        let mismatch = uploads.put_part(&id, "a/key", 3, body(b"x"), Some([0; 16]), BTreeMap::new).await;
        assert!(matches!(mismatch, Err(UploadError::Backend(BackendError::DigestMismatch { .. }))));
        let parts = uploads.parts(&id).await.unwrap();
        assert_eq!(parts.iter().map(|p| p.number).collect::<Vec<_>>(), [1, 2]);
        assert!(parts[0] == again || parts[0] == first);
        let chosen =
            uploads.select(&id, &[(1, format!("\"{}\"", again.etag())), (2, two.etag())]).await.unwrap();
        let bytes: Vec<Bytes> = uploads.body(&id, &chosen).try_collect().await.unwrap();
        assert_eq!(bytes.concat(), b"hello world");
        assert!(matches!(
            uploads.select(&id, &[(2, two.etag()), (1, first.etag())]).await,
            Err(UploadError::InvalidPartOrder)
        ));
        assert!(matches!(
            uploads.select(&id, &[(1, two.etag())]).await,
            Err(UploadError::InvalidPart { number: 1, .. })
        ));
        let small = uploads.put_part(&id, "a/key", 3, body(b"abc"), None, BTreeMap::new).await.unwrap();
        assert!(matches!(
            uploads.select(&id, &[(3, small.etag()), (4, two.etag())]).await,
            Err(UploadError::InvalidPart { number: 4, .. })
        ));
        let too_small = uploads.select(&id, &[(2, two.etag()), (3, small.etag())]).await;
        assert!(too_small.is_ok(), "the last part may be small");
        let too_small = uploads.select(&id, &[(1, first.etag()), (3, small.etag())]).await;
        assert!(too_small.is_ok(), "4 bytes is the minimum");
        let id2 = uploads.create("other", Attributes::default()).await.unwrap();
        uploads.put_part(&id2, "other", 1, body(b"ab"), None, BTreeMap::new).await.unwrap();
        uploads.put_part(&id2, "other", 2, body(b"cd"), None, BTreeMap::new).await.unwrap();
        let chosen = uploads.parts(&id2).await.unwrap();
        assert!(matches!(
            uploads.select(&id2, &[(1, chosen[0].etag()), (2, chosen[1].etag())]).await,
            Err(UploadError::EntityTooSmall { number: 1, size: 2, min: 4 })
        ));
        let listed = uploads.list().await.unwrap();
        assert_eq!(listed.iter().map(|u| u.record.key.as_str()).collect::<Vec<_>>(), ["a/key", "other"]);

        uploads.finish(&id, &uploads.record(&id).await.unwrap(), "e-2", BTreeMap::new()).await.unwrap();
        assert!(matches!(uploads.record(&id).await, Err(UploadError::NoSuchUpload { .. })));
        assert_eq!(uploads.completed(&id).await.unwrap().unwrap().etag, "e-2");
        assert!(backend::list_all(backend.as_ref(), &uploads.staging_prefix(&id)).await.unwrap().is_empty());

        // Nothing is abandoned yet; with no grace at all (and a second passed), everything is.
        assert_eq!(remove_abandoned(&backend, Duration::from_secs(3600)).await.unwrap(), 0);
        assert_eq!(uploads.list().await.unwrap().len(), 1);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(remove_abandoned(&backend, Duration::ZERO).await.unwrap(), 1);
        let left = backend::list_all(backend.as_ref(), ROOT).await.unwrap();
        assert_eq!(left.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), [CLOCK]);
        assert!(matches!(uploads.abort(&id2).await, Err(UploadError::NoSuchUpload { .. })));
    }
}
