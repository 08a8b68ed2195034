//! SHA-256 hashes as Nix writes them in text: `sha256:<nixbase32>`, and the other forms Nix reads.
//!
//! Nix prints `NarHash` and `FileHash` as `sha256:` followed by 52 nixbase32 characters. It also
//! reads, and some tools write, `sha256:` followed by 64 hex digits or by 44 base64 characters, and
//! the SRI form `sha256-<base64>`. [`parse_sha256`] accepts all four; [`format_sha256`] prints the
//! first, canonical one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::nixbase32;

/// The length of a SHA-256 digest, in bytes.
pub const SHA256_LEN: usize = 32;

/// Why a string is not a SHA-256 hash in one of Nix's forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// Neither `sha256:` nor `sha256-` starts the string (another algorithm, or no prefix).
    #[error("not a sha256 hash: expected a `sha256:` or `sha256-` prefix")]
    NotSha256,
    /// The digest after `sha256:` has a length that is none of nixbase32, hex or base64's.
    #[error("a sha256 digest of {0} characters is neither nixbase32 (52), hex (64) nor base64 (44)")]
    BadLength(usize),
    /// The digest has the right length but is not valid in its encoding.
    #[error("invalid {encoding} in sha256 digest")]
    BadEncoding {
        /// `nixbase32`, `hex` or `base64`.
        encoding: &'static str,
    },
}

/// Parses a SHA-256 hash written as `sha256:<nixbase32>`, `sha256:<hex>`, `sha256:<base64>` or
/// `sha256-<base64>` (SRI), returning its digest.
pub fn parse_sha256(s: &str) -> Result<[u8; SHA256_LEN], HashError> {
    if let Some(digest) = s.strip_prefix("sha256-") {
        return decode_base64(digest);
    }
    let digest = s.strip_prefix("sha256:").ok_or(HashError::NotSha256)?;
    let bytes = match digest.len() {
        52 => nixbase32::decode(digest).map_err(|_| HashError::BadEncoding { encoding: "nixbase32" })?,
        64 => hex::decode(digest).map_err(|_| HashError::BadEncoding { encoding: "hex" })?,
        44 => return decode_base64(digest),
        len => return Err(HashError::BadLength(len)),
    };
    bytes.try_into().map_err(|_| HashError::BadEncoding { encoding: "nixbase32" })
}

/// Decodes a padded base64 SHA-256 digest.
fn decode_base64(digest: &str) -> Result<[u8; SHA256_LEN], HashError> {
    if digest.len() != 44 {
        return Err(HashError::BadLength(digest.len()));
    }
    let bytes = STANDARD.decode(digest).map_err(|_| HashError::BadEncoding { encoding: "base64" })?;
    bytes.try_into().map_err(|_| HashError::BadEncoding { encoding: "base64" })
}

/// Formats a SHA-256 digest as Nix prints it: `sha256:<52 nixbase32 characters>`.
pub fn format_sha256(digest: &[u8; SHA256_LEN]) -> String {
    format!("sha256:{}", nixbase32::encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn digest() -> [u8; 32] {
        Sha256::digest(b"nargate").into()
    }

    #[test]
    fn accepts_all_four_forms() {
        let d = digest();
        let forms = [
            format_sha256(&d),
            format!("sha256:{}", hex::encode(d)),
            format!("sha256:{}", hex::encode_upper(d)),
            format!("sha256:{}", STANDARD.encode(d)),
            format!("sha256-{}", STANDARD.encode(d)),
        ];
        for form in forms {
            assert_eq!(parse_sha256(&form), Ok(d), "{form}");
        }
        assert_eq!(format_sha256(&d).len(), "sha256:".len() + 52);
    }

    #[test]
    fn rejects_malformed() {
        let d = digest();
        let b32 = nixbase32::encode(&d);
        assert_eq!(parse_sha256(&b32), Err(HashError::NotSha256));
        assert_eq!(parse_sha256(&format!("sha512:{b32}")), Err(HashError::NotSha256));
        assert_eq!(parse_sha256(&format!("md5:{b32}")), Err(HashError::NotSha256));
        assert_eq!(parse_sha256("sha256:"), Err(HashError::BadLength(0)));
        assert_eq!(parse_sha256(&format!("sha256:{b32}0")), Err(HashError::BadLength(53)));
        let mut bad = b32.clone();
        bad.replace_range(51..52, "e");
        assert_eq!(
            parse_sha256(&format!("sha256:{bad}")),
            Err(HashError::BadEncoding { encoding: "nixbase32" })
        );
        assert_eq!(
            parse_sha256(&format!("sha256:{}", "g".repeat(64))),
            Err(HashError::BadEncoding { encoding: "hex" })
        );
        assert_eq!(
            parse_sha256(&format!("sha256-{}", "!".repeat(44))),
            Err(HashError::BadEncoding { encoding: "base64" })
        );
        assert_eq!(parse_sha256("sha256-AAAA"), Err(HashError::BadLength(4)));
        // 44 base64 characters that decode to 33 bytes are not a sha256.
        assert!(parse_sha256(&format!("sha256:{}", "A".repeat(44))).is_err());
    }
}
