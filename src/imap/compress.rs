//! COMPRESS=DEFLATE (RFC 4978): after the tagged OK of `COMPRESS
//! DEFLATE`, both directions are raw deflate (RFC 1951, no zlib header,
//! RFC 4978 §3), inside TLS when TLS is active.
//!
//! [`Deflated`] wraps the connection's stream; the driver reads and writes
//! it as before, so every limit of the driver applies to the inflated
//! bytes.
//!
//! Invariants (memory per connection):
//! - Reading inflates into the caller's buffer only (the framer's read
//!   buffer, 16 KiB): a small input that inflates to gigabytes (a
//!   "decompression bomb") is seen by the framer in bounded chunks, like a
//!   client sending the inflated bytes itself, and is refused by the same
//!   line and literal limits. Compressed input waits in a [`READ_CHUNK`]
//!   buffer.
//! - The inflate state (a 32 KiB window, which RFC 4978 §4 lets the client
//!   fill, plus its tables) lives as long as the connection.
//! - The deflate state exists only while a response batch is written:
//!   each flush of the driver ends with a full flush (RFC 4978 §4:
//!   Z_FULL_FLUSH; the output ends on a byte boundary and refers to
//!   nothing before it), after which the state is dropped, and the next
//!   batch starts a new one. An idle connection holds no deflate state.
//! - Writing compresses at most [`WRITE_CHUNK`] input bytes per call, and
//!   does not take more while that much compressed output is pending.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::response::{Failure, code};

/// Compressed bytes read from the socket at once.
pub const READ_CHUNK: usize = 4 * 1024;

/// Input bytes compressed per write call; compressed output pending is
/// kept under about as much.
pub const WRITE_CHUNK: usize = 16 * 1024;

/// Compression level of responses: a fast level, since responses are
/// mostly small and a mobile client's CPU counts as much as the link.
const LEVEL: u32 = 1;

/// A stream whose both directions are raw deflate (RFC 4978).
pub struct Deflated<S> {
    inner: S,
    inflate: Decompress,
    /// Compressed input not yet inflated: `input[start..end]`.
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// The client ended its deflate stream (a final block): nothing more
    /// can be read.
    ended: bool,
    /// The deflate state of the response batch being written.
    deflate: Option<Compress>,
    /// Compressed output not yet written: `output[written..]`.
    output: Vec<u8>,
    written: usize,
}

/// Why COMPRESS is refused, if it is: before login (RFC 4978 §3: valid
/// in the authenticated and selected states) and when already active
/// (`NO [COMPRESSIONACTIVE]`, RFC 4978 §3).
pub fn refusal(authenticated: bool, active: bool) -> Option<Failure> {
    if !authenticated {
        return Some(Failure::bad("Log in first"));
    }
    if active {
        return Some(Failure::no(
            Some(code("COMPRESSIONACTIVE")),
            "DEFLATE is already active",
        ));
    }
    None
}

impl<S> Deflated<S> {
    /// Starts compression on `inner`.
    pub fn new(inner: S) -> Deflated<S> {
        Deflated::with_input(inner, &[])
    }

    /// Starts compression on `inner`, with compressed bytes the client
    /// sent right after its COMPRESS command and the driver already read.
    pub fn with_input(inner: S, pending: &[u8]) -> Deflated<S> {
        let mut input = vec![0; READ_CHUNK.max(pending.len())].into_boxed_slice();
        input[..pending.len()].copy_from_slice(pending);
        Deflated {
            inner,
            inflate: Decompress::new(false),
            input,
            start: 0,
            end: pending.len(),
            ended: false,
            deflate: None,
            output: Vec::new(),
            written: 0,
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("COMPRESS: {what}"))
}

impl<S: AsyncWrite + Unpin> Deflated<S> {
    /// Writes pending compressed output to the inner stream.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.output.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.output[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.output.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Runs the deflate state on `data` with `flush` until it has taken
    /// all of it and, for a flush, given all its output.
    fn deflate(&mut self, data: &[u8], flush: FlushCompress) -> io::Result<()> {
        let deflate = self
            .deflate
            .get_or_insert_with(|| Compress::new(Compression::new(LEVEL), false));
        let mut taken = 0;
        loop {
            self.output.reserve(data.len() - taken + 64);
            let before_in = deflate.total_in();
            let before_out = deflate.total_out();
            deflate
                .compress_vec(&data[taken..], &mut self.output, flush)
                .map_err(|e| invalid(&e.to_string()))?;
            taken += (deflate.total_in() - before_in) as usize;
            let produced = deflate.total_out() - before_out;
            // Done when all input is taken and the output did not fill
            // the room it had (so nothing of the flush is left inside).
            if taken == data.len() && self.output.len() < self.output.capacity() {
                return Ok(());
            }
            if produced == 0 && taken == data.len() && matches!(flush, FlushCompress::None) {
                return Ok(());
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deflated<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            // Inflate what there is, even nothing: the inflater may hold
            // output it had no room for at the last call.
            let before_in = this.inflate.total_in();
            let before_out = this.inflate.total_out();
            let room = buf.initialize_unfilled();
            let had_input = this.start < this.end;
            let status = this.inflate.decompress(
                &this.input[this.start..this.end],
                room,
                FlushDecompress::None,
            );
            let status = match status {
                Ok(s) => Some(s),
                Err(e) if had_input => {
                    return Poll::Ready(Err(invalid(&format!("bad deflate data: {e}"))));
                }
                Err(_) => None,
            };
            let taken = (this.inflate.total_in() - before_in) as usize;
            let produced = (this.inflate.total_out() - before_out) as usize;
            this.start += taken;
            buf.advance(produced);
            if status == Some(Status::StreamEnd) {
                this.ended = true;
            }
            if produced > 0 {
                return Poll::Ready(Ok(()));
            }
            if had_input && taken == 0 && !this.ended {
                // Room and input, and no progress: not deflate data.
                return Poll::Ready(Err(invalid("inflate made no progress")));
            }
            if this.start == this.end && !this.ended {
                if this.input.len() > READ_CHUNK {
                    // The larger buffer of `with_input` is used up.
                    this.input = vec![0; READ_CHUNK].into_boxed_slice();
                }
                let mut read = ReadBuf::new(&mut this.input);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
                if read.filled().is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.start = 0;
                this.end = read.filled().len();
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deflated<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.output.len() - this.written >= WRITE_CHUNK {
            ready!(this.poll_drain(cx))?;
        }
        let n = buf.len().min(WRITE_CHUNK);
        this.deflate(&buf[..n], FlushCompress::None)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.deflate.is_some() {
            this.deflate(&[], FlushCompress::Full)?;
            // The batch is complete on the wire once drained: the next
            // one starts a new deflate state (see the module's invariants).
            this.deflate = None;
        }
        ready!(this.poll_drain(cx))?;
        if this.output.capacity() > WRITE_CHUNK * 2 {
            this.output = Vec::new();
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(data.len() + 1024);
        c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
        out
    }

    fn raw_inflate(state: &mut Decompress, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 << 20);
        state
            .decompress_vec(data, &mut out, FlushDecompress::Sync)
            .unwrap();
        out
    }

    #[tokio::test]
    async fn each_flushed_batch_inflates_on_its_own_and_in_sequence() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut d = Deflated::new(a);
        let mut client = Decompress::new(false);
        let large = vec![b'x'; 100_000];
        let batches: [&[u8]; 3] = [b"* OK first\r\n", b"* OK second\r\n", &large];
        for batch in batches {
            d.write_all(batch).await.unwrap();
            d.flush().await.unwrap();
            assert!(d.deflate.is_none(), "no deflate state between batches");
            let mut wire = vec![0; 1 << 20];
            let mut got = Vec::new();
            while got.len() < batch.len() {
                let n = b.read(&mut wire).await.unwrap();
                got.extend(raw_inflate(&mut client, &wire[..n]));
            }
            assert_eq!(got, batch);
        }
    }

    #[tokio::test]
    async fn input_is_inflated_into_the_readers_buffer_only() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut d = Deflated::new(a);
        // 8 MiB of zeros: a few KiB on the wire.
        let bomb = raw_deflate(&vec![0u8; 8 << 20]);
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        b.write_all(&bomb).await.unwrap();
        drop(b);
        let mut buf = [0u8; 1000];
        let mut total = 0;
        loop {
            let n = d.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= buf.len());
            total += n;
        }
        assert_eq!(total, 8 << 20);
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_hang() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut d = Deflated::new(a);
        b.write_all(&[0xff; 64]).await.unwrap();
        let mut buf = [0u8; 100];
        assert!(d.read(&mut buf).await.is_err());
    }
}
