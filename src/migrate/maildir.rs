//! Dovecot's Maildir, read and written (doc/migration.md): Maildir++
//! folders (`.Sent`, `.a.b` for `a/b`, names in modified UTF-7), flags in
//! file names (`:2,` then `D F P R S T` and keyword letters `a`–`z`),
//! `dovecot-keywords` (letter index → keyword), `dovecot-uidlist` (UIDVALIDITY,
//! next UID, the UID of each file) and `subscriptions`.
//!
//! Files are read as they are; nothing here writes into a Maildir being
//! read. The writer makes the same layout, readable by Dovecot and by
//! [`read`], with the UIDs kept.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{MigrateError, SourceFolder, SourceMessage};
use crate::imap::mutf7;

/// The system flags of a Maildir info part (`:2,FLAGS`), by letter.
const SYSTEM_FLAGS: [(char, &str); 6] = [
    ('D', "\\Draft"),
    ('F', "\\Flagged"),
    ('P', "$Forwarded"),
    ('R', "\\Answered"),
    ('S', "\\Seen"),
    ('T', "\\Deleted"),
];

/// Most keywords a Maildir file name can carry (letters `a`–`z`).
const MAX_KEYWORDS: usize = 26;

/// Reads every folder of the Maildir at `root` (INBOX first, then the
/// `.name` folders in name order) and the subscribed names.
pub fn read(root: &Path) -> Result<(Vec<SourceFolder>, Vec<String>), MigrateError> {
    if !root.join("cur").is_dir() && !root.join("new").is_dir() {
        return Err(MigrateError::NotMaildir(root.to_owned()));
    }
    let mut folders = vec![read_folder(root, "INBOX".into())?];
    let mut others = BTreeMap::new();
    for entry in std::fs::read_dir(root).map_err(|e| MigrateError::io(root, e))? {
        let entry = entry.map_err(|e| MigrateError::io(root, e))?;
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        let Some(encoded) = file.strip_prefix('.') else {
            continue;
        };
        if encoded.is_empty() || encoded == "." || !entry.path().join("cur").is_dir() {
            continue;
        }
        others.insert(folder_name(encoded), entry.path());
    }
    for (name, dir) in others {
        folders.push(read_folder(&dir, name)?);
    }
    let subscriptions = read_subscriptions(&root.join("subscriptions"))?;
    Ok((folders, subscriptions))
}

/// The Facteur name of a Maildir++ folder directory (without its dot):
/// `.` separates levels, each level in modified UTF-7 (RFC 3501 §5.1.3).
fn folder_name(encoded: &str) -> String {
    let name = encoded.replace('.', "/");
    mutf7::decode(&name).unwrap_or(name)
}

/// The directory name (with its dot) of folder `name`: the inverse of
/// [`folder_name`].
fn folder_dir(name: &str) -> String {
    format!(".{}", mutf7::encode(name).replace('/', "."))
}

/// Dovecot's `subscriptions`: version 2 starts `V\t2` and a blank line,
/// then one name per line with levels separated by tabs; version 1 is
/// one name per line with the namespace separator (`.` in Maildir++).
fn read_subscriptions(path: &Path) -> Result<Vec<String>, MigrateError> {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(MigrateError::io(path, e)),
    };
    let mut lines = text.lines().peekable();
    let v2 = lines.peek().is_some_and(|l| l.starts_with("V\t"));
    if v2 {
        lines.next();
    }
    Ok(lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let name = if v2 {
                l.replace('\t', "/")
            } else {
                l.replace('.', "/")
            };
            mutf7::decode(&name).unwrap_or(name)
        })
        .collect())
}

/// `dovecot-uidlist`: UIDVALIDITY, next UID, and each file base name's
/// UID.
#[derive(Debug, Default)]
struct UidList {
    uid_validity: Option<u32>,
    next_uid: Option<u32>,
    by_base: BTreeMap<String, u32>,
}

fn read_uidlist(path: &Path) -> Result<UidList, MigrateError> {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(UidList::default()),
        Err(e) => return Err(MigrateError::io(path, e)),
    };
    let mut list = UidList::default();
    let mut lines = text.lines();
    // Header, version 3: `3 V<uidvalidity> N<next uid> G<guid> ...`;
    // version 1: `1 <uidvalidity> <next uid>`.
    if let Some(header) = lines.next() {
        let mut fields = header.split(' ');
        match fields.next() {
            Some("1") => {
                list.uid_validity = fields.next().and_then(|v| v.parse().ok());
                list.next_uid = fields.next().and_then(|v| v.parse().ok());
            }
            _ => {
                for field in fields {
                    if let Some(v) = field.strip_prefix('V') {
                        list.uid_validity = v.parse().ok();
                    } else if let Some(n) = field.strip_prefix('N') {
                        list.next_uid = n.parse().ok();
                    }
                }
            }
        }
    }
    // Records: `<uid> [<ext fields>] :<base name>` (version 3) or
    // `<uid> <flags> <base name>` (version 1).
    for line in lines {
        let Some((uid, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(uid) = uid.parse::<u32>() else {
            continue;
        };
        let base = match rest.find(':') {
            Some(at) if at == 0 || rest.as_bytes()[at - 1] == b' ' => &rest[at + 1..],
            _ => rest.rsplit(' ').next().unwrap_or(rest),
        };
        list.by_base.insert(base_name(base).to_owned(), uid);
    }
    Ok(list)
}

/// A Maildir file name without its info part (`:2,...`).
fn base_name(file: &str) -> &str {
    file.split_once(':').map_or(file, |(base, _)| base)
}

/// `dovecot-keywords`: `<index> <keyword>` per line.
fn read_keywords(path: &Path) -> Result<Vec<Option<String>>, MigrateError> {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(MigrateError::io(path, e)),
    };
    let mut keywords = vec![None; MAX_KEYWORDS];
    for line in text.lines() {
        if let Some((index, name)) = line.split_once(' ')
            && let Ok(index) = index.parse::<usize>()
            && index < MAX_KEYWORDS
            && !name.is_empty()
        {
            keywords[index] = Some(name.to_owned());
        }
    }
    Ok(keywords)
}

/// The flags of a file name's info part.
fn flags_of(file: &str, keywords: &[Option<String>]) -> Vec<String> {
    let Some((_, info)) = file.split_once(":2,") else {
        return Vec::new();
    };
    let mut flags = Vec::new();
    for c in info.chars() {
        if let Some((_, flag)) = SYSTEM_FLAGS.iter().find(|(l, _)| *l == c) {
            flags.push((*flag).to_owned());
        } else if c.is_ascii_lowercase()
            && let Some(Some(k)) = keywords.get((c as u8 - b'a') as usize)
        {
            flags.push(k.clone());
        }
    }
    flags.sort();
    flags.dedup();
    flags
}

fn read_folder(dir: &Path, name: String) -> Result<SourceFolder, MigrateError> {
    let uidlist = read_uidlist(&dir.join("dovecot-uidlist"))?;
    let keywords = read_keywords(&dir.join("dovecot-keywords"))?;
    let mut messages = Vec::new();
    for sub in ["cur", "new"] {
        let path = dir.join(sub);
        let entries = match std::fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(MigrateError::io(&path, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| MigrateError::io(&path, e))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with('.') {
                continue;
            }
            let meta = entry.metadata().map_err(|e| MigrateError::io(&path, e))?;
            if !meta.is_file() {
                continue;
            }
            let internal_date = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64);
            messages.push(SourceMessage {
                uid: uidlist.by_base.get(base_name(&file)).copied(),
                flags: flags_of(&file, &keywords),
                internal_date,
                body: super::Body::File(entry.path()),
            });
        }
    }
    // UID order; files Dovecot had not numbered yet last, by name (a
    // Maildir name starts with its delivery time).
    messages.sort_by(|a, b| {
        (a.uid.is_none(), a.uid, a.body.name()).cmp(&(b.uid.is_none(), b.uid, b.body.name()))
    });
    // Dovecot updates the header's next UID lazily (its index holds the
    // current one): never below the highest UID listed.
    let listed = uidlist.by_base.values().max().map(|u| u.saturating_add(1));
    Ok(SourceFolder {
        name,
        uid_validity: uidlist.uid_validity,
        next_uid: uidlist.next_uid.max(listed),
        messages,
    })
}

/// Writes one folder of an export: `cur/` files named
/// `<uid>.<uidvalidity>.facteur:2,<flags>` with LF line ends (as Dovecot
/// stores them) and the INTERNALDATE as mtime, `dovecot-uidlist` and
/// `dovecot-keywords`. `root` is the Maildir; INBOX is its top.
pub struct FolderWriter {
    dir: PathBuf,
    uid_validity: u32,
    keywords: Vec<String>,
    records: Vec<(u32, String)>,
}

impl FolderWriter {
    pub fn create(root: &Path, name: &str, uid_validity: u32) -> Result<Self, MigrateError> {
        // A `.` would name another level (`a.b` is `a/b`), or with an empty
        // level the parent directory (`.` would be `..`).
        if name != "INBOX" && name.split('/').any(|l| l.is_empty() || l.contains('.')) {
            return Err(MigrateError::FolderName(name.to_owned()));
        }
        let dir = if name == "INBOX" {
            root.to_owned()
        } else {
            root.join(folder_dir(name))
        };
        for sub in ["cur", "new", "tmp"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|e| MigrateError::io(&path, e))?;
        }
        if name != "INBOX" {
            let marker = dir.join("maildirfolder");
            std::fs::write(&marker, b"").map_err(|e| MigrateError::io(&marker, e))?;
        }
        Ok(FolderWriter {
            dir,
            uid_validity,
            keywords: Vec::new(),
            records: Vec::new(),
        })
    }

    /// Writes one message. Keywords past the 26 a Maildir name can hold
    /// are dropped; returns how many were.
    pub fn write(
        &mut self,
        uid: u32,
        flags: &[&str],
        internal_date: i64,
        crlf_body: &[u8],
    ) -> Result<usize, MigrateError> {
        let mut letters = String::new();
        let mut dropped = 0;
        let mut keyword_letters = Vec::new();
        for flag in flags {
            if let Some((l, _)) = SYSTEM_FLAGS
                .iter()
                .find(|(_, f)| f.eq_ignore_ascii_case(flag))
            {
                letters.push(*l);
                continue;
            }
            if flag.starts_with('\\') {
                continue; // \Recent and the like are not stored.
            }
            let index = match self.keywords.iter().position(|k| k == flag) {
                Some(i) => i,
                None if self.keywords.len() < MAX_KEYWORDS => {
                    self.keywords.push((*flag).to_owned());
                    self.keywords.len() - 1
                }
                None => {
                    dropped += 1;
                    continue;
                }
            };
            keyword_letters.push((b'a' + index as u8) as char);
        }
        let mut all: Vec<char> = letters.chars().chain(keyword_letters).collect();
        all.sort_unstable();
        let letters: String = all.into_iter().collect();
        let base = format!("{uid}.{}.facteur", self.uid_validity);
        let path = self.dir.join("cur").join(format!("{base}:2,{letters}"));
        let lf = lf_line_ends(crlf_body);
        let mut file = std::fs::File::create(&path).map_err(|e| MigrateError::io(&path, e))?;
        file.write_all(&lf)
            .map_err(|e| MigrateError::io(&path, e))?;
        let mtime = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(u64::try_from(internal_date).unwrap_or(0));
        file.set_modified(mtime)
            .map_err(|e| MigrateError::io(&path, e))?;
        self.records.push((uid, base));
        Ok(dropped)
    }

    /// Writes `dovecot-uidlist` and `dovecot-keywords`.
    pub fn finish(self, uid_next: u32) -> Result<(), MigrateError> {
        let mut list = format!("3 V{} N{}\n", self.uid_validity, uid_next);
        for (uid, base) in &self.records {
            list.push_str(&format!("{uid} :{base}\n"));
        }
        let path = self.dir.join("dovecot-uidlist");
        std::fs::write(&path, list).map_err(|e| MigrateError::io(&path, e))?;
        let mut keywords = String::new();
        for (i, k) in self.keywords.iter().enumerate() {
            keywords.push_str(&format!("{i} {k}\n"));
        }
        let path = self.dir.join("dovecot-keywords");
        std::fs::write(&path, keywords).map_err(|e| MigrateError::io(&path, e))?;
        Ok(())
    }
}

/// Writes `subscriptions` (version 2).
pub fn write_subscriptions(root: &Path, names: &[String]) -> Result<(), MigrateError> {
    let mut text = String::from("V\t2\n\n");
    for name in names {
        text.push_str(&mutf7::encode(name).replace('/', "\t"));
        text.push('\n');
    }
    let path = root.join("subscriptions");
    std::fs::write(&path, text).map_err(|e| MigrateError::io(&path, e))
}

/// CRLF line ends as LF.
fn lf_line_ends(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'\r' && body.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(body[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_come_from_the_info_part_and_keyword_letters() {
        let keywords = vec![Some("$Junk".to_owned()), None, Some("todo".to_owned())];
        let flags = flags_of("1700.M1P2.host,S=10:2,FPSac", &keywords);
        assert_eq!(
            flags,
            ["$Forwarded", "$Junk", "\\Flagged", "\\Seen", "todo"]
        );
        assert!(flags_of("1700.M1P2.host", &keywords).is_empty(), "new/");
    }

    #[test]
    fn uidlist_version_3_with_extension_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dovecot-uidlist");
        std::fs::write(
            &path,
            "3 V1700000000 N9 Gabc\n1 :a.host\n4 W120 S118 :b.host,S=118\n",
        )
        .unwrap();
        let list = read_uidlist(&path).unwrap();
        assert_eq!(
            (list.uid_validity, list.next_uid),
            (Some(1_700_000_000), Some(9))
        );
        assert_eq!(list.by_base.get("a.host"), Some(&1));
        assert_eq!(list.by_base.get("b.host,S=118"), Some(&4));
    }

    #[test]
    fn folder_names_are_levels_in_modified_utf7() {
        assert_eq!(folder_name("Archives.2023"), "Archives/2023");
        assert_eq!(folder_name("Envoy&AOk-s"), "Envoyés");
        assert_eq!(folder_dir("Archives/Envoyés"), ".Archives.Envoy&AOk-s");
    }

    #[test]
    fn a_folder_maildir_cannot_hold_is_refused_before_anything_is_written() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("export");
        std::fs::create_dir(&root).unwrap();
        for name in [".", "..", "a.b", "a//b", "a/", "x/../y"] {
            assert!(
                matches!(
                    FolderWriter::create(&root, name, 1),
                    Err(MigrateError::FolderName(_))
                ),
                "{name}"
            );
        }
        assert!(
            !parent.path().join("cur").exists(),
            "wrote above the export"
        );
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
        assert!(FolderWriter::create(&root, "a/b c", 1).is_ok());
    }
}
