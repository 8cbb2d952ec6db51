//! SORT and UID SORT (RFC 5256 §3), with ESORT (RFC 5267 §3.2) and
//! SORT=DISPLAY (RFC 5957); the orders are [`crate::imap::sort`]'s.

use imap_codec::imap_types::core::{Charset, Tag};
use imap_codec::imap_types::extensions::sort::SortCriterion;
use imap_codec::imap_types::search::SearchKey;

use super::search::{require_charset, saved_result, scan, scope};
use crate::imap::grammar::ext::Ext;
use crate::imap::response::{Done, Out, Outcome, astring};
use crate::imap::search::Query;
use crate::imap::sort::{self, Sortable};
use crate::imap::state::{Authed, Selected};
use crate::mailbox::summary::Parts;

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
    scan(selected, &query, Some(Parts::ALL), out, |c| {
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
