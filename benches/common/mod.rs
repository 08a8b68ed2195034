//! What the benchmarks share: generated file contents, and (in [`serving`]) the gateway as a
//! process with clients of it and of Garage.
#![allow(dead_code)]

pub mod serving;

use std::path::{Path, PathBuf};

/// `n` bytes of mostly random words, different for each `seed`: zstd shrinks them by only about
/// a tenth (binaries and text by more than half).
pub fn content(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let words: [&[u8]; 8] =
        [b"nix", b"store ", b"\x00\x00\x00\x00", b"lib", b"/bin/", b"\x7fELF", b"main", b"hello world\n"];
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(3) {
            out.extend_from_slice(words[(x >> 8) as usize % 8]);
        } else {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out.truncate(n);
    out
}

/// Collects the regular files under `dir`, not following symlinks.
pub fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&entry.path(), out),
            Ok(t) if t.is_file() => out.push(entry.path()),
            _ => {}
        }
    }
}

/// The directories of real files a benchmark may take content from: ELF libraries and
/// executables, what Nix store paths mostly hold (on Debian, about 960 MiB).
pub const REAL_FILE_DIRS: [&str; 2] = ["/usr/lib/x86_64-linux-gnu", "/usr/bin"];

/// The contents of regular files under [`REAL_FILE_DIRS`], in path order, until they hold at
/// least `limit` bytes (fewer if the directories hold less), each with its path. A file linked
/// under several names is taken once (Debian's Mesa drivers are one file under a dozen).
pub fn real_files(limit: usize) -> Vec<(PathBuf, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt as _;
    let mut paths = vec![];
    for dir in REAL_FILE_DIRS {
        walk(Path::new(dir), &mut paths);
    }
    let mut seen = std::collections::HashSet::new();
    let mut files = vec![];
    let mut total = 0;
    for path in paths {
        if total >= limit {
            break;
        }
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let Ok(data) = std::fs::read(&path) else { continue };
        total += data.len();
        files.push((path, data));
    }
    files
}
