//! The configuration of `nargate serve`: a TOML file (`config/nargate.toml` documents every
//! option with its default) and `NARGATE_*` environment variables that override it.
//!
//! Precedence: built-in defaults < the file < the environment. Every table is parsed with
//! `deny_unknown_fields`, so a misspelt key is an error that names it, and so is an unknown
//! `NARGATE_*` variable (those in [`ENV_READ_ELSEWHERE`] excepted). Values that do not parse, and
//! settings that break a rule ([`Config::load`] checks them all), are errors that name the key or
//! the variable. `Debug` never shows a secret.
//!
//! Environment variables ([`ENV_OVERRIDES`]): `NARGATE_` and the key in upper case, with `S3_`
//! before the keys of an S3 backend and `INGEST_` before those of `[ingest]`; the fs backend's
//! directory is `NARGATE_DATA`.
//! `NARGATE_DATA` selects the fs backend, any `NARGATE_S3_*` the S3 backend (both at once is an
//! error). A variable set to the empty string counts as unset. Per-bucket settings have no
//! variables.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::de::IntoDeserializer;
use serde::{Deserialize, Deserializer};

use crate::backend::fs::FsBackend;
use crate::backend::s3::{S3Backend, S3Config, S3ConfigError};
use crate::backend::{BackendError, DynBackend};
use crate::credentials::KeyPair;
use crate::ingest::IngestOptions;
use crate::render::RenderConfig;

/// The address `serve` listens on by default.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9000);
/// The fs backend's directory by default.
pub const DEFAULT_DATA_DIR: &str = "./nargate-data";
/// The chunk cache's capacity by default, in bytes.
pub const DEFAULT_CHUNK_CACHE_BYTES: u64 = 64 << 20;
/// The metadata cache's capacity by default, in entries.
pub const DEFAULT_METADATA_CACHE_ENTRIES: u64 = crate::cache::meta::DEFAULT_MAX_ENTRIES;
/// How long metadata stays cached by default.
pub const DEFAULT_METADATA_TTL: Duration = crate::cache::meta::DEFAULT_TTL;

/// How long a request body may send nothing before it fails with IncompleteBody.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often `serve` runs the repair pass.
pub const DEFAULT_REPAIR_INTERVAL: Duration = Duration::from_secs(600);

/// How long `serve`, told to stop, waits for the requests in flight by default.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The environment variables [`Config::load`] reads, each overriding one setting.
pub const ENV_OVERRIDES: &[&str] = &[
    "NARGATE_LISTEN",
    "NARGATE_DOMAINS",
    "NARGATE_READ_AHEAD",
    "NARGATE_BODY_IDLE_TIMEOUT_SECS",
    "NARGATE_REPAIR_INTERVAL_SECS",
    "NARGATE_ADMIN_LISTEN",
    "NARGATE_LOG_FORMAT",
    "NARGATE_SHUTDOWN_GRACE_SECS",
    "NARGATE_DATA",
    "NARGATE_ACCESS_KEY_ID",
    "NARGATE_SECRET_ACCESS_KEY",
    "NARGATE_TABLE_CACHE_BYTES",
    "NARGATE_CHUNK_CACHE_BYTES",
    "NARGATE_METADATA_CACHE_ENTRIES",
    "NARGATE_METADATA_TTL_SECS",
    "NARGATE_INGEST_MAX_ENTRIES",
    "NARGATE_INGEST_MAX_RECORD_BYTES",
    "NARGATE_INGEST_XZ_MEMORY_LIMIT_BYTES",
    "NARGATE_INGEST_ZSTD_LEVEL",
    "NARGATE_INGEST_COMPRESS_CHUNKS",
    "NARGATE_INGEST_UPLOAD_CONCURRENCY",
    "NARGATE_UPLOADS_ABANDON_AFTER_SECS",
    "NARGATE_GC_INTERVAL_SECS",
    "NARGATE_GC_GRACE_SECS",
    "NARGATE_GC_STATS_RECOUNT_SECS",
    "NARGATE_S3_ENDPOINT",
    "NARGATE_S3_REGION",
    "NARGATE_S3_BUCKET",
    "NARGATE_S3_PREFIX",
    "NARGATE_S3_PATH_STYLE",
    "NARGATE_S3_ACCESS_KEY_ID",
    "NARGATE_S3_SECRET_ACCESS_KEY",
    "NARGATE_S3_CONNECTIONS",
    "NARGATE_S3_PUT_CHECK",
    "NARGATE_S3_CONNECT_TIMEOUT_SECS",
    "NARGATE_S3_OPERATION_TIMEOUT_SECS",
    "NARGATE_S3_MAX_ATTEMPTS",
];

/// `NARGATE_*` variables that other parts of the program read: [`Config::load`] accepts and
/// ignores them (add here any the command line reads).
pub const ENV_READ_ELSEWHERE: &[&str] = &["NARGATE_CONFIG", "NARGATE_LOG"];

/// The prefix of every variable nargate reads.
const ENV_PREFIX: &str = "NARGATE_";
/// The prefix of the variables of an S3 backend.
const ENV_S3_PREFIX: &str = "NARGATE_S3_";

/// The whole configuration of `nargate serve`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The address to listen on (`NARGATE_LISTEN`).
    pub listen: SocketAddr,
    /// Domains under which buckets are addressed by host name (`<bucket>.<domain>`); a request
    /// to any other host names its bucket in the path (`NARGATE_DOMAINS`, comma-separated).
    pub domains: Vec<String>,
    /// Chunks fetched ahead of a reader (`NARGATE_READ_AHEAD`).
    pub read_ahead: usize,
    /// Where the data lives.
    pub backend: BackendConfig,
    /// The client key pair the configuration names, if any.
    pub credentials: ClientCredentials,
    /// Cache sizes.
    pub cache: CacheConfig,
    /// How uploaded NARs are ingested, and the bounds on them.
    pub ingest: IngestConfig,
    /// Multipart uploads.
    pub uploads: UploadsConfig,
    /// Garbage collection on a schedule.
    pub gc: GcConfig,
    /// Settings of buckets, by bucket name, applied at start.
    pub buckets: BTreeMap<String, BucketSettings>,
    /// A request body that sends nothing for this long fails with IncompleteBody (TOML
    /// `body_idle_timeout_secs`, `NARGATE_BODY_IDLE_TIMEOUT_SECS`).
    #[serde(rename = "body_idle_timeout_secs", deserialize_with = "secs")]
    pub body_idle_timeout: Duration,
    /// How often `serve` runs the repair pass (TOML `repair_interval_secs`,
    /// `NARGATE_REPAIR_INTERVAL_SECS`).
    #[serde(rename = "repair_interval_secs", deserialize_with = "secs")]
    pub repair_interval: Duration,
    /// The admin listener's address (`/metrics`, `/health`); `None` (TOML `"off"`, the default):
    /// no admin listener (`NARGATE_ADMIN_LISTEN`, an address or `off`).
    #[serde(deserialize_with = "optional_addr")]
    pub admin_listen: Option<SocketAddr>,
    /// How `serve` writes its log (`NARGATE_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// How long `serve`, told to stop (SIGTERM, Ctrl-C), lets the requests in flight run before
    /// it exits (TOML `shutdown_grace_secs`, `NARGATE_SHUTDOWN_GRACE_SECS`).
    #[serde(rename = "shutdown_grace_secs", deserialize_with = "secs")]
    pub shutdown_grace: Duration,
}

/// How log lines are written (TOML `log_format`: `"human"` or `"json"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event: time, level, message, then its fields as `key=value`.
    #[default]
    Human,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's fields.
    Json,
}

/// The backend (TOML: `[backend]` with `type = "fs"` or `type = "s3"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// A local directory (`NARGATE_DATA`).
    Fs {
        /// The directory (created if missing).
        dir: PathBuf,
    },
    /// An S3 bucket.
    S3(S3BackendConfig),
}

/// The keys of `[backend]` with `type = "fs"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FsBackendTable {
    #[serde(default = "default_data_dir")]
    dir: PathBuf,
}

impl<'de> Deserialize<'de> for BackendConfig {
    /// Reads the table whole, then its other keys by its `type`. (A serde internally tagged enum
    /// would do the same, but through serde's buffer, whose errors lose the key they are about;
    /// a TOML table keeps it.)
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(deserializer)?;
        let kind = table.remove("type").ok_or_else(|| D::Error::missing_field("type"))?;
        let inner = |e: toml::de::Error| D::Error::custom(e.to_string().trim_end());
        match kind.as_str() {
            Some("fs") => {
                let FsBackendTable { dir } = table.try_into().map_err(inner)?;
                Ok(BackendConfig::Fs { dir })
            }
            Some("s3") => Ok(BackendConfig::S3(table.try_into().map_err(inner)?)),
            _ => Err(D::Error::custom(format!("unknown backend type {kind}: expected \"fs\" or \"s3\""))),
        }
    }
}

/// An S3 backend (`[backend]` with `type = "s3"`); see [`S3Config`] for what each option does.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3BackendConfig {
    /// The endpoint URL; `None` for AWS itself (`NARGATE_S3_ENDPOINT`).
    pub endpoint: Option<String>,
    /// The region to sign for (`NARGATE_S3_REGION`).
    pub region: String,
    /// The bucket; required (`NARGATE_S3_BUCKET`).
    pub bucket: String,
    /// A prefix for every key (`NARGATE_S3_PREFIX`).
    pub prefix: Option<String>,
    /// Path-style addressing (`NARGATE_S3_PATH_STYLE`).
    pub path_style: bool,
    /// A static access key id, with its secret; else the default credential chain
    /// (`NARGATE_S3_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// The static secret access key (`NARGATE_S3_SECRET_ACCESS_KEY`).
    pub secret_access_key: Option<Secret>,
    /// How connections to the endpoint are used (`NARGATE_S3_CONNECTIONS`).
    pub connections: Connections,
    /// How the server checks chunk, record and staged-part PUTs (`NARGATE_S3_PUT_CHECK`).
    pub put_check: PutCheck,
    /// How long to wait for a connection; the SDK's default when `None`
    /// (TOML `connect_timeout_secs`, `NARGATE_S3_CONNECT_TIMEOUT_SECS`).
    #[serde(rename = "connect_timeout_secs", deserialize_with = "optional_secs")]
    pub connect_timeout: Option<Duration>,
    /// How long one operation may take, retries included; no limit when `None`
    /// (TOML `operation_timeout_secs`, `NARGATE_S3_OPERATION_TIMEOUT_SECS`).
    #[serde(rename = "operation_timeout_secs", deserialize_with = "optional_secs")]
    pub operation_timeout: Option<Duration>,
    /// How many times a request is tried in all (`NARGATE_S3_MAX_ATTEMPTS`).
    pub max_attempts: u32,
}

/// How an S3 backend uses connections (TOML: `"reuse"`, `"quickack"`, `"new-per-request"`).
pub use crate::backend::s3::ConnectionMode as Connections;

/// How an S3 backend's server checks chunk, record and staged-part PUTs (TOML: `"crc32c"`,
/// `"content-md5"`).
pub use crate::backend::s3::PutCheck;

/// The client key pair the configuration names (`[credentials]`): both or neither.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientCredentials {
    /// The access key id (`NARGATE_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// Its secret (`NARGATE_SECRET_ACCESS_KEY`).
    pub secret_access_key: Option<Secret>,
}

/// Cache sizes (`[cache]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Segment tables, in bytes, and as much again for store paths' trees in buckets that browse
    /// (`NARGATE_TABLE_CACHE_BYTES`).
    pub table_cache_bytes: u64,
    /// Verified, decompressed chunks, in bytes (`NARGATE_CHUNK_CACHE_BYTES`).
    pub chunk_cache_bytes: u64,
    /// Metadata records (bucket records, NAR entries, path infos), in entries
    /// (`NARGATE_METADATA_CACHE_ENTRIES`).
    pub metadata_cache_entries: u64,
    /// How long a metadata record stays cached: how late another gateway's deletes and setting
    /// changes may show (TOML `metadata_ttl_secs`, `NARGATE_METADATA_TTL_SECS`).
    #[serde(rename = "metadata_ttl_secs", deserialize_with = "secs")]
    pub metadata_ttl: Duration,
}

/// How uploaded NARs are ingested (`[ingest]`): the bounds on hostile input (each breach answers
/// the upload with a 4xx that names the key) and the chunks' compression.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// The most entries (files, directories, symlinks) a NAR may have
    /// (`NARGATE_INGEST_MAX_ENTRIES`).
    pub max_entries: u64,
    /// The most bytes a NAR record may take for its tree and chunk list
    /// (`NARGATE_INGEST_MAX_RECORD_BYTES`).
    pub max_record_bytes: u64,
    /// The most memory the xz decoder may use, in bytes
    /// (`NARGATE_INGEST_XZ_MEMORY_LIMIT_BYTES`).
    pub xz_memory_limit_bytes: u64,
    /// The zstd level chunks are compressed with (`NARGATE_INGEST_ZSTD_LEVEL`).
    pub zstd_level: i32,
    /// Whether chunks are compressed (`NARGATE_INGEST_COMPRESS_CHUNKS`); `false` for a backend
    /// that compresses what it stores itself.
    pub compress_chunks: bool,
    /// Chunk uploads in flight per ingest (`NARGATE_INGEST_UPLOAD_CONCURRENCY`).
    pub upload_concurrency: usize,
}

impl Default for IngestConfig {
    /// [`IngestOptions::default`]'s values.
    fn default() -> Self {
        let d = IngestOptions::default();
        IngestConfig {
            max_entries: d.max_entries,
            max_record_bytes: d.max_record_bytes,
            xz_memory_limit_bytes: d.xz_memory_limit,
            zstd_level: d.zstd_level,
            compress_chunks: d.compress_chunks,
            upload_concurrency: d.upload_concurrency,
        }
    }
}

impl IngestConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let at_least_one = [
            ("ingest.max_entries", "NARGATE_INGEST_MAX_ENTRIES", self.max_entries),
            ("ingest.max_record_bytes", "NARGATE_INGEST_MAX_RECORD_BYTES", self.max_record_bytes),
            (
                "ingest.xz_memory_limit_bytes",
                "NARGATE_INGEST_XZ_MEMORY_LIMIT_BYTES",
                self.xz_memory_limit_bytes,
            ),
            (
                "ingest.upload_concurrency",
                "NARGATE_INGEST_UPLOAD_CONCURRENCY",
                self.upload_concurrency as u64,
            ),
        ];
        for (key, var, value) in at_least_one {
            if value == 0 {
                return Err(invalid(key, Some(var), "must be at least 1"));
            }
        }
        let levels = zstd::compression_level_range();
        if !levels.contains(&self.zstd_level) {
            return Err(invalid(
                "ingest.zstd_level",
                Some("NARGATE_INGEST_ZSTD_LEVEL"),
                format!("{} is not a zstd level ({} to {})", self.zstd_level, levels.start(), levels.end()),
            ));
        }
        Ok(())
    }
}

/// Multipart uploads (`[uploads]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadsConfig {
    /// How long a multipart upload nothing was written to is kept before the repair pass removes
    /// its parts (TOML `abandon_after_secs`, `NARGATE_UPLOADS_ABANDON_AFTER_SECS`).
    #[serde(rename = "abandon_after_secs", deserialize_with = "secs")]
    pub abandon_after: Duration,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        UploadsConfig { abandon_after: crate::cache::uploads::DEFAULT_ABANDON_AFTER }
    }
}

/// Garbage collection run by `serve` (`[gc]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// How often `serve` runs a GC (zero: never; `nargate gc` runs one by hand). Of several
    /// gateways over one store, one GC runs at a time: the others find the lock and skip
    /// their turn (TOML `interval_secs`, `NARGATE_GC_INTERVAL_SECS`).
    #[serde(rename = "interval_secs", deserialize_with = "secs")]
    pub interval: Duration,
    /// Nothing written less than this long before a GC starts is removed (TOML `grace_secs`,
    /// `NARGATE_GC_GRACE_SECS`).
    #[serde(rename = "grace_secs", deserialize_with = "secs")]
    pub grace: Duration,
    /// `serve` counts the store again (the stats summary of `/metrics`) when the last count
    /// is older than this; every GC counts it too (TOML `stats_recount_secs`,
    /// `NARGATE_GC_STATS_RECOUNT_SECS`).
    #[serde(rename = "stats_recount_secs", deserialize_with = "secs")]
    pub stats_recount: Duration,
}

/// How old the stats summary may grow before `serve` counts the store again, by default.
pub const DEFAULT_STATS_RECOUNT: Duration = Duration::from_secs(3600);

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval: Duration::ZERO,
            grace: crate::gc::DEFAULT_GRACE,
            stats_recount: DEFAULT_STATS_RECOUNT,
        }
    }
}

/// Settings of one bucket (`[buckets.<name>]`); `None` leaves the stored setting as it is.
pub use crate::cache::BucketSettings;

/// A secret from the configuration: `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why the configuration cannot be loaded, or its backend opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type; the message
    /// names the key.
    #[error("{}: {message}", path.as_deref().map_or_else(|| "configuration".to_owned(), |p| p.display().to_string()))]
    Parse {
        /// The file, if the text came from one.
        path: Option<PathBuf>,
        /// What the TOML parser said.
        message: String,
    },
    /// An environment variable is unknown or its value does not parse.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A setting breaks a rule.
    #[error("invalid {setting}: {reason}")]
    Invalid {
        /// The setting: its TOML key and, if it has one, its variable.
        setting: String,
        /// The rule broken.
        reason: String,
    },
    /// The fs backend cannot be opened.
    #[error("cannot open the fs backend: {0}")]
    Backend(#[from] BackendError),
    /// The S3 backend cannot be made.
    #[error("cannot make the S3 backend: {0}")]
    S3(#[from] S3ConfigError),
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN,
            domains: vec![],
            read_ahead: RenderConfig::default().read_ahead,
            backend: BackendConfig::default(),
            credentials: ClientCredentials::default(),
            cache: CacheConfig::default(),
            ingest: IngestConfig::default(),
            uploads: UploadsConfig::default(),
            gc: GcConfig::default(),
            buckets: BTreeMap::new(),
            body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT,
            repair_interval: DEFAULT_REPAIR_INTERVAL,
            admin_listen: None,
            log_format: LogFormat::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig::Fs { dir: default_data_dir() }
    }
}

impl Default for S3BackendConfig {
    /// [`S3Config::default`]'s values.
    fn default() -> Self {
        let d = S3Config::default();
        S3BackendConfig {
            endpoint: d.endpoint,
            region: d.region,
            bucket: d.bucket,
            prefix: d.prefix,
            path_style: d.path_style,
            access_key_id: d.access_key_id,
            secret_access_key: d.secret_access_key.map(Secret),
            connections: Connections::default(),
            put_check: d.put_check,
            connect_timeout: d.connect_timeout,
            operation_timeout: d.operation_timeout,
            max_attempts: d.max_attempts,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            table_cache_bytes: RenderConfig::default().table_cache_bytes,
            chunk_cache_bytes: DEFAULT_CHUNK_CACHE_BYTES,
            metadata_cache_entries: DEFAULT_METADATA_CACHE_ENTRIES,
            metadata_ttl: DEFAULT_METADATA_TTL,
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

impl Config {
    /// Loads the configuration: the defaults, overridden by `file` if given, overridden by the
    /// `NARGATE_*` variables of `env` (pass `std::env::vars()`; other variables are ignored), then
    /// checked.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                Self::parse(&text, Some(path))?
            }
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses and checks a configuration file's text, without the environment.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config = Self::parse(text, None)?;
        config.validate()?;
        Ok(config)
    }

    /// Opens the configured backend: an [`FsBackend`] (creating its directory) or an
    /// [`S3Backend`] (which sends no request yet).
    pub async fn open_backend(&self) -> Result<DynBackend, ConfigError> {
        Ok(match &self.backend {
            BackendConfig::Fs { dir } => Arc::new(FsBackend::new(dir.clone())?),
            BackendConfig::S3(s3) => Arc::new(S3Backend::new(s3.to_s3_config()).await?),
        })
    }

    /// The client key pair the configuration names, if any.
    pub fn client_key_pair(&self) -> Option<KeyPair> {
        match &self.credentials {
            ClientCredentials { access_key_id: Some(id), secret_access_key: Some(secret) } => {
                Some(KeyPair { access_key_id: id.clone(), secret_access_key: secret.expose().to_owned() })
            }
            _ => None,
        }
    }

    /// The renderer's settings.
    pub fn render_config(&self) -> RenderConfig {
        RenderConfig {
            table_cache_bytes: self.cache.table_cache_bytes,
            read_ahead: self.read_ahead,
            ..RenderConfig::default()
        }
    }

    /// The gateway's settings: caches, read-ahead, domains, per-bucket settings.
    pub fn gateway_options(&self) -> crate::gateway::GatewayOptions {
        crate::gateway::GatewayOptions {
            domains: self.domains.clone(),
            meta: crate::cache::MetaConfig {
                max_entries: self.cache.metadata_cache_entries,
                ttl: self.cache.metadata_ttl,
            },
            render: self.render_config(),
            chunk_cache_bytes: self.cache.chunk_cache_bytes,
            buckets: self.buckets.clone(),
            ingest: self.ingest_options(),
            uploads: crate::cache::uploads::UploadOptions {
                abandon_after: self.uploads.abandon_after,
                ..Default::default()
            },
            body_idle_timeout: self.body_idle_timeout,
            metrics: crate::metrics::Metrics::default(),
        }
    }

    /// The options of an ingest, from `[ingest]` (the per-upload ones — expected NarHash and
    /// NarSize, the `.br` suffix — at their defaults, for the caller to set).
    pub fn ingest_options(&self) -> IngestOptions {
        IngestOptions {
            max_entries: self.ingest.max_entries,
            max_record_bytes: self.ingest.max_record_bytes,
            xz_memory_limit: self.ingest.xz_memory_limit_bytes,
            zstd_level: self.ingest.zstd_level,
            compress_chunks: self.ingest.compress_chunks,
            upload_concurrency: self.ingest.upload_concurrency,
            ..IngestOptions::default()
        }
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.map(Path::to_owned),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Applies the `NARGATE_*` variables of `env`, in order of name.
    fn apply_env(&mut self, env: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
        let vars: BTreeMap<String, String> =
            env.into_iter().filter(|(var, value)| var.starts_with(ENV_PREFIX) && !value.is_empty()).collect();
        if vars.contains_key("NARGATE_DATA")
            && let Some(s3) = vars.keys().find(|var| var.starts_with(ENV_S3_PREFIX))
        {
            return Err(ConfigError::Env {
                var: "NARGATE_DATA".into(),
                message: format!(
                    "selects the fs backend, but {s3} selects the S3 backend: set one or the other"
                ),
            });
        }
        for (var, value) in &vars {
            self.apply_var(var, value).map_err(|message| ConfigError::Env { var: var.clone(), message })?;
        }
        Ok(())
    }

    /// Applies one variable; the error says what is wrong with it.
    fn apply_var(&mut self, var: &str, value: &str) -> Result<(), String> {
        match var {
            "NARGATE_LISTEN" => self.listen = parse(value)?,
            "NARGATE_DOMAINS" => {
                self.domains =
                    value.split(',').map(str::trim).filter(|d| !d.is_empty()).map(str::to_owned).collect();
            }
            "NARGATE_READ_AHEAD" => self.read_ahead = parse(value)?,
            "NARGATE_BODY_IDLE_TIMEOUT_SECS" => self.body_idle_timeout = duration_from_secs(parse(value)?)?,
            "NARGATE_REPAIR_INTERVAL_SECS" => self.repair_interval = duration_from_secs(parse(value)?)?,
            "NARGATE_ADMIN_LISTEN" => self.admin_listen = parse_optional_addr(value)?,
            "NARGATE_LOG_FORMAT" => {
                self.log_format = LogFormat::deserialize(value.into_deserializer())
                    .map_err(|e: serde::de::value::Error| format!("{value:?}: {e}"))?;
            }
            "NARGATE_SHUTDOWN_GRACE_SECS" => self.shutdown_grace = duration_from_secs(parse(value)?)?,
            "NARGATE_DATA" => self.backend = BackendConfig::Fs { dir: value.into() },
            "NARGATE_ACCESS_KEY_ID" => self.credentials.access_key_id = Some(value.to_owned()),
            "NARGATE_SECRET_ACCESS_KEY" => self.credentials.secret_access_key = Some(Secret::new(value)),
            "NARGATE_TABLE_CACHE_BYTES" => self.cache.table_cache_bytes = parse(value)?,
            "NARGATE_CHUNK_CACHE_BYTES" => self.cache.chunk_cache_bytes = parse(value)?,
            "NARGATE_METADATA_CACHE_ENTRIES" => self.cache.metadata_cache_entries = parse(value)?,
            "NARGATE_METADATA_TTL_SECS" => self.cache.metadata_ttl = duration_from_secs(parse(value)?)?,
            "NARGATE_INGEST_MAX_ENTRIES" => self.ingest.max_entries = parse(value)?,
            "NARGATE_INGEST_MAX_RECORD_BYTES" => self.ingest.max_record_bytes = parse(value)?,
            "NARGATE_INGEST_XZ_MEMORY_LIMIT_BYTES" => self.ingest.xz_memory_limit_bytes = parse(value)?,
            "NARGATE_INGEST_ZSTD_LEVEL" => self.ingest.zstd_level = parse(value)?,
            "NARGATE_INGEST_COMPRESS_CHUNKS" => self.ingest.compress_chunks = parse(value)?,
            "NARGATE_INGEST_UPLOAD_CONCURRENCY" => self.ingest.upload_concurrency = parse(value)?,
            "NARGATE_UPLOADS_ABANDON_AFTER_SECS" => {
                self.uploads.abandon_after = duration_from_secs(parse(value)?)?;
            }
            "NARGATE_GC_INTERVAL_SECS" => self.gc.interval = duration_from_secs(parse(value)?)?,
            "NARGATE_GC_GRACE_SECS" => self.gc.grace = duration_from_secs(parse(value)?)?,
            "NARGATE_GC_STATS_RECOUNT_SECS" => self.gc.stats_recount = duration_from_secs(parse(value)?)?,
            "NARGATE_S3_ENDPOINT" => self.s3_mut().endpoint = Some(value.to_owned()),
            "NARGATE_S3_REGION" => self.s3_mut().region = value.to_owned(),
            "NARGATE_S3_BUCKET" => self.s3_mut().bucket = value.to_owned(),
            "NARGATE_S3_PREFIX" => self.s3_mut().prefix = Some(value.to_owned()),
            "NARGATE_S3_PATH_STYLE" => self.s3_mut().path_style = parse(value)?,
            "NARGATE_S3_ACCESS_KEY_ID" => self.s3_mut().access_key_id = Some(value.to_owned()),
            "NARGATE_S3_SECRET_ACCESS_KEY" => self.s3_mut().secret_access_key = Some(Secret::new(value)),
            "NARGATE_S3_CONNECTIONS" => {
                self.s3_mut().connections = Connections::deserialize(value.into_deserializer())
                    .map_err(|e: serde::de::value::Error| format!("{value:?}: {e}"))?;
            }
            "NARGATE_S3_PUT_CHECK" => {
                self.s3_mut().put_check = PutCheck::deserialize(value.into_deserializer())
                    .map_err(|e: serde::de::value::Error| format!("{value:?}: {e}"))?;
            }
            "NARGATE_S3_CONNECT_TIMEOUT_SECS" => {
                self.s3_mut().connect_timeout = Some(duration_from_secs(parse(value)?)?);
            }
            "NARGATE_S3_OPERATION_TIMEOUT_SECS" => {
                self.s3_mut().operation_timeout = Some(duration_from_secs(parse(value)?)?);
            }
            "NARGATE_S3_MAX_ATTEMPTS" => self.s3_mut().max_attempts = parse(value)?,
            _ if ENV_READ_ELSEWHERE.contains(&var) => {}
            _ => {
                return Err(format!(
                    "unknown variable (nargate reads {} and {})",
                    ENV_OVERRIDES.join(", "),
                    ENV_READ_ELSEWHERE.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The S3 backend's settings; an fs backend is replaced by a default S3 backend first.
    fn s3_mut(&mut self) -> &mut S3BackendConfig {
        if let BackendConfig::Fs { .. } = self.backend {
            self.backend = BackendConfig::S3(S3BackendConfig::default());
        }
        match &mut self.backend {
            BackendConfig::S3(s3) => s3,
            BackendConfig::Fs { .. } => unreachable!("replaced just above"),
        }
    }

    /// Checks the rules no type expresses.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.read_ahead == 0 {
            return Err(invalid("read_ahead", Some("NARGATE_READ_AHEAD"), "must be at least 1"));
        }
        for domain in &self.domains {
            validate_domain(domain).map_err(|reason| {
                invalid("domains", Some("NARGATE_DOMAINS"), format!("{domain:?}: {reason}"))
            })?;
        }
        let credentials = ("credentials", Some("NARGATE_ACCESS_KEY_ID, NARGATE_SECRET_ACCESS_KEY"));
        match (&self.credentials.access_key_id, &self.credentials.secret_access_key) {
            (Some(_), Some(_)) | (None, None) => {}
            _ => {
                return Err(invalid(
                    credentials.0,
                    credentials.1,
                    "access_key_id and secret_access_key go together: give both or neither",
                ));
            }
        }
        if let Some(pair) = self.client_key_pair() {
            pair.validate().map_err(|e| invalid(credentials.0, credentials.1, e))?;
        }
        if let BackendConfig::S3(s3) = &self.backend {
            s3.validate()?;
        }
        self.ingest.validate()?;
        for name in self.buckets.keys() {
            validate_bucket_name(name).map_err(|reason| invalid(&format!("buckets.{name}"), None, reason))?;
        }
        Ok(())
    }
}

impl S3BackendConfig {
    /// The backend's [`S3Config`].
    pub fn to_s3_config(&self) -> S3Config {
        S3Config {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            bucket: self.bucket.clone(),
            path_style: self.path_style,
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.as_ref().map(|s| s.expose().to_owned()),
            prefix: self.prefix.clone(),
            max_attempts: self.max_attempts,
            connections: self.connections,
            put_check: self.put_check,
            connect_timeout: self.connect_timeout,
            operation_timeout: self.operation_timeout,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.bucket.is_empty() {
            return Err(invalid("backend.bucket", Some("NARGATE_S3_BUCKET"), "an S3 backend needs a bucket"));
        }
        if self.region.is_empty() {
            return Err(invalid("backend.region", Some("NARGATE_S3_REGION"), "must not be empty"));
        }
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(invalid(
                "backend.endpoint",
                Some("NARGATE_S3_ENDPOINT"),
                format!("{endpoint:?} is not an http:// or https:// URL"),
            ));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(invalid(
                "backend.access_key_id",
                Some("NARGATE_S3_ACCESS_KEY_ID, NARGATE_S3_SECRET_ACCESS_KEY"),
                "access_key_id and secret_access_key go together: give both, or neither for the \
                 default credential chain",
            ));
        }
        if self.max_attempts == 0 {
            return Err(invalid(
                "backend.max_attempts",
                Some("NARGATE_S3_MAX_ATTEMPTS"),
                "must be at least 1",
            ));
        }
        let timeouts = [
            ("backend.connect_timeout_secs", "NARGATE_S3_CONNECT_TIMEOUT_SECS", self.connect_timeout),
            ("backend.operation_timeout_secs", "NARGATE_S3_OPERATION_TIMEOUT_SECS", self.operation_timeout),
        ];
        for (key, var, timeout) in timeouts {
            if timeout == Some(Duration::ZERO) {
                return Err(invalid(key, Some(var), "must be more than 0 (leave it out for the default)"));
            }
        }
        Ok(())
    }
}

/// A [`ConfigError::Invalid`] for the TOML `key` and its variable `var`.
fn invalid(key: &str, var: Option<&str>, reason: impl ToString) -> ConfigError {
    let setting = match var {
        Some(var) => format!("`{key}` ({var})"),
        None => format!("`{key}`"),
    };
    ConfigError::Invalid { setting, reason: reason.to_string() }
}

/// Parses a variable's value.
fn parse<T: FromStr>(value: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse().map_err(|e| format!("{value:?}: {e}"))
}

/// A duration of `secs` seconds (fractions allowed).
fn duration_from_secs(secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{secs} seconds: {e}"))
}

/// Deserializes a number of seconds (integer or fraction) as a duration.
fn secs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    duration_from_secs(f64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
}

/// An address, or `off` for none.
fn parse_optional_addr(value: &str) -> Result<Option<SocketAddr>, String> {
    match value.trim() {
        "off" => Ok(None),
        value => value.parse().map(Some).map_err(|e| format!("{value:?}: {e} (an address, or \"off\")")),
    }
}

/// Deserializes an address, or `"off"` as `None`.
fn optional_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
    parse_optional_addr(&String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
}

/// Deserializes a present number of seconds as `Some` duration.
fn optional_secs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    secs(deserializer).map(Some)
}

/// Checks a virtual-host domain: a host name, without scheme, path or port.
fn validate_domain(domain: &str) -> Result<(), &'static str> {
    if domain.contains('/') {
        return Err("a domain is a host name, not a URL: no `/`");
    }
    if domain.contains(':') {
        return Err("a domain has no port: no `:`");
    }
    let labels_ok = domain
        .split('.')
        .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !labels_ok {
        return Err("a domain is dot-separated labels of letters, digits and `-`");
    }
    Ok(())
}

/// Checks a bucket name against S3's rules: 3 to 63 characters of `a-z 0-9 . -`, starting and
/// ending with a letter or digit.
fn validate_bucket_name(name: &str) -> Result<(), &'static str> {
    let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok = (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && alnum(name.bytes().next())
        && alnum(name.bytes().last());
    if ok {
        Ok(())
    } else {
        Err(
            "a bucket name is 3 to 63 characters of `a-z`, `0-9`, `.` and `-`, starting and ending with a letter or digit",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example file shipped with nargate.
    const EXAMPLE: &str = include_str!("../config/nargate.toml");

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Loads `toml` from a file, with `vars` as the environment.
    fn load(toml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), toml).unwrap();
        Config::load(Some(file.path()), env(vars))
    }

    /// The error's message, which must be an error.
    fn error(result: Result<Config, ConfigError>) -> String {
        match result {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults() {
        let config = Config::load(None, env(&[("PATH", "/bin"), ("HOME", "/root")])).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(config.backend, BackendConfig::Fs { dir: PathBuf::from("./nargate-data") });
        assert!(config.domains.is_empty() && config.buckets.is_empty());
        assert_eq!(config.client_key_pair(), None);
        assert_eq!(config.read_ahead, 8);
        assert_eq!(config.cache.table_cache_bytes, 256 << 20);
        assert_eq!(config.cache.chunk_cache_bytes, 64 << 20);
        assert_eq!(config.cache.metadata_cache_entries, 10_000);
        assert_eq!(config.cache.metadata_ttl, Duration::from_secs(5));
        assert_eq!(config.ingest.max_entries, 1_000_000);
        assert_eq!(config.ingest.max_record_bytes, 128 << 20);
        assert_eq!(config.ingest.xz_memory_limit_bytes, 128 << 20);
        assert_eq!(config.ingest.zstd_level, 1);
        assert_eq!(config.ingest.upload_concurrency, 8);
        assert_eq!(format!("{:?}", config.ingest_options()), format!("{:?}", IngestOptions::default()));
        assert_eq!(config.uploads.abandon_after, Duration::from_secs(24 * 60 * 60));
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
        let s3 = S3BackendConfig::default().to_s3_config();
        assert_eq!(format!("{s3:?}"), format!("{:?}", S3Config::default()));
    }

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        assert_eq!(Config::from_toml(EXAMPLE).unwrap(), Config::default());
    }

    /// The example's commented-out settings (`#key = …`, no space after `#`), uncommented in
    /// place of its fs backend, make a valid S3 configuration.
    #[test]
    fn the_example_files_commented_settings_parse() {
        let fs_backend = "[backend]\ntype = \"fs\"\ndir = \"./nargate-data\"\n";
        assert!(EXAMPLE.contains(fs_backend), "the example's fs backend is not as this test expects");
        let uncommented: String = EXAMPLE
            .replace(fs_backend, "")
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| !c.is_whitespace() && c != '#') => rest,
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let config = Config::from_toml(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        let BackendConfig::S3(s3) = &config.backend else { panic!("not an S3 backend: {config:?}") };
        assert!(!s3.bucket.is_empty() && s3.endpoint.is_some() && s3.access_key_id.is_some());
        assert!(config.client_key_pair().is_some());
        assert!(config.buckets.contains_key("cache"));
    }

    #[test]
    fn a_full_file() {
        let config = Config::from_toml(
            r#"
            listen = "[::1]:8080"
            domains = ["s3.example.com", "cache.local"]
            read_ahead = 4
            body_idle_timeout_secs = 5
            repair_interval_secs = 60
            admin_listen = "127.0.0.1:9001"
            log_format = "json"
            shutdown_grace_secs = 2.5

            [backend]
            type = "s3"
            endpoint = "http://127.0.0.1:3900"
            region = "garage"
            bucket = "nix"
            prefix = "nargate/"
            path_style = true
            access_key_id = "GK123"
            secret_access_key = "backend-secret"
            connections = "new-per-request"
            put_check = "content-md5"
            connect_timeout_secs = 2.5
            operation_timeout_secs = 60
            max_attempts = 5

            [credentials]
            access_key_id = "client"
            secret_access_key = "client-secret"

            [cache]
            table_cache_bytes = 1_000
            chunk_cache_bytes = 2_000
            metadata_cache_entries = 30
            metadata_ttl_secs = 0

            [ingest]
            max_entries = 10
            max_record_bytes = 20
            xz_memory_limit_bytes = 30
            zstd_level = -3
            compress_chunks = false
            upload_concurrency = 2
            [uploads]
            abandon_after_secs = 3600
            [gc]
            interval_secs = 7200
            grace_secs = 600
            stats_recount_secs = 900

            [buckets.cache]
            anonymous_read = true
            priority = 30
            want_mass_query = false
            browse = true
            retention_secs = 2592000

            [buckets.private]
            "#,
        )
        .unwrap();
        let s3 = S3BackendConfig {
            endpoint: Some("http://127.0.0.1:3900".into()),
            region: "garage".into(),
            bucket: "nix".into(),
            prefix: Some("nargate/".into()),
            path_style: true,
            access_key_id: Some("GK123".into()),
            secret_access_key: Some(Secret::new("backend-secret")),
            connections: Connections::NewPerRequest,
            put_check: PutCheck::ContentMd5,
            connect_timeout: Some(Duration::from_millis(2500)),
            operation_timeout: Some(Duration::from_secs(60)),
            max_attempts: 5,
        };
        let expected = Config {
            listen: "[::1]:8080".parse().unwrap(),
            domains: vec!["s3.example.com".into(), "cache.local".into()],
            read_ahead: 4,
            backend: BackendConfig::S3(s3.clone()),
            credentials: ClientCredentials {
                access_key_id: Some("client".into()),
                secret_access_key: Some(Secret::new("client-secret")),
            },
            cache: CacheConfig {
                table_cache_bytes: 1000,
                chunk_cache_bytes: 2000,
                metadata_cache_entries: 30,
                metadata_ttl: Duration::ZERO,
            },
            ingest: IngestConfig {
                max_entries: 10,
                max_record_bytes: 20,
                xz_memory_limit_bytes: 30,
                zstd_level: -3,
                compress_chunks: false,
                upload_concurrency: 2,
            },
            uploads: UploadsConfig { abandon_after: Duration::from_secs(3600) },
            gc: GcConfig {
                interval: Duration::from_secs(7200),
                grace: Duration::from_secs(600),
                stats_recount: Duration::from_secs(900),
            },
            buckets: BTreeMap::from([
                (
                    "cache".into(),
                    BucketSettings {
                        anonymous_read: Some(true),
                        priority: Some(30),
                        want_mass_query: Some(false),
                        browse: Some(true),
                        retention_secs: Some(2_592_000),
                    },
                ),
                ("private".into(), BucketSettings::default()),
            ]),
            body_idle_timeout: Duration::from_secs(5),
            repair_interval: Duration::from_secs(60),
            admin_listen: Some("127.0.0.1:9001".parse().unwrap()),
            log_format: LogFormat::Json,
            shutdown_grace: Duration::from_millis(2500),
        };
        assert_eq!(config, expected);
        assert_eq!(
            config.client_key_pair(),
            Some(KeyPair { access_key_id: "client".into(), secret_access_key: "client-secret".into() })
        );
        assert_eq!(config.render_config().read_ahead, 4);
        assert_eq!(config.render_config().table_cache_bytes, 1000);
        let ingest = config.ingest_options();
        assert_eq!(
            (ingest.max_entries, ingest.max_record_bytes, ingest.xz_memory_limit, ingest.zstd_level),
            (10, 20, 30, -3)
        );
        assert_eq!(ingest.upload_concurrency, 2);
        let mapped = s3.to_s3_config();
        assert_eq!(mapped.secret_access_key.as_deref(), Some("backend-secret"));
        assert!(
            mapped.connections == Connections::NewPerRequest && mapped.path_style && mapped.max_attempts == 5
        );
        assert_eq!(mapped.prefix.as_deref(), Some("nargate/"));
        assert_eq!(mapped.put_check, PutCheck::ContentMd5);
        let by_env =
            Config::load(None, env(&[("NARGATE_S3_BUCKET", "b"), ("NARGATE_S3_PUT_CHECK", "content-md5")]));
        let BackendConfig::S3(by_env) = by_env.unwrap().backend else { panic!("an S3 backend") };
        assert_eq!(
            (by_env.put_check, S3BackendConfig::default().put_check),
            (PutCheck::ContentMd5, PutCheck::Crc32c)
        );
    }

    #[test]
    fn connection_modes() {
        for (name, mode) in [
            ("reuse", Connections::Reuse),
            ("quickack", Connections::QuickAck),
            ("new-per-request", Connections::NewPerRequest),
        ] {
            let text = format!("[backend]\ntype = \"s3\"\nbucket = \"b\"\nconnections = \"{name}\"\n");
            let BackendConfig::S3(s3) = Config::from_toml(&text).unwrap().backend else { panic!() };
            assert_eq!(s3.connections, mode);
            assert_eq!(s3.to_s3_config().connections, mode);
            let config =
                Config::load(None, env(&[("NARGATE_S3_BUCKET", "b"), ("NARGATE_S3_CONNECTIONS", name)]))
                    .unwrap();
            assert_eq!(config.backend, BackendConfig::S3(s3));
        }
    }

    #[test]
    fn env_overrides_the_file() {
        let file = r#"
            listen = "0.0.0.0:80"
            domains = ["a.example"]
            read_ahead = 2
            [backend]
            type = "s3"
            bucket = "from-file"
            region = "file-region"
            [cache]
            metadata_ttl_secs = 30
            chunk_cache_bytes = 5
        "#;
        let config = load(
            file,
            &[
                ("NARGATE_LISTEN", "127.0.0.1:9100"),
                ("NARGATE_DOMAINS", "b.example, c.example,"),
                ("NARGATE_READ_AHEAD", "16"),
                ("NARGATE_S3_BUCKET", "from-env"),
                ("NARGATE_S3_ENDPOINT", "https://s3.example"),
                ("NARGATE_S3_PREFIX", "p/"),
                ("NARGATE_S3_PATH_STYLE", "true"),
                ("NARGATE_S3_ACCESS_KEY_ID", "AK"),
                ("NARGATE_S3_SECRET_ACCESS_KEY", "SK"),
                ("NARGATE_S3_CONNECT_TIMEOUT_SECS", "0.5"),
                ("NARGATE_S3_OPERATION_TIMEOUT_SECS", "90"),
                ("NARGATE_S3_MAX_ATTEMPTS", "7"),
                ("NARGATE_ACCESS_KEY_ID", "client-id"),
                ("NARGATE_SECRET_ACCESS_KEY", "client-secret"),
                ("NARGATE_METADATA_TTL_SECS", "1.5"),
                ("NARGATE_TABLE_CACHE_BYTES", "11"),
                ("NARGATE_METADATA_CACHE_ENTRIES", "12"),
                ("NARGATE_INGEST_MAX_ENTRIES", "13"),
                ("NARGATE_INGEST_MAX_RECORD_BYTES", "14"),
                ("NARGATE_INGEST_XZ_MEMORY_LIMIT_BYTES", "15"),
                ("NARGATE_INGEST_ZSTD_LEVEL", "16"),
                ("NARGATE_INGEST_COMPRESS_CHUNKS", "false"),
                ("NARGATE_INGEST_UPLOAD_CONCURRENCY", "17"),
                ("NARGATE_UPLOADS_ABANDON_AFTER_SECS", "60"),
                ("NARGATE_ADMIN_LISTEN", "127.0.0.1:9101"),
                ("NARGATE_LOG_FORMAT", "json"),
                ("NARGATE_SHUTDOWN_GRACE_SECS", "0.5"),
                ("NARGATE_LOG", "debug"),
                ("NARGATE_S3_REGION", ""),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9100");
        assert_eq!(config.domains, ["b.example", "c.example"]);
        assert_eq!(config.read_ahead, 16);
        let BackendConfig::S3(s3) = &config.backend else { panic!("{config:?}") };
        assert_eq!(s3.bucket, "from-env");
        assert_eq!(s3.region, "file-region", "an empty variable counts as unset");
        assert_eq!(s3.endpoint.as_deref(), Some("https://s3.example"));
        assert_eq!(s3.prefix.as_deref(), Some("p/"));
        assert!(s3.path_style);
        assert_eq!(s3.access_key_id.as_deref(), Some("AK"));
        assert_eq!(s3.secret_access_key, Some(Secret::new("SK")));
        assert_eq!(s3.connect_timeout, Some(Duration::from_millis(500)));
        assert_eq!(s3.operation_timeout, Some(Duration::from_secs(90)));
        assert_eq!(s3.max_attempts, 7);
        assert_eq!(config.client_key_pair().unwrap().access_key_id, "client-id");
        assert_eq!(config.cache.metadata_ttl, Duration::from_millis(1500));
        assert_eq!(config.cache.table_cache_bytes, 11);
        assert_eq!(config.cache.chunk_cache_bytes, 5, "kept from the file");
        assert_eq!(config.cache.metadata_cache_entries, 12);
        let expected = IngestConfig {
            max_entries: 13,
            max_record_bytes: 14,
            xz_memory_limit_bytes: 15,
            zstd_level: 16,
            compress_chunks: false,
            upload_concurrency: 17,
        };
        assert_eq!(config.ingest, expected);
        assert_eq!(config.uploads.abandon_after, Duration::from_secs(60));
        assert_eq!(config.gateway_options().uploads.abandon_after, Duration::from_secs(60));
        assert_eq!(config.admin_listen, Some("127.0.0.1:9101".parse().unwrap()));
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.shutdown_grace, Duration::from_millis(500));
        let off = load("admin_listen = \"127.0.0.1:9001\"", &[("NARGATE_ADMIN_LISTEN", "off")]).unwrap();
        assert_eq!(off.admin_listen, None, "the variable turns off what the file turns on");
        assert_eq!(Config::from_toml("admin_listen = \"off\"").unwrap().admin_listen, None);
    }

    #[test]
    fn env_selects_the_backend() {
        let s3_file = "[backend]\ntype = \"s3\"\nbucket = \"b\"\n";
        let config = load(s3_file, &[("NARGATE_DATA", "/srv/nargate")]).unwrap();
        assert_eq!(config.backend, BackendConfig::Fs { dir: "/srv/nargate".into() });
        let config =
            load("", &[("NARGATE_S3_ENDPOINT", "http://localhost:3900"), ("NARGATE_S3_BUCKET", "b")])
                .unwrap();
        let BackendConfig::S3(s3) = config.backend else { panic!() };
        assert_eq!(s3.region, "us-east-1");
        let message = error(load("", &[("NARGATE_S3_ENDPOINT", "http://localhost:3900")]));
        assert!(message.contains("backend.bucket") && message.contains("NARGATE_S3_BUCKET"), "{message}");
        let message = error(load("", &[("NARGATE_DATA", "/d"), ("NARGATE_S3_BUCKET", "b")]));
        assert!(message.contains("NARGATE_DATA") && message.contains("NARGATE_S3_BUCKET"), "{message}");
    }

    #[test]
    fn every_listed_variable_is_read() {
        for var in ENV_OVERRIDES.iter().chain(ENV_READ_ELSEWHERE) {
            let mut config = Config::default();
            if let Err(message) = config.apply_var(var, "1") {
                assert!(!message.starts_with("unknown variable"), "{var}: {message}");
            }
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        for (text, key) in [
            ("lisen = \"127.0.0.1:1\"", "lisen"),
            ("[cache]\nchunk_cache_byte = 1", "chunk_cache_byte"),
            ("[backend]\ntype = \"fs\"\ndirectory = \"/x\"", "directory"),
            ("[backend]\ntype = \"s3\"\nbukcet = \"b\"", "bukcet"),
            ("[credentials]\nsecret = \"x\"", "secret"),
            ("[buckets.cache]\npriorty = 1", "priorty"),
            ("[ingest]\nmax_entry = 1", "max_entry"),
            ("[backend]\ntype = \"ftp\"", "ftp"),
            ("[backend]\ntype = \"s3\"\nbucket = \"b\"\nconnections = \"keep\"", "keep"),
            ("[nope]", "nope"),
        ] {
            let message = error(Config::from_toml(text));
            assert!(message.contains(key), "{text:?}: {message}");
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "lisen = 1").unwrap();
        let message = error(Config::load(Some(file.path()), vec![]));
        assert!(
            message.contains("lisen") && message.contains(&file.path().display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn unknown_variables_are_named() {
        let message = error(Config::load(None, env(&[("NARGATE_LISTENN", "127.0.0.1:1")])));
        assert!(message.contains("NARGATE_LISTENN") && message.contains("unknown"), "{message}");
        let message = error(Config::load(None, env(&[("NARGATE_S3_BUKCET", "b")])));
        assert!(message.contains("NARGATE_S3_BUKCET"), "{message}");
    }

    #[test]
    fn bad_values_are_named() {
        for (text, key) in [
            ("listen = \"localhost\"", "listen"),
            ("listen = 9000", "listen"),
            ("read_ahead = -1", "read_ahead"),
            ("read_ahead = 0", "read_ahead"),
            ("domains = \"a.example\"", "domains"),
            ("domains = [\"http://a.example\"]", "domains"),
            ("domains = [\"a.example:9000\"]", "domains"),
            ("domains = [\"\"]", "domains"),
            ("[cache]\nmetadata_ttl_secs = -3", "metadata_ttl_secs"),
            ("[uploads]\nabandon_after_secs = \"1d\"", "abandon_after_secs"),
            ("[cache]\ntable_cache_bytes = \"1G\"", "table_cache_bytes"),
            ("[backend]\ntype = \"s3\"", "backend.bucket"),
            ("[backend]\ntype = \"s3\"\nbucket = \"b\"\npath_style = \"yes\"", "path_style"),
            ("[backend]\ntype = \"s3\"\nbucket = \"b\"\nendpoint = \"localhost:3900\"", "backend.endpoint"),
            ("[backend]\ntype = \"s3\"\nbucket = \"b\"\naccess_key_id = \"a\"", "backend.access_key_id"),
            ("[backend]\ntype = \"s3\"\nbucket = \"b\"\nmax_attempts = 0", "backend.max_attempts"),
            ("[backend]\ntype = \"s3\"\nbucket = \"b\"\nconnect_timeout_secs = 0", "connect_timeout_secs"),
            ("[credentials]\naccess_key_id = \"client\"", "credentials"),
            ("[credentials]\nsecret_access_key = \"client-secret\"", "credentials"),
            ("[credentials]\naccess_key_id = \"a/b\"\nsecret_access_key = \"client-secret\"", "credentials"),
            ("[credentials]\naccess_key_id = \"abc\"\nsecret_access_key = \"short\"", "credentials"),
            ("[buckets.Bad_Name]", "buckets.Bad_Name"),
            ("[ingest]\nmax_entries = 0", "ingest.max_entries"),
            ("[ingest]\nmax_record_bytes = 0", "ingest.max_record_bytes"),
            ("[ingest]\nxz_memory_limit_bytes = 0", "ingest.xz_memory_limit_bytes"),
            ("[ingest]\nupload_concurrency = 0", "ingest.upload_concurrency"),
            ("[ingest]\nzstd_level = 23", "ingest.zstd_level"),
            ("[ingest]\nmax_entries = -1", "max_entries"),
            ("[buckets.cache]\nanonymous_read = \"true\"", "anonymous_read"),
            ("admin_listen = \"localhost:9001\"", "admin_listen"),
            ("admin_listen = 9001", "admin_listen"),
            ("log_format = \"xml\"", "log_format"),
            ("shutdown_grace_secs = -1", "shutdown_grace_secs"),
        ] {
            let message = error(Config::from_toml(text));
            assert!(message.contains(key), "{text:?}: {message}");
        }
        for (var, value) in [
            ("NARGATE_LISTEN", "localhost:9000"),
            ("NARGATE_READ_AHEAD", "many"),
            ("NARGATE_S3_PATH_STYLE", "yes"),
            ("NARGATE_S3_CONNECTIONS", "keep"),
            ("NARGATE_S3_PUT_CHECK", "md5"),
            ("NARGATE_S3_MAX_ATTEMPTS", "-1"),
            ("NARGATE_METADATA_TTL_SECS", "-1"),
            ("NARGATE_S3_CONNECT_TIMEOUT_SECS", "soon"),
            ("NARGATE_TABLE_CACHE_BYTES", "1G"),
            ("NARGATE_DOMAINS", "a.example,b.example:80"),
            ("NARGATE_ACCESS_KEY_ID", "only-the-id"),
            ("NARGATE_INGEST_MAX_ENTRIES", "many"),
            ("NARGATE_INGEST_ZSTD_LEVEL", "99"),
            ("NARGATE_ADMIN_LISTEN", "9001"),
            ("NARGATE_LOG_FORMAT", "xml"),
            ("NARGATE_SHUTDOWN_GRACE_SECS", "soon"),
        ] {
            let message = error(Config::load(None, env(&[(var, value), ("NARGATE_S3_BUCKET", "b")])));
            assert!(message.contains(var), "{var}={value}: {message}");
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let config = Config::load(
            None,
            env(&[
                ("NARGATE_S3_BUCKET", "b"),
                ("NARGATE_S3_ACCESS_KEY_ID", "backend-id"),
                ("NARGATE_S3_SECRET_ACCESS_KEY", "backend-hush-hush"),
                ("NARGATE_ACCESS_KEY_ID", "client-id"),
                ("NARGATE_SECRET_ACCESS_KEY", "client-hush-hush"),
            ]),
        )
        .unwrap();
        let BackendConfig::S3(s3) = &config.backend else { panic!() };
        for shown in [
            format!("{config:?}"),
            format!("{config:#?}"),
            format!("{:?}", s3.to_s3_config()),
            format!("{:?}", config.client_key_pair()),
        ] {
            assert!(!shown.contains("hush-hush"), "{shown}");
            assert!(shown.contains("-id") && shown.contains("<redacted>"), "{shown}");
        }
    }

    #[tokio::test]
    async fn opens_the_fs_backend() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let config = Config::load(None, env(&[("NARGATE_DATA", data.to_str().unwrap())])).unwrap();
        let backend = config.open_backend().await.unwrap();
        backend.put("k", bytes::Bytes::from_static(b"v")).await.unwrap();
        assert!(data.is_dir());
        let s3 = Config::load(None, env(&[("NARGATE_S3_BUCKET", "b"), ("NARGATE_S3_REGION", "r")])).unwrap();
        s3.open_backend().await.unwrap();
    }
}
