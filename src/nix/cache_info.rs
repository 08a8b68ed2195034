//! `nix-cache-info`, the file at the root of a binary cache: `StoreDir`, `WantMassQuery` and
//! `Priority`, one `Key: value` per line (Nix ignores keys it does not know, and so do we).

/// The store directory every cache nargate serves is for.
pub const STORE_DIR: &str = "/nix/store";

/// A parsed `nix-cache-info`: the fields that were given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheInfo {
    /// `StoreDir`.
    pub store_dir: Option<String>,
    /// `WantMassQuery`.
    pub want_mass_query: Option<bool>,
    /// `Priority`.
    pub priority: Option<u32>,
}

/// Why a `nix-cache-info` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheInfoError {
    /// Not UTF-8 text.
    #[error("nix-cache-info is not UTF-8 text")]
    NotText,
    /// A line is not `Key: value`.
    #[error("nix-cache-info line {0:?} is not `Key: value`")]
    BadLine(String),
    /// A field's value does not parse.
    #[error("nix-cache-info {field} {value:?} is not valid")]
    BadValue {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
    },
    /// The cache is for another store directory.
    #[error("nix-cache-info names StoreDir {0:?}; this gateway serves {STORE_DIR}")]
    OtherStoreDir(String),
}

impl CacheInfo {
    /// Parses a `nix-cache-info` as Nix does, and refuses one for another store directory.
    pub fn parse(bytes: &[u8]) -> Result<CacheInfo, CacheInfoError> {
        let text = std::str::from_utf8(bytes).map_err(|_| CacheInfoError::NotText)?;
        let mut info = CacheInfo::default();
        for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
            let (key, value) =
                line.split_once(':').ok_or_else(|| CacheInfoError::BadLine(line.to_owned()))?;
            let value = value.trim();
            let bad = |field| CacheInfoError::BadValue { field, value: value.to_owned() };
            match key {
                "StoreDir" => info.store_dir = Some(value.to_owned()),
                "WantMassQuery" => {
                    info.want_mass_query = Some(match value {
                        "1" => true,
                        "0" => false,
                        _ => return Err(bad("WantMassQuery")),
                    })
                }
                "Priority" => info.priority = Some(value.parse().map_err(|_| bad("Priority"))?),
                _ => {}
            }
        }
        match &info.store_dir {
            Some(dir) if dir.trim_end_matches('/') != STORE_DIR => {
                Err(CacheInfoError::OtherStoreDir(dir.clone()))
            }
            _ => Ok(info),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_nix_writes() {
        let info = CacheInfo::parse(b"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n").unwrap();
        assert_eq!(
            info,
            CacheInfo { store_dir: Some(STORE_DIR.into()), want_mass_query: Some(true), priority: Some(30) }
        );
        assert_eq!(CacheInfo::parse(b"StoreDir: /nix/store\n").unwrap().priority, None);
        assert_eq!(CacheInfo::parse(b"Other: x\n").unwrap(), CacheInfo::default());
    }

    #[test]
    fn refuses_other_stores_and_bad_values() {
        assert_eq!(
            CacheInfo::parse(b"StoreDir: /gnu/store\n"),
            Err(CacheInfoError::OtherStoreDir("/gnu/store".into()))
        );
        assert!(matches!(CacheInfo::parse(b"Priority: high\n"), Err(CacheInfoError::BadValue { .. })));
        assert!(matches!(CacheInfo::parse(b"WantMassQuery: yes\n"), Err(CacheInfoError::BadValue { .. })));
        assert!(matches!(CacheInfo::parse(b"garbage\n"), Err(CacheInfoError::BadLine(_))));
        assert_eq!(CacheInfo::parse(&[0xff]), Err(CacheInfoError::NotText));
    }
}
