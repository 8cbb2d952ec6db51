//! Secret value types (STYLE.md rule 6): a password, a symmetric key, the
//! user's master key. Each is zeroized on drop and prints as `<redacted>`
//! in `Debug`, so a stray `{:?}` or a `tracing` field never leaks one.
//!
//! Subkeys of the master key are derived with HKDF-SHA256 (RFC 5869), one
//! per purpose (doc/storage.md, "Encryption"); the purposes in use are listed
//! in [`purpose`]. Purpose strings are part of the storage format: renaming one
//! makes every object sealed under it unreadable.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hkdf::Hkdf;
use rand::RngCore;
use rand::rngs::OsRng;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of every symmetric key, in bytes.
pub const KEY_LEN: usize = 32;

/// Prefix of every HKDF `info` derived from a master key, so that a future
/// format version derives unrelated keys.
const SUBKEY_INFO_PREFIX: &[u8] = b"facteur/v1/";

/// The purposes [`MasterKey::subkey`] is called with. Each names the objects
/// sealed with that subkey; the object name (associated data) then keeps
/// objects of one purpose from being swapped with each other.
pub mod purpose {
    /// Mailbox-list operations and snapshots (`users/<u>/list/…`).
    pub const MAILBOX_LIST: &str = "list";
    /// Mailbox operations and snapshots (`users/<u>/mbox/<m>/…`), including
    /// the per-message body keys recorded in `MailAdd` ops.
    pub const MAILBOX: &str = "mbox";
    /// The mailbox list's deterministic first op: its clock reading, and
    /// (with `/<n>` appended) the ids of the default mailboxes
    /// (`account::folders::genesis`).
    pub const LIST_GENESIS: &str = "list/genesis";
    /// The MAC tying a keyring to its object name (see `keyring`).
    pub(crate) const KEYRING_BINDING: &str = "keyring/binding";
}

/// A password as typed by the user. Compared and hashed as raw UTF-8 bytes,
/// with no Unicode normalisation (what LDAP binds and Dovecot do).
pub struct Password(Zeroizing<String>);

impl Password {
    /// Shortest password that may protect a keyring, in characters: `facteur
    /// user add` and `passwd` ask for at least this, and a first login
    /// (LDAP) with a shorter directory password is refused.
    pub const MIN_CHARS: usize = 8;

    /// Takes ownership of the string, so its buffer is the one zeroized.
    pub fn new(password: impl Into<String>) -> Self {
        Password(Zeroizing::new(password.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it has fewer than [`Password::MIN_CHARS`] characters.
    pub fn is_too_short(&self) -> bool {
        self.0.chars().count() < Self::MIN_CHARS
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A 256-bit key for XChaCha20-Poly1305 ([`crate::crypto::seal`]).
///
/// `Clone` because message body keys live inside mailbox state, which is a
/// value; every copy is zeroized on drop. Serde writes base64 in
/// human-readable formats and raw bytes otherwise, for the ops that record
/// body keys (those ops are themselves sealed).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SymmetricKey([u8; KEY_LEN]);

impl SymmetricKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn random() -> Self {
        let mut key = SymmetricKey([0; KEY_LEN]);
        OsRng.fill_bytes(&mut key.0);
        key
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        SymmetricKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SymmetricKey(<redacted>)")
    }
}

impl Serialize for SymmetricKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            let text = Zeroizing::new(BASE64.encode(self.0));
            serializer.serialize_str(&text)
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for SymmetricKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(KeyVisitor)
        } else {
            deserializer.deserialize_bytes(KeyVisitor)
        }
    }
}

struct KeyVisitor;

impl KeyVisitor {
    fn from_slice<E: de::Error>(bytes: &[u8]) -> Result<SymmetricKey, E> {
        let mut key = SymmetricKey([0; KEY_LEN]);
        if bytes.len() != KEY_LEN {
            return Err(E::invalid_length(bytes.len(), &"32 bytes"));
        }
        key.0.copy_from_slice(bytes);
        Ok(key)
    }
}

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = SymmetricKey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a 32-byte key (base64 or bytes)")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SymmetricKey, E> {
        let bytes = Zeroizing::new(
            BASE64
                .decode(v)
                .map_err(|_| E::invalid_value(de::Unexpected::Other("invalid base64"), &self))?,
        );
        Self::from_slice(&bytes)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<SymmetricKey, E> {
        Self::from_slice(v)
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<SymmetricKey, E> {
        let v = Zeroizing::new(v);
        Self::from_slice(&v)
    }

    // Some binary formats encode bytes as a sequence of integers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SymmetricKey, A::Error> {
        let mut key = SymmetricKey([0; KEY_LEN]);
        for (i, byte) in key.0.iter_mut().enumerate() {
            *byte = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(i, &self))?;
        }
        if seq.next_element::<u8>()?.is_some() {
            return Err(de::Error::invalid_length(KEY_LEN + 1, &self));
        }
        Ok(key)
    }
}

/// The user's master key `MK` (doc/storage.md, "Encryption"): never used
/// directly, only through [`MasterKey::subkey`]. It is wrapped by every keyring
/// slot.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; KEY_LEN]);

impl MasterKey {
    pub fn random() -> Self {
        let mut key = MasterKey([0; KEY_LEN]);
        OsRng.fill_bytes(&mut key.0);
        key
    }

    pub(crate) fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        MasterKey(bytes)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The subkey for one purpose: HKDF-SHA256 with no salt (MK is already
    /// uniformly random, RFC 5869 §3.1) and `info = "facteur/v1/" ||
    /// purpose`. Use the constants of [`purpose`].
    pub fn subkey(&self, purpose: &str) -> SymmetricKey {
        let hkdf = Hkdf::<Sha256>::new(None, &self.0);
        let mut key = SymmetricKey([0; KEY_LEN]);
        // 32 bytes is far below HKDF-SHA256's limit of 255 * 32.
        hkdf.expand_multi_info(&[SUBKEY_INFO_PREFIX, purpose.as_bytes()], &mut key.0)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        key
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_is_redacted() {
        let password = Password::new("hunter2-correct-horse");
        assert_eq!(format!("{password:?}"), "Password(<redacted>)");

        let key = SymmetricKey::from_bytes([0xab; KEY_LEN]);
        let debug = format!("{key:?} {:#?}", key);
        assert!(!debug.to_lowercase().contains("ab"), "{debug}");
        assert!(!debug.contains("171"), "{debug}");

        let mk = MasterKey::from_bytes([0xcd; KEY_LEN]);
        let debug = format!("{mk:?} {:#?}", mk);
        assert!(!debug.to_lowercase().contains("cd"), "{debug}");
        assert!(!debug.contains("205"), "{debug}");
    }

    #[test]
    fn subkeys_are_deterministic_and_differ_per_purpose_and_master_key() {
        let mk = MasterKey::random();
        let a = mk.subkey(purpose::MAILBOX);
        assert_eq!(a.as_bytes(), mk.subkey(purpose::MAILBOX).as_bytes());
        assert_ne!(a.as_bytes(), mk.subkey(purpose::MAILBOX_LIST).as_bytes());
        assert_ne!(
            a.as_bytes(),
            MasterKey::random().subkey(purpose::MAILBOX).as_bytes()
        );
        assert_ne!(a.as_bytes(), mk.as_bytes());
    }

    /// Pins the derivation: changing it would make all stored mail
    /// unreadable. Expected value computed independently with Python's
    /// `cryptography` HKDF (SHA-256, no salt, info "facteur/v1/mbox").
    #[test]
    fn subkey_derivation_is_pinned() {
        let mk = MasterKey::from_bytes(core::array::from_fn(|i| i as u8));
        assert_eq!(hex::encode(mk.subkey("mbox").as_bytes()), SUBKEY_MBOX_KAT);
    }
    const SUBKEY_MBOX_KAT: &str =
        "d6b70ae81db80f24f0450379da0fe798c477b99c2967a5c923682cd590b886be";

    #[test]
    fn symmetric_key_serde_round_trips_and_rejects_bad_lengths() {
        let key = SymmetricKey::random();
        let json = serde_json::to_string(&key).unwrap();
        let back: SymmetricKey = serde_json::from_str(&json).unwrap();
        assert_eq!(back.as_bytes(), key.as_bytes());
        assert!(serde_json::from_str::<SymmetricKey>("\"AAAA\"").is_err());
        assert!(serde_json::from_str::<SymmetricKey>("\"not base64!\"").is_err());
    }
}
