//! The records of a peer's declared collections (see
//! [`crate::collections`]), in SQLite: `peers/<name>/records.sqlite`, one
//! table per collection, a column and an index per declared index.
//!
//! Every write is checked against the declaration first: a record that
//! breaks a rule is refused and nothing is written. Each record has a
//! revision, 1 at insert and one more at every update; an update may name
//! the revision it read, and is refused when the record has moved on
//! (compare-and-swap).
//!
//! This is the storage under the `db::*` capability to come; the
//! capability, its policy decisions per record, and the HTTP and CLI
//! access are not built yet.

use crate::collections::{Collection, Collections, FieldType, Key, RecordError};
use rusqlite::{Connection, OptionalExtension, params_from_iter};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The records' database, in the peer's directory.
pub const FILE: &str = "records.sqlite";

/// Most records one query returns.
pub const MAX_LIMIT: u64 = 1_000;

/// How long a write waits for another writer of the database.
const BUSY: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a records operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// No such collection is declared.
    #[error("no collection `{0}` is declared (collections.toml)")]
    NoCollection(String),
    /// The record breaks a rule of its declaration: nothing was written.
    #[error("{0}")]
    Invalid(#[from] RecordError),
    /// A record with that key exists already.
    #[error("{collection}: a record with key `{key}` exists already")]
    Exists {
        /// The collection.
        collection: String,
        /// The key.
        key: String,
    },
    /// The record is not there.
    #[error("{collection}: no record with key `{key}`")]
    NotFound {
        /// The collection.
        collection: String,
        /// The key.
        key: String,
    },
    /// The record moved on since the revision the update names.
    #[error("{collection}: `{key}` is at revision {current}, not {expected}")]
    Conflict {
        /// The collection.
        collection: String,
        /// The key.
        key: String,
        /// The revision the update names.
        expected: u64,
        /// The record's revision now.
        current: u64,
    },
    /// A query the declaration does not support.
    #[error("{0}")]
    Query(String),
    /// The database failed.
    #[error("the records database {path}: {message}")]
    Storage {
        /// The database file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// One record as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    /// Its key.
    pub key: String,
    /// Its revision.
    pub revision: u64,
    /// The record.
    pub record: Value,
}

/// What a query asks: equalities on indexed fields, an order on one, a
/// page size and where the last page ended.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// `field = value`, each field an index of the collection.
    pub filter: Vec<(String, Value)>,
    /// An index to order by, and whether descending; by key otherwise.
    pub order: Option<(String, bool)>,
    /// Most records (1 to [`MAX_LIMIT`]; [`MAX_LIMIT`] when 0).
    pub limit: u64,
    /// The cursor of the page before, if any.
    pub cursor: Option<String>,
}

/// One page of a query's records.
#[derive(Clone, Debug)]
pub struct Page {
    /// The records, in order.
    pub records: Vec<Stored>,
    /// The cursor of the next page, when there may be one.
    pub cursor: Option<String>,
}

/// A peer's records.
pub struct Records {
    path: PathBuf,
    connection: std::sync::Mutex<Connection>,
    collections: std::sync::Arc<Collections>,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn table(collection: &str) -> String {
    // Names are checked by the declaration: letters, digits, `_`.
    format!("\"c_{collection}\"")
}

fn column(field: &str) -> String {
    format!("\"i_{field}\"")
}

impl Records {
    /// Opens (creating) the records database in `peer_dir` for
    /// `collections`, with a table and its indexes for each.
    pub fn open(
        peer_dir: &Path,
        collections: std::sync::Arc<Collections>,
    ) -> Result<Records, RecordsError> {
        let path = peer_dir.join(FILE);
        let failed = |e: rusqlite::Error| RecordsError::Storage {
            path: path.clone(),
            message: e.to_string(),
        };
        let connection = Connection::open(&path).map_err(failed)?;
        connection.busy_timeout(BUSY).map_err(failed)?;
        connection
            .query_row("PRAGMA journal_mode = WAL", [], |row| {
                row.get::<_, String>(0)
            })
            .map_err(failed)?;
        for collection in collections.by_name.values() {
            let mut columns = vec![
                "key TEXT PRIMARY KEY".to_owned(),
                "revision INTEGER NOT NULL".to_owned(),
                "record TEXT NOT NULL".to_owned(),
            ];
            columns.extend(collection.indexes.iter().map(|index| column(index)));
            // Index columns hold any scalar (the declaration types them).
            connection
                .execute_batch(&format!(
                    "CREATE TABLE IF NOT EXISTS {} ({}) WITHOUT ROWID;",
                    table(&collection.name),
                    columns.join(", ")
                ))
                .map_err(failed)?;
            for index in &collection.indexes {
                connection
                    .execute_batch(&format!(
                        "CREATE INDEX IF NOT EXISTS \"x_{}_{index}\" ON {} ({}, key);",
                        collection.name,
                        table(&collection.name),
                        column(index)
                    ))
                    .map_err(failed)?;
            }
        }
        Ok(Records {
            path,
            connection: std::sync::Mutex::new(connection),
            collections,
        })
    }

    fn collection(&self, name: &str) -> Result<&Collection, RecordsError> {
        self.collections
            .by_name
            .get(name)
            .ok_or_else(|| RecordsError::NoCollection(name.to_owned()))
    }

    fn storage(&self, e: rusqlite::Error) -> RecordsError {
        RecordsError::Storage {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, RecordsError>,
    ) -> Result<T, RecordsError> {
        let mut connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut connection)
    }

    /// Inserts `record` into `collection`: checked, keyed (its key field,
    /// or a new random key), at revision 1.
    pub fn insert(&self, collection: &str, record: &Value) -> Result<Stored, RecordsError> {
        let declared = self.collection(collection)?;
        declared.check(record)?;
        let key = match &declared.key {
            Key::Field(field) => key_text(&record[field]),
            Key::Generated => {
                let mut bytes = [0u8; 12];
                getrandom::fill(&mut bytes).map_err(|e| RecordsError::Storage {
                    path: self.path.clone(),
                    message: format!("no randomness for a key: {e}"),
                })?;
                hex::encode(bytes)
            }
        };
        let mut values: Vec<rusqlite::types::Value> =
            vec![key.clone().into(), 1i64.into(), record.to_string().into()];
        values.extend(index_values(declared, record));
        let placeholders = vec!["?"; values.len()].join(", ");
        let mut columns = vec!["key".to_owned(), "revision".to_owned(), "record".to_owned()];
        columns.extend(declared.indexes.iter().map(|i| column(i)));
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({placeholders})",
            table(collection),
            columns.join(", ")
        );
        self.with(
            |connection| match connection.execute(&sql, params_from_iter(values)) {
                Ok(_) => Ok(()),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(RecordsError::Exists {
                        collection: collection.to_owned(),
                        key: key.clone(),
                    })
                }
                Err(e) => Err(self.storage(e)),
            },
        )?;
        Ok(Stored {
            key,
            revision: 1,
            record: record.clone(),
        })
    }

    /// The record of `collection` with `key`, if there is one.
    pub fn get(&self, collection: &str, key: &str) -> Result<Option<Stored>, RecordsError> {
        self.collection(collection)?;
        self.with(|connection| self.read(connection, collection, key))
    }

    /// The record of `collection` with `key` as `connection` (or a
    /// transaction of it) sees it.
    fn read(
        &self,
        connection: &Connection,
        collection: &str,
        key: &str,
    ) -> Result<Option<Stored>, RecordsError> {
        let sql = format!(
            "SELECT revision, record FROM {} WHERE key = ?1",
            table(collection)
        );
        let row = connection
            .query_row(&sql, [key], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })
            .optional()
            .map_err(|e| self.storage(e))?;
        row.map(|(revision, text)| self.stored(key.to_owned(), revision, &text))
            .transpose()
    }

    fn stored(&self, key: String, revision: i64, text: &str) -> Result<Stored, RecordsError> {
        let record = serde_json::from_str(text).map_err(|e| RecordsError::Storage {
            path: self.path.clone(),
            message: format!("record `{key}` is not JSON: {e}"),
        })?;
        Ok(Stored {
            key,
            revision: u64::try_from(revision).unwrap_or(0),
            record,
        })
    }

    /// Changes the fields of `changes` (a `null` removes one) in the record
    /// of `collection` with `key`, when it is still at `revision` if one
    /// is named; the whole new record is checked, and its key field may
    /// not change.
    pub fn update(
        &self,
        collection: &str,
        key: &str,
        changes: &Map<String, Value>,
        revision: Option<u64>,
    ) -> Result<Stored, RecordsError> {
        let declared = self.collection(collection)?;
        self.with(|connection| {
            let transaction = connection.transaction().map_err(|e| self.storage(e))?;
            let Some(Stored {
                revision: current,
                mut record,
                ..
            }) = self.read(&transaction, collection, key)?
            else {
                return Err(RecordsError::NotFound {
                    collection: collection.to_owned(),
                    key: key.to_owned(),
                });
            };
            if let Some(expected) = revision
                && expected != current
            {
                return Err(RecordsError::Conflict {
                    collection: collection.to_owned(),
                    key: key.to_owned(),
                    expected,
                    current,
                });
            }
            if let Some(object) = record.as_object_mut() {
                for (field, value) in changes {
                    if value.is_null() {
                        object.remove(field);
                    } else {
                        object.insert(field.clone(), value.clone());
                    }
                }
            }
            declared.check(&record)?;
            if let Key::Field(field) = &declared.key
                && key_text(&record[field]) != key
            {
                return Err(RecordsError::Invalid(RecordError {
                    collection: collection.to_owned(),
                    field: field.clone(),
                    rule: "is the record's key and cannot change".to_owned(),
                }));
            }
            let next = current + 1;
            let mut values: Vec<rusqlite::types::Value> = vec![
                i64::try_from(next).unwrap_or(i64::MAX).into(),
                record.to_string().into(),
            ];
            values.extend(index_values(declared, &record));
            values.push(key.to_owned().into());
            let mut set = vec!["revision = ?".to_owned(), "record = ?".to_owned()];
            set.extend(
                declared
                    .indexes
                    .iter()
                    .map(|i| format!("{} = ?", column(i))),
            );
            transaction
                .execute(
                    &format!(
                        "UPDATE {} SET {} WHERE key = ?",
                        table(collection),
                        set.join(", ")
                    ),
                    params_from_iter(values),
                )
                .map_err(|e| self.storage(e))?;
            transaction.commit().map_err(|e| self.storage(e))?;
            Ok(Stored {
                key: key.to_owned(),
                revision: next,
                record,
            })
        })
    }

    /// Removes the record of `collection` with `key`; whether it was there.
    pub fn delete(&self, collection: &str, key: &str) -> Result<bool, RecordsError> {
        self.collection(collection)?;
        let sql = format!("DELETE FROM {} WHERE key = ?1", table(collection));
        self.with(|connection| {
            connection
                .execute(&sql, [key])
                .map(|n| n > 0)
                .map_err(|e| self.storage(e))
        })
    }

    /// The records of `collection` that `query` selects, a page at a time.
    pub fn query(&self, collection: &str, query: &Query) -> Result<Page, RecordsError> {
        let declared = self.collection(collection)?;
        let indexed = |field: &str| {
            if declared.indexes.iter().any(|i| i == field) {
                Ok(())
            } else {
                Err(RecordsError::Query(format!(
                    "{collection}: `{field}` is not an index (indexes: {})",
                    declared.indexes.join(", ")
                )))
            }
        };
        let mut conditions = Vec::new();
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        for (field, value) in &query.filter {
            indexed(field)?;
            if let Some(field_type) = declared.fields.get(field) {
                check_scalar(collection, field, &field_type.kind, value)?;
            }
            conditions.push(format!("{} = ?", column(field)));
            values.push(sql_value(value));
        }
        let order = match &query.order {
            Some((field, descending)) => {
                indexed(field)?;
                let direction = if *descending { "DESC" } else { "ASC" };
                format!("{} {direction}, key {direction}", column(field))
            }
            None => "key ASC".to_owned(),
        };
        let limit = match query.limit {
            0 => MAX_LIMIT,
            n if n > MAX_LIMIT => {
                return Err(RecordsError::Query(format!(
                    "`limit` = {n} is over {MAX_LIMIT}"
                )));
            }
            n => n,
        };
        let offset: u64 = match &query.cursor {
            None => 0,
            Some(cursor) => cursor.parse().map_err(|_| {
                RecordsError::Query(format!("`cursor` {cursor:?} is not one this host gave"))
            })?,
        };
        let sql = format!(
            "SELECT key, revision, record FROM {}{} ORDER BY {order} LIMIT {} OFFSET {offset}",
            table(collection),
            if conditions.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", conditions.join(" AND "))
            },
            limit + 1
        );
        let rows: Vec<(String, i64, String)> = self.with(|connection| {
            let mut statement = connection.prepare(&sql).map_err(|e| self.storage(e))?;
            let rows = statement
                .query_map(params_from_iter(values), |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .map_err(|e| self.storage(e))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.storage(e))
        })?;
        let more = rows.len() as u64 > limit;
        let records = rows
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|(key, revision, text)| self.stored(key, revision, &text))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            cursor: more.then(|| (offset + limit).to_string()),
            records,
        })
    }
}

/// A query's value for `field` must be one the field could hold.
fn check_scalar(
    collection: &str,
    field: &str,
    kind: &FieldType,
    value: &Value,
) -> Result<(), RecordsError> {
    let fits = match kind {
        FieldType::String { .. } | FieldType::Timestamp | FieldType::Peer | FieldType::Enum(_) => {
            value.is_string()
        }
        FieldType::Int { .. } => value.is_i64(),
        FieldType::Float { .. } => value.is_number(),
        FieldType::Bool => value.is_boolean(),
        FieldType::Array { .. } | FieldType::Object(_) => false,
    };
    if fits {
        Ok(())
    } else {
        Err(RecordsError::Query(format!(
            "{collection}: `{field}` is a {}, and {value} is not one",
            kind.describe()
        )))
    }
}

/// The index columns' values of `record`, in the order of the indexes.
fn index_values<'a>(
    declared: &'a Collection,
    record: &'a Value,
) -> impl Iterator<Item = rusqlite::types::Value> + 'a {
    declared
        .indexes
        .iter()
        .map(|index| sql_value(&record[index]))
}

/// A key field's value as the key.
fn key_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A scalar JSON value as SQLite stores it in an index column.
fn sql_value(value: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as Sql;
    match value {
        Value::Null => Sql::Null,
        Value::Bool(b) => Sql::Integer(i64::from(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Sql::Integer(i),
            None => Sql::Real(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(text) => Sql::Text(text.clone()),
        other => Sql::Text(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POSTS: &str = r#"
[posts]
key = "slug"
indexes = ["author", "published", "score"]

[posts.fields]
slug = { type = "string", pattern = "^[a-z0-9-]+$", required = true }
title = { type = "string", max_length = 20, required = true }
author = { type = "string", required = true }
published = { type = "bool" }
score = { type = "int", min = 0, max = 100 }

[notes.fields]
text = { type = "string", required = true }
"#;

    fn records(dir: &Path) -> Records {
        let collections = Collections::parse(Path::new("collections.toml"), POSTS)
            .unwrap_or_else(|e| panic!("{e}"));
        Records::open(dir, std::sync::Arc::new(collections)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn fields_of(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    fn post(slug: &str, author: &str, published: bool, score: i64) -> Value {
        json!({"slug": slug, "title": slug, "author": author, "published": published, "score": score})
    }

    #[test]
    fn a_record_is_inserted_read_updated_by_revision_and_deleted() {
        let dir = tempfile::tempdir().expect("dir");
        let records = records(dir.path());
        let stored = records
            .insert("posts", &post("hello", "alice", false, 1))
            .expect("insert");
        assert_eq!((stored.key.as_str(), stored.revision), ("hello", 1));
        assert!(matches!(
            records.insert("posts", &post("hello", "bob", true, 2)),
            Err(RecordsError::Exists { .. })
        ));
        let changes = fields_of(json!({"published": true}));
        let updated = records
            .update("posts", "hello", &changes, Some(1))
            .expect("update");
        assert_eq!(updated.revision, 2);
        assert!(matches!(
            records.update("posts", "hello", &changes, Some(1)),
            Err(RecordsError::Conflict {
                expected: 1,
                current: 2,
                ..
            })
        ));
        let got = records.get("posts", "hello").expect("get").expect("there");
        assert_eq!(got.record["published"], true);
        assert_eq!(got.revision, 2);
        // Reopened, the record is there.
        drop(records);
        let records = self::records(dir.path());
        assert!(records.get("posts", "hello").expect("get").is_some());
        assert!(records.delete("posts", "hello").expect("delete"));
        assert!(!records.delete("posts", "hello").expect("delete"));
        assert!(records.get("posts", "hello").expect("get").is_none());
        // A generated key.
        let note = records
            .insert("notes", &json!({"text": "hi"}))
            .expect("note");
        assert_eq!(note.key.len(), 24);
    }

    #[test]
    fn a_record_that_breaks_a_rule_writes_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let records = records(dir.path());
        let error = records
            .insert("posts", &post("Bad Slug", "alice", false, 1))
            .expect_err("bad slug");
        assert!(
            error
                .to_string()
                .contains("`slug` does not match the pattern"),
            "{error}"
        );
        assert!(records.get("posts", "Bad Slug").expect("get").is_none());
        records
            .insert("posts", &post("good", "alice", false, 1))
            .expect("insert");
        let changes = fields_of(json!({"score": 500}));
        let error = records
            .update("posts", "good", &changes, None)
            .expect_err("out of range");
        assert!(
            error
                .to_string()
                .contains("`score` = 500 is outside 0..=100"),
            "{error}"
        );
        let kept = records.get("posts", "good").expect("get").expect("there");
        assert_eq!((kept.revision, &kept.record["score"]), (1, &json!(1)));
        let changes = fields_of(json!({"slug": "other"}));
        let error = records
            .update("posts", "good", &changes, None)
            .expect_err("key change");
        assert!(error.to_string().contains("cannot change"), "{error}");
        assert!(matches!(
            records.insert("comments", &json!({})),
            Err(RecordsError::NoCollection(_))
        ));
    }

    #[test]
    fn a_query_selects_on_indexes_orders_and_pages() {
        let dir = tempfile::tempdir().expect("dir");
        let records = records(dir.path());
        for i in 0..25 {
            let author = if i % 2 == 0 { "alice" } else { "bob" };
            records
                .insert("posts", &post(&format!("p-{i:02}"), author, i % 5 == 0, i))
                .expect("insert");
        }
        let query = Query {
            filter: vec![("author".into(), json!("alice"))],
            order: Some(("score".into(), true)),
            limit: 5,
            cursor: None,
        };
        let first = records.query("posts", &query).expect("query");
        let scores: Vec<i64> = first
            .records
            .iter()
            .map(|r| r.record["score"].as_i64().unwrap_or(-1))
            .collect();
        assert_eq!(scores, [24, 22, 20, 18, 16]);
        let mut seen = first.records.len();
        let mut cursor = first.cursor;
        while let Some(next) = cursor {
            let page = records
                .query(
                    "posts",
                    &Query {
                        cursor: Some(next),
                        ..query.clone()
                    },
                )
                .expect("page");
            assert!(page.records.iter().all(|r| r.record["author"] == "alice"));
            seen += page.records.len();
            cursor = page.cursor;
        }
        assert_eq!(seen, 13, "alice wrote the even ones");
        let published = records
            .query(
                "posts",
                &Query {
                    filter: vec![
                        ("published".into(), json!(true)),
                        ("author".into(), json!("bob")),
                    ],
                    ..Query::default()
                },
            )
            .expect("query");
        let keys: Vec<&str> = published.records.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["p-05", "p-15"]);
        for bad in [
            Query {
                filter: vec![("title".into(), json!("x"))],
                ..Query::default()
            },
            Query {
                filter: vec![("score".into(), json!("high"))],
                ..Query::default()
            },
            Query {
                limit: 5000,
                ..Query::default()
            },
            Query {
                cursor: Some("later".into()),
                ..Query::default()
            },
        ] {
            assert!(
                matches!(records.query("posts", &bad), Err(RecordsError::Query(_))),
                "{bad:?}"
            );
        }
    }
}
