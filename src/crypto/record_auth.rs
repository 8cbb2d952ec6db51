//! Authentication of delivery records (`users/<u>/incoming/<name>`).
//!
//! A delivery record is a sealed box to the user's public key, and that key
//! is public: anyone who can write the bucket could seal a record of their
//! own and plant any message (a phishing mail with a forged
//! `Authentication-Results`, any INTERNALDATE, a size that drives the body
//! decompression). So every record also carries HMAC-SHA256 under a key
//! only Facteur instances hold, derived with HKDF-SHA256 (RFC 5869) from
//! the cluster secret. The MAC covers the record's object name and its
//! whole content, so a record can be neither forged, altered, nor moved to
//! another name or another user's queue.
//!
//! Stored form:
//!
//! ```text
//! [magic "FDR2" 4][HMAC-SHA256 32][sealed box]
//! MAC = HMAC(K, DOMAIN || u32be(len(name)) || name || magic || sealed box)
//! K   = HKDF-SHA256(ikm = cluster secret, salt = none, info = INFO)
//! ```
//!
//! Records written before this format (a bare sealed box) have no MAC and
//! are refused like forged ones: [`RecordAuthError::Unauthenticated`].

use std::fmt;
use std::sync::Arc;

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::secret::KEY_LEN;

/// First bytes of an authenticated record.
pub const RECORD_MAGIC: &[u8; 4] = b"FDR2";
/// Bytes an authenticated record has beyond its sealed box.
pub const RECORD_AUTH_OVERHEAD: usize = RECORD_MAGIC.len() + TAG_LEN;

const TAG_LEN: usize = 32;
/// HKDF `info` of the record key: part of the storage format.
const INFO: &[u8] = b"facteur/v1/delivery-record-mac";
/// Domain separation of the MAC input from every other HMAC in Facteur.
const DOMAIN: &[u8] = b"facteur/v1/delivery-record\0";

/// Why a stored record is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordAuthError {
    /// No record header: written before records were authenticated, or
    /// planted by someone without the cluster secret.
    #[error("delivery record carries no MAC (older format, or forged)")]
    Unauthenticated,
    /// A header whose MAC does not verify: forged, altered, moved to
    /// another name, or written under another cluster secret.
    #[error("delivery record MAC does not verify (forged, altered or moved)")]
    BadMac,
}

/// The key authenticating delivery records; cheap to clone, zeroized when
/// the last copy is dropped, never printed.
#[derive(Clone)]
pub struct RecordAuth(Arc<Zeroizing<[u8; KEY_LEN]>>);

impl RecordAuth {
    /// Derives the record key from the cluster secret (the one that keys
    /// user ids).
    pub fn from_cluster_secret(cluster_secret: &[u8]) -> Self {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        Hkdf::<Sha256>::new(None, cluster_secret)
            .expand(INFO, &mut key[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        RecordAuth(Arc::new(key))
    }

    fn mac(&self, object_key: &str, sealed: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0[..])
            .expect("HMAC accepts keys of any length");
        let name_len = u32::try_from(object_key.len()).unwrap_or(u32::MAX);
        mac.update(DOMAIN);
        mac.update(&name_len.to_be_bytes());
        mac.update(object_key.as_bytes());
        mac.update(RECORD_MAGIC);
        mac.update(sealed);
        mac
    }

    /// The stored form of the sealed box `sealed` under the name
    /// `object_key`.
    pub fn wrap(&self, object_key: &str, sealed: &[u8]) -> Vec<u8> {
        let tag = self.mac(object_key, sealed).finalize().into_bytes();
        let mut out = Vec::with_capacity(RECORD_AUTH_OVERHEAD + sealed.len());
        out.extend_from_slice(RECORD_MAGIC);
        out.extend_from_slice(&tag);
        out.extend_from_slice(sealed);
        out
    }

    /// Checks a stored record (in constant time) and returns its sealed box.
    pub fn unwrap<'a>(
        &self,
        object_key: &str,
        stored: &'a [u8],
    ) -> Result<&'a [u8], RecordAuthError> {
        let Some(rest) = stored.strip_prefix(RECORD_MAGIC) else {
            return Err(RecordAuthError::Unauthenticated);
        };
        if rest.len() < TAG_LEN {
            return Err(RecordAuthError::BadMac);
        }
        let (tag, sealed) = rest.split_at(TAG_LEN);
        self.mac(object_key, sealed)
            .verify_slice(tag)
            .map_err(|_| RecordAuthError::BadMac)?;
        Ok(sealed)
    }
}

impl fmt::Debug for RecordAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecordAuth(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "users/abab/incoming/0000018c0000000a-00ff";

    #[test]
    fn wrapped_records_verify_under_their_name_only() {
        let auth = RecordAuth::from_cluster_secret(b"0123456789abcdef0123456789abcdef");
        let stored = auth.wrap(NAME, b"sealed box bytes");
        assert_eq!(stored.len(), 16 + RECORD_AUTH_OVERHEAD);
        assert_eq!(auth.unwrap(NAME, &stored).unwrap(), b"sealed box bytes");
        // Moved to another name (or another user's queue).
        assert_eq!(
            auth.unwrap("users/cdcd/incoming/0000018c0000000a-00ff", &stored),
            Err(RecordAuthError::BadMac)
        );
        // Another cluster secret.
        let other = RecordAuth::from_cluster_secret(b"another secret of 32 characters!");
        assert_eq!(other.unwrap(NAME, &stored), Err(RecordAuthError::BadMac));
        // Every flipped bit, in the header, the tag or the sealed box.
        for i in 0..stored.len() * 8 {
            let mut bad = stored.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(auth.unwrap(NAME, &bad).is_err(), "bit {i}");
        }
        // Truncated anywhere.
        for len in 0..stored.len() {
            assert!(auth.unwrap(NAME, &stored[..len]).is_err(), "len {len}");
        }
        // Appended bytes.
        let mut longer = stored.clone();
        longer.push(0);
        assert!(auth.unwrap(NAME, &longer).is_err());
    }

    #[test]
    fn bare_sealed_boxes_are_unauthenticated() {
        let auth = RecordAuth::from_cluster_secret(b"secret");
        assert_eq!(
            auth.unwrap(NAME, &[7u8; 200]),
            Err(RecordAuthError::Unauthenticated)
        );
        assert_eq!(
            auth.unwrap(NAME, b""),
            Err(RecordAuthError::Unauthenticated)
        );
    }

    #[test]
    fn the_key_is_derived_not_the_secret_itself() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let auth = RecordAuth::from_cluster_secret(secret);
        assert_ne!(&auth.0[..], &secret[..]);
        // Deterministic: every instance derives the same key.
        let again = RecordAuth::from_cluster_secret(secret);
        assert_eq!(again.unwrap(NAME, &auth.wrap(NAME, b"x")).unwrap(), b"x");
        assert_eq!(format!("{auth:?}"), "RecordAuth(<redacted>)");
    }
}
