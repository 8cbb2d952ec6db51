//! The LMTP listeners (doc/architecture.md, "Processes and state";
//! doc/lmtp.md): TCP and a Unix socket, each with a
//! bounded number of connections, one task per connection running
//! [`crate::lmtp::connection::run`].
//!
//! Invariants: like every listener, a connection permit is taken before
//! `accept`, and the loop awaits nothing else (a slow client cannot stall
//! it). On shutdown the loop stops accepting; sessions between
//! transactions answer 421 at once, the others finish their transaction
//! within [`SHUTDOWN_GRACE`](super::SHUTDOWN_GRACE).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
#[cfg(unix)]
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Services, Shutdown, finish, next_connection};
use crate::config::LmtpConfig;
use crate::lmtp::{Backend, Options, connection};

/// A bound LMTP listener.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(UnixListener),
}

/// Binds the Unix socket at `path`, replacing a stale socket file left by
/// an earlier run (and nothing else: a regular file there is an error).
#[cfg(unix)]
pub fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

/// What every connection of a listener shares.
#[derive(Clone, Debug)]
pub struct Settings {
    pub options: Options,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Settings {
    pub fn from_config(config: &LmtpConfig) -> Settings {
        Settings {
            options: Options {
                hostname: host_name(),
                max_message_size: config.max_message_size.0,
                max_recipients: config.max_recipients,
                ..Options::default()
            },
            idle_timeout: Duration::from_secs(config.idle_timeout),
            max_connections: config.max_connections,
        }
    }
}

/// This machine's host name (the by-domain of `Received:` and the LHLO
/// reply), or `facteur` if it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| Options::default().hostname)
}

/// The delivery backend built from the shared services (over quota
/// answers 552 5.2.2; see [`backend_with`]).
pub fn backend(services: &Services) -> Backend {
    backend_with(services, false)
}

/// The delivery backend; `quota_full_temporary` is `[lmtp]
/// quota_full_temporary`. With change hints, a delivery wakes the user's
/// account if it is unlocked on this instance (its IDLE sessions see the
/// mail at once) and leaves a hint for the other instances.
pub fn backend_with(services: &Services, quota_full_temporary: bool) -> Backend {
    let ids = services.clone();
    let store = match &services.hints {
        Some(hints) => crate::account::Hinted::wrap(services.store.clone(), hints.clone(), None),
        None => services.store.clone(),
    };
    Backend {
        store,
        directory: services.directory.clone(),
        keyrings: services.keyrings.clone(),
        records: services.records.clone(),
        user_id: Arc::new(move |login| ids.user_id(login)),
        quota_full_temporary,
    }
}

/// Serves until shutdown, then gives running sessions [`SHUTDOWN_GRACE`](super::SHUTDOWN_GRACE).
pub async fn serve(
    listener: Listener,
    backend: Backend,
    settings: Settings,
    mut shutdown: Shutdown,
) {
    let permits = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let mut tasks = JoinSet::new();
    while let Some((stream, permit)) =
        next_connection("lmtp", &permits, &mut shutdown, || accept(&listener)).await
    {
        let (backend, settings, shutdown) = (backend.clone(), settings.clone(), shutdown.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let _open = crate::metrics::connection(crate::metrics::Protocol::Lmtp);
            let result = match stream {
                Stream::Tcp(s) => {
                    let peer = s.peer_addr().ok().map(|a| a.ip());
                    session(s, peer, &backend, &settings, shutdown).await
                }
                #[cfg(unix)]
                Stream::Unix(s) => session(s, None, &backend, &settings, shutdown).await,
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "lmtp connection ended with an error");
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    finish(tasks).await;
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Stream> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Stream::Tcp(s)),
        #[cfg(unix)]
        Listener::Unix(l) => l.accept().await.map(|(s, _)| Stream::Unix(s)),
    }
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: Option<std::net::IpAddr>,
    backend: &Backend,
    settings: &Settings,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    connection::run(
        stream,
        peer,
        backend,
        settings.options.clone(),
        settings.idle_timeout,
        async move { shutdown.wait().await },
    )
    .await
}
