//! LOGIN and AUTHENTICATE (RFC 9051 §6.2.2–§6.2.3; SASL PLAIN RFC 4616,
//! LOGIN draft-murchison-sasl-login), and what a login does to the
//! user's keys (DESIGN.md §5): the directory checks the password, then the
//! same password unlocks the keyring. A user the directory knows who has
//! no keyring yet (provisioned in LDAP, first login) gets one created with
//! that password, and a recovery key delivered once as a message in INBOX.
//!
//! Errors never tell whether a login exists.

use std::net::IpAddr;
use std::time::SystemTime;

use imap_codec::imap_types::auth::AuthMechanism;

use super::Imap;
use super::response::{Failure, code};
use super::session::Authed;
use crate::account::AccountError;
use crate::crypto::{Password, RecoveryKey};
use crate::directory::DirectoryError;

/// The text of a failed login (RFC 5530 AUTHENTICATIONFAILED).
const BAD_CREDENTIALS: &str = "Wrong login or password";

/// The documented fix when the directory's password does not open the
/// keyring (the password changed in LDAP; DESIGN.md §5).
const KEYRING_MISMATCH: &str = "Your password was accepted but does not open your mailbox key: \
     it was probably changed in the directory. Ask your administrator to run \
     `facteur user rekey <login>` (with your previous password or your recovery key)";

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
    Done(String, String),
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
                Ok(SaslStep::Done(utf8(user)?, utf8(pass)?))
            }
            Sasl::Login { user } => match (user.as_ref(), data) {
                (None, None) => Ok(SaslStep::Challenge(b"Username:".to_vec())),
                (None, Some(name)) => {
                    *user = Some(utf8(name)?);
                    Ok(SaslStep::Challenge(b"Password:".to_vec()))
                }
                (Some(_), None) => Ok(SaslStep::Challenge(b"Password:".to_vec())),
                (Some(name), Some(pass)) => Ok(SaslStep::Done(name.clone(), utf8(pass)?)),
            },
        }
    }
}

fn utf8(bytes: &[u8]) -> Result<String, Failure> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Failure::bad("Credentials must be UTF-8"))
}

fn directory_failure(e: DirectoryError) -> Failure {
    match e {
        DirectoryError::BadInput(_) | DirectoryError::NoSuchUser(_) => {
            Failure::no(Some(code("AUTHENTICATIONFAILED")), BAD_CREDENTIALS)
        }
        other => Failure::Unavailable(other.to_string()),
    }
}

/// Checks credentials and unlocks the user's account.
pub async fn login(
    imap: &Imap,
    ip: IpAddr,
    login: &str,
    password: String,
) -> Result<Authed, Failure> {
    let now = std::time::Instant::now();
    if let Err(wait) = imap.throttle.check(ip, login, now) {
        return Err(Failure::no(
            Some(code("UNAVAILABLE")),
            format!(
                "Too many failed logins; try again in {} seconds",
                wait.as_secs().max(1)
            ),
        ));
    }
    let password = Password::new(&password);
    let record = match imap.directory.authenticate(login, &password).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            imap.throttle.failed(ip, login, now);
            return Err(Failure::no(
                Some(code("AUTHENTICATIONFAILED")),
                BAD_CREDENTIALS,
            ));
        }
        Err(e) => {
            if matches!(
                e,
                DirectoryError::BadInput(_) | DirectoryError::NoSuchUser(_)
            ) {
                imap.throttle.failed(ip, login, now);
            }
            return Err(directory_failure(e));
        }
    };
    let user = (imap.user_id)(&record.login);
    let (keys, recovery) = match imap.keyrings.unlock(&user, &password).await {
        Ok(keys) => (keys, None),
        Err(AccountError::NoKeyring) => {
            // First login of a directory user (DESIGN.md §5).
            match imap
                .keyrings
                .create(&user, &password, &imap.kdf, imap.recovery_key)
                .await
            {
                Ok(created) => {
                    tracing::info!(login = %record.login, "keyring created at first login");
                    created
                }
                // Another instance created it at the same moment: unlock it.
                Err(AccountError::KeyringExists) => (
                    imap.keyrings
                        .unlock(&user, &password)
                        .await
                        .map_err(unlock_failure)?,
                    None,
                ),
                Err(e) => return Err(e.into()),
            }
        }
        Err(e) => {
            let failure = unlock_failure(e);
            if matches!(failure, Failure::No(..)) {
                tracing::warn!(login = %record.login, "directory password does not open the keyring");
            }
            return Err(failure);
        }
    };
    imap.throttle.succeeded(ip, login, now);
    let account = imap.accounts.unlock(&user, keys);
    let authed = Authed {
        account,
        login: record.login.clone(),
        utf8: false,
        rev2: false,
        append_limit: imap.options.max_message,
        condstore: false,
        qresync: false,
        damage_told: false,
    };
    if let Some(recovery) = recovery {
        // A failure here must not lose the key silently: the login fails,
        // the keyring stays, `facteur user rekey --new-recovery` makes a
        // new recovery key.
        deliver_recovery_key(&authed, &record.login, &recovery).await?;
    }
    Ok(authed)
}

fn unlock_failure(e: AccountError) -> Failure {
    match e {
        AccountError::Crypto(_) => {
            Failure::no(Some(code("AUTHENTICATIONFAILED")), KEYRING_MISMATCH)
        }
        other => other.into(),
    }
}

/// Puts the one message that carries a new user's recovery key in their
/// INBOX.
async fn deliver_recovery_key(
    authed: &Authed,
    login: &str,
    recovery: &RecoveryKey,
) -> Result<(), Failure> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let date = chrono::DateTime::from_timestamp(now, 0)
        .unwrap_or_default()
        .to_rfc2822();
    let message = format!(
        "From: Facteur <postmaster@localhost>\r\n\
         To: {login}\r\n\
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
    );
    let (_, inbox) = authed.account.open_by_name("INBOX").await?;
    inbox.append(message.as_bytes(), Vec::new(), now).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_takes_one_message_and_refuses_proxying() {
        let mut s = Sasl::start(&AuthMechanism::Plain).unwrap();
        assert!(matches!(s.step(None).unwrap(), SaslStep::Challenge(c) if c.is_empty()));
        match s.step(Some(b"\0alice\0pw")).unwrap() {
            SaslStep::Done(u, p) => assert_eq!((u.as_str(), p.as_str()), ("alice", "pw")),
            other => panic!("{other:?}"),
        }
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
