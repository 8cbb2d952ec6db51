//! Mailbox names as the list stores them: UTF-8, `/` as the hierarchy
//! delimiter, INBOX spelt in capitals (RFC 9051 §5.1: "INBOX" is
//! case-insensitive, other names are case-sensitive). The IMAP layer turns
//! modified UTF-7 (RFC 9051 §5.1.3) into UTF-8 before calling in here, and
//! back for clients without UTF8=ACCEPT.

/// The hierarchy delimiter (RFC 9051 §5.1.1), as LIST reports it.
pub const DELIMITER: char = '/';

/// Longest name accepted, in bytes of UTF-8. Names shown with a
/// collision suffix (`Name (2)`) may exceed it by a few bytes.
pub const MAX_NAME_LEN: usize = 512;

/// The name of the primary mailbox, in its stored spelling.
pub const INBOX: &str = "INBOX";

/// Why a mailbox name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty mailbox name")]
    Empty,
    #[error("mailbox name longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    #[error("empty hierarchy level in mailbox name (leading, trailing or doubled '/')")]
    EmptySegment,
    #[error("control character in mailbox name")]
    Control,
}

/// Validates a name and returns its stored form: a first level spelt
/// `inbox` in any case becomes `INBOX` (RFC 9051 §5.1; its inferiors keep
/// their case: `inbox/Work` is `INBOX/Work`). Refused: the empty name,
/// more than [`MAX_NAME_LEN`] bytes, an empty level (`a//b`, `/a`, `a/`),
/// control characters (C0, DEL, C1). `%` and `*` are allowed: RFC 9051
/// §5.1 calls them valid if inadvisable.
pub fn normalize(name: &str) -> Result<String, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control);
    }
    if name.split(DELIMITER).any(str::is_empty) {
        return Err(NameError::EmptySegment);
    }
    let first = name.split(DELIMITER).next().unwrap_or(name);
    if first.eq_ignore_ascii_case(INBOX) && first != INBOX {
        return Ok(format!("{INBOX}{}", &name[first.len()..]));
    }
    Ok(name.to_owned())
}

/// Whether `name` (stored form) is INBOX itself.
pub fn is_inbox(name: &str) -> bool {
    name == INBOX
}

/// The proper superiors of a stored name, shortest first:
/// `a/b/c` gives `a`, `a/b`.
pub fn superiors(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices(DELIMITER).map(|(at, _)| &name[..at])
}

/// Whether `name` is a strict inferior of `parent` (`a/b` of `a`, not
/// `ab` of `a`).
pub fn is_inferior(name: &str, parent: &str) -> bool {
    name.len() > parent.len()
        && name.starts_with(parent)
        && name[parent.len()..].starts_with(DELIMITER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_and_inbox_is_case_insensitive() {
        let long = "x".repeat(MAX_NAME_LEN + 1);
        let table: &[(&str, Result<&str, NameError>)] = &[
            ("Work", Ok("Work")),
            ("inbox", Ok("INBOX")),
            ("InBoX/Sub", Ok("INBOX/Sub")),
            ("inboxes", Ok("inboxes")),
            ("Travail/Été", Ok("Travail/Été")),
            ("50% off*", Ok("50% off*")),
            ("", Err(NameError::Empty)),
            ("/a", Err(NameError::EmptySegment)),
            ("a/", Err(NameError::EmptySegment)),
            ("a//b", Err(NameError::EmptySegment)),
            ("/", Err(NameError::EmptySegment)),
            ("a\tb", Err(NameError::Control)),
            ("a\u{0}", Err(NameError::Control)),
            ("a\u{7f}", Err(NameError::Control)),
            ("a\u{85}", Err(NameError::Control)),
            (&long, Err(NameError::TooLong)),
        ];
        for (input, want) in table {
            let got = normalize(input);
            assert_eq!(got.as_deref().map_err(Clone::clone), *want, "{input:?}");
        }
        assert!(normalize(&"x".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn hierarchy_helpers() {
        assert_eq!(superiors("a/b/c").collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(superiors("a").count(), 0);
        assert!(is_inferior("a/b", "a"));
        assert!(is_inferior("a/b/c", "a"));
        assert!(!is_inferior("ab", "a"));
        assert!(!is_inferior("a", "a"));
    }
}
