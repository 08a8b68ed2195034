//! nargate: an S3-compatible object gateway for Nix binary caches.
//!
//! Store paths are kept deduplicated, as content-defined chunks in an object store, and every NAR
//! is rendered on the fly by a seekable renderer. See `DESIGN.md` for the architecture.
//!
//! - [`nix`]: Nix's formats (nixbase32, store paths, NAR, narinfo, signatures).
//! - [`backend`]: the object-bucket trait and its S3 and local-directory implementations.
//! - [`cache`]: a bucket as a Nix binary cache: its records and the commit path.
//! - [`castore`]: the content-addressed store: digests, directories, chunks, NAR records.
//! - [`ingest`]: a NAR upload becomes chunks and a NAR record.
//! - [`render`]: segment tables and the seekable NAR renderer.
//! - [`config`]: the TOML configuration of `nargate serve` and its `NARGATE_*` overrides.
//! - [`credentials`]: the client key pairs every gateway over one backend accepts.
//! - [`gateway`]: the S3 front end (`nargate serve`).
//! - [`gc`]: garbage collection, retention, verification and statistics of a store.
//! - [`metrics`]: the counters and histograms of `/metrics`, in the Prometheus text format.

pub mod backend;
pub mod cache;
pub mod castore;
pub mod config;
pub mod credentials;
pub mod gateway;
pub mod gc;
pub mod ingest;
pub mod metrics;
pub mod nix;
pub mod render;
