//! FETCH (RFC 9051 §6.4.5, BINARY RFC 3516). Flags, dates and sizes come
//! from the mailbox state; ENVELOPE, BODYSTRUCTURE and header sections
//! from the summary stored with each message; only sections that need the
//! body download it, a few messages at a time ([`PARALLEL_BODIES`]), and
//! responses go out message by message, so a FETCH of many large messages
//! holds a bounded amount of memory. A batch asking for many short bodies
//! reads them from body packs instead, a GET per summary page
//! (`Mailbox::packed_bodies`, doc/storage.md, "Body packs").

use std::borrow::Cow;
use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroU64};

use bounded_static::IntoBoundedStatic;
use bytes::Bytes;
use futures::StreamExt;
use imap_codec::ResponseCodec;
use imap_codec::encode::Encoder as _;
use imap_codec::imap_types::core::{IString, Literal, LiteralMode, NString, NString8, Vec1};
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::extensions::binary::Literal8;
use imap_codec::imap_types::fetch::{
    MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName, Section,
};
use imap_codec::imap_types::flag::{Flag, FlagFetch};
use imap_codec::imap_types::response::{Data, Response};

use crate::account::AccountError;
use crate::account::mailbox::PACKED_FROM;
use crate::imap::mime;
use crate::imap::response::{Done, Failure, Out, Outcome, code};
use crate::imap::state::Selected;
use crate::mailbox::summary::{MessageSummary, Parts};

/// Bodies downloaded at once for one FETCH.
pub(crate) const PARALLEL_BODIES: usize = 4;

/// Messages whose summaries are read in one batch.
const SUMMARY_BATCH: usize = 256;
/// Batches of summaries read at once: while one is answered the next
/// ones are being fetched (on S3 a summary page is a GET of tens of
/// milliseconds). Memory: this many batches of summaries, about 9 MiB at
/// 4.5 KB a summary. On one Garage node, FETCH of 10,000 envelopes took
/// 1.9 s one batch at a time, 0.52 s with 4 ahead, 0.28 s with 8, with
/// no change in the process's peak memory (85 MiB) over that run.
pub const SUMMARY_BATCHES_AHEAD: usize = 8;

/// Runs `batch` as a task of its own, aborted if its result is dropped
/// unread. A batch read ahead must make progress while its command answers
/// the batch before it: the locks of a mailbox's state are fair, so a batch
/// polled only through `buffered` that was granted the write lock (to hold
/// summaries it computed again) or a read lock a writer waits behind would
/// keep it while the command waits for a read lock to answer its current
/// batch, and neither would ever move again.
pub(crate) fn read_ahead<T: Send + 'static>(
    batch: impl Future<Output = Result<T, AccountError>> + Send + 'static,
) -> impl Future<Output = Result<T, AccountError>> {
    let mut task = AbortOnDrop(tokio::spawn(batch));
    async move {
        (&mut task.0)
            .await
            .map_err(|e| AccountError::Internal(format!("reading a batch ahead: {e}")))?
    }
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The items a FETCH names, macros expanded.
pub fn items(names: MacroOrMessageDataItemNames<'static>) -> Vec<MessageDataItemName<'static>> {
    match names {
        MacroOrMessageDataItemNames::Macro(m) => m
            .expand()
            .into_iter()
            .map(IntoBoundedStatic::into_static)
            .collect(),
        MacroOrMessageDataItemNames::MessageDataItemNames(items) => items,
    }
}

/// Whether fetching `item` sets \Seen (RFC 9051 §6.4.5: BODY[...] and
/// BINARY[...] without .PEEK, RFC822, RFC822.TEXT).
fn sets_seen(item: &MessageDataItemName<'_>) -> bool {
    match item {
        MessageDataItemName::BodyExt { peek, .. } | MessageDataItemName::Binary { peek, .. } => {
            !peek
        }
        MessageDataItemName::Rfc822 | MessageDataItemName::Rfc822Text => true,
        _ => false,
    }
}

fn needs_summary(item: &MessageDataItemName<'_>) -> bool {
    match item {
        MessageDataItemName::Body
        | MessageDataItemName::BodyStructure
        | MessageDataItemName::Envelope
        | MessageDataItemName::Binary { .. }
        | MessageDataItemName::BinarySize { .. }
        | MessageDataItemName::Rfc822Header
        | MessageDataItemName::Rfc822Text => true,
        MessageDataItemName::BodyExt { .. } => !whole_message(item),
        _ => false,
    }
}

/// Whether `item` is the whole message (`BODY[]`, `RFC822`, partial or
/// not): its body alone answers it, without the summary.
fn whole_message(item: &MessageDataItemName<'_>) -> bool {
    matches!(
        item,
        MessageDataItemName::BodyExt { section: None, .. } | MessageDataItemName::Rfc822
    )
}

/// The parts of the summaries `items` read (see
/// [`MessageSummary::decode`]): ENVELOPE, BODY and BODYSTRUCTURE alone
/// (what clients fetch to list a mailbox) read only theirs; a section may
/// read the header and the structure, so it reads everything.
fn summary_parts(items: &[MessageDataItemName<'_>]) -> Parts {
    let mut parts = Parts::NONE;
    for item in items {
        match item {
            MessageDataItemName::Envelope => parts.envelope = true,
            MessageDataItemName::Body | MessageDataItemName::BodyStructure => parts.body = true,
            other if needs_summary(other) => return Parts::ALL,
            _ => {}
        }
    }
    parts
}

/// Whether `item` may need the message body (a header section may still
/// be answered from the summary).
fn may_need_body(item: &MessageDataItemName<'_>) -> bool {
    matches!(
        item,
        MessageDataItemName::BodyExt { .. }
            | MessageDataItemName::Binary { .. }
            | MessageDataItemName::BinarySize { .. }
            | MessageDataItemName::Rfc822
            | MessageDataItemName::Rfc822Text
            | MessageDataItemName::Rfc822Header
    )
}

/// What the state says of one message.
struct Meta {
    uid: u32,
    flags: Vec<String>,
    size: u64,
    internal_date: i64,
    modseq: u64,
    /// `\Recent` in this session (RFC 3501 §2.3.2).
    recent: bool,
    summary: Option<MessageSummary>,
}

pub async fn fetch(
    selected: &mut Selected,
    uids: &[u32],
    mut items: Vec<MessageDataItemName<'static>>,
    by_uid: bool,
    changed_since: Option<u64>,
    condstore: bool,
    out: &mut Out<'_>,
) -> Outcome {
    if by_uid && !items.iter().any(|i| matches!(i, MessageDataItemName::Uid)) {
        items.insert(0, MessageDataItemName::Uid);
    }
    // RFC 7162 §3.1.4: CHANGEDSINCE implies MODSEQ; with CONDSTORE on,
    // FLAGS come with MODSEQ.
    let wants_modseq = changed_since.is_some()
        || (condstore
            && items
                .iter()
                .any(|i| matches!(i, MessageDataItemName::Flags)));
    if wants_modseq
        && !items
            .iter()
            .any(|i| matches!(i, MessageDataItemName::ModSeq))
    {
        items.push(MessageDataItemName::ModSeq);
    }
    let filtered: Vec<u32>;
    let uids = match changed_since {
        Some(since) => {
            filtered = selected
                .mailbox
                .read(|s| {
                    uids.iter()
                        .copied()
                        .filter(|u| s.message(*u).is_some_and(|m| m.modseq > since))
                        .collect()
                })
                .await;
            &filtered[..]
        }
        None => uids,
    };
    let mut flags_changed: Vec<u32> = Vec::new();
    if !selected.read_only && items.iter().any(sets_seen) {
        let unseen: Vec<u32> = selected
            .mailbox
            .read(|s| {
                uids.iter()
                    .copied()
                    .filter(|u| s.message(*u).is_some_and(|m| !m.flags.contains(&"\\Seen")))
                    .collect()
            })
            .await;
        if !unseen.is_empty() {
            selected
                .mailbox
                .store_flags(&unseen, vec!["\\Seen".to_owned()], Vec::new())
                .await?;
            flags_changed = unseen;
        }
    }
    let with_flags = items
        .iter()
        .any(|i| matches!(i, MessageDataItemName::Flags));
    let origins: Vec<Option<u32>> = items.iter().map(binary_origin).collect();
    let summary_needed = items.iter().any(needs_summary);
    let parts = summary_parts(&items);
    let body_maybe = items.iter().any(may_need_body);

    let mut metas: Vec<Meta> = selected
        .mailbox
        .read(|s| {
            uids.iter()
                .filter_map(|uid| s.message(*uid))
                .map(|m| Meta {
                    uid: m.uid,
                    flags: m.flags.iter().map(|f| (*f).to_owned()).collect(),
                    size: m.message.size,
                    internal_date: m.message.internal_date,
                    modseq: m.modseq,
                    recent: false,
                    summary: None,
                })
                .collect()
        })
        .await;
    for meta in &mut metas {
        meta.recent = selected.is_recent(meta.uid);
    }
    if with_flags || !flags_changed.is_empty() {
        // RFC 3501 §7.2.6: keywords set since the last FLAGS response
        // (here or elsewhere) are announced before a FETCH shows them.
        selected.announce_keywords(
            metas
                .iter()
                .flat_map(|m| m.flags.iter().map(String::as_str)),
            out,
        );
    }
    for meta in &mut metas {
        // Past MAX_KEYWORDS, a keyword not in FLAGS is not shown.
        meta.flags.retain(|f| selected.shows(f));
    }

    let mailbox = selected.mailbox.clone();
    let items_ref = &items;
    let total = metas.len();
    // Batches end where summary pages do: each page (summaries, body
    // pack) is then read once, by one batch.
    let uids: Vec<u32> = metas.iter().map(|m| m.uid).collect();
    let lengths = mailbox.read(|s| s.page_chunks(&uids, SUMMARY_BATCH)).await;
    let mut chunks = Vec::with_capacity(lengths.len());
    for n in lengths {
        chunks.push(metas.drain(..n).collect::<Vec<Meta>>());
    }
    // Summaries in batches (they may sit in summary pages, a GET each),
    // the next ones read while a batch is answered.
    let reader = mailbox.clone();
    let batches = futures::stream::iter(chunks)
        .map(move |mut chunk| {
            let mailbox = reader.clone();
            read_ahead(async move {
                if summary_needed {
                    let uids: Vec<u32> = chunk.iter().map(|m| m.uid).collect();
                    let mut summaries: HashMap<u32, MessageSummary> = mailbox
                        .batch_parts(&uids, parts, total)
                        .await?
                        .into_iter()
                        .collect();
                    for meta in &mut chunk {
                        meta.summary = summaries.remove(&meta.uid);
                    }
                    // Expunged meanwhile by another session: nothing to show.
                    chunk.retain(|m| m.summary.is_some());
                }
                Ok::<_, AccountError>(chunk)
            })
        })
        .buffered(SUMMARY_BATCHES_AHEAD);
    let body_of = |meta: &Meta| {
        body_maybe
            && items_ref
                .iter()
                .any(|i| needs_body(i, meta.summary.as_ref()))
    };
    // Many bodies: from body packs, a GET per summary page (the mailbox
    // writes the packs missing first), those of the next batch read while
    // a batch is answered. Memory: the packed bodies of two batches, each
    // holding at most twice the bytes of its bodies (slices of packs they
    // are half of at least, else copies; `Mailbox::read_index`), at most
    // 256 bodies of at most 64 KiB: 3 MiB for 256 bodies of 11 KB.
    let packer = mailbox.clone();
    let mut batches = batches
        .map(move |chunk| {
            let wanted: Vec<u32> = match &chunk {
                Ok(chunk) => chunk.iter().filter(|m| body_of(m)).map(|m| m.uid).collect(),
                Err(_) => Vec::new(),
            };
            let mailbox = packer.clone();
            let packs = (wanted.len() >= PACKED_FROM)
                .then(|| read_ahead(async move { Ok(mailbox.packed_bodies(&wanted).await) }));
            async move {
                let chunk = chunk?;
                // Best effort, as packs are: bodies not found there are
                // read alone.
                let packed = match packs {
                    Some(packs) => packs.await.unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "body packs not read");
                        HashMap::new()
                    }),
                    None => HashMap::new(),
                };
                Ok::<_, AccountError>((chunk, packed))
            }
        })
        .buffered(2);
    while let Some(next) = batches.next().await {
        let (chunk, mut packed) = next?;
        let mut loaded = futures::stream::iter(chunk)
            .map(|meta| {
                let mailbox = mailbox.clone();
                let wanted = body_of(&meta);
                let packed = packed.remove(&meta.uid);
                async move {
                    let body = match (wanted, packed) {
                        (false, _) => None,
                        (true, Some(body)) => Some(body),
                        (true, None) => Some(mailbox.body(meta.uid).await?),
                    };
                    Ok::<_, AccountError>((meta, body))
                }
            })
            .buffered(PARALLEL_BODIES);

        while let Some(next) = loaded.next().await {
            let (meta, body) = match next {
                Ok(loaded) => loaded,
                // Expunged meanwhile by another session: nothing to show.
                Err(AccountError::NoSuchMessage(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            let Some(seq) = selected.seq_of(meta.uid) else {
                continue;
            };
            let mut data: Vec<MessageDataItem<'_>> = Vec::with_capacity(items.len() + 1);
            for item in &items {
                data.push(render(item, &meta, body.as_ref())?);
            }
            if !with_flags && flags_changed.contains(&meta.uid) {
                // RFC 7162 §3.2.4: with CONDSTORE on, the \Seen change
                // comes with UID and MODSEQ, as any flag change does.
                if condstore && !items.contains(&MessageDataItemName::Uid) {
                    data.push(render(&MessageDataItemName::Uid, &meta, None)?);
                }
                data.push(MessageDataItem::Flags(fetch_flags(&meta)));
                if condstore
                    && !items
                        .iter()
                        .any(|i| matches!(i, MessageDataItemName::ModSeq))
                {
                    data.push(render(&MessageDataItemName::ModSeq, &meta, None)?);
                }
            }
            let Ok(data) = Vec1::try_from(data) else {
                continue;
            };
            let Some(seq) = NonZeroU32::new(seq) else {
                continue;
            };
            queue_fetch(out, seq, data, &origins);
            out.flush_if_full().await?;
        }
    }
    if !flags_changed.is_empty() {
        // The \Seen changes were just reported with the messages.
        let highest = selected.mailbox.read(|s| s.highest_modseq()).await;
        if highest == selected.known_modseq() + 1 {
            selected.flags_reported_up_to(highest);
        }
    }
    Done::ok(if by_uid {
        "UID FETCH completed"
    } else {
        "FETCH completed"
    })
}

/// The origin octet a partial `BINARY[...]<offset.length>` answer names.
fn binary_origin(item: &MessageDataItemName<'_>) -> Option<u32> {
    match item {
        MessageDataItemName::Binary {
            partial: Some((offset, _)),
            ..
        } => Some(*offset),
        _ => None,
    }
}

/// Queues `* seq FETCH (...)`. A partial BINARY answer names its origin,
/// `BINARY[5]<0> ~{7}` (RFC 3516 §4.3: "If <number> is present, it refers
/// to the offset within the DECODED section data"), which imap-types'
/// `MessageDataItem::Binary` cannot carry: such a response is put together
/// item by item, each encoded by imap-codec, the origin written after its
/// section. `origins` is parallel to `data` (shorter is fine: no origin).
fn queue_fetch(
    out: &mut Out<'_>,
    seq: NonZeroU32,
    data: Vec1<MessageDataItem<'_>>,
    origins: &[Option<u32>],
) {
    if origins.iter().all(Option::is_none) {
        out.data(Data::Fetch { seq, items: data });
        return;
    }
    let prefix = format!("* {seq} FETCH (");
    let mut response = prefix.clone().into_bytes();
    for (n, item) in data.into_inner().into_iter().enumerate() {
        let one = ResponseCodec::default()
            .encode(&Response::Data(Data::Fetch {
                seq,
                items: Vec1::from(item),
            }))
            .dump();
        // `* seq FETCH (` item `)\r\n`, as imap-codec writes one item.
        let Some(item) = one
            .strip_prefix(prefix.as_bytes())
            .and_then(|rest| rest.strip_suffix(b")\r\n"))
        else {
            continue;
        };
        if n > 0 {
            response.push(b' ');
        }
        match (
            origins.get(n).copied().flatten(),
            item.iter().position(|&b| b == b']'),
        ) {
            // `BINARY[` section `]`: the section holds digits and dots.
            (Some(origin), Some(close)) => {
                response.extend_from_slice(&item[..=close]);
                response.extend_from_slice(format!("<{origin}>").as_bytes());
                response.extend_from_slice(&item[close + 1..]);
            }
            _ => response.extend_from_slice(item),
        }
    }
    response.extend_from_slice(b")\r\n");
    out.raw(&response);
}

/// Whether answering `item` for this message needs its body.
fn needs_body(item: &MessageDataItemName<'_>, summary: Option<&MessageSummary>) -> bool {
    if whole_message(item) {
        return true;
    }
    // Without its summary (not read: no item needs it) no other item asks
    // for the body.
    let Some(summary) = summary else {
        return false;
    };
    match item {
        MessageDataItemName::BodyExt { section, .. } => {
            mime::section_from_header(summary, section.as_ref()).is_none()
        }
        MessageDataItemName::Rfc822Header => {
            mime::section_from_header(summary, Some(&Section::Header(None))).is_none()
        }
        MessageDataItemName::Binary { .. }
        | MessageDataItemName::BinarySize { .. }
        | MessageDataItemName::Rfc822
        | MessageDataItemName::Rfc822Text => true,
        _ => false,
    }
}

pub fn flags_of(flags: &[String]) -> Vec<FlagFetch<'static>> {
    flags
        .iter()
        .filter_map(|f| Flag::try_from(f.as_str()).ok().map(|f| f.into_static()))
        .map(FlagFetch::Flag)
        .collect()
}

/// FLAGS of one message: its flags, and `\Recent` if it is recent in
/// this session.
fn fetch_flags(meta: &Meta) -> Vec<FlagFetch<'static>> {
    let mut flags = flags_of(&meta.flags);
    if meta.recent {
        flags.push(FlagFetch::Recent);
    }
    flags
}

fn date_of(seconds: i64) -> DateTime {
    let utc = chrono::DateTime::from_timestamp(seconds, 0).unwrap_or_default();
    let fixed =
        utc.with_timezone(&chrono::FixedOffset::east_opt(0).expect("UTC is a valid offset"));
    DateTime::try_from(fixed).unwrap_or_else(|_| DateTime::unvalidated(fixed))
}

/// An nstring carrying message bytes: a literal, borrowing `bytes` if it
/// can. NUL cannot appear in an IMAP literal (RFC 9051 §4.3: a literal is
/// CHAR8, %x01-ff, which is all `Literal::validate` checks); like Dovecot
/// we send it as 0x80.
fn nstring_lossless<'a>(bytes: impl Into<Cow<'a, [u8]>>) -> NString<'a> {
    let bytes = bytes.into();
    let data: Cow<'a, [u8]> = if memchr::memchr(0, &bytes).is_some() {
        Cow::Owned(
            bytes
                .iter()
                .map(|b| if *b == 0 { 0x80 } else { *b })
                .collect(),
        )
    } else {
        bytes
    };
    // No NUL left: valid (a debug build checks it again).
    NString(Some(IString::Literal(Literal::unvalidated(data))))
}

fn summary_of(meta: &Meta) -> Result<&MessageSummary, Failure> {
    meta.summary
        .as_ref()
        .ok_or_else(|| Failure::Internal("summary not loaded".into()))
}

fn body_of(body: Option<&Bytes>) -> Result<&[u8], Failure> {
    body.map(|b| b.as_ref())
        .ok_or_else(|| Failure::Internal("body not loaded".into()))
}

/// RFC 3516 §4.3: `NO [UNKNOWN-CTE]` for an encoding we cannot undo; a
/// body invalid in its encoding is `NO [PARSE]`, as Dovecot answers.
fn binary_failure(e: mime::BinaryError) -> Failure {
    match e {
        mime::BinaryError::UnknownEncoding(cte) => Failure::no(
            Some(code("UNKNOWN-CTE")),
            format!("Unknown Content-Transfer-Encoding {cte}"),
        ),
        other => Failure::no(Some(code("PARSE")), other.to_string()),
    }
}

/// One item of a FETCH response. The whole message (`BODY[]`, `RFC822`,
/// partial or not) borrows `body`: a download copies each body once less.
fn render<'a>(
    item: &MessageDataItemName<'static>,
    meta: &Meta,
    body: Option<&'a Bytes>,
) -> Result<MessageDataItem<'a>, Failure> {
    Ok(match item {
        MessageDataItemName::Uid => MessageDataItem::Uid(
            NonZeroU32::new(meta.uid).ok_or_else(|| Failure::Internal("UID 0".into()))?,
        ),
        MessageDataItemName::Flags => MessageDataItem::Flags(fetch_flags(meta)),
        MessageDataItemName::InternalDate => {
            MessageDataItem::InternalDate(date_of(meta.internal_date))
        }
        MessageDataItemName::Rfc822Size => {
            MessageDataItem::Rfc822Size(u32::try_from(meta.size).unwrap_or(u32::MAX))
        }
        MessageDataItemName::ModSeq => {
            MessageDataItem::ModSeq(NonZeroU64::new(meta.modseq.max(1)).expect("max(1) is nonzero"))
        }
        MessageDataItemName::Envelope => {
            MessageDataItem::Envelope(mime::envelope(&summary_of(meta)?.envelope))
        }
        MessageDataItemName::Body => {
            MessageDataItem::Body(mime::body_structure(&summary_of(meta)?.body, false))
        }
        MessageDataItemName::BodyStructure => {
            MessageDataItem::BodyStructure(mime::body_structure(&summary_of(meta)?.body, true))
        }
        MessageDataItemName::BodyExt {
            section: None,
            partial,
            ..
        } => {
            let whole = body_of(body)?;
            let (origin, data) = match partial {
                Some((offset, length)) => {
                    (Some(*offset), mime::partial(whole, *offset, length.get()))
                }
                None => (None, whole),
            };
            MessageDataItem::BodyExt {
                section: None,
                origin,
                data: nstring_lossless(data),
            }
        }
        MessageDataItemName::BodyExt {
            section, partial, ..
        } => {
            let summary = summary_of(meta)?;
            let bytes = match mime::section_from_header(summary, section.as_ref()) {
                Some(bytes) => bytes,
                None => {
                    mime::section(body_of(body)?, summary, section.as_ref()).unwrap_or_default()
                }
            };
            let (origin, data) = match partial {
                Some((offset, length)) => (
                    Some(*offset),
                    mime::partial(&bytes, *offset, length.get()).to_vec(),
                ),
                None => (None, bytes),
            };
            MessageDataItem::BodyExt {
                section: section.clone(),
                origin,
                data: nstring_lossless(data),
            }
        }
        MessageDataItemName::Rfc822 => MessageDataItem::Rfc822(nstring_lossless(body_of(body)?)),
        MessageDataItemName::Rfc822Header => {
            let summary = summary_of(meta)?;
            let header = match mime::section_from_header(summary, Some(&Section::Header(None))) {
                Some(h) => h,
                None => mime::section(body_of(body)?, summary, Some(&Section::Header(None)))
                    .unwrap_or_default(),
            };
            MessageDataItem::Rfc822Header(nstring_lossless(header))
        }
        MessageDataItemName::Rfc822Text => {
            let summary = summary_of(meta)?;
            let text = mime::section(body_of(body)?, summary, Some(&Section::Text(None)))
                .unwrap_or_default();
            MessageDataItem::Rfc822Text(nstring_lossless(text))
        }
        MessageDataItemName::Binary {
            section, partial, ..
        } => {
            let summary = summary_of(meta)?;
            let decoded = match mime::binary(body_of(body)?, summary, section) {
                Ok(d) => d,
                Err(mime::BinaryError::NoSuchPart) => Vec::new(),
                Err(e) => return Err(binary_failure(e)),
            };
            let data = match partial {
                Some((offset, length)) => mime::partial(&decoded, *offset, length.get()).to_vec(),
                None => decoded,
            };
            MessageDataItem::Binary {
                section: section.clone(),
                value: NString8::Literal8(Literal8 {
                    data: data.into(),
                    mode: LiteralMode::Sync,
                }),
            }
        }
        MessageDataItemName::BinarySize { section } => {
            let summary = summary_of(meta)?;
            let size = match mime::binary_size(body_of(body)?, summary, section) {
                Ok(s) => s,
                Err(mime::BinaryError::NoSuchPart) => 0,
                Err(e) => return Err(binary_failure(e)),
            };
            MessageDataItem::BinarySize {
                section: section.clone(),
                size: u32::try_from(size).unwrap_or(u32::MAX),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use imap_codec::CommandCodec;
    use imap_codec::decode::Decoder as _;
    use imap_codec::imap_types::command::CommandBody;

    use super::*;
    use crate::mailbox::summary::{normalize_crlf, summarize};

    /// The items of `FETCH 1 (<list>)`, as imap-codec parses them.
    fn parse(list: &str) -> Vec<MessageDataItemName<'static>> {
        let line = format!("a FETCH 1 ({list})\r\n");
        let (_, command) = CommandCodec::default().decode(line.as_bytes()).unwrap();
        match command.body {
            CommandBody::Fetch {
                macro_or_item_names,
                ..
            } => items(macro_or_item_names.into_static()),
            other => panic!("not a FETCH: {other:?}"),
        }
    }

    const MESSAGES: [&str; 2] = [
        "From: =?utf-8?q?Ren=C3=A9e?= <r@example.org>\nTo: a@example.org\n\
Subject: hello\nDate: Tue, 1 Jul 2025 10:00:00 +0200\n\
Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\n\
hi\n--b\nContent-Type: message/rfc822\n\nSubject: inner\n\ninner body\n--b--\n",
        "Subject: plain\n\nbody\n",
    ];

    /// Every FETCH item that reads the summary renders the same from a
    /// summary holding only the parts `summary_parts` asks for as from
    /// the whole summary, alone or next to others.
    #[test]
    fn items_render_the_same_from_the_parts_they_ask_for() {
        let all = "ENVELOPE BODY BODYSTRUCTURE RFC822.HEADER RFC822.TEXT RFC822 \
                   BODY.PEEK[HEADER.FIELDS (Subject)] BODY.PEEK[1.MIME] BODY.PEEK[2.HEADER] \
                   BODY.PEEK[TEXT]<2.5> BINARY.PEEK[1] BINARY.SIZE[1] RFC822.SIZE UID FLAGS";
        let every = parse(all);
        let mut lists: Vec<Vec<MessageDataItemName<'static>>> =
            every.iter().map(|i| vec![i.clone()]).collect();
        lists.push(parse("UID FLAGS ENVELOPE"));
        lists.push(parse("ENVELOPE BODYSTRUCTURE"));
        lists.push(every.clone());
        for text in MESSAGES {
            let raw = Bytes::from(normalize_crlf(text.as_bytes()).into_owned());
            let full = summarize(&raw);
            let json = serde_json::to_vec(&full).unwrap();
            let meta = |summary: MessageSummary| Meta {
                uid: 7,
                flags: vec!["\\Seen".to_owned()],
                size: raw.len() as u64,
                internal_date: 1_700_000_000,
                modseq: 3,
                recent: false,
                summary: Some(summary),
            };
            for list in &lists {
                let parts = summary_parts(list);
                let whole = meta(full.clone());
                let partial = meta(MessageSummary::decode(&json, parts).unwrap());
                for item in list {
                    assert_eq!(
                        render(item, &partial, Some(&raw)).unwrap(),
                        render(item, &whole, Some(&raw)).unwrap(),
                        "{item:?} with {parts:?}"
                    );
                }
            }
        }
        // What a mail client lists a mailbox with reads little.
        let listing = summary_parts(&parse("UID FLAGS ENVELOPE RFC822.SIZE"));
        assert!(listing.envelope && !listing.body && !listing.header);
        assert!(!listing.search_headers && !listing.preview);
        assert_eq!(summary_parts(&parse("BODY.PEEK[HEADER]")), Parts::ALL);
    }

    /// The whole message (`BODY[]`, `RFC822`, partial or not) needs no
    /// summary, reads none, and renders from the body alone what it
    /// renders with the summary: byte for byte, NUL sent as 0x80, without
    /// copying a body that has no NUL.
    #[test]
    fn the_whole_message_renders_from_its_body_alone() {
        let whole = parse("BODY[] BODY.PEEK[] RFC822 BODY.PEEK[]<3.10> BODY[]<100000.5>");
        assert!(whole.iter().all(whole_message));
        assert!(!whole.iter().any(needs_summary));
        assert_eq!(summary_parts(&whole), Parts::NONE);
        // Other sections still read the summary.
        for other in
            parse("BODY[TEXT] BODY[1] BODY.PEEK[HEADER] RFC822.TEXT RFC822.HEADER BINARY[]")
        {
            assert!(!whole_message(&other), "{other:?}");
            assert!(needs_summary(&other), "{other:?}");
        }
        let mut with_nul = b"Subject: nul\r\n\r\na\0b\r\n".to_vec();
        with_nul.extend_from_slice(&[0, 0]);
        for raw in [
            Bytes::from(normalize_crlf(MESSAGES[0].as_bytes()).into_owned()),
            Bytes::from(with_nul),
        ] {
            let meta = |summary: Option<MessageSummary>| Meta {
                uid: 9,
                flags: Vec::new(),
                size: raw.len() as u64,
                internal_date: 1_700_000_000,
                modseq: 1,
                recent: false,
                summary,
            };
            let bare = meta(None);
            let summarized = meta(Some(summarize(&raw)));
            let summary = summarized.summary.as_ref().unwrap();
            for item in &whole {
                assert!(needs_body(item, None), "{item:?}");
                let alone = render(item, &bare, Some(&raw)).unwrap();
                // As the section reader answers `BODY[]` with the summary.
                let by_section = mime::section(&raw, summary, None).unwrap();
                let by_section = match item {
                    MessageDataItemName::BodyExt {
                        partial: Some((offset, length)),
                        ..
                    } => mime::partial(&by_section, *offset, length.get()).to_vec(),
                    _ => by_section,
                };
                let data = match &alone {
                    MessageDataItem::BodyExt { data, .. } | MessageDataItem::Rfc822(data) => data,
                    other => panic!("{other:?}"),
                };
                let NString(Some(IString::Literal(literal))) = data else {
                    panic!("not a literal: {data:?}");
                };
                let (start, end) = match item {
                    MessageDataItemName::BodyExt {
                        partial: Some((offset, length)),
                        ..
                    } => {
                        let start = (*offset as usize).min(raw.len());
                        (start, (start + length.get() as usize).min(raw.len()))
                    }
                    _ => (0, raw.len()),
                };
                let want: Vec<u8> = raw[start..end]
                    .iter()
                    .map(|b| if *b == 0 { 0x80 } else { *b })
                    .collect();
                assert_eq!(literal.data(), &want[..], "{item:?}");
                let by_section: Vec<u8> = by_section
                    .iter()
                    .map(|b| if *b == 0 { 0x80 } else { *b })
                    .collect();
                assert_eq!(literal.data(), &by_section[..], "{item:?}");
                assert!(Literal::validate(literal.data()).is_ok());
                // A body without NUL is lent, not copied.
                if !raw.contains(&0) {
                    assert!(
                        matches!(literal.clone().into_inner(), Cow::Borrowed(_)),
                        "{item:?} copied the body"
                    );
                }
            }
            // Without the body there is nothing to answer with.
            assert!(render(&whole[0], &bare, None).is_err());
        }
    }
}
