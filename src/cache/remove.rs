//! Deletes: what a DELETE of each key a client sees removes from a cache, so that nothing stale
//! stays visible or listed. Chunks and NAR records stay (other caches may share them); GC
//! removes what nothing reaches any more.

use super::{BucketChange, Cache, CacheNar, CommitError, PathInfo};
use crate::backend::{self, BackendError};
use crate::nix::nixbase32;
use crate::nix::store_path::StorePath;

impl Cache {
    /// Removes every listing-index entry of the visible key `key`.
    pub(super) async fn remove_visible(&self, key: &str) -> Result<(), BackendError> {
        self.remove_visible_except(key, u64::MAX, "").await
    }

    /// Removes the listing-index entries of `key` other than the one with `size` and `etag`.
    pub(super) async fn remove_visible_except(
        &self,
        key: &str,
        size: u64,
        etag: &str,
    ) -> Result<(), BackendError> {
        let keep = self.keys.index_entry(key, size, etag);
        let prefix = self.keys.index_entry_prefix(key);
        for entry in backend::list_all(self.backend.as_ref(), &prefix).await? {
            if entry.key != keep {
                self.backend.delete(&entry.key).await?;
            }
        }
        self.meta.invalidate(&prefix).await;
        Ok(())
    }

    /// Removes the store path with hash part `store_hash` from the cache: its path info, its
    /// listing entries (`.narinfo`, `.ls`, `store/…`), its NAR-user marker and any narinfo of it
    /// still waiting for a NAR. The NAR stays visible. Returns whether the path was there.
    pub async fn remove_store_path(&self, store_hash: &str) -> Result<bool, CommitError> {
        let key = self.keys.path_info(store_hash);
        let path = match self.get(&key).await? {
            Some(bytes) => Some(PathInfo::decode(&bytes)?),
            None => None,
        };
        if let Some(path) = &path {
            // The path info first: from then on no GET finds the path, whatever the index says.
            self.backend.delete(&key).await?;
            self.meta.invalidate(&key).await;
            let store_path = StorePath::parse(&path.store_path)?;
            for visible in [
                format!("{store_hash}.narinfo"),
                format!("{store_hash}.ls"),
                format!("store/{}.nar", store_path.base_name()),
            ] {
                self.remove_visible(&visible).await?;
            }
            let nar_hash = nixbase32::encode(&path.nar_hash);
            self.backend.delete(&self.keys.cache_nar_user(&nar_hash, store_hash)).await?;
            self.tell(BucketChange::store_paths(-1));
        }
        let suffix = format!("/{store_hash}");
        for waiting in backend::list_all(self.backend.as_ref(), &self.keys.pending_root()).await? {
            if waiting.key.ends_with(&suffix) {
                self.backend.delete(&waiting.key).await?;
            }
        }
        Ok(path.is_some())
    }

    /// Removes the NAR `nar_hash` from the cache, and every store path of the cache that uses it.
    /// Returns whether the cache held it.
    pub async fn remove_nar(&self, nar_hash: &[u8; 32]) -> Result<bool, CommitError> {
        let encoded = nixbase32::encode(nar_hash);
        let record = self.keys.cache_nar(&encoded);
        let held = self.get(&record).await?;
        // The record first, so that no narinfo commits against the NAR while its users go.
        self.backend.delete(&record).await?;
        self.meta.invalidate(&record).await;
        let users = format!("{record}/");
        for user in backend::list_all(self.backend.as_ref(), &users).await? {
            if let Some(store_hash) = user.key.strip_prefix(&users) {
                self.remove_store_path(store_hash).await?;
            }
            self.backend.delete(&user.key).await?;
        }
        self.remove_visible(&format!("nar/{encoded}.nar")).await?;
        if let Some(bytes) = &held {
            self.tell(BucketChange::nar(-1, CacheNar::decode(bytes).map_or(0, |nar| nar.nar_size)));
        }
        Ok(held.is_some())
    }
}
