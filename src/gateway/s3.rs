//! The S3 operations, one function each, mapped onto the caches (GET and HEAD of objects are in
//! [`super::read`]).
//!
//! | operation | what it does |
//! |---|---|
//! | ListBuckets | every bucket record |
//! | CreateBucket | a new, empty cache (canned ACL `private` or `public-read`) |
//! | HeadBucket, GetBucketLocation | the bucket exists |
//! | DeleteBucket | removes an empty bucket (BucketNotEmpty otherwise) |
//! | GetBucketAcl, PutBucketAcl | the bucket's anonymous-read setting, as S3 ACLs |
//! | ListObjects, ListObjectsV2 | the merged listing of plain objects and virtual keys |
//! | PutObject, DeleteObject, DeleteObjects | every key, as [`super::write`] maps them |
//! | CopyObject | the source read whole (rendered, for a virtual key), written as a PutObject of it |

use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};

use super::Gateway;
use super::body::{ALGORITHMS, Expected, receive, value_of, verified_sha256};
use super::conditional::whole_seconds;
use super::error::commit_error;
use super::write::Upload;
use crate::cache::{After, BucketRecord, ListQuery, Listing};

/// The owner every bucket and object shows (the gateway has one tenant).
fn owner() -> Owner {
    Owner { display_name: Some("nargate".into()), id: Some("nargate".into()) }
}

/// The URI S3 names anonymous users by in ACLs.
const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";

/// Whether a canned ACL makes a bucket anonymously readable; other canned ACLs are refused.
fn canned_anonymous_read(acl: &BucketCannedACL) -> S3Result<bool> {
    match acl.as_str() {
        BucketCannedACL::PRIVATE => Ok(false),
        BucketCannedACL::PUBLIC_READ => Ok(true),
        other => Err(s3_error!(
            NotImplemented,
            "canned ACL {other:?} is not supported: use private or public-read"
        )),
    }
}

/// The Content-Encoding to keep with an object: `aws-chunked` is the upload's framing, never
/// the object's.
pub(super) fn stored_encoding(encoding: Option<&str>) -> Option<String> {
    let kept: Vec<&str> =
        encoding?.split(',').map(str::trim).filter(|e| !e.is_empty() && *e != "aws-chunked").collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

/// The percent-encoding of `encoding-type=url` (RFC 3986 unreserved characters and `/` kept).
fn url_encode(s: &str) -> String {
    urlencoding::encode(s).replace("%2F", "/")
}

impl Gateway {
    /// A bucket's settings, or NoSuchBucket.
    pub(super) async fn existing(&self, bucket: &str) -> S3Result<BucketRecord> {
        self.cache(bucket)
            .settings()
            .await
            .map_err(|e| commit_error(bucket, e))?
            .ok_or_else(|| s3_error!(NoSuchBucket))
    }

    /// One page of a bucket's listing, for either ListObjects version.
    async fn list_page(
        &self,
        bucket: &str,
        prefix: Option<String>,
        delimiter: Option<String>,
        after: Option<After>,
        max_keys: Option<i32>,
    ) -> S3Result<Listing> {
        let max_keys = match max_keys {
            None => crate::cache::listing::MAX_KEYS,
            Some(n) if n < 0 => return Err(s3_error!(InvalidArgument, "max-keys must not be negative")),
            Some(n) => n as usize,
        };
        let query = ListQuery { prefix: prefix.unwrap_or_default(), delimiter, after, max_keys };
        let listing = self
            .cache(bucket)
            .list(&query, &self.inner.renderer)
            .await
            .map_err(|e| commit_error(bucket, e))?;
        listing.ok_or_else(|| s3_error!(NoSuchBucket))
    }
}

/// A listing's objects and common prefixes as S3 shows them, keys URL-encoded when asked.
fn listed(listing: &Listing, encode: bool, fetch_owner: bool) -> (Vec<Object>, Vec<CommonPrefix>) {
    let name = |s: &str| if encode { url_encode(s) } else { s.to_owned() };
    let objects = listing
        .objects
        .iter()
        .map(|o| Object {
            key: Some(name(&o.key)),
            size: Some(o.size as i64),
            e_tag: Some(ETag::Strong(o.etag.clone())),
            last_modified: Some(Timestamp::from(whole_seconds(o.last_modified))),
            storage_class: Some(ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
            owner: fetch_owner.then(owner),
            ..Default::default()
        })
        .collect();
    let prefixes = listing.common_prefixes.iter().map(|p| CommonPrefix { prefix: Some(name(p)) }).collect();
    (objects, prefixes)
}

/// Whether the client asked for `encoding-type=url`; other encodings are refused.
fn url_encoding(encoding: &Option<EncodingType>) -> S3Result<bool> {
    match encoding.as_ref().map(EncodingType::as_str) {
        None => Ok(false),
        Some(EncodingType::URL) => Ok(true),
        Some(other) => {
            Err(s3_error!(InvalidArgument, "Invalid Encoding Method specified in Request: {other}"))
        }
    }
}

#[async_trait::async_trait]
impl S3 for Gateway {
    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let buckets =
            crate::cache::list_buckets(&self.inner.backend).await.map_err(|e| commit_error("", e))?;
        let buckets = buckets
            .into_iter()
            .map(|(name, meta)| Bucket {
                name: Some(name),
                creation_date: Some(Timestamp::from(meta.last_modified)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(owner()),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let input = req.input;
        let mut settings = self.new_bucket_settings(&input.bucket);
        if let Some(acl) = &input.acl {
            settings.anonymous_read = canned_anonymous_read(acl)?;
        }
        if let Some(configured) = self.inner.configured_buckets.get(&input.bucket) {
            settings.apply(configured);
        }
        let (_, created) =
            self.cache(&input.bucket).create(settings).await.map_err(|e| commit_error(&input.bucket, e))?;
        if !created {
            return Err(s3_error!(BucketAlreadyOwnedByYou));
        }
        let location = format!("/{}", input.bucket);
        Ok(S3Response::new(CreateBucketOutput { location: Some(location) }))
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.existing(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.existing(&req.input.bucket).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let bucket = &req.input.bucket;
        self.existing(bucket).await?;
        let cache = self.cache(bucket);
        if !cache.is_empty().await.map_err(|e| commit_error(bucket, e))? {
            return Err(s3_error!(BucketNotEmpty));
        }
        cache.delete_bucket().await.map_err(|e| commit_error(bucket, e))?;
        Ok(S3Response::new(DeleteBucketOutput::default()))
    }

    async fn get_bucket_acl(
        &self,
        req: S3Request<GetBucketAclInput>,
    ) -> S3Result<S3Response<GetBucketAclOutput>> {
        let settings = self.existing(&req.input.bucket).await?;
        let mut grants = vec![Grant {
            grantee: Some(Grantee {
                id: Some("nargate".into()),
                display_name: Some("nargate".into()),
                type_: Type::from_static(Type::CANONICAL_USER),
                email_address: None,
                uri: None,
            }),
            permission: Some(Permission::from_static(Permission::FULL_CONTROL)),
        }];
        if settings.anonymous_read {
            grants.push(Grant {
                grantee: Some(Grantee {
                    type_: Type::from_static(Type::GROUP),
                    uri: Some(ALL_USERS.into()),
                    id: None,
                    display_name: None,
                    email_address: None,
                }),
                permission: Some(Permission::from_static(Permission::READ)),
            });
        }
        Ok(S3Response::new(GetBucketAclOutput { grants: Some(grants), owner: Some(owner()) }))
    }

    async fn put_bucket_acl(
        &self,
        req: S3Request<PutBucketAclInput>,
    ) -> S3Result<S3Response<PutBucketAclOutput>> {
        let input = req.input;
        let mut settings = self.existing(&input.bucket).await?;
        settings.anonymous_read = match (&input.acl, &input.access_control_policy) {
            (Some(acl), _) => canned_anonymous_read(acl)?,
            (None, Some(policy)) => policy.grants.iter().flatten().any(|g| {
                let all_users = g.grantee.as_ref().and_then(|e| e.uri.as_deref()) == Some(ALL_USERS);
                let read = g.permission.as_ref().is_some_and(|p| p.as_str() == Permission::READ);
                all_users && read
            }),
            (None, None) => {
                return Err(s3_error!(
                    MissingSecurityHeader,
                    "give a canned ACL or an access control policy"
                ));
            }
        };
        self.cache(&input.bucket)
            .set_settings(&settings)
            .await
            .map_err(|e| commit_error(&input.bucket, e))?;
        Ok(S3Response::new(PutBucketAclOutput::default()))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let encode = url_encoding(&input.encoding_type)?;
        let after = input.marker.clone().filter(|m| !m.is_empty()).map(After::Key);
        let listing = self
            .list_page(&input.bucket, input.prefix.clone(), input.delimiter.clone(), after, input.max_keys)
            .await?;
        let (contents, prefixes) = listed(&listing, encode, true);
        let name = |s: Option<String>| s.map(|s| if encode { url_encode(&s) } else { s });
        // V1 has no token: a truncated page's NextMarker is its last key or common prefix, which
        // rclone's `provider = Other` needs on every truncated page.
        let next_marker = listing.next.as_ref().map(|after| match after {
            After::Key(key) | After::Prefix(key) => key.clone(),
        });
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(name(input.prefix).unwrap_or_default()),
            marker: Some(name(input.marker).unwrap_or_default()),
            delimiter: name(input.delimiter),
            max_keys: Some(input.max_keys.unwrap_or(1000)),
            is_truncated: Some(listing.next.is_some()),
            next_marker: name(next_marker),
            contents: Some(contents),
            common_prefixes: Some(prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let encode = url_encoding(&input.encoding_type)?;
        let after =
            match &input.continuation_token {
                Some(token) => Some(After::from_token(token).ok_or_else(|| {
                    s3_error!(InvalidArgument, "The continuation token provided is incorrect")
                })?),
                None => input.start_after.clone().filter(|s| !s.is_empty()).map(After::Key),
            };
        let listing = self
            .list_page(&input.bucket, input.prefix.clone(), input.delimiter.clone(), after, input.max_keys)
            .await?;
        let (contents, prefixes) = listed(&listing, encode, input.fetch_owner == Some(true));
        let name = |s: Option<String>| s.map(|s| if encode { url_encode(&s) } else { s });
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(name(input.prefix).unwrap_or_default()),
            delimiter: name(input.delimiter),
            max_keys: Some(input.max_keys.unwrap_or(1000)),
            key_count: Some((contents.len() + prefixes.len()) as i32),
            continuation_token: input.continuation_token,
            next_continuation_token: listing.next.as_ref().map(After::to_token),
            is_truncated: Some(listing.next.is_some()),
            start_after: name(input.start_after),
            contents: Some(contents),
            common_prefixes: Some(prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        self.existing(&input.bucket).await?;
        let expected = Expected::from_request(&req.headers, req.trailing_headers)?;
        let mut attributes = client_attributes!(&input);
        attributes.metadata.extend(expected.header_checksums());
        // s3s sets the service only for SigV4, the one signature that covers the body's hash.
        let verified_sha256 =
            verified_sha256(&req.headers, req.credentials.is_some() && req.service.is_some());
        // The body's stream checks a Content-MD5 at its end, and fails if it differs.
        let verified_md5 = expected.content_md5;
        let (body, receipt) = receive(&input.key, input.body, expected, self.inner.body_idle_timeout);
        let upload = Upload {
            attributes,
            late_metadata: receipt.late_metadata(),
            receipt: Some(receipt),
            verified_sha256,
            verified_md5,
            ..Default::default()
        };
        let written = self.write_object(&input.bucket, &input.key, body, upload).await?;
        let checksum = written.checksum;
        let any_checksum = ALGORITHMS.iter().any(|alg| value_of(&checksum, alg).is_some());
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(written.etag)),
            checksum_type: any_checksum.then(|| ChecksumType::from_static(ChecksumType::FULL_OBJECT)),
            checksum_crc32: checksum.checksum_crc32,
            checksum_crc32c: checksum.checksum_crc32c,
            checksum_crc64nvme: checksum.checksum_crc64nvme,
            checksum_sha1: checksum.checksum_sha1,
            checksum_sha256: checksum.checksum_sha256,
            ..Default::default()
        }))
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        let CopySource::Bucket { bucket: src_bucket, key: src_key, .. } = &input.copy_source else {
            return Err(s3_error!(NotImplemented, "copies from access points are not supported"));
        };
        self.existing(&input.bucket).await?;
        let replace =
            input.metadata_directive.as_ref().is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let attributes = replace.then(|| client_attributes!(&input));
        let written = self.copy_into((src_bucket, src_key), (&input.bucket, &input.key), attributes).await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(written.etag)),
                last_modified: Some(Timestamp::from(whole_seconds(std::time::SystemTime::now()))),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.create_upload(req).await
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        self.stage_part(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.complete_upload(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.abort_upload(req).await
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        self.list_upload_parts(req).await
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.list_uploads(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        self.existing(&input.bucket).await?;
        self.delete_key(&input.bucket, &input.key).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        self.existing(&input.bucket).await?;
        let quiet = input.delete.quiet == Some(true);
        let (mut deleted, mut errors) = (vec![], vec![]);
        for object in input.delete.objects {
            match self.delete_key(&input.bucket, &object.key).await {
                Ok(()) if quiet => {}
                Ok(()) => deleted.push(DeletedObject { key: Some(object.key), ..Default::default() }),
                Err(e) => errors.push(Error {
                    code: Some(e.code().as_str().to_owned()),
                    message: e.message().map(str::to_owned),
                    key: Some(object.key),
                    version_id: None,
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }
}
