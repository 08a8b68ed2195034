//! ed25519 signing keys and narinfo signatures, in Nix's formats.
//!
//! Keys are written `<name>:<base64>`, as `nix-store --generate-binary-cache-key` writes them: a
//! secret key holds 64 bytes (the 32-byte seed, then the 32-byte public key), a public key 32. A
//! signature is `<key name>:<base64 of 64 bytes>`, over a narinfo's
//! [fingerprint](NarInfo::fingerprint). A signature is checked only against the keys with its name.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use super::narinfo::{NarInfo, NarInfoError};

/// The longest key name accepted.
pub const MAX_KEY_NAME_LEN: usize = 255;

/// Why a key or signature does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// No `:` separates the name from the base64 data.
    #[error("expected `<name>:<base64>`")]
    MissingColon,
    /// The name is empty, too long, or holds whitespace, control characters or `:`.
    #[error("invalid key name")]
    InvalidName,
    /// The data after the name is not base64.
    #[error("invalid base64")]
    InvalidBase64,
    /// The data has the wrong length for what it is.
    #[error("{what} is {len} bytes, expected {expected}")]
    BadLength {
        /// `secret key`, `public key` or `signature`.
        what: &'static str,
        /// The decoded length.
        len: usize,
        /// The length it must have.
        expected: usize,
    },
    /// The public half of a secret key is not the one its seed derives.
    #[error("secret key's public half does not match its seed")]
    KeyMismatch,
    /// The 32 bytes of a public key are not a valid ed25519 point.
    #[error("invalid ed25519 public key")]
    InvalidPublicKey,
}

/// A secret signing key with its name. `Display` writes it in Nix's format (the secret included);
/// `Debug` does not show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

/// A public key with its name. `Display` writes it in Nix's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl SecretKey {
    /// Parses a secret key, `<name>:<base64 of seed ‖ public key>`; refuses one whose public half
    /// does not match its seed. Surrounding whitespace (a trailing newline) is ignored.
    pub fn parse(s: &str) -> Result<Self, SigningError> {
        let (name, bytes) = split_key(s.trim())?;
        let bytes: [u8; 64] = sized(bytes, "secret key")?;
        let key = SigningKey::from_keypair_bytes(&bytes).map_err(|_| SigningError::KeyMismatch)?;
        Ok(Self { name: name.to_owned(), key })
    }

    /// Generates a new key named `name` from the operating system's random source.
    pub fn generate(name: &str) -> Result<Self, SigningError> {
        validate_name(name)?;
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        Ok(Self { name: name.to_owned(), key })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public key of this key, with the same name.
    pub fn to_public(&self) -> PublicKey {
        PublicKey { name: self.name.clone(), key: self.key.verifying_key() }
    }

    /// Signs `fingerprint`, returning the signature as it goes in a `Sig:` line:
    /// `<name>:<base64>`.
    pub fn sign(&self, fingerprint: &str) -> String {
        let signature = self.key.sign(fingerprint.as_bytes());
        format!("{}:{}", self.name, STANDARD.encode(signature.to_bytes()))
    }
}

impl fmt::Display for SecretKey {
    /// `<name>:<base64 of seed ‖ public key>`, as Nix writes secret keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, STANDARD.encode(self.key.to_keypair_bytes()))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .field("public", &self.to_public().to_string())
            .finish_non_exhaustive()
    }
}

impl std::str::FromStr for SecretKey {
    type Err = SigningError;

    /// Parses a secret key, as [`SecretKey::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl PublicKey {
    /// Parses a public key, `<name>:<base64 of 32 bytes>`. Surrounding whitespace is ignored.
    pub fn parse(s: &str) -> Result<Self, SigningError> {
        let (name, bytes) = split_key(s.trim())?;
        let bytes: [u8; 32] = sized(bytes, "public key")?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| SigningError::InvalidPublicKey)?;
        Ok(Self { name: name.to_owned(), key })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `signature` (`<name>:<base64>`, as in a `Sig:` line) is this key's signature of
    /// `fingerprint`. A signature by another key name, or malformed, is not.
    pub fn verify(&self, fingerprint: &str, signature: &str) -> bool {
        let Some((name, data)) = signature.split_once(':') else {
            return false;
        };
        if name != self.name {
            return false;
        }
        let Ok(bytes) = STANDARD.decode(data) else {
            return false;
        };
        let Ok(bytes) = <[u8; 64]>::try_from(bytes) else {
            return false;
        };
        self.key.verify_strict(fingerprint.as_bytes(), &Signature::from_bytes(&bytes)).is_ok()
    }
}

impl fmt::Display for PublicKey {
    /// `<name>:<base64 of 32 bytes>`, as Nix writes public keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, STANDARD.encode(self.key.as_bytes()))
    }
}

impl std::str::FromStr for PublicKey {
    type Err = SigningError;

    /// Parses a public key, as [`PublicKey::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Signs `info` with `key`: replaces any signature by a key of the same name with a new one.
/// Fails only if the narinfo has no valid fingerprint (its `NarHash` is not a SHA-256).
pub fn sign_narinfo(info: &mut NarInfo, key: &SecretKey) -> Result<(), NarInfoError> {
    let signature = key.sign(&info.fingerprint()?);
    let prefix = format!("{}:", key.name);
    info.sigs.retain(|sig| !sig.starts_with(&prefix));
    info.sigs.push(signature);
    Ok(())
}

/// Whether at least one of `info`'s signatures is valid under one of `keys`. A narinfo without a
/// valid fingerprint verifies under no key.
pub fn verify_narinfo(info: &NarInfo, keys: &[PublicKey]) -> bool {
    let Ok(fingerprint) = info.fingerprint() else {
        return false;
    };
    info.sigs.iter().any(|sig| keys.iter().any(|key| key.verify(&fingerprint, sig)))
}

/// Splits `<name>:<base64>` and decodes the base64.
fn split_key(s: &str) -> Result<(&str, Vec<u8>), SigningError> {
    let (name, data) = s.split_once(':').ok_or(SigningError::MissingColon)?;
    validate_name(name)?;
    let bytes = STANDARD.decode(data).map_err(|_| SigningError::InvalidBase64)?;
    Ok((name, bytes))
}

/// Checks a key name: 1 to [`MAX_KEY_NAME_LEN`] bytes, no `:`, whitespace or control characters
/// (it goes in `Sig:` lines and key files).
fn validate_name(name: &str) -> Result<(), SigningError> {
    let bad = |c: char| c == ':' || c.is_whitespace() || c.is_control();
    if name.is_empty() || name.len() > MAX_KEY_NAME_LEN || name.contains(bad) {
        return Err(SigningError::InvalidName);
    }
    Ok(())
}

/// Checks that `bytes` has exactly `N` bytes.
fn sized<const N: usize>(bytes: Vec<u8>, what: &'static str) -> Result<[u8; N], SigningError> {
    let len = bytes.len();
    bytes.try_into().map_err(|_| SigningError::BadLength { what, len, expected: N })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::store_path::StorePath;

    fn info() -> NarInfo {
        let path = StorePath::from_base_name("1vnwanv5bk8pm7cabl2adpqxssm3p0ai-hello").unwrap();
        let mut info = NarInfo::new(path, "nar/x.nar".into(), &[7; 32], 1234);
        info.references.push("44jayy4l70viaqn6lan7wal5v0y2px85-lib".into());
        info
    }

    #[test]
    fn keys_round_trip_through_text() {
        let secret = SecretKey::generate("cache.example.org-1").unwrap();
        let text = secret.to_string();
        let parsed = SecretKey::parse(&format!("{text}\n")).unwrap();
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.name(), "cache.example.org-1");
        let public = secret.to_public();
        assert_eq!(PublicKey::parse(&public.to_string()).unwrap(), public);
        assert_eq!(public.to_string().len(), "cache.example.org-1:".len() + 44);
        assert!(!format!("{secret:?}").contains(&text[20..]), "Debug hides the secret");
    }

    #[test]
    fn sign_then_verify() {
        let secret = SecretKey::generate("k").unwrap();
        let other = SecretKey::generate("k").unwrap().to_public();
        let public = secret.to_public();
        let mut info = info();
        assert!(!verify_narinfo(&info, std::slice::from_ref(&public)));
        sign_narinfo(&mut info, &secret).unwrap();
        sign_narinfo(&mut info, &secret).unwrap();
        assert_eq!(info.sigs.len(), 1, "re-signing replaces the key's signature");
        assert!(verify_narinfo(&info, std::slice::from_ref(&public)));
        assert!(verify_narinfo(&info, &[other.clone(), public.clone()]));
        assert!(!verify_narinfo(&info, &[other]), "same name, other key");
        assert!(!verify_narinfo(&info, &[]));

        let sig = info.sigs[0].clone();
        let fingerprint = info.fingerprint().unwrap();
        assert!(public.verify(&fingerprint, &sig));
        assert!(!public.verify(&format!("{fingerprint}x"), &sig));
        assert!(!public.verify(&fingerprint, &sig.replacen("k:", "j:", 1)), "other name");
        assert!(!public.verify(&fingerprint, "k:!!!"));
        assert!(!public.verify(&fingerprint, "k:AAAA"));
        assert!(!public.verify(&fingerprint, "no colon"));

        // Anything signed changes the fingerprint: size, hash, references, path.
        let mut tampered = info.clone();
        tampered.nar_size += 1;
        assert!(!verify_narinfo(&tampered, std::slice::from_ref(&public)));
        let mut tampered = info.clone();
        tampered.references.clear();
        assert!(!verify_narinfo(&tampered, std::slice::from_ref(&public)));
        let mut tampered = info.clone();
        tampered.nar_hash = crate::nix::hash::format_sha256(&[8; 32]);
        assert!(!verify_narinfo(&tampered, std::slice::from_ref(&public)));
        // Not signed: URL, compression, file hash and size.
        let mut unsigned = info.clone();
        unsigned.url = "elsewhere".into();
        unsigned.compression = Some("zstd".into());
        assert!(verify_narinfo(&unsigned, &[public]));
    }

    #[test]
    fn rejects_malformed_keys() {
        let secret = SecretKey::generate("k").unwrap();
        let public = secret.to_public().to_string();
        let secret = secret.to_string();
        assert_eq!(SecretKey::parse("k"), Err(SigningError::MissingColon));
        assert_eq!(SecretKey::parse(&secret[1..]), Err(SigningError::InvalidName));
        assert_eq!(PublicKey::parse("a b:AAAA"), Err(SigningError::InvalidName));
        assert_eq!(PublicKey::parse("k:!!!!"), Err(SigningError::InvalidBase64));
        assert_eq!(
            SecretKey::parse(&public),
            Err(SigningError::BadLength { what: "secret key", len: 32, expected: 64 })
        );
        assert_eq!(
            PublicKey::parse(&secret),
            Err(SigningError::BadLength { what: "public key", len: 64, expected: 32 })
        );
        // A secret key whose public half is another key's.
        let other = SecretKey::generate("k").unwrap().to_public();
        let mut bytes = STANDARD.decode(&secret[2..]).unwrap();
        bytes[32..].copy_from_slice(&STANDARD.decode(&other.to_string()[2..]).unwrap());
        assert_eq!(
            SecretKey::parse(&format!("k:{}", STANDARD.encode(bytes))),
            Err(SigningError::KeyMismatch)
        );
        assert_eq!(SecretKey::generate("").map(|_| ()), Err(SigningError::InvalidName));
        assert_eq!(SecretKey::generate("a:b").map(|_| ()), Err(SigningError::InvalidName));
    }
}
