//! Client key pairs, kept in the backend (`credentials/<access key id>`, DESIGN.md "Data model"),
//! so that every gateway over one backend accepts the same keys.
//!
//! Each pair is one record (magic `NGCR`, version 1): the secret, the creation time and an
//! optional description. There is no built-in default secret: `nargate serve` either inserts the
//! pair its configuration names, or, on a backend that holds none, creates a random one and prints
//! it once ([`CredentialStore::ensure_initial`]). Secrets are looked up on every signed request,
//! so the gateway keeps a cache in front of [`CredentialStore::secret`].

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::backend::{BackendError, DynBackend, ListRequest, get_bytes, list_all};
use crate::castore::record::{self, RecordError, RecordKind};

/// The prefix of every credentials record.
pub const CREDENTIALS_PREFIX: &str = "credentials/";
/// The version of the credentials record.
pub const CREDENTIALS_VERSION: u8 = 1;

/// The first characters of every access key id [`CredentialStore::create`] makes.
const GENERATED_ID_PREFIX: &str = "NG";
/// The length of a generated access key id.
const GENERATED_ID_LEN: usize = 20;
/// The alphabet of generated access key ids.
const GENERATED_ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
/// The length of a generated secret.
const GENERATED_SECRET_LEN: usize = 40;
/// The alphabet of generated secrets (as AWS's secrets).
const GENERATED_SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
/// The description of the pair [`CredentialStore::ensure_initial`] creates.
const INITIAL_DESCRIPTION: &str = "created by the first `nargate serve` on this backend";

/// The lengths an access key id may have.
pub const ACCESS_KEY_ID_LEN: std::ops::RangeInclusive<usize> = 3..=128;
/// The lengths a secret access key may have.
pub const SECRET_LEN: std::ops::RangeInclusive<usize> = 8..=128;

/// An access key id and its secret. `Debug` does not show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// The access key id (public: it is in every signed request).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

impl KeyPair {
    /// A fresh random pair, as [`CredentialStore::create`] makes them.
    fn generate() -> KeyPair {
        KeyPair {
            access_key_id: format!(
                "{GENERATED_ID_PREFIX}{}",
                random_string(GENERATED_ID_ALPHABET, GENERATED_ID_LEN - GENERATED_ID_PREFIX.len())
            ),
            secret_access_key: random_string(GENERATED_SECRET_ALPHABET, GENERATED_SECRET_LEN),
        }
    }

    /// Checks both halves ([`validate_access_key_id`], [`validate_secret`]).
    pub fn validate(&self) -> Result<(), CredentialError> {
        validate_access_key_id(&self.access_key_id)?;
        validate_secret(&self.secret_access_key)
    }
}

/// What [`CredentialStore::list`] shows of a pair: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialInfo {
    /// The access key id.
    pub access_key_id: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// What the pair is for, if anyone said.
    pub description: Option<String>,
}

/// Why a credentials operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The access key id is not 3 to 128 characters of `A-Z a-z 0-9 _ - .`.
    #[error("invalid access key id {access_key_id:?}: {reason}")]
    InvalidAccessKeyId {
        /// The id given.
        access_key_id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The secret is not 8 to 128 printable ASCII characters (the secret itself is not shown).
    #[error("invalid secret access key: {reason}")]
    InvalidSecret {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A stored record does not read.
    #[error("credentials record {key}: {source}")]
    Record {
        /// Its backend key.
        key: String,
        /// Why it does not read.
        #[source]
        source: RecordError,
    },
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Checks that `id` can be an access key id: 3 to 128 characters of `A-Z a-z 0-9 _ - .`.
pub fn validate_access_key_id(id: &str) -> Result<(), CredentialError> {
    let invalid = |reason| Err(CredentialError::InvalidAccessKeyId { access_key_id: id.to_owned(), reason });
    if !ACCESS_KEY_ID_LEN.contains(&id.len()) {
        return invalid("it must be 3 to 128 characters long");
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
        return invalid("only letters, digits, `_`, `-` and `.` are allowed");
    }
    Ok(())
}

/// Checks that `secret` can be a secret access key: 8 to 128 printable ASCII characters (no
/// spaces or control characters).
pub fn validate_secret(secret: &str) -> Result<(), CredentialError> {
    if !SECRET_LEN.contains(&secret.len()) {
        return Err(CredentialError::InvalidSecret { reason: "it must be 8 to 128 characters long" });
    }
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CredentialError::InvalidSecret {
            reason: "only printable ASCII characters, without spaces, are allowed",
        });
    }
    Ok(())
}

/// The stored record of one pair (`credentials/<access key id>`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CredentialRecord {
    /// The secret access key.
    secret_access_key: String,
    /// Creation time, seconds since the Unix epoch.
    created: u64,
    /// What the pair is for.
    description: Option<String>,
}

impl CredentialRecord {
    fn encode(&self) -> Vec<u8> {
        record::encode(RecordKind::Credentials, CREDENTIALS_VERSION, self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let record: CredentialRecord = record::decode(RecordKind::Credentials, CREDENTIALS_VERSION, bytes)?;
        if validate_secret(&record.secret_access_key).is_err() {
            return Err(RecordError::Invalid {
                kind: RecordKind::Credentials,
                reason: "the stored secret is not a valid secret".to_owned(),
            });
        }
        Ok(record)
    }
}

/// The client key pairs of one backend.
#[derive(Debug, Clone)]
pub struct CredentialStore {
    backend: DynBackend,
}

impl CredentialStore {
    /// The key pairs kept in `backend`.
    pub fn new(backend: DynBackend) -> Self {
        CredentialStore { backend }
    }

    /// Creates and stores a fresh pair: an id of 20 characters `A-Z 0-9` starting with `NG`, and
    /// a secret of 40 characters `A-Z a-z 0-9 + /`, both from the operating system's CSPRNG.
    pub async fn create(&self, description: Option<&str>) -> Result<KeyPair, CredentialError> {
        let pair = KeyPair::generate();
        self.write(&pair, description).await?;
        Ok(pair)
    }

    /// Stores a pair given from outside (the configuration, the environment). Idempotent: a pair
    /// already stored with the same secret is left as it is (creation time and description
    /// included); one stored with another secret gets the new secret.
    pub async fn insert(&self, pair: &KeyPair) -> Result<(), CredentialError> {
        pair.validate()?;
        if self.secret(&pair.access_key_id).await?.as_deref() == Some(pair.secret_access_key.as_str()) {
            return Ok(());
        }
        self.write(pair, None).await
    }

    /// The secret of `access_key_id`, if the store holds it (an id that cannot be valid is never
    /// looked up: it has no secret).
    pub async fn secret(&self, access_key_id: &str) -> Result<Option<String>, CredentialError> {
        if validate_access_key_id(access_key_id).is_err() {
            return Ok(None);
        }
        let key = record_key(access_key_id);
        match get_bytes(self.backend.as_ref(), &key).await {
            Ok(bytes) => Ok(Some(read_record(&key, &bytes)?.secret_access_key)),
            Err(BackendError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every pair the store holds, in order of access key id, without secrets (one LIST, then one
    /// GET per pair).
    pub async fn list(&self) -> Result<Vec<CredentialInfo>, CredentialError> {
        let mut infos = vec![];
        for object in list_all(self.backend.as_ref(), CREDENTIALS_PREFIX).await? {
            let Some(id) = object.key.strip_prefix(CREDENTIALS_PREFIX) else { continue };
            let bytes = match get_bytes(self.backend.as_ref(), &object.key).await {
                Ok(bytes) => bytes,
                // Deleted since the listing.
                Err(BackendError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let record = read_record(&object.key, &bytes)?;
            infos.push(CredentialInfo {
                access_key_id: id.to_owned(),
                created: record.created,
                description: record.description,
            });
        }
        Ok(infos)
    }

    /// Deletes the pair of `access_key_id`; returns whether the store held it.
    pub async fn delete(&self, access_key_id: &str) -> Result<bool, CredentialError> {
        validate_access_key_id(access_key_id)?;
        let key = record_key(access_key_id);
        match self.backend.head(&key).await {
            Ok(_) => {}
            Err(BackendError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        self.backend.delete(&key).await?;
        Ok(true)
    }

    /// At `serve` start: inserts the configured pair if one is given (and returns `None`); else,
    /// if the store holds no pair, creates one and returns it, so that `serve` prints it once;
    /// else does nothing. Two gateways starting at once on an empty backend may each create one;
    /// both pairs then work.
    pub async fn ensure_initial(
        &self,
        configured: Option<&KeyPair>,
    ) -> Result<Option<KeyPair>, CredentialError> {
        if let Some(pair) = configured {
            self.insert(pair).await?;
            return Ok(None);
        }
        let request =
            ListRequest { prefix: CREDENTIALS_PREFIX.to_owned(), max_keys: 1, ..Default::default() };
        if !self.backend.list(&request).await?.objects.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.create(Some(INITIAL_DESCRIPTION)).await?))
    }

    /// Writes the record of `pair`, created now.
    async fn write(&self, pair: &KeyPair, description: Option<&str>) -> Result<(), CredentialError> {
        let record = CredentialRecord {
            secret_access_key: pair.secret_access_key.clone(),
            created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            description: description.map(str::to_owned),
        };
        self.backend.put(&record_key(&pair.access_key_id), Bytes::from(record.encode())).await?;
        Ok(())
    }
}

/// The backend key of the pair `access_key_id`.
fn record_key(access_key_id: &str) -> String {
    format!("{CREDENTIALS_PREFIX}{access_key_id}")
}

/// Reads the record stored at `key`.
fn read_record(key: &str, bytes: &[u8]) -> Result<CredentialRecord, CredentialError> {
    CredentialRecord::decode(bytes).map_err(|source| CredentialError::Record { key: key.to_owned(), source })
}

/// `len` characters drawn uniformly from `alphabet` by the operating system's CSPRNG.
fn random_string(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rngs::OsRng;
    (0..len).map(|_| char::from(alphabet[rng.gen_range(0..alphabet.len())])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the record's encoding: changing it is a migration.
    #[test]
    fn golden_bytes() {
        let record = CredentialRecord {
            secret_access_key: "s3cretkey".into(),
            created: 300,
            description: Some("ci".into()),
        };
        assert_eq!(
            hex::encode(record.encode()),
            concat!("4e474352", "01", "09", "733363726574", "6b6579", "ac02", "01", "02", "6369")
        );
        assert!(CredentialRecord::decode(&record.encode()).unwrap() == record);
        let bare = CredentialRecord { description: None, ..record };
        assert_eq!(hex::encode(bare.encode()), "4e47435201097333637265746b6579ac0200");
    }

    #[test]
    fn generated_pairs_have_their_shape() {
        let pair = KeyPair::generate();
        let (id, secret) = (&pair.access_key_id, &pair.secret_access_key);
        assert!(id.len() == 20 && id.starts_with("NG"), "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()), "{id}");
        assert_eq!(secret.len(), 40);
        assert!(secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'));
        assert!(pair.validate().is_ok());
        assert_ne!(pair, KeyPair::generate());
    }

    #[test]
    fn debug_redacts_the_secret() {
        let pair = KeyPair { access_key_id: "AKID".into(), secret_access_key: "hunter2hunter2".into() };
        let shown = format!("{pair:?}");
        assert!(shown.contains("AKID") && !shown.contains("hunter2"), "{shown}");
    }
}
