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
use crate::log::OpId;
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

/// First bytes of a summary page in the framed format (a page of the first
/// format is JSON and starts with `{`).
const PAGE_MAGIC: &[u8; 4] = b"\0sp1";

/// Bytes of one entry of a framed page's table: op id, index, length.
const PAGE_ENTRY: usize = 16 + 4 + 4;

/// A summary page (a side object of the mailbox log, see
/// `mailbox::state`): the summaries of some messages, as their ops
/// carried them.
///
/// Stored framed: [`PAGE_MAGIC`], the count (u32, big-endian), a table of
/// `(op id, index, length)` per summary, then the summaries end to end.
/// Reading one is slicing: no parse, no copy, no base64, so a FETCH of
/// every envelope of a large mailbox pays for the summaries it decodes,
/// not for the pages around them. Pages of the first format (JSON, the
/// summaries in base64) are still read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SummaryPage {
    pub summaries: Vec<PagedSummary>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct PagedSummary {
    pub id: MessageId,
    pub summary: Bytes,
}

/// Why a summary page cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("bad summary page: {0}")]
    Json(#[from] serde_json::Error),
    #[error("bad summary page: {0}")]
    Framed(&'static str),
}

/// The first format of a page: JSON, each summary in base64.
#[derive(Serialize, Deserialize)]
struct JsonPage {
    summaries: Vec<JsonSummary>,
}

#[derive(Serialize, Deserialize)]
struct JsonSummary {
    id: MessageId,
    #[serde(with = "super::op::base64_bytes")]
    summary: Vec<u8>,
}

impl SummaryPage {
    /// The framed form.
    ///
    /// # Panics
    ///
    /// If the page holds 4 GiB or more, or more than `u32::MAX` summaries
    /// (pages hold [`PAGE_MESSAGES`] summaries of at most a few megabytes).
    pub fn encode(&self) -> Vec<u8> {
        encode_framed(
            PAGE_MAGIC,
            self.summaries.iter().map(|s| (s.id, s.summary.as_ref())),
        )
    }

    /// Reads a page of either format. The summaries of a framed page are
    /// slices of `bytes` (which they keep alive: copy one that is kept
    /// longer than the page).
    pub fn decode(bytes: Bytes) -> Result<SummaryPage, PageError> {
        if !bytes.starts_with(PAGE_MAGIC) {
            let page: JsonPage = serde_json::from_slice(&bytes)?;
            return Ok(SummaryPage {
                summaries: page
                    .summaries
                    .into_iter()
                    .map(|s| PagedSummary {
                        id: s.id,
                        summary: Bytes::from(s.summary),
                    })
                    .collect(),
            });
        }
        let summaries = decode_framed(PAGE_MAGIC, &bytes)
            .map_err(PageError::Framed)?
            .into_iter()
            .map(|(id, summary)| PagedSummary { id, summary })
            .collect();
        Ok(SummaryPage { summaries })
    }
}

/// Bytes of a framed page (see [`encode_framed`]) of `entries` entries
/// holding `data` bytes in all.
pub(crate) const fn framed_len(entries: usize, data: usize) -> usize {
    PAGE_MAGIC.len() + 4 + entries * PAGE_ENTRY + data
}

/// The framed form of a page of per-message entries (summary pages, and
/// the index pages of `mailbox::text`): `magic`, the count (u32,
/// big-endian), a table of `(op id, index, length)` per entry, then the
/// entries end to end.
///
/// # Panics
///
/// If the page holds 4 GiB or more, or more than `u32::MAX` entries.
pub(crate) fn encode_framed<'a>(
    magic: &[u8; 4],
    entries: impl Iterator<Item = (MessageId, &'a [u8])> + Clone,
) -> Vec<u8> {
    let u32_of = |n: usize| u32::try_from(n).expect("pages are far under 4 GiB");
    let (count, data) = entries
        .clone()
        .fold((0, 0), |(n, len), (_, e)| (n + 1, len + e.len()));
    let mut out = Vec::with_capacity(framed_len(count, data));
    out.extend_from_slice(magic);
    out.extend_from_slice(&u32_of(count).to_be_bytes());
    for (id, entry) in entries.clone() {
        out.extend_from_slice(id.op.as_raw());
        out.extend_from_slice(&id.index.to_be_bytes());
        out.extend_from_slice(&u32_of(entry.len()).to_be_bytes());
    }
    for (_, entry) in entries {
        out.extend_from_slice(entry);
    }
    out
}

/// Reads what [`encode_framed`] wrote with `magic`: the entries are
/// slices of `bytes`. Anything else (another magic, a count or a length
/// beyond the bytes, trailing bytes) is an error.
pub(crate) fn decode_framed(
    magic: &[u8; 4],
    bytes: &Bytes,
) -> Result<Vec<(MessageId, Bytes)>, &'static str> {
    if !bytes.starts_with(magic) {
        return Err("not a framed page");
    }
    let u32_at = |at: usize| -> Result<u32, &'static str> {
        let b: [u8; 4] = bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or("truncated")?;
        Ok(u32::from_be_bytes(b))
    };
    let usize_of = |n: u32| usize::try_from(n).map_err(|_| "too large");
    let count = usize_of(u32_at(magic.len())?)?;
    let table = magic.len() + 4;
    // Checked before allocating: a count the bytes cannot hold.
    let mut data = count
        .checked_mul(PAGE_ENTRY)
        .and_then(|n| n.checked_add(table))
        .filter(|end| *end <= bytes.len())
        .ok_or("count beyond the page")?;
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let at = table + i * PAGE_ENTRY;
        let op: [u8; 16] = bytes[at..at + 16].try_into().map_err(|_| "truncated")?;
        let index = u32_at(at + 16)?;
        let len = usize_of(u32_at(at + 20)?)?;
        let end = data
            .checked_add(len)
            .filter(|end| *end <= bytes.len())
            .ok_or("entry beyond the page")?;
        let id = MessageId {
            op: OpId::from_raw(op),
            index,
        };
        entries.push((id, bytes.slice(data..end)));
        data = end;
    }
    if data != bytes.len() {
        return Err("trailing bytes");
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::open_body;

    fn sample_page() -> SummaryPage {
        let summaries = (0..5u8)
            .map(|i| PagedSummary {
                id: MessageId {
                    op: OpId::from_raw([i.wrapping_mul(37); 16]),
                    index: u32::from(i) * 1000 + 7,
                },
                // Empty, short, long; bytes JSON would escape.
                summary: Bytes::from(
                    br#"{"subject":"caf\u00e9 \"q\""}"#.repeat(usize::from(i) * 40),
                ),
            })
            .collect();
        SummaryPage { summaries }
    }

    #[test]
    fn framed_pages_round_trip_as_slices_of_the_page() {
        let page = sample_page();
        let bytes = Bytes::from(page.encode());
        assert!(bytes.starts_with(PAGE_MAGIC));
        let decoded = SummaryPage::decode(bytes.clone()).unwrap();
        assert_eq!(decoded, page);
        let range = bytes.as_ptr_range();
        for s in decoded.summaries.iter().filter(|s| !s.summary.is_empty()) {
            assert!(range.contains(&s.summary.as_ptr()), "a copy, not a slice");
        }
        assert_eq!(
            SummaryPage::decode(Bytes::from(SummaryPage::default().encode())).unwrap(),
            SummaryPage::default()
        );
    }

    /// Pages written before the framed format (JSON, base64) still read.
    #[test]
    fn json_pages_still_read() {
        let page = sample_page();
        let json = serde_json::to_vec(&JsonPage {
            summaries: page
                .summaries
                .iter()
                .map(|s| JsonSummary {
                    id: s.id,
                    summary: s.summary.to_vec(),
                })
                .collect(),
        })
        .unwrap();
        assert!(json.starts_with(b"{\"summaries\":[{\"id\":\""));
        assert_eq!(SummaryPage::decode(Bytes::from(json)).unwrap(), page);
        assert!(SummaryPage::decode(Bytes::from_static(b"{\"summaries\":[")).is_err());
        // A page as the first format wrote it, byte for byte.
        let golden = br#"{"summaries":[{"id":"000102030405060708090a0b0c0d0e0f.3","summary":"eyJhIjoxfQ=="}]}"#;
        let page = SummaryPage::decode(Bytes::from_static(golden)).unwrap();
        let op: [u8; 16] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            page.summaries,
            [PagedSummary {
                id: MessageId {
                    op: OpId::from_raw(op),
                    index: 3
                },
                summary: Bytes::from_static(br#"{"a":1}"#),
            }]
        );
    }

    /// Every damaged framed page is an error: cut anywhere, a byte added,
    /// a count or a length beyond the page (or overflowing).
    #[test]
    fn damaged_framed_pages_are_errors() {
        let encoded = sample_page().encode();
        for cut in PAGE_MAGIC.len()..encoded.len() {
            let err = SummaryPage::decode(Bytes::copy_from_slice(&encoded[..cut]));
            assert!(err.is_err(), "cut at {cut}");
        }
        let mut longer = encoded.clone();
        longer.push(b'x');
        assert!(SummaryPage::decode(Bytes::from(longer)).is_err());
        let with = |at: usize, value: u32| {
            let mut bytes = encoded.clone();
            bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
            SummaryPage::decode(Bytes::from(bytes))
        };
        let count_at = PAGE_MAGIC.len();
        let first_len_at = count_at + 4 + 20;
        for value in [6, 4, u32::MAX, u32::MAX / PAGE_ENTRY as u32 + 1] {
            assert!(with(count_at, value).is_err(), "count {value}");
        }
        for value in [1, u32::MAX, u32::MAX - 3] {
            assert!(with(first_len_at, value).is_err(), "length {value}");
        }
        assert!(with(count_at, 5).is_ok());
    }

    proptest::proptest! {
        /// Any bytes after the magic: an error or a page, never a panic,
        /// and a page's summaries cover the bytes exactly.
        #[test]
        fn any_framed_bytes_decode_or_fail(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let mut bytes = PAGE_MAGIC.to_vec();
            bytes.extend_from_slice(&tail);
            let total = bytes.len();
            if let Ok(page) = SummaryPage::decode(Bytes::from(bytes)) {
                let data: usize = page.summaries.iter().map(|s| s.summary.len()).sum();
                proptest::prop_assert_eq!(PAGE_MAGIC.len() + 4 + page.summaries.len() * PAGE_ENTRY + data, total);
            }
        }
    }

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
