//! The pure state of one mailbox (doc/consistency.md, "The op set"): its
//! messages with UID, flags, MODSEQ, and UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ,
//! computed from the mailbox's op set, plus the lookups IMAP needs (UID ↔
//! sequence number, by flag, CHANGEDSINCE and VANISHED of RFC 7162).
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
//! Memory: an open mailbox of 10,000 messages must fit in a few MiB, so
//! the layout is dense (doc/performance.md). Entries live in one table
//! in arrival order and everything else names a message by its *slot* in
//! it (4 bytes) rather than by its 20-byte [`MessageId`]; blob ids are
//! held as bytes; lookups that only a few commands need (by flag, by
//! MODSEQ) scan the table instead of keeping an index. Slots depend on
//! arrival order, so they never leave the state: equality and snapshots
//! speak of message ids.
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

use std::collections::{BTreeSet, HashMap};

use indexmap::IndexMap;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::claims::{Claims, LOST, Slot, first_claims};
use super::op::{BodyKey, MailboxOp, MessageId, MessageRef, NewMessage};
use crate::log::{Hlc, OpId, OpMeta, OrderKey, State, reserve_gently};

/// A last-writer-wins register for one flag of one message: 40 bytes, in
/// a boxed slice per message.
#[derive(Clone, Copy, Debug)]
struct FlagReg {
    /// The writing op's position in the total order (clock, instance
    /// interned in [`Core::instances`], op id): a causal successor always
    /// has a higher one, so a later STORE the writer saw wins, and
    /// concurrent STOREs are decided the same way everywhere.
    wall_ms: u64,
    counter: u32,
    instance: u32,
    /// The flag, interned in [`Core::flag_names`].
    flag: u32,
    id: OpId,
    set: bool,
}

impl FlagReg {
    fn hlc(&self) -> Hlc {
        Hlc {
            wall_ms: self.wall_ms,
            counter: self.counter,
        }
    }
}

/// The total order of [`OrderKey`], on registers: instance names are
/// compared, not their interned indexes, so the order is the same on
/// every instance.
fn stamp_cmp(instances: &Interned, a: &FlagReg, b: &FlagReg) -> std::cmp::Ordering {
    a.hlc()
        .cmp(&b.hlc())
        .then_with(|| instances.name(a.instance).cmp(instances.name(b.instance)))
        .then_with(|| a.id.cmp(&b.id))
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

    fn get(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
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

/// A blob id as held in memory: the 22 bytes behind the 44 hex digits of
/// `layout::new_blob_id`, or the text itself for any other form.
#[derive(Clone, Debug, PartialEq, Eq)]
enum BlobName {
    Hex([u8; 22]),
    Text(Box<str>),
}

impl BlobName {
    fn new(id: &str) -> BlobName {
        let lower_hex =
            id.len() == 44 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let mut raw = [0u8; 22];
        if lower_hex && hex::decode_to_slice(id, &mut raw).is_ok() {
            BlobName::Hex(raw)
        } else {
            BlobName::Text(id.into())
        }
    }

    fn text(&self) -> String {
        match self {
            BlobName::Hex(raw) => hex::encode(raw),
            BlobName::Text(text) => text.to_string(),
        }
    }
}

/// What the state keeps of a placed message (the op's [`MessageRef`]
/// without its summary, which lives in a page or in [`Pages::held`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    blob: BlobName,
    /// The key the body object is sealed under.
    pub body_key: BodyKey,
    /// RFC822.SIZE (RFC 9051 §7.5.2).
    pub size: u64,
    /// INTERNALDATE, seconds since the Unix epoch (RFC 9051 §2.3.3).
    pub internal_date: i64,
}

impl StoredMessage {
    fn of(m: &MessageRef) -> StoredMessage {
        StoredMessage {
            blob: BlobName::new(&m.blob_id),
            body_key: m.body_key.clone(),
            size: m.size,
            internal_date: m.internal_date,
        }
    }

    /// The body object's id (`users/<u>/blob/<blob-id>`).
    pub fn blob_id(&self) -> String {
        self.blob.text()
    }

    /// The op form, with no summary (see [`MailboxState::summary_at`]).
    pub fn to_ref(&self) -> MessageRef {
        self.with_summary(Vec::new())
    }

    fn with_summary(&self, summary: Vec<u8>) -> MessageRef {
        MessageRef {
            blob_id: self.blob_id(),
            body_key: self.body_key.clone(),
            size: self.size,
            internal_date: self.internal_date,
            summary,
        }
    }

    /// What decides between two descriptions of one message: the
    /// [`MessageRef`] order, summary aside.
    fn order_key(&self) -> (String, &BodyKey, u64, i64) {
        (
            self.blob_id(),
            &self.body_key,
            self.size,
            self.internal_date,
        )
    }
}

/// [`Entry::page`] of a message in no summary page.
const NO_PAGE: u32 = u32::MAX;

/// Everything known about one message id. An entry can exist before (or
/// without) the op placing the message, if a malformed op names it; it is
/// then never shown. 136 bytes.
#[derive(Clone, Debug)]
struct Entry {
    message: Option<StoredMessage>,
    /// UID values claimed for this message, ascending.
    claims: ClaimList,
    /// One register per flag ever written, in the order first written.
    flags: Box<[FlagReg]>,
    /// Highest sequence number of an op concerning this message.
    modseq: u64,
    /// Wall-clock time (ms) of the earliest expunge of this message, 0 if
    /// none recorded: blob collection waits a grace period after it, so
    /// that an instance that has not yet seen the expunge cannot copy a
    /// body being deleted. The minimum over expunge ops keeps `apply`
    /// order-independent.
    expunged_ms: u64,
    /// The UID it is shown with, 0 if not shown: part of the index
    /// (derived from the claims), kept here to spare a table.
    shown: u32,
    /// The summary page holding its summary ([`Pages::names`]), or
    /// [`NO_PAGE`]. Bookkeeping, not meaning.
    page: u32,
    expunged: bool,
}

impl Default for Entry {
    fn default() -> Entry {
        Entry {
            message: None,
            claims: ClaimList::None,
            flags: Box::new([]),
            modseq: 0,
            expunged_ms: 0,
            shown: 0,
            page: NO_PAGE,
            expunged: false,
        }
    }
}

/// A message's UID claims, ascending, each once: almost always one,
/// held inline (a `Vec` would allocate for it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum ClaimList {
    #[default]
    None,
    One(u32),
    /// At least two (boxed twice so the list takes 16 bytes, not 24).
    #[expect(
        clippy::box_collection,
        reason = "a thin pointer keeps the enum at 16 bytes"
    )]
    Many(Box<Vec<u32>>),
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
            _ => {
                values.shrink_to_fit();
                ClaimList::Many(Box::new(values))
            }
        }
    }
}

impl Entry {
    fn top_claim(&self) -> Option<u32> {
        self.claims.as_slice().last().copied()
    }

    fn shown(&self) -> Option<u32> {
        (self.shown != 0).then_some(self.shown)
    }

    fn expunged_ms(&self) -> Option<u64> {
        (self.expunged_ms != 0).then_some(self.expunged_ms)
    }

    fn is_live(&self) -> bool {
        self.message.is_some() && !self.expunged
    }
}

/// What the state keeps of each op: the highest UID claim in its causal
/// past, itself included (the UID clock of `claims`), and the messages it
/// concerns, so that when its sequence number grows (a concurrent op
/// arrived) their MODSEQ follows.
#[derive(Clone, Debug)]
struct OpRec {
    top: u32,
    targets: Targets,
}

/// The messages an op concerns (16 bytes).
#[derive(Clone, Debug)]
enum Targets {
    /// The messages it placed itself, `(op, 0)` to `(op, n - 1)`: appends
    /// and copies, with nothing to allocate.
    Placed(u32),
    /// One message (a STORE or EXPUNGE of one message, the usual case).
    One(Slot),
    #[expect(
        clippy::box_collection,
        reason = "a thin pointer keeps the enum at 16 bytes"
    )]
    Listed(Box<Vec<Slot>>),
}

/// The part of the state that a snapshot stores.
#[derive(Clone, Debug)]
struct Core {
    /// Flag names and instance ids of the registers.
    flag_names: Interned,
    instances: Interned,
    uid_validity: u32,
    /// Added to every MODSEQ this state reports (HIGHESTMODSEQ, a
    /// message's MODSEQ, and the values CHANGEDSINCE and VANISHED compare
    /// with): the mailbox list gives it with UIDVALIDITY, fixed by the
    /// create (nonzero only for a mailbox migrated with its UIDVALIDITY,
    /// whose clients hold the old server's MODSEQs; doc/migration.md). 0
    /// in snapshots written before it existed.
    modseq_base: u64,
    /// `|S|`: the number of ops applied.
    highest_modseq: u64,
    /// Set if an op's claims did not fit in 32 bits.
    uid_space_exhausted: bool,
    /// UIDs held back for ops known lost whose claims are unknown (a
    /// damaged op object, see [`MailboxState::reserve_lost`]): no claim
    /// made from this state is at or below it. 0 in a healthy mailbox.
    reserved: u32,
    /// The lost ops `reserved` was raised for.
    reserved_for: BTreeSet<OpId>,
    /// UID values marked as claimed by lost ops ([`Claims::mark_lost`]),
    /// as ranges: the claims index does not keep them, so a snapshot must.
    lost_claims: Vec<(u32, u32)>,
    /// Every message id ever named, in the order first met: its index is
    /// its [`Slot`]. Never shrinks, so slots stay valid.
    entries: IndexMap<MessageId, Entry>,
    ops: IndexMap<OpId, OpRec>,
}

impl Core {
    fn id(&self, slot: Slot) -> MessageId {
        self.entries
            .get_index(slot as usize)
            .map(|(id, _)| *id)
            .expect("slots index the entry table")
    }

    fn at(&self, slot: Slot) -> &Entry {
        &self.entries[slot as usize]
    }

    fn at_mut(&mut self, slot: Slot) -> &mut Entry {
        &mut self.entries[slot as usize]
    }

    /// The slot of `id`, with a new empty entry if it had none.
    fn slot(&mut self, id: MessageId) -> Slot {
        if !self.entries.contains_key(&id) {
            reserve_gently(&mut self.entries);
        }
        let entry = self.entries.entry(id);
        let slot = entry.index() as Slot;
        entry.or_default();
        slot
    }

    /// Highest claim in the causal past of an op with these parents, as
    /// this state knows it. Parents never applied count as 0 (the DAG
    /// delivers parents first, unless one is lost: then the op's recorded
    /// clock, [`crate::log::Header::clock`], says what its writer saw).
    fn past(&self, parents: &[OpId]) -> u32 {
        parents
            .iter()
            .filter_map(|p| self.ops.get(p))
            .map(|r| r.top)
            .max()
            .unwrap_or(0)
    }

    /// The messages op `op` concerns, as slots.
    fn targets(&self, op: OpId, targets: &Targets) -> Vec<Slot> {
        match targets {
            Targets::Placed(n) => (0..*n)
                .filter_map(|index| self.entries.get_index_of(&MessageId { op, index }))
                .map(|slot| slot as Slot)
                .collect(),
            Targets::One(slot) => vec![*slot],
            Targets::Listed(slots) => slots.to_vec(),
        }
    }

    /// An entry's registers with names instead of interned indexes,
    /// sorted: what equality compares.
    fn flags_of<'a>(&'a self, e: &'a Entry) -> Vec<(&'a str, bool, Hlc, &'a str, OpId)> {
        let mut flags: Vec<_> = e
            .flags
            .iter()
            .map(|r| {
                (
                    self.flag_names.name(r.flag),
                    r.set,
                    r.hlc(),
                    self.instances.name(r.instance),
                    r.id,
                )
            })
            .collect();
        flags.sort_unstable();
        flags
    }

    fn entry_eq(&self, a: &Entry, other: &Core, b: &Entry) -> bool {
        a.message == b.message
            && a.claims == b.claims
            && a.expunged == b.expunged
            && a.expunged_ms == b.expunged_ms
            && a.modseq == b.modseq
            && self.flags_of(a) == other.flags_of(b)
    }

    fn op_eq(&self, op: OpId, a: &OpRec, other: &Core, b: &OpRec) -> bool {
        let ids = |core: &Core, r: &OpRec| -> Vec<MessageId> {
            core.targets(op, &r.targets)
                .into_iter()
                .map(|slot| core.id(slot))
                .collect()
        };
        a.top == b.top && ids(self, a) == ids(other, b)
    }
}

/// Equality of what the op set means: summaries (which may be paged out)
/// and interned indexes and slots (which depend on arrival order) aside.
impl PartialEq for Core {
    fn eq(&self, other: &Core) -> bool {
        self.uid_validity == other.uid_validity
            && self.modseq_base == other.modseq_base
            && self.highest_modseq == other.highest_modseq
            && self.uid_space_exhausted == other.uid_space_exhausted
            && self.reserved == other.reserved
            && self.entries.len() == other.entries.len()
            && self.entries.iter().all(|(id, a)| {
                other
                    .entries
                    .get(id)
                    .is_some_and(|b| self.entry_eq(a, other, b))
            })
            && self.ops.len() == other.ops.len()
            && self.ops.iter().all(|(op, a)| {
                other
                    .ops
                    .get(op)
                    .is_some_and(|b| self.op_eq(*op, a, other, b))
            })
    }
}

impl Eq for Core {}

/// Lookup structures derived from [`Core`].
#[derive(Clone, Debug, Default)]
struct Index {
    claims: Claims,
    /// Shown UIDs ascending: sequence number `n` is `uids[n - 1]`.
    uids: Vec<u32>,
    /// The message shown with `uids[i]`.
    slots: Vec<Slot>,
    /// Live messages with no valid UID, waiting for a fix-up.
    displaced: BTreeSet<Slot>,
}

/// Where summaries are: pages, or held in memory.
#[derive(Clone, Debug, Default)]
struct Pages {
    /// Page names (side objects of the log), by page number.
    names: Vec<String>,
    /// Summaries held in memory, of messages placed since the last
    /// snapshot (or computed again after a page was lost).
    held: HashMap<Slot, Held>,
    /// Their bytes, uncompressed.
    held_bytes: usize,
}

/// A summary held in memory, zstd-compressed when that makes it smaller
/// (most are JSON of a few kilobytes, which shrinks about threefold): a
/// busy mailbox holds up to [`HELD_SUMMARY_BYTES`] of them between
/// snapshots.
#[derive(Clone, Debug)]
struct Held {
    /// Length of the summary itself.
    len: u32,
    /// The summary, or its zstd frame if shorter than `len`.
    bytes: Box<[u8]>,
}

impl Held {
    fn new(summary: &[u8]) -> Held {
        let bytes = match crate::zstd_frames::compress(summary, HELD_ZSTD_LEVEL) {
            Ok(frame) if frame.len() < summary.len() => frame.into_boxed_slice(),
            _ => summary.into(),
        };
        Held {
            len: u32::try_from(summary.len()).unwrap_or(u32::MAX),
            bytes,
        }
    }

    /// The summary; `None` only if its own frame does not decompress
    /// (the summary is then computed again, as for a lost page).
    fn summary(&self) -> Option<Vec<u8>> {
        if self.bytes.len() == self.len as usize {
            return Some(self.bytes.to_vec());
        }
        crate::zstd_frames::decompress(&self.bytes, self.len as usize).ok()
    }
}

/// Fast: summaries are compressed once, as ops are applied.
const HELD_ZSTD_LEVEL: i32 = 1;

impl Pages {
    fn drop_held(&mut self, slot: Slot) {
        if let Some(held) = self.held.remove(&slot) {
            self.held_bytes = self.held_bytes.saturating_sub(held.len as usize);
        }
    }

    fn hold(&mut self, slot: Slot, summary: &[u8]) {
        self.drop_held(slot);
        if !summary.is_empty() {
            self.held_bytes += summary.len();
            self.held.insert(slot, Held::new(summary));
        }
    }

    fn held_summary(&self, slot: Slot) -> Option<Vec<u8>> {
        self.held.get(&slot).and_then(Held::summary)
    }
}

/// Where a message's summary is (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SummaryAt<'a> {
    /// In memory: the op placing it was applied after the last snapshot.
    Held(Vec<u8>),
    /// In this summary page.
    Page(&'a str),
    /// Nowhere known (not placed, or a snapshot written by an older
    /// version): the body must be summarised again.
    Unknown,
}

/// The most UID claims an op sealed in `sealed_len` bytes can make: each
/// claim needs at least a message id in the op (a fix-up target,
/// `<32 hex>.<n>`, over 34 bytes of JSON); placed messages take far more.
/// Over-estimating only leaves a gap in the UIDs. At most
/// [`MAX_LOST_CLAIMS`], so that a huge object planted under an op's name
/// cannot make the state mark millions of values.
pub fn claims_bound(sealed_len: usize) -> u32 {
    u32::try_from(sealed_len / 32 + 1).map_or(MAX_LOST_CLAIMS, |n| n.min(MAX_LOST_CLAIMS))
}

/// The most UIDs held back for one damaged op: above any COPY a client
/// can make in one command (see `imap` limits).
pub const MAX_LOST_CLAIMS: u32 = 1 << 17;

/// Summaries held in memory above which a snapshot (which pages them
/// out) is wanted, whatever the op count.
pub const HELD_SUMMARY_BYTES: usize = 2 << 20;

/// Live messages below which a summary page is small
/// ([`MailboxState::small_pages`]).
pub const SMALL_PAGE: usize = super::body::PAGE_MESSAGES / 4;

/// Small summary pages (the summaries held in memory counting as one more)
/// from which the next snapshot merges them into full ones. A message is
/// thus written again a few times at most (its page reaches [`SMALL_PAGE`]
/// after a few merges), and a mailbox keeps at most this many small
/// pages.
pub const MERGE_PAGES: usize = 8;

/// A mailbox's state. See the module doc for why it converges.
#[derive(Clone, Debug)]
pub struct MailboxState {
    core: Core,
    index: Index,
    pages: Pages,
}

impl PartialEq for MailboxState {
    fn eq(&self, other: &MailboxState) -> bool {
        let shown = |s: &MailboxState| -> Vec<(u32, MessageId)> {
            s.index
                .uids
                .iter()
                .zip(&s.index.slots)
                .map(|(uid, slot)| (*uid, s.core.id(*slot)))
                .collect()
        };
        let displaced = |s: &MailboxState| -> BTreeSet<MessageId> {
            s.index
                .displaced
                .iter()
                .map(|slot| s.core.id(*slot))
                .collect()
        };
        self.core == other.core
            && self.index.claims.max() == other.index.claims.max()
            && shown(self) == shown(other)
            && displaced(self) == displaced(other)
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
    pub message: &'a StoredMessage,
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
            modseq_base: 0,
            highest_modseq: 0,
            uid_space_exhausted: false,
            reserved: 0,
            reserved_for: BTreeSet::new(),
            lost_claims: Vec::new(),
            entries: IndexMap::new(),
            ops: IndexMap::new(),
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

    /// Sets the UIDVALIDITY the mailbox list gives (the list is the
    /// authority; the state only carries it).
    pub fn set_uid_validity(&mut self, uid_validity: u32) {
        self.core.uid_validity = uid_validity;
    }

    /// What every reported MODSEQ has added (see [`Core::modseq_base`]).
    pub fn modseq_base(&self) -> u64 {
        self.core.modseq_base
    }

    /// Sets the MODSEQ base the mailbox list gives, as
    /// [`MailboxState::set_uid_validity`].
    pub fn set_modseq_base(&mut self, modseq_base: u64) {
        self.core.modseq_base = modseq_base;
    }

    /// A MODSEQ as reported: the op-set value plus the base.
    fn reported(&self, modseq: u64) -> u64 {
        self.core.modseq_base.saturating_add(modseq)
    }

    /// UIDNEXT: above every claim ever made, valid or not, so it never
    /// decreases and a UID once shown is never handed out again. It is
    /// also exactly the UID an append written now will claim.
    pub fn uid_next(&self) -> u32 {
        self.index
            .claims
            .max()
            .max(self.core.reserved)
            .saturating_add(1)
    }

    /// Holds back `count` UIDs above every claim made so far, for an op
    /// known lost that may have claimed up to that many (its object is
    /// damaged, so its claims cannot be computed): the next placement
    /// claims above them, and UIDNEXT never falls below what the lost op
    /// may have shown. A gap in the UIDs is harmless; a UID handed out
    /// twice is not.
    pub fn reserve_lost(&mut self, count: u32) {
        let top = self.index.claims.max().max(self.core.reserved);
        self.core.reserved = top.saturating_add(count);
    }

    /// Marks the unclaimed values of `first..=last` as claimed by lost
    /// ops (see [`Claims::mark_lost`]).
    fn mark_lost(&mut self, first: u32, last: u32) {
        let mut run: Option<(u32, u32)> = None;
        for value in first..=last {
            if self.index.claims.mark_lost(value) {
                run = match run {
                    Some((a, b)) if b + 1 == value => Some((a, value)),
                    Some(done) => {
                        self.core.lost_claims.push(done);
                        Some((value, value))
                    }
                    None => Some((value, value)),
                };
            }
        }
        self.core.lost_claims.extend(run);
    }

    /// Records `first..=last` among the values claimed by no message, for
    /// the snapshot (the claims index forgets who claimed a value),
    /// joined to the last run when they follow it.
    fn record_lost_run(&mut self, first: u32, last: u32) {
        match self.core.lost_claims.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(first) => *end = last,
            _ => self.core.lost_claims.push((first, last)),
        }
    }

    /// UIDs held back by [`MailboxState::reserve_lost`] (0 if none).
    pub fn reserved(&self) -> u32 {
        self.core.reserved
    }

    /// HIGHESTMODSEQ: the base plus the number of ops in the set. Every
    /// op found later, however late, gets a MODSEQ above it (see
    /// `log::dag`), so CHANGEDSINCE with a value a client saw misses
    /// nothing (I5).
    pub fn highest_modseq(&self) -> u64 {
        self.reported(self.core.highest_modseq)
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

    /// The slot of the message shown with `uid`.
    fn shown_slot(&self, uid: u32) -> Option<Slot> {
        let at = self.index.uids.binary_search(&uid).ok()?;
        self.index.slots.get(at).copied()
    }

    pub fn message_id(&self, uid: u32) -> Option<MessageId> {
        self.shown_slot(uid).map(|slot| self.core.id(slot))
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
        self.core.entries.get(id).and_then(Entry::shown)
    }

    pub fn message(&self, uid: u32) -> Option<MessageView<'_>> {
        self.view(self.shown_slot(uid)?, uid)
    }

    /// UIDs and ids of the shown messages, in UID order: [`Self::messages`]
    /// without building views.
    pub fn shown(&self) -> impl Iterator<Item = (u32, MessageId)> + '_ {
        self.index
            .uids
            .iter()
            .zip(&self.index.slots)
            .map(|(uid, slot)| (*uid, self.core.id(*slot)))
    }

    /// Shown messages in UID (= sequence) order.
    pub fn messages(&self) -> impl Iterator<Item = MessageView<'_>> + '_ {
        self.index
            .uids
            .iter()
            .zip(&self.index.slots)
            .filter_map(|(uid, slot)| self.view(*slot, *uid))
    }

    fn view(&self, slot: Slot, uid: u32) -> Option<MessageView<'_>> {
        let (id, entry) = self.core.entries.get_index(slot as usize)?;
        let mut flags: Vec<&str> = entry
            .flags
            .iter()
            .filter(|r| r.set)
            .map(|r| self.core.flag_names.name(r.flag))
            .collect();
        flags.sort_unstable();
        Some(MessageView {
            id: *id,
            uid,
            modseq: self.reported(entry.modseq),
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
    pub fn blobs_in_use(&self, since_ms: u64) -> impl Iterator<Item = String> + '_ {
        self.core.entries.values().filter_map(move |e| {
            let message = e.message.as_ref()?;
            let keep = !e.expunged || e.expunged_ms().is_none_or(|t| t >= since_ms);
            keep.then(|| message.blob_id())
        })
    }

    /// Shown UIDs whose `flag` is set, ascending. A scan: only EXPUNGE
    /// (`\Deleted`) and tests ask.
    pub fn uids_with_flag(&self, flag: &str) -> Vec<u32> {
        let Some(flag) = self.core.flag_names.get(flag) else {
            return Vec::new();
        };
        self.index
            .uids
            .iter()
            .zip(&self.index.slots)
            .filter(|(_, slot)| {
                self.core
                    .at(**slot)
                    .flags
                    .iter()
                    .any(|r| r.flag == flag && r.set)
            })
            .map(|(uid, _)| *uid)
            .collect()
    }

    /// Shown UIDs whose MODSEQ is above `modseq`, ascending: the messages
    /// `FETCH ... (CHANGEDSINCE modseq)` reports (RFC 7162 §3.1.4.1).
    pub fn changed_since(&self, modseq: u64) -> Vec<u32> {
        let mut uids: Vec<u32> = self.changed(modseq).filter_map(Entry::shown).collect();
        uids.sort_unstable();
        uids
    }

    /// UIDs that stopped naming a shown message after `modseq`, ascending:
    /// what `VANISHED (EARLIER)` reports (RFC 7162 §3.2.5.1). Covers
    /// expunged messages and UIDs lost to a duplicate claim or left by a
    /// fix-up. May include UIDs a given client never saw, which RFC 7162
    /// allows.
    ///
    /// A claim a skip (or a lost op) made valid for nobody is reported
    /// whatever the message's MODSEQ: no entry of the skip holds that
    /// claim, and raising the message's MODSEQ would depend on the order
    /// the two ops arrived in (I1).
    pub fn vanished_since(&self, modseq: u64) -> Vec<u32> {
        let mut uids = Vec::new();
        for entry in self.core.entries.values() {
            let changed = self.reported(entry.modseq) > modseq;
            uids.extend(entry.claims.as_slice().iter().filter(|c| {
                **c != entry.shown && (changed || self.index.claims.claimants(**c).contains(&LOST))
            }));
        }
        uids.sort_unstable();
        uids.dedup();
        uids
    }

    /// Entries changed after `modseq`: a scan of the table (a few
    /// microseconds per thousand messages), cheaper in memory than an
    /// index by MODSEQ that every entry would pay for.
    fn changed(&self, modseq: u64) -> impl Iterator<Item = &Entry> + '_ {
        self.core
            .entries
            .values()
            .filter(move |e| self.reported(e.modseq) > modseq)
    }

    // ---- Summaries ----

    /// Where the summary of message `id` is.
    pub fn summary_at(&self, id: &MessageId) -> SummaryAt<'_> {
        let Some((slot, _, entry)) = self.core.entries.get_full(id) else {
            return SummaryAt::Unknown;
        };
        if entry.message.is_none() {
            return SummaryAt::Unknown;
        }
        if let Some(name) = self.pages.names.get(entry.page as usize) {
            return SummaryAt::Page(name);
        }
        match self.pages.held_summary(slot as Slot) {
            Some(bytes) => SummaryAt::Held(bytes),
            None => SummaryAt::Unknown,
        }
    }

    /// The summary page holding the summary of the shown message `uid`
    /// ([`MailboxState::summary_at`] without copying a held summary).
    pub fn summary_page(&self, uid: u32) -> Option<&str> {
        let entry = self.core.at(self.shown_slot(uid)?);
        entry.message.as_ref()?;
        self.pages
            .names
            .get(entry.page as usize)
            .map(String::as_str)
    }

    /// `uids` cut into chunks of at most `max` messages, as lengths, each
    /// cut made where the next summary page starts when one can be: a
    /// command reading a chunk at a time (summaries, index pages, body
    /// packs, a GET per page) then reads each page once, with all of its
    /// messages it asks for. A page holding more than `max` of them is cut
    /// anyway; messages on no page fill any chunk.
    pub fn page_chunks(&self, uids: &[u32], max: usize) -> Vec<usize> {
        let max = max.max(1);
        let mut chunks = Vec::new();
        let mut chunk = 0;
        let mut start = 0;
        while start < uids.len() {
            let page = self.summary_page(uids[start]);
            let mut end = start + 1;
            if page.is_some() {
                while end < uids.len() && self.summary_page(uids[end]) == page {
                    end += 1;
                }
            }
            let mut run = end - start;
            if chunk > 0 && chunk + run > max {
                chunks.push(std::mem::take(&mut chunk));
            }
            while run > 0 {
                let take = run.min(max - chunk);
                chunk += take;
                run -= take;
                if chunk == max {
                    chunks.push(std::mem::take(&mut chunk));
                }
            }
            start = end;
        }
        if chunk > 0 {
            chunks.push(chunk);
        }
        chunks
    }

    /// Summaries held in memory, of messages placed and not expunged, in
    /// UID order (displaced messages last): what the next summary pages
    /// hold.
    pub fn held_summaries(&self) -> Vec<(MessageId, Vec<u8>)> {
        let held = |slot: &Slot| {
            let entry = self.core.at(*slot);
            if entry.page != NO_PAGE || entry.message.is_none() {
                return None;
            }
            let bytes = self.pages.held_summary(*slot)?;
            Some((self.core.id(*slot), bytes))
        };
        let mut out: Vec<(MessageId, Vec<u8>)> = self.index.slots.iter().filter_map(held).collect();
        out.extend(self.index.displaced.iter().filter_map(held));
        out
    }

    /// The summary pages holding fewer than [`SMALL_PAGE`] live messages,
    /// each with those messages in UID order (displaced messages last),
    /// pages in the order of their first message: what
    /// `account::mailbox` merges once there are [`MERGE_PAGES`] of them.
    /// A mailbox that grows slowly pages a few summaries at each snapshot,
    /// and expunges thin out full pages: without merging, reading every
    /// summary of such a mailbox would be a GET per few messages.
    pub fn small_pages(&self) -> Vec<(String, Vec<MessageId>)> {
        let mut on: Vec<Vec<MessageId>> = vec![Vec::new(); self.pages.names.len()];
        let mut order = Vec::new();
        for slot in self.index.slots.iter().chain(&self.index.displaced) {
            let entry = self.core.at(*slot);
            let Some(ids) = on.get_mut(entry.page as usize) else {
                continue;
            };
            if !entry.is_live() {
                continue;
            }
            if ids.is_empty() {
                order.push(entry.page as usize);
            }
            ids.push(self.core.id(*slot));
        }
        order
            .into_iter()
            .filter_map(|page| {
                let ids = std::mem::take(&mut on[page]);
                (ids.len() < SMALL_PAGE).then(|| (self.pages.names[page].clone(), ids))
            })
            .collect()
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
                let Some((slot, _, entry)) = self.core.entries.get_full_mut(&id) else {
                    continue;
                };
                if entry.message.is_none() {
                    continue;
                }
                entry.page = page;
                self.pages.drop_held(slot as Slot);
            }
        }
        // Forget expunged messages' pages (and pages a damaged snapshot
        // numbered wrong), then unreferenced pages.
        let count = self.pages.names.len();
        let mut used = vec![false; count];
        for entry in self.core.entries.values_mut() {
            if entry.page == NO_PAGE {
                continue;
            }
            if (entry.page as usize) < count && entry.is_live() {
                used[entry.page as usize] = true;
            } else {
                entry.page = NO_PAGE;
            }
        }
        let mut renumber = Vec::with_capacity(count);
        let mut names = Vec::new();
        for (name, used) in std::mem::take(&mut self.pages.names).into_iter().zip(used) {
            renumber.push(names.len() as u32);
            if used {
                names.push(name);
            }
        }
        self.pages.names = names;
        for entry in self.core.entries.values_mut() {
            if entry.page != NO_PAGE {
                entry.page = renumber[entry.page as usize];
            }
        }
        self.pages.names.shrink_to_fit();
        self.pages.held.shrink_to_fit();
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
        if lost.is_empty() {
            return;
        }
        for entry in self.core.entries.values_mut() {
            if lost.contains(&entry.page) {
                entry.page = NO_PAGE;
            }
        }
    }

    /// Holds summaries computed again (see [`MailboxState::pages_lost`])
    /// for live messages that have none, so the next snapshot pages them.
    pub fn hold_summaries(&mut self, summaries: Vec<(MessageId, Vec<u8>)>) {
        for (id, summary) in summaries {
            let Some((slot, _, entry)) = self.core.entries.get_full(&id) else {
                continue;
            };
            let slot = slot as Slot;
            if entry.page != NO_PAGE || !entry.is_live() || self.pages.held.contains_key(&slot) {
                continue;
            }
            self.pages.hold(slot, &summary);
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
            .map(|slot| (self.core.at(*slot).top_claim(), self.core.id(*slot)))
            .collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// The fix-up op to write, if any message is displaced. An instance
    /// should wait a short random delay, sync, and write it only if no
    /// other fix-up appeared meanwhile (doc/consistency.md, "The I/O layer",
    /// fix-ups).
    pub fn fix_up(&self) -> Option<MailboxOp> {
        let displaced = self.displaced();
        (!displaced.is_empty()).then_some(MailboxOp::FixUp(displaced))
    }

    /// The UIDs an op placing `count` messages, written with `parents`,
    /// claims: what APPENDUID / COPYUID report (RFC 4315) once its PUT is
    /// acknowledged. Empty if they would not fit in 32 bits.
    pub fn claims_for(&self, parents: &[OpId], count: usize) -> Vec<u32> {
        let past = self.clock(parents);
        first_claims(past, count).map_or_else(Vec::new, |r| r.collect())
    }

    /// The UID clock an op written now with `parents` records: the
    /// highest claim in its past, and no lower than the UIDs held back.
    fn clock(&self, parents: &[OpId]) -> u32 {
        self.core.past(parents).max(self.core.reserved)
    }

    // ---- Applying ops ----

    fn place(&mut self, slot: Slot, new: &NewMessage, stamp: &OrderKey) {
        // Only a delivery drained twice places one id twice; both copies
        // come from one record, so they agree. Should they ever differ,
        // the smaller wins, which keeps `apply` order-independent.
        let incoming = StoredMessage::of(&new.message);
        let entry = self.core.at_mut(slot);
        let replace = entry
            .message
            .as_ref()
            .is_none_or(|m| incoming.order_key() < m.order_key());
        if replace {
            let expunged = entry.expunged;
            entry.message = Some(incoming);
            // A page holds the description replaced.
            entry.page = NO_PAGE;
            if expunged {
                self.pages.drop_held(slot);
            } else {
                self.pages.hold(slot, &new.message.summary);
            }
        }
        for flag in &new.flags {
            self.write_flag(slot, flag, true, stamp);
        }
    }

    fn write_flag(&mut self, slot: Slot, flag: &str, set: bool, stamp: &OrderKey) {
        let Core {
            entries,
            instances,
            flag_names,
            ..
        } = &mut self.core;
        let new = FlagReg {
            wall_ms: stamp.hlc.wall_ms,
            counter: stamp.hlc.counter,
            instance: instances.intern(stamp.instance.as_str()),
            flag: flag_names.intern(flag),
            id: stamp.id,
            set,
        };
        let entry = &mut entries[slot as usize];
        match entry.flags.iter_mut().find(|r| r.flag == new.flag) {
            Some(register) => {
                if stamp_cmp(instances, register, &new).is_lt() {
                    *register = new;
                }
            }
            None => {
                let mut flags = std::mem::take(&mut entry.flags).into_vec();
                flags.push(new);
                entry.flags = flags.into_boxed_slice();
            }
        }
    }

    fn raise_modseq(&mut self, slot: Slot, seq: u64) {
        let entry = self.core.at_mut(slot);
        entry.modseq = entry.modseq.max(seq);
    }

    /// Recomputes whether and where message `slot` is shown.
    fn refresh(&mut self, slot: Slot) {
        let entry = self.core.at(slot);
        let live = entry.is_live();
        let want = entry
            .top_claim()
            // Claims start at 1; a 0 could only come from a damaged
            // snapshot, and 0 means "not shown" in the entry.
            .filter(|uid| live && *uid > 0 && self.index.claims.is_sole(*uid, slot));
        let now = entry.shown();
        let index = &mut self.index;
        if now != want {
            if let Some(old) = now
                && let Ok(at) = index.uids.binary_search(&old)
            {
                index.uids.remove(at);
                index.slots.remove(at);
            }
            if let Some(new) = want {
                match index.uids.binary_search(&new) {
                    Ok(at) => index.slots[at] = slot,
                    Err(at) => {
                        index.uids.insert(at, new);
                        index.slots.insert(at, slot);
                    }
                }
            }
            self.core.at_mut(slot).shown = want.unwrap_or(0);
        }
        if live && want.is_none() {
            index.displaced.insert(slot);
        } else {
            index.displaced.remove(&slot);
        }
    }

    /// Builds the state from a snapshot's core, rebuilding the index.
    fn from_core(core: Core, pages: Pages) -> Self {
        let mut state = MailboxState {
            core,
            index: Index::default(),
            pages,
        };
        let count = state.core.entries.len();
        for slot in 0..count as Slot {
            for claim in state.core.at(slot).claims.as_slice() {
                state.index.claims.add(*claim, slot);
            }
        }
        for (first, last) in state.core.lost_claims.clone() {
            for value in first..=last {
                state.index.claims.add(value, LOST);
            }
        }
        for slot in 0..count as Slot {
            state.refresh(slot);
        }
        state.index.claims.shrink_to_fit();
        // Decoding grows tables by doubling; keep a little room for the
        // ops to come, not a doubling's worth.
        let room = |n: usize| n + n / 16 + 16;
        state.core.entries.shrink_to(room(count));
        let ops = state.core.ops.len();
        state.core.ops.shrink_to(room(ops));
        state.index.uids.shrink_to(room(state.index.uids.len()));
        state.index.slots.shrink_to(room(state.index.slots.len()));
        state
    }
}

impl State for MailboxState {
    type Op = MailboxOp;

    fn apply(&mut self, op: &MailboxOp, meta: &OpMeta) {
        let targets = op.targets(meta.id);
        let slots: Vec<Slot> = targets.iter().map(|id| self.core.slot(*id)).collect();
        let mut touched: BTreeSet<Slot> = slots.iter().copied().collect();

        // UID claims: one per target, for the ops that make claims, above
        // the op's past and the clock its writer recorded (the same unless
        // a parent is lost here; older ops record none).
        let count = op.claim_count();
        let recorded = u32::try_from(meta.clock).unwrap_or(u32::MAX);
        let present = self.core.past(&meta.parents);
        let past = present.max(recorded);
        if past > present {
            // A parent is lost here: the values between what this state
            // knows of the op's past and what its writer knew were
            // claimed by ops this state will not see (or see late).
            self.mark_lost(present + 1, past);
        }
        let claims = first_claims(past, count);
        let top = match &claims {
            Some(range) if count > 0 => *range.end(),
            _ => past,
        };
        match claims {
            Some(values) if count > 0 && matches!(op, MailboxOp::Skip(_)) => {
                // Claimed by no message: LOST shares the values with any
                // message claiming them concurrently, so none is valid.
                for value in values.clone() {
                    let claimants = self.index.claims.add(value, LOST);
                    touched.extend(claimants.iter().filter(|c| **c != LOST));
                }
                self.record_lost_run(*values.start(), *values.end());
            }
            Some(values) if count > 0 => {
                for (value, slot) in values.zip(&slots) {
                    self.core.at_mut(*slot).claims.insert(value);
                    let claimants = self.index.claims.add(value, *slot);
                    touched.extend(claimants.iter().filter(|c| **c != LOST));
                }
            }
            Some(_) => {}
            None => self.core.uid_space_exhausted = true,
        }

        match op {
            MailboxOp::Append(new) => {
                if let Some(slot) = slots.first() {
                    self.place(*slot, new, &meta.key);
                }
            }
            MailboxOp::CopyIn(news) => {
                for (slot, new) in slots.iter().zip(news) {
                    self.place(*slot, new, &meta.key);
                }
            }
            MailboxOp::Deliver(deliveries) => {
                for (slot, delivery) in slots.iter().zip(deliveries) {
                    self.place(*slot, &delivery.new, &meta.key);
                }
            }
            MailboxOp::Store { set, clear, .. } => {
                for slot in &slots {
                    // A flag both set and cleared by one op ends cleared.
                    for flag in set.iter().filter(|f| !clear.contains(f)) {
                        self.write_flag(*slot, flag, true, &meta.key);
                    }
                    for flag in clear {
                        self.write_flag(*slot, flag, false, &meta.key);
                    }
                }
            }
            MailboxOp::Expunge(_) => {
                let at = meta.key.hlc.wall_ms;
                for slot in &slots {
                    let entry = self.core.at_mut(*slot);
                    entry.expunged = true;
                    // 0 stands for none: an expunge stamped 0 records
                    // nothing, which only keeps its blob longer.
                    entry.expunged_ms = entry.expunged_ms().map_or(at, |t| t.min(at));
                    // An expunged message's summary is never read again.
                    self.pages.drop_held(*slot);
                }
            }
            MailboxOp::FixUp(_) | MailboxOp::Skip(_) => {}
        }

        for slot in &slots {
            self.raise_modseq(*slot, meta.seq);
        }
        let placed = targets
            .iter()
            .enumerate()
            .all(|(i, t)| t.op == meta.id && t.index as usize == i);
        let targets = match (slots.as_slice(), u32::try_from(slots.len())) {
            (_, Ok(n)) if placed => Targets::Placed(n),
            ([one], _) => Targets::One(*one),
            _ => Targets::Listed(Box::new(slots)),
        };
        reserve_gently(&mut self.core.ops);
        self.core.ops.insert(meta.id, OpRec { top, targets });
        self.core.highest_modseq = self.core.highest_modseq.max(meta.seq);
        for slot in touched {
            self.refresh(slot);
        }
    }

    fn side_objects(&self) -> Vec<String> {
        self.pages.names.clone()
    }

    fn wants_snapshot(&self) -> bool {
        self.pages.held_bytes > HELD_SUMMARY_BYTES
    }

    fn clock_for(&self, parents: &[OpId]) -> u64 {
        u64::from(self.clock(parents))
    }

    fn damaged_op(&mut self, op: OpId, sealed_len: usize) {
        // Once per op, also across snapshots and reloads.
        if !self.core.ops.contains_key(&op) && self.core.reserved_for.insert(op) {
            self.reserve_lost(claims_bound(sealed_len));
        }
    }

    fn reseq(&mut self, op: &OpId, seq: u64) {
        let Some(rec) = self.core.ops.get(op) else {
            return;
        };
        for slot in self.core.targets(*op, &rec.targets) {
            self.raise_modseq(slot, seq);
        }
    }
}

// ---- Snapshot form ----
//
// A snapshot holds the core and the page map as JSON, in the form the
// state had before it was made dense (message ids, not slots; the UID
// clock and the op targets as two maps; summaries inside the messages),
// so snapshots written by either read with either.

/// A flag register as written: `{"f": flag, "s": set, "t": stamp}`.
#[derive(Serialize, Deserialize)]
struct WireFlag {
    #[serde(rename = "f")]
    flag: u32,
    #[serde(rename = "s")]
    set: bool,
    #[serde(rename = "t")]
    stamp: WireStamp,
}

#[derive(Serialize, Deserialize)]
struct WireStamp {
    hlc: Hlc,
    instance: u32,
    id: OpId,
}

impl From<&FlagReg> for WireFlag {
    fn from(r: &FlagReg) -> WireFlag {
        WireFlag {
            flag: r.flag,
            set: r.set,
            stamp: WireStamp {
                hlc: r.hlc(),
                instance: r.instance,
                id: r.id,
            },
        }
    }
}

impl From<WireFlag> for FlagReg {
    fn from(w: WireFlag) -> FlagReg {
        FlagReg {
            wall_ms: w.stamp.hlc.wall_ms,
            counter: w.stamp.hlc.counter,
            instance: w.stamp.instance,
            flag: w.flag,
            id: w.stamp.id,
            set: w.set,
        }
    }
}

/// An entry as written.
#[derive(Serialize)]
struct EntryOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<MessageRef>,
    claims: &'a [u32],
    flags: Vec<WireFlag>,
    expunged: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    expunged_ms: Option<u64>,
    modseq: u64,
}

#[derive(Deserialize)]
struct EntryIn {
    #[serde(default)]
    message: Option<MessageRef>,
    claims: Vec<u32>,
    flags: Vec<WireFlag>,
    expunged: bool,
    #[serde(default)]
    expunged_ms: Option<u64>,
    modseq: u64,
}

impl EntryIn {
    /// The entry, and the summary it carried.
    fn into_entry(self) -> (Entry, Vec<u8>) {
        let (message, summary) = match self.message {
            Some(mut m) => {
                let summary = std::mem::take(&mut m.summary);
                (Some(StoredMessage::of(&m)), summary)
            }
            None => (None, Vec::new()),
        };
        let entry = Entry {
            message,
            claims: ClaimList::from(self.claims),
            flags: self.flags.into_iter().map(FlagReg::from).collect(),
            modseq: self.modseq,
            expunged_ms: self.expunged_ms.unwrap_or(0),
            shown: 0,
            page: NO_PAGE,
            expunged: self.expunged,
        };
        (entry, summary)
    }
}

/// The entry table read from a snapshot, entry by entry (no intermediate
/// map of the written form), with the summaries found in it.
#[derive(Default)]
struct EntriesIn {
    entries: IndexMap<MessageId, Entry>,
    held: Vec<(MessageId, Vec<u8>)>,
}

impl<'de> Deserialize<'de> for EntriesIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<EntriesIn, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = EntriesIn;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of message ids to entries")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EntriesIn, A::Error> {
                let mut out = EntriesIn::default();
                while let Some((id, entry)) = map.next_entry::<MessageId, EntryIn>()? {
                    let (entry, summary) = entry.into_entry();
                    if !summary.is_empty() {
                        out.held.push((id, summary));
                    }
                    out.entries.insert(id, entry);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Entries)
    }
}

/// Op targets as written.
#[derive(Serialize, Deserialize)]
enum WireTargets {
    Placed(u32),
    Listed(Vec<MessageId>),
}

#[derive(Serialize, Deserialize)]
struct WireClock<T> {
    tops: T,
}

/// The core as written (borrowed).
struct CoreOut<'a> {
    core: &'a Core,
    pages: &'a Pages,
}

impl Serialize for CoreOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let core = self.core;
        let entries = Collected(|| {
            core.entries.iter().enumerate().map(|(slot, (id, e))| {
                let summary = self.pages.held_summary(slot as Slot).unwrap_or_default();
                let out = EntryOut {
                    message: e.message.as_ref().map(|m| m.with_summary(summary)),
                    claims: e.claims.as_slice(),
                    flags: e.flags.iter().map(WireFlag::from).collect(),
                    expunged: e.expunged,
                    expunged_ms: e.expunged_ms(),
                    modseq: e.modseq,
                };
                (*id, out)
            })
        });
        let tops = Collected(|| core.ops.iter().map(|(op, r)| (*op, r.top)));
        let targets = Collected(|| {
            core.ops.iter().map(|(op, r)| {
                let wire = match &r.targets {
                    Targets::Placed(n) => WireTargets::Placed(*n),
                    other => WireTargets::Listed(
                        core.targets(*op, other)
                            .into_iter()
                            .map(|slot| core.id(slot))
                            .collect(),
                    ),
                };
                (*op, wire)
            })
        });
        let mut out = s.serialize_struct("Core", 8)?;
        out.serialize_field("flag_names", &core.flag_names)?;
        out.serialize_field("instances", &core.instances)?;
        out.serialize_field("uid_validity", &core.uid_validity)?;
        if core.modseq_base != 0 {
            out.serialize_field("modseq_base", &core.modseq_base)?;
        }
        out.serialize_field("highest_modseq", &core.highest_modseq)?;
        out.serialize_field("uid_space_exhausted", &core.uid_space_exhausted)?;
        if core.reserved != 0 {
            out.serialize_field("reserved", &core.reserved)?;
            out.serialize_field("reserved_for", &core.reserved_for)?;
        }
        if !core.lost_claims.is_empty() {
            out.serialize_field("lost_claims", &core.lost_claims)?;
        }
        out.serialize_field("entries", &entries)?;
        out.serialize_field("uid_clock", &WireClock { tops })?;
        out.serialize_field("op_targets", &targets)?;
        out.end()
    }
}

/// A map serialised from an iterator made on demand.
struct Collected<F>(F);

impl<F, I, K, V> Serialize for Collected<F>
where
    F: Fn() -> I,
    I: Iterator<Item = (K, V)>,
    K: Serialize,
    V: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map((self.0)())
    }
}

#[derive(Deserialize)]
struct CoreIn {
    flag_names: Interned,
    instances: Interned,
    uid_validity: u32,
    #[serde(default)]
    modseq_base: u64,
    highest_modseq: u64,
    uid_space_exhausted: bool,
    #[serde(default)]
    reserved: u32,
    #[serde(default)]
    reserved_for: BTreeSet<OpId>,
    #[serde(default)]
    lost_claims: Vec<(u32, u32)>,
    entries: EntriesIn,
    uid_clock: WireClock<HashMap<OpId, u32>>,
    op_targets: HashMap<OpId, WireTargets>,
}

#[derive(Deserialize)]
struct PagesIn {
    names: Vec<String>,
    #[serde(default)]
    at: HashMap<MessageId, u32>,
}

#[derive(Deserialize)]
struct Stored {
    core: CoreIn,
    #[serde(default)]
    pages: Option<PagesIn>,
}

impl Serialize for MailboxState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let at = Collected(|| {
            self.core
                .entries
                .iter()
                .filter(|(_, e)| e.page != NO_PAGE)
                .map(|(id, e)| (*id, e.page))
        });
        #[derive(Serialize)]
        struct PagesOut<'a, A> {
            names: &'a [String],
            at: A,
        }
        let mut out = s.serialize_struct("MailboxState", 2)?;
        out.serialize_field(
            "core",
            &CoreOut {
                core: &self.core,
                pages: &self.pages,
            },
        )?;
        out.serialize_field(
            "pages",
            &PagesOut {
                names: &self.pages.names,
                at,
            },
        )?;
        out.end()
    }
}

impl<'de> Deserialize<'de> for MailboxState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MailboxState, D::Error> {
        let Stored { core, pages } = Stored::deserialize(d)?;
        let CoreIn {
            flag_names,
            instances,
            uid_validity,
            modseq_base,
            highest_modseq,
            uid_space_exhausted,
            reserved,
            reserved_for,
            lost_claims,
            entries: EntriesIn { entries, held },
            uid_clock,
            mut op_targets,
        } = core;
        let mut core = Core {
            flag_names,
            instances,
            uid_validity,
            modseq_base,
            highest_modseq,
            uid_space_exhausted,
            reserved,
            reserved_for,
            lost_claims,
            entries,
            ops: IndexMap::with_capacity(uid_clock.tops.len()),
        };
        for (op, top) in uid_clock.tops {
            let targets = match op_targets.remove(&op) {
                None => Targets::Placed(0),
                Some(WireTargets::Placed(n)) => Targets::Placed(n),
                Some(WireTargets::Listed(ids)) => {
                    let slots: Vec<Slot> = ids.into_iter().map(|id| core.slot(id)).collect();
                    match slots.as_slice() {
                        [one] => Targets::One(*one),
                        _ => Targets::Listed(Box::new(slots)),
                    }
                }
            };
            core.ops.insert(op, OpRec { top, targets });
        }
        let mut pages_out = Pages::default();
        if let Some(PagesIn { names, at }) = pages {
            let count = names.len();
            pages_out.names = names;
            for (id, page) in at {
                if let Some(entry) = core.entries.get_mut(&id)
                    && (page as usize) < count
                {
                    entry.page = page;
                }
            }
        }
        for (id, summary) in held {
            if let Some(slot) = core.entries.get_index_of(&id) {
                pages_out.hold(slot as Slot, &summary);
            }
        }
        Ok(MailboxState::from_core(core, pages_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_summaries_are_compressed_when_it_pays() {
        let json = br#"{"envelope":{"subject":"Re: re: re: the meeting","from":[["Alice","alice@example.org"]]},"#
            .repeat(40);
        let held = Held::new(&json);
        assert!(
            held.bytes.len() * 3 < json.len(),
            "{} bytes",
            held.bytes.len()
        );
        assert_eq!(held.summary().unwrap(), json);
        // Too short or random to shrink: held as is.
        let short = Held::new(b"{}");
        assert_eq!(&*short.bytes, b"{}");
        assert_eq!(short.summary().unwrap(), b"{}");
    }
}
