//! The incoming queue (doc/storage.md, "Encryption", delivery): how mail
//! reaches a mailbox while nobody holds the user's keys.
//!
//! - [`deliver`] (LMTP): seals the body under a fresh random key to
//!   `users/<u>/blob/<blob-id>`, then writes a delivery record to
//!   `users/<u>/incoming/<ts>-<rand>`: the body key, blob id, size, date,
//!   envelope and message summary (§4), sealed to the user's public key
//!   (a libsodium-compatible sealed box). It returns only once both PUTs
//!   succeeded, so LMTP answers 250 only for mail that is durable (§6).
//! - [`drain`] (an instance holding the user's unlocked keys): lists
//!   `incoming/`, opens each record, places the messages in INBOX with one
//!   [`MailboxOp::Deliver`] op per batch, and deletes the records once that
//!   op's PUT succeeded. The blob is never read nor rewritten.
//!
//! Invariants:
//!
//! - **Never two, never zero.** A record is deleted only once the mailbox
//!   state holds its message ([`MailboxState::has_delivery`]), and the
//!   state holds only ops whose PUT succeeded or that a sync found. Two
//!   instances draining one record at once both write it; its message's
//!   identity is a function of the record name
//!   ([`MessageId::delivered`]), so both ops place one message
//!   (`doc/consistency.md` and [`MailboxOp::Deliver`] tell what happens to
//!   its UID claims).
//! - **A bad record blocks nothing.** A record that does not open or parse
//!   is moved to `users/<u>/quarantine/<name>` (bytes copied, then the
//!   record deleted) and reported; the others are drained.
//! - **Records cannot be forged.** The user's public key is public, so
//!   anyone who can write the bucket could seal a record to it. Every
//!   record therefore carries HMAC-SHA256 under a key derived from the
//!   cluster secret, over its object name and whole content
//!   ([`RecordAuth`]); a record without a valid MAC (forged, altered,
//!   moved, or written before records were authenticated) is quarantined,
//!   logged as an error and counted ([`quarantined_records`]), never
//!   shown. `facteur user requeue` puts a quarantined record back, with a
//!   MAC, once an operator decided it is genuine.
//! - **Records cannot be moved.** Besides the MAC, the record's own object
//!   name is sealed inside it and checked on opening: a record copied to
//!   another name or another user's queue is quarantined, not delivered
//!   twice.
//! - **No lock across store calls.** Draining runs in three steps, for
//!   callers that share the mailbox: [`collect`] (store only), then
//!   [`Collected::op`] (pure, from the state), the op written with the log,
//!   then [`Collected::clean_up`]. [`drain`] chains them.
//!
//! Not checked at drain: that the blob exists. That would cost a GET (or a
//! HEAD the store trait does not have) per message, and deliver writes the
//! blob before the record, so a record without its blob means the blob was
//! lost later; FETCH of its body then fails for that message only.
//!
//! Costs of a drain: one LIST per batch of up to [`BATCH`] records (and
//! [`BATCH_BYTES`]), one GET per record ([`FETCH_PARALLELISM`] at a time),
//! one op PUT per batch, one `delete_many` per 100 records, several at
//! once (plus a PUT and a DELETE per quarantined record). Nothing when the
//! queue is empty but the LIST. `Mailbox::drain_incoming` pipelines the
//! batches: the next is collected, and the previous one's records
//! deleted, while one is placed.
//!
//! Not done here: the `+detail` folder is recorded in the record
//! ([`DeliveryEnvelope::folder`]) but every message goes to INBOX for now;
//! trace headers (Return-Path, Delivered-To, Received) are the LMTP
//! layer's to prepend before calling [`deliver`].

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::body::{encode_summary, seal_new_body};
use super::op::{BodyKey, Delivery};
use super::summary::LineEnds;
use super::summary::MessageSummary;
use super::{MailboxOp, MailboxState, MessageId, MessageRef, NewMessage};
use crate::crypto::record_auth::{RECORD_AUTH_OVERHEAD, RECORD_MAGIC};
use crate::crypto::{RecordAuth, RecordAuthError, UserKeys, UserPublicKey, seal_to};
use crate::log::now_ms;
use crate::log::stored::{StoredLog, SyncError};
use crate::store::layout::{self, UserId};
use crate::store::{ObjectMeta, ObjectStore, StoreError};

/// Most records drained by one op (and listed by one LIST, the most an S3
/// LIST returns): a record is a few KiB, so an op of a full batch is a
/// few MiB. Ten thousand waiting messages take ten batches, not a hundred
/// (issue #15).
pub const BATCH: usize = 1000;

/// Most record bytes one batch takes (as listed): bounds the op's size and
/// a drain's memory, since a record carries a summary of up to a few
/// hundred KiB in the worst case. A batch takes at least one record.
pub const BATCH_BYTES: u64 = 16 << 20;

/// Records fetched at once: each GET is one round trip to the store, and a
/// record is small.
pub const FETCH_PARALLELISM: usize = 64;

/// Fetched records opened together by one blocking task, while the rest of
/// the batch is still being fetched.
const OPEN_CHUNK: usize = 64;

/// Drained records deleted by one `delete_many`, and how many of those
/// run at once.
const DELETE_CHUNK: usize = 100;
const DELETE_PARALLELISM: usize = 8;

/// Largest delivery record read. A record holds a sealed key, the
/// envelope and the message's summary (headers Postfix caps at 100 KB by
/// default, a short preview): a few KiB, rarely more. A larger object
/// under `incoming/` was not written by an instance; it is left unread
/// (and logged), so a bucket writer cannot make every instance that
/// drains the user load gigabytes at once.
pub const MAX_RECORD_BYTES: u64 = 8 << 20;

/// Format of the records this version writes and reads. A record of a
/// higher version is left in the queue for a newer instance. (The MAC
/// around the sealed box is versioned by its own magic bytes, see
/// [`RecordAuth`].)
const RECORD_VERSION: u32 = 1;

/// Records quarantined by this process since it started, for `/metrics`.
static QUARANTINED: AtomicU64 = AtomicU64::new(0);
/// Of those, records without a valid MAC (forged, or from before records
/// were authenticated).
static UNAUTHENTICATED: AtomicU64 = AtomicU64::new(0);

/// How many delivery records this process quarantined, and how many of
/// those failed authentication.
pub fn quarantined_records() -> (u64, u64) {
    (
        QUARANTINED.load(Ordering::Relaxed),
        UNAUTHENTICATED.load(Ordering::Relaxed),
    )
}

/// Errors of delivering and draining. Each keeps its cause.
#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    /// The object store failed: LMTP answers 4xx when
    /// [`IncomingError::is_transient`], and the mail stays queued upstream.
    #[error("incoming queue: {0}")]
    Store(#[from] StoreError),
    /// Writing the drained messages to the mailbox log failed; the records
    /// stay queued.
    #[error("incoming queue: writing to the mailbox: {0}")]
    Log(#[from] SyncError),
    /// A record could not be encoded (cannot happen for well-formed input).
    #[error("incoming queue: cannot encode a delivery record: {0}")]
    Encode(#[source] serde_json::Error),
    /// The blocking task that summarises and seals the message failed.
    #[error("incoming queue: sealing task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl IncomingError {
    /// Whether trying again later may succeed (the store was unreachable).
    pub fn is_transient(&self) -> bool {
        match self {
            IncomingError::Store(e) => e.is_transient(),
            IncomingError::Log(e) => e.is_transient(),
            IncomingError::Encode(_) | IncomingError::Task(_) => false,
        }
    }
}

/// The SMTP envelope of a delivery (RFC 5321 §4.1.1, RFC 2033 §4.2),
/// kept in the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryEnvelope {
    /// The MAIL FROM reverse path, without angle brackets; empty for the
    /// null sender (`<>`, bounces).
    pub mail_from: String,
    /// The RCPT TO addresses of this user the message was accepted for.
    pub rcpt_to: Vec<String>,
    /// When the message was received, in seconds since the Unix epoch: the
    /// message's INTERNALDATE (RFC 9051 §2.3.3).
    pub received_at: i64,
    /// The folder a `+detail` address asked for, if any. Recorded; drained
    /// to INBOX for now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
}

/// What [`deliver`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryReceipt {
    /// The record's name under `incoming/`: also the delivery id.
    pub record: String,
    /// The body object's id under `blob/`.
    pub blob_id: String,
    /// RFC822.SIZE of the stored (CRLF) message.
    pub size: u64,
}

/// A delivery record, as sealed to the user's public key.
#[derive(Serialize, Deserialize)]
struct Record {
    version: u32,
    /// The record's full object key. A sealed box has no associated data,
    /// so the name is bound here instead (doc/storage.md, "Encryption": a
    /// ciphertext cannot be moved to another name).
    object: String,
    blob_id: String,
    body_key: BodyKey,
    size: u64,
    envelope: DeliveryEnvelope,
    summary: MessageSummary,
}

/// `<ms since the epoch, 16 hex digits>-<128 random bits, hex>`: names
/// sort by delivery time, and two deliveries in the same millisecond on
/// different instances do not collide.
fn record_name(ms: u64) -> String {
    format!("{ms:016x}-{:032x}", rand::random::<u128>())
}

/// How long ago, at `now` (ms since the epoch), the record `name` was
/// written, from the time its name starts with ([`record_name`]).
fn delivered_ago(name: &str, now: u64) -> Option<std::time::Duration> {
    let ms = u64::from_str_radix(name.get(..16)?, 16).ok()?;
    Some(std::time::Duration::from_millis(now.saturating_sub(ms)))
}

/// `users/<u>/incoming/<name>`.
fn record_key(user: &UserId, name: &str) -> String {
    format!("{}{name}", layout::incoming_prefix(user))
}

/// Stores a message for `user` without their password (doc/storage.md,
/// "Encryption"): normalises line endings to CRLF, summarises it (§4), seals
/// the body under a fresh key to `blob/`, then seals a delivery record to
/// `public_key` into `incoming/`, authenticated with `auth` (the key derived
/// from the cluster secret). Returns once both PUTs succeeded; on a store
/// failure returns [`IncomingError::Store`] (transient for outages), having
/// tried to delete the body if the record could not be written.
///
/// Summarising and compressing run on the blocking pool: a large message
/// takes a while on a small machine.
pub async fn deliver(
    store: &dyn ObjectStore,
    user: &UserId,
    public_key: &UserPublicKey,
    auth: &RecordAuth,
    raw: &[u8],
    envelope: DeliveryEnvelope,
) -> Result<DeliveryReceipt, IncomingError> {
    let name = record_name(now_ms());
    let object = record_key(user, &name);

    let (raw, user_id) = (raw.to_vec(), user.clone());
    let (public_key, auth) = (public_key.clone(), auth.clone());
    let (body, sealed_record) = {
        let object = object.clone();
        tokio::task::spawn_blocking(move || {
            let body = seal_new_body(&user_id, &raw, LineEnds::Crlf, now_ms());
            let record = Record {
                version: RECORD_VERSION,
                object: object.clone(),
                blob_id: body.blob_id.clone(),
                body_key: body.body_key.clone(),
                size: body.size,
                envelope,
                summary: body.summary.clone(),
            };
            let plain = Zeroizing::new(serde_json::to_vec(&record).map_err(IncomingError::Encode)?);
            let sealed = auth.wrap(&object, &seal_to(&public_key, &plain));
            Ok::<_, IncomingError>((body, sealed))
        })
        .await
        .map_err(IncomingError::Task)??
    };
    let (blob_key, blob_id, size) = (body.object_key, body.blob_id, body.size);

    store.put(&blob_key, body.sealed).await?;
    if let Err(e) = store.put(&object, Bytes::from(sealed_record)).await {
        // No record names the body: it would be an orphan forever.
        if let Err(cleanup) = store.delete(&blob_key).await {
            tracing::warn!(blob = %blob_key, error = %cleanup, "could not delete an orphan body");
        }
        return Err(e.into());
    }
    Ok(DeliveryReceipt {
        record: name,
        blob_id,
        size,
    })
}

/// An opened record waiting to be placed.
struct Opened {
    name: String,
    record: Record,
    /// The mailbox held it already when [`Collected::op`] was computed.
    already: bool,
    /// The mailbox holds it now ([`Collected::mark_held`]): safe to delete.
    held: bool,
}

/// A record that does not open or parse, with its bytes (to quarantine).
struct Unreadable {
    name: String,
    bytes: Bytes,
    reason: String,
    /// It failed authentication (rather than authenticated and damaged).
    unauthenticated: bool,
}

/// A record moved aside (or that should have been).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    /// The record's name under `incoming/`, and now under `quarantine/`.
    pub name: String,
    /// Why it could not be drained.
    pub reason: String,
    /// It had no valid MAC: forged, altered, moved, or older than record
    /// authentication.
    pub unauthenticated: bool,
    /// False if moving it failed: it stays in `incoming/` and the next
    /// drain tries again.
    pub moved: bool,
}

/// What a drain did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Messages placed by this drain's ops, in record order (those whose
    /// record was deleted, or whose delete failed: see `not_deleted`).
    pub delivered: Vec<MessageId>,
    /// Records whose message the mailbox already held (drained by another
    /// instance, or by an earlier drain that could not delete them): only
    /// deleted.
    pub already_drained: usize,
    /// Records listed but gone when fetched: another instance drained them.
    pub gone: usize,
    /// Records of a newer format, left for a newer instance.
    pub left_for_newer: usize,
    /// Records that could not be opened or parsed.
    pub quarantined: Vec<Quarantined>,
    /// Records drained whose delete failed; the next drain deletes them.
    pub not_deleted: usize,
}

/// One batch of records read from the queue, not yet placed.
pub struct Collected {
    user: UserId,
    opened: Vec<Opened>,
    unreadable: Vec<Unreadable>,
    gone: usize,
    newer: usize,
    /// The last key listed, where the next batch starts.
    last_listed: Option<String>,
    /// The listing stopped at [`BATCH`]: more records may follow.
    more: bool,
}

impl std::fmt::Debug for Collected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.opened.iter().map(|o| o.name.as_str()).collect();
        f.debug_struct("Collected")
            .field("user", &self.user)
            .field("opened", &names)
            .field("unreadable", &self.unreadable.len())
            .field("gone", &self.gone)
            .field("more", &self.more)
            .finish_non_exhaustive()
    }
}

/// Lists up to `limit` (at most [`BATCH`]) records after `start_after` (a
/// full key), keeps as many as fit in [`BATCH_BYTES`], and opens them,
/// fetching [`FETCH_PARALLELISM`] at a time; a record is opened only if
/// its MAC under `auth` verifies. Touches no mailbox. A store failure
/// aborts the batch (nothing was changed); unreadable records are set
/// aside for [`Collected::clean_up`].
pub async fn collect(
    store: &dyn ObjectStore,
    user: &UserId,
    keys: &UserKeys,
    auth: &RecordAuth,
    start_after: Option<&str>,
    limit: usize,
) -> Result<Collected, IncomingError> {
    let prefix = layout::incoming_prefix(user);
    let mut page = store
        .list(&prefix, start_after, limit.clamp(1, BATCH))
        .await?;
    let mut bytes = 0u64;
    let fits = page
        .objects
        .iter()
        .position(|meta| {
            // An oversized record is left unread: it costs nothing here.
            if meta.size <= MAX_RECORD_BYTES {
                bytes += meta.size;
            }
            bytes > BATCH_BYTES
        })
        .unwrap_or(page.objects.len())
        .max(1);
    if fits < page.objects.len() {
        page.objects.truncate(fits);
        page.truncated = true; // the rest is the next batch's
    }
    let mut collected = Collected {
        user: user.clone(),
        opened: Vec::new(),
        unreadable: Vec::new(),
        gone: 0,
        newer: 0,
        last_listed: page.objects.last().map(|m| m.key.clone()),
        more: page.truncated,
    };
    // Opening a record (MAC, sealed box, JSON) is CPU work: done off the
    // async runtime, a chunk at a time as the records arrive, so it
    // overlaps with fetching the rest (and with the previous batch's
    // placement) and runs on another core.
    let mut fetched = stream::iter(page.objects)
        .map(|meta| fetch_record(store, meta))
        .buffered(FETCH_PARALLELISM)
        .chunks(OPEN_CHUNK);
    let shared = std::sync::Arc::new((keys.clone(), auth.clone(), prefix));
    let mut opening = Vec::new();
    while let Some(chunk) = fetched.next().await {
        let chunk = chunk.into_iter().collect::<Result<Vec<_>, _>>()?;
        let shared = shared.clone();
        opening.push(tokio::task::spawn_blocking(move || {
            let (keys, auth, prefix) = &*shared;
            open_fetched(keys, auth, prefix, chunk)
        }));
    }
    for task in opening {
        collected.absorb(task.await.map_err(IncomingError::Task)?);
    }
    Ok(collected)
}

/// GETs one listed record: `None` if it is gone (drained meanwhile by
/// another instance) or too large to be one.
async fn fetch_record(
    store: &dyn ObjectStore,
    meta: ObjectMeta,
) -> Result<(String, Option<Bytes>), StoreError> {
    if meta.size > MAX_RECORD_BYTES {
        tracing::error!(
            record = %meta.key,
            size = meta.size,
            "delivery record larger than any instance writes; left unread"
        );
        return Ok((meta.key, None));
    }
    match store.get(&meta.key).await {
        Ok(bytes) => Ok((meta.key, Some(bytes))),
        Err(e) if e.is_not_found() => Ok((meta.key, None)),
        Err(e) => Err(e),
    }
}

/// Records of one chunk, opened or set aside.
#[derive(Default)]
struct Opening {
    opened: Vec<Opened>,
    unreadable: Vec<Unreadable>,
    gone: usize,
    newer: usize,
}

/// Opens what [`collect`] fetched: the records whose MAC verifies and that
/// open are kept, the others set aside for quarantine.
fn open_fetched(
    keys: &UserKeys,
    auth: &RecordAuth,
    prefix: &str,
    fetched: Vec<(String, Option<Bytes>)>,
) -> Opening {
    let mut collected = Opening::default();
    for (key, bytes) in fetched {
        let name = key.strip_prefix(prefix).unwrap_or(&key).to_owned();
        let Some(bytes) = bytes else {
            collected.gone += 1;
            continue;
        };
        let sealed = match auth.unwrap(&key, &bytes) {
            Ok(sealed) => sealed,
            Err(e) => {
                let hint = match e {
                    RecordAuthError::Unauthenticated => {
                        "; if it predates record authentication, `facteur user requeue` accepts it"
                    }
                    RecordAuthError::BadMac => "",
                };
                tracing::error!(record = %key, reason = %e, "delivery record refused: not written by a Facteur instance of this cluster{hint}");
                collected.unreadable.push(Unreadable {
                    name,
                    bytes,
                    reason: e.to_string(),
                    unauthenticated: true,
                });
                continue;
            }
        };
        match open_record(keys, &key, sealed) {
            Ok(record) if record.version > RECORD_VERSION => collected.newer += 1,
            Ok(record) => collected.opened.push(Opened {
                name,
                record,
                already: false,
                held: false,
            }),
            Err(reason) => {
                tracing::error!(record = %key, %reason, "unreadable delivery record");
                collected.unreadable.push(Unreadable {
                    name,
                    bytes,
                    reason,
                    unauthenticated: false,
                })
            }
        }
    }
    collected
}

/// Opens, parses and checks one record; the error says why not.
fn open_record(keys: &UserKeys, key: &str, sealed: &[u8]) -> Result<Record, String> {
    let plain = Zeroizing::new(keys.open_sealed(sealed).map_err(|e| e.to_string())?);
    let record: Record =
        serde_json::from_slice(&plain).map_err(|e| format!("malformed record: {e}"))?;
    if record.object != key {
        return Err(format!(
            "record was sealed for {:?}, found under another name",
            record.object
        ));
    }
    if record.blob_id.is_empty() || record.blob_id.contains('/') {
        return Err(format!("record names an invalid blob {:?}", record.blob_id));
    }
    Ok(record)
}

impl Collected {
    /// Adds a chunk's records, in order, after those already there.
    fn absorb(&mut self, chunk: Opening) {
        self.opened.extend(chunk.opened);
        self.unreadable.extend(chunk.unreadable);
        self.gone += chunk.gone;
        self.newer += chunk.newer;
    }

    /// Whether the listing was empty.
    pub fn is_empty(&self) -> bool {
        self.last_listed.is_none()
    }

    /// The op placing every opened record the mailbox does not hold yet,
    /// in record-name order; `None` if there is none. No I/O: compute it
    /// from the current state, write it with the mailbox's log.
    pub fn op(&mut self, state: &MailboxState) -> Option<MailboxOp> {
        for o in &mut self.opened {
            o.already = state.has_delivery(&o.name);
        }
        let deliveries: Vec<Delivery> = self
            .opened
            .iter()
            .filter(|o| !o.already)
            .map(|o| {
                let summary = encode_summary(&o.record.summary);
                Delivery {
                    id: o.name.clone(),
                    new: NewMessage {
                        message: MessageRef {
                            blob_id: o.record.blob_id.clone(),
                            body_key: o.record.body_key.clone(),
                            size: o.record.size,
                            internal_date: o.record.envelope.received_at,
                            summary,
                        },
                        flags: Vec::new(),
                    },
                }
            })
            .collect();
        (!deliveries.is_empty()).then_some(MailboxOp::Deliver(deliveries))
    }

    /// Notes which records `state` holds now: only those are deleted by
    /// [`Collected::clean_up`]. Cheap and without I/O, so a caller can run
    /// it under its mailbox lock and clean up after releasing it.
    pub fn mark_held(&mut self, state: &MailboxState) {
        for opened in &mut self.opened {
            opened.held = state.has_delivery(&opened.name);
        }
    }

    /// Where the next batch starts, and whether more records may follow.
    pub fn next(&self) -> (Option<&str>, bool) {
        (self.last_listed.as_deref(), self.more)
    }

    /// After the op of [`Collected::op`] was written and committed (or if
    /// there was none, or it failed): deletes every record `state` now
    /// holds, moves the unreadable ones to quarantine, and adds what
    /// happened to `report`. A record `state` does not hold is never
    /// deleted. Returns false if a store call failed (the caller should
    /// stop for now; nothing is lost).
    pub async fn clean_up(self, store: &dyn ObjectStore, report: &mut DrainReport) -> bool {
        report.gone += self.gone;
        report.left_for_newer += self.newer;
        let mut ok = true;
        let mut doomed = Vec::new();
        for opened in &self.opened {
            if !opened.held {
                continue; // not written (the op failed): keep it queued
            }
            if opened.already {
                report.already_drained += 1;
            } else {
                report.delivered.push(MessageId::delivered(&opened.name));
                if let Some(lag) = delivered_ago(&opened.name, now_ms()) {
                    crate::metrics::drain_lag(lag);
                }
            }
            doomed.push(record_key(&self.user, &opened.name));
        }
        // Deleted in chunks, several at once: on fs each record is an
        // unlink, on S3 a chunk is one request.
        let mut failed = Vec::new();
        for group in doomed.chunks(DELETE_CHUNK * DELETE_PARALLELISM) {
            let chunks: Vec<&[String]> = group.chunks(DELETE_CHUNK).collect();
            let results =
                futures::future::join_all(chunks.iter().map(|c| store.delete_many(c))).await;
            for (chunk, result) in chunks.iter().zip(results) {
                if let Err(e) = result {
                    failed.push((chunk.len(), e));
                }
            }
        }
        for (records, e) in failed {
            tracing::warn!(error = %e, records, "could not delete drained records");
            report.not_deleted += records;
            ok = false;
        }
        for bad in self.unreadable {
            QUARANTINED.fetch_add(1, Ordering::Relaxed);
            if bad.unauthenticated {
                UNAUTHENTICATED.fetch_add(1, Ordering::Relaxed);
            }
            let moved = quarantine(store, &self.user, &bad).await;
            if let Err(e) = &moved {
                tracing::warn!(record = %bad.name, error = %e, "could not quarantine a record");
                ok = false;
            }
            report.quarantined.push(Quarantined {
                name: bad.name,
                reason: bad.reason,
                unauthenticated: bad.unauthenticated,
                moved: moved.is_ok(),
            });
        }
        ok
    }
}

/// Copies a record to `quarantine/` as is, then deletes it from the queue.
async fn quarantine(
    store: &dyn ObjectStore,
    user: &UserId,
    bad: &Unreadable,
) -> Result<(), StoreError> {
    store
        .put(&layout::quarantine(user, &bad.name), bad.bytes.clone())
        .await?;
    store.delete(&record_key(user, &bad.name)).await
}

/// The names of `user`'s quarantined records, oldest name first.
pub async fn quarantined(
    store: &dyn ObjectStore,
    user: &UserId,
) -> Result<Vec<String>, StoreError> {
    let prefix = layout::quarantine(user, "");
    Ok(crate::store::list_all(store, &prefix, None)
        .await?
        .into_iter()
        .map(|m| m.key[prefix.len()..].to_owned())
        .collect())
}

/// Puts the quarantined record `name` back into `user`'s queue with a
/// valid MAC under `auth`: for a record an operator has judged genuine
/// (written before records were authenticated, or under a previous
/// cluster secret). Whatever the record holds is then delivered at the
/// next drain, so never requeue a record whose origin is unknown. A record
/// that was moved from another name stays refused (its sealed name does
/// not match). The body it names must still exist: bodies of quarantined
/// records are collected like any unreferenced body.
pub async fn requeue(
    store: &dyn ObjectStore,
    user: &UserId,
    auth: &RecordAuth,
    name: &str,
) -> Result<(), StoreError> {
    let held = layout::quarantine(user, name);
    let bytes = store.get(&held).await?;
    let key = record_key(user, name);
    // A record that had a header keeps only its sealed box.
    let sealed = if bytes.starts_with(RECORD_MAGIC) && bytes.len() >= RECORD_AUTH_OVERHEAD {
        &bytes[RECORD_AUTH_OVERHEAD..]
    } else {
        &bytes[..]
    };
    store
        .put(&key, Bytes::from(auth.wrap(&key, sealed)))
        .await?;
    store.delete(&held).await
}

/// Moves every queued delivery of `user` into `inbox`, in batches of
/// [`BATCH`]: [`collect`], one [`MailboxOp::Deliver`] op written with
/// `inbox` (skipped if the mailbox already holds every record), then
/// [`Collected::clean_up`]. Each record is visited once per call.
///
/// Sync `inbox` first (before serving a client the account does anyway):
/// a record another instance already drained is then only deleted. If it
/// was not synced, the record is placed again, and the state merges the
/// two placements into one message.
///
/// On error, the batches before were drained (their messages are in
/// `inbox`); the current batch stays queued, whole.
pub async fn drain(
    store: &dyn ObjectStore,
    user: &UserId,
    keys: &UserKeys,
    auth: &RecordAuth,
    inbox: &mut StoredLog<MailboxState>,
) -> Result<DrainReport, IncomingError> {
    let mut report = DrainReport::default();
    let mut after: Option<String> = None;
    loop {
        let mut batch = collect(store, user, keys, auth, after.as_deref(), BATCH).await?;
        if batch.is_empty() {
            break;
        }
        after = batch.last_listed.clone();
        let more = batch.more;
        if let Some(op) = batch.op(inbox.state()) {
            inbox.append(store, op).await?;
        }
        batch.mark_held(inbox.state());
        let ok = batch.clean_up(store, &mut report).await;
        if !ok || !more {
            break;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::crypto::{SymmetricKey, open_body};
    use crate::log::stored::LogTuning;
    use crate::log::{Envelope, InstanceId, Replica};
    use crate::mailbox::summary::{normalize_crlf, summarize};
    use crate::store::{ListPage, MemoryStore, S3Settings, S3Store, list_all};

    const MESSAGE: &[u8] = b"From: Alice <alice@example.org>\n\
        To: bob@example.net\n\
        Subject: Quarterly secret plans\n\
        Message-ID: <1@example.org>\n\
        \n\
        The treasure is under the old oak.\n";

    fn auth() -> RecordAuth {
        RecordAuth::from_cluster_secret(b"0123456789abcdef0123456789abcdef")
    }

    fn user() -> UserId {
        UserId::parse(&"ab".repeat(32)).unwrap()
    }

    fn envelope() -> DeliveryEnvelope {
        DeliveryEnvelope {
            mail_from: "alice@example.org".into(),
            rcpt_to: vec!["bob@example.net".into()],
            received_at: 1_700_000_000,
            folder: None,
        }
    }

    async fn inbox(
        store: &dyn ObjectStore,
        key: &SymmetricKey,
        who: &str,
    ) -> StoredLog<MailboxState> {
        StoredLog::open(
            store,
            key.clone(),
            format!("{}mbox/INBOX/", layout::user_prefix(&user())),
            InstanceId::new(who).unwrap(),
            LogTuning::default(),
            || MailboxState::new(1),
        )
        .await
        .unwrap()
    }

    async fn send(store: &dyn ObjectStore, keys: &UserKeys, n: usize) -> Vec<DeliveryReceipt> {
        let mut receipts = Vec::new();
        for i in 0..n {
            let raw = [MESSAGE, format!("part {i}\n").as_bytes()].concat();
            let receipt = deliver(
                store,
                &user(),
                &keys.public_key(),
                &auth(),
                &raw,
                envelope(),
            )
            .await
            .unwrap();
            receipts.push(receipt);
        }
        receipts
    }

    async fn queued(store: &dyn ObjectStore) -> usize {
        list_all(store, &layout::incoming_prefix(&user()), None)
            .await
            .unwrap()
            .len()
    }

    fn shown_once(state: &MailboxState, receipts: &[DeliveryReceipt]) {
        assert_eq!(state.exists() as usize, receipts.len());
        assert!(state.displaced().is_empty());
        for r in receipts {
            let id = MessageId::delivered(&r.record);
            assert!(state.uid_of(&id).is_some(), "{} not shown", r.record);
        }
    }

    #[test]
    fn the_delivery_time_is_read_from_the_record_name() {
        let name = record_name(1_700_000_000_000);
        assert_eq!(
            delivered_ago(&name, 1_700_000_002_500),
            Some(Duration::from_millis(2_500))
        );
        // A clock behind the writer's is no lag, not an overflow.
        assert_eq!(delivered_ago(&name, 0), Some(Duration::ZERO));
        assert_eq!(delivered_ago("short", 1), None);
        assert_eq!(delivered_ago("zzzzzzzzzzzzzzzz-1", 1), None);
    }

    #[tokio::test]
    async fn delivered_mail_is_drained_into_the_inbox_with_its_summary() {
        let store = MemoryStore::new();
        let keys = UserKeys::generate();
        let mbox_key = SymmetricKey::random();
        let receipt = deliver(
            &store,
            &user(),
            &keys.public_key(),
            &auth(),
            MESSAGE,
            envelope(),
        )
        .await
        .unwrap();
        assert_eq!(store.len(), 2, "one body, one record");
        let crlf = normalize_crlf(MESSAGE).into_owned();
        assert_eq!(receipt.size, crlf.len() as u64);

        let mut log = inbox(&store, &mbox_key, "a").await;
        let report = drain(&store, &user(), &keys, &auth(), &mut log)
            .await
            .unwrap();
        assert_eq!(
            report.delivered,
            vec![MessageId::delivered(&receipt.record)]
        );
        assert_eq!(queued(&store).await, 0);

        let view = log.state().message(1).unwrap();
        assert_eq!(view.message.size, receipt.size);
        assert_eq!(view.message.internal_date, 1_700_000_000);
        let crate::mailbox::state::SummaryAt::Held(held) = log.state().summary_at(&view.id) else {
            panic!("the summary is held until the next snapshot");
        };
        let summary: MessageSummary = serde_json::from_slice(&held).unwrap();
        assert_eq!(summary, summarize(&crlf));
        assert_eq!(
            summary
                .envelope
                .subject
                .as_ref()
                .map(|s| s.to_str_lossy().into_owned()),
            Some("Quarterly secret plans".to_owned())
        );
        // The body opens with the key the op recorded, as stored (CRLF).
        let blob_key = layout::blob(&user(), &view.message.blob_id());
        let sealed = store.get(&blob_key).await.unwrap();
        let body = open_body(view.message.body_key.key(), &blob_key, &sealed, 1 << 20).unwrap();
        assert_eq!(body, crlf);

        // Another instance sees the same message after a sync.
        let other = inbox(&store, &mbox_key, "b").await;
        assert_eq!(other.state(), log.state());

        // An empty queue costs one LIST.
        let before = store.calls();
        assert_eq!(
            drain(&store, &user(), &keys, &auth(), &mut log)
                .await
                .unwrap(),
            DrainReport::default()
        );
        assert_eq!(store.calls() - before, 1);
    }

    #[tokio::test]
    async fn a_drain_costs_a_list_a_get_per_record_one_put_and_one_delete() {
        let store = MemoryStore::new();
        let keys = UserKeys::generate();
        send(&store, &keys, 5).await;
        let mut log = inbox(&store, &SymmetricKey::random(), "a").await;
        let before = store.calls();
        let report = drain(&store, &user(), &keys, &auth(), &mut log)
            .await
            .unwrap();
        assert_eq!(report.delivered.len(), 5);
        assert_eq!(store.calls() - before, 1 + 5 + 1 + 1);
        assert_eq!(log.replica().dag().len(), 1, "one op for the batch");
    }

    #[tokio::test]
    async fn nothing_in_the_store_is_readable_without_the_keys() {
        let store = MemoryStore::new();
        let keys = UserKeys::generate();
        send(&store, &keys, 2).await;
        let mut log = inbox(&store, &keys.master().subkey("mbox"), "a").await;
        let before_drain = store.keys();
        drain(&store, &user(), &keys, &auth(), &mut log)
            .await
            .unwrap();
        let mut all = store.keys();
        all.extend(before_drain);
        assert!(all.len() >= 5, "{all:?}");
        for key in all {
            let bytes = store.get(&key).await.unwrap_or_default();
            for needle in [
                &b"Quarterly"[..],
                b"secret",
                b"treasure",
                b"alice",
                b"example",
                b"bob@",
                b"oak",
            ] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle)
                        && !key.as_bytes().windows(needle.len()).any(|w| w == needle),
                    "{key} shows {:?}",
                    String::from_utf8_lossy(needle)
                );
            }
        }
    }

    /// A store that can fail PUTs under a prefix, or `delete_many`.
    #[derive(Debug, Default)]
    struct Flaky {
        inner: MemoryStore,
        fail_puts_under: Mutex<Option<String>>,
        fail_delete_many: AtomicBool,
        /// Reports every listed object with this size.
        listed_size: Mutex<Option<u64>>,
    }

    #[async_trait::async_trait]
    impl ObjectStore for Flaky {
        async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
            let failing = self.fail_puts_under.lock().unwrap().clone();
            if failing.is_some_and(|p| key.starts_with(&p)) {
                return Err(StoreError::Transient(format!("injected: put {key}")));
            }
            self.inner.put(key, body).await
        }
        async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
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
            if self.fail_delete_many.load(Ordering::SeqCst) {
                return Err(StoreError::Transient("injected: delete_many".into()));
            }
            self.inner.delete_many(keys).await
        }
        async fn list(
            &self,
            prefix: &str,
            start_after: Option<&str>,
            limit: usize,
        ) -> Result<ListPage, StoreError> {
            let mut page = self.inner.list(prefix, start_after, limit).await?;
            if let Some(size) = *self.listed_size.lock().unwrap() {
                page.objects.iter_mut().for_each(|m| m.size = size);
            }
            Ok(page)
        }
    }

    /// A batch takes at most `BATCH_BYTES` of records, so its op stays a
    /// few MiB however large the records: the rest is the next batch's,
    /// and a drain still moves them all.
    #[tokio::test]
    async fn a_batch_holds_at_most_batch_bytes_of_records() {
        let flaky = Flaky::default();
        let keys = UserKeys::generate();
        send(&flaky, &keys, 3).await;
        *flaky.listed_size.lock().unwrap() = Some(6 << 20);
        let first = collect(&flaky, &user(), &keys, &auth(), None, BATCH)
            .await
            .unwrap();
        assert_eq!(first.opened.len(), 2, "{first:?}");
        let (next, more) = first.next();
        assert!(more);
        let second = collect(&flaky, &user(), &keys, &auth(), next, BATCH)
            .await
            .unwrap();
        assert_eq!(second.opened.len(), 1, "{second:?}");
        assert!(!second.next().1);

        let mut log = inbox(&flaky, &SymmetricKey::random(), "a").await;
        let report = drain(&flaky, &user(), &keys, &auth(), &mut log)
            .await
            .unwrap();
        assert_eq!(report.delivered.len(), 3);
        assert_eq!(log.state().exists(), 3);
        assert_eq!(queued(&flaky).await, 0);
    }

    #[tokio::test]
    async fn a_store_outage_is_transient_and_leaves_nothing_half_visible() {
        let store = MemoryStore::new();
        let keys = UserKeys::generate();
        store.set_offline(true);
        let err = deliver(
            &store,
            &user(),
            &keys.public_key(),
            &auth(),
            MESSAGE,
            envelope(),
        )
        .await
        .unwrap_err();
        assert!(err.is_transient(), "{err}");
        store.set_offline(false);
        assert!(store.is_empty());

        // The body was written, the record was not: the body is removed.
        let flaky = Flaky::default();
        *flaky.fail_puts_under.lock().unwrap() = Some(layout::incoming_prefix(&user()));
        let err = deliver(
            &flaky,
            &user(),
            &keys.public_key(),
            &auth(),
            MESSAGE,
            envelope(),
        )
        .await
        .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(flaky.inner.is_empty(), "{:?}", flaky.inner.keys());

        // Draining during an outage: an error, the queue untouched.
        send(&store, &keys, 1).await;
        let mut log = inbox(&store, &SymmetricKey::random(), "a").await;
        store.fail_next(1);
        let err = drain(&store, &user(), &keys, &auth(), &mut log)
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        // The op PUT fails (LIST, GET succeed): nothing placed, nothing lost.
        let flaky = Flaky::default();
        send(&flaky, &keys, 1).await;
        let mut log = inbox(&flaky, &SymmetricKey::random(), "a").await;
        *flaky.fail_puts_under.lock().unwrap() = Some(layout::user_prefix(&user()));
        let err = drain(&flaky, &user(), &keys, &auth(), &mut log)
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(log.state().exists(), 0);
        assert_eq!(queued(&flaky).await, 1);
        *flaky.fail_puts_under.lock().unwrap() = None;
        assert_eq!(
            drain(&flaky, &user(), &keys, &auth(), &mut log)
                .await
                .unwrap()
                .delivered
                .len(),
            1
        );
    }

    /// Two instances interleaved step by step: both list, both write,
    /// both delete.
    #[tokio::test]
    async fn two_instances_draining_the_same_records_make_one_message_each() {
        let store = MemoryStore::new();
        let keys = UserKeys::generate();
        let mbox_key = SymmetricKey::random();
        let receipts = send(&store, &keys, 3).await;
        let mut a = inbox(&store, &mbox_key, "a").await;
        let mut b = inbox(&store, &mbox_key, "b").await;

        let mut ca = collect(&store, &user(), &keys, &auth(), None, BATCH)
            .await
            .unwrap();
        let mut cb = collect(&store, &user(), &keys, &auth(), None, BATCH)
            .await
            .unwrap();
        let op_a = ca.op(a.state()).unwrap();
        let op_b = cb.op(b.state()).unwrap();
        a.append(&store, op_a).await.unwrap();
        b.append(&store, op_b).await.unwrap();
        let (mut ra, mut rb) = (DrainReport::default(), DrainReport::default());
        ca.mark_held(a.state());
        cb.mark_held(b.state());
        assert!(ca.clean_up(&store, &mut ra).await);
        assert!(cb.clean_up(&store, &mut rb).await);
        assert_eq!((ra.delivered.len(), rb.delivered.len()), (3, 3));
        assert_eq!(queued(&store).await, 0);

        a.sync(&store).await.unwrap();
        b.sync(&store).await.unwrap();
        assert_eq!(a.state(), b.state());
        assert_eq!(a.replica().dag().len(), 2, "two ops ...");
        shown_once(a.state(), &receipts); // ... one message per record
        // Both ops made the same claims: UIDs 1, 2, 3, nothing displaced.
        let uids: Vec<u32> = a.state().messages().map(|m| m.uid).collect();
        assert_eq!(uids, [1, 2, 3]);
    }

    /// Concurrent drains that saw different parts of the queue: the claims
    /// collide like concurrent appends, and a fix-up repairs them.
    #[tokio::test]
    async fn drains_of_different_batches_converge_after_a_fix_up() {
        let store = MemoryStore::new();
        let keys = UserKeys::generate();
        let mbox_key = SymmetricKey::random();
        let mut receipts = send(&store, &keys, 2).await;
        // Queue order (two deliveries in one millisecond sort at random).
        receipts.sort_by(|x, y| x.record.cmp(&y.record));
        let mut a = inbox(&store, &mbox_key, "a").await;
        let mut b = inbox(&store, &mbox_key, "b").await;
        let first = record_key(&user(), &receipts[0].record);
        // a lists from after the first record, b lists both.
        let mut ca = collect(&store, &user(), &keys, &auth(), Some(&first), BATCH)
            .await
            .unwrap();
        let mut cb = collect(&store, &user(), &keys, &auth(), None, BATCH)
            .await
            .unwrap();
        a.append(&store, ca.op(a.state()).unwrap()).await.unwrap();
        b.append(&store, cb.op(b.state()).unwrap()).await.unwrap();
        a.sync(&store).await.unwrap();
        b.sync(&store).await.unwrap();
        assert_eq!(a.state(), b.state());
        // Value 1 was claimed for record 1 (by b) and record 2 (by a):
        // invalid. Record 2 keeps b's claim 2; record 1 is displaced.
        assert_eq!(a.state().exists(), 1);
        assert_eq!(
            a.state().displaced(),
            vec![MessageId::delivered(&receipts[0].record)]
        );
        let fix = a.state().fix_up().unwrap();
        a.append(&store, fix).await.unwrap();
        b.sync(&store).await.unwrap();
        assert_eq!(a.state(), b.state());
        shown_once(a.state(), &receipts);
    }

    /// The real thing, twice at once: two full drains on a slow store.
    #[tokio::test]
    async fn two_concurrent_drains_deliver_every_record_once() {
        let store = MemoryStore::new();
        let keys = UserKeys::generate();
        let mbox_key = SymmetricKey::random();
        let receipts = send(&store, &keys, 7).await;
        let mut a = inbox(&store, &mbox_key, "a").await;
        let mut b = inbox(&store, &mbox_key, "b").await;
        store.set_latency(Duration::from_millis(1));
        let u = user();
        let auth = auth();
        let (ra, rb) = tokio::join!(
            drain(&store, &u, &keys, &auth, &mut a),
            drain(&store, &u, &keys, &auth, &mut b)
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert!(ra.delivered.len() + rb.delivered.len() >= 7);
        assert_eq!(queued(&store).await, 0);
        a.sync(&store).await.unwrap();
        b.sync(&store).await.unwrap();
        assert_eq!(a.state(), b.state());
        shown_once(a.state(), &receipts);
    }

    #[tokio::test]
    async fn unreadable_records_are_quarantined_and_the_rest_drained() {
        let store = MemoryStore::new();
        let keys = UserKeys::generate();
        let receipts = send(&store, &keys, 2).await;
        let prefix = layout::incoming_prefix(&user());
        // Garbage, a record for another user's key, and a good record
        // copied to another name: none may be delivered.
        let garbage = "0000000000000001-garbage";
        store
            .put(
                &format!("{prefix}{garbage}"),
                Bytes::from_static(b"\x00junk"),
            )
            .await
            .unwrap();
        let stranger = UserKeys::generate();
        let alien_store = MemoryStore::new();
        let alien_receipt = deliver(
            &alien_store,
            &user(),
            &stranger.public_key(),
            &auth(),
            MESSAGE,
            envelope(),
        )
        .await
        .unwrap();
        let alien_bytes = alien_store
            .get(&record_key(&user(), &alien_receipt.record))
            .await
            .unwrap();
        // Authenticated for its new name (as an instance of the cluster
        // would), but sealed to another key.
        let alien_key = format!("{prefix}0000000000000002-alien");
        let alien_box = &alien_bytes[RECORD_AUTH_OVERHEAD..];
        store
            .put(&alien_key, Bytes::from(auth().wrap(&alien_key, alien_box)))
            .await
            .unwrap();
        let good = store
            .get(&record_key(&user(), &receipts[0].record))
            .await
            .unwrap();
        store
            .put(&format!("{prefix}0000000000000003-moved"), good.clone())
            .await
            .unwrap();
        // Moved and given a valid MAC for its new name: the name sealed
        // inside still refuses it.
        let rewrapped = format!("{prefix}0000000000000004-rewrapped");
        let good_box = &good[RECORD_AUTH_OVERHEAD..];
        store
            .put(&rewrapped, Bytes::from(auth().wrap(&rewrapped, good_box)))
            .await
            .unwrap();

        let mut log = inbox(&store, &SymmetricKey::random(), "a").await;
        let report = drain(&store, &user(), &keys, &auth(), &mut log)
            .await
            .unwrap();
        assert_eq!(report.delivered.len(), 2);
        shown_once(log.state(), &receipts);
        let names: Vec<&str> = report.quarantined.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "0000000000000001-garbage",
                "0000000000000002-alien",
                "0000000000000003-moved",
                "0000000000000004-rewrapped"
            ]
        );
        assert!(report.quarantined.iter().all(|q| q.moved));
        let unauthenticated: Vec<bool> = report
            .quarantined
            .iter()
            .map(|q| q.unauthenticated)
            .collect();
        assert_eq!(unauthenticated, [true, false, true, false]);
        assert!(
            report.quarantined[3].reason.contains("another name"),
            "{:?}",
            report.quarantined[3]
        );
        assert_eq!(queued(&store).await, 0);
        for name in names {
            assert!(store.get(&layout::quarantine(&user(), name)).await.is_ok());
        }
    }

    /// What someone who can write the bucket (but holds no cluster secret)
    /// can plant: a body under a key of their choice and a record sealed
    /// to the user's public key, which is public in `delivery-key`.
    async fn plant_forgery(store: &MemoryStore, keys: &UserKeys, name: &str, header: &[u8]) {
        let body_key = BodyKey::random();
        let blob_id = layout::new_blob_id(now_ms());
        let blob = layout::blob(&user(), &blob_id);
        let phishing = b"Authentication-Results: mx.example.net; dkim=pass\r\n\
            From: Your Bank <security@bank.example>\r\n\
            Subject: Verify your account\r\n\r\nhttps://bank.example.evil/\r\n";
        store
            .put(
                &blob,
                Bytes::from(crate::crypto::seal_body(body_key.key(), &blob, phishing)),
            )
            .await
            .unwrap();
        let object = record_key(&user(), name);
        let record = Record {
            version: RECORD_VERSION,
            object: object.clone(),
            blob_id,
            body_key,
            size: phishing.len() as u64,
            envelope: DeliveryEnvelope {
                received_at: 4_102_444_800, // any INTERNALDATE: 2100
                ..envelope()
            },
            summary: summarize(phishing),
        };
        let sealed = seal_to(&keys.public_key(), &serde_json::to_vec(&record).unwrap());
        store
            .put(&object, Bytes::from([header, &sealed].concat()))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn records_planted_in_the_bucket_are_quarantined_never_shown() {
        let store = MemoryStore::new();
        let keys = UserKeys::generate();
        let receipts = send(&store, &keys, 1).await;
        let (before, before_unauth) = quarantined_records();
        // A bare sealed box (the format before records had a MAC), and
        // one with a made-up header.
        plant_forgery(&store, &keys, "0000000000000001-bare", b"").await;
        let fake_header = [&RECORD_MAGIC[..], &[0x5a; 32]].concat();
        plant_forgery(&store, &keys, "0000000000000002-header", &fake_header).await;

        let mut log = inbox(&store, &SymmetricKey::random(), "a").await;
        let report = drain(&store, &user(), &keys, &auth(), &mut log)
            .await
            .unwrap();
        shown_once(log.state(), &receipts);
        assert_eq!(log.state().exists(), 1, "only the genuine delivery");
        assert_eq!(report.quarantined.len(), 2);
        assert!(
            report
                .quarantined
                .iter()
                .all(|q| q.unauthenticated && q.moved)
        );
        assert!(
            report.quarantined[0].reason.contains("no MAC"),
            "{:?}",
            report.quarantined
        );
        assert!(
            report.quarantined[1].reason.contains("does not verify"),
            "{:?}",
            report.quarantined
        );
        assert_eq!(queued(&store).await, 0);
        let (after, after_unauth) = quarantined_records();
        assert!(after >= before + 2 && after_unauth >= before_unauth + 2);
        assert_eq!(
            quarantined(&store, &user()).await.unwrap(),
            ["0000000000000001-bare", "0000000000000002-header"]
        );
    }

    #[tokio::test]
    async fn records_from_before_authentication_can_be_requeued_by_an_operator() {
        let store = MemoryStore::new();
        let keys = UserKeys::generate();
        let receipts = send(&store, &keys, 1).await;
        // Strip the header: the record as an older version wrote it.
        let key = record_key(&user(), &receipts[0].record);
        let stored = store.get(&key).await.unwrap();
        store
            .put(&key, stored.slice(RECORD_AUTH_OVERHEAD..))
            .await
            .unwrap();
        let mut log = inbox(&store, &SymmetricKey::random(), "a").await;
        let report = drain(&store, &user(), &keys, &auth(), &mut log)
            .await
            .unwrap();
        assert_eq!(report.quarantined.len(), 1);
        assert_eq!(log.state().exists(), 0);

        requeue(&store, &user(), &auth(), &receipts[0].record)
            .await
            .unwrap();
        assert!(quarantined(&store, &user()).await.unwrap().is_empty());
        let report = drain(&store, &user(), &keys, &auth(), &mut log)
            .await
            .unwrap();
        assert!(report.quarantined.is_empty());
        shown_once(log.state(), &receipts);
        assert!(
            requeue(&store, &user(), &auth(), "nothing-here")
                .await
                .unwrap_err()
                .is_not_found()
        );
    }

    #[tokio::test]
    async fn records_of_a_newer_format_are_left_queued() {
        let store = MemoryStore::new();
        let keys = UserKeys::generate();
        let name = record_name(now_ms());
        let object = record_key(&user(), &name);
        let record = Record {
            version: RECORD_VERSION + 1,
            object: object.clone(),
            blob_id: "b".into(),
            body_key: BodyKey::random(),
            size: 1,
            envelope: envelope(),
            summary: summarize(b"\r\n"),
        };
        let sealed = auth().wrap(
            &object,
            &seal_to(&keys.public_key(), &serde_json::to_vec(&record).unwrap()),
        );
        store.put(&object, Bytes::from(sealed)).await.unwrap();
        let mut log = inbox(&store, &SymmetricKey::random(), "a").await;
        let report = drain(&store, &user(), &keys, &auth(), &mut log)
            .await
            .unwrap();
        assert_eq!(report.left_for_newer, 1);
        assert_eq!(queued(&store).await, 1);
        assert_eq!(log.state().exists(), 0);
    }

    #[tokio::test]
    async fn a_failure_after_the_op_put_does_not_duplicate_at_the_next_drain() {
        let flaky = Flaky::default();
        let keys = UserKeys::generate();
        let mbox_key = SymmetricKey::random();
        let receipts = send(&flaky, &keys, 2).await;
        let mut a = inbox(&flaky, &mbox_key, "a").await;
        flaky.fail_delete_many.store(true, Ordering::SeqCst);
        let report = drain(&flaky, &user(), &keys, &auth(), &mut a)
            .await
            .unwrap();
        assert_eq!((report.delivered.len(), report.not_deleted), (2, 2));
        assert_eq!(queued(&flaky).await, 2);
        flaky.fail_delete_many.store(false, Ordering::SeqCst);

        // The same instance: the state has them, so it only deletes.
        let report = drain(&flaky, &user(), &keys, &auth(), &mut a)
            .await
            .unwrap();
        assert!(report.delivered.is_empty());
        assert_eq!(report.already_drained, 2);
        assert_eq!(queued(&flaky).await, 0);
        assert_eq!(a.replica().dag().len(), 1);

        // Another instance that synced first does the same: crash after
        // the op PUT (no clean-up at all), then b drains.
        let more = send(&flaky, &keys, 1).await;
        let mut batch = collect(&flaky, &user(), &keys, &auth(), None, BATCH)
            .await
            .unwrap();
        a.append(&flaky, batch.op(a.state()).unwrap())
            .await
            .unwrap();
        drop(batch);
        let mut b = inbox(&flaky, &mbox_key, "b").await;
        let report = drain(&flaky, &user(), &keys, &auth(), &mut b)
            .await
            .unwrap();
        assert_eq!((report.delivered.len(), report.already_drained), (0, 1));
        assert_eq!(b.replica().dag().len(), 2);
        let all: Vec<DeliveryReceipt> = receipts.into_iter().chain(more).collect();
        shown_once(b.state(), &all);
    }

    // ---- The state's side of deduplication, without a store ----

    fn delivery(name: &str, blob: &str) -> Delivery {
        Delivery {
            id: name.into(),
            new: NewMessage {
                message: MessageRef {
                    blob_id: blob.into(),
                    body_key: BodyKey(SymmetricKey::from_bytes([7; 32])),
                    size: 10,
                    internal_date: 0,
                    summary: vec![],
                },
                flags: vec![],
            },
        }
    }

    struct Node {
        name: InstanceId,
        replica: Replica<MailboxState>,
    }

    impl Node {
        fn new(name: &str) -> Node {
            Node {
                name: InstanceId::new(name).unwrap(),
                replica: Replica::new(MailboxState::new(1)),
            }
        }
        fn write(&mut self, op: MailboxOp) -> (crate::log::OpId, Envelope<MailboxOp>) {
            let envelope = self.replica.prepare(op, self.name.clone(), 1_000);
            let (id, _) = envelope.encode().unwrap();
            self.replica.insert(id, envelope.clone());
            (id, envelope)
        }
        fn see(&mut self, op: &(crate::log::OpId, Envelope<MailboxOp>)) {
            self.replica.insert(op.0, op.1.clone());
        }
        fn state(&self) -> &MailboxState {
            self.replica.state()
        }
    }

    #[test]
    fn a_delivery_placed_after_it_was_seen_moves_without_a_phantom() {
        // Drained again by an instance that had seen the first drain (drain
        // itself would skip it; the state must cope anyway).
        let mut a = Node::new("a");
        let first = a.write(MailboxOp::Deliver(vec![delivery("r1", "b1")]));
        let modseq = a.state().highest_modseq();
        let again = a.write(MailboxOp::Deliver(vec![delivery("r1", "b1")]));
        let id = MessageId::delivered("r1");
        assert_eq!(a.state().exists(), 1);
        assert_eq!(a.state().uid_of(&id), Some(2));
        assert!(a.state().displaced().is_empty());
        assert_eq!(a.state().vanished_since(modseq), vec![1]);
        assert_eq!(a.state().changed_since(modseq), vec![2]);
        // Reverse order gives the same state.
        let mut b = Node::new("b");
        b.see(&again);
        b.see(&first);
        assert_eq!(a.state(), b.state());
    }

    #[test]
    fn an_expunged_delivery_stays_expunged_when_drained_again_late() {
        let mut a = Node::new("a");
        let mut late = Node::new("late");
        let first = a.write(MailboxOp::Deliver(vec![delivery("r1", "b1")]));
        let id = MessageId::delivered("r1");
        a.write(MailboxOp::Expunge(vec![id]));
        let dup = late.write(MailboxOp::Deliver(vec![delivery("r1", "b1")]));
        a.see(&dup);
        late.see(&first);
        assert_eq!(a.state().exists(), 0);
        assert!(a.state().displaced().is_empty());
        assert!(a.state().has_delivery("r1"));
    }

    #[test]
    fn differing_descriptions_of_one_delivery_resolve_the_same_everywhere() {
        let mut a = Node::new("a");
        let mut b = Node::new("b");
        let op_a = a.write(MailboxOp::Deliver(vec![delivery("r1", "zzz")]));
        let op_b = b.write(MailboxOp::Deliver(vec![delivery("r1", "aaa")]));
        a.see(&op_b);
        b.see(&op_a);
        assert_eq!(a.state(), b.state());
        assert_eq!(a.state().message(1).unwrap().message.blob_id(), "aaa");
        assert_eq!(a.state().exists(), 1);
    }

    #[tokio::test]
    async fn deliver_and_drain_on_garage() {
        let Some(settings) = S3Settings::for_tests("the Garage deliver/drain test") else {
            return;
        };
        let store = S3Store::new(settings).unwrap();
        // A fresh random user, so runs never see each other's objects.
        let user = UserId::parse(&format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        ))
        .unwrap();
        let keys = UserKeys::generate();
        let mbox_key = SymmetricKey::random();
        let mut receipts = Vec::new();
        for _ in 0..3 {
            receipts.push(
                deliver(
                    &store,
                    &user,
                    &keys.public_key(),
                    &auth(),
                    MESSAGE,
                    envelope(),
                )
                .await
                .unwrap(),
            );
        }
        let open = |who: &'static str| {
            let (store, key, prefix) = (
                &store,
                mbox_key.clone(),
                format!("{}mbox/INBOX/", layout::user_prefix(&user)),
            );
            async move {
                StoredLog::open(
                    store,
                    key,
                    prefix,
                    InstanceId::new(who).unwrap(),
                    LogTuning::default(),
                    || MailboxState::new(1),
                )
                .await
                .unwrap()
            }
        };
        let (mut a, mut b) = (open("a").await, open("b").await);
        let auth = auth();
        let (ra, rb) = tokio::join!(
            drain(&store, &user, &keys, &auth, &mut a),
            drain(&store, &user, &keys, &auth, &mut b)
        );
        ra.unwrap();
        rb.unwrap();
        a.sync(&store).await.unwrap();
        b.sync(&store).await.unwrap();
        assert_eq!(a.state(), b.state());
        let fix = a.state().fix_up();
        if let Some(fix) = fix {
            a.append(&store, fix).await.unwrap();
        }
        assert_eq!(a.state().exists(), 3);
        for r in &receipts {
            assert!(a.state().uid_of(&MessageId::delivered(&r.record)).is_some());
        }
        let incoming = list_all(&store, &layout::incoming_prefix(&user), None)
            .await
            .unwrap();
        assert!(incoming.is_empty());
        let all: Vec<String> = list_all(&store, &layout::user_prefix(&user), None)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        store.delete_many(&all).await.unwrap();
    }
}
