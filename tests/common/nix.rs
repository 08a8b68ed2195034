//! Real Nix (Debian's `nix-bin`, Nix 2.8), run as an ordinary program in a temp dir of its own:
//! its environment is cleared, and `HOME`, the XDG dirs, `NIX_CONF_DIR` (a `nix.conf` with
//! `nix-command`, no substituters, no trusted keys and no build users), `NIX_STATE_DIR`,
//! `NIX_LOG_DIR` and `TMPDIR` point into the temp dir. Tests give it only `file://`, `dummy://` and
//! `local?root=<temp>` stores: nothing is written to `/nix`, no daemon, no network. A test that
//! needs Nix panics when it is missing (`.ci/install-tools.sh` installs it); it never skips.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// The path of `program` in `PATH`; panics, naming the install script, when it is not there.
pub fn find_program(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{program}` is not in PATH: these tests run the real program (Nix is Debian's nix-bin, \
                 Nix 2.8). Install it with `.ci/install-tools.sh` (as root), then run the tests again."
            )
        })
}

/// Nix, run in a temp dir of its own (see the module documentation).
pub struct Nix {
    dir: TempDir,
    /// The `nix` program.
    pub nix: PathBuf,
    /// The `nix-store` program.
    pub nix_store: PathBuf,
}

impl Nix {
    /// Nix in a new temp dir; panics if `nix` or `nix-store` is missing.
    pub fn new() -> Self {
        let nix = find_program("nix");
        let nix_store = find_program("nix-store");
        let dir = tempfile::tempdir().unwrap();
        for sub in ["home", "conf", "state", "tmp"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        std::fs::write(
            dir.path().join("conf/nix.conf"),
            "experimental-features = nix-command\n\
             substituters =\n\
             trusted-public-keys =\n\
             secret-key-files =\n\
             require-sigs = true\n\
             build-users-group =\n\
             sandbox = false\n",
        )
        .unwrap();
        Self { dir, nix, nix_store }
    }

    /// The temp dir Nix runs in (removed when `self` drops).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `sub` in the temp dir.
    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// A command running `program` with a cleared environment that points Nix into the temp dir.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        let home = self.path("home");
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_STATE_HOME", home.join(".local/state"))
            .env("NIX_CONF_DIR", self.path("conf"))
            .env("NIX_STATE_DIR", self.path("state"))
            .env("NIX_LOG_DIR", self.path("state/log"))
            .env("TMPDIR", self.path("tmp"));
        command
    }

    /// Runs `program args…`, returning its output whatever its exit status.
    pub fn run<I, S>(&self, program: &Path, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = self.command(program);
        command.args(args);
        command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
    }

    /// Runs `program args…` and panics unless it succeeds.
    pub fn run_ok<I, S>(&self, program: &Path, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let output = self.run(program, &args);
        assert!(
            output.status.success(),
            "{} {:?} failed ({}):\n{}",
            program.display(),
            args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

impl Drop for Nix {
    /// Nix makes what it adds to a store read-only: make every directory in the temp dir writable
    /// again, so that `TempDir` can remove it when the tests do not run as root.
    fn drop(&mut self) {
        make_writable(self.dir.path());
    }
}

fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    // `symlink_metadata`: never follow a symlink out of the temp dir.
    let Ok(metadata) = std::fs::symlink_metadata(path) else { return };
    if !metadata.is_dir() {
        return;
    }
    let mut permissions = metadata.permissions();
    permissions.set_mode(permissions.mode() | 0o700);
    let _ = std::fs::set_permissions(path, permissions);
    for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
        make_writable(&entry.path());
    }
}

/// Copies the directory tree `from` to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

impl Nix {
    /// Copies every path of the binary cache at `from` into a new binary cache `<temp>/<name>`
    /// that writes NAR listings, and returns that cache's directory.
    pub fn listings(&self, from: &Path, name: &str) -> PathBuf {
        let to = self.path(name);
        self.run_ok(
            &self.nix,
            [
                "copy".to_string(),
                "--from".into(),
                format!("file://{}", from.display()),
                "--to".into(),
                format!("file://{}?write-nar-listing=true&compression=none", to.display()),
                "--all".into(),
            ],
        );
        to
    }
}

/// A store path that real Nix made, and its NAR as Nix dumps it.
pub struct NixMadeNar {
    /// The store path (`/nix/store/<hash>-<name>`).
    pub store_path: String,
    /// The NAR, as `nix-store --dump` wrote it.
    pub nar: Vec<u8>,
    /// Its NarHash, nixbase32 (as Nix names NARs: `nar/<nar_hash>.nar`).
    pub nar_hash: String,
}

impl Nix {
    /// Adds a generated tree — files `part<i>` with `contents` (the first one executable), a
    /// small file in a subdirectory and a symlink — with `nix-store --add` into a chroot store in
    /// the temp dir, and dumps it with `nix-store --dump`. The NarHash Nix recorded (`nix-store -q
    /// --hash`) must be the SHA-256 of the dumped bytes.
    pub fn add_generated_tree(&self, name: &str, contents: &[Vec<u8>]) -> NixMadeNar {
        use std::os::unix::fs::PermissionsExt as _;
        let tree = self.path("tmp").join(name);
        std::fs::create_dir_all(tree.join("share")).unwrap();
        for (i, bytes) in contents.iter().enumerate() {
            let file = tree.join(format!("part{i}"));
            std::fs::write(&file, bytes).unwrap();
            let mode = if i == 0 { 0o755 } else { 0o644 };
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::write(tree.join("share/README"), format!("{name}: generated for the client tests\n"))
            .unwrap();
        std::os::unix::fs::symlink("part0", tree.join("link")).unwrap();

        let root = self.path("add-store");
        let store = format!("local?root={}", root.display());
        let added = self.run_ok(
            &self.nix_store,
            [OsStr::new("--store"), store.as_ref(), "--add".as_ref(), tree.as_os_str()],
        );
        let store_path = String::from_utf8(added.stdout).unwrap().trim().to_owned();
        assert!(store_path.starts_with("/nix/store/") && store_path.ends_with(name), "{store_path}");
        let real = root.join(store_path.trim_start_matches('/'));
        let nar = self.run_ok(&self.nix_store, [OsStr::new("--dump"), real.as_os_str()]).stdout;
        let nar_hash = nar_hash(&nar);
        let recorded =
            self.run_ok(&self.nix_store, ["--store", store.as_str(), "-q", "--hash", store_path.as_str()]);
        assert_eq!(
            String::from_utf8_lossy(&recorded.stdout).trim(),
            format!("sha256:{nar_hash}"),
            "{store_path}"
        );
        NixMadeNar { store_path, nar, nar_hash }
    }
}

/// The NarHash of `nar` as Nix writes it in keys: nixbase32 of its SHA-256.
pub fn nar_hash(nar: &[u8]) -> String {
    use sha2::Digest as _;
    nargate::nix::nixbase32::encode(sha2::Sha256::digest(nar).as_slice())
}
