//! The grammar of the extensions `imap-codec` 2.0.0-alpha.10 does not
//! parse yet. A command that uses one is rewritten into its base form,
//! which imap-codec then parses, and what was removed comes back as an
//! [`Ext`]. Rewriting works on tokens (atoms, quoted strings, literals,
//! parentheses), so literal data is never mistaken for syntax.
//!
//! - SEARCHRES (RFC 5182 §3): `seq-number / seq-range / "$"` — `$` is the
//!   saved result, replaced by the set it stands for. (SEARCH, SORT and
//!   THREAD are parsed by [`super::grammar`].)
//! - LIST-EXTENDED (RFC 5258 §6): `list = "LIST" [SP list-select-opts] SP
//!   mailbox SP mbox-or-pat [SP list-return-opts]`, `mbox-or-pat =
//!   list-mailbox / patterns`, `patterns = "(" list-mailbox *(SP
//!   list-mailbox) ")"`; LIST-STATUS (RFC 5819 §5) `return-option =/
//!   "STATUS" SP "(" status-att *(SP status-att) ")"`.
//! - CREATE-SPECIAL-USE (RFC 6154 §6): `create-param =/ "USE" SP "("
//!   [use-attr *(SP use-attr)] ")"`.
//! - APPENDLIMIT (RFC 7889 §4): `status-att =/ "APPENDLIMIT"`.

use super::grammar::ext::{Ext, ListExt};
use super::state::Saved;
use crate::mailbox::list::SpecialUse;
use imap_codec::imap_types::status::StatusDataItemName;
/// Outcome of [`rewrite`].
#[derive(Debug)]
pub enum Rewritten {
    /// Parse the command as it is.
    Unchanged,
    /// Parse these bytes instead, with this extra meaning.
    Changed(Vec<u8>, Ext),
    /// The extension syntax is wrong: `BAD` with this text.
    Bad(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Atom,
    Quoted,
    Literal,
    Open,
    Close,
}

#[derive(Clone, Copy, Debug)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

/// Most tokens a command may have for a rewrite: far more than any client
/// sends (a SEARCH of a thousand keys has a few thousand), and a bound on
/// the memory tokens take (24 bytes each) whatever the command's size.
pub const MAX_TOKENS: usize = 100_000;

/// Splits a complete command (its literals included) into its first
/// `max` tokens; `None` if it is not well formed at this level. Linear in
/// the bytes scanned; stops after `max` tokens.
fn tokenize(message: &[u8], max: usize) -> Option<Vec<Token>> {
    let body = message
        .strip_suffix(b"\r\n")
        .or_else(|| message.strip_suffix(b"\n"))?;
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < body.len() && tokens.len() < max {
        match body[i] {
            b' ' => i += 1,
            b'(' => {
                tokens.push(Token {
                    kind: Kind::Open,
                    start: i,
                    end: i + 1,
                });
                i += 1;
            }
            b')' => {
                tokens.push(Token {
                    kind: Kind::Close,
                    start: i,
                    end: i + 1,
                });
                i += 1;
            }
            b'"' => {
                let start = i;
                i += 1;
                loop {
                    match body.get(i)? {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
                tokens.push(Token {
                    kind: Kind::Quoted,
                    start,
                    end: i,
                });
            }
            b'{' | b'~' if literal_header(&body[i..]).is_some() => {
                let (header_len, length) = literal_header(&body[i..])?;
                let start = i;
                i += header_len + length;
                if i > body.len() {
                    return None;
                }
                tokens.push(Token {
                    kind: Kind::Literal,
                    start,
                    end: i,
                });
            }
            _ => {
                let start = i;
                while i < body.len() && !matches!(body[i], b' ' | b'(' | b')' | b'"') {
                    // A `[` opens a section whose spaces and parentheses
                    // belong to the atom (`BODY[HEADER.FIELDS (A B)]`).
                    if body[i] == b'[' {
                        while i < body.len() && body[i] != b']' {
                            i += 1;
                        }
                    }
                    i += 1;
                }
                tokens.push(Token {
                    kind: Kind::Atom,
                    start,
                    end: i.min(body.len()),
                });
            }
        }
    }
    Some(tokens)
}

/// `{n}\r\n`, `{n+}\r\n`, `~{n}\r\n`: (header length, data length).
fn literal_header(s: &[u8]) -> Option<(usize, usize)> {
    let s_start = usize::from(s.first() == Some(&b'~'));
    let rest = &s[s_start..];
    if rest.first() != Some(&b'{') {
        return None;
    }
    let close = rest.iter().position(|b| *b == b'}')?;
    let inner = &rest[1..close];
    let digits = inner.strip_suffix(b"+").unwrap_or(inner);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || digits.len() > 10 {
        return None;
    }
    let length: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let after = &rest[close + 1..];
    let crlf = if after.starts_with(b"\r\n") {
        2
    } else if after.starts_with(b"\n") {
        1
    } else {
        return None;
    };
    Some((s_start + close + 1 + crlf, length))
}

fn text<'a>(message: &'a [u8], t: &Token) -> &'a [u8] {
    &message[t.start..t.end]
}

fn is_atom(message: &[u8], t: &Token, word: &str) -> bool {
    t.kind == Kind::Atom && text(message, t).eq_ignore_ascii_case(word.as_bytes())
}

/// The value of a string token: an atom as is, a quoted string
/// unescaped, a literal's data.
fn value(message: &[u8], t: &Token) -> Vec<u8> {
    let raw = text(message, t);
    match t.kind {
        Kind::Quoted => {
            let inner = &raw[1..raw.len() - 1];
            let mut out = Vec::with_capacity(inner.len());
            let mut escaped = false;
            for b in inner {
                if !escaped && *b == b'\\' {
                    escaped = true;
                    continue;
                }
                escaped = false;
                out.push(*b);
            }
            out
        }
        Kind::Literal => {
            let (header, _) = literal_header(raw).unwrap_or((0, 0));
            raw[header..].to_vec()
        }
        _ => raw.to_vec(),
    }
}

/// Index of the parenthesis closing the one at `open`.
fn closing(tokens: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t.kind {
            Kind::Open => depth += 1,
            Kind::Close => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Rewrites a command that uses extension syntax into its base form.
/// Only the commands below are split into tokens, at most [`MAX_TOKENS`]
/// of them: the work and memory stay a small multiple of the command's
/// size, and bounded.
pub fn rewrite(message: &[u8], _saved: &Saved) -> Rewritten {
    // The tag, `UID` perhaps, and the command name.
    let Some(head) = tokenize(message, 3) else {
        return Rewritten::Unchanged;
    };
    if head.len() < 2 {
        return Rewritten::Unchanged;
    }
    let uid = is_atom(message, &head[1], "UID");
    let name_at = if uid { 2 } else { 1 };
    let Some(name) = head.get(name_at) else {
        return Rewritten::Unchanged;
    };
    let command = String::from_utf8_lossy(text(message, name)).to_ascii_uppercase();
    if !matches!(command.as_str(), "LIST" | "CREATE" | "STATUS" | "APPEND") {
        return Rewritten::Unchanged;
    }
    let Some(tokens) = tokenize(message, MAX_TOKENS + 1) else {
        return Rewritten::Unchanged;
    };
    if tokens.len() > MAX_TOKENS {
        return Rewritten::Bad(format!(
            "Command too complex: more than {MAX_TOKENS} words and parentheses"
        ));
    }
    let mut edit = Edit::new(message);
    let mut ext = Ext::default();
    let result = match command.as_str() {
        "LIST" => list(message, &tokens, name_at, &mut edit, &mut ext),
        "CREATE" => create(message, &tokens, name_at, &mut edit, &mut ext),
        "STATUS" => status(message, &tokens, name_at, &mut edit, &mut ext),
        "APPEND" => append_messages(message, &tokens, name_at, &mut edit, &mut ext),
        _ => Ok(()),
    };
    if let Err(bad) = result {
        return Rewritten::Bad(bad);
    }
    match edit.finish() {
        Some(bytes) => Rewritten::Changed(bytes, ext),
        None => Rewritten::Unchanged,
    }
}

/// Replacements of byte ranges of a command, applied in order.
struct Edit<'a> {
    message: &'a [u8],
    changes: Vec<(usize, usize, Vec<u8>)>,
}

impl<'a> Edit<'a> {
    fn new(message: &'a [u8]) -> Self {
        Edit {
            message,
            changes: Vec::new(),
        }
    }

    fn replace(&mut self, start: usize, end: usize, with: &[u8]) {
        self.changes.push((start, end, with.to_vec()));
    }

    fn finish(mut self) -> Option<Vec<u8>> {
        if self.changes.is_empty() {
            return None;
        }
        self.changes.sort_by_key(|c| c.0);
        let mut out = Vec::with_capacity(self.message.len());
        let mut at = 0;
        for (start, end, with) in self.changes {
            out.extend_from_slice(&self.message[at..start]);
            out.extend_from_slice(&with);
            at = end;
        }
        out.extend_from_slice(&self.message[at..]);
        Some(out)
    }
}

fn list(
    message: &[u8],
    tokens: &[Token],
    name_at: usize,
    edit: &mut Edit<'_>,
    ext: &mut Ext,
) -> Result<(), String> {
    let mut i = name_at + 1;
    let mut opts = ListExt::default();
    let mut extended = false;
    if tokens.get(i).map(|t| t.kind) == Some(Kind::Open) {
        extended = true;
        let close = closing(tokens, i).ok_or("Unbalanced selection options")?;
        for t in &tokens[i + 1..close] {
            match String::from_utf8_lossy(text(message, t))
                .to_ascii_uppercase()
                .as_str()
            {
                "SUBSCRIBED" => opts.select_subscribed = true,
                "SPECIAL-USE" => opts.select_special_use = true,
                "RECURSIVEMATCH" => opts.recursive_match = true,
                "REMOTE" => {}
                other => return Err(format!("Unknown LIST selection option {other}")),
            }
        }
        if opts.recursive_match && !opts.select_subscribed && !opts.select_special_use {
            return Err("RECURSIVEMATCH needs another selection option".into());
        }
        i = close + 1;
    }
    let reference = *tokens.get(i).ok_or("LIST needs a reference")?;
    i += 1;
    let mut patterns: Vec<Token> = Vec::new();
    match tokens.get(i) {
        Some(t) if t.kind == Kind::Open => {
            extended = true;
            let close = closing(tokens, i).ok_or("Unbalanced pattern list")?;
            patterns.extend_from_slice(&tokens[i + 1..close]);
            i = close + 1;
        }
        Some(t) => {
            patterns.push(*t);
            i += 1;
        }
        None => return Err("LIST needs a pattern".into()),
    }
    if patterns.is_empty() {
        return Err("LIST needs a pattern".into());
    }
    if let Some(t) = tokens.get(i) {
        if !is_atom(message, t, "RETURN") {
            return Err("Unexpected LIST argument".into());
        }
        extended = true;
        let open = i + 1;
        if tokens.get(open).map(|t| t.kind) != Some(Kind::Open) {
            return Err("RETURN needs a list of options".into());
        }
        let close = closing(tokens, open).ok_or("Unbalanced return options")?;
        let mut j = open + 1;
        while j < close {
            let t = &tokens[j];
            match String::from_utf8_lossy(text(message, t))
                .to_ascii_uppercase()
                .as_str()
            {
                "SUBSCRIBED" => opts.return_subscribed = true,
                "CHILDREN" => opts.return_children = true,
                "SPECIAL-USE" => opts.return_special_use = true,
                "STATUS" => {
                    let items_open = j + 1;
                    if tokens.get(items_open).map(|t| t.kind) != Some(Kind::Open) {
                        return Err("STATUS needs a list of items".into());
                    }
                    let items_close =
                        closing(tokens, items_open).ok_or("Unbalanced STATUS items")?;
                    let mut items = Vec::new();
                    for t in &tokens[items_open + 1..items_close] {
                        let word = String::from_utf8_lossy(text(message, t)).to_ascii_uppercase();
                        if word == "APPENDLIMIT" {
                            opts.return_status_appendlimit = true;
                        } else {
                            items.push(status_item(&word)?);
                        }
                    }
                    opts.return_status = Some(items);
                    j = items_close;
                }
                other => return Err(format!("Unknown LIST return option {other}")),
            }
            j += 1;
        }
        if close + 1 != tokens.len() {
            return Err("Unexpected LIST argument".into());
        }
    }
    if !extended {
        return Ok(());
    }
    opts.patterns = patterns.iter().map(|t| value(message, t)).collect();
    // The base form: `tag LIST reference first-pattern`.
    let tag_end = tokens[0].end;
    let mut base = message[..tag_end].to_vec();
    base.extend_from_slice(b" LIST ");
    base.extend_from_slice(text(message, &reference));
    base.push(b' ');
    base.extend_from_slice(text(message, &patterns[0]));
    base.extend_from_slice(b"\r\n");
    let message_body_end = message.len();
    edit.replace(0, message_body_end, &base);
    ext.list = Some(opts);
    Ok(())
}

/// MULTIAPPEND (RFC 3502 §6.3.11): `append = "APPEND" SP mailbox 1*append-message`,
/// `append-message = [SP flag-list] [SP date-time] SP append-data`; and
/// UTF8=ACCEPT's `append-data =/ "UTF8" SP "(" literal8 ")"` (RFC 6855 §4),
/// taken as a plain literal.
fn append_messages(
    message: &[u8],
    tokens: &[Token],
    name_at: usize,
    edit: &mut Edit<'_>,
    ext: &mut Ext,
) -> Result<(), String> {
    let mut i = name_at + 2; // after the mailbox
    let mut groups: Vec<(usize, usize)> = Vec::new(); // token ranges
    let mut start = i;
    let mut utf8 = Vec::new();
    while i < tokens.len() {
        let t = tokens[i];
        match t.kind {
            Kind::Literal => {
                groups.push((start, i));
                i += 1;
                start = i;
            }
            Kind::Atom if is_atom(message, &t, "UTF8") => {
                // UTF8 ( literal8 )
                let (Some(open), Some(lit), Some(close)) =
                    (tokens.get(i + 1), tokens.get(i + 2), tokens.get(i + 3))
                else {
                    return Err("UTF8 needs a parenthesised literal".into());
                };
                if open.kind != Kind::Open || lit.kind != Kind::Literal || close.kind != Kind::Close
                {
                    return Err("UTF8 needs a parenthesised literal".into());
                }
                utf8.push((t.start, close.end, value(message, lit)));
                groups.push((start, i + 3));
                i += 4;
                start = i;
            }
            Kind::Open => {
                i = closing(tokens, i).ok_or("Unbalanced flag list")? + 1;
            }
            _ => i += 1,
        }
    }
    if start != tokens.len() {
        return Err("APPEND needs a message literal".into());
    }
    if groups.len() <= 1 && utf8.is_empty() {
        return Ok(());
    }
    // Plain literals for UTF8 data.
    let plain = |from: usize, to: usize| -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = from;
        for (s, e, data) in &utf8 {
            if *s >= from && *e <= to {
                out.extend_from_slice(&message[at..*s]);
                out.extend_from_slice(format!("{{{}}}\r\n", data.len()).as_bytes());
                out.extend_from_slice(data);
                at = *e;
            }
        }
        out.extend_from_slice(&message[at..to]);
        out
    };
    let (first_from, first_to) = groups[0];
    let first_start = tokens[first_from].start;
    let first_end = tokens[first_to].end;
    for (from, to) in &groups[1..] {
        ext.more_appends_raw
            .push(plain(tokens[*from].start, tokens[*to].end));
    }
    let mut base = message[..first_start].to_vec();
    base.extend_from_slice(&plain(first_start, first_end));
    base.extend_from_slice(b"\r\n");
    edit.replace(0, message.len(), &base);
    Ok(())
}

fn status_item(word: &str) -> Result<StatusDataItemName, String> {
    Ok(match word {
        "MESSAGES" => StatusDataItemName::Messages,
        "RECENT" => StatusDataItemName::Recent,
        "UIDNEXT" => StatusDataItemName::UidNext,
        "UIDVALIDITY" => StatusDataItemName::UidValidity,
        "UNSEEN" => StatusDataItemName::Unseen,
        "DELETED" => StatusDataItemName::Deleted,
        "SIZE" => StatusDataItemName::Size,
        "HIGHESTMODSEQ" => StatusDataItemName::HighestModSeq,
        other => return Err(format!("Unknown STATUS item {other}")),
    })
}

fn create(
    message: &[u8],
    tokens: &[Token],
    name_at: usize,
    edit: &mut Edit<'_>,
    ext: &mut Ext,
) -> Result<(), String> {
    let open = name_at + 2;
    let Some(t) = tokens.get(open) else {
        return Ok(());
    };
    if t.kind != Kind::Open {
        return Ok(());
    }
    let close = closing(tokens, open).ok_or("Unbalanced CREATE parameters")?;
    let mut j = open + 1;
    while j < close {
        if !is_atom(message, &tokens[j], "USE") {
            return Err("Unknown CREATE parameter".into());
        }
        let uses_open = j + 1;
        if tokens.get(uses_open).map(|t| t.kind) != Some(Kind::Open) {
            return Err("USE needs a list of attributes".into());
        }
        let uses_close = closing(tokens, uses_open).ok_or("Unbalanced USE list")?;
        for t in &tokens[uses_open + 1..uses_close] {
            let attr = String::from_utf8_lossy(text(message, t)).into_owned();
            let special = SpecialUse::from_attribute(&attr)
                .ok_or_else(|| format!("[USEATTR] Unknown special use {attr}"))?;
            ext.create_use.push(special);
        }
        j = uses_close + 1;
    }
    let name_end = tokens[name_at + 1].end;
    edit.replace(name_end, tokens[close].end, b"");
    Ok(())
}

fn status(
    message: &[u8],
    tokens: &[Token],
    name_at: usize,
    edit: &mut Edit<'_>,
    ext: &mut Ext,
) -> Result<(), String> {
    let open = name_at + 2;
    if tokens.get(open).map(|t| t.kind) != Some(Kind::Open) {
        return Ok(());
    }
    let Some(close) = closing(tokens, open) else {
        return Ok(());
    };
    let items = &tokens[open + 1..close];
    if !items.iter().any(|t| is_atom(message, t, "APPENDLIMIT")) {
        return Ok(());
    }
    ext.status_appendlimit = true;
    let kept: Vec<&[u8]> = items
        .iter()
        .filter(|t| !is_atom(message, t, "APPENDLIMIT"))
        .map(|t| text(message, t))
        .collect();
    let list = if kept.is_empty() {
        ext.status_only_appendlimit = true;
        b"(MESSAGES)".to_vec()
    } else {
        let mut l = b"(".to_vec();
        l.extend_from_slice(&kept.join(&b' '));
        l.push(b')');
        l
    };
    edit.replace(tokens[open].start, tokens[close].end, &list);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed(input: &str, saved: &Saved) -> (String, Ext) {
        match rewrite(input.as_bytes(), saved) {
            Rewritten::Changed(bytes, ext) => (String::from_utf8(bytes).unwrap(), ext),
            other => panic!("{input}: {other:?}"),
        }
    }

    #[test]
    fn plain_commands_pass_unchanged() {
        for c in [
            "a FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO)])\r\n",
            "a LIST \"\" *\r\n",
            "a CREATE foo\r\n",
            "a STATUS INBOX (MESSAGES UNSEEN)\r\n",
        ] {
            assert!(
                matches!(
                    rewrite(c.as_bytes(), &Saved::default()),
                    Rewritten::Unchanged
                ),
                "{c}"
            );
        }
    }

    #[test]
    fn list_extended_forms_become_base_lists() {
        let (base, ext) = changed(
            "a LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (\"INBOX\" {4}\r\nWo k) RETURN (CHILDREN STATUS (MESSAGES APPENDLIMIT))\r\n",
            &Saved::default(),
        );
        assert_eq!(base, "a LIST \"\" \"INBOX\"\r\n");
        let l = ext.list.unwrap();
        assert!(l.select_subscribed && l.recursive_match && l.return_children);
        assert_eq!(l.patterns, vec![b"INBOX".to_vec(), b"Wo k".to_vec()]);
        assert_eq!(l.return_status, Some(vec![StatusDataItemName::Messages]));
        assert!(l.return_status_appendlimit);
        assert!(matches!(
            rewrite(b"a LIST (RECURSIVEMATCH) \"\" *\r\n", &Saved::default()),
            Rewritten::Bad(_)
        ));
    }

    #[test]
    fn multiappend_and_utf8_literals_split() {
        let (base, ext) = changed(
            "a APPEND INBOX (\\Seen) {3+}\r\nabc (\\Draft) \"01-Jan-2026 10:00:00 +0000\" {2+}\r\nde\r\n",
            &Saved::default(),
        );
        assert_eq!(base, "a APPEND INBOX (\\Seen) {3+}\r\nabc\r\n");
        assert_eq!(
            ext.more_appends_raw,
            vec![b"(\\Draft) \"01-Jan-2026 10:00:00 +0000\" {2+}\r\nde".to_vec()]
        );
        let (base, ext) = changed("a APPEND INBOX UTF8 (~{3}\r\nabc)\r\n", &Saved::default());
        assert_eq!(base, "a APPEND INBOX {3}\r\nabc\r\n");
        assert!(ext.more_appends_raw.is_empty());
        assert!(matches!(
            rewrite(b"a APPEND INBOX (\\Seen)\r\n", &Saved::default()),
            Rewritten::Bad(_)
        ));
    }

    #[test]
    fn create_use_and_status_appendlimit() {
        let (base, ext) = changed(
            "a CREATE \"My Drafts\" (USE (\\Drafts))\r\n",
            &Saved::default(),
        );
        assert_eq!(base, "a CREATE \"My Drafts\"\r\n");
        assert_eq!(ext.create_use, vec![SpecialUse::Drafts]);
        let (base, ext) = changed(
            "a STATUS INBOX (UIDNEXT APPENDLIMIT)\r\n",
            &Saved::default(),
        );
        assert_eq!(base, "a STATUS INBOX (UIDNEXT)\r\n");
        assert!(ext.status_appendlimit && !ext.status_only_appendlimit);
        let (base, ext) = changed("a STATUS INBOX (APPENDLIMIT)\r\n", &Saved::default());
        assert_eq!(base, "a STATUS INBOX (MESSAGES)\r\n");
        assert!(ext.status_only_appendlimit);
    }

    /// A flood of parentheses used to become one 24-byte token per byte
    /// whatever the command (1.2 GB for 48 MiB). Commands that need no
    /// rewrite are not split at all; the others stop at MAX_TOKENS.
    #[test]
    fn floods_are_not_tokenised_past_the_cap() {
        let flood = |command: &str| {
            let mut m = format!("a {command} ").into_bytes();
            m.extend(std::iter::repeat_n(b'(', 4 * MAX_TOKENS));
            m.extend_from_slice(b"\r\n");
            m
        };
        assert!(matches!(
            rewrite(&flood("NOOP"), &Saved::default()),
            Rewritten::Unchanged
        ));
        match rewrite(&flood("FETCH"), &Saved::default()) {
            Rewritten::Bad(text) => assert!(text.contains("too complex"), "{text}"),
            other => panic!("{other:?}"),
        }
        assert!(tokenize(&flood("FETCH"), 10).unwrap().len() == 10);
    }

    proptest::proptest! {
        /// Any bytes: no panic, and a rewrite keeps the command's tag.
        #[test]
        fn never_panics_and_keeps_the_tag(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            command in proptest::sample::select(vec![
                "LIST (", "LIST ", "CREATE x (USE (",
                "STATUS x (", "APPEND INBOX ",
            ]),
        ) {
            let mut input = format!("t1 {command}").into_bytes();
            input.extend_from_slice(&body);
            input.extend_from_slice(b"\r\n");
            let saved = Saved { uids: "1:3".into(), seqs: "1:2".into() };
            if let Rewritten::Changed(bytes, _) = rewrite(&input, &saved) {
                proptest::prop_assert!(bytes.starts_with(b"t1 "));
                proptest::prop_assert!(bytes.ends_with(b"\n"));
            }
        }
    }
}
