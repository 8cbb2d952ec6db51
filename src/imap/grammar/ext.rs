//! What a command carries beyond the base form imap-codec knows: the
//! typed values of the extensions [`super`] parses.

use imap_codec::imap_types::status::StatusDataItemName;

use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::flag::Flag;

use crate::imap::state::flag_name;
use crate::mailbox::list::SpecialUse;
use crate::mailbox::summary::LineEnds;

/// What a command carried beyond its base form.
#[derive(Debug, Default)]
pub struct Ext {
    /// `SEARCH RETURN (...)`: answer with ESEARCH.
    pub search_return: Option<SearchReturn>,
    pub list: Option<ListExt>,
    /// `CREATE name (USE (...))`.
    pub create_use: Vec<SpecialUse>,
    /// A `USE` attribute of CREATE that is well formed but names no
    /// special use Facteur knows: the command is refused with `NO
    /// [USEATTR]` (RFC 6154 §3), not `BAD`.
    pub create_use_unknown: Option<String>,
    /// STATUS asked for APPENDLIMIT (RFC 7889 §4), besides the command's
    /// items (none if it was the only one).
    pub status_appendlimit: bool,
    /// MULTIAPPEND (RFC 3502): messages after the first.
    pub more_appends: Vec<Message>,
    /// `$` named an empty saved result (RFC 5182 §2.1): the command's
    /// message set stands for no message at all. Every other check of the
    /// command (the mailbox is open read-write, the target exists) still
    /// runs; see [`crate::imap::state::Selected::resolve`].
    pub no_messages: bool,
}

/// One message of an APPEND.
#[derive(Debug)]
pub struct Message {
    pub flags: Vec<String>,
    /// INTERNALDATE, seconds since the epoch; `None`: now.
    pub date: Option<i64>,
    pub data: Vec<u8>,
    /// How its line ends are stored: a literal8 (RFC 3516 §4.1) keeps its
    /// `binary` parts byte for byte; a literal is text, stored CRLF.
    pub line_ends: LineEnds,
}

impl Message {
    pub fn new(
        flags: Vec<Flag<'_>>,
        date: Option<DateTime>,
        data: LiteralOrLiteral8<'_>,
    ) -> Message {
        let (data, line_ends) = match data {
            LiteralOrLiteral8::Literal(l) => (l.data().to_vec(), LineEnds::Crlf),
            LiteralOrLiteral8::Literal8(l) => (l.data.to_vec(), LineEnds::KeepBinaryParts),
        };
        Message {
            flags: flags.iter().map(flag_name).collect(),
            date: date.map(|d| d.as_ref().timestamp()),
            data,
            line_ends,
        }
    }
}

/// ESEARCH result options (RFC 4731 §3.1, RFC 5182 SAVE).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchReturn {
    pub min: bool,
    pub max: bool,
    pub count: bool,
    pub all: bool,
    pub save: bool,
}

/// LIST-EXTENDED selection and return options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListExt {
    pub select_subscribed: bool,
    pub select_special_use: bool,
    pub recursive_match: bool,
    pub return_subscribed: bool,
    pub return_children: bool,
    pub return_special_use: bool,
    pub return_status: Option<Vec<StatusDataItemName>>,
    pub return_status_appendlimit: bool,
    /// Every pattern, decoded, when more than the base form's one or a
    /// pattern list was given.
    pub patterns: Vec<Vec<u8>>,
}
