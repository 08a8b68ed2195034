//! The real `nargate` binary for tests: its subcommands, and `nargate serve` as a child process
//! on a free loopback port, with the endpoints and the key pair it prints.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs `nargate <args>`, which must succeed.
pub fn nargate(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_nargate")).args(args).output().expect("run nargate");
    assert!(out.status.success(), "nargate {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A `nargate serve` process, killed when dropped.
pub struct Server {
    /// The process.
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The admin listener's `http://127.0.0.1:<port>`, if it has one.
    pub admin: Option<String>,
    /// The key pair it generated.
    pub access_key_id: String,
    /// Its secret.
    pub secret: String,
    /// What it wrote to standard error so far, line by line, when [`Spawn::capture_stderr`].
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start `nargate serve`.
#[derive(Default)]
pub struct Spawn<'a> {
    /// Arguments after `serve` (`--listen 127.0.0.1:0` is added).
    pub args: &'a [&'a str],
    /// Environment variables to set.
    pub env: &'a [(&'a str, &'a str)],
    /// Keep standard error in [`Server::stderr`] instead of passing it through.
    pub capture_stderr: bool,
}

/// `nargate serve --data <data>`.
pub fn serve(data: &Path) -> Server {
    serve_with(&["--data", data.to_str().unwrap()])
}

/// Starts `nargate serve <args> --listen 127.0.0.1:0` and reads what it prints: the endpoint
/// and the key pair it generated.
pub fn serve_with(args: &[&str]) -> Server {
    spawn(Spawn { args, ..Default::default() })
}

/// Starts `nargate serve` as `how` says and reads what it prints: the endpoint, the admin
/// listener's if any, and the key pair it generated.
pub fn spawn(how: Spawn<'_>) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nargate"))
        .arg("serve")
        .args(how.args)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("NARGATE_ACCESS_KEY_ID")
        .env_remove("NARGATE_SECRET_ACCESS_KEY")
        .envs(how.env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(if how.capture_stderr { Stdio::piped() } else { Stdio::inherit() })
        .spawn()
        .expect("start nargate serve");
    let stderr = Arc::new(Mutex::new(vec![]));
    if let Some(pipe) = child.stderr.take() {
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
    }
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut endpoint, mut admin, mut id, mut secret) = (None, None, None, None);
    while endpoint.is_none() || id.is_none() || secret.is_none() {
        let line = lines.next().expect("nargate serve printed its key pair").unwrap();
        if let Some(rest) = line.strip_prefix("nargate serving at ") {
            endpoint = rest.split(' ').next().map(str::to_owned);
        } else if let Some(rest) = line.strip_prefix("admin listener at ") {
            admin = rest.split(' ').next().map(str::to_owned);
        } else if let Some(rest) = line.trim().strip_prefix("access key id:") {
            id = Some(rest.trim().to_owned());
        } else if let Some(rest) = line.trim().strip_prefix("secret access key:") {
            secret = Some(rest.trim().to_owned());
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    Server {
        child,
        endpoint: endpoint.unwrap(),
        admin,
        access_key_id: id.unwrap(),
        secret: secret.unwrap(),
        stderr,
    }
}

impl Server {
    /// The main listener's port.
    pub fn port(&self) -> u16 {
        port_of(&self.endpoint)
    }

    /// The admin listener's port.
    pub fn admin_port(&self) -> u16 {
        port_of(self.admin.as_deref().expect("an admin listener"))
    }

    /// Sends the process SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM");
    }

    /// Waits up to `limit` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn port_of(endpoint: &str) -> u16 {
    endpoint.rsplit(':').next().and_then(|p| p.parse().ok()).expect("http://127.0.0.1:<port>")
}
