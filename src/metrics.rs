//! What this process counts for `/metrics` (doc/metrics.md): one registry
//! of typed metric families, filled by small functions called where things
//! happen (a command answered, a login judged, a store call returned).
//! `server::http` encodes it in the Prometheus text format.
//!
//! Invariants:
//! - Every label value is one of a fixed set of `&'static str` (a command
//!   keyword, an outcome, an operation): never a login, an address, a
//!   mailbox name or anything else a client chooses, so the number of
//!   series is bounded whatever clients send.
//! - Recording allocates nothing once a series exists: labels are static
//!   strings, and a family is looked up under a read lock.
//! - The registry is process-wide, like the process it describes; tests
//!   that share a process compare before and after, never absolute values.
//!
//! Listed first among the modules: every other module may record, this
//! one imports none of them.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// One label.
type Label = (&'static str, &'static str);

/// Latency buckets, in seconds: 0.5 ms to about 16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Drain lag buckets, in seconds: 50 ms to about 28 hours, quadrupling
/// (mail waits for its user's next login when nobody is connected).
fn lag_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 4.0, 15))
}

/// Queue depth buckets, in records: 1 to 4096, doubling.
fn depth_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

type Counters<const N: usize> = Family<[Label; N], Counter>;
type Histograms<const N: usize> = Family<[Label; N], Histogram, fn() -> Histogram>;

/// The metric families, and the registry that encodes them.
struct Metrics {
    registry: Registry,
    connections: Counters<1>,
    connections_open: Family<[Label; 1], Gauge>,
    imap_commands: Counters<2>,
    imap_command_seconds: Histograms<1>,
    logins: Counters<1>,
    lmtp_recipients: Counters<1>,
    lmtp_deliveries: Counters<1>,
    lmtp_delivery_seconds: Histograms<0>,
    store_calls: Counters<2>,
    store_call_seconds: Histograms<1>,
    incoming_records: Counters<1>,
    incoming_queue_depth: Histograms<0>,
    incoming_drain_lag: Histograms<0>,
    index_preparation: Counters<1>,
    unlocked_accounts: Gauge,
    open_mailboxes: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("facteur"),
            connections: Family::default(),
            connections_open: Family::default(),
            imap_commands: Family::default(),
            imap_command_seconds: Family::new_with_constructor(latency_histogram),
            logins: Family::default(),
            lmtp_recipients: Family::default(),
            lmtp_deliveries: Family::default(),
            lmtp_delivery_seconds: Family::new_with_constructor(latency_histogram),
            store_calls: Family::default(),
            store_call_seconds: Family::new_with_constructor(latency_histogram),
            incoming_records: Family::default(),
            incoming_queue_depth: Family::new_with_constructor(depth_histogram),
            incoming_drain_lag: Family::new_with_constructor(lag_histogram),
            index_preparation: Family::default(),
            unlocked_accounts: Gauge::default(),
            open_mailboxes: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register(
            "connections",
            "Connections accepted, by protocol",
            m.connections.clone(),
        );
        r.register(
            "connections_open",
            "Connections open now, by protocol",
            m.connections_open.clone(),
        );
        r.register(
            "imap_commands",
            "IMAP commands answered, by command and outcome (ok, no, bad)",
            m.imap_commands.clone(),
        );
        r.register_with_unit(
            "imap_command_duration",
            "Time from a command's arrival to its tagged answer, by command",
            Unit::Seconds,
            m.imap_command_seconds.clone(),
        );
        r.register(
            "imap_logins",
            "IMAP logins, by outcome (ok, failed, throttled, unavailable, error)",
            m.logins.clone(),
        );
        r.register(
            "lmtp_recipients",
            "LMTP recipients (RCPT TO), by outcome",
            m.lmtp_recipients.clone(),
        );
        r.register(
            "lmtp_deliveries",
            "LMTP deliveries to one user after DATA, by outcome",
            m.lmtp_deliveries.clone(),
        );
        r.register_with_unit(
            "lmtp_delivery_duration",
            "Time to deliver a message to one user (quota check, sealing, both PUTs)",
            Unit::Seconds,
            m.lmtp_delivery_seconds.clone(),
        );
        r.register(
            "store_calls",
            "Object store calls, by operation and outcome (ok, not_found, error)",
            m.store_calls.clone(),
        );
        r.register_with_unit(
            "store_call_duration",
            "Object store call latency, by operation",
            Unit::Seconds,
            m.store_call_seconds.clone(),
        );
        r.register(
            "incoming_records",
            "Delivery records taken from incoming queues by drains, by outcome",
            m.incoming_records.clone(),
        );
        r.register(
            "incoming_queue_depth",
            "Records a drain found waiting in a user's incoming queue (drains that found some)",
            m.incoming_queue_depth.clone(),
        );
        r.register_with_unit(
            "incoming_drain_lag",
            "Time from a message's delivery (LMTP) to its placing in INBOX",
            Unit::Seconds,
            m.incoming_drain_lag.clone(),
        );
        r.register(
            "index_preparation",
            "Summary pages whose index pages were written in the background after a snapshot, by outcome",
            m.index_preparation.clone(),
        );
        r.register(
            "unlocked_accounts",
            "Accounts unlocked on this instance now",
            m.unlocked_accounts.clone(),
        );
        r.register(
            "open_mailboxes",
            "Mailboxes open on this instance now",
            m.open_mailboxes.clone(),
        );
        m
    }
}

/// Appends every metric of this module to `out`, in the Prometheus text
/// format (version 0.0.4).
pub fn encode(out: &mut String) -> std::fmt::Result {
    prometheus_client::encoding::prometheus_text::encode(out, &METRICS.registry)
}

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

// Connections.

/// The protocols a connection can speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// IMAP on a plain port (STARTTLS available).
    Imap,
    /// IMAP with implicit TLS.
    Imaps,
    Lmtp,
    /// The health and metrics endpoint.
    Http,
}

impl Protocol {
    fn label(self) -> Label {
        let name = match self {
            Protocol::Imap => "imap",
            Protocol::Imaps => "imaps",
            Protocol::Lmtp => "lmtp",
            Protocol::Http => "http",
        };
        ("protocol", name)
    }
}

/// An open connection, counted while it lives.
#[derive(Debug)]
#[must_use = "the connection counts as open while this lives"]
pub struct OpenConnection(Protocol);

/// Counts a connection accepted; it counts as open until the result drops.
pub fn connection(protocol: Protocol) -> OpenConnection {
    let m = &*METRICS;
    m.connections.get_or_create(&[protocol.label()]).inc();
    m.connections_open.get_or_create(&[protocol.label()]).inc();
    OpenConnection(protocol)
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        METRICS
            .connections_open
            .get_or_create(&[self.0.label()])
            .dec();
    }
}

// IMAP.

/// The command names counted, as the client sends them (upper case).
/// Anything else is `other`, so the label set stays bounded.
const IMAP_COMMANDS: &[&str] = &[
    "APPEND",
    "AUTHENTICATE",
    "CAPABILITY",
    "CHECK",
    "CLOSE",
    "COMPRESS",
    "COPY",
    "CREATE",
    "DELETE",
    "ENABLE",
    "EXAMINE",
    "EXPUNGE",
    "FETCH",
    "GETMETADATA",
    "GETQUOTA",
    "GETQUOTAROOT",
    "ID",
    "IDLE",
    "LIST",
    "LOGIN",
    "LOGOUT",
    "LSUB",
    "MOVE",
    "NAMESPACE",
    "NOOP",
    "RENAME",
    "SEARCH",
    "SELECT",
    "SETMETADATA",
    "SETQUOTA",
    "SORT",
    "STARTTLS",
    "STATUS",
    "STORE",
    "SUBSCRIBE",
    "THREAD",
    "UNSELECT",
    "UNSUBSCRIBE",
];

/// The commands that have a `UID` form (RFC 9051 §6.4.9, RFC 5256, RFC
/// 6851), named `UID <command>`.
const IMAP_UID_COMMANDS: &[&str] = &[
    "UID COPY",
    "UID EXPUNGE",
    "UID FETCH",
    "UID MOVE",
    "UID SEARCH",
    "UID SORT",
    "UID STORE",
    "UID THREAD",
];

/// The bounded name of the IMAP command in `message` (the client's bytes,
/// tag first): its keyword in upper case, `UID FETCH` and the like for UID
/// forms, `other` for anything not in the known set.
pub fn imap_command_name(message: &[u8]) -> &'static str {
    let mut words = message
        .split(|b| matches!(b, b' ' | b'\r' | b'\n'))
        .filter(|w| !w.is_empty())
        .skip(1);
    let Some(first) = words.next() else {
        return "other";
    };
    let find = |set: &[&'static str], word: &[u8], skip: usize| {
        set.iter()
            .copied()
            .find(|name| name.as_bytes()[skip..].eq_ignore_ascii_case(word))
    };
    if first.eq_ignore_ascii_case(b"UID") {
        return words
            .next()
            .and_then(|w| find(IMAP_UID_COMMANDS, w, 4))
            .unwrap_or("other");
    }
    find(IMAP_COMMANDS, first, 0).unwrap_or("other")
}

/// How the server answered a command (its tagged status, RFC 9051 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImapOutcome {
    Ok,
    No,
    Bad,
}

/// One IMAP command being answered: made when it arrives, recorded by
/// [`ImapCommand::answered`]. One dropped unanswered (the connection
/// ended) is not counted.
#[derive(Debug)]
pub struct ImapCommand {
    name: &'static str,
    started: Instant,
}

impl ImapCommand {
    /// The command in `message` (tag first), arrived now.
    pub fn arrived(message: &[u8]) -> ImapCommand {
        ImapCommand {
            name: imap_command_name(message),
            started: Instant::now(),
        }
    }

    /// Counts the command with its outcome and latency.
    pub fn answered(self, outcome: ImapOutcome) {
        let outcome = match outcome {
            ImapOutcome::Ok => "ok",
            ImapOutcome::No => "no",
            ImapOutcome::Bad => "bad",
        };
        let m = &*METRICS;
        m.imap_commands
            .get_or_create(&[("command", self.name), ("outcome", outcome)])
            .inc();
        m.imap_command_seconds
            .get_or_create(&[("command", self.name)])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// How an IMAP login attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Login {
    Ok,
    /// A wrong password or an unknown login.
    Failed,
    /// Refused unjudged: too many failures from the address or for the login.
    Throttled,
    /// Not judged: the store or the directory could not answer.
    Unavailable,
    /// Not judged: anything else (a server fault).
    Error,
}

/// Counts one login attempt.
pub fn login(outcome: Login) {
    let outcome = match outcome {
        Login::Ok => "ok",
        Login::Failed => "failed",
        Login::Throttled => "throttled",
        Login::Unavailable => "unavailable",
        Login::Error => "error",
    };
    METRICS.logins.get_or_create(&[("outcome", outcome)]).inc();
}

// LMTP.

/// Counts one RCPT TO answered, `outcome` being one of a fixed set
/// (`accepted`, `unknown`, ...: see doc/metrics.md).
pub fn lmtp_recipient(outcome: &'static str) {
    METRICS
        .lmtp_recipients
        .get_or_create(&[("outcome", outcome)])
        .inc();
}

/// Counts one delivery to one user, `outcome` being `delivered`,
/// `over_quota` or `failed`, which took `took`.
pub fn lmtp_delivery(outcome: &'static str, took: Duration) {
    let m = &*METRICS;
    m.lmtp_deliveries
        .get_or_create(&[("outcome", outcome)])
        .inc();
    m.lmtp_delivery_seconds
        .get_or_create(&[])
        .observe(took.as_secs_f64());
}

// The object store.

/// An object store operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    Put,
    Get,
    GetRange,
    Delete,
    DeleteMany,
    List,
}

/// How a store call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    Ok,
    NotFound,
    Error,
}

/// Counts one store call and its latency.
pub fn store_call(op: StoreOp, outcome: StoreOutcome, took: Duration) {
    let op = match op {
        StoreOp::Put => "put",
        StoreOp::Get => "get",
        StoreOp::GetRange => "get_range",
        StoreOp::Delete => "delete",
        StoreOp::DeleteMany => "delete_many",
        StoreOp::List => "list",
    };
    let outcome = match outcome {
        StoreOutcome::Ok => "ok",
        StoreOutcome::NotFound => "not_found",
        StoreOutcome::Error => "error",
    };
    let m = &*METRICS;
    m.store_calls
        .get_or_create(&[("op", op), ("outcome", outcome)])
        .inc();
    m.store_call_seconds
        .get_or_create(&[("op", op)])
        .observe(took.as_secs_f64());
}

// The incoming queue.

/// Counts what one drain did with the records it found, each count under
/// its outcome (`delivered`, `already_drained`, ...), and the depth it
/// found (their sum) when not zero.
pub fn drained(outcomes: &[(&'static str, usize)]) {
    let m = &*METRICS;
    let mut depth = 0;
    for &(outcome, n) in outcomes {
        depth += n;
        if n > 0 {
            m.incoming_records
                .get_or_create(&[("outcome", outcome)])
                .inc_by(n as u64);
        }
    }
    if depth > 0 {
        m.incoming_queue_depth
            .get_or_create(&[])
            .observe(depth as f64);
    }
}

/// Records that a message delivered `lag` ago was just placed in INBOX.
pub fn drain_lag(lag: Duration) {
    METRICS
        .incoming_drain_lag
        .get_or_create(&[])
        .observe(lag.as_secs_f64());
}

/// Counts summary pages whose index pages were written in the background
/// after a snapshot (`done`), or left to their first use after a failure
/// (`abandoned`).
pub fn index_preparation(outcome: &'static str, n: usize) {
    if n > 0 {
        METRICS
            .index_preparation
            .get_or_create(&[("outcome", outcome)])
            .inc_by(n as u64);
    }
}

// Accounts and mailboxes.

/// What a [`Live`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    UnlockedAccount,
    OpenMailbox,
}

/// One unlocked account or open mailbox, counted while it lives: a field
/// of the thing counted.
#[derive(Debug)]
pub struct Live(Kind);

impl Live {
    pub fn new(kind: Kind) -> Live {
        gauge(kind).inc();
        Live(kind)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        gauge(self.0).dec();
    }
}

fn gauge(kind: Kind) -> &'static Gauge {
    match kind {
        Kind::UnlockedAccount => &METRICS.unlocked_accounts,
        Kind::OpenMailbox => &METRICS.open_mailboxes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_are_bounded() {
        for (message, name) in [
            (&b"a1 FETCH 1:* (FLAGS)\r\n"[..], "FETCH"),
            (b"a1 fetch 1 flags\r\n", "FETCH"),
            (b"x uid fetch 1:* FLAGS\r\n", "UID FETCH"),
            (b"x UID EXPUNGE 1\r\n", "UID EXPUNGE"),
            (b"x UID LOGIN\r\n", "other"),
            (b"x UID\r\n", "other"),
            (b"x NOOP\r\n", "NOOP"),
            (b"x noop", "NOOP"),
            (b"x LOGIN {5}\r\n", "LOGIN"),
            (b"x XYZZY\r\n", "other"),
            (b"x FETCHX 1\r\n", "other"),
            (b"x\r\n", "other"),
            (b"", "other"),
            (b"x \xff\xfe\r\n", "other"),
        ] {
            assert_eq!(imap_command_name(message), name, "{message:?}");
        }
    }

    #[test]
    fn the_exposition_names_every_family() {
        let _open = Live::new(Kind::OpenMailbox);
        store_call(
            StoreOp::Get,
            StoreOutcome::NotFound,
            Duration::from_millis(3),
        );
        let mut out = String::new();
        encode(&mut out).unwrap();
        for name in [
            "# TYPE facteur_open_mailboxes gauge",
            "# TYPE facteur_unlocked_accounts gauge",
            "facteur_store_calls_total{op=\"get\",outcome=\"not_found\"} ",
            "facteur_store_call_duration_seconds_bucket{op=\"get\",le=\"0.004\"} ",
        ] {
            assert!(out.contains(name), "{name} not in\n{out}");
        }
    }
}
