//! Migration from another server (doc/migration.md): `facteur import`
//! reads a Dovecot Maildir ([`maildir`]) or mbox files ([`mbox`]) and
//! places their messages in an unlocked account; `facteur export` writes
//! an account as a Maildir that Dovecot, or `facteur import`, reads with
//! its UIDs.
//!
//! Guarantees of an import:
//! - *Nothing twice.* Every message is placed under an import id: the
//!   SHA-256 of its text (line ends as CRLF) and how many identical texts
//!   came before it in the same folder. The mailbox never places one id
//!   twice (`Mailbox::import`), so a second run, or a run after an
//!   interrupted one, places only what is missing, whatever was written
//!   before the interruption (a body stored without its op is an orphan
//!   the body collector removes).
//! - *UIDs kept where they can be.* A folder the import creates keeps its
//!   old UIDVALIDITY, and reports MODSEQs above any the old server gave
//!   (a MODSEQ base, [`modseq_base_at`]), so a CONDSTORE/QRESYNC client
//!   keeps its cache and is told of every change made here. In such a
//!   folder a message gets its old UID if that is still at or above
//!   UIDNEXT (UIDs skipped in between stay unused), and the folder its old
//!   UIDNEXT. Otherwise (the folder held other mail, or INBOX and the
//!   default folders, which every account has) the folder keeps its own
//!   UIDVALIDITY, messages are placed in order with new UIDs, and the
//!   report says so.
//! - *Nothing unreadable.* A message larger than the largest body the
//!   account opens (`max_message_size`) is not imported: it is named in
//!   the report.
//! - *Nothing hidden.* After each batch, the import runs the check APPEND
//!   runs (`Account::keep_placed`): mail placed in a folder deleted
//!   meanwhile brings the folder back.

pub mod maildir;
pub mod mbox;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::account::mailbox::store_body;
use crate::account::{Account, AccountError, ImportedMessage};
use crate::mailbox::NewMessage;
use crate::mailbox::summary::{LineEnds, normalize_crlf};

/// What an import or export refuses or fails on.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a Maildir (no cur/ or new/)")]
    NotMaildir(PathBuf),
    #[error("{0} is not an mbox file (it does not start with \"From \")")]
    NotMbox(PathBuf),
    #[error("{0} exists and is not empty: export into a new directory")]
    NotEmpty(PathBuf),
    #[error(
        "folder {0:?} has an empty level or a '.' in a level, which Maildir++ cannot hold: rename it, then export again"
    )]
    FolderName(String),
    #[error(transparent)]
    Account(#[from] AccountError),
}

impl MigrateError {
    fn io(path: &Path, source: std::io::Error) -> MigrateError {
        MigrateError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Where a message's text is.
#[derive(Clone, Debug)]
pub enum Body {
    File(PathBuf),
    Bytes(Vec<u8>),
    /// Bytes `start..start + len` of an mbox file, as the file holds them
    /// (quoted `>From ` lines and status headers in; [`mbox::read_message`]).
    Mbox {
        path: PathBuf,
        start: u64,
        len: u64,
    },
}

impl Body {
    /// How the report names the message.
    pub fn name(&self) -> String {
        match self {
            Body::File(path) => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            Body::Bytes(_) => String::new(),
            Body::Mbox { path, start, .. } => format!("{} at byte {start}", path.display()),
        }
    }

    /// The size of the text as read, before line ends become CRLF (which
    /// only adds bytes).
    fn len(&self) -> Result<u64, MigrateError> {
        match self {
            Body::File(path) => std::fs::metadata(path)
                .map(|m| m.len())
                .map_err(|e| MigrateError::io(path, e)),
            Body::Bytes(bytes) => Ok(bytes.len() as u64),
            Body::Mbox { len, .. } => Ok(*len),
        }
    }

    fn read(&self) -> Result<Vec<u8>, MigrateError> {
        match self {
            Body::File(path) => std::fs::read(path).map_err(|e| MigrateError::io(path, e)),
            Body::Bytes(bytes) => Ok(bytes.clone()),
            Body::Mbox { path, start, len } => mbox::read_message(path, *start, *len),
        }
    }
}

/// A message of the old server.
#[derive(Clone, Debug)]
pub struct SourceMessage {
    /// Its UID there, if it had one.
    pub uid: Option<u32>,
    /// Flags and keywords, IMAP names, sorted.
    pub flags: Vec<String>,
    /// INTERNALDATE, seconds since the Unix epoch.
    pub internal_date: i64,
    pub body: Body,
}

/// A folder of the old server, its messages in UID order.
#[derive(Clone, Debug)]
pub struct SourceFolder {
    /// Facteur's name (`/` between levels).
    pub name: String,
    pub uid_validity: Option<u32>,
    pub next_uid: Option<u32>,
    pub messages: Vec<SourceMessage>,
}

/// What an import reads: folders and subscribed names.
#[derive(Clone, Debug, Default)]
pub struct Source {
    pub folders: Vec<SourceFolder>,
    pub subscriptions: Vec<String>,
}

impl Source {
    /// A Dovecot (or any Maildir++) Maildir.
    pub fn maildir(root: &Path) -> Result<Source, MigrateError> {
        let (folders, subscriptions) = maildir::read(root)?;
        Ok(Source {
            folders,
            subscriptions,
        })
    }

    /// mbox files, each one folder named after the file (`inbox` is
    /// INBOX).
    pub fn mbox(files: &[PathBuf]) -> Result<Source, MigrateError> {
        let mut folders = Vec::new();
        for file in files {
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "mbox".into());
            let name = if stem.eq_ignore_ascii_case("inbox") {
                "INBOX".to_owned()
            } else {
                stem
            };
            folders.push(mbox::read(file, name)?);
        }
        Ok(Source {
            folders,
            subscriptions: Vec::new(),
        })
    }

    pub fn message_count(&self) -> usize {
        self.folders.iter().map(|f| f.messages.len()).sum()
    }
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub folders: usize,
    /// Messages placed by this run.
    pub messages: usize,
    /// Messages already there (an earlier run placed them).
    pub skipped: usize,
    /// Messages placed with another UID than they had.
    pub renumbered: usize,
    /// Folders whose UIDVALIDITY could not be kept (clients resync them).
    pub new_uid_validity: Vec<String>,
    /// Messages not imported because they are larger than the largest
    /// body the account opens: `folder: message (size)`.
    pub too_large: Vec<String>,
}

/// Told of each message handled (for a progress bar).
pub trait Progress {
    fn folder(&self, _name: &str) {}
    fn message(&self) {}
}

impl Progress for () {}

/// UIDs above this are not kept: every UID up to UIDNEXT costs the state
/// 4 bytes, so an old server's sparse numbering could cost memory for
/// nothing (the messages are then numbered from UIDNEXT).
pub const MAX_KEPT_UID: u32 = 1 << 22;

/// Bytes of bodies read before their op is written.
const BATCH_BYTES: usize = 16 << 20;
/// Messages per batch.
const BATCH_MESSAGES: usize = 64;

/// The MODSEQ base of a folder created with its old UIDVALIDITY, for an
/// import at `now`: microseconds since the Unix epoch. Dovecot does not
/// say its MODSEQs outside its binary index, but each is a count of the
/// changes committed to the folder (one index transaction each, from 1 at
/// the folder's creation), and no folder has had a change per microsecond
/// since 1970: the base is above every MODSEQ it gave, so a client holding
/// one is told of every change made here (RFC 7162 §3.1.4.1). The same
/// holds for a Maildir exported by Facteur (its MODSEQs are an earlier
/// base plus fewer ops than microseconds since), and the value, about
/// 2^51 today, stays far below RFC 7162's 2^63 - 1.
pub fn modseq_base_at(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX >> 1))
}

/// Imports `source` into `account`. See the module doc.
pub async fn import(
    account: &Account,
    source: &Source,
    progress: &dyn Progress,
) -> Result<ImportReport, MigrateError> {
    import_at(account, source, progress, SystemTime::now()).await
}

/// [`import`] with the clock read `now` (for the MODSEQ base).
pub async fn import_at(
    account: &Account,
    source: &Source,
    progress: &dyn Progress,
    now: SystemTime,
) -> Result<ImportReport, MigrateError> {
    let mut report = ImportReport::default();
    let folders = account.folders().await?;
    folders.sync().await?;
    let modseq_base = modseq_base_at(now);
    for folder in &source.folders {
        progress.folder(&folder.name);
        import_folder(account, folder, modseq_base, progress, &mut report).await?;
        report.folders += 1;
    }
    folders.sync().await?;
    for name in &source.subscriptions {
        let subscribed = folders.read(|l| l.is_subscribed(name)).await;
        if !subscribed {
            folders.subscribe(name).await?;
        }
    }
    Ok(report)
}

async fn import_folder(
    account: &Account,
    source: &SourceFolder,
    modseq_base: u64,
    progress: &dyn Progress,
    report: &mut ImportReport,
) -> Result<(), MigrateError> {
    let folders = account.folders().await?;
    // The old server's clients cache MODSEQs (CONDSTORE/QRESYNC) with the
    // UIDVALIDITY: a kept UIDVALIDITY comes with a MODSEQ base above
    // theirs, or they would be told of no change for a long time.
    let created_kept = match folders.find(&source.name).await {
        Some(_) => false,
        None => {
            let wanted = source.uid_validity.unwrap_or(0);
            let (_, kept) = folders
                .create_kept(&source.name, wanted, modseq_base)
                .await?;
            kept
        }
    };
    let (_, mailbox) = account.open_by_name(&source.name).await?;
    mailbox.sync().await?;
    // A folder an earlier run of this import made with the old
    // UIDVALIDITY (it has a MODSEQ base) counts as made now.
    let ours = created_kept
        || (source.uid_validity.is_some() && mailbox.read(|s| s.modseq_base() != 0).await);
    if source.uid_validity.is_some() && !ours {
        report.new_uid_validity.push(source.name.clone());
    }
    let sparse = source.next_uid.is_some_and(|n| n > MAX_KEPT_UID)
        || source
            .messages
            .iter()
            .any(|m| m.uid.is_some_and(|u| u >= MAX_KEPT_UID));
    let mut ids = ImportIds::default();
    let mut batch: Vec<(ImportedMessage, Option<u32>)> = Vec::new();
    let mut batch_bytes = 0;
    // UIDs are kept in a mailbox this import made, or one that held
    // nothing or only this source's messages when the import began (a
    // resumed run): not in one with other mail, where they would only
    // leave gaps.
    let mut keep_uids: Option<bool> = (ours && !sparse).then_some(true);
    if sparse {
        keep_uids = Some(false);
    }
    let limit = account.max_body_size() as u64;
    let mut past_old_next = false;
    for message in &source.messages {
        // Refused before reading: a larger body could be placed but never
        // fetched (Mailbox bounds what it opens).
        let size = message.body.len()?;
        if size > limit {
            refuse(report, source, message, size, progress);
            continue;
        }
        let raw = message.body.read()?;
        let crlf = normalize_crlf(&raw).into_owned();
        drop(raw);
        if crlf.len() as u64 > limit {
            refuse(report, source, message, crlf.len() as u64, progress);
            continue;
        }
        let id = ids.next(&crlf);
        let there = mailbox.read(|s| s.has_delivery(&id)).await;
        if keep_uids.is_none() {
            keep_uids = Some(there || mailbox.read(|s| s.exists() == 0).await);
        }
        let keep = keep_uids == Some(true);
        if there {
            report.skipped += 1;
            progress.message();
            continue;
        }
        // A message the old server had not numbered yet comes after its
        // UIDNEXT: a UID below it may have named a message expunged there,
        // which a client keeping the UIDVALIDITY may still hold.
        if keep
            && message.uid.is_none()
            && !past_old_next
            && let Some(next) = source.next_uid
        {
            place(
                account,
                &mailbox,
                std::mem::take(&mut batch),
                report,
                progress,
            )
            .await?;
            batch_bytes = 0;
            mailbox.skip_to(next).await?;
            past_old_next = true;
        }
        let flags: Vec<String> = message
            .flags
            .iter()
            .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
            .cloned()
            .collect();
        let stored = store_body(
            account.store(),
            account.user(),
            &crlf,
            LineEnds::Crlf,
            message.internal_date,
        )
        .await?;
        batch_bytes += crlf.len();
        batch.push((
            ImportedMessage {
                id,
                uid: message.uid.filter(|_| keep),
                new: NewMessage {
                    message: stored,
                    flags,
                },
            },
            message.uid,
        ));
        if batch.len() >= BATCH_MESSAGES || batch_bytes >= BATCH_BYTES {
            place(
                account,
                &mailbox,
                std::mem::take(&mut batch),
                report,
                progress,
            )
            .await?;
            batch_bytes = 0;
        }
    }
    place(account, &mailbox, batch, report, progress).await?;
    if keep_uids == Some(true)
        && let Some(next) = source.next_uid
    {
        mailbox.skip_to(next).await?;
    }
    // Writes the snapshot the new ops made due, so the next reader does
    // not replay them all.
    mailbox.sync().await?;
    Ok(())
}

/// Counts a message too large to import.
fn refuse(
    report: &mut ImportReport,
    folder: &SourceFolder,
    message: &SourceMessage,
    size: u64,
    progress: &dyn Progress,
) {
    let uid = message
        .uid
        .map(|u| format!("UID {u}, "))
        .unwrap_or_default();
    report.too_large.push(format!(
        "{}: {} ({uid}{size} bytes)",
        folder.name,
        message.body.name()
    ));
    progress.message();
}

/// Places one batch and counts it, then keeps it visible if the folder
/// was deleted meanwhile, as APPEND does (`Account::keep_placed`).
async fn place(
    account: &Account,
    mailbox: &crate::account::Mailbox,
    batch: Vec<(ImportedMessage, Option<u32>)>,
    report: &mut ImportReport,
    progress: &dyn Progress,
) -> Result<(), MigrateError> {
    if batch.is_empty() {
        return Ok(());
    }
    let (messages, old): (Vec<ImportedMessage>, Vec<Option<u32>>) = batch.into_iter().unzip();
    let uids = mailbox.import(messages).await?;
    account.keep_placed(mailbox).await?;
    for (got, old) in uids.iter().zip(old) {
        report.messages += 1;
        if old.is_some() && *got != old {
            report.renumbered += 1;
        }
        progress.message();
    }
    Ok(())
}

/// Import ids of one folder: a text's hash and its rank among identical
/// texts before it.
#[derive(Default)]
struct ImportIds {
    seen: HashMap<[u8; 32], u32>,
}

impl ImportIds {
    fn next(&mut self, crlf: &[u8]) -> String {
        let hash: [u8; 32] = Sha256::digest(crlf).into();
        let rank = self.seen.entry(hash).or_insert(0);
        let id = format!("import-{}-{rank}", hex::encode(hash));
        *rank += 1;
        id
    }
}

/// What an export wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportReport {
    pub folders: usize,
    pub messages: usize,
    /// Keywords past the 26 a Maildir file name can hold, left out.
    pub keywords_dropped: usize,
}

/// Writes every folder of `account` as a Maildir at `root` (which must
/// not exist, or be empty), with `dovecot-uidlist` and `dovecot-keywords`
/// so that Dovecot and `facteur import` keep the UIDs.
pub async fn export(
    account: &Account,
    root: &Path,
    progress: &dyn Progress,
) -> Result<ExportReport, MigrateError> {
    if let Ok(mut entries) = std::fs::read_dir(root)
        && entries.next().is_some()
    {
        return Err(MigrateError::NotEmpty(root.to_owned()));
    }
    std::fs::create_dir_all(root).map_err(|e| MigrateError::io(root, e))?;
    let folders = account.folders().await?;
    folders.sync().await?;
    let mut report = ExportReport::default();
    for folder in folders.all().await {
        progress.folder(&folder.name);
        let (folder, mailbox) = account.open_by_name(&folder.name).await?;
        mailbox.sync().await?;
        let mut writer = maildir::FolderWriter::create(root, &folder.name, folder.uid_validity)?;
        type Listed = (Vec<(u32, Vec<String>, i64)>, u32);
        let (messages, uid_next): Listed = mailbox
            .read(|s| {
                let messages = s
                    .messages()
                    .map(|m| {
                        let flags = m.flags.iter().map(|f| f.to_string()).collect();
                        (m.uid, flags, m.message.internal_date)
                    })
                    .collect();
                (messages, s.uid_next())
            })
            .await;
        for (uid, flags, internal_date) in messages {
            let body = match mailbox.body(uid).await {
                Ok(body) => body,
                // Expunged meanwhile.
                Err(AccountError::NoSuchMessage(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            report.keywords_dropped += writer.write(uid, &flags, internal_date, &body)?;
            report.messages += 1;
            progress.message();
        }
        writer.finish(uid_next)?;
        report.folders += 1;
    }
    let subscriptions: Vec<String> = folders
        .read(|l| l.subscriptions().map(str::to_owned).collect())
        .await;
    maildir::write_subscriptions(root, &subscriptions)?;
    Ok(report)
}
