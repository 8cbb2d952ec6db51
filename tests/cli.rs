//! The `facteur` binary as an admin uses it: user management, config check,
//! the embedded default, and one clear line for every mistake.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use facteur::store::{FsStore, ObjectStore, S3Settings, S3Store, list_all};

const BIN: &str = env!("CARGO_BIN_EXE_facteur");

/// A throwaway configuration directory.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    /// An `fs` store and users file, with cheap Argon2 parameters.
    fn fs() -> Setup {
        Setup::with_store("[store]\nbackend = \"fs\"\npath = \"store\"\n")
    }

    fn with_store(store: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "cluster_secret = \"{}\"\n{store}\n[directory]\nbackend = \"static\"\n\
             users_file = \"users.toml\"\n[crypto.argon2]\nmemory_kib = 1024\niterations = 1\n\
             parallelism = 1\n",
            hex(&rand_bytes())
        );
        std::fs::write(dir.path().join("facteur.toml"), config).unwrap();
        Setup { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("facteur.toml")
    }

    /// Runs `facteur --config <config> args...` with `stdin` as input.
    fn run(&self, args: &[&str], stdin: &str) -> Output {
        run_with(
            &["--config", self.config().to_str().unwrap()],
            args,
            stdin,
            self.dir.path(),
        )
    }
}

fn run_with(global: &[&str], args: &[&str], stdin: &str, cwd: &Path) -> Output {
    let mut child = Command::new(BIN)
        .args(global)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(o.status.success(), "failed: {}\n{}", stdout(o), stderr(o));
}

/// A user mistake: non-zero exit, one line on stderr naming the problem,
/// no panic or backtrace.
#[track_caller]
fn assert_user_error(o: &Output, expected: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "unexpected success: {}", stdout(o));
    assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

fn recovery_key(out: &str) -> String {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("recovery key: "))
        .expect("a recovery key is printed")
        .to_owned()
}

#[test]
fn user_lifecycle_add_list_passwd_rekey_delete() {
    let s = Setup::fs();
    let out = s.run(
        &[
            "user",
            "add",
            "Alice",
            "--address",
            "Alice@Example.org",
            "--alias",
            "postmaster@example.org",
        ],
        "first-password\n",
    );
    assert_ok(&out);
    assert!(
        stdout(&out).contains("created user alice"),
        "{}",
        stdout(&out)
    );
    let recovery = recovery_key(&stdout(&out));

    let out = s.run(&["user", "list"], "");
    assert_ok(&out);
    let list = stdout(&out);
    assert!(
        list.contains("alice\taddresses: alice@example.org"),
        "{list}"
    );
    assert!(list.contains("aliases: postmaster@example.org"), "{list}");
    assert!(list.contains("keyring: ok, recovery key"), "{list}");

    // Adding the same login again, in another case, is refused.
    assert_user_error(
        &s.run(&["user", "add", "ALICE"], "another-password\n"),
        "already exists",
    );

    // passwd with a wrong current password changes nothing.
    assert_user_error(
        &s.run(&["user", "passwd", "alice"], "not-it\nsecond-password\n"),
        "wrong password",
    );
    assert_ok(&s.run(
        &["user", "passwd", "alice"],
        "first-password\nsecond-password\n",
    ));
    assert_user_error(
        &s.run(
            &["user", "passwd", "alice"],
            "first-password\nthird-password\n",
        ),
        "wrong password",
    );

    // The recovery key unlocks when the password is lost; a new one can be issued.
    let out = s.run(
        &["user", "passwd", "alice", "--recovery", "--new-recovery"],
        &format!("{recovery}\nthird-password\n"),
    );
    assert_ok(&out);
    let new_recovery = recovery_key(&stdout(&out));
    assert_ne!(new_recovery, recovery);
    assert_user_error(
        &s.run(
            &["user", "passwd", "alice", "--recovery"],
            &format!("{recovery}\nfourth-password\n"),
        ),
        "wrong recovery key",
    );

    // rekey: the keyring follows the directory's password only with proof.
    assert_user_error(
        &s.run(
            &["user", "rekey", "alice"],
            "third-password\nnot-the-directory-one\n",
        ),
        "not the password the directory has",
    );
    assert_ok(&s.run(
        &["user", "rekey", "alice"],
        "third-password\nthird-password\n",
    ));

    // delete needs --yes and then erases the store objects.
    assert_user_error(&s.run(&["user", "delete", "alice"], ""), "--yes");
    let out = s.run(&["user", "delete", "alice", "--yes"], "");
    assert_ok(&out);
    assert!(stdout(&out).contains("deleted user alice"));
    assert!(stdout(&s.run(&["user", "list"], "")).contains("no users"));
    let store = s.dir.path().join("store");
    // What remains is the change hint `user delete` leaves for running
    // instances (an empty object named by the opaque user id), which they
    // sweep after a few minutes; nothing of alice's data.
    let hints = store.join("hints");
    let leftover: Vec<_> = walk(&store)
        .into_iter()
        .filter(|p| p.is_file() && !p.starts_with(&hints))
        .collect();
    assert!(leftover.is_empty(), "{leftover:?}");
    let announced: Vec<_> = walk(&hints).into_iter().filter(|p| p.is_file()).collect();
    assert_eq!(
        announced.len(),
        1,
        "user delete writes one hint: {announced:?}"
    );
    assert_eq!(std::fs::metadata(&announced[0]).unwrap().len(), 0);
}

#[test]
fn user_mistakes_get_one_clear_line() {
    let s = Setup::fs();
    assert_user_error(
        &s.run(&["user", "passwd", "nobody"], "x\ny\n"),
        "no such user: nobody",
    );
    assert_user_error(
        &s.run(&["user", "delete", "nobody", "--yes"], ""),
        "no such user: nobody",
    );
    assert_user_error(&s.run(&["user", "add", "bob"], "\n"), "empty password");
    assert_user_error(
        &s.run(&["user", "add", "bob"], "short\n"),
        "at least 8 characters",
    );
    assert_user_error(
        &s.run(&["user", "add", "bobbobbob"], "bobbobbob\n"),
        "too weak",
    );
    assert_user_error(
        &s.run(&["user", "add", "bob"], ""),
        "expected a line on standard input",
    );
    assert_user_error(
        &s.run(
            &["user", "add", "bob", "--address", "not-an-address"],
            "good-password\n",
        ),
        "invalid address",
    );
    assert_user_error(
        &s.run(&["user", "add", "b o b"], "good-password\n"),
        "white space",
    );
    // Nothing of the failed attempts was kept.
    assert!(stdout(&s.run(&["user", "list"], "")).contains("no users"));

    let missing = s.dir.path().join("missing.toml");
    assert_user_error(
        &run_with(
            &["--config", missing.to_str().unwrap()],
            &["user", "list"],
            "",
            s.dir.path(),
        ),
        "cannot read config file",
    );
    let bad = s.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(s.config()).unwrap() + "colour = \"blue\"\n",
    )
    .unwrap();
    assert_user_error(
        &run_with(
            &["--config", bad.to_str().unwrap()],
            &["config", "check"],
            "",
            s.dir.path(),
        ),
        "unknown field `colour`",
    );
}

#[test]
fn unreachable_store_is_reported_not_panicked() {
    // Nothing listens on port 1 of loopback: connections are refused.
    let s = Setup::with_store(
        "[store]\nbackend = \"s3\"\n[store.s3]\nendpoint = \"http://127.0.0.1:1\"\nbucket = \"b\"\n\
         access_key_id = \"GK00\"\nsecret_access_key = \"x\"\nmax_retries = 0\n",
    );
    assert_user_error(&s.run(&["config", "check"], ""), "object store unreachable");
    assert_user_error(
        &s.run(&["user", "add", "carol"], "good-password\n"),
        "object store unavailable",
    );
}

/// `config check` loads the IMAP certificate as `serve` would, so a wrong
/// path or a file that is not a certificate shows before the server starts.
#[test]
fn config_check_loads_the_imap_certificate() {
    let tls = tempfile::tempdir().unwrap();
    let (cert, key) =
        facteur::server::tls::ensure_self_signed(tls.path(), &["localhost".to_owned()]).unwrap();
    let imap = |cert: &Path, key: &Path| {
        format!(
            "[store]\nbackend = \"fs\"\npath = \"store\"\n[imap]\ncertificate = {:?}\n\
             private_key = {:?}\n",
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        )
    };
    let s = Setup::with_store(&imap(&cert, &key));
    let out = s.run(&["config", "check"], "");
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!("imap certificate {} loads", cert.display())),
        "{}",
        stdout(&out)
    );
    let garbage = tls.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let s = Setup::with_store(&imap(&garbage, &key));
    assert_user_error(&s.run(&["config", "check"], ""), "IMAP certificate");
    let s = Setup::with_store(&imap(&tls.path().join("missing.pem"), &key));
    assert_user_error(&s.run(&["config", "check"], ""), "IMAP certificate");
}

#[test]
fn config_check_reports_a_working_setup() {
    let s = Setup::fs();
    assert_ok(&s.run(&["user", "add", "dave"], "good-password\n"));
    let out = s.run(&["config", "check"], "");
    assert_ok(&out);
    assert!(stdout(&out).contains("config ok"), "{}", stdout(&out));
    assert!(stdout(&out).contains("1 users"), "{}", stdout(&out));
}

/// No login, address, password or plaintext appears in any object name or
/// body: the store holds only opaque ids and ciphertext.
async fn assert_store_is_opaque(store: &dyn ObjectStore, prefix: &str, secrets: &[&str]) {
    let objects = list_all(store, prefix, None).await.unwrap();
    assert!(!objects.is_empty(), "the user's keyring should be stored");
    for o in objects {
        let body = store.get(&o.key).await.unwrap();
        let body = String::from_utf8_lossy(&body).to_lowercase();
        for s in secrets {
            let s = s.to_lowercase();
            assert!(
                !o.key.to_lowercase().contains(&s),
                "{s:?} in object name {}",
                o.key
            );
            assert!(!body.contains(&s), "{s:?} in object {}", o.key);
        }
    }
}

const ALICE_SECRETS: &[&str] = &["alice", "example.org", "sesame-open-1234"];

#[tokio::test]
async fn fs_store_holds_only_opaque_ids_and_ciphertext() {
    let s = Setup::fs();
    let out = s.run(
        &["user", "add", "alice", "--address", "alice@example.org"],
        "sesame-open-1234\n",
    );
    assert_ok(&out);
    let store = FsStore::open(s.dir.path().join("store")).unwrap();
    assert_store_is_opaque(&store, "", ALICE_SECRETS).await;
    // The users file is where names live; it is private to its owner.
    let users = std::fs::read_to_string(s.dir.path().join("users.toml")).unwrap();
    assert!(users.contains("alice@example.org") && !users.contains("sesame-open-1234"));
}

#[tokio::test]
async fn garage_store_holds_only_opaque_ids_and_ciphertext() {
    let Some(settings) = S3Settings::for_tests("the Garage opacity test") else {
        return;
    };
    // A fresh cluster secret per run, so this run's objects are its own.
    let s = Setup::with_store(&format!(
        "[store]\nbackend = \"s3\"\n[store.s3]\nendpoint = \"{}\"\nregion = \"{}\"\nbucket = \"{}\"\n\
         access_key_id = \"{}\"\nsecret_access_key = {{ env = \"FACTEUR_TEST_S3_SECRET_KEY\" }}\n",
        settings.endpoint, settings.region, settings.bucket, settings.access_key_id
    ));
    let out = s.run(
        &["user", "add", "alice", "--address", "alice@example.org"],
        "sesame-open-1234\n",
    );
    assert_ok(&out);
    assert_ok(&s.run(&["config", "check"], ""));
    let store = S3Store::new(settings).unwrap();
    // Only users' objects: other tests share the bucket under other prefixes.
    assert_store_is_opaque(&store, "users/", ALICE_SECRETS).await;
    assert_ok(&s.run(&["user", "delete", "alice", "--yes"], ""));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

/// Reads a child's stdout lines on a thread, so the test can wait for a
/// given line with a bound instead of sleeping.
fn line_reader(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects lines until one contains `marker`.
fn lines_until(rx: &mpsc::Receiver<String>, marker: &str) -> Vec<String> {
    let mut lines = vec![];
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no {marker:?} in {lines:?}"));
        let done = line.contains(marker);
        lines.push(line);
        if done {
            return lines;
        }
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response
}

fn serve(cwd: &Path) -> (std::process::Child, Vec<String>, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--http", "127.0.0.1:0"])
        .args(["--imap", "127.0.0.1:0", "--imaps", "127.0.0.1:0"])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = line_reader(&mut child);
    let lines = lines_until(&rx, "ready");
    let addr = lines
        .iter()
        .find_map(|l| l.strip_prefix("facteur: http listening on "))
        .expect("listening line")
        .to_owned();
    (child, lines, addr)
}

fn terminate(mut child: std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        child.wait().unwrap().success(),
        "serve did not exit cleanly on SIGTERM"
    );
}

#[test]
fn embedded_default_creates_a_demo_account_once_and_serves_health() {
    let cwd = tempfile::tempdir().unwrap();
    let (child, lines, addr) = serve(cwd.path());
    let password = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("password: "))
        .unwrap_or_else(|| panic!("no demo password in {lines:?}"))
        .to_owned();
    assert!(
        lines.iter().any(|l| l.trim() == "login:    demo"),
        "{lines:?}"
    );
    assert!(cwd.path().join("facteur-data/store").is_dir());
    {
        use std::os::unix::fs::PermissionsExt;
        for private in [
            "facteur-data",
            "facteur-data/cluster-secret",
            "facteur-data/users.toml",
        ] {
            let mode = std::fs::metadata(cwd.path().join(private))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{private} is readable by others: {mode:o}");
        }
    }

    let health = http_get(&addr, "/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(http_get(&addr, "/metrics").contains("facteur_http_requests_total"));
    assert!(http_get(&addr, "/nope").starts_with("HTTP/1.1 404"));
    terminate(child);

    // A second start keeps the account and prints no new password.
    let (child, lines, _) = serve(cwd.path());
    assert!(
        !lines.iter().any(|l| l.contains("demo account")),
        "{lines:?}"
    );
    terminate(child);

    // The printed password really opens the demo keyring.
    let out = run_with(
        &[],
        &["user", "passwd", "demo"],
        &format!("{password}\nanother-password\n"),
        cwd.path(),
    );
    assert_ok(&out);
}

/// The embedded default serves IMAP on both transports with a self-signed
/// certificate made at first start, private, and the same after a restart
/// (clients pinned it).
#[test]
fn embedded_default_serves_imap_with_a_certificate_kept_across_restarts() {
    let cwd = tempfile::tempdir().unwrap();
    let (child, lines, _) = serve(cwd.path());
    let listening = |label: &str| {
        let prefix = format!("facteur: imap ({label}) listening on ");
        let addr = lines
            .iter()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {lines:?}"));
        addr.parse::<std::net::SocketAddr>().unwrap()
    };
    let starttls = listening("starttls");
    listening("tls");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("imap certificate") && l.contains("tls-cert.pem")),
        "{lines:?}"
    );
    let mut greeting = String::new();
    BufReader::new(TcpStream::connect(starttls).unwrap())
        .read_line(&mut greeting)
        .unwrap();
    assert!(greeting.starts_with("* OK"), "{greeting:?}");
    terminate(child);

    let cert = cwd.path().join("facteur-data/tls-cert.pem");
    let key = cwd.path().join("facteur-data/tls-key.pem");
    let first = std::fs::read(&cert).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the TLS key is readable by others: {mode:o}"
        );
    }
    let (child, _, _) = serve(cwd.path());
    terminate(child);
    assert_eq!(std::fs::read(&cert).unwrap(), first);
}

/// With LDAP, users are managed in LDAP: `config check` reaches it, `user
/// list` says where users live, and `rekey` (the fix for a password
/// changed in LDAP) looks the user up there.
#[test]
fn ldap_backend_commands() {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let Some(url) = var("FACTEUR_TEST_LDAP_URL") else {
        assert!(
            var("FACTEUR_REQUIRE_LDAP").is_none(),
            "FACTEUR_REQUIRE_LDAP is set but FACTEUR_TEST_LDAP_URL is missing"
        );
        eprintln!("no slapd settings in the environment; skipping (scripts/test.sh provides them)");
        return;
    };
    let get = |name: &str| var(name).unwrap_or_else(|| panic!("{name} is not set"));
    let s = Setup::fs();
    let config = std::fs::read_to_string(s.config()).unwrap().replace(
        "backend = \"static\"\nusers_file = \"users.toml\"\n",
        &format!(
            "backend = \"ldap\"\n[directory.ldap]\nurls = [{url:?}]\nbase_dn = {:?}\n\
             bind_dn = {:?}\nbind_password = {{ env = \"FACTEUR_TEST_LDAP_BIND_PASSWORD\" }}\n",
            get("FACTEUR_TEST_LDAP_BASE_DN"),
            get("FACTEUR_TEST_LDAP_BIND_DN"),
        ),
    );
    std::fs::write(s.config(), config).unwrap();
    let out = s.run(&["config", "check"], "");
    assert_ok(&out);
    assert!(
        stdout(&out).contains("directory ldap reachable"),
        "{}",
        stdout(&out)
    );
    // list and delete work with LDAP (tests/ldap.rs); add does not.
    assert_ok(&s.run(&["user", "list"], ""));
    assert_user_error(&s.run(&["user", "add", "carol"], ""), "users live in LDAP");
    assert_user_error(
        &s.run(&["user", "rekey", "nobody-here"], ""),
        "no such user",
    );
    // alice exists in LDAP but never logged in: no keyring to rekey yet.
    assert_user_error(&s.run(&["user", "rekey", "alice"], "x\n"), "no keyring");
}

/// `user check` reads every object of a user: a healthy account passes;
/// a flipped byte in an op and a deleted body are reported (status 1);
/// `--repair` leaves an account that passes, whose later messages are
/// all there and whose UIDs go on above the lost ones.
#[tokio::test]
async fn user_check_reports_and_repairs_damage() {
    use facteur::account::{Account, AccountConfig};
    use facteur::config::Config;
    use facteur::crypto::Password;
    use facteur::log::InstanceId;
    use facteur::server::Services;

    let s = Setup::fs();
    assert_ok(&s.run(&["user", "add", "alice"], "sesame-open-1234\n"));
    let services = Services::from_config(&Config::load(&s.config()).unwrap()).unwrap();
    let user = services.user_id("alice");
    let keys = services
        .keyrings
        .unlock(&user, &Password::new("sesame-open-1234"))
        .await
        .unwrap();
    let account = Account::new(
        user.clone(),
        keys,
        services.store.clone(),
        AccountConfig::new(
            InstanceId::new("writer").unwrap(),
            facteur::crypto::RecordAuth::from_cluster_secret(b"test cluster secret"),
        ),
    );
    let (_, inbox) = account.open_by_name("INBOX").await.unwrap();
    for n in 0..4 {
        let raw = format!("Subject: m{n}\r\n\r\nbody {n}\r\n");
        inbox.append(raw.as_bytes(), vec![], 0).await.unwrap();
    }
    let healthy = s.run(&["user", "check", "alice"], "sesame-open-1234\n");
    assert_ok(&healthy);
    assert!(
        stdout(&healthy).contains("0 problems"),
        "{}",
        stdout(&healthy)
    );

    let store = services.store.clone();
    let prefix = format!("users/{}/mbox/", user.as_str());
    let mut ops: Vec<String> = list_all(store.as_ref(), &prefix, None)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.contains("/log/"))
        .collect();
    ops.sort();
    assert_eq!(ops.len(), 4);
    let mut bytes = store.get(&ops[1]).await.unwrap().to_vec();
    bytes[40] ^= 0x04;
    store.put(&ops[1], bytes.into()).await.unwrap();
    let last = inbox
        .read(|s| s.message(4).map(|m| m.message.blob_id()))
        .await
        .unwrap();
    let blob = format!("users/{}/blob/{last}", user.as_str());
    store.delete(&blob).await.unwrap();

    let damaged = s.run(&["user", "check", "alice"], "sesame-open-1234\n");
    assert!(!damaged.status.success());
    let out = stdout(&damaged);
    assert!(out.contains(&ops[1]) && out.contains("UID 4"), "{out}");
    assert!(out.contains("2 problems"), "{out}");

    let repaired = s.run(
        &["user", "check", "alice", "--repair"],
        "sesame-open-1234\n",
    );
    assert_ok(&repaired);
    assert!(
        stdout(&repaired).contains("repaired: "),
        "{}",
        stdout(&repaired)
    );
    let again = s.run(&["user", "check", "alice"], "sesame-open-1234\n");
    assert_ok(&again);
    assert!(stdout(&again).contains("0 problems"), "{}", stdout(&again));

    // A fresh instance shows messages 1 and 3 and gives new mail a new UID.
    let keys = services
        .keyrings
        .unlock(&user, &Password::new("sesame-open-1234"))
        .await
        .unwrap();
    let fresh = Account::new(
        user,
        keys,
        services.store.clone(),
        AccountConfig::new(
            InstanceId::new("fresh").unwrap(),
            facteur::crypto::RecordAuth::from_cluster_secret(b"test cluster secret"),
        ),
    );
    let (_, inbox) = fresh.open_by_name("INBOX").await.unwrap();
    let uids: Vec<u32> = inbox.read(|s| s.messages().map(|m| m.uid).collect()).await;
    assert_eq!(uids, [1, 3]);
    assert!(fresh.folders().await.unwrap().damage().await.is_empty());
    assert!(inbox.damage().await.is_empty());
    let placed = inbox
        .append(b"Subject: new\r\n\r\nx\r\n", vec![], 0)
        .await
        .unwrap();
    assert!(placed.uids[0].is_some_and(|u| u > 4), "{placed:?}");
}
