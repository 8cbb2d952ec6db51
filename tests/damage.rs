//! A store that loses or damages objects (bit rot on a cheap disk, or
//! whoever can write the bucket): one lost op hides nothing but what it
//! did, UIDs are never handed out twice, and the damage is reported.
//! See doc/consistency.md, "Damage".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use facteur::account::{Account, AccountConfig, Mailbox};
use facteur::crypto::{KdfParams, Keyring, Password, user_id};
use facteur::log::InstanceId;
use facteur::mailbox::MessageId;
use facteur::store::{MemoryStore, ObjectStore, SharedStore};

const SECRET: &[u8] = b"0123456789abcdef";
const BOX: &str = "0123456789abcdef0123456789abcdef";

/// An account of "alice" on instance `instance`; `lost_after` is how long
/// a missing parent is waited for (the default is five minutes).
fn account(
    store: &SharedStore,
    keyring: &Keyring,
    instance: &str,
    lost_after: Option<Duration>,
) -> Arc<Account> {
    let keys = keyring.unlock_with_password(&Password::new("pw")).unwrap();
    let mut config = AccountConfig::new(
        InstanceId::new(instance).unwrap(),
        facteur::crypto::RecordAuth::from_cluster_secret(b"0123456789abcdef"),
    );
    config.mailbox.fix_up_jitter = Duration::ZERO;
    if let Some(lost_after) = lost_after {
        config.mailbox.log.lost_after = lost_after;
    }
    Account::new(user_id(SECRET, "alice"), keys, store.clone(), config)
}

fn message(n: usize) -> Vec<u8> {
    format!("From: bob@example.org\r\nSubject: note {n}\r\n\r\nbody {n}\r\n").into_bytes()
}

/// A mailbox with six messages (UIDs 1 to 6), written by instance "a".
async fn six_messages() -> (MemoryStore, SharedStore, Keyring, Vec<String>) {
    let store = MemoryStore::new();
    let shared: SharedStore = Arc::new(store.clone());
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let a = account(&shared, &keyring, "a", None);
    let mailbox = a.mailbox(BOX, 1).await.unwrap();
    for n in 1..=6 {
        let placed = mailbox.append(&message(n), vec![], 0).await.unwrap();
        assert_eq!(placed.uids, [Some(n as u32)]);
    }
    let ops = op_objects(&store, BOX);
    assert_eq!(ops.len(), 6);
    (store, shared, keyring, ops)
}

/// The op objects of a mailbox, oldest first.
fn op_objects(store: &MemoryStore, mailbox: &str) -> Vec<String> {
    let mut ops: Vec<String> = store
        .keys()
        .into_iter()
        .filter(|k| k.contains(&format!("/mbox/{mailbox}/log/")))
        .collect();
    ops.sort();
    ops
}

/// UID → message id of every shown message.
async fn shown(mailbox: &Mailbox) -> BTreeMap<u32, MessageId> {
    mailbox
        .read(|s| s.messages().map(|m| (m.uid, m.id)).collect())
        .await
}

/// Checks that no UID of `now` names another message than it did in
/// `before`, and records `now` in `before`.
fn no_uid_reused(before: &mut BTreeMap<u32, MessageId>, now: &BTreeMap<u32, MessageId>) {
    for (uid, id) in now {
        if let Some(old) = before.insert(*uid, *id) {
            assert_eq!(old, *id, "UID {uid} named another message before");
        }
    }
}

/// One op object deleted from the middle of the log: a fresh instance
/// shows every later message with its UID, UIDNEXT does not go back, the
/// next APPEND gets a new UID, and when the op comes back its message
/// gets a new UID too, above every UIDNEXT shown. (Before: the later ops
/// waited forever, UIDNEXT went from 7 to 2 and the next APPEND got UID 2
/// again.)
#[tokio::test]
async fn a_deleted_op_hides_only_its_own_message_and_no_uid_is_reused() {
    let (store, shared, keyring, ops) = six_messages().await;
    let a = account(&shared, &keyring, "a", None);
    let mut seen = shown(&a.mailbox(BOX, 1).await.unwrap()).await;
    let second = store.get(&ops[1]).await.unwrap();
    store.delete(&ops[1]).await.unwrap();

    let b = account(&shared, &keyring, "b", Some(Duration::ZERO));
    let mailbox = b.mailbox(BOX, 1).await.unwrap();
    let now = shown(&mailbox).await;
    assert_eq!(now.keys().copied().collect::<Vec<_>>(), [1, 3, 4, 5, 6]);
    no_uid_reused(&mut seen, &now);
    assert_eq!(mailbox.read(|s| s.uid_next()).await, 7);
    let damage = mailbox.damage().await;
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert!(damage[0].reason.contains("missing"), "{damage:?}");

    let placed = mailbox.append(&message(7), vec![], 0).await.unwrap();
    assert_eq!(placed.uids, [Some(7)]);
    let uid_next = mailbox.read(|s| s.uid_next()).await;

    // The op comes back (a restored backup, a bucket writer undoing):
    // its message is new to every client, so it must come above UIDNEXT.
    store.put(&ops[1], second).await.unwrap();
    mailbox.sync().await.unwrap();
    mailbox.sync().await.unwrap();
    let now = shown(&mailbox).await;
    no_uid_reused(&mut seen, &now);
    assert_eq!(now.len(), 7, "{now:?}");
    let back = now.keys().max().copied().unwrap();
    assert!(
        back >= uid_next,
        "UID {back} below UIDNEXT {uid_next} shown"
    );
    assert!(!now.contains_key(&2), "UID 2 not shown again");
}

/// With the default grace, a fresh instance that finds a parent missing
/// shows what it has and waits; the ops written long enough ago are
/// applied.
#[tokio::test]
async fn a_missing_op_is_given_up_only_after_the_grace() {
    let (store, shared, keyring, ops) = six_messages().await;
    store.delete(&ops[1]).await.unwrap();
    let b = account(&shared, &keyring, "b", Some(Duration::from_secs(3600)));
    let waiting = b.mailbox(BOX, 1).await.unwrap();
    assert_eq!(waiting.read(|s| s.exists()).await, 1);
    assert!(waiting.damage().await.is_empty(), "not known lost yet");
    let c = account(&shared, &keyring, "c", Some(Duration::ZERO));
    let given_up = c.mailbox(BOX, 1).await.unwrap();
    assert_eq!(given_up.read(|s| s.exists()).await, 5);
}

/// An op object replaced by a copy of an older one does not open (its
/// name is bound to its bytes): the op is lost at once, the others are
/// shown, and its UID is not handed out again.
#[tokio::test]
async fn an_op_replaced_by_an_older_copy_is_lost_alone() {
    let (store, shared, keyring, ops) = six_messages().await;
    let first = store.get(&ops[0]).await.unwrap();
    store.put(&ops[2], first).await.unwrap();

    let b = account(&shared, &keyring, "b", None);
    let mailbox = b.mailbox(BOX, 1).await.unwrap();
    let now = shown(&mailbox).await;
    assert_eq!(now.keys().copied().collect::<Vec<_>>(), [1, 2, 4, 5, 6]);
    assert!(mailbox.read(|s| s.uid_next()).await >= 7);
    let placed = mailbox.append(&message(7), vec![], 0).await.unwrap();
    assert!(placed.uids[0].is_some_and(|u| u >= 7), "{placed:?}");
    assert!(!mailbox.damage().await.is_empty());
}

/// One flipped byte in the newest op (bit rot): its message is lost, but
/// its UID is never given to another message, and UIDNEXT does not go
/// back. (Before: UIDNEXT went from 7 to 6 and the next APPEND got 6.)
#[tokio::test]
async fn the_newest_op_rotted_does_not_roll_uids_back() {
    let (store, shared, keyring, ops) = six_messages().await;
    let mut bytes = store.get(&ops[5]).await.unwrap().to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    store.put(&ops[5], Bytes::from(bytes)).await.unwrap();

    let b = account(&shared, &keyring, "b", None);
    let mailbox = b.mailbox(BOX, 1).await.unwrap();
    assert_eq!(mailbox.read(|s| s.exists()).await, 5);
    assert!(mailbox.read(|s| s.uid_next()).await >= 7);
    let placed = mailbox.append(&message(7), vec![], 0).await.unwrap();
    assert!(placed.uids[0].is_some_and(|u| u >= 7), "{placed:?}");

    // Another instance opening later shows the same messages, and holds
    // back at least as much.
    let c = account(&shared, &keyring, "c", None);
    let again = c.mailbox(BOX, 1).await.unwrap();
    assert_eq!(shown(&again).await, shown(&mailbox).await);
    assert!(again.read(|s| s.uid_next()).await >= mailbox.read(|s| s.uid_next()).await);
}

/// One flipped byte in the mailbox list's first op (the one that created
/// the default mailboxes): the folders the user created later are still
/// listed. (Before: every op after it waited for it, and only INBOX was
/// left.)
#[tokio::test]
async fn a_damaged_list_op_hides_only_what_it_did() {
    let store = MemoryStore::new();
    let shared: SharedStore = Arc::new(store.clone());
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let a = account(&shared, &keyring, "a", None);
    let folders = a.folders().await.unwrap();
    for name in ["Work", "Play", "Later"] {
        folders.create(name, None).await.unwrap();
    }
    let mut ops: Vec<String> = store
        .keys()
        .into_iter()
        .filter(|k| k.contains("/list/log/"))
        .collect();
    ops.sort();
    assert_eq!(ops.len(), 4);
    // The defaults, then "Play".
    for op in [&ops[0], &ops[2]] {
        let mut bytes = store.get(op).await.unwrap().to_vec();
        bytes[20] ^= 0x80;
        store.put(op, Bytes::from(bytes)).await.unwrap();
    }

    let b = account(&shared, &keyring, "b", None);
    let names: Vec<String> = b
        .folders()
        .await
        .unwrap()
        .all()
        .await
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(names, ["INBOX", "Later", "Work"]);
    assert_eq!(b.folders().await.unwrap().damage().await.len(), 2);
}
