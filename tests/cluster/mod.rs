//! Several real `facteur serve` processes on one store, for the multi-site
//! tests (tests/multisite.rs) and the renumbering measurement
//! (benches/multisite.rs): the store (an `fs` directory or one node of the
//! 3-node Garage of scripts/garage-cluster.sh), a site (users file, cluster
//! secret) shared by the instances, the instances themselves (started,
//! SIGKILLed, restarted; ports chosen by the kernel and read from the
//! lines `serve` prints), and small blocking IMAP and LMTP clients.

#![allow(dead_code)] // the test and the bench each use their own part

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_facteur");
pub const PASSWORD: &str = "multisite password";
/// Upper bound of any single wait on a server; a hang fails instead of
/// blocking the suite.
pub const WAIT: Duration = Duration::from_secs(90);
/// How often an instance polls the store for other instances' changes
/// (`AccountConfig::poll_interval`, not configurable).
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Where the instances keep their data: the `[store]` section they get.
#[derive(Clone, Debug)]
pub enum Backend {
    Fs(PathBuf),
    S3 {
        endpoint: String,
        region: String,
        bucket: String,
        access_key: String,
        secret_key: String,
    },
}

impl Backend {
    fn section(&self) -> String {
        match self {
            Backend::Fs(path) => format!("[store]\nbackend = \"fs\"\npath = {:?}\n", path),
            Backend::S3 {
                endpoint,
                region,
                bucket,
                access_key,
                secret_key,
            } => format!(
                "[store]\nbackend = \"s3\"\n[store.s3]\nendpoint = {endpoint:?}\n\
                 region = {region:?}\nbucket = {bucket:?}\naccess_key_id = {access_key:?}\n\
                 secret_access_key = {secret_key:?}\n"
            ),
        }
    }
}

/// The 3-node Garage of scripts/garage-cluster.sh, from the
/// `FACTEUR_TEST_GARAGE_CLUSTER_*` variables it prints.
pub struct GarageCluster {
    endpoints: Vec<String>,
    region: String,
    bucket: String,
    access_key: String,
    secret_key: String,
    dir: String,
    script: String,
}

impl GarageCluster {
    /// The cluster, or `None` (with a notice) when the variables are not
    /// set; panics then if `FACTEUR_REQUIRE_GARAGE_CLUSTER=1` (CI).
    pub fn from_env(test: &str) -> Option<GarageCluster> {
        let var = |name: &str| std::env::var(format!("FACTEUR_TEST_GARAGE_CLUSTER_{name}")).ok();
        let cluster = (|| {
            Some(GarageCluster {
                endpoints: var("ENDPOINTS")?
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
                region: var("REGION").unwrap_or_else(|| "garage".into()),
                bucket: var("BUCKET")?,
                access_key: var("ACCESS_KEY")?,
                secret_key: var("SECRET_KEY")?,
                dir: var("DIR")?,
                script: var("SCRIPT")?,
            })
        })();
        if cluster.is_none() {
            assert!(
                std::env::var("FACTEUR_REQUIRE_GARAGE_CLUSTER").as_deref() != Ok("1"),
                "FACTEUR_REQUIRE_GARAGE_CLUSTER=1 but FACTEUR_TEST_GARAGE_CLUSTER_* are not set"
            );
            eprintln!(
                "notice: {test} skipped (no FACTEUR_TEST_GARAGE_CLUSTER_*; \
                 eval \"$(scripts/garage-cluster.sh start DIR)\")"
            );
        }
        cluster
    }

    /// The store seen through node `n` (1-3)'s S3 API.
    pub fn node(&self, n: usize) -> Backend {
        Backend::S3 {
            endpoint: self.endpoints[n - 1].clone(),
            region: self.region.clone(),
            bucket: self.bucket.clone(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
        }
    }

    fn script(&self, action: &str, n: Option<usize>) {
        let out = Command::new(&self.script)
            .args([action, &self.dir])
            .args(n.map(|n| n.to_string()))
            .stdin(Stdio::null())
            .output()
            .expect("scripts/garage-cluster.sh runs");
        assert!(
            out.status.success(),
            "garage-cluster.sh {action} {n:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILLs node `n`; returns once it is gone.
    pub fn kill(&self, n: usize) {
        self.script("kill", Some(n));
    }

    /// Starts node `n` again, with its data; returns once its CLI answers
    /// (the other nodes reconnect to it 5-30 s later).
    pub fn restart(&self, n: usize) {
        self.script("restart", Some(n));
    }

    /// Waits until every node sees the three nodes healthy (a node
    /// restarted by an earlier test is reconnected to).
    pub fn wait_healthy(&self) {
        self.script("wait-healthy", None);
    }
}

/// Restarts the Garage nodes it holds when dropped, so that a failing test
/// does not leave the cluster down for the next one.
pub struct Downed<'a> {
    pub cluster: &'a GarageCluster,
    pub nodes: Vec<usize>,
}

impl Downed<'_> {
    pub fn kill<'a>(cluster: &'a GarageCluster, nodes: &[usize]) -> Downed<'a> {
        for n in nodes {
            cluster.kill(*n);
        }
        Downed {
            cluster,
            nodes: nodes.to_vec(),
        }
    }

    /// Restarts every node held, now.
    pub fn restore(mut self) {
        for n in std::mem::take(&mut self.nodes) {
            self.cluster.restart(n);
        }
    }
}

impl Drop for Downed<'_> {
    fn drop(&mut self) {
        for n in std::mem::take(&mut self.nodes) {
            self.cluster.restart(n);
        }
    }
}

/// What the instances of one deployment share: a users file and a
/// cluster secret (random, so runs sharing a bucket never meet).
pub struct Site {
    pub dir: tempfile::TempDir,
    secret: String,
    admin: PathBuf,
}

impl Site {
    /// A site whose administrative commands (`user add`) go to `backend`.
    pub fn new(backend: &Backend) -> Site {
        Site::in_dir(tempfile::tempdir().unwrap(), backend)
    }

    fn in_dir(dir: tempfile::TempDir, backend: &Backend) -> Site {
        let secret = format!("{:032x}", rand::random::<u128>());
        let site = Site {
            admin: dir.path().join("admin.toml"),
            dir,
            secret,
        };
        std::fs::write(&site.admin, site.config(backend, "[lmtp]\nlisten = []\n")).unwrap();
        site
    }

    fn config(&self, backend: &Backend, listeners: &str) -> String {
        format!(
            "cluster_secret = \"{}\"\n{}\
             [directory]\nbackend = \"static\"\nusers_file = {:?}\n\
             [crypto]\nrecovery_key = false\n\
             [crypto.argon2]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\n\
             {listeners}",
            self.secret,
            backend.section(),
            self.dir.path().join("users.toml"),
        )
    }

    /// A site with an `fs` store in its directory, and that store.
    pub fn with_fs() -> (Site, Backend) {
        let dir = tempfile::tempdir().unwrap();
        let store = Backend::Fs(dir.path().join("store"));
        std::fs::create_dir_all(dir.path().join("store")).unwrap();
        (Site::in_dir(dir, &store), store)
    }

    /// Creates `login` (its address is the login) with [`PASSWORD`].
    pub fn add_user(&self, login: &str) {
        let mut add = Command::new(BIN)
            .args([
                "--config",
                self.admin.to_str().unwrap(),
                "user",
                "add",
                login,
            ])
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(add.stdin.take().unwrap(), "{PASSWORD}").unwrap();
        let out = add.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "user add {login}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts instance `name` of this site on `backend`.
    pub fn instance(&self, name: &str, backend: &Backend) -> Instance {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("facteur.toml");
        std::fs::write(
            &config,
            self.config(
                backend,
                "[lmtp]\nlisten = [\"127.0.0.1:0\"]\n\
                 [imap]\nstarttls_listen = [\"127.0.0.1:0\"]\ntls_listen = []\n",
            ),
        )
        .unwrap();
        let mut instance = Instance {
            name: name.to_owned(),
            dir,
            config,
            child: None,
            imap: SocketAddr::from(([127, 0, 0, 1], 0)),
            lmtp: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        instance.serve();
        instance
    }
}

/// A running `facteur serve`, SIGKILLed on drop.
pub struct Instance {
    pub name: String,
    dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    /// IMAP (plaintext; LOGIN is allowed on loopback).
    pub imap: SocketAddr,
    pub lmtp: SocketAddr,
}

impl Instance {
    /// Starts `serve` and learns its ports (new ones at each start).
    pub fn serve(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let mut child = Command::new(BIN)
            .args(["--config", self.config.to_str().unwrap(), "serve"])
            .args(["--http", "127.0.0.1:0"])
            .current_dir(&self.dir)
            .env("RUST_LOG", "facteur=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let lines = read_until_ready(&mut child);
        let find = |prefix: &str| -> SocketAddr {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no {prefix:?} in {lines:?}"))
                .parse()
                .unwrap()
        };
        self.imap = find("facteur: imap (starttls) listening on ");
        self.lmtp = find("facteur: lmtp listening on ");
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown, whatever is in flight is cut.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then SIGKILL if it has not stopped within 20 s.
    pub fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A fresh process on the same configuration.
    pub fn restart(&mut self) {
        self.terminate();
        self.serve();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// A new IMAP session logged in as `login`.
    pub fn login(&self, login: &str) -> Imap {
        let mut c = Imap::connect(self.imap);
        let r = c.run(&format!("LOGIN {login} \"{PASSWORD}\""));
        assert!(r.ok(), "LOGIN on {}: {r:?}", self.name);
        c
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_until_ready(child: &mut Child) -> Vec<String> {
    let (tx, rx) = mpsc::channel();
    let out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = vec![];
    loop {
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("serve never got ready: {lines:?}"));
        let ready = line == "facteur: ready";
        lines.push(line);
        if ready {
            return lines;
        }
    }
}

/// Polls `f` every 50 ms until it gives a value; panics with `what` and
/// the last failure after `limit`.
pub fn wait_until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not so after {limit:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A message with Message-ID `<id@multisite.test>`, the key every check
/// matches on.
pub fn message(id: &str) -> String {
    format!(
        "From: Tester <tester@example.org>\r\nTo: user@example.org\r\n\
         Subject: message {id}\r\nMessage-ID: <{id}@multisite.test>\r\n\
         Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nBody of {id}.\r\n"
    )
}

/// The lines an IMAP command got, the tagged one last.
#[derive(Debug, Clone)]
pub struct Reply {
    pub lines: Vec<String>,
}

impl Reply {
    pub fn tagged(&self) -> &str {
        self.lines.last().map(String::as_str).unwrap_or("")
    }
    pub fn ok(&self) -> bool {
        self.tagged().split(' ').nth(1) == Some("OK")
    }
    pub fn no(&self) -> bool {
        self.tagged().split(' ').nth(1) == Some("NO")
    }
    pub fn has(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.contains(needle))
    }
    /// The arguments of response code `[NAME args]` in any line.
    pub fn code(&self, name: &str) -> Option<String> {
        let open = format!("[{name} ");
        self.lines.iter().find_map(|l| {
            let rest = &l[l.find(&open)? + open.len()..];
            Some(rest[..rest.find(']')?].to_owned())
        })
    }
    /// A numeric response code (`UIDVALIDITY`, `UIDNEXT`, `HIGHESTMODSEQ`).
    pub fn number(&self, name: &str) -> Option<u64> {
        self.code(name)?.parse().ok()
    }
    /// The UID of `[APPENDUID v uid]`.
    pub fn append_uid(&self) -> Option<(u32, u32)> {
        let code = self.code("APPENDUID")?;
        let mut it = code.split(' ');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    }
    /// `* n EXISTS`, the last one.
    pub fn exists(&self) -> Option<u32> {
        self.lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("* ")?.strip_suffix(" EXISTS")?.parse().ok())
    }
}

/// A blocking IMAP client on one connection (tests only: every read is
/// bounded by [`WAIT`]).
pub struct Imap {
    r: BufReader<TcpStream>,
    next_tag: u32,
}

/// A connection failure, for loops that tolerate them.
pub type Io<T> = std::io::Result<T>;

impl Imap {
    pub fn connect(addr: SocketAddr) -> Imap {
        Imap::try_connect(addr).unwrap_or_else(|e| panic!("IMAP connect to {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr) -> Io<Imap> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(WAIT))?;
        s.set_nodelay(true)?;
        let mut c = Imap {
            r: BufReader::new(s),
            next_tag: 1,
        };
        let greeting = c.line()?;
        if !greeting.starts_with("* OK") {
            return Err(std::io::Error::other(format!("greeting {greeting:?}")));
        }
        Ok(c)
    }

    /// One response line; a literal's data is appended to its line.
    fn line(&mut self) -> Io<String> {
        let mut line = Vec::new();
        loop {
            let mut part = Vec::new();
            self.r.read_until(b'\n', &mut part)?;
            if part.is_empty() {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if part.ends_with(b"\r\n") {
                part.truncate(part.len() - 2);
            }
            let literal = literal_size(&part);
            line.extend_from_slice(&part);
            match literal {
                Some(n) => {
                    let mut data = vec![0; n];
                    self.r.read_exact(&mut data)?;
                    line.extend_from_slice(&data);
                }
                None => return Ok(String::from_utf8_lossy(&line).into_owned()),
            }
        }
    }

    fn until_tagged(&mut self, tag: &str) -> Io<Reply> {
        let mut lines = Vec::new();
        loop {
            let line = self.line()?;
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                return Ok(Reply { lines });
            }
        }
    }

    fn tag(&mut self) -> String {
        let t = format!("t{}", self.next_tag);
        self.next_tag += 1;
        t
    }

    pub fn try_run(&mut self, command: &str) -> Io<Reply> {
        let tag = self.tag();
        self.r
            .get_mut()
            .write_all(format!("{tag} {command}\r\n").as_bytes())?;
        self.until_tagged(&tag)
    }

    pub fn run(&mut self, command: &str) -> Reply {
        self.try_run(command)
            .unwrap_or_else(|e| panic!("IMAP {command}: {e}"))
    }

    /// APPEND with a non-synchronizing literal (LITERAL+, RFC 7888).
    pub fn try_append(&mut self, mailbox: &str, flags: &str, message: &str) -> Io<Reply> {
        let tag = self.tag();
        let flags = if flags.is_empty() {
            String::new()
        } else {
            format!("({flags}) ")
        };
        let command = format!(
            "{tag} APPEND {mailbox} {flags}{{{}+}}\r\n{message}\r\n",
            message.len()
        );
        self.r.get_mut().write_all(command.as_bytes())?;
        self.until_tagged(&tag)
    }

    pub fn append(&mut self, mailbox: &str, message: &str) -> Reply {
        self.try_append(mailbox, "", message)
            .unwrap_or_else(|e| panic!("IMAP APPEND {mailbox}: {e}"))
    }

    /// Every mailbox's messages, read with EXAMINE and one UID FETCH each.
    pub fn try_contents(&mut self) -> Io<Result<Contents, String>> {
        let list = self.try_run("LIST \"\" \"*\"")?;
        if !list.ok() {
            return Ok(Err(format!("LIST: {}", list.tagged())));
        }
        let mut contents = Contents::default();
        for line in list.untagged_list() {
            let r = self.try_run(&format!("EXAMINE {}", quote(&line)))?;
            if !r.ok() {
                // Deleted since the LIST, or the store unreachable.
                return Ok(Err(format!("EXAMINE {line}: {}", r.tagged())));
            }
            let validity = r.number("UIDVALIDITY").unwrap_or(0) as u32;
            let mut messages = Vec::new();
            if r.exists() != Some(0) {
                let f = self
                    .try_run("UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")?;
                if !f.ok() {
                    return Ok(Err(format!("FETCH in {line}: {}", f.tagged())));
                }
                for l in &f.lines[..f.lines.len() - 1] {
                    if let Some(m) = Fetched::parse(l) {
                        messages.push(m);
                    }
                }
            }
            contents.mailboxes.insert(line, (validity, messages));
        }
        Ok(Ok(contents))
    }

    pub fn contents(&mut self) -> Result<Contents, String> {
        self.try_contents()
            .unwrap_or_else(|e| Err(format!("connection: {e}")))
    }
}

impl Reply {
    /// The mailbox names of `* LIST` lines.
    fn untagged_list(&self) -> Vec<String> {
        self.lines
            .iter()
            .filter(|l| l.starts_with("* LIST "))
            .map(|l| {
                let name = l.rsplit_once(' ').map_or("", |(_, n)| n);
                // `"/" "Name"` or `"/" Name`: the last token, unquoted.
                let quoted = l.ends_with('"');
                if quoted {
                    let body = &l[..l.len() - 1];
                    body[body.rfind('"').unwrap() + 1..].replace("\\\"", "\"")
                } else {
                    name.to_owned()
                }
            })
            .collect()
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

fn literal_size(text: &[u8]) -> Option<usize> {
    let inner = text.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|b| *b == b'{')?;
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// One message of a UID FETCH listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub uid: u32,
    /// The Message-ID without the `@multisite.test>` part.
    pub id: String,
    pub flags: Vec<String>,
}

impl Fetched {
    fn parse(line: &str) -> Option<Fetched> {
        if !line.starts_with("* ") || !line.contains(" FETCH (") {
            return None;
        }
        let after = |key: &str| line.find(key).map(|i| &line[i + key.len()..]);
        let uid = after("UID ")?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        let flags = after("FLAGS (")
            .and_then(|f| f.split(')').next())
            .map(|f| {
                // \Recent belongs to the session (and instance) that
                // fetched, not to the mailbox: left out of comparisons.
                let mut v: Vec<String> = f
                    .split_whitespace()
                    .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
                    .map(str::to_owned)
                    .collect();
                v.sort();
                v
            })
            .unwrap_or_default();
        let lower = line.to_ascii_lowercase();
        let start = lower.find("message-id: <")? + "message-id: <".len();
        let id = line[start..].split('@').next()?.to_owned();
        Some(Fetched { uid, id, flags })
    }
}

/// Every mailbox's (UIDVALIDITY, messages in sequence order).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Contents {
    pub mailboxes: BTreeMap<String, (u32, Vec<Fetched>)>,
}

impl Contents {
    /// The mailboxes holding message `id`, once per copy.
    pub fn places(&self, id: &str) -> Vec<(String, u32)> {
        let mut places = Vec::new();
        for (name, (_, messages)) in &self.mailboxes {
            for m in messages {
                if m.id == id {
                    places.push((name.clone(), m.uid));
                }
            }
        }
        places
    }

    /// Checks that `ids` are each present exactly once.
    pub fn each_once<'a>(&self, ids: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
        let mut wrong = Vec::new();
        for id in ids {
            let places = self.places(id);
            if places.len() != 1 {
                wrong.push(format!("{id} at {places:?}"));
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} messages not exactly once: {wrong:?}",
                wrong.len()
            ))
        }
    }

    /// UIDs strictly increasing in sequence order, in every mailbox.
    pub fn uids_increasing(&self) -> Result<(), String> {
        for (name, (_, messages)) in &self.mailboxes {
            for w in messages.windows(2) {
                if w[0].uid >= w[1].uid {
                    return Err(format!("{name}: UID {} then {}", w[0].uid, w[1].uid));
                }
            }
        }
        Ok(())
    }

    /// (mailbox, UID) → flags of every message.
    pub fn flags(&self) -> BTreeMap<(String, u32), Vec<String>> {
        let mut all = BTreeMap::new();
        for (name, (_, messages)) in &self.mailboxes {
            for m in messages {
                all.insert((name.clone(), m.uid), m.flags.clone());
            }
        }
        all
    }

    pub fn count(&self) -> usize {
        self.mailboxes.values().map(|(_, m)| m.len()).sum()
    }
}

/// Reads a whole-listing of `login` through a new session on `instance`.
pub fn contents_on(instance: SocketAddr, login: &str) -> Result<Contents, String> {
    let mut c = Imap::try_connect(instance).map_err(|e| e.to_string())?;
    let r = c
        .try_run(&format!("LOGIN {login} \"{PASSWORD}\""))
        .map_err(|e| e.to_string())?;
    if !r.ok() {
        return Err(format!("LOGIN: {}", r.tagged()));
    }
    let contents = c.contents();
    let _ = c.try_run("LOGOUT");
    contents
}

/// A blocking LMTP client (RFC 2033) on one connection, after LHLO.
pub struct Lmtp {
    r: BufReader<TcpStream>,
}

impl Lmtp {
    pub fn connect(addr: SocketAddr) -> Io<Lmtp> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(WAIT))?;
        s.set_nodelay(true)?;
        let mut c = Lmtp {
            r: BufReader::new(s),
        };
        let greeting = c.reply()?;
        if greeting.0 != 220 {
            return Err(std::io::Error::other(format!("greeting {greeting:?}")));
        }
        c.send("LHLO multisite.test\r\n")?;
        let lhlo = c.reply()?;
        if lhlo.0 != 250 {
            return Err(std::io::Error::other(format!("LHLO {lhlo:?}")));
        }
        Ok(c)
    }

    fn send(&mut self, s: &str) -> Io<()> {
        self.r.get_mut().write_all(s.as_bytes())
    }

    /// One reply, multi-line ones joined: (code, text).
    fn reply(&mut self) -> Io<(u16, String)> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            self.r.read_line(&mut line)?;
            if line.is_empty() {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            text.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                let code = line
                    .get(..3)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| std::io::Error::other(format!("reply {line:?}")))?;
                return Ok((code, text));
            }
        }
    }

    /// Sends MAIL, RCPT and DATA up to the body: Ok(None) when all were
    /// accepted, else the refusing reply.
    pub fn start(&mut self, rcpt: &str) -> Io<Option<(u16, String)>> {
        self.send("MAIL FROM:<tester@example.org>\r\n")?;
        let mail = self.reply()?;
        if mail.0 != 250 {
            return Ok(Some(mail));
        }
        self.send(&format!("RCPT TO:<{rcpt}>\r\n"))?;
        let rcpt = self.reply()?;
        if rcpt.0 != 250 {
            self.send("RSET\r\n")?;
            self.reply()?;
            return Ok(Some(rcpt));
        }
        self.send("DATA\r\n")?;
        let data = self.reply()?;
        if data.0 != 354 {
            return Ok(Some(data));
        }
        Ok(None)
    }

    /// Sends raw body bytes (already dot-stuffed; ours never start a line
    /// with a dot).
    pub fn send_raw(&mut self, raw: &str) -> Io<()> {
        self.send(raw)
    }

    /// The end of data, then the one recipient's reply.
    pub fn finish(&mut self) -> Io<(u16, String)> {
        self.send(".\r\n")?;
        self.reply()
    }

    /// Delivers `message` to `rcpt`: the recipient's final reply.
    pub fn deliver(&mut self, rcpt: &str, message: &str) -> Io<(u16, String)> {
        if let Some(refused) = self.start(rcpt)? {
            return Ok(refused);
        }
        self.send_raw(message)?;
        self.finish()
    }
}
