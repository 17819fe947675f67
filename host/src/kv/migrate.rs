//! `peerhost storage migrate`: moves a peer's kv store to another backend.
//!
//! Every key is copied with its value and owner (revisions are the new
//! store's own), the copy is checked against the source (the number of
//! keys and a SHA-256 over every key, value and owner in key order), and
//! only then does `peer.toml` name the new backend. The old store stays
//! where it is until `peerhost storage clean` removes it. A peer being
//! served is refused: a worker serving the whole deployment holds a shared
//! lock on `state/serving.lock` of the deployment (one file however many
//! peers it hosts), a worker serving chosen peers (`--peer`) one on
//! `peers/<name>/state/serving.lock` for each, and a migration takes both
//! exclusively.

use super::{Charge, CheckedValue, KvBackend, KvError, MAX_BATCH};
use crate::config::{Backend, DeploymentError, FsBackend, PeerConfig, Storage};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The serving lock of `dir`: a peer's directory, or the deployment's.
pub fn serving_lock_path(dir: &Path) -> PathBuf {
    dir.join("state").join("serving.lock")
}

/// Takes the serving lock of `dir` (a peer's directory, or the
/// deployment's for a worker serving all of it), shared: held by a worker
/// for as long as it serves.
pub fn hold_serving(dir: &Path) -> std::io::Result<std::fs::File> {
    let file = open_lock(dir)?;
    file.lock_shared()?;
    Ok(file)
}

/// Takes the deployment's and peer `name`'s serving locks exclusively, or
/// says that a worker serves the peer.
pub(crate) fn take_serving(root: &Path, name: &str) -> Result<Vec<std::fs::File>, MigrateError> {
    let mut held = Vec::new();
    for dir in [root.to_owned(), root.join("peers").join(name)] {
        let path = serving_lock_path(&dir);
        let lock = open_lock(&dir).map_err(|e| DeploymentError::file(&path, e.to_string()))?;
        match lock.try_lock() {
            Ok(()) => held.push(lock),
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(MigrateError::Served(name.to_owned()));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(DeploymentError::file(&path, e.to_string()).into());
            }
        }
    }
    Ok(held)
}

fn open_lock(dir: &Path) -> std::io::Result<std::fs::File> {
    let path = serving_lock_path(dir);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// Why a migration did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A worker serves the peer.
    #[error("peer `{0}` is being served by a worker: stop it (or serve without it) first")]
    Served(String),
    /// The peer uses that backend already.
    #[error("peer `{peer}` keeps its kv in {backend} already")]
    Same {
        /// The peer.
        peer: String,
        /// Its backend.
        backend: &'static str,
    },
    /// The peer keeps its namespace on that backend already.
    #[error("peer `{peer}` keeps its files in {backend} already")]
    SameFs {
        /// The peer.
        peer: String,
        /// Its backend.
        backend: &'static str,
    },
    /// The copy of the namespace differs from the source.
    #[error(
        "the copy of the files in {to} differs from {from}: {copied} entries (hash {copy_hash}) \
         against {count} (hash {hash}); peer.toml still names {from}"
    )]
    FilesDiffer {
        /// The source backend.
        from: &'static str,
        /// The target backend.
        to: &'static str,
        /// Entries in the source.
        count: u64,
        /// Entries in the copy.
        copied: u64,
        /// The source's hash.
        hash: String,
        /// The copy's hash.
        copy_hash: String,
    },
    /// A namespace failed.
    #[error(transparent)]
    Namespace(#[from] crate::namespace::backend::NsError),
    /// The copy differs from the source.
    #[error(
        "the copy in {to} differs from {from}: {copied} keys (hash {copy_hash}) against {count} \
         (hash {hash}); peer.toml still names {from}"
    )]
    Differs {
        /// The source backend.
        from: &'static str,
        /// The target backend.
        to: &'static str,
        /// Keys in the source.
        count: u64,
        /// Keys in the copy.
        copied: u64,
        /// The source's hash.
        hash: String,
        /// The copy's hash.
        copy_hash: String,
    },
    /// A store failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// A file could not be read or written.
    #[error(transparent)]
    Deployment(#[from] DeploymentError),
}

/// What a migration did.
#[derive(Debug)]
pub struct Migrated {
    /// Keys copied.
    pub keys: u64,
    /// Their SHA-256, as hex.
    pub hash: String,
    /// Keys the target held from an earlier migration, replaced.
    pub replaced: u64,
}

/// The number of keys of `kv` and a SHA-256 over every key, value and
/// owner in key order.
pub fn digest(kv: &dyn KvBackend) -> Result<(u64, String), KvError> {
    let mut digest = Tally::default();
    each(kv, |key, value, owner| {
        digest.add(key, value, owner);
        Ok(())
    })?;
    Ok(digest.finish())
}

/// A running [`digest`]: entries added in key order.
#[derive(Default)]
struct Tally {
    hash: Sha256,
    count: u64,
}

impl Tally {
    fn add(&mut self, key: &str, value: &str, owner: &str) {
        for part in [key, value, owner] {
            self.hash.update((part.len() as u64).to_le_bytes());
            self.hash.update(part.as_bytes());
        }
        self.count += 1;
    }

    fn finish(self) -> (u64, String) {
        (self.count, hex::encode(self.hash.finalize()))
    }
}

/// Every entry of `kv`, in key order.
fn each(
    kv: &dyn KvBackend,
    mut visit: impl FnMut(&str, &str, &str) -> Result<(), KvError>,
) -> Result<(), KvError> {
    let deadline = Instant::now() + Duration::from_secs(24 * 3600);
    let mut cursor: Option<String> = None;
    loop {
        let page = kv.list("", cursor.as_deref(), super::MAX_PAGE, deadline)?;
        for keys in page.keys.chunks(MAX_BATCH) {
            for (key, entry) in keys.iter().zip(kv.get_many(keys)?) {
                // A key removed meanwhile (no worker serves it: nothing should).
                if let Some(entry) = entry {
                    visit(key, &entry.value, &entry.owner)?;
                }
            }
        }
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}

/// Removes every key of `kv`; how many there were.
fn empty(kv: &dyn KvBackend) -> Result<u64, KvError> {
    let deadline = Instant::now() + Duration::from_secs(24 * 3600);
    let mut removed = 0;
    loop {
        let page = kv.list("", None, MAX_BATCH, deadline)?;
        if page.keys.is_empty() {
            return Ok(removed);
        }
        removed += u64::from(super::delete_many(kv, &Charge::unlimited(""), &page.keys)?);
    }
}

/// Moves the kv store of peer `name` of the deployment at `root` to `to`.
pub fn migrate(root: &Path, name: &str, to: Backend) -> Result<Migrated, MigrateError> {
    migrate_with_progress(root, name, to, &mut |_, _| {})
}

/// [`migrate`], telling `progress` (keys copied, keys in all) after each
/// batch.
pub fn migrate_with_progress(
    root: &Path,
    name: &str,
    to: Backend,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Migrated, MigrateError> {
    let lock = take_serving(root, name)?;
    let peer_dir = &root.join("peers").join(name);
    let config_path = peer_dir.join("peer.toml");
    let config: PeerConfig = crate::config::load_toml(&config_path)?;
    if config.storage.kv == to {
        return Err(MigrateError::Same {
            peer: name.to_owned(),
            backend: to.name(),
        });
    }
    let source = super::open(peer_dir, name, &config.storage)?;
    let target_storage = Storage {
        kv: to,
        ..config.storage.clone()
    };
    let target = super::open(peer_dir, name, &target_storage)?;
    source.check()?;
    target.check()?;
    let replaced = empty(target.as_ref())?;

    let total = source.usage(None).map_or(0, |usage| usage.keys);
    let mut copied_so_far = 0u64;
    progress(0, total);
    // Copied a batch at a time, each batch one transaction per owner.
    let mut batch: Vec<(String, String, String)> = Vec::new();
    let mut flush = |batch: &mut Vec<(String, String, String)>| -> Result<(), KvError> {
        batch.sort_by(|a, b| a.2.cmp(&b.2));
        for run in batch.chunk_by(|a, b| a.2 == b.2) {
            let values = run
                .iter()
                .map(|(key, value, _)| CheckedValue::new(key, value))
                .collect::<Result<Vec<_>, _>>()?;
            super::set_many(target.as_ref(), &Charge::unlimited(&run[0].2), &values)?;
        }
        copied_so_far += batch.len() as u64;
        progress(copied_so_far, total.max(copied_so_far));
        batch.clear();
        Ok(())
    };
    // The source's digest in the same pass: nothing changes it meanwhile
    // (the serving lock is held).
    let mut source_digest = Tally::default();
    each(source.as_ref(), |key, value, owner| {
        source_digest.add(key, value, owner);
        batch.push((key.to_owned(), value.to_owned(), owner.to_owned()));
        if batch.len() == MAX_BATCH {
            flush(&mut batch)?;
        }
        Ok(())
    })?;
    flush(&mut batch)?;

    let (count, hash) = source_digest.finish();
    let (copied, copy_hash) = digest(target.as_ref())?;
    if (count, &hash) != (copied, &copy_hash) {
        return Err(MigrateError::Differs {
            from: source.name(),
            to: target.name(),
            count,
            copied,
            hash,
            copy_hash,
        });
    }
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| DeploymentError::file(&config_path, format!("cannot read: {e}")))?;
    crate::files::write_atomically(&config_path, &with_backend(&text, to))
        .map_err(|e| DeploymentError::file(&config_path, format!("cannot write: {e}")))?;
    drop(lock);
    Ok(Migrated {
        keys: count,
        hash,
        replaced,
    })
}

/// Removes the kv stores and namespaces of the backends peer `name` does
/// not use (what migrations left: the kv directory, the SQLite database or
/// the other's tables in it, the kv and file objects under the
/// `[storage.s3]` prefix, the files of `data/`); returns what was removed.
pub fn clean(root: &Path, name: &str) -> Result<Vec<PathBuf>, MigrateError> {
    let _lock = take_serving(root, name)?;
    let peer_dir = &root.join("peers").join(name);
    let config: PeerConfig = crate::config::load_toml(&peer_dir.join("peer.toml"))?;
    let mut removed = Vec::new();
    let remove = |path: PathBuf, removed: &mut Vec<PathBuf>| -> Result<(), MigrateError> {
        let result = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match result {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(DeploymentError::file(&path, format!("cannot remove: {e}")).into());
            }
        }
        Ok(())
    };
    if config.storage.kv != Backend::Fs {
        remove(peer_dir.join(super::KV_DIR), &mut removed)?;
    }
    if config.storage.kv != Backend::S3
        && let Some(s3) = &config.storage.s3
    {
        let store = super::s3::S3Kv::new(s3, name, peer_dir);
        if store.remove_all()? > 0 {
            removed.push(PathBuf::from(store.location()));
        }
    }
    let fs = config.storage.fs;
    if fs != FsBackend::S3
        && let Some(s3) = &config.storage.s3
    {
        let files = crate::namespace::s3::S3Namespace::new(s3, name, peer_dir);
        if files.remove_all()? > 0 {
            removed.push(PathBuf::from(files.location()));
        }
    }
    let database = peer_dir.join(super::sqlite::FILE);
    match (
        config.storage.kv == Backend::Sqlite,
        fs == FsBackend::Sqlite,
    ) {
        (false, false) => {
            for suffix in ["", "-wal", "-shm"] {
                remove(
                    peer_dir.join(format!("{}{suffix}", super::sqlite::FILE)),
                    &mut removed,
                )?;
            }
        }
        // One of them is in the database: the other's tables are emptied.
        (false, true) => {
            let kv = super::sqlite::SqliteKv::new(&database, config.storage.synchronous);
            if empty(&kv)? > 0 {
                removed.push(PathBuf::from(format!(
                    "{}: its kv keys",
                    database.display()
                )));
            }
        }
        (true, false) if database.exists() => {
            let files = crate::namespace::sqlite::SqliteNamespace::new(&database);
            if crate::namespace::migrate::empty(&files)? > 0 {
                removed.push(PathBuf::from(format!("{}: its files", database.display())));
            }
        }
        (true, _) => {}
    }
    if fs != FsBackend::Dir {
        let data = peer_dir.join("data");
        let entries = std::fs::read_dir(&data).map_or(0, |entries| entries.count());
        if entries > 0 {
            remove(data.clone(), &mut removed)?;
            std::fs::create_dir_all(&data).map_err(|e| {
                DeploymentError::file(&data, format!("cannot create directory: {e}"))
            })?;
        }
    }
    Ok(removed)
}

/// `peer.toml`'s text with `[storage] kv` naming `to`: the `kv` (or
/// `backend`) line of `[storage]` replaced, or added, with the section if
/// there is none. Comments and every other line stay.
pub fn with_backend(text: &str, to: Backend) -> String {
    with_storage_line(text, &["kv", "backend"], &format!("kv = \"{}\"", to.name()))
}

/// `peer.toml`'s text with `line` in place of the line of `[storage]` that
/// sets one of `keys`, or added (with the section if there is none).
/// Comments and every other line stay.
pub fn with_storage_line(text: &str, keys: &[&str], line: &str) -> String {
    let line = line.to_owned();
    let mut out = Vec::new();
    let (mut section, mut done, mut in_storage_at) = (String::new(), false, None);
    for raw in text.lines() {
        let trimmed = raw.trim();
        if trimmed.starts_with('[') {
            section = trimmed
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
            if section == "storage" {
                in_storage_at = Some(out.len());
            }
        } else if section == "storage" && !done {
            let key = trimmed.split('=').next().unwrap_or_default().trim();
            if keys.contains(&key) {
                out.push(line.clone());
                done = true;
                continue;
            }
        }
        out.push(raw.to_owned());
    }
    if !done {
        match in_storage_at {
            Some(at) => out.insert(at + 1, line),
            None => {
                out.push(String::new());
                out.push("[storage]".to_owned());
                out.push(line);
            }
        }
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storage_line_is_replaced_or_added_and_nothing_else_changes() {
        let toml = "description = \"x\"\n# keep me\n[storage]\nbackend = \"fs\" # old\nsynchronous = \"normal\"\n[quotas]\nkv_keys = 1\n";
        let out = with_backend(toml, Backend::Sqlite);
        assert_eq!(
            out,
            "description = \"x\"\n# keep me\n[storage]\nkv = \"sqlite\"\nsynchronous = \"normal\"\n[quotas]\nkv_keys = 1\n"
        );
        let added = with_backend("description = \"x\"\n", Backend::Fs);
        assert_eq!(added, "description = \"x\"\n\n[storage]\nkv = \"fs\"\n");
        let section = with_backend("[storage]\nsynchronous = \"full\"\n", Backend::Sqlite);
        assert_eq!(
            section,
            "[storage]\nkv = \"sqlite\"\nsynchronous = \"full\"\n"
        );
        for text in [out, added, section] {
            let parsed: Result<PeerConfig, _> = toml::from_str(&text);
            assert!(parsed.is_ok(), "{text}");
        }
    }

    #[test]
    fn a_migration_keeps_every_value_and_owner_and_refuses_a_served_peer() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = tmp.path();
        let peer = &root.join("peers/bob");
        std::fs::create_dir_all(peer).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(peer.join("peer.toml"), "[storage]\nkv = \"fs\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let fs =
            super::super::open(peer, "bob", &Storage::default()).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..1_234 {
            let (key, value) = (format!("k/{i:05}"), format!("{{\"n\":{i}}}"));
            let owner = if i % 3 == 0 { "alice" } else { "bob" };
            let value = CheckedValue::new(&key, &value).unwrap_or_else(|e| panic!("{e}"));
            super::super::set(fs.as_ref(), &Charge::unlimited(owner), &value)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let before = digest(fs.as_ref()).unwrap_or_else(|e| panic!("{e}"));
        // Served alone, or with the whole deployment: refused either way.
        for served in [peer, root] {
            let held = hold_serving(served).unwrap_or_else(|e| panic!("{e}"));
            assert!(matches!(
                migrate(root, "bob", Backend::Sqlite),
                Err(MigrateError::Served(_))
            ));
            assert!(matches!(clean(root, "bob"), Err(MigrateError::Served(_))));
            drop(held);
        }
        let done = migrate(root, "bob", Backend::Sqlite).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((done.keys, done.hash.clone()), before);
        let config: PeerConfig =
            crate::config::load_toml(&peer.join("peer.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.storage.kv, Backend::Sqlite);
        let sqlite =
            super::super::open(peer, "bob", &config.storage).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sqlite.usage(Some("alice")).unwrap_or_default().keys, 412);
        // And back: the fs store left behind is replaced, not added to.
        let back = migrate(root, "bob", Backend::Fs).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (back.keys, back.hash.clone(), back.replaced),
            (before.0, before.1.clone(), 1_234)
        );
        let removed = clean(root, "bob").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            removed.iter().any(|p| p.ends_with("kv.sqlite")),
            "{removed:?}"
        );
        assert!(peer.join("kv").is_dir());
        assert!(matches!(
            migrate(root, "bob", Backend::Fs),
            Err(MigrateError::Same { .. })
        ));
    }
}
