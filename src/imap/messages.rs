//! Commands that change messages of the selected mailbox: STORE (RFC 9051
//! §6.4.6), EXPUNGE and UID EXPUNGE (§6.4.3, RFC 4315 §2.1), CLOSE's
//! silent expunge, COPY (§6.4.7) and MOVE (RFC 6851), with COPYUID
//! (RFC 4315).

use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};

use super::mailboxes::encode_name;
use super::response::{Done, Failure, Out, Outcome, code, code_owned};
use super::search::sequence_set_string;
use super::selected::{MAX_KEYWORDS, Selected, try_create};
use super::session::Authed;
use crate::account::AccountError;

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

/// What a STORE changes (RFC 9051 §6.4.6, RFC 7162 §3.1.3).
#[derive(Debug)]
pub struct Change<'a> {
    pub kind: StoreType,
    pub flags: Vec<Flag<'a>>,
    /// `UNCHANGEDSINCE`: messages changed after this MODSEQ are left alone
    /// and reported in `[MODIFIED ...]`.
    pub unchanged_since: Option<u64>,
}

/// STORE: sets, adds or removes flags; answers FETCH FLAGS unless
/// `.SILENT` (changes by others are reported either way).
pub async fn store(
    selected: &mut Selected,
    uids: &[u32],
    change: Change<'_>,
    response: StoreResponse,
    by_uid: bool,
    out: &mut Out<'_>,
) -> Outcome {
    let Change {
        kind,
        flags,
        unchanged_since,
    } = change;
    let mut modified: Vec<u32> = Vec::new();
    let kept: Vec<u32>;
    // (`modified` is set only with UNCHANGEDSINCE.)
    let uids = match unchanged_since {
        Some(since) => {
            let (ok, changed): (Vec<u32>, Vec<u32>) = selected
                .mailbox
                .read(|s| {
                    uids.iter()
                        .copied()
                        .filter(|u| s.message(*u).is_some())
                        .partition(|u| s.message(*u).is_some_and(|m| m.modseq <= since))
                })
                .await;
            modified = changed;
            kept = ok;
            &kept[..]
        }
        None => uids,
    };
    let names: Vec<String> = flags
        .iter()
        .map(flag_name)
        .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
        .collect();
    // Others' changes first, so that ours can be told apart.
    selected.report(out, false).await;
    if !matches!(kind, StoreType::Remove) {
        check_keyword_limit(&selected.mailbox, selected.keywords(), &names).await?;
    }
    let before = selected.mailbox.read(|s| s.highest_modseq()).await;
    if !uids.is_empty() {
        let (set, clear) = match kind {
            StoreType::Add => (names, Vec::new()),
            StoreType::Remove => (Vec::new(), names),
            StoreType::Replace => {
                let current: Vec<String> = selected
                    .mailbox
                    .read(|s| {
                        let mut all: Vec<String> = Vec::new();
                        for uid in uids {
                            if let Some(m) = s.message(*uid) {
                                for f in &m.flags {
                                    if !all.iter().any(|a| a == f) {
                                        all.push((*f).to_owned());
                                    }
                                }
                            }
                        }
                        all
                    })
                    .await;
                let clear = current.into_iter().filter(|f| !names.contains(f)).collect();
                (names, clear)
            }
        };
        // Announced before any FETCH shows them (RFC 3501 §7.2.6), also
        // for .SILENT: a later FETCH may show them.
        selected.announce_keywords(set.iter().map(String::as_str), out);
        selected.mailbox.store_flags(uids, set, clear).await?;
    }
    let after = selected.mailbox.read(|s| s.highest_modseq()).await;
    let reported = if after <= before + 1 {
        // Only our own write happened: it is answered below (or silent).
        selected.flags_reported_up_to(after);
        Vec::new()
    } else {
        selected.report(out, false).await
    };
    if matches!(response, StoreResponse::Answer) {
        let lines: Vec<String> = selected
            .mailbox
            .read(|s| {
                uids.iter()
                    .filter(|uid| !reported.contains(uid))
                    .filter_map(|uid| s.message(*uid))
                    .map(|m| (m.uid, selected.flag_list(m.uid, &m.flags), m.modseq))
                    .collect::<Vec<_>>()
            })
            .await
            .into_iter()
            .filter_map(|(uid, flags, modseq)| {
                let seq = selected.seq_of(uid)?;
                // RFC 7162 §3.1: with CONDSTORE on, UID in every
                // untagged FETCH.
                let uid = if by_uid || selected.condstore {
                    format!(" UID {uid}")
                } else {
                    String::new()
                };
                let modseq = if selected.condstore {
                    format!(" MODSEQ ({modseq})")
                } else {
                    String::new()
                };
                Some(format!("{seq} FETCH (FLAGS ({flags}){uid}{modseq})"))
            })
            .collect();
        for line in lines {
            out.untagged(&line);
        }
    }
    if !modified.is_empty() {
        // RFC 7162 §3.1.3: the numbers of the messages left alone.
        let numbers: Vec<u32> = if by_uid {
            modified
        } else {
            modified
                .iter()
                .filter_map(|u| selected.seq_of(*u))
                .collect()
        };
        return Done::with_code(
            code_owned(format!("MODIFIED {}", sequence_set_string(&numbers))),
            "Conditional STORE failed for some messages",
        );
    }
    Done::ok(if by_uid {
        "UID STORE completed"
    } else {
        "STORE completed"
    })
}

/// `NO [LIMIT]` if setting `flags` would give the mailbox more than
/// [`MAX_KEYWORDS`] distinct keywords, counting those now in use and
/// those the session was told of (`announced`), so FLAGS stays within it.
pub async fn check_keyword_limit(
    mailbox: &crate::account::Mailbox,
    announced: &[String],
    flags: &[String],
) -> Result<(), Failure> {
    let fresh: Vec<&str> = flags
        .iter()
        .map(String::as_str)
        .filter(|f| !f.starts_with('\\') && !announced.iter().any(|k| k == f))
        .collect();
    if fresh.is_empty() {
        return Ok(());
    }
    let mut keywords: std::collections::HashSet<String> = mailbox
        .read(|s| {
            s.messages()
                .flat_map(|m| m.flags.into_iter())
                .filter(|f| !f.starts_with('\\'))
                .map(str::to_owned)
                .collect()
        })
        .await;
    keywords.extend(announced.iter().cloned());
    keywords.extend(fresh.iter().map(|f| (*f).to_owned()));
    if keywords.len() > MAX_KEYWORDS {
        return Err(Failure::no(
            Some(code("LIMIT")),
            format!("A mailbox holds at most {MAX_KEYWORDS} distinct keywords"),
        ));
    }
    Ok(())
}

/// Expunges the messages flagged \Deleted (among `only`, for UID
/// EXPUNGE). The EXPUNGE responses follow from the session's report.
pub async fn expunge_deleted(selected: &mut Selected, only: Option<&[u32]>) -> Result<(), Failure> {
    let deleted: Vec<u32> = selected
        .mailbox
        .read(|s| {
            s.uids_with_flag("\\Deleted")
                .into_iter()
                .filter(|u| only.is_none_or(|o| o.binary_search(u).is_ok()))
                .collect()
        })
        .await;
    if !deleted.is_empty() {
        selected.mailbox.expunge(&deleted).await?;
    }
    Ok(())
}

/// COPY and MOVE: `OK [COPYUID ...]` (for MOVE an untagged OK before the
/// EXPUNGE responses, RFC 6851 §4.3).
pub async fn copy(
    authed: &Authed,
    selected: &mut Selected,
    uids: &[u32],
    target: &str,
    moving: bool,
    out: &mut Out<'_>,
) -> Outcome {
    let verb = if moving { "MOVE" } else { "COPY" };
    let (_, destination) = match authed.account.open_by_name(target).await {
        Ok(found) => found,
        Err(AccountError::NoSuchMailbox(_)) => {
            return Err(try_create(&encode_name(authed, target)));
        }
        Err(e) => return Err(e.into()),
    };
    if uids.is_empty() {
        return Done::ok(if moving {
            "MOVE completed"
        } else {
            "COPY completed"
        });
    }
    let (sources, placed) = authed
        .account
        .copy(&selected.mailbox, uids, &destination, moving)
        .await?;
    let pairs: Vec<(u32, u32)> = sources
        .iter()
        .zip(placed.uids.iter())
        .filter_map(|(s, d)| d.map(|d| (*s, d)))
        .collect();
    let copyuid = (!pairs.is_empty()).then(|| {
        // COPYUID lists both sets in the same order (RFC 4315 §3); the
        // compact form keeps ascending source order, which is ours.
        let src: Vec<u32> = pairs.iter().map(|p| p.0).collect();
        let dst: Vec<u32> = pairs.iter().map(|p| p.1).collect();
        format!(
            "COPYUID {} {} {}",
            placed.uid_validity,
            sequence_set_string(&src),
            ordered_set(&dst)
        )
    });
    if moving {
        if let Some(c) = copyuid {
            out.ok(Some(code_owned(c)), "Moved");
        }
        return Done::ok("MOVE completed");
    }
    let _ = verb;
    match copyuid {
        Some(c) => Done::with_code(code_owned(c), "COPY completed"),
        None => Done::ok("COPY completed"),
    }
}

/// A UID set in the given order (destination UIDs of COPYUID follow the
/// source order, which need not be ascending); runs are compacted.
fn ordered_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    if sorted == uids {
        return sequence_set_string(uids);
    }
    uids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
