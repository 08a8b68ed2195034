//! Debian's rclone (1.60) against a gateway: an `s3` remote named `gw` (`provider = Other`,
//! path-style), given by environment variables only, and `rclone mount` that unmounts when
//! dropped. rclone 1.60 refuses to start with `AWS_CA_BUNDLE` set (this kind of machine sets
//! it), so it is cleared.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::gateway::TestGateway;
use super::nix::find_program;

/// rclone with a remote `gw:` for one gateway.
pub struct Rclone {
    program: PathBuf,
    endpoint: String,
    id: String,
    secret: String,
    config: tempfile::TempDir,
}

impl Rclone {
    /// rclone pointed at `gw`; panics if rclone is missing.
    pub fn new(gw: &TestGateway) -> Rclone {
        Rclone {
            program: find_program("rclone"),
            endpoint: gw.endpoint.clone(),
            id: gw.keys.access_key_id.clone(),
            secret: gw.keys.secret_access_key.clone(),
            config: tempfile::tempdir().unwrap(),
        }
    }

    /// A command running rclone with the `gw:` remote.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command
            .env_remove("AWS_CA_BUNDLE")
            .env("RCLONE_CONFIG", self.config.path().join("rclone.conf"))
            .env("RCLONE_CONFIG_GW_TYPE", "s3")
            .env("RCLONE_CONFIG_GW_PROVIDER", "Other")
            .env("RCLONE_CONFIG_GW_ENDPOINT", &self.endpoint)
            .env("RCLONE_CONFIG_GW_ACCESS_KEY_ID", &self.id)
            .env("RCLONE_CONFIG_GW_SECRET_ACCESS_KEY", &self.secret)
            .env("RCLONE_CONFIG_GW_ENV_AUTH", "false")
            .env("RCLONE_CONFIG_GW_FORCE_PATH_STYLE", "true");
        command
    }

    /// Runs `rclone args…`, whatever its exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run rclone")
    }

    /// Runs `rclone args…` and panics unless it succeeds; its standard output.
    pub fn ok(&self, args: &[&str]) -> Vec<u8> {
        let out = self.run(args);
        assert!(out.status.success(), "rclone {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    /// `rclone mount <remote> <mountpoint> --read-only <extra…>`, once the mount shows entries.
    pub fn mount(&self, remote: &str, mountpoint: &Path, extra: &[&str]) -> Mount {
        let log = self.config.path().join("mount.log");
        let child = self
            .command()
            .args(["mount", remote, "--read-only", "-vv"])
            .arg(mountpoint)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("run rclone mount");
        let mount =
            Mount { child, mountpoint: mountpoint.to_owned(), log, fusermount: find_program("fusermount3") };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::fs::read_dir(mountpoint).map(|d| d.count()).unwrap_or(0) > 0 {
                return mount;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("rclone mount did not come up (is /dev/fuse there?):\n{}", mount.log());
    }
}

/// A running `rclone mount`: unmounted and stopped when dropped, even when the test fails.
pub struct Mount {
    child: Child,
    mountpoint: PathBuf,
    log: PathBuf,
    fusermount: PathBuf,
}

impl Mount {
    /// What rclone logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new(&self.fusermount).arg("-u").arg(&self.mountpoint).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
