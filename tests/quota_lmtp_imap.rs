//! LMTP's quota check agrees with IMAP's (issue #13 item 4): a user who
//! is refused at delivery, then makes room over IMAP (DELETE of a
//! mailbox, EXPUNGE), gets the next delivery, although the bodies they
//! removed are still stored (kept for recovery, not yet collected) and
//! LMTP, without keys, can only see stored bodies. The real LMTP listener
//! on `127.0.0.1:0` and the real IMAP driver over in-memory streams share
//! one `MemoryStore`.

use std::net::SocketAddr;
use std::sync::Arc;

use facteur::account::AccountConfig;
use facteur::imap::Imap;
use facteur::log::InstanceId;
use facteur::server::lmtp::{self, Listener, Settings};
use facteur::server::{Services, Shutdown, ShutdownTrigger};
use facteur::store::MemoryStore;
use tokio::net::TcpStream;

mod fixture;
mod imap_client;
mod lmtp_client;

use imap_client::Client as Imap4;
use lmtp_client::Client as Lmtp;

/// dave's quota, in bytes.
const QUOTA: u64 = 64 << 10;

struct World {
    _dir: tempfile::TempDir,
    services: Services,
    store: Arc<MemoryStore>,
    lmtp: SocketAddr,
    imap: Arc<Imap>,
    _trigger: ShutdownTrigger,
}

impl World {
    /// dave (a quota of [`QUOTA`] bytes, a keyring) behind LMTP and IMAP;
    /// over quota answers 452 when `temporary`.
    async fn start(temporary: bool) -> World {
        let dir = tempfile::tempdir().unwrap();
        let config = fixture::config(dir.path(), "0123456789abcdef0123456789abcdef");
        let mut dave = fixture::user("dave", &["dave@example.org"], &[]);
        dave.quota = Some(facteur::size::ByteSize(QUOTA));
        let store = Arc::new(MemoryStore::new());
        let (services, _) = fixture::services(
            &config,
            dir.path(),
            store.clone(),
            b"quota-test-cluster-secret",
            vec![dave],
            &["dave"],
        )
        .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let lmtp = listener.local_addr().unwrap();
        let (trigger, shutdown) = Shutdown::new();
        tokio::spawn(lmtp::serve(
            Listener::Tcp(listener),
            lmtp::backend_with(&services, temporary),
            Settings::from_config(&config.lmtp),
            shutdown,
        ));
        let mut accounts: AccountConfig = services.account_config(InstanceId::new("imap").unwrap());
        // Every body here is seconds old: with the default margin, LMTP
        // would count all of them again on top of IMAP's figure.
        accounts.publish_margin = std::time::Duration::ZERO;
        let imap = fixture::imap(
            &services,
            accounts,
            facteur::imap::Options {
                plaintext_auth: true,
                ..Default::default()
            },
            false,
        );
        World {
            _dir: dir,
            services,
            store,
            lmtp,
            imap,
            _trigger: trigger,
        }
    }

    /// dave's IMAP session.
    async fn login(&self) -> Imap4<tokio::io::DuplexStream> {
        let client = fixture::serve_in_memory(&self.imap, "192.0.2.7:1234", 1 << 20);
        let mut c = Imap4::start(client).await.0;
        let r = c.run(&format!("LOGIN dave {}", fixture::PASSWORD)).await;
        assert!(r.ok(), "{}", r.all());
        c
    }

    /// One LMTP transaction of `body` to dave, declaring its size; the
    /// reply to RCPT if it refused, else the reply after DATA.
    async fn deliver(&self, body: &[u8]) -> String {
        let mut c = Lmtp::connect(TcpStream::connect(self.lmtp).await.unwrap()).await;
        c.cmd("LHLO test").await;
        let mail = c
            .cmd(&format!("MAIL FROM:<a@example.net> SIZE={}", body.len()))
            .await;
        assert!(mail.starts_with("250 "), "{mail}");
        let rcpt = c.cmd("RCPT TO:<dave@example.org>").await;
        if !rcpt.starts_with("250 ") {
            return rcpt;
        }
        assert!(c.cmd("DATA").await.starts_with("354 "));
        c.send(body).await;
        c.cmd(".").await
    }

    /// Bodies stored for dave (none is ever collected in these tests).
    fn bodies(&self) -> usize {
        let dave = self.services.user_id("dave");
        self.store
            .keys()
            .iter()
            .filter(|k| k.contains(&format!("{dave}/blob/")))
            .count()
    }
}

/// `size` octets of text that compresses little (base64 of random
/// bytes: stored in about 3/4 of its size).
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

/// `* QUOTA "" (STORAGE used limit)`'s used, in KiB.
async fn storage_used(c: &mut Imap4<tokio::io::DuplexStream>) -> u64 {
    let r = c.run("GETQUOTA \"\"").await;
    assert!(r.ok(), "{}", r.all());
    let line = r.untagged("QUOTA").first().copied().unwrap().to_owned();
    let used = line
        .split("STORAGE ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap();
    used.parse().unwrap()
}

/// Filled, refused, a mailbox deleted: GETQUOTA shows room and LMTP
/// takes the next message, the deleted mailbox's body still stored.
#[tokio::test]
async fn deleting_a_mailbox_over_imap_makes_room_for_delivery() {
    let w = World::start(false).await;
    assert!(w.deliver(&random_body(40 << 10)).await.starts_with("250 "));
    let mut c = w.login().await;
    assert!(c.run("CREATE Old").await.ok());
    assert!(c.run("SELECT INBOX").await.ok());
    let r = c.run("MOVE 1 Old").await;
    assert!(r.ok(), "{}", r.all());
    assert!(c.run("UNSELECT").await.ok());
    // Stored in some 31 KiB, 32 KiB more fits.
    assert!(w.deliver(&random_body(32 << 10)).await.starts_with("250 "));

    // 72 KiB of base64 stored in some 55 KiB (compressed): 12 KiB more
    // does not fit by either count.
    let third = random_body(12 << 10);
    assert_eq!(
        w.deliver(&third).await,
        "552 5.2.2 mailbox full: over quota\r\n"
    );
    assert!(storage_used(&mut c).await > 72);

    let r = c.run("DELETE Old").await;
    assert!(r.ok(), "{}", r.all());
    assert_eq!(w.bodies(), 2, "the deleted mailbox's body is kept");
    let used = storage_used(&mut c).await;
    assert!((32..34).contains(&used), "STORAGE {used} KiB");

    let reply = w.deliver(&third).await;
    assert_eq!(reply, "250 2.0.0 <dave@example.org> delivered\r\n");
    // And the quota still holds: a message that does not fit by IMAP's
    // figure either is refused.
    assert_eq!(
        w.deliver(&random_body(30 << 10)).await,
        "552 5.2.2 mailbox full: over quota\r\n"
    );
}

/// EXPUNGE alone (no GETQUOTA from the client) makes room, with 452 when
/// over quota is temporary.
#[tokio::test]
async fn expunging_over_imap_makes_room_for_delivery() {
    let w = World::start(true).await;
    for size in [40 << 10, 32 << 10] {
        assert!(w.deliver(&random_body(size)).await.starts_with("250 "));
    }
    let third = random_body(12 << 10);
    assert_eq!(
        w.deliver(&third).await,
        "452 4.2.2 mailbox full: over quota\r\n"
    );
    let mut c = w.login().await;
    assert!(c.run("SELECT INBOX").await.ok());
    assert!(c.run("STORE 1 +FLAGS.SILENT (\\Deleted)").await.ok());
    let r = c.run("EXPUNGE").await;
    assert!(r.ok(), "{}", r.all());
    assert_eq!(w.bodies(), 2, "the expunged body is not collected yet");

    let reply = w.deliver(&third).await;
    assert_eq!(reply, "250 2.0.0 <dave@example.org> delivered\r\n");
}
