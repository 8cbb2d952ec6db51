//! The commands, one file per family (RFC 9051 §6 and the extensions in
//! [`super::capability`]). A handler takes the per-state context it needs
//! as arguments (the user, the selected mailbox), so it cannot run in the
//! wrong state, and queues its responses into [`super::response::Out`],
//! a bounded queue that only the driver ([`super::connection`]) writes
//! to the socket. Handlers import the shared state ([`super::state`]) and
//! the protocol's libraries (parsing, MIME, search, sort), never the
//! session or the driver.

pub mod append;
pub mod copy_move;
pub mod enable;
pub mod expunge;
pub mod fetch;
pub mod mailboxes;
pub mod quota;
pub mod search;
pub mod select;
pub mod sort;
pub mod store;
pub mod thread;
