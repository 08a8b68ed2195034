//! A cache: one bucket of the gateway, a Nix binary cache whose store paths point into the shared
//! content-addressed store. Dedup is global, visibility per bucket.
//!
//! [`Cache`] holds the commit path (DESIGN.md, "Committing a store path"): a NAR and its narinfo
//! arrive in either order; each side writes its own record first, then looks for the other, and
//! whichever finds the other half commits. Commit is idempotent and writes the path info last of
//! the things a reader needs, so a reader never sees a store path it cannot render.

pub mod changes;
pub mod keys;
pub mod listing;
pub mod meta;
pub mod records;
mod remove;
mod repair;
pub mod tree;
mod upload_key;
pub mod uploads;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

pub use changes::{BucketChange, ChangeSink};
pub use keys::{CacheKeys, IndexEntry};
pub use listing::{After, ListQuery, Listing};
pub use meta::{Cached, MetaCache, MetaConfig};
pub use records::{BucketRecord, BucketSettings, CacheNar, PathInfo, Pending, UploadKey};
pub use repair::{RepairReport, repair_all};
pub use tree::BrowsedTree;

use crate::backend::{
    self, Attributes, BackendError, ByteStream, DynBackend, GetResult, ListRequest, ObjectMeta, PutOptions,
};
use crate::castore::NarRecord;
use crate::castore::record::RecordError;
use crate::nix::narinfo::{NarInfo, NarInfoError};
use crate::nix::nixbase32;
use crate::nix::signing::SecretKey;
use crate::nix::store_path::StorePath;
use crate::render::Renderer;
use crate::render::listing::nar_listing;

/// Why a commit (or a step towards one) failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A stored record is corrupt.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The narinfo does not parse.
    #[error(transparent)]
    NarInfo(#[from] NarInfoError),
    /// The narinfo's store path is not the one its key names.
    #[error("narinfo key names {key_hash} but its StorePath is {store_path}")]
    StorePathMismatch {
        /// The hash part the key names.
        key_hash: String,
        /// The narinfo's store path.
        store_path: String,
    },
    /// The narinfo's NarSize is not the NAR's.
    #[error("narinfo says NarSize {narinfo}, the NAR has {nar}")]
    NarSizeMismatch {
        /// The narinfo's.
        narinfo: u64,
        /// The NAR's.
        nar: u64,
    },
    /// The NAR's listing cannot be rendered from its record.
    #[error(transparent)]
    Listing(#[from] crate::render::listing::ListingError),
    /// A stored store path does not parse.
    #[error(transparent)]
    StorePath(#[from] crate::nix::store_path::StorePathError),
    /// The bucket's signing key does not parse.
    #[error("the bucket's signing key is invalid: {0}")]
    SigningKey(String),
    /// The narinfo names an upload key whose NAR is another.
    #[error(
        "narinfo says NarHash sha256:{narinfo_hash} NarSize {narinfo_size}, but the NAR uploaded at {url} has sha256:{nar_hash} and {nar_size} bytes"
    )]
    UploadMismatch {
        /// The narinfo's URL.
        url: String,
        /// The narinfo's NarHash (nixbase32).
        narinfo_hash: String,
        /// The narinfo's NarSize.
        narinfo_size: u64,
        /// The uploaded NAR's hash (nixbase32).
        nar_hash: String,
        /// The uploaded NAR's size.
        nar_size: u64,
    },
    /// A store path's tree (browsing) cannot be loaded.
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
}

impl CommitError {
    /// Whether the narinfo contradicts its NAR (so retrying cannot help).
    pub fn is_mismatch(&self) -> bool {
        matches!(
            self,
            CommitError::NarSizeMismatch { .. }
                | CommitError::StorePathMismatch { .. }
                | CommitError::UploadMismatch { .. }
        )
    }
}

/// The key of the bucket's generated `nix-cache-info`.
pub const NIX_CACHE_INFO: &str = "nix-cache-info";

/// What happened to an uploaded narinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarInfoOutcome {
    /// Its NAR was there: the store path is now visible.
    Committed,
    /// Its NAR has not arrived: the narinfo waits for it.
    Pending,
}

/// `body`, checked against the MD5 `expected`: its last piece is held back until the whole body
/// matched, so a damaged object never reaches a client whole.
fn verify_md5(key: &str, body: ByteStream, expected: Vec<u8>) -> ByteStream {
    use futures::StreamExt;
    use md5::Digest as _;
    struct Check {
        body: ByteStream,
        hasher: md5::Md5,
        held: Option<Bytes>,
    }
    let key = key.to_owned();
    let state = Some(Check { body, hasher: md5::Md5::new(), held: None });
    futures::stream::unfold(state, move |state| {
        let (key, expected) = (key.clone(), expected.clone());
        async move {
            let mut check = state?;
            loop {
                match check.body.next().await {
                    Some(Ok(piece)) => {
                        check.hasher.update(&piece);
                        if let Some(previous) = check.held.replace(piece) {
                            return Some((Ok(previous), Some(check)));
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), None)),
                    None if check.hasher.finalize().as_slice() == expected.as_slice() => {
                        return check.held.map(|last| (Ok(last), None));
                    }
                    None => {
                        let source = std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "the object's bytes do not match its MD5",
                        );
                        tracing::error!(%key, "a plain object does not match its MD5");
                        return Some((Err(BackendError::Io { key, source }), None));
                    }
                }
            }
        }
    })
    .boxed()
}

/// Every bucket on `backend`, by name, with the backend's metadata of its record (whose time is
/// the bucket's creation time). One LIST, and one HEAD per bucket.
pub async fn list_buckets(backend: &DynBackend) -> Result<Vec<(String, ObjectMeta)>, CommitError> {
    let mut request =
        ListRequest { prefix: "caches/".into(), delimiter: Some("/".into()), ..Default::default() };
    let mut buckets = vec![];
    loop {
        let page = backend.list(&request).await?;
        for prefix in &page.common_prefixes {
            let Some(name) = prefix.strip_prefix("caches/").and_then(|p| p.strip_suffix('/')) else {
                continue;
            };
            match backend.head(&CacheKeys::new(name).bucket()).await {
                Ok(meta) => buckets.push((name.to_owned(), meta)),
                Err(BackendError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match page.next_continuation_token {
            Some(token) => request.continuation_token = Some(token),
            None => return Ok(buckets),
        }
    }
}

impl PathInfo {
    /// The path's narinfo as uploaded (its signatures, not the bucket's), pointing at the NAR
    /// served uncompressed at `nar/<narhash>.nar`.
    pub fn narinfo(&self) -> Result<NarInfo, CommitError> {
        let store_path = StorePath::parse(&self.store_path)?;
        let url = format!("nar/{}.nar", nixbase32::encode(&self.nar_hash));
        let mut info = NarInfo::new(store_path, url, &self.nar_hash, self.nar_size);
        info.compression = Some("none".into());
        info.file_hash = Some(info.nar_hash.clone());
        info.file_size = Some(self.nar_size);
        info.references = self.references.clone();
        info.deriver = self.deriver.clone();
        info.sigs = self.signatures.clone();
        info.ca = self.ca.clone();
        Ok(info)
    }
}

/// One bucket's view of the store.
#[derive(Debug, Clone)]
pub struct Cache {
    backend: DynBackend,
    bucket: String,
    keys: CacheKeys,
    meta: MetaCache,
    changes: Option<Arc<dyn ChangeSink>>,
}

/// Seconds since the Unix epoch, by this gateway's clock (for records' own times).
pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// MD5 of `data`.
pub fn md5(data: &[u8]) -> [u8; 16] {
    use md5::{Digest as _, Md5};
    Md5::digest(data).into()
}

/// MD5 hex of `data`: the ETag S3 clients expect of a single-part object.
pub fn md5_hex(data: &[u8]) -> String {
    hex::encode(md5(data))
}

impl Cache {
    /// The cache named `bucket` on `backend` (its records need not exist yet).
    pub fn new(backend: DynBackend, bucket: &str) -> Self {
        Cache::with_meta(backend, bucket, MetaCache::disabled())
    }

    /// The cache named `bucket`, reading its small records through `meta`.
    pub fn with_meta(backend: DynBackend, bucket: &str, meta: MetaCache) -> Self {
        Cache { backend, bucket: bucket.to_owned(), keys: CacheKeys::new(bucket), meta, changes: None }
    }

    /// The same cache, telling `sink` what its writes change in the bucket's figures.
    pub fn with_changes(mut self, sink: Arc<dyn ChangeSink>) -> Self {
        self.changes = Some(sink);
        self
    }

    /// An ingest for this cache wrote `chunks` new chunks of `bytes` (as stored): tells the
    /// change sink, for the figures.
    pub fn chunks_written(&self, chunks: usize, bytes: u64) {
        self.tell(BucketChange {
            chunks: i64::try_from(chunks).unwrap_or(i64::MAX),
            stored_chunk_bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
            ..Default::default()
        });
    }

    /// Tells the change sink, if there is one, of `change`.
    fn tell(&self, change: BucketChange) {
        if let Some(sink) = &self.changes {
            sink.changed(&self.bucket, change);
        }
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The backend keys of this cache.
    pub fn keys(&self) -> &CacheKeys {
        &self.keys
    }

    /// The bucket's settings, if the bucket exists.
    pub async fn settings(&self) -> Result<Option<BucketRecord>, CommitError> {
        Ok(self.bucket_record().await?.map(|pair| pair.0.clone()))
    }

    /// The bucket's settings and the backend's metadata of its record (its time is the bucket's
    /// creation time, and `nix-cache-info`'s), if the bucket exists.
    pub async fn bucket_record(&self) -> Result<Option<Arc<(BucketRecord, ObjectMeta)>>, CommitError> {
        let key = self.keys.bucket();
        let loaded = self
            .meta
            .get_or_load(&key, async {
                match backend::get_bytes_with_meta(self.backend.as_ref(), &key).await {
                    Ok((bytes, meta)) => {
                        Ok(Some(Cached::Bucket(Arc::new((BucketRecord::decode(&bytes)?, meta)))))
                    }
                    Err(BackendError::NotFound { .. }) => Ok(None),
                    Err(e) => Err(CommitError::from(e)),
                }
            })
            .await?;
        Ok(match loaded {
            Some(Cached::Bucket(pair)) => Some(pair),
            _ => None,
        })
    }

    /// Creates the bucket with `settings` unless it exists; returns its settings, and whether
    /// this call created it.
    pub async fn create(&self, settings: BucketRecord) -> Result<(BucketRecord, bool), CommitError> {
        if let Some(existing) = self.settings().await? {
            return Ok((existing, false));
        }
        self.set_settings(&settings).await?;
        Ok((settings, true))
    }

    /// Writes the bucket's settings.
    pub async fn set_settings(&self, settings: &BucketRecord) -> Result<(), CommitError> {
        self.backend.put(&self.keys.bucket(), Bytes::from(settings.encode())).await?;
        self.meta.invalidate(&self.keys.bucket()).await;
        Ok(())
    }

    /// Whether the bucket holds nothing a client put there: no store path, NAR, plain object,
    /// pending narinfo or staged upload (`nix-cache-info` does not count). One LIST of each.
    pub async fn is_empty(&self) -> Result<bool, CommitError> {
        for prefix in [
            format!("{}pathinfo/", self.keys.root()),
            format!("{}nars/", self.keys.root()),
            self.keys.raw(""),
            format!("{}pending/", self.keys.root()),
            format!("uploads/{}/", self.bucket),
        ] {
            let page = self.backend.list(&ListRequest { prefix, max_keys: 1, ..Default::default() }).await?;
            if !page.objects.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Removes the bucket: every record under it (listing entries and the like), the bucket
    /// record last, so that a crash half-way leaves a bucket that can be deleted again.
    pub async fn delete_bucket(&self) -> Result<(), CommitError> {
        let bucket_key = self.keys.bucket();
        uploads::Uploads::new(self.backend.clone(), &self.bucket, &Default::default()).remove_all().await?;
        for object in backend::list_all(self.backend.as_ref(), self.keys.root()).await? {
            if object.key != bucket_key {
                self.backend.delete(&object.key).await?;
            }
        }
        self.backend.delete(&bucket_key).await?;
        self.meta.invalidate(&bucket_key).await;
        Ok(())
    }

    /// One page of the bucket's listing: plain objects, virtual keys, `nix-cache-info` and, when
    /// the bucket browses, every store path's files under `tree/` (their trees from `renderer`);
    /// `None` if the bucket does not exist.
    pub async fn list(&self, query: &ListQuery, renderer: &Renderer) -> Result<Option<Listing>, CommitError> {
        let Some(pair) = self.bucket_record().await? else { return Ok(None) };
        let synthesized = [Self::nix_cache_info_meta(&pair)];
        let tree = match pair.0.browse {
            true => tree::TreeStream::new(self, renderer, query).await?,
            false => None,
        };
        Ok(Some(listing::list(&self.backend, &self.keys, query, &synthesized, tree).await?))
    }

    /// The text of the bucket's `nix-cache-info` and its metadata (the bucket record's time).
    pub fn nix_cache_info_meta(pair: &(BucketRecord, ObjectMeta)) -> ObjectMeta {
        let text = pair.0.nix_cache_info();
        ObjectMeta {
            key: NIX_CACHE_INFO.to_owned(),
            size: text.len() as u64,
            etag: md5_hex(text.as_bytes()),
            last_modified: pair.1.last_modified,
        }
    }

    /// The size, ETag and time under which the virtual key `key` (`<hash>.narinfo`,
    /// `nar/<narhash>.nar`, …) is visible in this bucket, if it is: its listing-index entry.
    pub async fn visible(&self, key: &str) -> Result<Option<Arc<ObjectMeta>>, CommitError> {
        let cache_key = self.keys.index_entry_prefix(key);
        let loaded = self
            .meta
            .get_or_load(&cache_key, async {
                let found = listing::visible(&self.backend, &self.keys, key).await?;
                Ok::<_, CommitError>(found.map(|m| Cached::Visible(Arc::new(m))))
            })
            .await?;
        Ok(match loaded {
            Some(Cached::Visible(meta)) => Some(meta),
            _ => None,
        })
    }

    /// Makes `key` visible with `size` and `etag` instead of the entry `stale` (a narinfo whose
    /// text changed with the bucket's signing key); returns the new entry.
    pub async fn replace_visible(
        &self,
        stale: &ObjectMeta,
        size: u64,
        etag: &str,
    ) -> Result<ObjectMeta, CommitError> {
        let written = self.put_index_entry(&stale.key, size, etag).await?;
        self.backend.delete(&self.keys.index_entry(&stale.key, stale.size, &stale.etag)).await?;
        Ok(ObjectMeta {
            key: stale.key.clone(),
            size,
            etag: etag.to_owned(),
            last_modified: written.last_modified,
        })
    }

    /// A NAR has been ingested into the store for this cache: records that the cache holds it,
    /// makes `nar/<narhash>.nar` visible, then commits every narinfo that was waiting for it.
    pub async fn nar_landed(&self, record: &NarRecord) -> Result<Vec<StorePath>, CommitError> {
        let nar_hash = nixbase32::encode(&record.nar_hash);
        let listing = nar_listing(record)?;
        let cache_nar = CacheNar {
            nar_size: record.nar_size,
            nar_md5: record.nar_md5,
            listing_size: listing.len() as u64,
            listing_md5: md5(&listing),
        };
        // Whether the bucket gains a NAR, for the figures (one GET, only when they are kept).
        let new = match &self.changes {
            Some(_) => self.get(&self.keys.cache_nar(&nar_hash)).await?.is_none(),
            None => false,
        };
        self.backend.put(&self.keys.cache_nar(&nar_hash), Bytes::from(cache_nar.encode())).await?;
        self.meta.invalidate(&self.keys.cache_nar(&nar_hash)).await;
        let visible = format!("nar/{nar_hash}.nar");
        self.put_index_entry(&visible, record.nar_size, &hex::encode(record.nar_md5)).await?;
        if new {
            self.tell(BucketChange::nar(1, record.nar_size));
        }
        self.commit_waiting(&nar_hash, &cache_nar).await
    }

    /// Commits every narinfo waiting for the NAR `nar_hash` (nixbase32), which this cache holds
    /// as `cache_nar`; drops those that contradict it. Returns the store paths committed.
    async fn commit_waiting(
        &self,
        nar_hash: &str,
        cache_nar: &CacheNar,
    ) -> Result<Vec<StorePath>, CommitError> {
        let mut committed = vec![];
        let waiting = backend::list_all(self.backend.as_ref(), &self.keys.pending_prefix(nar_hash)).await?;
        for waiting in waiting {
            let Some(bytes) = self.get(&waiting.key).await? else { continue };
            let pending = Pending::decode(&bytes)?;
            let info = NarInfo::parse(&pending.narinfo)?;
            match self.commit(&info, cache_nar).await {
                Ok(()) => committed.push(info.store_path.clone()),
                // A narinfo that does not match this NAR never will: drop it, commit the others.
                Err(e) if e.is_mismatch() => {
                    tracing::warn!(store_path = %info.store_path, "dropping pending narinfo: {e}");
                    self.backend.delete(&waiting.key).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(committed)
    }

    /// A narinfo was uploaded under key `<key_hash>.narinfo`: records it as pending, then commits
    /// it if this cache already holds its NAR.
    pub async fn narinfo_arrived(
        &self,
        key_hash: &str,
        info: &NarInfo,
    ) -> Result<NarInfoOutcome, CommitError> {
        let store_hash = info.store_path.hash_part();
        if store_hash != key_hash {
            return Err(CommitError::StorePathMismatch {
                key_hash: key_hash.to_owned(),
                store_path: info.store_path.to_string(),
            });
        }
        let nar_hash_bytes = info.nar_hash_digest()?;
        let nar_hash = nixbase32::encode(&nar_hash_bytes);
        self.expect_at_upload_key(info, &nar_hash_bytes).await?;
        let pending = Pending { narinfo: info.render() };
        self.backend.put(&self.keys.pending(&nar_hash, &store_hash), Bytes::from(pending.encode())).await?;
        match self.get(&self.keys.cache_nar(&nar_hash)).await? {
            Some(bytes) => match self.commit(info, &CacheNar::decode(&bytes)?).await {
                Ok(()) => Ok(NarInfoOutcome::Committed),
                Err(e) if e.is_mismatch() => {
                    self.backend.delete(&self.keys.pending(&nar_hash, &store_hash)).await?;
                    Err(e)
                }
                Err(e) => Err(e),
            },
            None => Ok(NarInfoOutcome::Pending),
        }
    }

    /// Makes a store path visible: checks the narinfo against the NAR this cache holds, writes the
    /// path info, the NAR's user entry, the listing-index entries of `<hash>.narinfo`,
    /// `<hash>.ls` and `store/<hash>-<name>.nar`, then drops the pending record. Idempotent.
    pub async fn commit(&self, info: &NarInfo, nar: &CacheNar) -> Result<(), CommitError> {
        if info.nar_size != nar.nar_size {
            return Err(CommitError::NarSizeMismatch { narinfo: info.nar_size, nar: nar.nar_size });
        }
        let nar_hash_bytes = info.nar_hash_digest()?;
        let nar_hash = nixbase32::encode(&nar_hash_bytes);
        let store_hash = info.store_path.hash_part();
        let mut path_info = PathInfo {
            store_path: info.store_path.to_string(),
            nar_hash: nar_hash_bytes,
            nar_size: info.nar_size,
            references: info.references.clone(),
            deriver: info.deriver.clone(),
            signatures: info.sigs.clone(),
            ca: info.ca.clone(),
            uploaded: now_secs(),
        };
        let previous = match self.get(&self.keys.path_info(&store_hash)).await? {
            Some(bytes) => Some(PathInfo::decode(&bytes)?),
            None => None,
        };
        if let Some(previous) = &previous {
            if previous.nar_hash == path_info.nar_hash {
                // The same path again: its signatures are merged, the first upload's time kept.
                let mut signatures = previous.signatures.clone();
                signatures.extend(
                    path_info.signatures.iter().filter(|s| !previous.signatures.contains(s)).cloned(),
                );
                path_info.signatures = signatures;
                path_info.uploaded = previous.uploaded;
            } else {
                // Another NAR for this path: the old one's user marker goes.
                let old = nixbase32::encode(&previous.nar_hash);
                self.backend.delete(&self.keys.cache_nar_user(&old, &store_hash)).await?;
            }
            if previous.store_path != path_info.store_path {
                let old = StorePath::parse(&previous.store_path)?;
                self.remove_visible(&format!("store/{}.nar", old.base_name())).await?;
            }
        }
        self.backend.put(&self.keys.path_info(&store_hash), Bytes::from(path_info.encode())).await?;
        self.meta.invalidate(&self.keys.path_info(&store_hash)).await;
        self.backend.put(&self.keys.cache_nar_user(&nar_hash, &store_hash), Bytes::new()).await?;
        let text = self.served_narinfo(&path_info).await?.render();
        let alias = format!("store/{}.nar", info.store_path.base_name());
        let entries = [
            (format!("{store_hash}.narinfo"), text.len() as u64, md5_hex(text.as_bytes())),
            (format!("{store_hash}.ls"), nar.listing_size, hex::encode(nar.listing_md5)),
            (alias, nar.nar_size, hex::encode(nar.nar_md5)),
        ];
        for (key, size, etag) in &entries {
            if previous.is_some() {
                // Entries of the path as it was (another size or ETag) go before the new ones.
                self.remove_visible_except(key, *size, etag).await?;
            }
            self.put_index_entry(key, *size, etag).await?;
        }
        self.backend.delete(&self.keys.pending(&nar_hash, &store_hash)).await?;
        if previous.is_none() {
            self.tell(BucketChange::store_paths(1));
        }
        Ok(())
    }

    /// The path info of the store path with hash part `store_hash`, if this cache has it.
    pub async fn path_info(&self, store_hash: &str) -> Result<Option<Arc<PathInfo>>, CommitError> {
        let key = self.keys.path_info(store_hash);
        let loaded = self
            .meta
            .get_or_load(&key, async {
                match self.get(&key).await? {
                    Some(bytes) => Ok(Some(Cached::PathInfo(Arc::new(PathInfo::decode(&bytes)?)))),
                    None => Ok::<_, CommitError>(None),
                }
            })
            .await?;
        Ok(match loaded {
            Some(Cached::PathInfo(info)) => Some(info),
            _ => None,
        })
    }

    /// Whether this cache holds the NAR `nar_hash`, and what it knows of it.
    pub async fn cache_nar(&self, nar_hash: &[u8; 32]) -> Result<Option<CacheNar>, CommitError> {
        let key = self.keys.cache_nar(&nixbase32::encode(nar_hash));
        let loaded = self
            .meta
            .get_or_load(&key, async {
                match self.get(&key).await? {
                    Some(bytes) => Ok(Some(Cached::CacheNar(CacheNar::decode(&bytes)?))),
                    None => Ok::<_, CommitError>(None),
                }
            })
            .await?;
        Ok(match loaded {
            Some(Cached::CacheNar(nar)) => Some(nar),
            _ => None,
        })
    }

    /// The narinfo this cache serves for a path: [`PathInfo::narinfo`], with the bucket's own
    /// signature when it has a key.
    pub async fn served_narinfo(&self, path: &PathInfo) -> Result<NarInfo, CommitError> {
        let mut info = path.narinfo()?;
        if let Some(key) = self.settings().await?.and_then(|s| s.signing_key) {
            let key: SecretKey = key.parse().map_err(|e| CommitError::SigningKey(format!("{e}")))?;
            crate::nix::signing::sign_narinfo(&mut info, &key)?;
        }
        Ok(info)
    }

    /// Brings the listing entries of every narinfo up to date with the text served now (after
    /// the signing key changed); returns how many changed. One read per store path.
    pub async fn refresh_narinfo_entries(&self) -> Result<usize, CommitError> {
        let prefix = format!("{}pathinfo/", self.keys.root());
        let mut changed = 0;
        for object in backend::list_all(self.backend.as_ref(), &prefix).await? {
            let Some(bytes) = self.get(&object.key).await? else { continue };
            let path = PathInfo::decode(&bytes)?;
            let key = format!("{}.narinfo", StorePath::parse(&path.store_path)?.hash_part());
            let text = self.served_narinfo(&path).await?.render();
            let (size, etag) = (text.len() as u64, md5_hex(text.as_bytes()));
            match self.visible(&key).await? {
                Some(entry) if (entry.size, entry.etag.as_str()) == (size, etag.as_str()) => {}
                Some(entry) => {
                    self.replace_visible(&entry, size, &etag).await?;
                    changed += 1;
                }
                None => {}
            }
        }
        Ok(changed)
    }

    /// Reads the plain object `key` (or `range` of it), with its attributes. A whole object
    /// whose ETag is an MD5 is checked against it as it streams (see [`verify_md5`]).
    pub async fn get_plain(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<GetResult, BackendError> {
        let mut got = self.backend.get(&self.plain_key(key)?, range).await?;
        let whole = got.range.start == 0 && got.range.end == got.meta.size;
        if let Some(expected) = hex::decode(&got.meta.etag).ok().filter(|d| whole && d.len() == 16) {
            got.body = verify_md5(key, got.body, expected);
        }
        uploads::report_etag(&mut got.meta, &mut got.attributes);
        Ok(got)
    }

    /// The metadata and attributes of the plain object `key`.
    pub async fn stat_plain(&self, key: &str) -> Result<(ObjectMeta, Attributes), BackendError> {
        let (mut meta, mut attributes) = self.backend.stat(&self.plain_key(key)?).await?;
        uploads::report_etag(&mut meta, &mut attributes);
        Ok((meta, attributes))
    }

    /// Writes the plain object `key` from a stream (atomically; nothing held whole in memory).
    pub async fn put_plain(
        &self,
        key: &str,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<ObjectMeta, BackendError> {
        self.backend.put_stream(&self.plain_key(key)?, body, options).await
    }

    /// Deletes the plain object `key` (a missing key is not an error).
    pub async fn delete_plain(&self, key: &str) -> Result<(), BackendError> {
        self.backend.delete(&self.plain_key(key)?).await
    }

    /// The backend key of the plain object `key`: [`BackendError::InvalidKey`] if it would not
    /// fit under the cache's prefix.
    fn plain_key(&self, key: &str) -> Result<String, BackendError> {
        let raw = self.keys.raw(key);
        backend::validate_key(&raw)?;
        Ok(raw)
    }

    async fn put_index_entry(&self, key: &str, size: u64, etag: &str) -> Result<ObjectMeta, BackendError> {
        let written = self.backend.put(&self.keys.index_entry(key, size, etag), Bytes::new()).await?;
        self.meta.invalidate(&self.keys.index_entry_prefix(key)).await;
        Ok(written)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        match backend::get_bytes(self.backend.as_ref(), key).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(BackendError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
