//! APPEND (RFC 9051 §6.3.12) with MULTIAPPEND (RFC 3502), UIDPLUS's
//! APPENDUID (RFC 4315) and APPENDLIMIT (RFC 7889). A message is
//! acknowledged only once its body and its op are durable in the store;
//! if one message of a MULTIAPPEND fails, those already placed are
//! expunged again (RFC 3502 §6.3.11: all or none).

use imap_codec::imap_types::mailbox::Mailbox;

use crate::account::AccountError;
use crate::imap::Imap;
use crate::imap::grammar::ext::{Ext, Message};
use crate::imap::response::{Done, Failure, Outcome, code, code_owned};
use crate::imap::state::{Authed, name_of, sequence_set_string, try_create};

pub async fn append(
    imap: &Imap,
    authed: &Authed,
    mailbox: &Mailbox<'_>,
    first: Message,
    ext: Ext,
) -> Outcome {
    let limit = imap.options.max_message;
    let name = name_of(authed, mailbox)?;
    let mut messages = vec![first];
    messages.extend(ext.more_appends);
    for m in &messages {
        if m.data.len() > limit as usize {
            return Err(Failure::no(
                Some(code("TOOBIG")),
                format!("Messages over {limit} bytes are refused (APPENDLIMIT)"),
            ));
        }
        if m.data.is_empty() {
            return Err(Failure::no(None, "An empty message cannot be appended"));
        }
    }
    let target = match authed.account.open_by_name(&name).await {
        Ok((_, mailbox)) => mailbox,
        Err(AccountError::NoSuchMailbox(_)) => return Err(try_create(&name)),
        Err(e) => return Err(e.into()),
    };
    let incoming = messages.iter().map(|m| m.data.len() as u64).sum::<u64>();
    crate::imap::cmd::quota::check(imap, authed, incoming, messages.len() as u64).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    // Bounded keywords (see MAX_KEYWORDS), checked for all the messages
    // before any is stored.
    let flags: Vec<String> = messages
        .iter()
        .flat_map(|m| m.flags.iter().cloned())
        .collect();
    crate::imap::cmd::store::check_keyword_limit(&target, &[], &flags).await?;
    let mut placed_uids: Vec<u32> = Vec::new();
    let mut uid_validity = 0;
    for m in messages {
        let flags: Vec<String> = m
            .flags
            .into_iter()
            .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
            .collect();
        match authed
            .account
            .append_with(&target, &m.data, m.line_ends, flags, m.date.unwrap_or(now))
            .await
        {
            Ok(placed) => {
                uid_validity = placed.uid_validity;
                placed_uids.extend(placed.uids.into_iter().flatten());
            }
            Err(e) => {
                if !placed_uids.is_empty()
                    && let Err(undo) = target.expunge(&placed_uids).await
                {
                    tracing::warn!(error = %undo, "could not undo a partial MULTIAPPEND");
                }
                return Err(e.into());
            }
        }
    }
    if placed_uids.is_empty() {
        // Displaced by a concurrent conflict: stored, UID known later.
        return Done::ok("APPEND completed");
    }
    let code = code_owned(format!(
        "APPENDUID {uid_validity} {}",
        sequence_set_string(&placed_uids)
    ));
    Done::with_code(code, "APPEND completed")
}
