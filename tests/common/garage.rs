//! A real S3 server for tests: one single-node Garage per test binary, on loopback.
//!
//! The first call to [`garage_backend`] starts it (in a temporary directory, on free ports, with
//! SQLite metadata and `replication_factor = 1`), gives the node a layout, creates an access key,
//! and waits until it answers. Every call then creates a fresh bucket (`test-<n>`) that the key
//! owns and returns an [`S3Backend`] on it.
//!
//! Garage runs under a small `sh` supervisor whose stdin is a pipe from the test process: when the
//! test process exits — normally, by a panic, or killed — the pipe closes, and the supervisor
//! kills Garage and removes its directory. No Garage is left running after `cargo test`.
//!
//! Garage must be installed (`.ci/install-garage.sh`): `$GARAGE_BIN`, else `garage` on the `PATH`,
//! else `~/.cargo/bin/garage`. Without it these tests fail; they never skip.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nargate::backend::DynBackend;
use nargate::backend::s3::{ConnectionMode, S3Backend, S3Config};

/// The region Garage signs for.
const REGION: &str = "garage";

/// How long Garage may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs Garage (`$0 -c $1 server`, logging to `$2/garage.log`) until stdin closes, then stops it
/// and removes `$2`. It ignores the signals a terminal sends the whole process group, so that it
/// outlives the test process and cleans up after it.
const SUPERVISOR: &str = r#"
trap '' INT TERM HUP
"$0" -c "$1" server >"$2/garage.log" 2>&1 &
garage=$!
while read -r _; do :; done
kill "$garage" 2>/dev/null
wait "$garage"
rm -rf "$2"
"#;

/// The Garage server of this test binary.
pub struct Garage {
    /// The `garage` executable.
    bin: PathBuf,
    /// Its directory: config, log, metadata and data.
    dir: PathBuf,
    /// The S3 endpoint URL.
    pub endpoint: String,
    /// The access key id that owns every test bucket.
    pub key_id: String,
    /// Its secret.
    pub secret_key: String,
    /// The supervisor; its stdin, held open until the process exits, keeps Garage alive.
    _supervisor: Child,
    /// The number of the next bucket.
    next_bucket: AtomicU64,
}

static GARAGE: OnceLock<Garage> = OnceLock::new();

/// The Garage server of this test binary, started on first use.
pub fn garage() -> &'static Garage {
    GARAGE.get_or_init(Garage::start)
}

/// An S3 backend on a fresh, empty bucket of this test binary's Garage.
pub async fn garage_backend() -> DynBackend {
    Arc::new(garage_s3_backend().await)
}

/// Like [`garage_backend`], as the concrete type (for tests of S3-specific behaviour).
pub async fn garage_s3_backend() -> S3Backend {
    let garage = tokio::task::spawn_blocking(garage).await.expect("starting Garage");
    let bucket = garage.create_bucket().await;
    S3Backend::new(garage.config(&bucket)).await.expect("S3 backend for Garage")
}

impl Garage {
    /// Starts Garage and sets up its layout and access key; panics with the reason if it cannot.
    fn start() -> Garage {
        let bin = find_garage();
        let dir = tempfile::Builder::new()
            .prefix("nargate-garage-")
            .tempdir()
            .expect("temporary directory for Garage")
            .keep();
        let [rpc, s3, admin] = free_ports();
        let config = format!(
            r#"
metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{token}"
"#,
            dir = dir.display(),
            secret = random_hex(32),
            token = random_hex(32),
        );
        std::fs::write(dir.join("garage.toml"), config).expect("writing Garage's config");

        let supervisor = Command::new("sh")
            .arg("-c")
            .arg(SUPERVISOR)
            .arg(&bin)
            .arg(dir.join("garage.toml"))
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting sh to supervise Garage");
        let mut garage = Garage {
            bin,
            dir,
            endpoint: format!("http://127.0.0.1:{s3}"),
            key_id: String::new(),
            secret_key: String::new(),
            _supervisor: supervisor,
            next_bucket: AtomicU64::new(0),
        };
        garage.wait_until(|g| g.cli(&["status"]).status.success(), "Garage to answer `garage status`");

        let node_id = garage.cli_ok(&["node", "id", "-q"]);
        let node_id = node_id.trim().split('@').next().unwrap_or_default().to_owned();
        garage.cli_ok(&["layout", "assign", "-z", "dc1", "-c", "1G", &node_id]);
        garage.cli_ok(&["layout", "apply", "--version", "1"]);

        let key = garage.cli_ok(&["key", "create", "nargate-test"]);
        let field = |name: &str| {
            let line = key.lines().find_map(|l| l.trim().strip_prefix(name));
            line.map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("no {name:?} in the output of `garage key create`:\n{key}"))
        };
        garage.key_id = field("Key ID:");
        garage.secret_key = field("Secret key:");
        // Buckets can be made once the layout has reached every table.
        garage.wait_until(|g| g.cli(&["bucket", "list"]).status.success(), "Garage's layout to be ready");
        garage
    }

    /// Creates a fresh bucket that the test key may read, write and own, and returns its name.
    pub async fn create_bucket(&self) -> String {
        let name = format!("test-{}", self.next_bucket.fetch_add(1, Ordering::Relaxed));
        self.cli_async(&["bucket", "create", &name]).await;
        self.cli_async(&["bucket", "allow", "--read", "--write", "--owner", &name, "--key", &self.key_id])
            .await;
        name
    }

    /// The backend configuration for `bucket`.
    pub fn config(&self, bucket: &str) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint.clone()),
            region: REGION.to_owned(),
            bucket: bucket.to_owned(),
            path_style: true,
            access_key_id: Some(self.key_id.clone()),
            secret_access_key: Some(self.secret_key.clone()),
            prefix: None,
            max_attempts: 3,
            connections: ConnectionMode::default(),
            connect_timeout: None,
            operation_timeout: None,
            ..S3Config::default()
        }
    }

    /// The `garage` command for this server.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command.arg("-c").arg(self.dir.join("garage.toml")).args(args).stdin(Stdio::null());
        command
    }

    /// Runs a `garage` command and returns what it did.
    fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap_or_else(|e| panic!("running garage {args:?}: {e}"))
    }

    /// Runs a `garage` command that must succeed, and returns its stdout.
    fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        self.check(args, output)
    }

    /// Runs a `garage` command that must succeed, without blocking the runtime.
    async fn cli_async(&self, args: &[&str]) -> String {
        let output = tokio::process::Command::from(self.command(args))
            .output()
            .await
            .unwrap_or_else(|e| panic!("running garage {args:?}: {e}"));
        self.check(args, output)
    }

    /// The stdout of a command that succeeded; else panics with its output and Garage's log.
    fn check(&self, args: &[&str], output: Output) -> String {
        if !output.status.success() {
            panic!(
                "garage {args:?} failed ({}):\n{}{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                self.log_tail(),
            );
        }
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Polls `ready` until it holds; panics after [`START_TIMEOUT`].
    fn wait_until(&self, ready: impl Fn(&Garage) -> bool, what: &str) {
        let start = Instant::now();
        while !ready(self) {
            if start.elapsed() > START_TIMEOUT {
                panic!("gave up waiting for {what} after {START_TIMEOUT:?}\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The end of Garage's log, for error messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("garage.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- end of {} ---\n{}",
            self.dir.join("garage.log").display(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

/// The `garage` executable: `$GARAGE_BIN`, else on the `PATH`, else `~/.cargo/bin/garage`.
fn find_garage() -> PathBuf {
    if let Some(bin) = std::env::var_os("GARAGE_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "$GARAGE_BIN is {}, which is not a file", bin.display());
        return bin;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo/bin"));
    std::env::split_paths(&path)
        .chain(cargo_bin)
        .map(|dir| dir.join("garage"))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the S3 tests need Garage, and no `garage` was found ($GARAGE_BIN, PATH, ~/.cargo/bin): \
                 install it with .ci/install-garage.sh (cargo install --locked garage)"
            )
        })
}

/// Three distinct free TCP ports on loopback.
fn free_ports() -> [u16; 3] {
    // Hold all three listeners at once so that the ports differ.
    let listeners: Vec<TcpListener> =
        (0..3).map(|_| TcpListener::bind("127.0.0.1:0").expect("binding a free port")).collect();
    let port = |i: usize| listeners[i].local_addr().expect("bound port").port();
    [port(0), port(1), port(2)]
}

/// `bytes` random bytes, in hex.
fn random_hex(bytes: usize) -> String {
    let random: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(random)
}
