//! LOGIN and AUTHENTICATE (RFC 9051 §6.2.2–§6.2.3; SASL PLAIN RFC 4616,
//! LOGIN draft-murchison-sasl-login), and what a login does to the
//! user's keys (doc/imap.md, "Logins"; doc/ldap.md, "First login").
//!
//! A login runs at most one Argon2, through the keyrings' bounded
//! [`KdfPool`](crate::crypto::KdfPool) (a full pool answers `NO
//! [UNAVAILABLE]` at once):
//! 1. the attempt is counted by the [`Throttle`](super::throttle::Throttle)
//!    before anything is checked, so a burst gets at most the free checks;
//! 2. the directory: with the users file, only "does this login exist"
//!    (its password hash and the keyring's password slot are set together,
//!    so opening the keyring proves the password); with LDAP, a bind with
//!    the password (the directory is the authority, and costs us no
//!    Argon2);
//! 3. the keyring is read; if the user's account is unlocked on this
//!    instance with a verifier of this password and this same keyring
//!    ([`Accounts::reuse`](crate::account::Accounts::reuse)), that is the
//!    login, with no Argon2; otherwise the password unlocks the keyring
//!    (one Argon2), and a slot written with weaker parameters than the
//!    configuration's is re-wrapped in the background.
//!
//! An unknown login costs what a known one does (a keyring read and one
//! Argon2 with the configured parameters), so timing does not tell
//! whether a login exists; errors never tell either.
//!
//! A user the directory knows who has no keyring yet (provisioned in LDAP,
//! first login) gets one created with that password, and a recovery key
//! delivered once as a message in INBOX. An LDAP password must then be at
//! least [`Password::MIN_CHARS`] long: it is all that protects the keyring
//! (`facteur user add` and `passwd` enforce it for the users file).
//! (A users-file user without a keyring, written by hand, costs two Argon2
//! once: the hash, then the new keyring.)

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use imap_codec::imap_types::auth::AuthMechanism;

use super::Imap;
use super::response::{Failure, code};
use super::state::{Authed, Enabled, Hold};
use crate::account::{AccountError, StoredKeyring};
use crate::crypto::{CryptoError, Password, RecoveryKey, UserKeys};
use crate::directory::{DirectoryError, UserRecord, normalise_login};
use crate::metrics;
use crate::store::layout::UserId;

/// The text of a failed login (RFC 5530 AUTHENTICATIONFAILED).
const BAD_CREDENTIALS: &str = "Wrong login or password";

/// The documented fix when the directory's password does not open the
/// keyring (the password changed in LDAP; doc/ldap.md), naming the login
/// when it is plain enough to quote in a response text.
fn keyring_mismatch(login: &str) -> String {
    let plain = !login.is_empty()
        && login.len() <= 64
        && login
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@._-+".contains(&b));
    let login = if plain { login } else { "<login>" };
    format!(
        "Your password was accepted but does not open your mailbox key: \
         it was probably changed in the directory. Ask your administrator to run \
         `facteur user rekey {login}` (with your previous password or your recovery key)"
    )
}

/// An AUTHENTICATE exchange in progress.
#[derive(Debug)]
pub enum Sasl {
    /// PLAIN: one message `authzid NUL authcid NUL password`.
    Plain,
    /// LOGIN: the user name, then the password.
    Login { user: Option<String> },
}

/// What the client gets next.
#[derive(Debug)]
pub enum SaslStep {
    Challenge(Vec<u8>),
    /// The login and the password.
    Done(String, Password),
}

impl Sasl {
    pub fn start(mechanism: &AuthMechanism<'_>) -> Result<Sasl, Failure> {
        match mechanism {
            AuthMechanism::Plain => Ok(Sasl::Plain),
            AuthMechanism::Login => Ok(Sasl::Login { user: None }),
            other => Err(Failure::no(
                Some(code("CANNOT")),
                format!("Mechanism {other} is not supported; use PLAIN or LOGIN"),
            )),
        }
    }

    /// Feeds one client message (`None`: no initial response yet).
    pub fn step(&mut self, data: Option<&[u8]>) -> Result<SaslStep, Failure> {
        match self {
            Sasl::Plain => {
                let Some(data) = data else {
                    return Ok(SaslStep::Challenge(Vec::new()));
                };
                // RFC 4616 §2: [authzid] NUL authcid NUL passwd
                let mut parts = data.split(|b| *b == 0);
                let (Some(authz), Some(user), Some(pass), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(Failure::bad("Malformed PLAIN message"));
                };
                if !authz.is_empty() && authz != user {
                    return Err(Failure::no(
                        Some(code("AUTHORIZATIONFAILED")),
                        "Acting as another user is not supported",
                    ));
                }
                Ok(SaslStep::Done(utf8(user)?, secret_utf8(pass)?))
            }
            Sasl::Login { user } => match (user.as_ref(), data) {
                (None, None) => Ok(SaslStep::Challenge(b"Username:".to_vec())),
                (None, Some(name)) => {
                    *user = Some(utf8(name)?);
                    Ok(SaslStep::Challenge(b"Password:".to_vec()))
                }
                (Some(_), None) => Ok(SaslStep::Challenge(b"Password:".to_vec())),
                (Some(name), Some(pass)) => Ok(SaslStep::Done(name.clone(), secret_utf8(pass)?)),
            },
        }
    }
}

fn utf8(bytes: &[u8]) -> Result<String, Failure> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Failure::bad("Credentials must be UTF-8"))
}

/// A password from client bytes: the one copy made is the zeroized one.
fn secret_utf8(bytes: &[u8]) -> Result<Password, Failure> {
    std::str::from_utf8(bytes)
        .map(Password::new)
        .map_err(|_| Failure::bad("Credentials must be UTF-8"))
}

fn bad_credentials() -> Failure {
    Failure::no(Some(code("AUTHENTICATIONFAILED")), BAD_CREDENTIALS)
}

/// Why a login did not succeed, and whether its password was checked.
enum Refusal {
    /// The password was checked and is wrong (or the login unknown): the
    /// attempt stays counted.
    Wrong(Failure),
    /// Nothing was learnt about the password (a fault, a full pool), or
    /// it was right but cannot be used: the attempt is given back.
    Unchecked(Failure),
}

impl From<AccountError> for Refusal {
    fn from(e: AccountError) -> Refusal {
        Refusal::Unchecked(e.into())
    }
}

fn directory_refusal(e: DirectoryError) -> Refusal {
    match e {
        DirectoryError::BadInput(_) | DirectoryError::NoSuchUser(_) => {
            Refusal::Wrong(bad_credentials())
        }
        e @ DirectoryError::Unavailable(_) => {
            Refusal::Unchecked(Failure::DirectoryUnavailable(e.to_string()))
        }
        other => Refusal::Unchecked(Failure::Unavailable(other.to_string())),
    }
}

/// A keyring that cannot be used whatever the password: damaged, or
/// asking for more than this server runs. Logged for the administrator.
fn unusable_keyring(login: &str, e: CryptoError) -> Refusal {
    tracing::error!(%login, error = %e, "keyring cannot be used");
    Refusal::Unchecked(Failure::no(
        Some(code("CORRUPTION")),
        "Your mailbox key is damaged or invalid; ask your administrator",
    ))
}

/// Longest part of a login written to the log: enough for any real one,
/// while a client's few KiB of junk stay out of it.
const LOGGED_LOGIN_CHARS: usize = 128;

/// A login as the client sent it, for the log: `Debug` quotes it and
/// escapes quotes, control characters and line ends (one line per
/// attempt whatever the client sends), cut at [`LOGGED_LOGIN_CHARS`].
struct LoggedLogin<'a>(&'a str);

impl std::fmt::Debug for LoggedLogin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(LOGGED_LOGIN_CHARS) {
            Some((cut, _)) => write!(f, "{:?}...", &self.0[..cut]),
            None => write!(f, "{:?}", self.0),
        }
    }
}

/// A successful check.
struct Success {
    record: UserRecord,
    account: Hold,
    /// A new user's recovery key, to deliver once.
    recovery: Option<RecoveryKey>,
}

/// Checks credentials and unlocks the user's account; see the module doc.
///
/// Every attempt leaves one line in the log at the default level, for the
/// administrator and fail2ban (doc/logging.md): `imap login ok`, `imap
/// login failed` (a wrong password or an unknown login), `imap login
/// throttled`, or `imap login not checked` (a fault: the password was not
/// judged). The client address comes first, then the login as the client
/// sent it, quoted and escaped so that no login can forge a line or
/// another address; never the password.
pub async fn login(
    imap: &Imap,
    ip: IpAddr,
    login: &str,
    password: Password,
) -> Result<Authed, Failure> {
    let logged = LoggedLogin(login);
    let attempt = match imap.throttle.begin(ip, login, Instant::now()) {
        Ok(attempt) => attempt,
        Err(wait) => {
            let wait = wait.as_secs().max(1);
            tracing::warn!(%ip, login = ?logged, wait_s = wait, "imap login throttled");
            metrics::login(metrics::Login::Throttled);
            return Err(Failure::no(
                Some(code("UNAVAILABLE")),
                format!("Too many failed logins; try again in {wait} seconds"),
            ));
        }
    };
    let success = match check(imap, login, &password).await {
        Ok(success) => {
            attempt.succeeded(Instant::now());
            tracing::info!(%ip, login = ?logged, "imap login ok");
            metrics::login(metrics::Login::Ok);
            success
        }
        Err(Refusal::Wrong(failure)) => {
            tracing::info!(%ip, login = ?logged, "imap login failed");
            metrics::login(metrics::Login::Failed);
            return Err(failure);
        }
        Err(Refusal::Unchecked(failure)) => {
            attempt.refund();
            let (why, outcome) = match &failure {
                Failure::Unavailable(_) => ("unavailable", metrics::Login::Unavailable),
                Failure::DirectoryUnavailable(_) => {
                    ("directory unavailable", metrics::Login::Unavailable)
                }
                Failure::Internal(_) => ("server error", metrics::Login::Error),
                Failure::No(..) | Failure::Bad(_) | Failure::Io(_) => {
                    ("refused", metrics::Login::Error)
                }
            };
            tracing::warn!(%ip, login = ?logged, why, "imap login not checked");
            metrics::login(outcome);
            return Err(failure);
        }
    };
    let authed = Authed {
        account: success.account,
        login: success.record.login.clone(),
        enabled: Enabled::default(),
        append_limit: imap.options.max_message,
        damage_told: false,
        recent: imap.accounts.recent(),
    };
    if let Some(recovery) = success.recovery {
        // A failure here must not lose the key silently: the login fails,
        // the keyring stays, `facteur user rekey --new-recovery` makes a
        // new recovery key.
        deliver_recovery_key(&authed, &success.record, &recovery).await?;
    }
    Ok(authed)
}

/// The password check and unlock of [`login`].
async fn check(imap: &Imap, login: &str, password: &Password) -> Result<Success, Refusal> {
    let Ok(login) = normalise_login(login) else {
        return Err(Refusal::Wrong(bad_credentials()));
    };
    let keyring_proves = imap.directory.keyring_proves_password();
    let record = if keyring_proves {
        imap.directory
            .find_login(&login)
            .await
            .map_err(directory_refusal)?
    } else {
        match imap.directory.authenticate(&login, password).await {
            Ok(Some(record)) => Some(record),
            Ok(None) => return Err(Refusal::Wrong(bad_credentials())),
            Err(e) => return Err(directory_refusal(e)),
        }
    };
    let user = (imap.user_id)(record.as_ref().map_or(login.as_str(), |r| r.login.as_str()));
    let stored = match imap.keyrings.fetch(&user).await {
        Ok(stored) => stored,
        Err(AccountError::Crypto(e)) => return Err(unusable_keyring(&login, e)),
        Err(e) => return Err(e.into()),
    };
    let Some(record) = record else {
        // Unknown (or removed) login: spend what a known one spends.
        imap.keyrings.dummy_unlock(password, &imap.kdf).await?;
        return Err(Refusal::Wrong(bad_credentials()));
    };
    let Some(stored) = stored else {
        return first_login(imap, record, &user, password, keyring_proves).await;
    };
    if let Some(account) = imap.accounts.reuse(&user, password, &stored.digest) {
        return Ok(Success {
            record,
            account: Hold::new(imap.accounts.clone(), account),
            recovery: None,
        });
    }
    let keys = match imap.keyrings.unlock_stored(&user, &stored, password).await {
        Ok(keys) => keys,
        Err(AccountError::Crypto(CryptoError::WrongPassword)) => {
            if keyring_proves {
                return Err(Refusal::Wrong(bad_credentials()));
            }
            // The directory took the password, the keyring did not.
            tracing::warn!(login = %record.login, "directory password does not open the keyring");
            return Err(Refusal::Unchecked(Failure::no(
                Some(code("AUTHENTICATIONFAILED")),
                keyring_mismatch(&record.login),
            )));
        }
        Err(AccountError::Crypto(e)) => return Err(unusable_keyring(&record.login, e)),
        Err(e) => return Err(e.into()),
    };
    if imap.kdf.stronger_than(stored.keyring.password_params()) {
        spawn_rewrap(imap, &user, &stored, &keys, password);
    }
    let account = imap
        .accounts
        .unlock_with_password(&user, keys, password, &stored.digest);
    Ok(Success {
        record,
        account: Hold::new(imap.accounts.clone(), account),
        recovery: None,
    })
}

/// First login of a user the directory knows but who has no keyring yet
/// (doc/ldap.md, "First login"): one is created with this password.
async fn first_login(
    imap: &Imap,
    record: UserRecord,
    user: &UserId,
    password: &Password,
    keyring_proves: bool,
) -> Result<Success, Refusal> {
    if keyring_proves {
        // Nothing to open yet: the directory's own hash is the check.
        match imap.directory.authenticate(&record.login, password).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(Refusal::Wrong(bad_credentials())),
            Err(e) => return Err(directory_refusal(e)),
        }
    }
    // The directory's password policy is not ours (LDAP): the keyring's is
    // checked here. A users-file password was checked when it was set.
    if !keyring_proves && password.is_too_short() {
        tracing::warn!(login = %record.login, "first login refused: password too short for a keyring");
        return Err(Refusal::Unchecked(Failure::no(
            Some(code("EXPIRED")),
            format!(
                "Your password is shorter than {} characters, too short to protect your \
                 mailbox key: change it in the directory, then log in again",
                Password::MIN_CHARS
            ),
        )));
    }
    let (keys, recovery) = match imap
        .keyrings
        .create(user, password, &imap.kdf, imap.recovery_key)
        .await
    {
        Ok(created) => {
            tracing::info!(login = %record.login, "keyring created at first login");
            created
        }
        // Another instance created it at the same moment: unlock it.
        Err(AccountError::KeyringExists) => {
            let keys = match imap.keyrings.unlock(user, password).await {
                Ok(keys) => keys,
                Err(AccountError::Crypto(CryptoError::WrongPassword)) => {
                    return Err(Refusal::Wrong(bad_credentials()));
                }
                Err(AccountError::Crypto(e)) => return Err(unusable_keyring(&record.login, e)),
                Err(e) => return Err(e.into()),
            };
            (keys, None)
        }
        Err(e) => return Err(e.into()),
    };
    // No verifier yet: the next login reads the new keyring's digest.
    let account = imap.accounts.unlock(user, keys);
    Ok(Success {
        record,
        account: Hold::new(imap.accounts.clone(), account),
        recovery,
    })
}

/// Re-wraps the password slot with the configuration's stronger
/// parameters, after the login has answered (best effort: see
/// [`KeyringStore::rewrap`](crate::account::KeyringStore::rewrap)).
fn spawn_rewrap(
    imap: &Imap,
    user: &UserId,
    stored: &StoredKeyring,
    keys: &UserKeys,
    password: &Password,
) {
    let (keyrings, accounts, params) = (
        imap.keyrings.clone(),
        imap.accounts.clone(),
        imap.kdf.clone(),
    );
    let (user, stored, keys) = (user.clone(), stored.clone(), keys.clone());
    let password = Password::new(password.as_str());
    tokio::spawn(async move {
        match keyrings
            .rewrap(&user, &stored, &keys, &password, &params)
            .await
        {
            Ok(Some(new)) => {
                tracing::info!(user = ?user, ?params, "password slot re-wrapped with stronger parameters");
                accounts.remember_password(&user, &password, &new.digest);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(user = ?user, error = %e, "re-wrapping the password slot failed")
            }
        }
    });
}

/// Puts the one message that carries a new user's recovery key in their
/// INBOX.
async fn deliver_recovery_key(
    authed: &Authed,
    record: &UserRecord,
    recovery: &RecoveryKey,
) -> Result<(), Failure> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let message = recovery_message(record, recovery, now);
    let (_, inbox) = authed.account.open_by_name("INBOX").await?;
    inbox.append(message.as_bytes(), Vec::new(), now).await?;
    Ok(())
}

/// The recovery key message, addressed to the user's primary address (the
/// login if the directory gives none: a users-file user may have no
/// address).
fn recovery_message(record: &UserRecord, recovery: &RecoveryKey, now: i64) -> String {
    let to = record.addresses.first().unwrap_or(&record.login);
    let date = chrono::DateTime::from_timestamp(now, 0)
        .unwrap_or_default()
        .to_rfc2822();
    format!(
        "From: Facteur <postmaster@localhost>\r\n\
         To: {to}\r\n\
         Subject: Your mailbox recovery key\r\n\
         Date: {date}\r\n\
         Message-ID: <recovery-{now}@facteur>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         Welcome. Your mailbox is encrypted with a key that only your password\r\n\
         opens. If you ever lose your password, this recovery key opens it:\r\n\
         \r\n\
         \x20   {recovery}\r\n\
         \r\n\
         Write it down and keep it somewhere safe, outside this mailbox (you\r\n\
         cannot read this message without your password), then delete this\r\n\
         message. Nobody else has a copy: the people hosting this server\r\n\
         cannot read your mail or recover it for you.\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recovery_message_goes_to_the_primary_address() {
        let key = RecoveryKey::random();
        let mut record = UserRecord {
            login: "dave".into(),
            addresses: vec!["dave.smith@example.org".into(), "dave@example.org".into()],
            quota_bytes: None,
            quota_messages: None,
        };
        let message = recovery_message(&record, &key, 1_790_000_000);
        let to: Vec<&str> = message.lines().filter(|l| l.starts_with("To:")).collect();
        assert_eq!(to, ["To: dave.smith@example.org"]);
        assert!(message.contains(&key.to_string()));
        // No address: the login, the only name there is.
        record.addresses.clear();
        let message = recovery_message(&record, &key, 1_790_000_000);
        assert!(message.contains("\r\nTo: dave\r\n"), "{message}");
    }

    #[test]
    fn plain_takes_one_message_and_refuses_proxying() {
        let mut s = Sasl::start(&AuthMechanism::Plain).unwrap();
        assert!(matches!(s.step(None).unwrap(), SaslStep::Challenge(c) if c.is_empty()));
        match s.step(Some(b"\0alice\0pw")).unwrap() {
            SaslStep::Done(u, p) => assert_eq!((u.as_str(), p.as_str()), ("alice", "pw")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.step(Some(b"\0alice\0\xff")),
            Err(Failure::Bad(_))
        ));
        assert!(matches!(
            s.step(Some(b"alice\0alice\0pw")),
            Ok(SaslStep::Done(..))
        ));
        assert!(matches!(
            s.step(Some(b"bob\0alice\0pw")),
            Err(Failure::No(..))
        ));
        assert!(matches!(s.step(Some(b"alice\0pw")), Err(Failure::Bad(_))));
    }

    /// A login in the log is one quoted token on one line, whatever the
    /// client sent, and bounded.
    #[test]
    fn logged_logins_are_quoted_escaped_and_cut() {
        let shown = format!("{:?}", LoggedLogin("alice@example.org"));
        assert_eq!(shown, "\"alice@example.org\"");
        let forged = "x\" ip=203.0.113.9\r\nINFO imap login failed ip=203.0.113.9 login=\"\\";
        let shown = format!("{:?}", LoggedLogin(forged));
        assert!(!shown.contains('\n') && !shown.contains('\r'), "{shown}");
        assert!(!shown.contains("=\""), "an unescaped quote: {shown}");
        assert!(
            shown.starts_with('"') && shown.ends_with("\\\\\""),
            "{shown}"
        );
        let long = "é".repeat(1000);
        let shown = format!("{:?}", LoggedLogin(&long));
        assert_eq!(
            shown.chars().filter(|c| *c == 'é').count(),
            LOGGED_LOGIN_CHARS
        );
        assert!(shown.ends_with("\"..."), "{shown}");
    }

    #[test]
    fn login_mechanism_asks_user_then_password() {
        let mut s = Sasl::start(&AuthMechanism::Login).unwrap();
        assert!(matches!(s.step(None).unwrap(), SaslStep::Challenge(c) if c == b"Username:"));
        assert!(
            matches!(s.step(Some(b"alice")).unwrap(), SaslStep::Challenge(c) if c == b"Password:")
        );
        match s.step(Some(b"pw")).unwrap() {
            SaslStep::Done(u, p) => assert_eq!((u.as_str(), p.as_str()), ("alice", "pw")),
            other => panic!("{other:?}"),
        }
    }
}
