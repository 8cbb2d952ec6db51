//! SORT (RFC 5256 §3) and SORT=DISPLAY (RFC 5957): sort keys of a
//! message, the base subject (RFC 5256 §2.1), and the ordering.
//!
//! Pure: the caller runs the search keys (as SEARCH does), turns each
//! match into a [`Sortable`] (a few short strings, not the summary), and
//! sorts them with [`sort`]. Everything comes from the message summary.
//!
//! # Semantics (as Dovecot, the reference for client compatibility)
//!
//! - Strings compare by bytes after the i;unicode-casemap steps of
//!   RFC 5051 §2 as Dovecot applies them ([`casemap`]): each character's
//!   simple titlecase mapping, then its full compatibility decomposition,
//!   so `É` compares as `E` + U+0301 and sorts among the E's.
//! - SUBJECT: the base subject (§2.1, [`base_subject`]); a missing
//!   Subject: is the empty string.
//! - FROM, TO, CC: the local part of the first address of the field
//!   (§3, `addr-mailbox`), unquoted (`"john doe"` is `john doe`) but not
//!   MIME-decoded, as Dovecot; a group's name as written; empty when
//!   absent.
//! - DISPLAYFROM, DISPLAYTO (RFC 5957 §3.1): the decoded display name of
//!   the first address (raw bytes that are not UTF-8 as U+FFFD), or `local@domain` when it has none (or an
//!   empty one), or a group's name.
//! - DATE: the Date: header as a UTC instant; a missing or invalid Date:
//!   uses INTERNALDATE (§2.2). ARRIVAL: INTERNALDATE. SIZE: RFC822.SIZE.
//! - Messages equal on every criterion keep mailbox order (ascending
//!   sequence numbers, §3), REVERSE or not.

use std::cmp::Ordering;

use icu_normalizer::DecomposingNormalizerBorrowed;
use imap_codec::imap_types::extensions::sort::{SortCriterion, SortKey};

use crate::mailbox::summary::{Address, MessageSummary, decode_text};

/// What one message is sorted by: only the fields the criteria name are
/// filled, so a SORT over a large mailbox keeps a few bytes per match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sortable {
    pub seq: u32,
    pub uid: u32,
    pub arrival: i64,
    pub date: i64,
    pub size: u64,
    pub subject: String,
    pub from: String,
    pub to: String,
    pub cc: String,
    pub display_from: String,
    pub display_to: String,
}

impl Sortable {
    /// The keys `criteria` need of one message.
    pub fn new(
        criteria: &[SortCriterion],
        seq: u32,
        uid: u32,
        internal_date: i64,
        size: u64,
        summary: &MessageSummary,
    ) -> Sortable {
        let mut s = Sortable {
            seq,
            uid,
            arrival: internal_date,
            date: sent_date(summary, internal_date),
            size,
            ..Sortable::default()
        };
        let e = &summary.envelope;
        for c in criteria {
            match c.key {
                SortKey::Subject => s.subject = base_subject(&casemap(subject(summary))).0,
                SortKey::From => s.from = first_mailbox(&e.from),
                SortKey::To => s.to = first_mailbox(&e.to),
                SortKey::Cc => s.cc = first_mailbox(&e.cc),
                SortKey::DisplayFrom => s.display_from = display(&e.from),
                SortKey::DisplayTo => s.display_to = display(&e.to),
                SortKey::Arrival | SortKey::Date | SortKey::Size => {}
            }
        }
        s
    }
}

/// Sorts `items` by `criteria` (RFC 5256 §3), ties in mailbox order.
pub fn sort(items: &mut [Sortable], criteria: &[SortCriterion]) {
    items.sort_by(|a, b| compare(a, b, criteria));
}

fn compare(a: &Sortable, b: &Sortable, criteria: &[SortCriterion]) -> Ordering {
    for c in criteria {
        let o = match c.key {
            SortKey::Arrival => a.arrival.cmp(&b.arrival),
            SortKey::Date => a.date.cmp(&b.date),
            SortKey::Size => a.size.cmp(&b.size),
            SortKey::Subject => a.subject.cmp(&b.subject),
            SortKey::From => a.from.cmp(&b.from),
            SortKey::To => a.to.cmp(&b.to),
            SortKey::Cc => a.cc.cmp(&b.cc),
            SortKey::DisplayFrom => a.display_from.cmp(&b.display_from),
            SortKey::DisplayTo => a.display_to.cmp(&b.display_to),
        };
        let o = if c.reverse { o.reverse() } else { o };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.seq.cmp(&b.seq)
}

/// The sent date for sorting (RFC 5256 §2.2): the Date: header, or
/// INTERNALDATE when it is missing or invalid.
pub fn sent_date(summary: &MessageSummary, internal_date: i64) -> i64 {
    summary.sent_date.unwrap_or(internal_date)
}

/// The decoded value of the first Subject: field ("" when none).
pub fn subject(summary: &MessageSummary) -> &str {
    summary
        .search_headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("subject"))
        .map_or("", |(_, value)| value.as_str())
}

/// The comparison form of `s` under i;unicode-casemap (RFC 5051 §2):
/// every character's simple titlecase mapping (step 1), then the full
/// decomposition of the result (step 2). Dovecot's decomposition table
/// includes compatibility mappings (`ﬁ` is `fi`), so this is NFKD.
pub fn casemap(s: &str) -> String {
    let titled: String = s.chars().map(titlecase).collect();
    DecomposingNormalizerBorrowed::new_nfkd()
        .normalize(&titled)
        .into_owned()
}

/// The simple titlecase mapping (UnicodeData.txt field 14) of `c`: the
/// simple uppercase, except for the Latin digraphs that have a distinct
/// titlecase form; a letter whose uppercase is several characters (`ß`)
/// has no simple mapping and stays as it is.
fn titlecase(c: char) -> char {
    match c {
        '\u{1C4}'..='\u{1C6}' => '\u{1C5}',
        '\u{1C7}'..='\u{1C9}' => '\u{1C8}',
        '\u{1CA}'..='\u{1CC}' => '\u{1CB}',
        '\u{1F1}'..='\u{1F3}' => '\u{1F2}',
        _ => {
            let mut upper = c.to_uppercase();
            match (upper.next(), upper.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        }
    }
}

fn first_mailbox(list: &[Address]) -> String {
    list.first()
        .and_then(|a| a.mailbox.as_ref())
        .map_or_else(String::new, |m| casemap(&unquote(&m.to_str_lossy())))
}

/// A local part as Dovecot's address parser gives it: quoted strings
/// lose their quotes and backslashes (`"john \"jd\" doe".x` is
/// `john "jd" doe.x`, RFC 5322 §3.2.4).
fn unquote(local: &str) -> String {
    let mut out = String::with_capacity(local.len());
    let mut quoted = false;
    let mut chars = local.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => out.extend(chars.next()),
            _ => out.push(c),
        }
    }
    out
}

fn display(list: &[Address]) -> String {
    let Some(a) = list.first() else {
        return String::new();
    };
    if let Some(name) = &a.name {
        // Raw 8-bit that is not UTF-8 compares as U+FFFD, as in Dovecot
        // (not as the Latin-1 guess SEARCH makes).
        let name = decode_text(String::from_utf8_lossy(name.as_bytes()).as_bytes());
        if !name.is_empty() {
            return casemap(&name);
        }
    }
    // A group's name stands alone, as in Dovecot.
    match (&a.mailbox, &a.host) {
        (Some(m), Some(h)) => casemap(&format!(
            "{}@{}",
            unquote(&m.to_str_lossy()),
            h.to_str_lossy()
        )),
        (Some(m), None) => casemap(&m.to_str_lossy()),
        _ => String::new(),
    }
}

/// The base subject of a decoded Subject: value (RFC 5256 §2.1), and
/// whether the subject was a reply or forward (a `Re:`/`Fwd:` leader, a
/// `(fwd)` trailer or a `[fwd: ...]` wrapper were removed), which
/// THREAD's subject merging needs (§4 REFERENCES step 5).
///
/// Letter case is kept; the leaders match ASCII case-insensitively.
/// Whitespace: tabs, CR and LF are spaces, runs of spaces one space.
pub fn base_subject(subject: &str) -> (String, bool) {
    // (1) Encoded words are decoded already; whitespace packed.
    let mut s = String::with_capacity(subject.len());
    let mut last_space = false;
    for ch in subject.chars() {
        if matches!(ch, ' ' | '\t' | '\r' | '\n') {
            if !last_space {
                s.push(' ');
            }
            last_space = true;
        } else {
            s.push(ch);
            last_space = false;
        }
    }
    let mut reply = false;
    let mut start = 0;
    let mut end = s.len();
    loop {
        // (2) Trailers: "(fwd)" and WSP, repeatedly.
        loop {
            let text = &s[start..end];
            if text.ends_with(' ') {
                end -= 1;
            } else if text.len() >= 5
                && text.as_bytes()[text.len() - 5..].eq_ignore_ascii_case(b"(fwd)")
            {
                end -= 5;
                reply = true;
            } else {
                break;
            }
        }
        // (3)-(5) Leaders and blobs, until neither matches.
        loop {
            let mut found = false;
            if let Some(n) = leader(&s[start..end], &mut reply) {
                start += n;
                found = true;
            }
            let text = &s[start..end];
            if let Some(n) = blob(text)
                && n < text.len()
            {
                start += n;
                found = true;
            }
            if !found {
                break;
            }
        }
        // (6) "[fwd:" ... "]": unwrap and start again at (2).
        let text = &s[start..end];
        if text.len() >= 5
            && text.as_bytes()[..5].eq_ignore_ascii_case(b"[fwd:")
            && text.ends_with(']')
        {
            start += 5;
            end -= 1;
            reply = true;
            continue;
        }
        break;
    }
    (s[start..end].to_owned(), reply)
}

/// `subj-leader = (*subj-blob subj-refwd) / WSP`: the length of the
/// prefix removed (a leading space always is).
fn leader(text: &str, reply: &mut bool) -> Option<usize> {
    let b = text.as_bytes();
    let mut removed = 0;
    if b.first() == Some(&b' ') {
        removed = 1;
    }
    let mut i = removed;
    while b.get(i) == Some(&b'[') {
        match blob(&text[i..]) {
            Some(n) => i += n,
            None => return (removed > 0).then_some(removed),
        }
    }
    let starts = |word: &str| {
        b.len() >= i + word.len() && b[i..i + word.len()].eq_ignore_ascii_case(word.as_bytes())
    };
    if starts("re") {
        i += 2;
    } else if starts("fwd") {
        i += 3;
    } else if starts("fw") {
        i += 2;
    } else {
        return (removed > 0).then_some(removed);
    }
    if b.get(i) == Some(&b' ') {
        i += 1;
    }
    if b.get(i) == Some(&b'[') {
        match blob(&text[i..]) {
            Some(n) => i += n,
            None => return (removed > 0).then_some(removed),
        }
    }
    if b.get(i) != Some(&b':') {
        return (removed > 0).then_some(removed);
    }
    *reply = true;
    Some(i + 1)
}

/// `subj-blob = "[" *BLOBCHAR "]" *WSP`: its length, if `text` starts
/// with one.
fn blob(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    if b.first() != Some(&b'[') {
        return None;
    }
    let close = 1 + b[1..].iter().position(|&c| c == b'[' || c == b']')?;
    if b[close] != b']' {
        return None;
    }
    let mut n = close + 1;
    if b.get(n) == Some(&b' ') {
        n += 1;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::summary::RawText;

    fn base(s: &str) -> (String, bool) {
        base_subject(s)
    }

    #[test]
    fn base_subject_strips_leaders_trailers_and_wrappers() {
        let cases = [
            ("Hello", "Hello", false),
            ("Re: Hello", "Hello", true),
            ("RE: re: Fwd: FW: Hello", "Hello", true),
            ("Re[2]: Hello", "Hello", true),
            ("Re [2]: Hello", "Hello", true),
            ("[list] Re: Hello", "Hello", true),
            ("[list] [other] Hello", "Hello", false),
            // A blob alone is the whole subject: kept (§2.1 step 4).
            ("[list]", "[list]", false),
            ("Hello (fwd)", "Hello", true),
            ("Hello (FWD)  (fwd) ", "Hello", true),
            ("[Fwd: Re: Hello]", "Hello", true),
            ("[fwd: [fwd: Hello (fwd)]]", "Hello", true),
            ("Re:Hello", "Hello", true),
            ("  Re:\t\tHello   world  ", "Hello world", true),
            ("Reply: Hello", "Reply: Hello", false),
            ("Fwd Hello", "Fwd Hello", false),
            ("", "", false),
            ("Re:", "", true),
            ("[unclosed Hello", "[unclosed Hello", false),
            ("Ré: café", "Ré: café", false),
        ];
        for (subject, want, reply) in cases {
            assert_eq!(base(subject), (want.to_owned(), reply), "{subject:?}");
        }
    }

    #[test]
    fn casemap_titlecases_then_decomposes_as_rfc_5051() {
        let cases = [
            ("Élodie", "E\u{301}LODIE"),
            // Already decomposed: the same key.
            ("E\u{301}lodie", "E\u{301}LODIE"),
            ("réunion", "RE\u{301}UNION"),
            // No simple titlecase: ß stays; ﬁ decomposes (compatibility)
            // after titlecasing, so its letters stay lower case.
            ("straße", "STRAßE"),
            ("ﬁn", "fiN"),
            // Digraphs titlecase to their title form (ǅ), which decomposes.
            ("ǆ", "Dz\u{30C}"),
            ("_a", "_A"),
        ];
        for (s, want) in cases {
            assert_eq!(casemap(s), want, "{s:?}");
        }
    }

    #[test]
    fn accented_letters_sort_with_their_base_letter() {
        let criteria = [SortCriterion {
            reverse: false,
            key: SortKey::Subject,
        }];
        let mut items: Vec<Sortable> = ["Zoo", "Élodie", "Frank", "Eve"]
            .into_iter()
            .enumerate()
            .map(|(i, subject)| Sortable {
                seq: i as u32 + 1,
                subject: casemap(subject),
                ..Sortable::default()
            })
            .collect();
        sort(&mut items, &criteria);
        let seqs: Vec<u32> = items.iter().map(|i| i.seq).collect();
        // EVE < E\u{301}LODIE (U+0301 > 'V'), both before FRANK.
        assert_eq!(seqs, [4, 2, 3, 1]);
    }

    #[test]
    fn address_keys_unquote_local_parts_and_keep_group_names_encoded() {
        let addr = |mailbox: &str, host: Option<&str>| Address {
            mailbox: Some(RawText::from(mailbox.as_bytes())),
            host: host.map(|h| RawText::from(h.as_bytes())),
            ..Address::default()
        };
        let quoted = [addr("\"john \\\"jd\\\" doe\".x", Some("example.org"))];
        assert_eq!(first_mailbox(&quoted), "JOHN \"JD\" DOE.X");
        assert_eq!(display(&quoted), "JOHN \"JD\" DOE.X@EXAMPLE.ORG");
        let group = [addr("=?UTF-8?B?w4lxdWlwZQ==?=", None)];
        assert_eq!(first_mailbox(&group), "=?UTF-8?B?W4LXDWLWZQ==?=");
        assert_eq!(display(&group), "=?UTF-8?B?W4LXDWLWZQ==?=");
    }

    #[test]
    fn display_names_that_are_not_utf8_compare_as_replacement_characters() {
        let to = [Address {
            name: Some(RawText::from(&b"Fran\xe7ois"[..])),
            ..Address::default()
        }];
        assert_eq!(display(&to), "FRAN\u{FFFD}OIS");
    }

    #[test]
    fn ties_keep_mailbox_order_even_reversed() {
        let criteria = [SortCriterion {
            reverse: true,
            key: SortKey::Size,
        }];
        let mut items: Vec<Sortable> = [(1, 10), (2, 20), (3, 10), (4, 20)]
            .into_iter()
            .map(|(seq, size)| Sortable {
                seq,
                size,
                ..Sortable::default()
            })
            .collect();
        sort(&mut items, &criteria);
        let seqs: Vec<u32> = items.iter().map(|i| i.seq).collect();
        assert_eq!(seqs, [2, 4, 1, 3]);
    }
}
