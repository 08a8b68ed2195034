//! Uploads through S3, as clients send them: the real `aws-sdk-s3` client (default checksums on:
//! streaming bodies with CRC trailers) and a raw HTTP client for what an SDK will not send
//! (wrong checksums, bodies that stop short, a client that leaves), against a gateway over a
//! real Garage. NARs and narinfos go in by PutObject in either order, are checked against each
//! other, and read back as Nix wrote them; deletes remove exactly what they name.

mod common;

use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use base64::Engine;
use common::failure;
use common::gateway::{TestGateway, fixture_nars, fixtures, start_with, test_options};
use nargate::backend::{self, DynBackend};
use nargate::cache::{Pending, md5_hex};
use nargate::nix::narinfo::NarInfo;
use nargate::nix::signing::{PublicKey, verify_narinfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn gateway() -> TestGateway {
    let backend = common::garage_backend().await;
    let options =
        nargate::gateway::GatewayOptions { body_idle_timeout: Duration::from_secs(1), ..test_options() };
    start_with(backend, options).await
}

async fn put(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    body: Vec<u8>,
) -> Result<String, (u16, String)> {
    let result = client.put_object().bucket(bucket).key(key).body(ByteStream::from(body)).send().await;
    match result {
        Ok(out) => Ok(out.e_tag().unwrap_or_default().trim_matches('"').to_owned()),
        Err(e) => Err(failure::<(), _>(Err(e))),
    }
}

async fn get(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<Vec<u8>, (u16, String)> {
    match client.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => Ok(out.body.collect().await.unwrap().into_bytes().to_vec()),
        Err(e) => Err(failure::<(), _>(Err(e))),
    }
}

/// Every key the bucket lists.
async fn listed(client: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let mut keys = vec![];
    let mut pages = client.list_objects_v2().bucket(bucket).into_paginator().send();
    while let Some(page) = pages.next().await {
        keys.extend(page.unwrap().contents().iter().map(|o| o.key().unwrap().to_owned()));
    }
    keys
}

/// The narinfos of a fixture cache: (file name, text, parsed), and the bytes of the NAR each names.
fn fixture_cache(name: &str) -> Vec<(String, String, NarInfo, Vec<u8>)> {
    let dir = fixtures().join(name);
    let mut out = vec![];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "narinfo") {
            let text = std::fs::read_to_string(&path).unwrap();
            let info = NarInfo::parse(&text).unwrap();
            let nar = std::fs::read(dir.join(&info.url)).unwrap();
            out.push((path.file_name().unwrap().to_string_lossy().into_owned(), text, info, nar));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn public_key() -> PublicKey {
    PublicKey::parse(std::fs::read_to_string(fixtures().join("public.key")).unwrap().trim()).unwrap()
}

/// The fixture NAR of a store path, uncompressed.
fn nar_of(store_path: &str) -> Vec<u8> {
    fixture_nars().into_iter().find(|(p, _, _)| p == store_path).unwrap().2
}

/// Backend keys under `prefix`.
async fn backend_keys(backend: &DynBackend, prefix: &str) -> Vec<String> {
    backend::list_all(backend.as_ref(), prefix).await.unwrap().into_iter().map(|o| o.key).collect()
}

/// Every fixture cache, uploaded object by object as `aws s3 cp` would — narinfos first for
/// one cache, NARs first for the others — reads back as Nix wrote it; then the bucket is emptied
/// key by key, and DeleteBucket leaves no record of it in the backend.
#[tokio::test]
async fn fixture_caches_uploaded_object_by_object_read_back_and_delete_cleanly() {
    let gw = gateway().await;
    let client = gw.client();
    for (bucket, cache, narinfo_first) in
        [("up-none", "cache-none", false), ("up-xz", "cache-xz", true), ("up-zstd", "cache-zstd", false)]
    {
        client.create_bucket().bucket(bucket).send().await.unwrap();
        let paths = fixture_cache(cache);
        put(
            &client,
            bucket,
            "nix-cache-info",
            std::fs::read(fixtures().join(cache).join("nix-cache-info")).unwrap(),
        )
        .await
        .unwrap();
        let upload_nars = async || {
            for (_, _, info, nar) in &paths {
                let etag = put(&client, bucket, &info.url, nar.clone()).await.unwrap();
                assert_eq!(etag, md5_hex(nar), "the ETag of a NAR upload is the MD5 of what was sent");
            }
        };
        let upload_narinfos = async |visible: bool| {
            for (name, text, _, _) in &paths {
                put(&client, bucket, name, text.clone().into_bytes()).await.unwrap();
                let got = get(&client, bucket, name).await;
                assert_eq!(got.is_ok(), visible, "{name} visible at once only when its NAR is there");
            }
        };
        if narinfo_first {
            upload_narinfos(false).await;
            upload_nars().await;
        } else {
            upload_nars().await;
            upload_narinfos(true).await;
        }
        for (name, _, info, _) in &paths {
            let served =
                NarInfo::parse(&String::from_utf8(get(&client, bucket, name).await.unwrap()).unwrap())
                    .unwrap();
            assert_eq!(served.store_path, info.store_path);
            assert_eq!(served.nar_hash, info.nar_hash);
            assert_eq!(served.references, info.references);
            assert!(verify_narinfo(&served, &[public_key()]), "{name}: the uploaded signature verifies");
            let nar = get(&client, bucket, &served.url).await.unwrap();
            assert!(
                nar == nar_of(&info.store_path.to_string()),
                "{name}: the NAR reads back as Nix dumped it"
            );
            if served.url != info.url {
                // The upload key of a compressed NAR is not kept.
                assert_eq!(get(&client, bucket, &info.url).await.unwrap_err(), (404, "NoSuchKey".into()));
            }
        }
        // `.ls` as Nix writes it: the same as the bucket filled by `import` serves.
        if bucket == "up-none" {
            gw.import("imported", false, &["cache-none"]).await;
            for (name, _, _, _) in &paths {
                let ls = name.replace(".narinfo", ".ls");
                assert!(
                    get(&client, bucket, &ls).await.unwrap() == get(&client, "imported", &ls).await.unwrap()
                );
            }
        }
    }

    // Emptied key by key, as `aws s3 rm --recursive` does.
    for bucket in ["up-none", "up-xz", "up-zstd"] {
        let keys = listed(&client, bucket).await;
        assert!(keys.len() > 4 * 4, "{bucket} lists narinfo, .ls, nar/ and store/ of each path: {keys:?}");
        for key in &keys {
            client.delete_object().bucket(bucket).key(key).send().await.unwrap();
        }
        assert_eq!(listed(&client, bucket).await, vec!["nix-cache-info".to_string()]);
        client.delete_bucket().bucket(bucket).send().await.unwrap();
        assert_eq!(backend_keys(&gw.backend, &format!("caches/{bucket}/")).await, Vec::<String>::new());
    }
}

/// Every row of the upload table that is not a whole cache: wrong NarHash at a NAR key, upload
/// keys not kept, compressions refused, malformed narinfos, another StorePath, `.ls` dropped,
/// `nix-cache-info` settings, `store/` read-only, signatures merged, paths replaced.
#[tokio::test]
async fn every_key_kind_accepts_and_refuses_what_it_should() {
    let gw = gateway().await;
    let client = gw.client();
    client.create_bucket().bucket("rows").send().await.unwrap();
    let paths = fixture_cache("cache-none");
    let (name, text, info, nar) = &paths[0];
    let store_hash = name.trim_end_matches(".narinfo");

    // A NAR whose NarHash is not its key's: BadDigest, nothing visible.
    let other_key = &paths[1].2.url;
    assert_eq!(put(&client, "rows", other_key, nar.clone()).await.unwrap_err(), (400, "BadDigest".into()));
    assert_eq!(get(&client, "rows", other_key).await.unwrap_err().0, 404);
    assert!(listed(&client, "rows").await == vec!["nix-cache-info".to_string()]);

    // Not a NAR in any compression; lzip: 400 with a message, nothing visible.
    assert_eq!(put(&client, "rows", "nar/x.nar.xz", b"hello, world".to_vec()).await.unwrap_err().0, 400);
    let lzip = client
        .put_object()
        .bucket("rows")
        .key("nar/x.nar.lz")
        .body(ByteStream::from_static(b"LZIP\x01rest"))
        .send()
        .await;
    let err = lzip.unwrap_err();
    assert!(err.as_service_error().and_then(|e| e.message()).unwrap_or_default().contains("lzip"), "{err:?}");

    // Malformed narinfos and one whose StorePath is not its key's: 400, nothing written.
    assert_eq!(
        put(&client, "rows", name, b"StorePath: nonsense\n".to_vec()).await.unwrap_err(),
        (400, "InvalidRequest".into())
    );
    let foreign = &paths[1].0;
    assert_eq!(
        put(&client, "rows", foreign, text.clone().into_bytes()).await.unwrap_err(),
        (400, "InvalidRequest".into())
    );
    assert_eq!(backend_keys(&gw.backend, "caches/rows/pending/").await, Vec::<String>::new());

    // A narinfo whose NarSize or NarHash contradicts the NAR uploaded at its URL: 400, not committed.
    put(&client, "rows", &info.url, nar.clone()).await.unwrap();
    let wrong_size =
        text.replace(&format!("NarSize: {}", info.nar_size), &format!("NarSize: {}", info.nar_size + 8));
    assert_eq!(
        put(&client, "rows", name, wrong_size.into_bytes()).await.unwrap_err(),
        (400, "BadDigest".into())
    );
    let wrong_hash = text.replace(&info.nar_hash, &paths[1].2.nar_hash);
    assert_eq!(
        put(&client, "rows", name, wrong_hash.into_bytes()).await.unwrap_err(),
        (400, "BadDigest".into())
    );
    assert_eq!(get(&client, "rows", name).await.unwrap_err().0, 404);

    // The right one commits; `.ls` uploads are accepted and dropped (the served one is rendered).
    put(&client, "rows", name, text.clone().into_bytes()).await.unwrap();
    let rendered = get(&client, "rows", &format!("{store_hash}.ls")).await.unwrap();
    put(&client, "rows", &format!("{store_hash}.ls"), b"{\"not\": \"this\"}".to_vec()).await.unwrap();
    assert!(get(&client, "rows", &format!("{store_hash}.ls")).await.unwrap() == rendered);

    // A narinfo sent with Content-Encoding is decoded before it is parsed.
    let encoded = client
        .put_object()
        .bucket("rows")
        .key(name)
        .content_encoding("zstd")
        .body(ByteStream::from(zstd::encode_all(text.as_bytes(), 3).unwrap()))
        .send()
        .await;
    assert!(encoded.is_ok(), "{encoded:?}");
    let bad_encoding = client
        .put_object()
        .bucket("rows")
        .key(name)
        .content_encoding("zstd")
        .body(ByteStream::from_static(b"plain"))
        .send()
        .await;
    assert_eq!(failure(bad_encoding), (400, "InvalidRequest".into()));

    // The same path again with another signature: signatures merged, listed once.
    let extra = "other-key:AAAA";
    let resigned = text.replace("Sig: ", &format!("Sig: {extra}\nSig: "));
    put(&client, "rows", name, resigned.into_bytes()).await.unwrap();
    let served = String::from_utf8(get(&client, "rows", name).await.unwrap()).unwrap();
    let sigs: Vec<&str> = served.lines().filter(|l| l.starts_with("Sig: ")).collect();
    assert_eq!(sigs.len(), 2, "{served}");
    assert!(served.contains(extra));
    let keys = listed(&client, "rows").await;
    assert_eq!(keys.iter().filter(|k| *k == name).count(), 1, "{keys:?}");

    // The same path with another NAR: replaced; the old NAR stays as an object, no longer used.
    let (_, _, other_info, other_nar) = &paths[1];
    put(&client, "rows", &other_info.url, other_nar.clone()).await.unwrap();
    let replaced = text
        .replace(&info.nar_hash, &other_info.nar_hash)
        .replace(&format!("NarSize: {}", info.nar_size), &format!("NarSize: {}", other_info.nar_size))
        .replace(&info.url, &other_info.url)
        .lines()
        .filter(|l| !l.starts_with("Sig: ") && !l.starts_with("FileHash") && !l.starts_with("FileSize"))
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    put(&client, "rows", name, replaced.into_bytes()).await.unwrap();
    let served =
        NarInfo::parse(&String::from_utf8(get(&client, "rows", name).await.unwrap()).unwrap()).unwrap();
    assert_eq!(served.nar_hash, other_info.nar_hash);
    let alias = format!("store/{}.nar", info.store_path.base_name());
    assert!(get(&client, "rows", &alias).await.unwrap() == *other_nar);
    let keys = listed(&client, "rows").await;
    assert_eq!(keys.iter().filter(|k| *k == name).count(), 1, "one entry for the replaced narinfo: {keys:?}");
    let old_users = backend_keys(
        &gw.backend,
        &format!("caches/rows/nars/{}/", info.nar_hash.trim_start_matches("sha256:")),
    )
    .await;
    assert_eq!(old_users, Vec::<String>::new(), "the old NAR's user marker is gone");

    // nix-cache-info: its settings are kept; another StoreDir is refused; DELETE resets.
    put(
        &client,
        "rows",
        "nix-cache-info",
        b"StoreDir: /nix/store\nWantMassQuery: 0\nPriority: 10\n".to_vec(),
    )
    .await
    .unwrap();
    let info_text = String::from_utf8(get(&client, "rows", "nix-cache-info").await.unwrap()).unwrap();
    assert_eq!(info_text, "StoreDir: /nix/store\nWantMassQuery: 0\nPriority: 10\n");
    assert_eq!(
        put(&client, "rows", "nix-cache-info", b"StoreDir: /gnu/store\n".to_vec()).await.unwrap_err(),
        (400, "InvalidRequest".into())
    );
    client.delete_object().bucket("rows").key("nix-cache-info").send().await.unwrap();
    let info_text = String::from_utf8(get(&client, "rows", "nix-cache-info").await.unwrap()).unwrap();
    assert_eq!(info_text, "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n");

    // store/ is read-only; its DELETE removes the store path, not the NAR.
    assert_eq!(
        put(&client, "rows", &alias, other_nar.clone()).await.unwrap_err(),
        (400, "InvalidRequest".into())
    );
    client.delete_object().bucket("rows").key(&alias).send().await.unwrap();
    assert_eq!(get(&client, "rows", name).await.unwrap_err().0, 404);
    assert!(get(&client, "rows", &other_info.url).await.is_ok());
    // DELETE of a NAR removes the store paths that use it; a missing key is 204 too.
    put(&client, "rows", &paths[1].0, paths[1].1.clone().into_bytes()).await.unwrap();
    assert!(get(&client, "rows", &paths[1].0).await.is_ok());
    client.delete_object().bucket("rows").key(&other_info.url).send().await.unwrap();
    assert_eq!(get(&client, "rows", &paths[1].0).await.unwrap_err().0, 404);
    assert_eq!(get(&client, "rows", &other_info.url).await.unwrap_err().0, 404);
    for key in ["nar/none.nar.xz", &paths[2].0, "store/x", "log/none"] {
        client.delete_object().bucket("rows").key(key).send().await.unwrap();
    }
}

/// Sends a PUT with `Authorization: Basic` (as Nix's netrc does), `headers` and `body`; if
/// `then_close`, closes the connection right after the body, without reading the answer.
async fn raw_put(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
    length: usize,
    then_close: bool,
) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", gw.keys.access_key_id, gw.keys.secret_access_key));
    let mut request = format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Basic {basic}\r\nContent-Length: {length}\r\nConnection: close\r\n",
        gw.port
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    if then_close {
        drop(stream);
        return None;
    }
    let mut raw = vec![];
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Some((status, text))
}

/// A NAR and its narinfo meet whatever happens to the client: one that leaves right after its
/// last byte still commits, one that stops short gets 400 within the idle timeout, and a pending
/// narinfo left by a gateway that died is committed by the repair pass. Checksums are checked.
#[tokio::test]
async fn commits_survive_clients_and_crashes_and_checksums_are_checked() {
    let gw = gateway().await;
    let client = gw.client();
    client.create_bucket().bucket("robust").send().await.unwrap();
    let paths = fixture_cache("cache-none");

    // The narinfo first; then a client sends the NAR and leaves without waiting for the answer.
    let (name, text, info, nar) = &paths[0];
    put(&client, "robust", name, text.clone().into_bytes()).await.unwrap();
    let path = format!("/robust/{}", info.url);
    raw_put(&gw, &path, &[], nar, nar.len(), true).await;
    let mut visible = false;
    for _ in 0..100 {
        if get(&client, "robust", name).await.is_ok() {
            visible = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(visible, "the store path commits though its client left");

    // A body that stops short of its Content-Length: 400 IncompleteBody, not a hang.
    let (_, _, info1, nar1) = &paths[1];
    let started = std::time::Instant::now();
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", gw.keys.access_key_id, gw.keys.secret_access_key));
    let head = format!(
        "PUT /robust/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {basic}\r\nContent-Length: {}\r\n\r\n",
        info1.url,
        nar1.len()
    );
    write.write_all(head.as_bytes()).await.unwrap();
    write.write_all(&nar1[..nar1.len() / 2]).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), read.read(&mut answer))
        .await
        .expect("an answer, not a hang")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("IncompleteBody"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(15));
    drop(write);
    assert_eq!(get(&client, "robust", &info1.url).await.unwrap_err().0, 404, "nothing of it visible");

    // Content-MD5 and x-amz-checksum-crc64nvme that do not match: BadDigest, nothing visible.
    let wrong_md5 = base64::engine::general_purpose::STANDARD.encode([0u8; 16]);
    let (status, text_md5) = raw_put(
        &gw,
        &format!("/robust/{}", info1.url),
        &[("Content-MD5", wrong_md5)],
        nar1,
        nar1.len(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{text_md5}");
    assert!(text_md5.contains("BadDigest"), "{text_md5}");
    let wrong_crc = base64::engine::general_purpose::STANDARD.encode([0u8; 8]);
    let (status, text_crc) = raw_put(
        &gw,
        &format!("/robust/{}", info1.url),
        &[("x-amz-checksum-crc64nvme", wrong_crc)],
        nar1,
        nar1.len(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{text_crc}");
    assert!(text_crc.contains("BadDigest"), "{text_crc}");
    let (status, text_plain) = raw_put(
        &gw,
        "/robust/log/x",
        &[("x-amz-checksum-crc64nvme", base64::engine::general_purpose::STANDARD.encode([1u8; 8]))],
        b"plain",
        5,
        false,
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{text_plain}");
    assert_eq!(get(&client, "robust", &info1.url).await.unwrap_err().0, 404);
    assert_eq!(get(&client, "robust", "log/x").await.unwrap_err().0, 404);
    // The SDK's own CRC trailers pass, and the checksum comes back.
    let out = client
        .put_object()
        .bucket("robust")
        .key("log/y")
        .body(ByteStream::from_static(b"checked"))
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc64Nvme)
        .send()
        .await
        .unwrap();
    assert!(out.checksum_crc64_nvme().is_some(), "{out:?}");
    // A checksum sent as a header is kept with a plain object and shown when asked for.
    let crc = {
        use s3s::crypto::Checksum as _;
        base64::engine::general_purpose::STANDARD.encode(s3s::crypto::Crc32::checksum(b"kept"))
    };
    client
        .put_object()
        .bucket("robust")
        .key("log/z")
        .body(ByteStream::from_static(b"kept"))
        .checksum_crc32(&crc)
        .send()
        .await
        .unwrap();
    let head = client
        .head_object()
        .bucket("robust")
        .key("log/z")
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(head.checksum_crc32(), Some(crc.as_str()));
    let plain = client.head_object().bucket("robust").key("log/z").send().await.unwrap();
    assert_eq!(plain.checksum_crc32(), None, "not shown unless asked for");
    assert!(plain.metadata().is_none_or(|m| m.is_empty()), "checksums are not user metadata: {plain:?}");

    // A gateway that died between the halves: the NAR landed, the narinfo's pending record was
    // written, nobody looked for the other. The repair pass commits it.
    put(&client, "robust", &info1.url, nar1.clone()).await.unwrap();
    let store_hash = paths[1].0.trim_end_matches(".narinfo");
    let nar_hash = info1.nar_hash.trim_start_matches("sha256:");
    let pending = Pending { narinfo: paths[1].1.clone() };
    gw.backend
        .put(&format!("caches/robust/pending/{nar_hash}/{store_hash}"), bytes::Bytes::from(pending.encode()))
        .await
        .unwrap();
    assert_eq!(get(&client, "robust", &paths[1].0).await.unwrap_err().0, 404);
    let report = nargate::cache::repair_all(&gw.backend).await.unwrap();
    assert_eq!((report.pending, report.committed), (1, 1), "{report:?}");
    assert!(get(&client, "robust", &paths[1].0).await.is_ok());
    assert_eq!(backend_keys(&gw.backend, "caches/robust/pending/").await, Vec::<String>::new());
}

/// Every malformed-NAR rule of the core, broken once through PutObject: 400, nothing visible.
#[tokio::test]
async fn malformed_nars_are_refused_through_put_object() {
    let gw = gateway().await;
    let client = gw.client();
    client.create_bucket().bucket("bad").send().await.unwrap();
    let (_, _, good) = fixture_nars().into_iter().find(|(p, _, _)| p.ends_with("-hello")).unwrap();
    let s = |t: &str| {
        let mut out = (t.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(t.as_bytes());
        out.resize(8 + t.len().div_ceil(8) * 8, 0);
        out
    };
    let nar = |tokens: &[&str]| tokens.iter().flat_map(|t| s(t)).collect::<Vec<u8>>();
    let mut bad_padding = nar(&["nix-archive-1", "(", "type", "regular", "contents"]);
    bad_padding.extend_from_slice(&1u64.to_le_bytes());
    bad_padding.extend_from_slice(&[b'x', 1, 0, 0, 0, 0, 0, 0]);
    bad_padding.extend(s(")"));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("trailing data", [good.clone(), vec![0; 8]].concat()),
        ("wrong magic", nar(&["nix-archive-2", "(", "type", "regular", "contents", "", ")"])),
        ("unknown node type", nar(&["nix-archive-1", "(", "type", "fifo", ")"])),
        ("non-zero padding", bad_padding),
        (
            "unsorted entries",
            nar(&[
                "nix-archive-1",
                "(",
                "type",
                "directory",
                "entry",
                "(",
                "name",
                "b",
                "node",
                "(",
                "type",
                "regular",
                "contents",
                "",
                ")",
                ")",
                "entry",
                "(",
                "name",
                "a",
                "node",
                "(",
                "type",
                "regular",
                "contents",
                "",
                ")",
                ")",
                ")",
            ]),
        ),
        (
            "name ..",
            nar(&[
                "nix-archive-1",
                "(",
                "type",
                "directory",
                "entry",
                "(",
                "name",
                "..",
                "node",
                "(",
                "type",
                "regular",
                "contents",
                "",
                ")",
                ")",
                ")",
            ]),
        ),
        (
            "name with /",
            nar(&[
                "nix-archive-1",
                "(",
                "type",
                "directory",
                "entry",
                "(",
                "name",
                "a/b",
                "node",
                "(",
                "type",
                "regular",
                "contents",
                "",
                ")",
                ")",
                ")",
            ]),
        ),
        ("empty", vec![]),
    ];
    for (what, bytes) in cases {
        let key = format!("nar/{}.nar", "1".repeat(52));
        let result = put(&client, "bad", &key, bytes).await;
        assert_eq!(result.as_ref().map_err(|e| e.0), Err(400), "{what}: {result:?}");
        assert_eq!(
            listed(&client, "bad").await,
            vec!["nix-cache-info".to_string()],
            "{what}: nothing visible"
        );
    }
    let xz = put(&client, "bad", "nar/x.nar.xz", vec![0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2]).await;
    assert_eq!(xz.map_err(|e| e.0), Err(400), "a broken xz stream");
    assert_eq!(listed(&client, "bad").await, vec!["nix-cache-info".to_string()]);
}

/// What can be refused is refused before the body is read (hyper sends `100 Continue` only when
/// the body is first polled, so Nix never sends a body that would be refused); dedup is global,
/// visibility per bucket.
#[tokio::test]
async fn refusals_come_before_the_body_and_dedup_stays_private() {
    let gw = gateway().await;
    let client = gw.client();
    client.create_bucket().bucket("first").send().await.unwrap();
    client.create_bucket().bucket("second").send().await.unwrap();
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", gw.keys.access_key_id, gw.keys.secret_access_key));
    for (path, auth, status) in [
        ("/missing/nar/x.nar.xz", true, "404"),
        ("/first/store/x.nar", true, "400"),
        ("/first/nar/x.nar.xz", false, "403"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
        let auth = if auth { format!("Authorization: Basic {basic}\r\n") } else { String::new() };
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Length: 100000\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n =
            tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer)).await.unwrap().unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{path}: {answer}");
    }

    let paths = fixture_cache("cache-none");
    for (name, text, info, nar) in &paths {
        put(&client, "first", &info.url, nar.clone()).await.unwrap();
        put(&client, "first", name, text.clone().into_bytes()).await.unwrap();
    }
    let chunks = backend_keys(&gw.backend, "chunks/").await;
    let records = backend_keys(&gw.backend, "nars/").await;
    let (name, text, info, nar) = &paths[0];
    // Another bucket sees none of it, though the store holds the NAR.
    assert_eq!(get(&client, "second", name).await.unwrap_err().0, 404);
    assert_eq!(get(&client, "second", &info.url).await.unwrap_err().0, 404);
    put(&client, "second", name, text.clone().into_bytes()).await.unwrap();
    assert_eq!(
        get(&client, "second", name).await.unwrap_err().0,
        404,
        "a narinfo commits only against its own bucket's NAR"
    );
    put(&client, "second", &info.url, nar.clone()).await.unwrap();
    assert!(get(&client, "second", name).await.is_ok());
    assert_eq!(backend_keys(&gw.backend, "chunks/").await, chunks, "no chunk stored twice");
    assert_eq!(backend_keys(&gw.backend, "nars/").await, records, "no NAR record stored twice");
}

/// An ingest that meets a GC that does not end in time answers 409 OperationAborted (a 4xx: Nix
/// retries a 5xx with an empty body), and nothing of it is visible; once the GC is gone, the
/// same upload succeeds.
#[tokio::test]
async fn an_upload_during_gc_is_a_conflict() {
    let backend = common::garage_backend().await;
    let mut options = test_options();
    options.ingest.gc_wait = Duration::from_millis(500);
    let gw = start_with(backend, options).await;
    let client = gw.client();
    client.create_bucket().bucket("during-gc").send().await.unwrap();
    let (_, _, info, nar) = &fixture_cache("cache-none")[0];
    gw.backend.put("locks/gc", bytes::Bytes::from_static(b"a GC")).await.unwrap();
    assert_eq!(
        put(&client, "during-gc", &info.url, nar.clone()).await.unwrap_err(),
        (409, "OperationAborted".into())
    );
    assert_eq!(get(&client, "during-gc", &info.url).await.unwrap_err().0, 404);
    gw.backend.delete("locks/gc").await.unwrap();
    put(&client, "during-gc", &info.url, nar.clone()).await.unwrap();
    assert!(get(&client, "during-gc", &info.url).await.unwrap() == *nar);
}

/// CopyObject reads its source whole (a virtual key rendered) and writes it as a PutObject of
/// those bytes would: a NAR copied into another bucket is ingested there, a narinfo commits, a
/// plain object keeps its metadata or takes new, and a copy onto itself succeeds (as rclone's
/// modification-time updates send).
#[tokio::test]
async fn copy_object_writes_what_a_put_of_the_source_would() {
    let gw = gateway().await;
    let client = gw.client();
    gw.import("from", false, &["cache-none"]).await;
    client.create_bucket().bucket("into").send().await.unwrap();
    let (name, _, info, nar) = &fixture_cache("cache-none")[0];
    let copy = |src: String, bucket: &'static str, key: String| {
        client.copy_object().copy_source(src).bucket(bucket).key(key).send()
    };
    copy(format!("from/{}", info.url), "into", info.url.clone()).await.unwrap();
    copy(format!("from/{name}"), "into", name.clone()).await.unwrap();
    assert!(get(&client, "into", &info.url).await.unwrap() == *nar);
    assert_eq!(get(&client, "into", name).await.unwrap(), get(&client, "from", name).await.unwrap());

    client
        .put_object()
        .bucket("from")
        .key("log/a")
        .content_type("text/plain")
        .metadata("k", "v")
        .body(ByteStream::from_static(b"log"))
        .send()
        .await
        .unwrap();
    copy("from/log/a".into(), "into", "log/b".into()).await.unwrap();
    let head = client.head_object().bucket("into").key("log/b").send().await.unwrap();
    assert_eq!(
        (head.content_type(), head.metadata().and_then(|m| m.get("k")).map(String::as_str)),
        (Some("text/plain"), Some("v"))
    );
    // New metadata, the same bytes: the source's checksum stays with them.
    let sent = client
        .put_object()
        .bucket("from")
        .key("log/sum")
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
        .body(ByteStream::from_static(b"checked log"))
        .send()
        .await
        .unwrap();
    client
        .copy_object()
        .copy_source("from/log/sum")
        .bucket("into")
        .key("log/sum")
        .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
        .metadata("k", "new")
        .send()
        .await
        .unwrap();
    let head = client
        .head_object()
        .bucket("into")
        .key("log/sum")
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert!(sent.checksum_sha256().is_some());
    assert_eq!(
        (head.checksum_sha256(), head.metadata().and_then(|m| m.get("k")).map(String::as_str)),
        (sent.checksum_sha256(), Some("new"))
    );
    client
        .copy_object()
        .copy_source(format!("into/{name}"))
        .bucket("into")
        .key(name)
        .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
        .metadata("mtime", "1700000000")
        .send()
        .await
        .unwrap();
    assert!(get(&client, "into", name).await.is_ok());
    let missing = client.copy_object().copy_source("from/log/none").bucket("into").key("log/c").send().await;
    assert_eq!(failure(missing), (404, "NoSuchKey".into()));
}

/// Records the `x-amz-trailer` header of each request it sees.
#[derive(Debug, Clone, Default)]
struct Trailers(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl aws_sdk_s3::config::Intercept for Trailers {
    fn name(&self) -> &'static str {
        "tests::Trailers"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &aws_sdk_s3::config::RuntimeComponents,
        _cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let trailer = context.request().headers().get("x-amz-trailer").unwrap_or_default().to_owned();
        self.0.lock().unwrap().push(trailer);
        Ok(())
    }
}

/// The CRC64NVME of `data`, base64, as S3 gives it.
fn crc64nvme(data: &[u8]) -> String {
    use s3s::crypto::Checksum as _;
    base64::engine::general_purpose::STANDARD.encode(s3s::crypto::Crc64Nvme::checksum(data))
}

/// The SDK sends a streaming body's checksum (here CRC64NVME, as the aws cli does by default) as
/// an aws-chunked trailer (an in-memory body's goes as a header): it is kept with the plain object — small (one PutObject on the backend) or larger than one backend part
/// (a multipart upload on the backend, which gets the checksum after Complete) — and HEAD and
/// GET with checksum mode return it, with type FULL_OBJECT and the ETag PutObject answered.
#[tokio::test]
async fn trailer_checksums_are_kept_with_plain_objects() {
    use aws_sdk_s3::types::{ChecksumMode, ChecksumType};
    let gw = gateway().await;
    let client = gw.client();
    client.create_bucket().bucket("sums").send().await.unwrap();
    let large = nargate::backend::s3::PART_SIZE + 12_345;
    for (key, size) in [("log/small", 1_000), ("log/large", large)] {
        let body = common::pseudo_random(size, size as u64);
        let expected = crc64nvme(&body);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &body).unwrap();
        let trailers = Trailers::default();
        let put = client
            .put_object()
            .bucket("sums")
            .key(key)
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc64Nvme)
            .body(ByteStream::from_path(file.path()).await.unwrap())
            .customize()
            .interceptor(trailers.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(*trailers.0.lock().unwrap(), ["x-amz-checksum-crc64nvme"], "{key}: sent as a trailer");
        assert_eq!(put.checksum_crc64_nvme(), Some(expected.as_str()), "{key}");
        assert_eq!(put.checksum_type(), Some(&ChecksumType::FullObject), "{key}");

        let head =
            client.head_object().bucket("sums").key(key).checksum_mode(ChecksumMode::Enabled).send().await;
        let head = head.unwrap();
        assert_eq!(head.checksum_crc64_nvme(), Some(expected.as_str()), "{key}: {head:?}");
        assert_eq!(head.checksum_type(), Some(&ChecksumType::FullObject), "{key}");
        assert_eq!(head.e_tag(), put.e_tag(), "{key}: the ETag PutObject answered");
        assert!(head.metadata().is_none_or(|m| m.is_empty()), "checksums are not user metadata: {head:?}");

        let got =
            client.get_object().bucket("sums").key(key).checksum_mode(ChecksumMode::Enabled).send().await;
        let got = got.unwrap();
        assert_eq!(got.checksum_crc64_nvme(), Some(expected.as_str()), "{key}");
        // The SDK checks the body against the checksum as it reads it.
        assert!(got.body.collect().await.unwrap().into_bytes() == body, "{key}");

        let plain = client.head_object().bucket("sums").key(key).send().await.unwrap();
        assert_eq!(plain.checksum_crc64_nvme(), None, "{key}: not shown unless asked for");
    }
}

/// A SigV4 PUT signs its payload's SHA-256 (`x-amz-content-sha256`), which s3s checks as the body
/// streams; for an uncompressed NAR that hash *is* its NarHash, so the ingest takes it instead of
/// hashing the NAR again. A body whose bytes are not the signed hash must then fail (400) and
/// land nothing, also when the signed hash is the one the key names. Sent with the real
/// `curl --aws-sigv4`, which signs the `x-amz-content-sha256` it is given.
#[tokio::test]
async fn a_signed_payload_hash_is_checked_before_it_stands_for_the_nar_hash() {
    use nargate::nix::nar::{NarNode, write_nar};
    use sha2::Digest as _;
    let gw = gateway().await;
    let client = gw.client();
    client.create_bucket().bucket("signed").send().await.unwrap();
    let nar = |contents: &[u8]| {
        write_nar(&NarNode::File { executable: false, contents: contents.to_vec() }).unwrap()
    };
    let (good, bad) = (nar(b"the bytes nix wrote\n"), nar(b"other bytes, same size\n"));
    let good_hash = sha2::Sha256::digest(&good);
    let key = format!("nar/{}.nar", nargate::nix::nixbase32::encode(good_hash.as_slice()));
    let scratch = tempfile::tempdir().unwrap();
    let curl_put = async |body: &[u8], signed_sha256: &str| {
        let file = scratch.path().join("body");
        std::fs::write(&file, body).unwrap();
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
            .arg(format!("{}:{}", gw.keys.access_key_id, gw.keys.secret_access_key))
            .args(["-H", &format!("x-amz-content-sha256: {signed_sha256}"), "-T"])
            .arg(&file)
            .arg("-o")
            .arg(scratch.path().join("reply"))
            .args(["-w", "%{http_code}"])
            .arg(format!("{}/signed/{key}", gw.endpoint))
            .output()
            .await
            .expect("curl is missing: install it with .ci/install-tools.sh");
        assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
        let reply = std::fs::read_to_string(scratch.path().join("reply")).unwrap_or_default();
        (String::from_utf8_lossy(&out.stdout).trim().parse::<u16>().unwrap(), reply)
    };
    // The other bytes, signed as the key's NAR: refused, nothing visible.
    let (status, reply) = curl_put(&bad, &hex::encode(good_hash)).await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains("<Code>XAmzContentSHA256Mismatch</Code>"), "{reply}");
    assert_eq!(get(&client, "signed", &key).await.unwrap_err().0, 404);
    // The right bytes, rightly signed: ingested, and read back as sent.
    assert_eq!(curl_put(&good, &hex::encode(good_hash)).await.0, 200);
    assert_eq!(get(&client, "signed", &key).await.unwrap(), good);
}
