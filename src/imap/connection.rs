//! The IMAP driver: the one file that touches a client's socket.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Imap;

/// What the listener knows of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// Whether the stream is already TLS (implicit TLS port).
    pub tls: bool,
}

/// Serves one IMAP connection until LOGOUT, disconnect, timeout or
/// `shutdown` resolving (then `* BYE` after the running command).
pub async fn serve<S>(
    stream: S,
    peer: Peer,
    imap: Arc<Imap>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _ = (stream, peer, imap, shutdown);
    Ok(())
}
