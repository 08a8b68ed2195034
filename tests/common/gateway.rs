//! A running gateway for tests: `nargate`'s S3 front end served in-process on a free loopback
//! port over a given backend (fs or a real Garage), a key pair of its own, caches filled from the
//! fixtures with the same import `nargate import` runs, an `aws-sdk-s3` client pointed at it, and a
//! raw HTTP/1.1 client for what an SDK hides (anonymous requests, exact headers, Basic auth).

use std::path::{Path, PathBuf};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use nargate::backend::DynBackend;
use nargate::cache::{BucketRecord, BucketSettings, Cache};
use nargate::castore::ChunkStore;
use nargate::credentials::{CredentialStore, KeyPair};
use nargate::gateway::{Gateway, GatewayOptions};
use nargate::ingest::import::{import_path, narinfos};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The fixtures directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A gateway serving on loopback until dropped.
pub struct TestGateway {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The port.
    pub port: u16,
    /// The gateway's key pair.
    pub keys: KeyPair,
    /// The backend it serves from.
    pub backend: DynBackend,
    /// The gateway itself (for its caches).
    pub gateway: Gateway,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts a gateway over `backend` with `options`, with a fresh key pair.
pub async fn start_with(backend: DynBackend, options: GatewayOptions) -> TestGateway {
    let keys = CredentialStore::new(backend.clone()).create(Some("tests")).await.expect("create a key pair");
    let gateway = Gateway::new(backend.clone(), options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = gateway.clone();
    tokio::spawn(async move {
        nargate::gateway::serve(listener, serving, async {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    });
    TestGateway {
        endpoint: format!("http://127.0.0.1:{port}"),
        port,
        keys,
        backend,
        gateway,
        stop: Some(stop),
    }
}

/// Starts a gateway over `backend` with the default options (small caches).
pub async fn start(backend: DynBackend) -> TestGateway {
    start_with(backend, test_options()).await
}

/// Options for tests: the defaults, with small caches.
pub fn test_options() -> GatewayOptions {
    GatewayOptions { chunk_cache_bytes: 16 << 20, ..Default::default() }
}

impl TestGateway {
    /// An `aws-sdk-s3` client with the gateway's key pair, path-style, as the SDK sends by default
    /// (streaming uploads with trailing CRC checksums included).
    pub fn client(&self) -> aws_sdk_s3::Client {
        self.client_with(&self.keys.access_key_id, &self.keys.secret_access_key)
    }

    /// A client signing with another key pair.
    pub fn client_with(&self, id: &str, secret: &str) -> aws_sdk_s3::Client {
        s3_client(&self.endpoint, id, secret)
    }

    /// The cache `bucket` as the gateway sees it.
    pub fn cache(&self, bucket: &str) -> Cache {
        self.gateway.cache(bucket)
    }

    /// Creates `bucket` (anonymous reads as given) and imports the fixture `caches` into it.
    pub async fn import(&self, bucket: &str, anonymous_read: bool, caches: &[&str]) {
        let cache = Cache::new(self.backend.clone(), bucket);
        let mut settings = BucketRecord::new_now();
        settings.apply(&BucketSettings { anonymous_read: Some(anonymous_read), ..Default::default() });
        cache.create(settings).await.expect("create the bucket");
        let store = ChunkStore::new(self.backend.clone(), 16 << 20);
        for name in caches {
            for (info, nar) in narinfos(&fixtures().join(name)).expect("fixture narinfos") {
                import_path(&store, &cache, &info, &nar).await.expect("import a fixture path");
            }
        }
    }

    /// A raw HTTP/1.1 request to the gateway (`Connection: close`): status, headers, body.
    pub async fn http(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpReply {
        raw_http(self.port, method, path, headers).await
    }
}

/// An `aws-sdk-s3` client of `endpoint` signing with the key pair `id`, `secret`, path-style.
pub fn s3_client(endpoint: &str, id: &str, secret: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(id, secret, None, None, "tests"))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A response as the raw client read it.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// The headers, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one HTTP/1.1 request to `127.0.0.1:port` (with `Host: 127.0.0.1:port` unless `headers`
/// name another) and reads the whole response (bodies are
/// framed by Content-Length, or by the end of the connection).
pub async fn raw_http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpReply {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = vec![];
    stream.read_to_end(&mut raw).await.unwrap();
    // A server that aborts a response before its head was written closes with nothing: status 0.
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return HttpReply { status: 0, headers: vec![], body: raw };
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if let Some(len) =
        headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse::<usize>().ok())
        && method != "HEAD"
    {
        // A body shorter than its Content-Length is a transfer the server cut off: keep what came.
        body.truncate(len);
    }
    HttpReply { status, headers, body }
}

/// (store path, NAR bytes) of every fixture NAR, from `nars/INDEX`.
pub fn fixture_nars() -> Vec<(String, String, Vec<u8>)> {
    let index = std::fs::read_to_string(fixtures().join("nars/INDEX")).unwrap();
    index
        .lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let path = parts.next().unwrap().to_owned();
            let nar_hash = parts.next().unwrap().strip_prefix("sha256:").unwrap().to_owned();
            let base = path.strip_prefix("/nix/store/").unwrap().to_owned();
            let bytes = std::fs::read(fixtures().join("nars").join(format!("{base}.nar"))).unwrap();
            (path, nar_hash, bytes)
        })
        .collect()
}

/// How many chunks the content stream of the NAR `nar_hash` (nixbase32) has, from its record.
pub async fn chunk_count(backend: &DynBackend, nar_hash: &str) -> usize {
    let bytes = nargate::backend::get_bytes(backend.as_ref(), &format!("nars/{nar_hash}")).await.unwrap();
    nargate::castore::NarRecord::decode(&bytes).unwrap().chunks.len()
}
