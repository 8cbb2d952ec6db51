//! UTF-8 in quoted strings, as Thunderbird and neomutt send it: a folder
//! named `Réunions été` in a quoted string, searched with `SUBJECT
//! "comité"`, by IMAP4rev1 clients and after `ENABLE UTF8=ACCEPT` (RFC
//! 6855) or `ENABLE IMAP4rev2`; names no mailbox can have (NO, not BAD);
//! LIST-EXTENDED's CHILDINFO (RFC 5258 §3.5); and bytes that are not
//! UTF-8. The real driver over an in-memory stream, on a `MemoryStore`.

use std::sync::Arc;
use std::time::Duration;

use facteur::imap::{Imap, Options};
use facteur::log::InstanceId;
use facteur::server::Services;
use facteur::store::MemoryStore;

mod fixture;
mod imap_client;

use imap_client::{Client, Reply};

/// Longest command text the test server takes: small, so the over-long
/// quoted string below stays small too.
const MAX_COMMAND_LINE: u32 = 4096;

struct World {
    _dir: tempfile::TempDir,
    _services: Services,
    imap: Arc<Imap>,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let secret = "0123456789abcdef0123456789abcdef";
    let config = fixture::config(dir.path(), secret);
    let (services, _) = fixture::services(
        &config,
        dir.path(),
        Arc::new(MemoryStore::new()),
        secret.as_bytes(),
        vec![fixture::user_at_example("alice")],
        &["alice"],
    )
    .await;
    let mut account_config = services.account_config(InstanceId::new("utf8").unwrap());
    account_config.poll_interval = Duration::from_millis(200);
    let imap = fixture::imap(
        &services,
        account_config,
        Options {
            max_message: 1 << 20,
            max_command_line: MAX_COMMAND_LINE,
            ..Options::default()
        },
        true,
    );
    World {
        _dir: dir,
        _services: services,
        imap,
    }
}

impl World {
    async fn login(&self) -> Client {
        let client = fixture::serve_in_memory(&self.imap, "127.0.0.1:40000", 1 << 20);
        let (mut c, greeting) = Client::start(client).await;
        assert!(greeting.starts_with("* OK "), "{greeting}");
        let r = c.run("LOGIN alice pw").await;
        assert!(r.ok(), "{r:?}");
        c
    }
}

/// Sends `command` (raw bytes after the tag) and reads the answer.
async fn run_bytes(c: &mut Client, command: &[u8]) -> Reply {
    let tag = c.tag();
    let mut line = format!("{tag} ").into_bytes();
    line.extend_from_slice(command);
    line.extend_from_slice(b"\r\n");
    c.send(&line).await;
    c.until_tagged(&tag).await
}

/// The mailbox names of the LIST (or LSUB) lines of `reply`, as sent.
fn listed(reply: &Reply, verb: &str) -> Vec<String> {
    reply
        .untagged(verb)
        .iter()
        .map(|l| {
            let after = l.rsplit_once(" \"/\" ").map_or(*l, |(_, name)| name);
            let name = after.split(" (\"CHILDINFO\"").next().unwrap_or(after);
            name.trim_matches('"').to_owned()
        })
        .collect()
}

fn message(subject: &str, body: &str) -> String {
    format!(
        "From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: {subject}\r\n\
         Date: Mon, 23 Nov 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n"
    )
}

/// Thunderbird's "New folder" `Réunions été` from an IMAP4rev1 session
/// (no ENABLE): the name comes in a quoted string, raw UTF-8. It used to
/// get `BAD Syntax error`. It is the folder whose modified UTF-7 spelling
/// is `R&AOk-unions &AOk-t&AOk-`, which LIST answers.
#[tokio::test]
async fn thunderbird_transcript_in_imap4rev1() {
    let w = world().await;
    let mut c = w.login().await;
    let mutf7 = "R&AOk-unions &AOk-t&AOk-";

    let r = c.run("CREATE \"Réunions été\"").await;
    assert!(r.ok(), "{r:?}");
    let r = c.run("LIST \"\" *").await;
    assert!(r.ok(), "{r:?}");
    let names = listed(&r, "LIST");
    assert!(names.contains(&mutf7.to_owned()), "{r:?}");
    assert!(!r.all().contains("Réunions"), "rev1 reads mUTF-7: {r:?}");
    // Both spellings are the same folder.
    let r = c.run(&format!("CREATE \"{mutf7}\"")).await;
    assert!(r.no() && r.has("[ALREADYEXISTS]"), "{r:?}");
    // A UTF-8 pattern matches it too.
    let r = c.run("LIST \"\" \"Réu*\"").await;
    assert_eq!(listed(&r, "LIST"), vec![mutf7.to_owned()], "{r:?}");
    let r = c.run("STATUS \"Réunions été\" (MESSAGES)").await;
    assert!(
        r.ok() && r.has(&format!("* STATUS \"{mutf7}\" (MESSAGES 0)")),
        "{r:?}"
    );

    // Thunderbird encodes the subject (RFC 2047); other mailers send it
    // raw.
    let r = c
        .append(
            "\"Réunions été\"",
            "",
            &message("=?UTF-8?Q?Ordre_du_jour_du_comit=C3=A9?=", "Salle B"),
        )
        .await;
    assert!(r.ok(), "{r:?}");
    let r = c
        .append(
            "\"Réunions été\"",
            "",
            &message("Café du matin", "Un café crème, merci"),
        )
        .await;
    assert!(r.ok(), "{r:?}");

    let r = c.run("SELECT \"Réunions été\"").await;
    assert!(r.ok() && r.has("* 2 EXISTS"), "{r:?}");
    for search in [
        "SEARCH SUBJECT \"comité\"",
        "SEARCH CHARSET UTF-8 SUBJECT \"comité\"",
        "SEARCH SUBJECT \"COMITÉ\"",
    ] {
        let r = c.run(search).await;
        assert_eq!(r.untagged("SEARCH"), vec!["* SEARCH 1"], "{search}: {r:?}");
    }
    // neomutt's `=b Café` and `~s Café`.
    let r = c.run("SEARCH BODY \"café crème\"").await;
    assert_eq!(r.untagged("SEARCH"), vec!["* SEARCH 2"], "{r:?}");
    let r = c
        .run("UID SEARCH CHARSET utf-8 OR SUBJECT \"Café\" TEXT \"comité\"")
        .await;
    assert_eq!(r.untagged("SEARCH"), vec!["* SEARCH 1 2"], "{r:?}");
    let r = c
        .run("SEARCH HEADER Subject \"matin\" NOT SUBJECT \"thé\"")
        .await;
    assert_eq!(r.untagged("SEARCH"), vec!["* SEARCH 2"], "{r:?}");

    let r = c.run("SUBSCRIBE \"Réunions été\"").await;
    assert!(r.ok(), "{r:?}");
    let r = c.run("LSUB \"\" *").await;
    assert!(listed(&r, "LSUB").contains(&mutf7.to_owned()), "{r:?}");
    // LIST-EXTENDED and LIST-STATUS go through the rewriting of
    // src/imap/extend.rs.
    let r = c
        .run("LIST (SUBSCRIBED) \"\" (\"Réu*\" \"été\") RETURN (STATUS (MESSAGES))")
        .await;
    assert!(
        r.has(&format!(
            "* LIST (\\Subscribed \\HasNoChildren) \"/\" \"{mutf7}\""
        )) && r.has(&format!("* STATUS \"{mutf7}\" (MESSAGES 2)")),
        "{r:?}"
    );
    let r = c.run(&format!("EXAMINE \"{mutf7}\"")).await;
    assert!(r.ok() && r.has("* 2 EXISTS"), "{r:?}");

    let r = c
        .run("RENAME \"Réunions été\" \"Archives/Réunions 2026\"")
        .await;
    assert!(r.ok(), "{r:?}");
    let r = c.run("LIST \"\" *").await;
    let names = listed(&r, "LIST");
    assert!(
        names.contains(&"Archives/R&AOk-unions 2026".to_owned()) && !names.contains(&mutf7.into()),
        "{r:?}"
    );
    let r = c.run("STATUS \"Archives/Réunions 2026\" (MESSAGES)").await;
    assert!(r.has("(MESSAGES 2)"), "{r:?}");
    let r = c.run("DELETE \"Archives/Réunions 2026\"").await;
    assert!(r.ok(), "{r:?}");
    let r = c.run("LIST \"\" *").await;
    assert!(!r.all().contains("unions"), "{r:?}");
    let r = c.run("SELECT \"Archives/Réunions 2026\"").await;
    assert!(r.no() && r.has("[NONEXISTENT]"), "{r:?}");
}

/// After `ENABLE UTF8=ACCEPT` names are UTF-8 both ways (RFC 6855 §3),
/// and a folder made by a rev1 session in modified UTF-7 is the same one.
/// `ENABLE IMAP4rev2` does the same (RFC 9051 §5.1).
#[tokio::test]
async fn utf8_accept_and_imap4rev2_read_and_write_utf8_names() {
    let w = world().await;
    let mut old = w.login().await;
    assert!(old.run("CREATE \"Entw&APw-rfe\"").await.ok());

    for enable in ["UTF8=ACCEPT", "IMAP4rev2"] {
        let mut c = w.login().await;
        let r = c.run(&format!("ENABLE {enable}")).await;
        assert!(r.has(&format!("* ENABLED {enable}")), "{r:?}");
        let r = c.run("LIST \"\" *").await;
        assert!(
            listed(&r, "LIST").contains(&"Entwürfe".to_owned()),
            "{enable}: {r:?}"
        );
        let r = c.run("SELECT \"Entwürfe\"").await;
        assert!(r.ok(), "{enable}: {r:?}");
        let name = format!("Réunions été {enable}");
        let r = c.run(&format!("CREATE \"{name}\"")).await;
        assert!(r.ok(), "{enable}: {r:?}");
        let r = c.run("LIST \"\" \"Réunions*\"").await;
        assert!(listed(&r, "LIST").contains(&name), "{enable}: {r:?}");
        let r = c
            .append(
                &format!("\"{name}\""),
                "",
                &message("comité", "ordre du jour"),
            )
            .await;
        assert!(r.ok(), "{enable}: {r:?}");
        let r = c.run(&format!("SELECT \"{name}\"")).await;
        assert!(r.ok() && r.has("* 1 EXISTS"), "{enable}: {r:?}");
        let r = c.run("UID SEARCH SUBJECT \"comité\"").await;
        assert!(
            r.ok() && (r.has("* SEARCH 1") || r.has("ALL 1")),
            "{enable}: {r:?}"
        );
        let r = c.run(&format!("STATUS \"{name}\" (MESSAGES)")).await;
        assert!(r.has(&format!("* STATUS \"{name}\" (MESSAGES 1)")), "{r:?}");
    }
    // The rev1 session reads the same folders in modified UTF-7.
    let r = old.run("LIST \"\" \"R*\"").await;
    assert_eq!(
        listed(&r, "LIST"),
        vec![
            "R&AOk-unions &AOk-t&AOk- IMAP4rev2".to_owned(),
            "R&AOk-unions &AOk-t&AOk- UTF8=ACCEPT".to_owned()
        ],
        "{r:?}"
    );
}

/// A 7-bit name that is not valid modified UTF-7 names no mailbox: the
/// commands are well formed and answer NO (LIST: OK with no line), as
/// Dovecot does. Only the CREATE and RENAME of such a name say CANNOT.
#[tokio::test]
async fn names_that_cannot_exist_answer_no_not_bad() {
    let w = world().await;
    let mut c = w.login().await;
    let before = listed(&c.run("LIST \"\" *").await, "LIST");
    let odd = "\"!#$&'+,-.0123456789:;<=>?@^_`|[}\"";
    for command in [
        format!("SELECT {odd}"),
        format!("EXAMINE {odd}"),
        format!("STATUS {odd} (MESSAGES)"),
        format!("DELETE {odd}"),
        format!("SUBSCRIBE {odd}"),
        format!("RENAME {odd} elsewhere"),
        "SELECT \"a&b\"".to_owned(),
    ] {
        let r = c.run(&command).await;
        assert!(r.no() && r.has("[NONEXISTENT]"), "{command}: {r:?}");
    }
    for command in [
        format!("LIST \"\" {odd}"),
        format!("LIST (SUBSCRIBED) \"\" ({odd} \"a&b\")"),
        format!("LIST {odd} *"),
        format!("LSUB \"\" {odd}"),
    ] {
        let r = c.run(&command).await;
        assert!(
            r.ok() && r.untagged("LIST").is_empty() && r.untagged("LSUB").is_empty(),
            "{command}: {r:?}"
        );
    }
    for command in [format!("CREATE {odd}"), "RENAME INBOX \"a&b\"".to_owned()] {
        let r = c.run(&command).await;
        assert!(r.no() && r.has("[CANNOT]"), "{command}: {r:?}");
    }
    let r = c.run("APPEND \"a&b\" {1+}\r\nx").await;
    assert!(r.no(), "{r:?}");
    let r = c.run("LIST \"\" *").await;
    assert_eq!(listed(&r, "LIST"), before, "{r:?}");
    // A client that enabled UTF-8 means the name as it is: no such
    // mailbox, until it makes one.
    assert!(c.run("ENABLE UTF8=ACCEPT").await.ok());
    let r = c.run(&format!("SELECT {odd}")).await;
    assert!(r.no() && r.has("[NONEXISTENT]"), "{r:?}");
    assert!(c.run(&format!("CREATE {odd}")).await.ok());
    assert!(c.run(&format!("SELECT {odd}")).await.ok());
}

/// RFC 5258 §3.5: a parent that is not subscribed is returned, with
/// CHILDINFO, only for subscribed children the patterns do not return
/// themselves (Dovecot 2.3 answers the same).
#[tokio::test]
async fn recursivematch_returns_a_parent_only_for_children_not_returned() {
    let w = world().await;
    let mut c = w.login().await;
    for name in ["a/b/c", "a/d/e", "x/y"] {
        assert!(c.run(&format!("CREATE {name}")).await.ok());
    }
    assert!(c.run("SUBSCRIBE a/b/c").await.ok());
    assert!(c.run("SUBSCRIBE x/y").await.ok());
    assert!(c.run("SUBSCRIBE x").await.ok());
    let cases: &[(&str, &[&str])] = &[
        ("(a/b a/b/c)", &["a/b/c"]),
        ("(a/b/c a/b)", &["a/b/c"]),
        ("(a/b)", &["a/b CHILDINFO"]),
        ("(a a/*)", &["a/b/c"]),
        ("(a/% a/b/%)", &["a/b/c"]),
        ("(a a/d)", &["a CHILDINFO"]),
        ("(a* x*)", &["a/b/c", "x CHILDINFO", "x/y"]),
        ("(a% x%)", &["a CHILDINFO", "x CHILDINFO"]),
    ];
    for (patterns, want) in cases {
        let r = c
            .run(&format!("LIST (SUBSCRIBED RECURSIVEMATCH) \"\" {patterns}"))
            .await;
        assert!(r.ok(), "{patterns}: {r:?}");
        let got: Vec<String> = r
            .untagged("LIST")
            .iter()
            .map(|l| {
                let name = listed(
                    &Reply {
                        lines: vec![l.to_string()],
                    },
                    "LIST",
                )
                .remove(0);
                if l.ends_with("(\"CHILDINFO\" (\"SUBSCRIBED\"))") {
                    format!("{name} CHILDINFO")
                } else {
                    name
                }
            })
            .collect();
        assert_eq!(got, *want, "{patterns}: {r:?}");
    }
}

/// Bytes that are not UTF-8 in a quoted string are BAD, whatever the
/// command, and the session goes on with no folder made of them; a
/// quoted string is bounded by the command-line limit, a name by the
/// longest name.
#[tokio::test]
async fn invalid_utf8_and_long_strings_are_refused_cleanly() {
    let w = world().await;
    let mut c = w.login().await;
    let before = listed(&c.run("LIST \"\" *").await, "LIST");
    assert!(c.run("SELECT INBOX").await.ok());
    let bad: [&[u8]; 6] = [
        b"caf\xe9",          // Latin-1
        b"\xc3",             // truncated sequence
        b"\xc0\xaf",         // overlong encoding of '/'
        b"\xed\xa0\x80",     // a UTF-16 surrogate
        b"\xf4\x90\x80\x80", // past U+10FFFF
        b"\xff\xfe",
    ];
    for bytes in bad {
        for command in [
            &b"CREATE \""[..],
            b"SELECT \"",
            b"RENAME INBOX \"",
            b"LIST \"\" \"",
            b"STATUS \"",
            b"SEARCH SUBJECT \"",
            b"SEARCH CHARSET UTF-8 BODY \"",
        ] {
            let mut line = command.to_vec();
            line.extend_from_slice(bytes);
            line.push(b'"');
            if command.starts_with(b"STATUS") {
                line.extend_from_slice(b" (MESSAGES)");
            }
            let r = run_bytes(&mut c, &line).await;
            assert!(
                r.bad(),
                "{}: {r:?}",
                String::from_utf8_lossy(&line).escape_debug()
            );
        }
    }
    // In a literal the parser lets any bytes through; the name is still
    // refused.
    let r = run_bytes(&mut c, b"CREATE {4+}\r\ncaf\xe9").await;
    assert!(r.bad(), "{r:?}");
    let r = c.run("NOOP").await;
    assert!(r.ok(), "{r:?}");
    let r = c.run("LIST \"\" *").await;
    assert_eq!(listed(&r, "LIST"), before, "{r:?}");

    // Longer than the command line: refused unread, the session goes on.
    let long = "é".repeat(MAX_COMMAND_LINE as usize);
    for command in ["CREATE", "SELECT", "SEARCH SUBJECT"] {
        let r = c.run(&format!("{command} \"{long}\"")).await;
        assert!(r.no() && r.has("[TOOBIG]"), "{:?}", r.tagged());
    }
    // Within the line but longer than a name may be (512 bytes): NO.
    let long = "é".repeat(300);
    let r = c.run(&format!("CREATE \"{long}\"")).await;
    assert!(r.no() && r.has("[CANNOT]"), "{:?}", r.tagged());
    let r = c.run("NOOP").await;
    assert!(r.ok(), "{r:?}");
    let r = c.run("LIST \"\" *").await;
    assert_eq!(listed(&r, "LIST"), before, "{r:?}");
}
