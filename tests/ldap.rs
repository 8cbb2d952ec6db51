//! The LDAP directory against a real OpenLDAP server.
//!
//! Runs against the slapd named by `FACTEUR_TEST_LDAP_*`
//! (`eval "$(scripts/slapd.sh start <dir>)"` sets them; the directory holds
//! fixtures/ldap/base.ldif). Without them every test prints a notice and
//! passes, unless `FACTEUR_REQUIRE_LDAP=1` (set by `scripts/test.sh`), in
//! which case they fail. Tests that change the directory add entries with
//! random names, so runs can share a server; the outage test starts a slapd
//! of its own, since it stops it.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use facteur::config::Config;
use facteur::crypto::Password;
use facteur::directory::{Directory, DirectoryError, LdapDirectory, UserRecord};
use rand::Rng;

/// The test server, from the environment.
#[derive(Clone)]
struct Env {
    url: String,
    ldaps_url: String,
    ca_file: String,
    bind_dn: String,
    bind_password: String,
    base_dn: String,
    admin_dn: String,
    admin_password: String,
}

fn env() -> Option<Env> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let Some(url) = var("FACTEUR_TEST_LDAP_URL") else {
        if var("FACTEUR_REQUIRE_LDAP").is_some_and(|v| v == "1") {
            panic!(
                "FACTEUR_REQUIRE_LDAP=1 but FACTEUR_TEST_LDAP_URL is not set; run \
                 `eval \"$(scripts/slapd.sh start <dir>)\"` first"
            );
        }
        eprintln!("notice: LDAP test skipped (no FACTEUR_TEST_LDAP_URL; see scripts/slapd.sh)");
        return None;
    };
    let get = |name: &str| var(name).unwrap_or_else(|| panic!("{name} is not set"));
    Some(Env {
        url,
        ldaps_url: get("FACTEUR_TEST_LDAPS_URL"),
        ca_file: get("FACTEUR_TEST_LDAP_CA_FILE"),
        bind_dn: get("FACTEUR_TEST_LDAP_BIND_DN"),
        bind_password: get("FACTEUR_TEST_LDAP_BIND_PASSWORD"),
        base_dn: get("FACTEUR_TEST_LDAP_BASE_DN"),
        admin_dn: get("FACTEUR_TEST_LDAP_ADMIN_DN"),
        admin_password: get("FACTEUR_TEST_LDAP_ADMIN_PASSWORD"),
    })
}

/// A directory configured the way doc/ldap.md says, through the real
/// configuration parser; `extra` adds or overrides `[directory.ldap]` keys.
fn directory(env: &Env, urls: &[&str], extra: &str) -> LdapDirectory {
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    let has = |key: &str| extra.lines().any(|l| l.trim_start().starts_with(key));
    let mut text = format!(
        r#"
        cluster_secret = "0123456789abcdef0123456789abcdef"
        [store]
        backend = "memory"
        [directory]
        backend = "ldap"
        [directory.ldap]
        urls = [{urls}]
        base_dn = {base:?}
        quota_attribute = "mailQuota"
        quota_messages_attribute = "mailQuotaMessages"
        {extra}
        "#,
        urls = urls.join(", "),
        base = env.base_dn,
    );
    if !has("bind_dn") {
        text += &format!(
            "bind_dn = {:?}\nbind_password = {:?}\n",
            env.bind_dn, env.bind_password
        );
    }
    if !has("group_filter") {
        text += "group_filter = \"(&(objectClass=groupOfNames)(cn=mail)(member=%d))\"\n";
    }
    let config = Config::parse(&text, Path::new(".")).expect("test config");
    let ldap = config.directory.ldap.expect("[directory.ldap]");
    LdapDirectory::new(ldap.settings().unwrap(), ldap.bind_password().unwrap()).unwrap()
}

fn pw(p: &str) -> Password {
    Password::new(p)
}

/// Runs ldapadd/ldapmodify/ldapdelete as the admin with `ldif` on stdin.
fn ldap_admin(env: &Env, tool: &str, ldif: &str) {
    let mut child = Command::new(tool)
        .args([
            "-x",
            "-H",
            &env.url,
            "-D",
            &env.admin_dn,
            "-w",
            &env.admin_password,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ldif.as_bytes())
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{tool} failed on:\n{ldif}");
}

/// A login no other test or run uses.
fn fresh_login() -> String {
    format!("dave{:08x}", rand::thread_rng().r#gen::<u32>())
}

/// Adds `login` to `ou=people` and to the mail group, as an admin would.
fn add_user(env: &Env, login: &str, password: &str) {
    let dn = format!("uid={login},ou=people,{}", env.base_dn);
    ldap_admin(
        env,
        "ldapadd",
        &format!(
            "dn: {dn}\nobjectClass: inetOrgPerson\nuid: {login}\ncn: Dave\nsn: Test\n\
             mail: {login}@example.org\nuserPassword: {password}\n"
        ),
    );
    ldap_admin(
        env,
        "ldapmodify",
        &format!(
            "dn: cn=mail,ou=groups,{}\nchangetype: modify\nadd: member\nmember: {dn}\n",
            env.base_dn
        ),
    );
}

fn remove_from_mail_group(env: &Env, login: &str) {
    ldap_admin(
        env,
        "ldapmodify",
        &format!(
            "dn: cn=mail,ou=groups,{base}\nchangetype: modify\ndelete: member\n\
             member: uid={login},ou=people,{base}\n",
            base = env.base_dn
        ),
    );
}

fn alice() -> UserRecord {
    UserRecord {
        login: "alice".into(),
        addresses: vec![
            "alice@example.org".into(),
            "postmaster@example.org".into(),
            "alice.liddell@example.org".into(),
        ],
        quota_bytes: Some(1 << 30),
        quota_messages: Some(100_000),
    }
}

#[tokio::test]
async fn authenticate_binds_as_the_user() {
    let Some(env) = env() else { return };
    let dir = directory(&env, &[&env.url], "");
    let ok = |r: Result<Option<UserRecord>, DirectoryError>| r.expect("no directory error");

    assert_eq!(
        ok(dir.authenticate("alice", &pw("alice-password-1")).await),
        Some(alice())
    );
    // The login is normalised; the record names the LDAP login.
    assert_eq!(
        ok(dir.authenticate(" ALICE ", &pw("alice-password-1")).await),
        Some(alice())
    );
    assert_eq!(ok(dir.authenticate("alice", &pw("wrong")).await), None);
    assert_eq!(
        ok(dir.authenticate("alice", &pw("alice-password-1 ")).await),
        None
    );
    assert_eq!(ok(dir.authenticate("nobody", &pw("x")).await), None);
    // RFC 4513 §5.1.2: an empty password would be an unauthenticated bind,
    // which succeeds; it must be refused.
    let before = dir.requests();
    assert_eq!(ok(dir.authenticate("alice", &pw("")).await), None);
    assert_eq!(dir.requests(), before, "no request for an empty password");
    // Right password, but not in the mail group: disabled.
    assert_eq!(
        ok(dir.authenticate("carol", &pw("carol-password-3")).await),
        None
    );
    // A DN with parentheses and an escaped comma goes through the group
    // filter escaped (RFC 4515), and binds.
    let erin = ok(dir.authenticate("erin", &pw("erin-password-5")).await).expect("erin");
    assert_eq!(erin.addresses, ["erin@example.org"]);
    assert_eq!(erin.quota_bytes, None);
    assert_eq!(erin.quota_messages, None);
}

#[tokio::test]
async fn the_group_filter_is_what_disables_a_user() {
    let Some(env) = env() else { return };
    let dir = directory(&env, &[&env.url], "group_filter = \"(objectClass=*)\"");
    let carol = dir
        .authenticate("carol", &pw("carol-password-3"))
        .await
        .unwrap();
    assert_eq!(carol.unwrap().login, "carol");
}

#[tokio::test]
async fn injection_attempts_find_nobody() {
    let Some(env) = env() else { return };
    let dir = directory(&env, &[&env.url], "");
    for login in [
        "*",
        "*)(uid=*",
        "alice)(|(uid=*",
        "al*",
        "alice\\",
        "\\2a",
        "alice\0",
        "(uid=alice)",
    ] {
        assert_eq!(
            dir.authenticate(login, &pw("alice-password-1"))
                .await
                .unwrap(),
            None,
            "{login:?}"
        );
        assert_eq!(dir.find_login(login).await.unwrap(), None, "{login:?}");
    }
    for address in ["*@example.org", "alice@*", "*)(mail=*@example.org"] {
        assert_eq!(dir.find_address(address).await.unwrap(), None, "{address}");
    }
}

#[tokio::test]
async fn addresses_and_aliases_resolve_case_insensitively() {
    let Some(env) = env() else { return };
    let dir = directory(&env, &[&env.url], "cache_ttl = 0\nnegative_cache_ttl = 0");
    for address in [
        "alice@example.org",
        "ALICE@Example.ORG",
        "postmaster@example.org",
        "Alice.Liddell@example.org",
    ] {
        assert_eq!(
            dir.find_address(address).await.unwrap(),
            Some(alice()),
            "{address}"
        );
    }
    assert_eq!(
        dir.find_address("bob@example.org")
            .await
            .unwrap()
            .unwrap()
            .login,
        "bob"
    );
    assert_eq!(dir.find_login("Bob").await.unwrap().unwrap().login, "bob");
    assert_eq!(dir.find_login("alice").await.unwrap(), Some(alice()));
    // Disabled or unknown: no one receives the mail.
    assert_eq!(dir.find_address("carol@example.org").await.unwrap(), None);
    assert_eq!(dir.find_login("carol").await.unwrap(), None);
    assert_eq!(dir.find_address("nobody@example.org").await.unwrap(), None);
}

#[tokio::test]
async fn recipient_lookups_are_cached() {
    let Some(env) = env() else { return };
    let dir = directory(&env, &[&env.url], "cache_ttl = 60\nnegative_cache_ttl = 60");
    assert_eq!(
        dir.find_address("Alice@example.org").await.unwrap(),
        Some(alice())
    );
    assert_eq!(dir.find_address("nobody@example.org").await.unwrap(), None);
    let requests = dir.requests();
    assert!(requests > 0);
    assert_eq!(
        dir.find_address("alice@EXAMPLE.org").await.unwrap(),
        Some(alice())
    );
    assert_eq!(dir.find_address("nobody@example.org").await.unwrap(), None);
    assert_eq!(dir.requests(), requests, "answered from the cache");
    // Logins are never cached.
    dir.authenticate("alice", &pw("alice-password-1"))
        .await
        .unwrap()
        .unwrap();
    assert!(dir.requests() > requests);
}

#[tokio::test]
async fn users_added_and_disabled_in_ldap_take_effect() {
    let Some(env) = env() else { return };
    // No negative caching: a new user is found at once.
    let dir = directory(&env, &[&env.url], "cache_ttl = 60\nnegative_cache_ttl = 0");
    let uncached = directory(&env, &[&env.url], "cache_ttl = 0\nnegative_cache_ttl = 0");

    let password = "dave-password-4";
    let login = fresh_login();
    let address = format!("{login}@example.org");
    assert_eq!(dir.find_address(&address).await.unwrap(), None);

    add_user(&env, &login, password);
    let found = dir.find_address(&address).await.unwrap().expect("new user");
    assert_eq!(found.login, login);
    assert_eq!(found.addresses, [address.as_str()]);
    assert!(
        dir.authenticate(&login, &pw(password))
            .await
            .unwrap()
            .is_some()
    );

    // Disabled by the admin: no login, no mail (once the cache expires).
    remove_from_mail_group(&env, &login);
    assert_eq!(dir.authenticate(&login, &pw(password)).await.unwrap(), None);
    assert_eq!(uncached.find_address(&address).await.unwrap(), None);
    assert_eq!(uncached.find_login(&login).await.unwrap(), None);
}

#[tokio::test]
async fn the_negative_cache_forgets_a_user_added_later() {
    let Some(env) = env() else { return };
    let cached = directory(&env, &[&env.url], "cache_ttl = 60\nnegative_cache_ttl = 60");
    // Cache "unknown" for an address first, then create its owner.
    let login = fresh_login();
    let address = format!("{login}@example.org");
    assert_eq!(cached.find_address(&address).await.unwrap(), None);
    add_user(&env, &login, "x-password");
    assert_eq!(cached.find_address(&address).await.unwrap(), None, "cached");
    cached.clear_cache();
    assert_eq!(
        cached.find_address(&address).await.unwrap().unwrap().login,
        login
    );
}

/// A loopback port nobody listens on.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn fails_over_to_the_next_url() {
    let Some(env) = env() else { return };
    let dead = format!("ldap://127.0.0.1:{}", dead_port());
    let dir = directory(&env, &[&dead, &env.url], "");
    assert_eq!(
        dir.authenticate("alice", &pw("alice-password-1"))
            .await
            .unwrap(),
        Some(alice())
    );
    assert_eq!(dir.find_login("alice").await.unwrap(), Some(alice()));

    let all_dead = directory(&env, &[&dead], "");
    match all_dead.find_address("alice@example.org").await {
        Err(DirectoryError::Unavailable(e)) => assert!(e.contains(&dead), "{e}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    match all_dead
        .authenticate("alice", &pw("alice-password-1"))
        .await
    {
        Err(DirectoryError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_service_password_is_unavailable_not_unknown() {
    let Some(env) = env() else { return };
    let extra = format!(
        "bind_dn = {:?}\nbind_password = \"not-the-password\"",
        env.bind_dn
    );
    let dir = directory(&env, &[&env.url], &extra);
    match dir.find_login("alice").await {
        Err(DirectoryError::Unavailable(e)) => {
            assert!(e.contains("49 (invalidCredentials)"), "{e}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn tls_with_ldaps_and_starttls() {
    let Some(env) = env() else { return };
    let ca = format!("ca_file = {:?}", env.ca_file);
    let ldaps = directory(&env, &[&env.ldaps_url], &ca);
    assert_eq!(
        ldaps
            .authenticate("alice", &pw("alice-password-1"))
            .await
            .unwrap(),
        Some(alice())
    );
    let starttls = directory(&env, &[&env.url], &format!("{ca}\nstarttls = true"));
    assert_eq!(
        starttls
            .authenticate("alice", &pw("alice-password-1"))
            .await
            .unwrap(),
        Some(alice())
    );
    // Without our CA, the server's certificate is not trusted.
    let untrusted = directory(&env, &[&env.ldaps_url], "");
    match untrusted.find_login("alice").await {
        Err(DirectoryError::Unavailable(e)) => assert!(e.contains("cannot connect"), "{e}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// A slapd of our own, stopped when dropped.
struct OwnSlapd {
    dir: tempfile::TempDir,
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/slapd.sh");

impl OwnSlapd {
    fn run(&self, command: &str) -> String {
        let out = Command::new(SCRIPT)
            .args([command, &self.dir.path().display().to_string()])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "slapd.sh {command} failed");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Starts it and reads its settings from the printed exports.
    fn start() -> (OwnSlapd, Env) {
        let slapd = OwnSlapd {
            dir: tempfile::tempdir().unwrap(),
        };
        let exports = slapd.run("start");
        let get = |name: &str| {
            exports
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("no {name} in {exports}"))
                .trim_matches('\'')
                .replace("\\,", ",")
                .replace("\\ ", " ")
        };
        let env = Env {
            url: get("FACTEUR_TEST_LDAP_URL"),
            ldaps_url: get("FACTEUR_TEST_LDAPS_URL"),
            ca_file: get("FACTEUR_TEST_LDAP_CA_FILE"),
            bind_dn: get("FACTEUR_TEST_LDAP_BIND_DN"),
            bind_password: get("FACTEUR_TEST_LDAP_BIND_PASSWORD"),
            base_dn: get("FACTEUR_TEST_LDAP_BASE_DN"),
            admin_dn: get("FACTEUR_TEST_LDAP_ADMIN_DN"),
            admin_password: get("FACTEUR_TEST_LDAP_ADMIN_PASSWORD"),
        };
        (slapd, env)
    }
}

impl Drop for OwnSlapd {
    fn drop(&mut self) {
        let _ = Command::new(SCRIPT)
            .args(["stop", &self.dir.path().display().to_string()])
            .status();
    }
}

fn assert_unavailable(r: Result<Option<UserRecord>, DirectoryError>, what: &str) {
    match r {
        Err(DirectoryError::Unavailable(_)) => {}
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn an_outage_is_unavailable_and_recovers_without_restart() {
    // Needs slapd installed, which the shared server proves.
    let Some(_) = env() else { return };
    let (slapd, env) = OwnSlapd::start();
    let dir = directory(
        &env,
        &[&env.url],
        "cache_ttl = 0\nnegative_cache_ttl = 0\ntimeout = 1",
    );
    let alice_password = pw("alice-password-1");
    let login = || dir.authenticate("alice", &alice_password);
    assert_eq!(login().await.unwrap(), Some(alice()));
    assert_eq!(dir.find_login("bob").await.unwrap().unwrap().login, "bob");

    // Stopped: connections are refused.
    slapd.run("stop");
    assert_unavailable(login().await, "authenticate, stopped");
    assert_unavailable(dir.find_login("bob").await, "find_login, stopped");
    assert_unavailable(
        dir.find_address("bob@example.org").await,
        "find_address, stopped",
    );

    // Back: the same directory object reconnects.
    slapd.run("start");
    assert_eq!(login().await.unwrap(), Some(alice()));
    assert_eq!(dir.find_login("bob").await.unwrap().unwrap().login, "bob");

    // Frozen: TCP still accepts but nothing answers; timeouts bound it.
    // The pooled connection's timeout is not followed by a reconnect's,
    // and once it has timed out the directory is known down: the next
    // requests fail without contacting it (the circuit breaker).
    slapd.run("pause");
    let started = Instant::now();
    assert_unavailable(dir.find_login("bob").await, "find_login, paused");
    let requests = dir.requests();
    assert_unavailable(login().await, "authenticate, paused");
    assert_unavailable(dir.find_address("bob@example.org").await, "find_address");
    assert_eq!(dir.requests(), requests, "known down: nothing sent");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "one 1 s timeout took {:?}",
        started.elapsed()
    );
    // Back: within the breaker's retry period, a probe finds it again.
    slapd.run("resume");
    let deadline = Instant::now() + facteur::directory::ldap::RETRY_AFTER + Duration::from_secs(10);
    loop {
        match login().await {
            Ok(found) => {
                assert_eq!(found, Some(alice()));
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "not recovered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dir.find_login("bob").await.unwrap().unwrap().login, "bob");
}

// ---------------------------------------------------------------------
// End to end: IMAP logins and LMTP recipients through the directory.

mod imap_client;

use std::sync::Arc;

use facteur::account::{AccountConfig, Accounts, KeyringStore};
use facteur::crypto::KdfParams;
use facteur::imap::connection::{Peer, serve};
use facteur::imap::throttle::{Throttle, ThrottleConfig};
use facteur::imap::{Imap, Options};
use facteur::lmtp::reply::RcptRefusal;
use facteur::lmtp::session::Resolution;
use facteur::log::InstanceId;
use facteur::store::{MemoryStore, SharedStore};
use imap_client::Client;

/// An IMAP context and the LMTP backend over one directory and a store
/// of their own.
fn servers(dir: LdapDirectory) -> (Arc<Imap>, facteur::lmtp::Backend) {
    servers_on(dir, Arc::new(MemoryStore::new()))
}

/// The cluster secret of [`servers`].
const E2E_SECRET: &[u8] = b"ldap-e2e-cluster-secret";

/// An IMAP context and the LMTP backend over one directory and store.
fn servers_on(dir: LdapDirectory, store: SharedStore) -> (Arc<Imap>, facteur::lmtp::Backend) {
    let secret = E2E_SECRET.to_vec();
    let keyrings = KeyringStore::new(store.clone(), &secret);
    let records = facteur::crypto::RecordAuth::from_cluster_secret(&secret);
    let directory: Arc<dyn Directory> = Arc::new(dir);
    let ids = secret.clone();
    let user_id: facteur::imap::UserIdFn =
        Arc::new(move |login| facteur::crypto::user_id(&ids, login));
    let imap = Arc::new(Imap {
        directory: directory.clone(),
        keyrings: keyrings.clone(),
        accounts: Accounts::new(
            store.clone(),
            AccountConfig::new(InstanceId::new("ldap").unwrap(), records.clone()),
            Duration::from_secs(5),
        ),
        user_id: user_id.clone(),
        kdf: KdfParams::TEST,
        recovery_key: true,
        options: Options::default(),
        throttle: Arc::new(Throttle::new(ThrottleConfig::default())),
        tls: None,
    });
    let backend = facteur::lmtp::Backend {
        store,
        directory,
        keyrings,
        records,
        user_id,
        quota_full_temporary: false,
    };
    (imap, backend)
}

async fn imap_client(imap: &Arc<Imap>) -> Client {
    let (client, server) = tokio::io::duplex(1 << 16);
    let peer = Peer {
        remote: "127.0.0.1:40001".parse().unwrap(),
        local: "127.0.0.1:143".parse().unwrap(),
        tls: false,
    };
    tokio::spawn(serve(server, peer, imap.clone(), std::future::pending()));
    Client::start(client).await.0
}

fn refusal(r: Resolution<facteur::lmtp::User>) -> Option<RcptRefusal> {
    match r {
        Resolution::Accepted(_) => None,
        Resolution::Refused(why) => Some(why),
    }
}

/// Issue 6's flow: an admin adds a person with ldapadd; their first IMAP
/// login creates their keyring (and delivers the recovery key); LMTP holds
/// their mail with 450 until then; a password changed in LDAP gets the
/// documented answer; a person removed from the mail group can no longer
/// log in or receive mail.
#[tokio::test]
async fn an_ldap_user_logs_in_over_imap_and_receives_mail() {
    let Some(env) = env() else { return };
    let login = fresh_login();
    add_user(&env, &login, "first-password");
    let (imap, lmtp) = servers(directory(
        &env,
        &[&env.url],
        "cache_ttl = 0\nnegative_cache_ttl = 0",
    ));
    let address = format!("{login}@example.org");
    assert!(matches!(
        refusal(lmtp.resolve(&address, 0).await),
        Some(RcptRefusal::NotActivated)
    ));

    let mut c = imap_client(&imap).await;
    assert!(c.run(&format!("LOGIN {login} first-password")).await.ok());
    let inbox = c.run("SELECT INBOX").await;
    assert!(inbox.has("* 1 EXISTS"), "recovery key message: {inbox:?}");
    assert!(c.run("FETCH 1 BODY.PEEK[TEXT]").await.has("FCTR-"));
    let Resolution::Accepted(recipient) = lmtp.resolve(&address, 0).await else {
        panic!("now deliverable");
    };
    // Mail delivered through LMTP reaches the IMAP session (IDLE).
    let tag = c.tag();
    c.send(format!("{tag} IDLE\r\n").as_bytes()).await;
    assert!(c.line().await.starts_with("+ "));
    facteur::mailbox::incoming::deliver(
        lmtp.store.as_ref(),
        &recipient.user.id,
        &recipient.user.public_key,
        &lmtp.records,
        b"From: bob@example.org\r\nSubject: welcome\r\n\r\nhello\r\n",
        facteur::mailbox::incoming::DeliveryEnvelope {
            mail_from: "bob@example.org".into(),
            rcpt_to: vec![address.clone()],
            received_at: 1_790_000_000,
            folder: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(c.line().await, "* 2 EXISTS");
    c.send(b"DONE\r\n").await;
    assert!(c.until_tagged(&tag).await.ok());
    assert!(
        c.run("FETCH 2 BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
            .await
            .has("Subject: welcome")
    );
    assert!(c.run("LOGOUT").await.ok());

    // The password changes in LDAP only: the bind works, the keyring does
    // not open; the answer names the fix.
    ldap_admin(
        &env,
        "ldapmodify",
        &format!(
            "dn: uid={login},ou=people,{}\nchangetype: modify\nreplace: userPassword\n\
             userPassword: second-password\n",
            env.base_dn
        ),
    );
    let mut c = imap_client(&imap).await;
    let r = c.run(&format!("LOGIN {login} second-password")).await;
    assert!(
        r.no() && r.has("[AUTHENTICATIONFAILED]") && r.has("facteur user rekey"),
        "{r:?}"
    );
    let r = c.run(&format!("LOGIN {login} first-password")).await;
    assert!(r.no(), "the old password no longer binds: {r:?}");

    remove_from_mail_group(&env, &login);
    let r = c.run(&format!("LOGIN {login} second-password")).await;
    assert!(r.has("[AUTHENTICATIONFAILED]") && !r.has("rekey"), "{r:?}");
    assert!(matches!(
        refusal(lmtp.resolve(&address, 0).await),
        Some(RcptRefusal::Unknown)
    ));
}

#[tokio::test]
async fn imap_login_during_an_ldap_outage_is_unavailable_then_recovers() {
    let Some(_) = env() else { return };
    let (slapd, env) = OwnSlapd::start();
    let (imap, lmtp) = servers(directory(
        &env,
        &[&env.url],
        "cache_ttl = 0\nnegative_cache_ttl = 0\ntimeout = 1",
    ));
    let mut c = imap_client(&imap).await;
    assert!(c.run("LOGIN alice alice-password-1").await.ok());
    let mut d = imap_client(&imap).await;
    slapd.run("stop");
    let r = d.run("LOGIN alice alice-password-1").await;
    assert!(r.no() && r.has("[UNAVAILABLE]"), "{r:?}");
    // The text names what is down: the directory, not the mail store.
    assert!(r.has("user directory") && !r.has("mail store"), "{r:?}");
    // LMTP: 451 4.4.3, so Postfix keeps the mail queued.
    let refused = refusal(lmtp.resolve("bob@example.org", 0).await).expect("refused");
    assert!(matches!(refused, RcptRefusal::DirectoryUnavailable));
    assert_eq!(
        facteur::lmtp::reply::rcpt_refused(&refused).to_wire(),
        "451 4.4.3 directory server unavailable, try again later\r\n"
    );
    assert!(
        c.run("SELECT INBOX").await.ok(),
        "open sessions keep working"
    );
    slapd.run("start");
    assert!(d.run("LOGIN alice alice-password-1").await.ok());
}

/// The `facteur` command with a configuration file.
fn facteur_cli(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_facteur"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Delivers one message to `address` the way LMTP does.
async fn deliver(lmtp: &facteur::lmtp::Backend, address: &str, subject: &str) {
    let Resolution::Accepted(recipient) = lmtp.resolve(address, 0).await else {
        panic!("{address} is deliverable");
    };
    facteur::mailbox::incoming::deliver(
        lmtp.store.as_ref(),
        &recipient.user.id,
        &recipient.user.public_key,
        &lmtp.records,
        format!("From: bob@example.org\r\nSubject: {subject}\r\n\r\nhello\r\n").as_bytes(),
        facteur::mailbox::incoming::DeliveryEnvelope {
            mail_from: "bob@example.org".into(),
            rcpt_to: vec![address.to_owned()],
            received_at: 1_790_000_000,
            folder: None,
        },
    )
    .await
    .unwrap();
}

/// With INBOX holding one message (the recovery key's), delivers one more
/// and waits until the session sees it (the fs store has no change
/// notification: the account's poller finds it).
async fn receive(c: &mut Client, lmtp: &facteur::lmtp::Backend, address: &str, subject: &str) {
    assert!(c.run("SELECT INBOX").await.has("* 1 EXISTS"));
    deliver(lmtp, address, subject).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.run("NOOP").await.has("* 2 EXISTS") {
        assert!(Instant::now() < deadline, "{subject} never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 14 item 6, de-provisioning: a person leaves (their entry is
/// removed from LDAP), `user list` still shows their data (as an unknown
/// id), `user delete` erases every object of theirs, and the login given
/// to someone new later opens a fresh, empty mailbox instead of meeting
/// the old keyring.
#[tokio::test]
async fn user_delete_erases_a_departed_ldap_users_mail_and_the_login_can_be_reused() {
    let Some(env) = env() else { return };
    let login = fresh_login();
    let address = format!("{login}@example.org");
    add_user(&env, &login, "first-password");
    let work = tempfile::tempdir().unwrap();
    let store_dir = work.path().join("store");
    std::fs::create_dir(&store_dir).unwrap();
    let config = work.path().join("facteur.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            cluster_secret = {secret:?}
            [store]
            backend = "fs"
            path = {store:?}
            [directory]
            backend = "ldap"
            [directory.ldap]
            urls = [{url:?}]
            base_dn = {base:?}
            bind_dn = {bind_dn:?}
            bind_password = {bind_password:?}
            group_filter = "(&(objectClass=groupOfNames)(cn=mail)(member=%d))"
            "#,
            secret = std::str::from_utf8(E2E_SECRET).unwrap(),
            store = store_dir.display().to_string(),
            url = env.url,
            base = env.base_dn,
            bind_dn = env.bind_dn,
            bind_password = env.bind_password,
        ),
    )
    .unwrap();
    let store: SharedStore = Arc::new(facteur::store::FsStore::open(&store_dir).unwrap());
    let uncached = "cache_ttl = 0\nnegative_cache_ttl = 0";
    let (imap, lmtp) = servers_on(directory(&env, &[&env.url], uncached), store.clone());

    let mut c = imap_client(&imap).await;
    assert!(c.run(&format!("LOGIN {login} first-password")).await.ok());
    receive(&mut c, &lmtp, &address, "before leaving").await;
    assert!(c.run("LOGOUT").await.ok());

    let id = facteur::crypto::user_id(E2E_SECRET, &login);
    let prefix = facteur::store::layout::user_prefix(&id);
    let objects = || async {
        facteur::store::list_all(store.as_ref(), &prefix, None)
            .await
            .unwrap()
            .len()
    };
    assert!(objects().await > 2, "keyring, delivery key, mail");

    let out = facteur_cli(&config, &["user", "list"]);
    let listed = text(&out);
    assert!(out.status.success(), "{listed}");
    let line = listed
        .lines()
        .find(|l| l.starts_with(&format!("{login}\t")))
        .unwrap_or_else(|| panic!("{login} listed by login: {listed}"));
    assert!(
        line.contains(&address) && line.contains("keyring: ok, recovery key"),
        "{line}"
    );
    assert!(!listed.contains(id.as_str()), "{listed}");

    // The person leaves: out of the mail group, entry deleted.
    remove_from_mail_group(&env, &login);
    ldap_admin(
        &env,
        "ldapdelete",
        &format!("uid={login},ou=people,{}\n", env.base_dn),
    );
    let listed = text(&facteur_cli(&config, &["user", "list"]));
    assert!(
        listed.contains(&format!("unknown (id {id})\tnot in LDAP\tkeyring: ok")),
        "{listed}"
    );
    assert!(!listed.contains(&format!("{login}\t")), "{listed}");

    // Asks for confirmation first; a misspelt login erases nothing.
    let out = facteur_cli(&config, &["user", "delete", &login]);
    assert!(!out.status.success() && text(&out).contains("--yes"));
    let out = facteur_cli(&config, &["user", "delete", &format!("{login}x"), "--yes"]);
    assert!(
        !out.status.success() && text(&out).contains("nothing in the store"),
        "{}",
        text(&out)
    );
    assert!(objects().await > 2);
    let out = facteur_cli(&config, &["user", "delete", &login, "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("objects of"), "{}", text(&out));
    assert_eq!(objects().await, 0, "every object under {prefix} erased");
    assert!(!text(&facteur_cli(&config, &["user", "list"])).contains(id.as_str()));

    // The login is given to someone new: a fresh mailbox, no lockout.
    add_user(&env, &login, "new-person-password");
    let (imap, lmtp) = servers_on(directory(&env, &[&env.url], uncached), store.clone());
    let mut c = imap_client(&imap).await;
    let r = c.run(&format!("LOGIN {login} new-person-password")).await;
    assert!(r.ok(), "{r:?}");
    // Only the new recovery key message, then new mail.
    receive(&mut c, &lmtp, &address, "welcome").await;
    // Addressed to the user's primary address, not the bare login.
    let to = c.run("FETCH 1 BODY.PEEK[HEADER.FIELDS (TO)]").await;
    assert!(to.has(&format!("To: {address}")), "{to:?}");
}

// ---------------------------------------------------------------------
// The schema, in both forms doc/ldap.md offers.

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/ldap");

/// The definitions in a schema file, white space collapsed, each with the
/// index of its keyword in `keywords` (attribute type, object class). In
/// LDIF (`ldif`), a line starting with one space continues the previous
/// one without it (RFC 2849); in slapd.conf form, any line starting with
/// white space continues the previous one.
fn definitions(text: &str, keywords: [&str; 2], ldif: bool) -> Vec<(usize, String)> {
    let mut found: Vec<(usize, String)> = Vec::new();
    let mut open = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if line.starts_with([' ', '\t']) {
            if open && let Some((_, body)) = found.last_mut() {
                body.push_str(if ldif { &line[1..] } else { line });
            }
            continue;
        }
        open = false;
        if let Some(k) = keywords.iter().position(|k| line.starts_with(k)) {
            found.push((k, line[keywords[k].len()..].to_owned()));
            open = true;
        }
    }
    for (_, body) in &mut found {
        *body = body.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    found
}

#[test]
fn the_cn_config_schema_says_what_mail_schema_says() {
    let read = |name: &str| std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap();
    let schema = definitions(
        &read("mail.schema"),
        ["attributetype", "objectclass"],
        false,
    );
    let ldif = definitions(
        &read("mail.ldif"),
        ["olcAttributeTypes:", "olcObjectClasses:"],
        true,
    );
    assert_eq!(schema.len(), 4, "{schema:?}");
    assert_eq!(ldif, schema);
    assert!(read("mail.ldif").contains("dn: cn=facteur-mail,cn=schema,cn=config\n"));
}

/// mail.ldif loads into a cn=config directory next to Debian's core,
/// cosine and inetorgperson schemas, as `ldapadd -Y EXTERNAL` would add
/// it, and slapd accepts the result.
#[test]
fn the_cn_config_schema_loads_into_slapd() {
    // Needs slapd installed, which the shared server proves.
    let Some(_) = env() else { return };
    let work = tempfile::tempdir().unwrap();
    let config_dir = work.path().join("slapd.d");
    std::fs::create_dir(&config_dir).unwrap();
    let ldif = work.path().join("config.ldif");
    let schema = |name: &str| format!("include: file:///etc/ldap/schema/{name}.ldif\n\n");
    std::fs::write(
        &ldif,
        format!(
            "dn: cn=config\nobjectClass: olcGlobal\ncn: config\n\n\
             dn: cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: schema\n\n\
             {}{}{}include: file://{FIXTURES}/mail.ldif\n\n\
             dn: olcDatabase={{0}}config,cn=config\nobjectClass: olcDatabaseConfig\n\
             olcDatabase: {{0}}config\n",
            schema("core"),
            schema("cosine"),
            schema("inetorgperson"),
        ),
    )
    .unwrap();
    let run = |tool: &str, args: &[&std::ffi::OsStr]| {
        let out = Command::new(tool).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        "/usr/sbin/slapadd",
        &[
            "-n0".as_ref(),
            "-F".as_ref(),
            config_dir.as_os_str(),
            "-l".as_ref(),
            ldif.as_os_str(),
        ],
    );
    run(
        "/usr/sbin/slaptest",
        &["-F".as_ref(), config_dir.as_os_str()],
    );
    let loaded =
        std::fs::read_to_string(config_dir.join("cn=config/cn=schema/cn={3}facteur-mail.ldif"))
            .unwrap();
    // slapd folds long lines (RFC 2849 §2).
    assert!(
        loaded
            .replace("\n ", "")
            .contains("NAME 'facteurMailAccount'"),
        "{loaded}"
    );
}
