//! Object names (doc/storage.md, "Object names"). Every object of a user lives
//! under `users/<u>/`, where `<u>` is an opaque id (an HMAC of the login under
//! the cluster secret), so a bucket listing never shows who the users are.

use std::fmt;

/// The opaque per-user id: lowercase hex of HMAC-SHA256(cluster secret,
/// normalised login). Built by `crypto::user_id`; parsed back from object
/// names by [`UserId::parse`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    /// Length in hex characters (the full 256-bit HMAC).
    pub const LEN: usize = 64;

    /// Accepts exactly [`UserId::LEN`] lowercase hex characters.
    pub fn parse(s: &str) -> Option<UserId> {
        let ok = s.len() == Self::LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| UserId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({})", &self.0[..12])
    }
}

/// Prefix of every user's objects.
pub const USERS_PREFIX: &str = "users/";

/// `users/<u>/`: everything that belongs to one user.
pub fn user_prefix(u: &UserId) -> String {
    format!("{USERS_PREFIX}{u}/")
}

/// `users/<u>/keyring`: public key and password-wrapped secrets.
pub fn keyring(u: &UserId) -> String {
    format!("{USERS_PREFIX}{u}/keyring")
}

/// `users/<u>/delivery-key`: the public key LMTP seals mail to, with a tag
/// under the cluster secret vouching for it.
pub fn delivery_key(u: &UserId) -> String {
    format!("{USERS_PREFIX}{u}/delivery-key")
}

/// `users/<u>/incoming/`: delivery records awaiting the user's key.
pub fn incoming_prefix(u: &UserId) -> String {
    format!("{USERS_PREFIX}{u}/incoming/")
}

/// `users/<u>/lease/incoming`: which instance drains `incoming/` in the
/// background (a best-effort lease: `account::Account::drain_politely`).
pub fn incoming_lease(u: &UserId) -> String {
    format!("{USERS_PREFIX}{u}/lease/incoming")
}

/// `users/<u>/lease/turn-<m>/`: placement turns of mailbox `<m>`, taken
/// by instances placing into it at the same time (`account::turn`).
pub fn placement_turns(u: &UserId, mailbox_id: &str) -> String {
    format!("{USERS_PREFIX}{u}/lease/turn-{mailbox_id}/")
}

/// `users/<u>/blob/<blob-id>`: message bodies, immutable.
pub fn blob(u: &UserId, blob_id: &str) -> String {
    format!("{USERS_PREFIX}{u}/blob/{blob_id}")
}

/// `users/<u>/quarantine/<name>`: delivery records that could not be
/// opened, moved aside from `incoming/` as they were.
pub fn quarantine(u: &UserId, name: &str) -> String {
    format!("{USERS_PREFIX}{u}/quarantine/{name}")
}

/// A new blob id: the creation time (ms since the epoch, 12 hex digits)
/// then 16 random bytes. The time lets body collection spare blobs too
/// young to be referenced yet (a body is stored before its op).
pub fn new_blob_id(now_ms: u64) -> String {
    format!("{now_ms:012x}{}", hex::encode(rand::random::<[u8; 16]>()))
}

/// The creation time written in a blob id by [`new_blob_id`].
pub fn blob_id_time(blob_id: &str) -> Option<u64> {
    let ts = blob_id.get(..12)?;
    (blob_id.len() == 44).then(|| u64::from_str_radix(ts, 16).ok())?
}

/// Prefix of change hints (`account::hints`): empty objects
/// `hints/<ms>-<tag>-<u>`, written when a user's data changes so that other
/// instances sync that user without polling. They live a few minutes.
pub const HINTS_PREFIX: &str = "hints/";

/// `hints/<ms>-<tag>-<u>`: the time (ms since the epoch, 12 hex digits, so
/// that keys sort by time), the writer's random tag (16 hex digits) and the
/// opaque user id.
pub fn hint(now_ms: u64, tag: &str, u: &UserId) -> String {
    format!("{HINTS_PREFIX}{now_ms:012x}-{tag}-{u}")
}

/// A key sorting just before every hint written at or after `ms`: the
/// `start_after` of a listing since `ms`.
pub fn hints_before(ms: u64) -> String {
    format!("{HINTS_PREFIX}{ms:012x}")
}

/// The time, tag and user of a key made by [`hint`].
pub fn parse_hint(key: &str) -> Option<(u64, &str, UserId)> {
    let rest = key.strip_prefix(HINTS_PREFIX)?;
    let mut parts = rest.splitn(3, '-');
    let time = parts.next().filter(|t| t.len() == 12)?;
    let time = u64::from_str_radix(time, 16).ok()?;
    let tag = parts.next().filter(|t| !t.is_empty())?;
    let user = UserId::parse(parts.next()?)?;
    Some((time, tag, user))
}

#[cfg(test)]
mod tests {
    #[test]
    fn blob_ids_carry_their_time() {
        let id = new_blob_id(1_700_000_000_123);
        assert_eq!(id.len(), 44);
        assert_eq!(blob_id_time(&id), Some(1_700_000_000_123));
        assert_eq!(blob_id_time("0123abcd"), None);
        assert_ne!(new_blob_id(1), new_blob_id(1));
    }

    use super::*;

    #[test]
    fn hints_sort_by_time_and_parse_back() {
        let u = UserId::parse(&"0f".repeat(32)).unwrap();
        let key = hint(1_700_000_000_123, "00ff00ff00ff00ff", &u);
        assert_eq!(
            parse_hint(&key),
            Some((1_700_000_000_123, "00ff00ff00ff00ff", u.clone()))
        );
        assert!(hints_before(1_700_000_000_123) < key);
        assert!(hint(1_700_000_000_122, "ff", &u) < hints_before(1_700_000_000_123));
        assert!(parse_hint("hints/zz-a-b").is_none());
        assert!(parse_hint(&format!("users/{u}/keyring")).is_none());
    }

    #[test]
    fn user_id_is_strict_hex() {
        let hex = "a".repeat(64);
        assert!(UserId::parse(&hex).is_some());
        assert!(UserId::parse(&"A".repeat(64)).is_none());
        assert!(UserId::parse(&"a".repeat(63)).is_none());
        assert!(UserId::parse("../etc/passwd").is_none());
    }

    #[test]
    fn names_nest_under_the_user_prefix() {
        let u = UserId::parse(&"0f".repeat(32)).unwrap();
        assert!(keyring(&u).starts_with(&user_prefix(&u)));
        assert!(incoming_prefix(&u).starts_with(&user_prefix(&u)));
        assert!(blob(&u, "x").starts_with(&user_prefix(&u)));
    }
}
