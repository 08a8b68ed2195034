//! Browsing (issue 9): every store path's files as objects under `tree/<hash>-<name>…`, over a
//! real Garage, read with the real `aws-sdk-s3` client and mounted with Debian's `rclone mount`,
//! checked against what `nix-store --restore` (Nix 2.8) unpacks from the fixture NARs.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_sdk_s3::error::ProvideErrorMetadata;
use common::gateway::{TestGateway, fixture_nars, start};
use common::nix::Nix;
use nargate::backend::counting::CountingBackend;
use nargate::backend::{DynBackend, Op};
use nargate::cache::BucketSettings;

/// What a key of a restored store path holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    File { bytes: Vec<u8>, executable: bool },
    Symlink(Vec<u8>),
    EmptyDirectory,
}

impl Expected {
    fn body(&self) -> &[u8] {
        match self {
            Expected::File { bytes, .. } => bytes,
            Expected::Symlink(target) => target,
            Expected::EmptyDirectory => b"",
        }
    }
}

/// Each fixture store path restored by `nix-store --restore` from its NAR: (base name, path).
fn restored(nix: &Nix) -> Vec<(String, PathBuf)> {
    let mut out = vec![];
    for (store_path, _, nar) in fixture_nars() {
        let base = store_path.strip_prefix("/nix/store/").unwrap().to_owned();
        let to = nix.path(&format!("restored/{base}"));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let mut command = nix.command(&nix.nix_store);
        command.arg("--restore").arg(&to).stdin(std::process::Stdio::piped());
        let mut child = command.spawn().expect("run nix-store --restore");
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(&nar).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "nix-store --restore of {base} failed");
        out.push((base, to));
    }
    out
}

/// Every key a restored path must have (after `tree/<base>`), from walking it on disk.
fn expected_keys(root: &Path) -> BTreeMap<String, Expected> {
    fn walk(path: &Path, key: String, out: &mut BTreeMap<String, Expected>) {
        use std::os::unix::ffi::OsStrExt as _;
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::symlink_metadata(path).unwrap();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(path).unwrap();
            out.insert(key, Expected::Symlink(target.as_os_str().as_bytes().to_vec()));
        } else if meta.is_file() {
            let executable = meta.permissions().mode() & 0o100 != 0;
            out.insert(key, Expected::File { bytes: std::fs::read(path).unwrap(), executable });
        } else {
            let mut children: Vec<_> = std::fs::read_dir(path).unwrap().map(|e| e.unwrap()).collect();
            if children.is_empty() {
                out.insert(format!("{key}/"), Expected::EmptyDirectory);
            }
            children.sort_by_key(|e| e.file_name());
            for child in children {
                // The fixtures' names are UTF-8, so their keys are the names themselves.
                let name = child.file_name().to_str().expect("a UTF-8 fixture name").to_owned();
                walk(&child.path(), format!("{key}/{name}"), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, String::new(), &mut out);
    out
}

/// Every key under `prefix`, listed with ListObjectsV2 pages of `page` keys (no delimiter).
async fn list_all_v2(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    page: i32,
) -> Vec<(String, i64)> {
    let mut out = vec![];
    let mut token = None;
    loop {
        let reply = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .max_keys(page)
            .set_continuation_token(token)
            .send()
            .await
            .unwrap();
        assert!(reply.common_prefixes().is_empty());
        out.extend(reply.contents().iter().map(|o| (o.key().unwrap().to_owned(), o.size().unwrap())));
        token = reply.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            return out;
        }
    }
}

/// Every key under `prefix`, with ListObjects V1 and a delimiter, descending into each common
/// prefix (as `rclone` and file browsers walk); marker pagination of `page` keys.
async fn walk_v1(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str, page: i32) -> Vec<String> {
    let mut out = vec![];
    let mut pending = vec![prefix.to_owned()];
    while let Some(prefix) = pending.pop() {
        let mut marker: Option<String> = None;
        loop {
            let reply = client
                .list_objects()
                .bucket(bucket)
                .prefix(&prefix)
                .delimiter("/")
                .max_keys(page)
                .set_marker(marker.clone())
                .send()
                .await
                .unwrap();
            let keys: Vec<String> = reply.contents().iter().map(|o| o.key().unwrap().to_owned()).collect();
            let prefixes: Vec<String> =
                reply.common_prefixes().iter().map(|p| p.prefix().unwrap().to_owned()).collect();
            assert!(keys.is_sorted() && prefixes.is_sorted(), "{keys:?} {prefixes:?}");
            out.extend(keys);
            pending.extend(prefixes);
            if reply.is_truncated() != Some(true) {
                break;
            }
            marker = Some(reply.next_marker().expect("a truncated V1 page has a NextMarker").to_owned());
        }
    }
    out.sort();
    out
}

/// One ListObjectsV2 page of `prefix` with the delimiter `/`: (keys, common prefixes).
async fn delimited(client: &aws_sdk_s3::Client, prefix: &str) -> (Vec<String>, Vec<String>) {
    let reply = client.list_objects_v2().bucket("nix").prefix(prefix).delimiter("/").send().await.unwrap();
    let keys = reply.contents().iter().map(|o| o.key().unwrap().to_owned()).collect();
    let prefixes = reply.common_prefixes().iter().map(|p| p.prefix().unwrap().to_owned()).collect();
    (keys, prefixes)
}

async fn browsing_gateway(backend: DynBackend, anonymous: bool) -> TestGateway {
    let gw = start(backend).await;
    gw.import("nix", anonymous, &["cache-none"]).await;
    set_browse(&gw, "nix", true).await;
    gw
}

async fn set_browse(gw: &TestGateway, bucket: &str, browse: bool) {
    let cache = gw.cache(bucket);
    let mut record = cache.settings().await.unwrap().unwrap();
    record.apply(&BucketSettings { browse: Some(browse), ..Default::default() });
    cache.set_settings(&record).await.unwrap();
}

/// Every file, symlink and empty directory of every fixture store path, listed (without and with
/// a delimiter, V1 and V2, paginated) and read back as `nix-store --restore` unpacks them.
#[tokio::test]
async fn every_node_lists_and_reads_back_as_restored() {
    let gw = browsing_gateway(common::garage_backend().await, false).await;
    let client = gw.client();
    let nix = Nix::new();
    let restored = restored(&nix);
    let mut top = vec![];
    for (base, path) in &restored {
        let expected = expected_keys(path);
        let key_of = |k: &str| format!("tree/{base}{k}");
        top.push((base.clone(), expected.contains_key("")));
        // Without a delimiter, in pages of 3: every key once, in byte order, with its size.
        let listed = list_all_v2(&client, "nix", &format!("tree/{base}"), 3).await;
        let wanted: Vec<(String, i64)> =
            expected.iter().map(|(k, e)| (key_of(k), e.body().len() as i64)).collect();
        assert_eq!(listed, wanted, "{base}");
        // With a delimiter, walked from the store path's prefix (V1, pages of 2).
        if !expected.contains_key("") {
            let walked = walk_v1(&client, "nix", &format!("tree/{base}/"), 2).await;
            let keys: Vec<String> = expected.keys().map(|k| key_of(k)).collect();
            assert_eq!(walked, keys, "{base}");
        }
        for (key, what) in &expected {
            let key = key_of(key);
            let out = client
                .get_object()
                .bucket("nix")
                .key(&key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {key}: {e:?}"));
            let etag = out.e_tag().unwrap().trim_matches('"').to_owned();
            assert_eq!(etag.len(), 64, "{key}: the ETag is a BLAKE3, not an MD5");
            let metadata = out.metadata().cloned().unwrap_or_default();
            match what {
                Expected::File { bytes, executable } => {
                    assert_eq!(etag, blake3::hash(bytes).to_hex().to_string(), "{key}");
                    assert_eq!(
                        metadata.get("executable").map(String::as_str),
                        executable.then_some("true"),
                        "{key}"
                    );
                }
                Expected::Symlink(target) => {
                    let header = metadata.get("symlink-target").expect("x-amz-meta-symlink-target");
                    assert_eq!(header.as_bytes(), &target[..], "{key}");
                }
                Expected::EmptyDirectory => assert!(key.ends_with('/')),
            }
            let body = out.body.collect().await.unwrap().into_bytes();
            assert!(body == what.body(), "{key} differs from the restored path");
            let head = client.head_object().bucket("nix").key(&key).send().await.unwrap();
            assert_eq!(head.content_length(), Some(what.body().len() as i64), "{key}");
        }
        // A directory of a store path is no object; a name that is not there is NoSuchKey.
        for missing in [format!("tree/{base}/no such file"), format!("tree/{base}-not-its-name")] {
            let err = client.get_object().bucket("nix").key(&missing).send().await.expect_err(&missing);
            assert_eq!(err.as_service_error().and_then(|e| e.code()), Some("NoSuchKey"), "{missing}");
        }
    }
    // `tree/` with a delimiter: a common prefix for every store path whose root is a directory,
    // an object for the top-level file and symlink.
    let (objects, prefixes) = delimited(&client, "tree/").await;
    top.sort();
    let want_prefixes: Vec<String> =
        top.iter().filter(|(_, file)| !file).map(|(b, _)| format!("tree/{b}/")).collect();
    let want_objects: Vec<String> =
        top.iter().filter(|(_, file)| *file).map(|(b, _)| format!("tree/{b}")).collect();
    assert_eq!(prefixes, want_prefixes);
    assert_eq!(objects, want_objects);
    assert_eq!(want_objects.len(), 2, "the fixtures have a top-level file and a top-level symlink");
    // The bucket's root shows `tree/` as one common prefix, beside `nar/` and `store/`.
    // A plain object after `tree/` merges in its place, whatever the start.
    let put = client.put_object().bucket("nix").key("zz/plain").body(b"p".to_vec().into()).send().await;
    put.unwrap();
    assert_eq!(delimited(&client, "").await.1, ["nar/", "store/", "tree/", "zz/"]);
    let reply = client.list_objects_v2().bucket("nix").start_after("tree0").send().await.unwrap();
    let keys: Vec<&str> = reply.contents().iter().map(|o| o.key().unwrap()).collect();
    assert_eq!(keys, ["zz/plain"]);
    // A recursive listing of the whole bucket holds every tree key, in order, across pages.
    let all = list_all_v2(&client, "nix", "", 7).await;
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    let tree_keys = keys.iter().filter(|k| k.starts_with("tree/")).count();
    let expected_total: usize = restored.iter().map(|(_, path)| expected_keys(path).len()).sum();
    assert_eq!(tree_keys, expected_total);
    // StartAfter inside a store path.
    let (hello, hello_path) = restored.into_iter().max_by_key(|(_, p)| expected_keys(p).len()).unwrap();
    let expected = expected_keys(&hello_path);
    let middle = expected.keys().nth(expected.len() / 2).unwrap();
    let reply = client
        .list_objects_v2()
        .bucket("nix")
        .prefix(format!("tree/{hello}/"))
        .start_after(format!("tree/{hello}{middle}"))
        .send()
        .await
        .unwrap();
    let after: Vec<&str> = reply.contents().iter().map(|o| o.key().unwrap()).collect();
    let want: Vec<String> =
        expected.keys().skip(expected.len() / 2 + 1).map(|k| format!("tree/{hello}{k}")).collect();
    assert_eq!(after, want);
}

/// Ranged reads and conditionals of the largest file (1 MiB + 7 random bytes).
#[tokio::test]
async fn ranged_and_conditional_reads_of_a_large_file() {
    let gw = browsing_gateway(common::garage_backend().await, false).await;
    let client = gw.client();
    let nix = Nix::new();
    let (base, path) = restored(&nix).into_iter().max_by_key(|(_, p)| expected_keys(p).len()).unwrap();
    let (key, bytes) = expected_keys(&path)
        .into_iter()
        .filter_map(|(k, e)| match e {
            Expected::File { bytes, .. } => Some((k, bytes)),
            _ => None,
        })
        .max_by_key(|(_, b)| b.len())
        .unwrap();
    assert!(bytes.len() > 1 << 20);
    let key = format!("tree/{base}{key}");
    let len = bytes.len() as u64;
    for (start, end) in [(0, 0), (0, 99), (1, 1 << 16), (len / 2, len / 2 + 300_000), (len - 10, len - 1)] {
        let out = client
            .get_object()
            .bucket("nix")
            .key(&key)
            .range(format!("bytes={start}-{end}"))
            .send()
            .await
            .unwrap();
        assert_eq!(out.content_range(), Some(format!("bytes {start}-{end}/{len}").as_str()));
        let body = out.body.collect().await.unwrap().into_bytes();
        assert!(body == bytes[start as usize..=end as usize], "{start}-{end}");
    }
    let suffix = client.get_object().bucket("nix").key(&key).range("bytes=-5").send().await.unwrap();
    assert!(suffix.body.collect().await.unwrap().into_bytes() == bytes[bytes.len() - 5..]);
    let err =
        client.get_object().bucket("nix").key(&key).range(format!("bytes={len}-")).send().await.unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(416));
    let etag = client.head_object().bucket("nix").key(&key).send().await.unwrap().e_tag().unwrap().to_owned();
    let path = format!("/nix/{}", urlencoding::encode(&key).replace("%2F", "/"));
    let auth = |gw: &TestGateway| (gw.keys.access_key_id.clone(), gw.keys.secret_access_key.clone());
    let (id, secret) = auth(&gw);
    let basic = format!("Basic {}", base64_encode(&format!("{id}:{secret}")));
    let reply = gw.http("GET", &path, &[("Authorization", &basic), ("If-None-Match", &etag)]).await;
    assert_eq!(reply.status, 304);
    let reply = gw.http("GET", &path, &[("Authorization", &basic), ("If-Match", "\"nope\"")]).await;
    assert_eq!(reply.status, 412);
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Browsing is off by default (`tree/` is NoSuchKey and not listed), follows the bucket's
/// anonymous-read setting, and is read-only.
#[tokio::test]
async fn off_by_default_anonymous_as_the_bucket_and_read_only() {
    let gw = start(common::garage_backend().await).await;
    gw.import("nix", true, &["cache-none"]).await;
    gw.import("private", false, &["cache-none"]).await;
    let client = gw.client();
    let (store_path, _, _) =
        fixture_nars().into_iter().find(|(p, _, _)| p.ends_with("-single-file")).unwrap();
    let key = format!("tree/{}", store_path.strip_prefix("/nix/store/").unwrap());
    let err = client.get_object().bucket("nix").key(&key).send().await.unwrap_err();
    assert_eq!(err.as_service_error().and_then(|e| e.code()), Some("NoSuchKey"));
    let listed = client.list_objects_v2().bucket("nix").send().await.unwrap();
    assert!(listed.contents().iter().all(|o| !o.key().unwrap().starts_with("tree/")));
    let listed = client.list_objects_v2().bucket("nix").prefix(&key).send().await.unwrap();
    assert_eq!(listed.key_count(), Some(0));

    set_browse(&gw, "nix", true).await;
    set_browse(&gw, "private", true).await;
    assert_eq!(gw.http("GET", &format!("/nix/{key}"), &[]).await.status, 200);
    assert_eq!(gw.http("GET", &format!("/private/{key}"), &[]).await.status, 403);
    assert_eq!(gw.http("GET", &format!("/nix?list-type=2&prefix={key}"), &[]).await.status, 200);
    // Writes under `tree/` are refused, and change nothing.
    let put = client.put_object().bucket("nix").key(&key).body(b"x".to_vec().into()).send().await;
    let put = put.unwrap_err();
    assert_eq!(put.raw_response().map(|r| r.status().as_u16()), Some(400), "{put:?}");
    assert_eq!(put.as_service_error().and_then(|e| e.code()), Some("InvalidRequest"));
    let del = client.delete_object().bucket("nix").key(&key).send().await.unwrap_err();
    assert_eq!(del.raw_response().map(|r| r.status().as_u16()), Some(400), "{del:?}");
    let body =
        client.get_object().bucket("nix").key(&key).send().await.unwrap().body.collect().await.unwrap();
    assert_ne!(&body.into_bytes()[..], b"x");
}

/// Counted promises: a cold file GET reads the bucket record and the path info at once, then the
/// NAR record, then only the chunks its span covers; a warm listing page of a store path's
/// directory makes no backend request, and a warm GET no record request.
#[tokio::test]
async fn backend_requests_are_counted() {
    let counting = Arc::new(CountingBackend::new(common::garage_backend().await));
    let backend: DynBackend = counting.clone();
    let gw = browsing_gateway(backend.clone(), false).await;
    let (store_path, _, _) = fixture_nars().into_iter().find(|(p, _, _)| p.ends_with("-hello")).unwrap();
    let base = store_path.strip_prefix("/nix/store/").unwrap();
    let nix = Nix::new();
    let path = restored(&nix).into_iter().find(|(b, _)| b == base).unwrap().1;
    let (small, bytes) = expected_keys(&path)
        .into_iter()
        .find_map(|(k, e)| match e {
            Expected::File { bytes, .. } if (1..100).contains(&bytes.len()) => Some((k, bytes)),
            _ => None,
        })
        .unwrap();
    // A fresh gateway over the same backend: nothing cached.
    let cold = common::gateway::start(backend.clone()).await;
    let cold_client = cold.client();
    let key = format!("tree/{base}{small}");
    // Credentials are read once per gateway: warm them with a request elsewhere.
    cold_client.head_bucket().bucket("nix").send().await.unwrap();
    drop(gw);
    counting.reset();
    let body =
        cold_client.get_object().bucket("nix").key(&key).send().await.unwrap().body.collect().await.unwrap();
    assert!(body.into_bytes() == bytes[..]);
    let requests = counting.requests();
    assert_eq!(counting.count_with_prefix(Op::List, ""), 0, "{requests:?}");
    assert_eq!(counting.gets_with_prefix("caches/nix/pathinfo/"), 1, "{requests:?}");
    assert_eq!(counting.gets_with_prefix("nars/"), 1, "{requests:?}");
    let chunks = counting.gets_with_prefix("chunks/");
    assert_eq!(chunks, 1, "a small file is in one chunk: {requests:?}");
    assert_eq!(counting.counts().total(), 2 + chunks, "{requests:?}");
    // The path info and the NAR record are sequential (the record's key is in the path info),
    // and the bucket record was read by the HEAD of the bucket just before.
    let order: Vec<&str> = requests.iter().map(|(_, k)| k.as_str()).collect();
    let at = |p: &str| order.iter().position(|k| k.starts_with(p)).unwrap();
    assert!(at("caches/nix/pathinfo/") < at("nars/") && at("nars/") < at("chunks/"), "{order:?}");

    // Warm: a listing page of a directory, and the same GET again.
    counting.reset();
    let (_, prefixes) = delimited(&cold_client, &format!("tree/{base}/")).await;
    assert!(prefixes.contains(&format!("tree/{base}/bin/")), "{prefixes:?}");
    let reply = cold_client
        .list_objects()
        .bucket("nix")
        .prefix(format!("tree/{base}/"))
        .max_keys(2)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.contents().len(), 2);
    assert_eq!(counting.counts().total(), 0, "{:?}", counting.requests());
    cold_client.get_object().bucket("nix").key(&key).send().await.unwrap().body.collect().await.unwrap();
    assert_eq!(
        counting.gets_with_prefix("nars/") + counting.gets_with_prefix("caches/"),
        0,
        "{:?}",
        counting.requests()
    );
}

/// `rclone mount` (Debian's rclone and fuse3) of `tree/`, read-only: each mounted store path is
/// what `nix-store --restore` unpacks (symlinks, which rclone shows as files, hold their targets),
/// with as many entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rclone_mount_shows_the_restored_store_paths() {
    let gw = browsing_gateway(common::garage_backend().await, false).await;
    let nix = Nix::new();
    let restored = restored(&nix);
    // The restored paths with each symlink replaced by a file holding its target.
    let flat = nix.path("flat");
    for (base, path) in &restored {
        flatten_symlinks(path, &flat.join(base));
    }
    let mountpoint = nix.path("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let rclone = common::rclone::Rclone::new(&gw);
    let mount =
        tokio::task::block_in_place(|| rclone.mount("gw:nix/tree", &mountpoint, &["--dir-cache-time", "1s"]));
    let log = || mount.log();
    let flat_for_diff = flat.clone();
    let mount_for_diff = mountpoint.clone();
    let (diff, counts) = tokio::task::spawn_blocking(move || {
        let diff = std::process::Command::new("diff")
            .arg("-r")
            .arg(&flat_for_diff)
            .arg(&mount_for_diff)
            .output()
            .expect("run diff");
        let count = |dir: &Path| {
            let out = std::process::Command::new("find").arg(dir).output().expect("run find");
            String::from_utf8_lossy(&out.stdout).lines().count()
        };
        (diff, (count(&flat_for_diff), count(&mount_for_diff)))
    })
    .await
    .unwrap();
    assert!(
        diff.status.success(),
        "diff -r of the mount against the restored paths:\n{}{}\nrclone:\n{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr),
        log()
    );
    assert_eq!(counts.0, counts.1, "find | wc -l: restored vs mounted");
    assert_eq!(restored.len(), std::fs::read_dir(&mountpoint).unwrap().count());
}

/// Copies `from` to `to`, each symlink as a file holding its target (as rclone shows them).
fn flatten_symlinks(from: &Path, to: &Path) {
    use std::os::unix::ffi::OsStrExt as _;
    let meta = std::fs::symlink_metadata(from).unwrap();
    if meta.file_type().is_symlink() {
        std::fs::write(to, std::fs::read_link(from).unwrap().as_os_str().as_bytes()).unwrap();
    } else if meta.is_file() {
        std::fs::copy(from, to).unwrap();
    } else {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            flatten_symlinks(&entry.path(), &to.join(entry.file_name()));
        }
    }
}

/// NAR names are bytes: a name that is not UTF-8 is listed and read under its key with each
/// invalid byte as `%XX`, and a `%` that two hex digits follow as `%25`.
#[tokio::test]
async fn names_that_are_not_utf8_are_percent_encoded() {
    use nargate::nix::nar::{NarNode, write_nar};
    let gw = browsing_gateway(common::garage_backend().await, false).await;
    let file = |contents: &[u8]| NarNode::File { executable: false, contents: contents.to_vec() };
    let nar = write_nar(&NarNode::Directory(vec![
        (b"%41".to_vec(), file(b"percent")),
        (b"caf\xe9".to_vec(), file(b"latin-1")),
        (b"d\xff".to_vec(), NarNode::Directory(vec![(b"x".to_vec(), file(b"under"))])),
        (b"link".to_vec(), NarNode::Symlink { target: b"caf\xe9".to_vec() }),
    ]))
    .unwrap();
    let store = nargate::castore::ChunkStore::new(gw.backend.clone(), 1 << 20);
    let options = nargate::ingest::IngestOptions::default();
    let ingested = nargate::ingest::ingest_nar(&store, &nar[..], &options).await.unwrap();
    let cache = gw.cache("nix");
    cache.nar_landed(&ingested.record).await.unwrap();
    let base = "0c7mdwkqq5y5hjmiv4hjqn8kfqgr6xr0-bytes";
    let store_path = nargate::nix::store_path::StorePath::from_base_name(base).unwrap();
    let url = format!("nar/{}.nar", nargate::nix::nixbase32::encode(&ingested.record.nar_hash));
    let info = nargate::nix::narinfo::NarInfo::new(
        store_path,
        url,
        &ingested.record.nar_hash,
        ingested.record.nar_size,
    );
    cache.narinfo_arrived(&base[..32], &info).await.unwrap();

    let client = gw.client();
    let listed = list_all_v2(&client, "nix", &format!("tree/{base}/"), 1000).await;
    let keys: Vec<&str> =
        listed.iter().map(|(k, _)| k.strip_prefix(&format!("tree/{base}")).unwrap()).collect();
    assert_eq!(keys, ["/%2541", "/caf%E9", "/d%FF/x", "/link"]);
    for (key, body) in
        [("/%2541", &b"percent"[..]), ("/caf%E9", b"latin-1"), ("/d%FF/x", b"under"), ("/link", b"caf\xe9")]
    {
        let out = client.get_object().bucket("nix").key(format!("tree/{base}{key}")).send().await.unwrap();
        if key == "/link" {
            assert_eq!(
                out.metadata().and_then(|m| m.get("symlink-target")).map(String::as_str),
                Some("caf%E9")
            );
        }
        assert_eq!(&out.body.collect().await.unwrap().into_bytes()[..], body, "{key}");
    }
    let (_, prefixes) = delimited(&client, &format!("tree/{base}/")).await;
    assert_eq!(prefixes, [format!("tree/{base}/d%FF/")]);
}
