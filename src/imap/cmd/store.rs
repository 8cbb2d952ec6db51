//! STORE and UID STORE (RFC 9051 §6.4.6), with CONDSTORE's
//! UNCHANGEDSINCE (RFC 7162 §3.1.3), and the keyword limit STORE and
//! APPEND share.

use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};

use crate::imap::response::{Done, Failure, Out, Outcome, code, code_owned};
use crate::imap::state::selected::MAX_KEYWORDS;
use crate::imap::state::{Enabled, Selected, flag_name, sequence_set_string};

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
    enabled: Enabled,
    out: &mut Out<'_>,
) -> Outcome {
    let condstore = enabled.condstore;
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
    selected.report(enabled, out, false).await;
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
        selected.report(enabled, out, false).await
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
                let uid = if by_uid || condstore {
                    format!(" UID {uid}")
                } else {
                    String::new()
                };
                let modseq = if condstore {
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
