//! What a mail client waits for, on Facteur and on Dovecot in the same run:
//! the same IMAP session against both servers, timed per step.
//!
//! Steps: APPEND of N messages (the fixtures corpus, repeated, 1 KiB to
//! ~100 KiB, one at a time with LITERAL+, as a client uploading); SELECT;
//! a header sync (`FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE
//! BODYSTRUCTURE)`, what Thunderbird and mutt do on open); a full download
//! (`FETCH 1:* BODY.PEEK[]`); SEARCH by header (`SUBJECT`) and by body
//! (`BODY`); `STORE 1:* +FLAGS (\Seen)`.
//!
//! Run with `cargo bench --bench imap`. Facteur runs in-process on the fs
//! store (the embedded default) and, when `FACTEUR_TEST_S3_*` is set, on
//! Garage; Dovecot is measured when `DOVECOT_IMAP_PORT`, `DOVECOT_USER` and
//! `DOVECOT_PASSWORD` are set: `eval "$(scripts/dovecot.sh start
//! /tmp/bench-dovecot)"`. `FACTEUR_BENCH_IMAP_MESSAGES` (default 500) sets
//! N. Dovecot's mailbox is emptied first.
//!
//! Then a large download: M messages of S bytes (pseudo-random base64, so
//! compression does not shrink them) appended, then `UID FETCH 1:*
//! (BODY.PEEK[])` on a new connection, read as it arrives (one body held
//! at a time) and checked; timed, with the serving process's peak
//! resident memory rise (VmHWM, reset through `/proc/<pid>/clear_refs`
//! just before the FETCH; needs to own that process: run as root for
//! Dovecot's, whose mail processes run as another user). Facteur runs here
//! as the real `facteur serve` (a release build, default allocator),
//! restarted between the APPENDs and the FETCH so that memory kept from
//! the APPENDs cannot hide what the FETCH takes; Dovecot's measured
//! process is its `imap` process serving the FETCH connection (found by
//! its socket in `/proc`). `FACTEUR_BENCH_IMAP_LARGE_MESSAGES` (default
//! 1000; 0 skips it) and `FACTEUR_BENCH_IMAP_LARGE_SIZE` (bytes, default
//! 1048576) set M and S. `MALLOC_ARENA_MAX=1` in the environment (the
//! server inherits it) leaves out what glibc's per-thread arenas keep: see
//! the memory test in tests/imap_e2e.rs.

#[path = "../tests/imap_client/mod.rs"]
mod imap_client;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use facteur::account::{AccountConfig, Accounts, KeyringStore};
use facteur::crypto::{KdfParams, Password, user_id};
use facteur::directory::users_file::hash_password;
use facteur::directory::{StaticDirectory, UserEntry, UsersFile};
use facteur::imap::connection::{Peer, serve};
use facteur::imap::throttle::{Throttle, ThrottleConfig};
use facteur::imap::{Imap, Options};
use facteur::log::InstanceId;
use facteur::store::{FsStore, S3Settings, S3Store, SharedStore};
use imap_client::{Client, large_message, memory};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &[u8] = b"imap-bench-cluster-secret";

/// The corpus: every fixture message, CRLF line ends.
fn corpus() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mail");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let raw = std::fs::read(p).unwrap();
            let mut out = Vec::with_capacity(raw.len() + raw.len() / 20);
            for (i, b) in raw.iter().enumerate() {
                if *b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
                    out.push(b'\r');
                }
                out.push(*b);
            }
            out
        })
        .collect()
}

/// The N messages appended: the corpus repeated, every fifth one padded
/// with a ~100 KiB text body so sizes vary as in a real mailbox.
fn messages(n: usize) -> Vec<Vec<u8>> {
    let corpus = corpus();
    (0..n)
        .map(|i| {
            let mut m = format!("X-Bench: {i}\r\n").into_bytes();
            m.extend_from_slice(&corpus[i % corpus.len()]);
            if i % 5 == 4 {
                m.extend_from_slice(b"\r\n");
                for line in 0..1600 {
                    m.extend_from_slice(
                        format!("padding line {line} of message {i} needle{}\r\n", i % 7)
                            .as_bytes(),
                    );
                }
            }
            m
        })
        .collect()
}

/// Starts Facteur's IMAP on `127.0.0.1:0` over `store` with user `bench`.
async fn start_facteur(store: SharedStore, dir: &Path) -> (u16, String) {
    let mut users = UsersFile::default();
    users
        .add(UserEntry {
            login: "bench".into(),
            password: hash_password(&Password::new("pw"), &KdfParams::TEST).unwrap(),
            addresses: vec!["bench@example.org".into()],
            aliases: vec![],
            quota: None,
            quota_messages: None,
        })
        .unwrap();
    let users_path = dir.join("users.toml");
    users.save(&users_path).unwrap();
    let directory = Arc::new(StaticDirectory::open(users_path, KdfParams::TEST).unwrap());
    let keyrings = KeyringStore::new(store.clone(), SECRET);
    // A fresh login per run, so runs on a shared bucket do not meet.
    let login = "bench".to_owned();
    let secret = format!(
        "{}-{:x}",
        String::from_utf8_lossy(SECRET),
        rand::random::<u64>()
    );
    let user_secret = secret.clone().into_bytes();
    let imap = Arc::new(Imap {
        directory,
        keyrings,
        accounts: Accounts::new(
            store,
            AccountConfig::new(
                InstanceId::new("bench").unwrap(),
                facteur::crypto::RecordAuth::from_cluster_secret(secret.as_bytes()),
            ),
            Duration::from_secs(60),
        ),
        user_id: Arc::new(move |login| user_id(&user_secret, login)),
        kdf: KdfParams::TEST,
        recovery_key: false,
        options: Options::default(),
        throttle: Arc::new(Throttle::new(ThrottleConfig::default())),
        tls: None,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, remote)) = listener.accept().await else {
                return;
            };
            let peer = Peer {
                remote,
                local: stream.local_addr().unwrap(),
                tls: false,
            };
            tokio::spawn(serve(stream, peer, imap.clone(), std::future::pending()));
        }
    });
    (port, login)
}

struct Timings {
    steps: Vec<(&'static str, Duration, usize)>,
}

async fn connect(port: u16, user: &str, password: &str) -> Client<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut c, greeting) = Client::start(stream).await;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let r = c.run(&format!("LOGIN {user} {password}")).await;
    assert!(r.ok(), "login: {r:?}");
    c
}

async fn session(port: u16, user: &str, password: &str, messages: &[Vec<u8>]) -> Timings {
    let mut c = connect(port, user, password).await;
    // Start empty (Dovecot's mailbox survives between runs).
    let sel = c.run("SELECT INBOX").await;
    assert!(sel.ok(), "{sel:?}");
    if !sel.has("* 0 EXISTS") {
        assert!(c.run("STORE 1:* +FLAGS.SILENT (\\Deleted)").await.ok());
        assert!(c.run("EXPUNGE").await.ok());
    }
    assert!(c.run("UNSELECT").await.ok());

    let mut steps = Vec::new();
    let bytes: usize = messages.iter().map(Vec::len).sum();
    let t = Instant::now();
    for m in messages {
        let tag = c.tag();
        let mut command = format!("{tag} APPEND INBOX {{{}+}}\r\n", m.len()).into_bytes();
        command.extend_from_slice(m);
        command.extend_from_slice(b"\r\n");
        c.send(&command).await;
        let r = c.until_tagged(&tag).await;
        assert!(r.ok(), "append: {r:?}");
    }
    steps.push(("APPEND (one at a time)", t.elapsed(), bytes));

    let t = Instant::now();
    let sel = c.run("SELECT INBOX").await;
    assert!(sel.has(&format!("* {} EXISTS", messages.len())), "{sel:?}");
    steps.push(("SELECT", t.elapsed(), 0));

    let t = Instant::now();
    let r = c
        .run("FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE)")
        .await;
    assert!(
        r.ok() && r.untagged("").len() >= messages.len(),
        "{:?}",
        r.tagged()
    );
    steps.push(("FETCH headers (ENVELOPE BODYSTRUCTURE)", t.elapsed(), 0));

    let t = Instant::now();
    let r = c.run("FETCH 1:* BODY.PEEK[]").await;
    assert!(r.ok(), "{:?}", r.tagged());
    steps.push(("FETCH BODY.PEEK[] (all)", t.elapsed(), bytes));

    let t = Instant::now();
    let r = c.run("SEARCH SUBJECT the").await;
    assert!(r.ok(), "{:?}", r.tagged());
    steps.push(("SEARCH SUBJECT", t.elapsed(), 0));

    let t = Instant::now();
    let r = c.run("SEARCH BODY needle3").await;
    assert!(r.ok(), "{:?}", r.tagged());
    let hits = r
        .untagged("SEARCH")
        .first()
        .map_or(0, |l| l.split(' ').count() - 2);
    assert!(hits > 0, "BODY search found nothing");
    steps.push(("SEARCH BODY", t.elapsed(), 0));

    let t = Instant::now();
    assert!(c.run("STORE 1:* +FLAGS.SILENT (\\Seen)").await.ok());
    steps.push(("STORE 1:* +FLAGS (\\Seen)", t.elapsed(), 0));
    assert!(c.run("LOGOUT").await.ok());
    Timings { steps }
}

fn print(name: &str, t: &Timings, reference: Option<&Timings>) {
    println!("\n{name}");
    for (i, (step, took, bytes)) in t.steps.iter().enumerate() {
        let rate = if *bytes > 0 {
            format!("{:7.1} MB/s", *bytes as f64 / took.as_secs_f64() / 1e6)
        } else {
            String::new()
        };
        let ratio = reference
            .and_then(|r| r.steps.get(i))
            .map(|(_, d, _)| format!("  x{:.2} of Dovecot", took.as_secs_f64() / d.as_secs_f64()))
            .unwrap_or_default();
        println!(
            "  {step:42} {:9.1} ms {rate}{ratio}",
            took.as_secs_f64() * 1e3
        );
    }
}

/// The password of `bench` on a [`FacteurProcess`] (`user add` wants 8
/// characters or more).
const PROCESS_PASSWORD: &str = "bench-password";

/// A `facteur serve` process with one user (`bench`, [`PROCESS_PASSWORD`]),
/// stopped on drop.
struct FacteurProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The STARTTLS port (plaintext LOGIN is allowed on loopback).
    port: u16,
}

impl FacteurProcess {
    /// A server on `store` (a `[store]` section) in a new directory.
    fn start(store: &str) -> FacteurProcess {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "cluster_secret = \"{:032x}\"\n{store}\
             [directory]\nbackend = \"static\"\nusers_file = \"users.toml\"\n\
             [crypto.argon2]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\n\
             [lmtp]\nlisten = []\n\
             [imap]\nstarttls_listen = [\"127.0.0.1:0\"]\ntls_listen = []\n",
            rand::random::<u128>()
        );
        std::fs::write(dir.path().join("facteur.toml"), config).unwrap();
        let mut add = Command::new(env!("CARGO_BIN_EXE_facteur"))
            .args(["--config", "facteur.toml", "user", "add", "bench"])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(add.stdin.take().unwrap(), "{PROCESS_PASSWORD}").unwrap();
        let out = add.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "user add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = FacteurProcess {
            child: None,
            dir,
            port: 0,
        };
        server.serve();
        server
    }

    /// Starts `serve` and reads its port from the lines it prints before
    /// `facteur: ready`.
    fn serve(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_facteur"))
            .args(["--config", "facteur.toml", "serve", "--http", "127.0.0.1:0"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut port = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(addr) = line.strip_prefix("facteur: imap (starttls) listening on ") {
                port = Some(addr.rsplit(':').next().unwrap().parse().unwrap());
            }
            if line == "facteur: ready" {
                break;
            }
        }
        // Whatever it prints later is read (and dropped), never a broken pipe.
        std::thread::spawn(move || lines.for_each(drop));
        self.port = port.expect("serve printed no IMAP port (see server.log)");
        self.child = Some(child);
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.stop();
        self.serve();
    }
}

impl Drop for FacteurProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The process holding the server end of the loopback TCP connection
/// from `client_port` to `server_port` (its socket's inode in
/// `/proc/net/tcp`, then the one process with that socket among its fds):
/// its pid and name.
fn server_process(server_port: u16, client_port: u16) -> (u32, String) {
    let port_of = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let inode = tcp
        .lines()
        .skip(1)
        .find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 9
                && port_of(f[1]) == Some(server_port)
                && port_of(f[2]) == Some(client_port))
            .then(|| f[9].to_owned())
        })
        .expect("the connection in /proc/net/tcp");
    let socket = format!("socket:[{inode}]");
    let holders: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.filter_map(Result::ok).any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == socket.as_str())
                })
            })
        })
        .collect();
    assert!(
        holders.len() == 1,
        "processes holding {socket}: {holders:?} (run as root to see other users' processes)"
    );
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", holders[0])).unwrap_or_default();
    (holders[0], comm.trim().to_owned())
}

/// The large download's figures on one server.
struct LargeFetch {
    append: Duration,
    fetch: Duration,
    bytes: usize,
    /// Resident memory of the serving process before the FETCH, and its
    /// peak rise during it.
    rss_before: u64,
    rise: u64,
}

/// Appends `count` messages of `size` bytes one at a time (LITERAL+),
/// leaving the mailbox with only them.
async fn append_large(
    port: u16,
    user: &str,
    password: &str,
    count: usize,
    size: usize,
) -> Duration {
    let mut c = connect(port, user, password).await;
    let sel = c.run("SELECT INBOX").await;
    assert!(sel.ok(), "{sel:?}");
    if !sel.has("* 0 EXISTS") {
        assert!(c.run("STORE 1:* +FLAGS.SILENT (\\Deleted)").await.ok());
        assert!(c.run("EXPUNGE").await.ok());
    }
    assert!(c.run("UNSELECT").await.ok());
    let t = Instant::now();
    for i in 0..count {
        let m = large_message(i, size);
        let tag = c.tag();
        let mut command = format!("{tag} APPEND INBOX {{{}+}}\r\n", m.len()).into_bytes();
        command.extend_from_slice(&m);
        command.extend_from_slice(b"\r\n");
        c.send(&command).await;
        let r = c.until_tagged(&tag).await;
        assert!(r.ok(), "append: {r:?}");
    }
    let took = t.elapsed();
    assert!(c.run("LOGOUT").await.ok());
    took
}

/// On a new connection: `UID FETCH 1:* (BODY.PEEK[])` of the `count`
/// messages, every body checked, with the peak memory rise of the process
/// `pid` (or, when `None`, of the process serving the connection).
async fn fetch_large(
    port: u16,
    user: &str,
    password: &str,
    pid: Option<u32>,
    count: usize,
    size: usize,
) -> (Duration, usize, u64, u64) {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let client_port = stream.local_addr().unwrap().port();
    let (mut c, greeting) = Client::start(stream).await;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    assert!(c.run(&format!("LOGIN {user} {password}")).await.ok());
    let sel = c.run("SELECT INBOX").await;
    assert!(sel.has(&format!("* {count} EXISTS")), "{sel:?}");
    let pid = pid.unwrap_or_else(|| {
        let (pid, name) = server_process(port, client_port);
        println!("  (measuring process {pid}, {name})");
        pid
    });
    let rss_before = memory::rss(pid);
    memory::reset_peak(pid);
    let mut first_uid = None;
    let mut bytes = 0;
    let mut bodies = 0;
    let t = Instant::now();
    let tagged = c
        .run_streaming("UID FETCH 1:* (BODY.PEEK[])", |text, body| {
            let text = String::from_utf8_lossy(text);
            let uid: usize = text
                .split_once("UID ")
                .and_then(|(_, rest)| rest.split(' ').next()?.parse().ok())
                .unwrap_or_else(|| panic!("no UID in {text:?}"));
            // UIDs are consecutive from the first one appended.
            let i = uid - *first_uid.get_or_insert(uid);
            assert!(body == large_message(i, size), "UID {uid}: body differs");
            bytes += body.len();
            bodies += 1;
        })
        .await;
    let took = t.elapsed();
    let rise = memory::peak(pid).saturating_sub(rss_before);
    assert!(tagged.split(' ').nth(1) == Some("OK"), "{tagged}");
    assert_eq!(bodies, count);
    assert!(c.run("LOGOUT").await.ok());
    (took, bytes, rss_before, rise)
}

fn print_large(name: &str, l: &LargeFetch, reference: Option<&LargeFetch>) {
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let ratio = |ours: f64, theirs: f64| format!("  x{:.2} of Dovecot", ours / theirs);
    println!("\n{name}");
    println!(
        "  {:42} {:9.1} ms {:7.1} MB/s{}",
        "APPEND (one at a time)",
        l.append.as_secs_f64() * 1e3,
        l.bytes as f64 / l.append.as_secs_f64() / 1e6,
        reference
            .map(|r| ratio(l.append.as_secs_f64(), r.append.as_secs_f64()))
            .unwrap_or_default()
    );
    println!(
        "  {:42} {:9.1} ms {:7.1} MB/s{}",
        "UID FETCH 1:* (BODY.PEEK[]), new connection",
        l.fetch.as_secs_f64() * 1e3,
        l.bytes as f64 / l.fetch.as_secs_f64() / 1e6,
        reference
            .map(|r| ratio(l.fetch.as_secs_f64(), r.fetch.as_secs_f64()))
            .unwrap_or_default()
    );
    println!(
        "  {:42} {:9.1} MiB (RSS before {:.1} MiB){}",
        "server peak RSS rise during the FETCH",
        mib(l.rise),
        mib(l.rss_before),
        reference
            .map(|r| ratio(l.rise as f64, r.rise as f64))
            .unwrap_or_default()
    );
}

/// The large download on Dovecot, if configured.
async fn large_on_dovecot(count: usize, size: usize) -> Option<LargeFetch> {
    let port: u16 = std::env::var("DOVECOT_IMAP_PORT").ok()?.parse().ok()?;
    let user = std::env::var("DOVECOT_USER").ok()?;
    let password = std::env::var("DOVECOT_PASSWORD").ok()?;
    let append = append_large(port, &user, &password, count, size).await;
    let (fetch, bytes, rss_before, rise) =
        fetch_large(port, &user, &password, None, count, size).await;
    Some(LargeFetch {
        append,
        fetch,
        bytes,
        rss_before,
        rise,
    })
}

/// The large download on a `facteur serve` process over `store`.
async fn large_on_facteur(store: &str, count: usize, size: usize) -> LargeFetch {
    let mut server = FacteurProcess::start(store);
    let append = append_large(server.port, "bench", PROCESS_PASSWORD, count, size).await;
    server.restart();
    let (fetch, bytes, rss_before, rise) = fetch_large(
        server.port,
        "bench",
        PROCESS_PASSWORD,
        Some(server.pid()),
        count,
        size,
    )
    .await;
    LargeFetch {
        append,
        fetch,
        bytes,
        rss_before,
        rise,
    }
}

async fn large(count: usize, size: usize) {
    println!(
        "\nLarge download: {count} messages of {:.2} MiB ({:.1} MB)",
        size as f64 / f64::from(1 << 20),
        (count * size) as f64 / 1e6
    );
    let dovecot = large_on_dovecot(count, size).await;
    match &dovecot {
        Some(d) => print_large("Dovecot 2.3 (Maildir), its imap process", d, None),
        None => println!("\nDovecot: not measured (set DOVECOT_IMAP_PORT etc.)"),
    }
    let fs = large_on_facteur("[store]\nbackend = \"fs\"\npath = \"store\"\n", count, size).await;
    print_large("Facteur, fs store (facteur serve)", &fs, dovecot.as_ref());
    let var = |name: &str| std::env::var(name).ok();
    if let (Some(endpoint), Some(bucket), Some(access_key), Some(_)) = (
        var("FACTEUR_TEST_S3_ENDPOINT"),
        var("FACTEUR_TEST_S3_BUCKET"),
        var("FACTEUR_TEST_S3_ACCESS_KEY"),
        var("FACTEUR_TEST_S3_SECRET_KEY"),
    ) {
        let region = var("FACTEUR_TEST_S3_REGION").unwrap_or_else(|| "garage".into());
        let store = format!(
            "[store]\nbackend = \"s3\"\n[store.s3]\nendpoint = {endpoint:?}\nregion = {region:?}\n\
             bucket = {bucket:?}\naccess_key_id = {access_key:?}\n\
             secret_access_key = {{ env = \"FACTEUR_TEST_S3_SECRET_KEY\" }}\n"
        );
        let garage = large_on_facteur(&store, count, size).await;
        print_large(
            "Facteur, Garage (1 node, loopback; facteur serve)",
            &garage,
            dovecot.as_ref(),
        );
    }
}

fn main() {
    let n: usize = std::env::var("FACTEUR_BENCH_IMAP_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let messages = messages(n);
        let total: usize = messages.iter().map(Vec::len).sum();
        println!(
            "IMAP session of {n} messages ({:.1} MB), machine: {} cores",
            total as f64 / 1e6,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let dovecot = match (
            std::env::var("DOVECOT_IMAP_PORT"),
            std::env::var("DOVECOT_USER"),
            std::env::var("DOVECOT_PASSWORD"),
        ) {
            (Ok(port), Ok(user), Ok(password)) => {
                let t = session(port.parse().unwrap(), &user, &password, &messages).await;
                print("Dovecot 2.3 (Maildir)", &t, None);
                Some(t)
            }
            _ => {
                println!(
                    "\nDovecot: not measured (set DOVECOT_IMAP_PORT etc., see scripts/dovecot.sh)"
                );
                None
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let fs: SharedStore = Arc::new(FsStore::open(dir.path().join("store")).unwrap());
        let (port, login) = start_facteur(fs, dir.path()).await;
        let t = session(port, &login, "pw", &messages).await;
        print("Facteur, fs store", &t, dovecot.as_ref());
        match S3Settings::from_test_env() {
            Some(settings) => {
                let s3: SharedStore = Arc::new(S3Store::new(settings).unwrap());
                let dir = tempfile::tempdir().unwrap();
                let (port, login) = start_facteur(s3, dir.path()).await;
                let t = session(port, &login, "pw", &messages).await;
                print("Facteur, Garage (1 node, loopback)", &t, dovecot.as_ref());
            }
            None => {
                println!("\nGarage: not measured (set FACTEUR_TEST_S3_*, see scripts/garage.sh)")
            }
        }
        let knob = |name: &str, default: usize| -> usize {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let count = knob("FACTEUR_BENCH_IMAP_LARGE_MESSAGES", 1000);
        let size = knob("FACTEUR_BENCH_IMAP_LARGE_SIZE", 1 << 20);
        if count > 0 {
            large(count, size).await;
        }
    });
}
