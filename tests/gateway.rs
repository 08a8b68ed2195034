//! The S3 front end, as clients see it: the real `aws-sdk-s3` client (and a raw HTTP client for
//! what an SDK hides) against a gateway serving caches filled from the fixtures with `import`'s
//! code, over a real Garage and over the fs backend. Every virtual key reads back as Nix wrote
//! it; ranges, preconditions, listings, plain objects, buckets and auth behave as S3 does.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketCannedAcl, Delete, ObjectIdentifier};
use common::failure;
use common::gateway::{fixture_nars, fixtures, start};
use nargate::backend::DynBackend;
use nargate::cache::md5_hex;
use nargate::gateway::GatewayOptions;

type TestResult = ();

macro_rules! suite {
    ($($check:ident),* $(,)?) => {
        mod fs {
            $(
                #[tokio::test]
                async fn $check() {
                    let (_dir, backend) = crate::common::fs_backend();
                    super::$check(backend).await
                }
            )*
        }
        mod garage {
            $(
                #[tokio::test]
                async fn $check() {
                    let backend = crate::common::garage_backend().await;
                    super::$check(backend).await
                }
            )*
        }
    };
}

suite!(
    virtual_keys_read_back_as_nix_wrote_them,
    ranges_at_any_offset,
    preconditions,
    listings_merge_and_paginate,
    plain_objects_keep_their_metadata,
    bucket_lifecycle,
    auth_signed_anonymous_basic_presigned,
);

async fn bucket_names(client: &aws_sdk_s3::Client) -> Vec<String> {
    let out = client.list_buckets().send().await.unwrap();
    out.buckets().iter().map(|b| b.name().unwrap().to_owned()).collect()
}

async fn get_bytes(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {key}: {e:?}"));
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

/// The fixture narinfos of `cache-none` (which name the NAR uncompressed, as the gateway serves
/// it): (store hash, text).
fn uncompressed_narinfos() -> Vec<(String, String)> {
    let mut out = vec![];
    for entry in std::fs::read_dir(fixtures().join("cache-none")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "narinfo") {
            let hash = path.file_stem().unwrap().to_str().unwrap().to_owned();
            out.push((hash, std::fs::read_to_string(&path).unwrap()));
        }
    }
    out.sort();
    out
}

async fn virtual_keys_read_back_as_nix_wrote_them(backend: DynBackend) -> TestResult {
    let gw = start(backend).await;
    gw.import("nix", false, &["cache-xz"]).await;
    let client = gw.client();

    let info = client.get_object().bucket("nix").key("nix-cache-info").send().await.unwrap();
    assert_eq!(info.content_type(), Some("text/x-nix-cache-info"));
    let text = info.body.collect().await.unwrap().into_bytes();
    assert_eq!(&text[..], b"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n");

    // Each narinfo is the one Nix writes for an uncompressed cache (the bucket signs nothing).
    for (hash, expected) in uncompressed_narinfos() {
        let key = format!("{hash}.narinfo");
        let out = client.get_object().bucket("nix").key(&key).send().await.unwrap();
        assert_eq!(out.content_type(), Some("text/x-nix-narinfo"));
        assert_eq!(out.content_encoding(), None);
        let etag = out.e_tag().unwrap().to_owned();
        let body = out.body.collect().await.unwrap().into_bytes();
        assert_eq!(String::from_utf8_lossy(&body), expected, "{key}");
        assert_eq!(etag, format!("\"{}\"", md5_hex(expected.as_bytes())));
        let head = client.head_object().bucket("nix").key(&key).send().await.unwrap();
        assert_eq!(head.content_length(), Some(expected.len() as i64));
        assert_eq!(head.e_tag(), Some(etag.as_str()));
    }

    // Each NAR, under its hash and under its store path's name.
    for (store_path, nar_hash, nar) in fixture_nars() {
        let base = store_path.strip_prefix("/nix/store/").unwrap();
        for key in [format!("nar/{nar_hash}.nar"), format!("store/{base}.nar")] {
            let out = client.get_object().bucket("nix").key(&key).send().await.unwrap();
            assert_eq!(out.content_type(), Some("application/x-nix-nar"), "{key}");
            assert_eq!(out.content_length(), Some(nar.len() as i64));
            assert_eq!(out.accept_ranges(), Some("bytes"));
            assert_eq!(out.e_tag(), Some(format!("\"{}\"", md5_hex(&nar)).as_str()));
            assert!(
                out.body.collect().await.unwrap().into_bytes() == nar,
                "{key} differs from the fixture NAR"
            );
        }
        let hash = &base[..32];
        let wrong = format!("store/{hash}-not-its-name.nar");
        assert_eq!(
            failure(client.get_object().bucket("nix").key(&wrong).send().await),
            (404, "NoSuchKey".into())
        );
    }
    let missing = "nar/0000000000000000000000000000000000000000000000000000.nar";
    assert_eq!(
        failure(client.get_object().bucket("nix").key(missing).send().await),
        (404, "NoSuchKey".into())
    );
    let upload_key = format!("nar/{}.nar.xz", fixture_nars()[0].1);
    assert_eq!(failure(client.head_object().bucket("nix").key(&upload_key).send().await).0, 404);

    // Each `.ls` is byte for byte the listing Nix writes.
    let nix = common::nix::Nix::new();
    let listings = nix.listings(&fixtures().join("cache-none"), "ls");
    for (hash, _) in uncompressed_narinfos() {
        let expected = std::fs::read(listings.join(format!("{hash}.ls"))).unwrap();
        let out = client.get_object().bucket("nix").key(format!("{hash}.ls")).send().await.unwrap();
        assert_eq!(out.content_type(), Some("application/json"));
        assert!(out.body.collect().await.unwrap().into_bytes() == expected, "{hash}.ls differs from Nix's");
    }

    // A NAR this bucket does not hold is not visible in it, even though the store has it.
    gw.import("other", false, &[]).await;
    let (_, nar_hash, _) = &fixture_nars()[0];
    let key = format!("nar/{nar_hash}.nar");
    assert_eq!(
        failure(client.get_object().bucket("other").key(&key).send().await),
        (404, "NoSuchKey".into())
    );
    assert_eq!(
        failure(client.get_object().bucket("nope").key(&key).send().await),
        (404, "NoSuchBucket".into())
    );
}

/// xorshift, for reproducible offsets.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

async fn ranges_at_any_offset(backend: DynBackend) -> TestResult {
    let gw = start(backend).await;
    gw.import("nix", false, &["cache-zstd"]).await;
    let client = gw.client();
    let (_, nar_hash, nar) = fixture_nars().into_iter().max_by_key(|n| n.2.len()).unwrap();
    let key = format!("nar/{nar_hash}.nar");
    let len = nar.len() as u64;
    let mut seed = 0x5eed_u64;
    for _ in 0..24 {
        let a = next(&mut seed) % len;
        let b = (a + next(&mut seed) % 300_000).min(len - 1);
        let out =
            client.get_object().bucket("nix").key(&key).range(format!("bytes={a}-{b}")).send().await.unwrap();
        assert_eq!(out.content_range(), Some(format!("bytes {a}-{b}/{len}").as_str()));
        assert_eq!(out.content_length(), Some((b - a + 1) as i64));
        let body = out.body.collect().await.unwrap().into_bytes();
        assert!(body[..] == nar[a as usize..=b as usize], "bytes={a}-{b}");
    }
    let out = client.get_object().bucket("nix").key(&key).range("bytes=-100").send().await.unwrap();
    assert!(out.body.collect().await.unwrap().into_bytes()[..] == nar[nar.len() - 100..]);
    let out = client
        .get_object()
        .bucket("nix")
        .key(&key)
        .range(format!("bytes={}-", len - 5))
        .send()
        .await
        .unwrap();
    assert!(out.body.collect().await.unwrap().into_bytes()[..] == nar[nar.len() - 5..]);
    let past = client.get_object().bucket("nix").key(&key).range(format!("bytes={len}-")).send().await;
    assert_eq!(failure(past), (416, "InvalidRange".into()));

    // What the SDK cannot send, over raw HTTP with the bucket made public.
    let public = "open";
    gw.import(public, true, &["cache-none"]).await;
    let path = format!("/{public}/{key}");
    let reply = gw.http("GET", &path, &[("Range", "bytes=0-9,20-29")]).await;
    assert_eq!((reply.status, reply.body.len()), (200, nar.len()), "several ranges: the whole object");
    let reply = gw.http("GET", &path, &[("Range", "items=0-9")]).await;
    assert_eq!(reply.status, 200, "another unit: the whole object");
    let reply = gw.http("GET", &format!("{path}?partNumber=1"), &[("Range", "bytes=0-9")]).await;
    assert_eq!((reply.status, reply.body.len()), (200, nar.len()), "partNumber=1 is the whole object");
    let reply = gw.http("GET", &path, &[("Range", "bytes=-0")]).await;
    assert_eq!(reply.status, 416);
    assert_eq!(reply.header("content-range"), Some(format!("bytes */{len}").as_str()));
    assert!(reply.text().contains("<Code>InvalidRange</Code>"), "{}", reply.text());
    assert!(reply.text().contains("<RequestId>"), "{}", reply.text());
    let head = gw.http("HEAD", &path, &[]).await;
    assert_eq!(head.header("content-length"), Some(len.to_string().as_str()));
    assert_eq!(head.header("accept-ranges"), Some("bytes"));
    assert!(head.body.is_empty());
}

/// The status of a GET of `path` with `headers`.
async fn status(gw: &common::gateway::TestGateway, path: &str, headers: Vec<(&str, String)>) -> u16 {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    gw.http("GET", path, &headers).await.status
}

async fn preconditions(backend: DynBackend) -> TestResult {
    let gw = start(backend).await;
    gw.import("open", true, &["cache-none"]).await;
    let (_, nar_hash, nar) = fixture_nars().remove(0);
    let etag = format!("\"{}\"", md5_hex(&nar));
    for key in [format!("nar/{nar_hash}.nar"), "nix-cache-info".to_owned()] {
        let path = format!("/open/{key}");
        let plain = gw.http("GET", &path, &[]).await;
        assert_eq!(plain.status, 200);
        let etag = plain.header("etag").unwrap().to_owned();
        let modified = plain.header("last-modified").unwrap().to_owned();
        let time = httpdate::parse_http_date(&modified).unwrap();
        let later = httpdate::fmt_http_date(time + Duration::from_secs(60));
        let earlier = httpdate::fmt_http_date(time - Duration::from_secs(60));
        assert_eq!(status(&gw, &path, vec![("If-Match", etag.clone())]).await, 200);
        assert_eq!(status(&gw, &path, vec![("If-Match", format!("\"x\", {etag}"))]).await, 200);
        assert_eq!(status(&gw, &path, vec![("If-Match", "\"x\"".into())]).await, 412);
        assert_eq!(status(&gw, &path, vec![("If-None-Match", etag.clone())]).await, 304);
        assert_eq!(status(&gw, &path, vec![("If-None-Match", format!("\"x\", {etag}"))]).await, 304);
        assert_eq!(status(&gw, &path, vec![("If-None-Match", "*".into())]).await, 304);
        assert_eq!(status(&gw, &path, vec![("If-None-Match", "\"x\"".into())]).await, 200);
        assert_eq!(status(&gw, &path, vec![("If-Modified-Since", modified.clone())]).await, 304);
        assert_eq!(status(&gw, &path, vec![("If-Modified-Since", earlier.clone())]).await, 200);
        assert_eq!(status(&gw, &path, vec![("If-Unmodified-Since", earlier.clone())]).await, 412);
        assert_eq!(status(&gw, &path, vec![("If-Unmodified-Since", later.clone())]).await, 200);
        assert_eq!(
            status(&gw, &path, vec![("Range", "bytes=0-3".into()), ("If-Range", etag.clone())]).await,
            206
        );
        assert_eq!(
            status(&gw, &path, vec![("Range", "bytes=0-3".into()), ("If-Range", "\"x\"".into())]).await,
            200
        );
        assert_eq!(
            status(&gw, &path, vec![("Range", "bytes=0-3".into()), ("If-Range", modified.clone())]).await,
            206
        );
        let not_modified = gw.http("GET", &path, &[("If-None-Match", &etag)]).await;
        assert!(not_modified.body.is_empty());
        assert_eq!(not_modified.header("etag"), Some(etag.as_str()));
    }
    // The aws cli reads big objects in ranges with If-Match: the SDK's way works too.
    let client = gw.client();
    let key = format!("nar/{nar_hash}.nar");
    let out = client
        .get_object()
        .bucket("open")
        .key(&key)
        .if_match(&etag)
        .range("bytes=8-15")
        .send()
        .await
        .unwrap();
    assert!(out.body.collect().await.unwrap().into_bytes()[..] == nar[8..16]);
    let stale = client.get_object().bucket("open").key(&key).if_match("\"00\"").send().await;
    assert_eq!(failure(stale), (412, "PreconditionFailed".into()));
}

async fn listings_merge_and_paginate(backend: DynBackend) -> TestResult {
    let gw = start(backend).await;
    gw.import("nix", false, &["cache-bzip2"]).await;
    let client = gw.client();
    let plain =
        ["log/abc-hello.drv", "log/def-app.drv", "debuginfo/0123.debug", "a key with spaces ü", "zzz"];
    for key in plain {
        client
            .put_object()
            .bucket("nix")
            .key(key)
            .body(ByteStream::from_static(b"plain"))
            .send()
            .await
            .unwrap();
    }
    let mut expected: Vec<String> = vec!["nix-cache-info".into()];
    expected.extend(plain.iter().map(|k| k.to_string()));
    for (store_path, nar_hash, _) in fixture_nars() {
        let base = store_path.strip_prefix("/nix/store/").unwrap();
        expected.push(format!("{}.narinfo", &base[..32]));
        expected.push(format!("{}.ls", &base[..32]));
        expected.push(format!("store/{base}.nar"));
        expected.push(format!("nar/{nar_hash}.nar"));
    }
    expected.sort();

    // One page: every key, in byte order, sizes and ETags as HEAD gives them.
    let page = client.list_objects_v2().bucket("nix").send().await.unwrap();
    let keys: Vec<String> = page.contents().iter().map(|o| o.key().unwrap().to_owned()).collect();
    assert_eq!(keys, expected);
    assert_eq!(page.is_truncated(), Some(false));
    for object in page.contents() {
        let head = client.head_object().bucket("nix").key(object.key().unwrap()).send().await.unwrap();
        assert_eq!(head.content_length(), object.size(), "{:?}", object.key());
        assert_eq!(head.e_tag(), object.e_tag(), "{:?}", object.key());
        assert_eq!(head.last_modified(), object.last_modified(), "{:?}", object.key());
    }

    // V2 pages of 3, with and without delimiter; the SDK's paginator follows the tokens.
    for max_keys in [1, 3, 7] {
        let mut pages = client.list_objects_v2().bucket("nix").max_keys(max_keys).into_paginator().send();
        let mut seen = vec![];
        while let Some(page) = pages.next().await {
            let page = page.unwrap();
            assert!(page.contents().len() <= max_keys as usize);
            seen.extend(page.contents().iter().map(|o| o.key().unwrap().to_owned()));
        }
        assert_eq!(seen, expected, "pages of {max_keys}");
    }
    let top: Vec<&String> = expected.iter().filter(|k| !k.contains('/')).collect();
    let prefixes = ["debuginfo/", "log/", "nar/", "store/"];
    for max_keys in [2, 1000] {
        let (mut keys, mut common) = (vec![], vec![]);
        let mut token = None;
        loop {
            let page = client
                .list_objects_v2()
                .bucket("nix")
                .delimiter("/")
                .max_keys(max_keys)
                .set_continuation_token(token.clone())
                .send()
                .await
                .unwrap();
            keys.extend(page.contents().iter().map(|o| o.key().unwrap().to_owned()));
            common.extend(page.common_prefixes().iter().map(|p| p.prefix().unwrap().to_owned()));
            match page.next_continuation_token() {
                Some(t) => token = Some(t.to_owned()),
                None => break,
            }
        }
        assert_eq!(keys.iter().collect::<Vec<_>>(), top, "delimiter, pages of {max_keys}");
        assert_eq!(common, prefixes, "delimiter, pages of {max_keys}");
    }
    let nar_page = client.list_objects_v2().bucket("nix").prefix("nar/").send().await.unwrap();
    assert_eq!(nar_page.contents().len(), fixture_nars().len());
    let after = client.list_objects_v2().bucket("nix").start_after("nix-cache-info").send().await.unwrap();
    let after_keys: Vec<String> = after.contents().iter().map(|o| o.key().unwrap().to_owned()).collect();
    assert_eq!(
        after_keys,
        expected.iter().filter(|k| k.as_str() > "nix-cache-info").cloned().collect::<Vec<_>>()
    );

    // V1, as rclone lists: NextMarker on every truncated page.
    let (mut seen, mut marker) = (vec![], None::<String>);
    loop {
        let page =
            client.list_objects().bucket("nix").max_keys(4).set_marker(marker.clone()).send().await.unwrap();
        seen.extend(page.contents().iter().map(|o| o.key().unwrap().to_owned()));
        if page.is_truncated() != Some(true) {
            break;
        }
        marker = Some(page.next_marker().expect("NextMarker on a truncated V1 page").to_owned());
    }
    assert_eq!(seen, expected);

    // `encoding-type=url`, as the aws cli asks: the raw XML carries encoded keys.
    gw.import("pub", true, &[]).await;
    let public = gw.client();
    public
        .put_object()
        .bucket("pub")
        .key("a key with spaces ü")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap();
    let reply = gw.http("GET", "/pub?list-type=2&encoding-type=url", &[]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("<Key>a%20key%20with%20spaces%20%C3%BC</Key>"), "{}", reply.text());
    let reply = gw.http("GET", "/pub?list-type=2", &[]).await;
    assert!(reply.text().contains("<Key>a key with spaces ü</Key>"), "{}", reply.text());
}

async fn plain_objects_keep_their_metadata(backend: DynBackend) -> TestResult {
    let gw = start(backend).await;
    gw.import("nix", false, &[]).await;
    let client = gw.client();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let put = client
        .put_object()
        .bucket("nix")
        .key("log/x-hello.drv")
        .body(ByteStream::from(data.clone()))
        .content_type("text/plain")
        .content_encoding("bzip2")
        .cache_control("max-age=60")
        .content_disposition("attachment")
        .metadata("origin", "tests")
        .metadata("build", "42")
        .send()
        .await
        .unwrap();
    assert_eq!(put.e_tag(), Some(format!("\"{}\"", md5_hex(&data)).as_str()));
    let out = client.get_object().bucket("nix").key("log/x-hello.drv").send().await.unwrap();
    assert_eq!(out.content_type(), Some("text/plain"));
    assert_eq!(out.content_encoding(), Some("bzip2"));
    assert_eq!(out.cache_control(), Some("max-age=60"));
    assert_eq!(out.content_disposition(), Some("attachment"));
    let metadata = out.metadata().cloned().unwrap_or_default();
    let expected: HashMap<String, String> = [("origin", "tests"), ("build", "42")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(metadata, expected);
    assert!(out.body.collect().await.unwrap().into_bytes() == data);
    let head = client.head_object().bucket("nix").key("log/x-hello.drv").send().await.unwrap();
    assert_eq!(head.content_length(), Some(data.len() as i64));
    assert_eq!(head.content_type(), Some("text/plain"));
    let ranged = client
        .get_object()
        .bucket("nix")
        .key("log/x-hello.drv")
        .range("bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert!(ranged.body.collect().await.unwrap().into_bytes()[..] == data[1000..2000]);

    // A body streamed from a file (the SDK sends it aws-chunked, with a trailing checksum), larger
    // than one backend part: stored whole, the PUT's ETag is what HEAD and LIST show.
    let big: Vec<u8> = (0..9_500_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &big).unwrap();
    let put = client
        .put_object()
        .bucket("nix")
        .key("debuginfo/big")
        .body(ByteStream::from_path(file.path()).await.unwrap())
        .send()
        .await
        .unwrap();
    assert!(get_bytes(&client, "nix", "debuginfo/big").await == big);
    let head = client.head_object().bucket("nix").key("debuginfo/big").send().await.unwrap();
    assert_eq!(head.e_tag(), put.e_tag());
    client.delete_object().bucket("nix").key("debuginfo/big").send().await.unwrap();

    // Content-MD5 is checked: a wrong one is BadDigest, and nothing is written.
    let wrong = client
        .put_object()
        .bucket("nix")
        .key("log/bad")
        .body(ByteStream::from_static(b"data"))
        .content_md5("1B2M2Y8AsgTpgAmY7PhCfg==")
        .send()
        .await;
    assert_eq!(failure(wrong), (400, "BadDigest".into()));
    assert_eq!(failure(client.head_object().bucket("nix").key("log/bad").send().await).0, 404);

    // Too long for the store's prefixes.
    let long = format!("log/{}", "k".repeat(1010));
    let too_long =
        client.put_object().bucket("nix").key(&long).body(ByteStream::from_static(b"x")).send().await;
    assert_eq!(failure(too_long), (400, "KeyTooLongError".into()));

    // A nix-cache-info that is not one is refused (uploads have their own suite); plain deletes work.
    let info = client
        .put_object()
        .bucket("nix")
        .key("nix-cache-info")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert_eq!(failure(info), (400, "InvalidRequest".into()));
    client.delete_object().bucket("nix").key("log/x-hello.drv").send().await.unwrap();
    assert_eq!(
        failure(client.get_object().bucket("nix").key("log/x-hello.drv").send().await),
        (404, "NoSuchKey".into())
    );
    client.delete_object().bucket("nix").key("log/never-there").send().await.unwrap();

    for key in ["a", "b", "c"] {
        client.put_object().bucket("nix").key(key).body(ByteStream::from_static(b"1")).send().await.unwrap();
    }
    let ids = |keys: &[&str]| -> Vec<ObjectIdentifier> {
        keys.iter().map(|k| ObjectIdentifier::builder().key(*k).build().unwrap()).collect()
    };
    let verbose = client
        .delete_objects()
        .bucket("nix")
        .delete(Delete::builder().set_objects(Some(ids(&["a", "b"]))).build().unwrap())
        .send()
        .await
        .unwrap();
    let deleted: Vec<&str> = verbose.deleted().iter().filter_map(|d| d.key()).collect();
    assert_eq!(deleted, ["a", "b"]);
    let quiet = client
        .delete_objects()
        .bucket("nix")
        .delete(Delete::builder().set_objects(Some(ids(&["c", "nope"]))).quiet(true).build().unwrap())
        .send()
        .await
        .unwrap();
    assert!(quiet.deleted().is_empty() && quiet.errors().is_empty());
    let left = client.list_objects_v2().bucket("nix").send().await.unwrap();
    let left: Vec<&str> = left.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(left, ["nix-cache-info"]);
}

async fn bucket_lifecycle(backend: DynBackend) -> TestResult {
    let gw = start(backend).await;
    let client = gw.client();
    assert_eq!(
        failure(client.create_bucket().bucket("Bad_Name").send().await),
        (400, "InvalidBucketName".into())
    );
    client.create_bucket().bucket("cache").send().await.unwrap();
    assert_eq!(
        failure(client.create_bucket().bucket("cache").send().await),
        (409, "BucketAlreadyOwnedByYou".into())
    );
    client.create_bucket().bucket("public").acl(BucketCannedAcl::PublicRead).send().await.unwrap();
    let names = bucket_names(&client).await;
    assert_eq!(names, ["cache", "public"]);
    client.head_bucket().bucket("cache").send().await.unwrap();
    client.get_bucket_location().bucket("cache").send().await.unwrap();
    assert_eq!(failure(client.head_bucket().bucket("nope").send().await).0, 404);

    // Anonymous reads follow the bucket's ACL.
    assert_eq!(gw.http("GET", "/public/nix-cache-info", &[]).await.status, 200);
    assert_eq!(gw.http("GET", "/cache/nix-cache-info", &[]).await.status, 403);
    let acl = client.get_bucket_acl().bucket("public").send().await.unwrap();
    assert!(
        acl.grants()
            .iter()
            .any(|g| g.grantee().and_then(|e| e.uri()).is_some_and(|u| u.ends_with("AllUsers")))
    );
    client.put_bucket_acl().bucket("public").acl(BucketCannedAcl::Private).send().await.unwrap();
    let acl = client.get_bucket_acl().bucket("public").send().await.unwrap();
    assert!(!acl.grants().iter().any(|g| g.grantee().and_then(|e| e.uri()).is_some()));
    assert_eq!(gw.http("GET", "/public/nix-cache-info", &[]).await.status, 403);
    client.put_bucket_acl().bucket("cache").acl(BucketCannedAcl::PublicRead).send().await.unwrap();
    assert_eq!(gw.http("GET", "/cache/nix-cache-info", &[]).await.status, 200);

    // A bucket holding a store path or a plain object is not empty; nix-cache-info does not count.
    gw.import("full", false, &["cache-none"]).await;
    assert_eq!(failure(client.delete_bucket().bucket("full").send().await), (409, "BucketNotEmpty".into()));
    client
        .put_object()
        .bucket("cache")
        .key("log/x")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap();
    assert_eq!(failure(client.delete_bucket().bucket("cache").send().await), (409, "BucketNotEmpty".into()));
    client.delete_object().bucket("cache").key("log/x").send().await.unwrap();
    client.delete_bucket().bucket("cache").send().await.unwrap();
    client.delete_bucket().bucket("public").send().await.unwrap();
    assert_eq!(failure(client.head_bucket().bucket("cache").send().await).0, 404);
    assert_eq!(failure(client.delete_bucket().bucket("cache").send().await), (404, "NoSuchBucket".into()));
    let names = bucket_names(&client).await;
    assert_eq!(names, ["full"]);
    // A bucket created again is new and empty.
    client.create_bucket().bucket("cache").send().await.unwrap();
    let listed = client.list_objects_v2().bucket("cache").send().await.unwrap();
    assert_eq!(listed.contents().len(), 1);
}

async fn auth_signed_anonymous_basic_presigned(backend: DynBackend) -> TestResult {
    let gw = start(backend).await;
    gw.import("private", false, &["cache-none"]).await;
    let (_, nar_hash, nar) = fixture_nars().remove(0);
    let key = format!("nar/{nar_hash}.nar");
    let path = format!("/private/{key}");

    let reply = gw.http("GET", &path, &[]).await;
    assert_eq!(reply.status, 403);
    assert!(reply.text().contains("<Code>AccessDenied</Code>"), "{}", reply.text());
    assert!(reply.header("x-amz-request-id").is_some());
    assert_eq!(gw.http("GET", "/private?list-type=2", &[]).await.status, 403);
    assert_eq!(gw.http("GET", "/", &[]).await.status, 403);
    assert_eq!(gw.http("PUT", "/private/log/x", &[("Content-Length", "0")]).await.status, 403);

    // A wrong secret, an unknown key.
    let wrong = gw.client_with(&gw.keys.access_key_id, "not-the-secret-at-all");
    assert_eq!(
        failure(wrong.get_object().bucket("private").key(&key).send().await),
        (403, "SignatureDoesNotMatch".into())
    );
    let unknown = gw.client_with("NGUNKNOWNKEY00000000", "whatever-secret");
    assert_eq!(failure(unknown.head_bucket().bucket("private").send().await).0, 403);

    // HTTP Basic, as Nix sends it from a netrc, on reads and on every request.
    use base64::Engine;
    let basic = |id: &str, secret: &str| {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")))
    };
    let good = basic(&gw.keys.access_key_id, &gw.keys.secret_access_key);
    let reply = gw.http("GET", &path, &[("Authorization", &good)]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body == nar);
    assert_eq!(gw.http("GET", "/private/nix-cache-info", &[("Authorization", &good)]).await.status, 200);
    let bad = basic(&gw.keys.access_key_id, "wrong");
    assert_eq!(gw.http("GET", &path, &[("Authorization", &bad)]).await.status, 403);
    let twice = gw.http("GET", &path, &[("Authorization", &good), ("Authorization", &good)]).await;
    assert_eq!(twice.status, 400);

    // A presigned GET, fetched by a client that knows nothing of S3.
    let presigned = gw
        .client()
        .get_object()
        .bucket("private")
        .key(&key)
        .presigned(aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    let uri = presigned.uri().strip_prefix(&gw.endpoint).unwrap().to_owned();
    let reply = gw.http("GET", &uri, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.body == nar);
    // The same URL with one hex digit of its signature changed.
    let at = uri.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let flipped = if &uri[at..at + 1] == "0" { "1" } else { "0" };
    let tampered = format!("{}{flipped}{}", &uri[..at], &uri[at + 1..]);
    assert_eq!(gw.http("GET", &tampered, &[]).await.status, 403);

    // POST form uploads are refused before their bodies are read; /health answers.
    let post = gw
        .http(
            "POST",
            "/private",
            &[("Content-Type", "multipart/form-data; boundary=x"), ("Content-Length", "0")],
        )
        .await;
    assert_eq!(post.status, 501);
    let health = gw.http("GET", "/health", &[]).await;
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
}

/// Two gateways over one Garage bucket accept the same key pairs and see the same buckets.
#[tokio::test]
async fn two_gateways_on_one_garage_agree() {
    let backend = common::garage_backend().await;
    let first = start(backend.clone()).await;
    let second = start(backend).await;
    first.client().create_bucket().bucket("shared").send().await.unwrap();
    // The second gateway accepts the first one's key pair, and the other way round.
    let via_second = second.client_with(&first.keys.access_key_id, &first.keys.secret_access_key);
    via_second.head_bucket().bucket("shared").send().await.unwrap();
    via_second
        .put_object()
        .bucket("shared")
        .key("log/x")
        .body(ByteStream::from_static(b"hi"))
        .send()
        .await
        .unwrap();
    let via_first = first.client_with(&second.keys.access_key_id, &second.keys.secret_access_key);
    assert_eq!(get_bytes(&via_first, "shared", "log/x").await, b"hi");
    let names = bucket_names(&via_first).await;
    assert_eq!(names, ["shared"]);
}

/// Counted promises: a cold NAR GET reads the bucket record, the NAR's listing entry and its
/// record (at once), then one GET per chunk; a listing page is one LIST per stream.
#[tokio::test]
async fn requests_per_read_are_counted() {
    use nargate::backend::Op;
    use nargate::backend::counting::CountingBackend;
    use std::sync::Arc;
    let (_dir, fs) = common::fs_backend();
    let counting = Arc::new(CountingBackend::new(fs));
    let backend: DynBackend = counting.clone();
    let gw = start(backend.clone()).await;
    gw.import("nix", false, &["cache-none"]).await;
    let client = gw.client();
    let (_, nar_hash, nar) = fixture_nars().into_iter().max_by_key(|n| n.2.len()).unwrap();
    let chunks = common::gateway::chunk_count(&backend, &nar_hash).await;
    counting.reset();
    assert!(get_bytes(&client, "nix", &format!("nar/{nar_hash}.nar")).await == nar);
    let counts = counting.counts();
    assert_eq!(counting.count_with_prefix(Op::List, "caches/nix/index/"), 1, "{:?}", counting.requests());
    assert_eq!(counting.gets_with_prefix("nars/"), 1, "{:?}", counting.requests());
    assert_eq!(counting.gets_with_prefix("chunks/"), chunks as u64, "{:?}", counting.requests());
    assert_eq!(counting.gets_with_prefix("caches/nix/bucket"), 1, "{:?}", counting.requests());
    assert_eq!(
        counts.total(),
        3 + chunks as u64 + counting.gets_with_prefix("credentials/"),
        "{:?}",
        counting.requests()
    );

    // Warm: the same GET again costs the chunks at most (they are cached too).
    counting.reset();
    assert!(get_bytes(&client, "nix", &format!("nar/{nar_hash}.nar")).await == nar);
    assert_eq!(counting.count_with_prefix(Op::List, ""), 0, "{:?}", counting.requests());
    assert_eq!(counting.gets_with_prefix("nars/"), 0, "{:?}", counting.requests());

    // A listing page: one LIST of plain objects and one of the index.
    counting.reset();
    client.list_objects_v2().bucket("nix").max_keys(5).send().await.unwrap();
    assert_eq!(counting.count_with_prefix(Op::List, ""), 2, "{:?}", counting.requests());
    counting.reset();
    client.list_objects_v2().bucket("nix").delimiter("/").send().await.unwrap();
    // With a delimiter, the index stream jumps past each of its common prefixes (`nar/`,
    // `store/`) with one more LIST, never walking the keys under them.
    assert_eq!(counting.count_with_prefix(Op::List, "caches/nix/raw/"), 1, "{:?}", counting.requests());
    assert_eq!(counting.count_with_prefix(Op::List, "caches/nix/index/"), 1 + 2, "{:?}", counting.requests());
}

/// Stored data that fails its checks is never served as bytes: a damaged NAR record is a 500
/// before the status line; a damaged chunk, found after it, cuts the transfer short.
#[tokio::test]
async fn damaged_data_is_an_error_never_wrong_bytes() {
    use nargate::backend::fault::FaultyBackend;
    use std::sync::Arc;
    let (_dir, fs) = common::fs_backend();
    let faulty = Arc::new(FaultyBackend::new(fs));
    let gw = start(faulty.clone() as DynBackend).await;
    gw.import("open", true, &["cache-none"]).await;
    let (_, nar_hash, nar) = fixture_nars().into_iter().max_by_key(|n| n.2.len()).unwrap();
    let path = format!("/open/nar/{nar_hash}.nar");

    faulty.corrupt_gets("nars/");
    let reply = gw.http("GET", &path, &[]).await;
    assert_eq!(reply.status, 500, "{}", reply.text());
    assert!(reply.text().contains("<Code>InternalError</Code>"));
    faulty.clear();

    faulty.corrupt_gets("chunks/");
    let reply = gw.http("GET", &path, &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-length"), Some(nar.len().to_string().as_str()));
    assert!(reply.body.len() < nar.len(), "a damaged chunk must cut the transfer short");
    assert!(nar.starts_with(&reply.body), "what was sent is the NAR's start");
    faulty.clear();
    let reply = gw.http("GET", &path, &[]).await;
    assert!(reply.body == nar);
}

/// Virtual-host addressing: `bucket.<domain>` names the bucket, case-insensitively and whatever
/// the port; any other host (an IP, `localhost`, the domain itself) is path-style.
#[tokio::test]
async fn virtual_hosts_and_path_style() {
    let (_dir, backend) = common::fs_backend();
    let options = GatewayOptions { domains: vec!["s3.test".into()], ..common::gateway::test_options() };
    let gw = common::gateway::start_with(backend, options).await;
    gw.import("open", true, &["cache-none"]).await;
    let expected = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n";
    for host in ["open.s3.test", "OPEN.S3.Test:9000", "open.s3.test:80"] {
        let reply = gw.http("GET", "/nix-cache-info", &[("Host", host)]).await;
        assert_eq!((reply.status, reply.text().as_str()), (200, expected), "Host: {host}");
    }
    for host in ["localhost:9000", "127.0.0.1", "s3.test"] {
        let reply = gw.http("GET", "/open/nix-cache-info", &[("Host", host)]).await;
        assert_eq!((reply.status, reply.text().as_str()), (200, expected), "Host: {host}");
    }
    let listing = gw.http("GET", "/?list-type=2&prefix=nar/", &[("Host", "open.s3.test")]).await;
    assert_eq!(listing.status, 200);
    assert_eq!(listing.text().matches("<Key>nar/").count(), fixture_nars().len(), "{}", listing.text());
}

/// A bucket with a signing key serves narinfos with its own signature added (which Nix's format
/// accepts: `tests/nix_accepts.rs`), and its listing follows when the key changes.
#[tokio::test]
async fn signed_buckets_sign_narinfos_and_list_them_as_served() {
    use nargate::nix::narinfo::NarInfo;
    use nargate::nix::signing::{SecretKey, verify_narinfo};
    let (_dir, backend) = common::fs_backend();
    let gw = start(backend).await;
    gw.import("signed", false, &["cache-none"]).await;
    let cache = gw.cache("signed");
    let key = SecretKey::generate("signed-1").unwrap();
    let mut settings = cache.settings().await.unwrap().unwrap();
    settings.signing_key = Some(key.to_string());
    cache.set_settings(&settings).await.unwrap();
    assert_eq!(cache.refresh_narinfo_entries().await.unwrap(), 4);
    let client = gw.client();
    let listed = client.list_objects_v2().bucket("signed").send().await.unwrap();
    for object in listed.contents().iter().filter(|o| o.key().unwrap().ends_with(".narinfo")) {
        let out = client.get_object().bucket("signed").key(object.key().unwrap()).send().await.unwrap();
        assert_eq!(out.e_tag(), object.e_tag(), "the listing shows the signed text's ETag");
        let text = String::from_utf8(out.body.collect().await.unwrap().into_bytes().to_vec()).unwrap();
        let info = NarInfo::parse(&text).unwrap();
        assert_eq!(info.sigs.len(), 2, "the uploader's signature and the bucket's: {text}");
        assert!(verify_narinfo(&info, &[key.to_public()]), "{text}");
    }
    // Without a refresh, a GET finds the stale entry and replaces it.
    settings.signing_key = Some(SecretKey::generate("signed-2").unwrap().to_string());
    cache.set_settings(&settings).await.unwrap();
    let narinfo =
        listed.contents().iter().find(|o| o.key().unwrap().ends_with(".narinfo")).unwrap().key().unwrap();
    let out = client.get_object().bucket("signed").key(narinfo).send().await.unwrap();
    let etag = out.e_tag().unwrap().to_owned();
    let relisted = client.list_objects_v2().bucket("signed").send().await.unwrap();
    let entry = relisted.contents().iter().find(|o| o.key() == Some(narinfo)).unwrap();
    assert_eq!(entry.e_tag(), Some(etag.as_str()));
    assert_eq!(relisted.contents().len(), listed.contents().len(), "the stale entry is gone");
}

/// A plain object whose stored bytes no longer match their MD5 is never served whole: the
/// transfer is cut short before its last bytes.
#[tokio::test]
async fn damaged_plain_objects_are_cut_short() {
    let (dir, backend) = common::fs_backend();
    let gw = start(backend).await;
    gw.import("open", true, &[]).await;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    gw.client()
        .put_object()
        .bucket("open")
        .key("log/x")
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .unwrap();
    // The fs backend's file for `caches/open/raw/log/x` (see src/backend/fs.rs: escaped names).
    let file = dir.path().join("bucket/caches.d/open.d/raw.d/log.d/x.o");
    let mut stored = std::fs::read(&file).expect("the object's file");
    let last = stored.len() - 10;
    stored[last] ^= 0xff;
    std::fs::write(&file, &stored).unwrap();
    // The body fails before its (only, held back) piece: the connection closes, with or without
    // the response head.
    let reply = gw.http("GET", "/open/log/x", &[]).await;
    assert!(matches!(reply.status, 0 | 200), "{}", reply.status);
    assert!(reply.body.len() < data.len(), "a damaged object must not arrive whole");
    // A range cannot be checked against the whole object's MD5; its bytes pass through.
    let ranged = gw.http("GET", "/open/log/x", &[("Range", "bytes=0-99")]).await;
    assert_eq!((ranged.status, &ranged.body[..]), (206, &data[..100]));
}
