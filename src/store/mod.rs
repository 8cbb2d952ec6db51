//! The object store (doc/storage.md, "Object names"): one small trait,
//! [`ObjectStore`], and three backends behind it — [`S3Store`] (any S3, Garage
//! in production), [`FsStore`] (a local directory, the embedded default) and
//! [`MemoryStore`] (tests, with fault injection).
//!
//! What every backend promises, and all that the rest of Facteur may assume:
//!
//! - a `put` that returned `Ok` is visible to every later `get` and `list`;
//!   puts overwrite; there is no conditional write and no compare-and-swap;
//! - `list` yields keys in ascending byte order, strictly after
//!   `start_after`, at most [`MAX_LIST`] per page;
//! - every key is checked by [`check_key`] before any I/O, so a bad key is
//!   [`StoreError::InvalidKey`] on every backend alike;
//! - errors say whether retrying can help ([`StoreError::is_transient`]):
//!   a storage hiccup must never turn into a permanent failure (a bounced
//!   mail), and a misconfiguration must not be retried forever.
//!
//! `aws-sdk-s3` is used in this module only (STYLE.md, layout).

pub mod fs;
pub mod layout;
pub mod memory;
pub mod metered;
pub mod s3;
mod s3_http;

pub use fs::FsStore;
pub use memory::MemoryStore;
pub use metered::Metered;
pub use s3::{S3Settings, S3Store};

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

/// Longest key accepted, in bytes. S3 allows 1024, but Garage on LMDB (its
/// default metadata engine) does not: measured on Garage 2.5.0, a PUT of a
/// 472-byte key succeeds and its DELETE then fails with a 503 (LMDB
/// `MDB_BAD_VALSIZE`), and PUT fails from 480 bytes. 400 leaves a margin;
/// Facteur's own keys stay under 200 bytes (doc/storage.md, "Object names").
pub const MAX_KEY_LEN: usize = 400;

/// Longest segment (text between two `/`) accepted, in bytes: the usual
/// file-name limit (`NAME_MAX`), so that every key S3 takes also fits the
/// fs backend.
pub const MAX_SEGMENT_LEN: usize = 255;

/// Most keys one `list` call returns, whatever `limit` asks for. It is S3's
/// own page size; memory and fs apply it too, so callers that forget to page
/// fail in unit tests rather than in production.
pub const MAX_LIST: usize = 1000;

/// What went wrong with a store call. Every variant carries the key or the
/// cause text (for S3: the SDK error with its code and source chain).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist (only `get` and `get_range` report this).
    #[error("object not found: {0}")]
    NotFound(String),
    /// The key (or list prefix) breaks [`check_key`]'s rules; nothing was
    /// sent to the store.
    #[error("invalid object key: {0}")]
    InvalidKey(String),
    /// Retrying later may succeed: network errors, timeouts, throttling,
    /// 5xx, "could not reach quorum", a full disk. The S3 backend has
    /// already retried these before returning one.
    #[error("transient store error: {0}")]
    Transient(String),
    /// Retrying will not help until someone acts: access denied, missing
    /// bucket, bad configuration, a key that collides with a directory.
    #[error("store error: {0}")]
    Permanent(String),
}

impl StoreError {
    /// True when the same call may succeed later (see [`StoreError::Transient`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient(_))
    }

    /// True when the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound(_))
    }
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The full key (prefix included).
    pub key: String,
    /// Object size in bytes.
    pub size: u64,
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Keys in ascending byte order.
    pub objects: Vec<ObjectMeta>,
    /// More keys may follow: ask again with `start_after` set to the last
    /// key of `objects`.
    pub truncated: bool,
}

/// One page of a listing of keys alone ([`ObjectStore::list_keys`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPage {
    /// Keys in ascending byte order.
    pub keys: Vec<String>,
    /// More keys may follow: ask again with `start_after` set to the last.
    pub truncated: bool,
}

/// The operations Facteur needs from an object store, and nothing
/// store-specific (no conditional PUT, no K2V; doc/storage.md, "Object names").
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores `body` under `key`, replacing any previous object. Once this
    /// returns `Ok`, every later `get` and `list` sees the new object.
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError>;

    /// The whole object; [`StoreError::NotFound`] if it does not exist.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;

    /// Bytes `[range.start, min(range.end, size))` of the object: empty if
    /// `range.start >= size` or the range is empty; [`StoreError::NotFound`]
    /// if the object does not exist.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError>;

    /// Removes the object. Removing a missing object is `Ok` (idempotent).
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Removes every listed object (missing ones are fine). All keys are
    /// checked before anything is deleted. Not atomic: on error, some keys
    /// may be gone already.
    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError>;

    /// Keys beginning with `prefix` and strictly greater than `start_after`,
    /// in ascending byte order, at most `limit` of them (clamped to
    /// `1..=MAX_LIST`). The prefix follows [`check_key`]'s rules except that
    /// it may be empty, end with `/`, or end in a partial segment.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, StoreError>;

    /// [`ObjectStore::list`] without the sizes, for callers that need the
    /// keys alone (a log sync, the change hints): a store that must look
    /// each object up for its size (the fs backend: a `stat` per key)
    /// does not. A key deleted while the listing runs may still be listed,
    /// as an S3 listing may list it.
    async fn list_keys(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, StoreError> {
        let page = self.list(prefix, start_after, limit).await?;
        Ok(KeyPage {
            keys: page.objects.into_iter().map(|o| o.key).collect(),
            truncated: page.truncated,
        })
    }
}

/// A store shared by every part of the server.
pub type SharedStore = Arc<dyn ObjectStore>;

/// Every key under `prefix` after `start_after`, paging through
/// [`ObjectStore::list`] until the store says it is done.
pub async fn list_all(
    store: &dyn ObjectStore,
    prefix: &str,
    start_after: Option<&str>,
) -> Result<Vec<ObjectMeta>, StoreError> {
    all_pages(store, prefix, start_after).await
}

/// [`list_all`] for the keys alone ([`ObjectStore::list_keys`]).
pub async fn list_all_keys(
    store: &dyn ObjectStore,
    prefix: &str,
    start_after: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    all_pages(store, prefix, start_after).await
}

/// What a listing lists: an object with its size, or a key alone.
trait Listed: Sized + Send {
    fn key(&self) -> &str;

    /// One page of `store`'s listing, and whether it is truncated.
    fn page(
        store: &dyn ObjectStore,
        prefix: &str,
        after: Option<&str>,
    ) -> impl Future<Output = Result<(Vec<Self>, bool), StoreError>> + Send;
}

impl Listed for ObjectMeta {
    fn key(&self) -> &str {
        &self.key
    }

    async fn page(
        store: &dyn ObjectStore,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<(Vec<Self>, bool), StoreError> {
        let page = store.list(prefix, after, MAX_LIST).await?;
        Ok((page.objects, page.truncated))
    }
}

impl Listed for String {
    fn key(&self) -> &str {
        self
    }

    async fn page(
        store: &dyn ObjectStore,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<(Vec<Self>, bool), StoreError> {
        let page = store.list_keys(prefix, after, MAX_LIST).await?;
        Ok((page.keys, page.truncated))
    }
}

/// Every entry under `prefix` after `start_after`, page after page, each
/// asked after the last key of the one before, until one is not truncated.
async fn all_pages<T: Listed>(
    store: &dyn ObjectStore,
    prefix: &str,
    start_after: Option<&str>,
) -> Result<Vec<T>, StoreError> {
    let mut all: Vec<T> = Vec::new();
    let mut after = start_after.map(str::to_owned);
    loop {
        let (entries, truncated) = T::page(store, prefix, after.as_deref()).await?;
        let Some(last) = entries.last() else {
            if truncated {
                // A truncated empty page would make us loop forever.
                return Err(StoreError::Transient(format!(
                    "listing {prefix:?} returned an empty page marked truncated"
                )));
            }
            return Ok(all);
        };
        after = Some(last.key().to_owned());
        all.extend(entries);
        if !truncated {
            return Ok(all);
        }
    }
}

/// Bytes a key may contain: a set that needs no escaping in a URL path or
/// a file name and cannot be mistaken for the fs backend's temporary files.
fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'+' | b'=' | b'-')
}

/// Validates an object key: non-empty, at most [`MAX_KEY_LEN`] (400) bytes, ASCII
/// `[A-Za-z0-9._/+=-]` only, no leading `/`, no empty, `.` or `..` segment,
/// no segment longer than [`MAX_SEGMENT_LEN`]. Every backend calls it
/// before any I/O.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = |why: &str| Err(StoreError::InvalidKey(format!("{key:?}: {why}")));
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > MAX_KEY_LEN {
        return bad("longer than MAX_KEY_LEN (400) bytes");
    }
    if let Some(b) = key.bytes().find(|&b| !is_key_byte(b)) {
        return bad(&format!("byte 0x{b:02x} is not allowed"));
    }
    for segment in key.split('/') {
        check_segment(segment).or_else(&bad)?;
    }
    Ok(())
}

/// Whether `segment` may be one segment of a key (what [`check_key`]
/// checks of each).
pub(crate) fn is_key_segment(segment: &str) -> bool {
    segment.bytes().all(|b| b != b'/' && is_key_byte(b)) && check_segment(segment).is_ok()
}

fn check_segment(segment: &str) -> Result<(), &'static str> {
    match segment {
        "" => Err("empty segment (leading, trailing or double '/')"),
        "." | ".." => Err("'.' or '..' segment"),
        s if s.len() > MAX_SEGMENT_LEN => Err("segment longer than 255 bytes"),
        _ => Ok(()),
    }
}

/// Validates a list prefix: like [`check_key`], except that it may be empty
/// and its last segment may be empty (`"users/"`) or partial (`"users/ab"`).
pub fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    let bad = |why: &str| Err(StoreError::InvalidKey(format!("prefix {prefix:?}: {why}")));
    if prefix.len() > MAX_KEY_LEN {
        return bad("longer than MAX_KEY_LEN (400) bytes");
    }
    if let Some(b) = prefix.bytes().find(|&b| !is_key_byte(b)) {
        return bad(&format!("byte 0x{b:02x} is not allowed"));
    }
    let mut segments = prefix.split('/');
    let last = segments.next_back().unwrap_or("");
    for segment in segments {
        check_segment(segment).or_else(&bad)?;
    }
    if last.len() > MAX_SEGMENT_LEN {
        return bad("segment longer than 255 bytes");
    }
    Ok(())
}

/// `limit` as every backend applies it.
fn clamp_limit(limit: usize) -> usize {
    limit.clamp(1, MAX_LIST)
}

/// The part of `[range.start, range.end)` that lies inside an object of
/// `size` bytes, as `usize` offsets (empty when nothing does).
fn clamp_range(range: &Range<u64>, size: u64) -> Range<usize> {
    let end = range.end.min(size);
    let start = range.start.min(end);
    // Both are <= size, which came from an in-memory or on-disk length.
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    to_usize(start)..to_usize(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_accepted() {
        for key in [
            "a",
            "users/0123abcd/keyring",
            "users/u/mbox/INBOX/log/17-ab",
            "a.b/c_d/e+f=g-h",
            ".hidden/x..y/...",
            &"x".repeat(255),
            &vec!["y".repeat(199); 2].join("/"),
            &format!("{}/{}", "z".repeat(255), "z".repeat(144)),
        ] {
            assert!(check_key(key).is_ok(), "{key:?} should be valid");
        }
    }

    #[test]
    fn keys_rejected() {
        let long_segment = "x".repeat(256);
        let long_key = vec!["y".repeat(200); 2].join("/");
        for key in [
            "",
            "/a",
            "a/",
            "a//b",
            ".",
            "..",
            "a/./b",
            "a/../b",
            "../a",
            "a b",
            "a~b",
            "a\\b",
            "a\0b",
            "caf\u{e9}",
            "a?b",
            "a%2Fb",
            &long_segment,
            &long_key,
        ] {
            let err = check_key(key).expect_err(key);
            assert!(matches!(err, StoreError::InvalidKey(_)), "{key:?}: {err}");
        }
    }

    #[test]
    fn prefixes() {
        for ok in ["", "users/", "users/ab", "a/b/c", "a/.", "a/.."] {
            assert!(check_prefix(ok).is_ok(), "{ok:?}");
        }
        for bad in ["/", "/a", "a//", "../", "a/../b", "a b", "a~"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ranges_clamp() {
        assert_eq!(clamp_range(&(2..5), 10), 2..5);
        assert_eq!(clamp_range(&(8..50), 10), 8..10);
        assert_eq!(clamp_range(&(10..12), 10), 10..10);
        assert_eq!(clamp_range(&(20..30), 10), 10..10);
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 6..3;
        assert_eq!(clamp_range(&backwards, 10), 3..3);
        assert_eq!(clamp_range(&(0..u64::MAX), 0), 0..0);
    }

    #[test]
    fn error_kinds() {
        assert!(StoreError::Transient("x".into()).is_transient());
        assert!(!StoreError::Permanent("x".into()).is_transient());
        assert!(StoreError::NotFound("k".into()).is_not_found());
        assert!(!StoreError::InvalidKey("k".into()).is_not_found());
    }
}
