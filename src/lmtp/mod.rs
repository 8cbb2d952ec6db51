//! LMTP (RFC 2033): how Postfix hands mail to Facteur, and delivery into
//! each user's incoming queue (doc/lmtp.md; doc/storage.md, "Encryption",
//! delivery).
//!
//! - [`session`]: the protocol core, no I/O (commands parsed by
//!   `smtp-proto`, the only user of that crate).
//! - [`data`]: the DATA body decoder (dot-unstuffing, CRLF, size bound).
//! - [`reply`]: every reply code, and the mapping of outcomes to them.
//! - [`delivery`]: recipient lookup and sealing into the store.
//! - [`trace`]: the trace header fields each stored copy gets.
//! - [`quota`]: how full a mailbox is, without the user's keys.
//! - [`connection`]: the driver owning one client socket.
//!
//! The listeners (TCP, Unix socket, connection bounds, shutdown) are in
//! `server::lmtp`.

pub mod connection;
pub mod data;
pub mod delivery;
pub mod quota;
pub mod reply;
pub mod session;
pub mod trace;

pub use delivery::{Backend, User};
pub use session::{Options, Session, Step};
