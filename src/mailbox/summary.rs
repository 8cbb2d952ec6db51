//! The message summary (doc/storage.md, "Mailbox snapshots and summary
//! pages"): everything IMAP needs to know about a
//! message without opening its body, computed once at ingestion (LMTP
//! delivery or APPEND) and stored inside the encrypted add op.
//!
//! It holds RFC822.SIZE, the raw top-level header block (for
//! `BODY[HEADER.FIELDS ...]`), the ENVELOPE fields (RFC 9051 §7.5.2), the
//! MIME structure with byte offsets (BODYSTRUCTURE, and range reads for
//! `BODY[1.2.MIME]`, `BODY[1.2]`, `BODY[TEXT]`, `BINARY[...]`), decoded header
//! values for SEARCH and SORT, the sent date, a PREVIEW (RFC 8970) and an
//! attachment hint. No IMAP type appears here: the IMAP layer serialises.
//!
//! # Input
//!
//! [`summarize`] expects the message exactly as it is stored, and messages
//! are stored with CRLF line endings: callers run [`normalize_line_ends`]
//! first and store and summarise its output. `size` and every offset are
//! of those bytes. Only the body of a `binary` part of a literal8 APPEND
//! may keep bare LFs (see [`LineEnds`]), and a CR not before LF is data.
//! Given bare LF anyway, [`summarize`] still answers (it splits lines at
//! LF and treats a CR before it as part of the line ending), but sizes
//! then describe the input, not what a CRLF store would hold.
//!
//! # MIME rules (as Dovecot's `message-parser.c` does, for compatibility)
//!
//! - A part without a valid Content-Type is `text/plain; charset=us-ascii`
//!   (RFC 2045 §5.2), or `message/rfc822` directly under `multipart/digest`
//!   (RFC 2046 §5.1.5). A `text/*` part without charset gets
//!   `charset=us-ascii` in its parameters (RFC 2045 §5.2; Dovecot does it).
//! - Only the first occurrence of a header field counts (Content-Type,
//!   Subject, From, ...).
//! - A boundary line is a line that *begins* with `--boundary` (RFC 2046
//!   §5.1.1 allows trailing whitespace; like Dovecot we accept anything
//!   after it), checked against the boundaries of every enclosing multipart,
//!   the longest match winning; `--boundary--` closes the multipart. The
//!   CRLF before a boundary line belongs to the boundary, not to the part
//!   (RFC 2046 §5.1.1). A boundary of an enclosing multipart ends every
//!   inner part, and is honoured even inside a part's header.
//! - A missing close delimiter ends the multipart at the end of the
//!   enclosing part (or message). A multipart without a `boundary`
//!   parameter, or without any boundary line, has no parts: the IMAP
//!   layer must then write one empty `text/plain` part, as RFC 9051 wants
//!   at least one (Dovecot's `EMPTY_BODYSTRUCTURE`).
//! - `message/rfc822` and `message/global` (RFC 6532 §3.5) parts are parsed
//!   as encapsulated messages, whatever their transfer encoding (as
//!   Dovecot; RFC 2046 §5.2.1 forbids encodings other than 7bit, 8bit and
//!   binary there anyway).
//! - `lines` counts LF octets in the part body (Dovecot counts the same).
//!
//! # Caps (bounded memory and size on hostile input)
//!
//! - [`MAX_DEPTH`]: multiparts and encapsulated messages nest at most 32
//!   deep; a deeper multipart has no parts, a deeper `message/rfc822` is
//!   reported as `application/octet-stream`.
//! - [`MAX_PARTS`]: at most 10,000 parts per message; later parts of a
//!   multipart are skipped (their bytes stay in the parent's body).
//! - [`MAX_HEADER_FIELDS`]: at most 10,000 header fields are read per part.
//! - [`MAX_STORED_HEADER`]: the raw top-level header kept in the summary is
//!   cut at 64 KiB (at a line end); the IMAP layer sees that
//!   `header.len() < header_bytes` and reads the blob instead.
//! - [`MAX_SEARCH_HEADERS`]: decoded search headers total at most 64 KiB.
//! - [`MAX_ADDRESSES`]: at most 1,000 addresses per ENVELOPE address list.
//! - The preview decodes at most 64 KiB of one part.

use std::borrow::Cow;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How deep multiparts and encapsulated messages may nest.
pub const MAX_DEPTH: usize = 32;
/// How many MIME parts (including encapsulated messages) one message may have.
pub const MAX_PARTS: usize = 10_000;
/// How many header fields are read in one part's header.
pub const MAX_HEADER_FIELDS: usize = 10_000;
/// How much of the raw top-level header the summary keeps.
pub const MAX_STORED_HEADER: usize = 64 * 1024;
/// How many bytes of decoded header names and values `search_headers` keeps.
pub const MAX_SEARCH_HEADERS: usize = 64 * 1024;
/// How many addresses one ENVELOPE address list keeps (group markers count).
pub const MAX_ADDRESSES: usize = 1_000;
/// Length of the preview, in characters (RFC 8970 §3 allows up to 256).
pub const PREVIEW_CHARS: usize = 200;
/// How many encoded body bytes are decoded to make the preview.
const PREVIEW_INPUT: usize = 64 * 1024;

/// What Dovecot writes for an address without a local part or a domain
/// (an IMAP address with a NIL host would read as a group marker).
const MISSING_MAILBOX: &str = "MISSING_MAILBOX";
const MISSING_DOMAIN: &str = "MISSING_DOMAIN";

/// Everything IMAP needs about a message without opening its body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageSummary {
    /// RFC822.SIZE (RFC 9051 §7.5.2): octets of the message as stored.
    pub size: u64,
    /// Size of the top-level header including the blank line that ends
    /// it: `BODY[HEADER]` is the range `0..header_bytes`, `BODY[TEXT]` the
    /// range `header_bytes..size`.
    pub header_bytes: u64,
    /// The raw top-level header, cut at a line end after
    /// [`MAX_STORED_HEADER`] bytes: complete iff `header.len() ==
    /// header_bytes`. Serves `BODY[HEADER.FIELDS (...)]` without the blob.
    pub header: RawText,
    /// ENVELOPE (RFC 9051 §7.5.2).
    pub envelope: Envelope,
    /// BODYSTRUCTURE (RFC 9051 §7.5.2) with offsets; its `header_start` is
    /// 0, its `body_start` is `header_bytes`.
    pub body: BodyPart,
    /// Every top-level header field in order, name as written and value
    /// unfolded and decoded (RFC 2047 encoded words, charsets converted to
    /// UTF-8), for SEARCH (RFC 9051 §6.4.4) and SORT (RFC 5256). Bounded by
    /// [`MAX_SEARCH_HEADERS`].
    pub search_headers: Vec<(String, String)>,
    /// The Date: header field as Unix seconds (SENTBEFORE, SENTON,
    /// SENTSINCE; SORT DATE), if present and valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_date: Option<i64>,
    /// PREVIEW (RFC 8970): the start of the first text part (text/plain
    /// preferred over text/html, which is stripped of markup), decoded,
    /// whitespace collapsed, at most [`PREVIEW_CHARS`] characters.
    pub preview: String,
    /// Whether some part looks like an attachment (see
    /// [`BodyPart::is_attachment`]), for a `$HasAttachment` keyword.
    pub has_attachments: bool,
}

/// The large parts of a summary, for [`MessageSummary::decode`]: a FETCH
/// of ENVELOPE needs neither the raw header nor the MIME structure, a
/// SEARCH of header fields only the decoded header values. The scalars
/// (`size`, `header_bytes`, `sent_date`, `has_attachments`) are always
/// read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    pub header: bool,
    pub envelope: bool,
    pub body: bool,
    pub search_headers: bool,
    pub preview: bool,
}

impl Parts {
    pub const ALL: Parts = Parts {
        header: true,
        envelope: true,
        body: true,
        search_headers: true,
        preview: true,
    };
    /// The scalars only.
    pub const NONE: Parts = Parts {
        header: false,
        envelope: false,
        body: false,
        search_headers: false,
        preview: false,
    };

    /// Both sets of parts.
    pub fn and(self, other: Parts) -> Parts {
        Parts {
            header: self.header || other.header,
            envelope: self.envelope || other.envelope,
            body: self.body || other.body,
            search_headers: self.search_headers || other.search_headers,
            preview: self.preview || other.preview,
        }
    }
}

impl MessageSummary {
    /// A summary with nothing in it (every part as [`MessageSummary::decode`]
    /// leaves one not asked for, every scalar zero), for code that must
    /// show a summary where none was read.
    pub fn empty() -> MessageSummary {
        MessageSummary {
            size: 0,
            header_bytes: 0,
            header: RawText::default(),
            envelope: Envelope::default(),
            body: BodyPart::skipped(),
            search_headers: Vec::new(),
            sent_date: None,
            preview: String::new(),
            has_attachments: false,
        }
    }

    /// Reads a summary as [`crate::mailbox::body::encode_summary`] wrote
    /// it, with only `parts` of its large parts: the others are skipped
    /// without being built and left empty (no header, an empty envelope,
    /// an empty `text/plain` body, no search headers, no preview). A part
    /// asked for must be there, as for a whole read.
    pub fn decode(bytes: &[u8], parts: Parts) -> serde_json::Result<MessageSummary> {
        if parts == Parts::ALL {
            return serde_json::from_slice(bytes);
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let summary = Deserializer::deserialize_map(&mut de, PartsVisitor(parts))?;
        de.end()?;
        Ok(summary)
    }
}

/// The fields of [`MessageSummary`], as serde names them, in the order of
/// `NAMES` in [`PartsVisitor::visit_map`].
#[derive(Clone, Copy, Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum SummaryField {
    Size,
    HeaderBytes,
    Header,
    Envelope,
    Body,
    SearchHeaders,
    SentDate,
    Preview,
    HasAttachments,
    #[serde(other)]
    Other,
}

/// Reads a summary's fields, skipping the large parts not asked for.
struct PartsVisitor(Parts);

impl<'de> serde::de::Visitor<'de> for PartsVisitor {
    type Value = MessageSummary;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a message summary")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<MessageSummary, A::Error> {
        use serde::de::Error as _;
        use serde::de::IgnoredAny;
        let parts = self.0;
        let (mut size, mut header_bytes, mut has_attachments) = (None, None, None);
        let (mut header, mut envelope, mut body) = (None, None, None);
        let (mut search_headers, mut preview, mut sent_date) = (None, None, None);
        // As the derived reading does: a field written twice is an error,
        // whether or not it is read.
        const NAMES: [&str; 9] = [
            "size",
            "header_bytes",
            "header",
            "envelope",
            "body",
            "search_headers",
            "sent_date",
            "preview",
            "has_attachments",
        ];
        let mut seen = [false; NAMES.len()];
        while let Some(field) = map.next_key::<SummaryField>()? {
            if let Some(seen) = seen.get_mut(field as usize) {
                if *seen {
                    return Err(A::Error::duplicate_field(NAMES[field as usize]));
                }
                *seen = true;
            }
            match field {
                SummaryField::Size => size = Some(map.next_value()?),
                SummaryField::HeaderBytes => header_bytes = Some(map.next_value()?),
                SummaryField::HasAttachments => has_attachments = Some(map.next_value()?),
                SummaryField::SentDate => sent_date = map.next_value()?,
                SummaryField::Header if parts.header => header = Some(map.next_value()?),
                SummaryField::Envelope if parts.envelope => envelope = Some(map.next_value()?),
                SummaryField::Body if parts.body => body = Some(map.next_value()?),
                SummaryField::SearchHeaders if parts.search_headers => {
                    search_headers = Some(map.next_value()?)
                }
                SummaryField::Preview if parts.preview => preview = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        /// A part asked for must be there; one not asked for is empty.
        fn part<T, E: serde::de::Error>(
            value: Option<T>,
            asked: bool,
            name: &'static str,
            empty: impl FnOnce() -> T,
        ) -> Result<T, E> {
            match value {
                Some(value) => Ok(value),
                None if asked => Err(E::missing_field(name)),
                None => Ok(empty()),
            }
        }
        Ok(MessageSummary {
            size: size.ok_or_else(|| A::Error::missing_field("size"))?,
            header_bytes: header_bytes.ok_or_else(|| A::Error::missing_field("header_bytes"))?,
            header: part(header, parts.header, "header", RawText::default)?,
            envelope: part(envelope, parts.envelope, "envelope", Envelope::default)?,
            body: part(body, parts.body, "body", BodyPart::skipped)?,
            search_headers: part(
                search_headers,
                parts.search_headers,
                "search_headers",
                Vec::new,
            )?,
            sent_date,
            preview: part(preview, parts.preview, "preview", String::new)?,
            has_attachments: has_attachments
                .ok_or_else(|| A::Error::missing_field("has_attachments"))?,
        })
    }
}

/// Header text as it appears in the message: usually ASCII (still in
/// RFC 2047 encoded words, as IMAP requires), possibly raw 8-bit (RFC 6532
/// UTF-8, or anything a broken sender wrote). Serialised as a JSON string
/// when it is UTF-8, as `{"b64": "..."}` otherwise.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct RawText(pub Vec<u8>);

impl RawText {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The text, with invalid UTF-8 replaced (for display and logs).
    pub fn to_str_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }
}

impl std::fmt::Debug for RawText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.to_str_lossy(), f)
    }
}

impl From<&[u8]> for RawText {
    fn from(b: &[u8]) -> RawText {
        RawText(b.to_vec())
    }
}

impl From<&str> for RawText {
    fn from(s: &str) -> RawText {
        RawText(s.as_bytes().to_vec())
    }
}

/// The form of a [`RawText`] that is not UTF-8.
#[derive(Serialize)]
struct RawBytes {
    b64: String,
}

impl Serialize for RawText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => RawBytes {
                b64: base64::engine::general_purpose::STANDARD.encode(&self.0),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for RawText {
    /// A string, or `{"b64": "..."}`. Read by a visitor rather than an
    /// untagged enum, which would first copy every value into a buffer of
    /// its own to try each form in turn: summaries hold many of these.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawText, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawText;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or {\"b64\": \"...\"}")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RawText, E> {
                Ok(RawText(text.as_bytes().to_vec()))
            }
            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<RawText, E> {
                Ok(RawText(text.into_bytes()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawText, A::Error> {
                use serde::de::Error as _;
                let mut b64: Option<String> = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "b64" {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    } else if b64.is_some() {
                        return Err(A::Error::duplicate_field("b64"));
                    } else {
                        b64 = Some(map.next_value()?);
                    }
                }
                let b64 = b64.ok_or_else(|| A::Error::missing_field("b64"))?;
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map(RawText)
                    .map_err(A::Error::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// ENVELOPE (RFC 9051 §7.5.2): raw, unfolded header values (encoded words
/// kept) and parsed address lists. Sender and Reply-To are already
/// defaulted to From when absent or empty, as the RFC asks of the server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<RawText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<RawText>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Address>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sender: Vec<Address>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reply_to: Vec<Address>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Address>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<Address>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<RawText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<RawText>,
}

/// One ENVELOPE address (RFC 9051 §7.5.2): personal name (a phrase, encoded
/// words kept, quotes removed), source route (adl), mailbox (local part)
/// and host. Group syntax (RFC 5322 §3.4) is kept as IMAP writes it: a
/// group start is `mailbox = group name, host = None`, a group end has
/// every field `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<RawText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adl: Option<RawText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<RawText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<RawText>,
}

impl Address {
    /// A group start marker (`(NIL NIL "name" NIL)`).
    pub fn is_group_start(&self) -> bool {
        self.host.is_none() && self.mailbox.is_some()
    }
    /// A group end marker (`(NIL NIL NIL NIL)`).
    pub fn is_group_end(&self) -> bool {
        self.host.is_none() && self.mailbox.is_none()
    }
}

/// One MIME part (or the whole message, or an encapsulated message) with
/// what BODYSTRUCTURE needs (RFC 9051 §7.5.2, RFC 3501 §7.4.2) and where
/// its bytes are. `BODY[n.MIME]` is `header_start..body_start`, `BODY[n]`
/// `body_start..body_end`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyPart {
    /// Media type, lowercased (`text`, `multipart`, ...).
    #[serde(rename = "type")]
    pub media_type: String,
    /// Media subtype, lowercased.
    pub subtype: String,
    /// Content-Type parameters, names as written, values raw (RFC 2231
    /// continuations joined into one `name*` parameter, as Dovecot does).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<(String, RawText)>,
    /// Content-ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RawText>,
    /// Content-Description, raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<RawText>,
    /// Content-Transfer-Encoding, lowercased; `7bit` when absent or not a
    /// token (RFC 2045 §6.1).
    #[serde(default = "seven_bit", skip_serializing_if = "is_seven_bit")]
    pub encoding: String,
    /// Content-MD5 (RFC 1864).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<RawText>,
    /// Content-Disposition (RFC 2183).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition: Option<Disposition>,
    /// Content-Language tags (RFC 3282).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub language: Vec<String>,
    /// Content-Location (RFC 2557).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<RawText>,
    /// Offset of the part's first header line in the stored message.
    pub header_start: u64,
    /// Offset of the part's body (just after the blank line ending the
    /// header, or the end of the header if it has no blank line).
    pub body_start: u64,
    /// Offset just past the body (before the CRLF preceding the next
    /// boundary line).
    pub body_end: u64,
    /// LF octets in the body; written by IMAP for `text/*` and
    /// `message/rfc822` parts only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lines: u64,
    /// Leaf, encapsulated message, or multipart.
    pub kind: PartKind,
}

impl BodyPart {
    /// What [`MessageSummary::decode`] leaves in place of a structure not
    /// asked for: an empty `text/plain` part at offset 0, no parameters.
    fn skipped() -> BodyPart {
        BodyPart {
            media_type: "text".to_owned(),
            subtype: "plain".to_owned(),
            params: Vec::new(),
            id: None,
            description: None,
            encoding: seven_bit(),
            md5: None,
            disposition: None,
            language: Vec::new(),
            location: None,
            header_start: 0,
            body_start: 0,
            body_end: 0,
            lines: 0,
            kind: PartKind::Leaf,
        }
    }
}

/// What a part contains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartKind {
    /// A leaf part (`text/*` or any basic type).
    Leaf,
    /// `message/rfc822` or `message/global`: the encapsulated message's
    /// envelope and structure. Its `body.header_start` is this part's
    /// `body_start`.
    Message(Box<Encapsulated>),
    /// `multipart/*`: the parts in order (possibly none, see module doc).
    Multipart(Vec<BodyPart>),
}

/// The message inside a `message/rfc822` part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encapsulated {
    pub envelope: Envelope,
    pub body: BodyPart,
}

/// Content-Disposition (RFC 2183): the value, lowercased, and parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disposition {
    pub value: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<(String, RawText)>,
}

fn seven_bit() -> String {
    "7bit".to_owned()
}

fn is_seven_bit(s: &str) -> bool {
    s == "7bit"
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl BodyPart {
    /// Body size in octets, as BODYSTRUCTURE's `body-fld-octets`.
    pub fn size(&self) -> u64 {
        self.body_end.saturating_sub(self.body_start)
    }

    /// The value of a Content-Type parameter (name compared
    /// case-insensitively).
    pub fn param(&self, name: &str) -> Option<&RawText> {
        find_param(&self.params, name)
    }

    /// A part a mail client would list as an attachment: an explicit
    /// `Content-Disposition: attachment`, an encapsulated message, or a
    /// leaf that is neither text nor marked inline. Parts of a
    /// multipart/related other than the first are its inline resources,
    /// not attachments, unless explicitly marked so (the caller passes
    /// `in_related` for those).
    pub fn is_attachment(&self, in_related: bool) -> bool {
        let disposition = self.disposition.as_ref().map(|d| d.value.as_str());
        match (&self.kind, disposition) {
            (PartKind::Multipart(_), _) => false,
            (_, Some("attachment")) => true,
            (_, Some("inline")) => false,
            _ if in_related => false,
            (PartKind::Message(_), _) => true,
            (PartKind::Leaf, _) => self.media_type != "text",
        }
    }
}

/// Parameters of a MIME header field: names as written, raw values.
pub type Params = Vec<(String, RawText)>;

fn find_param<'a>(params: &'a [(String, RawText)], name: &str) -> Option<&'a RawText> {
    params
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// How the line ends of a new message are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineEnds {
    /// Every line end becomes CRLF: LMTP delivery, and APPEND of a
    /// literal, which carries text (RFC 9051 §4.3).
    Crlf,
    /// As [`LineEnds::Crlf`], except the bodies of parts whose
    /// Content-Transfer-Encoding is `binary`, stored byte for byte: APPEND
    /// of a literal8 (RFC 3516 §4.1), whose binary data must come back
    /// unchanged in `BINARY[...]`.
    KeepBinaryParts,
}

/// [`normalize_line_ends`] with [`LineEnds::Crlf`].
pub fn normalize_crlf(raw: &[u8]) -> Cow<'_, [u8]> {
    normalize_line_ends(raw, LineEnds::Crlf)
}

/// Stores every line end as CRLF (RFC 5322 §2.1, RFC 9051 §2.3.1.1: IMAP
/// sizes count CRLF), reading line ends as Dovecot does: a line ends at
/// LF, the CRs just before it are part of its end (`CR CR LF` is one line
/// end), and a CR not followed by LF is data, kept as it is. With
/// [`LineEnds::KeepBinaryParts`], the bodies of `binary` parts are left
/// untouched. Input that needs no change is returned borrowed.
pub fn normalize_line_ends(raw: &[u8], line_ends: LineEnds) -> Cow<'_, [u8]> {
    let clean = raw.iter().enumerate().all(|(i, &b)| {
        b != b'\n' || (i > 0 && raw[i - 1] == b'\r' && (i < 2 || raw[i - 2] != b'\r'))
    });
    if clean {
        return Cow::Borrowed(raw);
    }
    let mut kept: Vec<(usize, usize)> = Vec::new();
    if line_ends == LineEnds::KeepBinaryParts {
        binary_bodies(&summarize(raw).body, &mut kept);
        if kept.is_empty() {
            return normalize_line_ends(raw, LineEnds::Crlf);
        }
    }
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32 + 2);
    let mut at = 0;
    for (start, end) in kept {
        if start < at || end > raw.len() {
            continue; // not in message order: normalise it like the rest
        }
        crlf_into(&raw[at..start], &mut out);
        out.extend_from_slice(&raw[start..end]);
        at = end;
    }
    crlf_into(&raw[at..], &mut out);
    Cow::Owned(out)
}

/// Appends `text` to `out` with its line ends written CRLF (see
/// [`normalize_line_ends`]).
fn crlf_into(text: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\r' => {
                let crs = text[i..].iter().take_while(|&&b| b == b'\r').count();
                if text.get(i + crs) == Some(&b'\n') {
                    out.extend_from_slice(b"\r\n");
                    i += crs + 1;
                } else {
                    out.extend_from_slice(&text[i..i + crs]);
                    i += crs;
                }
            }
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
}

/// The body ranges of the `binary` leaves at or below `part`, in message
/// order.
fn binary_bodies(part: &BodyPart, out: &mut Vec<(usize, usize)>) {
    match &part.kind {
        PartKind::Multipart(children) => {
            for child in children {
                binary_bodies(child, out);
            }
        }
        PartKind::Message(inner) => binary_bodies(&inner.body, out),
        PartKind::Leaf => {
            if part.encoding == "binary" && part.body_end > part.body_start {
                out.push((to_usize(part.body_start), to_usize(part.body_end)));
            }
        }
    }
}

/// Computes the summary of a stored message (CRLF line endings, see the
/// module doc). Never fails and never panics: malformed mail gets a
/// best-effort summary, since IMAP must answer FETCH for any stored
/// message.
pub fn summarize(raw: &[u8]) -> MessageSummary {
    let mut scanner = Scanner {
        raw,
        boundaries: Vec::new(),
        parts: 1,
    };
    let (body, _) = scanner.part(0, 0, false);
    let header_bytes = to_usize(body.body_start).min(raw.len());
    let header_block = &raw[..header_bytes];
    let fields = parse_fields(header_block);

    let mut search_headers = Vec::new();
    let mut budget = MAX_SEARCH_HEADERS;
    for field in &fields {
        if budget == 0 {
            break;
        }
        let name = String::from_utf8_lossy(field.name).into_owned();
        let value = decode_text(field.value);
        let name = truncate_chars(name, budget);
        budget -= name.len();
        let value = truncate_chars(value, budget);
        budget -= value.len();
        search_headers.push((name, value));
    }

    let sent_date = first(&fields, "date").and_then(|v| parse_date(&unfold(v)));

    let preview = preview(raw, &body);
    let has_attachments = has_attachments(&body, false);

    MessageSummary {
        size: raw.len() as u64,
        header_bytes: header_bytes as u64,
        header: RawText(stored_header(header_block).to_vec()),
        envelope: envelope(&fields),
        body,
        search_headers,
        sent_date,
        preview,
        has_attachments,
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The header block cut at the last line end within [`MAX_STORED_HEADER`].
fn stored_header(block: &[u8]) -> &[u8] {
    if block.len() <= MAX_STORED_HEADER {
        return block;
    }
    let head = &block[..MAX_STORED_HEADER];
    match head.iter().rposition(|&b| b == b'\n') {
        Some(i) => &head[..=i],
        None => &[],
    }
}

/// Parses an RFC 5322 §3.3 date-time into Unix seconds with mail-parser,
/// which needs the seconds: `16:00` is retried as `16:00:00` (seconds are
/// optional in the RFC).
fn parse_date(value: &[u8]) -> Option<i64> {
    let text = String::from_utf8_lossy(value);
    let parse = |t: &str| {
        mail_parser::DateTime::parse_rfc822(t)
            .filter(|d| d.is_valid())
            .map(|d| d.to_timestamp())
    };
    parse(&text).or_else(|| {
        let b = text.as_bytes();
        // The first `H:MM` or `HH:MM` not followed by `:`.
        let colon = (1..b.len().saturating_sub(2)).find(|&i| {
            b[i] == b':'
                && b[i - 1].is_ascii_digit()
                && b[i + 1].is_ascii_digit()
                && b[i + 2].is_ascii_digit()
                && b.get(i + 3) != Some(&b':')
        })?;
        let mut fixed = text.clone().into_owned();
        fixed.insert_str(colon + 3, ":00");
        parse(&fixed)
    })
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
fn truncate_chars(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

// ---------------------------------------------------------------------
// MIME structure

/// Where scanning for the end of a part stopped.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// The end of the message.
    Eof,
    /// A boundary line of the multipart at `level` in the boundary stack.
    Boundary {
        /// End of the content before it (the CRLF before the boundary
        /// line belongs to the boundary, RFC 2046 §5.1.1).
        content_end: usize,
        /// Start of the line after the boundary line.
        next: usize,
        level: usize,
        /// `--boundary--`: the close delimiter.
        close: bool,
    },
}

struct Scanner<'a> {
    raw: &'a [u8],
    /// Boundaries of the enclosing multiparts, outermost first.
    boundaries: Vec<Vec<u8>>,
    /// Parts created so far, for [`MAX_PARTS`].
    parts: usize,
}

/// End of the line starting at `p`: just past its LF, or the end of data.
fn line_end(raw: &[u8], p: usize) -> usize {
    match raw[p..].iter().position(|&b| b == b'\n') {
        Some(i) => p + i + 1,
        None => raw.len(),
    }
}

impl Scanner<'_> {
    /// Whether the line at `p` is a boundary line of an enclosing
    /// multipart (longest match wins, as in Dovecot's `boundary_find`).
    /// `from` is where the current content began: a boundary on its first
    /// line leaves the content empty rather than taking a newline from
    /// before it.
    fn boundary_at(&self, p: usize, from: usize) -> Option<Stop> {
        let line = &self.raw[p..];
        let rest = line.strip_prefix(b"--")?;
        let mut best: Option<(usize, usize)> = None;
        for (level, b) in self.boundaries.iter().enumerate() {
            if rest.starts_with(b) && best.is_none_or(|(_, len)| b.len() > len) {
                best = Some((level, b.len()));
            }
        }
        let (level, len) = best?;
        let close = rest[len..].starts_with(b"--");
        let mut content_end = p;
        if p > from && self.raw[p - 1] == b'\n' {
            content_end -= 1;
            if content_end > from && self.raw[content_end - 1] == b'\r' {
                content_end -= 1;
            }
        }
        Some(Stop::Boundary {
            content_end,
            next: line_end(self.raw, p),
            level,
            close,
        })
    }

    /// Scans lines from `from` (a line start) for a boundary line.
    fn find_boundary(&self, from: usize) -> Stop {
        if self.boundaries.is_empty() {
            return Stop::Eof;
        }
        let mut p = from;
        while p < self.raw.len() {
            if let Some(stop) = self.boundary_at(p, from) {
                return stop;
            }
            p = line_end(self.raw, p);
        }
        Stop::Eof
    }

    /// Finds the end of a header starting at `start`: returns the end of
    /// the header (past the blank line) and, if a boundary line cut the
    /// header short, that boundary.
    fn header_end(&self, start: usize) -> (usize, Option<Stop>) {
        let mut p = start;
        while p < self.raw.len() {
            if !self.boundaries.is_empty()
                && let Some(stop) = self.boundary_at(p, start)
            {
                let Stop::Boundary { content_end, .. } = stop else {
                    return (p, None);
                };
                return (content_end, Some(stop));
            }
            let end = line_end(self.raw, p);
            let line = &self.raw[p..end];
            if line == b"\n" || line == b"\r\n" {
                return (end, None);
            }
            p = end;
        }
        (self.raw.len(), None)
    }

    /// Parses the part (or message) starting at `start`, returning it and
    /// where its body stopped, so the caller need not scan again.
    fn part(&mut self, start: usize, depth: usize, in_digest: bool) -> (BodyPart, Stop) {
        let (body_start, cut) = self.header_end(start);
        let fields = parse_fields(&self.raw[start..body_start]);
        let mut part = mime_headers(&fields, in_digest, start, body_start);

        if let Some(stop) = cut {
            // The header was cut by a boundary: the body is empty.
            part.kind = match part.kind {
                PartKind::Message(_) => {
                    PartKind::Message(Box::new(empty_message(body_start as u64)))
                }
                kind => kind,
            };
            return (part, stop);
        }

        let is_multipart = matches!(part.kind, PartKind::Multipart(_));
        let is_message = matches!(part.kind, PartKind::Message(_));
        if (is_multipart || is_message) && depth >= MAX_DEPTH
            || is_message && self.parts >= MAX_PARTS
        {
            if is_message {
                part.media_type = "application".to_owned();
                part.subtype = "octet-stream".to_owned();
                part.kind = PartKind::Leaf;
            }
            let stop = self.find_boundary(body_start);
            part.body_end = self.content_end(stop) as u64;
            return (part, stop);
        }

        let boundary = part
            .param("boundary")
            .filter(|b| !b.is_empty())
            .map(|b| b.0.clone());
        let stop = match (&mut part.kind, boundary) {
            (PartKind::Multipart(children), Some(boundary)) => {
                let digest = part.subtype == "digest";
                self.boundaries.push(boundary);
                let level = self.boundaries.len() - 1;
                let mut stop = self.find_boundary(body_start);
                loop {
                    match stop {
                        Stop::Boundary {
                            level: l,
                            close: false,
                            next,
                            ..
                        } if l == level => {
                            if self.parts >= MAX_PARTS {
                                stop = self.find_boundary(next);
                                continue;
                            }
                            self.parts += 1;
                            let (child, s) = self.part(next, depth + 1, digest);
                            children.push(child);
                            stop = s;
                        }
                        Stop::Boundary {
                            level: l,
                            close: true,
                            next,
                            ..
                        } if l == level => {
                            // The epilogue runs to the enclosing boundary.
                            self.boundaries.pop();
                            break self.find_boundary(next);
                        }
                        _ => {
                            self.boundaries.pop();
                            break stop;
                        }
                    }
                }
            }
            (PartKind::Message(inner), _) => {
                self.parts += 1;
                let (body, stop) = self.part(body_start, depth + 1, false);
                let header = &self.raw[body_start..to_usize(body.body_start)];
                inner.envelope = envelope(&parse_fields(header));
                inner.body = body;
                stop
            }
            _ => self.find_boundary(body_start),
        };
        part.body_end = self.content_end(stop).max(body_start) as u64;
        if part.media_type == "text" || matches!(part.kind, PartKind::Message(_)) {
            part.lines = self.raw[body_start..to_usize(part.body_end)]
                .iter()
                .filter(|&&b| b == b'\n')
                .count() as u64;
        }
        (part, stop)
    }

    fn content_end(&self, stop: Stop) -> usize {
        match stop {
            Stop::Eof => self.raw.len(),
            Stop::Boundary { content_end, .. } => content_end,
        }
    }
}

/// An empty encapsulated message at `at` (a `message/rfc822` part whose
/// body is empty).
fn empty_message(at: u64) -> Encapsulated {
    Encapsulated {
        envelope: Envelope::default(),
        body: BodyPart {
            params: vec![("charset".to_owned(), "us-ascii".into())],
            header_start: at,
            body_start: at,
            body_end: at,
            ..BodyPart::skipped()
        },
    }
}

/// The part described by its MIME header fields (RFC 2045 §5, §6; RFC
/// 2183; RFC 3282; RFC 2557; RFC 1864), with an empty body at `body_start`.
fn mime_headers(
    fields: &[Field<'_>],
    in_digest: bool,
    start: usize,
    body_start: usize,
) -> BodyPart {
    let content_type = first(fields, "content-type").and_then(|v| parse_content_type(&unfold(v)));
    let (media_type, subtype, mut params) = match content_type {
        Some(ct) => ct,
        None if in_digest => ("message".to_owned(), "rfc822".to_owned(), Vec::new()),
        None => ("text".to_owned(), "plain".to_owned(), Vec::new()),
    };
    if media_type == "text" && find_param(&params, "charset").is_none() {
        params.push(("charset".to_owned(), "us-ascii".into()));
    }
    let encoding = first(fields, "content-transfer-encoding")
        .map(unfold)
        .filter(|v| !v.is_empty() && v.iter().all(|&b| is_token_char(b)))
        .map(|v| String::from_utf8_lossy(&v).to_ascii_lowercase())
        .unwrap_or_else(seven_bit);
    let disposition = first(fields, "content-disposition").and_then(|v| {
        let v = unfold(v);
        let mut p = Lexer::new(&v);
        let value = p.token()?.to_ascii_lowercase();
        Some(Disposition {
            value,
            params: p.params(),
        })
    });
    let language = first(fields, "content-language")
        .map(|v| {
            String::from_utf8_lossy(&strip_comments(&unfold(v)))
                .split(',')
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let raw_field = |name: &str| first(fields, name).map(|v| RawText(unfold(v)));
    let kind = match (media_type.as_str(), subtype.as_str()) {
        ("multipart", _) => PartKind::Multipart(Vec::new()),
        ("message", "rfc822" | "global") => {
            PartKind::Message(Box::new(empty_message(body_start as u64)))
        }
        _ => PartKind::Leaf,
    };
    BodyPart {
        media_type,
        subtype,
        params,
        id: raw_field("content-id"),
        description: raw_field("content-description"),
        encoding,
        md5: raw_field("content-md5"),
        disposition,
        language,
        location: raw_field("content-location"),
        header_start: start as u64,
        body_start: body_start as u64,
        body_end: body_start as u64,
        lines: 0,
        kind,
    }
}

// ---------------------------------------------------------------------
// Header fields

/// One header field: its name and raw value (after the colon, folding
/// kept, final line ending removed).
#[derive(Debug)]
struct Field<'a> {
    name: &'a [u8],
    value: &'a [u8],
}

/// Splits a header block into fields (RFC 5322 §2.2). Lines that are not
/// a field (no colon, or a bad name) are skipped, with their continuation
/// lines. Reads at most [`MAX_HEADER_FIELDS`] fields.
fn parse_fields(block: &[u8]) -> Vec<Field<'_>> {
    let mut fields: Vec<Field<'_>> = Vec::new();
    // (index in `fields`, start of the value) of the field being read.
    let mut current: Option<(usize, usize)> = None;
    let mut p = 0;
    while p < block.len() {
        let end = line_end(block, p);
        let mut content_end = end;
        if content_end > p && block[content_end - 1] == b'\n' {
            content_end -= 1;
            if content_end > p && block[content_end - 1] == b'\r' {
                content_end -= 1;
            }
        }
        let line = &block[p..content_end];
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some((i, value_start)) = current {
                fields[i].value = &block[value_start..content_end];
            }
        } else {
            current = None;
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                let name = trim_end_wsp(&line[..colon]);
                let valid = !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b));
                if valid && fields.len() < MAX_HEADER_FIELDS {
                    let value_start = p + colon + 1;
                    fields.push(Field {
                        name,
                        value: &block[value_start..content_end],
                    });
                    current = Some((fields.len() - 1, value_start));
                }
            }
        }
        p = end;
    }
    fields
}

fn trim_end_wsp(s: &[u8]) -> &[u8] {
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    &s[..end]
}

/// The value of the first field named `name` (case-insensitive).
fn first<'a>(fields: &[Field<'a>], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
        .map(|f| f.value)
}

/// Unfolds a field value (RFC 5322 §2.2.3: removes CR and LF) and trims
/// surrounding whitespace.
fn unfold(value: &[u8]) -> Vec<u8> {
    let v: Vec<u8> = value
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    v[start..end].to_vec()
}

/// Decodes a field value for SEARCH: unfolded, RFC 2047 encoded words
/// decoded (mail-parser also converts their charsets to UTF-8), raw
/// 8-bit taken as UTF-8 where valid.
pub fn decode_text(value: &[u8]) -> String {
    let mut buf = Vec::with_capacity(value.len() + 2);
    match std::str::from_utf8(value) {
        Ok(_) => buf.extend_from_slice(value),
        // Raw 8-bit that is not UTF-8: most often Latin-1 (a guess, but a
        // better one for SEARCH than replacement characters).
        Err(_) => buf.extend(value.iter().map(|&b| b as char).collect::<String>().bytes()),
    }
    buf.extend_from_slice(b"\r\n");
    match mail_parser::parsers::MessageStream::new(&buf).parse_unstructured() {
        mail_parser::HeaderValue::Text(text) => text.into_owned(),
        _ => String::new(),
    }
}

// ---------------------------------------------------------------------
// Structured field values: a small RFC 5322 §3.2 lexer

/// RFC 2045 §5.1 `token` characters.
fn is_token_char(b: u8) -> bool {
    b > b' ' && b < 127 && !b"()<>@,;:\\\"/[]?=".contains(&b)
}

struct Lexer<'a> {
    s: &'a [u8],
    p: usize,
}

impl<'a> Lexer<'a> {
    fn new(s: &'a [u8]) -> Lexer<'a> {
        Lexer { s, p: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.p).copied()
    }

    /// Skips whitespace and comments (RFC 5322 §3.2.2 CFWS), returning the
    /// text of the last comment seen.
    fn skip_cfws(&mut self) -> Option<Vec<u8>> {
        let mut comment = None;
        while let Some(b) = self.peek() {
            match b {
                b' ' | b'\t' | b'\r' | b'\n' => self.p += 1,
                b'(' => comment = Some(self.comment()),
                _ => break,
            }
        }
        comment
    }

    /// Reads a (nested) comment starting at `(`, returns its text.
    fn comment(&mut self) -> Vec<u8> {
        let mut depth = 0usize;
        let mut text = Vec::new();
        while let Some(b) = self.peek() {
            self.p += 1;
            match b {
                b'(' => {
                    if depth > 0 {
                        text.push(b);
                    }
                    depth += 1;
                }
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                    text.push(b);
                }
                b'\\' => {
                    if let Some(c) = self.peek() {
                        text.push(c);
                        self.p += 1;
                    }
                }
                _ => text.push(b),
            }
        }
        text
    }

    /// Reads a quoted string starting at `"`, returns its unescaped text.
    fn quoted(&mut self) -> Vec<u8> {
        self.p += 1;
        let mut text = Vec::new();
        while let Some(b) = self.peek() {
            self.p += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    if let Some(c) = self.peek() {
                        text.push(c);
                        self.p += 1;
                    }
                }
                b'\r' | b'\n' => {}
                _ => text.push(b),
            }
        }
        text
    }

    /// Reads an RFC 2045 token after CFWS.
    fn token(&mut self) -> Option<String> {
        self.skip_cfws();
        let start = self.p;
        while self.peek().is_some_and(is_token_char) {
            self.p += 1;
        }
        (self.p > start).then(|| String::from_utf8_lossy(&self.s[start..self.p]).into_owned())
    }

    /// Reads `*(";" attribute "=" value)` (RFC 2045 §5.1), leniently:
    /// a value is a token or a quoted string, and whatever follows it up
    /// to the next `;` is dropped (`charset=us-ascii format=flowed` is
    /// charset `us-ascii`, as Dovecot reads it). RFC 2231 continuations
    /// are joined (see [`join_rfc2231`]).
    fn params(&mut self) -> Vec<(String, RawText)> {
        let mut raw: Vec<(String, Vec<u8>)> = Vec::new();
        loop {
            self.skip_cfws();
            match self.peek() {
                None => break,
                Some(b';') => {
                    self.p += 1;
                    continue;
                }
                _ => {}
            }
            let Some(name) = self.token() else {
                // Garbage: skip to the next parameter.
                while self.peek().is_some_and(|b| b != b';') {
                    self.p += 1;
                }
                continue;
            };
            self.skip_cfws();
            if self.peek() != Some(b'=') {
                while self.peek().is_some_and(|b| b != b';') {
                    self.p += 1;
                }
                continue;
            }
            self.p += 1;
            self.skip_cfws();
            let value = if self.peek() == Some(b'"') {
                self.quoted()
            } else {
                let start = self.p;
                while self.peek().is_some_and(is_token_char) {
                    self.p += 1;
                }
                self.s[start..self.p].to_vec()
            };
            while self.peek().is_some_and(|b| b != b';') {
                self.p += 1;
            }
            raw.push((name, value));
        }
        join_rfc2231(raw)
    }
}

/// Joins RFC 2231 §3 continuations (`name*0`, `name*1*`, ...) into one
/// parameter, as Dovecot's `rfc2231_parse` does: `name` if no segment is
/// extended, else `name*` holding `charset'lang'%XX...` with plain segments
/// %-encoded. Other parameters are kept as they are, in order.
fn join_rfc2231(raw: Vec<(String, Vec<u8>)>) -> Vec<(String, RawText)> {
    let mut out: Vec<(String, RawText)> = Vec::new();
    // (base name lowercased, position in out, segments (index, extended, value))
    type Segments = Vec<(u32, bool, Vec<u8>)>;
    let mut groups: Vec<(String, usize, String, Segments)> = Vec::new();
    for (name, value) in raw {
        let Some(star) = name.find('*') else {
            out.push((name, RawText(value)));
            continue;
        };
        let base = &name[..star];
        let rest = &name[star + 1..];
        let (index, extended) = match rest {
            "" => (0, true),
            _ => {
                let (digits, extended) = match rest.strip_suffix('*') {
                    Some(d) => (d, true),
                    None => (rest, false),
                };
                match digits.parse::<u32>() {
                    Ok(i) if i < 1000 => (i, extended),
                    _ => {
                        out.push((name, RawText(value)));
                        continue;
                    }
                }
            }
        };
        let key = base.to_ascii_lowercase();
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(group) => group.3.push((index, extended, value)),
            None => {
                out.push((String::new(), RawText::default()));
                groups.push((
                    key,
                    out.len() - 1,
                    base.to_owned(),
                    vec![(index, extended, value)],
                ));
            }
        }
    }
    for (_, slot, base, mut segments) in groups {
        segments.sort_by_key(|s| s.0);
        let any_extended = segments.iter().any(|s| s.1);
        let mut value = Vec::new();
        for (expect, (index, extended, seg)) in segments.iter().enumerate() {
            if *index as usize != expect {
                break; // RFC 2231 §3: a gap ends the parameter
            }
            if any_extended && !extended {
                for &b in seg {
                    if is_token_char(b) && b != b'%' && b != b'\'' && b != b'*' {
                        value.push(b);
                    } else {
                        value.extend_from_slice(format!("%{b:02X}").as_bytes());
                    }
                }
            } else {
                value.extend_from_slice(seg);
            }
        }
        let name = if any_extended {
            format!("{base}*")
        } else {
            base
        };
        out[slot] = (name, RawText(value));
    }
    out
}

/// Parses `type "/" subtype *(";" parameter)` (RFC 2045 §5.1); `None` if
/// the type or subtype is missing or not a token (then RFC 2045 §5.2's
/// default applies).
fn parse_content_type(v: &[u8]) -> Option<(String, String, Params)> {
    let mut lexer = Lexer::new(v);
    let media_type = lexer.token()?.to_ascii_lowercase();
    lexer.skip_cfws();
    if lexer.peek() != Some(b'/') {
        return None;
    }
    lexer.p += 1;
    let subtype = lexer.token()?.to_ascii_lowercase();
    let params = lexer.params();
    Some((media_type, subtype, params))
}

/// Removes comments (for Content-Language).
fn strip_comments(v: &[u8]) -> Vec<u8> {
    let mut lexer = Lexer::new(v);
    let mut out = Vec::new();
    while let Some(b) = lexer.peek() {
        match b {
            b'(' => {
                lexer.comment();
            }
            _ => {
                out.push(b);
                lexer.p += 1;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------
// Envelope and addresses

fn envelope(fields: &[Field<'_>]) -> Envelope {
    let text = |name: &str| first(fields, name).map(|v| RawText(unfold(v)));
    let addresses = |name: &str| first(fields, name).map(parse_addresses).unwrap_or_default();
    let from = addresses("from");
    let mut sender = addresses("sender");
    let mut reply_to = addresses("reply-to");
    // RFC 9051 §7.5.2: absent or empty Sender and Reply-To default to From.
    if sender.is_empty() {
        sender = from.clone();
    }
    if reply_to.is_empty() {
        reply_to = from.clone();
    }
    Envelope {
        date: text("date"),
        subject: text("subject"),
        from,
        sender,
        reply_to,
        to: addresses("to"),
        cc: addresses("cc"),
        bcc: addresses("bcc"),
        in_reply_to: text("in-reply-to"),
        message_id: text("message-id"),
    }
}

/// A lexical item of an address list (RFC 5322 §3.2).
#[derive(Debug)]
enum Tok {
    /// An atom, or an atom run of a dot-atom (dots are separate).
    Atom(Vec<u8>),
    /// A quoted string's content.
    Quoted(Vec<u8>),
    /// A domain literal, brackets included.
    Literal(Vec<u8>),
    /// One of `<>@,:;.`
    Special(u8),
}

/// A token with whether whitespace or a comment came before it, and the
/// comment text if any.
struct Lexed {
    tok: Tok,
    space_before: bool,
    comment_before: Option<Vec<u8>>,
}

fn lex_addresses(v: &[u8]) -> (Vec<Lexed>, Option<Vec<u8>>) {
    let mut lexer = Lexer::new(v);
    let mut out = Vec::new();
    loop {
        let before = lexer.p;
        let comment = lexer.skip_cfws();
        let space_before = lexer.p > before;
        let Some(b) = lexer.peek() else {
            return (out, comment);
        };
        let tok = match b {
            b'"' => Tok::Quoted(lexer.quoted()),
            b'[' => {
                let start = lexer.p;
                while let Some(c) = lexer.peek() {
                    lexer.p += 1;
                    if c == b']' {
                        break;
                    }
                }
                Tok::Literal(lexer.s[start..lexer.p].to_vec())
            }
            b'<' | b'>' | b'@' | b',' | b':' | b';' | b'.' => {
                lexer.p += 1;
                Tok::Special(b)
            }
            _ => {
                let start = lexer.p;
                while lexer.peek().is_some_and(|c| {
                    !matches!(
                        c,
                        b' ' | b'\t'
                            | b'\r'
                            | b'\n'
                            | b'('
                            | b'"'
                            | b'['
                            | b'<'
                            | b'>'
                            | b'@'
                            | b','
                            | b':'
                            | b';'
                            | b'.'
                    )
                }) {
                    lexer.p += 1;
                }
                if lexer.p == start {
                    // A stray `)` or `]`: skip it.
                    lexer.p += 1;
                    continue;
                }
                Tok::Atom(lexer.s[start..lexer.p].to_vec())
            }
        };
        out.push(Lexed {
            tok,
            space_before,
            comment_before: comment,
        });
    }
}

/// Parses an address list (RFC 5322 §3.4) into IMAP envelope addresses,
/// leniently, like Dovecot's `message_address_parse` with missing parts
/// filled in.
fn parse_addresses(value: &[u8]) -> Vec<Address> {
    let value = unfold(value);
    let (toks, trailing_comment) = lex_addresses(&value);
    let mut parser = AddressParser {
        toks: &toks,
        i: 0,
        out: Vec::new(),
        trailing_comment,
    };
    parser.list();
    parser.out
}

struct AddressParser<'t> {
    toks: &'t [Lexed],
    i: usize,
    out: Vec<Address>,
    trailing_comment: Option<Vec<u8>>,
}

fn raw(b: &[u8]) -> Option<RawText> {
    Some(RawText(b.to_vec()))
}

impl AddressParser<'_> {
    fn push(&mut self, a: Address) {
        if self.out.len() < MAX_ADDRESSES {
            self.out.push(a);
        }
    }

    fn special(&self) -> Option<u8> {
        match self.toks.get(self.i).map(|t| &t.tok) {
            Some(Tok::Special(b)) => Some(*b),
            _ => None,
        }
    }

    fn list(&mut self) {
        let mut in_group = false;
        while self.i < self.toks.len() {
            match self.special() {
                Some(b',') => {
                    self.i += 1;
                    continue;
                }
                Some(b';') => {
                    self.i += 1;
                    if in_group {
                        self.push(Address::default());
                        in_group = false;
                    }
                    continue;
                }
                _ => {}
            }
            let before = self.i;
            // The phrase or local part: words and dots up to a special.
            let words_start = self.i;
            while let Some(t) = self.toks.get(self.i) {
                match t.tok {
                    Tok::Atom(_) | Tok::Quoted(_) | Tok::Literal(_) | Tok::Special(b'.') => {
                        self.i += 1
                    }
                    _ => break,
                }
            }
            let words = &self.toks[words_start..self.i];
            match self.special() {
                Some(b':') if !in_group => {
                    self.i += 1;
                    self.push(Address {
                        mailbox: raw(&phrase(words)),
                        ..Address::default()
                    });
                    in_group = true;
                }
                Some(b'<') => {
                    self.i += 1;
                    let name = (!words.is_empty()).then(|| phrase(words));
                    self.angle_addr(name);
                }
                Some(b'@') => {
                    self.i += 1;
                    let local = local_part(words);
                    let host = self.domain();
                    let name = self.comment_after();
                    self.push(Address {
                        name: name.as_deref().and_then(raw),
                        adl: None,
                        mailbox: raw(&local),
                        host: raw(host.as_deref().unwrap_or(MISSING_DOMAIN.as_bytes())),
                    });
                }
                _ => {
                    if is_dot_atom(words) {
                        // A bare word: a mailbox without a domain.
                        let name = self.comment_after();
                        self.push(Address {
                            name: name.as_deref().and_then(raw),
                            adl: None,
                            mailbox: raw(&local_part(words)),
                            host: raw(MISSING_DOMAIN.as_bytes()),
                        });
                    } else if !words.is_empty() {
                        // A display name alone (`From: Someone Else`):
                        // the name without mailbox or domain, as Dovecot
                        // reads it, not its words run into one mailbox.
                        self.push(Address {
                            name: raw(&phrase(words)),
                            adl: None,
                            mailbox: raw(MISSING_MAILBOX.as_bytes()),
                            host: raw(MISSING_DOMAIN.as_bytes()),
                        });
                    }
                    // Skip what cannot start an address (e.g. `>` or `:`
                    // inside a group).
                    if self.i == before || !matches!(self.special(), Some(b',') | Some(b';') | None)
                    {
                        self.i += 1;
                    }
                }
            }
        }
        if in_group {
            self.push(Address::default());
        }
    }

    /// A comment following an addr-spec (`user@host (Name)`), used as the
    /// name like Dovecot does: the comment before the next token, or the
    /// trailing one.
    fn comment_after(&self) -> Option<Vec<u8>> {
        let comment = match self.toks.get(self.i) {
            Some(t) => t.comment_before.clone(),
            None => self.trailing_comment.clone(),
        };
        comment
            .map(|c| trim_wsp(&c).to_vec())
            .filter(|c| !c.is_empty())
    }

    /// Reads a domain after `@`: atoms, dots and literals.
    fn domain(&mut self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(t) = self.toks.get(self.i) {
            match &t.tok {
                Tok::Atom(a) | Tok::Literal(a) => out.extend_from_slice(a),
                Tok::Special(b'.') => out.push(b'.'),
                _ => break,
            }
            self.i += 1;
        }
        (!out.is_empty()).then_some(out)
    }

    /// Reads `[route] local "@" domain ">"` after `<` (RFC 5322 §3.4,
    /// obs-route §4.4).
    fn angle_addr(&mut self, name: Option<Vec<u8>>) {
        let mut adl = Vec::new();
        // obs-route: "@a,@b:"
        if self.special() == Some(b'@') {
            let save = self.i;
            while self.special() == Some(b'@') {
                self.i += 1;
                if !adl.is_empty() {
                    adl.push(b',');
                }
                adl.push(b'@');
                if let Some(d) = self.domain() {
                    adl.extend_from_slice(&d);
                }
                while self.special() == Some(b',') {
                    self.i += 1;
                }
            }
            if self.special() == Some(b':') {
                self.i += 1;
            } else {
                self.i = save;
                adl.clear();
            }
        }
        let words_start = self.i;
        while let Some(t) = self.toks.get(self.i) {
            match t.tok {
                Tok::Atom(_) | Tok::Quoted(_) | Tok::Special(b'.') => self.i += 1,
                _ => break,
            }
        }
        let local = local_part(&self.toks[words_start..self.i]);
        let host = if self.special() == Some(b'@') {
            self.i += 1;
            self.domain()
        } else {
            None
        };
        // Skip to the closing `>`.
        while let Some(t) = self.toks.get(self.i) {
            self.i += 1;
            if matches!(t.tok, Tok::Special(b'>')) {
                break;
            }
        }
        let empty = local.is_empty() && host.is_none();
        self.push(Address {
            name: name.as_deref().and_then(raw),
            adl: (!adl.is_empty()).then_some(RawText(adl)),
            mailbox: raw(if empty || !local.is_empty() {
                if local.is_empty() { b"" } else { &local }
            } else {
                MISSING_MAILBOX.as_bytes()
            }),
            host: raw(match &host {
                Some(h) => h,
                None if empty => b"",
                None => MISSING_DOMAIN.as_bytes(),
            }),
        });
    }
}

fn trim_wsp(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    trim_end_wsp(&s[start..])
}

/// A display name: words joined by one space where the message had
/// whitespace, quotes removed, encoded words kept (RFC 9051 §7.5.2 wants
/// them raw).
fn phrase(words: &[Lexed]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, w) in words.iter().enumerate() {
        if n > 0 && w.space_before {
            out.push(b' ');
        }
        match &w.tok {
            Tok::Atom(a) | Tok::Quoted(a) | Tok::Literal(a) => out.extend_from_slice(a),
            Tok::Special(b) => out.push(*b),
        }
    }
    out
}

/// Whether `words` are one RFC 5322 §3.2.3 dot-atom (`a`, `a.b`): atoms
/// joined by dots, no whitespace, no quoted string.
fn is_dot_atom(words: &[Lexed]) -> bool {
    !words.is_empty()
        && words.iter().enumerate().all(|(n, w)| {
            (n == 0 || !w.space_before)
                && match w.tok {
                    Tok::Atom(_) => n % 2 == 0,
                    Tok::Special(b'.') => n % 2 == 1 && n + 1 < words.len(),
                    _ => false,
                }
        })
}

/// A local part: atoms and dots without whitespace; a quoted string keeps
/// its quotes so that `mailbox@host` stays a valid address.
fn local_part(words: &[Lexed]) -> Vec<u8> {
    let mut out = Vec::new();
    for w in words {
        match &w.tok {
            Tok::Atom(a) | Tok::Literal(a) => out.extend_from_slice(a),
            Tok::Quoted(q) => {
                out.push(b'"');
                for &b in q {
                    if b == b'"' || b == b'\\' {
                        out.push(b'\\');
                    }
                    out.push(b);
                }
                out.push(b'"');
            }
            Tok::Special(b) => out.push(*b),
        }
    }
    out
}

// ---------------------------------------------------------------------
// Preview and attachments

fn has_attachments(part: &BodyPart, in_related: bool) -> bool {
    match &part.kind {
        PartKind::Multipart(children) => {
            let related = part.subtype == "related";
            children
                .iter()
                .enumerate()
                .any(|(i, c)| has_attachments(c, related && i > 0))
        }
        _ => part.is_attachment(in_related),
    }
}

/// The first part suitable for the preview: text/plain, else text/html,
/// searched depth-first through multiparts (not into encapsulated
/// messages), skipping attachments.
fn preview_part<'p>(part: &'p BodyPart, subtype: &str) -> Option<&'p BodyPart> {
    match &part.kind {
        PartKind::Multipart(children) => children.iter().find_map(|c| preview_part(c, subtype)),
        PartKind::Leaf
            if part.media_type == "text"
                && part.subtype == subtype
                && part
                    .disposition
                    .as_ref()
                    .is_none_or(|d| d.value != "attachment") =>
        {
            Some(part)
        }
        _ => None,
    }
}

/// Parses with mail-parser, which panics on some malformed nestings
/// (0.11: "Invalid part ID, could not find multipart", on two
/// Content-Type fields over nested message/rfc822 parts; found by
/// `never_panics_on_mime_like_input`): such a message counts as one it
/// cannot parse, never as a failed delivery or a dropped connection.
pub(crate) fn parse_mail(raw: &[u8]) -> Option<mail_parser::Message<'_>> {
    std::panic::catch_unwind(|| mail_parser::MessageParser::new().parse(raw))
        .ok()
        .flatten()
}

/// RFC 8970 PREVIEW text: decoded with mail-parser (transfer encoding and
/// charset), markup stripped for HTML, whitespace collapsed, cut at
/// [`PREVIEW_CHARS`] characters.
fn preview(raw: &[u8], body: &BodyPart) -> String {
    let Some(part) = preview_part(body, "plain").or_else(|| preview_part(body, "html")) else {
        return String::new();
    };
    let start = to_usize(part.header_start).min(raw.len());
    let body_start = to_usize(part.body_start).min(raw.len());
    let end = to_usize(part.body_end)
        .min(body_start.saturating_add(PREVIEW_INPUT))
        .min(raw.len())
        .max(body_start);
    // The part's own header (charset, encoding) and a bounded body.
    let mut slice = raw[start..body_start].to_vec();
    if !slice.ends_with(b"\n") {
        slice.extend_from_slice(b"\r\n\r\n");
    }
    slice.extend_from_slice(&raw[body_start..end]);
    let Some(message) = parse_mail(&slice) else {
        return String::new();
    };
    let text = match message.parts.first().map(|p| &p.body) {
        Some(mail_parser::PartType::Text(t)) => t.to_string(),
        Some(mail_parser::PartType::Html(h)) => mail_parser::decoders::html::html_to_text(h),
        _ => return String::new(),
    };
    let mut out = String::new();
    let mut count = 0;
    for word in text.split_whitespace() {
        if count > 0 {
            out.push(' ');
            count += 1;
        }
        for c in word.chars() {
            if count >= PREVIEW_CHARS {
                return out.trim_end().to_owned();
            }
            out.push(c);
            count += 1;
        }
        if count >= PREVIEW_CHARS {
            break;
        }
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
pub(crate) mod tests;
