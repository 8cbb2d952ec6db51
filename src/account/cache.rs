//! A bounded cache of decrypted message bodies, shared by the mailboxes of
//! one account: clients often fetch a body in several pieces (headers,
//! then parts), and each fetch would otherwise cost a GET and a decryption.
//! Bounded by total bytes; the least recently used body goes first.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;

#[derive(Debug)]
pub struct BodyCache {
    /// Most recently used last.
    entries: Mutex<VecDeque<(String, Bytes)>>,
    /// Most bytes held; a body larger than this is never cached.
    capacity: usize,
}

impl BodyCache {
    pub fn new(capacity: usize) -> Self {
        BodyCache {
            entries: Mutex::new(VecDeque::new()),
            capacity,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
