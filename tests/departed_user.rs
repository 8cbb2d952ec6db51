//! Issue #14 item 6, a departed user's open session: after `facteur user
//! delete`, an account still unlocked on a running instance must not go
//! on serving. A newcomer given the same login gets their mail; the old
//! session is ended with BYE and never sees or touches it (the old keys
//! would quarantine the newcomer's deliveries). The real `facteur serve`,
//! every port chosen by the kernel, waits on conditions.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod fixture;

const BIN: &str = env!("CARGO_BIN_EXE_facteur");
/// Upper bound of any wait for the server.
const WAIT: Duration = Duration::from_secs(60);
const OLD_PASSWORD: &str = "correct horse battery staple";
const NEW_PASSWORD: &str = "another horse, another staple";

fn cli(dir: &Path, args: &[&str], stdin: &str) {
    let out = fixture::run_facteur(&dir.join("facteur.toml"), args, stdin, dir);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `facteur serve`, killed when dropped.
struct Served {
    child: Child,
    imap: u16,
    lmtp: u16,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path) -> Served {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("facteur.toml"))
        .args(["serve", "--http", "127.0.0.1:0"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let port = |line: &str, prefix: &str| -> Option<u16> {
        line.strip_prefix(prefix)?.rsplit(':').next()?.parse().ok()
    };
    let (mut imap, mut lmtp) = (None, None);
    loop {
        let line = rx.recv_timeout(WAIT).expect("serve never got ready");
        imap = imap.or(port(&line, "facteur: imap (starttls) listening on "));
        lmtp = lmtp.or(port(&line, "facteur: lmtp listening on "));
        if line == "facteur: ready" {
            break;
        }
    }
    Served {
        child,
        imap: imap.expect("an IMAP port"),
        lmtp: lmtp.expect("an LMTP port"),
    }
}

struct Imap {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    tag: u32,
}

/// How a command ended.
#[derive(Debug, PartialEq)]
enum Ended {
    Tagged(String),
    Bye,
    Closed,
}

impl Imap {
    fn connect(port: u16, password: &str) -> Imap {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut imap = Imap {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            tag: 0,
        };
        let mut greeting = String::new();
        imap.reader.read_line(&mut greeting).unwrap();
        let (_, ended) = imap.send(&format!("LOGIN alice \"{password}\""));
        assert!(
            matches!(&ended, Ended::Tagged(t) if t.starts_with("OK")),
            "{ended:?}"
        );
        imap
    }

    /// Sends a command; returns the untagged lines and how it ended.
    fn send(&mut self, command: &str) -> (Vec<String>, Ended) {
        self.tag += 1;
        let tag = format!("t{} ", self.tag);
        write!(self.writer, "{tag}{command}\r\n").unwrap();
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return (lines, Ended::Closed);
            }
            if line.starts_with("* BYE") {
                return (lines, Ended::Bye);
            }
            if let Some(rest) = line.strip_prefix(&tag) {
                return (lines, Ended::Tagged(rest.to_owned()));
            }
            lines.push(line);
        }
    }
}

fn deliver(port: u16, text: &str) {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut reply = |expect: &str| loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with(expect), "wanted {expect}: {line}");
        if line.as_bytes().get(3) == Some(&b' ') {
            break;
        }
    };
    reply("220");
    for (command, expect) in [
        ("LHLO test", "250"),
        ("MAIL FROM:<bob@example.org>", "250"),
        ("RCPT TO:<alice@example.org>", "250"),
        ("DATA", "354"),
    ] {
        write!(writer, "{command}\r\n").unwrap();
        reply(expect);
    }
    write!(writer, "{text}\r\n.\r\n").unwrap();
    reply("250");
    write!(writer, "QUIT\r\n").unwrap();
}

#[test]
fn a_deleted_users_session_ends_and_never_touches_the_newcomers_mail() {
    let dir = tempfile::tempdir().unwrap();
    let secret: String = (0..32).map(|i| format!("{:x}", (i * 5 + 1) % 16)).collect();
    std::fs::write(
        dir.path().join("facteur.toml"),
        format!(
            "cluster_secret = \"{secret}\"\n[store]\nbackend = \"fs\"\npath = \"store\"\n\
             [directory]\nbackend = \"static\"\nusers_file = \"users.toml\"\n\
             [crypto.argon2]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\n\
             [lmtp]\nlisten = [\"127.0.0.1:0\"]\n\
             [imap]\nstarttls_listen = [\"127.0.0.1:0\"]\ntls_listen = []\n\
             self_signed_dir = \"tls\"\n"
        ),
    )
    .unwrap();
    let add = ["user", "add", "alice", "--address", "alice@example.org"];
    cli(dir.path(), &add, &format!("{OLD_PASSWORD}\n"));
    let server = serve(dir.path());

    // The departing user's session, in IDLE through what follows.
    let mut old = Imap::connect(server.imap, OLD_PASSWORD);
    let (_, ended) = old.send("SELECT INBOX");
    assert!(
        matches!(&ended, Ended::Tagged(t) if t.starts_with("OK")),
        "{ended:?}"
    );
    write!(old.writer, "idle IDLE\r\n").unwrap();
    let mut line = String::new();
    old.reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("+ "), "{line}");

    // A second session of the departing user, in IDLE with no mailbox
    // selected: no mailbox change can wake it, the account's lock must.
    let mut unselected = Imap::connect(server.imap, OLD_PASSWORD);
    write!(unselected.writer, "idle IDLE\r\n").unwrap();
    let mut line = String::new();
    unselected.reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("+ "), "{line}");

    // Erased, and the login given to someone new, who gets mail at once.
    cli(dir.path(), &["user", "delete", "alice", "--yes"], "");
    cli(dir.path(), &add, &format!("{NEW_PASSWORD}\n"));
    let subject = "Subject: for the newcomer";
    deliver(
        server.lmtp,
        &format!("From: bob@example.org\r\nTo: alice@example.org\r\n{subject}\r\n\r\nWelcome.\r\n"),
    );

    // The old session is ended (at its next poll), having shown nothing
    // of the newcomer's.
    loop {
        let mut line = String::new();
        match old.reader.read_line(&mut line) {
            Ok(0) => panic!("closed without BYE"),
            Ok(_) => {}
            Err(e) => panic!("the old session was never ended: {e}"),
        }
        assert!(
            !line.contains(" EXISTS") || line.starts_with("* 0 "),
            "the old session was shown the newcomer's mail: {line}"
        );
        if line.starts_with("* BYE") {
            break;
        }
    }

    loop {
        let mut line = String::new();
        match unselected.reader.read_line(&mut line) {
            Ok(0) => panic!("the unselected session closed without BYE"),
            Ok(_) => {}
            Err(e) => panic!("the unselected session was never ended: {e}"),
        }
        if line.starts_with("* BYE") {
            break;
        }
    }

    // The newcomer reads the message (not quarantined by the old keys).
    let mut new = Imap::connect(server.imap, NEW_PASSWORD);
    let (lines, ended) = new.send("SELECT INBOX");
    assert!(
        matches!(&ended, Ended::Tagged(t) if t.starts_with("OK")),
        "{ended:?}"
    );
    assert!(lines.iter().any(|l| l == "* 1 EXISTS\r\n"), "{lines:?}");
    let (lines, _) = new.send("FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]");
    assert!(lines.iter().any(|l| l.contains(subject)), "{lines:?}");
}
