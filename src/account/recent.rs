//! Which messages this instance has already shown as new: the bookkeeping
//! behind IMAP's `\Recent` flag (RFC 3501 §2.3.2), kept per instance and
//! in memory only.
//!
//! RFC 3501 makes a message recent in exactly one session: the first to
//! be told of it. Instances share no memory, so each keeps its own
//! *floor* per mailbox: the UID below which every message has been handed
//! to a session of this instance. A session that takes the messages at or
//! above the floor ([`RecentFloors::claim`]) raises the floor past them in
//! the same step, so two sessions never take the same message.
//!
//! Invariants:
//! - A floor only rises (for one UIDVALIDITY), so the ranges handed out
//!   are disjoint: on one instance a message is recent in at most one
//!   session.
//! - A mailbox this instance does not know (never selected since the
//!   start, forgotten over [`MAX_FLOORS`], or with a new UIDVALIDITY) has
//!   floor 1: every message in it is recent once more, on this instance.
//! - Memory is bounded by [`MAX_FLOORS`] entries; the least recently used
//!   go first.

use std::collections::HashMap;
use std::sync::Mutex;

/// Mailboxes whose floor an instance remembers.
pub const MAX_FLOORS: usize = 100_000;

/// A mailbox: the user's store id and the mailbox id.
type Key = (String, String);

#[derive(Debug, Clone, Copy)]
struct Floor {
    uid_validity: u32,
    /// Messages with a smaller UID were handed out.
    floor: u32,
    /// When it was last used ([`Inner::clock`]), for eviction.
    used: u64,
}

#[derive(Debug, Default)]
struct Inner {
    floors: HashMap<Key, Floor>,
    /// Counts uses; orders entries for eviction.
    clock: u64,
}

/// The floors of one instance, shared by all its sessions.
#[derive(Debug)]
pub struct RecentFloors {
    inner: Mutex<Inner>,
    limit: usize,
}

impl Default for RecentFloors {
    fn default() -> Self {
        RecentFloors::with_limit(MAX_FLOORS)
    }
}

impl RecentFloors {
    /// Floors for at most `limit` mailboxes (at least one).
    pub fn with_limit(limit: usize) -> Self {
        RecentFloors {
            inner: Mutex::new(Inner::default()),
            limit: limit.max(1),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current floor of a mailbox: messages with this UID or above
    /// were shown as recent to no session of this instance yet.
    pub fn floor(&self, user: &str, mailbox: &str, uid_validity: u32) -> u32 {
        let inner = self.inner();
        match inner.floors.get(&(user.to_owned(), mailbox.to_owned())) {
            Some(f) if f.uid_validity == uid_validity => f.floor,
            _ => 1,
        }
    }

    /// Hands the messages from the floor up to `uid_next` (excluded) to
    /// the caller: returns the floor before, and raises it to `uid_next`.
    /// The caller's messages are those of its view with a UID at or above
    /// the returned floor and below `uid_next` (nothing if the floor was
    /// already higher).
    pub fn claim(&self, user: &str, mailbox: &str, uid_validity: u32, uid_next: u32) -> u32 {
        let mut inner = self.inner();
        inner.clock += 1;
        let now = inner.clock;
        let key = (user.to_owned(), mailbox.to_owned());
        let before = match inner.floors.get(&key) {
            Some(f) if f.uid_validity == uid_validity => f.floor,
            _ => 1,
        };
        if !inner.floors.contains_key(&key) && inner.floors.len() >= self.limit {
            evict(&mut inner.floors, self.limit);
        }
        inner.floors.insert(
            key,
            Floor {
                uid_validity,
                floor: before.max(uid_next),
                used: now,
            },
        );
        before
    }
}

/// Drops the least recently used tenth (at least one entry), so that a
/// full map is not scanned at every new mailbox.
fn evict(floors: &mut HashMap<Key, Floor>, limit: usize) {
    let drop = (limit / 10).max(1);
    let mut uses: Vec<u64> = floors.values().map(|f| f.used).collect();
    uses.sort_unstable();
    let Some(&cut) = uses.get(drop - 1) else {
        return;
    };
    floors.retain(|_, f| f.used > cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_hand_out_disjoint_ranges() {
        let floors = RecentFloors::default();
        assert_eq!(floors.floor("u", "m", 7), 1);
        assert_eq!(floors.claim("u", "m", 7, 5), 1, "1..5 to the first");
        assert_eq!(floors.claim("u", "m", 7, 5), 5, "nothing to the second");
        // A claim from an older view never lowers the floor.
        assert_eq!(floors.claim("u", "m", 7, 3), 5);
        assert_eq!(floors.floor("u", "m", 7), 5);
        assert_eq!(floors.claim("u", "m", 7, 9), 5, "5..9 to the third");
        assert_eq!(floors.floor("u", "m", 7), 9);
    }

    #[test]
    fn mailboxes_users_and_uid_validities_are_apart() {
        let floors = RecentFloors::default();
        floors.claim("u", "m", 7, 5);
        assert_eq!(floors.floor("u", "n", 7), 1);
        assert_eq!(floors.floor("v", "m", 7), 1);
        assert_eq!(
            floors.floor("u", "m", 8),
            1,
            "a new UIDVALIDITY starts over"
        );
        assert_eq!(floors.claim("u", "m", 8, 2), 1);
        assert_eq!(floors.floor("u", "m", 8), 2);
    }

    #[test]
    fn the_least_recently_used_are_forgotten_within_the_limit() {
        let floors = RecentFloors::with_limit(10);
        for i in 0..10 {
            floors.claim("u", &i.to_string(), 1, 4);
        }
        floors.claim("u", "0", 1, 4); // "0" used again: "1" is the oldest
        floors.claim("u", "new", 1, 4);
        assert!(floors.inner().floors.len() <= 10);
        assert_eq!(floors.floor("u", "0", 1), 4);
        assert_eq!(floors.floor("u", "new", 1), 4);
        assert_eq!(floors.floor("u", "1", 1), 1, "forgotten: recent again");
        for i in 0..1000 {
            floors.claim("v", &i.to_string(), 1, 2);
            assert!(floors.inner().floors.len() <= 10);
        }
    }
}
