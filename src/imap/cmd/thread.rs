//! THREAD and UID THREAD (RFC 5256 §3); the algorithms are
//! [`crate::imap::thread`]'s.

use imap_codec::imap_types::core::Charset;
use imap_codec::imap_types::extensions::thread::ThreadingAlgorithm;
use imap_codec::imap_types::search::SearchKey;

use super::search::{require_charset, scan, scope};
use crate::imap::response::{Done, Failure, Out, Outcome};
use crate::imap::search::Query;
use crate::imap::state::Selected;
use crate::imap::thread::{self, Threadable};
use crate::mailbox::summary::Parts;

/// THREAD and UID THREAD (RFC 5256 §3; algorithms in [`crate::imap::thread`]).
pub async fn thread(
    selected: &mut Selected,
    algorithm: &ThreadingAlgorithm<'_>,
    charset: &Charset<'_>,
    keys: &[SearchKey<'_>],
    by_uid: bool,
    out: &mut Out<'_>,
) -> Outcome {
    let references = match algorithm {
        ThreadingAlgorithm::References => true,
        ThreadingAlgorithm::OrderedSubject => false,
        ThreadingAlgorithm::Other(other) => {
            return Err(Failure::bad(format!(
                "Unknown threading algorithm {}",
                other.as_ref()
            )));
        }
    };
    require_charset(Some(charset))?;
    let query = Query::new(keys, scope(selected));
    let mut items: Vec<Threadable> = Vec::new();
    scan(selected, &query, Some(Parts::ALL), out, |c| {
        items.push(Threadable::new(c.seq, c.uid, c.internal_date, c.summary));
    })
    .await?;
    let threads = if references {
        thread::references(&items)
    } else {
        thread::ordered_subject(&items)
    };
    let list = threads.write(|i| {
        let uid = items[i].uid;
        if by_uid {
            uid
        } else {
            selected.seq_of(uid).unwrap_or(items[i].seq)
        }
    });
    if list.is_empty() {
        out.untagged("THREAD");
    } else {
        out.untagged(&format!("THREAD {list}"));
    }
    Done::ok(if by_uid {
        "UID THREAD completed"
    } else {
        "THREAD completed"
    })
}
