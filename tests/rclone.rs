//! Debian's rclone (1.60, an `s3` remote with `provider = Other`, path-style: it lists with
//! ListObjects V1) against a gateway over a real Garage: it copies caches in and out, reads
//! ranges, checks and hashes what it reads, and mounts a cache read-only (`/dev/fuse`, Debian's
//! fuse3) so that NARs read through the mount, with seeks, equal what Nix dumped.

mod common;

use std::process::Command;

use common::gateway::{fixture_nars, fixtures, start};
use common::rclone::Rclone;

/// `rclone copy` of `cache-none` into a bucket and back out; `lsf`, `cat --offset --count`,
/// `check --one-way` and `md5sum` agree with the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rclone_copies_checks_and_hashes_a_cache() {
    let gw = start(common::garage_backend().await).await;
    let rclone = Rclone::new(&gw);
    let cache = fixtures().join("cache-none");
    let cache_arg = cache.to_str().unwrap();
    let ok = |args: &[&str]| tokio::task::block_in_place(|| rclone.ok(args));
    // rclone HEADs what it uploaded unless told not to (`--s3-no-head`): a narinfo uploaded
    // before its NAR is not visible yet, the upload key of a compressed NAR is never kept, and
    // nix-cache-info is the bucket's own (its settings, rendered), so those HEADs would fail.
    ok(&["mkdir", "gw:rcnone"]);
    ok(&["copy", "--s3-no-head", cache_arg, "gw:rcnone"]);
    ok(&["mkdir", "gw:rcxz"]);
    ok(&["copy", "--s3-no-head", fixtures().join("cache-xz").to_str().unwrap(), "gw:rcxz"]);

    // Copied again with other modification times: rclone updates them (a CopyObject onto itself).
    let touched = tempfile::tempdir().unwrap();
    common::nix::copy_dir(&cache, touched.path());
    let again = tokio::task::block_in_place(|| {
        rclone.run(&["copy", "-v", "--s3-no-head", touched.path().to_str().unwrap(), "gw:rcnone"])
    });
    assert!(again.status.success(), "rclone copy again: {}", String::from_utf8_lossy(&again.stderr));
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("Updated modification time in destination"), "{said}");

    let listed = String::from_utf8(ok(&["lsf", "-R", "gw:rcnone"])).unwrap();
    for (store_path, nar_hash, _) in fixture_nars() {
        let hash = &store_path["/nix/store/".len()..][..32];
        for key in [format!("{hash}.narinfo"), format!("nar/{nar_hash}.nar"), format!("{hash}.ls")] {
            assert!(listed.lines().any(|l| l == key), "{key} in {listed}");
        }
    }
    let xz = String::from_utf8(ok(&["lsf", "-R", "gw:rcxz"])).unwrap();
    assert!(!xz.contains(".nar.xz") && xz.contains(".narinfo"), "{xz}");

    // Every file rclone uploaded, but nix-cache-info (the bucket's own, with its settings), is
    // there byte for byte: sizes and MD5s.
    let check = tokio::task::block_in_place(|| {
        rclone.run(&["check", "--one-way", "--exclude", "nix-cache-info", cache_arg, "gw:rcnone"])
    });
    assert!(check.status.success(), "rclone check: {}", String::from_utf8_lossy(&check.stderr));
    let sums = String::from_utf8(ok(&["md5sum", "gw:rcnone/nar"])).unwrap();
    for (_, nar_hash, nar) in fixture_nars() {
        let line = format!("{}  {nar_hash}.nar", nargate::cache::md5_hex(&nar));
        assert!(sums.lines().any(|l| l == line), "{line} in {sums}");
    }

    // Ranges, and a copy back out of the xz bucket: uncompressed NARs, as the narinfos say.
    let (_, nar_hash, nar) = fixture_nars().into_iter().max_by_key(|(_, _, n)| n.len()).unwrap();
    let part = ok(&["cat", "--offset", "4096", "--count", "100000", &format!("gw:rcxz/nar/{nar_hash}.nar")]);
    assert!(part == nar[4096..4096 + 100_000]);
    let out = tempfile::tempdir().unwrap();
    ok(&["copy", "gw:rcxz/nar", out.path().to_str().unwrap()]);
    for (store_path, nar_hash, nar) in fixture_nars() {
        let got = std::fs::read(out.path().join(format!("{nar_hash}.nar"))).unwrap();
        assert!(got == nar, "{store_path} copied out");
    }
}

/// `rclone mount` of a cache: `store/` lists each path by name, a NAR read with seeks (`dd
/// skip=…`) is the fixture's slice, and a whole read equals the fixture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rclone_mount_reads_nars_with_seeks() {
    let gw = start(common::garage_backend().await).await;
    gw.import("mounted", false, &["cache-zstd"]).await;
    let rclone = Rclone::new(&gw);
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let mount =
        tokio::task::block_in_place(|| rclone.mount("gw:mounted", &mountpoint, &["--dir-cache-time", "1s"]));

    let names: Vec<String> = std::fs::read_dir(mountpoint.join("store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for (store_path, _, _) in fixture_nars() {
        let name = format!("{}.nar", &store_path["/nix/store/".len()..]);
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    let (store_path, nar_hash, nar) = fixture_nars().into_iter().max_by_key(|(_, _, n)| n.len()).unwrap();
    let file = mountpoint.join("nar").join(format!("{nar_hash}.nar"));
    for (skip, count) in [(0usize, 3usize), (100, 5), (37, 11)] {
        let (mountpoint, file) = (mountpoint.clone(), file.clone());
        let out = tokio::task::block_in_place(|| {
            Command::new("dd")
                .arg(format!("if={}", file.display()))
                .args(["bs=4096", &format!("skip={skip}"), &format!("count={count}"), "status=none"])
                .current_dir(&mountpoint)
                .output()
                .expect("run dd")
        });
        assert!(out.status.success(), "dd: {}\n{}", String::from_utf8_lossy(&out.stderr), mount.log());
        let (start, end) = (skip * 4096, ((skip + count) * 4096).min(nar.len()));
        assert!(out.stdout == nar[start.min(end)..end], "dd skip={skip} count={count} of {store_path}");
    }
    let whole = tokio::task::block_in_place(|| std::fs::read(&file).unwrap());
    assert!(whole == nar, "a whole read through the mount");
    let alias = mountpoint.join("store").join(format!("{}.nar", &store_path["/nix/store/".len()..]));
    assert!(tokio::task::block_in_place(|| std::fs::read(&alias).unwrap()) == nar);
    let log = mount.log();
    assert!(!log.contains("corrupted on transfer") && !log.contains("ERROR"), "rclone mount log:\n{log}");
}

/// rclone's own MD5 check on close: a read handle of a mount hashes what it reads in order and,
/// when the read reached the end, compares that with the object's MD5 (for S3 the ETag, which
/// rclone 1.60 takes from each GET's response) on Flush, logging "corrupted on transfer" on a mismatch. A
/// whole read of a NAR (whose ETag is its MD5, as `rclone md5sum` shows) passes it. The check is
/// live on the same mount: a plain object replaced half-way through a read (same size, other
/// bytes; the mount reads in 256 KiB ranges without read-ahead, so the rest comes from the new
/// object with its new ETag) fails it, and the log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rclone_mount_whole_read_passes_rclones_md5_check() {
    use std::io::Read as _;
    let gw = start(common::garage_backend().await).await;
    gw.import("checked", false, &["cache-xz"]).await;
    let client = gw.client();
    // Below the S3 backend's 8 MiB part size: one PutObject to Garage, whose ETag is the MD5.
    let (before, after) = (common::pseudo_random(4 << 20, 1), common::pseudo_random(4 << 20, 2));
    let put =
        |body: Vec<u8>| client.put_object().bucket("checked").key("log/swapped").body(body.into()).send();
    put(before.clone()).await.unwrap();

    let rclone = Rclone::new(&gw);
    let (_, nar_hash, nar) = fixture_nars().into_iter().max_by_key(|(_, _, n)| n.len()).unwrap();
    let sums =
        String::from_utf8(tokio::task::block_in_place(|| rclone.ok(&["md5sum", "gw:checked"]))).unwrap();
    for (key, bytes) in [(format!("nar/{nar_hash}.nar"), &nar), ("log/swapped".to_owned(), &before)] {
        let line = format!("{}  {key}", nargate::cache::md5_hex(bytes));
        assert!(sums.lines().any(|l| l == line), "rclone's MD5 of {key} is its MD5: {line} in {sums}");
    }

    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let ranges =
        ["--buffer-size", "0", "--vfs-read-chunk-size", "256k", "--vfs-read-chunk-size-limit", "256k"];
    let mount = tokio::task::block_in_place(|| rclone.mount("gw:checked", &mountpoint, &ranges));
    let corrupted = |log: &str| -> Vec<String> {
        log.lines().filter(|l| l.contains("corrupted on transfer")).map(str::to_owned).collect()
    };

    let file = mountpoint.join("nar").join(format!("{nar_hash}.nar"));
    let whole = tokio::task::block_in_place(|| std::fs::read(&file).unwrap());
    assert!(whole == nar, "a whole read of the NAR through the mount");
    let swapped = mountpoint.join("log/swapped");
    assert!(tokio::task::block_in_place(|| std::fs::read(&swapped).unwrap()) == before);
    // A handle is released (and checked) after close returns: give it time to log.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let log = mount.log();
    assert!(corrupted(&log).is_empty() && !log.contains("ERROR"), "rclone mount log:\n{log}");
    // rclone checks on Flush (the close(2)): the NAR's whole read was flushed without error.
    let flushed = format!("&{{nar/{nar_hash}.nar (r)}}: >Flush: err=<nil>");
    assert!(log.contains(&flushed), "{flushed} in the rclone mount log:\n{log}");

    // The negative control: the object changes between two ranges of one read.
    let mut read = vec![0; 256 << 10];
    let mut handle = tokio::task::block_in_place(|| std::fs::File::open(&swapped)).unwrap();
    tokio::task::block_in_place(|| handle.read_exact(&mut read)).unwrap();
    put(after.clone()).await.unwrap();
    tokio::task::block_in_place(|| handle.read_to_end(&mut read)).unwrap();
    drop(handle);
    assert!(read[..256 << 10] == before[..256 << 10] && read != before, "the read saw the replacement");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let failed = corrupted(&mount.log());
    common::step(format!("rclone mount: the replaced object's read: {failed:?}"));
    let flush = "log/swapped: ReadFileHandle.Flush error: corrupted on transfer: md5 hash differ";
    assert!(
        failed.iter().any(|l| l.contains(flush)),
        "rclone's check caught the object replaced mid-read:\n{}",
        mount.log()
    );
}
