//! An account counts the sessions that hold it (`Account::sessions`), and
//! polls the store only while it has one. Every way a session ends must
//! end its count exactly once: LOGOUT, a dropped connection, and a login
//! that fails after the account was unlocked (the first login's recovery
//! key not stored), which used to leave its count behind so that the
//! account polled for a session that never was.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use facteur::account::Account;
use facteur::crypto::Password;
use facteur::imap::Imap;
use facteur::log::InstanceId;
use facteur::store::{ListPage, MemoryStore, ObjectStore, SharedStore, StoreError};
use tokio::sync::Notify;

mod fixture;
mod imap_client;

use imap_client::Client;

/// A memory store whose body PUTs, while `hold` is set, wait for `open`
/// and then fail (transiently), after telling `reached`.
#[derive(Debug, Default)]
struct Gate {
    inner: MemoryStore,
    hold: AtomicBool,
    reached: Notify,
    open: Notify,
}

#[async_trait]
impl ObjectStore for Gate {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        if key.contains("/blob/") && self.hold.load(Ordering::SeqCst) {
            self.reached.notify_one();
            self.open.notified().await;
            return Err(StoreError::Transient("gate".into()));
        }
        self.inner.put(key, body).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes, StoreError> {
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

struct World {
    _dir: tempfile::TempDir,
    gate: Arc<Gate>,
    imap: Arc<Imap>,
    services: facteur::server::Services,
}

/// alice (a keyring) and carol (none yet: her first login makes one and
/// stores her recovery key in INBOX).
async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let config = fixture::config(dir.path(), "0123456789abcdef0123456789abcdef");
    let gate = Arc::new(Gate::default());
    let store: SharedStore = gate.clone();
    let (services, _) = fixture::services(
        &config,
        dir.path(),
        store,
        b"session-count-secret",
        vec![
            fixture::user_at_example("alice"),
            fixture::user_at_example("carol"),
        ],
        &["alice"],
    )
    .await;
    let imap = fixture::imap(
        &services,
        services.account_config(InstanceId::new("test").unwrap()),
        facteur::imap::Options {
            plaintext_auth: true,
            ..Default::default()
        },
        true,
    );
    World {
        _dir: dir,
        gate,
        imap,
        services,
    }
}

impl World {
    async fn connect(&self) -> Client<tokio::io::DuplexStream> {
        let client = fixture::serve_in_memory(&self.imap, "192.0.2.9:1234", 1 << 16);
        Client::start(client).await.0
    }

    /// The user's account as another session of theirs would hold it
    /// (counted once more).
    async fn hold(&self, login: &str) -> Arc<Account> {
        let user = self.services.user_id(login);
        let keys = self
            .imap
            .keyrings
            .unlock(&user, &Password::new(fixture::PASSWORD))
            .await
            .unwrap();
        self.imap.accounts.unlock(&user, keys)
    }
}

/// Waits until `account` counts `n` sessions (a dropped connection ends
/// its session in the server's task).
async fn sessions_reach(account: &Account, n: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while account.sessions() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("sessions stayed at {}, not {n}", account.sessions()));
}

#[tokio::test]
async fn a_login_failing_after_the_unlock_leaves_no_session_behind() {
    let w = world().await;
    w.gate.hold.store(true, Ordering::SeqCst);
    let mut c = w.connect().await;
    let reached = w.gate.reached.notified();
    let login = tokio::spawn(async move {
        let r = c.run(&format!("LOGIN carol {}", fixture::PASSWORD)).await;
        (c, r)
    });
    // The keyring is made and the account unlocked; the recovery key's
    // body is being stored. Another session of carol's holds the account.
    reached.await;
    let other = w.hold("carol").await;
    assert_eq!(other.sessions(), 2);
    w.gate.open.notify_one();
    let (_c, r) = login.await.unwrap();
    assert!(r.no(), "{}", r.all());
    assert_eq!(other.sessions(), 1, "the failed login's count is ended");
}

#[tokio::test]
async fn logout_and_a_dropped_connection_each_end_their_count_once() {
    let w = world().await;
    let other = w.hold("alice").await;
    let mut first = w.connect().await;
    assert!(first.run("LOGIN alice pw").await.ok());
    let mut second = w.connect().await;
    assert!(second.run("LOGIN alice pw").await.ok());
    assert_eq!(other.sessions(), 3);
    assert!(first.run("LOGOUT").await.ok());
    sessions_reach(&other, 2).await;
    drop(second);
    sessions_reach(&other, 1).await;
    drop(first);
    // Nothing more ends: the count is not taken twice.
    tokio::task::yield_now().await;
    assert_eq!(other.sessions(), 1);
}
