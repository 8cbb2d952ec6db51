//! Hostile IMAP clients (issue #12, item 1): the memory and time an
//! anonymous client can take. The memory tests run the real `facteur
//! serve` and read its peak resident memory (`VmHWM`, reset through
//! `clear_refs` just before each attack); the timeout tests run the driver
//! in-process on a paused clock, so that minutes pass in no time.
//!
//! Each attack is one the issue measured on the old code: a command line
//! of 48 MiB of `(` (1.2 GB), eight 50 MiB literals before login (460
//! MiB), a partial line trickled one byte every 25 seconds (open long
//! past the 60 s pre-auth timeout).

mod fixture;
mod imap_client;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use imap_client::memory;

const BIN: &str = env!("CARGO_BIN_EXE_facteur");
const USER: &str = "alice@example.org";
const PASSWORD: &str = "correct horse battery";
/// Upper bound of any wait for the server.
const WAIT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

/// A running `facteur serve` with one user, stopped on drop.
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Server {
    /// A server on the fs store with `extra` in its `[imap]` section.
    fn start(extra: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let secret = format!("{:032x}", rand::random::<u128>());
        let config = format!(
            "cluster_secret = \"{secret}\"\n\
             [store]\nbackend = \"fs\"\npath = \"store\"\n\
             [directory]\nbackend = \"static\"\nusers_file = \"users.toml\"\n\
             [crypto.argon2]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\n\
             [lmtp]\nlisten = []\n\
             [imap]\nstarttls_listen = [\"127.0.0.1:0\"]\ntls_listen = []\n{extra}\n"
        );
        let path = dir.path().join("facteur.toml");
        std::fs::write(&path, config).unwrap();
        let path = path.to_str().unwrap().to_owned();
        let mut add = Command::new(BIN)
            .args(["--config", &path, "user", "add", USER])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(add.stdin.take().unwrap(), "{PASSWORD}").unwrap();
        assert!(add.wait().unwrap().success(), "user add failed");
        let mut child = Command::new(BIN)
            .args(["--config", &path, "serve", "--http", "127.0.0.1:0"])
            .current_dir(dir.path())
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
        let mut addr = None;
        loop {
            let line = rx.recv_timeout(WAIT).expect("serve never got ready");
            if let Some(a) = line.strip_prefix("facteur: imap (starttls) listening on ") {
                addr = Some(a.parse().unwrap());
            }
            if line == "facteur: ready" {
                break;
            }
        }
        Server {
            child,
            _dir: dir,
            addr: addr.expect("no starttls listener"),
        }
    }

    /// A connection past the greeting.
    fn connect(&self) -> Conn {
        let stream = TcpStream::connect(self.addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut conn = Conn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        };
        let greeting = conn.line();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        conn
    }

    /// The peak resident memory from now on is measured from here.
    fn reset_peak(&self) -> u64 {
        memory::reset_peak(self.child.id());
        memory::rss(self.child.id())
    }

    /// How far the peak rose above `before`.
    fn rise(&self, before: u64) -> u64 {
        memory::peak(self.child.id()).saturating_sub(before)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends `n` bytes of `byte` in pieces, never holding them whole.
    fn flood(&mut self, byte: u8, n: u64) {
        let piece = vec![byte; 256 * 1024];
        let mut left = n;
        while left > 0 {
            let k = left.min(piece.len() as u64) as usize;
            self.stream.write_all(&piece[..k]).unwrap();
            left -= k as u64;
        }
    }

    /// Reads lines up to the one starting with `tag `.
    fn tagged(&mut self, tag: &str) -> String {
        loop {
            let line = self.line();
            assert!(!line.is_empty(), "connection closed before {tag}");
            if line.starts_with(&format!("{tag} ")) {
                return line;
            }
        }
    }

    /// Runs a command and returns its tagged answer.
    fn command(&mut self, tag: &str, command: &str) -> String {
        self.send(format!("{tag} {command}\r\n").as_bytes());
        self.tagged(tag)
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// `a NOOP` followed by 48 MiB of `(`: once tokenised into 24-byte tokens
/// whatever the command (1.2 GB on one connection). Before login the
/// command is read to its end, dropped at 8 KiB, and refused; the session
/// goes on.
#[test]
fn a_parenthesis_flood_before_login_takes_little_memory() {
    let server = Server::start("");
    let mut conn = server.connect();
    let before = server.reset_peak();
    conn.send(b"a NOOP ");
    conn.flood(b'(', 48 * MIB);
    conn.send(b"\r\n");
    let answer = conn.tagged("a");
    let rise = server.rise(before);
    eprintln!("48 MiB of '(' before login: peak RSS +{:.1} MiB", mib(rise));
    assert!(answer.starts_with("a NO [TOOBIG]"), "{answer}");
    assert!(
        conn.command("b", "NOOP").starts_with("b OK"),
        "the session goes on"
    );
    assert!(
        rise < 4 * MIB,
        "peak RSS rose {:.1} MiB for one anonymous command",
        mib(rise)
    );
}

/// Eight connections each announce a 50 MiB literal before login, four
/// synchronizing and four not. The synchronizing ones are refused before
/// the client sends anything (`NO [TOOBIG]`, no `+`); the others are read
/// to their end and dropped. A client that gets `+` sends its literal, as
/// a real one would.
#[test]
fn large_literals_before_login_take_little_memory() {
    const LITERAL: u64 = 50 * MIB;
    let server = Server::start("");
    let mut conns: Vec<Conn> = (0..8).map(|_| server.connect()).collect();
    let before = server.reset_peak();
    let mut answers = Vec::new();
    for (i, conn) in conns.iter_mut().enumerate() {
        let sync = i % 2 == 0;
        let plus = if sync { "" } else { "+" };
        conn.send(format!("a LOGIN {{{LITERAL}{plus}}}\r\n").as_bytes());
        if sync {
            let answer = conn.line();
            if !answer.starts_with('+') {
                answers.push(answer);
                continue;
            }
        }
        conn.flood(b'x', LITERAL);
        conn.send(b" pw\r\n");
        answers.push(conn.tagged("a"));
    }
    let rise = server.rise(before);
    eprintln!(
        "8 literals of 50 MiB before login: peak RSS +{:.1} MiB",
        mib(rise)
    );
    for answer in &answers {
        assert!(answer.starts_with("a NO [TOOBIG]"), "{answers:?}");
    }
    for conn in &mut conns {
        assert!(conn.command("b", "NOOP").starts_with("b OK"));
    }
    assert!(
        rise < 8 * MIB,
        "peak RSS rose {:.1} MiB for 8 anonymous connections",
        mib(rise)
    );
}

/// Many anonymous connections each sending a long partial line (no end
/// in sight): together they hold at most a few tens of KiB each
/// (`unauthenticated_buffer_bound`), not what they sent.
#[test]
fn many_anonymous_connections_hold_bounded_memory_together() {
    const CONNECTIONS: u64 = 100;
    const EACH: u64 = 2 * MIB;
    let server = Server::start("max_connections_per_ip = 200");
    let mut conns: Vec<Conn> = (0..CONNECTIONS).map(|_| server.connect()).collect();
    let before = server.reset_peak();
    for conn in &mut conns {
        conn.send(b"a LOGIN ");
        conn.flood(b'x', EACH);
    }
    // The server has read it all once every connection answers a command
    // that follows the partial line (ending it).
    let answers: Vec<String> = conns
        .iter_mut()
        .map(|conn| {
            conn.send(b"\r\n");
            conn.tagged("a")
        })
        .collect();
    let rise = server.rise(before);
    eprintln!(
        "{CONNECTIONS} anonymous connections sending {} MiB each: peak RSS +{:.1} MiB ({:.0} KiB each)",
        EACH / MIB,
        mib(rise),
        rise as f64 / 1024.0 / CONNECTIONS as f64
    );
    for answer in &answers {
        assert!(answer.starts_with("a NO [TOOBIG]"), "{answer}");
    }
    assert!(
        rise < CONNECTIONS * 128 * 1024,
        "peak RSS rose {:.1} MiB for {CONNECTIONS} anonymous connections",
        mib(rise)
    );
}

/// After login a SEARCH of 48 MiB of `(` (within the 50 MiB command
/// limit) was tokenised into 1.2 GB. Now a command text over
/// `max_command_line` is never parsed, and not buffered past that limit
/// either (only its last bytes, which tell where it ends): 2 MiB, not
/// the command's 48.
#[test]
fn a_parenthesis_flood_after_login_is_not_amplified() {
    const FLOOD: u64 = 48 * MIB;
    let server = Server::start("");
    let mut conn = server.connect();
    let login = conn.command("a", &format!("LOGIN {USER} \"{PASSWORD}\""));
    assert!(login.starts_with("a OK"), "{login}");
    assert!(conn.command("b", "SELECT INBOX").starts_with("b OK"));
    let before = server.reset_peak();
    conn.send(b"c SEARCH ");
    conn.flood(b'(', FLOOD);
    conn.send(b"\r\n");
    let answer = conn.tagged("c");
    let rise = server.rise(before);
    eprintln!("48 MiB of '(' after login: peak RSS +{:.1} MiB", mib(rise));
    assert!(answer.starts_with("c NO [TOOBIG]"), "{answer}");
    assert!(conn.command("d", "NOOP").starts_with("d OK"));
    // Past the line limit (1 MiB) only a line's last bytes are kept: the
    // flood costs the limit and a few buffers, whatever the allocator.
    assert!(
        rise < 8 * MIB,
        "peak RSS rose {:.1} MiB for a {} MiB command",
        mib(rise),
        FLOOD / MIB
    );
}

mod deadline {
    //! The deadline is per command, not per read: the driver in-process
    //! over an in-memory stream, the clock paused.

    use std::future::pending;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use facteur::account::{AccountConfig, Accounts};
    use facteur::crypto::KdfParams;
    use facteur::imap::connection::{Peer, serve};
    use facteur::imap::throttle::Throttle;
    use facteur::imap::{Imap, Options};
    use facteur::log::InstanceId;
    use facteur::store::MemoryStore;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::time::Instant;

    use super::fixture;

    const PRE_AUTH: Duration = Duration::from_secs(60);

    async fn imap() -> (tempfile::TempDir, Arc<Imap>) {
        let dir = tempfile::tempdir().unwrap();
        let config = fixture::config(dir.path(), "deadline-test-cluster-secret");
        let store = Arc::new(MemoryStore::new());
        let (services, _) = fixture::services(
            &config,
            dir.path(),
            store,
            b"deadline-test-cluster-secret",
            vec![fixture::user_at_example("alice")],
            &["alice"],
        )
        .await;
        let ids = services.clone();
        let imap = Arc::new(Imap {
            directory: services.directory.clone(),
            keyrings: services.keyrings.clone(),
            accounts: Accounts::new(
                services.store.clone(),
                AccountConfig::new(
                    InstanceId::new("deadline").unwrap(),
                    facteur::crypto::RecordAuth::from_cluster_secret(b"test cluster secret"),
                ),
                Duration::from_secs(5),
            ),
            user_id: Arc::new(move |login| ids.user_id(login)),
            kdf: KdfParams::TEST,
            recovery_key: false,
            options: Options {
                timeout_unauthenticated: PRE_AUTH,
                ..Options::default()
            },
            throttle: Arc::new(Throttle::new(Default::default())),
            tls: None,
        });
        (dir, imap)
    }

    fn start(imap: Arc<Imap>) -> DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let peer = Peer {
            remote: SocketAddr::from(([127, 0, 0, 1], 40000)),
            local: SocketAddr::from(([127, 0, 0, 1], 143)),
            tls: false,
        };
        tokio::spawn(serve(server, peer, imap, pending::<()>()));
        client
    }

    /// Reads what the server sent until it closes; the text and when.
    async fn until_closed(client: &mut DuplexStream) -> String {
        let mut all = Vec::new();
        let mut buf = [0; 4096];
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&all).into_owned(),
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Trickles `bytes` one every 25 s on its own task, as the issue's
    /// client did, and returns when the server closed, from the start.
    async fn trickle_until_closed(
        mut client: DuplexStream,
        bytes: &'static [u8],
    ) -> (Duration, String) {
        let start = Instant::now();
        let (mut read, mut write) = tokio::io::split(&mut client);
        let writer = async move {
            for b in bytes {
                tokio::time::sleep(Duration::from_secs(25)).await;
                if write.write_all(&[*b]).await.is_err() {
                    break;
                }
            }
            pending::<()>().await;
        };
        let mut all = Vec::new();
        let reader = async {
            let mut buf = [0; 4096];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => all.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::select! {
            () = writer => unreachable!(),
            () = reader => {}
        }
        (start.elapsed(), String::from_utf8_lossy(&all).into_owned())
    }

    /// One byte of `a NOOP` every 25 s: the old driver restarted its 60 s
    /// timeout at every read and kept the connection for as long as bytes
    /// came. Now the command must be whole within 60 s.
    #[tokio::test]
    async fn a_command_trickled_before_login_is_cut_at_the_deadline() {
        let (_dir, imap) = imap().await;
        tokio::time::pause();
        let mut client = start(imap);
        let mut greeting = [0; 256];
        let n = client.read(&mut greeting).await.unwrap();
        assert!(greeting[..n].starts_with(b"* OK"));
        let (elapsed, text) =
            trickle_until_closed(client, b"a NOOP with a long tail of bytes\r\n").await;
        assert!(text.contains("* BYE"), "{text}");
        assert!(!text.contains("a OK"), "{text}");
        assert!(
            elapsed <= PRE_AUTH + Duration::from_secs(1),
            "the connection stayed open {elapsed:?}"
        );
    }

    /// The same inside AUTHENTICATE: its answer lines have the same
    /// deadline, and a timeout there ends the connection (it used to
    /// return to the command loop, which waited anew).
    #[tokio::test]
    async fn an_authenticate_answer_trickled_is_cut_at_the_deadline() {
        let (_dir, imap) = imap().await;
        tokio::time::pause();
        let mut client = start(imap);
        let mut greeting = [0; 256];
        let _ = client.read(&mut greeting).await.unwrap();
        client.write_all(b"a AUTHENTICATE PLAIN\r\n").await.unwrap();
        let mut plus = [0; 64];
        let n = client.read(&mut plus).await.unwrap();
        assert!(plus[..n].starts_with(b"+"), "{:?}", &plus[..n]);
        let (elapsed, text) =
            trickle_until_closed(client, b"AGFsaWNlAHB3AGFsaWNlAHB3AGFsaWNlAHB3\r\n").await;
        assert!(text.contains("* BYE"), "{text}");
        assert!(
            elapsed <= PRE_AUTH + Duration::from_secs(1),
            "the connection stayed open {elapsed:?}"
        );
    }

    /// A silent client is still closed at the deadline, and one that sends
    /// whole commands in time is not.
    #[tokio::test]
    async fn commands_in_time_keep_the_connection() {
        let (_dir, imap) = imap().await;
        tokio::time::pause();
        let mut client = start(imap);
        let mut buf = [0; 256];
        let _ = client.read(&mut buf).await.unwrap();
        for i in 0..5 {
            tokio::time::sleep(PRE_AUTH - Duration::from_secs(5)).await;
            client
                .write_all(format!("t{i} NOOP\r\n").as_bytes())
                .await
                .unwrap();
            let n = client.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(format!("t{i} OK").as_bytes()));
        }
        let start = Instant::now();
        let text = until_closed(&mut client).await;
        assert!(text.contains("* BYE"), "{text}");
        assert!(start.elapsed() <= PRE_AUTH + Duration::from_secs(1));
    }
}
