//! The op log on the object store (DESIGN.md §2, §4): encrypted op objects
//! under `<prefix>log/`, encrypted snapshots under `<prefix>snap/`,
//! incremental sync by `LIST start-after`, and garbage collection of what a
//! snapshot covers.
//!
//! Invariants:
//! - An op is inserted into the local replica only after the store
//!   acknowledged its PUT, so nothing is shown that could be lost.
//! - Every op this instance knows is in the store, either as an op object
//!   or inside a snapshot; so reloading from the newest snapshot plus the
//!   remaining op objects never loses anything.
//! - No lock is held across store calls: a sync is planned from the
//!   replica ([`StoredLog::plan_sync`]), fetched with no access to it
//!   ([`SyncPlan::fetch`]), then applied ([`StoredLog::apply`]). Writes are
//!   prepared, stored, then committed the same way.
//! - An op object that cannot be read (corrupt, or sealed under another
//!   name) is reported for this log only and skipped; it never stops the
//!   ops around it, and never panics.
//!
//! Costs: a sync when nothing changed is one LIST. Ops are listed from the
//! cursor minus a lookback ([`LogTuning::lookback`]), because an op written
//! by a slow writer may get a name just before the cursor; a periodic full
//! listing ([`LogTuning::full_list_every`]) catches anything later still.
//! Garbage collection deletes op objects only once a snapshot covering them
//! is older than [`LogTuning::gc_grace`]; an instance whose last full
//! listing is older than that reloads from the newest snapshot, since it
//! may have missed ops that were collected meanwhile.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::LogError;
use super::id::{Hlc, InstanceId, OpId, op_name, op_name_floor, parse_op_name};
use super::replica::{Envelope, Replica, State};
use crate::crypto::{CryptoError, SymmetricKey, open, open_body, seal, seal_body};
use crate::store::{ObjectStore, StoreError, list_all};

/// Largest snapshot accepted when decompressing (a 10,000-message mailbox
/// is a few MiB).
pub const MAX_SNAPSHOT: usize = 1 << 30;

/// Timing knobs. Defaults follow DESIGN.md §4.
#[derive(Clone, Debug)]
pub struct LogTuning {
    /// How far before the cursor an incremental sync lists.
    pub lookback: Duration,
    /// How often a sync lists the whole log instead.
    pub full_list_every: Duration,
    /// Op objects fetched at once.
    pub fetch_parallelism: usize,
    /// A snapshot is due once this many ops were applied since the last.
    pub snapshot_every: usize,
    /// Op objects and older snapshots are deleted only once a snapshot that
    /// covers them is this old. Must exceed `full_list_every` comfortably.
    pub gc_grace: Duration,
}

impl Default for LogTuning {
    fn default() -> Self {
        LogTuning {
            lookback: Duration::from_secs(60),
            full_list_every: Duration::from_secs(300),
            fetch_parallelism: 16,
            snapshot_every: 500,
            gc_grace: Duration::from_secs(3600),
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
}

impl SyncError {
    /// Whether trying again later may succeed (the store was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self, SyncError::Store(e) if e.is_transient())
    }
}

/// A damaged op object: found in the listing but unreadable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub name: String,
    pub reason: String,
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
    /// When the last full listing happened (wall clock, ms); 0 = never.
    last_full_ms: u64,
    /// Op objects that could not be read, by name.
    damaged: BTreeMap<String, String>,
    /// Ops applied since the newest snapshot this instance knows.
    since_snapshot: usize,
    /// Name of the newest snapshot loaded or written.
    snapshot: Option<String>,
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
    /// Op ids already known: not fetched again.
    known: HashSet<OpId>,
    /// Names already known to be damaged: not fetched again.
    damaged: HashSet<String>,
    parallelism: usize,
}

/// What a sync brought back, ready to apply.
#[derive(Debug)]
pub struct Fetched {
    full: bool,
    started_ms: u64,
    last_listed: Option<String>,
    ops: Vec<(String, Vec<u8>)>,
    damaged: Vec<Damage>,
}

/// An op written to the store: insert it with [`StoredLog::commit`].
#[derive(Debug)]
pub struct Written {
    name: String,
    bytes: Vec<u8>,
    pub id: OpId,
}

/// An op ready to be stored.
#[derive(Debug)]
pub struct Prepared {
    object_key: String,
    name: String,
    sealed: Bytes,
    bytes: Vec<u8>,
    pub id: OpId,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl<S> StoredLog<S>
where
    S: State + Serialize + DeserializeOwned,
    S::Op: Serialize + DeserializeOwned,
{
    /// Opens a log: loads the newest readable snapshot (or starts from
    /// `init`) and reads every op object not in it.
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
            damaged: BTreeMap::new(),
            since_snapshot: 0,
            snapshot: None,
        };
        log.load_newest_snapshot(store).await?;
        log.sync(store).await?;
        Ok(log)
    }

    fn log_prefix(&self) -> String {
        format!("{}log/", self.prefix)
    }

    fn snap_prefix(&self) -> String {
        format!("{}snap/", self.prefix)
    }

    /// Replaces the replica with the newest snapshot that opens. Snapshots
    /// that do not open are reported and skipped.
    async fn load_newest_snapshot(&mut self, store: &dyn ObjectStore) -> Result<(), SyncError> {
        let snaps = list_all(store, &self.snap_prefix(), None).await?;
        for meta in snaps.iter().rev() {
            let bytes = store.get(&meta.key).await;
            let bytes = match bytes {
                Ok(b) => b,
                Err(e) if e.is_not_found() => continue, // collected meanwhile
                Err(e) => return Err(e.into()),
            };
            match open_body(&self.key, &meta.key, &bytes, MAX_SNAPSHOT)
                .map_err(|e| e.to_string())
                .and_then(|plain| {
                    serde_json::from_slice::<Snapshot<S>>(&plain).map_err(|e| e.to_string())
                }) {
                Ok(snapshot) => {
                    self.replica = snapshot.replica;
                    self.snapshot = Some(meta.key.clone());
                    self.since_snapshot = 0;
                    self.cursor = None;
                    return Ok(());
                }
                Err(reason) => {
                    tracing::warn!(snapshot = %meta.key, %reason, "skipping unreadable snapshot");
                    self.damaged.insert(meta.key.clone(), reason);
                }
            }
        }
        Ok(())
    }

    /// Plans the next sync: incremental from the cursor minus the lookback,
    /// or a full listing when one is due.
    pub fn plan_sync(&self) -> SyncPlan {
        let full = self.cursor.is_none()
            || now_ms().saturating_sub(self.last_full_ms)
                >= self.tuning.full_list_every.as_millis() as u64;
        let start_after = if full {
            None
        } else {
            self.cursor
                .as_deref()
                .and_then(|c| parse_op_name(c).ok())
                .map(|(hlc, _, _)| {
                    let back = self.tuning.lookback.as_millis() as u64;
                    let floor = Hlc {
                        wall_ms: hlc.wall_ms.saturating_sub(back),
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
            known: self.replica.dag().ids().copied().collect::<HashSet<_>>(),
            damaged: self.damaged.keys().cloned().collect(),
            parallelism: self.tuning.fetch_parallelism.max(1),
        }
    }

    /// Applies what a sync fetched. Returns how many ops were applied.
    pub fn apply(&mut self, fetched: Fetched) -> usize {
        let mut applied = 0;
        for (name, bytes) in fetched.ops {
            match self.replica.insert_bytes(&bytes) {
                Ok((_, n)) => applied += n,
                Err(e) => {
                    self.damaged.insert(name, e.to_string());
                }
            }
        }
        for d in fetched.damaged {
            self.damaged.insert(d.name, d.reason);
        }
        if let Some(last) = fetched.last_listed {
            let name = last
                .strip_prefix(&self.log_prefix())
                .unwrap_or(&last)
                .to_owned();
            if self.cursor.as_ref().is_none_or(|c| *c < name) {
                self.cursor = Some(name);
            }
        }
        if fetched.full {
            self.last_full_ms = fetched.started_ms;
        }
        self.since_snapshot += applied;
        applied
    }

    /// Plan, fetch and apply in one go (for callers that own the log
    /// exclusively). Returns how many ops were applied.
    pub async fn sync(&mut self, store: &dyn ObjectStore) -> Result<usize, SyncError> {
        // A long silence may hide collected ops: start over from the newest
        // snapshot, which holds them.
        if self.last_full_ms != 0
            && now_ms().saturating_sub(self.last_full_ms) > self.tuning.gc_grace.as_millis() as u64
        {
            self.load_newest_snapshot(store).await?;
        }
        let fetched = self.plan_sync().fetch(store).await?;
        Ok(self.apply(fetched))
    }

    /// Builds, names and seals a new op whose parents are the current heads.
    pub fn prepare(&self, body: S::Op) -> Result<Prepared, SyncError> {
        let envelope: Envelope<S::Op> = self.replica.prepare(body, self.instance.clone(), now_ms());
        let hlc = envelope.header.hlc;
        let (id, bytes) = envelope.encode()?;
        let name = op_name(hlc, &self.instance, &id);
        let object_key = format!("{}{}", self.log_prefix(), name);
        let sealed = Bytes::from(seal(&self.key, &object_key, &bytes));
        Ok(Prepared {
            object_key,
            name,
            sealed,
            bytes,
            id,
        })
    }

    /// Inserts an op the store has acknowledged. Returns how many ops were
    /// applied (usually 1).
    pub fn commit(&mut self, written: Written) -> usize {
        let applied = match self.replica.insert_bytes(&written.bytes) {
            Ok((_, n)) => n,
            Err(e) => {
                // Cannot happen for bytes we encoded; report rather than panic.
                self.damaged.insert(written.name, e.to_string());
                0
            }
        };
        self.since_snapshot += applied;
        applied
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

    /// Whether enough ops were applied since the last snapshot.
    pub fn snapshot_due(&self) -> bool {
        self.since_snapshot >= self.tuning.snapshot_every
    }

    /// Writes a snapshot of the current replica. Its name starts with the
    /// newest clock reading it covers, so the newest snapshot lists last.
    pub async fn write_snapshot(&mut self, store: &dyn ObjectStore) -> Result<String, SyncError> {
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
        store
            .put(&name, Bytes::from(seal_body(&self.key, &name, &plain)))
            .await?;
        self.snapshot = Some(name.clone());
        self.since_snapshot = 0;
        Ok(name)
    }

    /// Deletes op objects and snapshots made useless by a snapshot older
    /// than the grace period. Returns how many objects were deleted.
    pub async fn collect_garbage(&mut self, store: &dyn ObjectStore) -> Result<usize, SyncError> {
        let grace_floor = now_ms().saturating_sub(self.tuning.gc_grace.as_millis() as u64);
        let snaps = list_all(store, &self.snap_prefix(), None).await?;
        // The newest snapshot whose covered clock is older than the grace
        // floor: everything it covers is safe to drop.
        let old_enough = snaps.iter().rev().find(|m| {
            snapshot_clock(m.key.strip_prefix(&self.snap_prefix()).unwrap_or(""))
                .is_some_and(|hlc| hlc.wall_ms < grace_floor)
        });
        let Some(base) = old_enough else { return Ok(0) };
        let bytes = store.get(&base.key).await?;
        let plain = open_body(&self.key, &base.key, &bytes, MAX_SNAPSHOT).map_err(|e| {
            SyncError::Snapshot {
                name: base.key.clone(),
                reason: e.to_string(),
            }
        })?;
        let covered: Snapshot<S> =
            serde_json::from_slice(&plain).map_err(|e| SyncError::Snapshot {
                name: base.key.clone(),
                reason: e.to_string(),
            })?;
        let covered_ids: HashSet<OpId> = covered.replica.dag().ids().copied().collect();
        let mut doomed: Vec<String> = snaps
            .iter()
            .take_while(|m| m.key != base.key)
            .map(|m| m.key.clone())
            .collect();
        for meta in list_all(store, &self.log_prefix(), None).await? {
            let name = meta.key.strip_prefix(&self.log_prefix()).unwrap_or("");
            if let Ok((_, _, id)) = parse_op_name(name)
                && covered_ids.contains(&id)
            {
                doomed.push(meta.key);
            }
        }
        store.delete_many(&doomed).await?;
        Ok(doomed.len())
    }

    pub fn replica(&self) -> &Replica<S> {
        &self.replica
    }

    pub fn state(&self) -> &S {
        self.replica.state()
    }

    /// Unreadable objects found so far, for reporting.
    pub fn damaged(&self) -> Vec<Damage> {
        self.damaged
            .iter()
            .map(|(name, reason)| Damage {
                name: name.clone(),
                reason: reason.clone(),
            })
            .collect()
    }

    /// Ops waiting for parents that were never found: a sign of a lost
    /// op object.
    pub fn missing_parents(&self) -> Vec<OpId> {
        self.replica.dag().missing()
    }
}

/// Borrowing twin of [`Snapshot`] for writing without a clone.
#[derive(Serialize)]
#[serde(bound(serialize = "S: Serialize, S::Op: Serialize"))]
struct SnapshotRef<'a, S: State> {
    replica: &'a Replica<S>,
}

/// The clock reading at the start of a snapshot name.
fn snapshot_clock(name: &str) -> Option<Hlc> {
    let mut parts = name.split('-');
    let wall_ms = u64::from_str_radix(parts.next()?, 16).ok()?;
    let counter = u32::from_str_radix(parts.next()?, 16).ok()?;
    Some(Hlc { wall_ms, counter })
}

impl Prepared {
    /// Stores the op. Only after this succeeds may it be committed and
    /// shown to anyone.
    pub async fn store(self, store: &dyn ObjectStore) -> Result<Written, SyncError> {
        store.put(&self.object_key, self.sealed).await?;
        Ok(Written {
            name: self.name,
            bytes: self.bytes,
            id: self.id,
        })
    }
}

impl SyncPlan {
    /// Lists the log and fetches the ops not known yet, with bounded
    /// parallelism. Touches no replica: call it without holding locks.
    pub async fn fetch(self, store: &dyn ObjectStore) -> Result<Fetched, SyncError> {
        let started_ms = now_ms();
        let listed = list_all(store, &self.prefix, self.start_after.as_deref()).await?;
        let last_listed = listed.last().map(|m| m.key.clone());
        let mut wanted = Vec::new();
        let mut damaged = Vec::new();
        for meta in listed {
            if self.damaged.contains(&meta.key) {
                continue;
            }
            let name = meta.key.strip_prefix(&self.prefix).unwrap_or(&meta.key);
            match parse_op_name(name) {
                Ok((_, _, id)) if self.known.contains(&id) => {}
                Ok(_) => wanted.push(meta.key),
                Err(e) => damaged.push(Damage {
                    name: meta.key,
                    reason: e.to_string(),
                }),
            }
        }
        let key = &self.key;
        let results: Vec<Result<(String, Vec<u8>), Damage>> = stream::iter(wanted)
            .map(|object_key| async move {
                match store.get(&object_key).await {
                    Ok(sealed) => Ok(Some(match open(key, &object_key, &sealed) {
                        Ok(plain) => Ok((object_key, plain)),
                        Err(e) => Err(Damage {
                            name: object_key,
                            reason: describe(&e),
                        }),
                    })),
                    // Collected between LIST and GET: a snapshot holds it.
                    Err(e) if e.is_not_found() => Ok(None),
                    Err(e) => Err(SyncError::from(e)),
                }
            })
            .buffered(self.parallelism)
            .try_filter_map(|r| async move { Ok(r) })
            .try_collect()
            .await?;
        let mut ops = Vec::new();
        for r in results {
            match r {
                Ok(op) => ops.push(op),
                Err(d) => damaged.push(d),
            }
        }
        Ok(Fetched {
            full: self.full,
            started_ms,
            last_listed,
            ops,
            damaged,
        })
    }
}

fn describe(e: &CryptoError) -> String {
    format!("cannot decrypt: {e}")
}
