//! IMAP end to end: the real `facteur serve` on ports chosen by the kernel,
//! driven by Python's `imaplib` (the scripts in tests/imap/) over STARTTLS
//! and implicit TLS, the clients trusting only the server's self-signed
//! certificate; the listener's TLS and limits, checked at the socket; and
//! the memory a large FETCH takes, read with the Rust client of
//! tests/imap_client.
//!
//! Each test starts its own server in a temporary directory and learns its
//! ports from the lines `serve` prints before `facteur: ready`; nothing
//! sleeps.

mod imap_client;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use imap_client::{Client, large_message, memory};

const BIN: &str = env!("CARGO_BIN_EXE_facteur");
const USER: &str = "alice@example.org";
const PASSWORD: &str = "correct horse battery";
/// Upper bound of any wait for the server; a hang fails instead of
/// blocking the suite.
const WAIT: Duration = Duration::from_secs(60);

/// A running `facteur serve` with one user, stopped (SIGTERM) on drop.
struct Server {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The config file's path, as `--config` takes it.
    config: String,
    starttls: SocketAddr,
    tls: SocketAddr,
    certificate: PathBuf,
}

impl Server {
    /// Starts a server whose `[imap]` section has `extra` settings on top
    /// of listeners on port 0, a self-signed certificate and a 1 s TLS
    /// handshake timeout.
    fn start(extra: &str) -> Server {
        Server::start_on("[store]\nbackend = \"fs\"\npath = \"store\"\n", extra)
    }

    /// The same with `store` as the `[store]` section (and its
    /// subsections); the cluster secret is random, so runs sharing a
    /// bucket do not meet.
    fn start_on(store: &str, extra: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let secret = format!("{:032x}", rand::random::<u128>());
        let config = format!(
            "cluster_secret = \"{secret}\"\n\
             {store}\
             [directory]\nbackend = \"static\"\nusers_file = \"users.toml\"\n\
             [crypto.argon2]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\n\
             [lmtp]\nlisten = []\n\
             [imap]\nstarttls_listen = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\n\
             self_signed_dir = \"tls\"\n{extra}\n"
        );
        let config_path = dir.path().join("facteur.toml");
        std::fs::write(&config_path, config).unwrap();
        let config_arg = config_path.to_str().unwrap().to_owned();

        let mut add = Command::new(BIN)
            .args(["--config", &config_arg, "user", "add", USER])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(add.stdin.take().unwrap(), "{PASSWORD}").unwrap();
        let out = add.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "user add: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let mut server = Server {
            child: None,
            dir,
            config: config_arg,
            starttls: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: SocketAddr::from(([127, 0, 0, 1], 0)),
            certificate: PathBuf::new(),
        };
        server.serve(&[]);
        server
    }

    /// Starts `serve` on this server's directory, with `env` added to its
    /// environment, and learns its ports (new ones at each start) and
    /// certificate.
    fn serve(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let mut child = Command::new(BIN)
            .args(["--config", &self.config, "serve", "--http", "127.0.0.1:0"])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "facteur=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let lines = read_until_ready(&mut child);
        let find = |prefix: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no {prefix:?} in {lines:?}"))
                .to_owned()
        };
        let certificate = find("facteur: imap certificate ");
        let certificate = certificate
            .split(" (self-signed")
            .next()
            .unwrap()
            .to_owned();
        self.starttls = find("facteur: imap (starttls) listening on ")
            .parse()
            .unwrap();
        self.tls = find("facteur: imap (tls) listening on ").parse().unwrap();
        self.certificate = PathBuf::from(certificate);
        self.child = Some(child);
    }

    /// Stops the server and starts it again on the same store (a fresh
    /// process), with `env` added to its environment.
    fn restart(&mut self, env: &[(&str, &str)]) {
        self.terminate();
        self.serve(env);
    }

    /// The server process's id.
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs `tests/imap/<script> <transport>` against this server.
    fn python(&self, script: &str, transport: &str) {
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/imap");
        let out = Command::new("python3")
            .arg(scripts.join(script))
            .arg(transport)
            .current_dir(&scripts)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("FACTEUR_IMAP_HOST", "127.0.0.1")
            .env("FACTEUR_IMAP_PORT", self.starttls.port().to_string())
            .env("FACTEUR_IMAPS_PORT", self.tls.port().to_string())
            .env("FACTEUR_IMAP_CA", &self.certificate)
            .env("FACTEUR_IMAP_USER", USER)
            .env("FACTEUR_IMAP_PASSWORD", PASSWORD)
            .output()
            .expect("python3 on PATH");
        assert!(
            out.status.success(),
            "{script} over {transport} failed\n--- stdout\n{}\n--- stderr\n{}\n--- server log\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn terminate(&mut self) {
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
        self.terminate();
    }
}

/// Reads `serve`'s stdout up to its ready line, on a thread so that the
/// wait is bounded.
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

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

fn read_line(r: &mut impl BufRead) -> String {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    line
}

/// A TLS client trusting only the server's certificate, for 127.0.0.1.
fn tls_client(
    addr: SocketAddr,
    certificate: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(certificate).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    rustls::StreamOwned::new(conn, connect(addr))
}

/// Reads until the peer closes; the connection must end, not time out.
fn assert_closed(mut s: TcpStream) {
    let mut buf = [0; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("connection not closed: {e}"),
        }
    }
}

#[test]
fn implicit_tls_handshake_succeeds_with_the_generated_certificate() {
    let server = Server::start("");
    let pem = std::fs::read_to_string(&server.certificate).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert!(server.dir.path().join("tls/tls-key.pem").is_file());

    let mut tls = BufReader::new(tls_client(server.tls, &server.certificate));
    let greeting = read_line(&mut tls);
    assert!(greeting.starts_with("* OK"), "{greeting:?}");
    let conn = &tls.get_ref().conn;
    assert!(conn.peer_certificates().is_some_and(|c| c.len() == 1));

    // A client trusting other authorities refuses the certificate: it is
    // really the pinned one that made the handshake succeed.
    let other = tempfile::tempdir().unwrap();
    let (other_cert, _) =
        facteur::server::tls::ensure_self_signed(other.path(), &["127.0.0.1".into()]).unwrap();
    let mut refused = tls_client(server.tls, &other_cert);
    let mut buf = [0; 16];
    let err = refused.read(&mut buf).unwrap_err();
    assert!(
        err.to_string().contains("UnknownIssuer") || err.to_string().contains("certificate"),
        "{err}"
    );
}

#[test]
fn a_client_that_never_handshakes_is_dropped_after_the_timeout() {
    let server = Server::start("tls_handshake_timeout = 1");
    let started = Instant::now();
    let silent = connect(server.tls);
    assert_closed(silent);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the 1 s timeout"
    );
    // The listener was not stalled meanwhile, and still serves.
    let mut tls = BufReader::new(tls_client(server.tls, &server.certificate));
    assert!(read_line(&mut tls).starts_with("* OK"));
}

#[test]
fn a_handshake_in_progress_does_not_stall_other_clients() {
    let server = Server::start("tls_handshake_timeout = 30");
    // Half a ClientHello, then silence.
    let mut stalled = connect(server.tls);
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let started = Instant::now();
    let mut tls = BufReader::new(tls_client(server.tls, &server.certificate));
    assert!(read_line(&mut tls).starts_with("* OK"));
    assert!(started.elapsed() < Duration::from_secs(30));
    drop(stalled);
}

#[test]
fn the_per_ip_limit_refuses_the_extra_connection() {
    // A long handshake timeout: a prompt close below is the refusal.
    let server = Server::start("max_connections_per_ip = 2\ntls_handshake_timeout = 30");
    let mut first = BufReader::new(connect(server.starttls));
    assert!(read_line(&mut first).starts_with("* OK"));
    let mut second = BufReader::new(tls_client(server.tls, &server.certificate));
    assert!(read_line(&mut second).starts_with("* OK"));

    // STARTTLS ports refuse with a BYE greeting (RFC 9051 §7.1.5).
    let mut third = BufReader::new(connect(server.starttls));
    let bye = read_line(&mut third);
    assert!(bye.starts_with("* BYE [UNAVAILABLE]"), "{bye:?}");
    assert_closed(third.into_inner());

    // Implicit-TLS ports close before any handshake.
    let started = Instant::now();
    assert_closed(connect(server.tls));
    assert!(started.elapsed() < Duration::from_secs(30));

    // The counted connections still work.
    first.get_mut().write_all(b"a NOOP\r\n").unwrap();
    assert!(read_line(&mut first).starts_with("a OK"));
}

#[test]
fn shutdown_says_bye_to_connected_clients() {
    let mut server = Server::start("");
    let mut client = BufReader::new(connect(server.starttls));
    assert!(read_line(&mut client).starts_with("* OK"));
    server.terminate();
    let bye = read_line(&mut client);
    assert!(bye.starts_with("* BYE"), "{bye:?}");
}

#[test]
fn imaplib_login_and_logout() {
    let server = Server::start("");
    for transport in ["starttls", "tls"] {
        server.python("login.py", transport);
    }
}

#[test]
fn imaplib_mailboxes() {
    let server = Server::start("");
    for transport in ["starttls", "tls"] {
        server.python("mailboxes.py", transport);
    }
}

#[test]
fn imaplib_messages() {
    let server = Server::start("");
    for transport in ["starttls", "tls"] {
        server.python("messages.py", transport);
    }
}

#[test]
fn imaplib_idle_sees_a_message_appended_by_another_connection() {
    let server = Server::start("");
    for transport in ["starttls", "tls"] {
        server.python("idle.py", transport);
    }
}

#[test]
fn the_total_limit_queues_connections_until_one_ends() {
    let server = Server::start("max_connections = 1");
    let mut first = BufReader::new(connect(server.starttls));
    assert!(read_line(&mut first).starts_with("* OK"));

    // The second connection waits in the backlog: no greeting while the
    // first holds the only permit.
    let mut second = BufReader::new(connect(server.starttls));
    second
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut line = String::new();
    let err = second.read_line(&mut line).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err} {line:?}"
    );

    first.get_mut().write_all(b"a LOGOUT\r\n").unwrap();
    assert!(read_line(&mut first).starts_with("* BYE"));
    assert_closed(first.into_inner());
    second.get_ref().set_read_timeout(Some(WAIT)).unwrap();
    assert!(read_line(&mut second).starts_with("* OK"));
}

#[test]
fn failed_logins_are_throttled() {
    // One free failure per login; then 1 s before the next attempt.
    let server = Server::start("login_failures_per_login = 1");
    // Plaintext LOGIN is allowed on loopback.
    let mut c = BufReader::new(connect(server.starttls));
    assert!(read_line(&mut c).starts_with("* OK"));
    let mut command = |line: &str| {
        c.get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        let tag = line.split(' ').next().unwrap().to_owned();
        loop {
            let reply = read_line(&mut c);
            assert!(!reply.is_empty(), "connection closed");
            if reply.starts_with(&format!("{tag} ")) {
                return reply;
            }
        }
    };
    let started = Instant::now();
    let reply = command(&format!("a LOGIN {USER} \"not the password\""));
    assert!(
        reply.starts_with("a NO [AUTHENTICATIONFAILED]"),
        "{reply:?}"
    );
    let reply = command(&format!("b LOGIN {USER} \"{PASSWORD}\""));
    if started.elapsed() < Duration::from_secs(1) {
        assert!(reply.starts_with("b NO [UNAVAILABLE]"), "{reply:?}");
    } else {
        // Too slow a machine to see the delay: at least it ended.
        assert!(reply.starts_with("b OK"), "{reply:?}");
    }
    // Another login from the same address is not delayed.
    let reply = command("c LOGIN bob@example.org \"whatever it is\"");
    assert!(
        reply.starts_with("c NO [AUTHENTICATIONFAILED]"),
        "{reply:?}"
    );
}

/// Issue #4: a FETCH of many large bodies does not hold them all. 100
/// messages of 1 MiB are appended, the server restarted (a fresh process:
/// memory its allocator kept from the APPENDs could otherwise be reused by
/// the FETCH without showing), and `UID FETCH 1:* (BODY.PEEK[])` read
/// whole, every body checked; the server's peak resident memory during the
/// FETCH (VmHWM, reset just before) must rise by well under the 100 MiB
/// sent.
///
/// What the server may hold at once, by construction: the account's body
/// cache (`AccountConfig::body_cache_bytes`: 8 MiB, a constant, not in the
/// config file; 8 of these bodies); the bodies being downloaded
/// (`PARALLEL_BODIES` = 4 in src/imap/fetch.rs), each, while it is opened,
/// the sealed object, the decrypted zstd frame and the decompressed body,
/// under 3 MiB, and once opened the cache's copy; the response being
/// written (the literal copied from the body, its encoding, the output
/// buffer flushed past 256 KiB): about 4 MiB. So at most about 24 MiB.
///
/// With jemalloc (the `jemalloc` feature, off by default), built to return
/// freed pages at once (`.cargo/config.toml`), this measured 14-15 MiB, and
/// 50 MiB with jemalloc's default 10 s decay. With glibc's malloc (the
/// default build), each thread that allocates gets its own arena and
/// keeps what is freed there (44-52 MiB on 2 cores), hence
/// `MALLOC_ARENA_MAX=1` below, with which glibc measured 23-25 MiB (22.7
/// with one body at a time, 32 with 16, 75 with 64). The 40 MiB bound thus
/// fails with a few dozen bodies held at once.
#[test]
fn a_fetch_of_many_large_bodies_holds_a_bounded_amount_of_memory() {
    const MESSAGES: usize = 100;
    const SIZE: usize = 1 << 20;
    const BOUND: u64 = 40 << 20;
    let mut server = Server::start("");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let login = |addr: SocketAddr| async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut c, greeting) = Client::start(stream).await;
        assert!(greeting.starts_with("* OK"), "{greeting}");
        let r = c.run(&format!("LOGIN {USER} \"{PASSWORD}\"")).await;
        assert!(r.ok(), "{r:?}");
        c
    };

    runtime.block_on(async {
        let mut c = login(server.starttls).await;
        // LITERAL+, pipelined: every APPEND sent, then every answer read.
        let mut tags = Vec::with_capacity(MESSAGES);
        for i in 0..MESSAGES {
            let m = large_message(i, SIZE);
            let tag = c.tag();
            c.send(format!("{tag} APPEND INBOX {{{}+}}\r\n", m.len()).as_bytes())
                .await;
            c.send(&m).await;
            c.send(b"\r\n").await;
            tags.push(tag);
        }
        for (i, tag) in tags.iter().enumerate() {
            let r = c.until_tagged(tag).await;
            assert!(r.ok(), "APPEND {i}: {r:?}");
        }
        assert!(c.run("LOGOUT").await.ok());
    });

    server.restart(&[("MALLOC_ARENA_MAX", "1")]);
    let pid = server.pid();
    let (before, peak, bytes) = runtime.block_on(async {
        let mut c = login(server.starttls).await;
        let r = c.run("SELECT INBOX").await;
        assert!(r.has(&format!("* {MESSAGES} EXISTS")), "{r:?}");
        let before = memory::rss(pid);
        memory::reset_peak(pid);
        let mut seen = vec![false; MESSAGES];
        let mut bytes = 0;
        let tagged = c
            .run_streaming("UID FETCH 1:* (BODY.PEEK[])", |text, body| {
                let text = String::from_utf8_lossy(text);
                let uid: usize = text
                    .split_once("UID ")
                    .and_then(|(_, rest)| rest.split(' ').next()?.parse().ok())
                    .unwrap_or_else(|| panic!("no UID in {text:?}"));
                assert!(
                    (1..=MESSAGES).contains(&uid) && !seen[uid - 1],
                    "UID {uid} unexpected or twice: {text:?}"
                );
                seen[uid - 1] = true;
                let expected = large_message(uid - 1, SIZE);
                assert_eq!(body.len(), expected.len(), "UID {uid}: {text:?}");
                assert!(body == expected, "UID {uid}: body differs");
                bytes += body.len();
            })
            .await;
        assert!(tagged.split(' ').nth(1) == Some("OK"), "{tagged}");
        assert!(seen.iter().all(|s| *s), "bodies missing: {seen:?}");
        (before, memory::peak(pid), bytes)
    });
    let rise = peak.saturating_sub(before);
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    eprintln!(
        "FETCH of {MESSAGES} bodies ({:.1} MiB): server RSS {:.1} MiB before, peak {:.1} MiB \
         (+{:.1} MiB)",
        mib(bytes as u64),
        mib(before),
        mib(peak),
        mib(rise)
    );
    assert!(
        rise < BOUND,
        "the server's peak memory rose by {:.1} MiB during a FETCH returning {:.1} MiB \
         (bound {:.0} MiB): it holds more than its body cache and a few downloads at once",
        mib(rise),
        mib(bytes as u64),
        mib(BOUND)
    );
}

/// mbsync (isync), a real synchronising client: a message put in one local
/// Maildir reaches another through the server, a flag set in one reaches
/// the other, and a message deleted in one disappears from the other.
/// Skipped without `mbsync` unless `FACTEUR_REQUIRE_MBSYNC=1` (set by
/// scripts/test.sh, which installs Debian's isync).
#[test]
fn mbsync_synchronises_two_maildirs_through_the_server() {
    let have = Command::new("mbsync").arg("--version").output().is_ok();
    if !have {
        assert!(
            std::env::var("FACTEUR_REQUIRE_MBSYNC").as_deref() != Ok("1"),
            "FACTEUR_REQUIRE_MBSYNC=1 but mbsync is not installed (Debian package isync)"
        );
        eprintln!("notice: mbsync test skipped (no mbsync; apt-get install isync)");
        return;
    }
    let server = Server::start("");
    let root = server.dir.path();
    let rc = |name: &str| -> PathBuf {
        let maildir = root.join(name);
        std::fs::create_dir_all(&maildir).unwrap();
        let config = format!(
            "IMAPAccount facteur\nHost 127.0.0.1\nPort {port}\nUser {USER}\nPass \"{PASSWORD}\"\n\
             SSLType STARTTLS\nCertificateFile {cert}\nAuthMechs PLAIN\n\n\
             IMAPStore remote\nAccount facteur\n\n\
             MaildirStore local\nPath {maildir}/\nInbox {maildir}/INBOX\nSubFolders Verbatim\n\n\
             Channel sync\nFar :remote:\nNear :local:\nPatterns INBOX Sent\nCreate Both\n\
             Expunge Both\nSyncState *\nSync All\n",
            port = server.starttls.port(),
            cert = server.certificate.display(),
            maildir = maildir.display(),
        );
        let path = root.join(format!("{name}.mbsyncrc"));
        std::fs::write(&path, config).unwrap();
        path
    };
    let sync = |config: &Path| {
        let out = Command::new("mbsync")
            .args(["-c", config.to_str().unwrap(), "-a"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mbsync failed\n--- stdout\n{}\n--- stderr\n{}\n--- server log\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
    };
    // Files of a Maildir folder: (name, content).
    let files = |folder: &Path| -> Vec<(String, String)> {
        let mut all = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(folder.join(sub)) {
                for e in entries {
                    let e = e.unwrap();
                    let content = std::fs::read_to_string(e.path()).unwrap();
                    all.push((e.file_name().to_string_lossy().into_owned(), content));
                }
            }
        }
        all
    };
    let (a, b) = (rc("a"), rc("b"));
    sync(&a);
    sync(&b);
    let a_inbox = root.join("a/INBOX");
    let b_inbox = root.join("b/INBOX");
    std::fs::write(
        a_inbox.join("new/1700000000.1.host"),
        "From: Carol <carol@example.org>\r\nTo: alice@example.org\r\nSubject: via mbsync\r\n\
         Message-ID: <mbsync-1@example.org>\r\n\r\nSynchronised.\r\n",
    )
    .unwrap();
    sync(&a);
    sync(&b);
    let got = files(&b_inbox);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].1.contains("Subject: via mbsync") && got[0].1.contains("Synchronised."));
    assert!(!got[0].0.contains(":2,S"), "not seen yet: {}", got[0].0);

    // Seen in A: the flag travels to B.
    let (name, _) = &files(&a_inbox)[0];
    let dir = if a_inbox.join("cur").join(name).exists() {
        "cur"
    } else {
        "new"
    };
    let base = name.split(":2,").next().unwrap();
    std::fs::rename(
        a_inbox.join(dir).join(name),
        a_inbox.join("cur").join(format!("{base}:2,S")),
    )
    .unwrap();
    sync(&a);
    sync(&b);
    let got = files(&b_inbox);
    assert!(got.len() == 1 && got[0].0.ends_with(":2,S"), "{got:?}");

    // Deleted in B: gone from the server, then from A.
    let (name, _) = &got[0];
    std::fs::remove_file(b_inbox.join("cur").join(name))
        .or_else(|_| std::fs::remove_file(b_inbox.join("new").join(name)))
        .unwrap();
    sync(&b);
    sync(&a);
    assert!(files(&a_inbox).is_empty(), "{:?}", files(&a_inbox));
}

/// The same imaplib sessions on a server whose store is Garage (the
/// `FACTEUR_TEST_S3_*` bucket); required in CI (`FACTEUR_REQUIRE_S3=1`).
#[test]
fn imaplib_against_a_garage_backed_server() {
    let var = |name: &str| std::env::var(name).ok();
    let (Some(endpoint), Some(bucket), Some(access_key), Some(_)) = (
        var("FACTEUR_TEST_S3_ENDPOINT"),
        var("FACTEUR_TEST_S3_BUCKET"),
        var("FACTEUR_TEST_S3_ACCESS_KEY"),
        var("FACTEUR_TEST_S3_SECRET_KEY"),
    ) else {
        assert!(
            var("FACTEUR_REQUIRE_S3").as_deref() != Some("1"),
            "FACTEUR_REQUIRE_S3=1 but FACTEUR_TEST_S3_* are not set"
        );
        eprintln!("notice: Garage IMAP test skipped (no FACTEUR_TEST_S3_*; see scripts/garage.sh)");
        return;
    };
    let region = var("FACTEUR_TEST_S3_REGION").unwrap_or_else(|| "garage".into());
    let server = Server::start_on(
        &format!(
            "[store]\nbackend = \"s3\"\n[store.s3]\nendpoint = {endpoint:?}\nregion = {region:?}\n\
             bucket = {bucket:?}\naccess_key_id = {access_key:?}\n\
             secret_access_key = {{ env = \"FACTEUR_TEST_S3_SECRET_KEY\" }}\n"
        ),
        "",
    );
    for transport in ["starttls", "tls"] {
        server.python("messages.py", transport);
        server.python("idle.py", transport);
    }
}
