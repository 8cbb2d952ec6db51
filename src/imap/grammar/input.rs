//! A cursor over one complete command (literal data included, as the
//! framer delivers it), with the lexical rules of RFC 9051 §9 that the
//! extension grammars in [`super`] are written with. Every method either
//! consumes what it names and returns its value, or leaves the position
//! unchanged and returns a [`Syntax`] error naming what was expected; so
//! an alternative can be tried after a failed one (`attempt`). Work is
//! linear in the bytes read; values borrow from the command.

use std::num::NonZeroU32;

use bounded_static::IntoBoundedStatic;
use imap_codec::imap_types::core::{
    AString, Atom, AtomExt, IString, Literal, LiteralMode, Quoted, Vec1,
};
use imap_codec::imap_types::datetime::{DateTime, NaiveDate};
use imap_codec::imap_types::extensions::binary::{Literal8, LiteralOrLiteral8};
use imap_codec::imap_types::extensions::utf8::QuotedUtf8;
use imap_codec::imap_types::flag::Flag;
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

/// What a command's grammar expected where it failed: the text of the
/// `BAD` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Syntax(pub String);

impl Syntax {
    pub fn expected(what: &str) -> Syntax {
        Syntax(format!("Syntax error: expected {what}"))
    }
}

pub type Parsed<T> = Result<T, Syntax>;

/// The bytes of a string argument and how they were sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Text<'a> {
    Atom(&'a [u8]),
    /// A quoted string, still escaped (`\\` and `\"`).
    Quoted(&'a [u8]),
    Literal(&'a [u8]),
    /// A literal8 (`~{n}`, RFC 3516 §4.1 and RFC 6855 §4).
    Literal8(&'a [u8]),
}

impl Text<'_> {
    /// The value, unescaped.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Text::Quoted(raw) => {
                let mut out = Vec::with_capacity(raw.len());
                let mut escaped = false;
                for b in *raw {
                    if !escaped && *b == b'\\' {
                        escaped = true;
                        continue;
                    }
                    escaped = false;
                    out.push(*b);
                }
                out
            }
            Text::Atom(v) | Text::Literal(v) | Text::Literal8(v) => v.to_vec(),
        }
    }
}

/// The cursor; see the module documentation.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// `atom-specials` (RFC 9051 §9) and CTL end an atom; `]` is allowed in an
/// astring's atom (`ASTRING-CHAR`) but not in an atom.
fn atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

fn astring_char(b: u8) -> bool {
    atom_char(b) || b == b']'
}

/// `list-char` (RFC 9051 §9): an atom character or a wildcard or `]`.
fn list_char(b: u8) -> bool {
    astring_char(b) || b == b'%' || b == b'*'
}

const MONTHS: [&[u8]; 12] = [
    b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN", b"JUL", b"AUG", b"SEP", b"OCT", b"NOV", b"DEC",
];

impl<'a> Input<'a> {
    /// A cursor at the start of `bytes`, one complete command ending in
    /// CRLF (or a bare LF, as imap-codec's `quirk_crlf_relaxed` accepts).
    pub fn new(bytes: &'a [u8]) -> Input<'a> {
        Input { bytes, at: 0 }
    }

    /// Where the cursor is, in bytes from the start.
    pub fn position(&self) -> usize {
        self.at
    }

    fn rest(&self) -> &'a [u8] {
        &self.bytes[self.at..]
    }

    /// The next byte, not consumed.
    pub fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// Runs `parse`; on failure the cursor is back where it was.
    pub fn attempt<T>(&mut self, parse: impl FnOnce(&mut Self) -> Parsed<T>) -> Parsed<T> {
        let start = self.at;
        let result = parse(self);
        if result.is_err() {
            self.at = start;
        }
        result
    }

    /// Consumes `b` if it is next.
    pub fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// One byte that must be `b`.
    pub fn byte(&mut self, b: u8, what: &str) -> Parsed<()> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(Syntax::expected(what))
        }
    }

    /// One space (`SP`).
    pub fn sp(&mut self) -> Parsed<()> {
        self.byte(b' ', "a space")
    }

    /// The end of the command: CRLF (or LF) and nothing after.
    pub fn end(&mut self) -> Parsed<()> {
        match self.rest() {
            b"\r\n" | b"\n" => {
                self.at = self.bytes.len();
                Ok(())
            }
            _ => Err(Syntax("Unexpected data after the command".into())),
        }
    }

    /// Whether the command ends here (before its CRLF).
    pub fn at_end(&self) -> bool {
        matches!(self.rest(), b"\r\n" | b"\n" | b"")
    }

    /// `word` in any case, as a whole atom (not the start of a longer one).
    pub fn keyword(&mut self, word: &str) -> bool {
        let rest = self.rest();
        let n = word.len();
        if rest.len() >= n
            && rest[..n].eq_ignore_ascii_case(word.as_bytes())
            && !rest.get(n).copied().is_some_and(atom_char)
        {
            self.at += n;
            true
        } else {
            false
        }
    }

    /// `word` in any case, as a whole atom, or an error.
    pub fn expect(&mut self, word: &str) -> Parsed<()> {
        if self.keyword(word) {
            Ok(())
        } else {
            Err(Syntax::expected(word))
        }
    }

    /// `atom`: 1*ATOM-CHAR.
    pub fn atom(&mut self) -> Parsed<&'a [u8]> {
        self.take_while(atom_char, "an atom")
    }

    /// `tag`: 1*ASTRING-CHAR but `+`.
    pub fn tag(&mut self) -> Parsed<&'a [u8]> {
        self.take_while(|b| astring_char(b) && b != b'+', "a tag")
    }

    /// An atom, as an [`Atom`].
    pub fn atom_value(&mut self) -> Parsed<Atom<'static>> {
        let start = self.at;
        let raw = self.atom()?;
        Atom::try_from(raw.to_vec()).map_err(|_| {
            self.at = start;
            Syntax::expected("an atom")
        })
    }

    fn take_while(&mut self, ok: impl Fn(u8) -> bool, what: &str) -> Parsed<&'a [u8]> {
        let rest = self.rest();
        let n = rest.iter().take_while(|b| ok(**b)).count();
        if n == 0 {
            return Err(Syntax::expected(what));
        }
        self.at += n;
        Ok(&rest[..n])
    }

    /// `number`: an unsigned 32-bit decimal (RFC 9051 §9).
    pub fn number(&mut self) -> Parsed<u32> {
        let start = self.at;
        let digits = self.take_while(|b| b.is_ascii_digit(), "a number")?;
        std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                self.at = start;
                Syntax::expected("a number below 2^32")
            })
    }

    /// `number64` (RFC 9051 §9, mod-sequences of RFC 7162).
    pub fn number64(&mut self) -> Parsed<u64> {
        let start = self.at;
        let digits = self.take_while(|b| b.is_ascii_digit(), "a number")?;
        std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|n| *n <= i64::MAX as u64)
            .ok_or_else(|| {
                self.at = start;
                Syntax::expected("a number below 2^63")
            })
    }

    /// `nz-number`.
    pub fn nz_number(&mut self) -> Parsed<NonZeroU32> {
        let start = self.at;
        let n = self.number()?;
        NonZeroU32::new(n).ok_or_else(|| {
            self.at = start;
            Syntax::expected("a number above zero")
        })
    }

    /// `quoted` (RFC 9051 §9, with RFC 6855's UTF-8): the raw, still
    /// escaped bytes between the quotes.
    pub fn quoted(&mut self) -> Parsed<&'a [u8]> {
        let rest = self.rest();
        if rest.first() != Some(&b'"') {
            return Err(Syntax::expected("a quoted string"));
        }
        let mut i = 1;
        loop {
            match rest.get(i) {
                Some(b'"') => break,
                Some(b'\\') if matches!(rest.get(i + 1), Some(b'"' | b'\\')) => i += 2,
                Some(b'\r' | b'\n' | b'\\' | 0) | None => {
                    return Err(Syntax::expected("a well-formed quoted string"));
                }
                Some(_) => i += 1,
            }
        }
        self.at += i + 1;
        Ok(&rest[1..i])
    }

    /// `literal` or `literal8`: `{n}`, `{n+}` (RFC 7888), `~{n}`, then
    /// CRLF and n bytes. The framer has already read the data.
    pub fn literal(&mut self) -> Parsed<Text<'a>> {
        self.literal_with_mode().map(|(text, _)| text)
    }

    /// A literal or literal8 and whether it was synchronizing.
    fn literal_with_mode(&mut self) -> Parsed<(Text<'a>, LiteralMode)> {
        let rest = self.rest();
        let eight = rest.first() == Some(&b'~');
        let open = usize::from(eight);
        if rest.get(open) != Some(&b'{') {
            return Err(Syntax::expected("a literal"));
        }
        let Some(close) = rest.iter().position(|b| *b == b'}') else {
            return Err(Syntax::expected("a literal"));
        };
        let inner = &rest[open + 1..close];
        let digits = inner.strip_suffix(b"+").unwrap_or(inner);
        let length: Option<usize> =
            (!digits.is_empty() && digits.len() <= 10 && digits.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(digits).ok()?.parse().ok())
                .flatten();
        let Some(length) = length else {
            return Err(Syntax::expected("a literal length"));
        };
        let after = &rest[close + 1..];
        let crlf = if after.starts_with(b"\r\n") {
            2
        } else if after.starts_with(b"\n") {
            1
        } else {
            return Err(Syntax::expected("a line break after the literal's length"));
        };
        let start = close + 1 + crlf;
        let Some(data) = rest.get(start..start + length) else {
            return Err(Syntax::expected("the literal's data"));
        };
        self.at += start + length;
        let mode = if inner.ends_with(b"+") {
            LiteralMode::NonSync
        } else {
            LiteralMode::Sync
        };
        let text = if eight {
            Text::Literal8(data)
        } else {
            Text::Literal(data)
        };
        Ok((text, mode))
    }

    /// A literal or literal8 as imap-codec types it (APPEND's data, RFC
    /// 3516 §4.1); a literal may not hold NUL.
    pub fn literal_value(&mut self) -> Parsed<LiteralOrLiteral8<'static>> {
        let start = self.at;
        let (text, mode) = self.literal_with_mode()?;
        match text {
            Text::Literal8(data) => Ok(LiteralOrLiteral8::Literal8(Literal8 {
                data: data.to_vec().into(),
                mode,
            })),
            _ => {
                let mut literal = Literal::try_from(text.bytes()).map_err(|_| {
                    self.at = start;
                    Syntax::expected("a literal without NUL (or a literal8)")
                })?;
                literal.set_mode(mode);
                Ok(LiteralOrLiteral8::Literal(literal))
            }
        }
    }

    /// `string` as imap-codec types it: a quoted string (UTF-8 allowed,
    /// RFC 6855 §3) or a literal, as it was sent.
    pub fn string_value(&mut self) -> Parsed<IString<'static>> {
        let start = self.at;
        let value = if self.peek() == Some(b'"') {
            let raw = Text::Quoted(self.quoted()?).bytes();
            if raw.is_ascii() {
                String::from_utf8(raw)
                    .ok()
                    .and_then(|s| Quoted::try_from(s).ok())
                    .map(IString::Quoted)
            } else {
                String::from_utf8(raw)
                    .ok()
                    .and_then(|s| QuotedUtf8::try_from(s).ok())
                    .map(IString::QuotedUtf8)
            }
        } else {
            match self.literal_value()? {
                LiteralOrLiteral8::Literal(literal) => Some(IString::Literal(literal)),
                LiteralOrLiteral8::Literal8(_) => None,
            }
        };
        value.ok_or_else(|| {
            self.at = start;
            Syntax::expected("a string of UTF-8 text or a literal")
        })
    }

    /// `astring` as imap-codec types it (an atom or a string, as sent).
    pub fn astring_value(&mut self) -> Parsed<AString<'static>> {
        match self.peek() {
            Some(b'"' | b'{') => self.string_value().map(AString::String),
            _ => {
                let start = self.at;
                let raw = self.take_while(astring_char, "a string")?;
                AtomExt::try_from(raw.to_vec())
                    .map(AString::Atom)
                    .map_err(|_| {
                        self.at = start;
                        Syntax::expected("a string")
                    })
            }
        }
    }

    /// `string`: quoted or literal (not literal8).
    pub fn string(&mut self) -> Parsed<Text<'a>> {
        if self.peek() == Some(b'"') {
            return self.quoted().map(Text::Quoted);
        }
        match self.attempt(Self::literal)? {
            Text::Literal8(_) => Err(Syntax::expected("a string, not a literal8")),
            text => Ok(text),
        }
    }

    /// `astring`: 1*ASTRING-CHAR or a string.
    pub fn astring(&mut self) -> Parsed<Text<'a>> {
        match self.peek() {
            Some(b'"' | b'{') => self.string(),
            _ => self.take_while(astring_char, "a string").map(Text::Atom),
        }
    }

    /// `mailbox`: `INBOX` in any case, or an astring (RFC 9051 §9).
    /// The name keeps the form it was sent in, as imap-codec's does.
    pub fn mailbox(&mut self) -> Parsed<Mailbox<'static>> {
        self.astring_value().map(Mailbox::from)
    }

    /// `list-mailbox`: 1*list-char or a string.
    pub fn list_mailbox(&mut self) -> Parsed<Vec<u8>> {
        match self.peek() {
            Some(b'"' | b'{') => self.string().map(|t| t.bytes()),
            _ => self
                .take_while(list_char, "a mailbox pattern")
                .map(<[u8]>::to_vec),
        }
    }

    /// `sequence-set`, or `$` (RFC 5182 §3) as [`Messages::Saved`].
    pub fn sequence_set(&mut self) -> Parsed<Messages> {
        if self.peek() == Some(b'$') && !self.rest().get(1).copied().is_some_and(atom_char) {
            self.at += 1;
            return Ok(Messages::Saved);
        }
        let start = self.at;
        let mut sequences = Vec::new();
        loop {
            let from = self.seq_number().inspect_err(|_| self.at = start)?;
            if self.eat(b':') {
                let to = self.seq_number().inspect_err(|_| self.at = start)?;
                sequences.push(Sequence::Range(from, to));
            } else {
                sequences.push(Sequence::Single(from));
            }
            if !self.eat(b',') {
                break;
            }
        }
        let set = Vec1::try_from(sequences).map_err(|_| Syntax::expected("a sequence set"))?;
        Ok(Messages::Set(SequenceSet(set)))
    }

    /// `seq-number`: nz-number or `*`.
    fn seq_number(&mut self) -> Parsed<SeqOrUid> {
        if self.eat(b'*') {
            Ok(SeqOrUid::Asterisk)
        } else {
            self.nz_number().map(SeqOrUid::Value)
        }
    }

    /// `flag` (RFC 9051 §9): a system flag, `\` atom, or a keyword.
    pub fn flag(&mut self) -> Parsed<Flag<'static>> {
        let start = self.at;
        let system = self.eat(b'\\');
        let atom = self.atom().inspect_err(|_| self.at = start)?;
        let mut text = Vec::with_capacity(atom.len() + 1);
        if system {
            text.push(b'\\');
        }
        text.extend_from_slice(atom);
        let flag = std::str::from_utf8(&text)
            .ok()
            .and_then(|t| Flag::try_from(t).ok())
            .map(IntoBoundedStatic::into_static);
        flag.ok_or_else(|| {
            self.at = start;
            Syntax::expected("a flag")
        })
    }

    /// `flag-list`: `(` [flag *(SP flag)] `)`.
    pub fn flag_list(&mut self) -> Parsed<Vec<Flag<'static>>> {
        self.attempt(|input| {
            input.byte(b'(', "a flag list")?;
            let mut flags = Vec::new();
            if !input.eat(b')') {
                loop {
                    flags.push(input.flag()?);
                    if input.eat(b')') {
                        break;
                    }
                    input.sp()?;
                }
            }
            Ok(flags)
        })
    }

    /// `date` (RFC 9051 §9): date-text, or date-text in quotes.
    pub fn date(&mut self) -> Parsed<NaiveDate> {
        self.attempt(|input| {
            let quoted = input.eat(b'"');
            // date-day = 1*2DIGIT, date-year = 4DIGIT.
            let day = input.digits(1, 2, "a date such as 1-Feb-2024")?;
            input.byte(b'-', "a date such as 1-Feb-2024")?;
            let month = input.month()?;
            input.byte(b'-', "a date such as 1-Feb-2024")?;
            let year = input.digits(4, 4, "a date such as 1-Feb-2024")?;
            if quoted {
                input.byte(b'"', "the closing quote of the date")?;
            }
            chrono::NaiveDate::from_ymd_opt(year as i32, month, day)
                .and_then(|d| NaiveDate::try_from(d).ok())
                .ok_or_else(|| Syntax::expected("a valid date"))
        })
    }

    /// `min` to `max` digits (at most `max` are read), as a number.
    fn digits(&mut self, min: usize, max: usize, what: &str) -> Parsed<u32> {
        let rest = self.rest();
        let n = rest
            .iter()
            .take(max)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if n < min {
            return Err(Syntax::expected(what));
        }
        let value = rest[..n]
            .iter()
            .fold(0, |v, d| v * 10 + u32::from(d - b'0'));
        self.at += n;
        Ok(value)
    }

    fn month(&mut self) -> Parsed<u32> {
        let rest = self.rest();
        let name = rest.get(..3).ok_or_else(|| Syntax::expected("a month"))?;
        let month = MONTHS
            .iter()
            .position(|m| name.eq_ignore_ascii_case(m))
            .ok_or_else(|| Syntax::expected("a month such as Feb"))?;
        self.at += 3;
        Ok(month as u32 + 1)
    }

    /// `date-time` (RFC 9051 §9): `"dd-Mon-yyyy hh:mm:ss +zzzz"`, the day
    /// possibly space-padded.
    pub fn date_time(&mut self) -> Parsed<DateTime> {
        self.attempt(|input| {
            input.byte(b'"', "a date-time")?;
            // `date-day-fixed = (SP DIGIT) / 2DIGIT`, `date-year = 4DIGIT`,
            // `time = 2DIGIT ":" 2DIGIT ":" 2DIGIT` (RFC 9051 §9).
            let what = "a date-time such as \"01-Feb-2024 10:00:00 +0100\"";
            let day = if input.eat(b' ') {
                input.digits(1, 1, what)?
            } else {
                input.digits(2, 2, what)?
            };
            input.byte(b'-', what)?;
            let month = input.month()?;
            input.byte(b'-', what)?;
            let year = input.digits(4, 4, what)?;
            input.sp()?;
            let hour = input.digits(2, 2, what)?;
            input.byte(b':', what)?;
            let minute = input.digits(2, 2, what)?;
            input.byte(b':', what)?;
            let second = input.digits(2, 2, what)?;
            input.sp()?;
            let sign = match input.peek() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return Err(Syntax::expected("a time zone such as +0100")),
            };
            input.at += 1;
            let zone = input
                .rest()
                .get(..4)
                .ok_or_else(|| Syntax::expected("a zone"))?;
            if !zone.iter().all(u8::is_ascii_digit) {
                return Err(Syntax::expected("a time zone such as +0100"));
            }
            input.at += 4;
            input.byte(b'"', "the closing quote of the date-time")?;
            let zone: i32 = std::str::from_utf8(zone)
                .unwrap_or("0")
                .parse()
                .unwrap_or(0);
            let offset = sign * ((zone / 100) * 3600 + (zone % 100) * 60);
            let offset = chrono::FixedOffset::east_opt(offset)
                .ok_or_else(|| Syntax::expected("a valid time zone"))?;
            let date = chrono::NaiveDate::from_ymd_opt(year as i32, month, day)
                .and_then(|d| d.and_hms_opt(hour, minute, second))
                .and_then(|t| t.and_local_timezone(offset).single())
                .ok_or_else(|| Syntax::expected("a valid date-time"))?;
            DateTime::try_from(date).map_err(|_| Syntax::expected("a valid date-time"))
        })
    }
}

/// A command's message set: a sequence set, or `$`, the saved search
/// result (RFC 5182 §2), resolved by the caller against its [`Saved`].
///
/// [`Saved`]: crate::imap::state::Saved
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Messages {
    Set(SequenceSet),
    Saved,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_of_every_kind() {
        let mut input =
            Input::new(b"abc \"a\\\"b\" {3}\r\nx y ~{2}\r\n\x00\n \"Caf\xc3\xa9\" Caf\xc3\xa9\r\n");
        assert_eq!(input.astring().unwrap(), Text::Atom(b"abc"));
        input.sp().unwrap();
        assert_eq!(input.astring().unwrap().bytes(), b"a\"b");
        input.sp().unwrap();
        assert_eq!(input.astring().unwrap(), Text::Literal(b"x y"));
        input.sp().unwrap();
        assert_eq!(input.literal().unwrap(), Text::Literal8(b"\x00\n"));
        input.sp().unwrap();
        assert_eq!(input.astring().unwrap().bytes(), "Café".as_bytes());
        input.sp().unwrap();
        // UTF-8 is allowed in quoted strings (RFC 6855 §3), not in atoms.
        assert_eq!(input.astring().unwrap(), Text::Atom(b"Caf"));
        assert!(input.end().is_err());
    }

    #[test]
    fn a_failed_alternative_leaves_the_cursor_in_place() {
        let mut input = Input::new(b"12a\r\n");
        assert!(
            input
                .attempt(|i| {
                    i.number()?;
                    i.sp()
                })
                .is_err()
        );
        assert_eq!(input.position(), 0);
        assert!(input.keyword("12a"));
    }

    #[test]
    fn keywords_match_whole_atoms_only() {
        let mut input = Input::new(b"RETURNS\r\n");
        assert!(!input.keyword("return"));
        assert!(input.keyword("returns"));
    }

    #[test]
    fn sequence_sets_and_the_saved_result() {
        let mut input = Input::new(b"$ 1:*,4 $x\r\n");
        assert_eq!(input.sequence_set().unwrap(), Messages::Saved);
        input.sp().unwrap();
        let Messages::Set(set) = input.sequence_set().unwrap() else {
            panic!("a set")
        };
        assert_eq!(set.0.as_ref().len(), 2);
        input.sp().unwrap();
        assert!(input.sequence_set().is_err());
        assert_eq!(input.position(), 8);
    }

    #[test]
    fn numbers_are_bounded() {
        assert!(Input::new(b"4294967296").number().is_err());
        assert_eq!(Input::new(b"4294967295").number().unwrap(), u32::MAX);
        assert!(Input::new(b"0").nz_number().is_err());
        assert!(Input::new(b"9223372036854775808").number64().is_err());
    }

    #[test]
    fn dates_and_date_times() {
        let date = Input::new(b"1-Feb-2024").date().unwrap();
        assert_eq!(date.as_ref().to_string(), "2024-02-01");
        assert!(Input::new(b"31-Feb-2024").date().is_err());
        let dt = Input::new(b"\" 7-Jul-2023 12:30:00 -0230\"")
            .date_time()
            .unwrap();
        // 15:00 UTC.
        assert_eq!(dt.as_ref().timestamp(), 1_688_742_000);
    }

    #[test]
    fn date_times_take_the_digits_the_grammar_gives() {
        for bad in [
            "\"0007-Jul-2023 12:30:00 +0000\"",
            "\"7-Jul-2023 12:30:00 +0000\"",
            "\"07-Jul-02023 12:30:00 +0000\"",
            "\"07-Jul-2023 1:30:00 +0000\"",
            "\"07-Jul-2023 12:30:000 +0000\"",
        ] {
            assert!(Input::new(bad.as_bytes()).date_time().is_err(), "{bad}");
        }
        for good in [
            "\"07-Jul-2023 12:30:00 +0000\"",
            "\" 7-Jul-2023 12:30:00 +0000\"",
        ] {
            assert!(Input::new(good.as_bytes()).date_time().is_ok(), "{good}");
        }
    }

    #[test]
    fn quoted_strings_refuse_bare_backslashes_and_line_breaks() {
        assert!(Input::new(b"\"a\\b\"").quoted().is_err());
        assert!(Input::new(b"\"a\rb\"").quoted().is_err());
        assert!(Input::new(b"\"abc").quoted().is_err());
    }
}
