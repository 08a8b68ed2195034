//! A cache: one bucket of the gateway, a Nix binary cache whose store paths point into the shared
//! content-addressed store. Dedup is global, visibility per bucket.
//!
//! [`Cache`] holds the commit path (DESIGN.md, "Committing a store path"): a NAR and its narinfo
//! arrive in either order; each side writes its own record first, then looks for the other, and
//! whichever finds the other half commits. Commit is idempotent and writes the path info last of
//! the things a reader needs, so a reader never sees a store path it cannot render.

pub mod keys;
pub mod records;

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

pub use keys::{CacheKeys, IndexEntry};
pub use records::{BucketRecord, CacheNar, PathInfo, Pending};

use crate::backend::{self, BackendError, DynBackend};
use crate::castore::NarRecord;
use crate::castore::record::RecordError;
use crate::nix::narinfo::{NarInfo, NarInfoError};
use crate::nix::nixbase32;
use crate::nix::signing::SecretKey;
use crate::nix::store_path::StorePath;
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
}

impl CommitError {
    /// Whether the narinfo contradicts its NAR (so retrying cannot help).
    pub fn is_mismatch(&self) -> bool {
        matches!(self, CommitError::NarSizeMismatch { .. } | CommitError::StorePathMismatch { .. })
    }
}

/// What happened to an uploaded narinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarInfoOutcome {
    /// Its NAR was there: the store path is now visible.
    Committed,
    /// Its NAR has not arrived: the narinfo waits for it.
    Pending,
}

/// One bucket's view of the store.
#[derive(Debug, Clone)]
pub struct Cache {
    backend: DynBackend,
    bucket: String,
    keys: CacheKeys,
}

fn now_secs() -> u64 {
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
        Cache { backend, bucket: bucket.to_owned(), keys: CacheKeys::new(bucket) }
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
        match self.get(&self.keys.bucket()).await? {
            Some(bytes) => Ok(Some(BucketRecord::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Creates the bucket with `settings` unless it exists; returns its settings.
    pub async fn create(&self, settings: BucketRecord) -> Result<BucketRecord, CommitError> {
        if let Some(existing) = self.settings().await? {
            return Ok(existing);
        }
        self.backend.put(&self.keys.bucket(), Bytes::from(settings.encode())).await?;
        Ok(settings)
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
        self.backend.put(&self.keys.cache_nar(&nar_hash), Bytes::from(cache_nar.encode())).await?;
        let visible = format!("nar/{nar_hash}.nar");
        self.put_index_entry(&visible, record.nar_size, &hex::encode(record.nar_md5)).await?;

        let mut committed = vec![];
        let waiting = backend::list_all(self.backend.as_ref(), &self.keys.pending_prefix(&nar_hash)).await?;
        for waiting in waiting {
            let Some(bytes) = self.get(&waiting.key).await? else { continue };
            let pending = Pending::decode(&bytes)?;
            let info = NarInfo::parse(&pending.narinfo)?;
            match self.commit(&info, &cache_nar).await {
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
        let nar_hash = nixbase32::encode(&info.nar_hash_digest()?);
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
        let path_info = PathInfo {
            store_path: info.store_path.to_string(),
            nar_hash: nar_hash_bytes,
            nar_size: info.nar_size,
            references: info.references.clone(),
            deriver: info.deriver.clone(),
            signatures: info.sigs.clone(),
            ca: info.ca.clone(),
            uploaded: now_secs(),
        };
        self.backend.put(&self.keys.path_info(&store_hash), Bytes::from(path_info.encode())).await?;
        self.backend.put(&self.keys.cache_nar_user(&nar_hash, &store_hash), Bytes::new()).await?;
        let text = self.served_narinfo(&path_info).await?.render();
        self.put_index_entry(&format!("{store_hash}.narinfo"), text.len() as u64, &md5_hex(text.as_bytes()))
            .await?;
        self.put_index_entry(&format!("{store_hash}.ls"), nar.listing_size, &hex::encode(nar.listing_md5))
            .await?;
        let alias = format!("store/{}.nar", info.store_path.base_name());
        self.put_index_entry(&alias, nar.nar_size, &hex::encode(nar.nar_md5)).await?;
        self.backend.delete(&self.keys.pending(&nar_hash, &store_hash)).await?;
        Ok(())
    }

    /// The path info of the store path with hash part `store_hash`, if this cache has it.
    pub async fn path_info(&self, store_hash: &str) -> Result<Option<PathInfo>, CommitError> {
        match self.get(&self.keys.path_info(store_hash)).await? {
            Some(bytes) => Ok(Some(PathInfo::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Whether this cache holds the NAR `nar_hash`, and what it knows of it.
    pub async fn cache_nar(&self, nar_hash: &[u8; 32]) -> Result<Option<CacheNar>, CommitError> {
        match self.get(&self.keys.cache_nar(&nixbase32::encode(nar_hash))).await? {
            Some(bytes) => Ok(Some(CacheNar::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The narinfo this cache serves for a path: the NAR uncompressed at `nar/<narhash>.nar`, the
    /// uploaded signatures, and the bucket's own signature when it has a key.
    pub async fn served_narinfo(&self, path: &PathInfo) -> Result<NarInfo, CommitError> {
        let store_path = StorePath::parse(&path.store_path)?;
        let url = format!("nar/{}.nar", nixbase32::encode(&path.nar_hash));
        let mut info = NarInfo::new(store_path, url, &path.nar_hash, path.nar_size);
        info.compression = Some("none".into());
        info.file_hash = Some(info.nar_hash.clone());
        info.file_size = Some(path.nar_size);
        info.references = path.references.clone();
        info.deriver = path.deriver.clone();
        info.sigs = path.signatures.clone();
        info.ca = path.ca.clone();
        if let Some(key) = self.settings().await?.and_then(|s| s.signing_key) {
            let key: SecretKey = key.parse().map_err(|e| CommitError::SigningKey(format!("{e}")))?;
            crate::nix::signing::sign_narinfo(&mut info, &key)?;
        }
        Ok(info)
    }

    async fn put_index_entry(&self, key: &str, size: u64, etag: &str) -> Result<(), BackendError> {
        self.backend.put(&self.keys.index_entry(key, size, etag), Bytes::new()).await?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        match backend::get_bytes(self.backend.as_ref(), key).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(BackendError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
