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
//!
//! A new version is accepted only when every file compiles with the guest's
//! own Rhai engine (run natively here): an edit that does not compile is
//! refused with its file:line, and the version before it stays in use.
//!
//! The deployment's library (`lib/*.rhai`) is a `Logic` too, shared by every
//! peer: its modules reach the guest named `lib/<name>`, after the peer's
//! own (the guest resolves `import`, see `peerhost_rhai_guest::logic`).

use crate::bindings::LogicModule;
use std::collections::BTreeMap;
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

/// A push of logic was refused.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A name, a size, or a file that does not compile; nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// Writing or reading the files failed.
    #[error(transparent)]
    Io(LogicError),
}

/// Whether `name` can name a logic module: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn valid_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub use crate::files::{RACY, Stamp};
use crate::files::{TRUSTED, Watch};
use crate::files::{off_async, read_regular, temporary};

/// One version of the logic: its modules, in the order the guest gets
/// them, and (computed on first need) their digest, by which a snapshot of
/// the guest with them compiled is known (see `runtime::snapshot`).
#[derive(Debug, Default)]
pub struct Modules {
    list: Vec<LogicModule>,
    digest: std::sync::OnceLock<[u8; 32]>,
}

impl Modules {
    /// SHA-256 of every module's name and source, each length-prefixed:
    /// equal digests are equal logic.
    pub fn digest(&self) -> &[u8; 32] {
        self.digest.get_or_init(|| {
            use sha2::{Digest, Sha256};
            let mut hash = Sha256::new();
            for module in &self.list {
                for part in [&module.name, &module.source] {
                    hash.update((part.len() as u64).to_le_bytes());
                    hash.update(part.as_bytes());
                }
            }
            hash.finalize().into()
        })
    }
}

impl std::ops::Deref for Modules {
    type Target = [LogicModule];

    fn deref(&self) -> &[LogicModule] {
        &self.list
    }
}

impl From<Vec<LogicModule>> for Modules {
    fn from(list: Vec<LogicModule>) -> Modules {
        Modules {
            list,
            digest: std::sync::OnceLock::new(),
        }
    }
}

impl FromIterator<LogicModule> for Modules {
    fn from_iter<I: IntoIterator<Item = LogicModule>>(iter: I) -> Modules {
        Modules::from(iter.into_iter().collect::<Vec<_>>())
    }
}

/// The version of the logic last read, and how its files looked.
#[derive(Debug)]
struct Version {
    dir: Option<Stamp>,
    files: Vec<(PathBuf, Stamp)>,
    modules: Arc<Modules>,
    /// Something was modified within [`RACY`] of the read.
    racy: bool,
    /// The directory's [`Watch`] number before the read, and when the files
    /// were last found as read.
    seen: Option<(u64, Mutex<std::time::Instant>)>,
    /// The files on disk did not compile: `modules` is the version before
    /// them, and this says why they were refused.
    refused: Option<String>,
}

/// A peer's `logic/` directory (or the deployment's `lib/`) and its current version.
#[derive(Debug)]
pub struct Logic {
    dir: PathBuf,
    /// Put before each module's name: `lib/` for the library.
    prefix: &'static str,
    /// The deployment's library, for a peer's logic.
    library: Option<Arc<Logic>>,
    current: Mutex<Option<Arc<Version>>>,
    /// The directory, watched from the first use on.
    watch: std::sync::OnceLock<Watch>,
    /// Held while the files are read or replaced: a reader never sees half
    /// of a push.
    update: Mutex<()>,
    /// The peer's modules and the library's as last combined.
    combined: Mutex<Option<[Arc<Modules>; 3]>>,
}

// The library's prefix and the file a module comes from, as the guest
// resolves and names them.
pub use peerhost_rhai_guest::logic::{LIBRARY, file_of};

impl Logic {
    /// The logic in `dir` (`peers/<name>/logic`), read on first use.
    pub fn new(dir: PathBuf) -> Logic {
        Logic {
            dir,
            prefix: "",
            library: None,
            current: Mutex::new(None),
            watch: std::sync::OnceLock::new(),
            update: Mutex::new(()),
            combined: Mutex::new(None),
        }
    }

    /// A peer's logic in `dir`, with the deployment's `library` after it.
    pub fn with_library(dir: PathBuf, library: Arc<Logic>) -> Logic {
        Logic {
            library: Some(library),
            ..Logic::new(dir)
        }
    }

    /// The deployment's library in `dir` (`lib/`): modules named `lib/<name>`.
    pub fn library(dir: PathBuf) -> Logic {
        Logic {
            prefix: LIBRARY,
            ..Logic::new(dir)
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Why the files on disk are not in use, when an edit did not compile
    /// (the version before it is), as of the last [`Logic::modules`].
    pub fn refused(&self) -> Option<String> {
        let own = self.cached().and_then(|v| v.refused.clone());
        own.or_else(|| self.library.as_ref().and_then(|l| l.refused()))
    }

    /// Every module on disk now, the peer's then the library's, each with
    /// its compile error (`file:line:column: …`), if any: what an edit
    /// would bring, whether or not it is in use.
    pub fn check_files(&self) -> Result<Vec<(String, Option<String>)>, LogicError> {
        let mut out = Vec::new();
        for logic in std::iter::once(self).chain(self.library.as_deref()) {
            for module in logic.read()?.modules.iter() {
                out.push((
                    file_of(&module.name),
                    check(&module.name, &module.source).err(),
                ));
            }
        }
        Ok(out)
    }

    /// The current modules, the peer's then the library's: the cached
    /// version while no file changed, else the files read again.
    pub fn modules(&self) -> Result<Arc<Modules>, LogicError> {
        let own = self.own_modules()?;
        let Some(library) = &self.library else {
            return Ok(own);
        };
        let library = library.own_modules()?;
        if library.is_empty() {
            return Ok(own);
        }
        let mut combined = self.combined.lock().unwrap_or_else(|p| p.into_inner());
        if let Some([o, l, all]) = combined.as_ref()
            && Arc::ptr_eq(o, &own)
            && Arc::ptr_eq(l, &library)
        {
            return Ok(all.clone());
        }
        let all: Arc<Modules> = Arc::new(own.iter().chain(library.iter()).cloned().collect());
        *combined = Some([own, library, all.clone()]);
        Ok(all)
    }

    /// The version last read, if any.
    fn cached(&self) -> Option<Arc<Version>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// This directory's modules alone.
    fn own_modules(&self) -> Result<Arc<Modules>, LogicError> {
        let cached = self.cached();
        if let Some(version) = &cached
            && self.unchanged(version)
        {
            return Ok(version.modules.clone());
        }
        let _update = self.update.lock().unwrap_or_else(|p| p.into_inner());
        // Another reader (or a push) may have read the new files meanwhile.
        let cached = self.cached();
        if let Some(version) = &cached
            && self.unchanged(version)
        {
            return Ok(version.modules.clone());
        }
        // Reading and compiling changed files takes milliseconds: off the
        // async worker thread, so its other connections go on meanwhile.
        off_async(|| self.accept(cached.as_deref(), self.read()))
    }

    /// Makes the files just read the version in use, if they compile;
    /// otherwise the version before stays (`refused` says why), unless
    /// there is none. Called with `update` held.
    fn accept(
        &self,
        cached: Option<&Version>,
        read: Result<Version, LogicError>,
    ) -> Result<Arc<Modules>, LogicError> {
        let refuse = |old: &Version, refused: String, version: Version| {
            if old.refused.as_deref() != Some(refused.as_str()) {
                tracing::warn!(
                    target: "peerhost::logic",
                    dir = %self.dir.display(),
                    "edit refused, the version before it stays in use: {refused}"
                );
            }
            Version {
                modules: old.modules.clone(),
                refused: Some(refused),
                ..version
            }
        };
        let version = match (read, cached) {
            (Ok(version), Some(old)) if same(&old.modules, &version.modules) => {
                // Unchanged contents keep their identity: instances
                // prepared with them stay current (see `session`).
                Version {
                    modules: old.modules.clone(),
                    ..version
                }
            }
            (Ok(version), old) => match (check_all(&version.modules), old) {
                (Ok(()), _) => version,
                (Err(refused), Some(old)) => refuse(old, refused, version),
                // Nothing to keep on first read: the guest reports the
                // error to the requests that need the file.
                (Err(refused), None) => {
                    tracing::warn!(target: "peerhost::logic", dir = %self.dir.display(), "{refused}");
                    version
                }
            },
            // Unreadable (too many or too large files, not UTF-8): the
            // version before stays, and the directory is read again at the
            // next use until it is fixed.
            (Err(e), Some(old)) => refuse(
                old,
                e.to_string(),
                Version {
                    dir: None,
                    files: Vec::new(),
                    modules: old.modules.clone(),
                    racy: true,
                    seen: None,
                    refused: None,
                },
            ),
            (Err(e), None) => return Err(e),
        };
        let version = Arc::new(version);
        let modules = version.modules.clone();
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(version);
        Ok(modules)
    }

    /// Replaces (or adds) the modules `files` (name, source) after
    /// compiling each: on disk, one file at a time, and in use at once, as
    /// one version. A file that does not compile changes nothing; the error
    /// names its file:line. Invocations in flight keep the version they
    /// began with.
    pub fn install(&self, files: &[(String, String)]) -> Result<Arc<Modules>, InstallError> {
        if files.len() > MAX_LOGIC_FILES {
            return Err(InstallError::Invalid(format!(
                "{} files; the limit is {MAX_LOGIC_FILES}",
                files.len()
            )));
        }
        for (name, source) in files {
            if !valid_module_name(name) {
                return Err(InstallError::Invalid(format!(
                    "`{name}` is not a module name: use 1 to 64 of a-z, A-Z, 0-9, `_`, `-` (the file is logic/<name>.rhai)"
                )));
            }
            if source.len() as u64 > MAX_LOGIC_FILE {
                return Err(InstallError::Invalid(format!(
                    "{}: {} bytes; the limit is {MAX_LOGIC_FILE}",
                    file_of(name),
                    source.len()
                )));
            }
            check(name, source).map_err(InstallError::Invalid)?;
        }
        let _update = self.update.lock().unwrap_or_else(|p| p.into_inner());
        let cached = self.cached();
        // The version this push makes: the files on disk now, with the
        // pushed ones in place; it must stay within the limits and compile
        // whole (a file already on disk may be a refused edit).
        let mut next: BTreeMap<String, String> = self
            .read()
            .map_err(InstallError::Io)?
            .modules
            .iter()
            .map(|m| (m.name.clone(), m.source.clone()))
            .collect();
        next.extend(files.iter().cloned());
        if next.len() > MAX_LOGIC_FILES {
            return Err(InstallError::Invalid(format!(
                "the push would make {} logic files; the limit is {MAX_LOGIC_FILES}",
                next.len()
            )));
        }
        let pushed: std::collections::BTreeSet<&String> = files.iter().map(|(n, _)| n).collect();
        for (name, source) in next.iter().filter(|(name, _)| !pushed.contains(name)) {
            check(name, source).map_err(|e| {
                InstallError::Invalid(format!("{e} (a file already in logic/, not pushed)"))
            })?;
        }
        // Every file is written before any is renamed into place: a failed
        // write leaves logic/ as it was (the temporary files are removed).
        let mut written = Vec::new();
        for (name, source) in files {
            written.push((
                self.dir.join(format!("{name}.rhai")),
                temporary(&self.dir, source).map_err(|e| {
                    InstallError::Io(LogicError::Io {
                        path: self.dir.clone(),
                        source: e,
                    })
                })?,
            ));
        }
        for (path, file) in written {
            file.persist(&path).map_err(|e| {
                InstallError::Io(LogicError::Io {
                    path: path.clone(),
                    source: e.error,
                })
            })?;
        }
        self.accept(cached.as_deref(), self.read())
            .map_err(InstallError::Io)
    }

    /// The directory's [`Watch`] number now.
    fn generation(&self) -> Option<u64> {
        self.watch
            .get_or_init(|| Watch::new(&self.dir))
            .generation()
    }

    fn unchanged(&self, version: &Version) -> bool {
        if version.racy {
            return false;
        }
        // Nothing reported in the directory since the files were last
        // found as read (within `TRUSTED`): no need to look at them.
        let generation = self.generation();
        if let (Some(now), Some((then, at))) = (generation, &version.seen)
            && now == *then
        {
            let mut at = at.lock().unwrap_or_else(|p| p.into_inner());
            if at.elapsed() < TRUSTED {
                return true;
            }
            let dir = std::fs::metadata(&self.dir).ok().map(|m| Stamp::of(&m));
            let same = dir == version.dir && self.files_unchanged(version);
            if same {
                *at = std::time::Instant::now();
            }
            return same;
        }
        let dir = std::fs::metadata(&self.dir).ok().map(|m| Stamp::of(&m));
        dir == version.dir && self.files_unchanged(version)
    }

    fn files_unchanged(&self, version: &Version) -> bool {
        version
            .files
            .iter()
            .all(|(path, stamp)| std::fs::metadata(path).is_ok_and(|m| Stamp::of(&m) == *stamp))
    }

    fn read(&self) -> Result<Version, LogicError> {
        // Taken before the files are read: an edit during the read counts
        // after it, and is looked at on the next use.
        let seen = self
            .generation()
            .map(|g| (g, Mutex::new(std::time::Instant::now())));
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
                let name = format!("{}{name}", self.prefix);
                let (metadata, source) = match read_regular(&path, MAX_LOGIC_FILE) {
                    Ok(read) => read,
                    Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
                        return Err(LogicError::TooLarge {
                            path,
                            what: format!("{e}; the limit is {MAX_LOGIC_FILE} bytes"),
                        });
                    }
                    Err(e) => return Err(io(&path)(e)),
                };
                files.push((path, Stamp::of(&metadata)));
                modules.push(LogicModule { name, source });
            }
        }
        let recent = |stamp: &Stamp| stamp.racy(read_at);
        let racy = dir.as_ref().is_some_and(recent) || files.iter().any(|(_, s)| recent(s));
        Ok(Version {
            dir,
            files,
            modules: Arc::new(Modules::from(modules)),
            racy,
            seen,
            refused: None,
        })
    }
}

/// Compiles one module with the guest's engine; the error names
/// `file:line:column`.
pub fn check(name: &str, source: &str) -> Result<rhai::AST, String> {
    peerhost_rhai_guest::with_engine(|engine| engine.compile(source)).map_err(|error| {
        let rhai::ParseError(kind, pos) = error;
        let file = file_of(name);
        match (pos.line(), pos.position()) {
            (Some(line), Some(column)) => format!("{file}:{line}:{column}: {kind}"),
            (Some(line), None) => format!("{file}:{line}: {kind}"),
            _ => format!("{file}: {kind}"),
        }
    })
}

/// Compiles every module; the first error, by file:line.
pub fn check_all(modules: &[LogicModule]) -> Result<(), String> {
    for module in modules {
        check(&module.name, &module.source)?;
    }
    Ok(())
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
    fn a_push_compiles_the_whole_version_and_changes_nothing_when_refused() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().to_owned();
        std::fs::write(dir.join("main.rhai"), "fn a() { 1 }").unwrap_or_else(|e| panic!("{e}"));
        let logic = Logic::new(dir.clone());
        assert_eq!(names(&logic), [("main".into(), "fn a() { 1 }".into())]);
        // An edit on disk that does not compile is refused ...
        std::fs::write(dir.join("text.rhai"), "fn b( {").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names(&logic), [("main".into(), "fn a() { 1 }".into())]);
        assert!(
            logic
                .refused()
                .is_some_and(|r| r.contains("logic/text.rhai:1"))
        );
        // ... and a push of another file does not let it in.
        let push = [("main".to_owned(), "fn a() { 2 }".to_owned())];
        let error = logic.install(&push).map(drop);
        assert!(
            matches!(&error, Err(InstallError::Invalid(m)) if m.contains("logic/text.rhai:1")),
            "{error:?}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("main.rhai")).unwrap_or_default(),
            "fn a() { 1 }",
            "nothing written"
        );
        // A push that does not compile names its file and line.
        std::fs::write(dir.join("text.rhai"), "fn b() { 3 }").unwrap_or_else(|e| panic!("{e}"));
        let bad = [("main".to_owned(), "fn a() {\n  1 +\n}".to_owned())];
        let error = logic.install(&bad).map(drop);
        assert!(
            matches!(&error, Err(InstallError::Invalid(m)) if m.starts_with("logic/main.rhai:3")),
            "{error:?}"
        );
        // A good one is in use at once, with the file fixed on disk.
        let installed = logic.install(&push).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(installed.len(), 2);
        assert_eq!(installed[0].source, "fn a() { 2 }");
        for bad_name in ["../x", "a/b", "", "x.rhai"] {
            let error = logic
                .install(&[(bad_name.to_owned(), "1".to_owned())])
                .map(drop);
            assert!(matches!(error, Err(InstallError::Invalid(_))), "{bad_name}");
        }
    }

    #[test]
    fn an_unreadable_edit_keeps_the_version_before() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().to_owned();
        std::fs::write(dir.join("main.rhai"), "fn a() { 1 }").unwrap_or_else(|e| panic!("{e}"));
        let logic = Logic::new(dir.clone());
        assert_eq!(names(&logic).len(), 1);
        std::fs::write(dir.join("bin.rhai"), [0xff, 0xfe, 0x00]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names(&logic), [("main".into(), "fn a() { 1 }".into())]);
        assert!(logic.refused().is_some());
        std::fs::remove_file(dir.join("bin.rhai")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names(&logic).len(), 1);
        assert!(logic.refused().is_none());
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

    /// A FIFO planted in `logic/` is refused at once, not read (a blocking
    /// read would stall the worker until a writer appears).
    #[test]
    fn a_fifo_in_logic_is_refused_without_blocking() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().to_owned();
        std::fs::write(dir.join("main.rhai"), "fn a() { 1 }").unwrap_or_else(|e| panic!("{e}"));
        let fifo = dir.join("trap.rhai");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo failed");
        let started = std::time::Instant::now();
        let error = Logic::new(dir).modules().map(drop);
        assert!(
            matches!(&error, Err(LogicError::Io { path, .. }) if path.ends_with("trap.rhai")),
            "{error:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn class_1_deeply_nested_logic_is_refused_on_a_runtime_threads_stack() {
        let results = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(|| {
                [
                    format!(
                        "fn f() {{ {}1{} }}",
                        "(".repeat(100_000),
                        ")".repeat(100_000)
                    ),
                    format!(
                        "fn f() {{ {}1{} }}",
                        "[".repeat(100_000),
                        "]".repeat(100_000)
                    ),
                    format!("fn f() {{ {} }}", "if true { ".repeat(50_000)),
                    format!("fn f() {{ 1{} }}", " + 1".repeat(200_000)),
                ]
                .iter()
                .map(|source| check("main", source).is_err())
                .collect::<Vec<_>>()
            })
            .unwrap_or_else(|e| panic!("{e}"))
            .join()
            .unwrap_or_else(|_| panic!("compiling deep logic aborted the thread"));
        assert_eq!(results, [true, true, true, true]);
    }
}
