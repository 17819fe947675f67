//! Descriptors, streams and directory listings of a namespace that is not
//! a host directory (`[storage] fs = "sqlite"` or `"s3"`): served here over a
//! [`NamespaceBackend`], after the checked filesystem has decided the call
//! exactly as for a host directory.
//!
//! What the guest's `std::fs` calls works: open (create, exclusive,
//! truncate, directory), read and write at offsets and through streams
//! (append too), stat, list, create and remove directories, unlink, rename,
//! set-size, metadata hashes, sync (a no-op: every operation is committed
//! when it returns). Times cannot be set and there are no links: those
//! calls answer `unsupported`.

use crate::namespace::backend::{Kind, NamespaceBackend, NsError, NsPath, OpenMode};
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self, DescriptorFlags, DescriptorStat, DescriptorType, DirectoryEntry, ErrorCode, OpenFlags,
};
use wasmtime_wasi::p2::{FsError, FsResult};
use wasmtime_wasi_io::bytes::Bytes;
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{InputStream, OutputStream, StreamError, StreamResult};

/// One open descriptor of a virtual namespace, in the resource table in
/// place of wasmtime-wasi's own.
#[derive(Debug)]
pub struct VirtualDescriptor {
    /// The path it was opened at.
    pub path: NsPath,
    /// File or directory.
    pub kind: Kind,
    /// The flags it was opened with.
    pub flags: DescriptorFlags,
}

/// The entries of one directory read, handed out one at a time.
#[derive(Debug)]
pub struct VirtualListing(pub VecDeque<DirectoryEntry>);

/// The WASI error of a backend's.
pub fn code(e: NsError) -> FsError {
    match e {
        NsError::NotFound(_) => ErrorCode::NoEntry.into(),
        NsError::Exists(_) => ErrorCode::Exist.into(),
        NsError::NotADirectory(_) => ErrorCode::NotDirectory.into(),
        NsError::IsADirectory(_) => ErrorCode::IsDirectory.into(),
        NsError::NotEmpty(_) => ErrorCode::NotEmpty.into(),
        NsError::Invalid(_) => ErrorCode::Invalid.into(),
        NsError::Backend(message) => {
            tracing::warn!(target: "peerhost::sandbox", "the namespace's store failed: {message}");
            ErrorCode::Io.into()
        }
    }
}

/// The backend path of guest path `path` (absolute, normalised).
pub fn ns_path(path: &str) -> FsResult<NsPath> {
    NsPath::parse(path).map_err(code)
}

fn descriptor_type(kind: Kind) -> DescriptorType {
    match kind {
        Kind::File => DescriptorType::RegularFile,
        Kind::Directory => DescriptorType::Directory,
    }
}

/// `stat` of `path`.
pub fn stat(ns: &dyn NamespaceBackend, path: &NsPath) -> FsResult<DescriptorStat> {
    let stat = ns.stat(path).map_err(code)?;
    let modified = stat.modified.and_then(|t| {
        let since = t.duration_since(std::time::UNIX_EPOCH).ok()?;
        Some(types::Datetime {
            seconds: since.as_secs(),
            nanoseconds: since.subsec_nanos(),
        })
    });
    Ok(DescriptorStat {
        type_: descriptor_type(stat.kind),
        link_count: 1,
        size: stat.size,
        data_access_timestamp: modified,
        data_modification_timestamp: modified,
        status_change_timestamp: modified,
    })
}

/// A hash of what `stat` tells of `path`, as `metadata-hash` wants.
pub fn metadata_hash(
    ns: &dyn NamespaceBackend,
    path: &NsPath,
) -> FsResult<types::MetadataHashValue> {
    let stat = ns.stat(path).map_err(code)?;
    let mut lower = std::hash::DefaultHasher::new();
    (path, stat.kind, stat.size, stat.modified).hash(&mut lower);
    let mut upper = std::hash::DefaultHasher::new();
    (stat.modified, stat.size, stat.kind, path).hash(&mut upper);
    Ok(types::MetadataHashValue {
        lower: lower.finish(),
        upper: upper.finish(),
    })
}

/// Opens `path` as `open-at` asks: the descriptor to put in the table.
pub fn open(
    ns: &dyn NamespaceBackend,
    path: NsPath,
    oflags: OpenFlags,
    flags: DescriptorFlags,
) -> FsResult<VirtualDescriptor> {
    let create = oflags.contains(OpenFlags::CREATE);
    let exclusive = oflags.contains(OpenFlags::EXCLUSIVE);
    let truncate = oflags.contains(OpenFlags::TRUNCATE);
    let existing = match ns.stat(&path) {
        Ok(stat) => Some(stat.kind),
        Err(NsError::NotFound(_)) => None,
        Err(e) => return Err(code(e)),
    };
    let kind = match existing {
        Some(_) if create && exclusive => return Err(ErrorCode::Exist.into()),
        Some(Kind::Directory) => {
            if truncate || flags.contains(DescriptorFlags::WRITE) {
                return Err(ErrorCode::IsDirectory.into());
            }
            Kind::Directory
        }
        Some(Kind::File) if oflags.contains(OpenFlags::DIRECTORY) => {
            return Err(ErrorCode::NotDirectory.into());
        }
        None if !create => return Err(ErrorCode::NoEntry.into()),
        None if oflags.contains(OpenFlags::DIRECTORY) => return Err(ErrorCode::Invalid.into()),
        // There, and kept as it is: nothing to change.
        Some(Kind::File) if !truncate => Kind::File,
        Some(Kind::File) | None => {
            ns.open(
                &path,
                OpenMode {
                    create,
                    exclusive,
                    truncate,
                },
            )
            .map_err(code)?;
            Kind::File
        }
    };
    Ok(VirtualDescriptor { path, kind, flags })
}

/// `read` at `offset`: the bytes and whether the file ends there.
pub fn read(
    ns: &dyn NamespaceBackend,
    path: &NsPath,
    len: u64,
    offset: u64,
) -> FsResult<(Vec<u8>, bool)> {
    let len = len.min(MAX_READ);
    let bytes = ns.read(path, offset, len).map_err(code)?;
    let ended = (bytes.len() as u64) < len;
    Ok((bytes, ended))
}

/// The most one read hands over at once.
const MAX_READ: u64 = 1 << 20;

/// The entries of the directory `path`, as a listing.
pub fn listing(ns: &dyn NamespaceBackend, path: &NsPath) -> FsResult<VirtualListing> {
    let entries = ns.list(path).map_err(code)?;
    Ok(VirtualListing(
        entries
            .into_iter()
            .map(|entry| DirectoryEntry {
                type_: descriptor_type(entry.kind),
                name: entry.name,
            })
            .collect(),
    ))
}

/// Reads a file of the namespace from an offset on.
#[derive(Debug)]
pub struct Reader {
    /// The namespace.
    pub ns: Arc<dyn NamespaceBackend>,
    /// The file.
    pub path: NsPath,
    /// Where the next read starts.
    pub offset: u64,
}

#[wasmtime_wasi_io::async_trait]
impl Pollable for Reader {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi_io::async_trait]
impl InputStream for Reader {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        let want = (size as u64).min(MAX_READ);
        let bytes = self
            .ns
            .read(&self.path, self.offset, want)
            .map_err(|e| StreamError::LastOperationFailed(wasmtime::Error::msg(e.to_string())))?;
        if bytes.is_empty() && want > 0 {
            return Err(StreamError::Closed);
        }
        self.offset += bytes.len() as u64;
        Ok(Bytes::from(bytes))
    }
}

/// Writes a file of the namespace from an offset on, or at its end.
#[derive(Debug)]
pub struct Writer {
    /// The namespace.
    pub ns: Arc<dyn NamespaceBackend>,
    /// The file.
    pub path: NsPath,
    /// Where the next write goes; `None` to append.
    pub offset: Option<u64>,
}

#[wasmtime_wasi_io::async_trait]
impl Pollable for Writer {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi_io::async_trait]
impl OutputStream for Writer {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let failed =
            |e: NsError| StreamError::LastOperationFailed(wasmtime::Error::msg(e.to_string()));
        let at = match self.offset {
            Some(offset) => offset,
            None => self.ns.stat(&self.path).map_err(failed)?.size,
        };
        self.ns.write(&self.path, at, &bytes).map_err(failed)?;
        if let Some(offset) = self.offset.as_mut() {
            *offset += bytes.len() as u64;
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_READ as usize)
    }
}

/// Writes a host file from an offset on, on the invoking thread (the
/// stream `write-via-stream` gives for a file of a host directory).
#[derive(Debug)]
pub struct FileWriter {
    /// The file, as wasmtime-wasi opened it.
    pub file: Arc<std::fs::File>,
    /// Where the next write goes.
    pub position: u64,
}

#[wasmtime_wasi_io::async_trait]
impl Pollable for FileWriter {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi_io::async_trait]
impl OutputStream for FileWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(&bytes, self.position)
            .map_err(|e| StreamError::LastOperationFailed(wasmtime::Error::msg(e.to_string())))?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_READ as usize)
    }
}
