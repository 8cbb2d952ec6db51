//! `facteur import` and `facteur export` as an admin runs them
//! (doc/migration.md): a Maildir with Dovecot's UID files keeps its
//! UIDVALIDITY, UIDs, UIDNEXT, flags, keywords, folders and subscriptions;
//! an export imported into another user exports the same; a second run
//! imports nothing; a run killed midway continues without duplicates.
//! The last test has a real Dovecot write the Maildir (runs when
//! `DOVECOT_IMAP_PORT`, `DOVECOT_USER`, `DOVECOT_PASSWORD` and
//! `DOVECOT_MAILDIR` are set, as tests/dovecot_mime.rs; skips otherwise
//! unless `FACTEUR_REQUIRE_DOVECOT=1`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use facteur::migrate::{Body, maildir};

const BIN: &str = env!("CARGO_BIN_EXE_facteur");
const PASSWORD: &str = "correct horse battery staple";

/// A throwaway `fs` store and users file, with cheap Argon2 parameters.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup::with("")
    }

    /// With `extra` appended to the configuration.
    fn with(extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let secret: String = (0..32).map(|i| format!("{:x}", (i * 7 + 3) % 16)).collect();
        let config = format!(
            "cluster_secret = \"{secret}\"\n[store]\nbackend = \"fs\"\npath = \"store\"\n\
             [directory]\nbackend = \"static\"\nusers_file = \"users.toml\"\n\
             [crypto.argon2]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\n{extra}"
        );
        std::fs::write(dir.path().join("facteur.toml"), config).unwrap();
        let setup = Setup { dir };
        for user in ["alice", "bob"] {
            let out = setup.run(
                &[
                    "user",
                    "add",
                    user,
                    "--address",
                    &format!("{user}@example.org"),
                ],
                &format!("{PASSWORD}\n"),
            );
            assert!(out.status.success(), "{}", stderr(&out));
        }
        setup
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("--config")
            .arg(self.dir.path().join("facteur.toml"))
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self.command(args).spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, &format!("{PASSWORD}\n"));
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    fn import(&self, login: &str, maildir: &Path) -> String {
        self.ok(&[
            "import",
            "--login",
            login,
            "--maildir",
            maildir.to_str().unwrap(),
        ])
    }

    fn export(&self, login: &str, to: &Path) -> String {
        self.ok(&["export", "--login", login, "--to", to.to_str().unwrap()])
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `facteur serve` over this store, IMAP (STARTTLS port, plaintext
    /// LOGIN from loopback) on a port the kernel picks.
    fn serve(&self) -> Served {
        let path = self.path("facteur.toml");
        let mut config = std::fs::read_to_string(&path).unwrap();
        config.push_str(
            "[lmtp]\nlisten = []\n[imap]\nstarttls_listen = [\"127.0.0.1:0\"]\n\
             tls_listen = []\nself_signed_dir = \"tls\"\n",
        );
        std::fs::write(&path, config).unwrap();
        let mut command = self.command(&["serve", "--http", "127.0.0.1:0"]);
        command.stdin(Stdio::null()).stderr(Stdio::null());
        let mut child = command.spawn().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut port = None;
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("serve never got ready");
            if let Some(addr) = line.strip_prefix("facteur: imap (starttls) listening on ") {
                port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
            }
            if line == "facteur: ready" {
                break;
            }
        }
        Served {
            child,
            port: port.expect("an IMAP port"),
        }
    }
}

/// A running `facteur serve`, killed when dropped.
struct Served {
    child: std::process::Child,
    port: u16,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number after `name ` in `lines`.
fn number_after(lines: &[String], name: &str) -> u64 {
    lines
        .iter()
        .find_map(|l| {
            let at = l.find(&format!("{name} "))? + name.len() + 1;
            l[at..].split([' ', ')', ']']).next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no {name} in {lines:?}"))
}

/// What a CONDSTORE/QRESYNC client of the old server holds for a folder
/// (its UIDVALIDITY, a HIGHESTMODSEQ) must, after the import, get it
/// every change made on Facteur: under the kept UIDVALIDITY, Facteur's
/// MODSEQs are above the old server's. `old_modseq` is what the client
/// holds.
fn a_change_here_reaches_a_client_of_the_old_server(
    port: u16,
    login: &str,
    folder: &str,
    uid_validity: u32,
    old_modseq: u64,
    uid: u32,
) {
    let mut now = Imap::connect(port, login, PASSWORD);
    now.ok("ENABLE QRESYNC");
    let selected = now.ok(&format!("SELECT \"{folder}\""));
    assert_eq!(
        number_after(&selected, "UIDVALIDITY"),
        u64::from(uid_validity),
        "UIDVALIDITY kept: {selected:?}"
    );
    let highest = number_after(&selected, "HIGHESTMODSEQ");
    assert!(highest > old_modseq, "{highest} > {old_modseq}");
    now.ok(&format!("UID STORE {uid} +FLAGS (\\Flagged)"));
    now.ok("LOGOUT");

    // The old server's client comes back.
    let mut old = Imap::connect(port, login, PASSWORD);
    old.ok("ENABLE QRESYNC");
    let resync = old.ok(&format!(
        "SELECT \"{folder}\" (QRESYNC ({uid_validity} {old_modseq}))"
    ));
    let told = |lines: &[String]| {
        lines.iter().any(|l| {
            l.contains(" FETCH (") && l.contains(&format!("UID {uid} ")) && l.contains("\\Flagged")
        })
    };
    assert!(told(&resync), "QRESYNC reports the flag: {resync:?}");
    let changed = old.ok(&format!(
        "UID FETCH 1:* (FLAGS) (CHANGEDSINCE {old_modseq})"
    ));
    assert!(told(&changed), "CHANGEDSINCE reports the flag: {changed:?}");
    old.ok("LOGOUT");
}

/// Issue #14 item 3, keeping UIDVALIDITY: a client holding the old
/// server's HIGHESTMODSEQ (here 2^40, far above what a Dovecot folder
/// reaches) is told of a flag changed on Facteur, by QRESYNC and by
/// CHANGEDSINCE. (Before: a new UIDVALIDITY; with the old one kept and
/// MODSEQs counted from 1, it would be told nothing.)
#[test]
fn a_client_holding_the_old_servers_modseq_sees_changes_made_here() {
    let setup = Setup::new();
    let source = setup.path("source");
    sample_maildir(&source);
    setup.import("alice", &source);
    let server = setup.serve();
    a_change_here_reaches_a_client_of_the_old_server(
        server.port,
        "alice",
        "Archives/Envoy&AOk-s",
        1_650_000_000,
        1 << 40,
        1,
    );
}

/// Issue #14 item 3: a message larger than the largest body the server
/// opens (`max_message_size`) is not imported to stay unfetchable: it is
/// named and counted, and the others keep their UIDs.
#[test]
fn a_message_over_max_message_size_is_refused_and_named() {
    let setup = Setup::with(
        "[imap]\nmax_message_size = \"4 KiB\"\nmax_command_line = \"1 KiB\"\n\
         [lmtp]\nmax_message_size = \"4 KiB\"\n",
    );
    let source = setup.path("source");
    put(&source, "1.M1.host", "S", &text(1), 1_700_000_001);
    let big = format!("{}{}", text(2), "x".repeat(76).repeat(60));
    put(&source, "2.M2.host", "", &big, 1_700_000_002);
    put(&source, "3.M3.host", "", &text(3), 1_700_000_003);
    std::fs::write(
        source.join("dovecot-uidlist"),
        "3 V1600000000 N4\n1 :1.M1.host\n2 :2.M2.host\n3 :3.M3.host\n",
    )
    .unwrap();
    let out = setup.import("alice", &source);
    assert!(out.contains("2 messages"), "{out}");
    assert!(out.contains("1 too large"), "{out}");
    assert!(
        out.contains("INBOX: 2.M2.host:2, (UID 2, "),
        "the message is named: {out}"
    );
    let exported = setup.path("exported");
    setup.export("alice", &exported);
    let (folders, _) = contents(&exported);
    let uids: Vec<_> = folders["INBOX"].2.iter().map(|m| m.0).collect();
    assert_eq!(uids, [Some(1), Some(3)]);
}

/// Issue #14 item 3: the import runs the check APPEND runs after placing
/// (`Account::keep_placed`). Instance b deletes the folder without having
/// seen the imported mail (its DELETE lands after the import found the
/// folder, before it placed): the folder comes back with that mail
/// instead of hiding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_imported_into_a_folder_deleted_meanwhile_stays_visible() {
    use facteur::account::{Account, AccountConfig};
    use facteur::crypto::{KdfParams, Keyring, Password, RecordAuth, user_id};
    use facteur::log::InstanceId;
    use facteur::migrate::{Progress, Source, SourceFolder, SourceMessage};
    use facteur::store::{MemoryStore, SharedStore};
    use std::sync::Arc;

    let store: SharedStore = Arc::new(MemoryStore::new());
    let secret: [u8; 16] = rand::random();
    let (keyring, _, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
    let account = |instance: &str| {
        let keys = keyring.unlock_with_password(&Password::new("pw")).unwrap();
        let records = RecordAuth::from_cluster_secret(b"0123456789abcdef");
        let config = AccountConfig::new(InstanceId::new(instance).unwrap(), records);
        Account::new(user_id(&secret, "alice"), keys, store.clone(), config)
    };
    let (a, b) = (account("a"), account("b"));
    a.folders()
        .await
        .unwrap()
        .create("Lists", None)
        .await
        .unwrap();
    b.folders().await.unwrap().sync().await.unwrap();

    /// Deletes the folder from instance b, which saw it empty, when the
    /// import on instance a has found it.
    struct DeleteFromB(Arc<Account>);
    impl Progress for DeleteFromB {
        fn folder(&self, name: &str) {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    let folders = self.0.folders().await.unwrap();
                    folders.delete(name, 0).await.unwrap();
                })
            });
        }
    }
    let source = Source {
        folders: vec![SourceFolder {
            name: "Lists".into(),
            uid_validity: None,
            next_uid: None,
            messages: vec![SourceMessage {
                uid: None,
                flags: vec![],
                internal_date: 1_700_000_000,
                body: Body::Bytes(text(1).into_bytes()),
            }],
        }],
        subscriptions: vec![],
    };
    let report = facteur::migrate::import(&a, &source, &DeleteFromB(b.clone()))
        .await
        .unwrap();
    assert_eq!(report.messages, 1);
    let folders = b.folders().await.unwrap();
    folders.sync().await.unwrap();
    let (_, lists) = b
        .open_fresh("Lists")
        .await
        .expect("the folder is shown again");
    assert_eq!(lists.read(|s| s.exists()).await, 1);
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One message as a Maildir holds it: UID, flags, INTERNALDATE, text
/// with LF line ends.
type Message = (Option<u32>, Vec<String>, i64, Vec<u8>);

/// A folder: UIDVALIDITY, UIDNEXT, messages.
type Folder = (Option<u32>, Option<u32>, Vec<Message>);

/// Everything an import keeps of a Maildir: folders by name, and the
/// subscribed names.
fn contents(root: &Path) -> (BTreeMap<String, Folder>, Vec<String>) {
    let (folders, mut subscriptions) = maildir::read(root).unwrap();
    subscriptions.sort();
    let folders = folders
        .into_iter()
        .map(|f| {
            let messages = f
                .messages
                .iter()
                .map(|m| {
                    let Body::File(path) = &m.body else {
                        panic!("a Maildir message is a file")
                    };
                    let text = std::fs::read(path).unwrap();
                    let lf = String::from_utf8_lossy(&text).replace("\r\n", "\n");
                    (m.uid, m.flags.clone(), m.internal_date, lf.into_bytes())
                })
                .collect();
            (f.name, (f.uid_validity, f.next_uid, messages))
        })
        .collect();
    (folders, subscriptions)
}

/// Writes a message file in `dir/cur` with an mtime; returns its base name.
fn put(dir: &Path, base: &str, info: &str, text: &str, mtime: u64) {
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let path = dir.join("cur").join(format!("{base}:2,{info}"));
    let file = std::fs::File::create(&path).unwrap();
    (&file).write_all(text.as_bytes()).unwrap();
    file.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(mtime))
        .unwrap();
}

fn text(n: usize) -> String {
    format!(
        "From: a@example.org\nTo: alice@example.org\nSubject: message {n}\n\n\
         Body of message {n}.\nFrom here on, a line that mbox would quote.\n"
    )
}

/// A Maildir as Dovecot leaves it: a gap in the UIDs (3 was expunged),
/// UIDNEXT above the last message, keywords, a message not in the uidlist
/// yet, a nested folder with a non-ASCII name, subscriptions.
fn sample_maildir(root: &Path) {
    put(
        root,
        "1700000001.M1P1.host,S=10",
        "S",
        &text(1),
        1_700_000_001,
    );
    put(
        root,
        "1700000002.M2P1.host,S=10",
        "FRSa",
        &text(2),
        1_700_000_002,
    );
    put(
        root,
        "1700000004.M4P1.host,S=10",
        "PTb",
        &text(4),
        1_700_000_004,
    );
    // Same text twice: two messages, not one.
    put(
        root,
        "1700000005.M5P1.host,S=10",
        "",
        &text(4),
        1_700_000_005,
    );
    std::fs::write(
        root.join("dovecot-uidlist"),
        "3 V1600000000 N9 G0123456789abcdef\n1 :1700000001.M1P1.host,S=10\n\
         2 W120 :1700000002.M2P1.host,S=10\n4 :1700000004.M4P1.host,S=10\n\
         7 :1700000005.M5P1.host,S=10\n",
    )
    .unwrap();
    std::fs::write(root.join("dovecot-keywords"), "0 $Junk\n1 todo\n").unwrap();
    let sent = root.join(".Archives.Envoy&AOk-s");
    put(
        &sent,
        "1700000010.M10P1.host",
        "S",
        &text(10),
        1_700_000_010,
    );
    put(
        &sent,
        "1700000011.M11P1.host",
        "D",
        &text(11),
        1_700_000_011,
    );
    std::fs::write(
        sent.join("dovecot-uidlist"),
        "3 V1650000000 N3\n1 :1700000010.M10P1.host\n",
    )
    .unwrap();
    std::fs::write(sent.join("maildirfolder"), "").unwrap();
    let archives = root.join(".Archives");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(archives.join(sub)).unwrap();
    }
    std::fs::write(
        root.join("subscriptions"),
        "V\t2\n\nINBOX\nArchives\tEnvoy&AOk-s\n",
    )
    .unwrap();
}

#[test]
fn a_maildir_round_trips_through_import_and_export() {
    let setup = Setup::new();
    let source = setup.path("source");
    sample_maildir(&source);
    let out = setup.import("alice", &source);
    assert!(
        out.contains("imported 3 folders: 6 messages, 0 skipped (already there), 0 renumbered"),
        "{out}"
    );
    let first = setup.path("first");
    setup.export("alice", &first);
    let (exported, subscriptions) = contents(&first);
    let (original, _) = contents(&source);

    // A new folder keeps its UIDVALIDITY, UIDs with their gap and
    // UIDNEXT; a message the uidlist did not number comes after the old
    // UIDNEXT (UID 2 may have named a message expunged there, which a
    // client keeping the UIDVALIDITY may still hold).
    let envoyes = &exported["Archives/Envoyés"];
    assert_eq!(envoyes.0, Some(1_650_000_000), "UIDVALIDITY kept");
    assert_eq!(envoyes.1, Some(4));
    let uids: Vec<_> = envoyes.2.iter().map(|m| m.0).collect();
    assert_eq!(uids, [Some(1), Some(3)]);
    assert_eq!(envoyes.2[1].1, ["\\Draft"]);
    // INBOX exists in every account: its UIDVALIDITY is Facteur's, but it
    // was empty, so its UIDs and UIDNEXT are kept.
    let inbox = &exported["INBOX"];
    assert_ne!(inbox.0, Some(1_600_000_000));
    let kept: Vec<_> = inbox
        .2
        .iter()
        .map(|m| (m.0, m.1.clone(), m.2, m.3.clone()))
        .collect();
    let wanted: Vec<_> = original["INBOX"]
        .2
        .iter()
        .map(|m| (m.0, m.1.clone(), m.2, m.3.clone()))
        .collect();
    assert_eq!(kept[..3], wanted[..3], "UIDs, flags, dates and texts kept");
    assert_eq!(kept[2].1, ["$Forwarded", "\\Deleted", "todo"]);
    assert_eq!(kept[3].0, Some(7));
    assert_eq!(inbox.1, Some(9), "UIDNEXT kept: 8 was expunged there");
    assert!(subscriptions.contains(&"Archives/Envoyés".to_owned()));

    // Again: nothing twice.
    let again = setup.import("alice", &source);
    assert!(
        again.contains("0 messages, 6 skipped (already there), 0 renumbered"),
        "{again}"
    );

    // The export imported into another user exports the same (UIDVALIDITY
    // aside: every folder gets a new one).
    let out = setup.import("bob", &first);
    assert!(out.contains("8 folders: 6 messages"), "{out}");
    let second = setup.path("second");
    setup.export("bob", &second);
    let (mut re_exported, re_subscriptions) = contents(&second);
    let mut exported = exported;
    for folders in [&mut exported, &mut re_exported] {
        for folder in folders.values_mut() {
            folder.0 = None;
        }
    }
    assert_eq!(re_exported, exported);
    assert_eq!(re_subscriptions, subscriptions);
}

#[test]
fn a_uidnext_far_above_the_last_uid_is_kept() {
    // Dovecot's next UID 3,000,000 with one message at UID 1: one Skip op
    // covers at most 2^20 UIDs, so the import must write several.
    let setup = Setup::new();
    let source = setup.path("source");
    let big = source.join(".Big");
    put(&big, "1700000001.M1P1.host", "S", &text(1), 1_700_000_001);
    std::fs::write(
        big.join("dovecot-uidlist"),
        "3 V1600000000 N3000000\n1 :1700000001.M1P1.host\n",
    )
    .unwrap();
    std::fs::write(big.join("maildirfolder"), "").unwrap();
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(source.join(sub)).unwrap();
    }
    setup.import("alice", &source);
    let out = setup.path("out");
    setup.export("alice", &out);
    let (exported, _) = contents(&out);
    let folder = &exported["Big"];
    assert_eq!(folder.1, Some(3_000_000), "UIDNEXT kept");
    assert_eq!(folder.2.iter().map(|m| m.0).collect::<Vec<_>>(), [Some(1)]);
}

#[test]
fn mbox_files_import_with_their_flags_once() {
    let setup = Setup::new();
    let mbox = setup.path("Lists.mbox");
    std::fs::write(
        &mbox,
        "From a@example.org Sat Jan  3 01:05:34 1996\nSubject: one\nStatus: RO\n\
         X-Status: A\n\n>From quoted\n\nFrom b@example.org Sat Jan  3 01:05:35 1996\n\
         Subject: two\n\nbody\n",
    )
    .unwrap();
    let args = [
        "import",
        "--login",
        "alice",
        "--mbox",
        mbox.to_str().unwrap(),
    ];
    let out = setup.ok(&args);
    assert!(out.contains("1 folders: 2 messages, 0 skipped"), "{out}");
    let out = setup.ok(&args);
    assert!(out.contains("0 messages, 2 skipped"), "{out}");
    let dir = setup.path("out");
    setup.export("alice", &dir);
    let (folders, _) = contents(&dir);
    let lists = &folders["Lists"];
    assert_eq!(lists.2.len(), 2);
    assert_eq!(lists.2[0].1, ["\\Answered", "\\Seen"]);
    assert_eq!(lists.2[0].2, 820_631_134);
    assert_eq!(lists.2[0].3, b"Subject: one\n\nFrom quoted\n");
}

/// Files under the store whose path contains `part`.
fn count_files(dir: &Path, part: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                count_files(&path, part)
            } else {
                usize::from(path.to_string_lossy().contains(part))
            }
        })
        .sum()
}

#[test]
fn an_import_killed_midway_continues_without_duplicates() {
    let setup = Setup::new();
    let source = setup.path("big");
    let count = 600u32;
    let mut uidlist = String::from("3 V1600000000 N2000\n");
    let folder = source.join(".Big");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(source.join(sub)).unwrap();
    }
    for n in 1..=count {
        let base = format!("17000{n:05}.M{n}P1.host");
        put(&folder, &base, "S", &text(n as usize), 1_700_000_000);
        // Every other UID, as after many expunges.
        uidlist.push_str(&format!("{} :{base}\n", 2 * n));
    }
    std::fs::write(folder.join("dovecot-uidlist"), uidlist).unwrap();

    let mut child = setup
        .command(&[
            "import",
            "--login",
            "alice",
            "--maildir",
            source.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    // Kill it once a hundred bodies are stored: some batches placed,
    // one maybe stored without its op.
    let store = setup.path("store");
    let deadline = Instant::now() + Duration::from_secs(120);
    while count_files(&store, "blob") < 100 {
        assert!(Instant::now() < deadline, "the import stored nothing");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the import ended before it could be killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let out = setup.import("alice", &source);
    assert!(out.contains("0 renumbered"), "{out}");
    let dir = setup.path("out");
    setup.export("alice", &dir);
    let (folders, _) = contents(&dir);
    let big = &folders["Big"];
    let uids: Vec<u32> = big.2.iter().map(|m| m.0.unwrap()).collect();
    let wanted: Vec<u32> = (1..=count).map(|n| 2 * n).collect();
    assert_eq!(uids, wanted, "every message once, with its UID");
    assert_eq!(
        big.0,
        Some(1_600_000_000),
        "UIDVALIDITY kept by the resumed run"
    );
    assert_eq!(big.1, Some(2000), "UIDNEXT kept");
}

// ---- A Maildir written by a real Dovecot ----

struct Imap {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    tag: u32,
}

impl Imap {
    fn connect(port: u16, user: &str, password: &str) -> Imap {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut imap = Imap {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            tag: 0,
        };
        let mut greeting = String::new();
        imap.reader.read_line(&mut greeting).unwrap();
        imap.ok(&format!("LOGIN \"{user}\" \"{password}\""));
        imap
    }

    /// Sends a command (with a literal after `literal` if given); returns
    /// every line up to the tagged OK.
    fn send(&mut self, command: &str, literal: Option<&[u8]>) -> Vec<String> {
        self.tag += 1;
        let tag = format!("t{}", self.tag);
        match literal {
            Some(bytes) => {
                write!(self.writer, "{tag} {command} {{{}+}}\r\n", bytes.len()).unwrap();
                self.writer.write_all(bytes).unwrap();
                self.writer.write_all(b"\r\n").unwrap();
            }
            None => write!(self.writer, "{tag} {command}\r\n").unwrap(),
        }
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            assert!(!line.is_empty(), "connection closed after {command}");
            if let Some(rest) = line.strip_prefix(&format!("{tag} ")) {
                assert!(rest.starts_with("OK"), "{command}: {line}");
                lines.push(line);
                return lines;
            }
            lines.push(line);
        }
    }

    fn ok(&mut self, command: &str) -> Vec<String> {
        self.send(command, None)
    }

    /// APPEND; returns the UID from APPENDUID (RFC 4315).
    fn append(&mut self, mailbox: &str, flags: &str, date: &str, text: &[u8]) -> (u32, u32) {
        let lines = self.send(
            &format!("APPEND \"{mailbox}\" ({flags}) \"{date}\""),
            Some(text),
        );
        let last = lines.last().unwrap();
        let at = last.find("[APPENDUID ").expect("APPENDUID") + 11;
        let mut fields = last[at..].split([' ', ']']);
        let validity = fields.next().unwrap().parse().unwrap();
        let uid = fields.next().unwrap().parse().unwrap();
        (validity, uid)
    }
}

fn dovecot() -> Option<(u16, String, String, PathBuf)> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let found = (|| {
        Some((
            var("DOVECOT_IMAP_PORT")?.parse().ok()?,
            var("DOVECOT_USER")?,
            var("DOVECOT_PASSWORD")?,
            PathBuf::from(var("DOVECOT_MAILDIR")?),
        ))
    })();
    if found.is_none() {
        assert!(
            std::env::var("FACTEUR_REQUIRE_DOVECOT").as_deref() != Ok("1"),
            "FACTEUR_REQUIRE_DOVECOT=1 but DOVECOT_IMAP_PORT, DOVECOT_USER, DOVECOT_PASSWORD \
             or DOVECOT_MAILDIR is missing (eval \"$(scripts/dovecot.sh start <dir>)\")"
        );
        eprintln!("migration: skipped, no Dovecot (see scripts/dovecot.sh)");
    }
    found
}

#[test]
fn a_maildir_written_by_dovecot_keeps_uids_and_flags_and_round_trips() {
    let Some((port, user, password, maildir_path)) = dovecot() else {
        return;
    };
    let setup = Setup::new();
    // Names unique to this run: the Dovecot may be shared.
    let run = format!("Mig{}", std::process::id());
    let child = format!("{run}.R&AOk-sum&AOk-");
    let mut imap = Imap::connect(port, &user, &password);
    let list = imap.ok("LIST \"\" \"\"");
    assert!(list[0].contains("\".\""), "Maildir++ separator: {list:?}");
    imap.ok(&format!("CREATE \"{run}\""));
    imap.ok(&format!("CREATE \"{child}\""));
    imap.ok(&format!("SUBSCRIBE \"{child}\""));
    let body = |n: u32| format!("From: d@example.org\r\nSubject: dovecot {n}\r\n\r\nText {n}.\r\n");
    let mut appended = Vec::new();
    for (n, flags) in [
        (1, "\\Seen"),
        (2, "\\Seen \\Answered $Forwarded todo"),
        (3, "\\Flagged"),
        (4, "\\Draft $Junk"),
    ] {
        let date = format!("0{n}-Feb-2024 10:00:00 +0000");
        appended.push((n, imap.append(&run, flags, &date, body(n).as_bytes())));
    }
    let (validity, _) = imap.append(
        &child,
        "\\Seen",
        "05-Feb-2024 10:00:00 +0000",
        body(5).as_bytes(),
    );
    // Leave a gap: expunge the third.
    imap.ok(&format!("SELECT \"{run}\""));
    imap.ok(&format!("UID STORE {} +FLAGS (\\Deleted)", appended[2].1.1));
    imap.ok("EXPUNGE");
    let status = imap.ok(&format!(
        "STATUS \"{run}\" (UIDNEXT UIDVALIDITY HIGHESTMODSEQ)"
    ));
    let dovecot_modseq = number_after(&status, "HIGHESTMODSEQ");
    imap.ok("LOGOUT");
    let uid_next = u32::try_from(number_after(&status, "UIDNEXT")).unwrap();

    // Dovecot is done writing: copy its Maildir and import the copy.
    let copy = setup.path("dovecot");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&maildir_path)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let out = setup.import("alice", &copy);
    assert!(out.contains(" 0 renumbered"), "{out}");
    let first = setup.path("first");
    setup.export("alice", &first);
    let (exported, subscriptions) = contents(&first);

    let ours = &exported[&run];
    let run_validity = appended[0].1.0;
    assert_eq!(ours.0, Some(run_validity), "UIDVALIDITY kept");
    assert_eq!(ours.1, Some(uid_next), "UIDNEXT kept");
    let got: Vec<(u32, Vec<String>, Vec<u8>)> = ours
        .2
        .iter()
        .map(|m| (m.0.unwrap(), m.1.clone(), m.3.clone()))
        .collect();
    let flags = |list: &[&str]| list.iter().map(|f| f.to_string()).collect::<Vec<_>>();
    let lf = |n: u32| body(n).replace("\r\n", "\n").into_bytes();
    let wanted = vec![
        (appended[0].1.1, flags(&["\\Seen"]), lf(1)),
        (
            appended[1].1.1,
            flags(&["$Forwarded", "\\Answered", "\\Seen", "todo"]),
            lf(2),
        ),
        (appended[3].1.1, flags(&["$Junk", "\\Draft"]), lf(4)),
    ];
    assert_eq!(
        got, wanted,
        "UIDs (with the expunged one's gap), flags, texts"
    );
    assert_eq!(ours.2[0].2, 1_706_781_600, "INTERNALDATE of the APPEND");
    let child_name = format!("{run}/Résumé");
    assert_eq!(exported[&child_name].0, Some(validity));
    assert!(subscriptions.contains(&child_name), "{subscriptions:?}");

    // Export, import into another user, export again: the same.
    setup.import("bob", &first);
    let second = setup.path("second");
    setup.export("bob", &second);
    let (mut again, again_subscriptions) = contents(&second);
    let mut exported = exported;
    for folders in [&mut exported, &mut again] {
        for folder in folders.values_mut() {
            folder.0 = None;
        }
    }
    assert_eq!(again, exported);
    assert_eq!(again_subscriptions, subscriptions);

    // A client of that Dovecot, holding its HIGHESTMODSEQ, is told of a
    // flag changed on Facteur.
    let server = setup.serve();
    a_change_here_reaches_a_client_of_the_old_server(
        server.port,
        "alice",
        &run,
        run_validity,
        dovecot_modseq,
        appended[0].1.1,
    );
}
