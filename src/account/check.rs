//! `facteur user check`: reads every object of one user — the mailbox
//! list's log and snapshots, every mailbox's log, snapshots and summary
//! pages, and the body of every shown message — and reports what is
//! damaged (does not open) or missing. With `repair`, it fixes what can
//! be fixed without the lost data:
//!
//! - a log with lost or damaged ops gets a new snapshot of what survives
//!   (ops applied without their lost parents, the UIDs held back for
//!   damaged ops), so that no instance opening it later waits for a lost
//!   op; then its damaged op objects and snapshots are deleted;
//! - messages whose body is missing or damaged are expunged (nothing can
//!   show them);
//! - summary pages that are missing or damaged are forgotten, and the
//!   summaries of their messages computed again from the bodies.
//!
//! The check gives up a missing parent as soon as a complete listing
//! lacks it (no grace period, unlike a serving instance: the
//! administrator asked).
//!
//! Not repaired: a lost mailbox-list op (a folder it created is no longer
//! listed; its log is reported as unlisted), and ops deleted with no
//! later op naming them (undetectable; see doc/consistency.md, "Damage").

use std::collections::BTreeSet;
use std::time::Duration;

use super::AccountError;
use crate::crypto::{UserKeys, open_body, purpose};
use crate::log::stored::{LogTuning, StoredLog};
use crate::log::{InstanceId, State};
use crate::mailbox::body::{SummaryPage, encode_summary};
use crate::mailbox::list::MailboxList;
use crate::mailbox::summary::summarize;
use crate::mailbox::{MailboxOp, MailboxState, MessageId};
use crate::store::{ObjectStore, layout, list_all};

/// What a check found (and repaired).
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Objects read.
    pub objects: usize,
    /// Mailbox logs checked (the list's not counted).
    pub mailboxes: usize,
    /// Messages whose body was read.
    pub messages: usize,
    /// What is damaged or missing, one line each.
    pub problems: Vec<String>,
    /// What was repaired, one line each.
    pub repaired: Vec<String>,
}

/// Tuning for the logs a check opens: a missing parent is given up at
/// once (see the module doc); nothing else differs.
fn tuning() -> LogTuning {
    LogTuning {
        lost_after: Duration::ZERO,
        ..LogTuning::default()
    }
}

/// Checks (and with `repair`, repairs) every object of `user`.
pub async fn check_user(
    store: &dyn ObjectStore,
    user: &layout::UserId,
    keys: &UserKeys,
    repair: bool,
) -> Result<CheckReport, AccountError> {
    let instance = InstanceId::new("check").expect("a valid instance id");
    let mut report = CheckReport {
        // The keyring: it opened, or there would be no keys.
        objects: 1,
        ..CheckReport::default()
    };
    let prefix = layout::user_prefix(user);

    let mut list = StoredLog::open(
        store,
        keys.master().subkey(purpose::MAILBOX_LIST),
        format!("{prefix}list/"),
        instance.clone(),
        tuning(),
        MailboxList::new,
    )
    .await?;
    check_log(store, &mut list, "mailbox list", repair, &mut report).await?;
    let mut listed: Vec<(String, String, u32)> = list
        .state()
        .mailboxes()
        .map(|m| (m.id.to_hex(), m.name.to_owned(), m.uid_validity))
        .collect();
    listed.extend(list.state().deleted().into_iter().map(|d| {
        (
            d.id.to_hex(),
            format!("{} (deleted)", d.name),
            d.uid_validity,
        )
    }));

    for (id, name, uid_validity) in &listed {
        let mut log = StoredLog::open(
            store,
            keys.master().subkey(purpose::MAILBOX),
            format!("{prefix}mbox/{id}/"),
            instance.clone(),
            tuning(),
            || MailboxState::new(*uid_validity),
        )
        .await?;
        report.mailboxes += 1;
        let what = format!("mailbox {name:?} ({id})");
        check_messages(store, user, &mut log, &what, repair, &mut report).await?;
        check_log(store, &mut log, &what, repair, &mut report).await?;
    }

    // Mailbox logs the list does not name: a lost list op created them.
    let known: BTreeSet<&str> = listed.iter().map(|(id, _, _)| id.as_str()).collect();
    let mut unlisted = BTreeSet::new();
    for meta in list_all(store, &format!("{prefix}mbox/"), None).await? {
        let rest = &meta.key[prefix.len() + "mbox/".len()..];
        if let Some((id, _)) = rest.split_once('/')
            && !known.contains(id)
        {
            unlisted.insert(id.to_owned());
        }
    }
    for id in unlisted {
        report.problems.push(format!(
            "mailbox log {id} is not in the mailbox list (a lost list op created it); \
             not repaired"
        ));
    }
    Ok(report)
}

/// Reports the damage of one log and reads its snapshots; repairs it.
async fn check_log<S>(
    store: &dyn ObjectStore,
    log: &mut StoredLog<S>,
    what: &str,
    repair: bool,
    report: &mut CheckReport,
) -> Result<(), AccountError>
where
    S: State + serde::Serialize + serde::de::DeserializeOwned,
    S::Op: serde::Serialize + serde::de::DeserializeOwned,
{
    let (snapshots, damaged_snapshots) = log.check_snapshots(store).await?;
    report.objects += snapshots + log.replica().dag().len();
    let mut seen = BTreeSet::new();
    for d in log.damaged().iter().chain(&damaged_snapshots) {
        if seen.insert(d.name.clone()) {
            report
                .problems
                .push(format!("{what}: {}: {}", d.name, d.reason));
        }
    }
    for id in log.missing_parents() {
        report.problems.push(format!(
            "{what}: op {id} is missing and ops still wait for it"
        ));
    }
    if repair {
        let (snapshot, deleted) = log.repair(store, &damaged_snapshots).await?;
        if let Some(snapshot) = snapshot {
            report.repaired.push(format!(
                "{what}: wrote snapshot {snapshot}, deleted {deleted} damaged objects"
            ));
        }
    }
    Ok(())
}

/// Reads the summary pages and the body of every shown message of a
/// mailbox; with `repair`, expunges messages whose body is gone and
/// summarises again those whose page is.
async fn check_messages(
    store: &dyn ObjectStore,
    user: &layout::UserId,
    log: &mut StoredLog<MailboxState>,
    what: &str,
    repair: bool,
    report: &mut CheckReport,
) -> Result<(), AccountError> {
    let side = log.side();
    let mut lost_pages = Vec::new();
    let mut lost_summaries: BTreeSet<MessageId> = BTreeSet::new();
    for name in log.state().summary_pages().to_vec() {
        report.objects += 1;
        let page = match store.get(&side.object_key(&name)).await {
            Ok(sealed) => side
                .open(&name, &sealed)
                .map_err(|e| e.to_string())
                .and_then(|plain| {
                    SummaryPage::decode(bytes::Bytes::from(plain)).map_err(|e| e.to_string())
                }),
            Err(e) if e.is_not_found() => Err("missing".to_owned()),
            Err(e) => return Err(e.into()),
        };
        if let Err(reason) = page {
            report
                .problems
                .push(format!("{what}: summary page {name}: {reason}"));
            lost_pages.push(name);
        }
    }
    if !lost_pages.is_empty() {
        // Which messages they held: those whose summary is now unknown.
        let state = log.state_mut();
        state.pages_lost(&lost_pages);
        lost_summaries.extend(
            state
                .messages()
                .filter(|m| {
                    matches!(
                        state.summary_at(&m.id),
                        crate::mailbox::state::SummaryAt::Unknown
                    )
                })
                .map(|m| m.id),
        );
    }

    let messages: Vec<(u32, MessageId, crate::mailbox::MessageRef)> = log
        .state()
        .messages()
        .map(|m| (m.uid, m.id, m.message.to_ref()))
        .collect();
    let mut dangling = Vec::new();
    let mut summaries = Vec::new();
    for (uid, id, message) in messages {
        report.objects += 1;
        report.messages += 1;
        let key = layout::blob(user, &message.blob_id);
        let limit = usize::try_from(message.size).unwrap_or(usize::MAX);
        let body = match store.get(&key).await {
            Ok(sealed) => open_body(message.body_key.key(), &key, &sealed, limit)
                .map_err(|e| format!("cannot decrypt: {e}")),
            Err(e) if e.is_not_found() => Err("missing".to_owned()),
            Err(e) => return Err(e.into()),
        };
        match body {
            Ok(body) if lost_summaries.contains(&id) => {
                summaries.push((id, encode_summary(&summarize(&body))));
            }
            Ok(_) => {}
            Err(reason) => {
                report
                    .problems
                    .push(format!("{what}: body of UID {uid} ({key}): {reason}"));
                dangling.push((uid, id));
            }
        }
    }
    if !repair {
        return Ok(());
    }
    if !summaries.is_empty() {
        report.repaired.push(format!(
            "{what}: summarised {} messages again",
            summaries.len()
        ));
        log.state_mut().hold_summaries(summaries);
    }
    if !dangling.is_empty() {
        let uids: Vec<String> = dangling.iter().map(|(uid, _)| uid.to_string()).collect();
        let ids = dangling.into_iter().map(|(_, id)| id).collect();
        log.append(store, MailboxOp::Expunge(ids)).await?;
        report.repaired.push(format!(
            "{what}: expunged UIDs {} (their bodies are gone)",
            uids.join(",")
        ));
    }
    if !lost_pages.is_empty() {
        // The next snapshot holds the summaries again; repair writes one
        // if the log is damaged too, else do it here.
        if log.damaged().is_empty() {
            let name = log.write_snapshot(store).await?;
            report.repaired.push(format!(
                "{what}: wrote snapshot {name} without the lost pages"
            ));
        }
    }
    Ok(())
}
