//! UID claims (doc/consistency.md, "UIDs: claims"): how a message gets
//! its UID with no coordinator.
//!
//! - Every op carries a UID clock: the highest UID claim in its causal past
//!   (itself included). An op that places k messages (append, copy-in,
//!   fix-up) claims `clock(parents) + 1 ..= clock(parents) + k`, one value
//!   per message, in list order. Readers compute this; ops carry no UID.
//! - In a causally closed op set every value `1..=max` is claimed, since
//!   the op that claimed `v` has the claim of `v - 1` in its past. So an op
//!   found late, after others that did not see it, necessarily repeats a
//!   value already claimed: lateness shows in the op set itself, with no
//!   clock assumption.
//! - A value is valid iff every claim of it names the same message
//!   (refinement of "no other op makes the same claim": two fix-ups that
//!   saw the same displaced message in the same state make identical
//!   claims, and agreeing is no conflict). Claimants only accumulate, so a
//!   value, once invalid, is never valid again: a duplicated UID is never
//!   reused.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

/// A message as the state numbers it: its slot in the state's entry
/// table (4 bytes, where a [`super::MessageId`] takes 20). Slots depend on
/// the order ops arrived in, so they never leave one state.
pub type Slot = u32;

/// `by_value` marker: nobody claims the value.
const NOBODY: Slot = Slot::MAX;
/// `by_value` marker: several messages claim it (see `disputed`).
const DISPUTED: Slot = Slot::MAX - 1;
/// A claimant that is no message: an op known lost, whose claims are
/// unknown (see [`Claims::mark_lost`]). Never a slot of the entry table.
pub const LOST: Slot = Slot::MAX - 2;

/// Claim value → the distinct messages claiming it. Values are dense (in
/// a causally closed set every value `1..=max` is claimed), so a vector
/// indexed by value holding the sole claimant, 4 bytes per UID; the rare
/// disputed values keep their claimants aside.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    by_value: Vec<Slot>,
    /// Claimants of disputed values: sorted, at least two.
    disputed: BTreeMap<u32, Box<[Slot]>>,
}

impl Claims {
    /// Records that `message` claims `value`; returns every claimant of
    /// `value` (sorted), whose visibility may have changed.
    pub fn add(&mut self, value: u32, message: Slot) -> &[Slot] {
        debug_assert!(message <= LOST, "slot out of range");
        let at = value as usize;
        if self.by_value.len() <= at {
            self.by_value.resize(at + 1, NOBODY);
        }
        match self.by_value[at] {
            NOBODY => self.by_value[at] = message,
            DISPUTED => {
                let all = self.disputed.entry(value).or_default();
                if let Err(i) = all.binary_search(&message) {
                    let mut more = all.to_vec();
                    more.insert(i, message);
                    *all = more.into_boxed_slice();
                }
            }
            sole if sole == message => {}
            sole => {
                let mut both = [sole, message];
                both.sort_unstable();
                self.disputed.insert(value, Box::new(both));
                self.by_value[at] = DISPUTED;
            }
        }
        self.claimants(value)
    }

    /// Records that `value`, unclaimed so far, was claimed by an op known
    /// lost: a message claiming it later (the lost op found again, or an
    /// op concurrent with it) shares it with [`LOST`], so it is never
    /// valid and nobody is shown under a UID a lost op may have shown.
    /// Returns whether the value was unclaimed (and is now marked).
    pub fn mark_lost(&mut self, value: u32) -> bool {
        let at = value as usize;
        if self.by_value.get(at).is_some_and(|c| *c != NOBODY) {
            return false;
        }
        self.add(value, LOST);
        true
    }

    pub fn claimants(&self, value: u32) -> &[Slot] {
        match self.by_value.get(value as usize) {
            None | Some(&NOBODY) => &[],
            Some(&DISPUTED) => self.disputed.get(&value).map_or(&[], |all| all),
            Some(sole) => std::slice::from_ref(sole),
        }
    }

    /// Whether `message` holds `value` alone.
    pub fn is_sole(&self, value: u32, message: Slot) -> bool {
        self.by_value.get(value as usize) == Some(&message)
    }

    /// The highest value claimed (valid or not), 0 if none.
    pub fn max(&self) -> u32 {
        self.by_value
            .iter()
            .rposition(|c| *c != NOBODY)
            .map_or(0, |v| v as u32)
    }

    /// Drops spare capacity (after a snapshot is read).
    pub fn shrink_to_fit(&mut self) {
        self.by_value.shrink_to_fit();
    }
}

/// The values an op with `count` claims makes when the highest claim in its
/// past is `past`.
pub fn first_claims(past: u32, count: usize) -> Option<RangeInclusive<u32>> {
    let first = u64::from(past) + 1;
    let last = u64::from(past) + count as u64;
    let last = u32::try_from(last).ok()?;
    Some(first as u32..=last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_message_claiming_twice_stays_valid() {
        let mut claims = Claims::default();
        claims.add(5, 1);
        claims.add(5, 1);
        assert!(claims.is_sole(5, 1));
        claims.add(5, 2);
        assert!(!claims.is_sole(5, 1) && !claims.is_sole(5, 2));
        assert_eq!(claims.max(), 5);
        // A third claimant, and again the first: sorted, each once.
        claims.add(5, 0);
        assert_eq!(claims.add(5, 1), [0, 1, 2]);
        assert_eq!(claims.claimants(4), [] as [Slot; 0]);
        assert_eq!(claims.claimants(6), [] as [Slot; 0]);
        claims.add(2, 3);
        assert_eq!(claims.max(), 5);
        assert_eq!(claims.claimants(2), [3]);
    }

    #[test]
    fn a_value_marked_lost_is_valid_for_nobody() {
        let mut claims = Claims::default();
        claims.add(1, 0);
        assert!(!claims.mark_lost(1), "claimed already");
        assert!(claims.mark_lost(3));
        assert_eq!(claims.max(), 3);
        assert_eq!(claims.add(3, 7), [7, LOST]);
        assert!(!claims.is_sole(3, 7));
    }

    #[test]
    fn claims_follow_the_past() {
        assert_eq!(first_claims(0, 2), Some(1..=2));
        assert_eq!(first_claims(2, 1), Some(3..=3));
        assert!(first_claims(2, 0).is_some_and(|r| r.is_empty()));
        assert_eq!(first_claims(u32::MAX - 1, 2), None);
    }
}
