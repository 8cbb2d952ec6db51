//! Throttling of login attempts per address and per login
//! (doc/imap.md, "Logins"; doc/security.md, "1. Anonymous clients").
//!
//! Pure and in memory: the caller passes the clock, nothing sleeps here.
//! An attempt is counted as a failure *before* its password is checked
//! ([`Throttle::begin`] reserves it), and given back if it succeeds or could
//! not be checked: so a burst of simultaneous attempts gets at most the
//! free number of checks, not one check per connection.
//!
//! Three counters, each with its free failures within `window`, after which
//! every further attempt must wait an exponentially growing delay after the
//! last failure (`base_delay`, doubled per failure, up to a cap):
//!
//! | counter | free | cap | for |
//! |---|---|---|---|
//! | (address, login) | `login_free_failures` (5) | `max_delay` (5 min) | one source guessing one password |
//! | address | `ip_free_failures` (10) | `max_delay` (5 min) | one source trying many logins |
//! | login, from addresses it never logged in from | `login_free_failures_all` (20) | `login_max_delay_all` (1 min) | many sources guessing one password |
//!
//! The real user must never be locked out by someone else's failures: an
//! address from which a login succeeded within `known_for` (30 days) is
//! exempt from that login's all-addresses counter, and counts only its own
//! failures; from a new address the user waits at most a minute between
//! attempts while the account is under attack, never longer.
//!
//! Invariants:
//! - Memory is bounded: each table holds at most `max_entries` keys; when
//!   full, the key whose last event is the oldest is evicted. A login is
//!   kept as a keyed hash (`RandomState`, unknown to clients), so a key
//!   costs the same whatever the login's length, and logins (which may be
//!   mistyped passwords) are not kept in memory.
//! - A success gives back its own reservation and clears the (address,
//!   login) counter, never the address's or the login's: one valid account
//!   must not let an address guess the passwords of others, nor a success
//!   give a distributed guesser fresh attempts.
//! - IPv6 addresses are counted per /64, the block one subscriber usually
//!   gets; IPv4-mapped IPv6 addresses count as their IPv4 address.
//! - The lock is held for a few map operations only, never across I/O.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How hard failed logins are throttled; see the module doc for the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failed logins from one address (IPv6: one /64) within `window`
    /// before attempts from it are delayed. Higher than per login: many
    /// users may share an address behind NAT.
    pub ip_free_failures: u32,
    /// Failed logins for one login from one address within `window` before
    /// attempts for it from that address are delayed.
    pub login_free_failures: u32,
    /// Failed logins for one login from all the addresses it has not logged
    /// in from, within `window`, before attempts from such addresses are
    /// delayed.
    pub login_free_failures_all: u32,
    /// Delay after the first failure past the free ones; doubles with each
    /// further failure.
    pub base_delay: Duration,
    /// Longest delay of the address and (address, login) counters.
    pub max_delay: Duration,
    /// Longest delay of the all-addresses login counter: short, since the
    /// real user on a new address shares it with the attackers.
    pub login_max_delay_all: Duration,
    /// How long a failure is remembered after the last one of its key.
    pub window: Duration,
    /// How long an address stays known for a login after a success there.
    pub known_for: Duration,
    /// Most keys remembered per table.
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            ip_free_failures: 10,
            login_free_failures: 5,
            login_free_failures_all: 20,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(5 * 60),
            login_max_delay_all: Duration::from_secs(60),
            window: Duration::from_secs(15 * 60),
            known_for: Duration::from_secs(30 * 24 * 3600),
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
    pairs: Table<(IpKey, u64)>,
    /// Failures from addresses not known for the login.
    logins: Table<u64>,
    /// (address, login) pairs with a success within `known_for`; the
    /// entry's time is the last success.
    known: Table<(IpKey, u64)>,
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

    /// Gives back one failure recorded by [`Table::record_failure`].
    fn unrecord(&mut self, key: &K) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.failures = entry.failures.saturating_sub(1);
            if entry.failures == 0 {
                self.remove(key);
            }
        }
    }

    fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
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
        t.pairs.expire(now, self.config.window);
        t.logins.expire(now, self.config.window);
        t.known.expire(now, self.config.known_for);
        t
    }

    /// Logins compare case-insensitively, as the directory normalises them.
    fn login_key(&self, login: &str) -> u64 {
        self.hasher.hash_one(login.trim().to_lowercase())
    }

    /// The delay a key with `entry` still has to wait at `now`.
    fn wait(
        &self,
        entry: Option<Entry>,
        free: u32,
        max: Duration,
        now: Instant,
    ) -> Option<Duration> {
        let entry = entry?;
        let over = entry.failures.checked_sub(free)?;
        let delay = self
            .config
            .base_delay
            .checked_mul(2u32.saturating_pow(over))
            .unwrap_or(max)
            .min(max);
        let allowed_at = entry.last_failure + delay;
        (now < allowed_at).then(|| allowed_at - now)
    }

    /// Starts a login attempt for `login` from `ip` at `now`: counted as a
    /// failure until [`Attempt::succeeded`] or [`Attempt::refund`]. `Err`
    /// gives how long until an attempt may start; a refused attempt is not
    /// counted, and its password must not be checked.
    pub fn begin(&self, ip: IpAddr, login: &str, now: Instant) -> Result<Attempt<'_>, Duration> {
        let (ip, login) = (IpKey::of(ip), self.login_key(login));
        let c = &self.config;
        let mut t = self.tables(now);
        let known = t.known.contains(&(ip, login));
        let waits = [
            self.wait(t.ips.get(&ip), c.ip_free_failures, c.max_delay, now),
            self.wait(
                t.pairs.get(&(ip, login)),
                c.login_free_failures,
                c.max_delay,
                now,
            ),
            if known {
                None
            } else {
                self.wait(
                    t.logins.get(&login),
                    c.login_free_failures_all,
                    c.login_max_delay_all,
                    now,
                )
            },
        ];
        if let Some(wait) = waits.into_iter().flatten().max() {
            return Err(wait);
        }
        t.ips.record_failure(ip, now, c.max_entries);
        t.pairs.record_failure((ip, login), now, c.max_entries);
        if !known {
            t.logins.record_failure(login, now, c.max_entries);
        }
        Ok(Attempt {
            throttle: self,
            ip,
            login,
            counted_for_login: !known,
        })
    }

    /// Keys remembered with failures (addresses, (address, login) pairs,
    /// logins), for metrics and tests.
    pub fn len(&self) -> (usize, usize, usize) {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        (t.ips.len(), t.pairs.len(), t.logins.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0, 0)
    }
}

/// A login attempt in progress, counted as a failure until it ends
/// otherwise: dropping it keeps the failure (a wrong password, or a check
/// that never finished).
#[derive(Debug)]
#[must_use = "an attempt is a failure unless told otherwise"]
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    ip: IpKey,
    login: u64,
    /// Whether the login's all-addresses counter holds this attempt.
    counted_for_login: bool,
}

impl Attempt<'_> {
    /// The password was right: the reservation is given back, the (address,
    /// login) counter cleared, and the address becomes known for the login.
    pub fn succeeded(self, now: Instant) {
        let c = &self.throttle.config;
        let mut t = self.throttle.tables(now);
        t.ips.unrecord(&self.ip);
        t.pairs.remove(&(self.ip, self.login));
        if self.counted_for_login {
            t.logins.unrecord(&self.login);
        }
        t.known.remove(&(self.ip, self.login));
        t.known
            .record_failure((self.ip, self.login), now, c.max_entries);
    }

    /// The password could not be checked (the store or the directory is
    /// unavailable, too many checks at once): not the client's failure.
    pub fn refund(self) {
        let mut t = self
            .throttle
            .tables
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        t.ips.unrecord(&self.ip);
        t.pairs.unrecord(&(self.ip, self.login));
        if self.counted_for_login {
            t.logins.unrecord(&self.login);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ThrottleConfig {
        ThrottleConfig {
            ip_free_failures: 6,
            login_free_failures: 3,
            login_free_failures_all: 10,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            login_max_delay_all: Duration::from_secs(20),
            window: Duration::from_secs(600),
            known_for: Duration::from_secs(3600),
            max_entries: 100,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// A failed attempt: begun (it must be allowed) and dropped.
    fn fail(t: &Throttle, a: IpAddr, login: &str, now: Instant) {
        drop(t.begin(a, login, now).expect("attempt allowed"));
    }

    fn check(t: &Throttle, a: IpAddr, login: &str, now: Instant) -> Result<(), Duration> {
        t.begin(a, login, now).map(Attempt::refund)
    }

    #[test]
    fn free_failures_then_exponential_delay_capped() {
        let t = Throttle::new(config());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            fail(&t, a, "alice", t0);
        }
        // 3 failures = the free ones: the 4th attempt waits 1 s.
        assert_eq!(check(&t, a, "alice", t0), Err(S(1)));
        assert_eq!(
            check(&t, a, "alice", t0 + Duration::from_millis(400)),
            Err(Duration::from_millis(600))
        );
        // Each further failure doubles the delay after it.
        fail(&t, a, "alice", t0 + S(1));
        assert_eq!(check(&t, a, "alice", t0 + S(1)), Err(S(2)));
        fail(&t, a, "alice", t0 + S(3));
        assert_eq!(check(&t, a, "alice", t0 + S(3)), Err(S(4)));
        // ... up to max_delay.
        let mut at = t0 + S(7);
        for _ in 0..20 {
            match t.begin(a, "alice", at) {
                Ok(attempt) => drop(attempt),
                Err(wait) => at += wait,
            }
        }
        match t.begin(a, "alice", at) {
            Ok(attempt) => drop(attempt),
            Err(wait) => {
                at += wait;
                fail(&t, a, "alice", at);
            }
        }
        assert_eq!(check(&t, a, "alice", at), Err(S(60)));
    }

    #[test]
    fn a_burst_is_counted_before_any_check_finishes() {
        let t = Throttle::new(config());
        let now = Instant::now();
        let a = ip("192.0.2.1");
        // 30 attempts start at once; none has finished its check.
        let started: Vec<_> = (0..30)
            .filter_map(|_| t.begin(a, "alice", now).ok())
            .collect();
        assert_eq!(started.len(), 3, "only the free failures get a check");
        // Across logins, the address's own limit holds the same way.
        let b = ip("192.0.2.2");
        let many: Vec<_> = (0..30)
            .filter_map(|i| t.begin(b, &format!("user{i}"), now).ok())
            .collect();
        assert_eq!(many.len(), 6);
    }

    #[test]
    fn refunded_and_successful_attempts_give_their_reservation_back() {
        let t = Throttle::new(config());
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..10 {
            t.begin(a, "alice", now).unwrap().refund();
        }
        assert!(t.is_empty());
        for _ in 0..10 {
            t.begin(a, "alice", now).unwrap().succeeded(now);
        }
        assert_eq!(t.len(), (0, 0, 0));
        // Two failures, then a success: the pair is cleared, the address
        // keeps its two.
        fail(&t, a, "bob", now);
        fail(&t, a, "bob", now);
        t.begin(a, "bob", now).unwrap().succeeded(now);
        assert_eq!(t.len(), (1, 0, 1));
    }

    #[test]
    fn logins_compare_case_insensitively_and_are_independent() {
        let t = Throttle::new(config());
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            fail(&t, a, "Alice", now);
        }
        assert!(check(&t, a, " alice ", now).is_err());
        assert!(check(&t, a, "ALICE", now).is_err());
        assert_eq!(check(&t, a, "bob", now), Ok(()));
    }

    #[test]
    fn an_address_guessing_many_logins_is_throttled() {
        let t = Throttle::new(config());
        let now = Instant::now();
        let a = ip("198.51.100.7");
        for i in 0..6 {
            fail(&t, a, &format!("user{i}"), now);
        }
        assert_eq!(check(&t, a, "someone-new", now), Err(S(1)));
        // Another address trying the same new login is not affected.
        assert_eq!(check(&t, ip("198.51.100.8"), "someone-new", now), Ok(()));
    }

    #[test]
    fn one_address_guessing_one_login_does_not_lock_out_the_others() {
        let t = Throttle::new(config());
        let now = Instant::now();
        let attacker = ip("203.0.113.66");
        for _ in 0..3 {
            fail(&t, attacker, "alice", now);
        }
        assert!(check(&t, attacker, "alice", now).is_err());
        // Alice, from anywhere else, is not affected.
        assert_eq!(check(&t, ip("192.0.2.1"), "alice", now), Ok(()));
    }

    #[test]
    fn a_login_attacked_from_many_addresses_is_throttled_briefly() {
        let t = Throttle::new(config());
        let now = Instant::now();
        for i in 0..10 {
            fail(&t, ip(&format!("203.0.113.{i}")), "alice", now);
        }
        assert_eq!(check(&t, ip("203.0.113.99"), "alice", now), Err(S(1)));
        // However long the attack, the delay stays short.
        let mut at = now;
        for i in 0..200 {
            match t.begin(ip(&format!("198.51.100.{}", i % 250)), "alice", at) {
                Ok(attempt) => drop(attempt),
                Err(wait) => at += wait,
            }
        }
        match check(&t, ip("203.0.113.99"), "alice", at) {
            Ok(()) => {}
            Err(wait) => assert!(wait <= S(20), "{wait:?}"),
        }
    }

    #[test]
    fn the_real_user_from_a_known_address_passes_any_attack_on_the_login() {
        let t = Throttle::new(config());
        let now = Instant::now();
        let home = ip("192.0.2.1");
        t.begin(home, "alice", now).unwrap().succeeded(now);
        // A distributed attack, renewed every few minutes for hours.
        for round in 0..50u64 {
            let at = now + S(round * 300);
            for i in 0..40 {
                let _ = t.begin(ip(&format!("203.0.113.{i}")), "alice", at);
            }
            assert_eq!(check(&t, home, "alice", at), Ok(()), "round {round}");
            t.begin(home, "alice", at).unwrap().succeeded(at);
        }
    }

    #[test]
    fn failures_are_forgotten_after_the_window() {
        let t = Throttle::new(config());
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            fail(&t, a, "alice", now);
        }
        assert_eq!(check(&t, a, "alice", now), Err(S(1)));
        assert_eq!(t.len(), (1, 1, 1));
        assert_eq!(check(&t, a, "alice", now + S(600)), Ok(()));
        assert!(t.is_empty(), "expired keys are dropped");
    }

    #[test]
    fn memory_is_bounded_evicting_the_oldest() {
        let t = Throttle::new(ThrottleConfig {
            max_entries: 10,
            ..config()
        });
        let now = Instant::now();
        // The oldest key, with enough failures to be throttled.
        for i in 0..6 {
            fail(&t, ip("10.0.0.1"), &format!("old{i}"), now);
        }
        assert!(check(&t, ip("10.0.0.1"), "x", now).is_err());
        for i in 0..1000u32 {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            fail(&t, addr, &format!("u{i}"), now + S(1));
            t.begin(addr, &format!("u{i}"), now + S(1))
                .unwrap()
                .succeeded(now + S(1));
        }
        let (ips, pairs, logins) = t.len();
        assert!(ips <= 10 && pairs <= 10 && logins <= 10);
        assert!(t.tables.lock().unwrap().known.len() <= 10);
        // 10.0.0.1 was evicted first.
        assert_eq!(check(&t, ip("10.0.0.1"), "old", now + S(1)), Ok(()));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let t = Throttle::new(config());
        let now = Instant::now();
        for i in 0..6 {
            fail(&t, ip(&format!("2001:db8:1:2::{i}")), &format!("u{i}"), now);
        }
        assert!(check(&t, ip("2001:db8:1:2:ffff::1"), "v", now).is_err());
        assert_eq!(check(&t, ip("2001:db8:1:3::1"), "v", now), Ok(()));

        for i in 0..6 {
            fail(&t, ip("::ffff:192.0.2.9"), &format!("w{i}"), now);
        }
        assert!(check(&t, ip("192.0.2.9"), "v", now).is_err());
    }

    #[test]
    fn an_earlier_clock_reading_does_not_move_a_key_back() {
        let t = Throttle::new(config());
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            fail(&t, a, "alice", now + S(10));
        }
        // Started before the others' clock reading, counted after them.
        assert!(t.begin(a, "alice", now).is_err());
        t.tables(now)
            .pairs
            .record_failure((IpKey::of(a), t.login_key("alice")), now, 100);
        // Four failures, the last counted at now + 10 s: 2 s from then.
        assert_eq!(check(&t, a, "alice", now + S(10)), Err(S(2)));
    }
}
