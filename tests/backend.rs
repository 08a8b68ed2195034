//! The backend suite: the same checks, run against every backend — the fs backend in a temporary
//! directory, the in-memory backend of simulations, and the S3 backend against a real Garage
//! server — so that they behave alike.
//! Backend-specific checks follow in `fs_only` and `s3_only`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use nargate::backend::{
    Attributes, BackendError, ByteStream, DynBackend, LateMetadata, ListPage, ListRequest, MAX_KEY_LEN,
    ObjectMeta, PutOptions, get_bytes,
};

type TestResult = Result<(), BackendError>;

/// Runs each check against a fresh fs backend and a fresh Garage bucket.
macro_rules! suite {
    ($($check:ident),* $(,)?) => {
        mod fs {
            $(
                #[tokio::test]
                async fn $check() -> super::TestResult {
                    let (_dir, backend) = crate::common::fs_backend();
                    super::$check(backend).await
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test]
                async fn $check() -> super::TestResult {
                    let clock: nargate::backend::memory::Clock = std::sync::Arc::new(std::time::SystemTime::now);
                    let backend: nargate::backend::DynBackend = std::sync::Arc::new(nargate::backend::memory::MemoryBackend::new(clock));
                    super::$check(backend).await
                }
            )*
        }
        mod garage {
            $(
                #[tokio::test]
                async fn $check() -> super::TestResult {
                    let backend = crate::common::garage_backend().await;
                    super::$check(backend).await
                }
            )*
        }
    };
}

suite!(
    put_get_head,
    empty_object,
    ranged_get,
    overwrite,
    not_found,
    delete_is_idempotent,
    nested_keys_coexist,
    unusual_keys,
    key_length_limits,
    long_components,
    list_byte_order,
    list_prefix,
    list_delimiter,
    list_delimiter_pages,
    list_start_after,
    list_pagination,
    list_metadata_matches_head,
    empty_bucket,
    large_object_streams,
    attributes_round_trip,
    put_stream_small,
    put_stream_large,
    put_stream_digest_mismatch,
    put_stream_body_error,
    late_metadata_is_stored,
);

// ---------------------------------------------------------------------------------------------
// Helpers

/// The MD5 of `data` in hex, as S3 ETags are.
fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

/// `len` pseudo-random bytes determined by `seed`.
fn data(len: usize, seed: u8) -> Bytes {
    let mut out = vec![0; len];
    blake3::Hasher::new().update(&[seed]).finalize_xof().fill(&mut out);
    out.into()
}

/// Whether `time` is within `slack` of now.
fn near_now(time: SystemTime, slack: Duration) -> bool {
    let now = SystemTime::now();
    now.duration_since(time).or_else(|e| Ok::<_, ()>(e.duration())).is_ok_and(|d| d <= slack)
}

/// The distance between two times.
fn distance(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b).unwrap_or_else(|e| e.duration())
}

/// Puts every key, with its own key as its contents, a few at a time.
async fn put_keys(backend: &DynBackend, keys: impl IntoIterator<Item = String>) -> TestResult {
    futures::stream::iter(keys)
        .map(|key| async move { backend.put(&key, Bytes::from(key.clone().into_bytes())).await })
        .buffer_unordered(16)
        .try_collect::<Vec<ObjectMeta>>()
        .await?;
    Ok(())
}

/// Every page of a listing, following continuation tokens.
async fn list_pages(backend: &DynBackend, request: ListRequest) -> Result<Vec<ListPage>, BackendError> {
    let mut pages = Vec::new();
    let mut request = request;
    loop {
        let page = backend.list(&request).await?;
        let token = page.next_continuation_token.clone();
        pages.push(page);
        match token {
            Some(token) => request.continuation_token = Some(token),
            None => return Ok(pages),
        }
        assert!(pages.len() < 10_000, "the listing does not end");
    }
}

/// The keys and common prefixes of a whole listing.
async fn list_all(
    backend: &DynBackend,
    request: ListRequest,
) -> Result<(Vec<String>, Vec<String>), BackendError> {
    let pages = list_pages(backend, request).await?;
    let keys = pages.iter().flat_map(|p| p.objects.iter().map(|o| o.key.clone())).collect();
    let prefixes = pages.iter().flat_map(|p| p.common_prefixes.iter().cloned()).collect();
    Ok((keys, prefixes))
}

/// The keys of a whole listing under `prefix`, without a delimiter.
async fn keys_under(backend: &DynBackend, prefix: &str) -> Result<Vec<String>, BackendError> {
    Ok(list_all(backend, ListRequest { prefix: prefix.into(), ..Default::default() }).await?.0)
}

/// What a listing of `keys` should return: its objects and its common prefixes.
fn model(keys: &[String], prefix: &str, delimiter: Option<&str>) -> (Vec<String>, Vec<String>) {
    let mut objects = Vec::new();
    let mut prefixes = BTreeSet::new();
    for key in sorted(keys).into_iter().filter(|k| k.starts_with(prefix)) {
        let rest = &key[prefix.len()..];
        if let Some(end) = delimiter.and_then(|d| rest.find(d).map(|i| prefix.len() + i + d.len())) {
            prefixes.insert(key[..end].to_owned());
        } else {
            objects.push(key);
        }
    }
    (objects, prefixes.into_iter().collect())
}

/// `keys`, sorted in byte order.
fn sorted(keys: &[String]) -> Vec<String> {
    let set: BTreeSet<&String> = keys.iter().collect();
    set.into_iter().cloned().collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn is_not_found<T: std::fmt::Debug>(result: Result<T, BackendError>) -> bool {
    matches!(result, Err(BackendError::NotFound { .. }))
}

fn is_invalid_key<T: std::fmt::Debug>(result: Result<T, BackendError>) -> bool {
    matches!(result, Err(BackendError::InvalidKey { .. }))
}

/// The MD5 of `data`, as a client sends it in Content-MD5.
fn md5_of(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

/// `body` as a stream of pieces of `piece` bytes (the last one shorter).
fn stream_of(body: &Bytes, piece: usize) -> ByteStream {
    let pieces: Vec<Result<Bytes, BackendError>> =
        (0..body.len()).step_by(piece).map(|at| Ok(body.slice(at..body.len().min(at + piece)))).collect();
    futures::stream::iter(pieces).boxed()
}

/// The first `good` bytes of `body` in pieces of `piece` bytes, then a failure, as when the
/// client goes away.
fn failing_stream(body: &Bytes, piece: usize, good: usize) -> ByteStream {
    let failure = BackendError::Body { key: "k".into(), message: "the client went away".into() };
    stream_of(&body.slice(..good), piece).chain(futures::stream::iter([Err(failure)])).boxed()
}

/// Attributes with every field set and several user metadata entries.
fn full_attributes() -> Attributes {
    Attributes {
        content_type: Some("text/x-nix-narinfo; charset=utf-8".into()),
        content_encoding: Some("zstd".into()),
        cache_control: Some("public, max-age=3600".into()),
        content_disposition: Some("attachment; filename=\"build.log\"".into()),
        content_language: Some("en-GB".into()),
        metadata: [("origin", "nix copy"), ("build-id", "42"), ("x_y.z", "A value, with: punctuation")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    }
}

/// Whether `etag` is a multipart upload's (`<hex MD5 of the parts' MD5s>-<parts>`) of `parts`.
fn is_multipart_etag(etag: &str, parts: usize) -> bool {
    etag.split_once('-').is_some_and(|(md5, n)| md5.len() == 32 && n == parts.to_string())
}

/// Checks that `key` holds `body`, that GET, HEAD, stat and LIST agree on its metadata, and
/// returns its ETag.
async fn check_object(backend: &DynBackend, key: &str, body: &Bytes) -> Result<String, BackendError> {
    let head = backend.head(key).await?;
    let (stat, _) = backend.stat(key).await?;
    let listed = backend.list(&ListRequest { prefix: key.into(), ..Default::default() }).await?;
    let listed = listed.objects.into_iter().find(|o| o.key == key).expect("listed");
    let got = backend.get(key, None).await?;
    assert_eq!(head.size, body.len() as u64);
    for meta in [&stat, &listed, &got.meta] {
        assert_eq!((meta.size, &meta.etag), (head.size, &head.etag), "{key}");
    }
    assert!(got.bytes().await? == body, "{key}: the body reads back intact");
    Ok(head.etag)
}

// ---------------------------------------------------------------------------------------------
// Objects

async fn put_get_head(backend: DynBackend) -> TestResult {
    let body = Bytes::from_static(b"hello, binary cache");
    let put = backend.put("dir/hello.txt", body.clone()).await?;
    assert_eq!(put.key, "dir/hello.txt");
    assert_eq!(put.size, body.len() as u64);
    assert_eq!(put.etag, md5_hex(&body));
    assert!(near_now(put.last_modified, Duration::from_secs(60)), "{:?}", put.last_modified);

    let head = backend.head("dir/hello.txt").await?;
    assert_eq!(
        (head.key.as_str(), head.size, head.etag.as_str()),
        ("dir/hello.txt", put.size, put.etag.as_str())
    );
    assert!(distance(head.last_modified, put.last_modified) <= Duration::from_secs(2));

    let got = backend.get("dir/hello.txt", None).await?;
    assert_eq!(got.meta.size, head.size);
    assert_eq!(got.meta.etag, head.etag);
    assert_eq!(got.range, 0..body.len() as u64);
    assert_eq!(got.bytes().await?, body);
    assert_eq!(get_bytes(&*backend, "dir/hello.txt").await?, body);
    Ok(())
}

async fn empty_object(backend: DynBackend) -> TestResult {
    let put = backend.put("empty", Bytes::new()).await?;
    assert_eq!((put.size, put.etag.as_str()), (0, "d41d8cd98f00b204e9800998ecf8427e"));
    let got = backend.get("empty", None).await?;
    assert_eq!(got.range, 0..0);
    assert_eq!(got.bytes().await?, "");
    assert_eq!(backend.head("empty").await?.size, 0);
    // Any range of an empty object starts at its end.
    assert!(matches!(
        backend.get("empty", Some(0..1)).await,
        Err(BackendError::InvalidRange { size: 0, .. })
    ));
    Ok(())
}

async fn ranged_get(backend: DynBackend) -> TestResult {
    let body = data(100, 1);
    backend.put("r", body.clone()).await?;

    let get = |range: std::ops::Range<u64>| {
        let backend = backend.clone();
        async move { backend.get("r", Some(range)).await }
    };
    let got = get(10..20).await?;
    assert_eq!((got.range.clone(), got.meta.size), (10..20, 100));
    assert_eq!(got.bytes().await?, body.slice(10..20));

    let got = get(0..1).await?;
    assert_eq!(got.bytes().await?, body.slice(0..1));
    let got = get(99..100).await?;
    assert_eq!(got.bytes().await?, body.slice(99..100));

    // The end is clamped to the object's end.
    let got = get(90..1000).await?;
    assert_eq!(got.range, 90..100);
    assert_eq!(got.bytes().await?, body.slice(90..));
    let got = get(0..u64::MAX).await?;
    assert_eq!(got.bytes().await?, body);

    // A start at or beyond the end, or an empty range, is not satisfiable.
    for range in [100..101, 150..160, 5..5, u64::MAX - 1..u64::MAX] {
        match get(range.clone()).await {
            Err(BackendError::InvalidRange { key, start, end, size }) => {
                assert_eq!((key.as_str(), start..end, size), ("r", range, 100));
            }
            other => panic!("{range:?}: {other:?}"),
        }
    }
    Ok(())
}

async fn overwrite(backend: DynBackend) -> TestResult {
    backend.put("k", data(1000, 1)).await?;
    let second = data(10, 2);
    let put = backend.put("k", second.clone()).await?;
    assert_eq!(put.etag, md5_hex(&second));
    assert_eq!(get_bytes(&*backend, "k").await?, second);
    let head = backend.head("k").await?;
    assert_eq!((head.size, head.etag), (10, md5_hex(&second)));
    assert_eq!(keys_under(&backend, "").await?, ["k"]);
    Ok(())
}

async fn not_found(backend: DynBackend) -> TestResult {
    assert!(is_not_found(backend.get("missing", None).await));
    assert!(is_not_found(backend.get("missing", Some(0..10)).await));
    assert!(is_not_found(backend.head("missing").await));
    match backend.head("dir/missing").await {
        Err(BackendError::NotFound { key }) => assert_eq!(key, "dir/missing"),
        other => panic!("{other:?}"),
    }
    // Keys next to existing ones: a key's prefix is not a key, nor is a key's extension.
    backend.put("a/b", Bytes::from_static(b"x")).await?;
    for key in ["a", "a/", "a/b/c", "a/bc", "a/b/"] {
        assert!(is_not_found(backend.head(key).await), "{key}");
        assert!(is_not_found(backend.get(key, None).await), "{key}");
    }
    Ok(())
}

async fn delete_is_idempotent(backend: DynBackend) -> TestResult {
    backend.put("x/y/z", Bytes::from_static(b"1")).await?;
    backend.put("x/w", Bytes::from_static(b"2")).await?;
    backend.delete("x/y/z").await?;
    assert!(is_not_found(backend.head("x/y/z").await));
    backend.delete("x/y/z").await?;
    backend.delete("never/was").await?;
    assert_eq!(keys_under(&backend, "").await?, ["x/w"]);
    // The key's place can be used again, as an object or as a directory.
    backend.put("x/y", Bytes::from_static(b"3")).await?;
    backend.put("x/y/z", Bytes::from_static(b"4")).await?;
    assert_eq!(keys_under(&backend, "").await?, ["x/w", "x/y", "x/y/z"]);
    for key in ["x/w", "x/y", "x/y/z"] {
        backend.delete(key).await?;
    }
    assert_eq!(keys_under(&backend, "").await?, Vec::<String>::new());
    Ok(())
}

async fn nested_keys_coexist(backend: DynBackend) -> TestResult {
    // Not keys that start with `/`: Garage drops leading slashes (see `fs_only`).
    let keys = strings(&["a", "a/b", "a/b/c", "a/", "a//b", "a///", "a/b/", "a/b//", "b//c"]);
    put_keys(&backend, keys.clone()).await?;
    for key in &keys {
        assert_eq!(get_bytes(&*backend, key).await?, key.as_bytes(), "{key}");
    }
    assert_eq!(keys_under(&backend, "").await?, sorted(&keys));
    Ok(())
}

async fn unusual_keys(backend: DynBackend) -> TestResult {
    let keys = strings(&[
        "é/ü/日本語.txt",
        "emoji/🦀",
        "spaces and+plus%percent",
        "q?uery#frag&amp=1;x",
        "tilde~/back\\slash/'quote\"",
        "tab\tand\u{7f}del",
        ".",
        "..",
        "./x",
        "../y",
        "nix-cache-info",
        "caches/b/index/6e61722f.123.abc",
    ]);
    put_keys(&backend, keys.clone()).await?;
    for key in &keys {
        assert_eq!(get_bytes(&*backend, key).await?, key.as_bytes(), "{key}");
        assert_eq!(backend.head(key).await?.key, *key);
    }
    assert_eq!(keys_under(&backend, "").await?, sorted(&keys));
    Ok(())
}

async fn key_length_limits(backend: DynBackend) -> TestResult {
    let longest = [
        "k".repeat(MAX_KEY_LEN),
        "é".repeat(MAX_KEY_LEN / 2),
        format!("{}/{}", "d".repeat(600), "f".repeat(MAX_KEY_LEN - 601)),
        "ab/".repeat(MAX_KEY_LEN / 3) + "z",
    ];
    for key in &longest {
        assert_eq!(key.len(), MAX_KEY_LEN);
        backend.put(key, Bytes::from_static(b"long")).await?;
        assert_eq!(get_bytes(&*backend, key).await?, "long");
        assert_eq!(backend.head(key).await?.size, 4);
    }
    assert_eq!(keys_under(&backend, "").await?, sorted(&longest));
    for key in &longest {
        backend.delete(key).await?;
    }

    let too_long = "k".repeat(MAX_KEY_LEN + 1);
    assert!(is_invalid_key(backend.put(&too_long, Bytes::new()).await));
    assert!(is_invalid_key(backend.get(&too_long, None).await));
    assert!(is_invalid_key(backend.head(&too_long).await));
    assert!(is_invalid_key(backend.delete(&too_long).await));
    assert!(is_invalid_key(backend.put("", Bytes::new()).await));
    assert!(is_invalid_key(backend.head("").await));
    assert_eq!(keys_under(&backend, "").await?, Vec::<String>::new());
    Ok(())
}

async fn long_components(backend: DynBackend) -> TestResult {
    // Around the lengths where the fs backend cuts a component (80 bytes) and beyond a file
    // name's limit; keys that end, go on, or branch right at a cut.
    let mut keys = Vec::new();
    for len in [78, 79, 80, 81, 159, 160, 161, 300] {
        let base = "x".repeat(len);
        for suffix in ["", "/", "/a", "!", "0", "a", "é", "\u{1}", "x", "xx/y"] {
            keys.push(format!("{base}{suffix}"));
            keys.push(format!("p/{base}{suffix}"));
        }
    }
    keys.push("é".repeat(200));
    keys.push(format!("{}/{}", "%".repeat(100), "é".repeat(100)));
    put_keys(&backend, keys.clone()).await?;
    let x80 = "x".repeat(80);
    let listings = [
        ("".to_owned(), None),
        ("p/".to_owned(), Some("/")),
        (format!("p/{x80}"), Some("/")),
        (x80.clone(), Some("/")),
        ("x".repeat(79), Some("x")),
        (format!("p/{}", "x".repeat(159)), None),
        (x80.clone(), Some("a")),
    ];
    for (prefix, delimiter) in listings {
        let request = ListRequest {
            prefix: prefix.clone(),
            delimiter: delimiter.map(str::to_owned),
            ..Default::default()
        };
        let expected = model(&keys, &prefix, delimiter);
        assert_eq!(list_all(&backend, request.clone()).await?, expected, "{prefix} {delimiter:?}");
        let paged = ListRequest { max_keys: 7, ..request };
        assert_eq!(list_all(&backend, paged).await?, expected, "{prefix} {delimiter:?}, in pages of 7");
    }
    for key in &keys {
        assert_eq!(get_bytes(&*backend, key).await?, key.as_bytes(), "{key}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Listing

async fn list_byte_order(backend: DynBackend) -> TestResult {
    let keys = strings(&[
        "a", "a-", "a-/z", "a/x", "a/", "a.b", "a0", "A", "B", "b", "_", "~", "é", "a\u{1}", "a ", "a/x/y",
        "ab", "a//", "Z", "0", "-",
    ]);
    put_keys(&backend, keys.clone()).await?;
    let expected = sorted(&keys);
    assert_eq!(expected[..4], strings(&["-", "0", "A", "B"]));
    assert_eq!(keys_under(&backend, "").await?, expected);
    assert_eq!(list_all(&backend, ListRequest { max_keys: 1, ..Default::default() }).await?.0, expected);
    assert_eq!(list_all(&backend, ListRequest { max_keys: 3, ..Default::default() }).await?.0, expected);
    Ok(())
}

async fn list_prefix(backend: DynBackend) -> TestResult {
    let keys = strings(&["p", "p/1", "p/2/3", "pq", "p0", "o", "q/p/1", "ab", "abc", "ab/d", "b"]);
    put_keys(&backend, keys.clone()).await?;
    assert_eq!(keys_under(&backend, "p/").await?, ["p/1", "p/2/3"]);
    assert_eq!(keys_under(&backend, "p").await?, ["p", "p/1", "p/2/3", "p0", "pq"]);
    assert_eq!(keys_under(&backend, "ab").await?, ["ab", "ab/d", "abc"]);
    assert_eq!(keys_under(&backend, "p/2/3").await?, ["p/2/3"]);
    assert_eq!(keys_under(&backend, "p/2/").await?, ["p/2/3"]);
    assert_eq!(keys_under(&backend, "nothing").await?, Vec::<String>::new());
    assert_eq!(keys_under(&backend, "p/1/").await?, Vec::<String>::new());
    assert_eq!(keys_under(&backend, "zzz").await?, Vec::<String>::new());
    Ok(())
}

async fn list_delimiter(backend: DynBackend) -> TestResult {
    let keys = strings(&["a/1", "a/2", "b/c/d", "c", "d/", "e", "f-1", "f-2", "g//h"]);
    put_keys(&backend, keys).await?;
    let list = |prefix: &str, delimiter: &str| {
        let request =
            ListRequest { prefix: prefix.into(), delimiter: Some(delimiter.into()), ..Default::default() };
        let backend = backend.clone();
        async move { list_all(&backend, request).await }
    };
    let (objects, prefixes) = list("", "/").await?;
    assert_eq!(objects, ["c", "e", "f-1", "f-2"]);
    assert_eq!(prefixes, ["a/", "b/", "d/", "g/"]);
    let (objects, prefixes) = list("b/", "/").await?;
    assert_eq!((objects, prefixes), (vec![], strings(&["b/c/"])));
    let (objects, prefixes) = list("g/", "/").await?;
    assert_eq!((objects, prefixes), (vec![], strings(&["g//"])));
    let (objects, prefixes) = list("d", "/").await?;
    assert_eq!((objects, prefixes), (vec![], strings(&["d/"])));
    let (objects, prefixes) = list("a/", "/").await?;
    assert_eq!((objects, prefixes), (strings(&["a/1", "a/2"]), vec![]));
    // Any delimiter, not only `/`.
    let (objects, prefixes) = list("", "-").await?;
    assert_eq!(objects, ["a/1", "a/2", "b/c/d", "c", "d/", "e", "g//h"]);
    assert_eq!(prefixes, ["f-"]);
    let (objects, prefixes) = list("", "c/").await?;
    assert_eq!(objects, ["a/1", "a/2", "c", "d/", "e", "f-1", "f-2", "g//h"]);
    assert_eq!(prefixes, ["b/c/"]);
    Ok(())
}

async fn list_delimiter_pages(backend: DynBackend) -> TestResult {
    let keys = strings(&["a/1", "a/2", "a/3", "b", "c/1", "c/x/2", "d", "e/"]);
    put_keys(&backend, keys).await?;
    let request = ListRequest { delimiter: Some("/".into()), max_keys: 1, ..Default::default() };
    let pages = list_pages(&backend, request.clone()).await?;
    let items: Vec<(Vec<String>, Vec<String>)> = pages
        .iter()
        .map(|p| (p.objects.iter().map(|o| o.key.clone()).collect(), p.common_prefixes.clone()))
        .collect();
    let none = Vec::<String>::new;
    let expected = vec![
        (none(), strings(&["a/"])),
        (strings(&["b"]), none()),
        (none(), strings(&["c/"])),
        (strings(&["d"]), none()),
        (none(), strings(&["e/"])),
    ];
    assert_eq!(items, expected);
    for max_keys in [2, 3] {
        let (objects, prefixes) = list_all(&backend, ListRequest { max_keys, ..request.clone() }).await?;
        assert_eq!((objects, prefixes), (strings(&["b", "d"]), strings(&["a/", "c/", "e/"])));
    }
    Ok(())
}

async fn list_start_after(backend: DynBackend) -> TestResult {
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).chain(strings(&["a/1", "a/2", "b"])).collect();
    put_keys(&backend, keys).await?;
    let after = |start_after: &str| {
        let request =
            ListRequest { prefix: "k".into(), start_after: Some(start_after.into()), ..Default::default() };
        let backend = backend.clone();
        async move { Ok::<_, BackendError>(list_all(&backend, request).await?.0) }
    };
    assert_eq!(after("k4").await?, ["k5", "k6", "k7", "k8", "k9"]);
    assert_eq!(after("k45").await?, ["k5", "k6", "k7", "k8", "k9"]);
    assert_eq!(after("k9").await?, Vec::<String>::new());
    assert_eq!(after("z").await?, Vec::<String>::new());
    assert_eq!(after("a").await?.len(), 10);
    assert_eq!(after("k").await?.len(), 10);

    // Keys after the start roll up into their common prefix, as S3 does, even where the start
    // lies inside it.
    let request =
        ListRequest { delimiter: Some("/".into()), start_after: Some("a/1".into()), ..Default::default() };
    let (objects, prefixes) = list_all(&backend, request).await?;
    assert_eq!(prefixes, ["a/"]);
    assert_eq!(objects[0], "b");
    let request =
        ListRequest { delimiter: Some("/".into()), start_after: Some("a/2".into()), ..Default::default() };
    let (objects, prefixes) = list_all(&backend, request).await?;
    assert_eq!((prefixes.len(), objects.len()), (0, 11));
    Ok(())
}

async fn list_pagination(backend: DynBackend) -> TestResult {
    let keys: Vec<String> = (0..2500).map(|i| format!("many/{i:05}")).collect();
    put_keys(&backend, keys.clone()).await?;
    backend.put("other", Bytes::new()).await?;

    let request = ListRequest { prefix: "many/".into(), ..Default::default() };
    let pages = list_pages(&backend, request.clone()).await?;
    let sizes: Vec<usize> = pages.iter().map(|p| p.objects.len()).collect();
    assert_eq!(sizes, [1000, 1000, 500]);
    assert!(pages[2].next_continuation_token.is_none());
    let listed: Vec<String> = pages.iter().flat_map(|p| p.objects.iter().map(|o| o.key.clone())).collect();
    assert_eq!(listed, keys);

    // max_keys is capped at 1000.
    let capped = backend.list(&ListRequest { max_keys: 5000, ..request.clone() }).await?;
    assert_eq!(capped.objects.len(), 1000);
    assert!(capped.next_continuation_token.is_some());

    let small = list_pages(&backend, ListRequest { max_keys: 300, ..request.clone() }).await?;
    assert_eq!(small.len(), 9);
    assert_eq!(small.iter().map(|p| p.objects.len()).sum::<usize>(), 2500);

    // A page that ends exactly at the end says there is no more.
    let exact =
        backend.list(&ListRequest { prefix: "many/0249".into(), max_keys: 10, ..Default::default() }).await?;
    assert_eq!(exact.objects.len(), 10);
    assert!(exact.next_continuation_token.is_none());

    let after = ListRequest { start_after: Some("many/01999".into()), ..request };
    assert_eq!(list_all(&backend, after).await?.0, keys[2000..]);
    Ok(())
}

async fn list_metadata_matches_head(backend: DynBackend) -> TestResult {
    for (i, key) in ["m/a", "m/b/c", "m/d"].into_iter().enumerate() {
        backend.put(key, data(i * 1000 + 1, i as u8)).await?;
    }
    let page = backend.list(&ListRequest { prefix: "m/".into(), ..Default::default() }).await?;
    assert_eq!(page.objects.len(), 3);
    for (i, listed) in page.objects.iter().enumerate() {
        let head = backend.head(&listed.key).await?;
        assert_eq!((listed.size, &listed.etag), (head.size, &head.etag));
        assert_eq!(listed.etag, md5_hex(&data(i * 1000 + 1, i as u8)));
        assert!(distance(listed.last_modified, head.last_modified) <= Duration::from_secs(1));
        assert!(near_now(listed.last_modified, Duration::from_secs(60)));
    }
    Ok(())
}

async fn empty_bucket(backend: DynBackend) -> TestResult {
    for request in [
        ListRequest::default(),
        ListRequest { prefix: "p/".into(), delimiter: Some("/".into()), ..Default::default() },
        ListRequest { start_after: Some("a".into()), max_keys: 1, ..Default::default() },
    ] {
        assert_eq!(backend.list(&request).await?, ListPage::default(), "{request:?}");
    }
    Ok(())
}

async fn large_object_streams(backend: DynBackend) -> TestResult {
    let body = data(20 << 20, 7);
    let put = backend.put("large", body.clone()).await?;
    assert_eq!((put.size, put.etag.as_str()), (body.len() as u64, md5_hex(&body).as_str()));

    let got = backend.get("large", None).await?;
    assert_eq!(got.meta.size, body.len() as u64);
    let pieces: Vec<Bytes> = got.body.try_collect().await?;
    assert!(pieces.len() > 1, "the body comes in pieces, not as one buffer");
    assert_eq!(pieces.iter().map(Bytes::len).sum::<usize>(), body.len());
    assert!(pieces.concat() == body, "the body is intact");

    let range = (7 << 20) + 3..(15 << 20) + 5;
    let got = backend.get("large", Some(range.clone())).await?;
    assert_eq!(got.range, range);
    assert!(got.bytes().await? == body.slice(range.start as usize..range.end as usize));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The fs backend only

mod fs_only {
    use super::*;
    use nargate::backend::Backend;
    use nargate::backend::fs::FsBackend;
    use std::path::Path;
    use std::sync::Arc;

    fn backend() -> (tempfile::TempDir, Arc<FsBackend>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = FsBackend::new(dir.path().join("root")).expect("fs backend");
        (dir, Arc::new(backend))
    }

    /// The names in a directory, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn layout_on_disk() -> TestResult {
        let (_dir, backend) = backend();
        backend.put("nar/Ab.nar", Bytes::from_static(b"data")).await?;
        let file = backend.root().join("nar.d/%41b%2Enar.o");
        let bytes = std::fs::read(&file).expect("object file");
        assert_eq!(&bytes[..8], b"NGFO\x02\0\0\0");
        assert_eq!(hex::encode(&bytes[8..24]), md5_hex(b"data"));
        assert_eq!(&bytes[24..28], [0; 4], "no attribute block");
        assert_eq!(&bytes[28..], b"data");

        // A streamed put: the MD5 is filled in, the attribute block sits before the data.
        let body = data(3 << 20, 1);
        let options = PutOptions { attributes: full_attributes(), content_md5: None, ..Default::default() };
        backend.put_stream("streamed", stream_of(&body, 100_000), options).await?;
        let bytes = std::fs::read(backend.root().join("streamed.o")).expect("object file");
        assert_eq!(&bytes[..8], b"NGFO\x02\0\0\0");
        assert_eq!(hex::encode(&bytes[8..24]), md5_hex(&body));
        let block = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes")) as usize;
        assert!(bytes[28..28 + block].windows(4).any(|w| w == b"zstd"));
        assert!(bytes[28 + block..] == body[..]);
        assert_eq!(backend.head("streamed").await?.size, body.len() as u64);
        Ok(())
    }

    #[tokio::test]
    async fn streamed_puts_leave_no_temporary_files() -> TestResult {
        let (_dir, backend) = backend();
        let tmp = backend.root().join(".tmp");
        let body = data(20 << 20, 2);
        let put = backend.put_stream("ok", stream_of(&body, 1 << 20), PutOptions::default()).await?;
        assert_eq!(put.etag, md5_hex(&body), "the fs backend's ETag is the MD5, whatever the size");
        let wrong = PutOptions { content_md5: Some([0; 16]), ..Default::default() };
        assert!(backend.put_stream("bad", stream_of(&body, 1 << 20), wrong).await.is_err());
        assert!(
            backend
                .put_stream("bad", failing_stream(&body, 1 << 20, 5 << 20), Default::default())
                .await
                .is_err()
        );
        assert_eq!(names(&tmp), Vec::<String>::new());

        // A put dropped half-way (its client went away) removes its file too.
        let stalled = stream_of(&body.slice(..1 << 20), 4096).chain(futures::stream::pending()).boxed();
        let writer = backend.clone();
        let task =
            tokio::spawn(async move { writer.put_stream("dropped", stalled, Default::default()).await });
        let start = std::time::Instant::now();
        while names(&tmp).is_empty() {
            assert!(start.elapsed() < Duration::from_secs(30), "the put never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
        assert!(task.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(names(&tmp), Vec::<String>::new());
        assert!(is_not_found(backend.head("dropped").await));
        Ok(())
    }

    #[tokio::test]
    async fn temporary_and_foreign_files_are_not_listed() -> TestResult {
        let (_dir, backend) = backend();
        backend.put("a/b", Bytes::from_static(b"1")).await?;
        let root = backend.root();
        std::fs::write(root.join(".tmp/put-half-written"), b"partial").expect("write");
        std::fs::write(root.join("README"), b"not an object").expect("write");
        std::fs::write(root.join("a.d/stray.txt"), b"not an object").expect("write");
        let (keys, _) = list_all(&(backend.clone() as DynBackend), ListRequest::default()).await?;
        assert_eq!(keys, ["a/b"]);
        Ok(())
    }

    #[tokio::test]
    async fn stale_temporary_files_are_removed_on_open() -> TestResult {
        let (_dir, backend) = backend();
        let tmp = backend.root().join(".tmp");
        let stale = std::fs::File::create(tmp.join("put-stale")).expect("create");
        stale.set_modified(SystemTime::now() - Duration::from_secs(7200)).expect("set mtime");
        std::fs::write(tmp.join("put-recent"), b"x").expect("write");
        FsBackend::new(backend.root().to_path_buf())?;
        assert_eq!(names(&tmp), ["put-recent"]);
        Ok(())
    }

    #[tokio::test]
    async fn puts_leave_no_temporary_files() -> TestResult {
        let (_dir, backend) = backend();
        backend.put("a", data(1 << 20, 1)).await?;
        backend.put("a", data(10, 2)).await?;
        assert!(is_invalid_key(backend.put("", Bytes::new()).await));
        assert_eq!(names(&backend.root().join(".tmp")), Vec::<String>::new());
        Ok(())
    }

    #[tokio::test]
    async fn delete_removes_empty_directories() -> TestResult {
        let (_dir, backend) = backend();
        backend.put("x/y/z", Bytes::new()).await?;
        backend.put(&format!("x/{}", "p".repeat(200)), Bytes::new()).await?;
        backend.put("x/w", Bytes::new()).await?;
        backend.delete("x/y/z").await?;
        backend.delete(&format!("x/{}", "p".repeat(200))).await?;
        assert_eq!(names(&backend.root().join("x.d")), ["w.o"]);
        backend.delete("x/w").await?;
        assert_eq!(names(backend.root()), [".tmp"]);
        Ok(())
    }

    #[tokio::test]
    async fn a_page_reads_only_its_own_objects() -> TestResult {
        let (_dir, backend) = backend();
        put_keys(&(backend.clone() as DynBackend), (0..20).map(|i| format!("k{i:02}"))).await?;
        // Damage every object after the first two: a page of two must not read them.
        for i in 2..20 {
            std::fs::write(backend.root().join(format!("k{i:02}.o")), b"garbage").expect("write");
        }
        let page = backend.list(&ListRequest { max_keys: 2, ..Default::default() }).await?;
        assert_eq!(page.objects.len(), 2);
        assert!(page.next_continuation_token.is_some());
        let err = backend.list(&ListRequest { max_keys: 3, ..Default::default() }).await;
        assert!(matches!(err, Err(BackendError::Io { .. })), "{err:?}");
        assert!(matches!(backend.head("k05").await, Err(BackendError::Io { .. })));
        Ok(())
    }

    #[tokio::test]
    async fn concurrent_puts_and_deletes_in_one_directory() -> TestResult {
        let (_dir, backend) = backend();
        // Deletes remove the directory whenever it empties; puts must recreate it.
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let backend = backend.clone();
                tokio::spawn(async move {
                    for i in 0..50 {
                        let key = format!("d/e/{t}-{i}");
                        backend.put(&key, Bytes::from_static(b"x")).await?;
                        backend.delete(&key).await?;
                    }
                    Ok::<_, BackendError>(())
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task")?;
        }
        assert_eq!(names(backend.root()), [".tmp"]);
        Ok(())
    }

    #[tokio::test]
    async fn keys_may_start_with_a_slash() -> TestResult {
        // Garage 2.5 strips leading slashes from keys, so this is not in the shared suite.
        let (_dir, backend) = backend();
        let keys = strings(&["/", "//", "/a", "a", "//a/"]);
        put_keys(&(backend.clone() as DynBackend), keys.clone()).await?;
        for key in &keys {
            assert_eq!(get_bytes(&*backend, key).await?, key.as_bytes());
        }
        assert_eq!(
            list_all(&(backend.clone() as DynBackend), ListRequest::default()).await?.0,
            sorted(&keys)
        );
        Ok(())
    }

    #[tokio::test]
    async fn bad_continuation_tokens_are_refused() {
        let (_dir, backend) = backend();
        let request = ListRequest { continuation_token: Some("garbage".into()), ..Default::default() };
        assert!(backend.list(&request).await.is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// The S3 backend only

mod s3_only {
    use super::*;
    use crate::common::garage::{garage, garage_s3_backend};
    use nargate::backend::Backend;
    use nargate::backend::s3::{ConnectionMode, S3Backend, S3Config};
    use std::sync::Arc;

    /// A plain S3 client for `config`'s bucket, to see what the backend leaves there.
    fn raw_client(config: &S3Config) -> aws_sdk_s3::Client {
        use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
        let credentials = Credentials::new(
            config.access_key_id.clone().expect("key id"),
            config.secret_access_key.clone().expect("secret"),
            None,
            None,
            "test",
        );
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .endpoint_url(config.endpoint.clone().expect("endpoint"))
            .credentials_provider(credentials)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// The keys of the multipart uploads in progress in `bucket`.
    async fn uploads(client: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
        let out = client.list_multipart_uploads().bucket(bucket).send().await.expect("ListMultipartUploads");
        out.uploads().iter().map(|u| u.key().unwrap_or_default().to_owned()).collect()
    }

    /// A PUT in one piece (chunks, records) and a streamed one whose MD5 is unneeded (staged
    /// parts) carry a CRC32C that the server keeps and checks, or, with `put_check =
    /// "content-md5"`, a Content-MD5 instead; a streamed put of a plain object its Content-MD5.
    /// All read back.
    #[tokio::test]
    async fn puts_are_checked_by_crc32c_or_content_md5() {
        use base64::Engine as _;
        use nargate::backend::s3::PutCheck;
        let garage = tokio::task::spawn_blocking(garage).await.expect("garage");
        let body = bytes::Bytes::from(crate::common::pseudo_random(100_000, 3));
        let crc32c = base64::engine::general_purpose::STANDARD.encode(crc32c_of(&body));
        for (check, kept) in [(PutCheck::Crc32c, Some(crc32c.as_str())), (PutCheck::ContentMd5, None)] {
            let name = garage.create_bucket().await;
            let config = S3Config { put_check: check, ..garage.config(&name) };
            let backend = S3Backend::new(config.clone()).await.expect("backend");
            let meta = backend.put("chunks/x", body.clone()).await.unwrap();
            assert_eq!(meta.etag, nargate::cache::md5_hex(&body), "{check:?}");
            // A streamed put whose MD5 nobody needs (a staged part) is checked the same way;
            // one that needs it (a plain object, whose ETag it is) sends it as Content-MD5.
            let unneeded = PutOptions { md5_unneeded: true, ..Default::default() };
            backend.put_stream("parts/x", stream_of(&body, 7_000), unneeded).await.unwrap();
            backend.put_stream("plain/x", stream_of(&body, 7_000), PutOptions::default()).await.unwrap();
            for (key, kept) in [("chunks/x", kept), ("parts/x", kept), ("plain/x", None)] {
                let read = nargate::backend::get_bytes(&backend, key).await.unwrap();
                assert!(read == body, "{check:?} {key}");
                // Garage keeps a checksum it was sent, and shows it to a GET in checksum mode.
                let got = raw_client(&config)
                    .get_object()
                    .bucket(&name)
                    .key(key)
                    .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(got.checksum_crc32_c(), kept, "{check:?} {key}: the checksum the server got");
            }
        }
    }

    /// CRC32C (Castagnoli) of `data`, big-endian, as S3 carries it; computed here, bit by bit.
    fn crc32c_of(data: &[u8]) -> [u8; 4] {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
            }
        }
        (!crc).to_be_bytes()
    }

    /// A fresh bucket: its name, a backend on it and a plain client.
    async fn bucket() -> (String, Arc<S3Backend>, aws_sdk_s3::Client) {
        let garage = tokio::task::spawn_blocking(garage).await.expect("garage");
        let bucket = garage.create_bucket().await;
        let backend = S3Backend::new(garage.config(&bucket)).await.expect("backend");
        (bucket.clone(), Arc::new(backend), raw_client(&garage.config(&bucket)))
    }

    #[tokio::test]
    async fn attributes_are_s3_headers_and_user_metadata() -> TestResult {
        let (bucket, backend, client) = bucket().await;
        let options = PutOptions { attributes: full_attributes(), content_md5: None, ..Default::default() };
        backend.put_stream("k", stream_of(&data(10, 1), 10), options).await?;
        let head = client.head_object().bucket(&bucket).key("k").send().await.expect("HeadObject");
        let attributes = full_attributes();
        assert_eq!(head.content_type(), attributes.content_type.as_deref());
        assert_eq!(head.content_encoding(), attributes.content_encoding.as_deref());
        assert_eq!(head.cache_control(), attributes.cache_control.as_deref());
        assert_eq!(head.content_disposition(), attributes.content_disposition.as_deref());
        assert_eq!(head.content_language(), attributes.content_language.as_deref());
        let metadata: BTreeMap<String, String> =
            head.metadata().cloned().unwrap_or_default().into_iter().collect();
        assert_eq!(metadata, attributes.metadata);

        // Written by another client, with names in any case: read back lowercase.
        client
            .put_object()
            .bucket(&bucket)
            .key("other")
            .content_type("text/plain")
            .metadata("Build-ID", "7")
            .body(Bytes::from_static(b"x").into())
            .send()
            .await
            .expect("PutObject");
        let (_, attributes) = backend.stat("other").await?;
        assert_eq!(attributes.content_type.as_deref(), Some("text/plain"));
        assert_eq!(attributes.metadata, BTreeMap::from([("build-id".to_owned(), "7".to_owned())]));
        Ok(())
    }

    #[tokio::test]
    async fn streamed_puts_past_one_part_are_multipart() -> TestResult {
        let (_bucket, backend, _client) = bucket().await;
        for (len, parts) in [(8 << 20, None), ((8 << 20) + 1, Some(2)), (24 << 20, Some(3))] {
            let body = data(len, 2);
            let options = PutOptions { content_md5: Some(md5_of(&body)), ..Default::default() };
            let put = backend.put_stream("k", stream_of(&body, 1 << 20), options).await?;
            match parts {
                None => assert_eq!(put.etag, md5_hex(&body), "{len}"),
                Some(parts) => assert!(is_multipart_etag(&put.etag, parts), "{len}: {}", put.etag),
            }
            assert_eq!(check_object(&(backend.clone() as DynBackend), "k", &body).await?, put.etag);
        }
        Ok(())
    }

    #[tokio::test]
    async fn failed_multipart_puts_leave_no_upload() -> TestResult {
        let (bucket, backend, client) = bucket().await;
        let body = data(20 << 20, 3);
        let wrong = PutOptions { content_md5: Some(md5_of(b"other")), ..Default::default() };
        let result = backend.put_stream("mismatch", stream_of(&body, 1 << 20), wrong).await;
        assert!(matches!(result, Err(BackendError::DigestMismatch { .. })), "{result:?}");
        // The body fails after one part was uploaded, and after two.
        for good in [9 << 20, 17 << 20] {
            let result =
                backend.put_stream("broken", failing_stream(&body, 1 << 20, good), Default::default()).await;
            assert!(matches!(result, Err(BackendError::Body { .. })), "{result:?}");
        }
        assert_eq!(uploads(&client, &bucket).await, Vec::<String>::new());
        assert!(is_not_found(backend.head("mismatch").await));
        assert!(is_not_found(backend.head("broken").await));
        Ok(())
    }

    #[tokio::test]
    async fn a_dropped_multipart_put_is_aborted() -> TestResult {
        let (bucket, backend, client) = bucket().await;
        // More than a part, then nothing: the client stalls.
        let stalled = stream_of(&data(10 << 20, 4), 1 << 20).chain(futures::stream::pending()).boxed();
        let writer = backend.clone();
        let task =
            tokio::spawn(async move { writer.put_stream("dropped", stalled, Default::default()).await });
        let start = std::time::Instant::now();
        while uploads(&client, &bucket).await.is_empty() {
            assert!(start.elapsed() < Duration::from_secs(30), "the multipart upload never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        task.abort();
        assert!(task.await.is_err_and(|e| e.is_cancelled()));
        while !uploads(&client, &bucket).await.is_empty() {
            assert!(start.elapsed() < Duration::from_secs(60), "the dropped upload was not aborted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(is_not_found(backend.head("dropped").await));
        Ok(())
    }

    /// Puts, gets and lists objects of many sizes through a backend with connections kept `mode`.
    async fn round_trips(mode: ConnectionMode) -> TestResult {
        let garage = tokio::task::spawn_blocking(garage).await.expect("garage");
        let bucket = garage.create_bucket().await;
        let config = S3Config { connections: mode, ..garage.config(&bucket) };
        let backend: DynBackend = Arc::new(S3Backend::new(config).await.expect("backend"));
        let data = Bytes::from(vec![7u8; 300_000]);
        for i in 0..20 {
            backend.put(&format!("k{i:02}"), data.slice(..i * 1000)).await?;
        }
        for i in 0..20 {
            assert_eq!(get_bytes(&*backend, &format!("k{i:02}")).await?, data.slice(..i * 1000));
        }
        let big = data.slice(..).repeat(10);
        backend.put("big", Bytes::from(big.clone())).await?;
        assert_eq!(get_bytes(&*backend, "big").await?, big);
        assert_eq!(backend.get("big", Some(5..9)).await?.bytes().await?, big[5..9]);
        assert!(is_not_found(backend.head("missing").await));
        assert_eq!(keys_under(&backend, "").await?.len(), 21);
        Ok(())
    }

    #[tokio::test]
    async fn connections_kept_alive_with_quick_acks() -> TestResult {
        round_trips(ConnectionMode::QuickAck).await
    }

    #[tokio::test]
    async fn connections_kept_alive() -> TestResult {
        round_trips(ConnectionMode::Reuse).await
    }

    #[tokio::test]
    async fn a_new_connection_per_request() -> TestResult {
        round_trips(ConnectionMode::NewPerRequest).await
    }

    #[tokio::test]
    async fn key_prefix() -> TestResult {
        let garage = tokio::task::spawn_blocking(garage).await.expect("garage");
        let bucket = garage.create_bucket().await;
        let whole = S3Backend::new(garage.config(&bucket)).await.expect("backend");
        let config = S3Config { prefix: Some("nargate/".into()), ..garage.config(&bucket) };
        let prefixed: DynBackend = Arc::new(S3Backend::new(config).await.expect("backend"));

        whole.put("outside", Bytes::new()).await?;
        prefixed.put("a/b", Bytes::from_static(b"1")).await?;
        prefixed.put("c", Bytes::from_static(b"2")).await?;
        assert_eq!(get_bytes(&whole, "nargate/a/b").await?, "1");
        assert_eq!(get_bytes(&*prefixed, "c").await?, "2");
        assert_eq!(prefixed.head("a/b").await?.key, "a/b");
        assert!(is_not_found(prefixed.head("outside").await));

        assert_eq!(keys_under(&prefixed, "").await?, ["a/b", "c"]);
        let request =
            ListRequest { delimiter: Some("/".into()), start_after: Some("a".into()), ..Default::default() };
        assert_eq!(list_all(&prefixed, request).await?, (strings(&["c"]), strings(&["a/"])));

        // The prefix counts towards the limit.
        let longest = "k".repeat(MAX_KEY_LEN - "nargate/".len());
        prefixed.put(&longest, Bytes::new()).await?;
        assert!(is_invalid_key(prefixed.put(&format!("{longest}k"), Bytes::new()).await));
        prefixed.delete("c").await?;
        assert!(is_not_found(whole.head("nargate/c").await));
        Ok(())
    }

    #[tokio::test]
    async fn a_missing_bucket_is_not_a_missing_key() {
        let garage = tokio::task::spawn_blocking(garage).await.expect("garage");
        let backend = S3Backend::new(garage.config("no-such-bucket")).await.expect("backend");
        for result in
            [backend.get("k", None).await.map(|_| ()), backend.put("k", Bytes::new()).await.map(|_| ())]
        {
            match result {
                Err(BackendError::Remote { message, .. }) => {
                    assert!(message.contains("NoSuchBucket"), "{message}")
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(backend.list(&ListRequest::default()).await, Err(BackendError::Remote { .. })));
    }

    #[tokio::test]
    async fn wrong_credentials_are_remote_errors() -> TestResult {
        let backend = garage_s3_backend().await;
        backend.put("k", Bytes::new()).await?;
        let garage = tokio::task::spawn_blocking(garage).await.expect("garage");
        let bucket = garage.create_bucket().await;
        let config = S3Config { secret_access_key: Some("0".repeat(64)), ..garage.config(&bucket) };
        let wrong = S3Backend::new(config).await.expect("backend");
        match wrong.get("k", None).await {
            Err(BackendError::Remote { op: "GET", message, .. }) => {
                assert!(message.contains("403") || message.contains("Access"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_fails_after_retries() {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let config = S3Config {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            bucket: "b".into(),
            path_style: true,
            access_key_id: Some("id".into()),
            secret_access_key: Some("secret".into()),
            max_attempts: 2,
            ..S3Config::default()
        };
        let backend = S3Backend::new(config).await.expect("backend");
        match backend.head("k").await {
            Err(BackendError::Remote { op: "HEAD", key, message }) => {
                assert_eq!(key, "k");
                assert!(message.to_lowercase().contains("connect"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Attributes and streaming puts

async fn attributes_round_trip(backend: DynBackend) -> TestResult {
    let body = data(1000, 3);
    let attributes = full_attributes();
    let options =
        PutOptions { attributes: attributes.clone(), content_md5: Some(md5_of(&body)), ..Default::default() };
    let put = backend.put_stream("raw/log", stream_of(&body, 300), options).await?;
    assert_eq!((put.size, put.etag.as_str()), (1000, md5_hex(&body).as_str()));

    let got = backend.get("raw/log", None).await?;
    assert_eq!(got.attributes, attributes);
    assert_eq!(got.bytes().await?, body);
    let ranged = backend.get("raw/log", Some(10..20)).await?;
    assert_eq!(ranged.attributes, attributes, "a ranged GET has the attributes too");
    let (meta, stat) = backend.stat("raw/log").await?;
    assert_eq!(stat, attributes);
    assert_eq!(meta, backend.head("raw/log").await?);
    assert_eq!(check_object(&backend, "raw/log", &body).await?, put.etag);

    // An overwrite replaces the attributes: fewer fields, other metadata.
    let fewer = Attributes {
        content_type: Some("application/json".into()),
        metadata: [("only".to_owned(), "one".to_owned())].into(),
        ..Attributes::default()
    };
    let options = PutOptions { attributes: fewer.clone(), content_md5: None, ..Default::default() };
    backend.put_stream("raw/log", stream_of(&body, 1000), options).await?;
    assert_eq!(backend.stat("raw/log").await?.1, fewer);
    assert_eq!(backend.get("raw/log", None).await?.attributes, fewer);

    // A plain put stores no user metadata nor any of the headers set before (S3 servers may
    // answer a Content-Type of their own: Garage says application/octet-stream).
    backend.put("raw/log", body.clone()).await?;
    let plain = backend.stat("raw/log").await?.1;
    assert_eq!(Attributes { content_type: None, ..plain.clone() }, Attributes::default(), "{plain:?}");
    Ok(())
}

async fn put_stream_small(backend: DynBackend) -> TestResult {
    for (key, len, piece) in
        [("s/empty", 0, 1), ("s/one", 1, 1), ("s/pieces", 100_000, 4096), ("s/part", 8 << 20, 1 << 20)]
    {
        let body = data(len, 4);
        let options = PutOptions { content_md5: Some(md5_of(&body)), ..Default::default() };
        let put = backend.put_stream(key, stream_of(&body, piece), options).await?;
        assert_eq!((put.key.as_str(), put.size), (key, len as u64));
        assert_eq!(put.etag, md5_hex(&body), "{key}: a single part's ETag is its MD5");
        assert!(near_now(put.last_modified, Duration::from_secs(60)));
        assert_eq!(check_object(&backend, key, &body).await?, put.etag);
    }
    // Without a Content-MD5 too.
    let body = data(5000, 5);
    backend.put_stream("s/unchecked", stream_of(&body, 999), PutOptions::default()).await?;
    assert_eq!(check_object(&backend, "s/unchecked", &body).await?, md5_hex(&body));
    Ok(())
}

async fn put_stream_large(backend: DynBackend) -> TestResult {
    // Pieces that do not divide a part, so parts are cut inside them.
    let body = data(20 << 20, 6);
    let options =
        PutOptions { attributes: full_attributes(), content_md5: Some(md5_of(&body)), ..Default::default() };
    let put = backend.put_stream("large", stream_of(&body, 1_000_003), options).await?;
    assert_eq!(put.size, body.len() as u64);
    // The fs backend's ETag is the MD5; S3's that of a multipart upload of three 8 MiB parts.
    assert!(put.etag == md5_hex(&body) || is_multipart_etag(&put.etag, 3), "{}", put.etag);
    assert_eq!(check_object(&backend, "large", &body).await?, put.etag);
    assert_eq!(backend.stat("large").await?.1, full_attributes());
    let range = (8 << 20) - 5..(16 << 20) + 5;
    let got = backend.get("large", Some(range.clone())).await?;
    assert!(got.bytes().await? == body.slice(range.start as usize..range.end as usize));
    // One piece larger than a part.
    let body = data(17 << 20, 7);
    let put = backend.put_stream("large", stream_of(&body, body.len()), PutOptions::default()).await?;
    assert_eq!(check_object(&backend, "large", &body).await?, put.etag);
    Ok(())
}

async fn put_stream_digest_mismatch(backend: DynBackend) -> TestResult {
    for len in [1000, 20 << 20] {
        let body = data(len, 8);
        let wrong = PutOptions { content_md5: Some(md5_of(b"something else")), ..Default::default() };
        match backend.put_stream("new", stream_of(&body, 1 << 20), wrong.clone()).await {
            Err(BackendError::DigestMismatch { key }) => assert_eq!(key, "new"),
            other => panic!("{len}: {other:?}"),
        }
        assert!(is_not_found(backend.head("new").await), "{len}: nothing is visible");

        let old = data(10, 9);
        let options = PutOptions { attributes: full_attributes(), content_md5: None, ..Default::default() };
        backend.put_stream("existing", stream_of(&old, 10), options).await?;
        let result = backend.put_stream("existing", stream_of(&body, 1 << 20), wrong).await;
        assert!(matches!(result, Err(BackendError::DigestMismatch { .. })), "{len}: {result:?}");
        assert_eq!(check_object(&backend, "existing", &old).await?, md5_hex(&old), "{len}: old content kept");
        assert_eq!(backend.stat("existing").await?.1, full_attributes(), "{len}: old attributes kept");
    }
    assert_eq!(keys_under(&backend, "").await?, ["existing"]);
    Ok(())
}

async fn put_stream_body_error(backend: DynBackend) -> TestResult {
    for (len, good) in [(1000, 500), (20 << 20, 10 << 20), (20 << 20, 0)] {
        let body = data(len, 10);
        let result =
            backend.put_stream("new", failing_stream(&body, 65536, good), PutOptions::default()).await;
        assert!(matches!(result, Err(BackendError::Body { .. })), "{len}: {result:?}");
        assert!(is_not_found(backend.head("new").await), "{len}: nothing is visible");

        let old = data(10, 11);
        backend.put("existing", old.clone()).await?;
        let options = PutOptions { content_md5: Some(md5_of(&body)), ..Default::default() };
        let result = backend.put_stream("existing", failing_stream(&body, 65536, good), options).await;
        assert!(matches!(result, Err(BackendError::Body { .. })), "{len}: {result:?}");
        assert_eq!(check_object(&backend, "existing", &old).await?, md5_hex(&old), "{len}: old content kept");
    }
    assert_eq!(keys_under(&backend, "").await?, ["existing"]);
    Ok(())
}

/// `body` in pieces of `piece` bytes, adding `entries` to `late` as it ends, as a body whose
/// checksum came as a trailer does.
fn stream_with_late(body: &Bytes, piece: usize, late: &LateMetadata, entries: &[(&str, &str)]) -> ByteStream {
    let (late, entries): (LateMetadata, Vec<(String, String)>) =
        (late.clone(), entries.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
    let mut at_end = Some(move || late.extend(entries));
    let end = futures::stream::poll_fn(move |_| {
        if let Some(add) = at_end.take() {
            add();
        }
        std::task::Poll::Ready(None)
    });
    stream_of(body, piece).chain(end).boxed()
}

/// Metadata that comes with the end of a body is stored with the object, with the attributes
/// given before, small or over one part of the S3 backend (its multipart path); the ETag the put
/// answers is the one HEAD shows.
async fn late_metadata_is_stored(backend: DynBackend) -> TestResult {
    for len in [1000, 20 << 20] {
        let body = data(len, 12);
        let late = LateMetadata::default();
        let options =
            PutOptions { attributes: full_attributes(), late_metadata: late.clone(), ..Default::default() };
        let entries = [("x-amz-checksum-crc32", "AAAAAA==")];
        let put =
            backend.put_stream("late", stream_with_late(&body, 1 << 20, &late, &entries), options).await?;
        let mut expected = full_attributes();
        expected.metadata.insert("x-amz-checksum-crc32".into(), "AAAAAA==".into());
        let (meta, attributes) = backend.stat("late").await?;
        assert_eq!(attributes, expected, "{len}");
        assert_eq!((meta.etag, meta.size), (put.etag.clone(), len as u64), "{len}");
        assert_eq!(check_object(&backend, "late", &body).await?, put.etag, "{len}");
    }
    Ok(())
}
