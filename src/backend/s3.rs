//! A backend in an S3 bucket, through aws-sdk-s3: AWS, Garage, MinIO, Ceph, R2 …
//!
//! Requests are retried by the SDK (standard mode: exponential backoff with jitter, on throttling,
//! 5xx and transport errors) up to [`S3Config::max_attempts`] times. Error mapping: `NoSuchKey` or
//! a 404 → [`BackendError::NotFound`]; 416 → [`BackendError::InvalidRange`]; anything else →
//! [`BackendError::Remote`] with the service's code and message.
//!
//! Every PUT is checked by the server, which refuses a body damaged on the way: the small ones in
//! one piece (chunks, records) by an `x-amz-checksum-crc32c`, which costs next to nothing to
//! compute (a server too old to know it ignores it; one that refuses it takes
//! [`PutCheck::ContentMd5`]), streamed ones by a Content-MD5 per request, whose MD5 is the
//! object's ETag anyway — or, when the caller needs no such ETag (staged parts,
//! [`PutOptions::md5_unneeded`]), by the CRC32C too. No other checksums are sent or required
//! (`WhenRequired`), which keeps older S3 servers happy. A PUT's
//! [`ObjectMeta::last_modified`] is the server's `Date` on its response — its own clock, at or
//! within a second after the object's LastModified — so that a PUT needs no extra HEAD. Listings
//! ask for URL-encoded keys (`encoding-type=url`), so keys with characters XML cannot carry list
//! intact (and are decoded only if the server says it encoded them).
//!
//! [`Attributes`] are S3's own: Content-Type, Content-Encoding, Cache-Control,
//! Content-Disposition, Content-Language and `x-amz-meta-*` user metadata (names read back
//! lowercase); a server may answer a Content-Type nobody set (Garage: `application/octet-stream`,
//! where the fs backend says none).
//!
//! A streaming put buffers up to [`PART_SIZE`]: a body that ends within it is one PutObject; a
//! longer one is a multipart upload of [`PART_SIZE`] parts (each with its Content-MD5, so at most
//! 80 GB), whose ETag is the server's (`<hex>-<parts>`, as LIST shows it too). A multipart upload that fails — the body, a
//! part, or the whole body's MD5 against the client's — is aborted before the error is returned,
//! and one whose put is dropped half-way (even before CreateMultipartUpload answered) is aborted
//! in a task of its own. Metadata known only at the body's end ([`PutOptions::late_metadata`]) is
//! free for one PutObject; a multipart upload, created before the body ended, gets it after
//! Complete from a CopyObject of the object onto itself that replaces its metadata, only while it
//! is still that object (`x-amz-copy-source-if-match`): its bytes are visible a moment before that
//! metadata, and an object over CopyObject's 5 GiB limit goes without it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, RuntimeComponents,
};
use aws_sdk_s3::error::{BoxError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime, DateTimeFormat};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, EncodingType, MetadataDirective};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};

use super::{
    Attributes, Backend, BackendError, GetResult, ListPage, ListRequest, MAX_KEY_LEN, ObjectMeta, Op,
    PutOptions, validate_key,
};

/// The size of the parts of a streaming put, and the largest body it sends in one PutObject.
pub const PART_SIZE: usize = 8 << 20;

/// The largest object one CopyObject copies (S3's limit).
const MAX_COPY_SIZE: u64 = 5 << 30;

/// The most parts a multipart upload may have (S3's limit).
const MAX_PARTS: i32 = 10_000;

/// Sets [`Attributes`] on a PutObject or CreateMultipartUpload request (their setters share
/// names, not a trait).
macro_rules! with_attributes {
    ($request:expr, $attributes:expr) => {{
        let attributes: Attributes = $attributes;
        let metadata: HashMap<String, String> = attributes.metadata.into_iter().collect();
        $request
            .set_content_type(attributes.content_type)
            .set_content_encoding(attributes.content_encoding)
            .set_cache_control(attributes.cache_control)
            .set_content_disposition(attributes.content_disposition)
            .set_content_language(attributes.content_language)
            .set_metadata(Some(metadata).filter(|m| !m.is_empty()))
    }};
}

/// Sends a request that writes `key` with a [`DateCapture`], and evaluates to its output and the
/// capture (returning the error from the enclosing function).
macro_rules! send_dated {
    ($request:expr, $key:expr) => {{
        let date = DateCapture::default();
        let out = $request
            .customize()
            .interceptor(date.clone())
            .send()
            .await
            .map_err(|e| classify(Op::Put, $key, e))?;
        (out, date)
    }};
    // A body sent unsigned (`UNSIGNED-PAYLOAD`): its Content-MD5 or CRC32C checks it, and a SHA-256 pass
    // over every byte written is saved.
    ($request:expr, $key:expr, unsigned_payload) => {{
        let date = DateCapture::default();
        let out = $request
            .customize()
            .disable_payload_signing()
            .interceptor(date.clone())
            .send()
            .await
            .map_err(|e| classify(Op::Put, $key, e))?;
        (out, date)
    }};
}

/// The [`Attributes`] of a GetObject or HeadObject response (their getters share names, not a
/// trait).
macro_rules! attributes_of {
    ($out:expr) => {{
        let out = &$out;
        Attributes {
            content_type: out.content_type().map(str::to_owned),
            content_encoding: out.content_encoding().map(str::to_owned),
            cache_control: out.cache_control().map(str::to_owned),
            content_disposition: out.content_disposition().map(str::to_owned),
            content_language: out.content_language().map(str::to_owned),
            metadata: out
                .metadata()
                .into_iter()
                .flatten()
                .map(|(name, value)| (name.to_lowercase(), value.clone()))
                .collect(),
        }
    }};
}

/// Where an [`S3Backend`] keeps its objects, and how it gets there.
#[derive(Clone)]
pub struct S3Config {
    /// The endpoint URL (`http://127.0.0.1:3900`); `None` for AWS itself.
    pub endpoint: Option<String>,
    /// The region to sign requests for (Garage's default is `garage`).
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// Address the bucket in the path (`endpoint/bucket/key`) instead of the host name
    /// (`bucket.endpoint/key`); most self-hosted servers need this.
    pub path_style: bool,
    /// A static access key id; with [`secret_access_key`](Self::secret_access_key), else the
    /// SDK's default credential chain (environment, profile, SSO, IMDS …) is used.
    pub access_key_id: Option<String>,
    /// The static secret access key that goes with [`access_key_id`](Self::access_key_id).
    pub secret_access_key: Option<String>,
    /// A prefix for every key in the bucket (such as `nargate/`), so that nargate can share a
    /// bucket; keys keep the 1,024-byte limit with the prefix included.
    pub prefix: Option<String>,
    /// How many times a request is tried in all (at least 1).
    pub max_attempts: u32,
    /// How connections to the endpoint are kept (see [`ConnectionMode`]).
    pub connections: ConnectionMode,
    /// How the server checks chunk, record and staged-part PUTs (see [`PutCheck`]).
    pub put_check: PutCheck,
    /// How long to wait for a connection to the endpoint (the SDK's default when `None`).
    pub connect_timeout: Option<std::time::Duration>,
    /// How long one operation may take in all, retries included (no limit when `None`).
    pub operation_timeout: Option<std::time::Duration>,
}

impl Default for S3Config {
    /// No endpoint, region `us-east-1`, no bucket, virtual-host style, the default credential
    /// chain, no prefix, 3 attempts.
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: "us-east-1".to_owned(),
            bucket: String::new(),
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            prefix: None,
            max_attempts: 3,
            connections: ConnectionMode::default(),
            put_check: PutCheck::default(),
            connect_timeout: None,
            operation_timeout: None,
        }
    }
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("prefix", &self.prefix)
            .field("max_attempts", &self.max_attempts)
            .field("connections", &self.connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .finish()
    }
}

/// How an [`S3Backend`] keeps its connections.
///
/// Garage 2.5 stalls small responses on a kept-alive connection (its Nagle against our delayed
/// ACKs; see [`quickack`](super::quickack)). `cargo bench --bench render` on Garage over
/// loopback, a 13 KB GET: 42 ms `Reuse`, 0.85 ms `QuickAck`, 2.3 ms `NewPerRequest`; a whole
/// 257 MiB NAR rendered from chunks: 220, 382 and 281 MiB/s.
///
/// In the configuration file: `"reuse"`, `"quickack"`, `"new-per-request"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionMode {
    /// A pool of kept-alive connections: the SDK's own client.
    Reuse,
    /// A pool of kept-alive connections that set `TCP_QUICKACK` before every read, so that the
    /// server's last segment is acknowledged at once ([`quickack`](super::quickack)). `https://`
    /// endpoints get the plain pool. The default: the fastest of the three on Garage, and as
    /// good as `Reuse` elsewhere.
    #[default]
    #[serde(rename = "quickack")]
    QuickAck,
    /// A new connection for every request: no stall, one TCP (and TLS) handshake a request,
    /// cheap only on a nearby server without TLS.
    NewPerRequest,
}

/// How the server checks a chunk, record or staged-part PUT for damage on the way.
/// In the configuration file: `"crc32c"`, `"content-md5"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PutCheck {
    /// An `x-amz-checksum-crc32c`, which costs next to nothing to compute. The default.
    #[default]
    Crc32c,
    /// A `Content-MD5`, an MD5 pass over every byte: for a server that refuses checksum headers.
    ContentMd5,
}

/// Why an [`S3Config`] cannot make a backend.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum S3ConfigError {
    /// The bucket name is empty.
    #[error("no bucket given")]
    NoBucket,
    /// Only one of the access key id and the secret access key is given.
    #[error("a static access key id needs its secret access key, and the other way round")]
    IncompleteStaticKeys,
    /// The endpoint is not an `http://` or `https://` URL.
    #[error("endpoint {0:?} is not an http:// or https:// URL")]
    InvalidEndpoint(String),
}

/// An object bucket in S3.
#[derive(Debug, Clone)]
pub struct S3Backend {
    client: Client,
    bucket: String,
    prefix: String,
    put_check: PutCheck,
}

impl S3Backend {
    /// Makes a backend for `config`'s bucket. It sends no request: a wrong endpoint, bucket or
    /// key shows on the first one.
    pub async fn new(config: S3Config) -> Result<Self, S3ConfigError> {
        if config.bucket.is_empty() {
            return Err(S3ConfigError::NoBucket);
        }
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).region(Region::new(config.region.clone()));
        match (config.access_key_id, config.secret_access_key) {
            (Some(id), Some(secret)) => {
                loader =
                    loader.credentials_provider(Credentials::new(id, secret, None, None, "nargate-config"));
            }
            (None, None) => {}
            _ => return Err(S3ConfigError::IncompleteStaticKeys),
        }
        if let Some(endpoint) = config.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(S3ConfigError::InvalidEndpoint(endpoint));
            }
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        let mut s3 = aws_sdk_s3::config::Builder::from(&shared);
        match config.connections {
            ConnectionMode::Reuse => {}
            ConnectionMode::QuickAck => s3 = s3.http_client(super::quickack::http_client()),
            ConnectionMode::NewPerRequest => {
                use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
                s3 = s3.http_client(
                    aws_smithy_http_client::Builder::new()
                        .pool_max_idle_per_host(0)
                        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
                        .build_https(),
                );
            }
        }
        let mut timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder();
        if let Some(t) = config.connect_timeout {
            timeouts = timeouts.connect_timeout(t);
        }
        if let Some(t) = config.operation_timeout {
            timeouts = timeouts.operation_timeout(t);
        }
        let s3 = s3
            .timeout_config(timeouts.build())
            .force_path_style(config.path_style)
            .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts.max(1)))
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        Ok(S3Backend {
            client: Client::from_conf(s3),
            bucket: config.bucket,
            prefix: config.prefix.unwrap_or_default(),
            put_check: config.put_check,
        })
    }

    /// The bucket's key for `key`: the prefix and the key, checked.
    fn full_key(&self, key: &str) -> Result<String, BackendError> {
        validate_key(key)?;
        let full = format!("{}{key}", self.prefix);
        if full.len() > MAX_KEY_LEN {
            return Err(BackendError::InvalidKey {
                key: key.to_owned(),
                reason: "longer than 1024 bytes with the backend's key prefix",
            });
        }
        Ok(full)
    }

    /// Writes `body`, whose MD5 is `md5`, with one PutObject that sends it as Content-MD5.
    async fn put_object(
        &self,
        key: &str,
        full: &str,
        body: Bytes,
        md5: [u8; 16],
        attributes: Attributes,
    ) -> Result<ObjectMeta, BackendError> {
        let size = body.len() as u64;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(full)
            .content_md5(base64::engine::general_purpose::STANDARD.encode(md5))
            .body(ByteStream::from(body));
        let (out, date) = send_dated!(with_attributes!(request, attributes), key, unsigned_payload);
        self.written(key, size, out.e_tag(), &md5, &date).await
    }

    /// Writes `body` with one PutObject checked by the configured [`PutCheck`]: what chunks,
    /// records and staged parts are written with. A CRC32C (`x-amz-checksum-crc32c`) instead of
    /// a Content-MD5 still makes the server refuse a body damaged on the way, and saves the MD5
    /// pass over every byte — the most expensive pass of an ingest after zstd (CRC32C runs at
    /// many GB/s).
    async fn put_checked(
        &self,
        key: &str,
        full: &str,
        body: Bytes,
        attributes: Attributes,
    ) -> Result<ObjectMeta, BackendError> {
        if self.put_check == PutCheck::ContentMd5 {
            let md5 = Md5::digest(&body).into();
            return self.put_object(key, full, body, md5, attributes).await;
        }
        let size = body.len() as u64;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(full)
            .checksum_crc32_c(crc32c_of(&body))
            .body(ByteStream::from(body.clone()));
        let (out, date) = send_dated!(with_attributes!(request, attributes), key, unsigned_payload);
        // The MD5 is computed only for a server that sends no ETag.
        let md5 = if out.e_tag().is_some() { [0; 16] } else { Md5::digest(&body).into() };
        self.written(key, size, out.e_tag(), &md5, &date).await
    }

    /// Writes a body longer than one part with a multipart upload: `first` is its first part,
    /// `parts` the rest. Aborts the upload if anything fails.
    async fn put_multipart(
        &self,
        key: &str,
        full: &str,
        first: Bytes,
        mut parts: Parts,
        options: PutOptions,
    ) -> Result<ObjectMeta, BackendError> {
        let request = self.client.create_multipart_upload().bucket(&self.bucket).key(full);
        let request = with_attributes!(request, options.attributes.clone());
        let (client, bucket, full, owned) =
            (self.client.clone(), self.bucket.clone(), full.to_owned(), key.to_owned());
        // The upload is created in a task of its own, so that a put dropped before the answer
        // came still gets the upload, and aborts it by dropping it.
        let (sender, receiver) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let created = async {
                let out = request.send().await.map_err(|e| classify(Op::Put, &owned, e))?;
                let upload_id = out.upload_id().ok_or_else(|| {
                    remote(Op::Put, &owned, "CreateMultipartUpload answered without an upload id")
                })?;
                Ok(Upload { client, bucket, full, upload_id: upload_id.to_owned(), armed: true })
            };
            // If the put is gone, the upload comes back here and is dropped: aborted.
            let _ = sender.send(created.await);
        });
        let upload =
            receiver.await.map_err(|_| remote(Op::Put, key, "the task creating the upload died"))??;
        let full = upload.full.clone();
        let written = match self.upload_parts(key, &upload, first, &mut parts, &options).await {
            Ok(meta) => {
                upload.disarm();
                meta
            }
            Err(error) => {
                upload.abort(key).await;
                return Err(error);
            }
        };
        let attributes = options.final_attributes();
        if attributes == options.attributes {
            return Ok(written);
        }
        self.replace_attributes(key, &full, written, attributes).await
    }

    /// Stores `attributes` with the object `full` that a multipart upload has just written as
    /// `written`, replacing those it was created with (metadata that came with the body's end,
    /// after CreateMultipartUpload): a CopyObject of the object onto itself, only while it is still
    /// that object (`x-amz-copy-source-if-match`), so the bytes are visible a moment before these
    /// attributes. An object replaced meanwhile keeps its own; one over CopyObject's 5 GiB limit
    /// keeps its first attributes.
    async fn replace_attributes(
        &self,
        key: &str,
        full: &str,
        written: ObjectMeta,
        attributes: Attributes,
    ) -> Result<ObjectMeta, BackendError> {
        if written.size > MAX_COPY_SIZE {
            tracing::warn!(
                key,
                size = written.size,
                "too large to copy: metadata of the body's end not kept"
            );
            return Ok(written);
        }
        let source = format!("{}/{}", self.bucket, urlencoding::encode(full).replace("%2F", "/"));
        let request = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(full)
            .copy_source(source)
            .copy_source_if_match(format!("\"{}\"", written.etag))
            .metadata_directive(MetadataDirective::Replace);
        let date = DateCapture::default();
        let sent = with_attributes!(request, attributes).customize().interceptor(date.clone()).send().await;
        let out = match sent {
            Ok(out) => out,
            Err(e) if status(&e) == Some(412) => {
                tracing::info!(key, "replaced before its late metadata was stored: left as it is");
                return Ok(written);
            }
            Err(e) => return Err(classify(Op::Put, key, e)),
        };
        let etag = out.copy_object_result().and_then(|r| r.e_tag()).map(str::to_owned);
        Ok(ObjectMeta {
            etag: etag.map_or(written.etag, |e| unquote(Some(&e))),
            last_modified: date.get().unwrap_or(written.last_modified),
            ..written
        })
    }

    /// Uploads the parts of `upload` and completes it if the whole body's MD5 is right.
    async fn upload_parts(
        &self,
        key: &str,
        upload: &Upload,
        first: Bytes,
        parts: &mut Parts,
        options: &PutOptions,
    ) -> Result<ObjectMeta, BackendError> {
        let mut completed = Vec::new();
        let mut part = first;
        loop {
            let number = completed.len() as i32 + 1;
            if number > MAX_PARTS {
                return Err(remote(Op::Put, key, "the body is longer than 10,000 parts"));
            }
            let request = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(&upload.full)
                .upload_id(&upload.upload_id)
                .part_number(number);
            let request = match (options.md5_unneeded, self.put_check) {
                (true, PutCheck::Crc32c) => request.checksum_crc32_c(crc32c_of(&part)),
                _ => {
                    request.content_md5(base64::engine::general_purpose::STANDARD.encode(Md5::digest(&part)))
                }
            };
            let out = request
                .body(ByteStream::from(part))
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| classify(Op::Put, key, e))?;
            let etag =
                out.e_tag().ok_or_else(|| remote(Op::Put, key, "UploadPart answered without an ETag"))?;
            completed.push(CompletedPart::builder().part_number(number).e_tag(etag).build());
            if !parts.has_more().await? {
                break;
            }
            part = parts.next_part().await?;
        }
        let (md5, size) = parts.digest();
        if let Some(md5) = &md5 {
            options.check_md5(key, md5)?;
        }
        let request = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&upload.full)
            .upload_id(&upload.upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(completed)).build());
        let (out, date) = send_dated!(request, key);
        self.written(key, size, out.e_tag(), &md5.unwrap_or_default(), &date).await
    }

    /// The metadata of an object just written: the server's ETag (else the MD5) and its `Date`
    /// (else, for a server without a clock, the object's own time).
    async fn written(
        &self,
        key: &str,
        size: u64,
        etag: Option<&str>,
        md5: &[u8; 16],
        date: &DateCapture,
    ) -> Result<ObjectMeta, BackendError> {
        let etag = match etag {
            Some(etag) => unquote(Some(etag)),
            None => hex::encode(md5),
        };
        let last_modified = match date.get() {
            Some(date) => date,
            None => self.head(key).await?.last_modified,
        };
        Ok(ObjectMeta { key: key.to_owned(), size, etag, last_modified })
    }

    /// The key for the bucket's key `full` (which a listing under the prefix returned).
    fn strip_prefix(&self, full: String) -> Result<String, BackendError> {
        match full.strip_prefix(&self.prefix) {
            Some(key) => Ok(key.to_owned()),
            None => Err(remote(Op::List, &full, "the server listed a key outside the prefix")),
        }
    }
}

#[async_trait]
impl Backend for S3Backend {
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, BackendError> {
        let full = self.full_key(key)?;
        if let Some(r) = range.as_ref().filter(|r| r.start >= r.end) {
            // S3 cannot express an empty range: answer as it would for one beyond the end.
            let size = self.head(key).await?.size;
            return Err(BackendError::InvalidRange { key: key.to_owned(), start: r.start, end: r.end, size });
        }
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .set_range(range.as_ref().map(|r| format!("bytes={}-{}", r.start, r.end - 1)));
        let out = match request.send().await {
            Ok(out) => out,
            Err(err) => {
                let Some(r) = range.filter(|_| status(&err) == Some(416)) else {
                    return Err(classify(Op::Get, key, err));
                };
                let size = match unsatisfied_size(&err) {
                    Some(size) => size,
                    None => self.head(key).await?.size,
                };
                return Err(BackendError::InvalidRange {
                    key: key.to_owned(),
                    start: r.start,
                    end: r.end,
                    size,
                });
            }
        };
        let (range, size) = match (range, out.content_range()) {
            (None, _) => {
                let len = out.content_length().and_then(|l| u64::try_from(l).ok());
                let len = len.ok_or_else(|| remote(Op::Get, key, "response without Content-Length"))?;
                (0..len, len)
            }
            (Some(_), Some(content_range)) => parse_content_range(content_range).ok_or_else(|| {
                remote(Op::Get, key, &format!("unparsable Content-Range {content_range:?}"))
            })?,
            (Some(_), None) => {
                return Err(remote(Op::Get, key, "the server ignored the Range header"));
            }
        };
        let meta = ObjectMeta {
            key: key.to_owned(),
            size,
            etag: unquote(out.e_tag()),
            last_modified: system_time(Op::Get, key, out.last_modified())?,
        };
        let attributes = attributes_of!(out);
        let owned = key.to_owned();
        let body = futures::stream::unfold(out.body, |mut body: ByteStream| async move {
            body.next().await.map(|chunk| (chunk, body))
        })
        .map_err(move |e| remote(Op::Get, &owned, &DisplayErrorContext(&e).to_string()))
        .boxed();
        Ok(GetResult { meta, range, attributes, body })
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<ObjectMeta, BackendError> {
        let full = self.full_key(key)?;
        self.put_checked(key, &full, body, Attributes::default()).await
    }

    async fn put_stream(
        &self,
        key: &str,
        body: super::ByteStream,
        options: PutOptions,
    ) -> Result<ObjectMeta, BackendError> {
        let full = self.full_key(key)?;
        let mut parts = Parts::new(body, !options.md5_unneeded || options.content_md5.is_some());
        let first = parts.next_part().await?;
        if parts.has_more().await? {
            return self.put_multipart(key, &full, first, parts, options).await;
        }
        match parts.digest().0 {
            Some(md5) => {
                options.check_md5(key, &md5)?;
                self.put_object(key, &full, first, md5, options.final_attributes()).await
            }
            None => self.put_checked(key, &full, first, options.final_attributes()).await,
        }
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, BackendError> {
        Ok(self.stat(key).await?.0)
    }

    async fn stat(&self, key: &str) -> Result<(ObjectMeta, Attributes), BackendError> {
        let full = self.full_key(key)?;
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| classify(Op::Head, key, e))?;
        let size = out.content_length().and_then(|l| u64::try_from(l).ok());
        let meta = ObjectMeta {
            key: key.to_owned(),
            size: size.ok_or_else(|| remote(Op::Head, key, "response without Content-Length"))?,
            etag: unquote(out.e_tag()),
            last_modified: system_time(Op::Head, key, out.last_modified())?,
        };
        Ok((meta, attributes_of!(out)))
    }

    async fn list(&self, request: &ListRequest) -> Result<ListPage, BackendError> {
        let prefix = format!("{}{}", self.prefix, request.prefix);
        // Every key under the prefix is after a start before the prefix, so such a start says
        // nothing; leave it out, as Garage (2.5) would list nothing at all.
        let start_after = request.start_after.as_ref().map(|s| format!("{}{s}", self.prefix));
        let start_after = start_after.filter(|s| s.as_str() >= prefix.as_str());
        let max_keys = match request.max_keys {
            0 => 1000,
            n => n.min(1000),
        };
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .set_prefix(Some(prefix.clone()).filter(|p| !p.is_empty()))
            .set_delimiter(request.delimiter.clone().filter(|d| !d.is_empty()))
            .set_start_after(start_after)
            .set_continuation_token(request.continuation_token.clone())
            .max_keys(max_keys as i32)
            .encoding_type(EncodingType::Url)
            .send()
            .await
            .map_err(|e| classify(Op::List, &request.prefix, e))?;

        // A server that ignores `encoding-type` says so by leaving it out of its answer.
        let url_encoded = out.encoding_type() == Some(&EncodingType::Url);
        let decode = |key: Option<&str>| -> Result<String, BackendError> {
            let key = key.ok_or_else(|| remote(Op::List, &prefix, "listing entry without a key"))?;
            let full = match url_encoded {
                true => url_decode(key)
                    .ok_or_else(|| remote(Op::List, &prefix, &format!("badly URL-encoded key {key:?}")))?,
                false => key.to_owned(),
            };
            self.strip_prefix(full)
        };
        let mut page = ListPage::default();
        for object in out.contents() {
            let key = decode(object.key())?;
            let size = object.size().and_then(|s| u64::try_from(s).ok());
            page.objects.push(ObjectMeta {
                size: size.ok_or_else(|| remote(Op::List, &key, "listing entry without a size"))?,
                etag: unquote(object.e_tag()),
                last_modified: system_time(Op::List, &key, object.last_modified())?,
                key,
            });
        }
        for common_prefix in out.common_prefixes() {
            page.common_prefixes.push(decode(common_prefix.prefix())?);
        }
        if out.is_truncated() == Some(true) {
            let token = out.next_continuation_token().filter(|t| !t.is_empty());
            let token = token
                .ok_or_else(|| remote(Op::List, &prefix, "truncated listing without a continuation token"))?;
            page.next_continuation_token = Some(token.to_owned());
        }
        Ok(page)
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let full = self.full_key(key)?;
        match self.client.delete_object().bucket(&self.bucket).key(&full).send().await {
            Ok(_) => Ok(()),
            Err(err) => match classify(Op::Delete, key, err) {
                BackendError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming puts

/// A put's body, cut into parts of [`PART_SIZE`] bytes, with its MD5 computed on the way.
struct Parts {
    body: super::ByteStream,
    /// Bytes received and not yet in a part (the rest of the last chunk).
    pending: Bytes,
    /// Whether the body has ended.
    ended: bool,
    /// The MD5 of the parts returned so far, if it is computed.
    md5: Option<Md5>,
    /// Their size.
    size: u64,
}

impl Parts {
    /// The parts of `body`, with their MD5 if `md5`.
    fn new(body: super::ByteStream, md5: bool) -> Self {
        Parts { body, pending: Bytes::new(), ended: false, md5: md5.then(Md5::new), size: 0 }
    }

    /// The next part: [`PART_SIZE`] bytes, or what is left at the end of the body.
    async fn next_part(&mut self) -> Result<Bytes, BackendError> {
        let mut part = BytesMut::new();
        while part.len() < PART_SIZE && self.has_more().await? {
            let take = self.pending.len().min(PART_SIZE - part.len());
            part.extend_from_slice(&self.pending.split_to(take));
        }
        let part = part.freeze();
        if let Some(md5) = &mut self.md5 {
            md5.update(&part);
        }
        self.size += part.len() as u64;
        Ok(part)
    }

    /// Whether the body has bytes beyond the parts returned so far (reading one chunk ahead).
    async fn has_more(&mut self) -> Result<bool, BackendError> {
        while self.pending.is_empty() && !self.ended {
            match self.body.next().await {
                Some(chunk) => self.pending = chunk?,
                None => self.ended = true,
            }
        }
        Ok(!self.pending.is_empty())
    }

    /// The MD5 (if computed) and size of the parts returned so far.
    fn digest(&mut self) -> (Option<[u8; 16]>, u64) {
        (self.md5.take().map(|md5| md5.finalize().into()), self.size)
    }
}

/// A multipart upload in progress, aborted in a task of its own if it is dropped still armed
/// (its put was dropped half-way).
struct Upload {
    client: Client,
    bucket: String,
    /// The bucket's key.
    full: String,
    upload_id: String,
    /// Whether dropping it aborts the upload.
    armed: bool,
}

impl Upload {
    /// The AbortMultipartUpload request for this upload.
    fn abort_request(
        &self,
    ) -> aws_sdk_s3::operation::abort_multipart_upload::builders::AbortMultipartUploadFluentBuilder {
        self.client.abort_multipart_upload().bucket(&self.bucket).key(&self.full).upload_id(&self.upload_id)
    }

    /// Aborts the upload now; a failure to abort is logged, since the put fails anyway.
    async fn abort(mut self, key: &str) {
        self.armed = false;
        if let Err(e) = self.abort_request().send().await {
            let error = classify(Op::Put, key, e);
            tracing::warn!(key, upload_id = %self.upload_id, %error, "cannot abort a failed multipart upload");
        }
    }

    /// The upload is complete: dropping it does nothing.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let request = self.abort_request();
        let (full, upload_id) = (self.full.clone(), self.upload_id.clone());
        let abort = async move {
            if let Err(e) = request.send().await {
                let error = DisplayErrorContext(&e);
                tracing::warn!(key = full, upload_id, %error, "cannot abort a dropped multipart upload");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(abort)),
            Err(_) => tracing::warn!(
                key = self.full,
                upload_id = self.upload_id,
                "a dropped multipart upload is left behind: no runtime to abort it on"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

/// A [`BackendError::Remote`] for `op` on `key`.
fn remote(op: Op, key: &str, message: &str) -> BackendError {
    BackendError::Remote { op: op.as_str(), key: key.to_owned(), message: message.to_owned() }
}

/// A failed request, as the SDK reports it.
type RequestError<E> = SdkError<E, HttpResponse>;

/// The HTTP status of a failed request, if the server answered.
fn status<E>(err: &RequestError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// The error for a failed request: NotFound for a missing key, else Remote.
fn classify<E>(op: Op, key: &str, err: RequestError<E>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let code = err.code();
    let missing_key =
        code == Some("NoSuchKey") || (status(&err) == Some(404) && code != Some("NoSuchBucket"));
    if missing_key {
        return BackendError::NotFound { key: key.to_owned() };
    }
    remote(op, key, &DisplayErrorContext(&err).to_string())
}

/// The object size a 416 response gives in its `Content-Range: bytes */<size>`.
fn unsatisfied_size<E>(err: &RequestError<E>) -> Option<u64> {
    let content_range = err.raw_response()?.headers().get("content-range")?;
    content_range.strip_prefix("bytes */")?.trim().parse().ok()
}

/// The range and the object's size in a `Content-Range: bytes <first>-<last>/<size>`.
fn parse_content_range(value: &str) -> Option<(Range<u64>, u64)> {
    let (range, size) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
    let size = size.parse().ok()?;
    (first <= last && last < size).then_some((first..last + 1, size))
}

/// An ETag without its quotes.
fn unquote(etag: Option<&str>) -> String {
    etag.unwrap_or_default().trim_matches('"').to_owned()
}

/// A response's time, which must be there.
fn system_time(op: Op, key: &str, time: Option<&DateTime>) -> Result<SystemTime, BackendError> {
    let time = time.ok_or_else(|| remote(op, key, "response without Last-Modified"))?;
    SystemTime::try_from(*time).map_err(|e| remote(op, key, &format!("unrepresentable time: {e}")))
}

/// Decodes a key from a listing with `encoding-type=url` (`%XX` escapes; `+` is a space, as AWS
/// writes it — a `+` itself is always escaped).
fn url_decode(encoded: &str) -> Option<String> {
    let mut out = Vec::with_capacity(encoded.len());
    let mut bytes = encoded.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// An interceptor that keeps the `Date` of the last response it sees.
#[derive(Debug, Clone, Default)]
struct DateCapture(Arc<Mutex<Option<String>>>);

impl DateCapture {
    /// The captured date, if the server sent a valid one.
    fn get(&self) -> Option<SystemTime> {
        let date = self.0.lock().ok()?.clone()?;
        let date = DateTime::from_str(&date, DateTimeFormat::HttpDate).ok()?;
        SystemTime::try_from(date).ok()
    }
}

impl Intercept for DateCapture {
    fn name(&self) -> &'static str {
        "nargate::DateCapture"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let date = context.response().headers().get("date").map(str::to_owned);
        if let Ok(mut slot) = self.0.lock() {
            *slot = date;
        }
        Ok(())
    }
}

/// The base64 `x-amz-checksum-crc32c` of `body`. (Computed here: with `WhenRequired`, the SDK
/// given only the algorithm would announce it and send no value.)
fn crc32c_of(body: &[u8]) -> String {
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, body) as u32;
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0..10, 100)));
        assert_eq!(parse_content_range("bytes 99-99/100"), Some((99..100, 100)));
        assert_eq!(parse_content_range("bytes 5-4/100"), None);
        assert_eq!(parse_content_range("bytes 0-100/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn listing_keys_decode() {
        assert_eq!(url_decode("a%2Fb+c%2B%C3%A9").as_deref(), Some("a/b c+é"));
        assert_eq!(url_decode("plain/key.txt").as_deref(), Some("plain/key.txt"));
        assert_eq!(url_decode("bad%2"), None);
        assert_eq!(url_decode("bad%zz"), None);
        assert_eq!(url_decode("%FF"), None);
    }

    #[tokio::test]
    async fn configs_are_checked() {
        let config = S3Config { bucket: "b".into(), ..S3Config::default() };
        let no_bucket = S3Config { bucket: String::new(), ..config.clone() };
        assert_eq!(S3Backend::new(no_bucket).await.err(), Some(S3ConfigError::NoBucket));
        let half_keys = S3Config { access_key_id: Some("id".into()), ..config.clone() };
        assert_eq!(S3Backend::new(half_keys).await.err(), Some(S3ConfigError::IncompleteStaticKeys));
        let endpoint = S3Config { endpoint: Some("localhost:3900".into()), ..config.clone() };
        assert!(matches!(S3Backend::new(endpoint).await, Err(S3ConfigError::InvalidEndpoint(_))));
        let secret = S3Config { secret_access_key: Some("hunter2".into()), ..config };
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
