//! An unlocked user: keys and open mailboxes shared by all of that user's
//! sessions on one instance (the sessions themselves come with the mailbox
//! engine). For now it owns the user's keyring object: creating it at
//! provisioning, loading it at unlock, re-wrapping it, and deleting a user's
//! data.

pub mod keyring;

pub use keyring::{AccountError, KeyringStore};
