//! Logins per second (issue #15): what a phone or Thunderbird opening many
//! short connections costs. Facteur runs in-process on the fs store (the
//! embedded default) with the default Argon2 parameters (64 MiB, 3
//! passes); each login is a new connection: greeting, `LOGIN`, `LOGOUT`.
//!
//! - first login: the user's keys are not unlocked on this instance;
//! - re-login: one session of the same user stays open, so the keys are
//!   unlocked here; sequential, then 4 clients at once;
//! - unknown login: a login that does not exist, from many addresses (what
//!   an attacker enumerating logins pays).
//!
//! Run with `cargo bench --bench login`. `FACTEUR_BENCH_LOGIN_SECONDS`
//! (default 10) bounds each measure; at most 2,000 logins per measure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use facteur::account::{AccountConfig, Accounts, KeyringStore};
use facteur::crypto::{KdfParams, Password, user_id};
use facteur::directory::users_file::hash_password;
use facteur::directory::{StaticDirectory, UserEntry, UsersFile};
use facteur::imap::connection::{Peer, serve};
use facteur::imap::throttle::{Throttle, ThrottleConfig};
use facteur::imap::{Imap, Options};
use facteur::log::InstanceId;
use facteur::store::{FsStore, SharedStore};

#[path = "../tests/imap_client/mod.rs"]
mod imap_client;

use imap_client::Client;

const SECRET: &[u8] = b"login-bench-cluster-secret";
const MAX_LOGINS: usize = 2000;

async fn setup(dir: &std::path::Path) -> Arc<Imap> {
    let params = KdfParams::DEFAULT;
    let store: SharedStore = Arc::new(FsStore::open(dir.join("store")).unwrap());
    let mut users = UsersFile::default();
    for login in ["alice", "bob"] {
        users
            .add(UserEntry {
                login: login.into(),
                password: hash_password(&Password::new("correct horse"), &params).unwrap(),
                addresses: vec![format!("{login}@example.org")],
                aliases: vec![],
                quota: None,
                quota_messages: None,
            })
            .unwrap();
    }
    let users_path = dir.join("users.toml");
    users.save(&users_path).unwrap();
    let keyrings = KeyringStore::new(store.clone(), SECRET);
    for login in ["alice", "bob"] {
        keyrings
            .create(
                &user_id(SECRET, login),
                &Password::new("correct horse"),
                &params,
                false,
            )
            .await
            .unwrap();
    }
    Arc::new(Imap {
        directory: Arc::new(StaticDirectory::open(users_path, params.clone()).unwrap()),
        keyrings,
        accounts: Accounts::new(
            store,
            AccountConfig::new(
                InstanceId::new("bench").unwrap(),
                facteur::crypto::RecordAuth::from_cluster_secret(b"bench cluster secret"),
            ),
            Duration::from_secs(60),
        ),
        user_id: Arc::new(|login| user_id(SECRET, login)),
        kdf: params,
        recovery_key: false,
        options: Options {
            plaintext_auth: true,
            ..Options::default()
        },
        throttle: Arc::new(Throttle::new(ThrottleConfig {
            // Unknown logins from many addresses: measure Argon2, not the
            // throttle.
            ip_free_failures: u32::MAX,
            login_free_failures: u32::MAX,
            ..ThrottleConfig::default()
        })),
        tls: None,
    })
}

async fn connect(imap: &Arc<Imap>, remote: SocketAddr) -> Client {
    let (client, server) = tokio::io::duplex(1 << 16);
    let peer = Peer {
        remote,
        local: "127.0.0.1:143".parse().unwrap(),
        tls: false,
    };
    tokio::spawn(serve(server, peer, imap.clone(), std::future::pending()));
    Client::start(client).await.0
}

/// One connection: LOGIN, then LOGOUT; whether the login succeeded.
async fn one_login(imap: &Arc<Imap>, remote: SocketAddr, login: &str) -> bool {
    let mut c = connect(imap, remote).await;
    let ok = c
        .run(&format!("LOGIN {login} \"correct horse\""))
        .await
        .ok();
    c.run("LOGOUT").await;
    ok
}

/// Logins by `clients` clients at once until `budget` or [`MAX_LOGINS`];
/// prints logins/s and latencies.
async fn measure(
    label: &str,
    imap: &Arc<Imap>,
    clients: usize,
    budget: Duration,
    login: impl Fn(usize) -> String + Send + Sync + 'static,
    expect_ok: bool,
) {
    let login = Arc::new(login);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (imap, login, label) = (imap.clone(), login.clone(), label.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = client;
            while started.elapsed() < budget && i < MAX_LOGINS {
                let remote = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 4000));
                let t = Instant::now();
                let ok = one_login(&imap, remote, &login(i)).await;
                assert_eq!(ok, expect_ok, "{label}: login {i}");
                latencies.push(t.elapsed());
                i += clients;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "{label:<32} {:>5} logins in {:>5.2} s: {:>8.1} logins/s, p50 {:>7.2} ms, p99 {:>7.2} ms",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
    );
}

fn main() {
    let budget = Duration::from_secs(
        std::env::var("FACTEUR_BENCH_LOGIN_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let imap = setup(dir.path()).await;
        let home = SocketAddr::from(([127, 0, 0, 1], 4000));

        let t = Instant::now();
        let mut kept = connect(&imap, home).await;
        assert!(kept.run("LOGIN alice \"correct horse\"").await.ok());
        println!(
            "{:<32} {:>7.2} ms",
            "first login (keys locked)",
            t.elapsed().as_secs_f64() * 1e3
        );
        measure(
            "re-login, 1 client",
            &imap,
            1,
            budget,
            |_| "alice".into(),
            true,
        )
        .await;
        measure(
            "re-login, 4 clients",
            &imap,
            4,
            budget,
            |_| "alice".into(),
            true,
        )
        .await;
        measure(
            "unknown login, 4 clients",
            &imap,
            4,
            budget,
            |i| format!("nobody{i}"),
            false,
        )
        .await;
        kept.run("LOGOUT").await;
    });
}
