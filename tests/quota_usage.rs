//! The usage an account keeps for QUOTA (`facteur::account::usage`): it
//! stays exact through APPEND, EXPUNGE, COPY, MOVE, delivery and another
//! instance's changes, and counting it costs a fixed number of store
//! calls whatever the number of mailboxes.

use std::sync::Arc;
use std::time::Duration;

use facteur::account::usage::{Count, Usage};
use facteur::account::{Account, AccountConfig};
use facteur::crypto::{KdfParams, Keyring, Password, RecordAuth, user_id};
use facteur::log::InstanceId;
use facteur::mailbox::incoming::{DeliveryEnvelope, deliver};
use facteur::store::{MemoryStore, SharedStore};

fn records() -> RecordAuth {
    RecordAuth::from_cluster_secret(b"0123456789abcdef")
}

fn account(store: &SharedStore, keyring: &Keyring, instance: &str) -> Arc<Account> {
    let keys = keyring.unlock_with_password(&Password::new("pw")).unwrap();
    let mut config = AccountConfig::new(InstanceId::new(instance).unwrap(), records());
    config.poll_interval = Duration::from_millis(50);
    Account::new(
        user_id(b"0123456789abcdef", "alice"),
        keys,
        store.clone(),
        config,
    )
}

/// A CRLF message of `n` octets (its RFC822.SIZE).
fn message(n: usize) -> Vec<u8> {
    let mut m = b"Subject: usage\r\n\r\n".to_vec();
    m.resize(n - 2, b'u');
    m.extend_from_slice(b"\r\n");
    m
}

/// The kept figure, which must equal `expected` and a fresh count.
async fn assert_usage(account: &Account, expected: Usage, step: &str) {
    let kept = account.usage(Count::Kept).await.unwrap();
    assert_eq!(kept, expected, "kept figure after {step}");
    let fresh = account.usage(Count::Fresh).await.unwrap();
    assert_eq!(fresh, expected, "fresh count after {step}");
}

fn usage(bytes: u64, messages: u64) -> Usage {
    Usage { bytes, messages }
}

#[tokio::test]
async fn kept_usage_stays_exact() {
    let store = MemoryStore::new();
    let shared: SharedStore = Arc::new(store.clone());
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    // The poller checks the keyring first and locks an account whose
    // keyring is gone: store it, as provisioning does.
    let key = facteur::store::layout::keyring(&user_id(b"0123456789abcdef", "alice"));
    shared
        .put(&key, bytes::Bytes::from(keyring.to_bytes(&key)))
        .await
        .unwrap();
    let a = account(&shared, &keyring, "a");
    let b = account(&shared, &keyring, "b");
    a.folders()
        .await
        .unwrap()
        .create("Keep", None)
        .await
        .unwrap();
    let (_, inbox) = a.open_by_name("INBOX").await.unwrap();
    let (_, archive) = a.open_by_name("Keep").await.unwrap();
    assert_usage(&a, usage(0, 0), "nothing").await;

    for n in [1000, 2000, 3000] {
        a.append(&inbox, &message(n), vec![], 1_700_000_000)
            .await
            .unwrap();
    }
    assert_usage(&a, usage(6000, 3), "APPEND").await;

    let uids: Vec<u32> = inbox.read(|s| s.messages().map(|m| m.uid).collect()).await;
    inbox.expunge(&uids[..1]).await.unwrap();
    assert_usage(&a, usage(5000, 2), "EXPUNGE").await;

    a.copy(&inbox, &uids[1..2], &archive, false).await.unwrap();
    assert_usage(&a, usage(7000, 3), "COPY").await;

    a.copy(&inbox, &uids[2..3], &archive, true).await.unwrap();
    assert_usage(&a, usage(7000, 3), "MOVE").await;

    let envelope = DeliveryEnvelope {
        mail_from: "bob@example.org".into(),
        rcpt_to: vec!["alice@example.org".into()],
        received_at: 1_700_000_000,
        folder: None,
    };
    deliver(
        &store,
        a.user(),
        &keyring.public_key(),
        &records(),
        &message(500),
        envelope,
    )
    .await
    .unwrap();
    assert_usage(&a, usage(7500, 4), "a delivery").await;

    // Another instance appends to a mailbox open here and expunges in
    // another: seen here once the poller synced them.
    let (_, archive_b) = b.open_by_name("Keep").await.unwrap();
    b.append(&archive_b, &message(4000), vec![], 1_700_000_000)
        .await
        .unwrap();
    let (_, inbox_b) = b.open_by_name("INBOX").await.unwrap();
    let all: Vec<u32> = inbox_b
        .read(|s| s.messages().map(|m| m.uid).collect())
        .await;
    inbox_b.expunge(&all).await.unwrap();
    a.poll_once().await;
    assert_usage(
        &a,
        usage(2000 + 3000 + 4000, 3),
        "another instance's changes",
    )
    .await;

    // A mailbox created and filled elsewhere is counted at once; a
    // deleted one no longer counts.
    b.folders()
        .await
        .unwrap()
        .create("New", None)
        .await
        .unwrap();
    let (_, new_b) = b.open_by_name("New").await.unwrap();
    b.append(&new_b, &message(100), vec![], 1_700_000_000)
        .await
        .unwrap();
    assert_usage(&a, usage(9100, 4), "a mailbox created elsewhere").await;
    b.delete_mailbox("Keep").await.unwrap();
    assert_usage(&a, usage(100, 1), "a mailbox deleted elsewhere").await;
}

/// Counting from the kept figures costs the same few store calls with 24
/// mailboxes as with one; a fresh count costs at least one per mailbox.
#[tokio::test]
async fn kept_usage_does_not_walk_every_mailbox() {
    const MAILBOXES: usize = 24;
    let store = MemoryStore::new();
    let shared: SharedStore = Arc::new(store.clone());
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let a = account(&shared, &keyring, "a");
    let folders = a.folders().await.unwrap();
    for i in 0..MAILBOXES {
        let name = format!("Box{i}");
        folders.create(&name, None).await.unwrap();
        let (_, mailbox) = a.open_by_name(&name).await.unwrap();
        a.append(&mailbox, &message(1000), vec![], 1_700_000_000)
            .await
            .unwrap();
    }
    let expected = usage(1000 * MAILBOXES as u64, MAILBOXES as u64);
    assert_eq!(a.usage(Count::Kept).await.unwrap(), expected);

    let before = store.calls();
    assert_eq!(a.usage(Count::Kept).await.unwrap(), expected);
    let kept_calls = store.calls() - before;
    let before = store.calls();
    assert_eq!(a.usage(Count::Fresh).await.unwrap(), expected);
    let fresh_calls = store.calls() - before;
    eprintln!("store calls per count: kept {kept_calls}, fresh {fresh_calls}");
    assert!(kept_calls <= 3, "kept count: {kept_calls} store calls");
    assert!(fresh_calls >= MAILBOXES as u64, "fresh: {fresh_calls}");
}

/// Every count is published for LMTP (`users/<u>/usage-imap`). Two
/// instances counting at once, while LMTP rewrites its own usage object,
/// leave one whole figure, one of the two counted; neither writer erases
/// the other's object.
#[tokio::test]
async fn published_figures_survive_concurrent_writers() {
    use facteur::account::usage::{Published, published_key};
    use facteur::store::ObjectStore;
    let store = MemoryStore::new();
    let shared: SharedStore = Arc::new(store.clone());
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let a = account(&shared, &keyring, "a");
    let b = account(&shared, &keyring, "b");
    let user = a.user().clone();
    let (_, inbox) = a.open_by_name("INBOX").await.unwrap();
    store.set_latency(Duration::from_millis(2));
    for round in 0..8u64 {
        a.append(
            &inbox,
            &message(1000 + round as usize),
            vec![],
            1_700_000_000,
        )
        .await
        .unwrap();
        let now = facteur::log::now_ms();
        let (from_a, from_b, from_lmtp) = tokio::join!(
            a.usage(Count::Kept),
            b.usage(Count::Fresh),
            facteur::lmtp::quota::recount(&store, &user, now),
        );
        let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
        from_lmtp.unwrap();
        let raw = store.get(&published_key(&user)).await.unwrap();
        let published = Published::parse(&raw).expect("a whole figure");
        let figure = usage(published.bytes, published.messages);
        assert!(
            figure == from_a || figure == from_b,
            "round {round}: {figure:?} is neither {from_a:?} nor {from_b:?}"
        );
        assert!(published.since_ms <= now);
        // LMTP's own object is still its own, readable.
        let lmtp = facteur::lmtp::quota::usage(&store, &user, now)
            .await
            .unwrap();
        assert_eq!(lmtp.basis, facteur::lmtp::quota::Basis::Kept);
        assert_eq!(lmtp.messages, round + 1);
    }
}

/// Mail waiting in `incoming/` while another instance holds the drain is
/// in no mailbox, so not in IMAP's count: the published figure must leave
/// its body to LMTP's tail (`since_ms` before the waiting record), or LMTP
/// would take the low figure and deliver past the quota for as long as the
/// drain lags.
#[tokio::test]
async fn mail_waiting_to_be_drained_stays_in_lmtps_tail() {
    use facteur::account::usage::{Published, published_key};
    use facteur::store::ObjectStore;
    use facteur::store::layout;
    let store = MemoryStore::new();
    let shared: SharedStore = Arc::new(store.clone());
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let keys = keyring.unlock_with_password(&Password::new("pw")).unwrap();
    let mut config = AccountConfig::new(InstanceId::new("a").unwrap(), records());
    config.publish_margin = Duration::ZERO;
    let a = Account::new(
        user_id(b"0123456789abcdef", "alice"),
        keys,
        shared.clone(),
        config,
    );
    let user = a.user().clone();
    // Another instance drains this user's mail, and is slow about it.
    let until = facteur::log::now_ms() + 3_600_000;
    shared
        .put(
            &layout::incoming_lease(&user),
            bytes::Bytes::from(format!("b {until}")),
        )
        .await
        .unwrap();
    let envelope = DeliveryEnvelope {
        mail_from: "bob@example.org".into(),
        rcpt_to: vec!["alice@example.org".into()],
        received_at: 1_700_000_000,
        folder: None,
    };
    deliver(
        &store,
        &user,
        &keyring.public_key(),
        &records(),
        &message(500),
        envelope,
    )
    .await
    .unwrap();
    let waiting = store
        .list(&layout::incoming_prefix(&user), None, 10)
        .await
        .unwrap();
    assert_eq!(waiting.objects.len(), 1, "the delivery waits");
    let name = waiting.objects[0].key.rsplit('/').next().unwrap();
    let delivered_ms = u64::from_str_radix(&name[..16], 16).unwrap();
    // The count begins strictly after the delivery.
    while facteur::log::now_ms() <= delivered_ms {
        tokio::task::yield_now().await;
    }
    assert_eq!(a.usage(Count::Kept).await.unwrap(), usage(0, 0));
    let raw = store.get(&published_key(&user)).await.unwrap();
    let published = Published::parse(&raw).expect("a figure");
    assert!(
        published.since_ms <= delivered_ms,
        "the waiting body ({delivered_ms}) is in neither the figure nor the tail from {}",
        published.since_ms
    );
}
