//! The SEARCH command (RFC 9051 §6.4.4) with ESEARCH results (RFC 4731,
//! the only form in IMAP4rev2) and SEARCHRES (RFC 5182), and the walk
//! SORT ([`super::sort`]) and THREAD ([`super::thread`]) share. Matching is
//! [`crate::imap::search`]'s; this file walks the session's view in chunks, so
//! the state lock is never held across a body download.

use std::collections::HashMap;

use bytes::Bytes;
use futures::StreamExt;

use imap_codec::imap_types::core::{Charset, Tag};
use imap_codec::imap_types::search::SearchKey;

use crate::imap::cmd::fetch::{PARALLEL_BODIES, SUMMARY_BATCHES_AHEAD, read_ahead};
use crate::imap::grammar::ext::{Ext, SearchReturn};
use crate::imap::response::{Done, Failure, Out, Outcome, astring, code_owned};
use crate::imap::search::{Candidate, Query, Scope, check_charset};
use crate::imap::state::{Authed, Selected, sequence_set_string};

use crate::account::mailbox::SCAN_FROM;
use crate::account::{AccountError, Mailbox};
use crate::mailbox::body::PAGE_MESSAGES;
use crate::mailbox::summary::{MessageSummary, Parts};
use crate::mailbox::text::{Index, decode_headers, indexes_suffice};

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
    scan(selected, &query, None, out, |c| {
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
pub(super) fn scope(selected: &Selected) -> Scope {
    let view = selected.uids();
    Scope {
        max_seq: view.len() as u32,
        max_uid: view.last().copied().unwrap_or(0),
    }
}

/// Runs `query` over the selected mailbox, calling `each` on every match
/// in mailbox order. Reads the state in chunks of [`CHUNK`] messages, so
/// its lock is never held across a body download, and keeps only one
/// chunk's summaries at a time. The candidates' summaries hold the parts
/// the query reads and those `each` reads (`each_reads`: `None` for none);
/// when neither reads any, no summary is read and every candidate shows
/// an empty one.
pub async fn scan(
    selected: &mut Selected,
    query: &Query,
    each_reads: Option<Parts>,
    out: &mut Out<'_>,
    mut each: impl FnMut(&Candidate<'_>),
) -> Result<(), Failure> {
    let parts = match (query.summary_parts(), each_reads) {
        (Some(a), Some(b)) => Some(a.and(b)),
        (a, b) => a.or(b),
    };
    let view: Vec<u32> = selected.uids().to_vec();
    let total = view.len();
    // Over a mailbox of a page or more, BODY and TEXT read the messages'
    // texts from text pages instead of every body; past a scan's size
    // (where summaries are not cached), header keys read the header pages
    // instead of whole summaries. Missing pages are written first
    // (`mailbox::text`).
    let plan = Plan {
        parts,
        total,
        texts: query.needs_body() && total >= PAGE_MESSAGES,
        headers: parts.is_some_and(indexes_suffice) && total > SCAN_FROM,
    };
    // Best effort: a search that cannot write (a store refusing PUTs, a
    // failed read) answers without the pages it lacks, reading bodies and
    // summaries, and fails only if those fail.
    for (wanted, index) in [(plan.texts, Index::Text), (plan.headers, Index::Headers)] {
        if wanted && let Err(e) = selected.mailbox.write_index(index, &view).await {
            tracing::warn!(?index, error = %e, "could not write index pages: searching without them");
        }
    }
    // Chunks end where summary pages do, so that each page (summaries,
    // text and header pages) is read once, by one chunk.
    let lengths = selected.mailbox.read(|s| s.page_chunks(&view, CHUNK)).await;
    let mut ranges = Vec::with_capacity(lengths.len());
    let mut start = 0;
    for n in &lengths {
        ranges.push(start..start + n);
        start += n;
    }
    // Summaries may live in summary pages (a GET each): one batch per
    // chunk, the next ones read while a chunk is matched.
    let reader = selected.mailbox.clone();
    // (Reading nothing, the plan reads no chunk; see `Inputs::default`.)
    let chunks: Vec<Vec<u32>> = match parts.is_some() || plan.texts {
        true => ranges.iter().map(|r| view[r.clone()].to_vec()).collect(),
        false => Vec::new(),
    };
    let mut inputs_ahead = futures::stream::iter(chunks)
        .map(move |chunk| {
            let mailbox = reader.clone();
            read_ahead(async move { plan.read(&mailbox, &chunk).await })
        })
        .buffered(SUMMARY_BATCHES_AHEAD);
    let unread = MessageSummary::empty();
    for range in ranges {
        let first = range.start;
        let chunk = &view[range];
        let rows: Vec<Row> = selected
            .mailbox
            .read(|s| {
                chunk
                    .iter()
                    .enumerate()
                    .filter_map(|(i, uid)| {
                        let m = s.message(*uid)?;
                        Some(Row {
                            seq: (first + i + 1) as u32,
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
        let Inputs {
            mut summaries,
            mut texts,
        } = match inputs_ahead.next().await {
            Some(inputs) => inputs?,
            // No chunk read: the plan reads nothing.
            None => Inputs::default(),
        };
        // Rows with their summary and, for BODY/TEXT keys, their text or body:
        // downloaded a few at a time, as FETCH does, in order.
        let rows: Vec<(Row, Option<MessageSummary>)> = rows
            .into_iter()
            .filter_map(|row| match &mut summaries {
                None => Some((row, None)),
                // Expunged meanwhile: nothing to match.
                Some(summaries) => {
                    let summary = summaries.remove(&row.uid)?;
                    Some((row, Some(summary)))
                }
            })
            .collect();
        let mailbox = &selected.mailbox;
        let needs_body = query.needs_body();
        let mut loaded = futures::stream::iter(rows)
            .map(|(row, summary)| {
                let text = texts.remove(&row.uid);
                async move {
                    let raw = if needs_body && text.is_none() {
                        Some(mailbox.body(row.uid).await)
                    } else {
                        None
                    };
                    (row, summary, raw, text)
                }
            })
            .buffered(PARALLEL_BODIES);
        while let Some((row, summary, raw, text)) = loaded.next().await {
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
                summary: summary.as_ref().unwrap_or(&unread),
                raw: raw.as_deref(),
                text: text.as_deref(),
            };
            if query.matches(&candidate) {
                each(&candidate);
            }
        }
        out.flush_if_full().await?;
    }

    Ok(())
}

/// What a scan reads for each chunk of messages, and from where.
#[derive(Clone, Copy)]
struct Plan {
    /// The summary parts the query and the caller read; `None`: none.
    parts: Option<Parts>,
    /// Messages in the scan.
    total: usize,
    /// Searchable texts from text pages.
    texts: bool,
    /// Search headers from header pages.
    headers: bool,
}

/// What a chunk of a scan is matched with.
#[derive(Default)]
struct Inputs {
    /// Per UID, the summary with the plan's parts; `None` when the plan
    /// reads none. A message missing is expunged: nothing to match.
    summaries: Option<HashMap<u32, MessageSummary>>,
    /// Per UID, the searchable text, for the messages text pages hold.
    texts: HashMap<u32, Bytes>,
}

impl Plan {
    /// The inputs of `chunk`: texts and header fields from index pages
    /// where the plan says and the pages hold them, summaries (only the
    /// parts asked) for the rest.
    async fn read(self, mailbox: &Mailbox, chunk: &[u32]) -> Result<Inputs, AccountError> {
        let texts = match self.texts {
            true => read_best_effort(mailbox, Index::Text, chunk).await,
            false => HashMap::new(),
        };
        let Some(parts) = self.parts else {
            return Ok(Inputs {
                summaries: None,
                texts,
            });
        };
        let mut summaries = HashMap::new();
        // Header pages replace summaries for the messages they hold when
        // nothing else is read of the summary but the structure text
        // pages stand for (`indexes_suffice`, which `self.headers` implies).
        if self.headers {
            for (uid, entry) in read_best_effort(mailbox, Index::Headers, chunk).await {
                if parts.body && !texts.contains_key(&uid) {
                    continue;
                }
                if let Some(search_headers) = decode_headers(&entry) {
                    let mut summary = MessageSummary::empty();
                    summary.search_headers = search_headers;
                    summaries.insert(uid, summary);
                }
            }
        }
        let rest: Vec<u32> = chunk
            .iter()
            .filter(|uid| !summaries.contains_key(uid))
            .copied()
            .collect();
        if !rest.is_empty() {
            summaries.extend(mailbox.batch_parts(&rest, parts, self.total).await?);
        }
        Ok(Inputs {
            summaries: Some(summaries),
            texts,
        })
    }
}

/// The entries of `index` for `chunk`, or none if they cannot be read (a
/// store error): the search then reads bodies and summaries, which
/// report a lasting fault themselves.
async fn read_best_effort(mailbox: &Mailbox, index: Index, chunk: &[u32]) -> HashMap<u32, Bytes> {
    match mailbox.read_index(index, chunk).await {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(?index, error = %e, "could not read index pages: searching without them");
            HashMap::new()
        }
    }
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
pub(super) fn saved_result(options: &SearchReturn, matched: &[u32]) -> Vec<u32> {
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
pub(super) fn require_charset(charset: Option<&Charset<'_>>) -> Result<(), Failure> {
    check_charset(charset).map_err(|_| {
        Failure::no(
            Some(code_owned("BADCHARSET (UTF-8 US-ASCII)".to_owned())),
            "Supported charsets: UTF-8, US-ASCII",
        )
    })
}
