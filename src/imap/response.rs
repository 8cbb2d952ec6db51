//! Responses on the wire: the session's output queue ([`Out`]) and the one
//! place where outcomes become tagged responses ([`Failure`]).
//!
//! A command's handler queues its responses into an [`Out`] that holds no
//! socket: once the queue passes [`FLUSH_AT`], its bytes are handed to the
//! driver ([`super::connection`]) through a channel of one chunk and the
//! handler waits until the driver takes them, so the output of one
//! command (a FETCH of many large messages) stays bounded: at most the
//! chunk being written, the one waiting and the one being filled. Most
//! responses are serialised by `imap-codec`; the few extension responses
//! it does not know (ESEARCH, LIST-EXTENDED items, STATUS APPENDLIMIT) are
//! written here from their ABNF, with [`astring`] quoting.

use std::borrow::Cow;
use std::io;

use imap_codec::ResponseCodec;
use imap_codec::encode::{Encoder, Fragment};
use imap_codec::imap_types::core::{Tag, Text};
use imap_codec::imap_types::response::{
    Bye, Code, CodeOther, CommandContinuationRequest, Data, Response, Status, StatusBody,
    StatusKind, Tagged,
};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::account::AccountError;
use crate::metrics::{ImapCommand, ImapOutcome};

/// Output is handed to the socket once this much is queued, so a FETCH
/// of many messages holds at most a few times this much plus one message.
const FLUSH_AT: usize = 256 * 1024;

/// Longest a flush may wait for the client to read: a client that stops
/// reading (its receive window full) would otherwise hold its connection,
/// and its slot among `max_connections`, for as long as TCP lets it. At
/// most [`FLUSH_AT`] and a little more are written per flush, so this
/// asks about 2 KB/s of a client.
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The byte stream a session writes to.
pub trait Sink: AsyncWrite + Unpin + Send {}
impl<T: AsyncWrite + Unpin + Send> Sink for T {}

/// Where a full queue goes.
enum Drain<'a> {
    /// The socket itself: only the driver makes such an [`Out`], for what
    /// it writes between commands (greeting, continuations, BYE).
    Socket(&'a mut (dyn Sink + 'a)),
    /// The driver, which writes each chunk while the command goes on.
    Driver(mpsc::Sender<Vec<u8>>),
}

/// Queued responses of the running command.
pub struct Out<'a> {
    drain: Drain<'a>,
    buf: Vec<u8>,
    /// The command being answered, counted (`/metrics`) when its tagged
    /// status is queued; see [`Out::counting`].
    command: Option<&'a mut Option<ImapCommand>>,
}

impl<'a> Out<'a> {
    /// A queue the driver writes to `sink` itself ([`Out::flush`]).
    pub fn new(sink: &'a mut (dyn Sink + 'a)) -> Self {
        Out {
            drain: Drain::Socket(sink),
            buf: Vec::with_capacity(4096),
            command: None,
        }
    }

    /// A queue for a command's handler: full chunks go to `driver`, which
    /// writes them to the socket; what is left at the end comes back from
    /// [`Out::finish`].
    pub fn to_driver(driver: mpsc::Sender<Vec<u8>>) -> Self {
        Out {
            drain: Drain::Driver(driver),
            buf: Vec::with_capacity(4096),
            command: None,
        }
    }

    /// What is still queued; the driver writes it after the command.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    /// This output, counting `command` once a tagged status is queued (and
    /// taking it, so a command is counted once).
    pub fn counting(mut self, command: &'a mut Option<ImapCommand>) -> Self {
        self.command = Some(command);
        self
    }

    /// Queues an untagged data response.
    pub fn data(&mut self, data: Data<'_>) {
        self.response(&Response::Data(data));
    }

    /// Queues a response: its fragments (lines, literals) appended one by
    /// one, not gathered first (a FETCH of bodies is mostly literals).
    pub fn response(&mut self, response: &Response<'_>) {
        let fragments: Vec<Fragment> = ResponseCodec::default().encode(response).collect();
        // Room for it all at once: a large literal then its closing line
        // would otherwise grow the queue twice.
        self.buf
            .reserve(fragments.iter().map(|f| fragment_bytes(f).len()).sum());
        for fragment in &fragments {
            self.buf.extend_from_slice(fragment_bytes(fragment));
        }
    }

    /// Queues `* <line>\r\n`; `line` must be valid IMAP written by us.
    pub fn untagged(&mut self, line: &str) {
        self.buf.extend_from_slice(b"* ");
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    /// Queues raw bytes (a response built with [`astring`] and friends).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Queues `* OK [code] text`.
    pub fn ok(&mut self, code: Option<Code<'_>>, text: &str) {
        self.status(None, StatusKind::Ok, code, text);
    }

    /// Queues `* NO [code] text` (a warning, the command goes on).
    pub fn no(&mut self, code: Option<Code<'_>>, text: &str) {
        self.status(None, StatusKind::No, code, text);
    }

    pub fn bye(&mut self, text: &str) {
        let bye = Bye {
            code: None,
            text: text_of(text),
        };
        self.response(&Response::Status(Status::Bye(bye)));
    }

    /// Queues a tagged or untagged status response.
    pub fn status(
        &mut self,
        tag: Option<&Tag<'_>>,
        kind: StatusKind,
        code: Option<Code<'_>>,
        text: &str,
    ) {
        if tag.is_some()
            && let Some(command) = self.command.as_mut().and_then(|c| c.take())
        {
            command.answered(match kind {
                StatusKind::Ok => ImapOutcome::Ok,
                StatusKind::No => ImapOutcome::No,
                StatusKind::Bad => ImapOutcome::Bad,
            });
        }
        let body = StatusBody {
            kind,
            code,
            text: text_of(text),
        };
        let status = match tag {
            Some(tag) => Status::Tagged(Tagged {
                tag: tag.clone(),
                body,
            }),
            None => Status::Untagged(body),
        };
        self.response(&Response::Status(status));
    }

    /// Queues a continuation request `+ text`.
    pub fn continuation(&mut self, text: &str) {
        match CommandContinuationRequest::basic(None, text_of(text)) {
            Ok(req) => self.response(&Response::CommandContinuationRequest(req)),
            Err(_) => self.raw(b"+ \r\n"),
        }
    }

    /// Queues `+ <base64>` for a SASL challenge.
    pub fn challenge(&mut self, data: &[u8]) {
        use base64::Engine;
        self.raw(b"+ ");
        self.raw(
            base64::engine::general_purpose::STANDARD
                .encode(data)
                .as_bytes(),
        );
        self.raw(b"\r\n");
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Writes what is queued (to the socket, or hands it to the driver).
    pub async fn flush(&mut self) -> io::Result<()> {
        match &mut self.drain {
            Drain::Socket(sink) => {
                let written = write_out(&mut **sink, &self.buf).await;
                self.buf.clear();
                written
            }
            Drain::Driver(driver) => {
                if self.buf.is_empty() {
                    return Ok(());
                }
                // The next chunk is as large (a queue grown from 4 KiB to
                // FLUSH_AT copies itself about once more on the way), but
                // not as large as one huge message made it.
                let size = self.buf.capacity().min(2 * FLUSH_AT);
                let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(size));
                driver.send(chunk).await.map_err(|_| {
                    io::Error::new(io::ErrorKind::BrokenPipe, "the connection's writer stopped")
                })
            }
        }
    }

    /// Hands what is queued on if it is a lot: called between messages of
    /// long responses, it waits while the driver is still writing the
    /// previous chunk.
    pub async fn flush_if_full(&mut self) -> io::Result<()> {
        if self.buf.len() >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }
}

/// The bytes of an encoded fragment, line or literal alike (a server's
/// literals need no continuation).
fn fragment_bytes(fragment: &Fragment) -> &[u8] {
    match fragment {
        Fragment::Line { data } | Fragment::Literal { data, .. } => data,
    }
}

/// Writes `bytes` to `sink` and flushes it, within [`WRITE_TIMEOUT`].
pub async fn write_out(sink: &mut (dyn Sink + '_), bytes: &[u8]) -> io::Result<()> {
    let write = async {
        if !bytes.is_empty() {
            sink.write_all(bytes).await?;
        }
        sink.flush().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(done) => done,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client stopped reading its answers",
        )),
    }
}

/// Response text: free text without CR/LF; never empty (RFC 9051 `text`).
fn text_of(text: &str) -> Text<'static> {
    let clean: String = text
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    let clean = if clean.trim().is_empty() {
        "done".to_owned()
    } else {
        clean
    };
    Text::try_from(clean).unwrap_or_else(|_| Text::unvalidated("done"))
}

/// A response code the codec has no variant for (RFC 5530 codes and the
/// like): an atom of our own, never client input.
pub fn code(atom: &'static str) -> Code<'static> {
    Code::Other(CodeOther::unvalidated(atom.as_bytes()))
}

/// An `astring`/`string` for a response we write ourselves: an atom-safe
/// quoted string when possible, a literal otherwise (RFC 9051 §4.3).
pub fn astring(value: &str) -> Cow<'_, str> {
    let quotable = value.len() <= 1024
        && value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) || (b >= 0x80));
    if quotable {
        let mut s = String::with_capacity(value.len() + 2);
        s.push('"');
        for c in value.chars() {
            if c == '"' || c == '\\' {
                s.push('\\');
            }
            s.push(c);
        }
        s.push('"');
        Cow::Owned(s)
    } else {
        Cow::Owned(format!("{{{}}}\r\n{value}", value.len()))
    }
}

/// Why a command did not complete with OK; mapped to the wire in one place
/// ([`Failure::write`]).
#[derive(Debug)]
pub enum Failure {
    /// `NO [code] text`: the command was understood and refused.
    No(Option<Code<'static>>, String),
    /// `BAD text`: a syntax or protocol-state error.
    Bad(String),
    /// The store failed: `NO [UNAVAILABLE]`, the session goes on; the
    /// cause goes to the log only.
    Unavailable(String),
    /// The user directory (LDAP) could not be reached at login: as
    /// `Unavailable`, with a text that names the directory, so that a
    /// user or an admin looks at the right server.
    DirectoryUnavailable(String),
    /// A bug or damaged data: `NO [SERVERBUG]`, details logged.
    Internal(String),
    /// The socket failed: the connection ends.
    Io(io::Error),
}

impl Failure {
    pub fn no(code: Option<Code<'static>>, text: impl Into<String>) -> Failure {
        Failure::No(code, text.into())
    }

    pub fn bad(text: impl Into<String>) -> Failure {
        Failure::Bad(text.into())
    }

    /// Writes the tagged response for this failure.
    pub fn write(self, tag: &Tag<'_>, out: &mut Out<'_>) -> Result<(), io::Error> {
        match self {
            Failure::No(code, text) => out.status(Some(tag), StatusKind::No, code, &text),
            Failure::Bad(text) => out.status(Some(tag), StatusKind::Bad, None, &text),
            Failure::Unavailable(cause) => {
                tracing::warn!(%cause, "IMAP command failed on a transient fault");
                out.status(
                    Some(tag),
                    StatusKind::No,
                    Some(code("UNAVAILABLE")),
                    "Temporary failure of the mail store, please try again",
                )
            }
            Failure::DirectoryUnavailable(cause) => {
                tracing::warn!(%cause, "IMAP command failed: the user directory is unreachable");
                out.status(
                    Some(tag),
                    StatusKind::No,
                    Some(code("UNAVAILABLE")),
                    "Temporary failure of the user directory, please try again",
                )
            }
            Failure::Internal(cause) => {
                tracing::error!(%cause, "IMAP command failed");
                out.status(
                    Some(tag),
                    StatusKind::No,
                    Some(code("SERVERBUG")),
                    "Internal error, the administrator can find details in the log",
                )
            }
            Failure::Io(e) => return Err(e),
        }
        Ok(())
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io(e)
    }
}

impl From<AccountError> for Failure {
    fn from(e: AccountError) -> Failure {
        use crate::mailbox::list::ListError;
        if e.is_transient() {
            return Failure::Unavailable(e.to_string());
        }
        match e {
            AccountError::NoSuchMailbox(name) => {
                Failure::no(Some(code("NONEXISTENT")), format!("No mailbox {name:?}"))
            }
            AccountError::NoSuchMessage(_) => {
                Failure::no(Some(code("EXPUNGEISSUED")), "Some messages were expunged")
            }
            AccountError::List(ListError::AlreadyExists(name)) => Failure::no(
                Some(code("ALREADYEXISTS")),
                format!("Mailbox {name:?} already exists"),
            ),
            AccountError::List(ListError::NoSuchMailbox(name)) => {
                Failure::no(Some(code("NONEXISTENT")), format!("No mailbox {name:?}"))
            }
            AccountError::List(e) => Failure::no(Some(code("CANNOT")), e.to_string()),
            other => Failure::Internal(other.to_string()),
        }
    }
}

/// The outcome of a command: the tagged OK's code and text, or why not.
pub type Outcome = Result<Done, Failure>;

/// A tagged OK.
#[derive(Debug)]
pub struct Done {
    pub code: Option<Code<'static>>,
    pub text: Cow<'static, str>,
}

impl Done {
    pub fn ok(text: &'static str) -> Outcome {
        Ok(Done {
            code: None,
            text: Cow::Borrowed(text),
        })
    }

    pub fn with_code(code: Code<'static>, text: impl Into<Cow<'static, str>>) -> Outcome {
        Ok(Done {
            code: Some(code),
            text: text.into(),
        })
    }
}

/// A response code with arguments we computed (`APPENDUID 3 7`).
pub fn code_owned(text: String) -> Code<'static> {
    Code::Other(CodeOther::unvalidated(text.into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that never reads its answers does not hold its connection
    /// past [`WRITE_TIMEOUT`] (the write used to wait forever).
    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_times_out() {
        let (mut server, _client) = tokio::io::duplex(1024);
        let mut out = Out::new(&mut server);
        for i in 0..1000 {
            out.untagged(&format!("{i} EXISTS"));
        }
        let started = tokio::time::Instant::now();
        let err = out.flush().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= WRITE_TIMEOUT);
    }
}
