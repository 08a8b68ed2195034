//! The `nargate` command line: `import` a `file://` binary cache into the embedded store, `cat` a
//! stored NAR.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use failure::{Failure, Result};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use nargate::backend::DynBackend;
use nargate::backend::fs::FsBackend;
use nargate::cache::{BucketRecord, Cache};
use nargate::castore::ChunkStore;
use nargate::ingest::{IngestOptions, ingest_nar};
use nargate::nix::narinfo::NarInfo;
use nargate::render::{RenderConfig, Renderer};
use tokio::io::AsyncWriteExt;

/// nargate: an S3-compatible gateway for Nix binary caches, storing store paths as deduplicated
/// content-defined chunks.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Import `file://` binary caches (narinfos and their NARs) into a bucket of the embedded store.
    Import {
        /// The embedded store's directory.
        #[arg(long)]
        data: PathBuf,
        /// The bucket (cache) to import into.
        #[arg(long, default_value = "cache")]
        bucket: String,
        /// Binary cache directories (each with `*.narinfo` and `nar/`).
        #[arg(required = true)]
        caches: Vec<PathBuf>,
    },
    /// Write a stored NAR, or a byte range of it, to standard output.
    Cat {
        /// The embedded store's directory.
        #[arg(long)]
        data: PathBuf,
        /// The bucket (cache) holding the store path.
        #[arg(long, default_value = "cache")]
        bucket: String,
        /// The store path (`/nix/store/<hash>-<name>`, `<hash>-<name>` or `<hash>`).
        store_path: String,
        /// First byte to write.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Bytes to write (default: to the end).
        #[arg(long)]
        length: Option<u64>,
    },
}

/// Errors of the command line: a message for the user.
mod failure {
    /// A failure, shown to the user as its message.
    #[derive(Debug)]
    pub struct Failure(pub String);

    impl<E: std::error::Error> From<E> for Failure {
        fn from(e: E) -> Self {
            Failure(e.to_string())
        }
    }

    /// The command line's result type.
    pub type Result<T> = std::result::Result<T, Failure>;
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Import { data, bucket, caches } => import(&data, &bucket, &caches).await,
        Command::Cat { data, bucket, store_path, offset, length } => {
            cat(&data, &bucket, &store_path, offset, length).await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("nargate: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn open_store(data: &Path) -> Result<DynBackend> {
    Ok(Arc::new(FsBackend::new(data.to_path_buf())?))
}

/// Every narinfo of a `file://` cache, sorted, with the NAR file its URL names.
fn narinfos(cache_dir: &Path) -> Result<Vec<(NarInfo, PathBuf)>> {
    let mut out = vec![];
    let entries =
        std::fs::read_dir(cache_dir).map_err(|e| Failure(format!("{}: {e}", cache_dir.display())))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "narinfo") {
            let text = std::fs::read_to_string(&path)?;
            let info = NarInfo::parse(&text).map_err(|e| Failure(format!("{}: {e}", path.display())))?;
            let nar = cache_dir.join(&info.url);
            out.push((info, nar));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

async fn import(data: &Path, bucket: &str, caches: &[PathBuf]) -> Result<()> {
    let backend = open_store(data)?;
    let store = ChunkStore::new(backend.clone(), 64 << 20);
    let cache = Cache::new(backend.clone(), bucket);
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    cache
        .create(BucketRecord { created: now, anonymous_read: true, signing_key: None, priority: 40 })
        .await?;

    let mut work = vec![];
    for dir in caches {
        work.extend(narinfos(dir)?);
    }
    let total: u64 = work.iter().map(|(_, nar)| std::fs::metadata(nar).map(|m| m.len()).unwrap_or(0)).sum();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut paths, mut nar_bytes, mut stored) = (0u64, 0u64, 0u64);
    for (info, nar_path) in work {
        bar.set_message(info.store_path.name().to_owned());
        let file = tokio::fs::File::open(&nar_path)
            .await
            .map_err(|e| Failure(format!("{}: {e}", nar_path.display())))?;
        let options = IngestOptions {
            br_suffix: nar_path.extension().is_some_and(|e| e == "br"),
            expected_nar_hash: Some(info.nar_hash_digest()?),
            expected_nar_size: Some(info.nar_size),
            ..Default::default()
        };
        let ingested = ingest_nar(&store, file, &options)
            .await
            .map_err(|e| Failure(format!("{}: {e}", nar_path.display())))?;
        cache.nar_landed(&ingested.record).await?;
        cache.narinfo_arrived(&info.store_path.hash_part(), &info).await?;
        paths += 1;
        nar_bytes += ingested.record.nar_size;
        stored += ingested.stored_chunk_bytes;
        bar.inc(ingested.received.size);
    }
    bar.finish_and_clear();
    let chunks = nargate::backend::list_all(backend.as_ref(), "chunks/").await?.len();
    println!(
        "imported {paths} store paths into bucket {bucket}: {nar_bytes} NAR bytes, {stored} new chunk bytes stored ({chunks} chunks in the store)"
    );
    Ok(())
}

async fn cat(data: &Path, bucket: &str, store_path: &str, offset: u64, length: Option<u64>) -> Result<()> {
    let backend = open_store(data)?;
    let cache = Cache::new(backend.clone(), bucket);
    let base = store_path.strip_prefix("/nix/store/").unwrap_or(store_path);
    let hash = base.split('-').next().unwrap_or(base);
    let info = cache
        .path_info(hash)
        .await?
        .ok_or_else(|| Failure(format!("{store_path}: not in bucket {bucket}")))?;
    if cache.cache_nar(&info.nar_hash).await?.is_none() {
        return Err(Failure(format!("{store_path}: its NAR is not in bucket {bucket}")));
    }
    let renderer = Renderer::new(ChunkStore::new(backend, 64 << 20), RenderConfig::default());
    let end = length.map_or(u64::MAX, |l| offset.saturating_add(l));
    let mut body = renderer.range(&info.nar_hash, offset..end).await?;
    let mut stdout = tokio::io::stdout();
    while let Some(piece) = body.next().await {
        stdout.write_all(&piece?).await?;
    }
    stdout.flush().await?;
    Ok(())
}
