//! COMPRESS=DEFLATE (RFC 4978) through the real IMAP driver over an
//! in-memory stream, the client speaking raw deflate with the same
//! [`Deflated`] wrapper; and its memory: what an idle compressed
//! connection adds, and a decompression bomb held by the driver's limits.
//! The memory test is alone in this binary with the others run one after
//! the other in one test function, so the process's figures are its own.

use std::alloc::System;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use facteur::imap::compress::Deflated;
use facteur::imap::{Imap, Options};
use facteur::log::InstanceId;
use facteur::store::MemoryStore;
use flate2::{Compress, Compression, FlushCompress};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

mod fixture;
mod imap_client;

use imap_client::{Client, memory};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The client's stream: plain until [`Switch::deflate`], then deflate,
/// each write flushed as one batch (a flush still pending is driven by
/// the next read or write).
#[derive(Default)]
struct Switch {
    plain: Option<DuplexStream>,
    deflated: Option<Box<Deflated<DuplexStream>>>,
    unflushed: bool,
}

impl Switch {
    fn new(io: DuplexStream) -> Switch {
        Switch {
            plain: Some(io),
            ..Switch::default()
        }
    }

    fn deflate(&mut self) {
        let io = self.plain.take().expect("not deflated yet");
        self.deflated = Some(Box::new(Deflated::new(io)));
    }

    /// The plain stream, to send bytes compressed beforehand.
    fn raw(&mut self) -> &mut DuplexStream {
        self.plain.as_mut().expect("not deflated yet")
    }

    /// Drives a pending flush; `Pending` until it is done.
    fn poll_pending_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let (true, Some(d)) = (self.unflushed, self.deflated.as_mut()) {
            std::task::ready!(Pin::new(d.as_mut()).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Switch {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(Err(e)) = this.poll_pending_flush(cx) {
            return Poll::Ready(Err(e));
        }
        match (&mut this.plain, &mut this.deflated) {
            (Some(io), _) => Pin::new(io).poll_read(cx, buf),
            (None, Some(d)) => Pin::new(d.as_mut()).poll_read(cx, buf),
            (None, None) => unreachable!(),
        }
    }
}

impl AsyncWrite for Switch {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending_flush(cx))?;
        match (&mut this.plain, &mut this.deflated) {
            (Some(io), _) => Pin::new(io).poll_write(cx, buf),
            (None, Some(d)) => {
                let n = std::task::ready!(Pin::new(d.as_mut()).poll_write(cx, buf))?;
                this.unflushed = true;
                let _ = this.poll_pending_flush(cx);
                Poll::Ready(Ok(n))
            }
            (None, None) => unreachable!(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.unflushed = false;
        match (&mut this.plain, &mut this.deflated) {
            (Some(io), _) => Pin::new(io).poll_flush(cx),
            (None, Some(d)) => Pin::new(d.as_mut()).poll_flush(cx),
            (None, None) => unreachable!(),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match (&mut this.plain, &mut this.deflated) {
            (Some(io), _) => Pin::new(io).poll_shutdown(cx),
            (None, Some(d)) => Pin::new(d.as_mut()).poll_shutdown(cx),
            (None, None) => unreachable!(),
        }
    }
}

/// An in-memory server with alice; `options` as given.
async fn server(options: Options) -> (Arc<Imap>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret = "0123456789abcdef0123456789abcdef";
    let config = fixture::config(dir.path(), secret);
    let (services, _) = fixture::services(
        &config,
        dir.path(),
        Arc::new(MemoryStore::new()),
        secret.as_bytes(),
        vec![fixture::user_at_example("alice")],
        &["alice"],
    )
    .await;
    let imap = fixture::imap(
        &services,
        services.account_config(InstanceId::new("compress").unwrap()),
        options,
        false,
    );
    (imap, dir)
}

async fn connect(imap: &Arc<Imap>) -> Client<Switch> {
    let client = fixture::serve_in_memory(imap, "127.0.0.1:40000", 1 << 16);
    let (c, greeting) = Client::start(Switch::new(client)).await;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    c
}

/// Raw deflate of `data`, sync-flushed.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::best(), false);
    let mut out = Vec::with_capacity(data.len() / 100 + 4096);
    loop {
        c.compress_vec(
            &data[c.total_in() as usize..],
            &mut out,
            FlushCompress::Sync,
        )
        .unwrap();
        if c.total_in() as usize == data.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compress_deflate() {
    commands_run_compressed_both_ways().await;
    idle_compressed_connections_cost_little().await;
    a_decompression_bomb_is_held_by_the_line_limit().await;
}

async fn commands_run_compressed_both_ways() {
    let (imap, _dir) = server(Options::default()).await;
    let mut c = connect(&imap).await;
    let caps = c.run("CAPABILITY").await;
    assert!(
        !caps.has("COMPRESS=DEFLATE"),
        "not before login: {}",
        caps.all()
    );
    let r = c.run("COMPRESS DEFLATE").await;
    assert!(r.bad(), "COMPRESS needs a login: {}", r.all());
    assert!(c.run("LOGIN alice pw").await.ok());
    let caps = c.run("CAPABILITY").await;
    assert!(caps.has(" COMPRESS=DEFLATE"), "{}", caps.all());
    let r = c.run("COMPRESS DEFLATE").await;
    assert!(r.ok(), "{}", r.all());
    c.io_mut().deflate();
    // Every exchange from now on is compressed both ways.
    let body = "Subject: hello\r\n\r\n".to_owned() + &"compressible ".repeat(5000) + "\r\n";
    let r = c.append("INBOX", "", &body).await;
    assert!(r.ok(), "{}", r.all());
    assert!(c.run("SELECT INBOX").await.ok());
    let r = c.run("FETCH 1 (RFC822.SIZE BODY.PEEK[])").await;
    assert!(r.ok(), "{}", r.all());
    assert!(r.has(&format!("RFC822.SIZE {}", body.len())), "{}", r.all());
    assert!(r.has("compressible compressible"), "{}", r.all());
    let r = c.run("COMPRESS DEFLATE").await;
    assert!(r.no() && r.has("[COMPRESSIONACTIVE]"), "{}", r.all());
    let r = c.run("LOGOUT").await;
    assert!(r.ok() && r.has("* BYE"), "{}", r.all());
}

/// What N idle compressed connections hold beyond N idle plain ones, per
/// connection, counted by the allocator: the inflate state and the input
/// buffer (no deflate state between response batches).
async fn idle_compressed_connections_cost_little() {
    const N: usize = 20;
    let (imap, _dir) = server(Options::default()).await;
    let mut held = Vec::new();
    for _ in 0..N {
        let mut c = connect(&imap).await;
        assert!(c.run("LOGIN alice pw").await.ok());
        assert!(c.run("NOOP").await.ok());
        held.push(c);
    }
    let region = Region::new(GLOBAL);
    for c in &mut held {
        let r = c.run("COMPRESS DEFLATE").await;
        assert!(r.ok(), "{}", r.all());
        c.io_mut().deflate();
        assert!(c.run("NOOP").await.ok());
    }
    let change = region.change();
    let added = change.bytes_allocated as i64 - change.bytes_deallocated as i64
        + change.bytes_reallocated as i64;
    // Both ends of each connection are in this process: halve.
    let per_connection = added / N as i64 / 2;
    eprintln!("COMPRESS adds {per_connection} bytes per idle connection");
    assert!(
        per_connection < 64 * 1024,
        "{per_connection} bytes per idle compressed connection"
    );
    drop(held);
    // What one response batch holds while it is written (dropped after).
    let region = Region::new(GLOBAL);
    let batch = Compress::new(Compression::new(1), false);
    let deflate_state = region.change().bytes_allocated;
    drop(batch);
    eprintln!("a deflate state holds {deflate_state} bytes while a batch is written");
}

/// 64 MiB of one line, sent as ~64 KiB of deflate: the driver sees it in
/// read-sized chunks and refuses it at the line limit, as if the client
/// had sent it inflated; the process's peak memory grows by far less than
/// the inflated size, and the connection goes on.
async fn a_decompression_bomb_is_held_by_the_line_limit() {
    const INFLATED: usize = 64 << 20;
    let options = Options {
        max_message: 1 << 20,
        ..Options::default()
    };
    let (imap, _dir) = server(options).await;
    let mut line = b"b1 NOOP ".to_vec();
    line.resize(INFLATED, b'x');
    line.extend_from_slice(b"\r\n");
    let bomb = deflate(&line);
    drop(line);
    assert!(bomb.len() < INFLATED / 500, "{}", bomb.len());
    let pid = std::process::id();
    memory::reset_peak(pid);
    let before = memory::peak(pid);
    let mut c = connect(&imap).await;
    assert!(c.run("LOGIN alice pw").await.ok());
    let r = c.run("COMPRESS DEFLATE").await;
    assert!(r.ok(), "{}", r.all());
    {
        use tokio::io::AsyncWriteExt;
        let raw = c.io_mut().raw();
        raw.write_all(&bomb).await.unwrap();
        raw.write_all(&deflate(b"b2 NOOP\r\n")).await.unwrap();
    }
    // Answers come compressed.
    c.io_mut().deflate();
    let r = c.until_tagged("b1").await;
    assert!(r.no() || r.bad(), "{}", r.all());
    assert!(r.has("TOOBIG") || r.has("too"), "{}", r.all());
    let r = c.until_tagged("b2").await;
    assert!(r.ok(), "the connection goes on: {}", r.all());
    let grown = memory::peak(pid).saturating_sub(before);
    eprintln!("peak grew by {grown} bytes for a {INFLATED}-byte inflated line");
    assert!(grown < 16 << 20, "peak grew by {grown} bytes");
}
