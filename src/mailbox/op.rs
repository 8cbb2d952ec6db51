//! Mailbox operations: what a mailbox's log is made of (DESIGN.md §4), and
//! the ids that name messages inside it. UIDs never appear in an op: a UID
//! is computed by every reader from the op set (see `claims`), so an op
//! cannot carry a wrong one, and clients' UIDs are translated to
//! [`MessageId`]s before an op is written.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::MailboxError;
use crate::log::OpId;

/// A message's identity for its whole life in a mailbox: the op that placed
/// it (an append or a copy-in) and its index in that op. Unlike a UID, it
/// never changes, and a fix-up moves a message to a new UID without
/// changing it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    pub op: OpId,
    pub index: u32,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.op, self.index)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "msg:{}.{}", &self.op.to_hex()[..8], self.index)
    }
}

impl FromStr for MessageId {
    type Err = MailboxError;

    /// Parses `<op id hex>.<index>`.
    fn from_str(s: &str) -> Result<MessageId, MailboxError> {
        let bad = || MailboxError::BadMessageId(s.to_owned());
        let (op, index) = s.split_once('.').ok_or_else(bad)?;
        let op = op.parse().map_err(|_| bad())?;
        let index = index.parse().map_err(|_| bad())?;
        Ok(MessageId { op, index })
    }
}

// A string, so that it can be a JSON map key in snapshots.
impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MessageId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What the mailbox knows of a message body without opening it. A
/// placeholder for the full summary of DESIGN.md §4 (blob key, ENVELOPE,
/// BODYSTRUCTURE, search headers, preview), which will travel in `summary`
/// or replace it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRef {
    /// The body object (`users/<u>/blob/<blob-id>`), shared by copies.
    pub blob_id: String,
    /// RFC822.SIZE (RFC 9051 §7.5.2).
    pub size: u64,
    /// INTERNALDATE, seconds since the Unix epoch (RFC 9051 §2.3.3).
    pub internal_date: i64,
    /// Opaque summary bytes; not interpreted here.
    #[serde(default)]
    pub summary: Vec<u8>,
}

/// A message placed by an append or a copy-in, with its initial flags
/// (RFC 9051 §6.3.12 APPEND flag list; COPY keeps the source's flags,
/// §6.4.7).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    pub message: MessageRef,
    #[serde(default)]
    pub flags: Vec<String>,
}

/// One operation on a mailbox.
///
/// Ops that place messages (`Append`, `CopyIn`) and `FixUp` make UID
/// claims, one per message, in list order; every op is a change for MODSEQ
/// purposes. Ops naming messages that do not exist, or no longer exist,
/// are kept in the set but change nothing visible.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxOp {
    /// APPEND, or a delivery drained from `incoming/`: one new message.
    Append(NewMessage),
    /// The destination side of COPY or MOVE (RFC 9051 §6.4.7–8, RFC 6851):
    /// new messages referencing existing blobs. MOVE's source side is an
    /// `Expunge` in the source mailbox's log.
    CopyIn(Vec<NewMessage>),
    /// STORE (RFC 9051 §6.4.6) as explicit sets and clears: `+FLAGS` sets,
    /// `-FLAGS` clears, `FLAGS` sets the given flags and clears the others
    /// the writer saw. Each (message, flag) is a last-writer-wins register.
    Store {
        targets: Vec<MessageId>,
        set: Vec<String>,
        clear: Vec<String>,
    },
    /// EXPUNGE / UID EXPUNGE / the source side of MOVE. Wins over any
    /// concurrent change to the same message.
    Expunge(Vec<MessageId>),
    /// Fresh UID claims for displaced messages (see `claims`).
    FixUp(Vec<MessageId>),
}

impl MailboxOp {
    /// How many UID claims this op makes.
    pub fn claim_count(&self) -> usize {
        match self {
            MailboxOp::Append(_) => 1,
            MailboxOp::CopyIn(messages) => messages.len(),
            MailboxOp::FixUp(targets) => targets.len(),
            MailboxOp::Store { .. } | MailboxOp::Expunge(_) => 0,
        }
    }

    /// The messages this op concerns, `id` being the op's own id (for the
    /// ones it places).
    pub fn targets(&self, id: OpId) -> Vec<MessageId> {
        let placed = |n: usize| {
            (0..n as u32)
                .map(|index| MessageId { op: id, index })
                .collect()
        };
        match self {
            MailboxOp::Append(_) => placed(1),
            MailboxOp::CopyIn(messages) => placed(messages.len()),
            MailboxOp::Store { targets, .. }
            | MailboxOp::Expunge(targets)
            | MailboxOp::FixUp(targets) => targets.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_round_trips() {
        let id = MessageId {
            op: OpId::of_bytes(b"a"),
            index: 7,
        };
        assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<MessageId>(&json).unwrap(), id);
        for bad in ["", "x.1", &format!("{}", id.op), &format!("{}.-1", id.op)] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad:?}");
        }
    }
}
