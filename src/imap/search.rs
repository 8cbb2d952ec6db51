//! SEARCH evaluation (RFC 9051 §6.4.4, RFC 3501 §6.4.4, and the MODSEQ key
//! of RFC 7162 §3.1.5) over a mailbox's messages.
//!
//! Pure: no I/O, no async, no lock. The caller compiles the client's keys
//! once per command into a [`Query`], asks [`Query::needs_body`] whether
//! the raw messages must be read (BODY and TEXT need them), and tests each
//! message as a [`Candidate`]. Everything else is answered from the
//! message summary computed at ingestion (`mailbox::summary`).
//!
//! # Semantics
//!
//! - Strings match as case-insensitive substrings of *decoded* text: RFC
//!   2047 encoded words decoded and charsets converted to UTF-8 (the
//!   summary's search headers already are), both sides case-folded
//!   (Unicode lowercase, plus `ß` → `ss` and final sigma → sigma).
//!   There is no Unicode normalisation (NFC/NFD forms do not match each
//!   other).
//! - FROM, TO, CC and BCC match the decoded header text, or the decoded
//!   display form `Name <local@domain>` of any of its addresses (as
//!   Dovecot does), so `"Andre Dupont <andre@"` matches a quoted name.
//! - HEADER matches every occurrence of the field; an empty string matches
//!   any message that has the field. SUBJECT is `HEADER Subject`.
//! - BODY matches the decoded text of the text parts (transfer encoding
//!   and charset decoded, HTML reduced to its text), including those of
//!   attached messages, and the decoded header fields of attached messages
//!   (`Name: value`); other parts are not searched. TEXT is BODY or any
//!   top-level header field name or decoded value.
//! - Dates compare whole days. INTERNALDATE is kept as a Unix time, so its
//!   day is the UTC day. The sent date is the day written in the Date:
//!   header, regardless of its time and zone (RFC 9051 §6.4.4: "disregarding
//!   time and timezone"); a message without a valid Date: uses its
//!   INTERNALDATE, as Dovecot does.
//! - RECENT, NEW and OLD look for `\Recent` among the candidate's flags:
//!   the caller adds it for messages recent in the session (never in
//!   IMAP4rev2 sessions, where RECENT and NEW then match nothing).
//! - `*` in a sequence set is the largest sequence number or UID of the
//!   mailbox, and a range matches in either order (RFC 9051 §6.4.9: `UID
//!   559:*` includes the last message even above every UID).
//! - MODSEQ matches messages whose mod-sequence is at least the value; the
//!   optional entry name is ignored, since we keep one mod-sequence per
//!   message (RFC 7162 §3.1.5 allows it).

use std::cell::OnceCell;

use imap_codec::imap_types::core::Charset;
use imap_codec::imap_types::datetime::NaiveDate;
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

use crate::mailbox::summary::{Address, MessageSummary, Parts};
use crate::mailbox::text::{
    PART_SEPARATOR, decode_header_text, fold, fold_str, searchable_text, text_contains,
};

/// The charsets SEARCH accepts, as the `BADCHARSET` response code lists
/// them (RFC 9051 §6.4.4 requires both).
pub const SUPPORTED_CHARSETS: [&str; 2] = ["UTF-8", "US-ASCII"];

/// A SEARCH named a charset we do not support: the caller answers `NO
/// [BADCHARSET (UTF-8 US-ASCII)]` (RFC 9051 §7.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported SEARCH charset {0:?}")]
pub struct BadCharset(pub String);

/// Accepts no charset, UTF-8 and US-ASCII (any case). Search strings are
/// then taken as UTF-8 (US-ASCII is a subset).
pub fn check_charset(charset: Option<&Charset<'_>>) -> Result<(), BadCharset> {
    let Some(charset) = charset else {
        return Ok(());
    };
    let name = match charset {
        Charset::Atom(atom) => atom.as_ref(),
        Charset::Quoted(quoted) => quoted.as_ref(),
    };
    if SUPPORTED_CHARSETS
        .iter()
        .any(|s| s.eq_ignore_ascii_case(name))
    {
        Ok(())
    } else {
        Err(BadCharset(name.to_owned()))
    }
}

/// The largest sequence number and UID of the mailbox, which `*` stands
/// for (0 when the mailbox is empty: `*` then matches nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    pub max_seq: u32,
    pub max_uid: u32,
}

/// One message as SEARCH sees it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// Its message sequence number in the session.
    pub seq: u32,
    pub uid: u32,
    /// RFC 7162 §3.1.1 MODSEQ.
    pub modseq: u64,
    /// Flags currently set, as IMAP writes them (`\Seen`, `$Forwarded`).
    pub flags: &'a [&'a str],
    /// RFC822.SIZE.
    pub size: u64,
    /// INTERNALDATE, Unix seconds (`MessageRef::internal_date`).
    pub internal_date: i64,
    pub summary: &'a MessageSummary,
    /// The raw message as stored. Needed only when [`Query::needs_body`]
    /// says so, and only without [`Candidate::text`]; without either,
    /// BODY and TEXT cannot match the body (TEXT still matches headers).
    pub raw: Option<&'a [u8]>,
    /// The message's searchable text, from its text page
    /// (`mailbox::text::searchable_text`): when given, the body is not
    /// decoded again and `raw` is not needed.
    pub text: Option<&'a [u8]>,
}

/// The search keys of one SEARCH command, compiled: needles folded once,
/// sequence sets resolved against the mailbox's `*` and sorted. The keys
/// are ANDed, as in the command.
#[derive(Clone, Debug)]
pub struct Query {
    root: Node,
    needs_body: bool,
    has_modseq: bool,
}

impl Query {
    /// Compiles `keys` (ANDed) for a mailbox whose largest sequence number
    /// and UID are `scope`.
    pub fn new(keys: &[SearchKey<'_>], scope: Scope) -> Query {
        let mut query = Query {
            root: Node::Const(true),
            needs_body: false,
            has_modseq: false,
        };
        query.root = Node::And(keys.iter().map(|k| query.compile(k, scope)).collect());
        query
    }

    /// Whether some key needs the raw message (BODY, TEXT): the caller
    /// then reads it and fills [`Candidate::raw`].
    pub fn needs_body(&self) -> bool {
        self.needs_body
    }

    /// Whether the keys include MODSEQ: the response then carries the
    /// highest mod-sequence of the matches (RFC 7162 §3.1.5), and CONDSTORE
    /// is enabled for the session (§3.1).
    pub fn has_modseq(&self) -> bool {
        self.has_modseq
    }

    /// The parts of a message's summary the keys read (see
    /// [`MessageSummary::decode`]), or `None` when they read no summary at
    /// all (flags, sizes, arrival dates, UIDs, MODSEQ): `SEARCH UNSEEN`
    /// then reads no summary page.
    pub fn summary_parts(&self) -> Option<Parts> {
        parts_of(&self.root)
    }

    /// Whether the message matches every key.
    pub fn matches(&self, candidate: &Candidate<'_>) -> bool {
        let eval = Eval {
            c: candidate,
            body: OnceCell::new(),
        };
        eval.node(&self.root)
    }

    fn compile(&mut self, key: &SearchKey<'_>, scope: Scope) -> Node {
        use SearchKey as K;
        let flag = |name: &str, set: bool| Node::Flag {
            name: name.to_owned(),
            set,
        };
        let header = |name: &str, needle: &dyn AsRef<[u8]>| Node::Header {
            name: name.to_owned(),
            needle: Needle::new(needle.as_ref()),
        };
        let address = |list: AddressField, needle: &dyn AsRef<[u8]>| Node::Address {
            list,
            needle: Needle::new(needle.as_ref()),
        };
        match key {
            K::And(keys) => Node::And(
                keys.as_ref()
                    .iter()
                    .map(|k| self.compile(k, scope))
                    .collect(),
            ),
            K::Not(inner) => Node::Not(Box::new(self.compile(inner, scope))),
            K::Or(a, b) => Node::Or(
                Box::new(self.compile(a, scope)),
                Box::new(self.compile(b, scope)),
            ),
            K::SequenceSet(set) => Node::Seq(Ranges::new(set, scope.max_seq)),
            K::Uid(set) => Node::Uid(Ranges::new(set, scope.max_uid)),
            K::All => Node::Const(true),
            // RFC 3501 §6.4.4: `\Recent` is in the candidate's flags when
            // the message is recent in the session.
            K::Recent => flag("\\Recent", true),
            K::Old => flag("\\Recent", false),
            K::New => Node::And(vec![flag("\\Recent", true), flag("\\Seen", false)]),
            K::Answered => flag("\\Answered", true),
            K::Deleted => flag("\\Deleted", true),
            K::Draft => flag("\\Draft", true),
            K::Flagged => flag("\\Flagged", true),
            K::Seen => flag("\\Seen", true),
            K::Unanswered => flag("\\Answered", false),
            K::Undeleted => flag("\\Deleted", false),
            K::Undraft => flag("\\Draft", false),
            K::Unflagged => flag("\\Flagged", false),
            K::Unseen => flag("\\Seen", false),
            K::Keyword(k) => flag(k.as_ref(), true),
            K::Unkeyword(k) => flag(k.as_ref(), false),
            K::Larger(n) => Node::Larger(u64::from(*n)),
            K::Smaller(n) => Node::Smaller(u64::from(*n)),
            K::Before(d) => Node::Internal(Cmp::Before, search_day(d)),
            K::On(d) => Node::Internal(Cmp::On, search_day(d)),
            K::Since(d) => Node::Internal(Cmp::Since, search_day(d)),
            K::SentBefore(d) => Node::Sent(Cmp::Before, search_day(d)),
            K::SentOn(d) => Node::Sent(Cmp::On, search_day(d)),
            K::SentSince(d) => Node::Sent(Cmp::Since, search_day(d)),
            K::Subject(s) => header("Subject", s),
            K::Header(name, s) => header(&String::from_utf8_lossy(name.as_ref()), s),
            K::From(s) => address(AddressField::From, s),
            K::To(s) => address(AddressField::To, s),
            K::Cc(s) => address(AddressField::Cc, s),
            K::Bcc(s) => address(AddressField::Bcc, s),
            K::Body(s) => {
                self.needs_body = true;
                Node::Body(Needle::new(s.as_ref()))
            }
            K::Text(s) => {
                self.needs_body = true;
                Node::Text(Needle::new(s.as_ref()))
            }
            K::ModSequence { modseq, .. } => {
                self.has_modseq = true;
                Node::ModSeq(*modseq)
            }
            // Keys of extensions not enabled in the codec today (WITHIN,
            // RFC 5032): match nothing rather than fail to build if a
            // feature is turned on before they are implemented here.
            #[allow(unreachable_patterns)]
            _ => Node::Const(false),
        }
    }
}

/// The summary parts `node` reads when [`Eval::node`] evaluates it.
fn parts_of(node: &Node) -> Option<Parts> {
    let only = |parts: Parts| Some(parts);
    let either = |a: Option<Parts>, b: Option<Parts>| match (a, b) {
        (Some(a), Some(b)) => Some(a.and(b)),
        (a, b) => a.or(b),
    };
    match node {
        Node::Const(_)
        | Node::Flag { .. }
        | Node::Seq(_)
        | Node::Uid(_)
        | Node::Larger(_)
        | Node::Smaller(_)
        | Node::Internal(..)
        | Node::ModSeq(_) => None,
        // The Date: field as written, in the envelope (`sent_day`).
        Node::Sent(..) => only(Parts {
            envelope: true,
            ..Parts::NONE
        }),
        Node::Header { .. } => only(Parts {
            search_headers: true,
            ..Parts::NONE
        }),
        Node::Address { .. } => only(Parts {
            search_headers: true,
            envelope: true,
            ..Parts::NONE
        }),
        // `body_texts` finds attached messages' headers by the structure.
        Node::Body(_) => only(Parts {
            body: true,
            ..Parts::NONE
        }),
        Node::Text(_) => only(Parts {
            search_headers: true,
            body: true,
            ..Parts::NONE
        }),
        Node::Not(inner) => parts_of(inner),
        Node::Or(a, b) => either(parts_of(a), parts_of(b)),
        Node::And(nodes) => nodes.iter().map(parts_of).fold(None, either),
    }
}

/// A compiled search key.
#[derive(Clone, Debug)]
enum Node {
    Const(bool),
    /// A flag or keyword (compared ASCII case-insensitively: RFC 9051
    /// §2.3.2 flags are atoms, keywords case-insensitive).
    Flag {
        name: String,
        set: bool,
    },
    Seq(Ranges),
    Uid(Ranges),
    Larger(u64),
    Smaller(u64),
    /// INTERNALDATE day against a day number.
    Internal(Cmp, i64),
    /// Sent day against a day number.
    Sent(Cmp, i64),
    Header {
        name: String,
        needle: Needle,
    },
    Address {
        list: AddressField,
        needle: Needle,
    },
    Body(Needle),
    Text(Needle),
    ModSeq(u64),
    Not(Box<Node>),
    Or(Box<Node>, Box<Node>),
    And(Vec<Node>),
}

#[derive(Clone, Copy, Debug)]
enum Cmp {
    Before,
    On,
    Since,
}

impl Cmp {
    fn test(self, day: i64, key: i64) -> bool {
        match self {
            Cmp::Before => day < key,
            Cmp::On => day == key,
            Cmp::Since => day >= key,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum AddressField {
    From,
    To,
    Cc,
    Bcc,
}

impl AddressField {
    fn header(self) -> &'static str {
        match self {
            AddressField::From => "From",
            AddressField::To => "To",
            AddressField::Cc => "Cc",
            AddressField::Bcc => "Bcc",
        }
    }

    fn addresses(self, summary: &MessageSummary) -> &[Address] {
        let e = &summary.envelope;
        match self {
            AddressField::From => &e.from,
            AddressField::To => &e.to,
            AddressField::Cc => &e.cc,
            AddressField::Bcc => &e.bcc,
        }
    }
}

/// A sequence set resolved against `*`: sorted, merged inclusive ranges.
#[derive(Clone, Debug)]
struct Ranges(Vec<(u32, u32)>);

impl Ranges {
    fn new(set: &SequenceSet, star: u32) -> Ranges {
        let value = |v: &SeqOrUid| match v {
            SeqOrUid::Value(n) => n.get(),
            SeqOrUid::Asterisk => star,
        };
        let mut ranges: Vec<(u32, u32)> = set
            .0
            .as_ref()
            .iter()
            .map(|s| match s {
                Sequence::Single(v) => (value(v), value(v)),
                Sequence::Range(a, b) => {
                    let (a, b) = (value(a), value(b));
                    (a.min(b), a.max(b))
                }
            })
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (a, b) in ranges {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        Ranges(merged)
    }

    fn contains(&self, n: u32) -> bool {
        // The first range ending at or after `n`.
        let i = self.0.partition_point(|&(_, end)| end < n);
        self.0.get(i).is_some_and(|&(start, _)| start <= n)
    }
}

/// A search string, case-folded once.
#[derive(Clone, Debug)]
struct Needle {
    folded: String,
}

impl Needle {
    fn new(bytes: &[u8]) -> Needle {
        Needle {
            // IMAP strings cannot hold NUL (RFC 9051 §4.3); one that does
            // would match across the parts of a searchable text.
            folded: fold_str(&String::from_utf8_lossy(bytes)).replace(PART_SEPARATOR, "\u{fffd}"),
        }
    }

    /// Whether `hay` contains the needle, case-insensitively; allocates
    /// nothing.
    fn in_str(&self, hay: &str) -> bool {
        self.in_segments(&[hay])
    }

    /// Whether the concatenation of `segments` contains the needle,
    /// case-insensitively, without building it.
    fn in_segments(&self, segments: &[&str]) -> bool {
        let needle = self.folded.as_str();
        if needle.is_empty() {
            return true;
        }
        if segments.iter().all(|s| s.is_ascii()) {
            // Folded ASCII stays ASCII: a non-ASCII needle cannot match.
            if !needle.is_ascii() {
                return false;
            }
            if let [hay] = segments {
                return ascii_contains(hay.as_bytes(), needle.as_bytes());
            }
            // Joined on the stack when short (an address's display form).
            let mut buf = [0u8; 512];
            let mut len = 0;
            for s in segments {
                let Some(dst) = buf.get_mut(len..len + s.len()) else {
                    len = usize::MAX;
                    break;
                };
                dst.copy_from_slice(s.as_bytes());
                len += s.len();
            }
            if len != usize::MAX {
                return ascii_contains(&buf[..len], needle.as_bytes());
            }
        }
        for (i, segment) in segments.iter().enumerate() {
            for (at, _) in segment.char_indices() {
                let mut hay = segment[at..]
                    .chars()
                    .chain(segments[i + 1..].iter().flat_map(|s| s.chars()))
                    .flat_map(fold);
                if needle.chars().all(|n| hay.next() == Some(n)) {
                    return true;
                }
            }
        }
        false
    }
}

/// Whether `hay` contains `needle` (already lowercase ASCII), ignoring
/// ASCII case.
fn ascii_contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    if hay.len() < needle.len() {
        return false;
    }
    (0..=hay.len() - needle.len()).any(|i| {
        hay[i].to_ascii_lowercase() == first
            && hay[i + 1..i + needle.len()]
                .iter()
                .zip(rest)
                .all(|(h, n)| h.to_ascii_lowercase() == *n)
    })
}

/// The day number (days since 1970-01-01) of a SEARCH date.
fn search_day(date: &NaiveDate) -> i64 {
    date.as_ref()
        .and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp().div_euclid(86_400))
}

/// The day number of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The UTC day of a Unix time.
fn unix_day(seconds: i64) -> i64 {
    seconds.div_euclid(86_400)
}

/// The day a message was sent: the date as written in its Date: header;
/// its INTERNALDATE day when it has no valid Date: (the summary decides
/// validity).
fn sent_day(c: &Candidate<'_>) -> i64 {
    let Some(sent) = c.summary.sent_date else {
        return unix_day(c.internal_date);
    };
    c.summary
        .envelope
        .date
        .as_ref()
        .and_then(|d| written_date(d.as_bytes()))
        .map(|(year, month, day)| days_from_civil(year, month, day))
        .unwrap_or_else(|| unix_day(sent))
}

/// The date part of an RFC 5322 §3.3 date-time, `[day-of-week ","] day
/// month year`, as written (time and zone ignored). Two- and three-digit
/// years are read as RFC 5322 §4.3 says.
fn written_date(value: &[u8]) -> Option<(i64, u32, u32)> {
    const MONTHS: [&[u8]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    let value = match value.iter().position(|&b| b == b',') {
        Some(comma) => &value[comma + 1..],
        None => value,
    };
    let mut words = value
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    let number = |w: &[u8]| -> Option<u32> {
        if w.is_empty() || w.len() > 4 || !w.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(w).ok()?.parse().ok()
    };
    let day_word = words.next()?;
    let day = number(day_word)?;
    let month_word = words.next()?;
    let month = MONTHS
        .iter()
        .position(|m| month_word.eq_ignore_ascii_case(m))?;
    let year_word = words.next()?;
    let year = number(year_word)?;
    let year = match year_word.len() {
        2 if year < 50 => year + 2000,
        2 | 3 => year + 1900,
        _ => year,
    };
    let month = u32::try_from(month).ok()? + 1;
    (1..=31)
        .contains(&day)
        .then_some((i64::from(year), month, day))
}

/// Whether the display form `Name <local@domain>` of an envelope address
/// contains the needle. Group markers never match (the header text has the
/// group name).
fn address_matches(a: &Address, needle: &Needle) -> bool {
    if a.is_group_start() || a.is_group_end() {
        return false;
    }
    let name = a.name.as_ref().map(|n| decode_header_text(n.as_bytes()));
    let mailbox = a
        .mailbox
        .as_ref()
        .map(|m| String::from_utf8_lossy(m.as_bytes()))
        .filter(|m| m != "MISSING_MAILBOX");
    let host = a
        .host
        .as_ref()
        .map(|h| String::from_utf8_lossy(h.as_bytes()))
        .filter(|h| !h.is_empty() && h != "MISSING_DOMAIN");
    let mut segments: [&str; 7] = [""; 7];
    if let Some(name) = &name {
        segments[0] = name;
        segments[1] = " ";
    }
    segments[2] = "<";
    segments[3] = mailbox.as_deref().unwrap_or("");
    if let Some(host) = &host {
        segments[4] = "@";
        segments[5] = host;
    }
    segments[6] = ">";
    needle.in_segments(&segments)
}

/// One candidate under evaluation, with its decoded body computed at most
/// once.
struct Eval<'c, 'a> {
    c: &'c Candidate<'a>,
    body: OnceCell<String>,
}

impl Eval<'_, '_> {
    fn node(&self, node: &Node) -> bool {
        let c = self.c;
        match node {
            Node::Const(b) => *b,
            Node::Flag { name, set } => {
                c.flags.iter().any(|f| f.eq_ignore_ascii_case(name)) == *set
            }
            Node::Seq(r) => r.contains(c.seq),
            Node::Uid(r) => r.contains(c.uid),
            Node::Larger(n) => c.size > *n,
            Node::Smaller(n) => c.size < *n,
            Node::Internal(cmp, day) => cmp.test(unix_day(c.internal_date), *day),
            Node::Sent(cmp, day) => cmp.test(sent_day(c), *day),
            Node::Header { name, needle } => self.header(name, needle),
            Node::Address { list, needle } => {
                self.header(list.header(), needle)
                    || list
                        .addresses(c.summary)
                        .iter()
                        .any(|a| address_matches(a, needle))
            }
            Node::Body(needle) => self.body(needle),
            Node::Text(needle) => {
                c.summary
                    .search_headers
                    .iter()
                    .any(|(name, value)| needle.in_str(name) || needle.in_str(value))
                    || self.body(needle)
            }
            Node::ModSeq(m) => c.modseq >= *m,
            Node::Not(inner) => !self.node(inner),
            Node::Or(a, b) => self.node(a) || self.node(b),
            Node::And(nodes) => nodes.iter().all(|n| self.node(n)),
        }
    }

    fn header(&self, name: &str, needle: &Needle) -> bool {
        self.c
            .summary
            .search_headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && needle.in_str(v))
    }

    fn body(&self, needle: &Needle) -> bool {
        if needle.folded.is_empty() {
            return true;
        }
        let text = match (self.c.text, self.c.raw) {
            (Some(text), _) => text,
            (None, Some(raw)) => self
                .body
                .get_or_init(|| searchable_text(raw, &self.c.summary.body))
                .as_bytes(),
            (None, None) => return false,
        };
        text_contains(text, &needle.folded)
    }
}

#[cfg(test)]
mod tests {
    use imap_codec::CommandCodec;
    use imap_codec::decode::Decoder as _;
    use imap_codec::imap_types::command::CommandBody;

    use super::*;
    use crate::mailbox::summary::{normalize_crlf, summarize};
    use crate::mailbox::text::{Index, IndexPage, decode_headers, encode_headers, indexes_suffice};

    /// SEARCH BODY/TEXT decode bodies with mail-parser, which panics on
    /// this message: the search must answer (no match), not panic.
    #[test]
    fn text_search_survives_a_message_that_makes_mail_parser_panic() {
        let raw = crate::mailbox::summary::tests::MAIL_PARSER_PANIC;
        let summary = summarize(raw);
        let text = searchable_text(raw, &summary.body);
        assert!(!text.contains("needle"));
    }

    /// Unix time of a UTC date and time.
    fn at(year: i64, month: u32, day: u32, hour: i64, minute: i64) -> i64 {
        days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60
    }

    /// A test message: its stored bytes, summary and mailbox attributes.
    struct Message {
        raw: Vec<u8>,
        summary: MessageSummary,
        uid: u32,
        modseq: u64,
        flags: Vec<&'static str>,
        internal_date: i64,
    }

    fn message(
        text: &str,
        uid: u32,
        modseq: u64,
        flags: &[&'static str],
        internal_date: i64,
    ) -> Message {
        let raw = normalize_crlf(text.as_bytes()).into_owned();
        let summary = summarize(&raw);
        Message {
            raw,
            summary,
            uid,
            modseq,
            flags: flags.to_vec(),
            internal_date,
        }
    }

    impl Message {
        fn candidate(&self, seq: u32, with_body: bool) -> Candidate<'_> {
            Candidate {
                seq,
                uid: self.uid,
                modseq: self.modseq,
                flags: &self.flags,
                size: self.raw.len() as u64,
                internal_date: self.internal_date,
                summary: &self.summary,
                raw: with_body.then_some(self.raw.as_slice()),
                text: None,
            }
        }
    }

    /// A plain ASCII message, read and answered.
    const PLAIN: &str = "From: \"Alice Martin\" <alice@example.org>\n\
To: bob@example.com\n\
Cc: Carol <carol@example.net>\n\
Subject: Quarterly report\n\
Date: Mon, 1 Jan 2024 10:00:00 +0000\n\
Message-ID: <1@example.org>\n\
\n\
Please find the numbers below.\n";

    /// Encoded words in From and Subject, a quoted-printable Latin-1 body
    /// with a soft line break, a Date: whose UTC day is the next day.
    const ENCODED: &str = "From: =?iso-8859-1?q?Andr=E9?= Dupont <andre@example.org>\n\
To: \"Team\" <team@example.com>\n\
Subject: =?utf-8?q?Caf=C3=A9_cr=C3=A8me?=\n\
Date: Tue, 2 Jan 2024 23:30:00 -0500\n\
MIME-Version: 1.0\n\
Content-Type: text/plain; charset=iso-8859-1\n\
Content-Transfer-Encoding: quoted-printable\n\
\n\
Cr=E8me br=FBl=E9e =\n\
pour tous.\n";

    /// Raw UTF-8 subject (RFC 6532), no Date:, a multipart/alternative
    /// with a base64 UTF-8 text part and an HTML part.
    const ALTERNATIVE: &str = "From: dora@example.org\n\
To: bob@example.com\n\
Subject: Straße ΣΟΦΙΑ\n\
MIME-Version: 1.0\n\
Content-Type: multipart/alternative; boundary=\"b1\"\n\
\n\
--b1\n\
Content-Type: text/plain; charset=utf-8\n\
Content-Transfer-Encoding: base64\n\
\n\
R3LDvMOfZSBhdXMgTcO8bmNoZW4K\n\
--b1\n\
Content-Type: text/html; charset=utf-8\n\
\n\
<html><body><p>Hello <b>World</b></p></body></html>\n\
--b1--\n";

    /// A multipart/mixed with a binary attachment and an attached
    /// message; a Bcc and an extension header.
    const MIXED: &str = "From: eve@example.org\n\
To: undisclosed-recipients:;\n\
Bcc: hidden@example.org\n\
Subject: forwarded\n\
Date: Fri, 5 Jan 2024 08:00:00 +0100\n\
X-Mailer: Facteur-Test 1.0\n\
MIME-Version: 1.0\n\
Content-Type: multipart/mixed; boundary=\"m\"\n\
\n\
--m\n\
Content-Type: text/plain\n\
\n\
See attached.\n\
--m\n\
Content-Type: application/octet-stream\n\
Content-Transfer-Encoding: base64\n\
\n\
bmVlZGxlIGluIGEgaGF5c3RhY2sK\n\
--m\n\
Content-Type: message/rfc822\n\
\n\
From: frank@example.org\n\
Subject: inner\n\
\n\
The inner secret.\n\
--m--\n";

    fn mailbox() -> Vec<Message> {
        vec![
            message(
                PLAIN,
                10,
                3,
                &["\\Answered", "\\Seen"],
                at(2024, 1, 2, 0, 30),
            ),
            message(
                ENCODED,
                12,
                5,
                &["$Forwarded", "\\Flagged"],
                at(2024, 1, 3, 4, 31),
            ),
            message(
                ALTERNATIVE,
                15,
                7,
                &["\\Deleted", "\\Draft"],
                at(2024, 1, 4, 12, 0),
            ),
            message(MIXED, 20, 9, &[], at(2024, 1, 5, 7, 0)),
        ]
    }

    /// `criteria` as imap-codec parses `SEARCH <criteria>`.
    fn parse(criteria: &str) -> Vec<SearchKey<'static>> {
        // Leaked so that the keys may borrow it: a few bytes per test.
        let line: &'static str = Box::leak(format!("a SEARCH {criteria}\r\n").into_boxed_str());
        let (rest, command) = CommandCodec::default()
            .decode(line.as_bytes())
            .unwrap_or_else(|e| panic!("{criteria}: {e:?}"));
        assert!(rest.is_empty());
        match command.body {
            CommandBody::Search { criteria, .. } => criteria.into_iter().collect(),
            other => panic!("not a SEARCH: {other:?}"),
        }
    }

    /// A synchronising literal, for non-ASCII strings.
    fn lit(s: &str) -> String {
        format!("{{{}}}\r\n{s}", s.len())
    }

    fn search(messages: &[Message], criteria: &str) -> Vec<u32> {
        let scope = Scope {
            max_seq: messages.len() as u32,
            max_uid: messages.last().map_or(0, |m| m.uid),
        };
        let query = Query::new(&parse(criteria), scope);
        let with_body = query.needs_body();
        let found: Vec<u32> = messages
            .iter()
            .zip(1..)
            .filter(|(m, seq)| query.matches(&m.candidate(*seq, with_body)))
            .map(|(_, seq)| seq)
            .collect();
        // Every search of these tests also runs on summaries holding only
        // the parts the query says it reads (what `cmd::search::scan`
        // gives it), or on an empty one when it reads none: same answer.
        let parts = query.summary_parts();
        let partial: Vec<u32> = messages
            .iter()
            .zip(1..)
            .filter(|(m, seq)| {
                let summary = match parts {
                    None => MessageSummary::empty(),
                    Some(parts) => {
                        let json = serde_json::to_vec(&m.summary).unwrap();
                        MessageSummary::decode(&json, parts).unwrap()
                    }
                };
                let mut candidate = m.candidate(*seq, with_body);
                candidate.summary = &summary;
                query.matches(&candidate)
            })
            .map(|(_, seq)| seq)
            .collect();
        assert_eq!(partial, found, "{criteria} with only {parts:?}");
        // And on the texts a text page holds instead of the raw messages
        // (what `cmd::search::scan` gives it for large mailboxes).
        if with_body {
            let mut page = IndexPage::default();
            for (i, m) in messages.iter().enumerate() {
                let id = crate::mailbox::MessageId {
                    op: crate::log::OpId::from_raw([i as u8; 16]),
                    index: 0,
                };
                let text = searchable_text(&m.raw, &m.summary.body);
                assert!(page.add(Index::Text, id, text.into()));
            }
            let bytes = bytes::Bytes::from(page.encode(Index::Text));
            let page = IndexPage::decode(Index::Text, bytes).unwrap();
            let from_page: Vec<u32> = messages
                .iter()
                .zip(&page.entries)
                .zip(1..)
                .filter(|((m, (_, text)), seq)| {
                    let mut candidate = m.candidate(*seq, false);
                    candidate.text = Some(text);
                    query.matches(&candidate)
                })
                .map(|(_, seq)| seq)
                .collect();
            assert_eq!(from_page, found, "{criteria} on a text page");
        }
        // And on the header fields a header page holds instead of the
        // summary, with the text a text page holds, when the query reads
        // nothing else of the summary (as `cmd::search::Plan` does).
        let only_indexed = parts.is_some_and(indexes_suffice);
        if only_indexed {
            let from_indexes: Vec<u32> = messages
                .iter()
                .zip(1..)
                .filter(|(m, seq)| {
                    let entry = encode_headers(&m.summary.search_headers);
                    let mut summary = MessageSummary::empty();
                    summary.search_headers = decode_headers(&entry).unwrap();
                    let text = searchable_text(&m.raw, &m.summary.body);
                    let mut candidate = m.candidate(*seq, false);
                    candidate.summary = &summary;
                    candidate.text = with_body.then_some(text.as_bytes());
                    query.matches(&candidate)
                })
                .map(|(_, seq)| seq)
                .collect();
            assert_eq!(from_indexes, found, "{criteria} on index pages");
        }
        found
    }

    proptest::proptest! {
        /// The ASCII-run shortcut folds exactly as folding every character.
        #[test]
        fn fold_str_folds_every_character(s in "(?s)[a-zA-Z0-9 \\r\\n.ßẞςΣÅéÉ\\x{212A}\\x{130}\\x{10400}-\\x{10410}]{0,64}|\\PC{0,64}") {
            let by_character: String = s.chars().flat_map(fold).collect();
            proptest::prop_assert_eq!(fold_str(&s), by_character);
        }
    }

    #[test]
    fn the_parts_a_query_reads() {
        let parts = |criteria: &str| {
            Query::new(
                &parse(criteria),
                Scope {
                    max_seq: 1,
                    max_uid: 1,
                },
            )
            .summary_parts()
        };
        let headers = Parts {
            search_headers: true,
            ..Parts::NONE
        };
        let envelope = Parts {
            envelope: true,
            ..Parts::NONE
        };
        for none in [
            "UNSEEN",
            "ALL",
            "1:* UID 2 LARGER 10 NOT SMALLER 3 SINCE 1-Jan-2024 KEYWORD x",
            "OR FLAGGED NOT DELETED",
            "MODSEQ 5",
        ] {
            assert_eq!(parts(none), None, "{none}");
        }
        assert_eq!(parts("SUBJECT x"), Some(headers));
        assert_eq!(parts("HEADER X-Spam yes UNSEEN"), Some(headers));
        assert_eq!(parts("SENTSINCE 1-Jan-2024"), Some(envelope));
        assert_eq!(parts("NOT FROM x"), Some(headers.and(envelope)));
        assert_eq!(
            parts("OR SUBJECT x SENTON 1-Jan-2024"),
            Some(headers.and(envelope))
        );
        let body = Parts {
            body: true,
            ..Parts::NONE
        };
        assert_eq!(parts("BODY x"), Some(body));
        assert_eq!(parts("UNSEEN TEXT x"), Some(headers.and(body)));
        // Never the raw header or the preview.
        let all = parts("OR OR TEXT a FROM b OR SENTBEFORE 1-Jan-2024 BCC c").unwrap();
        assert!(!all.header && !all.preview);
    }

    fn check(table: &[(&str, &[u32])]) {
        let messages = mailbox();
        let mut failures = Vec::new();
        for (criteria, expected) in table {
            let got = search(&messages, criteria);
            if got != *expected {
                failures.push(format!("{criteria:?}: got {got:?}, expected {expected:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn flags_and_constants() {
        check(&[
            ("ALL", &[1, 2, 3, 4]),
            ("SEEN", &[1]),
            ("UNSEEN", &[2, 3, 4]),
            ("ANSWERED", &[1]),
            ("UNANSWERED", &[2, 3, 4]),
            ("FLAGGED", &[2]),
            ("UNFLAGGED", &[1, 3, 4]),
            ("DELETED", &[3]),
            ("UNDELETED", &[1, 2, 4]),
            ("DRAFT", &[3]),
            ("UNDRAFT", &[1, 2, 4]),
            ("KEYWORD $forwarded", &[2]),
            ("KEYWORD $Junk", &[]),
            ("UNKEYWORD $FORWARDED", &[1, 3, 4]),
            ("RECENT", &[]),
            ("NEW", &[]),
            ("OLD", &[1, 2, 3, 4]),
        ]);
    }

    #[test]
    fn sequence_sets_and_uids() {
        check(&[
            ("1", &[1]),
            ("1:2", &[1, 2]),
            ("2:*", &[2, 3, 4]),
            ("*", &[4]),
            ("*:3", &[3, 4]),
            ("4,1,2:2", &[1, 2, 4]),
            ("5:9", &[]),
            ("UID 12", &[2]),
            ("UID 1:11", &[1]),
            ("UID 13:*", &[3, 4]),
            ("UID *", &[4]),
            // RFC 9051 §6.4.9: `n:*` includes the last message even when
            // n is above every UID.
            ("UID 30:*", &[4]),
            ("UID 11,13,14,16:19", &[]),
            ("UID 10:15,20", &[1, 2, 3, 4]),
        ]);
    }

    #[test]
    fn star_in_an_empty_and_a_one_message_mailbox() {
        assert!(search(&[], "*").is_empty());
        assert!(search(&[], "UID 1:*").is_empty());
        let query = Query::new(&parse("UID 1:*"), Scope::default());
        assert!(!query.needs_body());

        let one = vec![message(PLAIN, 7, 1, &[], 0)];
        assert_eq!(search(&one, "*"), [1]);
        assert_eq!(search(&one, "UID *"), [1]);
        assert_eq!(search(&one, "UID 8:*"), [1]);
        assert_eq!(search(&one, "UID 8"), Vec::<u32>::new());
        assert_eq!(search(&one, "2:*"), [1]);
    }

    #[test]
    fn sizes() {
        let messages = mailbox();
        let size = messages[0].raw.len();
        let only_first = |criteria: String| {
            let got = search(&messages, &criteria);
            got.contains(&1)
        };
        assert!(only_first(format!("LARGER {}", size - 1)));
        assert!(!only_first(format!("LARGER {size}")));
        assert!(only_first(format!("SMALLER {}", size + 1)));
        assert!(!only_first(format!("SMALLER {size}")));
        assert_eq!(search(&messages, "LARGER 0"), [1, 2, 3, 4]);
        assert!(search(&messages, "SMALLER 1").is_empty());
    }

    #[test]
    fn dates() {
        check(&[
            // INTERNALDATE days (UTC): 2, 3, 4, 5 January.
            ("ON 2-Jan-2024", &[1]),
            ("BEFORE 3-Jan-2024", &[1]),
            ("SINCE 3-Jan-2024", &[2, 3, 4]),
            ("SINCE 6-Jan-2024", &[]),
            ("BEFORE 1-Jan-2024", &[]),
            ("SINCE 4-Jan-2024 BEFORE 5-Jan-2024", &[3]),
            // Sent days as written: 1 Jan, 2 Jan (UTC 3 Jan), none (so
            // INTERNALDATE, 4 Jan), 5 Jan (UTC 5 Jan 07:00).
            ("SENTON 1-Jan-2024", &[1]),
            ("SENTON 2-Jan-2024", &[2]),
            ("SENTON 3-Jan-2024", &[]),
            ("SENTON 4-Jan-2024", &[3]),
            ("SENTBEFORE 2-Jan-2024", &[1]),
            ("SENTBEFORE 3-Jan-2024", &[1, 2]),
            ("SENTSINCE 3-Jan-2024", &[3, 4]),
            ("SENTSINCE 5-Jan-2024", &[4]),
        ]);
    }

    #[test]
    fn addresses() {
        check(&[
            ("FROM alice", &[1]),
            ("FROM ALICE@EXAMPLE.ORG", &[1]),
            // The decoded display form, whatever the quoting.
            ("FROM \"Alice Martin <alice@example.org>\"", &[1]),
            ("FROM \"alice martin\"", &[1]),
            (&format!("FROM {}", lit("andré")), &[2]),
            (&format!("FROM {}", lit("ANDRÉ DUPONT <andre@")), &[2]),
            ("FROM \"Andr\"", &[2]),
            ("FROM example.org", &[1, 2, 3, 4]),
            ("TO bob", &[1, 3]),
            ("TO \"Team <team@example.com>\"", &[2]),
            ("TO undisclosed", &[4]),
            ("CC carol", &[1]),
            ("CC \"Carol <carol@example.net>\"", &[1]),
            ("CC bob", &[]),
            ("BCC hidden", &[4]),
            ("BCC alice", &[]),
            // Only the top-level From, not the attached message's.
            ("FROM frank", &[]),
        ]);
    }

    #[test]
    fn encoded_words_inside_quotes_in_address_names() {
        // Not valid RFC 2047, but common: the envelope name is decoded.
        let text = "From: \"=?utf-8?q?Ren=C3=A9e_L=C3=A9vy?=\" <renee@example.org>\n\
To: =?utf-8?b?w4lsaXNl?= <elise@example.org>, group: x@example.org;\n\
\n\
hi\n";
        let messages = vec![message(text, 1, 1, &[], 0)];
        assert_eq!(
            search(&messages, &format!("FROM {}", lit("RENÉE LÉVY"))),
            [1]
        );
        assert_eq!(
            search(
                &messages,
                &format!("FROM {}", lit("lévy <renee@example.org>"))
            ),
            [1]
        );
        assert_eq!(
            search(&messages, &format!("TO {}", lit("élise <elise@"))),
            [1]
        );
        assert_eq!(search(&messages, "TO \"<x@example.org>\""), [1]);
        assert_eq!(search(&messages, "TO group"), [1]);
        assert!(search(&messages, "TO utf-8").is_empty());
    }

    #[test]
    fn subjects_and_headers() {
        check(&[
            ("SUBJECT report", &[1]),
            ("SUBJECT \"QUARTERLY REPORT\"", &[1]),
            (&format!("SUBJECT {}", lit("café")), &[2]),
            (&format!("SUBJECT {}", lit("CAFÉ CRÈME")), &[2]),
            // The encoded form is not what is searched.
            ("SUBJECT utf-8", &[]),
            // Unicode case folding: ß ~ ss, Σ ~ σ ~ ς.
            ("SUBJECT strasse", &[3]),
            (&format!("SUBJECT {}", lit("STRASSE")), &[3]),
            (&format!("SUBJECT {}", lit("σοφια")), &[3]),
            (&format!("SUBJECT {}", lit("ΣΟΦΙΑ")), &[3]),
            (&format!("SUBJECT {}", lit("straße")), &[3]),
            ("SUBJECT \"\"", &[1, 2, 3, 4]),
            ("HEADER X-Mailer \"\"", &[4]),
            ("HEADER x-mailer facteur-test", &[4]),
            ("HEADER X-Mailer 2.0", &[]),
            ("HEADER X-Missing \"\"", &[]),
            ("HEADER Message-ID \"<1@\"", &[1]),
            ("HEADER Date \"-0500\"", &[2]),
            ("HEADER Content-Type alternative", &[3]),
        ]);
    }

    #[test]
    fn bodies() {
        check(&[
            ("BODY numbers", &[1]),
            // Quoted-printable Latin-1, with a soft line break.
            (&format!("BODY {}", lit("crème")), &[2]),
            (&format!("BODY {}", lit("BRÛLÉE POUR")), &[2]),
            ("BODY =E8", &[]),
            // Base64 UTF-8, folded.
            (&format!("BODY {}", lit("grüsse aus münchen")), &[3]),
            ("BODY R3LDvMOf", &[]),
            // HTML: the text, not the markup.
            ("BODY \"hello world\"", &[3]),
            ("BODY <b>", &[]),
            // Multipart: text parts and attached messages, not binaries.
            ("BODY attached", &[4]),
            ("BODY \"inner secret\"", &[4]),
            // The header of an attached message is part of the body.
            ("BODY frank", &[4]),
            ("BODY \"subject: inner\"", &[4]),
            ("TEXT frank", &[4]),
            ("BODY needle", &[]),
            // BODY does not look at the header.
            ("BODY report", &[]),
            ("BODY \"\"", &[1, 2, 3, 4]),
            // TEXT: header or body.
            ("TEXT report", &[1]),
            ("TEXT numbers", &[1]),
            (&format!("TEXT {}", lit("crème")), &[2]),
            ("TEXT x-mailer", &[4]),
            ("TEXT nowhere", &[]),
        ]);
    }

    #[test]
    fn modseq() {
        check(&[
            ("MODSEQ 5", &[2, 3, 4]),
            ("MODSEQ 1", &[1, 2, 3, 4]),
            ("MODSEQ 10", &[]),
            ("MODSEQ \"/flags/\\\\seen\" all 9", &[4]),
        ]);
        assert!(Query::new(&parse("SEEN MODSEQ 5"), Scope::default()).has_modseq());
        assert!(Query::new(&parse("OR SEEN NOT MODSEQ 5"), Scope::default()).has_modseq());
        assert!(!Query::new(&parse("SEEN"), Scope::default()).has_modseq());
    }

    #[test]
    fn combinations() {
        check(&[
            ("SEEN FLAGGED", &[]),
            ("UNSEEN UNFLAGGED", &[3, 4]),
            ("NOT SEEN", &[2, 3, 4]),
            ("NOT NOT SEEN", &[1]),
            ("OR SEEN FLAGGED", &[1, 2]),
            ("NOT (OR SEEN FLAGGED)", &[3, 4]),
            ("OR (SEEN ANSWERED) (DELETED DRAFT)", &[1, 3]),
            ("OR (SEEN DELETED) (FLAGGED KEYWORD $Forwarded)", &[2]),
            ("OR NOT SEEN UID 10", &[1, 2, 3, 4]),
            ("OR OR SEEN FLAGGED DELETED", &[1, 2, 3]),
            ("OR SEEN OR FLAGGED DELETED", &[1, 2, 3]),
            ("UNSEEN 2:* NOT DELETED", &[2, 4]),
            ("NOT (FROM alice SUBJECT report)", &[2, 3, 4]),
            ("NOT (FROM alice SUBJECT nothing)", &[1, 2, 3, 4]),
            ("(((SEEN)))", &[1]),
            (
                &format!("NOT OR BODY {} BODY numbers", lit("crème")),
                &[3, 4],
            ),
            ("OR BODY numbers SUBJECT forwarded", &[1, 4]),
            ("NOT BODY numbers", &[2, 3, 4]),
        ]);
    }

    #[test]
    fn needs_body_only_for_body_and_text() {
        let needs = |criteria: &str| Query::new(&parse(criteria), Scope::default()).needs_body();
        assert!(!needs(
            "FROM a SUBJECT b HEADER X c SEEN 1:* UID 2 SENTON 1-Jan-2024"
        ));
        assert!(needs("BODY x"));
        assert!(needs("TEXT x"));
        assert!(needs("NOT (OR SEEN (FLAGGED TEXT x))"));
    }

    #[test]
    fn without_the_raw_message() {
        let messages = mailbox();
        let query = Query::new(&parse("TEXT report"), Scope::default());
        // TEXT still matches headers; BODY cannot match.
        assert!(query.matches(&messages[0].candidate(1, false)));
        let query = Query::new(&parse("BODY numbers"), Scope::default());
        assert!(!query.matches(&messages[0].candidate(1, false)));
        assert!(query.matches(&messages[0].candidate(1, true)));
    }

    #[test]
    fn missing_or_broken_date_falls_back_to_internaldate() {
        let broken = "From: a@example.org\nDate: someday\nSubject: x\n\nbody\n";
        // Valid for the summary only after its repair (no seconds), and on
        // the next day in UTC.
        let no_seconds = "From: a@example.org\nDate: 3 Jan 2024 23:00 -0500\n\nbody\n";
        let messages = vec![
            message(broken, 1, 1, &[], at(2023, 12, 31, 23, 59)),
            message(no_seconds, 2, 1, &[], at(2020, 1, 1, 0, 0)),
        ];
        assert_eq!(search(&messages, "SENTON 31-Dec-2023"), [1]);
        assert_eq!(search(&messages, "SENTON 3-Jan-2024"), [2]);
    }

    #[test]
    fn charsets() {
        let charset = |s: &str| Charset::try_from(s.to_owned()).unwrap();
        assert_eq!(check_charset(None), Ok(()));
        for ok in ["UTF-8", "utf-8", "US-ASCII", "us-ascii"] {
            assert_eq!(check_charset(Some(&charset(ok))), Ok(()), "{ok}");
        }
        assert_eq!(
            check_charset(Some(&charset("ISO-8859-1"))),
            Err(BadCharset("ISO-8859-1".to_owned()))
        );
        assert!(check_charset(Some(&charset("UTF8"))).is_err());
        // Charset names may arrive quoted.
        let quoted =
            Charset::Quoted(imap_codec::imap_types::core::Quoted::try_from("utf-8").unwrap());
        assert_eq!(check_charset(Some(&quoted)), Ok(()));
    }

    #[test]
    fn folding_and_substrings() {
        let n = |s: &str| Needle::new(s.as_bytes());
        assert!(n("ABC").in_str("xxabcxx"));
        assert!(n("abc").in_str("xxABCxx"));
        assert!(!n("abd").in_str("xxABCxx"));
        assert!(n("").in_str(""));
        assert!(!n("a").in_str(""));
        assert!(n("ÉTÉ").in_str("un bel été"));
        assert!(!n("été").in_str("ete"));
        assert!(n("İ").in_str("i\u{307}"));
        assert!(n("ss").in_str("Fuß"));
        assert!(n("fuss").in_str("FUẞ"));
        assert!(n("ΟΔΟΣ").in_str("οδος"));
        assert!(n("οδος").in_str("ΟΔΟΣ"));
        assert!(n("a b").in_segments(&["xa", " ", "bx"]));
        assert!(!n("ab").in_segments(&["a", " ", "b"]));
        assert!(n("x").in_segments(&["", "", "X"]));
        assert_eq!(
            written_date(b"Mon, 1 Jan 2024 10:00 +0000"),
            Some((2024, 1, 1))
        );
        assert_eq!(written_date(b"31 dec 99 23:59 GMT"), Some((1999, 12, 31)));
        assert_eq!(
            written_date(b"Thu,\t5 Feb 04 00:00:00 -0100"),
            Some((2004, 2, 5))
        );
        assert_eq!(written_date(b"5 Feb 104 00:00"), Some((2004, 2, 5)));
        assert_eq!(written_date(b"Mon, 1 Foo 2024"), None);
        assert_eq!(written_date(b"2024-01-01T10:00:00Z"), None);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    /// One compiled query over many candidates without their bodies (the
    /// case SEARCH must keep cheap); correctness only, the cost is not
    /// asserted.
    #[test]
    fn ten_thousand_summaries() {
        let messages = mailbox();
        let query = Query::new(
            &parse("OR FROM nobody (OR (SUBJECT report NOT DELETED) UNDRAFT)"),
            Scope {
                max_seq: 10_000,
                max_uid: 10_000,
            },
        );
        let count = (1..=10_000u32)
            .filter(|&i| {
                let m = &messages[(i % 4) as usize];
                query.matches(&m.candidate(i, false))
            })
            .count();
        // Messages 1, 2 and 4 are not drafts: three quarters.
        assert_eq!(count, 7_500);
    }
}
