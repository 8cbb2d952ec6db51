//! Recipients and delivery (doc/lmtp.md; doc/storage.md, "Encryption"): what
//! the session's two requests do. A recipient is looked up in the directory
//! (exact address first, then without its `+detail`), then its keyring in the
//! store for the public key; a message is sealed to each user's key into their
//! incoming queue with [`deliver`]. A user with a quota
//! (`UserRecord::quota_bytes`, `quota_messages`) is checked at RCPT (against the declared SIZE)
//! and again after DATA (against the real size), see [`quota`]. Only a count
//! made just now can refuse; an unknown usage delivers.
//!
//! No socket here, and no reply codes: outcomes are [`RcptRefusal`] and
//! [`DeliveryOutcome`], turned into replies by [`super::reply`]. Causes go
//! to `tracing`.

use std::sync::Arc;

use crate::account::KeyringStore;
use crate::crypto::{RecordAuth, UserPublicKey};
use crate::directory::{Directory, DirectoryError, normalise_address};
use crate::log::now_ms;
use crate::mailbox::incoming::{DeliveryEnvelope, deliver};
use crate::metrics;
use crate::store::SharedStore;
use crate::store::layout::UserId;

use super::quota::{self, Limits, Usage};
use super::reply::{DeliveryOutcome, RcptRefusal};
use super::session::{Delivery, Recipient, Resolution};

/// The separator of sub-addresses: `user+detail@domain` is delivered to
/// `user@domain`, the detail kept as a folder hint.
pub const DETAIL_SEPARATOR: char = '+';

/// Derives a user's store id from their normalised login (the cluster
/// secret lives with whoever builds the backend).
pub type UserIdFn = Arc<dyn Fn(&str) -> UserId + Send + Sync>;

/// What the LMTP server needs of the rest of Facteur.
#[derive(Clone)]
pub struct Backend {
    pub store: SharedStore,
    pub directory: Arc<dyn Directory>,
    pub keyrings: KeyringStore,
    /// Authenticates the delivery records written (derived from the
    /// cluster secret, as the IMAP side that drains them).
    pub records: RecordAuth,
    pub user_id: UserIdFn,
    /// Over quota answers 452 4.2.2 (the sender retries) instead of 552
    /// 5.2.2 (it bounces).
    pub quota_full_temporary: bool,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}

/// A resolved recipient's user: who to deliver to and how to seal.
#[derive(Clone, Debug)]
pub struct User {
    pub login: String,
    pub id: UserId,
    pub public_key: UserPublicKey,
    /// The user's quota, if any.
    pub quota: Option<Quota>,
}

/// A quota and the usage figure found at RCPT.
#[derive(Clone, Debug)]
pub struct Quota {
    /// Bytes and messages allowed (`UserRecord::quota_bytes`,
    /// `UserRecord::quota_messages`).
    pub limit: Limits,
    /// Usage when the recipient was accepted; `None` if unknown.
    pub usage: Option<Usage>,
}

/// Splits `local+detail@domain` into `local@domain` and `detail`.
fn strip_detail(address: &str) -> Option<(String, String)> {
    let (local, domain) = address.rsplit_once('@')?;
    let (user, detail) = local.split_once(DETAIL_SEPARATOR)?;
    if user.is_empty() || detail.is_empty() {
        return None;
    }
    Some((format!("{user}@{domain}"), detail.to_owned()))
}

impl Backend {
    /// Resolves one RCPT address; `declared_size` is MAIL FROM's `SIZE=`
    /// (0 if none).
    pub async fn resolve(&self, address: &str, declared_size: u64) -> Resolution<User> {
        let resolution = match self.lookup(address, declared_size).await {
            Ok(r) => r,
            Err(refusal) => Resolution::Refused(refusal),
        };
        metrics::lmtp_recipient(match &resolution {
            Resolution::Accepted(_) => "accepted",
            Resolution::Refused(RcptRefusal::Unknown) => "unknown",
            Resolution::Refused(RcptRefusal::NotActivated) => "not_activated",
            Resolution::Refused(RcptRefusal::Unavailable) => "unavailable",
            Resolution::Refused(RcptRefusal::DirectoryUnavailable) => "directory_unavailable",
            Resolution::Refused(RcptRefusal::BadAddress) => "bad_address",
            Resolution::Refused(RcptRefusal::OverQuota { .. }) => "over_quota",
        });
        resolution
    }

    async fn lookup(
        &self,
        address: &str,
        declared_size: u64,
    ) -> Result<Resolution<User>, RcptRefusal> {
        let normalised = normalise_address(address).map_err(|_| RcptRefusal::BadAddress)?;
        let mut found = self.find(&normalised).await?.map(|u| (u, None));
        if found.is_none()
            && let Some((base, detail)) = strip_detail(&normalised)
        {
            found = self.find(&base).await?.map(|u| (u, Some(detail)));
        }
        let Some((record, folder)) = found else {
            return Err(RcptRefusal::Unknown);
        };
        let id = (self.user_id)(&record.login);
        // The key is vouched for by the cluster secret: a key substituted in
        // the bucket is refused (temporarily, so the mail waits).
        let public_key = match self.keyrings.delivery_key(&id).await {
            Ok(Some(k)) => k,
            Ok(None) => return Err(RcptRefusal::NotActivated),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, login = %record.login, "lmtp: cannot load the delivery key");
                return Err(RcptRefusal::Unavailable);
            }
            Err(e) => {
                tracing::error!(error = %e, login = %record.login, "lmtp: delivery key refused");
                return Err(RcptRefusal::Unavailable);
            }
        };
        let quota = match record.quota() {
            None => None,
            Some(limit) => {
                // At least one byte: a mailbox already at its limit is
                // refused here, before the message is sent.
                let incoming = declared_size.max(1);
                let (fits, usage) =
                    quota::fits(&*self.store, &id, limit, incoming, None, now_ms()).await;
                if fits == Some(false) {
                    tracing::info!(login = %record.login, limit = ?limit, used = ?usage, "lmtp: over quota at RCPT");
                    return Err(RcptRefusal::OverQuota {
                        temporary: self.quota_full_temporary,
                    });
                }
                Some(Quota { limit, usage })
            }
        };
        Ok(Resolution::Accepted(Recipient {
            key: record.login.clone(),
            folder,
            user: User {
                public_key,
                login: record.login,
                id,
                quota,
            },
        }))
    }

    async fn find(
        &self,
        address: &str,
    ) -> Result<Option<crate::directory::UserRecord>, RcptRefusal> {
        match self.directory.find_address(address).await {
            Ok(r) => Ok(r),
            Err(DirectoryError::BadInput(_)) => Err(RcptRefusal::BadAddress),
            Err(e) => {
                tracing::warn!(error = %e, "lmtp: directory lookup failed");
                Err(RcptRefusal::DirectoryUnavailable)
            }
        }
    }

    /// Delivers a message to each of its users, one after the other (a
    /// message can be 50 MiB: one copy in flight at a time). Returns one
    /// outcome per [`Delivery::targets`] entry.
    pub async fn deliver(
        &self,
        delivery: &Delivery<User>,
        received_at: i64,
    ) -> Vec<DeliveryOutcome> {
        let mut outcomes = Vec::new();
        for target in delivery.targets() {
            let started = std::time::Instant::now();
            let message = delivery.message_for(&target, received_at);
            let envelope = DeliveryEnvelope {
                mail_from: delivery.mail_from.clone(),
                rcpt_to: target.rcpt_to.clone(),
                received_at,
                folder: target.folder.clone(),
            };
            let user = target.user;
            if let Some(q) = &user.quota {
                let (fits, usage) = quota::fits(
                    &*self.store,
                    &user.id,
                    q.limit,
                    message.len() as u64,
                    q.usage,
                    now_ms(),
                )
                .await;
                if fits == Some(false) {
                    tracing::info!(login = %user.login, limit = ?q.limit, used = ?usage, size = message.len(), "lmtp: over quota");
                    outcomes.push(DeliveryOutcome::OverQuota {
                        temporary: self.quota_full_temporary,
                    });
                    metrics::lmtp_delivery("over_quota", started.elapsed());
                    continue;
                }
            }
            let outcome = match deliver(
                &*self.store,
                &user.id,
                &user.public_key,
                &self.records,
                &message,
                envelope,
            )
            .await
            {
                Ok(receipt) => {
                    tracing::info!(
                        login = %user.login,
                        record = %receipt.record,
                        size = receipt.size,
                        "lmtp: delivered"
                    );
                    metrics::lmtp_delivery("delivered", started.elapsed());
                    DeliveryOutcome::Delivered
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        transient = e.is_transient(),
                        login = %user.login,
                        "lmtp: delivery failed"
                    );
                    metrics::lmtp_delivery("failed", started.elapsed());
                    DeliveryOutcome::Failed
                }
            };
            outcomes.push(outcome);
        }
        outcomes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_stripped_once() {
        assert_eq!(
            strip_detail("bob+lists+rust@example.org"),
            Some(("bob@example.org".into(), "lists+rust".into()))
        );
        assert_eq!(strip_detail("bob@example.org"), None);
        assert_eq!(strip_detail("+x@example.org"), None);
        assert_eq!(strip_detail("bob+@example.org"), None);
    }
}
