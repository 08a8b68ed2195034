//! Ingest streams: a NAR far larger than the memory the ingest may use goes in with bounded
//! memory. This test binary holds this one test alone, so the process's peak resident memory
//! (VmHWM) is this test's.

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};

use nargate::castore::ChunkStore;
use nargate::ingest::{IngestOptions, ingest_nar};
use nargate::nix::nar::NarWriter;
use tokio::io::{AsyncRead, ReadBuf};

/// A NAR of one regular file of `size` pseudo-random bytes, generated as it is read: it never
/// exists in memory as a whole.
struct GeneratedNar {
    head: Vec<u8>,
    tail: Vec<u8>,
    size: u64,
    pos: u64,
    state: u64,
}

impl GeneratedNar {
    fn new(size: u64) -> Self {
        // The framing around the contents, as the NAR writer writes a file with a hole.
        let mut writer = NarWriter::new(Vec::new()).unwrap();
        writer.file_header(false, size).unwrap();
        let head_len = writer.get_ref().len();
        writer.file_trailer(size).unwrap();
        let mut head = writer.finish().unwrap();
        let tail = head.split_off(head_len);
        GeneratedNar { head, tail, size, pos: 0, state: 0x9e37_79b9_7f4a_7c15 }
    }

    fn total(&self) -> u64 {
        self.head.len() as u64 + self.size + self.tail.len() as u64
    }
}

impl AsyncRead for GeneratedNar {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let head = this.head.len() as u64;
        while buf.remaining() > 0 && this.pos < this.total() {
            if this.pos < head {
                buf.put_slice(&this.head[this.pos as usize..]);
                this.pos = head;
            } else if this.pos < head + this.size {
                let mut block = [0u8; 4096];
                for word in block.chunks_exact_mut(8) {
                    this.state ^= this.state << 13;
                    this.state ^= this.state >> 7;
                    this.state ^= this.state << 17;
                    word.copy_from_slice(&this.state.to_le_bytes());
                }
                let n = (buf.remaining() as u64).min(head + this.size - this.pos).min(4096) as usize;
                buf.put_slice(&block[..n]);
                this.pos += n as u64;
            } else {
                let at = (this.pos - head - this.size) as usize;
                let n = buf.remaining().min(this.tail.len() - at);
                buf.put_slice(&this.tail[at..at + n]);
                this.pos += n as u64;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Peak resident memory of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[tokio::test]
async fn a_nar_of_256_mib_ingests_within_a_fraction_of_it() {
    let (_dir, backend) = common::fs_backend();
    let store = ChunkStore::new(backend, 0);
    let before = peak_rss();
    let nar = GeneratedNar::new(256 << 20);
    let total = nar.total();
    let options = IngestOptions { upload_concurrency: 4, ..Default::default() };
    let ingested = ingest_nar(&store, nar, &options).await.unwrap();
    assert_eq!(ingested.record.nar_size, total);
    let grown = peak_rss().saturating_sub(before);
    // Each upload in flight holds a chunk (at most the maximum size) and its encoded copy, and the
    // chunker holds about one more: a bound set by the options, whatever the NAR's size.
    let max_chunk = u64::from(options.chunker.max);
    let bound = 3 * options.upload_concurrency as u64 * max_chunk + (48 << 20);
    assert!(
        grown < bound,
        "peak memory grew by {} MiB for a {} MiB NAR (bound {} MiB)",
        grown >> 20,
        total >> 20,
        bound >> 20
    );
}
