//! The SEARCH command (RFC 9051 §6.4.4) with ESEARCH results (RFC 4731,
//! the only form in IMAP4rev2) and SEARCHRES (RFC 5182), and the commands
//! that search then order: SORT with ESORT, THREAD (RFC 5256, RFC 5267). Matching is
//! [`crate::imap::search`]'s; this file walks the session's view in chunks, so
//! the state lock is never held across a body download.

use std::collections::HashMap;

use futures::StreamExt;

use imap_codec::imap_types::core::{Charset, Tag};
use imap_codec::imap_types::extensions::sort::SortCriterion;
use imap_codec::imap_types::extensions::thread::ThreadingAlgorithm;
use imap_codec::imap_types::search::SearchKey;

use crate::imap::cmd::fetch::PARALLEL_BODIES;
use crate::imap::extend::{Ext, SearchReturn};
use crate::imap::response::{Done, Failure, Out, Outcome, astring, code_owned};
use crate::imap::search::{Candidate, Query, Scope, check_charset};
use crate::imap::sort::{self, Sortable};
use crate::imap::state::{Authed, Selected, sequence_set_string};
use crate::imap::thread::{self, Threadable};

use crate::account::AccountError;
use crate::mailbox::summary::MessageSummary;

/// What SEARCH reads of a message from the state.
struct Row {
    seq: u32,
    uid: u32,
    modseq: u64,
    flags: Vec<String>,
    size: u64,
    internal_date: i64,
}

/// Messages evaluated per read of the state.
const CHUNK: usize = 256;

#[allow(clippy::too_many_arguments)]
pub async fn search(
    tag: &Tag<'_>,
    authed: &mut Authed,
    selected: &mut Selected,
    charset: Option<Charset<'_>>,
    criteria: Vec<SearchKey<'_>>,
    by_uid: bool,
    ext: Ext,
    out: &mut Out<'_>,
) -> Outcome {
    require_charset(charset.as_ref())?;
    let query = Query::new(&criteria, scope(selected));
    let mut matched: Vec<u32> = Vec::new(); // UIDs, ascending
    let mut modseqs: Vec<u64> = Vec::new(); // of `matched`, in its order
    scan(selected, &query, out, |c| {
        matched.push(c.uid);
        modseqs.push(c.modseq);
    })
    .await?;

    // RFC 7162 §3.1.5: a MODSEQ key turns CONDSTORE on and the answer
    // carries the highest MODSEQ of the messages it returns.
    let modseq = if query.has_modseq() {
        authed.enable_condstore(Some(selected), out);
        answer_modseq(ext.search_return.as_ref(), &modseqs)
    } else {
        None
    };
    let numbers: Vec<u32> = if by_uid {
        matched.clone()
    } else {
        matched.iter().filter_map(|u| selected.seq_of(*u)).collect()
    };
    match (ext.search_return, authed.enabled.rev2) {
        (None, false) => {
            let mut line = String::from("SEARCH");
            for n in &numbers {
                line.push(' ');
                line.push_str(&n.to_string());
            }
            if let Some(m) = modseq {
                line.push_str(&format!(" (MODSEQ {m})"));
            }
            out.untagged(&line);
        }
        (options, _) => {
            let options = options.unwrap_or(SearchReturn {
                all: true,
                ..SearchReturn::default()
            });
            if options.save {
                selected.saved = saved_result(&options, &matched);
            }
            if !(options.save && !options.min && !options.max && !options.count && !options.all) {
                let mut line = esearch(tag, by_uid, &options, &numbers);
                if let Some(m) = modseq {
                    line.push_str(&format!(" MODSEQ {m}"));
                }
                out.untagged(&line);
            }
        }
    }
    Done::ok(if by_uid {
        "UID SEARCH completed"
    } else {
        "SEARCH completed"
    })
}

/// `*` of the selected mailbox's view (RFC 9051 §6.4.4).
fn scope(selected: &Selected) -> Scope {
    let view = selected.uids();
    Scope {
        max_seq: view.len() as u32,
        max_uid: view.last().copied().unwrap_or(0),
    }
}

/// Runs `query` over the selected mailbox, calling `each` on every match
/// in mailbox order. Reads the state in chunks of [`CHUNK`] messages, so
/// its lock is never held across a body download, and keeps only one
/// chunk's summaries at a time.
pub async fn scan(
    selected: &mut Selected,
    query: &Query,
    out: &mut Out<'_>,
    mut each: impl FnMut(&Candidate<'_>),
) -> Result<(), Failure> {
    let view: Vec<u32> = selected.uids().to_vec();
    for (chunk_index, chunk) in view.chunks(CHUNK).enumerate() {
        let rows: Vec<Row> = selected
            .mailbox
            .read(|s| {
                chunk
                    .iter()
                    .enumerate()
                    .filter_map(|(i, uid)| {
                        let m = s.message(*uid)?;
                        Some(Row {
                            seq: (chunk_index * CHUNK + i + 1) as u32,
                            uid: m.uid,
                            modseq: m.modseq,
                            flags: m.flags.iter().map(|f| (*f).to_owned()).collect(),
                            size: m.message.size,
                            internal_date: m.message.internal_date,
                        })
                    })
                    .collect()
            })
            .await;
        // Summaries may live in summary pages: one batch per chunk.
        let uids: Vec<u32> = rows.iter().map(|r| r.uid).collect();
        let mut summaries: HashMap<u32, MessageSummary> = selected
            .mailbox
            .summaries(&uids)
            .await?
            .into_iter()
            .collect();
        // Rows with their summary and, for BODY/TEXT keys, their body:
        // downloaded a few at a time, as FETCH does, in order.
        let rows: Vec<(Row, MessageSummary)> = rows
            .into_iter()
            .filter_map(|row| {
                // Expunged meanwhile: nothing to match.
                let summary = summaries.remove(&row.uid)?;
                Some((row, summary))
            })
            .collect();
        let mailbox = &selected.mailbox;
        let needs_body = query.needs_body();
        let mut loaded = futures::stream::iter(rows)
            .map(|(row, summary)| async move {
                let raw = if needs_body {
                    Some(mailbox.body(row.uid).await)
                } else {
                    None
                };
                (row, summary, raw)
            })
            .buffered(PARALLEL_BODIES);
        while let Some((row, summary, raw)) = loaded.next().await {
            let Row {
                seq,
                uid,
                modseq,
                flags,
                size,
                internal_date,
            } = row;
            let raw = match raw {
                None => None,
                Some(Ok(b)) => Some(b),
                // Expunged meanwhile: nothing to match.
                Some(Err(AccountError::NoSuchMessage(_))) => continue,
                Some(Err(e)) => return Err(e.into()),
            };
            let mut flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
            if selected.is_recent(uid) {
                flag_refs.push("\\Recent");
            }
            let candidate = Candidate {
                seq,
                uid,
                modseq,
                flags: &flag_refs,
                size,
                internal_date,
                summary: &summary,
                raw: raw.as_deref(),
            };
            if query.matches(&candidate) {
                each(&candidate);
            }
        }
        out.flush_if_full().await?;
    }

    Ok(())
}

/// The MODSEQ a SEARCH with a MODSEQ key answers (`None`: no match):
/// the highest of the matches (plain SEARCH, RFC 7162 §3.1.5; ESEARCH
/// with ALL or COUNT), or with only MIN and/or MAX, the highest of the
/// messages they return (RFC 4731 §3.2).
fn answer_modseq(options: Option<&SearchReturn>, modseqs: &[u64]) -> Option<u64> {
    let (first, last) = (modseqs.first()?, modseqs.last()?);
    match options {
        Some(o) if (o.min || o.max) && !o.all && !o.count => {
            let min = if o.min { *first } else { 0 };
            let max = if o.max { *last } else { 0 };
            Some(min.max(max))
        }
        _ => modseqs.iter().copied().max(),
    }
}

/// RFC 5182 §2.4: with SAVE and only MIN and/or MAX, just those are saved.
fn saved_result(options: &SearchReturn, matched: &[u32]) -> Vec<u32> {
    if (options.min || options.max) && !options.all && !options.count {
        let mut saved = Vec::new();
        if options.min
            && let Some(first) = matched.first()
        {
            saved.push(*first);
        }
        if options.max
            && let Some(last) = matched.last()
            && !saved.contains(last)
        {
            saved.push(*last);
        }
        return saved;
    }
    matched.to_vec()
}

/// `* ESEARCH (TAG "t") [UID] [MIN n] [MAX n] [COUNT n] [ALL set]`
/// (RFC 4731 §3.1, RFC 9051 §7.3.4).
fn esearch(tag: &Tag<'_>, by_uid: bool, options: &SearchReturn, numbers: &[u32]) -> String {
    let mut line = format!("ESEARCH (TAG {})", astring(tag.as_ref()));
    if by_uid {
        line.push_str(" UID");
    }
    if options.min
        && let Some(n) = numbers.first()
    {
        line.push_str(&format!(" MIN {n}"));
    }
    if options.max
        && let Some(n) = numbers.last()
    {
        line.push_str(&format!(" MAX {n}"));
    }
    if options.count {
        line.push_str(&format!(" COUNT {}", numbers.len()));
    }
    if options.all && !numbers.is_empty() {
        line.push_str(&format!(" ALL {}", sequence_set_string(numbers)));
    }
    line
}

/// `NO [BADCHARSET ...]` unless the charset is one we take (RFC 9051
/// §6.4.4; RFC 5256 §3 makes it mandatory in SORT and THREAD).
fn require_charset(charset: Option<&Charset<'_>>) -> Result<(), Failure> {
    check_charset(charset).map_err(|_| {
        Failure::no(
            Some(code_owned("BADCHARSET (UTF-8 US-ASCII)".to_owned())),
            "Supported charsets: UTF-8, US-ASCII",
        )
    })
}

/// SORT and UID SORT (RFC 5256 §3; keys and order in [`crate::imap::sort`]),
/// answered as ESEARCH when RETURN options were given (ESORT, RFC 5267
/// §3.2: MIN and MAX are the first and last in sort order, ALL lists the
/// matches in sort order).
#[allow(clippy::too_many_arguments)]
pub async fn sort(
    tag: &Tag<'_>,
    authed: &mut Authed,
    selected: &mut Selected,
    criteria: &[SortCriterion],
    charset: &Charset<'_>,
    keys: &[SearchKey<'_>],
    by_uid: bool,
    ext: Ext,
    out: &mut Out<'_>,
) -> Outcome {
    require_charset(Some(charset))?;
    let query = Query::new(keys, scope(selected));
    let mut items: Vec<Sortable> = Vec::new();
    let mut highest_modseq = 0;
    scan(selected, &query, out, |c| {
        highest_modseq = highest_modseq.max(c.modseq);
        items.push(Sortable::new(
            criteria,
            c.seq,
            c.uid,
            c.internal_date,
            c.size,
            c.summary,
        ));
    })
    .await?;
    sort::sort(&mut items, criteria);
    let numbers: Vec<u32> = items
        .iter()
        .filter_map(|i| {
            if by_uid {
                Some(i.uid)
            } else {
                selected.seq_of(i.uid)
            }
        })
        .collect();
    // RFC 7162 §3.1.5: a MODSEQ key turns CONDSTORE on and the answer
    // carries the highest MODSEQ of the matches.
    let modseq = if query.has_modseq() && !items.is_empty() {
        authed.enable_condstore(Some(selected), out);
        Some(highest_modseq)
    } else {
        None
    };
    match ext.search_return {
        None => {
            let mut line = String::from("SORT");
            for n in &numbers {
                line.push_str(&format!(" {n}"));
            }
            if let Some(m) = modseq {
                line.push_str(&format!(" (MODSEQ {m})"));
            }
            out.untagged(&line);
        }
        Some(options) => {
            if options.save {
                let mut uids: Vec<u32> = items.iter().map(|i| i.uid).collect();
                uids.sort_unstable();
                selected.saved = saved_result(&options, &uids);
            }
            if !(options.save && !options.min && !options.max && !options.count && !options.all) {
                let mut line = format!("ESEARCH (TAG {})", astring(tag.as_ref()));
                if by_uid {
                    line.push_str(" UID");
                }
                if let (true, Some(n)) = (options.min, numbers.first()) {
                    line.push_str(&format!(" MIN {n}"));
                }
                if let (true, Some(n)) = (options.max, numbers.last()) {
                    line.push_str(&format!(" MAX {n}"));
                }
                if options.count {
                    line.push_str(&format!(" COUNT {}", numbers.len()));
                }
                if options.all && !numbers.is_empty() {
                    line.push_str(&format!(" ALL {}", ordered_set_string(&numbers)));
                }
                if let Some(m) = modseq {
                    line.push_str(&format!(" MODSEQ {m}"));
                }
                out.untagged(&line);
            }
        }
    }
    Done::ok(if by_uid {
        "UID SORT completed"
    } else {
        "SORT completed"
    })
}

/// Numbers in the order given as a sequence set, ascending runs written
/// as ranges (`5,1:3,4` stays in that order: ESORT's ALL is in sort
/// order, RFC 5267 §3.2).
fn ordered_set_string(numbers: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < numbers.len() {
        let start = numbers[i];
        let mut end = start;
        while i + 1 < numbers.len() && Some(numbers[i + 1]) == end.checked_add(1) {
            i += 1;
            end = numbers[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// THREAD and UID THREAD (RFC 5256 §3; algorithms in [`crate::imap::thread`]).
pub async fn thread(
    selected: &mut Selected,
    algorithm: &ThreadingAlgorithm<'_>,
    charset: &Charset<'_>,
    keys: &[SearchKey<'_>],
    by_uid: bool,
    out: &mut Out<'_>,
) -> Outcome {
    let references = match algorithm {
        ThreadingAlgorithm::References => true,
        ThreadingAlgorithm::OrderedSubject => false,
        ThreadingAlgorithm::Other(other) => {
            return Err(Failure::bad(format!(
                "Unknown threading algorithm {}",
                other.as_ref()
            )));
        }
    };
    require_charset(Some(charset))?;
    let query = Query::new(keys, scope(selected));
    let mut items: Vec<Threadable> = Vec::new();
    scan(selected, &query, out, |c| {
        items.push(Threadable::new(c.seq, c.uid, c.internal_date, c.summary));
    })
    .await?;
    let threads = if references {
        thread::references(&items)
    } else {
        thread::ordered_subject(&items)
    };
    let list = threads.write(|i| {
        let uid = items[i].uid;
        if by_uid {
            uid
        } else {
            selected.seq_of(uid).unwrap_or(items[i].seq)
        }
    });
    if list.is_empty() {
        out.untagged("THREAD");
    } else {
        out.untagged(&format!("THREAD {list}"));
    }
    Done::ok(if by_uid {
        "UID THREAD completed"
    } else {
        "THREAD completed"
    })
}
