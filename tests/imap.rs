//! IMAP sessions as clients see them: the real driver over an in-memory
//! stream, on a `MemoryStore`, one test per command family, written as
//! client lines and checks on the server's answers (RFC 9051 examples
//! where they exist).

use std::sync::Arc;
use std::time::Duration;

use facteur::account::{AccountConfig, Accounts};
use facteur::crypto::KdfParams;
use facteur::imap::throttle::{Throttle, ThrottleConfig};
use facteur::imap::{Imap, Options};
use facteur::log::InstanceId;
use facteur::mailbox::incoming::{DeliveryEnvelope, deliver};
use facteur::server::Services;
use facteur::store::{MemoryStore, S3Settings, S3Store, SharedStore};

mod fixture;
mod imap_client;

use imap_client::Client;

struct World {
    _dir: tempfile::TempDir,
    services: Services,
    imap: Arc<Imap>,
    store: Arc<MemoryStore>,
}

/// Services over `store` with users alice and bob (keyrings made) and
/// carol (none yet); `secret` keys user ids, so runs sharing a bucket
/// do not meet.
async fn services(dir: &std::path::Path, store: SharedStore, secret: &str) -> Services {
    let config = fixture::config(dir, secret);
    let users = ["alice", "bob", "carol"]
        .map(fixture::user_at_example)
        .to_vec();
    let (services, _) = fixture::services(
        &config,
        dir,
        store,
        secret.as_bytes(),
        users,
        &["alice", "bob"],
    )
    .await;
    services
}

/// One instance's IMAP context: its own accounts, polling every 200 ms.
fn instance(services: &Services, name: &str) -> Arc<Imap> {
    instance_tuned(services, name, |_| {})
}

fn instance_tuned(
    services: &Services,
    name: &str,
    tune: impl FnOnce(&mut AccountConfig),
) -> Arc<Imap> {
    let mut account_config = services.account_config(InstanceId::new(name).unwrap());
    account_config.poll_interval = Duration::from_millis(200);
    tune(&mut account_config);
    let accounts = Accounts::new(
        services.store.clone(),
        account_config,
        Duration::from_secs(5),
    );
    let user_ids = services.clone();
    Arc::new(Imap {
        directory: services.directory.clone(),
        keyrings: services.keyrings.clone(),
        accounts,
        user_id: Arc::new(move |login| user_ids.user_id(login)),
        kdf: KdfParams::TEST,
        recovery_key: true,
        options: Options {
            max_message: 1 << 20,
            ..Options::default()
        },
        throttle: Arc::new(Throttle::new(ThrottleConfig::default())),
        tls: None,
    })
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let services = services(
        dir.path(),
        store.clone(),
        "0123456789abcdef0123456789abcdef",
    )
    .await;
    let imap = instance(&services, "test");
    World {
        _dir: dir,
        services,
        imap,
        store,
    }
}

async fn connect(imap: &Arc<Imap>, remote: &str) -> Client {
    let client = fixture::serve_in_memory(imap, remote, 1 << 20);
    let (c, greeting) = Client::start(client).await;
    assert!(
        greeting.starts_with("* OK [CAPABILITY IMAP4rev1"),
        "{greeting}"
    );
    c
}

async fn login(imap: &Arc<Imap>, who: &str) -> Client {
    let mut c = connect(imap, "127.0.0.1:40000").await;
    let r = c.run(&format!("LOGIN {who} pw")).await;
    assert!(r.ok(), "{r:?}");
    c
}

impl World {
    async fn connect(&self) -> Client {
        connect(&self.imap, "127.0.0.1:40000").await
    }

    async fn connect_from(&self, remote: &str) -> Client {
        connect(&self.imap, remote).await
    }

    async fn login(&self, who: &str) -> Client {
        login(&self.imap, who).await
    }
}

/// Asserts that `reply` (a FETCH of every message's BODY[]) gives each
/// message of `expected` (in sequence order) its own body, as a literal.
fn each_its_own_body(reply: &imap_client::Reply, expected: &[String]) {
    each_of_n_its_own_body(reply, expected, expected.len());
}

/// [`each_its_own_body`] for a FETCH answering `n` of the `expected`.
fn each_of_n_its_own_body(reply: &imap_client::Reply, expected: &[String], n: usize) {
    let lines = reply.untagged("");
    assert_eq!(lines.len(), n, "{:?}", reply.tagged());
    for line in lines {
        let seq: usize = line[2..].split(' ').next().unwrap().parse().unwrap();
        let raw = &expected[seq - 1];
        assert!(
            line.contains(&format!("{{{}}}{raw})", raw.len())),
            "message {seq}: {}",
            &line[..line.len().min(200)]
        );
    }
}

/// Waits until mailbox summary pages are `n` in the store: the snapshot
/// that pages summaries out runs at a sync (SELECT, or the poller's next
/// tick if the SELECT's was deferred), not at the APPEND.
async fn wait_for_summary_pages(store: &MemoryStore, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pages: Vec<String> = store
            .keys()
            .into_iter()
            .filter(|k| k.contains("/mbox/") && k.contains("/side/") && !k.contains('.'))
            .collect();
        if pages.len() == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} summary pages, not {n}: {pages:?}",
            pages.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Index pages of every mailbox whose names end with `suffix` (`.h1`
/// header pages, `.t1` text pages, `.b1` body packs), in key order.
fn side_objects(store: &MemoryStore, suffix: &str) -> Vec<String> {
    store
        .keys()
        .into_iter()
        .filter(|k| k.contains("/side/") && k.ends_with(suffix))
        .collect()
}

fn message(subject: &str, body: &str) -> String {
    format!(
        "From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: {subject}\r\n\
         Date: Mon, 23 Nov 2026 10:00:00 +0100\r\nMessage-ID: <{subject}@example.org>\r\n\r\n{body}\r\n"
    )
}

#[tokio::test]
async fn login_list_select_and_capabilities() {
    let w = world().await;
    let mut c = w.connect().await;
    let caps = c.run("CAPABILITY").await;
    assert!(caps.ok());
    assert!(
        caps.has("AUTH=PLAIN") && caps.has("SASL-IR") && caps.has("LITERAL+"),
        "{caps:?}"
    );
    assert!(
        c.run("LOGIN alice wrong")
            .await
            .has("[AUTHENTICATIONFAILED]")
    );
    assert!(c.run("SELECT INBOX").await.bad(), "SELECT before login");
    let login = c.run("LOGIN alice pw").await;
    assert!(
        login.ok() && login.has("[CAPABILITY") && login.has("IDLE"),
        "{login:?}"
    );

    let list = c.run("LIST \"\" *").await;
    assert!(list.ok());
    for (name, attr) in [
        ("INBOX", ""),
        ("Sent", "\\Sent"),
        ("Drafts", "\\Drafts"),
        ("Trash", "\\Trash"),
        ("Junk", "\\Junk"),
        ("Archive", "\\Archive"),
    ] {
        assert!(
            list.untagged("LIST")
                .iter()
                .any(|l| l.ends_with(&format!("\"/\" \"{name}\"")) && l.contains(attr)),
            "{name} in {list:?}"
        );
    }
    assert!(
        c.run("LIST \"\" \"\"")
            .await
            .has("* LIST (\\Noselect) \"/\" \"\"")
    );

    let select = c.run("SELECT INBOX").await;
    assert!(
        select.ok() && select.tagged().contains("[READ-WRITE]"),
        "{select:?}"
    );
    assert!(select.has("* 0 EXISTS") && select.has("[UIDVALIDITY ") && select.has("[UIDNEXT 1]"));
    assert!(select.has("[PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)]"));
    assert!(c.run("SELECT Nowhere").await.has("[NONEXISTENT]"));
    assert!(
        c.run("FETCH 1 FLAGS").await.bad(),
        "no mailbox selected after a failed SELECT"
    );
    let logout = c.run("LOGOUT").await;
    assert!(logout.has("* BYE") && logout.ok());
}

#[tokio::test]
async fn append_fetch_store_search_expunge() {
    let w = world().await;
    let mut c = w.login("alice").await;
    let r = c
        .append("INBOX", "(\\Flagged) ", &message("first", "hello world"))
        .await;
    assert!(r.ok() && r.tagged().contains("[APPENDUID "), "{r:?}");
    let r = c
        .append("INBOX", "", &message("second", "Ünïcode body"))
        .await;
    assert!(r.ok(), "{r:?}");
    assert!(
        c.append("Nowhere", "", &message("x", "y"))
            .await
            .has("[TRYCREATE]")
    );

    let sel = c.run("SELECT INBOX").await;
    assert!(sel.has("* 2 EXISTS"), "{sel:?}");
    let f = c.run("FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)").await;
    assert!(f.ok(), "{f:?}");
    assert!(
        f.has("* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent) RFC822.SIZE "),
        "{f:?}"
    );
    assert!(f.has("\"first\""), "envelope subject: {f:?}");
    let body = c.run("UID FETCH 2 (BODY.PEEK[TEXT] BODYSTRUCTURE)").await;
    assert!(
        body.has("Ünïcode body")
            && body
                .all()
                .to_ascii_lowercase()
                .contains("bodystructure (\"text\" \"plain\""),
        "{body:?}"
    );
    assert!(
        !c.run("FETCH 2 FLAGS").await.has("\\Seen"),
        "PEEK does not set \\Seen"
    );
    let read = c.run("FETCH 2 BODY[]").await;
    assert!(
        read.has("\\Seen"),
        "BODY[] sets \\Seen and reports it: {read:?}"
    );
    let hdr = c.run("FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]").await;
    assert!(hdr.has("Subject: first"), "{hdr:?}");

    let s = c.run("STORE 1 +FLAGS (\\Deleted $Important)").await;
    assert!(
        s.has("* 1 FETCH (FLAGS (") && s.has("\\Deleted") && s.has("$Important"),
        "{s:?}"
    );
    assert!(
        c.run("STORE 1 -FLAGS.SILENT ($Important)")
            .await
            .untagged("1 FETCH")
            .is_empty()
    );
    assert_eq!(
        c.run("SEARCH DELETED").await.untagged("SEARCH"),
        vec!["* SEARCH 1"]
    );
    assert_eq!(
        c.run("UID SEARCH SUBJECT second").await.untagged("SEARCH"),
        vec!["* SEARCH 2"]
    );
    assert_eq!(
        c.run("SEARCH BODY hello").await.untagged("SEARCH"),
        vec!["* SEARCH 1"]
    );
    assert_eq!(
        c.run("SEARCH NOT SEEN").await.untagged("SEARCH"),
        vec!["* SEARCH 1"]
    );
    assert!(
        c.run("FETCH 3 FLAGS").await.bad(),
        "sequence number past the end"
    );
    assert!(c.run("SEARCH CHARSET KOI8-R ALL").await.has("[BADCHARSET"));

    let e = c.run("EXPUNGE").await;
    assert!(e.ok() && e.has("* 1 EXPUNGE"), "{e:?}");
    let f = c.run("FETCH 1 (UID)").await;
    assert!(f.has("* 1 FETCH (UID 2)"), "{f:?}");
    let st = c.run("STATUS INBOX (MESSAGES UIDNEXT UNSEEN SIZE)").await;
    assert!(
        st.has("MESSAGES 1") && st.has("UIDNEXT 3") && st.has("UNSEEN 0"),
        "{st:?}"
    );
}

#[tokio::test]
async fn copy_move_and_mailbox_management() {
    let w = world().await;
    let mut c = w.login("alice").await;
    for i in 0..3 {
        assert!(
            c.append("INBOX", "", &message(&format!("m{i}"), "x"))
                .await
                .ok()
        );
    }
    assert!(c.run("CREATE Work/Projects").await.ok());
    assert!(
        c.run("CREATE Work").await.has("[ALREADYEXISTS]"),
        "Work was created as a parent"
    );
    assert!(c.run("SELECT INBOX").await.ok());
    let copy = c.run("COPY 1 Work").await;
    assert!(copy.tagged().contains("[COPYUID "), "{copy:?}");
    let mv = c.run("UID MOVE 2:3 Work/Projects").await;
    assert!(
        mv.has("* OK [COPYUID ")
            && mv.untagged("2 EXPUNGE").len() + mv.untagged("3 EXPUNGE").len() == 2,
        "{mv:?}"
    );
    assert!(c.run("COPY 1 Missing").await.has("[TRYCREATE]"));
    let st = c.run("STATUS Work/Projects (MESSAGES)").await;
    assert!(st.has("MESSAGES 2"), "{st:?}");
    let list = c.run("LIST \"\" \"Work/%\"").await;
    assert!(
        list.has("\"Work/Projects\"") && list.has("\\HasNoChildren"),
        "{list:?}"
    );
    assert!(c.run("LIST \"\" Work").await.has("\\HasChildren"));
    assert!(c.run("RENAME Work Play").await.ok());
    assert!(c.run("LIST \"\" *").await.has("\"Play/Projects\""));
    assert!(c.run("SUBSCRIBE Play").await.ok());
    assert!(c.run("LSUB \"\" *").await.has("\"Play\""));
    assert!(c.run("DELETE Play/Projects").await.ok());
    assert!(
        c.run("STATUS Play/Projects (MESSAGES)")
            .await
            .has("[NONEXISTENT]")
    );
    let utf = c.run("CREATE \"Entw&APw-rfe\"").await;
    assert!(utf.ok(), "{utf:?}");
    assert!(c.run("LIST \"\" Entw*").await.has("\"Entw&APw-rfe\""));
    assert!(
        c.run("ENABLE UTF8=ACCEPT")
            .await
            .has("* ENABLED UTF8=ACCEPT")
    );
    assert!(c.run("LIST \"\" Entw*").await.has("\"Entwürfe\""));
}

#[tokio::test]
async fn extensions_beyond_the_codec() {
    let w = world().await;
    let mut c = w.login("alice").await;
    // MULTIAPPEND with LITERAL+.
    let (m1, m2) = (message("one", "a"), message("two", "b"));
    let tag = c.tag();
    c.send(
        format!(
            "{tag} APPEND INBOX (\\Seen) {{{}+}}\r\n{m1} {{{}+}}\r\n{m2}\r\n",
            m1.len(),
            m2.len()
        )
        .as_bytes(),
    )
    .await;
    let r = c.until_tagged(&tag).await;
    assert!(
        r.tagged().contains("[APPENDUID ") && r.tagged().contains(" 1:2]"),
        "{r:?}"
    );
    assert!(c.run("SELECT INBOX").await.has("* 2 EXISTS"));
    let es = c.run("SEARCH RETURN (MIN MAX COUNT ALL) ALL").await;
    assert!(
        es.has("* ESEARCH (TAG \"") && es.has("MIN 1 MAX 2 COUNT 2 ALL 1:2"),
        "{es:?}"
    );
    let saved = c.run("UID SEARCH RETURN (SAVE) SUBJECT two").await;
    assert!(
        saved.ok() && saved.untagged("ESEARCH").is_empty(),
        "{saved:?}"
    );
    let f = c.run("FETCH $ (UID)").await;
    assert!(f.has("* 2 FETCH (UID 2)") && !f.has("* 1 FETCH"), "{f:?}");
    // CREATE-SPECIAL-USE and LIST-EXTENDED.
    assert!(c.run("CREATE Everything (USE (\\All))").await.ok());
    // RFC 6154 §3: a special use the server does not know is NO [USEATTR].
    let r = c.run("CREATE Odd (USE (\\Important))").await;
    assert!(r.tagged().contains(" NO [USEATTR] "), "{r:?}");
    assert!(!c.run("LIST \"\" Odd").await.has("Odd"));
    let l = c.run("LIST (SPECIAL-USE) \"\" *").await;
    assert!(l.has("\\All") && !l.has("\"INBOX\""), "{l:?}");
    let ls = c
        .run("LIST \"\" (INBOX Sent) RETURN (STATUS (MESSAGES APPENDLIMIT))")
        .await;
    assert!(
        ls.has("* STATUS \"INBOX\" (MESSAGES 2 APPENDLIMIT "),
        "{ls:?}"
    );
    assert!(ls.untagged("LIST").len() == 2, "{ls:?}");
    assert!(c.run("LIST (BOGUS) \"\" *").await.bad());
    let ns = c.run("NAMESPACE").await;
    assert!(ns.has("* NAMESPACE ((\"\" \"/\")) NIL NIL"));
    assert!(c.run("ID NIL").await.has("\"Facteur\""));
    let rev2 = c.run("ENABLE IMAP4rev2").await;
    assert!(rev2.has("* ENABLED IMAP4rev2"), "{rev2:?}");
    assert!(
        c.run("SEARCH ALL").await.has("* ESEARCH (TAG"),
        "IMAP4rev2 SEARCH answers ESEARCH"
    );
}

/// SEARCHRES (RFC 5182): `$` as the set of FETCH, STORE, COPY, MOVE and
/// UID EXPUNGE stands for the saved UIDs in UID commands and for their
/// sequence numbers otherwise (they differ here once a message has
/// moved); an empty saved result makes each command act on no message
/// and answer OK (§2.1) once its other checks pass (the target exists, the
/// mailbox is writable); a malformed one is still BAD.
#[tokio::test]
async fn the_saved_result_as_a_message_set() {
    let w = world().await;
    let mut c = w.login("alice").await;
    for i in 0..3 {
        let r = c.append("INBOX", "", &message(&format!("m{i}"), "x")).await;
        assert!(r.ok(), "{r:?}");
    }
    assert!(c.run("CREATE Kept").await.ok());
    // With no mailbox selected, `$` is refused like any message set.
    for command in ["UID FETCH $ (FLAGS)", "UID EXPUNGE $", "COPY $ Kept"] {
        let r = c.run(command).await;
        assert!(
            r.bad() && r.tagged().contains("No mailbox selected"),
            "{command}: {r:?}"
        );
    }
    assert!(c.run("SELECT INBOX").await.ok());
    // m0 leaves: m2 is now UID 3, sequence number 2.
    assert!(c.run("UID MOVE 1 Kept").await.ok());
    assert!(c.run("SEARCH RETURN (SAVE) SUBJECT m2").await.ok());
    let f = c.run("FETCH $ (UID)").await;
    assert!(f.ok() && f.has("* 2 FETCH (UID 3)"), "{f:?}");
    let f = c.run("UID FETCH $ (FLAGS)").await;
    assert!(f.ok() && f.has("* 2 FETCH (") && f.has("UID 3"), "{f:?}");
    let s = c.run("STORE $ +FLAGS (\\Flagged)").await;
    assert!(s.has("* 2 FETCH (FLAGS (\\Flagged"), "{s:?}");
    let cp = c.run("UID COPY $ Kept").await;
    assert!(
        cp.tagged().contains("[COPYUID ") && cp.tagged().contains(" 3 "),
        "{cp:?}"
    );
    assert!(c.run("UID COPY $").await.bad());

    // Nothing matches: `$` names no message.
    assert!(c.run("UID SEARCH RETURN (SAVE) SUBJECT nowhere").await.ok());
    for command in [
        "FETCH $ (UID FLAGS)",
        "UID FETCH $ FLAGS",
        "STORE $ +FLAGS (\\Deleted)",
        "UID STORE $ +FLAGS.SILENT (\\Deleted)",
        "COPY $ Kept",
        "UID COPY $ Kept",
        "MOVE $ Kept",
        "UID MOVE $ Kept",
        "UID EXPUNGE $",
    ] {
        let r = c.run(command).await;
        assert!(r.ok() && r.lines.len() == 1, "{command}: {r:?}");
    }
    assert!(c.run("UID MOVE $ Kept Junk").await.bad());
    // Acting on nothing does not skip the command's other checks.
    for command in ["COPY $ Nowhere", "UID MOVE $ Nowhere"] {
        let r = c.run(command).await;
        assert!(
            r.no() && r.tagged().contains("[TRYCREATE]"),
            "{command}: {r:?}"
        );
    }
    let st = c.run("STATUS Kept (MESSAGES)").await;
    assert!(st.has("MESSAGES 2"), "{st:?}");
    let f = c.run("FETCH 1:* (FLAGS)").await;
    assert!(f.untagged("").len() == 2 && !f.has("\\Deleted"), "{f:?}");
    assert!(c.run("EXAMINE INBOX").await.ok());
    assert!(c.run("SEARCH RETURN (SAVE) SUBJECT nowhere").await.ok());
    for command in ["STORE $ +FLAGS (\\Seen)", "MOVE $ Kept", "UID EXPUNGE $"] {
        let r = c.run(command).await;
        assert!(
            r.no() && r.tagged().contains("READ-ONLY"),
            "{command}: {r:?}"
        );
    }
    assert!(c.run("FETCH $ (FLAGS)").await.ok());
}

/// SORT, ESORT and THREAD over the wire (RFC 5256, RFC 5267): the
/// orders themselves are compared with Dovecot in tests/dovecot_sort.rs.
#[tokio::test]
async fn sort_and_thread() {
    let w = world().await;
    let mut c = w.login("alice").await;
    assert!(
        c.run("SORT (DATE) UTF-8 ALL").await.bad(),
        "needs a selection"
    );
    let caps = c.run("CAPABILITY").await;
    for cap in [
        " SORT ",
        " SORT=DISPLAY ",
        " ESORT ",
        " THREAD=REFERENCES",
        " THREAD=ORDEREDSUBJECT",
    ] {
        assert!(caps.has(cap), "{cap}: {caps:?}");
    }
    let messages = [
        // seq 1: the original, sent last.
        "From: Zed <zed@example.org>\r\nSubject: Plans\r\n\
         Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <p@x>\r\n\r\nlong body here\r\n",
        // seq 2: a reply, its Date: invalid (INTERNALDATE, 2020, is used).
        "From: amy@example.org\r\nSubject: Re: [team] plans\r\nDate: soon\r\n\
         Message-ID: <r@x>\r\nIn-Reply-To: <p@x>\r\n\r\nok\r\n",
        // seq 3: unrelated.
        "From: Bob <bob@example.org>\r\nSubject: Agenda\r\n\
         Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <a@x>\r\n\r\nx\r\n",
    ];
    for m in messages {
        let r = c
            .append("INBOX", "\"01-Jan-2020 00:00:00 +0000\" ", m)
            .await;
        assert!(r.ok(), "{r:?}");
    }
    assert!(c.run("SELECT INBOX").await.ok());
    let by_subject = c.run("SORT (SUBJECT) UTF-8 ALL").await;
    assert!(by_subject.has("* SORT 3 1 2"), "{by_subject:?}");
    let by_date = c.run("UID SORT (REVERSE DATE) US-ASCII ALL").await;
    assert!(by_date.has("* SORT 1 3 2"), "{by_date:?}");
    let from = c.run("SORT (DISPLAYFROM) UTF-8 NOT SUBJECT agenda").await;
    assert!(from.has("* SORT 2 1"), "{from:?}");
    let esort = c
        .run("SORT RETURN (MIN MAX COUNT ALL) (SUBJECT) UTF-8 ALL")
        .await;
    assert!(
        esort.has("* ESEARCH (TAG \"") && esort.has("MIN 3 MAX 2 COUNT 3 ALL 3,1:2"),
        "{esort:?}"
    );
    let empty = c.run("SORT (SIZE) UTF-8 SUBJECT nothing").await;
    assert!(empty.has("* SORT") && empty.ok(), "{empty:?}");
    let charset = c.run("SORT (SIZE) ISO-8859-1 ALL").await;
    assert!(
        charset.no() && charset.tagged().contains("[BADCHARSET"),
        "{charset:?}"
    );
    let refs = c.run("THREAD REFERENCES UTF-8 ALL").await;
    assert!(refs.has("* THREAD (3)(1 2)"), "{refs:?}");
    let subj = c.run("UID THREAD ORDEREDSUBJECT UTF-8 ALL").await;
    assert!(subj.has("* THREAD (2 1)(3)"), "{subj:?}");
    assert!(c.run("THREAD BOGUS UTF-8 ALL").await.bad());
}

#[tokio::test]
async fn authenticate_plain_and_first_login_provisioning() {
    let w = world().await;
    let mut c = w.connect().await;
    // SASL-IR: \0carol\0pw; carol has no keyring yet.
    let r = c.run("AUTHENTICATE PLAIN AGNhcm9sAHB3").await;
    assert!(r.ok() && r.tagged().contains("[CAPABILITY"), "{r:?}");
    let sel = c.run("SELECT INBOX").await;
    assert!(sel.has("* 1 EXISTS"), "recovery key message: {sel:?}");
    let f = c.run("FETCH 1 BODY.PEEK[]").await;
    assert!(
        f.has("FCTR-") && f.has("Subject: Your mailbox recovery key"),
        "{f:?}"
    );

    let mut d = w.connect().await;
    let tag = d.tag();
    d.send(format!("{tag} AUTHENTICATE LOGIN\r\n").as_bytes())
        .await;
    assert_eq!(d.line().await, "+ VXNlcm5hbWU6");
    d.send(b"Ym9i\r\n").await; // bob
    assert_eq!(d.line().await, "+ UGFzc3dvcmQ6");
    d.send(b"cHc=\r\n").await; // pw
    assert!(d.until_tagged(&tag).await.ok());
    // A second login of carol sees no second recovery message.
    let mut e = w.login("carol").await;
    assert!(e.run("SELECT INBOX").await.has("* 1 EXISTS"));
}

#[tokio::test]
async fn plaintext_login_is_refused_off_loopback_and_failures_are_throttled() {
    let w = world().await;
    let mut c = w.connect_from("192.0.2.7:5000").await;
    let caps = c.run("CAPABILITY").await;
    assert!(
        caps.has("LOGINDISABLED") && !caps.has("AUTH=PLAIN"),
        "{caps:?}"
    );
    assert!(c.run("LOGIN alice pw").await.has("[PRIVACYREQUIRED]"));

    let mut c = w.connect().await;
    let mut throttled = false;
    for _ in 0..8 {
        let r = c.run("LOGIN bob wrong").await;
        assert!(r.no());
        if r.has("Too many failed logins") {
            throttled = true;
            break;
        }
    }
    assert!(throttled, "repeated failures for one login are delayed");
}

#[tokio::test]
async fn idle_pushes_changes_from_another_session() {
    let w = world().await;
    let mut idler = w.login("alice").await;
    assert!(idler.run("SELECT INBOX").await.ok());
    let tag = idler.tag();
    idler.send(format!("{tag} IDLE\r\n").as_bytes()).await;
    assert!(idler.line().await.starts_with("+ "));
    let mut other = w.login("alice").await;
    assert!(
        other
            .append("INBOX", "", &message("pushed", "x"))
            .await
            .ok()
    );
    assert_eq!(idler.line().await, "* 1 EXISTS");
    // The first session told of it (RFC 3501 §2.3.2).
    assert_eq!(idler.line().await, "* 1 RECENT");
    assert!(other.run("SELECT INBOX").await.ok());
    assert!(other.run("STORE 1 +FLAGS (\\Answered)").await.ok());
    let flags = idler.line().await;
    assert!(
        flags.contains("FETCH (UID 1 FLAGS (\\Answered \\Recent))"),
        "{flags}"
    );
    idler.send(b"DONE\r\n").await;
    let done = idler.until_tagged(&tag).await;
    assert!(done.ok(), "{done:?}");
}

#[tokio::test]
async fn bad_input_and_store_outages_keep_the_session() {
    let w = world().await;
    let mut c = w.login("alice").await;
    assert!(c.run("FROBNICATE").await.bad());
    assert!(c.run("FETCH").await.bad());
    c.send(b"\r\n").await; // an empty line: BAD, no tag
    assert!(c.line().await.starts_with("* BAD"));
    // A synchronizing literal over the limit is refused before it is sent.
    let tag = c.tag();
    c.send(format!("{tag} APPEND INBOX {{{}}}\r\n", 2 << 20).as_bytes())
        .await;
    let r = c.until_tagged(&tag).await;
    assert!(r.has("[TOOBIG]"), "{r:?}");
    // A non-synchronizing one is read to its end and dropped.
    let tag = c.tag();
    let big = "x".repeat((1 << 20) + 100 * 1024);
    c.send(format!("{tag} APPEND INBOX {{{}+}}\r\n{big}\r\n", big.len()).as_bytes())
        .await;
    let r = c.until_tagged(&tag).await;
    assert!(r.has("[TOOBIG]"), "{r:?}");
    assert!(c.run("NOOP").await.ok(), "the session goes on");

    assert!(c.run("SELECT INBOX").await.ok());
    w.store.set_offline(true);
    let r = c.append("INBOX", "", &message("lost?", "x")).await;
    assert!(r.no() && r.has("[UNAVAILABLE]"), "{r:?}");
    let r = c.run("CREATE Later").await;
    assert!(r.has("[UNAVAILABLE]"), "{r:?}");
    w.store.set_offline(false);
    let r = c.append("INBOX", "", &message("kept", "x")).await;
    assert!(r.ok() && r.has("* 1 EXISTS"), "{r:?}");
}

#[tokio::test]
async fn delivered_mail_reaches_an_idling_client_within_the_poll_interval() {
    let w = world().await;
    let mut idler = w.login("alice").await;
    assert!(idler.run("SELECT INBOX").await.ok());
    let tag = idler.tag();
    idler.send(format!("{tag} IDLE\r\n").as_bytes()).await;
    assert!(idler.line().await.starts_with("+ "));
    // What the LMTP server does for a recipient (tests/lmtp.rs drives the
    // wire): seal the message into alice's incoming queue.
    let user = w.services.user_id("alice");
    let key = w
        .services
        .keyrings
        .delivery_key(&user)
        .await
        .unwrap()
        .unwrap();
    let raw = message("delivered", "by LMTP");
    deliver(
        w.store.as_ref(),
        &user,
        &key,
        &w.services.records,
        raw.as_bytes(),
        DeliveryEnvelope {
            mail_from: "bob@example.org".into(),
            rcpt_to: vec!["alice@example.org".into()],
            received_at: 1_790_000_000,
            folder: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(idler.line().await, "* 1 EXISTS");
    idler.send(b"DONE\r\n").await;
    assert!(idler.until_tagged(&tag).await.ok());
    let f = idler
        .run("FETCH 1 (INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        .await;
    assert!(f.has("Subject: delivered"), "{f:?}");
}

/// Issue 4's acceptance test: two Facteur instances on one Garage bucket;
/// a message appended through instance 1 is pushed to a client idling on
/// instance 2, and flags set on 2 reach a client of 1.
#[tokio::test]
async fn two_instances_on_garage_push_changes_to_each_other() {
    let Some(settings) = S3Settings::for_tests("the two-instance IMAP test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(S3Store::new(settings).unwrap());
    let secret = format!("imap-two-instances-{:016x}", rand::random::<u64>());
    let services = services(dir.path(), store, &secret).await;
    let (one, two) = (instance(&services, "one"), instance(&services, "two"));

    let mut idler = login(&two, "alice").await;
    assert!(idler.run("SELECT INBOX").await.has("* 0 EXISTS"));
    let tag = idler.tag();
    idler.send(format!("{tag} IDLE\r\n").as_bytes()).await;
    assert!(idler.line().await.starts_with("+ "));

    let mut writer = login(&one, "alice").await;
    let r = writer
        .append("INBOX", "", &message("across", "instances"))
        .await;
    assert!(r.tagged().contains("[APPENDUID "), "{r:?}");
    assert_eq!(idler.line().await, "* 1 EXISTS");
    idler.send(b"DONE\r\n").await;
    assert!(idler.until_tagged(&tag).await.ok());
    let f = idler.run("FETCH 1 (UID ENVELOPE)").await;
    assert!(
        f.has("* 1 FETCH (UID 1 ENVELOPE") && f.has("\"across\""),
        "{f:?}"
    );

    assert!(writer.run("SELECT INBOX").await.has("* 1 EXISTS"));
    let tag = writer.tag();
    writer.send(format!("{tag} IDLE\r\n").as_bytes()).await;
    assert!(writer.line().await.starts_with("+ "));
    assert!(idler.run("STORE 1 +FLAGS (\\Seen)").await.ok());
    let pushed = writer.line().await;
    // Recent on instance one for the first session there to select.
    assert!(
        pushed.contains("FETCH (UID 1 FLAGS (\\Seen \\Recent))"),
        "{pushed}"
    );
    writer.send(b"DONE\r\n").await;
    assert!(writer.until_tagged(&tag).await.ok());
}

/// Whether `actual` matches `expected`, where `{*}` matches any text.
fn line_matches(expected: &str, actual: &str) -> bool {
    let parts: Vec<&str> = expected.split("{*}").collect();
    if parts.len() == 1 {
        return expected == actual;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !actual.starts_with(first) || !actual[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &actual[first.len()..actual.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// Replays every transcript in fixtures/imap-transcripts (see its README).
#[tokio::test]
async fn transcripts_replay() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/imap-transcripts");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "transcripts missing");
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        // (line number, command bytes, tag, expected lines)
        let mut steps: Vec<(usize, Vec<u8>, String, Vec<String>)> = Vec::new();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            i += 1;
            if let Some(command) = line.strip_prefix("C: ") {
                let mut data: Vec<String> = Vec::new();
                while i < lines.len() && lines[i].starts_with("L:") {
                    data.push(
                        lines[i]
                            .strip_prefix("L:")
                            .unwrap()
                            .trim_start_matches(' ')
                            .to_owned(),
                    );
                    i += 1;
                }
                let mut bytes = Vec::new();
                if command.contains("{+}") {
                    let body = format!("{}\r\n", data.join("\r\n"));
                    bytes.extend_from_slice(
                        command
                            .replace("{+}", &format!("{{{}+}}", body.len()))
                            .as_bytes(),
                    );
                    bytes.extend_from_slice(b"\r\n");
                    bytes.extend_from_slice(body.as_bytes());
                } else {
                    bytes.extend_from_slice(command.as_bytes());
                }
                bytes.extend_from_slice(b"\r\n");
                let tag = command.split(' ').next().unwrap().to_owned();
                steps.push((i, bytes, tag, Vec::new()));
            } else if let Some(expected) = line.strip_prefix("S: ") {
                steps
                    .last_mut()
                    .expect("S: before any C:")
                    .3
                    .push(expected.to_owned());
            } else if !(line.trim().is_empty() || line.starts_with('#')) {
                panic!("{name}:{i}: unknown line {line:?}");
            }
        }
        let w = world().await;
        let mut c = w.connect().await;
        for (at, bytes, tag, expected) in steps {
            c.send(&bytes).await;
            let reply = c.until_tagged(&tag).await;
            let actual: Vec<String> = reply
                .lines
                .iter()
                .map(|l| l.replace("\r\n", "\\r\\n"))
                .collect();
            let ok = actual.len() == expected.len()
                && expected
                    .iter()
                    .zip(&actual)
                    .all(|(e, a)| line_matches(e, a));
            assert!(
                ok,
                "{name}:{at}: {}\nexpected:\n  {}\nactual:\n  {}",
                String::from_utf8_lossy(&bytes).lines().next().unwrap_or(""),
                expected.join("\n  "),
                actual.join("\n  ")
            );
        }
    }
}

/// QRESYNC (RFC 7162 §3.2): a client back after a while learns in one
/// SELECT what vanished and which flags changed; expunges are reported as
/// VANISHED once it is enabled.
#[tokio::test]
async fn qresync_reports_what_vanished_and_changed_since_the_last_visit() {
    let w = world().await;
    let mut c = w.login("alice").await;
    for i in 0..4 {
        assert!(
            c.append("INBOX", "", &message(&format!("q{i}"), "x"))
                .await
                .ok()
        );
    }
    assert!(
        c.run("SELECT INBOX (QRESYNC (1 1))").await.bad(),
        "needs ENABLE QRESYNC"
    );
    assert!(c.run("ENABLE QRESYNC").await.has("* ENABLED QRESYNC"));
    let sel = c.run("SELECT INBOX").await;
    let field = |reply: &imap_client::Reply, name: &str| -> u64 {
        let line = reply.lines.iter().find(|l| l.contains(name)).expect(name);
        let at = line.find(name).unwrap() + name.len() + 1;
        line[at..].split(']').next().unwrap().parse().unwrap()
    };
    let uid_validity = field(&sel, "UIDVALIDITY");
    let seen_modseq = field(&sel, "HIGHESTMODSEQ");

    // Another session changes things while this client is away.
    let mut other = w.login("alice").await;
    assert!(other.run("SELECT INBOX").await.ok());
    assert!(other.run("UID STORE 2 +FLAGS (\\Deleted)").await.ok());
    assert!(other.run("UID EXPUNGE 2").await.ok());
    assert!(other.run("UID STORE 3 +FLAGS (\\Flagged)").await.ok());
    assert!(c.run("UNSELECT").await.ok());

    let back = c
        .run(&format!(
            "SELECT INBOX (QRESYNC ({uid_validity} {seen_modseq} 1:4))"
        ))
        .await;
    assert!(back.ok() && back.has("* VANISHED (EARLIER) 2"), "{back:?}");
    let fetches = back.untagged("");
    let changed: Vec<&&str> = fetches.iter().filter(|l| l.contains(" FETCH ")).collect();
    assert_eq!(changed.len(), 1, "{back:?}");
    assert!(
        changed[0].contains("UID 3")
            && changed[0].contains("\\Flagged")
            && changed[0].contains("MODSEQ (")
    );

    // An expunge is now reported as VANISHED.
    assert!(other.run("UID STORE 4 +FLAGS (\\Deleted)").await.ok());
    assert!(other.run("EXPUNGE").await.ok());
    let noop = c.run("NOOP").await;
    assert!(noop.has("* VANISHED 4") && !noop.has("EXPUNGE"), "{noop:?}");
    let f = c
        .run("UID FETCH 1:4 (FLAGS) (CHANGEDSINCE 1 VANISHED)")
        .await;
    assert!(f.has("* VANISHED (EARLIER) 2,4"), "{f:?}");
    assert!(
        c.run("FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)")
            .await
            .bad(),
        "UID FETCH only"
    );
}

/// Summaries paged out by snapshots (the engine keeps only a page number in
/// memory) still answer SEARCH and FETCH ENVELOPE, also on a fresh
/// instance that never held them.
#[tokio::test]
async fn search_and_fetch_read_summaries_from_pages_after_snapshots() {
    let w = world().await;
    let tuned = |c: &mut AccountConfig| c.mailbox.log.snapshot_every = 3;
    let writer = instance_tuned(&w.services, "pagingwriter", tuned);
    let mut c = login(&writer, "alice").await;
    for i in 0..12 {
        assert!(
            c.append("INBOX", "", &message(&format!("paged{i}"), "x"))
                .await
                .ok()
        );
    }
    assert!(c.run("SELECT INBOX").await.has("* 12 EXISTS"));
    let found = c.run("SEARCH SUBJECT paged1").await;
    assert_eq!(
        found.untagged("SEARCH"),
        vec!["* SEARCH 2 11 12"],
        "{found:?}"
    );
    let reader = instance_tuned(&w.services, "pagingreader", tuned);
    let mut r = login(&reader, "alice").await;
    assert!(r.run("SELECT INBOX").await.has("* 12 EXISTS"));
    let found = r.run("UID SEARCH SUBJECT paged3").await;
    assert_eq!(found.untagged("SEARCH"), vec!["* SEARCH 4"], "{found:?}");
    let env = r.run("FETCH 1:12 ENVELOPE").await;
    assert_eq!(env.untagged("").len(), 12, "{env:?}");
    assert!(env.has("\"paged0\"") && env.has("\"paged11\""), "{env:?}");
}

/// An op of a mailbox lost in the store (one flipped byte): a session on
/// an instance that finds it is told once, with an ALERT at SELECT, and
/// the messages after it are still shown.
#[tokio::test]
async fn damage_in_the_store_is_told_once_per_session() {
    use facteur::store::ObjectStore;
    let w = world().await;
    let mut c = w.login("alice").await;
    for n in 0..3 {
        let r = c.append("INBOX", "", &message(&format!("m{n}"), "x")).await;
        assert!(r.ok(), "{r:?}");
    }
    assert!(!c.run("SELECT INBOX").await.has("[ALERT]"));
    // The log holding three ops is INBOX's.
    let mut logs: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for key in w.store.keys() {
        if let Some((log, _)) = key.split_once("/log/")
            && log.contains("/mbox/")
        {
            logs.entry(log.to_owned()).or_default().push(key);
        }
    }
    let mut ops = logs.into_values().find(|ops| ops.len() == 3).unwrap();
    ops.sort();
    let mut bytes = w.store.get(&ops[1]).await.unwrap().to_vec();
    bytes[30] ^= 0x01;
    w.store.put(&ops[1], bytes.into()).await.unwrap();

    let other = instance(&w.services, "other");
    let mut d = login(&other, "alice").await;
    let r = d.run("SELECT INBOX").await;
    assert!(
        r.ok() && r.has("* OK [ALERT]") && r.has("* 2 EXISTS"),
        "{r:?}"
    );
    let r = d.run("SELECT INBOX").await;
    assert!(r.ok() && !r.has("[ALERT]"), "once per session: {r:?}");
    let mut e = login(&other, "alice").await;
    assert!(e.run("EXAMINE INBOX").await.has("* OK [ALERT]"));
}

/// A download of many bodies reads them from body packs: the first one
/// writes the packs of the summary pages it touches, and later ones, on
/// any instance, cost a GET per page instead of one per message. A long
/// body stays out of its pack; swapped packs (a site moving objects) are
/// refused, deleted and read around, never answered from; every message
/// gets its own body each time.
#[tokio::test]
async fn bulk_downloads_read_body_packs() {
    use facteur::store::ObjectStore;
    let w = world().await;
    // Index pages written at first use, not after the snapshot; one
    // snapshot, after the appends: summary pages of 256 and 44 messages.
    let tuned = |c: &mut AccountConfig| {
        c.mailbox.log.snapshot_every = 300;
        c.mailbox.prepare_indexes = false;
    };
    let writer = instance_tuned(&w.services, "packwriter", tuned);
    let mut c = login(&writer, "alice").await;
    let mut expected = Vec::new();
    for i in 1..=300 {
        let body = match i {
            // Over 64 KiB: read alone.
            7 => format!("long {i}\r\n{}", "0123456789abcdef\r\n".repeat(5000)),
            _ => format!("body of {i}\r\nends {i}."),
        };
        let raw = message(&format!("b{i}"), &body);
        assert!(c.append("INBOX", "", &raw).await.ok());
        expected.push(raw);
    }
    assert!(c.run("SELECT INBOX").await.has("* 300 EXISTS"));
    wait_for_summary_pages(&w.store, 2).await;
    let packs = || side_objects(&w.store, ".b1");
    let each_its_own = |reply: &imap_client::Reply| each_its_own_body(reply, &expected);
    // A few bodies (new mail): read alone.
    assert!(c.run("FETCH 299:300 BODY.PEEK[]").await.ok());
    assert!(packs().is_empty());
    // Scattered messages (search results, flagged mail): a few per page,
    // read alone, no page read whole for them.
    let scattered: Vec<String> = (1..=300).step_by(7).map(|n| n.to_string()).collect();
    let before = w.store.calls();
    let some = c
        .run(&format!("FETCH {} BODY.PEEK[]", scattered.join(",")))
        .await;
    assert_eq!(
        some.untagged("").len(),
        scattered.len(),
        "{:?}",
        some.tagged()
    );
    assert!(packs().is_empty());
    let calls = w.store.calls() - before;
    assert!(calls < 2 * scattered.len() as u64, "{calls} store calls");
    let all = c.run("FETCH 1:* BODY.PEEK[]").await;
    each_its_own(&all);
    let written = packs();
    assert_eq!(written.len(), 2, "a pack per summary page: {written:?}");

    // Another instance: a GET per pack (and one for the long body), no
    // pack written again.
    let reader = instance_tuned(&w.services, "packreader", tuned);
    let mut r = login(&reader, "alice").await;
    assert!(r.run("SELECT INBOX").await.has("* 300 EXISTS"));
    let sealed = async || {
        let mut all = Vec::new();
        for key in packs() {
            all.push(w.store.get(&key).await.unwrap());
        }
        all
    };
    let before_bytes = sealed().await;
    let before = w.store.calls();
    let all = r.run("FETCH 1:* BODY.PEEK[]").await;
    let calls = w.store.calls() - before;
    each_its_own(&all);
    assert!(calls < 40, "{calls} store calls for 300 bodies");
    assert!(sealed().await == before_bytes, "no pack written again");

    // Two packs swapped: each is sealed for its own name, so both are
    // refused and deleted; the bodies are read alone, each its own, and
    // the next download writes the packs again.
    let (one, two) = (written[0].clone(), written[1].clone());
    let (a, b) = (
        w.store.get(&one).await.unwrap(),
        w.store.get(&two).await.unwrap(),
    );
    w.store.put(&one, b).await.unwrap();
    w.store.put(&two, a).await.unwrap();
    let third = instance_tuned(&w.services, "packthird", tuned);
    let mut t = login(&third, "alice").await;
    assert!(t.run("SELECT INBOX").await.has("* 300 EXISTS"));
    each_its_own(&t.run("FETCH 1:* BODY.PEEK[]").await);
    let keys = w.store.keys();
    assert!(
        !keys.contains(&one) && !keys.contains(&two),
        "{:?}",
        packs()
    );
    each_its_own(&t.run("FETCH 1:* BODY.PEEK[]").await);
    assert_eq!(packs(), written);
}

/// A download's batches end where summary pages do, and a range cutting
/// a page still reads its pack when it asks for a quarter of it: each
/// pack is read once, and no body alone; a search's chunks end there too,
/// each text page read once. Three summary pages of 100 messages: chunks
/// of 256 would cut the third page in two.
#[tokio::test]
async fn downloads_and_searches_read_each_page_once() {
    let w = world().await;
    let tuned = |c: &mut AccountConfig| {
        c.mailbox.log.snapshot_every = 100;
        c.mailbox.prepare_indexes = false;
    };
    let writer = instance_tuned(&w.services, "pagewriter", tuned);
    let mut c = login(&writer, "alice").await;
    let mut expected = Vec::new();
    for page in 1..=3 {
        for i in (page - 1) * 100 + 1..=page * 100 {
            let raw = message(&format!("p{i}"), &format!("body of {i}\r\nends {i}."));
            assert!(c.append("INBOX", "", &raw).await.ok());
            expected.push(raw);
        }
        // The sync of this SELECT (or the poller's) pages the hundred out.
        assert!(c.run("SELECT INBOX").await.ok());
        wait_for_summary_pages(&w.store, page).await;
    }
    // 40 bodies of the third page: a quarter of it but not half, and no
    // pack yet: read alone, not the whole page to write its pack.
    let some = c.run("FETCH 201:240 BODY.PEEK[]").await;
    each_of_n_its_own_body(&some, &expected, 40);
    assert!(side_objects(&w.store, ".b1").is_empty());
    let all = c.run("FETCH 1:* BODY.PEEK[]").await;
    each_its_own_body(&all, &expected);
    let packs = side_objects(&w.store, ".b1");
    assert_eq!(packs.len(), 3, "a pack per summary page: {packs:?}");
    let pack_reads = || packs.iter().map(|k| w.store.reads(k)).collect::<Vec<u64>>();
    // GETs of bodies read alone (by any instance: none polls bodies).
    let body_reads = || {
        w.store
            .keys()
            .iter()
            .filter(|k| k.contains("/blob/"))
            .map(|k| w.store.reads(k))
            .sum::<u64>()
    };
    let since = |before: &[u64]| -> Vec<u64> {
        pack_reads()
            .iter()
            .zip(before)
            .map(|(a, b)| a - b)
            .collect()
    };

    // Another instance downloads the whole mailbox: each pack read once.
    let reader = instance_tuned(&w.services, "pagereader", tuned);
    let mut r = login(&reader, "alice").await;
    assert!(r.run("SELECT INBOX").await.has("* 300 EXISTS"));
    let (before, bodies) = (pack_reads(), body_reads());
    each_its_own_body(&r.run("FETCH 1:* BODY.PEEK[]").await, &expected);
    assert_eq!(since(&before), [1, 1, 1], "GETs of each pack");
    assert_eq!(body_reads(), bodies, "bodies read alone");

    // A third one downloads messages 1 to 230: the third page's pack is
    // read for its first 30 bodies, not a GET each.
    let third = instance_tuned(&w.services, "pagethird", tuned);
    let mut t = login(&third, "alice").await;
    assert!(t.run("SELECT INBOX").await.has("* 300 EXISTS"));
    let (before, bodies) = (pack_reads(), body_reads());
    each_its_own_body(&t.run("FETCH 1:230 BODY.PEEK[]").await, &expected[..230]);
    assert_eq!(since(&before), [1, 1, 1], "GETs of each pack");
    assert_eq!(body_reads(), bodies, "bodies read alone");

    // A search's chunks end where pages do too: each text page read once
    // on a fourth instance, and the matches numbered right across chunks
    // of 200 and 100 messages.
    let found = c.run("SEARCH TEXT \"ends 25\"").await;
    assert_eq!(
        found.untagged("SEARCH"),
        ["* SEARCH 25 250 251 252 253 254 255 256 257 258 259"]
    );
    let text_pages = side_objects(&w.store, ".t1");
    assert_eq!(
        text_pages.len(),
        3,
        "a text page per summary page: {text_pages:?}"
    );
    let fourth = instance_tuned(&w.services, "pagefourth", tuned);
    let mut f = login(&fourth, "alice").await;
    assert!(f.run("SELECT INBOX").await.has("* 300 EXISTS"));
    let before: Vec<u64> = text_pages.iter().map(|k| w.store.reads(k)).collect();
    let found = f.run("SEARCH TEXT \"ends 2\"").await;
    let matches: Vec<u32> = found.untagged("SEARCH")[0]
        .split(' ')
        .skip(2)
        .map(|n| n.parse().unwrap())
        .collect();
    let expected: Vec<u32> = (1..=300)
        .filter(|i| i.to_string().starts_with('2'))
        .collect();
    assert_eq!(matches, expected);
    let read: Vec<u64> = text_pages
        .iter()
        .zip(&before)
        .map(|(k, b)| w.store.reads(k) - b)
        .collect();
    assert_eq!(read, [1, 1, 1], "GETs of each text page");
    // With message 5 expunged, sequence numbers are UIDs - 1 from it on:
    // 195:205 are UIDs 196 to 206, across the chunks (199 and 100).
    assert!(f.run("STORE 5 +FLAGS.SILENT (\\Deleted)").await.ok());
    assert!(f.run("EXPUNGE").await.has("* 5 EXPUNGE"));
    let found = f.run("SEARCH 195:205 TEXT \"ends 2\"").await;
    assert_eq!(
        found.untagged("SEARCH"),
        ["* SEARCH 199 200 201 202 203 204 205"]
    );
}

/// A snapshot that pages out full summary pages writes their index
/// pages in the background (header and text pages, body packs): the
/// first download and the first text search then read a page per 256
/// messages, on this instance and another, each message getting its own
/// body; a download racing the preparation answers each message its own
/// body too.
#[tokio::test]
async fn snapshots_prepare_the_index_pages_of_full_summary_pages() {
    let w = world().await;
    // One snapshot, at the SELECT after the appends (APPEND writes none):
    // summary pages of 256 and 74 messages, both prepared.
    let tuned = |c: &mut AccountConfig| c.mailbox.log.snapshot_every = 330;
    let writer = instance_tuned(&w.services, "preparer", tuned);
    let mut c = login(&writer, "alice").await;
    let mut expected = Vec::new();
    for i in 1..=330 {
        let body = match i {
            // Over 64 KiB: in no pack, read alone.
            7 => format!("long {i}\r\n{}", "0123456789abcdef\r\n".repeat(5000)),
            _ if i % 10 == 3 => format!("line {i}\r\nthe NeEdLe is here"),
            _ => format!("body of {i}\r\nends {i}."),
        };
        let raw = message(&format!("p{i}"), &body);
        assert!(c.append("INBOX", "", &raw).await.ok());
        expected.push(raw);
    }
    let each_its_own = |reply: &imap_client::Reply| each_its_own_body(reply, &expected);
    // At once, racing the preparation: each message its own body.
    assert!(c.run("SELECT INBOX").await.has("* 330 EXISTS"));
    each_its_own(&c.run("FETCH 1:* BODY.PEEK[]").await);
    wait_for_summary_pages(&w.store, 2).await;

    let side = |suffix: &str| side_objects(&w.store, suffix);
    let summary_pages: Vec<String> = w
        .store
        .keys()
        .into_iter()
        .filter(|k| k.contains("/mbox/") && k.contains("/side/") && !k.contains('.'))
        .collect();
    assert_eq!(summary_pages.len(), 2, "{summary_pages:?}");
    let complete = || {
        [".h1", ".t1", ".b1"].iter().all(|suffix| {
            let mut want: Vec<String> = summary_pages
                .iter()
                .map(|p| format!("{p}{suffix}"))
                .collect();
            want.sort();
            side(suffix) == want
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !complete() {
        assert!(
            std::time::Instant::now() < deadline,
            "index pages not prepared: {:?} {:?} {:?}",
            side(".h1"),
            side(".t1"),
            side(".b1")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Another instance: the first download reads the packs (a GET per
    // page, plus the long body and the 30 bodies not paged yet) and writes
    // none; the first text search reads no body of a paged message.
    let reader = instance_tuned(&w.services, "prepared", tuned);
    let mut r = login(&reader, "alice").await;
    assert!(r.run("SELECT INBOX").await.has("* 330 EXISTS"));
    let before = w.store.calls();
    let all = r.run("FETCH 1:* BODY.PEEK[]").await;
    let calls = w.store.calls() - before;
    each_its_own(&all);
    assert!(calls < 31 + 20, "{calls} store calls for 330 bodies");
    let before = w.store.calls();
    let found = r.run("SEARCH BODY needle").await;
    let calls = w.store.calls() - before;
    let needles: Vec<String> = (1..=330)
        .filter(|i| i % 10 == 3)
        .map(|i| i.to_string())
        .collect();
    assert_eq!(
        found.untagged("SEARCH"),
        vec![format!("* SEARCH {}", needles.join(" "))],
        "{found:?}"
    );
    assert!(calls < 31 + 20, "{calls} store calls for a text search");
    assert!(complete(), "nothing written again");
}

/// SEARCH BODY and TEXT over a mailbox of a page or more read the
/// messages' texts from text pages, written by the first such search:
/// another instance then answers the same without reading a body, a
/// damaged text page is searched around and written again, and messages
/// not paged yet or expunged since are answered right.
#[tokio::test]
async fn text_searches_of_large_mailboxes_read_text_pages() {
    use facteur::store::ObjectStore;
    let w = world().await;
    // Index pages written at first use, not after the snapshot.
    let tuned = |c: &mut AccountConfig| {
        c.mailbox.log.snapshot_every = 100;
        c.mailbox.prepare_indexes = false;
    };
    let writer = instance_tuned(&w.services, "textwriter", tuned);
    let mut c = login(&writer, "alice").await;
    let mut expected = Vec::new();
    for i in 1..=300 {
        let body = match i % 10 {
            3 => format!("line {i}\r\nthe NeEdLe is here"),
            // Split over two parts: no match across them.
            7 => format!(
                "--b\r\nContent-Type: text/plain\r\n\r\nnee\r\n--b\r\n\
                 Content-Type: text/plain\r\n\r\ndle {i}\r\n--b--"
            ),
            _ => format!("nothing {i}"),
        };
        let mut raw = message(&format!("t{i}"), &body);
        if i % 10 == 7 {
            raw = raw.replacen(
                "\r\n\r\n",
                "\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n",
                1,
            );
        }
        if i == 5 {
            // An attached message: BODY matches its header too.
            raw = raw.replacen(
                "\r\n\r\n",
                "\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n\
                 --m\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
                 --m\r\nContent-Type: message/rfc822\r\n\r\n\
                 X-Note: a wombat\r\nSubject: inner\r\n\r\ninner text\r\n--m--\r\n",
                1,
            );
        }
        assert!(c.append("INBOX", "", &raw).await.ok());
        if i % 10 == 3 {
            expected.push(i.to_string());
        }
    }
    let answer = format!("* SEARCH {}", expected.join(" "));
    assert!(c.run("SELECT INBOX").await.has("* 300 EXISTS"));
    let text_pages = || side_objects(&w.store, ".t1");
    assert!(text_pages().is_empty());
    let found = c.run("SEARCH TEXT needle").await;
    assert_eq!(found.untagged("SEARCH"), vec![answer.clone()], "{found:?}");
    let written = text_pages();
    let summary_pages = w
        .store
        .keys()
        .into_iter()
        .filter(|k| k.contains("/side/") && !k.contains('.'))
        .count();
    assert!(summary_pages >= 2, "{summary_pages} summary pages");
    assert_eq!(written.len(), summary_pages, "{written:?}");

    // Another instance: no body read (300 of them before text pages), no
    // page written.
    let reader = instance_tuned(&w.services, "textreader", tuned);
    let mut r = login(&reader, "alice").await;
    assert!(r.run("SELECT INBOX").await.has("* 300 EXISTS"));
    let page_bytes = async || {
        let mut all = Vec::new();
        for key in text_pages() {
            all.push(w.store.get(&key).await.unwrap());
        }
        all
    };
    let sealed = page_bytes().await;
    let before = w.store.calls();
    let found = r.run("SEARCH BODY needle").await;
    let calls = w.store.calls() - before;
    assert_eq!(found.untagged("SEARCH"), vec![answer.clone()], "{found:?}");
    assert!(
        calls < 60,
        "{calls} store calls for a search of 300 messages"
    );
    assert_eq!(text_pages(), written);
    assert!(page_bytes().await == sealed, "no text page written again");
    // The header of an attached message, found through the structure the
    // text page was written with.
    let found = r.run("SEARCH BODY wombat").await;
    assert_eq!(found.untagged("SEARCH"), vec!["* SEARCH 5"], "{found:?}");
    // Expunged by another session after the pages were written, still in
    // this session's view: not matched.
    let mut other = login(&reader, "alice").await;
    assert!(other.run("SELECT INBOX").await.ok());
    assert!(
        other
            .run("UID STORE 13 +FLAGS.SILENT (\\Deleted)")
            .await
            .ok()
    );
    assert!(other.run("UID EXPUNGE 13").await.ok());
    expected.retain(|uid| uid != "13");
    let answer = format!("* SEARCH {}", expected.join(" "));
    let found = r.run("UID SEARCH BODY needle").await;
    assert_eq!(found.untagged("SEARCH"), vec![answer.clone()], "{found:?}");

    // A damaged text page: the answer is the same, read from the bodies;
    // the page is deleted, and the next search writes it again.
    let damaged = &written[0];
    w.store
        .put(damaged, bytes::Bytes::from_static(b"rot"))
        .await
        .unwrap();
    let third = instance_tuned(&w.services, "textthird", tuned);
    let mut t = login(&third, "alice").await;
    assert!(t.run("SELECT INBOX").await.has("* 299 EXISTS"));
    let found = t.run("UID SEARCH TEXT needle").await;
    assert_eq!(found.untagged("SEARCH"), vec![answer.clone()], "{found:?}");
    assert!(
        !w.store.keys().contains(damaged),
        "the damaged page is deleted"
    );
    let found = t.run("UID SEARCH TEXT needle").await;
    assert_eq!(found.untagged("SEARCH"), vec![answer.clone()], "{found:?}");
    let rewritten = w.store.get(damaged).await.unwrap();
    assert_ne!(rewritten.as_ref(), b"rot");

    // A new message (summary not paged yet) and an expunged one.
    assert!(
        c.append("INBOX", "", &message("late", "a late needle"))
            .await
            .ok()
    );
    assert!(c.run("UID STORE 3 +FLAGS.SILENT (\\Deleted)").await.ok());
    assert!(c.run("UID EXPUNGE 3").await.ok());
    let found = c.run("UID SEARCH TEXT needle").await;
    let mut uids: Vec<String> = expected.iter().skip(1).cloned().collect();
    uids.push("301".into());
    assert_eq!(
        found.untagged("SEARCH"),
        vec![format!("* SEARCH {}", uids.join(" "))],
        "{found:?}"
    );
}

/// Header keys (SUBJECT, HEADER, and TEXT's header half) over a mailbox
/// larger than a scan read header pages, written by the first such
/// search: with every summary page gone, another instance still answers
/// them from the header and text pages alone, without summarising a
/// body again; a damaged header page is searched around.
#[tokio::test]
async fn header_searches_of_large_mailboxes_read_header_pages() {
    use facteur::store::ObjectStore;
    let w = world().await;
    // Index pages written at first use, not after the snapshot.
    let tuned = |c: &mut AccountConfig| {
        c.mailbox.log.snapshot_every = 300;
        c.mailbox.prepare_indexes = false;
    };
    let writer = instance_tuned(&w.services, "headerwriter", tuned);
    let mut c = login(&writer, "alice").await;
    let (mut subjects, mut texts) = (Vec::new(), Vec::new());
    for i in 1..=800 {
        let subject = match i % 7 {
            // Encoded words: matched decoded.
            2 => format!("=?utf-8?q?caf=C3=A9_{i}?="),
            _ => format!("plain {i}"),
        };
        let body = if i % 11 == 4 {
            "a quokka here"
        } else {
            "nothing"
        };
        let mut raw = message(&subject, body);
        if i == 5 {
            // An attached message: TEXT matches its header too.
            raw = raw.replacen(
                "\r\n\r\n",
                "\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n\
                 --m\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
                 --m\r\nContent-Type: message/rfc822\r\n\r\n\
                 X-Note: a wombat\r\nSubject: inner\r\n\r\ninner text\r\n--m--\r\n",
                1,
            );
        }
        assert!(c.append("INBOX", "", &raw).await.ok());
        if i % 7 == 2 {
            subjects.push(i.to_string());
        }
        if i % 11 == 4 || i % 7 == 2 {
            texts.push(i.to_string());
        }
    }
    assert!(c.run("SELECT INBOX").await.has("* 800 EXISTS"));
    let keys = |suffix: &str| side_objects(&w.store, suffix);
    let search = async |c: &mut Client<_>, command: &str, expected: &[String]| {
        let found = c.run(command).await;
        assert_eq!(
            found.untagged("SEARCH"),
            vec![format!("* SEARCH {}", expected.join(" "))],
            "{command}: {found:?}"
        );
    };
    // SORT reads whole summaries: no header page is any use to it.
    assert!(c.run("SORT (SUBJECT) UTF-8 SUBJECT \"café\"").await.ok());
    assert!(keys(".h1").is_empty(), "header pages written for SORT");
    search(&mut c, "SEARCH SUBJECT \"CAFÉ\"", &subjects).await;
    let summary_pages: Vec<String> = w
        .store
        .keys()
        .into_iter()
        .filter(|k| k.contains("/side/") && !k.contains('.'))
        .collect();
    assert!(summary_pages.len() >= 2, "{summary_pages:?}");
    assert_eq!(keys(".h1").len(), summary_pages.len());
    assert!(keys(".t1").is_empty(), "no text page for a header search");
    // TEXT matches the café subjects in the header and quokka in bodies.
    let either: Vec<String> = texts.clone();
    search(&mut c, "SEARCH TEXT \"café\"", &subjects).await;
    assert_eq!(keys(".t1").len(), summary_pages.len());
    search(&mut c, "SEARCH OR TEXT quokka SUBJECT \"café\"", &either).await;

    // Every summary page gone: answered from index pages alone (a
    // summary missing would be computed again from its body, one GET
    // each).
    for page in &summary_pages {
        w.store.delete(page).await.unwrap();
    }
    let reader = instance_tuned(&w.services, "headerreader", tuned);
    let mut r = login(&reader, "alice").await;
    assert!(r.run("SELECT INBOX").await.has("* 800 EXISTS"));
    let before = w.store.calls();
    search(&mut r, "SEARCH SUBJECT \"café\"", &subjects).await;
    search(&mut r, "SEARCH HEADER Subject \"CAF\"", &subjects).await;
    let calls = w.store.calls() - before;
    assert!(calls < 30, "{calls} store calls for two header searches");
    // TEXT reads the bodies of the messages placed since the last
    // snapshot (fewer than 300), and no other.
    let before = w.store.calls();
    search(&mut r, "SEARCH OR TEXT quokka SUBJECT \"café\"", &either).await;
    let calls = w.store.calls() - before;
    assert!(calls < 330, "{calls} store calls for a text search");

    // A key that reads the envelope too (the Date: field): from
    // summaries, never from header pages (every message was sent on 23
    // November, and arrived later).
    search(
        &mut r,
        "SEARCH SENTBEFORE 24-Nov-2026 SUBJECT \"café\"",
        &subjects,
    )
    .await;
    // A damaged text page beside an intact header page: its messages are
    // searched in their bodies, with their structure (the attached
    // message's header), not with the header page's fields alone.
    let damaged = keys(".t1")[0].clone();
    w.store
        .put(&damaged, bytes::Bytes::from_static(b"rot"))
        .await
        .unwrap();
    let fourth = instance_tuned(&w.services, "headerfourth", tuned);
    let mut f = login(&fourth, "alice").await;
    assert!(f.run("SELECT INBOX").await.has("* 800 EXISTS"));
    search(&mut f, "SEARCH TEXT wombat", &["5".to_owned()]).await;
    assert!(!w.store.keys().contains(&damaged));

    // A damaged header page: deleted, and its messages' summaries
    // computed again from their bodies: the same answers.
    let damaged = keys(".h1")[0].clone();
    w.store
        .put(&damaged, bytes::Bytes::from_static(b"rot"))
        .await
        .unwrap();
    let third = instance_tuned(&w.services, "headerthird", tuned);
    let mut t = login(&third, "alice").await;
    assert!(t.run("SELECT INBOX").await.has("* 800 EXISTS"));
    search(&mut t, "SEARCH SUBJECT \"café\"", &subjects).await;
    assert!(!w.store.keys().contains(&damaged));
}
