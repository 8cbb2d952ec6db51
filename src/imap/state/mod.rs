//! The session state every command shares, and nothing else: who is
//! logged in ([`Authed`]), what the client enabled ([`Enabled`]), the
//! selected mailbox ([`Selected`]), the saved search result ([`Saved`]),
//! and the small conversions between the client's words and ours that
//! several commands need (mailbox names, flags, sequence sets).
//!
//! Invariant: this module imports no command handler (`super::cmd`), no
//! session and no driver; handlers import it, so the imports of
//! `src/imap` point one way (tests/imap_layout.rs checks it).

pub mod selected;

use std::net::SocketAddr;
use std::sync::Arc;

use imap_codec::imap_types::flag::Flag;
use imap_codec::imap_types::mailbox::Mailbox;

pub use self::selected::Selected;
use super::mutf7;
use super::response::{Failure, Out, code};
use crate::account::recent::RecentFloors;
use crate::account::{Account, Accounts};

/// What the listener knows of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// Whether the stream is already TLS (implicit TLS port).
    pub tls: bool,
}

/// A session's hold on its unlocked account. The registry counts a
/// session when it hands the account out (`Accounts::unlock`, `reuse`,
/// `unlock_with_password`); the hold, made at once from what it handed
/// out, ends that count exactly once when dropped, however the session
/// ends: LOGOUT, a dropped connection, or a login that fails after the
/// unlock (the recovery key not stored). A count left behind would keep
/// the account polling the store for a session that is gone.
pub struct Hold {
    account: Arc<Account>,
    accounts: Arc<Accounts>,
}

impl Hold {
    /// Takes over the session count `accounts` began when it returned
    /// `account`.
    pub fn new(accounts: Arc<Accounts>, account: Arc<Account>) -> Hold {
        Hold { account, accounts }
    }
}

impl std::ops::Deref for Hold {
    type Target = Arc<Account>;
    fn deref(&self) -> &Arc<Account> {
        &self.account
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.accounts.release(self.account.clone());
    }
}

/// An authenticated user.
pub struct Authed {
    pub account: Hold,
    pub login: String,
    /// What the client turned on, for the rest of the session.
    pub enabled: Enabled,
    /// APPENDLIMIT (RFC 7889): the largest message APPEND takes.
    pub append_limit: u32,
    /// Damage to the account's data in the store was told to this
    /// session (once is enough).
    pub damage_told: bool,
    /// Which messages this instance has shown as `\Recent` (RFC 3501
    /// §2.3.2), shared by its sessions.
    pub recent: Arc<RecentFloors>,
}

/// The extensions a client enabled (RFC 5161 ENABLE, or a command that
/// enables one as a side effect): one place for the whole session, the
/// selected mailbox included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enabled {
    /// UTF8=ACCEPT (RFC 6855) or IMAP4rev2 enabled: mailbox names are sent
    /// and taken as UTF-8 rather than modified UTF-7.
    pub utf8: bool,
    /// IMAP4rev2 enabled (RFC 9051 §6.3.1): SEARCH answers ESEARCH, no
    /// \Recent.
    pub rev2: bool,
    /// CONDSTORE enabled (RFC 7162 §3.1): MODSEQ in FETCH responses,
    /// HIGHESTMODSEQ at SELECT.
    pub condstore: bool,
    /// QRESYNC enabled (RFC 7162 §3.2): VANISHED instead of EXPUNGE,
    /// SELECT (QRESYNC ...), FETCH (... VANISHED). Implies `condstore`.
    pub qresync: bool,
}

impl Authed {
    /// A CONDSTORE-enabling command (RFC 7162 §3.1): MODSEQ from now on
    /// and, if it was off while a mailbox is selected, `OK
    /// [HIGHESTMODSEQ n]` with the MODSEQ up to which changes were
    /// reported (§3.1.2.1: a client that had not enabled CONDSTORE learns
    /// it now).
    pub fn enable_condstore(&mut self, selected: Option<&Selected>, out: &mut Out<'_>) {
        if self.enabled.condstore {
            return;
        }
        self.enabled.condstore = true;
        if let Some(selected) = selected {
            out.untagged(&format!(
                "OK [HIGHESTMODSEQ {}] Highest",
                selected.known_modseq()
            ));
        }
    }
}

/// The saved search result (SEARCHRES, RFC 5182) in both numberings, as
/// `$` stands for it.
#[derive(Debug, Default)]
pub struct Saved {
    /// As UIDs, e.g. `4:7,9`; empty when nothing is saved.
    pub uids: String,
    /// As sequence numbers.
    pub seqs: String,
}

/// The UTF-8 name a client means by `mailbox`. A name no mailbox can
/// have (see [`decode_name`]) answers `NO [NONEXISTENT]`, as a missing
/// mailbox does: the command is well formed, the mailbox just is not there.
pub fn name_of(authed: &Authed, mailbox: &Mailbox<'_>) -> Result<String, Failure> {
    match mailbox {
        Mailbox::Inbox => Ok("INBOX".to_owned()),
        Mailbox::Other(other) => decode_name(authed, other.as_ref())?.ok_or_else(|| {
            Failure::no(
                Some(code("NONEXISTENT")),
                format!("No mailbox can be named {}", shown_raw(other.as_ref())),
            )
        }),
    }
}

/// A client's name for a response text.
pub fn shown_raw(raw: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(raw))
}

/// The UTF-8 name a client means by `raw`; `None` when no mailbox can have
/// it. Clients that enabled UTF-8 (RFC 6855 §3, RFC 9051) send UTF-8
/// names. Other clients send modified UTF-7 (RFC 3501 §5.1.3), yet many
/// send raw UTF-8 in a quoted string: a name with 8-bit bytes cannot be
/// modified UTF-7, so it is taken as UTF-8 (the same mailbox as its
/// modified UTF-7 spelling). A 7-bit name that is not valid modified
/// UTF-7 (`a&b`) is a name no mailbox has: the caller answers `NO` (or
/// an empty LIST), not `BAD`, since the command itself is well formed.
/// Bytes that are not UTF-8 at all (only a literal can carry them; the
/// parser refuses them in a quoted string) are `BAD`.
pub fn decode_name(authed: &Authed, raw: &[u8]) -> Result<Option<String>, Failure> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| Failure::bad("Mailbox names must be UTF-8 or modified UTF-7"))?;
    if authed.enabled.utf8 || !text.is_ascii() || !text.contains('&') {
        return Ok(Some(text.to_owned()));
    }
    Ok(mutf7::decode(text))
}

/// A name as this client reads it.
pub fn encode_name(authed: &Authed, name: &str) -> String {
    if authed.enabled.utf8 {
        name.to_owned()
    } else {
        mutf7::encode(name)
    }
}

/// A flag as the mailbox state stores it: system flags in their RFC
/// spelling (`\Seen`), keywords as given.
pub fn flag_name(flag: &Flag<'_>) -> String {
    match flag {
        Flag::Answered => "\\Answered".to_owned(),
        Flag::Deleted => "\\Deleted".to_owned(),
        Flag::Draft => "\\Draft".to_owned(),
        Flag::Flagged => "\\Flagged".to_owned(),
        Flag::Seen => "\\Seen".to_owned(),
        other => other.to_string(),
    }
}

/// `[TRYCREATE]`: the target of COPY/MOVE/APPEND does not exist.
pub fn try_create(name: &str) -> Failure {
    Failure::no(Some(code("TRYCREATE")), format!("No mailbox {name:?}"))
}

/// Writes sorted, distinct numbers as a compact IMAP sequence set
/// (`1:3,5,7:9`), for ESEARCH `ALL` (RFC 4731 §3.1) and COPYUID (RFC 4315
/// §3). An empty slice gives an empty string, which is not a valid
/// sequence set: the caller omits the item instead.
pub fn sequence_set_string(sorted_unique: &[u32]) -> String {
    use std::fmt::Write as _;
    debug_assert!(sorted_unique.windows(2).all(|w| w[0] < w[1]));
    let mut out = String::new();
    let mut i = 0;
    while i < sorted_unique.len() {
        let start = sorted_unique[i];
        let mut end = start;
        while i + 1 < sorted_unique.len() && Some(sorted_unique[i + 1]) == end.checked_add(1) {
            i += 1;
            end = sorted_unique[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        // Writing to a String cannot fail.
        let _ = if start == end {
            write!(out, "{start}")
        } else {
            write!(out, "{start}:{end}")
        };
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_set_strings() {
        let table: &[(&[u32], &str)] = &[
            (&[], ""),
            (&[1], "1"),
            (&[1, 2, 3], "1:3"),
            (&[1, 2, 3, 5, 7, 8, 9], "1:3,5,7:9"),
            (&[2, 4, 6], "2,4,6"),
            (&[4_294_967_294, 4_294_967_295], "4294967294:4294967295"),
            (&[1, 4_294_967_295], "1,4294967295"),
        ];
        for (numbers, expected) in table {
            assert_eq!(sequence_set_string(numbers), *expected, "{numbers:?}");
        }
    }
}
