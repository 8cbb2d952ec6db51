//! The S3 object store (Garage in production, any S3 in principle): one
//! bucket, path-style addressing, static credentials.
//!
//! This file owns the mapping from S3 answers to [`StoreError`], in one
//! place ([`classify`]), and the retry policy: transient errors (network,
//! timeouts, throttling, 5xx, Garage's 503 "could not reach quorum") are
//! retried with exponential backoff and jitter, up to
//! [`S3Settings::max_retries`] times; the SDK's own retries are off so that
//! the two do not multiply. A semaphore bounds the requests in flight
//! ([`S3Settings::max_concurrency`]); a request waiting out a backoff holds
//! no permit.
//!
//! A listing asks for about as many keys as its prefix held last time and
//! more only if there are more ([`ListSizes`]): Garage reads as many
//! objects as a request asks for, whether or not they are in the prefix.
//!
//! Only standard S3 calls are used (PutObject, GetObject, HeadObject,
//! DeleteObject, DeleteObjects, ListObjectsV2): no conditional writes, which
//! Garage silently ignores (FACTS.md), and nothing Garage-specific.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use bytes::Bytes;
use rand::Rng;
use tokio::sync::Semaphore;

use super::{
    ListPage, ObjectMeta, ObjectStore, StoreError, check_key, check_prefix, clamp_limit,
    clamp_range,
};
use crate::store::s3_http::QuickAckClient;

/// Most keys one DeleteObjects request may carry (S3's limit).
const DELETE_BATCH: usize = 1000;

/// Keys a listing asks for in its first request when nothing is known of
/// its prefix. Garage reads the requested number of objects plus one from
/// the start key, whatever the prefix, and decodes each (deleted ones it
/// passes on the way too): a listing that asked for 1,000 keys of a
/// prefix holding none cost it about 5 ms of CPU, against 0.5 ms for 32.
/// Most of Facteur's listings (a log sync, an empty incoming queue, a
/// placement turn) find a few keys.
const FIRST_PAGE: usize = 32;

/// The least a first request asks for once its prefix is known.
const LEAST_PAGE: usize = 8;

/// How much larger each further request of one listing is than the one
/// before, so that a long listing still takes few requests.
const PAGE_GROWTH: usize = 8;

/// Prefixes whose last listing size is remembered (see [`ListSizes`]).
const LIST_SIZES_KEPT: usize = 4096;

/// First retry delay; doubles on each retry up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(50);

/// Longest delay between two attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// Time allowed to open a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Time allowed for the first byte of a response. A stalled body is caught
/// separately by the SDK's stalled-stream protection.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the bucket is and how to reach it.
#[derive(Clone)]
pub struct S3Settings {
    /// Endpoint URL, e.g. `http://127.0.0.1:3900`.
    pub endpoint: String,
    /// Region the server expects in signatures; Garage's `s3_region`
    /// (usually `garage`).
    pub region: String,
    /// The bucket holding every object.
    pub bucket: String,
    /// Access key id (not secret; appears in logs).
    pub access_key_id: String,
    /// Secret access key; never printed (see the `Debug` impl).
    pub secret_access_key: String,
    /// Most requests in flight at once, to bound sockets and memory.
    pub max_concurrency: usize,
    /// How many times a transient failure is retried before it is returned.
    pub max_retries: u32,
}

impl S3Settings {
    /// Default for [`S3Settings::max_concurrency`].
    pub const DEFAULT_MAX_CONCURRENCY: usize = 32;
    /// Default for [`S3Settings::max_retries`].
    pub const DEFAULT_MAX_RETRIES: u32 = 5;

    /// Settings with the default concurrency and retry count.
    pub fn new(
        endpoint: impl Into<String>,
        region: impl Into<String>,
        bucket: impl Into<String>,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> S3Settings {
        S3Settings {
            endpoint: endpoint.into(),
            region: region.into(),
            bucket: bucket.into(),
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            max_concurrency: Self::DEFAULT_MAX_CONCURRENCY,
            max_retries: Self::DEFAULT_MAX_RETRIES,
        }
    }

    /// The test bucket named by `FACTEUR_TEST_S3_ENDPOINT`, `_REGION`
    /// (default `garage`), `_BUCKET`, `_ACCESS_KEY` and `_SECRET_KEY`
    /// (`scripts/garage.sh start` prints them); `None` unless endpoint,
    /// bucket and both keys are set.
    pub fn from_test_env() -> Option<S3Settings> {
        let var = |name: &str| {
            std::env::var(format!("FACTEUR_TEST_S3_{name}"))
                .ok()
                .filter(|v| !v.is_empty())
        };
        Some(S3Settings::new(
            var("ENDPOINT")?,
            var("REGION").unwrap_or_else(|| "garage".to_owned()),
            var("BUCKET")?,
            var("ACCESS_KEY")?,
            var("SECRET_KEY")?,
        ))
    }

    /// The test store for a test that needs S3: [`S3Settings::from_test_env`],
    /// except that a missing setting fails the test when
    /// `FACTEUR_REQUIRE_S3=1` (CI sets it, so the S3 variants never pass by
    /// skipping there) and otherwise prints a notice naming `what`.
    pub fn for_tests(what: &str) -> Option<S3Settings> {
        let settings = S3Settings::from_test_env();
        if settings.is_none() {
            if std::env::var("FACTEUR_REQUIRE_S3").is_ok_and(|v| v == "1") {
                panic!(
                    "FACTEUR_REQUIRE_S3=1 but FACTEUR_TEST_S3_ENDPOINT, _BUCKET, _ACCESS_KEY and \
                     _SECRET_KEY are not all set; run `eval \"$(scripts/garage.sh start <dir>)\"` first"
                );
            }
            eprintln!(
                "notice: {what} skipped (no FACTEUR_TEST_S3_* variables; see scripts/garage.sh)"
            );
        }
        settings
    }
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("max_concurrency", &self.max_concurrency)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

/// See the module documentation. Cheap to clone; clones share the client
/// and the concurrency limit.
#[derive(Clone)]
pub struct S3Store {
    // The SDK client (itself a cheap handle on a connection pool).
    client: Client,
    // Bucket every call addresses.
    bucket: Arc<str>,
    // For Debug and error messages: where the bucket lives.
    endpoint: Arc<str>,
    // Bounds requests in flight; one permit per attempt.
    permits: Arc<Semaphore>,
    // Retries after the first attempt of a transient failure.
    max_retries: u32,
    // How many keys recent listings of each prefix found.
    list_sizes: Arc<ListSizes>,
}

/// How many keys the last listing of a prefix found, from a cursor or from
/// the start (a log sync lists from a cursor, a reload from the start), so
/// that the next listing asks for about that many: a request for too few
/// costs another round trip, one for too many costs Garage the reading of
/// objects past the prefix (see [`FIRST_PAGE`]). Bounded: a new prefix
/// past [`LIST_SIZES_KEPT`] takes the place of an arbitrary one.
#[derive(Default)]
struct ListSizes {
    // Per prefix: the size from the start, then from a cursor.
    seen: std::sync::Mutex<std::collections::HashMap<Box<str>, [Option<usize>; 2]>>,
}

impl ListSizes {
    /// Keys to ask for first when listing `prefix` (from a cursor or not).
    fn first_ask(&self, prefix: &str, from_cursor: bool, limit: usize) -> usize {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let ask = match seen
            .get(prefix)
            .and_then(|sizes| sizes[usize::from(from_cursor)])
        {
            // A quarter more than last time, for a prefix that grows.
            Some(n) => n.saturating_add(n / 4).max(LEAST_PAGE),
            None => FIRST_PAGE,
        };
        ask.min(limit)
    }

    /// Notes that a listing of `prefix` found `found` keys, and more if
    /// `cut` (it stopped at its limit): a short existence check (limit 1)
    /// then does not make the next full listing start small, whether the
    /// prefix was known or not.
    fn remember(&self, prefix: &str, from_cursor: bool, found: usize, cut: bool) {
        let learned = |known: Option<usize>| match known {
            Some(n) if cut => Some(n.max(found)),
            None if cut && found < FIRST_PAGE => None,
            _ => Some(found),
        };
        let slot = usize::from(from_cursor);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sizes) = seen.get_mut(prefix) {
            sizes[slot] = learned(sizes[slot]);
            return;
        }
        let Some(size) = learned(None) else { return };
        // Full: one entry makes room, the others stay known.
        if seen.len() >= LIST_SIZES_KEPT
            && let Some(any) = seen.keys().next().cloned()
        {
            seen.remove(&any);
        }
        let mut sizes = [None; 2];
        sizes[slot] = Some(size);
        seen.insert(prefix.into(), sizes);
    }
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// A store on `settings.bucket`. Sends nothing yet: a wrong endpoint or
    /// key shows up on the first call.
    pub fn new(settings: S3Settings) -> Result<S3Store, StoreError> {
        if settings.max_concurrency == 0 {
            return Err(StoreError::Permanent(
                "s3 max_concurrency must be at least 1".to_owned(),
            ));
        }
        for (name, value) in [
            ("endpoint", &settings.endpoint),
            ("region", &settings.region),
            ("bucket", &settings.bucket),
        ] {
            if value.is_empty() {
                return Err(StoreError::Permanent(format!("s3 {name} is empty")));
            }
        }
        let credentials = Credentials::new(
            settings.access_key_id.clone(),
            settings.secret_access_key.clone(),
            None,
            None,
            "facteur-settings",
        );
        let mut config = aws_sdk_s3::Config::builder();
        let plain_http = settings.endpoint.parse::<http::Uri>().is_ok_and(|uri| {
            uri.scheme_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("http"))
        });
        if plain_http {
            // Answers acknowledged at once (see the module's documentation).
            config = config.http_client(QuickAckClient::new(CONNECT_TIMEOUT));
        }
        let config = config
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(settings.endpoint.clone())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(true)
            // We retry ourselves (see the module documentation).
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .build(),
            )
            .build();
        Ok(S3Store {
            client: Client::from_conf(config),
            bucket: settings.bucket.as_str().into(),
            endpoint: settings.endpoint.as_str().into(),
            permits: Arc::new(Semaphore::new(settings.max_concurrency)),
            max_retries: settings.max_retries,
            list_sizes: Arc::default(),
        })
    }

    /// Runs one store call (its attempts and retries) in a task of its
    /// own. The SDK does real work per request (endpoint resolution,
    /// signing, reading the answer): run in the caller's task, the 64
    /// GETs a drain keeps in flight all share one thread; spawned, they
    /// spread over the runtime's worker threads (issue #15). Dropping the
    /// returned future aborts the task, as dropping the call would
    /// cancel it in place.
    async fn on_worker<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: FnOnce(S3Store) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        // A JoinSet aborts what it holds when dropped.
        let mut task = tokio::task::JoinSet::new();
        // The caller's span (user, record) stays on the task's retry logs.
        task.spawn(tracing::Instrument::instrument(
            call(self.clone()),
            tracing::Span::current(),
        ));
        match task.join_next().await {
            Some(Ok(result)) => result,
            Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the runtime is shutting down.
            Some(Err(e)) => Err(StoreError::Transient(format!("s3 request task: {e}"))),
            None => Err(StoreError::Transient("s3 request task vanished".to_owned())),
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or has failed
    /// transiently `1 + max_retries` times. Each attempt holds a permit.
    async fn retrying<T, F, Fut>(
        &self,
        op: &str,
        key: &str,
        mut attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut retries = 0u32;
        loop {
            let result = {
                let _permit = self.permits.acquire().await.map_err(|e| {
                    StoreError::Permanent(format!("s3 request limiter closed: {e}"))
                })?;
                attempt().await
            };
            match result {
                Err(StoreError::Transient(text)) if retries < self.max_retries => {
                    let delay = backoff(retries);
                    tracing::debug!(op, key, retries, ?delay, error = %text, "s3: retrying");
                    tokio::time::sleep(delay).await;
                    retries += 1;
                }
                Err(StoreError::Transient(text)) => {
                    tracing::warn!(op, key, attempts = retries + 1, error = %text, "s3: giving up");
                    return Err(StoreError::Transient(format!(
                        "{text} (gave up after {} attempts)",
                        retries + 1
                    )));
                }
                other => return other,
            }
        }
    }

    async fn put_object(&self, key: &str, body: &Bytes) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&*self.bucket)
            .key(key)
            .body(ByteStream::from(body.clone()))
            .send()
            .await
            .map_err(|e| classify("PUT", key, e))?;
        Ok(())
    }

    async fn get_object(&self, key: &str) -> Result<Bytes, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(&*self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("GET", key, e))?;
        read_body("GET", key, out.body).await
    }

    async fn get_object_range(&self, key: &str, range: &Range<u64>) -> Result<Bytes, StoreError> {
        // RFC 9110 §14.1.2: the last byte position is inclusive.
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        let out = match self
            .client
            .get_object()
            .bucket(&*self.bucket)
            .key(key)
            .range(header)
            .send()
            .await
        {
            Ok(out) => out,
            // 416: the range starts at or past the end of an object that
            // exists (for a missing one S3 answers 404).
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 416 => {
                return Ok(Bytes::new());
            }
            Err(e) => return Err(classify("GET range", key, e)),
        };
        let partial = out.content_range().is_some();
        let body = read_body("GET range", key, out.body).await?;
        if partial {
            // Only the asked range came back; never hand out more.
            let wanted = usize::try_from(range.end - range.start).unwrap_or(usize::MAX);
            Ok(body.slice(..body.len().min(wanted)))
        } else {
            // The server ignored the Range header and sent the whole object.
            Ok(body.slice(clamp_range(range, body.len() as u64)))
        }
    }

    async fn head_object(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .head_object()
            .bucket(&*self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("HEAD", key, e))?;
        Ok(())
    }

    async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        match self
            .client
            .delete_object()
            .bucket(&*self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("DELETE", key, e))
        {
            // S3 answers 204 for a missing key; be lenient with stores
            // that answer 404.
            Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete_objects(&self, keys: &[String]) -> Result<(), StoreError> {
        let first = keys.first().map(String::as_str).unwrap_or("");
        let objects = keys
            .iter()
            .map(|key| ObjectIdentifier::builder().key(key).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Permanent(format!("s3 DeleteObjects {first}…: {e}")))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| StoreError::Permanent(format!("s3 DeleteObjects {first}…: {e}")))?;
        let out = self
            .client
            .delete_objects()
            .bucket(&*self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| not_found_is_permanent(classify("DeleteObjects", first, e)))?;
        // Per-key failures come back in a 200 answer.
        let failed: Vec<_> = out
            .errors()
            .iter()
            .filter(|e| e.code() != Some("NoSuchKey"))
            .collect();
        let Some(example) = failed.first() else {
            return Ok(());
        };
        let code = example.code().unwrap_or("?");
        let text = format!(
            "s3 DeleteObjects: {} of {} keys failed, e.g. {}: {code} {}",
            failed.len(),
            keys.len(),
            example.key().unwrap_or("?"),
            example.message().unwrap_or(""),
        );
        Err(match code_kind(code) {
            Some(Kind::Transient) => StoreError::Transient(text),
            _ => StoreError::Permanent(text),
        })
    }

    /// Up to `limit` keys, asked for in requests of growing size (from
    /// about as many as the prefix's last listing found, [`PAGE_GROWTH`]
    /// times more each time) until `limit` keys are found or the store
    /// has no more.
    async fn list_growing(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        let from_cursor = start_after.is_some();
        let mut ask = self.list_sizes.first_ask(prefix, from_cursor, limit);
        let mut objects: Vec<ObjectMeta> = Vec::new();
        loop {
            let after = objects.last().map_or(start_after, |o| Some(o.key.as_str()));
            let page = self
                .retrying("list", prefix, || self.list_objects(prefix, after, ask))
                .await?;
            let progressed = !page.objects.is_empty();
            objects.extend(page.objects);
            // A truncated page that listed nothing cannot move the cursor:
            // it goes to the caller as it is, as a single request would.
            if !page.truncated || !progressed || objects.len() >= limit {
                self.list_sizes
                    .remember(prefix, from_cursor, objects.len(), page.truncated);
                return Ok(ListPage {
                    objects,
                    truncated: page.truncated,
                });
            }
            ask = ask.saturating_mul(PAGE_GROWTH).min(limit - objects.len());
        }
    }

    async fn list_objects(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&*self.bucket)
            .prefix(prefix)
            .set_start_after(start_after.map(str::to_owned))
            .max_keys(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| not_found_is_permanent(classify("LIST", prefix, e)))?;
        let mut objects = Vec::with_capacity(out.contents().len());
        for object in out.contents() {
            let Some(key) = object.key() else { continue };
            // Guard against a store that ignores start-after or the prefix.
            if !key.starts_with(prefix) || start_after.is_some_and(|after| key <= after) {
                continue;
            }
            objects.push(ObjectMeta {
                key: key.to_owned(),
                size: object
                    .size()
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(0),
            });
        }
        let truncated = out.is_truncated().unwrap_or(false);
        if objects.len() > limit {
            objects.truncate(limit);
            return Ok(ListPage {
                objects,
                truncated: true,
            });
        }
        Ok(ListPage { objects, truncated })
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.on_worker(move |store| async move {
            let (store, key, body) = (&store, &key, &body);
            store
                .retrying("put", key, move || async move {
                    store
                        .put_object(key, body)
                        .await
                        .map_err(not_found_is_permanent)
                })
                .await
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.on_worker(move |store| async move {
            store.retrying("get", &key, || store.get_object(&key)).await
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.on_worker(move |store| async move {
            let (key, range) = (&key, &range);
            if range.start >= range.end {
                // Nothing to read, but a missing object is still NotFound.
                store
                    .retrying("head", key, || store.head_object(key))
                    .await?;
                return Ok(Bytes::new());
            }
            store
                .retrying("get_range", key, || store.get_object_range(key, range))
                .await
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.on_worker(move |store| async move {
            store
                .retrying("delete", &key, || store.delete_object(&key))
                .await
        })
        .await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        for key in keys {
            check_key(key)?;
        }
        let keys = keys.to_vec();
        self.on_worker(move |store| async move {
            for batch in keys.chunks(DELETE_BATCH) {
                let first = batch.first().map(String::as_str).unwrap_or("");
                store
                    .retrying("delete_many", first, || store.delete_objects(batch))
                    .await?;
            }
            Ok(())
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        check_prefix(prefix)?;
        let limit = clamp_limit(limit);
        let (prefix, start_after) = (prefix.to_owned(), start_after.map(str::to_owned));
        self.on_worker(move |store| async move {
            store
                .list_growing(&prefix, start_after.as_deref(), limit)
                .await
        })
        .await
    }
}

/// Delay before retry number `retry` (0-based): 50 ms doubling up to 2 s,
/// with "equal jitter" (half fixed, half random) so that clients that
/// failed together do not retry together.
fn backoff(retry: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
        .min(BACKOFF_CAP);
    let half = ceiling / 2;
    let jitter = rand::thread_rng().gen_range(0..=half.as_micros().max(1) as u64);
    half + Duration::from_micros(jitter)
}

/// Reads a whole response body; a connection cut mid-body is transient.
async fn read_body(op: &str, key: &str, body: ByteStream) -> Result<Bytes, StoreError> {
    body.collect()
        .await
        .map(|data| data.into_bytes())
        .map_err(|e| {
            StoreError::Transient(format!(
                "s3 {op} {key}: reading body: {}",
                DisplayErrorContext(&e)
            ))
        })
}

/// For calls where 404 can only mean the bucket (or the endpoint) is wrong.
fn not_found_is_permanent(e: StoreError) -> StoreError {
    match e {
        StoreError::NotFound(text) => StoreError::Permanent(text),
        other => other,
    }
}

/// What an S3 error means for the caller.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    NotFound,
    Transient,
    Permanent,
}

/// What an S3 error code alone says, when it says enough.
fn code_kind(code: &str) -> Option<Kind> {
    match code {
        "NoSuchKey" | "NotFound" => Some(Kind::NotFound),
        "NoSuchBucket" | "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" => {
            Some(Kind::Permanent)
        }
        "SlowDown"
        | "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "RequestTimeout"
        | "InternalError"
        | "ServiceUnavailable" => Some(Kind::Transient),
        _ => None,
    }
}

/// Classifies an error answer from its HTTP status and S3 error code.
fn kind_of(status: u16, code: Option<&str>) -> Kind {
    if let Some(kind) = code.and_then(code_kind) {
        return kind;
    }
    match status {
        404 => Kind::NotFound,
        408 | 429 => Kind::Transient,
        s if s >= 500 => Kind::Transient,
        // 400, 403 and the rest: our request or our configuration is wrong.
        _ => Kind::Permanent,
    }
}

/// The one place SDK errors become [`StoreError`]s. The text keeps the
/// operation, the key, the HTTP status, the S3 code and the SDK's whole
/// source chain.
fn classify<E>(op: &str, key: &str, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (kind, text) = match &err {
        SdkError::ServiceError(e) => {
            let status = e.raw().status().as_u16();
            let code = e.err().code();
            let message = e.err().message().unwrap_or("");
            // Garage reports a key too long for LMDB as a 503 "could not
            // reach quorum"; retrying it can never succeed.
            let kind = if message.contains("MDB_BAD_VALSIZE") {
                Kind::Permanent
            } else {
                kind_of(status, code)
            };
            // The answer's own words; the SDK's Debug dump of the raw
            // response would add kilobytes and nothing more.
            let code = code.unwrap_or("no error code");
            let text = format!("s3 {op} {key}: HTTP {status} {code}: {message}");
            (kind, text)
        }
        other => {
            let kind = match other {
                // The request could not even be built: a bug or bad settings.
                SdkError::ConstructionFailure(_) => Kind::Permanent,
                // Bad endpoint URL, TLS misconfiguration and the like.
                SdkError::DispatchFailure(e) if e.is_user() => Kind::Permanent,
                // Connection refused or reset, timeouts, a garbled response.
                _ => Kind::Transient,
            };
            // The whole source chain: "connection refused" sits at its end.
            (
                kind,
                format!("s3 {op} {key}: {}", DisplayErrorContext(other)),
            )
        }
    };
    match kind {
        Kind::NotFound => StoreError::NotFound(text),
        Kind::Transient => StoreError::Transient(text),
        Kind::Permanent => StoreError::Permanent(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::types::error::NoSuchKey;
    use aws_smithy_types::body::SdkBody;

    fn settings(endpoint: &str) -> S3Settings {
        S3Settings::new(endpoint, "garage", "bucket", "GKid", "very-secret")
    }

    #[test]
    fn listings_ask_for_about_what_their_prefix_held_last_time() {
        let sizes = ListSizes::default();
        // Nothing known: a small first request, never above the limit.
        assert_eq!(sizes.first_ask("a/", true, 1000), FIRST_PAGE);
        assert_eq!(sizes.first_ask("a/", true, 5), 5);
        // Known: a quarter more than last time, at least LEAST_PAGE.
        sizes.remember("a/", true, 100, false);
        assert_eq!(sizes.first_ask("a/", true, 1000), 125);
        assert_eq!(sizes.first_ask("a/", true, 50), 50);
        sizes.remember("a/", true, 0, false);
        assert_eq!(sizes.first_ask("a/", true, 1000), LEAST_PAGE);
        // From a cursor and from the start are told apart.
        sizes.remember("a/", false, 400, false);
        assert_eq!(sizes.first_ask("a/", false, 1000), 500);
        assert_eq!(sizes.first_ask("a/", true, 1000), LEAST_PAGE);
        // A listing cut at its limit (an existence check) lowers nothing;
        // a complete one sets the size, up or down.
        sizes.remember("a/", false, 1, true);
        assert_eq!(sizes.first_ask("a/", false, 1000), 500);
        sizes.remember("a/", false, 640, true);
        assert_eq!(sizes.first_ask("a/", false, 1000), 800);
        sizes.remember("a/", false, 12, false);
        assert_eq!(sizes.first_ask("a/", false, 1000), 15);
        // An existence check of an unknown prefix teaches nothing; a cut
        // listing of many keys does.
        sizes.remember("b/", false, 1, true);
        assert_eq!(sizes.first_ask("b/", false, 1000), FIRST_PAGE);
        sizes.remember("b/", false, 300, true);
        assert_eq!(sizes.first_ask("b/", false, 1000), 375);
    }

    #[test]
    fn remembered_listing_sizes_are_bounded() {
        let sizes = ListSizes::default();
        for i in 0..LIST_SIZES_KEPT {
            sizes.remember(&format!("p{i}/"), true, 100, false);
        }
        assert_eq!(sizes.seen.lock().unwrap().len(), LIST_SIZES_KEPT);
        // A known prefix is updated in place...
        sizes.remember("p0/", true, 200, false);
        assert_eq!(sizes.seen.lock().unwrap().len(), LIST_SIZES_KEPT);
        // ...a new one past the bound takes one entry's place.
        sizes.remember("new/", true, 7, false);
        assert_eq!(sizes.seen.lock().unwrap().len(), LIST_SIZES_KEPT);
        assert_eq!(sizes.first_ask("new/", true, 1000), LEAST_PAGE);
        let forgotten = (0..LIST_SIZES_KEPT)
            .filter(|i| sizes.first_ask(&format!("p{i}/"), true, 1000) == FIRST_PAGE)
            .count();
        assert_eq!(forgotten, 1);
    }

    fn service_error(status: u16, error: GetObjectError) -> SdkError<GetObjectError> {
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        SdkError::service_error(error, raw)
    }

    fn generic(code: &str) -> GetObjectError {
        GetObjectError::generic(ErrorMetadata::builder().code(code).message("msg").build())
    }

    #[test]
    fn debug_redacts_the_secret() {
        let text = format!("{:?}", settings("http://x"));
        assert!(!text.contains("very-secret"), "{text}");
        assert!(
            text.contains("<redacted>") && text.contains("GKid"),
            "{text}"
        );
        let store = S3Store::new(settings("http://x")).unwrap();
        assert!(!format!("{store:?}").contains("very-secret"));
    }

    #[test]
    fn bad_settings_are_permanent() {
        let mut s = settings("http://x");
        s.max_concurrency = 0;
        assert!(matches!(S3Store::new(s), Err(StoreError::Permanent(_))));
        let mut s = settings("http://x");
        s.bucket.clear();
        assert!(matches!(S3Store::new(s), Err(StoreError::Permanent(_))));
    }

    #[test]
    fn errors_are_classified() {
        let no_such_key = GetObjectError::NoSuchKey(NoSuchKey::builder().build());
        // What Garage 2.5.0 on LMDB answers for an over-long key.
        let garage_lmdb_too_long = GetObjectError::generic(
            ErrorMetadata::builder()
                .code("ServiceUnavailable")
                .message("Internal error: Could not reach quorum of 1 (sets=Some(1)). 0 of 1 request succeeded, others returned errors: [\"7aa5: DB error: database error: LMDB: MDB_BAD_VALSIZE: Unsupported size of key/DB name/data, or wrong DUPFIXED size\"]")
                .build(),
        );
        let cases = [
            (service_error(404, no_such_key), "NotFound"),
            (service_error(404, generic("NoSuchBucket")), "Permanent"),
            (service_error(404, generic("Whatever")), "NotFound"),
            (service_error(403, generic("AccessDenied")), "Permanent"),
            (service_error(400, generic("InvalidRequest")), "Permanent"),
            (
                service_error(503, generic("ServiceUnavailable")),
                "Transient",
            ),
            (service_error(500, generic("InternalError")), "Transient"),
            (service_error(502, generic("")), "Transient"),
            (service_error(429, generic("")), "Transient"),
            (service_error(400, generic("RequestTimeout")), "Transient"),
            (service_error(503, generic("SlowDown")), "Transient"),
            (service_error(503, garage_lmdb_too_long), "Permanent"),
            (SdkError::timeout_error("too slow"), "Transient"),
            (SdkError::construction_failure("bad input"), "Permanent"),
        ];
        for (err, want) in cases {
            let got = classify("GET", "k", err);
            let got_name = match &got {
                StoreError::NotFound(_) => "NotFound",
                StoreError::Transient(_) => "Transient",
                StoreError::Permanent(_) => "Permanent",
                StoreError::InvalidKey(_) => "InvalidKey",
            };
            assert_eq!(got_name, want, "{got}");
        }
        let text = classify("GET", "users/k", service_error(503, generic("SlowDown"))).to_string();
        assert!(
            text.contains("users/k") && text.contains("503") && text.contains("SlowDown"),
            "{text}"
        );
        assert!(text.contains("msg") && text.len() < 200, "{text}");
    }

    #[test]
    fn backoff_grows_to_the_cap() {
        for retry in 0..40 {
            let d = backoff(retry);
            let ceiling = (BACKOFF_BASE * 2u32.saturating_pow(retry.min(20))).min(BACKOFF_CAP);
            assert!(
                d >= ceiling / 2 && d <= ceiling + Duration::from_micros(1),
                "{retry}: {d:?}"
            );
        }
    }

    /// Nothing listens on the endpoint: every attempt is refused, the store
    /// retries `max_retries` times, then reports a transient error that
    /// still says what happened.
    #[tokio::test]
    async fn unreachable_endpoint_is_transient_after_retries() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut s = settings(&format!("http://127.0.0.1:{port}"));
        s.max_retries = 2;
        let store = S3Store::new(s).unwrap();
        let err = store.get("some/key").await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("some/key") && text.contains("after 3 attempts"),
            "{text}"
        );
        assert!(text.contains("onnection refused"), "{text}");
        // Invalid keys never reach the network.
        assert!(matches!(
            store.get("a//b").await,
            Err(StoreError::InvalidKey(_))
        ));
    }

    /// A one-connection-at-a-time HTTP server answering every request with
    /// `answer` (headers and body, written in the pieces given, flushed one
    /// by one), then closing: a fake S3 endpoint that behaves badly.
    async fn fake_endpoint(answer: Vec<Vec<u8>>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    for piece in answer {
                        if socket.write_all(&piece).await.is_err() {
                            return;
                        }
                        let _ = socket.flush().await;
                        tokio::task::yield_now().await;
                    }
                });
            }
        });
        format!("http://{addr}")
    }

    /// A body sent in many chunks (chunked transfer encoding, each chunk
    /// written on its own, as Garage streams blocks) comes back whole and
    /// in order.
    #[tokio::test]
    async fn a_body_in_many_chunks_is_read_whole() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut answer = vec![
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec(),
        ];
        for chunk in body.chunks(7_001) {
            let mut piece = format!("{:x}\r\n", chunk.len()).into_bytes();
            piece.extend_from_slice(chunk);
            piece.extend_from_slice(b"\r\n");
            answer.push(piece);
        }
        answer.push(b"0\r\n\r\n".to_vec());
        let store = S3Store::new(settings(&fake_endpoint(answer).await)).unwrap();
        let got = store.get("some/key").await.unwrap();
        assert_eq!(got.len(), body.len());
        assert!(got == body, "the chunks came back out of order or changed");
    }

    /// An answer announcing a terabyte and sending a little, in pieces,
    /// before closing: a transient error, not a short object (nor an
    /// allocation of what was announced).
    #[tokio::test]
    async fn a_body_cut_short_is_a_transient_error() {
        let answer = vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n".to_vec(),
            b"0123456789".to_vec(),
            vec![b'x'; 70_000],
            b"9876543210".to_vec(),
        ];
        let mut s = settings(&fake_endpoint(answer).await);
        s.max_retries = 1;
        let store = S3Store::new(s).unwrap();
        let err = store.get("some/key").await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("some/key"), "{err}");
    }

    /// Headers in one write, then the body in one to five more (Garage
    /// writes headers first, then the body as it reads it): the object
    /// is read whole through the client that acknowledges every read.
    #[tokio::test]
    async fn a_body_after_its_headers_is_read_whole() {
        for pieces in [1usize, 2, 5] {
            let body: Vec<u8> = (0..30_000u32).map(|i| (i % 199) as u8).collect();
            let mut answer = vec![
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes(),
            ];
            for part in body.chunks(body.len().div_ceil(pieces)) {
                answer.push(part.to_vec());
            }
            let store = S3Store::new(settings(&fake_endpoint(answer).await)).unwrap();
            let got = store.get("k").await.unwrap();
            assert!(got == body, "{pieces} pieces: {} bytes back", got.len());
        }
    }
}
