//! QUOTA (RFC 9208) against the figures Dovecot gives for the same
//! commands: one scenario of APPENDs, COPYs, MOVEs and EXPUNGEs under a
//! 10 KiB storage quota and a 6-message quota (STORAGE and MESSAGE), and
//! the answers for a user without quota, run on Facteur (over TCP, on a
//! `MemoryStore`) and compared with [`EXPECTED`], the transcript Dovecot
//! 2.3 (`count` quota, `quota_vsizes = yes`, rule
//! `*:storage=10K:messages=6`) gives.
//!
//! When `DOVECOT_IMAP_PORT`, `DOVECOT_QUOTA_USER`, `DOVECOT_USER` and
//! `DOVECOT_PASSWORD` are set (`eval "$(scripts/dovecot.sh start <dir>)"`;
//! scripts/test.sh does it), the scenario also runs on that Dovecot and
//! must give the same transcript, so [`EXPECTED`] stays Dovecot's; it is
//! skipped otherwise, unless `FACTEUR_REQUIRE_DOVECOT=1`, when it fails.
//! Transcripts hold the QUOTA and QUOTAROOT lines (quoting aside) and the
//! tagged status with an `[OVERQUOTA]` code; texts differ and do not count.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use facteur::imap::Options;
use facteur::imap::connection::{Peer, serve};
use facteur::log::InstanceId;
use facteur::size::ByteSize;
use facteur::store::MemoryStore;

mod fixture;

/// A blocking IMAP client over TCP (both servers).
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    tag: u32,
}

impl Conn {
    fn open(port: u16, user: &str, password: &str) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut c = Conn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            tag: 0,
        };
        let greeting = c.line();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        let login = c.run(&format!("LOGIN \"{user}\" \"{password}\""));
        assert!(login.last().unwrap().contains(" OK"), "{login:?}");
        c
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "server closed the connection");
        line.trim_end_matches(['\r', '\n']).to_owned()
    }

    /// Sends `command` (with a LITERAL+ message if any); returns the
    /// lines up to the tagged one.
    fn send(&mut self, command: &str, message: Option<&[u8]>) -> Vec<String> {
        self.tag += 1;
        let tag = format!("q{}", self.tag);
        let mut raw = format!("{tag} {command}").into_bytes();
        if let Some(m) = message {
            raw.extend_from_slice(format!(" {{{}+}}\r\n", m.len()).as_bytes());
            raw.extend_from_slice(m);
        }
        raw.extend_from_slice(b"\r\n");
        self.writer.write_all(&raw).unwrap();
        let mut lines = Vec::new();
        loop {
            let line = self.line();
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    fn run(&mut self, command: &str) -> Vec<String> {
        self.send(command, None)
    }
}

/// A message of exactly `size` octets (CRLF line ends: RFC822.SIZE is
/// `size` on both servers).
fn message(size: usize) -> Vec<u8> {
    let mut m = b"Subject: quota\r\n\r\n".to_vec();
    m.resize(size - 2, b'y');
    m.extend_from_slice(b"\r\n");
    m
}

/// Splits a response line into tokens, quoted strings unquoted (`""`
/// stays `""`, so the empty root shows).
fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' => {
                chars.next();
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => s.extend(chars.next()),
                        '"' => break,
                        c => s.push(c),
                    }
                }
                out.push(if s.is_empty() { "\"\"".to_owned() } else { s });
            }
            '(' | ')' => {
                out.push(c.to_string());
                chars.next();
            }
            _ => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if matches!(c, ' ' | '(' | ')') {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                out.push(s);
            }
        }
    }
    out
}

/// What counts of a command's answer: its QUOTA/QUOTAROOT lines and its
/// status (with `[OVERQUOTA]`).
fn summary(command: &str, lines: &[String]) -> String {
    let mut out = vec![format!("> {command}")];
    for l in lines {
        if l.starts_with("* QUOTA") {
            out.push(tokens(l).join(" "));
        }
    }
    let tagged = lines.last().unwrap();
    let status = tagged.split(' ').nth(1).unwrap_or("");
    let over = if tagged.contains("[OVERQUOTA]") {
        " [OVERQUOTA]"
    } else {
        ""
    };
    out.push(format!("{status}{over}"));
    out.join("\n")
}

/// The scenario: `limited` has a 10 KiB and 6-message quota and an empty
/// account (no mailbox but INBOX); `free` has no quota.
fn scenario(limited: &mut Conn, free: &mut Conn) -> Vec<String> {
    let mut t = Vec::new();
    let mut step = |c: &mut Conn, command: &str, size: Option<usize>| {
        let lines = match size {
            Some(n) => c.send(command, Some(&message(n))),
            None => c.run(command),
        };
        let shown = match size {
            Some(n) => format!("{command} <{n} octets>"),
            None => command.to_owned(),
        };
        t.push(summary(&shown, &lines));
    };
    let l = limited;
    step(l, "GETQUOTAROOT INBOX", None);
    step(l, "GETQUOTA \"\"", None);
    step(l, "GETQUOTA \"other\"", None);
    step(l, "SETQUOTA \"\" (STORAGE 100)", None);
    step(l, "APPEND INBOX", Some(1000));
    step(l, "APPEND INBOX", Some(1000));
    step(l, "GETQUOTAROOT INBOX", None);
    step(l, "APPEND INBOX", Some(9000));
    step(l, "GETQUOTA \"\"", None);
    step(l, "CREATE Quota", None);
    step(l, "SELECT INBOX", None);
    step(l, "COPY 1:* Quota", None);
    step(l, "GETQUOTA \"\"", None);
    step(l, "STORE 1 +FLAGS.SILENT (\\Deleted)", None);
    step(l, "EXPUNGE", None);
    step(l, "GETQUOTA \"\"", None);
    step(l, "APPEND INBOX", Some(6000));
    step(l, "NOOP", None);
    step(l, "COPY 2 Quota", None);
    step(l, "MOVE 2 Quota", None);
    step(l, "GETQUOTA \"\"", None);
    // Up to the limit exactly, then one octet over.
    step(l, "APPEND Quota", Some(1240));
    step(l, "GETQUOTAROOT Quota", None);
    step(l, "APPEND Quota", Some(100));
    step(l, "GETQUOTAROOT Nonexistent", None);
    step(l, "SELECT Quota", None);
    step(l, "STORE 1:* +FLAGS.SILENT (\\Deleted)", None);
    step(l, "EXPUNGE", None);
    step(l, "GETQUOTA \"\"", None);
    // The message limit (6): one message is left in INBOX.
    for _ in 0..5 {
        step(l, "APPEND INBOX", Some(100));
    }
    step(l, "GETQUOTA \"\"", None);
    step(l, "APPEND INBOX", Some(100));
    step(l, "SELECT INBOX", None);
    step(l, "COPY 1 Quota", None);
    step(l, "MOVE 1 Quota", None);
    step(l, "GETQUOTAROOT INBOX", None);
    step(l, "STORE 1 +FLAGS.SILENT (\\Deleted)", None);
    step(l, "EXPUNGE", None);
    step(l, "GETQUOTA \"\"", None);
    step(l, "COPY 1:2 Quota", None);
    step(l, "COPY 1 Quota", None);
    step(l, "GETQUOTAROOT Quota", None);
    step(l, "APPEND Quota", Some(100));
    step(free, "GETQUOTAROOT INBOX", None);
    step(free, "GETQUOTA \"\"", None);
    t
}

/// Dovecot's transcript of [`scenario`].
const EXPECTED: &[&str] = &[
    "> GETQUOTAROOT INBOX\n* QUOTAROOT INBOX \"\"\n* QUOTA \"\" ( STORAGE 0 10 MESSAGE 0 6 )\nOK",
    "> GETQUOTA \"\"\n* QUOTA \"\" ( STORAGE 0 10 MESSAGE 0 6 )\nOK",
    "> GETQUOTA \"other\"\nNO",
    "> SETQUOTA \"\" (STORAGE 100)\nNO",
    "> APPEND INBOX <1000 octets>\nOK",
    "> APPEND INBOX <1000 octets>\nOK",
    "> GETQUOTAROOT INBOX\n* QUOTAROOT INBOX \"\"\n* QUOTA \"\" ( STORAGE 2 10 MESSAGE 2 6 )\nOK",
    "> APPEND INBOX <9000 octets>\nNO [OVERQUOTA]",
    "> GETQUOTA \"\"\n* QUOTA \"\" ( STORAGE 2 10 MESSAGE 2 6 )\nOK",
    "> CREATE Quota\nOK",
    "> SELECT INBOX\nOK",
    "> COPY 1:* Quota\nOK",
    "> GETQUOTA \"\"\n* QUOTA \"\" ( STORAGE 4 10 MESSAGE 4 6 )\nOK",
    "> STORE 1 +FLAGS.SILENT (\\Deleted)\nOK",
    "> EXPUNGE\nOK",
    "> GETQUOTA \"\"\n* QUOTA \"\" ( STORAGE 3 10 MESSAGE 3 6 )\nOK",
    "> APPEND INBOX <6000 octets>\nOK",
    "> NOOP\nOK",
    "> COPY 2 Quota\nNO [OVERQUOTA]",
    "> MOVE 2 Quota\nOK",
    "> GETQUOTA \"\"\n* QUOTA \"\" ( STORAGE 9 10 MESSAGE 4 6 )\nOK",
    "> APPEND Quota <1240 octets>\nOK",
    "> GETQUOTAROOT Quota\n* QUOTAROOT Quota \"\"\n* QUOTA \"\" ( STORAGE 10 10 MESSAGE 5 6 )\nOK",
    "> APPEND Quota <100 octets>\nNO [OVERQUOTA]",
    "> GETQUOTAROOT Nonexistent\n* QUOTAROOT Nonexistent \"\"\n* QUOTA \"\" ( STORAGE 10 10 MESSAGE 5 6 )\nOK",
    "> SELECT Quota\nOK",
    "> STORE 1:* +FLAGS.SILENT (\\Deleted)\nOK",
    "> EXPUNGE\nOK",
    "> GETQUOTA \"\"\n* QUOTA \"\" ( STORAGE 1 10 MESSAGE 1 6 )\nOK",
    "> APPEND INBOX <100 octets>\nOK",
    "> APPEND INBOX <100 octets>\nOK",
    "> APPEND INBOX <100 octets>\nOK",
    "> APPEND INBOX <100 octets>\nOK",
    "> APPEND INBOX <100 octets>\nOK",
    "> GETQUOTA \"\"\n* QUOTA \"\" ( STORAGE 2 10 MESSAGE 6 6 )\nOK",
    "> APPEND INBOX <100 octets>\nNO [OVERQUOTA]",
    "> SELECT INBOX\nOK",
    "> COPY 1 Quota\nNO [OVERQUOTA]",
    "> MOVE 1 Quota\nOK",
    "> GETQUOTAROOT INBOX\n* QUOTAROOT INBOX \"\"\n* QUOTA \"\" ( STORAGE 2 10 MESSAGE 6 6 )\nOK",
    "> STORE 1 +FLAGS.SILENT (\\Deleted)\nOK",
    "> EXPUNGE\nOK",
    "> GETQUOTA \"\"\n* QUOTA \"\" ( STORAGE 2 10 MESSAGE 5 6 )\nOK",
    "> COPY 1:2 Quota\nNO [OVERQUOTA]",
    "> COPY 1 Quota\nOK",
    "> GETQUOTAROOT Quota\n* QUOTAROOT Quota \"\"\n* QUOTA \"\" ( STORAGE 2 10 MESSAGE 6 6 )\nOK",
    "> APPEND Quota <100 octets>\nNO [OVERQUOTA]",
    "> GETQUOTAROOT INBOX\nOK",
    "> GETQUOTA \"\"\nOK",
];

/// Facteur on a TCP port, with `limited` (10 KiB, 6 messages) and `free`
/// (no quota).
async fn facteur() -> (u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret = "0123456789abcdef0123456789abcdef";
    let config = fixture::config(dir.path(), secret);
    let mut limited = fixture::user_at_example("limited");
    limited.quota = Some(ByteSize(10 * 1024));
    limited.quota_messages = Some(6);
    let (services, _) = fixture::services(
        &config,
        dir.path(),
        Arc::new(MemoryStore::new()),
        secret.as_bytes(),
        vec![limited, fixture::user_at_example("free")],
        &["limited", "free"],
    )
    .await;
    let imap = fixture::imap(
        &services,
        services.account_config(InstanceId::new("quota").unwrap()),
        Options::default(),
        false,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, remote)) = listener.accept().await else {
                return;
            };
            let peer = Peer {
                remote,
                local: SocketAddr::from(([127, 0, 0, 1], port)),
                tls: false,
            };
            tokio::spawn(serve(stream, peer, imap.clone(), std::future::pending()));
        }
    });
    (port, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_answers_as_dovecot_does() {
    let (port, _dir) = facteur().await;
    let transcript = tokio::task::spawn_blocking(move || {
        let mut limited = Conn::open(port, "limited", fixture::PASSWORD);
        let mut free = Conn::open(port, "free", fixture::PASSWORD);
        let caps = limited.run("CAPABILITY").join("\n");
        assert!(
            caps.contains(" QUOTA ")
                && caps.contains(" QUOTA=RES-STORAGE")
                && caps.contains(" QUOTA=RES-MESSAGE"),
            "{caps}"
        );
        scenario(&mut limited, &mut free)
    })
    .await
    .unwrap();
    assert_eq!(transcript, EXPECTED);
}

#[test]
fn dovecot_gives_the_expected_transcript() {
    let env = |k: &str| std::env::var(k).ok();
    let (Some(port), Some(quota_user), Some(user), Some(password)) = (
        env("DOVECOT_IMAP_PORT"),
        env("DOVECOT_QUOTA_USER"),
        env("DOVECOT_USER"),
        env("DOVECOT_PASSWORD"),
    ) else {
        assert!(
            env("FACTEUR_REQUIRE_DOVECOT").as_deref() != Some("1"),
            "FACTEUR_REQUIRE_DOVECOT=1 but no Dovecot (DOVECOT_IMAP_PORT, DOVECOT_QUOTA_USER)"
        );
        eprintln!("skipped: no Dovecot (scripts/dovecot.sh start)");
        return;
    };
    let port: u16 = port.parse().unwrap();
    let mut limited = Conn::open(port, &quota_user, &password);
    // Back to an empty account, whatever an earlier run left.
    limited.run("DELETE Quota");
    limited.run("SELECT INBOX");
    limited.run("STORE 1:* +FLAGS.SILENT (\\Deleted)");
    limited.run("CLOSE");
    let mut free = Conn::open(port, &user, &password);
    assert_eq!(scenario(&mut limited, &mut free), EXPECTED);
}
