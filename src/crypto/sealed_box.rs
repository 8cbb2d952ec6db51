//! The public-key half of a user's keys (doc/storage.md, "Encryption"): LMTP
//! knows no password, so it seals each delivery record's body key to the user's
//! X25519 public key with a libsodium-compatible sealed box (`crypto_box_seal`:
//! ephemeral X25519, XSalsa20-Poly1305, nonce = BLAKE2b(ephemeral pk ||
//! recipient pk)). Only [`UserKeys`], unlocked from the keyring, can open it.
//!
//! The same construction seals a keyring's escrow slot to an offline admin
//! key ([`EscrowSecretKey`]).

use std::fmt;

use blake2::Blake2b;
use blake2::digest::Digest;
use blake2::digest::consts::U24;
use crypto_box::SalsaBox;
use crypto_box::aead::Aead;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use super::CryptoError;
use super::secret::{KEY_LEN, MasterKey};

/// A user's (or an escrow admin's) X25519 public key. Public: `Debug`
/// shows it in hex.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UserPublicKey(crypto_box::PublicKey);

impl UserPublicKey {
    /// Any 32 bytes are accepted, as libsodium does. A low-order key would
    /// make sealed boxes readable by anyone, but whoever can plant a
    /// public key can as well plant one they hold the secret of, so a check
    /// here would protect nothing.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        UserPublicKey(crypto_box::PublicKey::from_bytes(bytes))
    }

    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0.to_bytes()
    }
}

impl fmt::Debug for UserPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserPublicKey({})", hex::encode(self.0.as_bytes()))
    }
}

/// Seals `plaintext` so that only the holder of `public`'s secret key can
/// read it; the sender stays anonymous and cannot read it back. The output
/// is 48 bytes longer than the input and opens with libsodium's
/// `crypto_box_seal_open`.
///
/// # Panics
///
/// Only beyond XSalsa20's keystream limit (2^70 bytes).
pub fn seal_to(public: &UserPublicKey, plaintext: &[u8]) -> Vec<u8> {
    public
        .0
        .seal(&mut OsRng, plaintext)
        .expect("XSalsa20-Poly1305 cannot fail on an in-memory plaintext")
}

/// A user's unlocked keys: the master key and the X25519 secret key.
/// Exists only in memory, while the user has a session (doc/storage.md,
/// "Encryption"). `Clone` so sessions and delivery draining can share it; every
/// copy is wiped on drop: the master key zeroizes itself, the X25519 key is
/// overwritten ([`Wiped`]).
#[derive(Clone)]
pub struct UserKeys {
    master: MasterKey,
    secret: Wiped,
    /// `secret`'s public key, computed once: opening a sealed box needs
    /// it, and a drain opens thousands.
    public: crypto_box::PublicKey,
}

/// An X25519 secret key wiped on drop. `crypto_box::SecretKey`'s own drop
/// zeroizes its scalar but not the raw bytes it keeps beside it; this
/// overwrites the whole key in place with a key of zeros, and `black_box`
/// keeps the compiler from dropping the write as dead.
#[derive(Clone)]
struct Wiped(crypto_box::SecretKey);

impl Drop for Wiped {
    fn drop(&mut self) {
        self.0 = crypto_box::SecretKey::from_bytes([0; KEY_LEN]);
        std::hint::black_box(&self.0);
    }
}

impl UserKeys {
    fn new(master: MasterKey, secret: crypto_box::SecretKey) -> Self {
        let public = secret.public_key();
        UserKeys {
            master,
            secret: Wiped(secret),
            public,
        }
    }

    /// Fresh keys for a new user.
    pub(crate) fn generate() -> Self {
        UserKeys::new(
            MasterKey::random(),
            crypto_box::SecretKey::generate(&mut OsRng),
        )
    }

    pub fn master(&self) -> &MasterKey {
        &self.master
    }

    pub fn public_key(&self) -> UserPublicKey {
        UserPublicKey(self.public.clone())
    }

    /// Opens a sealed box made by [`seal_to`] for this user: libsodium's
    /// `crypto_box_seal_open`, with the public key computed once per
    /// unlock rather than once per box as `crypto_box`'s own `unseal`
    /// does (that costs a scalar multiplication per record).
    pub fn open_sealed(&self, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let corrupt = || {
            CryptoError::Corrupt("sealed box failed to open (corrupt or for another user)".into())
        };
        let (ephemeral, boxed) = ciphertext
            .split_first_chunk::<KEY_LEN>()
            .ok_or_else(corrupt)?;
        if boxed.is_empty() {
            return Err(corrupt());
        }
        let ephemeral = crypto_box::PublicKey::from_bytes(*ephemeral);
        // The nonce is BLAKE2b-192(ephemeral pk || recipient pk).
        let nonce = Blake2b::<U24>::new()
            .chain_update(ephemeral.as_bytes())
            .chain_update(self.public.as_bytes())
            .finalize();
        SalsaBox::new(&ephemeral, &self.secret.0)
            .decrypt(&nonce, boxed)
            .map_err(|_| corrupt())
    }

    /// What a keyring slot wraps: `MK || X25519 secret`.
    pub(crate) fn to_wrapped(&self) -> Zeroizing<[u8; 2 * KEY_LEN]> {
        let mut out = Zeroizing::new([0u8; 2 * KEY_LEN]);
        out[..KEY_LEN].copy_from_slice(self.master.as_bytes());
        out[KEY_LEN..].copy_from_slice(&Zeroizing::new(self.secret.0.to_bytes())[..]);
        out
    }

    /// The inverse of [`UserKeys::to_wrapped`]; `None` on a wrong length.
    pub(crate) fn from_wrapped(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 2 * KEY_LEN {
            return None;
        }
        let mut master = Zeroizing::new([0u8; KEY_LEN]);
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        master.copy_from_slice(&bytes[..KEY_LEN]);
        secret.copy_from_slice(&bytes[KEY_LEN..]);
        Some(UserKeys::new(
            MasterKey::from_bytes(*master),
            crypto_box::SecretKey::from_bytes(*secret),
        ))
    }
}

impl fmt::Debug for UserKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserKeys")
            .field("public_key", &self.public_key())
            .field("secrets", &format_args!("<redacted>"))
            .finish()
    }
}

/// The secret half of an admin escrow key pair. Kept offline by the
/// association (doc/storage.md, "Encryption", keyring); its public half goes in
/// the server config and is what [`crate::crypto::Keyring::set_escrow`] seals
/// to.
pub struct EscrowSecretKey(Wiped);

impl EscrowSecretKey {
    pub fn generate() -> Self {
        EscrowSecretKey(Wiped(crypto_box::SecretKey::generate(&mut OsRng)))
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        EscrowSecretKey(Wiped(crypto_box::SecretKey::from_bytes(bytes)))
    }

    /// The raw secret, for writing it to offline storage.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.0.0.to_bytes())
    }

    pub fn public_key(&self) -> UserPublicKey {
        UserPublicKey(self.0.0.public_key())
    }

    pub(crate) fn unseal(&self, ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        self.0.0.unseal(ciphertext).ok().map(Zeroizing::new)
    }
}

impl fmt::Debug for EscrowSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EscrowSecretKey(public: {:?}, <redacted>)",
            self.public_key()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_box_round_trip() {
        let keys = UserKeys::generate();
        for plaintext in [&b""[..], b"body key", &[9u8; 10_000]] {
            let sealed = seal_to(&keys.public_key(), plaintext);
            assert_eq!(sealed.len(), plaintext.len() + 48);
            assert_eq!(keys.open_sealed(&sealed).unwrap(), plaintext);
        }
    }

    #[test]
    fn sealed_box_fails_for_another_user_or_a_flipped_bit() {
        let keys = UserKeys::generate();
        let sealed = seal_to(&keys.public_key(), b"body key");
        assert!(matches!(
            UserKeys::generate().open_sealed(&sealed),
            Err(CryptoError::Corrupt(_))
        ));
        for i in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(keys.open_sealed(&bad).is_err(), "bit {i}");
        }
        for len in 0..sealed.len() {
            assert!(keys.open_sealed(&sealed[..len]).is_err());
        }
    }

    /// A sealed box made by libsodium (PyNaCl `SealedBox`) for a fixed key
    /// pair must open: LMTP records must stay readable by any compatible
    /// tool.
    #[test]
    fn opens_a_libsodium_sealed_box() {
        let keys = UserKeys::new(
            MasterKey::from_bytes([0; KEY_LEN]),
            crypto_box::SecretKey::from_bytes([0x11; KEY_LEN]),
        );
        assert_eq!(hex::encode(keys.public_key().to_bytes()), LIBSODIUM_PK);
        let sealed = hex::decode(LIBSODIUM_SEALED).unwrap();
        assert_eq!(keys.open_sealed(&sealed).unwrap(), b"facteur");
    }
    const LIBSODIUM_PK: &str = "7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13";
    const LIBSODIUM_SEALED: &str = "702dfe7ab371a62944d44e5341a5414a27de5410f0c45e6c88c588ae92f410127b8164417d602bd43e5776304ff85285ee59e4e248f9e6";

    /// Our opening (public key computed once) and `crypto_box`'s own
    /// `unseal` agree on every box, good or damaged.
    #[test]
    fn opens_exactly_what_crypto_box_opens() {
        let keys = UserKeys::generate();
        for len in [0, 1, 32, 100] {
            let sealed = seal_to(&keys.public_key(), &vec![7u8; len]);
            let mut variants = vec![sealed.clone(), sealed[..KEY_LEN].to_vec()];
            for i in [0, KEY_LEN, sealed.len() - 1] {
                let mut bad = sealed.clone();
                bad[i] ^= 0x80;
                variants.push(bad);
            }
            for v in variants {
                assert_eq!(
                    keys.open_sealed(&v).ok(),
                    keys.secret.0.unseal(&v).ok(),
                    "{len} bytes"
                );
            }
        }
    }

    #[test]
    fn wrapped_form_round_trips() {
        let keys = UserKeys::generate();
        let back = UserKeys::from_wrapped(&keys.to_wrapped()[..]).unwrap();
        assert_eq!(back.public_key(), keys.public_key());
        assert_eq!(back.master().as_bytes(), keys.master().as_bytes());
        assert!(UserKeys::from_wrapped(&[0; 63]).is_none());
    }

    #[test]
    fn debug_output_is_redacted() {
        let keys = UserKeys::generate();
        let debug = format!("{keys:?} {keys:#?}");
        let wrapped = keys.to_wrapped();
        assert!(!debug.contains(&hex::encode(&wrapped[..KEY_LEN])));
        assert!(!debug.contains(&hex::encode(&wrapped[KEY_LEN..])));
        assert!(!debug.contains(&format!("{:?}", &wrapped[..4])));
        assert!(debug.contains(&hex::encode(keys.public_key().to_bytes())));

        let escrow = EscrowSecretKey::generate();
        let debug = format!("{escrow:?}");
        assert!(!debug.contains(&hex::encode(&escrow.to_bytes()[..])));
    }
}
