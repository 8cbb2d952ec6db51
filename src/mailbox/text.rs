//! The text SEARCH BODY and TEXT match in a message (RFC 9051 §6.4.4; the
//! semantics are told in `imap::search`), and text pages: that text for
//! the messages of one summary page, stored beside it, so that a search
//! over a whole mailbox reads one object per page instead of one body per
//! message (doc/storage.md, "Text pages").
//!
//! Pure: the account layer reads and writes the pages.

use std::borrow::Cow;

use bytes::Bytes;

use super::body::{decode_framed, encode_framed};
use super::op::MessageId;
use super::summary::{BodyPart, PartKind};

/// Appended to a summary page's name, the name of its text page (a side
/// object collected with the page it belongs to).
pub const TEXT_PAGE_SUFFIX: &str = ".t";

/// A message whose searchable text is longer is left out of its text
/// page: searches read its body, as without a page.
pub const MAX_MESSAGE_TEXT: usize = 1 << 20;

/// Bytes of text a text page holds at most (before compression); the
/// messages past it are left out. Bounds what reading a page costs.
pub const MAX_PAGE_TEXT: usize = 8 << 20;

/// First bytes of a text page.
const TEXT_MAGIC: &[u8; 4] = b"\0tp1";

/// What separates the texts of a message's parts in its searchable text.
/// A needle never holds it (IMAP strings cannot hold NUL, RFC 9051 §4.3,
/// and `imap::search` replaces one that does), so no match spans two parts.
pub const PART_SEPARATOR: char = '\0';

/// The name of the text page of summary page `page`.
pub fn text_page_name(page: &str) -> String {
    format!("{page}{TEXT_PAGE_SUFFIX}")
}

/// The searchable text of a raw message whose structure is `body`: the
/// decoded, case-folded texts of [`part_texts`], joined by
/// [`PART_SEPARATOR`].
pub fn searchable_text(raw: &[u8], body: &BodyPart) -> String {
    let parts = part_texts(raw, body);
    let mut out = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(PART_SEPARATOR);
        }
        out.push_str(part);
    }
    out
}

/// Whether searchable `text` contains `needle`, already case-folded
/// ([`fold_str`]) and without [`PART_SEPARATOR`]. Byte for byte: a
/// substring of valid UTF-8 found in valid UTF-8 starts and ends on
/// character boundaries.
pub fn text_contains(text: &[u8], needle: &str) -> bool {
    memchr::memmem::find(text, needle.as_bytes()).is_some()
}

/// A text page: the searchable texts of some of the messages of one
/// summary page, by message id. A message of the page missing from it
/// (too long, or its body unreadable when the page was written) is
/// searched in its body.
///
/// Stored framed, as summary pages are (`mailbox::body`), with its own
/// magic: reading one is slicing it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TextPage {
    pub texts: Vec<(MessageId, Bytes)>,
}

impl TextPage {
    /// Adds the text of message `id` if it is short enough and the page
    /// has room: whether it did.
    pub fn add(&mut self, id: MessageId, text: String) -> bool {
        let used: usize = self.texts.iter().map(|(_, t)| t.len()).sum();
        if text.len() > MAX_MESSAGE_TEXT || used + text.len() > MAX_PAGE_TEXT {
            return false;
        }
        self.texts.push((id, Bytes::from(text)));
        true
    }

    /// The framed form.
    pub fn encode(&self) -> Vec<u8> {
        encode_framed(
            TEXT_MAGIC,
            self.texts.iter().map(|(id, t)| (*id, t.as_ref())),
        )
    }

    /// Reads what [`TextPage::encode`] wrote; the texts are slices of
    /// `bytes`. They are not checked to be UTF-8: only the key holder
    /// writes pages, and matching is byte for byte.
    pub fn decode(bytes: Bytes) -> Result<TextPage, &'static str> {
        Ok(TextPage {
            texts: decode_framed(TEXT_MAGIC, &bytes)?,
        })
    }

    /// The largest encoded page [`TextPage::add`] lets through.
    pub const fn max_encoded(messages: usize) -> usize {
        TEXT_MAGIC.len() + 4 + messages * (16 + 4 + 4) + MAX_PAGE_TEXT
    }
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
    out
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
fn part_texts(raw: &[u8], body: &BodyPart) -> Vec<String> {
    fn walk(message: &mail_parser::Message<'_>, out: &mut Vec<String>) {
        for part in &message.parts {
            match &part.body {
                mail_parser::PartType::Text(t) => out.push(fold_str(t)),
                mail_parser::PartType::Html(h) => {
                    out.push(fold_str(&mail_parser::decoders::html::html_to_text(h)))
                }
                mail_parser::PartType::Message(inner) => walk(inner, out),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    if let Some(message) = crate::mailbox::summary::parse_mail(raw) {
        walk(&message, &mut out);
    }
    encapsulated_headers(raw, body, &mut out);
    out
}

/// Appends the decoded header of every message attached below `part`, as
/// `Name: value` lines, case-folded.
fn encapsulated_headers(raw: &[u8], part: &BodyPart, out: &mut Vec<String>) {
    match &part.kind {
        PartKind::Leaf => {}
        PartKind::Multipart(children) => {
            for child in children {
                encapsulated_headers(raw, child, out);
            }
        }
        PartKind::Message(inner) => {
            let clamp = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).min(raw.len());
            let start = clamp(inner.body.header_start);
            let end = clamp(inner.body.body_start).max(start);
            out.push(fold_str(&header_text(&raw[start..end])));
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
    }

    #[test]
    fn text_pages_round_trip_as_slices_and_refuse_damage() {
        let mut page = TextPage::default();
        assert!(page.add(id(1), "caf\u{e9} cr\u{e8}me".into()));
        assert!(page.add(id(2), String::new()));
        assert!(page.add(id(3), "a\0b".into()));
        let bytes = Bytes::from(page.encode());
        let decoded = TextPage::decode(bytes.clone()).unwrap();
        assert_eq!(decoded, page);
        let range = bytes.as_ptr_range();
        assert!(range.contains(&decoded.texts[0].1.as_ptr()), "a slice");
        for cut in 0..bytes.len() {
            assert!(
                TextPage::decode(bytes.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
        // A summary page is not a text page.
        let summaries = crate::mailbox::body::SummaryPage::default().encode();
        assert!(TextPage::decode(Bytes::from(summaries)).is_err());
    }

    /// Texts too long for a message or for the page's room are left out
    /// (searched in their bodies), and a page stays under its bound.
    #[test]
    fn text_pages_are_bounded() {
        let mut page = TextPage::default();
        assert!(!page.add(id(0), "x".repeat(MAX_MESSAGE_TEXT + 1)));
        assert!(page.add(id(0), "x".repeat(MAX_MESSAGE_TEXT)));
        let mut added = 1;
        for n in 1..=255 {
            if page.add(id(n), "y".repeat(MAX_MESSAGE_TEXT)) {
                added += 1;
            }
        }
        assert_eq!(added, MAX_PAGE_TEXT / MAX_MESSAGE_TEXT);
        assert!(page.add(id(255), String::new()), "an empty text still fits");
        assert!(page.encode().len() <= TextPage::max_encoded(256));
    }
}
