//! The credential store against every backend — the fs backend in a temporary directory and the
//! S3 backend against a real Garage — each check on two backend handles over the same storage
//! (two `FsBackend`s on one directory, two `S3Backend`s on one bucket), as two gateways would be.

mod common;

use std::sync::Arc;

use nargate::backend::fs::FsBackend;
use nargate::backend::s3::S3Backend;
use nargate::backend::{DynBackend, get_bytes, list_all};
use nargate::credentials::{CredentialError, CredentialStore, KeyPair};

type TestResult = Result<(), CredentialError>;

/// Runs each check with two handles on a fresh fs directory, and on a fresh Garage bucket.
macro_rules! suite {
    ($($check:ident),* $(,)?) => {
        mod fs {
            $(
                #[tokio::test]
                async fn $check() -> super::TestResult {
                    let (dir, first) = crate::common::fs_backend();
                    let second = super::fs_twin(&dir);
                    super::$check(first, second).await
                }
            )*
        }
        mod garage {
            $(
                #[tokio::test]
                async fn $check() -> super::TestResult {
                    let (first, second) = super::garage_twins().await;
                    super::$check(first, second).await
                }
            )*
        }
    };
}

suite!(
    create_list_secret_delete,
    ensure_initial_with_a_configured_pair,
    ensure_initial_creates_one_on_an_empty_store,
    ensure_initial_leaves_a_populated_store_alone,
    insert_is_idempotent_and_updates_a_changed_secret,
    two_stores_see_each_others_keys,
    invalid_ids_and_secrets_are_refused,
    list_never_exposes_a_secret,
);

/// A second fs backend over the directory of [`common::fs_backend`]'s.
fn fs_twin(dir: &tempfile::TempDir) -> DynBackend {
    Arc::new(FsBackend::new(dir.path().join("bucket")).expect("fs backend"))
}

/// Two S3 backends over one fresh Garage bucket.
async fn garage_twins() -> (DynBackend, DynBackend) {
    let garage = tokio::task::spawn_blocking(common::garage::garage).await.expect("starting Garage");
    let bucket = garage.create_bucket().await;
    let config = garage.config(&bucket);
    let first = S3Backend::new(config.clone()).await.expect("S3 backend");
    let second = S3Backend::new(config).await.expect("S3 backend");
    (Arc::new(first), Arc::new(second))
}

fn pair(id: &str, secret: &str) -> KeyPair {
    KeyPair { access_key_id: id.to_owned(), secret_access_key: secret.to_owned() }
}

async fn create_list_secret_delete(backend: DynBackend, _: DynBackend) -> TestResult {
    let store = CredentialStore::new(backend);
    assert!(store.list().await?.is_empty());
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let a = store.create(Some("ci runner")).await?;
    let b = store.create(None).await?;
    assert_ne!(a, b);
    for created in [&a, &b] {
        let (id, secret) = (&created.access_key_id, &created.secret_access_key);
        assert!(id.len() == 20 && id.starts_with("NG"), "{id}");
        assert!(id.bytes().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()), "{id}");
        assert_eq!(secret.len(), 40);
        assert!(secret.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/'));
        assert_eq!(store.secret(id).await?.as_ref(), Some(secret));
    }

    let list = store.list().await?;
    let mut ids: Vec<&str> = vec![&a.access_key_id, &b.access_key_id];
    ids.sort();
    assert_eq!(list.iter().map(|i| i.access_key_id.as_str()).collect::<Vec<_>>(), ids);
    let info_a = list.iter().find(|i| i.access_key_id == a.access_key_id).unwrap();
    assert_eq!(info_a.description.as_deref(), Some("ci runner"));
    assert!(info_a.created >= before && info_a.created <= before + 60, "{info_a:?}");
    assert_eq!(list.iter().find(|i| i.access_key_id == b.access_key_id).unwrap().description, None);

    assert!(store.delete(&a.access_key_id).await?);
    assert!(!store.delete(&a.access_key_id).await?);
    assert_eq!(store.secret(&a.access_key_id).await?, None);
    assert_eq!(store.secret("NGNOSUCHKEY000000000").await?, None);
    assert_eq!(store.list().await?.len(), 1);
    Ok(())
}

async fn ensure_initial_with_a_configured_pair(backend: DynBackend, _: DynBackend) -> TestResult {
    let store = CredentialStore::new(backend);
    let configured = pair("nix-ci", "configured-secret");
    assert_eq!(store.ensure_initial(Some(&configured)).await?, None);
    assert_eq!(store.secret("nix-ci").await?.as_deref(), Some("configured-secret"));
    // Again, at the next start: still the one pair, nothing printed.
    assert_eq!(store.ensure_initial(Some(&configured)).await?, None);
    assert_eq!(store.list().await?.len(), 1);
    Ok(())
}

async fn ensure_initial_creates_one_on_an_empty_store(backend: DynBackend, _: DynBackend) -> TestResult {
    let store = CredentialStore::new(backend);
    let created = store.ensure_initial(None).await?.expect("a pair created on an empty store");
    assert_eq!(store.secret(&created.access_key_id).await?, Some(created.secret_access_key.clone()));
    let list = store.list().await?;
    assert_eq!(list.len(), 1);
    assert!(list[0].description.is_some());
    // The next start finds it and creates none.
    assert_eq!(store.ensure_initial(None).await?, None);
    assert_eq!(store.list().await?.len(), 1);
    Ok(())
}

async fn ensure_initial_leaves_a_populated_store_alone(backend: DynBackend, _: DynBackend) -> TestResult {
    let store = CredentialStore::new(backend);
    store.insert(&pair("existing", "existing-secret")).await?;
    assert_eq!(store.ensure_initial(None).await?, None);
    let list = store.list().await?;
    assert_eq!(list.iter().map(|i| i.access_key_id.as_str()).collect::<Vec<_>>(), ["existing"]);
    Ok(())
}

async fn insert_is_idempotent_and_updates_a_changed_secret(backend: DynBackend, _: DynBackend) -> TestResult {
    let store = CredentialStore::new(backend.clone());
    store.insert(&pair("client.1", "first-secret")).await?;
    let stored = get_bytes(backend.as_ref(), "credentials/client.1").await?;
    store.insert(&pair("client.1", "first-secret")).await?;
    assert_eq!(get_bytes(backend.as_ref(), "credentials/client.1").await?, stored, "left as it was");
    store.insert(&pair("client.1", "second-secret")).await?;
    assert_eq!(store.secret("client.1").await?.as_deref(), Some("second-secret"));
    assert_eq!(store.list().await?.len(), 1);
    Ok(())
}

async fn two_stores_see_each_others_keys(first: DynBackend, second: DynBackend) -> TestResult {
    let (one, two) = (CredentialStore::new(first), CredentialStore::new(second));
    let created = one.create(Some("from one")).await?;
    two.insert(&pair("from-two", "second-gateway")).await?;
    assert_eq!(two.secret(&created.access_key_id).await?, Some(created.secret_access_key.clone()));
    assert_eq!(one.secret("from-two").await?.as_deref(), Some("second-gateway"));
    assert_eq!(one.list().await?, two.list().await?);
    assert_eq!(two.list().await?.len(), 2);
    assert!(two.delete(&created.access_key_id).await?);
    assert_eq!(one.secret(&created.access_key_id).await?, None);
    // A store that holds a pair made elsewhere creates none at start.
    assert_eq!(one.ensure_initial(None).await?, None);
    Ok(())
}

async fn invalid_ids_and_secrets_are_refused(backend: DynBackend, _: DynBackend) -> TestResult {
    let store = CredentialStore::new(backend.clone());
    let long_id = "a".repeat(129);
    for id in ["", "ab", "a/b", "with space", "ünïcode", "a:b", long_id.as_str()] {
        let result = store.insert(&pair(id, "a-good-secret")).await;
        assert!(matches!(result, Err(CredentialError::InvalidAccessKeyId { .. })), "{id:?}: {result:?}");
        assert!(matches!(store.delete(id).await, Err(CredentialError::InvalidAccessKeyId { .. })), "{id:?}");
        assert_eq!(store.secret(id).await?, None, "{id:?}");
    }
    let long_secret = "s".repeat(129);
    for secret in ["", "short", "has a space", "tab\tsecret", "nön-ascii-secret", long_secret.as_str()] {
        let result = store.insert(&pair("good-id", secret)).await;
        match result {
            Err(e @ CredentialError::InvalidSecret { .. }) => {
                assert!(secret.is_empty() || !e.to_string().contains(secret), "{e}");
            }
            other => panic!("{secret:?}: {other:?}"),
        }
        assert!(store.ensure_initial(Some(&pair("good-id", secret))).await.is_err());
    }
    assert!(store.insert(&pair(&"A".repeat(128), &"~".repeat(128))).await.is_ok());
    assert!(store.insert(&pair("a_b-c.D9", "12345678")).await.is_ok());
    let keys: Vec<String> = list_all(backend.as_ref(), "").await?.into_iter().map(|o| o.key).collect();
    assert_eq!(keys, [format!("credentials/{}", "A".repeat(128)), "credentials/a_b-c.D9".to_owned()]);
    Ok(())
}

async fn list_never_exposes_a_secret(backend: DynBackend, _: DynBackend) -> TestResult {
    let store = CredentialStore::new(backend);
    let created = store.create(Some("shown")).await?;
    store.insert(&pair("configured", "the-configured-secret")).await?;
    let shown = format!("{:?} {:#?}", store.list().await?, created);
    assert!(!shown.contains(&created.secret_access_key), "{shown}");
    assert!(!shown.contains("the-configured-secret"), "{shown}");
    assert!(shown.contains(&created.access_key_id) && shown.contains("configured"), "{shown}");
    Ok(())
}
