//! The serving side of the benchmarks: `nargate serve` as a process, S3 clients of it and of
//! Garage, and the figures' arithmetic.

use std::io::{BufRead, BufReader};
use std::ops::Range;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, ResponseChecksumValidation};
use aws_sdk_s3::error::DisplayErrorContext;

/// An S3 endpoint and the bucket to read.
#[derive(Clone)]
pub struct Side {
    /// The client.
    pub client: Client,
    /// The bucket.
    pub bucket: String,
}

/// An aws-sdk-s3 client, path-style; `quickack`: over nargate's quick-ack pool (else the SDK's
/// own client). Each call makes a client with a pool of its own.
pub fn client(endpoint: &str, region: &str, id: &str, secret: &str, quickack: bool) -> Client {
    let mut config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(id, secret, None, None, "bench"))
        .force_path_style(true)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if quickack {
        config = config.http_client(nargate::backend::quickack::http_client());
    }
    Client::from_conf(config.build())
}

impl Side {
    /// GETs `key` (or a range of it) and drains the body; returns its length.
    pub async fn get(&self, key: &str, range: Option<Range<u64>>) -> u64 {
        let mut request = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some(r) = &range {
            request = request.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        let output = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {}/{key}: {}", self.bucket, DisplayErrorContext(&e)));
        let mut body = output.body;
        let mut n = 0;
        while let Some(piece) = body.next().await {
            n += piece.unwrap_or_else(|e| panic!("GET {}/{key}: {e}", self.bucket)).len() as u64;
        }
        if let Some(r) = range {
            assert_eq!(n, r.end - r.start, "GET {}/{key} {r:?}", self.bucket);
        }
        n
    }

    /// The time of one GET.
    pub async fn time(&self, key: &str, range: Option<Range<u64>>) -> Duration {
        let start = Instant::now();
        self.get(key, range).await;
        start.elapsed()
    }
}

/// `nargate serve` as a child process; killed when dropped (a panic included).
pub struct GatewayProcess {
    /// The process.
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    _config: tempfile::NamedTempFile,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GatewayProcess {
    /// Starts `nargate serve --config <toml> --listen 127.0.0.1:0` and reads its endpoint.
    pub fn start(toml: &str) -> GatewayProcess {
        let mut config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::io::Write::write_all(&mut config, toml.as_bytes()).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_nargate"));
        command
            .args(["serve", "--config", config.path().to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env("NARGATE_LOG", "warn");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("NARGATE_") {
                command.env_remove(name);
            }
        }
        command.env("NARGATE_LOG", "warn");
        let mut child = command.spawn().expect("start nargate serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut process = GatewayProcess { child, endpoint: String::new(), _config: config };
        for line in lines.by_ref() {
            let line = line.expect("nargate serve's output");
            if let Some(rest) = line.strip_prefix("nargate serving at ") {
                process.endpoint = rest.split(' ').next().unwrap().to_owned();
                break;
            }
        }
        assert!(!process.endpoint.is_empty(), "nargate serve exited without serving");
        std::thread::spawn(move || lines.for_each(drop));
        process
    }

    /// `VmHWM` and `VmRSS` of the process, in MiB.
    pub fn memory(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            let line = status.lines().find_map(|l| l.strip_prefix(name)).unwrap();
            line.trim().trim_end_matches("kB").trim().parse::<f64>().unwrap() / 1024.0
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// CPU time the process has used.
    pub fn cpu(&self) -> Duration {
        cpu_of(self.child.id())
    }
}

/// CPU time (user + system) process `pid` has used.
pub fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else { return Duration::ZERO };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// The median of `v` (not empty).
pub fn median(mut v: Vec<Duration>) -> Duration {
    assert!(!v.is_empty());
    v.sort();
    v[v.len() / 2]
}

/// `d` in milliseconds, for printing.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Throughput of `bytes` in `d`.
pub fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / f64::from(1 << 20) / d.as_secs_f64()
}

/// The load averages, for printing.
pub fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// `nargate serve` as a process over the Garage bucket `bucket` (Garage's endpoint and key pair
/// given), with a new client key pair: the process, and the pair's id and secret.
pub async fn start_gateway(
    endpoint: &str,
    bucket: &str,
    key_id: &str,
    secret_key: &str,
) -> (GatewayProcess, &'static str, String) {
    let (client_id, client_secret) = ("nargate-bench", hex::encode(rand::random::<[u8; 24]>()));
    let toml = format!(
        r#"
[backend]
type = "s3"
endpoint = "{endpoint}"
region = "garage"
bucket = "{bucket}"
path_style = true
access_key_id = "{key_id}"
secret_access_key = "{secret_key}"

[credentials]
access_key_id = "{client_id}"
secret_access_key = "{client_secret}"
"#
    );
    let process = tokio::task::spawn_blocking(move || GatewayProcess::start(&toml)).await.unwrap();
    (process, client_id, client_secret)
}

/// Ingests `nar` into the cache and commits a store path `<random hash>-<name>` for it, as an
/// upload of the NAR and its narinfo would.
pub async fn ingest_store_path(
    store: &nargate::castore::ChunkStore,
    cache: &nargate::cache::Cache,
    name: &str,
    nar: &[u8],
) -> (nargate::ingest::Ingested, nargate::nix::narinfo::NarInfo) {
    use nargate::nix::nixbase32;
    let options = nargate::ingest::IngestOptions::default();
    let ingested = nargate::ingest::ingest_nar(store, nar, &options).await.expect("ingest");
    let record = &ingested.record;
    cache.nar_landed(record).await.expect("NAR landed");
    let hash = nixbase32::encode(&record.nar_hash);
    let store_hash = nixbase32::encode(&rand::random::<[u8; 20]>());
    let base = format!("{store_hash}-{name}");
    let store_path = nargate::nix::store_path::StorePath::from_base_name(&base).unwrap();
    let info = nargate::nix::narinfo::NarInfo::new(
        store_path,
        format!("nar/{hash}.nar"),
        &record.nar_hash,
        record.nar_size,
    );
    cache.narinfo_arrived(&store_hash, &info).await.expect("narinfo arrived");
    (ingested, info)
}

/// The parent of process `pid`, and its name.
pub fn parent_and_name(pid: u32) -> Option<(u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    Some((rest.split_whitespace().nth(1)?.parse().ok()?, name))
}

/// The Garage server this process started (under its `sh` supervisor).
pub fn garage_pid() -> u32 {
    let me = std::process::id();
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let supervisors: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|&p| parent_and_name(p).is_some_and(|(parent, _)| parent == me))
        .collect();
    pids.into_iter()
        .find(|&p| {
            parent_and_name(p).is_some_and(|(parent, name)| supervisors.contains(&parent) && name == "garage")
        })
        .expect("the Garage process")
}
