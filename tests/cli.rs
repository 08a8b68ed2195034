//! The command line, as a user runs it: `import` every fixture cache, then `cat` every store path
//! back, whole and in ranges, byte-equal to what Nix dumped.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn nargate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nargate")).args(args).output().expect("run nargate")
}

/// (store path, NAR file) of every fixture NAR, from `nars/INDEX`.
fn fixture_nars() -> Vec<(String, PathBuf)> {
    let index = std::fs::read_to_string(fixtures().join("nars/INDEX")).unwrap();
    index
        .lines()
        .map(|line| {
            let path = line.split(' ').next().unwrap().to_owned();
            let base = path.strip_prefix("/nix/store/").unwrap().to_owned();
            (path, fixtures().join("nars").join(format!("{base}.nar")))
        })
        .collect()
}

#[test]
fn import_then_cat_gives_back_the_nars() {
    let data = tempfile::tempdir().unwrap();
    let data_arg = data.path().to_str().unwrap();
    let caches: Vec<String> =
        ["cache-xz", "cache-zstd", "cache-br", "cache-none", "cache-gzip", "cache-lz4", "cache-bzip2"]
            .iter()
            .map(|c| fixtures().join(c).to_str().unwrap().to_owned())
            .collect();
    let mut args = vec!["import", "--data", data_arg, "--bucket", "fixtures"];
    args.extend(caches.iter().map(String::as_str));
    let out = nargate(&args);
    assert!(out.status.success(), "import failed: {}", String::from_utf8_lossy(&out.stderr));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("imported 28 store paths"), "{summary}");

    for (store_path, nar_file) in fixture_nars() {
        let expected = std::fs::read(&nar_file).unwrap();
        let out = nargate(&["cat", "--data", data_arg, "--bucket", "fixtures", &store_path]);
        assert!(out.status.success(), "cat {store_path}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout == expected, "cat {store_path} differs from the fixture NAR");

        let base = store_path.strip_prefix("/nix/store/").unwrap();
        let (offset, length) = (expected.len() / 3, expected.len() / 2);
        let out = nargate(&[
            "cat",
            "--data",
            data_arg,
            "--bucket",
            "fixtures",
            base,
            "--offset",
            &offset.to_string(),
            "--length",
            &length.to_string(),
        ]);
        assert!(out.status.success());
        assert!(out.stdout == expected[offset..offset + length], "range of {base}");
    }

    // Importing the same caches again stores nothing new.
    let out = nargate(&args);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(" 0 new chunk bytes"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn cat_of_an_unknown_path_fails_clearly() {
    let data = tempfile::tempdir().unwrap();
    let out = nargate(&[
        "cat",
        "--data",
        data.path().to_str().unwrap(),
        "/nix/store/00000000000000000000000000000000-nothing",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in bucket cache"));
}

#[test]
fn import_refuses_a_nar_that_does_not_match_its_narinfo() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    std::fs::create_dir_all(cache.join("nar")).unwrap();
    let source = fixtures().join("cache-none");
    let info_file = std::fs::read_dir(&source)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "narinfo"))
        .unwrap();
    let info = std::fs::read_to_string(&info_file).unwrap();
    std::fs::write(cache.join(info_file.file_name().unwrap()), &info).unwrap();
    let url = info.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
    // Another store path's NAR under this narinfo's URL.
    let other = fixture_nars().into_iter().map(|(_, f)| f).find(|f| {
        std::fs::read(f).unwrap().len().to_string()
            != info.lines().find_map(|l| l.strip_prefix("NarSize: ")).unwrap()
    });
    std::fs::copy(other.unwrap(), cache.join(url)).unwrap();
    let data = work.path().join("data");
    let out = nargate(&["import", "--data", data.to_str().unwrap(), cache.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mismatch"), "{stderr}");
}

/// `nargate repair` commits a narinfo left pending by an upload cut between its halves.
#[tokio::test]
async fn repair_commits_what_an_interrupted_upload_left_pending() {
    let data = tempfile::tempdir().unwrap();
    let data_arg = data.path().to_str().unwrap().to_owned();
    let cache_dir = fixtures().join("cache-none");
    let out = nargate(&["import", "--data", &data_arg, "--bucket", "b", cache_dir.to_str().unwrap()]);
    assert!(out.status.success(), "import failed: {}", String::from_utf8_lossy(&out.stderr));

    // As if the narinfo's gateway died after writing its pending record: the NAR is held, the
    // path is not visible, the narinfo waits.
    let backend: nargate::backend::DynBackend =
        std::sync::Arc::new(nargate::backend::fs::FsBackend::new(data.path().to_path_buf()).unwrap());
    let cache = nargate::cache::Cache::new(backend.clone(), "b");
    let (info, _) = nargate::ingest::import::narinfos(&cache_dir).unwrap().remove(0);
    let store_hash = info.store_path.hash_part();
    assert!(cache.remove_store_path(&store_hash).await.unwrap());
    let nar_hash = nargate::nix::nixbase32::encode(&info.nar_hash_digest().unwrap());
    let pending = nargate::cache::Pending { narinfo: info.render() };
    backend.put(&format!("caches/b/pending/{nar_hash}/{store_hash}"), pending.encode().into()).await.unwrap();
    let store_path = info.store_path.to_string();
    assert!(!nargate(&["cat", "--data", &data_arg, "--bucket", "b", &store_path]).status.success());

    let out = nargate(&["repair", "--data", &data_arg]);
    assert!(out.status.success(), "repair failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 store path(s) committed"), "{out:?}");
    assert!(nargate(&["cat", "--data", &data_arg, "--bucket", "b", &store_path]).status.success());
}
