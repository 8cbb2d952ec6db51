//! Issue #12 item 2: 40 simultaneous logins of unknown users from 40
//! addresses took 2.6 GB, one Argon2 of 64 MiB each at once. With the
//! default parameters they now stay under 400 MiB: every Argon2 runs in
//! the bounded pool. Alone in its test binary, so that the process's peak
//! resident memory (`VmHWM`) is this test's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use facteur::account::{AccountConfig, Accounts};
use facteur::config::Config;
use facteur::crypto::KdfParams;
use facteur::imap::connection::{Peer, serve};
use facteur::imap::throttle::{Throttle, ThrottleConfig};
use facteur::imap::{Imap, Options};
use facteur::log::InstanceId;
use facteur::store::{MemoryStore, SharedStore};
use tokio::sync::Barrier;

mod fixture;
mod imap_client;

use imap_client::{Client, memory};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const LOGINS: usize = 40;
const LIMIT: u64 = 400 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_parallel_logins_stay_under_400_mib() {
    let dir = tempfile::tempdir().unwrap();
    // The default Argon2 parameters (64 MiB, 3 passes), as in production.
    let config = Config::parse(
        &format!(
            "cluster_secret = \"{SECRET}\"\n\
             [store]\nbackend = \"memory\"\n\
             [directory]\nbackend = \"static\"\nusers_file = \"users.toml\"\n"
        ),
        dir.path(),
    )
    .unwrap();
    assert_eq!(config.crypto.argon2, KdfParams::DEFAULT);
    let store: SharedStore = Arc::new(MemoryStore::new());
    let (services, _) = fixture::services(
        &config,
        dir.path(),
        store,
        SECRET.as_bytes(),
        vec![fixture::user_at_example("alice")],
        &[],
    )
    .await;
    let user_ids = services.clone();
    let imap = Arc::new(Imap {
        directory: services.directory.clone(),
        keyrings: services.keyrings.clone(),
        accounts: Accounts::new(
            services.store.clone(),
            AccountConfig::new(
                InstanceId::new("test").unwrap(),
                facteur::crypto::RecordAuth::from_cluster_secret(b"test cluster secret"),
            ),
            Duration::from_secs(60),
        ),
        user_id: Arc::new(move |login| user_ids.user_id(login)),
        kdf: config.crypto.argon2.clone(),
        recovery_key: false,
        options: Options {
            plaintext_auth: true,
            ..Options::default()
        },
        throttle: Arc::new(Throttle::new(ThrottleConfig::default())),
        tls: None,
    });

    let before = memory::status_bytes(std::process::id(), "VmHWM");
    let barrier = Arc::new(Barrier::new(LOGINS));
    let mut tasks = Vec::new();
    for i in 0..LOGINS {
        let (client, server) = tokio::io::duplex(1 << 16);
        let peer = Peer {
            remote: format!("198.51.100.{}:4000", i + 1)
                .parse::<SocketAddr>()
                .unwrap(),
            local: "127.0.0.1:143".parse().unwrap(),
            tls: false,
        };
        tokio::spawn(serve(server, peer, imap.clone(), std::future::pending()));
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let (mut c, _) = Client::start(client).await;
            barrier.wait().await;
            c.run(&format!("LOGIN nobody{i} \"some guess\"")).await
        }));
    }
    let started = Instant::now();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    let peak = memory::status_bytes(std::process::id(), "VmHWM");
    let failed = replies
        .iter()
        .filter(|r| r.has("[AUTHENTICATIONFAILED]"))
        .count();
    let busy = replies.iter().filter(|r| r.has("[UNAVAILABLE]")).count();
    println!(
        "{LOGINS} parallel logins of unknown users: peak RSS {} MiB (before: {} MiB), \
         {failed} checked, {busy} refused as busy, {:.1} s",
        peak >> 20,
        before >> 20,
        elapsed.as_secs_f64()
    );
    assert_eq!(failed + busy, LOGINS, "{replies:?}");
    assert!(failed > 0);
    assert!(
        peak < LIMIT,
        "peak RSS {} MiB, limit {} MiB",
        peak >> 20,
        LIMIT >> 20
    );
}
