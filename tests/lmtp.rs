//! The LMTP server as Postfix sees it: the real listener, in-process on
//! `127.0.0.1:0` over a `MemoryStore`, spoken to in bytes; then the mail
//! is drained into INBOX the way a logged-in session would. One test runs
//! the binary (`facteur serve --lmtp 127.0.0.1:0`).

use std::sync::Arc;
use std::time::Duration;

use facteur::account::Account;
use facteur::crypto::UserKeys;
use facteur::log::InstanceId;
use facteur::server::lmtp::{self, Listener, Settings};
use facteur::server::{Services, Shutdown, ShutdownTrigger};
use facteur::store::{MemoryStore, SharedStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod fixture;
mod lmtp_client;
use fixture::user;
use lmtp_client::Client;

/// A running LMTP server with users `alice` (alice@example.org, alias
/// postmaster@example.org), `bob`, `carol` (no keyring yet) and `dave`
/// (a quota of [`DAVE_QUOTA`]).
struct Server {
    _dir: tempfile::TempDir,
    services: Services,
    store: Arc<MemoryStore>,
    addr: std::net::SocketAddr,
    alice: UserKeys,
    bob: UserKeys,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<()>,
    /// The host name the server gives in replies and `Received:`.
    host: String,
}

/// dave's quota, in bytes.
const DAVE_QUOTA: u64 = 64 << 10;

impl Server {
    async fn start() -> Server {
        Server::with(|_| {}).await
    }

    async fn with(tune: impl FnOnce(&mut Settings)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let config = fixture::config(dir.path(), "0123456789abcdef0123456789abcdef");
        let mut dave = user("dave", &["dave@example.org"], &[]);
        dave.quota = Some(facteur::size::ByteSize(DAVE_QUOTA));
        let users = vec![
            user("alice", &["alice@example.org"], &["postmaster@example.org"]),
            user("bob", &["bob@example.org"], &[]),
            user("carol", &["carol@example.org"], &[]),
            dave,
        ];
        let store = Arc::new(MemoryStore::new());
        // dave has a quota; his keys are not needed by the tests.
        let (services, keys) = fixture::services(
            &config,
            dir.path(),
            store.clone(),
            b"lmtp-test-cluster-secret",
            users,
            &["alice", "bob", "dave"],
        )
        .await;
        let [alice, bob, _dave]: [UserKeys; 3] = keys.try_into().ok().unwrap();
        let mut settings = Settings::from_config(&config.lmtp);
        tune(&mut settings);
        let host = settings.options.hostname.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (trigger, shutdown) = Shutdown::new();
        let task = tokio::spawn(lmtp::serve(
            Listener::Tcp(listener),
            lmtp::backend(&services),
            settings,
            shutdown,
        ));
        Server {
            _dir: dir,
            services,
            store,
            addr,
            alice,
            bob,
            trigger,
            task,
            host,
        }
    }

    async fn client(&self) -> Client {
        Client::connect(TcpStream::connect(self.addr).await.unwrap()).await
    }

    fn account(&self, login: &str, keys: &UserKeys) -> Arc<Account> {
        let store: SharedStore = self.store.clone();
        Account::new(
            self.services.user_id(login),
            keys.clone(),
            store,
            self.services
                .account_config(InstanceId::new("test").unwrap()),
        )
    }

    /// Drains the user's incoming queue and returns every INBOX body.
    async fn inbox(&self, login: &str, keys: &UserKeys) -> Vec<Vec<u8>> {
        let account = self.account(login, keys);
        account.drain_incoming().await.unwrap();
        let (_, inbox) = account.open_by_name("INBOX").await.unwrap();
        let uids: Vec<u32> = inbox.read(|s| s.messages().map(|m| m.uid).collect()).await;
        let mut bodies = Vec::new();
        for uid in uids {
            bodies.push(inbox.body(uid).await.unwrap().to_vec());
        }
        bodies
    }

    /// Store objects under any user's `incoming/` or `blob/`.
    fn mail_objects(&self) -> usize {
        self.store
            .keys()
            .iter()
            .filter(|k| k.contains("/incoming/") || k.contains("/blob/"))
            .count()
    }
}

const MESSAGE: &[u8] = b"From: Sender <sender@example.net>\r\nTo: alice@example.org\r\n\
    Subject: hello\r\nMessage-ID: <1@example.net>\r\n\r\nHi Alice.\r\n..a dotted line\r\n";

#[tokio::test]
async fn delivered_mail_reaches_inbox_with_trace_headers() {
    let s = Server::start().await;
    let mut c = s.client().await;
    c.hello().await;
    assert_eq!(
        c.cmd("MAIL FROM:<sender@example.net>").await,
        "250 2.1.0 sender OK\r\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<Alice+Lists@Example.org>").await,
        "250 2.1.5 recipient OK\r\n"
    );
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(MESSAGE).await;
    assert_eq!(
        c.cmd(".").await,
        "250 2.0.0 <Alice+Lists@Example.org> delivered\r\n"
    );
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 bye\r\n");
    c.closed().await;

    let inbox = s.inbox("alice", &s.alice).await;
    assert_eq!(inbox.len(), 1);
    let stored = String::from_utf8_lossy(&inbox[0]).into_owned();
    // Return-Path and Delivered-To, then Received (RFC 5321 §4.4, with the
    // LHLO name and the peer), then the message as sent.
    let (trace, message) = stored.split_once("\r\nFrom: ").unwrap();
    let (trace, date) = trace.rsplit_once("; ").unwrap();
    assert_eq!(
        trace,
        format!(
            "Return-Path: <sender@example.net>\r\nDelivered-To: Alice+Lists@Example.org\r\n\
             Received: from test ([127.0.0.1])\r\n\tby {} (Facteur) with LMTP\r\n\
             \tfor <Alice+Lists@Example.org>",
            s.host
        )
    );
    assert!(date.ends_with(" +0000"), "{date}");
    assert_eq!(
        format!("From: {message}").into_bytes(),
        MESSAGE.replace_dot()
    );
}

/// The stored message without the `Received:` field LMTP added (its date
/// and host vary).
fn without_received(message: &[u8]) -> String {
    let text = String::from_utf8_lossy(message);
    let start = text.find("\r\nReceived: ").expect("a Received field") + 2;
    let end = start
        + text[start..]
            .match_indices("\r\n")
            .map(|(i, _)| i + 2)
            .find(|&i| !text[start + i..].starts_with('\t'))
            .unwrap();
    format!("{}{}", &text[..start], &text[end..])
}

/// `..a` on the wire is `.a` in the message.
trait ReplaceDot {
    fn replace_dot(&self) -> Vec<u8>;
}

impl ReplaceDot for [u8] {
    fn replace_dot(&self) -> Vec<u8> {
        String::from_utf8_lossy(self)
            .replace("\r\n..", "\r\n.")
            .into_bytes()
    }
}

#[tokio::test]
async fn mixed_recipients_get_one_reply_each_in_rcpt_order() {
    let s = Server::start().await;
    let mut c = s.client().await;
    c.hello().await;
    // Pipelined, as Postfix does (RFC 2920).
    c.send(
        b"MAIL FROM:<>\r\nRCPT TO:<nobody@example.org>\r\nRCPT TO:<carol@example.org>\r\n\
          RCPT TO:<bob@example.org>\r\nRCPT TO:<postmaster@example.org>\r\n\
          RCPT TO:<alice@example.org>\r\nDATA\r\n",
    )
    .await;
    assert_eq!(c.reply().await, "250 2.1.0 sender OK\r\n");
    assert_eq!(c.reply().await, "550 5.1.1 no such user here\r\n");
    assert_eq!(
        c.reply().await,
        "450 4.2.1 mailbox not activated: the user has never logged in\r\n"
    );
    for _ in 0..3 {
        assert_eq!(c.reply().await, "250 2.1.5 recipient OK\r\n");
    }
    assert!(c.reply().await.starts_with("354 "));
    c.send(MESSAGE).await;
    c.send(b".\r\n").await;
    for rcpt in ["bob", "postmaster", "alice"] {
        assert_eq!(
            c.reply().await,
            format!("250 2.0.0 <{rcpt}@example.org> delivered\r\n")
        );
    }
    // alice's two addresses: one message.
    assert_eq!(s.inbox("alice", &s.alice).await.len(), 1);
    let bob = s.inbox("bob", &s.bob).await;
    assert_eq!(bob.len(), 1);
    assert!(bob[0].starts_with(b"Return-Path: <>\r\nDelivered-To: bob@example.org\r\n"));
}

#[tokio::test]
async fn store_offline_answers_451_and_leaves_nothing_visible() {
    let s = Server::start().await;
    let mut c = s.client().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.net>").await;
    assert_eq!(
        c.cmd("RCPT TO:<alice@example.org>").await,
        "250 2.1.5 recipient OK\r\n"
    );
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(MESSAGE).await;
    s.store.set_offline(true);
    assert_eq!(
        c.cmd(".").await,
        "451 4.3.0 <alice@example.org> temporary failure, try again later\r\n"
    );
    // The keyring cannot be read either: 451 at RCPT.
    c.cmd("MAIL FROM:<a@example.net>").await;
    assert_eq!(
        c.cmd("RCPT TO:<alice@example.org>").await,
        "451 4.3.0 temporary failure, try again later\r\n"
    );
    s.store.set_offline(false);
    assert_eq!(s.mail_objects(), 0);
    assert!(s.inbox("alice", &s.alice).await.is_empty());
    // The session goes on.
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 reset\r\n");
}

/// Someone who can write the bucket replaces alice's delivery key with
/// one of their own: LMTP refuses it (temporarily, so Postfix keeps the
/// mail) instead of sealing her mail to it.
#[tokio::test]
async fn a_substituted_delivery_key_is_refused() {
    use facteur::store::ObjectStore;
    let s = Server::start().await;
    let alice = s.services.user_id("alice");
    let key = facteur::store::layout::delivery_key(&alice);
    let mut forged = s.store.get(&key).await.unwrap().to_vec();
    forged[..32].copy_from_slice(&[7; 32]);
    s.store.put(&key, forged.into()).await.unwrap();

    let mut c = s.client().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.net>").await;
    assert_eq!(
        c.cmd("RCPT TO:<alice@example.org>").await,
        "451 4.3.0 temporary failure, try again later\r\n"
    );
    assert_eq!(s.mail_objects(), 0);
    // Her next unlock puts the right key back.
    s.services
        .keyrings
        .unlock(&alice, &facteur::crypto::Password::new("pw"))
        .await
        .unwrap();
    c.cmd("RSET").await;
    c.cmd("MAIL FROM:<a@example.net>").await;
    assert_eq!(
        c.cmd("RCPT TO:<alice@example.org>").await,
        "250 2.1.5 recipient OK\r\n"
    );
}

#[tokio::test]
async fn oversized_messages_are_refused_at_mail_and_after_data() {
    let s = Server::with(|settings| settings.options.max_message_size = 1024).await;
    let mut c = s.client().await;
    let r = c.cmd("LHLO test").await;
    assert!(r.contains("250-SIZE 1024\r\n"), "{r}");
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.net> SIZE=2000").await,
        "552 5.3.4 message size exceeds fixed maximum of 1024 bytes\r\n"
    );
    c.cmd("MAIL FROM:<a@example.net>").await;
    c.cmd("RCPT TO:<alice@example.org>").await;
    c.cmd("RCPT TO:<bob@example.org>").await;
    c.cmd("DATA").await;
    for _ in 0..100 {
        c.send(b"0123456789012345678901234567890123456789\r\n")
            .await;
    }
    c.send(b"RCPT TO:<looks-like-a-command@example.org>\r\n.\r\n")
        .await;
    for _ in 0..2 {
        assert_eq!(
            c.reply().await,
            "552 5.3.4 message size exceeds fixed maximum of 1024 bytes\r\n"
        );
    }
    assert_eq!(s.mail_objects(), 0);
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK\r\n");
}

#[tokio::test]
async fn bare_lf_lines_are_stored_as_crlf() {
    let s = Server::start().await;
    let mut c = s.client().await;
    c.send(b"LHLO test\nMAIL FROM:<a@example.net>\nRCPT TO:<bob@example.org>\nDATA\n")
        .await;
    c.reply().await;
    c.reply().await;
    c.reply().await;
    assert!(c.reply().await.starts_with("354 "));
    // Only CRLF . CRLF ends the data (bare-LF ends are message text).
    c.send(b"Subject: lf\n\nline one\nline two\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 <bob@example.org> delivered\r\n");
    let bob = s.inbox("bob", &s.bob).await;
    assert_eq!(
        without_received(&bob[0]),
        "Return-Path: <a@example.net>\r\nDelivered-To: bob@example.org\r\n\
         Subject: lf\r\n\r\nline one\r\nline two\r\n"
    );
}

#[tokio::test]
async fn a_client_leaving_mid_data_stores_nothing() {
    let s = Server::start().await;
    let mut c = s.client().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.net>").await;
    c.cmd("RCPT TO:<alice@example.org>").await;
    c.cmd("DATA").await;
    // No final dot, then gone.
    c.send(MESSAGE).await;
    c.writer.shutdown().await.unwrap();
    c.closed().await;
    // The server saw the end of the connection; a new one works.
    let mut c = s.client().await;
    c.hello().await;
    assert_eq!(s.mail_objects(), 0);
    assert!(s.inbox("alice", &s.alice).await.is_empty());
}

#[tokio::test]
async fn long_lines_and_out_of_order_commands_keep_the_session_alive() {
    let s = Server::start().await;
    let mut c = s.client().await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.net>").await,
        "503 5.5.1 say LHLO first\r\n"
    );
    assert_eq!(
        c.cmd("EHLO test").await,
        "500 5.5.1 this is LMTP: say LHLO (RFC 2033)\r\n"
    );
    c.hello().await;
    assert_eq!(
        c.cmd(&format!("NOOP {}", "x".repeat(5000))).await,
        "500 5.5.2 line too long\r\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<alice@example.org>").await,
        "503 5.5.1 need MAIL before RCPT\r\n"
    );
    assert_eq!(
        c.cmd("DATA").await,
        "503 5.5.1 need MAIL and RCPT before DATA\r\n"
    );
    c.cmd("MAIL FROM:<a@example.net>").await;
    assert_eq!(c.cmd("DATA").await, "503 5.5.1 no valid recipients\r\n");
    assert!(c.cmd("VRFY alice").await.starts_with("252 2.5.2 "));
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK\r\n");
}

#[tokio::test]
async fn a_rcpt_flood_is_bounded() {
    let s = Server::with(|settings| settings.options.max_recipients = 3).await;
    let mut c = s.client().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.net>").await;
    let mut flood = Vec::new();
    for i in 0..50 {
        flood.extend_from_slice(format!("RCPT TO:<x{i}@example.org>\r\n").as_bytes());
    }
    c.send(&flood).await;
    for i in 0..50 {
        let r = c.reply().await;
        if i < 3 {
            assert_eq!(r, "550 5.1.1 no such user here\r\n");
        } else {
            assert_eq!(r, "452 4.5.3 too many recipients\r\n");
        }
    }
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 reset\r\n");
    c.cmd("MAIL FROM:<a@example.net>").await;
    assert_eq!(
        c.cmd("RCPT TO:<bob@example.org>").await,
        "250 2.1.5 recipient OK\r\n"
    );
}

#[tokio::test]
async fn non_utf8_headers_are_delivered_byte_for_byte() {
    let s = Server::start().await;
    let mut c = s.client().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.net> BODY=8BITMIME").await;
    c.cmd("RCPT TO:<bob@example.org>").await;
    c.cmd("DATA").await;
    let message = b"Subject: caf\xe9 \xff\xfe\r\nX-Raw: \x80\x81\r\n\r\nbody \xc3\x28\r\n";
    c.send(message).await;
    assert_eq!(
        c.cmd(".").await,
        "250 2.0.0 <bob@example.org> delivered\r\n"
    );
    let bob = s.inbox("bob", &s.bob).await;
    assert!(bob[0].ends_with(message), "{:?}", bob[0]);
}

#[tokio::test]
async fn shutdown_answers_421_between_transactions() {
    let s = Server::start().await;
    let mut c = s.client().await;
    c.hello().await;
    s.trigger.fire();
    assert_eq!(
        c.reply().await,
        "421 4.3.2 service shutting down, closing transmission channel\r\n"
    );
    c.closed().await;
    tokio::time::timeout(Duration::from_secs(5), s.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_lets_the_transaction_in_progress_finish() {
    let s = Server::start().await;
    let mut c = s.client().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.net>").await;
    c.cmd("RCPT TO:<bob@example.org>").await;
    c.cmd("DATA").await;
    c.send(MESSAGE).await;
    s.trigger.fire();
    assert_eq!(
        c.cmd(".").await,
        "250 2.0.0 <bob@example.org> delivered\r\n"
    );
    assert!(c.reply().await.starts_with("421 4.3.2 "));
    assert_eq!(s.inbox("bob", &s.bob).await.len(), 1);
}

#[cfg(unix)]
#[tokio::test]
async fn the_unix_socket_serves_lmtp_and_replaces_a_stale_socket() {
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lmtp");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let listener = lmtp::bind_unix(&path).unwrap();
    let (_trigger, shutdown) = Shutdown::new();
    tokio::spawn(lmtp::serve(
        Listener::Unix(listener),
        lmtp::backend(&s.services),
        Settings::from_config(&facteur::config::LmtpConfig::default()),
        shutdown,
    ));
    let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    stream.write_all(b"LHLO test\r\nQUIT\r\n").await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("220 "), "{out}");
    assert!(out.ends_with("221 2.0.0 bye\r\n"), "{out}");
}

/// The binary: `--lmtp` overrides the listen address, and the embedded
/// default's demo user receives mail.
#[test]
fn serve_listens_for_lmtp_and_delivers_to_the_demo_account() {
    use std::io::{BufRead, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_facteur"))
        .args(["serve", "--http", "127.0.0.1:0", "--lmtp", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut addr = None;
    loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "serve exited");
        if let Some(a) = line.trim().strip_prefix("facteur: lmtp listening on ") {
            addr = Some(a.to_owned());
        }
        if line.starts_with("facteur: ready") {
            break;
        }
    }
    let mut stream = std::net::TcpStream::connect(addr.expect("lmtp line")).unwrap();
    stream
        .write_all(
            b"LHLO t\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<demo@localhost>\r\nDATA\r\n\
              Subject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n",
        )
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    assert!(
        out.contains("250 2.0.0 <demo@localhost> delivered\r\n221 2.0.0 bye\r\n"),
        "{out}"
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
}

/// `size` octets of incompressible text (base64 of random bytes).
fn random_body(size: usize) -> Vec<u8> {
    use base64::Engine as _;
    let mut out = b"Subject: big\r\n\r\n".to_vec();
    while out.len() < size {
        let raw: Vec<u8> = (0..57).map(|_| rand::random::<u8>()).collect();
        out.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(raw)
                .as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Quota (issue 5): usage is the stored size of the user's bodies, known
/// without their keys; a full mailbox is refused at RCPT (with the
/// declared SIZE) and after DATA (with the real size), 552 5.2.2, and
/// only that recipient is refused.
#[tokio::test]
async fn over_quota_is_refused_552_at_rcpt_and_after_data() {
    let s = Server::start().await;
    let mut c = s.client().await;
    c.hello().await;
    // 40 KiB fits into 64 KiB.
    c.cmd("MAIL FROM:<a@example.net>").await;
    assert_eq!(
        c.cmd("RCPT TO:<dave@example.org>").await,
        "250 2.1.5 recipient OK\r\n"
    );
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(&random_body(40 << 10)).await;
    assert_eq!(
        c.cmd(".").await,
        "250 2.0.0 <dave@example.org> delivered\r\n"
    );

    // A declared 40 KiB more does not: refused before the data is sent.
    c.cmd("MAIL FROM:<a@example.net> SIZE=40960").await;
    assert_eq!(
        c.cmd("RCPT TO:<dave@example.org>").await,
        "552 5.2.2 mailbox full: over quota\r\n"
    );
    c.cmd("RSET").await;

    // Undeclared, it is refused after DATA, for dave only.
    c.cmd("MAIL FROM:<a@example.net>").await;
    assert_eq!(
        c.cmd("RCPT TO:<dave@example.org>").await,
        "250 2.1.5 recipient OK\r\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<bob@example.org>").await,
        "250 2.1.5 recipient OK\r\n"
    );
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(&random_body(40 << 10)).await;
    c.send(b".\r\n").await;
    assert_eq!(
        c.reply().await,
        "552 5.2.2 <dave@example.org> mailbox full: over quota\r\n"
    );
    assert_eq!(c.reply().await, "250 2.0.0 <bob@example.org> delivered\r\n");

    // A small one still fits.
    c.cmd("MAIL FROM:<a@example.net> SIZE=2000").await;
    assert_eq!(
        c.cmd("RCPT TO:<dave@example.org>").await,
        "250 2.1.5 recipient OK\r\n"
    );
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(&random_body(2000)).await;
    assert_eq!(
        c.cmd(".").await,
        "250 2.0.0 <dave@example.org> delivered\r\n"
    );

    // The usage object is plain and readable without keys.
    use facteur::store::ObjectStore;
    let dave = s.services.user_id("dave");
    let usage = s
        .store
        .get(&facteur::lmtp::quota::usage_key(&dave))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&usage).contains("\"bytes\":"));
}

/// CHUNKING (RFC 3030): a message sent in BDAT chunks, pipelined, reaches
/// INBOX byte for byte (no dot-unstuffing); a client gone mid-chunk
/// stores nothing.
#[tokio::test]
async fn bdat_chunks_reach_inbox_and_a_cut_chunk_stores_nothing() {
    let s = Server::start().await;
    let mut c = s.client().await;
    let r = c.cmd("LHLO test").await;
    assert!(r.contains("250-CHUNKING\r\n"), "{r}");
    let first = b"Subject: chunks\r\n\r\n.a dot that stays\r\n";
    let second = b"MAIL FROM:<looks@like.a.command>\r\n";
    let mut wire = b"MAIL FROM:<a@example.net>\r\nRCPT TO:<bob@example.org>\r\n".to_vec();
    wire.extend_from_slice(format!("BDAT {}\r\n", first.len()).as_bytes());
    wire.extend_from_slice(first);
    wire.extend_from_slice(format!("BDAT {} LAST\r\n", second.len()).as_bytes());
    wire.extend_from_slice(second);
    c.send(&wire).await;
    assert_eq!(c.reply().await, "250 2.1.0 sender OK\r\n");
    assert_eq!(c.reply().await, "250 2.1.5 recipient OK\r\n");
    assert_eq!(
        c.reply().await,
        format!("250 2.0.0 {} octets received\r\n", first.len())
    );
    assert_eq!(c.reply().await, "250 2.0.0 <bob@example.org> delivered\r\n");
    let bob = s.inbox("bob", &s.bob).await;
    assert_eq!(bob.len(), 1);
    assert!(
        without_received(&bob[0]).ends_with(&format!(
            "Delivered-To: bob@example.org\r\n{}{}",
            String::from_utf8_lossy(first),
            String::from_utf8_lossy(second)
        )),
        "{}",
        String::from_utf8_lossy(&bob[0])
    );

    // Cut mid-chunk: nothing more is stored.
    let before = s.mail_objects();
    let mut c = s.client().await;
    c.hello().await;
    c.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<bob@example.org>\r\nBDAT 100 LAST\r\nSubject: cut\r\n")
        .await;
    assert_eq!(c.reply().await, "250 2.1.0 sender OK\r\n");
    assert_eq!(c.reply().await, "250 2.1.5 recipient OK\r\n");
    drop(c);
    // A new session is served (so the old one has been read to its end
    // or is waiting); nothing was stored for the cut message.
    let mut c = s.client().await;
    c.hello().await;
    assert_eq!(s.mail_objects(), before);
    assert_eq!(s.inbox("bob", &s.bob).await.len(), 1);
}
