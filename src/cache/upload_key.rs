//! Upload keys: the `nar/…` keys clients upload NARs to (`nar/<filehash>.nar.xz` …), which the
//! cache does not keep as objects. What each one names is recorded, so that a narinfo and a NAR
//! that meet at one key agree on the NAR, whichever came first: a NAR uploaded where a narinfo
//! expects another is refused, and so is a narinfo that names an upload key holding another NAR.

use bytes::Bytes;

use super::{Cache, CommitError, UploadKey};
use crate::castore::NarRecord;
use crate::nix::narinfo::NarInfo;
use crate::nix::nixbase32;

impl Cache {
    /// What the upload key `key` names, if anything does.
    pub async fn upload_key(&self, key: &str) -> Result<Option<UploadKey>, CommitError> {
        let Some(record) = self.upload_key_record(key) else { return Ok(None) };
        match self.get(&record).await? {
            Some(bytes) => Ok(Some(UploadKey::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The NAR `record` was uploaded at `key` (an upload key other than its own
    /// `nar/<narhash>.nar`).
    pub async fn nar_uploaded_at(&self, key: &str, record: &NarRecord) -> Result<(), CommitError> {
        let Some(at) = self.upload_key_record(key) else { return Ok(()) };
        let named = UploadKey { nar_hash: record.nar_hash, nar_size: record.nar_size, landed: true };
        self.backend.put(&at, Bytes::from(named.encode())).await?;
        Ok(())
    }

    /// Forgets what the upload key `key` names (its DELETE).
    pub async fn forget_upload_key(&self, key: &str) -> Result<(), CommitError> {
        if let Some(at) = self.upload_key_record(key) {
            self.backend.delete(&at).await?;
        }
        Ok(())
    }

    /// Checks a narinfo against the NAR uploaded at its URL, if one was; if none was, records
    /// what the narinfo expects there.
    pub(super) async fn expect_at_upload_key(
        &self,
        info: &NarInfo,
        nar_hash: &[u8; 32],
    ) -> Result<(), CommitError> {
        let Some(at) = self.upload_key_record(&info.url) else { return Ok(()) };
        let recorded = self.upload_key(&info.url).await?;
        let is_recorded = recorded.is_some();
        let named = match recorded {
            Some(named) => Some(named),
            None => self.held_at_canonical_key(&info.url).await?,
        };
        match named {
            Some(named) if named.landed => {
                // The size of a NAR held at its own key is the commit's to check (NarSizeMismatch).
                let size_differs = is_recorded && named.nar_size != info.nar_size;
                if named.nar_hash != *nar_hash || size_differs {
                    return Err(CommitError::UploadMismatch {
                        url: info.url.clone(),
                        narinfo_hash: nixbase32::encode(nar_hash),
                        narinfo_size: info.nar_size,
                        nar_hash: nixbase32::encode(&named.nar_hash),
                        nar_size: named.nar_size,
                    });
                }
                Ok(())
            }
            _ => {
                let expected = UploadKey { nar_hash: *nar_hash, nar_size: info.nar_size, landed: false };
                self.backend.put(&at, Bytes::from(expected.encode())).await?;
                Ok(())
            }
        }
    }

    /// What `nar/<narhash>.nar` names when this cache holds that NAR: the NAR itself (no record
    /// is kept for these keys; the NAR's own entry says it all).
    async fn held_at_canonical_key(&self, key: &str) -> Result<Option<UploadKey>, CommitError> {
        let nar_hash = key
            .strip_prefix("nar/")
            .and_then(|k| k.strip_suffix(".nar"))
            .and_then(|h| nixbase32::decode(h).ok())
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
        let Some(nar_hash) = nar_hash else { return Ok(None) };
        Ok(self.cache_nar(&nar_hash).await?.map(|held| UploadKey {
            nar_hash,
            nar_size: held.nar_size,
            landed: true,
        }))
    }

    /// The backend key of the record of upload key `key`: only `nar/…` keys are upload keys, and
    /// only those that fit under the cache's prefix.
    fn upload_key_record(&self, key: &str) -> Option<String> {
        let record = self.keys.upload_key(key);
        (key.starts_with("nar/") && crate::backend::validate_key(&record).is_ok()).then_some(record)
    }
}
