//! The only module that opens host directories for a peer.
//!
//! A peer's namespace is `peers/<name>/data`, which its guest sees as the WASI
//! preopen `/`; its logic `peers/<name>/logic` is preopened read-only as
//! `/logic`. Nothing else of the host is handed to a guest. Everything else
//! in peerhost receives an opened [`Dir`] or a [`WasiCtx`] built here.

pub mod backend;
pub mod dir;
pub mod migrate;
#[cfg(test)]
mod raw_wasi;
pub mod s3;
pub mod sqlite;

use crate::config::DeploymentError;
use std::path::{Path, PathBuf};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

/// The guest path of the logic preopen.
pub const LOGIC_PREOPEN: &str = "/logic";

/// The host directories of one peer, and the backend of its namespace
/// when that is not the host directory.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// `peers/<name>/data`: the namespace root on a host directory.
    pub data: PathBuf,
    /// `peers/<name>/logic`: the peer's Rhai modules.
    pub logic: PathBuf,
    /// The namespace's backend when it is not `data/` (`[storage] fs`):
    /// its descriptors are served by the checked filesystem itself.
    pub backend: Option<std::sync::Arc<dyn backend::NamespaceBackend>>,
}

impl Namespace {
    /// Opens the namespace of peer `name` in `peer_dir` on the backend
    /// `storage` names, creating `data/` and `logic/` when missing. The kv
    /// store (see [`crate::kv::open`]) sits beside the namespace, not in
    /// it: nothing a guest names under `/` can reach its data.
    pub fn open(
        peer_dir: &Path,
        name: &str,
        storage: &crate::config::Storage,
    ) -> Result<Namespace, DeploymentError> {
        let data = peer_dir.join("data");
        let logic = peer_dir.join("logic");
        for dir in [&data, &logic] {
            std::fs::create_dir_all(dir)
                .map_err(|e| DeploymentError::file(dir, format!("cannot create directory: {e}")))?;
        }
        let backend = Namespace::backend(peer_dir, name, storage)?;
        Ok(Namespace {
            data,
            logic,
            backend,
        })
    }

    /// The backend of the namespace of peer `name` in `peer_dir`, when
    /// `storage` names one other than the host directory.
    pub fn backend(
        peer_dir: &Path,
        name: &str,
        storage: &crate::config::Storage,
    ) -> Result<Option<std::sync::Arc<dyn backend::NamespaceBackend>>, DeploymentError> {
        Ok(match storage.fs {
            crate::config::FsBackend::Dir => None,
            crate::config::FsBackend::Sqlite => Some(std::sync::Arc::new(
                sqlite::SqliteNamespace::new(&peer_dir.join(crate::kv::sqlite::FILE)),
            )),
            crate::config::FsBackend::S3 => match &storage.s3 {
                Some(config) => Some(std::sync::Arc::new(s3::S3Namespace::new(
                    config, name, peer_dir,
                ))),
                None => {
                    return Err(DeploymentError::file(
                        &peer_dir.join("peer.toml"),
                        "`fs = \"s3\"` needs `[storage.s3]` with at least `bucket`",
                    ));
                }
            },
        })
    }

    /// A WASI context whose only preopens are `data/` as `/` (read-write)
    /// and `logic/` as `/logic` (read-only); no environment, arguments,
    /// network or standard input. File I/O runs on the invoking thread.
    ///
    /// # Ambient Authority
    /// wasmtime-wasi opens both directories by host path.
    pub fn wasi_ctx(&self) -> wasmtime::Result<WasiCtx> {
        let mut builder = WasiCtxBuilder::new();
        // Namespace files are small and local: doing their I/O on the
        // invoking thread costs microseconds, a hop to tokio's blocking pool
        // costs a thread wake-up per call (measured: most of an invocation).
        builder.allow_blocking_current_thread(true);
        // A namespace with a backend is preopened by the checked
        // filesystem itself.
        if self.backend.is_none() {
            builder.preopened_dir(&self.data, "/", FsPerms::ReadWrite)?;
        }
        builder.preopened_dir(&self.logic, LOGIC_PREOPEN, FsPerms::ReadOnly)?;
        Ok(builder.build())
    }
}

/// A write past the namespace's `fs_bytes` quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fs_bytes quota of the peer: {limit}; stored {now}, this write would make it {after}")]
pub struct FsQuotaError {
    /// The quota.
    pub limit: u64,
    /// Bytes stored before the write.
    pub now: u64,
    /// Bytes stored after it.
    pub after: u64,
}

impl From<FsQuotaError> for crate::bindings::GuestError {
    fn from(e: FsQuotaError) -> Self {
        crate::bindings::GuestError::Limit(e.to_string())
    }
}

/// The bytes of a peer's namespace, held to its `fs_bytes` quota.
///
/// Counted once from the directory (the sizes of the regular files under
/// `data/`, at the first write this worker sees), then kept by every write,
/// truncation and removal made through the sandbox: a write that would
/// grow the namespace past the quota is refused before a byte of it is
/// written. What changes the directory otherwise (an operator, another
/// worker sharing it) is seen when a worker next starts. Without a quota
/// nothing is counted.
#[derive(Debug)]
pub struct FsUsage {
    root: PathBuf,
    backend: Option<std::sync::Arc<dyn backend::NamespaceBackend>>,
    limit: Option<u64>,
    used: std::sync::Mutex<Option<u64>>,
}

impl FsUsage {
    /// The usage of the namespace at `root`, held to `limit` bytes.
    pub fn new(root: PathBuf, limit: Option<u64>) -> FsUsage {
        FsUsage {
            root,
            backend: None,
            limit,
            used: std::sync::Mutex::new(None),
        }
    }

    /// The usage of `namespace`, on its backend if it has one.
    pub fn of(namespace: &Namespace, limit: Option<u64>) -> FsUsage {
        FsUsage {
            backend: namespace.backend.clone(),
            ..FsUsage::new(namespace.data.clone(), limit)
        }
    }

    /// Whether there is a quota to keep (and so sizes to look up).
    pub fn limited(&self) -> bool {
        self.limit.is_some()
    }

    /// The host path of guest path `path` (absolute, normalised) of the
    /// namespace.
    pub fn host_path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// The size of the regular file at guest path `path`; 0 for anything
    /// else (absent, a directory, a symlink).
    pub fn file_size(&self, path: &str) -> u64 {
        if let Some(backend) = &self.backend {
            return backend::NsPath::parse(path)
                .and_then(|path| backend.stat(&path))
                .ok()
                .filter(|stat| stat.kind == backend::Kind::File)
                .map_or(0, |stat| stat.size);
        }
        std::fs::symlink_metadata(self.host_path(path))
            .ok()
            .filter(std::fs::Metadata::is_file)
            .map_or(0, |m| m.len())
    }

    /// Counts `by` bytes more, or refuses them (counting nothing) past the
    /// quota.
    pub fn grow(&self, by: u64) -> Result<(), FsQuotaError> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        if by == 0 {
            return Ok(());
        }
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let now = *used.get_or_insert_with(|| self.count());
        let after = now.saturating_add(by);
        if after > limit {
            return Err(FsQuotaError { limit, now, after });
        }
        *used = Some(after);
        Ok(())
    }

    /// The bytes of the namespace's files, counted now.
    fn count(&self) -> u64 {
        match &self.backend {
            Some(backend) => backend.usage().unwrap_or_else(|e| {
                tracing::warn!("cannot count the namespace's bytes: {e}");
                0
            }),
            None => count(&self.root),
        }
    }

    /// Counts `by` bytes fewer (a file truncated or removed).
    pub fn shrink(&self, by: u64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        // Not counted yet: the count, when it comes, sees the change.
        if let Some(used) = used.as_mut() {
            *used = used.saturating_sub(by);
        }
    }

    /// The bytes stored now (counted from the directory if not yet).
    pub fn used(&self) -> u64 {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used.get_or_insert_with(|| self.count())
    }
}

/// The bytes of the regular files under `root`, symlinks not followed;
/// what cannot be read counts as nothing.
pub fn count(root: &Path) -> u64 {
    let mut total = 0u64;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_file() => total = total.saturating_add(m.len()),
                Ok(m) if m.is_dir() => dirs.push(entry.path()),
                _ => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_counted_from_the_directory_then_kept_and_refused_past_the_quota() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(tmp.path().join("a/b")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(tmp.path().join("a/b/f"), [0u8; 300]).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(tmp.path().join("g"), [0u8; 200]).unwrap_or_else(|e| panic!("{e}"));
        let usage = FsUsage::new(tmp.path().to_path_buf(), Some(1000));
        assert_eq!(usage.file_size("/a/b/f"), 300);
        assert_eq!(usage.file_size("/a/b"), 0);
        assert_eq!(usage.file_size("/missing"), 0);
        assert_eq!(usage.grow(400), Ok(()));
        assert_eq!(usage.used(), 900);
        assert_eq!(
            usage.grow(101),
            Err(FsQuotaError {
                limit: 1000,
                now: 900,
                after: 1001
            })
        );
        assert_eq!(usage.used(), 900, "a refused write counts nothing");
        usage.shrink(300);
        assert_eq!(usage.grow(400), Ok(()));
        assert_eq!(usage.used(), 1000);
        let unlimited = FsUsage::new(tmp.path().to_path_buf(), None);
        assert!(!unlimited.limited());
        assert_eq!(unlimited.grow(u64::MAX), Ok(()));
    }
}
