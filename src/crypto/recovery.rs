//! The recovery key (doc/storage.md, "Encryption"): 256 random bits shown once
//! at keyring creation, which unlock the keyring when the password is lost.
//!
//! Human form: `FCTR-` then 55 Crockford base32 characters in groups of 5,
//! e.g. `FCTR-7Q2MB-…-K4D0S` (70 characters). The 55 characters carry
//! 275 bits: the 256-bit key, then the first 19 bits of
//! SHA-256("facteur/v1/recovery-checksum" || key), so a typo is caught with
//! probability 1 - 2^-19 before any unlock is attempted. Crockford's
//! alphabet has no `U`, and reads `O` as `0` and `I`/`L` as `1`, so the
//! usual misreadings still parse. Parsing ignores case, spaces and dashes,
//! and the `FCTR` prefix is optional.

use std::fmt::{self, Write as _};

use rand::RngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::CryptoError;
use super::secret::KEY_LEN;

const PREFIX: &str = "FCTR";
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters after the prefix: ceil((256 + 19) / 5).
const CHARS: usize = 55;
const GROUP: usize = 5;
/// Key bytes plus the 3 bytes whose first 19 bits are the checksum.
const PACKED_LEN: usize = KEY_LEN + 3;
/// The bits of the last packed byte that the 55 characters carry.
const LAST_BYTE_MASK: u8 = 0b1110_0000;
const CHECKSUM_DOMAIN: &[u8] = b"facteur/v1/recovery-checksum";

/// A recovery key. Zeroized on drop; `Debug` is redacted; `Display` gives
/// the human form, to be shown once to the user (wrap the `String` in
/// `Zeroizing` where possible).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RecoveryKey([u8; KEY_LEN]);

impl RecoveryKey {
    pub(crate) fn random() -> Self {
        let mut key = RecoveryKey([0; KEY_LEN]);
        OsRng.fill_bytes(&mut key.0);
        key
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Reads the human form back; see the module doc for what is accepted.
    pub fn parse(text: &str) -> Result<RecoveryKey, CryptoError> {
        let mut chars = Zeroizing::new(String::with_capacity(PREFIX.len() + CHARS));
        for c in text.chars().filter(|c| !c.is_whitespace() && *c != '-') {
            chars.push(c.to_ascii_uppercase());
        }
        let body = match chars.len() {
            n if n == PREFIX.len() + CHARS && chars.starts_with(PREFIX) => &chars[PREFIX.len()..],
            CHARS => &chars[..],
            _ => {
                return Err(CryptoError::MalformedRecoveryKey(
                    "wrong length (expected FCTR and 55 characters)",
                ));
            }
        };

        let mut packed = Zeroizing::new([0u8; PACKED_LEN]);
        for (i, c) in body.chars().enumerate() {
            let value = decode_char(c).ok_or(CryptoError::MalformedRecoveryKey(
                "invalid character (letters and digits only, no U)",
            ))?;
            for bit in 0..5 {
                if value & (0b10000 >> bit) != 0 {
                    let pos = i * 5 + bit;
                    packed[pos / 8] |= 0x80 >> (pos % 8);
                }
            }
        }

        let mut key = RecoveryKey([0; KEY_LEN]);
        key.0.copy_from_slice(&packed[..KEY_LEN]);
        let expected = key.packed();
        if packed[KEY_LEN..] != expected[KEY_LEN..] {
            return Err(CryptoError::MalformedRecoveryKey(
                "checksum mismatch (check for a typo)",
            ));
        }
        Ok(key)
    }

    /// The key and its checksum bits, as the 55 characters encode them.
    fn packed(&self) -> Zeroizing<[u8; PACKED_LEN]> {
        let checksum = Sha256::new()
            .chain_update(CHECKSUM_DOMAIN)
            .chain_update(self.0)
            .finalize();
        let mut packed = Zeroizing::new([0u8; PACKED_LEN]);
        packed[..KEY_LEN].copy_from_slice(&self.0);
        packed[KEY_LEN..].copy_from_slice(&checksum[..3]);
        packed[PACKED_LEN - 1] &= LAST_BYTE_MASK;
        packed
    }
}

fn decode_char(c: char) -> Option<u8> {
    let c = match c {
        'O' => '0',
        'I' | 'L' => '1',
        c => c,
    };
    ALPHABET
        .iter()
        .position(|&a| char::from(a) == c)
        .and_then(|p| u8::try_from(p).ok())
}

impl fmt::Display for RecoveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let packed = self.packed();
        f.write_str(PREFIX)?;
        for i in 0..CHARS {
            if i % GROUP == 0 {
                f.write_char('-')?;
            }
            let mut value = 0usize;
            for bit in 0..5 {
                let pos = i * 5 + bit;
                let set = packed[pos / 8] & (0x80 >> (pos % 8)) != 0;
                value = value << 1 | usize::from(set);
            }
            f.write_char(char::from(ALPHABET[value]))?;
        }
        Ok(())
    }
}

impl fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_form_round_trips() {
        for _ in 0..50 {
            let key = RecoveryKey::random();
            let text = key.to_string();
            assert_eq!(text.len(), 4 + 11 * 6, "{text}");
            assert!(text.starts_with("FCTR-"));
            assert!(text.split('-').skip(1).all(|g| g.len() == 5), "{text}");
            assert_eq!(
                RecoveryKey::parse(&text).unwrap().as_bytes(),
                key.as_bytes()
            );
        }
    }

    #[test]
    fn known_key_has_a_stable_form() {
        let key = RecoveryKey([0; KEY_LEN]);
        let text = key.to_string();
        assert!(text.starts_with("FCTR-00000-00000-"), "{text}");
        assert_eq!(RecoveryKey::parse(&text).unwrap().as_bytes(), &[0; KEY_LEN]);
    }

    #[test]
    fn parse_ignores_case_spaces_dashes_prefix_and_confusables() {
        let key = RecoveryKey::random();
        let text = key.to_string();
        let variants = [
            text.to_lowercase(),
            text.replace('-', " "),
            text.replace('-', ""),
            format!("  {}\n", text.replace('-', " - ")),
            text["FCTR-".len()..].to_string(),
            text.replace('0', "O").replace('1', "l"),
            text.replace('1', "I").to_lowercase(),
        ];
        for v in variants {
            assert_eq!(
                RecoveryKey::parse(&v).unwrap().as_bytes(),
                key.as_bytes(),
                "{v}"
            );
        }
    }

    #[test]
    fn parse_rejects_typos() {
        let key = RecoveryKey::random();
        let text = key.to_string();
        let body: Vec<char> = text.chars().collect();
        let mut caught = 0;
        let mut tried = 0;
        // Every single-character substitution.
        for i in (5..body.len()).filter(|&i| body[i] != '-') {
            for &sub in ALPHABET {
                let sub = char::from(sub);
                if sub == body[i] {
                    continue;
                }
                let mut typo = body.clone();
                typo[i] = sub;
                let typo: String = typo.into_iter().collect();
                tried += 1;
                if matches!(
                    RecoveryKey::parse(&typo),
                    Err(CryptoError::MalformedRecoveryKey(_))
                ) {
                    caught += 1;
                }
            }
        }
        // A 19-bit checksum misses one random typo in ~500 000.
        assert!(tried - caught <= 1, "{caught}/{tried}");

        // Two adjacent characters swapped.
        let mut swapped = body.clone();
        let i = (6..body.len() - 1)
            .find(|&i| body[i] != body[i + 1] && body[i + 1] != '-')
            .unwrap();
        swapped.swap(i, i + 1);
        let swapped: String = swapped.into_iter().collect();
        assert!(RecoveryKey::parse(&swapped).is_err());

        for bad in [
            "",
            "FCTR",
            &text[..text.len() - 1],
            &format!("{text}0"),
            &text.replace('A', "U"),
        ] {
            if bad != text {
                assert!(RecoveryKey::parse(bad).is_err(), "{bad}");
            }
        }
        assert!(RecoveryKey::parse(&text.replacen('-', "!", 1)).is_err());
    }

    #[test]
    fn debug_is_redacted() {
        let key = RecoveryKey::random();
        let debug = format!("{key:?}");
        assert_eq!(debug, "RecoveryKey(<redacted>)");
    }
}
