//! Nix's base-32 encoding ("nixbase32"), and Nix's XOR hash folding.
//!
//! Nix prints hashes in base 32 with its own alphabet, which omits `e`, `o`, `u` and `t` so that a
//! hash never spells a word, and in its own bit order: the *last* character holds the five lowest
//! bits of the first byte. `n` bytes take `ceil(8 n / 5)` characters; the unused high bits of the
//! first character must be zero. A SHA-256 (32 bytes) takes 52 characters, a store path hash
//! (20 bytes) 32.

/// The 32 characters of Nix's base-32 alphabet, in order of their value.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Marks a byte outside [`ALPHABET`] in [`DECODE_TABLE`].
const INVALID: u8 = 0xff;

/// Maps each byte to its value in [`ALPHABET`], or to [`INVALID`].
const DECODE_TABLE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut value = 0;
    while value < ALPHABET.len() {
        table[ALPHABET[value] as usize] = value as u8;
        value += 1;
    }
    table
};

/// Why a string is not valid nixbase32.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Nixbase32Error {
    /// No number of bytes encodes to this many characters (e.g. 1, 4 or 6).
    #[error("{0} characters is not a valid nixbase32 length")]
    InvalidLength(usize),
    /// A byte that is not in [`ALPHABET`].
    #[error("invalid nixbase32 character {:?} at byte {position}", char::from(*byte))]
    InvalidChar {
        /// Its byte offset in the string.
        position: usize,
        /// The offending byte (for non-ASCII characters, their first byte).
        byte: u8,
    },
    /// The first character sets bits beyond the last byte: not what Nix would print.
    #[error("nixbase32 string has non-zero leftover bits")]
    NonZeroLeftoverBits,
}

/// The number of characters that `n` bytes encode to: `ceil(8 n / 5)` (saturating at
/// `usize::MAX` for absurd `n`).
pub fn encoded_len(n: usize) -> usize {
    (n / 5).saturating_mul(8).saturating_add((n % 5 * 8).div_ceil(5))
}

/// The number of bytes that a string of `len` characters decodes to, if it is a valid length.
fn decoded_len(len: usize) -> Option<usize> {
    let n = len / 8 * 5 + len % 8 * 5 / 8;
    (encoded_len(n) == len).then_some(n)
}

/// Encodes `bytes` as nixbase32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let byte = |i: usize| u16::from(bytes.get(i).copied().unwrap_or(0));
    (0..len)
        .rev()
        .map(|n| {
            let bit = n * 5;
            let (i, shift) = (bit / 8, bit % 8);
            let window = (byte(i) | byte(i + 1) << 8) >> shift;
            char::from(ALPHABET[usize::from(window & 0x1f)])
        })
        .collect()
}

/// Decodes a nixbase32 string, rejecting characters outside the alphabet, impossible lengths, and
/// non-zero leftover bits (so that every byte string has exactly one accepted encoding).
pub fn decode(s: &str) -> Result<Vec<u8>, Nixbase32Error> {
    let len = decoded_len(s.len()).ok_or(Nixbase32Error::InvalidLength(s.len()))?;
    if let Some((position, byte)) =
        s.bytes().enumerate().find(|&(_, c)| DECODE_TABLE[usize::from(c)] == INVALID)
    {
        return Err(Nixbase32Error::InvalidChar { position, byte });
    }
    let mut out = vec![0u8; len];
    for (n, c) in s.bytes().rev().enumerate() {
        let digit = DECODE_TABLE[usize::from(c)];
        let bit = n * 5;
        let (i, shift) = (bit / 8, bit % 8);
        let [low, high] = (u16::from(digit) << shift).to_le_bytes();
        if let Some(b) = out.get_mut(i) {
            *b |= low;
        }
        match out.get_mut(i + 1) {
            Some(b) => *b |= high,
            None if high != 0 => return Err(Nixbase32Error::NonZeroLeftoverBits),
            None => {}
        }
    }
    Ok(out)
}

/// Folds `input` into `n` bytes by XOR, as Nix's `compressHash`: byte `i` of the input is XORed
/// into byte `i % n` of the output. Store path hashes are the SHA-256 of a fingerprint folded to
/// 20 bytes. Returns an empty vector if `n` is 0.
pub fn compress_hash(input: &[u8], n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    if n == 0 {
        return out;
    }
    for (i, b) in input.iter().enumerate() {
        out[i % n] ^= b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// SHA-256 of the empty string, in hex and as `nix hash to-base32` prints it.
    const EMPTY_SHA256_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_SHA256_NIX32: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";

    #[test]
    fn known_vector() {
        let bytes = hex::decode(EMPTY_SHA256_HEX).unwrap();
        assert_eq!(encode(&bytes), EMPTY_SHA256_NIX32);
        assert_eq!(decode(EMPTY_SHA256_NIX32).unwrap(), bytes);
    }

    #[test]
    fn small_values_and_bit_order() {
        assert_eq!(encode(&[]), "");
        assert_eq!(decode("").unwrap(), Vec::<u8>::new());
        // The last character holds the lowest bits of the first byte.
        assert_eq!(encode(&[0x01]), "01");
        assert_eq!(encode(&[0x1f]), "0z");
        assert_eq!(encode(&[0x20]), "10");
        assert_eq!(encode(&[0xff]), "7z");
        assert_eq!(encode(&[0, 1]), "0080");
    }

    #[test]
    fn lengths() {
        let expected = [(0, 0), (1, 2), (2, 4), (3, 5), (4, 7), (5, 8), (20, 32), (32, 52)];
        for (n, len) in expected {
            assert_eq!(encoded_len(n), len, "encoded_len({n})");
            assert_eq!(decoded_len(len), Some(n));
        }
        for len in [1, 3, 6, 9] {
            assert_eq!(decode(&"0".repeat(len)), Err(Nixbase32Error::InvalidLength(len)));
        }
        // No overflow at the extreme.
        assert_eq!(encoded_len(usize::MAX), usize::MAX);
    }

    #[test]
    fn rejects_bad_characters() {
        for bad in ["e", "o", "u", "t", "A", "-", "é"] {
            // A 4-byte string (a valid length), the bad character at byte 1.
            let s = format!("0{bad}{}", "0".repeat(3 - bad.len()));
            assert_eq!(
                decode(&s),
                Err(Nixbase32Error::InvalidChar { position: 1, byte: s.as_bytes()[1] }),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_leftover_bits() {
        // One byte needs 8 bits of the 10 two characters hold: "7z" is 0xff, "8z" would be 0x1ff.
        assert_eq!(decode("7z").unwrap(), vec![0xff]);
        assert_eq!(decode("8z"), Err(Nixbase32Error::NonZeroLeftoverBits));
        assert_eq!(decode("z0"), Err(Nixbase32Error::NonZeroLeftoverBits));
        let mut hash = EMPTY_SHA256_NIX32.to_string();
        hash.replace_range(0..1, "z");
        assert_eq!(decode(&hash), Err(Nixbase32Error::NonZeroLeftoverBits));
    }

    #[test]
    fn compress_hash_folds_by_xor() {
        assert_eq!(compress_hash(&[1, 2, 3, 4, 5], 2), vec![1 ^ 3 ^ 5, 2 ^ 4]);
        assert_eq!(compress_hash(&[1, 2], 4), vec![1, 2, 0, 0]);
        assert_eq!(compress_hash(&[1, 2], 0), Vec::<u8>::new());
        assert_eq!(compress_hash(&[0xaa; 32], 20).len(), 20);
    }

    proptest! {
        #[test]
        fn round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let s = encode(&bytes);
            prop_assert_eq!(s.len(), encoded_len(bytes.len()));
            prop_assert_eq!(decode(&s).unwrap(), bytes);
        }

        #[test]
        fn decode_never_panics(s in "[0-9a-z]{0,60}") {
            if let Ok(bytes) = decode(&s) {
                prop_assert_eq!(encode(&bytes), s);
            }
        }
    }
}
