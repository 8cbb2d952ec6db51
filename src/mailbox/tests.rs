//! Conflict tests of the mailbox state through the log: instances are
//! replicas that write ops and exchange them by hand, so each test spells
//! out who saw what. The random version of this is `tests/simulation.rs`.

use proptest::prelude::*;

use super::op::BodyKey;
use super::state::SummaryAt;
use super::*;
use crate::log::{Envelope, InstanceId, OpId, Replica};

#[derive(Clone, Debug)]
struct Op {
    id: OpId,
    envelope: Envelope<MailboxOp>,
}

struct Node {
    instance: InstanceId,
    replica: Replica<MailboxState>,
    wall_ms: u64,
}

impl Node {
    fn new(name: &str) -> Node {
        let instance = InstanceId::new(name).unwrap();
        Node {
            instance,
            replica: Replica::new(MailboxState::new(42)),
            wall_ms: 1_000,
        }
    }

    /// Writes an op from what this node has seen; the store acknowledged
    /// it, so the node applies it at once.
    fn write(&mut self, body: MailboxOp) -> Op {
        let op = self.prepare(body);
        self.see(&op);
        op
    }

    /// An op written but not applied yet (its PUT is in flight).
    fn prepare(&mut self, body: MailboxOp) -> Op {
        self.wall_ms += 10;
        let envelope = self
            .replica
            .prepare(body, self.instance.clone(), self.wall_ms);
        let (id, _) = envelope.encode().unwrap();
        Op { id, envelope }
    }

    fn see(&mut self, op: &Op) {
        self.replica.insert(op.id, op.envelope.clone());
    }

    fn state(&self) -> &MailboxState {
        self.replica.state()
    }

    fn uid(&self, op: &Op) -> Option<u32> {
        self.state().uid_of(&MessageId {
            op: op.id,
            index: 0,
        })
    }

    fn flags(&self, uid: u32) -> Vec<String> {
        let view = self.state().message(uid).unwrap();
        view.flags.iter().map(|f| f.to_string()).collect()
    }
}

fn append(blob: &str) -> MailboxOp {
    MailboxOp::Append(NewMessage {
        message: MessageRef {
            blob_id: blob.into(),
            body_key: BodyKey::random(),
            size: 10,
            internal_date: 0,
            summary: vec![],
        },
        flags: vec![],
    })
}

fn store(node: &Node, uid: u32, set: &[&str], clear: &[&str]) -> MailboxOp {
    MailboxOp::Store {
        targets: node.state().resolve(&[uid]),
        set: set.iter().map(|f| f.to_string()).collect(),
        clear: clear.iter().map(|f| f.to_string()).collect(),
    }
}

/// Two nodes that both saw one message at UID 1.
fn two_nodes() -> (Node, Node, Op) {
    let (mut a, mut b) = (Node::new("a"), Node::new("b"));
    let first = a.write(append("m0"));
    b.see(&first);
    (a, b, first)
}

#[test]
fn concurrent_appends_lose_their_uid_and_a_fix_up_gives_fresh_ones() {
    let (mut a, mut b, _) = two_nodes();
    let op_a = a.write(append("ma"));
    let op_b = b.write(append("mb"));
    // Each client was told UID 2 (APPENDUID) and UIDNEXT 3.
    assert_eq!((a.uid(&op_a), b.uid(&op_b)), (Some(2), Some(2)));
    let (next_shown, modseq_shown) = (a.state().uid_next(), a.state().highest_modseq());
    assert_eq!(next_shown, 3);

    a.see(&op_b);
    b.see(&op_a);
    for node in [&a, &b] {
        let state = node.state();
        assert_eq!(state.message_id(2), None, "UID 2 names nothing any more");
        assert_eq!(state.displaced().len(), 2);
        assert_eq!(state.uid_next(), 3, "UIDNEXT never decreases");
        assert_eq!(state.vanished_since(modseq_shown), vec![2]);
    }
    assert_eq!(a.state(), b.state());

    let fix = a.write(a.state().fix_up().unwrap());
    b.see(&fix);
    assert_eq!(a.state(), b.state());
    let (ua, ub) = (a.uid(&op_a).unwrap(), a.uid(&op_b).unwrap());
    assert!(ua >= next_shown && ub >= next_shown && ua != ub);
    assert_eq!(a.state().exists(), 3);
    assert!(a.state().displaced().is_empty());
    let changed = a.state().changed_since(modseq_shown);
    assert!(changed.contains(&ua) && changed.contains(&ub));
    assert_eq!(
        a.state().message_id(2),
        None,
        "a duplicated UID is never reused"
    );
}

#[test]
fn identical_concurrent_fix_ups_agree() {
    let (mut a, mut b, _) = two_nodes();
    let op_a = a.write(append("ma"));
    let op_b = b.write(append("mb"));
    a.see(&op_b);
    b.see(&op_a);
    // Both saw the same set: their fix-ups make the same claims.
    let fix_a = a.write(a.state().fix_up().unwrap());
    let fix_b = b.write(b.state().fix_up().unwrap());
    assert_ne!(fix_a.id, fix_b.id);
    a.see(&fix_b);
    b.see(&fix_a);
    assert_eq!(a.state(), b.state());
    assert!(a.state().displaced().is_empty());
    assert_eq!(a.state().exists(), 3);
}

#[test]
fn concurrent_stores_of_different_flags_both_win() {
    let (mut a, mut b, _) = two_nodes();
    let seen = a.write(store(&a, 1, &["\\Seen"], &[]));
    let flagged = b.write(store(&b, 1, &["\\Flagged"], &[]));
    a.see(&flagged);
    b.see(&seen);
    assert_eq!(a.state(), b.state());
    assert_eq!(a.flags(1), vec!["\\Flagged", "\\Seen"]);
    assert_eq!(a.state().uids_with_flag("\\Seen"), vec![1]);
}

#[test]
fn concurrent_stores_of_one_flag_last_writer_wins() {
    let (mut a, mut b, _) = two_nodes();
    let set = a.write(store(&a, 1, &["\\Deleted"], &[]));
    b.wall_ms = a.wall_ms + 1_000; // b's clock is later: b wins
    let clear = b.write(store(&b, 1, &[], &["\\Deleted"]));
    a.see(&clear);
    b.see(&set);
    assert_eq!(a.state(), b.state());
    assert!(a.flags(1).is_empty());
    // A STORE that saw the other always wins, whatever the clocks say.
    a.wall_ms = 0;
    let again = a.write(store(&a, 1, &["\\Deleted"], &[]));
    b.see(&again);
    assert_eq!(b.flags(1), vec!["\\Deleted"]);
}

#[test]
fn expunge_wins_over_a_concurrent_flag_change() {
    let (mut a, mut b, _) = two_nodes();
    let modseq_shown = a.state().highest_modseq();
    let expunge = a.write(MailboxOp::Expunge(a.state().resolve(&[1])));
    let flag = b.write(store(&b, 1, &["\\Seen"], &[]));
    a.see(&flag);
    b.see(&expunge);
    assert_eq!(a.state(), b.state());
    assert_eq!(a.state().exists(), 0);
    assert_eq!(a.state().vanished_since(modseq_shown), vec![1]);
    assert!(
        a.state().displaced().is_empty(),
        "expunged messages need no fix-up"
    );
}

#[test]
fn a_late_op_after_a_fix_up_is_displaced_alone() {
    let (mut a, mut b, first) = two_nodes();
    let mut c = Node::new("c");
    c.see(&first);
    let op_a = a.write(append("ma"));
    let op_b = b.write(append("mb"));
    let late = c.write(append("mc")); // c is cut off for a while
    a.see(&op_b);
    b.see(&op_a);
    let fix = a.write(a.state().fix_up().unwrap());
    b.see(&fix);
    let (ua, ub) = (a.uid(&op_a).unwrap(), a.uid(&op_b).unwrap());
    let next_shown = a.state().uid_next();
    let modseq_shown = a.state().highest_modseq();

    // c's op arrives: it repeats claim 2, which was already invalid.
    for node in [&mut a, &mut b] {
        node.see(&late);
        assert_eq!((node.uid(&op_a), node.uid(&op_b)), (Some(ua), Some(ub)));
        assert_eq!(
            node.state().displaced(),
            vec![MessageId {
                op: late.id,
                index: 0
            }]
        );
        assert_eq!(node.state().uid_next(), next_shown);
    }
    let fix2 = b.write(b.state().fix_up().unwrap());
    a.see(&fix2);
    assert_eq!(a.state(), b.state());
    let uc = a.uid(&late).unwrap();
    assert!(uc >= next_shown);
    assert!(a.state().changed_since(modseq_shown).contains(&uc));
}

#[test]
fn a_late_op_can_displace_a_fixed_up_message_again() {
    let (mut a, mut b, first) = two_nodes();
    let op_a = a.write(append("ma"));
    let op_b = b.write(append("mb"));
    // d saw op_a only; its append claims 3, like the fix-up will.
    let mut d = Node::new("d");
    d.see(&first);
    d.see(&op_a);
    let late = d.write(append("md"));
    a.see(&op_b);
    b.see(&op_a);
    let fix = a.write(a.state().fix_up().unwrap());
    b.see(&fix);
    let shown: Vec<u32> = a.state().messages().map(|m| m.uid).collect();
    let next_shown = a.state().uid_next();
    let modseq_shown = a.state().highest_modseq();
    assert_eq!(shown, vec![1, 3, 4]);

    a.see(&late);
    let state = a.state();
    assert_eq!(
        state.exists(),
        2,
        "the message at 3 and the late one are displaced"
    );
    // 3 is new; 2, which vanished before, may be reported again.
    let vanished = state.vanished_since(modseq_shown);
    assert!(
        vanished.contains(&3) && vanished.iter().all(|u| *u <= 3),
        "{vanished:?}"
    );
    let fix2 = a.write(state.fix_up().unwrap());
    b.see(&late);
    b.see(&fix2);
    assert_eq!(a.state(), b.state());
    let after: Vec<u32> = a.state().messages().map(|m| m.uid).collect();
    assert_eq!(after.len(), 4);
    assert!(
        after
            .iter()
            .filter(|u| !shown.contains(u))
            .all(|u| *u >= next_shown)
    );
}

#[test]
fn a_late_flag_change_is_reported_by_changedsince_without_a_touch() {
    // The Lamport MODSEQ claims of the first design (doc/consistency.md,
    // "MODSEQ: sequence numbers instead of MODSEQ claims") would give b's late STORE
    // a MODSEQ at or below what a's client saw; sequence numbers do not.
    let (mut a, mut b, _) = two_nodes();
    for n in 0..5 {
        a.write(append(&format!("x{n}")));
    }
    let late = b.write(store(&b, 1, &["\\Answered"], &[]));
    let modseq_shown = a.state().highest_modseq();
    a.see(&late);
    assert!(a.state().message(1).unwrap().modseq > modseq_shown);
    // Also reported: the messages of a's ops concurrent with the STORE,
    // changes for a client that had seen b's state (see `log::dag`).
    assert!(a.state().changed_since(modseq_shown).contains(&1));
    assert!(a.state().highest_modseq() > modseq_shown);
}

#[test]
fn ops_naming_unknown_messages_change_nothing_visible() {
    let (mut a, _, _) = two_nodes();
    let ghost = MessageId {
        op: OpId::from_raw([9; 16]),
        index: 3,
    };
    let before: Vec<u32> = a.state().messages().map(|m| m.uid).collect();
    a.write(MailboxOp::Store {
        targets: vec![ghost],
        set: vec!["x".into()],
        clear: vec![],
    });
    a.write(MailboxOp::Expunge(vec![ghost]));
    a.write(MailboxOp::FixUp(vec![ghost]));
    let after: Vec<u32> = a.state().messages().map(|m| m.uid).collect();
    assert_eq!(before, after);
    assert!(a.state().displaced().is_empty());
    assert!(a.replica.insert_bytes(b"{not an op").is_err());
}

#[test]
fn sequence_numbers_and_uids_map_both_ways() {
    let (mut a, _, _) = two_nodes();
    a.write(append("m1"));
    a.write(append("m2"));
    a.write(MailboxOp::Expunge(a.state().resolve(&[2])));
    assert_eq!(
        (
            a.state().uid_at(1),
            a.state().uid_at(2),
            a.state().uid_at(3)
        ),
        (Some(1), Some(3), None)
    );
    assert_eq!((a.state().seq_of(3), a.state().seq_of(2)), (Some(2), None));
    assert_eq!(a.state().uid_at(0), None);
}

#[test]
fn a_snapshot_restores_the_same_replica() {
    let (mut a, mut b, _) = two_nodes();
    let op_a = a.write(append("ma"));
    let op_b = b.write(append("mb"));
    a.see(&op_b);
    let json = serde_json::to_string(&a.replica).unwrap();
    let mut restored: Replica<MailboxState> = serde_json::from_str(&json).unwrap();
    assert_eq!(restored.state(), a.state());
    // Ops after the snapshot give the same result on both.
    let fix = a.write(a.state().fix_up().unwrap());
    restored.insert(fix.id, fix.envelope.clone());
    b.see(&op_a);
    b.see(&fix);
    assert_eq!(restored.state(), a.state());
    assert_eq!(b.state(), a.state());
}

// ---- Order independence (I1) over random histories ----

#[derive(Clone, Debug)]
enum Step {
    /// Writer `w` writes an op of kind `k` about message choice `m`.
    Write { w: usize, k: u8, m: usize },
    /// Writer `to` sees every op writer `from` has.
    Sync { from: usize, to: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..3usize, 0..6u8, 0..8usize).prop_map(|(w, k, m)| Step::Write { w, k, m }),
        1 => (0..3usize, 0..3usize).prop_map(|(from, to)| Step::Sync { from, to }),
    ]
}

/// Runs a history; returns every op written, in write order.
fn history(steps: &[Step]) -> Vec<Op> {
    let mut nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| Node::new(n)).collect();
    let mut seen: Vec<Vec<Op>> = vec![Vec::new(); 3];
    let mut all = Vec::new();
    for step in steps {
        match *step {
            Step::Write { w, k, m } => {
                let node = &nodes[w];
                let uids: Vec<u32> = node.state().messages().map(|v| v.uid).collect();
                let pick = uids.get(m % uids.len().max(1)).copied().unwrap_or(0);
                let targets = node.state().resolve(&[pick]);
                let body = match k {
                    0 | 1 => append(&format!("blob{}", all.len())),
                    2 => store(node, pick, &["\\Seen"], &[]),
                    3 => store(node, pick, &[], &["\\Seen"]),
                    4 => MailboxOp::Expunge(targets),
                    _ => match node.state().fix_up() {
                        Some(fix) => fix,
                        None => MailboxOp::CopyIn(vec![NewMessage {
                            message: MessageRef {
                                blob_id: "copy".into(),
                                body_key: BodyKey::random(),
                                size: 1,
                                internal_date: 0,
                                summary: vec![],
                            },
                            flags: vec!["\\Seen".into()],
                        }]),
                    },
                };
                let op = nodes[w].write(body);
                seen[w].push(op.clone());
                all.push(op);
            }
            Step::Sync { from, to } => {
                for op in seen[from].clone() {
                    nodes[to].see(&op);
                    seen[to].push(op);
                }
            }
        }
    }
    all
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn delivery_order_does_not_matter(
        steps in proptest::collection::vec(step(), 1..40),
        seed in any::<u64>(),
    ) {
        let ops = history(&steps);
        let mut in_order = Replica::new(MailboxState::new(42));
        for op in &ops {
            in_order.insert(op.id, op.envelope.clone());
        }
        // The same set delivered in a shuffled order (children often
        // before parents: the DAG buffers them).
        let mut shuffled = ops.clone();
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut other = Replica::new(MailboxState::new(42));
        for op in &shuffled {
            other.insert(op.id, op.envelope.clone());
        }
        prop_assert_eq!(other.dag().pending_len(), 0);
        prop_assert_eq!(in_order.state(), other.state());
        let json = serde_json::to_string(in_order.state()).unwrap();
        let restored: MailboxState = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&restored, in_order.state());
    }
}

fn append_with_summary(blob: &str, summary: &[u8]) -> MailboxOp {
    let MailboxOp::Append(mut new) = append(blob) else {
        unreachable!("append() builds an append")
    };
    new.message.summary = summary.to_vec();
    MailboxOp::Append(new)
}

#[test]
fn paging_summaries_out_changes_where_they_are_not_what_the_state_is() {
    let (mut a, mut b) = (Node::new("a"), Node::new("b"));
    let ops: Vec<Op> = (0..3)
        .map(|i| a.write(append_with_summary(&format!("m{i}"), b"{\"s\":1}")))
        .collect();
    let expunged = a.write(MailboxOp::Expunge(a.state().resolve(&[3])));
    for op in ops.iter().chain([&expunged]) {
        b.see(op);
    }
    let id = |op: &Op| MessageId {
        op: op.id,
        index: 0,
    };
    // An expunged message's summary is dropped at once.
    assert_eq!(a.state().held_summary_bytes(), 14);
    assert_eq!(
        a.state()
            .held_summaries()
            .iter()
            .map(|(m, _)| *m)
            .collect::<Vec<_>>(),
        [id(&ops[0]), id(&ops[1])]
    );
    let state = a.replica.state_mut();
    state.paged_out(vec![
        ("p0".into(), vec![id(&ops[0])]),
        ("p1".into(), vec![id(&ops[2])]), // expunged meanwhile: forgotten
    ]);
    assert_eq!(state.summary_pages(), ["p0"]);
    assert_eq!(state.summary_at(&id(&ops[0])), SummaryAt::Page("p0"));
    assert_eq!(
        state.summary_at(&id(&ops[1])),
        SummaryAt::Held(b"{\"s\":1}".to_vec())
    );
    assert_eq!(state.held_summary_bytes(), 7);
    // Same op set, same state, wherever the summaries are.
    assert_eq!(a.state(), b.state());
    // Through a snapshot, the page map survives.
    let json = serde_json::to_string(a.state()).unwrap();
    let restored: MailboxState = serde_json::from_str(&json).unwrap();
    assert_eq!(restored.summary_at(&id(&ops[0])), SummaryAt::Page("p0"));
    assert_eq!(restored.held_summary_bytes(), 7);
    // A page lost: unknown until computed again, then held.
    let state = a.replica.state_mut();
    state.pages_lost(&["p0".to_owned()]);
    assert_eq!(state.summary_at(&id(&ops[0])), SummaryAt::Unknown);
    state.hold_summaries(vec![
        (id(&ops[0]), b"{}".to_vec()),
        (id(&ops[2]), b"{}".to_vec()),
    ]);
    assert_eq!(
        state.summary_at(&id(&ops[0])),
        SummaryAt::Held(b"{}".to_vec())
    );
    assert_eq!(
        state.summary_at(&id(&ops[2])),
        SummaryAt::Unknown,
        "expunged"
    );
    assert_eq!(state.held_summary_bytes(), 9);
}

/// Chunks of a command reading a page at a time end where a summary page
/// does: a page cut in two is read twice, and a body pack is only read
/// for a chunk holding a good share of its page.
#[test]
fn chunks_end_where_summary_pages_end() {
    let mut a = Node::new("a");
    let ops: Vec<Op> = (0..12)
        .map(|i| a.write(append_with_summary(&format!("m{i}"), b"{}")))
        .collect();
    let id = |i: usize| MessageId {
        op: ops[i].id,
        index: 0,
    };
    // Pages of 3, 5 and 1 messages (UIDs 1-3, 4-8, 9); 10-12 held.
    a.replica.state_mut().paged_out(vec![
        ("p0".into(), (0..3).map(id).collect()),
        ("p1".into(), (3..8).map(id).collect()),
        ("p2".into(), vec![id(8)]),
    ]);
    let s = a.state();
    assert_eq!(s.summary_page(4), Some("p1"));
    assert_eq!(s.summary_page(10), None, "held");
    assert_eq!(s.summary_page(13), None, "no such message");
    let all: Vec<u32> = (1..=12).collect();
    // Cut before the page that would not fit, not inside it.
    assert_eq!(s.page_chunks(&all, 6), [3, 6, 3]);
    assert_eq!(s.page_chunks(&all, 8), [8, 4]);
    // A page longer than a chunk is cut; held messages fill any chunk.
    assert_eq!(s.page_chunks(&all, 4), [3, 4, 4, 1]);
    assert_eq!(s.page_chunks(&all, 1), [1; 12]);
    assert_eq!(s.page_chunks(&all, 100), [12]);
    assert_eq!(s.page_chunks(&[], 4), Vec::<usize>::new());
    // Only the messages asked for count, in their order.
    assert_eq!(s.page_chunks(&[2, 3, 5, 6, 7, 8, 11], 4), [2, 4, 1]);
    // Every message is in exactly one chunk, whatever the size.
    for max in 1..=13 {
        assert_eq!(s.page_chunks(&all, max).iter().sum::<usize>(), 12);
        assert!(
            s.page_chunks(&all, max)
                .iter()
                .all(|n| (1..=max).contains(n))
        );
    }
}

#[test]
fn a_page_number_out_of_range_in_a_snapshot_is_unknown_not_a_panic() {
    let mut a = Node::new("a");
    let op = a.write(append_with_summary("m0", b"{}"));
    let id = MessageId {
        op: op.id,
        index: 0,
    };
    a.replica
        .state_mut()
        .paged_out(vec![("p0".into(), vec![id])]);
    let json = serde_json::to_string(a.state()).unwrap();
    let damaged = json.replace(&format!("\"{id}\":0"), &format!("\"{id}\":7"));
    assert_ne!(damaged, json);
    let mut state: MailboxState = serde_json::from_str(&damaged).unwrap();
    assert_eq!(state.summary_at(&id), SummaryAt::Unknown);
    state.paged_out(vec![]);
    assert_eq!(state.summary_at(&id), SummaryAt::Unknown);
    assert!(state.summary_pages().is_empty());
}

/// A replica snapshot written by the version before the dense state
/// layout (fixtures/snapshots/replica-v1.json: a fix-up, flags set and
/// cleared, an expunge, a summary page). It must read into the same
/// meaning, and be written back in the same form, so instances of either
/// version read each other's snapshots.
#[test]
fn a_snapshot_of_the_previous_layout_reads_and_writes_back_the_same() {
    let text = include_str!("../../fixtures/snapshots/replica-v1.json");
    let replica: Replica<MailboxState> = serde_json::from_str(text).unwrap();
    let state = replica.state();
    assert_eq!(state.exists(), 3);
    assert_eq!(state.highest_modseq(), 8);
    assert_eq!(state.uid_next(), 6);
    let first = state.message(1).unwrap();
    assert_eq!(
        first.message.blob_id(),
        format!("018f00000000{}", "ab".repeat(16))
    );
    assert_eq!(first.flags, ["\\Answered", "\\Flagged"]);
    assert_eq!(state.summary_at(&first.id), SummaryAt::Page("p0"));
    // The two messages a fix-up moved to UIDs 4 and 5, summaries held.
    assert_eq!(state.uid_at(2), Some(4));
    let moved = state.message(5).unwrap();
    assert_eq!(moved.message.blob_id(), "ca");
    assert_eq!(
        state.summary_at(&moved.id),
        SummaryAt::Held(b"{\"s\":2}".to_vec())
    );
    // UID 2 was expunged, its claim reported as vanished.
    assert_eq!(state.vanished_since(0), [2, 3]);
    let written: serde_json::Value = serde_json::to_value(&replica).unwrap();
    let original: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(written, original);
}

// ---- Skip: UIDs kept from another server (facteur import) ----

#[test]
fn a_skip_leaves_a_gap_and_the_next_placement_claims_above_it() {
    let mut a = Node::new("a");
    let first = a.write(append("m1"));
    a.write(MailboxOp::Skip(2));
    assert_eq!(a.state().uid_next(), 4, "UIDs 2 and 3 are used up");
    let fourth = a.write(append("m4"));
    assert_eq!((a.uid(&first), a.uid(&fourth)), (Some(1), Some(4)));
    assert_eq!(a.state().exists(), 2);
    assert_eq!(a.state().message_id(2), None);
    // A skip at the end keeps UIDNEXT where the other server had it.
    a.write(MailboxOp::Skip(6));
    assert_eq!(a.state().uid_next(), 11);
    assert!(a.state().displaced().is_empty());
}

#[test]
fn a_message_placed_concurrently_with_a_skip_never_shows_a_skipped_uid() {
    let (mut a, mut b, _) = two_nodes();
    let skip = a.write(MailboxOp::Skip(3));
    let op_b = b.write(append("mb"));
    // b's client was told UID 2 before b saw the skip.
    assert_eq!(b.uid(&op_b), Some(2));
    b.see(&skip);
    a.see(&op_b);
    for node in [&a, &b] {
        assert_eq!(node.state().message_id(2), None, "2 is claimed twice");
        assert_eq!(node.state().displaced().len(), 1);
        assert_eq!(node.state().uid_next(), 5);
    }
    assert_eq!(a.state(), b.state(), "I1");
    let fix = a.write(a.state().fix_up().unwrap());
    b.see(&fix);
    let id = MessageId {
        op: op_b.id,
        index: 0,
    };
    assert_eq!(a.state().uid_of(&id), Some(5), "above everything claimed");
    assert_eq!(b.state().uid_of(&id), Some(5));
}

#[test]
fn skipped_uids_survive_a_snapshot() {
    let mut a = Node::new("a");
    a.write(append("m1"));
    a.write(MailboxOp::Skip(2));
    a.write(MailboxOp::Skip(1));
    let json = serde_json::to_string(&a.replica).unwrap();
    let mut restored: Replica<MailboxState> = serde_json::from_str(&json).unwrap();
    assert_eq!(restored.state(), a.state());
    assert_eq!(restored.state().uid_next(), 5);
    // A late op claiming a skipped value is still seen as a duplicate.
    let mut late = Node::new("late");
    let op = late.write(append("x"));
    let op2 = late.write(append("y"));
    restored.insert(op.id, op.envelope.clone());
    restored.insert(op2.id, op2.envelope.clone());
    let id2 = MessageId {
        op: op2.id,
        index: 0,
    };
    assert_eq!(restored.state().uid_of(&id2), None, "2 was skipped");
    assert!(restored.state().displaced().contains(&id2));
}

#[test]
fn a_uid_a_concurrent_skip_takes_is_reported_vanished_in_either_order() {
    let (mut a, mut b, _) = two_nodes();
    let op_a = a.write(append("ma"));
    let skip = b.write(MailboxOp::Skip(3));
    // A client of a was told the message's UID and HIGHESTMODSEQ.
    let uid = a.uid(&op_a).unwrap();
    let modseq_shown = a.state().highest_modseq();
    a.see(&skip);
    b.see(&op_a);
    for node in [&a, &b] {
        let state = node.state();
        assert_eq!(state.message_id(uid), None, "the skip took the UID");
        assert!(
            state.vanished_since(modseq_shown).contains(&uid),
            "a QRESYNC client must be told the UID vanished"
        );
    }
    assert_eq!(a.state(), b.state(), "the same state in either order");
}

#[test]
fn a_skip_is_bounded() {
    assert_eq!(
        MailboxOp::Skip(u32::MAX).claim_count(),
        op::MAX_SKIP as usize
    );
    let mut a = Node::new("a");
    a.write(MailboxOp::Skip(u32::MAX));
    assert_eq!(a.state().uid_next(), op::MAX_SKIP + 1);
}
