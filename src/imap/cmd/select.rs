//! SELECT and EXAMINE (RFC 9051 §6.3.2, §6.3.3) with CONDSTORE and
//! QRESYNC parameters (RFC 7162 §3.1.8, §3.2.5). The session swaps its
//! state; this opens the mailbox and queues what the client is told.

use imap_codec::imap_types::command::SelectParameter;
use imap_codec::imap_types::fetch::MessageDataItemName;
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::sequence::SequenceSet;

use super::fetch;
use crate::imap::response::{Failure, Out};
use crate::imap::state::{Authed, Selected, name_of};

/// The client's state from a SELECT (QRESYNC ...) parameter.
#[derive(Debug)]
pub struct Resync {
    uid_validity: u32,
    modseq: u64,
    known_uids: Option<SequenceSet>,
}

/// SELECT/EXAMINE parameters (RFC 7162 §3.1.8: `(CONDSTORE)` enables
/// CONDSTORE; §3.2.5 `(QRESYNC (...))` asks for what changed).
pub fn parameters(
    authed: &mut Authed,
    parameters: &[SelectParameter],
) -> Result<Option<Resync>, Failure> {
    let mut resync = None;
    for p in parameters {
        match p {
            SelectParameter::CondStore => authed.enabled.condstore = true,
            SelectParameter::QResync {
                uid_validity,
                mod_sequence_value,
                known_uids,
                ..
            } => {
                // RFC 7162 §3.2.5: only after ENABLE QRESYNC.
                if !authed.enabled.qresync {
                    return Err(Failure::bad("ENABLE QRESYNC first"));
                }
                resync = Some(Resync {
                    uid_validity: uid_validity.get(),
                    modseq: mod_sequence_value.get(),
                    known_uids: known_uids.clone(),
                });
            }
        }
    }
    Ok(resync)
}

/// Opens `mailbox` for `authed`, queueing the untagged responses of a
/// SELECT (and, with `resync`, what changed since the client's visit).
pub async fn open(
    authed: &mut Authed,
    mailbox: &Mailbox<'_>,
    read_only: bool,
    resync: Option<Resync>,
    out: &mut Out<'_>,
) -> Result<Selected, Failure> {
    let name = name_of(authed, mailbox)?;
    let mut selected = Selected::open(authed, &name, read_only, out).await?;
    // Ops or objects of this mailbox or of the mailbox list found lost
    // or unreadable in the store: told once per session (RFC 9051
    // §7.1 ALERT), details in the server log and `facteur user check`.
    if !authed.damage_told {
        let mut damage = selected.mailbox.damage().await.len();
        if let Ok(folders) = authed.account.folders().await {
            damage += folders.damage().await.len();
        }
        if damage > 0 {
            authed.damage_told = true;
            out.untagged(
                "OK [ALERT] Some of this account's data is damaged or missing in the \
                 store; tell the administrator (facteur user check)",
            );
        }
    }
    if let Some(resync) = resync
        && resync.uid_validity == selected.folder.uid_validity
    {
        // RFC 7162 §3.2.5: what changed since the client's last
        // visit: VANISHED (EARLIER), then the changed flags.
        let gone = selected.vanished_among(resync.known_uids.as_ref()).await;
        if !gone.is_empty() {
            out.untagged(&format!("VANISHED (EARLIER) {gone}"));
        }
        let uids = selected.uids().to_vec();
        fetch::fetch(
            &mut selected,
            &uids,
            vec![MessageDataItemName::Uid, MessageDataItemName::Flags],
            true,
            Some(resync.modseq),
            authed.enabled.condstore,
            out,
        )
        .await?;
    }
    Ok(selected)
}
