//! An unlocked user: keys and open mailboxes shared by all of that user's
//! sessions on one instance (doc/storage.md, "Encryption"; doc/consistency.md,
//! "The I/O layer"). It owns the user's keyring
//! object (creating it at provisioning, loading it at unlock, re-wrapping
//! it), one in-memory copy of each open mailbox, and change notification:
//! in memory for sessions on this instance, by change hints
//! ([`hints`]) and, as a fallback, by polling the store for changes made by
//! other instances, while the account has a session.

pub mod cache;
pub mod check;
pub mod folders;
pub mod hints;
pub mod keyring;
pub mod mailbox;
pub mod recent;
pub mod registry;
pub mod turn;
pub mod usage;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::crypto::{CryptoError, RecordAuth, UserKeys, purpose};
use crate::log::stored::SyncError;
use crate::log::{InstanceId, now_ms};
use crate::mailbox::incoming::{DrainReport, IncomingError};
use crate::mailbox::list::MailboxId;
use crate::mailbox::summary::LineEnds;
use crate::store::{SharedStore, StoreError, layout, layout::UserId, list_all};

pub use cache::BodyCache;
pub use folders::{Folder, Folders};
pub use hints::{Hinted, Hints};
pub use keyring::{KeyringStore, StoredKeyring};
pub use mailbox::{ImportedMessage, Mailbox, MailboxTuning, Placed};
pub use registry::Accounts;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("the store already holds a keyring for this user")]
    KeyringExists,
    #[error("this user has no keyring yet (never provisioned or never logged in)")]
    NoKeyring,
    #[error(transparent)]
    Incoming(#[from] IncomingError),
    #[error(transparent)]
    List(#[from] crate::mailbox::list::ListError),
    #[error("no mailbox {0:?}")]
    NoSuchMailbox(String),
    #[error("no message with UID {0}")]
    NoSuchMessage(u32),
    #[error("invalid mailbox id {0:?}")]
    BadMailboxId(String),
    #[error("damaged data: {0}")]
    Corrupt(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The user's keyring is gone or another's: the user was deleted (and
    /// maybe the login given to someone new) while this account was
    /// unlocked ([`Account::check_keyring`]).
    #[error("this account was deleted; log in again")]
    Locked,
    /// Too many password checks at once (the Argon2 pool is full).
    #[error(transparent)]
    Busy(#[from] crate::crypto::KdfBusy),
}

impl AccountError {
    /// Whether the failure is the store's and may pass (IMAP answers
    /// `NO [UNAVAILABLE]`, LMTP 4xx).
    pub fn is_transient(&self) -> bool {
        match self {
            AccountError::Store(e) => e.is_transient(),
            AccountError::Sync(e) => e.is_transient(),
            AccountError::Incoming(e) => e.is_transient(),
            AccountError::Busy(_) => true,
            _ => false,
        }
    }
}

/// How an account behaves on this instance.
#[derive(Clone, Debug)]
pub struct AccountConfig {
    /// This instance's id, part of every op name it writes.
    pub instance: InstanceId,
    pub mailbox: MailboxTuning,
    /// How often open mailboxes are synced to see other instances' changes
    /// when hints are off, and the quickest poll when they are on
    /// (doc/consistency.md, "The I/O layer" and "Change hints": default 2 s).
    pub poll_interval: Duration,
    /// With hints: the slowest poll, reached by doubling from
    /// `poll_interval` while nothing changes (a lost hint is seen by then).
    pub poll_fallback: Duration,
    /// This instance's change hints; none: poll every `poll_interval`.
    pub hints: Option<Arc<Hints>>,
    /// Bytes of decrypted bodies kept in memory for this account.
    pub body_cache_bytes: usize,
    /// Authenticates delivery records (derived from the cluster secret):
    /// a record without its MAC is quarantined, never shown.
    pub records: RecordAuth,
    /// How far before a usage count the figure published for LMTP
    /// reaches back ([`usage::PUBLISH_MARGIN`] by default; see
    /// [`usage`], "Published for LMTP").
    pub publish_margin: Duration,
}

impl AccountConfig {
    /// `records` comes from the cluster secret
    /// (`RecordAuth::from_cluster_secret`), as LMTP's does.
    pub fn new(instance: InstanceId, records: RecordAuth) -> Self {
        AccountConfig {
            records,
            instance,
            mailbox: MailboxTuning::default(),
            poll_interval: Duration::from_secs(2),
            poll_fallback: Duration::from_secs(60),
            hints: None,
            body_cache_bytes: 8 << 20,
            publish_margin: usage::PUBLISH_MARGIN,
        }
    }
}

/// An unlocked user on this instance.
pub struct Account {
    user: UserId,
    /// The user's unlocked keys; zeroized when the account is dropped.
    keys: UserKeys,
    store: SharedStore,
    config: AccountConfig,
    cache: Arc<BodyCache>,
    /// Open mailboxes by id; a mailbox closes when its last user drops it.
    open: std::sync::Mutex<HashMap<String, Weak<Mailbox>>>,
    /// Serialises opening, so two sessions opening one mailbox share it.
    opening: tokio::sync::Mutex<()>,
    /// The mailbox list, opened on first use.
    folders: tokio::sync::OnceCell<Arc<Folders>>,
    /// When bodies were last collected (or the account unlocked).
    last_blob_gc: std::sync::Mutex<std::time::Instant>,
    /// Mailboxes used lately, kept open although no session holds them
    /// (a client APPENDs to Sent without selecting it): reopening means
    /// reading the log again. At most [`KEEP_OPEN`], each for
    /// [`KEEP_OPEN_FOR`] after its last use.
    recent: std::sync::Mutex<Vec<(Arc<Mailbox>, std::time::Instant)>>,
    /// Set once the user's keyring is found gone or replaced
    /// ([`Account::check_keyring`]): the account then serves nothing more.
    locked: tokio::sync::watch::Sender<bool>,
    /// What each mailbox holds, for QUOTA (see [`usage`]).
    usage: usage::UsageBook,
    /// Counts this account as unlocked (`/metrics`) while it lives.
    _live: crate::metrics::Live,
    /// Tells this account apart from another of the same user (hints).
    serial: u64,
    /// Sessions holding the account; with none it polls nothing.
    sessions: AtomicUsize,
    /// Wakes the poller: a change to sync, a session starting, the end.
    wake: Arc<tokio::sync::Notify>,
}

/// Serials of accounts.
static SERIALS: AtomicU64 = AtomicU64::new(1);

impl Drop for Account {
    fn drop(&mut self) {
        // The poller sees the account gone now, not after its sleep.
        self.wake.notify_one();
    }
}

/// How many unselected mailboxes an account keeps open.
const KEEP_OPEN: usize = 8;

/// How long an unselected mailbox stays open after its last use.
const KEEP_OPEN_FOR: Duration = Duration::from_secs(10 * 60);

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The least age of a body [`Account::collect_blobs`] deletes from the
/// poller. Ops are collected after `gc_grace` (minutes: a listing bounds
/// what an instance can have missed), but a body's protection before its
/// op lands rests on the writer's clock (the time in the blob id) and on
/// the op PUT following the body PUT within the grace: an APPEND stalled
/// between the two, or a writer whose clock is behind, must not lose its
/// body. An hour keeps that margin; unreferenced bodies cost only space.
pub const BLOB_GRACE: Duration = Duration::from_secs(3600);

/// How long [`Account::check_keyring`] waits before confirming that the
/// keyring is gone.
const KEYRING_RECHECK: Duration = Duration::from_millis(500);

impl Account {
    pub fn new(
        user: UserId,
        keys: UserKeys,
        store: SharedStore,
        config: AccountConfig,
    ) -> Arc<Self> {
        let serial = SERIALS.fetch_add(1, Ordering::Relaxed);
        let store = match &config.hints {
            Some(hints) => Hinted::wrap(store, hints.clone(), Some(serial)),
            None => store,
        };
        let hints = config.hints.clone();
        let account = Arc::new(Account {
            cache: Arc::new(BodyCache::new(config.body_cache_bytes)),
            user,
            keys,
            store,
            config,
            open: std::sync::Mutex::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
            folders: tokio::sync::OnceCell::new(),
            last_blob_gc: std::sync::Mutex::new(std::time::Instant::now()),
            recent: std::sync::Mutex::new(Vec::new()),
            locked: tokio::sync::watch::channel(false).0,
            usage: usage::UsageBook::default(),
            _live: crate::metrics::Live::new(crate::metrics::Kind::UnlockedAccount),
            serial,
            sessions: AtomicUsize::new(0),
            wake: Arc::new(tokio::sync::Notify::new()),
        });
        if let Some(hints) = hints {
            hints.register(&account);
        }
        account
    }

    /// Tells this account apart from another of the same user.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// A session starts using the account: polling resumes (at once if
    /// it had stopped).
    pub fn session_began(&self) {
        if self.sessions.fetch_add(1, Ordering::Relaxed) == 0 {
            self.wake();
        }
    }

    /// A session stopped using the account; after the last one the
    /// account polls nothing.
    pub fn session_ended(&self) {
        let _ = self
            .sessions
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// How many sessions hold the account.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Something changed in the store for this user (a delivery on this
    /// instance, a hint from another): the poller syncs now, if the
    /// account has a session.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn user(&self) -> &UserId {
        &self.user
    }

    pub fn keys(&self) -> &UserKeys {
        &self.keys
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The largest body a mailbox of this account opens (the largest
    /// `max_message_size` of the listeners): a larger message could be
    /// placed but never fetched.
    pub fn max_body_size(&self) -> usize {
        self.config.mailbox.max_body_size
    }

    /// Whether the account locked itself ([`Account::check_keyring`]).
    pub fn is_locked(&self) -> bool {
        *self.locked.borrow()
    }

    /// Resolves once the account has locked itself (at once if it has):
    /// what an IDLE with no mailbox selected waits on to end with BYE.
    pub async fn locked(&self) {
        let mut locked = self.locked.subscribe();
        // The sender lives as long as `self`: the wait cannot fail.
        let _ = locked.wait_for(|l| *l).await;
    }

    /// Checks that the user's keyring is still the one this account was
    /// unlocked from (`keyring::still_holds`); if not, locks the account
    /// for good and wakes its sessions (IDLE), which then end with BYE.
    /// `Err(Locked)` once locked; a store failure is returned as is and
    /// locks nothing.
    pub async fn check_keyring(&self) -> Result<(), AccountError> {
        if self.is_locked() {
            return Err(AccountError::Locked);
        }
        let public = self.keys.public_key();
        if keyring::still_holds(self.store.as_ref(), &self.user, &public).await? {
            return Ok(());
        }
        // Locking ends every session of the user here: one answer is not
        // enough (a bare 404 from a proxy in front of the store during
        // maintenance reads as "not found"). A second look a moment later
        // must say the same.
        tokio::time::sleep(KEYRING_RECHECK).await;
        if keyring::still_holds(self.store.as_ref(), &self.user, &public).await? {
            return Ok(());
        }
        tracing::warn!(user = ?self.user, "the keyring is gone or replaced: locking the unlocked account");
        self.locked.send_replace(true);
        for mailbox in self.open_mailboxes() {
            mailbox.lock_out();
        }
        Err(AccountError::Locked)
    }

    fn open_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<Mailbox>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The mailbox with id `id` (lowercase hex, as the mailbox list makes
    /// them), opened if no session has it open yet.
    pub async fn mailbox(&self, id: &str, uid_validity: u32) -> Result<Arc<Mailbox>, AccountError> {
        if id.is_empty()
            || id.len() > 64
            || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(AccountError::BadMailboxId(id.to_owned()));
        }
        let _opening = self.opening.lock().await;
        let modseq_base = self.modseq_base(id).await;
        let open = self.open_map().get(id).and_then(Weak::upgrade);
        if let Some(open) = open {
            if let Some(base) = modseq_base
                && open.modseq_base().await != base
            {
                open.set_modseq_base(base).await;
            }
            if open.uid_validity().await != uid_validity {
                tracing::warn!(
                    mailbox = id,
                    uid_validity,
                    "the mailbox list gives another UIDVALIDITY; following it"
                );
                open.set_uid_validity(uid_validity).await;
            }
            self.used(&open);
            return Ok(open);
        }
        let mailbox = Mailbox::open(
            id.to_owned(),
            uid_validity,
            self.user.clone(),
            self.store.clone(),
            self.keys.master().subkey(purpose::MAILBOX),
            self.config.instance.clone(),
            self.cache.clone(),
            self.config.mailbox.clone(),
        )
        .await?;
        if let Some(base) = modseq_base {
            mailbox.set_modseq_base(base).await;
        }
        {
            let mut open = self.open_map();
            open.retain(|_, m| m.strong_count() > 0);
            open.insert(id.to_owned(), Arc::downgrade(&mailbox));
        }
        self.used(&mailbox);
        Ok(mailbox)
    }

    /// The MODSEQ base the mailbox list gives mailbox `id` (see
    /// `Folders::modseq_base`), if the list is open: every mailbox a
    /// client can name is found through the list, so it is open then.
    async fn modseq_base(&self, id: &str) -> Option<u64> {
        let folders = self.folders.get()?;
        let id: MailboxId = id.parse().ok()?;
        Some(folders.modseq_base(id).await)
    }

    /// Keeps `mailbox` open for a while (see `recent`).
    fn used(&self, mailbox: &Arc<Mailbox>) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|(m, _)| !Arc::ptr_eq(m, mailbox));
        recent.insert(0, (mailbox.clone(), std::time::Instant::now()));
        recent.truncate(KEEP_OPEN);
    }

    /// Closes kept mailboxes unused for [`KEEP_OPEN_FOR`].
    fn forget_unused(&self) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|(_, used)| used.elapsed() < KEEP_OPEN_FOR);
    }

    /// The mailbox list (created with the default mailboxes for a new
    /// account).
    pub async fn folders(&self) -> Result<Arc<Folders>, AccountError> {
        self.folders
            .get_or_try_init(|| async {
                let folders = Folders::open(
                    &self.user,
                    self.store.clone(),
                    self.keys.master().subkey(purpose::MAILBOX_LIST),
                    self.config.instance.clone(),
                    self.config.mailbox.log.clone(),
                    folders::genesis(self.keys.master()),
                )
                .await?;
                Ok::<_, AccountError>(Arc::new(folders))
            })
            .await
            .cloned()
    }

    /// Opens the mailbox shown under `name` (SELECT, EXAMINE, APPEND...).
    pub async fn open_by_name(&self, name: &str) -> Result<(Folder, Arc<Mailbox>), AccountError> {
        let folders = self.folders().await?;
        let folder = folders
            .find(name)
            .await
            .ok_or_else(|| AccountError::NoSuchMailbox(name.to_owned()))?;
        let mailbox = self
            .mailbox(&folder.id.to_hex(), folder.uid_validity)
            .await?;
        Ok((folder, mailbox))
    }

    /// Opens the mailbox shown under `name` for an answer that must not be
    /// stale (SELECT, EXAMINE, STATUS): the mailbox list is synced first,
    /// delivered mail is moved into INBOX when INBOX is asked for, and the
    /// mailbox is synced. Any failure is returned (a transient one becomes
    /// `NO [UNAVAILABLE]`): the client then sees nothing older than what
    /// the store held when the command arrived, on whatever instance.
    ///
    /// One round trip in the usual case (two for INBOX, whose sync follows
    /// the drain of delivered mail): the mailbox the list named before its
    /// sync is synced at the same time as the list; only if the synced
    /// list names another mailbox (renamed, or deleted and created again)
    /// is that one synced after.
    pub async fn open_fresh(&self, name: &str) -> Result<(Folder, Arc<Mailbox>), AccountError> {
        use crate::mailbox::list::{name::INBOX, normalize};
        let folders = self.folders().await?;
        let inbox = normalize(name).is_ok_and(|n| n == INBOX);
        // A failed guess is no answer: the mailbox the synced list names
        // is then synced after, and its failure is the answer.
        let guessed = async {
            let guess = folders.find(name).await?;
            let mailbox = self
                .mailbox(&guess.id.to_hex(), guess.uid_validity)
                .await
                .ok()?;
            mailbox.sync().await.ok()?;
            Some(mailbox)
        };
        // For INBOX, the mailbox is listed after `incoming/`: a record
        // another instance drained meanwhile leaves `incoming/` only once
        // its op is stored, so one of the two LISTs shows it.
        let drain_then_guess = async {
            if inbox {
                self.drain_incoming().await?;
            }
            Ok::<_, AccountError>(guessed.await)
        };
        let (_, guessed) = futures::try_join!(folders.sync(), drain_then_guess)?;
        let (folder, mailbox) = self.open_by_name(name).await?;
        if !guessed.is_some_and(|g| Arc::ptr_eq(&g, &mailbox)) {
            mailbox.sync().await?;
        }
        Ok((folder, mailbox))
    }

    /// Brings a session up to date before NOOP, CHECK or IDLE: delivered
    /// mail into INBOX, then the selected mailbox, if any.
    pub async fn refresh(&self, selected: Option<&Mailbox>) -> Result<(), AccountError> {
        self.drain_politely().await?;
        if let Some(mailbox) = selected {
            mailbox.sync().await?;
        }
        Ok(())
    }

    /// APPEND of one message to `mailbox`, kept visible even if the
    /// mailbox was deleted meanwhile (see [`Account::keep_placed`]).
    pub async fn append(
        &self,
        mailbox: &Mailbox,
        raw: &[u8],
        flags: Vec<String>,
        internal_date: i64,
    ) -> Result<Placed, AccountError> {
        self.append_with(mailbox, raw, LineEnds::Crlf, flags, internal_date)
            .await
    }

    /// [`Account::append`], line ends stored as `line_ends` says (a
    /// literal8 APPEND keeps its `binary` parts, RFC 3516 §4.1).
    pub async fn append_with(
        &self,
        mailbox: &Mailbox,
        raw: &[u8],
        line_ends: LineEnds,
        flags: Vec<String>,
        internal_date: i64,
    ) -> Result<Placed, AccountError> {
        let placed = mailbox
            .append_with(raw, line_ends, flags, internal_date)
            .await?;
        self.keep_placed(mailbox).await?;
        Ok(placed)
    }

    /// COPY, or MOVE when `moving`, of `uids` from `source` to `target`.
    /// For MOVE, the source messages are expunged only once the copies are
    /// known to stay visible. Returns the source UIDs and what was placed
    /// (COPYUID).
    pub async fn copy(
        &self,
        source: &Mailbox,
        uids: &[u32],
        target: &Mailbox,
        moving: bool,
    ) -> Result<(Vec<u32>, Placed), AccountError> {
        let (copied, placed) = source.copy_to(uids, target).await?;
        if !copied.is_empty() {
            self.keep_placed(target).await?;
            if moving {
                source.expunge(&copied).await?;
            }
        }
        Ok((copied, placed))
    }

    /// Keeps messages just placed in `mailbox` visible although a DELETE
    /// of that mailbox may have raced the placement on another instance
    /// (doc/consistency.md, "Delete and concurrent placements"): called
    /// after the placing op is stored and before the client is answered,
    /// it syncs the mailbox list and, if the mailbox is deleted, restores
    /// it with the messages its deleter had not seen. The deleter does the
    /// mirror check ([`Account::delete_mailbox`]); since each looks after
    /// its own write landed, at least one of them sees the other's.
    pub(crate) async fn keep_placed(&self, mailbox: &Mailbox) -> Result<(), AccountError> {
        let id: MailboxId = mailbox
            .id()
            .parse()
            .map_err(|_| AccountError::BadMailboxId(mailbox.id().to_owned()))?;
        let folders = self.folders().await?;
        folders.sync().await?;
        let deleted = folders
            .read(|l| {
                l.deleted()
                    .into_iter()
                    .find(|d| d.id == id)
                    .map(|d| (d.uid_validity, d.seen_modseq))
            })
            .await;
        if let Some((uid_validity, seen_modseq)) = deleted {
            self.recover_one(id, uid_validity, seen_modseq).await?;
        }
        Ok(())
    }

    /// Restores deleted mailbox `id` if it holds messages its deleter had
    /// not seen (MODSEQ above `seen_modseq`): the messages it had seen are
    /// expunged (the user deleted those), the mailbox is shown again with
    /// the others. Returns whether it was restored.
    async fn recover_one(
        &self,
        id: MailboxId,
        uid_validity: u32,
        seen_modseq: u64,
    ) -> Result<bool, AccountError> {
        let mailbox = self.mailbox(&id.to_hex(), uid_validity).await?;
        mailbox.sync().await?;
        let (unseen, seen): (Vec<u32>, Vec<u32>) = mailbox
            .read(|s| {
                let unseen = s.changed_since(seen_modseq);
                let seen = s
                    .messages()
                    .map(|m| m.uid)
                    .filter(|u| !unseen.contains(u))
                    .collect();
                (unseen, seen)
            })
            .await;
        if unseen.is_empty() {
            return Ok(false);
        }
        mailbox.expunge(&seen).await?;
        match self.folders().await?.restore(id).await {
            Ok(()) => {}
            // Restored meanwhile (the deleter and a placer both saw it).
            Err(AccountError::List(crate::mailbox::list::ListError::NotDeleted(_))) => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        tracing::info!(mailbox = %id, messages = unseen.len(), "restored a mailbox deleted while mail arrived");
        Ok(true)
    }

    /// RENAME (RFC 9051 §6.3.6). Renaming INBOX moves its messages to a
    /// new mailbox under the new name and leaves INBOX empty.
    pub async fn rename_mailbox(&self, from: &str, to: &str) -> Result<(), AccountError> {
        let folders = self.folders().await?;
        let Some(target) = folders.rename(from, to).await? else {
            return Ok(());
        };
        folders.sync().await?;
        let folder = folders
            .read(|l| l.by_id(target).map(Folder::from))
            .await
            .ok_or_else(|| AccountError::NoSuchMailbox(to.to_owned()))?;
        let (_, inbox) = self.open_by_name("INBOX").await?;
        let new = self
            .mailbox(&folder.id.to_hex(), folder.uid_validity)
            .await?;
        inbox.sync().await?;
        let uids: Vec<u32> = inbox.read(|s| s.messages().map(|m| m.uid).collect()).await;
        self.copy(&inbox, &uids, &new, true).await?;
        Ok(())
    }

    /// DELETE (RFC 9051 §6.3.5): the mailbox is hidden; its log stays in
    /// the store so mail appended concurrently can be recovered.
    ///
    /// After the delete is stored, the mailbox's log is read once more: a
    /// placement this instance had not seen (an APPEND or MOVE acknowledged
    /// on another instance meanwhile) brings the mailbox back at once with
    /// that mail (the mirror of [`Account::keep_placed`]).
    pub async fn delete_mailbox(&self, name: &str) -> Result<(), AccountError> {
        let (folder, mailbox) = self.open_by_name(name).await?;
        mailbox.sync().await?;
        let seen = mailbox.read(|s| s.highest_modseq()).await;
        self.folders().await?.delete(name, seen).await?;
        self.recover_one(folder.id, folder.uid_validity, seen)
            .await?;
        Ok(())
    }

    /// Drains `incoming/` unless another instance holds the drain lease:
    /// for the background poller and NOOP/IDLE, where a delay of one poll
    /// interval is fine. Two instances draining the same records at once
    /// place them twice from different states, and their UID claims then
    /// collide: every message of both batches is renumbered by a fix-up.
    /// So in the background one instance drains a user's deliveries, the
    /// holder of a lease object (`layout::incoming_lease`: its instance id
    /// and an expiry three poll intervals ahead, renewed at each drain).
    /// There is no compare-and-swap: two instances taking the lease at
    /// once both drain, which is only the old behaviour, and the claims
    /// rule keeps that safe. Commands that must show every delivery
    /// (LOGIN, SELECT/STATUS of INBOX) use [`Account::drain_incoming`],
    /// which ignores the lease. Costs one LIST when nothing waits, as
    /// before.
    pub async fn drain_politely(&self) -> Result<DrainReport, AccountError> {
        let waiting = self
            .store
            .list(&layout::incoming_prefix(&self.user), None, 1)
            .await?;
        if waiting.objects.is_empty() {
            return Ok(DrainReport::default());
        }
        let key = layout::incoming_lease(&self.user);
        let now = now_ms();
        let me = self.config.instance.as_str();
        match self.store.get(&key).await {
            Ok(held) => {
                if let Some((holder, until)) = parse_lease(&held)
                    && holder != me
                    && until > now
                {
                    return Ok(DrainReport::default());
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        let until = now + 3 * self.config.poll_interval.as_millis() as u64;
        self.store
            .put(&key, bytes::Bytes::from(format!("{me} {until}")))
            .await?;
        self.drain_incoming().await
    }

    /// Moves delivered mail (`incoming/`) into INBOX. One LIST when there
    /// is none.
    pub async fn drain_incoming(&self) -> Result<DrainReport, AccountError> {
        if self.is_locked() {
            return Err(AccountError::Locked);
        }
        let (_, inbox) = self.open_by_name("INBOX").await?;
        let report = inbox
            .drain_incoming(&self.keys, &self.config.records)
            .await?;
        crate::metrics::drained(&[
            ("delivered", report.delivered.len()),
            ("already_drained", report.already_drained),
            ("gone", report.gone),
            ("left_for_newer", report.left_for_newer),
            ("quarantined", report.quarantined.len()),
        ]);
        for q in &report.quarantined {
            tracing::error!(
                record = %q.name,
                reason = %q.reason,
                unauthenticated = q.unauthenticated,
                moved = q.moved,
                "delivery record quarantined"
            );
        }
        Ok(report)
    }

    /// Brings back deleted mailboxes that received mail their deleter had
    /// not seen (a DELETE racing an APPEND on another instance): the
    /// messages the deleter saw are expunged, the mailbox is restored with
    /// the others. Returns how many mailboxes were restored.
    pub async fn recover_deleted(&self) -> Result<usize, AccountError> {
        let folders = self.folders().await?;
        folders.sync().await?;
        let deleted: Vec<(MailboxId, u32, u64)> = folders
            .read(|l| {
                l.deleted()
                    .into_iter()
                    .map(|d| (d.id, d.uid_validity, d.seen_modseq))
                    .collect()
            })
            .await;
        let mut restored = 0;
        for (id, uid_validity, seen_modseq) in deleted {
            if self.recover_one(id, uid_validity, seen_modseq).await? {
                restored += 1;
            }
        }
        Ok(restored)
    }

    /// Deletes message bodies no message references any more
    /// (doc/consistency.md, "The I/O layer", blobs): a blob is kept if any
    /// mailbox, shown or deleted, has a message on it that is not expunged or
    /// was expunged less than `grace` ago (an instance that has not seen the
    /// expunge yet may still copy it), or if it is younger than `grace` (its op
    /// may not be written yet). Skipped while old delivery records wait in
    /// `incoming/`, since their bodies are referenced only from inside them.
    /// Returns how many blobs were deleted.
    pub async fn collect_blobs(&self, grace: Duration) -> Result<usize, AccountError> {
        let floor = now_ms().saturating_sub(grace.as_millis() as u64);
        self.drain_incoming().await?;
        let waiting = list_all(
            self.store.as_ref(),
            &layout::incoming_prefix(&self.user),
            None,
        )
        .await?;
        if !waiting.is_empty() {
            tracing::info!(
                records = waiting.len(),
                "blob collection postponed: deliveries wait"
            );
            return Ok(0);
        }
        self.recover_deleted().await?;
        let folders = self.folders().await?;
        folders.sync().await?;
        let every: Vec<(String, u32)> = folders
            .read(|l| {
                let shown = l.mailboxes().map(|m| (m.id.to_hex(), m.uid_validity));
                let deleted = l
                    .deleted()
                    .into_iter()
                    .map(|d| (d.id.to_hex(), d.uid_validity));
                shown.chain(deleted).collect()
            })
            .await;
        let mut keep = std::collections::HashSet::new();
        for (id, uid_validity) in every {
            let mailbox = self.mailbox(&id, uid_validity).await?;
            mailbox.sync().await?;
            mailbox.read(|s| keep.extend(s.blobs_in_use(floor))).await;
        }
        let prefix = format!("{}blob/", layout::user_prefix(&self.user));
        let doomed: Vec<String> = list_all(self.store.as_ref(), &prefix, None)
            .await?
            .into_iter()
            .filter(|o| {
                let id = &o.key[prefix.len()..];
                !keep.contains(id) && layout::blob_id_time(id).is_some_and(|t| t < floor)
            })
            .map(|o| o.key)
            .collect();
        self.store.delete_many(&doomed).await?;
        Ok(doomed.len())
    }

    /// The mailboxes some session holds open.
    pub fn open_mailboxes(&self) -> Vec<Arc<Mailbox>> {
        self.open_map().values().filter_map(Weak::upgrade).collect()
    }

    /// Syncs every open mailbox once; returns how many ops were applied.
    /// A mailbox that fails is logged and does not stop the others.
    pub async fn poll_once(&self) -> usize {
        match self.check_keyring().await {
            Ok(()) => {}
            Err(AccountError::Locked) => return 0,
            Err(e) => tracing::warn!(error = %e, "keyring check failed"),
        }
        let mut applied = 0;
        self.forget_unused();
        if let Some(folders) = self.folders.get() {
            match folders.sync().await {
                Ok(n) => applied += n,
                Err(e) => tracing::warn!(error = %e, "mailbox list sync failed"),
            }
        }
        if let Err(e) = self.drain_politely().await {
            tracing::warn!(error = %e, "draining incoming mail failed");
        }
        // Body collection opens every mailbox: at most once per grace
        // period, while the account stays unlocked that long.
        let grace = self.config.mailbox.log.gc_grace;
        let due = {
            let mut last = self.last_blob_gc.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.elapsed() >= grace;
            if due {
                *last = std::time::Instant::now();
            }
            due
        };
        if due {
            match self.collect_blobs(grace.max(BLOB_GRACE)).await {
                Ok(n) => tracing::debug!(blobs = n, "collected unreferenced bodies"),
                Err(e) => tracing::warn!(error = %e, "body collection failed"),
            }
        }
        for mailbox in self.open_mailboxes() {
            match mailbox.sync().await {
                Ok(n) => applied += n,
                Err(e) => tracing::warn!(mailbox = mailbox.id(), error = %e, "sync failed"),
            }
        }
        applied
    }

    /// Polls the store while the account is alive and has a session, so
    /// changes made through other instances reach this instance's sessions
    /// (doc/consistency.md, "Change hints"). A wake ([`Account::wake`])
    /// polls at once. Without hints, polls every `poll_interval`; with
    /// them, `poll_interval` after a wake or a poll that found something,
    /// then twice as long after each quiet one, up to `poll_fallback`.
    /// Without a session, polls nothing and waits for a wake.
    pub fn spawn_poller(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let account = Arc::downgrade(self);
        let wake = self.wake.clone();
        let quick = self.config.poll_interval;
        let slow = match self.config.hints {
            Some(_) => self.config.poll_fallback.max(quick),
            None => quick,
        };
        tokio::spawn(async move {
            let mut next = quick;
            loop {
                let woken = tokio::select! {
                    () = wake.notified() => true,
                    () = tokio::time::sleep(next) => false,
                };
                let Some(account) = account.upgrade() else {
                    break;
                };
                if account.sessions() == 0 {
                    next = slow;
                    continue;
                }
                let applied = account.poll_once().await;
                next = if woken || applied > 0 {
                    quick
                } else {
                    (next * 2).min(slow)
                };
            }
        })
    }
}

/// Reads a drain lease: `<instance> <until_ms>`. Anything else counts as
/// no lease (a damaged one is simply taken over).
fn parse_lease(bytes: &[u8]) -> Option<(&str, u64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (holder, until) = text.split_once(' ')?;
    Some((holder, until.parse().ok()?))
}
