//! Nix's `s3://` binary cache store as Nix ≥ 2.33 drives it (libcurl with AWS SigV4, path-style
//! URLs, `x-amz-content-sha256: UNSIGNED-PAYLOAD`), replayed with the real `curl --aws-sigv4`
//! against a gateway over a real Garage: no such Nix is installable here (Debian's Nix 2.8 has no
//! `s3://` compiled in). The requests are those of a substitution and of a `nix copy --to
//! 's3://bucket?endpoint=…&region=us-east-1'`: `HEAD <hash>.narinfo` (404 before the upload),
//! `PUT` of the NAR with its Content-MD5 (uncompressed at `nar/<narhash>.nar`, and xz-compressed
//! at the `.nar.xz` upload key its narinfo names), `PUT <hash>.ls`, `PUT <hash>.narinfo` (once with
//! `Content-Encoding: xz` and an xz body), then `HEAD` 200, `GET` of the narinfo and of the whole
//! NAR, byte-identical to what Nix dumped; and a multipart upload as Nix sends it with
//! `multipart-upload=true`: `POST ?uploads` with the whole object's Content-MD5 and an empty body,
//! 5 MiB parts, and a `CompleteMultipartUpload` body without an XML namespace. curl must be
//! installed (`.ci/install-tools.sh`); without it the test fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use common::gateway::{TestGateway, fixture_nars, fixtures, start};
use common::nix::Nix;

/// The part size Nix's multipart uploads use by default (`multipart-chunk-size`).
const PART_SIZE: usize = 5 << 20;

/// A request body for [`S3Curl::send`].
enum Body<'a> {
    /// No body at all (GET, HEAD).
    None,
    /// An empty body, sent with `Content-Length: 0` (`POST ?uploads`).
    Empty,
    /// The bytes of a file, uploaded as libcurl uploads (`-T`).
    File(&'a Path),
    /// Bytes in memory, as POST data.
    Data(&'a [u8]),
}

/// What curl got back.
struct Reply {
    status: u16,
    /// The response headers, names lowercase.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// `curl --aws-sigv4 "aws:amz:us-east-1:s3" --user ID:SECRET` against one bucket of a gateway, as
/// Nix ≥ 2.33's S3 store signs its requests.
struct S3Curl {
    endpoint: String,
    bucket: String,
    user: String,
    scratch: tempfile::TempDir,
}

impl S3Curl {
    fn new(gw: &TestGateway, bucket: &str) -> S3Curl {
        S3Curl {
            endpoint: gw.endpoint.clone(),
            bucket: bucket.to_owned(),
            user: format!("{}:{}", gw.keys.access_key_id, gw.keys.secret_access_key),
            scratch: tempfile::tempdir().unwrap(),
        }
    }

    /// Sends `method /bucket/<key_and_query>` with `headers` and `body`, signed, path-style,
    /// `UNSIGNED-PAYLOAD`; logs the command line (without the secret).
    fn send(&self, method: &str, key_and_query: &str, headers: &[(&str, &str)], body: Body) -> Reply {
        let url = format!("{}/{}/{key_and_query}", self.endpoint, self.bucket);
        let (head_file, body_file) = (self.scratch.path().join("head"), self.scratch.path().join("body"));
        let mut args: Vec<String> = vec!["-sS".into(), "--aws-sigv4".into(), "aws:amz:us-east-1:s3".into()];
        args.extend(["-H".into(), "x-amz-content-sha256: UNSIGNED-PAYLOAD".into()]);
        for (name, value) in headers {
            args.extend(["-H".into(), format!("{name}: {value}")]);
        }
        match (method, &body) {
            ("HEAD", _) => args.push("--head".into()),
            (_, Body::File(path)) => {
                args.extend(["-X".into(), method.into(), "-T".into(), path.display().to_string()])
            }
            (_, Body::Empty) => {
                args.extend(["-X".into(), method.into(), "--data-binary".into(), String::new()])
            }
            (_, Body::Data(_)) => {
                let data = self.scratch.path().join("data");
                std::fs::write(
                    &data,
                    match &body {
                        Body::Data(bytes) => bytes,
                        _ => unreachable!(),
                    },
                )
                .unwrap();
                args.extend([
                    "-X".into(),
                    method.into(),
                    "--data-binary".into(),
                    format!("@{}", data.display()),
                ]);
            }
            (_, Body::None) => args.extend(["-X".into(), method.into()]),
        }
        args.extend([
            "-D".into(),
            head_file.display().to_string(),
            "-o".into(),
            body_file.display().to_string(),
        ]);
        args.extend(["-w".into(), "%{http_code}".into(), url]);
        let shown: Vec<String> = args
            .iter()
            .map(|a| if a.contains(' ') || a.is_empty() { format!("'{a}'") } else { a.clone() })
            .collect();
        common::step(format!("curl --user ID:SECRET {}", shown.join(" ")));

        let _ = std::fs::remove_file(&body_file);
        let out = Command::new("curl")
            .arg("--user")
            .arg(&self.user)
            .args(&args)
            .output()
            .expect("curl is missing: install it with .ci/install-tools.sh");
        assert!(
            out.status.success(),
            "curl {method} {key_and_query}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = String::from_utf8_lossy(&out.stdout).trim().parse().expect("curl's %{http_code}");
        let head = std::fs::read_to_string(&head_file).unwrap_or_default();
        // With `Expect: 100-continue`, the interim response's head comes first: keep the last.
        let last = head.trim_end().rsplit("\r\n\r\n").next().unwrap_or_default();
        let headers = last
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let body = std::fs::read(&body_file).unwrap_or_default();
        let reply = Reply { status, headers, body };
        common::step(format!("  -> {}", reply.status));
        reply
    }

    /// A request that must answer `status`.
    fn expect(&self, status: u16, method: &str, key: &str, headers: &[(&str, &str)], body: Body) -> Reply {
        let reply = self.send(method, key, headers, body);
        assert_eq!(reply.status, status, "{method} {key}: {}", String::from_utf8_lossy(&reply.body));
        reply
    }

    /// `PUT key` of the file `path` with its Content-MD5 (and `extra` headers), as Nix uploads.
    fn put_file(&self, key: &str, path: &Path, extra: &[(&str, &str)]) -> Reply {
        let md5 = content_md5(&std::fs::read(path).unwrap());
        let mut headers = vec![("Content-MD5", md5.as_str())];
        headers.extend_from_slice(extra);
        self.expect(200, "PUT", key, &headers, Body::File(path))
    }

    /// Writes `bytes` to a scratch file named `name` and returns its path.
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.scratch.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

/// The base64 MD5 of `data`, as Content-MD5 carries it.
fn content_md5(data: &[u8]) -> String {
    use md5::Digest as _;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
}

/// `data`, xz-compressed.
async fn xz(data: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let mut out = vec![];
    async_compression::tokio::bufread::XzEncoder::new(data).read_to_end(&mut out).await.unwrap();
    out
}

/// The value of `field` in narinfo `text`.
fn field<'a>(text: &'a str, field: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}: ")))
        .unwrap_or_else(|| panic!("no {field} in\n{text}"))
}

/// The fixture's NAR of `store_path`, as Nix dumped it.
fn fixture_nar(store_path: &str) -> Vec<u8> {
    fixture_nars().into_iter().find(|(p, _, _)| p == store_path).expect("a fixture store path").2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_s3_store_requests_replayed_with_curl() {
    let gw = start(common::garage_backend().await).await;
    gw.client().create_bucket().bucket("nix-s3").send().await.unwrap();
    let s3 = S3Curl::new(&gw, "nix-s3");
    let run = |f: &dyn Fn() -> Reply| tokio::task::block_in_place(f);

    // What a substituter asks first.
    let info = run(&|| s3.expect(200, "GET", "nix-cache-info", &[], Body::None));
    assert!(String::from_utf8_lossy(&info.body).contains("StoreDir: /nix/store"));

    // 1. An uncompressed upload (`?compression=none`, `write-nar-listing`) of hello from
    // cache-none: HEAD of the narinfo (absent), PUT NAR, PUT .ls, PUT narinfo.
    let nix = Nix::new();
    let listed = tokio::task::block_in_place(|| nix.listings(&fixtures().join("cache-none"), "listed"));
    let hello = "/nix/store/1vnwanv5bk8pm7cabl2adpqxssm3p0ai-hello";
    let hash = &hello["/nix/store/".len()..][..32];
    let narinfo = std::fs::read_to_string(fixtures().join(format!("cache-none/{hash}.narinfo"))).unwrap();
    let url = field(&narinfo, "URL");
    run(&|| s3.expect(404, "HEAD", &format!("{hash}.narinfo"), &[], Body::None));
    let nar_file = fixtures().join("cache-none").join(url);
    run(&|| s3.put_file(url, &nar_file, &[("Content-Type", "application/x-nix-nar")]));
    let ls_file = listed.join(format!("{hash}.ls"));
    run(&|| s3.put_file(&format!("{hash}.ls"), &ls_file, &[("Content-Type", "application/json")]));
    let narinfo_file = s3.file("hello.narinfo", narinfo.as_bytes());
    run(&|| {
        s3.put_file(&format!("{hash}.narinfo"), &narinfo_file, &[("Content-Type", "text/x-nix-narinfo")])
    });

    run(&|| s3.expect(200, "HEAD", &format!("{hash}.narinfo"), &[], Body::None));
    let served = run(&|| s3.expect(200, "GET", &format!("{hash}.narinfo"), &[], Body::None));
    let served = String::from_utf8(served.body).unwrap();
    for name in ["StorePath", "URL", "NarHash", "NarSize", "References", "CA"] {
        assert_eq!(field(&served, name), field(&narinfo, name), "{name} of the served narinfo:\n{served}");
    }
    assert!(served.contains(field(&narinfo, "Sig")), "the fixture's signature is kept:\n{served}");
    let nar = run(&|| s3.expect(200, "GET", url, &[], Body::None));
    assert!(nar.body == fixture_nar(hello), "the NAR reads back as Nix dumped it");
    assert_eq!(nar.header("etag"), Some(format!("\"{}\"", nargate::cache::md5_hex(&nar.body)).as_str()));
    let ls = run(&|| s3.expect(200, "GET", &format!("{hash}.ls"), &[], Body::None));
    let ls = String::from_utf8(ls.body).unwrap();
    assert!(ls.contains("\"root\"") && ls.contains("\"hello\""), "a NAR listing:\n{ls}");

    // 2. An xz upload (Nix's default compression, `narinfo-compression=xz`) of app from
    // cache-xz: the NAR at its `.nar.xz` upload key, the narinfo with `Content-Encoding: xz`.
    let app = "/nix/store/lq85sw7lnn3876qz6qmfjblzbballk7c-app";
    let hash = &app["/nix/store/".len()..][..32];
    let narinfo = std::fs::read_to_string(fixtures().join(format!("cache-xz/{hash}.narinfo"))).unwrap();
    let url = field(&narinfo, "URL");
    assert!(url.ends_with(".nar.xz"), "{url}");
    run(&|| s3.expect(404, "HEAD", &format!("{hash}.narinfo"), &[], Body::None));
    let nar_file = fixtures().join("cache-xz").join(url);
    run(&|| s3.put_file(url, &nar_file, &[("Content-Type", "application/x-nix-nar")]));
    let compressed = s3.file("app.narinfo.xz", &xz(narinfo.as_bytes()).await);
    run(&|| {
        s3.put_file(
            &format!("{hash}.narinfo"),
            &compressed,
            &[("Content-Type", "text/x-nix-narinfo"), ("Content-Encoding", "xz")],
        )
    });
    run(&|| s3.expect(200, "HEAD", &format!("{hash}.narinfo"), &[], Body::None));
    let served = run(&|| s3.expect(200, "GET", &format!("{hash}.narinfo"), &[], Body::None));
    assert_eq!(served.header("content-encoding"), None, "the served narinfo is plain text");
    let served = String::from_utf8(served.body).unwrap();
    let nar_hash = field(&narinfo, "NarHash").strip_prefix("sha256:").unwrap();
    assert_eq!(field(&served, "URL"), format!("nar/{nar_hash}.nar"), "served uncompressed:\n{served}");
    assert_eq!(field(&served, "Compression"), "none");
    for name in ["StorePath", "NarHash", "NarSize", "References", "Deriver"] {
        assert_eq!(field(&served, name), field(&narinfo, name), "{name} of the served narinfo:\n{served}");
    }
    let nar = run(&|| s3.expect(200, "GET", &format!("nar/{nar_hash}.nar"), &[], Body::None));
    assert!(nar.body == fixture_nar(app), "the xz-uploaded NAR reads back as Nix dumped it");

    // 3. A multipart upload of a NAR that real Nix made (`nix-store --add`, 12 MiB: 3 parts),
    // then its narinfo.
    let made = tokio::task::block_in_place(|| {
        nix.add_generated_tree("nix-s3-big", &common::multipart_sized_files())
    });
    let key = format!("nar/{}.nar", made.nar_hash);
    let whole_md5 = content_md5(&made.nar);
    let created = run(&|| {
        s3.expect(
            200,
            "POST",
            // `?uploads=`, not `?uploads`: curl 7.88 signs a bare `uploads` as written, without
            // the `=` SigV4's canonical query has, and the gateway (canonicalizing as SigV4 says)
            // answers SignatureDoesNotMatch. Both mean CreateMultipartUpload.
            &format!("{key}?uploads="),
            &[("Content-MD5", &whole_md5), ("Content-Type", "application/x-nix-nar")],
            Body::Empty,
        )
    });
    let created = String::from_utf8(created.body).unwrap();
    let upload_id = created
        .split("<UploadId>")
        .nth(1)
        .and_then(|rest| rest.split("</UploadId>").next())
        .unwrap_or_else(|| panic!("no UploadId in\n{created}"))
        .to_owned();
    let mut parts = String::new();
    for (i, part) in made.nar.chunks(PART_SIZE).enumerate() {
        let number = i + 1;
        let file = s3.file("part", part);
        let query = format!("{key}?partNumber={number}&uploadId={}", urlencoding::encode(&upload_id));
        let reply = run(&|| s3.expect(200, "PUT", &query, &[], Body::File(&file)));
        let etag = reply.header("etag").expect("an UploadPart ETag").to_owned();
        assert_eq!(etag, format!("\"{}\"", nargate::cache::md5_hex(part)), "part {number}'s ETag is its MD5");
        parts.push_str(&format!("<Part><ETag>{etag}</ETag><PartNumber>{number}</PartNumber></Part>"));
    }
    let complete = format!("<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>");
    assert!(!complete.contains("xmlns"));
    let query = format!("{key}?uploadId={}", urlencoding::encode(&upload_id));
    let done = run(&|| s3.expect(200, "POST", &query, &[], Body::Data(complete.as_bytes())));
    let done = String::from_utf8(done.body).unwrap();
    assert!(done.contains("<CompleteMultipartUploadResult") && !done.contains("<Error>"), "{done}");

    let base = &made.store_path["/nix/store/".len()..];
    let hash = &base[..32];
    let narinfo = format!(
        "StorePath: {}\nURL: {key}\nCompression: none\nFileHash: sha256:{h}\nFileSize: {n}\nNarHash: sha256:{h}\n\
         NarSize: {n}\nReferences: \nCA: fixed:r:sha256:{h}\n",
        made.store_path,
        h = made.nar_hash,
        n = made.nar.len()
    );
    run(&|| s3.expect(404, "HEAD", &format!("{hash}.narinfo"), &[], Body::None));
    let narinfo_file = s3.file("big.narinfo", narinfo.as_bytes());
    run(&|| {
        s3.put_file(&format!("{hash}.narinfo"), &narinfo_file, &[("Content-Type", "text/x-nix-narinfo")])
    });
    run(&|| s3.expect(200, "HEAD", &format!("{hash}.narinfo"), &[], Body::None));
    let served = run(&|| s3.expect(200, "GET", &format!("{hash}.narinfo"), &[], Body::None));
    let served = String::from_utf8(served.body).unwrap();
    assert_eq!(field(&served, "StorePath"), made.store_path, "{served}");
    assert_eq!(field(&served, "NarHash"), format!("sha256:{}", made.nar_hash), "{served}");
    let nar = run(&|| s3.expect(200, "GET", &key, &[], Body::None));
    assert!(nar.body == made.nar, "the multipart-uploaded NAR reads back as nix-store --dump wrote it");
}
