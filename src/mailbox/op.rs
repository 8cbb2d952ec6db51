//! Mailbox operations: what a mailbox's log is made of (doc/consistency.md,
//! "The op set"), and the ids that name messages inside it. UIDs never appear
//! in an op: a UID is computed by every reader from the op set (see `claims`),
//! so an op cannot carry a wrong one, and clients' UIDs are translated to
//! [`MessageId`]s before an op is written.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::MailboxError;
use crate::crypto::SymmetricKey;
use crate::log::OpId;

/// A message's identity for its whole life in a mailbox: the op that placed
/// it (an append or a copy-in) and its index in that op — or, for a
/// message delivered through `incoming/`, a hash of its delivery id
/// ([`MessageId::delivered`]), so that every op placing the same delivery
/// places the same message. Unlike a UID, it never changes, and a fix-up
/// moves a message to a new UID without changing it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    pub op: OpId,
    pub index: u32,
}

impl MessageId {
    /// The identity of the message a delivery record places: a function of
    /// the record's name alone, so that two instances draining the same
    /// record (doc/consistency.md, "The I/O layer", draining twice) place one
    /// message, not two. The hash is domain-separated from op ids, which hash
    /// op bytes (JSON, never starting with this prefix).
    pub fn delivered(delivery_id: &str) -> MessageId {
        let mut bytes = Vec::with_capacity(DELIVERY_DOMAIN.len() + delivery_id.len());
        bytes.extend_from_slice(DELIVERY_DOMAIN);
        bytes.extend_from_slice(delivery_id.as_bytes());
        MessageId {
            op: OpId::of_bytes(&bytes),
            index: 0,
        }
    }
}

/// Prefix of the bytes hashed by [`MessageId::delivered`].
const DELIVERY_DOMAIN: &[u8] = b"facteur delivery\0";

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
/// placeholder for the full summary (doc/storage.md, "Mailbox snapshots and
/// summary pages": blob key, ENVELOPE, BODYSTRUCTURE, search headers, preview),
/// which will travel in `summary` or replace it.
///
/// `Ord` lets the state pick one description deterministically when a
/// delivery is placed twice (see [`MailboxOp::Deliver`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageRef {
    /// The body object (`users/<u>/blob/<blob-id>`), shared by copies.
    pub blob_id: String,
    /// The key the body object is sealed under (`crypto::seal_body`, the
    /// object name as associated data); copies reference the same.
    pub body_key: BodyKey,
    /// RFC822.SIZE (RFC 9051 §7.5.2).
    pub size: u64,
    /// INTERNALDATE, seconds since the Unix epoch (RFC 9051 §2.3.3).
    pub internal_date: i64,
    /// Opaque summary bytes; not interpreted here. Written in base64: as
    /// a JSON array of numbers they took 3.5 bytes each.
    #[serde(default, with = "base64_bytes")]
    pub summary: Vec<u8>,
}

/// Serde for byte strings as standard base64 text.
pub(crate) mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    /// Decodes the string where the input holds it when it can (a JSON
    /// string without escapes, as base64 always is): summary pages hold
    /// hundreds of these, a few KB each, and a copy of each first cost as
    /// much as the decoding.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Vec<u8>, E> {
                STANDARD.decode(text).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// The random key a message body is sealed under (doc/storage.md, "Encryption":
/// "each message body has its own random key, recorded (under MK) in the op
/// that adds the message"). Redacted in `Debug` and zeroized on drop, as the
/// [`SymmetricKey`] it wraps; comparable so that states can be compared and a
/// twice-placed delivery resolved (see [`MailboxOp::Deliver`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BodyKey(pub SymmetricKey);

impl BodyKey {
    /// A fresh random key, for a new body.
    pub fn random() -> BodyKey {
        BodyKey(SymmetricKey::random())
    }

    pub fn key(&self) -> &SymmetricKey {
        &self.0
    }
}

impl PartialEq for BodyKey {
    fn eq(&self, other: &BodyKey) -> bool {
        self.0.as_bytes() == other.0.as_bytes()
    }
}

impl Eq for BodyKey {}

impl PartialOrd for BodyKey {
    fn partial_cmp(&self, other: &BodyKey) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BodyKey {
    fn cmp(&self, other: &BodyKey) -> std::cmp::Ordering {
        self.0.as_bytes().cmp(other.0.as_bytes())
    }
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

/// A message drained from `incoming/` (doc/storage.md, "Encryption", delivery),
/// with the id of its delivery record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The delivery record's name (`<ts>-<rand>` under `incoming/`). Every
    /// op carrying the same id places the same message
    /// ([`MessageId::delivered`]).
    pub id: String,
    pub new: NewMessage,
}

/// One operation on a mailbox.
///
/// Ops that place messages (`Append`, `CopyIn`, `Deliver`) and `FixUp` make UID
/// claims, one per message, in list order; every op is a change for MODSEQ
/// purposes. Ops naming messages that do not exist, or no longer exist,
/// are kept in the set but change nothing visible.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxOp {
    /// APPEND (RFC 9051 §6.3.12): one new message.
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
    /// Messages drained from `incoming/`, one per delivery record, in
    /// record-name order. A record drained twice (two instances at once, or
    /// a drain whose record delete failed) is one message: its identity is
    /// [`MessageId::delivered`] of the record name, and each placement
    /// makes an ordinary UID claim for that one message. Identical claims
    /// agree; different ones leave the message at its highest claim, or
    /// displaced until a fix-up, as for any concurrent write.
    Deliver(Vec<Delivery>),
    /// UIDs left unused: `n` claims (at most [`MAX_SKIP`]) that name no
    /// message, so that the next placement claims above them. `facteur
    /// import` writes it to keep the UIDs of a mailbox migrated from
    /// another server, gaps included (doc/migration.md). A value it claims
    /// is never valid for a message: one placed concurrently with the same
    /// claim is displaced and claims again after a fix-up, as after any
    /// concurrent placement, so no UID shown names two messages (I2).
    Skip(u32),
}

/// The most claims one [`MailboxOp::Skip`] makes: each costs 4 bytes of
/// the state's claim table, so a gap is bounded even in an op that says
/// more.
pub const MAX_SKIP: u32 = 1 << 20;

impl MailboxOp {
    /// How many UID claims this op makes.
    pub fn claim_count(&self) -> usize {
        match self {
            MailboxOp::Append(_) => 1,
            MailboxOp::CopyIn(messages) => messages.len(),
            MailboxOp::Deliver(deliveries) => deliveries.len(),
            MailboxOp::FixUp(targets) => targets.len(),
            MailboxOp::Skip(n) => (*n).min(MAX_SKIP) as usize,
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
            MailboxOp::Deliver(deliveries) => deliveries
                .iter()
                .map(|d| MessageId::delivered(&d.id))
                .collect(),
            MailboxOp::Store { targets, .. }
            | MailboxOp::Expunge(targets)
            | MailboxOp::FixUp(targets) => targets.clone(),
            MailboxOp::Skip(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_written_in_base64() {
        let message = MessageRef {
            blob_id: "b".into(),
            body_key: BodyKey(SymmetricKey::random()),
            size: 1,
            internal_date: 0,
            summary: b"{\"size\":1}".to_vec(),
        };
        let json = serde_json::to_string(&message).unwrap();
        assert!(json.contains("\"summary\":\"eyJzaXplIjoxfQ==\""), "{json}");
        assert_eq!(serde_json::from_str::<MessageRef>(&json).unwrap(), message);
        // Read in place or, with JSON escapes (`\/`), from a copy; bad
        // base64 or another type is an error.
        let escaped = json.replace("eyJzaXplIjoxfQ==", "eyJza\\u0058plIjoxfQ==");
        assert!(escaped.contains("\\u0058"), "{escaped}");
        let read = serde_json::from_str::<MessageRef>(&escaped).unwrap();
        assert_eq!(read, message);
        let from_reader = serde_json::from_reader::<_, MessageRef>(json.as_bytes()).unwrap();
        assert_eq!(from_reader, message);
        for bad in ["\"summary\":\"e!==\"", "\"summary\":12"] {
            let broken = json.replace("\"summary\":\"eyJzaXplIjoxfQ==\"", bad);
            assert!(
                serde_json::from_str::<MessageRef>(&broken).is_err(),
                "{broken}"
            );
        }
    }

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

    #[test]
    fn a_delivery_is_one_message_whoever_places_it() {
        let a = MessageId::delivered("0000018f00000000-00ff");
        assert_eq!(a, MessageId::delivered("0000018f00000000-00ff"));
        assert_ne!(a, MessageId::delivered("0000018f00000000-00fe"));
        assert_eq!(a.to_string().parse::<MessageId>().unwrap(), a);
        let op = MailboxOp::Deliver(vec![Delivery {
            id: "0000018f00000000-00ff".into(),
            new: NewMessage {
                message: MessageRef {
                    blob_id: "b".into(),
                    body_key: BodyKey::random(),
                    size: 1,
                    internal_date: 0,
                    summary: vec![],
                },
                flags: vec![],
            },
        }]);
        assert_eq!(op.claim_count(), 1);
        assert_eq!(op.targets(OpId::of_bytes(b"any op")), vec![a]);
    }
}
