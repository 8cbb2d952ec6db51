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
//!   a crash (doc/consistency.md, "The I/O layer", writes; I4).
//! - Summaries are held in memory only until the next snapshot, which
//!   first writes them into summary pages (`mailbox::state`); readers go
//!   through [`Mailbox::summaries`]: held bytes, then the account's
//!   summary cache, then page GETs (bounded, in parallel), and for a page
//!   lost to garbage collection the body, summarised again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use tokio::sync::{Mutex, RwLock, watch};

use super::AccountError;
use super::cache::BodyCache;
use super::turn::{TurnTuning, Turns};
use crate::crypto::{RecordAuth, SymmetricKey, UserKeys, open_body_reusing};
use crate::log::stored::{LogTuning, SideObjects, StoredLog, SyncError, sync_shared};
use crate::log::{InstanceId, OpId, now_ms};
use crate::mailbox::body::{
    PAGE_MESSAGES, PagedSummary, SummaryPage, encode_summary, seal_new_body,
};
use crate::mailbox::incoming::{self, DrainReport};
use crate::mailbox::op::{Delivery, MAX_SKIP};
use crate::mailbox::state::{MERGE_PAGES, SMALL_PAGE, SummaryAt};
use crate::mailbox::summary::{LineEnds, MessageSummary, Parts, summarize};
use crate::mailbox::text::{
    Index, IndexPage, MAX_MESSAGE_TEXT, MAX_PACKED_BODY, encode_headers, searchable_text_within,
};
use crate::mailbox::{MailboxOp, MailboxState, MessageId, MessageRef, NewMessage};
use crate::store::{SharedStore, layout, list_all_keys};

/// The index kinds a summary page lacks, and its shown messages (UID and
/// id): what [`Mailbox::write_index`] builds from.
type Lacking = (Vec<Index>, Vec<(u32, MessageId)>);

/// Index pages being written in the background
/// ([`Mailbox::prepare_index_pages`]), at most one summary page's at a time
/// in the process: up to 256 bodies read (4 at a time), a text page and a
/// pack of 4 MiB built. Taken after the page's locks, so a search holding
/// them for a whole mailbox does not stall other mailboxes' preparation.
static PREPARING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// A message for [`Mailbox::import`].
#[derive(Clone, Debug)]
pub struct ImportedMessage {
    /// Names the message for good in this mailbox: the same id is never
    /// placed twice.
    pub id: String,
    /// The UID it had on the old server, kept if still free.
    pub uid: Option<u32>,
    pub new: NewMessage,
}

/// Most messages in one op of [`Mailbox::import`].
const IMPORT_BATCH: usize = 64;

/// The next op of an import, and how many of `pending` it settles: a
/// skip up to the first message's wanted UID, or a delivery of the
/// messages that take the next UIDs in turn (those already placed are
/// settled with no op).
fn plan_import(
    state: &MailboxState,
    pending: &std::collections::VecDeque<ImportedMessage>,
) -> (Option<MailboxOp>, usize) {
    let next = state.uid_next();
    if let Some(first) = pending.front()
        && !state.has_delivery(&first.id)
        && let Some(uid) = first.uid
        && uid > next
    {
        return (Some(MailboxOp::Skip((uid - next).min(MAX_SKIP))), 0);
    }
    let mut deliveries = Vec::new();
    let mut taken = 0;
    for m in pending.iter().take(IMPORT_BATCH) {
        if state.has_delivery(&m.id) {
            taken += 1;
            continue;
        }
        let claim = next.saturating_add(deliveries.len() as u32);
        if m.uid.is_some_and(|u| u > claim) {
            break;
        }
        deliveries.push(Delivery {
            id: m.id.clone(),
            new: m.new.clone(),
        });
        taken += 1;
    }
    let op = (!deliveries.is_empty()).then_some(MailboxOp::Deliver(deliveries));
    (op, taken)
}

/// Summary pages (or bodies, to summarise again) fetched at once.
const SUMMARY_FETCHES: usize = 8;

/// Bodies short enough to be packed ([`MAX_PACKED_BODY`]) a FETCH asks
/// for at once from which it asks [`Mailbox::packed_bodies`] for them:
/// below, a client fetching new mail, whose bodies are not in packs yet
/// (their summaries are not paged), reads them alone as before.
pub const PACKED_FROM: usize = 32;

/// What [`Mailbox::packed_bodies`] reads from packs.
#[derive(Default)]
struct PackPlan {
    /// The bodies to read from packs, with their sizes.
    sizes: HashMap<u32, u64>,
    /// Those of pages whose packs are written first if missing.
    write: Vec<u32>,
    /// Whether a page read only if its pack is there is not known to have
    /// one (a listing tells).
    unlisted: bool,
}

/// How long [`Mailbox::packed_bodies`] leaves packs alone after failing.
const PACKS_PAUSE: Duration = Duration::from_secs(60);

/// Small summary pages merged by one snapshot, at most: fewer than
/// 64 summaries each, so about 9 MiB of summaries in memory at worst.
const MERGE_AT_ONCE: usize = 32;
/// Bodies read at once to write a text page ([`Mailbox::write_index`]),
/// as many as a search reads (`imap::cmd::fetch::PARALLEL_BODIES`).
const TEXT_BODIES: usize = 4;
/// Up to this many summaries are parsed in the asking task; more, on a
/// blocking thread (see [`Mailbox::summaries`]).
const PARSE_IN_TASK: usize = 16;

/// Messages from which a read of summaries (a FETCH or SEARCH over a
/// mailbox) is a scan that bypasses the summary cache
/// ([`Mailbox::scan_parts`]): the cache holds about 900 summaries
/// (`cache::SUMMARY_CACHE_BYTES`), and a read caches whole pages of 256,
/// so a read of more than three pages' worth would only evict itself.
pub const SCAN_FROM: usize = 3 * PAGE_MESSAGES;

/// Stores a new message body (see `mailbox::body`; the sealing runs on the
/// blocking pool) and returns the reference an op carries.
pub async fn store_body(
    store: &SharedStore,
    user: &layout::UserId,
    raw: &[u8],
    line_ends: LineEnds,
    internal_date: i64,
) -> Result<MessageRef, AccountError> {
    let (raw, user_id) = (raw.to_vec(), user.clone());
    let body =
        tokio::task::spawn_blocking(move || seal_new_body(&user_id, &raw, line_ends, now_ms()))
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

/// Timing of a mailbox's background duties, and its bounds.
#[derive(Clone, Debug)]
pub struct MailboxTuning {
    pub log: LogTuning,
    /// Longest random wait before writing a fix-up, so that instances that
    /// see the same conflict rarely both write one (doc/consistency.md, "The
    /// I/O layer", fix-ups).
    pub fix_up_jitter: Duration,
    /// Largest body opened, in bytes: the largest message any listener
    /// accepts (`imap` and `lmtp` `max_message_size`). Bounds the
    /// decompression of a body whatever its message claims.
    pub max_body_size: usize,
    /// Placement turns between instances (`account::turn`).
    pub turns: TurnTuning,
    /// Whether a snapshot that pages out full summary pages writes their
    /// index pages in the background ([`Mailbox::prepare_index_pages`]). On by
    /// default; off, they are written at their first search or download.
    pub prepare_indexes: bool,
}

/// [`MailboxTuning::max_body_size`] by default: the configuration's
/// default `max_message_size`.
pub const DEFAULT_MAX_BODY_SIZE: usize = 50 << 20;

impl Default for MailboxTuning {
    fn default() -> Self {
        MailboxTuning {
            log: LogTuning::default(),
            fix_up_jitter: Duration::from_millis(200),
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            turns: TurnTuning::default(),
            prepare_indexes: true,
        }
    }
}

/// An open mailbox.
pub struct Mailbox {
    /// The mailbox id `<m>` of `users/<u>/mbox/<m>/`.
    id: String,
    /// The same, shared by this mailbox's entries in the summary cache.
    cache_id: Arc<str>,
    user: layout::UserId,
    store: SharedStore,
    log: RwLock<StoredLog<MailboxState>>,
    /// Serialises this instance's writes (see the module invariants).
    writer: Mutex<()>,
    /// Serialises placements with other instances' when they place here
    /// too (see [`Mailbox::place_locked`]).
    turns: Turns,
    /// Placements waiting for `writer` (see [`Mailbox::lock_for_placing`]).
    placers_waiting: AtomicUsize,
    /// Bumped whenever the state changes; sessions wait on it (IDLE).
    changes: watch::Sender<u64>,
    cache: Arc<BodyCache>,
    tuning: MailboxTuning,
    /// Index pages known to be in the store, by name, and the lock that
    /// lets one search at a time write the missing ones
    /// ([`Mailbox::write_index`]).
    indexed: std::sync::Mutex<HashSet<String>>,
    /// Per [`Index`] kind (text, headers, bodies).
    indexing: [Mutex<()>; 3],
    /// Until when [`Mailbox::packed_bodies`] leaves packs alone after it
    /// failed to write or read them (milliseconds, 0 for never): a store
    /// failing is not asked again for every batch of a download.
    packs_paused_until: AtomicU64,
    /// Held while a snapshot is written: a sync that finds one due while
    /// another sync writes it leaves it to that one, rather than writing
    /// the same summaries into a second set of pages that nothing would
    /// refer to.
    snapshotting: Mutex<()>,
    /// This mailbox, for the background work it starts
    /// ([`Mailbox::prepare_index_pages`]), which ends when the mailbox
    /// closes.
    me: std::sync::Weak<Mailbox>,
    /// Set when the account locks ([`Mailbox::lock_out`]): no index page
    /// is written after.
    locked_out: std::sync::atomic::AtomicBool,
    /// Counts this mailbox as open (`/metrics`) while it lives.
    _live: crate::metrics::Live,
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
    ) -> Result<Arc<Mailbox>, AccountError> {
        let prefix = format!("{}mbox/{id}/", layout::user_prefix(&user));
        let turns = Turns::new(
            store.clone(),
            layout::placement_turns(&user, &id),
            instance.clone(),
            tuning.turns.clone(),
        );
        let log = StoredLog::open(
            store.as_ref(),
            key,
            prefix,
            instance,
            tuning.log.clone(),
            || MailboxState::new(uid_validity),
        )
        .await?;
        // Each open starts its counter in its own range, so a counter value
        // names one state of one open: a figure kept by value
        // (`account::usage`) from an earlier open of the same mailbox never
        // matches a reopened one, whose state may differ while its counter
        // has not moved.
        static OPENS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let first = OPENS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) << 32;
        let (changes, _) = watch::channel(first);
        Ok(Arc::new_cyclic(|me| Mailbox {
            cache_id: Arc::from(id.as_str()),
            id,
            user,
            store,
            log: RwLock::new(log),
            writer: Mutex::new(()),
            turns,
            placers_waiting: AtomicUsize::new(0),
            changes,
            cache,
            tuning,
            indexed: std::sync::Mutex::new(HashSet::new()),
            indexing: [Mutex::new(()), Mutex::new(()), Mutex::new(())],
            packs_paused_until: AtomicU64::new(0),
            snapshotting: Mutex::new(()),
            me: me.clone(),
            locked_out: std::sync::atomic::AtomicBool::new(false),
            _live: crate::metrics::Live::new(crate::metrics::Kind::OpenMailbox),
        }))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// A receiver woken on every change of the state.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Wakes the sessions watching this mailbox (IDLE) with no change,
    /// so they look at their account again (a locked account ends them).
    pub(crate) fn wake(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// Reads the current state.
    pub async fn read<R>(&self, f: impl FnOnce(&MailboxState) -> R) -> R {
        f(self.log.read().await.state())
    }

    /// Brings the state up to date with the store; writes a fix-up if a
    /// conflict displaced messages and a snapshot when one is due. Returns
    /// how many ops were applied.
    ///
    /// Only the sync itself can fail: a client is answered from a state at
    /// least as new as the store's when the call began, or not at all. The
    /// duties that follow (fix-up, snapshot) are retried at the next sync
    /// and only logged.
    pub async fn sync(&self) -> Result<usize, AccountError> {
        let applied = self.sync_once().await?;
        if self.read(|s| !s.displaced().is_empty()).await
            && let Err(e) = self.fix_up().await
        {
            tracing::warn!(mailbox = %self.id, error = %e, "fix-up failed; retried at the next sync");
        }
        if self.log.read().await.snapshot_due()
            && let Err(e) = self.snapshot().await
        {
            tracing::warn!(mailbox = %self.id, error = %e, "snapshot failed; retried at the next sync");
        }
        // A quiet mailbox writes no snapshot: collect behind its last one
        // once that is past the grace period (`StoredLog::collect_due`).
        if self.log.read().await.collect_due() {
            let collector = self.log.write().await.start_collection();
            let (store, id) = (Arc::clone(&self.store), self.id.clone());
            tokio::spawn(async move {
                if let Err(e) = collector.run(store.as_ref()).await {
                    tracing::warn!(mailbox = %id, error = %e, "op collection failed");
                }
            });
        }
        Ok(applied)
    }

    /// The UIDVALIDITY this open copy answers with.
    pub async fn uid_validity(&self) -> u32 {
        self.read(MailboxState::uid_validity).await
    }

    /// Corrects the UIDVALIDITY of an open copy when the mailbox list
    /// gives another (the list is the authority; only accounts whose
    /// default mailboxes were created by two instances at once before
    /// the list's first op was deterministic can disagree).
    pub(crate) async fn set_uid_validity(&self, uid_validity: u32) {
        self.log
            .write()
            .await
            .state_mut()
            .set_uid_validity(uid_validity);
        self.changes.send_modify(|v| *v += 1);
    }

    /// The MODSEQ base this open copy answers with.
    pub async fn modseq_base(&self) -> u64 {
        self.read(MailboxState::modseq_base).await
    }

    /// Sets the MODSEQ base the mailbox list gives (fixed by the create,
    /// so only a copy opened before the list knew it differs).
    pub(crate) async fn set_modseq_base(&self, modseq_base: u64) {
        self.log
            .write()
            .await
            .state_mut()
            .set_modseq_base(modseq_base);
        self.changes.send_modify(|v| *v += 1);
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
        let _writing = self.lock_for_placing().await;
        self.place_locked(MailboxState::fix_up, true).await?;
        Ok(())
    }

    async fn snapshot(&self) -> Result<(), AccountError> {
        // One at a time; the next sync after this one sees whether another
        // is due.
        let Ok(one) = self.snapshotting.try_lock() else {
            return Ok(());
        };
        if !self.log.read().await.snapshot_due() {
            return Ok(());
        }
        let full = self.page_out().await?;
        // The pages are in the state now, whether or not this snapshot is
        // stored (the next one refers to them).
        self.prepare_index_pages(full);
        let prepared = match self.log.read().await.prepare_snapshot() {
            Ok(prepared) => prepared,
            // The last full listing aged while the pages were written: the
            // next sync lists again and writes the snapshot then.
            Err(SyncError::Stale { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let covered = prepared.covered();
        let name = prepared.store(self.store.as_ref()).await?;
        self.log.write().await.snapshot_written(name, covered);
        drop(one);
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

    /// Writes the summaries held in memory into summary pages, then lets
    /// the state drop them (it records which page holds each). Pages are
    /// stored before any state refers to them. Returns the messages of
    /// each page written that is not small (see
    /// [`Mailbox::prepare_index_pages`]).
    async fn page_out(&self) -> Result<Vec<Vec<MessageId>>, AccountError> {
        let (held, small, side) = {
            let log = self.log.read().await;
            let s = log.state();
            (s.held_summaries(), s.small_pages(), log.side())
        };
        let merge = small.len() + usize::from(!held.is_empty()) >= MERGE_PAGES;
        if held.is_empty() && !merge {
            return Ok(Vec::new());
        }
        let mut summaries: Vec<PagedSummary> = held
            .into_iter()
            .map(|(id, summary)| PagedSummary {
                id,
                summary: Bytes::from(summary),
            })
            .collect();
        if merge {
            // At most this many at once: a store written before merging
            // may hold thousands, merged over the next snapshots.
            let small = small.into_iter().take(MERGE_AT_ONCE).collect();
            summaries.extend(self.read_small_pages(small, &side).await);
            // UID order, as the pages of a mailbox that grows fast are:
            // a FETCH of a UID range then reads few pages.
            let log = self.log.read().await;
            let s = log.state();
            summaries.sort_by_cached_key(|p| s.uid_of(&p.id).unwrap_or(u32::MAX));
        }
        let mut pages = Vec::new();
        let mut summaries = summaries.into_iter().peekable();
        while summaries.peek().is_some() {
            let summaries = summaries.by_ref().take(PAGE_MESSAGES).collect();
            pages.push(SummaryPage { summaries });
        }
        let store = &self.store;
        let written: Vec<Result<(String, Vec<MessageId>), AccountError>> = stream::iter(pages)
            .map(|page| {
                let side = side.clone();
                async move {
                    let ids: Vec<MessageId> = page.summaries.iter().map(|s| s.id).collect();
                    // zstd over a page of summaries: off the async runtime.
                    let sealer = side.clone();
                    let (name, sealed) =
                        tokio::task::spawn_blocking(move || sealer.seal_new(&page.encode()))
                            .await
                            .map_err(|e| AccountError::Internal(format!("sealing a page: {e}")))?;
                    store.put(&side.object_key(&name), sealed).await?;
                    Ok((name, ids))
                }
            })
            .buffer_unordered(SUMMARY_FETCHES)
            .collect()
            .await;
        let written = written.into_iter().collect::<Result<Vec<_>, _>>()?;
        let full = written
            .iter()
            .filter(|(_, ids)| ids.len() >= SMALL_PAGE)
            .map(|(_, ids)| ids.clone())
            .collect();
        // Messages of merged pages now point at the new pages: the small
        // ones are forgotten, and collected once no kept snapshot refers
        // to them.
        self.log.write().await.state_mut().paged_out(written);
        Ok(full)
    }

    /// Writes the index pages of `pages` (the messages of summary pages
    /// just written) in the background: the header page, then the text
    /// page and body pack together (each body read once for both), one
    /// summary page at a time in the whole process. The first search or
    /// download of their messages then reads a page per 256 messages
    /// instead of every body, as Dovecot reads the indexes it keeps at
    /// delivery. Only pages not merged again (at least [`SMALL_PAGE`]
    /// messages) are given to it: a small page's would be written again
    /// for the merged page. Best effort, as when a search writes them: a
    /// page whose index pages cannot be written now gets them at its first
    /// search or download, and a failure ends the work. It ends too when
    /// the mailbox closes or its account locks ([`Mailbox::lock_out`]).
    fn prepare_index_pages(&self, pages: Vec<Vec<MessageId>>) {
        if pages.is_empty() || !self.tuning.prepare_indexes {
            return;
        }
        let me = self.me.clone();
        tokio::spawn(async move {
            let left = pages.len();
            for (done, ids) in pages.into_iter().enumerate() {
                let Some(mailbox) = me.upgrade() else {
                    return;
                };
                if mailbox.locked_out.load(Ordering::Relaxed) {
                    return;
                }
                let uids: Vec<u32> = mailbox
                    .read(|s| ids.iter().filter_map(|id| s.uid_of(id)).collect())
                    .await;
                let mut written = Ok(0);
                for kinds in [&[Index::Headers][..], &[Index::Text, Index::Bodies]] {
                    written = mailbox.write_indexes(kinds, &uids, Some(&PREPARING)).await;
                    if written.is_err() {
                        break;
                    }
                }
                match written {
                    Ok(_) => crate::metrics::index_preparation("done", 1),
                    Err(e) => {
                        tracing::info!(mailbox = %mailbox.id, error = %e, "index pages not prepared; written at their first use");
                        crate::metrics::index_preparation("abandoned", left - done);
                        return;
                    }
                }
            }
        });
    }

    /// Ends the background work of this mailbox for good (its account
    /// locked: the keyring is gone or replaced), and wakes its sessions.
    /// No index page is written after this returns, by any caller.
    pub(crate) fn lock_out(&self) {
        self.locked_out.store(true, Ordering::Relaxed);
        self.wake();
    }

    /// The summaries of `small` pages' messages, to be paged again into
    /// full pages. A page that cannot be read now is left out of the
    /// merge: if the store failed, its messages stay where they are; if
    /// it is gone or damaged, they are recorded as having no page, as a
    /// read finding it so does.
    async fn read_small_pages(
        &self,
        small: Vec<(String, Vec<MessageId>)>,
        side: &SideObjects,
    ) -> Vec<PagedSummary> {
        let store = &self.store;
        let lost = std::sync::Mutex::new(Vec::new());
        let read: Vec<Vec<PagedSummary>> = stream::iter(small)
            .map(|(name, ids)| async {
                let page = match read_summary_page(store, side, &name).await {
                    Ok(Some(page)) => page,
                    Ok(None) => {
                        lost.lock().unwrap_or_else(|p| p.into_inner()).push(name);
                        return Vec::new();
                    }
                    Err(e) => {
                        tracing::warn!(page = %name, error = %e, "summary page not merged");
                        return Vec::new();
                    }
                };
                let ids: HashSet<MessageId> = ids.into_iter().collect();
                let found: Vec<PagedSummary> = page
                    .summaries
                    .into_iter()
                    .filter(|s| ids.contains(&s.id))
                    .collect();
                if found.len() < ids.len() {
                    // A page lacking one of the messages the state puts
                    // in it: merging it would page those messages nowhere.
                    tracing::warn!(page = %name, "summary page lacks messages; not merged");
                    return Vec::new();
                }
                found
            })
            .buffer_unordered(SUMMARY_FETCHES)
            .collect()
            .await;
        // Gone or unreadable: as for a read finding it so, its messages'
        // summaries are computed again when next read (and then paged),
        // and it no longer counts as a small page to merge.
        let lost = lost.into_inner().unwrap_or_else(|p| p.into_inner());
        if !lost.is_empty() {
            self.log.write().await.state_mut().pages_lost(&lost);
        }
        read.into_iter().flatten().collect()
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

    /// Writes an op that places messages (claims UIDs). It syncs first,
    /// under the writer lock: a claim made from a state the poller left up
    /// to a poll interval old collides with every placement another
    /// instance made meanwhile, and each collision renumbers both
    /// messages. After the LIST, only placements whose PUT is in flight at
    /// the same moment can collide.
    async fn write_placing(&self, op: MailboxOp) -> Result<OpId, AccountError> {
        let _writing = self.lock_for_placing().await;
        let id = self.place_locked(|_| Some(op), true).await?;
        Ok(id.expect("an op given is written"))
    }

    /// Plans and writes a placing op; the caller holds `writer`. `fresh`:
    /// sync first (see [`Mailbox::write_placing`]; an APPEND synced in
    /// parallel with its body PUT already).
    ///
    /// While another instance writes to this mailbox too
    /// ([`Mailbox::contended`]), the sync and the claim run inside a
    /// placement turn (`account::turn`): two instances placing at the same
    /// moment then take turns instead of colliding. Alone, an instance
    /// places with no extra round trip.
    async fn place_locked(
        &self,
        plan: impl FnOnce(&MailboxState) -> Option<MailboxOp>,
        fresh: bool,
    ) -> Result<Option<OpId>, AccountError> {
        let turn = if self.contended().await {
            self.turns.take().await?
        } else {
            None
        };
        let placed = async {
            if fresh || turn.is_some() {
                self.sync_once().await?;
            }
            match self.read(plan).await {
                Some(op) => self.write_locked(op).await.map(Some),
                None => Ok(None),
            }
        }
        .await;
        if let Some(turn) = turn {
            let more = placed.is_ok() && self.placers_waiting.load(Ordering::SeqCst) > 0;
            self.turns.done(turn, more);
        }
        placed
    }

    /// Takes `writer` for a placement, counted meanwhile among the
    /// placements waiting (for which a placement turn is kept).
    async fn lock_for_placing(&self) -> tokio::sync::MutexGuard<'_, ()> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.placers_waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.placers_waiting);
        self.writer.lock().await
    }

    /// Whether another instance wrote to this mailbox recently enough that
    /// placements take turns ([`TurnTuning::contended_for`]).
    async fn contended(&self) -> bool {
        let last = self.log.read().await.last_foreign_write_ms();
        let window = self.turns.tuning().contended_for.as_millis() as u64;
        last > 0 && last.saturating_add(window) >= now_ms()
    }

    /// APPEND (RFC 9051 §6.3.12) of a text message: every line end stored
    /// CRLF (see [`Mailbox::append_with`]).
    pub async fn append(
        &self,
        raw: &[u8],
        flags: Vec<String>,
        internal_date: i64,
    ) -> Result<Placed, AccountError> {
        self.append_with(raw, LineEnds::Crlf, flags, internal_date)
            .await
    }

    /// APPEND (RFC 9051 §6.3.12): stores the body (line ends as
    /// `line_ends` says), then the op. Returns the UIDVALIDITY and UID for
    /// APPENDUID once both are durable.
    pub async fn append_with(
        &self,
        raw: &[u8],
        line_ends: LineEnds,
        flags: Vec<String>,
        internal_date: i64,
    ) -> Result<Placed, AccountError> {
        // Storing the body and bringing the state up to date before the
        // claim (see `write_placing`) are independent: one round trip for
        // both, which is what an APPEND costs on a multi-node store.
        let (message, _) = futures::try_join!(
            store_body(&self.store, &self.user, raw, line_ends, internal_date),
            self.sync_once()
        )?;
        let op = MailboxOp::Append(NewMessage { message, flags });
        let id = {
            let _writing = self.lock_for_placing().await;
            self.place_locked(|_| Some(op), false).await?
        };
        Ok(self.placed(id.expect("an op given is written"), 1).await)
    }

    /// What placing op `id` placed, for APPENDUID and COPYUID.
    async fn placed(&self, id: OpId, count: u32) -> Placed {
        self.read(|s| Placed {
            uid_validity: s.uid_validity(),
            uids: (0..count)
                .map(|index| s.uid_of(&MessageId { op: id, index }))
                .collect(),
        })
        .await
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
        let found: Vec<(u32, NewMessage)> = self
            .read(|s| {
                uids.iter()
                    .filter_map(|uid| s.message(*uid))
                    .map(|m| {
                        let flags = m.flags.iter().map(|f| f.to_string()).collect();
                        (
                            m.uid,
                            NewMessage {
                                message: m.message.to_ref(),
                                flags,
                            },
                        )
                    })
                    .collect()
            })
            .await;
        // The copy-in op carries the summaries: fetch those paged out.
        let paged: Vec<u32> = found
            .iter()
            .filter(|(_, new)| new.message.summary.is_empty())
            .map(|(uid, _)| *uid)
            .collect();
        let mut fetched: HashMap<u32, Bytes> = self
            .summary_bytes(&paged, true)
            .await?
            .into_iter()
            .map(|(uid, _, bytes)| (uid, bytes))
            .collect();
        let (source_uids, messages): (Vec<u32>, Vec<NewMessage>) = found
            .into_iter()
            .filter_map(|(uid, mut new)| {
                if new.message.summary.is_empty() {
                    // None: expunged meanwhile, as if not found above.
                    new.message.summary = fetched.remove(&uid)?.to_vec();
                }
                Some((uid, new))
            })
            .unzip();
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
        let id = target.write_placing(MailboxOp::CopyIn(messages)).await?;
        Ok((source_uids, target.placed(id, count).await))
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
    /// Decompression stops at the message's recorded size, and at
    /// [`MailboxTuning::max_body_size`] whatever that size says; a body
    /// whose size differs from the recorded one is damaged and refused
    /// ([`AccountError::Corrupt`]).
    pub async fn body(&self, uid: u32) -> Result<Bytes, AccountError> {
        self.body_kept(uid, true).await
    }

    /// [`Mailbox::body`], kept in the account's cache only if `keep`: a
    /// body read to write an index page is not read again soon (its page
    /// answers), and would evict bodies that are.
    async fn body_kept(&self, uid: u32, keep: bool) -> Result<Bytes, AccountError> {
        let message = self
            .read(|s| s.message(uid).map(|m| m.message.to_ref()))
            .await
            .ok_or(AccountError::NoSuchMessage(uid))?;
        if let Some(body) = self.cache.get(&message.blob_id) {
            return Ok(body);
        }
        let object_key = layout::blob(&self.user, &message.blob_id);
        let sealed = self.store.get(&object_key).await?;
        let limit = usize::try_from(message.size)
            .unwrap_or(usize::MAX)
            .min(self.tuning.max_body_size);
        let body = Bytes::from(open_body_reusing(
            &message.body_key.0,
            &object_key,
            &sealed,
            limit,
            Some(self.cache.decompressors()),
        )?);
        if body.len() as u64 != message.size {
            tracing::error!(blob = %object_key, size = body.len(), recorded = message.size, "body size differs from its message's");
            return Err(AccountError::Corrupt(format!(
                "body {object_key} is {} bytes, its message records {}",
                body.len(),
                message.size
            )));
        }
        if keep {
            self.cache.insert(message.blob_id, body.clone());
        }
        Ok(body)
    }

    /// The summary of a message (ENVELOPE, BODYSTRUCTURE, ...): see
    /// [`Mailbox::summaries`].
    pub async fn summary(&self, uid: u32) -> Result<MessageSummary, AccountError> {
        self.summaries(&[uid])
            .await?
            .pop()
            .map(|(_, summary)| summary)
            .ok_or(AccountError::NoSuchMessage(uid))
    }

    /// The summaries of the shown messages among `uids`, in that order;
    /// UIDs not shown are left out. Memory is bounded by the batch plus
    /// the account's summary cache: ask in chunks (a few hundred UIDs).
    pub async fn summaries(
        &self,
        uids: &[u32],
    ) -> Result<Vec<(u32, MessageSummary)>, AccountError> {
        self.summary_parts(uids, Parts::ALL).await
    }

    /// [`Mailbox::summaries`] with only `parts` of each summary read (see
    /// [`MessageSummary::decode`]): the others are left empty.
    pub async fn summary_parts(
        &self,
        uids: &[u32],
        parts: Parts,
    ) -> Result<Vec<(u32, MessageSummary)>, AccountError> {
        self.read_summaries(uids, parts, true).await
    }

    /// [`Mailbox::summary_parts`] for one batch of a scan of more than
    /// [`SCAN_FROM`] messages: what it reads from pages is not cached, as
    /// the scan's next batches would only evict it (and everything else).
    pub async fn scan_parts(
        &self,
        uids: &[u32],
        parts: Parts,
    ) -> Result<Vec<(u32, MessageSummary)>, AccountError> {
        self.read_summaries(uids, parts, false).await
    }

    /// One batch of a read of `total` messages (a FETCH or SEARCH asking
    /// in batches): [`Mailbox::scan_parts`] past [`SCAN_FROM`], else
    /// [`Mailbox::summary_parts`].
    pub async fn batch_parts(
        &self,
        uids: &[u32],
        parts: Parts,
        total: usize,
    ) -> Result<Vec<(u32, MessageSummary)>, AccountError> {
        self.read_summaries(uids, parts, total <= SCAN_FROM).await
    }

    /// The entries of `index` (`mailbox::text`) of the shown messages
    /// among `uids` that its pages hold, by UID: one GET per page known
    /// to be there (after [`Mailbox::write_index`]). The others (summary
    /// not paged yet, page missing, entry too long) are left out: a
    /// search reads their body or summary.
    pub async fn read_index(
        &self,
        index: Index,
        uids: &[u32],
    ) -> Result<HashMap<u32, Bytes>, AccountError> {
        let (pages, side) = {
            let log = self.log.read().await;
            let s = log.state();
            // Only pages known to be there ([`Mailbox::write_index`] lists
            // them): no GET per missing page when they cannot be written.
            let indexed = self.indexed();
            let mut pages: HashMap<String, Vec<(u32, MessageId)>> = HashMap::new();
            for uid in uids {
                if let Some(id) = s.message_id(*uid)
                    && let SummaryAt::Page(page) = s.summary_at(&id)
                    && indexed.contains(&index.page_name(page))
                {
                    pages.entry(page.to_owned()).or_default().push((*uid, id));
                }
            }
            (pages, log.side())
        };
        let store = &self.store;
        let read: Vec<Result<HashMap<u32, Bytes>, AccountError>> = stream::iter(pages)
            .map(|(page, wanted)| {
                let side = side.clone();
                async move {
                    let name = index.page_name(&page);
                    let Some(entries) =
                        read_index_page(store.as_ref(), &side, index, &name).await?
                    else {
                        // Gone or damaged: the next search writes it again.
                        self.indexed().remove(&name);
                        return Ok(HashMap::new());
                    };
                    let by_id: HashMap<MessageId, Bytes> = entries.entries.into_iter().collect();
                    // Text and headers are copied: a slice would keep the
                    // whole page alive, and a scan reads several chunks
                    // ahead. Bodies are slices when they are half of their
                    // pack's bytes or more (all dropped with the batch they
                    // answer), else copies: a batch then holds at most
                    // twice the bytes of the bodies it asked for.
                    let pack: usize = by_id.values().map(Bytes::len).sum();
                    let asked: usize = wanted
                        .iter()
                        .filter_map(|(_, id)| by_id.get(id).map(Bytes::len))
                        .sum();
                    let slices = index == Index::Bodies && 2 * asked >= pack;
                    let keep = |entry: &Bytes| match slices {
                        true => entry.clone(),
                        false => Bytes::copy_from_slice(entry),
                    };
                    Ok(wanted
                        .into_iter()
                        .filter_map(|(uid, id)| Some((uid, keep(by_id.get(&id)?))))
                        .collect())
                }
            })
            .buffer_unordered(match index {
                // Up to 4 MiB each, kept alive by the bodies taken from
                // them until the batch they answer is done (never cache
                // those slices: each would hold its whole pack).
                Index::Bodies => 2,
                Index::Text | Index::Headers => SUMMARY_FETCHES,
            })
            .collect()
            .await;
        let mut entries = HashMap::new();
        for page in read {
            entries.extend(page?);
        }
        Ok(entries)
    }

    /// Writes the pages of `index` missing for the summary pages that hold
    /// the summaries of `uids` (before a search over them), one page after
    /// another: text pages from the bodies of the page's shown messages,
    /// read [`TEXT_BODIES`] at a time; header pages from their summaries.
    /// One search at a time writes (a search needing a page being written
    /// waits for it); when every page is known, this costs no I/O.
    /// Returns how many were written. A message whose body cannot be found
    /// or opened is left out (a search reads its body and reports that);
    /// any other failure to read is an error, and the pages written so far
    /// stay.
    pub async fn write_index(&self, index: Index, uids: &[u32]) -> Result<usize, AccountError> {
        self.write_indexes(&[index], uids, None).await
    }

    /// [`Mailbox::write_index`] for several kinds at once: a summary page
    /// lacking both its text page and its body pack has each of its bodies
    /// read once for both. The kinds' locks are taken in the order of
    /// [`Index`], so two callers cannot wait on each other; then `turn`,
    /// if given, before any I/O. Nothing is written once the account has
    /// locked ([`Mailbox::lock_out`]).
    async fn write_indexes(
        &self,
        indexes: &[Index],
        uids: &[u32],
        turn: Option<&tokio::sync::Semaphore>,
    ) -> Result<usize, AccountError> {
        let mut kinds = indexes.to_vec();
        kinds.sort_by_key(|index| *index as usize);
        kinds.dedup();
        let (touched, side) = {
            let log = self.log.read().await;
            let s = log.state();
            let pages: BTreeSet<&str> = uids
                .iter()
                .filter_map(|uid| match s.summary_at(&s.message_id(*uid)?) {
                    SummaryAt::Page(page) => Some(page),
                    _ => None,
                })
                .collect();
            // Per summary page, the names of its index pages wanted.
            let touched: BTreeMap<String, Vec<(Index, String)>> = pages
                .into_iter()
                .map(|page| {
                    let names = kinds.iter().map(|i| (*i, i.page_name(page))).collect();
                    (page.to_owned(), names)
                })
                .collect();
            (touched, log.side())
        };
        let all_known = |indexed: &HashSet<String>| {
            touched
                .values()
                .flatten()
                .all(|(_, name)| indexed.contains(name))
        };
        if all_known(&self.indexed()) {
            return Ok(0);
        }
        // One writer at a time per kind; the others wait for its pages.
        let mut _writing = Vec::with_capacity(kinds.len());
        for index in &kinds {
            _writing.push(self.indexing[*index as usize].lock().await);
        }
        if all_known(&self.indexed()) {
            return Ok(0);
        }
        let _turn = match turn {
            Some(turn) => Some(
                turn.acquire()
                    .await
                    .map_err(|e| AccountError::Internal(format!("index pages: {e}")))?,
            ),
            None => None,
        };
        self.list_index_pages(&side).await?;
        // Per summary page, the kinds it lacks.
        let missing: HashMap<String, Vec<Index>> = {
            let indexed = self.indexed();
            touched
                .into_iter()
                .filter_map(|(page, names)| {
                    let lacking: Vec<Index> = names
                        .into_iter()
                        .filter(|(_, name)| !indexed.contains(name))
                        .map(|(index, _)| index)
                        .collect();
                    (!lacking.is_empty()).then_some((page, lacking))
                })
                .collect()
        };
        if missing.is_empty() {
            return Ok(0);
        }
        // The shown messages of each summary page lacking index pages.
        let pages: BTreeMap<String, Lacking> = {
            let log = self.log.read().await;
            let s = log.state();
            let mut pages: BTreeMap<String, Lacking> = BTreeMap::new();
            for (uid, id) in s.shown() {
                if let SummaryAt::Page(page) = s.summary_at(&id)
                    && let Some(lacking) = missing.get(page)
                {
                    pages
                        .entry(page.to_owned())
                        .or_insert_with(|| (lacking.clone(), Vec::new()))
                        .1
                        .push((uid, id));
                }
            }
            pages
        };
        // Header pages cost a summary page read each, text pages and
        // packs up to 256 body reads ([`TEXT_BODIES`] at a time).
        let at_once = if kinds
            .iter()
            .any(|i| matches!(i, Index::Text | Index::Bodies))
        {
            2
        } else {
            SUMMARY_FETCHES
        };
        let mut built = stream::iter(pages)
            .map(|(page, (lacking, messages))| {
                let side = side.clone();
                async move {
                    let mut written = 0;
                    for (index, entries) in self.index_pages(&lacking, &messages).await? {
                        // A pack of nothing (every body long or unreadable)
                        // would only cost a GET: a FETCH reads them alone.
                        if index == Index::Bodies && entries.entries.is_empty() {
                            continue;
                        }
                        if self.locked_out.load(Ordering::Relaxed) {
                            return Err(AccountError::Locked);
                        }
                        let (name, sealed) = tokio::task::spawn_blocking({
                            let (side, page) = (side.clone(), page.clone());
                            move || {
                                side.seal_companion(&page, index.suffix(), &entries.encode(index))
                            }
                        })
                        .await
                        .map_err(|e| {
                            AccountError::Internal(format!("sealing an index page: {e}"))
                        })?;
                        self.store.put(&side.object_key(&name), sealed).await?;
                        self.indexed().insert(name);
                        written += 1;
                    }
                    Ok::<usize, AccountError>(written)
                }
            })
            .buffer_unordered(at_once);
        let mut written = 0;
        while let Some(page) = built.next().await {
            written += page?;
        }
        Ok(written)
    }

    /// Names of the index pages known to be in the store.
    fn indexed(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // Only inserts and removes of whole names: a panic cannot leave
        // the set half-updated.
        self.indexed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The index pages of `kinds` for `messages` (the shown messages of one
    /// summary page; see [`Mailbox::write_index`]).
    async fn index_pages(
        &self,
        kinds: &[Index],
        messages: &[(u32, MessageId)],
    ) -> Result<Vec<(Index, IndexPage)>, AccountError> {
        let mut pages = Vec::with_capacity(kinds.len());
        if kinds.contains(&Index::Headers) {
            pages.push((Index::Headers, self.header_page(messages).await?));
        }
        let (text, pack) = (kinds.contains(&Index::Text), kinds.contains(&Index::Bodies));
        if text || pack {
            let (texts, bodies) = self.body_pages(messages, text, pack).await?;
            pages.extend(texts.map(|page| (Index::Text, page)));
            pages.extend(bodies.map(|page| (Index::Bodies, page)));
        }
        Ok(pages)
    }

    /// The text page (if `text`) and the body pack (if `pack`) of
    /// `messages`, each body read once, [`TEXT_BODIES`] at a time, and
    /// not kept in the cache (the pages answer for them): the text of
    /// every message; the bodies short enough to be packed, as many as
    /// fit a pack. A message whose body cannot be found or opened is left
    /// out of both (a search or FETCH reads it alone and reports that).
    async fn body_pages(
        &self,
        messages: &[(u32, MessageId)],
        text: bool,
        pack: bool,
    ) -> Result<(Option<IndexPage>, Option<IndexPage>), AccountError> {
        // Only what fits: no body read to be dropped.
        let packed: HashSet<u32> = if pack {
            self.read(|s| {
                let mut room = Index::Bodies.max_page() as u64;
                messages
                    .iter()
                    .filter(|(uid, _)| {
                        let Some(size) = s.message(*uid).map(|m| m.message.size) else {
                            return false;
                        };
                        let fits = size <= MAX_PACKED_BODY as u64 && size <= room;
                        if fits {
                            room -= size;
                        }
                        fits
                    })
                    .map(|(uid, _)| *uid)
                    .collect()
            })
            .await
        } else {
            HashSet::new()
        };
        // With text, every message and the structure of its body; else
        // only the packed ones.
        let wanted: Vec<(u32, MessageId, Option<MessageSummary>)> = if text {
            let structure = Parts {
                body: true,
                ..Parts::NONE
            };
            self.with_summaries(messages, structure)
                .await?
                .into_iter()
                .map(|(uid, id, summary)| (uid, id, Some(summary)))
                .collect()
        } else {
            messages
                .iter()
                .filter(|(uid, _)| packed.contains(uid))
                .map(|(uid, id)| (*uid, *id, None))
                .collect()
        };
        let packed = &packed;
        let mut read = stream::iter(wanted)
            .map(|(uid, id, summary)| async move {
                let raw = match self.body_kept(uid, false).await {
                    Ok(raw) => raw,
                    Err(
                        AccountError::NoSuchMessage(_)
                        | AccountError::Corrupt(_)
                        | AccountError::Crypto(_),
                    ) => return Ok(None),
                    Err(AccountError::Store(e)) if e.is_not_found() => return Ok(None),
                    Err(e) => return Err(e),
                };
                let text = match summary {
                    None => None,
                    Some(summary) => {
                        let body = raw.clone();
                        let text = tokio::task::spawn_blocking(move || {
                            searchable_text_within(&body, &summary.body, MAX_MESSAGE_TEXT)
                        })
                        .await;
                        match text {
                            Ok(text) => text,
                            // Left out: searches read the body (and fail the
                            // same).
                            Err(e) if e.is_panic() => {
                                tracing::warn!(uid, "reading the text of a message panicked");
                                None
                            }
                            Err(e) => {
                                return Err(AccountError::Internal(format!("reading a text: {e}")));
                            }
                        }
                    }
                };
                let body = packed.contains(&uid).then_some(raw);
                Ok(Some((id, text, body)))
            })
            .buffered(TEXT_BODIES);
        let (mut texts, mut bodies) = (IndexPage::default(), IndexPage::default());
        while let Some(read) = read.next().await {
            let Some((id, text, body)) = read? else {
                continue;
            };
            if let Some(text) = text {
                texts.add(Index::Text, id, text.into());
            }
            if let Some(body) = body {
                bodies.add(Index::Bodies, id, body);
            }
        }
        Ok((text.then_some(texts), pack.then_some(bodies)))
    }

    /// Bodies of `uids` read from body packs, writing the packs their
    /// summary pages lack first: a FETCH of many bodies then costs a GET
    /// per summary page, not one per message, on every instance sharing
    /// the pages and for every later download. Only pages holding at
    /// least [`PACKED_FROM`]` / 2` of the short bodies asked for, and at
    /// least a quarter of the page's short bodies (half if the pack must
    /// be written first, which reads them all), are packed: a scattered
    /// set of UIDs (search results, flagged mail) must not make the server
    /// read whole pages for one body each, but the end of a range cutting
    /// a page must not cost a GET per body either (a GET of a pack, a few
    /// megabytes, takes about as long as four of a body on one Garage
    /// node: 4 to 6 ms against 1.3 each, 4 at a time). Best effort: a body not found
    /// here (long, placed since the last snapshot, on a page left out, or
    /// any failure to write or read packs, after which packs are left
    /// alone for a minute) is for the caller to read alone.
    pub async fn packed_bodies(&self, uids: &[u32]) -> HashMap<u32, Bytes> {
        if now_ms() < self.packs_paused_until.load(Ordering::Relaxed) {
            return HashMap::new();
        }
        let short = |s: &MailboxState, uid: u32| {
            s.message(uid)
                .map(|m| m.message.size)
                .filter(|size| *size <= MAX_PACKED_BODY as u64)
        };
        let (plan, side) = {
            let log = self.log.read().await;
            let s = log.state();
            // Per summary page, the short bodies asked for.
            let mut asked: HashMap<&str, Vec<(u32, u64)>> = HashMap::new();
            for uid in uids {
                if let (Some(size), Some(page)) = (short(s, *uid), s.summary_page(*uid)) {
                    asked.entry(page).or_default().push((*uid, size));
                }
            }
            asked.retain(|_, on| on.len() >= PACKED_FROM / 2);
            if asked.is_empty() {
                return HashMap::new();
            }
            // And the page's short bodies: a page is read for half of
            // them at least, or a quarter if its pack is there (writing
            // it reads them all).
            let mut held: HashMap<&str, usize> = HashMap::new();
            for (uid, _) in s.shown() {
                if let Some(page) = s.summary_page(uid)
                    && asked.contains_key(page)
                    && short(s, uid).is_some()
                {
                    *held.entry(page).or_default() += 1;
                }
            }
            let indexed = self.indexed();
            let mut plan = PackPlan::default();
            for (page, on) in asked {
                let held = held.get(page).copied().unwrap_or(0);
                if 2 * on.len() >= held {
                    plan.write.extend(on.iter().map(|(uid, _)| *uid));
                } else if 4 * on.len() >= held {
                    plan.unlisted |= !indexed.contains(&Index::Bodies.page_name(page));
                } else {
                    continue;
                }
                plan.sizes.extend(on);
            }
            (plan, log.side())
        };
        if plan.sizes.is_empty() {
            return HashMap::new();
        }
        let uids: Vec<u32> = plan.sizes.keys().copied().collect();
        let pause = || {
            let until = now_ms() + PACKS_PAUSE.as_millis() as u64;
            self.packs_paused_until.store(until, Ordering::Relaxed);
        };
        let known = match plan.write.is_empty() {
            true => Ok(0),
            false => self.write_index(Index::Bodies, &plan.write).await,
        };
        let known = match (known, plan.unlisted) {
            (Ok(_), true) => self.list_index_pages(&side).await,
            (known, _) => known.map(|_| ()),
        };
        if let Err(e) = known {
            tracing::warn!(mailbox = %self.id, error = %e, "body packs not written");
            pause();
            return HashMap::new();
        }
        let mut bodies = match self.read_index(Index::Bodies, &uids).await {
            Ok(bodies) => bodies,
            Err(e) => {
                tracing::warn!(mailbox = %self.id, error = %e, "body packs not read");
                pause();
                return HashMap::new();
            }
        };
        // An entry of another length than its message's is not its body.
        bodies.retain(|uid, body| plan.sizes.get(uid) == Some(&(body.len() as u64)));
        bodies
    }

    /// Learns which index pages the store holds: one listing of the
    /// mailbox's side objects.
    async fn list_index_pages(&self, side: &SideObjects) -> Result<(), AccountError> {
        let prefix = side.object_key("");
        let listed = list_all_keys(self.store.as_ref(), &prefix, None).await?;
        self.indexed().extend(
            listed
                .iter()
                .filter_map(|key| key.strip_prefix(&prefix))
                .filter(|name| name.contains('.'))
                .map(str::to_owned),
        );
        Ok(())
    }

    /// The header page of `messages` (see [`Mailbox::write_index`]).
    async fn header_page(&self, messages: &[(u32, MessageId)]) -> Result<IndexPage, AccountError> {
        let headers = Parts {
            search_headers: true,
            ..Parts::NONE
        };
        let mut page = IndexPage::default();
        for (_, id, summary) in self.with_summaries(messages, headers).await? {
            page.add(
                Index::Headers,
                id,
                encode_headers(&summary.search_headers).into(),
            );
        }
        Ok(page)
    }

    /// `messages` with `parts` of their summaries, read as a scan; those
    /// expunged meanwhile are left out.
    async fn with_summaries(
        &self,
        messages: &[(u32, MessageId)],
        parts: Parts,
    ) -> Result<Vec<(u32, MessageId, MessageSummary)>, AccountError> {
        let uids: Vec<u32> = messages.iter().map(|(uid, _)| *uid).collect();
        let mut summaries: HashMap<u32, MessageSummary> =
            self.scan_parts(&uids, parts).await?.into_iter().collect();
        Ok(messages
            .iter()
            .filter_map(|(uid, id)| Some((*uid, *id, summaries.remove(uid)?)))
            .collect())
    }

    async fn read_summaries(
        &self,
        uids: &[u32],
        parts: Parts,
        cache: bool,
    ) -> Result<Vec<(u32, MessageSummary)>, AccountError> {
        let encoded = self.summary_bytes(uids, cache).await?;
        if encoded.len() <= PARSE_IN_TASK {
            return parse_summaries(encoded, parts);
        }
        // A batch is parsed on a blocking thread: FETCH and SEARCH ask
        // for the next batches while one is answered, and their parsing
        // then runs on the other cores instead of one after another in
        // the session's task.
        tokio::task::spawn_blocking(move || parse_summaries(encoded, parts))
            .await
            .map_err(|e| AccountError::Internal(format!("reading summaries: {e}")))?
    }

    /// Encoded summaries of the shown messages among `uids`: held in the
    /// state, else from the summary cache, else from summary pages (one
    /// GET per page, bounded and in parallel; with `cache_pages`, the
    /// whole page goes to the cache, as neighbours are usually asked
    /// next). A message whose page is gone (collected while this instance
    /// still referred to it) or
    /// unknown is summarised again from its body, and the result held
    /// until the next snapshot pages it out again.
    async fn summary_bytes(
        &self,
        uids: &[u32],
        cache_pages: bool,
    ) -> Result<Vec<(u32, MessageId, Bytes)>, AccountError> {
        enum Where {
            Held(Bytes),
            Page(String),
            Unknown,
        }
        let (located, side) = {
            let log = self.log.read().await;
            let s = log.state();
            let located: Vec<(u32, MessageId, Where)> = uids
                .iter()
                .filter_map(|uid| {
                    let id = s.message_id(*uid)?;
                    let at = match s.summary_at(&id) {
                        SummaryAt::Held(bytes) => Where::Held(Bytes::from(bytes)),
                        SummaryAt::Page(page) => Where::Page(page.to_owned()),
                        SummaryAt::Unknown => Where::Unknown,
                    };
                    Some((*uid, id, at))
                })
                .collect();
            (located, log.side())
        };
        let cache = self.cache.summaries();
        let mut found: HashMap<MessageId, Bytes> = HashMap::new();
        let mut pages = BTreeSet::new();
        for (_, id, at) in &located {
            match at {
                Where::Held(bytes) => {
                    found.insert(*id, bytes.clone());
                }
                Where::Page(page) => match cache.get(&(self.cache_id.clone(), *id)) {
                    Some(bytes) => {
                        found.insert(*id, bytes);
                    }
                    None => {
                        pages.insert(page.clone());
                    }
                },
                Where::Unknown => {}
            }
        }

        let store = &self.store;
        let fetched: Vec<(String, Result<Option<SummaryPage>, AccountError>)> = stream::iter(pages)
            .map(|name| {
                let side = side.clone();
                async move {
                    let page = read_summary_page(store, &side, &name).await;
                    (name, page)
                }
            })
            .buffer_unordered(SUMMARY_FETCHES)
            .collect()
            .await;
        let wanted: BTreeSet<MessageId> = located.iter().map(|(_, id, _)| *id).collect();
        let mut lost = Vec::new();
        for (name, page) in fetched {
            match page? {
                Some(page) => {
                    for PagedSummary { id, summary } in page.summaries {
                        if cache_pages {
                            // The cache keeps a copy: a slice would keep
                            // the whole page alive, unaccounted for.
                            cache.insert(
                                (self.cache_id.clone(), id),
                                Bytes::copy_from_slice(&summary),
                            );
                        }
                        if wanted.contains(&id) {
                            found.insert(id, summary);
                        }
                    }
                }
                None => lost.push(name),
            }
        }

        // Whatever is still missing: summarise the body again.
        let missing: Vec<(u32, MessageId)> = located
            .iter()
            .filter(|(_, id, _)| !found.contains_key(id))
            .map(|(uid, id, _)| (*uid, *id))
            .collect();
        type Redone = Result<Option<(MessageId, Bytes)>, AccountError>;
        let redone: Vec<Redone> = stream::iter(missing)
            .map(|(uid, id)| async move {
                let body = match self.body(uid).await {
                    Ok(body) => body,
                    Err(AccountError::NoSuchMessage(_)) => return Ok(None),
                    Err(e) => return Err(e),
                };
                let summary =
                    tokio::task::spawn_blocking(move || encode_summary(&summarize(&body)))
                        .await
                        .map_err(|e| AccountError::Internal(format!("summarising: {e}")))?;
                Ok(Some((id, Bytes::from(summary))))
            })
            .buffer_unordered(SUMMARY_FETCHES)
            .collect()
            .await;
        let mut restored = Vec::new();
        for r in redone {
            if let Some((id, bytes)) = r? {
                restored.push((id, bytes.to_vec()));
                found.insert(id, bytes);
            }
        }
        if !lost.is_empty() || !restored.is_empty() {
            tracing::warn!(
                mailbox = %self.id,
                pages = lost.len(),
                messages = restored.len(),
                "summaries missing from their pages were computed again"
            );
            let mut log = self.log.write().await;
            let state = log.state_mut();
            state.pages_lost(&lost);
            state.hold_summaries(restored);
        }
        Ok(located
            .into_iter()
            .filter_map(|(uid, id, _)| found.get(&id).map(|b| (uid, id, b.clone())))
            .collect())
    }

    /// Moves the user's queued deliveries (`incoming/`, doc/storage.md,
    /// "Encryption") into this mailbox, in batches: read the records, write one
    /// op placing them, delete the records the state now holds. Safe to run on
    /// several instances at once: a record drained twice is still one message.
    ///
    /// Pipelined (issue #15): the next batch is listed, fetched and opened
    /// while this one is placed and its records deleted. Reading the queue
    /// changes nothing, so the order that matters is kept: a record is
    /// deleted only after the op placing it is durable and in the state.
    pub async fn drain_incoming(
        &self,
        keys: &UserKeys,
        records: &RecordAuth,
    ) -> Result<DrainReport, AccountError> {
        let collect = |after: Option<String>| async move {
            incoming::collect(
                self.store.as_ref(),
                &self.user,
                keys,
                records,
                after.as_deref(),
                incoming::BATCH,
            )
            .await
        };
        let mut report = DrainReport::default();
        let mut batch = collect(None).await?;
        // The previous batch, placed: its records are deleted while this
        // batch is placed.
        let mut cleaning: Option<incoming::Collected> = None;
        let mut failed = None;
        while !batch.is_empty() {
            let (next, more) = batch.next();
            let next = next.map(str::to_owned);
            let following = async {
                match more {
                    true => collect(next).await.map(Some),
                    false => Ok(None),
                }
            };
            let placing = async {
                let _writing = self.lock_for_placing().await;
                // As in `write_placing`: claim from a fresh state.
                self.place_locked(|state| batch.op(state), true).await
            };
            let report = &mut report;
            let clean_up = async {
                match cleaning.take() {
                    Some(placed) => placed.clean_up(self.store.as_ref(), report).await,
                    None => true,
                }
            };
            let (placed, following, cleaned) = futures::join!(placing, following, clean_up);
            // The records are deleted only once the op placing them is
            // durable and in the state.
            placed?;
            batch.mark_held(self.log.read().await.state());
            cleaning = Some(batch);
            // A failure stops the drain; what was placed stays placed.
            match following {
                Ok(Some(following)) if cleaned => batch = following,
                Ok(_) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(placed) = cleaning {
            placed.clean_up(self.store.as_ref(), &mut report).await;
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(report),
        }
    }

    /// Places messages migrated from another server (`facteur import`),
    /// their bodies already stored, in the given order. Each is named by
    /// an import id, placed as a delivery of that id
    /// ([`MessageId::delivered`]): a message whose id the mailbox already
    /// holds (shown, or expunged since) is not placed again, so a second
    /// or interrupted run places nothing twice, even two runs at once.
    /// A message with a wanted UID at or above UIDNEXT gets it: the UIDs
    /// in between are skipped ([`MailboxOp::Skip`]); one below UIDNEXT,
    /// or with none, gets the next UID. Returns the UID each message got
    /// (`None` if it was there already or is displaced by a concurrent
    /// placement).
    pub async fn import(
        &self,
        messages: Vec<ImportedMessage>,
    ) -> Result<Vec<Option<u32>>, AccountError> {
        let ids: Vec<MessageId> = messages
            .iter()
            .map(|m| MessageId::delivered(&m.id))
            .collect();
        let mut pending: std::collections::VecDeque<ImportedMessage> = messages.into();
        let mut placed: BTreeSet<MessageId> = BTreeSet::new();
        {
            let _writing = self.lock_for_placing().await;
            let mut fresh = true;
            while !pending.is_empty() {
                let mut taken = 0;
                let plan = |state: &MailboxState| {
                    let (op, n) = plan_import(state, &pending);
                    taken = n;
                    op
                };
                let written = self.place_locked(plan, fresh).await?;
                if written.is_none() && taken == 0 {
                    return Err(AccountError::Internal(
                        "an import step placed nothing (UID space exhausted?)".into(),
                    ));
                }
                fresh = false;
                for m in pending.drain(..taken) {
                    placed.insert(MessageId::delivered(&m.id));
                }
            }
        }
        Ok(self
            .read(|s| {
                ids.iter()
                    .map(|id| placed.contains(id).then(|| s.uid_of(id)).flatten())
                    .collect()
            })
            .await)
    }

    /// Raises UIDNEXT to `uid_next` with a [`MailboxOp::Skip`], if below:
    /// a migrated mailbox keeps the UIDNEXT it had, so a message its old
    /// server expunged last never has its UID given again.
    pub async fn skip_to(&self, uid_next: u32) -> Result<(), AccountError> {
        let _writing = self.lock_for_placing().await;
        let plan = |state: &MailboxState| {
            let gap = uid_next.saturating_sub(state.uid_next());
            (gap > 0).then_some(MailboxOp::Skip(gap.min(MAX_SKIP)))
        };
        // One Skip covers at most MAX_SKIP UIDs: as many as the gap needs.
        loop {
            let before = self.read(|s| s.uid_next()).await;
            if before >= uid_next {
                return Ok(());
            }
            self.place_locked(plan, true).await?;
            if self.read(|s| s.uid_next()).await <= before {
                return Ok(());
            }
        }
    }

    /// Unreadable op objects of this mailbox, for reporting.
    pub async fn damage(&self) -> Vec<crate::log::stored::Damage> {
        self.log.read().await.damaged()
    }
}

/// Parses encoded summaries (as [`Mailbox::summary_bytes`] gives them).
fn parse_summaries(
    encoded: Vec<(u32, MessageId, Bytes)>,
    parts: Parts,
) -> Result<Vec<(u32, MessageSummary)>, AccountError> {
    encoded
        .into_iter()
        .map(|(uid, id, bytes)| {
            let summary = MessageSummary::decode(&bytes, parts).map_err(|e| {
                AccountError::Corrupt(format!("message {id}: unreadable summary: {e}"))
            })?;
            Ok((uid, summary))
        })
        .collect()
}

/// Summary page `name`: `None` if it is missing (collected) or
/// unreadable (damaged, or not sealed under this mailbox's key).
async fn read_summary_page(
    store: &SharedStore,
    side: &SideObjects,
    name: &str,
) -> Result<Option<SummaryPage>, AccountError> {
    let sealed = match store.get(&side.object_key(name)).await {
        Ok(sealed) => sealed,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let opened = tokio::task::spawn_blocking({
        let (side, name) = (side.clone(), name.to_owned());
        move || {
            let plain = side.open(&name, &sealed).map_err(|e| e.to_string())?;
            SummaryPage::decode(Bytes::from(plain)).map_err(|e| e.to_string())
        }
    })
    .await
    .map_err(|e| AccountError::Internal(format!("opening a page: {e}")))?;
    Ok(opened
        .inspect_err(|reason| tracing::warn!(page = %name, %reason, "unreadable summary page"))
        .ok())
}

/// Index page `name` of kind `index`, if it is there and opens. One that
/// does not is as good as missing: it is said so and deleted, and the
/// next search writes it again.
async fn read_index_page(
    store: &dyn crate::store::ObjectStore,
    side: &SideObjects,
    index: Index,
    name: &str,
) -> Result<Option<IndexPage>, AccountError> {
    let key = side.object_key(name);
    let sealed = match store.get(&key).await {
        Ok(sealed) => sealed,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let opened = tokio::task::spawn_blocking({
        let (side, name) = (side.clone(), name.to_owned());
        move || {
            let plain = side
                .open_at_most(&name, &sealed, IndexPage::max_encoded(index, PAGE_MESSAGES))
                .map_err(|e| e.to_string())?;
            IndexPage::decode(index, Bytes::from(plain)).map_err(str::to_owned)
        }
    })
    .await
    .map_err(|e| AccountError::Internal(format!("opening an index page: {e}")))?;
    match opened {
        Ok(entries) => Ok(Some(entries)),
        Err(reason) => {
            tracing::warn!(page = name, %reason, "unreadable index page: searching without it");
            if let Err(e) = store.delete(&key).await {
                tracing::warn!(page = name, error = %e, "could not delete an unreadable index page");
            }
            Ok(None)
        }
    }
}

#[cfg(test)]
mod import_tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::log::Replica;
    use crate::mailbox::op::BodyKey;

    fn imported(id: &str, uid: Option<u32>) -> ImportedMessage {
        ImportedMessage {
            id: id.into(),
            uid,
            new: NewMessage {
                message: MessageRef {
                    blob_id: format!("blob-{id}"),
                    body_key: BodyKey::random(),
                    size: 1,
                    internal_date: 0,
                    summary: vec![],
                },
                flags: vec!["\\Seen".into()],
            },
        }
    }

    /// Runs an import to its end as `Mailbox::import` does; returns the
    /// number of ops written.
    fn run(replica: &mut Replica<MailboxState>, mut pending: VecDeque<ImportedMessage>) -> usize {
        let instance = InstanceId::new("a").unwrap();
        let mut ops = 0;
        while !pending.is_empty() {
            let (op, taken) = plan_import(replica.state(), &pending);
            if let Some(op) = op {
                ops += 1;
                let envelope = replica.prepare(op, instance.clone(), 1_000 + ops as u64);
                let (id, _) = envelope.encode().unwrap();
                replica.insert(id, envelope);
            }
            assert!(ops < 100, "no progress");
            pending.drain(..taken);
        }
        ops
    }

    fn uid(replica: &Replica<MailboxState>, id: &str) -> Option<u32> {
        replica.state().uid_of(&MessageId::delivered(id))
    }

    #[test]
    fn an_import_keeps_wanted_uids_across_gaps_and_places_nothing_twice() {
        let mut replica = Replica::new(MailboxState::new(7));
        let all = || {
            VecDeque::from([
                imported("x", Some(2)),
                imported("y", Some(3)),
                imported("z", Some(6)),
                imported("w", None),
            ])
        };
        // Skip 1, deliver x y, skip 4-5, deliver z w.
        assert_eq!(run(&mut replica, all()), 4);
        let uids: Vec<_> = ["x", "y", "z", "w"]
            .iter()
            .map(|id| uid(&replica, id))
            .collect();
        assert_eq!(uids, [Some(2), Some(3), Some(6), Some(7)]);
        assert_eq!(replica.state().exists(), 4);
        assert_eq!(run(&mut replica, all()), 0, "a second run writes nothing");
        // A wanted UID already passed is given the next one.
        run(&mut replica, VecDeque::from([imported("v", Some(5))]));
        assert_eq!(uid(&replica, "v"), Some(8));
    }
}
