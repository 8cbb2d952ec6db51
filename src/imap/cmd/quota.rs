//! QUOTA (RFC 9208): GETQUOTA, GETQUOTAROOT, SETQUOTA, and the
//! `[OVERQUOTA]` refusal of APPEND and COPY (RFC 9208 §5.1, RFC 5530).
//!
//! - One quota root, `""`, the user's quota, governs every mailbox. Its
//!   limits are the directory's (`quota` and `quota_messages` in the users
//!   file, the configured LDAP attributes), read at each command, so a
//!   change applies at once.
//! - STORAGE (§5.1) usage is the sum of the RFC822.SIZE of the messages of
//!   all mailboxes, in units of 1024 octets rounded up; a message copied
//!   to two mailboxes counts twice. The limit is given in KiB rounded
//!   down. MESSAGE (§5.2) usage is the number of messages of all
//!   mailboxes. As Dovecot's `count` quota with `quota_vsizes`. Both are
//!   the account's kept figures (`crate::account::usage`), current on this
//!   instance after every command and without a store call per mailbox.
//! - A user without a quota has no quota root: GETQUOTAROOT answers no
//!   QUOTAROOT line at all and GETQUOTA `""` no QUOTA line, as Dovecot. A
//!   user with one limit only sees that resource.
//! - SETQUOTA is refused: limits are the administrator's, in the
//!   directory (RFC 9208 §4.1.3 lets a server refuse).
//! - APPEND and COPY that would take the usage over either limit are
//!   refused with `NO [OVERQUOTA]` before anything is stored (when usage
//!   plus what is added passes a limit), only on a count made just now. MOVE is not checked: it
//!   frees what it adds (Dovecot does not refuse it either). A usage that
//!   cannot be known (directory or store fault) does not block: like
//!   LMTP, we store rather than refuse on a guess.
//!
//! LMTP has no keys and cannot count messages: every count made here is
//! also published for it (`crate::account::usage`, "Published for
//! LMTP"), at GETQUOTA, GETQUOTAROOT, the check before APPEND and COPY,
//! and after EXPUNGE, CLOSE and DELETE ([`removed`]), so a user who makes
//! room here is not refused at delivery. LMTP refuses only when both that
//! figure (plus the bodies written since) and its own count of the stored
//! bodies are over ([`crate::lmtp::quota`]); it may accept a delivery that
//! takes these figures a little over the limit (RFC 9208 §5 allows usage
//! above the limit); doc/imap-differences.md explains it.

use imap_codec::imap_types::core::AString;
use imap_codec::imap_types::mailbox::Mailbox;

use crate::account::usage::{Count, Usage};
use crate::directory::{DirectoryError, QuotaLimits};
use crate::imap::Imap;
use crate::imap::response::{Done, Failure, Out, Outcome, astring, code};
use crate::imap::state::{Authed, Selected, encode_name, name_of};

/// The one quota root (RFC 9208 §3.2: the user's quota).
pub const ROOT: &str = "";

/// The user's limits; `None`: no quota.
async fn limit(imap: &Imap, authed: &Authed) -> Result<Option<QuotaLimits>, Failure> {
    match imap.directory.find_login(&authed.login).await {
        Ok(Some(record)) => Ok(record.quota()),
        Ok(None) => Ok(None),
        Err(e @ (DirectoryError::Unavailable(_) | DirectoryError::Invalid(_))) => {
            Err(Failure::DirectoryUnavailable(e.to_string()))
        }
        Err(e) => Err(Failure::Internal(e.to_string())),
    }
}

/// `* QUOTA "" (STORAGE used limit MESSAGE used limit)` (RFC 9208 §5.1,
/// §5.2), each resource the user has a limit for, in Dovecot's order.
/// STORAGE is in KiB: usage rounded up, limit rounded down, as Dovecot.
fn quota_line(usage: Usage, limits: QuotaLimits) -> String {
    let mut resources = Vec::new();
    if let Some(limit) = limits.bytes {
        resources.push(format!(
            "STORAGE {} {}",
            usage.bytes.div_ceil(1024),
            limit / 1024
        ));
    }
    if let Some(limit) = limits.messages {
        resources.push(format!("MESSAGE {} {limit}", usage.messages));
    }
    format!("QUOTA {} ({})", astring(ROOT), resources.join(" "))
}

/// GETQUOTAROOT (RFC 9208 §4.3): the roots of a mailbox and their
/// quotas. As Dovecot, the mailbox need not exist (its root is the
/// user's all the same).
pub async fn get_quota_root(
    imap: &Imap,
    authed: &Authed,
    mailbox: &Mailbox<'_>,
    out: &mut Out<'_>,
) -> Outcome {
    let name = name_of(authed, mailbox)?;
    let Some(limit) = limit(imap, authed).await? else {
        return Done::ok("No quota");
    };
    let usage = authed.account.usage(Count::Kept).await?;
    out.untagged(&format!(
        "QUOTAROOT {} {}",
        astring(&encode_name(authed, &name)),
        astring(ROOT)
    ));
    out.untagged(&quota_line(usage, limit));
    Done::ok("GETQUOTAROOT completed")
}

/// GETQUOTA (RFC 9208 §4.2).
pub async fn get_quota(
    imap: &Imap,
    authed: &Authed,
    root: &AString<'_>,
    out: &mut Out<'_>,
) -> Outcome {
    let root: &[u8] = root.as_ref();
    if root != ROOT.as_bytes() {
        return Err(Failure::no(
            Some(code("NONEXISTENT")),
            "No such quota root (the user's is \"\")",
        ));
    }
    if let Some(limit) = limit(imap, authed).await? {
        let usage = authed.account.usage(Count::Kept).await?;
        out.untagged(&quota_line(usage, limit));
    }
    Done::ok("GETQUOTA completed")
}

/// SETQUOTA (RFC 9208 §4.1.3): limits are set in the directory.
pub fn set_quota() -> Outcome {
    Err(Failure::no(
        Some(code("NOPERM")),
        "Quotas are set by the administrator in the user directory",
    ))
}

/// Refuses adding `messages` messages of `bytes` octets in all that would
/// take the user over their quota (`NO [OVERQUOTA]`, RFC 9208 §5.1,
/// §5.2). The kept figure decides when it allows; a refusal is made only
/// on a count made just now (another instance may have freed room). A
/// usage that cannot be known lets the command go on (logged). Adding
/// nothing (a COPY of no message) is never refused and counts nothing.
pub async fn check(imap: &Imap, authed: &Authed, bytes: u64, messages: u64) -> Result<(), Failure> {
    if bytes == 0 && messages == 0 {
        return Ok(());
    }
    let limits = match limit(imap, authed).await {
        Ok(Some(limits)) => limits,
        Ok(None) => return Ok(()),
        Err(e) => {
            tracing::warn!(failure = ?e, "quota: limit unknown; storing");
            return Ok(());
        }
    };
    for how in [Count::Kept, Count::Fresh] {
        let usage = match authed.account.usage(how).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "quota: usage unknown; storing");
                return Ok(());
            }
        };
        if limits.allow(usage.bytes, usage.messages, bytes, messages) {
            return Ok(());
        }
    }
    Err(Failure::no(
        Some(code("OVERQUOTA")),
        "Quota exceeded (mailbox for user is full)",
    ))
}

/// After a command that frees room (EXPUNGE, CLOSE, DELETE) or adds
/// messages without new bodies (COPY): counts the user's usage, if they
/// have a quota, so that the figure LMTP reads
/// (`crate::account::usage::Published`) shows the change at once: a
/// delivery refused before is taken, and copies count. Faults are logged
/// only: the command is done.
pub async fn changed(imap: &Imap, authed: &Authed) {
    match limit(imap, authed).await {
        Ok(Some(_)) => {}
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(failure = ?e, "quota: limit unknown; usage not published");
            return;
        }
    }
    if let Err(e) = authed.account.usage(Count::Kept).await {
        tracing::warn!(error = %e, "quota: usage not counted after a change");
    }
}

/// [`check`] for a COPY of `uids` of the selected mailbox.
pub async fn check_copy(
    imap: &Imap,
    authed: &Authed,
    selected: &Selected,
    uids: &[u32],
) -> Result<(), Failure> {
    let (bytes, messages) = selected
        .mailbox
        .read(|s| {
            uids.iter()
                .filter_map(|u| s.message(*u))
                .fold((0u64, 0u64), |(b, n), m| (b + m.message.size, n + 1))
        })
        .await;
    check(imap, authed, bytes, messages).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(limit: u64) -> QuotaLimits {
        QuotaLimits {
            bytes: Some(limit),
            messages: None,
        }
    }

    #[test]
    fn storage_is_in_kib_usage_rounded_up_limit_down() {
        let line = |bytes, limit| quota_line(Usage { bytes, messages: 0 }, storage(limit));
        assert_eq!(line(0, 10240), "QUOTA \"\" (STORAGE 0 10)");
        assert_eq!(line(1, 10240), "QUOTA \"\" (STORAGE 1 10)");
        assert_eq!(line(2004, 10751), "QUOTA \"\" (STORAGE 2 10)");
        assert_eq!(line(1024, 1023), "QUOTA \"\" (STORAGE 1 0)");
    }

    #[test]
    fn message_follows_storage_and_stands_alone() {
        let usage = Usage {
            bytes: 2048,
            messages: 6,
        };
        let both = QuotaLimits {
            bytes: Some(10240),
            messages: Some(6),
        };
        assert_eq!(
            quota_line(usage, both),
            "QUOTA \"\" (STORAGE 2 10 MESSAGE 6 6)"
        );
        let messages = QuotaLimits {
            bytes: None,
            messages: Some(100),
        };
        assert_eq!(quota_line(usage, messages), "QUOTA \"\" (MESSAGE 6 100)");
    }
}
