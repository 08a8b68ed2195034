//! Importing a `file://` binary cache (as `nix copy --to file://…` writes one) into a bucket:
//! every narinfo, and the NAR its `URL` names, checked against its NarHash and NarSize.

use std::path::{Path, PathBuf};

use super::{IngestError, IngestOptions, Ingested, ingest_nar_under, take_lease};
use crate::cache::{Cache, CommitError};
use crate::castore::ChunkStore;
use crate::nix::narinfo::{NarInfo, NarInfoError};

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A narinfo does not parse.
    #[error("{path}: {source}")]
    NarInfo {
        /// The narinfo file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: NarInfoError,
    },
    /// A NAR could not be ingested (or is not the one its narinfo names).
    #[error("{path}: {source}")]
    Ingest {
        /// The NAR file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: IngestError,
    },
    /// The store path could not be committed.
    #[error(transparent)]
    Commit(#[from] CommitError),
}

/// Every narinfo of the `file://` cache in `dir`, with the NAR file its URL names, sorted.
pub fn narinfos(dir: &Path) -> Result<Vec<(NarInfo, PathBuf)>, ImportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImportError::Io { path, source }
    };
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().is_some_and(|e| e == "narinfo") {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let info = NarInfo::parse(&text)
                .map_err(|source| ImportError::NarInfo { path: path.clone(), source })?;
            let nar = dir.join(&info.url);
            out.push((info, nar));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// Ingests the NAR of one narinfo into `store` and commits its store path in `cache`.
pub async fn import_path(
    store: &ChunkStore,
    cache: &Cache,
    info: &NarInfo,
    nar_path: &Path,
) -> Result<Ingested, ImportError> {
    let file = tokio::fs::File::open(nar_path)
        .await
        .map_err(|source| ImportError::Io { path: nar_path.to_path_buf(), source })?;
    let failed = |source| ImportError::Ingest { path: nar_path.to_path_buf(), source };
    let options = IngestOptions {
        br_suffix: nar_path.extension().is_some_and(|e| e == "br"),
        expected_nar_hash: Some(
            info.nar_hash_digest()
                .map_err(|source| ImportError::NarInfo { path: nar_path.to_path_buf(), source })?,
        ),
        expected_nar_size: Some(info.nar_size),
        ..Default::default()
    };
    // The lease covers the commit too (see [`ingest_nar`]).
    let lease = take_lease(store, &options).await.map_err(failed)?;
    let imported = async {
        let ingested = ingest_nar_under(store, file, &options, &lease).await.map_err(failed)?;
        cache.nar_landed(&ingested.record).await?;
        cache.narinfo_arrived(&info.store_path.hash_part(), info).await?;
        Ok(ingested)
    }
    .await;
    let _ = lease.release().await;
    imported
}
