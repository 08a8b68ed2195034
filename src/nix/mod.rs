//! Nix's formats, implemented from scratch: everything nargate needs to speak to Nix.
//!
//! - [`cache_info`]: a cache's `nix-cache-info` (StoreDir, WantMassQuery, Priority).
//! - [`nixbase32`]: Nix's base-32 encoding of hashes, and its XOR hash folding.
//! - [`hash`]: parsing and printing the SHA-256 hashes found in narinfo files.
//! - [`store_path`]: `/nix/store/<hash>-<name>` paths, parsed and validated.
//! - [`nar`]: the NAR archive format: a streaming async reader and a sync writer.
//! - [`narinfo`]: the `<hash>.narinfo` text format, parsed and rendered byte for byte as Nix does.
//! - [`signing`]: ed25519 signing keys and narinfo signatures, in Nix's key formats.
//!
//! Everything here takes untrusted input: parsers return `thiserror` errors, never panic, and bound
//! every length they read.

pub mod cache_info;
pub mod hash;
pub mod nar;
pub mod narinfo;
pub mod nixbase32;
pub mod signing;
pub mod store_path;
