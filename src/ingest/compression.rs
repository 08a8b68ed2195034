//! The compressions Nix writes NARs with, known by their magic bytes (brotli, which has none, by
//! the `.br` suffix of the upload's key), and streaming decompression of each.

use std::pin::Pin;

use async_compression::tokio::bufread::{
    BrotliDecoder, BzDecoder, GzipDecoder, Lz4Decoder, XzDecoder, ZstdDecoder,
};
use tokio::io::{AsyncBufRead, AsyncRead};

/// How an uploaded NAR is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain NAR.
    None,
    /// xz (`.nar.xz`).
    Xz,
    /// zstd (`.nar.zst`).
    Zstd,
    /// bzip2 (`.nar.bz2`).
    Bzip2,
    /// gzip (Nix names these `.nar`, with `Compression: gzip`).
    Gzip,
    /// lz4 frames (`.nar.lz4`).
    Lz4,
    /// brotli (`.nar.br`).
    Brotli,
}

/// Why an upload's compression cannot be handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompressionError {
    /// lzip is the one compression Nix writes that nargate does not read.
    #[error("lzip-compressed NARs are not supported; upload it xz-, zstd- or un-compressed")]
    Lzip,
    /// The bytes are neither a NAR nor a known compression.
    #[error("the upload is neither a NAR nor compressed in a known way (magic bytes {0})")]
    Unknown(String),
}

/// The NAR magic: the length (13) of `nix-archive-1`, little-endian.
const NAR_MAGIC: &[u8] = &[13, 0, 0, 0, 0, 0, 0, 0];

impl Compression {
    /// The name Nix gives it in a narinfo's `Compression:` field.
    pub fn nix_name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
            Compression::Brotli => "br",
        }
    }

    /// Recognizes a compression from the first bytes of an upload (at least 8 when the upload is
    /// that long). `br_suffix` says the key ends with `.br`: brotli has no magic bytes.
    pub fn detect(head: &[u8], br_suffix: bool) -> Result<Compression, CompressionError> {
        let table: [(&[u8], Compression); 6] = [
            (NAR_MAGIC, Compression::None),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0], Compression::Xz),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            (b"BZh", Compression::Bzip2),
            (&[0x1f, 0x8b], Compression::Gzip),
            (&[0x04, 0x22, 0x4d, 0x18], Compression::Lz4),
        ];
        if let Some((_, c)) = table.iter().find(|(magic, _)| head.starts_with(magic)) {
            return Ok(*c);
        }
        if head.starts_with(b"LZIP") {
            return Err(CompressionError::Lzip);
        }
        if br_suffix {
            return Ok(Compression::Brotli);
        }
        Err(CompressionError::Unknown(hex::encode(&head[..head.len().min(8)])))
    }

    /// Wraps `input` in the matching streaming decoder, the xz decoder's memory limited to
    /// [`DEFAULT_XZ_MEMORY_LIMIT`](super::DEFAULT_XZ_MEMORY_LIMIT).
    pub fn decoder<'a, R: AsyncBufRead + Send + 'a>(self, input: R) -> Pin<Box<dyn AsyncRead + Send + 'a>> {
        self.decoder_with_limits(input, super::DEFAULT_XZ_MEMORY_LIMIT)
    }

    /// Wraps `input` in the matching streaming decoder; the xz decoder may use at most
    /// `xz_memory_limit` bytes (a stream that needs more fails with an error that
    /// [`is_memory_limit_error`] recognizes). The other decoders' memory is bounded by their
    /// formats (zstd's window by libzstd's default limit, 128 MiB).
    pub fn decoder_with_limits<'a, R: AsyncBufRead + Send + 'a>(
        self,
        input: R,
        xz_memory_limit: u64,
    ) -> Pin<Box<dyn AsyncRead + Send + 'a>> {
        match self {
            Compression::None => Box::pin(input),
            Compression::Xz => {
                let mut d = XzDecoder::with_mem_limit(input, xz_memory_limit);
                d.multiple_members(true);
                Box::pin(d)
            }
            Compression::Zstd => {
                let mut d = ZstdDecoder::new(input);
                d.multiple_members(true);
                Box::pin(d)
            }
            Compression::Bzip2 => {
                let mut d = BzDecoder::new(input);
                d.multiple_members(true);
                Box::pin(d)
            }
            Compression::Gzip => {
                let mut d = GzipDecoder::new(input);
                d.multiple_members(true);
                Box::pin(d)
            }
            Compression::Lz4 => {
                let mut d = Lz4Decoder::new(input);
                d.multiple_members(true);
                Box::pin(d)
            }
            Compression::Brotli => Box::pin(BrotliDecoder::new(input)),
        }
    }
}

/// Whether a decoder's error is liblzma's "memory limit reached": the xz stream needs more memory
/// than the decoder's limit allows. (liblzma's error type is not re-exported by the decoder
/// crate, so it is known by its message; a test pins it.)
pub fn is_memory_limit_error(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::Other
        && error.get_ref().is_some_and(|inner| inner.to_string() == "memory limit reached")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// The xz decoder's memory limit holds, and its error is recognized: xz's default preset has
    /// an 8 MiB dictionary, which takes about 9 MiB to decompress.
    #[tokio::test]
    async fn the_xz_memory_limit_is_enforced_and_recognized() {
        let data = vec![42u8; 100_000];
        let mut xz = vec![];
        async_compression::tokio::bufread::XzEncoder::new(&data[..]).read_to_end(&mut xz).await.unwrap();
        let mut out = vec![];
        let err =
            Compression::Xz.decoder_with_limits(&xz[..], 1 << 20).read_to_end(&mut out).await.unwrap_err();
        assert!(is_memory_limit_error(&err), "{err:?}");
        out.clear();
        Compression::Xz.decoder_with_limits(&xz[..], 16 << 20).read_to_end(&mut out).await.unwrap();
        assert_eq!(out, data);
        let other = std::io::Error::other("something else");
        assert!(!is_memory_limit_error(&other));
    }

    #[test]
    fn detects_by_magic() {
        assert_eq!(Compression::detect(b"\x0d\0\0\0\0\0\0\0nix-", false), Ok(Compression::None));
        assert_eq!(Compression::detect(b"\xfd7zXZ\0..", false), Ok(Compression::Xz));
        assert_eq!(Compression::detect(b"BZh91AY", false), Ok(Compression::Bzip2));
        assert_eq!(Compression::detect(b"LZIP\x01", false), Err(CompressionError::Lzip));
        assert_eq!(Compression::detect(b"\x1b\x00\x00", true), Ok(Compression::Brotli));
        assert!(matches!(Compression::detect(b"hello", false), Err(CompressionError::Unknown(_))));
        assert!(matches!(Compression::detect(b"", false), Err(CompressionError::Unknown(_))));
    }
}
