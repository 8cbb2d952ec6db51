//! COPY (RFC 9051 §6.4.7) and MOVE (RFC 6851), with UIDPLUS's COPYUID
//! (RFC 4315 §3).

use crate::account::AccountError;
use crate::imap::response::{Done, Out, Outcome, code_owned};
use crate::imap::state::{Authed, Selected, encode_name, sequence_set_string, try_create};

/// COPY and MOVE: `OK [COPYUID ...]` (for MOVE an untagged OK before the
/// EXPUNGE responses, RFC 6851 §4.3).
pub async fn copy(
    authed: &Authed,
    selected: &mut Selected,
    uids: &[u32],
    target: &str,
    moving: bool,
    out: &mut Out<'_>,
) -> Outcome {
    let (_, destination) = match authed.account.open_by_name(target).await {
        Ok(found) => found,
        Err(AccountError::NoSuchMailbox(_)) => {
            return Err(try_create(&encode_name(authed, target)));
        }
        Err(e) => return Err(e.into()),
    };
    if uids.is_empty() {
        return Done::ok(if moving {
            "MOVE completed"
        } else {
            "COPY completed"
        });
    }
    let (sources, placed) = authed
        .account
        .copy(&selected.mailbox, uids, &destination, moving)
        .await?;
    let pairs: Vec<(u32, u32)> = sources
        .iter()
        .zip(placed.uids.iter())
        .filter_map(|(s, d)| d.map(|d| (*s, d)))
        .collect();
    let copyuid = (!pairs.is_empty()).then(|| {
        // COPYUID lists both sets in the same order (RFC 4315 §3); the
        // compact form keeps ascending source order, which is ours.
        let src: Vec<u32> = pairs.iter().map(|p| p.0).collect();
        let dst: Vec<u32> = pairs.iter().map(|p| p.1).collect();
        format!(
            "COPYUID {} {} {}",
            placed.uid_validity,
            sequence_set_string(&src),
            ordered_set(&dst)
        )
    });
    if moving {
        if let Some(c) = copyuid {
            out.ok(Some(code_owned(c)), "Moved");
        }
        return Done::ok("MOVE completed");
    }
    match copyuid {
        Some(c) => Done::with_code(code_owned(c), "COPY completed"),
        None => Done::ok("COPY completed"),
    }
}

/// A UID set in the given order (destination UIDs of COPYUID follow the
/// source order, which need not be ascending); runs are compacted.
fn ordered_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    if sorted == uids {
        return sequence_set_string(uids);
    }
    uids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
