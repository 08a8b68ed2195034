//! Where a cache's records live in the backend (DESIGN.md, "Data model").

/// The backend keys of one cache (one S3 bucket of the gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKeys {
    root: String,
}

impl CacheKeys {
    /// The keys of the cache named `bucket`.
    pub fn new(bucket: &str) -> Self {
        CacheKeys { root: format!("caches/{bucket}/") }
    }

    /// The prefix of every record of this cache.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The bucket's settings record.
    pub fn bucket(&self) -> String {
        format!("{}bucket", self.root)
    }

    /// The path info of the store path with hash part `store_hash`.
    pub fn path_info(&self, store_hash: &str) -> String {
        format!("{}pathinfo/{store_hash}", self.root)
    }

    /// This cache holds the NAR with `nar_hash` (nixbase32).
    pub fn cache_nar(&self, nar_hash: &str) -> String {
        format!("{}nars/{nar_hash}", self.root)
    }

    /// The store path `store_hash` of this cache uses the NAR `nar_hash`.
    pub fn cache_nar_user(&self, nar_hash: &str, store_hash: &str) -> String {
        format!("{}nars/{nar_hash}/{store_hash}", self.root)
    }

    /// The prefix of the narinfos waiting for the NAR `nar_hash`.
    pub fn pending_prefix(&self, nar_hash: &str) -> String {
        format!("{}{nar_hash}/", self.pending_root())
    }

    /// A narinfo of `store_hash` waiting for the NAR `nar_hash`.
    pub fn pending(&self, nar_hash: &str, store_hash: &str) -> String {
        format!("{}{store_hash}", self.pending_prefix(nar_hash))
    }

    /// The prefix of every pending narinfo of this cache.
    pub fn pending_root(&self) -> String {
        format!("{}pending/", self.root)
    }

    /// What the upload key `key` (a client's `nar/…` key) names: the NAR it brought or that a
    /// narinfo expects there.
    pub fn upload_key(&self, key: &str) -> String {
        format!("{}uploadkeys/{key}", self.root)
    }

    /// The prefix of the listing index.
    pub fn index_prefix(&self) -> String {
        format!("{}index/", self.root)
    }

    /// The listing-index entry of visible key `key`, with its size and ETag: the key's lowercase
    /// hex keeps byte order, and `.` sorts below every hex digit.
    pub fn index_entry(&self, key: &str, size: u64, etag: &str) -> String {
        format!("{}{}.{size}.{etag}", self.index_prefix(), hex::encode(key.as_bytes()))
    }

    /// The prefix of every listing-index entry of visible key `key` (whatever its size and ETag).
    pub fn index_entry_prefix(&self, key: &str) -> String {
        format!("{}{}.", self.index_prefix(), hex::encode(key.as_bytes()))
    }

    /// A plain object the gateway does not interpret.
    pub fn raw(&self, key: &str) -> String {
        format!("{}raw/{key}", self.root)
    }
}

/// A listing-index entry, decoded from its backend key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The visible key.
    pub key: String,
    /// Its size.
    pub size: u64,
    /// Its ETag.
    pub etag: String,
}

impl IndexEntry {
    /// Decodes the part of an index entry's key after the index prefix.
    pub fn parse(name: &str) -> Option<IndexEntry> {
        let mut parts = name.splitn(3, '.');
        let key = String::from_utf8(hex::decode(parts.next()?).ok()?).ok()?;
        let size = parts.next()?.parse().ok()?;
        let etag = parts.next()?.to_owned();
        Some(IndexEntry { key, size, etag })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_entries_round_trip_and_keep_key_order() {
        let keys = CacheKeys::new("cache");
        let prefix = keys.index_prefix();
        let a = keys.index_entry("nar/x.nar", 10, "abc");
        let b = keys.index_entry("nar/x.nar.xz", 3, "def");
        let c = keys.index_entry("nar0", 3, "def");
        assert!(a < b && b < c, "{a} {b} {c}");
        let parsed = IndexEntry::parse(a.strip_prefix(&prefix).unwrap()).unwrap();
        assert_eq!(parsed, IndexEntry { key: "nar/x.nar".into(), size: 10, etag: "abc".into() });
        assert_eq!(IndexEntry::parse("zz.1.e"), None);
    }
}
