//! mbox files (one file, one folder): messages separated by `From ` lines,
//! body lines `>From `, `>>From `... unquoted by one `>` (mboxrd; mboxo
//! quotes only `From `, which reads the same), and the `Status` /
//! `X-Status` / `X-Keywords` headers mail programs keep flags in turned
//! into flags and removed, as Dovecot does.

use std::path::Path;

use super::{Body, MigrateError, SourceFolder, SourceMessage};

/// Reads the mbox at `path` as folder `name`.
pub fn read(path: &Path, name: String) -> Result<SourceFolder, MigrateError> {
    let bytes = std::fs::read(path).map_err(|e| MigrateError::io(path, e))?;
    if !bytes.is_empty() && !bytes.starts_with(b"From ") {
        return Err(MigrateError::NotMbox(path.to_owned()));
    }
    let fallback = std::fs::metadata(path)
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64);
    let messages = split(&bytes)
        .into_iter()
        .map(|(from_line, raw)| message(from_line, raw, fallback))
        .collect();
    Ok(SourceFolder {
        name,
        uid_validity: None,
        next_uid: None,
        messages,
    })
}

/// The messages of an mbox: each `From ` line and the lines up to the
/// next one (the blank line before a `From ` line belongs to the format).
fn split(bytes: &[u8]) -> Vec<(&[u8], Vec<u8>)> {
    let mut out = Vec::new();
    let mut current: Option<(&[u8], Vec<&[u8]>)> = None;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b"From ") {
            if let Some((from, lines)) = current.take() {
                out.push((from, join(lines)));
            }
            current = Some((line, Vec::new()));
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push(line);
        }
    }
    if let Some((from, lines)) = current {
        out.push((from, join(lines)));
    }
    out
}

/// The lines of one message, unquoted, without the separating blank line.
fn join(mut lines: Vec<&[u8]>) -> Vec<u8> {
    if lines.last().is_some_and(|l| *l == b"\n" || *l == b"\r\n") {
        lines.pop();
    }
    let mut raw = Vec::new();
    for line in lines {
        let quotes = line.iter().take_while(|b| **b == b'>').count();
        if quotes > 0 && line[quotes..].starts_with(b"From ") {
            raw.extend_from_slice(&line[1..]);
        } else {
            raw.extend_from_slice(line);
        }
    }
    raw
}

/// A message with its flags taken out of its status headers, and its
/// INTERNALDATE from the `From ` line (asctime form), else `fallback`.
fn message(from_line: &[u8], raw: Vec<u8>, fallback: i64) -> SourceMessage {
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
    let date = String::from_utf8_lossy(from_line);
    // `From sender Sat Jan  3 01:05:34 1996`: the last four words (the
    // weekday is left out: chrono refuses one that disagrees).
    let words: Vec<&str> = date.split_whitespace().collect();
    let internal_date = (words.len() >= 7)
        .then(|| words[words.len() - 4..].join(" "))
        .and_then(|d| chrono::NaiveDateTime::parse_from_str(&d, "%b %d %H:%M:%S %Y").ok())
        .map_or(fallback, |d| d.and_utc().timestamp());
    SourceMessage {
        uid: None,
        flags,
        internal_date,
        body: Body::Bytes(kept),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_on_from_lines_and_unquote_and_take_their_flags() {
        let mbox = b"From a@example.org Sat Jan  3 01:05:34 1996\n\
Subject: one\nStatus: RO\nX-Status: AF\nX-Keywords: todo $Label1\n\n\
>From the start\n>>From deeper\nFrom-not a separator\n\n\
From b@example.org Sun Jan  4 02:00:00 1996\nSubject: two\n\nbody\n";
        let messages: Vec<SourceMessage> = split(mbox)
            .into_iter()
            .map(|(f, raw)| message(f, raw, 7))
            .collect();
        assert_eq!(messages.len(), 2);
        let Body::Bytes(one) = &messages[0].body else {
            panic!()
        };
        assert_eq!(
            String::from_utf8_lossy(one),
            "Subject: one\n\nFrom the start\n>From deeper\nFrom-not a separator\n"
        );
        assert_eq!(
            messages[0].flags,
            ["$Label1", "\\Answered", "\\Flagged", "\\Seen", "todo"]
        );
        assert_eq!(messages[0].internal_date, 820_631_134);
        assert!(messages[1].flags.is_empty());
    }
}
