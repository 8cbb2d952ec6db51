//! IMAP sessions as clients see them: the real driver over an in-memory
//! stream, on a `MemoryStore`, one test per command family, written as
//! client lines and checks on the server's answers (RFC 9051 examples
//! where they exist).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use facteur::account::{AccountConfig, Accounts};
use facteur::config::Config;
use facteur::crypto::{KdfParams, Password};
use facteur::directory::users_file::hash_password;
use facteur::directory::{UserEntry, UsersFile};
use facteur::imap::connection::{Peer, serve};
use facteur::imap::throttle::{Throttle, ThrottleConfig};
use facteur::imap::{Imap, Options};
use facteur::log::InstanceId;
use facteur::server::Services;
use facteur::store::MemoryStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

struct World {
    _dir: tempfile::TempDir,
    imap: Arc<Imap>,
    store: Arc<MemoryStore>,
}

fn user(login: &str) -> UserEntry {
    UserEntry {
        login: login.into(),
        password: hash_password(&Password::new("pw"), &KdfParams::TEST).unwrap(),
        addresses: vec![format!("{login}@example.org")],
        aliases: vec![],
        quota: None,
    }
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(
        "cluster_secret = \"0123456789abcdef0123456789abcdef\"\n\
         [store]\nbackend = \"memory\"\n\
         [directory]\nbackend = \"static\"\nusers_file = \"users.toml\"\n\
         [crypto.argon2]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\n",
        dir.path(),
    )
    .unwrap();
    let mut file = UsersFile::default();
    for login in ["alice", "bob", "carol"] {
        file.add(user(login)).unwrap();
    }
    file.save(&dir.path().join("users.toml")).unwrap();
    let mut services = Services::from_config(&config).unwrap();
    let store = Arc::new(MemoryStore::new());
    services.store = store.clone();
    services.keyrings = facteur::account::KeyringStore::new(store.clone(), b"imap-test-secret");
    for login in ["alice", "bob"] {
        services
            .keyrings
            .create(
                &services.user_id(login),
                &Password::new("pw"),
                &KdfParams::TEST,
                false,
            )
            .await
            .unwrap();
    }
    let mut account_config = AccountConfig::new(InstanceId::new("test").unwrap());
    account_config.poll_interval = Duration::from_millis(200);
    let accounts = Accounts::new(store.clone(), account_config, Duration::from_secs(5));
    let user_ids = services.clone();
    let imap = Arc::new(Imap {
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
    });
    World {
        _dir: dir,
        imap,
        store,
    }
}

/// A client on one connection.
struct Client {
    io: DuplexStream,
    buf: Vec<u8>,
    next_tag: u32,
}

impl World {
    async fn connect(&self) -> Client {
        self.connect_from("127.0.0.1:40000").await
    }

    async fn connect_from(&self, remote: &str) -> Client {
        let (client, server) = tokio::io::duplex(1 << 20);
        let peer = Peer {
            remote: remote.parse::<SocketAddr>().unwrap(),
            local: "127.0.0.1:143".parse().unwrap(),
            tls: false,
        };
        tokio::spawn(serve(
            server,
            peer,
            self.imap.clone(),
            std::future::pending(),
        ));
        let mut c = Client {
            io: client,
            buf: Vec::new(),
            next_tag: 1,
        };
        let greeting = c.line().await;
        assert!(
            greeting.starts_with("* OK [CAPABILITY IMAP4rev1"),
            "{greeting}"
        );
        c
    }

    async fn login(&self, who: &str) -> Client {
        let mut c = self.connect().await;
        let r = c.run(&format!("LOGIN {who} pw")).await;
        assert!(r.ok(), "{r:?}");
        c
    }
}

/// The lines a command got, tagged one last.
#[derive(Debug)]
struct Reply {
    lines: Vec<String>,
}

impl Reply {
    fn tagged(&self) -> &str {
        self.lines.last().map(String::as_str).unwrap_or("")
    }
    fn ok(&self) -> bool {
        self.tagged().split(' ').nth(1) == Some("OK")
    }
    fn no(&self) -> bool {
        self.tagged().split(' ').nth(1) == Some("NO")
    }
    fn bad(&self) -> bool {
        self.tagged().split(' ').nth(1) == Some("BAD")
    }
    fn has(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.contains(needle))
    }
    fn untagged(&self, prefix: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|l| l.starts_with(&format!("* {prefix}")))
            .map(String::as_str)
            .collect()
    }
    fn all(&self) -> String {
        self.lines.join("\n")
    }
}

impl Client {
    async fn fill(&mut self) {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(20), self.io.read(&mut chunk))
            .await
            .expect("server answered in time")
            .unwrap();
        assert!(n > 0, "server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// One response line; a literal's data is appended to its line.
    async fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let mut line: Vec<u8> = self.buf.drain(..end + 2).collect();
                line.truncate(line.len() - 2);
                // `{n}` at the end: the literal follows.
                if line.ends_with(b"}")
                    && let Some(open) = line.iter().rposition(|b| *b == b'{')
                    && let Ok(n) = std::str::from_utf8(&line[open + 1..line.len() - 1])
                        .unwrap_or("x")
                        .parse::<usize>()
                {
                    while self.buf.len() < n {
                        self.fill().await;
                    }
                    line.extend(self.buf.drain(..n));
                    let rest = Box::pin(self.line()).await;
                    line.extend_from_slice(rest.as_bytes());
                }
                return String::from_utf8_lossy(&line).into_owned();
            }
            self.fill().await;
        }
    }

    async fn send(&mut self, raw: &[u8]) {
        self.io.write_all(raw).await.unwrap();
    }

    fn tag(&mut self) -> String {
        let t = format!("a{}", self.next_tag);
        self.next_tag += 1;
        t
    }

    async fn until_tagged(&mut self, tag: &str) -> Reply {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await;
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                return Reply { lines };
            }
        }
    }

    async fn run(&mut self, command: &str) -> Reply {
        let tag = self.tag();
        self.send(format!("{tag} {command}\r\n").as_bytes()).await;
        self.until_tagged(&tag).await
    }

    /// APPEND with a synchronizing literal: waits for the continuation.
    async fn append(&mut self, mailbox: &str, extra: &str, message: &str) -> Reply {
        let tag = self.tag();
        self.send(format!("{tag} APPEND {mailbox} {extra}{{{}}}\r\n", message.len()).as_bytes())
            .await;
        let cont = self.line().await;
        assert!(cont.starts_with('+'), "{cont}");
        self.send(message.as_bytes()).await;
        self.send(b"\r\n").await;
        self.until_tagged(&tag).await
    }
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
        f.has("* 1 FETCH (UID 1 FLAGS (\\Flagged) RFC822.SIZE "),
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
    assert!(other.run("SELECT INBOX").await.ok());
    assert!(other.run("STORE 1 +FLAGS (\\Answered)").await.ok());
    let flags = idler.line().await;
    assert!(
        flags.contains("FETCH (UID 1 FLAGS (\\Answered))"),
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
