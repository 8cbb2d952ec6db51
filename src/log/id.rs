//! Names and clocks of the operation log (doc/consistency.md,
//! "The op set"): op ids (a hash of
//! the op's canonical bytes), instance ids, the hybrid logical clock, the
//! total-order key, and the op object names that make a LIST with
//! start-after find new ops cheaply.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use super::LogError;

/// An op's identity: the first 128 bits of SHA-256 over its canonical
/// (plaintext) bytes. Content addressing makes an op idempotent (a retried
/// PUT of the same bytes is the same op) and a parent reference unforgeable
/// in practice: naming an op requires having seen it. 128 bits is plenty
/// against accidental collisions inside one mailbox.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId([u8; 16]);

impl OpId {
    /// Length of the hex form.
    pub const HEX_LEN: usize = 32;

    /// The id of an op whose canonical bytes are `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> OpId {
        let digest = Sha256::digest(bytes);
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        OpId(id)
    }

    /// Builds an id from raw bytes (tests and decoders).
    pub fn from_raw(raw: [u8; 16]) -> OpId {
        OpId(raw)
    }

    /// The raw bytes (encoders).
    pub fn as_raw(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for OpId {
    type Err = LogError;

    /// Accepts exactly [`OpId::HEX_LEN`] lowercase hex characters.
    fn from_str(s: &str) -> Result<OpId, LogError> {
        let lower = s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if s.len() != Self::HEX_LEN || !lower {
            return Err(LogError::BadId(s.to_owned()));
        }
        let mut id = [0u8; 16];
        hex::decode_to_slice(s, &mut id).map_err(|_| LogError::BadId(s.to_owned()))?;
        Ok(OpId(id))
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight hex digits are enough to tell ops apart in test output.
        write!(f, "op:{}", &self.to_hex()[..8])
    }
}

// Hex strings rather than byte arrays, so that ids can be JSON map keys in
// snapshots and read by a human in a debugging dump.
impl Serialize for OpId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for OpId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OpId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which Facteur instance wrote an op. Chosen by the instance at start
/// (configured or random); only used to break clock ties and in op names.
///
/// Shared (`Arc`): every op of a log names its writer, and the DAG keeps
/// one copy of each instance's name for all of them.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(Arc<str>);

impl Serialize for InstanceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl InstanceId {
    /// Longest id accepted: op names must stay short (store key limits).
    pub const MAX_LEN: usize = 32;

    /// Accepts 1 to [`InstanceId::MAX_LEN`] characters from `[a-z0-9_]`:
    /// no `-` (the op-name separator) and no `/` (the key separator).
    pub fn new(s: &str) -> Result<InstanceId, LogError> {
        if Self::is_valid(s) {
            Ok(InstanceId(Arc::from(s)))
        } else {
            Err(LogError::BadInstance(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether [`InstanceId::new`] accepts `s`.
    fn is_valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
    }
}

impl<'de> Deserialize<'de> for InstanceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<InstanceId, D::Error> {
        let s = String::deserialize(d)?;
        InstanceId::new(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "instance:{}", self.0)
    }
}

/// The wall clock the hybrid logical clock reads: milliseconds since the
/// Unix epoch (0 if the system clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A hybrid logical clock reading (Kulkarni et al., 2014): wall-clock
/// milliseconds, plus a counter that orders events inside one millisecond
/// and keeps the clock moving forward when a peer's clock is ahead of ours.
/// Ordered by `wall_ms`, then `counter`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Hlc {
    pub wall_ms: u64,
    pub counter: u32,
}

impl Hlc {
    /// The smallest reading strictly after `self`.
    pub fn successor(self) -> Hlc {
        match self.counter.checked_add(1) {
            Some(counter) => Hlc {
                wall_ms: self.wall_ms,
                counter,
            },
            None => Hlc {
                wall_ms: self.wall_ms.saturating_add(1),
                counter: 0,
            },
        }
    }

    /// The reading for a new event, given the latest reading this writer
    /// has seen (its own or a peer's) and its wall clock now: never behind
    /// the wall clock, always after `seen`.
    pub fn tick(seen: Hlc, wall_ms: u64) -> Hlc {
        if wall_ms > seen.wall_ms {
            Hlc {
                wall_ms,
                counter: 0,
            }
        } else {
            seen.successor()
        }
    }
}

/// The position of an op in the total order: effective clock, then
/// instance, then op id. The effective clock is the op's own reading lifted
/// above its parents' ([`Dag`](super::Dag) computes it), so the order is
/// consistent with causality even if a writer's clock or a malformed op
/// says otherwise. Also the stamp of last-writer-wins registers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OrderKey {
    pub hlc: Hlc,
    pub instance: InstanceId,
    pub id: OpId,
}

/// The object name of an op inside its log prefix:
/// `{wall_ms:016x}-{counter:08x}-{instance}-{op id}`. Zero-padded hex makes
/// byte order equal clock order, so `LIST start-after` a cursor finds the
/// ops written after it (doc/consistency.md, "The op set"). The writer's own
/// clock reading is used, as written in the op.
pub fn op_name(hlc: Hlc, instance: &InstanceId, id: &OpId) -> String {
    format!(
        "{:016x}-{:08x}-{}-{}",
        hlc.wall_ms, hlc.counter, instance, id
    )
}

/// The smallest op name at or after clock reading `hlc`: a LIST cursor for
/// "everything written from `hlc` on" (the I/O layer subtracts its lookback
/// before calling this).
pub fn op_name_floor(hlc: Hlc) -> String {
    format!("{:016x}-{:08x}-", hlc.wall_ms, hlc.counter)
}

/// The clock reading a name made by [`op_name`], [`op_name_floor`] or
/// [`late_marker_name`] starts with (and a snapshot's name, which starts
/// the same way).
pub fn name_clock(name: &str) -> Option<Hlc> {
    let mut parts = name.split('-');
    let (wall, counter) = (parts.next()?, parts.next()?);
    if wall.len() != 16 || counter.len() != 8 {
        return None;
    }
    let wall_ms = u64::from_str_radix(wall, 16).ok()?;
    let counter = u32::from_str_radix(counter, 16).ok()?;
    Some(Hlc { wall_ms, counter })
}

/// What ends a late marker's name, before the clock reading it points to.
const LATE_MARK: &str = "-late-";

/// The name of a *late marker*: an empty object that a writer leaves in a
/// log, named at its clock reading `now`, after an op named at `target`
/// took longer than `LogTuning::late_after` to store. A sync that lists
/// the marker lists the log again from `target` (doc/consistency.md, "The
/// I/O layer"). Never an op name: an op name has four `-`-separated parts,
/// a marker five (`{now}-{counter}-{instance}-late-{target wall}`).
pub fn late_marker_name(now: Hlc, instance: &InstanceId, target: Hlc) -> String {
    format!(
        "{}{instance}{LATE_MARK}{:016x}",
        op_name_floor(now),
        target.wall_ms
    )
}

/// The clock reading a late marker points to, if `name` is one (made by
/// [`late_marker_name`]).
pub fn parse_late_marker(name: &str) -> Option<Hlc> {
    let (head, target) = name.rsplit_once(LATE_MARK)?;
    let instance = head.get(26..)?;
    if name_clock(head).is_none() || !InstanceId::is_valid(instance) || target.len() != 16 {
        return None;
    }
    let wall_ms = u64::from_str_radix(target, 16).ok()?;
    Some(Hlc {
        wall_ms,
        counter: 0,
    })
}

/// Parses a name made by [`op_name`].
pub fn parse_op_name(name: &str) -> Result<(Hlc, InstanceId, OpId), LogError> {
    let (hlc, instance, id) = parse_op_name_borrowed(name)?;
    let instance = InstanceId::new(instance).map_err(|_| LogError::BadName(name.to_owned()))?;
    Ok((hlc, instance, id))
}

/// The op id in a name made by [`op_name`], checked as [`parse_op_name`]
/// checks the whole name, without allocating: a sync parses every name its
/// listing returns.
pub fn parse_op_name_id(name: &str) -> Result<OpId, LogError> {
    parse_op_name_borrowed(name).map(|(_, _, id)| id)
}

/// [`parse_op_name`] with the instance id left as the name's slice (checked).
fn parse_op_name_borrowed(name: &str) -> Result<(Hlc, &str, OpId), LogError> {
    let bad = || LogError::BadName(name.to_owned());
    let mut parts = name.split('-');
    let (Some(wall), Some(counter), Some(instance), Some(id), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad());
    };
    if wall.len() != 16 || counter.len() != 8 {
        return Err(bad());
    }
    let wall_ms = u64::from_str_radix(wall, 16).map_err(|_| bad())?;
    let counter = u32::from_str_radix(counter, 16).map_err(|_| bad())?;
    if !InstanceId::is_valid(instance) {
        return Err(bad());
    }
    let id = id.parse().map_err(|_| bad())?;
    Ok((Hlc { wall_ms, counter }, instance, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A late marker is never taken for an op and an op never for a
    /// marker, whatever the instance is called; both give their clock.
    #[test]
    fn late_markers_and_op_names_are_told_apart() {
        let now = Hlc {
            wall_ms: 0x19af3c2d1e0,
            counter: 3,
        };
        let target = Hlc {
            wall_ms: 0x19af3c2a000,
            counter: 9,
        };
        for who in ["late", "node_1", "a"] {
            let instance = InstanceId::new(who).unwrap();
            let marker = late_marker_name(now, &instance, target);
            assert!(parse_op_name(&marker).is_err(), "{marker}");
            assert_eq!(
                parse_late_marker(&marker),
                Some(Hlc {
                    wall_ms: target.wall_ms,
                    counter: 0
                })
            );
            assert_eq!(name_clock(&marker), Some(now));
            let op = op_name(now, &instance, &OpId::of_bytes(b"op"));
            assert_eq!(parse_late_marker(&op), None, "{op}");
            assert_eq!(name_clock(&op), Some(now));
            let (head, target_hex) = marker.rsplit_once("-late-").unwrap();
            for bad in [
                format!("{head}-lat-{target_hex}"),
                marker[..marker.len() - 1].to_owned(),
                format!("{}Bad-late-{target_hex}", &head[..26]),
                format!("{}-late-{target_hex}", &head[..25]),
                format!("x{marker}"),
            ] {
                assert_eq!(parse_late_marker(&bad), None, "{bad}");
            }
        }
    }

    /// `parse_op_name_id` accepts exactly the names `parse_op_name` does,
    /// with the same id.
    #[test]
    fn op_name_id_parses_as_the_whole_name() {
        let instance = InstanceId::new("node_1").unwrap();
        let id = OpId::of_bytes(b"op");
        let good = op_name(
            Hlc {
                wall_ms: 0x19af3c2d1e0,
                counter: 7,
            },
            &instance,
            &id,
        );
        let mut names = vec![
            good.clone(),
            format!("{good}-"),
            good.replace("node_1", "Node1"),
        ];
        names.push(good.replace("node_1", &"n".repeat(InstanceId::MAX_LEN + 1)));
        names.push(good.replace("node_1", ""));
        names.push(good[1..].to_owned());
        names.push(good[..good.len() - 1].to_owned());
        for name in &names {
            let whole = parse_op_name(name).map(|(_, _, id)| id);
            assert_eq!(parse_op_name_id(name).ok(), whole.ok(), "{name}");
        }
        assert_eq!(parse_op_name_id(&good).unwrap(), id);
    }

    #[test]
    fn op_id_round_trips_through_hex_and_serde() {
        let id = OpId::of_bytes(b"hello");
        assert_eq!(id.to_hex().parse::<OpId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<OpId>(&json).unwrap(), id);
        assert!("ABC".parse::<OpId>().is_err());
        assert!(id.to_hex().to_uppercase().parse::<OpId>().is_err());
    }

    #[test]
    fn instance_ids_are_restricted() {
        assert!(InstanceId::new("site_a1").is_ok());
        for bad in ["", "a-b", "a/b", "A", &"x".repeat(33)] {
            assert!(InstanceId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hlc_ticks_forward() {
        let seen = Hlc {
            wall_ms: 100,
            counter: 3,
        };
        assert_eq!(
            Hlc::tick(seen, 200),
            Hlc {
                wall_ms: 200,
                counter: 0
            }
        );
        // A wall clock behind what we have seen must not move us back.
        assert_eq!(
            Hlc::tick(seen, 50),
            Hlc {
                wall_ms: 100,
                counter: 4
            }
        );
        let full = Hlc {
            wall_ms: 7,
            counter: u32::MAX,
        };
        assert_eq!(
            full.successor(),
            Hlc {
                wall_ms: 8,
                counter: 0
            }
        );
    }

    #[test]
    fn op_names_sort_by_clock_and_parse_back() {
        let i = InstanceId::new("b").unwrap();
        let id = OpId::of_bytes(b"x");
        let early = op_name(
            Hlc {
                wall_ms: 0xff,
                counter: 2,
            },
            &i,
            &id,
        );
        let later = op_name(
            Hlc {
                wall_ms: 0x100,
                counter: 0,
            },
            &i,
            &id,
        );
        assert!(early < later);
        assert!(
            op_name_floor(Hlc {
                wall_ms: 0x100,
                counter: 0
            }) <= later
        );
        assert!(
            op_name_floor(Hlc {
                wall_ms: 0x100,
                counter: 0
            }) > early
        );
        assert_eq!(
            parse_op_name(&later).unwrap(),
            (
                Hlc {
                    wall_ms: 0x100,
                    counter: 0
                },
                i,
                id
            )
        );
        assert!(parse_op_name("00-00-b-x").is_err());
        assert!(parse_op_name(&format!("{later}-extra")).is_err());
    }
}
