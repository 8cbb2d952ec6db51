//! The IMAP driver: the one file that touches a client's socket. It splits
//! input into commands with imap-codec's fragmentizer (literals included,
//! oversized ones read to their end and discarded), decodes them, runs
//! them on the [`Session`], and carries the exchanges that span several
//! client messages: STARTTLS, AUTHENTICATE and IDLE.
//!
//! Invariants:
//! - One command at a time; nothing is read while a command runs, so a
//!   pipelining client is held by TCP flow control, not by our memory.
//! - What one connection buffers is bounded by the limits of its state
//!   ([`Limits`]): before login a few KiB for a whole command, literals
//!   included; after login `max_message` for literals and
//!   `max_command_line` for the rest. Input over a limit is read to its
//!   end, dropped and refused, never cut mid-stream (its bytes could look
//!   like commands), and never parsed.
//! - A synchronizing literal over the limit is refused before the client
//!   sends it; a non-synchronizing one is read and dropped.
//! - A whole command must arrive within the state's timeout: the deadline
//!   runs from the end of the previous answer, not from the last read, so
//!   a client trickling bytes is cut off like a silent one.
//! - After STARTTLS, bytes the client sent before the handshake are
//!   discarded (no command injection, RFC 9051 §11.1).
//! - No lock is held across a socket write: sessions read the state into
//!   owned values before writing.
//! - A connection that ends cleanly (LOGOUT, `* BYE` on timeout or
//!   shutdown, the client closing) is shut down, which over TLS sends
//!   close_notify, within a bounded time.

use std::future::Future;
use std::io;
use std::sync::Arc;

use bounded_static::IntoBoundedStatic;
use imap_codec::decode::{AuthenticateDataDecodeError, Decoder};
use imap_codec::fragmentizer::{FragmentInfo, Fragmentizer, LiteralAnnouncement};
use imap_codec::imap_types::auth::AuthenticateData;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::{LiteralMode, Tag};
use imap_codec::imap_types::response::StatusKind;
use imap_codec::{AuthenticateDataCodec, CommandCodec, IdleDoneCodec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;

use super::Imap;
use super::compress;
use super::grammar::ext::Ext;
use super::grammar::{self, Parse};
use super::response::{Failure, Out, Sink, code, write_out};
use super::session::{Flow, Request, Session};
pub use super::state::Peer;
use super::state::Saved;
use crate::metrics;

/// Bytes read from the socket at once.
const READ_BUFFER: usize = 16 * 1024;

/// Room for the command around the literals of an APPEND after login
/// (mailbox name, flags, date).
const COMMAND_OVERHEAD: u32 = 64 * 1024;

/// A message buffer grown past this is given back once its message is
/// done, so that one large APPEND does not pin its size for the rest of
/// the connection.
const KEEP_BUFFER: usize = 64 * 1024;

/// What a connection may buffer for one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Limits {
    /// The whole command: its lines and its literals' data.
    command: u32,
    /// One literal's data.
    literal: u32,
    /// The command's lines together, literal data not counted: what the
    /// parsers see as syntax, and may take several times in memory.
    lines: u32,
}

impl Limits {
    /// The limits of a session before or after login.
    fn of(options: &super::Options, authenticated: bool) -> Limits {
        if authenticated {
            Limits {
                command: options.max_message.saturating_add(COMMAND_OVERHEAD),
                literal: options.max_message,
                lines: options.max_command_line,
            }
        } else {
            let all = options.max_command_unauthenticated;
            Limits {
                command: all,
                literal: all,
                lines: all,
            }
        }
    }
}

/// Splits client bytes into messages (a command line with its literals,
/// or an AUTHENTICATE or IDLE answer) under [`Limits`], without I/O: the
/// driver reads into [`Framer::space`] whenever [`Framer::next`] wants
/// more.
///
/// The fragmentizer is given bytes only up to the end of the fragment it
/// parses (a line's LF, a literal's last octet), so it never holds bytes
/// of the next message: between messages it can be replaced by one with
/// other limits (after login) or a smaller buffer.
#[derive(Debug)]
struct Framer {
    fragments: Fragmentizer,
    limits: Limits,
    /// Bytes read from the socket: `buf[taken..filled]` are not yet given
    /// to the fragmentizer.
    buf: Box<[u8]>,
    filled: usize,
    taken: usize,
    /// Octets of the current literal still to give; 0 within a line.
    literal_left: u32,
    /// Line octets of the current message so far.
    line_bytes: u64,
    /// Whether no byte of the current message was given yet.
    at_boundary: bool,
    /// What the fragmentizer's line parser has concluded so far about
    /// the current line (see [`LineEnd`]).
    line: LineEnd,
}

/// imap-codec's line parser (`fragmentizer::LineParser`), mirrored: what
/// it concludes from a line's bytes about how the line ends, with or
/// without a literal announcement. The framer runs it over every line
/// byte, in step with the fragmentizer, so that a line over a limit can be
/// dropped instead of buffered and still end exactly where the
/// fragmentizer would end it: the fragmentizer is then given one byte
/// that puts its parser back to its plain state (`x`), and the line's end
/// written canonically (`\r\n`, `{n}\r\n` or `{n+}\r\n`). No suffix
/// of the line would do: leading zeros make an announcement arbitrarily
/// long (`{000…016+}`), and the parser's state where feeding stopped
/// would carry into it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum LineEnd {
    #[default]
    Other,
    Open,
    Digit(u32),
    Plus(u32),
    Close(LiteralMode, u32),
    Cr(Option<(LiteralMode, u32)>),
}

impl LineEnd {
    /// The state after `byte`, and at an LF how the line ended: with the
    /// literal it announces, if any.
    fn step(self, byte: u8) -> (LineEnd, Option<Option<(LiteralMode, u32)>>) {
        use LineEnd::*;
        let next = match (self, byte) {
            (Close(mode, n), b'\n') => return (Other, Some(Some((mode, n)))),
            (Cr(announced), b'\n') => return (Other, Some(announced)),
            (_, b'\n') => return (Other, Some(None)),
            (Close(mode, n), b'\r') => Cr(Some((mode, n))),
            (_, b'\r') => Cr(None),
            (_, b'{') => Open,
            (Open, b'0'..=b'9') => Digit(u32::from(byte - b'0')),
            (Digit(n), b'0'..=b'9') => n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u32::from(byte - b'0')))
                .map_or(Other, Digit),
            (Digit(n), b'+') => Plus(n),
            (Digit(n), b'}') => Close(LiteralMode::Sync, n),
            (Plus(n), b'}') => Close(LiteralMode::NonSync, n),
            _ => Other,
        };
        (next, None)
    }

    /// A line's end as the fragmentizer is given it in place of a line
    /// dropped: a byte resetting its parser from any state, then the end.
    fn canonical(announced: Option<(LiteralMode, u32)>) -> Vec<u8> {
        match announced {
            None => b"x\r\n".to_vec(),
            Some((LiteralMode::Sync, n)) => format!("x{{{n}}}\r\n").into_bytes(),
            Some((LiteralMode::NonSync, n)) => format!("x{{{n}+}}\r\n").into_bytes(),
        }
    }
}

/// What [`Framer::next`] found.
#[derive(Debug)]
enum Frame {
    /// A complete message is in [`Framer::fragments`] (perhaps over a
    /// limit: then it is marked so and holds a truncated prefix).
    Message,
    /// The client announced a synchronizing literal within the limits: it
    /// waits for a continuation request.
    LiteralWanted,
    /// The client announced a synchronizing literal over the limits; it
    /// will not send it, and the message is dropped (RFC 7888 §4). The
    /// tag, when it could be read, and the limit.
    LiteralRefused(Option<Tag<'static>>, u32),
}

impl Framer {
    fn new(limits: Limits) -> Framer {
        Framer {
            fragments: Fragmentizer::new(limits.command),
            limits,
            buf: vec![0; READ_BUFFER].into_boxed_slice(),
            filled: 0,
            taken: 0,
            literal_left: 0,
            line_bytes: 0,
            at_boundary: true,
            line: LineEnd::Other,
        }
    }

    /// The fragmentizer, holding the message [`Frame::Message`] announced.
    fn fragments(&self) -> &Fragmentizer {
        &self.fragments
    }

    /// Whether the current message broke a limit (it must not be parsed).
    fn over_limit(&self) -> bool {
        self.fragments.is_max_message_size_exceeded() || self.fragments.is_message_poisoned()
    }

    /// Sets the limits from the next message on; a no-op in the middle of
    /// a message.
    fn set_limits(&mut self, limits: Limits) {
        if !self.at_boundary {
            return;
        }
        let grown = self.fragments.message_bytes().len() > KEEP_BUFFER;
        if limits != self.limits || grown {
            self.fragments = Fragmentizer::new(limits.command);
            self.limits = limits;
        }
    }

    /// Where the next read goes; empty unless [`Framer::next`] returned
    /// `None` (it wants more input).
    fn space(&mut self) -> &mut [u8] {
        if self.taken < self.filled {
            return &mut [];
        }
        self.taken = 0;
        self.filled = 0;
        &mut self.buf
    }

    /// Takes the input read but not yet given to the fragmentizer (none
    /// past a message's end is ever given).
    fn take_unread(&mut self) -> Vec<u8> {
        let unread = self.buf[self.taken..self.filled].to_vec();
        self.taken = 0;
        self.filled = 0;
        unread
    }

    /// Records that a read put `n` bytes in [`Framer::space`].
    fn filled(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.buf.len());
    }

    /// Bytes held for the client: unparsed input and the current message.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        (self.filled - self.taken) + self.fragments.message_bytes().len()
    }

    /// Advances as far as the buffered input allows; `None` when it needs
    /// more (read into [`Framer::space`]).
    fn next(&mut self) -> Option<Frame> {
        loop {
            match self.fragments.progress() {
                Some(FragmentInfo::Line {
                    announcement: Some(LiteralAnnouncement { mode, length }),
                    ..
                }) => {
                    let so_far = self.fragments.message_bytes().len() as u64;
                    // A message already over a limit is refused as early.
                    let over = length > self.limits.literal
                        || so_far + u64::from(length) > u64::from(self.limits.command)
                        || self.over_limit();
                    match (over, mode) {
                        (true, LiteralMode::Sync) => {
                            let tag = self.fragments.decode_tag().map(|t| t.into_static());
                            self.fragments.skip_message();
                            self.message_done();
                            return Some(Frame::LiteralRefused(tag, self.limits.literal));
                        }
                        (true, LiteralMode::NonSync) => {
                            // RFC 7888 §4: it arrives anyway; read and drop it.
                            self.fragments.poison_message();
                            self.literal_left = length;
                        }
                        (false, LiteralMode::Sync) => {
                            self.literal_left = length;
                            return Some(Frame::LiteralWanted);
                        }
                        (false, LiteralMode::NonSync) => self.literal_left = length,
                    }
                }
                Some(FragmentInfo::Line { .. }) => {
                    // A line without a literal ends the message.
                    self.message_done();
                    return Some(Frame::Message);
                }
                Some(FragmentInfo::Literal { .. }) => self.literal_left = 0,
                None => {
                    if !self.give() {
                        return None;
                    }
                }
            }
        }
    }

    fn message_done(&mut self) {
        self.literal_left = 0;
        self.line_bytes = 0;
        self.at_boundary = true;
    }

    /// Gives the fragmentizer the buffered bytes up to the end of the
    /// fragment it is parsing; `false` if there are none.
    fn give(&mut self) -> bool {
        let pending = &self.buf[self.taken..self.filled];
        if pending.is_empty() {
            return false;
        }
        let n = if self.literal_left > 0 {
            pending.len().min(self.literal_left as usize)
        } else {
            pending
                .iter()
                .position(|&b| b == b'\n')
                .map_or(pending.len(), |lf| lf + 1)
        };
        if self.literal_left > 0 {
            self.fragments.enqueue_bytes(&pending[..n]);
        } else {
            let mut ended = None;
            for &byte in &pending[..n] {
                let (line, end) = self.line.step(byte);
                self.line = line;
                ended = ended.or(end);
            }
            if !self.fragments.is_message_poisoned() {
                self.fragments.enqueue_bytes(&pending[..n]);
            } else if let Some(announced) = ended {
                // A line of a message over a limit: refused, so only
                // where it ends matters, which [`LineEnd`] tells. Buffering
                // it would let one command take all the memory a whole
                // command with its literals may.
                self.fragments.enqueue_bytes(&LineEnd::canonical(announced));
            }
        }
        self.taken += n;
        self.at_boundary = false;
        if self.literal_left > 0 {
            self.literal_left -= n as u32;
        } else {
            self.line_bytes += n as u64;
            if self.line_bytes > u64::from(self.limits.lines)
                && !self.fragments.is_message_poisoned()
            {
                self.fragments.poison_message();
            }
        }
        true
    }
}

/// A stream the driver can read and write, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Why reading the next client message stopped.
enum Input {
    /// A complete message is in the framer.
    Message,
    /// The client closed the connection.
    Closed,
    /// The message did not arrive by its deadline.
    TimedOut,
    /// The server is shutting down.
    Shutdown,
}

struct Connection {
    stream: Box<dyn Stream>,
    framer: Framer,
    /// COMPRESS=DEFLATE is active (RFC 4978).
    compressed: bool,
    /// The command being answered, for `/metrics`; taken by its tagged
    /// status (see [`Out::counting`]).
    command: Option<metrics::ImapCommand>,
}

impl Connection {
    fn new(stream: Box<dyn Stream>, limits: Limits) -> Self {
        Connection {
            stream,
            framer: Framer::new(limits),
            compressed: false,
            command: None,
        }
    }

    /// COMPRESS (RFC 4978 §3): answers, and once OK is written, both
    /// directions are deflate; bytes the client sent after the command
    /// are compressed ones.
    async fn compress(&mut self, tag: &Tag<'static>, authenticated: bool) -> io::Result<()> {
        let refusal = compress::refusal(authenticated, self.compressed);
        let mut out = self.out();
        match refusal {
            Some(failure) => {
                failure.write(tag, &mut out)?;
                return out.flush().await;
            }
            None => out.status(Some(tag), StatusKind::Ok, None, "DEFLATE active"),
        }
        out.flush().await?;
        let pending = self.framer.take_unread();
        let plain = std::mem::replace(&mut self.stream, Box::new(tokio::io::duplex(1).0));
        self.stream = Box::new(compress::Deflated::with_input(plain, &pending));
        self.compressed = true;
        Ok(())
    }

    /// Reads until the framer holds one complete message, answering
    /// synchronizing literals on the way; the whole message must arrive by
    /// `deadline`.
    async fn next_message(
        &mut self,
        limits: Limits,
        deadline: Instant,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> io::Result<Input> {
        self.framer.set_limits(limits);
        loop {
            match self.framer.next() {
                Some(Frame::Message) => return Ok(Input::Message),
                Some(Frame::LiteralWanted) => {
                    let mut out = self.out();
                    out.continuation("Ready for literal data");
                    out.flush().await?;
                }
                Some(Frame::LiteralRefused(tag, limit)) => {
                    let mut out = self.out();
                    too_big(&mut out, tag.as_ref(), limit);
                    out.flush().await?;
                }
                None => {
                    let read = tokio::select! {
                        r = tokio::time::timeout_at(deadline, self.read()) => r,
                        () = &mut *shutdown => return Ok(Input::Shutdown),
                    };
                    match read {
                        Err(_) => return Ok(Input::TimedOut),
                        Ok(Ok(0)) => return Ok(Input::Closed),
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(e),
                    }
                }
            }
        }
    }

    /// One read into the framer (cancel-safe, like the stream's read).
    async fn read(&mut self) -> io::Result<usize> {
        let n = self.stream.read(self.framer.space()).await?;
        self.framer.filled(n);
        Ok(n)
    }

    fn out(&mut self) -> Out<'_> {
        Out::new(&mut self.stream as &mut dyn Sink).counting(&mut self.command)
    }
}

/// Refuses a synchronizing literal over the limit (RFC 7888 §4, RFC 5530
/// §3 `TOOBIG`).
fn too_big(out: &mut Out<'_>, tag: Option<&Tag<'_>>, limit: u32) {
    let text = format!("Literal too large: the limit is {limit} bytes");
    match tag {
        Some(tag) => out.status(Some(tag), StatusKind::No, Some(code("TOOBIG")), &text),
        None => out.status(None, StatusKind::Bad, None, &text),
    }
}

/// The BYE of a session whose account locked itself: its keyring is gone
/// (the user was deleted) or is no longer the one it was unlocked from.
const LOCKED_BYE: &str = "This account was deleted or its keys changed; log in again";

/// Decodes the complete message in `framer` as a command; one over a
/// limit is refused unparsed. `saved` gives the saved search result for `$`; it is asked for only
/// when the extension grammar runs (a command imap-codec refused), not for
/// every command.
fn decode(
    framer: &Framer,
    saved: impl FnOnce() -> Saved,
) -> Result<Request, (Option<Tag<'static>>, Failure)> {
    let fragments = framer.fragments();
    let bytes = fragments.message_bytes();
    let tag = || fragments.decode_tag().map(|t| t.into_static());
    if framer.over_limit() {
        return Err((
            tag(),
            Failure::no(Some(code("TOOBIG")), "Command too large"),
        ));
    }
    // The base grammar is imap-codec's; a command it refuses may use an
    // extension's grammar (`grammar`), parsed into the same typed values.
    let leftover = match CommandCodec::default().decode(bytes) {
        Ok((b"", command)) => {
            let request = request(command.into_static(), Ext::default());
            return Ok(request);
        }
        Ok(_) => true,
        Err(_) => false,
    };
    match grammar::parse(bytes, &saved()) {
        Some(Ok(Parse::Command(tag, body, ext))) => Ok(Request {
            tag,
            body: *body,
            ext,
        }),
        Some(Err(syntax)) => Err((tag(), Failure::bad(syntax.0))),
        None if leftover => Err((tag(), Failure::bad("Unexpected data after the command"))),
        None => Err((tag(), Failure::bad(syntax_error(bytes)))),
    }
}

fn request(command: Command<'static>, ext: Ext) -> Request {
    Request {
        tag: command.tag,
        body: command.body,
        ext,
    }
}

/// A helpful BAD text: the command name if we could read it.
fn syntax_error(input: &[u8]) -> String {
    let words: Vec<&[u8]> = input.split(|b| *b == b' ' || *b == b'\r').take(3).collect();
    let name = match words.get(1) {
        Some(w) if w.eq_ignore_ascii_case(b"UID") => words.get(2),
        other => other,
    };
    match name.and_then(|n| std::str::from_utf8(n).ok()) {
        Some(n) if !n.is_empty() && n.len() < 32 => {
            format!(
                "Syntax error in {} or unknown command",
                n.to_ascii_uppercase()
            )
        }
        _ => "Syntax error".to_owned(),
    }
}

/// Serves one IMAP connection until LOGOUT, disconnect, timeout or
/// `shutdown` resolving (then `* BYE` after the running command).
pub async fn serve<S>(
    stream: S,
    peer: Peer,
    imap: Arc<Imap>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let options = imap.options.clone();
    let mut conn = Connection::new(Box::new(stream), Limits::of(&options, false));
    let served = drive(&mut conn, peer, imap, shutdown).await;
    if served.is_ok() {
        // The server ends the connection (LOGOUT, BYE) or saw the client
        // end it: over TLS, close_notify first (RFC 8446 §6.1), so the
        // client can tell the end from a truncation; then the TCP FIN. A
        // client that stopped reading does not hold the task for long.
        use tokio::io::AsyncWriteExt;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.stream.shutdown()).await;
    }
    served
}

/// How long the closing of a connection may wait on the client.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The exchanges of one connection, until it ends; see [`serve`].
async fn drive(
    conn: &mut Connection,
    peer: Peer,
    imap: Arc<Imap>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let options = imap.options.clone();
    let mut session = Session::new(imap.clone(), peer);
    let mut shutdown = Box::pin(shutdown);
    {
        let caps = session.capabilities();
        let mut out = conn.out();
        out.untagged(&format!("OK [CAPABILITY {caps}] Facteur ready"));
        out.flush().await?;
    }
    loop {
        let authenticated = session.is_authenticated();
        let limits = Limits::of(&options, authenticated);
        let timeout = if authenticated {
            options.timeout_authenticated
        } else {
            options.timeout_unauthenticated
        };
        match conn
            .next_message(limits, Instant::now() + timeout, &mut shutdown)
            .await?
        {
            Input::Message if session.account_locked() => {
                let mut out = conn.out();
                out.bye(LOCKED_BYE);
                return out.flush().await;
            }
            Input::Message => {
                let message = conn.framer.fragments().message_bytes();
                conn.command = Some(metrics::ImapCommand::arrived(message));
            }
            Input::Closed => return Ok(()),
            Input::TimedOut => {
                let mut out = conn.out();
                out.bye("Idle for too long, closing");
                return out.flush().await;
            }
            Input::Shutdown => {
                let mut out = conn.out();
                out.bye("Server shutting down, please reconnect");
                return out.flush().await;
            }
        }
        let saved = || {
            session
                .selected()
                .map(|s| s.saved_sets())
                .unwrap_or_default()
        };
        let decoded = decode(&conn.framer, saved);
        let request = match decoded {
            Ok(request) => request,
            Err((tag, failure)) => {
                let mut out = conn.out();
                match tag {
                    Some(tag) => failure.write(&tag, &mut out)?,
                    None => out.status(None, StatusKind::Bad, None, "Syntax error: no valid tag"),
                }
                out.flush().await?;
                continue;
            }
        };
        if let CommandBody::Compress { .. } = request.body {
            conn.compress(&request.tag, session.is_authenticated())
                .await?;
            continue;
        }
        let flow = run(conn, &mut session, request).await?;
        match flow {
            Flow::Continue => {}
            Flow::Logout => return Ok(()),
            Flow::StartTls => {
                let Some(acceptor) = imap.tls.clone() else {
                    return Ok(());
                };
                let plain = std::mem::replace(&mut conn.stream, Box::new(tokio::io::duplex(1).0));
                let tls =
                    tokio::time::timeout(options.tls_handshake_timeout, acceptor.accept(plain))
                        .await;
                match tls {
                    Ok(Ok(tls)) => {
                        // Bytes sent before the handshake are dropped.
                        *conn = Connection::new(Box::new(tls), limits);
                        session.tls = true;
                    }
                    _ => return Ok(()),
                }
            }
            Flow::Sasl(tag, mut sasl) => {
                let ends = authenticate(
                    conn,
                    &mut session,
                    &tag,
                    &mut sasl,
                    (limits, timeout),
                    &mut shutdown,
                )
                .await?;
                if ends {
                    return Ok(());
                }
            }
            Flow::Idle(tag) => {
                if idle(conn, &mut session, &tag, &options, &mut shutdown).await? {
                    return Ok(());
                }
            }
        }
    }
}

/// Runs one command on the session while writing what it queues: the
/// handler hands full chunks over a channel of one and waits while the
/// previous one is written, so output stays bounded and the session never
/// holds the socket. A client that stops reading ends the command (the
/// writer's error comes first).
async fn run(conn: &mut Connection, session: &mut Session, request: Request) -> io::Result<Flow> {
    let Connection {
        stream, command, ..
    } = conn;
    let (chunks, mut queued) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let handled = async move {
        let mut out = Out::to_driver(chunks).counting(command);
        let flow = session.handle(request, &mut out).await;
        (flow, out.finish())
    };
    let sink: &mut dyn Sink = stream;
    let writer = async move {
        while let Some(chunk) = queued.recv().await {
            write_out(&mut *sink, &chunk).await?;
        }
        Ok::<_, io::Error>(sink)
    };
    let ((flow, rest), written) = tokio::join!(handled, writer);
    let sink = written?;
    let flow = flow?;
    write_out(sink, &rest).await?;
    Ok(flow)
}

/// The rest of an AUTHENTICATE exchange: client lines until done, each
/// under the limits and within the timeout of the state it started in.
/// Returns whether the connection ends (closed, timed out, shutdown).
async fn authenticate(
    conn: &mut Connection,
    session: &mut Session,
    tag: &Tag<'static>,
    sasl: &mut super::auth::Sasl,
    (limits, timeout): (Limits, std::time::Duration),
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> io::Result<bool> {
    loop {
        match conn
            .next_message(limits, Instant::now() + timeout, shutdown)
            .await?
        {
            Input::Message => {}
            Input::Closed => return Ok(true),
            Input::TimedOut => {
                let mut out = conn.out();
                out.bye("Idle for too long, closing");
                out.flush().await?;
                return Ok(true);
            }
            Input::Shutdown => {
                let mut out = conn.out();
                out.bye("Server shutting down, please reconnect");
                out.flush().await?;
                return Ok(true);
            }
        }
        let answer: Result<Option<Vec<u8>>, ()> = if conn.framer.over_limit() {
            Err(())
        } else {
            match AuthenticateDataCodec::default().decode(conn.framer.fragments().message_bytes()) {
                Ok((_, AuthenticateData::Continue(data))) => Ok(Some(data.declassify().to_vec())),
                Ok((_, AuthenticateData::Cancel)) => Ok(None),
                Err(AuthenticateDataDecodeError::Incomplete) | Err(_) => Err(()),
            }
        };
        let mut out = conn.out();
        let step = match answer {
            Ok(answer) => session.sasl_continue(sasl, answer.as_deref()).await,
            Err(()) => Err(Failure::bad(
                "Malformed AUTHENTICATE answer (base64 expected)",
            )),
        };
        match step {
            Ok(Some(challenge)) => {
                out.challenge(&challenge);
                out.flush().await?;
            }
            Ok(None) => {
                let caps = session.capabilities();
                out.status(
                    Some(tag),
                    StatusKind::Ok,
                    Some(super::response::code_owned(format!("CAPABILITY {caps}"))),
                    "AUTHENTICATE completed",
                );
                out.flush().await?;
                return Ok(false);
            }
            Err(failure) => {
                failure.write(tag, &mut out)?;
                out.flush().await?;
                return Ok(false);
            }
        }
    }
}

/// IDLE (RFC 2177, RFC 9051 §6.3.13): changes are pushed as they happen
/// until the client sends DONE. Returns whether the connection ends.
async fn idle(
    conn: &mut Connection,
    session: &mut Session,
    tag: &Tag<'static>,
    options: &super::Options,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> io::Result<bool> {
    {
        let mut out = conn.out();
        out.continuation("idling");
        session.report(&mut out, true).await?;
        out.flush().await?;
    }
    let mut keepalive = tokio::time::interval(options.idle_keepalive);
    keepalive.tick().await;
    let deadline = tokio::time::sleep(options.timeout_authenticated);
    tokio::pin!(deadline);
    // Only `DONE` is expected: the limits of a client before login do.
    conn.framer.set_limits(Limits::of(options, false));
    loop {
        // Input already read (DONE pipelined after IDLE) is seen first.
        while let Some(frame) = conn.framer.next() {
            if let Frame::LiteralWanted = frame {
                continue;
            }
            let done = matches!(frame, Frame::Message)
                && !conn.framer.over_limit()
                && IdleDoneCodec::default()
                    .decode(conn.framer.fragments().message_bytes())
                    .is_ok();
            let mut out = conn.out();
            if done {
                session.report(&mut out, true).await?;
                out.status(Some(tag), StatusKind::Ok, None, "IDLE terminated");
            } else {
                out.status(Some(tag), StatusKind::Bad, None, "Expected DONE");
            }
            out.flush().await?;
            return Ok(false);
        }
        let mut watch = session.selected().map(|s| s.watch.clone());
        let changed = async {
            match watch.as_mut() {
                Some(w) => {
                    if w.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        // A session with no mailbox selected has no change to wake it:
        // the account's own lock ends it (its user was deleted).
        let account = session.account();
        let locked = async {
            match &account {
                Some(a) => a.locked().await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            read = conn.read() => {
                if read? == 0 {
                    return Ok(true);
                }
            }
            () = locked => {
                let mut out = conn.out();
                out.bye(LOCKED_BYE);
                out.flush().await?;
                return Ok(true);
            }
            () = changed => {
                let mut out = conn.out();
                if session.account_locked() {
                    out.bye(LOCKED_BYE);
                    out.flush().await?;
                    return Ok(true);
                }
                session.report(&mut out, true).await?;
                out.flush().await?;
            }
            _ = keepalive.tick() => {
                let mut out = conn.out();
                out.ok(None, "Still here");
                out.flush().await?;
            }
            () = &mut deadline => {
                let mut out = conn.out();
                out.bye("IDLE for too long, closing");
                out.flush().await?;
                return Ok(true);
            }
            () = &mut *shutdown => {
                let mut out = conn.out();
                out.bye("Server shutting down, please reconnect");
                out.flush().await?;
                return Ok(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What a framer made of some input.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Framed {
        /// Complete messages: their bytes, or `None` when over a limit.
        messages: Vec<Option<Vec<u8>>>,
        /// Synchronizing literals asked for, and refused.
        wanted: usize,
        refused: usize,
        /// The most the framer held at once.
        most_buffered: usize,
    }

    /// Feeds `input` to a framer in reads of at most `piece` bytes.
    fn frame(input: &[u8], piece: usize, limits: Limits) -> Framed {
        let mut framer = Framer::new(limits);
        let mut framed = Framed::default();
        let mut rest = input;
        loop {
            framed.most_buffered = framed.most_buffered.max(framer.buffered());
            match framer.next() {
                Some(Frame::Message) => {
                    let fragments = framer.fragments();
                    let bytes = (!framer.over_limit()).then(|| fragments.message_bytes().to_vec());
                    // The parser sees every message: it must not panic.
                    let _ = decode(&framer, Saved::default);
                    framed.messages.push(bytes);
                }
                Some(Frame::LiteralWanted) => framed.wanted += 1,
                Some(Frame::LiteralRefused(..)) => framed.refused += 1,
                None => {
                    if rest.is_empty() {
                        return framed;
                    }
                    let space = framer.space();
                    assert!(!space.is_empty(), "more input wanted with input pending");
                    let n = rest.len().min(piece).min(space.len());
                    space[..n].copy_from_slice(&rest[..n]);
                    framer.filled(n);
                    rest = &rest[n..];
                }
            }
        }
    }

    const LARGE: Limits = Limits {
        command: 1 << 20,
        literal: 1 << 20,
        lines: 1 << 20,
    };

    const SMALL: Limits = Limits {
        command: 64,
        literal: 64,
        lines: 64,
    };

    /// The messages a bare fragmentizer finds in the whole input at once,
    /// every literal accepted: the framing [`Framer`] must keep.
    fn reference(input: &[u8]) -> Vec<Vec<u8>> {
        let mut f = Fragmentizer::new(LARGE.command);
        f.enqueue_bytes(input);
        let mut messages = Vec::new();
        while f.progress().is_some() {
            if f.is_message_complete() {
                messages.push(f.message_bytes().to_vec());
            }
        }
        messages
    }

    #[test]
    fn messages_are_split_as_the_client_meant_them() {
        let input = b"a LOGIN {5}\r\nalice {2+}\r\npw\r\nb NOOP\r\nc SEARCH (((\r\n";
        let framed = frame(input, 3, LARGE);
        assert_eq!(framed.wanted, 1);
        assert_eq!(
            framed.messages,
            vec![
                Some(b"a LOGIN {5}\r\nalice {2+}\r\npw\r\n".to_vec()),
                Some(b"b NOOP\r\n".to_vec()),
                Some(b"c SEARCH (((\r\n".to_vec()),
            ]
        );
    }

    #[test]
    fn over_the_limits_input_is_read_to_its_end_and_dropped() {
        let mut input = b"a NOOP ".to_vec();
        input.extend(std::iter::repeat_n(b'(', 100_000));
        input.extend_from_slice(b"\r\nb LOGIN {100}\r\nc LOGIN {100+}\r\n");
        input.extend(std::iter::repeat_n(b'x', 100));
        input.extend_from_slice(b"\r\nd NOOP\r\n");
        let framed = frame(&input, 4096, SMALL);
        assert_eq!(framed.refused, 1, "the synchronizing literal is refused");
        assert_eq!(framed.wanted, 0);
        assert_eq!(
            framed.messages,
            vec![None, None, Some(b"d NOOP\r\n".to_vec())],
            "the literal's data is never read as a command"
        );
        assert!(
            framed.most_buffered <= 4096 + 64,
            "{}",
            framed.most_buffered
        );
    }

    #[test]
    fn the_line_limit_leaves_literal_data_out() {
        let limits = Limits {
            command: 1000,
            literal: 1000,
            lines: 32,
        };
        let ok = b"a APPEND INBOX {200+}\r\n".iter().copied();
        let input: Vec<u8> = ok
            .chain(std::iter::repeat_n(b'x', 200))
            .chain(*b"\r\nb SEARCH 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16\r\n")
            .collect();
        let framed = frame(&input, 7, limits);
        assert!(framed.messages[0].is_some());
        assert_eq!(framed.messages[1], None, "a 50-byte line is over 32");
    }

    /// A line over the line limit is not buffered past it: a 5 MiB flood
    /// of parentheses takes a read buffer and the limit, not 5 MiB; and
    /// its literal announcement is still seen, however long (leading
    /// zeros) and wherever the reads cut it, so the literal's data is
    /// never read as a command, and a line that announces nothing is not
    /// taken for one that does.
    #[test]
    fn a_line_over_the_limit_is_not_buffered_but_still_ends_right() {
        let limits = Limits {
            command: 8 << 20,
            literal: 8 << 20,
            lines: 1024,
        };
        let zeros = "0".repeat(40_000);
        let cases: Vec<(String, &str, usize)> = vec![
            ("{5}\r\n".into(), "", 1),
            ("{5+}\r\n".into(), "b NOO", 0),
            (format!("{{{zeros}16+}}\r\n"), "X DELETE INBOX\r\n", 0),
            (format!("{{{zeros}5}}\r\n"), "", 1),
            ("{123456789012}\r\n".into(), "", 0),
            ("{5+}\n".into(), "b NOO", 0),
            ("{5+}\r\r\n".into(), "", 0),
            ("\r\n".into(), "", 0),
        ];
        for (end, literal, refused) in &cases {
            let mut input = b"a SEARCH ".to_vec();
            input.extend(std::iter::repeat_n(b'(', 5 << 20));
            input.extend_from_slice(end.as_bytes());
            input.extend_from_slice(literal.as_bytes());
            if !literal.is_empty() {
                input.extend_from_slice(b"\r\n");
            }
            input.extend_from_slice(b"c NOOP\r\n");
            for piece in [1000, 4093, READ_BUFFER] {
                let framed = frame(&input, piece, limits);
                assert_eq!(framed.refused, *refused, "{}", &end[..end.len().min(20)]);
                assert_eq!(
                    framed.messages,
                    [vec![None; 1 - refused], vec![Some(b"c NOOP\r\n".to_vec())]].concat(),
                    "{}",
                    &end[..end.len().min(20)]
                );
                let bound = 2 * READ_BUFFER + 1024;
                assert!(framed.most_buffered <= bound, "{}", framed.most_buffered);
            }
        }
        // A read cut right after a `{`: what follows decides, not what
        // the parser was in when the line went over the limit.
        let mut input = b"a NOOP ".to_vec();
        input.extend(std::iter::repeat_n(b'x', 1992));
        input.push(b'{');
        assert_eq!(input.len(), 2000);
        input.extend_from_slice(b"x");
        input.extend(std::iter::repeat_n(b'0', 100));
        input.extend_from_slice(b"5+}\r\nb NOOP\r\nc NOOP\r\n");
        let framed = frame(&input, 2000, limits);
        assert_eq!(
            framed.messages,
            vec![
                None,
                Some(b"b NOOP\r\n".to_vec()),
                Some(b"c NOOP\r\n".to_vec())
            ]
        );
        // A read cut right after a whole announcement that the line's
        // next bytes undo: the parser's state where feeding stopped must
        // not leak into the line's end (the reset byte).
        for announce in [&b"{5}"[..], b"{5+}"] {
            let mut input = b"a NOOP ".to_vec();
            input.extend(std::iter::repeat_n(b'x', 2000 - 7 - announce.len()));
            input.extend_from_slice(announce);
            input.extend_from_slice(b"y\r\nb NOOP\r\n");
            let framed = frame(&input, 2000, limits);
            assert_eq!(framed.refused, 0);
            assert_eq!(framed.messages, vec![None, Some(b"b NOOP\r\n".to_vec())]);
        }
    }

    /// Hostile IMAP input: floods of parentheses, literal announcements
    /// of every size and kind, quoted strings, CR/LF mixes, raw bytes.
    fn hostile_imap() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"a NOOP\r\n".to_vec()),
            Just(b"a LOGIN alice pw\r\n".to_vec()),
            Just(b"a SEARCH RETURN (".to_vec()),
            Just(b"a LIST (".to_vec()),
            Just(b"a APPEND INBOX ".to_vec()),
            (
                1usize..5000,
                prop::sample::select(vec![b'(', b')', b'{', b'"', b'\r', b'\n', b' ', b'x'])
            )
                .prop_map(|(n, b)| vec![b; n]),
            (0u32..200, any::<bool>(), any::<bool>()).prop_map(|(n, plus, crlf)| {
                format!(
                    "{{{n}{}}}{}",
                    if plus { "+" } else { "" },
                    if crlf { "\r\n" } else { "\n" }
                )
                .into_bytes()
            }),
            "[0-9]{1,12}".prop_map(|n| format!("a LOGIN {{{n}+}}\r\n").into_bytes()),
            (1usize..200, 0u32..50, any::<bool>()).prop_map(|(zeros, n, plus)| {
                let plus = if plus { "+" } else { "" };
                format!("{{{}{n}{plus}}}\r\n", "0".repeat(zeros)).into_bytes()
            }),
            "\"[^\"]{0,40}\"?".prop_map(String::into_bytes),
            Just(b"\r\n".to_vec()),
            prop::collection::vec(any::<u8>(), 0..64),
        ];
        prop::collection::vec(piece, 0..30).prop_map(|v| v.concat())
    }

    proptest! {
        /// [`LineEnd`] finds the same end, and the same announcement, as
        /// the fragmentizer's own parser, for any line.
        #[test]
        fn line_ends_are_found_as_the_fragmentizer_finds_them(
            input in prop_oneof![
                hostile_imap(),
                // Every transition, densely.
                prop::collection::vec(
                    prop::sample::select(b"{}+09\r\nx".to_vec()),
                    0..200
                ),
            ]
        ) {
            let mut f = Fragmentizer::new(u32::MAX);
            let mut line = LineEnd::Other;
            let mut rest = &input[..];
            // One line at a time, as the framer gives it.
            while let Some(lf) = rest.iter().position(|&b| b == b'\n') {
                let (this, next) = rest.split_at(lf + 1);
                rest = next;
                let mut ended = None;
                for &b in this {
                    let (l, end) = line.step(b);
                    line = l;
                    ended = ended.or(end);
                }
                f.enqueue_bytes(this);
                let Some(FragmentInfo::Line { announcement, .. }) = f.progress() else {
                    prop_assert!(false, "no line");
                    unreachable!()
                };
                let theirs = announcement.map(|a| (a.mode, a.length));
                prop_assert_eq!(ended, Some(theirs));
                if let Some((_, n)) = theirs {
                    // Skip the literal in both.
                    let n = (n as usize).min(rest.len());
                    f.enqueue_bytes(&rest[..n]);
                    rest = &rest[n..];
                    if f.progress().is_none() {
                        break;
                    }
                }
            }
        }

        /// Whatever the input and however it is split into reads: no
        /// panic, the framer never holds more than one read and one
        /// message under the limit, and with limits it never reaches it
        /// splits messages exactly as a fragmentizer given all at once.
        #[test]
        fn hostile_input_keeps_the_framer_bounded_and_in_step(
            input in hostile_imap(),
            piece in 1usize..(2 * READ_BUFFER),
        ) {
            let framed = frame(&input, piece, SMALL);
            let bound = READ_BUFFER + SMALL.command as usize;
            prop_assert!(framed.most_buffered <= bound, "{} > {bound}", framed.most_buffered);
            for m in framed.messages.iter().flatten() {
                prop_assert!(m.len() <= SMALL.command as usize);
            }
            let framed = frame(&input, piece, LARGE);
            if framed.refused == 0 && framed.messages.iter().all(Option::is_some) {
                let messages: Vec<Vec<u8>> = framed.messages.into_iter().flatten().collect();
                prop_assert_eq!(messages, reference(&input));
            }
            // Lines over a small line limit (their middles dropped): the
            // messages still end where they do for a fragmentizer given
            // everything.
            let short_lines = Limits { lines: 16, ..LARGE };
            let framed = frame(&input, piece, short_lines);
            if framed.refused == 0 {
                let expected = reference(&input);
                prop_assert_eq!(framed.messages.len(), expected.len());
                for (got, want) in framed.messages.iter().zip(&expected) {
                    if let Some(got) = got {
                        prop_assert_eq!(got, want);
                    }
                }
            }
        }
    }
}
