//! The namespace in a SQLite database (the peer's `kv.sqlite`, beside the
//! kv tables): directories and files are rows of `ns_nodes` (an id, the
//! parent's id, a name), a file's bytes are rows of `ns_chunks` of
//! [`CHUNK`] bytes each. A renamed file or directory changes one row; a
//! missing chunk, or the part of a chunk short of the file's size, reads as
//! zeros. Every operation is one transaction (a deferred one when it only
//! reads).

use super::backend::{
    Entry, Kind, NamespaceBackend, NsError, NsPath, OpenMode, Stat, check_rename, end_of,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bytes of one chunk of a file.
pub const CHUNK: u64 = 64 * 1024;

/// How long a statement waits for another connection's write.
const BUSY: Duration = Duration::from_secs(5);

const ROOT: i64 = 1;
const FILE: i64 = 0;
const DIRECTORY: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ns_nodes (
    id INTEGER PRIMARY KEY,
    parent INTEGER NOT NULL,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    modified INTEGER NOT NULL,
    UNIQUE (parent, name)
);
CREATE TABLE IF NOT EXISTS ns_chunks (
    node INTEGER NOT NULL,
    n INTEGER NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (node, n)
) WITHOUT ROWID;
INSERT OR IGNORE INTO ns_nodes (id, parent, name, kind, size, modified)
    VALUES (1, 0, '', 1, 0, 0);
";

/// A namespace in a SQLite database.
#[derive(Debug)]
pub struct SqliteNamespace {
    path: PathBuf,
    /// Opened at the first operation: a peer that never touches its files
    /// costs no connection.
    connection: Mutex<Option<Connection>>,
}

/// One row of `ns_nodes`.
#[derive(Clone, Copy)]
struct Node {
    id: i64,
    kind: Kind,
    size: u64,
    modified: i64,
}

fn backend(e: rusqlite::Error) -> NsError {
    NsError::Backend(e.to_string())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn kind_of(kind: i64) -> Kind {
    if kind == DIRECTORY {
        Kind::Directory
    } else {
        Kind::File
    }
}

/// A byte count as SQLite stores it.
fn int(n: u64) -> Result<i64, NsError> {
    i64::try_from(n).map_err(|_| NsError::Invalid(format!("{n} is too large")))
}

impl SqliteNamespace {
    /// The namespace in the database at `path`, created at the first
    /// operation when missing.
    pub fn new(path: &Path) -> SqliteNamespace {
        SqliteNamespace {
            path: path.to_owned(),
            connection: Mutex::new(None),
        }
    }

    fn connect(path: &Path) -> Result<Connection, NsError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(path, flags).map_err(backend)?;
        connection.busy_timeout(BUSY).map_err(backend)?;
        let mode: String = connection
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(backend)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(NsError::Backend(format!(
                "the database refused a WAL journal (it is `{mode}`)"
            )));
        }
        connection.execute_batch(SCHEMA).map_err(backend)?;
        Ok(connection)
    }

    /// The database's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` in one immediate transaction, committed when it succeeds.
    fn with<T>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, NsError>,
    ) -> Result<T, NsError> {
        self.run(rusqlite::TransactionBehavior::Immediate, work)
    }

    /// Runs `work`, which only reads, in one deferred transaction: a
    /// snapshot, without the write lock.
    fn reading<T>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, NsError>,
    ) -> Result<T, NsError> {
        self.run(rusqlite::TransactionBehavior::Deferred, work)
    }

    fn run<T>(
        &self,
        behavior: rusqlite::TransactionBehavior,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, NsError>,
    ) -> Result<T, NsError> {
        let mut connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let connection = match &mut *connection {
            Some(connection) => connection,
            None => connection.insert(SqliteNamespace::connect(&self.path)?),
        };
        let tx = connection
            .transaction_with_behavior(behavior)
            .map_err(backend)?;
        let value = work(&tx)?;
        tx.commit().map_err(backend)?;
        Ok(value)
    }
}

/// The child `name` of directory `parent`.
fn child(tx: &Transaction<'_>, parent: i64, name: &str) -> Result<Option<Node>, NsError> {
    tx.prepare_cached(
        "SELECT id, kind, size, modified FROM ns_nodes WHERE parent = ?1 AND name = ?2",
    )
    .and_then(|mut statement| {
        statement
            .query_row(params![parent, name], |row| {
                Ok(Node {
                    id: row.get(0)?,
                    kind: kind_of(row.get(1)?),
                    size: row.get::<_, i64>(2)?.try_into().unwrap_or(0),
                    modified: row.get(3)?,
                })
            })
            .optional()
    })
    .map_err(backend)
}

/// The node at `path`.
fn node(tx: &Transaction<'_>, path: &NsPath) -> Result<Node, NsError> {
    let mut at = Node {
        id: ROOT,
        kind: Kind::Directory,
        size: 0,
        modified: 0,
    };
    for name in path.names() {
        if at.kind != Kind::Directory {
            return Err(NsError::NotADirectory(path.clone()));
        }
        at = child(tx, at.id, name)?.ok_or_else(|| NsError::NotFound(path.clone()))?;
    }
    Ok(at)
}

/// The directory `path` is in, its last name, and what is there now.
fn place<'p>(
    tx: &Transaction<'_>,
    path: &'p NsPath,
) -> Result<(i64, &'p str, Option<Node>), NsError> {
    let Some((parent, name)) = path.split() else {
        return Err(NsError::IsADirectory(path.clone()));
    };
    let dir = node(tx, &parent).map_err(|e| match e {
        NsError::NotFound(_) => NsError::NotFound(path.clone()),
        NsError::NotADirectory(_) => NsError::NotADirectory(path.clone()),
        e => e,
    })?;
    if dir.kind != Kind::Directory {
        return Err(NsError::NotADirectory(path.clone()));
    }
    Ok((dir.id, name, child(tx, dir.id, name)?))
}

/// The file at `path`.
fn file(tx: &Transaction<'_>, path: &NsPath) -> Result<Node, NsError> {
    let node = node(tx, path)?;
    if node.kind == Kind::Directory {
        return Err(NsError::IsADirectory(path.clone()));
    }
    Ok(node)
}

fn set_size_of(tx: &Transaction<'_>, node: i64, size: u64) -> Result<(), NsError> {
    tx.prepare_cached("UPDATE ns_nodes SET size = ?2, modified = ?3 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![node, int(size).unwrap_or(i64::MAX), now_ms()]))
        .map_err(backend)?;
    Ok(())
}

fn delete_node(tx: &Transaction<'_>, node: i64) -> Result<(), NsError> {
    tx.execute("DELETE FROM ns_chunks WHERE node = ?1", [node])
        .and_then(|_| tx.execute("DELETE FROM ns_nodes WHERE id = ?1", [node]))
        .map_err(backend)?;
    Ok(())
}

fn has_children(tx: &Transaction<'_>, node: i64) -> Result<bool, NsError> {
    tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM ns_nodes WHERE parent = ?1)",
        [node],
        |row| row.get(0),
    )
    .map_err(backend)
}

impl NamespaceBackend for SqliteNamespace {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn stat(&self, path: &NsPath) -> Result<Stat, NsError> {
        self.reading(|tx| {
            let node = node(tx, path)?;
            Ok(Stat {
                kind: node.kind,
                size: node.size,
                modified: u64::try_from(node.modified)
                    .ok()
                    .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
            })
        })
    }

    fn open(&self, path: &NsPath, mode: OpenMode) -> Result<u64, NsError> {
        self.with(|tx| match place(tx, path)? {
            (_, _, Some(node)) if node.kind == Kind::Directory => {
                Err(NsError::IsADirectory(path.clone()))
            }
            (_, _, Some(_)) if mode.create && mode.exclusive => Err(NsError::Exists(path.clone())),
            (_, _, Some(node)) if mode.truncate => {
                tx.execute("DELETE FROM ns_chunks WHERE node = ?1", [node.id])
                    .map_err(backend)?;
                set_size_of(tx, node.id, 0)?;
                Ok(0)
            }
            (_, _, Some(node)) => Ok(node.size),
            (_, _, None) if !mode.create => Err(NsError::NotFound(path.clone())),
            (parent, name, None) => {
                tx.execute(
                    "INSERT INTO ns_nodes (parent, name, kind, size, modified) VALUES (?1, ?2, ?3, 0, ?4)",
                    params![parent, name, FILE, now_ms()],
                )
                .map_err(backend)?;
                Ok(0)
            }
        })
    }

    fn read(&self, path: &NsPath, offset: u64, len: u64) -> Result<Vec<u8>, NsError> {
        self.reading(|tx| {
            let node = file(tx, path)?;
            let end = end_of(offset, len)?.min(node.size);
            if offset >= end {
                return Ok(Vec::new());
            }
            let mut bytes = vec![0u8; usize::try_from(end - offset).unwrap_or(0)];
            let mut statement = tx
                .prepare_cached(
                    "SELECT n, bytes FROM ns_chunks WHERE node = ?1 AND n BETWEEN ?2 AND ?3",
                )
                .map_err(backend)?;
            let rows = statement
                .query_map(
                    params![node.id, int(offset / CHUNK)?, int((end - 1) / CHUNK)?],
                    |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?)),
                )
                .map_err(backend)?;
            for row in rows {
                let (n, chunk) = row.map_err(backend)?;
                let start = u64::try_from(n).unwrap_or(0) * CHUNK;
                // The part of this chunk inside [offset, end).
                let from = offset.max(start);
                let to = end.min(start + chunk.len() as u64);
                if from < to {
                    let src = (from - start) as usize..(to - start) as usize;
                    let dst = (from - offset) as usize;
                    bytes[dst..dst + src.len()].copy_from_slice(&chunk[src]);
                }
            }
            Ok(bytes)
        })
    }

    fn write(&self, path: &NsPath, offset: u64, bytes: &[u8]) -> Result<u64, NsError> {
        let end = end_of(offset, bytes.len() as u64)?;
        int(end)?;
        self.with(|tx| {
            let node = file(tx, path)?;
            let mut at = offset;
            while at < end {
                let n = at / CHUNK;
                let start = n * CHUNK;
                let upto = end.min(start + CHUNK);
                let mut chunk: Vec<u8> = tx
                    .prepare_cached("SELECT bytes FROM ns_chunks WHERE node = ?1 AND n = ?2")
                    .and_then(|mut s| {
                        s.query_row(params![node.id, int(n).unwrap_or(0)], |row| row.get(0))
                            .optional()
                    })
                    .map_err(backend)?
                    .unwrap_or_default();
                let within = (upto - start) as usize;
                if chunk.len() < within {
                    chunk.resize(within, 0);
                }
                let src = (at - offset) as usize..(upto - offset) as usize;
                chunk[(at - start) as usize..within].copy_from_slice(&bytes[src]);
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO ns_chunks (node, n, bytes) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| s.execute(params![node.id, int(n).unwrap_or(0), chunk]))
                .map_err(backend)?;
                at = upto;
            }
            let size = node.size.max(end);
            set_size_of(tx, node.id, size)?;
            Ok(size)
        })
    }

    fn set_size(&self, path: &NsPath, size: u64) -> Result<(), NsError> {
        int(size)?;
        self.with(|tx| {
            let node = file(tx, path)?;
            if size < node.size {
                // Chunks wholly past the end go; the last one is cut.
                let kept = size.div_ceil(CHUNK);
                tx.execute(
                    "DELETE FROM ns_chunks WHERE node = ?1 AND n >= ?2",
                    params![node.id, int(kept)?],
                )
                .map_err(backend)?;
                if !size.is_multiple_of(CHUNK) {
                    tx.execute(
                        "UPDATE ns_chunks SET bytes = substr(bytes, 1, ?3) WHERE node = ?1 AND n = ?2",
                        params![node.id, int(size / CHUNK)?, int(size % CHUNK)?],
                    )
                    .map_err(backend)?;
                }
            }
            set_size_of(tx, node.id, size)
        })
    }

    fn list(&self, path: &NsPath) -> Result<Vec<Entry>, NsError> {
        self.reading(|tx| {
            let dir = node(tx, path)?;
            if dir.kind != Kind::Directory {
                return Err(NsError::NotADirectory(path.clone()));
            }
            let mut statement = tx
                .prepare_cached("SELECT name, kind FROM ns_nodes WHERE parent = ?1 ORDER BY name")
                .map_err(backend)?;
            let rows = statement
                .query_map([dir.id], |row| {
                    Ok(Entry {
                        name: row.get(0)?,
                        kind: kind_of(row.get(1)?),
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
    }

    fn create_dir(&self, path: &NsPath) -> Result<(), NsError> {
        if path.is_root() {
            return Err(NsError::Exists(path.clone()));
        }
        self.with(|tx| match place(tx, path)? {
            (_, _, Some(_)) => Err(NsError::Exists(path.clone())),
            (parent, name, None) => {
                tx.execute(
                    "INSERT INTO ns_nodes (parent, name, kind, size, modified) VALUES (?1, ?2, ?3, 0, ?4)",
                    params![parent, name, DIRECTORY, now_ms()],
                )
                .map_err(backend)?;
                Ok(())
            }
        })
    }

    fn remove_file(&self, path: &NsPath) -> Result<u64, NsError> {
        self.with(|tx| {
            let node = file(tx, path)?;
            delete_node(tx, node.id)?;
            Ok(node.size)
        })
    }

    fn remove_dir(&self, path: &NsPath) -> Result<(), NsError> {
        if path.is_root() {
            return Err(NsError::Invalid(
                "the namespace root cannot be removed".into(),
            ));
        }
        self.with(|tx| {
            let dir = node(tx, path)?;
            if dir.kind != Kind::Directory {
                return Err(NsError::NotADirectory(path.clone()));
            }
            if has_children(tx, dir.id)? {
                return Err(NsError::NotEmpty(path.clone()));
            }
            delete_node(tx, dir.id)
        })
    }

    fn rename(&self, from: &NsPath, to: &NsPath) -> Result<u64, NsError> {
        check_rename(from, to)?;
        self.with(|tx| {
            let source = node(tx, from)?;
            let (parent, name, target) = place(tx, to)?;
            let replaced = match target {
                Some(_) if from == to => return Ok(0),
                Some(t) => match (source.kind, t.kind) {
                    (Kind::File, Kind::Directory) => {
                        return Err(NsError::IsADirectory(to.clone()));
                    }
                    (Kind::Directory, Kind::File) => {
                        return Err(NsError::NotADirectory(to.clone()));
                    }
                    (Kind::Directory, Kind::Directory) if has_children(tx, t.id)? => {
                        return Err(NsError::NotEmpty(to.clone()));
                    }
                    _ => {
                        delete_node(tx, t.id)?;
                        t.size
                    }
                },
                None => 0,
            };
            tx.execute(
                "UPDATE ns_nodes SET parent = ?2, name = ?3 WHERE id = ?1",
                params![source.id, parent, name],
            )
            .map_err(backend)?;
            Ok(replaced)
        })
    }

    fn usage(&self) -> Result<u64, NsError> {
        self.reading(|tx| {
            tx.query_row(
                "SELECT COALESCE(SUM(size), 0) FROM ns_nodes WHERE kind = ?1",
                [FILE],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(backend)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqlite_namespace_passes_the_conformance_suite() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ns = SqliteNamespace::new(&tmp.path().join("kv.sqlite"));
        super::super::backend::conformance::run(&ns);
    }

    #[test]
    fn the_sqlite_namespace_lives_beside_the_kv_tables_and_survives_a_reopen() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db = tmp.path().join("kv.sqlite");
        let kv = crate::kv::sqlite::SqliteKv::new(&db, crate::kv::sqlite::Synchronous::Full);
        let value = crate::kv::CheckedValue::new("k", "1").unwrap_or_else(|e| panic!("{e}"));
        crate::kv::set(&kv, &crate::kv::Charge::unlimited("bob"), &value)
            .unwrap_or_else(|e| panic!("{e}"));
        let path = NsPath::parse("/notes/a.txt").unwrap_or_else(|e| panic!("{e}"));
        {
            let ns = SqliteNamespace::new(&db);
            let dir = NsPath::parse("/notes").unwrap_or_else(|e| panic!("{e}"));
            ns.create_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
            ns.open(
                &path,
                OpenMode {
                    create: true,
                    ..OpenMode::default()
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
            ns.write(&path, 0, b"kept")
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let ns = SqliteNamespace::new(&db);
        assert_eq!(ns.read(&path, 0, 10).as_deref(), Ok(&b"kept"[..]));
        use crate::kv::KvBackend as _;
        assert!(kv.get("k").is_ok_and(|e| e.is_some()), "the kv data stays");
        let connection = Connection::open(&db).unwrap_or_else(|e| panic!("{e}"));
        let mut statement = connection
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .unwrap_or_else(|e| panic!("{e}"));
        let tables: Vec<String> = statement
            .query_map([], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{e}"))
            .flatten()
            .collect();
        assert!(tables.iter().any(|t| t == "ns_nodes"), "{tables:?}");
        assert!(tables.len() > 2, "the kv tables are there too: {tables:?}");
    }
}
