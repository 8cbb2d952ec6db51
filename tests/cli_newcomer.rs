//! A newcomer's first ten minutes (issue #14 item 5), with the real
//! `facteur` binary and its embedded default: what the first start prints
//! and whether it works as printed (a test message delivered with the
//! printed command, read back over IMAP), ports checked before the
//! once-only password is shown, Ctrl-C with the output piped to a reader
//! that is gone, LOGOUT over TLS, and the small mistakes of `user add`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, mpsc};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_facteur");
/// Upper bound of any wait for the server.
const WAIT: Duration = Duration::from_secs(60);

/// `facteur serve` on the embedded default in `cwd`, every port chosen by
/// the kernel (tests run side by side).
fn serve_command(cwd: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(["serve", "--http", "127.0.0.1:0", "--lmtp", "127.0.0.1:0"])
        .args(["--imap", "127.0.0.1:0", "--imaps", "127.0.0.1:0"])
        .current_dir(cwd)
        .stdin(Stdio::null());
    c
}

/// Lines of `out` up to `facteur: ready`, read on a thread so the wait is
/// bounded; the receiver gets the later lines.
fn until_ready(out: impl Read + Send + 'static) -> (Vec<String>, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
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
            return (lines, rx);
        }
    }
}

fn value<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {lines:#?}"))
        .trim()
}

fn addr(lines: &[String], prefix: &str) -> SocketAddr {
    value(lines, prefix).parse().unwrap()
}

/// A child process killed if the test ends early (a failed assertion), so
/// that no server outlives its test.
struct Running(Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A plaintext IMAP connection (LOGIN is allowed without TLS on loopback).
struct Imap<S: Read + Write> {
    io: BufReader<S>,
    tag: u32,
}

impl<S: Read + Write> Imap<S> {
    fn start(io: S) -> Imap<S> {
        let mut imap = Imap {
            io: BufReader::new(io),
            tag: 0,
        };
        let greeting = imap.line();
        assert!(greeting.starts_with("* OK"), "{greeting:?}");
        imap
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.io.read_line(&mut line).unwrap();
        line
    }

    fn send(&mut self, command: &str) -> String {
        self.tag += 1;
        let tag = format!("t{}", self.tag);
        write!(self.io.get_mut(), "{tag} {command}\r\n").unwrap();
        self.io.get_mut().flush().unwrap();
        tag
    }

    /// Sends `command` and returns every line up to the tagged one.
    fn command(&mut self, command: &str) -> Vec<String> {
        let tag = self.send(command);
        let mut lines = vec![];
        loop {
            let line = self.line();
            assert!(!line.is_empty(), "closed during {command}: {lines:?}");
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    #[track_caller]
    fn ok(&mut self, command: &str) -> Vec<String> {
        let lines = self.command(command);
        let last = lines.last().unwrap();
        assert!(last.split(' ').nth(1) == Some("OK"), "{command}: {lines:?}");
        lines
    }
}

fn plain(addr: SocketAddr) -> Imap<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    Imap::start(s)
}

/// The first start says where the demo account receives mail and how to
/// reach it, and the one-line command it prints delivers a message that
/// the demo account then reads over IMAP.
#[test]
fn first_start_prints_the_address_the_client_settings_and_a_working_delivery_command() {
    let cwd = tempfile::tempdir().unwrap();
    let mut child = Running(
        serve_command(cwd.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (lines, _rx) = until_ready(child.stdout.take().unwrap());
    assert_eq!(value(&lines, "address:"), "demo@localhost");
    let password = value(&lines, "password:").to_owned();
    let starttls = addr(&lines, "facteur: imap (starttls) listening on ");
    let tls = addr(&lines, "facteur: imap (tls) listening on ");
    let lmtp = addr(&lines, "facteur: lmtp listening on ");
    let text = lines.join("\n");
    assert!(
        text.contains(&format!("server 127.0.0.1, port {} (SSL/TLS)", tls.port())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "server 127.0.0.1, port {} (STARTTLS)",
            starttls.port()
        )),
        "{text}"
    );
    assert!(text.contains("user name demo"), "{text}");
    let deliver = lines
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("python3 "))
        .unwrap_or_else(|| panic!("no delivery command in {text}"));
    assert!(deliver.contains(&lmtp.port().to_string()), "{deliver}");
    let out = Command::new("sh").args(["-c", deliver]).output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("delivered"),
        "{deliver}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut c = plain(starttls);
    c.ok(&format!("LOGIN demo \"{password}\""));
    let select = c.ok("SELECT INBOX");
    assert!(
        select.iter().any(|l| l.trim() == "* 1 EXISTS"),
        "{select:?}"
    );
    let fetch = c.ok("FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]");
    assert!(
        fetch
            .iter()
            .any(|l| l.contains("Subject: Hello from Facteur")),
        "{fetch:?}"
    );
    c.ok("LOGOUT");
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
}

/// Runs `serve` expecting it to refuse to start; returns its output after
/// checking that it printed no password and created no account.
fn refused_start(cwd: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    // The old behaviour was to serve on: bound the wait, stop it then.
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = BufReader::new(stdout).read_to_string(&mut out);
        let _ = tx.send(out);
    });
    let out = rx.recv_timeout(Duration::from_secs(20));
    let _ = child.kill();
    let status = child.wait().unwrap();
    let mut err = String::new();
    BufReader::new(stderr).read_to_string(&mut err).unwrap();
    let out = out.unwrap_or_else(|_| panic!("serve did not stop; stderr: {err}"));
    assert!(!status.success(), "serve started: {out}\n{err}");
    assert!(
        !out.contains("password") && !out.contains("ready"),
        "the once-only password (or ready) was printed before failing: {out}"
    );
    let users = std::fs::read_to_string(cwd.join("facteur-data/users.toml")).unwrap_or_default();
    assert!(!users.contains("demo"), "a demo account was made: {users}");
    Output {
        status,
        stdout: out.into_bytes(),
        stderr: err.into_bytes(),
    }
}

/// A busy port given on the command line stops `serve` before the demo
/// account is made (it used to print the once-only password, then fail
/// on the metrics port).
#[test]
fn a_busy_metrics_port_fails_before_the_demo_password_is_printed() {
    let cwd = tempfile::tempdir().unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap().to_string();
    let out = refused_start(
        cwd.path(),
        &["--http", &busy, "--lmtp", "127.0.0.1:0"]
            .iter()
            .chain(&["--imap", "127.0.0.1:0", "--imaps", "127.0.0.1:0"])
            .copied()
            .collect::<Vec<_>>(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {busy} for http")),
        "{err}"
    );
}

/// With every IMAP port of the embedded default taken, `serve` fails and
/// says so, instead of warning and serving nothing.
#[test]
fn the_embedded_default_fails_clearly_when_no_imap_port_is_free() {
    // Hold 1143 and 1993 (if something else holds them, they are busy all
    // the same).
    let _held: Vec<_> = ["127.0.0.1:1143", "127.0.0.1:1993"]
        .iter()
        .filter_map(|a| TcpListener::bind(a).ok())
        .collect();
    for a in ["127.0.0.1:1143", "127.0.0.1:1993"] {
        assert!(TcpListener::bind(a).is_err(), "{a} is free");
    }
    let cwd = tempfile::tempdir().unwrap();
    let out = refused_start(
        cwd.path(),
        &["--http", "127.0.0.1:0", "--lmtp", "127.0.0.1:0"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen for imap on any port") && err.contains("--imap"),
        "{err}"
    );
}

/// `facteur serve 2>&1 | tee log`, then Ctrl-C: the terminal's SIGINT
/// reaches tee too, whose end of the pipe is gone when Facteur logs its
/// shutdown. Facteur must stop cleanly (it exited 101, "failed printing
/// to stderr: Broken pipe") and say `* BYE` to an IDLE client.
#[test]
fn ctrl_c_with_the_log_pipe_closed_stops_cleanly_and_says_bye_to_idle_clients() {
    let cwd = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    let mut child = Running(
        serve_command(cwd.path())
            .stdout(writer.try_clone().unwrap())
            .stderr(writer)
            .spawn()
            .unwrap(),
    );
    // Read up to `ready`, then close the reading end, as tee dying does.
    let (tx, rx) = mpsc::channel();
    let reader_thread = std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            let ready = line == "facteur: ready";
            let _ = tx.send(line);
            if ready {
                return;
            }
        }
    });
    let mut lines = vec![];
    while lines.last().is_none_or(|l| l != "facteur: ready") {
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("serve never got ready: {lines:?}"));
        lines.push(line);
    }
    reader_thread.join().unwrap();
    let password = value(&lines, "password:").to_owned();
    let starttls = addr(&lines, "facteur: imap (starttls) listening on ");
    let mut c = plain(starttls);
    c.ok(&format!("LOGIN demo \"{password}\""));
    c.ok("SELECT INBOX");
    c.send("IDLE");
    let idling = c.line();
    assert!(idling.starts_with('+'), "{idling:?}");
    signal(&child, "INT");
    let bye = c.line();
    assert!(bye.starts_with("* BYE"), "{bye:?}");
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");
}

/// LOGOUT over TLS ends with close_notify (RFC 8446 §6.1): the client can
/// tell the server's end from a cut connection.
#[test]
fn logout_over_tls_sends_close_notify() {
    use rustls::pki_types::pem::PemObject;
    let cwd = tempfile::tempdir().unwrap();
    let mut child = Running(
        serve_command(cwd.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (lines, _rx) = until_ready(child.stdout.take().unwrap());
    let password = value(&lines, "password:").to_owned();
    let tls = addr(&lines, "facteur: imap (tls) listening on ");
    let mut roots = rustls::RootCertStore::empty();
    let cert = cwd.path().join("facteur-data/tls-cert.pem");
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(tls).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut c = Imap::start(rustls::StreamOwned::new(conn, tcp));
    c.ok(&format!("LOGIN demo \"{password}\""));
    let logout = c.ok("LOGOUT");
    assert!(logout.iter().any(|l| l.starts_with("* BYE")), "{logout:?}");
    // rustls reports a close without close_notify as UnexpectedEof.
    let mut rest = String::new();
    let end = c.io.read_to_string(&mut rest);
    assert!(
        end.is_ok(),
        "the connection ended without close_notify: {end:?}"
    );
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
}

/// A throwaway configuration with cheap Argon2, for `user` commands.
fn config_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "cluster_secret = \"{:032x}\"\n[store]\nbackend = \"fs\"\npath = \"store\"\n\
         [directory]\nbackend = \"static\"\nusers_file = \"users.toml\"\n\
         [crypto.argon2]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\n",
        rand::random::<u128>()
    );
    std::fs::write(dir.path().join("facteur.toml"), config).unwrap();
    dir
}

fn run(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("facteur.toml"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses before reading (an existing login) may have
    // exited already: a broken pipe here is that, not a failure.
    match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `user add` of an existing login says so, whatever the password (it
/// used to judge the password first: "password too weak").
#[test]
fn user_add_of_an_existing_login_says_it_exists_before_judging_the_password() {
    let dir = config_dir();
    let out = run(
        dir.path(),
        &["user", "add", "erin@example.org"],
        "good-password\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    for password in ["short\n", "", "another-good-password\n"] {
        let out = run(dir.path(), &["user", "add", "Erin@Example.org"], password);
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains("already exists"), "{password:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

/// A user added without an address can log in but receive nothing: `user
/// add` says so. One whose login is an address, or given `--address`, gets
/// no warning.
#[test]
fn user_add_without_an_address_warns_that_no_mail_can_arrive() {
    let dir = config_dir();
    let out = run(dir.path(), &["user", "add", "frank"], "good-password\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("frank has no address"),
        "{err}"
    );
    for args in [
        &["user", "add", "grace@example.org"][..],
        &["user", "add", "heidi", "--address", "heidi@example.org"],
    ] {
        let out = run(dir.path(), args, "good-password\n");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            !text(&out.stderr).contains("warning"),
            "{}",
            text(&out.stderr)
        );
    }
}

/// A missing config file: one line, its cause once.
#[test]
fn a_missing_config_file_prints_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("nope.toml"))
        .args(["user", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("nope.toml"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// Every command's `<LOGIN>` argument is explained in its help.
#[test]
fn the_login_argument_has_help_text() {
    for command in ["add", "passwd", "delete", "rekey", "check", "requeue"] {
        let out = Command::new(BIN)
            .args(["user", command, "--help"])
            .output()
            .unwrap();
        let help = text(&out.stdout);
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with("<LOGIN>"))
            .unwrap_or_else(|| panic!("no <LOGIN> in {help}"));
        assert!(
            line.trim_start().trim_start_matches("<LOGIN>").trim().len() > 10,
            "user {command}: {line:?}"
        );
    }
}
