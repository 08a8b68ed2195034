//! boto3, the newest release (pip-installed by `.ci/install-boto3.sh` into `target/boto3-venv`,
//! or `$BOTO3_VENV`), against a gateway over a real Garage: the client script
//! `tests/clients/boto3_suite.py` puts, gets, heads, lists and deletes objects with boto3's
//! default checksums (CRC32, `when_supported`), uploads a NAR that real Nix made with
//! `upload_file` (multipart: it is larger than boto3's 8 MiB threshold) and downloads it with
//! `download_file`, reads a fixture NAR, and GETs presigned URLs with `requests` and `curl`; every
//! download must equal the bytes. The script prints each step; without the venv this test fails,
//! naming the install script.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::gateway::{fixture_nars, start};

/// The venv's python: `$BOTO3_VENV/bin/python`, else `target/boto3-venv/bin/python` in the
/// repository (where `.ci/install-boto3.sh` puts it); panics when it is missing.
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("BOTO3_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/boto3-venv"));
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "no boto3 venv at {}: make it with .ci/install-boto3.sh (test.sh runs it), then run the tests again",
        venv.display()
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_reads_writes_and_presigns() {
    let python = venv_python();
    let gw = start(common::garage_backend().await).await;
    gw.import("fixtures", false, &["cache-xz"]).await;
    let (store_path, nar_hash, _) = fixture_nars().into_iter().max_by_key(|(_, _, n)| n.len()).unwrap();
    let fixture_nar =
        common::gateway::fixtures().join("nars").join(format!("{}.nar", &store_path["/nix/store/".len()..]));

    let nix = common::nix::Nix::new();
    let made =
        tokio::task::block_in_place(|| nix.add_generated_tree("boto3-big", &common::multipart_sized_files()));
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("made.nar");
    std::fs::write(&big, &made.nar).unwrap();
    common::step(format!(
        "boto3: {} ({} bytes) goes to nar/{}.nar",
        made.store_path,
        made.nar.len(),
        made.nar_hash
    ));

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/boto3_suite.py");
    let mut command = Command::new(&python);
    command
        .arg(&script)
        .env("NARGATE_ENDPOINT", &gw.endpoint)
        .env("AWS_ACCESS_KEY_ID", &gw.keys.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &gw.keys.secret_access_key)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_REQUEST_CHECKSUM_CALCULATION")
        .env_remove("AWS_RESPONSE_CHECKSUM_VALIDATION")
        .env("BUCKET", "boto3")
        .env("FIXTURE_BUCKET", "fixtures")
        .env("FIXTURE_NAR_KEY", format!("nar/{nar_hash}.nar"))
        .env("FIXTURE_NAR", &fixture_nar)
        .env("BIG_NAR", &big)
        .env("BIG_NAR_KEY", format!("nar/{}.nar", made.nar_hash))
        .env("WORK_DIR", work.path());
    common::step(format!("{} {}", python.display(), script.display()));
    // The script's output goes straight to the test's stdout and stderr: the log shows each step.
    let status = tokio::task::block_in_place(|| command.status()).expect("run the boto3 script");
    assert!(status.success(), "tests/clients/boto3_suite.py failed ({status}): its output is above");
}
