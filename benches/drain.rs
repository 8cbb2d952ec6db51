//! Draining waiting mail at first login (issue #15): `N` messages are
//! delivered to one user while nobody holds their keys (the LMTP path,
//! `incoming::deliver`: a sealed body and a sealed delivery record each),
//! then an account unlocks and `Account::drain_incoming` moves them all
//! into INBOX, as LOGIN does. The figure is the drain's wall time; the
//! deliveries are not timed.
//!
//! Run with `cargo bench --bench drain`. `FACTEUR_BENCH_DRAIN_MESSAGES`
//! (default 10000) sets `N`; `FACTEUR_BENCH_DRAIN_BACKENDS` (default
//! `fs,garage`) the stores; `FACTEUR_BENCH_DRAIN_S3_CONCURRENCY` the S3
//! store's request limit (default 32). Garage is measured when the
//! `FACTEUR_TEST_S3_*` variables are set
//! (`eval "$(scripts/garage.sh start /tmp/bench-garage)"`).

use std::sync::Arc;
use std::time::Instant;

use futures::stream::{self, StreamExt};

use facteur::account::{Account, AccountConfig};
use facteur::crypto::{KdfParams, Keyring, Password, RecordAuth, user_id};
use facteur::log::InstanceId;
use facteur::mailbox::incoming::{self, DeliveryEnvelope};
use facteur::store::layout;
use facteur::store::{FsStore, S3Settings, S3Store, SharedStore};

const PASSWORD: &str = "drain bench";
/// Deliveries written at once while filling the queue (not timed).
const DELIVERY_PARALLELISM: usize = 32;

fn message(n: usize) -> Vec<u8> {
    let mut body = String::new();
    for line in 0..30 {
        body.push_str(&format!(
            "Line {line} of message {n}: the quick brown fox jumps over the lazy dog.\r\n"
        ));
    }
    format!(
        "From: Sender {n} <sender{n}@example.org>\r\n\
         To: bench@example.net\r\n\
         Subject: Waiting message number {n}\r\n\
         Date: Sun, 6 Dec 2026 12:00:00 +0000\r\n\
         Message-ID: <{n}.drain@example.org>\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n{body}"
    )
    .into_bytes()
}

async fn run(name: &str, store: SharedStore, messages: usize) {
    let (keyring, _, _) =
        Keyring::create(&Password::new(PASSWORD), &KdfParams::TEST, false).expect("keyring");
    let auth = RecordAuth::from_cluster_secret(b"drain bench");
    // A fresh user per run, so a reused bucket starts empty for it.
    let secret = hex::encode(rand::random::<[u8; 16]>());
    let user = user_id(secret.as_bytes(), "bench");
    let public_key = keyring.public_key();

    let started = Instant::now();
    let delivered = stream::iter(0..messages)
        .map(|n| {
            let (store, user, public_key, auth) = (&store, &user, &public_key, &auth);
            async move {
                let envelope = DeliveryEnvelope {
                    mail_from: format!("sender{n}@example.org"),
                    rcpt_to: vec!["bench@example.net".into()],
                    received_at: 1_796_558_400,
                    folder: None,
                };
                incoming::deliver(
                    store.as_ref(),
                    user,
                    public_key,
                    auth,
                    &message(n),
                    envelope,
                )
                .await
                .expect("deliver")
            }
        })
        .buffer_unordered(DELIVERY_PARALLELISM)
        .count()
        .await;
    eprintln!(
        "{name}: delivered {delivered} messages in {:.1} s (not timed)",
        started.elapsed().as_secs_f64()
    );

    let keys = keyring
        .unlock_with_password(&Password::new(PASSWORD))
        .expect("unlock");
    let config = AccountConfig::new(InstanceId::new("drain_bench").expect("instance"), auth);
    let account = Account::new(user.clone(), keys, store.clone(), config);
    let started = Instant::now();
    let report = account.drain_incoming().await.expect("drain");
    let took = started.elapsed();

    let left = store
        .list(&layout::incoming_prefix(&user), None, 1)
        .await
        .expect("list");
    assert_eq!(report.delivered.len(), messages, "every message drained");
    assert!(
        left.objects.is_empty(),
        "the queue is empty after the drain"
    );
    let (_, inbox) = account.open_by_name("INBOX").await.expect("INBOX");
    let exists = inbox.read(|s| s.exists()).await;
    assert_eq!(exists as usize, messages, "INBOX holds every message");
    println!(
        "| {name:6} | drain {messages} waiting messages | {:7.2} s | {:8.0} msgs/s |",
        took.as_secs_f64(),
        messages as f64 / took.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let messages = std::env::var("FACTEUR_BENCH_DRAIN_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let backends =
        std::env::var("FACTEUR_BENCH_DRAIN_BACKENDS").unwrap_or_else(|_| "fs,garage".into());
    let dir = tempfile::tempdir().expect("tempdir");
    for name in backends.split(',').map(str::trim) {
        let store: SharedStore = match name {
            "fs" => Arc::new(FsStore::open(dir.path().join("fs")).expect("fs store")),
            "garage" => match S3Settings::from_test_env() {
                Some(mut settings) => {
                    if let Some(n) = std::env::var("FACTEUR_BENCH_DRAIN_S3_CONCURRENCY")
                        .ok()
                        .and_then(|v| v.parse().ok())
                    {
                        settings.max_concurrency = n;
                    }
                    Arc::new(S3Store::new(settings).expect("S3 store"))
                }
                None => {
                    eprintln!(
                        "garage: FACTEUR_TEST_S3_* not set, skipped \
                         (eval \"$(scripts/garage.sh start /tmp/bench-garage)\")"
                    );
                    continue;
                }
            },
            other => panic!("unknown backend {other:?} (fs, garage)"),
        };
        run(name, store, messages).await;
    }
}
