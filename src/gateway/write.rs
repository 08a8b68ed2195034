//! Writes of objects: what a PUT or a DELETE of each key does.
//!
//! | key | PUT | DELETE |
//! |---|---|---|
//! | `nar/<narhash>.nar` | ingest; visible at its own key at once; another NarHash → BadDigest | removes it and the store paths that use it |
//! | other `nar/…` (upload keys: `.nar.xz`, `.zst`, `.bz2`, `.br`, `.lz4`, gzip as `.nar`) | ingest; the key itself is not kept | forgets the key |
//! | `<storehash>.narinfo` | the commit protocol; malformed or another store path → 400 | removes the store path |
//! | `<storehash>.ls` | read and dropped (the served one is rendered) | nothing |
//! | `nix-cache-info` | Priority / WantMassQuery become settings; another StoreDir → 400 | settings back to defaults |
//! | `store/…` | 400: a read-only view | removes the store path |
//! | `tree/…` | 400: a read-only view | 400 |
//! | anything else | a plain object, stored verbatim | removes it |
//!
//! A write runs in a task of its own, so that once the body is in, the ingest and the commit
//! run to their end even if the client goes away. Every DELETE of a missing key succeeds.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use s3s::dto::Checksum;
use s3s::{S3Error, S3ErrorCode, S3Result, s3_error};
use tokio::io::AsyncReadExt;

use super::Gateway;
use super::body::{BodyError, CHECKSUM_PREFIX, Receipt};
use super::error::{backend_error, commit_error, ingest_error, internal};
use super::target::Target;
use crate::backend::{Attributes, BackendError, ByteStream, LateMetadata, PutOptions};
use crate::cache::{BucketRecord, Cache, CommitError, NarInfoOutcome};
use crate::castore::lease::Lease;
use crate::ingest::{Compression, IngestOptions, ingest_nar_under, take_lease};
use crate::nix::cache_info::CacheInfo;
use crate::nix::narinfo::{MAX_NARINFO_LEN, NarInfo};

/// What a client sent along with an object's bytes.
#[derive(Debug, Default, Clone)]
pub struct Upload {
    /// Content type, encoding, user metadata … (kept with plain objects).
    pub attributes: Attributes,
    /// `Content-MD5`, if the bytes must be checked against it here (PutObject checks it as the
    /// body arrives, through its [`Receipt`]).
    pub content_md5: Option<[u8; 16]>,
    /// How the request body ended, when `body` is one (see [`super::body`]).
    pub receipt: Option<Receipt>,
    /// Metadata kept with a plain object that the body's stream gives at its end (checksums
    /// of trailers or of a multipart upload's parts).
    pub late_metadata: LateMetadata,
    /// The body's SHA-256, when its stream verifies it ([`super::body::verified_sha256`]).
    pub verified_sha256: Option<[u8; 32]>,
    /// The body's MD5, when its stream verifies it (a `Content-MD5` its [`Receipt`] checks).
    pub verified_md5: Option<[u8; 16]>,
}

/// What a write made.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// The ETag: the MD5 (hex) of the bytes received.
    pub etag: String,
    /// The checksums the client sent, computed over the bytes received.
    pub checksum: Checksum,
}

/// The largest `nix-cache-info` or `.ls` upload read (a `.ls` is dropped, but read to its end).
const MAX_SMALL_UPLOAD: usize = MAX_NARINFO_LEN;

impl Gateway {
    /// Writes `key` of `bucket` from `body` (see the module docs for what each key does).
    pub(super) async fn write_object(
        &self,
        bucket: &str,
        key: &str,
        body: ByteStream,
        upload: Upload,
    ) -> S3Result<Written> {
        let target = Target::of(key);
        if target.is_read_only_view() {
            // Refused before the body is read.
            return Err(read_only());
        }
        let gateway = self.clone();
        let logged = key.to_owned();
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        // Not dropped with the request: a body that arrived whole is ingested and committed.
        let task = tokio::spawn(async move {
            let cache = gateway.cache(&bucket);
            let receipt = upload.receipt.clone();
            let result = match target {
                Target::Plain => gateway.put_plain(&cache, &key, body, upload).await,
                Target::Nar { .. } | Target::NarUpload => {
                    let verified = (upload.verified_sha256, upload.verified_md5);
                    gateway.put_nar(&cache, &key, target, body, verified).await
                }
                Target::NarInfo { store_hash } => put_narinfo(&cache, &key, &store_hash, body, &upload).await,
                Target::Listing { .. } => {
                    read_small(&key, body, MAX_SMALL_UPLOAD).await.map(|b| crate::cache::md5_hex(&b))
                }
                Target::CacheInfo => gateway.put_cache_info(&cache, &key, body).await,
                Target::StoreNar { .. } | Target::StoreView | Target::Tree { .. } => Err(read_only()),
            };
            // A body that failed says why, whatever its consumer made of the failure.
            if let Some(failure) = receipt.as_ref().and_then(Receipt::failure) {
                return Err(failure.to_s3());
            }
            // The ETag is the stored object's (a plain object's, as HEAD will show it), or the MD5
            // of the bytes received.
            let etag = result?;
            let checksum = receipt.and_then(|r| r.outcome()).and_then(Result::ok).map(|r| r.checksum);
            Ok(Written { etag, checksum: checksum.unwrap_or_default() })
        });
        task.await.map_err(|e| internal(&logged, &e))?
    }

    /// PUT of a plain object: stored verbatim, atomically.
    async fn put_plain(
        &self,
        cache: &Cache,
        key: &str,
        body: ByteStream,
        upload: Upload,
    ) -> S3Result<String> {
        let options = PutOptions {
            attributes: upload.attributes,
            content_md5: upload.content_md5,
            late_metadata: upload.late_metadata,
            // A plain object's ETag is its MD5, as S3's is (`aws s3 sync` compares them).
            md5_unneeded: false,
        };
        let written = cache.put_plain(key, body, options).await.map_err(|e| backend_error(key, e))?;
        Ok(written.etag)
    }

    /// PUT of a NAR (plain or compressed): ingested, checked against what its key (or a narinfo
    /// naming the key) says it is, then made visible and committed with waiting narinfos.
    /// `verified` are the body's SHA-256 and MD5, those that its stream verifies.
    pub(super) async fn put_nar(
        &self,
        cache: &Cache,
        key: &str,
        target: Target,
        body: ByteStream,
        (verified_sha256, verified_md5): (Option<[u8; 32]>, Option<[u8; 16]>),
    ) -> S3Result<String> {
        let named = cache.upload_key(key).await.map_err(|e| commit_error(key, e))?;
        let expected = named.filter(|n| !n.landed);
        let options = IngestOptions {
            br_suffix: key.ends_with(".br"),
            expected_nar_hash: expected.as_ref().map(|n| n.nar_hash),
            expected_nar_size: expected.as_ref().map(|n| n.nar_size),
            verified_sha256,
            verified_md5,
            ..self.inner.ingest.clone()
        };
        let reader = tokio_util::io::StreamReader::new(body.map_err(std::io::Error::other));
        // The lease covers the commit too: GC must not take the NAR record for garbage before the
        // cache says it holds the NAR.
        let lease = take_lease(&self.inner.chunks, &options).await.map_err(|e| ingest_error(key, e))?;
        let landed = self.land_nar(cache, key, target, reader, &options, &lease).await;
        // A lease left behind only delays GC until it expires: not worth failing the upload for.
        let _ = lease.release().await;
        landed
    }

    /// The part of [`put_nar`](Self::put_nar) under its lease: ingest, check, commit.
    async fn land_nar<R: tokio::io::AsyncRead + Unpin + Send>(
        &self,
        cache: &Cache,
        key: &str,
        target: Target,
        reader: R,
        options: &IngestOptions,
        lease: &Lease,
    ) -> S3Result<String> {
        let ingested = ingest_nar_under(&self.inner.chunks, reader, options, lease)
            .await
            .map_err(|e| ingest_error(key, e))?;
        let record = &ingested.record;
        if let Target::Nar { nar_hash } = target
            && ingested.compression == Compression::None
            && record.nar_hash != nar_hash
        {
            return Err(S3Error::with_message(
                S3ErrorCode::BadDigest,
                format!(
                    "the NAR's NarHash is sha256:{}, not the one its key names",
                    crate::nix::nixbase32::encode(&record.nar_hash)
                ),
            ));
        }
        let canonical = format!("nar/{}.nar", crate::nix::nixbase32::encode(&record.nar_hash));
        if key != canonical {
            cache.nar_uploaded_at(key, record).await.map_err(|e| commit_error(key, e))?;
        }
        let committed = cache.nar_landed(record).await.map_err(|e| commit_error(key, e))?;
        cache.chunks_written(ingested.chunks_uploaded, ingested.stored_chunk_bytes);
        tracing::info!(
            %key,
            nar = %canonical,
            compression = ingested.compression.nix_name(),
            chunks = ingested.chunks,
            uploaded = ingested.chunks_uploaded,
            committed = committed.len(),
            "NAR ingested"
        );
        Ok(hex::encode(ingested.received.md5.unwrap_or_default()))
    }

    /// PUT of `nix-cache-info`: its Priority and WantMassQuery become the bucket's settings.
    async fn put_cache_info(&self, cache: &Cache, key: &str, body: ByteStream) -> S3Result<String> {
        let bytes = read_small(key, body, MAX_SMALL_UPLOAD).await?;
        let info = CacheInfo::parse(&bytes)
            .map_err(|e| S3Error::with_message(S3ErrorCode::InvalidRequest, e.to_string()))?;
        let mut settings = self.existing(cache.bucket()).await?;
        if let Some(priority) = info.priority {
            settings.priority = priority;
        }
        if let Some(want) = info.want_mass_query {
            settings.want_mass_query = want;
        }
        cache.set_settings(&settings).await.map_err(|e| commit_error(key, e))?;
        Ok(crate::cache::md5_hex(&bytes))
    }

    /// CopyObject: `dst_key` of `dst_bucket` written from the whole of `src_key` of
    /// `src_bucket` (rendered, if it is a virtual key), as a PUT of those bytes would write it,
    /// with the source's attributes or `replace`. A copy onto itself rewrites the same bytes
    /// (rclone sets modification times so).
    pub(super) async fn copy_into(
        &self,
        (src_bucket, src_key): (&str, &str),
        (dst_bucket, dst_key): (&str, &str),
        replace: Option<Attributes>,
    ) -> S3Result<Written> {
        let (_, attributes, body) = self.object_source(src_bucket, src_key).await?;
        let mut attributes = match replace {
            // The copy's bytes are the source's, and so are its checksums, whatever metadata
            // replaces the source's (S3 keeps them too).
            Some(mut replacement) => {
                let checksums =
                    attributes.metadata.into_iter().filter(|(k, _)| k.starts_with(CHECKSUM_PREFIX));
                replacement.metadata.extend(checksums);
                replacement
            }
            None => attributes,
        };
        if Target::of(src_key) != Target::Plain {
            // A rendered key's content type is the gateway's, not an attribute to keep.
            attributes.content_type = None;
        }
        let upload = Upload { attributes, ..Default::default() };
        self.write_object(dst_bucket, dst_key, body, upload).await
    }

    /// DELETE of `key` (see the module docs); a missing key is not an error.
    pub(super) async fn delete_key(&self, bucket: &str, key: &str) -> S3Result<()> {
        let cache = self.cache(bucket);
        let failed = |e| commit_error(key, e);
        match Target::of(key) {
            Target::Plain => cache.delete_plain(key).await.map_err(|e| backend_error(key, e))?,
            Target::NarInfo { store_hash } => {
                cache.remove_store_path(&store_hash).await.map_err(failed)?;
            }
            Target::StoreNar { store_path } => {
                let store_hash = store_path.hash_part();
                let path = cache.path_info(&store_hash).await.map_err(failed)?;
                if path.is_some_and(|p| p.store_path == store_path.to_absolute()) {
                    cache.remove_store_path(&store_hash).await.map_err(failed)?;
                }
            }
            Target::Nar { nar_hash } => {
                cache.remove_nar(&nar_hash).await.map_err(failed)?;
                cache.forget_upload_key(key).await.map_err(failed)?;
            }
            Target::NarUpload => cache.forget_upload_key(key).await.map_err(failed)?,
            Target::CacheInfo => {
                let mut settings = self.existing(bucket).await?;
                let defaults = self.new_bucket_settings(bucket);
                settings.priority = defaults.priority;
                settings.want_mass_query = defaults.want_mass_query;
                cache.set_settings(&settings).await.map_err(failed)?;
            }
            Target::Tree { .. } => return Err(read_only()),
            Target::Listing { .. } | Target::StoreView => {}
        }
        Ok(())
    }

    /// The settings a bucket created now gets: the defaults, then the configured ones.
    pub(super) fn new_bucket_settings(&self, bucket: &str) -> BucketRecord {
        let mut settings = BucketRecord::new_now();
        if let Some(configured) = self.inner.configured_buckets.get(bucket) {
            settings.apply(configured);
        }
        settings
    }
}

/// The error of a write under a read-only view.
pub(super) fn read_only() -> S3Error {
    s3_error!(InvalidRequest, "store/ and tree/ are read-only views of the cache's store paths")
}

/// PUT of `<storehash>.narinfo`: decoded (`Content-Encoding`), parsed, then the commit protocol.
async fn put_narinfo(
    cache: &Cache,
    key: &str,
    store_hash: &str,
    body: ByteStream,
    upload: &Upload,
) -> S3Result<String> {
    let bytes = read_small(key, body, MAX_NARINFO_LEN).await?;
    let etag = crate::cache::md5_hex(&bytes);
    let bytes = decode_content(bytes, upload.attributes.content_encoding.as_deref(), MAX_NARINFO_LEN).await?;
    let invalid = |e: &dyn std::fmt::Display| {
        S3Error::with_message(S3ErrorCode::InvalidRequest, format!("invalid narinfo: {e}"))
    };
    let text = std::str::from_utf8(&bytes).map_err(|e| invalid(&e))?;
    let info = NarInfo::parse(text).map_err(|e| invalid(&e))?;
    match cache.narinfo_arrived(store_hash, &info).await {
        Ok(NarInfoOutcome::Committed) => tracing::info!(%key, store_path = %info.store_path, "committed"),
        Ok(NarInfoOutcome::Pending) => {
            tracing::info!(%key, store_path = %info.store_path, "waiting for its NAR")
        }
        Err(e @ CommitError::StorePathMismatch { .. }) => return Err(invalid(&e)),
        Err(e) if e.is_mismatch() => {
            return Err(S3Error::with_message(S3ErrorCode::BadDigest, e.to_string()));
        }
        Err(e) => return Err(commit_error(key, e)),
    }
    Ok(etag)
}

/// Reads a small upload whole: at most `limit` bytes, else EntityTooLarge.
async fn read_small(key: &str, mut body: ByteStream, limit: usize) -> S3Result<Bytes> {
    let mut bytes = Vec::new();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| body_failed(key, e))?;
        if bytes.len() + piece.len() > limit {
            return Err(S3Error::with_message(
                S3ErrorCode::EntityTooLarge,
                format!("{key} may be at most {limit} bytes"),
            ));
        }
        bytes.extend_from_slice(&piece);
    }
    Ok(Bytes::from(bytes))
}

/// The S3 error of a body that failed while it was read.
fn body_failed(key: &str, e: BackendError) -> S3Error {
    match e {
        BackendError::Body { message, .. } => BodyError::Client(message).to_s3(),
        other => backend_error(key, other),
    }
}

/// `bytes` decoded from `Content-Encoding` `encoding` (Nix's `narinfo-compression` and
/// `ls-compression`: xz, zstd, br, gzip), at most `limit` bytes of output.
async fn decode_content(bytes: Bytes, encoding: Option<&str>, limit: usize) -> S3Result<Bytes> {
    let encodings: Vec<&str> = encoding
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty() && *e != "identity" && *e != "aws-chunked")
        .collect();
    let mut data = bytes;
    // Encodings are listed in the order they were applied: undo the last first.
    for encoding in encodings.iter().rev() {
        let compression = match *encoding {
            "xz" | "x-xz" => Compression::Xz,
            "zstd" => Compression::Zstd,
            "br" => Compression::Brotli,
            "gzip" | "x-gzip" => Compression::Gzip,
            "bzip2" => Compression::Bzip2,
            other => {
                return Err(S3Error::with_message(
                    S3ErrorCode::InvalidArgument,
                    format!("Content-Encoding {other:?} is not one nargate decodes (xz, zstd, br, gzip)"),
                ));
            }
        };
        let mut out = Vec::new();
        let decoder = compression.decoder(&data[..]);
        decoder.take(limit as u64 + 1).read_to_end(&mut out).await.map_err(|e| {
            S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                format!("the body is not valid {encoding}: {e}"),
            )
        })?;
        if out.len() > limit {
            return Err(S3Error::with_message(
                S3ErrorCode::EntityTooLarge,
                format!("the decoded body is larger than {limit} bytes"),
            ));
        }
        data = Bytes::from(out);
    }
    Ok(data)
}
