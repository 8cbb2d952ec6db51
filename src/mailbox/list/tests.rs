//! Tests of the mailbox list through the log: nodes are replicas that write
//! ops and exchange them by hand, so each conflict test spells out who saw
//! what; the proptest at the end runs random histories of three writers.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::log::{Envelope, InstanceId, Replica};

#[derive(Clone, Debug)]
struct Op {
    id: OpId,
    envelope: Envelope<ListOp>,
}

struct Node {
    instance: InstanceId,
    replica: Replica<MailboxList>,
    wall_ms: u64,
    rng: StdRng,
}

impl Node {
    fn new(name: &str) -> Node {
        Node {
            instance: InstanceId::new(name).unwrap(),
            replica: Replica::new(MailboxList::new()),
            wall_ms: 1_700_000_000_000,
            rng: StdRng::seed_from_u64(name.len() as u64 * 7 + name.as_bytes()[0] as u64),
        }
    }

    /// Writes an op from what this node has seen, and applies it (its PUT
    /// was acknowledged).
    fn write(&mut self, op: ListOp) -> Op {
        self.wall_ms += 10;
        let envelope = self
            .replica
            .prepare(op, self.instance.clone(), self.wall_ms);
        let (id, _) = envelope.encode().unwrap();
        let op = Op { id, envelope };
        self.see(&op);
        op
    }

    fn see(&mut self, op: &Op) {
        self.replica.insert(op.id, op.envelope.clone());
    }

    fn list(&self) -> &MailboxList {
        self.replica.state()
    }

    fn create(&mut self, name: &str) -> (Op, MailboxId) {
        let list = self.replica.state();
        let (op, id) = list.plan_create(name, None, &mut self.rng).unwrap();
        (self.write(op), id)
    }

    fn rename(&mut self, from: &str, to: &str) -> (Op, RenamePlan) {
        let list = self.replica.state();
        let plan = list.plan_rename(from, to, &mut self.rng).unwrap();
        (self.write(plan.op.clone()), plan)
    }

    fn delete(&mut self, name: &str) -> Op {
        let op = self.list().plan_delete(name, 0).unwrap();
        self.write(op)
    }

    fn id(&self, name: &str) -> MailboxId {
        self.list().by_name(name).unwrap().id
    }

    fn names(&self) -> Vec<&str> {
        self.list().names().collect()
    }
}

/// Two nodes that both saw the account defaults.
fn two_nodes() -> (Node, Node) {
    let (mut a, mut b) = (Node::new("a"), Node::new("b"));
    let defaults = a.write(MailboxList::new_account_defaults());
    b.see(&defaults);
    (a, b)
}

/// Two nodes that both saw the defaults and `name` created by the first.
fn nodes_with(name: &str) -> (Node, Node) {
    let (mut a, mut b) = two_nodes();
    let (op, _) = a.create(name);
    b.see(&op);
    (a, b)
}

/// Sets both nodes' wall clocks to the same reading, so that their next
/// ops tie on the clock and the instance id decides: `a` sorts first.
fn same_clock(a: &mut Node, b: &mut Node) {
    let now = a.wall_ms.max(b.wall_ms);
    a.wall_ms = now;
    b.wall_ms = now;
}

/// Both nodes see each other's ops; they must then agree.
fn exchange(a: &mut Node, b: &mut Node, from_a: &[&Op], from_b: &[&Op]) {
    for op in from_a {
        b.see(op);
    }
    for op in from_b {
        a.see(op);
    }
    assert_eq!(a.list(), b.list(), "same op set, same list");
}

#[test]
fn an_empty_list_has_inbox_only() {
    let list = MailboxList::new();
    assert_eq!(list.names().collect::<Vec<_>>(), ["INBOX"]);
    for spelling in ["INBOX", "inbox", "InBox"] {
        assert_eq!(list.by_name(spelling).unwrap().id, MailboxId::INBOX);
    }
    assert_eq!(list.inbox().uid_validity, 1);
    assert!(!list.is_empty());
}

#[test]
fn new_accounts_get_the_default_mailboxes() {
    let (a, _) = two_nodes();
    let list = a.list();
    assert_eq!(
        a.names(),
        ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]
    );
    assert_eq!(list.subscriptions().count(), 6);
    for (u, name) in [
        (SpecialUse::Drafts, "Drafts"),
        (SpecialUse::Sent, "Sent"),
        (SpecialUse::Trash, "Trash"),
        (SpecialUse::Junk, "Junk"),
        (SpecialUse::Archive, "Archive"),
    ] {
        assert_eq!(list.special_use(u).unwrap().name, name);
    }
    assert!(list.special_use(SpecialUse::All).is_none());
    // Every mailbox has its own nonzero UIDVALIDITY, near the clock.
    let uvs: BTreeSet<u32> = list.mailboxes().map(|m| m.uid_validity).collect();
    assert_eq!(uvs.len(), 6);
    assert!(uvs.iter().all(|uv| *uv >= 1_700_000_000));
    assert_eq!(list.inbox().uid_validity, *uvs.first().unwrap());
}

#[test]
fn concurrent_account_initialisation_makes_one_set_of_defaults() {
    let (mut a, mut b) = (Node::new("a"), Node::new("b"));
    let da = a.write(MailboxList::new_account_defaults());
    let db = b.write(MailboxList::new_account_defaults());
    exchange(&mut a, &mut b, &[&da], &[&db]);
    assert_eq!(a.list().len(), 6);
}

#[test]
fn create_makes_missing_superiors_and_refuses_existing_names() {
    let (mut a, _) = two_nodes();
    a.create("Work/2024/Q1");
    assert!(a.list().exists("Work") && a.list().exists("Work/2024"));
    assert_eq!(a.list().children("Work"), ["Work/2024"]);
    assert!(a.list().has_children("Work"));
    assert!(!a.list().has_children("Work/2024/Q1"));
    assert_eq!(a.list().inferiors("Work").count(), 2);
    let mut rng = StdRng::seed_from_u64(1);
    for taken in ["Work", "inbox", "Work/2024"] {
        let err = a.list().plan_create(taken, None, &mut rng).unwrap_err();
        assert!(matches!(err, ListError::AlreadyExists(_)), "{taken}");
    }
    for bad in ["", "a//b", "a/", "x\u{1}"] {
        let err = a.list().plan_create(bad, None, &mut rng).unwrap_err();
        assert!(matches!(err, ListError::BadName(_)), "{bad:?}");
    }
    // INBOX may have inferiors, spelt in any case.
    a.create("inbox/Lists");
    assert_eq!(a.list().children("INBOX"), ["INBOX/Lists"]);
}

#[test]
fn rename_moves_inferiors_and_subscriptions() {
    let (mut a, _) = two_nodes();
    a.create("Work/Old");
    let id = a.id("Work");
    let child = a.id("Work/Old");
    let uv = a.list().by_id(id).unwrap().uid_validity;
    a.write(a.list().plan_subscribe("Work/Old").unwrap());
    a.rename("Work", "Archive/Job");
    assert_eq!(a.list().by_id(id).unwrap().name, "Archive/Job");
    assert_eq!(a.list().by_id(child).unwrap().name, "Archive/Job/Old");
    assert_eq!(
        a.list().by_id(id).unwrap().uid_validity,
        uv,
        "a rename keeps UIDVALIDITY"
    );
    assert!(!a.list().exists("Work"));
    assert!(a.list().is_subscribed("Archive/Job/Old"));
    assert!(!a.list().is_subscribed("Work/Old"));

    let mut rng = StdRng::seed_from_u64(2);
    let list = a.list();
    assert!(matches!(
        list.plan_rename("Archive", "Archive/Job/Deeper", &mut rng),
        Err(ListError::RenameUnderItself(_))
    ));
    assert!(matches!(
        list.plan_rename("Archive/Job", "Sent", &mut rng),
        Err(ListError::AlreadyExists(_))
    ));
    assert!(matches!(
        list.plan_rename("Nope", "Other", &mut rng),
        Err(ListError::NoSuchMailbox(_))
    ));
    // A superior of the new name is created.
    a.rename("Archive/Job/Old", "New/Place");
    assert!(a.list().exists("New"));
    assert_eq!(a.list().by_id(child).unwrap().name, "New/Place");
}

#[test]
fn renaming_inbox_creates_a_mailbox_for_its_messages() {
    let (mut a, _) = two_nodes();
    a.create("INBOX/Sub");
    let before = a.list().inbox().uid_validity;
    let (_, plan) = a.rename("inbox", "Old Mail");
    let to = plan
        .inbox_messages_to
        .expect("the caller moves the messages");
    assert_eq!(a.id("Old Mail"), to);
    assert_ne!(to, MailboxId::INBOX);
    assert_eq!(a.list().inbox().uid_validity, before);
    assert_eq!(a.id("INBOX"), MailboxId::INBOX);
    assert!(a.list().exists("INBOX/Sub"), "inferiors of INBOX stay");
}

#[test]
fn inbox_cannot_be_deleted_and_bad_ops_are_ignored() {
    let (mut a, _) = two_nodes();
    assert!(matches!(
        a.list().plan_delete("Inbox", 0),
        Err(ListError::InboxUndeletable)
    ));
    let before = a.list().clone();
    let junk = MailboxId::from_raw([9; 16]);
    a.write(ListOp {
        changes: vec![
            Change::Delete {
                id: MailboxId::INBOX,
                seen_modseq: 0,
            },
            Change::Rename {
                id: MailboxId::INBOX,
                name: "Elsewhere".into(),
            },
            Change::Create {
                id: junk,
                name: "inbox".into(),
                special_use: None,
            },
            Change::Create {
                id: junk,
                name: "a//b".into(),
                special_use: None,
            },
            Change::Rename {
                id: a.id("Sent"),
                name: "INBOX".into(),
            },
            Change::Rename {
                id: MailboxId::from_raw([7; 16]),
                name: "Ghost".into(),
            },
            Change::Subscribe {
                name: "/bad".into(),
            },
        ],
    });
    assert_eq!(
        a.list().names().collect::<Vec<_>>(),
        before.names().collect::<Vec<_>>()
    );
    assert_eq!(a.list().subscriptions().count(), 6);
}

#[test]
fn delete_hides_and_recreate_gets_a_higher_uidvalidity() {
    let (mut a, _) = two_nodes();
    a.create("Project/Notes");
    let old = a.list().by_name("Project").unwrap().uid_validity;
    let old_id = a.id("Project");
    a.write(a.list().plan_delete("Project", 17).unwrap());
    assert!(!a.list().exists("Project"));
    assert!(a.list().exists("Project/Notes"), "inferiors stay");
    let deleted = a.list().deleted();
    assert_eq!(deleted.len(), 1);
    assert_eq!(
        (deleted[0].id, deleted[0].name, deleted[0].seen_modseq),
        (old_id, "Project", 17)
    );
    // Recreated in the same millisecond range: still strictly higher.
    a.create("Project");
    let new = a.list().by_name("Project").unwrap();
    assert_ne!(new.id, old_id);
    assert!(new.uid_validity > old, "{} > {old}", new.uid_validity);
}

#[test]
fn a_restored_mailbox_does_not_take_a_name_from_a_newer_one() {
    let (mut a, _) = two_nodes();
    let (_, old) = a.create("Box");
    a.delete("Box");
    let (_, new) = a.create("Box");
    a.write(a.list().plan_restore(old).unwrap());
    assert_eq!(a.list().by_id(new).unwrap().name, "Box");
    assert_eq!(a.list().by_id(old).unwrap().name, "Box (2)");
    assert!(a.list().deleted().is_empty());
    assert!(matches!(
        a.list().plan_restore(old),
        Err(ListError::NotDeleted(_))
    ));
}

#[test]
fn concurrent_creates_of_one_name_keep_both_mailboxes() {
    let (mut a, mut b) = two_nodes();
    same_clock(&mut a, &mut b);
    let (op_a, id_a) = a.create("Shared");
    let (op_b, id_b) = b.create("Shared");
    exchange(&mut a, &mut b, &[&op_a], &[&op_b]);
    // a wrote first (same wall clock, lower instance id): a keeps the name.
    let list = a.list();
    assert_eq!(list.by_name("Shared").unwrap().id, id_a);
    let second = list.by_id(id_b).unwrap();
    assert_eq!((second.name, second.wanted), ("Shared (2)", "Shared"));
}

#[test]
fn concurrent_creates_with_superiors_keep_each_tree_together() {
    let (mut a, mut b) = two_nodes();
    same_clock(&mut a, &mut b);
    let (op_a, leaf_a) = a.create("P/Q");
    let (op_b, leaf_b) = b.create("P/Q");
    exchange(&mut a, &mut b, &[&op_a], &[&op_b]);
    let list = a.list();
    assert_eq!(list.by_id(leaf_a).unwrap().name, "P/Q");
    assert_eq!(list.by_id(leaf_b).unwrap().name, "P (2)/Q");
    assert_eq!(list.children("P (2)"), ["P (2)/Q"]);
}

#[test]
fn rename_racing_a_create_of_the_target() {
    // Both nodes saw Src/Child.
    let (mut a, mut b) = nodes_with("Src/Child");
    let src = a.id("Src");
    let child = a.id("Src/Child");
    // a creates Target; b, not having seen it, renames Src to Target.
    same_clock(&mut a, &mut b);
    let (op_a, target) = a.create("Target");
    let (op_b, _) = b.rename("Src", "Target");
    exchange(&mut a, &mut b, &[&op_a], &[&op_b]);
    let list = a.list();
    // a's create came first: it keeps Target; the renamed tree moves as one.
    assert_eq!(list.by_id(target).unwrap().name, "Target");
    assert_eq!(list.by_id(src).unwrap().name, "Target (2)");
    assert_eq!(list.by_id(child).unwrap().name, "Target (2)/Child");
    assert!(!list.exists("Src"));

    // The other way round: the rename first, then the create.
    let (mut a, mut b) = nodes_with("Src/Child");
    let src = a.id("Src");
    same_clock(&mut a, &mut b);
    let (op_a, _) = a.rename("Src", "Target");
    let (op_b, target) = b.create("Target");
    exchange(&mut a, &mut b, &[&op_a], &[&op_b]);
    let list = a.list();
    assert_eq!(list.by_id(src).unwrap().name, "Target");
    assert_eq!(list.by_id(target).unwrap().name, "Target (2)");
    assert_eq!(list.children("Target"), ["Target/Child"]);
}

#[test]
fn concurrent_renames_of_one_mailbox_agree_on_the_last() {
    let (mut a, mut b) = two_nodes();
    let (o, _) = a.create("M/Kid");
    b.see(&o);
    let (m, kid) = (a.id("M"), a.id("M/Kid"));
    same_clock(&mut a, &mut b);
    let (op_a, _) = a.rename("M", "FromA");
    let (op_b, _) = b.rename("M", "FromB");
    exchange(&mut a, &mut b, &[&op_a], &[&op_b]);
    // Same wall clock; b's instance id sorts after a's: b's rename is last.
    let list = a.list();
    assert_eq!(list.by_id(m).unwrap().name, "FromB");
    assert_eq!(list.by_id(kid).unwrap().name, "FromB/Kid");
    assert!(!list.exists("FromA"));
}

#[test]
fn crossed_renames_swap_without_losing_a_mailbox() {
    let (mut a, mut b) = two_nodes();
    let (o1, x) = a.create("X");
    let (o2, y) = a.create("Y");
    b.see(&o1);
    b.see(&o2);
    // a renames X to Z, b renames Y to Z.
    same_clock(&mut a, &mut b);
    let (op_a, _) = a.rename("X", "Z");
    let (op_b, _) = b.rename("Y", "Z");
    exchange(&mut a, &mut b, &[&op_a], &[&op_b]);
    let list = a.list();
    assert_eq!(list.by_id(x).unwrap().name, "Z");
    assert_eq!(list.by_id(y).unwrap().name, "Z (2)");
    assert_eq!(list.len(), 8);
}

#[test]
fn a_suffix_never_takes_a_real_name() {
    let (mut a, mut b) = two_nodes();
    let (o, real) = a.create("N (2)");
    b.see(&o);
    same_clock(&mut a, &mut b);
    let (op_a, first) = a.create("N");
    let (op_b, second) = b.create("N");
    exchange(&mut a, &mut b, &[&op_a], &[&op_b]);
    let list = a.list();
    assert_eq!(list.by_id(real).unwrap().name, "N (2)");
    assert_eq!(list.by_id(first).unwrap().name, "N");
    assert_eq!(list.by_id(second).unwrap().name, "N (3)");
}

#[test]
fn delete_racing_a_rename_deletes_and_stays_recoverable() {
    let (mut a, mut b) = two_nodes();
    let (o, id) = a.create("Doomed");
    b.see(&o);
    same_clock(&mut a, &mut b);
    let op_a = a.write(a.list().plan_delete("Doomed", 3).unwrap());
    let (op_b, _) = b.rename("Doomed", "Saved");
    exchange(&mut a, &mut b, &[&op_a], &[&op_b]);
    assert!(!a.list().exists("Doomed") && !a.list().exists("Saved"));
    let deleted = a.list().deleted();
    assert_eq!((deleted[0].id, deleted[0].seen_modseq), (id, 3));
    // The account layer found mail appended concurrently: it restores.
    a.write(a.list().plan_restore(id).unwrap());
    assert_eq!(a.list().by_id(id).unwrap().name, "Saved");
}

#[test]
fn concurrent_special_use_resolves_to_one_mailbox() {
    let (mut a, mut b) = nodes_with("Sent Items");
    let (o, _) = a.create("Outbox");
    b.see(&o);
    let sent = |list: &MailboxList| {
        list.special_use(SpecialUse::Sent)
            .map(|m| m.name.to_owned())
    };
    // Setting moves the attribute.
    let op = a
        .list()
        .plan_set_special_use("Sent Items", Some(SpecialUse::Sent))
        .unwrap();
    assert_eq!(op.changes.len(), 2, "clears it from Sent");
    same_clock(&mut a, &mut b);
    let op_a = a.write(op);
    let op_b = b.write(
        b.list()
            .plan_set_special_use("Outbox", Some(SpecialUse::Sent))
            .unwrap(),
    );
    assert_eq!(sent(a.list()).as_deref(), Some("Sent Items"));
    assert_eq!(sent(b.list()).as_deref(), Some("Outbox"));
    exchange(&mut a, &mut b, &[&op_a], &[&op_b]);
    // Both hold it now; the one set first (a's op sorts first) is used.
    assert_eq!(sent(a.list()).as_deref(), Some("Sent Items"));
    assert_eq!(
        a.list().by_name("Outbox").unwrap().special_use,
        Some(SpecialUse::Sent)
    );
    assert_eq!(a.list().by_name("Sent").unwrap().special_use, None);
    let cleared = a.write(a.list().plan_set_special_use("Sent Items", None).unwrap());
    b.see(&cleared);
    assert_eq!(sent(b.list()).as_deref(), Some("Outbox"));
}

#[test]
fn subscriptions_are_per_name_and_last_writer_wins() {
    let (mut a, mut b) = two_nodes();
    let op_0 = a.write(a.list().plan_subscribe("Does/Not/Exist").unwrap());
    assert!(a.list().is_subscribed("Does/Not/Exist"));
    same_clock(&mut a, &mut b);
    let op_a = a.write(a.list().plan_unsubscribe("Sent").unwrap());
    let op_b = b.write(b.list().plan_subscribe("Sent").unwrap());
    exchange(&mut a, &mut b, &[&op_0, &op_a], &[&op_b]);
    assert!(a.list().is_subscribed("Sent"), "b's op sorts last");
    assert!(a.list().is_subscribed("inbox"));
}

#[test]
fn ids_and_special_uses_round_trip() {
    let mut rng = StdRng::seed_from_u64(3);
    let id = MailboxId::random(&mut rng);
    assert_eq!(id.to_hex().parse::<MailboxId>().unwrap(), id);
    assert!(!id.is_reserved());
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(serde_json::from_str::<MailboxId>(&json).unwrap(), id);
    for bad in ["", "00", &id.to_hex().to_uppercase()] {
        assert!(bad.parse::<MailboxId>().is_err(), "{bad:?}");
    }
    for u in SpecialUse::EVERY {
        assert_eq!(SpecialUse::from_attribute(u.attribute()), Some(u));
        let lower = u.attribute().to_lowercase();
        assert_eq!(SpecialUse::from_attribute(&lower), Some(u));
    }
    assert_eq!(SpecialUse::from_attribute("\\Important"), None);
}

#[test]
fn snapshots_round_trip() {
    let (mut a, mut b) = two_nodes();
    same_clock(&mut a, &mut b);
    let (op_a, _) = a.create("Dup/Kid");
    let (op_b, _) = b.create("Dup");
    exchange(&mut a, &mut b, &[&op_a], &[&op_b]);
    a.delete("Drafts");
    let json = serde_json::to_string(&a.replica).unwrap();
    let restored: Replica<MailboxList> = serde_json::from_str(&json).unwrap();
    assert_eq!(restored.state(), a.list());
}

// ---- Random histories ----

/// What a writer does from its current view.
#[derive(Clone, Debug)]
enum Action {
    Create(usize),
    Rename(usize, usize),
    Delete(usize),
    Restore(usize),
    Subscribe(usize, bool),
    SpecialUse(usize, Option<SpecialUse>),
    /// Receive one op of the common pool (by index, modulo its length).
    Receive(usize),
}

const POOL: [&str; 8] = ["a", "b", "a/b", "a/c", "b/a", "INBOX/x", "c (2)", "c"];

fn action() -> impl Strategy<Value = Action> {
    let name = 0..POOL.len();
    prop_oneof![
        3 => name.clone().prop_map(Action::Create),
        2 => (0..16usize, name.clone()).prop_map(|(f, t)| Action::Rename(f, t)),
        2 => (0..16usize).prop_map(Action::Delete),
        1 => (0..16usize).prop_map(Action::Restore),
        1 => (name.clone(), any::<bool>()).prop_map(|(n, on)| Action::Subscribe(n, on)),
        1 => (0..16usize, proptest::option::of(0..7usize))
            .prop_map(|(n, u)| Action::SpecialUse(n, u.map(|u| SpecialUse::EVERY[u]))),
        4 => any::<usize>().prop_map(Action::Receive),
    ]
}

/// Checks what must hold of any list.
fn check_invariants(list: &MailboxList) -> Result<(), TestCaseError> {
    prop_assert_eq!(list.inbox().id, MailboxId::INBOX);
    prop_assert_eq!(list.by_name("inbox").map(|m| m.id), Some(MailboxId::INBOX));
    // Every created, not-deleted id has exactly one shown name, and each
    // shown name one mailbox (a map cannot say otherwise, so compare
    // sizes both ways).
    let live: BTreeSet<MailboxId> = list
        .core
        .entries
        .iter()
        .filter(|(_, e)| e.live_name().is_some())
        .map(|(id, _)| *id)
        .chain([MailboxId::INBOX])
        .collect();
    let shown: BTreeSet<MailboxId> = list.index.by_name.values().copied().collect();
    prop_assert_eq!(&live, &shown);
    prop_assert_eq!(list.index.by_name.len(), shown.len());
    prop_assert_eq!(list.index.name_of.len(), shown.len());
    for (name, id) in &list.index.by_name {
        prop_assert_eq!(list.by_id(*id).map(|m| m.name), Some(name.as_str()));
        prop_assert!(list.by_id(*id).unwrap().uid_validity != 0);
    }
    Ok(())
}

fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut x = seed | 1;
    for i in (1..items.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        items.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

fn run(actions: &[(usize, Action)], seed: u64) -> Result<(), TestCaseError> {
    let mut nodes = [Node::new("a"), Node::new("b"), Node::new("c")];
    let mut pool: Vec<Op> = vec![nodes[0].write(MailboxList::new_account_defaults())];
    // Names each node has seen, with the mailbox and UIDVALIDITY shown.
    let mut rng = StdRng::seed_from_u64(seed);
    for (who, action) in actions {
        let node = &mut nodes[*who % 3];
        let list = node.list();
        let shown: Vec<String> = list.names().map(str::to_owned).collect();
        let pick = |i: usize| shown[i % shown.len()].clone();
        let highest_known = list
            .core
            .entries
            .values()
            .filter_map(|e| e.created.as_ref().map(|c| c.uid_validity))
            .max()
            .unwrap_or(0);
        let op = match action {
            Action::Create(n) => list
                .plan_create(POOL[*n], None, &mut rng)
                .ok()
                .map(|(op, _)| op),
            Action::Rename(f, t) => list
                .plan_rename(&pick(*f), POOL[*t], &mut rng)
                .ok()
                .map(|p| p.op),
            Action::Delete(n) => list.plan_delete(&pick(*n), 0).ok(),
            Action::Restore(n) => {
                let deleted = list.deleted();
                if deleted.is_empty() {
                    None
                } else {
                    list.plan_restore(deleted[n % deleted.len()].id).ok()
                }
            }
            Action::Subscribe(n, true) => list.plan_subscribe(POOL[*n]).ok(),
            Action::Subscribe(n, false) => list.plan_unsubscribe(POOL[*n]).ok(),
            Action::SpecialUse(n, u) => list.plan_set_special_use(&pick(*n), *u).ok(),
            Action::Receive(i) => {
                let op = pool[i % pool.len()].clone();
                node.see(&op);
                None
            }
        };
        if let Some(op) = op {
            let new_ids: Vec<MailboxId> = op
                .changes
                .iter()
                .filter_map(|c| match c {
                    Change::Create { id, .. } => Some(*id),
                    _ => None,
                })
                .collect();
            let written = node.write(op);
            // A create's UIDVALIDITY is above every one its writer knew:
            // above the old mailbox's when a name is deleted and recreated.
            for id in new_ids {
                let created = node.list().core.entries[&id].created.as_ref().unwrap();
                prop_assert!(created.uid_validity > highest_known);
            }
            pool.push(written);
        }
        check_invariants(node.list())?;
    }

    // Everyone gets everything, in a different order each.
    for (i, node) in nodes.iter_mut().enumerate() {
        let mut ops = pool.clone();
        shuffle(&mut ops, seed.wrapping_add(i as u64));
        for op in &ops {
            node.see(op);
        }
        prop_assert_eq!(node.replica.dag().pending_len(), 0);
    }
    let mut fresh = Replica::new(MailboxList::new());
    for op in pool.iter().rev() {
        fresh.insert(op.id, op.envelope.clone());
    }
    for node in &nodes {
        prop_assert_eq!(node.list(), fresh.state());
    }
    check_invariants(fresh.state())?;
    let json = serde_json::to_string(fresh.state()).unwrap();
    let restored: MailboxList = serde_json::from_str(&json).unwrap();
    prop_assert_eq!(&restored, fresh.state());

    // UIDVALIDITY: creates that are causally ordered give increasing
    // values (checked at each write above); distinct mailboxes never
    // share (name, UIDVALIDITY) in the final list.
    let mut pairs: BTreeMap<(String, u32), MailboxId> = BTreeMap::new();
    for m in fresh.state().mailboxes() {
        let previous = pairs.insert((m.name.to_owned(), m.uid_validity), m.id);
        prop_assert!(previous.is_none());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_histories_converge_and_keep_every_mailbox_reachable(
        actions in proptest::collection::vec((0..3usize, action()), 1..60),
        seed in any::<u64>(),
    ) {
        run(&actions, seed)?;
    }
}

#[test]
fn an_imported_mailbox_keeps_its_uid_validity_and_a_recreated_name_gets_a_higher_one() {
    let mut a = Node::new("a");
    let (op, id, kept) = a
        .replica
        .state()
        .plan_create_kept("Old/Mail", 1_234, 1 << 40, &mut a.rng)
        .unwrap();
    assert!(kept);
    a.write(op);
    let info = a.list().by_name("Old/Mail").unwrap();
    assert_eq!(
        (info.id, info.uid_validity, info.modseq_base),
        (id, 1_234, 1 << 40)
    );
    assert!(a.list().exists("Old"), "superiors are created");
    assert_eq!(a.list().by_name("Old").unwrap().modseq_base, 0);
    // The clock passed it: a name created later gets a higher value,
    // and a name once used never takes an imported value again.
    a.delete("Old/Mail");
    let (op, _, kept) = a
        .replica
        .state()
        .plan_create_kept("Old/Mail", 1_000, 0, &mut a.rng)
        .unwrap();
    assert!(
        !kept,
        "Old/Mail was used: its clients may know another value"
    );
    // The deleted one keeps its base (a recovery compares MODSEQs).
    assert_eq!(a.list().deleted()[0].modseq_base, 1 << 40);
    assert_eq!(a.list().modseq_base(id), 1 << 40);
    a.write(op);
    assert!(a.list().by_name("Old/Mail").unwrap().uid_validity > 1_234);
    assert_eq!(a.list().by_name("Old/Mail").unwrap().modseq_base, 0);
    let (_, _, kept) = a
        .replica
        .state()
        .plan_create_kept("INBOX", 5, 0, &mut a.rng)
        .unwrap_or_else(|_| (ListOp::default(), MailboxId::INBOX, false));
    assert!(!kept, "INBOX always exists");
}

#[test]
fn an_imported_uid_validity_raises_the_clock_of_later_creates() {
    let mut a = Node::new("a");
    let far = 4_000_000_000;
    let (op, _, _) = a
        .replica
        .state()
        .plan_create_kept("Future", far, 0, &mut a.rng)
        .unwrap();
    a.write(op);
    a.create("Next");
    assert!(a.list().by_name("Next").unwrap().uid_validity > far);
}
