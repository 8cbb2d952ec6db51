//! IMAP sessions and commands (RFC 3501, RFC 9051 and the extensions in
//! [`capability`]), one file per command family. Parsing and serialising
//! is `imap-codec`'s; [`extend`] adds the grammar of the extensions it
//! does not know yet. The session core does no I/O; [`connection`] is the
//! one file that touches a socket.

pub mod mutf7;
pub mod mime;
pub mod search;
pub mod sort;
pub mod thread;
pub mod throttle;
pub mod capability;
pub mod response;
pub mod state;
pub mod grammar;
pub mod auth;
pub mod cmd;
pub mod session;
pub mod compress;
pub mod connection;

use std::sync::Arc;
use std::time::Duration;

use crate::account::{Accounts, KeyringStore};
use crate::config::ImapConfig;
use crate::crypto::KdfParams;
use crate::directory::Directory;
use crate::size::ByteSize;
use crate::store::layout::UserId;

/// Derives a user's store id from their normalised login.
pub type UserIdFn = Arc<dyn Fn(&str) -> UserId + Send + Sync>;

/// Limits and timeouts of IMAP sessions (doc/imap.md, "Limits"). The defaults
/// are the configuration's (`[imap]` in [`crate::config::ImapConfig`]).
#[derive(Clone, Debug)]
pub struct Options {
    /// Whether LOGIN/AUTHENTICATE are allowed without TLS on a non-loopback
    /// connection (`LOGINDISABLED` is advertised when they are not).
    pub plaintext_auth: bool,
    /// Largest literal after login, and largest APPEND message.
    pub max_message: u32,
    /// Largest command before login, literals included.
    pub max_command_unauthenticated: u32,
    /// Largest command text after login, literal data not counted.
    pub max_command_line: u32,
    /// Time a client has to send a whole command before login, and idle
    /// timeout then (the deadline is per command, not per read).
    pub timeout_unauthenticated: Duration,
    /// The same after login (RFC 9051 §5.4: at least 30 minutes).
    pub timeout_authenticated: Duration,
    /// Interval of `* OK Still here` during IDLE.
    pub idle_keepalive: Duration,
    /// Longest TLS handshake after STARTTLS.
    pub tls_handshake_timeout: Duration,
}

impl Options {
    /// The options `[imap]` sets.
    pub fn from_config(config: &ImapConfig) -> Options {
        let bytes = |b: ByteSize| u32::try_from(b.0).unwrap_or(u32::MAX);
        Options {
            plaintext_auth: config.plaintext_auth,
            max_message: bytes(config.max_message_size),
            max_command_unauthenticated: bytes(config.max_command_unauthenticated),
            max_command_line: bytes(config.max_command_line),
            timeout_unauthenticated: Duration::from_secs(config.timeout_unauthenticated),
            timeout_authenticated: Duration::from_secs(config.timeout_authenticated),
            idle_keepalive: Duration::from_secs(config.idle_keepalive),
            tls_handshake_timeout: Duration::from_secs(config.tls_handshake_timeout),
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options::from_config(&ImapConfig::default())
    }
}

/// What the IMAP server needs of the rest of Facteur, shared by all
/// connections of one instance.
#[derive(Clone)]
pub struct Imap {
    pub directory: Arc<dyn Directory>,
    pub keyrings: KeyringStore,
    pub accounts: Arc<Accounts>,
    pub user_id: UserIdFn,
    /// Parameters of password slots created at a first login.
    pub kdf: KdfParams,
    /// Whether a first login creates a recovery key (delivered once, as a
    /// message in the new INBOX).
    pub recovery_key: bool,
    pub options: Options,
    /// Failed-login throttling, shared by all connections.
    pub throttle: Arc<throttle::Throttle>,
    /// The server certificate for STARTTLS; `None` disables STARTTLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Imap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("directory", &self.directory)
            .field("options", &self.options)
            .field("starttls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}
