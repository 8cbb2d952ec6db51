//! The mailbox engine's performance (issue 3, "Performance"), on the fs
//! store and on Garage: appends per second (one writer, and N writers into
//! separate mailboxes or into one), the time to open a large mailbox from a
//! snapshot plus ops (and the store calls it takes), the cost of a sync when
//! nothing changed, and the memory one open mailbox holds.
//!
//! Run with `cargo bench --bench engine` (a release build). Garage is
//! measured when the `FACTEUR_TEST_S3_*` variables are set:
//! `eval "$(scripts/garage.sh start /tmp/bench-garage)"`. Options, from the
//! environment:
//!
//! - `FACTEUR_BENCH_BACKENDS` (`fs,garage`): backends to measure;
//! - `FACTEUR_BENCH_MESSAGES` (10000): messages in the large mailbox;
//! - `FACTEUR_BENCH_OPS` (500): ops written after its snapshot (a fifth
//!   appends, the rest flag changes, so it ends with exactly `MESSAGES`);
//! - `FACTEUR_BENCH_APPENDS` (400): appends per throughput run;
//! - `FACTEUR_BENCH_CONCURRENCY` (4): concurrent appenders, a list (`4,16`);
//! - `FACTEUR_BENCH_BUILD_CONCURRENCY` (8): appenders building the large
//!   mailbox (into one mailbox, so op writes are serialised anyway);
//! - `FACTEUR_BENCH_COPIES` (4): copies of the large mailbox opened at once
//!   to measure memory;
//! - `FACTEUR_BENCH_OPENS` (3), `FACTEUR_BENCH_SYNCS` (20): repetitions;
//! - `FACTEUR_BENCH_DIR`: where the fs store lives (default: a temporary
//!   directory, removed at the end).
//!
//! Memory is measured in a child process (this binary again, with
//! `FACTEUR_BENCH_CHILD` set) that does nothing but open copies of the
//! mailbox and read its resident set from `/proc/self/status` after each:
//! in the parent, memory freed by earlier phases would be reused by the
//! opens and hide their cost. The per-mailbox figure is the slope between
//! the first and the last copy, so one-time costs (runtime, blocking
//! threads, the S3 client) stay out of it. A second child opens a
//! "skeleton" of the same mailbox (same ops, empty summaries), which splits
//! the figure into summaries and everything else. The real mailbox is also
//! measured with one malloc arena (`MALLOC_ARENA_MAX=1`), which leaves out
//! the fragmentation of the fs store's blocking threads. No custom
//! allocator, no unsafe code. Diagnostics for a child run by hand:
//! `FACTEUR_BENCH_CHILD_USER` (the user id, hex, instead of deriving it)
//! and `FACTEUR_BENCH_CHILD_IN_MEMORY` (copy the user's objects into a
//! memory store first).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

use facteur::account::{Account, AccountConfig, Mailbox};
use facteur::crypto::{
    KdfParams, Keyring, Password, RecordAuth, SymmetricKey, open_body, purpose, user_id,
};
use facteur::log::InstanceId;
use facteur::log::Replica;
use facteur::log::stored::{LogTuning, MAX_SNAPSHOT, StoredLog};
use facteur::mailbox::op::BodyKey;
use facteur::mailbox::{MailboxOp, MailboxState, MessageId, MessageRef, NewMessage};
use facteur::store::layout::{self, UserId};
use facteur::store::{
    FsStore, ListPage, MemoryStore, ObjectStore, S3Settings, S3Store, SharedStore, StoreError,
    list_all,
};

const PASSWORD: &str = "bench";
const KEYRING_NAME: &str = "bench/keyring";
/// The large mailbox and its UIDVALIDITY.
const BIG: &str = "0b16";
const BIG_UIDVALIDITY: u32 = 42;

// ---------------------------------------------------------------------
// Options

#[derive(Clone, Debug)]
struct Options {
    backends: Vec<String>,
    messages: usize,
    ops: usize,
    appends: usize,
    concurrency: Vec<usize>,
    build_concurrency: usize,
    copies: usize,
    opens: usize,
    syncs: usize,
    dir: Option<PathBuf>,
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

impl Options {
    fn from_env() -> Options {
        let messages = env_usize("FACTEUR_BENCH_MESSAGES", 10_000);
        let ops = env_usize("FACTEUR_BENCH_OPS", 500);
        assert!(ops / 5 < messages, "FACTEUR_BENCH_OPS too large");
        Options {
            backends: env_list("FACTEUR_BENCH_BACKENDS", "fs,garage"),
            messages,
            ops,
            appends: env_usize("FACTEUR_BENCH_APPENDS", 400).max(1),
            concurrency: env_list("FACTEUR_BENCH_CONCURRENCY", "4")
                .iter()
                .map(|s| s.parse().expect("FACTEUR_BENCH_CONCURRENCY: numbers"))
                .filter(|n| *n > 0)
                .collect(),
            build_concurrency: env_usize("FACTEUR_BENCH_BUILD_CONCURRENCY", 8).max(1),
            copies: env_usize("FACTEUR_BENCH_COPIES", 4).max(2),
            opens: env_usize("FACTEUR_BENCH_OPENS", 3).max(1),
            syncs: env_usize("FACTEUR_BENCH_SYNCS", 20).max(1),
            dir: std::env::var_os("FACTEUR_BENCH_DIR").map(PathBuf::from),
        }
    }

    /// Appends among the ops written after the snapshot.
    fn late_appends(&self) -> usize {
        self.ops / 5
    }
}

// ---------------------------------------------------------------------
// A store that counts its calls

/// Calls made through a [`Counting`] store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Calls {
    put: u64,
    get: u64,
    get_range: u64,
    delete: u64,
    delete_many: u64,
    list: u64,
    /// Keys returned by all LIST calls.
    listed: u64,
}

impl Calls {
    fn total(&self) -> u64 {
        self.put + self.get + self.get_range + self.delete + self.delete_many + self.list
    }

    fn since(self, before: Calls) -> Calls {
        Calls {
            put: self.put - before.put,
            get: self.get - before.get,
            get_range: self.get_range - before.get_range,
            delete: self.delete - before.delete,
            delete_many: self.delete_many - before.delete_many,
            list: self.list - before.list,
            listed: self.listed - before.listed,
        }
    }

    /// `2 LIST (1,234 keys) + 1 GET`, omitting zeros.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.list > 0 {
            parts.push(format!("{} LIST ({} keys)", self.list, self.listed));
        }
        for (n, name) in [
            (self.get, "GET"),
            (self.get_range, "GET range"),
            (self.put, "PUT"),
            (self.delete, "DELETE"),
            (self.delete_many, "DELETE many"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {name}"));
            }
        }
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(" + ")
        }
    }
}

/// Delegates to another store and counts every call by method.
#[derive(Debug)]
struct Counting {
    inner: SharedStore,
    put: AtomicU64,
    get: AtomicU64,
    get_range: AtomicU64,
    delete: AtomicU64,
    delete_many: AtomicU64,
    list: AtomicU64,
    listed: AtomicU64,
}

impl Counting {
    fn new(inner: SharedStore) -> Arc<Counting> {
        Arc::new(Counting {
            inner,
            put: AtomicU64::new(0),
            get: AtomicU64::new(0),
            get_range: AtomicU64::new(0),
            delete: AtomicU64::new(0),
            delete_many: AtomicU64::new(0),
            list: AtomicU64::new(0),
            listed: AtomicU64::new(0),
        })
    }

    fn calls(&self) -> Calls {
        let n = |a: &AtomicU64| a.load(Ordering::SeqCst);
        Calls {
            put: n(&self.put),
            get: n(&self.get),
            get_range: n(&self.get_range),
            delete: n(&self.delete),
            delete_many: n(&self.delete_many),
            list: n(&self.list),
            listed: n(&self.listed),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::SeqCst);
}

#[async_trait::async_trait]
impl ObjectStore for Counting {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        bump(&self.put);
        self.inner.put(key, body).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        bump(&self.get);
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        bump(&self.get_range);
        self.inner.get_range(key, range).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        bump(&self.delete);
        self.inner.delete(key).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        bump(&self.delete_many);
        self.inner.delete_many(keys).await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        bump(&self.list);
        let page = self.inner.list(prefix, start_after, limit).await?;
        self.listed
            .fetch_add(page.objects.len() as u64, Ordering::SeqCst);
        Ok(page)
    }
}

// ---------------------------------------------------------------------
// Messages: realistic headers and sizes

/// Words of the generated subjects and bodies.
/// Counts the bytes the program holds on the heap, so the memory figures
/// can tell what the state holds from what the allocator keeps around it
/// (fragmentation, arenas). The counting wrapper is `stats_alloc`'s.
#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed since the program started.
fn heap_live() -> u64 {
    let stats = GLOBAL.stats();
    // Reallocations are already counted in both (as their difference).
    (stats.bytes_allocated as u64).saturating_sub(stats.bytes_deallocated as u64)
}

static WORDS: LazyLock<Vec<&str>> = LazyLock::new(|| {
    "the meeting project invoice please find attached report quarter review budget \
     schedule thanks regards update server release notes team customer order shipping \
     delivery question about tomorrow morning afternoon draft version agenda minutes \
     contract proposal deadline feedback design document summary we will should could \
     have been with from into after before during while because and or but not all \
     some new old next last first final"
        .split_whitespace()
        .collect()
});

const PEOPLE: &[(&str, &str)] = &[
    ("Bob Durand", "bob.durand@example.net"),
    ("Claire Moreau", "claire@lists.example.com"),
    ("Newsletter", "news@mailer.example.org"),
    ("David Chen", "dchen@corp.example"),
    ("Élodie Martin", "elodie.martin@example.fr"),
    ("GitHub", "notifications@github.example"),
    ("Fatima Zahra", "fz@example.net"),
    ("Support", "support@shop.example.com"),
    ("Gunnar Olsen", "gunnar@example.no"),
    ("Hiroshi Tanaka", "h.tanaka@example.jp"),
];

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// RFC 5322 §3.3 date-time of Unix seconds, in UTC.
fn rfc5322_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    format!(
        "{weekday}, {day} {} {year} {:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn words(rng: &mut StdRng, n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
    }
    out
}

/// Plain text of about `bytes` bytes in lines of at most 76 characters.
fn text(rng: &mut StdRng, bytes: usize) -> String {
    let mut out = String::with_capacity(bytes + 100);
    let mut line = 0;
    while out.len() < bytes {
        let word = WORDS[rng.gen_range(0..WORDS.len())];
        if line + word.len() + 1 > 72 {
            out.push_str("\r\n");
            line = 0;
            if rng.gen_bool(0.12) {
                out.push_str("\r\n");
            }
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += word.len();
    }
    out.push_str("\r\n");
    out
}

/// Base64 of random bytes, in lines of 76 characters, about `bytes` long.
fn base64_lines(rng: &mut StdRng, bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes * 3 / 4).map(|_| rng.r#gen::<u8>()).collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 38);
    for chunk in encoded.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push_str("\r\n");
    }
    out
}

fn hex_of(rng: &mut StdRng, bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rng.r#gen::<u8>()).collect();
    hex::encode(raw)
}

/// Message number `n`: deterministic, 2 KiB to 100 KiB (log-uniform:
/// median about 14 KiB, mean about 25 KiB), with the header block of a
/// message that went through a real MTA (Received, DKIM-Signature,
/// Authentication-Results, list headers on some), and a MIME structure that
/// depends on the size: text/plain, multipart/alternative, or
/// multipart/mixed with a base64 attachment.
fn message(n: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(n ^ 0x5eed_f00d);
    let target = (2048.0 * 50f64.powf(rng.r#gen::<f64>())) as usize;
    let date = 1_700_000_000 + n as i64 * 97;
    let (from_name, from_addr) = PEOPLE[rng.gen_range(0..PEOPLE.len())];
    let domain = from_addr.split('@').nth(1).unwrap_or("example.net");
    let mut h = String::new();
    let b64 = base64::engine::general_purpose::STANDARD;
    let _ = write!(
        h,
        "Return-Path: <{from_addr}>\r\n\
         Delivered-To: alice@example.org\r\n\
         Received: from mail-{a}.{domain} (mail-{a}.{domain} [203.0.113.{ip}])\r\n\
         \tby mx.example.org (Facteur) with ESMTPS id {id}\r\n\
         \tfor <alice@example.org>; {d}\r\n\
         Received: by mail-{a}.{domain} with SMTP id {id2};\r\n\
         \t{d}\r\n",
        a = rng.gen_range(1..99),
        ip = rng.gen_range(1..254),
        id = hex_of(&mut rng, 8),
        id2 = hex_of(&mut rng, 10),
        d = rfc5322_date(date),
    );
    let signature = b64.encode((0..256).map(|_| rng.r#gen::<u8>()).collect::<Vec<u8>>());
    let _ = write!(
        h,
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=s2024;\r\n\
         \th=from:to:subject:date:message-id:mime-version:content-type;\r\n\
         \tbh={};\r\n\tb=",
        b64.encode((0..32).map(|_| rng.r#gen::<u8>()).collect::<Vec<u8>>())
    );
    for (i, chunk) in signature.as_bytes().chunks(70).enumerate() {
        if i > 0 {
            h.push_str("\r\n\t ");
        }
        h.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
    }
    h.push_str("\r\n");
    let _ = write!(
        h,
        "Authentication-Results: mx.example.org;\r\n\tdkim=pass header.d={domain};\r\n\
         \tspf=pass smtp.mailfrom={domain};\r\n\tdmarc=pass header.from={domain}\r\n"
    );
    let _ = write!(h, "From: {from_name} <{from_addr}>\r\n");
    h.push_str("To: Alice Martin <alice@example.org>");
    for _ in 0..rng.gen_range(0..3) {
        let (name, addr) = PEOPLE[rng.gen_range(0..PEOPLE.len())];
        let _ = write!(h, ",\r\n {name} <{addr}>");
    }
    h.push_str("\r\n");
    if rng.gen_bool(0.3) {
        let (name, addr) = PEOPLE[rng.gen_range(0..PEOPLE.len())];
        let _ = write!(h, "Cc: {name} <{addr}>\r\n");
    }
    let subject_words = rng.gen_range(2..9);
    let subject = words(&mut rng, subject_words);
    match rng.gen_range(0..10) {
        0 => {
            let _ = write!(
                h,
                "Subject: =?UTF-8?Q?R=C3=A9union_{}?=\r\n",
                subject.replace(' ', "_")
            );
        }
        1..=3 => {
            let _ = write!(h, "Subject: Re: {subject}\r\n");
        }
        _ => {
            let _ = write!(h, "Subject: {subject}\r\n");
        }
    }
    let _ = write!(h, "Date: {}\r\n", rfc5322_date(date - 30));
    let _ = write!(h, "Message-ID: <{}@{domain}>\r\n", hex_of(&mut rng, 12));
    if rng.gen_bool(0.3) {
        let parent = hex_of(&mut rng, 12);
        let _ = write!(
            h,
            "In-Reply-To: <{parent}@example.org>\r\n\
             References: <{}@example.org>\r\n <{parent}@example.org>\r\n",
            hex_of(&mut rng, 12)
        );
    }
    if rng.gen_bool(0.25) {
        let _ = write!(
            h,
            "List-Id: Project list <project.lists.{domain}>\r\n\
             List-Unsubscribe: <https://{domain}/unsubscribe/{}>,\r\n <mailto:leave@{domain}>\r\n\
             List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
            hex_of(&mut rng, 16)
        );
    }
    h.push_str("MIME-Version: 1.0\r\n");
    let boundary = format!("=_bench_{}", hex_of(&mut rng, 8));
    let budget = target.saturating_sub(h.len() + 200).max(200);
    let body = if target < 12 * 1024 {
        if rng.gen_bool(0.5) {
            h.push_str(
                "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n",
            );
            text(&mut rng, budget)
        } else {
            let _ = write!(
                h,
                "Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n"
            );
            let plain = text(&mut rng, budget * 2 / 5);
            let html = format!(
                "<html><body><p>{}</p></body></html>\r\n",
                text(&mut rng, budget * 2 / 5).replace("\r\n\r\n", "</p>\r\n<p>")
            );
            format!(
                "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{plain}\
                 --{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\
                 --{boundary}--\r\n"
            )
        }
    } else {
        let _ = write!(
            h,
            "Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n"
        );
        let plain_len = rng.gen_range(500..3000).min(budget / 2);
        let plain = text(&mut rng, plain_len);
        let attachment = base64_lines(&mut rng, budget - plain_len);
        let name = format!("{}.pdf", words(&mut rng, 2).replace(' ', "-"));
        format!(
            "This is a multi-part message in MIME format.\r\n\r\n\
             --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{plain}\
             --{boundary}\r\nContent-Type: application/pdf; name=\"{name}\"\r\n\
             Content-Disposition: attachment; filename=\"{name}\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{attachment}\
             --{boundary}--\r\n"
        )
    };
    h.push_str("\r\n");
    h.push_str(&body);
    h.into_bytes()
}

// ---------------------------------------------------------------------
// Measurements

/// `n`-th percentile (0..=100) of sorted durations, in milliseconds.
fn percentile_ms(sorted: &[Duration], p: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) * p).div_ceil(100);
    sorted[i].as_secs_f64() * 1e3
}

fn mib(bytes: f64) -> String {
    format!("{:.2} MiB", bytes / (1024.0 * 1024.0))
}

/// One line of the report.
struct Row {
    backend: String,
    what: String,
    value: String,
    detail: String,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(
        &mut self,
        backend: &str,
        what: impl Into<String>,
        value: impl Into<String>,
        detail: impl Into<String>,
    ) {
        let row = Row {
            backend: backend.to_owned(),
            what: what.into(),
            value: value.into(),
            detail: detail.into(),
        };
        eprintln!(
            "  [{}] {}: {} ({})",
            row.backend, row.what, row.value, row.detail
        );
        self.rows.push(row);
    }

    fn print(&self) {
        let w = |f: fn(&Row) -> &str, title: &str| {
            self.rows
                .iter()
                .map(|r| f(r).chars().count())
                .max()
                .unwrap_or(0)
                .max(title.len())
        };
        let (wb, ww, wv) = (
            w(|r| &r.backend, "backend"),
            w(|r| &r.what, "measure"),
            w(|r| &r.value, "value"),
        );
        println!();
        println!(
            "| {:wb$} | {:ww$} | {:wv$} | detail",
            "backend", "measure", "value"
        );
        println!(
            "|-{}-|-{}-|-{}-|-------",
            "-".repeat(wb),
            "-".repeat(ww),
            "-".repeat(wv)
        );
        for r in &self.rows {
            println!(
                "| {:wb$} | {:ww$} | {:wv$} | {}",
                r.backend, r.what, r.value, r.detail
            );
        }
    }
}

/// Everything one backend's run needs.
struct Bench {
    name: String,
    raw: SharedStore,
    keyring: Keyring,
    user: UserId,
    user_secret: String,
    opts: Options,
    fs_root: Option<PathBuf>,
    keyring_file: PathBuf,
}

impl Bench {
    fn account(&self, store: SharedStore, instance: &str, tuning: LogTuning) -> Arc<Account> {
        let keys = self
            .keyring
            .unlock_with_password(&Password::new(PASSWORD))
            .expect("unlock the bench keyring");
        let mut config = AccountConfig::new(
            InstanceId::new(instance).expect("instance id"),
            RecordAuth::from_cluster_secret(b"bench"),
        );
        config.mailbox.log = tuning;
        // The engine's own costs, and the store calls they make: no index
        // pages written in the background meanwhile.
        config.mailbox.prepare_indexes = false;
        Account::new(self.user.clone(), keys, store, config)
    }

    fn mailbox_prefix(&self, id: &str) -> String {
        format!("{}mbox/{id}/", layout::user_prefix(&self.user))
    }
}

/// Tuning for instances that only read: they never write a snapshot, so
/// a sync is only the sync.
fn reader_tuning() -> LogTuning {
    LogTuning {
        snapshot_every: usize::MAX,
        ..LogTuning::default()
    }
}

struct AppendFigures {
    rate: f64,
    calls_per_append: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `writers` tasks append `per_writer` messages each, writer `k` into
/// `boxes[k]`.
async fn append_run(
    counting: &Counting,
    boxes: Vec<Arc<Mailbox>>,
    per_writer: usize,
    seed: u64,
) -> AppendFigures {
    let writers = boxes.len();
    let inputs: Vec<Vec<Vec<u8>>> = (0..writers)
        .map(|k| {
            (0..per_writer)
                .map(|i| message(seed + (k * per_writer + i) as u64))
                .collect()
        })
        .collect();
    let before = counting.calls();
    let started = Instant::now();
    let tasks: Vec<_> = boxes
        .into_iter()
        .zip(inputs)
        .map(|(mailbox, messages)| {
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(messages.len());
                for (i, raw) in messages.iter().enumerate() {
                    let t = Instant::now();
                    let flags = if i % 3 == 0 {
                        vec![]
                    } else {
                        vec!["\\Seen".to_owned()]
                    };
                    mailbox
                        .append(raw, flags, 1_700_000_000 + i as i64)
                        .await
                        .expect("append");
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("appender task"));
    }
    let elapsed = started.elapsed();
    let calls = counting.calls().since(before);
    latencies.sort_unstable();
    let total = (writers * per_writer) as f64;
    AppendFigures {
        rate: total / elapsed.as_secs_f64(),
        calls_per_append: calls.total() as f64 / total,
        p50_ms: percentile_ms(&latencies, 50),
        p99_ms: percentile_ms(&latencies, 99),
    }
}

async fn bench_appends(bench: &Bench, report: &mut Report) {
    let opts = &bench.opts;
    let counting = Counting::new(bench.raw.clone());
    let store: SharedStore = counting.clone();
    let account = bench.account(store, "appender", LogTuning::default());
    let total = opts.appends;
    let mailbox = account.mailbox("a0", 1).await.expect("open a0");
    let f = append_run(&counting, vec![mailbox], total, 1_000_000).await;
    report.add(
        &bench.name,
        "appends/s, 1 writer",
        format!("{:.0}", f.rate),
        format!(
            "{total} appends; p50 {:.1} ms, p99 {:.1} ms; {:.1} store calls each",
            f.p50_ms, f.p99_ms, f.calls_per_append
        ),
    );
    for (round, &n) in opts.concurrency.iter().enumerate() {
        let per_writer = total.div_ceil(n);
        let mut boxes = Vec::new();
        for k in 0..n {
            let id = format!("a{:x}{k:02x}", round + 1);
            boxes.push(account.mailbox(&id, 1).await.expect("open"));
        }
        let f = append_run(&counting, boxes, per_writer, 2_000_000).await;
        report.add(
            &bench.name,
            format!("appends/s, {n} writers, {n} mailboxes"),
            format!("{:.0}", f.rate),
            format!(
                "{} appends; p50 {:.1} ms, p99 {:.1} ms; {:.1} store calls each",
                per_writer * n,
                f.p50_ms,
                f.p99_ms,
                f.calls_per_append
            ),
        );
        let shared = account
            .mailbox(&format!("c{:x}", round + 1), 1)
            .await
            .expect("open");
        let f = append_run(&counting, vec![shared; n], per_writer, 3_000_000).await;
        report.add(
            &bench.name,
            format!("appends/s, {n} writers, 1 mailbox"),
            format!("{:.0}", f.rate),
            format!(
                "{} appends; p50 {:.1} ms, p99 {:.1} ms; {:.1} store calls each",
                per_writer * n,
                f.p50_ms,
                f.p99_ms,
                f.calls_per_append
            ),
        );
    }
}

/// Builds the large mailbox: `messages - late` appends, a snapshot, then
/// `ops` more ops (`late` appends and flag changes), as a busy mailbox
/// looks between two snapshots.
async fn build_big(bench: &Bench, report: &mut Report) {
    let opts = &bench.opts;
    let late = opts.late_appends();
    let early = opts.messages - late;
    let counting = Counting::new(bench.raw.clone());
    let store: SharedStore = counting.clone();
    // The snapshot is due at the sync after the early appends, whatever
    // their number.
    let tuning = LogTuning {
        snapshot_every: early.clamp(1, LogTuning::default().snapshot_every),
        ..LogTuning::default()
    };
    let account = bench.account(store, "builder", tuning);
    let mailbox = account
        .mailbox(BIG, BIG_UIDVALIDITY)
        .await
        .expect("open big");
    let started = Instant::now();
    let p = opts.build_concurrency;
    let tasks: Vec<_> = (0..p)
        .map(|k| {
            let mailbox = mailbox.clone();
            tokio::spawn(async move {
                let mut i = k;
                while i < early {
                    let flags = if i % 4 == 0 {
                        vec![]
                    } else {
                        vec!["\\Seen".to_owned()]
                    };
                    mailbox
                        .append(&message(i as u64), flags, 1_700_000_000 + i as i64 * 97)
                        .await
                        .expect("append while building");
                    i += p;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("builder task");
    }
    let build = started.elapsed();
    report.add(
        &bench.name,
        "build: appends/s, 1 mailbox",
        format!("{:.0}", early as f64 / build.as_secs_f64()),
        format!(
            "{early} appends by {p} writers in {:.1} s",
            build.as_secs_f64()
        ),
    );
    // A sync now finds the snapshot due and writes it.
    let before = counting.calls();
    let t = Instant::now();
    mailbox.sync().await.expect("sync writing the snapshot");
    let snap_time = t.elapsed();
    let calls = counting.calls().since(before);
    let snaps = list_all(
        bench.raw.as_ref(),
        &format!("{}snap/", bench.mailbox_prefix(BIG)),
        None,
    )
    .await
    .expect("list snapshots");
    let sealed = snaps.last().map(|m| m.size).unwrap_or(0);
    assert!(!snaps.is_empty(), "no snapshot was written");
    report.add(
        &bench.name,
        format!("snapshot write ({early} messages)"),
        format!("{:.0} ms", snap_time.as_secs_f64() * 1e3),
        format!(
            "sync + snapshot: {}; sealed snapshot {}",
            calls.describe(),
            mib(sealed as f64)
        ),
    );
    // Then the ops after the snapshot: appends and flag changes.
    let mut rng = StdRng::seed_from_u64(7);
    for i in 0..opts.ops {
        if i % 5 == 0 && i / 5 < late {
            let n = (early + i / 5) as u64;
            mailbox
                .append(&message(n), vec![], 1_700_000_000 + n as i64 * 97)
                .await
                .expect("late append");
        } else {
            let exists = mailbox.read(|s| s.exists()).await;
            let uid = mailbox
                .read(|s| s.uid_at(rng.gen_range(1..=exists)))
                .await
                .expect("a shown message");
            let flag = ["\\Seen", "\\Flagged", "$Label1", "\\Answered"][i % 4];
            let (set, clear) = if rng.gen_bool(0.7) {
                (vec![flag.to_owned()], vec![])
            } else {
                (vec![], vec![flag.to_owned()])
            };
            mailbox
                .store_flags(&[uid], set, clear)
                .await
                .expect("store");
        }
    }
    let exists = mailbox.read(|s| s.exists()).await as usize;
    assert_eq!(
        exists, opts.messages,
        "the large mailbox has the wrong size"
    );
}

/// Opens the large mailbox from a fresh instance, several times; reports
/// time and store calls; returns the last mailbox opened (its account
/// with it) for the sync measurements.
async fn bench_open(bench: &Bench, report: &mut Report) {
    let opts = &bench.opts;
    let mut times = Vec::new();
    let mut calls = Calls::default();
    for r in 0..opts.opens {
        let counting = Counting::new(bench.raw.clone());
        let store: SharedStore = counting.clone();
        let account = bench.account(store, &format!("open{r}"), reader_tuning());
        let t = Instant::now();
        let mailbox = account
            .mailbox(BIG, BIG_UIDVALIDITY)
            .await
            .expect("open the large mailbox");
        times.push(t.elapsed());
        calls = counting.calls();
        assert_eq!(mailbox.read(|s| s.exists()).await as usize, opts.messages);
    }
    times.sort_unstable();
    report.add(
        &bench.name,
        format!("open {} msgs: snapshot + {} ops", opts.messages, opts.ops),
        format!("{:.0} ms", percentile_ms(&times, 50)),
        format!(
            "median of {}, min {:.0} ms, max {:.0} ms; store calls: {}",
            times.len(),
            percentile_ms(&times, 0),
            percentile_ms(&times, 100),
            calls.describe()
        ),
    );

    // Where the time goes: the same steps as `StoredLog::open`, one by one.
    let keys = bench
        .keyring
        .unlock_with_password(&Password::new(PASSWORD))
        .expect("unlock");
    let key = keys.master().subkey(purpose::MAILBOX);
    let prefix = bench.mailbox_prefix(BIG);
    let store = bench.raw.as_ref();
    let t = Instant::now();
    let snaps = list_all(store, &format!("{prefix}snap/"), None)
        .await
        .expect("list snapshots");
    let newest = snaps.last().expect("a snapshot").key.clone();
    let sealed = store.get(&newest).await.expect("get snapshot");
    let fetch = t.elapsed();
    let t = Instant::now();
    let plain = open_body(&key, &newest, &sealed, MAX_SNAPSHOT).expect("open snapshot");
    let decrypt = t.elapsed();
    let t = Instant::now();
    let replica: Replica<MailboxState> = {
        #[derive(serde::Deserialize)]
        struct Snapshot {
            replica: Replica<MailboxState>,
        }
        serde_json::from_slice::<Snapshot>(&plain)
            .expect("snapshot")
            .replica
    };
    let decode = t.elapsed();
    let t = Instant::now();
    let listed = list_all(store, &format!("{prefix}log/"), None)
        .await
        .expect("list log");
    let list_time = t.elapsed();
    report.add(
        &bench.name,
        "open, step by step",
        format!(
            "{:.0} ms",
            (fetch + decrypt + decode + list_time).as_secs_f64() * 1e3
        ),
        format!(
            "LIST+GET snapshot {:.0} ms; decrypt+unzstd {:.0} ms; JSON decode + index {:.0} ms; \
             LIST log ({} keys) {:.0} ms; the rest of the open is the {} op GETs and applying them",
            fetch.as_secs_f64() * 1e3,
            decrypt.as_secs_f64() * 1e3,
            decode.as_secs_f64() * 1e3,
            listed.len(),
            list_time.as_secs_f64() * 1e3,
            opts.ops
        ),
    );

    // Snapshot size, and the summary pages beside it.
    let summary_bytes: usize = replica.state().held_summary_bytes();
    let pages = list_all(store, &format!("{prefix}side/"), None)
        .await
        .expect("list summary pages");
    let page_bytes: u64 = pages.iter().map(|m| m.size).sum();
    let n = replica.state().exists().max(1) as usize;
    report.add(
        &bench.name,
        "snapshot JSON size",
        mib(plain.len() as f64),
        format!(
            "{} messages, {} per message; sealed (zstd) {}; summaries held in it {} ({} B per \
             message); beside it {} summary pages, {} sealed",
            replica.state().exists(),
            plain.len() / n,
            mib(sealed.len() as f64),
            mib(summary_bytes as f64),
            summary_bytes / n,
            pages.len(),
            mib(page_bytes as f64),
        ),
    );
}

fn percent(part: usize, whole: usize) -> String {
    format!("{:.0} %", 100.0 * part as f64 / whole.max(1) as f64)
}

/// Syncs with nothing new, with default tuning and with no lookback.
async fn bench_sync(bench: &Bench, report: &mut Report) {
    let opts = &bench.opts;
    for (label, tuning) in [
        ("no-change sync, default lookback (10 s)", reader_tuning()),
        (
            "no-change sync, no lookback",
            LogTuning {
                lookback: Duration::ZERO,
                ..reader_tuning()
            },
        ),
    ] {
        let counting = Counting::new(bench.raw.clone());
        let store: SharedStore = counting.clone();
        let account = bench.account(store, "syncer", tuning);
        let mailbox = account
            .mailbox(BIG, BIG_UIDVALIDITY)
            .await
            .expect("open the large mailbox");
        let mut times = Vec::new();
        let mut per_sync = Vec::new();
        for _ in 0..opts.syncs {
            let before = counting.calls();
            let t = Instant::now();
            let applied = mailbox.sync().await.expect("sync");
            times.push(t.elapsed());
            per_sync.push(counting.calls().since(before));
            assert_eq!(applied, 0, "nothing changed, yet a sync applied ops");
        }
        times.sort_unstable();
        let first = per_sync[0];
        let same = per_sync.iter().all(|c| *c == first);
        report.add(
            &bench.name,
            label,
            format!("{:.2} ms", percentile_ms(&times, 50)),
            format!(
                "p50 of {}, p99 {:.2} ms; each: {}{}",
                times.len(),
                percentile_ms(&times, 99),
                first.describe(),
                if same { "" } else { " (varied)" }
            ),
        );
    }
}

// ---------------------------------------------------------------------
// Memory (child processes)

/// Resident memory now, in KiB: (`VmRSS`, `RssAnon`, peak `VmHWM`) from
/// `/proc/self/status`.
fn rss_kib() -> (u64, u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"), field("VmHWM:"))
}

struct MemoryFigures {
    /// `RssAnon` in KiB after setup, then after each copy.
    anon: Vec<u64>,
    /// Live heap bytes (allocated, not freed) after setup, then after each
    /// copy.
    heap: Vec<u64>,
    /// `VmRSS` and peak `VmHWM` in KiB, after setup and after the first copy.
    rss: Vec<u64>,
    peak: Vec<u64>,
    summary_bytes: u64,
    summary_capacity: u64,
    messages: u64,
}

impl MemoryFigures {
    fn per_copy(&self) -> f64 {
        let n = self.anon.len() - 1;
        (self.anon[n] as f64 - self.anon[1] as f64) * 1024.0 / (n - 1) as f64
    }

    /// Live heap bytes per copy (slope, as [`MemoryFigures::per_copy`]):
    /// what the open mailbox itself holds.
    fn heap_per_copy(&self) -> f64 {
        let n = self.heap.len() - 1;
        (self.heap[n] as f64 - self.heap[1] as f64) / (n - 1) as f64
    }

    fn first(&self) -> f64 {
        (self.anon[1] as f64 - self.anon[0] as f64) * 1024.0
    }

    /// How far the resident set rose above its level after setup while
    /// opening the first copy (transient buffers included).
    fn open_peak(&self) -> f64 {
        (self.peak[1] as f64 - self.rss[0] as f64) * 1024.0
    }

    fn parse(out: &str) -> Option<MemoryFigures> {
        let mut fig = MemoryFigures {
            anon: Vec::new(),
            heap: Vec::new(),
            rss: Vec::new(),
            peak: Vec::new(),
            summary_bytes: 0,
            summary_capacity: 0,
            messages: 0,
        };
        let mut anon = BTreeMap::new();
        let mut heap = BTreeMap::new();
        for line in out.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["rss", k, rss, a, peak, live] => {
                    let k = k.parse::<usize>().ok()?;
                    anon.insert(k, a.parse().ok()?);
                    heap.insert(k, live.parse().ok()?);
                    if k <= 1 {
                        fig.rss.push(rss.parse().ok()?);
                        fig.peak.push(peak.parse().ok()?);
                    }
                }
                ["summaries", n, bytes, cap] => {
                    fig.messages = n.parse().ok()?;
                    fig.summary_bytes = bytes.parse().ok()?;
                    fig.summary_capacity = cap.parse().ok()?;
                }
                _ => {}
            }
        }
        fig.anon = anon.into_values().collect();
        fig.heap = heap.into_values().collect();
        (fig.anon.len() >= 3).then_some(fig)
    }
}

/// Runs this binary as a memory child, with `malloc_env` (glibc tunables)
/// in its environment, and reads what it printed. With one arena
/// (`MALLOC_ARENA_MAX=1`) the fs store's reads on tokio's blocking threads
/// do not each fragment an arena of their own, which adds about 10 MiB
/// per copy that the state does not hold.
async fn memory_child(bench: &Bench, mode: &str, malloc_env: &[(&str, &str)]) -> MemoryFigures {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = Command::new(exe);
    cmd.envs(malloc_env.iter().copied());
    cmd.env("FACTEUR_BENCH_CHILD", mode)
        .env("FACTEUR_BENCH_CHILD_BACKEND", &bench.name)
        .env("FACTEUR_BENCH_CHILD_SECRET", &bench.user_secret)
        .env("FACTEUR_BENCH_CHILD_KEYRING", &bench.keyring_file)
        .env("FACTEUR_BENCH_COPIES", bench.opts.copies.to_string())
        .env("FACTEUR_BENCH_MESSAGES", bench.opts.messages.to_string())
        .env("FACTEUR_BENCH_OPS", bench.opts.ops.to_string());
    if let Some(root) = &bench.fs_root {
        cmd.env("FACTEUR_BENCH_CHILD_FS_ROOT", root);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run the memory child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "memory child ({mode}) failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    MemoryFigures::parse(&stdout).unwrap_or_else(|| panic!("memory child said: {stdout}"))
}

async fn bench_memory(bench: &Bench, report: &mut Report, skeleton: bool) {
    // glibc raises its mmap threshold to the size of the largest block it
    // freed, after which large transient buffers (the sealed snapshot, a
    // listing) come from the heap and leave holes between the long-lived
    // tables of the copies opened after them. A fixed threshold keeps
    // them out of the heap: the resident set then follows the live heap.
    let fixed = memory_child(
        bench,
        "real",
        &[
            ("MALLOC_ARENA_MAX", "1"),
            ("MALLOC_MMAP_THRESHOLD_", "131072"),
        ],
    )
    .await;
    report.add(
        &bench.name,
        format!(
            "memory per open mailbox, one arena, fixed mmap threshold ({} msgs)",
            fixed.messages
        ),
        mib(fixed.per_copy()),
        format!(
            "RssAnon slope with MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=131072 (no \
             transient buffer left in the heap); target 5 MiB: {}",
            if fixed.per_copy() < 5.0 * 1024.0 * 1024.0 {
                "met"
            } else {
                "NOT met"
            },
        ),
    );
    let single = memory_child(bench, "real", &[("MALLOC_ARENA_MAX", "1")]).await;
    report.add(
        &bench.name,
        format!(
            "memory per open mailbox, one malloc arena ({} msgs)",
            single.messages
        ),
        mib(single.per_copy()),
        format!(
            "as below, with MALLOC_ARENA_MAX=1 (without the fragmentation of the \
             blocking threads' arenas); target 5 MiB: {}",
            if single.per_copy() < 5.0 * 1024.0 * 1024.0 {
                "met"
            } else {
                "NOT met"
            },
        ),
    );
    let real = memory_child(bench, "real", &[]).await;
    let copies = bench.opts.copies;
    let per_copy = real.per_copy();
    report.add(
        &bench.name,
        format!("memory per open mailbox ({} msgs)", real.messages),
        mib(per_copy),
        format!(
            "RssAnon slope over {copies} copies (first copy {}, with one-time costs; \
             peak while opening it +{}); target 5 MiB: {}; summaries held: {} \
             before compression, {} B per message",
            mib(real.first()),
            mib(real.open_peak()),
            if per_copy < 5.0 * 1024.0 * 1024.0 {
                "met"
            } else {
                "NOT met"
            },
            mib(real.summary_bytes as f64),
            real.summary_bytes / real.messages.max(1),
        ),
    );
    let heap = real.heap_per_copy();
    report.add(
        &bench.name,
        format!("live heap per open mailbox ({} msgs)", real.messages),
        mib(heap),
        format!(
            "bytes allocated and not freed, slope over {copies} copies: what the open \
             mailbox holds, without the allocator's fragmentation; {} B per message; \
             target 5 MiB: {}",
            heap as u64 / real.messages.max(1),
            if heap < 5.0 * 1024.0 * 1024.0 {
                "met"
            } else {
                "NOT met"
            },
        ),
    );
    if skeleton {
        let skel = memory_child(bench, "skeleton", &[]).await;
        let rest = skel.per_copy();
        report.add(
            "any",
            format!(
                "memory per open mailbox, no summaries ({} msgs)",
                skel.messages
            ),
            mib(rest),
            format!(
                "same ops with empty summaries (memory store); so summaries account for \
                 {} of the {} above ({})",
                mib(per_copy - rest),
                mib(per_copy),
                percent((per_copy - rest).max(0.0) as usize, per_copy as usize)
            ),
        );
    }
}

fn child_store(backend: &str) -> SharedStore {
    match backend {
        "fs" => {
            let root = std::env::var_os("FACTEUR_BENCH_CHILD_FS_ROOT").expect("fs root");
            Arc::new(FsStore::open(PathBuf::from(root)).expect("open fs store"))
        }
        "garage" => {
            let settings = S3Settings::from_test_env().expect("Garage settings");
            Arc::new(S3Store::new(settings).expect("S3 store"))
        }
        other => panic!("unknown backend {other}"),
    }
}

fn print_rss(k: usize) {
    let (rss, anon, peak) = rss_kib();
    println!("rss {k} {rss} {anon} {peak} {}", heap_live());
}

/// The memory child: opens `FACTEUR_BENCH_COPIES` copies of the large
/// mailbox (each from its own account, as separate users would), keeping
/// them all, and prints the resident set after each.
fn child(mode: &str) {
    // One thread: every long-lived allocation comes from one malloc arena,
    // so the resident set follows what the state holds.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let copies = env_usize("FACTEUR_BENCH_COPIES", 4);
    match mode {
        "real" => runtime.block_on(async {
            let backend = std::env::var("FACTEUR_BENCH_CHILD_BACKEND").expect("backend");
            let store = child_store(&backend);
            let secret = std::env::var("FACTEUR_BENCH_CHILD_SECRET").expect("secret");
            let path = std::env::var_os("FACTEUR_BENCH_CHILD_KEYRING").expect("keyring");
            let bytes = std::fs::read(path).expect("read keyring file");
            let keyring = Keyring::from_bytes(KEYRING_NAME, &bytes).expect("keyring");
            let user = match std::env::var("FACTEUR_BENCH_CHILD_USER") {
                Ok(hex) => layout::UserId::parse(&hex).expect("FACTEUR_BENCH_CHILD_USER"),
                Err(_) => user_id(secret.as_bytes(), "bench"),
            };
            // Diagnostic: the same objects from a memory store, so that
            // the store's own allocations are out of the picture.
            let store: SharedStore = if std::env::var_os("FACTEUR_BENCH_CHILD_IN_MEMORY").is_some()
            {
                let memory = MemoryStore::new();
                let prefix = layout::user_prefix(&user);
                for meta in list_all(store.as_ref(), &prefix, None).await.expect("list") {
                    let body = store.get(&meta.key).await.expect("get");
                    memory.put(&meta.key, body).await.expect("put");
                }
                Arc::new(memory)
            } else {
                store
            };
            let mut open = Vec::new();
            print_rss(0);
            for k in 1..=copies {
                let keys = keyring
                    .unlock_with_password(&Password::new(PASSWORD))
                    .expect("unlock");
                let config = AccountConfig::new(
                    InstanceId::new(&format!("mem{k}")).expect("instance"),
                    RecordAuth::from_cluster_secret(b"bench"),
                );
                let account = Account::new(user.clone(), keys, store.clone(), config);
                let mailbox = account
                    .mailbox(BIG, BIG_UIDVALIDITY)
                    .await
                    .expect("open the large mailbox");
                open.push((account, mailbox));
                print_rss(k);
            }
            // Held summaries are kept at their length (the op's bytes).
            let (n, bytes) = open[0]
                .1
                .read(|s| (s.exists() as u64, s.held_summary_bytes() as u64))
                .await;
            let cap = bytes;
            println!("summaries {n} {bytes} {cap}");
        }),
        "skeleton" => runtime.block_on(skeleton_child(copies)),
        other => panic!("unknown child mode {other}"),
    }
}

/// The large mailbox's ops with empty summaries, in a memory store; then
/// `copies` opens of it, as in [`child`].
async fn skeleton_child(copies: usize) {
    let messages = env_usize("FACTEUR_BENCH_MESSAGES", 10_000);
    let ops = env_usize("FACTEUR_BENCH_OPS", 500);
    let late = ops / 5;
    let store = MemoryStore::new();
    let key = SymmetricKey::random();
    let prefix = format!(
        "{}mbox/5e1e/",
        layout::user_prefix(&user_id(b"skeleton", "bench"))
    );
    let instance = InstanceId::new("skeleton").expect("instance");
    let new = |n: u64| {
        let mut rng = StdRng::seed_from_u64(n);
        MailboxOp::Append(NewMessage {
            message: MessageRef {
                // The form of `layout::new_blob_id`: a time, then 16
                // random bytes, in hex.
                blob_id: format!("{:012x}{}", 1_700_000_000_000 + n, hex_of(&mut rng, 16)),
                body_key: BodyKey(SymmetricKey::random()),
                size: rng.gen_range(2048..102_400),
                internal_date: 1_700_000_000 + n as i64 * 97,
                summary: Vec::new(),
            },
            flags: if n.is_multiple_of(4) {
                vec![]
            } else {
                vec!["\\Seen".to_owned()]
            },
        })
    };
    {
        let mut log = StoredLog::open(
            &store,
            key.clone(),
            prefix.clone(),
            instance.clone(),
            LogTuning::default(),
            || MailboxState::new(BIG_UIDVALIDITY),
        )
        .await
        .expect("open skeleton");
        let mut placed = Vec::new();
        for n in 0..(messages - late) as u64 {
            placed.push(log.append(&store, new(n)).await.expect("append"));
        }
        log.write_snapshot(&store).await.expect("snapshot");
        let mut rng = StdRng::seed_from_u64(7);
        for i in 0..ops {
            let op = if i % 5 == 0 && i / 5 < late {
                new((messages - late + i / 5) as u64)
            } else {
                let target = MessageId {
                    op: placed[rng.gen_range(0..placed.len())],
                    index: 0,
                };
                MailboxOp::Store {
                    targets: vec![target],
                    set: vec!["\\Flagged".to_owned()],
                    clear: vec![],
                }
            };
            log.append(&store, op).await.expect("append");
        }
    }
    let mut open = Vec::new();
    print_rss(0);
    for k in 1..=copies {
        let log = StoredLog::open(
            &store,
            key.clone(),
            prefix.clone(),
            InstanceId::new(&format!("mem{k}")).expect("instance"),
            reader_tuning(),
            || MailboxState::new(BIG_UIDVALIDITY),
        )
        .await
        .expect("open skeleton copy");
        assert_eq!(log.state().exists() as usize, messages);
        open.push(log);
        print_rss(k);
    }
    println!("summaries {messages} 0 0");
}

// ---------------------------------------------------------------------
// Main

async fn run_backend(name: &str, opts: &Options, dir: &Path, report: &mut Report, skeleton: bool) {
    let (raw, fs_root): (SharedStore, Option<PathBuf>) = match name {
        "fs" => {
            let root = dir.join("fs");
            (
                Arc::new(FsStore::open(&root).expect("fs store")),
                Some(root),
            )
        }
        "garage" => match S3Settings::from_test_env() {
            Some(settings) => (Arc::new(S3Store::new(settings).expect("S3 store")), None),
            None => {
                eprintln!(
                    "garage: FACTEUR_TEST_S3_* not set, skipped \
                     (eval \"$(scripts/garage.sh start /tmp/bench-garage)\")"
                );
                return;
            }
        },
        other => panic!("unknown backend {other:?} (fs, garage)"),
    };
    eprintln!("== {name}");
    let (keyring, _, _) =
        Keyring::create(&Password::new(PASSWORD), &KdfParams::TEST, false).expect("keyring");
    let keyring_file = dir.join(format!("keyring-{name}.json"));
    std::fs::write(&keyring_file, keyring.to_bytes(KEYRING_NAME)).expect("write keyring");
    let keyring = Keyring::from_bytes(KEYRING_NAME, &std::fs::read(&keyring_file).expect("read"))
        .expect("keyring");
    // A fresh user per run, so a reused bucket starts empty for it.
    let user_secret = hex::encode(rand::random::<[u8; 16]>());
    let bench = Bench {
        name: name.to_owned(),
        user: user_id(user_secret.as_bytes(), "bench"),
        raw,
        keyring,
        user_secret,
        opts: opts.clone(),
        fs_root,
        keyring_file,
    };
    bench_appends(&bench, report).await;
    build_big(&bench, report).await;
    bench_open(&bench, report).await;
    bench_sync(&bench, report).await;
    bench_memory(&bench, report, skeleton).await;
}

fn main() {
    if let Ok(mode) = std::env::var("FACTEUR_BENCH_CHILD") {
        child(&mode);
        return;
    }
    // `cargo bench` passes `--bench`; any filter is ignored.
    let opts = Options::from_env();
    let temp;
    let dir = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d).expect("create FACTEUR_BENCH_DIR");
            d.clone()
        }
        None => {
            temp = tempfile::tempdir().expect("temp dir");
            temp.path().to_owned()
        }
    };
    eprintln!("engine bench: {opts:?}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut report = Report::default();
    let mut skeleton = true;
    for backend in &opts.backends {
        runtime.block_on(run_backend(backend, &opts, &dir, &mut report, skeleton));
        skeleton = false;
    }
    report.print();
}
