//! The pure state of one mailbox (DESIGN.md §4): its messages with UID,
//! flags, MODSEQ, and UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, computed from
//! the mailbox's op set, plus the lookups IMAP needs (UID ↔ sequence
//! number, by flag, CHANGEDSINCE and VANISHED of RFC 7162).
//!
//! Convergence (I1) by construction: every field is a function of the op
//! *set*, never of delivery order, so an op found late gives the state it
//! would have given in order, with no replay:
//!
//! - placement: a message exists iff an op placing it is present (a
//!   delivery drained twice is one message placed by two ops; if their
//!   descriptions differed, the smaller would win);
//! - UID claims: a union of claims, each a function of the op's causal
//!   past (`claims`); a message's UID is its highest claim if valid;
//! - flags: one last-writer-wins register per (message, flag), stamped
//!   with the op's position in the total order, merged by `max`;
//! - expunge: a grow-only set (expunge wins over concurrent changes);
//! - MODSEQ: `max` over the ops concerning the message of their sequence
//!   number, which the DAG keeps equal to `|S| - |descendants|`;
//!   HIGHESTMODSEQ is `|S|`.
//!
//! Everything else ([`Index`]) is derived from those and rebuilt after a
//! snapshot is read.
//!
//! Message summaries (ENVELOPE, BODYSTRUCTURE, header bytes: most of what
//! ops carry) are not part of the state's meaning and are not kept in
//! memory for long: a message's summary is held (in its [`MessageRef`])
//! from the op that placed it until the next snapshot, which first writes
//! the held summaries into immutable *summary pages* (side objects of the
//! log, `<mailbox>/side/`) and records here which page holds each
//! ([`MailboxState::paged_out`]). Readers then fetch pages on demand
//! (`account::mailbox`). Where a summary lives differs between instances
//! holding the same op set, so it is left out of equality.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::claims::{Claims, UidClock, first_claims};
use super::op::{MailboxOp, MessageId, MessageRef, NewMessage};
use crate::log::{OpId, OpMeta, OrderKey, State};

/// A last-writer-wins register for one flag of one message: 48 bytes, in
/// a small vector per message (a `BTreeMap<String, _>` of `OrderKey`s
/// took about a kilobyte per message).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct FlagReg {
    /// The flag, interned in [`Core::flag_names`].
    #[serde(rename = "f")]
    flag: u32,
    #[serde(rename = "s")]
    set: bool,
    /// The writing op's position in the total order: a causal successor
    /// always has a higher one, so a later STORE the writer saw wins, and
    /// concurrent STOREs are decided the same way everywhere.
    #[serde(rename = "t")]
    stamp: Stamp,
}

/// An [`OrderKey`] with its instance interned in [`Core::instances`].
/// Compared through [`stamp_cmp`], which compares instance names,
/// so the order is the same on every instance whatever the interning.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Stamp {
    hlc: crate::log::Hlc,
    instance: u32,
    id: OpId,
}

/// Strings interned by one state: each is stored once, and registers hold
/// its index. Indexes depend on the order strings were met, so they are
/// meaningful only inside one state (and its snapshot).
#[derive(Clone, Debug, Default)]
struct Interned {
    names: Vec<Box<str>>,
    index: HashMap<Box<str>, u32>,
}

impl Interned {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(i) = self.index.get(name) {
            return *i;
        }
        let i = self.names.len() as u32;
        self.names.push(name.into());
        self.index.insert(name.into(), i);
        i
    }

    fn name(&self, i: u32) -> &str {
        self.names.get(i as usize).map_or("", |n| n)
    }
}

impl Serialize for Interned {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Interned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Interned, D::Error> {
        let names = Vec::<Box<str>>::deserialize(d)?;
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        Ok(Interned { names, index })
    }
}

/// Everything known about one message id. An entry can exist before (or
/// without) the op placing the message, if a malformed op names it; it is
/// then never shown.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Entry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<MessageRef>,
    /// UID values claimed for this message, ascending.
    claims: ClaimList,
    /// One register per flag ever written, in the order first written.
    flags: Vec<FlagReg>,
    expunged: bool,
    /// Wall-clock time (ms) of the earliest expunge of this message: blob
    /// collection waits a grace period after it, so that an instance that
    /// has not yet seen the expunge cannot copy a body being deleted. The
    /// minimum over expunge ops keeps `apply` order-independent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expunged_ms: Option<u64>,
    /// Highest sequence number of an op concerning this message.
    modseq: u64,
    /// The UID it is shown with, if shown: part of the index (derived
    /// from the claims), kept here to spare a table.
    #[serde(skip)]
    shown: Option<u32>,
}

/// What identifies a placed message's description, summary aside: the
/// summary is a function of the body, and may have been paged out.
fn ref_key(m: &MessageRef) -> (&str, &super::op::BodyKey, u64, i64) {
    (&m.blob_id, &m.body_key, m.size, m.internal_date)
}

/// A message's UID claims, ascending, each once: almost always one,
/// held inline (a `Vec` would allocate for it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum ClaimList {
    #[default]
    None,
    One(u32),
    /// At least two.
    Many(Box<[u32]>),
}

impl ClaimList {
    fn as_slice(&self) -> &[u32] {
        match self {
            ClaimList::None => &[],
            ClaimList::One(v) => std::slice::from_ref(v),
            ClaimList::Many(vs) => vs,
        }
    }

    fn insert(&mut self, value: u32) {
        let mut all = self.as_slice().to_vec();
        if let Err(at) = all.binary_search(&value) {
            all.insert(at, value);
            *self = ClaimList::from(all);
        }
    }
}

impl From<Vec<u32>> for ClaimList {
    fn from(mut values: Vec<u32>) -> ClaimList {
        values.sort_unstable();
        values.dedup();
        match values.as_slice() {
            [] => ClaimList::None,
            [v] => ClaimList::One(*v),
            _ => ClaimList::Many(values.into_boxed_slice()),
        }
    }
}

impl Serialize for ClaimList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(s)
    }
}

impl<'de> Deserialize<'de> for ClaimList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ClaimList, D::Error> {
        Vec::<u32>::deserialize(d).map(ClaimList::from)
    }
}

impl Entry {
    fn top_claim(&self) -> Option<u32> {
        self.claims.as_slice().last().copied()
    }

    fn is_live(&self) -> bool {
        self.message.is_some() && !self.expunged
    }
}

/// The part of the state that a snapshot stores.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Core {
    /// Flag names and instance ids of the registers.
    flag_names: Interned,
    instances: Interned,
    uid_validity: u32,
    /// `|S|`: the number of ops applied.
    highest_modseq: u64,
    /// Set if an op's claims did not fit in 32 bits.
    uid_space_exhausted: bool,
    /// Boxed: an entry is about 180 bytes, and a hash table keeps an
    /// eighth to a half of its buckets empty.
    entries: HashMap<MessageId, Box<Entry>>,
    uid_clock: UidClock,
    /// Messages each op concerns, so that when an op's sequence number
    /// grows (a concurrent op arrived), its messages' MODSEQ follows.
    op_targets: HashMap<OpId, Targets>,
}

/// The total order of [`OrderKey`], on stamps.
fn stamp_cmp(instances: &Interned, a: &Stamp, b: &Stamp) -> std::cmp::Ordering {
    a.hlc
        .cmp(&b.hlc)
        .then_with(|| instances.name(a.instance).cmp(instances.name(b.instance)))
        .then_with(|| a.id.cmp(&b.id))
}

impl Core {
    /// An entry's registers with names instead of interned indexes,
    /// sorted: what equality compares.
    fn flags_of<'a>(
        &'a self,
        e: &'a Entry,
    ) -> Vec<(&'a str, bool, crate::log::Hlc, &'a str, OpId)> {
        let mut flags: Vec<_> = e
            .flags
            .iter()
            .map(|r| {
                (
                    self.flag_names.name(r.flag),
                    r.set,
                    r.stamp.hlc,
                    self.instances.name(r.stamp.instance),
                    r.stamp.id,
                )
            })
            .collect();
        flags.sort_unstable();
        flags
    }

    fn entry_eq(&self, a: &Entry, other: &Core, b: &Entry) -> bool {
        let same_message = match (&a.message, &b.message) {
            (Some(x), Some(y)) => ref_key(x) == ref_key(y),
            (None, None) => true,
            _ => false,
        };
        same_message
            && a.claims == b.claims
            && a.expunged == b.expunged
            && a.expunged_ms == b.expunged_ms
            && a.modseq == b.modseq
            && self.flags_of(a) == other.flags_of(b)
    }
}

/// Equality of what the op set means: summaries (which may be paged out)
/// and interned indexes (which depend on arrival order) aside.
impl PartialEq for Core {
    fn eq(&self, other: &Core) -> bool {
        self.uid_validity == other.uid_validity
            && self.highest_modseq == other.highest_modseq
            && self.uid_space_exhausted == other.uid_space_exhausted
            && self.uid_clock == other.uid_clock
            && self.op_targets == other.op_targets
            && self.entries.len() == other.entries.len()
            && self.entries.iter().all(|(id, a)| {
                other
                    .entries
                    .get(id)
                    .is_some_and(|b| self.entry_eq(a, other, b))
            })
    }
}

impl Eq for Core {}

/// The messages an op concerns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Targets {
    /// The messages it placed itself, `(op, 0)` to `(op, n - 1)`: appends
    /// and copies, most ops, with nothing to allocate.
    Placed(u32),
    Listed(Box<[MessageId]>),
}

impl Targets {
    fn of(op: OpId, targets: Vec<MessageId>) -> Targets {
        let placed = targets
            .iter()
            .enumerate()
            .all(|(i, t)| t.op == op && t.index as usize == i);
        match u32::try_from(targets.len()) {
            Ok(n) if placed => Targets::Placed(n),
            _ => Targets::Listed(targets.into_boxed_slice()),
        }
    }

    fn ids(&self, op: OpId) -> Vec<MessageId> {
        match self {
            Targets::Placed(n) => (0..*n).map(|index| MessageId { op, index }).collect(),
            Targets::Listed(ids) => ids.to_vec(),
        }
    }
}

/// Lookup structures derived from [`Core`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Index {
    claims: Claims,
    /// UID → message, for shown messages.
    shown: BTreeMap<u32, MessageId>,
    /// Shown UIDs ascending: sequence number `n` is `uids[n - 1]`.
    uids: Vec<u32>,
    /// Live messages with no valid UID, waiting for a fix-up.
    displaced: BTreeSet<MessageId>,
    by_modseq: BTreeSet<(u64, MessageId)>,
    /// Flag → messages whose register for it is set.
    by_flag: BTreeMap<String, BTreeSet<MessageId>>,
}

/// Which summary page holds each paged message's summary.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Pages {
    /// Page names (side objects of the log), by page number.
    names: Vec<String>,
    /// Paged message → page number.
    at: HashMap<MessageId, u32>,
    /// Bytes of summaries held in memory (in `Entry::message`).
    #[serde(skip)]
    held_bytes: usize,
}

/// Where a message's summary is (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SummaryAt<'a> {
    /// In memory: the op placing it was applied after the last snapshot.
    Held(&'a [u8]),
    /// In this summary page.
    Page(&'a str),
    /// Nowhere known (not placed, or a snapshot written by an older
    /// version): the body must be summarised again.
    Unknown,
}

/// Summaries held in memory above which a snapshot (which pages them
/// out) is wanted, whatever the op count.
pub const HELD_SUMMARY_BYTES: usize = 2 << 20;

/// A mailbox's state. See the module doc for why it converges.
#[derive(Clone, Debug)]
pub struct MailboxState {
    core: Core,
    index: Index,
    pages: Pages,
}

impl PartialEq for MailboxState {
    fn eq(&self, other: &MailboxState) -> bool {
        self.core == other.core && self.index == other.index
    }
}

impl Eq for MailboxState {}

/// A shown message, as IMAP sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageView<'a> {
    pub id: MessageId,
    pub uid: u32,
    /// RFC 7162 §3.1.1 MODSEQ.
    pub modseq: u64,
    pub message: &'a MessageRef,
    /// Flags currently set, sorted.
    pub flags: Vec<&'a str>,
}

impl MailboxState {
    /// The state of an empty mailbox. UIDVALIDITY comes from the mailbox
    /// list (a recreated name gets a new one) and never changes here.
    pub fn new(uid_validity: u32) -> Self {
        let core = Core {
            flag_names: Interned::default(),
            instances: Interned::default(),
            uid_validity,
            highest_modseq: 0,
            uid_space_exhausted: false,
            entries: HashMap::new(),
            uid_clock: UidClock::default(),
            op_targets: HashMap::new(),
        };
        MailboxState {
            core,
            index: Index::default(),
            pages: Pages::default(),
        }
    }

    // ---- IMAP status items (RFC 9051 §7.3.1, RFC 7162 §3.1.2) ----

    pub fn uid_validity(&self) -> u32 {
        self.core.uid_validity
    }

    /// UIDNEXT: above every claim ever made, valid or not, so it never
    /// decreases and a UID once shown is never handed out again. It is
    /// also exactly the UID an append written now will claim.
    pub fn uid_next(&self) -> u32 {
        self.index.claims.max().saturating_add(1)
    }

    /// HIGHESTMODSEQ: the number of ops in the set. Every op found later,
    /// however late, gets a MODSEQ above it (see `log::dag`), so
    /// CHANGEDSINCE with a value a client saw misses nothing (I5).
    pub fn highest_modseq(&self) -> u64 {
        self.core.highest_modseq
    }

    /// EXISTS: the number of shown messages.
    pub fn exists(&self) -> u32 {
        self.index.uids.len() as u32
    }

    /// Whether some op claimed past UID 2^32 - 1; then messages stay
    /// displaced and the mailbox needs a new UIDVALIDITY.
    pub fn uid_space_exhausted(&self) -> bool {
        self.core.uid_space_exhausted
    }

    // ---- Messages ----

    /// UID of message sequence number `seq` (1-based, RFC 9051 §2.3.1.2).
    pub fn uid_at(&self, seq: u32) -> Option<u32> {
        let at = usize::try_from(seq).ok()?.checked_sub(1)?;
        self.index.uids.get(at).copied()
    }

    /// Sequence number of a shown UID.
    pub fn seq_of(&self, uid: u32) -> Option<u32> {
        self.index
            .uids
            .binary_search(&uid)
            .ok()
            .map(|at| at as u32 + 1)
    }

    pub fn message_id(&self, uid: u32) -> Option<MessageId> {
        self.index.shown.get(&uid).copied()
    }

    /// Whether a delivery record was already placed in this mailbox (shown,
    /// displaced or expunged since): draining it again would change
    /// nothing, so the drainer only deletes the record.
    pub fn has_delivery(&self, delivery_id: &str) -> bool {
        self.core
            .entries
            .get(&MessageId::delivered(delivery_id))
            .is_some_and(|e| e.message.is_some())
    }

    /// The UID a message is shown with, if it is shown.
    pub fn uid_of(&self, id: &MessageId) -> Option<u32> {
        self.core.entries.get(id).and_then(|e| e.shown)
    }

    pub fn message(&self, uid: u32) -> Option<MessageView<'_>> {
        let id = self.index.shown.get(&uid)?;
        self.view(*id, uid)
    }

    /// Shown messages in UID (= sequence) order.
    pub fn messages(&self) -> impl Iterator<Item = MessageView<'_>> + '_ {
        self.index
            .shown
            .iter()
            .filter_map(|(uid, id)| self.view(*id, *uid))
    }

    fn view(&self, id: MessageId, uid: u32) -> Option<MessageView<'_>> {
        let entry = self.core.entries.get(&id)?;
        let mut flags: Vec<&str> = entry
            .flags
            .iter()
            .filter(|r| r.set)
            .map(|r| self.core.flag_names.name(r.flag))
            .collect();
        flags.sort_unstable();
        Some(MessageView {
            id,
            uid,
            modseq: entry.modseq,
            message: entry.message.as_ref()?,
            flags,
        })
    }

    /// Message ids of the shown UIDs among `uids`; others are ignored, as
    /// UID commands ignore UIDs that do not exist (RFC 9051 §6.4.9).
    pub fn resolve(&self, uids: &[u32]) -> Vec<MessageId> {
        uids.iter().filter_map(|u| self.message_id(*u)).collect()
    }

    /// Blob ids a body collector must keep: those of messages placed and
    /// not expunged (shown or displaced), and of messages expunged at or
    /// after `since_ms` (wall clock), which a lagging instance may still
    /// copy.
    pub fn blobs_in_use(&self, since_ms: u64) -> impl Iterator<Item = &str> + '_ {
        self.core.entries.values().filter_map(move |e| {
            let message = e.message.as_ref()?;
            let keep = !e.expunged || e.expunged_ms.is_none_or(|t| t >= since_ms);
            keep.then_some(message.blob_id.as_str())
        })
    }

    /// Shown UIDs whose `flag` is set, ascending.
    pub fn uids_with_flag(&self, flag: &str) -> Vec<u32> {
        let Some(ids) = self.index.by_flag.get(flag) else {
            return Vec::new();
        };
        let mut uids: Vec<u32> = ids.iter().filter_map(|id| self.uid_of(id)).collect();
        uids.sort_unstable();
        uids
    }

    /// Shown UIDs whose MODSEQ is above `modseq`, ascending: the messages
    /// `FETCH ... (CHANGEDSINCE modseq)` reports (RFC 7162 §3.1.4.1).
    pub fn changed_since(&self, modseq: u64) -> Vec<u32> {
        let mut uids: Vec<u32> = self
            .changed_ids(modseq)
            .filter_map(|id| self.uid_of(&id))
            .collect();
        uids.sort_unstable();
        uids
    }

    /// UIDs that stopped naming a shown message after `modseq`, ascending:
    /// what `VANISHED (EARLIER)` reports (RFC 7162 §3.2.5.1). Covers
    /// expunged messages and UIDs lost to a duplicate claim or left by a
    /// fix-up. May include UIDs a given client never saw, which RFC 7162
    /// allows.
    pub fn vanished_since(&self, modseq: u64) -> Vec<u32> {
        let mut uids = Vec::new();
        for id in self.changed_ids(modseq) {
            let Some(entry) = self.core.entries.get(&id) else {
                continue;
            };
            let shown = self.uid_of(&id);
            uids.extend(
                entry
                    .claims
                    .as_slice()
                    .iter()
                    .filter(|c| Some(**c) != shown),
            );
        }
        uids.sort_unstable();
        uids.dedup();
        uids
    }

    fn changed_ids(&self, modseq: u64) -> impl Iterator<Item = MessageId> + '_ {
        let from = (
            modseq.saturating_add(1),
            MessageId {
                op: OpId::from_raw([0; 16]),
                index: 0,
            },
        );
        self.index.by_modseq.range(from..).map(|(_, id)| *id)
    }

    // ---- Summaries ----

    /// Where the summary of message `id` is.
    pub fn summary_at(&self, id: &MessageId) -> SummaryAt<'_> {
        let Some(message) = self.core.entries.get(id).and_then(|e| e.message.as_ref()) else {
            return SummaryAt::Unknown;
        };
        if let Some(page) = self.pages.at.get(id)
            && let Some(name) = self.pages.names.get(*page as usize)
        {
            return SummaryAt::Page(name);
        }
        if message.summary.is_empty() {
            SummaryAt::Unknown
        } else {
            SummaryAt::Held(&message.summary)
        }
    }

    /// Summaries held in memory, of messages placed and not expunged, in
    /// UID order (displaced messages last): what the next summary pages
    /// hold.
    pub fn held_summaries(&self) -> Vec<(MessageId, Vec<u8>)> {
        let held = |id: &MessageId| match self.summary_at(id) {
            SummaryAt::Held(bytes) => Some((*id, bytes.to_vec())),
            _ => None,
        };
        let mut out: Vec<(MessageId, Vec<u8>)> =
            self.index.shown.values().filter_map(held).collect();
        out.extend(self.index.displaced.iter().filter_map(held));
        out
    }

    /// Bytes of summaries held in memory.
    pub fn held_summary_bytes(&self) -> usize {
        self.pages.held_bytes
    }

    /// Records summary pages written to the store (page name, messages it
    /// holds) and drops those summaries from memory. Pages no live
    /// message refers to any more are forgotten. Bookkeeping only: what
    /// the state means is unchanged.
    pub fn paged_out(&mut self, pages: Vec<(String, Vec<MessageId>)>) {
        for (name, ids) in pages {
            let page = self.pages.names.len() as u32;
            self.pages.names.push(name);
            for id in ids {
                let Some(message) = self
                    .core
                    .entries
                    .get_mut(&id)
                    .and_then(|e| e.message.as_mut())
                else {
                    continue;
                };
                self.pages.held_bytes = self.pages.held_bytes.saturating_sub(message.summary.len());
                message.summary = Vec::new();
                self.pages.at.insert(id, page);
            }
        }
        // Forget expunged messages' pages (and pages a damaged snapshot
        // numbered wrong), then unreferenced pages.
        let entries = &self.core.entries;
        let count = self.pages.names.len();
        self.pages.at.retain(|id, page| {
            (*page as usize) < count && entries.get(id).is_some_and(|e| e.is_live())
        });
        let mut used = vec![false; self.pages.names.len()];
        for page in self.pages.at.values() {
            used[*page as usize] = true;
        }
        let mut renumber = Vec::with_capacity(used.len());
        let mut names = Vec::new();
        for (name, used) in std::mem::take(&mut self.pages.names).into_iter().zip(used) {
            renumber.push(names.len() as u32);
            if used {
                names.push(name);
            }
        }
        self.pages.names = names;
        for page in self.pages.at.values_mut() {
            *page = renumber[*page as usize];
        }
        self.pages.names.shrink_to_fit();
        self.pages.at.shrink_to_fit();
    }

    /// Forgets summary pages found missing from the store (collected
    /// while this state still referred to them): their messages' summaries
    /// become unknown, to be computed again and held.
    pub fn pages_lost(&mut self, names: &[String]) {
        let lost: BTreeSet<u32> = self
            .pages
            .names
            .iter()
            .enumerate()
            .filter(|(_, n)| names.contains(n))
            .map(|(i, _)| i as u32)
            .collect();
        if !lost.is_empty() {
            self.pages.at.retain(|_, page| !lost.contains(page));
        }
    }

    /// Holds summaries computed again (see [`MailboxState::pages_lost`])
    /// for live messages that have none, so the next snapshot pages them.
    pub fn hold_summaries(&mut self, summaries: Vec<(MessageId, Vec<u8>)>) {
        for (id, summary) in summaries {
            if self.pages.at.contains_key(&id) {
                continue;
            }
            let Some(entry) = self.core.entries.get_mut(&id) else {
                continue;
            };
            if !entry.is_live() {
                continue;
            }
            if let Some(message) = entry.message.as_mut()
                && message.summary.is_empty()
            {
                self.pages.held_bytes += summary.len();
                message.summary = summary;
            }
        }
    }

    /// Names of the summary pages this state refers to.
    pub fn summary_pages(&self) -> &[String] {
        &self.pages.names
    }

    // ---- Claims and fix-ups ----

    /// Live messages without a valid UID, in the order a fix-up should
    /// re-claim them (old UID order, so their relative order survives).
    pub fn displaced(&self) -> Vec<MessageId> {
        let mut ids: Vec<(Option<u32>, MessageId)> = self
            .index
            .displaced
            .iter()
            .map(|id| (self.core.entries.get(id).and_then(|e| e.top_claim()), *id))
            .collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// The fix-up op to write, if any message is displaced. An instance
    /// should wait a short random delay, sync, and write it only if no
    /// other fix-up appeared meanwhile (DESIGN.md §4).
    pub fn fix_up(&self) -> Option<MailboxOp> {
        let displaced = self.displaced();
        (!displaced.is_empty()).then_some(MailboxOp::FixUp(displaced))
    }

    /// The UIDs an op placing `count` messages, written with `parents`,
    /// claims: what APPENDUID / COPYUID report (RFC 4315) once its PUT is
    /// acknowledged. Empty if they would not fit in 32 bits.
    pub fn claims_for(&self, parents: &[OpId], count: usize) -> Vec<u32> {
        let past = self.core.uid_clock.past(parents);
        first_claims(past, count).map_or_else(Vec::new, |r| r.collect())
    }

    // ---- Applying ops ----

    fn entry(&mut self, id: MessageId) -> &mut Entry {
        self.core.entries.entry(id).or_default()
    }

    fn place(&mut self, id: MessageId, new: &NewMessage, stamp: &OrderKey) {
        // Only a delivery drained twice places one id twice; both copies
        // come from one record, so they agree. Should they ever differ,
        // the smaller wins, which keeps `apply` order-independent.
        let paged = self.pages.at.contains_key(&id);
        let entry = self.core.entries.entry(id).or_default();
        let replace = entry
            .message
            .as_ref()
            .is_none_or(|m| ref_key(&new.message) < ref_key(m));
        if replace {
            let mut message = new.message.clone();
            let old = entry.message.as_ref().map_or(0, |m| m.summary.len());
            if entry.expunged {
                message.summary = Vec::new();
            }
            let added = message.summary.len();
            entry.message = Some(message);
            self.pages.held_bytes = self.pages.held_bytes.saturating_sub(old) + added;
            if paged {
                // The page holds the description replaced.
                self.pages.at.remove(&id);
            }
        }
        for flag in &new.flags {
            self.write_flag(id, flag, true, stamp);
        }
    }

    fn write_flag(&mut self, id: MessageId, flag: &str, set: bool, stamp: &OrderKey) {
        let Core {
            entries,
            instances,
            flag_names,
            ..
        } = &mut self.core;
        let stamp = Stamp {
            hlc: stamp.hlc,
            instance: instances.intern(stamp.instance.as_str()),
            id: stamp.id,
        };
        let flag_index = flag_names.intern(flag);
        let entry = entries.entry(id).or_default();
        match entry.flags.iter_mut().find(|r| r.flag == flag_index) {
            Some(register) => {
                if stamp_cmp(instances, &register.stamp, &stamp).is_ge() {
                    return;
                }
                register.stamp = stamp;
                register.set = set;
            }
            None => {
                // Exact capacity: most messages have one or two flags.
                entry.flags.reserve_exact(1);
                entry.flags.push(FlagReg {
                    flag: flag_index,
                    set,
                    stamp,
                });
            }
        }
        if set {
            self.index
                .by_flag
                .entry(flag.to_owned())
                .or_default()
                .insert(id);
        } else if let Some(holders) = self.index.by_flag.get_mut(flag) {
            holders.remove(&id);
            if holders.is_empty() {
                self.index.by_flag.remove(flag);
            }
        }
    }

    fn raise_modseq(&mut self, id: MessageId, seq: u64) {
        let entry = self.core.entries.entry(id).or_default();
        if seq > entry.modseq {
            self.index.by_modseq.remove(&(entry.modseq, id));
            entry.modseq = seq;
            self.index.by_modseq.insert((seq, id));
        }
    }

    /// Recomputes whether and where message `id` is shown.
    fn refresh(&mut self, id: MessageId) {
        let entry = self.core.entries.get(&id);
        let live = entry.is_some_and(|e| e.is_live());
        let want = entry
            .filter(|e| e.is_live())
            .and_then(|e| e.top_claim())
            .filter(|uid| self.index.claims.is_sole(*uid, &id));
        let now = entry.and_then(|e| e.shown);
        let index = &mut self.index;
        if now != want {
            if let Some(old) = now {
                index.shown.remove(&old);
                if let Ok(at) = index.uids.binary_search(&old) {
                    index.uids.remove(at);
                }
            }
            if let Some(new) = want {
                index.shown.insert(new, id);
                if let Err(at) = index.uids.binary_search(&new) {
                    index.uids.insert(at, new);
                }
            }
            if let Some(entry) = self.core.entries.get_mut(&id) {
                entry.shown = want;
            }
        }
        if live && want.is_none() {
            index.displaced.insert(id);
        } else {
            index.displaced.remove(&id);
        }
    }

    /// Rebuilds the index from the core (after reading a snapshot).
    fn from_core(core: Core, mut pages: Pages) -> Self {
        pages.held_bytes = core
            .entries
            .values()
            .filter_map(|e| e.message.as_ref())
            .map(|m| m.summary.len())
            .sum();
        let mut state = MailboxState {
            core,
            index: Index::default(),
            pages,
        };
        // Decoding grows vectors by doubling; the state keeps them long.
        for entry in state.core.entries.values_mut() {
            entry.flags.shrink_to_fit();
        }
        let ids: Vec<MessageId> = state.core.entries.keys().copied().collect();
        for id in &ids {
            let entry = &state.core.entries[id];
            for claim in entry.claims.as_slice() {
                state.index.claims.add(*claim, *id);
            }
            for register in entry.flags.iter().filter(|r| r.set) {
                let flag = state.core.flag_names.name(register.flag);
                state
                    .index
                    .by_flag
                    .entry(flag.to_owned())
                    .or_default()
                    .insert(*id);
            }
            if entry.modseq > 0 {
                state.index.by_modseq.insert((entry.modseq, *id));
            }
        }
        for id in ids {
            state.refresh(id);
        }
        state.index.claims.shrink_to_fit();
        state
    }
}

impl State for MailboxState {
    type Op = MailboxOp;

    fn apply(&mut self, op: &MailboxOp, meta: &OpMeta) {
        let targets = op.targets(meta.id);
        let mut touched: BTreeSet<MessageId> = targets.iter().copied().collect();

        // UID claims: one per target, for the ops that make claims.
        let count = op.claim_count();
        let claims = self.core.uid_clock.record(meta.id, &meta.parents, count);
        match claims {
            Some(values) if count > 0 => {
                for (value, id) in values.zip(&targets) {
                    let entry = self.entry(*id);
                    entry.claims.insert(value);
                    touched.extend(self.index.claims.add(value, *id));
                }
            }
            Some(_) => {}
            None => self.core.uid_space_exhausted = true,
        }

        match op {
            MailboxOp::Append(new) => {
                if let Some(id) = targets.first() {
                    self.place(*id, new, &meta.key);
                }
            }
            MailboxOp::CopyIn(news) => {
                for (id, new) in targets.iter().zip(news) {
                    self.place(*id, new, &meta.key);
                }
            }
            MailboxOp::Deliver(deliveries) => {
                for (id, delivery) in targets.iter().zip(deliveries) {
                    self.place(*id, &delivery.new, &meta.key);
                }
            }
            MailboxOp::Store { set, clear, .. } => {
                for id in &targets {
                    // A flag both set and cleared by one op ends cleared.
                    for flag in set.iter().filter(|f| !clear.contains(f)) {
                        self.write_flag(*id, flag, true, &meta.key);
                    }
                    for flag in clear {
                        self.write_flag(*id, flag, false, &meta.key);
                    }
                }
            }
            MailboxOp::Expunge(_) => {
                let at = meta.key.hlc.wall_ms;
                for id in &targets {
                    let entry = self.core.entries.entry(*id).or_default();
                    entry.expunged = true;
                    entry.expunged_ms = Some(entry.expunged_ms.map_or(at, |t| t.min(at)));
                    // An expunged message's summary is never read again.
                    if let Some(message) = entry.message.as_mut() {
                        self.pages.held_bytes =
                            self.pages.held_bytes.saturating_sub(message.summary.len());
                        message.summary = Vec::new();
                    }
                }
            }
            MailboxOp::FixUp(_) => {}
        }

        for id in &targets {
            self.raise_modseq(*id, meta.seq);
        }
        self.core
            .op_targets
            .insert(meta.id, Targets::of(meta.id, targets));
        self.core.highest_modseq = self.core.highest_modseq.max(meta.seq);
        for id in touched {
            self.refresh(id);
        }
    }

    fn side_objects(&self) -> Vec<String> {
        self.pages.names.clone()
    }

    fn wants_snapshot(&self) -> bool {
        self.pages.held_bytes > HELD_SUMMARY_BYTES
    }

    fn reseq(&mut self, op: &OpId, seq: u64) {
        let Some(targets) = self.core.op_targets.get(op) else {
            return;
        };
        for id in targets.ids(*op) {
            self.raise_modseq(id, seq);
        }
    }
}

/// A snapshot's form of the state: the core and the page map; the index
/// is rebuilt on load.
#[derive(Serialize)]
struct StoredRef<'a> {
    core: &'a Core,
    pages: &'a Pages,
}

#[derive(Deserialize)]
struct Stored {
    core: Core,
    #[serde(default)]
    pages: Pages,
}

impl Serialize for MailboxState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        StoredRef {
            core: &self.core,
            pages: &self.pages,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for MailboxState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MailboxState, D::Error> {
        Stored::deserialize(d).map(|s| MailboxState::from_core(s.core, s.pages))
    }
}
