//! The unlocked accounts of this instance. Sessions of one user share one
//! [`Account`]; it lives while a session holds it, plus a short grace period
//! after the last one ends, so that IDLE reconnects and mail arriving
//! between two connections keep working without a new unlock (doc/storage.md,
//! "Encryption", keys in memory). Then the keys are dropped, and zeroized.
//!
//! Re-logins without Argon2 (a phone opens many short connections): an
//! account unlocked with a password keeps a *verifier*, HMAC-SHA256 under a
//! random key of this process of (user id, digest of the keyring bytes,
//! password). A login whose password gives the same verifier, while the
//! account is still unlocked and the keyring still reads the same, is the
//! same password opening the same keyring, so it needs no new unlock. The
//! verifier goes with the account when it locks; a password change
//! rewrites the keyring, so its digest no longer matches. The key never
//! leaves memory and changes at every start, so a verifier is worth
//! nothing outside this process (and inside it, the keys themselves are
//! next to it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::recent::RecentFloors;
use super::{Account, AccountConfig};
use crate::crypto::{Password, UserKeys};
use crate::store::{SharedStore, layout::UserId};

#[derive(Debug)]
pub struct Accounts {
    store: SharedStore,
    config: AccountConfig,
    /// How long an account outlives its last session.
    grace: Duration,
    live: Mutex<HashMap<UserId, Live>>,
    /// Keys the verifiers; random per process.
    verifier_key: VerifierKey,
    /// What this instance has shown as `\Recent`; outlives the accounts.
    recent: Arc<RecentFloors>,
}

/// An unlocked account, and the verifier of the password that opened it
/// (none if it was opened otherwise, e.g. by an admin tool).
#[derive(Debug)]
struct Live {
    account: Weak<Account>,
    verifier: Option<[u8; 32]>,
}

struct VerifierKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerifierKey(<redacted>)")
    }
}

impl VerifierKey {
    fn random() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut key[..]);
        VerifierKey(key)
    }

    fn mac(&self, user: &UserId, keyring_digest: &[u8; 32], password: &Password) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0[..])
            .expect("HMAC accepts any key length");
        // Fixed-length fields first, so the password needs no prefix.
        mac.update(user.as_str().as_bytes());
        mac.update(keyring_digest);
        mac.update(password.as_str().as_bytes());
        mac
    }
}

impl Accounts {
    pub fn new(store: SharedStore, config: AccountConfig, grace: Duration) -> Arc<Self> {
        Arc::new(Accounts {
            store,
            config,
            grace,
            live: Mutex::new(HashMap::new()),
            verifier_key: VerifierKey::random(),
            recent: Arc::new(RecentFloors::default()),
        })
    }

    /// The `\Recent` bookkeeping of this instance.
    pub fn recent(&self) -> Arc<RecentFloors> {
        self.recent.clone()
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The user's account if it is unlocked on this instance.
    /// A locked one ([`Account::check_keyring`]) is not.
    pub fn get(&self, user: &UserId) -> Option<Arc<Account>> {
        self.live()
            .get(user)
            .and_then(|l| l.account.upgrade())
            .filter(|a| !a.is_locked())
    }

    /// The user's account, unlocked with `keys` if it is not already, for
    /// one session (give it back with [`Accounts::release`]); a new account
    /// starts polling the store for other instances' changes.
    pub fn unlock(&self, user: &UserId, keys: UserKeys) -> Arc<Account> {
        self.unlock_inner(user, keys, None)
    }

    /// Like [`Accounts::unlock`], for keys just unlocked with `password`
    /// from the keyring whose bytes have `keyring_digest`: later logins with
    /// the same password skip the unlock ([`Accounts::reuse`]).
    pub fn unlock_with_password(
        &self,
        user: &UserId,
        keys: UserKeys,
        password: &Password,
        keyring_digest: &[u8; 32],
    ) -> Arc<Account> {
        let verifier = self
            .verifier_key
            .mac(user, keyring_digest, password)
            .finalize()
            .into_bytes()
            .into();
        self.unlock_inner(user, keys, Some(verifier))
    }

    fn unlock_inner(
        &self,
        user: &UserId,
        keys: UserKeys,
        verifier: Option<[u8; 32]>,
    ) -> Arc<Account> {
        let mut live = self.live();
        if let Some(entry) = live.get_mut(user)
            && let Some(account) = entry.account.upgrade()
            // Other keys: the user was deleted and the login given to someone
            // new while the old account was still in memory. The old one
            // keeps serving only its own sessions; the new keys get their
            // own account.
            && account.keys().public_key() == keys.public_key()
            && !account.is_locked()
        {
            if verifier.is_some() {
                entry.verifier = verifier;
            }
            account.session_began();
            return account;
        }
        live.retain(|_, l| l.account.strong_count() > 0);
        let account = Account::new(user.clone(), keys, self.store.clone(), self.config.clone());
        account.spawn_poller();
        account.session_began();
        live.insert(
            user.clone(),
            Live {
                account: Arc::downgrade(&account),
                verifier,
            },
        );
        account
    }

    /// Keeps the verifier of `password` for the keyring whose bytes have
    /// `keyring_digest` (re-written since the unlock), if the user's account
    /// is still unlocked.
    pub fn remember_password(&self, user: &UserId, password: &Password, keyring_digest: &[u8; 32]) {
        let verifier = self
            .verifier_key
            .mac(user, keyring_digest, password)
            .finalize()
            .into_bytes()
            .into();
        if let Some(entry) = self.live().get_mut(user)
            && entry.account.strong_count() > 0
        {
            entry.verifier = Some(verifier);
        }
    }

    /// The user's account if it is unlocked on this instance with this
    /// password, from the keyring whose bytes have `keyring_digest`: no
    /// Argon2. The comparison takes constant time.
    pub fn reuse(
        &self,
        user: &UserId,
        password: &Password,
        keyring_digest: &[u8; 32],
    ) -> Option<Arc<Account>> {
        let (account, verifier) = {
            let live = self.live();
            let entry = live.get(user)?;
            (entry.account.upgrade()?, entry.verifier?)
        };
        if account.is_locked() {
            return None;
        }
        let same = self
            .verifier_key
            .mac(user, keyring_digest, password)
            .verify_slice(&verifier)
            .is_ok();
        same.then(|| {
            account.session_began();
            account
        })
    }

    /// A session ends: the account stays unlocked for the grace period
    /// (polling nothing if no other session holds it).
    pub fn release(&self, account: Arc<Account>) {
        account.session_ended();
        let grace = self.grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            drop(account);
        });
    }

    /// How many accounts are unlocked now.
    pub fn unlocked(&self) -> usize {
        self.live()
            .values()
            .filter(|l| l.account.strong_count() > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KdfParams, Keyring, Password, user_id};
    use crate::log::InstanceId;
    use crate::store::MemoryStore;

    #[tokio::test(start_paused = true)]
    async fn accounts_are_shared_and_outlive_sessions_by_the_grace_period() {
        let store: SharedStore = Arc::new(MemoryStore::new());
        let config = AccountConfig::new(
            InstanceId::new("a").unwrap(),
            crate::crypto::RecordAuth::from_cluster_secret(b"0123456789abcdef"),
        );
        let accounts = Accounts::new(store.clone(), config, Duration::from_secs(60));
        let (keyring, keys, _) =
            Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
        let user = user_id(b"0123456789abcdef", "alice");
        // The keyring is in the store: the account's polls find it there
        // and do not lock it (`Account::check_keyring`).
        let key = crate::store::layout::keyring(&user);
        store
            .put(&key, bytes::Bytes::from(keyring.to_bytes(&key)))
            .await
            .unwrap();

        let first = accounts.unlock(&user, keys.clone());
        let second = accounts.unlock(&user, keys);
        assert!(Arc::ptr_eq(&first, &second));
        accounts.release(first);
        accounts.release(second);
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert!(accounts.get(&user).is_some(), "still in the grace period");
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::yield_now().await;
        assert!(
            accounts.get(&user).is_none(),
            "keys dropped after the grace period"
        );
        assert_eq!(accounts.unlocked(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_login_with_new_keys_never_gets_the_old_account() {
        let store: SharedStore = Arc::new(MemoryStore::new());
        let config = AccountConfig::new(
            InstanceId::new("a").unwrap(),
            crate::crypto::RecordAuth::from_cluster_secret(b"0123456789abcdef"),
        );
        let accounts = Accounts::new(store, config, Duration::from_secs(60));
        let (_, departed, _) =
            Keyring::create(&Password::new("old"), &KdfParams::TEST, false).unwrap();
        let (_, newcomer, _) =
            Keyring::create(&Password::new("new"), &KdfParams::TEST, false).unwrap();
        let user = user_id(b"0123456789abcdef", "dave");

        let old = accounts.unlock(&user, departed);
        let new = accounts.unlock(&user, newcomer.clone());
        assert!(
            !Arc::ptr_eq(&old, &new),
            "the newcomer got the departed user's account"
        );
        assert!(new.keys().public_key() == newcomer.public_key());
        let again = accounts.unlock(&user, newcomer);
        assert!(
            Arc::ptr_eq(&new, &again),
            "the newcomer's own account is shared"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_verifier_matches_only_the_same_password_keyring_and_live_account() {
        let store: SharedStore = Arc::new(MemoryStore::new());
        let config = AccountConfig::new(
            InstanceId::new("a").unwrap(),
            crate::crypto::RecordAuth::from_cluster_secret(b"test cluster secret"),
        );
        let accounts = Accounts::new(store, config, Duration::from_secs(60));
        let (_, keys, _) = Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
        let user = user_id(b"0123456789abcdef", "alice");
        let bob = user_id(b"0123456789abcdef", "bob");
        let pw = Password::new("correct horse");
        let digest = [7u8; 32];

        assert!(
            accounts.reuse(&user, &pw, &digest).is_none(),
            "not unlocked"
        );
        let account = accounts.unlock_with_password(&user, keys.clone(), &pw, &digest);
        let again = accounts.reuse(&user, &pw, &digest).expect("same password");
        assert!(Arc::ptr_eq(&account, &again));
        drop(again);
        assert!(
            accounts
                .reuse(&user, &Password::new("correct horsE"), &digest)
                .is_none()
        );
        assert!(
            accounts
                .reuse(&user, &Password::new("correct horse "), &digest)
                .is_none()
        );
        assert!(
            accounts.reuse(&user, &pw, &[8u8; 32]).is_none(),
            "keyring changed"
        );
        assert!(accounts.reuse(&bob, &pw, &digest).is_none());

        // Unlocked without a password (no verifier): nothing to reuse.
        let other = accounts.unlock(&bob, keys);
        assert!(accounts.reuse(&bob, &pw, &digest).is_none());
        drop(other);

        // The account locks: its verifier goes with it.
        accounts.release(account);
        tokio::time::sleep(Duration::from_secs(61)).await;
        tokio::task::yield_now().await;
        assert!(accounts.reuse(&user, &pw, &digest).is_none());
    }
}
