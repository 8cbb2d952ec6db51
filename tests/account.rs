//! Accounts on a shared store: what several Facteur instances serving the
//! same user see when they write to one mailbox at the same time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use facteur::account::{Account, AccountConfig, Mailbox};
use facteur::crypto::{KdfParams, Keyring, Password, user_id};
use facteur::log::InstanceId;
use facteur::mailbox::summary::Parts;
use facteur::mailbox::text::Index;
use facteur::store::{MemoryStore, ObjectStore, S3Settings, S3Store, SharedStore, list_all};

/// The delivery-record key of the tests' cluster.
fn records() -> facteur::crypto::RecordAuth {
    facteur::crypto::RecordAuth::from_cluster_secret(b"0123456789abcdef")
}

fn account(store: &SharedStore, keyring: &Keyring, instance: &str, secret: &[u8]) -> Arc<Account> {
    let keys = keyring.unlock_with_password(&Password::new("pw")).unwrap();
    let mut config = AccountConfig::new(InstanceId::new(instance).unwrap(), records());
    config.poll_interval = Duration::from_millis(50);
    Account::new(user_id(secret, "alice"), keys, store.clone(), config)
}

/// Stores `keyring` as the user's, as provisioning does: an account
/// whose poller runs locks itself if its keyring is not in the store.
async fn store_keyring(store: &SharedStore, keyring: &Keyring, secret: &[u8]) {
    let key = facteur::store::layout::keyring(&user_id(secret, "alice"));
    store
        .put(&key, bytes::Bytes::from(keyring.to_bytes(&key)))
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

/// Subject of every shown message, with how often it is shown.
async fn subjects(mailbox: &Mailbox) -> BTreeMap<String, usize> {
    let uids: Vec<u32> = mailbox
        .read(|s| s.messages().map(|m| m.uid).collect())
        .await;
    let mut seen = BTreeMap::new();
    for uid in uids {
        let summary = mailbox.summary(uid).await.unwrap();
        let subject = summary
            .envelope
            .subject
            .map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned())
            .unwrap_or_default();
        *seen.entry(subject).or_insert(0) += 1;
    }
    seen
}

/// Two instances append and flag in one mailbox concurrently; afterwards
/// both show every message exactly once, with the same UIDs.
async fn concurrent_appends(store: SharedStore) {
    let secret: [u8; 16] = rand::random();
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let a = account(&store, &keyring, "a", &secret);
    let b = account(&store, &keyring, "b", &secret);
    let box_id = "0123456789abcdef";
    let ma = a.mailbox(box_id, 7).await.unwrap();
    let mb = b.mailbox(box_id, 7).await.unwrap();

    let writer = |mailbox: Arc<Mailbox>, who: &'static str| {
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..15 {
                let placed = mailbox
                    .append(&message(&format!("{who}{i:02}")), vec![], 1_700_000_000)
                    .await
                    .unwrap();
                assert_eq!(placed.uid_validity, 7);
                acknowledged.push(format!("note {who}{i:02}"));
                if i % 3 == 0 {
                    let last = mailbox.read(|s| s.uid_next() - 1).await;
                    mailbox
                        .store_flags(&[last], vec!["\\Seen".into()], vec![])
                        .await
                        .unwrap();
                }
                if i % 5 == 0 {
                    mailbox.sync().await.unwrap();
                }
            }
            acknowledged
        })
    };
    let (ack_a, ack_b) = tokio::join!(writer(ma.clone(), "a"), writer(mb.clone(), "b"));
    let acknowledged: Vec<String> = ack_a.unwrap().into_iter().chain(ack_b.unwrap()).collect();

    // Quiet: sync until neither instance has displaced messages left.
    for _ in 0..10 {
        ma.sync().await.unwrap();
        mb.sync().await.unwrap();
        let displaced =
            ma.read(|s| s.displaced().len()).await + mb.read(|s| s.displaced().len()).await;
        if displaced == 0 {
            break;
        }
    }
    ma.sync().await.unwrap();
    mb.sync().await.unwrap();
    let (sa, sb) = (subjects(&ma).await, subjects(&mb).await);
    assert_eq!(sa, sb);
    for subject in &acknowledged {
        assert_eq!(
            sa.get(subject),
            Some(&1),
            "{subject} not shown exactly once: {sa:?}"
        );
    }
    assert_eq!(sa.len(), 30);
    let uids_a: Vec<u32> = ma.read(|s| s.messages().map(|m| m.uid).collect()).await;
    let uids_b: Vec<u32> = mb.read(|s| s.messages().map(|m| m.uid).collect()).await;
    assert_eq!(uids_a, uids_b);
    assert_eq!(
        ma.read(|s| s.highest_modseq()).await,
        mb.read(|s| s.highest_modseq()).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_append_concurrently_on_memory() {
    concurrent_appends(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_append_concurrently_on_garage() {
    let Some(settings) = S3Settings::for_tests("the Garage two-instance test") else {
        return;
    };
    let store: SharedStore = Arc::new(S3Store::new(settings).unwrap());
    concurrent_appends(store).await;
}

#[tokio::test]
async fn bodies_round_trip_and_store_holds_no_plaintext() {
    let store = MemoryStore::new();
    let shared: SharedStore = Arc::new(store.clone());
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let a = account(&shared, &keyring, "a", b"0123456789abcdef");
    let inbox = a.mailbox("00aa", 1).await.unwrap();
    // Bare LF in, CRLF stored and served.
    let placed = inbox
        .append(
            b"Subject: secret plans\n\nmeet at noon\n",
            vec!["\\Flagged".into()],
            0,
        )
        .await
        .unwrap();
    let uid = placed.uids[0].unwrap();
    let body = inbox.body(uid).await.unwrap();
    assert_eq!(&body[..], b"Subject: secret plans\r\n\r\nmeet at noon\r\n");
    assert_eq!(
        inbox.read(|s| s.message(uid).unwrap().message.size).await,
        body.len() as u64
    );
    assert_eq!(inbox.read(|s| s.uids_with_flag("\\Flagged")).await, [uid]);
    for key in store.keys() {
        let data = store.get(&key).await.unwrap();
        for word in [&b"secret"[..], b"noon", b"Flagged"] {
            assert!(!data.windows(word.len()).any(|w| w == word), "{key}");
        }
    }
    // Copy then move into another mailbox: same body, no new blob.
    let other = a.mailbox("00bb", 2).await.unwrap();
    let blobs_before = list_all(&store, "users/", None)
        .await
        .unwrap()
        .iter()
        .filter(|o| o.key.contains("/blob/"))
        .count();
    let (copied, placed) = inbox.copy_to(&[uid], &other).await.unwrap();
    assert_eq!(copied, [uid]);
    assert_eq!(placed.uid_validity, 2);
    let copy_uid = placed.uids[0].unwrap();
    assert_eq!(other.body(copy_uid).await.unwrap(), body);
    assert_eq!(
        other.read(|s| s.uids_with_flag("\\Flagged")).await,
        [copy_uid]
    );
    inbox.move_to(&[uid], &other).await.unwrap();
    assert_eq!(inbox.read(|s| s.exists()).await, 0);
    assert_eq!(other.read(|s| s.exists()).await, 2);
    let blobs_after = list_all(&store, "users/", None)
        .await
        .unwrap()
        .iter()
        .filter(|o| o.key.contains("/blob/"))
        .count();
    assert_eq!(blobs_before, blobs_after);
}

#[tokio::test]
async fn changes_from_another_instance_wake_watchers() {
    let shared: SharedStore = Arc::new(MemoryStore::new());
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let a = account(&shared, &keyring, "a", b"0123456789abcdef");
    let b = account(&shared, &keyring, "b", b"0123456789abcdef");
    let ma = a.mailbox("0c", 1).await.unwrap();
    let mb = b.mailbox("0c", 1).await.unwrap();
    store_keyring(&shared, &keyring, b"0123456789abcdef").await;
    // The poller runs for accounts a session holds (none poll otherwise).
    b.session_began();
    let _poller = b.spawn_poller();
    let mut watch = mb.watch();
    ma.append(&message("ping"), vec![], 0).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), watch.changed())
        .await
        .expect("b's poller saw a's append")
        .unwrap();
    assert_eq!(mb.read(|s| s.exists()).await, 1);
}

#[tokio::test]
async fn a_damaged_mailbox_does_not_affect_another() {
    let store = MemoryStore::new();
    let shared: SharedStore = Arc::new(store.clone());
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let a = account(&shared, &keyring, "a", b"0123456789abcdef");
    let good = a.mailbox("01", 1).await.unwrap();
    let bad = a.mailbox("02", 1).await.unwrap();
    good.append(&message("g"), vec![], 0).await.unwrap();
    bad.append(&message("b"), vec![], 0).await.unwrap();
    for key in store.keys() {
        if key.contains("/mbox/02/log/") {
            store
                .put(&key, bytes::Bytes::from_static(b"not an op"))
                .await
                .unwrap();
        }
    }
    let b = account(&shared, &keyring, "b", b"0123456789abcdef");
    let bad_again = b.mailbox("02", 1).await.unwrap();
    assert_eq!(bad_again.read(|s| s.exists()).await, 0);
    let damage = bad_again.damage().await;
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert!(damage[0].reason.contains("decrypt"), "{damage:?}");
    let good_again = b.mailbox("01", 1).await.unwrap();
    assert_eq!(good_again.read(|s| s.exists()).await, 1);
    assert!(good_again.damage().await.is_empty());
}

#[tokio::test]
async fn mailbox_list_defaults_create_rename_delete_across_instances() {
    let shared: SharedStore = Arc::new(MemoryStore::new());
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let a = account(&shared, &keyring, "a", b"0123456789abcdef");
    let b = account(&shared, &keyring, "b", b"0123456789abcdef");
    let names = |folders: Vec<facteur::account::Folder>| {
        folders.into_iter().map(|f| f.name).collect::<Vec<_>>()
    };

    let fa = a.folders().await.unwrap();
    assert_eq!(
        names(fa.all().await),
        ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]
    );
    let sent = fa.find("Sent").await.unwrap();
    assert_eq!(sent.special_use.map(|u| u.attribute()), Some("\\Sent"));

    fa.create("Projects/2026", None).await.unwrap();
    let fb = b.folders().await.unwrap();
    assert!(fb.find("Projects").await.is_some(), "superiors are created");
    assert!(
        fb.find("projects/2026").await.is_none(),
        "names other than INBOX are case-sensitive"
    );
    assert!(matches!(
        fb.create("Projects/2026", None).await,
        Err(facteur::account::AccountError::List(_))
    ));

    // Mail in a mailbox follows it through a rename done elsewhere.
    let (_, projects) = b.open_by_name("Projects/2026").await.unwrap();
    projects.append(&message("plan"), vec![], 0).await.unwrap();
    a.rename_mailbox("Projects", "Work").await.unwrap();
    fb.sync().await.unwrap();
    assert!(fb.find("Projects/2026").await.is_none());
    let (folder, moved) = b.open_by_name("Work/2026").await.unwrap();
    assert_eq!(folder.id.to_hex(), projects.id());
    assert_eq!(moved.read(|s| s.exists()).await, 1);

    // Renaming INBOX moves its messages and leaves INBOX empty.
    let (_, inbox) = a.open_by_name("inbox").await.unwrap();
    inbox.append(&message("old"), vec![], 0).await.unwrap();
    a.rename_mailbox("INBOX", "Old mail").await.unwrap();
    assert_eq!(inbox.read(|s| s.exists()).await, 0);
    let (_, old) = a.open_by_name("Old mail").await.unwrap();
    assert_eq!(
        subjects(&old).await.keys().collect::<Vec<_>>(),
        ["note old"]
    );

    a.delete_mailbox("Work/2026").await.unwrap();
    fb.sync().await.unwrap();
    assert!(fb.find("Work/2026").await.is_none());
    assert!(
        fb.find("Work").await.is_some(),
        "inferiors and superiors stay"
    );
    assert!(matches!(
        a.delete_mailbox("INBOX").await,
        Err(facteur::account::AccountError::List(_))
    ));
}

/// LMTP on one instance delivers; the user's session on another instance
/// sees the message in INBOX within a poll, woken by its watch.
#[tokio::test]
async fn deliveries_reach_inbox_on_another_instance() {
    use facteur::mailbox::incoming::{DeliveryEnvelope, deliver};
    let store = MemoryStore::new();
    let shared: SharedStore = Arc::new(store.clone());
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let reader = account(&shared, &keyring, "reader", b"0123456789abcdef");
    let (_, inbox) = reader.open_by_name("INBOX").await.unwrap();
    let mut watch = inbox.watch();
    store_keyring(&shared, &keyring, b"0123456789abcdef").await;
    reader.session_began();
    let _poller = reader.spawn_poller();

    let envelope = DeliveryEnvelope {
        mail_from: "bob@example.org".into(),
        rcpt_to: vec!["alice@example.org".into()],
        received_at: 1_700_000_000,
        folder: None,
    };
    deliver(
        &store,
        reader.user(),
        &keyring.public_key(),
        &records(),
        &message("delivered"),
        envelope,
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while inbox.read(|s| s.exists()).await == 0 {
            watch.changed().await.unwrap();
        }
    })
    .await
    .expect("the delivery reached INBOX");
    assert_eq!(
        subjects(&inbox).await.keys().collect::<Vec<_>>(),
        ["note delivered"]
    );
    let uid = inbox.read(|s| s.uid_next() - 1).await;
    assert!(
        inbox
            .body(uid)
            .await
            .unwrap()
            .ends_with(b"body of delivered\r\n")
    );
    let queued = list_all(&store, "users/", None)
        .await
        .unwrap()
        .into_iter()
        .filter(|o| o.key.contains("/incoming/"))
        .count();
    assert_eq!(queued, 0, "drained records are deleted");
}

#[tokio::test]
async fn unreferenced_bodies_are_collected_and_referenced_ones_kept() {
    let store = MemoryStore::new();
    let shared: SharedStore = Arc::new(store.clone());
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let a = account(&shared, &keyring, "a", b"0123456789abcdef");
    let (_, inbox) = a.open_by_name("INBOX").await.unwrap();
    let (_, archive) = a.open_by_name("Archive").await.unwrap();
    let kept = inbox
        .append(&message("kept"), vec![], 0)
        .await
        .unwrap()
        .uids[0]
        .unwrap();
    let gone = inbox
        .append(&message("gone"), vec![], 0)
        .await
        .unwrap()
        .uids[0]
        .unwrap();
    let live = inbox
        .append(&message("live"), vec![], 0)
        .await
        .unwrap()
        .uids[0]
        .unwrap();
    inbox.move_to(&[kept], &archive).await.unwrap();
    inbox.expunge(&[gone]).await.unwrap();
    let blobs = || async {
        list_all(&store, "users/", None)
            .await
            .unwrap()
            .into_iter()
            .filter(|o| o.key.contains("/blob/"))
            .count()
    };
    assert_eq!(blobs().await, 3);

    // Within the grace period nothing goes.
    assert_eq!(a.collect_blobs(Duration::from_secs(3600)).await.unwrap(), 0);
    // Past it, only the body of the expunged message goes. (The wall
    // clock must pass the expunge's millisecond.)
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(a.collect_blobs(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(blobs().await, 2);
    let moved = archive.read(|s| s.uid_next() - 1).await;
    assert!(
        archive
            .body(moved)
            .await
            .unwrap()
            .ends_with(b"body of kept\r\n")
    );
    assert!(
        inbox
            .body(live)
            .await
            .unwrap()
            .ends_with(b"body of live\r\n")
    );
}

/// DELETE on one instance races an APPEND on another: the appended mail is
/// not lost; the mailbox comes back holding just that mail.
#[tokio::test]
async fn a_mailbox_deleted_while_mail_arrived_is_restored() {
    let shared: SharedStore = Arc::new(MemoryStore::new());
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let a = account(&shared, &keyring, "a", b"0123456789abcdef");
    let b = account(&shared, &keyring, "b", b"0123456789abcdef");
    a.folders()
        .await
        .unwrap()
        .create("Tmp", None)
        .await
        .unwrap();
    let (_, tmp_a) = a.open_by_name("Tmp").await.unwrap();
    tmp_a.append(&message("seen"), vec![], 0).await.unwrap();
    let (_, tmp_b) = b.open_by_name("Tmp").await.unwrap();

    // a deletes Tmp having seen one message; b appends without knowing.
    a.delete_mailbox("Tmp").await.unwrap();
    tmp_b.append(&message("unseen"), vec![], 0).await.unwrap();
    assert!(a.folders().await.unwrap().find("Tmp").await.is_none());

    // Nothing to recover when no mail arrived unseen: only Tmp is affected.
    assert_eq!(a.recover_deleted().await.unwrap(), 1);
    assert_eq!(a.recover_deleted().await.unwrap(), 0);
    let (_, back) = a.open_by_name("Tmp").await.unwrap();
    back.sync().await.unwrap();
    assert_eq!(
        subjects(&back).await.keys().collect::<Vec<_>>(),
        ["note unseen"]
    );
}

/// Snapshots are written as ops accumulate, and each one collects the op
/// objects an older snapshot (past the grace period) covers; the mailbox
/// opens the same afterwards.
#[tokio::test]
async fn op_objects_are_collected_behind_snapshots() {
    let store = MemoryStore::new();
    let shared: SharedStore = Arc::new(store.clone());
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let keys = keyring.unlock_with_password(&Password::new("pw")).unwrap();
    let mut config = AccountConfig::new(InstanceId::new("a").unwrap(), records());
    config.mailbox.log.snapshot_every = 5;
    config.mailbox.log.gc_grace = Duration::ZERO;
    let user = user_id(b"0123456789abcdef", "alice");
    let a = Account::new(user.clone(), keys, shared.clone(), config);
    let inbox = a.mailbox("0a", 1).await.unwrap();
    let log_objects = || {
        store
            .keys()
            .into_iter()
            .filter(|k| k.contains("/mbox/0a/log/"))
            .count()
    };
    for i in 0..20 {
        inbox
            .append(&message(&format!("m{i:02}")), vec![], 0)
            .await
            .unwrap();
        inbox.sync().await.unwrap();
        // Snapshot names carry millisecond clocks: let each one be in the
        // past by the time a later one collects behind it.
        std::thread::sleep(Duration::from_millis(1));
    }
    // Right after the snapshot of op 20, at most the ops since the
    // previous snapshot remain: a snapshot written in the same millisecond
    // as the collection is not yet past a zero grace period.
    assert!(
        log_objects() <= 10,
        "{} op objects left of 20",
        log_objects()
    );
    let b = account(&shared, &keyring, "b", b"0123456789abcdef");
    let again = b.mailbox("0a", 1).await.unwrap();
    assert_eq!(subjects(&again).await, subjects(&inbox).await);
    assert_eq!(again.read(|s| s.exists()).await, 20);
}

/// Summaries leave memory at each snapshot for summary pages; every way of
/// reading them (this instance, another one opening from the snapshot,
/// COPY, a page lost to collection) still gives each message its own.
#[tokio::test]
async fn summaries_are_paged_out_at_snapshots_and_read_back() {
    let store = MemoryStore::new();
    let shared: SharedStore = Arc::new(store.clone());
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let keys = keyring.unlock_with_password(&Password::new("pw")).unwrap();
    let mut config = AccountConfig::new(InstanceId::new("a").unwrap(), records());
    config.mailbox.log.snapshot_every = 300; // at the sync below only
    // Store calls are counted below: no index pages written meanwhile.
    config.mailbox.prepare_indexes = false;
    let user = user_id(b"0123456789abcdef", "alice");
    let a = Account::new(user.clone(), keys, shared.clone(), config);
    let inbox = a.mailbox("0a", 1).await.unwrap();
    let expected: BTreeMap<String, usize> =
        (0..300).map(|i| (format!("note m{i:03}"), 1)).collect();
    for i in 0..300 {
        inbox
            .append(&message(&format!("m{i:03}")), vec![], 0)
            .await
            .unwrap();
    }
    let held = inbox.read(|s| s.held_summary_bytes()).await;
    assert!(held > 300 * 100, "{held} bytes held before the snapshot");
    inbox.sync().await.unwrap();
    // 300 messages: two pages, and nothing held any more.
    let pages = || {
        store
            .keys()
            .into_iter()
            .filter(|k| k.contains("/mbox/0a/side/"))
            .collect::<Vec<_>>()
    };
    assert_eq!(pages().len(), 2, "{:?}", pages());
    assert_eq!(inbox.read(|s| s.held_summary_bytes()).await, 0);
    assert_eq!(subjects(&inbox).await, expected);
    // A batch, in the order asked, unknown UIDs left out.
    let batch = inbox.summaries(&[300, 1, 999, 257]).await.unwrap();
    let got: Vec<(u32, Option<String>)> = batch
        .iter()
        .map(|(uid, s)| {
            let subject = s.envelope.subject.as_ref();
            (
                *uid,
                subject.map(|t| String::from_utf8_lossy(t.as_bytes()).into_owned()),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (300, Some("note m299".into())),
            (1, Some("note m000".into())),
            (257, Some("note m256".into()))
        ]
    );

    // Another instance opens from the snapshot: it holds no summary and
    // reads them from the pages.
    let b = account(&shared, &keyring, "b", b"0123456789abcdef");
    let other = b.mailbox("0a", 1).await.unwrap();
    assert_eq!(other.read(|s| s.held_summary_bytes()).await, 0);
    assert_eq!(subjects(&other).await, expected);

    // A scan reads the pages each time and leaves the cache alone; a
    // read of a few keeps its pages in the cache (one GET each, once).
    let fresh = account(&shared, &keyring, "e", b"0123456789abcdef");
    let scanned = fresh.mailbox("0a", 1).await.unwrap();
    let uids: Vec<u32> = (1..=300).collect();
    for _ in 0..2 {
        let before = store.calls();
        let all = scanned.scan_parts(&uids, Parts::ALL).await.unwrap();
        assert_eq!(all.len(), 300);
        assert_eq!(store.calls() - before, 2, "both pages read");
    }
    let before = store.calls();
    assert_eq!(scanned.summaries(&[1, 300]).await.unwrap().len(), 2);
    assert_eq!(store.calls() - before, 2, "not cached by the scans");
    let before = store.calls();
    assert_eq!(scanned.summaries(&[2, 299]).await.unwrap().len(), 2);
    assert_eq!(store.calls(), before, "cached by the read of a few");

    // COPY of paged-out messages carries their summaries into the target.
    let target = b.mailbox("0b", 2).await.unwrap();
    let (copied, placed) = other.copy_to(&[1, 2], &target).await.unwrap();
    assert_eq!((copied, placed.uids), (vec![1, 2], vec![Some(1), Some(2)]));
    assert!(target.read(|s| s.held_summary_bytes()).await > 0);
    let c = account(&shared, &keyring, "c", b"0123456789abcdef");
    let copy = c.mailbox("0b", 2).await.unwrap();
    assert_eq!(
        subjects(&copy).await.keys().collect::<Vec<_>>(),
        ["note m000", "note m001"]
    );

    // A page collected behind an instance's back: the summaries are
    // computed again from the bodies and held until the next snapshot.
    for page in pages() {
        store.delete(&page).await.unwrap();
    }
    let d = account(&shared, &keyring, "d", b"0123456789abcdef");
    let late = d.mailbox("0a", 1).await.unwrap();
    assert_eq!(subjects(&late).await, expected);
    assert!(late.read(|s| s.held_summary_bytes()).await > 300 * 100);
}

/// A summary page whose messages are all expunged is collected once no
/// kept snapshot refers to it; pages still in use stay.
#[tokio::test]
async fn summary_pages_of_expunged_messages_are_collected() {
    let store = MemoryStore::new();
    let shared: SharedStore = Arc::new(store.clone());
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let keys = keyring.unlock_with_password(&Password::new("pw")).unwrap();
    let mut config = AccountConfig::new(InstanceId::new("a").unwrap(), records());
    config.mailbox.log.snapshot_every = 3;
    config.mailbox.log.gc_grace = Duration::ZERO;
    let a = Account::new(user_id(b"0123456789abcdef", "alice"), keys, shared, config);
    let inbox = a.mailbox("0a", 1).await.unwrap();
    let pages = || {
        let mut keys: Vec<String> = store
            .keys()
            .into_iter()
            .filter(|k| k.contains("/mbox/0a/side/"))
            .collect();
        keys.sort();
        keys
    };
    for i in 0..3 {
        inbox
            .append(&message(&format!("old{i}")), vec![], 0)
            .await
            .unwrap();
    }
    inbox.sync().await.unwrap();
    let first = pages();
    assert_eq!(first.len(), 1);
    // Its index pages go with it.
    assert_eq!(inbox.write_index(Index::Text, &[1, 2, 3]).await.unwrap(), 1);
    assert_eq!(
        inbox.write_index(Index::Headers, &[1, 2, 3]).await.unwrap(),
        1
    );
    assert_eq!(
        inbox.write_index(Index::Headers, &[1, 2, 3]).await.unwrap(),
        0
    );
    let names = |suffixes: &[&str]| -> Vec<String> {
        suffixes
            .iter()
            .map(|s| format!("{}{s}", first[0]))
            .collect()
    };
    assert_eq!(pages(), names(&["", ".h1", ".t1"]));
    inbox.expunge(&[1, 2, 3]).await.unwrap();
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(2));
        for i in 0..3 {
            let n = format!("new{round}{i}");
            inbox.append(&message(&n), vec![], 0).await.unwrap();
        }
        inbox.sync().await.unwrap();
    }
    let now = pages();
    assert!(!now.iter().any(|k| k.starts_with(&first[0])), "{now:?}");
    assert_eq!(now.len(), 3, "one page per snapshot in use: {now:?}");
    assert_eq!(subjects(&inbox).await.len(), 9);
    // Text pages of pages in use stay.
    let uids: Vec<u32> = (4..=12).collect();
    assert_eq!(inbox.write_index(Index::Text, &uids).await.unwrap(), 3);
    std::thread::sleep(Duration::from_millis(2));
    for i in 0..3 {
        let n = format!("last{i}");
        inbox.append(&message(&n), vec![], 0).await.unwrap();
    }
    inbox.sync().await.unwrap();
    let texts: Vec<String> = pages().into_iter().filter(|k| k.ends_with(".t1")).collect();
    assert_eq!(
        texts,
        now.iter().map(|p| format!("{p}.t1")).collect::<Vec<_>>()
    );
    assert_eq!(inbox.read_index(Index::Text, &uids).await.unwrap().len(), 9);
}

/// A mailbox that grows a message at a time pages one summary at each
/// snapshot, and expunges thin out full pages: the small pages are
/// merged, so reading every summary stays a few GETs whatever the
/// mailbox's history, on this instance and on one opening it afresh. A
/// small page gone from the store when a merge reads it is left out of
/// the merge, and its messages keep their summaries.
#[tokio::test]
async fn small_summary_pages_are_merged() {
    use facteur::mailbox::state::{MERGE_PAGES, SMALL_PAGE};
    let store = MemoryStore::new();
    let shared: SharedStore = Arc::new(store.clone());
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let keys = keyring.unlock_with_password(&Password::new("pw")).unwrap();
    let mut config = AccountConfig::new(InstanceId::new("a").unwrap(), records());
    config.mailbox.log.snapshot_every = 1;
    let a = Account::new(
        user_id(b"0123456789abcdef", "alice"),
        keys,
        shared.clone(),
        config,
    );
    let inbox = a.mailbox("0a", 1).await.unwrap();
    let mut expected = BTreeMap::new();
    let mut most_small = 0;
    for i in 0..300 {
        let n = format!("m{i:03}");
        inbox.append(&message(&n), vec![], 0).await.unwrap();
        inbox.sync().await.unwrap();
        expected.insert(format!("note {n}"), 1);
        most_small = most_small.max(inbox.read(|s| s.small_pages().len()).await);
    }
    assert!(most_small < MERGE_PAGES, "{most_small} small pages at once");
    let pages = inbox.read(|s| s.summary_pages().len()).await;
    assert!(
        pages <= 300 / SMALL_PAGE + MERGE_PAGES,
        "{pages} pages for 300 messages"
    );
    assert_eq!(inbox.read(|s| s.held_summary_bytes()).await, 0);
    // Another instance reads every summary in a GET per page.
    let scan = |name: &'static str| {
        let (shared, keyring) = (shared.clone(), keyring.clone());
        async move {
            let keys = keyring.unlock_with_password(&Password::new("pw")).unwrap();
            let config = AccountConfig::new(InstanceId::new(name).unwrap(), records());
            let user = user_id(b"0123456789abcdef", "alice");
            let counted = Arc::new(SideGets {
                inner: shared,
                gets: Default::default(),
            });
            let fresh = Account::new(user, keys, counted.clone(), config);
            let mailbox = fresh.mailbox("0a", 1).await.unwrap();
            let uids: Vec<u32> = mailbox
                .read(|s| s.messages().map(|m| m.uid).collect())
                .await;
            let pages = mailbox.read(|s| s.summary_pages().len()).await;
            let before = counted.gets();
            let all = mailbox.scan_parts(&uids, Parts::ALL).await.unwrap();
            assert_eq!(all.len(), uids.len());
            let gets = counted.gets() - before;
            (subjects(&mailbox).await, pages, gets)
        }
    };
    let (seen, pages, gets) = scan("b").await;
    assert_eq!(seen, expected);
    assert!(gets <= pages as u64, "{gets} GETs for {pages} pages");

    // Expunge three messages of every four: every page is thinned out.
    let uids: Vec<u32> = inbox.read(|s| s.messages().map(|m| m.uid).collect()).await;
    let gone: Vec<u32> = uids.iter().copied().filter(|uid| uid % 4 != 0).collect();
    inbox.expunge(&gone).await.unwrap();
    for uid in &gone {
        let m = format!("m{:03}", uid - 1);
        expected.remove(&format!("note {m}"));
    }
    // One small page vanishes behind the instance's back: the merge
    // leaves it out, its messages are summarised again from their bodies
    // by whoever reads them.
    let first_small = inbox.read(|s| s.small_pages()[0].0.clone()).await;
    let key = store
        .keys()
        .into_iter()
        .find(|k| k.ends_with(&format!("/side/{first_small}")))
        .unwrap();
    store.delete(&key).await.unwrap();
    for i in 0..MERGE_PAGES {
        let n = format!("late{i}");
        inbox.append(&message(&n), vec![], 0).await.unwrap();
        inbox.sync().await.unwrap();
        expected.insert(format!("note {n}"), 1);
        let small = inbox.read(|s| s.small_pages().len()).await;
        assert!(small < MERGE_PAGES, "{small} small pages after expunges");
    }
    let (seen, pages, _) = scan("c").await;
    assert_eq!(seen, expected);
    assert!(
        pages <= expected.len() / SMALL_PAGE + MERGE_PAGES,
        "{pages} pages for {} messages",
        expected.len()
    );
    assert_eq!(subjects(&inbox).await, expected);
}

/// Two instances appending to one mailbox each page and merge summaries at
/// their own snapshots, and each collects behind the other's (no grace):
/// whatever page either one finds gone, every message keeps its summary
/// on both and on a third opening afresh.
#[tokio::test]
async fn instances_merging_pages_at_once_lose_no_summary() {
    use facteur::mailbox::state::{MERGE_PAGES, SMALL_PAGE};
    let store = MemoryStore::new();
    let shared: SharedStore = Arc::new(store.clone());
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let open = |name: &str| {
        let keys = keyring.unlock_with_password(&Password::new("pw")).unwrap();
        let mut config = AccountConfig::new(InstanceId::new(name).unwrap(), records());
        config.mailbox.log.snapshot_every = 1;
        config.mailbox.log.gc_grace = Duration::ZERO;
        let user = user_id(b"0123456789abcdef", "alice");
        Account::new(user, keys, shared.clone(), config)
    };
    let (a, b) = (open("a"), open("b"));
    let (ma, mb) = (
        a.mailbox("0a", 1).await.unwrap(),
        b.mailbox("0a", 1).await.unwrap(),
    );
    let mut expected = BTreeMap::new();
    for i in 0..150 {
        let n = format!("m{i:03}");
        let (writer, other) = if i % 3 == 0 { (&mb, &ma) } else { (&ma, &mb) };
        writer.append(&message(&n), vec![], 0).await.unwrap();
        let (x, y) = tokio::join!(writer.sync(), other.sync());
        x.unwrap();
        y.unwrap();
        expected.insert(format!("note {n}"), 1);
        if i % 50 == 49 {
            assert_eq!(subjects(&ma).await, expected);
            assert_eq!(subjects(&mb).await, expected);
        }
    }
    for m in [&ma, &mb] {
        let pages = m.read(|s| s.summary_pages().len()).await;
        assert!(pages <= 150 / SMALL_PAGE + MERGE_PAGES, "{pages} pages");
    }
    let c = open("c");
    assert_eq!(subjects(&c.mailbox("0a", 1).await.unwrap()).await, expected);
}

/// A store counting the GETs of summary pages and bodies: what reading
/// summaries costs, whatever else an account does meanwhile.
#[derive(Debug)]
struct SideGets {
    inner: SharedStore,
    gets: std::sync::atomic::AtomicU64,
}

impl SideGets {
    fn gets(&self) -> u64 {
        self.gets.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl ObjectStore for SideGets {
    async fn put(&self, key: &str, body: bytes::Bytes) -> Result<(), facteur::store::StoreError> {
        self.inner.put(key, body).await
    }
    async fn get(&self, key: &str) -> Result<bytes::Bytes, facteur::store::StoreError> {
        if key.contains("/side/") || key.contains("/blob/") {
            self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.get(key).await
    }
    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, facteur::store::StoreError> {
        self.inner.get_range(key, range).await
    }
    async fn delete(&self, key: &str) -> Result<(), facteur::store::StoreError> {
        self.inner.delete(key).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<(), facteur::store::StoreError> {
        self.inner.delete_many(keys).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<facteur::store::ListPage, facteur::store::StoreError> {
        self.inner.list(prefix, start_after, limit).await
    }
}

/// A store whose next `misses` GETs of a keyring answer "not found", as a
/// proxy in front of the store may during maintenance.
#[derive(Debug)]
struct KeyringHiccups {
    inner: SharedStore,
    misses: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl ObjectStore for KeyringHiccups {
    async fn put(&self, key: &str, body: bytes::Bytes) -> Result<(), facteur::store::StoreError> {
        self.inner.put(key, body).await
    }
    async fn get(&self, key: &str) -> Result<bytes::Bytes, facteur::store::StoreError> {
        use std::sync::atomic::Ordering;
        if key.ends_with("/keyring")
            && self
                .misses
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| m.checked_sub(1))
                .is_ok()
        {
            return Err(facteur::store::StoreError::NotFound(key.to_owned()));
        }
        self.inner.get(key).await
    }
    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, facteur::store::StoreError> {
        self.inner.get_range(key, range).await
    }
    async fn delete(&self, key: &str) -> Result<(), facteur::store::StoreError> {
        self.inner.delete(key).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<(), facteur::store::StoreError> {
        self.inner.delete_many(keys).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<facteur::store::ListPage, facteur::store::StoreError> {
        self.inner.list(prefix, start_after, limit).await
    }
}

/// One "not found" for a keyring that is there must not lock the account
/// (locking ends every session of the user on this instance); a keyring
/// really gone, found missing twice, does.
#[tokio::test]
async fn a_single_missing_answer_does_not_lock_the_account_but_a_deleted_keyring_does() {
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let memory: SharedStore = Arc::new(MemoryStore::new());
    store_keyring(&memory, &keyring, b"0123456789abcdef").await;
    let flaky = Arc::new(KeyringHiccups {
        inner: memory.clone(),
        misses: std::sync::atomic::AtomicUsize::new(1),
    });
    let shared: SharedStore = flaky.clone();
    let a = account(&shared, &keyring, "a", b"0123456789abcdef");
    a.check_keyring().await.unwrap();
    assert!(!a.is_locked(), "one stray 404 locked the account");
    assert_eq!(flaky.misses.load(std::sync::atomic::Ordering::SeqCst), 0);

    let key = facteur::store::layout::keyring(&user_id(b"0123456789abcdef", "alice"));
    memory.delete(&key).await.unwrap();
    assert!(a.check_keyring().await.is_err());
    assert!(a.is_locked(), "a deleted keyring did not lock the account");
}

/// Two opens of one mailbox never share a change-counter value: a figure
/// kept with the counter (QUOTA's usage book) from one open is never taken
/// as current for another open whose state may differ.
#[tokio::test]
async fn separate_opens_of_a_mailbox_start_their_change_counters_apart() {
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let shared: SharedStore = Arc::new(MemoryStore::new());
    let a = account(&shared, &keyring, "a", b"0123456789abcdef");
    let b = account(&shared, &keyring, "a", b"0123456789abcdef");
    let one = a.mailbox("0a", 1).await.unwrap();
    let other = b.mailbox("0a", 1).await.unwrap();
    assert_ne!(*one.watch().borrow(), *other.watch().borrow());
}

/// Once the account locks (its keyring deleted: the user left), no index
/// page is written for its mailboxes any more, neither by the background
/// preparation after a snapshot nor by a search: nothing lands under a
/// prefix that may soon be a newcomer's.
#[tokio::test]
async fn a_locked_account_writes_no_index_page() {
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let memory = MemoryStore::new();
    let shared: SharedStore = Arc::new(memory.clone());
    store_keyring(&shared, &keyring, b"0123456789abcdef").await;
    let keys = keyring.unlock_with_password(&Password::new("pw")).unwrap();
    let mut config = AccountConfig::new(InstanceId::new("a").unwrap(), records());
    config.mailbox.log.snapshot_every = 300;
    let a = Account::new(
        user_id(b"0123456789abcdef", "alice"),
        keys,
        shared.clone(),
        config,
    );
    let inbox = a.mailbox("0a", 1).await.unwrap();
    for i in 0..300 {
        inbox
            .append(&message(&format!("m{i:03}")), vec![], 0)
            .await
            .unwrap();
    }
    let key = facteur::store::layout::keyring(&user_id(b"0123456789abcdef", "alice"));
    memory.delete(&key).await.unwrap();
    assert!(a.check_keyring().await.is_err());
    assert!(a.is_locked());
    let index_pages = || {
        memory
            .keys()
            .into_iter()
            .filter(|k| k.contains("/side/") && k.contains('.'))
            .collect::<Vec<_>>()
    };
    // The snapshot pages out 256 + 44 summaries; the full page is not
    // prepared.
    inbox.sync().await.unwrap();
    let uids: Vec<u32> = (1..=300).collect();
    assert!(matches!(
        inbox.write_index(Index::Text, &uids).await,
        Err(facteur::account::AccountError::Locked)
    ));
    // The background work would have started at the sync: give it every
    // chance (it reads 256 bodies) before looking.
    for _ in 0..50 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        memory
            .keys()
            .iter()
            .any(|k| k.contains("/side/") && !k.contains('.')),
        "the snapshot paged summaries out"
    );
    assert_eq!(index_pages(), Vec::<String>::new());
}
