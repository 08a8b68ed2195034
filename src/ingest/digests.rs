//! The digests an upload needs: a reader that computes them as bytes pass through it, and a
//! worker that computes them on a thread of its own from blocks sent to it.

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

/// Blocks that may wait for a [`HashWorker`] before [`HashWorker::update`] waits (back-pressure).
const HASH_QUEUE: usize = 4;

/// Computes digests of a stream on a blocking thread of its own, from blocks sent to it, so
/// that hashing runs beside the stage that produces the blocks (it shares nothing with it but the
/// blocks, which are reference-counted, not copied).
#[derive(Debug)]
pub struct HashWorker {
    blocks: tokio::sync::mpsc::Sender<bytes::Bytes>,
    done: tokio::task::JoinHandle<Digests>,
}

impl HashWorker {
    /// Starts a worker that computes what `want` asks for (and counts bytes).
    pub fn start(want: Want) -> Self {
        let (blocks, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(HASH_QUEUE);
        let done = tokio::task::spawn_blocking(move || {
            let mut md5 = want.md5.then(Md5::new);
            let mut sha256 = want.sha256.then(Sha256::new);
            let mut size = 0u64;
            while let Some(block) = rx.blocking_recv() {
                size += block.len() as u64;
                if let Some(h) = md5.as_mut() {
                    h.update(&block);
                }
                if let Some(h) = sha256.as_mut() {
                    h.update(&block);
                }
            }
            Digests {
                size,
                md5: md5.map(|h| h.finalize().into()),
                sha256: sha256.map(|h| h.finalize().into()),
            }
        });
        HashWorker { blocks, done }
    }

    /// Adds the next block of the stream, waiting while the worker is [`HASH_QUEUE`] blocks behind.
    pub async fn update(&self, block: bytes::Bytes) {
        // The worker ends only when every sender is gone: a failed send cannot happen here.
        let _ = self.blocks.send(block).await;
    }

    /// The stream ends: the digests of every block added.
    pub async fn finish(self) -> Digests {
        drop(self.blocks);
        match self.done.await {
            Ok(digests) => digests,
            // Hashing does not panic; should the thread be lost, it is a bug to surface loudly.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
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

    #[tokio::test]
    async fn the_worker_computes_what_the_reader_does() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let want = Want { md5: true, sha256: true };
        let mut reader = DigestingReader::new(&data[..], want);
        tokio::io::copy(&mut reader, &mut tokio::io::sink()).await.unwrap();
        let worker = HashWorker::start(want);
        for block in data.chunks(7777) {
            worker.update(bytes::Bytes::copy_from_slice(block)).await;
        }
        assert_eq!(worker.finish().await, reader.digests());
        let only_md5 = HashWorker::start(Want { md5: true, sha256: false });
        only_md5.update(bytes::Bytes::from_static(b"abc")).await;
        let d = only_md5.finish().await;
        assert_eq!((d.size, d.sha256), (3, None));
        assert_eq!(hex::encode(d.md5.unwrap()), "900150983cd24fb0d6963f7d28e17f72");
    }
}
