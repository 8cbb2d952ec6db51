//! The opaque per-user id in object names (doc/storage.md, "Object names"):
//! HMAC-SHA256 of the normalised login under the cluster secret, so a bucket
//! listing shows who has mail only to someone who also holds the server's
//! configuration. Also the tag that vouches for a user's delivery key under the
//! same secret, so that whoever can write the bucket cannot make LMTP seal new
//! mail to a key of their own.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::UserPublicKey;
use crate::store::layout::UserId;

/// `hex(HMAC-SHA256(cluster_secret, normalised_login))`, 64 lowercase hex
/// characters. The login must already be normalised (the directory does
/// it): another spelling gives another user. The config is responsible for
/// the secret being long and random; an empty one still works but hides
/// nothing.
pub fn user_id(cluster_secret: &[u8], normalised_login: &str) -> UserId {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(cluster_secret)
        .expect("HMAC accepts keys of any length");
    mac.update(normalised_login.as_bytes());
    let id = hex::encode(mac.finalize().into_bytes());
    UserId::parse(&id).expect("hex of a 32-byte HMAC is a valid user id")
}

/// Domain separation of [`delivery_key_tag`] from user ids.
const DELIVERY_KEY_DOMAIN: &[u8] = b"facteur/v1/delivery-key\0";

fn delivery_mac(cluster_secret: &[u8], user: &UserId, public: &UserPublicKey) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(cluster_secret)
        .expect("HMAC accepts keys of any length");
    mac.update(DELIVERY_KEY_DOMAIN);
    mac.update(user.as_str().as_bytes());
    mac.update(&public.to_bytes());
    mac
}

/// HMAC-SHA256 under the cluster secret of (user id, public key): written
/// next to the key by instances that hold the user's unlocked keys, checked
/// by LMTP before sealing mail to the key.
pub fn delivery_key_tag(cluster_secret: &[u8], user: &UserId, public: &UserPublicKey) -> [u8; 32] {
    delivery_mac(cluster_secret, user, public)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a [`delivery_key_tag`] in constant time.
pub fn verify_delivery_key_tag(
    cluster_secret: &[u8],
    user: &UserId,
    public: &UserPublicKey,
    tag: &[u8],
) -> bool {
    delivery_mac(cluster_secret, user, public)
        .verify_slice(tag)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_key_tags_bind_user_key_and_secret() {
        let alice = user_id(b"secret", "alice");
        let bob = user_id(b"secret", "bob");
        let k1 = UserPublicKey::from_bytes([1; 32]);
        let k2 = UserPublicKey::from_bytes([2; 32]);
        let tag = delivery_key_tag(b"secret", &alice, &k1);
        assert!(verify_delivery_key_tag(b"secret", &alice, &k1, &tag));
        assert!(!verify_delivery_key_tag(b"secret", &alice, &k2, &tag));
        assert!(!verify_delivery_key_tag(b"secret", &bob, &k1, &tag));
        assert!(!verify_delivery_key_tag(b"other", &alice, &k1, &tag));
        assert!(!verify_delivery_key_tag(b"secret", &alice, &k1, &tag[..31]));
    }

    #[test]
    fn user_id_is_deterministic_64_hex_and_depends_on_secret_and_login() {
        let a = user_id(b"cluster secret one", "alice");
        assert_eq!(a, user_id(b"cluster secret one", "alice"));
        assert_eq!(a.as_str().len(), 64);
        assert!(
            a.as_str()
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_ne!(a, user_id(b"cluster secret two", "alice"));
        assert_ne!(a, user_id(b"cluster secret one", "bob"));
        assert_eq!(user_id(b"", "").as_str().len(), 64);
    }

    /// RFC 4231 test case 2 (key "Jefe"): the id is plain HMAC-SHA256.
    #[test]
    fn matches_rfc_4231() {
        assert_eq!(
            user_id(b"Jefe", "what do ya want for nothing?").as_str(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
