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

#[path = "../tests/imap_client/mod.rs"]
mod imap_client;

use std::path::Path;
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
use imap_client::Client;
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
            AccountConfig::new(InstanceId::new("bench").unwrap()),
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
    });
}
