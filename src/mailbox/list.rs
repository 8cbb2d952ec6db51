//! The user's mailbox list (`users/<u>/list/`, doc/consistency.md, "The
//! mailbox list"): which
//! mailboxes exist, under which names, with which UIDVALIDITY and
//! special-use attribute (RFC 6154), and which names are subscribed. Like a
//! mailbox, it is a pure [`State`] computed from an op log ([`ListOp`]),
//! written by any number of instances with no lock; the I/O layer
//! (`log::stored`) stores it under `users/<u>/list/`. No I/O here.
//!
//! # Model
//!
//! A mailbox is a [`MailboxId`] (16 random bytes, chosen by the writer of
//! its create op; `users/<u>/mbox/<m>/` uses it, so no name appears in an
//! object name) with per-id registers, each last-writer-wins by the op's
//! [`OrderKey`] (a causal successor always wins; concurrent writes are
//! decided the same way everywhere):
//!
//! - *name*: set by create, rename, restore;
//! - *life*: alive (create, restore) or deleted (delete);
//! - *special use*: set by create and [`Change::SetSpecialUse`].
//!
//! Its UIDVALIDITY is fixed by its create op (the one lowest in the order,
//! should there be several): the op's clock in seconds, raised above every
//! UIDVALIDITY in the op's causal past, plus up to 1023 derived from the
//! op id (see [`MailboxList`] for why). A name deleted then created again is
//! created by an op that saw the old create, so it gets a higher one.
//! Subscriptions are last-writer-wins registers per *name* (RFC 9051
//! §6.3.9: a subscription may name a mailbox that does not exist).
//!
//! Every register is a join (max by [`OrderKey`], min for the create), so
//! the state is a function of the op set: any delivery order gives the same
//! list (I1), as in `mailbox::state`.
//!
//! # Names, and what a client sees in a conflict
//!
//! Writers refuse CREATE or RENAME onto a name they see in use, so two
//! live mailboxes want the same name only after concurrent ops. The shown
//! names are computed from the wanted ones, deterministically:
//!
//! - the mailbox whose name register was written first (lowest
//!   [`OrderKey`]) keeps the name; a mailbox is thus never displaced by an
//!   op whose writer had seen it;
//! - each other one is shown as `Name (2)`, `Name (3)`, … (the first free
//!   suffix, in order), and the inferiors that moved with it — those whose
//!   name was written by the same op: a renamed subtree, or superiors
//!   created together — are shown under the new name (`Name (2)/b`);
//! - so every live mailbox has exactly one shown name, and no two share
//!   one. A client sees the loser renamed (LIST shows the new name; a
//!   selected mailbox keeps working, its id does not change); nothing is
//!   lost, and the user can rename it back.
//!
//! Case by case:
//!
//! | race | result |
//! | --- | --- |
//! | create `x` ‖ create `x` | two mailboxes: first create keeps `x`, the other is `x (2)` |
//! | rename `a`→`x` ‖ create `x` | first op keeps `x`; if the rename lost, `a` and its inferiors show as `x (2)`, `x (2)/…` |
//! | rename `a`→`x` ‖ rename `a`→`y` | last rename wins for `a` and for each inferior both moved |
//! | rename `a`→`x` ‖ create `a/c` | `x`, `x/…` and `a/c` (whose superior `a` no longer exists: the IMAP layer may show it `\NonExistent`) |
//! | delete ‖ rename | deleted (a rename does not touch the life register); a restore shows it under the renamed name |
//! | delete ‖ append (mailbox log) | deleted; the appended mail is recoverable, below |
//!
//! # Delete, and mail appended concurrently
//!
//! A delete hides the mailbox; its log stays in the store. The delete op
//! carries the mailbox's HIGHESTMODSEQ its writer saw (`seen_modseq`). By
//! the sequence-number property of `doc/consistency.md`, every op of that
//! mailbox the deleter had not seen — an APPEND acknowledged concurrently —
//! has a MODSEQ above it. So before garbage-collecting a deleted mailbox
//! ([`MailboxList::deleted`]), the account layer must open its log and, if
//! a live message has `MODSEQ > seen_modseq`, keep it: expunge the messages
//! at or below `seen_modseq` (the ones the user deleted) and write
//! [`Change::Restore`] ([`MailboxList::plan_restore`]), which shows the
//! mailbox again under its old name (suffixed if that is taken). A client
//! sees a deleted mailbox come back holding only mail it had not seen
//! deleted. Until then the concurrent mail is out of view, never lost.
//!
//! # INBOX (RFC 9051 §5.1, §6.3.6)
//!
//! INBOX has the fixed id [`MailboxId::INBOX`] and always exists, even
//! before any op; a delete or rename of it is ignored. Its UIDVALIDITY is
//! its create op's (written with the account defaults,
//! [`MailboxList::new_account_defaults`]), 1 before. RENAME of INBOX does
//! not rename it: [`MailboxList::plan_rename`] creates a new mailbox and
//! returns its id in [`RenamePlan::inbox_messages_to`]; once the op is
//! acknowledged, the caller moves every INBOX message there (copy-in to
//! the new mailbox's log, then expunge from INBOX: a crash in between
//! leaves a copy, never a loss). INBOX's inferiors are not moved.
//!
//! The default mailboxes have fixed ids too, so two instances initialising
//! one account at once create the same mailboxes instead of `Drafts (2)`.
//! (Then INBOX's UIDVALIDITY can change once, from one instance's create
//! to the other's: only in that race, before any mail.)

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::log::{OpId, OpMeta, OrderKey, State};

pub mod name;

pub use name::{DELIMITER, MAX_NAME_LEN, NameError, normalize};

use name::{INBOX, is_inferior, superiors};

/// A mailbox's identity for its whole life, across renames: the `<m>` of
/// `users/<u>/mbox/<m>/`. Random, so it says nothing about the name. Ids
/// whose first 15 bytes are zero are reserved for the fixed mailboxes
/// (INBOX and the account defaults).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MailboxId([u8; 16]);

impl MailboxId {
    /// INBOX's id, the same in every account.
    pub const INBOX: MailboxId = MailboxId([0; 16]);
    /// Length of the hex form.
    pub const HEX_LEN: usize = 32;

    /// A fresh random id, never a reserved one.
    pub fn random(rng: &mut impl RngCore) -> MailboxId {
        loop {
            let mut raw = [0u8; 16];
            rng.fill_bytes(&mut raw);
            let id = MailboxId(raw);
            if !id.is_reserved() {
                return id;
            }
        }
    }

    pub fn from_raw(raw: [u8; 16]) -> MailboxId {
        MailboxId(raw)
    }

    /// The fixed id of default mailbox number `n` (0 is INBOX).
    const fn fixed(n: u8) -> MailboxId {
        let mut raw = [0u8; 16];
        raw[15] = n;
        MailboxId(raw)
    }

    fn is_reserved(&self) -> bool {
        self.0[..15].iter().all(|b| *b == 0)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for MailboxId {
    type Err = ListError;

    /// Accepts exactly [`MailboxId::HEX_LEN`] lowercase hex characters.
    fn from_str(s: &str) -> Result<MailboxId, ListError> {
        let lower = s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let mut raw = [0u8; 16];
        if s.len() != Self::HEX_LEN || !lower || hex::decode_to_slice(s, &mut raw).is_err() {
            return Err(ListError::BadId(s.to_owned()));
        }
        Ok(MailboxId(raw))
    }
}

impl fmt::Display for MailboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for MailboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // In full: the fixed ids differ only in their last bytes.
        write!(f, "mbox:{}", self.to_hex())
    }
}

// A string, so that it can be a JSON map key in snapshots.
impl Serialize for MailboxId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for MailboxId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MailboxId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Special-use attributes (RFC 6154 §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SpecialUse {
    All,
    Archive,
    Drafts,
    Flagged,
    Junk,
    Sent,
    Trash,
}

impl SpecialUse {
    pub const EVERY: [SpecialUse; 7] = [
        SpecialUse::All,
        SpecialUse::Archive,
        SpecialUse::Drafts,
        SpecialUse::Flagged,
        SpecialUse::Junk,
        SpecialUse::Sent,
        SpecialUse::Trash,
    ];

    /// The LIST attribute (RFC 6154 §2), e.g. `\Sent`.
    pub fn attribute(self) -> &'static str {
        match self {
            SpecialUse::All => "\\All",
            SpecialUse::Archive => "\\Archive",
            SpecialUse::Drafts => "\\Drafts",
            SpecialUse::Flagged => "\\Flagged",
            SpecialUse::Junk => "\\Junk",
            SpecialUse::Sent => "\\Sent",
            SpecialUse::Trash => "\\Trash",
        }
    }

    /// Parses an attribute, case-insensitively as IMAP atoms are
    /// (RFC 6154 §6 `use-attr`).
    pub fn from_attribute(s: &str) -> Option<SpecialUse> {
        Self::EVERY
            .into_iter()
            .find(|u| u.attribute().eq_ignore_ascii_case(s))
    }
}

/// One change to the list. An op ([`ListOp`]) is a batch of changes that
/// take effect together, all stamped with the op's [`OrderKey`]; within
/// one op a later change to the same register wins. Changes that make no
/// sense (an invalid name, deleting INBOX, naming an unknown id) are
/// ignored by every reader alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A new mailbox (RFC 9051 §6.3.4). `name` is validated with
    /// [`normalize`]; only [`MailboxId::INBOX`] may be called INBOX.
    Create {
        id: MailboxId,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        special_use: Option<SpecialUse>,
    },
    /// A new mailbox migrated from another server (`facteur import`,
    /// doc/migration.md), keeping the UIDVALIDITY it had there so that
    /// clients keep their caches. Otherwise as `Create`. Planned only for
    /// a name no mailbox of the list has ever had
    /// ([`MailboxList::plan_create_kept`]), so no client has seen another
    /// UIDVALIDITY under it; the list's UIDVALIDITY clock is raised to it,
    /// so a later create of the same name gets a higher one.
    ///
    /// `modseq_base` is added to every MODSEQ the mailbox reports: set
    /// above the old server's HIGHESTMODSEQ, so that a client holding one
    /// of its MODSEQs under the kept UIDVALIDITY is told of every change
    /// made here (RFC 7162 §3.1.4.1, §3.2.5). Absent (0) in ops written
    /// before it existed.
    CreateKept {
        id: MailboxId,
        name: String,
        uid_validity: u32,
        #[serde(default, skip_serializing_if = "is_zero")]
        modseq_base: u64,
    },
    /// A new name for one mailbox. A RENAME (RFC 9051 §6.3.6) is one of
    /// these for the mailbox and one for each inferior, in one op.
    Rename {
        id: MailboxId,
        name: String,
    },
    /// DELETE (RFC 9051 §6.3.5). `seen_modseq` is the mailbox's
    /// HIGHESTMODSEQ the writer saw: messages above it were not seen
    /// deleted (module doc).
    Delete {
        id: MailboxId,
        seen_modseq: u64,
    },
    /// Shows a deleted mailbox again, under `name`.
    Restore {
        id: MailboxId,
        name: String,
    },
    /// SUBSCRIBE / UNSUBSCRIBE (RFC 9051 §6.3.9–10), by name.
    Subscribe {
        name: String,
    },
    Unsubscribe {
        name: String,
    },
    /// Sets or clears a mailbox's special-use attribute (RFC 6154 §5.3
    /// allows setting it with CREATE; METADATA-based setting is §5.4).
    SetSpecialUse {
        id: MailboxId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        special_use: Option<SpecialUse>,
    },
}

/// One op of the list log: changes that take effect together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListOp {
    pub changes: Vec<Change>,
}

/// What a list operation refuses (the IMAP layer maps these to NO).
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("invalid mailbox id {0:?}")]
    BadId(String),
    #[error(transparent)]
    BadName(#[from] NameError),
    #[error("mailbox {0:?} already exists")]
    AlreadyExists(String),
    #[error("no mailbox {0:?}")]
    NoSuchMailbox(String),
    #[error("INBOX cannot be deleted")]
    InboxUndeletable,
    #[error("cannot rename {0:?} under itself")]
    RenameUnderItself(String),
    #[error("mailbox {0} is not deleted")]
    NotDeleted(MailboxId),
}

/// A last-writer-wins register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Reg<T> {
    stamp: OrderKey,
    value: T,
}

impl<T> Reg<T> {
    /// Writes `value` if `stamp` is not older than the current one (equal
    /// stamps only come from one op, where the later change wins).
    fn write(slot: &mut Option<Reg<T>>, stamp: &OrderKey, value: T) {
        if slot.as_ref().is_some_and(|r| r.stamp > *stamp) {
            return;
        }
        *slot = Some(Reg {
            stamp: stamp.clone(),
            value,
        });
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Life {
    Alive,
    Deleted { seen_modseq: u64 },
}

/// The create that defines a mailbox: the lowest in the order, if
/// several name the same id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Created {
    stamp: OrderKey,
    uid_validity: u32,
    /// See [`Change::CreateKept`]; 0 for an ordinary create.
    #[serde(default, skip_serializing_if = "is_zero")]
    modseq_base: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Everything known about one id. An entry may exist without a create
/// (an op naming an unknown id); it is then never shown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<Created>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<Reg<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    life: Option<Reg<Life>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    special_use: Option<Reg<Option<SpecialUse>>>,
}

impl Entry {
    /// The wanted name and its stamp, if the mailbox is live.
    fn live_name(&self) -> Option<&Reg<String>> {
        self.created.as_ref()?;
        match self.life.as_ref()?.value {
            Life::Alive => self.name.as_ref(),
            Life::Deleted { .. } => None,
        }
    }
}

/// The part of the state that a snapshot stores.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Core {
    entries: BTreeMap<MailboxId, Entry>,
    subscriptions: BTreeMap<String, Reg<bool>>,
    /// Per op: the highest UIDVALIDITY given in its causal past, itself
    /// included. A create's UIDVALIDITY is above its parents' values.
    uid_validity_clock: HashMap<OpId, u32>,
}

/// Shown names, derived from [`Core`] by [`resolve`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Index {
    by_name: BTreeMap<String, MailboxId>,
    name_of: HashMap<MailboxId, String>,
}

/// A user's mailbox list. See the module doc for the rules.
///
/// Why UIDVALIDITY has a part derived from the op id: two concurrent
/// creates of one name in the same second would otherwise get the same
/// value, and a client that saw the loser under that name would then see
/// the winner with an unchanged UIDVALIDITY and trust its cache. With 10
/// bits of the op id, that takes a same-second race *and* a 1-in-1024
/// coincidence. The cost: values run ahead of the clock by about 512 s per
/// create only while creates come faster than that.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxList {
    core: Core,
    index: Index,
}

/// A shown mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxInfo<'a> {
    pub id: MailboxId,
    /// The name it is shown under.
    pub name: &'a str,
    /// The name it was given; differs from `name` when a concurrent
    /// create or rename took it (then `name` has a ` (n)` suffix).
    pub wanted: &'a str,
    /// RFC 9051 §2.3.1.1; nonzero.
    pub uid_validity: u32,
    /// Added to every MODSEQ the mailbox reports (see
    /// [`Change::CreateKept`]); 0 but for a migrated mailbox.
    pub modseq_base: u64,
    pub special_use: Option<SpecialUse>,
}

/// A deleted mailbox whose log is still in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletedMailbox<'a> {
    pub id: MailboxId,
    /// Its last name.
    pub name: &'a str,
    pub uid_validity: u32,
    /// See [`MailboxInfo::modseq_base`].
    pub modseq_base: u64,
    /// Messages with a MODSEQ above this were not seen deleted.
    pub seen_modseq: u64,
}

/// What RENAME must do ([`MailboxList::plan_rename`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenamePlan {
    /// The op to write.
    pub op: ListOp,
    /// Set when renaming INBOX (RFC 9051 §6.3.6): after the op is
    /// acknowledged, move every INBOX message to this new mailbox.
    pub inbox_messages_to: Option<MailboxId>,
}

/// The mailboxes every new account starts with: name, fixed id number,
/// special use (RFC 6154 §2).
const DEFAULTS: [(&str, u8, Option<SpecialUse>); 6] = [
    (INBOX, 0, None),
    ("Drafts", 1, Some(SpecialUse::Drafts)),
    ("Sent", 2, Some(SpecialUse::Sent)),
    ("Trash", 3, Some(SpecialUse::Trash)),
    ("Junk", 4, Some(SpecialUse::Junk)),
    ("Archive", 5, Some(SpecialUse::Archive)),
];

impl Default for MailboxList {
    fn default() -> Self {
        MailboxList::new()
    }
}

impl MailboxList {
    /// The list of an empty log: INBOX only.
    pub fn new() -> Self {
        MailboxList::from_core(Core::default())
    }

    /// The op a new account's list starts with: INBOX, Drafts, Sent,
    /// Trash, Junk, Archive with their special-use attributes (fixed ids),
    /// all subscribed.
    pub fn new_account_defaults() -> ListOp {
        MailboxList::account_defaults(MailboxId::fixed)
    }

    /// The same with the ids `id_of(n)` for default mailbox number `n`
    /// (1 to 5; INBOX keeps [`MailboxId::INBOX`]). An id that is reserved
    /// (some chance in 2^120) falls back to the fixed one.
    pub fn account_defaults(id_of: impl Fn(u8) -> MailboxId) -> ListOp {
        let mut changes = Vec::new();
        for (name, n, special_use) in DEFAULTS {
            let id = match n {
                0 => MailboxId::INBOX,
                n => Some(id_of(n))
                    .filter(|id| !id.is_reserved() || *id == MailboxId::fixed(n))
                    .unwrap_or(MailboxId::fixed(n)),
            };
            changes.push(Change::Create {
                id,
                name: name.to_owned(),
                special_use,
            });
        }
        for (name, _, _) in DEFAULTS {
            changes.push(Change::Subscribe {
                name: name.to_owned(),
            });
        }
        ListOp { changes }
    }

    // ---- Queries ----

    /// The mailbox shown under `name` (INBOX case-insensitively).
    pub fn by_name(&self, name: &str) -> Option<MailboxInfo<'_>> {
        let name = normalize(name).ok()?;
        let id = *self.index.by_name.get(&name)?;
        self.by_id(id)
    }

    /// A shown mailbox by id.
    pub fn by_id(&self, id: MailboxId) -> Option<MailboxInfo<'_>> {
        let name = self.index.name_of.get(&id)?;
        let entry = self.core.entries.get(&id);
        let wanted = entry
            .and_then(|e| e.name.as_ref())
            .map_or(INBOX, |r| r.value.as_str());
        Some(MailboxInfo {
            id,
            name,
            wanted,
            uid_validity: entry
                .and_then(|e| e.created.as_ref())
                .map_or(1, |c| c.uid_validity),
            modseq_base: entry
                .and_then(|e| e.created.as_ref())
                .map_or(0, |c| c.modseq_base),
            special_use: entry
                .and_then(|e| e.special_use.as_ref())
                .and_then(|r| r.value),
        })
    }

    pub fn inbox(&self) -> MailboxInfo<'_> {
        // INBOX is always in the index (`resolve` puts it first); the
        // fallback only keeps this total.
        self.by_id(MailboxId::INBOX).unwrap_or(MailboxInfo {
            id: MailboxId::INBOX,
            name: INBOX,
            wanted: INBOX,
            uid_validity: 1,
            modseq_base: 0,
            special_use: None,
        })
    }

    pub fn exists(&self, name: &str) -> bool {
        self.by_name(name).is_some()
    }

    /// Shown names, sorted by bytes (so inferiors follow their superior).
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.index.by_name.keys().map(String::as_str)
    }

    /// Shown mailboxes in name order.
    pub fn mailboxes(&self) -> impl Iterator<Item = MailboxInfo<'_>> + '_ {
        self.index.by_name.values().filter_map(|id| self.by_id(*id))
    }

    pub fn len(&self) -> usize {
        self.index.by_name.len()
    }

    /// Never: INBOX always exists.
    pub fn is_empty(&self) -> bool {
        self.index.by_name.is_empty()
    }

    /// Shown names that are inferiors of `name` at any depth, sorted.
    pub fn inferiors<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let name = normalize(name).unwrap_or_default();
        let from = format!("{name}{DELIMITER}");
        self.index
            .by_name
            .range(from.clone()..)
            .map(|(n, _)| n.as_str())
            .take_while(move |n| n.starts_with(&from))
    }

    /// Shown names one level below `name`, sorted.
    pub fn children(&self, name: &str) -> Vec<&str> {
        let depth = normalize(name).map_or(0, |n| n.matches(DELIMITER).count()) + 1;
        self.inferiors(name)
            .filter(|n| n.matches(DELIMITER).count() == depth)
            .collect()
    }

    /// `\HasChildren` versus `\HasNoChildren` (RFC 9051 §7.3.1): whether
    /// some shown mailbox is an inferior of `name`.
    pub fn has_children(&self, name: &str) -> bool {
        self.inferiors(name).next().is_some()
    }

    /// Subscribed names, sorted; they may name no mailbox (RFC 9051
    /// §6.3.9).
    pub fn subscriptions(&self) -> impl Iterator<Item = &str> + '_ {
        self.core
            .subscriptions
            .iter()
            .filter(|(_, r)| r.value)
            .map(|(n, _)| n.as_str())
    }

    pub fn is_subscribed(&self, name: &str) -> bool {
        normalize(name)
            .ok()
            .and_then(|n| self.core.subscriptions.get(&n))
            .is_some_and(|r| r.value)
    }

    /// The mailbox with special use `u` (where to save sent mail, say). If
    /// concurrent changes gave it to several, the one whose attribute was
    /// set first: a client that saw it keeps seeing it. (Each mailbox
    /// still shows its own attribute in LIST.)
    pub fn special_use(&self, u: SpecialUse) -> Option<MailboxInfo<'_>> {
        self.index
            .name_of
            .keys()
            .filter_map(|id| {
                let reg = self.core.entries.get(id)?.special_use.as_ref()?;
                (reg.value == Some(u)).then_some((&reg.stamp, *id))
            })
            .min()
            .and_then(|(_, id)| self.by_id(id))
    }

    /// The MODSEQ base of mailbox `id`, shown or deleted (0 if unknown):
    /// what its state adds to every MODSEQ ([`Change::CreateKept`]).
    pub fn modseq_base(&self, id: MailboxId) -> u64 {
        self.core
            .entries
            .get(&id)
            .and_then(|e| e.created.as_ref())
            .map_or(0, |c| c.modseq_base)
    }

    /// Deleted mailboxes whose log is still in the store: what garbage
    /// collection and recovery look at (module doc).
    pub fn deleted(&self) -> Vec<DeletedMailbox<'_>> {
        self.core
            .entries
            .iter()
            .filter_map(|(id, entry)| {
                let created = entry.created.as_ref()?;
                let Life::Deleted { seen_modseq } = entry.life.as_ref()?.value else {
                    return None;
                };
                Some(DeletedMailbox {
                    id: *id,
                    name: entry.name.as_ref().map_or("", |r| r.value.as_str()),
                    uid_validity: created.uid_validity,
                    modseq_base: created.modseq_base,
                    seen_modseq,
                })
            })
            .collect()
    }

    // ---- Writing: the op for an IMAP command, checked against this view ----

    /// CREATE (RFC 9051 §6.3.4): the mailbox and any missing superior
    /// ("the server SHOULD create any superior hierarchical names that are
    /// needed"). Returns the op and the new mailbox's id.
    pub fn plan_create(
        &self,
        name: &str,
        special_use: Option<SpecialUse>,
        rng: &mut impl RngCore,
    ) -> Result<(ListOp, MailboxId), ListError> {
        let name = normalize(name)?;
        if self.exists(&name) {
            return Err(ListError::AlreadyExists(name));
        }
        let mut changes = self.create_superiors(&name, rng);
        let id = MailboxId::random(rng);
        changes.push(Change::Create {
            id,
            name,
            special_use,
        });
        Ok((ListOp { changes }, id))
    }

    /// CREATE of a mailbox migrated from another server, with the
    /// UIDVALIDITY it had there and a MODSEQ base above the MODSEQs it
    /// gave (see [`Change::CreateKept`]), if no mailbox of this list (live
    /// or deleted) wants `name` and `uid_validity` is nonzero; otherwise an
    /// ordinary [`MailboxList::plan_create`]. Returns the op, the new id and
    /// whether the UIDVALIDITY is kept.
    pub fn plan_create_kept(
        &self,
        name: &str,
        uid_validity: u32,
        modseq_base: u64,
        rng: &mut impl RngCore,
    ) -> Result<(ListOp, MailboxId, bool), ListError> {
        let normalized = normalize(name)?;
        if self.exists(&normalized) {
            return Err(ListError::AlreadyExists(normalized));
        }
        let used = self
            .core
            .entries
            .values()
            .any(|e| e.name.as_ref().is_some_and(|n| n.value == normalized));
        if used || uid_validity == 0 {
            let (op, id) = self.plan_create(name, None, rng)?;
            return Ok((op, id, false));
        }
        let mut changes = self.create_superiors(&normalized, rng);
        let id = MailboxId::random(rng);
        changes.push(Change::CreateKept {
            id,
            name: normalized,
            uid_validity,
            modseq_base,
        });
        Ok((ListOp { changes }, id, true))
    }

    fn create_superiors(&self, name: &str, rng: &mut impl RngCore) -> Vec<Change> {
        superiors(name)
            .filter(|s| !self.exists(s))
            .map(|s| Change::Create {
                id: MailboxId::random(rng),
                name: s.to_owned(),
                special_use: None,
            })
            .collect()
    }

    /// RENAME (RFC 9051 §6.3.6): the mailbox and all its inferiors move;
    /// missing superiors of the new name are created; subscriptions of
    /// the moved names follow them. Renaming INBOX creates a new mailbox
    /// instead and the caller moves the messages
    /// ([`RenamePlan::inbox_messages_to`]).
    pub fn plan_rename(
        &self,
        from: &str,
        to: &str,
        rng: &mut impl RngCore,
    ) -> Result<RenamePlan, ListError> {
        let from = normalize(from)?;
        let to = normalize(to)?;
        let Some(source) = self.by_name(&from) else {
            return Err(ListError::NoSuchMailbox(from));
        };
        if self.exists(&to) {
            return Err(ListError::AlreadyExists(to));
        }
        if source.id == MailboxId::INBOX {
            let (op, id) = self.plan_create(&to, None, rng)?;
            return Ok(RenamePlan {
                op,
                inbox_messages_to: Some(id),
            });
        }
        if is_inferior(&to, &from) {
            return Err(ListError::RenameUnderItself(from));
        }
        let mut changes = self.create_superiors(&to, rng);
        let moved = std::iter::once(from.as_str()).chain(self.inferiors(&from));
        for old in moved {
            let Some(id) = self.index.by_name.get(old) else {
                continue;
            };
            let new = format!("{to}{}", &old[from.len()..]);
            changes.push(Change::Rename { id: *id, name: new });
        }
        let subscribed: Vec<&str> = self
            .subscriptions()
            .filter(|s| *s == from || is_inferior(s, &from))
            .collect();
        for old in subscribed {
            let new = format!("{to}{}", &old[from.len()..]);
            changes.push(Change::Unsubscribe {
                name: old.to_owned(),
            });
            changes.push(Change::Subscribe { name: new });
        }
        Ok(RenamePlan {
            op: ListOp { changes },
            inbox_messages_to: None,
        })
    }

    /// DELETE (RFC 9051 §6.3.5) of one mailbox; its inferiors stay.
    /// `seen_modseq`: the mailbox's HIGHESTMODSEQ as this instance sees it.
    pub fn plan_delete(&self, name: &str, seen_modseq: u64) -> Result<ListOp, ListError> {
        let name = normalize(name)?;
        let Some(mailbox) = self.by_name(&name) else {
            return Err(ListError::NoSuchMailbox(name));
        };
        if mailbox.id == MailboxId::INBOX {
            return Err(ListError::InboxUndeletable);
        }
        Ok(ListOp {
            changes: vec![Change::Delete {
                id: mailbox.id,
                seen_modseq,
            }],
        })
    }

    /// Shows a deleted mailbox again under its last name (suffixed if a
    /// live mailbox has it by then).
    pub fn plan_restore(&self, id: MailboxId) -> Result<ListOp, ListError> {
        let Some(deleted) = self.deleted().into_iter().find(|d| d.id == id) else {
            return Err(ListError::NotDeleted(id));
        };
        let name = normalize(deleted.name)?;
        Ok(ListOp {
            changes: vec![Change::Restore { id, name }],
        })
    }

    /// SUBSCRIBE (RFC 9051 §6.3.9): any valid name, existing or not.
    pub fn plan_subscribe(&self, name: &str) -> Result<ListOp, ListError> {
        let name = normalize(name)?;
        Ok(ListOp {
            changes: vec![Change::Subscribe { name }],
        })
    }

    /// UNSUBSCRIBE (RFC 9051 §6.3.10).
    pub fn plan_unsubscribe(&self, name: &str) -> Result<ListOp, ListError> {
        let name = normalize(name)?;
        Ok(ListOp {
            changes: vec![Change::Unsubscribe { name }],
        })
    }

    /// Sets or clears the special-use attribute of a shown mailbox. Setting
    /// moves it: the op also clears it from the mailboxes that have it in
    /// this view, so only concurrent changes can leave two holders.
    pub fn plan_set_special_use(
        &self,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<ListOp, ListError> {
        let name = normalize(name)?;
        let Some(mailbox) = self.by_name(&name) else {
            return Err(ListError::NoSuchMailbox(name));
        };
        let mut changes: Vec<Change> = self
            .mailboxes()
            .filter(|m| special_use.is_some() && m.special_use == special_use)
            .filter(|m| m.id != mailbox.id)
            .map(|m| Change::SetSpecialUse {
                id: m.id,
                special_use: None,
            })
            .collect();
        changes.push(Change::SetSpecialUse {
            id: mailbox.id,
            special_use,
        });
        Ok(ListOp { changes })
    }

    // ---- Applying ops ----

    /// A name a change may give to `id`, in stored form: valid, and
    /// INBOX exactly for INBOX's id.
    fn accepted_name(id: MailboxId, name: &str) -> Option<String> {
        let name = normalize(name).ok()?;
        ((id == MailboxId::INBOX) == (name == INBOX)).then_some(name)
    }

    fn entry(&mut self, id: MailboxId) -> &mut Entry {
        self.core.entries.entry(id).or_default()
    }

    fn subscribe(&mut self, name: &str, on: bool, stamp: &OrderKey) {
        let Ok(name) = normalize(name) else {
            return;
        };
        let slot = self.core.subscriptions.get(&name);
        if slot.is_some_and(|r| r.stamp > *stamp) {
            return;
        }
        let value = Reg {
            stamp: stamp.clone(),
            value: on,
        };
        self.core.subscriptions.insert(name, value);
    }

    fn from_core(core: Core) -> Self {
        let index = resolve(&core);
        MailboxList { core, index }
    }
}

/// The first UIDVALIDITY an op gives: its clock in seconds, above every
/// value in its causal past (`past`), plus 0–1023 from its id (see
/// [`MailboxList`]). Never 0.
fn first_uid_validity(past: u32, key: &OrderKey) -> u32 {
    let seconds = u32::try_from(key.hlc.wall_ms / 1000).unwrap_or(u32::MAX);
    let hex = key.id.to_hex();
    let jitter = u32::from_str_radix(&hex[..4], 16).unwrap_or(0) % 1024;
    seconds
        .max(past.saturating_add(1))
        .max(1)
        .saturating_add(jitter)
}

impl MailboxList {
    /// The highest UIDVALIDITY in the causal past of an op with `parents`.
    fn uid_validity_past(&self, parents: &[OpId]) -> u32 {
        parents
            .iter()
            .filter_map(|p| self.core.uid_validity_clock.get(p))
            .max()
            .copied()
            .unwrap_or(0)
    }
}

impl State for MailboxList {
    type Op = ListOp;

    fn clock_for(&self, parents: &[OpId]) -> u64 {
        u64::from(self.uid_validity_past(parents))
    }

    fn apply(&mut self, op: &ListOp, meta: &OpMeta) {
        let stamp = &meta.key;
        // The writer's recorded clock too: the same, unless a parent is
        // lost here (see `log::Dag::declare_lost`).
        let recorded = u32::try_from(meta.clock).unwrap_or(u32::MAX);
        let past = self.uid_validity_past(&meta.parents).max(recorded);
        let mut next_uid_validity = first_uid_validity(past, stamp);
        let mut clock = past;
        for change in &op.changes {
            match change {
                Change::Create {
                    id,
                    name,
                    special_use,
                } => {
                    let uid_validity = next_uid_validity;
                    next_uid_validity = next_uid_validity.saturating_add(1);
                    clock = clock.max(uid_validity);
                    let Some(name) = Self::accepted_name(*id, name) else {
                        continue;
                    };
                    let entry = self.entry(*id);
                    if entry.created.as_ref().is_none_or(|c| c.stamp > *stamp) {
                        entry.created = Some(Created {
                            stamp: stamp.clone(),
                            uid_validity,
                            modseq_base: 0,
                        });
                    }
                    Reg::write(&mut entry.name, stamp, name);
                    Reg::write(&mut entry.life, stamp, Life::Alive);
                    Reg::write(&mut entry.special_use, stamp, *special_use);
                }
                Change::CreateKept {
                    id,
                    name,
                    uid_validity,
                    modseq_base,
                } => {
                    let uid_validity = (*uid_validity).max(1);
                    clock = clock.max(uid_validity);
                    let Some(name) = Self::accepted_name(*id, name) else {
                        continue;
                    };
                    let entry = self.entry(*id);
                    if entry.created.as_ref().is_none_or(|c| c.stamp > *stamp) {
                        entry.created = Some(Created {
                            stamp: stamp.clone(),
                            uid_validity,
                            modseq_base: *modseq_base,
                        });
                    }
                    Reg::write(&mut entry.name, stamp, name);
                    Reg::write(&mut entry.life, stamp, Life::Alive);
                    Reg::write(&mut entry.special_use, stamp, None);
                }
                Change::Rename { id, name } => {
                    if *id == MailboxId::INBOX {
                        continue;
                    }
                    if let Some(name) = Self::accepted_name(*id, name) {
                        Reg::write(&mut self.entry(*id).name, stamp, name);
                    }
                }
                Change::Delete { id, seen_modseq } => {
                    if *id != MailboxId::INBOX {
                        let life = Life::Deleted {
                            seen_modseq: *seen_modseq,
                        };
                        Reg::write(&mut self.entry(*id).life, stamp, life);
                    }
                }
                Change::Restore { id, name } => {
                    if let Some(name) = Self::accepted_name(*id, name) {
                        let entry = self.entry(*id);
                        Reg::write(&mut entry.name, stamp, name);
                        Reg::write(&mut entry.life, stamp, Life::Alive);
                    }
                }
                Change::Subscribe { name } => self.subscribe(name, true, stamp),
                Change::Unsubscribe { name } => self.subscribe(name, false, stamp),
                Change::SetSpecialUse { id, special_use } => {
                    Reg::write(&mut self.entry(*id).special_use, stamp, *special_use);
                }
            }
        }
        self.core.uid_validity_clock.insert(meta.id, clock);
        self.index = resolve(&self.core);
    }
}

/// One mailbox wanting a name, in [`resolve`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    /// `None` for INBOX, which always wins; otherwise the stamp of the
    /// op that wrote the name.
    stamp: Option<OrderKey>,
    id: MailboxId,
}

/// Computes the shown names from the wanted ones (module doc): wanted
/// names are taken in hierarchy order (a superior before its inferiors);
/// for each, the lowest claim keeps it, the others move to the first free
/// `Name (k)` together with the inferiors their op named, and compete
/// there. Each round settles one mailbox and only moves claims to names
/// later in the order, so this ends, and every live mailbox gets exactly
/// one name. Cost: O(n log n) per op for n mailboxes, plus the inferiors
/// of each loser.
fn resolve(core: &Core) -> Index {
    let mut wanted: BTreeMap<Vec<String>, Vec<Claim>> = BTreeMap::new();
    let segments = |name: &str| name.split(DELIMITER).map(str::to_owned).collect::<Vec<_>>();
    wanted.entry(segments(INBOX)).or_default().push(Claim {
        stamp: None,
        id: MailboxId::INBOX,
    });
    for (id, entry) in &core.entries {
        if *id == MailboxId::INBOX {
            continue;
        }
        if let Some(name) = entry.live_name() {
            wanted
                .entry(segments(&name.value))
                .or_default()
                .push(Claim {
                    stamp: Some(name.stamp.clone()),
                    id: *id,
                });
        }
    }

    let mut index = Index::default();
    while let Some((path, mut claims)) = wanted.pop_first() {
        claims.sort();
        let mut claims = claims.into_iter();
        let Some(winner) = claims.next() else {
            continue;
        };
        let name = path.join("/");
        index.by_name.insert(name.clone(), winner.id);
        index.name_of.insert(winner.id, name);

        let mut suffix = 2u64;
        for loser in claims {
            let last = path.last().cloned().unwrap_or_default();
            let new_path = loop {
                let mut candidate = path.clone();
                if let Some(end) = candidate.last_mut() {
                    *end = format!("{last} ({suffix})");
                }
                suffix += 1;
                if !wanted.contains_key(&candidate) {
                    break candidate;
                }
            };
            // Inferiors named by the loser's op move with it. Inferiors of
            // `path` sort right after it (it was just taken out).
            let inferiors: Vec<Vec<String>> = wanted
                .range(path.clone()..)
                .map(|(p, _)| p)
                .take_while(|p| p.starts_with(&path))
                .cloned()
                .collect();
            for old in inferiors {
                let Some(list) = wanted.get_mut(&old) else {
                    continue;
                };
                let (moving, staying): (Vec<Claim>, Vec<Claim>) = std::mem::take(list)
                    .into_iter()
                    .partition(|c| c.stamp.is_some() && c.stamp == loser.stamp);
                if staying.is_empty() {
                    wanted.remove(&old);
                } else if let Some(list) = wanted.get_mut(&old) {
                    *list = staying;
                }
                if !moving.is_empty() {
                    let mut moved = new_path.clone();
                    moved.extend_from_slice(&old[path.len()..]);
                    wanted.entry(moved).or_default().extend(moving);
                }
            }
            wanted.entry(new_path).or_default().push(loser);
        }
    }
    index
}

// A snapshot holds the core only; the shown names are recomputed on load.
impl Serialize for MailboxList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.core.serialize(s)
    }
}

impl<'de> Deserialize<'de> for MailboxList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MailboxList, D::Error> {
        Core::deserialize(d).map(MailboxList::from_core)
    }
}

#[cfg(test)]
mod tests;
