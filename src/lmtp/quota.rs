//! How full a mailbox is, known without the user's keys (LMTP never holds
//! them), for the quota check at delivery (doc/lmtp.md, "Quota").
//!
//! **What counts.** A user's usage is the stored size of their message
//! bodies: the sum of the sizes of the objects under `users/<u>/blob/`
//! (compressed and sealed, as the store bills them; RFC 9208's STORAGE is
//! likewise a "physical space estimate"). Object sizes are visible to
//! whoever can list the bucket, so counting them needs no key and reveals
//! nothing new to the operator. Metadata (ops, snapshots, records) is not
//! counted. A message about to be delivered is counted at its full,
//! uncompressed size: the check errs towards refusing the last message
//! rather than overfilling.
//!
//! **Messages.** A message-count limit (RFC 9208 §5.2's MESSAGE) is
//! checked on the same listing: the usage object also counts the bodies.
//! A body copied to several mailboxes is stored once and counts once
//! here (IMAP counts each copy), so, as for bytes, this figure is at most
//! IMAP's and LMTP may take IMAP's figure a little over the limit.
//!
//! **How it is known cheaply.** Listing every body on each delivery would
//! cost one LIST page per thousand messages. Instead a small plaintext
//! object `users/<u>/usage` records `bytes`, the total size of the bodies
//! whose id sorts at or before `through`. Blob ids begin with their
//! creation time ([`layout::new_blob_id`]), so the bodies written since
//! are exactly those listed after `through`: a delivery reads the usage
//! object and lists the tail (one GET and usually one LIST page).
//!
//! - The usage object is written by whoever counted: a full recount, or a
//!   delivery that found the tail long ([`TAIL_REFRESH`]). It only ever
//!   covers bodies older than [`SETTLE`], so a body whose PUT was still in
//!   flight during a count (ids are chosen before the PUT) is counted
//!   later in the tail rather than never.
//! - Deleted bodies (expunged mail, collected after the GC grace period)
//!   make the figure too high, never too low. So before refusing a
//!   delivery, LMTP recounts from a full listing and writes the fresh
//!   figure: a mailbox is declared full only on a count made just now.
//! - Concurrent writers (two LMTP instances) each write a figure that was
//!   true of what they listed; the last one wins and is still consistent.
//! - **A missing figure never blocks delivery**: if counting fails, the
//!   message is accepted (and the failure logged); a missing or unreadable
//!   usage object means a recount.

use serde::{Deserialize, Serialize};

pub use crate::directory::QuotaLimits as Limits;
use crate::store::layout::{self, UserId};
use crate::store::{ObjectStore, StoreError, list_all};

/// Bodies younger than this (by the time in their id) are left out of the
/// usage object and always listed: their PUT may not be visible yet.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(300);

/// A delivery that lists more than this many bodies after the usage
/// object's `through` writes a fresh usage object.
pub const TAIL_REFRESH: usize = 500;

/// Format version of the usage object (2: `messages` added; an object
/// of version 1 is recounted).
const VERSION: u32 = 2;

/// `users/<u>/usage`.
pub fn usage_key(u: &UserId) -> String {
    format!("{}usage", layout::user_prefix(u))
}

fn blob_prefix(u: &UserId) -> String {
    format!("{}blob/", layout::user_prefix(u))
}

/// The usage object: `bytes` is the size and `messages` the number of
/// the bodies whose key sorts at or before `through` (empty: none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    bytes: u64,
    messages: u64,
    through: String,
}

/// A usage figure and whether it comes from a full count made just now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    /// Bodies stored (a body shared by copies counts once).
    pub messages: u64,
    pub recounted: bool,
}

/// The user's usage from the usage object and the bodies written since
/// (recounting if there is no usable object).
pub async fn usage(store: &dyn ObjectStore, u: &UserId, now_ms: u64) -> Result<Usage, StoreError> {
    let snapshot = match store.get(&usage_key(u)).await {
        Ok(bytes) => match serde_json::from_slice::<Snapshot>(&bytes) {
            Ok(s) if s.version == VERSION => Some(s),
            _ => {
                tracing::warn!(user = ?u, "unreadable usage object; recounting");
                None
            }
        },
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e),
    };
    let Some(snapshot) = snapshot else {
        return recount(store, u, now_ms).await;
    };
    let prefix = blob_prefix(u);
    let after = (!snapshot.through.is_empty()).then_some(snapshot.through.as_str());
    let tail = list_all(store, &prefix, after).await?;
    let tail_bytes: u64 = tail.iter().map(|o| o.size).sum();
    if tail.len() > TAIL_REFRESH {
        let fresh = settled(
            (snapshot.bytes, snapshot.messages),
            &snapshot.through,
            tail.iter().map(|o| (o.key.as_str(), o.size)),
            &prefix,
            now_ms,
        );
        write(store, u, &fresh).await;
    }
    Ok(Usage {
        bytes: snapshot.bytes + tail_bytes,
        messages: snapshot.messages + tail.len() as u64,
        recounted: false,
    })
}

/// Counts every body now, writes the usage object, returns the total.
pub async fn recount(
    store: &dyn ObjectStore,
    u: &UserId,
    now_ms: u64,
) -> Result<Usage, StoreError> {
    let prefix = blob_prefix(u);
    let all = list_all(store, &prefix, None).await?;
    let total = all.iter().map(|o| o.size).sum();
    let fresh = settled(
        (0, 0),
        "",
        all.iter().map(|o| (o.key.as_str(), o.size)),
        &prefix,
        now_ms,
    );
    write(store, u, &fresh).await;
    Ok(Usage {
        bytes: total,
        messages: all.len() as u64,
        recounted: true,
    })
}

/// Extends a snapshot with the listed bodies (in key order) that are
/// older than [`SETTLE`]; stops at the first younger one, since ids sort
/// by time.
fn settled<'a>(
    (mut bytes, mut messages): (u64, u64),
    through: &str,
    listed: impl Iterator<Item = (&'a str, u64)>,
    prefix: &str,
    now_ms: u64,
) -> Snapshot {
    let floor = now_ms.saturating_sub(SETTLE.as_millis() as u64);
    let mut through = through.to_owned();
    for (key, size) in listed {
        let id = key.strip_prefix(prefix).unwrap_or(key);
        match layout::blob_id_time(id) {
            Some(t) if t < floor => {}
            // A body with a foreign name has no time: count it as settled
            // only if it does not sort after a young one (it cannot, here).
            None => {}
            Some(_) => break,
        }
        bytes += size;
        messages += 1;
        through = key.to_owned();
    }
    Snapshot {
        version: VERSION,
        bytes,
        messages,
        through,
    }
}

/// Writes the usage object; a failure only costs a longer tail next time.
async fn write(store: &dyn ObjectStore, u: &UserId, s: &Snapshot) {
    let Ok(body) = serde_json::to_vec(s) else {
        return;
    };
    if let Err(e) = store.put(&usage_key(u), body.into()).await {
        tracing::warn!(user = ?u, error = %e, "could not write the usage object");
    }
}

/// Whether one more message of `incoming` bytes fits under `limits`:
/// `None` when usage cannot be known (then the caller delivers). A figure
/// that says "full" is checked by a recount unless it is one already.
pub async fn fits(
    store: &dyn ObjectStore,
    u: &UserId,
    limits: Limits,
    incoming: u64,
    known: Option<Usage>,
    now_ms: u64,
) -> (Option<bool>, Option<Usage>) {
    let mut current = match known {
        Some(k) => k,
        None => match usage(store, u, now_ms).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(user = ?u, error = %e, "quota: usage unknown; delivering");
                return (None, None);
            }
        },
    };
    if limits.allow(current.bytes, current.messages, incoming, 1) {
        return (Some(true), Some(current));
    }
    if !current.recounted {
        current = match recount(store, u, now_ms).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(user = ?u, error = %e, "quota: recount failed; delivering");
                return (None, None);
            }
        };
    }
    (
        Some(limits.allow(current.bytes, current.messages, incoming, 1)),
        Some(current),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use bytes::Bytes;

    const NOW: u64 = 1_800_000_000_000;
    const HOUR: u64 = 3_600_000;

    fn user() -> UserId {
        crate::crypto::user_id(b"secret", "alice")
    }

    async fn body(store: &MemoryStore, u: &UserId, at_ms: u64, size: usize) -> String {
        let key = layout::blob(u, &layout::new_blob_id(at_ms));
        store.put(&key, Bytes::from(vec![0u8; size])).await.unwrap();
        key
    }

    #[tokio::test]
    async fn no_usage_object_means_a_recount_that_writes_one() {
        let store = MemoryStore::new();
        let u = user();
        body(&store, &u, NOW - 2 * HOUR, 100).await;
        body(&store, &u, NOW - HOUR, 50).await;
        body(&store, &u, NOW - 1000, 7).await; // not settled
        let usage = usage(&store, &u, NOW).await.unwrap();
        assert_eq!(
            usage,
            Usage {
                bytes: 157,
                messages: 3,
                recounted: true
            }
        );
        let s: Snapshot =
            serde_json::from_slice(&store.get(&usage_key(&u)).await.unwrap()).unwrap();
        assert_eq!((s.bytes, s.messages), (150, 2));
        // The young body is in the tail next time; nothing is counted twice.
        let again = super::usage(&store, &u, NOW).await.unwrap();
        assert_eq!(
            again,
            Usage {
                bytes: 157,
                messages: 3,
                recounted: false
            }
        );
    }

    #[tokio::test]
    async fn new_bodies_are_counted_from_the_tail_with_one_list() {
        let store = MemoryStore::new();
        let u = user();
        body(&store, &u, NOW - 2 * HOUR, 100).await;
        recount(&store, &u, NOW).await.unwrap();
        body(&store, &u, NOW + 10, 30).await;
        let calls = store.calls();
        assert_eq!(usage(&store, &u, NOW + 20).await.unwrap().bytes, 130);
        assert_eq!(store.calls() - calls, 2, "one GET and one LIST");
    }

    #[tokio::test]
    async fn a_stale_high_figure_is_recounted_before_refusing() {
        let store = MemoryStore::new();
        let u = user();
        let old = body(&store, &u, NOW - 2 * HOUR, 900).await;
        recount(&store, &u, NOW).await.unwrap();
        // The body is collected after an expunge: the object still says 900.
        store.delete(&old).await.unwrap();
        let (fits_now, usage) = fits(&store, &u, bytes(1000), 500, None, NOW).await;
        assert_eq!(fits_now, Some(true));
        assert_eq!(
            usage,
            Some(Usage {
                bytes: 0,
                messages: 0,
                recounted: true
            })
        );
        // Really full: refused, on a fresh count.
        body(&store, &u, NOW - HOUR, 800).await;
        let (fits_now, usage) = fits(&store, &u, bytes(1000), 500, None, NOW).await;
        assert_eq!(fits_now, Some(false));
        assert_eq!(usage.map(|u| u.bytes), Some(800));
    }

    #[tokio::test]
    async fn an_unknown_usage_never_blocks() {
        let store = MemoryStore::new();
        let u = user();
        store.set_offline(true);
        assert_eq!(
            fits(&store, &u, bytes(10), 500, None, NOW).await,
            (None, None)
        );
        store.set_offline(false);
        store
            .put(&usage_key(&u), Bytes::from_static(b"not json"))
            .await
            .unwrap();
        body(&store, &u, NOW - HOUR, 5).await;
        assert_eq!(usage(&store, &u, NOW).await.unwrap().bytes, 5);
    }

    fn bytes(limit: u64) -> Limits {
        Limits {
            bytes: Some(limit),
            messages: None,
        }
    }

    #[tokio::test]
    async fn the_message_limit_counts_bodies_and_is_recounted_before_refusing() {
        let store = MemoryStore::new();
        let u = user();
        let limits = Limits {
            bytes: None,
            messages: Some(3),
        };
        let first = body(&store, &u, NOW - 2 * HOUR, 10).await;
        body(&store, &u, NOW - HOUR, 10).await;
        recount(&store, &u, NOW).await.unwrap();
        // Two stored (one in the usage object's tail): a third fits.
        body(&store, &u, NOW + 10, 10).await;
        let (ok, usage) = fits(&store, &u, limits, 1 << 30, None, NOW + 20).await;
        assert_eq!((ok, usage.map(|u| u.messages)), (Some(false), Some(3)));
        // The first is collected: the stale object says 2 + tail 1 = 3,
        // the recount says 2, so one more fits.
        store.delete(&first).await.unwrap();
        let (ok, usage) = fits(&store, &u, limits, 1 << 30, None, NOW + 20).await;
        assert_eq!(ok, Some(true));
        assert_eq!(usage.map(|u| (u.messages, u.recounted)), Some((2, true)));
        // Both limits: each must hold.
        let both = Limits {
            bytes: Some(25),
            messages: Some(3),
        };
        let (ok, _) = fits(&store, &u, both, 6, None, NOW + 20).await;
        assert_eq!(ok, Some(false), "20 + 6 > 25 bytes");
        let (ok, _) = fits(&store, &u, both, 5, None, NOW + 20).await;
        assert_eq!(ok, Some(true));
    }

    #[tokio::test]
    async fn a_usage_object_of_version_1_is_recounted() {
        let store = MemoryStore::new();
        let u = user();
        body(&store, &u, NOW - HOUR, 10).await;
        store
            .put(
                &usage_key(&u),
                Bytes::from_static(br#"{"version":1,"bytes":10,"through":"zzz"}"#),
            )
            .await
            .unwrap();
        let usage = usage(&store, &u, NOW).await.unwrap();
        assert_eq!((usage.messages, usage.recounted), (1, true));
    }

    #[tokio::test]
    async fn a_long_tail_refreshes_the_usage_object() {
        let store = MemoryStore::new();
        let u = user();
        recount(&store, &u, NOW).await.unwrap();
        for i in 0..(TAIL_REFRESH as u64 + 1) {
            body(&store, &u, NOW - HOUR + i, 1).await;
        }
        assert_eq!(
            usage(&store, &u, NOW).await.unwrap().bytes,
            TAIL_REFRESH as u64 + 1
        );
        let s: Snapshot =
            serde_json::from_slice(&store.get(&usage_key(&u)).await.unwrap()).unwrap();
        assert_eq!(s.bytes, TAIL_REFRESH as u64 + 1);
    }
}
