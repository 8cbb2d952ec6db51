//! Sealing stored objects (doc/storage.md, "Encryption"): XChaCha20-Poly1305
//! with a random 24-byte nonce, the object's name as associated data, and, for
//! message bodies, zstd compression inside the encryption.
//!
//! Format of a sealed object:
//!
//! ```text
//! [format u8][nonce 24][ciphertext + Poly1305 tag 16]
//! ```
//!
//! The format byte says what the plaintext is ([`FORMAT_PLAIN`],
//! [`FORMAT_ZSTD`], or either padded: [`FORMAT_PADDED`],
//! [`FORMAT_ZSTD_PADDED`]). Associated data is `format || object name`, so the
//! format byte cannot be flipped and a ciphertext copied to another name
//! (another mailbox, another user, a snapshot slot) fails to open. A random
//! 192-bit nonce makes nonce reuse negligible without any counter, which
//! matters because many instances write with the same key and no
//! coordination (doc/consistency.md, "The I/O layer").
//!
//! Padding ([`seal_padded`], [`seal_body_padded`]) hides what an object's
//! exact size would tell the bucket (a STORE \Seen op is 4 bytes shorter
//! than a STORE \Answered one; a CREATE op grows with the name). The
//! padded plaintext is
//!
//! ```text
//! [length u32 big-endian][plaintext][zeros]
//! ```
//!
//! sized so that the whole sealed object is exactly one of a few classes
//! ([`padded_size`]: 512 B, 1, 2, 4 KiB, then multiples of 4 KiB).
//! Objects sealed before padding existed (formats 1 and 2) still open.

use std::io::Read;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use super::CryptoError;
use super::secret::SymmetricKey;

/// Plaintext stored as is.
pub const FORMAT_PLAIN: u8 = 0x01;
/// Plaintext is one or more zstd frames (message bodies).
pub const FORMAT_ZSTD: u8 = 0x02;
/// Plaintext stored padded (see the module documentation).
pub const FORMAT_PADDED: u8 = 0x03;
/// zstd frames stored padded.
pub const FORMAT_ZSTD_PADDED: u8 = 0x04;

/// Smallest padded object, in bytes (sealed).
const PAD_MIN: usize = 512;
/// Padded objects above this size are rounded up to a multiple of it.
const PAD_STEP: usize = 4096;
/// Bytes of the length prefix of a padded plaintext.
const PAD_PREFIX: usize = 4;

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + NONCE_LEN;
/// Bytes a sealed object has beyond its (possibly compressed) plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// zstd level for bodies: level 3 is zstd's default, a good speed/ratio
/// point for a Raspberry Pi.
const ZSTD_LEVEL: i32 = 3;
/// Largest zstd window the decoder accepts (16 MiB). Level 3 never uses
/// more than 2 MiB; the limit caps decoder memory whatever the frame says.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// Encrypts `plaintext` for the object named `object_key`.
///
/// # Panics
///
/// Only if `plaintext` exceeds XChaCha20's 256 GiB limit.
pub fn seal(key: &SymmetricKey, object_key: &str, plaintext: &[u8]) -> Vec<u8> {
    seal_with_format(key, object_key, Format::Plain, plaintext)
}

/// The sealed size of a padded object whose unpadded sealed form would be
/// `len` bytes: 512, 1024, 2048 or 4096, then the next multiple of 4096.
pub fn padded_size(len: usize) -> usize {
    if len <= PAD_MIN {
        PAD_MIN
    } else if len <= PAD_STEP {
        len.next_power_of_two()
    } else {
        len.div_ceil(PAD_STEP).saturating_mul(PAD_STEP)
    }
}

/// Like [`seal`], but padded to a size class ([`padded_size`]), so the
/// sealed size tells only the class. For metadata objects (ops).
///
/// # Panics
///
/// If `plaintext` is 4 GiB or more (the length prefix is 32 bits).
pub fn seal_padded(key: &SymmetricKey, object_key: &str, plaintext: &[u8]) -> Vec<u8> {
    let padded = pad(plaintext);
    seal_with_format(key, object_key, Format::Padded, &padded)
}

/// Like [`seal_body`] (compressed when that shrinks it), then padded to a
/// size class like [`seal_padded`]. Opens with [`open_body`] and
/// [`open_body_with`]. For snapshots and summary pages.
///
/// # Panics
///
/// As [`seal_padded`].
pub fn seal_body_padded(key: &SymmetricKey, object_key: &str, body: &[u8]) -> Vec<u8> {
    match zstd::bulk::compress(body, ZSTD_LEVEL) {
        Ok(compressed) if compressed.len() < body.len() => {
            let compressed = Zeroizing::new(compressed);
            seal_with_format(key, object_key, Format::ZstdPadded, &pad(&compressed))
        }
        _ => seal_padded(key, object_key, body),
    }
}

/// `[len u32][plaintext][zeros]`, sized so the sealed object is a class.
fn pad(plaintext: &[u8]) -> Zeroizing<Vec<u8>> {
    let len = u32::try_from(plaintext.len()).expect("padded objects are under 4 GiB");
    let total = padded_size(plaintext.len() + PAD_PREFIX + OVERHEAD) - OVERHEAD;
    let mut padded = Zeroizing::new(Vec::with_capacity(total));
    padded.extend_from_slice(&len.to_be_bytes());
    padded.extend_from_slice(plaintext);
    padded.resize(total, 0);
    padded
}

/// The plaintext inside a padded one.
fn unpad(object_key: &str, mut padded: Vec<u8>) -> Result<Vec<u8>, CryptoError> {
    let bad = || CryptoError::Corrupt(format!("object {object_key}: bad padding"));
    let prefix: [u8; PAD_PREFIX] = padded
        .get(..PAD_PREFIX)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(bad)?;
    let len = usize::try_from(u32::from_be_bytes(prefix)).map_err(|_| bad())?;
    if len > padded.len() - PAD_PREFIX {
        return Err(bad());
    }
    // In place: the padded buffer is wiped by the caller's drop anyway.
    padded.copy_within(PAD_PREFIX..PAD_PREFIX + len, 0);
    padded.truncate(len);
    Ok(padded)
}

/// Decrypts an object sealed by [`seal`] under the name `object_key`.
pub fn open(key: &SymmetricKey, object_key: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let (format, plaintext) = open_any(key, object_key, sealed)?;
    match format {
        Content::Plain => Ok(plaintext),
        // Decompressing here would have no size bound.
        Content::Zstd => Err(CryptoError::Corrupt(format!(
            "object {object_key} is a compressed body: read it with open_body"
        ))),
    }
}

/// Compresses a message body with zstd, then seals it. Bodies that do not
/// shrink (already-compressed attachments) are stored uncompressed, which
/// [`open_body`] reads too.
pub fn seal_body(key: &SymmetricKey, object_key: &str, body: &[u8]) -> Vec<u8> {
    match zstd::bulk::compress(body, ZSTD_LEVEL) {
        Ok(compressed) if compressed.len() < body.len() => {
            let compressed = Zeroizing::new(compressed);
            seal_with_format(key, object_key, Format::Zstd, &compressed)
        }
        // A compression error is not worth failing a delivery for.
        _ => seal_with_format(key, object_key, Format::Plain, body),
    }
}

/// zstd decompression contexts kept for reuse. Creating a context
/// allocates and initialises some 160 KiB, which costs more than
/// decompressing a message of a few kilobytes (a sixth of the CPU of a
/// download of 1,000 messages). A context keeps bytes of what it last
/// decompressed, so each is owned by what owns that plaintext anyway (an
/// account's body cache) and dropped with it.
#[derive(Default)]
pub struct Decompressors(std::sync::Mutex<Vec<zstd::bulk::Decompressor<'static>>>);

/// Contexts a [`Decompressors`] keeps (more may be in use at once): a
/// session opens one body at a time, and each kept context is some
/// 160 KiB per unlocked account.
const KEPT_DECOMPRESSORS: usize = 1;

impl std::fmt::Debug for Decompressors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decompressors")
    }
}

impl Decompressors {
    fn decompress(&self, frame: &[u8], size: usize) -> std::io::Result<Vec<u8>> {
        let lock = || self.0.lock().unwrap_or_else(|e| e.into_inner());
        let taken = lock().pop();
        let mut context = match taken {
            Some(context) => context,
            None => zstd::bulk::Decompressor::new()?,
        };
        let out = context.decompress(frame, size);
        let mut kept = lock();
        if kept.len() < KEPT_DECOMPRESSORS {
            kept.push(context);
        }
        out
    }
}

/// Opens a body sealed by [`seal_body`] (or [`seal`]). Returns
/// [`CryptoError::TooLarge`] rather than produce more than `max_size` bytes,
/// so a hostile frame cannot exhaust memory.
pub fn open_body(
    key: &SymmetricKey,
    object_key: &str,
    sealed: &[u8],
    max_size: usize,
) -> Result<Vec<u8>, CryptoError> {
    open_body_reusing(key, object_key, sealed, max_size, None)
}

/// [`open_body`] with a context from `contexts` (one of its own if none).
pub fn open_body_reusing(
    key: &SymmetricKey,
    object_key: &str,
    sealed: &[u8],
    max_size: usize,
    contexts: Option<&Decompressors>,
) -> Result<Vec<u8>, CryptoError> {
    let too_large = || CryptoError::TooLarge {
        object_key: object_key.to_owned(),
        max_size,
    };
    if sealed.first() == Some(&FORMAT_PLAIN) && sealed.len().saturating_sub(OVERHEAD) > max_size {
        return Err(too_large());
    }
    let (format, plaintext) = open_any(key, object_key, sealed)?;
    match format {
        Content::Plain if plaintext.len() > max_size => Err(too_large()),
        Content::Plain => Ok(plaintext),
        Content::Zstd => {
            // Compressed mail is still mail: wipe it once decompressed.
            let compressed = Zeroizing::new(plaintext);
            match one_shot(&compressed, max_size) {
                OneShot::Size(size) => {
                    let body = match contexts {
                        Some(contexts) => contexts.decompress(&compressed, size),
                        None => zstd::bulk::decompress(&compressed, size),
                    };
                    return body.map_err(|e| corrupt_zstd(object_key, e));
                }
                OneShot::TooLarge => return Err(too_large()),
                OneShot::Stream => {}
            }
            let mut body = Vec::new();
            bounded_decoder(&compressed, object_key, max_size)?
                .read_to_end(&mut body)
                .map_err(|e| corrupt_zstd(object_key, e))?;
            if body.len() > max_size {
                return Err(too_large());
            }
            Ok(body)
        }
    }
}

/// Opens an object sealed by [`seal_body`] (or [`seal`]) and hands its
/// plaintext to `read` as a stream, decompressed on the fly: for large
/// objects read by a streaming decoder (snapshots), which then never
/// exist whole in memory. Returns [`CryptoError::TooLarge`] if `read`
/// pulled more than `max_size` bytes (it sees at most one byte more).
pub fn open_body_with<T>(
    key: &SymmetricKey,
    object_key: &str,
    sealed: &[u8],
    max_size: usize,
    read: impl FnOnce(&mut dyn Read) -> T,
) -> Result<T, CryptoError> {
    let too_large = || CryptoError::TooLarge {
        object_key: object_key.to_owned(),
        max_size,
    };
    let (format, plaintext) = open_any(key, object_key, sealed)?;
    let plaintext = Zeroizing::new(plaintext);
    match format {
        Content::Plain if plaintext.len() > max_size => Err(too_large()),
        Content::Plain => Ok(read(&mut &plaintext[..])),
        Content::Zstd => {
            let mut counted = Counted {
                inner: bounded_decoder(&plaintext, object_key, max_size)?,
                count: 0,
            };
            let out = read(&mut std::io::BufReader::with_capacity(
                STREAM_BUFFER,
                &mut counted,
            ));
            if counted.count > max_size {
                return Err(too_large());
            }
            Ok(out)
        }
    }
}

/// Largest content decompressed in one pass: a buffer of the declared
/// size is reserved before a byte is decoded, so a frame that declares
/// more than it holds costs that much memory until zstd finds the lie.
/// Larger content is streamed, its buffer grown with what comes out.
const ONE_SHOT_MAX: usize = 16 << 20;

/// How to decompress a zstd payload.
#[derive(Debug, PartialEq, Eq)]
enum OneShot {
    /// In one pass into a buffer of this size: one frame, the whole
    /// payload, declaring this size (as one-shot compression writes it);
    /// zstd fails if the content does not have that size.
    Size(usize),
    /// The single frame declares more than the limit.
    TooLarge,
    /// Through the bounded stream: no declared size, several frames (or
    /// a skippable one), or more than [`ONE_SHOT_MAX`].
    Stream,
}

fn one_shot(compressed: &[u8], max_size: usize) -> OneShot {
    let whole = zstd::zstd_safe::find_frame_compressed_size(compressed);
    if whole != Ok(compressed.len()) {
        return OneShot::Stream;
    }
    let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(compressed) else {
        return OneShot::Stream;
    };
    match usize::try_from(declared) {
        Ok(size) if size > max_size => OneShot::TooLarge,
        Ok(size) if size <= ONE_SHOT_MAX => OneShot::Size(size),
        Ok(_) => OneShot::Stream,
        Err(_) => OneShot::TooLarge,
    }
}

/// A zstd decoder of `compressed` that yields at most `max_size + 1`
/// bytes: reading one byte past the limit tells "exactly max_size" from
/// "more", without ever producing more. Its window is capped too.
fn bounded_decoder<'a>(
    compressed: &'a [u8],
    object_key: &str,
    max_size: usize,
) -> Result<std::io::Take<zstd::stream::read::Decoder<'a, &'a [u8]>>, CryptoError> {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(|e| corrupt_zstd(object_key, e))?;
    decoder
        .window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(|e| corrupt_zstd(object_key, e))?;
    let limit = u64::try_from(max_size)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    Ok(decoder.take(limit))
}

fn corrupt_zstd(object_key: &str, e: std::io::Error) -> CryptoError {
    CryptoError::Corrupt(format!("object {object_key}: bad zstd data: {e}"))
}

/// Buffer between the zstd decoder and a streaming reader.
const STREAM_BUFFER: usize = 64 << 10;

/// A reader that counts what went through it.
struct Counted<R> {
    inner: R,
    count: usize,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count = self.count.saturating_add(n);
        Ok(n)
    }
}

/// What the plaintext of a sealed object is; stored as its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Plain,
    Zstd,
    Padded,
    ZstdPadded,
}

impl Format {
    fn byte(self) -> u8 {
        match self {
            Format::Plain => FORMAT_PLAIN,
            Format::Zstd => FORMAT_ZSTD,
            Format::Padded => FORMAT_PADDED,
            Format::ZstdPadded => FORMAT_ZSTD_PADDED,
        }
    }

    fn from_byte(byte: u8) -> Option<Format> {
        match byte {
            FORMAT_PLAIN => Some(Format::Plain),
            FORMAT_ZSTD => Some(Format::Zstd),
            FORMAT_PADDED => Some(Format::Padded),
            FORMAT_ZSTD_PADDED => Some(Format::ZstdPadded),
            _ => None,
        }
    }
}

fn seal_with_format(
    key: &SymmetricKey,
    object_key: &str,
    format: Format,
    plaintext: &[u8],
) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let aad = associated_data(format, object_key);
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .expect("XChaCha20-Poly1305 only fails beyond 256 GiB of plaintext");
    let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    out.push(format.byte());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out
}

/// What a plaintext is, once padding is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Content {
    Plain,
    Zstd,
}

/// Decrypts and authenticates; returns what the plaintext is and the
/// plaintext, with any padding removed.
fn open_any(
    key: &SymmetricKey,
    object_key: &str,
    sealed: &[u8],
) -> Result<(Content, Vec<u8>), CryptoError> {
    if sealed.len() < OVERHEAD {
        return Err(CryptoError::Corrupt(format!(
            "object {object_key} is too short ({} bytes) to be sealed",
            sealed.len()
        )));
    }
    let (byte, rest) = (sealed[0], &sealed[1..]);
    let format = Format::from_byte(byte).ok_or_else(|| {
        CryptoError::Corrupt(format!(
            "object {object_key} has unknown format {byte:#04x}"
        ))
    })?;
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let aad = associated_data(format, object_key);
    let plaintext = cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .map_err(|_| failed_to_decrypt(object_key))?;
    match format {
        Format::Plain => Ok((Content::Plain, plaintext)),
        Format::Zstd => Ok((Content::Zstd, plaintext)),
        Format::Padded => Ok((Content::Plain, unpad(object_key, plaintext)?)),
        Format::ZstdPadded => Ok((Content::Zstd, unpad(object_key, plaintext)?)),
    }
}

fn associated_data(format: Format, object_key: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(1 + object_key.len());
    aad.push(format.byte());
    aad.extend_from_slice(object_key.as_bytes());
    aad
}

fn failed_to_decrypt(object_key: &str) -> CryptoError {
    CryptoError::Corrupt(format!(
        "object {object_key} failed to decrypt (corrupt or moved)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const NAME: &str = "users/0f0f/mbox/INBOX/log/0001";
    const MIB: usize = 1024 * 1024;

    fn is_corrupt<T: std::fmt::Debug>(r: Result<T, CryptoError>) -> bool {
        matches!(r, Err(CryptoError::Corrupt(_)))
    }

    #[test]
    fn seal_open_round_trip_including_empty() {
        let key = SymmetricKey::random();
        for plaintext in [&b""[..], b"x", b"hello, world", &[0u8; 4096]] {
            let sealed = seal(&key, NAME, plaintext);
            assert_eq!(sealed.len(), plaintext.len() + OVERHEAD);
            assert_eq!(sealed[0], FORMAT_PLAIN);
            assert_eq!(open(&key, NAME, &sealed).unwrap(), plaintext);
        }
    }

    #[test]
    fn nonces_are_fresh() {
        let key = SymmetricKey::random();
        assert_ne!(seal(&key, NAME, b"same"), seal(&key, NAME, b"same"));
    }

    #[test]
    fn every_flipped_bit_fails_to_open() {
        let key = SymmetricKey::random();
        let sealed = seal(&key, NAME, b"a short op");
        for i in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(is_corrupt(open(&key, NAME, &bad)), "bit {i}");
        }
        let body = seal_body(&key, NAME, &b"compressible ".repeat(100));
        for i in (0..body.len() * 8).step_by(7) {
            let mut bad = body.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(is_corrupt(open_body(&key, NAME, &bad, MIB)), "bit {i}");
        }
    }

    #[test]
    fn truncated_or_garbage_input_is_an_error_not_a_panic() {
        let key = SymmetricKey::random();
        let sealed = seal(&key, NAME, b"payload");
        for len in 0..sealed.len() {
            assert!(is_corrupt(open(&key, NAME, &sealed[..len])), "len {len}");
            assert!(
                open_body(&key, NAME, &sealed[..len], MIB).is_err(),
                "len {len}"
            );
        }
        assert!(is_corrupt(open(&key, NAME, &[0xff; 100])));
    }

    #[test]
    fn ciphertext_under_another_name_or_key_fails() {
        let key = SymmetricKey::random();
        let sealed = seal(&key, NAME, b"secret op");
        let err = open(&key, "users/0f0f/mbox/INBOX/log/0002", &sealed).unwrap_err();
        assert_eq!(
            err.to_string(),
            "object users/0f0f/mbox/INBOX/log/0002 failed to decrypt (corrupt or moved)"
        );
        assert!(is_corrupt(open(&SymmetricKey::random(), NAME, &sealed)));
        let body = seal_body(&key, NAME, b"body body body body body body body");
        assert!(is_corrupt(open_body(
            &key,
            "users/0f0f/blob/other",
            &body,
            MIB
        )));
    }

    #[test]
    fn body_round_trips_large_empty_and_incompressible() {
        let key = SymmetricKey::random();
        let large: Vec<u8> = (0..MIB)
            .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
            .collect();
        let sealed = seal_body(&key, NAME, &large);
        assert_eq!(sealed[0], FORMAT_ZSTD);
        assert!(sealed.len() < large.len() / 2, "{} bytes", sealed.len());
        assert_eq!(open_body(&key, NAME, &sealed, MIB).unwrap(), large);

        let empty = seal_body(&key, NAME, b"");
        assert_eq!(open_body(&key, NAME, &empty, 0).unwrap(), b"");

        let mut random = vec![0u8; 64 * 1024];
        OsRng.fill_bytes(&mut random);
        let sealed = seal_body(&key, NAME, &random);
        assert_eq!(sealed[0], FORMAT_PLAIN);
        assert_eq!(
            open_body(&key, NAME, &sealed, random.len()).unwrap(),
            random
        );
    }

    #[test]
    fn open_body_with_streams_and_keeps_the_size_limit() {
        let key = SymmetricKey::random();
        let body: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let sealed = seal_body(&key, NAME, &body);
        let read_all = |r: &mut dyn Read| {
            let mut out = Vec::new();
            r.read_to_end(&mut out).map(|_| out)
        };
        let streamed = open_body_with(&key, NAME, &sealed, body.len(), read_all).unwrap();
        assert_eq!(streamed.unwrap(), body);
        let err = open_body_with(&key, NAME, &sealed, body.len() - 1, read_all).unwrap_err();
        assert!(matches!(err, CryptoError::TooLarge { .. }), "{err:?}");
        // Uncompressed objects too.
        let plain = seal(&key, NAME, b"plain");
        let read = open_body_with(&key, NAME, &plain, 5, read_all).unwrap();
        assert_eq!(read.unwrap(), b"plain");
        assert!(open_body_with(&key, NAME, &plain, 4, read_all).is_err());
        // A wrong name fails before anything is read.
        assert!(open_body_with(&key, "other", &sealed, body.len(), |_| ()).is_err());
    }

    #[test]
    fn open_body_refuses_to_decompress_beyond_max_size() {
        let key = SymmetricKey::random();
        // 16 MiB of zeros compresses to under 1 KiB: a zip bomb in miniature.
        let bomb = vec![0u8; 16 * MIB];
        let sealed = seal_body(&key, NAME, &bomb);
        assert!(sealed.len() < 4096, "{} bytes", sealed.len());
        let err = open_body(&key, NAME, &sealed, MIB).unwrap_err();
        assert!(
            matches!(err, CryptoError::TooLarge { max_size: MIB, .. }),
            "{err:?}"
        );

        let exact = seal_body(&key, NAME, &vec![7u8; 1000]);
        assert_eq!(open_body(&key, NAME, &exact, 1000).unwrap().len(), 1000);
        assert!(matches!(
            open_body(&key, NAME, &exact, 999),
            Err(CryptoError::TooLarge { .. })
        ));

        let plain = seal(&key, NAME, &[1u8; 100]);
        assert!(matches!(
            open_body(&key, NAME, &plain, 99),
            Err(CryptoError::TooLarge { .. })
        ));
    }

    /// Our frames declare their size and are decompressed in one pass to
    /// exactly that size; a frame that declares none (another compressor),
    /// several frames, or a size beyond the one-pass limit go through the
    /// bounded stream; a declared size beyond the caller's limit is refused
    /// before anything is decoded; a frame whose declared size is a lie is
    /// corrupt, never a larger buffer or a panic.
    #[test]
    fn declared_sizes_are_used_checked_and_optional() {
        let key = SymmetricKey::random();
        let text = vec![7u8; 1000];
        let frame = zstd::bulk::compress(&text, ZSTD_LEVEL).unwrap();
        assert_eq!(one_shot(&frame, 1000), OneShot::Size(1000));
        assert_eq!(one_shot(&frame, 999), OneShot::TooLarge);
        let sealed = seal_with_format(&key, NAME, Format::Zstd, &frame);
        assert_eq!(open_body(&key, NAME, &sealed, 1000).unwrap(), text);

        // A streamed frame declares no size.
        let mut undeclared = Vec::new();
        {
            let mut encoder = zstd::stream::write::Encoder::new(&mut undeclared, 3).unwrap();
            encoder.write_all(&text).unwrap();
            encoder.finish().unwrap();
        }
        assert_eq!(one_shot(&undeclared, 1 << 20), OneShot::Stream);
        let sealed = seal_with_format(&key, NAME, Format::Zstd, &undeclared);
        assert_eq!(open_body(&key, NAME, &sealed, 1000).unwrap(), text);
        assert!(matches!(
            open_body(&key, NAME, &sealed, 999),
            Err(CryptoError::TooLarge { .. })
        ));

        // Two frames end to end: streamed, both read.
        let two = [frame.clone(), frame.clone()].concat();
        assert_eq!(one_shot(&two, 1 << 20), OneShot::Stream);
        let sealed = seal_with_format(&key, NAME, Format::Zstd, &two);
        assert_eq!(
            open_body(&key, NAME, &sealed, 2000).unwrap(),
            [&text[..], &text[..]].concat()
        );

        // More than the one-pass limit: streamed.
        let big = vec![1u8; ONE_SHOT_MAX + 1];
        let big_frame = zstd::bulk::compress(&big, ZSTD_LEVEL).unwrap();
        assert_eq!(one_shot(&big_frame, usize::MAX), OneShot::Stream);
        assert_eq!(one_shot(&big_frame, ONE_SHOT_MAX), OneShot::TooLarge);

        // The frame header: magic, descriptor (single segment, a 2-byte
        // size field holding size - 256), then the size.
        assert_eq!(frame[4] & 0xe0, 0x60, "descriptor {:#04x}", frame[4]);
        assert_eq!(u16::from_le_bytes([frame[5], frame[6]]), 1000 - 256);
        for declared in [999u16, 1001, 1400] {
            let mut lying = frame.clone();
            lying[5..7].copy_from_slice(&(declared - 256).to_le_bytes());
            assert_eq!(one_shot(&lying, 1 << 20), OneShot::Size(declared.into()));
            let sealed = seal_with_format(&key, NAME, Format::Zstd, &lying);
            let err = open_body(&key, NAME, &sealed, 1 << 20).unwrap_err();
            assert!(
                matches!(err, CryptoError::Corrupt(_)),
                "{declared}: {err:?}"
            );
            let err = open_body(&key, NAME, &sealed, 998).unwrap_err();
            assert!(matches!(err, CryptoError::TooLarge { .. }), "{err:?}");
        }
    }

    /// Reused contexts open every body as a fresh one does, a corrupt
    /// frame in between included, and at most a few are kept.
    #[test]
    fn reused_contexts_open_what_fresh_ones_do() {
        let key = SymmetricKey::random();
        let contexts = Decompressors::default();
        let bodies: Vec<Vec<u8>> = (0..40usize)
            .map(|i| {
                let line = format!("line {i} of a message, {}\r\n", "x".repeat(i * 7));
                line.repeat(1 + i * 13).into_bytes()
            })
            .collect();
        for (i, body) in bodies.iter().enumerate() {
            let sealed = seal_body(&key, NAME, body);
            let got = open_body_reusing(&key, NAME, &sealed, body.len(), Some(&contexts));
            assert_eq!(&got.unwrap(), body, "body {i}");
            let too_small = open_body_reusing(&key, NAME, &sealed, body.len() - 1, Some(&contexts));
            assert!(matches!(too_small, Err(CryptoError::TooLarge { .. })));
            if i % 5 == 0 {
                let mut frame = zstd::bulk::compress(body, ZSTD_LEVEL).unwrap();
                let last = frame.len() - 1;
                frame[last / 2] ^= 0x55;
                frame.truncate(last);
                let sealed = seal_with_format(&key, NAME, Format::Zstd, &frame);
                let bad = open_body_reusing(&key, NAME, &sealed, 1 << 20, Some(&contexts));
                assert!(bad.is_err(), "corrupt frame {i} opened");
            }
        }
        // Many at once: each has a context; a few are kept afterwards.
        std::thread::scope(|scope| {
            for body in &bodies[..8] {
                let (key, contexts) = (&key, &contexts);
                scope.spawn(move || {
                    let sealed = seal_body(key, NAME, body);
                    for _ in 0..20 {
                        let got = open_body_reusing(key, NAME, &sealed, body.len(), Some(contexts));
                        assert_eq!(&got.unwrap(), body);
                    }
                });
            }
        });
        let kept = contexts.0.lock().unwrap().len();
        assert!((1..=KEPT_DECOMPRESSORS).contains(&kept), "{kept} kept");
    }

    #[test]
    fn padded_objects_have_class_sizes_and_open() {
        let key = SymmetricKey::random();
        assert_eq!(
            [1, 512, 513, 1024, 1025, 4096, 4097, 8193].map(padded_size),
            [512, 512, 1024, 1024, 2048, 4096, 8192, 12288]
        );
        // Every plaintext length up to 10 KiB seals to its class, and back.
        let mut sizes = std::collections::BTreeSet::new();
        for len in (0..10_240).step_by(7) {
            let plaintext: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let sealed = seal_padded(&key, NAME, &plaintext);
            assert_eq!(sealed.len(), padded_size(len + 4 + OVERHEAD), "len {len}");
            assert_eq!(sealed[0], FORMAT_PADDED);
            assert_eq!(open(&key, NAME, &sealed).unwrap(), plaintext);
            sizes.insert(sealed.len());
        }
        assert_eq!(
            sizes.into_iter().collect::<Vec<_>>(),
            [512, 1024, 2048, 4096, 8192, 12288]
        );
        // Bodies: compressed, padded, bounded as before.
        let text = b"compressible ".repeat(1000);
        let sealed = seal_body_padded(&key, NAME, &text);
        assert_eq!(sealed[0], FORMAT_ZSTD_PADDED);
        assert_eq!(sealed.len(), 512);
        assert_eq!(open_body(&key, NAME, &sealed, text.len()).unwrap(), text);
        assert!(matches!(
            open_body(&key, NAME, &sealed, text.len() - 1),
            Err(CryptoError::TooLarge { .. })
        ));
        let read_all = |r: &mut dyn Read| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).map(|_| v)
        };
        let streamed = open_body_with(&key, NAME, &sealed, text.len(), read_all).unwrap();
        assert_eq!(streamed.unwrap(), text);
        let random: Vec<u8> = (0..3000).map(|_| rand::random::<u8>()).collect();
        let sealed = seal_body_padded(&key, NAME, &random);
        assert_eq!((sealed[0], sealed.len()), (FORMAT_PADDED, 4096));
        assert_eq!(
            open_body(&key, NAME, &sealed, random.len()).unwrap(),
            random
        );
        assert!(open_body(&key, NAME, &sealed, random.len() - 1).is_err());
        // The format byte is authenticated, like the others.
        let mut flipped = seal_padded(&key, NAME, b"op");
        flipped[0] = FORMAT_PLAIN;
        assert!(is_corrupt(open(&key, NAME, &flipped)));
    }

    #[test]
    fn a_padded_length_beyond_the_plaintext_is_corrupt() {
        let key = SymmetricKey::random();
        let mut lying = vec![0xff, 0xff, 0xff, 0xff];
        lying.resize(100, 0);
        let sealed = seal_with_format(&key, NAME, Format::Padded, &lying);
        assert!(is_corrupt(open(&key, NAME, &sealed)));
        let sealed = seal_with_format(&key, NAME, Format::Padded, &[0, 0]);
        assert!(is_corrupt(open(&key, NAME, &sealed)));
    }

    #[test]
    fn open_refuses_compressed_bodies() {
        let key = SymmetricKey::random();
        let sealed = seal_body(&key, NAME, &[0u8; 1000]);
        assert!(is_corrupt(open(&key, NAME, &sealed)));
    }

    /// Pins the format against an independent implementation: the vector
    /// was made with libsodium's `crypto_aead_xchacha20poly1305_ietf_encrypt`
    /// (PyNaCl), nonce 00..17, associated data `0x01 || name`.
    #[test]
    fn format_is_pinned() {
        let key = SymmetricKey::from_bytes([0x42; 32]);
        let sealed = hex::decode(PINNED).unwrap();
        assert_eq!(
            open(&key, "users/pinned/object", &sealed).unwrap(),
            b"facteur"
        );
    }
    const PINNED: &str = "01000102030405060708090a0b0c0d0e0f1011121314151617ea9de793a2d4b5410129049407ce00a5389769f6c491b7";
}
