//! An in-memory object store for tests: a sorted map behind a mutex, with
//! fault injection (an outage switch, failures of the next N calls, added
//! latency) and call counters (all calls, and reads per key), so tests can
//! exercise outages and check how many store round trips an operation
//! costs.
//!
//! Clones share the same objects and the same fault settings, like two
//! handles on one bucket.

use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, Range};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use super::{
    ListPage, ObjectMeta, ObjectStore, StoreError, check_key, check_prefix, clamp_limit,
    clamp_range,
};

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    // Shared by every clone, so a test can keep a handle while the code
    // under test owns another.
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    // The bucket. A BTreeMap orders `String` keys by bytes, which is
    // exactly the listing order the trait promises.
    objects: Mutex<BTreeMap<String, Bytes>>,
    // While set, every call fails with `Transient` (a whole-store outage).
    offline: AtomicBool,
    // This many upcoming calls fail with `Transient`, then calls succeed
    // again (a brief hiccup, for retry paths).
    fail_next: AtomicUsize,
    // Added to every call before it runs, in microseconds (slow store).
    latency_us: AtomicU64,
    // Calls made so far, including failed ones (but not invalid keys).
    calls: AtomicU64,
    // Per key, GETs (whole or ranged) made so far, failed ones included.
    reads: Mutex<HashMap<String, u64>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// While `offline` is true, every call returns [`StoreError::Transient`]
    /// and changes nothing.
    pub fn set_offline(&self, offline: bool) {
        self.inner.offline.store(offline, Ordering::SeqCst);
    }

    /// Whether [`MemoryStore::set_offline`] is in effect.
    pub fn is_offline(&self) -> bool {
        self.inner.offline.load(Ordering::SeqCst)
    }

    /// Makes the next `n` calls return [`StoreError::Transient`].
    pub fn fail_next(&self, n: usize) {
        self.inner.fail_next.store(n, Ordering::SeqCst);
    }

    /// Delays every call by `latency` (a tokio sleep, so it follows
    /// `tokio::time::pause` in tests that use it).
    pub fn set_latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.inner.latency_us.store(us, Ordering::SeqCst);
    }

    /// How many calls reached the store (failed ones included, calls with
    /// an invalid key not).
    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::SeqCst)
    }

    /// How many GETs (whole or ranged, failed ones included) asked for
    /// `key` so far.
    pub fn reads(&self, key: &str) -> u64 {
        let reads = self.inner.reads.lock().unwrap_or_else(|p| p.into_inner());
        reads.get(key).copied().unwrap_or(0)
    }

    /// Number of objects stored.
    pub fn len(&self) -> usize {
        self.objects().len()
    }

    /// True when no object is stored.
    pub fn is_empty(&self) -> bool {
        self.objects().is_empty()
    }

    /// All keys, in order (for test assertions).
    pub fn keys(&self) -> Vec<String> {
        self.objects().keys().cloned().collect()
    }

    fn objects(&self) -> MutexGuard<'_, BTreeMap<String, Bytes>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every update is a single insert or remove), so poison is harmless.
        self.inner.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the call, applies latency and injected faults.
    async fn enter(&self, op: &str, key: &str) -> Result<(), StoreError> {
        self.inner.calls.fetch_add(1, Ordering::SeqCst);
        if op.starts_with("get") {
            let mut reads = self.inner.reads.lock().unwrap_or_else(|p| p.into_inner());
            *reads.entry(key.to_owned()).or_default() += 1;
        }
        let us = self.inner.latency_us.load(Ordering::SeqCst);
        if us > 0 {
            tokio::time::sleep(Duration::from_micros(us)).await;
        }
        if self.is_offline() {
            return Err(StoreError::Transient(format!(
                "memory store is offline ({op} {key})"
            )));
        }
        let injected = self
            .inner
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if injected {
            return Err(StoreError::Transient(format!(
                "injected memory store failure ({op} {key})"
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ObjectStore for MemoryStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        check_key(key)?;
        self.enter("put", key).await?;
        self.objects().insert(key.to_owned(), body);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        check_key(key)?;
        self.enter("get", key).await?;
        self.objects()
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(key.to_owned()))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        check_key(key)?;
        self.enter("get_range", key).await?;
        let body = self
            .objects()
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(key.to_owned()))?;
        Ok(body.slice(clamp_range(&range, body.len() as u64)))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        self.enter("delete", key).await?;
        self.objects().remove(key);
        Ok(())
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        for key in keys {
            check_key(key)?;
        }
        let first = keys.first().map(String::as_str).unwrap_or("");
        self.enter("delete_many", first).await?;
        let mut objects = self.objects();
        for key in keys {
            objects.remove(key);
        }
        Ok(())
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        check_prefix(prefix)?;
        self.enter("list", prefix).await?;
        let limit = clamp_limit(limit);
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let objects = self.objects();
        let mut matching = objects
            .range::<str, _>((lower, Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, body)| ObjectMeta {
                key: key.clone(),
                size: body.len() as u64,
            });
        let page: Vec<ObjectMeta> = matching.by_ref().take(limit).collect();
        let truncated = matching.next().is_some();
        Ok(ListPage {
            objects: page,
            truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn offline_fails_every_call_transiently() {
        let store = MemoryStore::new();
        store.put("a", Bytes::from_static(b"1")).await.unwrap();
        let handle = store.clone();
        handle.set_offline(true);
        assert!(store.is_offline());

        let err = store.get("a").await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(
            store
                .put("b", Bytes::new())
                .await
                .unwrap_err()
                .is_transient()
        );
        assert!(store.delete("a").await.unwrap_err().is_transient());
        assert!(store.list("", None, 10).await.unwrap_err().is_transient());
        // Invalid keys are still rejected as such, before the outage.
        assert!(matches!(
            store.get("/bad").await,
            Err(StoreError::InvalidKey(_))
        ));

        handle.set_offline(false);
        assert_eq!(store.get("a").await.unwrap(), Bytes::from_static(b"1"));
        assert_eq!(store.keys(), ["a"]);
    }

    #[tokio::test]
    async fn fail_next_counts_down() {
        let store = MemoryStore::new();
        store.fail_next(2);
        assert!(
            store
                .put("a", Bytes::new())
                .await
                .unwrap_err()
                .is_transient()
        );
        assert!(store.get("a").await.unwrap_err().is_transient());
        store.put("a", Bytes::new()).await.unwrap();
        assert_eq!(store.calls(), 3);
        assert_eq!(store.len(), 1);
    }

    #[tokio::test]
    async fn latency_is_added() {
        let store = MemoryStore::new();
        store.set_latency(Duration::from_millis(30));
        let started = std::time::Instant::now();
        store.put("a", Bytes::new()).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[tokio::test]
    async fn list_start_after_before_prefix() {
        let store = MemoryStore::new();
        for key in ["a/1", "b/1", "b/2", "c/1"] {
            store.put(key, Bytes::new()).await.unwrap();
        }
        let page = store.list("b/", Some("a/9"), 10).await.unwrap();
        let keys: Vec<_> = page.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["b/1", "b/2"]);
        let page = store.list("b/", Some("b/1"), 1).await.unwrap();
        assert_eq!(page.objects[0].key, "b/2");
        assert!(!page.truncated);
        let page = store.list("b/", None, 1).await.unwrap();
        assert!(page.truncated);
    }
}
