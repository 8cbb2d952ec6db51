//! The causal DAG of one log (doc/consistency.md, "The op set"): which ops are
//! present, their parents, heads, a deterministic total order consistent with
//! causality, and the per-op sequence numbers that MODSEQ is built on. Ops may
//! arrive in any order; an op is buffered until all its parents are present,
//! then delivered. Pure: no I/O, no decryption, no knowledge of what ops mean.
//!
//! Sequence number of an op `o` in a set `S`: `seq(o) = |S| - |desc(o)|`,
//! the number of ops in `S` that are not strict descendants of `o`. It only
//! grows as `S` grows (by one for each new op concurrent with `o`), and for
//! every causally closed `T ⊆ S` that does not hold `o`, `|T| < seq(o)`:
//! such a `T` holds neither `o` nor any descendant of `o`. So "the set had
//! `n` ops when a client looked" is a watermark that every op found later,
//! however late, exceeds. The mailbox uses `|S|` as HIGHESTMODSEQ and
//! `seq` as the MODSEQ of each change (see `mailbox::state`).

use std::collections::{BTreeSet, BinaryHeap, HashMap};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::id::{Hlc, InstanceId, OpId, OrderKey};

/// What an op says about its place in the log, as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The heads its writer had seen: the op is causally after them and
    /// everything before them.
    pub parents: Vec<OpId>,
    /// The writer's clock reading (also the start of the op's object name).
    pub hlc: Hlc,
    pub instance: InstanceId,
    /// The state's clock as the writer computed it from the parents (the
    /// mailbox's UID clock, see [`State::clock_for`](super::State)): so
    /// that an op whose parent is lost still means what its writer meant.
    /// 0 (and left out of the op's bytes) for states that keep none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub clock: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What the DAG knows of a delivered op, handed to the state with the op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpMeta {
    pub id: OpId,
    /// Distinct parents, sorted.
    pub parents: Vec<OpId>,
    /// Position in the total order (effective clock, instance, id).
    pub key: OrderKey,
    /// 1 + the longest parent chain: a parent's is always smaller.
    pub generation: u64,
    /// The op's sequence number right after delivery: the number of ops
    /// present, itself included (it has no descendants yet).
    pub seq: u64,
    /// [`Header::clock`], as written.
    pub clock: u64,
}

/// An op the DAG has just delivered, in causal order.
#[derive(Debug)]
pub struct Delivered<P> {
    pub meta: OpMeta,
    pub payload: P,
    /// Ops already present that are concurrent with this one, with their
    /// new (incremented) sequence numbers.
    pub bumped: Vec<(OpId, u64)>,
}

/// A delivered op: 48 bytes, the parents inline when there is one (the
/// usual case), the writer interned in [`Dag::instances`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    parents: Parents,
    /// The effective clock (the writer's, lifted above every parent's),
    /// flattened so that it packs with the small fields.
    wall_ms: u64,
    counter: u32,
    instance: u32,
    generation: u32,
    /// Sequence numbers count ops, so 32 bits are ample.
    seq: u32,
}

impl Node {
    fn hlc(&self) -> Hlc {
        Hlc {
            wall_ms: self.wall_ms,
            counter: self.counter,
        }
    }
}

/// An op's distinct parents, sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Parents {
    None,
    One(OpId),
    Many(Box<[OpId]>),
}

impl Parents {
    fn of(parents: &[OpId]) -> Parents {
        match parents {
            [] => Parents::None,
            [one] => Parents::One(*one),
            many => Parents::Many(many.into()),
        }
    }

    fn as_slice(&self) -> &[OpId] {
        match self {
            Parents::None => &[],
            Parents::One(one) => std::slice::from_ref(one),
            Parents::Many(many) => many,
        }
    }
}

#[derive(Debug)]
struct Pending<P> {
    header: Header,
    payload: P,
    /// How many distinct parents are still absent.
    missing: usize,
}

/// The op set of one log, as a causal DAG. `P` is the payload carried
/// through the pending buffer (the op body).
#[derive(Debug)]
pub struct Dag<P> {
    /// In arrival order, which nothing depends on; a table of nodes
    /// beside an index costs less than a hash map of them.
    nodes: IndexMap<OpId, Node>,
    heads: BTreeSet<OpId>,
    /// The highest effective clock seen, for writers' ticks.
    latest: Hlc,
    /// Writers' names, each once: nodes hold an index into it.
    instances: Vec<InstanceId>,
    instance_index: HashMap<InstanceId, u32>,
    /// Ops waiting for parents. Not part of a snapshot: they are still in
    /// the store and are found again by the next sync.
    pending: HashMap<OpId, Pending<P>>,
    /// Absent parent → pending ops waiting for it.
    waiters: HashMap<OpId, Vec<OpId>>,
    /// Parents given up as lost ([`Dag::declare_lost`]) and still absent.
    /// Not part of a snapshot: the ops that named them are delivered, and
    /// a lost op found again is delivered like any other.
    lost: BTreeSet<OpId>,
}

// A snapshot's form of the DAG: `{"nodes": {id: {"parents", "key":
// OrderKey, "generation", "seq"}}, "heads", "latest"}` (older snapshots
// also hold an `order` set, which is ignored: the order is computed from
// the nodes). Written and read node by node, without an intermediate map.

#[derive(Serialize)]
struct NodeOut<'a> {
    parents: &'a [OpId],
    key: OrderKey,
    generation: u64,
    seq: u64,
}

#[derive(Deserialize)]
struct NodeIn {
    parents: Vec<OpId>,
    key: OrderKey,
    generation: u64,
    seq: u64,
}

impl<P> Serialize for Dag<P> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Nodes<'a, P>(&'a Dag<P>);
        impl<P> Serialize for Nodes<'_, P> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.nodes.iter().map(|(id, node)| {
                    let out = NodeOut {
                        parents: node.parents.as_slice(),
                        key: self.0.order_key(*id, node),
                        generation: u64::from(node.generation),
                        seq: u64::from(node.seq),
                    };
                    (*id, out)
                }))
            }
        }
        let mut out = s.serialize_struct("Dag", 3)?;
        out.serialize_field("nodes", &Nodes(self))?;
        out.serialize_field("heads", &self.heads)?;
        out.serialize_field("latest", &self.latest)?;
        out.end()
    }
}

/// The nodes of a snapshot, with their writers interned.
#[derive(Default)]
struct NodesIn {
    nodes: IndexMap<OpId, Node>,
    instances: Vec<InstanceId>,
    instance_index: HashMap<InstanceId, u32>,
}

impl<'de> Deserialize<'de> for NodesIn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NodesIn, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = NodesIn;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of op ids to DAG nodes")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<NodesIn, A::Error> {
                let mut out = NodesIn::default();
                while let Some((id, node)) = map.next_entry::<OpId, NodeIn>()? {
                    let NodeIn {
                        mut parents,
                        key,
                        generation,
                        seq,
                    } = node;
                    parents.sort_unstable();
                    parents.dedup();
                    let instance =
                        intern(&mut out.instances, &mut out.instance_index, &key.instance);
                    let node = Node {
                        parents: Parents::of(&parents),
                        wall_ms: key.hlc.wall_ms,
                        counter: key.hlc.counter,
                        instance,
                        generation: u32::try_from(generation).unwrap_or(u32::MAX),
                        seq: u32::try_from(seq).unwrap_or(u32::MAX),
                    };
                    out.nodes.insert(id, node);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Visit)
    }
}

#[derive(Deserialize)]
struct Stored {
    nodes: NodesIn,
    heads: BTreeSet<OpId>,
    latest: Hlc,
}

impl<'de, P> Deserialize<'de> for Dag<P> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dag<P>, D::Error> {
        let Stored {
            nodes:
                NodesIn {
                    mut nodes,
                    instances,
                    instance_index,
                },
            heads,
            latest,
        } = Stored::deserialize(d)?;
        // Room for the ops to come, not a doubling's worth.
        let n = nodes.len();
        nodes.shrink_to(n + n / 16 + 16);
        Ok(Dag {
            nodes,
            heads,
            latest,
            instances,
            instance_index,
            pending: HashMap::new(),
            waiters: HashMap::new(),
            lost: BTreeSet::new(),
        })
    }
}

/// The index of `instance` in `names`, added if new.
fn intern(
    names: &mut Vec<InstanceId>,
    index: &mut HashMap<InstanceId, u32>,
    instance: &InstanceId,
) -> u32 {
    if let Some(i) = index.get(instance) {
        return *i;
    }
    let i = names.len() as u32;
    names.push(instance.clone());
    index.insert(instance.clone(), i);
    i
}

impl<P> Default for Dag<P> {
    fn default() -> Self {
        Dag {
            nodes: IndexMap::new(),
            heads: BTreeSet::new(),
            instances: Vec::new(),
            instance_index: HashMap::new(),
            latest: Hlc::default(),
            pending: HashMap::new(),
            waiters: HashMap::new(),
            lost: BTreeSet::new(),
        }
    }
}

impl<P> Dag<P> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an op. Returns the ops this made deliverable (possibly none,
    /// possibly many: this op and pending ops that waited for it), parents
    /// always before children. An op already present or pending is
    /// ignored: ids are content hashes, so it is the same op.
    pub fn insert(&mut self, id: OpId, mut header: Header, payload: P) -> Vec<Delivered<P>> {
        if self.nodes.contains_key(&id) || self.pending.contains_key(&id) {
            return Vec::new();
        }
        header.parents.sort_unstable();
        header.parents.dedup();
        let absent: Vec<OpId> = header
            .parents
            .iter()
            .filter(|p| !self.nodes.contains_key(*p) && !self.lost.contains(*p))
            .copied()
            .collect();
        if !absent.is_empty() {
            for parent in &absent {
                self.waiters.entry(*parent).or_default().push(id);
            }
            self.pending.insert(
                id,
                Pending {
                    header,
                    payload,
                    missing: absent.len(),
                },
            );
            return Vec::new();
        }
        self.release(vec![(id, header, payload)])
    }

    /// Delivers `ready` and every pending op that was waiting only for
    /// them, parents always before children.
    fn release(&mut self, mut ready: Vec<(OpId, Header, P)>) -> Vec<Delivered<P>> {
        let mut out = Vec::new();
        while let Some((id, header, payload)) = ready.pop() {
            self.lost.remove(&id);
            out.push(self.deliver(id, header, payload));
            ready.extend(self.wake(&id));
        }
        out
    }

    /// The pending ops that become deliverable once `id` is no longer
    /// awaited (delivered, or given up as lost).
    fn wake(&mut self, id: &OpId) -> Vec<(OpId, Header, P)> {
        let mut ready = Vec::new();
        // Sorted so that delivery order does not depend on hash-map
        // iteration; the state must not care, but tests read better.
        let mut woken = self.waiters.remove(id).unwrap_or_default();
        woken.sort_unstable();
        for waiter in woken.into_iter().rev() {
            let Some(p) = self.pending.get_mut(&waiter) else {
                continue;
            };
            p.missing -= 1;
            if p.missing == 0
                && let Some(p) = self.pending.remove(&waiter)
            {
                ready.push((waiter, p.header, p.payload));
            }
        }
        ready
    }

    /// Gives up waiting for `id`, a parent that is absent and known lost
    /// (its object damaged, or missing from complete listings long after
    /// its children were written): the ops waiting only for lost parents
    /// are delivered without it. They still say what their writers meant
    /// ([`Header::clock`]); only what the lost op itself did is missing.
    /// Should it turn up later, it is delivered as an op nobody has seen
    /// yet. Returns the ops delivered, parents before children.
    pub fn declare_lost(&mut self, id: OpId) -> Vec<Delivered<P>> {
        if self.nodes.contains_key(&id) || self.pending.contains_key(&id) {
            return Vec::new();
        }
        self.lost.insert(id);
        let ready = self.wake(&id);
        self.release(ready)
    }

    /// Parents given up as lost and still absent, sorted.
    pub fn lost(&self) -> Vec<OpId> {
        self.lost.iter().copied().collect()
    }

    fn deliver(&mut self, id: OpId, header: Header, payload: P) -> Delivered<P> {
        let concurrent = self.concurrent_with(&header.parents);
        let mut bumped = Vec::with_capacity(concurrent.len());
        for other in concurrent {
            if let Some(node) = self.nodes.get_mut(&other) {
                node.seq = node.seq.saturating_add(1);
                bumped.push((other, u64::from(node.seq)));
            }
        }
        let mut generation = 1u32;
        let mut hlc = header.hlc;
        for parent in &header.parents {
            if let Some(p) = self.nodes.get(parent) {
                generation = generation.max(p.generation.saturating_add(1));
                // Lift the clock above every parent's: a causal successor
                // always sorts after, whatever its writer's clock said.
                hlc = hlc.max(p.hlc().successor());
            }
        }
        let instance = intern(
            &mut self.instances,
            &mut self.instance_index,
            &header.instance,
        );
        let seq = u32::try_from(self.nodes.len() + 1).unwrap_or(u32::MAX);
        for parent in &header.parents {
            self.heads.remove(parent);
        }
        self.heads.insert(id);
        self.latest = self.latest.max(hlc);
        let node = Node {
            parents: Parents::of(&header.parents),
            wall_ms: hlc.wall_ms,
            counter: hlc.counter,
            instance,
            generation,
            seq,
        };
        let key = self.order_key(id, &node);
        super::reserve_gently(&mut self.nodes);
        self.nodes.insert(id, node);
        let meta = OpMeta {
            id,
            parents: header.parents,
            key,
            generation: u64::from(generation),
            seq: u64::from(seq),
            clock: header.clock,
        };
        Delivered {
            meta,
            payload,
            bumped,
        }
    }

    /// The present ops that are not in the causal past of an op whose
    /// parents are `parents` (all present). Walks back from the heads in
    /// decreasing generation, colouring nodes "in the past" or "not", and
    /// stops as soon as no uncoloured-by-past node is left in the queue: a
    /// node's colour is final when it is popped, because all its children
    /// have a higher generation and were popped before. The walk covers
    /// only the concurrent region; when the new op saw every head (the
    /// usual case) it is empty.
    fn concurrent_with(&self, parents: &[OpId]) -> Vec<OpId> {
        if self.heads.iter().all(|h| parents.binary_search(h).is_ok()) {
            return Vec::new();
        }
        let generation = |id: &OpId| self.nodes.get(id).map_or(0, |n| n.generation);
        let mut in_past: HashMap<OpId, bool> = HashMap::new();
        let mut queue = BinaryHeap::new();
        let mut outside = 0usize;
        for p in parents {
            in_past.insert(*p, true);
            queue.push((generation(p), *p));
        }
        for h in &self.heads {
            if !in_past.contains_key(h) {
                in_past.insert(*h, false);
                queue.push((generation(h), *h));
                outside += 1;
            }
        }
        let mut found = Vec::new();
        while outside > 0 {
            let Some((_, id)) = queue.pop() else { break };
            let past = in_past.get(&id).copied().unwrap_or(true);
            if !past {
                outside -= 1;
                found.push(id);
            }
            let Some(node) = self.nodes.get(&id) else {
                continue;
            };
            for parent in node.parents.as_slice() {
                match in_past.get(parent) {
                    None => {
                        in_past.insert(*parent, past);
                        queue.push((generation(parent), *parent));
                        if !past {
                            outside += 1;
                        }
                    }
                    Some(false) if past => {
                        in_past.insert(*parent, true);
                        outside -= 1;
                    }
                    Some(_) => {}
                }
            }
        }
        found
    }

    pub fn contains(&self, id: &OpId) -> bool {
        self.nodes.contains_key(id)
    }

    /// Whether `id` is present or waiting for parents.
    pub fn knows(&self, id: &OpId) -> bool {
        self.nodes.contains_key(id) || self.pending.contains_key(id)
    }

    /// Number of delivered ops (`|S|`).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Current heads: the parents a new op written now should name.
    pub fn heads(&self) -> Vec<OpId> {
        self.heads.iter().copied().collect()
    }

    /// The highest effective clock reading seen.
    pub fn latest(&self) -> Hlc {
        self.latest
    }

    /// Current sequence number of a delivered op.
    pub fn seq(&self, id: &OpId) -> Option<u64> {
        self.nodes.get(id).map(|n| u64::from(n.seq))
    }

    /// Position of a delivered op in the total order.
    pub fn key(&self, id: &OpId) -> Option<OrderKey> {
        self.nodes.get(id).map(|n| self.order_key(*id, n))
    }

    fn order_key(&self, id: OpId, node: &Node) -> OrderKey {
        OrderKey {
            hlc: node.hlc(),
            instance: self.instances[node.instance as usize].clone(),
            id,
        }
    }

    /// Delivered op ids in the deterministic total order (effective clock,
    /// instance, id), which is consistent with causality. Sorts: for tests
    /// and tools, not for every op.
    pub fn order(&self) -> impl Iterator<Item = OpId> + '_ {
        let mut keys: Vec<OrderKey> = self
            .nodes
            .iter()
            .map(|(id, n)| self.order_key(*id, n))
            .collect();
        keys.sort_unstable();
        keys.into_iter().map(|k| k.id)
    }

    /// Delivered op ids, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = &OpId> + '_ {
        self.nodes.keys()
    }

    /// Number of ops waiting for parents.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Parents that pending ops wait for and that are not present: what a
    /// sync should look for (or report, if they never come).
    pub fn missing(&self) -> Vec<OpId> {
        let mut missing: Vec<OpId> = self
            .waiters
            .keys()
            .filter(|id| !self.pending.contains_key(id))
            .copied()
            .collect();
        missing.sort_unstable();
        missing
    }

    /// [`Dag::missing`], each with the lowest clock reading of the pending
    /// ops that name it as a parent: their writers had the missing op
    /// then, so it had landed before that (give or take clock error).
    pub fn missing_since(&self) -> Vec<(OpId, Hlc)> {
        let mut out: Vec<(OpId, Hlc)> = self
            .waiters
            .iter()
            .filter(|(id, _)| !self.pending.contains_key(*id))
            .filter_map(|(id, waiting)| {
                let since = waiting
                    .iter()
                    .filter_map(|w| self.pending.get(w))
                    .map(|p| p.header.hlc)
                    .min()?;
                Some((*id, since))
            })
            .collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> OpId {
        OpId::from_raw([n; 16])
    }

    fn header(parents: &[u8], wall_ms: u64) -> Header {
        Header {
            parents: parents.iter().map(|p| id(*p)).collect(),
            hlc: Hlc {
                wall_ms,
                counter: 0,
            },
            instance: InstanceId::new("i").unwrap(),
            clock: 0,
        }
    }

    fn ids(delivered: &[Delivered<()>]) -> Vec<OpId> {
        delivered.iter().map(|d| d.meta.id).collect()
    }

    #[test]
    fn buffers_until_parents_arrive() {
        let mut dag = Dag::new();
        assert!(dag.insert(id(3), header(&[2], 3), ()).is_empty());
        assert!(dag.insert(id(2), header(&[1], 2), ()).is_empty());
        assert_eq!(dag.missing(), vec![id(1)]);
        let out = dag.insert(id(1), header(&[], 1), ());
        assert_eq!(ids(&out), vec![id(1), id(2), id(3)]);
        assert_eq!(dag.heads(), vec![id(3)]);
        assert_eq!(dag.pending_len(), 0);
        assert!(
            dag.insert(id(2), header(&[1], 2), ()).is_empty(),
            "duplicate ignored"
        );
    }

    #[test]
    fn order_follows_causality_even_against_the_clock() {
        let mut dag = Dag::new();
        dag.insert(id(1), header(&[], 100), ());
        // A child whose writer's clock is behind its parent's.
        dag.insert(id(2), header(&[1], 5), ());
        dag.insert(id(3), header(&[], 50), ());
        assert_eq!(dag.order().collect::<Vec<_>>(), vec![id(3), id(1), id(2)]);
        assert!(dag.key(&id(2)).unwrap().hlc > dag.key(&id(1)).unwrap().hlc);
    }

    #[test]
    fn sequence_numbers_count_non_descendants() {
        let mut dag = Dag::new();
        dag.insert(id(1), header(&[], 1), ());
        // 2 and 3 are concurrent children of 1; 4 merges them.
        dag.insert(id(2), header(&[1], 2), ());
        let out = dag.insert(id(3), header(&[1], 3), ());
        assert_eq!(out[0].bumped, vec![(id(2), 3)]);
        assert_eq!(out[0].meta.seq, 3);
        let out = dag.insert(id(4), header(&[2, 3], 4), ());
        assert!(out[0].bumped.is_empty());
        // A late op concurrent with everything but 1.
        let out = dag.insert(id(5), header(&[1], 5), ());
        let mut bumped = out[0].bumped.clone();
        bumped.sort();
        assert_eq!(bumped, vec![(id(2), 4), (id(3), 4), (id(4), 5)]);
        assert_eq!(dag.seq(&id(1)), Some(1));
        assert_eq!(dag.seq(&id(5)), Some(5));
    }
}
