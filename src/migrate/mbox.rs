//! mbox files (one file, one folder): messages separated by `From ` lines,
//! body lines `>From `, `>>From `... unquoted by one `>` (mboxrd; mboxo
//! quotes only `From `, which reads the same), and the `Status` /
//! `X-Status` / `X-Keywords` headers mail programs keep flags in turned
//! into flags and removed, as Dovecot does.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::{Body, MigrateError, SourceFolder, SourceMessage};

/// Indexes the mbox at `path` as folder `name`, in one pass that holds
/// one message's header at a time: each message is a byte range of the
/// file ([`Body::Mbox`]) with its flags and INTERNALDATE, and its text is
/// read when it is imported ([`read_message`]). Memory is bounded by the
/// largest message, not the file.
pub fn read(path: &Path, name: String) -> Result<SourceFolder, MigrateError> {
    let io = |e| MigrateError::io(path, e);
    let file = File::open(path).map_err(io)?;
    let fallback = file
        .metadata()
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64);
    let mut reader = BufReader::new(file);
    let mut messages = Vec::new();
    let mut current: Option<Pending> = None;
    let mut line = Vec::new();
    let mut offset: u64 = 0;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io)? as u64;
        if n == 0 {
            break;
        }
        if line.starts_with(b"From ") {
            if let Some(done) = current.take() {
                messages.push(done.finish(path, offset, fallback));
            }
            current = Some(Pending {
                from_line: line.clone(),
                start: offset + n,
                header: Vec::new(),
                in_header: true,
                trailing_blank: 0,
            });
        } else if offset == 0 {
            return Err(MigrateError::NotMbox(path.to_owned()));
        } else if let Some(pending) = current.as_mut() {
            let blank = line == b"\n" || line == b"\r\n";
            if pending.in_header {
                pending.header.extend_from_slice(&line);
                pending.in_header = !blank;
            }
            pending.trailing_blank = if blank { n } else { 0 };
        }
        offset += n;
    }
    if let Some(done) = current {
        messages.push(done.finish(path, offset, fallback));
    }
    Ok(SourceFolder {
        name,
        uid_validity: None,
        next_uid: None,
        messages,
    })
}

/// A message being indexed.
struct Pending {
    from_line: Vec<u8>,
    /// Offset of the line after the `From ` line.
    start: u64,
    /// Its header, up to and with the blank line that ends it.
    header: Vec<u8>,
    in_header: bool,
    /// Length of the last line if blank: the blank line before a `From `
    /// line belongs to the format, not the message.
    trailing_blank: u64,
}

impl Pending {
    fn finish(self, path: &Path, end: u64, fallback: i64) -> SourceMessage {
        let (flags, _) = strip_status(&unquote(&self.header));
        let len = (end - self.trailing_blank).saturating_sub(self.start);
        SourceMessage {
            uid: None,
            flags,
            internal_date: from_line_date(&self.from_line, fallback),
            body: Body::Mbox {
                path: path.to_owned(),
                start: self.start,
                len,
            },
        }
    }
}

/// The text of the message at `start..start + len` of the mbox at `path`:
/// unquoted, status headers removed.
pub fn read_message(path: &Path, start: u64, len: u64) -> Result<Vec<u8>, MigrateError> {
    let io = |e| MigrateError::io(path, e);
    let mut file = File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut raw = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(len).read_to_end(&mut raw).map_err(io)?;
    if (raw.len() as u64) < len {
        let short = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the mbox file shrank during the import",
        );
        return Err(io(short));
    }
    let (_, kept) = strip_status(&unquote(&raw));
    Ok(kept)
}

/// Lines `>From `, `>>From `... lose one `>`.
fn unquote(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for line in raw.split_inclusive(|b| *b == b'\n') {
        let quotes = line.iter().take_while(|b| **b == b'>').count();
        if quotes > 0 && line[quotes..].starts_with(b"From ") {
            out.extend_from_slice(&line[1..]);
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

/// A message's flags, taken out of its status headers, and its text
/// without them.
fn strip_status(raw: &[u8]) -> (Vec<String>, Vec<u8>) {
    let header_end = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|p| p + 1)
        .or_else(|| raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 2))
        .unwrap_or(raw.len());
    let mut flags = Vec::new();
    let mut kept = Vec::with_capacity(raw.len());
    let mut skipping = false;
    for line in raw[..header_end].split_inclusive(|b| *b == b'\n') {
        let continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        if continuation && skipping {
            continue;
        }
        skipping = false;
        let text = String::from_utf8_lossy(line);
        let (field, value) = text.split_once(':').unwrap_or((text.as_ref(), ""));
        let value = value.trim();
        match field.to_ascii_lowercase().as_str() {
            "status" => {
                if value.contains('R') {
                    flags.push("\\Seen".to_owned());
                }
                skipping = true;
            }
            "x-status" => {
                for (c, flag) in [
                    ('A', "\\Answered"),
                    ('F', "\\Flagged"),
                    ('T', "\\Draft"),
                    ('D', "\\Deleted"),
                ] {
                    if value.contains(c) {
                        flags.push(flag.to_owned());
                    }
                }
                skipping = true;
            }
            "x-keywords" => {
                flags.extend(
                    value
                        .split([' ', ','])
                        .filter(|k| !k.is_empty())
                        .map(str::to_owned),
                );
                skipping = true;
            }
            "x-uid" | "x-imap" | "x-imapbase" => skipping = true,
            _ => kept.extend_from_slice(line),
        }
    }
    kept.extend_from_slice(&raw[header_end..]);
    flags.sort();
    flags.dedup();
    (flags, kept)
}

/// The INTERNALDATE of a `From ` line (asctime form), else `fallback`.
fn from_line_date(from_line: &[u8], fallback: i64) -> i64 {
    let date = String::from_utf8_lossy(from_line);
    // `From sender Sat Jan  3 01:05:34 1996`: the last four words (the
    // weekday is left out: chrono refuses one that disagrees).
    let words: Vec<&str> = date.split_whitespace().collect();
    (words.len() >= 7)
        .then(|| words[words.len() - 4..].join(" "))
        .and_then(|d| chrono::NaiveDateTime::parse_from_str(&d, "%b %d %H:%M:%S %Y").ok())
        .map_or(fallback, |d| d.and_utc().timestamp())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn index(bytes: &[u8]) -> (tempfile::NamedTempFile, SourceFolder) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        let folder = read(file.path(), "f".into()).unwrap();
        (file, folder)
    }

    fn text(m: &SourceMessage) -> String {
        let Body::Mbox { path, start, len } = &m.body else {
            panic!("an mbox message is a range of the file: {:?}", m.body)
        };
        String::from_utf8(read_message(path, *start, *len).unwrap()).unwrap()
    }

    #[test]
    fn messages_split_on_from_lines_and_unquote_and_take_their_flags() {
        let mbox = b"From a@example.org Sat Jan  3 01:05:34 1996\n\
Subject: one\nStatus: RO\nX-Status: AF\nX-Keywords: todo $Label1\n\n\
>From the start\n>>From deeper\nFrom-not a separator\n\n\
From b@example.org Sun Jan  4 02:00:00 1996\nSubject: two\n\nbody\n";
        let (_file, folder) = index(mbox);
        let messages = folder.messages;
        assert_eq!(messages.len(), 2);
        assert_eq!(
            text(&messages[0]),
            "Subject: one\n\nFrom the start\n>From deeper\nFrom-not a separator\n"
        );
        assert_eq!(
            messages[0].flags,
            ["$Label1", "\\Answered", "\\Flagged", "\\Seen", "todo"]
        );
        assert_eq!(messages[0].internal_date, 820_631_134);
        assert!(messages[1].flags.is_empty());
        assert_eq!(text(&messages[1]), "Subject: two\n\nbody\n");
    }

    #[test]
    fn a_file_not_starting_with_from_is_refused() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"Subject: x\n\nbody\n").unwrap();
        assert!(matches!(
            read(file.path(), "f".into()),
            Err(MigrateError::NotMbox(_))
        ));
    }

    /// The index holds ranges, not texts: a generated mbox of 200
    /// messages, one of them 4 MB, is indexed into a few KiB, and each
    /// message read back alone is the one written, flags and all.
    #[test]
    fn a_large_mbox_is_indexed_then_read_message_by_message() {
        let mut mbox = Vec::new();
        let mut wanted = Vec::new();
        for n in 0..200 {
            let body = if n == 117 {
                ("x".repeat(79) + "\n").repeat(50_000)
            } else {
                format!("Body {n}\n>From quoted\n")
            };
            let status = if n % 2 == 0 { "Status: RO\n" } else { "" };
            write!(
                mbox,
                "From s{n}@example.org Sat Jan  3 01:05:34 1996\n\
                 Subject: {n}\n{status}\n{body}\n"
            )
            .unwrap();
            wanted.push(format!("Subject: {n}\n\n{}", body.replace(">From", "From")));
        }
        let (_file, folder) = index(&mbox);
        assert_eq!(folder.messages.len(), 200);
        for (n, (m, want)) in folder.messages.iter().zip(&wanted).enumerate() {
            let Body::Mbox { len, .. } = m.body else {
                panic!("not a range")
            };
            assert!(len <= want.len() as u64 + 16, "message {n}: {len}");
            assert_eq!(&text(m), want, "message {n}");
            let seen = if n % 2 == 0 {
                vec!["\\Seen".to_owned()]
            } else {
                vec![]
            };
            assert_eq!(m.flags, seen, "message {n}");
        }
    }
}
