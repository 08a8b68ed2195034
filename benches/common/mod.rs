//! What the benchmarks share: generated file contents, and (in [`serving`]) the gateway as a
//! process with clients of it and of Garage.
#![allow(dead_code)]

pub mod serving;

/// `n` bytes that compress somewhat, like binaries and text do, different for each `seed`.
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
