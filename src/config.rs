//! The configuration file: one TOML file, every field documented here and in
//! `doc/facteur.example.toml` (a test checks that the example parses). Unknown
//! fields are errors, so a typo never silently falls back to a default.
//! Defaults are written once, in the `default_*` functions below.
//!
//! With no configuration file, `facteur serve` uses the embedded default
//! ([`Config::embedded`]): everything under one local data directory.
//!
//! Relative paths in a file are relative to the directory holding the file.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::crypto::{KdfParams, Password, UserPublicKey};
use crate::directory::ldap::LdapSettings;
use crate::size::ByteSize;
use crate::store::S3Settings;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
    #[error("cannot read secret {what}: {message}")]
    Secret { what: String, message: String },
}

/// The whole configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Secret shared by every instance of the cluster; user ids in the store
    /// are HMAC-SHA256(cluster_secret, login). Changing it orphans every
    /// user's data, so keep it safe and identical everywhere. At least 16
    /// bytes; 32 random bytes in hex are ideal.
    pub cluster_secret: SecretSource,
    /// Where mail is stored.
    pub store: StoreConfig,
    /// Who the users are.
    pub directory: DirectoryConfig,
    /// Key-derivation settings.
    #[serde(default)]
    pub crypto: CryptoConfig,
    /// The health and metrics endpoint.
    #[serde(default)]
    pub http: HttpConfig,
    /// The LMTP listeners Postfix delivers to.
    #[serde(default)]
    pub lmtp: LmtpConfig,
    /// The IMAP listeners mail clients connect to.
    #[serde(default)]
    pub imap: ImapConfig,
}

/// A secret given inline, read from a file, or read from an environment
/// variable:
///
/// ```toml
/// secret = "inline value"
/// secret = { file = "/etc/facteur/secret" }   # trailing newline ignored
/// secret = { env = "FACTEUR_SECRET" }
/// ```
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum SecretSource {
    Inline(String),
    File { file: PathBuf },
    Env { env: String },
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("SecretSource::Inline(<redacted>)"),
            SecretSource::File { file } => write!(f, "SecretSource::File({})", file.display()),
            SecretSource::Env { env } => write!(f, "SecretSource::Env({env})"),
        }
    }
}

impl SecretSource {
    /// Reads the secret's value; `what` names it in error messages.
    pub fn resolve(&self, what: &str) -> Result<Zeroizing<String>, ConfigError> {
        let err = |message: String| ConfigError::Secret {
            what: what.to_owned(),
            message,
        };
        let value = match self {
            SecretSource::Inline(v) => Zeroizing::new(v.clone()),
            SecretSource::File { file } => {
                let mut v = Zeroizing::new(
                    std::fs::read_to_string(file)
                        .map_err(|e| err(format!("{}: {e}", file.display())))?,
                );
                let trimmed_len = v.trim_end_matches(['\n', '\r']).len();
                v.truncate(trimmed_len);
                v
            }
            SecretSource::Env { env } => Zeroizing::new(
                std::env::var(env).map_err(|e| err(format!("environment variable {env}: {e}")))?,
            ),
        };
        if value.is_empty() {
            return Err(err("it is empty".into()));
        }
        Ok(value)
    }

    fn rebase(&mut self, base: &Path) {
        if let SecretSource::File { file } = self {
            *file = base.join(&*file);
        }
    }
}

/// Which object store backend holds the data.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// A local directory (the embedded default; one machine only).
    Fs,
    /// Any S3 service; Garage in production.
    S3,
    /// In memory, lost at exit: for tests and demos.
    Memory,
}

/// `[store]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `fs`, `s3` or `memory`.
    pub backend: StoreBackend,
    /// The directory of the `fs` backend.
    pub path: Option<PathBuf>,
    /// Settings of the `s3` backend.
    pub s3: Option<S3Config>,
}

/// `[store.s3]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:3900` for a local Garage node.
    pub endpoint: String,
    /// Region name; must equal Garage's `s3_region`.
    #[serde(default = "default_s3_region")]
    pub region: String,
    /// Bucket holding all of Facteur's objects.
    pub bucket: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (inline, `{ file = ... }` or `{ env = ... }`).
    pub secret_access_key: SecretSource,
    /// Most requests in flight at once from this instance.
    #[serde(default = "default_s3_max_concurrency")]
    pub max_concurrency: usize,
    /// Retries of a request that failed transiently (network, 5xx), with
    /// exponential backoff.
    #[serde(default = "default_s3_max_retries")]
    pub max_retries: u32,
}

fn default_s3_region() -> String {
    "garage".into()
}
fn default_s3_max_concurrency() -> usize {
    32
}
fn default_s3_max_retries() -> u32 {
    5
}

impl S3Config {
    /// The settings the S3 backend is built from, with the secret resolved.
    pub fn settings(&self) -> Result<S3Settings, ConfigError> {
        if self.max_concurrency == 0 {
            return Err(ConfigError::Invalid(
                "store.s3.max_concurrency must be at least 1".into(),
            ));
        }
        Ok(S3Settings {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            bucket: self.bucket.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self
                .secret_access_key
                .resolve("store.s3.secret_access_key")?
                .to_string(),
            max_concurrency: self.max_concurrency,
            max_retries: self.max_retries,
        })
    }
}

/// Which directory provider knows the users.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DirectoryBackend {
    /// A TOML users file edited with `facteur user ...`.
    Static,
    /// An LDAP directory (OpenLDAP, 389-ds, ...): see `[directory.ldap]`
    /// and doc/ldap.md.
    Ldap,
}

/// `[directory]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// `static` (a users file) or `ldap`.
    pub backend: DirectoryBackend,
    /// The users file of the `static` backend.
    pub users_file: Option<PathBuf>,
    /// Settings of the `ldap` backend.
    pub ldap: Option<LdapConfig>,
}

/// `[directory.ldap]`: users live in an LDAP directory (doc/ldap.md). Users
/// are found with the service account's searches and authenticated by
/// binding as themselves (RFC 4513 §5.1.3); password hashes are never read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// Server URLs, `ldap://host[:port]` or `ldaps://host[:port]`. New
    /// connections try them in order, so the first is the primary and the
    /// others are failover.
    pub urls: Vec<String>,
    /// Upgrade `ldap://` connections with StartTLS (RFC 4513 §3); `ldaps://`
    /// is TLS from the start either way.
    #[serde(default)]
    pub starttls: bool,
    /// PEM file of the certificate authorities to trust for TLS; unset
    /// means the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// DN of the service account that searches users (for logins and LMTP
    /// recipient lookups). Unset means anonymous searches.
    pub bind_dn: Option<String>,
    /// Password of `bind_dn` (inline, `{ file = ... }` or `{ env = ... }`).
    pub bind_password: Option<SecretSource>,
    /// Where users and groups are searched (whole subtree).
    pub base_dn: String,
    /// Finds the entry of a login; `%u` is the login, escaped (RFC 4515).
    /// An entry this filter does not match cannot log in nor receive mail.
    #[serde(default = "default_ldap_user_filter")]
    pub user_filter: String,
    /// Finds the entry receiving mail for an address; `%a` is the address,
    /// lower-cased and escaped (RFC 4515).
    #[serde(default = "default_ldap_address_filter")]
    pub address_filter: String,
    /// Attribute holding the login; its value names the user's storage.
    #[serde(default = "default_ldap_login_attribute")]
    pub login_attribute: String,
    /// Attributes holding the user's own addresses; the first value found
    /// is the primary address.
    #[serde(default = "default_ldap_address_attributes")]
    pub address_attributes: Vec<String>,
    /// Attributes holding further addresses (aliases) delivered to the user.
    #[serde(default = "default_ldap_alias_attributes")]
    pub alias_attributes: Vec<String>,
    /// Attribute holding the storage quota in bytes (an integer, or a size
    /// such as `2 GiB`); unset means no quota.
    pub quota_attribute: Option<String>,
    /// Attribute holding the most messages the user may keep (an
    /// integer, all mailboxes together); unset means no such limit.
    pub quota_messages_attribute: Option<String>,
    /// Only users this filter finds an entry for may use mail, e.g.
    /// `(&(objectClass=groupOfNames)(cn=mail)(member=%d))`; `%d` is the
    /// user's DN and `%u` their login, both escaped. Unset: no group check.
    pub group_filter: Option<String>,
    /// Seconds allowed to connect (TLS included) and for each operation.
    #[serde(default = "default_ldap_timeout")]
    pub timeout: u64,
    /// Most connections open at once, for searches and for user binds each.
    #[serde(default = "default_ldap_pool_size")]
    pub pool_size: usize,
    /// Seconds a recipient lookup (LMTP) is remembered; 0 disables caching.
    /// Logins always ask the directory.
    #[serde(default = "default_ldap_cache_ttl")]
    pub cache_ttl: u64,
    /// Seconds an unknown recipient is remembered, shorter so that a user
    /// just added receives mail soon; at most `cache_ttl`.
    #[serde(default = "default_ldap_negative_cache_ttl")]
    pub negative_cache_ttl: u64,
}

fn default_ldap_user_filter() -> String {
    "(&(objectClass=inetOrgPerson)(uid=%u))".into()
}
fn default_ldap_address_filter() -> String {
    "(&(objectClass=inetOrgPerson)(|(mail=%a)(mailAlternateAddress=%a)))".into()
}
fn default_ldap_login_attribute() -> String {
    "uid".into()
}
fn default_ldap_address_attributes() -> Vec<String> {
    vec!["mail".into()]
}
fn default_ldap_alias_attributes() -> Vec<String> {
    vec!["mailAlternateAddress".into()]
}
fn default_ldap_timeout() -> u64 {
    5
}
fn default_ldap_pool_size() -> usize {
    4
}
fn default_ldap_cache_ttl() -> u64 {
    60
}
fn default_ldap_negative_cache_ttl() -> u64 {
    10
}

impl LdapConfig {
    /// The settings the LDAP directory is built from, checked; the service
    /// password is resolved separately by [`LdapConfig::bind_password`].
    pub fn settings(&self) -> Result<LdapSettings, ConfigError> {
        let settings = LdapSettings {
            urls: self.urls.clone(),
            starttls: self.starttls,
            ca_file: self.ca_file.clone(),
            bind_dn: self.bind_dn.clone(),
            base_dn: self.base_dn.clone(),
            user_filter: self.user_filter.clone(),
            address_filter: self.address_filter.clone(),
            login_attribute: self.login_attribute.clone(),
            address_attributes: self.address_attributes.clone(),
            alias_attributes: self.alias_attributes.clone(),
            quota_attribute: self.quota_attribute.clone(),
            quota_messages_attribute: self.quota_messages_attribute.clone(),
            group_filter: self.group_filter.clone(),
            timeout: Duration::from_secs(self.timeout),
            pool_size: self.pool_size,
            cache_ttl: Duration::from_secs(self.cache_ttl),
            negative_cache_ttl: Duration::from_secs(self.negative_cache_ttl),
        };
        settings
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("directory.ldap: {e}")))?;
        if self.bind_dn.is_some() != self.bind_password.is_some() {
            return Err(ConfigError::Invalid(
                "directory.ldap: bind_dn and bind_password go together".into(),
            ));
        }
        Ok(settings)
    }

    /// The service account's password, if a service account is configured.
    pub fn bind_password(&self) -> Result<Option<Password>, ConfigError> {
        self.bind_password
            .as_ref()
            .map(|s| {
                s.resolve("directory.ldap.bind_password")
                    .map(|p| Password::new(p.as_str()))
            })
            .transpose()
    }
}

/// `[crypto]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoConfig {
    /// Argon2id parameters for new password slots and password hashes,
    /// between 1 MiB and 256 MiB of memory, 1 to 10 passes, 1 to 8 lanes.
    /// A keyring written with weaker parameters is re-wrapped with these at
    /// the user's next login. The default (64 MiB, 3 passes) takes about a
    /// second on a Raspberry Pi 4.
    #[serde(default)]
    pub argon2: KdfParams,
    /// Password checks (Argon2 runs) at once; 0: one per core. Each takes
    /// `argon2.memory_kib` while it runs.
    #[serde(default)]
    pub argon2_threads: usize,
    /// Password checks waiting for a thread; further logins are answered
    /// `NO [UNAVAILABLE]` at once. Unset: 8 per thread.
    #[serde(default)]
    pub argon2_queue: Option<usize>,
    /// Create a recovery key for new users (shown once).
    #[serde(default = "default_true")]
    pub recovery_key: bool,
    /// The association's admin escrow key: 64 hex characters, the public
    /// half printed by `facteur admin escrow-keygen`. When set, every
    /// keyring gets an escrow slot sealed to it, when it is created or at
    /// the user's next login; `facteur user escrow-unlock` then sets a new
    /// password with the offline secret half. Unset (the default): no
    /// escrow, and a user with neither password nor recovery key has lost
    /// their mail.
    #[serde(default)]
    pub escrow_public_key: Option<String>,
}

impl CryptoConfig {
    /// The escrow key, parsed.
    pub fn escrow_public_key(&self) -> Result<Option<UserPublicKey>, ConfigError> {
        let Some(text) = &self.escrow_public_key else {
            return Ok(None);
        };
        let bytes = hex::decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                ConfigError::Invalid(
                    "crypto.escrow_public_key must be 64 hex characters (facteur admin escrow-keygen)"
                        .into(),
                )
            })?;
        Ok(Some(UserPublicKey::from_bytes(bytes)))
    }
}

impl Default for CryptoConfig {
    fn default() -> Self {
        CryptoConfig {
            argon2: KdfParams::default(),
            argon2_threads: 0,
            argon2_queue: None,
            recovery_key: default_true(),
            escrow_public_key: None,
        }
    }
}

impl CryptoConfig {
    /// The pool every password check runs in, as configured.
    pub fn kdf_pool(&self) -> std::sync::Arc<crate::crypto::KdfPool> {
        use crate::crypto::KdfPool;
        let threads = match self.argon2_threads {
            0 => KdfPool::default_threads(),
            n => n,
        };
        let queue = self
            .argon2_queue
            .unwrap_or(threads * KdfPool::DEFAULT_QUEUE_PER_THREAD);
        KdfPool::new(threads, queue)
    }
}

fn default_true() -> bool {
    true
}

/// `[http]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the health (`/health`) and metrics (`/metrics`) endpoint;
    /// unset disables it.
    #[serde(default = "default_http_listen")]
    pub listen: Option<SocketAddr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_http_listen(),
        }
    }
}

fn default_http_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9180)))
}

/// `[lmtp]`: where Postfix delivers (RFC 2033), and the limits of a
/// delivery (doc/lmtp.md; doc/architecture.md, "Limits").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmtpConfig {
    /// TCP addresses to listen on; empty disables LMTP over TCP. LMTP has
    /// no authentication: keep it on loopback or a trusted network.
    #[serde(default = "default_lmtp_listen")]
    pub listen: Vec<SocketAddr>,
    /// A Unix socket to listen on as well (a stale socket file is replaced
    /// at start); unset: none.
    pub unix_socket: Option<PathBuf>,
    /// Largest message accepted, advertised as SIZE (RFC 1870); larger
    /// ones are refused with 552 5.3.4.
    #[serde(default = "default_lmtp_max_message_size")]
    pub max_message_size: ByteSize,
    /// Most recipients in one transaction; further RCPTs get 452 4.5.3 and
    /// Postfix sends them in another transaction.
    #[serde(default = "default_lmtp_max_recipients")]
    pub max_recipients: usize,
    /// LMTP connections served at once; further ones wait in the kernel
    /// backlog.
    #[serde(default = "default_lmtp_max_connections")]
    pub max_connections: usize,
    /// Seconds a client may stay silent before the connection is closed
    /// (421 4.4.2).
    #[serde(default = "default_lmtp_idle_timeout")]
    pub idle_timeout: u64,
    /// Over quota answers 452 4.2.2 (the sender keeps the mail queued and
    /// retries) instead of 552 5.2.2 (it bounces at once, like Dovecot).
    #[serde(default)]
    pub quota_full_temporary: bool,
}

impl Default for LmtpConfig {
    fn default() -> Self {
        LmtpConfig {
            listen: default_lmtp_listen(),
            unix_socket: None,
            max_message_size: default_lmtp_max_message_size(),
            max_recipients: default_lmtp_max_recipients(),
            max_connections: default_lmtp_max_connections(),
            idle_timeout: default_lmtp_idle_timeout(),
            quota_full_temporary: false,
        }
    }
}

impl LmtpConfig {
    /// The embedded default: an unprivileged port on loopback (2424; the
    /// standard 24 needs root), so that a newcomer can deliver a test
    /// message without a config file.
    pub fn embedded() -> LmtpConfig {
        LmtpConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2424))],
            ..LmtpConfig::default()
        }
    }
}

fn default_lmtp_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 24))]
}
fn default_lmtp_max_message_size() -> ByteSize {
    ByteSize(50 << 20)
}
fn default_lmtp_max_recipients() -> usize {
    100
}
fn default_lmtp_max_connections() -> usize {
    64
}
fn default_lmtp_idle_timeout() -> u64 {
    300
}

/// `[imap]`: where mail clients connect (RFC 9051), TLS, and the limits of
/// a connection (doc/imap.md, "Limits").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapConfig {
    /// Addresses of plaintext IMAP upgraded with STARTTLS (port 143);
    /// empty disables them.
    #[serde(default = "default_imap_starttls_listen")]
    pub starttls_listen: Vec<SocketAddr>,
    /// Addresses of IMAP over implicit TLS (port 993, RFC 8314); empty
    /// disables them.
    #[serde(default = "default_imap_tls_listen")]
    pub tls_listen: Vec<SocketAddr>,
    /// PEM file of the server certificate chain, leaf first (e.g. Let's
    /// Encrypt's `fullchain.pem`). Read at start.
    pub certificate: Option<PathBuf>,
    /// PEM file of the certificate's private key (e.g. `privkey.pem`).
    pub private_key: Option<PathBuf>,
    /// When `certificate` and `private_key` are unset: a directory where a
    /// self-signed certificate is generated on first start and reused
    /// afterwards (`tls-cert.pem`, `tls-key.pem`). The embedded default uses
    /// its data directory. Clients must pin it; for trials and tests. With
    /// neither, STARTTLS is not offered and `serve` refuses to start
    /// implicit-TLS listeners.
    pub self_signed_dir: Option<PathBuf>,
    /// Allow LOGIN and AUTHENTICATE without TLS from other machines than
    /// this one (loopback is always allowed). Only behind a TLS proxy or on
    /// a trusted network: passwords would cross the network in clear.
    #[serde(default)]
    pub plaintext_auth: bool,
    /// IMAP connections served at once, over all listeners; further ones
    /// wait in the kernel backlog.
    #[serde(default = "default_imap_max_connections")]
    pub max_connections: usize,
    /// IMAP connections at once from one address (IPv6: one /64); further
    /// ones get `* BYE` (STARTTLS ports) or are closed (TLS ports). Mail
    /// clients open several per account, and households share an address.
    #[serde(default = "default_imap_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Seconds a client of an implicit-TLS port has to finish the TLS
    /// handshake (the STARTTLS upgrade has its own 30 s bound).
    #[serde(default = "default_imap_tls_handshake_timeout")]
    pub tls_handshake_timeout: u64,
    /// Seconds a client has to send each whole command before login
    /// (from the previous answer: a trickle of bytes does not extend it),
    /// after which the connection is closed.
    #[serde(default = "default_imap_timeout_unauthenticated")]
    pub timeout_unauthenticated: u64,
    /// The same after login; at least 1800 (RFC 9051 §5.4). A command's
    /// literals count: a `max_message_size` APPEND must arrive within it.
    /// IDLE is not silence.
    #[serde(default = "default_imap_timeout_authenticated")]
    pub timeout_authenticated: u64,
    /// Seconds between `* OK Still here` during IDLE, so that NAT and
    /// mobile networks keep the connection open.
    #[serde(default = "default_imap_idle_keepalive")]
    pub idle_keepalive: u64,
    /// Largest APPEND message, advertised as APPENDLIMIT (RFC 7889), and
    /// largest literal after login; a command with its literals may be
    /// 64 KiB more.
    #[serde(default = "default_imap_max_message_size")]
    pub max_message_size: ByteSize,
    /// Largest command before login, its literals included (LOGIN,
    /// AUTHENTICATE and its answers, ID, STARTTLS...). A synchronizing
    /// literal that would pass it is refused before the client sends it;
    /// any other larger command is read to its end, dropped and answered
    /// `NO [TOOBIG]`. Together with `max_connections` it bounds the memory
    /// anonymous clients can hold (doc/imap.md, "Limits").
    #[serde(default = "default_imap_max_command_unauthenticated")]
    pub max_command_unauthenticated: ByteSize,
    /// Largest text of a command after login, its literals' data not
    /// counted (long UID sets, SEARCH with many keys). Larger commands are
    /// read to their end, never parsed, and answered `NO [TOOBIG]`: parsing
    /// takes several times the text's size in memory.
    #[serde(default = "default_imap_max_command_line")]
    pub max_command_line: ByteSize,
    /// Failed logins from one address (IPv6: one /64) within 15 minutes
    /// before further attempts from it are delayed, exponentially up to 5
    /// minutes (the policy: `crate::imap::throttle`).
    #[serde(default = "default_imap_login_failures_per_ip")]
    pub login_failures_per_ip: u32,
    /// Failed logins for one login from one address within 15 minutes
    /// before further attempts for it from there are delayed,
    /// exponentially up to 5 minutes; a successful login resets it. (Many
    /// addresses guessing one login are delayed after 20 failures, by at
    /// most a minute, except from addresses the login succeeded from.)
    #[serde(default = "default_imap_login_failures_per_login")]
    pub login_failures_per_login: u32,
    /// Whether instances tell each other which users' data changed, with
    /// small objects under `hints/` listed once every 2 s per instance
    /// (doc/consistency.md, "Change hints"). Off: every account with a
    /// session polls the store every 2 s, as before.
    #[serde(default = "default_true")]
    pub change_hints: bool,
    /// With `change_hints`: the longest time between two polls of an
    /// account with a session while nothing changes, in seconds (a lost
    /// hint is seen by then). At least 2.
    #[serde(default = "default_imap_poll_fallback")]
    pub poll_fallback: u64,
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig {
            starttls_listen: default_imap_starttls_listen(),
            tls_listen: default_imap_tls_listen(),
            certificate: None,
            private_key: None,
            self_signed_dir: None,
            plaintext_auth: false,
            max_connections: default_imap_max_connections(),
            max_connections_per_ip: default_imap_max_connections_per_ip(),
            tls_handshake_timeout: default_imap_tls_handshake_timeout(),
            timeout_unauthenticated: default_imap_timeout_unauthenticated(),
            timeout_authenticated: default_imap_timeout_authenticated(),
            idle_keepalive: default_imap_idle_keepalive(),
            max_message_size: default_imap_max_message_size(),
            max_command_unauthenticated: default_imap_max_command_unauthenticated(),
            max_command_line: default_imap_max_command_line(),
            login_failures_per_ip: default_imap_login_failures_per_ip(),
            login_failures_per_login: default_imap_login_failures_per_login(),
            change_hints: true,
            poll_fallback: default_imap_poll_fallback(),
        }
    }
}

impl ImapConfig {
    /// The embedded default: unprivileged ports on loopback (1143 for
    /// STARTTLS, 1993 for TLS) and a self-signed certificate in `data_dir`.
    pub fn embedded(data_dir: &Path) -> ImapConfig {
        ImapConfig {
            starttls_listen: vec![SocketAddr::from(([127, 0, 0, 1], 1143))],
            tls_listen: vec![SocketAddr::from(([127, 0, 0, 1], 1993))],
            self_signed_dir: Some(data_dir.to_owned()),
            ..ImapConfig::default()
        }
    }

    /// Whether TLS is configured (a certificate or a self-signed one).
    pub fn has_tls(&self) -> bool {
        self.certificate.is_some() || self.self_signed_dir.is_some()
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(format!("imap.{m}")));
        if self.certificate.is_some() != self.private_key.is_some() {
            return invalid("certificate and imap.private_key go together");
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return invalid("max_connections and imap.max_connections_per_ip must be at least 1");
        }
        if self.tls_handshake_timeout == 0 || self.timeout_unauthenticated == 0 {
            return invalid(
                "tls_handshake_timeout and imap.timeout_unauthenticated must be at least 1 second",
            );
        }
        if self.timeout_authenticated < 1800 {
            return invalid("timeout_authenticated must be at least 1800 seconds (RFC 9051 §5.4)");
        }
        if self.idle_keepalive == 0 {
            return invalid("idle_keepalive must be at least 1 second");
        }
        if self.poll_fallback < 2 {
            return invalid("poll_fallback must be at least 2 seconds");
        }
        if u32::try_from(self.max_message_size.0).is_err() {
            return invalid("max_message_size must be below 4 GiB");
        }
        if !(512..=1 << 20).contains(&self.max_command_unauthenticated.0) {
            return invalid("max_command_unauthenticated must be between 512 bytes and 1 MiB");
        }
        if !(1024..=self.max_message_size.0.max(1024)).contains(&self.max_command_line.0) {
            return invalid("max_command_line must be between 1 KiB and imap.max_message_size");
        }
        Ok(())
    }
}

fn default_imap_poll_fallback() -> u64 {
    60
}
fn default_imap_starttls_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], 143))]
}
fn default_imap_tls_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], 993))]
}
fn default_imap_max_connections() -> usize {
    1000
}
fn default_imap_max_connections_per_ip() -> usize {
    50
}
fn default_imap_tls_handshake_timeout() -> u64 {
    10
}
fn default_imap_timeout_unauthenticated() -> u64 {
    60
}
fn default_imap_timeout_authenticated() -> u64 {
    30 * 60
}
fn default_imap_idle_keepalive() -> u64 {
    120
}
fn default_imap_max_message_size() -> ByteSize {
    ByteSize(50 << 20)
}
fn default_imap_max_command_unauthenticated() -> ByteSize {
    ByteSize(8 << 10)
}
fn default_imap_max_command_line() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_imap_login_failures_per_ip() -> u32 {
    10
}
fn default_imap_login_failures_per_login() -> u32 {
    5
}

impl Config {
    /// Reads, parses and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses configuration text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: crate::tomlfile::describe_error(&e, text),
        })?;
        config.rebase(base);
        config.check()?;
        Ok(config)
    }

    /// The embedded default: an `fs` store and a users file under
    /// `data_dir`, the cluster secret in `data_dir/cluster-secret`.
    pub fn embedded(data_dir: &Path) -> Config {
        Config {
            cluster_secret: SecretSource::File {
                file: data_dir.join("cluster-secret"),
            },
            store: StoreConfig {
                backend: StoreBackend::Fs,
                path: Some(data_dir.join("store")),
                s3: None,
            },
            directory: DirectoryConfig {
                backend: DirectoryBackend::Static,
                users_file: Some(data_dir.join("users.toml")),
                ldap: None,
            },
            crypto: CryptoConfig::default(),
            http: HttpConfig::default(),
            lmtp: LmtpConfig::embedded(),
            imap: ImapConfig::embedded(data_dir),
        }
    }

    fn rebase(&mut self, base: &Path) {
        self.cluster_secret.rebase(base);
        if let Some(p) = &mut self.store.path {
            *p = base.join(&*p);
        }
        if let Some(s3) = &mut self.store.s3 {
            s3.secret_access_key.rebase(base);
        }
        if let Some(p) = &mut self.directory.users_file {
            *p = base.join(&*p);
        }
        if let Some(p) = &mut self.lmtp.unix_socket {
            *p = base.join(&*p);
        }
        for p in [
            &mut self.imap.certificate,
            &mut self.imap.private_key,
            &mut self.imap.self_signed_dir,
        ]
        .into_iter()
        .flatten()
        {
            *p = base.join(&*p);
        }
        if let Some(ldap) = &mut self.directory.ldap {
            if let Some(p) = &mut ldap.ca_file {
                *p = base.join(&*p);
            }
            if let Some(s) = &mut ldap.bind_password {
                s.rebase(base);
            }
        }
    }

    /// Checks what the types cannot: each backend has its settings.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.into()));
        match self.store.backend {
            StoreBackend::Fs if self.store.path.is_none() => {
                return invalid("store.backend = \"fs\" needs store.path");
            }
            StoreBackend::S3 if self.store.s3.is_none() => {
                return invalid("store.backend = \"s3\" needs a [store.s3] section");
            }
            _ => {}
        }
        if self.directory.backend == DirectoryBackend::Static && self.directory.users_file.is_none()
        {
            return invalid("directory.backend = \"static\" needs directory.users_file");
        }
        match (&self.directory.ldap, self.directory.backend) {
            (None, DirectoryBackend::Ldap) => {
                return invalid("directory.backend = \"ldap\" needs a [directory.ldap] section");
            }
            (Some(ldap), _) => {
                ldap.settings()?;
            }
            (None, _) => {}
        }
        if self.lmtp.max_recipients == 0 || self.lmtp.max_connections == 0 {
            return invalid("lmtp.max_recipients and lmtp.max_connections must be at least 1");
        }
        if self.lmtp.idle_timeout == 0 {
            return invalid("lmtp.idle_timeout must be at least 1 second");
        }
        self.imap.check()?;
        self.crypto.escrow_public_key()?;
        self.crypto
            .argon2
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("crypto.argon2: {e}")))?;
        if self.crypto.argon2_threads > 1024 || self.crypto.argon2_queue.unwrap_or(0) > 65_536 {
            return invalid("crypto.argon2_threads must be at most 1024 and argon2_queue 65536");
        }
        Ok(())
    }

    /// The cluster secret's bytes, checked for length.
    pub fn cluster_secret(&self) -> Result<Zeroizing<String>, ConfigError> {
        let secret = self.cluster_secret.resolve("cluster_secret")?;
        if secret.len() < 16 {
            return Err(ConfigError::Secret {
                what: "cluster_secret".into(),
                message: "it must be at least 16 bytes long".into(),
            });
        }
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        cluster_secret = "0123456789abcdef0123456789abcdef"
        [store]
        backend = "fs"
        path = "data"
        [directory]
        backend = "static"
        users_file = "users.toml"
    "#;

    #[test]
    fn minimal_config_gets_defaults_and_rebased_paths() {
        let c = Config::parse(MINIMAL, Path::new("/etc/facteur")).unwrap();
        assert_eq!(
            c.store.path.as_deref(),
            Some(Path::new("/etc/facteur/data"))
        );
        assert_eq!(
            c.directory.users_file.as_deref(),
            Some(Path::new("/etc/facteur/users.toml"))
        );
        assert_eq!(c.crypto.argon2, KdfParams::default());
        assert!(c.crypto.recovery_key);
        assert_eq!(c.http.listen, default_http_listen());
        assert_eq!(c.lmtp.listen, default_lmtp_listen());
        assert_eq!(c.lmtp.max_message_size, ByteSize(50 << 20));
        assert_eq!(c.lmtp.unix_socket, None);
    }

    #[test]
    fn unknown_fields_are_errors() {
        let text = MINIMAL.replace("backend = \"fs\"", "backend = \"fs\"\npaht = \"x\"");
        let err = Config::parse(&text, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `paht`"), "{err}");
    }

    #[test]
    fn backends_need_their_settings() {
        let text = MINIMAL.replace("backend = \"fs\"", "backend = \"s3\"");
        let err = Config::parse(&text, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[store.s3]"), "{err}");
    }

    #[test]
    fn secrets_come_from_files_and_environment_and_stay_out_of_debug() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s");
        std::fs::write(&file, "from-a-file-1234567\n").unwrap();
        let s = SecretSource::File { file };
        assert_eq!(s.resolve("x").unwrap().as_str(), "from-a-file-1234567");

        let s = SecretSource::Env {
            env: "FACTEUR_TEST_SURELY_UNSET_VARIABLE".into(),
        };
        assert!(
            s.resolve("x")
                .unwrap_err()
                .to_string()
                .contains("FACTEUR_TEST_SURELY_UNSET")
        );

        let c = Config::parse(MINIMAL, Path::new(".")).unwrap();
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn short_cluster_secret_is_refused() {
        let text = MINIMAL.replace("0123456789abcdef0123456789abcdef", "short");
        let c = Config::parse(&text, Path::new(".")).unwrap();
        assert!(
            c.cluster_secret()
                .unwrap_err()
                .to_string()
                .contains("16 bytes")
        );
    }

    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("../doc/facteur.example.toml");
        let c = Config::parse(text, Path::new("/etc/facteur")).unwrap();
        assert_eq!(c.store.backend, StoreBackend::S3);
        let ldap = c.directory.ldap.as_ref().unwrap().settings().unwrap();
        assert_eq!(ldap.urls.len(), 2);
        assert_eq!(ldap.quota_attribute.as_deref(), Some("mailQuota"));
        assert_eq!(
            ldap.quota_messages_attribute.as_deref(),
            Some("mailQuotaMessages")
        );
        assert_eq!(
            c.lmtp.unix_socket.as_deref(),
            Some(Path::new("/var/spool/postfix/private/facteur-lmtp"))
        );
        assert_eq!(c.lmtp.max_message_size, ByteSize(50 << 20));
        assert_eq!(
            c.imap.certificate.as_deref(),
            Some(Path::new("/etc/facteur/tls/fullchain.pem"))
        );
        assert_eq!(c.imap.tls_listen, [SocketAddr::from(([0, 0, 0, 0], 993))]);
        assert_eq!(c.imap.max_connections_per_ip, 50);
        assert!(!c.imap.plaintext_auth);
    }

    #[test]
    fn imap_defaults_embedded_and_checks() {
        let c = Config::parse(MINIMAL, Path::new("/etc/facteur")).unwrap();
        assert_eq!(c.imap.starttls_listen, default_imap_starttls_listen());
        assert_eq!(c.imap.tls_listen, default_imap_tls_listen());
        assert!(!c.imap.has_tls());
        assert_eq!(c.imap.timeout_authenticated, 1800);

        let e = Config::embedded(Path::new("/data"));
        assert_eq!(
            e.imap.starttls_listen,
            [SocketAddr::from(([127, 0, 0, 1], 1143))]
        );
        assert_eq!(
            e.imap.tls_listen,
            [SocketAddr::from(([127, 0, 0, 1], 1993))]
        );
        assert_eq!(e.imap.self_signed_dir.as_deref(), Some(Path::new("/data")));
        // An unprivileged LMTP port: port 24 needs root (issue #14).
        assert_eq!(e.lmtp.listen, [SocketAddr::from(([127, 0, 0, 1], 2424))]);
        e.check().unwrap();

        let with = |extra: &str| {
            Config::parse(&format!("{MINIMAL}\n[imap]\n{extra}"), Path::new("/etc/f"))
        };
        let c = with("certificate = \"c.pem\"\nprivate_key = \"k.pem\"\nself_signed_dir = \"tls\"")
            .unwrap();
        assert_eq!(
            c.imap.certificate.as_deref(),
            Some(Path::new("/etc/f/c.pem"))
        );
        assert_eq!(
            c.imap.private_key.as_deref(),
            Some(Path::new("/etc/f/k.pem"))
        );
        assert_eq!(
            c.imap.self_signed_dir.as_deref(),
            Some(Path::new("/etc/f/tls"))
        );
        for (bad, expected) in [
            ("certificate = \"c.pem\"", "go together"),
            ("timeout_authenticated = 60", "1800"),
            ("max_connections_per_ip = 0", "at least 1"),
            ("tls_handshake_timeout = 0", "at least 1 second"),
            ("max_message_size = \"5 GiB\"", "4 GiB"),
            ("starttls_listen = \"127.0.0.1:143\"", "sequence"),
        ] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains(expected), "{bad}: {err}");
        }
    }

    #[test]
    fn argon2_parameters_and_pool_are_checked() {
        let with = |extra: &str| {
            Config::parse(
                &format!("{MINIMAL}\n[crypto]\n{extra}"),
                Path::new("/etc/f"),
            )
        };
        let c = with("argon2_threads = 3\nargon2_queue = 5").unwrap();
        let pool = c.crypto.kdf_pool();
        assert_eq!((pool.threads(), pool.queue()), (3, 5));
        let pool = with("").unwrap().crypto.kdf_pool();
        assert_eq!(pool.threads(), crate::crypto::KdfPool::default_threads());
        assert_eq!(pool.queue(), 8 * pool.threads());
        for (bad, expected) in [
            (
                "argon2 = { memory_kib = 1048576, iterations = 3, parallelism = 1 }",
                "memory_kib = 1048576 is above the maximum of 262144",
            ),
            (
                "argon2 = { memory_kib = 65536, iterations = 64, parallelism = 1 }",
                "iterations = 64 is above the maximum of 10",
            ),
            (
                "argon2 = { memory_kib = 65536, iterations = 3, parallelism = 16 }",
                "parallelism = 16 is above the maximum of 8",
            ),
            (
                "argon2 = { memory_kib = 512, iterations = 3, parallelism = 1 }",
                "below the minimum",
            ),
            ("argon2_threads = 100000", "argon2_threads"),
        ] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains(expected), "{bad}: {err}");
        }
    }

    #[test]
    fn ldap_section_gets_defaults_rebased_paths_and_checks() {
        let ldap = MINIMAL.replace("backend = \"static\"", "backend = \"ldap\"")
            + r#"
        [directory.ldap]
        urls = ["ldap://127.0.0.1"]
        base_dn = "dc=example,dc=org"
        bind_dn = "cn=facteur,dc=example,dc=org"
        bind_password = { file = "ldap-password" }
        ca_file = "ca.pem"
        "#;
        let c = Config::parse(&ldap, Path::new("/etc/facteur")).unwrap();
        let l = c.directory.ldap.as_ref().unwrap();
        assert_eq!(l.ca_file.as_deref(), Some(Path::new("/etc/facteur/ca.pem")));
        assert!(matches!(&l.bind_password, Some(SecretSource::File { file })
            if file == Path::new("/etc/facteur/ldap-password")));
        let s = l.settings().unwrap();
        assert_eq!(s.user_filter, default_ldap_user_filter());
        assert_eq!(s.address_attributes, ["mail"]);
        assert_eq!(s.timeout, Duration::from_secs(default_ldap_timeout()));

        let no_section = MINIMAL.replace("backend = \"static\"", "backend = \"ldap\"");
        let err = Config::parse(&no_section, Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("[directory.ldap]"), "{err}");

        let bad_filter = ldap.replace("ca_file", "user_filter = \"(uid=%x)\"\nca_file");
        let err = Config::parse(&bad_filter, Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("%x"), "{err}");

        let half_bind = ldap.replace("bind_dn = \"cn=facteur,dc=example,dc=org\"", "");
        let err = Config::parse(&half_bind, Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("go together"), "{err}");
    }
}
