//! QUOTA (RFC 9208): GETQUOTA, GETQUOTAROOT, SETQUOTA, and the
//! `[OVERQUOTA]` refusal of APPEND and COPY (RFC 9208 §5.1, RFC 5530).
//!
//! - One quota root, `""`, the user's quota, governs every mailbox. Its
//!   limit is the directory's (`quota` in the users file, the configured
//!   LDAP attribute), read at each command, so a change applies at once.
//! - STORAGE usage is the sum of the RFC822.SIZE of the messages of all
//!   mailboxes, in units of 1024 octets rounded up; a message copied to
//!   two mailboxes counts twice. It is counted from every mailbox brought
//!   up to date, so it is the current figure on any instance, and it
//!   drops as soon as messages are expunged. The limit is given in KiB
//!   rounded down. As Dovecot's `count` quota with `quota_vsizes`.
//! - A user without a quota has no quota root: GETQUOTAROOT answers no
//!   QUOTAROOT line at all and GETQUOTA `""` no QUOTA line, as Dovecot.
//! - SETQUOTA is refused: limits are the administrator's, in the
//!   directory (RFC 9208 §4.1.3 lets a server refuse).
//! - APPEND and COPY that would take the usage over the limit are refused
//!   with `NO [OVERQUOTA]` before anything is stored (RFC 9208 §5.1:
//!   usage + new size > limit). MOVE is not checked: it frees what it
//!   adds. A usage that cannot be known (directory or store fault) does
//!   not block: like LMTP, we store rather than refuse on a guess.
//!
//! LMTP checks its own figure at delivery (see [`crate::lmtp::quota`]):
//! the stored (compressed) size of the bodies, which it can count
//! without the user's keys. It is at most this one, so LMTP may accept a
//! delivery that takes this figure a little over the limit (RFC 9208 §5
//! allows usage above the limit); doc/imap-differences.md explains it.

use futures::{StreamExt, TryStreamExt};
use imap_codec::imap_types::core::AString;
use imap_codec::imap_types::mailbox::Mailbox;

use crate::directory::DirectoryError;
use crate::imap::Imap;
use crate::imap::response::{Done, Failure, Out, Outcome, astring, code};
use crate::imap::state::{Authed, Selected, encode_name, name_of};

/// The one quota root (RFC 9208 §3.2: the user's quota).
pub const ROOT: &str = "";

/// Mailboxes brought up to date at once when counting.
const PARALLEL: usize = 8;

/// What the user's mailboxes hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Sum of RFC822.SIZE.
    pub bytes: u64,
    pub messages: u64,
}

/// The user's storage limit in bytes; `None`: no quota.
async fn limit(imap: &Imap, authed: &Authed) -> Result<Option<u64>, Failure> {
    match imap.directory.find_login(&authed.login).await {
        Ok(Some(record)) => Ok(record.quota_bytes),
        Ok(None) => Ok(None),
        Err(e @ (DirectoryError::Unavailable(_) | DirectoryError::Invalid(_))) => {
            Err(Failure::DirectoryUnavailable(e.to_string()))
        }
        Err(e) => Err(Failure::Internal(e.to_string())),
    }
}

/// The current usage of all the user's mailboxes, each synced first.
pub async fn usage(authed: &Authed) -> Result<Usage, Failure> {
    let account = &authed.account;
    account.refresh(None).await?;
    let folders = account.folders().await?;
    folders.sync().await?;
    let all = folders.all().await;
    futures::stream::iter(all)
        .map(|folder| async move {
            let mailbox = account
                .mailbox(&folder.id.to_hex(), folder.uid_validity)
                .await?;
            mailbox.sync().await?;
            let usage = mailbox
                .read(|s| Usage {
                    bytes: s.messages().map(|m| m.message.size).sum(),
                    messages: u64::from(s.exists()),
                })
                .await;
            Ok::<_, Failure>(usage)
        })
        .buffer_unordered(PARALLEL)
        .try_fold(Usage::default(), |sum, u| async move {
            Ok(Usage {
                bytes: sum.bytes + u.bytes,
                messages: sum.messages + u.messages,
            })
        })
        .await
}

/// `* QUOTA "" (STORAGE used limit)` (RFC 9208 §5.1), in KiB: usage
/// rounded up, limit rounded down, as Dovecot.
fn quota_line(usage: Usage, limit: u64) -> String {
    format!(
        "QUOTA {} (STORAGE {} {})",
        astring(ROOT),
        usage.bytes.div_ceil(1024),
        limit / 1024
    )
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
    let usage = usage(authed).await?;
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
        let usage = usage(authed).await?;
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

/// Refuses adding `incoming` bytes that would take the user over their
/// quota (`NO [OVERQUOTA]`, RFC 9208 §5.1). A usage that cannot be known
/// lets the command go on (logged).
pub async fn check(imap: &Imap, authed: &Authed, incoming: u64) -> Result<(), Failure> {
    let limit = match limit(imap, authed).await {
        Ok(Some(limit)) => limit,
        Ok(None) => return Ok(()),
        Err(e) => {
            tracing::warn!(failure = ?e, "quota: limit unknown; storing");
            return Ok(());
        }
    };
    let usage = match usage(authed).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(failure = ?e, "quota: usage unknown; storing");
            return Ok(());
        }
    };
    if usage.bytes.saturating_add(incoming) > limit {
        return Err(Failure::no(
            Some(code("OVERQUOTA")),
            "Quota exceeded (mailbox for user is full)",
        ));
    }
    Ok(())
}

/// [`check`] for a COPY of `uids` of the selected mailbox.
pub async fn check_copy(
    imap: &Imap,
    authed: &Authed,
    selected: &Selected,
    uids: &[u32],
) -> Result<(), Failure> {
    let incoming = selected
        .mailbox
        .read(|s| {
            uids.iter()
                .filter_map(|u| s.message(*u))
                .map(|m| m.message.size)
                .sum::<u64>()
        })
        .await;
    check(imap, authed, incoming).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_is_in_kib_usage_rounded_up_limit_down() {
        let line = |bytes, limit| quota_line(Usage { bytes, messages: 0 }, limit);
        assert_eq!(line(0, 10240), "QUOTA \"\" (STORAGE 0 10)");
        assert_eq!(line(1, 10240), "QUOTA \"\" (STORAGE 1 10)");
        assert_eq!(line(2004, 10751), "QUOTA \"\" (STORAGE 2 10)");
        assert_eq!(line(1024, 1023), "QUOTA \"\" (STORAGE 1 0)");
    }
}
