//! Who the users are (doc/architecture.md, "Users"; doc/ldap.md): a
//! [`Directory`] answers "may this login
//! in with this password?" and "which user owns this address?". Two
//! providers: a TOML users file ([`users_file`], for small setups and the
//! embedded default) and LDAP ([`ldap`]). Keys never live here: they live in the
//! user's keyring in the object store, so a stock LDAP schema works.

pub mod ldap;
pub mod users_file;

use async_trait::async_trait;

use crate::crypto::Password;

pub use ldap::{LdapDirectory, LdapSettings};
pub use users_file::{StaticDirectory, UserEntry, UsersFile};

/// What the directory knows of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// The normalised login: the name the user id is derived from.
    pub login: String,
    /// Every address that delivers to this user, normalised; the first is
    /// the primary one. Aliases are included.
    pub addresses: Vec<String>,
    /// Storage quota in bytes, if any.
    pub quota_bytes: Option<u64>,
    /// Most messages the user may keep (all mailboxes together), if any
    /// (RFC 9208 §5.2, the MESSAGE resource).
    pub quota_messages: Option<u64>,
}

impl UserRecord {
    /// The user's quota; `None` when they have neither limit.
    pub fn quota(&self) -> Option<QuotaLimits> {
        let limits = QuotaLimits {
            bytes: self.quota_bytes,
            messages: self.quota_messages,
        };
        (limits.bytes.is_some() || limits.messages.is_some()).then_some(limits)
    }
}

/// A user's quota (RFC 9208 §5): a storage limit in bytes (STORAGE), a
/// message-count limit (MESSAGE), or both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    pub bytes: Option<u64>,
    pub messages: Option<u64>,
}

impl QuotaLimits {
    /// Whether adding `add_messages` messages of `add_bytes` bytes to a
    /// usage of `bytes` and `messages` stays within every limit (RFC 9208
    /// §5.1: usage may reach the limit, not pass it).
    pub fn allow(&self, bytes: u64, messages: u64, add_bytes: u64, add_messages: u64) -> bool {
        self.bytes
            .is_none_or(|limit| bytes.saturating_add(add_bytes) <= limit)
            && self
                .messages
                .is_none_or(|limit| messages.saturating_add(add_messages) <= limit)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The directory could not be reached or read right now; callers answer
    /// with a temporary failure (IMAP `NO [UNAVAILABLE]`, LMTP 4xx).
    #[error("directory unavailable: {0}")]
    Unavailable(String),
    /// The directory's content is invalid (a broken users file); also
    /// temporary from a client's point of view, since an admin will fix it.
    #[error("invalid directory: {0}")]
    Invalid(String),
    /// What the caller asked for is malformed (an empty login, a bad
    /// address).
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Conflict(String),
    #[error("no such user: {0}")]
    NoSuchUser(String),
}

/// A source of users. Implementations must be cheap to call often: the LMTP
/// server asks for every recipient.
#[async_trait]
pub trait Directory: Send + Sync + std::fmt::Debug + 'static {
    /// Checks a login and password. `Ok(None)` means the credentials are
    /// wrong or the user does not exist (callers must not tell which).
    async fn authenticate(
        &self,
        login: &str,
        password: &Password,
    ) -> Result<Option<UserRecord>, DirectoryError>;

    /// Whether opening the user's keyring with a password proves the
    /// password as well as [`Directory::authenticate`] would. True when the
    /// directory's password and the keyring's password slot are set
    /// together (the users file: `facteur user add` and `passwd` write
    /// both), so a login runs one Argon2, the keyring's, instead of two;
    /// [`Directory::authenticate`] is then needed only for a user who has
    /// no keyring yet. False when the directory is the authority on
    /// passwords and changes them on its own (LDAP).
    fn keyring_proves_password(&self) -> bool {
        false
    }

    /// The user with this login, if any.
    async fn find_login(&self, login: &str) -> Result<Option<UserRecord>, DirectoryError>;

    /// The user who receives mail for this address (an address or an alias),
    /// if any. The address is matched case-insensitively.
    async fn find_address(&self, address: &str) -> Result<Option<UserRecord>, DirectoryError>;
}

/// Longest login we accept; longer input is a client mistake or an attack.
pub const MAX_LOGIN_LEN: usize = 256;

/// Normalises a login: surrounding white space removed, lower case. Logins
/// with inner white space, control characters or over [`MAX_LOGIN_LEN`] are
/// refused, so that two spellings can never name two users.
pub fn normalise_login(login: &str) -> Result<String, DirectoryError> {
    let login = login.trim();
    if login.is_empty() {
        return Err(DirectoryError::BadInput("empty login".into()));
    }
    if login.len() > MAX_LOGIN_LEN {
        return Err(DirectoryError::BadInput("login too long".into()));
    }
    if login.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(DirectoryError::BadInput(format!(
            "login {login:?} contains white space or control characters"
        )));
    }
    Ok(login.to_lowercase())
}

/// Normalises an address to `local@domain`, lower case (like Dovecot's
/// default, local parts are compared case-insensitively). Refuses anything
/// without exactly one `@` and a non-empty local part and domain.
pub fn normalise_address(address: &str) -> Result<String, DirectoryError> {
    let address = address.trim();
    let bad = || DirectoryError::BadInput(format!("invalid address {address:?}"));
    let (local, domain) = address.rsplit_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || domain.is_empty()
        || address.len() > 320
        || (local.contains('@') && !(local.starts_with('"') && local.ends_with('"')))
        || address.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad());
    }
    Ok(format!(
        "{}@{}",
        local.to_lowercase(),
        domain.to_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_fold_case_and_trim() {
        assert_eq!(normalise_login("  Alice ").unwrap(), "alice");
        assert_eq!(
            normalise_login("ALICE@Example.ORG").unwrap(),
            "alice@example.org"
        );
    }

    #[test]
    fn bad_logins_are_refused() {
        for bad in ["", "   ", "a b", "a\tb", "a\0b"] {
            assert!(normalise_login(bad).is_err(), "{bad:?}");
        }
        assert!(normalise_login(&"x".repeat(MAX_LOGIN_LEN + 1)).is_err());
    }

    #[test]
    fn addresses_normalise() {
        assert_eq!(
            normalise_address(" Bob.Smith@Example.ORG ").unwrap(),
            "bob.smith@example.org"
        );
        for bad in ["bob", "@example.org", "bob@", "a b@c", "bob@@x"] {
            assert!(normalise_address(bad).is_err(), "{bad:?}");
        }
    }
}
