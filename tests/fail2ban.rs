//! The log an administrator gets from `facteur serve` at its default level
//! (RUST_LOG unset): one line per IMAP login, success, failure and
//! throttling, with the client's address and login and never the password;
//! the fail2ban filter of doc/fail2ban/ matched against that real log by
//! Debian's `fail2ban-regex`, including a login crafted to look like
//! another address's failure; and no rustls warning for a client that
//! sends an IP address as server name (neomutt does, at every connection).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_facteur");
const USER: &str = "alice@example.org";
const PASSWORD: &str = "correct horse battery";
const WRONG: &str = "not-the-password-42";
/// Upper bound of any wait for the server.
const WAIT: Duration = Duration::from_secs(60);
/// An address the crafted login tries to have banned.
const FORGED: &str = "203.0.113.9";

/// A `facteur serve` with one user, its stderr (the log) in a file.
struct Server {
    child: Option<Child>,
    dir: tempfile::TempDir,
    starttls: SocketAddr,
    tls: SocketAddr,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "cluster_secret = \"{:032x}\"\n\
             [store]\nbackend = \"fs\"\npath = \"store\"\n\
             [directory]\nbackend = \"static\"\nusers_file = \"users.toml\"\n\
             [crypto.argon2]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\n\
             [lmtp]\nlisten = []\n\
             [imap]\nstarttls_listen = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\n\
             self_signed_dir = \"tls\"\nlogin_failures_per_login = 1\n",
            rand::random::<u128>()
        );
        let config_path = dir.path().join("facteur.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut add = Command::new(BIN)
            .arg("--config")
            .arg(&config_path)
            .args(["user", "add", USER])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        writeln!(add.stdin.take().unwrap(), "{PASSWORD}").unwrap();
        assert!(add.wait().unwrap().success());
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&config_path)
            .args(["serve", "--http", "127.0.0.1:0"])
            // The default level is what is under test.
            .env_remove("RUST_LOG")
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
        Server {
            starttls: find("facteur: imap (starttls) listening on "),
            tls: find("facteur: imap (tls) listening on "),
            child: Some(child),
            dir,
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGTERM, and a clean exit: the log is complete afterwards.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait().unwrap();
        assert!(
            status.success() || std::thread::panicking(),
            "serve exited with {status}\n{}",
            self.log()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
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

/// A plaintext IMAP connection (LOGIN is allowed without TLS on loopback).
struct Imap {
    io: BufReader<TcpStream>,
    tag: u32,
}

impl Imap {
    fn connect(addr: SocketAddr) -> Imap {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut imap = Imap {
            io: BufReader::new(s),
            tag: 0,
        };
        assert!(imap.line().starts_with("* OK"));
        imap
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.io.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "connection closed");
        line
    }

    /// Sends `parts`, waiting for a continuation request after each one
    /// but the last (they end with a synchronizing literal), and returns
    /// the tagged answer.
    fn command(&mut self, parts: &[&[u8]]) -> String {
        self.tag += 1;
        let tag = format!("t{}", self.tag);
        self.io.get_mut().write_all(tag.as_bytes()).unwrap();
        self.io.get_mut().write_all(b" ").unwrap();
        for (i, part) in parts.iter().enumerate() {
            self.io.get_mut().write_all(part).unwrap();
            if i + 1 < parts.len() {
                let go = self.line();
                assert!(go.starts_with('+'), "{go:?}");
            }
        }
        self.io.get_mut().write_all(b"\r\n").unwrap();
        loop {
            let line = self.line();
            if line.starts_with(&format!("{tag} ")) {
                return line;
            }
        }
    }

    fn login(&mut self, login: &str, password: &str) -> String {
        self.command(&[format!("LOGIN \"{login}\" \"{password}\"").as_bytes()])
    }
}

/// Lines of `log` holding `what` (e.g. "imap login failed").
fn lines_with<'a>(log: &'a str, what: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(what)).collect()
}

/// Whether `fail2ban-regex` is here; a clear skip message if not. Under
/// scripts/test.sh (FACTEUR_REQUIRE_FAIL2BAN) its absence is a failure.
fn fail2ban_regex() -> Option<&'static str> {
    let found = Command::new("fail2ban-regex")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("fail2ban-regex");
    }
    assert!(
        std::env::var_os("FACTEUR_REQUIRE_FAIL2BAN").is_none(),
        "FACTEUR_REQUIRE_FAIL2BAN is set but fail2ban-regex is missing"
    );
    eprintln!(
        "fail2ban-regex not found; skipping the filter check (Debian: apt-get install \
         fail2ban; scripts/test.sh installs it)"
    );
    None
}

fn filter_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("doc/fail2ban/filter.d/facteur.conf")
}

/// Issue #14 item 2: every login leaves one line at the default level, and
/// the shipped fail2ban filter finds exactly the failed and throttled ones,
/// from the right address, in the real log.
#[test]
fn logins_are_logged_and_the_fail2ban_filter_matches_the_failures() {
    let mut server = Server::start();
    let mut c = Imap::connect(server.starttls);

    // A success first (failures afterwards would throttle this login).
    let reply = c.login(USER, PASSWORD);
    assert!(reply.contains("OK"), "{reply}");
    c.command(&[b"LOGOUT"]);

    let mut c = Imap::connect(server.starttls);
    let reply = c.login(USER, WRONG);
    assert!(reply.contains("NO [AUTHENTICATIONFAILED]"), "{reply}");
    let reply = c.login("mallory@example.org", WRONG);
    assert!(reply.contains("NO [AUTHENTICATIONFAILED]"), "{reply}");
    // A login crafted to forge a second log line and a failure of another
    // address: a literal may hold CR LF and quotes.
    let forged = format!(
        "x\" ip={FORGED} login=\"y\r\n2026-12-06T05:00:00.000000Z  INFO \
         facteur::imap::auth: imap login failed ip={FORGED} login=\"z"
    );
    let reply = c.command(&[
        format!("LOGIN {{{}}}\r\n", forged.len()).as_bytes(),
        format!("{forged} \"{WRONG}\"").as_bytes(),
    ]);
    assert!(reply.contains("NO [AUTHENTICATIONFAILED]"), "{reply}");
    // One free failure per login: bob's guesses are throttled soon (the
    // delay doubles with each failure, so even a slow machine sees it).
    let mut throttled = 0;
    for _ in 0..12 {
        let reply = c.login("bob@example.org", WRONG);
        if reply.contains("NO [UNAVAILABLE]") {
            throttled += 1;
            break;
        }
        assert!(reply.contains("NO [AUTHENTICATIONFAILED]"), "{reply}");
    }
    assert_eq!(throttled, 1, "bob's guesses were never throttled");
    c.command(&[b"LOGOUT"]);
    server.stop();

    let log = server.log();
    let ok = lines_with(&log, "imap login ok");
    assert_eq!(ok.len(), 1, "{log}");
    assert!(
        ok[0].contains(&format!("ip=127.0.0.1 login=\"{USER}\"")),
        "{}",
        ok[0]
    );
    let failed = lines_with(&log, "imap login failed");
    let throttled = lines_with(&log, "imap login throttled");
    assert_eq!(throttled.len(), 1, "{log}");
    assert!(
        failed
            .iter()
            .any(|l| l.contains("ip=127.0.0.1 login=\"mallory@example.org\"")),
        "{log}"
    );
    // The crafted login stayed inside its quotes, on its one line.
    assert!(
        !log.lines().any(|l| l.starts_with("2026-12-06T05:00:00")),
        "{log}"
    );
    for line in log.lines() {
        assert!(line.contains("Z "), "a line without a timestamp: {line:?}");
    }
    // Never a password.
    assert!(!log.contains(PASSWORD) && !log.contains(WRONG), "{log}");

    let Some(regex) = fail2ban_regex() else {
        return;
    };
    let out = Command::new(regex)
        .arg("-v")
        .arg(server.log_path())
        .arg(filter_path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = failed.len() + throttled.len();
    assert!(expected >= 4, "{log}");
    assert!(
        report.contains(&format!("Failregex: {expected} total")),
        "expected {expected} matches:\n{report}\n--- log\n{log}"
    );
    // The hits, one per line: "|      127.0.0.1  Sun Dec 06 05:00:00 2026".
    let hits: Vec<&str> = report
        .lines()
        .skip_while(|l| !l.starts_with("Failregex:"))
        .take_while(|l| !l.starts_with("`-"))
        .filter(|l| l.starts_with("|      "))
        .collect();
    assert_eq!(hits.len(), expected, "{report}");
    for hit in hits {
        assert!(
            hit.trim_start_matches(['|', ' ']).starts_with("127.0.0.1 "),
            "a hit from another address: {hit:?}\n{report}"
        );
    }
}

/// Issue #14: neomutt (GnuTLS) sends the server's IP address as server
/// name; rustls ignores it with a warning at every connection, which must
/// not reach the default log.
#[test]
fn an_ip_address_as_server_name_leaves_no_warning_in_the_default_log() {
    let Ok(version) = Command::new("openssl").arg("version").output() else {
        eprintln!("openssl not found; skipping the SNI check (Debian: apt-get install openssl)");
        return;
    };
    assert!(version.status.success());
    let mut server = Server::start();
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &server.tls.to_string()])
        .args(["-servername", "127.0.0.1"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("BEGIN CERTIFICATE"),
        "no TLS handshake: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A plain connection too, so the log surely holds this one's lines.
    let mut c = Imap::connect(server.starttls);
    c.command(&[b"LOGOUT"]);
    server.stop();
    let log = server.log();
    assert!(!log.contains("SNI"), "{log}");
    assert!(
        log.contains("shutting down"),
        "the log is not complete: {log}"
    );
}
