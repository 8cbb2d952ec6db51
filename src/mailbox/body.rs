//! A new message body as stored (doc/storage.md, "Encryption"), the one path
//! shared by APPEND and LMTP delivery: line endings normalised to CRLF (so
//! sizes and offsets are those IMAP clients see; the bodies of `binary` parts
//! of a literal8 APPEND excepted, see `summary::LineEnds`), the summary
//! computed once, zstd-compressed and sealed under the body's own random key as
//! `users/<u>/blob/<blob-id>`. Pure and CPU-heavy: callers run it on the
//! blocking pool, then PUT the sealed bytes.

use bytes::Bytes;

use serde::{Deserialize, Serialize};

use super::op::{BodyKey, MessageId, MessageRef};
use super::summary::{LineEnds, MessageSummary, normalize_line_ends, summarize};
use crate::crypto::seal_body;
use crate::store::layout::{self, UserId};

/// A body ready to be stored.
pub struct SealedBody {
    pub blob_id: String,
    /// `users/<u>/blob/<blob-id>`.
    pub object_key: String,
    pub sealed: Bytes,
    pub body_key: BodyKey,
    /// RFC822.SIZE: octets after line end normalisation.
    pub size: u64,
    pub summary: MessageSummary,
}

/// Normalises (as `line_ends` says), summarises and seals `raw` as a new
/// blob of `user`; `now_ms` dates the blob id (body collection spares
/// young blobs).
pub fn seal_new_body(user: &UserId, raw: &[u8], line_ends: LineEnds, now_ms: u64) -> SealedBody {
    let message = normalize_line_ends(raw, line_ends);
    let summary = summarize(&message);
    let blob_id = layout::new_blob_id(now_ms);
    let object_key = layout::blob(user, &blob_id);
    let body_key = BodyKey::random();
    let sealed = Bytes::from(seal_body(body_key.key(), &object_key, &message));
    SealedBody {
        blob_id,
        object_key,
        sealed,
        body_key,
        size: message.len() as u64,
        summary,
    }
}

/// The summary as `MessageRef::summary` carries it: JSON.
pub fn encode_summary(summary: &MessageSummary) -> Vec<u8> {
    // A tree of strings and numbers: encoding cannot fail.
    serde_json::to_vec(summary).unwrap_or_default()
}

/// Reads back what [`encode_summary`] wrote. A message whose summary was
/// paged out (`mailbox::state`) has none here: read it through
/// `account::mailbox::Mailbox::summaries`.
pub fn decode_summary(message: &MessageRef) -> Result<MessageSummary, serde_json::Error> {
    serde_json::from_slice(&message.summary)
}

/// Messages per summary page: a page is one GET of about 250 KiB sealed
/// (summaries average 4.5 KB), and SEARCH walks messages 256 at a time.
pub const PAGE_MESSAGES: usize = 256;

/// A summary page (a side object of the mailbox log, see
/// `mailbox::state`): the summaries of some messages, as their ops
/// carried them.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryPage {
    pub summaries: Vec<PagedSummary>,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PagedSummary {
    pub id: MessageId,
    #[serde(with = "super::op::base64_bytes")]
    pub summary: Vec<u8>,
}

impl SummaryPage {
    pub fn encode(&self) -> Vec<u8> {
        // Ids and strings only: encoding cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<SummaryPage, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::open_body;

    #[test]
    fn a_sealed_body_opens_to_the_crlf_message_under_its_own_name() {
        let user = UserId::parse(&"ab".repeat(32)).unwrap();
        let body = seal_new_body(
            &user,
            b"Subject: hi\n\nbody\n",
            LineEnds::Crlf,
            1_700_000_000_000,
        );
        assert_eq!(layout::blob_id_time(&body.blob_id), Some(1_700_000_000_000));
        assert_eq!(body.object_key, layout::blob(&user, &body.blob_id));
        let plain =
            open_body(body.body_key.key(), &body.object_key, &body.sealed, 1 << 20).unwrap();
        assert_eq!(plain, b"Subject: hi\r\n\r\nbody\r\n");
        assert_eq!(body.size, plain.len() as u64);
        assert!(
            open_body(
                body.body_key.key(),
                "users/x/blob/other",
                &body.sealed,
                1 << 20
            )
            .is_err()
        );
    }
}
