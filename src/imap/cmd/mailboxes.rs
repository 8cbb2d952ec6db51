//! Mailbox commands (RFC 9051 §6.3): CREATE (with CREATE-SPECIAL-USE,
//! RFC 6154), DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST (with
//! LIST-EXTENDED RFC 5258, LIST-STATUS RFC 5819, SPECIAL-USE RFC 6154,
//! CHILDREN RFC 3348), LSUB and STATUS (with STATUS=SIZE RFC 8438 and
//! APPENDLIMIT RFC 7889). Names are UTF-8 inside Facteur; clients that did
//! not enable UTF-8 get modified UTF-7 ([`crate::imap::mutf7`]).

use std::collections::BTreeMap;

use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::status::StatusDataItemName;

use crate::account::AccountError;
use crate::imap::grammar::ext::{Ext, ListExt};
use crate::imap::mutf7;
use crate::imap::response::{Done, Failure, Out, Outcome, astring, code};
use crate::imap::state::{Authed, decode_name, encode_name, name_of, shown_raw};
use crate::mailbox::list::{DELIMITER, SpecialUse};

/// The name a CREATE or RENAME gives: one no mailbox can have answers
/// `NO [CANNOT]` (RFC 5530 §3).
fn new_name_of(authed: &Authed, mailbox: &Mailbox<'_>) -> Result<String, Failure> {
    match mailbox {
        Mailbox::Inbox => Ok("INBOX".to_owned()),
        Mailbox::Other(other) => decode_name(authed, other.as_ref())?.ok_or_else(|| {
            Failure::no(
                Some(code("CANNOT")),
                format!(
                    "{} is not valid modified UTF-7 (RFC 3501 §5.1.3)",
                    shown_raw(other.as_ref())
                ),
            )
        }),
    }
}

/// `NO [NONEXISTENT]`; the name in modified UTF-7, since response text
/// is 7-bit (RFC 3501 §9 `TEXT-CHAR`).
fn no_such(name: &str) -> Failure {
    Failure::no(
        Some(code("NONEXISTENT")),
        format!("No mailbox {:?}", mutf7::encode(name)),
    )
}

/// CREATE (RFC 9051 §6.3.4; `USE` from RFC 6154 §3).
pub async fn create(authed: &Authed, mailbox: &Mailbox<'_>, ext: Ext) -> Outcome {
    let mut name = new_name_of(authed, mailbox)?;
    // A trailing delimiter only says the name will have inferiors.
    while name.len() > 1 && name.ends_with(DELIMITER) {
        name.pop();
    }
    if name.eq_ignore_ascii_case("INBOX") {
        return Err(Failure::no(
            Some(code("ALREADYEXISTS")),
            "INBOX always exists",
        ));
    }
    if let Some(attr) = &ext.create_use_unknown {
        // RFC 6154 §3: a special use the server does not support.
        return Err(Failure::no(
            Some(code("USEATTR")),
            format!("Unknown special use {attr}"),
        ));
    }
    let special_use = match ext.create_use.as_slice() {
        [] => None,
        [one] => Some(*one),
        _ => {
            return Err(Failure::no(
                Some(code("USEATTR")),
                "A mailbox can have only one special use here",
            ));
        }
    };
    let folders = authed.account.folders().await?;
    folders.sync().await?;
    match folders.create(&name, special_use).await {
        Ok(_) => Done::ok("CREATE completed"),
        Err(AccountError::List(crate::mailbox::list::ListError::BadName(e))) => {
            Err(Failure::no(Some(code("CANNOT")), e.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

/// DELETE (RFC 9051 §6.3.5).
pub async fn delete(authed: &Authed, name: &str) -> Outcome {
    if name.eq_ignore_ascii_case("INBOX") {
        return Err(Failure::no(Some(code("CANNOT")), "INBOX cannot be deleted"));
    }
    match authed.account.delete_mailbox(name).await {
        Ok(()) => Done::ok("DELETE completed"),
        Err(AccountError::NoSuchMailbox(_)) => Err(no_such(name)),
        Err(e) => Err(e.into()),
    }
}

/// RENAME (RFC 9051 §6.3.6): inferiors follow; renaming INBOX moves its
/// messages and leaves it empty.
pub async fn rename(authed: &Authed, from: &Mailbox<'_>, to: &Mailbox<'_>) -> Outcome {
    let from = name_of(authed, from)?;
    let mut to = new_name_of(authed, to)?;
    while to.len() > 1 && to.ends_with(DELIMITER) {
        to.pop();
    }
    let folders = authed.account.folders().await?;
    folders.sync().await?;
    if folders.find(&from).await.is_none() {
        return Err(no_such(&from));
    }
    if folders.find(&to).await.is_some() {
        return Err(Failure::no(
            Some(code("ALREADYEXISTS")),
            format!("Mailbox {to:?} already exists"),
        ));
    }
    authed.account.rename_mailbox(&from, &to).await?;
    Done::ok("RENAME completed")
}

/// SUBSCRIBE and UNSUBSCRIBE (RFC 9051 §6.3.7, §6.3.8).
pub async fn subscribe(authed: &Authed, mailbox: &Mailbox<'_>, on: bool) -> Outcome {
    let name = name_of(authed, mailbox)?;
    let folders = authed.account.folders().await?;
    folders.sync().await?;
    if on {
        if folders.find(&name).await.is_none() {
            return Err(no_such(&name));
        }
        folders.subscribe(&name).await?;
        Done::ok("SUBSCRIBE completed")
    } else {
        folders.unsubscribe(&name).await?;
        Done::ok("UNSUBSCRIBE completed")
    }
}

/// One line of a LIST answer.
#[derive(Default)]
struct Entry {
    exists: bool,
    subscribed: bool,
    children: bool,
    subscribed_child: bool,
    special_use: Option<SpecialUse>,
}

/// LIST and LSUB (RFC 9051 §6.3.9, RFC 3501 §6.3.9, RFC 5258).
pub async fn list(
    authed: &Authed,
    reference: &Mailbox<'_>,
    pattern: &ListMailbox<'_>,
    ext: Ext,
    lsub: bool,
    out: &mut Out<'_>,
) -> Outcome {
    let opts = ext.list.unwrap_or_default();
    // A reference or pattern no mailbox name can match (not valid
    // modified UTF-7) matches nothing: OK with no line, as Dovecot does.
    let reference = match reference {
        Mailbox::Inbox => Some("INBOX".to_owned()),
        Mailbox::Other(o) => decode_name(authed, o.as_ref())?,
    };
    let raw_patterns: Vec<&[u8]> = if opts.patterns.is_empty() {
        vec![match pattern {
            ListMailbox::Token(t) => t.as_ref(),
            ListMailbox::String(s) => s.as_ref(),
        }]
    } else {
        opts.patterns.iter().map(Vec::as_slice).collect()
    };
    let mut patterns: Vec<String> = Vec::new();
    for raw in raw_patterns {
        if let Some(p) = decode_name(authed, raw)? {
            patterns.push(p);
        }
    }
    let done = || {
        Done::ok(if lsub {
            "LSUB completed"
        } else {
            "LIST completed"
        })
    };
    let Some(reference) = reference else {
        return done();
    };
    if patterns.is_empty() {
        return done();
    }
    // RFC 9051 §6.3.9: an empty pattern asks for the delimiter.
    if patterns.len() == 1 && patterns[0].is_empty() && !opts.extended() {
        out.untagged("LIST (\\Noselect) \"/\" \"\"");
        return done();
    }
    let full: Vec<String> = patterns
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            if reference.is_empty() || p.starts_with(DELIMITER) {
                p.clone()
            } else {
                format!("{reference}{p}")
            }
        })
        .collect();

    let folders = authed.account.folders().await?;
    if let Err(e) = folders.sync().await
        && !e.is_transient()
    {
        return Err(e.into());
    }
    let entries: BTreeMap<String, Entry> = folders
        .read(|l| {
            let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
            for m in l.mailboxes() {
                let e = entries.entry(m.name.to_owned()).or_default();
                e.exists = true;
                e.special_use = m.special_use;
                e.children = l.has_children(m.name);
            }
            for s in l.subscriptions() {
                entries.entry(s.to_owned()).or_default().subscribed = true;
            }
            // Parents of every name: \HasChildren, CHILDINFO.
            let names: Vec<(String, bool)> = entries
                .iter()
                .map(|(n, e)| (n.clone(), e.subscribed))
                .collect();
            for (name, subscribed) in names {
                let mut parent = name.as_str();
                while let Some((p, _)) = parent.rsplit_once(DELIMITER) {
                    let e = entries.entry(p.to_owned()).or_default();
                    e.children = true;
                    if subscribed {
                        e.subscribed_child = true;
                    }
                    parent = p;
                }
            }
            entries
        })
        .await;

    let lsub_like = lsub || opts.select_subscribed;
    // (name, attributes, selectable, CHILDINFO)
    let mut lines: Vec<(String, String, bool, bool)> = Vec::new();
    for (name, e) in &entries {
        let matched = full.iter().any(|p| matches(p, name));
        if !matched {
            continue;
        }
        let mut attrs: Vec<&str> = Vec::new();
        let selectable = e.exists;
        if lsub_like {
            if !e.subscribed {
                // A parent of subscribed names (RFC 3501 §6.3.9 `%` rule,
                // RFC 5258 RECURSIVEMATCH).
                let wanted = if lsub {
                    full.iter().any(|p| p.contains('%')) && e.subscribed_child
                } else {
                    opts.recursive_match
                        && e.subscribed_child
                        && unreturned_subscribed_descendant(&entries, name, &full, &opts)
                };
                if !wanted {
                    continue;
                }
                if lsub {
                    attrs.push("\\Noselect");
                }
            } else if !lsub {
                attrs.push("\\Subscribed");
            }
            if !e.exists && !lsub && e.subscribed {
                attrs.push("\\NonExistent");
            }
        } else {
            if !e.exists {
                // Only `%` shows a missing parent (RFC 3501 §6.3.8).
                if !full.iter().any(|p| p.contains('%')) {
                    continue;
                }
                attrs.push("\\Noselect");
            }
            if opts.return_subscribed && e.subscribed {
                attrs.push("\\Subscribed");
            }
        }
        if opts.select_special_use && e.special_use.is_none() {
            continue;
        }
        if !lsub {
            attrs.push(if e.children {
                "\\HasChildren"
            } else {
                "\\HasNoChildren"
            });
        }
        if let Some(u) = e.special_use
            && !lsub
        {
            attrs.push(u.attribute());
        }
        let childinfo = opts.recursive_match && e.subscribed_child && !lsub;
        lines.push((name.clone(), attrs.join(" "), selectable, childinfo));
    }
    let verb = if lsub { "LSUB" } else { "LIST" };
    for (name, attrs, selectable, childinfo) in lines {
        let shown = encode_name(authed, &name);
        let mut line = format!("{verb} ({attrs}) \"/\" {}", astring(&shown));
        if childinfo {
            line.push_str(" (\"CHILDINFO\" (\"SUBSCRIBED\"))");
        }
        out.untagged(&line);
        if selectable && let Some(items) = &opts.return_status {
            // RFC 5819: STATUS after the LIST line; a failure is skipped.
            match status_line(authed, &name, items, opts.return_status_appendlimit).await {
                Ok(status) => out.untagged(&status),
                Err(Failure::Io(e)) => return Err(Failure::Io(e)),
                Err(_) => {}
            }
        }
        out.flush_if_full().await?;
    }
    Done::ok(if lsub {
        "LSUB completed"
    } else {
        "LIST completed"
    })
}

/// Whether `parent` has a subscribed descendant that this LIST does not
/// return itself. RFC 5258 §3.5: a parent that does not meet the
/// selection criteria is returned, with CHILDINFO, to tell of matching
/// children the patterns do not reach; when they are all returned, the
/// parent is not (as Dovecot does: `LIST (SUBSCRIBED RECURSIVEMATCH) ""
/// (a/b a/b/c)` with only `a/b/c` subscribed returns `a/b/c` alone).
fn unreturned_subscribed_descendant(
    entries: &BTreeMap<String, Entry>,
    parent: &str,
    patterns: &[String],
    opts: &ListExt,
) -> bool {
    let prefix = format!("{parent}{DELIMITER}");
    entries
        .range(prefix.clone()..)
        .take_while(|(name, _)| name.starts_with(&prefix))
        .any(|(name, e)| {
            let returned = patterns.iter().any(|p| matches(p, name))
                && (!opts.select_special_use || e.special_use.is_some());
            e.subscribed && !returned
        })
}

/// Whether `name` matches a LIST pattern (RFC 9051 §6.3.9: `*` matches
/// anything, `%` anything but the delimiter; INBOX case-insensitively).
pub fn matches(pattern: &str, name: &str) -> bool {
    let pattern = canonical_inbox(pattern);
    let name = canonical_inbox(name);
    glob(pattern.as_bytes(), name.as_bytes())
}

fn canonical_inbox(s: &str) -> std::borrow::Cow<'_, str> {
    let first_len = s.find(DELIMITER).unwrap_or(s.len());
    if s[..first_len].eq_ignore_ascii_case("INBOX") && &s[..first_len] != "INBOX" {
        std::borrow::Cow::Owned(format!("INBOX{}", &s[first_len..]))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

fn glob(p: &[u8], n: &[u8]) -> bool {
    // Iterative matching with backtracking on the last `*` / `%`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize, bool)> = None; // (pattern pos, name pos, crosses delimiter)
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'*' || p[pi] == b'%') {
            star = Some((pi, ni, p[pi] == b'*'));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn, crosses)) = star {
            if !crosses && n[sn] == DELIMITER as u8 {
                return false;
            }
            star = Some((sp, sn + 1, crosses));
            pi = sp + 1;
            ni = sn + 1;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*' || *c == b'%')
}

/// STATUS (RFC 9051 §6.3.11).
pub async fn status(
    authed: &Authed,
    mailbox: &Mailbox<'_>,
    items: &[StatusDataItemName],
    ext: Ext,
    out: &mut Out<'_>,
) -> Outcome {
    let name = name_of(authed, mailbox)?;
    let line = status_line(authed, &name, items, ext.status_appendlimit).await?;
    out.untagged(&line);
    Done::ok("STATUS completed")
}

async fn status_line(
    authed: &Authed,
    name: &str,
    items: &[StatusDataItemName],
    appendlimit: bool,
) -> Result<String, Failure> {
    let (folder, mailbox) = match authed.account.open_fresh(name).await {
        Ok(found) => found,
        Err(AccountError::NoSuchMailbox(_)) => return Err(no_such(name)),
        Err(e) => return Err(e.into()),
    };
    // RFC 3501 §6.3.10: the messages no session of this instance took
    // as recent yet (see `crate::account::recent`).
    let recent_floor = |uid_validity| {
        authed.recent.floor(
            authed.account.user().as_str(),
            &folder.id.to_hex(),
            uid_validity,
        )
    };
    let parts = mailbox
        .read(|s| {
            let mut parts: Vec<String> = Vec::new();
            for item in items {
                let part = match item {
                    StatusDataItemName::Messages => format!("MESSAGES {}", s.exists()),
                    StatusDataItemName::Recent => {
                        let floor = recent_floor(s.uid_validity());
                        format!("RECENT {}", s.messages().filter(|m| m.uid >= floor).count())
                    }
                    StatusDataItemName::UidNext => format!("UIDNEXT {}", s.uid_next()),
                    StatusDataItemName::UidValidity => format!("UIDVALIDITY {}", s.uid_validity()),
                    StatusDataItemName::Unseen => format!(
                        "UNSEEN {}",
                        s.messages()
                            .filter(|m| !m.flags.contains(&"\\Seen"))
                            .count()
                    ),
                    StatusDataItemName::Deleted => format!(
                        "DELETED {}",
                        s.messages()
                            .filter(|m| m.flags.contains(&"\\Deleted"))
                            .count()
                    ),
                    StatusDataItemName::DeletedStorage => format!(
                        "DELETED-STORAGE {}",
                        s.messages()
                            .filter(|m| m.flags.contains(&"\\Deleted"))
                            .map(|m| m.message.size)
                            .sum::<u64>()
                    ),
                    StatusDataItemName::Size => {
                        format!("SIZE {}", s.messages().map(|m| m.message.size).sum::<u64>())
                    }
                    StatusDataItemName::HighestModSeq => {
                        format!("HIGHESTMODSEQ {}", s.highest_modseq())
                    }
                };
                parts.push(part);
            }
            parts
        })
        .await;
    let mut parts = parts;
    if appendlimit {
        parts.push(format!("APPENDLIMIT {}", authed.append_limit));
    }
    Ok(format!(
        "STATUS {} ({})",
        astring(&encode_name(authed, name)),
        parts.join(" ")
    ))
}

impl ListExt {
    /// Whether LIST-EXTENDED syntax was used (then an empty pattern is just
    /// a pattern).
    pub fn extended(&self) -> bool {
        self.select_subscribed
            || self.select_special_use
            || self.recursive_match
            || self.return_subscribed
            || self.return_children
            || self.return_special_use
            || self.return_status.is_some()
            || self.patterns.len() > 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_patterns_follow_rfc_9051() {
        assert!(matches("*", "INBOX"));
        assert!(matches("*", "a/b/c"));
        assert!(matches("%", "a"));
        assert!(!matches("%", "a/b"));
        assert!(matches("a/%", "a/b"));
        assert!(!matches("a/%", "a/b/c"));
        assert!(matches("a/*", "a/b/c"));
        assert!(matches("inbox", "INBOX"));
        assert!(matches("Inbox/%", "INBOX/Work"));
        assert!(!matches("inbox", "Inbox2"));
        assert!(matches("S*t", "Sent"));
        assert!(matches("%/%", "a/b"));
        assert!(!matches("%/%", "a"));
        assert!(matches("*b", "a/b"));
        assert!(!matches("Sent", "Sent/x"));
    }
}
