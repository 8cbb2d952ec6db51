//! UID claims (DESIGN.md §4, "Claims" and "Validity"): how a message gets
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

use std::collections::HashMap;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use super::op::MessageId;
use crate::log::OpId;

/// Claim value → the distinct messages claiming it. Values are dense (in
/// a causally closed set every value `1..=max` is claimed), so a vector
/// indexed by value, one slot of 24 bytes per UID, with no allocation
/// unless a value is disputed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    by_value: Vec<Claimants>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Claimants {
    #[default]
    None,
    One(MessageId),
    /// Sorted, at least two.
    Many(Box<[MessageId]>),
}

impl Claimants {
    fn as_slice(&self) -> &[MessageId] {
        match self {
            Claimants::None => &[],
            Claimants::One(m) => std::slice::from_ref(m),
            Claimants::Many(ms) => ms,
        }
    }
}

impl Claims {
    /// Records that `message` claims `value`; returns every claimant of
    /// `value` (sorted), whose visibility may have changed.
    pub fn add(&mut self, value: u32, message: MessageId) -> &[MessageId] {
        let at = value as usize;
        if self.by_value.len() <= at {
            self.by_value.resize(at + 1, Claimants::None);
        }
        let slot = &mut self.by_value[at];
        *slot = match std::mem::take(slot) {
            Claimants::None => Claimants::One(message),
            Claimants::One(m) if m == message => Claimants::One(m),
            other => {
                let mut all = other.as_slice().to_vec();
                if let Err(i) = all.binary_search(&message) {
                    all.insert(i, message);
                }
                Claimants::Many(all.into_boxed_slice())
            }
        };
        slot.as_slice()
    }

    pub fn claimants(&self, value: u32) -> &[MessageId] {
        self.by_value
            .get(value as usize)
            .map_or(&[], Claimants::as_slice)
    }

    /// Whether `message` holds `value` alone.
    pub fn is_sole(&self, value: u32, message: &MessageId) -> bool {
        self.claimants(value) == [*message]
    }

    /// The highest value claimed (valid or not), 0 if none.
    pub fn max(&self) -> u32 {
        self.by_value
            .iter()
            .rposition(|c| !matches!(c, Claimants::None))
            .map_or(0, |v| v as u32)
    }

    /// Drops spare capacity (after a snapshot is read).
    pub fn shrink_to_fit(&mut self) {
        self.by_value.shrink_to_fit();
    }
}

/// The UID clock of every op: the highest claim in its causal past.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UidClock {
    tops: HashMap<OpId, u32>,
}

impl UidClock {
    /// Highest claim in the causal past of an op with these parents.
    /// Parents the clock never saw count as 0 (cannot happen for ops the
    /// DAG delivered: it delivers parents first).
    pub fn past(&self, parents: &[OpId]) -> u32 {
        parents
            .iter()
            .filter_map(|p| self.tops.get(p))
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// Records op `id` with `count` claims after `parents`, and returns the
    /// claimed values. `None` when they would not fit in a UID (2^32 - 1,
    /// RFC 9051 §2.3.1.1): the op then claims nothing and its messages stay
    /// displaced; only a new UIDVALIDITY can help then.
    pub fn record(
        &mut self,
        id: OpId,
        parents: &[OpId],
        count: usize,
    ) -> Option<RangeInclusive<u32>> {
        let past = self.past(parents);
        let claims = first_claims(past, count);
        let top = match &claims {
            Some(range) if count > 0 => *range.end(),
            _ => past,
        };
        self.tops.insert(id, top);
        claims
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

    fn msg(n: u8) -> MessageId {
        MessageId {
            op: OpId::from_raw([n; 16]),
            index: 0,
        }
    }

    #[test]
    fn same_message_claiming_twice_stays_valid() {
        let mut claims = Claims::default();
        claims.add(5, msg(1));
        claims.add(5, msg(1));
        assert!(claims.is_sole(5, &msg(1)));
        claims.add(5, msg(2));
        assert!(!claims.is_sole(5, &msg(1)) && !claims.is_sole(5, &msg(2)));
        assert_eq!(claims.max(), 5);
        // A third claimant, and again the first: sorted, each once.
        claims.add(5, msg(0));
        assert_eq!(claims.add(5, msg(1)), [msg(0), msg(1), msg(2)]);
        assert_eq!(claims.claimants(4), []);
        assert_eq!(claims.claimants(6), []);
        claims.add(2, msg(3));
        assert_eq!(claims.max(), 5);
    }

    #[test]
    fn clock_is_lamport_over_claims() {
        let mut clock = UidClock::default();
        let a = OpId::from_raw([1; 16]);
        let b = OpId::from_raw([2; 16]);
        let c = OpId::from_raw([3; 16]);
        assert_eq!(clock.record(a, &[], 2), Some(1..=2));
        // An op that claims nothing carries its past's clock forward.
        assert!(clock.record(b, &[a], 0).is_some_and(|r| r.is_empty()));
        assert_eq!(clock.past(&[b]), 2);
        assert_eq!(clock.record(c, &[b], 1), Some(3..=3));
        assert_eq!(first_claims(u32::MAX - 1, 2), None);
    }
}
