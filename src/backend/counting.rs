//! A wrapper that records every request, so tests can count round trips.
//!
//! ```
//! # use std::sync::Arc;
//! # use nargate::backend::{Backend, DynBackend, Op, counting::CountingBackend, fs::FsBackend};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let counting = Arc::new(CountingBackend::new(FsBackend::new(dir.path().into())?));
//! let backend: DynBackend = counting.clone();
//! backend.put("chunks/1", "x".into()).await?;
//! backend.get("chunks/1", None).await?;
//! assert_eq!(counting.counts().put, 1);
//! assert_eq!(counting.gets_with_prefix("chunks/"), 1);
//! counting.reset();
//! assert_eq!(counting.counts().total(), 0);
//! # Ok(()) }
//! ```

use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Attributes, Backend, BackendError, ByteStream, GetResult, ListPage, ListRequest, ObjectMeta, Op,
    PutOptions,
};

/// A backend that records each request made through it (whether it succeeds or not) and passes
/// it on to the backend it wraps. A stat counts as a HEAD, a streaming put as a PUT.
#[derive(Debug)]
pub struct CountingBackend<B> {
    inner: B,
    log: Mutex<Vec<(Op, String)>>,
}

/// How many requests of each kind a [`CountingBackend`] has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// GETs, whole or ranged.
    pub get: u64,
    /// PUTs, whole or streamed.
    pub put: u64,
    /// HEADs and stats.
    pub head: u64,
    /// LIST pages.
    pub list: u64,
    /// DELETEs.
    pub delete: u64,
}

impl RequestCounts {
    /// All requests together.
    pub fn total(&self) -> u64 {
        self.get + self.put + self.head + self.list + self.delete
    }
}

impl<B: Backend> CountingBackend<B> {
    /// Wraps `inner`, with no requests recorded yet.
    pub fn new(inner: B) -> Self {
        CountingBackend { inner, log: Mutex::new(Vec::new()) }
    }

    /// The backend this one passes requests on to.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Every request so far, in order: its kind and its key (for LIST, the request's prefix).
    pub fn requests(&self) -> Vec<(Op, String)> {
        self.lock().clone()
    }

    /// How many requests of each kind there were.
    pub fn counts(&self) -> RequestCounts {
        let mut counts = RequestCounts::default();
        for (op, _) in self.lock().iter() {
            *match op {
                Op::Get => &mut counts.get,
                Op::Put => &mut counts.put,
                Op::Head => &mut counts.head,
                Op::List => &mut counts.list,
                Op::Delete => &mut counts.delete,
            } += 1;
        }
        counts
    }

    /// How many requests of kind `op` there were on keys starting with `prefix` (for LIST: with a
    /// request prefix starting with it).
    pub fn count_with_prefix(&self, op: Op, prefix: &str) -> u64 {
        self.lock().iter().filter(|(o, key)| *o == op && key.starts_with(prefix)).count() as u64
    }

    /// How many GETs there were of keys starting with `prefix` (e.g. `chunks/`).
    pub fn gets_with_prefix(&self, prefix: &str) -> u64 {
        self.count_with_prefix(Op::Get, prefix)
    }

    /// Forgets every request recorded so far.
    pub fn reset(&self) {
        self.lock().clear();
    }

    fn record(&self, op: Op, key: &str) {
        self.lock().push((op, key.to_owned()));
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(Op, String)>> {
        // The log stays consistent even if a holder panicked: every push is whole.
        self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl<B: Backend> Backend for CountingBackend<B> {
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, BackendError> {
        self.record(Op::Get, key);
        self.inner.get(key, range).await
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<ObjectMeta, BackendError> {
        self.record(Op::Put, key);
        self.inner.put(key, body).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, BackendError> {
        self.record(Op::Head, key);
        self.inner.head(key).await
    }

    async fn stat(&self, key: &str) -> Result<(ObjectMeta, Attributes), BackendError> {
        self.record(Op::Head, key);
        self.inner.stat(key).await
    }

    async fn put_stream(
        &self,
        key: &str,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<ObjectMeta, BackendError> {
        self.record(Op::Put, key);
        self.inner.put_stream(key, body, options).await
    }

    async fn list(&self, request: &ListRequest) -> Result<ListPage, BackendError> {
        self.record(Op::List, &request.prefix);
        self.inner.list(request).await
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.record(Op::Delete, key);
        self.inner.delete(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fs::FsBackend;
    use crate::backend::{DynBackend, get_bytes};
    use futures::StreamExt;
    use std::sync::Arc;

    #[tokio::test]
    async fn counts_every_kind_of_request() -> Result<(), BackendError> {
        let dir = tempfile::tempdir().map_err(|source| BackendError::Io { key: String::new(), source })?;
        let inner: DynBackend = Arc::new(FsBackend::new(dir.path().into())?);
        let counting = Arc::new(CountingBackend::new(inner));
        let backend: DynBackend = counting.clone();

        backend.put("chunks/a", Bytes::from_static(b"1")).await?;
        backend.put("nars/b", Bytes::from_static(b"2")).await?;
        get_bytes(&*backend, "chunks/a").await?;
        backend.get("chunks/a", Some(0..1)).await?;
        get_bytes(&*backend, "nars/b").await?;
        assert!(backend.get("chunks/missing", None).await.is_err(), "failed requests count too");
        backend.head("nars/b").await?;
        backend.stat("nars/b").await?;
        let body = futures::stream::once(async { Ok(Bytes::from_static(b"3")) }).boxed();
        backend.put_stream("raw/c", body, PutOptions::default()).await?;
        backend.list(&ListRequest { prefix: "chunks/".into(), ..Default::default() }).await?;
        backend.delete("nars/b").await?;

        let expected = RequestCounts { get: 4, put: 3, head: 2, list: 1, delete: 1 };
        assert_eq!(counting.counts(), expected);
        assert_eq!(counting.counts().total(), 11);
        assert_eq!(counting.count_with_prefix(Op::Put, "raw/"), 1);
        assert_eq!(counting.gets_with_prefix("chunks/"), 3);
        assert_eq!(counting.gets_with_prefix("nars/"), 1);
        assert_eq!(counting.count_with_prefix(Op::List, "chunks/"), 1);
        assert_eq!(counting.requests()[0], (Op::Put, "chunks/a".to_owned()));

        counting.reset();
        assert_eq!(counting.counts(), RequestCounts::default());
        assert!(counting.requests().is_empty());
        Ok(())
    }
}
