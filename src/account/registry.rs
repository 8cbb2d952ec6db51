//! The unlocked accounts of this instance. Sessions of one user share one
//! [`Account`]; it lives while a session holds it, plus a short grace period
//! after the last one ends, so that IDLE reconnects and mail arriving
//! between two connections keep working without a new unlock (DESIGN.md
//! §3). Then the keys are dropped, and zeroized.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::{Account, AccountConfig};
use crate::crypto::UserKeys;
use crate::store::{SharedStore, layout::UserId};

#[derive(Debug)]
pub struct Accounts {
    store: SharedStore,
    config: AccountConfig,
    /// How long an account outlives its last session.
    grace: Duration,
    live: Mutex<HashMap<UserId, Weak<Account>>>,
}

impl Accounts {
    pub fn new(store: SharedStore, config: AccountConfig, grace: Duration) -> Arc<Self> {
        Arc::new(Accounts {
            store,
            config,
            grace,
            live: Mutex::new(HashMap::new()),
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Weak<Account>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The user's account if it is unlocked on this instance.
    pub fn get(&self, user: &UserId) -> Option<Arc<Account>> {
        self.live().get(user).and_then(Weak::upgrade)
    }

    /// The user's account, unlocked with `keys` if it is not already; a new
    /// account starts polling the store for other instances' changes.
    pub fn unlock(&self, user: &UserId, keys: UserKeys) -> Arc<Account> {
        let mut live = self.live();
        if let Some(account) = live.get(user).and_then(Weak::upgrade) {
            return account;
        }
        live.retain(|_, a| a.strong_count() > 0);
        let account = Account::new(user.clone(), keys, self.store.clone(), self.config.clone());
        account.spawn_poller();
        live.insert(user.clone(), Arc::downgrade(&account));
        account
    }

    /// A session ends: the account stays unlocked for the grace period.
    pub fn release(&self, account: Arc<Account>) {
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
            .filter(|a| a.strong_count() > 0)
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
        let accounts = Accounts::new(store, config, Duration::from_secs(60));
        let (keyring, keys, _) =
            Keyring::create(&Password::new("pw"), &KdfParams::TEST, false).unwrap();
        let _ = keyring;
        let user = user_id(b"0123456789abcdef", "alice");

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
}
