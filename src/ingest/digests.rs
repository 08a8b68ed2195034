//! A reader that passes bytes through while computing the digests an upload needs.

use std::pin::Pin;
use std::task::{Context, Poll};

use md5::Md5;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

/// Which digests a [`DigestingReader`] computes (it always counts bytes).
#[derive(Debug, Clone, Copy)]
pub struct Want {
    /// Compute MD5.
    pub md5: bool,
    /// Compute SHA-256.
    pub sha256: bool,
}

/// The digests of everything read through a [`DigestingReader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// Bytes read.
    pub size: u64,
    /// MD5 (the S3 ETag of these bytes), when asked for.
    pub md5: Option<[u8; 16]>,
    /// SHA-256, when asked for.
    pub sha256: Option<[u8; 32]>,
}

pin_project_lite::pin_project! {
    /// Passes bytes through from `inner`, counting them and computing MD5 (and SHA-256 if asked).
    pub struct DigestingReader<R> {
        #[pin]
        inner: R,
        size: u64,
        md5: Option<Md5>,
        sha256: Option<Sha256>,
    }
}

impl<R> DigestingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, want: Want) -> Self {
        DigestingReader {
            inner,
            size: 0,
            md5: want.md5.then(Md5::new),
            sha256: want.sha256.then(Sha256::new),
        }
    }

    /// The digests of all bytes read so far.
    pub fn digests(&self) -> Digests {
        Digests {
            size: self.size,
            md5: self.md5.clone().map(|h| h.finalize().into()),
            sha256: self.sha256.clone().map(|h| h.finalize().into()),
        }
    }

    /// The wrapped reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

impl<R: AsyncRead> AsyncRead for DigestingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            *this.size += new.len() as u64;
            if let Some(h) = this.md5.as_mut() {
                h.update(new);
            }
            if let Some(h) = this.sha256.as_mut() {
                h.update(new);
            }
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn computes_known_digests() {
        let mut r = DigestingReader::new(&b"abc"[..], Want { md5: true, sha256: true });
        let mut out = vec![];
        r.read_to_end(&mut out).await.unwrap();
        let d = r.digests();
        assert_eq!(d.size, 3);
        assert_eq!(hex::encode(d.md5.unwrap()), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            hex::encode(d.sha256.unwrap()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
