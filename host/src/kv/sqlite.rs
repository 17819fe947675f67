//! The `sqlite` backend: one database per peer, `peers/<name>/kv.sqlite`,
//! beside the namespace. The default of new peers.
//!
//! One table holds the values with their revision, owner and size; two
//! more, kept by triggers in the same transactions, hold the usage of every
//! owner and of the whole store (and the last revision given), so a quota
//! check costs two indexed reads. Every write is one `BEGIN IMMEDIATE`
//! transaction; several workers may share the file (SQLite's locks, a
//! five-second busy timeout).
//!
//! The journal is a WAL. `synchronous` is `full` unless `peer.toml` says
//! `normal`: with `full` an acknowledged write survives a power cut; with
//! `normal` it survives the worker's death (`kill -9`), and only a power cut
//! may lose the last transactions.

use super::{Charge, CheckedValue, Entry, KvBackend, KvError, Page, Txn, Usage, deltas};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The database's file name in `peers/<name>/`.
pub const FILE: &str = "kv.sqlite";

/// The schema version this build writes (`PRAGMA user_version`).
const VERSION: i64 = 1;

/// Idle connections kept per peer.
const IDLE: usize = 4;

/// How long a writer waits for another worker's transaction.
const BUSY: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    revision INTEGER NOT NULL,
    owner TEXT NOT NULL,
    bytes INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS owners (
    owner TEXT PRIMARY KEY NOT NULL,
    bytes INTEGER NOT NULL,
    keys INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    bytes INTEGER NOT NULL,
    keys INTEGER NOT NULL,
    revision INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals VALUES (1, 0, 0, 0);
CREATE TRIGGER IF NOT EXISTS kv_insert AFTER INSERT ON kv BEGIN
    INSERT INTO owners VALUES (NEW.owner, NEW.bytes, 1)
        ON CONFLICT (owner) DO UPDATE SET bytes = bytes + excluded.bytes, keys = keys + 1;
    UPDATE totals SET bytes = bytes + NEW.bytes, keys = keys + 1;
END;
CREATE TRIGGER IF NOT EXISTS kv_delete AFTER DELETE ON kv BEGIN
    UPDATE owners SET bytes = bytes - OLD.bytes, keys = keys - 1 WHERE owner = OLD.owner;
    DELETE FROM owners WHERE owner = OLD.owner AND keys = 0;
    UPDATE totals SET bytes = bytes - OLD.bytes, keys = keys - 1;
END;
CREATE TRIGGER IF NOT EXISTS kv_update AFTER UPDATE ON kv BEGIN
    UPDATE owners SET bytes = bytes - OLD.bytes, keys = keys - 1 WHERE owner = OLD.owner;
    INSERT INTO owners VALUES (NEW.owner, NEW.bytes, 1)
        ON CONFLICT (owner) DO UPDATE SET bytes = bytes + excluded.bytes, keys = keys + 1;
    DELETE FROM owners WHERE owner = OLD.owner AND keys = 0;
    UPDATE totals SET bytes = bytes - OLD.bytes + NEW.bytes;
END;
";

/// How hard SQLite keeps a committed write (`[storage] synchronous`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Survives a power cut: the WAL is synced at every commit.
    #[default]
    Full,
    /// Survives the worker's death; a power cut may lose the last commits.
    Normal,
}

/// A peer's kv store in its SQLite database, opened on first use.
pub struct SqliteKv {
    path: PathBuf,
    synchronous: Synchronous,
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteKv")
            .field("synchronous", &self.synchronous)
            .finish_non_exhaustive()
    }
}

fn backend(e: rusqlite::Error) -> KvError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => KvError::Io(std::io::Error::from_raw_os_error(28)),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => KvError::Backend {
            backend: "sqlite",
            message: format!("the database stayed busy for {BUSY:?}: {e}"),
        },
        _ => KvError::Backend {
            backend: "sqlite",
            message: e.to_string(),
        },
    }
}

/// The smallest text greater than every text starting with `prefix`, if
/// there is one (none for the empty prefix): the end of a range scan.
fn upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last as u32 {
            0xD7FF => Some('\u{E000}'),
            n => char::from_u32(n + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

impl SqliteKv {
    /// A store in the database at `path`, created on first use.
    pub fn new(path: &Path, synchronous: Synchronous) -> SqliteKv {
        SqliteKv {
            path: path.to_owned(),
            synchronous,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The database's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self) -> Result<Connection, KvError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(&self.path, flags).map_err(backend)?;
        connection.busy_timeout(BUSY).map_err(backend)?;
        let mode: String = connection
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(backend)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(KvError::Backend {
                backend: "sqlite",
                message: format!("the database refused a WAL journal (it is `{mode}`)"),
            });
        }
        let synchronous = match self.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        connection
            .pragma_update(None, "synchronous", synchronous)
            .map_err(backend)?;
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(backend)?;
        if version > VERSION {
            return Err(KvError::Backend {
                backend: "sqlite",
                message: format!(
                    "the database has schema version {version}, written by a newer peerhost \
                     (this one knows {VERSION})"
                ),
            });
        }
        if version < VERSION {
            connection.execute_batch(SCHEMA).map_err(backend)?;
            connection
                .pragma_update(None, "user_version", VERSION)
                .map_err(backend)?;
        }
        Ok(connection)
    }

    /// Runs `work` on a connection of the pool (a new one when none is
    /// idle), and keeps the connection for the next.
    fn with<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut connection = match idle {
            Some(connection) => connection,
            None => self.open()?,
        };
        let result = work(&mut connection);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE {
            idle.push(connection);
        }
        result
    }
}

fn read_entry(connection: &Connection, key: &str) -> Result<Option<Entry>, KvError> {
    connection
        .prepare_cached("SELECT value, revision, owner FROM kv WHERE key = ?1")
        .and_then(|mut statement| {
            statement
                .query_row([key], |row| {
                    Ok(Entry {
                        value: row.get(0)?,
                        revision: row.get::<_, i64>(1)?.to_string(),
                        owner: row.get(2)?,
                    })
                })
                .optional()
        })
        .map_err(backend)
}

fn usage_row(
    connection: &Connection,
    sql: &str,
    key: &[&dyn rusqlite::ToSql],
) -> Result<Usage, KvError> {
    connection
        .prepare_cached(sql)
        .and_then(|mut statement| {
            statement
                .query_row(key, |row| {
                    Ok(Usage {
                        bytes: row.get::<_, i64>(0)?.max(0) as u64,
                        keys: row.get::<_, i64>(1)?.max(0) as u64,
                    })
                })
                .optional()
        })
        .map(Option::unwrap_or_default)
        .map_err(backend)
}

const TOTAL: &str = "SELECT bytes, keys FROM totals WHERE id = 1";
const OWNER: &str = "SELECT bytes, keys FROM owners WHERE owner = ?1";

struct SqliteTxn<'a> {
    transaction: &'a rusqlite::Transaction<'a>,
    charge: &'a Charge<'a>,
}

impl Txn for SqliteTxn<'_> {
    fn get(&mut self, key: &str) -> Result<Option<Entry>, KvError> {
        read_entry(self.transaction, key)
    }

    fn put(&mut self, value: &CheckedValue<'_>) -> Result<String, KvError> {
        let t = self.transaction;
        let key = value.key();
        let owner = self.charge.owner;
        let old: Option<(String, i64)> = t
            .prepare_cached("SELECT owner, bytes FROM kv WHERE key = ?1")
            .and_then(|mut s| {
                s.query_row([key], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()
            })
            .map_err(backend)?;
        let (delta, own) = deltas(
            owner,
            key,
            old.as_ref().map(|(o, b)| (o.as_str(), (*b).max(0) as u64)),
            Some(value.value()),
        );
        let total = usage_row(t, TOTAL, &[])?;
        let mine = usage_row(t, OWNER, &[&owner])?;
        self.charge.check(total, delta, mine, own)?;
        let revision: i64 = t
            .prepare_cached(
                "UPDATE totals SET revision = revision + 1 WHERE id = 1 RETURNING revision",
            )
            .and_then(|mut s| s.query_row([], |row| row.get(0)))
            .map_err(backend)?;
        let bytes = (key.len() + value.bytes()) as i64;
        t.prepare_cached(
            "INSERT INTO kv (key, value, revision, owner, bytes) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, revision = excluded.revision,
                 owner = excluded.owner, bytes = excluded.bytes",
        )
        .and_then(|mut s| s.execute(params![key, value.value(), revision, owner, bytes]))
        .map_err(backend)?;
        Ok(revision.to_string())
    }

    fn delete(&mut self, key: &str) -> Result<bool, KvError> {
        let removed = self
            .transaction
            .prepare_cached("DELETE FROM kv WHERE key = ?1")
            .and_then(|mut s| s.execute([key]))
            .map_err(backend)?;
        Ok(removed > 0)
    }
}

impl KvBackend for SqliteKv {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    /// Opens the database and reads its schema: a file that is not a
    /// database, or one of a newer version, is refused here.
    /// Opens the database and reads its totals, on a connection of its own
    /// that is closed after (a worker checking thousands of stores at start
    /// keeps no file, cache or memory of theirs open). A database not
    /// created yet is fine: it is created on first use.
    fn check(&self) -> Result<(), KvError> {
        if !self.path.exists() {
            return Ok(());
        }
        let connection = self.open()?;
        usage_row(&connection, TOTAL, &[])?;
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        super::check_key(key)?;
        self.with(|connection| read_entry(connection, key))
    }

    fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        _deadline: Instant,
    ) -> Result<Page, KvError> {
        let start = match after {
            Some(after) if after >= prefix => after,
            _ => prefix,
        };
        let strictly = after.is_some_and(|after| after >= prefix);
        let end = upper_bound(prefix);
        let sql = match (strictly, end.is_some()) {
            (false, false) => "SELECT key FROM kv WHERE key >= ?1 ORDER BY key LIMIT ?2",
            (true, false) => "SELECT key FROM kv WHERE key > ?1 ORDER BY key LIMIT ?2",
            (false, true) => {
                "SELECT key FROM kv WHERE key >= ?1 AND key < ?3 ORDER BY key LIMIT ?2"
            }
            (true, true) => "SELECT key FROM kv WHERE key > ?1 AND key < ?3 ORDER BY key LIMIT ?2",
        };
        let fetch = (limit + 1) as i64;
        let keys: Vec<String> = self.with(|connection| {
            connection
                .prepare_cached(sql)
                .and_then(|mut statement| {
                    let key = |row: &rusqlite::Row<'_>| row.get::<_, String>(0);
                    match &end {
                        Some(end) => statement
                            .query_map(params![start, fetch, end], key)?
                            .collect(),
                        None => statement.query_map(params![start, fetch], key)?.collect(),
                    }
                })
                .map_err(backend)
        })?;
        Ok(Page::of(keys, limit))
    }

    fn usage(&self, owner: Option<&str>) -> Result<Usage, KvError> {
        self.with(|connection| match owner {
            Some(owner) => usage_row(connection, OWNER, &[&owner]),
            None => usage_row(connection, TOTAL, &[]),
        })
    }

    fn owners(&self) -> Result<Vec<(String, Usage)>, KvError> {
        self.with(|connection| {
            connection
                .prepare_cached("SELECT owner, bytes, keys FROM owners ORDER BY bytes DESC, owner")
                .and_then(|mut statement| {
                    statement
                        .query_map([], |row| {
                            Ok((
                                row.get(0)?,
                                Usage {
                                    bytes: row.get::<_, i64>(1)?.max(0) as u64,
                                    keys: row.get::<_, i64>(2)?.max(0) as u64,
                                },
                            ))
                        })?
                        .collect()
                })
                .map_err(backend)
        })
    }

    fn transact(
        &self,
        charge: &Charge<'_>,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<(), KvError>,
    ) -> Result<(), KvError> {
        self.with(|connection| {
            let transaction = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            body(&mut SqliteTxn {
                transaction: &transaction,
                charge,
            })?;
            // Dropped without a commit, the transaction rolls back.
            transaction.commit().map_err(backend)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_creates_nothing_keeps_no_connection_and_refuses_a_non_database() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.path().join(FILE);
        let kv = SqliteKv::new(&path, Synchronous::Full);
        assert!(kv.check().is_ok());
        assert!(!path.exists(), "a check does not create the database");
        let value = crate::kv::CheckedValue::new("k", "1").unwrap_or_else(|e| panic!("{e}"));
        crate::kv::set(&kv, &crate::kv::Charge::unlimited("bob"), &value)
            .unwrap_or_else(|e| panic!("{e}"));
        let fresh = SqliteKv::new(&path, Synchronous::Full);
        assert!(fresh.check().is_ok());
        assert!(
            fresh
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty(),
            "the check's connection is closed"
        );
        std::fs::write(
            &path,
            b"not a database at all, but long enough to be read as one",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_file(tmp.path().join(format!("{FILE}-wal")));
        let _ = std::fs::remove_file(tmp.path().join(format!("{FILE}-shm")));
        assert!(SqliteKv::new(&path, Synchronous::Full).check().is_err());
    }

    #[test]
    fn the_upper_bound_of_a_prefix_is_above_every_key_with_it() {
        assert_eq!(upper_bound(""), None);
        assert_eq!(upper_bound("inbox/").as_deref(), Some("inbox0"));
        assert_eq!(upper_bound("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        let end = upper_bound("ab").unwrap_or_default();
        for key in ["ab", "ab\u{10FFFF}", "abzzz"] {
            assert!(key < end.as_str());
        }
        assert!("ac" >= end.as_str());
    }
}
