//! The `nargate` command line: `serve` the S3 gateway; `import` a `file://` binary cache; `cat` a
//! stored NAR; manage `credentials` and `bucket` settings.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use failure::{Failure, Result};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use nargate::backend::DynBackend;
use nargate::backend::metered::MeteredBackend;
use nargate::cache::{BucketRecord, BucketSettings, Cache};
use nargate::castore::ChunkStore;
use nargate::config::{BackendConfig, Config, LogFormat};
use nargate::credentials::CredentialStore;
use nargate::gateway::{Gateway, GatewayOptions, ServeOptions};
use nargate::ingest::import::{import_path, narinfos};
use nargate::nix::signing::SecretKey;
use nargate::render::Renderer;
use tokio::io::AsyncWriteExt;

/// nargate: an S3-compatible gateway for Nix binary caches, storing store paths as deduplicated
/// content-defined chunks.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the store is: a configuration file, or the embedded store's directory.
#[derive(Debug, Args)]
struct StoreArgs {
    /// The configuration file (TOML; `config/nargate.toml` shows every option).
    #[arg(long, env = "NARGATE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Use the embedded store in this directory (overrides the configured backend).
    #[arg(long, global = true)]
    data: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve every bucket as an S3 bucket and a Nix binary cache.
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        /// The address to listen on (default 127.0.0.1:9000).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// The admin listener's address (`/metrics`, `/health`), or `off` (the default).
        #[arg(long)]
        admin_listen: Option<AdminListen>,
    },
    /// Import `file://` binary caches (narinfos and their NARs) into a bucket.
    Import {
        #[command(flatten)]
        store: StoreArgs,
        /// The bucket (cache) to import into; created if missing.
        #[arg(long, default_value = "cache")]
        bucket: String,
        /// Binary cache directories (each with `*.narinfo` and `nar/`).
        #[arg(required = true)]
        caches: Vec<PathBuf>,
    },
    /// Write a stored NAR, or a byte range of it, to standard output.
    Cat {
        #[command(flatten)]
        store: StoreArgs,
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
    /// Manage the key pairs clients sign with (kept in the store, shared by every gateway).
    Credentials {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        action: CredentialsAction,
    },
    /// Create a bucket, change its settings, or show them.
    Bucket {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        action: BucketAction,
    },
    /// Commit every uploaded narinfo whose NAR its bucket holds (what `serve` also does at start
    /// and periodically), so that an upload interrupted between its halves becomes visible.
    Repair {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove what nothing reaches any more (chunks and NAR records no bucket uses, expired
    /// leases, stale listing entries, abandoned uploads) and the store paths past their bucket's
    /// retention; safe while gateways serve and ingest.
    Gc {
        #[command(flatten)]
        store: StoreArgs,
        /// Spare everything written less than this long before the GC starts (`90s`, `15m`,
        /// `24h`, `7d`).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        grace: std::time::Duration,
        /// Say what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check that every bucket is whole: path infos, NAR records, chunks, closures and listing
    /// entries; exits non-zero if anything is wrong.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// Only this bucket.
        #[arg(long)]
        bucket: Option<String>,
        /// Also read every chunk (checking its BLAKE3) and render every NAR against its NarHash.
        #[arg(long)]
        deep: bool,
        /// Rewrite what can be derived (listing entries, pending commits) and say what cannot.
        #[arg(long)]
        repair: bool,
    },
    /// What the store holds: store paths, NAR bytes, stored chunk bytes and the dedup ratio,
    /// per bucket and for the store (from listings; nothing is read).
    Stats {
        #[command(flatten)]
        store: StoreArgs,
        /// Only this bucket (the store's chunks are counted still).
        #[arg(long)]
        bucket: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum CredentialsAction {
    /// Create a key pair and print it (the secret is shown only now).
    Create {
        /// What the key pair is for.
        #[arg(long)]
        description: Option<String>,
    },
    /// List the key pairs (never their secrets).
    List,
    /// Delete a key pair.
    Delete {
        /// Its access key id.
        access_key_id: String,
    },
}

/// Settings of a bucket that `bucket create` and `bucket set` take.
#[derive(Debug, Args)]
struct BucketFlags {
    /// Whether anonymous clients may read (`--anonymous-read` alone means true).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    anonymous_read: Option<bool>,
    /// Generate a signing key: narinfos are served with the bucket's own signature.
    #[arg(long)]
    sign: bool,
    /// The `Priority` of `nix-cache-info` (Nix prefers lower).
    #[arg(long)]
    priority: Option<u32>,
    /// The `WantMassQuery` of `nix-cache-info`.
    #[arg(long)]
    want_mass_query: Option<bool>,
    /// Whether every store path's files are objects under `tree/<hash>-<name>/` (`--browse`
    /// alone means true).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    browse: Option<bool>,
    /// GC removes store paths uploaded longer ago than this (`30d`, `12h`; `0` keeps them for
    /// ever), but for those a kept path references.
    #[arg(long, value_parser = parse_duration)]
    retention: Option<std::time::Duration>,
}

#[derive(Debug, Subcommand)]
enum BucketAction {
    /// Create a bucket.
    Create {
        /// The bucket's name.
        name: String,
        #[command(flatten)]
        flags: BucketFlags,
    },
    /// Change a bucket's settings.
    Set {
        /// The bucket's name.
        name: String,
        #[command(flatten)]
        flags: BucketFlags,
    },
    /// Show a bucket's settings, and the public key to trust.
    Show {
        /// The bucket's name.
        name: String,
    },
}

mod maintenance;

/// Parses a duration as the command line takes it: a number with an optional unit, `s`, `m`,
/// `h`, `d` or `w` (seconds without one).
fn parse_duration(text: &str) -> std::result::Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration such as 90s, 15m, 24h or 7d"))?;
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        other => return Err(format!("unknown unit {other:?} in {text:?} (s, m, h, d or w)")),
    };
    number
        .checked_mul(unit)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
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

/// `--admin-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
struct AdminListen(Option<std::net::SocketAddr>);

impl std::str::FromStr for AdminListen {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        if s == "off" { Ok(AdminListen(None)) } else { s.parse().map(|a| AdminListen(Some(a))) }
    }
}

/// Sets up the log: to standard error, in `format`, filtered by `NARGATE_LOG` (else `RUST_LOG`,
/// else `info`).
fn init_logging(format: LogFormat) {
    let filter =
        std::env::var("NARGATE_LOG").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        init_logging(LogFormat::Human);
    }
    let result = match cli.command {
        Command::Serve { store, listen, admin_listen } => serve(&store, listen, admin_listen).await,
        Command::Import { store, bucket, caches } => import(&store, &bucket, &caches).await,
        Command::Cat { store, bucket, store_path, offset, length } => {
            cat(&store, &bucket, &store_path, offset, length).await
        }
        Command::Credentials { store, action } => credentials(&store, action).await,
        Command::Bucket { store, action } => bucket(&store, action).await,
        Command::Repair { store } => repair(&store).await,
        Command::Gc { store, grace, dry_run } => {
            maintenance::keep_large_blocks_mapped();
            maintenance::gc(&store, grace, dry_run).await
        }
        Command::Verify { store, bucket, deep, repair } => {
            maintenance::keep_large_blocks_mapped();
            maintenance::verify(&store, bucket, deep, repair).await
        }
        Command::Stats { store, bucket } => {
            maintenance::keep_large_blocks_mapped();
            maintenance::stats(&store, bucket.as_deref()).await
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

/// The configuration: the file, the `NARGATE_*` environment, then `--data`.
fn load_config(store: &StoreArgs) -> Result<Config> {
    let mut config = Config::load(store.config.as_deref(), std::env::vars())?;
    if let Some(dir) = &store.data {
        config.backend = BackendConfig::Fs { dir: dir.clone() };
    }
    Ok(config)
}

async fn open_store(store: &StoreArgs) -> Result<(Config, DynBackend)> {
    let config = load_config(store)?;
    let backend = config.open_backend().await?;
    Ok((config, backend))
}

async fn serve(
    store: &StoreArgs,
    listen: Option<std::net::SocketAddr>,
    admin_listen: Option<AdminListen>,
) -> Result<()> {
    let mut config = load_config(store)?;
    init_logging(config.log_format);
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if let Some(AdminListen(admin)) = admin_listen {
        config.admin_listen = admin;
    }
    let metrics = nargate::metrics::Metrics::new();
    let backend: DynBackend = Arc::new(MeteredBackend::new(config.open_backend().await?, metrics.clone()));
    let generated =
        CredentialStore::new(backend.clone()).ensure_initial(config.client_key_pair().as_ref()).await?;
    for (name, settings) in &config.buckets {
        apply_settings(&Cache::new(backend.clone(), name), settings, false).await?;
    }
    let options = GatewayOptions { metrics: metrics.clone(), ..config.gateway_options() };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Failure(format!("cannot listen on {}: {e}", config.listen)))?;
    let admin = match config.admin_listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .map_err(|e| Failure(format!("cannot listen on {address} (admin_listen): {e}")))?,
        ),
        None => None,
    };
    let endpoint = format!("http://{}", listener.local_addr()?);
    println!("nargate serving at {endpoint} ({})", describe_backend(&config.backend));
    if let Some(admin) = &admin {
        println!("admin listener at http://{} (/metrics, /health)", admin.local_addr()?);
    }
    let id = match (&generated, config.client_key_pair()) {
        (Some(pair), _) => {
            println!("A key pair was generated and stored; its secret is shown only now:");
            println!("  access key id:     {}", pair.access_key_id);
            println!("  secret access key: {}", pair.secret_access_key);
            pair.access_key_id.clone()
        }
        (None, Some(pair)) => {
            println!("access key id: {} (from the configuration)", pair.access_key_id);
            pair.access_key_id
        }
        (None, None) => {
            println!("key pairs: those in the store (`nargate credentials list`)");
            "<access key id>".into()
        }
    };
    println!("aws cli:  AWS_ACCESS_KEY_ID={id} AWS_SECRET_ACCESS_KEY=… aws --endpoint-url {endpoint} s3 ls");
    println!(
        "rclone:   rclone config create nargate s3 provider=Other endpoint={endpoint} access_key_id={id} secret_access_key=…"
    );
    println!(
        "nix:      nix copy --from {endpoint}/<bucket> … (a netrc with `machine {}` login {id} password …)",
        host_of(&endpoint)
    );
    println!(
        "          or, with `nargate bucket set <bucket> --anonymous-read`, substituters = {endpoint}/<bucket>"
    );
    spawn_repair(backend.clone(), config.repair_interval, config.uploads.abandon_after);
    maintenance::spawn_gc(backend.clone(), &config, metrics.clone());
    maintenance::spawn_stats(
        backend.clone(),
        metrics.clone(),
        config.repair_interval,
        config.gc.stats_recount,
    );
    let gateway = Gateway::new(backend, options);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            let signal = shutdown_signal().await;
            tracing::info!("{signal}: shutting down");
            stop.cancel();
        }
    });
    let serve_options = ServeOptions { shutdown_grace: config.shutdown_grace };
    let main = nargate::gateway::serve_with(listener, gateway, stop.cancelled(), &serve_options);
    let admin = async {
        match admin {
            Some(admin) => nargate::gateway::serve_admin(admin, metrics, stop.cancelled(), &serve_options)
                .await
                .map(Some),
            None => Ok(None),
        }
    };
    let (stopped, _) = tokio::try_join!(main, admin)?;
    match stopped.cut_off {
        false => tracing::info!(connections = stopped.connections, "stopped: every request finished"),
        true => tracing::warn!("stopped: requests still running after the grace period were cut off"),
    }
    Ok(())
}

/// Waits for SIGTERM or Ctrl-C (SIGINT); says which came.
async fn shutdown_signal() -> &'static str {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
        "interrupted"
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                name = ctrl_c => name,
                _ = term.recv() => "SIGTERM",
            },
            Err(e) => {
                tracing::warn!("cannot watch for SIGTERM: {e}");
                ctrl_c.await
            }
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await
}

/// `nargate repair`: one repair pass over every bucket, and abandoned multipart uploads removed.
async fn repair(store: &StoreArgs) -> Result<()> {
    let (config, backend) = open_store(store).await?;
    let report = nargate::cache::repair_all(&backend).await.map_err(|e| Failure(e.to_string()))?;
    let abandoned = nargate::cache::uploads::remove_abandoned(&backend, config.uploads.abandon_after)
        .await
        .map_err(|e| Failure(e.to_string()))?;
    println!(
        "{} bucket(s), {} pending narinfo(s), {} store path(s) committed, {abandoned} abandoned upload(s) removed",
        report.buckets, report.pending, report.committed
    );
    Ok(())
}

/// Runs the repair pass now, then every `interval`, for as long as the gateway serves; each pass
/// also removes the multipart uploads nothing was written to for `abandon_after`.
fn spawn_repair(
    backend: nargate::backend::DynBackend,
    interval: std::time::Duration,
    abandon_after: std::time::Duration,
) {
    tokio::spawn(async move {
        loop {
            match nargate::cache::repair_all(&backend).await {
                Ok(report) if report.committed > 0 => {
                    tracing::info!(committed = report.committed, "repair pass committed pending narinfos")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("repair pass failed: {e}"),
            }
            match nargate::cache::uploads::remove_abandoned(&backend, abandon_after).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "removed abandoned multipart uploads"),
                Err(e) => tracing::warn!("removing abandoned uploads failed: {e}"),
            }
            tokio::time::sleep(interval).await;
        }
    });
}

fn host_of(endpoint: &str) -> &str {
    let rest = endpoint.strip_prefix("http://").unwrap_or(endpoint);
    rest.split(':').next().unwrap_or(rest)
}

fn describe_backend(backend: &BackendConfig) -> String {
    match backend {
        BackendConfig::Fs { dir } => format!("embedded store in {}", dir.display()),
        BackendConfig::S3(s3) => {
            format!("S3 bucket {} at {}", s3.bucket, s3.endpoint.as_deref().unwrap_or("AWS"))
        }
    }
}

async fn import(store: &StoreArgs, bucket: &str, caches: &[PathBuf]) -> Result<()> {
    let (_, backend) = open_store(store).await?;
    let chunks = ChunkStore::new(backend.clone(), 64 << 20);
    let cache = Cache::new(backend.clone(), bucket);
    cache.create(BucketRecord::new_now()).await?;

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
        let ingested = import_path(&chunks, &cache, &info, &nar_path).await?;
        paths += 1;
        nar_bytes += ingested.record.nar_size;
        stored += ingested.stored_chunk_bytes;
        bar.inc(ingested.received.size);
    }
    bar.finish_and_clear();
    let chunk_objects = nargate::backend::list_all(backend.as_ref(), "chunks/").await?.len();
    println!(
        "imported {paths} store paths into bucket {bucket}: {nar_bytes} NAR bytes, {stored} new chunk bytes stored ({chunk_objects} chunks in the store)"
    );
    Ok(())
}

async fn cat(
    store: &StoreArgs,
    bucket: &str,
    store_path: &str,
    offset: u64,
    length: Option<u64>,
) -> Result<()> {
    let (config, backend) = open_store(store).await?;
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
    let renderer = Renderer::new(ChunkStore::new(backend, 64 << 20), config.render_config());
    let end = length.map_or(u64::MAX, |l| offset.saturating_add(l));
    let mut body = renderer.range(&info.nar_hash, offset..end).await?;
    let mut stdout = tokio::io::stdout();
    while let Some(piece) = body.next().await {
        stdout.write_all(&piece?).await?;
    }
    stdout.flush().await?;
    Ok(())
}

async fn credentials(store: &StoreArgs, action: CredentialsAction) -> Result<()> {
    let (_, backend) = open_store(store).await?;
    let credentials = CredentialStore::new(backend);
    match action {
        CredentialsAction::Create { description } => {
            let pair = credentials.create(description.as_deref()).await?;
            println!("access key id:     {}", pair.access_key_id);
            println!("secret access key: {}", pair.secret_access_key);
        }
        CredentialsAction::List => {
            for info in credentials.list().await? {
                println!(
                    "{}\t{}\t{}",
                    info.access_key_id,
                    info.created,
                    info.description.unwrap_or_default()
                );
            }
        }
        CredentialsAction::Delete { access_key_id } => {
            if !credentials.delete(&access_key_id).await? {
                return Err(Failure(format!("no key pair {access_key_id}")));
            }
            println!("deleted {access_key_id}");
        }
    }
    Ok(())
}

/// Applies `settings` to a bucket, creating it if missing; `sign` generates a signing key
/// unless it has one. The listing entries of narinfos follow when their text changed.
async fn apply_settings(cache: &Cache, settings: &BucketSettings, sign: bool) -> Result<BucketRecord> {
    let mut record = cache.settings().await?.unwrap_or_else(BucketRecord::new_now);
    let mut changed = record.apply(settings);
    if sign && record.signing_key.is_none() {
        let key = SecretKey::generate(&format!("{}-1", cache.bucket()))?;
        record.signing_key = Some(key.to_string());
        changed = true;
    }
    if changed || cache.settings().await?.is_none() {
        cache.set_settings(&record).await?;
        let refreshed = cache.refresh_narinfo_entries().await?;
        if refreshed > 0 {
            println!("updated the listing entries of {refreshed} narinfos");
        }
    }
    Ok(record)
}

async fn bucket(store: &StoreArgs, action: BucketAction) -> Result<()> {
    let (_, backend) = open_store(store).await?;
    let show = |name: &str, record: &BucketRecord| -> Result<()> {
        println!("bucket {name}");
        println!("  anonymous read:  {}", record.anonymous_read);
        println!("  priority:        {}", record.priority);
        println!("  WantMassQuery:   {}", record.want_mass_query);
        println!("  browse (tree/):  {}", record.browse);
        match record.retention_secs {
            0 => println!("  retention:       none (store paths are kept until deleted)"),
            secs => println!("  retention:       {}", maintenance::show_duration(secs)),
        }
        match &record.signing_key {
            Some(key) => {
                let key: SecretKey = key.parse().map_err(|e| Failure(format!("{e}")))?;
                println!("  signing key:     {} (trusted-public-keys = {})", key.name(), key.to_public());
            }
            None => println!("  signing key:     none (narinfos carry only their uploaders' signatures)"),
        }
        Ok(())
    };
    match action {
        BucketAction::Create { name, flags } => {
            let cache = Cache::new(backend, &name);
            if cache.settings().await?.is_some() {
                return Err(Failure(format!("bucket {name} exists (change it with `nargate bucket set`)")));
            }
            let record = apply_settings(&cache, &flags.settings(), flags.sign).await?;
            show(&name, &record)
        }
        BucketAction::Set { name, flags } => {
            let cache = Cache::new(backend, &name);
            if cache.settings().await?.is_none() {
                return Err(Failure(format!("no bucket {name} (create it with `nargate bucket create`)")));
            }
            let record = apply_settings(&cache, &flags.settings(), flags.sign).await?;
            show(&name, &record)
        }
        BucketAction::Show { name } => {
            let record = Cache::new(backend, &name)
                .settings()
                .await?
                .ok_or_else(|| Failure(format!("no bucket {name}")))?;
            show(&name, &record)
        }
    }
}

impl BucketFlags {
    fn settings(&self) -> BucketSettings {
        BucketSettings {
            anonymous_read: self.anonymous_read,
            priority: self.priority,
            want_mass_query: self.want_mass_query,
            browse: self.browse,
            retention_secs: self.retention.map(|d| d.as_secs()),
        }
    }
}
