//! Several instances serving one user at once, in one process over one
//! store (memory and fs): the races that lost acknowledged mail or showed
//! clients contradicting answers when instances run side by side. Each
//! race runs ten times, on fresh accounts. (The same races against real
//! `facteur serve` processes on a three-node Garage: tests/multisite.rs.)

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;

use facteur::account::{Account, AccountConfig};
use facteur::crypto::{KdfParams, Keyring, Password, RecordAuth, user_id};
use facteur::log::InstanceId;
use facteur::mailbox::incoming::{DeliveryEnvelope, deliver};
use facteur::store::{FsStore, ListPage, MemoryStore, ObjectStore, SharedStore, StoreError};

const ROUNDS: usize = 10;

/// An instance of the user `login`: its own account object (own replicas,
/// own instance id) on the shared store.
fn instance(store: &SharedStore, keyring: &Keyring, name: &str, login: &str) -> Arc<Account> {
    let keys = keyring.unlock_with_password(&Password::new("pw")).unwrap();
    let mut config = AccountConfig::new(InstanceId::new(name).unwrap(), records());
    config.poll_interval = Duration::from_millis(50);
    config.mailbox.fix_up_jitter = Duration::from_millis(5);
    Account::new(
        user_id(b"0123456789abcdef", login),
        keys,
        store.clone(),
        config,
    )
}

/// The delivery-record key every instance derives from the cluster secret.
fn records() -> RecordAuth {
    RecordAuth::from_cluster_secret(b"0123456789abcdef")
}

fn keyring() -> Keyring {
    Keyring::create(&Password::new("pw"), &KdfParams::TEST, false)
        .unwrap()
        .0
}

/// Delivers message `n` to the user of `account` as LMTP does.
async fn deliver_to(store: &SharedStore, account: &Account, keyring: &Keyring, n: &str) {
    let envelope = DeliveryEnvelope {
        mail_from: "bob@example.org".into(),
        rcpt_to: vec!["alice@example.org".into()],
        received_at: 1_700_000_000,
        folder: None,
    };
    deliver(
        store.as_ref(),
        account.user(),
        &keyring.public_key(),
        &records(),
        &message(n),
        envelope,
    )
    .await
    .unwrap();
}

fn message(n: &str) -> Vec<u8> {
    format!(
        "From: Bob <bob@example.org>\r\nTo: alice@example.org\r\nSubject: note {n}\r\n\
         Message-ID: <{n}@example.org>\r\n\r\nbody of {n}\r\n"
    )
    .into_bytes()
}

/// Every message subject an instance shows, over all its mailboxes, with
/// the mailboxes showing it.
async fn everything(account: &Account) -> BTreeMap<String, Vec<String>> {
    let folders = account.folders().await.unwrap();
    folders.sync().await.unwrap();
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for folder in folders.all().await {
        let (_, mailbox) = account.open_fresh(&folder.name).await.unwrap();
        let uids: Vec<u32> = mailbox
            .read(|s| s.messages().map(|m| m.uid).collect())
            .await;
        for uid in uids {
            let summary = mailbox.summary(uid).await.unwrap();
            let subject = summary
                .envelope
                .subject
                .map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned())
                .unwrap_or_default();
            seen.entry(subject).or_default().push(folder.name.clone());
        }
    }
    seen
}

/// The stores each race runs on: memory, and a local directory.
fn stores() -> Vec<(&'static str, SharedStore, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let fs: SharedStore = Arc::new(FsStore::open(dir.path()).unwrap());
    vec![
        ("memory", Arc::new(MemoryStore::new()), None),
        ("fs", fs, Some(dir)),
    ]
}

/// Instance B still shows mailbox X when A deletes it; B then appends to
/// X and moves a message from INBOX to X. Both were acknowledged
/// (APPENDUID, COPYUID), so both must stay visible: X comes back with
/// them, on every instance. Before the fix, both were in no mailbox.
#[tokio::test]
async fn a_placement_racing_a_delete_on_another_instance_stays_visible() {
    for (kind, store, _dir) in stores() {
        for round in 0..ROUNDS {
            let login = format!("race{round}");
            let keyring = keyring();
            let a = instance(&store, &keyring, "a", &login);
            let b = instance(&store, &keyring, "b", &login);
            let (_, inbox_b) = b.open_fresh("INBOX").await.unwrap();
            b.append(&inbox_b, &message("moved"), vec![], 0)
                .await
                .unwrap();
            a.folders().await.unwrap().create("X", None).await.unwrap();
            let (_, x_a) = a.open_fresh("X").await.unwrap();
            a.append(&x_a, &message("deleted"), vec![], 0)
                .await
                .unwrap();
            let (_, x_b) = b.open_fresh("X").await.unwrap();

            // A deletes X; B has not seen that and places two messages.
            a.delete_mailbox("X").await.unwrap();
            let appended = b
                .append(&x_b, &message("appended"), vec![], 0)
                .await
                .unwrap();
            assert_eq!(appended.uids.len(), 1);
            let uid = inbox_b.read(|s| s.uid_next() - 1).await;
            let (moved, _) = b.copy(&inbox_b, &[uid], &x_b, true).await.unwrap();
            assert_eq!(moved, vec![uid]);

            for (who, account) in [
                ("A", a.clone()),
                ("B", b.clone()),
                ("C", instance(&store, &keyring, "c", &login)),
            ] {
                let seen = everything(&account).await;
                for subject in ["note appended", "note moved"] {
                    assert_eq!(
                        seen.get(subject).map(Vec::len),
                        Some(1),
                        "{kind} round {round}: {who} shows {subject:?} in {seen:?}"
                    );
                }
                assert!(
                    !seen.contains_key("note deleted"),
                    "{kind} round {round}: {who} shows mail deleted with X: {seen:?}"
                );
            }
        }
    }
}

/// A store that runs a hook just before one chosen PUT: here, B's append
/// lands after A has read X but before A's DELETE lands, the one order
/// in which only the deleter can notice the append.
struct BeforePut {
    inner: SharedStore,
    armed: AtomicBool,
    hook: Mutex<Option<BoxFuture<'static, ()>>>,
}

impl std::fmt::Debug for BeforePut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforePut")
    }
}

#[async_trait]
impl ObjectStore for BeforePut {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        if key.contains("/list/log/") && self.armed.swap(false, Ordering::SeqCst) {
            let hook = self.hook.lock().unwrap().take();
            if let Some(hook) = hook {
                hook.await;
            }
        }
        self.inner.put(key, body).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.inner.get_range(key, range).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        self.inner.delete_many(keys).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        self.inner.list(prefix, start_after, limit).await
    }
}

/// The deleter's side of the race: B's append lands while A's DELETE is
/// on its way, after A last read X. B's own check of the mailbox list
/// cannot see the DELETE yet; A's check after its DELETE sees the append
/// and brings X back.
#[tokio::test]
async fn a_delete_that_missed_an_append_brings_the_mailbox_back() {
    for round in 0..ROUNDS {
        let memory: SharedStore = Arc::new(MemoryStore::new());
        let hooked = Arc::new(BeforePut {
            inner: memory.clone(),
            armed: AtomicBool::new(false),
            hook: Mutex::new(None),
        });
        let a_store: SharedStore = hooked.clone();
        let keyring = keyring();
        let a = instance(&a_store, &keyring, "a", "deleter");
        let b = instance(&memory, &keyring, "b", "deleter");
        a.folders().await.unwrap().create("X", None).await.unwrap();
        let (_, x_b) = b.open_fresh("X").await.unwrap();
        let b_hook = b.clone();
        *hooked.hook.lock().unwrap() = Some(Box::pin(async move {
            b_hook
                .append(&x_b, &message("appended"), vec![], 0)
                .await
                .unwrap();
        }));
        hooked.armed.store(true, Ordering::SeqCst);
        a.delete_mailbox("X").await.unwrap();
        assert!(
            !hooked.armed.load(Ordering::SeqCst),
            "the hook ran (the DELETE was written)"
        );
        let c = instance(&memory, &keyring, "c", "deleter");
        let seen = everything(&c).await;
        assert_eq!(
            seen.get("note appended"),
            Some(&vec!["X".to_owned()]),
            "round {round}: {seen:?}"
        );
    }
}

/// A first login on two instances at the same moment: both find the
/// mailbox list empty and write its first op. They must show the same
/// mailboxes with the same UIDVALIDITY at once, and after a restart.
#[tokio::test]
async fn a_first_login_on_two_instances_gives_one_uidvalidity() {
    for (kind, store, _dir) in stores() {
        for round in 0..ROUNDS {
            let login = format!("first{round}");
            let keyring = keyring();
            let a = instance(&store, &keyring, "a", &login);
            let b = instance(&store, &keyring, "b", &login);
            let (fa, fb) = tokio::join!(a.open_fresh("INBOX"), b.open_fresh("INBOX"));
            let (fa, fb) = (fa.unwrap().0, fb.unwrap().0);
            assert_eq!(
                fa.uid_validity, fb.uid_validity,
                "{kind} round {round}: INBOX"
            );
            let all_a = a.folders().await.unwrap().all().await;
            let all_b = b.folders().await.unwrap().all().await;
            assert_eq!(all_a, all_b, "{kind} round {round}");
            assert_eq!(all_a.len(), 6, "{kind} round {round}: {all_a:?}");
            // After both ops are known (and on a new instance), unchanged.
            let c = instance(&store, &keyring, "c", &login);
            let folders_c = c.folders().await.unwrap();
            folders_c.sync().await.unwrap();
            assert_eq!(folders_c.all().await, all_a, "{kind} round {round}");
            a.folders().await.unwrap().sync().await.unwrap();
            assert_eq!(a.folders().await.unwrap().all().await, all_a);
        }
    }
}

/// Two accounts never share the default mailboxes' ids: the store's key
/// names do not tell which mailbox is Trash.
#[tokio::test]
async fn default_mailboxes_have_ids_of_their_own() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let keyring_1 = keyring();
    let keyring_2 = keyring();
    let one = instance(&store, &keyring_1, "a", "one");
    let two = instance(&store, &keyring_2, "a", "two");
    let trash = |account: Arc<Account>| async move {
        account
            .folders()
            .await
            .unwrap()
            .find("Trash")
            .await
            .unwrap()
    };
    let (t1, t2) = (trash(one).await, trash(two).await);
    assert_ne!(t1.id, t2.id);
    assert_ne!(t1.uid_validity, t2.uid_validity);
}

/// A store that one instance cannot reach while the others can; it also
/// records which keys were read.
#[derive(Debug)]
struct Unreachable {
    inner: SharedStore,
    down: AtomicBool,
    read: Mutex<Vec<String>>,
}

impl Unreachable {
    fn over(inner: &SharedStore) -> Arc<Unreachable> {
        Arc::new(Unreachable {
            inner: inner.clone(),
            down: AtomicBool::new(false),
            read: Mutex::new(Vec::new()),
        })
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Transient("unreachable (test)".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl ObjectStore for Unreachable {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.check()?;
        self.inner.put(key, body).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.check()?;
        self.read.lock().unwrap().push(key.to_owned());
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.check()?;
        self.inner.get_range(key, range).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check()?;
        self.inner.delete(key).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.delete_many(keys).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        self.check()?;
        self.inner.list(prefix, start_after, limit).await
    }
}

/// B has INBOX open from before A appended. With the store out of B's
/// reach, SELECT/STATUS on B must fail transiently rather than answer
/// from B's older copy (UIDNEXT lower than what A showed); once the store
/// is back, B answers with A's message.
#[tokio::test]
async fn an_instance_that_cannot_sync_gives_no_stale_answer() {
    let memory: SharedStore = Arc::new(MemoryStore::new());
    let cut = Unreachable::over(&memory);
    let b_store: SharedStore = cut.clone();
    let keyring = keyring();
    let a = instance(&memory, &keyring, "a", "stale");
    let b = instance(&b_store, &keyring, "b", "stale");
    let (_, inbox_b) = b.open_fresh("INBOX").await.unwrap();
    let (_, inbox_a) = a.open_fresh("INBOX").await.unwrap();
    for i in 0..3 {
        a.append(&inbox_a, &message(&format!("a{i}")), vec![], 0)
            .await
            .unwrap();
    }
    let uid_next_a = inbox_a.read(|s| s.uid_next()).await;
    cut.down.store(true, Ordering::SeqCst);
    match b.open_fresh("INBOX").await {
        Err(e) => assert!(e.is_transient(), "{e}"),
        Ok(_) => panic!("B answered from its old copy"),
    }
    match b.refresh(Some(&inbox_b)).await {
        Err(e) => assert!(e.is_transient(), "{e}"),
        Ok(_) => panic!("NOOP on B claimed to be up to date"),
    }
    cut.down.store(false, Ordering::SeqCst);
    let (_, inbox_b) = b.open_fresh("INBOX").await.unwrap();
    assert_eq!(inbox_b.read(|s| s.uid_next()).await, uid_next_a);
    assert_eq!(inbox_b.read(|s| s.exists()).await, 3);
}

/// Mail delivered while the user had no session is in INBOX at the first
/// SELECT or STATUS of a new session, without waiting for any poll.
#[tokio::test]
async fn delivered_mail_is_there_at_the_first_command() {
    for (kind, store, _dir) in stores() {
        let keyring = keyring();
        let login = "oneshot";
        let probe = instance(&store, &keyring, "probe", login);
        probe.folders().await.unwrap();
        for n in 0..3 {
            deliver_to(&store, &probe, &keyring, &format!("d{n}")).await;
        }
        // A new session on another instance: no poller runs.
        let fresh = instance(&store, &keyring, "fresh", login);
        let (_, inbox) = fresh.open_fresh("INBOX").await.unwrap();
        assert_eq!(inbox.read(|s| s.exists()).await, 3, "{kind}");
        // NOOP brings the next delivery too.
        deliver_to(&store, &probe, &keyring, "late").await;
        fresh.refresh(Some(&inbox)).await.unwrap();
        assert_eq!(inbox.read(|s| s.exists()).await, 4, "{kind}");
    }
}

/// In the background, one instance drains a user's deliveries (the
/// holder of the drain lease), so two pollers do not place the same
/// records from different states; a command that must show every
/// delivery drains anyway, and the lease passes on when its holder stops.
#[tokio::test]
async fn one_instance_drains_in_the_background_and_the_lease_passes_on() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let keyring = keyring();
    let a = instance(&store, &keyring, "a", "lease");
    let b = instance(&store, &keyring, "b", "lease");
    let (_, inbox_a) = a.open_fresh("INBOX").await.unwrap();
    let (_, inbox_b) = b.open_fresh("INBOX").await.unwrap();

    deliver_to(&store, &a, &keyring, "one").await;
    assert_eq!(a.drain_politely().await.unwrap().delivered.len(), 1);
    deliver_to(&store, &a, &keyring, "two").await;
    assert_eq!(
        b.drain_politely().await.unwrap().delivered.len(),
        0,
        "a holds the lease"
    );
    assert_eq!(a.drain_politely().await.unwrap().delivered.len(), 1);
    // SELECT on b must show a new delivery at once, lease or not.
    deliver_to(&store, &a, &keyring, "three").await;
    b.open_fresh("INBOX").await.unwrap();
    assert_eq!(inbox_b.read(|s| s.exists()).await, 3);
    // a stops draining: once its lease expires, b takes over.
    deliver_to(&store, &a, &keyring, "four").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.drain_politely().await.unwrap().delivered.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never passed"
        );
        tokio::task::yield_now().await;
    }
    inbox_a.sync().await.unwrap();
    assert_eq!(inbox_a.read(|s| s.exists()).await, 4);
    assert!(inbox_a.read(|s| s.displaced().is_empty()).await);
}

/// An object planted under `incoming/` larger than any record an instance
/// writes is never read (a few of them used to make every instance that
/// drained the user load them whole); real deliveries still arrive.
#[tokio::test]
async fn an_oversized_planted_record_is_never_read() {
    let memory: SharedStore = Arc::new(MemoryStore::new());
    let watched = Unreachable::over(&memory);
    let store: SharedStore = watched.clone();
    let keyring = keyring();
    let a = instance(&store, &keyring, "a", "planted");
    let planted = format!(
        "{}0000000000000-planted",
        facteur::store::layout::incoming_prefix(a.user())
    );
    let size = facteur::mailbox::incoming::MAX_RECORD_BYTES as usize + 1;
    memory
        .put(&planted, Bytes::from(vec![0u8; size]))
        .await
        .unwrap();
    deliver_to(&store, &a, &keyring, "real").await;
    let (_, inbox) = a.open_fresh("INBOX").await.unwrap();
    assert_eq!(inbox.read(|s| s.exists()).await, 1);
    assert!(
        !watched.read.lock().unwrap().contains(&planted),
        "the planted object was read"
    );
}

/// A store whose every call first waits up to `max_delay_us`, at random:
/// the windows between one instance's LIST and its PUT widen as on a
/// multi-node store, so that races happen in a test as under load.
struct Slow {
    inner: SharedStore,
    max_delay_us: u64,
    /// PUTs of keys containing the first, and not the second, take this
    /// long on top.
    slow_puts: Option<(&'static str, &'static str, Duration)>,
}

impl std::fmt::Debug for Slow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slow")
    }
}

impl Slow {
    fn over(inner: &SharedStore, max_delay_us: u64) -> SharedStore {
        Arc::new(Slow {
            inner: inner.clone(),
            max_delay_us,
            slow_puts: None,
        })
    }

    /// A store whose PUTs of keys containing `slow` and not `except` take
    /// `delay`, and nothing else is delayed.
    fn puts_of(
        inner: &SharedStore,
        (slow, except): (&'static str, &'static str),
        delay: Duration,
    ) -> SharedStore {
        Arc::new(Slow {
            inner: inner.clone(),
            max_delay_us: 0,
            slow_puts: Some((slow, except, delay)),
        })
    }

    async fn pause(&self) {
        if self.max_delay_us == 0 {
            return;
        }
        let us = rand::random::<u64>() % self.max_delay_us;
        tokio::time::sleep(Duration::from_micros(us)).await;
    }
}

#[async_trait]
impl ObjectStore for Slow {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.pause().await;
        if let Some((slow, except, delay)) = self.slow_puts
            && key.contains(slow)
            && !key.contains(except)
        {
            tokio::time::sleep(delay).await;
        }
        self.inner.put(key, body).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.pause().await;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.pause().await;
        self.inner.get_range(key, range).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.pause().await;
        self.inner.delete(key).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        self.pause().await;
        self.inner.delete_many(keys).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        self.pause().await;
        self.inner.list(prefix, start_after, limit).await
    }
}

/// Placement turns exclude each other: three instances taking the turn of
/// one mailbox over and over, on a store with random delays, are never
/// inside it together (no time-out lets one through: `max_wait` is far
/// beyond the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_turns_exclude_each_other() {
    use facteur::account::turn::{TurnTuning, Turns};
    use std::sync::atomic::AtomicUsize;
    for (kind, store, _dir) in stores() {
        let slow = Slow::over(&store, 2000);
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tuning = TurnTuning {
            max_wait: Duration::from_secs(60),
            stale_after: Duration::from_secs(60),
            ..TurnTuning::default()
        };
        let tasks: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|name| {
                let turns = Turns::new(
                    slow.clone(),
                    "users/u/lease/turn-m/".into(),
                    InstanceId::new(name).unwrap(),
                    tuning.clone(),
                );
                let (inside, most) = (inside.clone(), most.clone());
                tokio::spawn(async move {
                    for _ in 0..40 {
                        let held = turns.take().await.unwrap().expect("no time-out");
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        inside.fetch_sub(1, Ordering::SeqCst);
                        held.release();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            most.load(Ordering::SeqCst),
            1,
            "{kind}: two instances held the turn at once"
        );
    }
}

/// Two instances appending to one INBOX at the same time, two clients on
/// each, over a store with random delays: once each has seen the other
/// write there, they take turns, and every APPENDUID a client was given
/// is the message's UID for good (before turns, about one message in six
/// was renumbered under such load, and a client saw its own append
/// vanish and come back under another UID).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_appending_at_once_renumber_nothing() {
    for (kind, store, _dir) in stores() {
        let slow = Slow::over(&store, 2000);
        let keyring = keyring();
        let a = instance(&slow, &keyring, "a", "busy");
        let b = instance(&slow, &keyring, "b", "busy");
        // Each writes once and sees the other's write.
        for (who, account) in [("a", &a), ("b", &b)] {
            let (_, inbox) = account.open_fresh("INBOX").await.unwrap();
            account
                .append(&inbox, &message(&format!("hello from {who}")), vec![], 0)
                .await
                .unwrap();
        }
        for account in [&a, &b] {
            account.open_fresh("INBOX").await.unwrap();
        }
        let clients: Vec<_> = [("a1", &a), ("a2", &a), ("b1", &b), ("b2", &b)]
            .into_iter()
            .map(|(client, account)| {
                let account = account.clone();
                tokio::spawn(async move {
                    let (_, inbox) = account.open_by_name("INBOX").await.unwrap();
                    let mut given = Vec::new();
                    for i in 0..12 {
                        let subject = format!("{client}-{i}");
                        let placed = account
                            .append(&inbox, &message(&subject), vec![], 0)
                            .await
                            .unwrap();
                        given.push((format!("note {subject}"), placed.uids[0]));
                    }
                    given
                })
            })
            .collect();
        let mut given = Vec::new();
        for c in clients {
            given.extend(c.await.unwrap());
        }
        let (_, inbox) = a.open_fresh("INBOX").await.unwrap();
        let mut finals = BTreeMap::new();
        let uids: Vec<u32> = inbox.read(|s| s.messages().map(|m| m.uid).collect()).await;
        for uid in uids {
            let summary = inbox.summary(uid).await.unwrap();
            let subject = summary.envelope.subject.unwrap();
            finals.insert(
                String::from_utf8_lossy(subject.as_bytes()).into_owned(),
                uid,
            );
        }
        let renumbered: Vec<_> = given
            .iter()
            .filter(|(subject, uid)| *uid != finals.get(subject).copied())
            .collect();
        assert!(
            renumbered.is_empty(),
            "{kind}: {} of {} appends renumbered: {renumbered:?}",
            renumbered.len(),
            given.len()
        );
    }
}

/// Syncs running at once on one instance (sessions and the poller) that
/// all find a snapshot due write it once: one set of summary pages. Each
/// used to write its own pages, of the same summaries, and all but one
/// set was referred to by nothing (a CI run of a header-search test saw
/// eight pages for four).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn syncs_at_once_write_a_due_snapshot_once() {
    for (kind, store, _dir) in stores() {
        let keyring = keyring();
        // The writer keeps the default snapshot interval (500 ops): its 60
        // appends leave no snapshot and no page.
        let writer = instance(&store, &keyring, "w", "snapper");
        let (_, inbox) = writer.open_fresh("INBOX").await.unwrap();
        for i in 0..60 {
            let raw = message(&format!("page {i}"));
            writer.append(&inbox, &raw, vec![], 0).await.unwrap();
        }
        let pages = async || {
            let prefix =
                facteur::store::layout::user_prefix(&user_id(b"0123456789abcdef", "snapper"));
            facteur::store::list_all_keys(store.as_ref(), &prefix, None)
                .await
                .unwrap()
                .into_iter()
                .filter(|k| k.contains("/side/") && !k.contains('.'))
                .count()
        };
        assert_eq!(pages().await, 0, "{kind}: the writer wrote pages");
        // The reader snapshots every 50 ops, over a store with random
        // delays, from eight syncs at once.
        let slow = Slow::over(&store, 2000);
        let keys = keyring.unlock_with_password(&Password::new("pw")).unwrap();
        let mut config = AccountConfig::new(InstanceId::new("r").unwrap(), records());
        config.mailbox.log.snapshot_every = 50;
        let reader = Account::new(user_id(b"0123456789abcdef", "snapper"), keys, slow, config);
        let syncs: Vec<_> = (0..8)
            .map(|_| {
                let reader = reader.clone();
                tokio::spawn(async move { reader.open_fresh("INBOX").await.map(|_| ()) })
            })
            .collect();
        for s in syncs {
            s.await.unwrap().unwrap();
        }
        assert_eq!(pages().await, 1, "{kind}: 60 summaries, one page");
    }
}

/// An APPEND whose op took three times the lookback to store is seen by
/// another instance's very next SELECT, although that instance kept
/// syncing while the PUT was in flight, so that its listings start after
/// the op's name: the writer, whose PUT took longer than `late_after`,
/// leaves a late marker before it answers, and the marker sends the
/// reader's listing back to the op. (Without the marker these appends are
/// missed until a full listing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_stored_late_is_seen_at_once_on_another_instance() {
    for (kind, store, _dir) in stores() {
        let keyring = keyring();
        let tuned = |store: &SharedStore, name: &str| {
            let keys = keyring.unlock_with_password(&Password::new("pw")).unwrap();
            let mut config = AccountConfig::new(InstanceId::new(name).unwrap(), records());
            config.mailbox.log.lookback = Duration::from_millis(200);
            config.mailbox.log.late_after = Duration::from_millis(100);
            Account::new(
                user_id(b"0123456789abcdef", "late"),
                keys,
                store.clone(),
                config,
            )
        };
        // A's op PUTs take 600 ms (its markers are quick).
        let slow = Slow::puts_of(&store, ("/log/", "-late-"), Duration::from_millis(600));
        let a = tuned(&slow, "a");
        let b = tuned(&store, "b");
        let (_, inbox_a) = a.open_fresh("INBOX").await.unwrap();
        b.open_fresh("INBOX").await.unwrap();
        // B keeps syncing INBOX meanwhile, as its sessions and poller do.
        let polling = {
            let b = b.clone();
            tokio::spawn(async move {
                loop {
                    b.open_fresh("INBOX").await.unwrap();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let markers = facteur::log::stored::late_markers_written();
        for i in 0..4 {
            let placed = a
                .append(&inbox_a, &message(&format!("late {i}")), vec![], 0)
                .await
                .unwrap();
            let uid = placed.uids[0].expect("appended with a UID");
            let (_, inbox_b) = b.open_fresh("INBOX").await.unwrap();
            let uids: Vec<u32> = inbox_b
                .read(|s| s.messages().map(|m| m.uid).collect())
                .await;
            assert!(
                uids.contains(&uid),
                "{kind}: append {i} (UID {uid}) acknowledged on A, missing on B: {uids:?}"
            );
        }
        assert!(facteur::log::stored::late_markers_written() >= markers + 4);
        assert!(!polling.is_finished(), "B's polling failed");
        polling.abort();
    }
}
