//! Change hints (doc/consistency.md, "Change hints"): how an unlocked account
//! learns at once that another session, another instance or LMTP wrote
//! something it should sync, without polling the store every two seconds.
//!
//! One [`Hints`] per instance. Every account of the instance and its LMTP
//! backend write through a [`Hinted`] store: a successful PUT of a delivery
//! record, an op of a log (mailbox list or mailbox) or a keyring (keyrings
//! are written through the keyring store, which is not wrapped: their
//! writes are not hinted today; `user delete` writes one hint itself with
//! [`announce`])
//! - wakes the other accounts of that user registered here (same instance:
//!   no store call at all), and
//! - writes an empty hint object `hints/<ms>-<tag>-<user>` (at most one in
//!   flight per user: writes that complete while one is queued share it;
//!   and at most one per user per [`SPACING`]), for the other instances.
//!
//! Each instance lists `hints/` once per interval, from a little before its
//! previous listing (clocks differ), and wakes its accounts that the new
//! hints name: one LIST for the whole instance, however many accounts.
//! Nothing is listed while no account here has a session.
//!
//! A hint is only a shortcut: an account that misses one (lost PUT, clock
//! skew beyond the margin, hints disabled) still sees the change at its
//! next fallback poll or client command. The hint names nothing the store
//! does not already show: the user id is the opaque one of `users/<u>/`,
//! whose writes the store's host sees anyway; the tag is a MAC of the time
//! and user under a key random per process, which tells the instance its
//! own hints and the host nothing (a tag shared by a process's hints would
//! show which users one instance serves). Each instance deletes its own hints after [`HINT_TTL`] and,
//! every [`SWEEP_EVERY`], anyone's older than [`STALE`] (an instance that
//! died), so the prefix stays small.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;

use super::Account;
use crate::log::now_ms;
use crate::store::layout::{self, UserId};
use crate::store::{KeyPage, ListPage, MAX_LIST, ObjectStore, SharedStore, StoreError};

/// How far before its previous listing an instance lists again: hints
/// written by a clock this much behind, or landing this late, are seen.
pub const MARGIN: Duration = Duration::from_secs(10);

/// How long an instance keeps the hints it wrote.
pub const HINT_TTL: Duration = Duration::from_secs(120);

/// Hints older than this are anyone's to delete.
pub const STALE: Duration = Duration::from_secs(600);

/// How often an instance deletes stale hints of every instance.
pub const SWEEP_EVERY: Duration = Duration::from_secs(300);

/// Pages one listing reads at most (a burst beyond is left to the
/// fallback poll).
const MAX_PAGES: usize = 10;

/// Hint objects written at once.
const WRITE_PARALLELISM: usize = 8;

/// Least time between two hints of one user from this instance: a write
/// that comes sooner after the user's last hint is covered by one more
/// hint at the end of that time, shared by every write until then. A
/// session writing a few times a second (flags, moves, appends) costs
/// one hint a second, not one per write, and the first write after a
/// quiet while is still hinted at once.
pub const SPACING: Duration = Duration::from_secs(1);

/// An account to wake: its serial and the account.
type Registered = (u64, Weak<Account>);

/// The change hints of one instance.
pub struct Hints {
    /// Random per [`Hints`]: the key of this instance's hint tags
    /// ([`Hints::tag`]), by which its own hints are skipped when listing
    /// (its accounts were woken in memory).
    tag_key: [u8; 32],
    /// How often `hints/` is listed.
    interval: Duration,
    /// Accounts to wake, by user.
    accounts: Mutex<HashMap<UserId, Vec<Registered>>>,
    /// Users whose hint is queued and not yet being written.
    scheduled: Mutex<HashSet<UserId>>,
    /// The writer task's queue, started on first use.
    queue: OnceLock<mpsc::UnboundedSender<(UserId, SharedStore)>>,
    /// Hints this instance wrote, oldest first, with their time.
    written: Mutex<VecDeque<(u64, String)>>,
    /// Whether the listing task runs.
    listening: OnceLock<()>,
}

impl std::fmt::Debug for Hints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hints")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hints {
    /// The tag of this instance's hint for `user` written at `ms`: a MAC
    /// under a key only this process knows, so that this instance knows
    /// its own hints while the store's host cannot tell which users one
    /// instance serves (a tag per process would group them).
    fn tag(&self, ms: u64, user: &UserId) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.tag_key)
            .expect("HMAC takes keys of any length");
        mac.update(layout::hint(ms, "", user).as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..8])
    }

    /// Hints listed every `interval`.
    pub fn new(interval: Duration) -> Arc<Hints> {
        Arc::new(Hints {
            tag_key: rand::random(),
            interval,
            accounts: Mutex::new(HashMap::new()),
            scheduled: Mutex::new(HashSet::new()),
            queue: OnceLock::new(),
            written: Mutex::new(VecDeque::new()),
            listening: OnceLock::new(),
        })
    }

    /// Wakes `account` when its user's data changes; starts listing
    /// `hints/` (needs a tokio runtime: without one, only in-memory wakes).
    pub fn register(self: &Arc<Self>, account: &Arc<Account>) {
        {
            let mut accounts = lock(&self.accounts);
            accounts.retain(|_, v| {
                v.retain(|(_, a)| a.strong_count() > 0);
                !v.is_empty()
            });
            accounts
                .entry(account.user().clone())
                .or_default()
                .push((account.serial(), Arc::downgrade(account)));
        }
        if tokio::runtime::Handle::try_current().is_ok() && self.listening.set(()).is_ok() {
            tokio::spawn(listen(Arc::downgrade(self)));
        }
    }

    /// Wakes the accounts of `user` here, except the one with serial
    /// `except` (the writer: its own state is up to date).
    fn wake(&self, user: &UserId, except: Option<u64>) {
        let woken: Vec<Arc<Account>> = lock(&self.accounts)
            .get(user)
            .into_iter()
            .flatten()
            .filter(|(serial, _)| Some(*serial) != except)
            .filter_map(|(_, a)| a.upgrade())
            .collect();
        for account in woken {
            account.wake();
        }
    }

    /// The store of some account here with a session, if any: listing
    /// is for them only.
    fn listening_store(&self) -> Option<SharedStore> {
        lock(&self.accounts)
            .values()
            .flatten()
            .filter_map(|(_, a)| a.upgrade())
            .find(|a| a.sessions() > 0)
            .map(|a| a.store().clone())
    }

    /// A write for `user` succeeded in `store` (through a [`Hinted`]
    /// whose account has serial `writer`).
    fn changed(self: &Arc<Self>, user: &UserId, writer: Option<u64>, store: &SharedStore) {
        self.wake(user, writer);
        // A hint queued and not yet being written is written after this
        // write completed: it covers it.
        if !lock(&self.scheduled).insert(user.clone()) {
            return;
        }
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write(Arc::downgrade(self), rx));
            tx
        });
        let _ = queue.send((user.clone(), store.clone()));
    }
}

/// The writer task: writes the queued hints (a user's at most once per
/// [`SPACING`]), then deletes this instance's hints older than
/// [`HINT_TTL`].
async fn write(hints: Weak<Hints>, mut queue: mpsc::UnboundedReceiver<(UserId, SharedStore)>) {
    use tokio::time::Instant;
    // When each user's last hint was written (monotonic: a wall clock set
    // back must not hold hints back).
    let mut last: HashMap<UserId, Instant> = HashMap::new();
    // Hints held back until their user's spacing has passed, by time due.
    let mut deferred: BTreeMap<Instant, Vec<(UserId, SharedStore)>> = BTreeMap::new();
    loop {
        let due = deferred.first_key_value().map(|(due, _)| *due);
        let mut batch = Vec::new();
        tokio::select! {
            received = queue.recv() => match received {
                Some(first) => batch.push(first),
                // The instance is stopping (the `Hints` is gone): what is
                // held back is lost, as any hint may be.
                None => return,
            },
            () = sleep_until(due) => {}
        }
        while let Ok(next) = queue.try_recv() {
            batch.push(next);
        }
        let now = Instant::now();
        let later = deferred.split_off(&(now + Duration::from_nanos(1)));
        batch.extend(
            std::mem::replace(&mut deferred, later)
                .into_values()
                .flatten(),
        );
        last.retain(|_, at| now.duration_since(*at) < SPACING);
        // Users hinted less than the spacing ago wait for its end; they
        // stay scheduled, so that their writes until then share it.
        let (batch, held): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|(user, _)| !last.contains_key(user));
        for (user, store) in held {
            let due = last[&user] + SPACING;
            deferred.entry(due).or_default().push((user, store));
        }
        if batch.is_empty() {
            continue;
        }
        let Some(hints) = hints.upgrade() else {
            return;
        };
        {
            // From here on a new write queues a new hint.
            let mut scheduled = lock(&hints.scheduled);
            for (user, _) in &batch {
                scheduled.remove(user);
            }
        }
        for (user, _) in &batch {
            last.insert(user.clone(), now);
        }
        let now = now_ms();
        let store = batch[0].1.clone();
        let puts: Vec<futures::future::BoxFuture<'static, Option<String>>> = batch
            .into_iter()
            .map(|(user, store)| {
                let key = layout::hint(now, &hints.tag(now, &user), &user);
                Box::pin(async move {
                    match store.put(&key, Bytes::new()).await {
                        Ok(()) => Some(key),
                        Err(e) => {
                            tracing::debug!(error = %e, "change hint not written");
                            None
                        }
                    }
                }) as futures::future::BoxFuture<'static, Option<String>>
            })
            .collect();
        let written: Vec<Option<String>> = futures::stream::iter(puts)
            .buffer_unordered(WRITE_PARALLELISM)
            .collect()
            .await;
        let written = written.into_iter().flatten();
        let expired: Vec<String> = {
            let mut mine = lock(&hints.written);
            mine.extend(written.map(|k| (now, k)));
            let floor = now.saturating_sub(HINT_TTL.as_millis() as u64);
            let n = mine.iter().take_while(|(t, _)| *t < floor).count();
            mine.drain(..n).map(|(_, k)| k).collect()
        };
        if !expired.is_empty()
            && let Err(e) = store.delete_many(&expired).await
        {
            tracing::debug!(error = %e, "old change hints not deleted");
        }
    }
}

/// Sleeps until `due`, or forever for `None`.
async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// The listing task: every interval, while some account here has a
/// session, lists the hints written since the previous listing (less
/// [`MARGIN`]) and wakes the accounts they name.
async fn listen(hints: Weak<Hints>) {
    let Some(interval) = hints.upgrade().map(|h| h.interval) else {
        return;
    };
    let margin = MARGIN.as_millis() as u64;
    let mut last: Option<u64> = None;
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut next_sweep = now_ms();
    loop {
        tokio::time::sleep(interval).await;
        let Some(hints) = hints.upgrade() else {
            return;
        };
        let Some(store) = hints.listening_store() else {
            // Nobody to wake: the next session syncs when it starts.
            last = None;
            continue;
        };
        let started = now_ms();
        let from = last.unwrap_or(started).saturating_sub(margin);
        match list_since(store.as_ref(), from).await {
            Ok(keys) => {
                for key in keys {
                    let Some((time, tag, user)) = layout::parse_hint(&key) else {
                        continue;
                    };
                    if tag == hints.tag(time, &user) || seen.contains_key(&key) {
                        continue;
                    }
                    hints.wake(&user, None);
                    seen.insert(key, time);
                }
                seen.retain(|_, t| *t >= from.saturating_sub(margin));
                last = Some(started);
            }
            Err(e) => tracing::debug!(error = %e, "listing change hints failed"),
        }
        if started >= next_sweep {
            next_sweep = started + SWEEP_EVERY.as_millis() as u64;
            sweep(store.as_ref(), started).await;
        }
    }
}

/// The hint keys written at or after `from_ms`.
async fn list_since(store: &dyn ObjectStore, from_ms: u64) -> Result<Vec<String>, StoreError> {
    let mut after = layout::hints_before(from_ms);
    let mut keys = Vec::new();
    for _ in 0..MAX_PAGES {
        let page = store
            .list_keys(layout::HINTS_PREFIX, Some(&after), MAX_LIST)
            .await?;
        let Some(last) = page.keys.last() else {
            break;
        };
        after = last.clone();
        keys.extend(page.keys);
        if !page.truncated {
            break;
        }
    }
    Ok(keys)
}

/// Deletes hints older than [`STALE`], whoever wrote them (the first page
/// only: the next sweep goes on).
async fn sweep(store: &dyn ObjectStore, now: u64) {
    let floor = now.saturating_sub(STALE.as_millis() as u64);
    let stale: Vec<String> = match store.list(layout::HINTS_PREFIX, None, MAX_LIST).await {
        Ok(page) => page
            .objects
            .into_iter()
            .map(|o| o.key)
            .filter(|k| layout::parse_hint(k).is_some_and(|(t, _, _)| t < floor))
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "listing stale change hints failed");
            return;
        }
    };
    if !stale.is_empty()
        && let Err(e) = store.delete_many(&stale).await
    {
        tracing::debug!(error = %e, "stale change hints not deleted");
    }
}

/// The user a key belongs to, if another instance must notice its write:
/// a delivery record, a log op (mailbox list or mailbox) or the keyring.
fn hinted_user(key: &str) -> Option<UserId> {
    let rest = key.strip_prefix(layout::USERS_PREFIX)?;
    let (user, rest) = rest.split_once('/')?;
    let wanted = rest.starts_with("incoming/")
        || rest == "keyring"
        || rest.starts_with("list/log/")
        || (rest.starts_with("mbox/") && rest.split('/').nth(2) == Some("log"));
    if wanted { UserId::parse(user) } else { None }
}

/// Writes one hint for `user` now, under a tag of its own: for a process
/// with no [`Hints`] of its own (the CLI's `user delete`, whose deletes no
/// [`Hinted`] store reports). Instances listing `hints/` wake the user's
/// accounts, which poll at once.
pub async fn announce(store: &dyn ObjectStore, user: &UserId) -> Result<(), StoreError> {
    let tag = hex::encode(rand::random::<[u8; 8]>());
    store
        .put(&layout::hint(now_ms(), &tag, user), Bytes::new())
        .await
}

/// A store that reports the writes others must notice to [`Hints`].
#[derive(Debug)]
pub struct Hinted {
    inner: SharedStore,
    hints: Arc<Hints>,
    /// The serial of the account writing through it (none for LMTP).
    writer: Option<u64>,
}

impl Hinted {
    /// `inner`, reporting to `hints` the writes of the account with serial
    /// `writer` (none: a writer with no account, LMTP).
    pub fn wrap(inner: SharedStore, hints: Arc<Hints>, writer: Option<u64>) -> SharedStore {
        Arc::new(Hinted {
            inner,
            hints,
            writer,
        })
    }
}

#[async_trait::async_trait]
impl ObjectStore for Hinted {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.inner.put(key, body).await?;
        if let Some(user) = hinted_user(key) {
            self.hints.changed(&user, self.writer, &self.inner);
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.inner.get_range(key, range).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        self.inner.delete_many(keys).await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        self.inner.list(prefix, start_after, limit).await
    }

    async fn list_keys(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, StoreError> {
        self.inner.list_keys(prefix, start_after, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writes_others_must_notice_are_hinted() {
        let u = "0f".repeat(32);
        let user = |rest: &str| hinted_user(&format!("users/{u}/{rest}"));
        assert!(user("incoming/0001-ab").is_some());
        assert!(user("keyring").is_some());
        assert!(user("list/log/op1").is_some());
        assert!(user("mbox/abc/log/op1").is_some());
        assert!(user("mbox/abc/snap/s1").is_none());
        assert!(user("blob/x").is_none());
        assert!(user("lease/incoming").is_none());
        assert!(user("quarantine/x").is_none());
        assert!(hinted_user("users/short/incoming/x").is_none());
        assert!(hinted_user("hints/x").is_none());
    }

    #[test]
    fn hint_tags_are_known_to_their_instance_only_and_group_nothing() {
        let hints = Hints::new(Duration::from_secs(2));
        let other = Hints::new(Duration::from_secs(2));
        let alice = UserId::parse(&"0a".repeat(32)).unwrap();
        let bob = UserId::parse(&"0b".repeat(32)).unwrap();
        let tags = [
            hints.tag(1_000, &alice),
            hints.tag(1_000, &bob),
            hints.tag(1_001, &alice),
        ];
        // The same instance gives unrelated tags to other users and times.
        assert_ne!(tags[0], tags[1]);
        assert_ne!(tags[0], tags[2]);
        // It recognises its own tag again; another instance's differs.
        assert_eq!(hints.tag(1_000, &alice), tags[0]);
        assert_ne!(other.tag(1_000, &alice), tags[0]);
        let key = layout::hint(1_000, &tags[1], &bob);
        let (time, tag, user) = layout::parse_hint(&key).unwrap();
        assert_eq!(tag, hints.tag(time, &user));
    }

    /// A burst of writes by one user: one hint at once, one more at the
    /// end of the spacing for all the others; another user's first write
    /// is hinted at once all the same. On tokio's paused clock: the
    /// times are exact, whatever the machine's load.
    #[tokio::test(start_paused = true)]
    async fn a_burst_costs_two_hints_and_delays_no_one_else() {
        use tokio::time::Instant;
        let puts = Arc::new(Puts::default());
        let store: SharedStore = puts.clone();
        let hints = Hints::new(Duration::from_secs(2));
        let alice = UserId::parse(&"0a".repeat(32)).unwrap();
        let bob = UserId::parse(&"0b".repeat(32)).unwrap();
        // Hint PUTs naming `user` (names may repeat: the wall clock
        // stands still while tokio's is paused).
        let hinted = |user: &UserId| {
            let user = user.to_string();
            lock(&puts.0)
                .iter()
                .filter(|k| layout::parse_hint(k).is_some_and(|(_, _, u)| u.to_string() == user))
                .count()
        };
        // Steps of 1 ms until `user` has `n` hints; the time it took.
        let wait_for = async |n: usize, user: &UserId| {
            let started = Instant::now();
            while hinted(user) < n {
                assert!(started.elapsed() < 10 * SPACING, "no hint {n}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            started.elapsed()
        };
        let started = Instant::now();
        hints.changed(&alice, None, &store);
        assert!(
            wait_for(1, &alice).await <= Duration::from_millis(2),
            "at once"
        );
        for _ in 0..20 {
            hints.changed(&alice, None, &store);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        hints.changed(&bob, None, &store);
        assert!(
            wait_for(1, &bob).await <= Duration::from_millis(2),
            "bob waited"
        );
        assert_eq!(hinted(&alice), 1, "the burst is held back");
        wait_for(2, &alice).await;
        let second = started.elapsed();
        assert!(
            second >= SPACING && second <= SPACING + Duration::from_millis(5),
            "{second:?}"
        );
        // Nothing more: the 20 writes shared the second hint.
        tokio::time::sleep(3 * SPACING).await;
        assert_eq!(hinted(&alice), 2);
        // A write long after: at once again.
        hints.changed(&alice, None, &store);
        assert!(wait_for(3, &alice).await <= Duration::from_millis(2));
    }

    /// A store that records the keys put, and holds nothing.
    #[derive(Debug, Default)]
    struct Puts(Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl ObjectStore for Puts {
        async fn put(&self, key: &str, _: Bytes) -> Result<(), StoreError> {
            lock(&self.0).push(key.to_owned());
            Ok(())
        }

        async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
            Err(StoreError::NotFound(key.to_owned()))
        }

        async fn get_range(&self, key: &str, _: Range<u64>) -> Result<Bytes, StoreError> {
            Err(StoreError::NotFound(key.to_owned()))
        }

        async fn delete(&self, _: &str) -> Result<(), StoreError> {
            Ok(())
        }

        async fn delete_many(&self, _: &[String]) -> Result<(), StoreError> {
            Ok(())
        }

        async fn list(&self, _: &str, _: Option<&str>, _: usize) -> Result<ListPage, StoreError> {
            Ok(ListPage::default())
        }
    }
}
