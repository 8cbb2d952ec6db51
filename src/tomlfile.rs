//! Shared handling of the TOML files Facteur reads (configuration, users
//! file): parse errors become one line naming the place and the problem,
//! so a mistake shows as a single clear line on the command line.

/// `line L, column C: message` for a parse error in `text`.
pub fn describe_error(err: &toml::de::Error, text: &str) -> String {
    let message = err.message().trim_end().replace('\n', " ");
    match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_line_and_column_on_one_line() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            a: u32,
        }
        let text = "a = 1\nb = 2\n";
        let err = toml::from_str::<T>(text).unwrap_err();
        let line = describe_error(&err, text);
        assert!(
            line.starts_with("line 2, column 1: unknown field `b`"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
