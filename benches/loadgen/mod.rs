//! An IMAP load generator that needs nothing from Facteur: N concurrent
//! clients against any IMAP server (plaintext LOGIN, UIDPLUS and MOVE),
//! every response checked, figures per command. Used by `benches/load.rs`
//! (the command line) and by the smoke test `tests/load.rs`.
//!
//! Modes (`--mode`):
//! - `mix` (default): each client loops over what a mail client does:
//!   LOGIN, LIST, STATUS, SELECT, a flag sync (`UID FETCH 1:* (UID
//!   FLAGS)`), the headers of new mail (ENVELOPE, BODYSTRUCTURE), one body,
//!   STORE, SEARCH, APPEND, NOOP, COPY or MOVE to `Archive`, EXPUNGE of
//!   what it put there, LOGOUT. `--keep-open` keeps each session open
//!   (LOGIN once, no LOGOUT) instead of one connection per loop.
//! - `logins`: connect, LOGIN, LOGOUT in a loop.
//! - `fill`: appends to every user's INBOX until it holds `--messages`
//!   messages (`--clients` connections at once per user); the starting
//!   mail of the other modes.
//! - `bigbox`: on the first user's INBOX, timed once: SELECT, `FETCH 1:*
//!   (UID FLAGS ENVELOPE)`, SEARCH SUBJECT, SEARCH TEXT, and the download
//!   of the first `--download` messages (`FETCH 1:n BODY.PEEK[]`).
//! - `idle`: opens `--clients` sessions (LOGIN, SELECT, IDLE), then reads
//!   the resident memory of the server's processes: the rise per
//!   connection.
//!
//! What is checked: every command ends with a tagged OK; EXISTS never
//! decreases without EXPUNGE; EXPUNGE and FETCH name a message that
//! exists; a message keeps its UID, UIDs ascend with sequence numbers, an
//! expunged UID never comes back; the flag sync returns a UID for every
//! message; new mail comes with ENVELOPE and BODYSTRUCTURE; a body comes
//! as a literal; STORE answers with the flag set or cleared; SEARCH
//! returns only UIDs the session knows; APPENDUID is above every UID seen
//! and the appended message shows after NOOP; MOVE and EXPUNGE remove
//! exactly the client's own message; the cleanup of `Archive` expunges as
//! many messages as the client put there. Each client appends, moves and
//! expunges only its own messages, so several clients may share a user.
//!
//! Server CPU: utime + stime (and those of reaped children) of the
//! processes given with `--server-pid` and all their descendants, read from
//! `/proc` before and after (Dovecot's per-connection processes are
//! counted through its master's pid).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any server answer may take before it counts as an error.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest response line (literals included) a client holds.
const MAX_LINE: usize = 64 << 20;
/// Error lines kept for the report.
const ERROR_SAMPLES: usize = 20;
/// Expunged UIDs a session remembers (to check none comes back).
const EXPUNGED_KEPT: usize = 100_000;
/// Words of subjects and bodies, searched by SEARCH SUBJECT and TEXT.
const WORDS: [&str; 8] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
];

/// What to run, against what.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    about = "IMAP load generator (see benches/loadgen/mod.rs)",
    args_override_self = true
)]
pub struct Options {
    /// The server's plaintext IMAP address (LOGIN without TLS).
    #[arg(long, default_value = "127.0.0.1:1143")]
    pub server: String,
    /// `login:password`; `%d` in the login is replaced by 1..=user-count.
    #[arg(long, default_value = "user%d:password")]
    pub users: String,
    /// How many users `%d` runs over (client i uses user i mod count).
    #[arg(long, default_value_t = 1)]
    pub user_count: usize,
    /// Concurrent clients (connections).
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    /// Length of the measure (mix, logins; how long idle holds).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Mix: one session per client for the whole run (LOGIN once).
    #[arg(long)]
    pub keep_open: bool,
    /// mix, logins, fill, bigbox or idle.
    #[arg(long, default_value = "mix")]
    pub mode: String,
    /// Server processes whose CPU time (and memory, for idle) is read,
    /// with their descendants (repeatable).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Seconds per interval of the ops/CPU-second series (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub interval: f64,
    /// fill: messages per INBOX; bigbox: messages expected in it.
    #[arg(long, default_value_t = 100)]
    pub messages: usize,
    /// bigbox: how many messages the full download fetches.
    #[arg(long, default_value_t = 1000)]
    pub download: usize,
    /// Print the report as one JSON line after the table.
    #[arg(long)]
    pub json: bool,
    /// mix, logins: first log every user in once (connect, LOGIN, LIST,
    /// EXAMINE of each mailbox, LOGOUT; `--clients` at once), untimed, and
    /// report how long that took: a server that unlocks a user's keys at
    /// the first login after a start (Facteur: one Argon2) and opens a
    /// mailbox from its snapshot at its first use is then measured in its
    /// steady state, and its first logins apart.
    #[arg(long)]
    pub warm_up: bool,
}

impl Options {
    /// The login and password of client or user `i`.
    pub fn user(&self, i: usize) -> (String, String) {
        let (login, password) = self.users.split_once(':').unwrap_or((&self.users, ""));
        let n = i % self.user_count.max(1) + 1;
        (login.replace("%d", &n.to_string()), password.to_owned())
    }
}

/// The commands timed, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cmd {
    Connect,
    Login,
    List,
    Status,
    Select,
    FetchFlags,
    FetchHeaders,
    FetchBody,
    Store,
    Search,
    Append,
    Noop,
    Copy,
    Move,
    Expunge,
    Idle,
    Logout,
}

impl Cmd {
    pub const ALL: [Cmd; 17] = [
        Cmd::Connect,
        Cmd::Login,
        Cmd::List,
        Cmd::Status,
        Cmd::Select,
        Cmd::FetchFlags,
        Cmd::FetchHeaders,
        Cmd::FetchBody,
        Cmd::Store,
        Cmd::Search,
        Cmd::Append,
        Cmd::Noop,
        Cmd::Copy,
        Cmd::Move,
        Cmd::Expunge,
        Cmd::Idle,
        Cmd::Logout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cmd::Connect => "connect",
            Cmd::Login => "LOGIN",
            Cmd::List => "LIST",
            Cmd::Status => "STATUS",
            Cmd::Select => "SELECT",
            Cmd::FetchFlags => "FETCH flags",
            Cmd::FetchHeaders => "FETCH headers",
            Cmd::FetchBody => "FETCH body",
            Cmd::Store => "STORE",
            Cmd::Search => "SEARCH",
            Cmd::Append => "APPEND",
            Cmd::Noop => "NOOP",
            Cmd::Copy => "COPY",
            Cmd::Move => "MOVE",
            Cmd::Expunge => "EXPUNGE",
            Cmd::Idle => "IDLE",
            Cmd::Logout => "LOGOUT",
        }
    }

    /// The commands a `mix` run must have run, every one of them.
    pub fn mix(keep_open: bool) -> Vec<Cmd> {
        let mut all: Vec<Cmd> = Cmd::ALL.into_iter().filter(|c| *c != Cmd::Idle).collect();
        if keep_open {
            all.retain(|c| *c != Cmd::Logout);
        }
        all
    }
}

/// Latencies of one command: a log-scale histogram (16 buckets per power
/// of two of microseconds, about 4 % wide), so memory stays fixed.
#[derive(Clone)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
}

const BUCKETS_PER_OCTAVE: f64 = 16.0;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; 40 * BUCKETS_PER_OCTAVE as usize],
            count: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().max(1) as f64;
        let i = ((us.log2() * BUCKETS_PER_OCTAVE) as usize).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
        self.count += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
    }

    /// The latency at quantile `q` (0..=1), in milliseconds: the upper
    /// end of its bucket.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((self.count as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return 2f64.powf((i + 1) as f64 / BUCKETS_PER_OCTAVE) / 1e3;
            }
        }
        0.0
    }
}

/// What one command did during the measure.
#[derive(Clone, Default)]
pub struct CmdStats {
    pub latency: Histogram,
    pub errors: u64,
}

/// Per-command figures of a client, merged at the end.
#[derive(Clone, Default)]
pub struct Stats {
    pub commands: BTreeMap<Cmd, CmdStats>,
}

impl Stats {
    fn merge(&mut self, other: &Stats) {
        for (cmd, s) in &other.commands {
            let mine = self.commands.entry(*cmd).or_default();
            mine.latency.merge(&s.latency);
            mine.errors += s.errors;
        }
    }
}

/// State shared by the clients of a run.
struct Shared {
    options: Options,
    /// End of the measure: operations finished later are not counted.
    deadline: Instant,
    /// Operations finished within the measure, all clients.
    ops: AtomicU64,
    errors: AtomicU64,
    error_samples: Mutex<Vec<String>>,
}

impl Shared {
    fn error(&self, client: usize, failure: &Failure) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.error_samples.lock().unwrap();
        if samples.len() < ERROR_SAMPLES {
            samples.push(format!(
                "client {client}: {}: {}",
                failure.cmd.name(),
                failure.detail
            ));
        }
    }

    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }
}

/// A failed or inconsistent command.
#[derive(Debug)]
pub struct Failure {
    pub cmd: Cmd,
    pub detail: String,
}

fn fail<T>(cmd: Cmd, detail: impl Into<String>) -> Result<T, Failure> {
    Err(Failure {
        cmd,
        detail: detail.into(),
    })
}

/// One response line: its text with each literal's data left out (its
/// `{n}` stays), and the literals' data.
#[derive(Debug, Default)]
pub struct Line {
    pub text: String,
    pub literals: Vec<Vec<u8>>,
}

/// The lines of one command's response, tagged one last.
#[derive(Debug, Default)]
pub struct Reply {
    pub lines: Vec<Line>,
}

impl Reply {
    fn tagged(&self) -> &str {
        self.lines.last().map_or("", |l| l.text.as_str())
    }

    fn ok(&self) -> bool {
        self.tagged().split(' ').nth(1) == Some("OK")
    }

    /// Untagged lines whose text, after `* `, starts with `prefix`.
    fn untagged<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Line> + 'a {
        self.lines.iter().filter(move |l| {
            l.text
                .strip_prefix("* ")
                .is_some_and(|t| t.starts_with(prefix))
        })
    }

    /// The `[CODE a b]` response code's arguments in the tagged line.
    fn code(&self, code: &str) -> Option<Vec<u32>> {
        let tagged = self.tagged();
        let start = tagged.find(&format!("[{code} "))? + code.len() + 2;
        let end = start + tagged[start..].find(']')?;
        tagged[start..end]
            .split(' ')
            .map(|s| s.parse().ok())
            .collect()
    }
}

/// A connection: a socket, what was read but not used, the next tag.
pub struct Conn {
    io: TcpStream,
    buf: Vec<u8>,
    next_tag: u32,
}

impl Conn {
    async fn connect(server: &str) -> Result<Conn, Failure> {
        let io = match tokio::time::timeout(ANSWER_TIMEOUT, TcpStream::connect(server)).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => return fail(Cmd::Connect, format!("connect to {server}: {e}")),
            Err(_) => return fail(Cmd::Connect, format!("connect to {server}: timeout")),
        };
        let _ = io.set_nodelay(true);
        let mut c = Conn {
            io,
            buf: Vec::new(),
            next_tag: 1,
        };
        let greeting = c.line(Cmd::Connect).await?;
        if !greeting.text.starts_with("* OK") {
            return fail(Cmd::Connect, format!("greeting: {}", greeting.text));
        }
        Ok(c)
    }

    async fn fill(&mut self, cmd: Cmd) -> Result<(), Failure> {
        self.buf.reserve(16 << 10);
        match tokio::time::timeout(ANSWER_TIMEOUT, self.io.read_buf(&mut self.buf)).await {
            Ok(Ok(0)) => fail(cmd, "server closed the connection"),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => fail(cmd, format!("read: {e}")),
            Err(_) => fail(cmd, format!("no answer in {ANSWER_TIMEOUT:?}")),
        }
    }

    /// One response line, its literals read with it.
    async fn line(&mut self, cmd: Cmd) -> Result<Line, Failure> {
        let mut line = Line::default();
        let mut total = 0;
        loop {
            let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                if self.buf.len() > MAX_LINE {
                    return fail(cmd, "response line over 64 MiB");
                }
                self.fill(cmd).await?;
                continue;
            };
            let part = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            self.buf.drain(..end + 2);
            total += part.len();
            let literal = part
                .strip_suffix('}')
                .and_then(|p| p.rsplit_once('{'))
                .and_then(|(_, n)| n.trim_end_matches('+').parse::<usize>().ok());
            line.text.push_str(&part);
            let Some(n) = literal else {
                return Ok(line);
            };
            total += n;
            if total > MAX_LINE {
                return fail(cmd, "response line over 64 MiB");
            }
            while self.buf.len() < n {
                self.fill(cmd).await?;
            }
            line.literals.push(self.buf.drain(..n).collect());
        }
    }

    fn tag(&mut self) -> String {
        let t = format!("L{}", self.next_tag);
        self.next_tag += 1;
        t
    }

    async fn send(&mut self, cmd: Cmd, raw: &[u8]) -> Result<(), Failure> {
        match tokio::time::timeout(ANSWER_TIMEOUT, self.io.write_all(raw)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => fail(cmd, format!("write: {e}")),
            Err(_) => fail(cmd, "write timeout"),
        }
    }

    async fn until_tagged(&mut self, cmd: Cmd, tag: &str) -> Result<Reply, Failure> {
        let mut reply = Reply::default();
        let prefix = format!("{tag} ");
        loop {
            let line = self.line(cmd).await?;
            let done = line.text.starts_with(&prefix);
            reply.lines.push(line);
            if done {
                return Ok(reply);
            }
        }
    }

    /// Sends `command` (a tag is put before it), reads to the tagged reply.
    async fn run(&mut self, cmd: Cmd, command: &str) -> Result<Reply, Failure> {
        let tag = self.tag();
        self.send(cmd, format!("{tag} {command}\r\n").as_bytes())
            .await?;
        self.until_tagged(cmd, &tag).await
    }

    /// APPEND with a synchronizing literal (any server takes it).
    async fn append(&mut self, mailbox: &str, message: &[u8]) -> Result<Reply, Failure> {
        let cmd = Cmd::Append;
        let tag = self.tag();
        self.send(
            cmd,
            format!("{tag} APPEND {mailbox} {{{}}}\r\n", message.len()).as_bytes(),
        )
        .await?;
        let mut reply = Reply::default();
        loop {
            let line = self.line(cmd).await?;
            if line.text.starts_with('+') {
                break;
            }
            let tagged = line.text.starts_with(&format!("{tag} "));
            reply.lines.push(line);
            if tagged {
                return fail(cmd, format!("literal refused: {}", reply.tagged()));
            }
        }
        let mut data = message.to_vec();
        data.extend_from_slice(b"\r\n");
        self.send(cmd, &data).await?;
        let rest = self.until_tagged(cmd, &tag).await?;
        reply.lines.extend(rest.lines);
        Ok(reply)
    }
}

/// What a session knows of its selected mailbox: the UID of each message
/// by sequence number (`None` until fetched).
#[derive(Default)]
struct View {
    uids: Vec<Option<u32>>,
    expunged: HashSet<u32>,
    uidvalidity: u32,
    uidnext: u32,
}

impl View {
    fn max_uid(&self) -> u32 {
        self.uids.iter().rev().find_map(|u| *u).unwrap_or(0)
    }

    fn seq_of(&self, uid: u32) -> Option<usize> {
        self.uids
            .iter()
            .position(|u| *u == Some(uid))
            .map(|i| i + 1)
    }

    /// Applies the untagged EXISTS, EXPUNGE and FETCH (UID) of `reply`;
    /// the first inconsistency is the error.
    fn apply(&mut self, cmd: Cmd, reply: &Reply) -> Result<(), Failure> {
        for line in &reply.lines {
            let Some(rest) = line.text.strip_prefix("* ") else {
                continue;
            };
            let mut words = rest.splitn(3, ' ');
            let (Some(n), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<usize>() else {
                continue;
            };
            match kind {
                "EXISTS" => {
                    if n < self.uids.len() {
                        return fail(
                            cmd,
                            format!(
                                "EXISTS went from {} to {n} without EXPUNGE",
                                self.uids.len()
                            ),
                        );
                    }
                    self.uids.resize(n, None);
                }
                "EXPUNGE" => {
                    if n == 0 || n > self.uids.len() {
                        return fail(cmd, format!("EXPUNGE {n} of {} messages", self.uids.len()));
                    }
                    if let Some(uid) = self.uids.remove(n - 1) {
                        if self.expunged.len() >= EXPUNGED_KEPT {
                            self.expunged.clear();
                        }
                        self.expunged.insert(uid);
                    }
                }
                "FETCH" => {
                    if n == 0 || n > self.uids.len() {
                        return fail(cmd, format!("FETCH of message {n} of {}", self.uids.len()));
                    }
                    let Some(uid) = fetch_uid(&line.text) else {
                        continue;
                    };
                    self.learn(cmd, n, uid)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Message `seq` has UID `uid`: checks it against what is known.
    fn learn(&mut self, cmd: Cmd, seq: usize, uid: u32) -> Result<(), Failure> {
        if self.expunged.contains(&uid) {
            return fail(cmd, format!("UID {uid} came back after its EXPUNGE"));
        }
        match self.uids[seq - 1] {
            Some(known) if known != uid => {
                return fail(cmd, format!("message {seq} had UID {known}, now {uid}"));
            }
            _ => {}
        }
        let before = self.uids[..seq - 1].iter().rev().find_map(|u| *u);
        let after = self.uids[seq..].iter().find_map(|u| *u);
        if before.is_some_and(|b| b >= uid) || after.is_some_and(|a| a <= uid) {
            return fail(
                cmd,
                format!("UID {uid} at {seq} out of order ({before:?} before, {after:?} after)"),
            );
        }
        self.uids[seq - 1] = Some(uid);
        Ok(())
    }
}

/// The `UID n` item of a FETCH line.
fn fetch_uid(text: &str) -> Option<u32> {
    let at = text
        .find("(UID ")
        .map(|i| i + 5)
        .or_else(|| text.find(" UID ").map(|i| i + 5))?;
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The FLAGS of a FETCH line.
fn fetch_flags(text: &str) -> Option<&str> {
    let at = text.find("FLAGS (")? + 7;
    Some(&text[at..at + text[at..].find(')')?])
}

/// Numbers of the untagged `* SEARCH` lines.
fn search_results(reply: &Reply) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    let mut seen = false;
    for line in reply.untagged("SEARCH") {
        seen = true;
        for w in line.text["* SEARCH".len()..].split_whitespace() {
            out.push(w.parse().map_err(|_| format!("bad SEARCH item {w:?}"))?);
        }
    }
    if seen {
        Ok(out)
    } else {
        Err("no * SEARCH line".into())
    }
}

/// The value after `name ` in an untagged OK code of `reply`
/// (`* OK [UIDNEXT 5]`).
fn ok_code(reply: &Reply, name: &str) -> Option<u32> {
    reply.untagged("OK [").find_map(|l| {
        let rest = l.text.strip_prefix(&format!("* OK [{name} "))?;
        rest[..rest.find(']')?].parse().ok()
    })
}

/// Message `n` of a client: its words vary, a third are multipart
/// with an attachment, sizes from 1 to ~20 KiB.
pub fn message(rng: &mut StdRng, owner: &str, n: u64) -> Vec<u8> {
    // The subject's word by number, so that any 8 consecutive messages
    // hold each word.
    let word = WORDS[(n % WORDS.len() as u64) as usize];
    let other = WORDS[rng.gen_range(0..WORDS.len())];
    let mut m = format!(
        "From: Load <load@example.net>\r\nTo: {owner}@example.org\r\n\
         Subject: load {word} message {n}\r\nMessage-ID: <{n}.{}@load.example.net>\r\n\
         Date: Sun, 06 Dec 2026 09:00:00 +0000\r\nMIME-Version: 1.0\r\n",
        rng.r#gen::<u64>()
    );
    let lines = rng.gen_range(10..300);
    let mut text = String::new();
    for i in 0..lines {
        let _ = write!(
            text,
            "line {i} of message {n}: {other} {word} lorem ipsum dolor sit amet\r\n"
        );
    }
    if n.is_multiple_of(3) {
        let boundary = format!("b{n}x");
        let _ = write!(
            m,
            "Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
             --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\
             --{boundary}\r\nContent-Type: application/octet-stream; name=\"a.bin\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n"
        );
        for _ in 0..lines / 4 + 1 {
            let _ = write!(
                m,
                "{}\r\n",
                "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3".repeat(2)
            );
        }
        let _ = write!(m, "--{boundary}--\r\n");
    } else {
        let _ = write!(m, "Content-Type: text/plain; charset=utf-8\r\n\r\n{text}");
    }
    m.into_bytes()
}

/// One client of a `mix` run.
struct MixClient {
    id: usize,
    shared: Arc<Shared>,
    stats: Stats,
    rng: StdRng,
    login: String,
    password: String,
    conn: Option<Conn>,
    view: View,
    /// UIDVALIDITY and highest UID whose headers were fetched, of INBOX.
    inbox_seen: (u32, u32),
    /// UIDs of the messages this client copied or moved to Archive.
    archived: Vec<u32>,
    appended: u64,
    iteration: u64,
}

impl MixClient {
    /// Runs `command`, applies its untagged responses to the view, wants
    /// OK; counts the operation if it ended within the measure.
    async fn op(&mut self, cmd: Cmd, command: &str) -> Result<Reply, Failure> {
        let conn = self.conn.as_mut().expect("connected");
        let t = Instant::now();
        let reply = conn.run(cmd, command).await?;
        self.finish(cmd, t, reply)
    }

    fn finish(&mut self, cmd: Cmd, t: Instant, reply: Reply) -> Result<Reply, Failure> {
        if !reply.ok() {
            return fail(cmd, format!("{}: {}", cmd.name(), reply.tagged()));
        }
        self.view.apply(cmd, &reply)?;
        self.count(cmd, t);
        Ok(reply)
    }

    fn count(&mut self, cmd: Cmd, t: Instant) {
        if self.shared.running() {
            self.stats
                .commands
                .entry(cmd)
                .or_default()
                .latency
                .record(t.elapsed());
            self.shared.ops.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn connect(&mut self) -> Result<(), Failure> {
        let t = Instant::now();
        let conn = Conn::connect(&self.shared.options.server).await?;
        self.count(Cmd::Connect, t);
        self.conn = Some(conn);
        self.view = View::default();
        let reply = self
            .op(
                Cmd::Login,
                &format!("LOGIN {} {}", quote(&self.login), quote(&self.password)),
            )
            .await?;
        drop(reply);
        Ok(())
    }

    /// SELECT `mailbox`: a new view from its EXISTS, UIDVALIDITY, UIDNEXT.
    async fn select(&mut self, mailbox: &str) -> Result<(), Failure> {
        self.view = View::default();
        let reply = self.op(Cmd::Select, &format!("SELECT {mailbox}")).await?;
        if reply.untagged("").all(|l| !l.text.ends_with(" EXISTS")) {
            return fail(Cmd::Select, "no EXISTS");
        }
        let (Some(validity), Some(next)) =
            (ok_code(&reply, "UIDVALIDITY"), ok_code(&reply, "UIDNEXT"))
        else {
            return fail(Cmd::Select, "no UIDVALIDITY or UIDNEXT");
        };
        self.view.uidvalidity = validity;
        self.view.uidnext = next;
        Ok(())
    }

    /// `UID FETCH 1:* (UID FLAGS)`: afterwards every message's UID is known.
    async fn sync_flags(&mut self) -> Result<(), Failure> {
        let before = self.view.uids.len();
        let r = self
            .op(Cmd::FetchFlags, "UID FETCH 1:* (UID FLAGS)")
            .await?;
        // What `1:*` covered: the messages known before, and those
        // announced (EXISTS) ahead of the first FETCH line, less the ones
        // expunged. Mail announced after the results stays unknown until
        // the next sync.
        let mut covered = before;
        let mut expunged = 0;
        let mut fetching = false;
        for l in &r.lines {
            let mut w = l.text.split(' ').skip(1);
            match (w.next().and_then(|n| n.parse::<usize>().ok()), w.next()) {
                (Some(_), Some("FETCH")) => fetching = true,
                (Some(n), Some("EXISTS")) if !fetching => covered = covered.max(n),
                (Some(_), Some("EXPUNGE")) => expunged += 1,
                _ => {}
            }
        }
        let covered = covered.saturating_sub(expunged).min(self.view.uids.len());
        if let Some(seq) = self.view.uids[..covered].iter().position(Option::is_none) {
            let last: Vec<&str> = r
                .lines
                .iter()
                .rev()
                .take(4)
                .map(|l| l.text.as_str())
                .collect();
            return fail(
                Cmd::FetchFlags,
                format!(
                    "no UID for message {} of {} after UID FETCH 1:* (last lines, newest first: {last:?})",
                    seq + 1,
                    self.view.uids.len()
                ),
            );
        }
        Ok(())
    }

    fn random_uid(&mut self) -> Option<u32> {
        let known: Vec<u32> = self.view.uids.iter().filter_map(|u| *u).collect();
        (!known.is_empty()).then(|| known[self.rng.gen_range(0..known.len())])
    }

    async fn iteration(&mut self) -> Result<(), Failure> {
        self.iteration += 1;
        let keep_open = self.shared.options.keep_open;
        if self.conn.is_none() {
            self.connect().await?;
        }
        if self.iteration == 1 {
            // Archive may exist already (another client of the same user).
            let conn = self.conn.as_mut().expect("connected");
            let r = conn.run(Cmd::Status, "CREATE Archive").await?;
            if !r.ok() && !r.tagged().contains("ALREADYEXISTS") && !r.tagged().contains("exist") {
                return fail(Cmd::Status, format!("CREATE Archive: {}", r.tagged()));
            }
        }

        let r = self.op(Cmd::List, "LIST \"\" \"*\"").await?;
        if !r
            .untagged("LIST")
            .any(|l| l.text.ends_with(" INBOX") || l.text.ends_with(" \"INBOX\""))
        {
            return fail(Cmd::List, "no INBOX in LIST");
        }
        let r = self
            .op(Cmd::Status, "STATUS Archive (MESSAGES UIDNEXT UNSEEN)")
            .await?;
        if !r.untagged("STATUS").any(|l| l.text.contains("MESSAGES ")) {
            return fail(Cmd::Status, "no * STATUS with MESSAGES");
        }

        self.select("INBOX").await?;
        if self.inbox_seen.0 != self.view.uidvalidity {
            self.inbox_seen = (self.view.uidvalidity, 0);
        }
        self.sync_flags().await?;

        // New mail: what a client shows in its message list.
        let from = self.inbox_seen.1 + 1;
        let r = self
            .op(
                Cmd::FetchHeaders,
                &format!("UID FETCH {from}:* (UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE)"),
            )
            .await?;
        // Each new message has its headers in one FETCH line; others may
        // be unsolicited flag changes (another session's STORE).
        let fetches = || r.untagged("").filter(|l| l.text.contains(" FETCH ("));
        let full: HashSet<u32> = fetches()
            .filter(|l| l.text.contains("ENVELOPE (") && l.text.contains("BODYSTRUCTURE ("))
            .filter_map(|l| fetch_uid(&l.text))
            .collect();
        if let Some(l) =
            fetches().find(|l| fetch_uid(&l.text).is_some_and(|u| u >= from && !full.contains(&u)))
        {
            return fail(
                Cmd::FetchHeaders,
                format!("no ENVELOPE or BODYSTRUCTURE: {}", l.text),
            );
        }
        self.inbox_seen.1 = self.inbox_seen.1.max(self.view.max_uid());

        if let Some(uid) = self.random_uid() {
            let r = self
                .op(Cmd::FetchBody, &format!("UID FETCH {uid} (BODY.PEEK[])"))
                .await?;
            let body = r
                .untagged("")
                .find(|l| l.text.contains(" FETCH ") && fetch_uid(&l.text) == Some(uid));
            let alone = self.shared.options.clients <= self.shared.options.user_count;
            match body {
                Some(l) if l.literals.first().is_some_and(|b| !b.is_empty()) => {}
                // Another session of this user may have expunged it:
                // Dovecot then answers `BODY[] NIL` (RFC 2180 §4.1
                // leaves what to send for an expunged message to it).
                Some(l) if !alone && l.text.ends_with("BODY[] NIL)") => {}
                Some(l) => return fail(Cmd::FetchBody, format!("no body literal: {}", l.text)),
                None => {}
            }
        }

        if let Some(uid) = self.random_uid() {
            let (sign, add) = if self.iteration.is_multiple_of(2) {
                ('+', true)
            } else {
                ('-', false)
            };
            let r = self
                .op(
                    Cmd::Store,
                    &format!("UID STORE {uid} {sign}FLAGS (\\Flagged)"),
                )
                .await?;
            // Another session of the same user may change the flag too.
            let alone = self.shared.options.clients <= self.shared.options.user_count;
            for l in r.untagged("").filter(|_| alone) {
                if l.text.contains(" FETCH ") && fetch_uid(&l.text) == Some(uid) {
                    let flags = fetch_flags(&l.text).unwrap_or("");
                    if flags.contains("\\Flagged") != add {
                        return fail(Cmd::Store, format!("{sign}FLAGS answered {}", l.text));
                    }
                }
            }
        }

        let word = WORDS[self.rng.gen_range(0..WORDS.len())];
        let search = match self.iteration % 3 {
            0 => format!("UID SEARCH SUBJECT {word}"),
            1 => format!("UID SEARCH TEXT {word}"),
            _ => "UID SEARCH UNSEEN".to_owned(),
        };
        let r = self.op(Cmd::Search, &search).await?;
        let max = self.view.max_uid();
        // An EXPUNGE answered with the results may follow them.
        let known: HashSet<u32> = self.view.uids.iter().filter_map(|u| *u).collect();
        match search_results(&r) {
            Ok(uids) => {
                if let Some(u) = uids
                    .iter()
                    .find(|u| **u <= max && !known.contains(u) && !self.view.expunged.contains(u))
                {
                    return fail(
                        Cmd::Search,
                        format!("{search}: UID {u} is not in the mailbox"),
                    );
                }
            }
            Err(e) => return fail(Cmd::Search, format!("{search}: {e}")),
        }

        // APPEND one message of our own, see it arrive, then take it away.
        self.appended += 1;
        let n = (self.id as u64) << 32 | self.appended;
        let m = message(&mut self.rng, &self.login, n);
        let t = Instant::now();
        let reply = self
            .conn
            .as_mut()
            .expect("connected")
            .append("INBOX", &m)
            .await?;
        let reply = self.finish(Cmd::Append, t, reply)?;
        let Some([validity, uid]) = reply.code("APPENDUID").as_deref().map(|v| [v[0], v[1]]) else {
            return fail(Cmd::Append, format!("no APPENDUID: {}", reply.tagged()));
        };
        if validity != self.view.uidvalidity || uid < self.view.uidnext || uid <= max {
            return fail(
                Cmd::Append,
                format!(
                    "APPENDUID {validity} {uid} with UIDVALIDITY {}, UIDNEXT {}, UIDs up to {max}",
                    self.view.uidvalidity, self.view.uidnext
                ),
            );
        }
        self.op(Cmd::Noop, "NOOP").await?;
        self.sync_flags().await?;
        let Some(seq) = self.view.seq_of(uid) else {
            return fail(Cmd::Noop, format!("appended UID {uid} missing after NOOP"));
        };
        let archived = if self.iteration.is_multiple_of(2) {
            let r = self
                .op(Cmd::Move, &format!("UID MOVE {uid} Archive"))
                .await?;
            // COPYUID comes in an untagged OK for MOVE (RFC 6851 §4.3).
            let code = r
                .lines
                .iter()
                .find_map(|l| {
                    let i = l.text.find("[COPYUID ")? + 9;
                    let end = i + l.text[i..].find(']')?;
                    Some(
                        l.text[i..end]
                            .split(' ')
                            .map(str::to_owned)
                            .collect::<Vec<_>>(),
                    )
                })
                .unwrap_or_default();
            if self.view.seq_of(uid).is_some() {
                return fail(
                    Cmd::Move,
                    format!("UID {uid} (message {seq}) still there after MOVE"),
                );
            }
            code.get(2).and_then(|u| u.parse().ok())
        } else {
            let r = self
                .op(Cmd::Copy, &format!("UID COPY {uid} Archive"))
                .await?;
            let copied = r.code("COPYUID").and_then(|v| v.get(2).copied());
            self.op(
                Cmd::Store,
                &format!("UID STORE {uid} +FLAGS.SILENT (\\Deleted)"),
            )
            .await?;
            self.op(Cmd::Expunge, &format!("UID EXPUNGE {uid}")).await?;
            if self.view.seq_of(uid).is_some() {
                return fail(
                    Cmd::Expunge,
                    format!("UID {uid} still there after UID EXPUNGE"),
                );
            }
            copied
        };
        let Some(archived) = archived else {
            return fail(Cmd::Copy, "no COPYUID");
        };
        self.archived.push(archived);

        // Archive: delete what this client put there.
        self.select("Archive").await?;
        let before = self.view.uids.len();
        let set = self
            .archived
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        self.op(
            Cmd::Store,
            &format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)"),
        )
        .await?;
        let r = self.op(Cmd::Expunge, &format!("UID EXPUNGE {set}")).await?;
        let expunged = r
            .untagged("")
            .filter(|l| l.text.ends_with(" EXPUNGE"))
            .count();
        // Sessions of the same user may expunge theirs meanwhile.
        let alone = self.shared.options.clients <= self.shared.options.user_count;
        if expunged < self.archived.len() || (alone && expunged != self.archived.len()) {
            return fail(
                Cmd::Expunge,
                format!("UID EXPUNGE {set} in Archive ({before} messages) expunged {expunged}"),
            );
        }
        self.archived.clear();

        if !keep_open {
            let r = self.op(Cmd::Logout, "LOGOUT").await?;
            if r.untagged("BYE").next().is_none() {
                return fail(Cmd::Logout, "no * BYE");
            }
            self.conn = None;
        }
        Ok(())
    }

    async fn run(mut self) -> Stats {
        while self.shared.running() {
            if let Err(f) = self.iteration().await {
                self.record_error(&f);
                // Start over on a new connection, as a client would, a
                // little later (a failing server is not hammered).
                self.conn = None;
                self.archived.clear();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if let Some(conn) = self.conn.as_mut() {
            let _ = conn.run(Cmd::Logout, "LOGOUT").await;
        }
        self.stats
    }

    fn record_error(&mut self, f: &Failure) {
        self.stats.commands.entry(f.cmd).or_default().errors += 1;
        self.shared.error(self.id, f);
    }
}

/// The mailbox name of an untagged LIST line (`* LIST (flags) "/" name`),
/// unquoted; `None` for a name sent as a literal (never ours).
fn list_name(line: &str) -> Option<String> {
    let rest = line.strip_prefix("* LIST ")?;
    let rest = rest[rest.find(')')? + 1..].trim_start();
    // The hierarchy delimiter: NIL or one quoted character.
    let rest = match rest.strip_prefix("NIL") {
        Some(rest) => rest,
        None => {
            let quoted = rest.strip_prefix('"')?;
            let len = if quoted.starts_with('\\') { 2 } else { 1 };
            quoted.get(len..)?.strip_prefix('"')?
        }
    };
    let name = rest.trim();
    if name.starts_with('{') {
        return None;
    }
    Some(
        match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
            Some(quoted) => quoted.replace("\\\"", "\"").replace("\\\\", "\\"),
            None => name.to_owned(),
        },
    )
}

/// An IMAP astring for LOGIN: quoted.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// CPU seconds and resident memory of processes and their descendants.
pub mod procs {
    use std::collections::{HashMap, HashSet};

    /// The processes `roots` and all their descendants.
    pub fn tree(roots: &[u32]) -> Vec<u32> {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some(f) = stat_fields(pid) {
                    // Field 4 (index 1 after the comm): the parent.
                    if let Some(ppid) = f.get(1).and_then(|p| p.parse().ok()) {
                        children.entry(ppid).or_default().push(pid);
                    }
                }
            }
        }
        let mut seen: HashSet<u32> = HashSet::new();
        let mut todo: Vec<u32> = roots.to_vec();
        while let Some(p) = todo.pop() {
            if seen.insert(p) {
                todo.extend(children.get(&p).into_iter().flatten());
            }
        }
        seen.into_iter().collect()
    }

    /// The fields of `/proc/<pid>/stat` after the command name (field 3,
    /// the state, first).
    fn stat_fields(pid: u32) -> Option<Vec<String>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after = &stat[stat.rfind(')')? + 2..];
        Some(after.split(' ').map(str::to_owned).collect())
    }

    fn clock_ticks() -> f64 {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    }

    /// CPU seconds of the tree: utime + stime + cutime + cstime of each
    /// live process (cutime holds the children already reaped, which are
    /// no longer in the tree).
    pub fn cpu_seconds(roots: &[u32]) -> f64 {
        if roots.is_empty() {
            return 0.0;
        }
        let ticks: u64 = tree(roots)
            .into_iter()
            .filter_map(stat_fields)
            .map(|f| {
                // utime, stime, cutime, cstime: fields 14 to 17.
                (11..15)
                    .filter_map(|i| f.get(i)?.parse::<u64>().ok())
                    .sum::<u64>()
            })
            .sum();
        ticks as f64 / clock_ticks()
    }

    /// Memory of the tree, bytes: the proportional set size of each
    /// process (pages shared between Dovecot's processes counted once in
    /// all), its resident size where `smaps_rollup` cannot be read.
    pub fn rss(roots: &[u32]) -> u64 {
        let field = |file: &str, name: &str| -> Option<u64> {
            let text = std::fs::read_to_string(file).ok()?;
            let line = text.lines().find(|l| l.starts_with(name))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        };
        tree(roots)
            .into_iter()
            .filter_map(|pid| {
                field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
                    .or_else(|| field(&format!("/proc/{pid}/status"), "VmRSS:"))
            })
            .sum()
    }
}

/// The figures of a run.
#[derive(Default)]
pub struct Report {
    pub mode: String,
    pub clients: usize,
    pub seconds: f64,
    pub stats: Stats,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub cpu_seconds: f64,
    /// (seconds since start, operations, server CPU seconds) per interval.
    pub intervals: Vec<(f64, u64, f64)>,
    /// bigbox: (step, milliseconds, bytes).
    pub steps: Vec<(String, f64, u64)>,
    /// idle: resident memory of the server before and with the sessions.
    pub rss: Option<(u64, u64)>,
    /// idle: sessions open at the first measure, and the memory then.
    pub rss_tenth: Option<(usize, u64)>,
    /// fill: messages appended.
    pub appended: u64,
    /// `--warm-up`: users logged in once before the measure, and seconds.
    pub warm_up: Option<(usize, f64)>,
}

impl Report {
    pub fn ops(&self) -> u64 {
        self.stats.commands.values().map(|s| s.latency.count).sum()
    }

    pub fn ran(&self, cmd: Cmd) -> u64 {
        self.stats.commands.get(&cmd).map_or(0, |s| s.latency.count)
    }

    /// idle: bytes one more session in IDLE costs the server (between
    /// the first measure and the last).
    pub fn rss_per_connection(&self) -> Option<f64> {
        let ((_, with), (first, at_first)) = (self.rss?, self.rss_tenth?);
        let added = self.clients.checked_sub(first).filter(|n| *n > 0)?;
        Some((with as f64 - at_first as f64) / added as f64)
    }

    /// The table, human-readable.
    pub fn print(&self) {
        match self.mode.as_str() {
            "bigbox" => println!("mode bigbox, one client"),
            "fill" => println!("mode fill, {:.1} s", self.seconds),
            "idle" => println!("mode idle, {} sessions", self.clients),
            _ => println!(
                "mode {}, {} clients, {:.1} s",
                self.mode, self.clients, self.seconds
            ),
        }
        if !self.stats.commands.is_empty() {
            println!(
                "  {:14} {:>9} {:>10} {:>9} {:>9} {:>7}",
                "command", "ops", "ops/s", "p50 ms", "p99 ms", "errors"
            );
            for (cmd, s) in &self.stats.commands {
                println!(
                    "  {:14} {:>9} {:>10.1} {:>9.2} {:>9.2} {:>7}",
                    cmd.name(),
                    s.latency.count,
                    s.latency.count as f64 / self.seconds,
                    s.latency.quantile_ms(0.5),
                    s.latency.quantile_ms(0.99),
                    s.errors
                );
            }
            let mut all = Histogram::default();
            for s in self.stats.commands.values() {
                all.merge(&s.latency);
            }
            println!(
                "  {:14} {:>9} {:>10.1} {:>9.2} {:>9.2} {:>7}",
                "total",
                all.count,
                all.count as f64 / self.seconds,
                all.quantile_ms(0.5),
                all.quantile_ms(0.99),
                self.errors
            );
        }
        if self.cpu_seconds > 0.0 && self.ops() > 0 {
            println!(
                "  server CPU {:.2} s: {:.1} ops per CPU second",
                self.cpu_seconds,
                self.ops() as f64 / self.cpu_seconds
            );
        } else if self.cpu_seconds > 0.0 {
            println!("  server CPU {:.2} s", self.cpu_seconds);
        }
        for (t, ops, cpu) in &self.intervals {
            println!(
                "  interval ending at {t:6.1} s: {ops} ops, {cpu:.2} CPU s, {:.1} ops/CPU s",
                *ops as f64 / cpu.max(1e-9)
            );
        }
        for (step, ms, bytes) in &self.steps {
            let rate = if *bytes > 0 {
                format!(" ({:.1} MB/s)", *bytes as f64 / ms * 1e3 / 1e6)
            } else {
                String::new()
            };
            println!("  {step:40} {ms:10.1} ms{rate}");
        }
        if let (Some((before, with)), Some((first, at_first))) = (self.rss, self.rss_tenth) {
            let mib = |b: u64| b as f64 / 1048576.0;
            println!(
                "  server memory {:.1} MiB without sessions, {:.1} MiB with {first}, {:.1} MiB with {}",
                mib(before),
                mib(at_first),
                mib(with),
                self.clients
            );
            if let Some(per) = self.rss_per_connection() {
                println!("  {:.1} KiB per connection in IDLE", per / 1024.0);
            }
        }
        if self.appended > 0 {
            println!("  appended {} messages", self.appended);
        }
        if let Some((users, seconds)) = self.warm_up {
            println!(
                "  warm-up (untimed): {users} users logged in once in {seconds:.2} s ({:.1} first logins/s)",
                users as f64 / seconds.max(1e-9)
            );
        }
        println!("  errors: {}", self.errors);
        for e in &self.error_samples {
            println!("    {e}");
        }
    }

    pub fn json(&self) -> serde_json::Value {
        let commands: serde_json::Map<String, serde_json::Value> = self
            .stats
            .commands
            .iter()
            .map(|(c, s)| {
                (
                    c.name().to_owned(),
                    serde_json::json!({
                        "ops": s.latency.count,
                        "ops_per_s": s.latency.count as f64 / self.seconds,
                        "p50_ms": s.latency.quantile_ms(0.5),
                        "p99_ms": s.latency.quantile_ms(0.99),
                        "errors": s.errors,
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "mode": self.mode,
            "clients": self.clients,
            "seconds": self.seconds,
            "ops": self.ops(),
            "ops_per_s": self.ops() as f64 / self.seconds,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "cpu_seconds": self.cpu_seconds,
            "commands": commands,
            "intervals": self.intervals.iter().map(|(t, o, c)| serde_json::json!({"t": t, "ops": o, "cpu_seconds": c})).collect::<Vec<_>>(),
            "steps": self.steps.iter().map(|(s, ms, b)| serde_json::json!({"step": s, "ms": ms, "bytes": b})).collect::<Vec<_>>(),
            "rss_before": self.rss.map(|r| r.0),
            "rss_with": self.rss.map(|r| r.1),
            "rss_first_sessions": self.rss_tenth.map(|r| r.0),
            "rss_first": self.rss_tenth.map(|r| r.1),
            "rss_per_connection": self.rss_per_connection(),
            "appended": self.appended,
            "warm_up_users": self.warm_up.map(|w| w.0),
            "warm_up_seconds": self.warm_up.map(|w| w.1),
        })
    }
}

fn shared(options: &Options, seconds: f64) -> Arc<Shared> {
    Arc::new(Shared {
        options: options.clone(),
        deadline: Instant::now() + Duration::from_secs_f64(seconds),
        ops: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        error_samples: Mutex::new(Vec::new()),
    })
}

fn finish_report(mode: &str, options: &Options, shared: &Shared, stats: Stats) -> Report {
    Report {
        mode: mode.to_owned(),
        clients: options.clients,
        seconds: options.seconds,
        stats,
        errors: shared.errors.load(Ordering::Relaxed),
        error_samples: shared.error_samples.lock().unwrap().clone(),
        ..Report::default()
    }
}

/// Runs `options.mode` to its end.
pub async fn run(options: &Options) -> Report {
    match options.mode.as_str() {
        "mix" => timed(options, Workload::Mix).await,
        "logins" => timed(options, Workload::Logins).await,
        "fill" => fill(options).await,
        "bigbox" => bigbox(options).await,
        "idle" => idle(options).await,
        other => {
            let mut r = Report {
                mode: other.to_owned(),
                errors: 1,
                ..Report::default()
            };
            r.error_samples.push(format!("unknown mode {other:?}"));
            r
        }
    }
}

#[derive(Clone, Copy)]
enum Workload {
    Mix,
    Logins,
}

/// `mix` and `logins`: clients until the deadline, with the CPU series.
async fn timed(options: &Options, workload: Workload) -> Report {
    let warm_up = if options.warm_up {
        Some(warm_up(options).await)
    } else {
        None
    };
    let shared = shared(options, options.seconds);
    let started = Instant::now();
    let cpu_start = procs::cpu_seconds(&options.server_pids);
    let intervals = Arc::new(Mutex::new(Vec::new()));
    let sampler = (options.interval > 0.0).then(|| {
        let (shared, intervals, pids) = (
            shared.clone(),
            intervals.clone(),
            options.server_pids.clone(),
        );
        let every = Duration::from_secs_f64(options.interval);
        tokio::spawn(async move {
            let (mut ops, mut cpu) = (0, procs::cpu_seconds(&pids));
            let mut next = started + every;
            while next <= shared.deadline + every / 2 {
                tokio::time::sleep_until(next.into()).await;
                let (o, c) = (
                    shared.ops.load(Ordering::Relaxed),
                    procs::cpu_seconds(&pids),
                );
                intervals
                    .lock()
                    .unwrap()
                    .push((started.elapsed().as_secs_f64(), o - ops, c - cpu));
                (ops, cpu) = (o, c);
                next += every;
            }
        })
    });
    let mut tasks = Vec::new();
    for id in 0..options.clients {
        let (login, password) = options.user(id);
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            match workload {
                Workload::Mix => {
                    MixClient {
                        id,
                        rng: StdRng::seed_from_u64(id as u64),
                        shared,
                        stats: Stats::default(),
                        login,
                        password,
                        conn: None,
                        view: View::default(),
                        inbox_seen: (0, 0),
                        archived: Vec::new(),
                        appended: 0,
                        iteration: 0,
                    }
                    .run()
                    .await
                }
                Workload::Logins => login_loop(id, shared, login, password).await,
            }
        }));
    }
    // CPU at the deadline, while the clients still run.
    tokio::time::sleep_until(shared.deadline.into()).await;
    let cpu_end = procs::cpu_seconds(&options.server_pids);
    let mut stats = Stats::default();
    for t in tasks {
        match t.await {
            Ok(s) => stats.merge(&s),
            Err(e) => shared.error(
                usize::MAX,
                &Failure {
                    cmd: Cmd::Connect,
                    detail: format!("client task: {e}"),
                },
            ),
        }
    }
    if let Some(s) = sampler {
        let _ = s.await;
    }
    let mode = match workload {
        Workload::Mix if options.keep_open => "mix (sessions kept open)",
        Workload::Mix => "mix",
        Workload::Logins => "logins",
    };
    let mut report = finish_report(mode, options, &shared, stats);
    report.cpu_seconds = cpu_end - cpu_start;
    report.intervals = intervals.lock().unwrap().clone();
    if let Some((users, seconds, failures)) = warm_up {
        report.warm_up = Some((users, seconds));
        report.errors += failures.len() as u64;
        let room = ERROR_SAMPLES.saturating_sub(report.error_samples.len());
        report.error_samples.extend(
            failures
                .into_iter()
                .take(room)
                .map(|f| format!("warm-up: {f}")),
        );
    }
    report
}

/// `--warm-up`: every user logged in once, its mailboxes listed and each
/// examined, then logged out, `--clients` at once. Returns the users, the
/// seconds it took, and the failures.
async fn warm_up(options: &Options) -> (usize, f64, Vec<String>) {
    let users = options.user_count.max(1);
    let started = Instant::now();
    let failures: Vec<String> = futures::stream::iter(0..users)
        .map(|user| async move {
            let mut conn = session(options, user).await?;
            // What a client does at its first connection: list the
            // mailboxes and look into each (the server opens them).
            let r = conn.run(Cmd::List, "LIST \"\" \"*\"").await?;
            if !r.ok() {
                return fail(Cmd::List, r.tagged().to_owned());
            }
            let names: Vec<String> = r
                .untagged("LIST")
                .filter_map(|l| list_name(&l.text))
                .collect();
            for name in names {
                let r = conn
                    .run(Cmd::Select, &format!("EXAMINE {}", quote(&name)))
                    .await?;
                if !r.ok() {
                    return fail(Cmd::Select, format!("EXAMINE {name}: {}", r.tagged()));
                }
            }
            let r = conn.run(Cmd::Logout, "LOGOUT").await?;
            if !r.ok() {
                return fail(Cmd::Logout, r.tagged().to_owned());
            }
            Ok(())
        })
        .buffer_unordered(options.clients.max(1))
        .filter_map(|r: Result<(), Failure>| async move {
            r.err().map(|f| format!("{:?}: {}", f.cmd, f.detail))
        })
        .collect()
        .await;
    (users, started.elapsed().as_secs_f64(), failures)
}

async fn login_loop(id: usize, shared: Arc<Shared>, login: String, password: String) -> Stats {
    let mut stats = Stats::default();
    let count = |stats: &mut Stats, cmd: Cmd, t: Instant| {
        if shared.running() {
            stats
                .commands
                .entry(cmd)
                .or_default()
                .latency
                .record(t.elapsed());
            shared.ops.fetch_add(1, Ordering::Relaxed);
        }
    };
    while shared.running() {
        let result: Result<(), Failure> = async {
            let t = Instant::now();
            let mut conn = Conn::connect(&shared.options.server).await?;
            count(&mut stats, Cmd::Connect, t);
            let t = Instant::now();
            let r = conn
                .run(
                    Cmd::Login,
                    &format!("LOGIN {} {}", quote(&login), quote(&password)),
                )
                .await?;
            if !r.ok() {
                return fail(Cmd::Login, r.tagged().to_owned());
            }
            count(&mut stats, Cmd::Login, t);
            let t = Instant::now();
            let r = conn.run(Cmd::Logout, "LOGOUT").await?;
            if !r.ok() || r.untagged("BYE").next().is_none() {
                return fail(Cmd::Logout, r.tagged().to_owned());
            }
            count(&mut stats, Cmd::Logout, t);
            Ok(())
        }
        .await;
        if let Err(f) = result {
            stats.commands.entry(f.cmd).or_default().errors += 1;
            shared.error(id, &f);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stats
}

/// A logged-in connection, or the failure.
async fn session(options: &Options, user: usize) -> Result<Conn, Failure> {
    let (login, password) = options.user(user);
    let mut conn = Conn::connect(&options.server).await?;
    let r = conn
        .run(
            Cmd::Login,
            &format!("LOGIN {} {}", quote(&login), quote(&password)),
        )
        .await?;
    if !r.ok() {
        return fail(Cmd::Login, format!("{login}: {}", r.tagged()));
    }
    Ok(conn)
}

/// `fill`: every user's INBOX up to `options.messages` messages.
async fn fill(options: &Options) -> Report {
    let shared = shared(options, 0.0);
    let started = Instant::now();
    let mut appended = 0;
    for user in 0..options.user_count.max(1) {
        let exists = async {
            let mut conn = session(options, user).await?;
            let r = conn.run(Cmd::Select, "SELECT INBOX").await?;
            if !r.ok() {
                return fail(Cmd::Select, r.tagged().to_owned());
            }
            let exists = r.untagged("").find_map(|l| {
                l.text
                    .strip_prefix("* ")?
                    .strip_suffix(" EXISTS")?
                    .parse()
                    .ok()
            });
            let _ = conn.run(Cmd::Logout, "LOGOUT").await;
            exists.map_or_else(|| fail(Cmd::Select, "no EXISTS"), Ok)
        }
        .await;
        let exists: usize = match exists {
            Ok(n) => n,
            Err(f) => {
                shared.error(user, &f);
                continue;
            }
        };
        let missing = options.messages.saturating_sub(exists);
        let workers = options.clients.clamp(1, missing.max(1));
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (options, shared) = (options.clone(), shared.clone());
            let share = (missing + workers - 1 - w) / workers;
            tasks.push(tokio::spawn(async move {
                let result: Result<u64, Failure> = async {
                    if share == 0 {
                        return Ok(0);
                    }
                    let mut conn = session(&options, user).await?;
                    let (login, _) = options.user(user);
                    let mut rng = StdRng::seed_from_u64((user * 1000 + w) as u64);
                    for i in 0..share {
                        let m = message(&mut rng, &login, (exists + w + i * workers) as u64);
                        let r = conn.append("INBOX", &m).await?;
                        if !r.ok() {
                            return fail(Cmd::Append, r.tagged().to_owned());
                        }
                    }
                    let _ = conn.run(Cmd::Logout, "LOGOUT").await;
                    Ok(share as u64)
                }
                .await;
                result.unwrap_or_else(|f| {
                    shared.error(user, &f);
                    0
                })
            }));
        }
        for t in tasks {
            appended += t.await.unwrap_or(0);
        }
    }
    let mut report = finish_report("fill", options, &shared, Stats::default());
    report.seconds = started.elapsed().as_secs_f64();
    report.appended = appended;
    report
}

/// `bigbox`: the timed steps on the first user's INBOX.
async fn bigbox(options: &Options) -> Report {
    let shared = shared(options, 0.0);
    let mut steps = Vec::new();
    let cpu_start = procs::cpu_seconds(&options.server_pids);
    let result: Result<(), Failure> = async {
        let mut conn = session(options, 0).await?;
        let mut step = async |conn: &mut Conn, cmd: Cmd, name: &str, command: &str| {
            let t = Instant::now();
            let r = conn.run(cmd, command).await?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if !r.ok() {
                return fail(cmd, format!("{command}: {}", r.tagged()));
            }
            let bytes: usize = r.lines.iter().flat_map(|l| &l.literals).map(Vec::len).sum();
            steps.push((name.to_owned(), ms, bytes as u64));
            Ok(r)
        };
        let r = step(
            &mut conn,
            Cmd::Select,
            "SELECT INBOX (cold)",
            "SELECT INBOX",
        )
        .await?;
        let exists: usize = r
            .untagged("")
            .find_map(|l| {
                l.text
                    .strip_prefix("* ")?
                    .strip_suffix(" EXISTS")?
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        if exists < options.messages {
            return fail(
                Cmd::Select,
                format!(
                    "INBOX holds {exists} messages, fewer than {}",
                    options.messages
                ),
            );
        }
        let r = step(
            &mut conn,
            Cmd::FetchHeaders,
            "FETCH 1:* (UID FLAGS ENVELOPE)",
            "FETCH 1:* (UID FLAGS ENVELOPE)",
        )
        .await?;
        let fetched = r
            .untagged("")
            .filter(|l| l.text.contains("ENVELOPE ("))
            .count();
        if fetched != exists {
            return fail(
                Cmd::FetchHeaders,
                format!("{fetched} envelopes for {exists} messages"),
            );
        }
        for (name, command) in [
            ("SEARCH SUBJECT", "SEARCH SUBJECT bravo"),
            ("SEARCH TEXT", "SEARCH TEXT charlie"),
        ] {
            let r = step(&mut conn, Cmd::Search, name, command).await?;
            let hits = search_results(&r).map_err(|e| Failure {
                cmd: Cmd::Search,
                detail: e,
            })?;
            if hits.is_empty() {
                return fail(Cmd::Search, format!("{command} found nothing"));
            }
        }
        let n = options.download.min(exists);
        let name = format!("FETCH 1:{n} BODY.PEEK[]");
        let r = step(
            &mut conn,
            Cmd::FetchBody,
            &name,
            &format!("FETCH 1:{n} BODY.PEEK[]"),
        )
        .await?;
        let bodies = r.untagged("").filter(|l| !l.literals.is_empty()).count();
        if bodies != n {
            return fail(Cmd::FetchBody, format!("{bodies} bodies of {n}"));
        }
        let _ = conn.run(Cmd::Logout, "LOGOUT").await;
        Ok(())
    }
    .await;
    if let Err(f) = result {
        shared.error(0, &f);
    }
    let mut report = finish_report("bigbox", options, &shared, Stats::default());
    report.clients = 1;
    report.cpu_seconds = procs::cpu_seconds(&options.server_pids) - cpu_start;
    report.steps = steps;
    report
}

/// Opens sessions `ids` (LOGIN, SELECT INBOX, IDLE), 50 logins at a time;
/// the ones that reached IDLE.
async fn open_idle(
    options: &Options,
    shared: &Arc<Shared>,
    ids: std::ops::Range<usize>,
) -> Vec<Conn> {
    let gate = Arc::new(tokio::sync::Semaphore::new(50));
    let mut tasks = Vec::new();
    for id in ids {
        let (options, gate, shared) = (options.clone(), gate.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            let result: Result<Conn, Failure> = async {
                let _permit = gate.acquire().await.expect("open");
                let mut conn = session(&options, id).await?;
                let r = conn.run(Cmd::Select, "SELECT INBOX").await?;
                if !r.ok() {
                    return fail(Cmd::Select, r.tagged().to_owned());
                }
                let tag = conn.tag();
                conn.send(Cmd::Idle, format!("{tag} IDLE\r\n").as_bytes())
                    .await?;
                loop {
                    let l = conn.line(Cmd::Idle).await?;
                    if l.text.starts_with('+') {
                        return Ok(conn);
                    }
                    if l.text.starts_with(&format!("{tag} ")) {
                        return fail(Cmd::Idle, l.text);
                    }
                }
            }
            .await;
            result.map_err(|f| shared.error(id, &f)).ok()
        }));
    }
    let mut conns = Vec::new();
    for t in tasks {
        if let Ok(Some(c)) = t.await {
            conns.push(c);
        }
    }
    conns
}

/// `idle`: a tenth of `clients` sessions in IDLE, the server's memory,
/// then all of them and the memory again: the rise between the two,
/// divided by the sessions added, is what one more idle connection costs
/// (every user has sessions at both points when users are at most a
/// tenth of the sessions, so what a server keeps per user is left out).
async fn idle(options: &Options) -> Report {
    let shared = shared(options, 0.0);
    // Let the server settle (buffers freed after the logins).
    let settle = Duration::from_secs_f64(options.seconds.min(5.0));
    let rss_before = procs::rss(&options.server_pids);
    let tenth = (options.clients / 10).max(1).min(options.clients);
    let mut conns = open_idle(options, &shared, 0..tenth).await;
    tokio::time::sleep(settle).await;
    let rss_tenth = procs::rss(&options.server_pids);
    let first = conns.len();
    conns.extend(open_idle(options, &shared, tenth..options.clients).await);
    tokio::time::sleep(settle).await;
    let rss_with = procs::rss(&options.server_pids);
    let open = conns.len();
    for mut c in conns {
        let _ = c.send(Cmd::Idle, b"DONE\r\n").await;
    }
    let mut report = finish_report("idle", options, &shared, Stats::default());
    report.clients = open;
    report.rss = Some((rss_before, rss_with));
    report.rss_tenth = Some((first, rss_tenth));
    report
}

/// The checks themselves, on answers a faulty server could send.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_names_are_read_quoted_or_not() {
        assert_eq!(
            list_name(r#"* LIST (\HasNoChildren) "/" INBOX"#).as_deref(),
            Some("INBOX")
        );
        assert_eq!(
            list_name(r#"* LIST () "." "Archive""#).as_deref(),
            Some("Archive")
        );
        assert_eq!(
            list_name(r#"* LIST () NIL "a \"b\" c""#).as_deref(),
            Some(r#"a "b" c"#)
        );
        assert_eq!(list_name(r#"* LIST () "\\" Sent"#).as_deref(), Some("Sent"));
        assert_eq!(list_name(r#"* LIST () "/" {5}"#), None);
        assert_eq!(list_name("* LSUB () \"/\" INBOX"), None);
    }

    fn reply(lines: &[&str]) -> Reply {
        Reply {
            lines: lines
                .iter()
                .map(|l| Line {
                    text: (*l).to_owned(),
                    literals: Vec::new(),
                })
                .collect(),
        }
    }

    fn view(uids: &[u32]) -> View {
        let mut v = View::default();
        v.apply(Cmd::Select, &reply(&[&format!("* {} EXISTS", uids.len())]))
            .unwrap();
        for (i, uid) in uids.iter().enumerate() {
            v.learn(Cmd::FetchFlags, i + 1, *uid).unwrap();
        }
        v
    }

    fn error(v: &mut View, lines: &[&str]) -> String {
        v.apply(Cmd::Noop, &reply(lines))
            .expect_err("an inconsistency")
            .detail
    }

    #[test]
    fn exists_going_down_without_expunge_is_an_error() {
        let mut v = view(&[3, 5, 9]);
        assert!(error(&mut v, &["* 2 EXISTS", "L1 OK"]).contains("without EXPUNGE"));
        let mut v = view(&[3, 5, 9]);
        v.apply(Cmd::Noop, &reply(&["* 2 EXPUNGE", "* 2 EXISTS", "L1 OK"]))
            .unwrap();
        assert_eq!(v.uids, [Some(3), Some(9)]);
    }

    #[test]
    fn a_message_keeps_its_uid_and_uids_ascend() {
        let mut v = view(&[3, 5, 9]);
        assert!(error(&mut v, &["* 2 FETCH (UID 6 FLAGS ())"]).contains("had UID 5"));
        let mut v = view(&[3, 5, 9]);
        v.apply(Cmd::Noop, &reply(&["* 4 EXISTS"])).unwrap();
        assert!(error(&mut v, &["* 4 FETCH (FLAGS () UID 8)"]).contains("out of order"));
        let mut v = view(&[3, 5, 9]);
        assert!(error(&mut v, &["* 4 FETCH (UID 10)"]).contains("FETCH of message 4 of 3"));
        assert!(error(&mut v, &["* 0 EXPUNGE"]).contains("EXPUNGE 0"));
    }

    #[test]
    fn an_expunged_uid_never_comes_back() {
        let mut v = view(&[3, 5, 9]);
        v.apply(Cmd::Noop, &reply(&["* 2 EXPUNGE", "* 3 EXISTS"]))
            .unwrap();
        assert!(error(&mut v, &["* 3 FETCH (UID 5 FLAGS ())"]).contains("came back"));
    }

    #[test]
    fn fetch_search_and_response_codes_parse() {
        assert_eq!(
            fetch_uid("* 1 FETCH (FLAGS (\\Seen) UID 42 BODY[] {3}"),
            Some(42)
        );
        assert_eq!(
            fetch_flags("* 1 FETCH (UID 4 FLAGS (\\Seen \\Flagged))"),
            Some("\\Seen \\Flagged")
        );
        let r = reply(&["* SEARCH 1 4 9", "L3 OK [APPENDUID 7 12] done"]);
        assert_eq!(search_results(&r).unwrap(), [1, 4, 9]);
        assert_eq!(r.code("APPENDUID"), Some(vec![7, 12]));
        assert!(search_results(&reply(&["L3 OK"])).is_err());
    }
}
