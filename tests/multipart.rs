//! Multipart uploads as S3 clients send them: the real `aws-sdk-s3` client (default checksums
//! on) against gateways over the fs backend and a real Garage. Parts go in out of order, from two
//! gateways over one backend; Complete writes the object through the same path as PutObject (a
//! NAR key is ingested and rendered back byte for byte); the `-N` ETag, ListParts,
//! ListMultipartUploads, Abort, retried and concurrent Completes, and every S3 error of the rules
//! (BadDigest, EntityTooSmall, InvalidPart, InvalidPartOrder, InvalidArgument, NoSuchUpload).
//!
//! The 10,000-part limit is proven for real on fs with a test-injected minimum part size of one
//! byte (10,000 parts at S3's 5 MiB would be 50 GB); over Garage, the part-number rules are checked
//! and parts at the top numbers are completed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine;
use common::gateway::{TestGateway, start_with, test_options};
use common::{failure, pseudo_random};
use futures::StreamExt;
use nargate::backend::counting::CountingBackend;
use nargate::backend::{self, DynBackend, Op};
use nargate::cache::md5;
use nargate::cache::uploads::{MIN_PART_SIZE, UploadOptions};
use nargate::gateway::GatewayOptions;

macro_rules! suite {
    ($($check:ident),* $(,)?) => {
        mod fs {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let (_dir, backend) = crate::common::fs_backend();
                    super::$check(backend).await
                }
            )*
        }
        mod garage {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let backend = crate::common::garage_backend().await;
                    super::$check(backend).await
                }
            )*
        }
    };
}

suite!(
    plain_object_out_of_order_with_its_etag,
    lists_abort_and_errors,
    parts_from_two_gateways,
    nar_by_multipart_is_ingested,
    nar_parts_are_ingested_as_they_arrive,
    top_part_numbers,
    checksums_composite_and_full_object,
);

/// A gateway over `backend` whose uploads need parts of at least `min_part_size` (but the last).
async fn gateway(backend: DynBackend, min_part_size: u64) -> TestGateway {
    let uploads = UploadOptions { min_part_size, ..Default::default() };
    start_with(backend, GatewayOptions { uploads, ..test_options() }).await
}

async fn bucket(gw: &TestGateway, name: &str) {
    gw.client().create_bucket().bucket(name).send().await.unwrap();
}

async fn create(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> String {
    let out = client.create_multipart_upload().bucket(bucket).key(key).send().await.unwrap();
    out.upload_id().unwrap().to_owned()
}

async fn upload_part(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    id: &str,
    number: i32,
    data: Vec<u8>,
) -> String {
    let out = part_request(client, bucket, key, id, number, data)
        .send()
        .await
        .unwrap_or_else(|e| panic!("part {number}: {e:?}"));
    out.e_tag().expect("UploadPart answers an ETag").to_owned()
}

/// An UploadPart of `data` as part `number` of upload `id` of `bucket`/`key`, to send as it is
/// or with more (a Content-MD5, a checksum).
fn part_request(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    id: &str,
    number: i32,
    data: Vec<u8>,
) -> aws_sdk_s3::operation::upload_part::builders::UploadPartFluentBuilder {
    client
        .upload_part()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .part_number(number)
        .body(ByteStream::from(data))
}

/// Uploads `parts` (number, bytes) at most `concurrency` at a time, in the order given; returns
/// the completed-part list in ascending order.
async fn upload_parts(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    id: &str,
    parts: Vec<(i32, Vec<u8>)>,
    concurrency: usize,
) -> Vec<CompletedPart> {
    let mut done: Vec<CompletedPart> = futures::stream::iter(parts)
        .map(|(number, data)| async move {
            let etag = upload_part(client, bucket, key, id, number, data.clone()).await;
            assert_eq!(etag, format!("\"{}\"", hex::encode(md5(&data))), "a part's ETag is its MD5");
            CompletedPart::builder().part_number(number).e_tag(etag).build()
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    done.sort_by_key(|p| p.part_number());
    done
}

async fn complete(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    id: &str,
    parts: &[CompletedPart],
) -> Result<String, (u16, String)> {
    let list = CompletedMultipartUpload::builder().set_parts(Some(parts.to_vec())).build();
    let result = client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .multipart_upload(list)
        .send()
        .await;
    match result {
        Ok(out) => Ok(out.e_tag().unwrap_or_default().to_owned()),
        Err(e) => {
            eprintln!("Complete failed: {e:?}");
            Err(failure::<(), _>(Err(e)))
        }
    }
}

async fn get(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> (Vec<u8>, String) {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {key}: {e:?}"));
    let etag = out.e_tag().unwrap_or_default().to_owned();
    (out.body.collect().await.unwrap().into_bytes().to_vec(), etag)
}

/// The ETag S3 gives an object of these parts.
fn expected_etag(parts: &[&[u8]]) -> String {
    let joined: Vec<u8> = parts.iter().flat_map(|p| md5(p)).collect();
    format!("\"{}-{}\"", hex::encode(md5(&joined)), parts.len())
}

/// Every backend key under `prefix`.
async fn backend_keys(backend: &DynBackend, prefix: &str) -> Vec<String> {
    backend::list_all(backend.as_ref(), prefix).await.unwrap().into_iter().map(|o| o.key).collect()
}

/// Six parts at S3's minimum size (the last smaller), sent out of order ten at a time, as the aws
/// cli does; the object reads back whole, with the `-N` ETag on GET and HEAD; the staging is gone;
/// a retried Complete answers the same.
async fn plain_object_out_of_order_with_its_etag(backend: DynBackend) {
    let gw = gateway(backend.clone(), MIN_PART_SIZE).await;
    bucket(&gw, "mpu").await;
    let client = gw.client();
    let key = "log/big.bin";
    let id = create(&client, "mpu", key).await;
    let size = MIN_PART_SIZE as usize;
    let data: Vec<Vec<u8>> =
        (0..6).map(|i| pseudo_random(if i == 5 { 1000 } else { size }, i as u64 + 1)).collect();
    let order = [4, 2, 6, 1, 5, 3];
    let parts = order.iter().map(|&n| (n, data[n as usize - 1].clone())).collect();
    let completed = upload_parts(&client, "mpu", key, &id, parts, 10).await;

    let listed = client.list_parts().bucket("mpu").key(key).upload_id(&id).send().await.unwrap();
    let numbers: Vec<i32> = listed.parts().iter().map(|p| p.part_number().unwrap()).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5, 6]);
    for (part, bytes) in listed.parts().iter().zip(&data) {
        assert_eq!(part.size(), Some(bytes.len() as i64));
        assert_eq!(part.e_tag(), Some(format!("\"{}\"", hex::encode(md5(bytes))).as_str()));
    }

    let etag = complete(&client, "mpu", key, &id, &completed).await.unwrap();
    let slices: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    assert_eq!(etag, expected_etag(&slices));
    let (got, got_etag) = get(&client, "mpu", key).await;
    assert!(got == data.concat(), "the object is the parts in order");
    assert_eq!(got_etag, etag);
    let head = client.head_object().bucket("mpu").key(key).send().await.unwrap();
    assert_eq!(head.e_tag(), Some(etag.as_str()));
    assert_eq!(head.content_length(), Some(data.concat().len() as i64));
    assert!(head.metadata().is_none_or(|m| m.is_empty()), "the gateway's metadata is not shown: {head:?}");
    assert_eq!(backend_keys(&backend, "uploads/mpu/").await, Vec::<String>::new(), "staging removed");

    // A retried Complete (its answer lost) succeeds with the same ETag.
    assert_eq!(complete(&client, "mpu", key, &id, &completed).await.unwrap(), etag);
    // Under another key, that id names nothing.
    assert_eq!(complete(&client, "mpu", "other", &id, &completed).await.unwrap_err().1, "NoSuchUpload");
}

/// ListMultipartUploads, ListParts, Abort, and every error of the rules.
async fn lists_abort_and_errors(backend: DynBackend) {
    let gw = gateway(backend.clone(), MIN_PART_SIZE).await;
    bucket(&gw, "mpu").await;
    let client = gw.client();
    // Nix >= 2.33 sends the whole object's Content-MD5 with CreateMultipartUpload: ignored.
    let whole_md5 = base64::engine::general_purpose::STANDARD.encode(md5(b"the whole object"));
    let a = client
        .create_multipart_upload()
        .bucket("mpu")
        .key("a/one")
        .customize()
        .mutate_request(move |r| {
            r.headers_mut().insert("content-md5", whole_md5.clone());
        })
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_owned();
    let b = create(&client, "mpu", "b/two").await;
    let listed = client.list_multipart_uploads().bucket("mpu").send().await.unwrap();
    let uploads: Vec<(&str, &str)> =
        listed.uploads().iter().map(|u| (u.key().unwrap(), u.upload_id().unwrap())).collect();
    assert_eq!(uploads, [("a/one", a.as_str()), ("b/two", b.as_str())]);
    let prefixed = client.list_multipart_uploads().bucket("mpu").prefix("b/").send().await.unwrap();
    assert_eq!(prefixed.uploads().len(), 1);
    let rolled = client.list_multipart_uploads().bucket("mpu").delimiter("/").send().await.unwrap();
    let prefixes: Vec<&str> = rolled.common_prefixes().iter().map(|p| p.prefix().unwrap()).collect();
    assert_eq!(prefixes, ["a/", "b/"]);
    let page = client.list_multipart_uploads().bucket("mpu").max_uploads(1).send().await.unwrap();
    assert_eq!(page.is_truncated(), Some(true));
    let next = client
        .list_multipart_uploads()
        .bucket("mpu")
        .key_marker(page.next_key_marker().unwrap())
        .upload_id_marker(page.next_upload_id_marker().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(next.uploads().iter().map(|u| u.key().unwrap()).collect::<Vec<_>>(), ["b/two"]);
    assert_eq!(next.is_truncated(), Some(false));
    // Two uploads of one key page one at a time too (markers: key and upload id).
    let again = create(&client, "mpu", "a/one").await;
    let mut seen = vec![];
    let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
    loop {
        let page = client
            .list_multipart_uploads()
            .bucket("mpu")
            .max_uploads(1)
            .set_key_marker(key_marker.clone())
            .set_upload_id_marker(id_marker.clone())
            .send()
            .await
            .unwrap();
        seen.extend(
            page.uploads().iter().map(|u| (u.key().unwrap().to_owned(), u.upload_id().unwrap().to_owned())),
        );
        if page.is_truncated() != Some(true) {
            break;
        }
        key_marker = page.next_key_marker().map(str::to_owned);
        id_marker = page.next_upload_id_marker().map(str::to_owned);
        assert!(seen.len() < 10, "paging does not end: {seen:?}");
    }
    let keys: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a/one", "a/one", "b/two"]);
    let mut ids: Vec<&str> = seen[..2].iter().map(|(_, id)| id.as_str()).collect();
    ids.sort();
    let mut expected = vec![a.as_str(), again.as_str()];
    expected.sort();
    assert_eq!(ids, expected);
    client.abort_multipart_upload().bucket("mpu").key("a/one").upload_id(&again).send().await.unwrap();

    // Content-MD5 is checked: BadDigest, and nothing is staged.
    let wrong = base64::engine::general_purpose::STANDARD.encode(md5(b"something else"));
    let result =
        part_request(&client, "mpu", "a/one", &a, 1, b"part one".to_vec()).content_md5(wrong).send().await;
    assert_eq!(failure(result), (400, "BadDigest".into()));
    let parts = client.list_parts().bucket("mpu").key("a/one").upload_id(&a).send().await.unwrap();
    assert!(parts.parts().is_empty(), "{parts:?}");

    // Part numbers are 1..=10000.
    for number in [0, 10_001] {
        let result = part_request(&client, "mpu", "a/one", &a, number, b"x".to_vec()).send().await;
        assert_eq!(failure(result), (400, "InvalidArgument".into()), "part {number}");
    }

    // Two small parts: EntityTooSmall (S3's 5 MiB minimum for all but the last).
    let one = upload_part(&client, "mpu", "a/one", &a, 1, b"part one".to_vec()).await;
    let two = upload_part(&client, "mpu", "a/one", &a, 2, b"part two".to_vec()).await;
    let part = |n: i32, etag: &str| CompletedPart::builder().part_number(n).e_tag(etag).build();
    assert_eq!(
        complete(&client, "mpu", "a/one", &a, &[part(1, &one), part(2, &two)]).await,
        Err((400, "EntityTooSmall".into()))
    );
    // A part not uploaded, or not with that ETag: InvalidPart; out of order: InvalidPartOrder.
    assert_eq!(
        complete(&client, "mpu", "a/one", &a, &[part(1, &two)]).await,
        Err((400, "InvalidPart".into()))
    );
    assert_eq!(
        complete(&client, "mpu", "a/one", &a, &[part(3, &one)]).await,
        Err((400, "InvalidPart".into()))
    );
    assert_eq!(
        complete(&client, "mpu", "a/one", &a, &[part(2, &two), part(1, &one)]).await,
        Err((400, "InvalidPartOrder".into()))
    );
    // A single part may be small: the upload of one part completes.
    let single = complete(&client, "mpu", "a/one", &a, &[part(1, &one)]).await.unwrap();
    assert_eq!(single, expected_etag(&[b"part one"]));
    assert_eq!(get(&client, "mpu", "a/one").await.0, b"part one");

    // Abort: the upload and its parts go; then every operation on it is NoSuchUpload.
    upload_part(&client, "mpu", "b/two", &b, 7, b"seven".to_vec()).await;
    assert!(!backend_keys(&backend, &format!("uploads/mpu/{b}")).await.is_empty());
    client.abort_multipart_upload().bucket("mpu").key("b/two").upload_id(&b).send().await.unwrap();
    assert_eq!(backend_keys(&backend, &format!("uploads/mpu/{b}")).await, Vec::<String>::new());
    let result = client.list_parts().bucket("mpu").key("b/two").upload_id(&b).send().await;
    assert_eq!(failure(result), (404, "NoSuchUpload".into()));
    let result = client.abort_multipart_upload().bucket("mpu").key("b/two").upload_id(&b).send().await;
    assert_eq!(failure(result), (404, "NoSuchUpload".into()));
    let result = part_request(&client, "mpu", "b/two", &b, 1, b"x".to_vec()).send().await;
    assert_eq!(failure(result), (404, "NoSuchUpload".into()));
    assert_eq!(complete(&client, "mpu", "b/two", &b, &[part(7, "x")]).await.unwrap_err().1, "NoSuchUpload");
    let made_up = "0".repeat(32);
    let result = client.list_parts().bucket("mpu").key("b/two").upload_id(&made_up).send().await;
    assert_eq!(failure(result), (404, "NoSuchUpload".into()));
    let result = client.list_parts().bucket("mpu").key("b/two").upload_id("../../caches").send().await;
    assert_eq!(failure(result), (404, "NoSuchUpload".into()));
    let listed = client.list_multipart_uploads().bucket("mpu").send().await.unwrap();
    assert!(listed.uploads().is_empty(), "{listed:?}");

    // store/ is a read-only view; an unknown bucket is NoSuchBucket.
    for key in ["store/x-y.nar", "tree/0ajq4jh4ilbfzw8lhvgxcp0b5bsdr8al-a/b"] {
        let result = client.create_multipart_upload().bucket("mpu").key(key).send().await;
        assert_eq!(failure(result), (400, "InvalidRequest".into()), "{key}");
    }
    let result = client.create_multipart_upload().bucket("nope").key("k").send().await;
    assert_eq!(failure(result), (404, "NoSuchBucket".into()));

    // The bucket empties: DeleteBucket succeeds with no open upload, and leaves no upload record.
    let open = create(&client, "mpu", "left/open").await;
    client.delete_object().bucket("mpu").key("a/one").send().await.unwrap();
    let result = client.delete_bucket().bucket("mpu").send().await;
    assert_eq!(failure(result), (409, "BucketNotEmpty".into()), "an open upload keeps the bucket");
    client.abort_multipart_upload().bucket("mpu").key("left/open").upload_id(&open).send().await.unwrap();
    client.delete_bucket().bucket("mpu").send().await.unwrap();
    let left: Vec<String> =
        backend_keys(&backend, "uploads/").await.into_iter().filter(|k| k.contains("/mpu/")).collect();
    assert_eq!(left, Vec::<String>::new());
}

/// Parts sent to two gateways over one backend, completed through the second, read through the
/// first.
async fn parts_from_two_gateways(backend: DynBackend) {
    let one = gateway(backend.clone(), 1024).await;
    let two = gateway(backend.clone(), 1024).await;
    bucket(&one, "mpu").await;
    let (c1, c2) = (one.client(), two.client());
    let key = "realisations/x.doi";
    let id = create(&c1, "mpu", key).await;
    let data: Vec<Vec<u8>> = (0..5).map(|i| pseudo_random(2048 + i * 100, 40 + i as u64)).collect();
    let mut completed = vec![];
    for (i, part) in data.iter().enumerate().rev() {
        let client = if i % 2 == 0 { &c1 } else { &c2 };
        let etag = upload_part(client, "mpu", key, &id, i as i32 + 1, part.clone()).await;
        completed.push(CompletedPart::builder().part_number(i as i32 + 1).e_tag(etag).build());
    }
    completed.reverse();
    let listed = c2.list_parts().bucket("mpu").key(key).upload_id(&id).send().await.unwrap();
    assert_eq!(listed.parts().len(), 5);
    let etag = complete(&c2, "mpu", key, &id, &completed).await.unwrap();
    let slices: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    assert_eq!(etag, expected_etag(&slices));
    let (got, got_etag) = get(&c1, "mpu", key).await;
    assert!(got == data.concat());
    assert_eq!(got_etag, etag);
    // The first gateway answers a retried Complete too.
    assert_eq!(complete(&c1, "mpu", key, &id, &completed).await.unwrap(), etag);
}

/// A NAR larger than four 5 MiB parts, uploaded by multipart out of order to
/// `nar/<narhash>.nar`, is ingested as a PutObject of it would be: it renders back byte for byte.
/// One whose bytes are not the key's NarHash is refused (BadDigest) and nothing shows.
async fn nar_by_multipart_is_ingested(backend: DynBackend) {
    let gw = gateway(backend.clone(), MIN_PART_SIZE).await;
    bucket(&gw, "nix").await;
    let client = gw.client();
    let nar = big_nar();
    assert!(nar.len() > 4 * MIN_PART_SIZE as usize, "{}", nar.len());
    let nar_hash = nargate::nix::nixbase32::encode(&sha256(&nar));
    let key = format!("nar/{nar_hash}.nar");
    let id = create(&client, "nix", &key).await;
    let parts: Vec<(i32, Vec<u8>)> = nar
        .chunks(MIN_PART_SIZE as usize)
        .enumerate()
        .map(|(i, c)| (i as i32 + 1, c.to_vec()))
        .rev()
        .collect();
    let count = parts.len();
    let completed = upload_parts(&client, "nix", &key, &id, parts, 3).await;
    assert_eq!(completed.len(), count);
    complete(&client, "nix", &key, &id, &completed).await.unwrap();
    let (got, etag) = get(&client, "nix", &key).await;
    assert!(got == nar, "the NAR renders back as uploaded ({} bytes, {})", got.len(), nar.len());
    assert_eq!(etag, format!("\"{}\"", hex::encode(md5(&nar))), "a NAR's ETag is its MD5");
    assert_eq!(backend_keys(&backend, "uploads/nix/").await, Vec::<String>::new());

    // The same bytes under another NarHash: BadDigest, and the key shows nothing.
    let mut other = sha256(&nar);
    other[0] ^= 1;
    let wrong_key = format!("nar/{}.nar", nargate::nix::nixbase32::encode(&other));
    let id = create(&client, "nix", &wrong_key).await;
    let parts =
        nar.chunks(MIN_PART_SIZE as usize).enumerate().map(|(i, c)| (i as i32 + 1, c.to_vec())).collect();
    let completed = upload_parts(&client, "nix", &wrong_key, &id, parts, 3).await;
    assert_eq!(complete(&client, "nix", &wrong_key, &id, &completed).await.unwrap_err().1, "BadDigest");
    let result = client.head_object().bucket("nix").key(&wrong_key).send().await;
    assert_eq!(failure(result).0, 404);
}

/// The parts of a NAR upload are ingested as they arrive (out of order, but in order once they
/// join): before its last part is sent, chunks of it are stored, while its key shows nothing.
/// A part taken by the ingest and then uploaded again with other bytes makes Complete ingest the
/// upload from its start: the object is made of the parts Complete names.
async fn nar_parts_are_ingested_as_they_arrive(backend: DynBackend) {
    let gw = gateway(backend.clone(), MIN_PART_SIZE).await;
    bucket(&gw, "nix").await;
    let client = gw.client();
    let nar = big_nar();
    let key = format!("nar/{}.nar", nargate::nix::nixbase32::encode(&sha256(&nar)));
    let id = create(&client, "nix", &key).await;
    let mut parts: Vec<(i32, Vec<u8>)> =
        nar.chunks(MIN_PART_SIZE as usize).enumerate().map(|(i, c)| (i as i32 + 1, c.to_vec())).collect();
    let last = parts.pop().unwrap();
    parts.swap(0, 1);
    let mut completed = upload_parts(&client, "nix", &key, &id, parts, 1).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut stored = 0;
    while stored == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stored = backend_keys(&backend, "chunks/").await.len();
    }
    assert!(stored > 0, "chunks of the parts sent are stored before the upload is complete");
    assert_eq!(failure(client.head_object().bucket("nix").key(&key).send().await).0, 404);
    completed.extend(upload_parts(&client, "nix", &key, &id, vec![last], 1).await);
    complete(&client, "nix", &key, &id, &completed).await.unwrap();
    let (got, _) = get(&client, "nix", &key).await;
    assert!(got == nar, "the NAR renders back as uploaded");

    // Another NAR (a byte of the large file changed, in the first part): its upload starts
    // with the first NAR's part 1, which the ingest takes, then part 1 is sent again, right.
    let mut other = nar.clone();
    other[1 << 20] ^= 0x5a;
    let other_key = format!("nar/{}.nar", nargate::nix::nixbase32::encode(&sha256(&other)));
    let id = create(&client, "nix", &other_key).await;
    upload_part(&client, "nix", &other_key, &id, 1, nar[..MIN_PART_SIZE as usize].to_vec()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let parts =
        other.chunks(MIN_PART_SIZE as usize).enumerate().map(|(i, c)| (i as i32 + 1, c.to_vec())).collect();
    let completed = upload_parts(&client, "nix", &other_key, &id, parts, 2).await;
    complete(&client, "nix", &other_key, &id, &completed).await.expect("ingested from the parts named");
    let (got, _) = get(&client, "nix", &other_key).await;
    assert!(got == other, "the object is the parts Complete names");
}

/// Parts of a NAR sent in turn are teed: their bytes go to staging and to the ingest at once,
/// and no staged part is read back. A teed part that fails (its Content-MD5 is wrong) is
/// BadDigest, and the upload, that part sent again, completes with the NAR its parts make.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_sent_in_turn_are_not_read_back() {
    let counting = Arc::new(CountingBackend::new(common::garage_backend().await));
    let gw = gateway(counting.clone(), MIN_PART_SIZE).await;
    bucket(&gw, "nix").await;
    let client = gw.client();
    let staged_reads = || {
        let requests = counting.requests();
        requests.iter().filter(|(op, key)| *op == Op::Get && key.contains("/data/")).count()
    };
    let parts_of = |nar: &[u8]| -> Vec<(i32, Vec<u8>)> {
        nar.chunks(MIN_PART_SIZE as usize).enumerate().map(|(i, c)| (i as i32 + 1, c.to_vec())).collect()
    };

    let nar = big_nar();
    let key = format!("nar/{}.nar", nargate::nix::nixbase32::encode(&sha256(&nar)));
    let id = create(&client, "nix", &key).await;
    let parts = parts_of(&nar);
    assert!(parts.len() >= 4);
    let completed = upload_parts(&client, "nix", &key, &id, parts, 1).await;
    complete(&client, "nix", &key, &id, &completed).await.unwrap();
    assert!(get(&client, "nix", &key).await.0 == nar, "the NAR renders back as uploaded");
    assert_eq!(staged_reads(), 0, "no staged part was read back");

    let mut other = nar.clone();
    other[1 << 20] ^= 0x5a;
    let other_key = format!("nar/{}.nar", nargate::nix::nixbase32::encode(&sha256(&other)));
    let id = create(&client, "nix", &other_key).await;
    let mut parts = parts_of(&other);
    upload_part(&client, "nix", &other_key, &id, 1, parts[0].1.clone()).await;
    let wrong = base64::engine::general_purpose::STANDARD.encode(md5(b"other bytes"));
    let refused =
        part_request(&client, "nix", &other_key, &id, 2, parts[1].1.clone()).content_md5(wrong).send().await;
    assert_eq!(failure(refused), (400, "BadDigest".to_owned()));
    parts.remove(0);
    let mut completed = upload_parts(&client, "nix", &other_key, &id, parts, 1).await;
    completed.insert(
        0,
        CompletedPart::builder()
            .part_number(1)
            .e_tag(format!("\"{}\"", hex::encode(md5(&other[..MIN_PART_SIZE as usize]))))
            .build(),
    );
    complete(&client, "nix", &other_key, &id, &completed).await.expect("ingested from staging");
    assert!(get(&client, "nix", &other_key).await.0 == other, "the object is the parts Complete names");
}

/// The top part numbers complete (an upload may skip numbers), and the rules hold at the edge.
async fn top_part_numbers(backend: DynBackend) {
    let gw = gateway(backend.clone(), 1).await;
    bucket(&gw, "mpu").await;
    let client = gw.client();
    let id = create(&client, "mpu", "edge").await;
    let parts: Vec<(i32, Vec<u8>)> = (9_990..=10_000).map(|n| (n, n.to_string().into_bytes())).collect();
    let expected: Vec<u8> = parts.iter().flat_map(|(_, d)| d.clone()).collect();
    let completed = upload_parts(&client, "mpu", "edge", &id, parts, 4).await;
    complete(&client, "mpu", "edge", &id, &completed).await.unwrap();
    assert_eq!(get(&client, "mpu", "edge").await.0, expected);
}

/// A real 10,000-part upload (one byte each, with the minimum part size injected), then one
/// more part number refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_parts_on_fs() {
    let (_dir, backend) = common::fs_backend();
    let gw = gateway(backend.clone(), 1).await;
    bucket(&gw, "mpu").await;
    let client = gw.client();
    let id = create(&client, "mpu", "many").await;
    let parts: Vec<(i32, Vec<u8>)> = (1..=10_000).map(|n| (n, vec![(n % 251) as u8])).collect();
    let expected: Vec<u8> = parts.iter().map(|(_, d)| d[0]).collect();
    let completed = upload_parts(&client, "mpu", "many", &id, parts, 16).await;
    let listed = client.list_parts().bucket("mpu").key("many").upload_id(&id).send().await.unwrap();
    assert_eq!((listed.parts().len(), listed.is_truncated()), (1000, Some(true)));
    assert_eq!(listed.next_part_number_marker(), Some("1000"));
    let etag = complete(&client, "mpu", "many", &id, &completed).await.unwrap();
    assert!(etag.ends_with("-10000\""), "{etag}");
    assert_eq!(get(&client, "mpu", "many").await.0, expected);
}

/// A Complete slower than the quick window answers 200 at once and keeps the connection alive
/// until its result; a second Complete sent meanwhile joins it; both get the ETag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_completes_keep_alive_and_join() {
    let dir = tempfile::tempdir().unwrap();
    let fs = nargate::backend::fs::FsBackend::new(dir.path().join("b")).unwrap();
    let faulty = Arc::new(nargate::backend::fault::FaultyBackend::new(fs));
    let backend: DynBackend = faulty.clone();
    let gw = gateway(backend.clone(), 1).await;
    bucket(&gw, "mpu").await;
    let client = gw.client();
    let id = create(&client, "mpu", "slow").await;
    let data: Vec<Vec<u8>> = (0..8).map(|i| pseudo_random(100, i)).collect();
    let parts = data.iter().enumerate().map(|(i, d)| (i as i32 + 1, d.clone())).collect();
    let completed = upload_parts(&client, "mpu", "slow", &id, parts, 4).await;
    // Every backend request now takes 300 ms: writing the object takes several seconds.
    faulty.set_latency(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let (first, second) = tokio::join!(complete(&client, "mpu", "slow", &id, &completed), async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        complete(&client, "mpu", "slow", &id, &completed).await
    });
    assert!(started.elapsed() > nargate::gateway::multipart::QUICK_COMPLETE, "{:?}", started.elapsed());
    let slices: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    assert_eq!(first.unwrap(), expected_etag(&slices));
    assert_eq!(second.unwrap(), expected_etag(&slices));
    faulty.clear();
    assert_eq!(get(&client, "mpu", "slow").await.0, data.concat());

    // A slow Complete that fails says why in its kept-alive body, as S3 does (a `200` whose body
    // is an error), and the upload stays open.
    let id = create(&client, "mpu", "fails").await;
    let completed = upload_parts(&client, "mpu", "fails", &id, vec![(1, b"doomed".to_vec())], 1).await;
    // Each request 1 s: the failure comes after the quick window.
    faulty.set_latency(Duration::from_secs(1));
    faulty.fail_op_prefix(nargate::backend::Op::Put, "caches/mpu/raw/fails");
    let (status, code) = complete(&client, "mpu", "fails", &id, &completed).await.unwrap_err();
    assert_eq!((status, code.as_str()), (200, "ServiceUnavailable"));
    faulty.clear();
    client.list_parts().bucket("mpu").key("fails").upload_id(&id).send().await.unwrap();
}

/// Uploads nothing was written to for the grace period are removed by the sweep the repair pass
/// runs; others stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_are_removed() {
    let (_dir, backend) = common::fs_backend();
    let uploads = UploadOptions { abandon_after: Duration::ZERO, min_part_size: 1 };
    let gw = start_with(backend.clone(), GatewayOptions { uploads, ..test_options() }).await;
    bucket(&gw, "mpu").await;
    let client = gw.client();
    let id = create(&client, "mpu", "gone").await;
    upload_part(&client, "mpu", "gone", &id, 1, b"abc".to_vec()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(gw.gateway.remove_abandoned_uploads().await.unwrap(), 1);
    assert_eq!(backend_keys(&backend, "uploads/mpu/").await, Vec::<String>::new());
    let result = client.list_parts().bucket("mpu").key("gone").upload_id(&id).send().await;
    assert_eq!(failure(result), (404, "NoSuchUpload".into()));
    // With the default grace of a day, a fresh upload stays.
    let kept = GatewayOptions { ..test_options() };
    let gw2 = start_with(backend.clone(), kept).await;
    let id = create(&gw2.client(), "mpu", "kept").await;
    assert_eq!(gw2.gateway.remove_abandoned_uploads().await.unwrap(), 0);
    gw2.client().list_parts().bucket("mpu").key("kept").upload_id(&id).send().await.unwrap();
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

/// A NAR of about 22 MiB: a directory of files of pseudo-random contents (a large one, some
/// small ones, a symlink), written with the project's NAR writer.
fn big_nar() -> Vec<u8> {
    let mut w = nargate::nix::nar::writer::NarWriter::new(Vec::new()).unwrap();
    w.directory_start().unwrap();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a-large", pseudo_random(21 << 20, 7)),
        ("b-small", pseudo_random(10_000, 8)),
        ("c-medium", pseudo_random(600_000, 9)),
    ];
    for (name, contents) in &files {
        w.entry_start(name.as_bytes()).unwrap();
        w.file(name.starts_with('b'), contents).unwrap();
        w.entry_end().unwrap();
    }
    w.entry_start(b"d-link").unwrap();
    w.symlink(b"a-large").unwrap();
    w.entry_end().unwrap();
    w.directory_end().unwrap();
    w.finish().unwrap()
}

/// The raw checksum of `data` by `alg` (`crc32` or `crc64nvme`), computed here.
fn raw_checksum(alg: &str, data: &[u8]) -> Vec<u8> {
    use s3s::crypto::Checksum as _;
    match alg {
        "crc32" => s3s::crypto::Crc32::checksum(data).to_vec(),
        _ => s3s::crypto::Crc64Nvme::checksum(data).to_vec(),
    }
}

fn b64(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// An upload created with a checksum algorithm, whose parts carry their checksums: Complete, HEAD
/// and GET with checksum mode answer the object's — CRC32 COMPOSITE (the CRC32 of the parts'
/// CRC32s, `-N`), CRC64NVME FULL_OBJECT (the whole object's, larger than one S3-backend part
/// here, so the backend's multipart path keeps it too) — and the `-N` ETag stays.
async fn checksums_composite_and_full_object(backend: DynBackend) {
    use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, ChecksumType};
    let gw = gateway(backend, 1 << 20).await;
    bucket(&gw, "sums").await;
    let client = gw.client();
    let cases = [
        ("crc32", ChecksumAlgorithm::Crc32, vec![(1 << 20) + 7, 1 << 20, 1_000]),
        ("crc64nvme", ChecksumAlgorithm::Crc64Nvme, vec![5 << 20, (4 << 20) + 3]),
    ];
    for (alg, algorithm, sizes) in cases {
        let key = format!("log/{alg}");
        let parts: Vec<Vec<u8>> =
            sizes.iter().enumerate().map(|(i, n)| pseudo_random(*n, 90 + i as u64)).collect();
        let created = client
            .create_multipart_upload()
            .bucket("sums")
            .key(&key)
            .checksum_algorithm(algorithm.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(created.checksum_algorithm(), Some(&algorithm));
        let id = created.upload_id().unwrap();
        let mut completed = vec![];
        for (i, data) in parts.iter().enumerate() {
            let number = i as i32 + 1;
            let out = part_request(&client, "sums", &key, id, number, data.clone())
                .checksum_algorithm(algorithm.clone())
                .send()
                .await
                .unwrap();
            let sum = b64(&raw_checksum(alg, data));
            let answered = if alg == "crc32" { out.checksum_crc32() } else { out.checksum_crc64_nvme() };
            assert_eq!(answered, Some(sum.as_str()), "part {number} of {alg}");
            let part = CompletedPart::builder().part_number(number).set_e_tag(out.e_tag().map(str::to_owned));
            completed.push(match alg {
                "crc32" => part.checksum_crc32(sum).build(),
                _ => part.checksum_crc64_nvme(sum).build(),
            });
        }
        let (expected, expected_type) = match alg {
            "crc32" => {
                let sums: Vec<u8> = parts.iter().flat_map(|p| raw_checksum(alg, p)).collect();
                (format!("{}-{}", b64(&raw_checksum(alg, &sums)), parts.len()), ChecksumType::Composite)
            }
            _ => (b64(&raw_checksum(alg, &parts.concat())), ChecksumType::FullObject),
        };
        // ListParts shows each part's checksum, as its UploadPart answered it.
        let listed = client.list_parts().bucket("sums").key(&key).upload_id(id).send().await.unwrap();
        let listed: Vec<Option<&str>> = listed
            .parts()
            .iter()
            .map(|p| if alg == "crc32" { p.checksum_crc32() } else { p.checksum_crc64_nvme() })
            .collect();
        let sent: Vec<Option<&str>> = completed
            .iter()
            .map(|p| if alg == "crc32" { p.checksum_crc32() } else { p.checksum_crc64_nvme() })
            .collect();
        assert_eq!(listed, sent, "ListParts of {alg}");
        // A Complete that names another checksum for a part: InvalidPart, and the upload stays.
        let mut wrong = completed.clone();
        let other = b64(&raw_checksum(alg, b"other bytes"));
        let first = CompletedPart::builder().part_number(1).set_e_tag(wrong[0].e_tag().map(str::to_owned));
        wrong[0] = match alg {
            "crc32" => first.checksum_crc32(other).build(),
            _ => first.checksum_crc64_nvme(other).build(),
        };
        let refused = client
            .complete_multipart_upload()
            .bucket("sums")
            .key(&key)
            .upload_id(id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(wrong)).build())
            .send()
            .await;
        assert_eq!(failure(refused), (400, "InvalidPart".into()), "{alg}");

        let list = CompletedMultipartUpload::builder().set_parts(Some(completed)).build();
        let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        // A retried Complete (its first answer lost) answers as the first did, from the record
        // of the finished upload.
        for attempt in ["first", "retried"] {
            let done = client
                .complete_multipart_upload()
                .bucket("sums")
                .key(&key)
                .upload_id(id)
                .multipart_upload(list.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(done.e_tag(), Some(expected_etag(&slices).as_str()), "{attempt} Complete");
            let of_done = if alg == "crc32" { done.checksum_crc32() } else { done.checksum_crc64_nvme() };
            assert_eq!(
                (of_done, done.checksum_type()),
                (Some(expected.as_str()), Some(&expected_type)),
                "{alg}, {attempt} Complete"
            );
        }

        let head =
            client.head_object().bucket("sums").key(&key).checksum_mode(ChecksumMode::Enabled).send().await;
        let head = head.unwrap();
        let of_head = if alg == "crc32" { head.checksum_crc32() } else { head.checksum_crc64_nvme() };
        assert_eq!((of_head, head.checksum_type()), (Some(expected.as_str()), Some(&expected_type)), "{alg}");
        assert_eq!(head.e_tag(), Some(expected_etag(&slices).as_str()), "{alg}");
        assert!(head.metadata().is_none_or(|m| m.is_empty()), "nothing of the gateway's shows: {head:?}");

        let got =
            client.get_object().bucket("sums").key(&key).checksum_mode(ChecksumMode::Enabled).send().await;
        let got = got.unwrap();
        let of_get = if alg == "crc32" { got.checksum_crc32() } else { got.checksum_crc64_nvme() };
        assert_eq!(of_get, Some(expected.as_str()), "{alg}");
        // For a full-object checksum, the SDK checks the body against it as it reads.
        assert!(got.body.collect().await.unwrap().into_bytes() == parts.concat(), "{alg}");
    }

    // A NAR, uploaded as the aws cli ≥ 2.23 uploads one (CRC64NVME, full object): its bytes go
    // to the ingest, and Complete answers the checksum made of the parts' own.
    let nar = nargate::nix::nar::write_nar(&nargate::nix::nar::NarNode::File {
        executable: false,
        contents: pseudo_random(3 << 20, 5),
    })
    .unwrap();
    let key = format!("nar/{}.nar", nargate::nix::nixbase32::encode(&sha256(&nar)));
    let created = client
        .create_multipart_upload()
        .bucket("sums")
        .key(&key)
        .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
        .send()
        .await
        .unwrap();
    let id = created.upload_id().unwrap();
    let mut completed = vec![];
    for (i, part) in [&nar[..2 << 20], &nar[2 << 20..]].into_iter().enumerate() {
        let number = i as i32 + 1;
        let out = part_request(&client, "sums", &key, id, number, part.to_vec())
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .send()
            .await
            .unwrap();
        let sum = out.checksum_crc64_nvme().unwrap().to_owned();
        let part = CompletedPart::builder().part_number(number).set_e_tag(out.e_tag().map(str::to_owned));
        completed.push(part.checksum_crc64_nvme(sum).build());
    }
    let expected = b64(&raw_checksum("crc64nvme", &nar));
    let list = CompletedMultipartUpload::builder().set_parts(Some(completed)).build();
    let complete = || client.complete_multipart_upload().bucket("sums").key(&key).upload_id(id);
    // A whole-object checksum sent with Complete is checked: another value is BadDigest, another
    // algorithm InvalidRequest, and the upload stays open for the right one.
    let other = b64(&raw_checksum("crc64nvme", b"other"));
    let wrong = complete().multipart_upload(list.clone()).checksum_crc64_nvme(other).send().await;
    assert_eq!(failure(wrong), (400, "BadDigest".into()), "a wrong whole-object checksum");
    let crc32 = b64(&raw_checksum("crc32", &nar));
    let another = complete().multipart_upload(list.clone()).checksum_crc32(crc32).send().await;
    assert_eq!(failure(another), (400, "InvalidRequest".into()), "another algorithm");
    let done = complete().multipart_upload(list).checksum_crc64_nvme(&expected).send().await.unwrap();
    assert_eq!(
        (done.checksum_crc64_nvme(), done.checksum_type()),
        (Some(expected.as_str()), Some(&ChecksumType::FullObject)),
        "the NAR's Complete"
    );
    let got = client.get_object().bucket("sums").key(&key).send().await.unwrap();
    assert!(got.body.collect().await.unwrap().into_bytes() == nar, "the NAR reads back");

    // Parts sent without checksums (a client that sends none unless asked) into an upload that
    // has one: the object's checksum is computed from the parts' bytes at Complete.
    let plain = aws_sdk_s3::Client::from_conf(
        client
            .config()
            .to_builder()
            .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
            .build(),
    );
    let parts = [pseudo_random((1 << 20) + 11, 70), pseudo_random(5_000, 71)];
    let created = plain
        .create_multipart_upload()
        .bucket("sums")
        .key("log/unsummed-parts")
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .send()
        .await
        .unwrap();
    let id = created.upload_id().unwrap();
    let mut completed = vec![];
    for (i, data) in parts.iter().enumerate() {
        let number = i as i32 + 1;
        let upload = part_request(&plain, "sums", "log/unsummed-parts", id, number, data.clone());
        let out = upload.send().await.unwrap();
        assert_eq!(out.checksum_crc32(), None, "no checksum was sent with part {number}");
        completed.push(
            CompletedPart::builder().part_number(number).set_e_tag(out.e_tag().map(str::to_owned)).build(),
        );
    }
    let list = CompletedMultipartUpload::builder().set_parts(Some(completed)).build();
    let complete =
        || plain.complete_multipart_upload().bucket("sums").key("log/unsummed-parts").upload_id(id);
    let sums: Vec<u8> = parts.iter().flat_map(|p| raw_checksum("crc32", p)).collect();
    let sum = b64(&raw_checksum("crc32", &sums));
    // Computed as the object is written, a claimed checksum that is not it fails the write before
    // the object is whole: nothing is visible, and the upload stays open.
    let wrong = complete()
        .multipart_upload(list.clone())
        .checksum_crc32(b64(&raw_checksum("crc32", b"x")))
        .send()
        .await;
    assert_eq!(
        failure(wrong),
        (400, "BadDigest".into()),
        "a wrong claimed checksum, computed from the bytes"
    );
    let missing = plain.head_object().bucket("sums").key("log/unsummed-parts").send().await;
    assert_eq!(failure(missing).0, 404, "nothing of it visible");
    let done = complete().multipart_upload(list).checksum_crc32(&sum).send().await.unwrap();
    let expected = format!("{sum}-2");
    assert_eq!(done.checksum_crc32(), Some(expected.as_str()), "computed from the bytes");

    // The same for a NAR, whose parts the ingest took as they came: the checksum Complete names
    // is checked against the bytes all the same, before the NAR is visible.
    let nar = &nar[..];
    let mut other = nar.to_vec();
    other[1 << 20] ^= 0x5a;
    let key = format!("nar/{}.nar", nargate::nix::nixbase32::encode(&sha256(&other)));
    let created = plain
        .create_multipart_upload()
        .bucket("sums")
        .key(&key)
        .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
        .checksum_type(ChecksumType::FullObject)
        .send()
        .await
        .unwrap();
    let id = created.upload_id().unwrap();
    let parts: Vec<(i32, Vec<u8>)> = vec![(1, other[..2 << 20].to_vec()), (2, other[2 << 20..].to_vec())];
    let completed = upload_parts(&plain, "sums", &key, id, parts, 1).await;
    let list = CompletedMultipartUpload::builder().set_parts(Some(completed)).build();
    let complete = || plain.complete_multipart_upload().bucket("sums").key(&key).upload_id(id);
    let wrong = complete()
        .multipart_upload(list.clone())
        .checksum_crc64_nvme(b64(&raw_checksum("crc64nvme", nar)))
        .send()
        .await;
    assert_eq!(failure(wrong), (400, "BadDigest".into()), "a NAR's wrong claimed checksum");
    let missing = plain.head_object().bucket("sums").key(&key).send().await;
    assert_eq!(failure(missing).0, 404, "nothing of the NAR visible");
    let sum = b64(&raw_checksum("crc64nvme", &other));
    let done = complete().multipart_upload(list).checksum_crc64_nvme(&sum).send().await.unwrap();
    assert_eq!(done.checksum_crc64_nvme(), Some(sum.as_str()), "the NAR's, computed from its bytes");
    assert!(get(&plain, "sums", &key).await.0 == other, "the NAR reads back");
}
