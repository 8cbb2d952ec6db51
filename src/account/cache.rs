//! A bounded cache of decrypted message bodies, shared by the mailboxes of
//! one account: clients often fetch a body in several pieces (headers,
//! then parts), and each fetch would otherwise cost a GET and a decryption.
//! Bounded by total bytes; the least recently used body goes first.
//!
//! It also holds the account's [`SummaryCache`]: message summaries read
//! from summary pages (see `mailbox::state`), encoded, bounded the same
//! way.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::crypto::Decompressors;
use crate::mailbox::MessageId;

/// Bytes of encoded summaries an account keeps: about 900 summaries, a
/// few summary pages' worth.
pub const SUMMARY_CACHE_BYTES: usize = 4 << 20;

#[derive(Debug)]
pub struct BodyCache {
    /// Most recently used last.
    entries: Mutex<VecDeque<(String, Bytes)>>,
    /// Most bytes held; a body larger than this is never cached.
    capacity: usize,
    summaries: SummaryCache,
    /// The account's zstd contexts for bodies (they keep bytes of the
    /// last body each opened: dropped with the cache).
    decompressors: Decompressors,
}

impl BodyCache {
    pub fn new(capacity: usize) -> Self {
        BodyCache {
            entries: Mutex::new(VecDeque::new()),
            capacity,
            summaries: SummaryCache::new(SUMMARY_CACHE_BYTES),
            decompressors: Decompressors::default(),
        }
    }

    /// The account's summary cache.
    pub fn summaries(&self) -> &SummaryCache {
        &self.summaries
    }

    /// The account's zstd contexts for opening bodies.
    pub fn decompressors(&self) -> &Decompressors {
        &self.decompressors
    }

    pub fn get(&self, blob_id: &str) -> Option<Bytes> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let i = entries.iter().position(|(id, _)| id == blob_id)?;
        let entry = entries.remove(i)?;
        let body = entry.1.clone();
        entries.push_back(entry);
        Some(body)
    }

    pub fn insert(&self, blob_id: String, body: Bytes) {
        if body.len() > self.capacity {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(id, _)| *id != blob_id);
        let mut total: usize = entries.iter().map(|(_, b)| b.len()).sum::<usize>() + body.len();
        while total > self.capacity {
            match entries.pop_front() {
                Some((_, old)) => total -= old.len(),
                None => break,
            }
        }
        entries.push_back((blob_id, body));
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().map(|(_, b)| b.len()).sum()
    }
}

/// A message of one mailbox: the mailbox id and the message id in it.
pub type SummaryKey = (Arc<str>, MessageId);

/// Encoded summaries (as ops carry them), least recently used evicted
/// first once the bytes held pass the capacity. Lookups are hash lookups:
/// SEARCH asks for every message of a mailbox.
#[derive(Debug)]
pub struct SummaryCache {
    lru: Mutex<Lru>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Lru {
    /// Summary and its last use.
    entries: HashMap<SummaryKey, (Bytes, u64)>,
    /// Last use → key: the oldest first.
    by_use: BTreeMap<u64, SummaryKey>,
    clock: u64,
    bytes: usize,
}

impl SummaryCache {
    pub fn new(capacity: usize) -> Self {
        SummaryCache {
            lru: Mutex::new(Lru::default()),
            capacity,
        }
    }

    pub fn get(&self, key: &SummaryKey) -> Option<Bytes> {
        let mut lru = self.lru.lock().unwrap_or_else(|e| e.into_inner());
        lru.clock += 1;
        let now = lru.clock;
        let (summary, used) = lru.entries.get_mut(key)?;
        let (summary, before) = (summary.clone(), std::mem::replace(used, now));
        if let Some(k) = lru.by_use.remove(&before) {
            lru.by_use.insert(now, k);
        }
        Some(summary)
    }

    pub fn insert(&self, key: SummaryKey, summary: Bytes) {
        if summary.len() > self.capacity {
            return;
        }
        let mut lru = self.lru.lock().unwrap_or_else(|e| e.into_inner());
        lru.clock += 1;
        let now = lru.clock;
        lru.bytes += summary.len();
        if let Some((old, used)) = lru.entries.insert(key.clone(), (summary, now)) {
            lru.bytes -= old.len();
            lru.by_use.remove(&used);
        }
        lru.by_use.insert(now, key);
        while lru.bytes > self.capacity {
            let Some((_, oldest)) = lru.by_use.pop_first() else {
                break;
            };
            if let Some((old, _)) = lru.entries.remove(&oldest) {
                lru.bytes -= old.len();
            }
        }
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.lru.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::OpId;

    #[test]
    fn summaries_evict_least_recently_used_within_capacity() {
        let cache = SummaryCache::new(10);
        let mailbox: Arc<str> = Arc::from("m");
        let key = |n: u8| {
            (
                mailbox.clone(),
                MessageId {
                    op: OpId::from_raw([n; 16]),
                    index: 0,
                },
            )
        };
        cache.insert(key(1), Bytes::from_static(b"aaaa"));
        cache.insert(key(2), Bytes::from_static(b"bbbb"));
        assert_eq!(cache.get(&key(1)).as_deref(), Some(&b"aaaa"[..]));
        cache.insert(key(3), Bytes::from_static(b"cccc"));
        assert!(cache.get(&key(2)).is_none(), "the least recently used goes");
        assert!(cache.get(&key(1)).is_some() && cache.get(&key(3)).is_some());
        assert_eq!(cache.held(), 8);
        // Replacing an entry counts its bytes once.
        cache.insert(key(3), Bytes::from_static(b"cc"));
        assert_eq!(cache.held(), 6);
        cache.insert(key(4), Bytes::from(vec![0u8; 11]));
        assert!(cache.get(&key(4)).is_none(), "larger than the whole cache");
    }

    #[test]
    fn evicts_least_recently_used_within_capacity() {
        let cache = BodyCache::new(10);
        cache.insert("a".into(), Bytes::from_static(b"aaaa"));
        cache.insert("b".into(), Bytes::from_static(b"bbbb"));
        assert!(cache.get("a").is_some()); // a is now the most recent
        cache.insert("c".into(), Bytes::from_static(b"cccc"));
        assert!(cache.get("b").is_none());
        assert!(cache.get("a").is_some() && cache.get("c").is_some());
        assert!(cache.held() <= 10);
        cache.insert("huge".into(), Bytes::from(vec![0; 11]));
        assert!(cache.get("huge").is_none());
    }
}
