//! Protocol details of the selected state that a compliance suite checks
//! (issue 13, item 3): CONDSTORE enabled implicitly by FETCH, SEARCH and
//! STORE (RFC 7162 §3.1) and the MODSEQ of ESEARCH MIN/MAX (RFC 4731
//! §3.2); keywords announced in FLAGS before any FETCH shows them, a FLAGS
//! list that never shrinks, and a bounded number of keywords; `\Recent`
//! (RFC 3501 §2.3.2) per instance, in exactly one session.
//!
//! The real driver over in-memory streams, on a `MemoryStore`; two
//! instances share the store where a test says so. Nothing sleeps: tests
//! wait for the server's lines.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use facteur::account::Accounts;
use facteur::crypto::KdfParams;
use facteur::imap::connection::{Peer, serve};
use facteur::imap::throttle::{Throttle, ThrottleConfig};
use facteur::imap::{Imap, Options};
use facteur::log::InstanceId;
use facteur::server::Services;
use facteur::store::MemoryStore;

mod fixture;
mod imap_client;

use imap_client::{Client, Reply};

/// The most keywords a mailbox takes (`MAX_KEYWORDS` in the server).
const MAX_KEYWORDS: usize = 256;

struct World {
    _dir: tempfile::TempDir,
    services: Services,
    imap: Arc<Imap>,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let config = fixture::config(dir.path(), "0123456789abcdef0123456789abcdef");
    let users = ["alice", "bob"].map(fixture::user_at_example).to_vec();
    let (services, _) = fixture::services(
        &config,
        dir.path(),
        store,
        b"0123456789abcdef0123456789abcdef",
        users,
        &["alice", "bob"],
    )
    .await;
    let imap = instance(&services, "one");
    World {
        _dir: dir,
        services,
        imap,
    }
}

/// One instance's IMAP context over the world's store, polling every
/// 100 ms.
fn instance(services: &Services, name: &str) -> Arc<Imap> {
    let mut account_config = services.account_config(InstanceId::new(name).unwrap());
    account_config.poll_interval = Duration::from_millis(100);
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
        recovery_key: false,
        options: Options {
            max_message: 1 << 20,
            ..Options::default()
        },
        throttle: Arc::new(Throttle::new(ThrottleConfig::default())),
        tls: None,
    })
}

async fn login(imap: &Arc<Imap>) -> Client {
    let (client, server) = tokio::io::duplex(1 << 20);
    let peer = Peer {
        remote: "127.0.0.1:40000".parse::<SocketAddr>().unwrap(),
        local: "127.0.0.1:143".parse().unwrap(),
        tls: false,
    };
    tokio::spawn(serve(server, peer, imap.clone(), std::future::pending()));
    let (mut c, _) = Client::start(client).await;
    let r = c.run("LOGIN alice pw").await;
    assert!(r.ok(), "{r:?}");
    c
}

fn message(subject: &str) -> String {
    format!(
        "From: Bob <bob@example.org>\r\nTo: alice@example.org\r\nSubject: {subject}\r\n\
         Date: Mon, 23 Nov 2026 10:00:00 +0100\r\nMessage-ID: <{subject}@example.org>\r\n\r\nhello\r\n"
    )
}

/// Appends `n` messages to INBOX through a session that never selects it.
async fn fill_inbox(imap: &Arc<Imap>, n: usize) {
    let mut c = login(imap).await;
    for i in 0..n {
        let r = c.append("INBOX", "", &message(&format!("m{i}"))).await;
        assert!(r.ok(), "{r:?}");
    }
}

/// The number in `* n NAME` among `reply`'s lines.
fn count(reply: &Reply, name: &str) -> Option<u32> {
    reply.lines.iter().find_map(|l| {
        let rest = l.strip_prefix("* ")?;
        let (n, word) = rest.split_once(' ')?;
        (word == name).then(|| n.parse().ok()).flatten()
    })
}

/// The value after `key ` in the first line holding it (`MODSEQ 12)` →
/// 12).
fn number_after(line: &str, key: &str) -> u64 {
    let start = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
    line[start..]
        .trim_start_matches(['(', ' '])
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("a number after {key} in {line}"))
}

/// Reads a session's lines as a client keeping the FLAGS it was told:
/// every FETCH FLAGS keyword must have been in a FLAGS response before,
/// and FLAGS never loses a keyword (RFC 3501 §7.2.6).
#[derive(Default)]
struct FlagsWatch {
    announced: BTreeSet<String>,
    /// PERMANENTFLAGS followed every FLAGS that added a keyword.
    permanent: BTreeSet<String>,
}

impl FlagsWatch {
    fn line(&mut self, line: &str) {
        if let Some(list) = line.strip_prefix("* FLAGS (") {
            let list: BTreeSet<String> = list
                .trim_end_matches(')')
                .split(' ')
                .filter(|f| !f.is_empty() && !f.starts_with('\\'))
                .map(str::to_owned)
                .collect();
            assert!(
                list.is_superset(&self.announced),
                "FLAGS shrank: {:?} then {line}",
                self.announced
            );
            self.announced = list;
        } else if let Some(rest) = line.strip_prefix("* OK [PERMANENTFLAGS (") {
            self.permanent = rest
                .split(')')
                .next()
                .unwrap()
                .split(' ')
                .filter(|f| !f.is_empty() && !f.starts_with('\\'))
                .map(str::to_owned)
                .collect();
        } else if line.contains(" FETCH (")
            && let Some(start) = line.find("FLAGS (")
        {
            let list = &line[start + "FLAGS (".len()..];
            let list = &list[..list.find(')').unwrap()];
            for k in list
                .split(' ')
                .filter(|f| !f.is_empty() && !f.starts_with('\\'))
            {
                assert!(
                    self.announced.contains(k),
                    "keyword {k} used without being in FLAGS {:?}: {line}",
                    self.announced
                );
                assert!(
                    self.permanent.contains(k),
                    "keyword {k} not in PERMANENTFLAGS {:?}: {line}",
                    self.permanent
                );
            }
        }
    }

    fn reply(&mut self, reply: &Reply) {
        for l in &reply.lines {
            self.line(l);
        }
    }

    async fn run(&mut self, c: &mut Client, command: &str) -> Reply {
        let r = c.run(command).await;
        self.reply(&r);
        r
    }
}

#[tokio::test]
async fn fetch_modseq_enables_condstore_and_announces_highestmodseq() {
    let w = world().await;
    fill_inbox(&w.imap, 2).await;

    let mut c = login(&w.imap).await;
    let select = c.run("SELECT INBOX").await;
    assert!(select.ok() && !select.has("HIGHESTMODSEQ"), "{select:?}");
    let f = c.run("FETCH 1 (MODSEQ)").await;
    assert!(f.ok(), "{f:?}");
    let announce = f
        .lines
        .iter()
        .position(|l| l.starts_with("* OK [HIGHESTMODSEQ "));
    let fetch = f.lines.iter().position(|l| l.starts_with("* 1 FETCH"));
    assert!(
        matches!((announce, fetch), (Some(a), Some(b)) if a < b),
        "HIGHESTMODSEQ first: {f:?}"
    );
    // Once is enough: CONDSTORE is on now.
    let again = c.run("FETCH 1:2 (MODSEQ)").await;
    assert!(again.ok() && !again.has("HIGHESTMODSEQ"), "{again:?}");
    let store = c.run("STORE 2 +FLAGS (\\Flagged)").await;
    assert!(
        store.has("* 2 FETCH (FLAGS (") && store.has("UID 2") && store.has("MODSEQ ("),
        "UID and MODSEQ in every FETCH after CONDSTORE: {store:?}"
    );

    // CHANGEDSINCE alone enables it too.
    let mut c = login(&w.imap).await;
    assert!(c.run("SELECT INBOX").await.ok());
    let f = c.run("FETCH 1:* (FLAGS) (CHANGEDSINCE 1)").await;
    assert!(f.ok() && f.has("* OK [HIGHESTMODSEQ "), "{f:?}");

    // A SEARCH with a MODSEQ key too, and the session keeps it on.
    let mut c = login(&w.imap).await;
    assert!(c.run("SELECT INBOX").await.ok());
    let s = c.run("SEARCH MODSEQ 1").await;
    assert!(s.ok() && s.has("* OK [HIGHESTMODSEQ "), "{s:?}");
    assert!(s.has("* SEARCH 1 2 (MODSEQ "), "{s:?}");
    let f = c.run("FETCH 1 (FLAGS)").await;
    assert!(f.has("MODSEQ ("), "FLAGS come with MODSEQ now: {f:?}");
    let again = c.run("SEARCH MODSEQ 1").await;
    assert!(!again.has("HIGHESTMODSEQ"), "{again:?}");

    // Enabled before selecting: SELECT tells it, FETCH does not repeat it.
    let mut c = login(&w.imap).await;
    assert!(c.run("ENABLE CONDSTORE").await.ok());
    assert!(c.run("SELECT INBOX").await.has("[HIGHESTMODSEQ "));
    assert!(!c.run("FETCH 1 (MODSEQ)").await.has("HIGHESTMODSEQ"));
}

#[tokio::test]
async fn esearch_modseq_is_that_of_the_messages_returned() {
    let w = world().await;
    fill_inbox(&w.imap, 3).await;
    let mut c = login(&w.imap).await;
    assert!(c.run("SELECT INBOX (CONDSTORE)").await.ok());
    // Message 2 changes last: the highest MODSEQ, neither MIN nor MAX.
    assert!(c.run("STORE 3 +FLAGS (\\Seen)").await.ok());
    assert!(c.run("STORE 2 +FLAGS (\\Seen)").await.ok());
    let f = c.run("FETCH 1:3 (MODSEQ)").await;
    let modseq = |seq: u32| {
        let line = f
            .lines
            .iter()
            .find(|l| l.starts_with(&format!("* {seq} FETCH")))
            .unwrap();
        number_after(line, "MODSEQ")
    };
    let (m1, m2, m3) = (modseq(1), modseq(2), modseq(3));
    assert!(m2 > m3 && m3 > m1, "{f:?}");

    for (options, expected) in [
        ("MIN", m1),
        ("MAX", m3),
        ("MIN MAX", m1.max(m3)),
        ("ALL", m2),
        ("COUNT", m2),
        ("MIN COUNT", m2),
        ("MAX ALL", m2),
    ] {
        let r = c.run(&format!("SEARCH RETURN ({options}) MODSEQ 1")).await;
        let line = r.untagged("ESEARCH");
        assert!(r.ok() && line.len() == 1, "{options}: {r:?}");
        assert_eq!(
            number_after(line[0], "MODSEQ"),
            expected,
            "RETURN ({options}): {r:?}"
        );
    }
    // The UID form picks the same messages.
    let r = c.run("UID SEARCH RETURN (MIN) MODSEQ 1").await;
    assert_eq!(number_after(r.untagged("ESEARCH")[0], "MODSEQ"), m1);
    // A plain SEARCH answers the highest of all matches.
    let r = c.run("SEARCH MODSEQ 1").await;
    assert!(r.has(&format!("* SEARCH 1 2 3 (MODSEQ {m2})")), "{r:?}");
}

#[tokio::test]
async fn a_keyword_from_another_session_is_announced_before_fetch() {
    let w = world().await;
    fill_inbox(&w.imap, 2).await;
    let mut idler = login(&w.imap).await;
    let mut watch = FlagsWatch::default();
    watch.run(&mut idler, "SELECT INBOX").await;
    let mut other = login(&w.imap).await;
    assert!(other.run("SELECT INBOX").await.ok());

    // During IDLE: FLAGS and PERMANENTFLAGS, then the FETCH.
    let tag = idler.tag();
    idler.send(format!("{tag} IDLE\r\n").as_bytes()).await;
    assert!(idler.line().await.starts_with("+ "));
    assert!(other.run("STORE 1 +FLAGS ($Idle)").await.ok());
    loop {
        let line = idler.line().await;
        watch.line(&line);
        if line.contains("FETCH") {
            assert!(line.contains("$Idle"), "{line}");
            break;
        }
    }
    idler.send(b"DONE\r\n").await;
    let done = idler.until_tagged(&tag).await;
    watch.reply(&done);
    assert!(watch.announced.contains("$Idle"));

    // A FETCH that reads the flags before any report: the keyword is
    // in the shared state already.
    assert!(other.run("STORE 2 +FLAGS ($Fetched)").await.ok());
    let f = watch.run(&mut idler, "FETCH 1:2 (FLAGS)").await;
    assert!(f.has("$Fetched"), "{f:?}");

    // Around NOOP.
    assert!(other.run("STORE 1 +FLAGS ($Noop)").await.ok());
    let n = watch.run(&mut idler, "NOOP").await;
    assert!(n.has("$Noop"), "{n:?}");

    // This session's own STORE, loud and silent.
    let s = watch.run(&mut idler, "STORE 1 +FLAGS ($Own)").await;
    assert!(s.ok() && s.has("$Own"), "{s:?}");
    assert!(
        watch
            .run(&mut idler, "STORE 2 +FLAGS.SILENT ($Quiet)")
            .await
            .ok()
    );
    assert!(watch.run(&mut idler, "FETCH 2 (FLAGS)").await.has("$Quiet"));

    // An APPEND with a new keyword by the other session.
    assert!(
        other
            .append("INBOX", "($Appended) ", &message("new"))
            .await
            .ok()
    );
    watch.run(&mut idler, "NOOP").await;
    assert!(
        watch
            .run(&mut idler, "FETCH 3 (FLAGS)")
            .await
            .has("$Appended")
    );

    // Keywords no longer in use stay listed until the next SELECT.
    assert!(
        other
            .run("STORE 1:* -FLAGS ($Idle $Fetched $Noop $Own $Quiet $Appended)")
            .await
            .ok()
    );
    let n = watch.run(&mut idler, "NOOP").await;
    assert!(n.has("FETCH"), "{n:?}");
    let s = watch.run(&mut idler, "STORE 1 +FLAGS ($Later)").await;
    assert!(s.has("* FLAGS ("), "{s:?}");
    for k in ["$Idle", "$Fetched", "$Noop", "$Own", "$Quiet", "$Appended"] {
        assert!(watch.announced.contains(k), "{k} dropped");
    }
    let again = idler.run("SELECT INBOX").await;
    let flags = again.untagged("FLAGS")[0];
    assert!(
        flags.contains("$Later") && !flags.contains("$Idle"),
        "a new SELECT lists what is in use: {flags}"
    );
}

#[tokio::test]
async fn a_keyword_from_another_instance_is_announced_before_fetch() {
    let w = world().await;
    fill_inbox(&w.imap, 1).await;
    let two = instance(&w.services, "two");
    let mut idler = login(&w.imap).await;
    let mut watch = FlagsWatch::default();
    watch.run(&mut idler, "SELECT INBOX").await;
    let mut other = login(&two).await;
    assert!(other.run("SELECT INBOX").await.has("* 1 EXISTS"));

    let tag = idler.tag();
    idler.send(format!("{tag} IDLE\r\n").as_bytes()).await;
    assert!(idler.line().await.starts_with("+ "));
    assert!(other.run("STORE 1 +FLAGS ($Far)").await.ok());
    loop {
        let line = idler.line().await;
        watch.line(&line);
        if line.contains("FETCH") {
            assert!(line.contains("$Far"), "{line}");
            break;
        }
    }
    idler.send(b"DONE\r\n").await;
    watch.reply(&idler.until_tagged(&tag).await);
}

#[tokio::test]
async fn keywords_are_bounded_and_flags_stays_within_the_bound() {
    let w = world().await;
    fill_inbox(&w.imap, 2).await;
    let mut c = login(&w.imap).await;
    let mut watch = FlagsWatch::default();
    let select = watch.run(&mut c, "SELECT INBOX").await;
    assert!(select.has("\\*)]"), "new keywords allowed: {select:?}");

    let all: Vec<String> = (0..MAX_KEYWORDS).map(|i| format!("k{i}")).collect();
    let s = watch
        .run(&mut c, &format!("STORE 1 +FLAGS ({})", all.join(" ")))
        .await;
    assert!(s.ok(), "{s:?}");
    assert_eq!(watch.announced.len(), MAX_KEYWORDS);
    let full = s.untagged("OK [PERMANENTFLAGS");
    assert!(
        full.last().is_some_and(|l| !l.contains("\\*")),
        "no \\* once full: {s:?}"
    );

    // One more: by STORE, by another session's STORE, by APPEND.
    let r = watch.run(&mut c, "STORE 2 +FLAGS (k-extra)").await;
    assert!(r.no() && r.tagged().contains("[LIMIT]"), "{r:?}");
    let mut other = login(&w.imap).await;
    assert!(other.run("SELECT INBOX").await.ok());
    let r = other.run("STORE 2 +FLAGS (k-other)").await;
    assert!(r.no() && r.tagged().contains("[LIMIT]"), "{r:?}");
    let r = other.append("INBOX", "(k-append) ", &message("x")).await;
    assert!(r.no() && r.tagged().contains("[LIMIT]"), "{r:?}");
    // Keywords in use can still be set anywhere.
    assert!(watch.run(&mut c, "STORE 2 +FLAGS (k0 k255)").await.ok());

    // Dropping them all and setting as many new ones: the session still
    // lists the old ones, so the new ones are refused.
    assert!(
        watch
            .run(&mut c, &format!("STORE 1:2 -FLAGS ({})", all.join(" ")))
            .await
            .ok()
    );
    let r = watch.run(&mut c, "STORE 1 +FLAGS (fresh)").await;
    assert!(r.no() && r.tagged().contains("[LIMIT]"), "{r:?}");
    watch.run(&mut c, "NOOP").await;
    assert!(watch.announced.len() <= MAX_KEYWORDS);
    // A new SELECT starts from the keywords in use.
    let mut watch = FlagsWatch::default();
    let select = watch.run(&mut c, "SELECT INBOX").await;
    assert!(select.has("\\*)]"), "{select:?}");
    assert!(watch.run(&mut c, "STORE 1 +FLAGS (fresh)").await.ok());
}

#[tokio::test]
async fn recent_goes_to_the_first_session_that_selects() {
    let w = world().await;
    fill_inbox(&w.imap, 2).await;

    // EXAMINE shows them recent but does not take them (RFC 3501 §6.3.2).
    let mut examiner = login(&w.imap).await;
    let e = examiner.run("EXAMINE INBOX").await;
    assert_eq!(count(&e, "RECENT"), Some(2), "{e:?}");
    assert!(examiner.run("SEARCH RECENT").await.has("* SEARCH 1 2"));

    // An IMAP4rev2 session neither sees nor takes them.
    let mut rev2 = login(&w.imap).await;
    assert!(rev2.run("ENABLE IMAP4rev2").await.ok());
    let s = rev2.run("SELECT INBOX").await;
    assert!(s.ok() && count(&s, "RECENT").is_none(), "{s:?}");
    assert!(!rev2.run("FETCH 1:2 (FLAGS)").await.has("\\Recent"));

    let mut first = login(&w.imap).await;
    let s = first.run("SELECT INBOX").await;
    assert_eq!(count(&s, "RECENT"), Some(2), "{s:?}");
    let f = first.run("FETCH 1:2 (FLAGS)").await;
    assert!(
        f.has("* 1 FETCH (FLAGS (\\Recent))") && f.has("* 2 FETCH (FLAGS (\\Recent))"),
        "{f:?}"
    );
    assert!(first.run("SEARCH RECENT").await.has("* SEARCH 1 2"));
    assert!(first.run("STORE 1 +FLAGS (\\Seen)").await.ok());
    assert!(first.run("SEARCH NEW").await.has("* SEARCH 2"));
    let old = first.run("SEARCH OLD").await;
    assert!(old.lines.iter().any(|l| l == "* SEARCH"), "{old:?}");
    let f = first.run("FETCH 1 (FLAGS)").await;
    assert!(f.has("FLAGS (\\Seen \\Recent)"), "{f:?}");

    let mut second = login(&w.imap).await;
    let s = second.run("SELECT INBOX").await;
    assert_eq!(count(&s, "RECENT"), Some(0), "{s:?}");
    assert!(!second.run("FETCH 1:2 (FLAGS)").await.has("\\Recent"));
    assert!(second.run("SEARCH OLD").await.has("* SEARCH 1 2"));
    let status = second.run("STATUS INBOX (MESSAGES RECENT)").await;
    assert!(status.has("RECENT 0"), "{status:?}");

    // The examiner now sees them taken... once it selects again.
    let e = examiner.run("EXAMINE INBOX").await;
    assert_eq!(count(&e, "RECENT"), Some(0), "{e:?}");

    // New mail: recent in exactly one of the selecting sessions.
    let tag = first.tag();
    first.send(format!("{tag} IDLE\r\n").as_bytes()).await;
    assert!(first.line().await.starts_with("+ "));
    let mut writer = login(&w.imap).await;
    let status = writer.run("STATUS INBOX (RECENT)").await;
    assert!(status.has("RECENT 0"), "{status:?}");
    assert!(writer.append("INBOX", "", &message("new")).await.ok());
    assert_eq!(first.line().await, "* 3 EXISTS");
    let recent = first.line().await;
    first.send(b"DONE\r\n").await;
    assert!(first.until_tagged(&tag).await.ok());
    let n = second.run("NOOP").await;
    assert!(n.has("* 3 EXISTS"), "{n:?}");
    let first_has = recent == "* 3 RECENT";
    let second_has = count(&n, "RECENT") == Some(1);
    assert!(
        first_has != second_has,
        "exactly one session has it: {recent} / {n:?}"
    );
    if !first_has {
        assert_eq!(recent, "* 2 RECENT");
    }
}

#[tokio::test]
async fn recent_status_and_a_race_of_two_selects() {
    let w = world().await;
    fill_inbox(&w.imap, 3).await;
    let mut c = login(&w.imap).await;
    let status = c.run("STATUS INBOX (RECENT UNSEEN)").await;
    assert!(status.has("RECENT 3"), "{status:?}");

    for round in 0..5 {
        if round > 0 {
            fill_inbox(&w.imap, 1).await;
        }
        let mut a = login(&w.imap).await;
        let mut b = login(&w.imap).await;
        let (ra, rb) = tokio::join!(a.run("SELECT INBOX"), b.run("SELECT INBOX"));
        let (na, nb) = (count(&ra, "RECENT").unwrap(), count(&rb, "RECENT").unwrap());
        let expected = if round == 0 { 3 } else { 1 };
        assert!(
            (na, nb) == (expected, 0) || (na, nb) == (0, expected),
            "round {round}: {ra:?} {rb:?}"
        );
        let fa = a.run("FETCH 1:* (FLAGS)").await;
        let fb = b.run("FETCH 1:* (FLAGS)").await;
        let shown = |f: &Reply| f.lines.iter().filter(|l| l.contains("\\Recent")).count();
        assert_eq!(shown(&fa) + shown(&fb), expected as usize, "{fa:?} {fb:?}");
    }
    let status = c.run("STATUS INBOX (RECENT)").await;
    assert!(status.has("RECENT 0"), "{status:?}");
}

#[tokio::test]
async fn recent_is_decided_per_instance() {
    let w = world().await;
    fill_inbox(&w.imap, 2).await;
    let two = instance(&w.services, "two");
    let mut here = login(&w.imap).await;
    assert_eq!(count(&here.run("SELECT INBOX").await, "RECENT"), Some(2));
    // Another instance has its own bookkeeping: recent there once more.
    let mut there = login(&two).await;
    let s = there.run("SELECT INBOX").await;
    assert_eq!(count(&s, "RECENT"), Some(2), "{s:?}");
    let mut again = login(&two).await;
    assert_eq!(count(&again.run("SELECT INBOX").await, "RECENT"), Some(0));
}

/// Every untagged FETCH of `reply` carries UID and MODSEQ (RFC 7162
/// §3.2.4, RFC 3501 §6.4.8 for UID commands).
fn assert_fetches_name_uid_and_modseq(reply: &Reply) {
    let fetches: Vec<&String> = reply
        .lines
        .iter()
        .filter(|l| l.starts_with("* ") && l.contains(" FETCH ("))
        .collect();
    assert!(!fetches.is_empty(), "{reply:?}");
    for l in fetches {
        assert!(l.contains("UID "), "FETCH without UID: {l}");
        assert!(l.contains("MODSEQ ("), "FETCH without MODSEQ: {l}");
    }
}

/// A load test saw FETCH responses without UID where a FETCH set \Seen
/// with CONDSTORE enabled: the \Seen change is a flag change like any
/// other and names its message by UID and MODSEQ, in FETCH and UID FETCH
/// alike, as do the changes another session made meanwhile.
#[tokio::test]
async fn a_fetch_that_sets_seen_names_uid_and_modseq_under_condstore() {
    let w = world().await;
    fill_inbox(&w.imap, 4).await;
    let mut c = login(&w.imap).await;
    assert!(c.run("ENABLE CONDSTORE").await.ok());
    assert!(c.run("SELECT INBOX").await.ok());
    let mut other = login(&w.imap).await;
    assert!(other.run("SELECT INBOX").await.ok());

    let r = c.run("FETCH 1 BODY[]").await;
    assert!(r.ok(), "{r:?}");
    assert_fetches_name_uid_and_modseq(&r);
    assert!(r.has("\\Seen"), "{r:?}");

    let r = c.run("UID FETCH 2 BODY[TEXT]").await;
    assert!(r.ok(), "{r:?}");
    assert_fetches_name_uid_and_modseq(&r);

    // Another session's change arrives during the next UID FETCH.
    assert!(other.run("STORE 4 +FLAGS.SILENT (\\Flagged)").await.ok());
    let r = c.run("UID FETCH 3 RFC822").await;
    assert!(r.ok(), "{r:?}");
    assert!(r.has("\\Flagged"), "the other session's change: {r:?}");
    assert_fetches_name_uid_and_modseq(&r);
    // FETCH with FLAGS named: the answer itself reports the change.
    assert!(c.run("STORE 1:3 -FLAGS.SILENT (\\Seen)").await.ok());
    let r = c.run("FETCH 1:2 (FLAGS BODY[HEADER])").await;
    assert!(r.ok(), "{r:?}");
    assert!(
        r.lines
            .iter()
            .all(|l| !l.contains(" FETCH (") || l.contains("MODSEQ ("))
    );
}

/// Keywords created and dropped over and over by several sessions: one
/// session's FLAGS list keeps every keyword it announced (it never
/// shrinks) and still stays within the bound, and no FETCH shows it a
/// keyword it was not told of. Before, a keyword set by another session
/// that had not seen the dropped ones, or by this session's own APPEND,
/// pushed FLAGS past the bound.
#[tokio::test]
async fn flags_stays_bounded_while_keywords_churn() {
    let w = world().await;
    fill_inbox(&w.imap, 2).await;
    let mut c = login(&w.imap).await;
    let mut watch = FlagsWatch::default();
    assert!(watch.run(&mut c, "SELECT INBOX").await.ok());
    for round in 0..2 {
        let all: Vec<String> = (0..MAX_KEYWORDS / 2)
            .map(|i| format!("r{round}k{i}"))
            .collect();
        let r = watch
            .run(&mut c, &format!("STORE 1 +FLAGS ({})", all.join(" ")))
            .await;
        assert!(r.ok(), "{r:?}");
        let r = watch
            .run(&mut c, &format!("STORE 1 -FLAGS ({})", all.join(" ")))
            .await;
        assert!(r.ok(), "{r:?}");
    }
    assert_eq!(watch.announced.len(), MAX_KEYWORDS);

    // Nothing is in use now: a session that selects afresh may create
    // keywords, and so may this session's APPEND.
    let mut other = login(&w.imap).await;
    assert!(other.run("SELECT INBOX").await.ok());
    assert!(other.run("STORE 2 +FLAGS (from-other)").await.ok());
    let r = c.append("INBOX", "(from-append) ", &message("churn")).await;
    assert!(r.ok(), "{r:?}");
    watch.reply(&r);
    watch.run(&mut c, "NOOP").await;
    let r = watch.run(&mut c, "FETCH 1:* FLAGS").await;
    assert!(r.ok(), "{r:?}");
    assert!(
        watch.announced.len() <= MAX_KEYWORDS,
        "FLAGS grew past the bound: {}",
        watch.announced.len()
    );
    // A new SELECT shows the keywords in use.
    let mut watch = FlagsWatch::default();
    let select = watch.run(&mut c, "SELECT INBOX").await;
    assert!(
        select.has("from-other") && select.has("from-append"),
        "{select:?}"
    );
    let r = watch.run(&mut c, "FETCH 1:* FLAGS").await;
    assert!(r.has("from-other") && r.has("from-append"), "{r:?}");
}
