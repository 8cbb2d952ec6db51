//! What an idle account costs and how fast it still learns of new mail
//! (doc/consistency.md, "Change hints"): a delivery on the same instance
//! reaches IDLE at once, with no poll; a change on another instance
//! through a hint within seconds, with the fallback poll a minute away; a
//! lost hint through the fallback poll; and an account whose sessions all
//! ended makes no store call at all.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use facteur::account::{AccountConfig, Hints};
use facteur::imap::{Imap, Options};
use facteur::log::InstanceId;
use facteur::mailbox::incoming::{DeliveryEnvelope, deliver};
use facteur::server::Services;
use facteur::store::{
    ListPage, MemoryStore, ObjectStore, S3Settings, S3Store, SharedStore, StoreError,
};

mod fixture;
mod imap_client;

use imap_client::Client;

/// A store that counts every call and can drop hint writes (a lost hint).
#[derive(Debug)]
struct Watched {
    inner: SharedStore,
    calls: AtomicUsize,
    lose_hints: AtomicBool,
}

impl Watched {
    fn new(inner: SharedStore) -> Arc<Watched> {
        Arc::new(Watched {
            inner,
            calls: AtomicUsize::new(0),
            lose_hints: AtomicBool::new(false),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl ObjectStore for Watched {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.count();
        if key.starts_with("hints/") && self.lose_hints.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.put(key, body).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.count();
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.count();
        self.inner.get_range(key, range).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.count();
        self.inner.delete(key).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        self.count();
        self.inner.delete_many(keys).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        self.count();
        self.inner.list(prefix, start_after, limit).await
    }
}

struct World {
    _dir: tempfile::TempDir,
    services: Services,
    store: Arc<Watched>,
}

/// Services over `inner` (watched) with alice and bob, keyrings made.
async fn world(inner: SharedStore) -> World {
    let dir = tempfile::tempdir().unwrap();
    let secret = format!("idle-cost-{:016x}", rand::random::<u64>());
    let config = fixture::config(dir.path(), &secret);
    let store = Watched::new(inner);
    let (services, _) = fixture::services(
        &config,
        dir.path(),
        store.clone(),
        secret.as_bytes(),
        vec![
            fixture::user_at_example("alice"),
            fixture::user_at_example("bob"),
        ],
        &["alice", "bob"],
    )
    .await;
    World {
        _dir: dir,
        services,
        store,
    }
}

/// An instance with its own change hints (listed every 200 ms), or none,
/// polling every `quick` at best and every `fallback` at worst.
fn instance(
    services: &Services,
    name: &str,
    hints: Option<Arc<Hints>>,
    quick: Duration,
    fallback: Duration,
) -> Arc<Imap> {
    let mut config: AccountConfig = services.account_config(InstanceId::new(name).unwrap());
    config.hints = hints;
    config.poll_interval = quick;
    config.poll_fallback = fallback;
    fixture::imap(
        services,
        config,
        Options {
            max_message: 1 << 20,
            ..Options::default()
        },
        false,
    )
}

async fn login(imap: &Arc<Imap>, who: &str) -> Client<tokio::io::DuplexStream> {
    let client = fixture::serve_in_memory(imap, "127.0.0.1:40000", 1 << 20);
    let (mut c, _) = Client::start(client).await;
    assert!(c.run(&format!("LOGIN {who} pw")).await.ok());
    c
}

/// A client of `imap` idling in alice's empty INBOX.
async fn idler(imap: &Arc<Imap>) -> (Client<tokio::io::DuplexStream>, String) {
    let mut c = login(imap, "alice").await;
    assert!(c.run("SELECT INBOX").await.has("* 0 EXISTS"));
    let tag = c.tag();
    c.send(format!("{tag} IDLE\r\n").as_bytes()).await;
    assert!(c.line().await.starts_with("+ "));
    (c, tag)
}

/// Seals a message into alice's incoming queue through `store`, as LMTP
/// does.
async fn deliver_through(w: &World, store: &SharedStore, subject: &str) {
    let user = w.services.user_id("alice");
    let key = w
        .services
        .keyrings
        .delivery_key(&user)
        .await
        .unwrap()
        .unwrap();
    let raw = format!(
        "From: bob@example.org\r\nTo: alice@example.org\r\nSubject: {subject}\r\n\r\nhello\r\n"
    );
    deliver(
        store.as_ref(),
        &user,
        &key,
        &w.services.records,
        raw.as_bytes(),
        DeliveryEnvelope {
            mail_from: "bob@example.org".into(),
            rcpt_to: vec!["alice@example.org".into()],
            received_at: 1_790_000_000,
            folder: None,
        },
    )
    .await
    .unwrap();
}

/// The next `EXISTS` line from `c` (other untagged lines, `RECENT`,
/// `FETCH`, are skipped), which must come within `within`.
async fn exists_within(
    c: &mut Client<tokio::io::DuplexStream>,
    within: Duration,
    what: &str,
) -> String {
    let exists = async {
        loop {
            let line = c.line().await;
            if line.ends_with(" EXISTS") {
                return line;
            }
        }
    };
    tokio::time::timeout(within, exists)
        .await
        .unwrap_or_else(|_| panic!("{what}: no EXISTS within {within:?}"))
}

const MINUTE: Duration = Duration::from_secs(60);

/// LMTP on the instance where the user idles: the delivery wakes the
/// account in memory, so IDLE shows the mail although no poll is due for a
/// minute.
#[tokio::test]
async fn a_delivery_on_this_instance_reaches_idle_at_once() {
    let w = world(Arc::new(MemoryStore::new())).await;
    let imap = instance(&w.services, "one", w.services.hints.clone(), MINUTE, MINUTE);
    let (mut c, tag) = idler(&imap).await;
    let lmtp = facteur::server::lmtp::backend(&w.services);
    deliver_through(&w, &lmtp.store, "same instance").await;
    let pushed = exists_within(&mut c, Duration::from_secs(2), "same-instance delivery").await;
    assert_eq!(pushed, "* 1 EXISTS");
    c.send(b"DONE\r\n").await;
    assert!(c.until_tagged(&tag).await.ok());
}

/// Two instances on one store, each with its own hints, polling once a
/// minute: an APPEND and an LMTP delivery on one reach IDLE on the other
/// through a hint, within 5 s.
async fn hints_cross_instances(inner: SharedStore) {
    let w = world(inner).await;
    let (hints_one, hints_two) = (
        Hints::new(Duration::from_millis(200)),
        Hints::new(Duration::from_millis(200)),
    );
    let one = instance(&w.services, "one", Some(hints_one.clone()), MINUTE, MINUTE);
    let two = instance(&w.services, "two", Some(hints_two), MINUTE, MINUTE);
    let (mut c, tag) = idler(&two).await;

    let mut writer = login(&one, "alice").await;
    let r = writer
        .append(
            "INBOX",
            "",
            "Subject: appended\r\nFrom: a@example.org\r\n\r\nhi\r\n",
        )
        .await;
    assert!(r.ok(), "{r:?}");
    let pushed = exists_within(&mut c, Duration::from_secs(5), "APPEND on another instance").await;
    assert_eq!(pushed, "* 1 EXISTS");

    // LMTP on instance one, where alice has a session too.
    let lmtp = facteur::account::Hinted::wrap(w.store.clone(), hints_one, None);
    deliver_through(&w, &lmtp, "across").await;
    let pushed = exists_within(
        &mut c,
        Duration::from_secs(5),
        "delivery on another instance",
    )
    .await;
    assert_eq!(pushed, "* 2 EXISTS");
    c.send(b"DONE\r\n").await;
    assert!(c.until_tagged(&tag).await.ok());
}

#[tokio::test]
async fn changes_on_another_instance_reach_idle_through_hints() {
    hints_cross_instances(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn changes_on_another_instance_reach_idle_through_hints_on_s3() {
    let Some(settings) = S3Settings::for_tests("the change hints test on S3") else {
        return;
    };
    hints_cross_instances(Arc::new(S3Store::new(settings).unwrap())).await;
}

/// Hints are a shortcut only: with every hint lost, a change on another
/// instance still reaches IDLE, at the fallback poll.
#[tokio::test]
async fn a_lost_hint_is_made_up_by_the_fallback_poll() {
    let w = world(Arc::new(MemoryStore::new())).await;
    w.store.lose_hints.store(true, Ordering::SeqCst);
    let fallback = Duration::from_secs(1);
    let quick = Duration::from_millis(100);
    let one = instance(&w.services, "one", Some(Hints::new(quick)), quick, fallback);
    let two = instance(&w.services, "two", Some(Hints::new(quick)), quick, fallback);
    let (mut c, tag) = idler(&two).await;
    // Long enough for instance two to back off to its fallback.
    tokio::time::sleep(3 * fallback).await;
    let mut writer = login(&one, "alice").await;
    assert!(
        writer
            .append(
                "INBOX",
                "",
                "Subject: x\r\nFrom: a@example.org\r\n\r\nhi\r\n"
            )
            .await
            .ok()
    );
    let pushed = exists_within(&mut c, 3 * fallback, "change with its hint lost").await;
    assert_eq!(pushed, "* 1 EXISTS");
    c.send(b"DONE\r\n").await;
    assert!(c.until_tagged(&tag).await.ok());
}

/// Once its last session ends, an account (still unlocked for its grace
/// period) makes no store call, however short its poll interval; with
/// hints off as with them on.
#[tokio::test]
async fn an_account_without_sessions_polls_nothing() {
    let w = world(Arc::new(MemoryStore::new())).await;
    let quick = Duration::from_millis(20);
    for hints in [None, Some(Hints::new(quick))] {
        let imap = instance(&w.services, "one", hints, quick, quick);
        let mut c = login(&imap, "alice").await;
        assert!(c.run("SELECT INBOX").await.ok());
        // Polling while the session lives.
        let before = w.store.calls();
        let polled = async {
            while w.store.calls() < before + 10 {
                tokio::time::sleep(quick).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), polled)
            .await
            .expect("an account with a session polls");
        assert!(c.run("LOGOUT").await.ok());
        assert_eq!(imap.accounts.unlocked(), 1, "still in its grace period");
        // A poll under way when the session ended may finish.
        tokio::time::sleep(10 * quick).await;
        let after_logout = w.store.calls();
        tokio::time::sleep(50 * quick).await;
        assert_eq!(
            w.store.calls(),
            after_logout,
            "store calls from an account without sessions"
        );
        assert_eq!(imap.accounts.unlocked(), 1);
    }
}
