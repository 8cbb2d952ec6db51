//! Golden tests for the MIME views of FETCH (`src/imap/mime.rs`): for each
//! message of fixtures/mail and fixtures/imap, the FETCH items of
//! `mime_common::items` (BODY, BODYSTRUCTURE, ENVELOPE, header and text
//! sections, every part's body and MIME header, BINARY, missing parts) are
//! answered and encoded with imap-codec, and the transcript compared with
//! `fixtures/imap/golden/<dir>-<name>.txt`: a `C:` line per item, then our
//! response exactly as it goes on the wire.
//!
//! After a deliberate change, rewrite the goldens with
//! `FACTEUR_BLESS=1 cargo test --test mime_golden`, then review every
//! changed golden by hand (RFC 9051 §6.4.5, §7.5.2; RFC 3516) before
//! committing; tests/dovecot_mime.rs checks the same answers against
//! Dovecot.

mod mime_common;

use std::path::Path;

use mime_common::{fixtures, items, render};

#[test]
fn fetch_answers_match_goldens() {
    let bless = std::env::var_os("FACTEUR_BLESS").is_some_and(|v| v == "1");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/imap/golden");
    if bless {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut failures = Vec::new();
    for fixture in fixtures() {
        let mut transcript = Vec::new();
        for item in items(&fixture.summary) {
            transcript.extend_from_slice(format!("C: a FETCH 1 ({})\r\n", item.command).as_bytes());
            transcript.extend_from_slice(&render(&fixture, &item));
        }
        let golden = dir.join(format!("{}.txt", fixture.name.replace('/', "-")));
        if bless {
            std::fs::write(&golden, &transcript).unwrap();
            continue;
        }
        match std::fs::read(&golden) {
            Ok(expected) if expected == transcript => {}
            Ok(expected) => failures.push(format!(
                "{} differs from {} (first difference at byte {})",
                fixture.name,
                golden.display(),
                expected
                    .iter()
                    .zip(&transcript)
                    .position(|(a, b)| a != b)
                    .unwrap_or(expected.len().min(transcript.len()))
            )),
            Err(_) => failures.push(format!("{} has no golden", fixture.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(rerun with FACTEUR_BLESS=1 and review the diff)",
        failures.join("\n")
    );
}

/// Every section answer of every fixture stays inside the message, and
/// the header and text of the message make the whole message.
#[test]
fn header_and_text_make_the_message() {
    use facteur::imap::mime::section;
    use imap_codec::imap_types::fetch::Section;
    for f in fixtures() {
        let header = section(&f.raw, &f.summary, Some(&Section::Header(None))).unwrap();
        let text = section(&f.raw, &f.summary, Some(&Section::Text(None))).unwrap();
        assert_eq!([header, text].concat(), f.raw, "{}", f.name);
    }
}
