//! The local-directory object store, the embedded default: key `a/b/c` is
//! the file `<root>/a/b/c`, except in an op log. There, in a directory
//! named `log`, a name shaped like an op name (16 lowercase hex digits of
//! a clock, then `-`) goes one level down, into a directory named after
//! its first 12 digits and `~`: op `a/log/<name>` is the file
//! `<root>/a/log/<name[..12]>~/<name[12..]>` ([`object_path`]). Such a
//! directory holds the ops of about one minute (2^16 ms), so a poll
//! listing a log from a little before its newest op reads the names of a
//! minute or two of ops, not those of every op still kept (up to twenty
//! minutes of a busy mailbox). Files written flat by older versions are
//! still read, listed and deleted; older versions do not see the shards
//! (doc/storage.md, "How many objects a mailbox keeps": the change is
//! one-way).
//!
//! Invariants:
//!
//! - A put is atomic and durable: the body goes to a temporary file in the
//!   target's directory, is fsynced, renamed over the target, and the
//!   directory is fsynced. Concurrent writers of one key (threads or
//!   processes) leave one complete version, never a mix; a reader sees the
//!   old or the new version.
//! - Temporary files are named `~tmp-<random>`; `~` can never appear in a
//!   key ([`check_key`]), so a temporary file is never listed or read as an
//!   object, even one left behind by a crash.
//! - Listing walks directories with each entry sorted as its keys would sort
//!   (a directory `d` as `d/`), which yields keys in byte order across
//!   nested directories (`a/b/x` after `a-c`, before `a0`) without
//!   collecting the whole tree.
//! - Limitation: a key cannot also be a directory of other keys (`a/b` and
//!   `a/b/c`); the second put fails with [`StoreError::Permanent`] (unless
//!   `a/b` is kept in a shard). Facteur's layout never does this
//!   (doc/storage.md, "Object names").
//!
//! - Files are created `0600` and directories `0700` (before the umask):
//!   objects are ciphertext, but their names, sizes and times are still
//!   the users' metadata, for the service account alone. An existing root
//!   keeps its mode.
//!
//! All file system work runs on tokio's blocking pool.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rand::Rng;

use super::{
    KeyPage, ListPage, MAX_KEY_LEN, ObjectMeta, ObjectStore, StoreError, check_key, check_prefix,
    clamp_limit, clamp_range, is_key_segment,
};

/// Leading characters of temporary file names (`~` is not a key byte).
const TMP_PREFIX: &str = "~tmp-";

/// Hex digits of a name that name its shard directory: 2^16 ms of clock.
const SHARD_DIGITS: usize = 12;

/// Ends a shard directory's name (`~` is not a key byte, so no key is one).
const SHARD_MARK: char = '~';

/// The last segment of the directories whose op-shaped names are kept in
/// shards: the op logs (`list/log/`, `mbox/<m>/log/`), the only busy
/// directories a poll lists from a cursor. Elsewhere (`incoming/`, lease
/// turns, snapshots, pages) names stay flat: those directories are small,
/// and a shard per name would cost a `mkdir` and a directory fsync.
const SHARDED_DIR: &str = "log";

/// Whether keys starting with `dir_key` (ending in `/`) are in a sharded
/// directory.
fn is_sharded_dir(dir_key: &str) -> bool {
    dir_key.strip_suffix('/').is_some_and(|d| {
        d == SHARDED_DIR
            || d.strip_suffix(SHARDED_DIR)
                .is_some_and(|p| p.ends_with('/'))
    })
}

/// The shard of `name` (the last segment of a key in directory `dir_key`)
/// and the rest of the name, if the directory is sharded and the name is
/// shaped like an op name: 16 lowercase hex digits, `-`, more.
fn shard_of<'n>(dir_key: &str, name: &'n str) -> Option<(&'n str, &'n str)> {
    let b = name.as_bytes();
    let shaped = is_sharded_dir(dir_key)
        && b.len() > 17
        && b[16] == b'-'
        && b[..16]
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    shaped.then(|| name.split_at(SHARD_DIGITS))
}

/// The shard a directory entry's name is, if it is one (`<12 hex>~`).
fn shard_dir(name: &str) -> Option<&str> {
    let digits = name.strip_suffix(SHARD_MARK)?;
    (digits.len() == SHARD_DIGITS
        && digits
            .bytes()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
    .then_some(digits)
}

/// The file holding `key`; and, for a key kept in a shard, where an older
/// version kept it (flat, as its own path).
fn object_path(root: &Path, key: &str) -> (PathBuf, Option<PathBuf>) {
    let (dir, name) = match key.rfind('/') {
        Some(i) => (&key[..=i], &key[i + 1..]),
        None => ("", key),
    };
    match shard_of(dir, name) {
        Some((shard, rest)) => (
            root.join(format!("{dir}{shard}{SHARD_MARK}/{rest}")),
            Some(root.join(key)),
        ),
        None => (root.join(key), None),
    }
}

/// Mode of new object files: owner read and write only.
const FILE_MODE: u32 = 0o600;
/// Mode of new directories: owner only.
const DIR_MODE: u32 = 0o700;

/// A builder of directories with [`DIR_MODE`].
fn dir_builder(recursive: bool) -> DirBuilder {
    let mut builder = DirBuilder::new();
    builder.recursive(recursive).mode(DIR_MODE);
    builder
}

/// How often a put retries when a concurrent delete removed the directory it
/// was writing into.
const PUT_ATTEMPTS: usize = 8;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct FsStore {
    // The directory holding every object; shared by clones.
    root: Arc<PathBuf>,
}

impl FsStore {
    /// Opens (creating it if needed) the store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<FsStore, StoreError> {
        let root: PathBuf = root.into();
        dir_builder(true)
            .create(&root)
            .map_err(|e| io_error("create root", &root, e))?;
        if !root.is_dir() {
            return Err(StoreError::Permanent(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        Ok(FsStore {
            root: Arc::new(root),
        })
    }

    /// The directory this store keeps its objects in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs `f` on the blocking pool with the root directory.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Path) -> Result<T, StoreError> + Send + 'static,
    {
        let root = Arc::clone(&self.root);
        tokio::task::spawn_blocking(move || f(&root))
            .await
            .map_err(|e| StoreError::Transient(format!("fs store task failed: {e}")))?
    }
}

#[async_trait::async_trait]
impl ObjectStore for FsStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.blocking(move |root| put_sync(root, &key, &body)).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.blocking(move |root| {
            let (path, flat) = object_path(root, &key);
            match read_either(&path, flat.as_deref(), |p| fs::read(p)) {
                Ok(body) => Ok(Bytes::from(body)),
                Err((e, _)) if is_missing(&e) => Err(StoreError::NotFound(key)),
                Err((e, path)) => Err(io_error("read", path, e)),
            }
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.blocking(move |root| {
            let (path, flat) = object_path(root, &key);
            let read = |path: &Path| -> io::Result<Vec<u8>> {
                let mut file = File::open(path)?;
                let meta = file.metadata()?;
                if !meta.is_file() {
                    // Opening a directory succeeds; it is still no object.
                    return Err(ErrorKind::IsADirectory.into());
                }
                let want = clamp_range(&range, meta.len());
                let mut body = Vec::with_capacity(want.len());
                if !want.is_empty() {
                    file.seek(SeekFrom::Start(want.start as u64))?;
                    file.take(want.len() as u64).read_to_end(&mut body)?;
                }
                Ok(body)
            };
            match read_either(&path, flat.as_deref(), read) {
                Ok(body) => Ok(Bytes::from(body)),
                Err((e, _)) if is_missing(&e) => Err(StoreError::NotFound(key)),
                Err((e, path)) => Err(io_error("read", path, e)),
            }
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.blocking(move |root| delete_sync(root, &key)).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        for key in keys {
            check_key(key)?;
        }
        let keys = keys.to_vec();
        self.blocking(move |root| keys.iter().try_for_each(|key| delete_sync(root, key)))
            .await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        let query = ListQuery::new(prefix, start_after, limit)?;
        self.blocking(move |root| list_sync(root, &query, true))
            .await
    }

    /// No `stat` per key: the directory entries alone.
    async fn list_keys(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, StoreError> {
        let query = ListQuery::new(prefix, start_after, limit)?;
        let page = self
            .blocking(move |root| list_sync(root, &query, false))
            .await?;
        Ok(KeyPage {
            keys: page.objects.into_iter().map(|o| o.key).collect(),
            truncated: page.truncated,
        })
    }
}

/// Reads `path` with `read`, or, if it is missing and the key has a flat
/// path from an older version, that, or, if that is missing too, `path`
/// again: a delete of both copies and a put may have run in between. An
/// error comes with the path that failed.
fn read_either<'p, T>(
    path: &'p Path,
    flat: Option<&'p Path>,
    read: impl Fn(&Path) -> io::Result<T>,
) -> Result<T, (io::Error, &'p Path)> {
    let Some(flat) = flat else {
        return read(path).map_err(|e| (e, path));
    };
    match read(path) {
        Err(e) if is_missing(&e) => {}
        result => return result.map_err(|e| (e, path)),
    }
    match read(flat) {
        Err(e) if is_missing(&e) => read(path).map_err(|e| (e, path)),
        result => result.map_err(|e| (e, flat)),
    }
}

/// A file that is not there, or whose path runs through a file or names a
/// directory: in every case, no such object.
fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::IsADirectory
    )
}

/// Maps an I/O error to the store's error kinds, keeping the cause.
fn io_error(op: &str, path: &Path, e: io::Error) -> StoreError {
    let text = format!("fs {op} {}: {e}", path.display());
    match e.kind() {
        // A misconfiguration, or a key colliding with a directory: retrying
        // does not help.
        ErrorKind::PermissionDenied
        | ErrorKind::ReadOnlyFilesystem
        | ErrorKind::NotADirectory
        | ErrorKind::IsADirectory
        | ErrorKind::DirectoryNotEmpty
        | ErrorKind::InvalidInput
        | ErrorKind::InvalidFilename
        | ErrorKind::Unsupported => StoreError::Permanent(text),
        // A full disk, an interrupted call, an I/O error: defer, don't fail
        // for good (a bounced mail is worse than a late one).
        _ => StoreError::Transient(text),
    }
}

/// Creates the directories of `dir` below `root` that are missing, fsyncing
/// each new directory's parent so the new entry survives a crash.
fn make_dirs(root: &Path, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let Ok(relative) = dir.strip_prefix(root) else {
        return dir_builder(true).create(dir);
    };
    let mut current = root.to_path_buf();
    for component in relative.components() {
        let parent = current.clone();
        current.push(component);
        match dir_builder(false).create(&current) {
            Ok(()) => sync_dir(&parent)?,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn put_sync(root: &Path, key: &str, body: &[u8]) -> Result<(), StoreError> {
    // A flat copy an older version wrote is left: reads and listings
    // prefer the shard's, a delete removes both, and removing it here
    // could hide the key from a listing that read the flat name and then
    // `stat`s it, or that read the shard before this put landed.
    let (path, _) = object_path(root, key);
    let dir = path.parent().unwrap_or(root).to_path_buf();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match put_once(root, &dir, &path, body) {
            Ok(()) => return Ok(()),
            // A concurrent delete removed the (then empty) directory between
            // our mkdir and our create or rename: make it again.
            Err(e) if e.kind() == ErrorKind::NotFound && attempt < PUT_ATTEMPTS => {}
            Err(e) => return Err(io_error("put", &path, e)),
        }
    }
}

fn put_once(root: &Path, dir: &Path, path: &Path, body: &[u8]) -> io::Result<()> {
    make_dirs(root, dir)?;
    let tmp = dir.join(format!(
        "{TMP_PREFIX}{:032x}",
        rand::thread_rng().r#gen::<u128>()
    ));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        file.write_all(body)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

fn delete_sync(root: &Path, key: &str) -> Result<(), StoreError> {
    let (path, flat) = object_path(root, key);
    // The flat copy first: were both there (a crash between a put and its
    // removal of the flat copy), removing the shard's first would show the
    // older flat version until the second removal.
    if let Some(flat) = flat {
        remove_and_prune(root, &flat)?;
    }
    remove_and_prune(root, &path)
}

/// Removes the file `path` if it is there, then the directories this left
/// empty.
fn remove_and_prune(root: &Path, path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if is_missing(&e) => return Ok(()),
        Err(e) => return Err(io_error("delete", path, e)),
    }
    // Best effort: remove the directories this delete left empty, up to
    // (not including) the root. remove_dir fails on a non-empty directory,
    // which is where we stop; a racing put recreates what it needs.
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// One `list` call's arguments.
struct ListQuery {
    prefix: String,
    start_after: Option<String>,
    // Already clamped to 1..=MAX_LIST.
    limit: usize,
}

impl ListQuery {
    fn new(prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Self, StoreError> {
        check_prefix(prefix)?;
        Ok(ListQuery {
            prefix: prefix.to_owned(),
            start_after: start_after.map(str::to_owned),
            limit: clamp_limit(limit),
        })
    }

    /// Whether the directory whose keys all start with `dir_key` may hold
    /// a key of this listing. `dir_key` is any common prefix of its keys:
    /// a directory's key ending in `/`, or a shard's, ending in its digits.
    fn wants_dir(&self, dir_key: &str) -> bool {
        let overlaps = dir_key.starts_with(&self.prefix) || self.prefix.starts_with(dir_key);
        // Every key in the directory sorts before `start_after` when the
        // two differ before the end of `dir_key`, with `dir_key` smaller.
        let all_before = self
            .start_after
            .as_deref()
            .is_some_and(|after| dir_key < after && !after.starts_with(dir_key));
        overlaps && !all_before
    }

    fn wants_key(&self, key: &str) -> bool {
        key.starts_with(&self.prefix) && self.start_after.as_deref().is_none_or(|after| key > after)
    }
}

/// Lists as `query` asks; `sized`: each key's size is read (a `stat`),
/// else left 0.
fn list_sync(root: &Path, query: &ListQuery, sized: bool) -> Result<ListPage, StoreError> {
    // Start at the deepest directory the prefix names in full.
    let base = match query.prefix.rfind('/') {
        Some(i) => &query.prefix[..=i],
        None => "",
    };
    let mut found = Vec::new();
    // Collect one more than asked to learn whether the listing is truncated.
    let want = query.limit + 1;
    walk(&root.join(base), base, query, (want, sized), &mut found)?;
    let truncated = found.len() > query.limit;
    found.truncate(query.limit);
    Ok(ListPage {
        objects: found,
        truncated,
    })
}

/// An entry of a directory being listed, under the key it sorts as.
enum Child {
    /// A directory of keys (its key ends in `/`).
    Dir,
    /// An object, at this path relative to the directory: its name, or
    /// `<shard>~/<rest>` for one kept in a shard.
    File(String),
}

/// Appends to `found`, in byte order, the keys of `dir` (whose keys start
/// with `dir_key`) that `query` wants, stopping once `found` holds `want`.
///
/// A poll lists a log's directory from just before its newest op, so most
/// entries sort before `start_after`: each entry is first judged by its
/// name alone (as a key, as a directory, or as the shard of the keys
/// starting with `dir_key` and its digits), and only the survivors are
/// typed (from the directory entry, no `stat` on Linux), sorted and
/// walked; the shards wanted are read whole (a minute of ops each); a file
/// is `stat`ed for its size only once it is returned, and only if `sized`.
/// A no-change poll of a busy log thus reads the names of its shards and
/// of the one or two shards its lookback reaches.
fn walk(
    dir: &Path,
    dir_key: &str,
    query: &ListQuery,
    (want, sized): (usize, bool),
    found: &mut Vec<ObjectMeta>,
) -> Result<(), StoreError> {
    let Some(entries) = read_dir(dir)? else {
        return Ok(());
    };
    let mut children: Vec<(String, Child)> = Vec::new();
    // The shards wanted, read once this directory is.
    let mut shards: Vec<String> = Vec::new();
    let sharded = is_sharded_dir(dir_key);
    let mut key = String::with_capacity(dir_key.len() + 64);
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        key.clear();
        key.push_str(dir_key);
        if sharded && let Some(shard) = shard_dir(name) {
            key.push_str(shard);
            if query.wants_dir(&key) {
                shards.push(name.to_owned());
            }
            continue;
        }
        key.push_str(name);
        let as_key = query.wants_key(&key);
        key.push('/');
        let as_dir = query.wants_dir(&key);
        key.pop();
        // Temporary files and anything else that is not a key. The
        // directories above were checked on the way down.
        if !(as_key || as_dir) || !is_key_segment(name) || key.len() > MAX_KEY_LEN {
            continue;
        }
        let file_type = match entry.file_type() {
            Ok(file_type) => file_type,
            Err(e) if is_missing(&e) => continue,
            Err(e) => return Err(io_error("list", &entry.path(), e)),
        };
        if file_type.is_dir() && as_dir {
            children.push((format!("{key}/"), Child::Dir));
        } else if file_type.is_file() && as_key {
            children.push((key.clone(), Child::File(name.to_owned())));
        }
    }
    for name in shards {
        read_shard(dir, dir_key, &name, query, &mut children)?;
    }
    // A key kept both in its shard and flat (a crash between a put and its
    // removal of the flat version) is listed once, from its shard.
    children.sort_unstable_by(|(a, a_child), (b, b_child)| {
        a.cmp(b).then_with(|| flat(a_child).cmp(&flat(b_child)))
    });
    children.dedup_by(|(a, _), (b, _)| a == b);
    for (key, child) in children {
        if found.len() >= want {
            break;
        }
        let relative = match child {
            Child::Dir => {
                let name = &key[dir_key.len()..key.len() - 1];
                walk(&dir.join(name), &key, query, (want, sized), found)?;
                continue;
            }
            Child::File(relative) => relative,
        };
        if !sized {
            found.push(ObjectMeta { key, size: 0 });
            continue;
        }
        let path = dir.join(relative);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => found.push(ObjectMeta {
                key,
                size: meta.len(),
            }),
            Ok(_) => {}
            // Deleted since the directory was read: not listed, as if the
            // delete had come first.
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(io_error("list", &path, e)),
        }
    }
    Ok(())
}

/// Whether `child` is a file kept flat (sorts after one in its shard).
fn flat(child: &Child) -> bool {
    matches!(child, Child::File(relative) if !relative.contains('/'))
}

/// The entries of `dir`, or `None` if there is no such directory (nothing
/// under this prefix, or a concurrent delete removed it).
fn read_dir(dir: &Path) -> Result<Option<fs::ReadDir>, StoreError> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(Some(entries)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(io_error("list", dir, e)),
    }
}

/// Adds to `children` the files of the shard directory `name` of `dir`
/// (whose keys start with `dir_key`) that `query` wants.
fn read_shard(
    dir: &Path,
    dir_key: &str,
    name: &str,
    query: &ListQuery,
    children: &mut Vec<(String, Child)>,
) -> Result<(), StoreError> {
    let shard = dir.join(name);
    let Some(entries) = read_dir(&shard)? else {
        return Ok(());
    };
    let mut key = String::with_capacity(dir_key.len() + 64);
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list", &shard, e))?;
        let rest = entry.file_name();
        let Some(rest) = rest.to_str() else {
            continue;
        };
        key.clear();
        key.push_str(dir_key);
        key.push_str(&name[..SHARD_DIGITS]);
        key.push_str(rest);
        // Only names of this shape are kept in shards: anything else here
        // (a temporary file) is no key.
        let op_name = &key[dir_key.len()..];
        let kept_here = shard_of(dir_key, op_name).is_some()
            && is_key_segment(op_name)
            && key.len() <= MAX_KEY_LEN;
        if !kept_here || !query.wants_key(&key) {
            continue;
        }
        match entry.file_type() {
            Ok(t) if t.is_file() => {
                children.push((key.clone(), Child::File(format!("{name}/{rest}"))));
            }
            Ok(_) => {}
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(io_error("list", &entry.path(), e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(page: &ListPage) -> Vec<&str> {
        page.objects.iter().map(|o| o.key.as_str()).collect()
    }

    /// Objects are for the service account alone: files 0600 and
    /// directories 0700, even under a permissive umask.
    #[tokio::test]
    async fn files_and_directories_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = FsStore::open(&root).unwrap();
        store
            .put("users/ab/blob/0001", Bytes::from_static(b"sealed"))
            .await
            .unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("users")), 0o700);
        assert_eq!(mode(&root.join("users/ab")), 0o700);
        assert_eq!(mode(&root.join("users/ab/blob")), 0o700);
        assert_eq!(mode(&root.join("users/ab/blob/0001")), 0o600);
        // Overwriting keeps it private (the new file replaces the old).
        store
            .put("users/ab/blob/0001", Bytes::from_static(b"again"))
            .await
            .unwrap();
        assert_eq!(mode(&root.join("users/ab/blob/0001")), 0o600);
    }

    const OP_A: &str = "u/log/0000019af3c2d1e0-00000000-a";
    const OP_B: &str = "u/log/0000019af3c2ffff-00000000-b";
    const OP_C: &str = "u/log/0000019af3c3000a-00000000-c";

    /// Op-shaped names go into the directory of their clock's first 12
    /// digits; other names stay flat; the last delete removes the shard.
    #[tokio::test]
    async fn op_names_are_kept_in_shards() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = FsStore::open(root).unwrap();
        // Op-shaped names outside a directory named `log` stay flat.
        let flat = [
            "u/incoming/0000019af3c2d1e0-00000000-a",
            "u/xlog/0000019af3c2d1e0-00000000-a",
            "u/log0/0000019af3c2d1e0-00000000-a",
        ];
        for key in [OP_A, OP_B, OP_C, "u/log/0000019af3c2", "u/log/snapshot"]
            .into_iter()
            .chain(flat)
        {
            store.put(key, Bytes::from(key)).await.unwrap();
        }
        for key in flat {
            assert!(root.join(key).is_file(), "{key}");
        }
        store
            .put("log/0000019af3c2d1e0-00000000-r", Bytes::new())
            .await
            .unwrap();
        assert!(root.join("log/0000019af3c2~/d1e0-00000000-r").is_file());
        let shard = root.join("u/log/0000019af3c2~");
        assert!(shard.join("d1e0-00000000-a").is_file());
        assert!(shard.join("ffff-00000000-b").is_file());
        assert!(root.join("u/log/0000019af3c3~/000a-00000000-c").is_file());
        assert!(root.join("u/log/0000019af3c2").is_file());
        assert!(!root.join(OP_A).exists());
        let mut names: Vec<String> = fs::read_dir(root.join("u/log"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["0000019af3c2", "0000019af3c2~", "0000019af3c3~", "snapshot"]
        );
        assert_eq!(store.get(OP_B).await.unwrap(), Bytes::from(OP_B));
        assert_eq!(store.get_range(OP_B, 2..5).await.unwrap(), &OP_B[2..5]);
        store.delete(OP_A).await.unwrap();
        assert!(shard.is_dir());
        store.delete(OP_B).await.unwrap();
        assert!(!shard.exists());
        let page = store.list("u/", None, 100).await.unwrap();
        assert_eq!(
            keys(&page),
            [
                flat[0],
                "u/log/0000019af3c2",
                OP_C,
                "u/log/snapshot",
                flat[2],
                flat[1],
            ]
        );
        assert_eq!(page.objects[2].size, OP_C.len() as u64);
    }

    /// A store written by a version that kept every file flat: its ops are
    /// read, listed in order among new ones, and deleted; a key in both
    /// places (put again since) is listed once, and read from its shard;
    /// a delete removes both copies.
    #[tokio::test]
    async fn flat_ops_of_older_versions_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = FsStore::open(root).unwrap();
        fs::create_dir_all(root.join("u/log")).unwrap();
        fs::write(root.join(OP_A), "flat a").unwrap();
        fs::write(root.join(OP_C), "flat c").unwrap();
        store.put(OP_B, Bytes::from_static(b"b")).await.unwrap();
        assert_eq!(store.get(OP_A).await.unwrap(), "flat a");
        assert_eq!(store.get_range(OP_C, 5..6).await.unwrap(), "c");
        let page = store.list("u/log/", None, 100).await.unwrap();
        assert_eq!(keys(&page), [OP_A, OP_B, OP_C]);
        assert_eq!(page.objects[0].size, 6);
        let page = store.list("u/log/", Some(OP_A), 1).await.unwrap();
        assert_eq!((keys(&page), page.truncated), (vec![OP_B], true));
        // The same key in its shard and flat.
        fs::create_dir_all(root.join("u/log/0000019af3c3~")).unwrap();
        fs::write(root.join("u/log/0000019af3c3~/000a-00000000-c"), "new c").unwrap();
        let page = store.list("u/log/", None, 100).await.unwrap();
        assert_eq!(keys(&page), [OP_A, OP_B, OP_C]);
        assert_eq!(page.objects[2].size, 5);
        let page = store.list_keys("u/log/", Some(OP_A), 100).await.unwrap();
        assert_eq!(page.keys, [OP_B, OP_C]);
        assert_eq!(store.get(OP_C).await.unwrap(), "new c");
        // A put of a key kept flat lands in its shard and wins; a delete
        // removes both copies.
        store.put(OP_A, Bytes::from_static(b"new a")).await.unwrap();
        assert_eq!(store.get(OP_A).await.unwrap(), "new a");
        let page = store.list("u/log/", None, 100).await.unwrap();
        assert_eq!(keys(&page), [OP_A, OP_B, OP_C]);
        assert_eq!(page.objects[0].size, 5);
        store.delete(OP_A).await.unwrap();
        assert!(!root.join(OP_A).exists());
        assert!(matches!(
            store.get(OP_A).await,
            Err(StoreError::NotFound(_))
        ));
        store.put(OP_A, Bytes::from_static(b"new a")).await.unwrap();
        store.delete(OP_C).await.unwrap();
        assert!(!root.join(OP_C).exists());
        assert!(matches!(
            store.get(OP_C).await,
            Err(StoreError::NotFound(_))
        ));
        let page = store.list("u/log/", None, 100).await.unwrap();
        assert_eq!(keys(&page), [OP_A, OP_B]);
    }

    /// Puts and deletes of ops of one shard racing each other (a delete of
    /// the shard's last op removes the directory a put is writing into):
    /// every put lands, every delete removes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn puts_and_deletes_racing_in_one_shard() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let key = |t: usize| format!("u/log/0000019af3c2d1e0-0000000{t}-x");
        let tasks: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                let key = key(t);
                tokio::spawn(async move {
                    for round in 0..200u32 {
                        store
                            .put(&key, Bytes::from(round.to_string()))
                            .await
                            .unwrap();
                        assert_eq!(store.get(&key).await.unwrap(), round.to_string());
                        store.delete(&key).await.unwrap();
                        assert!(matches!(
                            store.get(&key).await,
                            Err(StoreError::NotFound(_))
                        ));
                    }
                    store.put(&key, Bytes::from_static(b"last")).await.unwrap();
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let page = store.list_keys("u/", None, 100).await.unwrap();
        assert_eq!(page.keys, (0..4).map(key).collect::<Vec<_>>());
    }

    /// A temporary file left in a shard by a crash is no key.
    #[tokio::test]
    async fn temporary_files_in_shards_are_invisible() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        store.put(OP_A, Bytes::new()).await.unwrap();
        let shard = dir.path().join("u/log/0000019af3c2~");
        fs::write(shard.join("~tmp-0123"), "partial").unwrap();
        fs::write(shard.join("zz"), "not an op name").unwrap();
        let page = store.list("u/", None, 100).await.unwrap();
        assert_eq!(keys(&page), [OP_A]);
    }

    #[tokio::test]
    async fn lists_in_byte_order_across_directories() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path().join("store")).unwrap();
        let mut all = vec![
            "a/b", "a-c", "a.d", "a+e", "a0", "a/a/a", "a/a-", "A", "a=", "b/c/d/e", "a/b0",
        ];
        for key in &all {
            store.put(key, Bytes::from(key.to_string())).await.unwrap();
        }
        all.sort_unstable();
        let page = store.list("", None, 100).await.unwrap();
        assert_eq!(keys(&page), all);
        assert!(!page.truncated);
        assert_eq!(page.objects[0].size, page.objects[0].key.len() as u64);

        // Paging one key at a time yields the same sequence.
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.list("", after.as_deref(), 1).await.unwrap();
            paged.extend(page.objects.iter().map(|o| o.key.clone()));
            after = paged.last().cloned();
            if !page.truncated {
                break;
            }
        }
        assert_eq!(paged, all);

        let page = store.list("a/", Some("a/a/a"), 100).await.unwrap();
        assert_eq!(keys(&page), ["a/b", "a/b0"]);
        let page = store.list("a", Some("a/"), 100).await.unwrap();
        assert_eq!(keys(&page), ["a/a-", "a/a/a", "a/b", "a/b0", "a0", "a="]);
    }

    #[tokio::test]
    async fn temporary_files_are_invisible() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        store.put("x/one", Bytes::from_static(b"1")).await.unwrap();
        // What a writer that crashed before its rename leaves behind.
        fs::write(dir.path().join("x/~tmp-0123"), b"partial").unwrap();
        fs::write(dir.path().join("~tmp-4567"), b"partial").unwrap();
        fs::write(dir.path().join("x/not a key"), b"stray").unwrap();
        let page = store.list("", None, 100).await.unwrap();
        assert_eq!(keys(&page), ["x/one"]);
        // And no put leaves one behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("x"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[tokio::test]
    async fn delete_prunes_empty_directories() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        store.put("a/b/c/d", Bytes::new()).await.unwrap();
        store.put("a/keep", Bytes::new()).await.unwrap();
        store.delete("a/b/c/d").await.unwrap();
        assert!(!dir.path().join("a/b").exists());
        assert!(dir.path().join("a/keep").is_file());
        store.delete("a/b/c/d").await.unwrap();
        store.delete("a/keep").await.unwrap();
        assert!(!dir.path().join("a").exists());
        assert!(dir.path().is_dir());
    }

    #[tokio::test]
    async fn key_that_is_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        store.put("a/b/c", Bytes::new()).await.unwrap();
        assert!(store.get("a/b").await.unwrap_err().is_not_found());
        assert!(
            store
                .get_range("a/b", 0..1)
                .await
                .unwrap_err()
                .is_not_found()
        );
        assert!(store.get("a/b/c/d").await.unwrap_err().is_not_found());
        store.delete("a/b").await.unwrap();
        let err = store.put("a/b", Bytes::new()).await.unwrap_err();
        assert!(matches!(err, StoreError::Permanent(_)), "{err}");
        let err = store.put("a/b/c/d", Bytes::new()).await.unwrap_err();
        assert!(matches!(err, StoreError::Permanent(_)), "{err}");
    }

    /// Writers in separate store handles (as separate processes would be)
    /// race on one key while readers check they only ever see one whole
    /// version.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_writers_leave_one_whole_version() {
        let dir = tempfile::tempdir().unwrap();
        let versions: Vec<Bytes> = (0..4u8)
            .map(|i| Bytes::from(vec![b'a' + i; 256 * 1024]))
            .collect();
        let mut tasks = Vec::new();
        for round in 0..8 {
            for version in &versions {
                let store = FsStore::open(dir.path()).unwrap();
                let body = version.clone();
                tasks.push(tokio::spawn(async move {
                    store.put("race/key", body).await.unwrap();
                }));
            }
            let store = FsStore::open(dir.path()).unwrap();
            let versions = versions.clone();
            tasks.push(tokio::spawn(async move {
                match store.get("race/key").await {
                    Ok(body) => assert!(versions.contains(&body), "mixed body in round {round}"),
                    Err(e) => assert!(e.is_not_found(), "{e}"),
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let store = FsStore::open(dir.path()).unwrap();
        let body = store.get("race/key").await.unwrap();
        assert!(versions.contains(&body));
        assert_eq!(keys(&store.list("", None, 10).await.unwrap()), ["race/key"]);
        assert_eq!(fs::read_dir(dir.path().join("race")).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn open_on_a_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"").unwrap();
        assert!(FsStore::open(&file).is_err());
    }
}
