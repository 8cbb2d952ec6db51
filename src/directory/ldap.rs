//! The LDAP directory: users provisioned by admins in OpenLDAP (or any LDAPv3
//! server), found by the service account's searches and authenticated by
//! binding as themselves. Password hashes are never read, so any scheme the
//! server supports works and a stock schema is enough (doc/ldap.md).
//!
//! Authentication (RFC 4513 §5.1.3, "search then bind"):
//! 1. an empty password is refused before any request: a simple bind with a
//!    DN and an empty password is an *unauthenticated* bind that succeeds
//!    without checking anything (RFC 4513 §5.1.2);
//! 2. the service account searches `base_dn` with `user_filter`, the login
//!    escaped per RFC 4515 §3 (no filter injection); exactly one entry must
//!    match;
//! 3. if `group_filter` is set, it must find an entry for the user's DN;
//! 4. a connection from a separate pool binds as that DN with the password.
//!
//! A user the filters no longer match (removed, or disabled by the admin,
//! e.g. taken out of the mail group) can neither log in nor receive mail.
//!
//! Invariants:
//! - Directory faults (unreachable servers, timeouts, server errors) are
//!   [`DirectoryError::Unavailable`], never "no such user": LMTP must answer
//!   4xx so mail stays queued.
//! - Every request has a timeout; at most `pool_size` connections per pool
//!   are open; the recipient cache holds at most [`CACHE_CAPACITY`] entries.
//! - A connection that failed at the transport level is dropped, never
//!   reused: the next call reconnects (failing over along `urls`), so the
//!   directory recovers from an outage without a restart.
//! - A directory that timed out is known down: for [`RETRY_AFTER`] every
//!   request fails at once (a circuit breaker), then one request probes it
//!   again. A timeout on a pooled connection is not retried on a fresh one,
//!   so a login waits at most one `timeout` for a directory that stopped
//!   answering, and the logins after it do not wait at all.
//! - Search connections stay bound as the service account; user binds only
//!   happen on the bind pool, whose connections are never used to search.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{
    Ldap, LdapConnAsync, LdapConnSettings, LdapError, LdapResult, Scope, SearchEntry, SearchOptions,
};
use tokio::sync::Semaphore;

use super::{Directory, DirectoryError, UserRecord, normalise_address, normalise_login};
use crate::crypto::Password;
use crate::size::ByteSize;

/// Most recipient lookups remembered at once.
pub const CACHE_CAPACITY: usize = 10_000;

/// How long requests fail at once after the directory timed out, before
/// one request tries it again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Most entries [`LdapDirectory::logins`] reads: an admin listing, not a
/// client's doing, but bounded all the same.
pub const MAX_LISTED: usize = 1_000_000;

/// Entries per page when listing (RFC 2696 paged results), below the
/// usual server size limit of 500.
const LIST_PAGE: i32 = 400;

/// Everything the LDAP directory needs but the service password, checked by
/// [`LdapSettings::validate`]. Built from `[directory.ldap]`
/// (`crate::config::LdapConfig` documents each field).
#[derive(Clone, Debug)]
pub struct LdapSettings {
    pub urls: Vec<String>,
    pub starttls: bool,
    pub ca_file: Option<PathBuf>,
    pub bind_dn: Option<String>,
    pub base_dn: String,
    pub user_filter: String,
    pub address_filter: String,
    pub login_attribute: String,
    pub address_attributes: Vec<String>,
    pub alias_attributes: Vec<String>,
    pub quota_attribute: Option<String>,
    pub quota_messages_attribute: Option<String>,
    pub group_filter: Option<String>,
    pub timeout: Duration,
    pub pool_size: usize,
    pub cache_ttl: Duration,
    pub negative_cache_ttl: Duration,
}

impl LdapSettings {
    /// Checks what the types cannot: URLs, filter templates, limits.
    pub fn validate(&self) -> Result<(), String> {
        self.compile().map(|_| ())
    }

    fn compile(&self) -> Result<Filters, String> {
        if self.urls.is_empty() {
            return Err("urls needs at least one ldap:// or ldaps:// URL".into());
        }
        for url in &self.urls {
            check_url(url)?;
        }
        if self.base_dn.trim().is_empty() {
            return Err("base_dn is empty".into());
        }
        if self.timeout.is_zero() {
            return Err("timeout must be at least 1 second".into());
        }
        if self.pool_size == 0 {
            return Err("pool_size must be at least 1".into());
        }
        if self.negative_cache_ttl > self.cache_ttl {
            return Err("negative_cache_ttl must not exceed cache_ttl".into());
        }
        for attr in std::iter::once(&self.login_attribute)
            .chain(&self.address_attributes)
            .chain(&self.alias_attributes)
            .chain(&self.quota_attribute)
            .chain(&self.quota_messages_attribute)
        {
            check_attribute(attr)?;
        }
        if self.address_attributes.is_empty() {
            return Err("address_attributes needs at least one attribute".into());
        }
        Ok(Filters {
            user: FilterTemplate::parse("user_filter", &self.user_filter, &['u'], &['u'])?,
            address: FilterTemplate::parse("address_filter", &self.address_filter, &['a'], &['a'])?,
            group: self
                .group_filter
                .as_deref()
                .map(|f| FilterTemplate::parse("group_filter", f, &['d', 'u'], &[]))
                .transpose()?,
        })
    }
}

/// An `ldap://` or `ldaps://` URL with a host and nothing after the port
/// (no DN, no attributes: those are separate settings).
fn check_url(url: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid LDAP URL {url:?}: {why}"));
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad("expected ldap://host[:port] or ldaps://host[:port]");
    };
    if scheme != "ldap" && scheme != "ldaps" {
        return bad("the scheme must be ldap or ldaps");
    }
    let host_port = rest.strip_suffix('/').unwrap_or(rest);
    if host_port.is_empty() {
        return bad("no host");
    }
    if host_port.contains(['/', '?', '#', '@']) || host_port.chars().any(char::is_whitespace) {
        return bad("only a host and an optional port are allowed");
    }
    Ok(())
}

/// Attribute descriptions (RFC 4512 §2.5): a name or an OID, options after
/// `;`. Anything else would end up inside a filter or an attribute list.
fn check_attribute(attr: &str) -> Result<(), String> {
    let ok = !attr.is_empty()
        && attr
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ';'));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid attribute name {attr:?}"))
    }
}

/// A search filter with placeholders: `%u` (login), `%a` (address), `%d`
/// (DN), `%%` (a percent sign). Values are escaped when substituted
/// (RFC 4515 §3), so whatever a client sends stays one assertion value.
#[derive(Clone, Debug)]
pub struct FilterTemplate {
    pieces: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Text(String),
    Value(char),
}

impl FilterTemplate {
    /// Parses `text`; `allowed` placeholders may appear, each of `required`
    /// must. The result with sample values must be a valid filter (RFC 4515).
    pub fn parse(
        name: &str,
        text: &str,
        allowed: &[char],
        required: &[char],
    ) -> Result<FilterTemplate, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => literal.push('%'),
                Some(p) if allowed.contains(&p) => {
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Value(p));
                }
                Some(p) => {
                    let known: Vec<String> = allowed.iter().map(|a| format!("%{a}")).collect();
                    return Err(format!(
                        "{name}: unknown placeholder %{p} (allowed: {}, %%)",
                        known.join(", ")
                    ));
                }
                None => return Err(format!("{name}: lone % at the end")),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        let template = FilterTemplate { pieces };
        for p in required {
            if !template.pieces.contains(&Piece::Value(*p)) {
                return Err(format!("{name} must contain %{p}"));
            }
        }
        let sample = template.render(|_| "x*(\\)");
        if ldap3::parse_filter(&sample).is_err() {
            return Err(format!(
                "{name}: {text:?} is not a valid LDAP filter (RFC 4515)"
            ));
        }
        Ok(template)
    }

    /// The filter matching any value: each placeholder becomes `*`,
    /// unescaped (`(uid=%u)` becomes the presence filter `(uid=*)`).
    pub fn render_any(&self) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Value(_) => out.push('*'),
            }
        }
        out
    }

    /// The filter with each placeholder replaced by its escaped value.
    pub fn render<'a>(&self, value: impl Fn(char) -> &'a str) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Value(p) => out.push_str(&escape_filter_value(value(*p))),
            }
        }
        out
    }
}

/// Escapes an assertion value for a search filter (RFC 4515 §3): `*`, `(`,
/// `)`, `\` and NUL become `\2a`, `\28`, `\29`, `\5c`, `\00`; everything
/// else (UTF-8 included) is left as is.
pub fn escape_filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '*' | '(' | ')' | '\\' | '\0' => {
                let _ = write!(out, "\\{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// The compiled filter templates.
#[derive(Debug)]
struct Filters {
    user: FilterTemplate,
    address: FilterTemplate,
    group: Option<FilterTemplate>,
}

/// A bounded cache of recipient lookups, keyed by `login:` or `address:`
/// plus the normalised value; `None` records remember an unknown user.
#[derive(Debug)]
struct Cache {
    capacity: usize,
    entries: HashMap<String, (Instant, Option<UserRecord>)>,
}

impl Cache {
    fn new(capacity: usize) -> Cache {
        Cache {
            capacity,
            entries: HashMap::new(),
        }
    }

    /// The remembered answer, if any and not expired at `now`.
    fn get(&mut self, key: &str, now: Instant) -> Option<Option<UserRecord>> {
        match self.entries.get(key) {
            Some((expires, record)) if *expires > now => Some(record.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers an answer until `expires`. When full, expired entries go
    /// first, then the one closest to expiry.
    fn put(&mut self, key: String, record: Option<UserRecord>, expires: Instant, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (e, _)| *e > now);
            if self.entries.len() >= self.capacity
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (e, _))| *e)
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (expires, record));
    }
}

/// Idle connections of one kind and the permits bounding how many exist.
#[derive(Debug)]
struct Pool {
    /// `search` or `bind`, for messages.
    kind: &'static str,
    /// Bind as the service account right after connecting.
    service_bind: bool,
    idle: Mutex<Vec<Ldap>>,
    permits: Semaphore,
}

impl Pool {
    fn new(kind: &'static str, service_bind: bool, size: usize) -> Pool {
        Pool {
            kind,
            service_bind,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size),
        }
    }

    fn take_idle(&self) -> Option<Ldap> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut ldap) = idle.pop() {
            if !ldap.is_closed() {
                return Some(ldap);
            }
        }
        None
    }

    fn put_idle(&self, ldap: Ldap) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ldap);
    }
}

/// Why an operation failed: the server's answer (the connection is fine),
/// the transport (the connection is dropped), or no answer in time (the
/// connection is dropped and the directory is known down: [`Breaker`]).
enum OpError {
    Answer(DirectoryError),
    Connection(String),
    TimedOut(String),
}

/// The circuit breaker: whether the directory recently timed out, and
/// until when requests fail without trying it. Only timeouts trip it: a
/// refused connection fails in a moment anyway, and trying again each time
/// notices at once that the server is back.
#[derive(Debug, Default)]
struct Breaker {
    /// Until when requests fail at once, and why.
    open: Mutex<Option<(Instant, String)>>,
}

impl Breaker {
    /// Whether a request may go to the directory at `now`; if not, why.
    /// Once the open period is over, the first caller is let through as
    /// the probe and the others keep failing for another [`RETRY_AFTER`]
    /// (or until the probe succeeds), so an outage costs one timeout per
    /// period, not one per login.
    fn admit(&self, now: Instant) -> Result<(), String> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        match open.as_mut() {
            None => Ok(()),
            Some((until, why)) if now < *until => Err(why.clone()),
            Some((until, _)) => {
                *until = now + RETRY_AFTER;
                Ok(())
            }
        }
    }

    /// The directory did not answer in time.
    fn trip(&self, now: Instant, why: &str) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.is_none() {
            tracing::warn!(
                error = why,
                retry_after_s = RETRY_AFTER.as_secs(),
                "LDAP directory timed out: requests fail at once until it is tried again"
            );
        }
        *open = Some((now + RETRY_AFTER, why.to_owned()));
    }

    /// The directory answered (or refused at once): requests go through.
    fn close(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.take().is_some() {
            tracing::info!("LDAP directory answers again");
        }
    }
}

/// The user's entry as found by a search.
struct Found {
    dn: String,
    record: UserRecord,
}

/// The LDAP [`Directory`].
pub struct LdapDirectory {
    settings: LdapSettings,
    filters: Filters,
    /// The service account's password; `None` with `bind_dn` unset.
    bind_password: Option<Password>,
    /// Our own TLS configuration when `ca_file` is set; otherwise ldap3
    /// uses the system's trust store.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Attributes every user search asks for.
    attributes: Vec<String>,
    /// Service-bound connections for searches.
    search_pool: Pool,
    /// Connections for user binds, never used to search.
    bind_pool: Pool,
    cache: Mutex<Cache>,
    /// LDAP requests sent (binds and searches), for metrics and tests.
    requests: AtomicU64,
    breaker: Breaker,
}

impl std::fmt::Debug for LdapDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapDirectory")
            .field("urls", &self.settings.urls)
            .field("base_dn", &self.settings.base_dn)
            .field("bind_dn", &self.settings.bind_dn)
            .finish_non_exhaustive()
    }
}

impl LdapDirectory {
    /// Checks the settings and reads the CA file. Connects lazily: the
    /// first call opens connections, so a directory down at start-up only
    /// delays logins.
    pub fn new(
        settings: LdapSettings,
        bind_password: Option<Password>,
    ) -> Result<LdapDirectory, DirectoryError> {
        let filters = settings.compile().map_err(DirectoryError::Invalid)?;
        if settings.bind_dn.is_some() != bind_password.is_some() {
            return Err(DirectoryError::Invalid(
                "LDAP bind_dn and bind_password go together".into(),
            ));
        }
        if bind_password
            .as_ref()
            .is_some_and(|p| p.as_str().is_empty())
        {
            // RFC 4513 §5.1.2: that would be an unauthenticated bind.
            return Err(DirectoryError::Invalid(
                "LDAP bind_password is empty".into(),
            ));
        }
        // ldap3 builds its default TLS configuration with the process-wide
        // crypto provider; make sure there is one, ours.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let tls = settings.ca_file.as_ref().map(tls_config).transpose()?;
        for url in &settings.urls {
            if url.starts_with("ldap://") && !settings.starttls && !is_loopback(url) {
                tracing::warn!(
                    url,
                    "LDAP without TLS: passwords cross the network in clear; use ldaps:// or starttls = true"
                );
            }
        }
        let mut attributes = vec![settings.login_attribute.clone()];
        attributes.extend(settings.address_attributes.iter().cloned());
        attributes.extend(settings.alias_attributes.iter().cloned());
        attributes.extend(settings.quota_attribute.iter().cloned());
        attributes.extend(settings.quota_messages_attribute.iter().cloned());
        Ok(LdapDirectory {
            search_pool: Pool::new("search", true, settings.pool_size),
            bind_pool: Pool::new("bind", false, settings.pool_size),
            settings,
            filters,
            bind_password,
            tls,
            attributes,
            cache: Mutex::new(Cache::new(CACHE_CAPACITY)),
            requests: AtomicU64::new(0),
            breaker: Breaker::default(),
        })
    }

    /// LDAP requests sent so far (binds and searches, connection set-up
    /// included): cached answers do not count.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Every login `user_filter` matches with any login (`%u` as `*`),
    /// sorted and deduplicated. The group filter is not applied: people
    /// taken out of the mail group are listed too. For `facteur user list`,
    /// which matches them against the keyrings in the store; at most
    /// [`MAX_LISTED`].
    pub async fn logins(&self) -> Result<Vec<String>, DirectoryError> {
        let filter = self.filters.user.render_any();
        if ldap3::parse_filter(&filter).is_err() {
            return Err(DirectoryError::Invalid(format!(
                "user_filter with %u as * is not a valid filter: {filter:?}"
            )));
        }
        let timeout = self.settings.timeout;
        let base = self.settings.base_dn.as_str();
        let login_attribute = self.settings.login_attribute.as_str();
        let attributes = vec![login_attribute.to_owned()];
        let (filter, attributes) = (&filter, &attributes);
        let mut logins = self
            .with_connection(&self.search_pool, |mut ldap| async move {
                let adapters: Vec<Box<dyn Adapter<String, Vec<String>>>> = vec![
                    Box::new(EntriesOnly::new()),
                    Box::new(PagedResults::new(LIST_PAGE)),
                ];
                let mut stream = ldap
                    .with_timeout(timeout)
                    .streaming_search_with(
                        adapters,
                        base,
                        Scope::Subtree,
                        filter,
                        attributes.clone(),
                    )
                    .await
                    .map_err(|e| classify("list", e))?;
                let mut logins = Vec::new();
                while let Some(entry) = stream.next().await.map_err(|e| classify("list", e))? {
                    let entry = SearchEntry::construct(entry);
                    match values(&entry, login_attribute)
                        .first()
                        .map(|l| normalise_login(l))
                    {
                        Some(Ok(login)) => logins.push(login),
                        _ => tracing::warn!(
                            dn = entry.dn,
                            "LDAP entry without a valid login skipped"
                        ),
                    }
                    if logins.len() > MAX_LISTED {
                        return Err(OpError::Answer(DirectoryError::Invalid(format!(
                            "{filter:?} matches more than {MAX_LISTED} entries"
                        ))));
                    }
                }
                let status = stream.finish().await;
                if status.rc != 0 {
                    let what = format!("list {filter:?} under {base:?}");
                    return Err(answer_error(&what, &status));
                }
                Ok(logins)
            })
            .await?;
        logins.sort();
        logins.dedup();
        Ok(logins)
    }

    /// Forgets every cached recipient lookup.
    pub fn clear_cache(&self) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .clear();
    }

    /// Opens a connection, trying each URL in order (failover).
    /// Opens a connection, trying each URL in order (failover). When none
    /// answers and one of them timed out, the breaker trips.
    async fn connect(&self, pool: &Pool) -> Result<Ldap, DirectoryError> {
        let mut errors = Vec::new();
        let mut timed_out = false;
        for url in &self.settings.urls {
            match self.connect_to(url, pool.service_bind).await {
                Ok(ldap) => return Ok(ldap),
                Err(OpError::Answer(e)) => return Err(e),
                Err(OpError::Connection(e)) => {
                    tracing::warn!(url, error = %e, "LDAP server unreachable");
                    errors.push(format!("{url}: {e}"));
                }
                Err(OpError::TimedOut(e)) => {
                    tracing::warn!(url, error = %e, "LDAP server unreachable");
                    errors.push(format!("{url}: {e}"));
                    timed_out = true;
                }
            }
        }
        let why = format!("no LDAP server answered ({})", errors.join("; "));
        if timed_out {
            self.trip(&why);
        } else {
            self.breaker.close();
        }
        Err(DirectoryError::Unavailable(why))
    }

    /// Opens the breaker and drops the idle connections: they lead to the
    /// server that stopped answering, and the probe must start afresh.
    fn trip(&self, why: &str) {
        self.breaker.trip(Instant::now(), why);
        for pool in [&self.search_pool, &self.bind_pool] {
            pool.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    async fn connect_to(&self, url: &str, service_bind: bool) -> Result<Ldap, OpError> {
        let mut conn_settings = LdapConnSettings::new()
            .set_conn_timeout(self.settings.timeout)
            .set_starttls(self.settings.starttls && url.starts_with("ldap://"));
        if let Some(tls) = &self.tls {
            conn_settings = conn_settings.set_config(tls.clone());
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let (conn, mut ldap) = LdapConnAsync::with_settings(conn_settings, url)
            .await
            .map_err(|e| match e {
                LdapError::Timeout { .. } => OpError::TimedOut(format!("cannot connect: {e}")),
                e => OpError::Connection(format!("cannot connect: {e}")),
            })?;
        let url_owned = url.to_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(url = url_owned, error = %e, "LDAP connection ended");
            }
        });
        if service_bind
            && let (Some(dn), Some(password)) = (&self.settings.bind_dn, &self.bind_password)
        {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let result = ldap
                .with_timeout(self.settings.timeout)
                .simple_bind(dn, password.as_str())
                .await
                .map_err(|e| classify("service bind", e))?;
            if result.rc != 0 {
                // A wrong service password is an admin's problem, not the
                // user's: temporary, with the server's words.
                return Err(OpError::Answer(DirectoryError::Unavailable(
                    describe_result(&format!("service bind as {dn:?} at {url}"), &result),
                )));
            }
        }
        Ok(ldap)
    }

    /// Runs `op` on a pooled connection. A connection taken from the pool
    /// may have died while idle (server restarted): on a transport error
    /// the operation is tried once more on a fresh connection. Not after a
    /// timeout: the server is then known down ([`Breaker`]), and waiting a
    /// second timeout would only double the wait.
    async fn with_connection<T, F, Fut>(&self, pool: &Pool, op: F) -> Result<T, DirectoryError>
    where
        F: Fn(Ldap) -> Fut,
        Fut: Future<Output = Result<T, OpError>>,
    {
        if let Err(why) = self.breaker.admit(Instant::now()) {
            return Err(DirectoryError::Unavailable(format!(
                "LDAP directory known down, not tried (retried within {} s): {why}",
                RETRY_AFTER.as_secs()
            )));
        }
        let _permit = tokio::time::timeout(self.settings.timeout, pool.permits.acquire())
            .await
            .map_err(|_| {
                DirectoryError::Unavailable(format!(
                    "all {} LDAP {} connections stayed busy for {:?}",
                    self.settings.pool_size, pool.kind, self.settings.timeout
                ))
            })?
            .map_err(|e| DirectoryError::Unavailable(format!("LDAP pool closed: {e}")))?;
        let mut idle = pool.take_idle();
        loop {
            let reused = idle.is_some();
            let ldap = match idle.take() {
                Some(ldap) => ldap,
                None => self.connect(pool).await?,
            };
            self.requests.fetch_add(1, Ordering::Relaxed);
            match op(ldap.clone()).await {
                Ok(value) => {
                    self.breaker.close();
                    pool.put_idle(ldap);
                    return Ok(value);
                }
                Err(OpError::Answer(e)) => {
                    self.breaker.close();
                    pool.put_idle(ldap);
                    return Err(e);
                }
                Err(OpError::TimedOut(e)) => {
                    self.trip(&e);
                    return Err(DirectoryError::Unavailable(e));
                }
                Err(OpError::Connection(e)) if reused => {
                    tracing::info!(error = %e, "pooled LDAP connection failed; reconnecting");
                }
                Err(OpError::Connection(e)) => {
                    self.breaker.close();
                    return Err(DirectoryError::Unavailable(e));
                }
            }
        }
    }

    /// Searches `base_dn`'s subtree; at most `limit` entries are asked for,
    /// and whether more exist is returned beside them.
    async fn search(
        &self,
        filter: &str,
        attributes: &[String],
        limit: i32,
    ) -> Result<(Vec<SearchEntry>, bool), DirectoryError> {
        let timeout = self.settings.timeout;
        let base = self.settings.base_dn.as_str();
        self.with_connection(&self.search_pool, |mut ldap| async move {
            let options = SearchOptions::new()
                .sizelimit(limit)
                .timelimit(i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX));
            let result = ldap
                .with_timeout(timeout)
                .with_search_options(options)
                .search(base, Scope::Subtree, filter, attributes)
                .await
                .map_err(|e| classify("search", e))?;
            let (entries, status) = (result.0, result.1);
            // RFC 4511 §4.5.2: sizeLimitExceeded comes with the entries
            // found so far.
            let more = match status.rc {
                0 => false,
                4 => true,
                _ => {
                    let what = format!("search {filter:?} under {base:?}");
                    return Err(answer_error(&what, &status));
                }
            };
            let entries = entries
                .into_iter()
                .filter(|e| !e.is_ref() && !e.is_intermediate())
                .map(SearchEntry::construct)
                .collect();
            Ok((entries, more))
        })
        .await
    }

    /// The one entry `filter` matches and who it is, if the group filter
    /// lets them use mail.
    async fn find(&self, filter: String) -> Result<Option<Found>, DirectoryError> {
        let (mut entries, more) = self.search(&filter, &self.attributes, 2).await?;
        if entries.len() > 1 || more {
            let dns: Vec<&str> = entries.iter().map(|e| e.dn.as_str()).collect();
            tracing::error!(filter, ?dns, "LDAP filter matches several entries");
            return Err(DirectoryError::Invalid(format!(
                "LDAP filter {filter:?} matches several entries ({})",
                dns.join("; ")
            )));
        }
        let Some(entry) = entries.pop() else {
            return Ok(None);
        };
        let record = self.record(&entry)?;
        if let Some(group) = &self.filters.group {
            let filter = group.render(|p| if p == 'd' { &entry.dn } else { &record.login });
            let (members, more) = self.search(&filter, &["1.1".to_owned()], 1).await?;
            if members.is_empty() && !more {
                tracing::debug!(dn = entry.dn, "not matched by group_filter: mail disabled");
                return Ok(None);
            }
        }
        Ok(Some(Found {
            dn: entry.dn,
            record,
        }))
    }

    /// The user record of an entry.
    fn record(&self, entry: &SearchEntry) -> Result<UserRecord, DirectoryError> {
        let s = &self.settings;
        let login = values(entry, &s.login_attribute)
            .first()
            .copied()
            .ok_or_else(|| {
                DirectoryError::Invalid(format!(
                    "LDAP entry {:?} has no {} attribute",
                    entry.dn, s.login_attribute
                ))
            })?;
        let login = normalise_login(login).map_err(|e| {
            DirectoryError::Invalid(format!("LDAP entry {:?}: bad login: {e}", entry.dn))
        })?;
        let mut addresses: Vec<String> = Vec::new();
        for attr in s.address_attributes.iter().chain(&s.alias_attributes) {
            for value in values(entry, attr) {
                match normalise_address(value) {
                    Ok(a) if !addresses.contains(&a) => addresses.push(a),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(dn = entry.dn, attr, error = %e, "address skipped"),
                }
            }
        }
        let quota_bytes = match &s.quota_attribute {
            None => None,
            Some(attr) => match values(entry, attr).first() {
                None => None,
                Some(v) => Some(v.parse::<ByteSize>().map_err(|e| {
                    DirectoryError::Invalid(format!("LDAP entry {:?}: {attr}: {e}", entry.dn))
                })?),
            },
        };
        let quota_messages = match &s.quota_messages_attribute {
            None => None,
            Some(attr) => match values(entry, attr).first() {
                None => None,
                Some(v) => Some(v.trim().parse::<u64>().map_err(|e| {
                    DirectoryError::Invalid(format!("LDAP entry {:?}: {attr}: {e}", entry.dn))
                })?),
            },
        };
        Ok(UserRecord {
            login,
            addresses,
            quota_bytes: quota_bytes.map(|q| q.0),
            quota_messages,
        })
    }

    /// Binds as `dn`: `Ok(true)` if the password is right.
    async fn bind_as(&self, dn: &str, password: &Password) -> Result<bool, DirectoryError> {
        let timeout = self.settings.timeout;
        self.with_connection(&self.bind_pool, |mut ldap| async move {
            let result = ldap
                .with_timeout(timeout)
                .simple_bind(dn, password.as_str())
                .await
                .map_err(|e| classify("bind", e))?;
            match result.rc {
                0 => Ok(true),
                // invalidCredentials, inappropriateAuthentication, and
                // unwillingToPerform (what 389-ds answers for an
                // inactivated account).
                49 | 48 | 53 => {
                    tracing::debug!(dn, "{}", describe_result("user bind refused", &result));
                    Ok(false)
                }
                _ => Err(answer_error(&format!("bind as {dn:?}"), &result)),
            }
        })
        .await
    }

    /// A lookup through the cache.
    async fn cached(
        &self,
        key: String,
        filter: impl FnOnce() -> String,
    ) -> Result<Option<UserRecord>, DirectoryError> {
        let now = Instant::now();
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key, now)
        {
            return Ok(hit);
        }
        let record = self.find(filter()).await?.map(|f| f.record);
        let ttl = if record.is_some() {
            self.settings.cache_ttl
        } else {
            self.settings.negative_cache_ttl
        };
        if !ttl.is_zero() {
            let now = Instant::now();
            self.cache.lock().unwrap_or_else(|e| e.into_inner()).put(
                key,
                record.clone(),
                now + ttl,
                now,
            );
        }
        Ok(record)
    }
}

#[async_trait]
impl Directory for LdapDirectory {
    async fn authenticate(
        &self,
        login: &str,
        password: &Password,
    ) -> Result<Option<UserRecord>, DirectoryError> {
        // RFC 4513 §5.1.2: a DN with an empty password is an
        // unauthenticated bind, which servers answer with success.
        if password.as_str().is_empty() {
            return Ok(None);
        }
        let Ok(login) = normalise_login(login) else {
            return Ok(None);
        };
        let filter = self.filters.user.render(|_| &login);
        let Some(found) = self.find(filter).await? else {
            return Ok(None);
        };
        Ok(self
            .bind_as(&found.dn, password)
            .await?
            .then_some(found.record))
    }

    async fn find_login(&self, login: &str) -> Result<Option<UserRecord>, DirectoryError> {
        let Ok(login) = normalise_login(login) else {
            return Ok(None);
        };
        self.cached(format!("login:{login}"), || {
            self.filters.user.render(|_| &login)
        })
        .await
    }

    async fn find_address(&self, address: &str) -> Result<Option<UserRecord>, DirectoryError> {
        let Ok(address) = normalise_address(address) else {
            return Ok(None);
        };
        self.cached(format!("address:{address}"), || {
            self.filters.address.render(|_| &address)
        })
        .await
    }
}

/// The values of an attribute, its name matched case-insensitively (the
/// server answers with the schema's spelling).
fn values<'a>(entry: &'a SearchEntry, attr: &str) -> Vec<&'a str> {
    entry
        .attrs
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(attr))
        .flat_map(|(_, v)| v.iter().map(String::as_str))
        .collect()
}

/// Sorts an ldap3 error: a result code is the server's answer, anything
/// else is the transport's fault.
fn classify(what: &str, e: LdapError) -> OpError {
    match e {
        LdapError::LdapResult { result } => answer_error(what, &result),
        LdapError::FilterParsing => OpError::Answer(DirectoryError::Invalid(format!(
            "{what}: invalid LDAP filter"
        ))),
        e @ LdapError::Timeout { .. } => OpError::TimedOut(format!("LDAP {what}: {e}")),
        other => OpError::Connection(format!("LDAP {what}: {other}")),
    }
}

/// What a result code means for us. busy (51) and unavailable (52) are the
/// server saying it cannot serve: like a transport fault, the connection
/// is dropped and the next call may fail over. Configuration mistakes
/// (a wrong base DN, a bad filter) are `Invalid`; the rest `Unavailable`.
fn answer_error(what: &str, result: &LdapResult) -> OpError {
    let message = describe_result(what, result);
    match result.rc {
        51 | 52 => OpError::Connection(message),
        32 | 34 | 87 => OpError::Answer(DirectoryError::Invalid(message)),
        _ => OpError::Answer(DirectoryError::Unavailable(message)),
    }
}

/// `what: LDAP result 32 (noSuchObject): text`.
fn describe_result(what: &str, result: &LdapResult) -> String {
    let name = match result.rc {
        0 => "success",
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        10 => "referral",
        11 => "adminLimitExceeded",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        80 => "other",
        87 => "filterError",
        _ => "see RFC 4511 §4.1.9",
    };
    let mut message = format!("{what}: LDAP result {} ({name})", result.rc);
    if !result.text.is_empty() {
        let _ = write!(message, ": {}", result.text);
    }
    message
}

fn is_loopback(url: &str) -> bool {
    let host = url.split_once("://").map_or("", |(_, rest)| rest);
    ["localhost", "127.", "[::1]"]
        .iter()
        .any(|l| host.starts_with(l))
}

/// A TLS client configuration trusting only the CAs in `path` (PEM).
fn tls_config(path: &PathBuf) -> Result<Arc<rustls::ClientConfig>, DirectoryError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let invalid =
        |e: String| DirectoryError::Invalid(format!("LDAP ca_file {}: {e}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| invalid(e.to_string()))? {
        let cert = cert.map_err(|e| invalid(e.to_string()))?;
        roots.add(cert).map_err(|e| invalid(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(invalid("no certificate in it".into()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LdapSettings {
        LdapSettings {
            urls: vec!["ldap://127.0.0.1:389".into()],
            starttls: false,
            ca_file: None,
            bind_dn: None,
            base_dn: "dc=example,dc=org".into(),
            user_filter: "(&(objectClass=inetOrgPerson)(uid=%u))".into(),
            address_filter: "(&(objectClass=inetOrgPerson)(|(mail=%a)(mailAlternateAddress=%a)))"
                .into(),
            login_attribute: "uid".into(),
            address_attributes: vec!["mail".into()],
            alias_attributes: vec!["mailAlternateAddress".into()],
            quota_attribute: None,
            quota_messages_attribute: None,
            group_filter: Some("(&(objectClass=groupOfNames)(cn=mail)(member=%d))".into()),
            timeout: Duration::from_secs(5),
            pool_size: 4,
            cache_ttl: Duration::from_secs(60),
            negative_cache_ttl: Duration::from_secs(10),
        }
    }

    #[test]
    fn escaping_follows_rfc_4515() {
        assert_eq!(escape_filter_value("alice"), "alice");
        assert_eq!(escape_filter_value("*"), "\\2a");
        assert_eq!(escape_filter_value("a(b)c"), "a\\28b\\29c");
        assert_eq!(escape_filter_value("back\\slash"), "back\\5cslash");
        assert_eq!(escape_filter_value("nul\0"), "nul\\00");
        // RFC 4515 §4 example: UTF-8 stays as is.
        assert_eq!(escape_filter_value("Lučić"), "Lučić");
    }

    #[test]
    fn injection_attempts_stay_one_assertion_value() {
        let filters = settings().compile().unwrap();
        for (login, expected) in [
            (
                "*)(uid=*",
                "(&(objectClass=inetOrgPerson)(uid=\\2a\\29\\28uid=\\2a))",
            ),
            ("*", "(&(objectClass=inetOrgPerson)(uid=\\2a))"),
            (
                "alice)(|(objectClass=*",
                "(&(objectClass=inetOrgPerson)(uid=alice\\29\\28|\\28objectClass=\\2a))",
            ),
            ("a\\", "(&(objectClass=inetOrgPerson)(uid=a\\5c))"),
            ("a\0b", "(&(objectClass=inetOrgPerson)(uid=a\\00b))"),
        ] {
            let filter = filters.user.render(|_| login);
            assert_eq!(filter, expected, "{login:?}");
            // Still one well-formed filter: an AND of two equality matches.
            assert!(ldap3::parse_filter(&filter).is_ok(), "{filter}");
        }
    }

    #[test]
    fn templates_substitute_each_placeholder() {
        let t = FilterTemplate::parse("t", "(&(member=%d)(uid=%u)(x=100%%))", &['d', 'u'], &[])
            .unwrap();
        let dn = "cn=Erin (ops)\\2C Smith,ou=people,dc=example,dc=org";
        assert_eq!(
            t.render(|p| if p == 'd' { dn } else { "erin" }),
            "(&(member=cn=Erin \\28ops\\29\\5c2C Smith,ou=people,dc=example,dc=org)(uid=erin)(x=100%))"
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        let err = |text: &str| {
            FilterTemplate::parse("user_filter", text, &['u'], &['u'])
                .unwrap_err()
                .to_string()
        };
        assert!(err("(uid=%x)").contains("unknown placeholder %x"));
        assert!(err("(uid=alice)").contains("must contain %u"));
        assert!(err("(uid=%u").contains("not a valid LDAP filter"));
        assert!(err("uid=%u)(").contains("not a valid LDAP filter"));
        assert!(err("(uid=%u)%").contains("lone %"));
    }

    #[test]
    fn settings_are_checked() {
        assert!(settings().validate().is_ok());
        let check = |f: &dyn Fn(&mut LdapSettings)| {
            let mut s = settings();
            f(&mut s);
            s.validate().unwrap_err()
        };
        assert!(check(&|s| s.urls.clear()).contains("at least one"));
        assert!(check(&|s| s.urls = vec!["http://x".into()]).contains("scheme"));
        assert!(check(&|s| s.urls = vec!["ldap://".into()]).contains("no host"));
        assert!(check(&|s| s.urls = vec!["ldap:x".into()]).contains("expected"));
        assert!(check(&|s| s.urls = vec!["ldap://h/dc=x?uid".into()]).contains("only a host"));
        assert!(check(&|s| s.pool_size = 0).contains("pool_size"));
        assert!(check(&|s| s.timeout = Duration::ZERO).contains("timeout"));
        assert!(check(&|s| s.login_attribute = "uid)(x".into()).contains("attribute"));
        assert!(check(&|s| s.group_filter = Some("(member=%a)".into())).contains("%a"));
        assert!(check(&|s| s.negative_cache_ttl = Duration::from_secs(61)).contains("negative"));
        let mut s = settings();
        s.urls = vec![
            "ldaps://ldap1.example.org:636/".into(),
            "ldap://[::1]".into(),
        ];
        assert!(s.validate().is_ok());
    }

    #[test]
    fn empty_service_password_is_refused() {
        let mut s = settings();
        s.bind_dn = Some("cn=facteur,dc=example,dc=org".into());
        assert!(LdapDirectory::new(s.clone(), Some(Password::new(""))).is_err());
        assert!(LdapDirectory::new(s.clone(), None).is_err());
        assert!(LdapDirectory::new(s, Some(Password::new("x"))).is_ok());
    }

    #[tokio::test]
    async fn empty_password_and_bad_logins_send_nothing() {
        // Port 9 (discard) on loopback: any request would fail.
        let mut s = settings();
        s.urls = vec!["ldap://127.0.0.1:9".into()];
        let dir = LdapDirectory::new(s, None).unwrap();
        assert_eq!(
            dir.authenticate("alice", &Password::new("")).await.unwrap(),
            None
        );
        assert_eq!(
            dir.authenticate("a b", &Password::new("x")).await.unwrap(),
            None
        );
        assert_eq!(dir.find_address("not an address").await.unwrap(), None);
        assert_eq!(dir.requests(), 0);
        // And a real request to a closed port is Unavailable, not "no user".
        assert!(matches!(
            dir.find_login("alice").await,
            Err(DirectoryError::Unavailable(_))
        ));
    }

    #[test]
    fn the_breaker_opens_on_timeouts_and_probes_once_per_period() {
        let t0 = Instant::now();
        let b = Breaker::default();
        assert!(b.admit(t0).is_ok());
        b.trip(t0, "timed out");
        assert_eq!(b.admit(t0).unwrap_err(), "timed out");
        assert!(
            b.admit(t0 + RETRY_AFTER - Duration::from_millis(1))
                .is_err()
        );
        // Over: one probe goes through, the others still fail at once.
        let t1 = t0 + RETRY_AFTER;
        assert!(b.admit(t1).is_ok());
        assert!(b.admit(t1).is_err());
        // A probe that never reports (cancelled) does not block for ever.
        assert!(b.admit(t1 + RETRY_AFTER).is_ok());
        b.close();
        assert!(b.admit(t1 + RETRY_AFTER).is_ok());
        assert!(b.admit(t1 + RETRY_AFTER).is_ok());
    }

    /// A server that accepts connections and never answers (a frozen
    /// slapd, a black hole): the first request waits one timeout, the next
    /// ones fail at once without sending anything.
    #[tokio::test]
    async fn a_directory_that_stopped_answering_fails_fast() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut s = settings();
        s.urls = vec![format!("ldap://{}", silent.local_addr().unwrap())];
        s.timeout = Duration::from_secs(1);
        let dir = LdapDirectory::new(s, None).unwrap();
        match dir.find_login("alice").await {
            Err(DirectoryError::Unavailable(e)) => assert!(e.contains("timeout"), "{e}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        let sent = dir.requests();
        assert!(sent > 0);
        for _ in 0..3 {
            match dir.authenticate("alice", &Password::new("pw")).await {
                Err(DirectoryError::Unavailable(e)) => assert!(e.contains("known down"), "{e}"),
                other => panic!("expected Unavailable, got {other:?}"),
            }
        }
        assert_eq!(dir.requests(), sent, "nothing sent while known down");
    }

    fn record(login: &str) -> Option<UserRecord> {
        Some(UserRecord {
            login: login.into(),
            addresses: vec![],
            quota_bytes: None,
            quota_messages: None,
        })
    }

    #[test]
    fn cache_expires_and_stays_bounded() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = Cache::new(2);
        c.put("a".into(), record("a"), t0 + 10 * s, t0);
        c.put("b".into(), None, t0 + 2 * s, t0);
        assert_eq!(c.get("a", t0 + s), Some(record("a")));
        assert_eq!(c.get("b", t0 + s), Some(None));
        assert_eq!(c.get("b", t0 + 2 * s), None, "expired");
        c.put("b".into(), None, t0 + 3 * s, t0);
        // Full: the entry closest to expiry makes room.
        c.put("c".into(), record("c"), t0 + 10 * s, t0);
        assert_eq!(c.entries.len(), 2);
        assert_eq!(c.get("b", t0), None);
        assert_eq!(c.get("a", t0), Some(record("a")));
        // Expired entries go first.
        c.put("d".into(), record("d"), t0 + 20 * s, t0 + 15 * s);
        assert_eq!(c.entries.len(), 1);
        assert_eq!(c.get("d", t0 + 15 * s), Some(record("d")));
    }

    #[test]
    fn result_codes_are_named_and_sorted() {
        let result = |rc: u32| LdapResult {
            rc,
            matched: String::new(),
            text: "text".into(),
            refs: vec![],
            ctrls: vec![],
        };
        assert_eq!(
            describe_result("search", &result(32)),
            "search: LDAP result 32 (noSuchObject): text"
        );
        assert!(matches!(
            answer_error("x", &result(32)),
            OpError::Answer(DirectoryError::Invalid(_))
        ));
        assert!(matches!(
            answer_error("x", &result(52)),
            OpError::Connection(_)
        ));
        assert!(matches!(
            answer_error("x", &result(80)),
            OpError::Answer(DirectoryError::Unavailable(_))
        ));
    }
}
