//! Listeners, limits, shutdown and metrics: everything `facteur serve` runs
//! in one tokio runtime: the LMTP listeners ([`lmtp`]) and the health and
//! metrics endpoint ([`http`]); IMAP joins here when it exists.
//!
//! Invariants: the accept loop never awaits anything but `accept` and a
//! connection permit (a slow client cannot stall it); shutdown is one
//! broadcast, after which running connections get a bounded time to finish.

pub mod http;
pub mod lmtp;
pub mod services;
pub mod tls;

use std::time::Duration;

use tokio::sync::watch;

pub use services::{Services, ServicesError};

/// How long running connections get to finish after shutdown is asked.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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

/// Resolves on SIGINT or SIGTERM.
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
