//! SEARCH, SORT and THREAD (RFC 9051 §6.4.4, RFC 5256 §3) with ESEARCH's
//! and ESORT's `RETURN (...)` (RFC 4731 §3, RFC 5267 §3.2) and SEARCHRES's
//! `$` (RFC 5182 §3), parsed into imap-codec's own [`CommandBody`] and
//! [`SearchKey`] values plus [`Ext::search_return`].
//!
//! ```abnf
//! search          = "SEARCH" [search-return-opts] SP search-program
//! search-return-opts = SP "RETURN" SP "(" [search-return-opt
//!                   *(SP search-return-opt)] ")"         ; RFC 4466 §2.6
//! search-program  = ["CHARSET" SP charset SP] search-key *(SP search-key)
//! sort            = "SORT" [search-return-opts] SP sort-criteria SP
//!                   search-criteria                       ; RFC 5267 §3.2
//! thread          = "THREAD" SP thread-alg SP search-criteria
//! search-criteria = charset 1*(SP search-key)
//! search-key      =/ "MODSEQ" [SP entry-name SP entry-type-req] SP
//!                   mod-sequence-valzer                   ; RFC 7162 §3.1.5
//! seq-last-command = "$"                                  ; RFC 5182 §3
//! ```
//!
//! The search keys are RFC 9051 §9's and are typed as imap-codec types
//! them (a differential test below holds the two parsers equal), so a
//! command means the same whether imap-codec or this module read it. `$`
//! becomes the saved UIDs as a `UID` key, or `NOT ALL` when nothing is
//! saved (RFC 5182 §2.1). Nesting is bounded as imap-codec bounds it
//! ([`MAX_NESTING`]); parsing never backtracks past one word, so its work
//! is linear in the command.

use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::{Atom, Charset, Quoted, Vec1};
use imap_codec::imap_types::extensions::condstore_qresync::{AttributeFlag, EntryTypeReq};
use imap_codec::imap_types::extensions::sort::{SortCriterion, SortKey};
use imap_codec::imap_types::extensions::thread::ThreadingAlgorithm;
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::SequenceSet;

use super::ext::{Ext, SearchReturn};
use super::input::{Input, Messages, Parsed, Syntax, Text};
use super::{Head, Parse};
use crate::imap::state::Saved;

/// How many parentheses, `NOT`s and `OR`s may enclose a search key:
/// imap-codec's bound (its `search_key(9)` counts the key itself), so the
/// two parsers accept the same nesting and no command overflows the stack.
pub const MAX_NESTING: usize = 8;

/// Most sequences the saved result (`$`) may be copied into one command's
/// keys, counting every `$`: each `$` holds its own copy of the set, so a
/// command of many `$` over a long saved set would otherwise grow memory
/// by their product.
pub const MAX_SAVED_COPIES: usize = 1 << 20;

/// SEARCH, SORT and THREAD, `UID` or not; other names are not ours.
pub fn parse(head: Head<'_>, saved: &Saved) -> Option<Parsed<Parse>> {
    let Head {
        tag,
        uid,
        name,
        mut input,
    } = head;
    let mut ext = Ext::default();
    let mut keys = Keys::new(saved);
    let body = match name.as_str() {
        "SEARCH" => search(&mut input, uid, &mut keys, &mut ext),
        "SORT" => sort(&mut input, uid, &mut keys, &mut ext),
        "THREAD" => thread(&mut input, uid, &mut keys),
        _ => return None,
    };
    Some(body.and_then(|body| {
        input.end()?;
        Ok(Parse::Command(tag, Box::new(body), ext))
    }))
}

/// `SEARCH [RETURN (...)] [CHARSET charset] keys`.
fn search(
    input: &mut Input<'_>,
    uid: bool,
    keys: &mut Keys<'_>,
    ext: &mut Ext,
) -> Parsed<CommandBody<'static>> {
    input.sp()?;
    if input.keyword("RETURN") {
        ext.search_return = Some(return_options(input)?);
        input.sp()?;
    }
    let charset = if input.keyword("CHARSET") {
        input.sp()?;
        let charset = charset(input)?;
        input.sp()?;
        Some(charset)
    } else {
        None
    };
    let criteria = keys.criteria(input)?;
    Ok(CommandBody::Search {
        charset,
        criteria,
        uid,
    })
}

/// `SORT [RETURN (...)] (sort-criteria) charset keys` (RFC 5256 §3,
/// RFC 5267 §3.2).
fn sort(
    input: &mut Input<'_>,
    uid: bool,
    keys: &mut Keys<'_>,
    ext: &mut Ext,
) -> Parsed<CommandBody<'static>> {
    input.sp()?;
    if input.keyword("RETURN") {
        ext.search_return = Some(return_options(input)?);
        input.sp()?;
    }
    let sort_criteria = sort_criteria(input)?;
    input.sp()?;
    let charset = charset(input)?;
    input.sp()?;
    let search_criteria = keys.criteria(input)?;
    Ok(CommandBody::Sort {
        sort_criteria,
        charset,
        search_criteria,
        uid,
    })
}

/// `THREAD algorithm charset keys` (RFC 5256 §3).
fn thread(input: &mut Input<'_>, uid: bool, keys: &mut Keys<'_>) -> Parsed<CommandBody<'static>> {
    input.sp()?;
    let algorithm = ThreadingAlgorithm::from(input.atom_value()?);
    input.sp()?;
    let charset = charset(input)?;
    input.sp()?;
    let search_criteria = keys.criteria(input)?;
    Ok(CommandBody::Thread {
        algorithm,
        charset,
        search_criteria,
        uid,
    })
}

/// `SP "(" [option *(SP option)] ")"` after `RETURN` (RFC 4731 §3.1; SAVE
/// is RFC 5182 §2). `RETURN ()` means `RETURN (ALL)`.
fn return_options(input: &mut Input<'_>) -> Parsed<SearchReturn> {
    if input.sp().is_err() || !input.eat(b'(') {
        return Err(Syntax("RETURN needs a list of options".into()));
    }
    let mut options = SearchReturn::default();
    if !input.eat(b')') {
        loop {
            let word = input.atom().map_err(|e| unbalanced(input, e))?;
            match upper(word).as_str() {
                "MIN" => options.min = true,
                "MAX" => options.max = true,
                "COUNT" => options.count = true,
                "ALL" => options.all = true,
                "SAVE" => options.save = true,
                other => return Err(Syntax(format!("Unknown SEARCH return option {other}"))),
            }
            if input.eat(b')') {
                break;
            }
            input.sp().map_err(|e| unbalanced(input, e))?;
        }
    }
    if options == SearchReturn::default() {
        options.all = true;
    }
    Ok(options)
}

/// The options' list ended with the command: unbalanced; else `error`.
fn unbalanced(input: &Input<'_>, error: Syntax) -> Syntax {
    if input.at_end() {
        Syntax("Unbalanced RETURN options".into())
    } else {
        error
    }
}

/// `"(" sort-criterion *(SP sort-criterion) ")"`, `sort-criterion =
/// ["REVERSE" SP] sort-key` (RFC 5256 §3; DISPLAYFROM and DISPLAYTO are
/// RFC 5957 §3).
fn sort_criteria(input: &mut Input<'_>) -> Parsed<Vec1<SortCriterion>> {
    input.byte(b'(', "a parenthesised list of sort criteria")?;
    let mut criteria = Vec::new();
    loop {
        let reverse = input.keyword("REVERSE");
        if reverse {
            input.sp()?;
        }
        let word = input
            .atom()
            .map_err(|_| Syntax::expected("a sort criterion"))?;
        let key = match upper(word).as_str() {
            "ARRIVAL" => SortKey::Arrival,
            "CC" => SortKey::Cc,
            "DATE" => SortKey::Date,
            "FROM" => SortKey::From,
            "SIZE" => SortKey::Size,
            "SUBJECT" => SortKey::Subject,
            "TO" => SortKey::To,
            "DISPLAYFROM" => SortKey::DisplayFrom,
            "DISPLAYTO" => SortKey::DisplayTo,
            other => return Err(Syntax(format!("Unknown sort criterion {other}"))),
        };
        criteria.push(SortCriterion { reverse, key });
        if input.eat(b')') {
            break;
        }
        input.sp()?;
    }
    Vec1::try_from(criteria).map_err(|_| Syntax::expected("a sort criterion"))
}

/// `charset = atom / quoted` (RFC 9051 §9; ASCII, as imap-codec reads it).
fn charset(input: &mut Input<'_>) -> Parsed<Charset<'static>> {
    if input.peek() == Some(b'"') {
        let raw = input.quoted()?;
        let text = String::from_utf8(Text::Quoted(raw).bytes()).ok();
        return text
            .and_then(|t| Quoted::try_from(t).ok())
            .map(Charset::Quoted)
            .ok_or_else(|| Syntax::expected("a charset name in ASCII"));
    }
    input
        .atom_value()
        .map(Charset::Atom)
        .map_err(|_| Syntax::expected("a charset"))
}

/// The search keys of one command, with the saved result `$` stands for.
struct Keys<'s> {
    saved: &'s Saved,
    /// The saved UIDs, parsed at the first `$`.
    saved_set: Option<Option<SequenceSet>>,
    /// Sequences copied into keys for `$` so far.
    copied: usize,
}

impl<'s> Keys<'s> {
    fn new(saved: &'s Saved) -> Self {
        Keys {
            saved,
            saved_set: None,
            copied: 0,
        }
    }

    /// `search-key *(SP search-key)`.
    fn criteria(&mut self, input: &mut Input<'_>) -> Parsed<Vec1<SearchKey<'static>>> {
        let mut keys = vec![self.key(input, 0)?];
        while input.eat(b' ') {
            keys.push(self.key(input, 0)?);
        }
        Vec1::try_from(keys).map_err(|_| Syntax::expected("a search key"))
    }

    /// One `search-key` (RFC 9051 §9) inside `depth` parentheses, `NOT`s
    /// and `OR`s.
    fn key(&mut self, input: &mut Input<'_>, depth: usize) -> Parsed<SearchKey<'static>> {
        if depth > MAX_NESTING {
            return Err(Syntax(format!(
                "Search keys nested too deeply: at most {MAX_NESTING} parentheses, NOT and OR"
            )));
        }
        match input.peek() {
            Some(b'(') => {
                input.eat(b'(');
                let mut keys = vec![self.key(input, depth + 1)?];
                while input.eat(b' ') {
                    keys.push(self.key(input, depth + 1)?);
                }
                input.byte(b')', "a closing parenthesis")?;
                let keys = Vec1::try_from(keys).map_err(|_| Syntax::expected("a search key"))?;
                return Ok(SearchKey::And(keys));
            }
            Some(b'$' | b'*' | b'0'..=b'9') => {
                return match input.sequence_set()? {
                    Messages::Set(set) => Ok(SearchKey::SequenceSet(set)),
                    Messages::Saved => self.saved(),
                };
            }
            _ => {}
        }
        let word = input.atom().map_err(|_| Syntax::expected("a search key"))?;
        let word = upper(word);
        let key = match word.as_str() {
            "ALL" => SearchKey::All,
            "ANSWERED" => SearchKey::Answered,
            "DELETED" => SearchKey::Deleted,
            "DRAFT" => SearchKey::Draft,
            "FLAGGED" => SearchKey::Flagged,
            "NEW" => SearchKey::New,
            "OLD" => SearchKey::Old,
            "RECENT" => SearchKey::Recent,
            "SEEN" => SearchKey::Seen,
            "UNANSWERED" => SearchKey::Unanswered,
            "UNDELETED" => SearchKey::Undeleted,
            "UNDRAFT" => SearchKey::Undraft,
            "UNFLAGGED" => SearchKey::Unflagged,
            "UNSEEN" => SearchKey::Unseen,
            "BCC" | "BODY" | "CC" | "FROM" | "SUBJECT" | "TEXT" | "TO" => {
                input.sp()?;
                let value = input.astring_value()?;
                match word.as_str() {
                    "BCC" => SearchKey::Bcc(value),
                    "BODY" => SearchKey::Body(value),
                    "CC" => SearchKey::Cc(value),
                    "FROM" => SearchKey::From(value),
                    "SUBJECT" => SearchKey::Subject(value),
                    "TEXT" => SearchKey::Text(value),
                    _ => SearchKey::To(value),
                }
            }
            "BEFORE" | "ON" | "SINCE" | "SENTBEFORE" | "SENTON" | "SENTSINCE" => {
                input.sp()?;
                let date = input.date()?;
                match word.as_str() {
                    "BEFORE" => SearchKey::Before(date),
                    "ON" => SearchKey::On(date),
                    "SINCE" => SearchKey::Since(date),
                    "SENTBEFORE" => SearchKey::SentBefore(date),
                    "SENTON" => SearchKey::SentOn(date),
                    _ => SearchKey::SentSince(date),
                }
            }
            "KEYWORD" | "UNKEYWORD" => {
                input.sp()?;
                let flag = input.atom_value()?;
                if word == "KEYWORD" {
                    SearchKey::Keyword(flag)
                } else {
                    SearchKey::Unkeyword(flag)
                }
            }
            "HEADER" => {
                input.sp()?;
                let name = input.astring_value()?;
                input.sp()?;
                SearchKey::Header(name, input.astring_value()?)
            }
            "LARGER" | "SMALLER" => {
                input.sp()?;
                let size = input.number()?;
                if word == "LARGER" {
                    SearchKey::Larger(size)
                } else {
                    SearchKey::Smaller(size)
                }
            }
            "NOT" => {
                input.sp()?;
                SearchKey::Not(Box::new(self.key(input, depth + 1)?))
            }
            "OR" => {
                input.sp()?;
                let left = self.key(input, depth + 1)?;
                input.sp()?;
                let right = self.key(input, depth + 1)?;
                SearchKey::Or(Box::new(left), Box::new(right))
            }
            "UID" => {
                input.sp()?;
                match input.sequence_set()? {
                    Messages::Set(set) => SearchKey::Uid(set),
                    Messages::Saved => self.saved()?,
                }
            }
            "MODSEQ" => modseq(input)?,
            other => return Err(Syntax(format!("Unknown search key {other}"))),
        };
        Ok(key)
    }

    /// `$`: the saved UIDs, or no message when nothing is saved
    /// (RFC 5182 §2.1).
    fn saved(&mut self) -> Parsed<SearchKey<'static>> {
        let saved = self.saved;
        let set = self.saved_set.get_or_insert_with(|| {
            match Input::new(saved.uids.as_bytes()).sequence_set() {
                Ok(Messages::Set(set)) => Some(set),
                _ => None,
            }
        });
        let Some(set) = set else {
            return Ok(SearchKey::Not(Box::new(SearchKey::All)));
        };
        self.copied += set.0.as_ref().len();
        if self.copied > MAX_SAVED_COPIES {
            return Err(Syntax(
                "Too many uses of the saved result ($) in one command".into(),
            ));
        }
        Ok(SearchKey::Uid(set.clone()))
    }
}

/// After `MODSEQ`: `[SP entry-name SP entry-type-req] SP
/// mod-sequence-valzer` (RFC 7162 §3.1.5), `entry-name = DQUOTE "/flags/"
/// attr-flag DQUOTE`. The value is taken up to 2^64-1, as imap-codec takes
/// it.
fn modseq(input: &mut Input<'_>) -> Parsed<SearchKey<'static>> {
    input.sp()?;
    let entry = if input.eat(b'"') {
        let flag = entry_flag(input)?;
        input.byte(b'"', "the closing quote of the entry name")?;
        input.sp()?;
        let kind = match upper(input.atom()?).as_str() {
            "PRIV" => EntryTypeReq::Private,
            "SHARED" => EntryTypeReq::Shared,
            "ALL" => EntryTypeReq::All,
            _ => return Err(Syntax::expected("priv, shared or all")),
        };
        input.sp()?;
        Some((flag, kind))
    } else {
        None
    };
    let digits = input
        .atom()
        .ok()
        .filter(|d| d.iter().all(u8::is_ascii_digit));
    let modseq = digits
        .and_then(|d| std::str::from_utf8(d).ok()?.parse().ok())
        .ok_or_else(|| Syntax::expected("a mod-sequence"))?;
    Ok(SearchKey::ModSequence { entry, modseq })
}

/// `"/flags/" attr-flag` inside the entry name's quotes: `\\` atom is a
/// system flag (`\` escaped in a quoted string), an atom a keyword.
fn entry_flag(input: &mut Input<'_>) -> Parsed<AttributeFlag<'static>> {
    const PREFIX: &[u8] = b"/flags/";
    let bad = || Syntax::expected("an entry name such as \"/flags/\\\\Seen\"");
    let word = input.atom().map_err(|_| bad())?;
    if word.len() < PREFIX.len() || !word[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        return Err(bad());
    }
    let keyword = &word[PREFIX.len()..];
    if !keyword.is_empty() {
        let atom = Atom::try_from(keyword.to_vec()).map_err(|_| bad())?;
        return Ok(AttributeFlag::Keyword(atom));
    }
    if !(input.eat(b'\\') && input.eat(b'\\')) {
        return Err(bad());
    }
    Ok(AttributeFlag::system(input.atom_value()?))
}

/// An atom in upper case, shortened for an error text.
fn upper(word: &[u8]) -> String {
    let shown = &word[..word.len().min(64)];
    String::from_utf8_lossy(shown).to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use bounded_static::IntoBoundedStatic;
    use imap_codec::CommandCodec;
    use imap_codec::decode::Decoder;
    use proptest::prelude::*;

    use super::*;

    /// imap-codec's reading of a complete command, if it accepts it.
    fn codec(command: &[u8]) -> Option<CommandBody<'static>> {
        match CommandCodec::default().decode(command) {
            Ok((b"", c)) => Some(c.body.into_static()),
            _ => None,
        }
    }

    /// This module's reading of a complete command.
    fn ours(command: &[u8], saved: &Saved) -> Parsed<(CommandBody<'static>, Ext)> {
        let head = super::super::head(command).expect("a tag and a name");
        match parse(head, saved).expect("a SEARCH, SORT or THREAD") {
            Ok(Parse::Command(_, body, ext)) => Ok((*body, ext)),
            Err(e) => Err(e),
        }
    }

    fn saved(uids: &str) -> Saved {
        Saved {
            uids: uids.into(),
            seqs: String::new(),
        }
    }

    /// Both parsers read `command` alike: the same value, or both refuse.
    fn same(command: &[u8]) -> Result<(), String> {
        let theirs = codec(command);
        let mine = ours(command, &Saved::default()).map(|(body, _)| body);
        match (&theirs, &mine) {
            (Some(t), Ok(m)) if t == m => Ok(()),
            (None, Err(_)) => Ok(()),
            _ => Err(format!(
                "{:?}\n imap-codec: {theirs:?}\n ours: {mine:?}",
                String::from_utf8_lossy(command)
            )),
        }
    }

    /// Every key of RFC 9051 §9 and RFC 7162 §3.1.5 in the forms a client
    /// sends them, each of which imap-codec accepts.
    const CORPUS: &[&str] = &[
        "ALL",
        "all",
        "AnSwErEd",
        "BCC \"x\"",
        "BCC abc",
        "BCC \"\"",
        "BEFORE 1-Feb-2024",
        "BEFORE \"01-feb-2024\"",
        "BODY {3}\r\nabc",
        "BODY {3+}\r\na b",
        "BODY {0}\r\n",
        "CC \"a \\\"q\\\" \\\\ b\"",
        "DELETED",
        "DRAFT",
        "FLAGGED",
        "FROM \"Café\"",
        "FROM {5}\r\nCafé",
        "FROM ]x",
        "HEADER Message-ID \"<a@b>\"",
        "HEADER \"X-Y\" {2}\r\nzz",
        "HEADER {4}\r\nX-Zz \"\"",
        "KEYWORD $Forwarded",
        "LARGER 0",
        "LARGER 4294967295",
        "NEW",
        "NOT SEEN",
        "OLD",
        "ON 31-Dec-1999",
        "OR SEEN UNSEEN",
        "RECENT",
        "SEEN",
        "SENTBEFORE 1-Jan-2000",
        "SENTON 29-Feb-2024",
        "SENTSINCE 07-jUL-2023",
        "SINCE 1-Jan-0001",
        "SMALLER 100",
        "SUBJECT \"日本語\"",
        "SUBJECT \"x\u{7f}\"",
        "TEXT hello",
        "TO x@y.z",
        "UID 1:*",
        "UID 1,3:5,*:7",
        "UID *",
        "UNANSWERED",
        "UNDELETED",
        "UNDRAFT",
        "UNFLAGGED",
        "UNKEYWORD foo",
        "UNSEEN",
        "1:*",
        "*",
        "2,4:*,9",
        "4294967295",
        "(SEEN)",
        "(SEEN UNSEEN (DRAFT))",
        "OR (SEEN FLAGGED) NOT (DELETED)",
        "OR OR SEEN DRAFT OR FLAGGED NEW",
        "NOT NOT NOT NOT NOT NOT NOT NOT SEEN",
        "((((((((SEEN))))))))",
        "NOT (OR NOT (NOT (SEEN)) ALL)",
        "MODSEQ 5",
        "MODSEQ 0",
        "MODSEQ \"/flags/\\\\Seen\" all 7",
        "MODSEQ \"/FLAGS/\\\\answered\" SHARED 7",
        "MODSEQ \"/flags/\\\\Recent\" Priv 7",
        "MODSEQ \"/flags/$MDNSent\" priv 1",
        "MODSEQ 18446744073709551615",
        "CHARSET UTF-8 ALL",
        "CHARSET \"US-ASCII\" SUBJECT x",
        "charset utf-8 SUBJECT \"é\" FROM b",
        "ALL SEEN UNSEEN 1:3 UID 4 (DRAFT) NOT 5",
        "DELETED FROM \"SMITH\" SINCE 1-Feb-1994",
        "FLAGGED SINCE 1-Feb-1994 NOT FROM \"Smith\"",
        "OR BODY {4+}\r\n(x)) TEXT \"(\"",
    ];

    /// Criteria imap-codec refuses; so must we.
    const REFUSED: &[&str] = &[
        "",
        " ",
        "()",
        "SEEN ",
        "SEEN  UNSEEN",
        "(SEEN",
        "SEEN)",
        "SEENX",
        "BEFORE 1-Feb-24",
        "BEFORE 001-Feb-2024",
        "BEFORE 31-Feb-2024",
        "BEFORE \"1-Feb-2024",
        "LARGER -1",
        "LARGER 4294967296",
        "UID 0",
        "UID 1:",
        "UID 1,",
        "0",
        "NOT",
        "NOT  SEEN",
        "OR SEEN",
        "UNKNOWN",
        "OLDER 5",
        "NOT NOT NOT NOT NOT NOT NOT NOT NOT SEEN",
        "(((((((((SEEN)))))))))",
        "SUBJECT {3}\r\na\0b",
        "SUBJECT \"a\\b\"",
        "SUBJECT \"a",
        "SUBJECT ~{1}\r\na",
        "SUBJECT x\u{7f}",
        "KEYWORD \\Seen",
        "KEYWORD a]",
        "HEADER X",
        "MODSEQ",
        "MODSEQ x",
        "MODSEQ 18446744073709551616",
        "MODSEQ \"/flags/\\\\Seen\" 7",
        "MODSEQ \"/flags/\\\\Seen\" none 7",
        "MODSEQ \"/flags/\" all 7",
        "MODSEQ \"/flag/Seen\" all 7",
        "CHARSET",
        "CHARSET UTF-8",
        "CHARSET \"é\" ALL",
    ];

    /// The whole search-key grammar against imap-codec's: every key, as
    /// SEARCH, UID SEARCH, SORT and THREAD criteria.
    #[test]
    fn every_key_reads_as_imap_codec_reads_it() {
        for criteria in CORPUS {
            let search = format!("x SEARCH {criteria}\r\n");
            assert!(codec(search.as_bytes()).is_some(), "not valid: {search:?}");
            same(search.as_bytes()).unwrap();
            for command in [
                format!("x UID SEARCH {criteria}\r\n"),
                format!("x SORT (REVERSE ARRIVAL cc) UTF-8 {criteria}\r\n"),
                format!("x uid sort (DISPLAYFROM) \"US-ASCII\" {criteria}\r\n"),
                format!("x THREAD REFERENCES UTF-8 {criteria}\r\n"),
                format!("x UID THREAD orderedsubject UTF-8 {criteria}\n"),
            ] {
                same(command.as_bytes()).unwrap();
            }
        }
        for criteria in REFUSED {
            let search = format!("x SEARCH {criteria}\r\n");
            assert!(codec(search.as_bytes()).is_none(), "valid: {search:?}");
            assert!(
                ours(search.as_bytes(), &Saved::default()).is_err(),
                "{search:?}"
            );
        }
        // A quoted string that is not UTF-8.
        same(b"x SEARCH SUBJECT \"\x80\"\r\n").unwrap();
        assert!(codec(b"x SEARCH SUBJECT \"\x80\"\r\n").is_none());
        for command in [
            "x SORT () UTF-8 ALL\r\n",
            "x SORT (REVERSE) UTF-8 ALL\r\n",
            "x SORT (SIZE) ALL\r\n",
            "x SORT SIZE UTF-8 ALL\r\n",
            "x THREAD REFERENCES ALL\r\n",
            "x SEARCH\r\n",
        ] {
            same(command.as_bytes()).unwrap();
            assert!(codec(command.as_bytes()).is_none(), "{command:?}");
        }
    }

    fn body(command: &str, saved: &Saved) -> (CommandBody<'static>, Ext) {
        ours(command.as_bytes(), saved).unwrap_or_else(|e| panic!("{command:?}: {e:?}"))
    }

    fn refused(command: &str) -> String {
        match ours(command.as_bytes(), &Saved::default()) {
            Err(Syntax(text)) => text,
            Ok(body) => panic!("{command:?} accepted: {body:?}"),
        }
    }

    #[test]
    fn return_options_are_typed_and_checked() {
        let (search, ext) = body(
            "a UID SEARCH RETURN (MIN COUNT) CHARSET UTF-8 UNSEEN\r\n",
            &Saved::default(),
        );
        assert_eq!(
            Some(search),
            codec(b"a UID SEARCH CHARSET UTF-8 UNSEEN\r\n")
        );
        let options = ext.search_return.unwrap();
        assert!(options.min && options.count && !options.max && !options.all && !options.save);
        let (_, ext) = body("a search return (save max all) 1:*\r\n", &Saved::default());
        let options = ext.search_return.unwrap();
        assert!(options.save && options.max && options.all && !options.min);
        // RFC 4731 §3.1: RETURN () means ALL.
        let (_, ext) = body("a SEARCH RETURN () ALL\r\n", &Saved::default());
        assert_eq!(
            ext.search_return,
            Some(SearchReturn {
                all: true,
                ..SearchReturn::default()
            })
        );
        // No RETURN: no ESEARCH.
        let (_, ext) = body("a SEARCH ALL\r\n", &Saved::default());
        assert!(ext.search_return.is_none());

        assert_eq!(
            refused("a SEARCH RETURN (BOGUS) ALL\r\n"),
            "Unknown SEARCH return option BOGUS"
        );
        assert_eq!(
            refused("a SEARCH RETURN MIN ALL\r\n"),
            "RETURN needs a list of options"
        );
        assert_eq!(
            refused("a SEARCH RETURN (MIN\r\n"),
            "Unbalanced RETURN options"
        );
        assert!(refused("a SEARCH RETURN (MIN)\r\n").contains("a space"));
        assert!(refused("a SEARCH RETURN (MIN) \r\n").contains("search key"));
        assert!(refused("a SEARCH RETURN (MIN (MAX)) ALL\r\n").contains("atom"));
        // CHARSET comes after RETURN (RFC 4466 §2.6).
        assert!(refused("a SEARCH CHARSET UTF-8 RETURN (MIN) ALL\r\n").contains("RETURN"));
    }

    /// ESORT (RFC 5267 §3.2): SORT with RETURN is SORT plus the options.
    #[test]
    fn esort_is_sort_with_return_options() {
        let (sort, ext) = body(
            "a UID SORT RETURN (MIN MAX) (REVERSE DATE SUBJECT) UTF-8 UNSEEN\r\n",
            &Saved::default(),
        );
        assert_eq!(
            Some(sort),
            codec(b"a UID SORT (REVERSE DATE SUBJECT) UTF-8 UNSEEN\r\n")
        );
        let options = ext.search_return.unwrap();
        assert!(options.min && options.max && !options.count && !options.all);
        let (_, ext) = body("a SORT RETURN () (DATE) UTF-8 ALL\r\n", &Saved::default());
        assert!(ext.search_return.unwrap().all);
        assert_eq!(
            refused("a SORT RETURN (PARTIAL 1:10) (DATE) UTF-8 ALL\r\n"),
            "Unknown SEARCH return option PARTIAL"
        );
        assert_eq!(
            refused("a SORT (DATE NAME) UTF-8 ALL\r\n"),
            "Unknown sort criterion NAME"
        );
        // THREAD has no RETURN.
        assert!(refused("a THREAD RETURN (ALL) REFERENCES UTF-8 ALL\r\n").contains("charset"));
    }

    /// SEARCHRES (RFC 5182 §2.1, §3): `$` is the saved UIDs, wherever a
    /// key or UID's set may stand, or no message when nothing is saved.
    #[test]
    fn the_saved_result_is_a_typed_key() {
        let some = saved("4:6,9");
        for (with_dollar, as_uids) in [
            ("a SEARCH $ SEEN\r\n", "a SEARCH UID 4:6,9 SEEN\r\n"),
            ("a UID SEARCH UID $\r\n", "a UID SEARCH UID 4:6,9\r\n"),
            (
                "a SEARCH OR $ (NOT $)\r\n",
                "a SEARCH OR UID 4:6,9 (NOT UID 4:6,9)\r\n",
            ),
            ("a SEARCH RETURN (SAVE) $\r\n", "a SEARCH UID 4:6,9\r\n"),
            (
                "a UID SORT RETURN (ALL) (DATE) UTF-8 $\r\n",
                "a UID SORT (DATE) UTF-8 UID 4:6,9\r\n",
            ),
            (
                "a THREAD REFERENCES UTF-8 UID $ SEEN\r\n",
                "a THREAD REFERENCES UTF-8 UID 4:6,9 SEEN\r\n",
            ),
        ] {
            assert_eq!(Some(body(with_dollar, &some).0), codec(as_uids.as_bytes()));
        }
        let none = Saved::default();
        for (with_dollar, as_none) in [
            ("a SEARCH $\r\n", "a SEARCH NOT ALL\r\n"),
            (
                "a UID SEARCH UID $ SEEN\r\n",
                "a UID SEARCH NOT ALL SEEN\r\n",
            ),
            (
                "a UID THREAD REFERENCES UTF-8 $\r\n",
                "a UID THREAD REFERENCES UTF-8 NOT ALL\r\n",
            ),
        ] {
            assert_eq!(Some(body(with_dollar, &none).0), codec(as_none.as_bytes()));
        }
        // `$` is a set of its own, not part of a set nor an atom's start.
        for wrong in [
            "a SEARCH $x\r\n",
            "a SEARCH 1,$\r\n",
            "a SEARCH $:4\r\n",
            "a SEARCH UID $,1\r\n",
        ] {
            assert!(ours(wrong.as_bytes(), &some).is_err(), "{wrong}");
        }
        // A literal's `$` is data.
        let (search, _) = body("a SEARCH SUBJECT {1}\r\n$\r\n", &some);
        assert_eq!(Some(search), codec(b"a SEARCH SUBJECT {1}\r\n$\r\n"));
    }

    /// Each `$` holds a copy of the saved set: many of them over a long
    /// set are refused before they take memory.
    #[test]
    fn copies_of_the_saved_result_are_bounded() {
        let long: Vec<String> = (0..2000).map(|i| (2 * i + 1).to_string()).collect();
        let long = saved(&long.join(","));
        let mut command = b"a SEARCH $".to_vec();
        for _ in 0..(MAX_SAVED_COPIES / 2000) {
            command.extend_from_slice(b" $");
        }
        command.extend_from_slice(b"\r\n");
        match ours(&command, &long) {
            Err(Syntax(text)) => assert!(text.contains("saved result"), "{text}"),
            Ok(_) => panic!("accepted"),
        }
        // Within the bound, every `$` is there.
        let (CommandBody::Search { criteria, .. }, _) = body("a SEARCH $ $ $\r\n", &long) else {
            panic!("a SEARCH")
        };
        assert_eq!(criteria.as_ref().len(), 3);
    }

    #[test]
    fn malformed_commands_say_what_was_expected() {
        assert_eq!(refused("a SEARCH FOO\r\n"), "Unknown search key FOO");
        assert_eq!(refused("a SEARCH\r\n"), "Syntax error: expected a space");
        assert_eq!(
            refused("a SEARCH SEEN)\r\n"),
            "Unexpected data after the command"
        );
        assert!(refused("a SEARCH (SEEN\r\n").contains("closing parenthesis"));
        assert!(refused("a SEARCH BEFORE yesterday\r\n").contains("date"));
        assert!(refused("a SEARCH LARGER big\r\n").contains("number"));
        assert!(refused("a SEARCH MODSEQ x\r\n").contains("mod-sequence"));
        assert!(refused("a SEARCH MODSEQ \"/x\" all 1\r\n").contains("entry name"));
        assert!(refused("a SORT DATE UTF-8 ALL\r\n").contains("sort criteria"));
        assert!(refused("a SEARCH CHARSET \"é\" ALL\r\n").contains("charset"));
        let long = format!("a SEARCH {}\r\n", "X".repeat(10_000));
        assert!(refused(&long).len() < 100, "the word is shortened");
    }

    /// Nesting stops where imap-codec's does; a flood of parentheses or
    /// NOTs is refused at once, not recursed into.
    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let nested = |open: &str, close: &str, n: usize| {
            format!("a SEARCH {}SEEN{}\r\n", open.repeat(n), close.repeat(n))
        };
        for (open, close) in [("(", ")"), ("NOT ", ""), ("OR SEEN ", "")] {
            let deepest = nested(open, close, MAX_NESTING);
            assert!(
                ours(deepest.as_bytes(), &Saved::default()).is_ok(),
                "{deepest}"
            );
            same(deepest.as_bytes()).unwrap();
            let deeper = nested(open, close, MAX_NESTING + 1);
            assert!(refused(&deeper).contains("nested too deeply"));
            same(deeper.as_bytes()).unwrap();
            let flood = nested(open, close, 1_000_000);
            let started = std::time::Instant::now();
            assert!(refused(&flood).contains("nested too deeply"));
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
        }
    }

    /// Many keys side by side are read in one pass.
    #[test]
    fn wide_criteria_are_linear() {
        let wide = format!(
            "a SEARCH {}ALL\r\n",
            "OR SEEN (UID 1:* NOT DRAFT) ".repeat(8)
        );
        same(wide.as_bytes()).unwrap();
        let many = format!(
            "a SEARCH {}ALL\r\n",
            "SUBJECT \"x\" (SEEN) ".repeat(100_000)
        );
        let started = std::time::Instant::now();
        let (CommandBody::Search { criteria, .. }, _) = body(&many, &Saved::default()) else {
            panic!("a SEARCH")
        };
        assert_eq!(criteria.as_ref().len(), 200_001);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    fn string_arg() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9$_.@-]{1,6}",
            "[ -!#-\\[\\]-~]{0,6}".prop_map(|s| format!("\"{s}\"")),
            "[a\"\\\\ ]{0,4}"
                .prop_map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))),
            "[a-zé日\u{1F600}]{1,4}".prop_map(|s| format!("\"{s}\"")),
            ("[a-z \r\n()\"\u{0}]{0,5}", any::<bool>()).prop_map(|(s, plus)| format!(
                "{{{}{}}}\r\n{s}",
                s.len(),
                if plus { "+" } else { "" }
            )),
        ]
    }

    fn date() -> impl Strategy<Value = String> {
        (
            0u32..40,
            prop::sample::select(vec!["Jan", "feb", "MAR", "Apr", "xyz"]),
            prop::sample::select(vec!["2024", "1999", "0000", "99", "20240"]),
            any::<bool>(),
        )
            .prop_map(|(d, m, y, q)| {
                let date = format!("{d}-{m}-{y}");
                if q { format!("\"{date}\"") } else { date }
            })
    }

    fn set() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                "[0-9]{1,3}",
                Just("*".to_owned()),
                "[0-9*]{1,2}:[0-9*]{1,2}"
            ],
            1..4,
        )
        .prop_map(|parts| parts.join(","))
    }

    fn key() -> impl Strategy<Value = String> {
        let flag_keys = vec![
            "ALL",
            "ANSWERED",
            "DELETED",
            "DRAFT",
            "FLAGGED",
            "NEW",
            "OLD",
            "RECENT",
            "SEEN",
            "UNANSWERED",
            "UNDELETED",
            "UNDRAFT",
            "UNFLAGGED",
            "UNSEEN",
        ];
        let leaf = prop_oneof![
            prop::sample::select(flag_keys).prop_map(String::from),
            (
                prop::sample::select(vec!["BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"]),
                string_arg()
            )
                .prop_map(|(k, v)| format!("{k} {v}")),
            (
                prop::sample::select(vec![
                    "BEFORE",
                    "ON",
                    "SINCE",
                    "SENTBEFORE",
                    "SENTON",
                    "SENTSINCE"
                ]),
                date()
            )
                .prop_map(|(k, v)| format!("{k} {v}")),
            (
                prop::sample::select(vec!["KEYWORD", "UNKEYWORD"]),
                "[a-z$\\\\]{1,5}"
            )
                .prop_map(|(k, v)| format!("{k} {v}")),
            (string_arg(), string_arg()).prop_map(|(n, v)| format!("HEADER {n} {v}")),
            (
                prop::sample::select(vec!["LARGER", "SMALLER"]),
                "[0-9]{1,11}"
            )
                .prop_map(|(k, v)| format!("{k} {v}")),
            set().prop_map(|s| format!("UID {s}")),
            set(),
            (
                prop::option::of((
                    prop_oneof![
                        "\\\\\\\\[A-Za-z]{1,7}".prop_map(String::from),
                        "[$a-z]{0,4}"
                    ],
                    prop::sample::select(vec!["priv", "SHARED", "all", "none"])
                )),
                "[0-9]{1,21}"
            )
                .prop_map(|(entry, n)| match entry {
                    Some((flag, kind)) => format!("MODSEQ \"/flags/{flag}\" {kind} {n}"),
                    None => format!("MODSEQ {n}"),
                }),
            // Junk; no `$`, which only this module reads.
            "[ ()\"{}\\\\*0-9A-Za-z:,]{0,12}",
        ];
        leaf.prop_recursive(10, 48, 4, |inner| {
            prop_oneof![
                inner.clone().prop_map(|k| format!("NOT {k}")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("OR {a} {b}")),
                prop::collection::vec(inner, 1..4).prop_map(|v| format!("({})", v.join(" "))),
            ]
        })
    }

    /// Flips the case of the ASCII letters whose bit in `mask` is set.
    fn recase(text: &str, mask: u64) -> String {
        text.chars()
            .enumerate()
            .map(|(i, c)| {
                if mask >> (i % 64) & 1 == 1 {
                    if c.is_ascii_lowercase() {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    }
                } else {
                    c
                }
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Generated criteria read alike by both parsers: the same value
        /// when imap-codec accepts, a refusal when it refuses.
        #[test]
        fn generated_criteria_read_as_imap_codec_reads_them(
            keys in prop::collection::vec(key(), 1..4),
            charset in prop::option::of(prop::sample::select(vec!["UTF-8", "\"US-ASCII\"", "\"é\""])),
            mask in any::<u64>(),
            uid in any::<bool>(),
        ) {
            let charset = charset.map(|c| format!("CHARSET {c} ")).unwrap_or_default();
            let criteria = recase(&format!("{charset}{}", keys.join(" ")), mask);
            let uid = if uid { "UID " } else { "" };
            let command = format!("x {uid}SEARCH {criteria}\r\n");
            prop_assert_eq!(same(command.as_bytes()), Ok(()));
        }

        /// Arbitrary bytes after each command's start: never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(
            start in prop::sample::select(vec![
                "x SEARCH ", "x UID SEARCH RETURN (", "x SEARCH RETURN (ALL) ",
                "x SORT (", "x UID SORT RETURN (MIN) (DATE) UTF-8 ",
                "x THREAD REFERENCES UTF-8 ", "x SEARCH MODSEQ \"/flags/",
                "x SEARCH CHARSET ", "x SEARCH OR (NOT ",
            ]),
            body in prop::collection::vec(any::<u8>(), 0..64),
            saved_uids in prop::sample::select(vec!["", "1:3,7", "5"]),
        ) {
            let mut command = start.as_bytes().to_vec();
            command.extend_from_slice(&body);
            command.extend_from_slice(b"\r\n");
            let saved = saved(saved_uids);
            if let Some(head) = super::super::head(&command) {
                let _ = parse(head, &saved);
            }
        }
    }
}
