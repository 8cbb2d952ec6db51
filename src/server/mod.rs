//! Listeners, limits, shutdown and metrics: everything `facteur serve` runs
//! in one tokio runtime: the IMAP listeners ([`imap`]) and their TLS
//! ([`tls`]), the LMTP listeners ([`lmtp`]) and the health and metrics
//! endpoint ([`http`]); and SIGHUP, which reloads the IMAP certificate.
//!
//! Invariants: the accept loop never awaits anything but `accept` and a
//! connection permit (a slow client cannot stall it); shutdown is one
//! broadcast, after which running connections get a bounded time to finish;
//! SIGHUP never ends the process, and a reload that fails keeps serving
//! what was served before.

pub mod http;
pub mod imap;
pub mod lmtp;
pub mod services;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

pub use services::{Services, ServicesError};

/// How long running connections get to finish after shutdown is asked.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The accept step every listener shares: waits for one of `permits` (the
/// connection limit), then for the next connection from `accept`. An
/// accept error (out of file descriptors, mostly) is logged and retried
/// after 50 ms, giving others time to close rather than spinning. `None`
/// once shutdown is asked.
pub(crate) async fn next_connection<C, Fut>(
    what: &str,
    permits: &Arc<Semaphore>,
    shutdown: &mut Shutdown,
    mut accept: impl FnMut() -> Fut,
) -> Option<(C, OwnedSemaphorePermit)>
where
    Fut: Future<Output = std::io::Result<C>>,
{
    let permit = tokio::select! {
        _ = shutdown.wait() => return None,
        p = permits.clone().acquire_owned() => p.ok()?,
    };
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait() => return None,
            r = accept() => r,
        };
        match accepted {
            Ok(connection) => return Some((connection, permit)),
            Err(e) => {
                tracing::warn!(error = %e, "{what} accept failed");
                tokio::select! {
                    _ = shutdown.wait() => return None,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

/// After shutdown: gives the running connections [`SHUTDOWN_GRACE`].
pub(crate) async fn finish(mut tasks: JoinSet<()>) {
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}

/// The shutdown broadcast: every listener and connection holds a receiver.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// The sending half, held by whoever decides to stop.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl ShutdownTrigger {
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Resolves once shutdown has been asked (or the trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: call it before telling
/// anyone the server is ready, so that an early SIGTERM is a clean stop
/// rather than the default kill.
pub fn termination_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                (Ok(mut term), Err(_)) => {
                    term.recv().await;
                }
                (Err(_), Ok(mut int)) => {
                    int.recv().await;
                }
                (Err(_), Err(_)) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// SIGHUP, caught from the moment [`hangup_signal`] is called: its default
/// action would end the process, so a `systemctl reload` (or certbot's
/// deploy hook) before the server is ready must find it installed.
#[derive(Debug)]
pub struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

/// Installs the SIGHUP handler now (see [`Hangup`]). Should installing it
/// fail, a warning says so and SIGHUP keeps its default action.
pub fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let signal = signal(SignalKind::hangup())
            .inspect_err(
                |e| tracing::warn!(error = %e, "cannot catch SIGHUP: reload needs a restart"),
            )
            .ok();
        Hangup { signal }
    }
    #[cfg(not(unix))]
    Hangup {}
}

impl Hangup {
    /// The next SIGHUP; never resolves when it cannot be caught.
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal
            && signal.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await
    }
}

/// Until shutdown: at each SIGHUP, reads the IMAP certificate and key
/// again ([`tls::ReloadableCert::reload`]); new connections get the new
/// certificate, open ones keep theirs. A certificate that does not load is
/// not served: the previous one stays and the error, naming the file, is
/// logged. Nothing else is reloaded: the configuration file is read only at
/// start (the users file of the static directory is re-read whenever it
/// changes, SIGHUP or not).
pub async fn reload_on_hangup(
    mut hangup: Hangup,
    certificate: Option<Arc<tls::ReloadableCert>>,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = hangup.recv() => {}
        }
        let Some(certificate) = &certificate else {
            tracing::info!(
                "SIGHUP: no TLS certificate to reload; the configuration is read only at start"
            );
            continue;
        };
        // File reads, and for a self-signed certificate maybe a new key.
        let reloading = certificate.clone();
        match tokio::task::spawn_blocking(move || reloading.reload()).await {
            Ok(Ok(())) => tracing::info!(
                certificate = %certificate.path().display(),
                "SIGHUP: reloaded the TLS certificate; the configuration is read only at start"
            ),
            Ok(Err(e)) => tracing::error!(
                error = %e,
                "SIGHUP: cannot reload the TLS certificate; still serving the previous one"
            ),
            Err(e) => tracing::error!(
                error = %e,
                "SIGHUP: the certificate reload failed; still serving the previous one"
            ),
        }
    }
}
