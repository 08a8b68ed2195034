//! A wrapper that records every request in the [`Metrics`]: its kind, whether it failed, and
//! how long it took (for a GET, until the object's body starts: the body streams on after).
//!
//! ```
//! # use std::sync::Arc;
//! # use nargate::backend::{Backend, DynBackend, metered::MeteredBackend, fs::FsBackend};
//! # use nargate::metrics::Metrics;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let metrics = Metrics::new();
//! let backend: DynBackend = Arc::new(MeteredBackend::new(FsBackend::new(dir.path().into())?, metrics.clone()));
//! backend.put("chunks/1", "x".into()).await?;
//! assert!(metrics.render().contains("nargate_backend_requests_total{op=\"PUT\"} 1\n"));
//! # Ok(()) }
//! ```

use std::future::Future;
use std::ops::Range;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Attributes, Backend, BackendError, ByteStream, GetResult, ListPage, ListRequest, ObjectMeta, Op,
    PutOptions,
};
use crate::metrics::Metrics;

/// A backend that times each request made through it and records it in its [`Metrics`]. A stat
/// counts as a HEAD, a streaming put as a PUT (as [`Op`] says).
#[derive(Debug)]
pub struct MeteredBackend<B> {
    inner: B,
    metrics: Metrics,
}

impl<B: Backend> MeteredBackend<B> {
    /// Wraps `inner`, recording into `metrics`.
    pub fn new(inner: B, metrics: Metrics) -> Self {
        MeteredBackend { inner, metrics }
    }

    /// The backend this one passes requests on to.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    async fn timed<T>(
        &self,
        op: Op,
        request: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let start = Instant::now();
        let result = request.await;
        // A missing object or a range past its end is an answer, not a failure.
        let ok =
            matches!(&result, Ok(_) | Err(BackendError::NotFound { .. } | BackendError::InvalidRange { .. }));
        self.metrics.record_backend(op, ok, start.elapsed());
        result
    }
}

#[async_trait]
impl<B: Backend> Backend for MeteredBackend<B> {
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<GetResult, BackendError> {
        self.timed(Op::Get, self.inner.get(key, range)).await
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<ObjectMeta, BackendError> {
        self.timed(Op::Put, self.inner.put(key, body)).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, BackendError> {
        self.timed(Op::Head, self.inner.head(key)).await
    }

    async fn stat(&self, key: &str) -> Result<(ObjectMeta, Attributes), BackendError> {
        self.timed(Op::Head, self.inner.stat(key)).await
    }

    async fn put_stream(
        &self,
        key: &str,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<ObjectMeta, BackendError> {
        self.timed(Op::Put, self.inner.put_stream(key, body, options)).await
    }

    async fn list(&self, request: &ListRequest) -> Result<ListPage, BackendError> {
        self.timed(Op::List, self.inner.list(request)).await
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.timed(Op::Delete, self.inner.delete(key)).await
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
    async fn records_every_kind_of_request() -> Result<(), BackendError> {
        let dir = tempfile::tempdir().map_err(|source| BackendError::Io { key: String::new(), source })?;
        let metrics = Metrics::new();
        let backend: DynBackend =
            Arc::new(MeteredBackend::new(FsBackend::new(dir.path().into())?, metrics.clone()));

        backend.put("chunks/a", Bytes::from_static(b"1")).await?;
        get_bytes(&*backend, "chunks/a").await?;
        assert!(backend.get("chunks/missing", None).await.is_err());
        assert!(backend.get("chunks/a", Some(5..9)).await.is_err(), "a range past the end fails");
        assert!(backend.get("", None).await.is_err(), "an invalid key is an error");
        backend.head("chunks/a").await?;
        backend.stat("chunks/a").await?;
        let body = futures::stream::once(async { Ok(Bytes::from_static(b"3")) }).boxed();
        backend.put_stream("raw/c", body, PutOptions::default()).await?;
        backend.list(&ListRequest { prefix: "chunks/".into(), ..Default::default() }).await?;
        backend.delete("raw/c").await?;

        let text = metrics.render();
        for (op, count, errors) in
            [("GET", 4, 1), ("PUT", 2, 0), ("HEAD", 2, 0), ("LIST", 1, 0), ("DELETE", 1, 0)]
        {
            assert!(
                text.contains(&format!("nargate_backend_requests_total{{op=\"{op}\"}} {count}\n")),
                "{op}"
            );
            assert!(
                text.contains(&format!("nargate_backend_errors_total{{op=\"{op}\"}} {errors}\n")),
                "{op}"
            );
            let inf = format!(
                "nargate_backend_request_duration_seconds_bucket{{op=\"{op}\",le=\"+Inf\"}} {count}\n"
            );
            assert!(text.contains(&inf), "{op}: {text}");
        }
        Ok(())
    }
}
