//! Simulation of many instances sharing one store (doc/consistency.md,
//! "Simulation"): random histories of appends, LMTP deliveries (records in
//! `incoming/` drained by any instance, sometimes by two at once or twice after
//! a failed PUT), copies, flag stores, expunges, syncs and fix-ups, with
//! delayed and reordered visibility of writes, PUTs that hang, fail or land
//! late, partitions that heal, and clients that move from one instance to
//! another. After every step it checks the invariants I1–I5 against what each
//! client was shown; once the system is quiet, I4.
//!
//! The store model is the contract of `ObjectStore` (src/store/mod.rs) and what the I/O layer
//! must provide on top of it:
//!
//! - a write is *durable* once its PUT succeeded (or, for a PUT that
//!   failed or hung, once it landed anyway); non-durable writes are seen by
//!   nobody;
//! - a *full sync* (the sync before serving SELECT, NOOP, STATUS, IDLE)
//!   sees every durable write;
//! - a *poll* (background, incremental) sees only the durable writes
//!   revealed to that instance so far, in any order: delayed, reordered;
//! - a partitioned instance can neither sync nor complete a PUT; its PUTs
//!   hang, then succeed, fail, or fail and land later.
//!
//! `cargo test --test simulation -- --nocapture` prints the counts;
//! `FACTEUR_SIM_CASES=100000` runs more cases.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use facteur::log::{Envelope, InstanceId, OpId, Replica};
use facteur::mailbox::op::{BodyKey, Delivery};
use facteur::mailbox::{MailboxOp, MailboxState, MessageId, MessageRef, NewMessage};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const INSTANCES: usize = 3;
const CLIENTS: usize = 4;
const UID_VALIDITY: u32 = 7;
/// The mailbox is one `facteur import` made with its old UIDVALIDITY: every
/// MODSEQ it reports has this base added (doc/migration.md), so the
/// invariants are checked on the values clients see, and the base must
/// survive snapshots.
const MODSEQ_BASE: u64 = 1 << 40;

/// An empty state of the simulated mailbox.
fn empty_state() -> MailboxState {
    let mut state = MailboxState::new(UID_VALIDITY);
    state.set_modseq_base(MODSEQ_BASE);
    state
}
const FLAGS: [&str; 3] = ["\\Seen", "\\Flagged", "$Work"];

// ---- Counters, summed over every case run (shrinking included) ----

static CASES: AtomicU64 = AtomicU64::new(0);
static STEPS: AtomicU64 = AtomicU64::new(0);
static VIEWS: AtomicU64 = AtomicU64::new(0);
static ACKED: AtomicU64 = AtomicU64::new(0);
static UIDVALIDITY_CHANGES: AtomicU64 = AtomicU64::new(0);
static FIXUP_OPS: AtomicU64 = AtomicU64::new(0);
static RENUMBERED: AtomicU64 = AtomicU64::new(0);
static SHOWN_THEN_DISPLACED: AtomicU64 = AtomicU64::new(0);
static CASES_WITH_CONFLICT: AtomicU64 = AtomicU64::new(0);
static LATE_LANDINGS: AtomicU64 = AtomicU64::new(0);
static DRAINED_TWICE: AtomicU64 = AtomicU64::new(0);
static RESTARTS: AtomicU64 = AtomicU64::new(0);

fn count(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

// ---- The model ----

/// What the client (or nobody) waits for when a PUT completes.
#[derive(Clone, Debug)]
enum Waiter {
    /// APPEND: the client gets APPENDUID `uid` for `message`.
    Append {
        client: usize,
        message: MessageId,
        uid: u32,
    },
    /// A drain of `incoming/`: once the op is durable, its writer deletes
    /// these delivery records (indexes into `Sim::queue`). The LMTP 250
    /// was given when the record was written.
    Drain { records: Vec<usize> },
    /// COPY: COPYUID, the new UIDs for the new messages.
    Copy {
        client: usize,
        placed: Vec<(u32, MessageId)>,
    },
    /// STORE or EXPUNGE: the tagged OK.
    Change { client: usize },
    /// A fix-up, written by an instance on its own.
    FixUp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PutState {
    InFlight,
    Acked,
    Failed,
}

struct Write {
    id: OpId,
    envelope: Envelope<MailboxOp>,
    writer: usize,
    put: PutState,
    durable: bool,
    /// A failed PUT that will land anyway (partially written, repaired).
    lands_later: bool,
    revealed: [bool; INSTANCES],
    waiter: Waiter,
}

struct Instance {
    name: InstanceId,
    replica: Replica<MailboxState>,
    partitioned: bool,
    skew_ms: i64,
    /// Fix-up ops seen when a fix-up was planned (doc/consistency.md, "The I/O
    /// layer": wait a random delay, skip if another fix-up appears).
    planned: Option<usize>,
    fixups_seen: usize,
}

/// What a client was shown last, and everything it remembers.
#[derive(Default)]
struct Client {
    instance: Option<usize>,
    /// Index of the write whose PUT this client waits for.
    busy: Option<usize>,
    uid_validity: Option<u32>,
    /// Every UID this client was ever shown, with the message it named.
    known: HashMap<u32, MessageId>,
    /// Highest UIDNEXT shown.
    uid_next: u32,
    /// HIGHESTMODSEQ last shown.
    modseq: u64,
    /// Ops behind the last view, and what it showed.
    view_ops: HashSet<OpId>,
    view_shown: BTreeMap<u32, MessageId>,
}

/// A delivery record in `incoming/` (doc/storage.md, "Encryption"), written by
/// LMTP.
struct Queued {
    name: String,
    message: MessageRef,
    deleted: bool,
}

struct Sim {
    now_ms: u64,
    store: Vec<Write>,
    /// `incoming/`: records are written durably (LMTP answers 250 only
    /// then) and deleted by a drain once its op is durable.
    queue: Vec<Queued>,
    bodies: HashMap<OpId, MailboxOp>,
    instances: Vec<Instance>,
    clients: Vec<Client>,
    /// Messages acknowledged to someone: APPENDUID, COPYUID, LMTP 250.
    acked: Vec<MessageId>,
    blob_serial: u64,
}

type Check = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

impl Sim {
    fn new(skews: [i16; INSTANCES]) -> Sim {
        let instances = (0..INSTANCES)
            .map(|i| Instance {
                name: InstanceId::new(&format!("site{i}")).unwrap(),
                replica: Replica::new(empty_state()),
                partitioned: false,
                skew_ms: i64::from(skews[i]),
                planned: None,
                fixups_seen: 0,
            })
            .collect();
        Sim {
            now_ms: 1_000_000,
            store: Vec::new(),
            queue: Vec::new(),
            bodies: HashMap::new(),
            instances,
            clients: (0..CLIENTS).map(|_| Client::default()).collect(),
            acked: Vec::new(),
            blob_serial: 0,
        }
    }

    fn new_blob(&mut self) -> MessageRef {
        self.blob_serial += 1;
        MessageRef {
            blob_id: format!("blob{}", self.blob_serial),
            body_key: BodyKey::random(),
            size: 100 + self.blob_serial,
            internal_date: self.blob_serial as i64,
            summary: Vec::new(),
        }
    }

    fn state(&self, i: usize) -> &MailboxState {
        self.instances[i].replica.state()
    }

    fn insert(&mut self, i: usize, w: usize) {
        let write = &self.store[w];
        let inst = &mut self.instances[i];
        if !inst.replica.contains(&write.id) {
            inst.replica.insert(write.id, write.envelope.clone());
            if matches!(write.envelope.body, MailboxOp::FixUp(_)) {
                inst.fixups_seen += 1;
            }
        }
    }

    /// The sync before serving a client: every durable write.
    fn full_sync(&mut self, i: usize) -> bool {
        if self.instances[i].partitioned {
            return false;
        }
        for w in 0..self.store.len() {
            if self.store[w].durable {
                self.store[w].revealed[i] = true;
                self.insert(i, w);
            }
        }
        true
    }

    /// A background poll: only what was revealed to this instance.
    fn poll(&mut self, i: usize) {
        if self.instances[i].partitioned {
            return;
        }
        for w in 0..self.store.len() {
            if self.store[w].durable && self.store[w].revealed[i] {
                self.insert(i, w);
            }
        }
    }

    /// Starts a PUT of a new op written by instance `i` from what it has.
    fn put(
        &mut self,
        i: usize,
        body: MailboxOp,
        waiter: impl FnOnce(OpId, &[OpId]) -> Waiter,
    ) -> usize {
        let inst = &self.instances[i];
        let wall = (self.now_ms as i64 + inst.skew_ms).max(0) as u64;
        let envelope = inst.replica.prepare(body, inst.name.clone(), wall);
        let (id, _) = envelope.encode().unwrap();
        let waiter = waiter(id, &envelope.header.parents);
        self.bodies.insert(id, envelope.body.clone());
        self.store.push(Write {
            id,
            envelope,
            writer: i,
            put: PutState::InFlight,
            durable: false,
            lands_later: false,
            revealed: [false; INSTANCES],
            waiter,
        });
        self.store.len() - 1
    }

    /// The PUT succeeded: durable, applied by its writer, then the waiting
    /// party is answered.
    fn ack(&mut self, w: usize) -> Check {
        let write = &mut self.store[w];
        write.put = PutState::Acked;
        write.durable = true;
        let i = write.writer;
        let waiter = write.waiter.clone();
        self.insert(i, w);
        match waiter {
            Waiter::Append {
                client,
                message,
                uid,
            } => {
                self.acked.push(message);
                count(&ACKED, 1);
                self.tell_uids(client, &[(uid, message)])?;
                self.clients[client].busy = None;
                self.observe(client)?;
            }
            Waiter::Copy { client, placed } => {
                self.acked.extend(placed.iter().map(|(_, m)| *m));
                count(&ACKED, placed.len() as u64);
                self.tell_uids(client, &placed)?;
                self.clients[client].busy = None;
                self.observe(client)?;
            }
            Waiter::Drain { records } => {
                for r in records {
                    self.queue[r].deleted = true;
                }
            }
            Waiter::Change { client } => {
                self.clients[client].busy = None;
                self.observe(client)?;
            }
            Waiter::FixUp => {}
        }
        Ok(())
    }

    /// APPENDUID / COPYUID (RFC 4315): the client learns UIDs for messages.
    fn tell_uids(&mut self, c: usize, placed: &[(u32, MessageId)]) -> Check {
        let client = &mut self.clients[c];
        for (uid, message) in placed {
            // I2: the UID names no other message for this client.
            if let Some(known) = client.known.get(uid) {
                ensure!(
                    known == message,
                    "I2: client {c} told UID {uid} = {message:?}, was {known:?}"
                );
            }
            // I3: above every UIDNEXT shown before.
            ensure!(
                *uid >= client.uid_next,
                "I3: client {c} told UID {uid} below UIDNEXT {}",
                client.uid_next
            );
            client.known.insert(*uid, *message);
        }
        Ok(())
    }

    /// Client `c` is shown its instance's current state (untagged
    /// responses after a command, or SELECT): check I2, I3, I5 against what
    /// it was shown before, then remember this view.
    fn observe(&mut self, c: usize) -> Check {
        let Some(i) = self.clients[c].instance else {
            return Ok(());
        };
        count(&VIEWS, 1);
        let state = self.instances[i].replica.state();
        let dag = self.instances[i].replica.dag();
        let client = &mut self.clients[c];

        if client.uid_validity != Some(state.uid_validity()) {
            if client.uid_validity.is_some() {
                count(&UIDVALIDITY_CHANGES, 1);
            }
            *client = Client {
                instance: client.instance,
                busy: client.busy,
                ..Client::default()
            };
            client.uid_validity = Some(state.uid_validity());
        }

        // The store contract: a client's next view is computed from a
        // superset of the ops behind its last one (else nothing can hold).
        for id in &client.view_ops {
            ensure!(
                dag.contains(id),
                "model: client {c} moved to a view missing {id:?}"
            );
        }

        // I3: UIDNEXT never decreases; HIGHESTMODSEQ neither.
        ensure!(
            state.uid_next() >= client.uid_next,
            "I3: client {c} shown UIDNEXT {} after {}",
            state.uid_next(),
            client.uid_next
        );
        ensure!(
            state.highest_modseq() >= client.modseq,
            "I5: HIGHESTMODSEQ went down for client {c}"
        );

        let shown: BTreeMap<u32, MessageId> = state.messages().map(|m| (m.uid, m.id)).collect();
        for (uid, id) in &shown {
            // I2: a UID shown once names no other message.
            if let Some(known) = client.known.get(uid) {
                ensure!(
                    known == id,
                    "I2: client {c} sees UID {uid} = {id:?}, was {known:?}"
                );
            }
            // I3: a message new to this view is above every UIDNEXT shown.
            if client.view_shown.get(uid) != Some(id) && !client.known.contains_key(uid) {
                ensure!(
                    *uid >= client.uid_next,
                    "I3: client {c} sees new UID {uid} below UIDNEXT {}",
                    client.uid_next
                );
            }
            let modseq = state.message(*uid).map(|m| m.modseq).unwrap_or(0);
            ensure!(
                modseq <= state.highest_modseq(),
                "MODSEQ {modseq} above HIGHESTMODSEQ"
            );
            // Above every MODSEQ the old server gave (the base).
            ensure!(
                modseq > MODSEQ_BASE,
                "MODSEQ {modseq} of UID {uid} not above the base"
            );
        }

        // I5: every change since the last view is reported by CHANGEDSINCE
        // (or VANISHED) with the HIGHESTMODSEQ the client saw.
        if client.uid_validity.is_some() && !client.view_ops.is_empty() {
            let h = client.modseq;
            let changed: HashSet<u32> = state.changed_since(h).into_iter().collect();
            let vanished: HashSet<u32> = state.vanished_since(h).into_iter().collect();
            for id in dag.ids().filter(|id| !client.view_ops.contains(id)) {
                let Some(body) = self.bodies.get(id) else {
                    continue;
                };
                for target in body.targets(*id) {
                    if let Some(uid) = state.uid_of(&target) {
                        ensure!(
                            changed.contains(&uid),
                            "I5: change to UID {uid} by {id:?} missed by CHANGEDSINCE {h}"
                        );
                    }
                }
            }
            for (uid, id) in &client.view_shown {
                if shown.get(uid) != Some(id) {
                    ensure!(
                        vanished.contains(uid),
                        "I5: UID {uid} gone but not in VANISHED since {h}"
                    );
                    if state.displaced().contains(id) {
                        count(&SHOWN_THEN_DISPLACED, 1);
                    }
                }
            }
        }

        client.known.extend(shown.iter().map(|(u, m)| (*u, *m)));
        client.uid_next = client.uid_next.max(state.uid_next());
        client.modseq = state.highest_modseq();
        client.view_ops = dag.ids().copied().collect();
        client.view_shown = shown;
        Ok(())
    }

    /// I1: instances with the same op set have the same state.
    fn check_convergence(&self) -> Check {
        for a in 0..INSTANCES {
            for b in a + 1..INSTANCES {
                let (ra, rb) = (&self.instances[a].replica, &self.instances[b].replica);
                if ra.dag().len() == rb.dag().len() && ra.dag().ids().all(|id| rb.contains(id)) {
                    ensure!(
                        ra.state() == rb.state(),
                        "I1: instances {a} and {b} differ on one op set"
                    );
                }
            }
        }
        Ok(())
    }

    // ---- Actions ----

    fn step(&mut self, action: &Action) -> Check {
        self.now_ms += 7;
        count(&STEPS, 1);
        match *action {
            Action::Select { client, instance } => {
                let i = instance as usize % INSTANCES;
                let c = client as usize % CLIENTS;
                if self.clients[c].busy.is_none() {
                    // A failed sync: the client is refused and goes nowhere.
                    self.clients[c].instance = self.full_sync(i).then_some(i);
                    self.observe(c)?;
                }
            }
            Action::Noop { client } => {
                let c = client as usize % CLIENTS;
                if let (Some(i), None) = (self.clients[c].instance, self.clients[c].busy) {
                    if self.full_sync(i) {
                        self.observe(c)?;
                    } else {
                        self.clients[c].instance = None;
                    }
                }
            }
            Action::Append { client, flag } => {
                let c = client as usize % CLIENTS;
                if let (Some(i), None) = (self.clients[c].instance, self.clients[c].busy) {
                    let flags = (flag % 2 == 0)
                        .then(|| FLAGS[0].to_owned())
                        .into_iter()
                        .collect();
                    let body = MailboxOp::Append(NewMessage {
                        message: self.new_blob(),
                        flags,
                    });
                    let uids = self.claims_now(i, 1);
                    let w = self.put(i, body, |op, _| Waiter::Append {
                        client: c,
                        message: MessageId { op, index: 0 },
                        uid: uids[0],
                    });
                    self.clients[c].busy = Some(w);
                }
            }
            Action::Deliver { instance } => {
                // LMTP writes the record (the 250 is the acknowledgement),
                // then the instance it ran on drains at once.
                let name = format!("{:016x}-{}", self.now_ms, self.queue.len());
                self.acked.push(MessageId::delivered(&name));
                count(&ACKED, 1);
                let message = self.new_blob();
                self.queue.push(Queued {
                    name,
                    message,
                    deleted: false,
                });
                self.drain(instance as usize % INSTANCES);
            }
            Action::Drain { instance } => {
                self.drain(instance as usize % INSTANCES);
            }
            Action::Skip { instance, len } => {
                // `facteur import` keeping an old server's UID gaps, on
                // whatever instance, concurrently with clients.
                let i = instance as usize % INSTANCES;
                if !self.instances[i].partitioned {
                    let n = u32::from(len % 4) + 1;
                    self.put(i, MailboxOp::Skip(n), |_, _| Waiter::Drain {
                        records: vec![],
                    });
                }
            }
            Action::Copy { client, pick, len } => {
                let c = client as usize % CLIENTS;
                if let (Some(i), None) = (self.clients[c].instance, self.clients[c].busy) {
                    let uids = self.pick_uids(c, pick, len);
                    let state = self.state(i);
                    let news: Vec<NewMessage> = uids
                        .iter()
                        .filter_map(|u| state.message(*u))
                        .map(|m| NewMessage {
                            message: m.message.to_ref(),
                            flags: m.flags.iter().map(|f| f.to_string()).collect(),
                        })
                        .collect();
                    if !news.is_empty() {
                        let uids = self.claims_now(i, news.len());
                        let w = self.put(i, MailboxOp::CopyIn(news), |op, _| Waiter::Copy {
                            client: c,
                            placed: uids
                                .into_iter()
                                .zip(0..)
                                .map(|(uid, index)| (uid, MessageId { op, index }))
                                .collect(),
                        });
                        self.clients[c].busy = Some(w);
                    }
                }
            }
            Action::Store {
                client,
                pick,
                len,
                flag,
                set,
            } => {
                let c = client as usize % CLIENTS;
                if let (Some(i), None) = (self.clients[c].instance, self.clients[c].busy) {
                    let targets = self.state(i).resolve(&self.pick_uids(c, pick, len));
                    let flag = vec![FLAGS[flag as usize % FLAGS.len()].to_owned()];
                    let (set, clear) = if set { (flag, vec![]) } else { (vec![], flag) };
                    let body = MailboxOp::Store {
                        targets,
                        set,
                        clear,
                    };
                    let w = self.put(i, body, |_, _| Waiter::Change { client: c });
                    self.clients[c].busy = Some(w);
                }
            }
            Action::Expunge { client, pick, len } => {
                let c = client as usize % CLIENTS;
                if let (Some(i), None) = (self.clients[c].instance, self.clients[c].busy) {
                    let targets = self.state(i).resolve(&self.pick_uids(c, pick, len));
                    let w = self.put(i, MailboxOp::Expunge(targets), |_, _| Waiter::Change {
                        client: c,
                    });
                    self.clients[c].busy = Some(w);
                }
            }
            Action::Complete { pick } => {
                if let Some(w) = self.pick_write(pick, |w| w.put == PutState::InFlight)
                    && !self.instances[self.store[w].writer].partitioned
                {
                    self.ack(w)?;
                }
            }
            Action::Fail { pick, lands } => {
                if let Some(w) = self.pick_write(pick, |w| w.put == PutState::InFlight) {
                    let write = &mut self.store[w];
                    write.put = PutState::Failed;
                    // Maybe it reached a node before failing: it will
                    // land once its writer's side of a partition heals.
                    write.lands_later = lands;
                    if let Waiter::Append { client, .. }
                    | Waiter::Copy { client, .. }
                    | Waiter::Change { client } = write.waiter
                    {
                        self.clients[client].busy = None;
                    }
                }
            }
            Action::Land { pick } => {
                let landable = |w: &Write| {
                    w.put == PutState::InFlight || (w.put == PutState::Failed && w.lands_later)
                };
                if let Some(w) = self.pick_write(pick, |w| landable(w) && !w.durable)
                    && !self.instances[self.store[w].writer].partitioned
                {
                    if self.store[w].put == PutState::Failed {
                        count(&LATE_LANDINGS, 1);
                    }
                    self.store[w].durable = true;
                }
            }
            Action::Reveal { pick, instance } => {
                if let Some(w) = self.pick_write(pick, |w| w.durable) {
                    self.store[w].revealed[instance as usize % INSTANCES] = true;
                }
            }
            Action::Poll { instance } => self.poll(instance as usize % INSTANCES),
            Action::Partition { instance } => {
                self.instances[instance as usize % INSTANCES].partitioned = true
            }
            Action::Heal { instance } => {
                self.instances[instance as usize % INSTANCES].partitioned = false
            }
            Action::PlanFixUp { instance } => {
                let inst = &mut self.instances[instance as usize % INSTANCES];
                if inst.planned.is_none() && !inst.replica.state().displaced().is_empty() {
                    inst.planned = Some(inst.fixups_seen);
                }
            }
            Action::Restart { instance } => {
                let inst = &mut self.instances[instance as usize % INSTANCES];
                let snapshot = serde_json::to_vec(&inst.replica)
                    .map_err(|e| format!("writing a snapshot: {e}"))?;
                let restored: Replica<MailboxState> = serde_json::from_slice(&snapshot)
                    .map_err(|e| format!("reading a snapshot: {e}"))?;
                ensure!(
                    restored.state() == inst.replica.state(),
                    "I1: a snapshot read back gives another state"
                );
                inst.replica = restored;
                count(&RESTARTS, 1);
            }
            Action::RunFixUp { instance } => {
                let i = instance as usize % INSTANCES;
                if let Some(seen) = self.instances[i].planned.take() {
                    self.poll(i);
                    let inst = &self.instances[i];
                    // Another fix-up appeared meanwhile: it will do.
                    if inst.fixups_seen == seen
                        && let Some(fix) = inst.replica.state().fix_up()
                    {
                        self.put(i, fix, |_, _| Waiter::FixUp);
                    }
                }
            }
        }
        self.check_convergence()
    }

    /// Instance `i` drains `incoming/` (`mailbox::incoming::drain`): it
    /// lists the records, deletes those its state already holds, and
    /// writes one op placing the others; they are deleted once that op is
    /// durable. Returns the write, if any.
    fn drain(&mut self, i: usize) -> Option<usize> {
        if self.instances[i].partitioned {
            return None;
        }
        let state = self.instances[i].replica.state();
        let mut records = Vec::new();
        let mut deliveries = Vec::new();
        for (r, queued) in self.queue.iter_mut().enumerate() {
            if queued.deleted {
                continue;
            }
            if state.has_delivery(&queued.name) {
                queued.deleted = true;
            } else {
                records.push(r);
                deliveries.push(Delivery {
                    id: queued.name.clone(),
                    new: NewMessage {
                        message: queued.message.clone(),
                        flags: vec![],
                    },
                });
            }
        }
        (!deliveries.is_empty()).then(|| {
            self.put(i, MailboxOp::Deliver(deliveries), |_, _| Waiter::Drain {
                records,
            })
        })
    }

    /// The UIDs an op placing `n` messages, written now by instance `i`,
    /// claims (what APPENDUID / COPYUID will say once it is acknowledged).
    fn claims_now(&self, i: usize, n: usize) -> Vec<u32> {
        let replica = &self.instances[i].replica;
        replica.state().claims_for(&replica.dag().heads(), n)
    }

    /// Some UIDs from the client's last view.
    fn pick_uids(&self, c: usize, pick: u8, len: u8) -> Vec<u32> {
        let uids: Vec<u32> = self.clients[c].view_shown.keys().copied().collect();
        if uids.is_empty() {
            return Vec::new();
        }
        let start = pick as usize % uids.len();
        uids.iter()
            .cycle()
            .skip(start)
            .take(1 + len as usize % 3)
            .copied()
            .collect()
    }

    fn pick_write(&self, pick: u8, ok: impl Fn(&Write) -> bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.store.len())
            .filter(|w| ok(&self.store[*w]))
            .collect();
        (!candidates.is_empty()).then(|| candidates[pick as usize % candidates.len()])
    }

    /// Quiet: partitions healed, every PUT settled, every instance synced,
    /// fix-ups run until none is needed. Then I4 and I1 on the whole set.
    fn quiesce(&mut self) -> Check {
        for inst in &mut self.instances {
            inst.partitioned = false;
        }
        for w in 0..self.store.len() {
            match self.store[w].put {
                PutState::InFlight => self.ack(w)?,
                PutState::Failed if self.store[w].lands_later => self.store[w].durable = true,
                _ => {}
            }
        }
        // Some instance drains what is left in `incoming/`.
        self.full_sync(0);
        if let Some(w) = self.drain(0) {
            self.ack(w)?;
        }
        ensure!(
            self.queue.iter().all(|q| q.deleted),
            "I4: delivery records left in incoming/ after a drain"
        );
        let mut rounds = 0;
        loop {
            for i in 0..INSTANCES {
                self.full_sync(i);
            }
            self.check_convergence()?;
            let needy = (0..INSTANCES).find(|i| !self.state(*i).displaced().is_empty());
            let Some(i) = needy else { break };
            rounds += 1;
            ensure!(
                rounds <= 3,
                "I4: fix-ups did not converge in 3 quiet rounds"
            );
            let fix = self.state(i).fix_up().unwrap();
            let w = self.put(i, fix, |_, _| Waiter::FixUp);
            self.ack(w)?;
        }
        for c in 0..CLIENTS {
            if self.clients[c].busy.is_none() {
                self.clients[c].instance = Some(c % INSTANCES);
                self.observe(c)?;
            }
        }

        // I1, strongest form: a fresh replica fed the whole set backwards
        // (children before parents) computes the same state.
        let mut fresh = Replica::new(empty_state());
        for write in self.store.iter().rev().filter(|w| w.durable) {
            fresh.insert(write.id, write.envelope.clone());
        }
        ensure!(
            fresh.state() == self.state(0),
            "I1: a replica fed in reverse order differs"
        );

        // I4: every acknowledged message not expunged is shown exactly once.
        let state = self.state(0);
        let expunged: HashSet<MessageId> = self
            .store
            .iter()
            .filter(|w| w.durable)
            .filter_map(|w| match &w.envelope.body {
                MailboxOp::Expunge(targets) => Some(targets.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect();
        for message in &self.acked {
            if !expunged.contains(message) {
                ensure!(
                    state.uid_of(message).is_some(),
                    "I4: acknowledged {message:?} lost"
                );
            }
        }
        let mut ids = HashSet::new();
        for view in state.messages() {
            ensure!(ids.insert(view.id), "I4: {:?} shown twice", view.id);
        }
        // Whatever the ids: every append and delivery has its own blob, so
        // two shown messages sharing one (copies aside) are one message
        // shown twice, e.g. a record drained twice.
        let copies: HashSet<MessageId> = self
            .store
            .iter()
            .filter(|w| w.durable && matches!(w.envelope.body, MailboxOp::CopyIn(_)))
            .flat_map(|w| w.envelope.body.targets(w.id))
            .collect();
        let mut blobs = HashSet::new();
        for view in state.messages().filter(|v| !copies.contains(&v.id)) {
            ensure!(
                blobs.insert(view.message.blob_id()),
                "I4: blob {} shown twice",
                view.message.blob_id()
            );
        }

        // Records placed by more than one op (drained twice): still one
        // message each, checked above.
        let mut placements: HashMap<MessageId, usize> = HashMap::new();
        for write in self.store.iter().filter(|w| w.durable) {
            if let MailboxOp::Deliver(deliveries) = &write.envelope.body {
                for d in deliveries {
                    *placements.entry(MessageId::delivered(&d.id)).or_default() += 1;
                }
            }
        }
        count(
            &DRAINED_TWICE,
            placements.values().filter(|n| **n > 1).count() as u64,
        );

        let fixups: Vec<usize> = self
            .store
            .iter()
            .filter(|w| w.durable)
            .filter_map(|w| match &w.envelope.body {
                MailboxOp::FixUp(targets) => Some(targets.len()),
                _ => None,
            })
            .collect();
        count(&FIXUP_OPS, fixups.len() as u64);
        count(&RENUMBERED, fixups.iter().sum::<usize>() as u64);
        if !fixups.is_empty() {
            count(&CASES_WITH_CONFLICT, 1);
        }
        Ok(())
    }
}

// ---- Histories ----

#[derive(Clone, Debug)]
enum Action {
    Select {
        client: u8,
        instance: u8,
    },
    Noop {
        client: u8,
    },
    Append {
        client: u8,
        flag: u8,
    },
    Deliver {
        instance: u8,
    },
    Drain {
        instance: u8,
    },
    Skip {
        instance: u8,
        len: u8,
    },
    Copy {
        client: u8,
        pick: u8,
        len: u8,
    },
    Store {
        client: u8,
        pick: u8,
        len: u8,
        flag: u8,
        set: bool,
    },
    Expunge {
        client: u8,
        pick: u8,
        len: u8,
    },
    Complete {
        pick: u8,
    },
    Fail {
        pick: u8,
        lands: bool,
    },
    Land {
        pick: u8,
    },
    Reveal {
        pick: u8,
        instance: u8,
    },
    Poll {
        instance: u8,
    },
    Partition {
        instance: u8,
    },
    Heal {
        instance: u8,
    },
    PlanFixUp {
        instance: u8,
    },
    RunFixUp {
        instance: u8,
    },
    /// The instance restarts from a snapshot of its own replica: written,
    /// read back, and its ops waiting for parents forgotten (the next
    /// sync finds them again).
    Restart {
        instance: u8,
    },
}

fn action() -> impl Strategy<Value = Action> {
    let n = any::<u8>;
    prop_oneof![
        3 => (n(), n()).prop_map(|(client, instance)| Action::Select { client, instance }),
        2 => n().prop_map(|client| Action::Noop { client }),
        5 => (n(), n()).prop_map(|(client, flag)| Action::Append { client, flag }),
        2 => n().prop_map(|instance| Action::Deliver { instance }),
        2 => n().prop_map(|instance| Action::Drain { instance }),
        1 => (n(), n()).prop_map(|(instance, len)| Action::Skip { instance, len }),
        1 => (n(), n(), n()).prop_map(|(client, pick, len)| Action::Copy { client, pick, len }),
        3 => (n(), n(), n(), n(), any::<bool>())
            .prop_map(|(client, pick, len, flag, set)| Action::Store { client, pick, len, flag, set }),
        1 => (n(), n(), n()).prop_map(|(client, pick, len)| Action::Expunge { client, pick, len }),
        8 => n().prop_map(|pick| Action::Complete { pick }),
        1 => (n(), any::<bool>()).prop_map(|(pick, lands)| Action::Fail { pick, lands }),
        3 => n().prop_map(|pick| Action::Land { pick }),
        3 => (n(), n()).prop_map(|(pick, instance)| Action::Reveal { pick, instance }),
        3 => n().prop_map(|instance| Action::Poll { instance }),
        1 => n().prop_map(|instance| Action::Partition { instance }),
        1 => n().prop_map(|instance| Action::Heal { instance }),
        2 => n().prop_map(|instance| Action::PlanFixUp { instance }),
        2 => n().prop_map(|instance| Action::RunFixUp { instance }),
        1 => n().prop_map(|instance| Action::Restart { instance }),
    ]
}

fn run(skews: [i16; INSTANCES], actions: &[Action]) -> Check {
    count(&CASES, 1);
    let mut sim = Sim::new(skews);
    for (n, action) in actions.iter().enumerate() {
        sim.step(action)
            .map_err(|e| format!("step {n} ({action:?}): {e}"))?;
    }
    sim.quiesce().map_err(|e| format!("when quiet: {e}"))
}

#[test]
fn invariants_hold_over_random_histories() {
    let cases = std::env::var("FACTEUR_SIM_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = (
        prop::array::uniform3(-3_000i16..3_000),
        prop::collection::vec(action(), 1..120),
    );
    let result = runner.run(&strategy, |(skews, actions)| {
        run(skews, &actions).map_err(TestCaseError::fail)
    });
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "simulation: {} cases ({} asked), {} steps, {} client views, {} messages acknowledged; \
         violations: {}; UIDVALIDITY changes: {}; cases with a UID conflict: {}; fix-up ops: {}; \
         messages renumbered by fix-ups: {}; UIDs shown then lost to a conflict: {}; failed PUTs landing late: {}; \
         deliveries drained twice (one message each): {}; restarts from a snapshot: {}",
        get(&CASES),
        cases,
        get(&STEPS),
        get(&VIEWS),
        get(&ACKED),
        if result.is_ok() { 0 } else { 1 },
        get(&UIDVALIDITY_CHANGES),
        get(&CASES_WITH_CONFLICT),
        get(&FIXUP_OPS),
        get(&RENUMBERED),
        get(&SHOWN_THEN_DISPLACED),
        get(&LATE_LANDINGS),
        get(&DRAINED_TWICE),
        get(&RESTARTS),
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(get(&UIDVALIDITY_CHANGES), 0);
}

/// Found by the random histories: a delivery is shown at UID 1, a skip
/// written concurrently takes UID 1, and a QRESYNC client that saw UID 1
/// must find it in VANISHED (I5) although the message's MODSEQ did not
/// change.
#[test]
fn a_uid_taken_by_a_concurrent_skip_is_reported_vanished() {
    use Action::*;
    let actions = [
        Deliver { instance: 3 },
        Complete { pick: 0 },
        Skip {
            instance: 95,
            len: 0,
        },
        Select {
            client: 90,
            instance: 15,
        },
        Append {
            client: 194,
            flag: 0,
        },
        Complete { pick: 0 },
        Complete { pick: 0 },
        Select {
            client: 142,
            instance: 0,
        },
    ];
    run([0, 0, 0], &actions).unwrap();
}
