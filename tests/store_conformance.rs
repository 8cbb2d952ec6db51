//! One conformance suite for every object store backend: each case below is
//! an async fn taking a store and a fresh key prefix, and the `backend!`
//! macro turns every case into one test per backend (memory, fs, s3).
//!
//! The S3 variant runs against the bucket named by `FACTEUR_TEST_S3_*`
//! (`eval "$(scripts/garage.sh start <dir>)"` sets them). Without them it
//! prints a notice and passes, unless `FACTEUR_REQUIRE_S3=1` (set by CI and
//! `scripts/test.sh`), in which case it fails. Every case works under its
//! own random prefix and the harness deletes that prefix afterwards, even
//! when the case panics, so runs can share a bucket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use facteur::store::{
    FsStore, ListPage, MAX_KEY_LEN, MemoryStore, ObjectStore, S3Settings, S3Store, StoreError,
    check_key, list_all, list_all_keys,
};
use futures::{StreamExt, TryStreamExt};
use rand::Rng;

/// A backend under test, with whatever must outlive it.
struct Backend {
    store: Arc<dyn ObjectStore>,
    // The fs backend's directory, removed on drop.
    _dir: Option<tempfile::TempDir>,
}

async fn memory() -> Option<Backend> {
    Some(Backend {
        store: Arc::new(MemoryStore::new()),
        _dir: None,
    })
}

async fn fs() -> Option<Backend> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(dir.path().join("objects")).expect("open fs store");
    Some(Backend {
        store: Arc::new(store),
        _dir: Some(dir),
    })
}

async fn s3() -> Option<Backend> {
    let settings = S3Settings::for_tests("the S3 conformance test")?;
    let store = S3Store::new(settings).expect("S3 settings");
    Some(Backend {
        store: Arc::new(store),
        _dir: None,
    })
}

/// A prefix no other test run uses, so runs can share one bucket.
fn unique_prefix() -> String {
    format!("conformance/{:016x}/", rand::thread_rng().r#gen::<u64>())
}

/// Deletes everything under `prefix`.
async fn clean_up(store: &dyn ObjectStore, prefix: &str) {
    match list_all(store, prefix, None).await {
        Ok(left) => {
            let keys: Vec<String> = left.into_iter().map(|o| o.key).collect();
            if let Err(e) = store.delete_many(&keys).await {
                eprintln!("clean-up of {prefix} failed: {e}");
            }
        }
        Err(e) => eprintln!("clean-up listing of {prefix} failed: {e}"),
    }
}

/// One test per case for the backend `$open`.
macro_rules! backend {
    ($open:ident: $($case:ident),* $(,)?) => {
        mod $open {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(backend) = super::$open().await else { return };
                    let store = backend.store.as_ref();
                    let prefix = super::unique_prefix();
                    let outcome = ::futures::FutureExt::catch_unwind(
                        ::std::panic::AssertUnwindSafe(super::cases::$case(store, &prefix)),
                    )
                    .await;
                    super::clean_up(store, &prefix).await;
                    if let Err(panic) = outcome {
                        ::std::panic::resume_unwind(panic);
                    }
                }
            )*
        }
    };
}

/// Every case, for every backend.
macro_rules! all_backends {
    ($($case:ident),* $(,)?) => {
        backend!(memory: $($case),*);
        backend!(fs: $($case),*);
        backend!(s3: $($case),*);
    };
}

all_backends!(
    put_get_round_trip,
    overwrite_replaces,
    get_missing_is_not_found,
    get_range,
    empty_object,
    large_object,
    delete_is_idempotent,
    delete_many,
    delete_many_over_a_thousand_keys,
    list_prefix_is_a_string_prefix,
    list_byte_order_across_nesting,
    list_op_shaped_names,
    list_start_after,
    list_pages,
    list_long_pages_as_prefixes_grow_and_shrink,
    list_empty_prefix_and_missing,
    all_key_bytes,
    invalid_keys_rejected,
    concurrent_puts,
    latency_report,
);

fn keys(page: &ListPage) -> Vec<String> {
    page.objects.iter().map(|o| o.key.clone()).collect()
}

/// Puts every `(name, body)` under `p`, 32 at a time.
async fn put_all(store: &dyn ObjectStore, p: &str, names: &[String], body: &Bytes) {
    futures::stream::iter(names)
        .map(|name| {
            let key = format!("{p}{name}");
            let body = body.clone();
            async move { store.put(&key, body).await }
        })
        .buffer_unordered(32)
        .try_collect::<()>()
        .await
        .expect("put");
}

/// Every key under `prefix`, listed one per page; fails if paging goes on
/// past `most` keys.
async fn paged_one_by_one(store: &dyn ObjectStore, prefix: &str, most: usize) -> Vec<String> {
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list(prefix, after.as_deref(), 1).await.unwrap();
        paged.extend(keys(&page));
        after = paged.last().cloned();
        if !page.truncated {
            return paged;
        }
        assert!(paged.len() <= most, "paging does not end");
    }
}

async fn listed(store: &dyn ObjectStore, prefix: &str, after: Option<&str>) -> Vec<String> {
    let all: Vec<String> = list_all(store, prefix, after)
        .await
        .expect("list_all")
        .into_iter()
        .map(|o| o.key)
        .collect();
    let keys = list_all_keys(store, prefix, after)
        .await
        .expect("list_all_keys");
    assert_eq!(keys, all, "the keys alone are the keys listed");
    all
}

mod cases {
    use super::*;

    pub async fn put_get_round_trip(s: &dyn ObjectStore, p: &str) {
        let key = format!("{p}users/u1/blob/abc");
        let body: Bytes = (0..=255u8).cycle().take(3000).collect::<Vec<u8>>().into();
        s.put(&key, body.clone()).await.unwrap();
        assert_eq!(s.get(&key).await.unwrap(), body);
        let page = s.list(p, None, 10).await.unwrap();
        assert_eq!(keys(&page), std::slice::from_ref(&key));
        assert_eq!(page.objects[0].size, 3000);
        assert!(!page.truncated);
    }

    pub async fn overwrite_replaces(s: &dyn ObjectStore, p: &str) {
        let key = format!("{p}k");
        s.put(&key, Bytes::from_static(b"first version, long"))
            .await
            .unwrap();
        s.put(&key, Bytes::from_static(b"second")).await.unwrap();
        assert_eq!(s.get(&key).await.unwrap(), "second");
        let page = s.list(p, None, 10).await.unwrap();
        assert_eq!(keys(&page), [key]);
        assert_eq!(page.objects[0].size, 6);
    }

    pub async fn get_missing_is_not_found(s: &dyn ObjectStore, p: &str) {
        let err = s.get(&format!("{p}nope")).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(!err.is_transient());
        assert!(err.to_string().contains("nope"), "{err}");
        // Nested under a missing directory too.
        let err = s.get(&format!("{p}no/such/dir/key")).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
    }

    pub async fn get_range(s: &dyn ObjectStore, p: &str) {
        let key = format!("{p}r");
        let body: Bytes = (0..100u8).collect::<Vec<u8>>().into();
        s.put(&key, body.clone()).await.unwrap();
        let cases: [(std::ops::Range<u64>, &[u8]); 9] = [
            (10..20, &body[10..20]),
            (0..100, &body[..]),
            (0..1, &body[..1]),
            (99..100, &body[99..]),
            (90..200, &body[90..]),
            (0..u64::MAX, &body[..]),
            (100..110, b""),
            (150..160, b""),
            (5..5, b""),
        ];
        for (range, want) in cases {
            let got = s.get_range(&key, range.clone()).await.unwrap();
            assert_eq!(&got[..], want, "range {range:?}");
        }
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 20..10;
        assert_eq!(s.get_range(&key, backwards).await.unwrap(), "");
        for range in [0..10, 5..5, 200..300] {
            let err = s
                .get_range(&format!("{p}missing"), range)
                .await
                .unwrap_err();
            assert!(err.is_not_found(), "{err}");
        }
    }

    pub async fn empty_object(s: &dyn ObjectStore, p: &str) {
        let key = format!("{p}empty");
        s.put(&key, Bytes::new()).await.unwrap();
        assert_eq!(s.get(&key).await.unwrap(), "");
        assert_eq!(s.get_range(&key, 0..10).await.unwrap(), "");
        assert_eq!(s.get_range(&key, 0..0).await.unwrap(), "");
        let page = s.list(p, None, 10).await.unwrap();
        assert_eq!(keys(&page), std::slice::from_ref(&key));
        assert_eq!(page.objects[0].size, 0);
        s.delete(&key).await.unwrap();
        assert!(s.get(&key).await.unwrap_err().is_not_found());
    }

    pub async fn large_object(s: &dyn ObjectStore, p: &str) {
        let key = format!("{p}large");
        let mut rng = rand::thread_rng();
        let body: Bytes = (0..5 * 1024 * 1024)
            .map(|_| rng.r#gen::<u8>())
            .collect::<Vec<u8>>()
            .into();
        s.put(&key, body.clone()).await.unwrap();
        let got = s.get(&key).await.unwrap();
        assert!(got == body, "5 MiB object came back different");
        // A range across a 1 MiB boundary (Garage's block size).
        let (a, b) = (1024 * 1024 - 10, 1024 * 1024 + 20);
        let got = s.get_range(&key, a as u64..b as u64).await.unwrap();
        assert_eq!(got, body.slice(a..b));
        let tail = s.get_range(&key, 5 * 1024 * 1024 - 3..u64::MAX).await;
        assert_eq!(tail.unwrap(), body.slice(body.len() - 3..));
        let page = s.list(p, None, 10).await.unwrap();
        assert_eq!(page.objects[0].size, 5 * 1024 * 1024);
    }

    pub async fn delete_is_idempotent(s: &dyn ObjectStore, p: &str) {
        let key = format!("{p}d/e/l");
        s.delete(&key).await.unwrap();
        s.put(&key, Bytes::from_static(b"x")).await.unwrap();
        s.delete(&key).await.unwrap();
        assert!(s.get(&key).await.unwrap_err().is_not_found());
        s.delete(&key).await.unwrap();
        assert!(s.list(p, None, 10).await.unwrap().objects.is_empty());
        // The prefix is usable again after its last key went away.
        s.put(&key, Bytes::from_static(b"y")).await.unwrap();
        assert_eq!(s.get(&key).await.unwrap(), "y");
    }

    pub async fn delete_many(s: &dyn ObjectStore, p: &str) {
        s.delete_many(&[]).await.unwrap();
        let names: Vec<String> = (0..10).map(|i| format!("m/{i}")).collect();
        put_all(s, p, &names, &Bytes::from_static(b"x")).await;
        let mut doomed: Vec<String> = names[..6].iter().map(|n| format!("{p}{n}")).collect();
        doomed.push(format!("{p}m/never-existed"));
        s.delete_many(&doomed).await.unwrap();
        let left = listed(s, p, None).await;
        let want: Vec<String> = names[6..].iter().map(|n| format!("{p}{n}")).collect();
        assert_eq!(left, want);
        // One bad key: nothing is deleted.
        let mut with_bad = want.clone();
        with_bad.push("bad//key".to_owned());
        let err = s.delete_many(&with_bad).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidKey(_)), "{err}");
        assert_eq!(listed(s, p, None).await, want);
    }

    pub async fn delete_many_over_a_thousand_keys(s: &dyn ObjectStore, p: &str) {
        let names: Vec<String> = (0..1100).map(|i| format!("many/{i:05}")).collect();
        let started = Instant::now();
        put_all(s, p, &names, &Bytes::from_static(b"tiny")).await;
        let put_time = started.elapsed();
        let all = listed(s, p, None).await;
        assert_eq!(all.len(), 1100);
        let started = Instant::now();
        s.delete_many(&all).await.unwrap();
        let delete_time = started.elapsed();
        assert!(listed(s, p, None).await.is_empty());
        eprintln!(
            "{}: 1100 puts (32 in flight) {put_time:?}, delete_many {delete_time:?}",
            short(s)
        );
    }

    pub async fn list_prefix_is_a_string_prefix(s: &dyn ObjectStore, p: &str) {
        let names = [
            "a/b/x", "a/b/y/z", "a/bc", "a/b-c", "a/b.d", "a/b+e", "a/b0", "a/c",
        ];
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        put_all(s, p, &names, &Bytes::new()).await;
        let under = |n: &[&str]| -> Vec<String> { n.iter().map(|n| format!("{p}{n}")).collect() };
        assert_eq!(
            listed(s, &format!("{p}a/b/"), None).await,
            under(&["a/b/x", "a/b/y/z"])
        );
        assert_eq!(
            listed(s, &format!("{p}a/b"), None).await,
            under(&[
                "a/b+e", "a/b-c", "a/b.d", "a/b/x", "a/b/y/z", "a/b0", "a/bc"
            ])
        );
        assert_eq!(listed(s, &format!("{p}a/bc"), None).await, under(&["a/bc"]));
        assert_eq!(
            listed(s, &format!("{p}a/b/y/"), None).await,
            under(&["a/b/y/z"])
        );
        assert!(listed(s, &format!("{p}a/bz"), None).await.is_empty());
        assert_eq!(listed(s, p, None).await.len(), names.len());
    }

    pub async fn list_byte_order_across_nesting(s: &dyn ObjectStore, p: &str) {
        let names = [
            "x/a-c", "x/a/b", "x/a.b/c", "x/a0", "x/a/a/a", "x/A", "x/a=b", "x/a+", "x/Z/z", "x/_",
            "x/a/b-", "x/a/b0/1", "x/0", "x/9/9",
        ];
        let mut names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        put_all(s, p, &names, &Bytes::from_static(b"o")).await;
        names.sort_unstable();
        let want: Vec<String> = names.iter().map(|n| format!("{p}{n}")).collect();
        assert_eq!(listed(s, p, None).await, want);
        // The same order one key per page.
        assert_eq!(paged_one_by_one(s, p, want.len()).await, want);
    }

    /// Names shaped like op names (16 hex digits of a clock, `-`, more),
    /// which the fs backend keeps in per-minute directories, among names
    /// that sort between them and are not: every listing, prefix, cursor
    /// and page answers as a plain sorted set would.
    pub async fn list_op_shaped_names(s: &dyn ObjectStore, p: &str) {
        let names = [
            "log/0000019af3c1ffff-00000000-z",
            "log/0000019af3c2",
            "log/0000019af3c2-x",
            "log/0000019af3c2D1E0-00000000-e",
            "log/0000019af3c2d1e0-",
            "log/0000019af3c2d1e0-00000000-a",
            "log/0000019af3c2d1e0-00000001-b",
            "log/0000019af3c2d1e0-00000001-b.t1",
            "log/0000019af3c2ffff-00000000-c",
            "log/0000019af3c2zz",
            "log/0000019af3c3000a-00000000-d",
            "log/0000019af3c3000a0",
            "log/1",
            "log0/0000019af3c2d1e0-00000000-a",
            "logz",
        ];
        let mut model: Vec<String> = names.iter().map(|n| format!("{p}{n}")).collect();
        let relative: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        put_all(s, p, &relative, &Bytes::from_static(b"op")).await;
        model.sort_unstable();
        assert_eq!(listed(s, p, None).await, model);
        for key in &model {
            assert_eq!(s.get(key).await.unwrap(), Bytes::from_static(b"op"));
        }
        // Every cursor: each key, just before and just after it.
        let mut cursors: Vec<String> = Vec::new();
        for key in &model {
            cursors.push(key.clone());
            cursors.push(format!("{key}0"));
            cursors.push(key[..key.len() - 1].to_owned());
        }
        // Prefixes of two op names cut around the shard's digits (12),
        // the clock's (16) and the first `-`.
        let mut prefixes: Vec<String> = vec![p.to_owned()];
        for name in ["0000019af3c2d1e0-00000000-a", "0000019af3c3000a-00000000-d"] {
            let key = format!("{p}log/{name}");
            for end in [4, 15, 16, 17, 20, 21, key.len() - p.len()] {
                prefixes.push(key[..p.len() + end].to_owned());
            }
        }
        for prefix in &prefixes {
            // A cursor sorting before the prefix and outside it: Garage
            // starts at the cursor and stops at the first key outside the
            // prefix, so it answers nothing where S3 lists the prefix.
            // Facteur's cursors always start with their prefix.
            let cursors = cursors
                .iter()
                .filter(|c| c.starts_with(prefix.as_str()) || c.as_str() >= prefix.as_str());
            for after in std::iter::once(None).chain(cursors.map(Some)) {
                let want: Vec<String> = model
                    .iter()
                    .filter(|k| k.starts_with(prefix.as_str()))
                    .filter(|k| after.is_none_or(|a| k.as_str() > a.as_str()))
                    .cloned()
                    .collect();
                let got = listed(s, prefix, after.map(String::as_str)).await;
                assert_eq!(got, want, "prefix {prefix:?} after {after:?}");
            }
        }
        // One key per page.
        assert_eq!(paged_one_by_one(s, p, model.len()).await, model);
        // Deleting one at a time leaves the others, in order.
        while let Some(key) = model.pop() {
            s.delete(&key).await.unwrap();
            assert!(matches!(s.get(&key).await, Err(StoreError::NotFound(_))));
            assert_eq!(listed(s, p, None).await, model);
        }
    }

    pub async fn list_start_after(s: &dyn ObjectStore, p: &str) {
        let names = ["k/1", "k/2", "k/3/a", "k/3/b", "k/4"];
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        put_all(s, p, &names, &Bytes::new()).await;
        let k = format!("{p}k/");
        let under = |n: &[&str]| -> Vec<String> { n.iter().map(|n| format!("{p}{n}")).collect() };
        let after = |a: &str| format!("{p}{a}");
        // After an existing key.
        assert_eq!(
            listed(s, &k, Some(&after("k/2"))).await,
            under(&["k/3/a", "k/3/b", "k/4"])
        );
        // After a key that does not exist.
        assert_eq!(
            listed(s, &k, Some(&after("k/1x"))).await,
            under(&["k/2", "k/3/a", "k/3/b", "k/4"])
        );
        // After a "directory": its keys are greater.
        assert_eq!(
            listed(s, &k, Some(&after("k/3/"))).await,
            under(&["k/3/a", "k/3/b", "k/4"])
        );
        assert_eq!(
            listed(s, &k, Some(&after("k/3"))).await,
            under(&["k/3/a", "k/3/b", "k/4"])
        );
        // Inside a directory.
        assert_eq!(
            listed(s, &k, Some(&after("k/3/a"))).await,
            under(&["k/3/b", "k/4"])
        );
        // Past everything, and before the prefix.
        assert!(listed(s, &k, Some(&after("k/5"))).await.is_empty());
        assert!(listed(s, &k, Some(&after("l"))).await.is_empty());
        assert_eq!(
            listed(s, &k, Some(p)).await,
            under(&names.iter().map(String::as_str).collect::<Vec<_>>())
        );
    }

    pub async fn list_pages(s: &dyn ObjectStore, p: &str) {
        let names: Vec<String> = (0..25).map(|i| format!("pg/{i:02}")).collect();
        put_all(s, p, &names, &Bytes::from_static(b"page")).await;
        let mut sizes = Vec::new();
        let mut flags = Vec::new();
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = s.list(p, after.as_deref(), 7).await.unwrap();
            sizes.push(page.objects.len());
            flags.push(page.truncated);
            all.extend(keys(&page));
            after = all.last().cloned();
            if !page.truncated {
                break;
            }
        }
        assert_eq!(sizes, [7, 7, 7, 4]);
        assert_eq!(flags, [true, true, true, false]);
        // The same pages, keys alone.
        let mut key_pages = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = s.list_keys(p, after.as_deref(), 7).await.unwrap();
            after = page.keys.last().cloned();
            let truncated = page.truncated;
            key_pages.push((page.keys.len(), truncated));
            if !truncated {
                break;
            }
        }
        assert_eq!(key_pages, [(7, true), (7, true), (7, true), (4, false)]);
        let want: Vec<String> = names.iter().map(|n| format!("{p}{n}")).collect();
        assert_eq!(all, want);
        // Exactly `limit` keys left: not truncated.
        let page = s.list(p, Some(&want[17]), 7).await.unwrap();
        assert_eq!(keys(&page), &want[18..]);
        assert!(!page.truncated);
        // A limit of 0 is taken as 1.
        let page = s.list(p, None, 0).await.unwrap();
        assert_eq!(keys(&page), &want[..1]);
        assert!(page.truncated);
        assert!(page.objects.iter().all(|o| o.size == 4));
    }

    /// One call's page is whole however many requests make it up (the S3
    /// backend asks for few keys first and more after, sized by what the
    /// prefix held last time), and stays whole as the prefix grows from
    /// nothing, shrinks and grows again, from the start or from a cursor.
    pub async fn list_long_pages_as_prefixes_grow_and_shrink(s: &dyn ObjectStore, p: &str) {
        let q = format!("{p}grow/");
        let all: Vec<String> = (0..600).map(|i| format!("{q}{i:04}")).collect();
        async fn check(
            s: &dyn ObjectStore,
            q: &str,
            held: &[String],
            after: Option<&String>,
            limit: usize,
        ) {
            let page = s.list(q, after.map(String::as_str), limit).await.unwrap();
            let rest: Vec<&String> = held
                .iter()
                .filter(|k| after.is_none_or(|a| *k > a))
                .collect();
            let want: Vec<String> = rest.iter().take(limit).map(|k| k.to_string()).collect();
            assert_eq!(keys(&page), want, "limit {limit} after {after:?}");
            assert_eq!(
                page.truncated,
                rest.len() > limit,
                "limit {limit} after {after:?}"
            );
            let key_page = s
                .list_keys(q, after.map(String::as_str), limit)
                .await
                .unwrap();
            assert_eq!(key_page.keys, want, "keys alone, limit {limit}");
            assert_eq!(key_page.truncated, rest.len() > limit);
        }
        // Nothing yet, then a few keys, then many: each listed whole.
        check(s, &q, &[], None, 1000).await;
        let mut held: Vec<String> = Vec::new();
        for upto in [3, 40, 300, 600] {
            let names: Vec<String> = all[held.len()..upto]
                .iter()
                .map(|k| k[p.len()..].to_owned())
                .collect();
            put_all(s, p, &names, &Bytes::from_static(b"g")).await;
            held = all[..upto].to_vec();
            for limit in [1000, upto, upto - 1, 2] {
                check(s, &q, &held, None, limit).await;
                check(s, &q, &held, Some(&all[upto / 3]), limit).await;
            }
        }
        // Most keys gone: a listing sized for 600 finds the few left.
        let gone: Vec<String> = all[5..590].to_vec();
        s.delete_many(&gone).await.unwrap();
        held = all[..5].iter().chain(&all[590..]).cloned().collect();
        check(s, &q, &held, None, 1000).await;
        check(s, &q, &held, Some(&all[2]), 1000).await;
        check(s, &q, &held, None, 14).await;
        // And back to many after a small listing (a limit of 1).
        check(s, &q, &held, None, 1).await;
        let names: Vec<String> = gone.iter().map(|k| k[p.len()..].to_owned()).collect();
        put_all(s, p, &names, &Bytes::from_static(b"g")).await;
        check(s, &q, &all, None, 1).await;
        check(s, &q, &all, None, 1000).await;
        check(s, &q, &all, Some(&all[599]), 1000).await;
    }

    pub async fn list_empty_prefix_and_missing(s: &dyn ObjectStore, p: &str) {
        let page = s
            .list(&format!("{p}nothing/here/"), None, 10)
            .await
            .unwrap();
        assert_eq!(page, ListPage::default());
        s.put(&format!("{p}only"), Bytes::new()).await.unwrap();
        // The empty prefix lists the whole store, our key included (the
        // bucket may hold other runs' keys, so page until we see it).
        let found = list_all(s, "", None).await.unwrap();
        assert!(found.iter().any(|o| o.key == format!("{p}only")));
        assert!(found.windows(2).all(|w| w[0].key < w[1].key));
    }

    pub async fn all_key_bytes(s: &dyn ObjectStore, p: &str) {
        let names = [
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            "abcdefghijklmnopqrstuvwxyz",
            "0123456789",
            "dot.under_plus+eq=dash-",
            "a+b=c/d-e_f.g",
            ".hidden",
            "...",
            "-",
            "+",
            "=",
        ];
        for name in names {
            let key = format!("{p}{name}");
            check_key(&key).unwrap();
            s.put(&key, Bytes::from(name)).await.unwrap();
            assert_eq!(s.get(&key).await.unwrap(), name, "{key}");
            assert_eq!(
                s.get_range(&key, 1..2).await.unwrap(),
                name[1..].get(..1).unwrap_or("")
            );
        }
        let mut want: Vec<String> = names.iter().map(|n| format!("{p}{n}")).collect();
        want.sort_unstable();
        assert_eq!(listed(s, p, None).await, want);
        // Listing with a prefix containing '+' and '=' (URL-encoding traps).
        assert_eq!(
            listed(s, &format!("{p}a+b="), None).await,
            [format!("{p}a+b=c/d-e_f.g")]
        );
        assert_eq!(
            listed(s, p, Some(&format!("{p}a+b=c/d-e_f.g"))).await,
            want[want
                .iter()
                .position(|k| k.ends_with("a+b=c/d-e_f.g"))
                .unwrap()
                + 1..]
        );
        // The longest key accepted (the limit is Garage-on-LMDB's, with a
        // margin; see MAX_KEY_LEN).
        let long = format!("{p}{}", "L".repeat(200));
        let long = format!("{long}/{}", "m".repeat(MAX_KEY_LEN - long.len() - 1));
        assert_eq!(long.len(), MAX_KEY_LEN);
        s.put(&long, Bytes::from_static(b"long")).await.unwrap();
        assert_eq!(s.get(&long).await.unwrap(), "long");
        s.delete(&long).await.unwrap();
    }

    pub async fn invalid_keys_rejected(s: &dyn ObjectStore, p: &str) {
        let long = format!("{p}{}", "x/".repeat(MAX_KEY_LEN / 2));
        let bad = [
            String::new(),
            "/abs".to_owned(),
            format!("{p}trailing/"),
            format!("{p}double//slash"),
            format!("{p}dot/./seg"),
            format!("{p}dot/../seg"),
            "..".to_owned(),
            format!("{p}sp ace"),
            format!("{p}tilde~"),
            format!("{p}caf\u{e9}"),
            format!("{p}nul\0"),
            format!("{p}q?x"),
            format!("{p}pct%2F"),
            format!("{p}back\\slash"),
            format!("{p}{}", "s".repeat(256)),
            long[..long.len() - 1].to_owned(),
        ];
        let is_invalid = |r: Result<(), StoreError>, what: &str, key: &str| match r {
            Err(StoreError::InvalidKey(_)) => {}
            other => panic!("{what} {key:?}: expected InvalidKey, got {other:?}"),
        };
        for key in &bad {
            is_invalid(s.put(key, Bytes::new()).await, "put", key);
            is_invalid(s.get(key).await.map(drop), "get", key);
            is_invalid(s.get_range(key, 0..1).await.map(drop), "get_range", key);
            is_invalid(s.delete(key).await, "delete", key);
            is_invalid(
                s.delete_many(std::slice::from_ref(key)).await,
                "delete_many",
                key,
            );
        }
        for prefix in ["/", "/abs", "a//b", "../x", "a/../b/", "sp ace", "tilde~"] {
            is_invalid(s.list(prefix, None, 10).await.map(drop), "list", prefix);
        }
        // Nothing was written.
        assert!(listed(s, p, None).await.is_empty());
    }

    pub async fn concurrent_puts(s: &dyn ObjectStore, p: &str) {
        // 32 writers of distinct keys and 32 writers of one shared key.
        let shared = format!("{p}shared");
        let versions: Vec<Bytes> = (0..32u8).map(|i| Bytes::from(vec![i; 64 * 1024])).collect();
        let distinct = (0..32).map(|i| {
            let key = format!("{p}c/{i:02}");
            async move { s.put(&key, Bytes::from(key.clone())).await }
        });
        let same = versions.iter().map(|v| s.put(&shared, v.clone()));
        let (a, b) = futures::join!(
            futures::future::join_all(distinct),
            futures::future::join_all(same)
        );
        a.into_iter()
            .chain(b)
            .collect::<Result<Vec<()>, _>>()
            .unwrap();
        let body = s.get(&shared).await.unwrap();
        assert!(versions.contains(&body), "shared key holds a mix");
        let all = listed(s, &format!("{p}c/"), None).await;
        assert_eq!(all.len(), 32);
        for key in all {
            assert_eq!(s.get(&key).await.unwrap(), key.as_bytes());
        }
    }

    /// Not a check: prints sequential latencies (`--nocapture` to see them).
    pub async fn latency_report(s: &dyn ObjectStore, p: &str) {
        const N: usize = 40;
        let body = Bytes::from(vec![7u8; 1024]);
        let mut put = Vec::new();
        let mut get = Vec::new();
        let mut list = Vec::new();
        let mut delete = Vec::new();
        for i in 0..N {
            let key = format!("{p}lat/{i:03}");
            let t = Instant::now();
            s.put(&key, body.clone()).await.unwrap();
            put.push(t.elapsed());
            let t = Instant::now();
            s.get(&key).await.unwrap();
            get.push(t.elapsed());
            let t = Instant::now();
            s.list(&format!("{p}lat/"), None, 100).await.unwrap();
            list.push(t.elapsed());
        }
        for i in 0..N {
            let t = Instant::now();
            s.delete(&format!("{p}lat/{i:03}")).await.unwrap();
            delete.push(t.elapsed());
        }
        let median = |v: &mut Vec<Duration>| {
            v.sort_unstable();
            v[v.len() / 2]
        };
        eprintln!(
            "{} latency, 1 KiB, sequential, median of {N}: put {:?}, get {:?}, \
             list (<= {N} keys) {:?}, delete {:?}",
            short(s),
            median(&mut put),
            median(&mut get),
            median(&mut list),
            median(&mut delete),
        );
    }
}

/// The backend's name for reports.
fn short(s: &dyn ObjectStore) -> String {
    let text = format!("{s:?}");
    text.split(['(', ' ', '{']).next().unwrap_or("").to_owned()
}
