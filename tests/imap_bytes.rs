//! Bytes as sent (issue 13, item 2): what APPEND stores and what BINARY
//! serves, through the real IMAP driver over an in-memory stream on a
//! `MemoryStore`. A literal8 APPEND (RFC 3516 §4.1) keeps its binary
//! parts byte for byte; a literal (text, RFC 9051 §4.3) is stored with
//! CRLF line ends; partial BINARY answers name their origin (RFC 3516
//! §4.3); `BINARY.SIZE[]` is the size of `BINARY[]` (§4.2).

use std::sync::Arc;

use facteur::imap::Options;
use facteur::log::InstanceId;
use facteur::store::MemoryStore;

mod fixture;
mod imap_client;

use imap_client::Client;

/// A logged-in session of alice on a fresh in-memory server (the tempdir
/// holds its users file while the session runs).
async fn alice() -> (Client, tempfile::TempDir) {
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
    let imap = fixture::imap(
        &services,
        services.account_config(InstanceId::new("bytes").unwrap()),
        Options::default(),
        true,
    );
    let client = fixture::serve_in_memory(&imap, "127.0.0.1:40000", 1 << 20);
    let (mut c, greeting) = Client::start(client).await;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    assert!(c.run("LOGIN alice pw").await.ok());
    (c, dir)
}

/// APPEND of `message` to INBOX as a literal8 (`~{n}`) or a literal.
async fn append(c: &mut Client, message: &[u8], literal8: bool) {
    let tag = c.tag();
    let tilde = if literal8 { "~" } else { "" };
    c.send(format!("{tag} APPEND INBOX {tilde}{{{}}}\r\n", message.len()).as_bytes())
        .await;
    let go = c.line().await;
    assert!(go.starts_with('+'), "{go}");
    c.send(message).await;
    c.send(b"\r\n").await;
    let r = c.until_tagged(&tag).await;
    assert!(r.ok(), "{r:?}");
}

/// The binary part: NUL, bare LF, bare CR, CR CR LF. Every octet is
/// ASCII, so the test client's text view of a response keeps it exactly.
const BINARY: &[u8] = b"\x00\x01\n\x02\x03\r\x04\r\r\n\x05";

/// A message with a binary part and CRLF everywhere else.
fn with_binary_part() -> Vec<u8> {
    [
        &b"From: a@example.org\r\nSubject: binary\r\nMIME-Version: 1.0\r\n\
           Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
           Content-Type: application/octet-stream\r\n\
           Content-Transfer-Encoding: binary\r\n\r\n"[..],
        BINARY,
        b"\r\n--b\r\nContent-Type: text/plain\r\n\r\ntext\r\n--b--\r\n",
    ]
    .concat()
}

/// The case: a literal8 APPEND of n octets is n octets, and the
/// binary part comes back as sent, bare LF, bare CR and NUL included.
#[tokio::test]
async fn a_literal8_append_keeps_its_binary_part_byte_for_byte() {
    let (mut c, _dir) = alice().await;
    let message = with_binary_part();
    append(&mut c, &message, true).await;
    assert!(c.run("SELECT INBOX").await.ok());

    let r = c.run("FETCH 1 (RFC822.SIZE BINARY.SIZE[1])").await;
    assert!(
        r.has(&format!(
            "* 1 FETCH (RFC822.SIZE {} BINARY.SIZE[1] {})",
            message.len(),
            BINARY.len()
        )),
        "{r:?}"
    );
    let r = c.run("FETCH 1 (BINARY.PEEK[1])").await;
    let expected = format!(
        "* 1 FETCH (BINARY[1] ~{{{}}}{})",
        BINARY.len(),
        String::from_utf8_lossy(BINARY)
    );
    assert_eq!(r.lines[0], expected, "{r:?}");
    // The whole message too: not one octet changed.
    let r = c.run("FETCH 1 (BINARY.PEEK[])").await;
    assert!(
        r.lines[0].ends_with(&format!("{})", String::from_utf8_lossy(&message))),
        "{r:?}"
    );
}

/// A literal carries text (RFC 9051 §4.3): its bare LFs become CRLF even
/// in a part labelled binary, as Dovecot stores it; so do the LFs outside
/// the binary parts of a literal8, and CR CR LF is one line end (the
/// header goes on after it).
#[tokio::test]
async fn line_ends_outside_literal8_binary_parts_become_crlf() {
    let (mut c, _dir) = alice().await;
    let text: Vec<u8> = [
        &b"From: a@example.org\r\nMIME-Version: 1.0\r\n\
           Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
           Content-Type: application/octet-stream\r\n\
           Content-Transfer-Encoding: binary\r\n\r\n"[..],
        b"\x01\x02\n\x03",
        b"\r\n--b--\r\n",
    ]
    .concat();
    append(&mut c, &text, false).await;
    let lf: Vec<u8> = [
        &b"From: a@example.org\r\r\nSubject: lf\nMIME-Version: 1.0\n\
           Content-Type: multipart/mixed; boundary=b\n\n--b\n\
           Content-Type: application/octet-stream\n\
           Content-Transfer-Encoding: binary\n\n"[..],
        BINARY,
        b"\n--b--\n",
    ]
    .concat();
    append(&mut c, &lf, true).await;
    assert!(c.run("SELECT INBOX").await.ok());

    let r = c.run("FETCH 1 (BINARY.SIZE[1] RFC822.SIZE)").await;
    assert!(
        r.has(&format!("BINARY.SIZE[1] 5 RFC822.SIZE {}", text.len() + 1)),
        "{r:?}"
    );
    // Ten bare LFs outside the binary part gain a CR, CR CR LF loses one.
    let r = c.run("FETCH 2 (BINARY.SIZE[1] RFC822.SIZE ENVELOPE)").await;
    assert!(
        r.has(&format!(
            "BINARY.SIZE[1] {} RFC822.SIZE {} ENVELOPE (NIL \"lf\"",
            BINARY.len(),
            lf.len() + 10 - 1
        )),
        "{r:?}"
    );
}

/// RFC 3516 §4.3: a partial BINARY answer names its origin, as BODY does.
#[tokio::test]
async fn partial_binary_answers_name_their_origin() {
    let (mut c, _dir) = alice().await;
    append(&mut c, &with_binary_part(), true).await;
    assert!(c.run("SELECT INBOX").await.ok());
    let r = c
        .run("FETCH 1 (BINARY.PEEK[1]<2.3> BINARY.PEEK[2]<0.100> UID BINARY.PEEK[2])")
        .await;
    assert_eq!(
        r.lines[0],
        "* 1 FETCH (BINARY[1]<2> ~{3}\n\x02\x03 BINARY[2]<0> ~{4}text UID 1 BINARY[2] ~{4}text)",
        "{r:?}"
    );
}

/// RFC 3516 §4.2: `BINARY.SIZE[]` is the size of `BINARY[]`, the whole
/// message, also when its body is a single part (Dovecot: 42).
#[tokio::test]
async fn binary_size_of_the_whole_message_counts_its_header() {
    let (mut c, _dir) = alice().await;
    let message = b"From: a@example.org\r\nSubject: x\r\n\r\nhello\r\n";
    append(&mut c, message, false).await;
    assert!(c.run("SELECT INBOX").await.ok());
    let r = c.run("FETCH 1 (BINARY.SIZE[] BINARY.SIZE[1])").await;
    assert!(
        r.has("* 1 FETCH (BINARY.SIZE[] 42 BINARY.SIZE[1] 7)"),
        "{r:?}"
    );
}
