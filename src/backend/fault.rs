//! A wrapper that injects faults, for tests: failed requests, corrupt or short bodies, streamed
//! put bodies that fail half-way, latency.
//!
//! The faults can be changed while the backend is in use, from any thread.
//!
//! ```
//! # use std::sync::Arc;
//! # use nargate::backend::{Backend, BackendError, DynBackend, get_bytes, fault::FaultyBackend, fs::FsBackend};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let faulty = Arc::new(FaultyBackend::new(FsBackend::new(dir.path().into())?));
//! let backend: DynBackend = faulty.clone();
//! faulty.fail_prefix("locks/");
//! assert!(matches!(backend.put("locks/gc", "x".into()).await, Err(BackendError::Injected { .. })));
//! faulty.clear();
//! backend.put("locks/gc", "x".into()).await?;
//! # Ok(()) }
//! ```

use std::ops::Range;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt, future};

use super::{
    Attributes, Backend, BackendError, ByteStream, GetResult, ListPage, ListRequest, ObjectMeta, Op,
    PutOptions,
};

/// A backend that passes requests on to the one it wraps, except where a fault says otherwise.
#[derive(Debug)]
pub struct FaultyBackend<B> {
    inner: B,
    faults: Mutex<Faults>,
}

/// The faults a [`FaultyBackend`] injects now.
#[derive(Debug, Clone, Default)]
struct Faults {
    /// Requests that fail: of this kind (any kind for `None`) on keys with this prefix.
    fail: Vec<(Option<Op>, String)>,
    /// How many more PUTs succeed before one fails.
    puts_before_failure: Option<u64>,
    /// GETs of keys with these prefixes return a body with one byte flipped.
    corrupt: Vec<String>,
    /// GETs of keys with these prefixes return only the first half of the body, without error.
    truncate: Vec<String>,
    /// Streamed put bodies to keys with these prefixes fail after this many bytes.
    fail_bodies: Vec<(String, u64)>,
    /// Added before every request.
    latency: Duration,
}

impl<B: Backend> FaultyBackend<B> {
    /// Wraps `inner`, injecting no faults until told to.
    pub fn new(inner: B) -> Self {
        FaultyBackend { inner, faults: Mutex::new(Faults::default()) }
    }

    /// The backend this one passes requests on to.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Makes every request on a key starting with `prefix` fail with
    /// [`BackendError::Injected`] (a LIST: when its request prefix starts with it).
    pub fn fail_prefix(&self, prefix: impl Into<String>) {
        self.lock().fail.push((None, prefix.into()));
    }

    /// Makes requests of kind `op` on keys starting with `prefix` fail with
    /// [`BackendError::Injected`].
    pub fn fail_op_prefix(&self, op: Op, prefix: impl Into<String>) {
        self.lock().fail.push((Some(op), prefix.into()));
    }

    /// Makes the `n`th PUT from now on (1 is the next one; 0 counts as 1) fail with
    /// [`BackendError::Injected`], once; the PUTs before and after it succeed.
    pub fn fail_nth_put(&self, n: u64) {
        self.lock().puts_before_failure = Some(n.saturating_sub(1));
    }

    /// Makes GETs of keys starting with `prefix` return a body with its middle byte inverted.
    pub fn corrupt_gets(&self, prefix: impl Into<String>) {
        self.lock().corrupt.push(prefix.into());
    }

    /// Makes GETs of keys starting with `prefix` return a body cut after half its bytes, that ends
    /// as if it were whole.
    pub fn truncate_gets(&self, prefix: impl Into<String>) {
        self.lock().truncate.push(prefix.into());
    }

    /// Makes the bodies of streaming puts to keys starting with `prefix` fail with
    /// [`BackendError::Injected`] once `after` bytes of them have passed (the chunk that crosses
    /// the mark is cut there; a shorter body fails at its end), so the put sees its body fail
    /// half-way.
    pub fn fail_put_bodies(&self, prefix: impl Into<String>, after: u64) {
        self.lock().fail_bodies.push((prefix.into(), after));
    }

    /// Delays every request by `latency` before passing it on.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Removes every fault.
    pub fn clear(&self) {
        *self.lock() = Faults::default();
    }

    /// Waits out the latency, then fails the request if a fault says so.
    async fn enter(&self, op: Op, key: &str) -> Result<(), BackendError> {
        let latency = self.lock().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut faults = self.lock();
        let mut fail =
            faults.fail.iter().any(|(o, prefix)| o.is_none_or(|o| o == op) && key.starts_with(prefix));
        if op == Op::Put
            && let Some(left) = faults.puts_before_failure
        {
            faults.puts_before_failure = left.checked_sub(1);
            fail |= left == 0;
        }
        match fail {
            true => Err(BackendError::Injected { op: op.as_str(), key: key.to_owned() }),
            false => Ok(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Faults> {
        // Faults are plain values, consistent even if a holder panicked.
        self.faults.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl<B: Backend> Backend for FaultyBackend<B> {
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, BackendError> {
        self.enter(Op::Get, key).await?;
        let mut result = self.inner.get(key, range).await?;
        let len = result.range.end - result.range.start;
        let (corrupt, truncate) = {
            let faults = self.lock();
            let matches = |prefixes: &[String]| prefixes.iter().any(|p| key.starts_with(p.as_str()));
            (matches(&faults.corrupt), matches(&faults.truncate))
        };
        if corrupt && len > 0 {
            result.body = invert_byte(result.body, len / 2);
        }
        if truncate {
            result.body = take_bytes(result.body, len / 2);
        }
        Ok(result)
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<ObjectMeta, BackendError> {
        self.enter(Op::Put, key).await?;
        self.inner.put(key, body).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, BackendError> {
        self.enter(Op::Head, key).await?;
        self.inner.head(key).await
    }

    async fn stat(&self, key: &str) -> Result<(ObjectMeta, Attributes), BackendError> {
        self.enter(Op::Head, key).await?;
        self.inner.stat(key).await
    }

    async fn put_stream(
        &self,
        key: &str,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<ObjectMeta, BackendError> {
        self.enter(Op::Put, key).await?;
        let fail_after =
            self.lock().fail_bodies.iter().find(|(p, _)| key.starts_with(p.as_str())).map(|f| f.1);
        let body = match fail_after {
            Some(after) => fail_after_bytes(body, after, key),
            None => body,
        };
        self.inner.put_stream(key, body, options).await
    }

    async fn list(&self, request: &ListRequest) -> Result<ListPage, BackendError> {
        self.enter(Op::List, &request.prefix).await?;
        self.inner.list(request).await
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.enter(Op::Delete, key).await?;
        self.inner.delete(key).await
    }
}

type Body = BoxStream<'static, Result<Bytes, BackendError>>;

/// `body` with the byte at offset `at` inverted.
fn invert_byte(body: Body, at: u64) -> Body {
    let mut offset = 0u64;
    body.map_ok(move |chunk| {
        let start = offset;
        offset += chunk.len() as u64;
        if !(start..offset).contains(&at) {
            return chunk;
        }
        let mut chunk = BytesMut::from(chunk);
        chunk[(at - start) as usize] ^= 0xff;
        chunk.freeze()
    })
    .boxed()
}

/// `body` cut after `limit` bytes, then failing with [`BackendError::Injected`] on `key`.
fn fail_after_bytes(body: Body, limit: u64, key: &str) -> Body {
    let failure = BackendError::Injected { op: Op::Put.as_str(), key: key.to_owned() };
    take_bytes(body, limit).chain(futures::stream::once(future::ready(Err(failure)))).boxed()
}

/// The first `limit` bytes of `body`.
fn take_bytes(body: Body, limit: u64) -> Body {
    body.scan(limit, |left, item| {
        if *left == 0 {
            return future::ready(None);
        }
        let item = item.map(|mut chunk| {
            chunk.truncate(chunk.len().min(usize::try_from(*left).unwrap_or(usize::MAX)));
            *left -= chunk.len() as u64;
            chunk
        });
        future::ready(Some(item))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fs::FsBackend;
    use crate::backend::get_bytes;
    use std::time::Instant;

    fn faulty() -> (tempfile::TempDir, FaultyBackend<FsBackend>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = FsBackend::new(dir.path().into()).expect("fs backend");
        (dir, FaultyBackend::new(backend))
    }

    fn is_injected<T>(result: Result<T, BackendError>) -> bool {
        matches!(result, Err(BackendError::Injected { .. }))
    }

    #[tokio::test]
    async fn fails_requests_by_prefix_and_kind() -> Result<(), BackendError> {
        let (_dir, backend) = faulty();
        backend.put("chunks/a", Bytes::from_static(b"a")).await?;
        backend.fail_prefix("chunks/");
        assert!(is_injected(backend.get("chunks/a", None).await));
        assert!(is_injected(backend.head("chunks/a").await));
        assert!(is_injected(backend.delete("chunks/a").await));
        assert!(is_injected(
            backend.list(&ListRequest { prefix: "chunks/x".into(), ..Default::default() }).await
        ));
        backend.put("nars/a", Bytes::from_static(b"a")).await?;
        backend.clear();

        backend.fail_op_prefix(Op::Head, "nars/");
        assert!(is_injected(backend.head("nars/a").await));
        assert_eq!(get_bytes(&backend, "nars/a").await?, "a");
        Ok(())
    }

    #[tokio::test]
    async fn fails_the_nth_put_once() -> Result<(), BackendError> {
        let (_dir, backend) = faulty();
        backend.fail_nth_put(3);
        backend.put("a", Bytes::new()).await?;
        backend.head("a").await?;
        backend.put("b", Bytes::new()).await?;
        assert!(is_injected(backend.put("c", Bytes::new()).await));
        backend.put("c", Bytes::new()).await?;
        backend.put("d", Bytes::new()).await?;
        Ok(())
    }

    #[tokio::test]
    async fn corrupts_and_truncates_bodies() -> Result<(), BackendError> {
        let (_dir, backend) = faulty();
        let data = Bytes::from((0..=255u8).collect::<Vec<u8>>());
        backend.put("chunks/x", data.clone()).await?;
        backend.put("other", data.clone()).await?;

        backend.corrupt_gets("chunks/");
        let got = get_bytes(&backend, "chunks/x").await?;
        assert_eq!(got.len(), data.len());
        let differing: Vec<usize> = (0..data.len()).filter(|&i| got[i] != data[i]).collect();
        assert_eq!(differing, [128]);
        let ranged = backend.get("chunks/x", Some(10..20)).await?.bytes().await?;
        assert_eq!(ranged.iter().zip(&data[10..20]).filter(|(a, b)| a != b).count(), 1);
        assert_eq!(get_bytes(&backend, "other").await?, data, "other keys are untouched");
        backend.clear();

        backend.truncate_gets("chunks/");
        let result = backend.get("chunks/x", None).await?;
        assert_eq!(result.range, 0..256, "the range still claims the whole object");
        assert_eq!(result.bytes().await?, data.slice(..128));
        Ok(())
    }

    #[tokio::test]
    async fn fails_streamed_bodies_half_way() -> Result<(), BackendError> {
        let (_dir, backend) = faulty();
        let body = || {
            futures::stream::iter([Ok(Bytes::from_static(b"abc")), Ok(Bytes::from_static(b"def"))]).boxed()
        };
        backend.put("raw/x", Bytes::from_static(b"old")).await?;
        backend.fail_put_bodies("raw/", 4);
        assert!(is_injected(backend.put_stream("raw/x", body(), PutOptions::default()).await));
        assert_eq!(get_bytes(&backend, "raw/x").await?, "old", "the old object is kept");
        backend.put_stream("other", body(), PutOptions::default()).await?;
        assert_eq!(get_bytes(&backend, "other").await?, "abcdef");
        backend.clear();

        backend.fail_op_prefix(Op::Put, "raw/");
        assert!(is_injected(backend.put_stream("raw/y", body(), PutOptions::default()).await));
        backend.fail_op_prefix(Op::Head, "raw/");
        assert!(is_injected(backend.stat("raw/x").await));
        Ok(())
    }

    #[tokio::test]
    async fn adds_latency() -> Result<(), BackendError> {
        let (_dir, backend) = faulty();
        backend.set_latency(Duration::from_millis(50));
        let start = Instant::now();
        assert!(matches!(backend.head("missing").await, Err(BackendError::NotFound { .. })));
        assert!(start.elapsed() >= Duration::from_millis(50));
        Ok(())
    }
}
