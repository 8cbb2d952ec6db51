//! MIME views of stored message summaries for FETCH: ENVELOPE,
//! BODYSTRUCTURE and BODY (RFC 9051 §7.5.2), `BODY[section]<partial>`
//! (RFC 9051 §6.4.5) and `BINARY[section]` (RFC 3516).
//!
//! Everything here is a pure function of the stored message bytes and its
//! [`MessageSummary`] (computed once at ingestion by
//! [`crate::mailbox::summary`]); nothing does I/O. Where the RFCs leave
//! room, the behaviour follows Dovecot 2.3, the reference for client
//! compatibility (tests/dovecot_mime.rs compares the two;
//! doc/imap-differences.md lists where and why we differ).
//!
//! Invariants:
//! - No function panics on any input, even bytes that do not match the
//!   summary: every offset is clamped to the message.
//! - Strings go on the wire as quoted strings when they can, literals
//!   otherwise (8-bit, CR, LF); NUL octets, which IMAP cannot carry in a
//!   string, are dropped.

use std::num::NonZeroU32;

use imap_codec::imap_types::body::{
    BasicFields, Body, BodyStructure, Disposition, Language, Location, MultiPartExtensionData,
    SinglePartExtensionData, SpecificFields,
};
use imap_codec::imap_types::core::{IString, NString, Vec1};
use imap_codec::imap_types::envelope::{Address, Envelope};
use imap_codec::imap_types::fetch::Section;

use crate::mailbox::summary::{self, BodyPart, MessageSummary, PartKind, RawText};

// ---------------------------------------------------------------------
// Strings

/// An IMAP string (RFC 9051 §4.3): quoted when every octet is a
/// TEXT-CHAR, a literal otherwise; NUL octets (CHAR8 excludes them) are
/// dropped.
fn istring(bytes: &[u8]) -> IString<'static> {
    let clean: Vec<u8> = bytes.iter().copied().filter(|&b| b != 0).collect();
    // A NUL-free byte string is always a valid literal.
    IString::try_from(clean).unwrap_or_else(|_| IString::try_from("").expect("empty string"))
}

fn nstring(text: Option<&RawText>) -> NString<'static> {
    NString(text.map(|t| istring(t.as_bytes())))
}

/// A parameter list: RFC 2231 extended parameters (`name*`) after the
/// others, each group in header order, as Dovecot writes them.
fn params(list: &[(String, RawText)]) -> Vec<(IString<'static>, IString<'static>)> {
    let (plain, extended): (Vec<_>, Vec<_>) =
        list.iter().partition(|(name, _)| !name.ends_with('*'));
    plain
        .into_iter()
        .chain(extended)
        .map(|(name, value)| (istring(name.as_bytes()), istring(value.as_bytes())))
        .collect()
}

fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------
// ENVELOPE

/// ENVELOPE (RFC 9051 §7.5.2): date, subject, from, sender, reply-to, to,
/// cc, bcc, in-reply-to, message-id. Header values go out raw (encoded
/// words kept), absent ones as NIL; an empty address list is NIL. Group
/// syntax (RFC 5322 §3.4) is already in the summary as IMAP wants it:
/// `(NIL NIL "group" NIL)` opens a group, `(NIL NIL NIL NIL)` closes it.
/// The summary has defaulted Sender and Reply-To to From.
pub fn envelope(e: &summary::Envelope) -> Envelope<'static> {
    let addresses = |list: &[summary::Address]| -> Vec<Address<'static>> {
        list.iter()
            .map(|a| Address {
                name: nstring(a.name.as_ref()),
                adl: nstring(a.adl.as_ref()),
                mailbox: nstring(a.mailbox.as_ref()),
                host: nstring(a.host.as_ref()),
            })
            .collect()
    };
    Envelope {
        date: nstring(e.date.as_ref()),
        subject: nstring(e.subject.as_ref()),
        from: addresses(&e.from),
        sender: addresses(&e.sender),
        reply_to: addresses(&e.reply_to),
        to: addresses(&e.to),
        cc: addresses(&e.cc),
        bcc: addresses(&e.bcc),
        in_reply_to: nstring(e.in_reply_to.as_ref()),
        message_id: nstring(e.message_id.as_ref()),
    }
}

// ---------------------------------------------------------------------
// BODYSTRUCTURE

/// BODYSTRUCTURE (`extended`) or BODY (RFC 9051 §7.5.2) of a part, usually
/// `summary.body`.
///
/// - `text/*` parts carry their line count; `message/rfc822` parts the
///   envelope, structure and line count of the encapsulated message.
/// - `message/global` is written as a basic part, as Dovecot 2.3 does
///   (RFC 3501's grammar knows only `MESSAGE/RFC822`, and imap-codec
///   writes no other); sections treat it as a leaf too.
/// - A multipart without parts (no boundary, or no boundary line) gets
///   one empty `text/plain` part: the grammar wants at least one (this is
///   Dovecot's `EMPTY_BODYSTRUCTURE`).
/// - Extension data (BODYSTRUCTURE only), always written in full: md5,
///   disposition, language, location for a leaf; parameters,
///   disposition, language, location for a multipart.
pub fn body_structure(part: &BodyPart, extended: bool) -> BodyStructure<'static> {
    let disposition = || Disposition {
        disposition: part
            .disposition
            .as_ref()
            .map(|d| (istring(d.value.as_bytes()), params(&d.params))),
        tail: Some(Language {
            language: part
                .language
                .iter()
                .map(|tag| istring(tag.as_bytes()))
                .collect(),
            tail: Some(Location {
                location: nstring(part.location.as_ref()),
                extensions: Vec::new(),
            }),
        }),
    };
    match &part.kind {
        PartKind::Multipart(children) => {
            let bodies: Vec<BodyStructure<'static>> = if children.is_empty() {
                vec![empty_text_part(extended)]
            } else {
                children
                    .iter()
                    .map(|c| body_structure(c, extended))
                    .collect()
            };
            BodyStructure::Multi {
                bodies: Vec1::try_from(bodies).expect("at least one part"),
                subtype: istring(part.subtype.as_bytes()),
                extension_data: extended.then(|| MultiPartExtensionData {
                    parameter_list: params(&part.params),
                    tail: Some(disposition()),
                }),
            }
        }
        kind => {
            let basic = BasicFields {
                parameter_list: params(&part.params),
                id: nstring(part.id.as_ref()),
                description: nstring(part.description.as_ref()),
                content_transfer_encoding: istring(part.encoding.as_bytes()),
                size: clamp_u32(part.size()),
            };
            let specific = match kind {
                PartKind::Message(inner) if part.subtype == "rfc822" => SpecificFields::Message {
                    envelope: Box::new(envelope(&inner.envelope)),
                    body_structure: Box::new(body_structure(&inner.body, extended)),
                    number_of_lines: clamp_u32(part.lines),
                },
                _ if part.media_type == "text" => SpecificFields::Text {
                    subtype: istring(part.subtype.as_bytes()),
                    number_of_lines: clamp_u32(part.lines),
                },
                _ => SpecificFields::Basic {
                    r#type: istring(part.media_type.as_bytes()),
                    subtype: istring(part.subtype.as_bytes()),
                },
            };
            BodyStructure::Single {
                body: Body { basic, specific },
                extension_data: extended.then(|| SinglePartExtensionData {
                    md5: nstring(part.md5.as_ref()),
                    tail: Some(disposition()),
                }),
            }
        }
    }
}

/// `("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)`, standing
/// in for the parts of a multipart that has none.
fn empty_text_part(extended: bool) -> BodyStructure<'static> {
    BodyStructure::Single {
        body: Body {
            basic: BasicFields {
                parameter_list: vec![(istring(b"charset"), istring(b"us-ascii"))],
                id: NString(None),
                description: NString(None),
                content_transfer_encoding: istring(b"7bit"),
                size: 0,
            },
            specific: SpecificFields::Text {
                subtype: istring(b"plain"),
                number_of_lines: 0,
            },
        },
        extension_data: extended.then(|| SinglePartExtensionData {
            md5: NString(None),
            tail: Some(Disposition {
                disposition: None,
                tail: Some(Language {
                    language: Vec::new(),
                    tail: Some(Location {
                        location: NString(None),
                        extensions: Vec::new(),
                    }),
                }),
            }),
        }),
    }
}

// ---------------------------------------------------------------------
// Sections

/// The part a section path names (RFC 9051 §6.4.5), walking the summary
/// as Dovecot walks its part tree:
///
/// - a multipart's `n` is its n-th part;
/// - a part that is not a multipart answers to `1` once, meaning itself
///   (so a non-multipart message's part 1 is its body, and `1.1` of a
///   leaf inside a multipart is still that leaf, but `1.1.1` is nothing);
/// - a `message/rfc822` part followed by more numbers opens the
///   encapsulated message, whose numbering starts again (`message/global`
///   is a leaf, see [`body_structure`]).
fn find_part<'a>(root: &'a BodyPart, path: &[NonZeroU32]) -> Option<&'a BodyPart> {
    let mut part = root;
    let mut used_one = false;
    for (i, n) in path.iter().enumerate() {
        match &part.kind {
            PartKind::Multipart(children) => {
                part = children.get(usize::try_from(n.get() - 1).ok()?)?;
                used_one = false;
            }
            _ if n.get() == 1 && !used_one => used_one = true,
            _ => return None,
        }
        if i + 1 < path.len()
            && let Some(inner) = encapsulated(part)
        {
            part = inner;
            used_one = false;
        }
    }
    Some(part)
}

/// `raw[start..end]`, clamped to `raw`.
fn range(raw: &[u8], start: u64, end: u64) -> &[u8] {
    let len = raw.len() as u64;
    let end = end.min(len);
    let start = start.min(end);
    // Both are at most raw.len(), which fits in usize.
    &raw[start as usize..end as usize]
}

/// The header of a part: `header_start..body_start`.
fn header_of<'a>(raw: &'a [u8], part: &BodyPart) -> &'a [u8] {
    range(raw, part.header_start, part.body_start)
}

fn body_of<'a>(raw: &'a [u8], part: &BodyPart) -> &'a [u8] {
    range(raw, part.body_start, part.body_end)
}

/// The encapsulated message of a `message/rfc822` part, for part numbers
/// below it and `n.HEADER`, `n.TEXT`, `n.HEADER.FIELDS`; other parts
/// (`message/global` included, see [`body_structure`]) have none.
fn encapsulated(part: &BodyPart) -> Option<&BodyPart> {
    match &part.kind {
        PartKind::Message(inner) if part.subtype == "rfc822" => Some(&inner.body),
        _ => None,
    }
}

/// A part whose body is its content: neither a multipart nor an
/// encapsulated message.
fn is_leaf(part: &BodyPart) -> bool {
    match part.kind {
        PartKind::Leaf => true,
        PartKind::Message(_) => encapsulated(part).is_none(),
        PartKind::Multipart(_) => false,
    }
}

/// What a section (RFC 9051 §6.4.5) of a stored message holds: `None`
/// section is the whole message; `HEADER`, `HEADER.FIELDS (...)`,
/// `HEADER.FIELDS.NOT (...)`, `TEXT` of the message or of a
/// `message/rfc822` part; `n.MIME` is a part's MIME header; `n` a part's
/// body (see [`find_part`] for the numbering).
///
/// `None` when the section names no part (a number past the last part,
/// `n.HEADER` of a part that is no `message/rfc822`): Dovecot then answers
/// an empty string, and so should the caller.
pub fn section(
    raw: &[u8],
    summary: &MessageSummary,
    section: Option<&Section<'_>>,
) -> Option<Vec<u8>> {
    let root = &summary.body;
    let message = |path: Option<&imap_codec::imap_types::fetch::Part>| -> Option<&BodyPart> {
        match path {
            None => Some(root),
            Some(p) => find_part(root, p.0.as_ref()).and_then(encapsulated),
        }
    };
    let Some(section) = section else {
        return Some(raw.to_vec());
    };
    Some(match section {
        Section::Part(p) => body_of(raw, find_part(root, p.0.as_ref())?).to_vec(),
        Section::Mime(p) => header_of(raw, find_part(root, p.0.as_ref())?).to_vec(),
        Section::Header(p) => header_of(raw, message(p.as_ref())?).to_vec(),
        Section::Text(p) => body_of(raw, message(p.as_ref())?).to_vec(),
        Section::HeaderFields(p, names) => {
            filter_header(header_of(raw, message(p.as_ref())?), names.as_ref(), true)
        }
        Section::HeaderFieldsNot(p, names) => {
            filter_header(header_of(raw, message(p.as_ref())?), names.as_ref(), false)
        }
    })
}

/// Answers `HEADER`, `HEADER.FIELDS (...)` and `HEADER.FIELDS.NOT (...)`
/// of the top-level message from `summary.header` alone, without the
/// message body. `None` when the section needs the body, or when the
/// stored header was cut (see [`summary::MAX_STORED_HEADER`]).
pub fn section_from_header(
    summary: &MessageSummary,
    section: Option<&Section<'_>>,
) -> Option<Vec<u8>> {
    if summary.header.len() as u64 != summary.header_bytes {
        return None;
    }
    let header = summary.header.as_bytes();
    match section? {
        Section::Header(None) => Some(header.to_vec()),
        Section::HeaderFields(None, names) => Some(filter_header(header, names.as_ref(), true)),
        Section::HeaderFieldsNot(None, names) => Some(filter_header(header, names.as_ref(), false)),
        _ => None,
    }
}

/// The header fields of `header` whose name is (`keep`) or is not
/// (`!keep`) in `names`, compared case-insensitively (RFC 9051 §6.4.5),
/// in message order with their continuation lines, then the blank line.
/// Where the header has no blank line (a message without body) this
/// follows Dovecot: `HEADER.FIELDS` still ends in a blank line (and a
/// last line without its CRLF gets one), `HEADER.FIELDS.NOT` copies the
/// lines as they are and adds nothing.
fn filter_header<N: AsRef<[u8]>>(header: &[u8], names: &[N], keep: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut has_blank_line = false;
    let mut selected = false;
    let mut p = 0;
    while p < header.len() {
        let end = header[p..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(header.len(), |i| p + i + 1);
        let line = &header[p..end];
        if line == b"\r\n" || line == b"\n" {
            has_blank_line = true;
            break;
        }
        if line[0] != b' ' && line[0] != b'\t' {
            let name = field_name(line);
            let listed = names.iter().any(|n| n.as_ref().eq_ignore_ascii_case(name));
            selected = listed == keep;
        }
        if selected {
            out.extend_from_slice(line);
            if keep && !line.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
        p = end;
    }
    if keep || has_blank_line {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The name of the header field starting on `line`: before the colon,
/// trailing whitespace removed (RFC 5322 §3.6.8 allows none, obsolete
/// syntax some); a line without a colon is its own name.
fn field_name(line: &[u8]) -> &[u8] {
    let name = match line.iter().position(|&b| b == b':') {
        Some(colon) => &line[..colon],
        None => line,
    };
    let end = name
        .iter()
        .rposition(|&b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .map_or(0, |i| i + 1);
    &name[..end]
}

/// A partial fetch `<offset.length>` (RFC 9051 §6.4.5): the octets from
/// `offset`, at most `length` of them; empty when `offset` is past the
/// end.
pub fn partial(bytes: &[u8], offset: u32, length: u32) -> &[u8] {
    let start = (offset as usize).min(bytes.len());
    let end = start.saturating_add(length as usize).min(bytes.len());
    &bytes[start..end]
}

// ---------------------------------------------------------------------
// BINARY

/// Why a `BINARY[...]` cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryError {
    /// The part's Content-Transfer-Encoding is none we know: the caller
    /// answers `NO [UNKNOWN-CTE]` (RFC 3516 §4.3).
    #[error("unknown Content-Transfer-Encoding {0:?}")]
    UnknownEncoding(String),
    /// The body is not valid in its encoding (base64 with characters
    /// outside the alphabet): Dovecot answers `NO [PARSE]`.
    #[error("invalid {0} data")]
    Corrupt(String),
    /// The section names no part: Dovecot answers an empty string (and
    /// `BINARY.SIZE` 0).
    #[error("no such part")]
    NoSuchPart,
}

/// `BINARY[part]` (RFC 3516 §4.2): the part's body with its
/// Content-Transfer-Encoding undone. An empty `part` is the whole message.
///
/// A multipart or `message/rfc822` part (or the whole message) has an
/// identity encoding itself (RFC 2045 §6.4); like Dovecot, its answer has
/// every base64 or quoted-printable leaf inside decoded, with that leaf's
/// Content-Transfer-Encoding field replaced by
/// `Content-Transfer-Encoding: binary` at the end of its header, so the
/// answer is still a valid MIME entity. One leaf with an unknown encoding
/// then fails the whole answer.
pub fn binary(
    raw: &[u8],
    summary: &MessageSummary,
    part: &[NonZeroU32],
) -> Result<Vec<u8>, BinaryError> {
    if part.is_empty() {
        let mut edits = Vec::new();
        leaf_edits(raw, &summary.body, &mut edits)?;
        return Ok(apply_edits(raw, 0, raw.len() as u64, &edits));
    }
    let part = find_part(&summary.body, part).ok_or(BinaryError::NoSuchPart)?;
    if is_leaf(part) {
        return decode_leaf(raw, part);
    }
    let mut edits = Vec::new();
    match &part.kind {
        PartKind::Multipart(children) => {
            for child in children {
                leaf_edits(raw, child, &mut edits)?;
            }
        }
        _ => {
            if let Some(inner) = encapsulated(part) {
                leaf_edits(raw, inner, &mut edits)?;
            }
        }
    }
    Ok(apply_edits(raw, part.body_start, part.body_end, &edits))
}

/// `BINARY.SIZE[part]` (RFC 3516 §4.2): the length of [`binary`]'s answer
/// (for an empty `part`, of the whole message, header included, even when
/// its body is one leaf).
pub fn binary_size(
    raw: &[u8],
    summary: &MessageSummary,
    part: &[NonZeroU32],
) -> Result<u64, BinaryError> {
    if !part.is_empty()
        && let Some(found) = find_part(&summary.body, part)
        && is_leaf(found)
        && is_identity(&found.encoding)
    {
        return Ok(body_of(raw, found).len() as u64);
    }
    binary(raw, summary, part).map(|b| b.len() as u64)
}

/// Encodings that leave the body as it is (RFC 2045 §6.2).
fn is_identity(encoding: &str) -> bool {
    matches!(encoding, "7bit" | "8bit" | "binary")
}

/// The body of a leaf, decoded.
fn decode_leaf(raw: &[u8], part: &BodyPart) -> Result<Vec<u8>, BinaryError> {
    let body = body_of(raw, part);
    match part.encoding.as_str() {
        e if is_identity(e) => Ok(body.to_vec()),
        "base64" => decode_base64(body).ok_or_else(|| BinaryError::Corrupt("base64".to_owned())),
        "quoted-printable" => Ok(decode_quoted_printable(body)),
        other => Err(BinaryError::UnknownEncoding(other.to_owned())),
    }
}

/// A replacement of `raw[start..end]`.
struct Edit {
    start: u64,
    end: u64,
    bytes: Vec<u8>,
}

/// The edits that decode every encoded leaf at or below `part`, in
/// message order: the leaf's header and body replaced by its rewritten
/// header and decoded body.
fn leaf_edits(raw: &[u8], part: &BodyPart, edits: &mut Vec<Edit>) -> Result<(), BinaryError> {
    if is_leaf(part) {
        if !is_identity(&part.encoding) {
            let mut bytes = binary_header(header_of(raw, part));
            bytes.extend_from_slice(&decode_leaf(raw, part)?);
            edits.push(Edit {
                start: part.header_start,
                end: part.body_end,
                bytes,
            });
        }
        return Ok(());
    }
    match &part.kind {
        PartKind::Multipart(children) => {
            for child in children {
                leaf_edits(raw, child, edits)?;
            }
        }
        _ => {
            if let Some(inner) = encapsulated(part) {
                leaf_edits(raw, inner, edits)?;
            }
        }
    }
    Ok(())
}

/// `raw[start..end]` with the edits (sorted, disjoint, inside the range)
/// applied.
fn apply_edits(raw: &[u8], start: u64, end: u64, edits: &[Edit]) -> Vec<u8> {
    let mut out = Vec::with_capacity(range(raw, start, end).len());
    let mut at = start;
    for edit in edits {
        if edit.start < at || edit.end > end {
            continue; // summary and bytes disagree: keep what is there
        }
        out.extend_from_slice(range(raw, at, edit.start));
        out.extend_from_slice(&edit.bytes);
        at = edit.end;
    }
    out.extend_from_slice(range(raw, at, end));
    out
}

/// A part header with its Content-Transfer-Encoding fields removed and
/// `Content-Transfer-Encoding: binary` added last (as Dovecot writes it).
fn binary_header(header: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + 36);
    let mut skipping = false;
    let mut blank_line: &[u8] = b"";
    let mut p = 0;
    while p < header.len() {
        let end = header[p..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(header.len(), |i| p + i + 1);
        let line = &header[p..end];
        p = end;
        if line == b"\r\n" || line == b"\n" {
            blank_line = line;
            break;
        }
        if line[0] != b' ' && line[0] != b'\t' {
            skipping = field_name(line).eq_ignore_ascii_case(b"content-transfer-encoding");
        }
        if !skipping {
            out.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"Content-Transfer-Encoding: binary\r\n");
    out.extend_from_slice(blank_line);
    out
}

/// Decodes base64 (RFC 2045 §6.8): whitespace is skipped, decoding stops
/// at the first `=`; `None` on any other octet outside the alphabet.
fn decode_base64(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in body {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Decodes quoted-printable (RFC 2045 §6.7): `=XX` (either case) is an
/// octet, `=` at a line end a soft line break, whitespace at a line end is
/// transport padding and dropped; a malformed `=` is kept as it is.
fn decode_quoted_printable(body: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|&b| b == b'\n') {
        let (content, ending): (&[u8], &[u8]) = if let Some(c) = line.strip_suffix(b"\r\n") {
            (c, b"\r\n")
        } else if let Some(c) = line.strip_suffix(b"\n") {
            (c, b"\n")
        } else {
            (line, b"")
        };
        let content = {
            let end = content
                .iter()
                .rposition(|&b| b != b' ' && b != b'\t')
                .map_or(0, |i| i + 1);
            &content[..end]
        };
        let mut i = 0;
        let mut soft_break = false;
        while i < content.len() {
            let b = content[i];
            if b == b'=' {
                if i + 1 == content.len() {
                    soft_break = true;
                    break;
                }
                if let (Some(h), Some(l)) = (
                    content.get(i + 1).copied().and_then(hex),
                    content.get(i + 2).copied().and_then(hex),
                ) {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
            }
            out.push(b);
            i += 1;
        }
        if !soft_break {
            out.extend_from_slice(ending);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::summary::{normalize_crlf, summarize};
    use imap_codec::imap_types::core::AString;
    use imap_codec::imap_types::fetch::Part;

    const FORWARD: &str = "From: Louis <louis@example.org>\n\
        Subject: Fwd\n\
        Content-Type: multipart/mixed; boundary=\"b\"\n\
        \n\
        --b\n\
        Content-Type: text/plain\n\
        \n\
        Below.\n\
        --b\n\
        Content-Type: message/rfc822\n\
        \n\
        Subject: Inner\n\
        Content-Type: multipart/alternative; boundary=\"c\"\n\
        \n\
        --c\n\
        Content-Type: text/plain\n\
        \n\
        plain\n\
        --c\n\
        Content-Type: text/html\n\
        \n\
        <p>html</p>\n\
        --c--\n\
        \n\
        --b--\n";

    fn message(text: &str) -> (Vec<u8>, MessageSummary) {
        let raw = normalize_crlf(text.as_bytes()).into_owned();
        let summary = summarize(&raw);
        (raw, summary)
    }

    fn path(numbers: &[u32]) -> Part {
        let numbers: Vec<NonZeroU32> = numbers
            .iter()
            .map(|&n| NonZeroU32::new(n).unwrap())
            .collect();
        Part(Vec1::try_from(numbers).unwrap())
    }

    fn names(list: &[&'static str]) -> Vec1<AString<'static>> {
        let list: Vec<AString<'static>> = list
            .iter()
            .map(|n| AString::try_from(*n).unwrap())
            .collect();
        Vec1::try_from(list).unwrap()
    }

    fn get(m: &(Vec<u8>, MessageSummary), s: Section<'_>) -> Option<String> {
        section(&m.0, &m.1, Some(&s)).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn part_numbers_follow_dovecot() {
        let m = message(FORWARD);
        let part = |n: &[u32]| get(&m, Section::Part(path(n)));
        assert_eq!(part(&[1]).as_deref(), Some("Below."));
        // A leaf answers to 1 once more, not twice (Dovecot).
        assert_eq!(part(&[1, 1]).as_deref(), Some("Below."));
        assert_eq!(part(&[1, 1, 1]), None);
        assert_eq!(part(&[3]), None);
        // Into the message/rfc822 part: numbering restarts.
        assert_eq!(part(&[2, 1]).as_deref(), Some("plain"));
        assert_eq!(part(&[2, 2]).as_deref(), Some("<p>html</p>"));
        assert_eq!(part(&[2, 1, 1]).as_deref(), Some("plain"));
        assert_eq!(part(&[2, 3]), None);
        assert!(part(&[2]).unwrap().starts_with("Subject: Inner\r\n"));
        assert!(part(&[2]).unwrap().ends_with("--c--\r\n"));
    }

    #[test]
    fn header_text_and_mime() {
        let m = message(FORWARD);
        assert_eq!(
            get(&m, Section::Mime(path(&[2, 2]))).as_deref(),
            Some("Content-Type: text/html\r\n\r\n")
        );
        assert_eq!(
            get(&m, Section::Header(Some(path(&[2])))).as_deref(),
            Some("Subject: Inner\r\nContent-Type: multipart/alternative; boundary=\"c\"\r\n\r\n")
        );
        assert!(
            get(&m, Section::Text(Some(path(&[2]))))
                .unwrap()
                .starts_with("--c\r\n")
        );
        // HEADER and TEXT of a part that is no message/rfc822: nothing.
        assert_eq!(get(&m, Section::Header(Some(path(&[1])))), None);
        assert_eq!(get(&m, Section::Text(Some(path(&[2, 1])))), None);
        let header = get(&m, Section::Header(None)).unwrap();
        let text = get(&m, Section::Text(None)).unwrap();
        assert_eq!(format!("{header}{text}").as_bytes(), m.0.as_slice());
        assert_eq!(section(&m.0, &m.1, None).unwrap(), m.0);
    }

    #[test]
    fn non_multipart_message_part_one_is_its_body() {
        // RFC 9051 §6.4.5; 1.MIME is then the message header (Dovecot).
        let m = message("Subject: hi\nX-A: 1\n\nbody\n");
        assert_eq!(
            get(&m, Section::Part(path(&[1]))).as_deref(),
            Some("body\r\n")
        );
        assert_eq!(get(&m, Section::Part(path(&[1, 1]))), None);
        assert_eq!(get(&m, Section::Part(path(&[2]))), None);
        assert_eq!(
            get(&m, Section::Mime(path(&[1]))).as_deref(),
            Some("Subject: hi\r\nX-A: 1\r\n\r\n")
        );
    }

    #[test]
    fn header_fields_keep_order_folding_and_blank_line() {
        let m = message("To: a@b\nSubject: one\n two\nX-Other: x\nsubject: again\n\nbody\n");
        let fields = |l: &[&'static str]| get(&m, Section::HeaderFields(None, names(l)));
        let not = |l: &[&'static str]| get(&m, Section::HeaderFieldsNot(None, names(l)));
        assert_eq!(
            fields(&["SUBJECT", "to"]).as_deref(),
            Some("To: a@b\r\nSubject: one\r\n two\r\nsubject: again\r\n\r\n")
        );
        assert_eq!(fields(&["X-Nothing"]).as_deref(), Some("\r\n"));
        assert_eq!(
            not(&["subject", "to"]).as_deref(),
            Some("X-Other: x\r\n\r\n")
        );
        // The same from the stored header alone.
        let s = Section::HeaderFields(None, names(&["SUBJECT", "to"]));
        assert_eq!(
            section_from_header(&m.1, Some(&s)),
            section(&m.0, &m.1, Some(&s))
        );
        assert_eq!(section_from_header(&m.1, Some(&Section::Text(None))), None);
        assert_eq!(section_from_header(&m.1, None), None);
    }

    #[test]
    fn header_without_blank_line() {
        // Dovecot: HEADER.FIELDS always ends in a blank line,
        // HEADER.FIELDS.NOT adds none the header did not have.
        let m = message("Subject: h\n");
        assert_eq!(
            get(&m, Section::Header(None)).as_deref(),
            Some("Subject: h\r\n")
        );
        assert_eq!(
            get(&m, Section::HeaderFields(None, names(&["subject"]))).as_deref(),
            Some("Subject: h\r\n\r\n")
        );
        assert_eq!(
            get(&m, Section::HeaderFieldsNot(None, names(&["subject"]))).as_deref(),
            Some("")
        );
        let m = message("From: a@b\nX-Last: cut");
        assert_eq!(
            get(&m, Section::HeaderFields(None, names(&["x-last"]))).as_deref(),
            Some("X-Last: cut\r\n\r\n")
        );
        assert_eq!(
            get(&m, Section::HeaderFields(None, names(&["nothing"]))).as_deref(),
            Some("\r\n")
        );
        assert_eq!(
            get(&m, Section::HeaderFieldsNot(None, names(&["from"]))).as_deref(),
            Some("X-Last: cut")
        );
    }

    #[test]
    fn message_global_is_a_leaf() {
        let m = message(
            "Content-Type: multipart/mixed; boundary=b\n\n\
             --b\nContent-Type: message/global\n\nSubject: inner\n\nhello\n--b--\n",
        );
        assert_eq!(get(&m, Section::Header(Some(path(&[1])))), None);
        assert_eq!(
            get(&m, Section::Part(path(&[1, 1]))).as_deref(),
            Some("Subject: inner\r\n\r\nhello")
        );
        let n = [NonZeroU32::new(1).unwrap()];
        assert_eq!(binary_size(&m.0, &m.1, &n), Ok(23));
        let BodyStructure::Multi { bodies, .. } = body_structure(&m.1.body, false) else {
            panic!("not a multipart");
        };
        let BodyStructure::Single { body, .. } = &bodies.as_ref()[0] else {
            panic!("not a single part");
        };
        assert!(matches!(body.specific, SpecificFields::Basic { .. }));
    }

    #[test]
    fn extended_parameters_come_last() {
        let m =
            message("Content-Type: text/plain; name*=utf-8''a%20b; charset=utf-8; x=1\n\nbody\n");
        let names: Vec<Vec<u8>> = params(&m.1.body.params)
            .into_iter()
            .map(|(n, _)| n.into_inner().into_owned())
            .collect();
        assert_eq!(names, [&b"charset"[..], b"x", b"name*"]);
    }

    #[test]
    fn header_from_summary_refuses_a_cut_header() {
        let (_, mut summary) = message("Subject: h\n\nbody\n");
        summary.header.0.truncate(3);
        assert_eq!(
            section_from_header(&summary, Some(&Section::Header(None))),
            None
        );
    }

    #[test]
    fn partial_clamps() {
        assert_eq!(partial(b"hello", 1, 3), b"ell");
        assert_eq!(partial(b"hello", 3, 100), b"lo");
        assert_eq!(partial(b"hello", 9, 1), b"");
        assert_eq!(partial(b"hello", u32::MAX, u32::MAX), b"");
    }

    #[test]
    fn binary_decodes_leaves() {
        let m = message(
            "Content-Type: multipart/mixed; boundary=b\n\n\
             --b\nContent-Transfer-Encoding: base64\n\naGVsbG8g\nd29ybGQ=\n\
             --b\nContent-Transfer-Encoding: Quoted-Printable\n\nh=C3=a9llo=\nworld=3D  \nend\n\
             --b\nContent-Transfer-Encoding: x-uuencode\n\nabc\n\
             --b\nContent-Transfer-Encoding: base64\n\naGVs!!\n\
             --b--\n",
        );
        let n = |v: &[u32]| -> Vec<NonZeroU32> {
            v.iter().map(|&x| NonZeroU32::new(x).unwrap()).collect()
        };
        assert_eq!(binary(&m.0, &m.1, &n(&[1])).unwrap(), b"hello world");
        assert_eq!(
            binary(&m.0, &m.1, &n(&[2])).unwrap(),
            "hélloworld=\r\nend".as_bytes()
        );
        assert_eq!(binary_size(&m.0, &m.1, &n(&[2])), Ok(17));
        assert_eq!(
            binary(&m.0, &m.1, &n(&[3])),
            Err(BinaryError::UnknownEncoding("x-uuencode".to_owned()))
        );
        assert_eq!(
            binary(&m.0, &m.1, &n(&[4])),
            Err(BinaryError::Corrupt("base64".to_owned()))
        );
        assert_eq!(binary(&m.0, &m.1, &n(&[5])), Err(BinaryError::NoSuchPart));
        assert_eq!(
            binary_size(&m.0, &m.1, &n(&[5])),
            Err(BinaryError::NoSuchPart)
        );
        // The whole message: every leaf decoded, so one unknown encoding
        // fails it (Dovecot).
        assert_eq!(
            binary(&m.0, &m.1, &[]),
            Err(BinaryError::UnknownEncoding("x-uuencode".to_owned()))
        );
        assert_eq!(
            binary_size(&m.0, &m.1, &[]),
            Err(BinaryError::UnknownEncoding("x-uuencode".to_owned()))
        );
    }

    #[test]
    fn binary_of_a_multipart_decodes_the_leaves_inside() {
        let m = message(
            "Subject: s\nContent-Type: multipart/mixed; boundary=b\n\n\
             --b\nContent-Transfer-Encoding: base64\nContent-Type: text/plain\n\naGk=\n\
             --b\nContent-Type: message/rfc822\n\n\
             Subject: inner\nContent-Transfer-Encoding: quoted-printable\n\ncaf=C3=A9\n\
             --b\n\nplain\n--b--\n",
        );
        let expected = "Subject: s\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: binary\r\n\r\nhi\r\n\
             --b\r\nContent-Type: message/rfc822\r\n\r\n\
             Subject: inner\r\nContent-Transfer-Encoding: binary\r\n\r\ncafé\r\n\
             --b\r\n\r\nplain\r\n--b--\r\n";
        assert_eq!(
            String::from_utf8(binary(&m.0, &m.1, &[]).unwrap()).unwrap(),
            expected
        );
        assert_eq!(binary_size(&m.0, &m.1, &[]), Ok(expected.len() as u64));
        let two = [NonZeroU32::new(2).unwrap()];
        assert_eq!(
            String::from_utf8(binary(&m.0, &m.1, &two).unwrap()).unwrap(),
            "Subject: inner\r\nContent-Transfer-Encoding: binary\r\n\r\ncafé"
        );
    }

    /// Encodes a value as imap-codec writes it on the wire.
    fn wire(item: imap_codec::imap_types::fetch::MessageDataItem<'static>) -> String {
        use imap_codec::encode::Encoder as _;
        use imap_codec::imap_types::response::{Data, Response};
        let items = Vec1::from(item);
        let response = Response::Data(Data::Fetch {
            seq: NonZeroU32::new(1).unwrap(),
            items,
        });
        let bytes = imap_codec::ResponseCodec::default()
            .encode(&response)
            .dump();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn bodystructure_on_the_wire() {
        use imap_codec::imap_types::fetch::MessageDataItem;
        let m = message(
            "Content-Type: multipart/mixed; boundary=b\n\n\
             --b\nContent-Type: text/plain; charset=utf-8\nContent-Language: en, fr\n\nhi\n\
             --b\nContent-Type: application/pdf; name=a.pdf\n\
             Content-Disposition: attachment; filename=a.pdf\n\
             Content-Transfer-Encoding: base64\nContent-MD5: abc=\n\
             Content-Location: http://x/a.pdf\nContent-ID: <id@x>\n\naGk=\n\
             --b--\n",
        );
        assert_eq!(
            wire(MessageDataItem::BodyStructure(body_structure(
                &m.1.body, true
            ))),
            "* 1 FETCH (BODYSTRUCTURE ((\"TEXT\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"7bit\" 2 0 NIL NIL (\"en\" \"fr\") NIL)\
             (\"application\" \"pdf\" (\"name\" \"a.pdf\") \"<id@x>\" NIL \"base64\" 4 \"abc=\" \
             (\"attachment\" (\"filename\" \"a.pdf\")) NIL \"http://x/a.pdf\") \
             \"mixed\" (\"boundary\" \"b\") NIL NIL NIL))\r\n"
        );
        assert_eq!(
            wire(MessageDataItem::Body(body_structure(&m.1.body, false))),
            "* 1 FETCH (BODY ((\"TEXT\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"7bit\" 2 0)\
             (\"application\" \"pdf\" (\"name\" \"a.pdf\") \"<id@x>\" NIL \"base64\" 4) \"mixed\"))\r\n"
        );
    }

    #[test]
    fn empty_multipart_gets_one_empty_text_part() {
        use imap_codec::imap_types::fetch::MessageDataItem;
        let m = message("Content-Type: multipart/mixed\n\nno boundary\n");
        assert_eq!(
            wire(MessageDataItem::Body(body_structure(&m.1.body, false))),
            "* 1 FETCH (BODY ((\"TEXT\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0) \"mixed\"))\r\n"
        );
    }

    #[test]
    fn envelope_with_groups_and_eight_bit() {
        use imap_codec::imap_types::fetch::MessageDataItem;
        let m = message(
            "From: Zoé <zoe@example.org>\nTo: team: a@x, b@y;, c@z\nSubject: \"q\" \\ s\n\nx\n",
        );
        assert_eq!(
            wire(MessageDataItem::Envelope(envelope(&m.1.envelope))),
            "* 1 FETCH (ENVELOPE (NIL \"\\\"q\\\" \\\\ s\" \
             (({4}\r\nZoé NIL \"zoe\" \"example.org\")) (({4}\r\nZoé NIL \"zoe\" \"example.org\")) \
             (({4}\r\nZoé NIL \"zoe\" \"example.org\")) \
             ((NIL NIL \"team\" NIL)(NIL NIL \"a\" \"x\")(NIL NIL \"b\" \"y\")(NIL NIL NIL NIL)(NIL NIL \"c\" \"z\")) \
             NIL NIL NIL NIL))\r\n"
        );
    }

    /// Lines that make MIME structure likely: boundaries of two nesting
    /// levels, multipart and message/rfc822 headers, encodings.
    fn mime_line() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just(String::new()),
            Just("--a".to_owned()),
            Just("--a--".to_owned()),
            Just("--b".to_owned()),
            Just("--b--".to_owned()),
            Just("Content-Type: multipart/mixed; boundary=a".to_owned()),
            Just("Content-Type: multipart/alternative; boundary=b".to_owned()),
            Just("Content-Type: message/rfc822".to_owned()),
            Just("Content-Type: message/global".to_owned()),
            Just("Content-Transfer-Encoding: base64".to_owned()),
            Just("Content-Transfer-Encoding: quoted-printable".to_owned()),
            Just("Content-Transfer-Encoding: x-unknown".to_owned()),
            Just("Subject: s".to_owned()),
            Just(" folded".to_owned()),
            "[ -~]{0,12}",
            "[=A-F0-9a-z/+]{0,12}",
        ]
    }

    proptest::proptest! {
        /// Every view answers (or declines) on any message and any part
        /// path, also given bytes its summary was not made from.
        #[test]
        fn views_never_panic(
            lines in proptest::collection::vec(mime_line(), 0..40),
            other in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            numbers in proptest::collection::vec(1u32..4, 1..5),
        ) {
            let raw = normalize_crlf(lines.join("\n").as_bytes()).into_owned();
            let summary = summarize(&raw);
            let numbers: Vec<NonZeroU32> =
                numbers.iter().map(|&n| NonZeroU32::new(n).unwrap()).collect();
            let p = Part(Vec1::try_from(numbers.clone()).unwrap());
            let _ = body_structure(&summary.body, true);
            let _ = envelope(&summary.envelope);
            for bytes in [&raw[..], &other[..]] {
                for s in [
                    Section::Part(p.clone()),
                    Section::Mime(p.clone()),
                    Section::Header(Some(p.clone())),
                    Section::Text(Some(p.clone())),
                    Section::HeaderFields(Some(p.clone()), names(&["subject"])),
                    Section::HeaderFieldsNot(None, names(&["content-type"])),
                ] {
                    let _ = section(bytes, &summary, Some(&s));
                    let _ = section_from_header(&summary, Some(&s));
                }
                let _ = binary(bytes, &summary, &numbers);
                let _ = binary(bytes, &summary, &[]);
                let _ = binary_size(bytes, &summary, &numbers);
            }
            // On its own bytes, BINARY.SIZE is BINARY's length.
            proptest::prop_assert_eq!(
                binary_size(&raw, &summary, &numbers),
                binary(&raw, &summary, &numbers).map(|b| b.len() as u64)
            );
        }
    }

    #[test]
    fn nothing_panics_on_a_summary_of_other_bytes() {
        let (_, summary) = message(FORWARD);
        let short = b"From: x\r\n";
        for s in [
            Section::Part(path(&[2, 2])),
            Section::Text(None),
            Section::Mime(path(&[2])),
            Section::HeaderFields(Some(path(&[2])), names(&["subject"])),
        ] {
            let _ = section(short, &summary, Some(&s));
        }
        let _ = binary(short, &summary, &[NonZeroU32::new(2).unwrap()]);
    }
}
