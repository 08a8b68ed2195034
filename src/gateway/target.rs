//! What an S3 key of a bucket names: a virtual key the gateway renders, or a plain object.

use crate::cache::NIX_CACHE_INFO;
use crate::nix::nixbase32;
use crate::nix::store_path::{HASH_CHARS, StorePath};

/// The thing a key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `nix-cache-info`, generated from the bucket's settings.
    CacheInfo,
    /// `<storehash>.narinfo`.
    NarInfo {
        /// The store path's hash part.
        store_hash: String,
    },
    /// `<storehash>.ls`, the NAR's JSON listing.
    Listing {
        /// The store path's hash part.
        store_hash: String,
    },
    /// `nar/<narhash>.nar`, the NAR rendered.
    Nar {
        /// The NAR's SHA-256.
        nar_hash: [u8; 32],
    },
    /// `store/<storehash>-<name>.nar`, the same NAR under its store path's name.
    StoreNar {
        /// The store path.
        store_path: StorePath,
    },
    /// `tree/<storehash>-<name>[/<path>]`: a file, symlink or empty directory of a store path
    /// (the bucket setting `browse`; a read-only view).
    Tree {
        /// The store path.
        store_path: StorePath,
        /// The key after `tree/<storehash>-<name>`: empty, or starting with `/` (see
        /// [`crate::render::tree`]).
        path: String,
    },
    /// Any other key under `nar/`: an upload key (`nar/<filehash>.nar.xz` …), whose NAR is
    /// ingested but which is not kept as an object.
    NarUpload,
    /// Any other key under `store/` or `tree/`, read-only views: names nothing.
    StoreView,
    /// Anything else (`log/…`, `realisations/…`, …): a plain object, stored verbatim.
    Plain,
}

/// Whether `s` is `n` nixbase32 digits.
fn is_nixbase32(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| nixbase32::ALPHABET.contains(&b))
}

impl Target {
    /// What `key` names.
    pub fn of(key: &str) -> Target {
        if key == NIX_CACHE_INFO {
            return Target::CacheInfo;
        }
        if let Some(hash) = key.strip_suffix(".narinfo").filter(|h| is_nixbase32(h, HASH_CHARS)) {
            return Target::NarInfo { store_hash: hash.to_owned() };
        }
        if let Some(hash) = key.strip_suffix(".ls").filter(|h| is_nixbase32(h, HASH_CHARS)) {
            return Target::Listing { store_hash: hash.to_owned() };
        }
        if let Some(rest) = key.strip_prefix("nar/") {
            let nar_hash = rest
                .strip_suffix(".nar")
                .filter(|h| is_nixbase32(h, nixbase32::encoded_len(32)))
                .and_then(|h| nixbase32::decode(h).ok())
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
            return match nar_hash {
                Some(nar_hash) => Target::Nar { nar_hash },
                None => Target::NarUpload,
            };
        }
        if let Some(rest) = key.strip_prefix("store/") {
            return match rest.strip_suffix(".nar").map(StorePath::from_base_name) {
                Some(Ok(store_path)) => Target::StoreNar { store_path },
                _ => Target::StoreView,
            };
        }
        if let Some(rest) = key.strip_prefix("tree/") {
            let (base, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
            return match StorePath::from_base_name(base) {
                Ok(store_path) => Target::Tree { store_path, path: path.to_owned() },
                Err(_) => Target::StoreView,
            };
        }
        Target::Plain
    }

    /// Whether this key is in a read-only view of store paths (`store/`, `tree/`), where writes
    /// are a client's mistake (400).
    pub fn is_read_only_view(&self) -> bool {
        matches!(self, Target::StoreNar { .. } | Target::StoreView | Target::Tree { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_what_they_should() {
        let hash = "1vnwanv5bk8pm7cabl2adpqxssm3p0ai";
        assert_eq!(Target::of("nix-cache-info"), Target::CacheInfo);
        assert_eq!(Target::of(&format!("{hash}.narinfo")), Target::NarInfo { store_hash: hash.into() });
        assert_eq!(Target::of(&format!("{hash}.ls")), Target::Listing { store_hash: hash.into() });
        let nar = "0si672nf2365giszyc447xckd3vhaycpp3wbym88xscw0r0ij5qb";
        assert!(matches!(Target::of(&format!("nar/{nar}.nar")), Target::Nar { .. }));
        assert_eq!(Target::of(&format!("nar/{nar}.nar.xz")), Target::NarUpload);
        assert_eq!(Target::of("nar/"), Target::NarUpload);
        assert!(matches!(Target::of(&format!("store/{hash}-hello.nar")), Target::StoreNar { .. }));
        assert_eq!(Target::of(&format!("store/{hash}-hello")), Target::StoreView);
        assert_eq!(Target::of("store/x.nar"), Target::StoreView);
        // Not a store hash (an `e`, `o`, `u` or `t` is not nixbase32), or not at the top: plain.
        assert_eq!(Target::of("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo"), Target::Plain);
        assert_eq!(Target::of(&format!("log/{hash}.narinfo")), Target::Plain);
        assert_eq!(Target::of("log/abc-hello.drv"), Target::Plain);
        assert_eq!(Target::of("realisations/sha256:x!out.doi"), Target::Plain);
        assert_eq!(Target::of("nix-cache-info.bak"), Target::Plain);
        let tree = |path: &str| Target::Tree {
            store_path: StorePath::from_base_name(&format!("{hash}-hello")).unwrap(),
            path: path.into(),
        };
        assert_eq!(Target::of(&format!("tree/{hash}-hello")), tree(""));
        assert_eq!(Target::of(&format!("tree/{hash}-hello/")), tree("/"));
        assert_eq!(Target::of(&format!("tree/{hash}-hello/bin/a b")), tree("/bin/a b"));
        assert!(Target::of(&format!("tree/{hash}-hello/x")).is_read_only_view());
        assert_eq!(Target::of("tree/"), Target::StoreView);
        assert_eq!(Target::of("tree/x/y"), Target::StoreView);
    }
}
