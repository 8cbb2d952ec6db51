//! The LMTP driver: the one file that touches a client's socket. It feeds
//! the [`Session`] what it reads, writes what the session produced, and
//! runs the session's requests against the [`Backend`].
//!
//! Invariants:
//!
//! - One command at a time: nothing is read while a lookup or a delivery
//!   runs, so a pipelining client is held by TCP flow control, not by our
//!   memory.
//! - Output is written before every read (RFC 2920 §3.2: replies may be
//!   batched, but never held while waiting for input).
//! - A client gone mid-DATA stores nothing: a message is delivered only
//!   once its final dot was read.
//! - On shutdown, a session between transactions gets 421 at once; one in
//!   a transaction finishes it first (the listener bounds how long).
//! - No lock is held here at all.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::delivery::{Backend, User};
use super::reply;
use super::session::{Options, Session, Step};

/// Bytes read from the socket at once.
const READ_BUFFER: usize = 16 * 1024;

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Serves one LMTP connection until QUIT, disconnect, idle timeout or
/// shutdown (`shutdown` resolving). `peer` is the client's address when
/// the transport has one (for `Received:`).
pub async fn run<S>(
    stream: S,
    peer: Option<std::net::IpAddr>,
    backend: &Backend,
    options: Options,
    idle_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut session: Session<User> = Session::new(options).with_peer(peer);
    let mut buf = vec![0u8; READ_BUFFER];
    tokio::pin!(shutdown);
    let mut stopping = false;
    loop {
        match session.step() {
            Step::NeedInput => {
                write_out(&mut writer, &mut session).await?;
                if stopping && !session.in_transaction() {
                    session.close_with(reply::shutting_down());
                    continue;
                }
                let read = tokio::select! {
                    _ = &mut shutdown, if !stopping => {
                        stopping = true;
                        continue;
                    }
                    r = tokio::time::timeout(idle_timeout, reader.read(&mut buf)) => r,
                };
                match read {
                    Err(_elapsed) => session.close_with(reply::idle_timeout()),
                    Ok(Ok(0)) => {
                        if session.in_data() {
                            tracing::info!("lmtp: client left during DATA; nothing stored");
                        }
                        return Ok(());
                    }
                    Ok(Ok(n)) => session.feed(&buf[..n]),
                    Ok(Err(e)) => return Err(e),
                }
            }
            Step::Resolve(pending) => {
                let resolution = backend
                    .resolve(pending.address(), pending.declared_size())
                    .await;
                session.resolved(pending, resolution);
            }
            Step::Deliver(delivery) => {
                let outcomes = backend.deliver(&delivery, now_secs()).await;
                session.delivered(delivery, &outcomes);
            }
            Step::Close => {
                write_out(&mut writer, &mut session).await?;
                return writer.shutdown().await;
            }
        }
    }
}

async fn write_out<W: AsyncWrite + Unpin>(
    writer: &mut W,
    session: &mut Session<User>,
) -> std::io::Result<()> {
    let out = session.take_output();
    if !out.is_empty() {
        writer.write_all(&out).await?;
        writer.flush().await?;
    }
    Ok(())
}
