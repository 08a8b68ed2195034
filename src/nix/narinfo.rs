//! The `.narinfo` format: what a binary cache says about one store path.
//!
//! A narinfo is lines of `Key: value`. [`NarInfo::render`] writes the fields Nix knows in the order
//! Nix writes them — `StorePath`, `URL`, `Compression`, `FileHash`, `FileSize`, `NarHash`,
//! `NarSize`, `References` (always present, with its trailing space when empty), `Deriver`,
//! `System`, `Sig` (one line each), `CA` — so that parsing then rendering a narinfo Nix wrote gives
//! back the same bytes.
//!
//! Decisions where Nix's parser is silent or lax:
//!
//! - **Unknown keys** are kept, in order, in [`NarInfo::extra`] and rendered after the known ones,
//!   so nothing a newer Nix (or another tool) wrote is lost. Nix itself ignores them.
//! - Single-valued fields may appear only once (Nix silently keeps the last); `Sig` may repeat;
//!   unknown keys may repeat.
//! - Fields may come in any order (Nix's parser accepts that); rendering puts them in Nix's order.
//! - A missing final newline is accepted (Nix refuses it); rendering adds it.
//! - `NarHash` must be a SHA-256 in one of the forms [`hash::parse_sha256`] reads, kept as written;
//!   [`NarInfo::fingerprint`] uses its canonical `sha256:<nixbase32>` form, as Nix does.
//!   `FileHash`, `Compression`, `System`, `CA` and `Sig` values are kept as opaque strings.
//! - `StorePath`, each of `References` and `Deriver` (unless `unknown-deriver`, which Nix writes for
//!   "none" and which is kept as written) must be valid store paths.
//! - Input over [`MAX_NARINFO_LEN`] bytes is refused before it is parsed.

use std::fmt;

use super::hash::{self, HashError, SHA256_LEN};
use super::store_path::{STORE_DIR, StorePath, StorePathError};

/// The largest narinfo [`NarInfo::parse`] accepts: 1 MiB.
pub const MAX_NARINFO_LEN: usize = 1 << 20;

/// The `Deriver` value with which Nix says there is none.
pub const UNKNOWN_DERIVER: &str = "unknown-deriver";

/// Why a narinfo is invalid. `line` numbers count from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NarInfoError {
    /// The input is longer than [`MAX_NARINFO_LEN`].
    #[error("narinfo is {len} bytes long, more than {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// [`MAX_NARINFO_LEN`].
        max: usize,
    },
    /// A line that is not `Key: value` (no `: `, an empty key, or a key with `:`).
    #[error("line {line}: not a `Key: value` line")]
    MalformedLine {
        /// The line number.
        line: usize,
    },
    /// A single-valued field given twice.
    #[error("line {line}: duplicate {field} field")]
    DuplicateField {
        /// The field's key.
        field: &'static str,
        /// The line number of the second occurrence.
        line: usize,
    },
    /// A required field (`StorePath`, `URL`, `NarHash`, `NarSize`) is missing.
    #[error("missing {0} field")]
    MissingField(&'static str),
    /// A required field is empty (`URL`).
    #[error("line {line}: empty {field} field")]
    EmptyField {
        /// The field's key.
        field: &'static str,
        /// The line number.
        line: usize,
    },
    /// A size that is not a decimal u64, or a `NarSize` of 0.
    #[error("line {line}: invalid {field} number")]
    InvalidNumber {
        /// The field's key.
        field: &'static str,
        /// The line number.
        line: usize,
    },
    /// `StorePath`, one of `References` or `Deriver` is not a valid store path.
    #[error("invalid store path in {field}: {source}")]
    InvalidStorePath {
        /// The field's key.
        field: &'static str,
        /// Why it is invalid.
        source: StorePathError,
    },
    /// `NarHash` is not a SHA-256 hash Nix would read.
    #[error("invalid {field}: {source}")]
    InvalidHash {
        /// The field's key.
        field: &'static str,
        /// Why it is invalid.
        source: HashError,
    },
}

/// A parsed narinfo. See the [module documentation](self) for the format and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// `StorePath`: the store path described.
    pub store_path: StorePath,
    /// `URL`: where the (compressed) NAR is, relative to the cache, e.g. `nar/<hash>.nar.xz`.
    pub url: String,
    /// `Compression`: `none`, `xz`, `zstd`, `bzip2`, `br`, `lz4`, `gzip`…; when absent, Nix
    /// assumes `bzip2` (see [`NarInfo::compression_or_default`]).
    pub compression: Option<String>,
    /// `FileHash`: the hash of the file at `URL`, as written (e.g. `sha256:<nixbase32>`).
    pub file_hash: Option<String>,
    /// `FileSize`: the size of the file at `URL`.
    pub file_size: Option<u64>,
    /// `NarHash`: the SHA-256 of the uncompressed NAR, as written (normally `sha256:<nixbase32>`).
    pub nar_hash: String,
    /// `NarSize`: the size of the uncompressed NAR (never 0).
    pub nar_size: u64,
    /// `References`: the store paths this one refers to, as base names (`<hash>-<name>`).
    pub references: Vec<String>,
    /// `Deriver`: the base name of the derivation that built it, or `unknown-deriver`.
    pub deriver: Option<String>,
    /// `System`: the platform it was built for (old Nix versions write it).
    pub system: Option<String>,
    /// `Sig`: signatures, `<key name>:<base64>`, in the order given.
    pub sigs: Vec<String>,
    /// `CA`: the content address, for content-addressed paths (e.g. `fixed:r:sha256:<hash>`).
    pub ca: Option<String>,
    /// Fields with keys this parser does not know, in order, rendered after the known ones.
    pub extra: Vec<(String, String)>,
}

impl NarInfo {
    /// A narinfo with the required fields, the canonical `sha256:<nixbase32>` NarHash, no
    /// references and nothing else.
    pub fn new(store_path: StorePath, url: String, nar_hash: &[u8; SHA256_LEN], nar_size: u64) -> Self {
        Self {
            store_path,
            url,
            compression: None,
            file_hash: None,
            file_size: None,
            nar_hash: hash::format_sha256(nar_hash),
            nar_size,
            references: Vec::new(),
            deriver: None,
            system: None,
            sigs: Vec::new(),
            ca: None,
            extra: Vec::new(),
        }
    }

    /// Parses a narinfo. See the [module documentation](self) for what is accepted.
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        if text.len() > MAX_NARINFO_LEN {
            return Err(NarInfoError::TooLarge { len: text.len(), max: MAX_NARINFO_LEN });
        }
        let mut fields = Fields::default();
        let body = text.strip_suffix('\n').unwrap_or(text);
        if !body.is_empty() {
            for (index, line) in body.split('\n').enumerate() {
                fields.add(index + 1, line)?;
            }
        }
        fields.finish()
    }

    /// Renders the narinfo as Nix writes it (see the [module documentation](self)). Values are
    /// written as they are: ones that [`parse`](Self::parse) returned never hold a newline.
    pub fn render(&self) -> String {
        self.to_string()
    }

    /// The NAR's SHA-256 digest, from `NarHash` in any form [`hash::parse_sha256`] reads.
    pub fn nar_hash_digest(&self) -> Result<[u8; SHA256_LEN], NarInfoError> {
        hash::parse_sha256(&self.nar_hash)
            .map_err(|source| NarInfoError::InvalidHash { field: "NarHash", source })
    }

    /// The string Nix signs for this narinfo:
    /// `1;<store path>;<NarHash as sha256:nixbase32>;<NarSize>;<references as full store paths,
    /// sorted, comma-separated>`.
    pub fn fingerprint(&self) -> Result<String, NarInfoError> {
        let nar_hash = hash::format_sha256(&self.nar_hash_digest()?);
        let mut references: Vec<String> =
            self.references.iter().map(|r| format!("{STORE_DIR}/{r}")).collect();
        references.sort();
        Ok(format!("1;{};{};{};{}", self.store_path, nar_hash, self.nar_size, references.join(",")))
    }

    /// The compression of the file at `URL`: `Compression`, or `bzip2` when absent, as Nix reads it.
    pub fn compression_or_default(&self) -> &str {
        self.compression.as_deref().unwrap_or("bzip2")
    }

    /// The references as store paths.
    pub fn reference_paths(&self) -> Result<Vec<StorePath>, NarInfoError> {
        self.references.iter().map(|r| parse_base_name("References", r)).collect()
    }
}

impl fmt::Display for NarInfo {
    /// Renders the narinfo; see [`NarInfo::render`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StorePath: {}", self.store_path)?;
        writeln!(f, "URL: {}", self.url)?;
        if let Some(compression) = &self.compression {
            writeln!(f, "Compression: {compression}")?;
        }
        if let Some(file_hash) = &self.file_hash {
            writeln!(f, "FileHash: {file_hash}")?;
        }
        if let Some(file_size) = self.file_size {
            writeln!(f, "FileSize: {file_size}")?;
        }
        writeln!(f, "NarHash: {}", self.nar_hash)?;
        writeln!(f, "NarSize: {}", self.nar_size)?;
        writeln!(f, "References: {}", self.references.join(" "))?;
        if let Some(deriver) = &self.deriver {
            writeln!(f, "Deriver: {deriver}")?;
        }
        if let Some(system) = &self.system {
            writeln!(f, "System: {system}")?;
        }
        for sig in &self.sigs {
            writeln!(f, "Sig: {sig}")?;
        }
        if let Some(ca) = &self.ca {
            writeln!(f, "CA: {ca}")?;
        }
        for (key, value) in &self.extra {
            writeln!(f, "{key}: {value}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for NarInfo {
    type Err = NarInfoError;

    /// Parses a narinfo, as [`NarInfo::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The fields of a narinfo as they are parsed, before the required ones are checked.
#[derive(Default)]
struct Fields {
    store_path: Option<StorePath>,
    url: Option<String>,
    compression: Option<String>,
    file_hash: Option<String>,
    file_size: Option<u64>,
    nar_hash: Option<String>,
    nar_size: Option<u64>,
    references: Option<Vec<String>>,
    deriver: Option<String>,
    system: Option<String>,
    sigs: Vec<String>,
    ca: Option<String>,
    extra: Vec<(String, String)>,
}

impl Fields {
    /// Parses line number `line` into its field.
    fn add(&mut self, line: usize, text: &str) -> Result<(), NarInfoError> {
        let (key, value) = text
            .split_once(": ")
            .filter(|(key, _)| !key.is_empty() && !key.contains(':'))
            .ok_or(NarInfoError::MalformedLine { line })?;
        match key {
            "StorePath" => {
                let path = StorePath::parse(value)
                    .map_err(|source| NarInfoError::InvalidStorePath { field: "StorePath", source })?;
                set_once(&mut self.store_path, path, "StorePath", line)
            }
            "URL" => {
                if value.is_empty() {
                    return Err(NarInfoError::EmptyField { field: "URL", line });
                }
                set_once(&mut self.url, value.to_owned(), "URL", line)
            }
            "Compression" => set_once(&mut self.compression, value.to_owned(), "Compression", line),
            "FileHash" => set_once(&mut self.file_hash, value.to_owned(), "FileHash", line),
            "FileSize" => {
                set_once(&mut self.file_size, parse_u64(value, "FileSize", line)?, "FileSize", line)
            }
            "NarHash" => {
                hash::parse_sha256(value)
                    .map_err(|source| NarInfoError::InvalidHash { field: "NarHash", source })?;
                set_once(&mut self.nar_hash, value.to_owned(), "NarHash", line)
            }
            "NarSize" => match parse_u64(value, "NarSize", line)? {
                0 => Err(NarInfoError::InvalidNumber { field: "NarSize", line }),
                size => set_once(&mut self.nar_size, size, "NarSize", line),
            },
            "References" => {
                let references = value
                    .split(' ')
                    .filter(|r| !r.is_empty())
                    .map(|r| parse_base_name("References", r).map(|_| r.to_owned()))
                    .collect::<Result<_, _>>()?;
                set_once(&mut self.references, references, "References", line)
            }
            "Deriver" => {
                if value != UNKNOWN_DERIVER {
                    parse_base_name("Deriver", value)?;
                }
                set_once(&mut self.deriver, value.to_owned(), "Deriver", line)
            }
            "System" => set_once(&mut self.system, value.to_owned(), "System", line),
            "Sig" => {
                self.sigs.push(value.to_owned());
                Ok(())
            }
            "CA" => set_once(&mut self.ca, value.to_owned(), "CA", line),
            _ => {
                self.extra.push((key.to_owned(), value.to_owned()));
                Ok(())
            }
        }
    }

    /// Checks the required fields and makes the [`NarInfo`].
    fn finish(self) -> Result<NarInfo, NarInfoError> {
        Ok(NarInfo {
            store_path: self.store_path.ok_or(NarInfoError::MissingField("StorePath"))?,
            url: self.url.ok_or(NarInfoError::MissingField("URL"))?,
            compression: self.compression,
            file_hash: self.file_hash,
            file_size: self.file_size,
            nar_hash: self.nar_hash.ok_or(NarInfoError::MissingField("NarHash"))?,
            nar_size: self.nar_size.ok_or(NarInfoError::MissingField("NarSize"))?,
            references: self.references.unwrap_or_default(),
            deriver: self.deriver,
            system: self.system,
            sigs: self.sigs,
            ca: self.ca,
            extra: self.extra,
        })
    }
}

/// Sets a single-valued field, refusing a second value.
fn set_once<T>(slot: &mut Option<T>, value: T, field: &'static str, line: usize) -> Result<(), NarInfoError> {
    if slot.is_some() {
        return Err(NarInfoError::DuplicateField { field, line });
    }
    *slot = Some(value);
    Ok(())
}

/// Parses a decimal u64: ASCII digits only (no sign, no spaces), no overflow.
fn parse_u64(value: &str, field: &'static str, line: usize) -> Result<u64, NarInfoError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NarInfoError::InvalidNumber { field, line });
    }
    value.parse().map_err(|_| NarInfoError::InvalidNumber { field, line })
}

/// Parses a store path base name found in `field`.
fn parse_base_name(field: &'static str, value: &str) -> Result<StorePath, NarInfoError> {
    StorePath::from_base_name(value).map_err(|source| NarInfoError::InvalidStorePath { field, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::nixbase32;

    const H1: &str = "1vnwanv5bk8pm7cabl2adpqxssm3p0ai";
    const H2: &str = "44jayy4l70viaqn6lan7wal5v0y2px85";
    const NAR_HASH: &str = "sha256:1i3998avbc7lbbmgmrcc99wdm94rl1qi4amm3qbgdgn0w4k8l1v7";

    fn sample() -> String {
        format!(
            "StorePath: /nix/store/{H1}-app\n\
             URL: nar/x.nar.xz\n\
             Compression: xz\n\
             FileHash: sha256:0000000000000000000000000000000000000000000000000000\n\
             FileSize: 100\n\
             NarHash: {NAR_HASH}\n\
             NarSize: 872\n\
             References: {H2}-lib {H1}-app\n\
             Deriver: {H2}-app.drv\n\
             System: x86_64-linux\n\
             Sig: k1:AAAA\n\
             Sig: k2:BBBB\n\
             CA: fixed:r:sha256:abc\n"
        )
    }

    #[test]
    fn parses_every_field_and_renders_identically() {
        let text = sample();
        let info = NarInfo::parse(&text).unwrap();
        assert_eq!(info.store_path.name(), "app");
        assert_eq!(info.url, "nar/x.nar.xz");
        assert_eq!(info.compression.as_deref(), Some("xz"));
        assert_eq!(info.file_size, Some(100));
        assert_eq!(info.nar_size, 872);
        assert_eq!(info.references, vec![format!("{H2}-lib"), format!("{H1}-app")]);
        assert_eq!(info.deriver, Some(format!("{H2}-app.drv")));
        assert_eq!(info.system.as_deref(), Some("x86_64-linux"));
        assert_eq!(info.sigs, vec!["k1:AAAA", "k2:BBBB"]);
        assert_eq!(info.ca.as_deref(), Some("fixed:r:sha256:abc"));
        assert!(info.extra.is_empty());
        assert_eq!(info.render(), text);
        assert_eq!(text.parse::<NarInfo>().unwrap(), info);
    }

    #[test]
    fn minimal_narinfo() {
        let text = format!("StorePath: /nix/store/{H1}-a\nURL: u\nNarHash: {NAR_HASH}\nNarSize: 1\n");
        let info = NarInfo::parse(&text).unwrap();
        assert_eq!(info.compression_or_default(), "bzip2");
        // `References: ` is always written, with its trailing space.
        assert_eq!(info.render(), format!("{text}References: \n"));
        // No final newline is accepted too.
        assert_eq!(NarInfo::parse(text.trim_end()).unwrap(), info);
        // Fields in another order are accepted, rendered in Nix's order.
        let shuffled = format!("NarSize: 1\nNarHash: {NAR_HASH}\nURL: u\nStorePath: /nix/store/{H1}-a\n");
        assert_eq!(NarInfo::parse(&shuffled).unwrap(), info);
    }

    #[test]
    fn keeps_unknown_fields_in_order() {
        let text = format!("{}X-Future: 1\nAnother: a: b\nX-Future: 2\nEmpty: \n", sample());
        let info = NarInfo::parse(&text).unwrap();
        let extra: Vec<(&str, &str)> = info.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(extra, [("X-Future", "1"), ("Another", "a: b"), ("X-Future", "2"), ("Empty", "")]);
        assert_eq!(info.render(), text);
        // Unknown fields placed among known ones move after them.
        let mixed = sample().replacen("URL:", "Zzz: top\nURL:", 1);
        assert_eq!(NarInfo::parse(&mixed).unwrap().render(), format!("{}Zzz: top\n", sample()));
    }

    #[test]
    fn fingerprint_sorts_full_reference_paths() {
        let info = NarInfo::parse(&sample()).unwrap();
        assert_eq!(
            info.fingerprint().unwrap(),
            format!("1;/nix/store/{H1}-app;{NAR_HASH};872;/nix/store/{H1}-app,/nix/store/{H2}-lib")
        );
        let mut none = info.clone();
        none.references.clear();
        assert_eq!(none.fingerprint().unwrap(), format!("1;/nix/store/{H1}-app;{NAR_HASH};872;"));
    }

    #[test]
    fn nar_hash_in_other_forms() {
        let info = NarInfo::parse(&sample()).unwrap();
        let digest = info.nar_hash_digest().unwrap();
        assert_eq!(nixbase32::encode(&digest), NAR_HASH["sha256:".len()..]);
        let hex_form = sample().replace(NAR_HASH, &format!("sha256:{}", hex::encode(digest)));
        let hex_info = NarInfo::parse(&hex_form).unwrap();
        assert_eq!(hex_info.nar_hash_digest().unwrap(), digest);
        // The fingerprint always uses nixbase32; the rendering keeps what was written.
        assert_eq!(hex_info.fingerprint(), info.fingerprint());
        assert_eq!(hex_info.render(), hex_form);
        use base64::Engine as _;
        let sri = format!("sha256-{}", base64::engine::general_purpose::STANDARD.encode(digest));
        let sri_info = NarInfo::parse(&sample().replace(NAR_HASH, &sri)).unwrap();
        assert_eq!(sri_info.nar_hash_digest().unwrap(), digest);
        let mut bad = info.clone();
        bad.nar_hash = "md5:abc".into();
        assert!(matches!(bad.fingerprint(), Err(NarInfoError::InvalidHash { .. })));
    }

    #[test]
    fn new_builds_a_minimal_narinfo() {
        let path = StorePath::from_base_name(&format!("{H1}-a")).unwrap();
        let digest = hash::parse_sha256(NAR_HASH).unwrap();
        let info = NarInfo::new(path, "nar/x.nar".into(), &digest, 8);
        assert_eq!(info.nar_hash, NAR_HASH);
        assert_eq!(NarInfo::parse(&info.render()).unwrap(), info);
    }

    #[test]
    fn rejects_malformed() {
        use NarInfoError::*;
        let s = sample();
        let cases: Vec<(String, NarInfoError)> = vec![
            (s.replace(&format!("StorePath: /nix/store/{H1}-app\n"), ""), MissingField("StorePath")),
            (s.replace("URL: nar/x.nar.xz\n", ""), MissingField("URL")),
            (s.replace(&format!("NarHash: {NAR_HASH}\n"), ""), MissingField("NarHash")),
            (s.replace("NarSize: 872\n", ""), MissingField("NarSize")),
            (String::new(), MissingField("StorePath")),
            (s.replace("URL: nar/x.nar.xz", "URL: "), EmptyField { field: "URL", line: 2 }),
            (format!("{s}URL: again\n"), DuplicateField { field: "URL", line: 14 }),
            (format!("{s}NarSize: 1\n"), DuplicateField { field: "NarSize", line: 14 }),
            (format!("{s}References: \n"), DuplicateField { field: "References", line: 14 }),
            (format!("{s}CA: x\n"), DuplicateField { field: "CA", line: 14 }),
            (s.replace("URL: ", "URL:"), MalformedLine { line: 2 }),
            (s.replace("URL: nar/x.nar.xz\n", "URL: nar/x.nar.xz\n\n"), MalformedLine { line: 3 }),
            (format!("{s}no colon here\n"), MalformedLine { line: 14 }),
            (format!("{s}: empty key\n"), MalformedLine { line: 14 }),
            (format!("{s}a:b: c\n"), MalformedLine { line: 14 }),
            (s.replace("NarSize: 872", "NarSize: 0"), InvalidNumber { field: "NarSize", line: 7 }),
            (s.replace("NarSize: 872", "NarSize: -1"), InvalidNumber { field: "NarSize", line: 7 }),
            (s.replace("NarSize: 872", "NarSize: +1"), InvalidNumber { field: "NarSize", line: 7 }),
            (s.replace("NarSize: 872", "NarSize: 1 "), InvalidNumber { field: "NarSize", line: 7 }),
            (
                s.replace("NarSize: 872", "NarSize: 99999999999999999999"),
                InvalidNumber { field: "NarSize", line: 7 },
            ),
            (s.replace("FileSize: 100", "FileSize: x"), InvalidNumber { field: "FileSize", line: 5 }),
            (s.replace("FileSize: 100", "FileSize: "), InvalidNumber { field: "FileSize", line: 5 }),
            (
                s.replace("/nix/store/", "/gnu/store/"),
                InvalidStorePath { field: "StorePath", source: StorePathError::NotInStore },
            ),
            (
                s.replace(&format!("{H2}-lib"), "lib"),
                InvalidStorePath { field: "References", source: StorePathError::TooShort },
            ),
            (
                s.replace(&format!("{H2}-lib"), &format!("/nix/store/{H2}-lib")),
                InvalidStorePath { field: "References", source: StorePathError::MissingDash },
            ),
            (
                s.replace(&format!("Deriver: {H2}"), "Deriver: x"),
                InvalidStorePath { field: "Deriver", source: StorePathError::TooShort },
            ),
            (
                s.replace(NAR_HASH, "sha512:abc"),
                InvalidHash { field: "NarHash", source: HashError::NotSha256 },
            ),
            (
                s.replace(NAR_HASH, &NAR_HASH[..40]),
                InvalidHash { field: "NarHash", source: HashError::BadLength(33) },
            ),
        ];
        for (text, error) in cases {
            assert_eq!(NarInfo::parse(&text), Err(error), "{text}");
        }
        let huge = format!("{s}X: {}\n", "a".repeat(MAX_NARINFO_LEN));
        assert!(matches!(NarInfo::parse(&huge), Err(TooLarge { max: MAX_NARINFO_LEN, .. })));
    }

    #[test]
    fn lenient_where_nix_is() {
        let s = sample();
        // Extra spaces between references, `unknown-deriver`, no references line.
        let spaced = s.replace(&format!("{H2}-lib {H1}"), &format!(" {H2}-lib  {H1}"));
        assert_eq!(NarInfo::parse(&spaced).unwrap(), NarInfo::parse(&s).unwrap());
        let unknown = s.replace(&format!("Deriver: {H2}-app.drv"), "Deriver: unknown-deriver");
        assert_eq!(NarInfo::parse(&unknown).unwrap().render(), unknown);
        let mut info = NarInfo::parse(&s).unwrap();
        info.references.clear();
        let no_refs = s.replace(&format!("References: {H2}-lib {H1}-app\n"), "");
        assert_eq!(NarInfo::parse(&no_refs).unwrap(), info);
        assert_eq!(info.reference_paths().unwrap(), vec![]);
    }
}
