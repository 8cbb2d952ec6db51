//! The grammar of the IMAP extensions imap-codec 2.0.0-alpha.10 does not
//! parse, as a small typed parser. imap-codec parses the base grammar
//! (RFC 3501, RFC 9051 and the extensions it knows); a command it refuses
//! whose name has an extension grammar here is parsed by [`parse`] into the
//! same typed values imap-codec gives ([`CommandBody`]) plus what the
//! extension adds ([`Ext`]). Nothing rewrites command bytes.
//!
//! - [`search`]: ESEARCH (RFC 4731 §3) `SEARCH RETURN (...)`, ESORT
//!   (RFC 5267 §3.2) `SORT RETURN (...)`, and SEARCHRES (RFC 5182 §3) `$`
//!   in SEARCH, SORT and THREAD keys.
//! - [`messages`]: `$` as the message set of FETCH, STORE, COPY, MOVE and
//!   UID EXPUNGE (RFC 5182 §3).
//! - [`mailboxes`]: LIST-EXTENDED (RFC 5258 §6) with LIST-STATUS (RFC 5819
//!   §5), CREATE-SPECIAL-USE (RFC 6154 §6), APPENDLIMIT in STATUS (RFC 7889
//!   §4), MULTIAPPEND (RFC 3502 §6.3.11) and UTF8=ACCEPT's `UTF8 (~{n})`
//!   APPEND data (RFC 6855 §4).
//!
//! [`input::Input`] holds the lexical rules; each command family is one
//! function from the input after the command name to a typed value.

pub mod ext;
pub mod input;
mod mailboxes;
mod messages;
mod search;

use bounded_static::IntoBoundedStatic;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::Tag;

pub use ext::Ext;
use input::{Input, Parsed, Syntax};

use super::state::Saved;

/// What [`parse`] made of a command.
#[derive(Debug)]
pub enum Parse {
    /// The command, typed.
    Command(Tag<'static>, Box<CommandBody<'static>>, Ext),
}

/// The position of a command after its tag, `UID` and name.
pub struct Head<'a> {
    pub tag: Tag<'static>,
    pub uid: bool,
    /// The command name, upper case.
    pub name: String,
    /// The input after the name (at the space before the first argument).
    pub input: Input<'a>,
}

/// Commands with an extension grammar here.
const EXTENDED: &[&str] = &[
    "SEARCH", "SORT", "THREAD", "FETCH", "STORE", "COPY", "MOVE", "EXPUNGE", "LIST", "CREATE",
    "STATUS", "APPEND",
];

/// Parses a complete command (literal data included) that imap-codec
/// refused. `None`: the command has no extension grammar (or its family
/// does not parse it), and imap-codec's refusal stands. `Some(Err)`: it is
/// one of ours and malformed; the error is the `BAD` text.
pub fn parse(bytes: &[u8], saved: &Saved) -> Option<Parsed<Parse>> {
    let head = head(bytes)?;
    if !EXTENDED.contains(&head.name.as_str()) {
        return None;
    }
    match head.name.as_str() {
        "SEARCH" | "SORT" | "THREAD" => search::parse(head, saved),
        "FETCH" | "STORE" | "COPY" | "MOVE" | "EXPUNGE" => messages::parse(head, saved),
        "LIST" | "CREATE" | "STATUS" | "APPEND" => mailboxes::parse(head),
        _ => None,
    }
}

/// `tag SP ["UID" SP] name`.
fn head(bytes: &[u8]) -> Option<Head<'_>> {
    let mut input = Input::new(bytes);
    let tag = input
        .attempt(|i| {
            let raw = i.tag()?;
            Tag::try_from(raw.to_vec())
                .map(IntoBoundedStatic::into_static)
                .map_err(|_| Syntax::expected("a tag"))
        })
        .ok()?;
    input.sp().ok()?;
    let uid = input.keyword("UID");
    if uid {
        input.sp().ok()?;
    }
    let name = input.atom().ok()?;
    let name = String::from_utf8_lossy(name).to_ascii_uppercase();
    Some(Head {
        tag,
        uid,
        name,
        input,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_is_read_and_other_commands_are_left_to_imap_codec() {
        let h = head(b"a1 uid fetch 1 FLAGS\r\n").unwrap();
        assert_eq!(h.tag.as_ref(), "a1");
        assert!(h.uid);
        assert_eq!(h.name, "FETCH");
        assert!(parse(b"a1 NOOP extra\r\n", &Saved::default()).is_none());
        assert!(head(b"\r\n").is_none());
    }
}
