//! `$` as the message set of FETCH, STORE, COPY, MOVE and UID EXPUNGE
//! (RFC 5182 §3: `sequence-set =/ seq-last-command`, `seq-last-command =
//! "$"`). imap-codec refuses these commands because of the `$`; the rest
//! of each command is its ordinary grammar, parsed here into the values
//! imap-codec builds for the same command with a number set, and `$` is
//! resolved against the saved result: its UIDs for UID commands, its
//! sequence numbers otherwise. An empty saved result makes the command
//! act on no message (RFC 5182 §2.1): it is typed as usual, with
//! [`Ext::no_messages`] set, so that its other checks still run.
//!
//! A command whose set is not `$` is not ours: imap-codec's refusal stands.

use std::num::NonZeroU64;

use bounded_static::IntoBoundedStatic;
use imap_codec::imap_types::command::{CommandBody, FetchModifier, StoreModifier};
use imap_codec::imap_types::core::{AString, AtomExt, IString, Literal, Quoted, Vec1};
use imap_codec::imap_types::extensions::utf8::QuotedUtf8;
use imap_codec::imap_types::fetch::{
    Macro, MacroOrMessageDataItemNames, MessageDataItemName, Part, Section,
};
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::sequence::SequenceSet;

use super::input::{Input, Messages, Parsed, Syntax, Text};
use super::{Ext, Head, Parse};
use crate::imap::state::Saved;

/// What follows the message set, by command.
enum Arguments {
    Fetch(MacroOrMessageDataItemNames<'static>, Vec<FetchModifier>),
    Store {
        kind: StoreType,
        response: StoreResponse,
        flags: Vec<Flag<'static>>,
        modifiers: Vec<StoreModifier>,
    },
    Copy(Mailbox<'static>),
    Move(Mailbox<'static>),
    Expunge,
}

impl Arguments {
    fn body(self, sequence_set: SequenceSet, uid: bool) -> CommandBody<'static> {
        match self {
            Arguments::Fetch(macro_or_item_names, modifiers) => CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            },
            Arguments::Store {
                kind,
                response,
                flags,
                modifiers,
            } => CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            },
            Arguments::Copy(mailbox) => CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            },
            Arguments::Move(mailbox) => CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            },
            Arguments::Expunge => CommandBody::ExpungeUid { sequence_set },
        }
    }
}

/// Parses `name SP "$" ...` (the input is after the name). `None` when the
/// set is not `$` or the command is plain `EXPUNGE`, which takes no set.
pub fn parse(head: Head<'_>, saved: &Saved) -> Option<Parsed<Parse>> {
    let Head {
        tag,
        uid,
        name,
        mut input,
    } = head;
    if name == "EXPUNGE" && !uid {
        return None;
    }
    let dollar = input.attempt(|i| {
        i.sp()?;
        match i.sequence_set()? {
            Messages::Saved => Ok(()),
            Messages::Set(_) => Err(Syntax::expected("$")),
        }
    });
    dollar.ok()?;
    Some(
        parse_after_set(&name, uid, &mut input).and_then(|arguments| {
            let set = if uid { &saved.uids } else { &saved.seqs };
            let no_messages = set.is_empty();
            // imap-codec's set cannot be empty: an empty result is carried
            // by `no_messages`, and the set is then never read.
            let set = if no_messages { "1" } else { set };
            let sequence_set: SequenceSet = set
                .parse()
                .map_err(|_| Syntax("The saved search result is unreadable".into()))?;
            let ext = Ext {
                no_messages,
                ..Ext::default()
            };
            Ok(Parse::Command(
                tag,
                Box::new(arguments.body(sequence_set, uid)),
                ext,
            ))
        }),
    )
}

/// The arguments after the set, to the end of the command.
fn parse_after_set(name: &str, uid: bool, input: &mut Input<'_>) -> Parsed<Arguments> {
    let arguments = match name {
        "FETCH" => {
            input.sp()?;
            let items = fetch_items(input)?;
            let modifiers = if input.peek() == Some(b' ') {
                fetch_modifiers(input)?
            } else {
                Vec::new()
            };
            Arguments::Fetch(items, modifiers)
        }
        "STORE" => store(input)?,
        "COPY" | "MOVE" => {
            input.sp()?;
            let mailbox = mailbox(input)?;
            if name == "COPY" {
                Arguments::Copy(mailbox)
            } else {
                Arguments::Move(mailbox)
            }
        }
        "EXPUNGE" if uid => Arguments::Expunge,
        _ => return Err(Syntax(format!("{name} takes no message set"))),
    };
    input.end()?;
    Ok(arguments)
}

/// `word` in any case, as a prefix (imap-codec's `tag_no_case`): what may
/// follow is checked by the rule after it.
fn prefix(input: &mut Input<'_>, word: &str) -> bool {
    input
        .attempt(|i| {
            for b in word.bytes() {
                match i.peek() {
                    Some(c) if c.eq_ignore_ascii_case(&b) => {
                        i.eat(c);
                    }
                    _ => return Err(Syntax::expected(word)),
                }
            }
            Ok(())
        })
        .is_ok()
}

/// ```abnf
/// fetch = "FETCH" SP sequence-set SP ("ALL" / "FULL" / "FAST" /
///         fetch-att / "(" fetch-att *(SP fetch-att) ")") [fetch-modifiers]
/// ```
/// (RFC 9051 §9, RFC 4466 §2.4). Like imap-codec, `()` is an empty list.
fn fetch_items(input: &mut Input<'_>) -> Parsed<MacroOrMessageDataItemNames<'static>> {
    for (word, m) in [
        ("ALL", Macro::All),
        ("FAST", Macro::Fast),
        ("FULL", Macro::Full),
    ] {
        if prefix(input, word) {
            return Ok(MacroOrMessageDataItemNames::Macro(m));
        }
    }
    if !input.eat(b'(') {
        return Ok(MacroOrMessageDataItemNames::MessageDataItemNames(vec![
            fetch_att(input)?,
        ]));
    }
    let mut items = Vec::new();
    if !input.eat(b')') {
        loop {
            items.push(fetch_att(input)?);
            if input.eat(b')') {
                break;
            }
            input.sp()?;
        }
    }
    Ok(MacroOrMessageDataItemNames::MessageDataItemNames(items))
}

/// ```abnf
/// fetch-att = "ENVELOPE" / "FLAGS" / "INTERNALDATE" /
///             "RFC822" [".HEADER" / ".SIZE" / ".TEXT"] /
///             "BODY" ["STRUCTURE"] / "UID" /
///             "BODY" section [partial] / "BODY.PEEK" section [partial] /
///             "BINARY" section-binary [partial] /      ; RFC 3516 §4.2
///             "BINARY.PEEK" section-binary [partial] /
///             "BINARY.SIZE" section-binary /
///             "MODSEQ"                                 ; RFC 7162 §7
/// ```
/// Tried in imap-codec's order, so a longer name wins over its prefix.
fn fetch_att(input: &mut Input<'_>) -> Parsed<MessageDataItemName<'static>> {
    use MessageDataItemName as Item;
    for (word, item) in [
        ("ENVELOPE", Item::Envelope),
        ("FLAGS", Item::Flags),
        ("INTERNALDATE", Item::InternalDate),
        ("BODYSTRUCTURE", Item::BodyStructure),
    ] {
        if prefix(input, word) {
            return Ok(item);
        }
    }
    for (word, peek) in [("BODY.PEEK", true), ("BODY", false)] {
        let item = input.attempt(|i| {
            if !prefix(i, word) {
                return Err(Syntax::expected(word));
            }
            let section = section(i)?;
            let partial = if i.peek() == Some(b'<') {
                Some(partial(i)?)
            } else {
                None
            };
            Ok(Item::BodyExt {
                section,
                partial,
                peek,
            })
        });
        if item.is_ok() {
            return item;
        }
    }
    for (word, peek) in [("BINARY.PEEK", true), ("BINARY", false)] {
        let item = input.attempt(|i| {
            if !prefix(i, word) {
                return Err(Syntax::expected(word));
            }
            let section = section_binary(i)?;
            let partial = if i.peek() == Some(b'<') {
                Some(partial(i)?)
            } else {
                None
            };
            Ok(Item::Binary {
                section,
                partial,
                peek,
            })
        });
        if item.is_ok() {
            return item;
        }
    }
    let size = input.attempt(|i| {
        if !prefix(i, "BINARY.SIZE") {
            return Err(Syntax::expected("BINARY.SIZE"));
        }
        Ok(Item::BinarySize {
            section: section_binary(i)?,
        })
    });
    if size.is_ok() {
        return size;
    }
    for (word, item) in [
        ("BODY", Item::Body),
        ("UID", Item::Uid),
        ("RFC822.HEADER", Item::Rfc822Header),
        ("RFC822.SIZE", Item::Rfc822Size),
        ("RFC822.TEXT", Item::Rfc822Text),
        ("RFC822", Item::Rfc822),
        ("MODSEQ", Item::ModSeq),
    ] {
        if prefix(input, word) {
            return Ok(item);
        }
    }
    Err(Syntax::expected(
        "a FETCH item such as FLAGS, UID, BODY.PEEK[] or BINARY[1]",
    ))
}

/// `section = "[" [section-spec] "]"`; `section-spec = section-msgtext /
/// (section-part ["." section-text])` (RFC 9051 §9).
fn section(input: &mut Input<'_>) -> Parsed<Option<Section<'static>>> {
    input.attempt(|i| {
        i.byte(b'[', "a section such as [HEADER]")?;
        if i.eat(b']') {
            return Ok(None);
        }
        let section = if i.peek().is_some_and(|b| b.is_ascii_digit()) {
            let part = Part(section_part(i)?);
            let text = i.attempt(|i| {
                i.byte(b'.', "a section text")?;
                section_text(i)
            });
            match text {
                Ok(Specifier::Header) => Section::Header(Some(part)),
                Ok(Specifier::HeaderFields(f)) => Section::HeaderFields(Some(part), f),
                Ok(Specifier::HeaderFieldsNot(f)) => Section::HeaderFieldsNot(Some(part), f),
                Ok(Specifier::Text) => Section::Text(Some(part)),
                Ok(Specifier::Mime) => Section::Mime(part),
                Err(_) => Section::Part(part),
            }
        } else {
            match section_msgtext(i)? {
                Specifier::Header => Section::Header(None),
                Specifier::HeaderFields(f) => Section::HeaderFields(None, f),
                Specifier::HeaderFieldsNot(f) => Section::HeaderFieldsNot(None, f),
                Specifier::Text => Section::Text(None),
                Specifier::Mime => return Err(Syntax::expected("a part number before MIME")),
            }
        };
        i.byte(b']', "the end of the section, ]")?;
        Ok(Some(section))
    })
}

enum Specifier {
    Header,
    HeaderFields(Vec1<AString<'static>>),
    HeaderFieldsNot(Vec1<AString<'static>>),
    Text,
    Mime,
}

/// `section-msgtext = "HEADER" / "HEADER.FIELDS" [".NOT"] SP header-list /
/// "TEXT"`.
fn section_msgtext(input: &mut Input<'_>) -> Parsed<Specifier> {
    for (word, not) in [("HEADER.FIELDS.NOT", true), ("HEADER.FIELDS", false)] {
        let fields = input.attempt(|i| {
            if !prefix(i, word) {
                return Err(Syntax::expected(word));
            }
            i.sp()?;
            header_list(i)
        });
        match fields {
            Ok(fields) if not => return Ok(Specifier::HeaderFieldsNot(fields)),
            Ok(fields) => return Ok(Specifier::HeaderFields(fields)),
            Err(_) => {}
        }
    }
    if prefix(input, "HEADER") {
        return Ok(Specifier::Header);
    }
    if prefix(input, "TEXT") {
        return Ok(Specifier::Text);
    }
    Err(Syntax::expected(
        "HEADER, HEADER.FIELDS (...), HEADER.FIELDS.NOT (...) or TEXT",
    ))
}

/// `section-text = section-msgtext / "MIME"`.
fn section_text(input: &mut Input<'_>) -> Parsed<Specifier> {
    section_msgtext(input).or_else(|_| {
        if prefix(input, "MIME") {
            Ok(Specifier::Mime)
        } else {
            Err(Syntax::expected("HEADER, TEXT or MIME after a part number"))
        }
    })
}

/// `section-part = nz-number *("." nz-number)`: a dot not followed by a
/// part number is left for what follows.
fn section_part(input: &mut Input<'_>) -> Parsed<Vec1<std::num::NonZeroU32>> {
    let mut parts = vec![input.nz_number()?];
    while let Ok(n) = input.attempt(|i| {
        i.byte(b'.', "a dot")?;
        i.nz_number()
    }) {
        parts.push(n);
    }
    Vec1::try_from(parts).map_err(|_| Syntax::expected("a part number"))
}

/// `header-list = "(" header-fld-name *(SP header-fld-name) ")"`,
/// `header-fld-name = astring`.
fn header_list(input: &mut Input<'_>) -> Parsed<Vec1<AString<'static>>> {
    input.attempt(|i| {
        i.byte(b'(', "a list of header field names")?;
        let mut names = vec![astring(i)?];
        while !i.eat(b')') {
            i.sp()?;
            names.push(astring(i)?);
        }
        Vec1::try_from(names).map_err(|_| Syntax::expected("a header field name"))
    })
}

/// `section-binary = "[" [section-part] "]"` (RFC 3516 §4.2).
fn section_binary(input: &mut Input<'_>) -> Parsed<Vec<std::num::NonZeroU32>> {
    input.attempt(|i| {
        i.byte(b'[', "a binary section such as [1]")?;
        let parts = if i.peek().is_some_and(|b| b.is_ascii_digit()) {
            section_part(i)?.into_inner()
        } else {
            Vec::new()
        };
        i.byte(b']', "the end of the binary section, ]")?;
        Ok(parts)
    })
}

/// `partial = "<" number "." nz-number ">"` (RFC 9051 §9, RFC 3516 §4.2).
fn partial(input: &mut Input<'_>) -> Parsed<(u32, std::num::NonZeroU32)> {
    input.attempt(|i| {
        i.byte(b'<', "a partial range such as <0.100>")?;
        let start = i.number()?;
        i.byte(b'.', "a partial range such as <0.100>")?;
        let length = i.nz_number()?;
        i.byte(b'>', "the end of the partial range, >")?;
        Ok((start, length))
    })
}

/// `fetch-modifiers = SP "(" fetch-modifier *(SP fetch-modifier) ")"`
/// (RFC 4466 §2.4); `fetch-modifier =/ chgsince-fetch-mod /
/// rexpunges-fetch-mod`, `chgsince-fetch-mod = "CHANGEDSINCE" SP
/// mod-sequence-value`, `rexpunges-fetch-mod = "VANISHED"` (RFC 7162 §7).
fn fetch_modifiers(input: &mut Input<'_>) -> Parsed<Vec<FetchModifier>> {
    input.sp()?;
    input.byte(b'(', "a list of FETCH modifiers")?;
    let mut modifiers = Vec::new();
    loop {
        if prefix(input, "CHANGEDSINCE ") {
            let value = NonZeroU64::new(modseq(input)?)
                .ok_or_else(|| Syntax::expected("a mod-sequence above zero"))?;
            modifiers.push(FetchModifier::ChangedSince(value));
        } else if prefix(input, "VANISHED") {
            modifiers.push(FetchModifier::Vanished);
        } else {
            return Err(Syntax::expected("CHANGEDSINCE or VANISHED"));
        }
        if input.eat(b')') {
            return Ok(modifiers);
        }
        input.sp()?;
    }
}

/// A mod-sequence (RFC 7162 §7 `mod-sequence-value`, `number64`), read as
/// imap-codec reads it: any decimal that fits 64 bits.
fn modseq(input: &mut Input<'_>) -> Parsed<u64> {
    let mut value: u64 = 0;
    let mut digits = 0;
    while let Some(b) = input.peek().filter(u8::is_ascii_digit) {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or_else(|| Syntax::expected("a mod-sequence below 2^64"))?;
        input.eat(b);
        digits += 1;
    }
    if digits == 0 {
        return Err(Syntax::expected("a mod-sequence"));
    }
    Ok(value)
}

/// ```abnf
/// store = "STORE" SP sequence-set [store-modifiers] SP store-att-flags
/// store-modifiers = SP "(" store-modifier *(SP store-modifier) ")"
/// store-modifier =/ "UNCHANGEDSINCE" SP mod-sequence-valzer
/// store-att-flags = (["+" / "-"] "FLAGS" [".SILENT"]) SP
///                   (flag-list / (flag *(SP flag)))
/// ```
/// (RFC 9051 §9, RFC 4466 §2.5, RFC 7162 §7).
fn store(input: &mut Input<'_>) -> Parsed<Arguments> {
    input.sp()?;
    let mut modifiers = Vec::new();
    if input.eat(b'(') {
        loop {
            if !prefix(input, "UNCHANGEDSINCE ") {
                return Err(Syntax::expected("UNCHANGEDSINCE"));
            }
            modifiers.push(StoreModifier::UnchangedSince(modseq(input)?));
            if input.eat(b')') {
                break;
            }
            input.sp()?;
        }
        input.sp()?;
    }
    let kind = if input.eat(b'+') {
        StoreType::Add
    } else if input.eat(b'-') {
        StoreType::Remove
    } else {
        StoreType::Replace
    };
    if !prefix(input, "FLAGS") {
        return Err(Syntax::expected("FLAGS, +FLAGS or -FLAGS"));
    }
    let response = if prefix(input, ".SILENT") {
        StoreResponse::Silent
    } else {
        StoreResponse::Answer
    };
    input.sp()?;
    let flags = if input.peek() == Some(b'(') {
        input.flag_list()?
    } else {
        let mut flags = vec![input.flag()?];
        while let Ok(flag) = input.attempt(|i| {
            i.sp()?;
            i.flag()
        }) {
            flags.push(flag);
        }
        flags
    };
    Ok(Arguments::Store {
        kind,
        response,
        flags,
        modifiers,
    })
}

/// `mailbox = "INBOX" / astring`, as imap-codec builds it.
fn mailbox(input: &mut Input<'_>) -> Parsed<Mailbox<'static>> {
    astring(input).map(Mailbox::from)
}

/// `astring = 1*ASTRING-CHAR / string`, as imap-codec builds it: an atom,
/// a quoted string (`QuotedUtf8` when it is not ASCII, RFC 6855 §3) or a
/// literal keeping its mode (`{n+}`, RFC 7888).
fn astring(input: &mut Input<'_>) -> Parsed<AString<'static>> {
    input.attempt(|i| {
        let non_sync = {
            let mut probe = i.clone();
            probe.eat(b'{') && probe.number().is_ok() && probe.eat(b'+')
        };
        let text = i.astring()?;
        let invalid = |_| Syntax::expected("a string");
        Ok(match text {
            Text::Atom(raw) => AString::Atom(AtomExt::try_from(raw.to_vec()).map_err(invalid)?),
            Text::Quoted(_) => {
                let value = String::from_utf8(text.bytes())
                    .map_err(|_| Syntax::expected("a quoted string in UTF-8"))?;
                if value.is_ascii() {
                    AString::String(IString::Quoted(Quoted::try_from(value).map_err(invalid)?))
                } else {
                    let quoted = QuotedUtf8::try_from(value.as_str()).map_err(invalid)?;
                    AString::String(IString::QuotedUtf8(quoted.into_static()))
                }
            }
            Text::Literal(data) => {
                let literal = Literal::try_from(data.to_vec())
                    .map_err(|_| Syntax::expected("a literal without NUL bytes"))?;
                let literal = if non_sync {
                    literal.into_non_sync()
                } else {
                    literal
                };
                AString::String(IString::Literal(literal))
            }
            Text::Literal8(_) => return Err(Syntax::expected("a string, not a literal8")),
        })
    })
}

#[cfg(test)]
mod tests {
    use imap_codec::CommandCodec;
    use imap_codec::decode::Decoder;
    use imap_codec::imap_types::command::Command;
    use proptest::prelude::*;

    use super::super::parse as grammar_parse;
    use super::*;

    /// Saved sets whose UIDs and sequence numbers differ, so using the
    /// wrong one shows.
    fn saved() -> Saved {
        Saved {
            uids: "4:7,9".into(),
            seqs: "2:5,7".into(),
        }
    }

    fn codec(bytes: &[u8]) -> Option<Command<'static>> {
        match CommandCodec::default().decode(bytes) {
            Ok((b"", command)) => Some(command.into_static()),
            _ => None,
        }
    }

    /// `command` with `$`, parsed here, against imap-codec's parse of the
    /// same command with the set `$` stands for: equal values, or both
    /// refused. Returns whether imap-codec accepted it.
    fn same_as_codec(command: &[u8], saved: &Saved) -> Result<bool, String> {
        let shown = String::from_utf8_lossy(command).into_owned();
        let after_tag = command.splitn(2, |b| *b == b' ').nth(1).unwrap_or_default();
        let uid = after_tag.len() > 4 && after_tag[..4].eq_ignore_ascii_case(b"UID ");
        let set = if uid { &saved.uids } else { &saved.seqs };
        let at = command
            .windows(3)
            .position(|w| matches!(w, b" $ " | b" $\r" | b" $\n"))
            .ok_or_else(|| format!("{shown:?} has no $"))?;
        let mut with_set = command[..=at].to_vec();
        with_set.extend_from_slice(set.as_bytes());
        with_set.extend_from_slice(&command[at + 2..]);
        if codec(command).is_some() {
            return Err(format!("imap-codec parsed {shown:?} itself"));
        }
        let ours = grammar_parse(command, saved);
        match (codec(&with_set), ours) {
            (Some(theirs), Some(Ok(Parse::Command(tag, body, _)))) => {
                if tag != theirs.tag || *body != theirs.body {
                    return Err(format!(
                        "{shown:?}: ours {tag:?} {body:?}, imap-codec {:?} {:?}",
                        theirs.tag, theirs.body
                    ));
                }
                Ok(true)
            }
            (None, Some(Err(_))) => Ok(false),
            (theirs, ours) => Err(format!(
                "{shown:?}: ours {ours:?}, imap-codec {theirs:?} for {:?}",
                String::from_utf8_lossy(&with_set)
            )),
        }
    }

    const FETCH: &[&str] = &[
        "FLAGS",
        "ALL",
        "fast",
        "Full",
        "(FLAGS UID)",
        "()",
        "ENVELOPE",
        "INTERNALDATE",
        "RFC822",
        "rfc822.header",
        "RFC822.SIZE",
        "RFC822.TEXT",
        "BODY",
        "BODYSTRUCTURE",
        "UID",
        "MODSEQ",
        "BODY[]",
        "BODY[]<0.100>",
        "BODY.PEEK[]",
        "body.peek[header]",
        "BODY[TEXT]",
        "BODY[1]",
        "BODY[1.2.3]",
        "BODY[1.MIME]",
        "BODY[1.HEADER]",
        "BODY[1.TEXT]<5.1>",
        "BODY[HEADER.FIELDS (From To)]",
        "BODY.PEEK[HEADER.FIELDS.NOT (\"X-Spam\" {3}\r\nFoo References)]",
        "BODY[2.HEADER.FIELDS (SUBJECT)]<10.20>",
        "BODY[HEADER.FIELDS ({4+}\r\nDate)]",
        "BINARY[]",
        "BINARY[1.2]",
        "binary.peek[1]<0.5>",
        "BINARY.SIZE[1]",
        "BINARY.SIZE[]",
        "(UID RFC822.SIZE FLAGS BODY.PEEK[HEADER] BINARY.SIZE[2] MODSEQ)",
        "(FLAGS) (CHANGEDSINCE 5)",
        "(FLAGS) (CHANGEDSINCE 5 VANISHED)",
        "FLAGS (vanished)",
        "ALL (CHANGEDSINCE 9223372036854775807)",
        "(FLAGS MODSEQ) (changedsince 18446744073709551615)",
        // Malformed.
        "",
        "FLAGS ",
        "(FLAGS",
        "(FLAGS )",
        "( FLAGS)",
        "BODY[",
        "BODY[MIME]",
        "BODY[0]",
        "BODY[1.0]",
        "BODY[1.]",
        "BODY[]<0>",
        "BODY[]<0.0>",
        "BODY[] <0.1>",
        "BODY[]<4294967296.1>",
        "BODY.PEEK",
        "BODY[HEADER.FIELDS ()]",
        "BODY[HEADER.FIELDS]",
        "BODY[HEADER.FIELDS (\"\")]",
        "BINARY.SIZE[]<0.1>",
        "BINARY[TEXT]",
        "FLAGSX",
        "RFC822.FOO",
        "ALLX",
        "(ALL)",
        "(FLAGS) (CHANGEDSINCE 0)",
        "(FLAGS) (CHANGEDSINCE)",
        "(FLAGS) (CHANGEDSINCE 18446744073709551616)",
        "(FLAGS) ()",
        "(FLAGS) (BOGUS 1)",
        "(FLAGS)(CHANGEDSINCE 1)",
        "FLAGS\r\n",
    ];

    const STORE: &[&str] = &[
        "FLAGS (\\Seen)",
        "+FLAGS (\\Seen \\Deleted foo)",
        "-FLAGS.SILENT \\Seen",
        "flags ()",
        "+flags.silent \\Answered $Forwarded \\Custom",
        "(UNCHANGEDSINCE 0) FLAGS (\\Seen)",
        "(UNCHANGEDSINCE 12345) +FLAGS.SILENT (\\Flagged)",
        "(unchangedsince 1 UNCHANGEDSINCE 2) -FLAGS x",
        // Malformed.
        "FLAGS",
        "FLAGS (\\Seen",
        "FLAGS \\",
        "+FLAGS.LOUD (x)",
        "(UNCHANGEDSINCE) FLAGS x",
        "() FLAGS x",
        "FLAGS (\\Seen )",
        "FLAGS \\Seen ",
        "*FLAGS x",
        "FLAGS (\\*)",
        "(UNCHANGEDSINCE 1)FLAGS x",
    ];

    const MAILBOX: &[&str] = &[
        "Trash",
        "INBOX",
        "inbox",
        "\"InBox\"",
        "\"Sent Items\"",
        "\"Entw\u{fc}rfe\"",
        "{5}\r\nTrash",
        "{5+}\r\nTrash",
        "{3}\r\n\u{e9}t",
        "\"a\\\\b\\\"c\"",
        "Archive/2024",
        "Foo]",
        "{0}\r\n",
        "\"\"",
        // Malformed.
        "",
        "\"unterminated",
        "Trash extra",
        "{3}\r\na\0b",
        "\"a\\b\"",
        "~{3}\r\nabc",
        "(Trash)",
    ];

    /// Every command of the corpus, in both numberings.
    fn corpus() -> Vec<Vec<u8>> {
        let mut commands = Vec::new();
        for uid in ["", "UID ", "uid "] {
            for item in FETCH {
                commands.push(format!("t1 {uid}FETCH $ {item}\r\n"));
            }
            for item in STORE {
                commands.push(format!("t2 {uid}STORE $ {item}\r\n"));
            }
            for name in MAILBOX {
                commands.push(format!("t3 {uid}COPY $ {name}\r\n"));
                commands.push(format!("t4 {uid}move $ {name}\n"));
            }
        }
        commands.push("t5 UID EXPUNGE $\r\n".into());
        commands.push("t5 uid expunge $\n".into());
        commands.push("t5 UID EXPUNGE $ 1\r\n".into());
        commands.push("t5 UID EXPUNGE $ \r\n".into());
        commands.into_iter().map(String::into_bytes).collect()
    }

    #[test]
    fn every_form_parses_as_imap_codec_parses_it_with_the_set() {
        let saved = saved();
        let mut accepted = 0;
        let mut failures = Vec::new();
        let commands = corpus();
        for command in &commands {
            match same_as_codec(command, &saved) {
                Ok(true) => accepted += 1,
                Ok(false) => {}
                Err(e) => failures.push(e),
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
        // The corpus is mostly well formed: a parser refusing everything
        // would agree with every refusal.
        assert!(accepted > commands.len() / 2, "{accepted}");
    }

    #[test]
    fn uid_commands_use_the_saved_uids_and_others_the_sequence_numbers() {
        let saved = saved();
        let set = |command: &[u8]| match grammar_parse(command, &saved) {
            Some(Ok(Parse::Command(_, body, _))) => match *body {
                CommandBody::Fetch { sequence_set, .. }
                | CommandBody::Store { sequence_set, .. }
                | CommandBody::Copy { sequence_set, .. }
                | CommandBody::Move { sequence_set, .. }
                | CommandBody::ExpungeUid { sequence_set } => sequence_set,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        let uids: SequenceSet = "4:7,9".parse().unwrap();
        let seqs: SequenceSet = "2:5,7".parse().unwrap();
        assert_eq!(set(b"a UID FETCH $ FLAGS\r\n"), uids);
        assert_eq!(set(b"a FETCH $ FLAGS\r\n"), seqs);
        assert_eq!(set(b"a UID STORE $ +FLAGS (x)\r\n"), uids);
        assert_eq!(set(b"a STORE $ +FLAGS (x)\r\n"), seqs);
        assert_eq!(set(b"a UID COPY $ Trash\r\n"), uids);
        assert_eq!(set(b"a COPY $ Trash\r\n"), seqs);
        assert_eq!(set(b"a UID MOVE $ Trash\r\n"), uids);
        assert_eq!(set(b"a MOVE $ Trash\r\n"), seqs);
        assert_eq!(set(b"a UID EXPUNGE $\r\n"), uids);
    }

    /// RFC 5182 §2.1: `$` naming an empty result acts on no message; the
    /// command is still checked first, so a malformed one is `BAD`.
    #[test]
    fn an_empty_saved_result_names_no_message() {
        let empty = Saved::default();
        for command in [
            "a FETCH $ FLAGS\r\n",
            "a UID FETCH $ (UID BODY.PEEK[]) (CHANGEDSINCE 3 VANISHED)\r\n",
            "a STORE $ +FLAGS (\\Deleted)\r\n",
            "a UID STORE $ (UNCHANGEDSINCE 4) FLAGS.SILENT ()\r\n",
            "a COPY $ Trash\r\n",
            "a UID COPY $ \"Sent Items\"\r\n",
            "a MOVE $ Trash\r\n",
            "a UID MOVE $ {5}\r\nTrash\r\n",
            "a UID EXPUNGE $\r\n",
        ] {
            match grammar_parse(command.as_bytes(), &empty) {
                Some(Ok(Parse::Command(tag, _, ext))) => {
                    assert_eq!(tag.as_ref(), "a");
                    assert!(ext.no_messages, "{command:?}");
                }
                other => panic!("{command:?}: {other:?}"),
            }
        }
        for command in [
            "a FETCH $ FLAGS)\r\n",
            "a UID COPY $\r\n",
            "a STORE $ FLAGS\r\n",
        ] {
            assert!(
                matches!(grammar_parse(command.as_bytes(), &empty), Some(Err(_))),
                "{command:?}"
            );
        }
    }

    #[test]
    fn malformed_commands_say_what_was_expected() {
        let saved = saved();
        let text = |command: &str| match grammar_parse(command.as_bytes(), &saved) {
            Some(Err(Syntax(text))) => text,
            other => panic!("{command:?}: {other:?}"),
        };
        assert_eq!(
            text("a FETCH $ BOGUS\r\n"),
            "Syntax error: expected a FETCH item such as FLAGS, UID, BODY.PEEK[] or BINARY[1]"
        );
        assert_eq!(
            text("a STORE $ LABELS (x)\r\n"),
            "Syntax error: expected FLAGS, +FLAGS or -FLAGS"
        );
        assert_eq!(
            text("a FETCH $ FLAGS (CHANGEDSINCE x)\r\n"),
            "Syntax error: expected a mod-sequence"
        );
        assert_eq!(
            text("a UID COPY $ Trash Junk\r\n"),
            "Unexpected data after the command"
        );
        assert_eq!(text("a UID COPY $\r\n"), "Syntax error: expected a space");
    }

    /// Only `$` is ours: other refused sets, and EXPUNGE without UID
    /// (which takes no set), keep imap-codec's refusal.
    #[test]
    fn other_refused_commands_are_left_to_imap_codec() {
        let saved = saved();
        for command in [
            "a FETCH 1,$ FLAGS\r\n",
            "a FETCH $,1 FLAGS\r\n",
            "a FETCH $x FLAGS\r\n",
            "a FETCH 0 FLAGS\r\n",
            "a EXPUNGE $\r\n",
            "a FETCH  $ FLAGS\r\n",
        ] {
            assert!(
                grammar_parse(command.as_bytes(), &saved).is_none(),
                "{command:?}"
            );
        }
    }

    /// FETCH items as a client may write them, and some that are wrong.
    fn fetch_item() -> impl Strategy<Value = String> {
        let name = prop::sample::select(vec![
            "ENVELOPE",
            "FLAGS",
            "INTERNALDATE",
            "RFC822",
            "RFC822.HEADER",
            "RFC822.SIZE",
            "RFC822.TEXT",
            "BODY",
            "BODYSTRUCTURE",
            "UID",
            "MODSEQ",
            "BODY[",
            "BODY.PEEK[",
            "BINARY[",
            "BINARY.PEEK[",
            "BINARY.SIZE[",
            "body.peek[",
            "Bogus",
        ]);
        let part = prop::collection::vec(0u32..4, 0..3).prop_map(|parts| {
            parts
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(".")
        });
        let text = prop::sample::select(vec![
            "",
            "HEADER",
            "TEXT",
            "MIME",
            "HEADER.FIELDS (From \"To\")",
            "HEADER.FIELDS.NOT ({7}\r\nSubject)",
            "HEADER.FIELDS ()",
        ]);
        let partial = prop::sample::select(vec!["", "<0.10>", "<5.0>", "<4294967295.1>", "<1>"]);
        (name, part, text, partial).prop_map(|(name, part, text, partial)| {
            if !name.ends_with('[') {
                return name.to_owned();
            }
            let dot = if !part.is_empty() && !text.is_empty() {
                "."
            } else {
                ""
            };
            format!("{name}{part}{dot}{text}]{partial}")
        })
    }

    proptest! {
        /// Generated FETCH item lists and modifiers parse as imap-codec
        /// parses them.
        #[test]
        fn generated_fetches_parse_as_imap_codec_parses_them(
            uid in any::<bool>(),
            items in prop::collection::vec(fetch_item(), 1..5),
            list in any::<bool>(),
            modifiers in prop::sample::select(vec![
                "", " (CHANGEDSINCE 1)", " (VANISHED CHANGEDSINCE 7)", " (CHANGEDSINCE 0)", " ()",
            ]),
        ) {
            let items = if list || items.len() > 1 {
                format!("({})", items.join(" "))
            } else {
                items[0].clone()
            };
            let uid = if uid { "UID " } else { "" };
            let command = format!("t {uid}FETCH $ {items}{modifiers}\r\n");
            let result = same_as_codec(command.as_bytes(), &saved());
            prop_assert!(result.is_ok(), "{:?}", result);
        }

        /// Any bytes after the set: no panic, and a parse keeps the tag.
        #[test]
        fn arbitrary_bytes_never_panic(
            head in prop::sample::select(vec![
                "t FETCH $ ", "t UID FETCH $ (", "t STORE $ ", "t UID STORE $ (", "t COPY $ ",
                "t UID MOVE $ ", "t UID EXPUNGE $ ", "t FETCH $ BODY[", "t FETCH $ FLAGS (",
            ]),
            body in prop::collection::vec(any::<u8>(), 0..100),
            empty in any::<bool>(),
        ) {
            let mut command = head.as_bytes().to_vec();
            command.extend_from_slice(&body);
            command.extend_from_slice(b"\r\n");
            let saved = if empty { Saved::default() } else { saved() };
            match grammar_parse(&command, &saved) {
                Some(Ok(Parse::Command(tag, _, _))) => {
                    prop_assert_eq!(tag.as_ref(), "t");
                }
                Some(Err(_)) => {}
                None => prop_assert!(false, "a $ command left to imap-codec"),
            }
        }
    }
}
