//! SIGHUP reloads the IMAP certificate of a running `facteur serve`
//! (issue #14, deployment: Let's Encrypt renews certificates every two
//! months, and a restart would drop every IDLE connection).
//!
//! A real server with certificate A; the files replaced with certificate
//! B and SIGHUP: new connections (implicit TLS and STARTTLS) get B, a
//! connection opened before goes on with A; then a broken key and SIGHUP:
//! the server keeps serving B and logs an error naming the key file.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};

const BIN: &str = env!("CARGO_BIN_EXE_facteur");
/// Upper bound of any wait for the server.
const WAIT: Duration = Duration::from_secs(60);

/// A server killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A certificate for `localhost` and its key, PEM.
fn certificate() -> (String, String, CertificateDer<'static>) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    (
        made.cert.pem(),
        made.signing_key.serialize_pem(),
        made.cert.der().clone(),
    )
}

/// Replaces `path` at once, as certbot's symlink switch does.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Lines of `from`, sent on a channel by a thread.
fn lines(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line of `rx` that `wanted` accepts; panics with what came
/// instead after [`WAIT`].
fn wait_for(
    rx: &mpsc::Receiver<String>,
    what: &str,
    mut wanted: impl FnMut(&str) -> bool,
) -> String {
    let deadline = Instant::now() + WAIT;
    let mut seen = vec![];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if wanted(&line) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no {what} within {WAIT:?}; got {seen:#?}"),
        }
    }
}

fn kill(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} failed");
}

/// A client trusting both certificates: the test looks at which one the
/// server presents, not whether it is trusted.
fn client(trusted: &[&CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add((*cert).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // A resumed session shows the certificate of the session it resumes:
    // every connection does a full handshake instead.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tcp(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp
}

/// A TLS session over `tcp`, its handshake done.
fn handshake(config: &Arc<rustls::ClientConfig>, tcp: TcpStream) -> Tls {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

/// The end-entity certificate the server presented.
fn presented(tls: &Tls) -> CertificateDer<'static> {
    tls.conn.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

fn line(io: &mut impl BufRead) -> String {
    let mut line = String::new();
    io.read_line(&mut line).unwrap();
    line
}

/// An implicit-TLS connection past the greeting.
fn implicit(config: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> BufReader<Tls> {
    let mut io = BufReader::new(handshake(config, tcp(addr)));
    let greeting = line(&mut io);
    assert!(greeting.starts_with("* OK"), "{greeting:?}");
    io
}

/// The certificate a STARTTLS connection gets after the upgrade.
fn starttls(config: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> CertificateDer<'static> {
    let mut io = BufReader::new(tcp(addr));
    let greeting = line(&mut io);
    assert!(greeting.starts_with("* OK"), "{greeting:?}");
    io.get_mut().write_all(b"s STARTTLS\r\n").unwrap();
    let answer = line(&mut io);
    assert!(answer.starts_with("s OK"), "{answer:?}");
    assert!(io.buffer().is_empty());
    presented(&handshake(config, io.into_inner()))
}

/// Sends a NOOP and checks the tagged OK.
fn noop(io: &mut BufReader<Tls>, tag: &str) {
    write!(io.get_mut(), "{tag} NOOP\r\n").unwrap();
    io.get_mut().flush().unwrap();
    loop {
        let got = line(io);
        assert!(!got.is_empty(), "connection closed");
        if got.starts_with(&format!("{tag} ")) {
            assert!(got.starts_with(&format!("{tag} OK")), "{got:?}");
            return;
        }
    }
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_it_when_the_new_one_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let (a_pem, a_key, a_der) = certificate();
    let (b_pem, b_key, b_der) = certificate();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    replace(&cert, &a_pem);
    replace(&key, &a_key);
    let config = format!(
        "cluster_secret = \"{:032x}\"\n\
         [store]\nbackend = \"fs\"\npath = \"store\"\n\
         [directory]\nbackend = \"static\"\nusers_file = \"users.toml\"\n\
         [lmtp]\nlisten = []\n\
         [imap]\nstarttls_listen = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\n\
         certificate = \"cert.pem\"\nprivate_key = \"key.pem\"\n",
        rand::random::<u128>()
    );
    let path = dir.path().join("facteur.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .args(["serve", "--http", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines(child.stdout.take().unwrap());
    let log = lines(child.stderr.take().unwrap());
    let server = Running(child);
    let (mut tls_addr, mut starttls_addr) = (None, None);
    wait_for(&out, "ready", |l| {
        if let Some(a) = l.strip_prefix("facteur: imap (tls) listening on ") {
            tls_addr = Some(a.parse::<SocketAddr>().unwrap());
        }
        if let Some(a) = l.strip_prefix("facteur: imap (starttls) listening on ") {
            starttls_addr = Some(a.parse::<SocketAddr>().unwrap());
        }
        l == "facteur: ready"
    });
    let (tls_addr, starttls_addr) = (tls_addr.unwrap(), starttls_addr.unwrap());
    let trusting = client(&[&a_der, &b_der]);

    let mut before = implicit(&trusting, tls_addr);
    assert!(presented(before.get_ref()) == a_der, "A at start");
    assert!(starttls(&trusting, starttls_addr) == a_der);

    // Renewal: both files replaced, then SIGHUP.
    replace(&cert, &b_pem);
    replace(&key, &b_key);
    kill(&server.0, "HUP");
    wait_for(&log, "reload log line", |l| {
        l.contains("reloaded the TLS certificate") && l.contains("cert.pem")
    });
    let mut after = implicit(&trusting, tls_addr);
    assert!(presented(after.get_ref()) == b_der, "B after the reload");
    assert!(starttls(&trusting, starttls_addr) == b_der, "STARTTLS too");
    // The connection opened before the reload still works, with A.
    noop(&mut before, "b1");
    assert!(presented(before.get_ref()) == a_der);
    noop(&mut after, "a1");

    // A broken key: the server says so and keeps B.
    replace(
        &key,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    );
    kill(&server.0, "HUP");
    let error = wait_for(&log, "reload error", |l| l.contains("cannot reload"));
    assert!(error.contains("ERROR"), "{error}");
    assert!(error.contains("key.pem"), "{error}");
    assert!(presented(implicit(&trusting, tls_addr).get_ref()) == b_der);
    assert!(starttls(&trusting, starttls_addr) == b_der);
    noop(&mut before, "b2");

    // A key that does not fit the certificate (certbot half-way through):
    // refused as well.
    replace(&key, &a_key);
    kill(&server.0, "HUP");
    let error = wait_for(&log, "reload error", |l| l.contains("cannot reload"));
    assert!(error.contains("do not fit"), "{error}");
    assert!(presented(implicit(&trusting, tls_addr).get_ref()) == b_der);

    // And the server still stops cleanly.
    let mut server = server;
    kill(&server.0, "TERM");
    let status = server.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
