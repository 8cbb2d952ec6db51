//! How full a mailbox is, known without the user's keys (LMTP never holds
//! them), for the quota check at delivery (doc/lmtp.md, "Quota").
//!
//! Two figures, and the rule that joins them:
//!
//! 1. **IMAP's**, when it published one: the sessions that hold the
//!    user's keys count what the mailboxes hold (RFC 9208 STORAGE, the
//!    RFC822.SIZE of each message copy, and MESSAGE) and write it with a
//!    time `since_ms` to `users/<u>/usage-imap`
//!    ([`crate::account::usage::Published`]). LMTP adds the bodies written
//!    since (blob ids begin with their creation time, so they are the ones
//!    listed after `since_ms`): [`imap_usage`]. This is what GETQUOTA shows;
//!    bodies of deleted mailboxes (kept for recovery) and of expunged mail
//!    not yet collected are not in it.
//! 2. **The stored bodies'**: the sum of the sizes of the objects under
//!    `users/<u>/blob/` (compressed and sealed, as the store bills them)
//!    and their number. Object sizes are visible to whoever can list the
//!    bucket, so counting them needs no key and reveals nothing new. This
//!    counts what IMAP no longer shows (above) and a body shared by copies
//!    once (IMAP: each copy).
//!
//! **The rule** ([`fits`]): a delivery is refused only when both say it
//! does not fit, each counted just now (a fresh listing of the bodies;
//! IMAP's figure as last published plus a fresh tail). So:
//! - a user who makes room over IMAP (DELETE, EXPUNGE: IMAP publishes
//!   after those, and at GETQUOTA, APPEND and COPY) is not refused for
//!   bodies they can no longer see or remove;
//! - a stale or forged IMAP figure can refuse nothing that counting bodies
//!   alone would accept (the behaviour before IMAP published anything),
//!   and the user's next count over IMAP replaces it;
//! - with no IMAP figure (the user never used IMAP since), or one that
//!   cannot be read, the bodies decide, as before.
//!
//! **Units.** Bytes are octets in both figures, but not the same octets:
//! IMAP's figure is RFC822.SIZE, the tail after it and the bodies' count
//! are stored sizes (compressed: at most a little over RFC822.SIZE for a
//! small message, well under it for text). The message being delivered
//! counts at its full size as it will be stored (trace headers included),
//! its RFC822.SIZE. Messages: IMAP counts copies, the tail bodies; a
//! delivery adds one. So LMTP may let IMAP's figure pass the limit by the
//! compression of the bodies delivered since IMAP last counted; RFC 9208
//! §5 allows usage above the limit, and the next IMAP count shows it.
//!
//! **How the bodies are counted cheaply.** Listing every body on each
//! delivery would cost one LIST page per thousand messages. Instead a
//! small plaintext object `users/<u>/usage` records `bytes`, the total
//! size of the bodies whose id sorts at or before `through`. The bodies
//! written since are exactly those listed after `through`: a delivery
//! reads the usage object and lists the tail (one GET and usually one LIST
//! page). IMAP's figure is read only when this one says "full".
//!
//! - The usage object is written by whoever counted: a full recount, or a
//!   delivery that found the tail long ([`TAIL_REFRESH`]). It only ever
//!   covers bodies older than [`SETTLE`], so a body whose PUT was still in
//!   flight during a count (ids are chosen before the PUT) is counted
//!   later in the tail rather than never.
//! - Deleted bodies (collected after the GC grace period) make the figure
//!   too high, never too low: before refusing, LMTP recounts from a full
//!   listing and writes the fresh figure.
//! - Concurrent writers (two LMTP instances) each write a figure that was
//!   true of what they listed; the last one wins and is still consistent.
//!   LMTP never writes IMAP's object nor IMAP LMTP's, so neither puts back
//!   an old copy of the other's figure; instances that predate IMAP's
//!   object read `usage` (still version 2) as before and ignore the other.
//! - **A missing figure never blocks delivery**: if counting or reading
//!   IMAP's figure fails, the message is accepted (and the failure
//!   logged); a missing or unreadable usage object means a recount.

use serde::{Deserialize, Serialize};

use crate::account::usage::{Published, published_key};
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

/// Where a usage figure comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    /// The usage object and the bodies listed after it.
    Kept,
    /// All the bodies, listed just now.
    Recounted,
    /// The figure IMAP last counted and the bodies written since.
    Imap,
}

/// A usage figure and where it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    /// Bodies stored (a body shared by copies counts once), or, from
    /// IMAP's figure, messages in the mailboxes (each copy counts).
    pub messages: u64,
    pub basis: Basis,
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
        basis: Basis::Kept,
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
        basis: Basis::Recounted,
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

/// IMAP's published figure (`crate::account::usage::Published`) plus
/// the bodies whose id is at or after its `since_ms`; `None` when there
/// is no usable figure.
pub async fn imap_usage(store: &dyn ObjectStore, u: &UserId) -> Result<Option<Usage>, StoreError> {
    let published = match store.get(&published_key(u)).await {
        Ok(bytes) => match Published::parse(&bytes) {
            Some(p) => p,
            None => {
                tracing::warn!(user = ?u, "unreadable IMAP usage figure; not used");
                return Ok(None);
            }
        },
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    let prefix = blob_prefix(u);
    // Every id of time `since_ms` or later sorts after this key.
    let after = format!("{prefix}{:012x}", published.since_ms);
    let tail = list_all(store, &prefix, Some(&after)).await?;
    Ok(Some(Usage {
        bytes: published.bytes + tail.iter().map(|o| o.size).sum::<u64>(),
        messages: published.messages + tail.len() as u64,
        basis: Basis::Imap,
    }))
}

/// Whether one more message of `incoming` bytes fits under `limits`:
/// `None` when usage cannot be known (then the caller delivers). `known`
/// is a figure found earlier in the transaction (at RCPT).
///
/// The rule: a delivery is refused only when **both** a count of the
/// stored bodies made just now and IMAP's figure plus the bodies written
/// since (when IMAP published one) say it does not fit. The kept figure
/// decides when it fits. So LMTP refuses nothing that IMAP's GETQUOTA,
/// counted since, shows room for (bodies of deleted mailboxes and
/// expunged mail not yet collected are in the first count only), and no
/// stale or forged IMAP figure refuses more than counting bodies alone
/// would, as before IMAP published anything.
pub async fn fits(
    store: &dyn ObjectStore,
    u: &UserId,
    limits: Limits,
    incoming: u64,
    known: Option<Usage>,
    now_ms: u64,
) -> (Option<bool>, Option<Usage>) {
    match decide(store, u, limits, incoming, known, now_ms).await {
        Ok((fits, usage)) => (Some(fits), Some(usage)),
        Err(e) => {
            tracing::warn!(user = ?u, error = %e, "quota: usage unknown; delivering");
            (None, None)
        }
    }
}

/// [`fits`], with the store's failures.
async fn decide(
    store: &dyn ObjectStore,
    u: &UserId,
    limits: Limits,
    incoming: u64,
    known: Option<Usage>,
    now_ms: u64,
) -> Result<(bool, Usage), StoreError> {
    let allow = |usage: &Usage| limits.allow(usage.bytes, usage.messages, incoming, 1);
    let current = match known {
        Some(k) => k,
        None => usage(store, u, now_ms).await?,
    };
    if allow(&current) {
        return Ok((true, current));
    }
    // IMAP's figure first: it is the cheaper (one GET, the tail since it)
    // and it is what a user over by bodies of deleted mailboxes needs.
    if current.basis != Basis::Imap
        && let Some(imap) = imap_usage(store, u).await?
        && allow(&imap)
    {
        return Ok((true, imap));
    }
    let bodies = match current.basis {
        Basis::Recounted => current,
        Basis::Kept | Basis::Imap => recount(store, u, now_ms).await?,
    };
    Ok((allow(&bodies), bodies))
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
                basis: Basis::Recounted
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
                basis: Basis::Kept
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
                basis: Basis::Recounted
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
        assert_eq!(
            usage.map(|u| (u.messages, u.basis)),
            Some((2, Basis::Recounted))
        );
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
        assert_eq!((usage.messages, usage.basis), (1, Basis::Recounted));
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

    async fn publish(store: &MemoryStore, u: &UserId, bytes: u64, messages: u64, since_ms: u64) {
        let p = Published {
            version: crate::account::usage::PUBLISHED_VERSION,
            bytes,
            messages,
            since_ms,
        };
        let body = serde_json::to_vec(&p).unwrap();
        store.put(&published_key(u), body.into()).await.unwrap();
    }

    #[tokio::test]
    async fn imap_figure_plus_later_bodies_lets_in_what_stored_bodies_refuse() {
        let store = MemoryStore::new();
        let u = user();
        // 900 stored, of which IMAP shows 300 (the rest: a deleted
        // mailbox, kept for recovery).
        body(&store, &u, NOW - 2 * HOUR, 600).await;
        body(&store, &u, NOW - 2 * HOUR + 1, 300).await;
        let (ok, _) = fits(&store, &u, bytes(1000), 200, None, NOW).await;
        assert_eq!(ok, Some(false), "no IMAP figure: bodies decide");
        publish(&store, &u, 300, 1, NOW - HOUR).await;
        let (ok, usage) = fits(&store, &u, bytes(1000), 200, None, NOW).await;
        assert_eq!(ok, Some(true));
        assert_eq!(usage.map(|u| (u.bytes, u.basis)), Some((300, Basis::Imap)));
        // A body written after the figure counts on top of it: 300 + 450.
        body(&store, &u, NOW - HOUR + 5, 450).await;
        let (ok, usage) = fits(&store, &u, bytes(1000), 200, None, NOW).await;
        assert_eq!(ok, Some(true));
        assert_eq!(usage.map(|u| u.bytes), Some(750));
        let (ok, _) = fits(&store, &u, bytes(1000), 251, None, NOW).await;
        assert_eq!(ok, Some(false), "both figures over");
        // The figure found at RCPT is reused after DATA, and a real size
        // over it is checked again on both counts.
        let (_, at_rcpt) = fits(&store, &u, bytes(1000), 1, None, NOW).await;
        let (ok, _) = fits(&store, &u, bytes(1000), 251, at_rcpt, NOW).await;
        assert_eq!(ok, Some(false));
        let (ok, _) = fits(&store, &u, bytes(1000), 250, at_rcpt, NOW).await;
        assert_eq!(ok, Some(true));
    }

    #[tokio::test]
    async fn a_stale_or_forged_high_imap_figure_refuses_nothing_bodies_allow() {
        let store = MemoryStore::new();
        let u = user();
        body(&store, &u, NOW - 2 * HOUR, 100).await;
        publish(&store, &u, u64::MAX / 4, u64::MAX / 4, NOW - HOUR).await;
        let (ok, usage) = fits(&store, &u, bytes(1000), 500, None, NOW).await;
        assert_eq!(ok, Some(true));
        assert_eq!(usage.map(|u| u.basis), Some(Basis::Recounted));
        // Over by stored bodies too, the stale figure refuses, until the
        // user's next IMAP count replaces it (they can: any GETQUOTA,
        // EXPUNGE or DELETE does).
        body(&store, &u, NOW - HOUR, 800).await;
        let (ok, _) = fits(&store, &u, bytes(1000), 500, None, NOW).await;
        assert_eq!(ok, Some(false));
        publish(&store, &u, 100, 1, NOW - HOUR + 10).await;
        let (ok, _) = fits(&store, &u, bytes(1000), 500, None, NOW).await;
        assert_eq!(ok, Some(true));
        // An IMAP figure of another version, or garbage, is not used, and
        // the object LMTP keeps itself is untouched by it.
        for junk in [
            br#"{"version":99,"bytes":0,"messages":0,"since_ms":0}"#.as_slice(),
            b"{\"bytes\":",
        ] {
            store
                .put(&published_key(&u), Bytes::copy_from_slice(junk))
                .await
                .unwrap();
            assert_eq!(imap_usage(&store, &u).await.unwrap(), None);
            let (ok, _) = fits(&store, &u, bytes(1000), 500, None, NOW).await;
            assert_eq!(ok, Some(false));
        }
        // A store fault reading it (the kept figure known from RCPT):
        // usage unknown, delivered.
        let kept = Usage {
            bytes: 900,
            messages: 2,
            basis: Basis::Kept,
        };
        store.fail_next(1);
        let (ok, _) = fits(&store, &u, bytes(1000), 500, Some(kept), NOW).await;
        assert_eq!(ok, None);
    }
}
