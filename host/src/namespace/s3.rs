//! The namespace in an S3 bucket (`[storage] fs = "s3"`): the bucket and
//! prefix of `[storage.s3]`, beside the peer's kv objects, so that any
//! worker given the bucket serves the peer's files.
//!
//! A file is one object, `<prefix>/fs/<names>`, each name
//! percent-encoded as object paths encode it (so a name never holds `/`,
//! `~` or `%` raw). A directory is a prefix with a marker object
//! `<prefix>/fs/<names>/~dir` (a raw `~`, which no encoded name has), so an
//! empty directory exists too. Keys are at most [`MAX_KEY`] bytes (S3's
//! limit): a deeper path is `invalid`.
//!
//! S3 writes whole objects. A file being written is held in memory, whole,
//! and put back when [`NamespaceBackend::sync`] is called: the host calls it
//! when an invocation ends, before its answer goes out, and a failed put
//! makes that answer `failed`. Reads load a file whole too, and keep it
//! until that sync (at most [`HELD`] bytes of files read but not written).
//! A file is at most [`MAX_FILE`] bytes.
//!
//! A rename is a copy and a delete of every object it moves. It is made
//! safe against a crash half way by a journal: the list of moves is written
//! first (`<prefix>/fs.rename`, created only if absent, so two renames never
//! interleave), then every copy, then every delete, then the journal is
//! deleted. A journal found at the first operation of a worker (or after a
//! failed rename) is played again: a move whose source is gone was
//! copied already. The rename is then complete, never half done.
//!
//! One worker at a time writes a namespace (the cluster issue shares a peer
//! between workers): operations of one worker are serialised, another
//! worker's writes are seen at its sync.

use super::backend::{
    Entry, Kind, NamespaceBackend, NsError, NsPath, OpenMode, Stat, check_rename, end_of,
};
use crate::kv::s3::{S3Config, block, build, check_prefix, is_conflict};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::path::{Path as ObjectPath, PathPart};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The largest file, in bytes.
pub const MAX_FILE: u64 = 64 << 20;

/// The longest object key S3 takes, in bytes.
pub const MAX_KEY: usize = 1024;

/// Bytes of files read (not written) kept in memory until the next sync.
pub const HELD: u64 = 64 << 20;

/// The name of a directory's marker object.
const MARKER: &str = "~dir";

/// Requests in flight at once when a rename moves many objects.
const CONCURRENCY: usize = 32;

/// A peer's namespace in S3.
pub struct S3Namespace {
    store: Result<Arc<AmazonS3>, String>,
    location: String,
    root: ObjectPath,
    journal: ObjectPath,
    state: Mutex<State>,
}

impl std::fmt::Debug for S3Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Namespace")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// Whether a journal left by an earlier worker has been looked for.
    recovered: bool,
    /// Files in memory: written and not yet put (dirty), or read.
    held: BTreeMap<NsPath, Held>,
}

impl State {
    /// Forgets the files read but not written once they pass [`HELD`].
    fn trim(&mut self) {
        let clean: u64 = self
            .held
            .values()
            .filter(|held| !held.dirty)
            .map(|held| held.bytes.len() as u64)
            .sum();
        if clean > HELD {
            self.held.retain(|_, held| held.dirty);
        }
    }
}

/// A file in memory.
struct Held {
    bytes: Vec<u8>,
    dirty: bool,
    modified: SystemTime,
}

fn failed(message: impl std::fmt::Display) -> NsError {
    NsError::Backend(message.to_string())
}

/// Runs `request` on the S3 runtime and waits for its answer.
fn wait<T: Send + 'static>(
    request: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, NsError> {
    block(request).map_err(failed)
}

/// What a request found; `None` for an absent object.
fn found<T>(result: object_store::Result<T>) -> Result<Option<T>, NsError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(failed(e)),
    }
}

fn time(meta: &ObjectMeta) -> SystemTime {
    let millis = u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or(0);
    UNIX_EPOCH + Duration::from_millis(millis)
}

/// The marker object of the directory whose key is `key`.
fn marker(key: &ObjectPath) -> Result<ObjectPath, NsError> {
    ObjectPath::parse(format!("{key}/{MARKER}")).map_err(failed)
}

/// A name as the namespace shows it: the last part of `key`, decoded.
fn name_of(key: &ObjectPath) -> Option<String> {
    let name = percent_encoding::percent_decode_str(key.filename()?)
        .decode_utf8()
        .ok()?
        .into_owned();
    // Only what a path may name (an object put there by hand may not).
    let parsed = NsPath::parse(&name).ok()?;
    (parsed.names().len() == 1).then_some(name)
}

impl S3Namespace {
    /// The namespace of peer `name` in `peer_dir` in the bucket `config`
    /// names. What is wrong with it (no credentials, a bad prefix) is the
    /// error of every operation.
    pub fn new(config: &S3Config, name: &str, peer_dir: &Path) -> S3Namespace {
        let prefix = config
            .prefix
            .clone()
            .unwrap_or_else(|| format!("peers/{name}"));
        let store = check_prefix(&prefix).and_then(|()| build(config, peer_dir));
        S3Namespace {
            store: store.map(Arc::new),
            location: format!("s3://{}/{prefix}/fs", config.bucket),
            root: ObjectPath::from(format!("{prefix}/fs")),
            journal: ObjectPath::from(format!("{prefix}/fs.rename")),
            state: Mutex::default(),
        }
    }

    /// Where the files are: `s3://<bucket>/<prefix>/fs`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Deletes every object of the namespace and its journal; how many.
    pub fn remove_all(&self) -> Result<u64, NsError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.held.clear();
        let store = self.store()?;
        let (root, journal) = (self.root.clone(), self.journal.clone());
        wait(async move {
            let mut objects: Vec<ObjectPath> = store
                .list(Some(&root))
                .map_ok(|meta| meta.location)
                .try_collect()
                .await?;
            if store.head(&journal).await.is_ok() {
                objects.push(journal);
            }
            let removed = objects.len() as u64;
            futures::stream::iter(objects)
                .map(|object| {
                    let store = store.clone();
                    async move { store.delete(&object).await }
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
            Ok::<u64, object_store::Error>(removed)
        })?
        .map_err(failed)
    }

    fn store(&self) -> Result<Arc<AmazonS3>, NsError> {
        self.store.clone().map_err(failed)
    }

    /// The state, after a journal left by a crash has been played.
    fn lock(&self) -> Result<MutexGuard<'_, State>, NsError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !state.recovered {
            self.recover()?;
            state.recovered = true;
        }
        Ok(state)
    }

    /// The key of `path`'s object.
    fn key(&self, path: &NsPath) -> Result<ObjectPath, NsError> {
        let key = path.names().iter().fold(self.root.clone(), |key, name| {
            key.join(PathPart::from(name.as_str()))
        });
        self.fits(path, key)
    }

    /// `key`, or `invalid` when it (or a marker under it) is too long.
    fn fits(&self, path: &NsPath, key: ObjectPath) -> Result<ObjectPath, NsError> {
        if key.as_ref().len() + 1 + MARKER.len() > MAX_KEY {
            return Err(NsError::Invalid(format!(
                "{path} is too long for an S3 key (at most {MAX_KEY} bytes, names percent-encoded)"
            )));
        }
        Ok(key)
    }

    /// What is at `path`, if anything.
    fn stat_of(&self, state: &State, path: &NsPath) -> Result<Option<Stat>, NsError> {
        if path.is_root() {
            return Ok(Some(Stat {
                kind: Kind::Directory,
                size: 0,
                modified: None,
            }));
        }
        if let Some(held) = state.held.get(path) {
            return Ok(Some(Stat {
                kind: Kind::File,
                size: held.bytes.len() as u64,
                modified: Some(held.modified),
            }));
        }
        let store = self.store()?;
        let file = self.key(path)?;
        let dir = marker(&file)?;
        let (file, dir) = wait(async move {
            let (file, dir) = futures::future::join(store.head(&file), store.head(&dir)).await;
            (file, dir)
        })?;
        if let Some(meta) = found(file)? {
            return Ok(Some(Stat {
                kind: Kind::File,
                size: meta.size,
                modified: Some(time(&meta)),
            }));
        }
        Ok(found(dir)?.map(|meta| Stat {
            kind: Kind::Directory,
            size: 0,
            modified: Some(time(&meta)),
        }))
    }

    /// Checks that the directory `path` is in exists.
    fn parent_of(&self, state: &State, path: &NsPath) -> Result<(), NsError> {
        let Some((parent, _)) = path.split() else {
            return Ok(());
        };
        match self.stat_of(state, &parent)? {
            Some(stat) if stat.kind == Kind::Directory => Ok(()),
            Some(_) => Err(NsError::NotADirectory(path.clone())),
            None => Err(NsError::NotFound(path.clone())),
        }
    }

    /// The file at `path`, in memory.
    fn load<'s>(&self, state: &'s mut State, path: &NsPath) -> Result<&'s mut Held, NsError> {
        if path.is_root() {
            return Err(NsError::IsADirectory(path.clone()));
        }
        if !state.held.contains_key(path) {
            let store = self.store()?;
            let key = self.key(path)?;
            let got = wait(async move {
                let result = store.get(&key).await?;
                let modified = time(&result.meta);
                result.bytes().await.map(|bytes| (bytes, modified))
            })?;
            let Some((bytes, modified)) = found(got)? else {
                return Err(match self.stat_of(state, path)? {
                    Some(stat) if stat.kind == Kind::Directory => {
                        NsError::IsADirectory(path.clone())
                    }
                    _ => NsError::NotFound(path.clone()),
                });
            };
            state.trim();
            state.held.insert(
                path.clone(),
                Held {
                    bytes: bytes.to_vec(),
                    dirty: false,
                    modified,
                },
            );
        }
        state
            .held
            .get_mut(path)
            .ok_or_else(|| NsError::NotFound(path.clone()))
    }

    /// Puts `bytes` at `key`: `create` only if nothing is there (`false`
    /// when something is).
    fn put(&self, key: ObjectPath, bytes: Vec<u8>, create: bool) -> Result<bool, NsError> {
        let store = self.store()?;
        let mode = if create {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        match wait(async move {
            store
                .put_opts(&key, PutPayload::from(bytes), PutOptions::from(mode))
                .await
        })? {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(failed(e)),
        }
    }

    fn delete(&self, key: ObjectPath) -> Result<(), NsError> {
        let store = self.store()?;
        wait(async move { store.delete(&key).await })?.map_err(failed)
    }

    /// Puts the written files `which` selects.
    fn flush(&self, state: &mut State, which: impl Fn(&NsPath) -> bool) -> Result<(), NsError> {
        let dirty: Vec<NsPath> = state
            .held
            .iter()
            .filter(|(path, held)| held.dirty && which(path))
            .map(|(path, _)| path.clone())
            .collect();
        for path in dirty {
            let key = self.key(&path)?;
            let Some(held) = state.held.get_mut(&path) else {
                continue;
            };
            self.put(key, held.bytes.clone(), false)?;
            held.dirty = false;
        }
        Ok(())
    }

    /// Whether the directory whose key is `key` has no entries.
    fn is_empty(&self, key: &ObjectPath) -> Result<bool, NsError> {
        let store = self.store()?;
        let key = key.clone();
        let listed =
            wait(async move { store.list_with_delimiter(Some(&key)).await })?.map_err(failed)?;
        Ok(listed.common_prefixes.is_empty()
            && listed
                .objects
                .iter()
                .all(|object| object.location.filename() == Some(MARKER)))
    }

    /// Plays the journal of a rename that did not end, if there is one.
    fn recover(&self) -> Result<(), NsError> {
        let store = self.store()?;
        let journal = self.journal.clone();
        let text = wait(async move {
            let result = store.get(&journal).await?;
            result.bytes().await
        })?;
        let Some(text) = found(text)? else {
            return Ok(());
        };
        let moves: Vec<(String, String)> = serde_json::from_slice(&text)
            .map_err(|e| failed(format!("the rename journal {}: {e}", self.journal)))?;
        let moves = moves
            .into_iter()
            .map(|(from, to)| Ok((ObjectPath::parse(from)?, ObjectPath::parse(to)?)))
            .collect::<Result<Vec<_>, object_store::path::Error>>()
            .map_err(|e| failed(format!("the rename journal {}: {e}", self.journal)))?;
        if moves
            .iter()
            .any(|(from, to)| !from.prefix_matches(&self.root) || !to.prefix_matches(&self.root))
        {
            return Err(failed(format!(
                "the rename journal {} names objects outside the namespace",
                self.journal
            )));
        }
        tracing::info!(
            "completing a rename of {} objects left half way in {}",
            moves.len(),
            self.location
        );
        self.play(moves)
    }

    /// Copies every move's source to its target, then deletes the sources,
    /// then the journal. A source already gone was copied before.
    fn play(&self, moves: Vec<(ObjectPath, ObjectPath)>) -> Result<(), NsError> {
        let store = self.store()?;
        let journal = self.journal.clone();
        wait(async move {
            futures::stream::iter(moves.clone())
                .map(|(from, to)| {
                    let store = store.clone();
                    async move {
                        match store.copy(&from, &to).await {
                            Err(object_store::Error::NotFound { .. }) => Ok(()),
                            other => other,
                        }
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
            futures::stream::iter(moves)
                .map(|(from, _)| {
                    let store = store.clone();
                    async move { store.delete(&from).await }
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
            store.delete(&journal).await
        })?
        .map_err(failed)
    }
}

impl NamespaceBackend for S3Namespace {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn stat(&self, path: &NsPath) -> Result<Stat, NsError> {
        let state = self.lock()?;
        self.stat_of(&state, path)?
            .ok_or_else(|| NsError::NotFound(path.clone()))
    }

    fn open(&self, path: &NsPath, mode: OpenMode) -> Result<u64, NsError> {
        if path.is_root() {
            return Err(NsError::IsADirectory(path.clone()));
        }
        let mut state = self.lock()?;
        match self.stat_of(&state, path)? {
            Some(stat) if stat.kind == Kind::Directory => Err(NsError::IsADirectory(path.clone())),
            Some(_) if mode.create && mode.exclusive => Err(NsError::Exists(path.clone())),
            Some(stat) if !mode.truncate => Ok(stat.size),
            Some(_) => {
                state.held.insert(
                    path.clone(),
                    Held {
                        bytes: Vec::new(),
                        dirty: true,
                        modified: SystemTime::now(),
                    },
                );
                Ok(0)
            }
            None => {
                self.parent_of(&state, path)?;
                if !mode.create {
                    return Err(NsError::NotFound(path.clone()));
                }
                if !self.put(self.key(path)?, Vec::new(), true)? && mode.exclusive {
                    return Err(NsError::Exists(path.clone()));
                }
                Ok(0)
            }
        }
    }

    fn read(&self, path: &NsPath, offset: u64, len: u64) -> Result<Vec<u8>, NsError> {
        let mut state = self.lock()?;
        let held = self.load(&mut state, path)?;
        let size = held.bytes.len() as u64;
        let start = offset.min(size);
        let end = end_of(offset, len)?.min(size);
        // Both are at most the size of a vector in memory.
        Ok(held.bytes[start as usize..end as usize].to_vec())
    }

    fn write(&self, path: &NsPath, offset: u64, bytes: &[u8]) -> Result<u64, NsError> {
        let end = end_of(offset, bytes.len() as u64)?;
        if end > MAX_FILE {
            return Err(NsError::Invalid(format!(
                "a file on s3 is at most {MAX_FILE} bytes; this write would make {path} {end}"
            )));
        }
        let mut state = self.lock()?;
        let held = self.load(&mut state, path)?;
        // At most MAX_FILE: fits a usize.
        let (offset, end) = (offset as usize, end as usize);
        if held.bytes.len() < end {
            held.bytes.resize(end, 0);
        }
        held.bytes[offset..end].copy_from_slice(bytes);
        held.dirty = true;
        held.modified = SystemTime::now();
        Ok(held.bytes.len() as u64)
    }

    fn set_size(&self, path: &NsPath, size: u64) -> Result<(), NsError> {
        if size > MAX_FILE {
            return Err(NsError::Invalid(format!(
                "a file on s3 is at most {MAX_FILE} bytes, not {size}"
            )));
        }
        let mut state = self.lock()?;
        let held = self.load(&mut state, path)?;
        held.bytes.resize(size as usize, 0);
        held.dirty = true;
        held.modified = SystemTime::now();
        Ok(())
    }

    fn list(&self, path: &NsPath) -> Result<Vec<Entry>, NsError> {
        let state = self.lock()?;
        match self.stat_of(&state, path)? {
            None => return Err(NsError::NotFound(path.clone())),
            Some(stat) if stat.kind == Kind::File => {
                return Err(NsError::NotADirectory(path.clone()));
            }
            Some(_) => {}
        }
        let store = self.store()?;
        let key = self.key(path)?;
        let listed =
            wait(async move { store.list_with_delimiter(Some(&key)).await })?.map_err(failed)?;
        let mut entries: Vec<Entry> = listed
            .objects
            .iter()
            .filter(|object| object.location.filename() != Some(MARKER))
            .filter_map(|object| name_of(&object.location))
            .map(|name| Entry {
                name,
                kind: Kind::File,
            })
            .chain(
                listed
                    .common_prefixes
                    .iter()
                    .filter_map(name_of)
                    .map(|name| Entry {
                        name,
                        kind: Kind::Directory,
                    }),
            )
            .collect();
        entries.sort();
        Ok(entries)
    }

    fn create_dir(&self, path: &NsPath) -> Result<(), NsError> {
        if path.is_root() {
            return Err(NsError::Exists(path.clone()));
        }
        let state = self.lock()?;
        self.parent_of(&state, path)?;
        if self.stat_of(&state, path)?.is_some() {
            return Err(NsError::Exists(path.clone()));
        }
        if !self.put(marker(&self.key(path)?)?, Vec::new(), true)? {
            return Err(NsError::Exists(path.clone()));
        }
        Ok(())
    }

    fn remove_file(&self, path: &NsPath) -> Result<u64, NsError> {
        if path.is_root() {
            return Err(NsError::IsADirectory(path.clone()));
        }
        let mut state = self.lock()?;
        let stat = self
            .stat_of(&state, path)?
            .ok_or_else(|| NsError::NotFound(path.clone()))?;
        if stat.kind == Kind::Directory {
            return Err(NsError::IsADirectory(path.clone()));
        }
        self.delete(self.key(path)?)?;
        state.held.remove(path);
        Ok(stat.size)
    }

    fn remove_dir(&self, path: &NsPath) -> Result<(), NsError> {
        if path.is_root() {
            return Err(NsError::Invalid(
                "the namespace root cannot be removed".into(),
            ));
        }
        let state = self.lock()?;
        match self.stat_of(&state, path)? {
            None => return Err(NsError::NotFound(path.clone())),
            Some(stat) if stat.kind == Kind::File => {
                return Err(NsError::NotADirectory(path.clone()));
            }
            Some(_) => {}
        }
        let key = self.key(path)?;
        if !self.is_empty(&key)? {
            return Err(NsError::NotEmpty(path.clone()));
        }
        self.delete(marker(&key)?)
    }

    fn rename(&self, from: &NsPath, to: &NsPath) -> Result<u64, NsError> {
        check_rename(from, to)?;
        let mut state = self.lock()?;
        let source = self
            .stat_of(&state, from)?
            .ok_or_else(|| NsError::NotFound(from.clone()))?;
        self.parent_of(&state, to)?;
        let (from_key, to_key) = (self.key(from)?, self.key(to)?);
        let replaced = match self.stat_of(&state, to)? {
            Some(_) if from == to => return Ok(0),
            Some(target) => match (source.kind, target.kind) {
                (Kind::File, Kind::Directory) => return Err(NsError::IsADirectory(to.clone())),
                (Kind::Directory, Kind::File) => return Err(NsError::NotADirectory(to.clone())),
                (Kind::Directory, Kind::Directory) if !self.is_empty(&to_key)? => {
                    return Err(NsError::NotEmpty(to.clone()));
                }
                _ => target.size,
            },
            None => 0,
        };
        // What is written under either path goes first, as it is.
        let touched = |path: &NsPath| path.starts_with(from) || path.starts_with(to);
        self.flush(&mut state, touched)?;
        state.held.retain(|path, _| !touched(path));
        let moves = match source.kind {
            Kind::File => vec![(from_key, to_key)],
            Kind::Directory => {
                let store = self.store()?;
                let under = from_key.clone();
                let objects: Vec<ObjectPath> = wait(async move {
                    store
                        .list(Some(&under))
                        .map_ok(|meta| meta.location)
                        .try_collect()
                        .await
                })?
                .map_err(failed)?;
                objects
                    .into_iter()
                    .map(|object| {
                        let moved = object
                            .prefix_match(&from_key)
                            .into_iter()
                            .flatten()
                            .fold(to_key.clone(), |key, part| key.join(part));
                        let moved = self.fits(to, moved)?;
                        Ok((object.clone(), moved))
                    })
                    .collect::<Result<Vec<_>, NsError>>()?
            }
        };
        let journal: Vec<(&str, &str)> = moves
            .iter()
            .map(|(from, to)| (from.as_ref(), to.as_ref()))
            .collect();
        let text = serde_json::to_vec(&journal).map_err(failed)?;
        if !self.put(self.journal.clone(), text, true)? {
            // Played at the next operation, unless another worker is
            // renaming right now.
            state.recovered = false;
            return Err(failed(format!(
                "another rename of this namespace is under way ({})",
                self.journal
            )));
        }
        if let Err(e) = self.play(moves) {
            // The journal stays: the next operation completes the rename.
            state.recovered = false;
            return Err(e);
        }
        Ok(replaced)
    }

    fn usage(&self) -> Result<u64, NsError> {
        let state = self.lock()?;
        let store = self.store()?;
        let root = self.root.clone();
        let objects: Vec<ObjectMeta> =
            wait(async move { store.list(Some(&root)).try_collect::<Vec<_>>().await })?
                .map_err(failed)?;
        let mut held: BTreeMap<String, u64> = BTreeMap::new();
        for (path, file) in &state.held {
            held.insert(self.key(path)?.as_ref().to_owned(), file.bytes.len() as u64);
        }
        Ok(objects
            .iter()
            .filter(|object| object.location.filename() != Some(MARKER))
            .map(|object| {
                held.get(object.location.as_ref())
                    .copied()
                    .unwrap_or(object.size)
            })
            .sum())
    }

    /// A bad configuration, a bucket that is not there, a server that does
    /// not answer are errors.
    fn check(&self) -> Result<(), NsError> {
        let store = self.store()?;
        let root = self.root.clone();
        wait(async move { store.list_with_delimiter(Some(&root)).await })?
            .map(|_| ())
            .map_err(failed)
    }

    fn sync(&self) -> Result<(), NsError> {
        let mut state = self.lock()?;
        self.flush(&mut state, |_| true)?;
        state.held.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moto;

    fn namespace(moto: &moto::Moto, dir: &Path, prefix: &str) -> S3Namespace {
        std::fs::write(dir.join("s3.toml"), moto::CREDENTIALS).unwrap_or_else(|e| panic!("{e}"));
        let config = S3Config {
            bucket: moto::BUCKET.into(),
            prefix: Some(prefix.into()),
            endpoint: Some(moto.endpoint.clone()),
            region: None,
            credentials: Some("s3.toml".into()),
        };
        S3Namespace::new(&config, "bob", dir)
    }

    fn p(path: &str) -> NsPath {
        NsPath::parse(path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn the_s3_namespace_passes_the_conformance_suite_and_keeps_files_across_workers() {
        let Some(moto) = moto::Moto::start() else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ns = namespace(&moto, tmp.path(), "ns/conformance");
        ns.check().unwrap_or_else(|e| panic!("{e}"));
        super::super::backend::conformance::run(&ns);
        // Names an object path would otherwise read as structure.
        let names = ["~dir", "%41", "a b", "é~%*?#", "fs.rename"];
        for name in names {
            let path = p(&format!("/{name}"));
            ns.open(
                &path,
                OpenMode {
                    create: true,
                    ..OpenMode::default()
                },
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            ns.write(&path, 0, name.as_bytes())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        ns.sync().unwrap_or_else(|e| panic!("{e}"));
        // Another worker over the same prefix sees what was synced.
        let other = namespace(&moto, tmp.path(), "ns/conformance");
        let listed: Vec<String> = other
            .list(&NsPath::root())
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|entry| entry.name)
            .collect();
        assert_eq!(
            listed,
            ["%41", "a b", "a.txt", "fs.rename", "~dir", "é~%*?#"],
            "a name is what was written, never a marker"
        );
        for name in ["~dir", "%41", "é~%*?#"] {
            assert_eq!(
                other.read(&p(&format!("/{name}")), 0, 100).as_deref(),
                Ok(name.as_bytes())
            );
        }
        let bytes: usize = names.iter().map(|name| name.len()).sum();
        assert_eq!(other.usage(), Ok(3 + bytes as u64));
        let deep = format!("/{}", ["%%%%%%%%%%"; 40].join("/"));
        assert!(matches!(
            other.create_dir(&p(&deep)),
            Err(NsError::Invalid(_))
        ));
    }

    #[test]
    fn writes_wait_for_sync_and_a_rename_cut_short_is_completed_by_the_next_worker() {
        let Some(moto) = moto::Moto::start() else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ns = namespace(&moto, tmp.path(), "ns/crash");
        let create = OpenMode {
            create: true,
            ..OpenMode::default()
        };
        ns.create_dir(&p("/d")).unwrap_or_else(|e| panic!("{e}"));
        for name in ["/d/a", "/d/b"] {
            ns.open(&p(name), create).unwrap_or_else(|e| panic!("{e}"));
            ns.write(&p(name), 0, name.as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let other = namespace(&moto, tmp.path(), "ns/crash");
        assert_eq!(
            other.read(&p("/d/a"), 0, 10).as_deref(),
            Ok(&b""[..]),
            "not synced yet: created, still empty"
        );
        ns.sync().unwrap_or_else(|e| panic!("{e}"));
        other.sync().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(other.read(&p("/d/a"), 0, 10).as_deref(), Ok(&b"/d/a"[..]));

        // A worker died after the journal and one copy of a rename of
        // /d to /e: the next worker finishes it.
        let d = ns.key(&p("/d")).unwrap_or_else(|e| panic!("{e}"));
        let e = ns.key(&p("/e")).unwrap_or_else(|e| panic!("{e}"));
        let moves: Vec<(String, String)> = ["a", "b", MARKER]
            .iter()
            .map(|name| (format!("{d}/{name}"), format!("{e}/{name}")))
            .collect();
        let journal = serde_json::to_vec(&moves).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ns.put(ns.journal.clone(), journal, true), Ok(true));
        let store = ns.store().unwrap_or_else(|e| panic!("{e}"));
        let (from, to) = (
            ObjectPath::parse(&moves[0].0).unwrap_or_else(|e| panic!("{e}")),
            ObjectPath::parse(&moves[0].1).unwrap_or_else(|e| panic!("{e}")),
        );
        wait(async move { store.copy(&from, &to).await })
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        let next = namespace(&moto, tmp.path(), "ns/crash");
        assert_eq!(next.stat(&p("/d")), Err(NsError::NotFound(p("/d"))));
        assert_eq!(next.read(&p("/e/b"), 0, 10).as_deref(), Ok(&b"/d/b"[..]));
        assert_eq!(
            next.list(&p("/e")).map(|entries| entries.len()),
            Ok(2),
            "{:?}",
            next.list(&p("/e"))
        );
        // A second rename while a journal is there is refused, nothing moved.
        assert_eq!(
            next.put(next.journal.clone(), b"[]".to_vec(), true),
            Ok(true)
        );
        assert!(matches!(
            next.rename(&p("/e"), &p("/f")),
            Err(NsError::Backend(_))
        ));
        assert_eq!(next.stat(&p("/e")).map(|s| s.kind), Ok(Kind::Directory));
        assert_eq!(
            next.rename(&p("/e"), &p("/f")),
            Ok(0),
            "the empty journal was played at the next operation"
        );
    }
}
