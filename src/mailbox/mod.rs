//! Pure mailbox state (doc/consistency.md, "The op set"): the operations a
//! mailbox's log is made of ([`MailboxOp`]), UID claims ([`claims`]), and the
//! state computed from an op set ([`MailboxState`]), with the lookups IMAP
//! needs. No I/O: the log layer delivers ops, this module only computes. How
//! the rules meet the invariants I1–I5 is told in `doc/consistency.md`.
//!
//! Not here yet: the real message summary (ENVELOPE, BODYSTRUCTURE, …),
//! the mailbox list and the incoming queue.

pub mod body;
pub mod claims;
pub mod list;
pub mod incoming;
pub mod op;
pub mod state;
pub mod summary;
pub mod text;

pub use op::{MailboxOp, MessageId, MessageRef, NewMessage};
pub use state::{MailboxState, MessageView, StoredMessage};

/// What can be wrong with mailbox input.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    #[error("invalid message id {0:?}")]
    BadMessageId(String),
}

#[cfg(test)]
mod tests;
