//! Throttling of failed logins per client address and per login
//! (DESIGN.md §7: "login attempts per IP and per user").
//!
//! Pure and in memory: the caller passes the clock, nothing sleeps here.
//! After `free_failures` failed logins within `window`, each further
//! attempt must wait an exponentially growing delay after the last failure
//! (`base_delay`, doubled per failure, at most `max_delay`). A key whose
//! last failure is older than `window` is forgotten.
//!
//! Invariants:
//! - Memory is bounded: each table holds at most `max_entries` keys; when
//!   full, the key whose last failure is the oldest is evicted. A login is
//!   kept as a keyed hash (`RandomState`, unknown to clients), so a key
//!   costs the same whatever the login's length, and logins (which may be
//!   mistyped passwords) are not kept in memory.
//! - A success resets the login's counter, never the address's: one valid
//!   account must not let an address guess the passwords of others.
//! - IPv6 addresses are counted per /64, the block one subscriber usually
//!   gets; IPv4-mapped IPv6 addresses count as their IPv4 address.
//! - The lock is held for a few map operations only, never across I/O.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How hard failed logins are throttled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failed logins from one address (IPv6: one /64) within `window`
    /// before attempts from it are delayed. Higher than per login: many
    /// users may share an address behind NAT.
    pub ip_free_failures: u32,
    /// Failed logins for one login within `window` before attempts for it
    /// are delayed.
    pub login_free_failures: u32,
    /// Delay after the first failure past the free ones; doubles with each
    /// further failure.
    pub base_delay: Duration,
    /// Longest delay.
    pub max_delay: Duration,
    /// How long a failure is remembered after the last one of its key.
    pub window: Duration,
    /// Most keys remembered per table (addresses, logins).
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            ip_free_failures: 10,
            login_free_failures: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(5 * 60),
            window: Duration::from_secs(15 * 60),
            max_entries: 65_536,
        }
    }
}

/// Failed-login throttling shared by every connection of an instance.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    /// Keys the login hashes; random per process.
    hasher: RandomState,
    tables: Mutex<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    ips: Table<IpKey>,
    logins: Table<u64>,
}

/// An address as counted: IPv4, or the /64 of an IPv6 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum IpKey {
    V4(u32),
    V6Prefix(u64),
}

impl IpKey {
    fn of(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4.into()),
                None => IpKey::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Failures of one key.
#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    /// Tie-breaker of `last_failure` in the age index.
    seq: u64,
}

/// A bounded map of keys to failures, with an index by age for expiry and
/// eviction of the oldest.
#[derive(Debug)]
struct Table<K> {
    entries: HashMap<K, Entry>,
    by_age: BTreeMap<(Instant, u64), K>,
    next_seq: u64,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Table {
            entries: HashMap::new(),
            by_age: BTreeMap::new(),
            next_seq: 0,
        }
    }
}

impl<K: Copy + Eq + Hash> Table<K> {
    /// Forgets keys whose last failure is `window` or more before `now`.
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some((&(last, _), _)) = self.by_age.first_key_value() {
            if now.saturating_duration_since(last) < window {
                break;
            }
            if let Some((_, key)) = self.by_age.pop_first() {
                self.entries.remove(&key);
            }
        }
    }

    fn get(&self, key: &K) -> Option<Entry> {
        self.entries.get(key).copied()
    }

    fn record_failure(&mut self, key: K, now: Instant, max_entries: usize) {
        // A clock reading older than the one recorded (callers racing
        // between `Instant::now()` and the lock) never moves a key back.
        let (failures, last_failure) = match self.entries.remove(&key) {
            Some(old) => {
                self.by_age.remove(&(old.last_failure, old.seq));
                (old.failures.saturating_add(1), old.last_failure.max(now))
            }
            None => {
                while self.entries.len() >= max_entries.max(1) {
                    match self.by_age.pop_first() {
                        Some((_, oldest)) => {
                            self.entries.remove(&oldest);
                        }
                        None => break,
                    }
                }
                (1, now)
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(
            key,
            Entry {
                failures,
                last_failure,
                seq,
            },
        );
        self.by_age.insert((last_failure, seq), key);
    }

    fn remove(&mut self, key: &K) {
        if let Some(old) = self.entries.remove(key) {
            self.by_age.remove(&(old.last_failure, old.seq));
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle {
            config,
            hasher: RandomState::new(),
            tables: Mutex::new(Tables::default()),
        }
    }

    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    fn tables(&self, now: Instant) -> std::sync::MutexGuard<'_, Tables> {
        let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        t.ips.expire(now, self.config.window);
        t.logins.expire(now, self.config.window);
        t
    }

    /// Logins compare case-insensitively, as the directory normalises them.
    fn login_key(&self, login: &str) -> u64 {
        self.hasher.hash_one(login.trim().to_lowercase())
    }

    /// The delay a key with `entry` still has to wait at `now`.
    fn wait(&self, entry: Option<Entry>, free: u32, now: Instant) -> Option<Duration> {
        let entry = entry?;
        let over = entry.failures.checked_sub(free)?;
        let delay = self
            .config
            .base_delay
            .checked_mul(2u32.saturating_pow(over))
            .unwrap_or(self.config.max_delay)
            .min(self.config.max_delay);
        let allowed_at = entry.last_failure + delay;
        (now < allowed_at).then(|| allowed_at - now)
    }

    /// Whether a login attempt for `login` from `ip` may be checked at
    /// `now`; `Err` gives how long until it may. A refused attempt should
    /// be answered without checking the password, and is not a failure.
    pub fn check(&self, ip: IpAddr, login: &str, now: Instant) -> Result<(), Duration> {
        let login = self.login_key(login);
        let t = self.tables(now);
        let by_ip = self.wait(t.ips.get(&IpKey::of(ip)), self.config.ip_free_failures, now);
        let by_login = self.wait(t.logins.get(&login), self.config.login_free_failures, now);
        match by_ip.max(by_login) {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// Records a failed login (wrong password or unknown login).
    pub fn failed(&self, ip: IpAddr, login: &str, now: Instant) {
        let login = self.login_key(login);
        let max = self.config.max_entries;
        let mut t = self.tables(now);
        t.ips.record_failure(IpKey::of(ip), now, max);
        t.logins.record_failure(login, now, max);
    }

    /// Records a successful login: the login's failures are forgotten, the
    /// address's are kept.
    pub fn succeeded(&self, _ip: IpAddr, login: &str, now: Instant) {
        let login = self.login_key(login);
        self.tables(now).logins.remove(&login);
    }

    /// Keys remembered (addresses, logins), for metrics and tests.
    pub fn len(&self) -> (usize, usize) {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        (t.ips.len(), t.logins.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ThrottleConfig {
        ThrottleConfig {
            ip_free_failures: 6,
            login_free_failures: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            window: Duration::from_secs(600),
            max_entries: 100,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn free_failures_then_exponential_delay_capped() {
        let t = Throttle::new(config());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(t.check(a, "alice", t0), Ok(()));
            t.failed(a, "alice", t0);
        }
        // 3 failures = the free ones: the 4th attempt waits 1 s.
        assert_eq!(t.check(a, "alice", t0), Err(S(1)));
        assert_eq!(
            t.check(a, "alice", t0 + Duration::from_millis(400)),
            Err(Duration::from_millis(600))
        );
        assert_eq!(t.check(a, "alice", t0 + S(1)), Ok(()));
        // Each further failure doubles the delay after it.
        t.failed(a, "alice", t0 + S(1));
        assert_eq!(t.check(a, "alice", t0 + S(1)), Err(S(2)));
        t.failed(a, "alice", t0 + S(3));
        assert_eq!(t.check(a, "alice", t0 + S(3)), Err(S(4)));
        // ... up to max_delay.
        for i in 0..20 {
            t.failed(a, "alice", t0 + S(10 + i));
        }
        assert_eq!(t.check(a, "alice", t0 + S(29)), Err(S(60)));
        assert_eq!(t.check(a, "alice", t0 + S(89)), Ok(()));
    }

    #[test]
    fn logins_compare_case_insensitively_and_are_independent() {
        let t = Throttle::new(config());
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            t.failed(a, "Alice", now);
        }
        assert!(t.check(a, " alice ", now).is_err());
        assert!(t.check(a, "ALICE", now).is_err());
        assert_eq!(t.check(a, "bob", now), Ok(()));
    }

    #[test]
    fn an_address_guessing_many_logins_is_throttled() {
        let t = Throttle::new(config());
        let now = Instant::now();
        let a = ip("198.51.100.7");
        for i in 0..6 {
            assert_eq!(t.check(a, &format!("user{i}"), now), Ok(()));
            t.failed(a, &format!("user{i}"), now);
        }
        assert_eq!(t.check(a, "someone-new", now), Err(S(1)));
        // Another address trying the same new login is not affected.
        assert_eq!(t.check(ip("198.51.100.8"), "someone-new", now), Ok(()));
    }

    #[test]
    fn a_login_attacked_from_many_addresses_is_throttled() {
        let t = Throttle::new(config());
        let now = Instant::now();
        for i in 0..3 {
            t.failed(ip(&format!("203.0.113.{i}")), "alice", now);
        }
        assert_eq!(t.check(ip("203.0.113.99"), "alice", now), Err(S(1)));
    }

    #[test]
    fn success_resets_the_login_not_the_address() {
        let t = Throttle::new(config());
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for i in 0..6 {
            t.failed(a, if i < 3 { "alice" } else { "bob" }, now);
        }
        t.succeeded(a, "alice", now + S(5));
        // The address still has 6 failures: its delay applies to everyone.
        assert_eq!(t.check(a, "alice", now + S(1) / 2), Err(S(1) / 2));
        assert_eq!(t.check(a, "alice", now + S(1)), Ok(()));
        // From another address, alice starts afresh; bob does not.
        let b = ip("192.0.2.2");
        for _ in 0..3 {
            t.failed(b, "alice", now + S(2));
        }
        assert!(t.check(b, "alice", now + S(2)).is_err());
        t.succeeded(b, "alice", now + S(2));
        assert_eq!(t.check(b, "alice", now + S(2)), Ok(()));
        assert!(t.check(b, "bob", now + S(1) / 2).is_err());
    }

    #[test]
    fn failures_are_forgotten_after_the_window() {
        let t = Throttle::new(config());
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..30 {
            t.failed(a, "alice", now);
        }
        assert_eq!(t.check(a, "alice", now + S(59)), Err(S(1)));
        assert_eq!(t.len(), (1, 1));
        assert_eq!(t.check(a, "alice", now + S(600)), Ok(()));
        assert!(t.is_empty(), "expired keys are dropped");
        // After expiry the count starts again from zero.
        t.failed(a, "alice", now + S(600));
        assert_eq!(t.check(a, "alice", now + S(600)), Ok(()));
    }

    #[test]
    fn memory_is_bounded_evicting_the_oldest() {
        let t = Throttle::new(ThrottleConfig {
            max_entries: 10,
            ..config()
        });
        let now = Instant::now();
        // The oldest key, with enough failures to be throttled.
        for _ in 0..6 {
            t.failed(ip("10.0.0.1"), "old", now);
        }
        assert!(t.check(ip("10.0.0.1"), "x", now).is_err());
        for i in 0..1000u32 {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            t.failed(addr, &format!("u{i}"), now + S(1));
        }
        assert_eq!(t.len(), (10, 10));
        // "old" and 10.0.0.1 were evicted first.
        assert_eq!(t.check(ip("10.0.0.1"), "old", now + S(1)), Ok(()));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let t = Throttle::new(config());
        let now = Instant::now();
        for i in 0..6 {
            t.failed(ip(&format!("2001:db8:1:2::{i}")), &format!("u{i}"), now);
        }
        assert!(t.check(ip("2001:db8:1:2:ffff::1"), "v", now).is_err());
        assert_eq!(t.check(ip("2001:db8:1:3::1"), "v", now), Ok(()));

        for i in 0..6 {
            t.failed(ip("::ffff:192.0.2.9"), &format!("w{i}"), now);
        }
        assert!(t.check(ip("192.0.2.9"), "v", now).is_err());
    }

    #[test]
    fn an_earlier_clock_reading_does_not_move_a_key_back() {
        let t = Throttle::new(config());
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            t.failed(a, "alice", now + S(10));
        }
        t.failed(a, "alice", now);
        // Four failures, the last counted at now + 10 s: 2 s from then.
        assert_eq!(t.check(a, "alice", now + S(10)), Err(S(2)));
    }
}
