//! Postfix delivers through Facteur, end to end: a throwaway Postfix
//! (`scripts/postfix.sh`) whose `virtual_transport` is Facteur's LMTP
//! listener, started in-process on `127.0.0.1:0`; mail injected with
//! `sendmail -C` and over SMTP; then the user's account is unlocked,
//! incoming mail drained, and INBOX read through the account API.
//!
//! The store-outage test runs its own single-node Garage
//! (`scripts/garage.sh`) and stops it for real: Postfix must get a 4xx,
//! keep the message queued, and deliver it exactly once when the store is
//! back.
//!
//! Gate: these tests run when `FACTEUR_TEST_POSTFIX=1` (scripts/test.sh
//! sets it after `scripts/postfix.sh install`, with
//! `FACTEUR_TEST_POSTFIX_DIR` for the instances' directories); they fail
//! instead of skipping when `FACTEUR_REQUIRE_POSTFIX=1`. Each test starts its own
//! Postfix (the LMTP port is only known once Facteur is listening) and
//! stops it on drop. Waits poll a condition (the queue, Postfix's log)
//! against a deadline; nothing sleeps and hopes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use facteur::account::Account;
use facteur::crypto::Password;
use facteur::log::InstanceId;
use facteur::server::lmtp::{self, Listener, Settings};
use facteur::server::{Services, Shutdown, ShutdownTrigger};
use facteur::store::{FsStore, S3Settings, S3Store, SharedStore};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

mod fixture;

/// How long a wait for Postfix may take before the test fails. Retries
/// come every 1 to 2 s (scripts/postfix.sh); a Garage restart takes about
/// 2 s.
const DEADLINE: Duration = Duration::from_secs(90);

/// Whether the Postfix tests run here (see the module documentation).
fn enabled(what: &str) -> bool {
    if std::env::var("FACTEUR_TEST_POSTFIX").is_ok_and(|v| v == "1") {
        return true;
    }
    if std::env::var("FACTEUR_REQUIRE_POSTFIX").is_ok_and(|v| v == "1") {
        panic!(
            "FACTEUR_REQUIRE_POSTFIX=1 but FACTEUR_TEST_POSTFIX is not 1; run \
             `scripts/postfix.sh install` and set FACTEUR_TEST_POSTFIX=1 (scripts/test.sh does)"
        );
    }
    eprintln!("notice: {what} skipped (FACTEUR_TEST_POSTFIX is not 1; see scripts/postfix.sh)");
    false
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Runs a script and returns the `export K=V` lines it printed.
async fn run_script(name: &str, args: &[&str]) -> HashMap<String, String> {
    let out = Command::new(script(name))
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{name} {args:?} failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A directory the `postfix` user can enter (Postfix's daemons chdir into
/// their queue under it), under `FACTEUR_TEST_POSTFIX_DIR` if set (so that
/// scripts/test.sh can stop what a killed test left running).
fn shared_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = match std::env::var_os("FACTEUR_TEST_POSTFIX_DIR") {
        Some(parent) => tempfile::tempdir_in(parent).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A throwaway Postfix sending `@example.org` to Facteur; stopped on drop.
struct Postfix {
    dir: tempfile::TempDir,
    config: String,
    smtp_port: u16,
    log: PathBuf,
}

impl Postfix {
    async fn start(lmtp_port: u16) -> Postfix {
        let dir = shared_tempdir();
        let work = dir.path().join("postfix");
        let env = run_script(
            "postfix.sh",
            &["start", work.to_str().unwrap(), &lmtp_port.to_string()],
        )
        .await;
        Postfix {
            config: env["FACTEUR_TEST_POSTFIX_CONFIG"].clone(),
            smtp_port: env["FACTEUR_TEST_POSTFIX_SMTP_PORT"].parse().unwrap(),
            log: env["FACTEUR_TEST_POSTFIX_LOG"].clone().into(),
            dir,
        }
    }

    /// Submits a message with `sendmail -C` (the local submission path:
    /// postdrop, pickup, cleanup).
    async fn sendmail(&self, from: &str, to: &[&str], message: &[u8]) {
        let mut child = Command::new("/usr/sbin/sendmail")
            .args(["-C", &self.config, "-f", from, "-i", "--"])
            .args(to)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(message).await.unwrap();
        drop(stdin);
        assert!(child.wait().await.unwrap().success(), "sendmail failed");
    }

    /// Submits a message over SMTP to the instance's smtpd.
    async fn smtp(&self, from: &str, to: &[&str], message: &[u8]) {
        let stream = TcpStream::connect(("127.0.0.1", self.smtp_port))
            .await
            .unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let mut expect = async |code: &str| {
            let mut reply = String::new();
            loop {
                let mut line = String::new();
                assert!(r.read_line(&mut line).await.unwrap() > 0, "smtpd closed");
                reply.push_str(&line);
                if line.as_bytes().get(3) != Some(&b'-') {
                    break;
                }
            }
            assert!(reply.starts_with(code), "expected {code}, got {reply:?}");
        };
        expect("220").await;
        w.write_all(b"EHLO client.test\r\n").await.unwrap();
        expect("250").await;
        w.write_all(format!("MAIL FROM:<{from}>\r\n").as_bytes())
            .await
            .unwrap();
        expect("250").await;
        for rcpt in to {
            w.write_all(format!("RCPT TO:<{rcpt}>\r\n").as_bytes())
                .await
                .unwrap();
            expect("250").await;
        }
        w.write_all(b"DATA\r\n").await.unwrap();
        expect("354").await;
        // RFC 5321 §4.5.2 dot-stuffing.
        let stuffed = String::from_utf8_lossy(message).replace("\r\n.", "\r\n..");
        w.write_all(stuffed.as_bytes()).await.unwrap();
        w.write_all(b".\r\n").await.unwrap();
        expect("250").await;
        w.write_all(b"QUIT\r\n").await.unwrap();
        expect("221").await;
    }

    /// `postqueue -p`: the queue listing, with each deferred message's
    /// last reason.
    async fn queue(&self) -> String {
        let out = Command::new("/usr/sbin/postqueue")
            .args(["-c", &self.config, "-p"])
            .output()
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Postfix's log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Delivery log lines (`status=...`) for one recipient.
    fn statuses(&self, rcpt: &str, status: &str) -> usize {
        let to = format!("to=<{rcpt}>");
        let status = format!("status={status}");
        self.log()
            .lines()
            .filter(|l| l.contains(&to) && l.contains(&status))
            .count()
    }

    /// `postqueue -f`: attempt delivery of every queued message now.
    async fn flush(&self) {
        let out = Command::new("/usr/sbin/postqueue")
            .args(["-c", &self.config, "-f"])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "postqueue -f: {out:?}");
    }

    /// Like [`Postfix::wait_for`], asking Postfix to retry the queue every
    /// second instead of relying on its own retry timers (its queue
    /// manager sometimes skips a message still marked in delivery and then
    /// waits for the next queue run).
    async fn wait_flushing(&self, what: &str, mut done: impl AsyncFnMut(&Postfix) -> bool) {
        let start = tokio::time::Instant::now();
        let mut flushed = start;
        while !done(self).await {
            assert!(
                start.elapsed() < DEADLINE,
                "Postfix: {what} not seen within {DEADLINE:?}\nqueue:\n{}\nlog:\n{}",
                self.queue().await,
                self.log()
            );
            if flushed.elapsed() >= Duration::from_secs(1) {
                self.flush().await;
                flushed = tokio::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `done` until it holds, failing the test after [`DEADLINE`].
    async fn wait_for(&self, what: &str, mut done: impl AsyncFnMut(&Postfix) -> bool) {
        let start = tokio::time::Instant::now();
        while !done(self).await {
            assert!(
                start.elapsed() < DEADLINE,
                "Postfix: {what} not seen within {DEADLINE:?}\nqueue:\n{}\nlog:\n{}",
                self.queue().await,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script("postfix.sh"))
            .args(["stop", self.dir.path().join("postfix").to_str().unwrap()])
            .status();
    }
}

/// A throwaway Garage of this test's own, so it can be stopped without
/// disturbing other tests; stopped on drop.
struct Garage {
    dir: tempfile::TempDir,
    settings: S3Settings,
}

impl Garage {
    async fn start() -> Garage {
        let dir = tempfile::tempdir().unwrap();
        let env = run_script("garage.sh", &["start", dir.path().to_str().unwrap()]).await;
        let var = |k: &str| env[&format!("FACTEUR_TEST_S3_{k}")].clone();
        let settings = S3Settings::new(
            var("ENDPOINT"),
            var("REGION"),
            var("BUCKET"),
            var("ACCESS_KEY"),
            var("SECRET_KEY"),
        );
        Garage { dir, settings }
    }

    /// Stops the node (SIGTERM): the store is down, requests are refused.
    async fn stop(&self) {
        run_script("garage.sh", &["stop", self.dir.path().to_str().unwrap()]).await;
    }

    /// Starts the same node again, same ports, same data.
    async fn restart(&self) {
        run_script("garage.sh", &["start", self.dir.path().to_str().unwrap()]).await;
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script("garage.sh"))
            .args(["stop", self.dir.path().to_str().unwrap()])
            .status();
    }
}

/// Facteur's LMTP listener, in-process, with users `alice`
/// (alice@example.org) and `bob` (bob@example.org), both with keyrings.
struct Facteur {
    _dir: tempfile::TempDir,
    services: Services,
    port: u16,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<()>,
}

impl Facteur {
    async fn start(store: SharedStore) -> Facteur {
        let dir = tempfile::tempdir().unwrap();
        let config = fixture::config(dir.path(), "0123456789abcdef0123456789abcdef");
        // A secret per run: a shared bucket holds other runs' users too.
        let secret: [u8; 16] = rand::random();
        let users = vec![
            fixture::user_at_example("alice"),
            fixture::user_at_example("bob"),
        ];
        let (services, _) = fixture::services(
            &config,
            dir.path(),
            store,
            &secret,
            users,
            &["alice", "bob"],
        )
        .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (trigger, shutdown) = Shutdown::new();
        let task = tokio::spawn(lmtp::serve(
            Listener::Tcp(listener),
            lmtp::backend(&services),
            Settings::from_config(&config.lmtp),
            shutdown,
        ));
        Facteur {
            _dir: dir,
            services,
            port,
            trigger,
            task,
        }
    }

    /// Stops the listener and lets go of the store (and its connections:
    /// Garage waits for open ones when asked to stop).
    async fn stop(self) {
        self.trigger.fire();
        self.task.await.unwrap();
    }

    /// Unlocks the user's account with their password, drains incoming
    /// mail into INBOX, and returns every INBOX message.
    async fn inbox(&self, login: &str) -> Vec<String> {
        let id = self.services.user_id(login);
        let keys = self
            .services
            .keyrings
            .unlock(&id, &Password::new("pw"))
            .await
            .unwrap();
        let account = Account::new(
            id,
            keys,
            self.services.store.clone(),
            self.services
                .account_config(InstanceId::new("postfixtest").unwrap()),
        );
        account.drain_incoming().await.unwrap();
        let (_, inbox) = account.open_by_name("INBOX").await.unwrap();
        let uids: Vec<u32> = inbox.read(|s| s.messages().map(|m| m.uid).collect()).await;
        let mut messages = Vec::new();
        for uid in uids {
            let body = inbox.body(uid).await.unwrap();
            messages.push(String::from_utf8_lossy(&body).into_owned());
        }
        messages
    }
}

fn message(id: &str, to: &str) -> Vec<u8> {
    format!(
        "From: Sender <sender@example.net>\r\nTo: {to}\r\nSubject: test {id}\r\n\
         Message-ID: <{id}@example.net>\r\n\r\nHello {to}.\r\n. a line that begins with a dot\r\n"
    )
    .into_bytes()
}

/// The INBOX messages holding this Message-ID.
fn with_id<'a>(inbox: &'a [String], id: &str) -> Vec<&'a String> {
    let header = format!("Message-ID: <{id}@example.net>");
    inbox.iter().filter(|m| m.contains(&header)).collect()
}

#[tokio::test]
async fn postfix_delivers_sendmail_and_smtp_mail_into_inbox() {
    if !enabled("the Postfix end-to-end test") {
        return;
    }
    let store_dir = tempfile::tempdir().unwrap();
    let facteur = Facteur::start(Arc::new(FsStore::open(store_dir.path()).unwrap())).await;
    let postfix = Postfix::start(facteur.port).await;

    postfix
        .sendmail(
            "sender@example.net",
            &["alice@example.org"],
            &message("local", "alice@example.org"),
        )
        .await;
    postfix
        .smtp(
            "sender@example.net",
            &["alice+lists@example.org", "bob@example.org"],
            &message("smtp", "alice+lists@example.org, bob@example.org"),
        )
        .await;
    postfix
        .wait_for("three deliveries over LMTP", async |p| {
            p.statuses("alice@example.org", "sent") == 1
                && p.statuses("alice+lists@example.org", "sent") == 1
                && p.statuses("bob@example.org", "sent") == 1
        })
        .await;
    assert!(postfix.queue().await.contains("Mail queue is empty"));

    let alice = facteur.inbox("alice").await;
    assert_eq!(alice.len(), 2, "{alice:#?}");
    let local = with_id(&alice, "local");
    assert_eq!(local.len(), 1);
    assert!(
        local[0].starts_with(
            "Return-Path: <sender@example.net>\r\nDelivered-To: alice@example.org\r\n"
        ),
        "{}",
        local[0]
    );
    // Facteur's Received names Postfix's LHLO name and address; Postfix's
    // own trace header came through below it; the dot-stuffing both ways
    // left the body as it was sent.
    assert!(
        local[0].contains("\r\nReceived: from postfix.facteur.test ([127.0.0.1])\r\n\tby "),
        "{}",
        local[0]
    );
    assert!(local[0].contains("(Facteur) with LMTP\r\n\tfor <alice@example.org>; "));
    assert!(local[0].contains("by postfix.facteur.test (Postfix"));
    assert!(local[0].ends_with("\r\n. a line that begins with a dot\r\n"));
    let smtp = with_id(&alice, "smtp");
    assert_eq!(smtp.len(), 1);
    assert!(smtp[0].contains("Delivered-To: alice+lists@example.org\r\n"));
    assert!(smtp[0].ends_with("\r\n. a line that begins with a dot\r\n"));

    let bob = facteur.inbox("bob").await;
    assert_eq!(bob.len(), 1);
    assert_eq!(with_id(&bob, "smtp").len(), 1);
}

#[tokio::test]
async fn unknown_recipients_bounce_and_known_ones_are_delivered() {
    if !enabled("the Postfix unknown-recipient test") {
        return;
    }
    let store_dir = tempfile::tempdir().unwrap();
    let facteur = Facteur::start(Arc::new(FsStore::open(store_dir.path()).unwrap())).await;
    let postfix = Postfix::start(facteur.port).await;
    postfix
        .sendmail(
            "sender@example.net",
            &["ghost@example.org", "bob@example.org"],
            &message("mixed", "ghost@example.org, bob@example.org"),
        )
        .await;
    postfix
        .wait_for("ghost bounced and bob delivered", async |p| {
            p.statuses("ghost@example.org", "bounced") == 1
                && p.statuses("bob@example.org", "sent") == 1
        })
        .await;
    assert!(
        postfix.log().contains("said: 550 5.1.1 no such user here"),
        "{}",
        postfix.log()
    );
    assert_eq!(with_id(&facteur.inbox("bob").await, "mixed").len(), 1);
}

/// The store goes down for real (Garage stopped): Facteur answers 451,
/// Postfix keeps the message queued and retries; once Garage is back the
/// message is delivered, and INBOX holds it exactly once.
#[tokio::test]
async fn store_outage_keeps_mail_queued_then_delivers_it_exactly_once() {
    if !enabled("the Postfix store-outage test") {
        return;
    }
    let garage = Garage::start().await;
    let store: SharedStore = Arc::new(S3Store::new(garage.settings.clone()).unwrap());
    let facteur = Facteur::start(store).await;
    let postfix = Postfix::start(facteur.port).await;

    // The path works while the store is up.
    postfix
        .sendmail(
            "sender@example.net",
            &["alice@example.org"],
            &message("before", "alice@example.org"),
        )
        .await;
    postfix
        .wait_for("the first delivery", async |p| {
            p.statuses("alice@example.org", "sent") == 1
        })
        .await;

    garage.stop().await;
    postfix
        .sendmail(
            "sender@example.net",
            &["alice@example.org"],
            &message("outage", "alice@example.org"),
        )
        .await;
    // Facteur's answer reaches Postfix, which defers the message.
    postfix
        .wait_for("a 451 from Facteur, message deferred", async |p| {
            p.queue().await.contains("451 4.3.0")
        })
        .await;
    let queue = postfix.queue().await;
    assert!(
        queue.contains("1 Request") && queue.contains("alice@example.org"),
        "{queue}"
    );
    assert_eq!(postfix.statuses("alice@example.org", "bounced"), 0);
    // It stays queued across retries while the store is down.
    postfix
        .wait_flushing("a second deferral", async |p| {
            p.statuses("alice@example.org", "deferred") >= 2
        })
        .await;
    assert!(postfix.queue().await.contains("1 Request"));

    garage.restart().await;
    postfix
        .wait_flushing("delivery after the store came back", async |p| {
            p.statuses("alice@example.org", "sent") == 2
        })
        .await;
    assert!(postfix.queue().await.contains("Mail queue is empty"));
    assert_eq!(postfix.statuses("alice@example.org", "bounced"), 0);

    let inbox = facteur.inbox("alice").await;
    assert_eq!(inbox.len(), 2, "{inbox:#?}");
    assert_eq!(with_id(&inbox, "before").len(), 1);
    assert_eq!(with_id(&inbox, "outage").len(), 1);
    drop(postfix);
    facteur.stop().await;
}
