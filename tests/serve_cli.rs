//! `nargate serve` as a newcomer runs it, reached by the real `curl` and aws cli (Debian's
//! `awscli`, v2, called by its full path `/usr/bin/aws`: a Python `aws` v1 may come first on
//! `PATH`). `.ci/install-tools.sh` installs both; without them these tests fail, never skip.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::gateway::{fixture_nars, fixtures};
use common::serve::{Server, nargate, serve, serve_with};

/// The aws cli v2 of Debian's `awscli`.
const AWS: &str = "/usr/bin/aws";

/// `nargate serve` over a bucket of the test Garage (a config file in `dir`).
fn serve_on_garage(dir: &Path) -> Server {
    let garage = common::garage::garage();
    let bucket = tokio::runtime::Runtime::new().unwrap().block_on(garage.create_bucket());
    let config = garage.config(&bucket);
    let toml = format!(
        "[backend]\ntype = \"s3\"\nendpoint = \"{}\"\nregion = \"{}\"\nbucket = \"{bucket}\"\npath_style = true\n\
         access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
        garage.endpoint, config.region, garage.key_id, garage.secret_key
    );
    let file = dir.join("nargate.toml");
    std::fs::write(&file, toml).unwrap();
    serve_with(&["--config", file.to_str().unwrap()])
}

impl Server {
    fn aws(&self, args: &[&str]) -> std::process::Output {
        assert!(
            Path::new(AWS).is_file(),
            "{AWS} is missing: install Debian's awscli with .ci/install-tools.sh"
        );
        common::step(format!("aws {}", args.join(" ")));
        let out = Command::new(AWS)
            .args(["--endpoint-url", &self.endpoint, "--region", "us-east-1"])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &self.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env_remove("AWS_PROFILE")
            .output()
            .expect("run the aws cli");
        assert!(out.status.success(), "aws {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// Runs `aws --debug args…`, which must succeed, and returns what it logged (the requests
    /// it sent, headers included).
    fn aws_debug(&self, args: &[&str]) -> String {
        let all: Vec<&str> = std::iter::once("--debug").chain(args.iter().copied()).collect();
        String::from_utf8_lossy(&self.aws(&all).stderr).into_owned()
    }
}

fn curl(url: &str) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl is missing: install it with .ci/install-tools.sh");
    let text = out.stdout;
    let split = text.iter().rposition(|&b| b == b'\n').unwrap();
    let status = String::from_utf8_lossy(&text[split + 1..]).trim().parse().unwrap();
    (status, text[..split].to_vec())
}

#[test]
fn serve_on_the_embedded_store_reached_by_curl_and_the_aws_cli() {
    let data = tempfile::tempdir().unwrap();
    let data_arg = data.path().to_str().unwrap();
    nargate(&[
        "import",
        "--data",
        data_arg,
        "--bucket",
        "nix",
        fixtures().join("cache-xz").to_str().unwrap(),
    ]);
    nargate(&["bucket", "set", "--data", data_arg, "nix", "--anonymous-read"]);
    let server = serve(data.path());

    // Anonymous reads of a public bucket, with curl.
    let (status, body) = curl(&format!("{}/nix/nix-cache-info", server.endpoint));
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n")
    );
    let (status, _) = curl(&format!("{}/health", server.endpoint));
    assert_eq!(status, 200);

    // The aws cli lists the bucket and copies NARs out, equal to the fixtures.
    let listing = String::from_utf8(server.aws(&["s3", "ls", "s3://nix/"]).stdout).unwrap();
    for name in ["nix-cache-info", "PRE nar/", "PRE store/"] {
        assert!(listing.contains(name), "{listing}");
    }
    let recursive =
        String::from_utf8(server.aws(&["s3", "ls", "--recursive", "s3://nix/nar/"]).stdout).unwrap();
    assert_eq!(recursive.lines().count(), fixture_nars().len(), "{recursive}");
    for (store_path, nar_hash, nar) in fixture_nars() {
        let out = server.aws(&["s3", "cp", &format!("s3://nix/nar/{nar_hash}.nar"), "-"]);
        assert!(out.stdout == nar, "aws s3 cp of {store_path}");
        let base = store_path.strip_prefix("/nix/store/").unwrap();
        let out = server.aws(&["s3", "cp", &format!("s3://nix/store/{base}.nar"), "-"]);
        assert!(out.stdout == nar, "aws s3 cp of store/{base}.nar");
    }
    let buckets = String::from_utf8(server.aws(&["s3", "ls"]).stdout).unwrap();
    assert!(buckets.contains(" nix\n") || buckets.trim_end().ends_with(" nix"), "{buckets}");

    // A second start over the same store generates no new key pair.
    drop(server);
    let mut again = Command::new(env!("CARGO_BIN_EXE_nargate"))
        .args(["serve", "--data", data_arg, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(again.stdout.take().unwrap()).lines();
    let mut printed = vec![];
    while let Some(Ok(line)) = lines.next() {
        let done = line.starts_with("nix:");
        printed.push(line);
        if done {
            break;
        }
    }
    let _ = again.kill();
    let _ = again.wait();
    assert!(printed.iter().any(|l| l.starts_with("nargate serving at http://127.0.0.1:")), "{printed:?}");
    assert!(printed.iter().any(|l| l.starts_with("key pairs: those in the store")), "{printed:?}");
    assert!(!printed.iter().any(|l| l.contains("secret access key:")), "{printed:?}");
}

#[test]
fn credentials_and_bucket_commands() {
    let data = tempfile::tempdir().unwrap();
    let data_arg = data.path().to_str().unwrap();
    let text = |out: std::process::Output| String::from_utf8(out.stdout).unwrap();

    let created = text(nargate(&["credentials", "create", "--data", data_arg, "--description", "ci"]));
    let id = created.lines().find_map(|l| l.strip_prefix("access key id:")).unwrap().trim().to_owned();
    assert!(created.contains("secret access key:"), "{created}");
    let listed = text(nargate(&["credentials", "list", "--data", data_arg]));
    assert!(listed.contains(&id) && listed.contains("ci"), "{listed}");
    let secret = created.lines().find_map(|l| l.strip_prefix("secret access key:")).unwrap().trim();
    assert!(!listed.contains(secret), "list never shows a secret");
    nargate(&["credentials", "delete", "--data", data_arg, &id]);
    assert!(!text(nargate(&["credentials", "list", "--data", data_arg])).contains(&id));

    let shown =
        text(nargate(&["bucket", "create", "--data", data_arg, "signed", "--sign", "--priority", "30"]));
    assert!(shown.contains("priority:        30"), "{shown}");
    let key_line =
        shown.lines().find(|l| l.contains("trusted-public-keys = ")).expect("the public key to trust");
    assert!(key_line.contains("signed-1:"), "{key_line}");
    let again = text(nargate(&["bucket", "show", "--data", data_arg, "signed"]));
    assert!(again.contains(key_line.trim()), "{again}");
    let set = text(nargate(&[
        "bucket",
        "set",
        "--data",
        data_arg,
        "signed",
        "--anonymous-read",
        "--want-mass-query",
        "false",
        "--browse",
    ]));
    assert!(set.contains("anonymous read:  true") && set.contains("WantMassQuery:   false"), "{set}");
    assert!(set.contains("browse (tree/):  true"), "{set}");
    let set = text(nargate(&["bucket", "set", "--data", data_arg, "signed", "--browse=false"]));
    assert!(set.contains("browse (tree/):  false") && set.contains("anonymous read:  true"), "{set}");
    let missing = Command::new(env!("CARGO_BIN_EXE_nargate"))
        .args(["bucket", "show", "--data", data_arg, "nope"])
        .output()
        .unwrap();
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("no bucket nope"));
}

/// The aws cli fills a cache as it fills any bucket — `aws s3 sync` of a `file://` cache (it
/// sends narinfos before NARs, and several at once) — reads it back, pages through it, and
/// empties it with `aws s3 rm --recursive` until `aws s3 rb` succeeds.
#[test]
fn aws_cli_syncs_a_cache_in_and_empties_it_on_fs() {
    let data = tempfile::tempdir().unwrap();
    aws_cli_round_trip(&serve(data.path()));
}

/// The same over a real Garage.
#[test]
fn aws_cli_syncs_a_cache_in_and_empties_it_on_garage() {
    let dir = tempfile::tempdir().unwrap();
    aws_cli_round_trip(&serve_on_garage(dir.path()));
}

fn aws_cli_round_trip(server: &Server) {
    server.aws(&["s3", "mb", "s3://synced"]);
    let cache = fixtures().join("cache-xz");
    server.aws(&["s3", "sync", cache.to_str().unwrap(), "s3://synced"]);

    let text = |out: std::process::Output| String::from_utf8(out.stdout).unwrap();
    let listing = text(server.aws(&["s3", "ls", "--recursive", "s3://synced/"]));
    let narinfos: Vec<&str> = listing.lines().filter(|l| l.ends_with(".narinfo")).collect();
    assert_eq!(narinfos.len(), fixture_nars().len(), "{listing}");
    assert!(!listing.contains(".nar.xz"), "upload keys are not kept: {listing}");
    for (store_path, nar_hash, nar) in fixture_nars() {
        let out = server.aws(&["s3", "cp", &format!("s3://synced/nar/{nar_hash}.nar"), "-"]);
        assert!(out.stdout == nar, "{store_path} reads back as Nix dumped it");
        let hash = &store_path["/nix/store/".len()..][..32];
        let info = text(server.aws(&["s3", "cp", &format!("s3://synced/{hash}.narinfo"), "-"]));
        assert!(info.contains(&format!("URL: nar/{nar_hash}.nar")), "{info}");
    }

    // A ranged get-object and head-object agree with the fixture.
    let (_, nar_hash, nar) = fixture_nars().into_iter().max_by_key(|(_, _, n)| n.len()).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let out_file = scratch.path().join("range.out");
    let key = format!("nar/{nar_hash}.nar");
    server.aws(&[
        "s3api",
        "get-object",
        "--bucket",
        "synced",
        "--key",
        &key,
        "--range",
        "bytes=1000-1999",
        out_file.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&out_file).unwrap() == nar[1000..2000]);
    let head = text(server.aws(&["s3api", "head-object", "--bucket", "synced", "--key", &key]));
    assert!(head.contains(&format!("\"ContentLength\": {}", nar.len())), "{head}");

    // Paging: the cli follows continuation tokens with page size 1.
    let paged = text(server.aws(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        "synced",
        "--page-size",
        "1",
        "--max-items",
        "3",
        "--query",
        "Contents[].Key",
        "--output",
        "text",
    ]));
    assert_eq!(paged.split_whitespace().filter(|k| *k != "None").count(), 3, "{paged}");

    // A NAR larger than the cli's 8 MiB multipart threshold, of a store path real Nix made
    // (`nix-store --add` of a generated tree, then `nix-store --dump`): a multipart upload of
    // 8 MiB parts, ingested at Complete; read back with parallel ranged GETs. `--debug` shows
    // the requests the cli sent.
    let nix = common::nix::Nix::new();
    let made = nix.add_generated_tree("aws-cli-big", &common::multipart_sized_files());
    assert!(made.nar.len() > 8 << 20, "{} bytes", made.nar.len());
    common::step(format!(
        "aws cli: {} ({} bytes) at nar/{}.nar",
        made.store_path,
        made.nar.len(),
        made.nar_hash
    ));
    let big_file = scratch.path().join("big.nar");
    std::fs::write(&big_file, &made.nar).unwrap();
    let big_key = format!("s3://synced/nar/{}.nar", made.nar_hash);
    let sent = server.aws_debug(&["s3", "cp", big_file.to_str().unwrap(), &big_key]);
    for operation in ["CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"] {
        let request = format!("OperationModel(name={operation})");
        assert!(sent.contains(&request), "aws s3 cp sent no {operation}");
    }
    let back = scratch.path().join("big.back");
    let sent = server.aws_debug(&["s3", "cp", &big_key, back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == made.nar, "the multipart-uploaded NAR reads back whole");
    // Each ranged GET shows in the log more than once (its parameters, then its headers).
    let mut ranges: Vec<&str> =
        sent.split("'Range': 'bytes=").skip(1).filter_map(|rest| rest.split('\'').next()).collect();
    ranges.sort_unstable();
    ranges.dedup();
    assert!(ranges.len() >= 2, "aws s3 cp of {} bytes downloads in ranges: {ranges:?}", made.nar.len());
    // The issue expected If-Match on those GETs; the cli 2.9 sends none (newer ones do).
    let if_match = sent.contains("'If-Match'");
    common::step(format!("aws cli: downloaded in ranges {ranges:?}; If-Match sent: {if_match}"));

    // One narinfo removed, then everything; the bucket then goes.
    let (first, _, _) = &fixture_nars()[0];
    let hash = &first["/nix/store/".len()..][..32];
    server.aws(&["s3", "rm", &format!("s3://synced/{hash}.narinfo")]);
    assert!(!text(server.aws(&["s3", "ls", "s3://synced/"])).contains(&format!("{hash}.narinfo")));
    server.aws(&["s3", "rm", "--recursive", "s3://synced/"]);
    let left = text(server.aws(&["s3", "ls", "--recursive", "s3://synced/"]));
    assert_eq!(left.lines().filter(|l| !l.ends_with("nix-cache-info")).count(), 0, "{left}");
    server.aws(&["s3", "rb", "s3://synced"]);
    assert!(!text(server.aws(&["s3", "ls"])).contains("synced"));
}
