//! `peerhost storage migrate --fs`: moves a peer's namespace to another
//! backend, as `storage migrate --to` moves its kv store (see
//! [`crate::kv::migrate`]): every directory and file is copied, the copy is
//! checked against the source (the number of entries and a SHA-256 over
//! every path, kind and byte in path order), and only then does
//! `peer.toml` name the new backend. The old files stay until `storage
//! clean`. A peer being served is refused.

use super::backend::{Kind, NamespaceBackend, NsError, NsPath, OpenMode};
use crate::config::{DeploymentError, FsBackend, PeerConfig, Storage};
use crate::kv::migrate::{MigrateError, take_serving, with_storage_line};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

/// Bytes of a file read or written at once.
const PIECE: u64 = 1 << 20;

/// What a migration of the namespace did.
#[derive(Debug)]
pub struct MovedFiles {
    /// Directories and files copied.
    pub entries: u64,
    /// Bytes of the files.
    pub bytes: u64,
    /// The SHA-256 of every path, kind and byte, as hex.
    pub hash: String,
    /// Entries the target held from an earlier migration, removed first.
    pub replaced: u64,
}

/// The namespace of peer `name` in `peer_dir` on the backend `storage`
/// names, the host directory too.
pub fn open(
    peer_dir: &Path,
    name: &str,
    storage: &Storage,
) -> Result<Arc<dyn NamespaceBackend>, MigrateError> {
    match super::Namespace::backend(peer_dir, name, storage)? {
        Some(backend) => Ok(backend),
        None => {
            let data = peer_dir.join("data");
            std::fs::create_dir_all(&data).map_err(|e| {
                DeploymentError::file(&data, format!("cannot create directory: {e}"))
            })?;
            Ok(Arc::new(super::dir::DirNamespace::open(&data)?))
        }
    }
}

/// A child path of `dir`.
fn child(dir: &NsPath, name: &str) -> Result<NsPath, NsError> {
    NsPath::parse(&format!("{dir}/{name}"))
}

/// Every path of `ns` under the root, directories before what they hold,
/// in path order, with its kind.
fn walk(ns: &dyn NamespaceBackend) -> Result<Vec<(NsPath, Kind)>, NsError> {
    let mut out = Vec::new();
    let mut pending = vec![NsPath::root()];
    while let Some(dir) = pending.pop() {
        let mut dirs = Vec::new();
        for entry in ns.list(&dir)? {
            let path = child(&dir, &entry.name)?;
            if entry.kind == Kind::Directory {
                dirs.push(path.clone());
            }
            out.push((path, entry.kind));
        }
        // Popped in name order.
        pending.extend(dirs.into_iter().rev());
    }
    out.sort();
    Ok(out)
}

/// The number of entries of `ns`, their bytes and a SHA-256 over every
/// path, kind and byte in path order.
pub fn digest(ns: &dyn NamespaceBackend) -> Result<(u64, u64, String), NsError> {
    let mut hash = Sha256::new();
    let (mut entries, mut bytes) = (0u64, 0u64);
    for (path, kind) in walk(ns)? {
        let text = path.to_string();
        hash.update((text.len() as u64).to_le_bytes());
        hash.update(text.as_bytes());
        hash.update([u8::from(kind == Kind::Directory)]);
        entries += 1;
        if kind == Kind::File {
            let size = ns.stat(&path)?.size;
            hash.update(size.to_le_bytes());
            let mut offset = 0;
            while offset < size {
                let piece = ns.read(&path, offset, PIECE)?;
                if piece.is_empty() {
                    break;
                }
                hash.update(&piece);
                offset += piece.len() as u64;
            }
            bytes += size;
        }
    }
    Ok((entries, bytes, hex::encode(hash.finalize())))
}

/// Removes everything in `ns`; how many entries there were.
pub fn empty(ns: &dyn NamespaceBackend) -> Result<u64, NsError> {
    let paths = walk(ns)?;
    // What a directory holds sorts after it: removed from the end.
    for (path, kind) in paths.iter().rev() {
        match kind {
            Kind::File => {
                ns.remove_file(path)?;
            }
            Kind::Directory => ns.remove_dir(path)?,
        }
    }
    ns.sync()?;
    Ok(paths.len() as u64)
}

/// Copies every directory and file of `from` into `to`, which is empty.
fn copy(from: &dyn NamespaceBackend, to: &dyn NamespaceBackend) -> Result<(), NsError> {
    let create = OpenMode {
        create: true,
        exclusive: true,
        truncate: false,
    };
    for (path, kind) in walk(from)? {
        match kind {
            Kind::Directory => to.create_dir(&path)?,
            Kind::File => {
                to.open(&path, create)?;
                let mut offset = 0;
                loop {
                    let piece = from.read(&path, offset, PIECE)?;
                    if piece.is_empty() {
                        break;
                    }
                    to.write(&path, offset, &piece)?;
                    offset += piece.len() as u64;
                }
                // A backend holding writes puts them a file at a time.
                to.sync()?;
            }
        }
    }
    to.sync()
}

/// Moves the namespace of peer `name` of the deployment at `root` to `to`.
pub fn migrate(root: &Path, name: &str, to: FsBackend) -> Result<MovedFiles, MigrateError> {
    let lock = take_serving(root, name)?;
    let peer_dir = &root.join("peers").join(name);
    let config_path = peer_dir.join("peer.toml");
    let config: PeerConfig = crate::config::load_toml(&config_path)?;
    if config.storage.fs == to {
        return Err(MigrateError::SameFs {
            peer: name.to_owned(),
            backend: to.name(),
        });
    }
    let source = open(peer_dir, name, &config.storage)?;
    let target_storage = Storage {
        fs: to,
        ..config.storage.clone()
    };
    let target = open(peer_dir, name, &target_storage)?;
    let replaced = empty(target.as_ref())?;
    copy(source.as_ref(), target.as_ref())?;
    let (entries, bytes, hash) = digest(source.as_ref())?;
    let (copied, copied_bytes, copy_hash) = digest(target.as_ref())?;
    if (entries, bytes, &hash) != (copied, copied_bytes, &copy_hash) {
        return Err(MigrateError::FilesDiffer {
            from: source.name(),
            to: target.name(),
            count: entries,
            copied,
            hash,
            copy_hash,
        });
    }
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| DeploymentError::file(&config_path, format!("cannot read: {e}")))?;
    let text = with_storage_line(&text, &["fs"], &format!("fs = \"{}\"", to.name()));
    crate::files::write_atomically(&config_path, &text)
        .map_err(|e| DeploymentError::file(&config_path, format!("cannot write: {e}")))?;
    drop(lock);
    Ok(MovedFiles {
        entries,
        bytes,
        hash,
        replaced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_move_to_sqlite_and_back_with_every_byte_and_a_served_peer_is_refused() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = tmp.path();
        let peer = &root.join("peers/bob");
        let data = peer.join("data");
        std::fs::create_dir_all(data.join("a/b")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(data.join("empty")).unwrap_or_else(|e| panic!("{e}"));
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(data.join("a/b/big.bin"), &big).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(data.join("a/note.txt"), "note").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(data.join("zero"), "").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(peer.join("peer.toml"), "[storage]\nkv = \"sqlite\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let dir = open(peer, "bob", &Storage::default()).unwrap_or_else(|e| panic!("{e}"));
        let before = digest(dir.as_ref()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((before.0, before.1), (6, 3_000_004));
        let held = crate::kv::migrate::hold_serving(peer).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            migrate(root, "bob", FsBackend::Sqlite),
            Err(MigrateError::Served(_))
        ));
        drop(held);
        let moved = migrate(root, "bob", FsBackend::Sqlite).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (moved.entries, moved.bytes, &moved.hash),
            (6, 3_000_004, &before.2)
        );
        let config: PeerConfig =
            crate::config::load_toml(&peer.join("peer.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.storage.fs, FsBackend::Sqlite);
        let sqlite = open(peer, "bob", &config.storage).unwrap_or_else(|e| panic!("{e}"));
        let path = NsPath::parse("/a/b/big.bin").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            sqlite.read(&path, 1_000_000, 5).ok(),
            Some(big[1_000_000..1_000_005].to_vec())
        );
        // And back over what the first migration left in data/: replaced.
        std::fs::write(data.join("stale"), "old").unwrap_or_else(|e| panic!("{e}"));
        let back = migrate(root, "bob", FsBackend::Dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((back.entries, &back.hash, back.replaced), (6, &before.2, 7));
        assert!(!data.join("stale").exists());
        assert!(matches!(
            migrate(root, "bob", FsBackend::Dir),
            Err(MigrateError::SameFs { .. })
        ));
    }
}
