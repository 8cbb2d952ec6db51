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

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};

use super::{Account, AccountError, Folder, Mailbox};

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
}

impl UsageBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Figure>> {
        self.figures.lock().unwrap_or_else(|e| e.into_inner())
    }
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
    /// The usage of all the user's mailboxes (see the module doc).
    pub async fn usage(&self, how: Count) -> Result<Usage, AccountError> {
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
