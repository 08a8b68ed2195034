//! Real Nix (Debian's `nix-bin`, Nix 2.8) substitutes from the gateway over `http://`, as its
//! HTTP binary cache store does: `nix-cache-info`, narinfos, then the NARs their URLs name. With
//! the fixtures' signing key trusted and signatures required, the paths it copies into a fresh
//! chroot store have the hashes Nix recorded; a private bucket is reached with a netrc (Nix sends
//! HTTP Basic on every request). Nix runs as in `tests/nix_accepts.rs` (`tests/common/nix.rs`):
//! its own temp dir, `substituters =` empty, only the stores named here.

mod common;

use std::path::Path;

use common::gateway::{fixture_nars, fixtures, start};
use common::nix::Nix;

/// The public key the fixture narinfos are signed with.
fn fixture_key() -> String {
    std::fs::read_to_string(fixtures().join("public.key")).unwrap().trim().to_owned()
}

/// `nix copy --from <url> --to local?root=<root> <paths>` with the fixture key trusted.
fn copy(nix: &Nix, url: &str, root: &Path, extra: &[&str], paths: &[String]) -> std::process::Output {
    let mut args: Vec<String> = vec![
        "copy".into(),
        "--from".into(),
        url.into(),
        "--to".into(),
        format!("local?root={}", root.display()),
        "--trusted-public-keys".into(),
        fixture_key(),
        "--option".into(),
        "require-sigs".into(),
        "true".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(paths.iter().cloned());
    nix.run(&nix.nix, &args)
}

/// A netrc in Nix's temp dir with the gateway's key pair (Nix sends it as HTTP Basic); its path.
fn write_netrc(nix: &Nix, gw: &common::gateway::TestGateway) -> String {
    let netrc = nix.path("netrc");
    std::fs::write(
        &netrc,
        format!("machine 127.0.0.1 login {} password {}\n", gw.keys.access_key_id, gw.keys.secret_access_key),
    )
    .unwrap();
    netrc.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_substitutes_from_the_gateway_over_http() {
    let (_dir, backend) = common::fs_backend();
    let gw = start(backend).await;
    gw.import("open", true, &["cache-xz"]).await;
    gw.import("closed", false, &["cache-zstd"]).await;
    let paths: Vec<String> = fixture_nars().into_iter().map(|(path, _, _)| path).collect();
    let nix = Nix::new();

    let endpoint = gw.endpoint.clone();
    let run = {
        let paths = paths.clone();
        move |nix: &Nix, bucket: &str, root: &Path, extra: &[&str]| {
            copy(nix, &format!("{endpoint}/{bucket}"), root, extra, &paths)
        }
    };

    // A public bucket: anonymous.
    let root = nix.path("public-store");
    let out = tokio::task::block_in_place(|| run(&nix, "open", &root, &[]));
    assert!(
        out.status.success(),
        "nix copy from the public bucket: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (path, nar_hash, _) in fixture_nars() {
        let store = format!("local?root={}", root.display());
        let hash = nix.run_ok(&nix.nix_store, ["--store", store.as_str(), "-q", "--hash", path.as_str()]);
        assert_eq!(String::from_utf8_lossy(&hash.stdout).trim(), format!("sha256:{nar_hash}"), "{path}");
        nix.run_ok(&nix.nix_store, ["--store", store.as_str(), "--verify-path", path.as_str()]);
    }

    // A private bucket: refused without credentials, served with a netrc.
    let root = nix.path("private-store");
    let out = tokio::task::block_in_place(|| run(&nix, "closed", &root, &[]));
    assert!(!out.status.success(), "a private bucket must refuse anonymous Nix");
    let netrc_arg = write_netrc(&nix, &gw);
    let out =
        tokio::task::block_in_place(|| run(&nix, "closed", &root, &["--option", "netrc-file", &netrc_arg]));
    assert!(out.status.success(), "nix copy with a netrc: {}", String::from_utf8_lossy(&out.stderr));

    // `nix store ls` lists a path straight from the cache, as it lists it from the fixture cache.
    let hello = paths.iter().find(|p| p.ends_with("-hello")).unwrap();
    let ls = |store: String| {
        let out =
            nix.run_ok(&nix.nix, ["store", "ls", "--store", store.as_str(), "-R", "-l", hello.as_str()]);
        String::from_utf8(out.stdout).unwrap()
    };
    let from_gateway = tokio::task::block_in_place(|| ls(format!("{}/open", gw.endpoint)));
    let from_fixture = ls(format!("file://{}", fixtures().join("cache-none").display()));
    assert!(from_gateway.lines().count() > 10, "{from_gateway}");
    assert_eq!(from_gateway, from_fixture);
}

/// Real Nix uploads to the gateway as its HTTP binary cache store does (`nix copy --to
/// http://…` with a netrc: `nix-cache-info`, narinfo lookups, `HEAD` of the compressed NAR's
/// upload key, `PUT` of the NAR with `Expect: 100-continue`, then the narinfo), xz-compressed and
/// uncompressed; then a fresh store substitutes every path back from the bucket with the
/// fixtures' signatures checked, and gets the hashes Nix recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_copies_to_the_gateway_and_back() {
    let backend = common::garage_backend().await;
    let gw = start(backend).await;
    let client = gw.client();
    let paths: Vec<String> = fixture_nars().into_iter().map(|(path, _, _)| path).collect();
    let nix = Nix::new();
    let netrc_arg = write_netrc(&nix, &gw);
    // Nix 2.8 knows no `narinfo-compression` or `ls-compression` (it warns "unknown setting"):
    // Content-Encoding of narinfos is covered with the SDK in tests/uploads.rs. It does send a
    // `.ls` with `write-nar-listing`.
    let xz = "xz&write-nar-listing=true";
    for (bucket, compression) in [("nix-up-xz", xz), ("nix-up-none", "none")] {
        client.create_bucket().bucket(bucket).send().await.unwrap();
        let from = format!("file://{}", fixtures().join("cache-zstd").display());
        let to = format!("{}/{bucket}?compression={compression}", gw.endpoint);
        let mut args: Vec<String> = vec![
            "copy".into(),
            "--from".into(),
            from,
            "--to".into(),
            to,
            "--no-check-sigs".into(),
            "--option".into(),
            "netrc-file".into(),
            netrc_arg.clone(),
        ];
        args.extend(paths.iter().cloned());
        let out = tokio::task::block_in_place(|| nix.run(&nix.nix, &args));
        assert!(out.status.success(), "nix copy --to the gateway: {}", String::from_utf8_lossy(&out.stderr));

        // Another Nix, whose narinfo cache (`~/.cache/nix`) has not seen the narinfos uploaded.
        let fresh = Nix::new();
        let root = fresh.path(&format!("store-from-{bucket}"));
        let url = format!("{}/{bucket}", gw.endpoint);
        let extra = ["--option", "netrc-file", netrc_arg.as_str()];
        let out = tokio::task::block_in_place(|| copy(&fresh, &url, &root, &extra, &paths));
        assert!(
            out.status.success(),
            "nix copy --from the gateway: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (path, nar_hash, _) in fixture_nars() {
            let store = format!("local?root={}", root.display());
            let hash =
                fresh.run_ok(&fresh.nix_store, ["--store", store.as_str(), "-q", "--hash", path.as_str()]);
            assert_eq!(String::from_utf8_lossy(&hash.stdout).trim(), format!("sha256:{nar_hash}"), "{path}");
            fresh.run_ok(&fresh.nix_store, ["--store", store.as_str(), "--verify-path", path.as_str()]);
        }

        // `nix path-info` and `nix store cat` straight from the bucket, as from the fixture cache.
        let fixture = format!("file://{}", fixtures().join("cache-none").display());
        let single = paths.iter().find(|p| p.ends_with("-single-file")).unwrap();
        for (args, what) in
            [(vec!["path-info", "--json"], single.clone()), (vec!["store", "cat"], single.clone())]
        {
            let ask = |store: &str| {
                let nix = Nix::new();
                let mut all: Vec<&str> = args.clone();
                all.extend(["--store", store, "--option", "netrc-file", netrc_arg.as_str(), what.as_str()]);
                let out = tokio::task::block_in_place(|| nix.run_ok(&nix.nix, &all));
                out.stdout
            };
            let (ours, theirs) = (ask(&url), ask(&fixture));
            if args[0] == "path-info" {
                let field = |json: &[u8], name: &str| {
                    let text = String::from_utf8_lossy(json).into_owned();
                    let at = text.find(&format!("\"{name}\"")).unwrap_or_else(|| panic!("{name} in {text}"));
                    text[at..].split([',', '}']).next().unwrap().to_owned()
                };
                for name in ["narHash", "narSize", "ca"] {
                    assert_eq!(field(&ours, name), field(&theirs, name), "nix path-info {name}");
                }
            } else {
                assert!(ours == theirs && !ours.is_empty(), "nix store cat {what}");
            }
        }
    }
}
