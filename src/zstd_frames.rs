//! zstd one-shot compression with a reused context per thread for small
//! inputs. Creating a zstd context allocates and initialises its tables,
//! which costs more than compressing a summary of a few kilobytes: a
//! first-login drain places thousands of messages, each with a summary
//! compressed as it is held in memory (`mailbox::state`).
//!
//! Only inputs up to [`REUSE_UP_TO`] use the thread's context, so that what
//! a thread keeps is sized for small inputs; larger ones get a context of
//! their own, whose cost their compression dwarfs.
//!
//! A reused context keeps bytes of its last input until the next one (or
//! the thread's end). So it is used only for what is held decrypted in
//! memory anyway (the summaries of an unlocked account); bodies are
//! sealed with a context of their own and opened with contexts their
//! account owns (`crypto::seal::Decompressors`, dropped with the account's
//! caches), so that no plaintext of theirs stays behind in a thread's
//! context.

use std::cell::RefCell;
use std::io;

use zstd::bulk::{Compressor, Decompressor};

/// Largest input (or output, when decompressing) that uses the thread's
/// context.
pub const REUSE_UP_TO: usize = 64 * 1024;

thread_local! {
    static COMPRESSOR: RefCell<Option<Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
}

/// `bytes` as one zstd frame at `level`; the same frame
/// `zstd::bulk::compress` makes.
pub fn compress(bytes: &[u8], level: i32) -> io::Result<Vec<u8>> {
    if bytes.len() > REUSE_UP_TO {
        return zstd::bulk::compress(bytes, level);
    }
    let reused = COMPRESSOR.try_with(|cell| {
        let mut cell = cell.try_borrow_mut().map_err(io::Error::other)?;
        let compressor = match cell.as_mut() {
            Some(c) => {
                c.set_compression_level(level)?;
                c
            }
            None => cell.insert(Compressor::new(level)?),
        };
        compressor.compress(bytes)
    });
    // The thread is ending (its locals are gone): a context of our own.
    reused.unwrap_or_else(|_| zstd::bulk::compress(bytes, level))
}

/// The content of a zstd frame of at most `capacity` bytes (an error if
/// larger).
pub fn decompress(frame: &[u8], capacity: usize) -> io::Result<Vec<u8>> {
    if capacity > REUSE_UP_TO {
        return zstd::bulk::decompress(frame, capacity);
    }
    let reused = DECOMPRESSOR.try_with(|cell| {
        let mut cell = cell.try_borrow_mut().map_err(io::Error::other)?;
        let decompressor = match cell.as_mut() {
            Some(d) => d,
            None => cell.insert(Decompressor::new()?),
        };
        decompressor.decompress(frame, capacity)
    });
    reused.unwrap_or_else(|_| zstd::bulk::decompress(frame, capacity))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames are zstd's own, whatever the level or size, and a
    /// reused context carries nothing from one input to the next.
    #[test]
    fn frames_equal_a_fresh_contexts_and_round_trip() {
        let inputs: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"From: a@example.org\r\nSubject: x\r\n\r\nhello\r\n".repeat(40),
            (0..REUSE_UP_TO as u32)
                .map(|i| (i * 7 % 251) as u8)
                .collect(),
            vec![b'z'; REUSE_UP_TO + 1],
            b"short".to_vec(),
        ];
        for level in [1, 3, 1] {
            for input in &inputs {
                let ours = compress(input, level).unwrap();
                assert_eq!(ours, zstd::bulk::compress(input, level).unwrap());
                assert_eq!(&decompress(&ours, input.len()).unwrap(), input);
            }
        }
    }

    #[test]
    fn a_frame_larger_than_the_capacity_is_an_error() {
        let frame = compress(&[1u8; 1000], 3).unwrap();
        assert!(decompress(&frame, 999).is_err());
        assert!(decompress(b"not a frame", 100).is_err());
        // The context still works after an error.
        assert_eq!(decompress(&frame, 1000).unwrap(), vec![1u8; 1000]);
    }
}
