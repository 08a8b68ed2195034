//! Retention that keeps closures whole: a bucket with a retention period loses the store paths
//! uploaded longer ago than it, except those that a kept path references, directly or through
//! others, so that no substitutable closure loses a member. A NAR that no remaining path of the
//! bucket uses goes with its last path.

use std::collections::{BTreeSet, HashMap};

use futures::{StreamExt, TryStreamExt};

use super::mark::read_record;
use super::{GcError, Progress, backend_now};
use crate::backend::{self, DynBackend};
use crate::cache::{Cache, PathInfo, list_buckets};
use crate::castore::lease::unix_secs;
use crate::nix::store_path::StorePath;

/// Applies every bucket's retention; returns the store paths removed (in a dry run: that would
/// be), as `bucket/<hash>-<name>`.
pub async fn apply(
    backend: &DynBackend,
    dry_run: bool,
    progress: &dyn Progress,
) -> Result<Vec<String>, GcError> {
    progress.start("retention", None);
    let now = unix_secs(backend_now(backend).await?);
    let mut removed = vec![];
    for (bucket, _) in list_buckets(backend).await? {
        let cache = Cache::new(backend.clone(), &bucket);
        let Some(settings) = cache.settings().await? else { continue };
        if settings.retention_secs == 0 {
            continue;
        }
        let paths = read_paths(backend, &cache).await?;
        let doomed = expired_outside_closures(&paths, now.saturating_sub(settings.retention_secs));
        for hash in &doomed {
            let info = &paths[hash];
            if !dry_run {
                cache.remove_store_path(hash).await?;
                let still_used =
                    paths.iter().any(|(h, p)| p.nar_hash == info.nar_hash && !doomed.contains(h));
                if !still_used {
                    cache.remove_nar(&info.nar_hash).await?;
                }
            }
            let name = StorePath::parse(&info.store_path).map_or_else(|_| hash.clone(), |p| p.base_name());
            tracing::info!(%bucket, store_path = %info.store_path, dry_run, "retention removes a store path");
            removed.push(format!("{bucket}/{name}"));
            progress.advance(1);
        }
    }
    progress.finish(&format!("{} store paths past their bucket's retention", removed.len()));
    Ok(removed)
}

/// Every path info of a cache, by hash part.
async fn read_paths(backend: &DynBackend, cache: &Cache) -> Result<HashMap<String, PathInfo>, GcError> {
    let prefix = format!("{}pathinfo/", cache.keys().root());
    let keys: Vec<String> =
        backend::list_all(backend.as_ref(), &prefix).await?.into_iter().map(|o| o.key).collect();
    let infos: Vec<Option<(String, PathInfo)>> = futures::stream::iter(keys)
        .map(|key| {
            let backend = backend.clone();
            let hash = key.strip_prefix(prefix.as_str()).unwrap_or(&key).to_owned();
            async move {
                Ok::<_, GcError>(
                    read_record(&backend, &key, PathInfo::decode).await?.map(|info| (hash, info)),
                )
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    Ok(infos.into_iter().flatten().collect())
}

/// The hash parts of the paths uploaded before `cutoff` (seconds since the epoch) that no path
/// uploaded since needs, directly or through others.
pub fn expired_outside_closures(paths: &HashMap<String, PathInfo>, cutoff: u64) -> BTreeSet<String> {
    let mut needed: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<&str> =
        paths.iter().filter(|(_, info)| info.uploaded >= cutoff).map(|(hash, _)| hash.as_str()).collect();
    while let Some(hash) = todo.pop() {
        if !needed.insert(hash.to_owned()) {
            continue;
        }
        for reference in &paths[hash].references {
            let referenced = reference.split_once('-').map_or(reference.as_str(), |(h, _)| h);
            if paths.contains_key(referenced) && !needed.contains(referenced) {
                todo.push(referenced);
            }
        }
    }
    paths.keys().filter(|hash| !needed.contains(*hash)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(hash: &str, uploaded: u64, references: &[&str]) -> (String, PathInfo) {
        let info = PathInfo {
            store_path: format!("/nix/store/{hash}-p"),
            nar_hash: [0; 32],
            nar_size: 1,
            references: references.iter().map(|r| format!("{r}-p")).collect(),
            deriver: None,
            signatures: vec![],
            ca: None,
            uploaded,
        };
        (hash.to_owned(), info)
    }

    #[test]
    fn old_paths_go_unless_a_kept_path_needs_them() {
        // new → mid (old) → base (old); lone (old); self-reference on new; a reference outside
        // the bucket is ignored.
        let paths: HashMap<_, _> = [
            path("new", 100, &["new", "mid", "elsewhere"]),
            path("mid", 10, &["base"]),
            path("base", 10, &[]),
            path("lone", 10, &["base"]),
        ]
        .into_iter()
        .collect();
        let doomed = expired_outside_closures(&paths, 50);
        assert_eq!(doomed.into_iter().collect::<Vec<_>>(), vec!["lone".to_owned()]);
        assert!(expired_outside_closures(&paths, 0).is_empty());
        assert_eq!(expired_outside_closures(&paths, 1000).len(), 4);
    }
}
