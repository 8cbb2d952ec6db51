//! One open mailbox of an unlocked account, shared by every session of the
//! user on this instance: one in-memory copy of the mailbox's op log, the
//! writes this instance makes to it, and change notification.
//!
//! Invariants:
//! - No lock is held across a store call. Syncs are planned under a read
//!   lock, fetched with no lock, applied under a write lock; writes are
//!   prepared under a read lock, stored with no lock, committed under a
//!   write lock.
//! - This instance's writes to one mailbox are serialised by `writer`, so
//!   its own ops never make concurrent UID claims (conflicts then only come
//!   from other instances).
//! - A message body is stored before the op that references it, and an op
//!   is shown only after its PUT succeeded: what APPENDUID reports survives
//!   a crash (DESIGN.md §4, I4).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Mutex, RwLock, watch};

use super::AccountError;
use super::cache::BodyCache;
use crate::crypto::{SymmetricKey, UserKeys, open_body};
use crate::log::stored::{LogTuning, StoredLog, sync_shared};
use crate::log::{InstanceId, OpId, now_ms};
use crate::mailbox::body::{decode_summary, encode_summary, seal_new_body};
use crate::mailbox::incoming::{self, DrainReport};
use crate::mailbox::summary::MessageSummary;
use crate::mailbox::{MailboxOp, MailboxState, MessageId, MessageRef, NewMessage};
use crate::store::{SharedStore, layout};

/// The summary an op carries for a message.
pub fn summary_of(message: &MessageRef) -> Result<MessageSummary, AccountError> {
    decode_summary(message).map_err(|e| {
        AccountError::Corrupt(format!(
            "message {}: unreadable summary: {e}",
            message.blob_id
        ))
    })
}

/// Stores a new message body (see `mailbox::body`; the sealing runs on the
/// blocking pool) and returns the reference an op carries.
pub async fn store_body(
    store: &SharedStore,
    user: &layout::UserId,
    raw: &[u8],
    internal_date: i64,
) -> Result<MessageRef, AccountError> {
    let (raw, user_id) = (raw.to_vec(), user.clone());
    let body = tokio::task::spawn_blocking(move || seal_new_body(&user_id, &raw, now_ms()))
        .await
        .map_err(|e| AccountError::Internal(format!("sealing a body failed: {e}")))?;
    store.put(&body.object_key, body.sealed).await?;
    Ok(MessageRef {
        blob_id: body.blob_id,
        body_key: body.body_key,
        size: body.size,
        internal_date,
        summary: encode_summary(&body.summary),
    })
}

/// Timing of a mailbox's background duties.
#[derive(Clone, Debug)]
pub struct MailboxTuning {
    pub log: LogTuning,
    /// Longest random wait before writing a fix-up, so that instances that
    /// see the same conflict rarely both write one (DESIGN.md §4).
    pub fix_up_jitter: Duration,
}

impl Default for MailboxTuning {
    fn default() -> Self {
        MailboxTuning {
            log: LogTuning::default(),
            fix_up_jitter: Duration::from_millis(200),
        }
    }
}

/// An open mailbox.
pub struct Mailbox {
    /// The mailbox id `<m>` of `users/<u>/mbox/<m>/`.
    id: String,
    user: layout::UserId,
    store: SharedStore,
    log: RwLock<StoredLog<MailboxState>>,
    /// Serialises this instance's writes (see the module invariants).
    writer: Mutex<()>,
    /// Bumped whenever the state changes; sessions wait on it (IDLE).
    changes: watch::Sender<u64>,
    cache: Arc<BodyCache>,
    tuning: MailboxTuning,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The result of placing messages: what APPENDUID and COPYUID report
/// (RFC 4315).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub uid_validity: u32,
    /// UIDs of the placed messages, in order; a message displaced by a
    /// concurrent conflict at once has none (it reappears after a fix-up).
    pub uids: Vec<Option<u32>>,
}

#[allow(clippy::too_many_arguments)]
impl Mailbox {
    /// Opens mailbox `id` (its log key derives from the user's master key).
    pub(crate) async fn open(
        id: String,
        uid_validity: u32,
        user: layout::UserId,
        store: SharedStore,
        key: SymmetricKey,
        instance: InstanceId,
        cache: Arc<BodyCache>,
        tuning: MailboxTuning,
    ) -> Result<Mailbox, AccountError> {
        let prefix = format!("{}mbox/{id}/", layout::user_prefix(&user));
        let log = StoredLog::open(
            store.as_ref(),
            key,
            prefix,
            instance,
            tuning.log.clone(),
            || MailboxState::new(uid_validity),
        )
        .await?;
        let (changes, _) = watch::channel(0);
        Ok(Mailbox {
            id,
            user,
            store,
            log: RwLock::new(log),
            writer: Mutex::new(()),
            changes,
            cache,
            tuning,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// A receiver woken on every change of the state.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Reads the current state.
    pub async fn read<R>(&self, f: impl FnOnce(&MailboxState) -> R) -> R {
        f(self.log.read().await.state())
    }

    /// Brings the state up to date with the store; writes a fix-up if a
    /// conflict displaced messages and a snapshot when one is due. Returns
    /// how many ops were applied.
    pub async fn sync(&self) -> Result<usize, AccountError> {
        let applied = self.sync_once().await?;
        if self.read(|s| !s.displaced().is_empty()).await {
            self.fix_up().await?;
        }
        if self.log.read().await.snapshot_due() {
            self.snapshot().await?;
        }
        Ok(applied)
    }

    async fn sync_once(&self) -> Result<usize, AccountError> {
        let applied = sync_shared(&self.log, self.store.as_ref()).await?;
        if applied > 0 {
            self.changes.send_modify(|v| *v += 1);
        }
        Ok(applied)
    }

    /// Writes one fix-up op for every displaced message, after a short
    /// random wait and a sync: if another instance wrote one meanwhile,
    /// nothing is left to do.
    async fn fix_up(&self) -> Result<(), AccountError> {
        let jitter = self.tuning.fix_up_jitter.as_millis() as u64;
        if jitter > 0 {
            tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % jitter)).await;
        }
        let _writing = self.writer.lock().await;
        self.sync_once().await?;
        let Some(op) = self.read(MailboxState::fix_up).await else {
            return Ok(());
        };
        self.write_locked(op).await?;
        Ok(())
    }

    async fn snapshot(&self) -> Result<(), AccountError> {
        let prepared = self.log.read().await.prepare_snapshot()?;
        let name = prepared.store(self.store.as_ref()).await?;
        self.log.write().await.snapshot_written(name);
        // Each new snapshot is a chance to drop what an older one, past the
        // grace period, covers. A failure here costs only space.
        let collector = self.log.read().await.collector();
        match collector.run(self.store.as_ref()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(mailbox = %self.id, objects = n, "collected covered ops"),
            Err(e) => tracing::warn!(mailbox = %self.id, error = %e, "op collection failed"),
        }
        Ok(())
    }

    /// Writes an op: prepare, store, commit. The caller holds `writer`.
    async fn write_locked(&self, op: MailboxOp) -> Result<OpId, AccountError> {
        let prepared = self.log.read().await.prepare(op)?;
        let written = prepared.store(self.store.as_ref()).await?;
        let id = written.id;
        self.log.write().await.commit(written);
        self.changes.send_modify(|v| *v += 1);
        Ok(id)
    }

    async fn write(&self, op: MailboxOp) -> Result<OpId, AccountError> {
        let _writing = self.writer.lock().await;
        self.write_locked(op).await
    }

    /// APPEND (RFC 9051 §6.3.12): stores the body, then the op. Returns the
    /// UIDVALIDITY and UID for APPENDUID once both are durable.
    pub async fn append(
        &self,
        raw: &[u8],
        flags: Vec<String>,
        internal_date: i64,
    ) -> Result<Placed, AccountError> {
        let message = store_body(&self.store, &self.user, raw, internal_date).await?;
        self.place(MailboxOp::Append(NewMessage { message, flags }), 1)
            .await
    }

    async fn place(&self, op: MailboxOp, count: u32) -> Result<Placed, AccountError> {
        let id = self.write(op).await?;
        let placed = self
            .read(|s| Placed {
                uid_validity: s.uid_validity(),
                uids: (0..count)
                    .map(|index| s.uid_of(&MessageId { op: id, index }))
                    .collect(),
            })
            .await;
        Ok(placed)
    }

    /// STORE (RFC 9051 §6.4.6) on the given UIDs; unknown UIDs are ignored.
    pub async fn store_flags(
        &self,
        uids: &[u32],
        set: Vec<String>,
        clear: Vec<String>,
    ) -> Result<(), AccountError> {
        let targets = self.read(|s| s.resolve(uids)).await;
        if targets.is_empty() {
            return Ok(());
        }
        self.write(MailboxOp::Store {
            targets,
            set,
            clear,
        })
        .await
        .map(|_| ())
    }

    /// EXPUNGE of the given UIDs (RFC 9051 §6.4.3, RFC 4315 UID EXPUNGE).
    pub async fn expunge(&self, uids: &[u32]) -> Result<(), AccountError> {
        let targets = self.read(|s| s.resolve(uids)).await;
        if targets.is_empty() {
            return Ok(());
        }
        self.write(MailboxOp::Expunge(targets)).await.map(|_| ())
    }

    /// COPY (RFC 9051 §6.4.7): the messages of `uids` are placed in
    /// `target`, referencing the same bodies, with their flags. Returns the
    /// source UIDs copied and what was placed, for COPYUID.
    pub async fn copy_to(
        &self,
        uids: &[u32],
        target: &Mailbox,
    ) -> Result<(Vec<u32>, Placed), AccountError> {
        let (source_uids, messages): (Vec<u32>, Vec<NewMessage>) = self
            .read(|s| {
                uids.iter()
                    .filter_map(|uid| s.message(*uid))
                    .map(|m| {
                        let flags = m.flags.iter().map(|f| f.to_string()).collect();
                        (
                            m.uid,
                            NewMessage {
                                message: m.message.clone(),
                                flags,
                            },
                        )
                    })
                    .unzip()
            })
            .await;
        let count = messages.len() as u32;
        if count == 0 {
            let uid_validity = target.read(MailboxState::uid_validity).await;
            return Ok((
                source_uids,
                Placed {
                    uid_validity,
                    uids: vec![],
                },
            ));
        }
        let placed = target.place(MailboxOp::CopyIn(messages), count).await?;
        Ok((source_uids, placed))
    }

    /// MOVE (RFC 6851): copy, then expunge the source messages. The copy is
    /// durable before the source goes, so a crash in between leaves two
    /// copies, never none.
    pub async fn move_to(
        &self,
        uids: &[u32],
        target: &Mailbox,
    ) -> Result<(Vec<u32>, Placed), AccountError> {
        let (moved, placed) = self.copy_to(uids, target).await?;
        self.expunge(&moved).await?;
        Ok((moved, placed))
    }

    /// The full body of a message, decrypted (through the account's cache).
    pub async fn body(&self, uid: u32) -> Result<Bytes, AccountError> {
        let message = self
            .read(|s| s.message(uid).map(|m| m.message.clone()))
            .await
            .ok_or(AccountError::NoSuchMessage(uid))?;
        if let Some(body) = self.cache.get(&message.blob_id) {
            return Ok(body);
        }
        let object_key = layout::blob(&self.user, &message.blob_id);
        let sealed = self.store.get(&object_key).await?;
        let limit = usize::try_from(message.size).unwrap_or(usize::MAX);
        let body = Bytes::from(open_body(&message.body_key.0, &object_key, &sealed, limit)?);
        self.cache.insert(message.blob_id, body.clone());
        Ok(body)
    }

    /// The summary of a message (ENVELOPE, BODYSTRUCTURE, ...), with no
    /// store call.
    pub async fn summary(&self, uid: u32) -> Result<MessageSummary, AccountError> {
        let message = self
            .read(|s| s.message(uid).map(|m| m.message.clone()))
            .await
            .ok_or(AccountError::NoSuchMessage(uid))?;
        summary_of(&message)
    }

    /// Moves the user's queued deliveries (`incoming/`, DESIGN.md §3) into
    /// this mailbox, in batches: read the records, write one op placing
    /// them, delete the records the state now holds. Safe to run on several
    /// instances at once: a record drained twice is still one message.
    pub async fn drain_incoming(&self, keys: &UserKeys) -> Result<DrainReport, AccountError> {
        self.sync_once().await?;
        let mut report = DrainReport::default();
        let mut after: Option<String> = None;
        loop {
            let mut batch = incoming::collect(
                self.store.as_ref(),
                &self.user,
                keys,
                after.as_deref(),
                incoming::BATCH,
            )
            .await?;
            if batch.is_empty() {
                break;
            }
            let (next, more) = batch.next();
            after = next.map(str::to_owned);
            {
                let _writing = self.writer.lock().await;
                let op = batch.op(self.log.read().await.state());
                if let Some(op) = op {
                    self.write_locked(op).await?;
                }
            }
            batch.mark_held(self.log.read().await.state());
            let ok = batch.clean_up(self.store.as_ref(), &mut report).await;
            if !ok || !more {
                break;
            }
        }
        Ok(report)
    }

    /// Unreadable op objects of this mailbox, for reporting.
    pub async fn damage(&self) -> Vec<crate::log::stored::Damage> {
        self.log.read().await.damaged()
    }
}
