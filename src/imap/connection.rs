//! The IMAP driver: the one file that touches a client's socket. It splits
//! input into commands with imap-codec's fragmentizer (literals included,
//! oversized ones read to their end and discarded), decodes them, runs
//! them on the [`Session`], and carries the exchanges that span several
//! client messages: STARTTLS, AUTHENTICATE and IDLE.
//!
//! Invariants:
//! - One command at a time; nothing is read while a command runs, so a
//!   pipelining client is held by TCP flow control, not by our memory.
//! - A synchronizing literal over the limit is refused before the client
//!   sends it; a non-synchronizing one is read and dropped.
//! - After STARTTLS, bytes the client sent before the handshake are
//!   discarded (no command injection, RFC 9051 §11.1).
//! - No lock is held across a socket write: sessions read the state into
//!   owned values before writing.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bounded_static::IntoBoundedStatic;
use imap_codec::decode::{AuthenticateDataDecodeError, Decoder};
use imap_codec::fragmentizer::{FragmentInfo, Fragmentizer, LiteralAnnouncement};
use imap_codec::imap_types::auth::AuthenticateData;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::{LiteralMode, Tag};
use imap_codec::imap_types::response::StatusKind;
use imap_codec::{AuthenticateDataCodec, CommandCodec, IdleDoneCodec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::Imap;
use super::append;
use super::extend::{self, Ext, Rewritten, Saved};
use super::response::{Failure, Out, Sink, code};
use super::session::{Flow, Request, Session};

/// Bytes read from the socket at once.
const READ_BUFFER: usize = 16 * 1024;

/// What the listener knows of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// Whether the stream is already TLS (implicit TLS port).
    pub tls: bool,
}

/// A stream the driver can read and write, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Why reading the next client message stopped.
enum Input {
    /// A complete message is in the fragmentizer.
    Message,
    /// The client closed the connection.
    Closed,
    /// No input within the idle timeout.
    TimedOut,
    /// The server is shutting down.
    Shutdown,
}

struct Connection {
    stream: Box<dyn Stream>,
    fragments: Fragmentizer,
    buf: Vec<u8>,
    max_message: u32,
}

impl Connection {
    fn new(stream: Box<dyn Stream>, max_message: u32) -> Self {
        Connection {
            stream,
            fragments: Fragmentizer::new(max_message.saturating_add(64 * 1024)),
            buf: vec![0; READ_BUFFER],
            max_message,
        }
    }

    /// Reads until the fragmentizer holds one complete message, answering
    /// synchronizing literals on the way.
    async fn next_message(
        &mut self,
        timeout: Duration,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> io::Result<Input> {
        loop {
            match self.fragments.progress() {
                Some(FragmentInfo::Line {
                    announcement: Some(LiteralAnnouncement { mode, length }),
                    ..
                }) => {
                    if length > self.max_message {
                        if mode == LiteralMode::Sync {
                            // Refuse before the client sends it (RFC 7888 §4
                            // for the non-synchronizing case below).
                            let tag = self.fragments.decode_tag().map(|t| t.into_static());
                            self.fragments.skip_message();
                            let mut out = Out::new(&mut self.stream as &mut dyn Sink);
                            too_big(&mut out, tag.as_ref(), self.max_message);
                            out.flush().await?;
                            continue;
                        }
                        // A non-synchronizing literal arrives anyway: the
                        // fragmentizer drops what exceeds its limit.
                        self.fragments.poison_message();
                    } else if mode == LiteralMode::Sync {
                        let mut out = Out::new(&mut self.stream as &mut dyn Sink);
                        out.continuation("Ready for literal data");
                        out.flush().await?;
                    }
                }
                Some(_) => {
                    if self.fragments.is_message_complete() {
                        return Ok(Input::Message);
                    }
                }
                None => {
                    let read = tokio::select! {
                        r = tokio::time::timeout(timeout, self.stream.read(&mut self.buf)) => r,
                        () = &mut *shutdown => return Ok(Input::Shutdown),
                    };
                    match read {
                        Err(_) => return Ok(Input::TimedOut),
                        Ok(Ok(0)) => return Ok(Input::Closed),
                        Ok(Ok(n)) => self.fragments.enqueue_bytes(&self.buf[..n]),
                        Ok(Err(e)) => return Err(e),
                    }
                }
            }
        }
    }

    fn out(&mut self) -> Out<'_> {
        Out::new(&mut self.stream as &mut dyn Sink)
    }
}

fn too_big(out: &mut Out<'_>, tag: Option<&Tag<'_>>, limit: u32) {
    let text = format!("Literal too large: the limit is {limit} bytes");
    match tag {
        Some(tag) => out.status(Some(tag), StatusKind::No, Some(code("TOOBIG")), &text),
        None => out.status(None, StatusKind::Bad, None, &text),
    }
}

/// Decodes the complete message in `fragments` as a command.
fn decode(
    fragments: &Fragmentizer,
    saved: &Saved,
) -> Result<Request, (Option<Tag<'static>>, Failure)> {
    let bytes = fragments.message_bytes();
    let tag = || fragments.decode_tag().map(|t| t.into_static());
    if fragments.is_max_message_size_exceeded() || fragments.is_message_poisoned() {
        return Err((
            tag(),
            Failure::no(Some(code("TOOBIG")), "Command too large"),
        ));
    }
    let (rewritten, ext) = match extend::rewrite(bytes, saved) {
        Rewritten::Unchanged => (None, Ext::default()),
        Rewritten::Changed(bytes, ext) => (Some(bytes), ext),
        Rewritten::Bad(text) => return Err((tag(), Failure::bad(text))),
    };
    let input = rewritten.as_deref().unwrap_or(bytes);
    let mut ext = ext;
    for raw in std::mem::take(&mut ext.more_appends_raw) {
        let mut again = b"x APPEND INBOX ".to_vec();
        again.extend_from_slice(&raw);
        again.extend_from_slice(b"\r\n");
        match CommandCodec::default().decode(&again) {
            Ok((
                b"",
                Command {
                    body:
                        CommandBody::Append {
                            flags,
                            date,
                            message,
                            ..
                        },
                    ..
                },
            )) => {
                ext.more_appends
                    .push(append::Message::new(flags, date, message));
            }
            _ => return Err((tag(), Failure::bad("Malformed MULTIAPPEND message"))),
        }
    }
    match CommandCodec::default().decode(input) {
        Ok((b"", command)) => Ok(request(command.into_static(), ext)),
        Ok(_) => Err((tag(), Failure::bad("Unexpected data after the command"))),
        Err(_) => Err((tag(), Failure::bad(syntax_error(input)))),
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
    let mut conn = Connection::new(Box::new(stream), options.max_message);
    let mut session = Session::new(imap.clone(), peer);
    let mut shutdown = Box::pin(shutdown);
    {
        let caps = session.capabilities();
        let mut out = conn.out();
        out.untagged(&format!("OK [CAPABILITY {caps}] Facteur ready"));
        out.flush().await?;
    }
    loop {
        let timeout = if session.is_authenticated() {
            options.timeout_authenticated
        } else {
            options.timeout_unauthenticated
        };
        match conn.next_message(timeout, &mut shutdown).await? {
            Input::Message => {}
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
        let saved = session
            .selected()
            .map(|s| s.saved_sets())
            .unwrap_or_default();
        let decoded = decode(&conn.fragments, &saved);
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
        if request.ext.empty_saved
            && !matches!(
                request.body,
                CommandBody::Fetch { uid: true, .. }
                    | CommandBody::Store { uid: true, .. }
                    | CommandBody::Copy { uid: true, .. }
                    | CommandBody::Move { uid: true, .. }
                    | CommandBody::ExpungeUid { .. }
            )
        {
            // `$` named an empty result: the command acts on nothing.
            let mut out = conn.out();
            out.status(
                Some(&request.tag),
                StatusKind::Ok,
                None,
                "Nothing saved, nothing done",
            );
            out.flush().await?;
            continue;
        }
        let flow = {
            let mut out = conn.out();
            let flow = session.handle(request, &mut out).await?;
            out.flush().await?;
            flow
        };
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
                        conn = Connection::new(Box::new(tls), options.max_message);
                        session.tls = true;
                    }
                    _ => return Ok(()),
                }
            }
            Flow::Sasl(tag, mut sasl) => {
                authenticate(
                    &mut conn,
                    &mut session,
                    &tag,
                    &mut sasl,
                    timeout,
                    &mut shutdown,
                )
                .await?;
            }
            Flow::Idle(tag) => {
                if idle(&mut conn, &mut session, &tag, &options, &mut shutdown).await? {
                    return Ok(());
                }
            }
        }
    }
}

/// The rest of an AUTHENTICATE exchange: client lines until done.
async fn authenticate(
    conn: &mut Connection,
    session: &mut Session,
    tag: &Tag<'static>,
    sasl: &mut super::auth::Sasl,
    timeout: Duration,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> io::Result<()> {
    loop {
        match conn.next_message(timeout, shutdown).await? {
            Input::Message => {}
            _ => return Ok(()),
        }
        let answer: Result<Option<Vec<u8>>, ()> =
            match AuthenticateDataCodec::default().decode(conn.fragments.message_bytes()) {
                Ok((_, AuthenticateData::Continue(data))) => Ok(Some(data.declassify().to_vec())),
                Ok((_, AuthenticateData::Cancel)) => Ok(None),
                Err(AuthenticateDataDecodeError::Incomplete) | Err(_) => Err(()),
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
                return out.flush().await;
            }
            Err(failure) => {
                failure.write(tag, &mut out)?;
                return out.flush().await;
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
    loop {
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
        tokio::select! {
            read = conn.stream.read(&mut conn.buf) => {
                let n = read?;
                if n == 0 {
                    return Ok(true);
                }
                conn.fragments.enqueue_bytes(&conn.buf[..n]);
                while let Some(_fragment) = conn.fragments.progress() {
                    if !conn.fragments.is_message_complete() {
                        continue;
                    }
                    let done = IdleDoneCodec::default().decode(conn.fragments.message_bytes()).is_ok();
                    let mut out = conn.out();
                    match done {
                        true => {
                            session.report(&mut out, true).await?;
                            out.status(Some(tag), StatusKind::Ok, None, "IDLE terminated");
                        }
                        false => {
                            out.status(Some(tag), StatusKind::Bad, None, "Expected DONE");
                        }
                    }
                    out.flush().await?;
                    return Ok(false);
                }
            }
            () = changed => {
                let mut out = conn.out();
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
