//! Facteur: an IMAP + LMTP mail server that keeps every user's mailboxes
//! encrypted in an S3 object store, so that any instance on any site can
//! serve any user (see `doc/architecture.md` and the rest of `doc/`).
//!
//! Modules are listed in dependency order: a module never imports one
//! listed after it.
#![forbid(unsafe_code)]

pub mod metrics;
pub mod size;
pub mod tomlfile;
pub mod zstd_frames;
pub mod store;
pub mod crypto;
pub mod log;
pub mod mailbox;
pub mod directory;
pub mod account;
pub mod imap;
pub mod lmtp;
pub mod config;
pub mod server;
pub mod migrate;
