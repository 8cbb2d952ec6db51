//! Reading and writing a user's keyring object (`users/<u>/keyring`,
//! DESIGN.md §3). Argon2 runs on the blocking pool: it is meant to be slow.

use bytes::Bytes;

use super::AccountError;
use crate::crypto::{CryptoError, KdfParams, Keyring, Password, RecoveryKey, UserKeys};
use crate::store::{ObjectStore, SharedStore, layout, list_all};
use layout::UserId;

/// The keyrings of all users, in one object store.
#[derive(Clone, Debug)]
pub struct KeyringStore {
    store: SharedStore,
}

impl KeyringStore {
    pub fn new(store: SharedStore) -> Self {
        KeyringStore { store }
    }

    /// The user's keyring, or `None` if the user has none yet.
    pub async fn load(&self, u: &UserId) -> Result<Option<Keyring>, AccountError> {
        let key = layout::keyring(u);
        match self.store.get(&key).await {
            Ok(bytes) => Ok(Some(Keyring::from_bytes(&key, &bytes)?)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn save(&self, u: &UserId, keyring: &Keyring) -> Result<(), AccountError> {
        let key = layout::keyring(u);
        self.store
            .put(&key, Bytes::from(keyring.to_bytes(&key)))
            .await?;
        Ok(())
    }

    /// Creates and stores a new keyring protected by `password`; fails if
    /// the user already has one (its mail would become unreadable).
    pub async fn create(
        &self,
        u: &UserId,
        password: &Password,
        params: &KdfParams,
        with_recovery: bool,
    ) -> Result<(UserKeys, Option<RecoveryKey>), AccountError> {
        if self.load(u).await?.is_some() {
            return Err(AccountError::KeyringExists);
        }
        let (password, params) = (Password::new(password.as_str()), params.clone());
        let (keyring, keys, recovery) =
            blocking(move || Keyring::create(&password, &params, with_recovery)).await??;
        self.save(u, &keyring).await?;
        Ok((keys, recovery))
    }

    /// Unlocks the user's keys with a password.
    pub async fn unlock(&self, u: &UserId, password: &Password) -> Result<UserKeys, AccountError> {
        let keyring = self.load(u).await?.ok_or(AccountError::NoKeyring)?;
        let password = Password::new(password.as_str());
        Ok(blocking(move || keyring.unlock_with_password(&password)).await??)
    }

    /// Unlocks the user's keys with the recovery key.
    pub async fn unlock_with_recovery(
        &self,
        u: &UserId,
        recovery: &RecoveryKey,
    ) -> Result<UserKeys, AccountError> {
        let keyring = self.load(u).await?.ok_or(AccountError::NoKeyring)?;
        Ok(keyring.unlock_with_recovery(recovery)?)
    }

    /// Re-wraps the keys under a new password (no mail is re-encrypted);
    /// optionally replaces the recovery key, returning the new one.
    pub async fn set_password(
        &self,
        u: &UserId,
        keys: &UserKeys,
        new_password: &Password,
        params: &KdfParams,
        new_recovery: bool,
    ) -> Result<Option<RecoveryKey>, AccountError> {
        let mut keyring = self.load(u).await?.ok_or(AccountError::NoKeyring)?;
        let keys = keys.clone();
        let (password, params) = (Password::new(new_password.as_str()), params.clone());
        let (keyring, recovery) = blocking(move || {
            keyring.set_password(&keys, &password, &params)?;
            let recovery = if new_recovery {
                Some(keyring.set_recovery(&keys)?)
            } else {
                None
            };
            Ok::<_, CryptoError>((keyring, recovery))
        })
        .await??;
        self.save(u, &keyring).await?;
        Ok(recovery)
    }

    /// Deletes every object of the user (keyring, mail, everything);
    /// returns how many objects were deleted.
    pub async fn delete_user_data(&self, u: &UserId) -> Result<usize, AccountError> {
        let prefix = layout::user_prefix(u);
        let keys: Vec<String> = list_all(self.store.as_ref(), &prefix, None)
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        self.store.delete_many(&keys).await?;
        Ok(keys.len())
    }

    pub fn store(&self) -> &dyn ObjectStore {
        self.store.as_ref()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AccountError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AccountError::Internal(format!("key derivation task failed: {e}")))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::crypto::{open, seal, user_id};
    use crate::store::MemoryStore;

    fn setup() -> (KeyringStore, UserId) {
        let store: SharedStore = Arc::new(MemoryStore::new());
        (
            KeyringStore::new(store),
            user_id(b"0123456789abcdef", "alice"),
        )
    }

    #[tokio::test]
    async fn create_unlock_and_change_password() {
        let (ks, u) = setup();
        let pw = Password::new("first password");
        let (keys, recovery) = ks.create(&u, &pw, &KdfParams::TEST, true).await.unwrap();
        let recovery = recovery.unwrap();
        let data_key = keys.master().subkey("test");
        let sealed = seal(&data_key, "users/x/obj", b"hello");

        assert!(matches!(
            ks.create(&u, &pw, &KdfParams::TEST, true).await,
            Err(AccountError::KeyringExists)
        ));
        assert!(matches!(
            ks.unlock(&u, &Password::new("wrong")).await,
            Err(AccountError::Crypto(CryptoError::WrongPassword))
        ));

        let new_pw = Password::new("second password");
        ks.set_password(&u, &keys, &new_pw, &KdfParams::TEST, false)
            .await
            .unwrap();
        assert!(ks.unlock(&u, &pw).await.is_err());
        let again = ks.unlock(&u, &new_pw).await.unwrap();
        assert_eq!(
            open(&again.master().subkey("test"), "users/x/obj", &sealed).unwrap(),
            b"hello"
        );
        let via_recovery = ks.unlock_with_recovery(&u, &recovery).await.unwrap();
        assert_eq!(
            via_recovery.public_key().to_bytes(),
            keys.public_key().to_bytes()
        );
    }

    #[tokio::test]
    async fn unknown_user_has_no_keyring_and_delete_removes_everything() {
        let (ks, u) = setup();
        assert!(matches!(
            ks.unlock(&u, &Password::new("x")).await,
            Err(AccountError::NoKeyring)
        ));
        ks.create(&u, &Password::new("pw"), &KdfParams::TEST, false)
            .await
            .unwrap();
        ks.store()
            .put(&layout::blob(&u, "b1"), Bytes::from_static(b"x"))
            .await
            .unwrap();
        let other = user_id(b"0123456789abcdef", "bob");
        ks.create(&other, &Password::new("pw"), &KdfParams::TEST, false)
            .await
            .unwrap();
        assert_eq!(ks.delete_user_data(&u).await.unwrap(), 2);
        assert!(ks.load(&u).await.unwrap().is_none());
        assert!(ks.load(&other).await.unwrap().is_some());
    }
}
