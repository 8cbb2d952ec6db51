//! What tests/mime_golden.rs and tests/dovecot_mime.rs share: the corpus
//! (every `.eml` of fixtures/mail and fixtures/imap, stored as APPEND
//! stores it: line ends CRLF, binary parts of a literal8 kept),
//! the FETCH items asked of each message, and our answer to each item on
//! the wire, as imap-codec encodes it.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use facteur::imap::mime::{self, BinaryError};
use facteur::mailbox::summary::{
    BodyPart, LineEnds, MessageSummary, PartKind, normalize_line_ends, summarize,
};
use imap_codec::encode::Encoder as _;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::{IString, Literal, NString, NString8, Tag, Vec1};
use imap_codec::imap_types::extensions::binary::Literal8;
use imap_codec::imap_types::fetch::{
    MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName,
};
use imap_codec::imap_types::response::{Code, Data, Response, Status};
use imap_codec::{CommandCodec, ResponseCodec, decode::Decoder as _};

/// One corpus message.
pub struct Fixture {
    /// `mail/01-plain-ascii`, `imap/06-transfer-encodings`, ...
    pub name: String,
    /// The message as a client sends it in APPEND (the file's bytes).
    pub sent: Vec<u8>,
    /// Whether it is sent as a literal8 (RFC 3516 §4.1): fixtures named
    /// `*-literal8-*`, the only ones that may hold NUL.
    pub literal8: bool,
    /// The message as stored (line ends normalised as APPEND does).
    pub raw: Vec<u8>,
    pub summary: MessageSummary,
}

pub fn fixtures() -> Vec<Fixture> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut out = Vec::new();
    for dir in ["mail", "imap"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .expect("fixture directory exists")
            .map(|e| e.expect("readable fixture directory").path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        files.sort();
        for file in files {
            let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
            let sent = std::fs::read(&file).unwrap();
            let literal8 = stem.contains("-literal8-");
            let line_ends = if literal8 {
                LineEnds::KeepBinaryParts
            } else {
                LineEnds::Crlf
            };
            let raw = normalize_line_ends(&sent, line_ends).into_owned();
            let summary = summarize(&raw);
            out.push(Fixture {
                name: format!("{dir}/{stem}"),
                sent,
                literal8,
                raw,
                summary,
            });
        }
    }
    assert!(out.len() >= 35, "fixture corpus went missing");
    out
}

/// A FETCH item asked of every message: `command` is what follows
/// `FETCH n (` (always a `.PEEK` form, so \Seen never changes).
#[derive(Clone, Debug)]
pub struct Item {
    pub command: String,
}

impl Item {
    fn new(command: impl Into<String>) -> Item {
        Item {
            command: command.into(),
        }
    }
}

fn dotted(path: &[u32]) -> String {
    path.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// Every part path of a message with its part, in Dovecot's numbering
/// (RFC 9051 §6.4.5): a non-multipart message's body is part 1, the
/// parts of a `message/rfc822` part continue its number.
pub fn part_paths(summary: &MessageSummary) -> Vec<(Vec<u32>, &BodyPart)> {
    fn message<'a>(root: &'a BodyPart, prefix: &[u32], out: &mut Vec<(Vec<u32>, &'a BodyPart)>) {
        match &root.kind {
            PartKind::Multipart(children) => {
                for (i, child) in children.iter().enumerate() {
                    let mut path = prefix.to_vec();
                    path.push(i as u32 + 1);
                    out.push((path.clone(), child));
                    if let PartKind::Message(inner) = &child.kind {
                        message(&inner.body, &path, out);
                    }
                }
            }
            kind => {
                let mut path = prefix.to_vec();
                path.push(1);
                out.push((path.clone(), root));
                if let PartKind::Message(inner) = kind {
                    message(&inner.body, &path, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    message(&summary.body, &[], &mut out);
    out
}

/// The items asked of one message: BODY, BODYSTRUCTURE, ENVELOPE, the
/// top-level header and text sections, then for each part its body and
/// MIME header (the header, text and a header field of an encapsulated
/// message, BINARY and BINARY.SIZE of a leaf), and a part past the last.
pub fn items(summary: &MessageSummary) -> Vec<Item> {
    let mut items = vec![
        Item::new("BODY"),
        Item::new("BODYSTRUCTURE"),
        Item::new("ENVELOPE"),
        Item::new("BODY.PEEK[HEADER]"),
        Item::new("BODY.PEEK[TEXT]"),
        Item::new("BODY.PEEK[TEXT]<4.20>"),
        Item::new("BODY.PEEK[HEADER.FIELDS (From to SUBJECT content-type)]"),
        Item::new("BODY.PEEK[HEADER.FIELDS.NOT (Received DATE Content-Type)]"),
        Item::new("BODY.PEEK[HEADER.FIELDS (X-Not-There)]"),
        Item::new("BINARY.PEEK[]"),
        Item::new("BINARY.SIZE[]"),
    ];
    let paths = part_paths(summary);
    for (path, part) in &paths {
        let p = dotted(path);
        items.push(Item::new(format!("BODY.PEEK[{p}]")));
        items.push(Item::new(format!("BODY.PEEK[{p}.MIME]")));
        match part.kind {
            PartKind::Message(_) => {
                items.push(Item::new(format!("BODY.PEEK[{p}.HEADER]")));
                items.push(Item::new(format!("BODY.PEEK[{p}.TEXT]")));
                items.push(Item::new(format!(
                    "BODY.PEEK[{p}.HEADER.FIELDS (SUBJECT from)]"
                )));
            }
            PartKind::Leaf => {
                items.push(Item::new(format!("BINARY.PEEK[{p}]")));
                items.push(Item::new(format!("BINARY.SIZE[{p}]")));
            }
            PartKind::Multipart(_) => {}
        }
    }
    let top = match &summary.body.kind {
        PartKind::Multipart(children) => children.len() as u32 + 1,
        _ => 2,
    };
    items.push(Item::new(format!("BODY.PEEK[{top}]")));
    items.push(Item::new(format!("BODY.PEEK[{top}.MIME]")));
    items.push(Item::new("BODY.PEEK[1.HEADER]"));
    items.push(Item::new("BODY.PEEK[1.1.1]"));
    items
}

/// The item names a FETCH command string parses to (with imap-codec's
/// own command parser, as the server will see it).
fn parse_item(line: &str) -> MessageDataItemName<'_> {
    let command = line;
    let (_, cmd) = CommandCodec::default()
        .decode(line.as_bytes())
        .unwrap_or_else(|e| panic!("{command} does not parse: {e:?}"));
    let CommandBody::Fetch {
        macro_or_item_names,
        ..
    } = cmd.body
    else {
        panic!("not a FETCH: {command}");
    };
    let MacroOrMessageDataItemNames::MessageDataItemNames(mut names) = macro_or_item_names else {
        panic!("a macro: {command}");
    };
    assert_eq!(names.len(), 1);
    names.remove(0)
}

/// A body section's data the way Dovecot writes it: always a literal,
/// NUL written as 0x80 (as `imap::fetch` and Dovecot do).
fn literal(bytes: Vec<u8>) -> NString<'static> {
    let clean: Vec<u8> = bytes
        .into_iter()
        .map(|b| if b == 0 { 0x80 } else { b })
        .collect();
    NString(Some(IString::Literal(
        Literal::try_from(clean).expect("NUL-free bytes make a literal"),
    )))
}

fn encode(response: &Response<'_>) -> Vec<u8> {
    ResponseCodec::default().encode(response).dump()
}

fn fetch(item: MessageDataItem<'_>) -> Vec<u8> {
    encode(&Response::Data(Data::Fetch {
        seq: NonZeroU32::new(1).unwrap(),
        items: Vec1::from(item),
    }))
}

fn no(code: Code<'static>, text: &str) -> Vec<u8> {
    let tag = Tag::try_from("x").unwrap();
    encode(&Response::Status(
        Status::no(Some(tag), Some(code), text.to_owned()).unwrap(),
    ))
}

/// Our answer to one item, on the wire: `* 1 FETCH (...)\r\n`, or a
/// tagged `x NO [...]` when the item cannot be answered.
pub fn render(fixture: &Fixture, item: &Item) -> Vec<u8> {
    let (raw, summary) = (&fixture.raw, &fixture.summary);
    let line = format!("a FETCH 1 ({})\r\n", item.command);
    match parse_item(&line) {
        MessageDataItemName::Body => fetch(MessageDataItem::Body(mime::body_structure(
            &summary.body,
            false,
        ))),
        MessageDataItemName::BodyStructure => fetch(MessageDataItem::BodyStructure(
            mime::body_structure(&summary.body, true),
        )),
        MessageDataItemName::Envelope => {
            fetch(MessageDataItem::Envelope(mime::envelope(&summary.envelope)))
        }
        MessageDataItemName::BodyExt {
            section, partial, ..
        } => {
            let whole = mime::section(raw, summary, section.as_ref()).unwrap_or_default();
            // The header-only path must agree wherever it answers.
            if let Some(from_header) = mime::section_from_header(summary, section.as_ref()) {
                assert_eq!(from_header, whole, "{} {}", fixture.name, item.command);
            }
            let data = match partial {
                Some((offset, length)) => mime::partial(&whole, offset, length.get()).to_vec(),
                None => whole,
            };
            fetch(MessageDataItem::BodyExt {
                section,
                origin: partial.map(|(offset, _)| offset),
                data: literal(data),
            })
        }
        MessageDataItemName::Binary { section, .. } => match mime::binary(raw, summary, &section) {
            Ok(data) => {
                let value = if data.iter().any(|&b| b == 0 || b >= 0x80) {
                    NString8::Literal8(Literal8 {
                        data: data.into(),
                        mode: imap_codec::imap_types::core::LiteralMode::Sync,
                    })
                } else {
                    NString8::NString(literal(data))
                };
                fetch(MessageDataItem::Binary { section, value })
            }
            Err(BinaryError::NoSuchPart) => fetch(MessageDataItem::Binary {
                section,
                value: NString8::NString(literal(Vec::new())),
            }),
            Err(BinaryError::UnknownEncoding(_)) => {
                no(Code::UnknownCte, "Unknown Content-Transfer-Encoding")
            }
            Err(BinaryError::Corrupt(_)) => no(Code::Parse, "Invalid data in MIME part"),
        },
        MessageDataItemName::BinarySize { section } => {
            match mime::binary_size(raw, summary, &section) {
                Ok(size) => fetch(MessageDataItem::BinarySize {
                    section,
                    size: u32::try_from(size).unwrap(),
                }),
                Err(BinaryError::NoSuchPart) => {
                    fetch(MessageDataItem::BinarySize { section, size: 0 })
                }
                Err(BinaryError::UnknownEncoding(_)) => {
                    no(Code::UnknownCte, "Unknown Content-Transfer-Encoding")
                }
                Err(BinaryError::Corrupt(_)) => no(Code::Parse, "Invalid data in MIME part"),
            }
        }
        other => panic!("no rendering for {other:?}"),
    }
}
