//! The static directory: a TOML users file, for small setups and the
//! embedded default. `facteur user add|passwd|delete` edit it; a running
//! server notices changes by the file's modification time and reloads it, so
//! no restart is needed.
//!
//! ```toml
//! [[user]]
//! login = "alice"
//! password = "$argon2id$v=19$m=65536,t=3,p=1$..."   # PHC string, never plain
//! addresses = ["alice@example.org"]                  # the first is primary
//! aliases = ["postmaster@example.org"]
//! quota = "2 GiB"                                    # optional
//! quota_messages = 100000                            # optional
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{Directory, DirectoryError, UserRecord, normalise_address, normalise_login};
use crate::crypto::{KdfParams, KdfPool, Password};
use crate::size::ByteSize;

/// One `[[user]]` table.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The login, stored normalised.
    pub login: String,
    /// Argon2id PHC string of the password.
    pub password: String,
    /// Addresses delivered to this user; the first is the primary one.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Further addresses delivered to this user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Storage quota; none means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<ByteSize>,
    /// Most messages kept, all mailboxes together; none means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_messages: Option<u64>,
}

impl UserEntry {
    fn record(&self) -> UserRecord {
        UserRecord {
            login: self.login.clone(),
            addresses: self
                .addresses
                .iter()
                .chain(&self.aliases)
                .cloned()
                .collect(),
            quota_bytes: self.quota.map(|q| q.0),
            quota_messages: self.quota_messages,
        }
    }
}

/// The whole users file.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    #[serde(default, rename = "user")]
    pub users: Vec<UserEntry>,
}

impl UsersFile {
    /// Reads and validates a users file. A missing file is an empty one, so
    /// that `facteur user add` can start from nothing.
    pub fn load(path: &Path) -> Result<UsersFile, DirectoryError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(UsersFile::default()),
            Err(e) => {
                return Err(DirectoryError::Unavailable(format!(
                    "cannot read users file {}: {e}",
                    path.display()
                )));
            }
        };
        let file: UsersFile = toml::from_str(&text).map_err(|e| {
            let e = crate::tomlfile::describe_error(&e, &text);
            DirectoryError::Invalid(format!("users file {}: {e}", path.display()))
        })?;
        file.validate()
            .map_err(|e| DirectoryError::Invalid(format!("users file {}: {e}", path.display())))?;
        Ok(file)
    }

    /// Checks what TOML cannot: normalised and unique logins and addresses,
    /// parseable password hashes.
    pub fn validate(&self) -> Result<(), String> {
        let mut logins = std::collections::HashSet::new();
        let mut addresses = std::collections::HashMap::new();
        for u in &self.users {
            let login = normalise_login(&u.login).map_err(|e| e.to_string())?;
            if login != u.login {
                return Err(format!("login {:?} must be written {login:?}", u.login));
            }
            if !logins.insert(login.clone()) {
                return Err(format!("login {login:?} appears twice"));
            }
            PasswordHash::new(&u.password)
                .map_err(|e| format!("user {login:?}: password is not a PHC hash ({e})"))?;
            for a in u.addresses.iter().chain(&u.aliases) {
                let norm = normalise_address(a).map_err(|e| format!("user {login:?}: {e}"))?;
                if let Some(other) = addresses.insert(norm.clone(), login.clone()) {
                    return Err(format!(
                        "address {norm:?} belongs to both {other:?} and {login:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Writes the file atomically (temporary file, fsync, rename), readable
    /// by its owner only: it holds password hashes.
    pub fn save(&self, path: &Path) -> Result<(), DirectoryError> {
        let io = |e: std::io::Error| {
            DirectoryError::Unavailable(format!("cannot write users file {}: {e}", path.display()))
        };
        let text = format!(
            "# Facteur users file; edit with `facteur user ...`.\n\n{}",
            toml::to_string_pretty(self).map_err(|e| DirectoryError::Invalid(e.to_string()))?
        );
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = dir.join(format!(".users-{}.tmp", rand::random::<u64>()));
        let result = (|| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io)
    }

    pub fn find(&self, login: &str) -> Option<&UserEntry> {
        let login = normalise_login(login).ok()?;
        self.users.iter().find(|u| u.login == login)
    }

    pub fn find_mut(&mut self, login: &str) -> Option<&mut UserEntry> {
        let login = normalise_login(login).ok()?;
        self.users.iter_mut().find(|u| u.login == login)
    }

    /// The user owning `address` (an address or an alias).
    pub fn find_address(&self, address: &str) -> Option<&UserEntry> {
        let address = normalise_address(address).ok()?;
        self.users.iter().find(|u| {
            u.addresses
                .iter()
                .chain(&u.aliases)
                .any(|a| normalise_address(a).ok().as_deref() == Some(&address))
        })
    }

    /// Adds a user; the entry's login and addresses are normalised here.
    pub fn add(&mut self, mut entry: UserEntry) -> Result<(), DirectoryError> {
        entry.login = normalise_login(&entry.login)?;
        if self.find(&entry.login).is_some() {
            return Err(DirectoryError::Conflict(format!(
                "user {:?} already exists",
                entry.login
            )));
        }
        for list in [&mut entry.addresses, &mut entry.aliases] {
            for a in list.iter_mut() {
                *a = normalise_address(a)?;
                if let Some(owner) = self.find_address(a) {
                    return Err(DirectoryError::Conflict(format!(
                        "address {a:?} already belongs to {:?}",
                        owner.login
                    )));
                }
            }
        }
        self.users.push(entry);
        self.validate().map_err(DirectoryError::Invalid)
    }

    /// Removes a user, returning its entry.
    pub fn remove(&mut self, login: &str) -> Result<UserEntry, DirectoryError> {
        let login = normalise_login(login)?;
        let i = self
            .users
            .iter()
            .position(|u| u.login == login)
            .ok_or_else(|| DirectoryError::NoSuchUser(login.clone()))?;
        Ok(self.users.remove(i))
    }
}

/// Hashes a password into a PHC string with Argon2id. CPU- and
/// memory-heavy by design: call it off the async runtime.
pub fn hash_password(password: &Password, params: &KdfParams) -> Result<String, DirectoryError> {
    let argon = argon2_with(params)?;
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon
        .hash_password(password.as_str().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| DirectoryError::BadInput(format!("cannot hash password: {e}")))
}

/// Checks a password against a PHC string, using the parameters written in
/// the string (so they can be raised later without breaking old hashes).
pub fn verify_password(password: &Password, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_str().as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

fn argon2_with(params: &KdfParams) -> Result<Argon2<'static>, DirectoryError> {
    let p = Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        None,
    )
    .map_err(|e| DirectoryError::BadInput(format!("invalid Argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, p))
}

/// The users file as a [`Directory`]. Re-reads the file when its
/// modification time or size changes.
#[derive(Debug)]
pub struct StaticDirectory {
    /// Where the users file lives.
    path: PathBuf,
    /// Parameters for the dummy hash that unknown logins are checked
    /// against, so that a login attempt takes as long whether the user
    /// exists or not.
    params: KdfParams,
    /// The last version read, with the file stamp it was read at.
    cache: Mutex<Option<(FileStamp, Arc<UsersFile>)>>,
    dummy_hash: OnceLock<String>,
    /// Where the password hashes are checked.
    kdf_pool: Arc<KdfPool>,
}

type FileStamp = (Option<SystemTime>, u64);

impl StaticDirectory {
    /// Opens the users file at `path`; fails if it exists but is invalid.
    pub fn open(path: impl Into<PathBuf>, params: KdfParams) -> Result<Self, DirectoryError> {
        let dir = StaticDirectory {
            path: path.into(),
            params,
            cache: Mutex::new(None),
            dummy_hash: OnceLock::new(),
            kdf_pool: KdfPool::with_default_size(),
        };
        dir.current()?;
        Ok(dir)
    }

    /// Checks password hashes in `pool` (shared with the keyrings).
    pub fn with_kdf_pool(mut self, pool: Arc<KdfPool>) -> Self {
        self.kdf_pool = pool;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The users file as it is now on disk.
    pub fn current(&self) -> Result<Arc<UsersFile>, DirectoryError> {
        let stamp: FileStamp = match std::fs::metadata(&self.path) {
            Ok(m) => (m.modified().ok(), m.len()),
            Err(_) => (None, 0),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached, file)) = cache.as_ref()
            && *cached == stamp
        {
            return Ok(file.clone());
        }
        let file = Arc::new(UsersFile::load(&self.path)?);
        *cache = Some((stamp, file.clone()));
        Ok(file)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, DirectoryError> {
        self.kdf_pool
            .run(f)
            .await
            .map_err(|e| DirectoryError::Unavailable(e.to_string()))
    }
}

#[async_trait]
impl Directory for StaticDirectory {
    /// `facteur user add` and `passwd` set the hash and the keyring's
    /// password slot together.
    fn keyring_proves_password(&self) -> bool {
        true
    }

    async fn authenticate(
        &self,
        login: &str,
        password: &Password,
    ) -> Result<Option<UserRecord>, DirectoryError> {
        let file = self.current()?;
        let entry = normalise_login(login)
            .ok()
            .and_then(|l| file.find(&l).cloned());
        let phc = match &entry {
            Some(e) => e.password.clone(),
            None => match self.dummy_hash.get() {
                Some(h) => h.clone(),
                None => {
                    let params = self.params.clone();
                    let dummy = Password::new("facteur-dummy-password");
                    let h = self
                        .blocking(move || hash_password(&dummy, &params))
                        .await??;
                    self.dummy_hash.get_or_init(|| h).clone()
                }
            },
        };
        let password = Password::new(password.as_str());
        let ok = self
            .blocking(move || verify_password(&password, &phc))
            .await?;
        Ok(entry.filter(|_| ok).map(|e| e.record()))
    }

    async fn find_login(&self, login: &str) -> Result<Option<UserRecord>, DirectoryError> {
        Ok(self.current()?.find(login).map(UserEntry::record))
    }

    async fn find_address(&self, address: &str) -> Result<Option<UserRecord>, DirectoryError> {
        Ok(self.current()?.find_address(address).map(UserEntry::record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(login: &str, addresses: &[&str], password: &str) -> UserEntry {
        UserEntry {
            login: login.into(),
            password: hash_password(&Password::new(password), &KdfParams::TEST).unwrap(),
            addresses: addresses.iter().map(|s| s.to_string()).collect(),
            aliases: vec![],
            quota: None,
            quota_messages: None,
        }
    }

    #[test]
    fn add_normalises_and_refuses_duplicates() {
        let mut f = UsersFile::default();
        f.add(entry(" Alice ", &["Alice@Example.org"], "pw-alice-1"))
            .unwrap();
        assert_eq!(f.users[0].login, "alice");
        assert_eq!(f.users[0].addresses, ["alice@example.org"]);
        assert!(matches!(
            f.add(entry("ALICE", &[], "x")),
            Err(DirectoryError::Conflict(_))
        ));
        assert!(matches!(
            f.add(entry("bob", &["alice@EXAMPLE.org"], "x")),
            Err(DirectoryError::Conflict(_))
        ));
        assert!(f.add(entry("carol", &["not-an-address"], "x")).is_err());
    }

    #[test]
    fn save_and_load_round_trip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let mut f = UsersFile::default();
        let mut alice = entry("alice", &["alice@example.org"], "pw");
        alice.aliases = vec!["postmaster@example.org".into()];
        alice.quota = Some(ByteSize(2 << 30));
        alice.quota_messages = Some(100_000);
        f.add(alice).unwrap();
        f.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("quota = \"2 GiB\""), "{text}");
        assert!(text.contains("quota_messages = 100000"), "{text}");
        let record = f.find("alice").unwrap().record();
        assert_eq!(record.quota_messages, Some(100_000));
        assert_eq!(UsersFile::load(&path).unwrap(), f);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn invalid_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let cases = [
            ("[[user]]\nlogin = \"a\"\npassword = \"plain\"\n", "PHC"),
            (
                "[[user]]\nlogin = \"A\"\npassword = \"$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA\"\n",
                "must be written",
            ),
            ("[[user]]\nlogin = \"a\"\nfoo = 1\n", "unknown field"),
            ("not toml at all [", "users file"),
        ];
        for (text, expected) in cases {
            std::fs::write(&path, text).unwrap();
            let err = UsersFile::load(&path).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[tokio::test]
    async fn authenticates_and_resolves_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let mut f = UsersFile::default();
        let mut alice = entry("alice", &["alice@example.org"], "correct horse");
        alice.aliases = vec!["postmaster@example.org".into()];
        f.add(alice).unwrap();
        f.save(&path).unwrap();

        let d = StaticDirectory::open(&path, KdfParams::TEST).unwrap();
        let ok = d
            .authenticate(" ALICE", &Password::new("correct horse"))
            .await
            .unwrap();
        assert_eq!(ok.unwrap().login, "alice");
        assert!(
            d.authenticate("alice", &Password::new("wrong"))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            d.authenticate("nobody", &Password::new("x"))
                .await
                .unwrap()
                .is_none()
        );
        let by_alias = d
            .find_address("PostMaster@example.ORG")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(by_alias.login, "alice");
        assert_eq!(
            by_alias.addresses,
            ["alice@example.org", "postmaster@example.org"]
        );
        assert!(d.find_address("bob@example.org").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn picks_up_changes_without_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let d = StaticDirectory::open(&path, KdfParams::TEST).unwrap();
        assert!(d.find_login("bob").await.unwrap().is_none());
        let mut f = UsersFile::default();
        f.add(entry("bob", &["bob@example.org"], "pw")).unwrap();
        f.save(&path).unwrap();
        assert!(d.find_login("bob").await.unwrap().is_some());
    }
}
