//! Real Nix accepts the narinfo signatures nargate makes, and refuses bad ones.
//!
//! These tests run Debian's `nix-bin` (Nix 2.8; `.ci/install-tools.sh` installs it, and a test
//! panics when it is missing, never skips) against a copy of a fixture binary cache
//! (`tests/fixtures`, see its README) whose narinfos are re-signed with [`sign_narinfo`] and written
//! back with [`NarInfo::render`]. Store paths, hashes and keys are read from the files.
//!
//! How Nix checks signatures:
//!
//! - `nix store verify --store file://<cache> --trusted-public-keys <pk> --sigs-needed 1 <paths>`
//!   reads each narinfo, checks its `Sig:` lines against the trusted keys and its NAR against
//!   `NarHash`. Its exit status is the sum of 1 (a NAR does not match), 2 (a path has no valid
//!   signature: `path '…' is untrusted` on stderr) and 4 (any other error, e.g. a narinfo Nix
//!   cannot parse).
//! - `nix copy --from file://<cache> --to local?root=<dir>` with `require-sigs` is what a
//!   substituter does: it refuses a path that "lacks a valid signature".
//!
//! Nix trusts a content-addressed path whose `CA:` matches its store path *without any signature*,
//! so three of the four fixture paths (all but `…-app`) pass whatever their `Sig:` says. The tests
//! where signatures must matter drop the `CA:` lines (a signature does not cover them), and
//! [`nix_trusts_content_addressed_paths_without_signatures`] pins that behaviour down.
//!
//! Nix runs as an ordinary program in a temp dir: its environment is cleared, and `HOME`, the XDG
//! dirs, `NIX_CONF_DIR` (a `nix.conf` with no substituters, no trusted keys and no build users),
//! `NIX_STATE_DIR`, `NIX_LOG_DIR` and `TMPDIR` point into the temp dir. Key generation runs against
//! the `dummy://` store (plain `nix-store` would open, and as root create, `/nix/store` and
//! `/nix/var/nix`), verification against the file:// cache itself, and copies go to a chroot store
//! (`local?root=`) in the temp dir: nothing is written to `/nix`, no daemon is needed, and nothing
//! goes over the network.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

use common::nix::{Nix, copy_dir};
use nargate::nix::narinfo::NarInfo;
use nargate::nix::signing::{PublicKey, SecretKey, sign_narinfo, verify_narinfo};

/// The fixture cache the tests copy (any of them would do; xz is what Nix writes by default).
const FIXTURE_CACHE: &str = "cache-xz";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// What `nix store verify` said.
#[derive(Debug)]
struct Verdict {
    /// Its exit status (`None` if killed by a signal).
    code: Option<i32>,
    /// The paths it reported as untrusted.
    untrusted: BTreeSet<String>,
    /// The paths it reported checking.
    checked: BTreeSet<String>,
    /// Its whole stderr.
    stderr: String,
}

impl Nix {
    /// A key pair made by `nix-store --generate-binary-cache-key`: the secret and public key files'
    /// paths and contents.
    fn generate_key(&self, name: &str) -> (PathBuf, String, String) {
        let secret_file = self.path(&format!("{name}.secret"));
        let public_file = self.path(&format!("{name}.public"));
        self.run_ok(
            &self.nix_store,
            [
                "--store".as_ref(),
                "dummy://".as_ref(),
                "--generate-binary-cache-key".as_ref(),
                name.as_ref(),
                secret_file.as_os_str(),
                public_file.as_os_str(),
            ],
        );
        let secret = std::fs::read_to_string(&secret_file).unwrap();
        let public = std::fs::read_to_string(&public_file).unwrap();
        (secret_file, secret, public)
    }

    /// `nix store verify` of `paths` in `cache`, trusting `keys` only, needing one signature.
    fn verify(&self, cache: &Cache, keys: &[&PublicKey], paths: &[String]) -> Verdict {
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let mut args = vec![
            "store".to_string(),
            "verify".into(),
            "--store".into(),
            cache.url(),
            "--trusted-public-keys".into(),
            keys.join(" "),
            "--sigs-needed".into(),
            "1".into(),
        ];
        args.extend(paths.iter().cloned());
        let output = self.run(&self.nix, &args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let quoted = |line: &str, before: &str, after: &str| {
            line.strip_prefix(before).and_then(|rest| rest.strip_suffix(after)).map(str::to_owned)
        };
        Verdict {
            code: output.status.code(),
            untrusted: stderr.lines().filter_map(|l| quoted(l, "path '", "' is untrusted")).collect(),
            checked: stderr.lines().filter_map(|l| quoted(l, "checking '", "'...")).collect(),
            stderr,
        }
    }

    /// `nix copy` of `paths` from `cache` into the chroot store at `root`, trusting `key` only and
    /// requiring signatures.
    fn copy(&self, cache: &Cache, key: &PublicKey, root: &Path, paths: &[String]) -> Output {
        let mut args = vec![
            "copy".to_string(),
            "--from".into(),
            cache.url(),
            "--to".into(),
            local_store(root),
            "--trusted-public-keys".into(),
            key.to_string(),
            "--option".into(),
            "require-sigs".into(),
            "true".into(),
        ];
        args.extend(paths.iter().cloned());
        self.run(&self.nix, &args)
    }

    /// `nix store sign` of `paths` in `cache` with the secret key in `key_file`: Nix adds its
    /// signatures to the narinfos.
    fn sign(&self, cache: &Cache, key_file: &Path, paths: &[String]) {
        let mut args = vec![
            "store".to_string(),
            "sign".into(),
            "--store".into(),
            cache.url(),
            "--key-file".into(),
            key_file.to_str().unwrap().into(),
        ];
        args.extend(paths.iter().cloned());
        self.run_ok(&self.nix, &args);
    }
}

/// The URL of a chroot store at `root` (store paths in `<root>/nix/store`).
fn local_store(root: &Path) -> String {
    format!("local?root={}", root.display())
}

/// A copy of the fixture binary cache in a temp dir, with its narinfos parsed.
struct Cache {
    dir: PathBuf,
    /// Each narinfo's file and contents.
    infos: Vec<(PathBuf, NarInfo)>,
}

impl Cache {
    /// Copies the fixture cache into `<into>/<name>`.
    fn copy_fixture(into: &Path, name: &str) -> Self {
        let dir = into.join(name);
        copy_dir(&fixtures().join(FIXTURE_CACHE), &dir);
        let mut cache = Self { dir, infos: Vec::new() };
        cache.reload();
        assert_eq!(cache.infos.len(), 4, "the fixture README describes four store paths");
        cache
    }

    /// Reads the narinfos from disk again.
    fn reload(&mut self) {
        let mut infos: Vec<(PathBuf, NarInfo)> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "narinfo"))
            .map(|path| {
                let text = std::fs::read_to_string(&path).unwrap();
                let info = NarInfo::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                (path, info)
            })
            .collect();
        infos.sort_by(|a, b| a.0.cmp(&b.0));
        self.infos = infos;
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    /// Every store path in the cache, in full.
    fn paths(&self) -> Vec<String> {
        self.infos.iter().map(|(_, info)| info.store_path.to_absolute()).collect()
    }

    /// The narinfo of the store path named `name` (`app`, `hello`, …).
    fn info(&mut self, name: &str) -> &mut NarInfo {
        let found = self.infos.iter_mut().find(|(_, info)| info.store_path.name() == name);
        &mut found.unwrap_or_else(|| panic!("no `…-{name}` store path in the fixture cache")).1
    }

    /// Replaces every narinfo's signatures with one by `key`.
    fn sign_all(&mut self, key: &SecretKey) {
        for (_, info) in &mut self.infos {
            info.sigs.clear();
            sign_narinfo(info, key).unwrap();
        }
    }

    /// Drops every `CA:` line, so that Nix trusts a path only for its signatures.
    fn strip_content_addresses(&mut self) {
        for (_, info) in &mut self.infos {
            info.ca = None;
        }
    }

    /// Writes the narinfos back with [`NarInfo::render`].
    fn save(&self) {
        for (path, info) in &self.infos {
            std::fs::write(path, info.render()).unwrap();
        }
    }
}

/// Asserts that Nix checked every one of `paths`, found all of them trusted and their NARs intact.
#[track_caller]
fn assert_accepted(verdict: &Verdict, paths: &[String]) {
    assert_eq!(verdict.code, Some(0), "nix store verify refused:\n{}", verdict.stderr);
    assert!(verdict.untrusted.is_empty(), "{verdict:?}");
    assert_eq!(verdict.checked, paths.iter().cloned().collect(), "{}", verdict.stderr);
}

/// Asserts that Nix found exactly `untrusted` untrusted (exit status 2: no corrupt NAR, no other
/// error) among the paths it checked.
#[track_caller]
fn assert_untrusted(verdict: &Verdict, untrusted: &[impl AsRef<str>]) {
    assert_eq!(verdict.code, Some(2), "expected only untrusted paths:\n{}", verdict.stderr);
    let expected: BTreeSet<String> = untrusted.iter().map(|s| s.as_ref().to_owned()).collect();
    assert_eq!(verdict.untrusted, expected, "{}", verdict.stderr);
}

#[test]
fn nix_generated_key_pair_parses_and_matches_ours() {
    let nix = Nix::new();
    let (_, secret_text, public_text) = nix.generate_key("nargate-test-1");
    let secret = SecretKey::parse(&secret_text).unwrap();
    let public = PublicKey::parse(&public_text).unwrap();
    assert_eq!(secret.name(), "nargate-test-1");
    assert_eq!(public.name(), "nargate-test-1");
    assert_eq!(secret.to_public(), public, "our public half of Nix's secret key is Nix's public key");
    // We write keys as Nix does (Nix writes no trailing newline; accept one if a later Nix does).
    assert_eq!(secret.to_string(), secret_text.trim_end());
    assert_eq!(public.to_string(), public_text.trim_end());
    // And a signature by the secret key verifies under the public key.
    assert!(public.verify("1;fingerprint", &secret.sign("1;fingerprint")));
}

/// Nix itself signs the fixture narinfos (`nix store sign`), with a key it made and with a key we
/// made: every signature is the one we make (ed25519 is deterministic), so Nix also reads the secret
/// keys we write, and the narinfos Nix writes back are the ones we render.
#[test]
fn nix_signs_exactly_as_we_do() {
    let nix = Nix::new();
    let (nix_key_file, nix_key, _) = nix.generate_key("nix-made-1");
    let ours = SecretKey::generate("nargate-made-1").unwrap();
    let our_key_file = nix.path("nargate-made-1.secret");
    std::fs::write(&our_key_file, ours.to_string()).unwrap();
    let keys = [(nix_key_file, SecretKey::parse(&nix_key).unwrap()), (our_key_file, ours)];

    let mut cache = Cache::copy_fixture(nix.dir(), "cache");
    for (_, info) in &mut cache.infos {
        info.sigs.clear();
    }
    cache.save();
    let unsigned = cache.infos.clone();
    for (file, _) in &keys {
        nix.sign(&cache, file, &cache.paths());
    }
    cache.reload();
    let publics: Vec<PublicKey> = keys.iter().map(|(_, key)| key.to_public()).collect();
    for ((_, mut expected), (file, signed)) in unsigned.into_iter().zip(&cache.infos) {
        for (_, key) in &keys {
            sign_narinfo(&mut expected, key).unwrap();
        }
        assert_eq!(signed.sigs.len(), 2, "{}", file.display());
        let got: BTreeSet<&String> = signed.sigs.iter().collect();
        assert_eq!(got, expected.sigs.iter().collect(), "{}", file.display());
        for public in &publics {
            assert!(verify_narinfo(signed, std::slice::from_ref(public)));
        }
        // Nix rewrote the narinfo with its own writer (signatures sorted): byte for byte what
        // `render` writes.
        expected.sigs.sort();
        assert_eq!(std::fs::read_to_string(file).unwrap(), expected.render(), "{}", file.display());
    }
}

/// Signatures made by `sign_narinfo` and written by `NarInfo::render` satisfy `nix store verify`,
/// with a key Nix made and with a key we made, for every path (the `…-app` one has three
/// references), whether or not the content-addressed paths keep their `CA:` lines.
#[test]
fn nix_verifies_our_signatures() {
    let nix = Nix::new();
    let (_, nix_key, _) = nix.generate_key("nix-made-1");
    let nix_key = SecretKey::parse(&nix_key).unwrap();
    let our_key = SecretKey::generate("nargate-made-1").unwrap();
    let fixture_key = PublicKey::parse(&std::fs::read_to_string(fixtures().join("public.key")).unwrap())
        .expect("tests/fixtures/public.key");

    for (label, key) in [("nix-made", &nix_key), ("nargate-made", &our_key)] {
        for strip_ca in [false, true] {
            let mut cache = Cache::copy_fixture(nix.dir(), &format!("{label}-strip-ca-{strip_ca}"));
            let paths = cache.paths();
            let app = cache.info("app");
            assert_eq!(app.references.len(), 3, "the fixture `…-app` has three references");
            assert!(app.ca.is_none(), "`…-app` is input-addressed: only its signature makes it trusted");
            // Nix writes references sorted, but the fingerprint sorts them whatever their order in
            // the narinfo (Nix reads them into a set): list them out of order.
            app.references.reverse();
            assert!(!app.references.is_sorted());
            cache.sign_all(key);
            if strip_ca {
                cache.strip_content_addresses();
            }
            cache.save();

            let public = key.to_public();
            assert_accepted(&nix.verify(&cache, &[&public], &paths), &paths);
            // Several trusted keys: ours among them is enough.
            assert_accepted(&nix.verify(&cache, &[&fixture_key, &public], &paths), &paths);

            // The fixture's own signatures are gone: its key vouches for nothing any more (except,
            // with their `CA:` lines, the content-addressed paths, which need no signature).
            let verdict = nix.verify(&cache, &[&fixture_key], &paths);
            if strip_ca {
                assert_untrusted(&verdict, &paths);
            } else {
                assert_untrusted(&verdict, &[&cache.info("app").store_path.to_absolute()]);
            }
        }
    }
}

/// Nix refuses a signature by another key (with the trusted key's name or its own), and one whose
/// narinfo's references changed after signing; in the same run it accepts the paths signed right.
#[test]
fn nix_rejects_bad_signatures() {
    let nix = Nix::new();
    let (_, nix_key, _) = nix.generate_key("nix-made-1");
    let nix_key = SecretKey::parse(&nix_key).unwrap();
    let our_key = SecretKey::generate("nargate-made-1").unwrap();

    for key in [&nix_key, &our_key] {
        let public = key.to_public();
        let impostor = SecretKey::generate(key.name()).unwrap();
        let stranger = SecretKey::generate("stranger-1").unwrap();
        let mut cache = Cache::copy_fixture(nix.dir(), &format!("bad-{}", key.name()));
        let paths = cache.paths();
        cache.sign_all(key);
        cache.strip_content_addresses();

        // `…-hello`: signed by another key that has the trusted key's name.
        let hello = cache.info("hello");
        hello.sigs.clear();
        sign_narinfo(hello, &impostor).unwrap();
        let hello = hello.store_path.to_absolute();
        // `…-single-symlink`: signed by another key with another name.
        let symlink = cache.info("single-symlink");
        symlink.sigs.clear();
        sign_narinfo(symlink, &stranger).unwrap();
        let symlink = symlink.store_path.to_absolute();
        // `…-app`: signed right, then one of its three references dropped.
        let app = cache.info("app");
        assert!(verify_narinfo(app, std::slice::from_ref(&public)));
        let dropped = app.references.iter().position(|r| r.ends_with("-hello")).unwrap();
        app.references.remove(dropped);
        assert!(!verify_narinfo(app, std::slice::from_ref(&public)));
        let app = app.store_path.to_absolute();
        // `…-single-file` stays signed right: the control.
        cache.save();

        let verdict = nix.verify(&cache, &[&public], &paths);
        assert_untrusted(&verdict, &[&hello, &symlink, &app]);
        assert_eq!(verdict.checked, paths.iter().cloned().collect(), "{}", verdict.stderr);
        // Each alone, too (a run that refuses everything would pass the check above only by luck).
        for path in [&hello, &symlink, &app] {
            assert_untrusted(&nix.verify(&cache, &[&public], std::slice::from_ref(path)), &[path]);
        }
        let file = cache.info("single-file").store_path.to_absolute();
        let alone = std::slice::from_ref(&file);
        assert_accepted(&nix.verify(&cache, &[&public], alone), alone);
        // The stranger's signature is valid, just not trusted: trusting its key makes it pass.
        let symlink_alone = std::slice::from_ref(&symlink);
        assert_accepted(&nix.verify(&cache, &[&public, &stranger.to_public()], symlink_alone), symlink_alone);
    }
}

/// Nix trusts a content-addressed path without a signature: the reason the other tests strip
/// `CA:` lines. If a later Nix stops doing so, this test says so.
#[test]
fn nix_trusts_content_addressed_paths_without_signatures() {
    let nix = Nix::new();
    let key = SecretKey::generate("nargate-made-1").unwrap();
    let mut cache = Cache::copy_fixture(nix.dir(), "cache");
    let paths = cache.paths();
    for (_, info) in &mut cache.infos {
        info.sigs.clear();
    }
    cache.save();
    let app = cache.info("app").store_path.to_absolute();
    assert_untrusted(&nix.verify(&cache, &[&key.to_public()], &paths), &[&app]);
}

/// `nix copy` from the re-signed cache into a chroot store, requiring signatures, as a substituter
/// does: it takes every path signed by us (with the references we signed), and refuses the `…-app`
/// path once its references are tampered with.
#[test]
fn nix_copy_requires_our_signatures() {
    let nix = Nix::new();
    let key = SecretKey::generate("nargate-made-1").unwrap();
    let public = key.to_public();
    let mut cache = Cache::copy_fixture(nix.dir(), "cache");
    let paths = cache.paths();
    cache.sign_all(&key);
    cache.strip_content_addresses();
    cache.save();

    let root = nix.path("root-good");
    let output = nix.copy(&cache, &public, &root, &paths);
    assert!(output.status.success(), "nix copy refused:\n{}", String::from_utf8_lossy(&output.stderr));
    let app = cache.info("app").clone();
    for path in &paths {
        let base = path.rsplit('/').next().unwrap();
        // `symlink_metadata`: `…-single-symlink` is a dangling symlink.
        assert!(root.join("nix/store").join(base).symlink_metadata().is_ok(), "{path} was not copied");
    }
    let output = nix.run_ok(
        &nix.nix_store,
        [
            "--store".to_string(),
            local_store(&root),
            "--query".into(),
            "--references".into(),
            app.store_path.to_absolute(),
        ],
    );
    let references: BTreeSet<String> =
        String::from_utf8(output.stdout).unwrap().lines().map(str::to_owned).collect();
    let expected: BTreeSet<String> = app.reference_paths().unwrap().iter().map(|p| p.to_absolute()).collect();
    assert_eq!(references, expected, "Nix recorded the references we signed");

    // A signature by an untrusted key, and tampered references, are refused.
    let output = nix.copy(
        &cache,
        &SecretKey::generate("nargate-made-1").unwrap().to_public(),
        &nix.path("root-other-key"),
        &paths,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "nix copy took paths signed by an untrusted key:\n{stderr}");
    assert!(stderr.contains("because it lacks a valid signature"), "{stderr}");
    let info = cache.info("app");
    info.references.retain(|r| !r.ends_with("-single-file"));
    cache.save();
    let output = nix.copy(&cache, &public, &nix.path("root-tampered"), &paths);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "nix copy took a narinfo with tampered references:\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot add path '{}' because it lacks a valid signature",
            app.store_path.to_absolute()
        )),
        "{stderr}"
    );
}
