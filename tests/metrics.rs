//! `/metrics` after real traffic (issue #14 item 1): the real `facteur`
//! binary on its embedded default, an LMTP delivery (one recipient
//! accepted, one unknown), an IMAP session (a failed and a good login,
//! SELECT, FETCH, UID FETCH, a malformed FETCH, an unknown command), then
//! one scrape over HTTP, checked line by line against the Prometheus text
//! format and for the exact counts this traffic must give.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_facteur");
/// Upper bound of any wait for the server.
const WAIT: Duration = Duration::from_secs(60);

/// A child process killed when the test ends, so no server outlives it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `facteur serve` on the embedded default in `cwd`, every port chosen by
/// the kernel; returns it with its output up to `facteur: ready`.
fn serve(cwd: &Path) -> (Running, Vec<String>) {
    let mut child = Running(
        Command::new(BIN)
            .args(["serve", "--http", "127.0.0.1:0", "--lmtp", "127.0.0.1:0"])
            .args(["--imap", "127.0.0.1:0", "--imaps", "127.0.0.1:0"])
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let out = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = vec![];
    loop {
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("serve never got ready: {lines:?}"));
        let ready = line == "facteur: ready";
        lines.push(line);
        if ready {
            return (child, lines);
        }
    }
}

fn value<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {lines:#?}"))
        .trim()
}

fn addr(lines: &[String], prefix: &str) -> SocketAddr {
    value(lines, prefix).parse().unwrap()
}

/// A line-oriented client: sends a line, reads reply lines.
struct Client {
    io: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        Client {
            io: BufReader::new(s),
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.io.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "connection closed");
        line
    }

    fn send(&mut self, line: &str) {
        write!(self.io.get_mut(), "{line}\r\n").unwrap();
    }

    /// Sends `tag command`, returns the tagged answer's status word.
    fn imap(&mut self, tag: &str, command: &str) -> String {
        self.send(&format!("{tag} {command}"));
        loop {
            let line = self.line();
            if let Some(rest) = line.strip_prefix(&format!("{tag} ")) {
                return rest.split(' ').next().unwrap().to_owned();
            }
        }
    }

    /// Sends an LMTP/SMTP line, returns the reply (the last line of a
    /// multi-line one).
    fn smtp(&mut self, line: &str) -> String {
        self.send(line);
        self.reply()
    }

    fn reply(&mut self) -> String {
        loop {
            let line = self.line();
            if line.as_bytes().get(3) != Some(&b'-') {
                return line;
            }
        }
    }
}

/// One GET over HTTP/1.1; the response's content type and body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_else(|| panic!("no content type: {head}"));
    (content_type.to_owned(), body.to_owned())
}

/// Checks `text` against the Prometheus text format (version 0.0.4)
/// strictly, and returns every sample as `series -> value`, `series`
/// being the name and labels as written. Panics on any line that is not
/// a HELP, a TYPE or a sample, on a sample of a family without a TYPE, on
/// a family typed twice, on a repeated series, and on a histogram whose
/// buckets do not grow or whose `+Inf` bucket is not its count.
fn parse(text: &str) -> HashMap<String, f64> {
    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    /// `k="v",k="v"`, values with `\\`, `\"` and `\n` escapes only.
    fn labels_ok(s: &str) -> bool {
        let mut rest = s;
        while !rest.is_empty() {
            let Some((key, after)) = rest.split_once("=\"") else {
                return false;
            };
            if !is_name(key) || key.starts_with("__") {
                return false;
            }
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\' | '"' | 'n')) => {}
                        _ => return false,
                    },
                    Some((i, '"')) => break i,
                    Some((_, '\n')) | None => return false,
                    Some(_) => {}
                }
            };
            rest = &after[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.is_empty() {
                return false;
            }
        }
        true
    }
    assert!(
        text.ends_with('\n'),
        "the exposition must end with a newline"
    );
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            let name = help.split(' ').next().unwrap();
            assert!(is_name(name), "HELP of a bad name: {line}");
            continue;
        }
        if let Some(typed) = line.strip_prefix("# TYPE ") {
            let (name, kind) = typed.split_once(' ').unwrap();
            assert!(is_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "typed twice: {line}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect(line);
                assert!(labels_ok(labels), "bad labels: {line}");
                name
            }
            None => series,
        };
        assert!(is_name(name), "bad name: {line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                let base = name.strip_suffix(s)?;
                (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "no TYPE before {line}");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "repeated: {line}"
        );
    }
    // Histograms: buckets cumulative, `+Inf` equal to `_count`.
    for (family, _) in types.iter().filter(|(_, k)| *k == "histogram") {
        let mut series: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
        for (s, v) in &samples {
            let Some(labels) = s.strip_prefix(&format!("{family}_bucket{{")) else {
                continue;
            };
            let labels = labels.strip_suffix('}').unwrap();
            let (mut le, mut others) = (None, vec![]);
            for pair in labels.split(',') {
                match pair.strip_prefix("le=") {
                    Some(b) => le = Some(b.trim_matches('"').to_owned()),
                    None => others.push(pair),
                }
            }
            let le = le.unwrap_or_else(|| panic!("bucket without le: {s}"));
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            series.entry(others.join(",")).or_default().push((le, *v));
        }
        for (labels, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family}{{{labels}}}: buckets not cumulative: {buckets:?}"
            );
            let inf = buckets.last().unwrap();
            assert_eq!(inf.0, f64::INFINITY, "{family}{{{labels}}}: no +Inf bucket");
            let count = if labels.is_empty() {
                format!("{family}_count")
            } else {
                format!("{family}_count{{{labels}}}")
            };
            assert_eq!(samples.get(&count), Some(&inf.1), "{count}");
        }
    }
    samples
}

#[test]
fn metrics_count_real_imap_and_lmtp_traffic() {
    let cwd = tempfile::tempdir().unwrap();
    let (_child, lines) = serve(cwd.path());
    let password = value(&lines, "password:").to_owned();
    let http = addr(&lines, "facteur: http listening on ");
    let imap = addr(&lines, "facteur: imap (starttls) listening on ");
    let lmtp = addr(&lines, "facteur: lmtp listening on ");

    // LMTP: one recipient accepted, one unknown, one message delivered.
    let mut l = Client::connect(lmtp);
    assert!(l.reply().starts_with("220"));
    assert!(l.smtp("LHLO test").starts_with("250"));
    assert!(l.smtp("MAIL FROM:<a@example.org>").starts_with("250"));
    assert!(l.smtp("RCPT TO:<demo@localhost>").starts_with("250"));
    assert!(l.smtp("RCPT TO:<nobody@localhost>").starts_with("550"));
    assert!(l.smtp("DATA").starts_with("354"));
    l.send("Subject: counted\r\n\r\nHello.\r\n.");
    assert!(l.reply().starts_with("250"));
    assert!(l.smtp("QUIT").starts_with("221"));

    // IMAP: a failed and a good login (which drains the delivery),
    // commands answered OK, NO and BAD.
    let mut c = Client::connect(imap);
    assert!(c.line().starts_with("* OK"));
    assert_eq!(c.imap("a", "LOGIN demo wrong-password"), "NO");
    assert_eq!(c.imap("b", &format!("LOGIN demo \"{password}\"")), "OK");
    assert_eq!(c.imap("c", "SELECT INBOX"), "OK");
    assert_eq!(c.imap("d", "FETCH 1 (FLAGS)"), "OK");
    assert_eq!(c.imap("e", "uid fetch 1:* (UID)"), "OK");
    assert_eq!(c.imap("f", "FETCH garbage"), "BAD");
    assert_eq!(c.imap("g", "XYZZY mailbox-name-not-a-label"), "BAD");
    assert_eq!(c.imap("h", "SELECT no-such-mailbox"), "NO");

    // Scraped with the IMAP session still open.
    let (content_type, body) = get(http, "/metrics");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let samples = parse(&body);
    let at = |series: &str| -> f64 {
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in\n{body}"))
    };
    for (series, expected) in [
        (r#"facteur_connections_total{protocol="imap"}"#, 1.0),
        (r#"facteur_connections_total{protocol="lmtp"}"#, 1.0),
        (r#"facteur_connections_open{protocol="imap"}"#, 1.0),
        (r#"facteur_connections_open{protocol="http"}"#, 1.0),
        (r#"facteur_imap_logins_total{outcome="ok"}"#, 1.0),
        (r#"facteur_imap_logins_total{outcome="failed"}"#, 1.0),
        (
            r#"facteur_imap_commands_total{command="LOGIN",outcome="no"}"#,
            1.0,
        ),
        (
            r#"facteur_imap_commands_total{command="LOGIN",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"facteur_imap_commands_total{command="SELECT",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"facteur_imap_commands_total{command="SELECT",outcome="no"}"#,
            1.0,
        ),
        (
            r#"facteur_imap_commands_total{command="FETCH",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"facteur_imap_commands_total{command="FETCH",outcome="bad"}"#,
            1.0,
        ),
        (
            r#"facteur_imap_commands_total{command="UID FETCH",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"facteur_imap_commands_total{command="other",outcome="bad"}"#,
            1.0,
        ),
        (
            r#"facteur_imap_command_duration_seconds_count{command="SELECT"}"#,
            2.0,
        ),
        (
            r#"facteur_imap_command_duration_seconds_count{command="LOGIN"}"#,
            2.0,
        ),
        (r#"facteur_lmtp_recipients_total{outcome="accepted"}"#, 1.0),
        (r#"facteur_lmtp_recipients_total{outcome="unknown"}"#, 1.0),
        (r#"facteur_lmtp_deliveries_total{outcome="delivered"}"#, 1.0),
        ("facteur_lmtp_delivery_duration_seconds_count", 1.0),
        (
            r#"facteur_incoming_records_total{outcome="delivered"}"#,
            1.0,
        ),
        ("facteur_incoming_drain_lag_seconds_count", 1.0),
        ("facteur_unlocked_accounts", 1.0),
        (r#"facteur_damage_found_total{kind="damaged_object"}"#, 0.0),
        (r#"facteur_damage_found_total{kind="lost_op"}"#, 0.0),
        (
            r#"facteur_damage_found_total{kind="quarantined_record"}"#,
            0.0,
        ),
        ("facteur_http_requests_total", 1.0),
    ] {
        assert_eq!(at(series), expected, "{series} in\n{body}");
    }
    // LOGIN drained the record; a drain racing it (SELECT's, the
    // poller's) may have seen it too, before its delete, and only deleted it.
    let drains = at("facteur_incoming_queue_depth_count");
    assert!((1.0..=2.0).contains(&drains), "{body}");
    assert_eq!(at("facteur_incoming_queue_depth_sum"), drains, "{body}");
    // INBOX at least (the mailbox list may be counted too).
    assert!(at("facteur_open_mailboxes") >= 1.0, "{body}");
    // The store was called: the delivery PUT the body and its record,
    // LOGIN read the keyring; each call timed once.
    assert!(at(r#"facteur_store_calls_total{op="put",outcome="ok"}"#) >= 2.0);
    assert!(at(r#"facteur_store_calls_total{op="get",outcome="ok"}"#) >= 1.0);
    for op in ["put", "get", "list"] {
        let calls: f64 = samples
            .iter()
            .filter(|(s, _)| s.starts_with(&format!("facteur_store_calls_total{{op=\"{op}\",")))
            .map(|(_, v)| v)
            .sum();
        let timed = at(&format!(
            "facteur_store_call_duration_seconds_count{{op=\"{op}\"}}"
        ));
        assert_eq!(calls, timed, "{op}: every call timed once");
    }
    // Labels are bounded: nothing the client chose appears.
    for chosen in [
        "XYZZY",
        "mailbox-name-not-a-label",
        "no-such-mailbox",
        "nobody",
        "demo",
    ] {
        assert!(!body.contains(chosen), "{chosen} leaked into\n{body}");
    }

    // After LOGOUT the connection no longer counts as open.
    assert_eq!(c.imap("i", "LOGOUT"), "OK");
    let mut closed = false;
    for _ in 0..200 {
        let samples = parse(&get(http, "/metrics").1);
        if samples.get(r#"facteur_connections_open{protocol="imap"}"#) == Some(&0.0) {
            assert_eq!(
                samples.get(r#"facteur_imap_commands_total{command="LOGOUT",outcome="ok"}"#),
                Some(&1.0)
            );
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(closed, "the IMAP connection still counts as open");
}
