//! Logins under attack (issue #12 items 2, 3, 8; issue #15): the real IMAP
//! driver over in-memory streams from chosen client addresses, on a
//! `MemoryStore`. What an attacker tries: a burst of guesses at once,
//! guesses from many addresses to lock the real user out, unknown logins
//! to find which exist; and what a user needs: re-logins without Argon2,
//! parameters raised by the admin applied, no keyring under a too-short
//! password.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use facteur::account::{AccountConfig, Accounts};
use facteur::crypto::{KdfParams, KdfPool, Password};
use facteur::directory::{Directory, DirectoryError, UserRecord, normalise_login};
use facteur::imap::throttle::{Throttle, ThrottleConfig};
use facteur::imap::{Imap, Options};
use facteur::log::InstanceId;
use facteur::server::Services;
use facteur::store::{MemoryStore, SharedStore};
use tokio::sync::Barrier;

mod fixture;
mod imap_client;

use imap_client::{Client, Reply};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

struct World {
    _dir: tempfile::TempDir,
    services: Services,
    imap: Arc<Imap>,
}

/// alice and bob (keyrings made, password "pw", TEST parameters), carol
/// (no keyring yet); plaintext LOGIN allowed from any address.
async fn world_with(kdf: KdfParams, directory: Option<Arc<dyn Directory>>) -> World {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(MemoryStore::new());
    let config = fixture::config(dir.path(), SECRET);
    let users = ["alice", "bob", "carol"]
        .map(fixture::user_at_example)
        .to_vec();
    let (services, _) = fixture::services(
        &config,
        dir.path(),
        store,
        SECRET.as_bytes(),
        users,
        &["alice", "bob"],
    )
    .await;
    let user_ids = services.clone();
    let imap = Arc::new(Imap {
        directory: directory.unwrap_or_else(|| services.directory.clone()),
        // Its own pool, to count the logins' Argon2 runs only.
        keyrings: services
            .keyrings
            .clone()
            .with_kdf_pool(KdfPool::with_default_size()),
        accounts: Accounts::new(
            services.store.clone(),
            AccountConfig::new(
                InstanceId::new("test").unwrap(),
                facteur::crypto::RecordAuth::from_cluster_secret(b"test cluster secret"),
            ),
            Duration::from_secs(60),
        ),
        user_id: Arc::new(move |login| user_ids.user_id(login)),
        kdf,
        recovery_key: false,
        options: Options {
            plaintext_auth: true,
            ..Options::default()
        },
        throttle: Arc::new(Throttle::new(ThrottleConfig::default())),
        tls: None,
    });
    World {
        _dir: dir,
        services,
        imap,
    }
}

async fn world() -> World {
    world_with(KdfParams::TEST, None).await
}

impl World {
    async fn connect(&self, remote: &str) -> Client {
        let client = fixture::serve_in_memory(&self.imap, remote, 1 << 16);
        Client::start(client).await.0
    }

    async fn login(&self, remote: &str, login: &str, password: &str) -> (Client, Reply) {
        let mut c = self.connect(remote).await;
        let r = c.run(&format!("LOGIN {login} \"{password}\"")).await;
        (c, r)
    }

    /// Argon2 runs so far.
    fn runs(&self) -> u64 {
        self.imap.keyrings.kdf_pool().runs()
    }

    /// `n` logins sent at once, each on its own connection from
    /// `remote(i)`; their answers.
    async fn burst(
        &self,
        n: usize,
        remote: impl Fn(usize) -> String,
        login: impl Fn(usize) -> String,
        password: &str,
    ) -> Vec<Reply> {
        let barrier = Arc::new(Barrier::new(n));
        let mut tasks = Vec::new();
        for i in 0..n {
            let mut c = self.connect(&remote(i)).await;
            let (barrier, command) = (
                barrier.clone(),
                format!("LOGIN {} \"{password}\"", login(i)),
            );
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                c.run(&command).await
            }));
        }
        let mut replies = Vec::new();
        for t in tasks {
            replies.push(t.await.unwrap());
        }
        replies
    }
}

fn count(replies: &[Reply], needle: &str) -> usize {
    replies.iter().filter(|r| r.has(needle)).count()
}

/// Issue #12 item 2: 30 simultaneous wrong passwords were all checked. An
/// attempt is now counted before its check: at most the free failures of
/// one (address, login) are checked, the rest refused without Argon2.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parallel_burst_gets_at_most_the_allowed_checks() {
    let w = world().await;
    let free = ThrottleConfig::default().login_free_failures as usize;
    let replies = w
        .burst(
            30,
            |i| format!("198.51.100.7:{}", 40000 + i),
            |_| "alice".into(),
            "guess",
        )
        .await;
    assert!(replies.iter().all(Reply::no), "{replies:?}");
    let checked = count(&replies, "[AUTHENTICATIONFAILED]");
    let refused = count(&replies, "Too many failed logins");
    assert_eq!(checked + refused, 30, "{replies:?}");
    assert!(
        checked <= free,
        "{checked} passwords checked, at most {free} allowed"
    );
    assert!(w.runs() <= free as u64, "{} Argon2 runs", w.runs());

    // The same from many addresses at a single login: bounded by the
    // login's all-addresses counter.
    let all = ThrottleConfig::default().login_free_failures_all as usize;
    let replies = w
        .burst(
            40,
            |i| format!("203.0.113.{i}:4000"),
            |_| "bob".into(),
            "guess",
        )
        .await;
    let checked = count(&replies, "[AUTHENTICATIONFAILED]");
    assert!(checked <= all, "{checked} checked, at most {all}");
    // And from one address at many logins: its own counter.
    let per_ip = ThrottleConfig::default().ip_free_failures as usize;
    let replies = w
        .burst(
            40,
            |_| "192.0.2.99:4000".into(),
            |i| format!("user{i}"),
            "guess",
        )
        .await;
    let checked = count(&replies, "[AUTHENTICATIONFAILED]");
    assert!(checked <= per_ip, "{checked} checked, at most {per_ip}");
}

/// Issue #12 item 3: after a burst of wrong passwords the right one got
/// "try again in 293 seconds", and a burst every five minutes kept the user
/// out. The user's own address, known from a past success, is never held
/// back by failures from elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_from_elsewhere_never_lock_the_real_user_out() {
    let w = world().await;
    let home = "192.0.2.1:5000";
    let (_, r) = w.login(home, "alice", "pw").await;
    assert!(r.ok(), "{r:?}");
    for round in 0..3 {
        // One address bursting, then many addresses.
        w.burst(
            20,
            |_| "203.0.113.66:4000".into(),
            |_| "alice".into(),
            "guess",
        )
        .await;
        w.burst(
            30,
            |i| format!("198.51.100.{i}:4000"),
            |_| "alice".into(),
            "guess",
        )
        .await;
        let (_, r) = w.login(home, "alice", "pw").await;
        assert!(r.ok(), "round {round}: {r:?}");
    }
    // The attacker's own address stays throttled.
    let (_, r) = w.login("203.0.113.66:4001", "alice", "guess").await;
    assert!(r.has("Too many failed logins"), "{r:?}");
}

/// Issue #15: a re-login of a user whose keys are unlocked here runs no
/// Argon2; a wrong password still costs one (so timing does not tell
/// whether the user is logged in), and a password changed in the keyring
/// is not bypassed.
#[tokio::test]
async fn a_relogin_runs_no_argon2_and_follows_password_changes() {
    let w = world().await;
    let (first, r) = w.login("127.0.0.1:1", "alice", "pw").await;
    assert!(r.ok(), "{r:?}");
    assert_eq!(w.runs(), 1, "a first login runs one Argon2, not two");
    for i in 0..50 {
        let (mut c, r) = w.login("127.0.0.1:2", "ALICE", "pw").await;
        assert!(r.ok(), "{i}: {r:?}");
        assert!(c.run("SELECT INBOX").await.ok());
    }
    assert_eq!(w.runs(), 1, "re-logins run no Argon2");

    let (_, r) = w.login("127.0.0.1:3", "alice", "pw ").await;
    assert!(r.has("[AUTHENTICATIONFAILED]"), "{r:?}");
    assert_eq!(w.runs(), 2, "a wrong password costs one Argon2");

    // The password changes (on another instance): the keyring changes.
    let user = w.services.user_id("alice");
    let keys = w
        .services
        .keyrings
        .unlock(&user, &Password::new("pw"))
        .await
        .unwrap();
    w.services
        .keyrings
        .set_password(
            &user,
            &keys,
            &Password::new("new pw"),
            &KdfParams::TEST,
            false,
        )
        .await
        .unwrap();
    let before = w.runs();
    let (_, r) = w.login("127.0.0.1:4", "alice", "pw").await;
    assert!(r.has("[AUTHENTICATIONFAILED]"), "old password: {r:?}");
    let (_, r) = w.login("127.0.0.1:4", "alice", "new pw").await;
    assert!(r.ok(), "{r:?}");
    assert_eq!(w.runs(), before + 2);
    let (_, r) = w.login("127.0.0.1:4", "alice", "new pw").await;
    assert!(r.ok(), "{r:?}");
    assert_eq!(w.runs(), before + 2, "the new password is remembered");
    drop(first);
}

/// Unknown logins cost one Argon2, as known ones do (no enumeration by
/// timing), and only one.
#[tokio::test]
async fn unknown_logins_cost_what_known_ones_cost() {
    let w = world().await;
    let (_, r) = w.login("127.0.0.1:1", "nobody", "pw").await;
    assert!(r.has("[AUTHENTICATIONFAILED]"), "{r:?}");
    assert_eq!(w.runs(), 1);
    let (_, r) = w.login("127.0.0.1:1", "alice", "wrong").await;
    assert!(r.has("[AUTHENTICATIONFAILED]"), "{r:?}");
    assert_eq!(w.runs(), 2);
    // A malformed login is refused as a wrong one.
    let (_, r) = w.login("127.0.0.1:1", "\"a b\"", "pw").await;
    assert!(r.has("[AUTHENTICATIONFAILED]"), "{r:?}");
}

/// Past the pool's queue, logins are refused at once with `NO
/// [UNAVAILABLE]`, and not counted as failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_argon2_pool_answers_unavailable() {
    let mut w = world().await;
    let pool = KdfPool::new(1, 1);
    let mut imap = (*w.imap).clone();
    imap.keyrings = imap.keyrings.clone().with_kdf_pool(pool.clone());
    // Slow enough that the burst arrives while the first ones run.
    imap.kdf = KdfParams {
        memory_kib: 32 * 1024,
        iterations: 2,
        parallelism: 1,
    };
    w.imap = Arc::new(imap);
    let replies = w
        .burst(
            12,
            |i| format!("198.51.100.{i}:4000"),
            |i| format!("nobody{i}"),
            "pw",
        )
        .await;
    let busy = replies
        .iter()
        .filter(|r| r.has("[UNAVAILABLE]") && !r.has("Too many failed logins"))
        .count();
    assert!(busy >= 1, "{replies:?}");
    assert!(pool.runs() <= 12 - busy as u64);
}

/// Issue #12 item 8: parameters raised in the configuration are applied to
/// a keyring at its user's next login, without losing it.
#[tokio::test]
async fn raised_parameters_are_rewrapped_at_login() {
    let stronger = KdfParams {
        memory_kib: 2 * KdfParams::TEST.memory_kib,
        iterations: 2,
        parallelism: 1,
    };
    let w = world_with(stronger.clone(), None).await;
    let (_c, r) = w.login("127.0.0.1:1", "alice", "pw").await;
    assert!(r.ok(), "{r:?}");
    let user = w.services.user_id("alice");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let keyring = w.services.keyrings.load(&user).await.unwrap().unwrap();
        if keyring.password_params() == &stronger {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never re-wrapped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The verifier follows the re-written keyring.
    let pw = Password::new("pw");
    loop {
        let digest = w
            .services
            .keyrings
            .fetch(&user)
            .await
            .unwrap()
            .unwrap()
            .digest;
        if w.imap.accounts.reuse(&user, &pw, &digest).is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "verifier not updated"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // It still opens with the password, here and anywhere.
    let runs = w.runs();
    let (_, r) = w.login("127.0.0.1:2", "alice", "pw").await;
    assert!(r.ok(), "{r:?}");
    assert_eq!(
        w.runs(),
        runs,
        "the verifier follows the re-wrapped keyring"
    );
    w.services
        .keyrings
        .unlock(&user, &Password::new("pw"))
        .await
        .unwrap();
    // Weaker configured parameters never re-wrap.
    let bob = w.services.user_id("bob");
    let w2 = World {
        imap: Arc::new(Imap {
            kdf: KdfParams::TEST,
            ..(*w.imap).clone()
        }),
        ..w
    };
    let (_, r) = w2.login("127.0.0.1:3", "bob", "pw").await;
    assert!(r.ok(), "{r:?}");
    let keyring = w2.services.keyrings.load(&bob).await.unwrap().unwrap();
    assert_eq!(keyring.password_params(), &KdfParams::TEST);
}

/// A directory that, like LDAP after a successful bind, vouches for any
/// password of its users and is the authority on them.
#[derive(Debug)]
struct Vouching;

#[async_trait]
impl Directory for Vouching {
    async fn authenticate(
        &self,
        login: &str,
        _password: &Password,
    ) -> Result<Option<UserRecord>, DirectoryError> {
        self.find_login(login).await
    }

    async fn find_login(&self, login: &str) -> Result<Option<UserRecord>, DirectoryError> {
        let login = normalise_login(login)?;
        Ok(login.starts_with("dave").then(|| UserRecord {
            addresses: vec![format!("{login}@example.org")],
            login,
            quota_bytes: None,
            quota_messages: None,
        }))
    }

    async fn find_address(&self, _: &str) -> Result<Option<UserRecord>, DirectoryError> {
        Ok(None)
    }
}

/// Issue #12 item 8: a first login with a directory (LDAP) password under
/// the minimum length created a keyring protected by it. It is refused
/// with a message saying what to do, and no keyring is made.
#[tokio::test]
async fn a_first_login_with_a_too_short_directory_password_makes_no_keyring() {
    let w = world_with(KdfParams::TEST, Some(Arc::new(Vouching))).await;
    let (_, r) = w.login("127.0.0.1:1", "dave", "short").await;
    assert!(
        r.no() && r.has("[EXPIRED]") && r.has("8 characters"),
        "{r:?}"
    );
    let dave = w.services.user_id("dave");
    assert!(w.services.keyrings.load(&dave).await.unwrap().is_none());
    let (_, r) = w.login("127.0.0.1:1", "dave", "long enough").await;
    assert!(r.ok(), "{r:?}");
    assert!(w.services.keyrings.load(&dave).await.unwrap().is_some());
    // The directory vouches for another password: the keyring does not
    // open, and says how to fix it.
    let (_, r) = w.login("127.0.0.1:1", "dave", "changed in ldap").await;
    assert!(r.has("facteur user rekey dave"), "{r:?}");
}
