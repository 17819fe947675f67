//! WASI filesystem, checked against the peer's policy.
//!
//! The guest reaches its namespace through the standard WASI 0.2 filesystem
//! (`std::fs` in Rust). This module links its own implementation of
//! `wasi:filesystem/types` and `wasi:filesystem/preopens` that decides each
//! call against the policy and then delegates to wasmtime-wasi, whose
//! cap-std directories keep every path inside the preopen.
//!
//! Actions: opening without modifying, reads and stats are `fs.read`;
//! writes, create, truncate, unlink, rename, mkdir and timestamp changes are
//! `fs.write`; opening a directory, reading it and hashing the metadata of its
//! entries are `fs.list`; the resource is `Path::"/the/path"` as the guest
//! sees it. Each is decided before the file system is touched, so a caller
//! without a grant cannot learn whether a path exists.
//! A decision is remembered per descriptor for the rest of the invocation, so
//! reading a file in chunks asks the policy once.
//!
//! Renaming takes `fs.read` and `fs.write` on the old name and `fs.write`
//! on the new one. At most [`MAX_OPEN`] descriptors per invocation.
//!
//! Refused outright, whatever the policy says: `..` components and absolute
//! paths in a call (paths are relative to a descriptor), creating symlinks or
//! hard links (they would make a path name two files, and policy is by path),
//! and `/logic` inside the data preopen (shadowed by the logic preopen). The
//! `kv` capability's files are not in the namespace at all
//! (`peers/<name>/kv/`), so no path, link or rename inside it reaches them.
//!
//! Bytes written count against the invocation's and the caller's budgets
//! ([`super::budget`]): those of descriptor writes, and of every output
//! stream opened on a file (`write-via-stream`, `append-via-stream`, which
//! `std::fs` uses), whose writes are charged as they pass. A write past a
//! budget traps: the invocation ends with `limit`. Growing a file with
//! `set-size` writes no bytes and is not counted.
//!
//! With `[quotas] fs_bytes`, every write that grows a file of the namespace
//! (past its end, or `set-size` larger) is first counted against the quota
//! ([`crate::namespace::FsUsage`]) and traps past it, with the figures,
//! before a byte is written; truncations, removals and renames over a file
//! give their bytes back.
//!
//! A namespace kept elsewhere than a host directory (`[storage] fs =
//! "sqlite"`) is decided the same way, then served by [`virtual_ns`].

pub mod virtual_ns;

use super::Authority;
use crate::namespace::backend::{Kind, NamespaceBackend, NsPath};
use crate::policy::{Action, Resource};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use virtual_ns::{VirtualDescriptor, VirtualListing, code, ns_path};
use wasmtime::component::{HasData, Resource as WasmResource};
use wasmtime_wasi::filesystem::WasiFilesystemCtxView;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    ErrorCode, HostDescriptor, HostDirectoryEntryStream,
};
use wasmtime_wasi::p2::bindings::filesystem::{preopens, types};
use wasmtime_wasi::p2::{FsError, FsResult};
use wasmtime_wasi_io::streams::{DynInputStream, DynOutputStream};

pub use crate::namespace::LOGIC_PREOPEN;

/// Longest path a guest may name, in bytes.
pub const MAX_PATH: usize = 4096;

/// Most descriptors and directory streams one invocation may hold open: each
/// is a host file descriptor, shared by every peer of the worker.
pub const MAX_OPEN: usize = 256;

/// Which preopen a descriptor descends from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// The namespace (`peers/<name>/data`), preopened as `/`.
    Data,
    /// The peer's logic (`peers/<name>/logic`), preopened read-only as `/logic`.
    Logic,
}

/// What the host knows of one open descriptor.
#[derive(Debug)]
pub struct DescriptorInfo {
    /// The guest path, normalised, absolute.
    pub path: String,
    /// The preopen it descends from.
    pub area: Area,
    /// Actions already allowed on this descriptor in this invocation.
    approved: HashSet<Action>,
}

/// A virtual descriptor's backend, path and kind.
type VirtualFile = (Arc<dyn NamespaceBackend>, NsPath, Kind);

/// Descriptor paths of one invocation, by resource index.
pub type Descriptors = HashMap<u32, DescriptorInfo>;

/// The `HasData` marker for the checked filesystem.
#[derive(Debug)]
pub struct CheckedFilesystem;

impl HasData for CheckedFilesystem {
    type Data<'a> = CheckedFs<'a>;
}

/// The checked filesystem's view of one store.
pub struct CheckedFs<'a> {
    /// wasmtime-wasi's filesystem, which does the work once allowed.
    pub inner: WasiFilesystemCtxView<'a>,
    /// Who is acting, under which policy.
    pub authority: &'a Authority,
    /// Paths of open descriptors.
    pub descriptors: &'a mut Descriptors,
    /// Open directory streams, counted with descriptors against [`MAX_OPEN`].
    pub listings: &'a mut HashSet<u32>,
}

fn refused() -> FsError {
    tracing::debug!(target: "peerhost::sandbox", "refused a path outside the namespace rules");
    ErrorCode::NotPermitted.into()
}

impl CheckedFs<'_> {
    /// The namespace's backend, when it is not a host directory.
    fn backend(&self) -> Option<Arc<dyn NamespaceBackend>> {
        self.authority.peer.namespace.backend.clone()
    }

    /// The virtual descriptor `fd` is (path, kind, flags), or `None` for
    /// one of wasmtime-wasi's (the logic preopen, a host directory).
    fn virtual_fd(
        &mut self,
        fd: &WasmResource<types::Descriptor>,
    ) -> Option<(NsPath, Kind, types::DescriptorFlags)> {
        let entry = self.inner.table.get_any_mut(fd.rep()).ok()?;
        let v = entry.downcast_ref::<VirtualDescriptor>()?;
        Some((v.path.clone(), v.kind, v.flags))
    }

    /// The backend and the path `path` names relative to the virtual
    /// descriptor `fd`.
    fn virtual_at(
        &mut self,
        fd: &WasmResource<types::Descriptor>,
        path: &str,
    ) -> FsResult<Option<(Arc<dyn NamespaceBackend>, NsPath)>> {
        if self.virtual_fd(fd).is_none() {
            return Ok(None);
        }
        let Some(ns) = self.backend() else {
            return Err(ErrorCode::BadDescriptor.into());
        };
        let (guest, _) = self.resolve(fd, path)?;
        Ok(Some((ns, ns_path(&guest)?)))
    }

    /// The backend and the path of the virtual descriptor `fd`.
    fn virtual_self(
        &mut self,
        fd: &WasmResource<types::Descriptor>,
    ) -> FsResult<Option<VirtualFile>> {
        let Some((path, kind, _)) = self.virtual_fd(fd) else {
            return Ok(None);
        };
        let ns = self.backend().ok_or(ErrorCode::BadDescriptor)?;
        Ok(Some((ns, path, kind)))
    }

    /// Puts `descriptor` in the table as a `descriptor` resource.
    fn push_virtual(
        &mut self,
        descriptor: VirtualDescriptor,
    ) -> FsResult<WasmResource<types::Descriptor>> {
        let pushed = self.inner.table.push(descriptor)?;
        Ok(WasmResource::new_own(pushed.rep()))
    }

    fn info(&self, fd: &WasmResource<types::Descriptor>) -> FsResult<&DescriptorInfo> {
        self.descriptors
            .get(&fd.rep())
            .ok_or_else(|| ErrorCode::BadDescriptor.into())
    }

    /// The guest path of `path` relative to `fd`, refusing `..` and absolute paths.
    fn resolve(
        &self,
        fd: &WasmResource<types::Descriptor>,
        path: &str,
    ) -> FsResult<(String, Area)> {
        let info = self.info(fd)?;
        if path.len() > MAX_PATH {
            return Err(ErrorCode::NameTooLong.into());
        }
        if path.starts_with('/') || path.contains('\0') {
            return Err(refused());
        }
        let mut joined = info.path.trim_end_matches('/').to_owned();
        for component in path.split('/') {
            match component {
                "" | "." => {}
                ".." => return Err(refused()),
                c => {
                    joined.push('/');
                    joined.push_str(c);
                }
            }
        }
        if joined.is_empty() {
            joined.push('/');
        }
        if info.area == Area::Data {
            let reserved =
                |prefix: &str| joined == prefix || joined.starts_with(&format!("{prefix}/"));
            if reserved(LOGIC_PREOPEN) {
                return Err(refused());
            }
        }
        Ok((joined, info.area))
    }

    /// Asks the policy whether `action` on `path` is allowed; `Ok(true)` is
    /// a decision that may be remembered for the descriptor. (The guest no
    /// longer reads `/logic` to load logic: the host hands it over, so no
    /// read is exempt from the policy.) Reading or listing `/logic` is
    /// reading the peer's logic: decided as `logic.read` on the peer, the
    /// one action that grants it, however it is asked for.
    fn decide(&self, action: Action, path: &str, area: Area) -> FsResult<bool> {
        let decided = match (area, action) {
            // Logic changes by the owner's hand, never from inside a sandbox.
            (Area::Logic, Action::FsWrite) => return Err(refused()),
            (Area::Logic, _) => self.authority.check(Action::LogicRead, &Resource::Peer),
            (Area::Data, _) => self
                .authority
                .check(action, &Resource::Path(path.to_owned())),
        };
        decided.map(|()| true).map_err(|_| ErrorCode::Access.into())
    }

    /// `action` on the path `path` relative to `fd`.
    fn check_at(
        &self,
        action: Action,
        fd: &WasmResource<types::Descriptor>,
        path: &str,
    ) -> FsResult<()> {
        let (path, area) = self.resolve(fd, path)?;
        self.decide(action, &path, area).map(drop)
    }

    /// `action` on the descriptor itself, remembered for the invocation.
    fn check_fd(&mut self, action: Action, fd: &WasmResource<types::Descriptor>) -> FsResult<()> {
        let info = self.info(fd)?;
        if info.approved.contains(&action) {
            return Ok(());
        }
        if self.decide(action, &info.path, info.area)?
            && let Some(info) = self.descriptors.get_mut(&fd.rep())
        {
            info.approved.insert(action);
        }
        Ok(())
    }

    /// `stream`, put back in the table charging its writes to the
    /// invocation, and (with an `fs_bytes` quota) what it writes past the
    /// end of the file (`end` bytes long, written from `position`) to the
    /// namespace.
    fn counted(
        &mut self,
        stream: WasmResource<DynOutputStream>,
        position: Option<u64>,
        end: u64,
    ) -> FsResult<WasmResource<DynOutputStream>> {
        let inner = self.inner.table.delete(stream)?;
        let growth = self.quota().map(|_| super::budget::Growth {
            peer: self.authority.peer.clone(),
            position: position.unwrap_or(end),
            end,
        });
        let counted: DynOutputStream = Box::new(super::budget::CountedStream::new(
            inner,
            self.authority.writes.clone(),
            growth,
        ));
        Ok(self.inner.table.push(counted)?)
    }

    /// A stream writing the virtual file `path` (at `offset`, or at its
    /// end), in the table.
    fn writer(
        &mut self,
        ns: Arc<dyn NamespaceBackend>,
        path: NsPath,
        offset: Option<u64>,
    ) -> FsResult<WasmResource<DynOutputStream>> {
        let writer: DynOutputStream = Box::new(virtual_ns::Writer { ns, path, offset });
        Ok(self.inner.table.push(writer)?)
    }

    /// The namespace's usage, when it has an `fs_bytes` quota to keep.
    fn quota(&self) -> Option<&crate::namespace::FsUsage> {
        let usage = &self.authority.peer.fs_usage;
        usage.limited().then_some(usage)
    }

    /// The size of the file open as `fd` (0 for a directory), when there is
    /// a quota to keep.
    fn fd_size(&mut self, fd: &WasmResource<types::Descriptor>) -> FsResult<u64> {
        if self.quota().is_none() {
            return Ok(0);
        }
        if let Some((ns, path, kind)) = self.virtual_self(fd)? {
            return Ok(match kind {
                Kind::File => ns.stat(&path).map_err(code)?.size,
                Kind::Directory => 0,
            });
        }
        Ok(match self.inner.table.get(fd)? {
            wasmtime_wasi::filesystem::Descriptor::File(file) => {
                file.file.metadata().map_or(0, |m| m.len())
            }
            wasmtime_wasi::filesystem::Descriptor::Dir(_) => 0,
        })
    }

    /// The size of the namespace file at `path` relative to `fd` (0 when
    /// absent, not a file, or there is no quota to keep).
    fn size_at(&self, fd: &WasmResource<types::Descriptor>, path: &str) -> u64 {
        let Some(usage) = self.quota() else {
            return 0;
        };
        match self.resolve(fd, path) {
            Ok((guest_path, Area::Data)) => usage.file_size(&guest_path),
            _ => 0,
        }
    }

    /// Gives back `bytes` of the namespace (a truncation, a removal).
    fn freed(&self, bytes: u64) {
        if let Some(usage) = self.quota() {
            usage.shrink(bytes);
        }
    }

    fn record(
        &mut self,
        fd: &WasmResource<types::Descriptor>,
        path: String,
        area: Area,
        approved: HashSet<Action>,
    ) {
        self.descriptors.insert(
            fd.rep(),
            DescriptorInfo {
                path,
                area,
                approved,
            },
        );
    }
}

impl preopens::Host for CheckedFs<'_> {
    fn get_directories(
        &mut self,
    ) -> wasmtime::Result<Vec<(WasmResource<types::Descriptor>, String)>> {
        if self.descriptors.len() + self.listings.len() >= MAX_OPEN {
            wasmtime::bail!("the guest asked for its preopens over {MAX_OPEN} times");
        }
        let mut dirs = preopens::Host::get_directories(&mut self.inner)?;
        if self.backend().is_some() {
            let root = self
                .push_virtual(VirtualDescriptor {
                    path: NsPath::root(),
                    kind: Kind::Directory,
                    flags: types::DescriptorFlags::READ | types::DescriptorFlags::MUTATE_DIRECTORY,
                })
                .map_err(|e| wasmtime::Error::msg(format!("{e:?}")))?;
            dirs.insert(0, (root, "/".to_owned()));
        }
        for (fd, path) in &dirs {
            let area = if path == LOGIC_PREOPEN {
                Area::Logic
            } else {
                Area::Data
            };
            self.record(fd, path.clone(), area, HashSet::new());
        }
        Ok(dirs)
    }
}

impl types::Host for CheckedFs<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        types::Host::convert_error_code(&mut self.inner, err)
    }

    fn filesystem_error_code(
        &mut self,
        err: WasmResource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        types::Host::filesystem_error_code(&mut self.inner, err)
    }
}

impl HostDescriptor for CheckedFs<'_> {
    async fn advise(
        &mut self,
        fd: WasmResource<types::Descriptor>,
        offset: types::Filesize,
        len: types::Filesize,
        advice: types::Advice,
    ) -> FsResult<()> {
        if self.virtual_fd(&fd).is_some() {
            return Ok(());
        }
        HostDescriptor::advise(&mut self.inner, fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: WasmResource<types::Descriptor>) -> FsResult<()> {
        if self.virtual_fd(&fd).is_some() {
            return Ok(());
        }
        HostDescriptor::sync_data(&mut self.inner, fd).await
    }

    async fn get_flags(
        &mut self,
        fd: WasmResource<types::Descriptor>,
    ) -> FsResult<types::DescriptorFlags> {
        if let Some((_, _, flags)) = self.virtual_fd(&fd) {
            return Ok(flags);
        }
        HostDescriptor::get_flags(&mut self.inner, fd).await
    }

    async fn get_type(
        &mut self,
        fd: WasmResource<types::Descriptor>,
    ) -> FsResult<types::DescriptorType> {
        if let Some((_, kind, _)) = self.virtual_fd(&fd) {
            return Ok(match kind {
                Kind::File => types::DescriptorType::RegularFile,
                Kind::Directory => types::DescriptorType::Directory,
            });
        }
        HostDescriptor::get_type(&mut self.inner, fd).await
    }

    async fn set_size(
        &mut self,
        fd: WasmResource<types::Descriptor>,
        size: types::Filesize,
    ) -> FsResult<()> {
        self.check_fd(Action::FsWrite, &fd)?;
        let old = self.fd_size(&fd)?;
        if let Some(usage) = self.quota() {
            usage
                .grow(size.saturating_sub(old))
                .map_err(FsError::trap)?;
        }
        match self.virtual_self(&fd)? {
            Some((ns, path, _)) => ns.set_size(&path, size).map_err(code)?,
            None => HostDescriptor::set_size(&mut self.inner, fd, size).await?,
        }
        self.freed(old.saturating_sub(size));
        Ok(())
    }

    async fn set_times(
        &mut self,
        fd: WasmResource<types::Descriptor>,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.check_fd(Action::FsWrite, &fd)?;
        if self.virtual_fd(&fd).is_some() {
            return Err(ErrorCode::Unsupported.into());
        }
        HostDescriptor::set_times(&mut self.inner, fd, atim, mtim).await
    }

    async fn read(
        &mut self,
        fd: WasmResource<types::Descriptor>,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        self.check_fd(Action::FsRead, &fd)?;
        if let Some((ns, path, _)) = self.virtual_self(&fd)? {
            return virtual_ns::read(&*ns, &path, len, offset);
        }
        HostDescriptor::read(&mut self.inner, fd, len, offset).await
    }

    async fn write(
        &mut self,
        fd: WasmResource<types::Descriptor>,
        buf: Vec<u8>,
        offset: types::Filesize,
    ) -> FsResult<types::Filesize> {
        self.check_fd(Action::FsWrite, &fd)?;
        self.authority
            .writes
            .charge(buf.len() as u64)
            .map_err(FsError::trap)?;
        if self.quota().is_some() {
            let end = self.fd_size(&fd)?;
            if let Some(usage) = self.quota() {
                usage
                    .grow(offset.saturating_add(buf.len() as u64).saturating_sub(end))
                    .map_err(FsError::trap)?;
            }
        }
        if let Some((ns, path, _)) = self.virtual_self(&fd)? {
            let written = buf.len() as u64;
            ns.write(&path, offset, &buf).map_err(code)?;
            return Ok(written);
        }
        HostDescriptor::write(&mut self.inner, fd, buf, offset).await
    }

    async fn read_directory(
        &mut self,
        fd: WasmResource<types::Descriptor>,
    ) -> FsResult<WasmResource<types::DirectoryEntryStream>> {
        if self.descriptors.len() + self.listings.len() >= MAX_OPEN {
            return Err(ErrorCode::InsufficientMemory.into());
        }
        self.check_fd(Action::FsList, &fd)?;
        let stream = match self.virtual_self(&fd)? {
            Some((ns, path, _)) => {
                let listing = virtual_ns::listing(&*ns, &path)?;
                WasmResource::new_own(self.inner.table.push(listing)?.rep())
            }
            None => HostDescriptor::read_directory(&mut self.inner, fd).await?,
        };
        self.listings.insert(stream.rep());
        Ok(stream)
    }

    async fn sync(&mut self, fd: WasmResource<types::Descriptor>) -> FsResult<()> {
        if self.virtual_fd(&fd).is_some() {
            return Ok(());
        }
        HostDescriptor::sync(&mut self.inner, fd).await
    }

    async fn create_directory_at(
        &mut self,
        fd: WasmResource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        self.check_at(Action::FsWrite, &fd, &path)?;
        if let Some((ns, path)) = self.virtual_at(&fd, &path)? {
            return ns.create_dir(&path).map_err(code);
        }
        HostDescriptor::create_directory_at(&mut self.inner, fd, path).await
    }

    async fn stat(
        &mut self,
        fd: WasmResource<types::Descriptor>,
    ) -> FsResult<types::DescriptorStat> {
        self.check_fd(Action::FsRead, &fd)?;
        if let Some((ns, path, _)) = self.virtual_self(&fd)? {
            return virtual_ns::stat(&*ns, &path);
        }
        HostDescriptor::stat(&mut self.inner, fd).await
    }

    async fn stat_at(
        &mut self,
        fd: WasmResource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        self.check_at(Action::FsRead, &fd, &path)?;
        if let Some((ns, path)) = self.virtual_at(&fd, &path)? {
            return virtual_ns::stat(&*ns, &path);
        }
        HostDescriptor::stat_at(&mut self.inner, fd, path_flags, path).await
    }

    async fn set_times_at(
        &mut self,
        fd: WasmResource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.check_at(Action::FsWrite, &fd, &path)?;
        if self.virtual_fd(&fd).is_some() {
            return Err(ErrorCode::Unsupported.into());
        }
        HostDescriptor::set_times_at(&mut self.inner, fd, path_flags, path, atim, mtim).await
    }

    async fn link_at(
        &mut self,
        _fd: WasmResource<types::Descriptor>,
        _old_path_flags: types::PathFlags,
        _old_path: String,
        _new_descriptor: WasmResource<types::Descriptor>,
        _new_path: String,
    ) -> FsResult<()> {
        Err(refused())
    }

    async fn open_at(
        &mut self,
        fd: WasmResource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        oflags: types::OpenFlags,
        flags: types::DescriptorFlags,
    ) -> FsResult<WasmResource<types::Descriptor>> {
        let (guest_path, area) = self.resolve(&fd, &path)?;
        let mut approved = HashSet::new();
        let modifies = oflags.intersects(types::OpenFlags::CREATE | types::OpenFlags::TRUNCATE)
            || flags.intersects(
                types::DescriptorFlags::WRITE | types::DescriptorFlags::MUTATE_DIRECTORY,
            );
        if self.descriptors.len() + self.listings.len() >= MAX_OPEN {
            return Err(ErrorCode::InsufficientMemory.into());
        }
        // Decide before touching the file system, so that a denied caller
        // cannot even learn whether the path exists.
        // Any open that does not modify reveals at least the path's
        // existence and type, so it takes a read (or list) decision too.
        let reads = if oflags.contains(types::OpenFlags::DIRECTORY) {
            Some(Action::FsList)
        } else if flags.contains(types::DescriptorFlags::READ) || !modifies {
            Some(Action::FsRead)
        } else {
            None
        };
        if let Some(action) = reads
            && self.decide(action, &guest_path, area)?
        {
            approved.insert(action);
        }
        if modifies && self.decide(Action::FsWrite, &guest_path, area)? {
            approved.insert(Action::FsWrite);
        }
        let truncated = if oflags.contains(types::OpenFlags::TRUNCATE) {
            self.size_at(&fd, &path)
        } else {
            0
        };
        let opened = match self.virtual_at(&fd, &path)? {
            Some((ns, path)) => {
                let descriptor = virtual_ns::open(&*ns, path, oflags, flags)?;
                self.push_virtual(descriptor)?
            }
            None => {
                HostDescriptor::open_at(&mut self.inner, fd, path_flags, path, oflags, flags)
                    .await?
            }
        };
        self.freed(truncated);
        self.record(&opened, guest_path, area, approved);
        Ok(opened)
    }

    fn drop(&mut self, fd: WasmResource<types::Descriptor>) -> wasmtime::Result<()> {
        self.descriptors.remove(&fd.rep());
        if self.virtual_fd(&fd).is_some() {
            self.inner
                .table
                .delete(WasmResource::<VirtualDescriptor>::new_own(fd.rep()))?;
            return Ok(());
        }
        HostDescriptor::drop(&mut self.inner, fd)
    }

    async fn readlink_at(
        &mut self,
        fd: WasmResource<types::Descriptor>,
        path: String,
    ) -> FsResult<String> {
        self.check_at(Action::FsRead, &fd, &path)?;
        if self.virtual_fd(&fd).is_some() {
            // No links in a virtual namespace.
            return Err(ErrorCode::Invalid.into());
        }
        HostDescriptor::readlink_at(&mut self.inner, fd, path).await
    }

    async fn remove_directory_at(
        &mut self,
        fd: WasmResource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        self.check_at(Action::FsWrite, &fd, &path)?;
        if let Some((ns, path)) = self.virtual_at(&fd, &path)? {
            return ns.remove_dir(&path).map_err(code);
        }
        HostDescriptor::remove_directory_at(&mut self.inner, fd, path).await
    }

    async fn rename_at(
        &mut self,
        fd: WasmResource<types::Descriptor>,
        old_path: String,
        new_fd: WasmResource<types::Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        // Moving a file makes its content readable under the new name: it
        // takes the right to read it as well as to write both names.
        self.check_at(Action::FsRead, &fd, &old_path)?;
        self.check_at(Action::FsWrite, &fd, &old_path)?;
        self.check_at(Action::FsWrite, &new_fd, &new_path)?;
        let same = self.resolve(&fd, &old_path).ok() == self.resolve(&new_fd, &new_path).ok();
        let replaced = if same {
            0
        } else {
            self.size_at(&new_fd, &new_path)
        };
        match (
            self.virtual_at(&fd, &old_path)?,
            self.virtual_at(&new_fd, &new_path)?,
        ) {
            (Some((ns, from)), Some((_, to))) => {
                ns.rename(&from, &to).map_err(code)?;
            }
            (None, None) => {
                HostDescriptor::rename_at(&mut self.inner, fd, old_path, new_fd, new_path).await?
            }
            _ => return Err(ErrorCode::CrossDevice.into()),
        }
        self.freed(replaced);
        Ok(())
    }

    async fn symlink_at(
        &mut self,
        _fd: WasmResource<types::Descriptor>,
        _src_path: String,
        _dest_path: String,
    ) -> FsResult<()> {
        Err(refused())
    }

    async fn unlink_file_at(
        &mut self,
        fd: WasmResource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        self.check_at(Action::FsWrite, &fd, &path)?;
        let removed = self.size_at(&fd, &path);
        match self.virtual_at(&fd, &path)? {
            Some((ns, path)) => {
                ns.remove_file(&path).map_err(code)?;
            }
            None => HostDescriptor::unlink_file_at(&mut self.inner, fd, path).await?,
        }
        self.freed(removed);
        Ok(())
    }

    fn read_via_stream(
        &mut self,
        fd: WasmResource<types::Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<WasmResource<DynInputStream>> {
        self.check_fd(Action::FsRead, &fd)?;
        if let Some((ns, path, kind)) = self.virtual_self(&fd)? {
            if kind == Kind::Directory {
                return Err(ErrorCode::IsDirectory.into());
            }
            let reader: DynInputStream = Box::new(virtual_ns::Reader { ns, path, offset });
            return Ok(self.inner.table.push(reader)?);
        }
        HostDescriptor::read_via_stream(&mut self.inner, fd, offset)
    }

    fn write_via_stream(
        &mut self,
        fd: WasmResource<types::Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<WasmResource<DynOutputStream>> {
        self.check_fd(Action::FsWrite, &fd)?;
        let end = self.fd_size(&fd)?;
        let stream = match self.virtual_self(&fd)? {
            Some((ns, path, _)) => self.writer(ns, path, Some(offset))?,
            None => {
                let file = match self.inner.table.get(&fd)? {
                    wasmtime_wasi::filesystem::Descriptor::File(f) => Some(f.file.clone()),
                    wasmtime_wasi::filesystem::Descriptor::Dir(_) => None,
                };
                // wasmtime-wasi's stream checks the descriptor; its writes
                // would each be a background task (measured: most of a
                // small file's write): they are made here, on the invoking
                // thread, like the descriptor's other calls.
                let stream = HostDescriptor::write_via_stream(&mut self.inner, fd, offset)?;
                match file {
                    Some(file) => {
                        drop(self.inner.table.delete(stream)?);
                        let direct: DynOutputStream = Box::new(virtual_ns::FileWriter {
                            file,
                            position: offset,
                        });
                        self.inner.table.push(direct)?
                    }
                    None => stream,
                }
            }
        };
        self.counted(stream, Some(offset), end)
    }

    fn append_via_stream(
        &mut self,
        fd: WasmResource<types::Descriptor>,
    ) -> FsResult<WasmResource<DynOutputStream>> {
        self.check_fd(Action::FsWrite, &fd)?;
        let end = self.fd_size(&fd)?;
        let stream = match self.virtual_self(&fd)? {
            Some((ns, path, _)) => self.writer(ns, path, None)?,
            None => HostDescriptor::append_via_stream(&mut self.inner, fd)?,
        };
        self.counted(stream, None, end)
    }

    async fn is_same_object(
        &mut self,
        a: WasmResource<types::Descriptor>,
        b: WasmResource<types::Descriptor>,
    ) -> wasmtime::Result<bool> {
        match (self.virtual_fd(&a), self.virtual_fd(&b)) {
            (Some((a, ..)), Some((b, ..))) => Ok(a == b),
            (None, None) => HostDescriptor::is_same_object(&mut self.inner, a, b).await,
            _ => Ok(false),
        }
    }

    async fn metadata_hash(
        &mut self,
        fd: WasmResource<types::Descriptor>,
    ) -> FsResult<types::MetadataHashValue> {
        if let Some((ns, path, _)) = self.virtual_self(&fd)? {
            return virtual_ns::metadata_hash(&*ns, &path);
        }
        HostDescriptor::metadata_hash(&mut self.inner, fd).await
    }

    async fn metadata_hash_at(
        &mut self,
        fd: WasmResource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        // Not a read of content: wasi-libc asks it for every directory entry
        // it lists, so listing the parent (`fs.list`) is what it takes.
        let (joined, area) = self.resolve(&fd, &path)?;
        if path.trim_matches('/').contains('/') {
            let parent = match joined.rsplit_once('/') {
                Some(("", _)) | None => "/",
                Some((parent, _)) => parent,
            };
            self.decide(Action::FsList, parent, area)?;
        } else {
            self.check_fd(Action::FsList, &fd)?;
        }
        if let Some((ns, path)) = self.virtual_at(&fd, &path)? {
            return virtual_ns::metadata_hash(&*ns, &path);
        }
        HostDescriptor::metadata_hash_at(&mut self.inner, fd, path_flags, path).await
    }
}

impl HostDirectoryEntryStream for CheckedFs<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: WasmResource<types::DirectoryEntryStream>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        if let Ok(entry) = self.inner.table.get_any_mut(stream.rep())
            && let Some(listing) = entry.downcast_mut::<VirtualListing>()
        {
            return Ok(listing.0.pop_front());
        }
        HostDirectoryEntryStream::read_directory_entry(&mut self.inner, stream).await
    }

    fn drop(&mut self, stream: WasmResource<types::DirectoryEntryStream>) -> wasmtime::Result<()> {
        self.listings.remove(&stream.rep());
        if let Ok(entry) = self.inner.table.get_any_mut(stream.rep())
            && entry.is::<VirtualListing>()
        {
            self.inner
                .table
                .delete(WasmResource::<VirtualListing>::new_own(stream.rep()))?;
            return Ok(());
        }
        HostDirectoryEntryStream::drop(&mut self.inner, stream)
    }
}
