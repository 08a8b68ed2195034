//! The S3 front end: every bucket a Nix binary cache, every store path readable as objects.
//!
//! A request's path (DESIGN.md, "Serving"): [`http`], a thin hyper layer (TCP_NODELAY, HTTP
//! Basic, `/health`, request ids), then s3s (SigV4, presigned URLs, streaming payloads) with this
//! gateway's [`host`] parsing and [`auth`] policy, then the S3 mapping: [`read`] answers GET and
//! HEAD of objects (a custom route, so that ranges and preconditions come from the raw headers),
//! [`s3`] every other operation; [`target`] says what a key names, [`conditional`] reads ranges
//! and preconditions, [`error`] maps the core's errors. The gateway calls the cache, the renderer
//! and the ingest ([`write`] for PUT and DELETE, [`body`] for reading request bodies); it never reaches into the backend's keys.

/// The [`Attributes`](crate::backend::Attributes) a PutObject or CreateMultipartUpload input
/// sets (their fields share names, not a trait): `aws-chunked` is framing, never kept as a
/// Content-Encoding; user-metadata names are lowercased, and the gateway's own (checksums, the
/// multipart ETag) refused.
macro_rules! client_attributes {
    ($input:expr) => {{
        let input = $input;
        crate::backend::Attributes {
            content_type: input.content_type.clone(),
            content_encoding: super::s3::stored_encoding(input.content_encoding.as_deref()),
            cache_control: input.cache_control.clone(),
            content_disposition: input.content_disposition.clone(),
            content_language: input.content_language.clone(),
            metadata: input
                .metadata
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .filter(|(k, _)| !k.starts_with(super::body::CHECKSUM_PREFIX))
                .filter(|(k, _)| crate::cache::uploads::client_metadata_allowed(k))
                .collect(),
        }
    }};
}

pub mod auth;
pub mod body;
pub mod checksum;
pub mod conditional;
pub mod error;
pub mod host;
pub mod http;
pub mod multipart;
mod progressive;
pub mod read;
pub mod s3;
pub mod target;
pub mod write;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ::http::{HeaderMap, Method, Uri};
use s3s::route::S3Route;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{Body, S3Request, S3Response, S3Result};

use crate::backend::DynBackend;
use crate::cache::uploads::{UploadError, UploadOptions};
use crate::cache::{BucketSettings, Cache, ChangeSink, MetaCache, MetaConfig};
use crate::castore::ChunkStore;
use crate::credentials::CredentialStore;
use crate::ingest::IngestOptions;
use crate::metrics::Metrics;
use crate::render::{RenderConfig, Renderer};
use host::VirtualHosts;
use read::Located;

pub use self::http::{ServeOptions, Stopped, serve, serve_admin, serve_with};

/// How a gateway is set up ([`Default`]: the configuration's defaults,
/// [`Config::gateway_options`](crate::config::Config::gateway_options)).
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Virtual-host domains (`bucket.<domain>`); empty: path-style only.
    pub domains: Vec<String>,
    /// The metadata cache (bucket records, NAR entries, path infos, listing entries).
    pub meta: MetaConfig,
    /// The renderer (segment-table cache, read-ahead).
    pub render: RenderConfig,
    /// Capacity of the cache of verified chunks, in bytes.
    pub chunk_cache_bytes: u64,
    /// Settings that buckets created through S3 get, by bucket name.
    pub buckets: BTreeMap<String, BucketSettings>,
    /// Multipart uploads.
    pub uploads: UploadOptions,
    /// How uploaded NARs are ingested.
    pub ingest: IngestOptions,
    /// A request body that sends nothing for this long fails with IncompleteBody.
    pub body_idle_timeout: Duration,
    /// Where requests, cache lookups and (through the chunk store) renderer lookups are counted;
    /// [`Default`]: a fresh registry of the gateway's own. Backend requests are counted by
    /// wrapping the backend in a [`MeteredBackend`](crate::backend::metered::MeteredBackend)
    /// over the same metrics.
    pub metrics: Metrics,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        crate::config::Config::default().gateway_options()
    }
}

/// The gateway: shared by every connection, cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    backend: DynBackend,
    meta: MetaCache,
    renderer: Renderer,
    hosts: VirtualHosts,
    credentials: CredentialStore,
    /// Secrets of key pairs, for the metadata TTL (misses are not kept).
    secrets: moka::future::Cache<String, String>,
    configured_buckets: BTreeMap<String, BucketSettings>,
    uploads: UploadOptions,
    /// The multipart Completes running in this gateway.
    completes: multipart::Running,
    /// The progressive ingests of multipart NAR uploads running in this gateway.
    feeds: progressive::Feeds,
    chunks: ChunkStore,
    ingest: IngestOptions,
    body_idle_timeout: Duration,
    metrics: Metrics,
    /// The metrics, as every cache's change sink (made once: `cache` runs on every request).
    changes: Arc<dyn ChangeSink>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("backend", &self.inner.backend).finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway over `backend`.
    pub fn new(backend: DynBackend, options: GatewayOptions) -> Self {
        let chunks =
            ChunkStore::new(backend.clone(), options.chunk_cache_bytes).with_metrics(options.metrics.clone());
        let secrets = moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(options.meta.ttl.max(Duration::from_millis(1)))
            .build();
        Gateway {
            inner: Arc::new(Inner {
                meta: MetaCache::new(options.meta),
                renderer: Renderer::new(chunks.clone(), options.render),
                chunks,
                ingest: options.ingest,
                body_idle_timeout: options.body_idle_timeout,
                changes: Arc::new(options.metrics.clone()),
                metrics: options.metrics,
                hosts: VirtualHosts::new(&options.domains),
                credentials: CredentialStore::new(backend.clone()),
                secrets,
                configured_buckets: options.buckets,
                uploads: options.uploads,
                completes: multipart::Running::default(),
                feeds: progressive::Feeds::default(),
                backend,
            }),
        }
    }

    /// The metrics this gateway records into.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The cache (bucket) named `bucket`, reading through the metadata cache.
    pub fn cache(&self, bucket: &str) -> Cache {
        Cache::with_meta(self.inner.backend.clone(), bucket, self.inner.meta.clone())
            .with_changes(self.inner.changes.clone())
    }

    /// Removes the multipart uploads of every bucket that nothing was written to for the
    /// configured grace period (`uploads.abandon_after_secs`); returns how many. For the periodic
    /// repair pass.
    pub async fn remove_abandoned_uploads(&self) -> Result<usize, UploadError> {
        crate::cache::uploads::remove_abandoned(&self.inner.backend, self.inner.uploads.abandon_after).await
    }

    /// The secret of the key pair `access_key_id`, if there is one.
    pub async fn secret(&self, access_key_id: &str) -> S3Result<Option<String>> {
        if let Some(secret) = self.inner.secrets.get(access_key_id).await {
            return Ok(Some(secret));
        }
        let secret = self
            .inner
            .credentials
            .secret(access_key_id)
            .await
            .map_err(|e| error::internal(access_key_id, &e))?;
        if let Some(secret) = &secret {
            self.inner.secrets.insert(access_key_id.to_owned(), secret.clone()).await;
        }
        Ok(secret)
    }

    /// The s3s service of this gateway: its host parsing, auth, access policy and read route.
    pub fn s3_service(&self) -> S3Service {
        let mut builder = S3ServiceBuilder::new(self.clone());
        builder.set_host(self.inner.hosts.clone());
        builder.set_auth(auth::Auth(self.clone()));
        builder.set_access(auth::Access(self.clone()));
        builder.set_route(ReadRoute(self.clone()));
        builder.build()
    }

    /// The bucket and key a request addresses, for object requests (path-style `/bucket/key`,
    /// or virtual-host `bucket.<domain>/key`).
    fn locate(&self, uri: &Uri, headers: &HeaderMap) -> Option<Located> {
        let (bucket, key) = self.target(uri, headers)?;
        (!bucket.is_empty() && !key.is_empty()).then_some(Located { bucket, key })
    }

    /// The bucket and key a request names, either empty where it names none (`/` is ("", ""),
    /// `/bucket` is ("bucket", "")); `None` for a path that is not percent-encoded UTF-8.
    fn target(&self, uri: &Uri, headers: &HeaderMap) -> Option<(String, String)> {
        let path = urlencoding::decode(uri.path()).ok()?;
        let path = path.strip_prefix('/')?;
        let host = headers.get(::http::header::HOST).and_then(|h| h.to_str().ok());
        Some(match host.and_then(|h| self.inner.hosts.bucket_of(h)) {
            Some(bucket) => (bucket, path.to_owned()),
            None => match path.split_once('/') {
                Some((bucket, key)) => (bucket.to_owned(), key.to_owned()),
                None => (path.to_owned(), String::new()),
            },
        })
    }
}

/// GET and HEAD of objects, routed around s3s's own GetObject (see [`read`]).
struct ReadRoute(Gateway);

#[async_trait::async_trait]
impl S3Route for ReadRoute {
    fn is_match(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        extensions: &mut ::http::Extensions,
    ) -> bool {
        if !matches!(*method, Method::GET | Method::HEAD) || !read::is_object_read(uri) {
            return false;
        }
        match self.0.locate(uri, headers) {
            Some(located) => {
                extensions.insert(located);
                let name = if *method == Method::GET { "GetObject" } else { "HeadObject" };
                http::Operation::set(extensions, name);
                true
            }
            None => false,
        }
    }

    async fn check_access(&self, req: &mut S3Request<Body>) -> S3Result<()> {
        let bucket = req.extensions.get::<Located>().map(|l| l.bucket.as_str());
        self.0.admit(req.credentials.is_some(), &req.extensions, bucket, true).await
    }

    async fn call(&self, req: S3Request<Body>) -> S3Result<S3Response<Body>> {
        self.0.read_object(req).await
    }
}
