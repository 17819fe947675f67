//! What a namespace backend does: the file operations a guest's `std::fs`
//! needs, on paths already resolved by the checked filesystem (absolute
//! guest paths, `/` the namespace root), with one meaning on every backend.
//!
//! A backend knows files and directories only: no links, no permissions,
//! no times but a file's last modification. [`NsPath`] is the only way to
//! name a path: it refuses NUL, `..` and empty names before a backend sees
//! them, so no backend has to get that right on its own.

use std::time::SystemTime;

/// Longest path, in bytes, as the checked filesystem allows.
pub const MAX_PATH: usize = 4096;

/// Longest name of one file or directory, in bytes.
pub const MAX_NAME: usize = 255;

/// A path of the namespace: its names from the root, each non-empty,
/// without `/`, NUL, `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NsPath {
    names: Vec<String>,
}

impl NsPath {
    /// The namespace root, `/`.
    pub fn root() -> NsPath {
        NsPath { names: Vec::new() }
    }

    /// `path` (`/a/b`, `a/b`; `.` components and repeated `/` are
    /// dropped), or `invalid` for NUL, `..`, an over-long path or name.
    pub fn parse(path: &str) -> Result<NsPath, NsError> {
        if path.len() > MAX_PATH {
            return Err(NsError::Invalid(format!(
                "a path of {} bytes (at most {MAX_PATH})",
                path.len()
            )));
        }
        if path.contains('\0') {
            return Err(NsError::Invalid("a path with NUL".into()));
        }
        let mut names = Vec::new();
        for name in path.split('/') {
            match name {
                "" | "." => {}
                ".." => return Err(NsError::Invalid(format!("`..` in {path:?}"))),
                name if name.len() > MAX_NAME => {
                    return Err(NsError::Invalid(format!(
                        "a name of {} bytes (at most {MAX_NAME})",
                        name.len()
                    )));
                }
                name => names.push(name.to_owned()),
            }
        }
        Ok(NsPath { names })
    }

    /// The names from the root.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.names.is_empty()
    }

    /// The parent directory and the last name; `None` for the root.
    pub fn split(&self) -> Option<(NsPath, &str)> {
        let (last, parent) = self.names.split_last()?;
        Some((
            NsPath {
                names: parent.to_vec(),
            },
            last,
        ))
    }

    /// Whether `self` is `other` or inside it.
    pub fn starts_with(&self, other: &NsPath) -> bool {
        self.names.starts_with(&other.names)
    }

    /// The path relative to the root, `a/b` (empty for the root).
    pub fn relative(&self) -> String {
        self.names.join("/")
    }
}

impl std::fmt::Display for NsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}", self.names.join("/"))
    }
}

/// What a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
}

/// What a stat tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// File or directory.
    pub kind: Kind,
    /// Bytes of a file; 0 for a directory.
    pub size: u64,
    /// Last modification, when the backend keeps it.
    pub modified: Option<SystemTime>,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// The entry's name in its directory.
    pub name: String,
    /// File or directory.
    pub kind: Kind,
}

/// How [`NamespaceBackend::open`] treats a missing or existing file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenMode {
    /// Create the file when missing.
    pub create: bool,
    /// Fail when the file exists (with `create`).
    pub exclusive: bool,
    /// Empty an existing file.
    pub truncate: bool,
}

/// Why a namespace operation failed: the same on every backend.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NsError {
    /// Nothing at the path (or at one of its directories).
    #[error("no such file or directory: {0}")]
    NotFound(NsPath),
    /// Something is at the path already.
    #[error("already exists: {0}")]
    Exists(NsPath),
    /// A file where a directory was needed.
    #[error("not a directory: {0}")]
    NotADirectory(NsPath),
    /// A directory where a file was needed.
    #[error("is a directory: {0}")]
    IsADirectory(NsPath),
    /// A directory to remove or replace that has entries.
    #[error("directory not empty: {0}")]
    NotEmpty(NsPath),
    /// A path or an argument no backend accepts.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The backend could not do it (its database, its server); nothing of
    /// the operation was kept.
    #[error("the namespace's store failed: {0}")]
    Backend(String),
}

/// A peer's namespace: files and directories under one root, on a host
/// directory, in a database or in an object store.
///
/// Every operation is all or nothing: on an error, nothing it would have
/// changed is changed.
pub trait NamespaceBackend: Send + Sync + std::fmt::Debug {
    /// The backend's name in `peer.toml`: `dir`, `sqlite`, `s3`.
    fn name(&self) -> &'static str;

    /// What is at `path`.
    fn stat(&self, path: &NsPath) -> Result<Stat, NsError>;

    /// Opens the file at `path` as `mode` says; its size afterwards. The
    /// parent directory must exist.
    fn open(&self, path: &NsPath, mode: OpenMode) -> Result<u64, NsError>;

    /// Up to `len` bytes of the file at `path` from `offset` (fewer at its
    /// end, none past it).
    fn read(&self, path: &NsPath, offset: u64, len: u64) -> Result<Vec<u8>, NsError>;

    /// Writes `bytes` into the file at `path` at `offset`, zeros filling
    /// any gap past its end; its size afterwards.
    fn write(&self, path: &NsPath, offset: u64, bytes: &[u8]) -> Result<u64, NsError>;

    /// Makes the file at `path` `size` bytes long (cut, or zeros added).
    fn set_size(&self, path: &NsPath, size: u64) -> Result<(), NsError>;

    /// The entries of the directory at `path`, sorted by name.
    fn list(&self, path: &NsPath) -> Result<Vec<Entry>, NsError>;

    /// Creates the directory `path` (its parent must exist).
    fn create_dir(&self, path: &NsPath) -> Result<(), NsError>;

    /// Removes the file at `path`; the bytes it held.
    fn remove_file(&self, path: &NsPath) -> Result<u64, NsError>;

    /// Removes the empty directory at `path`.
    fn remove_dir(&self, path: &NsPath) -> Result<(), NsError>;

    /// Moves `from` to `to`: a file over an existing file replaces it, a
    /// directory over an empty directory replaces it; a directory cannot
    /// move into itself. The bytes of a replaced file.
    fn rename(&self, from: &NsPath, to: &NsPath) -> Result<u64, NsError>;

    /// Bytes of every file of the namespace.
    fn usage(&self) -> Result<u64, NsError>;

    /// Whether the store can be used (its database opened, its bucket
    /// reached); `peerhost check` asks.
    fn check(&self) -> Result<(), NsError> {
        self.stat(&NsPath::root()).map(|_| ())
    }

    /// Makes every write so far durable in the store. The host calls it
    /// when an invocation ends, before its answer: a backend may hold
    /// writes until then (the S3 one does: it puts whole objects). An
    /// error means some writes are not stored.
    fn sync(&self) -> Result<(), NsError> {
        Ok(())
    }
}

/// The end of `offset + len`, or `invalid` past `u64`.
pub(super) fn end_of(offset: u64, len: u64) -> Result<u64, NsError> {
    offset
        .checked_add(len)
        .ok_or_else(|| NsError::Invalid(format!("offset {offset} + {len} bytes")))
}

/// Checks a rename's paths: the root never moves, a directory never into
/// itself.
pub(super) fn check_rename(from: &NsPath, to: &NsPath) -> Result<(), NsError> {
    if from.is_root() || to.is_root() {
        return Err(NsError::Invalid(
            "the namespace root cannot be renamed".into(),
        ));
    }
    if to.starts_with(from) && to != from {
        return Err(NsError::Invalid(format!(
            "{from} cannot move into itself ({to})"
        )));
    }
    Ok(())
}

/// The same conformance suite for every backend.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    fn p(path: &str) -> NsPath {
        NsPath::parse(path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    const CREATE: OpenMode = OpenMode {
        create: true,
        exclusive: false,
        truncate: false,
    };

    /// Runs every case against `ns`, an empty namespace.
    pub(crate) fn run(ns: &dyn NamespaceBackend) {
        let who = ns.name();
        // The root is an empty directory.
        assert_eq!(
            ns.stat(&NsPath::root()).map(|s| s.kind),
            Ok(Kind::Directory)
        );
        assert_eq!(ns.list(&NsPath::root()), Ok(vec![]), "{who}");

        // Create, overwrite, append, read at offsets.
        assert_eq!(ns.open(&p("/a.txt"), CREATE), Ok(0), "{who}");
        assert_eq!(ns.write(&p("/a.txt"), 0, b"hello world"), Ok(11));
        assert_eq!(
            ns.read(&p("/a.txt"), 0, 100).as_deref(),
            Ok(&b"hello world"[..])
        );
        assert_eq!(ns.read(&p("/a.txt"), 6, 3).as_deref(), Ok(&b"wor"[..]));
        assert_eq!(ns.read(&p("/a.txt"), 11, 3).as_deref(), Ok(&b""[..]));
        assert_eq!(ns.read(&p("/a.txt"), 500, 3).as_deref(), Ok(&b""[..]));
        assert_eq!(
            ns.write(&p("/a.txt"), 0, b"HELLO"),
            Ok(11),
            "{who}: overwrite in place"
        );
        assert_eq!(ns.write(&p("/a.txt"), 11, b"!"), Ok(12), "{who}: append");
        assert_eq!(
            ns.read(&p("/a.txt"), 0, 100).as_deref(),
            Ok(&b"HELLO world!"[..])
        );
        let truncate = OpenMode {
            truncate: true,
            ..OpenMode::default()
        };
        assert_eq!(ns.open(&p("/a.txt"), truncate), Ok(0), "{who}: truncate");
        assert_eq!(ns.write(&p("/a.txt"), 0, b"new"), Ok(3));
        let exclusive = OpenMode {
            create: true,
            exclusive: true,
            truncate: false,
        };
        assert_eq!(
            ns.open(&p("/a.txt"), exclusive),
            Err(NsError::Exists(p("/a.txt")))
        );
        assert_eq!(
            ns.open(&p("/missing"), OpenMode::default()),
            Err(NsError::NotFound(p("/missing")))
        );

        // A gap past the end reads as zeros; set_size cuts and grows.
        assert_eq!(ns.write(&p("/a.txt"), 5, b"x"), Ok(6), "{who}: a gap");
        assert_eq!(
            ns.read(&p("/a.txt"), 0, 10).as_deref(),
            Ok(&b"new\0\0x"[..])
        );
        ns.set_size(&p("/a.txt"), 2)
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        ns.set_size(&p("/a.txt"), 4)
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(ns.read(&p("/a.txt"), 0, 10).as_deref(), Ok(&b"ne\0\0"[..]));

        // Large files, written in pieces across chunk boundaries.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        ns.open(&p("/big.bin"), CREATE)
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        for (i, piece) in big.chunks(70_001).enumerate() {
            let offset = (i * 70_001) as u64;
            ns.write(&p("/big.bin"), offset, piece)
                .unwrap_or_else(|e| panic!("{who}: {e}"));
        }
        assert_eq!(
            ns.read(&p("/big.bin"), 0, 1 << 20).as_deref(),
            Ok(&big[..]),
            "{who}"
        );
        assert_eq!(
            ns.read(&p("/big.bin"), 65_530, 20).as_deref(),
            Ok(&big[65_530..65_550]),
            "{who}: across a chunk boundary"
        );
        ns.set_size(&p("/big.bin"), 70_000)
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(ns.stat(&p("/big.bin")).map(|s| s.size), Ok(70_000));
        ns.set_size(&p("/big.bin"), 140_000)
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        let grown = ns.read(&p("/big.bin"), 0, 1 << 20).unwrap_or_default();
        assert_eq!(grown.len(), 140_000, "{who}");
        assert_eq!(&grown[..70_000], &big[..70_000], "{who}");
        assert!(
            grown[70_000..].iter().all(|&b| b == 0),
            "{who}: grown with zeros"
        );

        // Stat sizes and kinds; nested directories; list.
        assert_eq!(
            ns.stat(&p("/a.txt")).map(|s| (s.kind, s.size)),
            Ok((Kind::File, 4))
        );
        ns.create_dir(&p("/d"))
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        ns.create_dir(&p("/d/e"))
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(
            ns.create_dir(&p("/d")),
            Err(NsError::Exists(p("/d"))),
            "{who}"
        );
        assert_eq!(
            ns.create_dir(&p("/x/y")),
            Err(NsError::NotFound(p("/x/y"))),
            "{who}: parent missing"
        );
        assert_eq!(
            ns.create_dir(&p("/a.txt/y")),
            Err(NsError::NotADirectory(p("/a.txt/y"))),
            "{who}"
        );
        ns.open(&p("/d/e/f.txt"), CREATE)
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        ns.write(&p("/d/e/f.txt"), 0, b"deep")
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(ns.stat(&p("/d/e")).map(|s| s.kind), Ok(Kind::Directory));
        assert_eq!(
            ns.open(&p("/d"), OpenMode::default()),
            Err(NsError::IsADirectory(p("/d"))),
            "{who}"
        );
        assert_eq!(
            ns.read(&p("/d"), 0, 1),
            Err(NsError::IsADirectory(p("/d"))),
            "{who}"
        );
        let entry = |name: &str, kind| Entry {
            name: name.into(),
            kind,
        };
        assert_eq!(
            ns.list(&NsPath::root()),
            Ok(vec![
                entry("a.txt", Kind::File),
                entry("big.bin", Kind::File),
                entry("d", Kind::Directory),
            ]),
            "{who}"
        );
        assert_eq!(ns.list(&p("/d/e")), Ok(vec![entry("f.txt", Kind::File)]));
        assert_eq!(
            ns.list(&p("/a.txt")),
            Err(NsError::NotADirectory(p("/a.txt")))
        );

        // Remove.
        assert_eq!(
            ns.remove_dir(&p("/d")),
            Err(NsError::NotEmpty(p("/d"))),
            "{who}"
        );
        assert_eq!(
            ns.remove_file(&p("/d")),
            Err(NsError::IsADirectory(p("/d"))),
            "{who}"
        );
        assert_eq!(
            ns.remove_dir(&p("/a.txt")),
            Err(NsError::NotADirectory(p("/a.txt")))
        );
        assert_eq!(
            ns.remove_file(&p("/nope")),
            Err(NsError::NotFound(p("/nope")))
        );

        // Rename: a file over an existing file, a directory with its
        // contents, never into itself.
        ns.open(&p("/b.txt"), CREATE)
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        ns.write(&p("/b.txt"), 0, b"bee")
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(
            ns.rename(&p("/b.txt"), &p("/a.txt")),
            Ok(4),
            "{who}: over a file"
        );
        assert_eq!(ns.read(&p("/a.txt"), 0, 10).as_deref(), Ok(&b"bee"[..]));
        assert_eq!(ns.stat(&p("/b.txt")), Err(NsError::NotFound(p("/b.txt"))));
        ns.rename(&p("/d"), &p("/moved"))
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(
            ns.read(&p("/moved/e/f.txt"), 0, 10).as_deref(),
            Ok(&b"deep"[..])
        );
        assert_eq!(ns.stat(&p("/d")), Err(NsError::NotFound(p("/d"))));
        assert!(matches!(
            ns.rename(&p("/moved"), &p("/moved/e/inside")),
            Err(NsError::Invalid(_))
        ));
        assert_eq!(
            ns.rename(&p("/a.txt"), &p("/moved")),
            Err(NsError::IsADirectory(p("/moved"))),
            "{who}: a file over a directory"
        );
        assert_eq!(
            ns.rename(&p("/moved"), &p("/a.txt")),
            Err(NsError::NotADirectory(p("/a.txt"))),
            "{who}: a directory over a file"
        );
        assert_eq!(
            ns.rename(&p("/a.txt"), &p("/a.txt")),
            Ok(0),
            "{who}: onto itself"
        );
        assert_eq!(ns.usage(), Ok(3 + 140_000 + 4), "{who}");

        // Emptied and removed.
        assert_eq!(ns.remove_file(&p("/moved/e/f.txt")), Ok(4));
        ns.remove_dir(&p("/moved/e"))
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        ns.remove_dir(&p("/moved"))
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(ns.remove_file(&p("/big.bin")), Ok(140_000));
        assert_eq!(
            ns.list(&NsPath::root()),
            Ok(vec![entry("a.txt", Kind::File)])
        );
        assert_eq!(ns.usage(), Ok(3), "{who}");
        assert_eq!(ns.sync(), Ok(()), "{who}");
        assert_eq!(ns.read(&p("/a.txt"), 0, 10).as_deref(), Ok(&b"bee"[..]));
        assert_eq!(ns.usage(), Ok(3), "{who}: after sync");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_refuse_nul_dot_dot_and_over_long_names() {
        assert_eq!(
            NsPath::parse("/a//./b/").map(|p| p.relative()),
            Ok("a/b".into())
        );
        assert_eq!(NsPath::parse("/"), Ok(NsPath::root()));
        for bad in [
            "a/../b",
            "..",
            "/a\0b",
            &"x".repeat(256),
            &"a/".repeat(2049),
        ] {
            assert!(
                matches!(NsPath::parse(bad), Err(NsError::Invalid(_))),
                "{bad:?}"
            );
        }
    }
}
