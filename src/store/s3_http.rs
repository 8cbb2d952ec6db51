//! The HTTP client of the S3 store for a plain `http://` endpoint (a
//! Garage on the same machine or reached over a private link): hyper's
//! pooled HTTP/1.1 client, whose sockets acknowledge what they read at
//! once.
//!
//! Why: Garage leaves Nagle's algorithm on. It writes an answer's headers,
//! then its body; the body, shorter than a segment, waits until the
//! headers are acknowledged. The client's kernel, seeing requests and
//! answers alternate on a kept-alive connection, delays that
//! acknowledgement by up to 40 ms. Measured on one Garage node
//! (doc/performance.md, session 17): GETs of 8 to 80 KB objects took 42
//! to 46 ms instead of 2 to 4, often enough to double the download of
//! 1,000 messages. Setting `TCP_QUICKACK` after every read sends the
//! pending acknowledgement straight away (Linux re-arms the delay later,
//! so it is set each time).
//!
//! The SDK's own client serves `https://` endpoints, which go through TLS
//! records and were not measured. Unlike the SDK's client, this one does
//! not read `HTTP_PROXY`/`NO_PROXY` (a plain-http Garage is local or on a
//! private link), and does not mark a connection for closing after an
//! error the store retries: hyper drops a connection whose answer was
//! cut short or timed out, and a 503 leaves the connection sound.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector as TcpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client handed to the SDK (`aws_sdk_s3::Config::http_client`).
#[derive(Clone, Debug)]
pub(crate) struct QuickAckClient {
    client: Client<QuickAckConnector, SdkBody>,
}

impl QuickAckClient {
    /// A client whose connections give up connecting after
    /// `connect_timeout`.
    pub(crate) fn new(connect_timeout: Duration) -> QuickAckClient {
        let mut tcp = TcpConnector::new();
        // Requests are written whole; nothing to gain from delaying them.
        tcp.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            // Idle connections expire (hyper's pool needs a timer for it).
            .pool_timer(TokioTimer::new())
            .build(QuickAckConnector {
                tcp,
                connect_timeout,
            });
        QuickAckClient { client }
    }
}

impl HttpClient for QuickAckClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(QuickAckHttp {
            client: self.client.clone(),
            read_timeout: settings.read_timeout(),
        })
    }
}

/// One request at a time through the pooled client.
#[derive(Debug)]
struct QuickAckHttp {
    client: Client<QuickAckConnector, SdkBody>,
    /// Longest wait for an answer's headers once the request is sent.
    read_timeout: Option<Duration>,
}

impl HttpConnector for QuickAckHttp {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(request) => request,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let sent = self.client.request(request);
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let answer = match read_timeout {
                Some(limit) => tokio::time::timeout(limit, sent).await.map_err(|_| {
                    ConnectorError::timeout(
                        format!("no answer from the S3 endpoint within {limit:?}").into(),
                    )
                })?,
                None => sent.await,
            };
            let answer = answer.map_err(connector_error)?;
            HttpResponse::try_from(answer.map(SdkBody::from_body_1_x))
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// What went wrong, as the SDK's own client tells it: a request hyper
/// refused to send is the caller's error (permanent for the store); a
/// timeout is one; anything else (refused, reset, cut short) is I/O,
/// transient, retried by the store.
fn connector_error(e: hyper_util::client::legacy::Error) -> ConnectorError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(error) = source {
        if error.is::<ConnectTimedOut>() {
            return ConnectorError::timeout(e.into());
        }
        if let Some(hyper) = error.downcast_ref::<hyper::Error>() {
            if hyper.is_user() {
                return ConnectorError::user(e.into());
            }
            if hyper.is_timeout() {
                return ConnectorError::timeout(e.into());
            }
        }
        source = error.source();
    }
    ConnectorError::io(e.into())
}

/// Connecting (resolving the name included) took too long.
#[derive(Debug)]
struct ConnectTimedOut(Duration);

impl std::fmt::Display for ConnectTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "could not connect to the S3 endpoint within {:?}",
            self.0
        )
    }
}

impl std::error::Error for ConnectTimedOut {}

/// Connects with hyper's TCP connector, resolution and connection within
/// `connect_timeout`, and wraps the socket in [`QuickAck`].
#[derive(Clone, Debug)]
struct QuickAckConnector {
    tcp: TcpConnector,
    connect_timeout: Duration,
}

impl tower_service::Service<http::Uri> for QuickAckConnector {
    type Response = TokioIo<QuickAck>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.tcp.call(uri);
        let limit = self.connect_timeout;
        Box::pin(async move {
            let stream = tokio::time::timeout(limit, connecting)
                .await
                .map_err(|_| ConnectTimedOut(limit))??
                .into_inner();
            Ok(TokioIo::new(QuickAck(stream)))
        })
    }
}

/// A TCP stream that sets `TCP_QUICKACK` after each read that brought
/// bytes: the acknowledgement the kernel was holding back goes out now.
#[derive(Debug)]
pub(crate) struct QuickAck(TcpStream);

impl QuickAck {
    fn ack_now(&self) {
        #[cfg(target_os = "linux")]
        if let Err(e) = socket2::SockRef::from(&self.0).set_tcp_quickack(true) {
            tracing::debug!(error = %e, "TCP_QUICKACK not set");
        }
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.0).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.ack_now();
        }
        read
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connection for QuickAck {
    fn connected(&self) -> Connected {
        self.0.connected()
    }
}
