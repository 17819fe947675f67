//! A peer's logic as the host holds it: the `logic/*.rhai` files, read once
//! and handed to every instance in `prepare`, re-read when they change.
//!
//! Each invocation checks the directory and every file it holds (metadata
//! only: a few microseconds) and re-reads all of them when anything differs,
//! so an owner's edit takes effect on the next invocation while an
//! invocation in flight keeps the version it began with (it holds its own
//! `Arc`). Sizes, inodes and modification times decide "changed"; as
//! timestamps are coarse (one clock tick, at most 10 ms on Linux), files
//! modified shortly before they were read are read again at every use until
//! they are older than [`RACY`] (git's answer to the same race).

use crate::bindings::LogicModule;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Largest logic file, in bytes.
pub const MAX_LOGIC_FILE: u64 = 1 << 20;

/// Most files in one peer's `logic/`.
pub const MAX_LOGIC_FILES: usize = 256;

/// The logic could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogicError {
    /// Reading the directory or a file failed.
    #[error("{path}: {source}")]
    Io {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A file or the directory is over its limit.
    #[error("{path}: {what}")]
    TooLarge {
        /// What was read.
        path: PathBuf,
        /// Which limit.
        what: String,
    },
}

/// How recent a modification must be, when the files are read, for the
/// version not to be trusted yet.
pub const RACY: std::time::Duration = std::time::Duration::from_millis(100);

/// What a file looked like when it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(metadata);
        #[cfg(not(unix))]
        let inode = 0;
        Stamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            inode,
        }
    }
}

/// The version of the logic last read, and how its files looked.
#[derive(Debug)]
struct Version {
    dir: Option<Stamp>,
    files: Vec<(PathBuf, Stamp)>,
    modules: Arc<[LogicModule]>,
    /// Something was modified within [`RACY`] of the read.
    racy: bool,
}

/// A peer's `logic/` directory and its current version.
#[derive(Debug)]
pub struct Logic {
    dir: PathBuf,
    current: Mutex<Option<Arc<Version>>>,
}

impl Logic {
    /// The logic in `dir` (`peers/<name>/logic`), read on first use.
    pub fn new(dir: PathBuf) -> Logic {
        Logic {
            dir,
            current: Mutex::new(None),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current modules: the cached version while no file changed, else
    /// the files read again.
    pub fn modules(&self) -> Result<Arc<[LogicModule]>, LogicError> {
        let cached = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(version) = &cached
            && self.unchanged(version)
        {
            return Ok(version.modules.clone());
        }
        let mut version = self.read()?;
        // Unchanged contents keep their identity: instances prepared with
        // them stay current (see `session`).
        if let Some(old) = cached
            && same(&old.modules, &version.modules)
        {
            version.modules = old.modules.clone();
        }
        let version = Arc::new(version);
        let modules = version.modules.clone();
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(version);
        Ok(modules)
    }

    fn unchanged(&self, version: &Version) -> bool {
        if version.racy {
            return false;
        }
        let dir = std::fs::metadata(&self.dir).ok().map(|m| Stamp::of(&m));
        dir == version.dir
            && version
                .files
                .iter()
                .all(|(path, stamp)| std::fs::metadata(path).is_ok_and(|m| Stamp::of(&m) == *stamp))
    }

    fn read(&self) -> Result<Version, LogicError> {
        let read_at = SystemTime::now();
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LogicError::Io { path, source }
        };
        let dir = match std::fs::metadata(&self.dir) {
            Ok(metadata) => Some(Stamp::of(&metadata)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut files = Vec::new();
        let mut modules = Vec::new();
        if dir.is_some() {
            let mut paths = Vec::new();
            for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
                let entry = entry.map_err(io(&self.dir))?;
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "rhai") {
                    paths.push(path);
                }
            }
            if paths.len() > MAX_LOGIC_FILES {
                return Err(LogicError::TooLarge {
                    path: self.dir.clone(),
                    what: format!(
                        "{} logic files; the limit is {MAX_LOGIC_FILES}",
                        paths.len()
                    ),
                });
            }
            paths.sort();
            for path in paths {
                let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                    continue;
                };
                let name = name.to_owned();
                let metadata = std::fs::metadata(&path).map_err(io(&path))?;
                if metadata.len() > MAX_LOGIC_FILE {
                    return Err(LogicError::TooLarge {
                        path,
                        what: format!("{} bytes; the limit is {MAX_LOGIC_FILE}", metadata.len()),
                    });
                }
                let source = std::fs::read_to_string(&path).map_err(io(&path))?;
                files.push((path, Stamp::of(&metadata)));
                modules.push(LogicModule { name, source });
            }
        }
        let recent = |stamp: &Stamp| stamp.modified.is_none_or(|m| m + RACY > read_at);
        let racy = dir.as_ref().is_some_and(recent) || files.iter().any(|(_, s)| recent(s));
        Ok(Version {
            dir,
            files,
            modules: modules.into(),
            racy,
        })
    }
}

fn same(a: &[LogicModule], b: &[LogicModule]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(a, b)| a.name == b.name && a.source == b.source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(logic: &Logic) -> Vec<(String, String)> {
        match logic.modules() {
            Ok(modules) => modules
                .iter()
                .map(|m| (m.name.clone(), m.source.clone()))
                .collect(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn logic_is_read_once_and_again_when_a_file_changes() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().join("logic");
        let logic = Logic::new(dir.clone());
        assert!(names(&logic).is_empty(), "no directory, no logic");
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("main.rhai"), "fn a() { 1 }").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names(&logic), [("main".into(), "fn a() { 1 }".into())]);
        let first = logic.modules().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("main.rhai"), "fn a() { 22 }").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("text.rhai"), "fn b() { 2 }").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            names(&logic),
            [
                ("main".into(), "fn a() { 22 }".into()),
                ("text".into(), "fn b() { 2 }".into())
            ]
        );
        // The version an invocation holds does not change under it.
        assert_eq!(first[0].source, "fn a() { 1 }");
    }

    #[test]
    fn settled_files_are_not_read_again() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().to_owned();
        std::fs::write(dir.join("main.rhai"), "fn a() { 1 }").unwrap_or_else(|e| panic!("{e}"));
        let old = SystemTime::now() - 2 * RACY;
        for path in [dir.join("main.rhai"), dir.clone()] {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{e}"));
            file.set_modified(old).unwrap_or_else(|e| panic!("{e}"));
        }
        let logic = Logic::new(dir.clone());
        let first = logic.modules().unwrap_or_else(|e| panic!("{e}"));
        let again = logic.modules().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            Arc::ptr_eq(&first, &again),
            "unchanged files are not read again"
        );
        // A same-size edit is still seen: its modification time moved.
        std::fs::write(dir.join("main.rhai"), "fn a() { 2 }").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names(&logic), [("main".into(), "fn a() { 2 }".into())]);
    }

    #[test]
    fn an_oversized_logic_file_is_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().to_owned();
        let big = "x".repeat(usize::try_from(MAX_LOGIC_FILE).unwrap_or(0) + 1);
        std::fs::write(dir.join("main.rhai"), big).unwrap_or_else(|e| panic!("{e}"));
        let error = Logic::new(dir).modules().map(drop);
        assert!(
            matches!(&error, Err(LogicError::TooLarge { path, .. }) if path.ends_with("main.rhai")),
            "{error:?}"
        );
    }
}
