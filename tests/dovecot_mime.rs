//! Differential test of the MIME views of FETCH against Dovecot, the
//! reference for client compatibility: every message of the corpus
//! (fixtures/mail, fixtures/imap) is APPENDed, as the file's bytes, to a
//! real Dovecot over plain TCP (`*-literal8-*` fixtures as a literal8), the items of `mime_common::items` are fetched from it, and each
//! answer is compared with ours (`mime_common::render`), after parsing
//! both into the same tree (so quoting and literal choices do not count).
//!
//! Runs when `DOVECOT_IMAP_PORT`, `DOVECOT_USER` and `DOVECOT_PASSWORD`
//! are set (`eval "$(scripts/dovecot.sh start <dir>)"`; scripts/test.sh
//! does it) and skips otherwise, unless `FACTEUR_REQUIRE_DOVECOT=1`, when
//! it fails. Each intended difference is listed in [`DIFFERENCES`] with
//! its reason (and in doc/imap-differences.md); a listed difference that
//! no longer occurs fails the test too, so the list stays true.

mod mime_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use mime_common::{Fixture, fixtures, items, render};

/// Intended differences: (fixture, FETCH item, reason). Each is explained
/// in doc/imap-differences.md under the name given in the reason.
const DIFFERENCES: &[(&str, &str, &str)] = &[
    // "Invalid Content-Type": `Content-Type: text` has no subtype.
    (
        "mail/14-broken-headers",
        "BODY",
        "invalid Content-Type: text/plain (RFC 2045 §5.2), Dovecot keeps \"text\" \"\"",
    ),
    (
        "mail/14-broken-headers",
        "BODYSTRUCTURE",
        "invalid Content-Type: text/plain (RFC 2045 §5.2), Dovecot keeps \"text\" \"\"",
    ),
    // "Repeated header fields".
    (
        "mail/14-broken-headers",
        "ENVELOPE",
        "repeated Subject: the summary takes the first, Dovecot the last",
    ),
    // "Letter case of MIME values".
    (
        "imap/06-transfer-encodings",
        "BODY",
        "letter case: the summary lower-cases \"BASE64\", Dovecot keeps it",
    ),
    (
        "imap/06-transfer-encodings",
        "BODYSTRUCTURE",
        "letter case: the summary lower-cases \"BASE64\", Dovecot keeps it",
    ),
    (
        "imap/11-uppercase-mime",
        "BODY",
        "letter case: the summary lower-cases type, subtype, encoding, Dovecot keeps them",
    ),
    (
        "imap/11-uppercase-mime",
        "BODYSTRUCTURE",
        "letter case: the summary lower-cases type, subtype, encoding, disposition, Dovecot keeps them",
    ),
    // "Surrounding whitespace".
    (
        "imap/17-odd-parameters",
        "BODY",
        "whitespace: the summary trims the Content-ID value, Dovecot keeps trailing blanks",
    ),
    (
        "imap/17-odd-parameters",
        "BODYSTRUCTURE",
        "whitespace: the summary trims the Content-ID value, Dovecot keeps trailing blanks",
    ),
    // "Quoted local parts".
    (
        "imap/18-address-edge-cases",
        "ENVELOPE",
        "quoted local part: the summary keeps the quotes so mailbox@host stays an address",
    ),
    // "BINARY.SIZE next to an unknown encoding".
    (
        "imap/06-transfer-encodings",
        "BINARY.SIZE[1]",
        "Dovecot fails BINARY.SIZE of every part when one part has an unknown encoding",
    ),
    (
        "imap/06-transfer-encodings",
        "BINARY.SIZE[2]",
        "Dovecot fails BINARY.SIZE of every part when one part has an unknown encoding",
    ),
    (
        "imap/06-transfer-encodings",
        "BINARY.SIZE[3]",
        "Dovecot fails BINARY.SIZE of every part when one part has an unknown encoding",
    ),
    (
        "imap/06-transfer-encodings",
        "BINARY.SIZE[5]",
        "Dovecot fails BINARY.SIZE of every part when one part has an unknown encoding \
         (ours: NO [PARSE], the part's base64 is invalid, as Dovecot's BINARY[5] says)",
    ),
    (
        "imap/06-transfer-encodings",
        "BINARY.SIZE[6]",
        "Dovecot fails BINARY.SIZE of every part when one part has an unknown encoding",
    ),
    // "CR runs before LF".
    (
        "imap/19-cr-cr-lf",
        "BODY",
        "CR CR CR LF: every CR before LF is one line end (CRLF), Dovecot's Maildir keeps CR CR LF",
    ),
    (
        "imap/19-cr-cr-lf",
        "BODYSTRUCTURE",
        "CR CR CR LF: every CR before LF is one line end (CRLF), Dovecot's Maildir keeps CR CR LF",
    ),
    (
        "imap/19-cr-cr-lf",
        "BODY.PEEK[TEXT]",
        "CR CR CR LF: every CR before LF is one line end (CRLF), Dovecot's Maildir keeps CR CR LF",
    ),
    (
        "imap/19-cr-cr-lf",
        "BINARY.PEEK[]",
        "CR CR CR LF: every CR before LF is one line end (CRLF), Dovecot's Maildir keeps CR CR LF",
    ),
    (
        "imap/19-cr-cr-lf",
        "BODY.PEEK[1]",
        "CR CR CR LF: every CR before LF is one line end (CRLF), Dovecot's Maildir keeps CR CR LF",
    ),
    (
        "imap/19-cr-cr-lf",
        "BINARY.PEEK[1]",
        "CR CR CR LF: every CR before LF is one line end (CRLF), Dovecot's Maildir keeps CR CR LF",
    ),
    (
        "imap/19-cr-cr-lf",
        "BINARY.SIZE[1]",
        "CR CR CR LF: every CR before LF is one line end (CRLF), Dovecot's Maildir keeps CR CR LF",
    ),
    // "Bare CR at the end of a message".
    (
        "mail/18-cr-only",
        "BODY.PEEK[HEADER]",
        "a final bare CR is data and kept, Dovecot's Maildir drops it",
    ),
    (
        "mail/18-cr-only",
        "BODY.PEEK[HEADER.FIELDS.NOT (Received DATE Content-Type)]",
        "a final bare CR is data and kept, Dovecot's Maildir drops it",
    ),
    (
        "mail/18-cr-only",
        "BINARY.PEEK[]",
        "a final bare CR is data and kept, Dovecot's Maildir drops it",
    ),
    (
        "mail/18-cr-only",
        "BODY.PEEK[1.MIME]",
        "a final bare CR is data and kept, Dovecot's Maildir drops it",
    ),
    (
        "mail/18-cr-only",
        "BODY.PEEK[HEADER.FIELDS (From to SUBJECT content-type)]",
        "a header without line end: we end the field with CRLF and add the blank line, Dovecot neither",
    ),
    (
        "mail/18-cr-only",
        "ENVELOPE",
        "From: runs over bare CRs: we read on after the first address, Dovecot stops there",
    ),
    (
        "imap/20-bare-cr-everywhere",
        "BODY.PEEK[HEADER]",
        "a final bare CR is data and kept, Dovecot's Maildir drops it",
    ),
    (
        "imap/20-bare-cr-everywhere",
        "BODY.PEEK[HEADER.FIELDS.NOT (Received DATE Content-Type)]",
        "a final bare CR is data and kept, Dovecot's Maildir drops it",
    ),
    (
        "imap/20-bare-cr-everywhere",
        "BINARY.PEEK[]",
        "a final bare CR is data and kept, Dovecot's Maildir drops it",
    ),
    (
        "imap/20-bare-cr-everywhere",
        "BODY.PEEK[1.MIME]",
        "a final bare CR is data and kept, Dovecot's Maildir drops it",
    ),
    (
        "imap/20-bare-cr-everywhere",
        "BODY.PEEK[HEADER.FIELDS (From to SUBJECT content-type)]",
        "a header without line end: we end the field with CRLF and add the blank line, Dovecot neither",
    ),
    (
        "imap/20-bare-cr-everywhere",
        "ENVELOPE",
        "From: runs over bare CRs: we read on after the first address, Dovecot stops there",
    ),
    (
        "imap/19-cr-cr-lf",
        "BINARY.SIZE[]",
        "CR CR CR LF: every CR before LF is one line end (CRLF), Dovecot's Maildir keeps CR CR LF",
    ),
    (
        "mail/18-cr-only",
        "BINARY.SIZE[]",
        "a final bare CR is data and kept, Dovecot's Maildir drops it",
    ),
    (
        "imap/20-bare-cr-everywhere",
        "BINARY.SIZE[]",
        "a final bare CR is data and kept, Dovecot's Maildir drops it",
    ),
    // "Binary parts stay binary".
    (
        "imap/21-literal8-binary-part",
        "BODY",
        "a literal8 binary part is stored as sent, Dovecot re-encodes it as base64",
    ),
    (
        "imap/21-literal8-binary-part",
        "BODYSTRUCTURE",
        "a literal8 binary part is stored as sent, Dovecot re-encodes it as base64",
    ),
    (
        "imap/21-literal8-binary-part",
        "BODY.PEEK[TEXT]",
        "a literal8 binary part is stored as sent, Dovecot re-encodes it as base64",
    ),
    (
        "imap/21-literal8-binary-part",
        "BODY.PEEK[2]",
        "a literal8 binary part is stored as sent, Dovecot re-encodes it as base64",
    ),
    (
        "imap/21-literal8-binary-part",
        "BODY.PEEK[2.MIME]",
        "a literal8 binary part is stored as sent, Dovecot re-encodes it as base64",
    ),
];

// ---------------------------------------------------------------------
// A tiny IMAP client: commands out, responses in (literals followed).

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_tag: u32,
}

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("Dovecot IMAP port answers");
        // A bound on every read: a wedged server fails the test, not hangs it.
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut client = Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            next_tag: 0,
        };
        let greeting = client.line();
        assert!(greeting.starts_with(b"* OK"), "greeting {greeting:?}");
        client
    }

    /// One line including its CRLF.
    fn line(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).unwrap();
        assert!(line.ends_with(b"\n"), "connection closed");
        line
    }

    /// One response: a line plus the literals it announces, as raw bytes.
    fn response(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let line = self.line();
            out.extend_from_slice(&line);
            match literal_length(&line) {
                Some(n) => {
                    let mut data = vec![0; n];
                    self.reader.read_exact(&mut data).unwrap();
                    out.extend_from_slice(&data);
                }
                None => return out,
            }
        }
    }

    fn tag(&mut self) -> String {
        self.next_tag += 1;
        format!("t{}", self.next_tag)
    }

    /// Sends a command (with an optional literal appended) and returns
    /// its untagged responses and the tagged status line.
    fn command(&mut self, command: &str, literal: Option<&[u8]>) -> (Vec<Vec<u8>>, Vec<u8>) {
        self.command_with(command, literal, false)
    }

    /// [`Client::command`], the literal sent as a literal8 (`~{n}`, RFC
    /// 3516 §4.1) when `literal8`.
    fn command_with(
        &mut self,
        command: &str,
        literal: Option<&[u8]>,
        literal8: bool,
    ) -> (Vec<Vec<u8>>, Vec<u8>) {
        let tag = self.tag();
        match literal {
            None => write!(self.writer, "{tag} {command}\r\n").unwrap(),
            Some(data) => {
                let tilde = if literal8 { "~" } else { "" };
                write!(self.writer, "{tag} {command} {tilde}{{{}}}\r\n", data.len()).unwrap();
                let go = self.line();
                assert!(go.starts_with(b"+"), "no continuation: {go:?}");
                self.writer.write_all(data).unwrap();
                self.writer.write_all(b"\r\n").unwrap();
            }
        }
        let mut untagged = Vec::new();
        loop {
            let response = self.response();
            if response.starts_with(format!("{tag} ").as_bytes()) {
                return (untagged, response);
            }
            untagged.push(response);
        }
    }

    fn ok(&mut self, command: &str, literal: Option<&[u8]>) -> (Vec<Vec<u8>>, Vec<u8>) {
        let (untagged, status) = self.command(command, literal);
        let text = String::from_utf8_lossy(&status);
        assert!(text.split(' ').nth(1) == Some("OK"), "{command}: {text}");
        (untagged, status)
    }
}

/// `{n}` or `~{n}` at the end of a line announces n octets.
fn literal_length(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let open = line.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&line[open + 1..]).ok()?.parse().ok()
}

// ---------------------------------------------------------------------
// Responses as trees

#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Nil,
    Number(u64),
    String(Vec<u8>),
    Atom(String),
    List(Vec<Value>),
}

struct Parser<'a> {
    s: &'a [u8],
    p: usize,
}

impl Parser<'_> {
    fn skip_spaces(&mut self) {
        while self.s.get(self.p) == Some(&b' ') {
            self.p += 1;
        }
    }

    fn value(&mut self) -> Value {
        self.skip_spaces();
        match self.s[self.p] {
            b'(' => {
                self.p += 1;
                let mut list = Vec::new();
                loop {
                    self.skip_spaces();
                    if self.s[self.p] == b')' {
                        self.p += 1;
                        return Value::List(list);
                    }
                    list.push(self.value());
                }
            }
            b'"' => {
                self.p += 1;
                let mut out = Vec::new();
                loop {
                    match self.s[self.p] {
                        b'"' => break,
                        b'\\' => {
                            self.p += 1;
                            out.push(self.s[self.p]);
                        }
                        b => out.push(b),
                    }
                    self.p += 1;
                }
                self.p += 1;
                Value::String(out)
            }
            b'{' | b'~' => {
                let open = self.p + usize::from(self.s[self.p] == b'~');
                let close = open + self.s[open..].iter().position(|&b| b == b'}').unwrap();
                let n: usize = std::str::from_utf8(&self.s[open + 1..close])
                    .unwrap()
                    .parse()
                    .unwrap();
                let start = close + 3; // "}\r\n"
                self.p = start + n;
                Value::String(self.s[start..start + n].to_vec())
            }
            _ => {
                // An atom; a section spec in brackets may hold spaces and
                // parentheses.
                let start = self.p;
                let mut depth = 0;
                while let Some(&b) = self.s.get(self.p) {
                    match b {
                        b'[' => depth += 1,
                        b']' => depth -= 1,
                        b' ' | b'(' | b')' | b'\r' if depth == 0 => break,
                        _ => {}
                    }
                    self.p += 1;
                }
                let atom = String::from_utf8_lossy(&self.s[start..self.p]).into_owned();
                if atom == "NIL" {
                    Value::Nil
                } else if let Ok(n) = atom.parse() {
                    Value::Number(n)
                } else {
                    Value::Atom(atom)
                }
            }
        }
    }
}

/// What a server answered to one item.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    /// The item's name as echoed (upper-cased) and its value.
    Data(String, Value),
    /// A tagged NO with its response code.
    No(String),
}

/// Reads the answer from `* n FETCH (...)` responses and the status
/// line, ignoring `UID` (and `FLAGS`, which Dovecot may add).
fn answer(untagged: &[Vec<u8>], status: &[u8]) -> Answer {
    let status_text = String::from_utf8_lossy(status);
    let mut words = status_text.split(' ');
    if words.nth(1) == Some("NO") {
        let code = status_text
            .split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map_or("", |(code, _)| code);
        return Answer::No(code.to_owned());
    }
    for response in untagged {
        let Some(open) = response.iter().position(|&b| b == b'(') else {
            continue;
        };
        if !response.windows(7).any(|w| w == b" FETCH ") {
            continue;
        }
        let mut parser = Parser {
            s: response,
            p: open,
        };
        let Value::List(list) = parser.value() else {
            panic!("FETCH without a list");
        };
        for pair in list.chunks(2) {
            if let [Value::Atom(name), value] = pair
                && name != "UID"
                && name != "FLAGS"
            {
                return Answer::Data(name.to_ascii_uppercase(), value.clone());
            }
        }
    }
    panic!(
        "no FETCH data in {:?}",
        untagged
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect::<Vec<_>>()
    )
}

/// imap-codec writes the body types it knows in upper case (`"TEXT"`,
/// `"MESSAGE" "RFC822"`), Dovecot as written; RFC 2045 §5.1 makes them
/// case-insensitive.
fn normalize_body(value: &mut Value) {
    match value {
        Value::String(s) if [&b"TEXT"[..], b"MESSAGE", b"RFC822"].contains(&s.as_slice()) => {
            s.make_ascii_lowercase()
        }
        Value::List(list) => list.iter_mut().for_each(normalize_body),
        _ => {}
    }
}

fn normalize(mut a: Answer) -> Answer {
    if let Answer::Data(name, value) = &mut a
        && (name == "BODY" || name == "BODYSTRUCTURE")
    {
        normalize_body(value);
    }
    a
}

fn ours(fixture: &Fixture, item: &mime_common::Item) -> Answer {
    let wire = render(fixture, item);
    if wire.starts_with(b"* ") {
        answer(&[wire], b"x OK done\r\n")
    } else {
        answer(&[], &wire)
    }
}

fn show(a: &Answer) -> String {
    fn value(v: &Value, out: &mut String) {
        match v {
            Value::Nil => out.push_str("NIL"),
            Value::Number(n) => out.push_str(&n.to_string()),
            Value::String(s) => out.push_str(&format!("{:?}", String::from_utf8_lossy(s))),
            Value::Atom(a) => out.push_str(a),
            Value::List(l) => {
                out.push('(');
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    value(v, out);
                }
                out.push(')');
            }
        }
    }
    let mut out = String::new();
    match a {
        Answer::Data(name, v) => {
            out.push_str(name);
            out.push(' ');
            value(v, &mut out);
        }
        Answer::No(code) => out.push_str(&format!("NO [{code}]")),
    }
    out
}

struct Dovecot {
    port: u16,
    user: String,
    password: String,
}

fn dovecot() -> Option<Dovecot> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let found = (|| {
        Some(Dovecot {
            port: var("DOVECOT_IMAP_PORT")?.parse().ok()?,
            user: var("DOVECOT_USER")?,
            password: var("DOVECOT_PASSWORD")?,
        })
    })();
    if found.is_none() {
        assert!(
            std::env::var("FACTEUR_REQUIRE_DOVECOT").as_deref() != Ok("1"),
            "FACTEUR_REQUIRE_DOVECOT=1 but DOVECOT_IMAP_PORT, DOVECOT_USER or \
             DOVECOT_PASSWORD is missing (eval \"$(scripts/dovecot.sh start <dir>)\")"
        );
        eprintln!("dovecot_mime: skipped, no Dovecot (see scripts/dovecot.sh)");
    }
    found
}

/// IMAP quoted string.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[test]
fn fetch_answers_match_dovecot() {
    let Some(dovecot) = dovecot() else {
        return;
    };
    let mut imap = Client::connect(dovecot.port);
    imap.ok(
        &format!(
            "LOGIN {} {}",
            quoted(&dovecot.user),
            quoted(&dovecot.password)
        ),
        None,
    );
    // A mailbox of our own: reruns and other users of this Dovecot (the
    // LMTP benchmark delivers to INBOX) do not interfere.
    let mailbox = format!(
        "facteur-mime-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    imap.ok(&format!("CREATE {mailbox}"), None);
    imap.ok(&format!("SELECT {mailbox}"), None);

    let mut unexpected = Vec::new();
    let mut seen_differences = Vec::new();
    let mut compared = 0;
    for fixture in fixtures() {
        // Dovecot gets the bytes a client sends; ours are what our APPEND
        // stores from them (`Fixture::raw`).
        let (_, status) = imap.command_with(
            &format!("APPEND {mailbox}"),
            Some(&fixture.sent),
            fixture.literal8,
        );
        let status = String::from_utf8_lossy(&status);
        assert!(
            status.split(' ').nth(1) == Some("OK"),
            "APPEND {}: {status}",
            fixture.name
        );
        let uid: u32 = status
            .split_once("APPENDUID ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|u| u.trim_end_matches(']').parse().ok())
            .unwrap_or_else(|| panic!("no APPENDUID in {status}"));
        for item in items(&fixture.summary) {
            let (untagged, status) =
                imap.command(&format!("UID FETCH {uid} ({})", item.command), None);
            let theirs = normalize(answer(&untagged, &status));
            let ours = normalize(ours(&fixture, &item));
            compared += 1;
            let listed = DIFFERENCES
                .iter()
                .any(|(f, i, _)| *f == fixture.name && *i == item.command);
            if listed {
                seen_differences.push((fixture.name.clone(), item.command.clone(), ours != theirs));
            } else if ours != theirs {
                unexpected.push(format!(
                    "{} {}\n  dovecot: {}\n  ours:    {}",
                    fixture.name,
                    item.command,
                    show(&theirs),
                    show(&ours)
                ));
            }
        }
    }
    // Dovecot disconnects a session whose selected mailbox is deleted.
    imap.ok("CLOSE", None);
    imap.ok(&format!("DELETE {mailbox}"), None);
    imap.ok("LOGOUT", None);

    let stale: Vec<String> = DIFFERENCES
        .iter()
        .filter(|(f, i, _)| {
            !seen_differences
                .iter()
                .any(|(sf, si, differs)| sf == f && si == i && *differs)
        })
        .map(|(f, i, why)| format!("{f} {i} (listed: {why})"))
        .collect();
    assert!(
        unexpected.is_empty() && stale.is_empty(),
        "{} of {compared} answers differ from Dovecot without a listed reason:\n{}\n\n\
         listed differences that no longer occur:\n{}",
        unexpected.len(),
        unexpected.join("\n"),
        stale.join("\n")
    );
}
