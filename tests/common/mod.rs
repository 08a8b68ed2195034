//! Helpers shared by the integration tests: the backends they run against.
//!
//! Include with `mod common;`. Each test binary uses a part of this module, so unused items are
//! allowed.
#![allow(dead_code)]

pub mod garage;

use std::sync::Arc;

use nargate::backend::DynBackend;
use nargate::backend::fs::FsBackend;
use tempfile::TempDir;

#[allow(unused_imports)]
pub use garage::garage_backend;

/// A fresh fs backend in a temporary directory, which is removed when the [`TempDir`] drops.
pub fn fs_backend() -> (TempDir, DynBackend) {
    let dir = tempfile::Builder::new().prefix("nargate-fs-").tempdir().expect("temporary directory");
    let backend = FsBackend::new(dir.path().join("bucket")).expect("fs backend");
    (dir, Arc::new(backend))
}
