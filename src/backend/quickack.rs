//! An HTTP client for aws-sdk-s3 whose TCP connections set `TCP_QUICKACK` before every read.
//!
//! Why: Garage 2.5 answers a small GET on a kept-alive connection after ~44 ms, on a new one in
//! ~1.2 ms. It is Nagle's algorithm on the server meeting delayed ACKs on ours: the server holds
//! the last segment of a response until we acknowledge the previous one, and we wait to
//! acknowledge it. `TCP_QUICKACK` makes the kernel acknowledge at once; Linux leaves quick-ack
//! mode again on its own after a while, so it is set again before every read (one `setsockopt`).
//! Measured on loopback: 44 ms → 1.3 ms for a 13 KB GET on a reused connection.
//!
//! aws-smithy-http-client has no way to plug a custom TCP connector into its client (its
//! maintainers removed it with hyper 1.x: hyper-util is not stable), so this implements the SDK's
//! [`HttpClient`] over hyper-util's pooled client with a connector of its own: one pool per
//! connector settings, as the SDK's client keeps, and the SDK's connect and read timeouts.
//! Plain `http://` endpoints only: requests to `https://` ones go to the SDK's own client
//! (rustls), without quick-acks. On systems other than Linux and Android the option does not
//! exist and connections behave as the plain pool's.

use std::collections::HashMap;
use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::{RuntimeComponents, RuntimeComponentsBuilder};
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector as TcpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower_service::Service;

/// The HTTP client of [`ConnectionMode::QuickAck`](super::s3::ConnectionMode::QuickAck).
pub fn http_client() -> SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let tls = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
        .build_https();
    SharedHttpClient::new(QuickAckClient { tls, connectors: Mutex::default() })
}

/// Connector settings that need a connector of their own: connect and read timeouts.
type SettingsKey = (Option<Duration>, Option<Duration>);

#[derive(Debug)]
struct QuickAckClient {
    /// The SDK's client, for `https://` endpoints.
    tls: SharedHttpClient,
    connectors: Mutex<HashMap<SettingsKey, SharedHttpConnector>>,
}

impl HttpClient for QuickAckClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let key = (settings.connect_timeout(), settings.read_timeout());
        let mut connectors = self.connectors.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        connectors
            .entry(key)
            .or_insert_with(|| {
                let mut tcp = TcpConnector::new();
                tcp.set_nodelay(true);
                tcp.set_connect_timeout(settings.connect_timeout());
                let pool = Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .build(QuickAckConnector(tcp));
                SharedHttpConnector::new(QuickAckHttpConnector {
                    pool,
                    read_timeout: settings.read_timeout(),
                    tls: self.tls.http_connector(settings, components),
                })
            })
            .clone()
    }

    fn validate_base_client_config(
        &self,
        components: &RuntimeComponentsBuilder,
        cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        self.tls.validate_base_client_config(components, cfg)
    }
}

/// Sends `http://` requests through the quick-ack pool, `https://` ones to the SDK's connector.
#[derive(Debug)]
struct QuickAckHttpConnector {
    pool: Client<QuickAckConnector, SdkBody>,
    /// How long to wait for a response's head.
    read_timeout: Option<Duration>,
    tls: SharedHttpConnector,
}

impl HttpConnector for QuickAckHttpConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        if !request.uri().starts_with("http://") {
            return self.tls.call(request);
        }
        let request = match request.try_into_http1x() {
            Ok(request) => request,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let response = self.pool.request(request);
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let response = match read_timeout {
                Some(limit) => tokio::time::timeout(limit, response)
                    .await
                    .map_err(|elapsed| ConnectorError::timeout(elapsed.into()))?,
                None => response.await,
            };
            let response = response.map_err(connector_error)?;
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// Classifies a failed request for the SDK's retries: failures to connect and broken
/// connections are I/O errors (retried), as the SDK's own client classifies them.
fn connector_error(e: hyper_util::client::legacy::Error) -> ConnectorError {
    let hyper = source::<hyper::Error>(&e);
    if hyper.is_some_and(hyper::Error::is_timeout) {
        return ConnectorError::timeout(e.into());
    }
    if hyper.is_some_and(hyper::Error::is_user) {
        return ConnectorError::user(e.into());
    }
    let broken = hyper.is_some_and(|h| h.is_closed() || h.is_canceled() || h.is_incomplete_message());
    if e.is_connect() || broken || source::<std::io::Error>(&e).is_some() {
        return ConnectorError::io(e.into());
    }
    ConnectorError::other(e.into(), None)
}

/// The first error of type `E` in `e`'s chain of sources, `e` included.
fn source<'a, E: Error + 'static>(e: &'a (dyn Error + 'static)) -> Option<&'a E> {
    std::iter::successors(Some(e), |&e| e.source()).find_map(|e| e.downcast_ref::<E>())
}

/// hyper-util's TCP connector, its streams wrapped in [`QuickAckStream`].
#[derive(Clone, Debug)]
struct QuickAckConnector(TcpConnector);

impl Service<http::Uri> for QuickAckConnector {
    type Response = QuickAckStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<QuickAckStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { Ok(QuickAckStream(connecting.await?)) })
    }
}

/// A TCP stream that sets `TCP_QUICKACK` before every read.
#[derive(Debug)]
struct QuickAckStream(TokioIo<TcpStream>);

impl QuickAckStream {
    fn quickack(&self) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Err(e) = socket2::SockRef::from(self.0.inner()).set_tcp_quickack(true) {
            // Reads go on as they would without it.
            tracing::debug!("setting TCP_QUICKACK: {e}");
        }
    }
}

impl Read for QuickAckStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.quickack();
        Pin::new(&mut this.0).poll_read(cx, buf)
    }
}

impl Write for QuickAckStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
}

impl Connection for QuickAckStream {
    fn connected(&self) -> Connected {
        self.0.connected()
    }
}
