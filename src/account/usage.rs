//! What a user's mailboxes hold, kept per account for QUOTA (RFC 9208
//! §5.1 STORAGE, §5.2 MESSAGE) so that a GETQUOTAROOT or the check before
//! an APPEND does not bring every mailbox up to date.
//!
//! - Each mailbox's figure (the RFC822.SIZE sum and the message count of
//!   its state) is kept in a [`UsageBook`] with the mailbox's change
//!   counter (`Mailbox::watch`) at the time it was counted. A mailbox
//!   open on this instance changes only through its own writes and syncs
//!   (this instance's sessions at once, other instances' through the
//!   poller or the next command that syncs it), each of which bumps the
//!   counter: its figure is counted again from the in-memory state only
//!   then, with no store call.
//! - A mailbox that is not open is not synced by the poller, so another
//!   instance may change it unseen: its figure is trusted for
//!   [`UNOPENED_FOR`], then the mailbox is opened and synced again (and
//!   stays open a while, see `Account::recent`).
//! - The mailbox list is synced at every count (a mailbox created, deleted
//!   or renamed elsewhere), and delivered mail is drained into INBOX first
//!   unless another instance holds the drain.
//! - [`Count::Fresh`] syncs every mailbox, as a refusal needs: like LMTP,
//!   a user is declared over quota only on a count made just now.
//!
//! So on one instance the figure is exact after every command; another
//! instance's change shows within a poll interval for the mailboxes open
//! here and within [`UNOPENED_FOR`] for the others.
//!
//! **Published for LMTP.** LMTP holds no keys and cannot see the
//! mailboxes, so each count is also written, in plaintext, to
//! `users/<u>/usage-imap` ([`Published`]): the figure and `since_ms`, a
//! time before the count began (`AccountConfig::publish_margin` before
//! it, [`PUBLISH_MARGIN`] by default). Every body
//! written after the count has a blob id whose time is at or after
//! `since_ms` (ids begin with their creation time), so LMTP's estimate is
//! this figure plus the bodies it lists from `since_ms` on
//! (`crate::lmtp::quota`). A body in the figure and in that tail (written
//! within the margin) counts twice: the estimate errs high by at most the
//! margin's deliveries, never low by a body whose PUT was in flight or
//! whose writer's clock was behind by less than the margin. Mail still
//! waiting in `incoming/` (its drain held by another instance, or
//! lagging) is in no mailbox: `since_ms` then goes back to before the
//! oldest waiting record, so its bodies are in the tail. A COPY adds
//! messages without new bodies, so it publishes too, like EXPUNGE, CLOSE
//! and DELETE (`imap::cmd::quota::changed`). Counts are
//! written when the figure changes or the last one is older than
//! [`REPUBLISH_AFTER`], so a client asking GETQUOTA on every command costs
//! no PUT each time. Two instances writing at once each write a whole
//! object that was true when counted: the last PUT wins, and a figure
//! that is one command old is put right by the next count. A failed write
//! is logged and costs nothing else (LMTP falls back to counting bodies).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::{Account, AccountError, Folder, Mailbox};
use crate::log::now_ms;
use crate::store::layout::{self, UserId};

/// How long before a count began its published `since_ms` is, by
/// default (`AccountConfig::publish_margin`): bodies written that long
/// before are counted again in LMTP's tail. As LMTP's own `SETTLE`, it
/// covers a PUT in flight and writers' clocks a little behind.
pub const PUBLISH_MARGIN: Duration = Duration::from_secs(300);

/// An unchanged figure is published again after this long (so that its
/// `since_ms` moves on and LMTP's tail stays short).
pub const REPUBLISH_AFTER: Duration = Duration::from_secs(60);

/// Format version of [`Published`]; an object of another version is not
/// used (LMTP then counts bodies, as without one).
pub const PUBLISHED_VERSION: u32 = 1;

/// `users/<u>/usage-imap`: the usage IMAP last counted (see the module
/// doc). Its own object, not a field of LMTP's `users/<u>/usage`: each
/// object has one kind of writer, so neither overwrites the other's
/// figure with an old copy, and instances that know only LMTP's object
/// read it as before.
pub fn published_key(u: &UserId) -> String {
    format!("{}usage-imap", layout::user_prefix(u))
}

/// The published figure: `bytes` (sum of RFC822.SIZE, RFC 9208 §5.1
/// STORAGE in octets) and `messages` (§5.2 MESSAGE) of all mailboxes,
/// counted after `since_ms` (ms since the epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub version: u32,
    pub bytes: u64,
    pub messages: u64,
    pub since_ms: u64,
}

impl Published {
    /// The figure in `bytes` read from the store; `None` if it is not one
    /// of this version.
    pub fn parse(bytes: &[u8]) -> Option<Published> {
        serde_json::from_slice::<Published>(bytes)
            .ok()
            .filter(|p| p.version == PUBLISHED_VERSION)
    }
}

/// How long the figure of a mailbox that is not open is used before the
/// mailbox is synced again.
pub const UNOPENED_FOR: Duration = Duration::from_secs(30);

/// Mailboxes synced at once when counting.
const PARALLEL: usize = 8;

/// What some mailboxes hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Sum of RFC822.SIZE.
    pub bytes: u64,
    pub messages: u64,
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, other: Usage) -> Usage {
        Usage {
            bytes: self.bytes + other.bytes,
            messages: self.messages + other.messages,
        }
    }
}

/// How current a count must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    /// From the kept figures (see the module doc).
    Kept,
    /// Every mailbox synced now.
    Fresh,
}

/// One mailbox's figure and when it was counted.
#[derive(Clone, Copy, Debug)]
struct Figure {
    usage: Usage,
    /// The mailbox's change counter when counted.
    version: u64,
    counted: Instant,
}

/// The figures of an account's mailboxes, by mailbox id; one entry per
/// mailbox shown in the list (entries of mailboxes gone are dropped at
/// each count).
#[derive(Debug, Default)]
pub struct UsageBook {
    figures: Mutex<HashMap<String, Figure>>,
    /// The figure last published and when.
    published: Mutex<Option<(Usage, Instant)>>,
}

impl UsageBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Figure>> {
        self.figures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The delivery time (ms) a record key `users/<u>/incoming/<ms:016x>-...`
/// starts with.
fn delivered_at(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?;
    u64::from_str_radix(name.get(..16)?, 16).ok()
}

/// Counts `mailbox` from its state, with the change counter read first
/// (a change in between makes the figure look older, never newer).
async fn count(mailbox: &Mailbox) -> Figure {
    let version = *mailbox.watch().borrow();
    let usage = mailbox
        .read(|s| Usage {
            bytes: s.messages().map(|m| m.message.size).sum(),
            messages: u64::from(s.exists()),
        })
        .await;
    Figure {
        usage,
        version,
        counted: Instant::now(),
    }
}

impl Account {
    /// The usage of all the user's mailboxes, published for LMTP (see the
    /// module doc).
    pub async fn usage(&self, how: Count) -> Result<Usage, AccountError> {
        let began = now_ms();
        // Mail still waiting in `incoming/` (another instance holds the
        // drain, or it lags) is in no mailbox, so not in this count: the
        // published figure then covers only bodies older than the oldest
        // waiting record, and LMTP's tail counts the rest. Listed before
        // counting, so a record drained meanwhile is covered either way.
        let waiting = self
            .store
            .list(&layout::incoming_prefix(&self.user), None, 1)
            .await;
        let total = self.count_usage(how).await?;
        let from = match waiting {
            Ok(page) => match page.objects.first() {
                None => Some(began),
                Some(oldest) => Some(delivered_at(&oldest.key).unwrap_or(0).min(began)),
            },
            Err(e) => {
                tracing::debug!(error = %e, "incoming/ not listed: usage not published");
                None
            }
        };
        if let Some(from) = from {
            self.publish_usage(total, from).await;
        }
        Ok(total)
    }

    /// Writes `usage`, counted from `began` on, to [`published_key`]
    /// unless the same figure was written lately.
    async fn publish_usage(&self, usage: Usage, began: u64) {
        let due = |last: &Option<(Usage, Instant)>| match last {
            Some((u, at)) => *u != usage || at.elapsed() >= REPUBLISH_AFTER,
            None => true,
        };
        if !due(&self
            .usage
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner()))
        {
            return;
        }
        let published = Published {
            version: PUBLISHED_VERSION,
            bytes: usage.bytes,
            messages: usage.messages,
            since_ms: began.saturating_sub(self.config.publish_margin.as_millis() as u64),
        };
        let Ok(body) = serde_json::to_vec(&published) else {
            return;
        };
        match self
            .store
            .put(&published_key(&self.user), body.into())
            .await
        {
            Ok(()) => {
                *self
                    .usage
                    .published
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some((usage, Instant::now()));
            }
            Err(e) => tracing::warn!(error = %e, "could not publish the usage figure for LMTP"),
        }
    }

    async fn count_usage(&self, how: Count) -> Result<Usage, AccountError> {
        self.refresh(None).await?;
        let folders = self.folders().await?;
        folders.sync().await?;
        let shown = folders.all().await;
        let open: HashMap<String, std::sync::Arc<Mailbox>> = self
            .open_mailboxes()
            .into_iter()
            .map(|m| (m.id().to_owned(), m))
            .collect();
        let mut total = Usage::default();
        let mut stale: Vec<Folder> = Vec::new();
        for folder in shown.iter() {
            let id = folder.id.to_hex();
            let kept = self.usage.lock().get(&id).copied();
            if how == Count::Fresh {
                stale.push(folder.clone());
                continue;
            }
            match (open.get(&id), kept) {
                (Some(mailbox), Some(f)) if f.version == *mailbox.watch().borrow() => {
                    total = total + f.usage;
                }
                (Some(mailbox), _) => {
                    let f = count(mailbox).await;
                    self.usage.lock().insert(id, f);
                    total = total + f.usage;
                }
                (None, Some(f)) if f.counted.elapsed() < UNOPENED_FOR => total = total + f.usage,
                (None, _) => stale.push(folder.clone()),
            }
        }
        let synced: Vec<(String, Figure)> = futures::stream::iter(stale)
            .map(|folder| async move {
                let id = folder.id.to_hex();
                let mailbox = self.mailbox(&id, folder.uid_validity).await?;
                mailbox.sync().await?;
                Ok::<_, AccountError>((id, count(&mailbox).await))
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        let mut book = self.usage.lock();
        for (id, f) in synced {
            total = total + f.usage;
            book.insert(id, f);
        }
        let ids: std::collections::HashSet<String> = shown.iter().map(|f| f.id.to_hex()).collect();
        book.retain(|id, _| ids.contains(id));
        Ok(total)
    }
}
