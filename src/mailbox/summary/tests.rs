//! Unit tests of the summary: exact offsets, line counts, defaults,
//! addresses, parameters, caps, and no panics on any input.

use super::*;
use proptest::prelude::*;

fn crlf(s: &str) -> Vec<u8> {
    normalize_crlf(s.as_bytes()).into_owned()
}

fn children(p: &BodyPart) -> &[BodyPart] {
    match &p.kind {
        PartKind::Multipart(c) => c,
        other => panic!("not a multipart: {other:?}"),
    }
}

fn inner(p: &BodyPart) -> &Encapsulated {
    match &p.kind {
        PartKind::Message(m) => m,
        other => panic!("not a message: {other:?}"),
    }
}

fn slice(raw: &[u8], from: u64, to: u64) -> &str {
    std::str::from_utf8(&raw[from as usize..to as usize]).unwrap()
}

fn mime(raw: &[u8], p: &BodyPart) -> String {
    slice(raw, p.header_start, p.body_start).to_owned()
}

fn body(raw: &[u8], p: &BodyPart) -> String {
    slice(raw, p.body_start, p.body_end).to_owned()
}

const NESTED: &str = "From: a@example.org\n\
Subject: nested\n\
Content-Type: multipart/mixed; boundary=\"o\"\n\
\n\
preamble\n\
--o\n\
Content-Type: text/plain\n\
\n\
one\n\
two\n\
\n\
--o\n\
Content-Type: message/rfc822\n\
\n\
From: b@example.org\n\
Subject: inner\n\
Content-Type: multipart/alternative; boundary=i\n\
\n\
--i\n\
\n\
plain\n\
--i\n\
Content-Type: text/html\n\
\n\
<b>html</b>\n\
--i--\n\
--o--\n\
epilogue\n";

#[test]
fn nested_offsets_slice_exactly() {
    let raw = crlf(NESTED);
    let s = summarize(&raw);
    assert_eq!(s.size, raw.len() as u64);
    assert_eq!(s.body.header_start, 0);
    assert_eq!(s.body.body_start, s.header_bytes);
    assert!(mime(&raw, &s.body).ends_with("boundary=\"o\"\r\n\r\n"));
    assert_eq!(s.body.body_end, s.size);

    let parts = children(&s.body);
    assert_eq!(parts.len(), 2);
    // BODY[1.MIME] and BODY[1]: the CRLF before "--o" is the boundary's.
    assert_eq!(mime(&raw, &parts[0]), "Content-Type: text/plain\r\n\r\n");
    assert_eq!(body(&raw, &parts[0]), "one\r\ntwo\r\n");
    assert_eq!(parts[0].size(), 10);
    assert_eq!(parts[0].lines, 2);

    // BODY[2.MIME], BODY[2] (the whole encapsulated message).
    let msg = &parts[1];
    assert_eq!(mime(&raw, msg), "Content-Type: message/rfc822\r\n\r\n");
    assert!(body(&raw, msg).starts_with("From: b@example.org\r\n"));
    // As Dovecot: a boundary on the first line after another boundary line
    // takes no newline, so the CRLF ending "--i--" stays in the body.
    assert!(body(&raw, msg).ends_with("--i--\r\n"));
    assert_eq!(msg.lines, body(&raw, msg).matches('\n').count() as u64);
    let enc = inner(msg);
    assert_eq!(enc.envelope.subject, Some("inner".into()));
    // BODY[2.HEADER] and BODY[2.TEXT].
    assert_eq!(enc.body.header_start, msg.body_start);
    assert!(mime(&raw, &enc.body).starts_with("From: b@example.org\r\n"));
    assert!(mime(&raw, &enc.body).ends_with("boundary=i\r\n\r\n"));
    assert_eq!(enc.body.body_end, msg.body_end);

    // BODY[2.1] (no header: text/plain default) and BODY[2.2].
    let alt = children(&enc.body);
    assert_eq!(alt.len(), 2);
    assert_eq!(mime(&raw, &alt[0]), "\r\n");
    assert_eq!(body(&raw, &alt[0]), "plain");
    assert_eq!(alt[0].lines, 0);
    assert_eq!(alt[0].param("charset"), Some(&"us-ascii".into()));
    assert_eq!(mime(&raw, &alt[1]), "Content-Type: text/html\r\n\r\n");
    assert_eq!(body(&raw, &alt[1]), "<b>html</b>");
}

#[test]
fn boundary_on_first_body_line_leaves_empty_body() {
    let raw = crlf(
        "Content-Type: multipart/mixed; boundary=x\n\n--x\n\n--x\nContent-Type: text/plain\n\nb\n--x--\n",
    );
    let s = summarize(&raw);
    let parts = children(&s.body);
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].size(), 0);
    assert_eq!(body(&raw, &parts[1]), "b");
}

#[test]
fn header_cut_by_enclosing_boundary() {
    let raw = crlf(
        "Content-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: text/plain\n--x\n\nz\n--x--\n",
    );
    let s = summarize(&raw);
    let parts = children(&s.body);
    assert_eq!(parts.len(), 2);
    // The CRLF before "--x" belongs to the boundary, not to the header.
    assert_eq!(mime(&raw, &parts[0]), "Content-Type: text/plain");
    assert_eq!(parts[0].size(), 0);
    assert_eq!(body(&raw, &parts[1]), "z");
}

#[test]
fn missing_close_delimiter_runs_to_the_end() {
    let raw = crlf("Content-Type: multipart/mixed; boundary=x\n\n--x\n\nlast\nline\n");
    let s = summarize(&raw);
    let parts = children(&s.body);
    assert_eq!(body(&raw, &parts[0]), "last\r\nline\r\n");
    assert_eq!(parts[0].lines, 2);
}

#[test]
fn defaults_and_encodings() {
    let s = summarize(&crlf("Subject: x\n\nbody\n"));
    assert_eq!(
        (s.body.media_type.as_str(), s.body.subtype.as_str()),
        ("text", "plain")
    );
    assert_eq!(
        s.body.params,
        vec![("charset".to_owned(), "us-ascii".into())]
    );
    assert_eq!(s.body.encoding, "7bit");

    let s = summarize(&crlf(
        "Content-Type: TEXT/HTML; Charset=\"UTF-8\"\nContent-Transfer-Encoding: Base64\n\nQQ==\n",
    ));
    assert_eq!(
        (s.body.media_type.as_str(), s.body.subtype.as_str()),
        ("text", "html")
    );
    assert_eq!(s.body.params, vec![("Charset".to_owned(), "UTF-8".into())]);
    assert_eq!(s.body.encoding, "base64");

    // Not a token: Dovecot's test expects "7bit".
    let s = summarize(&crlf("Content-Transfer-Encoding: ?invalid\n\nx\n"));
    assert_eq!(s.body.encoding, "7bit");

    // No subtype: RFC 2045 §5.2 default.
    let s = summarize(&crlf("Content-Type: image\n\nx\n"));
    assert_eq!(
        (s.body.media_type.as_str(), s.body.subtype.as_str()),
        ("text", "plain")
    );
}

#[test]
fn content_type_parameters() {
    let s = summarize(&crlf(
        "Content-Type: text/x-myown (comment); charset=us-ascii; foo=\"quoted\\\"string\"\n\
         \x20; name=unquoted name.txt\n\nx\n",
    ));
    assert_eq!(
        s.body.params,
        vec![
            ("charset".to_owned(), "us-ascii".into()),
            ("foo".to_owned(), "quoted\"string".into()),
            ("name".to_owned(), "unquoted".into()),
        ]
    );
}

/// An unquoted value is an RFC 2045 §5.1 token; what follows it up to the
/// next `;` is dropped, as Dovecot does.
#[test]
fn unquoted_parameter_values_are_tokens() {
    let params = |v: &str| Lexer::new(v.as_bytes()).params();
    assert_eq!(
        params("; charset=us-ascii format=flowed; delsp=yes"),
        vec![
            ("charset".to_owned(), "us-ascii".into()),
            ("delsp".to_owned(), "yes".into()),
        ]
    );
    assert_eq!(
        params("; boundary=----=_Part_1; a=x@y; b=c(comment)d; c = \"q\" junk; e=; f"),
        vec![
            ("boundary".to_owned(), "----".into()),
            ("a".to_owned(), "x".into()),
            ("b".to_owned(), "c".into()),
            ("c".to_owned(), "q".into()),
            ("e".to_owned(), "".into()),
        ]
    );
}

#[test]
fn rfc2231_continuations_are_joined() {
    let params = |v: &str| Lexer::new(v.as_bytes()).params();
    assert_eq!(
        params("; title*0=\"a \"; title*1=b"),
        vec![("title".to_owned(), "a b".into())]
    );
    assert_eq!(
        params("; a=1; title*1*=%20end; title*0*=us-ascii'en'x; b=2"),
        vec![
            ("a".to_owned(), "1".into()),
            ("title*".to_owned(), "us-ascii'en'x%20end".into()),
            ("b".to_owned(), "2".into()),
        ]
    );
    assert_eq!(
        params("; f*=utf-8''%C3%A9"),
        vec![("f*".to_owned(), "utf-8''%C3%A9".into())]
    );
    // A plain segment inside an extended value is %-encoded.
    assert_eq!(
        params("; f*0*=utf-8''a; f*1=\"b c\""),
        vec![("f*".to_owned(), "utf-8''ab%20c".into())]
    );
    // A gap ends the value.
    assert_eq!(params("; f*0=a; f*2=c"), vec![("f".to_owned(), "a".into())]);
}

fn addr(name: Option<&str>, mailbox: Option<&str>, host: Option<&str>) -> Address {
    Address {
        name: name.map(Into::into),
        adl: None,
        mailbox: mailbox.map(Into::into),
        host: host.map(Into::into),
    }
}

#[test]
fn addresses() {
    let p = |v: &str| parse_addresses(v.as_bytes());
    assert_eq!(
        p("\"Doe, Jane\" <jane@example.org>, bob@example.net (Bob B.)"),
        vec![
            addr(Some("Doe, Jane"), Some("jane"), Some("example.org")),
            addr(Some("Bob B."), Some("bob"), Some("example.net")),
        ]
    );
    assert_eq!(
        p("John Q. Public <john.q@example.org>"),
        vec![addr(
            Some("John Q. Public"),
            Some("john.q"),
            Some("example.org")
        )]
    );
    assert_eq!(
        p("=?UTF-8?Q?Andr=C3=A9?= <andre@example.org>"),
        vec![addr(
            Some("=?UTF-8?Q?Andr=C3=A9?="),
            Some("andre"),
            Some("example.org")
        )]
    );
    assert_eq!(
        p("undisclosed-recipients:;"),
        vec![
            addr(None, Some("undisclosed-recipients"), None),
            addr(None, None, None)
        ]
    );
    assert_eq!(
        p("g: a@x, b@y"),
        vec![
            addr(None, Some("g"), None),
            addr(None, Some("a"), Some("x")),
            addr(None, Some("b"), Some("y")),
            addr(None, None, None),
        ]
    );
    assert_eq!(
        p("postmaster"),
        vec![addr(None, Some("postmaster"), Some(MISSING_DOMAIN))]
    );
    assert_eq!(
        p("first.last"),
        vec![addr(None, Some("first.last"), Some(MISSING_DOMAIN))]
    );
    // A display name alone is a name, not a mailbox made of its words.
    let name_only = |n: &str| addr(Some(n), Some(MISSING_MAILBOX), Some(MISSING_DOMAIN));
    assert_eq!(p("Someone Else"), vec![name_only("Someone Else")]);
    assert_eq!(
        p("\"Quoted\", x@y, J. R. Bob"),
        vec![
            name_only("Quoted"),
            addr(None, Some("x"), Some("y")),
            name_only("J. R. Bob")
        ]
    );
    assert_eq!(
        p("\"a b\"@example.org"),
        vec![addr(None, Some("\"a b\""), Some("example.org"))]
    );
    assert_eq!(p("<>"), vec![addr(None, Some(""), Some(""))]);
    assert_eq!(p(""), vec![]);
    assert_eq!(p(" , ,"), vec![]);
    let routed = &p("<@a.example,@b.example:c@d.example>")[0];
    assert_eq!(routed.adl, Some("@a.example,@b.example".into()));
    assert_eq!(routed.mailbox, Some("c".into()));
}

#[test]
fn sender_and_reply_to_default_to_from() {
    let s = summarize(&crlf(
        "From: a@x\nSender:\nSubject:  =?UTF-8?Q?=C3=A9?=  \n\n",
    ));
    assert_eq!(s.envelope.sender, s.envelope.from);
    assert_eq!(s.envelope.reply_to, s.envelope.from);
    assert_eq!(s.envelope.subject, Some("=?UTF-8?Q?=C3=A9?=".into()));
    assert!(
        s.search_headers
            .contains(&("Subject".to_owned(), "é".to_owned()))
    );
}

#[test]
fn sent_date_with_and_without_seconds() {
    assert_eq!(
        parse_date(b"Fri, 14 Jun 2024 16:00:00 +0000"),
        Some(1718380800)
    );
    assert_eq!(parse_date(b"14 Jun 2024 16:00 GMT"), Some(1718380800));
    assert_eq!(parse_date(b"14 Jun 2024 18:00 +0200"), Some(1718380800));
    assert_eq!(parse_date(b"garbage"), None);
}

#[test]
fn normalize_crlf_cases() {
    assert!(matches!(normalize_crlf(b"a\r\nb\r\n"), Cow::Borrowed(_)));
    // A bare CR is data, as Dovecot keeps it.
    assert!(matches!(normalize_crlf(b"a\rb\r\n\r"), Cow::Borrowed(_)));
    assert_eq!(&*normalize_crlf(b"a\nb\rc\r\nd\r"), b"a\r\nb\rc\r\nd\r");
    assert_eq!(&*normalize_crlf(b"\n\r"), b"\r\n\r");
    assert_eq!(&*normalize_crlf(b""), b"");
    // CR CR LF (and more CRs) is one line end.
    assert_eq!(&*normalize_crlf(b"a\r\r\nb\r\r\r\n\r\n"), b"a\r\nb\r\n\r\n");
    assert_eq!(&*normalize_crlf(b"\r\r\n"), b"\r\n");
}

/// A literal8 keeps the bodies of its `binary` parts; everything else is
/// normalised as usual.
#[test]
fn binary_parts_keep_their_line_ends() {
    let raw = b"Subject: b\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\
        Content-Transfer-Encoding: binary\n\n\x00\n\r\r\n\r\n--b\n\
        Content-Transfer-Encoding: BINARY\n\nx\ny\n--b\n\ntext\nz\r\r\n--b--\n";
    let kept = normalize_line_ends(raw, LineEnds::KeepBinaryParts);
    assert_eq!(
        &*kept,
        &b"Subject: b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
        Content-Transfer-Encoding: binary\r\n\r\n\x00\n\r\r\n\r\n--b\r\n\
        Content-Transfer-Encoding: BINARY\r\n\r\nx\ny\r\n--b\r\n\r\ntext\r\nz\r\n--b--\r\n"[..]
    );
    let s = summarize(&kept);
    let parts = children(&s.body);
    assert_eq!(
        &kept[parts[0].body_start as usize..parts[0].body_end as usize],
        b"\x00\n\r\r\n"
    );
    assert_eq!(
        &kept[parts[1].body_start as usize..parts[1].body_end as usize],
        b"x\ny"
    );
    // As a literal: everything normalised.
    let all = normalize_line_ends(raw, LineEnds::Crlf);
    assert!(all.windows(2).all(|w| w[1] != b'\n' || w[0] == b'\r'));
    assert!(!all.windows(3).any(|w| w == b"\r\r\n"));
}

#[test]
fn preview_prefers_plain_and_strips_html() {
    let raw = crlf(
        "Content-Type: multipart/alternative; boundary=b\n\n--b\nContent-Type: text/html\n\n<p>Hello   <b>html</b></p>\n--b\nContent-Type: text/plain\n\nHello\n\n  plain\n--b--\n",
    );
    assert_eq!(summarize(&raw).preview, "Hello plain");
    let raw =
        crlf("Content-Type: text/html\n\n<html><body><p>Only <i>html</i></p></body></html>\n");
    assert_eq!(summarize(&raw).preview, "Only html");
    let long = "x".repeat(1000);
    assert_eq!(
        summarize(&crlf(&format!("\n{long}")))
            .preview
            .chars()
            .count(),
        PREVIEW_CHARS
    );
}

#[test]
fn raw_text_serialisation() {
    let text = RawText::from("héllo");
    assert_eq!(serde_json::to_string(&text).unwrap(), "\"héllo\"");
    let bytes = RawText(vec![0xe9, b'a']);
    let json = serde_json::to_string(&bytes).unwrap();
    assert_eq!(json, "{\"b64\":\"6WE=\"}");
    assert_eq!(serde_json::from_str::<RawText>(&json).unwrap(), bytes);
    // A key other than b64 is ignored; a missing or repeated b64, bad
    // base64 or another JSON type is an error, not an empty text. (The
    // untagged enum this visitor replaced also took `["<base64>"]`, a form
    // nothing writes.)
    assert_eq!(
        serde_json::from_str::<RawText>(r#"{"x":1,"b64":"6WE="}"#).unwrap(),
        bytes
    );
    for bad in [
        r#"{}"#,
        r#"{"b64":"6WE=","b64":"6WE="}"#,
        r#"{"b64":"not base64!"}"#,
        "12",
        "null",
        "[\"6WE=\"]",
    ] {
        assert!(serde_json::from_str::<RawText>(bad).is_err(), "{bad}");
    }
    // A string with escapes (not borrowed from the input).
    assert_eq!(
        serde_json::from_str::<RawText>(r#""a\r\nb""#).unwrap(),
        RawText::from("a\r\nb")
    );
}

/// Summaries with every large part filled: encapsulated messages, 8-bit
/// headers (RawText in base64), parameters, a preview.
fn rich_summaries() -> Vec<MessageSummary> {
    let latin1 = [
        &b"From: \xe9t\xe9 <a@example.org>\r\nTo: b@example.org, c@example.org\r\n"[..],
        b"Subject: caf\xe9\r\nDate: Tue, 1 Jul 2025 10:00:00 +0200\r\n",
        b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nd\xe9j\xe0 vu\r\n",
    ]
    .concat();
    vec![
        summarize(&crlf(NESTED)),
        summarize(&latin1),
        summarize(&crlf("Subject: short\n\nhello\n")),
        summarize(b""),
    ]
}

#[test]
fn decoding_some_parts_reads_exactly_those() {
    let all = Parts::ALL;
    let singles = [
        Parts {
            header: true,
            ..Parts::NONE
        },
        Parts {
            envelope: true,
            ..Parts::NONE
        },
        Parts {
            body: true,
            ..Parts::NONE
        },
        Parts {
            search_headers: true,
            ..Parts::NONE
        },
        Parts {
            preview: true,
            ..Parts::NONE
        },
    ];
    for full in rich_summaries() {
        let json = serde_json::to_vec(&full).unwrap();
        assert_eq!(MessageSummary::decode(&json, all).unwrap(), full);
        let empty = MessageSummary::decode(&json, Parts::NONE).unwrap();
        // Every combination of parts: asked ones equal the whole read's,
        // the others empty, the scalars always there.
        for mask in 0..32u32 {
            let parts = singles
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .fold(Parts::NONE, |acc, (_, p)| acc.and(*p));
            let got = MessageSummary::decode(&json, parts).unwrap();
            assert_eq!(got.size, full.size);
            assert_eq!(got.header_bytes, full.header_bytes);
            assert_eq!(got.sent_date, full.sent_date);
            assert_eq!(got.has_attachments, full.has_attachments);
            let pick = |asked: bool| if asked { &full } else { &empty };
            assert_eq!(got.header, pick(parts.header).header, "{parts:?}");
            assert_eq!(got.envelope, pick(parts.envelope).envelope, "{parts:?}");
            assert_eq!(got.body, pick(parts.body).body, "{parts:?}");
            assert_eq!(
                got.search_headers,
                pick(parts.search_headers).search_headers
            );
            assert_eq!(got.preview, pick(parts.preview).preview, "{parts:?}");
        }
        let none = &empty;
        assert!(none.header.is_empty() && none.search_headers.is_empty());
        assert_eq!(none.envelope, Envelope::default());
        assert_eq!(
            (none.body.media_type.as_str(), none.body.subtype.as_str()),
            ("text", "plain")
        );
        assert!(matches!(none.body.kind, PartKind::Leaf) && none.preview.is_empty());
    }
}

#[test]
fn decoding_some_parts_still_checks_what_it_reads() {
    let full = summarize(&crlf(NESTED));
    let mut value = serde_json::to_value(&full).unwrap();
    value.as_object_mut().unwrap().remove("envelope");
    let no_envelope = serde_json::to_vec(&value).unwrap();
    let envelope = Parts {
        envelope: true,
        ..Parts::NONE
    };
    let search = Parts {
        search_headers: true,
        ..Parts::NONE
    };
    // Asked for and missing: an error, as a whole read gives.
    assert!(MessageSummary::decode(&no_envelope, envelope).is_err());
    assert!(MessageSummary::decode(&no_envelope, Parts::ALL).is_err());
    // Not asked for: not needed.
    assert!(MessageSummary::decode(&no_envelope, search).is_ok());
    // A scalar is always needed; a skipped part must still be valid JSON;
    // nothing may follow the object; unknown fields are ignored.
    value.as_object_mut().unwrap().remove("size");
    assert!(MessageSummary::decode(&serde_json::to_vec(&value).unwrap(), search).is_err());
    let mut json = serde_json::to_vec(&full).unwrap();
    let cut = json.len() - 2;
    assert!(MessageSummary::decode(&json[..cut], search).is_err());
    json.extend_from_slice(b" x");
    assert!(MessageSummary::decode(&json, search).is_err());
    // A field written twice is an error, read or skipped, as for a whole
    // read.
    let text = String::from_utf8(serde_json::to_vec(&full).unwrap()).unwrap();
    let whole: serde_json::Value = serde_json::from_str(&text).unwrap();
    for name in ["size", "envelope", "preview"] {
        let twice = format!("{{\"{name}\":{},{}", whole[name], &text[1..]);
        assert!(
            MessageSummary::decode(twice.as_bytes(), search).is_err(),
            "{name}"
        );
        assert!(
            MessageSummary::decode(twice.as_bytes(), Parts::ALL).is_err(),
            "{name}"
        );
    }
    let mut extra = serde_json::to_value(&full).unwrap();
    extra
        .as_object_mut()
        .unwrap()
        .insert("later".into(), serde_json::json!({"a": [1]}));
    let extra = serde_json::to_vec(&extra).unwrap();
    assert_eq!(
        MessageSummary::decode(&extra, search)
            .unwrap()
            .search_headers,
        full.search_headers
    );
}

#[test]
fn stored_header_is_cut_at_a_line_end() {
    let mut msg = String::new();
    for i in 0..5000 {
        msg.push_str(&format!("X-Filler-{i}: some value to fill the header\n"));
    }
    msg.push_str("\nbody\n");
    let raw = crlf(&msg);
    let s = summarize(&raw);
    assert!(s.header.len() <= MAX_STORED_HEADER);
    assert!(s.header.as_bytes().ends_with(b"\r\n"));
    assert!((s.header.len() as u64) < s.header_bytes);
    let total: usize = s
        .search_headers
        .iter()
        .map(|(n, v)| n.len() + v.len())
        .sum();
    assert!(total <= MAX_SEARCH_HEADERS);
}

#[test]
fn part_count_is_capped() {
    let mut msg = String::from("Content-Type: multipart/mixed; boundary=b\n\n");
    for _ in 0..100_000 {
        msg.push_str("--b\n\nx\n");
    }
    msg.push_str("--b--\n");
    let raw = crlf(&msg);
    let s = summarize(&raw);
    assert_eq!(children(&s.body).len(), MAX_PARTS - 1);
    assert_eq!(s.body.body_end, s.size);
}

#[test]
fn multipart_depth_is_capped() {
    let mut msg = String::new();
    for i in 0..1000 {
        msg.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\n\n--b{i}\n"
        ));
    }
    msg.push_str("\ndeep\n");
    let raw = crlf(&msg);
    let s = summarize(&raw);
    let mut depth = 0;
    let mut part = &s.body;
    while let PartKind::Multipart(c) = &part.kind {
        match c.first() {
            Some(child) => part = child,
            None => break,
        }
        depth += 1;
    }
    assert_eq!(depth, MAX_DEPTH);
    // The JSON stays serialisable (serde_json's recursion limit is 128).
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<MessageSummary>(&json).unwrap(), s);
}

#[test]
fn message_depth_is_capped() {
    let msg = "Content-Type: message/rfc822\n\n".repeat(1000) + "\nbottom\n";
    let raw = crlf(&msg);
    let s = summarize(&raw);
    let mut depth = 0;
    let mut part = &s.body;
    while let PartKind::Message(m) = &part.kind {
        part = &m.body;
        depth += 1;
    }
    assert_eq!(depth, MAX_DEPTH);
    assert_eq!(
        (part.media_type.as_str(), part.subtype.as_str()),
        ("application", "octet-stream")
    );
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<MessageSummary>(&json).unwrap(), s);
}

#[test]
fn attachments() {
    let raw = crlf(
        "Content-Type: multipart/related; boundary=r\n\n--r\nContent-Type: text/html\n\n<img>\n--r\nContent-Type: image/png\n\nx\n--r--\n",
    );
    assert!(!summarize(&raw).has_attachments);
    let raw = crlf(
        "Content-Type: multipart/mixed; boundary=m\n\n--m\n\ntext\n--m\nContent-Type: application/pdf\n\nx\n--m--\n",
    );
    assert!(summarize(&raw).has_attachments);
    let raw = crlf(
        "Content-Type: multipart/mixed; boundary=m\n\n--m\n\ntext\n--m\nContent-Type: text/plain\nContent-Disposition: attachment; filename=a.txt\n\nx\n--m--\n",
    );
    assert!(summarize(&raw).has_attachments);
}

/// Checks what must hold for any input: offsets nest and stay in range.
fn check_offsets(p: &BodyPart, lo: u64, hi: u64) {
    assert!(lo <= p.header_start && p.header_start <= p.body_start);
    assert!(
        p.body_start <= p.body_end && p.body_end <= hi,
        "{p:?} not in {lo}..{hi}"
    );
    match &p.kind {
        PartKind::Leaf => {}
        PartKind::Message(m) => check_offsets(&m.body, p.body_start, p.body_end),
        PartKind::Multipart(c) => {
            let mut prev = p.body_start;
            for child in c {
                check_offsets(child, prev, p.body_end);
                prev = child.body_end;
            }
        }
    }
}

fn mime_like() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just(b"Content-Type: multipart/mixed; boundary=a\r\n".to_vec()),
        Just(b"Content-Type: multipart/digest; boundary=ab\r\n".to_vec()),
        Just(b"Content-Type: message/rfc822\r\n".to_vec()),
        Just(b"Content-Type: text/plain; charset=\"iso-8859-1\"\r\n".to_vec()),
        Just(b"Content-Transfer-Encoding: base64\r\n".to_vec()),
        Just(b"Content-Transfer-Encoding: quoted-printable\r\n".to_vec()),
        Just(b"Content-Disposition: attachment; filename*0*=utf-8''%C3; filename*1=x\r\n".to_vec()),
        Just(b"From: \"a\" <b@c>, g: d@e;, (x\r\n".to_vec()),
        Just(b"Subject: =?utf-8?b?w6k=?= =?x?q?=\r\n".to_vec()),
        Just(b"--a\r\n".to_vec()),
        Just(b"--ab\r\n".to_vec()),
        Just(b"--a--\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b" folded\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..20),
    ];
    proptest::collection::vec(line, 0..40).prop_map(|lines| lines.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn never_panics_on_arbitrary_bytes(raw in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let s = summarize(&raw);
        prop_assert_eq!(s.size, raw.len() as u64);
        check_offsets(&s.body, 0, s.size);
        let _ = normalize_crlf(&raw);
    }

    #[test]
    fn never_panics_on_mime_like_input(raw in mime_like()) {
        let s = summarize(&raw);
        check_offsets(&s.body, 0, s.size);
        prop_assert_eq!(s.body.body_end, s.size);
        let json = serde_json::to_string(&s).unwrap();
        prop_assert_eq!(serde_json::from_str::<MessageSummary>(&json).unwrap(), s);
    }
}

/// The message on which mail-parser 0.11 panics ("Invalid part ID, could
/// not find multipart"): two Content-Type fields over nested
/// message/rfc822 parts. Summarising it (PREVIEW parses the text part
/// with mail-parser) must not panic.
pub(crate) const MAIL_PARSER_PANIC: &[u8] = b"Content-Type: text/plain; charset=\"iso-8859-1\"\r\n\
Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: message/rfc822\r\n\r\n\
Content-Type: message/rfc822\r\n\r\n\r\n--a--\r\n";

#[test]
fn a_message_that_makes_mail_parser_panic_is_summarised() {
    let s = summarize(MAIL_PARSER_PANIC);
    assert_eq!(s.size, MAIL_PARSER_PANIC.len() as u64);
    assert_eq!(s.preview, "");
}
