//! One instance's copy of a log: the op set (a [`Dag`]) and the state
//! computed from it, plus the envelope every op is written in. Generic over
//! the state ([`State`]); the mailbox is one such state. Pure: the I/O layer
//! lists, fetches, decrypts and then calls [`Replica::insert_bytes`]; to
//! write, it calls [`Replica::prepare`], stores the bytes, and inserts its
//! own op only after the store acknowledged the PUT (doc/consistency.md,
//! "The I/O layer", writes).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::LogError;
use super::dag::{Dag, Header, OpMeta};
use super::id::{Hlc, InstanceId, OpId};

/// A state computed from a log's op set.
///
/// Contract (what makes convergence, I1, hold): the state after a set of
/// ops must not depend on the order they were delivered in, as long as
/// parents come before children. The replica delivers ops in *some* causal
/// order (whatever order the store showed them in), including ops found
/// late, after ops that sort after them. Implementations either make every
/// field a function of the set (a join-semilattice; the mailbox does this)
/// or recompute from a checkpoint.
pub trait State {
    type Op;

    /// Applies a delivered op. Every parent of `meta.id` was delivered
    /// before. Must not panic on an op that makes no sense (an unknown
    /// message, say): ignore or record it.
    fn apply(&mut self, op: &Self::Op, meta: &OpMeta);

    /// The sequence number of an op already applied grew to `seq` (an op
    /// concurrent with it was delivered; see [`Dag`]). Called before the
    /// new op is applied. States that do not track MODSEQ ignore it.
    fn reseq(&mut self, _op: &OpId, _seq: u64) {}

    /// Side objects (under the log's `side/` prefix, by name) this state
    /// refers to: a snapshot of it keeps them from garbage collection.
    fn side_objects(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether the state would like a snapshot soon, whatever the op
    /// count (the mailbox: too many summaries held in memory).
    fn wants_snapshot(&self) -> bool {
        false
    }

    /// The clock an op written now with `parents` carries
    /// ([`Header::clock`]): for the mailbox, the highest UID claim it must
    /// stay above. Recorded in the op so that a reader missing one of the
    /// parents (lost) computes the same as the writer. States with no
    /// such clock return 0, which is left out of the op.
    fn clock_for(&self, _parents: &[OpId]) -> u64 {
        0
    }

    /// The object of op `op` was found damaged (`sealed_len` bytes that
    /// do not open) and the op is lost: the state may guard against what
    /// the op could have done (the mailbox reserves the UIDs it could
    /// have claimed, so they are not handed out again).
    fn damaged_op(&mut self, _op: OpId, _sealed_len: usize) {}
}

/// An op as written: header (parents, clock, writer) and body. Its
/// canonical bytes are its JSON encoding; its id the hash of those bytes
/// ([`OpId::of_bytes`]). Readers hash the bytes they received, never a
/// re-encoding, so the encoding need only be stable for one writer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<O> {
    pub header: Header,
    pub body: O,
}

impl<O: Serialize> Envelope<O> {
    /// Canonical bytes and id of this op.
    pub fn encode(&self) -> Result<(OpId, Vec<u8>), LogError> {
        let bytes = serde_json::to_vec(self).map_err(LogError::Encode)?;
        Ok((OpId::of_bytes(&bytes), bytes))
    }
}

impl<O: DeserializeOwned> Envelope<O> {
    /// Decodes canonical bytes; the id is the hash of exactly these bytes.
    pub fn decode(bytes: &[u8]) -> Result<(OpId, Envelope<O>), LogError> {
        let envelope = serde_json::from_slice(bytes).map_err(LogError::Decode)?;
        Ok((OpId::of_bytes(bytes), envelope))
    }
}

/// One instance's op set and the state computed from it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(serialize = "S: Serialize", deserialize = "S: Deserialize<'de>"))]
pub struct Replica<S: State> {
    dag: Dag<S::Op>,
    state: S,
}

impl<S: State> Replica<S> {
    /// A replica of an empty log whose state starts as `state`.
    pub fn new(state: S) -> Self {
        Replica {
            dag: Dag::new(),
            state,
        }
    }

    /// Adds an op (decoded, with its id). Returns how many ops were applied
    /// as a result: 0 if it waits for parents or was already known.
    pub fn insert(&mut self, id: OpId, op: Envelope<S::Op>) -> usize {
        let delivered = self.dag.insert(id, op.header, op.body);
        self.apply(delivered)
    }

    /// Gives up waiting for the absent op `id` (see [`Dag::declare_lost`])
    /// and applies the ops that waited for it. Returns how many.
    pub fn declare_lost(&mut self, id: OpId) -> usize {
        let delivered = self.dag.declare_lost(id);
        self.apply(delivered)
    }

    fn apply(&mut self, delivered: Vec<super::Delivered<S::Op>>) -> usize {
        let count = delivered.len();
        for d in delivered {
            for (other, seq) in &d.bumped {
                self.state.reseq(other, *seq);
            }
            self.state.apply(&d.payload, &d.meta);
        }
        count
    }

    /// Decodes an op's canonical bytes (after decryption) and inserts it.
    /// A malformed op is an error for the caller to report; the replica is
    /// unchanged.
    pub fn insert_bytes(&mut self, bytes: &[u8]) -> Result<(OpId, usize), LogError>
    where
        S::Op: DeserializeOwned,
    {
        let (id, op) = Envelope::decode(bytes)?;
        Ok((id, self.insert(id, op)))
    }

    /// A new op to write now: parents are the current heads, the clock is
    /// ticked past everything seen. Not inserted: the caller inserts it
    /// once the store acknowledged it.
    pub fn prepare(&self, body: S::Op, instance: InstanceId, wall_ms: u64) -> Envelope<S::Op> {
        let parents = self.dag.heads();
        let header = Header {
            clock: self.state.clock_for(&parents),
            parents,
            hlc: Hlc::tick(self.dag.latest(), wall_ms),
            instance,
        };
        Envelope { header, body }
    }

    pub fn state(&self) -> &S {
        &self.state
    }

    /// The state, for bookkeeping that does not change what the op set
    /// means (where the mailbox keeps summaries); never to apply changes.
    pub fn state_mut(&mut self) -> &mut S {
        &mut self.state
    }

    pub fn dag(&self) -> &Dag<S::Op> {
        &self.dag
    }

    pub fn contains(&self, id: &OpId) -> bool {
        self.dag.contains(id)
    }
}
