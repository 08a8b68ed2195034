//! Multipart uploads: CreateMultipartUpload, UploadPart, CompleteMultipartUpload,
//! AbortMultipartUpload, ListParts and ListMultipartUploads, one function each, over the staging
//! store of [`crate::cache::uploads`] (parts in the backend, so any gateway takes any part).
//!
//! Complete hands the staged parts, streamed in order, to [`Gateway::write_object`], so a NAR key
//! is ingested exactly as by a single PutObject and any other key stored. As S3: part numbers are
//! 1..=10,000 (InvalidArgument), every part but the last at least 5 MiB (EntityTooSmall), the
//! parts Complete names must be staged with those ETags (InvalidPart) and ascending
//! (InvalidPartOrder); the object's ETag is the MD5 of the parts' binary MD5s, hex, `-N`, which
//! HEAD and GET of a plain object report too. UploadPart verifies Content-MD5 (BadDigest) and
//! always answers the part's MD5 as its ETag; CreateMultipartUpload ignores a Content-MD5 (Nix ≥
//! 2.33 sends the whole object's there with an empty body). Keys under `store/` and `tree/`,
//! read-only views, are refused at Create. An upload created with `x-amz-checksum-algorithm`
//! gets the object's checksum (COMPOSITE or FULL_OBJECT, [`super::checksum`]), computed as the
//! parts stream into it at Complete: Complete answers it and a plain object keeps it.
//!
//! A Complete runs in a task of its own, so it finishes even if the client goes away; a Complete
//! of the same upload while one runs joins it, and one after it finished answers its ETag again
//! (from the completion record, for a grace period). A Complete that takes longer than
//! [`QUICK_COMPLETE`] answers `200` at once and keeps the connection alive with whitespace
//! (s3s's `CompleteMultipartUploadOutput::future`) until the result, or an error, follows in the
//! body, as S3 does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use futures::future::{BoxFuture, FutureExt, Shared};
use http::StatusCode;
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use super::Gateway;
use super::body::{Expected, receive};
use super::checksum::{self, MultipartChecksum, checksummed};
use super::error::{backend_error, internal};
use super::target::Target;
use super::write::Upload;
use crate::backend::{self, LateMetadata};
use crate::cache::uploads::{self, UploadError, Uploads};

/// How long a Complete may run before its answer switches to a kept-alive `200` whose body
/// carries the result: quick ones (validation failures above all) keep their own status.
pub const QUICK_COMPLETE: Duration = Duration::from_secs(2);

/// The outcome of one Complete, shareable between the requests that wait for it.
type Outcome = Result<Completed, Failure>;

/// What a Complete that succeeded answers.
#[derive(Debug, Clone, Default)]
struct Completed {
    /// The object's ETag.
    etag: String,
    /// The object's checksum, when the upload was created with a checksum algorithm (not
    /// known to a Complete answered from the completion record).
    checksum: Checksum,
    /// The type of that checksum.
    checksum_type: Option<ChecksumType>,
}

/// An S3 error that can be handed to several waiters.
#[derive(Debug, Clone)]
pub struct Failure {
    code: S3ErrorCode,
    message: Option<String>,
    status: Option<StatusCode>,
}

impl From<S3Error> for Failure {
    fn from(e: S3Error) -> Self {
        Failure { code: e.code().clone(), message: e.message().map(str::to_owned), status: e.status_code() }
    }
}

impl From<Failure> for S3Error {
    fn from(f: Failure) -> Self {
        let mut e = match f.message {
            Some(message) => S3Error::with_message(f.code, message),
            None => S3Error::new(f.code),
        };
        if let Some(status) = f.status {
            e.set_status_code(status);
        }
        e
    }
}

/// A running Complete, which any number of requests may await.
type Joinable = Shared<BoxFuture<'static, Outcome>>;

/// The Completes running in this gateway, by bucket and upload id.
#[derive(Default)]
pub struct Running(Mutex<HashMap<(String, String), Joinable>>);

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Joinable>> {
        // A panic while the map was held leaves it consistent (inserts and removes are single
        // calls): go on with it.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The checksums of a request's or part's five `checksum_*` fields (s3s gives every input type
/// its own fields, no shared struct).
fn checksums_of(
    crc32: Option<String>,
    crc32c: Option<String>,
    crc64nvme: Option<String>,
    sha1: Option<String>,
    sha256: Option<String>,
) -> Checksum {
    Checksum {
        checksum_crc32: crc32,
        checksum_crc32c: crc32c,
        checksum_crc64nvme: crc64nvme,
        checksum_sha1: sha1,
        checksum_sha256: sha256,
        ..Default::default()
    }
}

/// The S3 error for a failed staging operation about `key`.
fn upload_error(key: &str, e: UploadError) -> S3Error {
    match e {
        UploadError::Backend(e) => backend_error(key, e),
        UploadError::Record(e) => internal(key, &e),
        UploadError::NoSuchUpload { .. } => s3_error!(
            NoSuchUpload,
            "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed."
        ),
        UploadError::InvalidPartNumber { .. } => {
            s3_error!(InvalidArgument, "Part number must be an integer between 1 and 10000, inclusive")
        }
        UploadError::InvalidPart { number, .. } => s3_error!(
            InvalidPart,
            "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag. (part {number})"
        ),
        UploadError::PartChecksum { number, algorithm } => s3_error!(
            InvalidPart,
            "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified checksum may not match the part's checksum. (part {number}, x-amz-checksum-{algorithm})"
        ),
        UploadError::InvalidPartOrder => {
            s3_error!(
                InvalidPartOrder,
                "The list of parts was not in ascending order. Parts must be ordered by part number."
            )
        }
        UploadError::NoParts => s3_error!(
            MalformedXML,
            "The XML you provided was not well-formed or did not validate against our published schema"
        ),
        UploadError::EntityTooSmall { number, size, min } => s3_error!(
            EntityTooSmall,
            "Your proposed upload is smaller than the minimum allowed object size. (part {number}: {size} bytes, the minimum is {min})"
        ),
    }
}

/// The owner every upload shows (the gateway has one tenant).
fn initiator() -> Initiator {
    Initiator { display_name: Some("nargate".into()), id: Some("nargate".into()) }
}

/// The percent-encoding of `encoding-type=url` (RFC 3986 unreserved characters and `/` kept).
fn url_encode(s: &str) -> String {
    urlencoding::encode(s).replace("%2F", "/")
}

/// A timestamp in whole seconds, as S3 lists times.
fn timestamp(time: SystemTime) -> Timestamp {
    Timestamp::from(super::conditional::whole_seconds(time))
}

impl Gateway {
    /// The staged uploads of `bucket`.
    pub(super) fn uploads(&self, bucket: &str) -> Uploads {
        Uploads::new(self.inner.backend.clone(), bucket, &self.inner.uploads)
    }

    /// The open upload `id` of `key`: NoSuchUpload if there is none, or it is of another key.
    async fn open_upload(&self, bucket: &str, key: &str, id: &str) -> S3Result<uploads::UploadRecord> {
        let record = self.uploads(bucket).record(id).await.map_err(|e| upload_error(key, e))?;
        if record.key != key {
            return Err(upload_error(key, UploadError::NoSuchUpload { id: id.to_owned() }));
        }
        Ok(record)
    }

    /// CreateMultipartUpload: records the upload and the object's attributes.
    pub(super) async fn create_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        self.existing(&input.bucket).await?;
        if Target::of(&input.key).is_read_only_view() {
            return Err(super::write::read_only());
        }
        let cache = self.cache(&input.bucket);
        backend::validate_key(&cache.keys().raw(&input.key)).map_err(|e| backend_error(&input.key, e))?;
        let mut attributes = client_attributes!(&input);
        let checksum =
            MultipartChecksum::from_request(input.checksum_algorithm.as_ref(), input.checksum_type.as_ref())?;
        if let Some(checksum) = &checksum {
            attributes.metadata.insert(uploads::CHECKSUM_METADATA.to_owned(), checksum.encode());
        }
        let id = self
            .uploads(&input.bucket)
            .create(&input.key, attributes)
            .await
            .map_err(|e| upload_error(&input.key, e))?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            checksum_algorithm: checksum.as_ref().map(MultipartChecksum::algorithm),
            checksum_type: checksum.as_ref().map(MultipartChecksum::checksum_type),
            ..Default::default()
        }))
    }

    /// UploadPart: streams the part into staging; its ETag is its MD5.
    pub(super) async fn stage_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let input = req.input;
        let key = input.key.as_str();
        let number = uploads::part_number(i64::from(input.part_number)).map_err(|e| upload_error(key, e))?;
        let expected = Expected::from_request(&req.headers, req.trailing_headers)?;
        self.existing(&input.bucket).await?;
        // Content-MD5 and checksums are checked as the body arrives; the upload is checked
        // before the body is read (hyper sends `100 Continue` only then).
        let (body, receipt) = receive(key, input.body, expected, self.inner.body_idle_timeout);
        // The checksums the body was checked against are kept with the part.
        let checksums = || {
            let received = receipt.outcome().and_then(Result::ok).map(|r| r.checksum).unwrap_or_default();
            checksum::part_entries(&received)
        };
        let staging = self.uploads(&input.bucket);
        staging.check_open(&input.upload_id, key).await.map_err(|e| upload_error(key, e))?;
        // A NAR upload's feed may want the part's bytes as they arrive (see `progressive`).
        let tee = self.offer_part(&input.bucket, key, &input.upload_id, number).await;
        let body = match &tee {
            Some(tee) => tee.body(body),
            None => body,
        };
        let staged = staging.stage_part(&input.upload_id, number, body, None, checksums).await;
        if let Some(failure) = receipt.failure() {
            return Err(failure.to_s3());
        }
        let part = staged.map_err(|e| upload_error(key, e))?;
        match tee {
            Some(tee) => tee.staged(part.clone()),
            None => self.part_staged(&input.bucket, key, &input.upload_id, part.clone()),
        }
        let checksum = receipt.outcome().and_then(Result::ok).map(|r| r.checksum).unwrap_or_default();
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(ETag::Strong(part.etag())),
            checksum_crc32: checksum.checksum_crc32,
            checksum_crc32c: checksum.checksum_crc32c,
            checksum_crc64nvme: checksum.checksum_crc64nvme,
            checksum_sha1: checksum.checksum_sha1,
            checksum_sha256: checksum.checksum_sha256,
            ..Default::default()
        }))
    }

    /// CompleteMultipartUpload: checks the part list, then writes the object from the staged
    /// parts (in a task that outlives the request) and removes the staging.
    pub(super) async fn complete_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let (bucket, key, id) = (input.bucket.clone(), input.key.clone(), input.upload_id.clone());
        self.existing(&bucket).await?;
        // The whole object's checksum, if the client sends one to be checked.
        let claimed = checksums_of(
            input.checksum_crc32,
            input.checksum_crc32c,
            input.checksum_crc64nvme,
            input.checksum_sha1,
            input.checksum_sha256,
        );
        let running = self.inner.completes.lock().get(&(bucket.clone(), id.clone())).cloned();
        let outcome = match running {
            Some(running) => running,
            None => match self.start_complete(&bucket, &key, &id, input.multipart_upload, claimed).await? {
                Some(outcome) => outcome,
                None => {
                    // Finished before: answer as the first Complete did.
                    let done =
                        self.uploads(&bucket).completed(&id).await.map_err(|e| upload_error(&key, e))?;
                    let done = done
                        .filter(|d| d.key == key)
                        .ok_or_else(|| upload_error(&key, UploadError::NoSuchUpload { id: id.clone() }))?;
                    let (checksum, checksum_type) = checksum::from_metadata(&done.checksums);
                    let completed = Completed { etag: done.etag, checksum, checksum_type };
                    futures::future::ready(Ok(completed)).boxed().shared()
                }
            },
        };
        let output = move |completed: Completed| CompleteMultipartUploadOutput {
            bucket: Some(bucket.clone()),
            key: Some(key.clone()),
            e_tag: Some(ETag::Strong(completed.etag)),
            location: Some(format!("/{bucket}/{key}")),
            checksum_crc32: completed.checksum.checksum_crc32,
            checksum_crc32c: completed.checksum.checksum_crc32c,
            checksum_crc64nvme: completed.checksum.checksum_crc64nvme,
            checksum_sha1: completed.checksum.checksum_sha1,
            checksum_sha256: completed.checksum.checksum_sha256,
            checksum_type: completed.checksum_type,
            ..Default::default()
        };
        match tokio::time::timeout(QUICK_COMPLETE, outcome.clone()).await {
            Ok(Ok(completed)) => Ok(S3Response::new(output(completed))),
            Ok(Err(failure)) => Err(failure.into()),
            Err(_) => {
                let later = async move { outcome.await.map(output).map_err(S3Error::from) }.boxed();
                Ok(S3Response::new(CompleteMultipartUploadOutput {
                    future: Some(later),
                    ..Default::default()
                }))
            }
        }
    }

    /// Checks a Complete's part list against upload `id` and starts writing the object; `None`
    /// if the upload is not open (it may have finished).
    async fn start_complete(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        list: Option<CompletedMultipartUpload>,
        claimed: Checksum,
    ) -> S3Result<Option<Joinable>> {
        let staging = self.uploads(bucket);
        let record = match staging.record(id).await {
            Ok(record) if record.key == key => record,
            Ok(_) => return Err(upload_error(key, UploadError::NoSuchUpload { id: id.to_owned() })),
            Err(UploadError::NoSuchUpload { .. }) => return Ok(None),
            Err(e) => return Err(upload_error(key, e)),
        };
        let (mut requested, mut checksums) = (vec![], vec![]);
        for part in list.and_then(|l| l.parts).unwrap_or_default() {
            let number =
                part.part_number.ok_or_else(|| s3_error!(MalformedXML, "a Part without PartNumber"))?;
            let number = uploads::part_number(i64::from(number)).map_err(|e| upload_error(key, e))?;
            let etag = part.e_tag.as_ref().map(|e| e.value().to_owned()).unwrap_or_default();
            let named = checksums_of(
                part.checksum_crc32,
                part.checksum_crc32c,
                part.checksum_crc64nvme,
                part.checksum_sha1,
                part.checksum_sha256,
            );
            requested.push((number, etag));
            checksums.push(checksum::part_entries(&named));
        }
        let parts = staging.select(id, &requested).await.map_err(|e| upload_error(key, e))?;
        // Every checksum Complete names for a part must be the one the part came with.
        for (part, named) in parts.iter().zip(&checksums) {
            if let Some((algorithm, _)) =
                named.iter().find(|(alg, value)| part.checksums.get(*alg) != Some(value))
            {
                let error = UploadError::PartChecksum { number: part.number, algorithm: algorithm.clone() };
                return Err(upload_error(key, error));
            }
        }
        let etag = uploads::multipart_etag(&parts);
        // The upload's checksum, and the object's made of its parts' own (if each kept one).
        let upload_checksum = record
            .attributes
            .metadata
            .get(uploads::CHECKSUM_METADATA)
            .and_then(|c| MultipartChecksum::decode(c));
        let of_parts = upload_checksum.and_then(|checksum| {
            let sums: Vec<_> = parts
                .iter()
                .map(|p| (p.checksums.get(checksum.algorithm).map(String::as_str), p.size))
                .collect();
            checksum::from_part_checksums(checksum, &sums)
        });
        let claimed = checksum::claimed_for(upload_checksum, &claimed)?;
        if let (Some(claimed), Some(entries)) = (&claimed, &of_parts)
            && !checksum::matches(claimed, entries)
        {
            return Err(claimed.mismatch());
        }

        let mut completes = self.inner.completes.lock();
        let slot = (bucket.to_owned(), id.to_owned());
        if let Some(running) = completes.get(&slot) {
            return Ok(Some(running.clone()));
        }
        let (gateway, bucket, key, id) = (self.clone(), bucket.to_owned(), key.to_owned(), id.to_owned());
        let task = tokio::spawn(async move {
            let late_metadata = LateMetadata::default();
            let written = async {
                // A NAR whose parts were ingested as they came needs only the rest, unless the
                // object's checksum is to be computed from its bytes (its parts kept none),
                // which a feed does not do: then the upload is ingested from staging.
                let feed = if upload_checksum.is_some() && of_parts.is_none() {
                    gateway.stop_feed(&bucket, &id);
                    None
                } else {
                    gateway.complete_feed(&bucket, &id, &parts).await
                };
                match feed {
                    Some(landed) => {
                        landed.await?;
                    }
                    None => {
                        let mut attributes = uploads::with_etag(record.attributes.clone(), &etag);
                        attributes.metadata.remove(uploads::CHECKSUM_METADATA);
                        let mut body = staging.body(&id, &parts);
                        if let Some(entries) = &of_parts {
                            attributes.metadata.extend(entries.iter().cloned());
                        } else if let Some(checksum) = upload_checksum {
                            // A part kept no checksum: the object's is computed from the bytes
                            // (and checked against the one claimed before the object is whole).
                            let sizes = parts.iter().map(|p| p.size).collect();
                            body = checksummed(body, sizes, checksum, claimed.clone(), late_metadata.clone());
                        }
                        let upload =
                            Upload { attributes, late_metadata: late_metadata.clone(), ..Default::default() };
                        gateway.write_object(&bucket, &key, body, upload).await?;
                    }
                }
                let checksums = match of_parts {
                    Some(entries) => entries.into_iter().collect(),
                    None => late_metadata.entries(),
                };
                let (checksum, checksum_type) = checksum::from_metadata(&checksums);
                staging.finish(&id, &record, &etag, checksums).await.map_err(|e| upload_error(&key, e))?;
                Ok::<_, S3Error>(Completed { etag: etag.clone(), checksum, checksum_type })
            }
            .await;
            let outcome = match written {
                Ok(completed) => Ok(completed),
                // A Complete of the same upload through another gateway may have finished first
                // and removed the parts this one was reading: then the upload succeeded.
                Err(e) => match staging.completed(&id).await {
                    Ok(Some(done)) if done.key == key && done.etag == etag => {
                        let (checksum, checksum_type) = checksum::from_metadata(&done.checksums);
                        Ok(Completed { etag, checksum, checksum_type })
                    }
                    _ => Err(Failure::from(e)),
                },
            };
            gateway.inner.completes.lock().remove(&(bucket, id));
            outcome
        });
        let outcome = async move {
            task.await
                .unwrap_or_else(|e| Err(Failure::from(internal("", &format!("a Complete failed: {e}")))))
        }
        .boxed()
        .shared();
        completes.insert(slot, outcome.clone());
        Ok(Some(outcome))
    }

    /// AbortMultipartUpload: removes the upload's parts and record.
    pub(super) async fn abort_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        self.existing(&input.bucket).await?;
        self.open_upload(&input.bucket, &input.key, &input.upload_id).await?;
        self.stop_feed(&input.bucket, &input.upload_id);
        self.uploads(&input.bucket).abort(&input.upload_id).await.map_err(|e| upload_error(&input.key, e))?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    /// ListParts: the staged parts of an upload, a page at a time (one backend LIST per 1,000
    /// parts staged).
    pub(super) async fn list_upload_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        self.existing(&input.bucket).await?;
        self.open_upload(&input.bucket, &input.key, &input.upload_id).await?;
        let max_parts = match input.max_parts {
            None => 1000,
            Some(n) if n < 0 => return Err(s3_error!(InvalidArgument, "max-parts must not be negative")),
            Some(n) => (n as usize).min(1000),
        };
        let marker = input.part_number_marker.unwrap_or(0).max(0) as u32;
        let parts = self
            .uploads(&input.bucket)
            .parts(&input.upload_id)
            .await
            .map_err(|e| upload_error(&input.key, e))?;
        let after: Vec<_> = parts.into_iter().filter(|p| p.number > marker).collect();
        let truncated = after.len() > max_parts;
        let page: Vec<Part> = after
            .iter()
            .take(max_parts)
            .map(|p| Part {
                e_tag: Some(ETag::Strong(p.etag())),
                last_modified: Some(timestamp(p.last_modified)),
                part_number: Some(p.number as i32),
                size: Some(p.size as i64),
                checksum_crc32: p.checksums.get("crc32").cloned(),
                checksum_crc32c: p.checksums.get("crc32c").cloned(),
                checksum_crc64nvme: p.checksums.get("crc64nvme").cloned(),
                checksum_sha1: p.checksums.get("sha1").cloned(),
                checksum_sha256: p.checksums.get("sha256").cloned(),
            })
            .collect();
        let next = page.last().and_then(|p| p.part_number).filter(|_| truncated);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: next,
            max_parts: Some(max_parts as i32),
            is_truncated: Some(truncated),
            parts: Some(page),
            initiator: Some(initiator()),
            owner: Some(Owner { display_name: Some("nargate".into()), id: Some("nargate".into()) }),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            ..Default::default()
        }))
    }

    /// ListMultipartUploads: the bucket's open uploads, by key then initiation (one backend
    /// LIST per 1,000 uploads and one GET per upload: meant for clean-up tools, not hot paths).
    pub(super) async fn list_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        self.existing(&input.bucket).await?;
        let encode = match input.encoding_type.as_ref().map(EncodingType::as_str) {
            None => false,
            Some(EncodingType::URL) => true,
            Some(other) => {
                return Err(s3_error!(
                    InvalidArgument,
                    "Invalid Encoding Method specified in Request: {other}"
                ));
            }
        };
        let max_uploads = match input.max_uploads {
            None => 1000,
            Some(n) if n < 0 => return Err(s3_error!(InvalidArgument, "max-uploads must not be negative")),
            Some(n) => (n as usize).min(1000),
        };
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let all = self.uploads(&input.bucket).list().await.map_err(|e| upload_error(&input.bucket, e))?;
        let key_marker = input.key_marker.clone().unwrap_or_default();
        let mut skipping_id = input.upload_id_marker.clone().filter(|_| !key_marker.is_empty());
        let (mut uploads, mut prefixes): (Vec<MultipartUpload>, Vec<String>) = (vec![], vec![]);
        let mut next: Option<(String, String)> = None;
        let mut truncated = false;
        for upload in &all {
            let key = &upload.record.key;
            if !key.starts_with(&prefix) || key.as_str() < key_marker.as_str() {
                continue;
            }
            if key == &key_marker {
                // With an upload-id marker, the uploads of that key after it; without, none.
                match &skipping_id {
                    Some(marker) if *marker == upload.id => {
                        skipping_id = None;
                        continue;
                    }
                    Some(_) => continue,
                    None if input.upload_id_marker.is_none() => continue,
                    None => {}
                }
            }
            let rolled = delimiter.as_ref().and_then(|d| {
                key[prefix.len()..].find(d.as_str()).map(|at| key[..prefix.len() + at + d.len()].to_owned())
            });
            if let Some(common) = &rolled
                && prefixes.last() == Some(common)
            {
                continue;
            }
            if uploads.len() + prefixes.len() == max_uploads {
                // Another upload (or common prefix) would follow.
                truncated = true;
                break;
            }
            next = Some((key.clone(), upload.id.clone()));
            match rolled {
                Some(common) => prefixes.push(common),
                None => uploads.push(MultipartUpload {
                    key: Some(if encode { url_encode(key) } else { key.clone() }),
                    upload_id: Some(upload.id.clone()),
                    initiated: Some(timestamp(upload.initiated)),
                    initiator: Some(initiator()),
                    owner: Some(Owner { display_name: Some("nargate".into()), id: Some("nargate".into()) }),
                    storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                    ..Default::default()
                }),
            }
        }
        let (next_key, next_id) = match next.filter(|_| truncated) {
            Some((k, id)) => (Some(k), Some(id)),
            None => (None, None),
        };
        let name = |s: String| if encode { url_encode(&s) } else { s };
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: Some(name(prefix)),
            delimiter: input.delimiter,
            key_marker: input.key_marker.map(name),
            upload_id_marker: input.upload_id_marker,
            next_key_marker: next_key.map(name),
            next_upload_id_marker: next_id,
            max_uploads: Some(max_uploads as i32),
            is_truncated: Some(truncated),
            uploads: Some(uploads),
            common_prefixes: Some(
                prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(name(p)) }).collect(),
            ),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }
}

/// Works around s3s 0.14.1, whose kept-alive Complete writes an error with a second XML
/// declaration after the first (`serialize_error(err, false)` in its `ops/multipart.rs`), which
/// no XML parser accepts: in a kept-alive body (a chunked XML `200`), a declaration at the start
/// of any frame but the first is dropped. Other responses pass unchanged.
pub(super) fn one_xml_declaration(response: http::Response<s3s::Body>) -> http::Response<s3s::Body> {
    let kept_alive = response.status() == StatusCode::OK
        && response.headers().get(http::header::TRANSFER_ENCODING).is_some_and(|v| v == "chunked")
        && response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/xml"));
    if !kept_alive {
        return response;
    }
    response.map(|inner| s3s::Body::http_body_unsync(OneDeclaration { inner, first: true }))
}

/// See [`one_xml_declaration`].
struct OneDeclaration {
    inner: s3s::Body,
    first: bool,
}

impl http_body::Body for OneDeclaration {
    type Data = bytes::Bytes;
    type Error = s3s::StdError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        let std::task::Poll::Ready(Some(Ok(frame))) = polled else { return polled };
        let first = std::mem::replace(&mut self.first, false);
        let frame = match frame.into_data() {
            Ok(data) if !first && data.starts_with(b"<?xml") => {
                let end = data.windows(2).position(|w| w == b"?>").map_or(0, |at| at + 2);
                http_body::Frame::data(data.slice(end..))
            }
            Ok(data) => http_body::Frame::data(data),
            Err(frame) => frame,
        };
        std::task::Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use s3s::xml;

    /// Nix sends Complete bodies without the S3 namespace: s3s parses them all the same.
    #[test]
    fn complete_bodies_parse_with_and_without_a_namespace() {
        for body in [
            r#"<CompleteMultipartUpload><Part><ETag>"aa"</ETag><PartNumber>1</PartNumber></Part><Part><ETag>bb</ETag><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>"#,
            r#"<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Part><ETag>"aa"</ETag><PartNumber>1</PartNumber></Part><Part><ETag>bb</ETag><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>"#,
        ] {
            let mut d = xml::Deserializer::new(body.as_bytes());
            let parsed: s3s::dto::CompletedMultipartUpload = xml::Deserialize::deserialize(&mut d).unwrap();
            let parts = parsed.parts.unwrap();
            let got: Vec<_> = parts
                .iter()
                .map(|p| (p.part_number.unwrap(), p.e_tag.as_ref().unwrap().value().to_owned()))
                .collect();
            assert_eq!(got, [(1, "aa".to_owned()), (2, "bb".to_owned())], "{body}");
        }
    }
}
