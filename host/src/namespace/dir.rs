//! The namespace on a host directory, `peers/<name>/data`, through cap-std:
//! every path is opened beneath the directory's handle, so no name (nor a
//! symlink planted on the host) reaches outside it.

use super::backend::{
    Entry, Kind, NamespaceBackend, NsError, NsPath, OpenMode, Stat, check_rename, end_of,
};
use cap_std::fs::{Dir, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A namespace on a host directory.
#[derive(Debug)]
pub struct DirNamespace {
    root: Dir,
}

impl DirNamespace {
    /// The namespace in the host directory `path`, which must exist.
    ///
    /// # Ambient Authority
    /// Opens `path` by host path, once; everything after is beneath it.
    pub fn open(path: &Path) -> Result<DirNamespace, NsError> {
        let root = Dir::open_ambient_dir(path, cap_std::ambient_authority())
            .map_err(|e| NsError::Backend(format!("cannot open {}: {e}", path.display())))?;
        Ok(DirNamespace { root })
    }

    fn rel(path: &NsPath) -> String {
        match path.relative() {
            relative if relative.is_empty() => ".".into(),
            relative => relative,
        }
    }

    fn file(&self, path: &NsPath, options: &OpenOptions) -> Result<std::fs::File, NsError> {
        if self.kind(path)? == Kind::Directory {
            return Err(NsError::IsADirectory(path.clone()));
        }
        self.root
            .open_with(Self::rel(path), options)
            .map(|file| file.into_std())
            .map_err(|e| error(path, e))
    }

    fn kind(&self, path: &NsPath) -> Result<Kind, NsError> {
        self.stat(path).map(|stat| stat.kind)
    }
}

/// The typed error of `e` at `path`.
fn error(path: &NsPath, e: std::io::Error) -> NsError {
    match e.kind() {
        ErrorKind::NotFound => NsError::NotFound(path.clone()),
        ErrorKind::AlreadyExists => NsError::Exists(path.clone()),
        ErrorKind::NotADirectory => NsError::NotADirectory(path.clone()),
        ErrorKind::IsADirectory => NsError::IsADirectory(path.clone()),
        ErrorKind::DirectoryNotEmpty => NsError::NotEmpty(path.clone()),
        _ => NsError::Backend(format!("{path}: {e}")),
    }
}

fn kind_of(file_type: cap_std::fs::FileType) -> Kind {
    if file_type.is_dir() {
        Kind::Directory
    } else {
        Kind::File
    }
}

impl NamespaceBackend for DirNamespace {
    fn name(&self) -> &'static str {
        "dir"
    }

    fn stat(&self, path: &NsPath) -> Result<Stat, NsError> {
        let meta = self
            .root
            .symlink_metadata(Self::rel(path))
            .map_err(|e| error(path, e))?;
        if meta.file_type().is_symlink() {
            // Never made from inside a sandbox; one planted on the host is
            // not followed.
            return Err(NsError::Invalid(format!("{path} is a symbolic link")));
        }
        let kind = kind_of(meta.file_type());
        Ok(Stat {
            kind,
            size: if kind == Kind::File { meta.len() } else { 0 },
            modified: meta.modified().ok().map(|t| t.into_std()),
        })
    }

    fn open(&self, path: &NsPath, mode: OpenMode) -> Result<u64, NsError> {
        if path.is_root() {
            return Err(NsError::IsADirectory(path.clone()));
        }
        let mut options = OpenOptions::new();
        options.write(true);
        if mode.create && mode.exclusive {
            options.create_new(true);
        } else if mode.create {
            options.create(true);
        }
        if mode.truncate {
            options.truncate(true);
        }
        match self.kind(path) {
            Ok(Kind::Directory) => return Err(NsError::IsADirectory(path.clone())),
            Ok(Kind::File) if mode.create && mode.exclusive => {
                return Err(NsError::Exists(path.clone()));
            }
            Err(NsError::NotFound(_)) if mode.create => {}
            Err(e) => return Err(e),
            Ok(Kind::File) => {}
        }
        let file = self
            .root
            .open_with(Self::rel(path), &options)
            .map_err(|e| error(path, e))?;
        file.metadata().map(|m| m.len()).map_err(|e| error(path, e))
    }

    fn read(&self, path: &NsPath, offset: u64, len: u64) -> Result<Vec<u8>, NsError> {
        let file = self.file(path, OpenOptions::new().read(true))?;
        let size = file.metadata().map_err(|e| error(path, e))?.len();
        let end = end_of(offset, len)?.min(size);
        let mut bytes = vec![0; usize::try_from(end.saturating_sub(offset)).unwrap_or(0)];
        let mut done = 0;
        while done < bytes.len() {
            match file.read_at(&mut bytes[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(error(path, e)),
            }
        }
        bytes.truncate(done);
        Ok(bytes)
    }

    fn write(&self, path: &NsPath, offset: u64, bytes: &[u8]) -> Result<u64, NsError> {
        end_of(offset, bytes.len() as u64)?;
        let file = self.file(path, OpenOptions::new().write(true))?;
        file.write_all_at(bytes, offset)
            .map_err(|e| error(path, e))?;
        file.metadata().map(|m| m.len()).map_err(|e| error(path, e))
    }

    fn set_size(&self, path: &NsPath, size: u64) -> Result<(), NsError> {
        let file = self.file(path, OpenOptions::new().write(true))?;
        file.set_len(size).map_err(|e| error(path, e))
    }

    fn list(&self, path: &NsPath) -> Result<Vec<Entry>, NsError> {
        if self.kind(path)? == Kind::File {
            return Err(NsError::NotADirectory(path.clone()));
        }
        let mut entries = Vec::new();
        for entry in self
            .root
            .read_dir(Self::rel(path))
            .map_err(|e| error(path, e))?
        {
            let entry = entry.map_err(|e| error(path, e))?;
            let kind = kind_of(entry.file_type().map_err(|e| error(path, e))?);
            entries.push(Entry {
                name: entry.file_name().to_string_lossy().into_owned(),
                kind,
            });
        }
        entries.sort();
        Ok(entries)
    }

    fn create_dir(&self, path: &NsPath) -> Result<(), NsError> {
        if path.is_root() {
            return Err(NsError::Exists(path.clone()));
        }
        self.root
            .create_dir(Self::rel(path))
            .map_err(|e| error(path, e))
    }

    fn remove_file(&self, path: &NsPath) -> Result<u64, NsError> {
        let stat = self.stat(path)?;
        if stat.kind == Kind::Directory {
            return Err(NsError::IsADirectory(path.clone()));
        }
        self.root
            .remove_file(Self::rel(path))
            .map_err(|e| error(path, e))?;
        Ok(stat.size)
    }

    fn remove_dir(&self, path: &NsPath) -> Result<(), NsError> {
        if path.is_root() {
            return Err(NsError::Invalid(
                "the namespace root cannot be removed".into(),
            ));
        }
        if self.kind(path)? == Kind::File {
            return Err(NsError::NotADirectory(path.clone()));
        }
        self.root
            .remove_dir(Self::rel(path))
            .map_err(|e| error(path, e))
    }

    fn rename(&self, from: &NsPath, to: &NsPath) -> Result<u64, NsError> {
        check_rename(from, to)?;
        let source = self.stat(from)?;
        let replaced = match self.stat(to) {
            Ok(target) => match (source.kind, target.kind) {
                _ if from == to => return Ok(0),
                (Kind::File, Kind::Directory) => return Err(NsError::IsADirectory(to.clone())),
                (Kind::Directory, Kind::File) => return Err(NsError::NotADirectory(to.clone())),
                (_, _) => target.size,
            },
            Err(NsError::NotFound(_)) => 0,
            Err(e) => return Err(e),
        };
        self.root
            .rename(Self::rel(from), &self.root, Self::rel(to))
            .map_err(|e| error(to, e))?;
        Ok(replaced)
    }

    fn usage(&self) -> Result<u64, NsError> {
        let mut total = 0u64;
        let mut pending = vec![NsPath::root()];
        while let Some(dir) = pending.pop() {
            for entry in self.list(&dir)? {
                let path = NsPath::parse(&format!("{dir}/{}", entry.name))?;
                match entry.kind {
                    Kind::Directory => pending.push(path),
                    Kind::File => total = total.saturating_add(self.stat(&path)?.size),
                }
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dir_namespace_passes_the_conformance_suite() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ns = DirNamespace::open(tmp.path()).unwrap_or_else(|e| panic!("{e}"));
        super::super::backend::conformance::run(&ns);
    }

    #[test]
    fn a_symlink_planted_on_the_host_leads_nowhere() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(tmp.path().join("secret"), "s").unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink("../secret", data.join("link"))
            .unwrap_or_else(|e| panic!("{e}"));
        let ns = DirNamespace::open(&data).unwrap_or_else(|e| panic!("{e}"));
        let link = NsPath::parse("/link").unwrap_or_else(|e| panic!("{e}"));
        assert!(ns.read(&link, 0, 10).is_err());
        assert!(ns.write(&link, 0, b"x").is_err());
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("secret")).ok(),
            Some("s".into())
        );
    }
}
