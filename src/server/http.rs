//! The health and metrics endpoint: a deliberately tiny HTTP/1.1 responder
//! (one request per connection) for load balancers and Prometheus.
//!
//! - `GET /health`: 200 `ok` when the object store answers, 503 otherwise.
//! - `GET /metrics`: Prometheus text format.
//!
//! Bounded like every listener: a fixed number of connections, a request
//! head of at most [`MAX_REQUEST`] bytes, read within [`REQUEST_TIMEOUT`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Services, Shutdown, finish, next_connection};

/// Largest request head read; anything longer is answered 431.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client gets to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; further ones wait in the kernel backlog.
pub const MAX_CONNECTIONS: usize = 64;

/// Counters shown at `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub http_requests: AtomicU64,
    pub health_failures: AtomicU64,
}

/// Serves until shutdown, then gives running requests [`SHUTDOWN_GRACE`](super::SHUTDOWN_GRACE).
pub async fn serve(
    listener: TcpListener,
    services: Services,
    metrics: Arc<Metrics>,
    mut shutdown: Shutdown,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = JoinSet::new();
    while let Some(((socket, _peer), permit)) =
        next_connection("http", &permits, &mut shutdown, || listener.accept()).await
    {
        let (services, metrics) = (services.clone(), metrics.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let _open = crate::metrics::connection(crate::metrics::Protocol::Http);
            if let Err(e) = handle(socket, &services, &metrics).await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    finish(tasks).await;
}

async fn handle(
    mut socket: TcpStream,
    services: &Services,
    metrics: &Metrics,
) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut socket)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return respond(&mut socket, 431, "request too large\n").await,
        Ok(Err(e)) => return Err(e),
        Err(_) => return respond(&mut socket, 408, "request timeout\n").await,
    };
    metrics.http_requests.fetch_add(1, Ordering::Relaxed);
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (method, path) {
        ("GET", "/health") => match services.check_store().await {
            Ok(()) => respond(&mut socket, 200, "ok\n").await,
            Err(e) => {
                metrics.health_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "health check: store unavailable");
                respond(&mut socket, 503, "store unavailable\n").await
            }
        },
        ("GET", "/metrics") => match exposition(metrics) {
            Ok(body) => respond_as(&mut socket, 200, crate::metrics::CONTENT_TYPE, &body).await,
            Err(_) => respond(&mut socket, 500, "cannot encode the metrics\n").await,
        },
        ("GET", _) => respond(&mut socket, 404, "not found\n").await,
        _ => respond(&mut socket, 405, "method not allowed\n").await,
    }
}

/// The `/metrics` body: the counters kept elsewhere (read now, see
/// [`Kept`]), then every family of [`crate::metrics`].
fn exposition(metrics: &Metrics) -> Result<String, std::fmt::Error> {
    let (quarantined, unauthenticated) = crate::mailbox::incoming::quarantined_records();
    let damage = crate::log::stored::damage_counts();
    let mut registry = Registry::with_prefix("facteur");
    registry.register_collector(Box::new(Kept {
        http_requests: metrics.http_requests.load(Ordering::Relaxed),
        health_failures: metrics.health_failures.load(Ordering::Relaxed),
        quarantined,
        unauthenticated,
        damaged_objects: damage.damaged_objects,
        lost_ops: damage.lost_ops,
        late_markers: crate::log::stored::late_markers_written(),
    }));
    let mut body = String::with_capacity(16 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut body, &registry)?;
    crate::metrics::encode(&mut body)?;
    Ok(body)
}

/// Counters kept as atomics by the code that counts (this endpoint, the
/// incoming queue, the logs), as read for one scrape.
#[derive(Debug)]
struct Kept {
    http_requests: u64,
    health_failures: u64,
    quarantined: u64,
    unauthenticated: u64,
    damaged_objects: u64,
    lost_ops: u64,
    late_markers: u64,
}

impl Collector for Kept {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let plain: [(&str, &str, u64); 5] = [
            (
                "http_requests",
                "HTTP requests to this endpoint",
                self.http_requests,
            ),
            (
                "health_failures",
                "Health checks that found the store unavailable",
                self.health_failures,
            ),
            (
                "quarantined_records",
                "Delivery records moved to quarantine (unreadable or unauthenticated)",
                self.quarantined,
            ),
            (
                "unauthenticated_records",
                "Of the quarantined records, those without a valid MAC",
                self.unauthenticated,
            ),
            (
                "late_markers",
                "Late markers written: op PUTs that completed too long after the op was named",
                self.late_markers,
            ),
        ];
        for (name, help, value) in plain {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let mut family = encoder.encode_descriptor(
            "damage_found",
            "Damage found in the store: unreadable log objects, ops given up as lost, quarantined delivery records",
            None,
            MetricType::Counter,
        )?;
        for (kind, value) in [
            ("damaged_object", self.damaged_objects),
            ("lost_op", self.lost_ops),
            ("quarantined_record", self.quarantined),
        ] {
            ConstCounter::new(value).encode(family.encode_family(&[("kind", kind)])?)?;
        }
        Ok(())
    }
}

/// Reads up to the blank line ending the request head; `None` if it is
/// longer than [`MAX_REQUEST`].
async fn read_head(socket: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if buf.len() > MAX_REQUEST {
            return Ok(None);
        }
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

async fn respond(socket: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    respond_as(socket, status, "text/plain; charset=utf-8", body).await
}

async fn respond_as(
    socket: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        500 => "Internal Server Error",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await
}
