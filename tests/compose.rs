//! `compose/`: Debian's docker-compose (1.29) validates `compose/docker-compose.yml` without an
//! engine (`docker-compose config`), and every nargate configuration shipped (`config/*.toml`,
//! `compose/config/nargate*.toml`) loads with the project's own parser; the compose one also
//! with the environment the compose file gives the `nargate` service. Without docker-compose
//! (`.ci/install-tools.sh` installs it) the test fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use nargate::config::{BackendConfig, Config};

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `docker-compose -f compose/docker-compose.yml config`: the resolved file, which must validate.
fn compose_config() -> String {
    let program = common::nix::find_program("docker-compose");
    let file = root().join("compose/docker-compose.yml");
    common::step(format!("docker-compose -f {} config", file.display()));
    let out = Command::new(program).arg("-f").arg(&file).arg("config").output().expect("run docker-compose");
    assert!(out.status.success(), "docker-compose config: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The `*.toml` files of `dir` whose names start with `prefix`.
fn tomls(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    files.sort();
    files
}

#[test]
fn the_compose_file_validates_and_its_configs_load() {
    let resolved = compose_config();
    for service in ["garage:", "garage-init:", "nargate:"] {
        assert!(resolved.lines().any(|l| l == format!("  {service}")), "service {service} in\n{resolved}");
    }
    let image = resolved.lines().find_map(|l| l.trim().strip_prefix("image: dxflrs/garage:"));
    let tag = image.unwrap_or_else(|| panic!("Garage's official image in\n{resolved}"));
    assert!(tag.starts_with("v1.") || tag.starts_with("v2."), "a v1 or v2 Garage tag: {tag}");
    assert!(resolved.contains("condition: service_completed_successfully"), "{resolved}");
    assert!(root().join("Dockerfile").is_file() && root().join("compose/init/garage-init.sh").is_file());

    // Every nargate configuration shipped loads as it is.
    let shipped: Vec<PathBuf> = tomls(&root().join("config"), "")
        .into_iter()
        .chain(tomls(&root().join("compose/config"), "nargate"))
        .collect();
    assert!(shipped.len() >= 2, "{shipped:?}");
    for file in &shipped {
        common::step(format!("Config::from_toml({})", file.display()));
        let text = std::fs::read_to_string(file).unwrap();
        Config::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }

    // The compose one, with the NARGATE_* variables compose gives the gateway: an S3 backend on
    // the compose Garage with the key the init service imports, and the clients' key pair.
    let env: Vec<(String, String)> = resolved
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(name, _)| name.starts_with("NARGATE_") && !name.starts_with("NARGATE_GARAGE_"))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    assert_eq!(env.len(), 5, "{env:?}");
    let file = root().join("compose/config/nargate.toml");
    let config = Config::load(Some(&file), env).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let BackendConfig::S3(s3) = &config.backend else { panic!("an S3 backend: {:?}", config.backend) };
    assert_eq!(
        (s3.endpoint.as_deref(), s3.bucket.as_str(), s3.path_style),
        (Some("http://garage:3900"), "nargate", true)
    );
    assert_eq!(config.listen.port(), 9000);
    assert!(config.client_key_pair().is_some(), "the clients' key pair from the environment");
    assert!(config.buckets.contains_key("cache"), "the cache bucket, made at start");

    // Garage's config has what the compose file and the init script rely on.
    let garage: toml::Value =
        std::fs::read_to_string(root().join("compose/config/garage.toml")).unwrap().parse().unwrap();
    assert_eq!(garage["s3_api"]["api_bind_addr"].as_str(), Some("[::]:3900"));
    assert_eq!(garage["s3_api"]["s3_region"].as_str(), Some(s3.region.as_str()));
    assert_eq!(garage["admin"]["api_bind_addr"].as_str(), Some("[::]:3903"));
    assert_eq!(garage["replication_factor"].as_integer(), Some(1));
}
