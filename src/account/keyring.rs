//! Reading and writing a user's keyring object (`users/<u>/keyring`,
//! doc/storage.md, "Encryption"), and the delivery key LMTP seals mail to
//! (`users/<u>/delivery-key`: the public key and a tag under the cluster
//! secret, so that whoever can write the bucket cannot substitute a key of
//! their own). The delivery key is written after the keyring, and again at
//! every unlock if it is missing or wrong: the keys are authentic then.
//! Argon2 runs through the store's [`KdfPool`]: it is meant to be slow,
//! and a burst of logins must not run it unbounded.
//!
//! A login reads the keyring once ([`KeyringStore::fetch`]) with a digest of
//! its bytes: the digest tells a later login whether the keyring (and so
//! the password) is still the one an unlocked account was opened with.

use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::AccountError;
use zeroize::Zeroizing;

use crate::crypto::{
    CryptoError, EscrowSecretKey, KdfParams, KdfPool, Keyring, Password, RecoveryKey, UserKeys,
    UserPublicKey, delivery_key_tag, verify_delivery_key_tag,
};
use crate::store::{ObjectStore, SharedStore, layout, list_all};
use layout::UserId;

/// The keyrings of all users, in one object store.
#[derive(Clone)]
pub struct KeyringStore {
    store: SharedStore,
    /// Keys the delivery-key tags.
    cluster_secret: Arc<Zeroizing<Vec<u8>>>,
    /// The admin escrow key every keyring gets a slot for, if configured.
    escrow: Option<UserPublicKey>,
    /// Where every Argon2 of keyrings runs.
    kdf_pool: Arc<KdfPool>,
}

/// A keyring as read from the store, with the SHA-256 of its bytes: any
/// change to it (a new password, re-wrapped parameters, a new recovery
/// slot) changes the digest.
#[derive(Clone, Debug)]
pub struct StoredKeyring {
    pub keyring: Keyring,
    pub digest: [u8; 32],
}

impl std::fmt::Debug for KeyringStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyringStore")
            .field("store", &self.store)
            .field("kdf_pool", &self.kdf_pool)
            .finish_non_exhaustive()
    }
}

impl KeyringStore {
    /// A keyring store with its own [`KdfPool`] of the default size; share
    /// one pool with [`KeyringStore::with_kdf_pool`].
    pub fn new(store: SharedStore, cluster_secret: &[u8]) -> Self {
        KeyringStore {
            store,
            cluster_secret: Arc::new(Zeroizing::new(cluster_secret.to_vec())),
            escrow: None,
            kdf_pool: KdfPool::with_default_size(),
        }
    }

    /// Runs this store's Argon2 in `pool`.
    pub fn with_kdf_pool(mut self, pool: Arc<KdfPool>) -> Self {
        self.kdf_pool = pool;
        self
    }

    pub fn kdf_pool(&self) -> &Arc<KdfPool> {
        &self.kdf_pool
    }

    /// Runs an Argon2 derivation in the pool; `Busy` when it is full.
    async fn derive<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AccountError> {
        Ok(self.kdf_pool.run(f).await?)
    }

    /// Gives every keyring an escrow slot sealed to `admin` (`[crypto]
    /// escrow_public_key`): new keyrings at creation, existing ones at
    /// their next unlock.
    pub fn with_escrow(mut self, admin: Option<UserPublicKey>) -> Self {
        self.escrow = admin;
        self
    }

    /// Adds (or re-seals) the escrow slot of an unlocked keyring if the
    /// configured admin key has none; a failure is logged, not fatal (the
    /// user still logs in; the next unlock tries again).
    async fn heal_escrow(&self, u: &UserId, keys: &UserKeys) {
        let Some(admin) = &self.escrow else {
            return;
        };
        let healed = async {
            let Some(mut keyring) = self.load(u).await? else {
                return Ok(false);
            };
            if keyring.escrow_public_key().as_ref() == Some(admin) {
                return Ok(false);
            }
            keyring.set_escrow(keys, admin)?;
            self.save(u, &keyring).await?;
            Ok::<_, AccountError>(true)
        };
        match healed.await {
            Ok(true) => tracing::info!(user = ?u, "added the admin escrow slot to a keyring"),
            Ok(false) => {}
            Err(e) => tracing::warn!(user = ?u, error = %e, "could not add the admin escrow slot"),
        }
    }

    /// Unlocks the user's keys with the offline admin escrow key (`facteur
    /// user escrow-unlock`), for setting a new password when both the
    /// password and the recovery key are lost.
    pub async fn unlock_with_escrow(
        &self,
        u: &UserId,
        admin: &EscrowSecretKey,
    ) -> Result<UserKeys, AccountError> {
        let keyring = self.load(u).await?.ok_or(AccountError::NoKeyring)?;
        let keys = keyring.unlock_with_escrow(admin)?;
        self.heal_delivery_key(u, &keys).await?;
        Ok(keys)
    }

    /// The public key to seal a user's mail to, if the user has one and
    /// its tag checks out. A key whose tag fails is an error (mail waits,
    /// and the log says why), never a silent fallback.
    pub async fn delivery_key(&self, u: &UserId) -> Result<Option<UserPublicKey>, AccountError> {
        let key = layout::delivery_key(u);
        let bytes = match self.store.get(&key).await {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let (public, tag) = bytes.split_at(bytes.len().min(32));
        let public = <[u8; 32]>::try_from(public)
            .map(UserPublicKey::from_bytes)
            .ok();
        match public {
            Some(public) if verify_delivery_key_tag(&self.cluster_secret, u, &public, tag) => {
                Ok(Some(public))
            }
            _ => Err(AccountError::Corrupt(format!(
                "{key} fails its check: it was not written by this cluster (tampering?)"
            ))),
        }
    }

    async fn write_delivery_key(
        &self,
        u: &UserId,
        public: &UserPublicKey,
    ) -> Result<(), AccountError> {
        let mut bytes = public.to_bytes().to_vec();
        bytes.extend_from_slice(&delivery_key_tag(&self.cluster_secret, u, public));
        self.store
            .put(&layout::delivery_key(u), Bytes::from(bytes))
            .await?;
        Ok(())
    }

    /// Rewrites the delivery key if it is missing or not the unlocked one.
    async fn heal_delivery_key(&self, u: &UserId, keys: &UserKeys) -> Result<(), AccountError> {
        let public = keys.public_key();
        match self.delivery_key(u).await {
            Ok(Some(k)) if k.to_bytes() == public.to_bytes() => Ok(()),
            Err(e) if e.is_transient() => Err(e),
            other => {
                if !matches!(other, Ok(None)) {
                    tracing::warn!(user = ?u, "replacing a wrong delivery key");
                }
                self.write_delivery_key(u, &public).await
            }
        }
    }

    /// The user's keyring, or `None` if the user has none yet.
    pub async fn load(&self, u: &UserId) -> Result<Option<Keyring>, AccountError> {
        Ok(self.fetch(u).await?.map(|s| s.keyring))
    }

    /// The user's keyring with the digest of its bytes, or `None` if the
    /// user has none yet.
    pub async fn fetch(&self, u: &UserId) -> Result<Option<StoredKeyring>, AccountError> {
        let key = layout::keyring(u);
        match self.store.get(&key).await {
            Ok(bytes) => Ok(Some(StoredKeyring {
                keyring: Keyring::from_bytes(&key, &bytes)?,
                digest: Sha256::digest(&bytes).into(),
            })),
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
        let (mut keyring, keys, recovery) = self
            .derive(move || Keyring::create(&password, &params, with_recovery))
            .await??;
        if let Some(admin) = &self.escrow {
            keyring.set_escrow(&keys, admin)?;
        }
        self.save(u, &keyring).await?;
        // After the keyring: a delivery key whose secret was never stored
        // would swallow mail.
        self.write_delivery_key(u, &keys.public_key()).await?;
        Ok((keys, recovery))
    }

    /// Unlocks the user's keys with a password.
    pub async fn unlock(&self, u: &UserId, password: &Password) -> Result<UserKeys, AccountError> {
        let stored = self.fetch(u).await?.ok_or(AccountError::NoKeyring)?;
        self.unlock_stored(u, &stored, password).await
    }

    /// Unlocks a keyring already read with [`KeyringStore::fetch`]: one
    /// Argon2, in the pool.
    pub async fn unlock_stored(
        &self,
        u: &UserId,
        stored: &StoredKeyring,
        password: &Password,
    ) -> Result<UserKeys, AccountError> {
        let keyring = stored.keyring.clone();
        let password = Password::new(password.as_str());
        let keys = self
            .derive(move || keyring.unlock_with_password(&password))
            .await??;
        self.heal_delivery_key(u, &keys).await?;
        self.heal_escrow(u, &keys).await;
        Ok(keys)
    }

    /// Spends what an unlock spends, in the pool, for a login that has no
    /// keyring to open (an unknown user): see [`KdfParams::dummy_derive`].
    pub async fn dummy_unlock(
        &self,
        password: &Password,
        params: &KdfParams,
    ) -> Result<(), AccountError> {
        let (password, params) = (Password::new(password.as_str()), params.clone());
        self.derive(move || params.dummy_derive(&password))
            .await??;
        Ok(())
    }

    /// Re-wraps the password slot of `stored` with `params` (stronger ones,
    /// raised in the configuration since the slot was written), keeping
    /// every other slot. Best effort and careful, since it rewrites the one
    /// object that opens the user's mail:
    /// - the keyring must still be the one unlocked (same digest) just
    ///   before the write, or nothing is written (a password changed
    ///   meanwhile wins);
    /// - the new keyring is parsed back and must carry the same public key
    ///   before it is written, and is read back after: a mismatch is
    ///   logged (the previous keyring's keys are the same, so nothing is
    ///   lost either way).
    ///
    /// Returns the new stored keyring, `None` if it was left alone. A full
    /// pool leaves it alone too: the next login tries again.
    pub async fn rewrap(
        &self,
        u: &UserId,
        stored: &StoredKeyring,
        keys: &UserKeys,
        password: &Password,
        params: &KdfParams,
    ) -> Result<Option<StoredKeyring>, AccountError> {
        let key = layout::keyring(u);
        let mut keyring = stored.keyring.clone();
        let (keys, password, params) = (
            keys.clone(),
            Password::new(password.as_str()),
            params.clone(),
        );
        let keyring = self
            .derive(move || {
                keyring
                    .set_password(&keys, &password, &params)
                    .map(|()| keyring)
            })
            .await??;
        let bytes = keyring.to_bytes(&key);
        let check = Keyring::from_bytes(&key, &bytes)?;
        if check.public_key() != stored.keyring.public_key() {
            return Err(AccountError::Internal(
                "a re-wrapped keyring lost its public key".into(),
            ));
        }
        match self.fetch(u).await? {
            Some(now) if now.digest == stored.digest => {}
            _ => return Ok(None),
        }
        self.store.put(&key, Bytes::from(bytes.clone())).await?;
        let written = StoredKeyring {
            keyring: check,
            digest: Sha256::digest(&bytes).into(),
        };
        match self.fetch(u).await? {
            Some(back) if back.digest == written.digest => Ok(Some(written)),
            _ => {
                tracing::warn!(user = ?u, "a re-wrapped keyring did not read back as written");
                Ok(None)
            }
        }
    }

    /// Unlocks the user's keys with the recovery key.
    pub async fn unlock_with_recovery(
        &self,
        u: &UserId,
        recovery: &RecoveryKey,
    ) -> Result<UserKeys, AccountError> {
        let keyring = self.load(u).await?.ok_or(AccountError::NoKeyring)?;
        let keys = keyring.unlock_with_recovery(recovery)?;
        self.heal_delivery_key(u, &keys).await?;
        Ok(keys)
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
        let (keyring, recovery) = self
            .derive(move || {
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

    /// Every user id that has objects in the store, in order, whatever
    /// the directory says: one listing request per user, skipping over
    /// each user's objects (`users/<u>0` sorts after every `users/<u>/…`
    /// and before the next id). Names under `users/` that are not user ids
    /// are passed over.
    pub async fn user_ids(&self) -> Result<Vec<UserId>, AccountError> {
        let mut ids = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list(layout::USERS_PREFIX, after.as_deref(), 1)
                .await?;
            let Some(first) = page.objects.first() else {
                return Ok(ids);
            };
            let rest = &first.key[layout::USERS_PREFIX.len()..];
            after = Some(match rest.split_once('/') {
                Some((segment, _)) => {
                    ids.extend(UserId::parse(segment));
                    format!("{}{segment}0", layout::USERS_PREFIX)
                }
                None => first.key.clone(),
            });
        }
    }

    /// Whether the user has any object in the store.
    pub async fn has_user_data(&self, u: &UserId) -> Result<bool, AccountError> {
        let page = self.store.list(&layout::user_prefix(u), None, 1).await?;
        Ok(!page.objects.is_empty())
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

/// Whether `users/<u>/keyring` still holds the keyring whose public key
/// is `public`: `false` once it is gone (`facteur user delete`) or holds
/// another user's (the login deleted and given to someone new). An
/// account unlocked before then must lock itself: its keys open nothing
/// the newcomer stores, and draining the newcomer's deliveries with them
/// would quarantine every one. A store failure is an error (no answer, so
/// no lock); so is a keyring that does not parse, which no delete or
/// provisioning writes.
pub async fn still_holds(
    store: &dyn ObjectStore,
    u: &UserId,
    public: &UserPublicKey,
) -> Result<bool, AccountError> {
    let key = layout::keyring(u);
    match store.get(&key).await {
        Ok(bytes) => Ok(Keyring::from_bytes(&key, &bytes)?.public_key() == *public),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
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
            KeyringStore::new(store, b"0123456789abcdef"),
            user_id(b"0123456789abcdef", "alice"),
        )
    }

    #[tokio::test]
    async fn user_ids_lists_each_user_with_data_once() {
        let (ks, alice) = setup();
        let bob = user_id(b"0123456789abcdef", "bob");
        let store = ks.store();
        assert!(ks.user_ids().await.unwrap().is_empty());
        for key in [
            layout::keyring(&alice),
            layout::blob(&alice, "b1"),
            layout::blob(&alice, "b2"),
            layout::incoming_prefix(&bob) + "r1",
            "users/not-an-id/x".to_owned(),
            "users/stray".to_owned(),
        ] {
            store.put(&key, Bytes::from_static(b"x")).await.unwrap();
        }
        let mut expected = vec![alice.clone(), bob.clone()];
        expected.sort();
        assert_eq!(ks.user_ids().await.unwrap(), expected);
        assert!(ks.has_user_data(&bob).await.unwrap());
        assert_eq!(ks.delete_user_data(&alice).await.unwrap(), 3);
        assert_eq!(ks.user_ids().await.unwrap(), vec![bob]);
        assert!(!ks.has_user_data(&alice).await.unwrap());
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
        assert_eq!(
            ks.delete_user_data(&u).await.unwrap(),
            3,
            "keyring, delivery key, blob"
        );
        assert!(ks.load(&u).await.unwrap().is_none());
        assert!(ks.load(&other).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn the_delivery_key_is_vouched_for_and_healed_at_unlock() {
        let (ks, u) = setup();
        let pw = Password::new("pw");
        let (keys, _) = ks.create(&u, &pw, &KdfParams::TEST, false).await.unwrap();
        let public = ks.delivery_key(&u).await.unwrap().unwrap();
        assert_eq!(public.to_bytes(), keys.public_key().to_bytes());

        // Another cluster's secret does not vouch for it.
        let other = KeyringStore::new(ks.store.clone(), b"another cluster secret");
        assert!(matches!(
            other.delivery_key(&u).await,
            Err(AccountError::Corrupt(_))
        ));

        // Lost (a crash between the two PUTs): no key, then healed.
        ks.store().delete(&layout::delivery_key(&u)).await.unwrap();
        assert!(ks.delivery_key(&u).await.unwrap().is_none());
        ks.unlock(&u, &pw).await.unwrap();
        assert!(ks.delivery_key(&u).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn rewrap_raises_the_parameters_and_keeps_every_slot() {
        let (ks, u) = setup();
        let pw = Password::new("first password");
        let (keys, recovery) = ks.create(&u, &pw, &KdfParams::TEST, true).await.unwrap();
        let stronger = KdfParams {
            memory_kib: 2 * KdfParams::TEST.memory_kib,
            ..KdfParams::TEST
        };
        let stored = ks.fetch(&u).await.unwrap().unwrap();
        let unlocked = ks.unlock_stored(&u, &stored, &pw).await.unwrap();
        let written = ks
            .rewrap(&u, &stored, &unlocked, &pw, &stronger)
            .await
            .unwrap()
            .expect("re-wrapped");
        let now = ks.fetch(&u).await.unwrap().unwrap();
        assert_eq!(now.digest, written.digest);
        assert_ne!(now.digest, stored.digest);
        assert_eq!(now.keyring.password_params(), &stronger);
        let again = ks.unlock(&u, &pw).await.unwrap();
        assert_eq!(again.public_key(), keys.public_key());
        let via_recovery = ks
            .unlock_with_recovery(&u, &recovery.unwrap())
            .await
            .unwrap();
        assert_eq!(via_recovery.public_key(), keys.public_key());
    }

    #[tokio::test]
    async fn rewrap_never_overwrites_a_keyring_changed_meanwhile() {
        let (ks, u) = setup();
        let old = Password::new("first password");
        let (keys, _) = ks.create(&u, &old, &KdfParams::TEST, false).await.unwrap();
        let stored = ks.fetch(&u).await.unwrap().unwrap();
        // Another instance changes the password after this one read it.
        let new = Password::new("second password");
        ks.set_password(&u, &keys, &new, &KdfParams::TEST, false)
            .await
            .unwrap();
        let stronger = KdfParams {
            iterations: 2,
            ..KdfParams::TEST
        };
        assert!(
            ks.rewrap(&u, &stored, &keys, &old, &stronger)
                .await
                .unwrap()
                .is_none()
        );
        assert!(ks.unlock(&u, &new).await.is_ok(), "the new password stays");
        assert!(ks.unlock(&u, &old).await.is_err());
    }

    #[tokio::test]
    async fn a_full_pool_refuses_as_busy_and_transient() {
        let (ks, u) = setup();
        let ks = ks.with_kdf_pool(KdfPool::new(1, 0));
        ks.create(&u, &Password::new("pw"), &KdfParams::TEST, false)
            .await
            .unwrap();
        assert_eq!(ks.kdf_pool().runs(), 1);
        // The pool's one thread is taken by a run held until `gate` opens
        // (a test Argon2 is too quick to count on two overlapping): an
        // unlock meanwhile is refused at once, as busy and transient.
        let gate = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pool = ks.kdf_pool().clone();
        let held = {
            let gate = gate.clone();
            tokio::spawn(async move {
                pool.run(move || {
                    while !gate.load(std::sync::atomic::Ordering::SeqCst) {
                        std::thread::yield_now();
                    }
                })
                .await
            })
        };
        while ks.kdf_pool().runs() < 2 {
            tokio::task::yield_now().await;
        }
        let refused = ks.unlock(&u, &Password::new("pw")).await;
        gate.store(true, std::sync::atomic::Ordering::SeqCst);
        held.await.unwrap().unwrap();
        let err = refused.unwrap_err();
        assert!(matches!(err, AccountError::Busy(_)), "{err:?}");
        assert!(err.is_transient());
        // Once free, the same unlock goes through.
        ks.unlock(&u, &Password::new("pw")).await.unwrap();
    }
}
