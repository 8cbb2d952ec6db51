//! Golden tests for the message summary (`src/mailbox/summary.rs`): each
//! `fixtures/mail/<name>.eml` is normalised to CRLF, summarised, and the
//! summary compared with `fixtures/mail/<name>.summary.json` (pretty JSON).
//!
//! After a deliberate change, rewrite the goldens with
//! `FACTEUR_BLESS=1 cargo test --test summary_golden`, then review every
//! changed golden by hand against RFC 9051 §7.5.2 before committing: a
//! golden must be right, not merely what the code printed.

use std::path::{Path, PathBuf};

use facteur::mailbox::summary::{MessageSummary, normalize_crlf, summarize};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mail");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures/mail exists")
        .map(|e| e.expect("readable fixtures directory").path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "fixture corpus went missing");
    files
}

#[test]
fn summaries_match_goldens() {
    let bless = std::env::var_os("FACTEUR_BLESS").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    for eml in fixtures() {
        let raw = std::fs::read(&eml).unwrap();
        let stored = normalize_crlf(&raw);
        let summary = summarize(&stored);
        let json = serde_json::to_string_pretty(&summary).unwrap() + "\n";

        // The stored form must round-trip.
        let back: MessageSummary = serde_json::from_str(&json).unwrap();
        assert_eq!(back, summary, "{} does not round-trip", eml.display());

        let golden = eml.with_extension("summary.json");
        if bless {
            std::fs::write(&golden, &json).unwrap();
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Ok(expected) if expected == json => {}
            Ok(_) => failures.push(format!("{} differs from its golden", eml.display())),
            Err(_) => failures.push(format!("{} has no golden", eml.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(rerun with FACTEUR_BLESS=1 and review the diff)",
        failures.join("\n")
    );
}

/// Every prefix of every fixture (a message cut anywhere) still gets a
/// summary whose offsets stay inside the message.
#[test]
fn truncated_fixtures_never_panic() {
    for eml in fixtures() {
        let raw = std::fs::read(&eml).unwrap();
        let stored = normalize_crlf(&raw).into_owned();
        let step = (stored.len() / 1500).max(1);
        for cut in (0..=stored.len()).step_by(step) {
            let s = summarize(&stored[..cut]);
            assert_eq!(s.size, cut as u64);
            assert!(s.header_bytes <= s.size);
            assert_eq!(s.body.body_end, s.size, "{} cut at {cut}", eml.display());
        }
    }
}
