//! Placement turns: a best-effort mutual exclusion between instances that
//! place messages into the same mailbox at the same time.
//!
//! Two instances claiming UIDs in one mailbox from states that do not
//! include each other's claim collide, and the claims rule renumbers both
//! messages (`mailbox::claims`). Syncing right before claiming leaves
//! only the claims whose critical sections (sync, then op PUT) overlap;
//! under steady load from two instances that is still one placement in
//! six. The store has no compare-and-swap (Garage ignores conditional
//! PUTs), so the turn is built from PUT, LIST and DELETE alone:
//!
//! 1. *Announce*: PUT `turn-<m>/<ticket>-<announced>-<nonce>-<instance>`;
//!    the ticket is the wall clock when this placement first asked, kept
//!    across retries (first come, first served), `announced` when this
//!    entry was written, the nonce random (two entries of one instance
//!    never share a name).
//! 2. *Look*: LIST the turns. No other live entry: the turn is ours.
//! 3. An entry of another instance with a smaller (ticket, instance):
//!    *withdraw* (DELETE ours), wait until no smaller entry is left, and
//!    announce again with the same ticket.
//! 4. Only larger entries: keep ours and look again; their owners either
//!    saw ours and withdraw, or did not and are placing, and delete their
//!    entry when done.
//! 5. Done placing: DELETE ours, unless more placements of this instance
//!    wait for the mailbox: the turn is then kept for them, for at most
//!    [`TurnTuning::keep_for`] and [`TurnTuning::keep_uses`] placements
//!    (far below `max_wait`, so the other instances' wait stays short and
//!    none of them gives up waiting while it is kept).
//!
//! Why two instances cannot both hold the turn (on a store where a
//! completed PUT is seen by every later LIST, as on fs and Garage's
//! consistent mode): each holder's last look came after its own
//! announcement and showed no entry of the other, so each look came before
//! the other's announcement was visible: A's announcement < A's look < B's
//! announcement < B's look < A's announcement, a contradiction.
//!
//! Best effort, with the claims rule as the safety net: an entry announced
//! more than [`TurnTuning::stale_after`] ago or ahead of our clock is
//! ignored (its owner died, or its clock is off; the next looker deletes
//! it); a placement waits at most [`TurnTuning::max_wait`] before going
//! ahead anyway, and after such a wait the mailbox's placements take no
//! turn for `stale_after` (so entries planted by someone who can write the
//! bucket, or a stalled instance, cost one wait, not one per placement); an
//! entry left by a placement that failed or was cancelled is deleted when
//! its [`Held`] is dropped. A slow store or a bad entry thus costs
//! latency, never availability. Entries name an instance and a time, nothing about the
//! user or the mailbox beyond the opaque ids already in their key.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::log::{InstanceId, now_ms};
use crate::store::{SharedStore, StoreError, list_all};

/// Timing of placement turns.
#[derive(Clone, Debug)]
pub struct TurnTuning {
    /// An entry announced longer ago than this is ignored (and deleted).
    pub stale_after: Duration,
    /// Longest wait for the turn before placing anyway.
    pub max_wait: Duration,
    /// First pause between looks; doubles up to `max_poll`.
    pub min_poll: Duration,
    pub max_poll: Duration,
    /// Turns are taken while another instance wrote to the mailbox less
    /// than this long ago (see `Mailbox::contended`); alone, an instance
    /// places with no extra round trip.
    pub contended_for: Duration,
    /// Longest a turn is kept for this instance's next placements.
    pub keep_for: Duration,
    /// Most placements made in one kept turn.
    pub keep_uses: u32,
}

impl Default for TurnTuning {
    fn default() -> Self {
        TurnTuning {
            stale_after: Duration::from_secs(5),
            max_wait: Duration::from_secs(2),
            min_poll: Duration::from_millis(1),
            max_poll: Duration::from_millis(32),
            contended_for: Duration::from_secs(300),
            keep_for: Duration::from_millis(250),
            keep_uses: 16,
        }
    }
}

/// The turns of one mailbox, as seen by this instance.
pub struct Turns {
    store: SharedStore,
    /// `users/<u>/lease/turn-<m>/`.
    prefix: String,
    instance: InstanceId,
    tuning: TurnTuning,
    /// A turn kept for the next placement ([`Turns::done`]).
    kept: Arc<Mutex<Option<Held>>>,
    /// Placements take no turn until then (after a wait that timed out).
    skip_until: Mutex<Option<Instant>>,
}

/// A turn held: placing is safe until it is released ([`Turns::done`]),
/// which dropping it does too (a placement that failed or was cancelled).
pub struct Held {
    store: SharedStore,
    /// The entry's object key; `None` once deleted.
    key: Option<String>,
    taken: Instant,
    uses: u32,
}

impl Held {
    /// Gives the turn up (see `Drop`).
    pub fn release(self) {}
}

impl Drop for Held {
    /// Deletes the entry in the background: the caller answers its client
    /// without waiting (a lost DELETE only makes the next placer wait
    /// until the entry is stale).
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        runtime.spawn(async move {
            if let Err(e) = store.delete(&key).await {
                tracing::debug!(key = %key, error = %e, "releasing a placement turn failed");
            }
        });
    }
}

/// One entry of the turn directory.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    ticket: u64,
    announced: u64,
    instance: String,
    key: String,
}

impl Entry {
    fn parse(prefix: &str, key: &str) -> Option<Entry> {
        let name = key.strip_prefix(prefix)?;
        let mut parts = name.splitn(4, '-');
        let ticket = u64::from_str_radix(parts.next()?, 16).ok()?;
        let announced = u64::from_str_radix(parts.next()?, 16).ok()?;
        let _nonce = parts.next()?;
        let instance = parts.next()?.to_owned();
        Some(Entry {
            ticket,
            announced,
            instance,
            key: key.to_owned(),
        })
    }
}

/// What a look at the entries says.
#[derive(Debug, PartialEq, Eq)]
enum Look {
    /// No live entry of another instance.
    Ours,
    /// Another instance's live entry comes first: withdraw.
    Behind,
    /// Only later entries of other instances: look again.
    Ahead,
}

/// Judges the live entries of other instances against ours; stale
/// entries are returned for deletion.
fn judge<'a>(
    entries: &'a [Entry],
    me: &str,
    ticket: u64,
    now: u64,
    stale_after: u64,
) -> (Look, Vec<&'a str>) {
    let mut stale = Vec::new();
    let mut look = Look::Ours;
    for e in entries {
        // Ours are never stale to us: a PUT slower than `stale_after`
        // must not make us delete the entry we are about to hold.
        if e.instance == me {
            continue;
        }
        if e.announced.saturating_add(stale_after) < now
            || e.announced > now.saturating_add(stale_after)
        {
            stale.push(e.key.as_str());
            continue;
        }
        if (e.ticket, e.instance.as_str()) < (ticket, me) {
            return (Look::Behind, stale);
        }
        look = Look::Ahead;
    }
    (look, stale)
}

impl Turns {
    pub fn new(
        store: SharedStore,
        prefix: String,
        instance: InstanceId,
        tuning: TurnTuning,
    ) -> Turns {
        Turns {
            store,
            prefix,
            instance,
            tuning,
            kept: Arc::default(),
            skip_until: Mutex::new(None),
        }
    }

    /// Done placing with `held`. `more`: other placements of this
    /// instance wait for the mailbox; the turn is then kept for the next
    /// one, within the limits of [`TurnTuning::keep_for`] and
    /// [`TurnTuning::keep_uses`], and released by a timer if nobody
    /// takes it.
    pub fn done(&self, mut held: Held, more: bool) {
        held.uses += 1;
        let keep = more
            && held.uses < self.tuning.keep_uses
            && held.taken.elapsed() < self.tuning.keep_for;
        if !keep {
            held.release();
            return;
        }
        let Some(key) = held.key.clone() else {
            return;
        };
        let left = self.tuning.keep_for.saturating_sub(held.taken.elapsed());
        if let Some(old) = self.kept.lock().expect("turn lock").replace(held) {
            old.release();
        }
        let kept = self.kept.clone();
        tokio::spawn(async move {
            tokio::time::sleep(left).await;
            let expired = {
                let mut slot = kept.lock().expect("turn lock");
                match slot.as_ref() {
                    Some(h) if h.key.as_ref() == Some(&key) => slot.take(),
                    _ => None,
                }
            };
            if let Some(held) = expired {
                held.release();
            }
        });
    }

    pub fn tuning(&self) -> &TurnTuning {
        &self.tuning
    }

    /// Waits for this instance's turn (see the module text). `None`: no
    /// turn is being taken for now (a recent wait timed out). Store errors
    /// are returned: the placement would fail on them too.
    pub async fn take(&self) -> Result<Option<Held>, StoreError> {
        let kept = self.kept.lock().expect("turn lock").take();
        if let Some(held) = kept {
            if held.taken.elapsed() < self.tuning.keep_for {
                return Ok(Some(held));
            }
            held.release();
        }
        {
            let mut skip = self.skip_until.lock().expect("turn lock");
            match *skip {
                Some(until) if Instant::now() < until => return Ok(None),
                Some(_) => *skip = None,
                None => {}
            }
        }
        let started = Instant::now();
        let ticket = now_ms();
        let me = self.instance.as_str();
        let mut poll = self.tuning.min_poll;
        let mut deleted = HashSet::new();
        loop {
            let key = format!(
                "{}{ticket:016x}-{:016x}-{:08x}-{me}",
                self.prefix,
                now_ms(),
                rand::random::<u32>()
            );
            // Armed before the PUT: a failed or cancelled announcement is
            // deleted too.
            let mut held = Held {
                store: self.store.clone(),
                key: Some(key.clone()),
                taken: Instant::now(),
                uses: 0,
            };
            self.store.put(&key, Bytes::new()).await?;
            // Looks while announced.
            loop {
                match self.look(ticket, &mut deleted).await? {
                    Look::Ours => return Ok(Some(held)),
                    _ if started.elapsed() >= self.tuning.max_wait => {
                        tracing::info!(turns = %self.prefix, "no placement turn within the wait; placing anyway, and without turns for a while");
                        *self.skip_until.lock().expect("turn lock") =
                            Some(Instant::now() + self.tuning.stale_after);
                        return Ok(Some(held));
                    }
                    Look::Behind => break,
                    Look::Ahead => {}
                }
                tokio::time::sleep(poll).await;
                poll = (poll * 2).min(self.tuning.max_poll);
            }
            // Withdrawn: wait until nobody is ahead, then announce again.
            held.key = None;
            self.store.delete(&key).await?;
            loop {
                tokio::time::sleep(poll).await;
                poll = (poll * 2).min(self.tuning.max_poll);
                let look = self.look(ticket, &mut deleted).await?;
                if look != Look::Behind || started.elapsed() >= self.tuning.max_wait {
                    break;
                }
            }
        }
    }

    /// One look: LIST the entries, judge ours against them, and have the
    /// stale ones deleted (each once per wait).
    async fn look(&self, ticket: u64, deleted: &mut HashSet<String>) -> Result<Look, StoreError> {
        let entries = self.entries().await?;
        let stale_after = self.tuning.stale_after.as_millis() as u64;
        let (look, stale) = judge(
            &entries,
            self.instance.as_str(),
            ticket,
            now_ms(),
            stale_after,
        );
        self.delete_stale(stale, deleted);
        Ok(look)
    }

    async fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        Ok(list_all(self.store.as_ref(), &self.prefix, None)
            .await?
            .iter()
            .filter_map(|meta| Entry::parse(&self.prefix, &meta.key))
            .collect())
    }

    /// Deletes stale entries in the background, each once per wait.
    fn delete_stale(&self, stale: Vec<&str>, deleted: &mut HashSet<String>) {
        let keys: Vec<String> = stale
            .into_iter()
            .filter(|k| deleted.insert((*k).to_owned()))
            .map(str::to_owned)
            .collect();
        if keys.is_empty() {
            return;
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.delete_many(&keys).await {
                tracing::debug!(error = %e, "deleting stale placement turns failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ticket: u64, announced: u64, instance: &str) -> Entry {
        Entry {
            ticket,
            announced,
            instance: instance.into(),
            key: format!("p/{ticket:016x}-{announced:016x}-0000abcd-{instance}"),
        }
    }

    #[test]
    fn entries_parse_back() {
        let e = entry(5, 7, "site_a");
        assert_eq!(Entry::parse("p/", &e.key), Some(e));
        assert_eq!(Entry::parse("p/", "p/zz-01-02-a"), None);
        assert_eq!(Entry::parse("p/", "p/01"), None);
    }

    #[test]
    fn the_smallest_ticket_goes_first_and_stale_entries_do_not_count() {
        let now = 10_000;
        // Alone, or only with our own older entries.
        assert_eq!(judge(&[], "b", 50, now, 5000).0, Look::Ours);
        assert_eq!(
            judge(&[entry(40, now, "b")], "b", 50, now, 5000).0,
            Look::Ours
        );
        // An earlier ticket of another instance: withdraw.
        assert_eq!(
            judge(&[entry(40, now, "a")], "b", 50, now, 5000).0,
            Look::Behind
        );
        // Same ticket: the instance name breaks the tie.
        assert_eq!(
            judge(&[entry(50, now, "a")], "b", 50, now, 5000).0,
            Look::Behind
        );
        assert_eq!(
            judge(&[entry(50, now, "c")], "b", 50, now, 5000).0,
            Look::Ahead
        );
        // A later one: keep looking.
        assert_eq!(
            judge(&[entry(60, now, "a")], "b", 50, now, 5000).0,
            Look::Ahead
        );
        // A stale one is ignored and reported for deletion, and so is one
        // announced ahead of our clock (planted, or a clock far off).
        let old = [entry(40, now - 6000, "a")];
        let (look, stale) = judge(&old, "b", 50, now, 5000);
        assert_eq!((look, stale), (Look::Ours, vec![old[0].key.as_str()]));
        let ahead = [entry(0, u64::MAX, "a")];
        let (look, stale) = judge(&ahead, "b", 50, now, 5000);
        assert_eq!((look, stale), (Look::Ours, vec![ahead[0].key.as_str()]));
        // Ours are never stale to us.
        let mine = [entry(40, now - 6000, "b")];
        assert_eq!(judge(&mine, "b", 50, now, 5000), (Look::Ours, vec![]));
    }
}
