//! Differential test of SORT and THREAD (RFC 5256) against Dovecot, the
//! reference for client compatibility. The corpus (fixtures/mail,
//! fixtures/imap, and fixtures/sort, written to stress base subjects,
//! dates and References) is APPENDed to a fresh Dovecot mailbox with
//! INTERNALDATEs that tie in threes; every sort program of [`PROGRAMS`]
//! and both THREAD algorithms are asked of Dovecot and compared with
//! what `facteur::imap::sort` and `facteur::imap::thread` answer over the
//! same messages' summaries.
//!
//! Runs when `DOVECOT_IMAP_PORT`, `DOVECOT_USER` and `DOVECOT_PASSWORD`
//! are set (`eval "$(scripts/dovecot.sh start <dir>)"`) and skips
//! otherwise, unless `FACTEUR_REQUIRE_DOVECOT=1`, when it fails. Intended
//! differences are in [`DIFFERENCES`] (and doc/imap-differences.md); one
//! that no longer occurs fails the test too.

mod mime_common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use facteur::imap::sort::{Sortable, sort};
use facteur::imap::thread::{Threadable, ordered_subject, references};
use facteur::mailbox::summary::{LineEnds, MessageSummary, normalize_line_ends, summarize};
use imap_codec::imap_types::extensions::sort::{SortCriterion, SortKey};

/// Sort programs asked of both servers: every key alone, reversed, and
/// combinations whose ties the later keys break.
const PROGRAMS: &[&str] = &[
    "ARRIVAL",
    "REVERSE ARRIVAL",
    "DATE",
    "REVERSE DATE",
    "SIZE",
    "REVERSE SIZE",
    "SUBJECT",
    "REVERSE SUBJECT",
    "FROM",
    "REVERSE FROM",
    "TO",
    "REVERSE TO",
    "CC",
    "REVERSE CC",
    "DISPLAYFROM",
    "REVERSE DISPLAYFROM",
    "DISPLAYTO",
    "REVERSE DISPLAYTO",
    "SUBJECT DATE",
    "SUBJECT REVERSE DATE",
    "REVERSE SUBJECT REVERSE ARRIVAL",
    "FROM REVERSE SIZE",
    "CC SUBJECT ARRIVAL",
    "REVERSE ARRIVAL SUBJECT",
];

/// Intended differences: (command, reason), each explained in
/// doc/imap-differences.md under "SORT and THREAD". None: every program
/// and both THREAD algorithms give Dovecot's answer on the corpus.
const DIFFERENCES: &[(&str, &str)] = &[];

struct Message {
    name: String,
    sent: Vec<u8>,
    literal8: bool,
    summary: MessageSummary,
    internal_date: i64,
}

fn corpus() -> Vec<Message> {
    let mut out: Vec<Message> = mime_common::fixtures()
        .into_iter()
        .map(|f| Message {
            name: f.name,
            sent: f.sent,
            literal8: f.literal8,
            summary: f.summary,
            internal_date: 0,
        })
        .collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sort");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "fixtures/sort went missing");
    for file in files {
        let sent = std::fs::read(&file).unwrap();
        let raw = normalize_line_ends(&sent, LineEnds::Crlf).into_owned();
        out.push(Message {
            name: format!("sort/{}", file.file_stem().unwrap().to_string_lossy()),
            summary: summarize(&raw),
            sent,
            literal8: false,
            internal_date: 0,
        });
    }
    // INTERNALDATEs an hour apart, in threes: ARRIVAL ties break by
    // sequence number.
    let base = 1_704_067_200; // 2024-01-01T00:00:00Z
    for (i, m) in out.iter_mut().enumerate() {
        m.internal_date = base + (i as i64 / 3) * 3600;
    }
    out
}

/// `DD-Mon-YYYY HH:MM:SS +0000` of a Unix time.
fn imap_date(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap()
        .format("%d-%b-%Y %H:%M:%S +0000")
        .to_string()
}

fn criteria(program: &str) -> Vec<SortCriterion> {
    let mut out = Vec::new();
    let mut reverse = false;
    for word in program.split(' ') {
        let key = match word {
            "REVERSE" => {
                reverse = true;
                continue;
            }
            "ARRIVAL" => SortKey::Arrival,
            "DATE" => SortKey::Date,
            "SIZE" => SortKey::Size,
            "SUBJECT" => SortKey::Subject,
            "FROM" => SortKey::From,
            "TO" => SortKey::To,
            "CC" => SortKey::Cc,
            "DISPLAYFROM" => SortKey::DisplayFrom,
            "DISPLAYTO" => SortKey::DisplayTo,
            other => panic!("unknown key {other}"),
        };
        out.push(SortCriterion { reverse, key });
        reverse = false;
    }
    out
}

fn our_sort(corpus: &[Message], program: &str) -> String {
    let criteria = criteria(program);
    let mut items: Vec<Sortable> = corpus
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let seq = i as u32 + 1;
            let size = m.summary.size;
            Sortable::new(&criteria, seq, seq, m.internal_date, size, &m.summary)
        })
        .collect();
    sort(&mut items, &criteria);
    let numbers: Vec<String> = items.iter().map(|i| i.seq.to_string()).collect();
    format!("SORT {}", numbers.join(" ")).trim_end().to_owned()
}

fn our_thread(corpus: &[Message], algorithm: &str) -> String {
    let items: Vec<Threadable> = corpus
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let seq = i as u32 + 1;
            Threadable::new(seq, seq, m.internal_date, &m.summary)
        })
        .collect();
    let threads = match algorithm {
        "REFERENCES" => references(&items),
        _ => ordered_subject(&items),
    };
    format!("THREAD {}", threads.write(|i| items[i].seq))
        .trim_end()
        .to_owned()
}

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_tag: u32,
}

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("Dovecot IMAP port answers");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut client = Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            next_tag: 0,
        };
        assert!(client.line().starts_with("* OK"));
        client
    }

    fn line(&mut self) -> String {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).unwrap();
        assert!(line.ends_with(b"\n"), "connection closed");
        String::from_utf8_lossy(&line).trim_end().to_owned()
    }

    /// Sends a command (and a literal), returns its untagged lines; the
    /// tagged status must be OK.
    fn ok(&mut self, command: &str, literal: Option<(&[u8], bool)>) -> Vec<String> {
        self.next_tag += 1;
        let tag = format!("t{}", self.next_tag);
        match literal {
            None => write!(self.writer, "{tag} {command}\r\n").unwrap(),
            Some((data, literal8)) => {
                let tilde = if literal8 { "~" } else { "" };
                write!(self.writer, "{tag} {command} {tilde}{{{}}}\r\n", data.len()).unwrap();
                let go = self.line();
                assert!(go.starts_with('+'), "no continuation: {go}");
                self.writer.write_all(data).unwrap();
                self.writer.write_all(b"\r\n").unwrap();
            }
        }
        let mut untagged = Vec::new();
        loop {
            let line = self.line();
            if let Some(status) = line.strip_prefix(&format!("{tag} ")) {
                assert!(status.starts_with("OK"), "{command}: {status}");
                return untagged;
            }
            untagged.push(line);
        }
    }
}

fn dovecot() -> Option<Client> {
    let env = |k: &str| std::env::var(k).ok();
    let (Some(port), Some(user), Some(password)) = (
        env("DOVECOT_IMAP_PORT"),
        env("DOVECOT_USER"),
        env("DOVECOT_PASSWORD"),
    ) else {
        assert!(
            env("FACTEUR_REQUIRE_DOVECOT").as_deref() != Some("1"),
            "FACTEUR_REQUIRE_DOVECOT=1 but DOVECOT_* is not set"
        );
        eprintln!("skipped: no Dovecot (scripts/dovecot.sh start)");
        return None;
    };
    let mut client = Client::connect(port.parse().unwrap());
    client.ok(&format!("LOGIN {user} {password}"), None);
    Some(client)
}

/// The one untagged line starting with `word`.
fn answer(lines: Vec<String>, word: &str) -> String {
    let mut found: Vec<String> = lines
        .into_iter()
        .filter_map(|l| l.strip_prefix("* ").map(str::to_owned))
        .filter(|l| l == word || l.starts_with(&format!("{word} ")))
        .collect();
    assert_eq!(found.len(), 1, "one {word} response");
    found.pop().unwrap()
}

#[test]
fn sort_and_thread_match_dovecot() {
    let Some(mut dovecot) = dovecot() else { return };
    let corpus = corpus();
    let mailbox = format!("sort-{}-{}", std::process::id(), rand_suffix());
    dovecot.ok(&format!("CREATE {mailbox}"), None);
    for m in &corpus {
        let date = imap_date(m.internal_date);
        dovecot.ok(
            &format!("APPEND {mailbox} () \"{date}\""),
            Some((&m.sent, m.literal8)),
        );
    }
    dovecot.ok(&format!("SELECT {mailbox}"), None);

    let mut commands: Vec<(String, String, String)> = Vec::new(); // (command, ours, theirs)
    for program in PROGRAMS {
        let command = format!("SORT ({program}) UTF-8 ALL");
        let theirs = answer(dovecot.ok(&command, None), "SORT");
        commands.push((command, our_sort(&corpus, program), theirs));
    }
    for algorithm in ["ORDEREDSUBJECT", "REFERENCES"] {
        let command = format!("THREAD {algorithm} UTF-8 ALL");
        let theirs = answer(dovecot.ok(&command, None), "THREAD");
        commands.push((command, our_thread(&corpus, algorithm), theirs));
    }
    dovecot.ok(&format!("DELETE {mailbox}"), None);

    let names: Vec<String> = corpus
        .iter()
        .enumerate()
        .map(|(i, m)| format!("{}={}", i + 1, m.name))
        .collect();
    let mut failures = Vec::new();
    for (command, ours, theirs) in &commands {
        let listed = DIFFERENCES.iter().any(|(c, _)| c == command);
        match (ours == theirs, listed) {
            (true, false) | (false, true) => {}
            (false, false) => {
                failures.push(format!("{command}\n  ours:    {ours}\n  dovecot: {theirs}"))
            }
            (true, true) => failures.push(format!("{command}: listed difference no longer occurs")),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(messages: {})",
        failures.join("\n"),
        names.join(" ")
    );
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
