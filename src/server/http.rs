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
        ("GET", "/metrics") => {
            let (quarantined, unauthenticated) = crate::mailbox::incoming::quarantined_records();
            let body = format!(
                "# TYPE facteur_http_requests_total counter\nfacteur_http_requests_total {}\n\
                 # TYPE facteur_health_failures_total counter\nfacteur_health_failures_total {}\n\
                 # TYPE facteur_quarantined_records_total counter\nfacteur_quarantined_records_total {}\n\
                 # TYPE facteur_unauthenticated_records_total counter\nfacteur_unauthenticated_records_total {}\n",
                metrics.http_requests.load(Ordering::Relaxed),
                metrics.health_failures.load(Ordering::Relaxed),
                quarantined,
                unauthenticated,
            );
            respond(&mut socket, 200, &body).await
        }
        ("GET", _) => respond(&mut socket, 404, "not found\n").await,
        _ => respond(&mut socket, 405, "method not allowed\n").await,
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
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await
}
