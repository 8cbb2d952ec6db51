//! What someone who can write the bucket (but holds no cluster secret and
//! no user key) can and cannot do to a user's mail, and what the bucket
//! sees of a user's activity (issue #12, items 4 and 6).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use facteur::account::{Account, AccountConfig, AccountError};
use facteur::crypto::{
    CryptoError, KdfParams, Keyring, Password, RecordAuth, UserKeys, purpose, seal_body, user_id,
};
use facteur::log::InstanceId;
use facteur::log::stored::{LogTuning, StoredLog};
use facteur::mailbox::body::encode_summary;
use facteur::mailbox::incoming::{self, DeliveryEnvelope, deliver};
use facteur::mailbox::op::BodyKey;
use facteur::mailbox::summary::summarize;
use facteur::mailbox::{MailboxOp, MailboxState, MessageRef, NewMessage};
use facteur::store::layout::{self, UserId};
use facteur::store::{MemoryStore, ObjectStore, SharedStore, list_all};

const CLUSTER_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const MIB: usize = 1 << 20;

fn records() -> RecordAuth {
    RecordAuth::from_cluster_secret(CLUSTER_SECRET)
}

fn alice() -> UserId {
    user_id(CLUSTER_SECRET, "alice")
}

fn keys() -> UserKeys {
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    keyring.unlock_with_password(&Password::new("pw")).unwrap()
}

fn account(
    store: &MemoryStore,
    keys: &UserKeys,
    tune: impl FnOnce(&mut AccountConfig),
) -> Arc<Account> {
    let shared: SharedStore = Arc::new(store.clone());
    let mut config = AccountConfig::new(InstanceId::new("a").unwrap(), records());
    tune(&mut config);
    Account::new(alice(), keys.clone(), shared, config)
}

fn envelope(received_at: i64) -> DeliveryEnvelope {
    DeliveryEnvelope {
        mail_from: "bob@example.org".into(),
        rcpt_to: vec!["alice@example.org".into()],
        received_at,
        folder: None,
    }
}

const PHISHING: &[u8] =
    b"Authentication-Results: mx.example.org; dkim=pass header.d=bank.example\r\n\
    From: Your Bank <security@bank.example>\r\n\
    Subject: Verify your account today\r\n\r\nhttps://bank.example.evil/login\r\n";

/// A bucket writer runs Facteur's own delivery code against the bucket,
/// with the user's public key (public in `delivery-key`) but without the
/// cluster secret: the record they plant has a MAC under the wrong key,
/// or, stripped of its header, is exactly what records looked like before
/// they were authenticated. Neither may reach the user's INBOX.
#[tokio::test]
async fn delivery_records_planted_by_a_bucket_writer_are_quarantined_never_shown() {
    let store = MemoryStore::new();
    let keys = keys();
    let genuine = deliver(
        &store,
        &alice(),
        &keys.public_key(),
        &records(),
        b"From: bob@example.org\r\nSubject: hello\r\n\r\nhi\r\n",
        envelope(1_700_000_000),
    )
    .await
    .unwrap();

    let attacker = RecordAuth::from_cluster_secret(b"the attacker's own secret, 32 by");
    let forged = deliver(
        &store,
        &alice(),
        &keys.public_key(),
        &attacker,
        PHISHING,
        envelope(4_102_444_800),
    )
    .await
    .unwrap();
    let bare = deliver(
        &store,
        &alice(),
        &keys.public_key(),
        &attacker,
        PHISHING,
        envelope(4_102_444_800),
    )
    .await
    .unwrap();
    let bare_key = format!("{}{}", layout::incoming_prefix(&alice()), bare.record);
    let stored = store.get(&bare_key).await.unwrap();
    store.put(&bare_key, stored.slice(36..)).await.unwrap();

    let (before, _) = incoming::quarantined_records();
    let a = account(&store, &keys, |_| {});
    let report = a.drain_incoming().await.unwrap();
    assert_eq!(report.delivered.len(), 1, "{report:?}");
    let refused: BTreeSet<&str> = report.quarantined.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(
        refused,
        BTreeSet::from([forged.record.as_str(), bare.record.as_str()])
    );
    assert!(
        report
            .quarantined
            .iter()
            .all(|q| q.unauthenticated && q.moved)
    );
    assert!(incoming::quarantined_records().0 >= before + 2);

    let (_, inbox) = a.open_by_name("INBOX").await.unwrap();
    assert_eq!(inbox.read(|s| s.exists()).await, 1);
    let body = inbox.body(1).await.unwrap();
    assert!(
        body.ends_with(b"hi\r\n"),
        "only the genuine message is shown"
    );
    assert!(
        list_all(&store, &layout::incoming_prefix(&alice()), None)
            .await
            .unwrap()
            .is_empty()
    );
    let held = incoming::quarantined(&store, &alice()).await.unwrap();
    assert_eq!(held.len(), 2);
    assert!(!held.contains(&genuine.record));

    // A second drain (another session) shows nothing more.
    let report = a.drain_incoming().await.unwrap();
    assert!(report.delivered.is_empty() && report.quarantined.is_empty());
    assert_eq!(inbox.read(|s| s.exists()).await, 1);
}

/// Writes one message into mailbox `id` of alice as an instance would,
/// claiming `claimed` bytes for a body that holds `body`.
async fn place_with_claimed_size(
    store: &MemoryStore,
    keys: &UserKeys,
    id: &str,
    body: &[u8],
    claimed: u64,
) {
    let body_key = BodyKey::random();
    let blob_id = layout::new_blob_id(1_700_000_000_000);
    let blob = layout::blob(&alice(), &blob_id);
    let sealed = seal_body(body_key.key(), &blob, body);
    store.put(&blob, Bytes::from(sealed)).await.unwrap();
    let mut log = StoredLog::open(
        store,
        keys.master().subkey(purpose::MAILBOX),
        format!("{}mbox/{id}/", layout::user_prefix(&alice())),
        InstanceId::new("w").unwrap(),
        LogTuning::default(),
        || MailboxState::new(7),
    )
    .await
    .unwrap();
    let message = MessageRef {
        blob_id,
        body_key,
        size: claimed,
        internal_date: 1_700_000_000,
        summary: encode_summary(&summarize(b"Subject: x\r\n\r\n")),
    };
    log.append(
        store,
        MailboxOp::Append(NewMessage {
            message,
            flags: vec![],
        }),
    )
    .await
    .unwrap();
}

/// A body never decompresses beyond the configured maximum message size,
/// whatever size its message claims (the 1 GiB claim that took 2.2 GB of
/// RSS at `FETCH BODY[]<0.100>`), and a body whose size differs from the
/// recorded one is refused as damaged.
#[tokio::test]
async fn bodies_decompress_no_further_than_the_maximum_and_must_match_their_size() {
    let store = MemoryStore::new();
    let keys = keys();
    // 64 MiB of zeros compresses to a few KiB.
    let bomb = vec![0u8; 64 * MIB];
    place_with_claimed_size(&store, &keys, "0b0b", &bomb, 1 << 30).await;
    place_with_claimed_size(&store, &keys, "0c0c", &bomb, bomb.len() as u64).await;
    place_with_claimed_size(&store, &keys, "0d0d", b"short body\r\n", 1000).await;
    drop(bomb);

    let a = account(&store, &keys, |c| c.mailbox.max_body_size = MIB);
    for id in ["0b0b", "0c0c"] {
        let mailbox = a.mailbox(id, 7).await.unwrap();
        let started = Instant::now();
        let err = mailbox.body(1).await.unwrap_err();
        assert!(
            matches!(
                err,
                AccountError::Crypto(CryptoError::TooLarge { max_size: MIB, .. })
            ),
            "{id}: {err:?}"
        );
        // Stopping at 1 MiB is quick; decompressing 64 MiB is not.
        assert!(started.elapsed() < Duration::from_secs(2), "{id}");
    }
    let mailbox = a.mailbox("0d0d", 7).await.unwrap();
    let err = mailbox.body(1).await.unwrap_err();
    assert!(matches!(err, AccountError::Corrupt(_)), "{err:?}");

    // Within the limit and of the right size, a body opens.
    place_with_claimed_size(&store, &keys, "0e0e", b"fine\r\n", 6).await;
    let mailbox = a.mailbox("0e0e", 7).await.unwrap();
    assert_eq!(&mailbox.body(1).await.unwrap()[..], b"fine\r\n");
}

/// Sizes of the objects under `prefix` written since `seen`.
async fn new_sizes(store: &MemoryStore, prefix: &str, seen: &mut BTreeSet<String>) -> Vec<u64> {
    let mut sizes = Vec::new();
    for meta in list_all(store, prefix, None).await.unwrap() {
        if seen.insert(meta.key.clone()) {
            sizes.push(meta.size);
        }
    }
    sizes
}

/// The bucket sees op objects, not operations: ops of different kinds
/// and lengths seal to the same size class.
#[tokio::test]
async fn ops_of_different_kinds_have_identical_sealed_sizes() {
    let store = MemoryStore::new();
    let keys = keys();
    let a = account(&store, &keys, |c| c.mailbox.log.snapshot_every = 1000);
    let mailbox = a.mailbox("0a0a", 7).await.unwrap();
    let prefix = format!("{}mbox/0a0a/log/", layout::user_prefix(&alice()));
    let mut seen = BTreeSet::new();
    mailbox
        .append(b"Subject: one\r\n\r\nbody\r\n", vec![], 1_700_000_000)
        .await
        .unwrap();
    new_sizes(&store, &prefix, &mut seen).await;
    let mut sizes = Vec::new();
    for flag in ["\\Seen", "\\Answered", "\\Flagged", "$Junk"] {
        mailbox
            .store_flags(&[1], vec![flag.to_owned()], vec![])
            .await
            .unwrap();
        mailbox
            .store_flags(&[1], vec![], vec![flag.to_owned()])
            .await
            .unwrap();
        sizes.extend(new_sizes(&store, &prefix, &mut seen).await);
    }
    assert_eq!(sizes.len(), 8);
    assert!(sizes.iter().all(|s| *s == sizes[0]), "{sizes:?}");

    let folders = a.folders().await.unwrap();
    let list_prefix = format!("{}list/log/", layout::user_prefix(&alice()));
    new_sizes(&store, &list_prefix, &mut seen).await;
    let mut sizes = Vec::new();
    for name in [
        "a",
        "Projects",
        "Archives/2026/Receipts and invoices of the association",
    ] {
        folders.create(name, None).await.unwrap();
        sizes.extend(new_sizes(&store, &list_prefix, &mut seen).await);
    }
    assert_eq!(sizes.len(), 3);
    assert!(sizes.iter().all(|s| *s == sizes[0]), "{sizes:?}");
    // And everything written is of a padded class.
    for meta in list_all(&store, &layout::user_prefix(&alice()), None)
        .await
        .unwrap()
        .iter()
        .filter(|m| m.key.contains("/log/") || m.key.contains("/snap/"))
    {
        assert!(
            meta.size.is_power_of_two() && meta.size >= 512 || meta.size % 4096 == 0,
            "{} is {} bytes",
            meta.key,
            meta.size
        );
    }
}
