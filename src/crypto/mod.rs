//! Everything cryptographic (doc/storage.md, "Encryption"): sealing objects,
//! per-user keys, keyrings, user ids. Nothing else in the crate touches a
//! cipher.
//!
//! - [`secret`]: the secret types ([`Password`], [`SymmetricKey`],
//!   [`MasterKey`]) with redacted `Debug` and zeroize-on-drop.
//! - [`seal`]: XChaCha20-Poly1305 for every stored object, bound to the
//!   object's name; zstd for message bodies.
//! - [`sealed_box`]: the X25519 half ([`UserKeys`], [`UserPublicKey`],
//!   libsodium-compatible sealed boxes for LMTP delivery records).
//! - [`recovery`]: the human-typable [`RecoveryKey`].
//! - [`record_auth`]: the MAC under a key derived from the cluster secret
//!   that authenticates LMTP delivery records ([`RecordAuth`]).
//! - [`keyring`]: the `users/<u>/keyring` object ([`Keyring`], [`KdfParams`]).
//! - [`kdf_pool`]: the bounded pool every Argon2 run goes through.
//! - [`user_id`]: the opaque per-user id of object names.
//!
//! Argon2 is slow on purpose (hundreds of milliseconds on a Raspberry Pi):
//! callers run keyring creation and password unlocks through a [`KdfPool`].

pub mod kdf_pool;
pub mod keyring;
pub mod record_auth;
pub mod recovery;
pub mod seal;
pub mod sealed_box;
pub mod secret;
pub mod user_id;

pub use kdf_pool::{KdfBusy, KdfPool};
pub use keyring::{KdfParams, Keyring};
pub use record_auth::{RecordAuth, RecordAuthError};
pub use recovery::RecoveryKey;
pub use seal::{
    Decompressors, open, open_body, open_body_reusing, open_body_with, seal, seal_body,
    seal_body_padded, seal_padded,
};
pub use sealed_box::{EscrowSecretKey, UserKeys, UserPublicKey, seal_to};
pub use secret::{MasterKey, Password, SymmetricKey, purpose};
pub use user_id::{delivery_key_tag, user_id, verify_delivery_key_tag};

/// Errors of this module. Messages are safe to log: they never contain
/// secret material, only object names and what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The password slot did not open: the password is wrong (or the slot
    /// was tampered with, which is indistinguishable by design).
    #[error("wrong password")]
    WrongPassword,
    /// The recovery slot did not open with this recovery key.
    #[error("wrong recovery key")]
    WrongRecoveryKey,
    /// The escrow slot did not open with this admin key.
    #[error("this escrow key does not open this keyring")]
    WrongEscrowKey,
    /// A stored object is malformed, or failed authentication: bit rot,
    /// tampering, or a ciphertext moved to another name.
    #[error("{0}")]
    Corrupt(String),
    /// The keyring has no slot of this kind ("recovery", "escrow").
    #[error("the keyring has no {0} slot")]
    NoSuchSlot(&'static str),
    /// Key-derivation parameters below the accepted minimum.
    #[error("key derivation parameters too weak: {0}")]
    WeakParameters(String),
    /// Key-derivation parameters above what this server accepts to run
    /// (a tampered keyring must not make an unlock eat all memory).
    #[error("key derivation parameters too costly: {0}")]
    CostlyParameters(String),
    /// A body decompresses beyond the caller's limit.
    #[error("object {object_key} decompresses beyond the limit of {max_size} bytes")]
    TooLarge { object_key: String, max_size: usize },
    /// Text that is not a recovery key (a typo, usually: the format carries
    /// a checksum).
    #[error("not a valid recovery key: {0}")]
    MalformedRecoveryKey(&'static str),
    /// Keys given to a keyring method belong to another keyring.
    #[error("these keys do not belong to this keyring")]
    KeysMismatch,
    /// Argon2 refused to run (parameters are validated first, so this
    /// should not happen).
    #[error("key derivation failed")]
    Kdf(#[source] argon2::Error),
}
