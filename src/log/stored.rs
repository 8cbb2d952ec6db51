//! The op log on the object store (doc/storage.md, "Object names";
//! doc/consistency.md, "The I/O layer"): encrypted op objects
//! under `<prefix>log/`, encrypted snapshots under `<prefix>snap/`,
//! incremental sync by `LIST start-after`, and garbage collection of what a
//! snapshot covers.
//!
//! Invariants:
//! - An op is inserted into the local replica only after the store
//!   acknowledged its PUT, so nothing is shown that could be lost.
//! - Every op that landed in the store is, at any time, an op object or
//!   held by the newest snapshot (doc/consistency.md, "Garbage collection"
//!   gives the argument); so the newest snapshot plus the op objects is
//!   the whole log. It rests on four rules kept here: garbage collection
//!   deletes an op object only if the base snapshot *and every newer one*
//!   hold it ([`Collector::run`]); a replica whose last complete full
//!   listing is older than `gc_grace - full_list_every`, or that saw a
//!   listed op vanish before its GET, reloads from the newest snapshot
//!   before anything else ([`StoredLog::reload_due`]); a reload lists the
//!   ops *before* the snapshots; and a snapshot is written only from a
//!   replica whose last complete full listing is younger than
//!   `full_list_every` ([`StoredLog::snapshot_due`]).
//! - A replica only grows: a reload builds the new replica aside and
//!   installs it only if it holds every op of the current one (an op
//!   committed or synced meanwhile), so no reader ever sees an op go.
//! - No lock is held across store calls: a sync is planned from the
//!   replica ([`StoredLog::plan_sync`]), listed with no access to it
//!   ([`SyncPlan::list`]), filtered by it ([`StoredLog::unknown`]), fetched
//!   with no access ([`ToFetch::fetch`]), then applied
//!   ([`StoredLog::apply`]); a reload fetches and decodes the snapshot with
//!   no access too. [`StoredLog::sync`] (a log owned exclusively) and
//!   [`sync_shared`] (a log behind a lock) run the same driver. Writes are
//!   prepared, stored, then committed the same way.
//! - An op object that cannot be read (corrupt, or sealed under another
//!   name) is reported for this log only and skipped; it never stops the
//!   ops around it, and never panics.
//!
//! Costs: a sync when nothing changed is one LIST. Ops are listed from the
//! cursor minus a lookback ([`LogTuning::lookback`]), because an op written
//! by a writer whose clock is behind, or whose PUT took time, may get a
//! name just before the cursor. A writer whose PUT took longer than
//! [`LogTuning::late_after`] leaves a late marker before it acknowledges
//! the op ([`Prepared::store`]), which sends later listings back to the op
//! ([`SyncPlan::list`]); a periodic full listing
//! ([`LogTuning::full_list_every`]) catches anything later still.
//! A reload costs what opening costs (a listing, the snapshot, the ops it
//! lacks) and happens only after a long silence or a race with garbage
//! collection.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::LogError;
use super::id::{
    Hlc, InstanceId, OpId, late_marker_name, name_clock, now_ms, op_name, op_name_floor,
    parse_late_marker, parse_op_name, parse_op_name_id,
};
use super::replica::{Envelope, Replica, State};
use crate::crypto::{
    CryptoError, SymmetricKey, open, open_body, open_body_with, seal_body_padded, seal_padded,
};
use crate::store::{ObjectStore, StoreError, list_all, list_all_keys};

/// Largest snapshot accepted when decompressing (a 10,000-message mailbox
/// is a few MiB).
pub const MAX_SNAPSHOT: usize = 1 << 30;

/// Timing knobs. The defaults are those doc/consistency.md gives ("The
/// I/O layer", "Garbage collection", "Damage").
#[derive(Clone, Debug)]
pub struct LogTuning {
    /// How far before the start of its previous listing an incremental
    /// sync lists: `late_after` plus the bound on how far the clocks of
    /// two instances may differ.
    pub lookback: Duration,
    /// A write whose PUT completes later than this after the op's clock
    /// reading leaves a late marker (see [`late_marker_name`]) before it
    /// is acknowledged, so that syncs listing from after the op's name
    /// still find it. Less than `lookback` by at least the bound on clock
    /// error between instances.
    pub late_after: Duration,
    /// How often a sync lists the whole log instead. A snapshot is written
    /// only from a replica whose last full listing is younger than this.
    /// Must be at least six times the bound on clock error, PUT time and
    /// sync planning time (doc/consistency.md, "Garbage collection").
    pub full_list_every: Duration,
    /// Op objects fetched at once.
    pub fetch_parallelism: usize,
    /// A snapshot is due once this many ops were applied since the last.
    pub snapshot_every: usize,
    /// ... or once the oldest op applied since the last is this old (by
    /// its writer's clock), however few they are: a quiet mailbox's ops
    /// are then covered by a snapshot too, opening it reads one object
    /// instead of replaying them, and garbage collection can remove them.
    pub snapshot_age: Duration,
    /// Op objects and older snapshots are deleted only once a snapshot that
    /// covers them is this old; a replica whose last full listing is older
    /// than this minus `full_list_every` reloads from the newest snapshot.
    /// Must be at least twice `full_list_every` for the guarantees of
    /// doc/consistency.md to hold (tests set it to zero on one instance),
    /// and somewhat more, so that a polled replica lists in full (every
    /// `full_list_every`) well before a reload is due: the default, 12 min,
    /// leaves 2 min. Also how long an expunged message's body is kept.
    pub gc_grace: Duration,
    /// An op named as a parent but absent is given up as lost, and the ops
    /// waiting for it applied without it, once a complete full listing
    /// that started this long after those ops were written (by their
    /// writers' clocks) did not find it. Must exceed the bound on clock
    /// error and PUT time (doc/consistency.md, "Damage").
    pub lost_after: Duration,
}

impl Default for LogTuning {
    fn default() -> Self {
        LogTuning {
            lookback: Duration::from_secs(10),
            late_after: Duration::from_secs(4),
            full_list_every: Duration::from_secs(300),
            fetch_parallelism: 16,
            snapshot_every: 500,
            snapshot_age: Duration::from_secs(4 * 60),
            gc_grace: Duration::from_secs(12 * 60),
            lost_after: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("snapshot {name}: {reason}")]
    Snapshot { name: String, reason: String },
    /// A snapshot was asked of a replica that may lack collected ops (its
    /// last full listing is too old, or a listed op vanished): sync first.
    #[error(
        "no snapshot from this replica: its last full listing is {age_ms} ms old or incomplete"
    )]
    Stale { age_ms: u64 },
    /// A reload was overtaken by other changes (ops committed or collected
    /// meanwhile) every time it was tried.
    #[error("the log kept changing while reloading from a snapshot ({attempts} attempts)")]
    Unsettled { attempts: usize },
}

impl SyncError {
    /// Whether trying again later may succeed (the store was unreachable,
    /// or a sync is wanted first).
    pub fn is_transient(&self) -> bool {
        match self {
            SyncError::Store(e) => e.is_transient(),
            SyncError::Stale { .. } | SyncError::Unsettled { .. } => true,
            SyncError::Log(_) | SyncError::Snapshot { .. } => false,
        }
    }
}

/// How many times a sync starts over when a reload was overtaken (see
/// [`StoredLog::install`]), an op vanished under it, or an op it applied
/// waits for a parent it did not list.
const SYNC_ATTEMPTS: usize = 4;

/// A damaged object of a log (an op object or a snapshot found in the
/// listing but unreadable), or an op known lost (named as a parent, never
/// found: `name` is then `<prefix>log/?<op id>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub name: String,
    pub reason: String,
    /// Bytes of the object as stored, when it was read.
    pub size: Option<usize>,
}

/// Damage seen by every log of this process since it started: objects
/// found unreadable and ops given up as lost (each counted once per log
/// that found it). For metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DamageCounts {
    pub damaged_objects: u64,
    pub lost_ops: u64,
}

/// How a [`Damage`] reason starts for an op that opens (a key holder
/// wrote it) but does not decode: kept and waited for, never lost or
/// deleted (see [`StoredLog::apply`]).
pub const UNREADABLE_BY_THIS_VERSION: &str = "opens but this version cannot read it: ";

static DAMAGED_OBJECTS: AtomicU64 = AtomicU64::new(0);
static LOST_OPS: AtomicU64 = AtomicU64::new(0);
static LATE_MARKERS_WRITTEN: AtomicU64 = AtomicU64::new(0);

/// How many late markers this process wrote (see [`Prepared::store`]).
pub fn late_markers_written() -> u64 {
    LATE_MARKERS_WRITTEN.load(Ordering::Relaxed)
}

/// A late op is followed by at most this many late markers (see
/// [`Prepared::store`]).
const LATE_MARKERS: usize = 5;

/// How many late markers one log remembers having gone back for, and for
/// how long past the lookback (see [`StoredLog::note_markers`]).
const MARKERS_REMEMBERED: usize = 1024;
const MARKERS_REMEMBERED_PAST_LOOKBACK: Duration = Duration::from_secs(60);

/// How many times one sync goes back for late markers it listed (each
/// time from the oldest op they point to).
const MARKER_RELISTS: usize = 2;

/// See [`DamageCounts`].
pub fn damage_counts() -> DamageCounts {
    DamageCounts {
        damaged_objects: DAMAGED_OBJECTS.load(Ordering::Relaxed),
        lost_ops: LOST_OPS.load(Ordering::Relaxed),
    }
}

/// What a snapshot object holds: the replica (op set and state) it was
/// taken from.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(bound(
    serialize = "S: Serialize, S::Op: Serialize",
    deserialize = "S: DeserializeOwned, S::Op: DeserializeOwned"
))]
struct Snapshot<S: State> {
    replica: Replica<S>,
}

/// The writer named in a log's genesis op ([`StoredLog::prepare_genesis`]):
/// no instance may take this id, so it is never confused with a real
/// writer's ops.
pub const GENESIS_WRITER: &str = "genesis";

/// One instance's view of one log in the store.
pub struct StoredLog<S: State> {
    /// Seals every object of this log; derived from the user's master key.
    key: SymmetricKey,
    /// `.../` under which `log/` and `snap/` live.
    prefix: String,
    /// This instance: part of every op name it writes.
    instance: InstanceId,
    tuning: LogTuning,
    replica: Replica<S>,
    /// Highest op name listed so far.
    cursor: Option<String>,
    /// When the last complete full listing started (wall clock, ms): one
    /// whose every listed op was fetched, or a reload's; 0 = never.
    last_full_ms: u64,
    /// A listed op vanished before its GET (collected meanwhile, so held
    /// by a snapshot this replica may not have): reload before anything
    /// else, and write no snapshot until then.
    reload_needed: bool,
    /// When the last applied sync started (wall clock, ms); 0 = never.
    last_sync_ms: u64,
    /// Objects that could not be read, by name.
    damaged: BTreeMap<String, Damage>,
    /// Ops given up as lost (see [`StoredLog::give_up_missing`]), with
    /// what was said when they were.
    lost: BTreeMap<OpId, String>,
    /// Ops applied since the newest snapshot this instance knows.
    since_snapshot: usize,
    /// The oldest writer's clock (wall ms) among those ops, or of the
    /// snapshot they were applied on: what `snapshot_age` is counted from.
    unsnapshotted_since_ms: Option<u64>,
    /// Name of the newest snapshot loaded or written.
    snapshot: Option<String>,
    /// The newest writer's clock (wall ms) among the applied ops of other
    /// instances: how recently another instance wrote here.
    last_foreign_ms: u64,
    /// The newest snapshot known when garbage collection last ran from
    /// this log ([`StoredLog::collect_due`]).
    collected_at: Option<String>,
    /// Late markers (relative names) already listed: a sync goes back for
    /// a marker once ([`SyncPlan::list`]).
    markers_seen: HashSet<String>,
    /// An applied op waits for a parent that no full listing started since
    /// looked for: the next sync lists in full (see [`StoredLog::apply`]).
    missing_unlisted: bool,
    /// Parents still missing after a full listing that started after they
    /// were found missing (lost or damaged; `give_up_missing` decides).
    missing_listed: HashSet<OpId>,
}

impl<S: State> std::fmt::Debug for StoredLog<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredLog")
            .field("prefix", &self.prefix)
            .field("instance", &self.instance)
            .field("ops", &self.replica.dag().len())
            .field("cursor", &self.cursor)
            .field("damaged", &self.damaged.len())
            .finish_non_exhaustive()
    }
}

/// Ops to fetch, decided without I/O.
#[derive(Debug)]
pub struct SyncPlan {
    prefix: String,
    key: SymmetricKey,
    start_after: Option<String>,
    full: bool,
    parallelism: usize,
    /// Late markers (relative names) this log already went back for.
    markers_seen: HashSet<String>,
}

/// What a sync listed, before the known ops are filtered out.
#[derive(Debug)]
pub struct Listed {
    plan: SyncPlan,
    started_ms: u64,
    last_listed: Option<String>,
    /// Object keys with the op id their name carries.
    names: Vec<(String, Result<OpId, LogError>)>,
    /// The late markers followed (relative names).
    markers: Vec<String>,
}

/// The op objects a sync must fetch.
#[derive(Debug)]
pub struct ToFetch {
    plan: SyncPlan,
    started_ms: u64,
    last_listed: Option<String>,
    wanted: Vec<String>,
    damaged: Vec<Damage>,
    markers: Vec<String>,
}

/// What a sync brought back, ready to apply.
#[derive(Debug)]
pub struct Fetched {
    full: bool,
    started_ms: u64,
    last_listed: Option<String>,
    markers: Vec<String>,
    ops: Vec<(String, Vec<u8>)>,
    damaged: Vec<Damage>,
    /// Listed op objects that were gone at GET time.
    vanished: usize,
}

/// An op written to the store: insert it with [`StoredLog::commit`].
#[derive(Debug)]
pub struct Written {
    name: String,
    bytes: Vec<u8>,
    pub id: OpId,
    /// Late markers left for it (relative names): its writer need not
    /// follow them.
    markers: Vec<String>,
}

/// A sealed snapshot ready to be stored.
#[derive(Debug)]
pub struct PreparedSnapshot {
    name: String,
    sealed: Bytes,
    // Ops applied since the previous snapshot that this one holds.
    covered: usize,
}

impl PreparedSnapshot {
    /// How many of the ops applied since the previous snapshot this one
    /// holds: ops applied while it is stored are not in it, and
    /// [`StoredLog::snapshot_written`] keeps them counted.
    pub fn covered(&self) -> usize {
        self.covered
    }

    /// Stores the snapshot; returns its object name.
    pub async fn store(self, store: &dyn ObjectStore) -> Result<String, SyncError> {
        store.put(&self.name, self.sealed).await?;
        Ok(self.name)
    }
}

/// An op ready to be stored.
#[derive(Debug)]
pub struct Prepared {
    object_key: String,
    name: String,
    sealed: Bytes,
    bytes: Vec<u8>,
    pub id: OpId,
    /// The op's clock reading and writer, for a late marker.
    hlc: Hlc,
    instance: InstanceId,
    /// [`LogTuning::late_after`]; `None` for a genesis op, named at a
    /// fixed reading (a log without one is listed in full anyway).
    late_after: Option<Duration>,
    prepared_at: Instant,
}

impl<S> StoredLog<S>
where
    S: State + Serialize + DeserializeOwned,
    S::Op: Serialize + DeserializeOwned,
{
    /// Opens a log: lists the op objects, loads the newest readable
    /// snapshot (or starts from `init`) and reads every op object not in
    /// it (a reload, see [`StoredLog::reload_due`]).
    pub async fn open(
        store: &dyn ObjectStore,
        key: SymmetricKey,
        prefix: String,
        instance: InstanceId,
        tuning: LogTuning,
        init: impl FnOnce() -> S,
    ) -> Result<StoredLog<S>, SyncError> {
        let mut log = StoredLog {
            key,
            prefix,
            instance,
            tuning,
            replica: Replica::new(init()),
            cursor: None,
            last_full_ms: 0,
            reload_needed: true,
            last_sync_ms: 0,
            damaged: BTreeMap::new(),
            lost: BTreeMap::new(),
            since_snapshot: 0,
            unsnapshotted_since_ms: None,
            snapshot: None,
            last_foreign_ms: 0,
            markers_seen: HashSet::new(),
            collected_at: None,
            missing_unlisted: false,
            missing_listed: HashSet::new(),
        };
        drive_sync(&mut log, store).await?;
        Ok(log)
    }

    fn log_prefix(&self) -> String {
        format!("{}log/", self.prefix)
    }

    fn snap_prefix(&self) -> String {
        format!("{}snap/", self.prefix)
    }

    /// Whether the next sync must start over from the newest snapshot: the
    /// replica may lack ops that were collected after it last listed them
    /// (or never listed them). That is so when a listed op vanished before
    /// its GET, and when the last complete full listing is older than
    /// `gc_grace - full_list_every`: an op collected now was an op object
    /// for more than `gc_grace`, so a full listing at most that much
    /// before would have seen it (doc/consistency.md gives the margins).
    pub fn reload_due(&self) -> bool {
        let silence = self
            .tuning
            .gc_grace
            .saturating_sub(self.tuning.full_list_every);
        self.reload_needed
            || (self.last_full_ms != 0
                && now_ms().saturating_sub(self.last_full_ms) > silence.as_millis() as u64)
    }

    /// Plans a reload: a full listing of the op objects, *then* a listing
    /// of the snapshots, so that every op collected before the ops were
    /// listed is held by the snapshot loaded.
    fn plan_reload(&self) -> ReloadPlan {
        ReloadPlan {
            ops: SyncPlan {
                prefix: self.log_prefix(),
                key: self.key.clone(),
                start_after: None,
                full: true,
                parallelism: self.tuning.fetch_parallelism.max(1),
                markers_seen: HashSet::new(),
            },
            snap_prefix: self.snap_prefix(),
        }
    }

    /// Replaces the replica with a reloaded one, if it holds every op the
    /// current one holds; otherwise (ops committed or synced while the
    /// reload was fetched) leaves everything as is and returns `None`, and
    /// the caller starts over. Returns how many ops this replica gained.
    fn install(&mut self, mut reloaded: Reloaded<S>) -> Option<usize> {
        // What this replica gave up as lost, the new one gives up too:
        // the ops applied without them must be applied there as well.
        let prefix = self.log_prefix();
        for d in reloaded.damaged.iter().chain(self.damaged.values()) {
            lose_damaged(&prefix, &mut reloaded.replica, d);
        }
        for id in self.lost.keys() {
            reloaded.replica.declare_lost(*id);
        }
        let new = &reloaded.replica;
        if !self.replica.dag().ids().all(|id| new.contains(id)) {
            return None;
        }
        let gained = new.dag().len() - self.replica.dag().len();
        self.replica = *reloaded.replica;
        // The ops on top of the snapshot are at least as recent as it.
        self.unsnapshotted_since_ms = (reloaded.applied > 0)
            .then(|| name_clock(self.relative_snapshot_name(&reloaded.snapshot)))
            .flatten()
            .map(|hlc| hlc.wall_ms);
        if !reloaded.covers_objects {
            // Nothing behind it to collect: see `collect_due`.
            self.collected_at = Some(reloaded.snapshot.clone());
        }
        self.snapshot = Some(reloaded.snapshot);
        self.since_snapshot = reloaded.applied;
        for d in reloaded.damaged {
            self.note_damage(d);
        }
        for name in &reloaded.writers {
            self.note_writer(name);
        }
        if let Some(last) = reloaded.last_listed {
            self.advance_cursor(self.relative_name(last));
        }
        self.last_full_ms = reloaded.started_ms;
        self.last_sync_ms = self.last_sync_ms.max(reloaded.started_ms);
        self.reload_needed = false;
        let given_up = self.give_up_missing(reloaded.started_ms);
        self.since_snapshot += given_up;
        // A reload is a full listing.
        self.missing_listed = self.replica.dag().missing().into_iter().collect();
        self.missing_unlisted = false;
        Some(gained + given_up)
    }

    fn relative_name(&self, key: String) -> String {
        match key.strip_prefix(&self.log_prefix()) {
            Some(name) => name.to_owned(),
            None => key,
        }
    }

    /// Plans the next sync: incremental from the cursor minus the lookback,
    /// or a full listing when one is due.
    pub fn plan_sync(&self) -> SyncPlan {
        let full = self.cursor.is_none()
            || self.missing_unlisted
            || now_ms().saturating_sub(self.last_full_ms)
                >= self.tuning.full_list_every.as_millis() as u64;
        let start_after = if full {
            None
        } else {
            let since = if self.last_sync_ms > 0 {
                Some(self.last_sync_ms)
            } else {
                self.cursor
                    .as_deref()
                    .and_then(name_clock)
                    .map(|hlc| hlc.wall_ms)
            };
            since.map(|since| {
                // An op that landed after the last listing started was
                // named by its writer at most `late_after` before it
                // landed (or it is followed by a late marker, see
                // `Prepared::store`, that sends the listing back to it),
                // by a clock at most `lookback - late_after` behind ours:
                // so at most the lookback before that listing started.
                // Older names are the full listing's job. From the start
                // of the last listing, not from the cursor: the cursor is
                // the last name that listing read, at its end, maybe
                // seconds later (pages, retries), or a name from a clock
                // ahead of ours. Nor from an older cursor: that would list
                // a whole burst of writes again on every poll.
                let back = self.tuning.lookback.as_millis() as u64;
                let floor = Hlc {
                    wall_ms: since.saturating_sub(back),
                    counter: 0,
                };
                format!("{}{}", self.log_prefix(), op_name_floor(floor))
            })
        };
        SyncPlan {
            prefix: self.log_prefix(),
            key: self.key.clone(),
            start_after,
            full,
            parallelism: self.tuning.fetch_parallelism.max(1),
            markers_seen: self.markers_seen.clone(),
        }
    }

    /// Keeps the listed ops this replica does not know yet (nor knows to be
    /// damaged). A hash lookup per listed name: cheap under a lock.
    pub fn unknown(&self, listed: Listed) -> ToFetch {
        self.unknown_to(&self.replica, listed)
    }

    /// Keeps the listed ops that `replica` does not know (nor this log
    /// knows to be damaged).
    fn unknown_to(&self, replica: &Replica<S>, listed: Listed) -> ToFetch {
        let mut wanted = Vec::new();
        let mut damaged = Vec::new();
        for (key, id) in listed.names {
            if self.damaged.contains_key(&key) {
                continue;
            }
            match id {
                Ok(id) if replica.dag().knows(&id) => {}
                Ok(_) => wanted.push(key),
                Err(e) => damaged.push(Damage {
                    name: key,
                    reason: e.to_string(),
                    size: None,
                }),
            }
        }
        ToFetch {
            plan: listed.plan,
            started_ms: listed.started_ms,
            last_listed: listed.last_listed,
            wanted,
            damaged,
            markers: listed.markers,
        }
    }

    /// Applies what a sync fetched. Returns how many ops were applied.
    pub fn apply(&mut self, fetched: Fetched) -> usize {
        let mut applied = 0;
        let mut undecodable = Vec::new();
        for (name, bytes) in fetched.ops {
            match self.replica.insert_bytes(&bytes) {
                Ok((_, n)) => {
                    applied += n;
                    if n > 0 {
                        self.note_unsnapshotted(&name);
                        self.note_writer(&name);
                    }
                }
                Err(e) => undecodable.push(Damage {
                    name,
                    reason: e.to_string(),
                    size: Some(bytes.len()),
                }),
            }
        }
        // An op that opened (so a key holder wrote it) but does not
        // decode is not rot: most likely a newer version's format. It is
        // reported, never given up as lost nor deleted by a repair; the
        // ops after it wait for a version that reads it.
        for mut d in undecodable {
            if !self.damaged.contains_key(&d.name) {
                tracing::error!(object = %d.name, reason = %d.reason, "an op opens but this version cannot read it (written by a newer version?); later ops wait for it");
                DAMAGED_OBJECTS.fetch_add(1, Ordering::Relaxed);
                d.reason = format!("{UNREADABLE_BY_THIS_VERSION}{}", d.reason);
                self.damaged.insert(d.name.clone(), d);
            }
        }
        // Damage last: an op is given up as lost only once every op
        // fetched with it is in (see `mailbox::state` on lost claims).
        for d in fetched.damaged {
            applied += self.note_damage(d);
        }
        if let Some(last) = fetched.last_listed {
            self.advance_cursor(self.relative_name(last));
        }
        self.note_markers(fetched.markers);
        if fetched.vanished > 0 {
            // Collected between LIST and GET: a snapshot holds them.
            self.reload_needed = true;
        } else if fetched.full {
            self.last_full_ms = fetched.started_ms;
            applied += self.give_up_missing(fetched.started_ms);
            self.missing_listed = self.replica.dag().missing().into_iter().collect();
            self.missing_unlisted = false;
        } else if self.replica.dag().pending_len() > 0 {
            // An op whose parent this listing did not reach: a late op,
            // whose marker may not have landed yet, that its child's writer
            // had already seen (so it landed before the child was named).
            // A full listing starting now finds it: the sync lists again in
            // full before it answers (`drive_sync`).
            self.missing_unlisted = self
                .replica
                .dag()
                .missing()
                .iter()
                .any(|id| !self.missing_listed.contains(id));
        }
        if fetched.started_ms > self.last_sync_ms {
            self.last_sync_ms = fetched.started_ms;
        }
        self.since_snapshot += applied;
        applied
    }

    /// Plan, fetch and apply in one go (for callers that own the log
    /// exclusively), reloading from the newest snapshot first when
    /// [`StoredLog::reload_due`]. Returns how many ops were applied.
    pub async fn sync(&mut self, store: &dyn ObjectStore) -> Result<usize, SyncError> {
        drive_sync(self, store).await
    }

    /// Builds, names and seals a new op whose parents are the current heads.
    pub fn prepare(&self, body: S::Op) -> Result<Prepared, SyncError> {
        let envelope: Envelope<S::Op> = self.replica.prepare(body, self.instance.clone(), now_ms());
        self.seal_envelope(envelope)
    }

    /// Builds a log's first op so that every instance builds the same one:
    /// no parents, the clock reading `hlc` and the writer
    /// [`GENESIS_WRITER`] instead of this instance's. Its canonical bytes,
    /// hence its id and object name, depend only on `body` and `hlc`: two
    /// instances that both find the log empty and write it store one op,
    /// not two concurrent ones (each PUT writes the same plaintext).
    pub fn prepare_genesis(&self, body: S::Op, hlc: Hlc) -> Result<Prepared, SyncError> {
        let writer = InstanceId::new(GENESIS_WRITER).map_err(SyncError::Log)?;
        let envelope = Envelope {
            header: super::Header {
                parents: Vec::new(),
                hlc,
                instance: writer,
                // No parents: nothing to carry (the list keeps no clock).
                clock: self.replica.state().clock_for(&[]),
            },
            body,
        };
        self.seal_envelope(envelope)
    }

    fn seal_envelope(&self, envelope: Envelope<S::Op>) -> Result<Prepared, SyncError> {
        let hlc = envelope.header.hlc;
        let late_after =
            (envelope.header.instance.as_str() != GENESIS_WRITER).then_some(self.tuning.late_after);
        let instance = envelope.header.instance.clone();
        let (id, bytes) = envelope.encode()?;
        let name = op_name(hlc, &instance, &id);
        let object_key = format!("{}{}", self.log_prefix(), name);
        // Padded: an op's exact size would tell which operation it is.
        let sealed = Bytes::from(seal_padded(&self.key, &object_key, &bytes));
        Ok(Prepared {
            object_key,
            name,
            sealed,
            bytes,
            id,
            hlc,
            instance,
            late_after,
            prepared_at: Instant::now(),
        })
    }

    /// Inserts an op the store has acknowledged. Returns how many ops were
    /// applied (usually 1).
    pub fn commit(&mut self, written: Written) -> usize {
        let applied = match self.replica.insert_bytes(&written.bytes) {
            Ok((_, n)) => n,
            Err(e) => {
                // Cannot happen for bytes we encoded; report rather than panic.
                let name = format!("{}{}", self.log_prefix(), written.name);
                let size = Some(written.bytes.len());
                self.note_damage(Damage {
                    name,
                    reason: e.to_string(),
                    size,
                })
            }
        };
        self.since_snapshot += applied;
        if applied > 0 {
            self.note_unsnapshotted(&written.name);
        }
        self.note_markers(written.markers);
        self.advance_cursor(written.name);
        applied
    }

    /// Counts op object `name` (relative or full) among the ops applied
    /// since the last snapshot, for `snapshot_age`.
    fn note_unsnapshotted(&mut self, name: &str) {
        let name = name.strip_prefix(&self.log_prefix()).unwrap_or(name);
        // A genesis op's clock reading is not when it was written (see
        // `prepare_genesis`): count it as written now, or every new log
        // would want a snapshot at once.
        let written = match parse_op_name(name) {
            Ok((hlc, writer, _)) if writer.as_str() != GENESIS_WRITER => hlc.wall_ms,
            _ => now_ms(),
        };
        self.unsnapshotted_since_ms = Some(
            self.unsnapshotted_since_ms
                .map_or(written, |t| t.min(written)),
        );
    }

    /// Remembers the late markers a sync listed, so that later syncs do
    /// not go back for them again, and forgets those too old for an
    /// incremental sync to list again (one that does goes back once more:
    /// a cost, never a loss).
    fn note_markers(&mut self, listed: Vec<String>) {
        if listed.is_empty() && self.markers_seen.is_empty() {
            return;
        }
        let keep_after = now_ms().saturating_sub(
            (self.tuning.lookback + MARKERS_REMEMBERED_PAST_LOOKBACK).as_millis() as u64,
        );
        self.markers_seen
            .retain(|m| name_clock(m).is_some_and(|c| c.wall_ms >= keep_after));
        for m in listed {
            if self.markers_seen.len() < MARKERS_REMEMBERED {
                self.markers_seen.insert(m);
            }
        }
    }

    fn note_writer(&mut self, name: &str) {
        let name = name.strip_prefix(&self.log_prefix()).unwrap_or(name);
        if let Ok((hlc, writer, _)) = parse_op_name(name)
            && writer != self.instance
            && writer.as_str() != GENESIS_WRITER
        {
            // A clock ahead of ours counts as now.
            let written = hlc.wall_ms.min(now_ms());
            self.last_foreign_ms = self.last_foreign_ms.max(written);
        }
    }

    /// When another instance last wrote to this log, as far as the applied
    /// ops tell (its clock, wall ms; 0 if never).
    pub fn last_foreign_write_ms(&self) -> u64 {
        self.last_foreign_ms
    }

    /// `snapshot`, a full snapshot object key, without its prefix.
    fn relative_snapshot_name<'a>(&self, snapshot: &'a str) -> &'a str {
        snapshot
            .strip_prefix(&self.snap_prefix())
            .unwrap_or(snapshot)
    }

    fn advance_cursor(&mut self, name: String) {
        if self.cursor.as_ref().is_none_or(|c| *c < name) {
            self.cursor = Some(name);
        }
    }

    /// Prepare, store and commit in one go. Returns the op's id.
    pub async fn append(
        &mut self,
        store: &dyn ObjectStore,
        body: S::Op,
    ) -> Result<OpId, SyncError> {
        let written = self.prepare(body)?.store(store).await?;
        let id = written.id;
        self.commit(written);
        Ok(id)
    }

    /// Whether enough ops were applied since the last snapshot, or the
    /// state asks for one, and the replica may be snapshotted now (see
    /// [`StoredLog::prepare_snapshot`]).
    pub fn snapshot_due(&self) -> bool {
        let old_enough = self.unsnapshotted_since_ms.is_some_and(|t| {
            now_ms().saturating_sub(t) >= self.tuning.snapshot_age.as_millis() as u64
        });
        (self.since_snapshot >= self.tuning.snapshot_every
            || (self.since_snapshot > 0 && (old_enough || self.replica.state().wants_snapshot())))
            && self.snapshot_allowed().is_ok()
    }

    /// A snapshot may be taken only from a replica whose last complete full
    /// listing started less than `full_list_every` ago, and that saw no
    /// listed op vanish since: it then holds every op that landed before
    /// that listing, including any that garbage collection may delete
    /// once this snapshot is the newest (doc/consistency.md).
    fn snapshot_allowed(&self) -> Result<(), SyncError> {
        let age_ms = now_ms().saturating_sub(self.last_full_ms);
        if self.reload_needed
            || self.last_full_ms == 0
            || age_ms >= self.tuning.full_list_every.as_millis() as u64
        {
            return Err(SyncError::Stale { age_ms });
        }
        Ok(())
    }

    /// Writes a snapshot of the current replica, syncing first if the
    /// last full listing is too old. Its name starts with the newest clock
    /// reading it covers, so the newest snapshot lists last.
    pub async fn write_snapshot(&mut self, store: &dyn ObjectStore) -> Result<String, SyncError> {
        if self.snapshot_allowed().is_err() {
            // A full listing is due by now, or a reload.
            self.sync(store).await?;
        }
        let snapshot = self.prepare_snapshot()?;
        let covered = snapshot.covered();
        let name = snapshot.store(store).await?;
        self.snapshot_written(name.clone(), covered);
        Ok(name)
    }

    /// Seals a snapshot of the current replica, to be stored with no lock
    /// held, then reported with [`StoredLog::snapshot_written`]. Refused
    /// ([`SyncError::Stale`]) unless the last complete full listing is
    /// younger than `full_list_every`.
    pub fn prepare_snapshot(&self) -> Result<PreparedSnapshot, SyncError> {
        self.snapshot_allowed()?;
        let latest = self.replica.dag().latest();
        let nonce: u64 = rand::random();
        let name = format!(
            "{}{:016x}-{:08x}-{}-{nonce:016x}",
            self.snap_prefix(),
            latest.wall_ms,
            latest.counter,
            self.instance
        );
        let plain = serde_json::to_vec(&SnapshotRef {
            replica: &self.replica,
        })
        .map_err(LogError::Encode)?;
        let sealed = Bytes::from(seal_body_padded(&self.key, &name, &plain));
        Ok(PreparedSnapshot {
            name,
            sealed,
            covered: self.since_snapshot,
        })
    }

    /// Records that a snapshot holding `covered` of the ops applied since
    /// the previous one ([`PreparedSnapshot::covered`]) was stored. Ops
    /// applied while it was stored stay counted, so that they make the
    /// next snapshot due as any other would; they are counted as new from
    /// now for its age.
    pub fn snapshot_written(&mut self, name: String, covered: usize) {
        self.snapshot = Some(name);
        self.since_snapshot = self.since_snapshot.saturating_sub(covered);
        self.unsnapshotted_since_ms = (self.since_snapshot > 0).then(now_ms);
    }

    /// Deletes op objects and snapshots made useless by a snapshot older
    /// than the grace period. Returns how many objects were deleted.
    pub async fn collect_garbage(&self, store: &dyn ObjectStore) -> Result<usize, SyncError> {
        self.collector().run(store).await
    }

    /// Whether garbage collection should run although no snapshot is
    /// being written: the newest snapshot this replica knows is older than
    /// the grace period (so it can be the base) and no collection ran from
    /// here since it became known. Collection otherwise runs only after a
    /// snapshot is written, and a mailbox that fell quiet would keep the
    /// ops of its last `gc_grace` for good. Cheap: no I/O.
    pub fn collect_due(&self) -> bool {
        let Some(snapshot) = self.snapshot.as_deref() else {
            return false;
        };
        let floor = now_ms().saturating_sub(self.tuning.gc_grace.as_millis() as u64);
        self.collected_at.as_deref() != Some(snapshot)
            && name_clock(self.relative_snapshot_name(snapshot))
                .is_some_and(|hlc| hlc.wall_ms < floor)
    }

    /// What garbage collection needs, to run with no lock held. Marks the
    /// collection as done for [`StoredLog::collect_due`]: a failed one is
    /// tried again after the next snapshot.
    pub fn start_collection(&mut self) -> Collector<S> {
        self.collected_at = self.snapshot.clone();
        self.collector()
    }

    /// What garbage collection needs, to run with no lock held.
    pub fn collector(&self) -> Collector<S> {
        Collector {
            key: self.key.clone(),
            log_prefix: self.log_prefix(),
            snap_prefix: self.snap_prefix(),
            side_prefix: format!("{}side/", self.prefix),
            grace: self.tuning.gc_grace,
            state: std::marker::PhantomData,
        }
    }

    pub fn replica(&self) -> &Replica<S> {
        &self.replica
    }

    pub fn state(&self) -> &S {
        self.replica.state()
    }

    /// See [`Replica::state_mut`].
    pub fn state_mut(&mut self) -> &mut S {
        self.replica.state_mut()
    }

    /// Sealing and naming of this log's side objects.
    pub fn side(&self) -> SideObjects {
        SideObjects {
            key: self.key.clone(),
            prefix: format!("{}side/", self.prefix),
            instance: self.instance.clone(),
        }
    }

    /// Unreadable objects found so far, and ops given up as lost, for
    /// reporting. Empty for a healthy log.
    pub fn damaged(&self) -> Vec<Damage> {
        // A lost op found again since is lost no more.
        let lost = self
            .lost
            .iter()
            .filter(|(id, _)| !self.replica.contains(id));
        let lost = lost.map(|(id, reason)| Damage {
            name: format!("{}?{id}", self.log_prefix()),
            reason: reason.clone(),
            size: None,
        });
        self.damaged.values().cloned().chain(lost).collect()
    }

    /// Records an unreadable object (once), logs it, counts it, and if it
    /// is an op object whose op this replica lacks, gives the op up as
    /// lost (see [`lose_damaged`]). Returns how many ops that
    /// let through.
    fn note_damage(&mut self, d: Damage) -> usize {
        if self.damaged.contains_key(&d.name) {
            return 0;
        }
        tracing::error!(object = %d.name, reason = %d.reason, "damaged object in the store");
        DAMAGED_OBJECTS.fetch_add(1, Ordering::Relaxed);
        let applied = lose_damaged(&self.log_prefix(), &mut self.replica, &d);
        self.damaged.insert(d.name.clone(), d);
        applied
    }

    /// After a complete full listing (or reload) that started at
    /// `listing_ms`: gives up the parents still missing that ops written
    /// at least [`LogTuning::lost_after`] before the listing name. Such a
    /// parent landed before its child was written, so the listing would
    /// have found it (doc/consistency.md, Lemma L) unless it was deleted
    /// or damaged: waiting longer only hides every later op. Returns how
    /// many ops this let through.
    fn give_up_missing(&mut self, listing_ms: u64) -> usize {
        let after = self.tuning.lost_after.as_millis() as u64;
        let mut applied = 0;
        for (id, since) in self.replica.dag().missing_since() {
            if since.wall_ms.saturating_add(after) > listing_ms {
                continue;
            }
            let n = self.replica.declare_lost(id);
            let reason = format!("op missing from the store: {n} later ops applied without it");
            tracing::error!(log = %self.prefix, op = %id, later = n, "lost op: {reason}");
            LOST_OPS.fetch_add(1, Ordering::Relaxed);
            self.lost.insert(id, reason);
            applied += n;
        }
        if applied > 0 {
            self.note_unsnapshotted_now();
        }
        applied
    }

    fn note_unsnapshotted_now(&mut self) {
        let now = now_ms();
        self.unsnapshotted_since_ms = Some(self.unsnapshotted_since_ms.map_or(now, |t| t.min(now)));
    }

    /// Reads every snapshot of this log, the newest included (what a
    /// check does: opening reads only the newest). Returns how many were
    /// read, and those that do not open.
    pub async fn check_snapshots(
        &self,
        store: &dyn ObjectStore,
    ) -> Result<(usize, Vec<Damage>), SyncError> {
        let snaps = list_all(store, &self.snap_prefix(), None).await?;
        let mut damaged = Vec::new();
        for meta in &snaps {
            let bytes = match store.get(&meta.key).await {
                Ok(bytes) => bytes,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            if let Err(reason) = decode_snapshot::<S>(&self.key, &meta.key, &bytes) {
                damaged.push(Damage {
                    name: meta.key.clone(),
                    reason,
                    size: Some(bytes.len()),
                });
            }
        }
        Ok((snaps.len(), damaged))
    }

    /// Repairs what damage can be repaired (`facteur user check --repair`):
    /// writes a snapshot of the replica — which holds the ops applied
    /// without their lost parents, and the UIDs held back for damaged ops
    /// — so that no instance opening later waits for a lost op, then
    /// deletes the damaged op objects and the `snapshots` given (which
    /// do not open: nothing can be read from them). Returns the snapshot
    /// written (if one was needed) and how many objects were deleted.
    pub async fn repair(
        &mut self,
        store: &dyn ObjectStore,
        snapshots: &[Damage],
    ) -> Result<(Option<String>, usize), SyncError> {
        let damaged = self.damaged();
        if damaged.is_empty() && snapshots.is_empty() {
            return Ok((None, 0));
        }
        let written = self.write_snapshot(store).await?;
        let doomed: Vec<String> = self
            .damaged
            .keys()
            .filter(|name| {
                !self.damaged[*name]
                    .reason
                    .starts_with(UNREADABLE_BY_THIS_VERSION)
            })
            .chain(snapshots.iter().map(|d| &d.name))
            .filter(|name| **name != written)
            .cloned()
            .collect::<std::collections::BTreeSet<String>>()
            .into_iter()
            .collect();
        store.delete_many(&doomed).await?;
        self.damaged.retain(|name, _| !doomed.contains(name));
        self.lost.clear();
        Ok((Some(written), doomed.len()))
    }

    /// Ops waiting for parents that were never found: a sign of a lost
    /// op object.
    pub fn missing_parents(&self) -> Vec<OpId> {
        self.replica.dag().missing()
    }
}

/// Immutable objects a state refers to besides ops and snapshots, under
/// `<prefix>side/` (the mailbox's summary pages). Named
/// `{wall_ms:016x}-{instance}-{random:016x}`, sealed and zstd-compressed
/// under the log's key with their object key as associated data. A side
/// object is collected once no snapshot that garbage collection keeps
/// refers to it and it is older than the grace period (so one written
/// for a snapshot not stored yet is spared).
///
/// A companion of side object `n` is named `n.<suffix>` (the index pages of
/// a summary page, `mailbox::text`): no state refers to it, it may be
/// missing, and it is collected with `n`.
#[derive(Clone, Debug)]
pub struct SideObjects {
    key: SymmetricKey,
    prefix: String,
    instance: InstanceId,
}

impl SideObjects {
    /// A new side object: its name and sealed bytes, to PUT under
    /// [`SideObjects::object_key`] before any state refers to it.
    pub fn seal_new(&self, plain: &[u8]) -> (String, Bytes) {
        let name = format!(
            "{:016x}-{}-{:016x}",
            now_ms(),
            self.instance,
            rand::random::<u64>()
        );
        let sealed = Bytes::from(seal_body_padded(&self.key, &self.object_key(&name), plain));
        (name, sealed)
    }

    /// A companion of side object `owner` (see [`SideObjects`]): its name
    /// and sealed bytes.
    pub fn seal_companion(&self, owner: &str, suffix: &str, plain: &[u8]) -> (String, Bytes) {
        let name = format!("{owner}{suffix}");
        let sealed = Bytes::from(seal_body_padded(&self.key, &self.object_key(&name), plain));
        (name, sealed)
    }

    pub fn object_key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Opens a side object's sealed bytes.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.open_at_most(name, sealed, MAX_SNAPSHOT)
    }

    /// Opens a side object's sealed bytes, refusing more than `limit`
    /// plain bytes.
    pub fn open_at_most(
        &self,
        name: &str,
        sealed: &[u8],
        limit: usize,
    ) -> Result<Vec<u8>, CryptoError> {
        open_body(&self.key, &self.object_key(name), sealed, limit)
    }
}

/// Garbage collection of one log, detached from the log so that it runs
/// without holding the log's lock ([`StoredLog::collector`]).
pub struct Collector<S> {
    key: SymmetricKey,
    log_prefix: String,
    snap_prefix: String,
    side_prefix: String,
    grace: Duration,
    state: std::marker::PhantomData<fn() -> S>,
}

impl<S> Collector<S>
where
    S: State + DeserializeOwned,
    S::Op: DeserializeOwned,
{
    /// Deletes op objects and snapshots made useless by a snapshot older
    /// than the grace period, and side objects that no snapshot kept
    /// refers to (see [`SideObjects`]). Returns how many objects were
    /// deleted.
    pub async fn run(&self, store: &dyn ObjectStore) -> Result<usize, SyncError> {
        let grace_floor = now_ms().saturating_sub(self.grace.as_millis() as u64);
        let snaps = list_all(store, &self.snap_prefix, None).await?;
        // The base: the newest snapshot whose covered clock is older than
        // the grace floor. Older snapshots go.
        let Some(base_at) = snaps.iter().rposition(|m| {
            name_clock(m.key.strip_prefix(&self.snap_prefix).unwrap_or(""))
                .is_some_and(|hlc| hlc.wall_ms < grace_floor)
        }) else {
            return Ok(0);
        };
        let base = self.read_snapshot(store, &snaps[base_at].key).await?;
        // An op object goes only if the base and every newer snapshot hold
        // it: a newer one may have been written by an instance that had
        // not listed the op yet, and it is the one an instance opening
        // later reads. Side objects stay if any of them refers to them.
        // A newer snapshot that cannot be read may lack anything and refer
        // to anything: keep every op and side object then.
        let mut covered: HashSet<OpId> = base.replica.dag().ids().copied().collect();
        let mut referenced: Option<HashSet<String>> =
            Some(base.replica.state().side_objects().into_iter().collect());
        drop(base);
        for meta in &snaps[base_at + 1..] {
            match self.read_snapshot(store, &meta.key).await {
                Ok(snap) => {
                    covered.retain(|id| snap.replica.contains(id));
                    if let Some(r) = referenced.as_mut() {
                        r.extend(snap.replica.state().side_objects());
                    }
                }
                // Collected meanwhile by another instance, whose base was
                // newer: never the newest again, so it does not matter.
                Err(SyncError::Store(e)) if e.is_not_found() => {}
                Err(e) => {
                    tracing::warn!(snapshot = %meta.key, error = %e,
                        "unreadable snapshot: collecting no op object");
                    covered.clear();
                    referenced = None;
                }
            }
        }
        let mut doomed: Vec<String> = snaps[..base_at].iter().map(|m| m.key.clone()).collect();
        for meta in list_all(store, &self.log_prefix, None).await? {
            let name = meta.key.strip_prefix(&self.log_prefix).unwrap_or("");
            if let Ok(id) = parse_op_name_id(name)
                && covered.contains(&id)
            {
                doomed.push(meta.key);
            } else if parse_late_marker(name).is_some()
                && name_clock(name).is_some_and(|c| c.wall_ms < grace_floor)
            {
                // A marker is for syncs listing from after its op: long
                // done once the op is older than the grace period.
                doomed.push(meta.key);
            }
        }
        if let Some(referenced) = referenced {
            for meta in list_all(store, &self.side_prefix, None).await? {
                let name = meta.key.strip_prefix(&self.side_prefix).unwrap_or("");
                let written = name
                    .split('-')
                    .next()
                    .and_then(|t| u64::from_str_radix(t, 16).ok());
                // A companion goes with the object it belongs to.
                let owner = name.split_once('.').map_or(name, |(owner, _)| owner);
                // Young ones may belong to a snapshot not stored yet.
                if written.is_some_and(|t| t < grace_floor) && !referenced.contains(owner) {
                    doomed.push(meta.key);
                }
            }
        }
        store.delete_many(&doomed).await?;
        Ok(doomed.len())
    }

    async fn read_snapshot(
        &self,
        store: &dyn ObjectStore,
        key: &str,
    ) -> Result<Snapshot<S>, SyncError> {
        let bytes = store.get(key).await?;
        let corrupt = |reason: String| SyncError::Snapshot {
            name: key.to_owned(),
            reason,
        };
        decode_snapshot(&self.key, key, &bytes).map_err(corrupt)
    }
}

/// If `d` is an op object of this log whose op `replica` lacks: the op
/// is lost (an object under an op's name that does not open will not
/// open later), so the ops waiting for it are applied without it, and
/// the state guards against what it may have done
/// ([`State::damaged_op`]). Returns how many ops that let through.
fn lose_damaged<S: State>(log_prefix: &str, replica: &mut Replica<S>, d: &Damage) -> usize {
    let Some(name) = d.name.strip_prefix(log_prefix) else {
        return 0;
    };
    let Ok(id) = parse_op_name_id(name) else {
        return 0;
    };
    if replica.dag().knows(&id) {
        return 0;
    }
    replica.state_mut().damaged_op(id, d.size.unwrap_or(0));
    replica.declare_lost(id)
}

/// Syncs a log shared behind a lock, the way sessions share one: list with
/// no lock held, filter under a read lock, fetch with no lock, apply under
/// the write lock; a reload fetches and decodes the snapshot with no lock
/// and installs it under the write lock. Returns how many ops were
/// applied.
pub async fn sync_shared<S>(
    log: &tokio::sync::RwLock<StoredLog<S>>,
    store: &dyn ObjectStore,
) -> Result<usize, SyncError>
where
    S: State + Serialize + DeserializeOwned,
    S::Op: Serialize + DeserializeOwned,
{
    drive_sync(log, store).await
}

/// How the sync driver reaches the log: owned exclusively, or shared
/// behind a lock taken only for the moment a step reads or changes the
/// replica, never across a store call.
trait Access<S: State> {
    async fn read<R>(&mut self, f: impl FnOnce(&StoredLog<S>) -> R) -> R;
    async fn write<R>(&mut self, f: impl FnOnce(&mut StoredLog<S>) -> R) -> R;
}

impl<S: State> Access<S> for &mut StoredLog<S> {
    async fn read<R>(&mut self, f: impl FnOnce(&StoredLog<S>) -> R) -> R {
        f(self)
    }

    async fn write<R>(&mut self, f: impl FnOnce(&mut StoredLog<S>) -> R) -> R {
        f(self)
    }
}

impl<S: State> Access<S> for &tokio::sync::RwLock<StoredLog<S>> {
    async fn read<R>(&mut self, f: impl FnOnce(&StoredLog<S>) -> R) -> R {
        f(&*tokio::sync::RwLock::read(self).await)
    }

    async fn write<R>(&mut self, f: impl FnOnce(&mut StoredLog<S>) -> R) -> R {
        f(&mut *tokio::sync::RwLock::write(self).await)
    }
}

/// One sync: a reload when one is due, else plan, list, filter, fetch,
/// apply. Starts over (a few times) when a reload was overtaken or a
/// listed op vanished, which makes a reload due.
async fn drive_sync<S>(mut log: impl Access<S>, store: &dyn ObjectStore) -> Result<usize, SyncError>
where
    S: State + Serialize + DeserializeOwned,
    S::Op: Serialize + DeserializeOwned,
{
    let mut applied = 0;
    for _ in 0..SYNC_ATTEMPTS {
        let (plan, reload) = log.read(|l| (l.plan_sync(), l.reload_due())).await;
        if reload {
            match reload_once(&mut log, store).await? {
                Some(gained) => return Ok(applied + gained),
                None => continue,
            }
        }
        let listed = plan.list(store).await?;
        let wanted = log.read(|l| l.unknown(listed)).await;
        let fetched = wanted.fetch(store).await?;
        let (n, again) = log
            .write(|l| (l.apply(fetched), l.reload_needed || l.missing_unlisted))
            .await;
        applied += n;
        if !again {
            return Ok(applied);
        }
    }
    Err(SyncError::Unsettled {
        attempts: SYNC_ATTEMPTS,
    })
}

/// A reload: list the op objects, then load the newest snapshot, then
/// fetch the listed ops it lacks, all with no access to the replica; then
/// install the result. `None`: overtaken, try again.
async fn reload_once<S>(
    log: &mut impl Access<S>,
    store: &dyn ObjectStore,
) -> Result<Option<usize>, SyncError>
where
    S: State + Serialize + DeserializeOwned,
    S::Op: Serialize + DeserializeOwned,
{
    let (plan, key) = log.read(|l| (l.plan_reload(), l.key.clone())).await;
    let listed = plan.ops.list(store).await?;
    let newest = newest_snapshot::<S>(store, &key, &plan.snap_prefix).await?;
    let (name, mut replica, mut damaged) = match newest {
        Newest::Vanished => return Ok(None),
        // Nothing to start from (no snapshot yet, or none opens): with no
        // snapshot, nothing was collected, so the full listing is all.
        Newest::Nothing { damaged } => {
            let wanted = log.read(|l| l.unknown(listed)).await;
            let fetched = wanted.fetch(store).await?;
            let complete = fetched.vanished == 0;
            let applied = log
                .write(|l| {
                    let mut applied = 0;
                    for d in damaged {
                        applied += l.note_damage(d);
                    }
                    applied += l.apply(fetched);
                    l.reload_needed = !complete;
                    complete.then_some(applied)
                })
                .await;
            return Ok(applied);
        }
        Newest::Found {
            name,
            replica,
            damaged,
        } => (name, replica, damaged),
    };
    // Whether the snapshot holds listed op objects: if not, collecting
    // behind it would find nothing (see `StoredLog::collect_due`).
    let covers_objects = listed
        .names
        .iter()
        .any(|(_, id)| id.as_ref().is_ok_and(|id| replica.dag().knows(id)));
    let wanted = log.read(|l| l.unknown_to(&replica, listed)).await;
    let fetched = wanted.fetch(store).await?;
    if fetched.vanished > 0 {
        // Collected since the ops were listed, maybe behind a snapshot
        // newer than the one loaded: start over.
        return Ok(None);
    }
    let mut applied = 0;
    let mut writers = Vec::new();
    for (object_key, bytes) in fetched.ops {
        match replica.insert_bytes(&bytes) {
            Ok((_, n)) => {
                applied += n;
                if n > 0 {
                    writers.push(object_key);
                }
            }
            Err(e) => damaged.push(Damage {
                name: object_key,
                reason: e.to_string(),
                size: Some(bytes.len()),
            }),
        }
    }
    damaged.extend(fetched.damaged);
    let reloaded = Reloaded {
        snapshot: name,
        replica,
        covers_objects,
        applied,
        started_ms: fetched.started_ms,
        last_listed: fetched.last_listed,
        damaged,
        writers,
    };
    Ok(log.write(|l| l.install(reloaded)).await)
}

/// What a reload lists: the op objects first, then the snapshots.
struct ReloadPlan {
    ops: SyncPlan,
    snap_prefix: String,
}

/// A replica rebuilt from a snapshot and the op objects it lacks, ready
/// for [`StoredLog::install`].
struct Reloaded<S: State> {
    snapshot: String,
    replica: Box<Replica<S>>,
    /// Some op object listed is held by the snapshot.
    covers_objects: bool,
    /// Ops applied on top of the snapshot.
    applied: usize,
    /// When the listing of the op objects started.
    started_ms: u64,
    last_listed: Option<String>,
    damaged: Vec<Damage>,
    /// Keys of the ops applied on top of the snapshot.
    writers: Vec<String>,
}

/// The newest snapshot that opens, if any.
enum Newest<S: State> {
    Found {
        name: String,
        replica: Box<Replica<S>>,
        damaged: Vec<Damage>,
    },
    Nothing {
        damaged: Vec<Damage>,
    },
    /// A listed snapshot was gone when read: garbage collection deleted it
    /// behind a newer one that the listing missed. List again rather than
    /// fall back to an older one, which may lack collected ops.
    Vanished,
}

/// Reads the newest snapshot under `snap_prefix` that opens. Snapshots
/// that do not open are reported and skipped (damage: an older one is the
/// best left).
async fn newest_snapshot<S>(
    store: &dyn ObjectStore,
    key: &SymmetricKey,
    snap_prefix: &str,
) -> Result<Newest<S>, SyncError>
where
    S: State + DeserializeOwned,
    S::Op: DeserializeOwned,
{
    let mut damaged = Vec::new();
    for meta in list_all(store, snap_prefix, None).await?.iter().rev() {
        let bytes = match store.get(&meta.key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(Newest::Vanished),
            Err(e) => return Err(e.into()),
        };
        match decode_snapshot::<S>(key, &meta.key, &bytes) {
            Ok(snapshot) => {
                return Ok(Newest::Found {
                    name: meta.key.clone(),
                    replica: Box::new(snapshot.replica),
                    damaged,
                });
            }
            Err(reason) => {
                tracing::warn!(snapshot = %meta.key, %reason, "skipping unreadable snapshot");
                damaged.push(Damage {
                    name: meta.key.clone(),
                    reason,
                    size: Some(bytes.len()),
                });
            }
        }
    }
    Ok(Newest::Nothing { damaged })
}

/// Borrowing twin of [`Snapshot`] for writing without a clone.
#[derive(Serialize)]
#[serde(bound(serialize = "S: Serialize, S::Op: Serialize"))]
struct SnapshotRef<'a, S: State> {
    replica: &'a Replica<S>,
}

/// Opens and decodes a sealed snapshot. The JSON is parsed as it is
/// decompressed, so its plaintext (megabytes for a large mailbox) never
/// exists whole in memory: less peak memory at open, and no large freed
/// buffer left for the allocator to fragment.
fn decode_snapshot<S>(key: &SymmetricKey, name: &str, sealed: &[u8]) -> Result<Snapshot<S>, String>
where
    S: State + DeserializeOwned,
    S::Op: DeserializeOwned,
{
    open_body_with(key, name, sealed, MAX_SNAPSHOT, |plain| {
        serde_json::from_reader::<_, Snapshot<S>>(plain)
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

impl Prepared {
    /// Stores the op. Only after this succeeds may it be committed and
    /// shown to anyone.
    ///
    /// A PUT that completed later than [`LogTuning::late_after`] after the
    /// op's clock reading (or after it was prepared, by the monotonic
    /// clock, should the wall clock have been set back) may have landed
    /// behind syncs that already listed past its name: it is followed by a
    /// late marker, named now, which those syncs list and which sends them
    /// back to the op. A marker that is late itself is followed by
    /// another, up to [`LATE_MARKERS`]. Past that, or if a marker cannot
    /// be stored, the op is acknowledged all the same: it is stored, the
    /// markers stored send syncs back to it, and a full listing finds it
    /// anyway; failing the write would tell the client it did not happen
    /// when it will show.
    pub async fn store(self, store: &dyn ObjectStore) -> Result<Written, SyncError> {
        store.put(&self.object_key, self.sealed).await?;
        let mut markers = Vec::new();
        if let Some(late_after) = self.late_after {
            let prefix = &self.object_key[..self.object_key.len() - self.name.len()];
            let mut since = (self.hlc.wall_ms, self.prepared_at);
            let late = |(wall, at): (u64, Instant)| {
                Duration::from_millis(now_ms().saturating_sub(wall)).max(at.elapsed()) > late_after
            };
            while late(since) {
                if markers.len() == LATE_MARKERS {
                    tracing::warn!(op = %self.name, markers = markers.len(),
                        "an op and its late markers all took long to store: other instances may see the op only at their next full listing");
                    break;
                }
                since = (now_ms().max(self.hlc.wall_ms), Instant::now());
                let now = Hlc {
                    wall_ms: since.0,
                    counter: 0,
                };
                let marker = late_marker_name(now, &self.instance, self.hlc);
                tracing::warn!(op = %self.name, %marker, "an op took long to store: leaving a late marker");
                LATE_MARKERS_WRITTEN.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = store.put(&format!("{prefix}{marker}"), Bytes::new()).await {
                    tracing::warn!(op = %self.name, %marker, error = %e,
                        "a late marker could not be stored: other instances may see the op only at their next full listing");
                    break;
                }
                markers.push(marker);
            }
        }
        Ok(Written {
            name: self.name,
            bytes: self.bytes,
            id: self.id,
            markers,
        })
    }
}

impl SyncPlan {
    /// Lists the log from the plan's floor. Touches no replica: call it
    /// without holding locks.
    ///
    /// A listing that finds a late marker this log has not followed yet
    /// lists again from the op the marker points to, and keeps both
    /// listings. The op was stored before its marker, and the second
    /// listing starts after the marker was seen, so it finds the op
    /// (the first may not have: a listing is several requests, and the op
    /// may have landed behind the one that covered its name). Only markers
    /// followed this way are remembered; one left behind (markers pointing
    /// ever further back, past the relists made) is followed by the next
    /// sync.
    pub async fn list(self, store: &dyn ObjectStore) -> Result<Listed, SyncError> {
        let started_ms = now_ms();
        let mut listed = list_all_keys(store, &self.prefix, self.start_after.as_deref()).await?;
        let mut followed: Vec<String> = Vec::new();
        // A full listing started after every op that landed before it: no
        // marker to follow (the next incremental sync sees those that
        // land after it started).
        let relists = if self.start_after.is_some() {
            MARKER_RELISTS
        } else {
            0
        };
        for _ in 0..relists {
            let unseen: Vec<(&str, Hlc)> = listed
                .iter()
                .filter_map(|key| key.strip_prefix(&self.prefix))
                .filter_map(|name| parse_late_marker(name).map(|target| (name, target)))
                .filter(|(name, _)| {
                    !self.markers_seen.contains(*name) && !followed.iter().any(|f| f == name)
                })
                .collect();
            let Some(target) = unseen.iter().map(|(_, target)| *target).min() else {
                break;
            };
            let names: Vec<String> = unseen.iter().map(|(name, _)| (*name).to_owned()).collect();
            let back = format!("{}{}", self.prefix, op_name_floor(target));
            let again = list_all_keys(store, &self.prefix, Some(&back)).await?;
            followed.extend(names);
            listed.extend(again);
            listed.sort_unstable();
            listed.dedup();
        }
        let last_listed = listed.last().cloned();
        let mut names = Vec::with_capacity(listed.len());
        for key in listed {
            let name = key.strip_prefix(&self.prefix).unwrap_or(&key);
            if parse_late_marker(name).is_none() {
                let id = parse_op_name_id(name);
                names.push((key, id));
            }
        }
        Ok(Listed {
            plan: self,
            started_ms,
            last_listed,
            names,
            markers: followed,
        })
    }
}

impl ToFetch {
    /// Fetches and decrypts the wanted ops, with bounded parallelism.
    /// Touches no replica: call it without holding locks.
    pub async fn fetch(self, store: &dyn ObjectStore) -> Result<Fetched, SyncError> {
        let (started_ms, last_listed, wanted, mut damaged, markers) = (
            self.started_ms,
            self.last_listed,
            self.wanted,
            self.damaged,
            self.markers,
        );
        let plan = self.plan;
        let key = &plan.key;
        let results: Vec<Got> = stream::iter(wanted)
            .map(|object_key| async move {
                match store.get(&object_key).await {
                    Ok(sealed) => Ok(match open(key, &object_key, &sealed) {
                        Ok(plain) => Got::Op(object_key, plain),
                        Err(e) => Got::Damaged(Damage {
                            name: object_key,
                            reason: describe(&e),
                            size: Some(sealed.len()),
                        }),
                    }),
                    // Collected between LIST and GET: a snapshot holds it.
                    Err(e) if e.is_not_found() => Ok(Got::Vanished),
                    Err(e) => Err(SyncError::from(e)),
                }
            })
            .buffered(plan.parallelism)
            .try_collect()
            .await?;
        let mut ops = Vec::new();
        let mut vanished = 0;
        for r in results {
            match r {
                Got::Op(name, bytes) => ops.push((name, bytes)),
                Got::Damaged(d) => damaged.push(d),
                Got::Vanished => vanished += 1,
            }
        }
        Ok(Fetched {
            full: plan.full,
            started_ms,
            last_listed,
            markers,
            ops,
            damaged,
            vanished,
        })
    }
}

/// What the GET of one listed op object gave.
enum Got {
    Op(String, Vec<u8>),
    Damaged(Damage),
    Vanished,
}

fn describe(e: &CryptoError) -> String {
    format!("cannot decrypt: {e}")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde::Deserialize;

    use super::*;
    use crate::crypto::seal;
    use crate::log::OpMeta;
    use crate::store::{MemoryStore, S3Settings, S3Store, StoreError};

    /// A grow-only set of words: the simplest state with commutative apply.
    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Words(BTreeSet<String>);

    impl State for Words {
        type Op = String;
        fn apply(&mut self, op: &String, _meta: &OpMeta) {
            self.0.insert(op.clone());
        }
    }

    fn words(log: &StoredLog<Words>) -> Vec<&str> {
        log.state().0.iter().map(String::as_str).collect()
    }

    const PREFIX: &str = "users/test/mbox/m1/";

    async fn open_as(
        store: &dyn ObjectStore,
        key: &SymmetricKey,
        who: &str,
        tuning: LogTuning,
    ) -> StoredLog<Words> {
        StoredLog::open(
            store,
            key.clone(),
            PREFIX.into(),
            InstanceId::new(who).unwrap(),
            tuning,
            Words::default,
        )
        .await
        .unwrap()
    }

    /// Stores an op of `writer` (on top of its replica's heads) named at
    /// wall clock `wall_ms`, as a writer whose clock reads that would.
    async fn put_op_named_at(
        store: &dyn ObjectStore,
        writer: &StoredLog<Words>,
        word: &str,
        wall_ms: u64,
    ) {
        let envelope = writer
            .replica
            .prepare(word.to_string(), writer.instance.clone(), wall_ms);
        let (id, bytes) = envelope.encode().unwrap();
        let object_key = format!(
            "{PREFIX}log/{}",
            op_name(envelope.header.hlc, &writer.instance, &id)
        );
        let sealed = Bytes::from(seal(&writer.key, &object_key, &bytes));
        store.put(&object_key, sealed).await.unwrap();
    }

    #[tokio::test]
    async fn ops_written_by_one_instance_reach_another() {
        let store = MemoryStore::new();
        let key = SymmetricKey::random();
        let mut a = open_as(&store, &key, "a", LogTuning::default()).await;
        let mut b = open_as(&store, &key, "b", LogTuning::default()).await;
        a.append(&store, "hello".into()).await.unwrap();
        b.append(&store, "world".into()).await.unwrap();
        assert_eq!(a.sync(&store).await.unwrap(), 1);
        assert_eq!(b.sync(&store).await.unwrap(), 1);
        assert_eq!(words(&a), ["hello", "world"]);
        assert_eq!(words(&b), ["hello", "world"]);
        // Nothing changed: a sync is exactly one LIST and applies nothing.
        let before = store.calls();
        assert_eq!(a.sync(&store).await.unwrap(), 0);
        assert_eq!(store.calls() - before, 1);
        // What is stored is ciphertext under opaque names.
        for k in store.keys() {
            let body = store.get(&k).await.unwrap();
            assert!(
                !body.windows(5).any(|w| w == b"hello" || w == b"world"),
                "{k}"
            );
        }
    }

    #[tokio::test]
    async fn a_late_op_named_before_the_cursor_is_found() {
        let store = MemoryStore::new();
        let key = SymmetricKey::random();
        let mut a = open_as(&store, &key, "a", LogTuning::default()).await;
        a.append(&store, "now".into()).await.unwrap();
        // A writer whose clock is ten minutes behind: its op's name sorts
        // far before the cursor, beyond the lookback.
        let mut slow = open_as(&store, &key, "slow", LogTuning::default()).await;
        slow.replica = Replica::new(Words::default());
        put_op_named_at(&store, &slow, "late", now_ms() - 600_000).await;

        assert_eq!(
            a.sync(&store).await.unwrap(),
            0,
            "an incremental sync does not see it"
        );
        a.last_full_ms = 0; // the periodic full listing is due
        assert_eq!(a.sync(&store).await.unwrap(), 1);
        assert_eq!(words(&a), ["late", "now"]);
    }

    /// An op whose PUT lands after a reader's syncs have listed past its
    /// name, beyond their lookback, is found by the reader's next sync
    /// through the late marker its writer leaves; without the marker it is
    /// not. Markers are not damage, keep syncs incremental, send a reader
    /// back once, and go with garbage collection.
    #[tokio::test]
    async fn an_op_stored_late_is_found_through_its_late_marker() {
        let store = MemoryStore::new();
        let key = SymmetricKey::random();
        let tuning = LogTuning {
            lookback: Duration::from_millis(400),
            late_after: Duration::from_millis(150),
            ..LogTuning::default()
        };
        let mut slow = open_as(&store, &key, "slow", tuning.clone()).await;
        let mut fast = open_as(&store, &key, "fast", tuning.clone()).await;
        let mut reader = open_as(&store, &key, "reader", tuning.clone()).await;
        // Named now, stored (acknowledged) a long while later.
        let late = slow.prepare("late".into()).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        fast.append(&store, "fresh".into()).await.unwrap();
        assert_eq!(reader.sync(&store).await.unwrap(), 1);
        // The reader syncs on: its floor passes the late op's name.
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(reader.sync(&store).await.unwrap(), 0);
        let floor = reader.plan_sync().start_after.expect("incremental");
        assert!(floor > format!("{PREFIX}log/{}", late.name), "{floor}");

        // Without a marker (the bare PUT), the next sync misses it.
        store
            .put(&late.object_key, late.sealed.clone())
            .await
            .unwrap();
        assert_eq!(reader.sync(&store).await.unwrap(), 0, "missed, as expected");
        // The writer's own store: the same PUT, then a marker.
        let before = late_markers_written();
        let written = late.store(&store).await.unwrap();
        slow.commit(written);
        assert!(late_markers_written() > before);
        assert_eq!(reader.sync(&store).await.unwrap(), 1);
        assert!(words(&reader).contains(&"late"), "{:?}", words(&reader));
        assert!(reader.damaged().is_empty(), "{:?}", reader.damaged());

        // The marker sends the reader back once: the next sync is one
        // incremental LIST again.
        let plan = reader.plan_sync();
        assert!(plan.start_after.is_some() && !plan.full);
        let calls = store.calls();
        assert_eq!(reader.sync(&store).await.unwrap(), 0);
        assert_eq!(store.calls() - calls, 1);
        // A full listing sees the marker and reports nothing.
        reader.last_full_ms = 0;
        assert_eq!(reader.sync(&store).await.unwrap(), 0);
        assert!(reader.damaged().is_empty(), "{:?}", reader.damaged());
        // Garbage collection takes the marker once it is past the grace
        // period (zero here).
        let markers = |store: &MemoryStore| {
            store
                .keys()
                .into_iter()
                .filter(|k| k.contains("-late-"))
                .count()
        };
        assert_eq!(markers(&store), 1);
        let mut collecting = open_as(
            &store,
            &key,
            "gc",
            LogTuning {
                snapshot_every: 1,
                gc_grace: Duration::ZERO,
                ..tuning
            },
        )
        .await;
        collecting.write_snapshot(&store).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        collecting.collect_garbage(&store).await.unwrap();
        assert_eq!(markers(&store), 0);
    }

    /// A marker that is late itself is followed by another, up to
    /// `LATE_MARKERS`; then the op is acknowledged all the same (it is
    /// stored; failing would tell the client it did not happen). Its
    /// writer does not follow its own markers.
    #[tokio::test]
    async fn an_op_whose_markers_are_late_too_is_still_acknowledged() {
        let inner = MemoryStore::new();
        let store = HookStore {
            slow_puts: Some(("-late-", Duration::from_millis(60))),
            ..HookStore::new(&inner)
        };
        let key = SymmetricKey::random();
        let tuning = LogTuning {
            lookback: Duration::from_millis(100),
            late_after: Duration::from_millis(40),
            ..LogTuning::default()
        };
        let mut a = open_as(&store, &key, "a", tuning.clone()).await;
        let late = a.prepare("late".into()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let written = late.store(&store).await.unwrap();
        a.commit(written);
        let markers = inner.keys().iter().filter(|k| k.contains("-late-")).count();
        assert_eq!(markers, LATE_MARKERS);
        assert_eq!(words(&a), ["late"]);
        // Its own markers send the writer nowhere: one LIST.
        let calls = inner.calls();
        assert_eq!(a.sync(&store).await.unwrap(), 0);
        assert_eq!(inner.calls() - calls, 1);
    }

    /// A sync lists from when the previous listing started, not from the
    /// last name it read: after an op named by a clock a minute ahead,
    /// the next op of a writer with a right clock is still found at once.
    /// (From the cursor, the floor would be 50 s ahead of that op.)
    #[tokio::test]
    async fn an_op_after_one_from_a_clock_ahead_is_found() {
        let store = MemoryStore::new();
        let key = SymmetricKey::random();
        let mut reader = open_as(&store, &key, "reader", LogTuning::default()).await;
        let ahead = open_as(&store, &key, "ahead", LogTuning::default()).await;
        put_op_named_at(&store, &ahead, "ahead", now_ms() + 60_000).await;
        assert_eq!(reader.sync(&store).await.unwrap(), 1);
        let mut right = open_as(&store, &key, "right", LogTuning::default()).await;
        right.replica = Replica::new(Words::default()); // as if it had not synced
        right.append(&store, "right".into()).await.unwrap();
        assert_eq!(reader.sync(&store).await.unwrap(), 1);
        assert!(words(&reader).contains(&"right"), "{:?}", words(&reader));
    }

    /// An op whose parent landed late, before its marker, is applied by a
    /// sync whose listing reached the op but not the parent: the sync lists
    /// in full before it answers. (The parent landed before the child was
    /// named: the child's writer had it.)
    #[tokio::test]
    async fn an_op_whose_parent_landed_late_is_applied_at_once() {
        let store = MemoryStore::new();
        let key = SymmetricKey::random();
        let mut reader = open_as(&store, &key, "reader", LogTuning::default()).await;
        reader.append(&store, "first".into()).await.unwrap();
        reader.sync(&store).await.unwrap();
        // The parent, named 20 s ago, lands now; its marker is not there
        // (not yet, or its writer died).
        let mut late = open_as(&store, &key, "late", LogTuning::default()).await;
        late.replica = Replica::new(Words::default()); // its clock as it was
        put_op_named_at(&store, &late, "parent", now_ms() - 20_000).await;
        // Another instance syncs (in full: it just opened), then writes
        // on top of it.
        let mut child = open_as(&store, &key, "child", LogTuning::default()).await;
        child.append(&store, "child".into()).await.unwrap();
        assert!(!reader.plan_sync().full);
        reader.sync(&store).await.unwrap();
        assert_eq!(words(&reader), ["child", "first", "parent"]);
        assert_eq!(reader.replica.dag().pending_len(), 0);
        assert!(!reader.plan_sync().full, "back to incremental syncs");
    }

    #[tokio::test]
    async fn quiet_polls_do_not_list_an_old_burst_again() {
        let store = MemoryStore::new();
        let key = SymmetricKey::random();
        let tuning = LogTuning {
            lookback: Duration::from_millis(50),
            ..LogTuning::default()
        };
        let mut a = open_as(&store, &key, "a", tuning).await;
        for i in 0..3 {
            a.append(&store, format!("w{i}")).await.unwrap();
        }
        let newest = format!("{PREFIX}log/{}", a.cursor.clone().unwrap());
        // Wall-clock time must pass the lookback after the burst.
        std::thread::sleep(Duration::from_millis(80));
        a.sync(&store).await.unwrap();
        let start = a.plan_sync().start_after.expect("an incremental sync");
        assert!(
            start > newest,
            "{start} would list the burst up to {newest} again"
        );
    }

    #[tokio::test]
    async fn snapshots_shorten_opening_and_gc_keeps_the_state() {
        let store = MemoryStore::new();
        let key = SymmetricKey::random();
        let tuning = LogTuning {
            snapshot_every: 5,
            gc_grace: Duration::ZERO,
            ..LogTuning::default()
        };
        let mut a = open_as(&store, &key, "a", tuning.clone()).await;
        for i in 0..6 {
            a.append(&store, format!("w{i}")).await.unwrap();
        }
        assert!(a.snapshot_due());
        a.write_snapshot(&store).await.unwrap();
        assert!(!a.snapshot_due());
        a.append(&store, "after".into()).await.unwrap();

        // Opening reads the snapshot plus only the op written after it.
        let before = store.calls();
        let b = open_as(&store, &key, "b", tuning.clone()).await;
        assert_eq!(words(&b), words(&a));
        let calls = store.calls() - before;
        assert!(
            calls <= 5,
            "list snap, get snap, list log, get 1 op; got {calls}"
        );

        // Collecting drops the 6 covered ops, keeps the newer one.
        std::thread::sleep(Duration::from_millis(2)); // the snapshot must be older than "now"
        assert_eq!(a.collect_garbage(&store).await.unwrap(), 6);
        let ops = list_all(&store, &format!("{PREFIX}log/"), None)
            .await
            .unwrap();
        assert_eq!(ops.len(), 1);
        let c = open_as(&store, &key, "c", tuning).await;
        assert_eq!(words(&c), words(&a));
    }

    /// A's snapshot O holds op Y; B, which had not listed Y yet, writes N,
    /// newer by name, without Y. A collection whose base is O must not
    /// delete Y (N lacks it): once O goes too, an instance opening afresh
    /// would never see Y.
    #[tokio::test]
    async fn an_op_missing_from_a_newer_snapshot_is_not_collected() {
        let store = MemoryStore::new();
        let key = SymmetricKey::random();
        let tuning = LogTuning::default();
        let mut b = open_as(&store, &key, "b", tuning.clone()).await;
        let mut w = open_as(&store, &key, "w", tuning.clone()).await;
        w.append(&store, "y".into()).await.unwrap();
        let mut a = open_as(&store, &key, "a", tuning.clone()).await;
        assert_eq!(words(&a), ["y"]);
        let older = a.write_snapshot(&store).await.unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // B writes without syncing first: its snapshot names a later clock.
        b.append(&store, "z".into()).await.unwrap();
        let newer = b.write_snapshot(&store).await.unwrap();
        assert!(newer > older, "{newer} sorts after {older}");

        // The grace floor falls between the two snapshots' clocks: O is
        // the base, N is younger than the grace period.
        let clock = |name: &str| {
            name_clock(name.strip_prefix(&format!("{PREFIX}snap/")).unwrap())
                .unwrap()
                .wall_ms
        };
        let floor = (clock(&older) + clock(&newer)) / 2;
        let mut collector = a.collector();
        collector.grace = Duration::from_millis(now_ms() - floor);
        collector.run(&store).await.unwrap();
        // Later N is past the grace period too and becomes the base: O
        // and the ops N covers go.
        std::thread::sleep(Duration::from_millis(2));
        collector.grace = Duration::ZERO;
        collector.run(&store).await.unwrap();
        let snaps = list_all(&store, &format!("{PREFIX}snap/"), None)
            .await
            .unwrap();
        assert_eq!(snaps.len(), 1, "only N is left");

        let c = open_as(&store, &key, "c", tuning).await;
        assert_eq!(words(&c), ["y", "z"], "Y survives in the log");
    }

    /// A log shared behind a lock, silent for longer than the grace period
    /// while another instance snapshots and collects the ops it never saw,
    /// starts over from the newest snapshot at its next sync.
    #[tokio::test]
    async fn a_shared_log_silent_past_the_grace_period_reloads() {
        let store = MemoryStore::new();
        let key = SymmetricKey::random();
        let tuning = LogTuning {
            full_list_every: Duration::from_millis(100),
            gc_grace: Duration::from_millis(400),
            ..LogTuning::default()
        };
        let b = tokio::sync::RwLock::new(open_as(&store, &key, "b", tuning.clone()).await);
        let mut a = open_as(&store, &key, "a", tuning.clone()).await;
        for i in 0..3 {
            a.append(&store, format!("w{i}")).await.unwrap();
        }
        std::thread::sleep(Duration::from_millis(500));
        a.sync(&store).await.unwrap();
        a.write_snapshot(&store).await.unwrap();
        assert_eq!(a.collect_garbage(&store).await.unwrap(), 3);
        a.append(&store, "w3".into()).await.unwrap();

        sync_shared(&b, &store).await.unwrap();
        let b = b.read().await;
        assert_eq!(words(&b), words(&a));
        assert!(b.missing_parents().is_empty());
    }

    /// A memory store that runs a hook once, just before serving the first
    /// GET of a key that starts with `trigger`: a way to make another
    /// instance act between two steps of a sync.
    struct HookStore {
        inner: MemoryStore,
        hook: std::sync::Mutex<Option<(String, Hook)>>,
        /// PUTs of keys containing this take this long.
        slow_puts: Option<(&'static str, Duration)>,
    }

    type Hook = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send>;

    impl std::fmt::Debug for HookStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("HookStore").finish_non_exhaustive()
        }
    }

    impl HookStore {
        fn new(inner: &MemoryStore) -> HookStore {
            HookStore {
                inner: inner.clone(),
                hook: std::sync::Mutex::new(None),
                slow_puts: None,
            }
        }

        fn arm(&self, trigger: &str, hook: Hook) {
            *self.hook.lock().unwrap() = Some((trigger.to_owned(), hook));
        }

        fn fired(&self) -> bool {
            self.hook.lock().unwrap().is_none()
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for HookStore {
        async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
            if let Some((slow, delay)) = self.slow_puts
                && key.contains(slow)
            {
                tokio::time::sleep(delay).await;
            }
            self.inner.put(key, body).await
        }

        async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
            let hook = {
                let mut armed = self.hook.lock().unwrap();
                match armed.take() {
                    Some((trigger, hook)) if key.starts_with(&trigger) => Some(hook),
                    other => {
                        *armed = other;
                        None
                    }
                }
            };
            if let Some(hook) = hook {
                hook().await;
            }
            self.inner.get(key).await
        }

        async fn get_range(
            &self,
            key: &str,
            range: std::ops::Range<u64>,
        ) -> Result<Bytes, StoreError> {
            self.inner.get_range(key, range).await
        }

        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.inner.delete(key).await
        }

        async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
            self.inner.delete_many(keys).await
        }

        async fn list(
            &self,
            prefix: &str,
            start_after: Option<&str>,
            limit: usize,
        ) -> Result<crate::store::ListPage, StoreError> {
            self.inner.list(prefix, start_after, limit).await
        }
    }

    /// An op this instance commits while a reload is being fetched is
    /// neither lost nor hidden for a moment: the reload, which listed the
    /// ops before it was written, is not installed and starts over.
    #[tokio::test]
    async fn an_op_committed_during_a_reload_is_kept() {
        let store = MemoryStore::new();
        let hooked = HookStore::new(&store);
        let key = SymmetricKey::random();
        let tuning = LogTuning {
            full_list_every: Duration::from_millis(100),
            gc_grace: Duration::from_millis(400),
            ..LogTuning::default()
        };
        let b = std::sync::Arc::new(tokio::sync::RwLock::new(
            open_as(&hooked, &key, "b", tuning.clone()).await,
        ));
        let mut a = open_as(&store, &key, "a", tuning.clone()).await;
        for i in 0..3 {
            a.append(&store, format!("w{i}")).await.unwrap();
        }
        std::thread::sleep(Duration::from_millis(500));
        a.write_snapshot(&store).await.unwrap();
        assert_eq!(a.collect_garbage(&store).await.unwrap(), 3);

        // While B's reload reads the snapshot (no lock held), a session
        // of B writes an op.
        let (shared, inner) = (b.clone(), store.clone());
        hooked.arm(
            &format!("{PREFIX}snap/"),
            Box::new(move || {
                Box::pin(async move {
                    let prepared = shared.read().await.prepare("mine".into()).unwrap();
                    let written = prepared.store(&inner).await.unwrap();
                    assert_eq!(shared.write().await.commit(written), 1);
                })
            }),
        );
        sync_shared(&b, &hooked).await.unwrap();
        assert!(hooked.fired());
        a.sync(&store).await.unwrap();
        let b = b.read().await;
        assert_eq!(words(&b), ["mine", "w0", "w1", "w2"]);
        assert_eq!(words(&b), words(&a));
    }

    /// An op listed by a sync but collected before its GET is held by a
    /// snapshot: the sync reloads from it rather than going on without.
    #[tokio::test]
    async fn an_op_collected_between_list_and_get_is_reloaded() {
        let store = MemoryStore::new();
        let hooked = HookStore::new(&store);
        let key = SymmetricKey::random();
        let mut b = open_as(&hooked, &key, "b", LogTuning::default()).await;
        let mut a = open_as(&store, &key, "a", LogTuning::default()).await;
        a.append(&store, "one".into()).await.unwrap();
        a.write_snapshot(&store).await.unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let mut collector = a.collector();
        collector.grace = Duration::ZERO;
        let inner = store.clone();
        hooked.arm(
            &format!("{PREFIX}log/"),
            Box::new(move || {
                Box::pin(async move {
                    assert_eq!(collector.run(&inner).await.unwrap(), 1);
                })
            }),
        );
        b.sync(&hooked).await.unwrap();
        assert!(hooked.fired());
        assert_eq!(words(&b), ["one"]);
        assert!(!b.reload_due());
    }

    /// Opening lists the snapshots, and the newest is collected behind a
    /// newer one before it is read: the opener lists again instead of
    /// falling back to an older snapshot (or none), which lacks collected
    /// ops.
    #[tokio::test]
    async fn opening_reads_the_newest_snapshot_even_if_replaced_meanwhile() {
        let store = MemoryStore::new();
        let hooked = HookStore::new(&store);
        let key = SymmetricKey::random();
        let mut a = open_as(&store, &key, "a", LogTuning::default()).await;
        a.append(&store, "x".into()).await.unwrap();
        a.write_snapshot(&store).await.unwrap();
        std::thread::sleep(Duration::from_millis(2));
        a.append(&store, "y".into()).await.unwrap();
        let newest = a.write_snapshot(&store).await.unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let mut collector = a.collector();
        collector.grace = Duration::ZERO;
        // The older snapshot and both op objects: only the newest is left.
        assert_eq!(collector.run(&store).await.unwrap(), 3);
        let inner = store.clone();
        hooked.arm(
            &newest,
            Box::new(move || {
                Box::pin(async move {
                    a.append(&inner, "z".into()).await.unwrap();
                    a.write_snapshot(&inner).await.unwrap();
                    std::thread::sleep(Duration::from_millis(2));
                    // The snapshot being read and the new op object.
                    assert_eq!(collector.run(&inner).await.unwrap(), 2);
                })
            }),
        );
        let c = open_as(&hooked, &key, "c", LogTuning::default()).await;
        assert!(hooked.fired());
        assert_eq!(words(&c), ["x", "y", "z"]);
    }

    /// A reload lists the op objects before the snapshots: an op collected
    /// between the two listings is then either listed (and its GET finds
    /// it gone, so the reload starts over) or held by a snapshot listed.
    /// Listing the snapshots first would miss an op collected behind a
    /// snapshot written after that listing.
    #[tokio::test]
    async fn a_reload_lists_the_ops_before_the_snapshots() {
        let store = MemoryStore::new();
        let hooked = HookStore::new(&store);
        let key = SymmetricKey::random();
        let mut a = open_as(&store, &key, "a", LogTuning::default()).await;
        a.append(&store, "x".into()).await.unwrap();
        let older = a.write_snapshot(&store).await.unwrap();
        a.append(&store, "y".into()).await.unwrap();
        let inner = store.clone();
        hooked.arm(
            &older,
            Box::new(move || {
                Box::pin(async move {
                    // A newer snapshot holds both ops; their objects go
                    // (the older snapshot is still there: P allows that).
                    a.write_snapshot(&inner).await.unwrap();
                    let ops = list_all(&inner, &format!("{PREFIX}log/"), None)
                        .await
                        .unwrap();
                    let ops: Vec<String> = ops.into_iter().map(|m| m.key).collect();
                    inner.delete_many(&ops).await.unwrap();
                })
            }),
        );
        let c = open_as(&hooked, &key, "c", LogTuning::default()).await;
        assert!(hooked.fired());
        assert_eq!(words(&c), ["x", "y"]);
    }

    /// A newer snapshot that cannot be read may lack any op: the collector
    /// then deletes no op object.
    #[tokio::test]
    async fn an_unreadable_newer_snapshot_keeps_every_op() {
        let store = MemoryStore::new();
        let key = SymmetricKey::random();
        let mut a = open_as(&store, &key, "a", LogTuning::default()).await;
        a.append(&store, "x".into()).await.unwrap();
        a.write_snapshot(&store).await.unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let future = format!(
            "{PREFIX}snap/{:016x}-00000000-b-0000000000000000",
            now_ms() + 3_600_000
        );
        store
            .put(&future, Bytes::from_static(b"garbage"))
            .await
            .unwrap();
        let mut collector = a.collector();
        collector.grace = Duration::ZERO;
        assert_eq!(collector.run(&store).await.unwrap(), 0);
        let ops = list_all(&store, &format!("{PREFIX}log/"), None)
            .await
            .unwrap();
        assert_eq!(ops.len(), 1);
    }

    /// A few ops are enough for a snapshot once the oldest is
    /// `snapshot_age` old, counted from its writer's clock, also by an
    /// instance that found them later.
    #[tokio::test]
    async fn a_quiet_log_is_snapshotted_once_its_ops_are_old_enough() {
        let store = MemoryStore::new();
        let key = SymmetricKey::random();
        let young = LogTuning {
            snapshot_age: Duration::from_secs(3600),
            ..LogTuning::default()
        };
        let mut a = open_as(&store, &key, "a", young.clone()).await;
        assert!(!a.snapshot_due(), "nothing to cover");
        a.append(&store, "x".into()).await.unwrap();
        assert!(!a.snapshot_due(), "one op, a second old");
        let aged = LogTuning {
            snapshot_age: Duration::ZERO,
            ..young
        };
        // An instance opening the log later counts from the op's clock.
        let mut b = open_as(&store, &key, "b", aged.clone()).await;
        assert!(b.snapshot_due());
        b.write_snapshot(&store).await.unwrap();
        assert!(!b.snapshot_due(), "covered");
        // Ops applied on top of a snapshot count from the snapshot's clock.
        a.append(&store, "y".into()).await.unwrap();
        let c = open_as(&store, &key, "c", aged).await;
        assert_eq!(words(&c), ["x", "y"]);
        assert!(c.snapshot_due());
    }

    /// The defaults collect well within the hour (issue #15: ops kept for
    /// an hour made a store of 30-message mailboxes hold 40 objects per
    /// message), while keeping the margins doc/consistency.md needs:
    /// `G ≥ 2F`, and a polled replica lists in full before a reload is due.
    #[test]
    fn the_default_windows_collect_early_and_keep_the_margins() {
        let t = LogTuning::default();
        assert!(t.gc_grace >= 2 * t.full_list_every, "G ≥ 2F");
        assert!(
            t.gc_grace - t.full_list_every >= t.full_list_every + Duration::from_secs(60),
            "a full listing every F comes well before the reload at G − F"
        );
        // An op is covered within `snapshot_age` (or 500 ops) and
        // collected once that snapshot is `gc_grace` old.
        assert!(
            t.snapshot_age + t.gc_grace <= Duration::from_secs(20 * 60),
            "{:?} + {:?}",
            t.snapshot_age,
            t.gc_grace
        );
    }

    /// Windows scaled down from the defaults, keeping their ratios
    /// (F = 5 min, G = 12 min, lookback 10 s, snapshot_age 4 min) at one
    /// minute to 200 ms. Late markers (after 4 s) never occur at this
    /// scale: these tests are about full listings and collection.
    fn scaled() -> LogTuning {
        LogTuning {
            lookback: Duration::from_millis(33),
            full_list_every: Duration::from_millis(200),
            gc_grace: Duration::from_millis(480),
            snapshot_age: Duration::from_millis(160),
            lost_after: Duration::from_millis(200),
            ..LogTuning::default()
        }
    }

    fn op_count(store: &MemoryStore) -> usize {
        store
            .keys()
            .iter()
            .filter(|k| k.starts_with(&format!("{PREFIX}log/")))
            .count()
    }

    /// A mailbox that fell quiet writes no more snapshots, and collection
    /// ran only after writing one: the ops of its last grace period stayed
    /// for good. Now a sync collects behind the newest snapshot once it is
    /// past the grace period, once; and a replica opened on a snapshot
    /// that covers no op object left does not collect at all.
    #[tokio::test]
    async fn a_quiet_log_is_collected_behind_its_last_snapshot() {
        let store = MemoryStore::new();
        let key = SymmetricKey::random();
        let mut a = open_as(&store, &key, "a", scaled()).await;
        for i in 0..4 {
            a.append(&store, format!("w{i}")).await.unwrap();
        }
        a.write_snapshot(&store).await.unwrap();
        assert!(!a.collect_due(), "the snapshot is younger than the grace");
        std::thread::sleep(Duration::from_millis(500));
        assert!(a.collect_due());
        let collector = a.start_collection();
        assert!(!a.collect_due(), "once per snapshot");
        assert_eq!(collector.run(&store).await.unwrap(), 4);
        assert_eq!(op_count(&store), 0);
        let b = open_as(&store, &key, "b", scaled()).await;
        assert_eq!(words(&b), ["w0", "w1", "w2", "w3"]);
        assert!(!b.collect_due(), "nothing behind the snapshot");
    }

    /// The adversary of a short grace period. A paused instance P holds
    /// an op of its own and an old view while the others write, snapshot
    /// and collect past the grace period; a slow writer's op, prepared
    /// before all that, lands only after the collection. Nothing landed
    /// may go: P, on waking, reloads and sees everything; a snapshot P
    /// writes then holds everything; after collecting behind it, a new
    /// instance still opens every op.
    #[tokio::test]
    async fn a_paused_instance_and_a_late_op_lose_nothing() {
        let store = MemoryStore::new();
        let key = SymmetricKey::random();
        let mut p = open_as(&store, &key, "p", scaled()).await;
        let mut a = open_as(&store, &key, "a", scaled()).await;
        p.append(&store, "p0".into()).await.unwrap();
        // The slow writer prepares now; its PUT lands at the very end.
        let slow = open_as(&store, &key, "slow", scaled()).await;
        let late = slow.prepare("late".into()).unwrap();

        // A writes and snapshots in rounds, each past the grace period, and
        // collects after each snapshot (as `Mailbox::snapshot` does).
        for round in 0..3 {
            for i in 0..3 {
                a.append(&store, format!("a{round}{i}")).await.unwrap();
            }
            std::thread::sleep(Duration::from_millis(250));
            a.sync(&store).await.unwrap();
            a.write_snapshot(&store).await.unwrap();
            a.collector().run(&store).await.unwrap();
        }
        assert!(op_count(&store) < 10, "ops were collected meanwhile");
        late.store(&store).await.unwrap();

        // P wakes: silent for longer than G − F, it reloads.
        assert!(p.reload_due());
        p.sync(&store).await.unwrap();
        let mut every = vec!["late", "p0"];
        let mut written: Vec<String> = (0..3)
            .flat_map(|r| (0..3).map(move |i| format!("a{r}{i}")))
            .collect();
        written.sort();
        every.extend(written.iter().map(String::as_str));
        every.sort();
        assert_eq!(words(&p), every, "the paused instance");
        // P snapshots what it holds; once that is past the grace period,
        // collection behind it leaves no op object at all.
        p.write_snapshot(&store).await.unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert!(p.collect_due());
        p.start_collection().run(&store).await.unwrap();
        assert_eq!(op_count(&store), 0);
        let fresh = open_as(&store, &key, "fresh", scaled()).await;
        assert_eq!(words(&fresh), every, "an instance opening afresh");
        assert!(fresh.missing_parents().is_empty());
        a.sync(&store).await.unwrap();
        assert_eq!(words(&a), every, "the collecting instance");
    }

    /// A snapshot is taken only from a replica whose last full listing is
    /// younger than `full_list_every` (and complete).
    #[tokio::test]
    async fn a_snapshot_needs_a_recent_full_listing() {
        let store = MemoryStore::new();
        let key = SymmetricKey::random();
        let tuning = LogTuning {
            full_list_every: Duration::from_millis(300),
            snapshot_every: 1,
            ..LogTuning::default()
        };
        let mut a = open_as(&store, &key, "a", tuning).await;
        a.append(&store, "x".into()).await.unwrap();
        assert!(a.snapshot_due());
        std::thread::sleep(Duration::from_millis(350));
        assert!(!a.snapshot_due());
        let err = a.prepare_snapshot().unwrap_err();
        assert!(
            matches!(err, SyncError::Stale { .. }) && err.is_transient(),
            "{err}"
        );
        // The next sync lists in full (one is due): allowed again.
        a.sync(&store).await.unwrap();
        assert!(a.snapshot_due());
        a.prepare_snapshot().unwrap();
        // A listed op that vanished forbids it until the reload.
        a.reload_needed = true;
        assert!(!a.snapshot_due());
        assert!(a.prepare_snapshot().is_err());
        // write_snapshot syncs (here: reloads) first.
        a.write_snapshot(&store).await.unwrap();
        assert!(!a.reload_due());
    }

    /// Ops applied while a snapshot is stored are not in it: they stay
    /// counted and make the next snapshot due (they used to be forgotten,
    /// and a mailbox falling quiet then kept them out of every snapshot).
    #[tokio::test]
    async fn ops_applied_while_a_snapshot_is_stored_stay_counted() {
        let store = MemoryStore::new();
        let key = SymmetricKey::random();
        let tuning = LogTuning {
            snapshot_every: 3,
            ..LogTuning::default()
        };
        let mut a = open_as(&store, &key, "a", tuning.clone()).await;
        let mut b = open_as(&store, &key, "b", tuning).await;
        for word in ["x", "y", "z"] {
            a.append(&store, word.into()).await.unwrap();
        }
        assert!(a.snapshot_due());
        let prepared = a.prepare_snapshot().unwrap();
        let covered = prepared.covered();
        assert_eq!(covered, 3);
        // Meanwhile another instance writes two ops, and a applies them.
        b.sync(&store).await.unwrap();
        b.append(&store, "p".into()).await.unwrap();
        b.append(&store, "q".into()).await.unwrap();
        a.sync(&store).await.unwrap();
        let name = prepared.store(&store).await.unwrap();
        a.snapshot_written(name, covered);
        assert_eq!(a.since_snapshot, 2);
        assert!(a.unsnapshotted_since_ms.is_some());
        assert!(!a.snapshot_due());
        a.append(&store, "r".into()).await.unwrap();
        assert!(a.snapshot_due(), "the two ops left out count for the next");
        // A snapshot holding everything leaves nothing counted.
        a.write_snapshot(&store).await.unwrap();
        assert_eq!(a.since_snapshot, 0);
        assert!(a.unsnapshotted_since_ms.is_none());
    }

    #[tokio::test]
    async fn an_op_that_opens_but_does_not_decode_is_kept_not_lost() {
        let store = MemoryStore::new();
        let key = SymmetricKey::random();
        let mut a = open_as(&store, &key, "a", LogTuning::default()).await;
        a.append(&store, "one".into()).await.unwrap();
        // What a newer version might write: sealed with the log's key (so
        // a key holder wrote it) but in a form this version cannot read.
        let future = format!(
            "{PREFIX}log/{}",
            op_name(
                Hlc {
                    wall_ms: now_ms(),
                    counter: 0
                },
                &a.instance,
                &OpId::of_bytes(b"future")
            )
        );
        store
            .put(
                &future,
                Bytes::from(seal(&key, &future, b"{\"a newer\": 1}")),
            )
            .await
            .unwrap();
        let mut b = open_as(&store, &key, "b", LogTuning::default()).await;
        let damage = b.damaged();
        let found = damage.iter().find(|d| d.name == future).expect("reported");
        assert!(
            found.reason.starts_with(UNREADABLE_BY_THIS_VERSION),
            "{found:?}"
        );
        assert_eq!(words(&b), ["one"]);
        // A repair keeps it: it is not rot, and deleting it would lose
        // whatever it records.
        b.repair(&store, &[]).await.unwrap();
        assert!(store.get(&future).await.is_ok(), "the op was deleted");
    }

    #[tokio::test]
    async fn a_damaged_op_is_reported_and_skipped() {
        let store = MemoryStore::new();
        let key = SymmetricKey::random();
        let mut a = open_as(&store, &key, "a", LogTuning::default()).await;
        a.append(&store, "one".into()).await.unwrap();
        a.append(&store, "two".into()).await.unwrap();
        let ops = list_all(&store, &format!("{PREFIX}log/"), None)
            .await
            .unwrap();
        // Corrupt the first op object and copy the second under another
        // name: neither opens.
        let second = store.get(&ops[1].key).await.unwrap();
        store
            .put(&ops[0].key, Bytes::from_static(b"garbage"))
            .await
            .unwrap();
        let renamed = format!(
            "{PREFIX}log/{}",
            op_name(
                Hlc {
                    wall_ms: 1,
                    counter: 0
                },
                &a.instance,
                &OpId::of_bytes(b"x")
            )
        );
        store.put(&renamed, second).await.unwrap();

        let before = damage_counts();
        let b = open_as(&store, &key, "b", LogTuning::default()).await;
        let damaged: Vec<String> = b.damaged().into_iter().map(|d| d.name).collect();
        assert!(
            damaged.contains(&ops[0].key) && damaged.contains(&renamed),
            "{damaged:?}"
        );
        assert!(damage_counts().damaged_objects >= before.damaged_objects + 2);
        // "two" names "one" as parent: "one" does not open, so it is lost
        // (it will not open later), and "two" is applied without it.
        assert_eq!(words(&b), ["two"]);
        assert!(b.missing_parents().is_empty());
    }

    /// An op named as a parent but missing from the store: the ops after
    /// it wait while it may still turn up, and are applied without it once
    /// a complete full listing, started `lost_after` past their writing,
    /// did not find it. Then it is reported as lost.
    #[tokio::test]
    async fn a_missing_parent_is_given_up_after_a_full_listing_past_the_grace() {
        let store = MemoryStore::new();
        let key = SymmetricKey::random();
        let mut a = open_as(&store, &key, "a", LogTuning::default()).await;
        for word in ["one", "two", "three"] {
            a.append(&store, word.into()).await.unwrap();
        }
        let ops = list_all(&store, &format!("{PREFIX}log/"), None)
            .await
            .unwrap();
        store.delete(&ops[1].key).await.unwrap();
        let tuning = LogTuning {
            lost_after: Duration::from_millis(150),
            ..LogTuning::default()
        };
        let mut b = open_as(&store, &key, "b", tuning).await;
        assert_eq!(words(&b), ["one"], "three waits");
        assert!(b.damaged().is_empty(), "not known lost yet");
        std::thread::sleep(Duration::from_millis(200));
        b.sync(&store).await.unwrap();
        assert_eq!(words(&b), ["one"], "an incremental listing proves nothing");
        let before = damage_counts();
        b.last_full_ms = 1; // a full listing is due
        assert_eq!(b.sync(&store).await.unwrap(), 1);
        assert_eq!(words(&b), ["one", "three"]);
        let lost = b.damaged();
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(lost[0].reason.contains("missing"), "{lost:?}");
        assert!(damage_counts().lost_ops > before.lost_ops);
        // A snapshot of b holds "three": opening from it waits for nothing.
        b.write_snapshot(&store).await.unwrap();
        let c = open_as(&store, &key, "c", LogTuning::default()).await;
        assert_eq!(words(&c), ["one", "three"]);
        assert!(c.missing_parents().is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_store_is_a_transient_error() {
        let store = MemoryStore::new();
        let key = SymmetricKey::random();
        let mut a = open_as(&store, &key, "a", LogTuning::default()).await;
        store.set_offline(true);
        let err = a.sync(&store).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(
            a.append(&store, "x".into())
                .await
                .unwrap_err()
                .is_transient()
        );
        store.set_offline(false);
        // The failed append left nothing behind.
        assert_eq!(a.sync(&store).await.unwrap(), 0);
        assert!(words(&a).is_empty());
    }

    #[tokio::test]
    async fn two_instances_on_garage() {
        let Some(settings) = S3Settings::for_tests("the Garage stored-log test") else {
            return;
        };
        let store = S3Store::new(settings).unwrap();
        let key = SymmetricKey::random();
        let prefix = format!("test-log/{:016x}/", rand::random::<u64>());
        let open = |who: &'static str| {
            let (key, prefix) = (key.clone(), prefix.clone());
            let store = &store;
            async move {
                StoredLog::open(
                    store,
                    key,
                    prefix,
                    InstanceId::new(who).unwrap(),
                    LogTuning::default(),
                    Words::default,
                )
                .await
                .unwrap()
            }
        };
        let (mut a, mut b) = (open("a").await, open("b").await);
        let (ra, rb) = tokio::join!(
            async {
                for i in 0..20 {
                    a.append(&store, format!("a{i:02}")).await.unwrap();
                }
            },
            async {
                for i in 0..20 {
                    b.append(&store, format!("b{i:02}")).await.unwrap();
                }
            }
        );
        let _ = (ra, rb);
        a.sync(&store).await.unwrap();
        b.sync(&store).await.unwrap();
        assert_eq!(a.state().0.len(), 40);
        assert_eq!(words(&a), words(&b));
        let keys: Vec<String> = list_all(&store, &prefix, None)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        store.delete_many(&keys).await.unwrap();
    }
}
