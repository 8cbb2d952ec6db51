//! The shared services every listener uses, built once from the
//! configuration: the object store, the directory, the keyrings and the
//! cluster secret.

use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::account::{Hints, KeyringStore};
use crate::config::{Config, ConfigError, DirectoryBackend, StoreBackend};
use crate::crypto::{KdfParams, RecordAuth};
use crate::directory::{Directory, DirectoryError, LdapDirectory, StaticDirectory};
use crate::store::{
    FsStore, MemoryStore, Metered, S3Store, SharedStore, StoreError, layout::UserId,
};

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("object store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// How often an instance lists the change hints of other instances.
pub const HINT_INTERVAL: Duration = Duration::from_secs(2);

/// Everything built from the configuration that sessions share.
#[derive(Clone, Debug)]
pub struct Services {
    pub store: SharedStore,
    pub directory: Arc<dyn Directory>,
    pub keyrings: KeyringStore,
    /// Parameters for new password slots.
    pub kdf: KdfParams,
    /// Whether new users get a recovery key.
    pub recovery_key: bool,
    /// Authenticates delivery records: LMTP writes the MAC, IMAP sessions
    /// check it (derived from the cluster secret).
    pub records: RecordAuth,
    /// The largest message any listener accepts (`imap` and `lmtp`
    /// `max_message_size`): no stored body is decompressed beyond it.
    pub max_body_size: usize,
    /// This instance's change hints (`[imap] change_hints`), shared by its
    /// accounts and its LMTP deliveries; none when off.
    pub hints: Option<Arc<Hints>>,
    /// `[imap] poll_fallback`.
    pub poll_fallback: Duration,
    /// Keys user ids; never leaves memory.
    cluster_secret: Arc<Zeroizing<String>>,
}

impl Services {
    pub fn from_config(config: &Config) -> Result<Services, ServicesError> {
        let cluster_secret = Arc::new(config.cluster_secret()?);
        let store: SharedStore = match config.store.backend {
            StoreBackend::Fs => {
                let path = config.store.path.clone().ok_or_else(|| {
                    ConfigError::Invalid("store.backend = \"fs\" needs store.path".into())
                })?;
                Arc::new(FsStore::open(path)?)
            }
            StoreBackend::S3 => {
                let s3 = config.store.s3.as_ref().ok_or_else(|| {
                    ConfigError::Invalid("store.backend = \"s3\" needs [store.s3]".into())
                })?;
                Arc::new(S3Store::new(s3.settings()?)?)
            }
            StoreBackend::Memory => Arc::new(MemoryStore::new()),
        };
        let store: SharedStore = Arc::new(Metered::new(store));
        // One pool for every Argon2 of this process: users file and keyrings.
        let kdf_pool = config.crypto.kdf_pool();
        let directory: Arc<dyn Directory> = match config.directory.backend {
            DirectoryBackend::Static => {
                let path = config.directory.users_file.clone().ok_or_else(|| {
                    ConfigError::Invalid("directory.backend = \"static\" needs users_file".into())
                })?;
                Arc::new(
                    StaticDirectory::open(path, config.crypto.argon2.clone())?
                        .with_kdf_pool(kdf_pool.clone()),
                )
            }
            DirectoryBackend::Ldap => {
                let ldap = config.directory.ldap.as_ref().ok_or_else(|| {
                    ConfigError::Invalid(
                        "directory.backend = \"ldap\" needs [directory.ldap]".into(),
                    )
                })?;
                Arc::new(LdapDirectory::new(ldap.settings()?, ldap.bind_password()?)?)
            }
        };
        Ok(Services {
            keyrings: KeyringStore::new(store.clone(), cluster_secret.as_bytes())
                .with_escrow(config.crypto.escrow_public_key()?)
                .with_kdf_pool(kdf_pool),
            store,
            directory,
            kdf: config.crypto.argon2.clone(),
            recovery_key: config.crypto.recovery_key,
            records: RecordAuth::from_cluster_secret(cluster_secret.as_bytes()),
            max_body_size: usize::try_from(
                config
                    .imap
                    .max_message_size
                    .0
                    .max(config.lmtp.max_message_size.0),
            )
            .unwrap_or(usize::MAX),
            hints: config.imap.change_hints.then(|| Hints::new(HINT_INTERVAL)),
            poll_fallback: Duration::from_secs(config.imap.poll_fallback),
            cluster_secret,
        })
    }

    /// The opaque store id of a normalised login.
    pub fn user_id(&self, normalised_login: &str) -> UserId {
        crate::crypto::user_id(self.cluster_secret.as_bytes(), normalised_login)
    }

    /// How accounts behave on this instance: the defaults, with the
    /// record key, the body bound and the change hints of this
    /// configuration.
    pub fn account_config(
        &self,
        instance: crate::log::InstanceId,
    ) -> crate::account::AccountConfig {
        let mut config = crate::account::AccountConfig::new(instance, self.records.clone());
        config.mailbox.max_body_size = self.max_body_size;
        config.hints = self.hints.clone();
        config.poll_fallback = self.poll_fallback;
        config
    }

    /// One cheap request proving the store answers.
    pub async fn check_store(&self) -> Result<(), StoreError> {
        self.store
            .list(crate::store::layout::USERS_PREFIX, None, 1)
            .await
            .map(|_| ())
    }
}
