//! Helpers shared by the integration tests: the backends they run against.
//!
//! Include with `mod common;`. Each test binary uses a part of this module, so unused items are
//! allowed.
#![allow(dead_code)]

pub mod garage;
pub mod gateway;
pub mod nix;
pub mod rclone;
pub mod serve;

use std::sync::Arc;

use nargate::backend::DynBackend;
use nargate::backend::fs::FsBackend;
use tempfile::TempDir;

#[allow(unused_imports)]
pub use garage::garage_backend;
#[allow(unused_imports)]
pub use nix::nar_hash;

/// A fresh fs backend in a temporary directory, which is removed when the [`TempDir`] drops.
pub fn fs_backend() -> (TempDir, DynBackend) {
    let dir = tempfile::Builder::new().prefix("nargate-fs-").tempdir().expect("temporary directory");
    let backend = FsBackend::new(dir.path().join("bucket")).expect("fs backend");
    (dir, Arc::new(backend))
}

/// `n` deterministic pseudo-random bytes (xorshift), different for each `seed`: test data that
/// neither compresses nor repeats.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The (status, S3 error code) of an SDK call that must fail.
pub fn failure<T: std::fmt::Debug, E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug>(
    result: Result<T, aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
) -> (u16, String) {
    let err = result.expect_err("the call should fail");
    let status = err.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
    let code = err.as_service_error().and_then(|e| e.code()).unwrap_or_default().to_owned();
    (status, code)
}

/// Writes one step a real client takes (`aws s3 cp …`, a request replayed with curl) straight
/// to the test process's standard error, which the test harness does not capture: the log of a
/// run shows every client command, passing or failing.
pub fn step(what: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "[client] {what}");
}

/// The contents of the files of a generated store path larger than the 8 MiB multipart
/// threshold of the aws cli and boto3: three pseudo-random files of 4 MiB (for
/// [`nix::Nix::add_generated_tree`]).
pub fn multipart_sized_files() -> Vec<Vec<u8>> {
    (0..3).map(|i| pseudo_random(4 << 20, 40 + i)).collect()
}
