//! The causal operation log (doc/consistency.md, "The op set"), pure part: op
//! ids and names, the hybrid logical clock, the causal DAG that buffers ops
//! until their parents are present and orders them deterministically, and
//! [`Replica`], one instance's op set with the [`State`] computed from it.
//!
//! Not here (yet): listing, fetching, encrypting and writing op objects,
//! snapshots on the store and garbage collection. They wrap this module;
//! this module never does I/O.

pub mod dag;
pub mod id;
pub mod replica;
pub mod stored;

pub use dag::{Dag, Delivered, Header, OpMeta};
pub use id::{Hlc, InstanceId, OpId, OrderKey, now_ms, op_name, op_name_floor, parse_op_name};
pub use replica::{Envelope, Replica, State};

/// Makes room for one more entry in a table that lives as long as a
/// mailbox is open, growing it by an eighth instead of doubling: the
/// entries are most of an open mailbox's memory, and a doubled table
/// would leave up to half of it unused. Copying an eighth more each time
/// keeps inserts amortised constant.
pub(crate) fn reserve_gently<K, V>(table: &mut indexmap::IndexMap<K, V>)
where
    K: std::hash::Hash + Eq,
{
    if table.len() == table.capacity() {
        table.reserve_exact((table.len() / 8).max(16));
    }
}

/// What can be wrong with an op or its name.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid op id {0:?}")]
    BadId(String),
    #[error("invalid instance id {0:?} (1 to 32 of a-z, 0-9, _)")]
    BadInstance(String),
    #[error("invalid op object name {0:?}")]
    BadName(String),
    #[error("cannot encode op: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("malformed op: {0}")]
    Decode(#[source] serde_json::Error),
}
