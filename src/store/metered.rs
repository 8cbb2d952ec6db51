//! [`Metered`]: any [`ObjectStore`] with every call counted by operation
//! and outcome, and timed, for `/metrics` (doc/metrics.md). It changes
//! nothing else: same results, same errors, no retry.

use std::ops::Range;
use std::time::Instant;

use bytes::Bytes;

use super::{KeyPage, ListPage, ObjectStore, SharedStore, StoreError};
use crate::metrics::{self, StoreOp, StoreOutcome};

/// A store whose calls are counted and timed.
#[derive(Debug)]
pub struct Metered(SharedStore);

impl Metered {
    pub fn new(inner: SharedStore) -> Metered {
        Metered(inner)
    }
}

/// Records the call `op` that started at `started` and returned `result`.
fn record<T>(
    op: StoreOp,
    started: Instant,
    result: Result<T, StoreError>,
) -> Result<T, StoreError> {
    let outcome = match &result {
        Ok(_) => StoreOutcome::Ok,
        Err(e) if e.is_not_found() => StoreOutcome::NotFound,
        Err(_) => StoreOutcome::Error,
    };
    metrics::store_call(op, outcome, started.elapsed());
    result
}

#[async_trait::async_trait]
impl ObjectStore for Metered {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let started = Instant::now();
        record(StoreOp::Put, started, self.0.put(key, body).await)
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let started = Instant::now();
        record(StoreOp::Get, started, self.0.get(key).await)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let started = Instant::now();
        record(
            StoreOp::GetRange,
            started,
            self.0.get_range(key, range).await,
        )
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let started = Instant::now();
        record(StoreOp::Delete, started, self.0.delete(key).await)
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        let started = Instant::now();
        record(StoreOp::DeleteMany, started, self.0.delete_many(keys).await)
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        let started = Instant::now();
        let listed = self.0.list(prefix, start_after, limit).await;
        record(StoreOp::List, started, listed)
    }

    async fn list_keys(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, StoreError> {
        let started = Instant::now();
        let listed = self.0.list_keys(prefix, start_after, limit).await;
        record(StoreOp::List, started, listed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::MemoryStore;

    /// The count of `series` in the exposition (0 if absent).
    fn count(series: &str) -> u64 {
        let mut out = String::new();
        metrics::encode(&mut out).unwrap();
        out.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn calls_are_counted_by_operation_and_outcome_and_results_unchanged() {
        let store = Metered::new(Arc::new(MemoryStore::new()));
        let put = r#"facteur_store_calls_total{op="put",outcome="ok"}"#;
        let found = r#"facteur_store_calls_total{op="get",outcome="ok"}"#;
        let missing = r#"facteur_store_calls_total{op="get",outcome="not_found"}"#;
        let bad = r#"facteur_store_calls_total{op="get",outcome="error"}"#;
        let before = [put, found, missing, bad].map(count);
        store.put("a/b", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(store.get("a/b").await.unwrap(), Bytes::from_static(b"x"));
        assert!(store.get("a/c").await.unwrap_err().is_not_found());
        assert!(matches!(
            store.get("a//c").await,
            Err(StoreError::InvalidKey(_))
        ));
        let after = [put, found, missing, bad].map(count);
        // Other tests of this process may call stores at the same time:
        // at least ours were counted.
        for (i, series) in [put, found, missing, bad].iter().enumerate() {
            assert!(
                after[i] > before[i],
                "{series}: {} -> {}",
                before[i],
                after[i]
            );
        }
    }
}
