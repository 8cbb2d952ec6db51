//! EXPUNGE and UID EXPUNGE (RFC 9051 §6.4.3, RFC 4315 §2.1), and CLOSE's
//! silent expunge (§6.4.2).

use crate::imap::response::Failure;
use crate::imap::state::Selected;

/// Expunges the messages flagged \Deleted (among `only`, for UID
/// EXPUNGE). The EXPUNGE responses follow from the session's report.
pub async fn expunge_deleted(selected: &mut Selected, only: Option<&[u32]>) -> Result<(), Failure> {
    let deleted: Vec<u32> = selected
        .mailbox
        .read(|s| {
            s.uids_with_flag("\\Deleted")
                .into_iter()
                .filter(|u| only.is_none_or(|o| o.binary_search(u).is_ok()))
                .collect()
        })
        .await;
    if !deleted.is_empty() {
        selected.mailbox.expunge(&deleted).await?;
    }
    Ok(())
}
