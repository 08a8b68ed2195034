//! The commit path: a NAR and its narinfo in either order make a store path visible, once both are
//! there and agree; on the fs backend and on Garage.

mod common;

use std::path::{Path, PathBuf};

use nargate::backend::{DynBackend, ListRequest};
use nargate::cache::{BucketRecord, Cache, CommitError, IndexEntry, NarInfoOutcome, md5_hex};
use nargate::castore::ChunkStore;
use nargate::ingest::{IngestOptions, ingest_nar};
use nargate::nix::narinfo::NarInfo;
use nargate::nix::nixbase32;
use nargate::nix::signing::{PublicKey, SecretKey, verify_narinfo};
use nargate::render::listing::nar_listing;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The narinfos of the uncompressed fixture cache, with their NAR files.
fn uploads() -> Vec<(NarInfo, Vec<u8>)> {
    let dir = fixtures().join("cache-none");
    let mut out: Vec<(NarInfo, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "narinfo"))
        .map(|p| {
            let info = NarInfo::parse(&std::fs::read_to_string(p).unwrap()).unwrap();
            let nar = std::fs::read(dir.join(&info.url)).unwrap();
            (info, nar)
        })
        .collect();
    out.sort_by_key(|(i, _)| i.store_path.to_string());
    out
}

async fn index(backend: &DynBackend, cache: &Cache) -> Vec<IndexEntry> {
    let prefix = cache.keys().index_prefix();
    let page = backend.list(&ListRequest { prefix: prefix.clone(), ..Default::default() }).await.unwrap();
    page.objects.iter().map(|o| IndexEntry::parse(o.key.strip_prefix(&prefix).unwrap()).unwrap()).collect()
}

async fn either_order_commits(backend: DynBackend) {
    let store = ChunkStore::new(backend.clone(), 1 << 20);
    let secret = SecretKey::generate("nargate-test-1").unwrap();
    let cache = Cache::new(backend.clone(), "either");
    cache
        .create(BucketRecord {
            created: 0,
            anonymous_read: false,
            signing_key: Some(secret.to_string()),
            priority: 30,
            want_mass_query: true,
            browse: false,
            retention_secs: 0,
        })
        .await
        .unwrap();
    let uploads = uploads();
    for (i, (info, nar)) in uploads.iter().enumerate() {
        let hash = info.store_path.hash_part();
        let narinfo_first = i % 2 == 0;
        if narinfo_first {
            assert_eq!(cache.narinfo_arrived(&hash, info).await.unwrap(), NarInfoOutcome::Pending);
            assert!(cache.path_info(&hash).await.unwrap().is_none(), "not visible before its NAR");
        }
        let ingested = ingest_nar(&store, &nar[..], &IngestOptions::default()).await.unwrap();
        let committed = cache.nar_landed(&ingested.record).await.unwrap();
        if narinfo_first {
            assert_eq!(committed, vec![info.store_path.clone()]);
        } else {
            assert!(committed.is_empty());
            assert_eq!(cache.narinfo_arrived(&hash, info).await.unwrap(), NarInfoOutcome::Committed);
        }
        // Committing again is harmless.
        assert_eq!(cache.narinfo_arrived(&hash, info).await.unwrap(), NarInfoOutcome::Committed);

        let path = cache.path_info(&hash).await.unwrap().expect("visible after commit");
        assert_eq!(path.nar_hash, info.nar_hash_digest().unwrap());
        assert_eq!(path.references, info.references);
        let served = cache.served_narinfo(&path).await.unwrap();
        assert_eq!(served.url, format!("nar/{}.nar", nixbase32::encode(&path.nar_hash)));
        assert_eq!(served.compression.as_deref(), Some("none"));
        let fixture_key =
            PublicKey::parse(std::fs::read_to_string(fixtures().join("public.key")).unwrap().trim()).unwrap();
        assert!(verify_narinfo(&served, &[fixture_key]), "the uploader's signature still holds");
        assert!(verify_narinfo(&served, &[secret.to_public()]), "the bucket's own signature holds");

        let entries = index(&backend, &cache).await;
        let text = served.render();
        assert!(entries.contains(&IndexEntry {
            key: format!("{hash}.narinfo"),
            size: text.len() as u64,
            etag: md5_hex(text.as_bytes())
        }));
        let nar_etag = md5_hex(nar);
        assert!(entries.contains(&IndexEntry {
            key: served.url.clone(),
            size: info.nar_size,
            etag: nar_etag.clone()
        }));
        let alias = format!("store/{}.nar", info.store_path.base_name());
        assert!(entries.contains(&IndexEntry { key: alias, size: info.nar_size, etag: nar_etag }));
        let listing = nar_listing(&ingested.record).unwrap();
        assert!(entries.contains(&IndexEntry {
            key: format!("{hash}.ls"),
            size: listing.len() as u64,
            etag: md5_hex(&listing)
        }));
    }
    let pending = backend
        .list(&ListRequest { prefix: "caches/either/pending/".into(), ..Default::default() })
        .await
        .unwrap();
    assert!(pending.objects.is_empty(), "no narinfo left pending");
}

#[tokio::test]
async fn either_order_commits_on_fs() {
    let (_dir, backend) = common::fs_backend();
    either_order_commits(backend).await;
}

#[tokio::test]
async fn either_order_commits_on_garage() {
    either_order_commits(common::garage_backend().await).await;
}

#[tokio::test]
async fn mismatches_are_refused_and_nothing_becomes_visible() {
    let (_dir, backend) = common::fs_backend();
    let store = ChunkStore::new(backend.clone(), 1 << 20);
    let cache = Cache::new(backend.clone(), "strict");
    let uploads = uploads();
    let (info, nar) = &uploads[0];
    let hash = info.store_path.hash_part();
    let other_hash = uploads[1].0.store_path.hash_part();

    let err = cache.narinfo_arrived(&other_hash, info).await.unwrap_err();
    assert!(matches!(err, CommitError::StorePathMismatch { .. }), "{err}");

    let mut wrong_size = info.clone();
    wrong_size.nar_size += 8;
    let ingested = ingest_nar(&store, &nar[..], &IngestOptions::default()).await.unwrap();
    cache.nar_landed(&ingested.record).await.unwrap();
    let err = cache.narinfo_arrived(&hash, &wrong_size).await.unwrap_err();
    assert!(matches!(err, CommitError::NarSizeMismatch { .. }), "{err}");
    assert!(cache.path_info(&hash).await.unwrap().is_none());
    let pending = backend
        .list(&ListRequest { prefix: "caches/strict/pending/".into(), ..Default::default() })
        .await
        .unwrap();
    assert!(pending.objects.is_empty(), "a contradicting narinfo is not kept");
    assert_eq!(cache.narinfo_arrived(&hash, info).await.unwrap(), NarInfoOutcome::Committed);

    // A NAR held by another bucket does not commit this bucket's narinfo.
    let elsewhere = Cache::new(backend.clone(), "elsewhere");
    let (info2, _) = &uploads[0];
    assert_eq!(elsewhere.narinfo_arrived(&hash, info2).await.unwrap(), NarInfoOutcome::Pending);
    assert!(elsewhere.path_info(&hash).await.unwrap().is_none());
}
