//! The account's mailbox list on the store (`users/<u>/list/`): one shared
//! copy per account, written through plans checked against a fresh view
//! (`mailbox::list`), with the same lock discipline as a mailbox: no lock
//! across a store call except `writer`, which serialises this instance's
//! own list writes so each is planned against the one before.

use tokio::sync::{Mutex, RwLock, watch};

use super::AccountError;
use crate::crypto::{MasterKey, SymmetricKey, purpose};
use crate::log::stored::{LogTuning, StoredLog, sync_shared};
use crate::log::{Hlc, InstanceId};
use crate::mailbox::list::{ListError, ListOp, MailboxId, MailboxInfo, MailboxList, SpecialUse};
use crate::store::{SharedStore, layout};

/// A mailbox as the list shows it, owned (for use after the list's lock is
/// released).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Folder {
    pub id: MailboxId,
    pub name: String,
    pub uid_validity: u32,
    /// Added to every MODSEQ the mailbox reports ([`MailboxInfo::modseq_base`]).
    pub modseq_base: u64,
    pub special_use: Option<SpecialUse>,
}

impl From<MailboxInfo<'_>> for Folder {
    fn from(m: MailboxInfo<'_>) -> Folder {
        Folder {
            id: m.id,
            name: m.name.to_owned(),
            uid_validity: m.uid_validity,
            modseq_base: m.modseq_base,
            special_use: m.special_use,
        }
    }
}

pub struct Folders {
    store: SharedStore,
    log: RwLock<StoredLog<MailboxList>>,
    writer: Mutex<()>,
    /// Bumped whenever the list changes.
    changes: watch::Sender<u64>,
}

/// The first op of an account's list and its clock reading, both derived
/// from the list key alone, so every instance builds the same op (see
/// [`Folders::open`]):
///
/// - the default mailboxes' ids are derived from the key, so they differ
///   from account to account and the store's key names do not tell which
///   mailbox is Trash (INBOX keeps its logical id; see `MailboxId`);
/// - the clock reading is a time within 2^24 s (194 days) after
///   [`GENESIS_EPOCH_S`], also derived from the key: UIDVALIDITY comes from the create op's
///   clock, so a login deleted and provisioned again (a new key) gets new
///   UIDVALIDITYs, and they stay below the real clock, which every later
///   create uses.
pub(crate) fn genesis(master: &MasterKey) -> (ListOp, Hlc) {
    let seed = master.subkey(purpose::LIST_GENESIS);
    let bytes = seed.as_bytes();
    let offset_s = u64::from(u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]));
    let wall_ms = (GENESIS_EPOCH_S + offset_s) * 1000;
    let defaults = MailboxList::account_defaults(|n| {
        let derived = master.subkey(&format!("{}/{n}", purpose::LIST_GENESIS));
        let mut raw = [0u8; 16];
        raw.copy_from_slice(&derived.as_bytes()[..16]);
        MailboxId::from_raw(raw)
    });
    (
        defaults,
        Hlc {
            wall_ms,
            counter: 0,
        },
    )
}

/// 2001-09-09, in seconds since the Unix epoch: where genesis clock
/// readings start (see [`genesis`]).
const GENESIS_EPOCH_S: u64 = 1_000_000_000;

impl std::fmt::Debug for Folders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Folders").finish_non_exhaustive()
    }
}

impl Folders {
    /// Opens the list; a list never written gets the default mailboxes
    /// (INBOX, Drafts, Sent, Trash, Junk, Archive) in a genesis op
    /// ([`genesis`]) that every instance builds identically, so two
    /// instances doing this at once (a first login on two instances)
    /// write one op: the same mailboxes with the same UIDVALIDITYs.
    pub(crate) async fn open(
        user: &layout::UserId,
        store: SharedStore,
        key: SymmetricKey,
        instance: InstanceId,
        tuning: LogTuning,
        (defaults, genesis_clock): (ListOp, Hlc),
    ) -> Result<Folders, AccountError> {
        let prefix = format!("{}list/", layout::user_prefix(user));
        let log = StoredLog::open(
            store.as_ref(),
            key,
            prefix,
            instance,
            tuning,
            MailboxList::new,
        )
        .await?;
        let fresh = log.replica().dag().is_empty();
        let (changes, _) = watch::channel(0);
        let folders = Folders {
            store,
            log: RwLock::new(log),
            writer: Mutex::new(()),
            changes,
        };
        if fresh {
            let prepared = folders
                .log
                .read()
                .await
                .prepare_genesis(defaults, genesis_clock)?;
            let written = prepared.store(folders.store.as_ref()).await?;
            folders.log.write().await.commit(written);
            folders.changes.send_modify(|v| *v += 1);
        }
        Ok(folders)
    }

    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub async fn read<R>(&self, f: impl FnOnce(&MailboxList) -> R) -> R {
        f(self.log.read().await.state())
    }

    /// The mailbox shown under `name` (INBOX in any case).
    pub async fn find(&self, name: &str) -> Option<Folder> {
        self.read(|l| l.by_name(name).map(Folder::from)).await
    }

    /// The MODSEQ base of mailbox `id`, shown or deleted (0 if the list
    /// does not know it).
    pub async fn modseq_base(&self, id: MailboxId) -> u64 {
        self.read(|l| l.modseq_base(id)).await
    }

    /// Every shown mailbox, sorted by name.
    pub async fn all(&self) -> Vec<Folder> {
        self.read(|l| {
            let mut all: Vec<Folder> = l.mailboxes().map(Folder::from).collect();
            all.sort_by(|a, b| a.name.cmp(&b.name));
            all
        })
        .await
    }

    /// Unreadable objects and lost ops of the list's log, for reporting.
    pub async fn damage(&self) -> Vec<crate::log::stored::Damage> {
        self.log.read().await.damaged()
    }

    pub async fn sync(&self) -> Result<usize, AccountError> {
        let applied = sync_shared(&self.log, self.store.as_ref()).await?;
        if applied > 0 {
            self.changes.send_modify(|v| *v += 1);
        }
        if self.log.read().await.snapshot_due() {
            let prepared = self.log.read().await.prepare_snapshot()?;
            let covered = prepared.covered();
            let name = prepared.store(self.store.as_ref()).await?;
            self.log.write().await.snapshot_written(name, covered);
            let collector = self.log.read().await.collector();
            if let Err(e) = collector.run(self.store.as_ref()).await {
                tracing::warn!(error = %e, "mailbox list op collection failed");
            }
        }
        Ok(applied)
    }

    /// Syncs, plans against the fresh view, stores the op, commits it.
    async fn write<T>(
        &self,
        plan: impl FnOnce(&MailboxList) -> Result<(ListOp, T), ListError>,
    ) -> Result<T, AccountError> {
        let _writing = self.writer.lock().await;
        self.sync().await?;
        let (prepared, result) = {
            let log = self.log.read().await;
            let (op, result) = plan(log.state())?;
            (log.prepare(op)?, result)
        };
        let written = prepared.store(self.store.as_ref()).await?;
        self.log.write().await.commit(written);
        self.changes.send_modify(|v| *v += 1);
        Ok(result)
    }

    /// CREATE (RFC 9051 §6.3.4), with missing superiors.
    pub async fn create(
        &self,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<MailboxId, AccountError> {
        self.write(|l| l.plan_create(name, special_use, &mut rand::rngs::OsRng))
            .await
    }

    /// CREATE of a mailbox migrated from another server, keeping its
    /// UIDVALIDITY, with `modseq_base` added to its MODSEQs, when the name
    /// is new to the list ([`MailboxList::plan_create_kept`]). Returns the
    /// id and whether the UIDVALIDITY was kept.
    pub async fn create_kept(
        &self,
        name: &str,
        uid_validity: u32,
        modseq_base: u64,
    ) -> Result<(MailboxId, bool), AccountError> {
        self.write(|l| {
            let (op, id, kept) =
                l.plan_create_kept(name, uid_validity, modseq_base, &mut rand::rngs::OsRng)?;
            Ok((op, (id, kept)))
        })
        .await
    }

    /// RENAME (RFC 9051 §6.3.6). For INBOX, returns the new mailbox the
    /// caller must move INBOX's messages to.
    pub async fn rename(&self, from: &str, to: &str) -> Result<Option<MailboxId>, AccountError> {
        self.write(|l| {
            let plan = l.plan_rename(from, to, &mut rand::rngs::OsRng)?;
            Ok((plan.op, plan.inbox_messages_to))
        })
        .await
    }

    /// DELETE (RFC 9051 §6.3.5); `seen_modseq` is the mailbox's
    /// HIGHESTMODSEQ as this instance saw it.
    pub async fn delete(&self, name: &str, seen_modseq: u64) -> Result<(), AccountError> {
        self.write(|l| Ok((l.plan_delete(name, seen_modseq)?, ())))
            .await
    }

    pub async fn subscribe(&self, name: &str) -> Result<(), AccountError> {
        self.write(|l| Ok((l.plan_subscribe(name)?, ()))).await
    }

    pub async fn unsubscribe(&self, name: &str) -> Result<(), AccountError> {
        self.write(|l| Ok((l.plan_unsubscribe(name)?, ()))).await
    }

    pub async fn set_special_use(
        &self,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<(), AccountError> {
        self.write(|l| Ok((l.plan_set_special_use(name, special_use)?, ())))
            .await
    }

    /// Shows a deleted mailbox again under its last name (suffixed if that
    /// name is taken meanwhile).
    pub async fn restore(&self, id: MailboxId) -> Result<(), AccountError> {
        self.write(|l| Ok((l.plan_restore(id)?, ()))).await
    }
}
