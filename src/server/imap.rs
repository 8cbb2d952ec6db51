//! The IMAP listeners (doc/architecture.md, "Processes and state";
//! doc/imap.md): ports of plaintext IMAP upgraded with
//! STARTTLS (143) and ports of implicit TLS (993, RFC 8314 §3.3), one task
//! per connection running [`crate::imap::connection::serve`].
//!
//! Invariants:
//! - Connections are bounded in total (one semaphore shared by every IMAP
//!   listener, a permit taken before `accept`) and per client address
//!   (IPv6: per /64). The accept loop awaits nothing but a permit and
//!   `accept`: a refusal and the TLS handshake run in the connection's own
//!   task, the handshake within a timeout, so a slow client stalls no one.
//! - On shutdown the loops stop accepting; running sessions see their
//!   shutdown future resolve (they answer `* BYE` after the running
//!   command) and get [`SHUTDOWN_GRACE`](super::SHUTDOWN_GRACE) to finish, then are dropped.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::tls::{self, TlsError};
use super::{Services, Shutdown, finish, next_connection};
use crate::account::Accounts;
use crate::config::ImapConfig;
use crate::imap::connection::{self, Peer};
use crate::imap::throttle::{Throttle, ThrottleConfig};
use crate::imap::{Imap, Options};
use crate::log::InstanceId;

/// How long an unlocked account outlives its last IMAP session, so that a
/// client reconnecting (IDLE on a phone) needs no new unlock.
pub const ACCOUNT_GRACE: Duration = Duration::from_secs(120);

/// What a listener speaks first.
#[derive(Clone)]
pub enum Mode {
    /// Plaintext IMAP; the session offers STARTTLS if it has a certificate.
    StartTls,
    /// TLS from the first byte, with this certificate.
    ImplicitTls(TlsAcceptor),
}

impl std::fmt::Debug for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::StartTls => "starttls",
            Mode::ImplicitTls(_) => "tls",
        })
    }
}

/// A bound IMAP listener.
#[derive(Debug)]
pub struct Listener {
    pub tcp: TcpListener,
    pub mode: Mode,
}

/// Limits of the IMAP listeners and sessions, from `[imap]`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub options: Options,
    /// Connections served at once over all IMAP listeners.
    pub max_connections: usize,
    /// Connections at once from one address (IPv6: one /64).
    pub max_connections_per_ip: usize,
    /// Time allowed for the TLS handshake of an implicit-TLS connection.
    pub tls_handshake_timeout: Duration,
    /// Throttling of failed logins.
    pub throttle: ThrottleConfig,
}

impl Settings {
    pub fn from_config(config: &ImapConfig) -> Settings {
        Settings {
            options: Options::from_config(config),
            max_connections: config.max_connections,
            max_connections_per_ip: config.max_connections_per_ip,
            tls_handshake_timeout: Duration::from_secs(config.tls_handshake_timeout),
            throttle: ThrottleConfig {
                ip_free_failures: config.login_failures_per_ip,
                login_free_failures: config.login_failures_per_login,
                ..ThrottleConfig::default()
            },
        }
    }
}

/// The server's certificate as configured: the certificate and key files,
/// or the self-signed pair in `self_signed_dir` (generated if missing).
/// `None` when neither is configured.
pub fn load_tls(config: &ImapConfig) -> Result<Option<LoadedTls>, TlsError> {
    let source = match (&config.certificate, &config.private_key) {
        (Some(cert), Some(key)) => tls::CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => match &config.self_signed_dir {
            Some(dir) => tls::CertSource::SelfSigned {
                dir: dir.clone(),
                names: tls::default_names(),
            },
            None => return Ok(None),
        },
    };
    let certificate = Arc::new(tls::ReloadableCert::load(source)?);
    Ok(Some(LoadedTls {
        acceptor: TlsAcceptor::from(certificate.clone().server_config()?),
        certificate,
    }))
}

/// A loaded certificate.
#[derive(Clone)]
pub struct LoadedTls {
    /// Presents the current `certificate` at every handshake.
    pub acceptor: TlsAcceptor,
    /// The certificate, reloaded on SIGHUP.
    pub certificate: Arc<tls::ReloadableCert>,
}

impl std::fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedTls")
            .field("certificate", &self.certificate.path())
            .field("self_signed", &self.certificate.is_self_signed())
            .finish_non_exhaustive()
    }
}

/// A random id for this instance's ops (op names and clock tie-breaks).
pub fn random_instance() -> InstanceId {
    let id = format!("i{}", hex::encode(rand::random::<[u8; 8]>()));
    InstanceId::new(&id).expect("lowercase hex is a valid instance id")
}

/// The IMAP context built from the shared services: accounts unlocked on
/// this instance are shared by all its IMAP sessions.
pub fn context(
    services: &Services,
    settings: &Settings,
    tls: Option<TlsAcceptor>,
    instance: InstanceId,
) -> Arc<Imap> {
    let ids = services.clone();
    Arc::new(Imap {
        directory: services.directory.clone(),
        keyrings: services.keyrings.clone(),
        accounts: Accounts::new(
            services.store.clone(),
            services.account_config(instance),
            ACCOUNT_GRACE,
        ),
        user_id: Arc::new(move |login| ids.user_id(login)),
        kdf: services.kdf.clone(),
        recovery_key: services.recovery_key,
        options: settings.options.clone(),
        throttle: Arc::new(Throttle::new(settings.throttle.clone())),
        tls,
    })
}

/// Serves every listener until shutdown, then gives running sessions
/// [`SHUTDOWN_GRACE`](super::SHUTDOWN_GRACE).
///
/// One loop accepts on all listeners at once: it holds one permit while
/// waiting, so the total limit is exact whatever the number of listeners
/// (a loop per listener would each hold an idle permit, and with a limit
/// smaller than the listener count starve some listener entirely).
pub async fn serve(
    listeners: Vec<Listener>,
    imap: Arc<Imap>,
    settings: Settings,
    mut shutdown: Shutdown,
) {
    if listeners.is_empty() {
        return;
    }
    let permits = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let shared = Arc::new(Shared {
        per_ip: Arc::new(PerIp::default()),
        imap,
        settings,
    });
    let mut tasks = JoinSet::new();
    while let Some(((stream, remote, mode), permit)) =
        next_connection("imap", &permits, &mut shutdown, || accept_any(&listeners)).await
    {
        let slot = shared
            .per_ip
            .take(remote.ip(), shared.settings.max_connections_per_ip);
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        tasks.spawn(async move {
            connection(stream, remote, mode, slot, permit, &shared, shutdown).await;
        });
        while tasks.try_join_next().is_some() {}
    }
    finish(tasks).await;
}

/// The next connection on any listener (`accept` is cancel-safe: the
/// listeners that lose the race lose nothing).
async fn accept_any(listeners: &[Listener]) -> std::io::Result<(TcpStream, SocketAddr, Mode)> {
    let accepts = listeners.iter().map(|l| {
        Box::pin(async move {
            let (stream, remote) = l.tcp.accept().await?;
            Ok((stream, remote, l.mode.clone()))
        })
    });
    futures::future::select_all(accepts).await.0
}

/// What every connection of every IMAP listener shares.
struct Shared {
    imap: Arc<Imap>,
    settings: Settings,
    per_ip: Arc<PerIp>,
}

/// One connection, in its own task: the per-address refusal, the TLS
/// handshake of implicit TLS, then the session.
async fn connection(
    mut stream: TcpStream,
    remote: SocketAddr,
    mode: Mode,
    slot: Option<IpSlot>,
    _permit: OwnedSemaphorePermit,
    shared: &Shared,
    mut shutdown: Shutdown,
) {
    let _open = crate::metrics::connection(match mode {
        Mode::StartTls => crate::metrics::Protocol::Imap,
        Mode::ImplicitTls(_) => crate::metrics::Protocol::Imaps,
    });
    let timeout = shared.settings.tls_handshake_timeout;
    let Some(_slot) = slot else {
        tracing::info!(%remote, "imap: too many connections from this address");
        if let Mode::StartTls = mode {
            // RFC 9051 §7.1.5: a BYE greeting refuses the connection.
            let bye = b"* BYE [UNAVAILABLE] Too many connections from your address\r\n";
            let _ = tokio::time::timeout(timeout, async {
                stream.write_all(bye).await?;
                stream.shutdown().await
            })
            .await;
        }
        return;
    };
    let _ = stream.set_nodelay(true);
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(error = %e, %remote, "imap connection gone before it started");
            return;
        }
    };
    let imap = shared.imap.clone();
    let mut session_shutdown = shutdown.clone();
    let session_shutdown = async move { session_shutdown.wait().await };
    let result = match mode {
        Mode::StartTls => {
            let peer = Peer {
                remote,
                local,
                tls: false,
            };
            connection::serve(stream, peer, imap, session_shutdown).await
        }
        Mode::ImplicitTls(acceptor) => {
            let handshake = tokio::select! {
                _ = shutdown.wait() => return,
                r = tokio::time::timeout(timeout, acceptor.accept(stream)) => r,
            };
            let stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %remote, "imap tls handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "imap tls handshake timed out");
                    return;
                }
            };
            let peer = Peer {
                remote,
                local,
                tls: true,
            };
            connection::serve(stream, peer, imap, session_shutdown).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %remote, "imap connection ended with an error");
    }
}

/// Connections open per address.
#[derive(Debug, Default)]
struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection counted against its address, until dropped.
struct IpSlot {
    table: Arc<PerIp>,
    key: IpAddr,
}

/// The address connections are counted by: IPv4 as it is (IPv4-mapped
/// IPv6 included), IPv6 by its /64, the block one subscriber usually has.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

impl PerIp {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one more connection from `ip`, unless it has `max` already.
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let key = address_key(ip);
        let mut counts = self.counts();
        let n = counts.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            key,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts();
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_slots_are_bounded_and_released() {
        let table = Arc::new(PerIp::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = table.take(a, 2).unwrap();
        let second = table.take("::ffff:192.0.2.1".parse().unwrap(), 2).unwrap();
        assert!(table.take(a, 2).is_none(), "the mapped address is the same");
        assert!(table.take("192.0.2.2".parse().unwrap(), 2).is_some());
        drop(first);
        let third = table.take(a, 2).unwrap();
        drop((second, third));
        assert!(
            table.counts().is_empty(),
            "released addresses are forgotten"
        );
    }

    #[test]
    fn ipv6_is_counted_per_64() {
        let table = Arc::new(PerIp::default());
        let _a = table.take("2001:db8:0:1::1".parse().unwrap(), 1).unwrap();
        assert!(
            table
                .take("2001:db8:0:1:ffff::2".parse().unwrap(), 1)
                .is_none()
        );
        assert!(table.take("2001:db8:0:2::1".parse().unwrap(), 1).is_some());
    }

    #[test]
    fn random_instance_ids_are_valid_and_differ() {
        assert_ne!(random_instance(), random_instance());
    }
}
