//! Store paths: `/nix/store/<hash>-<name>`.
//!
//! The hash part is 32 nixbase32 characters (20 bytes: a SHA-256 folded by
//! [`compress_hash`](super::nixbase32::compress_hash)); the name is 1 to 211 bytes of
//! `[A-Za-z0-9+-._?=]`. As current Nix does, names `.` and `..`, and names whose first
//! dash-separated component is `.` or `..` (`.-foo`, `..-foo`) are refused; other names starting
//! with a dot (`.foo`) are valid, as they are in every Nix since 2.4.

use std::fmt;

use super::nixbase32;

/// The store directory nargate serves. Store paths in other directories are refused.
pub const STORE_DIR: &str = "/nix/store";

/// The length of a store path's hash part, in bytes.
pub const HASH_LEN: usize = 20;

/// The length of a store path's hash part in nixbase32 characters.
pub const HASH_CHARS: usize = 32;

/// The maximum length of a store path's name, in bytes (Nix's `StorePath::MaxPathLen`).
pub const MAX_NAME_LEN: usize = 211;

/// Why a string is not a valid store path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorePathError {
    /// The path is not directly inside [`STORE_DIR`].
    #[error("store path is not in {STORE_DIR}/")]
    NotInStore,
    /// The base name is shorter than a hash, a dash and a one-byte name.
    #[error("store path base name is too short")]
    TooShort,
    /// The 33rd character of the base name is not `-`.
    #[error("store path hash is not followed by '-'")]
    MissingDash,
    /// The hash part is not valid nixbase32.
    #[error("invalid store path hash: {0}")]
    BadHash(#[from] nixbase32::Nixbase32Error),
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("store path name is {0} bytes long, more than {MAX_NAME_LEN}")]
    NameTooLong(usize),
    /// The name holds a character outside `[A-Za-z0-9+-._?=]`.
    #[error("store path name has an invalid character {:?}", char::from(*.0))]
    InvalidNameChar(u8),
    /// The name is `.` or `..`, or its first dash-separated component is.
    #[error("store path name may not be '.' or '..' or start with '.-' or '..-'")]
    DotName,
}

/// A store path: its 20-byte hash and its name. Always valid once constructed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath {
    hash: [u8; HASH_LEN],
    name: String,
}

impl StorePath {
    /// Parses a full store path, `/nix/store/<hash>-<name>`.
    pub fn parse(full: &str) -> Result<Self, StorePathError> {
        let base = full
            .strip_prefix(STORE_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or(StorePathError::NotInStore)?;
        Self::from_base_name(base)
    }

    /// Parses a store path's base name, `<hash>-<name>` (as in narinfo `References:`).
    pub fn from_base_name(s: &str) -> Result<Self, StorePathError> {
        if s.len() < HASH_CHARS + 2 {
            return Err(StorePathError::TooShort);
        }
        let (hash, rest) = s.split_at_checked(HASH_CHARS).ok_or(StorePathError::TooShort)?;
        let name = rest.strip_prefix('-').ok_or(StorePathError::MissingDash)?;
        let hash = nixbase32::decode(hash)?
            .try_into()
            .map_err(|_| nixbase32::Nixbase32Error::InvalidLength(HASH_CHARS))?;
        Self::from_parts(hash, name)
    }

    /// Makes a store path from its hash and name, validating the name.
    pub fn from_parts(hash: [u8; HASH_LEN], name: &str) -> Result<Self, StorePathError> {
        validate_name(name)?;
        Ok(Self { hash, name: name.to_owned() })
    }

    /// The 20-byte hash.
    pub fn hash(&self) -> &[u8; HASH_LEN] {
        &self.hash
    }

    /// The hash part as it appears in the path: 32 nixbase32 characters.
    pub fn hash_part(&self) -> String {
        nixbase32::encode(&self.hash)
    }

    /// The name, after the hash and its dash.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The base name, `<hash>-<name>`.
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash_part(), self.name)
    }

    /// The full path, `/nix/store/<hash>-<name>` (the same as `to_string()`).
    pub fn to_absolute(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE_DIR}/{}-{}", self.hash_part(), self.name)
    }
}

impl std::str::FromStr for StorePath {
    type Err = StorePathError;

    /// Parses a full store path, as [`StorePath::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Checks a store path name against Nix's rules (see the module documentation).
pub fn validate_name(name: &str) -> Result<(), StorePathError> {
    if name.is_empty() {
        return Err(StorePathError::TooShort);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StorePathError::NameTooLong(name.len()));
    }
    if let Some(&c) = name.as_bytes().iter().find(|&&c| !is_name_char(c)) {
        return Err(StorePathError::InvalidNameChar(c));
    }
    let first_component = name.split('-').next().unwrap_or(name);
    if first_component == "." || first_component == ".." {
        return Err(StorePathError::DotName);
    }
    Ok(())
}

/// Whether `c` may appear in a store path name.
fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"+-._?=".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "1vnwanv5bk8pm7cabl2adpqxssm3p0ai";

    #[test]
    fn parses_and_prints() {
        let full = format!("/nix/store/{HASH}-hello-2.12.1");
        let path = StorePath::parse(&full).unwrap();
        assert_eq!(path.hash_part(), HASH);
        assert_eq!(path.name(), "hello-2.12.1");
        assert_eq!(path.base_name(), format!("{HASH}-hello-2.12.1"));
        assert_eq!(path.to_absolute(), full);
        assert_eq!(path.to_string(), full);
        assert_eq!(full.parse::<StorePath>().unwrap(), path);
        assert_eq!(StorePath::from_base_name(&path.base_name()).unwrap(), path);
        assert_eq!(StorePath::from_parts(*path.hash(), path.name()).unwrap(), path);
    }

    #[test]
    fn accepts_every_allowed_character() {
        let name = "AZaz09+-._?=";
        assert!(StorePath::from_base_name(&format!("{HASH}-{name}")).is_ok());
        for ok in [".foo", "..foo", "a.", "-", "a-.", ".a-b", "x".repeat(211).as_str()] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_paths() {
        use StorePathError::*;
        let cases: &[(String, StorePathError)] = &[
            (format!("/nix/stor/{HASH}-a"), NotInStore),
            (format!("/nix/store{HASH}-a"), NotInStore),
            (format!("nix/store/{HASH}-a"), NotInStore),
            (format!("/nix/store/{HASH}-"), TooShort),
            (format!("/nix/store/{HASH}"), TooShort),
            ("/nix/store/".to_string(), TooShort),
            (format!("/nix/store/{HASH}_a"), MissingDash),
            (
                format!("/nix/store/{}e-a", &HASH[..31]),
                BadHash(nixbase32::Nixbase32Error::InvalidChar { position: 31, byte: b'e' }),
            ),
            (format!("/nix/store/{HASH}-{}", "x".repeat(212)), NameTooLong(212)),
            (format!("/nix/store/{HASH}-a/b"), InvalidNameChar(b'/')),
            (format!("/nix/store/{HASH}-a b"), InvalidNameChar(b' ')),
            (format!("/nix/store/{HASH}-a\0"), InvalidNameChar(0)),
            (format!("/nix/store/{HASH}-é"), InvalidNameChar(0xc3)),
            (format!("/nix/store/{HASH}-."), DotName),
            (format!("/nix/store/{HASH}-.."), DotName),
            (format!("/nix/store/{HASH}-.-a"), DotName),
            (format!("/nix/store/{HASH}-..-a"), DotName),
        ];
        for (path, error) in cases {
            assert_eq!(StorePath::parse(path).as_ref(), Err(error), "{path}");
        }
        // A multi-byte character straddling the hash boundary is refused, not a panic.
        assert!(StorePath::from_base_name(&format!("{}é-abc", &HASH[..31])).is_err());
    }
}
