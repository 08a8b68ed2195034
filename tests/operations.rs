//! Operating `nargate serve`, the real binary: `/metrics` and `/health` on the admin listener,
//! one JSON log line per request, and graceful shutdown on SIGTERM.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::gateway::{fixture_nars, fixtures, raw_http, s3_client};
use common::serve::{Server, Spawn, nargate, spawn};

/// A data directory with the fixture cache imported into bucket `nix`, which anyone may read.
fn imported_store() -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    let data_arg = data.path().to_str().unwrap();
    let cache = fixtures().join("cache-xz");
    nargate(&["import", "--data", data_arg, "--bucket", "nix", cache.to_str().unwrap()]);
    nargate(&["bucket", "set", "--data", data_arg, "nix", "--anonymous-read"]);
    data
}

/// The value of the sample `series` (its name and labels exactly as written) in `text`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

/// Checks the histogram `name{labels…}`: its buckets are cumulative and ascending, the last is
/// `+Inf` and equals `_count`; returns the count.
fn check_histogram(text: &str, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}_bucket{{{labels},le=\"");
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|rest| {
            let (le, value) = rest.split_once("\"} ").unwrap();
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() };
            (le, value.parse().unwrap())
        })
        .collect();
    assert!(buckets.len() > 2, "{name}{{{labels}}} has buckets");
    assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "cumulative: {buckets:?}");
    assert_eq!(buckets.last().unwrap().0, f64::INFINITY);
    let count = sample(text, &format!("{name}_count{{{labels}}}"));
    assert_eq!(buckets.last().unwrap().1, count, "+Inf equals the count");
    assert!(sample(text, &format!("{name}_sum{{{labels}}}")) >= 0.0);
    count
}

/// The JSON log lines of `server` with `"message": "request"`, once there are `count` of them
/// (the lines reach the test through a pipe and a thread: they may lag the responses a little).
fn request_lines(server: &Server, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<serde_json::Value> = server
            .stderr
            .lock()
            .unwrap()
            .iter()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
            .filter(|v: &serde_json::Value| v["message"] == "request")
            .collect();
        if lines.len() >= count || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// S3 requests of several operations, then `/metrics` on the admin listener: each request is
/// counted with its operation and status, the bytes served and received are what the clients
/// got and sent, backend requests and cache lookups were counted, and the histograms are
/// well-formed. `/health` answers on both listeners, `/metrics` only on the admin one. Each
/// request has one JSON log line with its id (the `x-amz-request-id` it was answered with).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_request_logs() {
    let data = imported_store();
    let data_arg = data.path().to_str().unwrap();
    let server = spawn(Spawn {
        args: &["--data", data_arg, "--admin-listen", "127.0.0.1:0"],
        env: &[("NARGATE_LOG_FORMAT", "json"), ("NARGATE_LOG", "info")],
        capture_stderr: true,
    });
    let port = server.port();
    let (_, nar_hash, nar) = fixture_nars().into_iter().max_by_key(|(_, _, n)| n.len()).unwrap();
    let nar_key = format!("/nix/nar/{nar_hash}.nar");

    // Reads, anonymous: GetObject 200 twice (the second from the cached segment table and
    // chunks), 206, 404; HeadObject; ListObjectsV2.
    let mut get_bytes = 0;
    let whole = raw_http(port, "GET", &nar_key, &[]).await;
    assert!(whole.status == 200 && whole.body == nar);
    let again = raw_http(port, "GET", &nar_key, &[]).await;
    assert!(again.status == 200 && again.body == nar);
    let ranged = raw_http(port, "GET", &nar_key, &[("Range", "bytes=100-1099")]).await;
    assert!(ranged.status == 206 && ranged.body == nar[100..1100]);
    let missing = raw_http(port, "GET", "/nix/0000000000000000000000000000000a.narinfo", &[]).await;
    assert_eq!(missing.status, 404);
    for reply in [&whole, &again, &ranged, &missing] {
        get_bytes += reply.body.len();
    }
    let head = raw_http(port, "HEAD", &nar_key, &[]).await;
    assert_eq!(head.status, 200);
    let list = raw_http(port, "GET", "/nix?list-type=2", &[]).await;
    assert_eq!(list.status, 200, "{}", list.text());
    assert_eq!(raw_http(port, "GET", "/health", &[]).await.status, 200);

    // A signed upload and its read back, with the SDK (aws-chunked, trailing checksum).
    let client = s3_client(&server.endpoint, &server.access_key_id, &server.secret);
    let payload = common::pseudo_random(100_000, 7);
    client.put_object().bucket("nix").key("log/x").body(payload.clone().into()).send().await.unwrap();
    let back = client.get_object().bucket("nix").key("log/x").send().await.unwrap();
    assert!(back.body.collect().await.unwrap().into_bytes() == payload[..]);
    get_bytes += payload.len();

    // The main listener has no /metrics: it is a bucket name there, and anonymous may not list it.
    let not_metrics = raw_http(port, "GET", "/metrics", &[]).await;
    assert_eq!(not_metrics.status, 403, "{}", not_metrics.text());
    assert!(!not_metrics.text().contains("nargate_"));

    let admin = server.admin_port();
    let health = raw_http(admin, "GET", "/health", &[]).await;
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    assert_eq!(raw_http(admin, "GET", "/nix/nix-cache-info", &[]).await.status, 404);
    let scraped = raw_http(admin, "GET", "/metrics", &[]).await;
    assert_eq!(scraped.status, 200);
    assert!(scraped.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let text = scraped.text();

    let requests = |op: &str, status: u16| {
        sample(&text, &format!("nargate_requests_total{{op=\"{op}\",status=\"{status}\"}}"))
    };
    assert_eq!(requests("GetObject", 200), 3.0, "two anonymous GETs and the SDK's");
    assert_eq!(requests("GetObject", 206), 1.0);
    assert_eq!(requests("GetObject", 404), 1.0);
    assert_eq!(requests("HeadObject", 200), 1.0);
    assert_eq!(requests("ListObjectsV2", 200), 1.0);
    assert_eq!(requests("PutObject", 200), 1.0);
    assert_eq!(requests("ListObjects", 403), 1.0);
    assert_eq!(requests("Health", 200), 1.0);
    let served = sample(&text, "nargate_response_bytes_total{op=\"GetObject\"}");
    assert_eq!(served, get_bytes as f64, "bytes served are the bodies the clients read");
    assert_eq!(sample(&text, "nargate_response_bytes_total{op=\"HeadObject\"}"), 0.0);
    assert_eq!(sample(&text, "nargate_request_bytes_total{op=\"GetObject\"}"), 0.0);
    let received = sample(&text, "nargate_request_bytes_total{op=\"PutObject\"}");
    assert!(
        received >= payload.len() as f64 && received < payload.len() as f64 + 1024.0,
        "the payload and its aws-chunked framing: {received}"
    );
    assert_eq!(sample(&text, "nargate_requests_in_flight"), 0.0);
    assert_eq!(check_histogram(&text, "nargate_request_duration_seconds", "op=\"GetObject\""), 5.0);

    assert!(sample(&text, "nargate_cache_misses_total{cache=\"segment_table\"}") >= 1.0);
    assert!(sample(&text, "nargate_cache_hits_total{cache=\"segment_table\"}") >= 2.0);
    assert!(sample(&text, "nargate_cache_misses_total{cache=\"chunk\"}") >= 1.0);
    assert!(sample(&text, "nargate_cache_hits_total{cache=\"chunk\"}") >= 1.0, "the second GET");

    for op in ["GET", "PUT", "HEAD", "LIST", "DELETE"] {
        let count = sample(&text, &format!("nargate_backend_requests_total{{op=\"{op}\"}}"));
        if op != "HEAD" && op != "DELETE" {
            assert!(count > 0.0, "backend {op} requests counted");
        }
        let histogram =
            check_histogram(&text, "nargate_backend_request_duration_seconds", &format!("op=\"{op}\""));
        assert_eq!(histogram, count, "one latency per backend {op}");
    }
    assert_eq!(sample(&text, "nargate_backend_errors_total{op=\"GET\"}"), 0.0);

    // The bucket's bytes, counted from its records at start: its NARs' sizes, and the chunks
    // they are stored in (the fixture NARs are small: compression saves little).
    let nar_bytes: usize = fixture_nars().iter().map(|(_, _, nar)| nar.len()).sum();
    let mut text = text;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !text.contains("nargate_bucket_logical_nar_bytes{bucket=\"nix\"}") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        text = raw_http(admin, "GET", "/metrics", &[]).await.text();
    }
    assert_eq!(sample(&text, "nargate_bucket_logical_nar_bytes{bucket=\"nix\"}"), nar_bytes as f64);
    let stored = sample(&text, "nargate_bucket_stored_chunk_bytes{bucket=\"nix\"}");
    assert!(stored > 0.0 && stored <= nar_bytes as f64, "{stored} chunk bytes for {nar_bytes} NAR bytes");

    // One JSON log line per request, with its fields.
    let lines = request_lines(&server, 10);
    assert_eq!(lines.len(), 10, "one line per request: {lines:#?}");
    let id = ranged.header("x-amz-request-id").unwrap();
    let line = lines.iter().find(|l| l["id"] == id).unwrap_or_else(|| panic!("no line for {id}"));
    assert_eq!(line["op"], "GetObject");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["bucket"], "nix");
    assert_eq!(line["key"], format!("nar/{nar_hash}.nar"));
    assert_eq!(line["status"], 206);
    assert_eq!(line["bytes_in"], 0);
    assert_eq!(line["bytes_out"], 1000);
    assert_eq!(line["complete"], true);
    assert!(line["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{line}");
    assert_eq!(line["level"], "INFO");
    assert!(line["timestamp"].is_string());
    let put = lines.iter().find(|l| l["op"] == "PutObject").unwrap();
    assert_eq!((put["key"].as_str(), put["status"].as_u64()), (Some("log/x"), Some(200)));
    assert_eq!(put["bytes_in"].as_f64(), Some(received));
    let ids: std::collections::BTreeSet<_> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), lines.len(), "request ids are unique");
}

/// `nargate serve --data <data>` with `shutdown_grace_secs` `grace`, its log kept.
fn serve_with_grace(data: &std::path::Path, grace: &str) -> Server {
    spawn(Spawn {
        args: &["--data", data.to_str().unwrap()],
        env: &[("NARGATE_SHUTDOWN_GRACE_SECS", grace)],
        capture_stderr: true,
    })
}

/// Uploads a plain object of `size` bytes to `big/blob` through `server` (creating the bucket).
fn big_object(server: &Server, size: usize) -> Vec<u8> {
    let body = common::pseudo_random(size, 11);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = s3_client(&server.endpoint, &server.access_key_id, &server.secret);
    runtime.block_on(async {
        client.create_bucket().bucket("big").send().await.unwrap();
        client.put_object().bucket("big").key("blob").body(body.clone().into()).send().await.unwrap();
    });
    body
}

/// Sends `GET /big/blob` (with HTTP Basic credentials, as Nix sends them) and reads the response
/// head; returns the stream, the body bytes already read past the head, and the Content-Length.
fn start_get(server: &Server) -> (TcpStream, Vec<u8>, usize) {
    use base64::Engine;
    let port = server.port();
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", server.access_key_id, server.secret));
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        stream,
        "GET /big/blob HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic {basic}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = vec![];
    let mut buf = [0u8; 8192];
    let split = loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the response head");
        raw.extend_from_slice(&buf[..n]);
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a Content-Length");
    (stream, raw[split + 4..].to_vec(), length)
}

/// SIGTERM while a large GET is being read slowly: new connections are refused at once, the
/// running request completes with all its bytes, and the process then exits 0.
#[test]
fn sigterm_lets_the_running_request_finish() {
    let data = tempfile::tempdir().unwrap();
    let mut server = serve_with_grace(data.path(), "60");
    let size = 48 << 20;
    let body = big_object(&server, size);
    let port = server.port();
    let (mut stream, mut got, length) = start_get(&server);
    assert_eq!(length, size);
    let mut buf = vec![0u8; 64 << 10];
    while got.len() < 1 << 20 {
        let n = stream.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
    }

    server.terminate();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "new connections are still accepted after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.child.try_wait().unwrap().is_none(), "the process waits for the running request");

    // The rest, slowly: well beyond what the socket buffers hold, so the response is still
    // being written while the process shuts down.
    let mut reads = 0;
    loop {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        reads += 1;
        if reads % 16 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert_eq!(got.len(), size, "the running request got all its bytes");
    assert!(got == body);
    let status = server.wait_exit(Duration::from_secs(20)).expect("the process exits once it is done");
    assert!(status.success(), "exit status {status}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "nothing listens any more");
    let log = server.stderr.lock().unwrap().join("\n");
    assert!(log.contains("SIGTERM: shutting down") && log.contains("every request finished"), "{log}");
}

/// A request that does not finish within `shutdown_grace_secs` (its client reads nothing) is
/// cut off when the grace period ends, and the process still exits 0, no later.
#[test]
fn the_grace_period_bounds_shutdown() {
    let data = tempfile::tempdir().unwrap();
    let mut server = serve_with_grace(data.path(), "1");
    big_object(&server, 48 << 20);
    let (_stalled, _, _) = start_get(&server);
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(15)).expect("the process exits after the grace period");
    let took = start.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(10), "exited after {took:?}");
    let log = server.stderr.lock().unwrap().join("\n");
    assert!(log.contains("cut off"), "{log}");
}

/// Scrapes the admin listener until `done` holds of `/metrics` (at most 20 s), and returns it.
async fn scrape_until(admin: u16, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = raw_http(admin, "GET", "/metrics", &[]).await.text();
        if done(&text) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The store's figures on `/metrics` come from the stats summary that `nargate stats` and every
/// GC save (the gateway does not count the store when a recent summary is there), and follow
/// the gateway's own writes between counts: a store path and a NAR uploaded to a new bucket
/// show at once, the chunks they share with another bucket at the next count (the GC's), and a
/// deleted store path goes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_figures_come_from_the_summary_and_follow_writes() {
    let data = imported_store();
    let data_arg = data.path().to_str().unwrap();
    let printed = nargate(&["stats", "--data", data_arg]);
    let fixture_paths = fixture_nars().len();
    let stdout = String::from_utf8_lossy(&printed.stdout);
    assert!(stdout.contains(&format!("bucket nix: {fixture_paths} store path(s)")), "{stdout}");
    // The count is in a second before the gateway starts.
    std::thread::sleep(Duration::from_millis(1100));
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let server = spawn(Spawn {
        args: &["--data", data_arg, "--admin-listen", "127.0.0.1:0"],
        env: &[("NARGATE_GC_STATS_RECOUNT_SECS", "86400"), ("NARGATE_REPAIR_INTERVAL_SECS", "1")],
        capture_stderr: false,
    });
    let admin = server.admin_port();
    let text = scrape_until(admin, |t| t.contains("nargate_bucket_store_paths{bucket=\"nix\"}")).await;
    assert_eq!(sample(&text, "nargate_bucket_store_paths{bucket=\"nix\"}"), fixture_paths as f64);
    assert_eq!(sample(&text, "nargate_bucket_nars{bucket=\"nix\"}"), fixture_paths as f64);
    let counted = sample(&text, "nargate_stats_counted_timestamp_seconds");
    assert!(counted < started as f64, "the summary `nargate stats` saved, not a count of its own");
    assert!(sample(&text, "nargate_store_dedup_ratio") > 0.0);

    // A store path uploaded to a new bucket: its NAR, then its narinfo.
    let client = s3_client(&server.endpoint, &server.access_key_id, &server.secret);
    client.create_bucket().bucket("fresh").send().await.unwrap();
    let (path, nar_hash, nar) = fixture_nars().into_iter().next().unwrap();
    let store_hash = &path.strip_prefix("/nix/store/").unwrap()[..32];
    let narinfo = std::fs::read(fixtures().join("cache-none").join(format!("{store_hash}.narinfo"))).unwrap();
    client
        .put_object()
        .bucket("fresh")
        .key(format!("nar/{nar_hash}.nar"))
        .body(nar.clone().into())
        .send()
        .await
        .unwrap();
    client
        .put_object()
        .bucket("fresh")
        .key(format!("{store_hash}.narinfo"))
        .body(narinfo.into())
        .send()
        .await
        .unwrap();
    let text = raw_http(admin, "GET", "/metrics", &[]).await.text();
    assert_eq!(sample(&text, "nargate_bucket_store_paths{bucket=\"fresh\"}"), 1.0, "at once, no count");
    assert_eq!(sample(&text, "nargate_bucket_nars{bucket=\"fresh\"}"), 1.0);
    assert_eq!(sample(&text, "nargate_bucket_logical_nar_bytes{bucket=\"fresh\"}"), nar.len() as f64);
    assert_eq!(
        sample(&text, "nargate_bucket_stored_chunk_bytes{bucket=\"fresh\"}"),
        0.0,
        "its chunks were already stored for `nix`: no chunk written, until the next count"
    );
    assert_eq!(sample(&text, "nargate_stats_counted_timestamp_seconds"), counted);

    // A GC counts the store and saves the summary; the gateway takes it at its next look.
    let gc = nargate(&["gc", "--data", data_arg, "--grace", "0"]);
    let gc_out = String::from_utf8_lossy(&gc.stdout);
    assert!(gc_out.contains("store counted: 2 bucket(s)"), "{gc_out}");
    let text = scrape_until(admin, |t| {
        t.lines().any(|l| {
            l.starts_with("nargate_stats_counted_timestamp_seconds") && !l.ends_with(&format!(" {counted}"))
        })
    })
    .await;
    assert!(sample(&text, "nargate_stats_counted_timestamp_seconds") > counted, "the GC's count");
    let shared = sample(&text, "nargate_bucket_stored_chunk_bytes{bucket=\"fresh\"}");
    assert!(
        shared > 0.0 && shared <= nar.len() as f64,
        "chunks shared with `nix` count in `fresh` too: {shared}"
    );
    assert_eq!(sample(&text, "nargate_bucket_store_paths{bucket=\"fresh\"}"), 1.0);

    // A deleted store path leaves the figures at once.
    client.delete_object().bucket("fresh").key(format!("{store_hash}.narinfo")).send().await.unwrap();
    let text = raw_http(admin, "GET", "/metrics", &[]).await.text();
    assert_eq!(sample(&text, "nargate_bucket_store_paths{bucket=\"fresh\"}"), 0.0);
    assert_eq!(sample(&text, "nargate_bucket_nars{bucket=\"fresh\"}"), 1.0, "its NAR stays");
}
