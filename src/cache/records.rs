//! The records a cache writes: its settings, its path infos, its membership of NARs, and the
//! narinfos waiting for their NAR.

use serde::{Deserialize, Serialize};

use crate::castore::record::{self, RecordError, RecordKind};

/// The version of every record in this module but the bucket record.
pub const CACHE_RECORDS_VERSION: u8 = 1;

/// The version of the bucket record (version 1 had no `want_mass_query`, version 2 no `browse`,
/// version 3 no `retention_secs`; all are still read).
pub const BUCKET_RECORD_VERSION: u8 = 4;

/// A bucket's settings (`caches/<bucket>/bucket`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRecord {
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Whether anonymous clients may read.
    pub anonymous_read: bool,
    /// The secret key narinfos are signed with (`name:base64`), if any.
    pub signing_key: Option<String>,
    /// The `Priority` of `nix-cache-info`.
    pub priority: u32,
    /// The `WantMassQuery` of `nix-cache-info`.
    pub want_mass_query: bool,
    /// Whether every store path's files are objects under `tree/<hash>-<name>/`.
    pub browse: bool,
    /// GC removes store paths uploaded longer ago than this many seconds, but for those a kept
    /// path references (0: kept for ever).
    pub retention_secs: u64,
}

/// Settings to change in a bucket record (from the configuration or the command line); `None`
/// leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketSettings {
    /// Whether anonymous clients may read.
    pub anonymous_read: Option<bool>,
    /// The `Priority` of `nix-cache-info` (Nix prefers lower).
    pub priority: Option<u32>,
    /// The `WantMassQuery` of `nix-cache-info`.
    pub want_mass_query: Option<bool>,
    /// Whether every store path's files are objects under `tree/<hash>-<name>/`.
    pub browse: Option<bool>,
    /// GC removes store paths uploaded longer ago than this many seconds, but for those a kept
    /// path references (0: kept for ever).
    pub retention_secs: Option<u64>,
}

/// The bucket record as version 1 wrote it.
#[derive(Deserialize)]
struct BucketRecordV1 {
    created: u64,
    anonymous_read: bool,
    signing_key: Option<String>,
    priority: u32,
}

/// The bucket record as version 2 wrote it.
#[derive(Deserialize)]
struct BucketRecordV2 {
    created: u64,
    anonymous_read: bool,
    signing_key: Option<String>,
    priority: u32,
    want_mass_query: bool,
}

/// The bucket record as version 3 wrote it.
#[derive(Deserialize)]
struct BucketRecordV3 {
    created: u64,
    anonymous_read: bool,
    signing_key: Option<String>,
    priority: u32,
    want_mass_query: bool,
    browse: bool,
}

impl BucketRecord {
    /// The settings of a new bucket created now: private, unsigned, priority 40, mass queries, no
    /// browsing.
    pub fn new_now() -> Self {
        BucketRecord {
            created: super::now_secs(),
            anonymous_read: false,
            signing_key: None,
            priority: 40,
            want_mass_query: true,
            browse: false,
            retention_secs: 0,
        }
    }

    /// Changes the settings that `settings` sets; returns whether any changed.
    pub fn apply(&mut self, settings: &BucketSettings) -> bool {
        let before = self.clone();
        if let Some(v) = settings.anonymous_read {
            self.anonymous_read = v;
        }
        if let Some(v) = settings.priority {
            self.priority = v;
        }
        if let Some(v) = settings.want_mass_query {
            self.want_mass_query = v;
        }
        if let Some(v) = settings.browse {
            self.browse = v;
        }
        if let Some(v) = settings.retention_secs {
            self.retention_secs = v;
        }
        *self != before
    }

    /// Serializes the record.
    pub fn encode(&self) -> Vec<u8> {
        record::encode(RecordKind::Bucket, BUCKET_RECORD_VERSION, self)
    }

    /// Reads the record, of version 4, 3 (which keeps paths for ever), 2 (which also does not
    /// browse) or 1 (which also wants mass queries).
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let kind = RecordKind::Bucket;
        match bytes.get(kind.magic().len()) {
            Some(1) => {
                let v1: BucketRecordV1 = record::decode(kind, 1, bytes)?;
                Ok(BucketRecord {
                    created: v1.created,
                    anonymous_read: v1.anonymous_read,
                    signing_key: v1.signing_key,
                    priority: v1.priority,
                    want_mass_query: true,
                    browse: false,
                    retention_secs: 0,
                })
            }
            Some(2) => {
                let v2: BucketRecordV2 = record::decode(kind, 2, bytes)?;
                Ok(BucketRecord {
                    created: v2.created,
                    anonymous_read: v2.anonymous_read,
                    signing_key: v2.signing_key,
                    priority: v2.priority,
                    want_mass_query: v2.want_mass_query,
                    browse: false,
                    retention_secs: 0,
                })
            }
            Some(3) => {
                let v3: BucketRecordV3 = record::decode(kind, 3, bytes)?;
                Ok(BucketRecord {
                    created: v3.created,
                    anonymous_read: v3.anonymous_read,
                    signing_key: v3.signing_key,
                    priority: v3.priority,
                    want_mass_query: v3.want_mass_query,
                    browse: v3.browse,
                    retention_secs: 0,
                })
            }
            _ => record::decode(kind, BUCKET_RECORD_VERSION, bytes),
        }
    }

    /// The `nix-cache-info` this bucket serves.
    pub fn nix_cache_info(&self) -> String {
        format!(
            "StoreDir: /nix/store\nWantMassQuery: {}\nPriority: {}\n",
            u8::from(self.want_mass_query),
            self.priority
        )
    }
}

/// What a cache knows of one store path (`caches/<bucket>/pathinfo/<storehash>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathInfo {
    /// The full store path.
    pub store_path: String,
    /// SHA-256 of its NAR (the NAR record's key).
    pub nar_hash: [u8; 32],
    /// The NAR's size.
    pub nar_size: u64,
    /// References, as base names.
    pub references: Vec<String>,
    /// The deriver, as a base name.
    pub deriver: Option<String>,
    /// Signatures as uploaded (`name:base64`).
    pub signatures: Vec<String>,
    /// The content address, if any.
    pub ca: Option<String>,
    /// Upload time, seconds since the Unix epoch.
    pub uploaded: u64,
}

/// This cache holds a NAR (`caches/<bucket>/nars/<narhash>`): what listing and HEAD need of it
/// and of its NAR listing (`<storehash>.ls`), without reading the NAR record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheNar {
    /// The NAR's size.
    pub nar_size: u64,
    /// MD5 of the NAR: its ETag.
    pub nar_md5: [u8; 16],
    /// The size of the NAR's listing JSON.
    pub listing_size: u64,
    /// MD5 of the listing JSON: its ETag.
    pub listing_md5: [u8; 16],
}

/// A narinfo waiting for its NAR (`caches/<bucket>/pending/<narhash>/<storehash>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The narinfo as uploaded.
    pub narinfo: String,
}

/// What an upload key names (`caches/<bucket>/uploadkeys/<key>`): the NAR that was uploaded at
/// a `nar/…` key, or the one a narinfo whose `URL` is that key expects there. A narinfo and a NAR
/// that meet at one key must agree on it, whichever came first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadKey {
    /// The NAR's SHA-256.
    pub nar_hash: [u8; 32],
    /// The NAR's size.
    pub nar_size: u64,
    /// Whether the NAR itself was uploaded there (rather than only named by a narinfo).
    pub landed: bool,
}

macro_rules! record_codec {
    ($ty:ty, $kind:expr) => {
        impl $ty {
            /// Serializes the record.
            pub fn encode(&self) -> Vec<u8> {
                record::encode($kind, CACHE_RECORDS_VERSION, self)
            }

            /// Reads the record.
            pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
                record::decode($kind, CACHE_RECORDS_VERSION, bytes)
            }
        }
    };
}

record_codec!(PathInfo, RecordKind::PathInfo);
record_codec!(CacheNar, RecordKind::CacheNar);
record_codec!(Pending, RecordKind::Pending);
record_codec!(UploadKey, RecordKind::UploadKey);

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the encodings: changing one is a migration.
    #[test]
    fn golden_bytes() {
        let info = PathInfo {
            store_path: "/nix/store/a-b".into(),
            nar_hash: [1; 32],
            nar_size: 200,
            references: vec!["a-b".into()],
            deriver: None,
            signatures: vec!["k:s".into()],
            ca: Some("x".into()),
            uploaded: 5,
        };
        assert_eq!(
            hex::encode(info.encode()),
            concat!(
                "4e475049",
                "01",
                "0e",
                "2f6e69782f73746f72652f612d62",
                "0101010101010101010101010101010101010101010101010101010101010101",
                "c801",
                "01",
                "03",
                "612d62",
                "00",
                "01",
                "03",
                "6b3a73",
                "01",
                "01",
                "78",
                "05"
            )
        );
        assert_eq!(PathInfo::decode(&info.encode()).unwrap(), info);
        let nar = CacheNar { nar_size: 1, nar_md5: [2; 16], listing_size: 3, listing_md5: [4; 16] };
        assert_eq!(
            hex::encode(nar.encode()),
            concat!(
                "4e47434e01",
                "01",
                "02020202020202020202020202020202",
                "03",
                "04040404040404040404040404040404"
            )
        );
        let bucket = BucketRecord {
            created: 1,
            anonymous_read: true,
            signing_key: None,
            priority: 40,
            want_mass_query: false,
            browse: true,
            retention_secs: 300,
        };
        assert_eq!(hex::encode(bucket.encode()), "4e47424b04010100280001ac02");
        assert_eq!(BucketRecord::decode(&bucket.encode()).unwrap(), bucket);
        // Version 3 (no retention) is still read, as keeping paths for ever.
        let v3 = BucketRecord::decode(&hex::decode("4e47424b03010100280001").unwrap()).unwrap();
        assert_eq!(v3, BucketRecord { retention_secs: 0, ..bucket.clone() });
        // Version 2 (no browse) is still read, as not browsing.
        let v2 = BucketRecord::decode(&hex::decode("4e47424b020101002800").unwrap()).unwrap();
        assert_eq!(v2, BucketRecord { browse: false, retention_secs: 0, ..bucket.clone() });
        // Version 1 (no WantMassQuery) is still read, as wanting mass queries.
        let v1 = BucketRecord::decode(&hex::decode("4e47424b0101010028").unwrap()).unwrap();
        assert_eq!(
            v1,
            BucketRecord { want_mass_query: true, browse: false, retention_secs: 0, ..bucket.clone() }
        );
        assert_eq!(v1.nix_cache_info(), "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n");
        let pending = Pending { narinfo: "N".into() };
        assert_eq!(hex::encode(pending.encode()), "4e47504401014e");
        let upload = UploadKey { nar_hash: [7; 32], nar_size: 300, landed: true };
        assert_eq!(
            hex::encode(upload.encode()),
            concat!(
                "4e47554b01",
                "0707070707070707070707070707070707070707070707070707070707070707",
                "ac02",
                "01"
            )
        );
        assert_eq!(UploadKey::decode(&upload.encode()).unwrap(), upload);
    }
}
