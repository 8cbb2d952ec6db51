//! The grammar of the extensions `imap-codec` 2.0.0-alpha.10 does not
//! parse yet. A command that uses one is rewritten into its base form,
//! which imap-codec then parses, and what was removed comes back as an
//! [`Ext`]. Rewriting works on tokens (atoms, quoted strings, literals,
//! parentheses), so literal data is never mistaken for syntax.
//!
//! - ESEARCH (RFC 4731 §3): `search = "SEARCH" [SP "RETURN" SP "("
//!   [search-return-opt *(SP search-return-opt)] ")"] SP search-criteria`
//! - SEARCHRES (RFC 5182 §3): `seq-number / seq-range / "$"` — `$` is the
//!   saved result, replaced by the set it stands for.
//!
//! LIST-EXTENDED, CREATE-SPECIAL-USE, STATUS APPENDLIMIT and MULTIAPPEND
//! are parsed into types by `grammar::mailboxes`.

use super::grammar::ext::{Ext, SearchReturn};
use super::state::Saved;

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
pub fn rewrite(message: &[u8], saved: &Saved) -> Rewritten {
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
    if !matches!(
        command.as_str(),
        "SEARCH" | "SORT" | "THREAD" | "FETCH" | "STORE" | "COPY" | "MOVE" | "EXPUNGE"
    ) {
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
        // ESORT (RFC 5267 §3.2): `SORT RETURN (...)` as SEARCH's.
        "SEARCH" | "SORT" => search(message, &tokens, name_at, uid, saved, &mut edit, &mut ext),
        // `$` in THREAD's keys; after the algorithm, so no RETURN.
        "THREAD" => search(
            message,
            &tokens,
            name_at + 1,
            uid,
            saved,
            &mut edit,
            &mut ext,
        ),
        "FETCH" | "STORE" | "COPY" | "MOVE" | "EXPUNGE" => {
            sequence_arg(message, &tokens, name_at, uid, saved, &mut edit, &mut ext)
        }
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

/// `$` as a command's sequence set.
fn sequence_arg(
    message: &[u8],
    tokens: &[Token],
    name_at: usize,
    uid: bool,
    saved: &Saved,
    edit: &mut Edit<'_>,
    ext: &mut Ext,
) -> Result<(), String> {
    if let Some(t) = tokens.get(name_at + 1)
        && is_atom(message, t, "$")
    {
        let set = if uid { &saved.uids } else { &saved.seqs };
        if set.is_empty() {
            ext.empty_saved = true;
            // No message has this UID; the command then acts on none.
            edit.replace(t.start, t.end, b"4294967295");
        } else {
            edit.replace(t.start, t.end, set.as_bytes());
        }
    }
    Ok(())
}

fn search(
    message: &[u8],
    tokens: &[Token],
    name_at: usize,
    _uid: bool,
    saved: &Saved,
    edit: &mut Edit<'_>,
    ext: &mut Ext,
) -> Result<(), String> {
    let mut next = name_at + 1;
    if let Some(t) = tokens.get(next)
        && is_atom(message, t, "RETURN")
    {
        let open = next + 1;
        if tokens.get(open).map(|t| t.kind) != Some(Kind::Open) {
            return Err("RETURN needs a list of options".into());
        }
        let close = closing(tokens, open).ok_or("Unbalanced RETURN options")?;
        let mut options = SearchReturn::default();
        for t in &tokens[open + 1..close] {
            match String::from_utf8_lossy(text(message, t))
                .to_ascii_uppercase()
                .as_str()
            {
                "MIN" => options.min = true,
                "MAX" => options.max = true,
                "COUNT" => options.count = true,
                "ALL" => options.all = true,
                "SAVE" => options.save = true,
                other => return Err(format!("Unknown SEARCH return option {other}")),
            }
        }
        // RFC 4731 §3.1: RETURN () means ALL.
        if options == SearchReturn::default() {
            options.all = true;
        }
        ext.search_return = Some(options);
        let remove_to = tokens.get(close + 1).map_or(tokens[close].end, |t| t.start);
        edit.replace(tokens[next].start, remove_to, b"");
        next = close + 1;
    }
    for t in &tokens[next.min(tokens.len())..] {
        if is_atom(message, t, "$") {
            if saved.uids.is_empty() {
                edit.replace(t.start, t.end, b"NOT ALL");
            } else {
                let with = format!("UID {}", saved.uids);
                edit.replace(t.start, t.end, with.as_bytes());
            }
        }
    }
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
            "a SEARCH UNSEEN\r\n",
            "a FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO)])\r\n",
            "a SEARCH SUBJECT {3}\r\n$ $\r\n",
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
    fn search_return_options_are_lifted() {
        let (base, ext) = changed(
            "a UID SEARCH RETURN (MIN COUNT) UNSEEN\r\n",
            &Saved::default(),
        );
        assert_eq!(base, "a UID SEARCH UNSEEN\r\n");
        let r = ext.search_return.unwrap();
        assert!(r.min && r.count && !r.max && !r.all);
        let (_, ext) = changed("a SEARCH RETURN () ALL\r\n", &Saved::default());
        assert!(ext.search_return.unwrap().all, "RETURN () means ALL");
        assert!(matches!(
            rewrite(b"a SEARCH RETURN (BOGUS) ALL\r\n", &Saved::default()),
            Rewritten::Bad(_)
        ));
    }

    #[test]
    fn saved_result_is_substituted() {
        let saved = Saved {
            uids: "4:6".into(),
            seqs: "2:4".into(),
        };
        assert_eq!(
            changed("a FETCH $ FLAGS\r\n", &saved).0,
            "a FETCH 2:4 FLAGS\r\n"
        );
        assert_eq!(
            changed("a UID FETCH $ FLAGS\r\n", &saved).0,
            "a UID FETCH 4:6 FLAGS\r\n"
        );
        assert_eq!(
            changed("a SEARCH $ SEEN\r\n", &saved).0,
            "a SEARCH UID 4:6 SEEN\r\n"
        );
        let (base, ext) = changed("a UID COPY $ Trash\r\n", &Saved::default());
        assert_eq!(base, "a UID COPY 4294967295 Trash\r\n");
        assert!(ext.empty_saved);
        assert_eq!(
            changed("a SEARCH $\r\n", &Saved::default()).0,
            "a SEARCH NOT ALL\r\n"
        );
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
        match rewrite(&flood("SEARCH"), &Saved::default()) {
            Rewritten::Bad(text) => assert!(text.contains("too complex"), "{text}"),
            other => panic!("{other:?}"),
        }
        assert!(tokenize(&flood("SEARCH"), 10).unwrap().len() == 10);
    }

    proptest::proptest! {
        /// Any bytes: no panic, and a rewrite keeps the command's tag.
        #[test]
        fn never_panics_and_keeps_the_tag(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            command in proptest::sample::select(vec![
                "SEARCH RETURN (", "UID SEARCH ", "FETCH $ ", "UID MOVE $ ",
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
