//! What searches match, and the index pages that spare reading it whole
//! (doc/storage.md, "Index pages"): the text SEARCH BODY and TEXT match in
//! a message (RFC 9051 §6.4.4; the semantics are told in `imap::search`)
//! and the decoded header fields header keys match, kept per summary page
//! in a text page and a header page, so that a search over a whole
//! mailbox reads one small object per page instead of one body per
//! message or whole summaries.
//!
//! Pure: the account layer reads and writes the pages.

use std::borrow::Cow;

use bytes::Bytes;

use super::body::{decode_framed, encode_framed, framed_len};
use super::op::MessageId;
use super::summary::{BodyPart, PartKind, Parts};

/// A message whose entry (searchable text, or search headers) is longer
/// is left out of its index page: searches read its body or summary, as
/// without a page.
pub const MAX_MESSAGE_TEXT: usize = 1 << 20;

/// Bytes of entries an index page holds at most (before compression); the
/// messages past it are left out. Bounds what reading a page costs.
pub const MAX_PAGE_TEXT: usize = 8 << 20;

/// A body longer than this is left out of its body pack: a FETCH reads it
/// alone (one GET for that many bytes costs little more than the bytes).
pub const MAX_PACKED_BODY: usize = 64 << 10;

/// Bytes of bodies a body pack holds at most (before compression): 256
/// messages of 16 KiB. At 2 MiB, a page of the bench's 11 KB messages
/// left a third of them to be read alone (doc/performance.md).
pub const MAX_PACK: usize = 4 << 20;

/// The indexes a summary page may have, each a companion side object named
/// after the page (doc/storage.md, "Index pages" and "Body packs").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Index {
    /// Per message, its searchable text ([`searchable_text`]): what BODY
    /// and TEXT match.
    Text,
    /// Per message, its summary's decoded header fields
    /// ([`encode_headers`]): what SUBJECT, HEADER and TEXT match.
    Headers,
    /// Per message of at most [`MAX_PACKED_BODY`], its body as stored
    /// (line ends normalised): what a FETCH of many bodies reads, a GET
    /// per page instead of one per message.
    Bodies,
}

impl Index {
    /// Appended to a summary page's name, the name of its index page. The
    /// digit is the version of what the page holds: a change to what
    /// searches match (the text's decoding, folding, the fields kept)
    /// takes the next one, so pages written before are ignored (and
    /// collected with their summary page) instead of answering otherwise.
    pub const fn suffix(self) -> &'static str {
        match self {
            Index::Text => ".t1",
            Index::Headers => ".h1",
            Index::Bodies => ".b1",
        }
    }

    /// First bytes of an index page of this kind.
    const fn magic(self) -> &'static [u8; 4] {
        match self {
            Index::Text => b"\0tp1",
            Index::Headers => b"\0hp1",
            Index::Bodies => b"\0bp1",
        }
    }

    /// The longest entry a page of this kind holds.
    pub const fn max_entry(self) -> usize {
        match self {
            Index::Text | Index::Headers => MAX_MESSAGE_TEXT,
            Index::Bodies => MAX_PACKED_BODY,
        }
    }

    /// Bytes of entries a page of this kind holds at most.
    pub const fn max_page(self) -> usize {
        match self {
            Index::Text | Index::Headers => MAX_PAGE_TEXT,
            Index::Bodies => MAX_PACK,
        }
    }

    /// The name of this index's page for summary page `page`.
    pub fn page_name(self, page: &str) -> String {
        format!("{page}{}", self.suffix())
    }
}

/// What separates the texts of a message's parts in its searchable text.
/// A needle never holds it (IMAP strings cannot hold NUL, RFC 9051 §4.3,
/// and `imap::search` replaces one that does), so no match spans two parts.
pub const PART_SEPARATOR: char = '\0';

/// The searchable text of a raw message whose structure is `body`: the
/// decoded, case-folded texts of its parts ([`part_texts`]), joined by
/// [`PART_SEPARATOR`].
pub fn searchable_text(raw: &[u8], body: &BodyPart) -> String {
    searchable_text_within(raw, body, usize::MAX).unwrap_or_default()
}

/// [`searchable_text`], or `None` as soon as it passes `limit` bytes.
pub fn searchable_text_within(raw: &[u8], body: &BodyPart, limit: usize) -> Option<String> {
    let mut joined = Joined {
        text: String::new(),
        parts: 0,
        limit,
    };
    part_texts(raw, body, &mut joined);
    (joined.text.len() <= limit).then_some(joined.text)
}

/// The parts of a searchable text, folded and joined as they come, until
/// past `limit`.
struct Joined {
    text: String,
    parts: usize,
    limit: usize,
}

impl Joined {
    /// Past the limit: the text is given up, the next parts need not be
    /// computed.
    fn full(&self) -> bool {
        self.text.len() > self.limit
    }

    fn push(&mut self, part: &str) {
        if self.full() {
            return;
        }
        if self.parts > 0 {
            self.text.push(PART_SEPARATOR);
        }
        self.parts += 1;
        fold_into(&mut self.text, part);
    }
}

/// Whether searchable `text` contains `needle`, already case-folded
/// ([`fold_str`]) and without [`PART_SEPARATOR`]. Byte for byte: a
/// substring of valid UTF-8 found in valid UTF-8 starts and ends on
/// character boundaries.
pub fn text_contains(text: &[u8], needle: &str) -> bool {
    memchr::memmem::find(text, needle.as_bytes()).is_some()
}

/// Whether a search reading `parts` of the summaries can read header
/// pages (and text pages) instead: it reads nothing of a summary but the
/// search headers and the structure, which only the extraction of a text
/// needs, and a text page stands for that.
pub fn indexes_suffice(parts: Parts) -> bool {
    let beyond = Parts {
        search_headers: false,
        body: false,
        ..parts
    };
    parts.search_headers && beyond == Parts::NONE
}

/// An index page: one entry per message of one summary page, by message
/// id (see [`Index`]). A message of the page missing from it (too long,
/// or unreadable when the page was written) is searched in its body or
/// summary.
///
/// Stored framed, as summary pages are (`mailbox::body`), with the magic
/// of its kind: reading one is slicing it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct IndexPage {
    pub entries: Vec<(MessageId, Bytes)>,
}

impl IndexPage {
    /// Adds the entry of message `id` if it is short enough and the page
    /// (of kind `index`) has room: whether it did.
    pub fn add(&mut self, index: Index, id: MessageId, entry: Bytes) -> bool {
        let used: usize = self.entries.iter().map(|(_, e)| e.len()).sum();
        if entry.len() > index.max_entry() || used + entry.len() > index.max_page() {
            return false;
        }
        self.entries.push((id, entry));
        true
    }

    /// The framed form, as an index page of `index`.
    pub fn encode(&self, index: Index) -> Vec<u8> {
        encode_framed(
            index.magic(),
            self.entries.iter().map(|(id, e)| (*id, e.as_ref())),
        )
    }

    /// Reads what [`IndexPage::encode`] wrote for `index`; the entries are
    /// slices of `bytes`. Texts are not checked to be UTF-8: only the key
    /// holder writes pages, and matching is byte for byte.
    pub fn decode(index: Index, bytes: Bytes) -> Result<IndexPage, &'static str> {
        Ok(IndexPage {
            entries: decode_framed(index.magic(), &bytes)?,
        })
    }

    /// The largest encoded page of kind `index` [`IndexPage::add`] lets
    /// through.
    pub const fn max_encoded(index: Index, messages: usize) -> usize {
        framed_len(messages, index.max_page())
    }
}

/// A summary's search headers (decoded names and values) as a header
/// index entry: per field, the name's length (u32, big-endian), the name,
/// the value's length, the value.
pub fn encode_headers(headers: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.iter().map(|(n, v)| 8 + n.len() + v.len()).sum());
    for (name, value) in headers {
        for s in [name, value] {
            // Search headers keep at most 64 KiB (`MAX_SEARCH_HEADERS`).
            let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// Reads what [`encode_headers`] wrote; `None` if it is not that.
pub fn decode_headers(mut bytes: &[u8]) -> Option<Vec<(String, String)>> {
    let mut take = || -> Option<String> {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        let (s, rest) = rest.split_at_checked(len)?;
        let s = String::from_utf8(s.to_vec()).ok()?;
        bytes = rest;
        Some(s)
    };
    let mut out = Vec::new();
    while let Some(name) = take() {
        out.push((name, take()?));
    }
    bytes.is_empty().then_some(out)
}

/// The case folding of one character (Unicode lowercase, then the full
/// folding of `ß` and final sigma), as at most three characters.
pub fn fold(c: char) -> impl Iterator<Item = char> {
    let mut buf = ['\0'; 3];
    let len = if c.is_ascii() {
        buf[0] = c.to_ascii_lowercase();
        1
    } else {
        match c {
            'ß' | 'ẞ' => {
                buf = ['s', 's', '\0'];
                2
            }
            'ς' => {
                buf[0] = 'σ';
                1
            }
            _ => {
                let mut n = 0;
                for l in c.to_lowercase() {
                    // Unicode lowercase mappings are at most 3 characters.
                    if n < buf.len() {
                        buf[n] = l;
                        n += 1;
                    }
                }
                n
            }
        }
    };
    buf.into_iter().take(len)
}

/// `s` case-folded, character by character with [`fold`]. Runs of ASCII
/// (most of a mail body) are copied and lowercased in one go: SEARCH TEXT
/// folds every text part of every message it reads.
pub fn fold_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    fold_into(&mut out, s);
    out
}

/// Appends `s` case-folded to `out` (see [`fold_str`]).
fn fold_into(out: &mut String, s: &str) {
    let mut rest = s;
    while !rest.is_empty() {
        let ascii = rest
            .bytes()
            .position(|b| !b.is_ascii())
            .unwrap_or(rest.len());
        let (run, tail) = rest.split_at(ascii);
        let start = out.len();
        out.push_str(run);
        out[start..].make_ascii_lowercase();
        let mut chars = tail.chars();
        if let Some(c) = chars.next() {
            out.extend(fold(c));
        }
        rest = chars.as_str();
    }
}

/// Header text as UTF-8: RFC 2047 encoded words decoded, raw 8-bit taken
/// as UTF-8 where valid, else as Latin-1 (as the summary does).
pub fn decode_header_text(raw: &[u8]) -> Cow<'_, str> {
    let has_words = raw.windows(2).any(|w| w == b"=?");
    let text = match std::str::from_utf8(raw) {
        Ok(s) if !has_words => return Cow::Borrowed(s),
        Ok(s) => s.to_owned(),
        Err(_) => raw.iter().map(|&b| b as char).collect(),
    };
    if !has_words {
        return Cow::Owned(text);
    }
    let mut buf = text.into_bytes();
    buf.extend_from_slice(b"\r\n");
    match mail_parser::parsers::MessageStream::new(&buf).parse_unstructured() {
        mail_parser::HeaderValue::Text(t) => Cow::Owned(t.into_owned()),
        _ => Cow::Borrowed(""),
    }
}

/// The decoded, case-folded text of the body of a raw message: its text
/// parts (transfer encoding and charset decoded by mail-parser, HTML
/// reduced to text), attached messages included, and the header fields of
/// attached messages (located through the message's structure, `body`),
/// decoded.
fn part_texts(raw: &[u8], body: &BodyPart, out: &mut Joined) {
    fn walk(message: &mail_parser::Message<'_>, out: &mut Joined) {
        for part in &message.parts {
            if out.full() {
                return;
            }
            match &part.body {
                mail_parser::PartType::Text(t) => out.push(t),
                mail_parser::PartType::Html(h) => {
                    out.push(&mail_parser::decoders::html::html_to_text(h))
                }
                mail_parser::PartType::Message(inner) => walk(inner, out),
                _ => {}
            }
        }
    }
    if let Some(message) = crate::mailbox::summary::parse_mail(raw) {
        walk(&message, out);
    }
    encapsulated_headers(raw, body, out);
}

/// Adds the decoded header of every message attached below `part`, as
/// `Name: value` lines.
fn encapsulated_headers(raw: &[u8], part: &BodyPart, out: &mut Joined) {
    match &part.kind {
        PartKind::Leaf => {}
        PartKind::Multipart(children) => {
            for child in children {
                encapsulated_headers(raw, child, out);
            }
        }
        PartKind::Message(_) if out.full() => {}
        PartKind::Message(inner) => {
            let clamp = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).min(raw.len());
            let start = clamp(inner.body.header_start);
            let end = clamp(inner.body.body_start).max(start);
            out.push(&header_text(&raw[start..end]));
            encapsulated_headers(raw, &inner.body, out);
        }
    }
}

/// A header block as decoded `Name: value` lines (fields unfolded, RFC
/// 5322 §2.2.3; values decoded as [`decode_header_text`] does).
fn header_text(block: &[u8]) -> String {
    let mut fields: Vec<(&[u8], Vec<u8>)> = Vec::new();
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.first() {
            Some(b' ' | b'\t') => {
                if let Some((_, value)) = fields.last_mut() {
                    value.extend_from_slice(line);
                }
            }
            _ => {
                if let Some(colon) = line.iter().position(|&b| b == b':') {
                    fields.push((&line[..colon], line[colon + 1..].to_vec()));
                }
            }
        }
    }
    let mut out = String::new();
    for (name, value) in fields {
        out.push_str(&String::from_utf8_lossy(name));
        out.push_str(": ");
        out.push_str(&decode_header_text(value.trim_ascii()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::OpId;
    use crate::mailbox::summary::{normalize_crlf, summarize};

    fn id(n: u8) -> MessageId {
        MessageId {
            op: OpId::from_raw([n; 16]),
            index: u32::from(n),
        }
    }

    #[test]
    fn header_blocks_read_as_decoded_lines() {
        assert_eq!(
            header_text(b"Subject: =?utf-8?q?a=C3=A9?=\r\n b\r\nX-Y:z\r\nbroken\r\n\r\n"),
            "Subject: a\u{e9} b\nX-Y: z\n"
        );
    }

    /// The parts of a message are separated: a needle never matches
    /// across two of them, and matches within each.
    #[test]
    fn no_match_spans_two_parts() {
        let raw = normalize_crlf(
            b"Subject: s\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n\
--b\nContent-Type: text/plain\n\nFirst CHAR\n--b\nContent-Type: text/plain\n\nlie second\n--b--\n",
        )
        .into_owned();
        let text = searchable_text(&raw, &summarize(&raw).body);
        assert!(text_contains(text.as_bytes(), "first char"));
        assert!(text_contains(text.as_bytes(), "lie second"));
        assert!(!text_contains(text.as_bytes(), "charlie"));
        assert!(!text_contains(text.as_bytes(), "char\nlie"));
        assert_eq!(text.matches(PART_SEPARATOR).count(), 1, "{text:?}");
        let body = summarize(&raw).body;
        assert_eq!(
            searchable_text_within(&raw, &body, text.len()).as_deref(),
            Some(text.as_str())
        );
        assert_eq!(searchable_text_within(&raw, &body, text.len() - 1), None);
        assert_eq!(searchable_text_within(&raw, &body, 3), None);
    }

    #[test]
    fn index_pages_round_trip_as_slices_and_refuse_damage() {
        for index in [Index::Text, Index::Headers, Index::Bodies] {
            let mut page = IndexPage::default();
            assert!(page.add(index, id(1), "caf\u{e9} cr\u{e8}me".into()));
            assert!(page.add(index, id(2), Bytes::new()));
            assert!(page.add(index, id(3), Bytes::from_static(b"a\0b")));
            let bytes = Bytes::from(page.encode(index));
            let decoded = IndexPage::decode(index, bytes.clone()).unwrap();
            assert_eq!(decoded, page);
            let range = bytes.as_ptr_range();
            assert!(range.contains(&decoded.entries[0].1.as_ptr()), "a slice");
            for cut in 0..bytes.len() {
                assert!(
                    IndexPage::decode(index, bytes.slice(..cut)).is_err(),
                    "cut at {cut}"
                );
            }
            // One kind is not another.
            for other in [Index::Text, Index::Headers, Index::Bodies] {
                if other != index {
                    assert!(IndexPage::decode(other, bytes.clone()).is_err());
                }
            }
        }
        // Nor a summary page.
        let summaries = crate::mailbox::body::SummaryPage::default().encode();
        assert!(IndexPage::decode(Index::Text, Bytes::from(summaries)).is_err());
        assert_eq!(Index::Text.page_name("p"), "p.t1");
        assert_eq!(Index::Headers.page_name("p"), "p.h1");
        assert_eq!(Index::Bodies.page_name("p"), "p.b1");
    }

    /// Entries too long for a message or for the page's room are left out
    /// (searched in their bodies or summaries, read from their own
    /// objects), and a page stays under its bound.
    #[test]
    fn index_pages_are_bounded() {
        for index in [Index::Text, Index::Bodies] {
            let (entry, room) = (index.max_entry(), index.max_page());
            let mut page = IndexPage::default();
            assert!(!page.add(index, id(0), vec![b'x'; entry + 1].into()));
            assert!(page.add(index, id(0), vec![b'x'; entry].into()));
            let mut added = 1;
            for n in 1..=255 {
                if page.add(index, id(n), vec![b'y'; entry].into()) {
                    added += 1;
                }
            }
            assert_eq!(added, (room / entry).min(256));
            assert!(
                page.add(index, id(255), Bytes::new()),
                "an empty entry fits"
            );
            assert!(page.encode(index).len() <= IndexPage::max_encoded(index, 257));
        }
        assert_eq!(MAX_PACK / MAX_PACKED_BODY, 64);
    }

    #[test]
    fn header_entries_round_trip_and_refuse_damage() {
        let headers = vec![
            ("Subject".to_owned(), "caf\u{e9} \0 cr\u{e8}me".to_owned()),
            (String::new(), String::new()),
            ("X-Long".to_owned(), "v".repeat(70_000)),
        ];
        let bytes = encode_headers(&headers);
        assert_eq!(decode_headers(&bytes), Some(headers.clone()));
        assert_eq!(decode_headers(&[]), Some(Vec::new()));
        // Cut anywhere: an error, or (at a field's end) the fields before.
        for cut in 1..bytes.len().min(200) {
            if let Some(fields) = decode_headers(&bytes[..cut]) {
                assert!(fields.len() < headers.len(), "cut at {cut}");
                assert_eq!(fields[..], headers[..fields.len()], "cut at {cut}");
            }
        }
        assert_eq!(decode_headers(&bytes[..bytes.len() - 1]), None);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_headers(&longer), None);
        // A name without its value; bytes that are not UTF-8.
        assert_eq!(decode_headers(&encode_headers(&headers)[..4 + 7]), None);
        let mut bad = encode_headers(&headers[..1]);
        bad[4] = 0xff;
        assert_eq!(decode_headers(&bad), None);
    }
}
