//! The kv store behind `peerhost:peer/kv`: the [`KvBackend`] trait every
//! storage backend implements, the checks every backend shares (keys,
//! values, quotas), and the operations built on a backend's transactions.
//!
//! Backends, one module each, chosen per peer by `[storage] kv` in
//! `peer.toml`:
//! - [`sqlite`]: one database per peer, `peers/<name>/kv.sqlite` (WAL);
//!   the default of new peers;
//! - [`fs`]: one file per key in `peers/<name>/kv/`, the layout of earlier
//!   deployments;
//! - [`s3`]: objects in an S3 bucket, for state several workers share.
//!
//! Neither lies under the namespace (`data/`), so no path the guest can name
//! through WASI leads there: the only way to the data is this capability and
//! its `kv.*` actions.
//!
//! Every value carries a revision, an opaque text that changes on every
//! write of its key and is never given twice by one store; and an owner,
//! the caller who wrote it last, who pays for its bytes (see [`Charge`]).
//! Every write goes through [`KvBackend::transact`]: its reads and writes
//! happen as one, or not at all, and no other writer comes between them.

pub mod fs;
pub mod migrate;
pub mod s3;
pub mod sqlite;

pub use fs::FsKv;
pub use sqlite::SqliteKv;

use crate::bindings::GuestError;
use std::io;
use std::time::Instant;

/// Longest key, in bytes: its encoded file name stays under 255 bytes.
pub const MAX_KEY: usize = 80;

/// How many directory entries a listing reads between looks at the clock.
pub const DEADLINE_EVERY: usize = 1024;

/// Largest value, in bytes of JSON text.
pub const MAX_VALUE: usize = 1 << 20;

/// Most keys one page of a listing holds, and one `*_many` call names.
pub const MAX_PAGE: usize = 1_000;

/// Most keys one `get_many`, `set_many` or `delete_many` names.
pub const MAX_BATCH: usize = 100;

/// Deepest nesting of arrays and objects in a value: what the guest's
/// reader accepts (`kv::get` parses with serde_json, which stops at 128),
/// so that no writer stores a value its readers cannot read back.
pub const MAX_DEPTH: usize = peerhost_rhai_guest::limits::JSON_DEPTH;

/// One stored value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The JSON text.
    pub value: String,
    /// Changes on every write of the key (see [`set_if`]).
    pub revision: String,
    /// Who wrote it last, and pays for it.
    pub owner: String,
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Keys in byte order.
    pub keys: Vec<String>,
    /// Where the next page starts (the last key of this one), when there
    /// may be more.
    pub cursor: Option<String>,
}

impl Page {
    /// The first `limit` of `keys` (sorted, at most `limit + 1` needed), with
    /// a cursor when there were more.
    pub fn of(mut keys: Vec<String>, limit: usize) -> Page {
        let more = keys.len() > limit;
        keys.truncate(limit);
        let cursor = if more { keys.last().cloned() } else { None };
        Page { keys, cursor }
    }
}

/// Bytes (key and value) and keys stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Bytes of keys and values.
    pub bytes: u64,
    /// Keys.
    pub keys: u64,
}

/// Storage figures from `[quotas]`; an absent figure is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvQuota {
    /// `kv_bytes`: bytes of keys and values.
    pub bytes: Option<u64>,
    /// `kv_keys`: keys.
    pub keys: Option<u64>,
}

/// Usage by owner and the next revision, as the fs and s3 backends keep
/// them beside their values (SQLite keeps them in tables).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Ledger {
    pub(crate) next_revision: u64,
    pub(crate) total: Usage,
    pub(crate) owners: std::collections::BTreeMap<String, Usage>,
}

impl Ledger {
    /// Admits `value` over `old` for `charge` (its quotas checked against
    /// this ledger) and counts it: the counts made, (owner, bytes, added),
    /// for a backend that applies them again to a fresher ledger.
    pub(crate) fn put(
        &mut self,
        charge: &Charge<'_>,
        old: Option<&Entry>,
        value: &CheckedValue<'_>,
    ) -> Result<Vec<(String, u64, bool)>, KvError> {
        let key = value.key();
        let owner = charge.owner;
        let old = old.map(|e| (e.owner.as_str(), (key.len() + e.value.len()) as u64));
        let (delta, own) = deltas(owner, key, old, Some(value.value()));
        charge.check(self.total, delta, self.owner(owner), own)?;
        let mut counts = Vec::with_capacity(2);
        if let Some((old_owner, bytes)) = old {
            counts.push((old_owner.to_owned(), bytes, false));
        }
        counts.push((owner.to_owned(), (key.len() + value.bytes()) as u64, true));
        for (owner, bytes, add) in &counts {
            self.count(owner, *bytes, *add);
        }
        Ok(counts)
    }

    /// Every owner's usage, largest first.
    pub(crate) fn into_owners(self) -> Vec<(String, Usage)> {
        let mut owners: Vec<_> = self.owners.into_iter().collect();
        owners.sort_by(|a, b| b.1.bytes.cmp(&a.1.bytes).then_with(|| a.0.cmp(&b.0)));
        owners
    }

    /// What `owner` stores (none: the whole store).
    pub(crate) fn usage(&self, owner: Option<&str>) -> Usage {
        match owner {
            Some(owner) => self.owner(owner),
            None => self.total,
        }
    }

    pub(crate) fn owner(&self, owner: &str) -> Usage {
        self.owners.get(owner).copied().unwrap_or_default()
    }

    /// Counts `bytes` of one key for `owner` (`add`), or stops counting them.
    pub(crate) fn count(&mut self, owner: &str, bytes: u64, add: bool) {
        let change = |usage: &mut Usage| {
            if add {
                usage.bytes = usage.bytes.saturating_add(bytes);
                usage.keys = usage.keys.saturating_add(1);
            } else {
                usage.bytes = usage.bytes.saturating_sub(bytes);
                usage.keys = usage.keys.saturating_sub(1);
            }
        };
        change(&mut self.total);
        let entry = self.owners.entry(owner.to_owned()).or_default();
        change(entry);
        if *entry == Usage::default() {
            self.owners.remove(owner);
        }
    }
}

/// Who pays for the writes of one transaction, and what may be stored.
#[derive(Clone, Copy, Debug)]
pub struct Charge<'a> {
    /// The owner of what is written: the caller's principal, or
    /// [`crate::quota::STRANGERS`] for every stranger.
    pub owner: &'a str,
    /// The peer's figures, for all its data.
    pub peer: KvQuota,
    /// The owner's figures.
    pub owner_quota: KvQuota,
}

impl Charge<'_> {
    /// A charge with no quota, for the host's own writes (the demo's seed,
    /// a migration).
    pub fn unlimited(owner: &str) -> Charge<'_> {
        Charge {
            owner,
            peer: KvQuota::default(),
            owner_quota: KvQuota::default(),
        }
    }

    /// Refuses a write that takes the peer from `peer` to `peer + delta`
    /// and the owner from `owner` to `owner + owner_delta` past a figure.
    /// A write that stores less than before is never refused.
    pub fn check(
        &self,
        peer: Usage,
        delta: Delta,
        owner: Usage,
        owner_delta: Delta,
    ) -> Result<(), KvError> {
        let over = |scope: &str, quota: KvQuota, usage: Usage, delta: Delta| {
            let check = |figure: &'static str, limit: Option<u64>, now: u64, by: i64| {
                let after = now.saturating_add_signed(by);
                match limit {
                    Some(limit) if by > 0 && after > limit => Err(KvError::Quota {
                        figure,
                        scope: scope.to_owned(),
                        limit,
                        now,
                        after,
                    }),
                    _ => Ok(()),
                }
            };
            check("kv_bytes", quota.bytes, usage.bytes, delta.bytes)?;
            check("kv_keys", quota.keys, usage.keys, delta.keys)
        };
        over("the peer", self.peer, peer, delta)?;
        over(
            &format!("caller `{}`", self.owner),
            self.owner_quota,
            owner,
            owner_delta,
        )
    }
}

/// A change of [`Usage`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Bytes added (negative: freed).
    pub bytes: i64,
    /// Keys added (negative: removed).
    pub keys: i64,
}

/// What writing `new` over `old` changes: for the peer, and for `owner`.
pub fn deltas(
    owner: &str,
    key: &str,
    old: Option<(&str, u64)>,
    new: Option<&str>,
) -> (Delta, Delta) {
    let new_bytes = new.map(|value| (key.len() + value.len()) as i64);
    let old_bytes = old.map(|(_, bytes)| bytes as i64);
    let peer = Delta {
        bytes: new_bytes.unwrap_or(0) - old_bytes.unwrap_or(0),
        keys: i64::from(new.is_some()) - i64::from(old.is_some()),
    };
    // The owner pays for what it now owns; what another owned before stops
    // counting for that one (see the backend's accounting).
    let mine = old.filter(|(o, _)| *o == owner).map(|(_, b)| b as i64);
    let own = Delta {
        bytes: new_bytes.unwrap_or(0) - mine.unwrap_or(0),
        keys: i64::from(new.is_some()) - i64::from(mine.is_some()),
    };
    (peer, own)
}

/// What a peer's kv store offers, whatever keeps it. Keys are checked
/// ([`check_key`]) and values checked once into a [`CheckedValue`] before
/// any backend sees them.
pub trait KvBackend: Send + Sync + std::fmt::Debug {
    /// The backend's name in `peer.toml` (`sqlite`, `fs`, `s3`).
    fn name(&self) -> &'static str;

    /// Opens the store, or says why it cannot be (a corrupt database, an
    /// unreachable endpoint): what `serve` checks before it serves.
    fn check(&self) -> Result<(), KvError>;

    /// The entry under `key`, if any.
    fn get(&self, key: &str) -> Result<Option<Entry>, KvError>;

    /// The entries under `keys`, in their order; a backend whose reads are
    /// round trips answers them concurrently.
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, KvError> {
        keys.iter().map(|key| self.get(key)).collect()
    }

    /// Up to `limit` keys starting with `prefix`, after `after` if given,
    /// in byte order; refused once `deadline` passes.
    fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        deadline: Instant,
    ) -> Result<Page, KvError>;

    /// What `owner` stores here, or the whole store's usage for `None`.
    fn usage(&self, owner: Option<&str>) -> Result<Usage, KvError>;

    /// Every owner's usage, largest first.
    fn owners(&self) -> Result<Vec<(String, Usage)>, KvError>;

    /// Runs `body` as one transaction charged to `charge`: what it reads is
    /// what no other writer changes before it ends, and its writes happen
    /// all or none (none when `body` or a write fails). A backend may run
    /// `body` again after a conflict.
    fn transact(
        &self,
        charge: &Charge<'_>,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<(), KvError>,
    ) -> Result<(), KvError>;
}

/// The reads and writes of one [`KvBackend::transact`].
pub trait Txn {
    /// The entry under `key`, with this transaction's own writes.
    fn get(&mut self, key: &str) -> Result<Option<Entry>, KvError>;
    /// Stores `value`, owned by the charge's owner, within its quotas;
    /// returns its new revision.
    fn put(&mut self, value: &CheckedValue<'_>) -> Result<String, KvError>;
    /// Removes `key`; whether it was there.
    fn delete(&mut self, key: &str) -> Result<bool, KvError>;
    /// Reads `keys` ahead of the `get`s, `put`s and `delete`s that follow
    /// (a backend whose reads are round trips makes them concurrently).
    fn prefetch(&mut self, _keys: &[&str]) -> Result<(), KvError> {
        Ok(())
    }
}

/// Why a kv operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The key is not one a store keeps.
    #[error(
        "invalid key {key:?}: keys are 1 to {MAX_KEY} bytes of text without NUL or control \
         characters, and no `..` segment"
    )]
    BadKey {
        /// The key, cut.
        key: String,
    },
    /// The value is larger than [`MAX_VALUE`].
    #[error("value of {size} bytes under {key:?} exceeds the {MAX_VALUE}-byte limit")]
    TooLarge {
        /// The key.
        key: String,
        /// The value's size.
        size: usize,
    },
    /// The value is not JSON.
    #[error("value under {key:?} is not JSON: {reason}")]
    NotJson {
        /// The key.
        key: String,
        /// The parser's words.
        reason: String,
    },
    /// The value is nested deeper than readers read.
    #[error(
        "value under {key:?} is nested more than {MAX_DEPTH} arrays or objects deep: \
         readers stop there, so it could not be read back"
    )]
    TooDeep {
        /// The key.
        key: String,
    },
    /// `increment` of a value that is not an integer, or past `i64`.
    #[error("cannot increment {key:?}: {reason}")]
    NotCounter {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Too many keys in one call.
    #[error("{count} keys in one call; the limit is {limit}")]
    TooMany {
        /// Keys named.
        count: usize,
        /// The bound.
        limit: usize,
    },
    /// A page of no keys asked for.
    #[error("a page of 0 keys: give 1 to {MAX_PAGE}")]
    EmptyPage,
    /// A write past a storage quota.
    #[error("{figure} quota of {scope}: {limit}; stored {now}, this write would make it {after}")]
    Quota {
        /// `kv_bytes` or `kv_keys`.
        figure: &'static str,
        /// `the peer`, or the caller.
        scope: String,
        /// The figure.
        limit: u64,
        /// Stored before the write.
        now: u64,
        /// Stored after it.
        after: u64,
    },
    /// `list` of more keys than one answer holds.
    #[error(
        "more than {MAX_PAGE} keys start with {prefix:?}: list them a page at a time \
         (kv::list_page)"
    )]
    ListTooLong {
        /// The prefix listed.
        prefix: String,
    },
    /// A listing ran into the invocation's deadline.
    #[error("kv list of {prefix:?} ran past the invocation's deadline after {seen} entries")]
    Deadline {
        /// The prefix listed.
        prefix: String,
        /// Directory entries read before the deadline.
        seen: usize,
    },
    /// Stored data this version cannot read.
    #[error("kv storage holds a bad record under {key:?}: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The storage failed.
    #[error("kv storage: {0}")]
    Io(#[from] io::Error),
    /// The backend failed (a database, an object store).
    #[error("kv storage ({backend}): {message}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// Its words.
        message: String,
    },
}

impl From<KvError> for GuestError {
    fn from(e: KvError) -> GuestError {
        match e {
            KvError::BadKey { .. }
            | KvError::NotJson { .. }
            | KvError::TooDeep { .. }
            | KvError::NotCounter { .. }
            | KvError::TooMany { .. }
            | KvError::EmptyPage => GuestError::Invalid(e.to_string()),
            KvError::TooLarge { .. }
            | KvError::Deadline { .. }
            | KvError::Quota { .. }
            | KvError::ListTooLong { .. } => GuestError::Limit(e.to_string()),
            KvError::Io(ref io) if io.raw_os_error() == Some(28) => {
                GuestError::Limit(format!("{e} (the disk is full)"))
            }
            KvError::Io(_) | KvError::Corrupt { .. } | KvError::Backend { .. } => {
                GuestError::Failed(e.to_string())
            }
        }
    }
}

/// The fs backend's directory in `peers/<name>/`, beside `data/`.
pub const KV_DIR: &str = "kv";

/// The kv store of the peer `name` in `peer_dir`, as its `[storage]` says;
/// opened on first use (see [`KvBackend::check`]). For `fs`, creates
/// `kv/`, and moves a store an earlier version left in `data/.kv/` there.
///
/// # Ambient Authority
/// The store opens `peer_dir/kv` (fs) or `peer_dir/kv.sqlite` by host path.
pub fn open(
    peer_dir: &std::path::Path,
    name: &str,
    storage: &crate::config::Storage,
) -> Result<Box<dyn KvBackend>, crate::config::DeploymentError> {
    use crate::config::{Backend, DeploymentError};
    Ok(match storage.kv {
        Backend::Fs => {
            let dir = peer_dir.join(KV_DIR);
            let old = peer_dir.join("data").join(".kv");
            if old.is_dir() && !dir.exists() {
                std::fs::rename(&old, &dir).map_err(|e| {
                    DeploymentError::file(&old, format!("cannot move the kv store to kv/: {e}"))
                })?;
            }
            std::fs::create_dir_all(&dir).map_err(|e| {
                DeploymentError::file(&dir, format!("cannot create directory: {e}"))
            })?;
            Box::new(FsKv::new(
                move || cap_std::fs::Dir::open_ambient_dir(&dir, cap_std::ambient_authority()),
                name,
            ))
        }
        Backend::Sqlite => Box::new(SqliteKv::new(
            &peer_dir.join(sqlite::FILE),
            storage.synchronous,
        )),
        Backend::S3 => match &storage.s3 {
            Some(config) => Box::new(s3::S3Kv::new(config, name, peer_dir)),
            None => {
                return Err(DeploymentError::file(
                    &peer_dir.join("peer.toml"),
                    "`kv = \"s3\"` needs `[storage.s3]` with at least `bucket`",
                ));
            }
        },
    })
}

/// Refuses a key no store keeps: empty, longer than [`MAX_KEY`] bytes,
/// with NUL or another control character, or with a `..` segment. The
/// same rules on every backend.
pub fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty()
        || key.len() > MAX_KEY
        || key.chars().any(char::is_control)
        || key.split('/').any(|segment| segment == "..")
    {
        let mut shown = key.to_owned();
        crate::error::truncate_with_ellipsis(&mut shown, 2 * MAX_KEY);
        return Err(KvError::BadKey { key: shown });
    }
    Ok(())
}

/// Refuses a listing prefix no key could start with (longer than a key,
/// or with NUL or control characters); the empty prefix lists everything.
pub fn check_prefix(prefix: &str) -> Result<(), KvError> {
    if prefix.is_empty() {
        return Ok(());
    }
    if prefix.len() > MAX_KEY || prefix.chars().any(char::is_control) {
        return Err(KvError::BadKey {
            key: prefix.chars().take(MAX_KEY).collect(),
        });
    }
    Ok(())
}

fn check_count(count: usize, limit: usize) -> Result<(), KvError> {
    if count > limit {
        return Err(KvError::TooMany { count, limit });
    }
    Ok(())
}

/// Whether `key` holds a value.
pub fn exists(kv: &dyn KvBackend, key: &str) -> Result<bool, KvError> {
    check_key(key)?;
    Ok(kv.get(key)?.is_some())
}

/// The values under `keys`, in their order (at most [`MAX_BATCH`]).
pub fn get_many(kv: &dyn KvBackend, keys: &[String]) -> Result<Vec<Option<String>>, KvError> {
    check_count(keys.len(), MAX_BATCH)?;
    for key in keys {
        check_key(key)?;
    }
    Ok(kv
        .get_many(keys)?
        .into_iter()
        .map(|entry| entry.map(|entry| entry.value))
        .collect())
}

/// Stores `value` under its key; returns the new revision.
pub fn set(
    kv: &dyn KvBackend,
    charge: &Charge<'_>,
    value: &CheckedValue<'_>,
) -> Result<String, KvError> {
    let mut revision = String::new();
    kv.transact(charge, &mut |txn| {
        revision = txn.put(value)?;
        Ok(())
    })?;
    Ok(revision)
}

/// Stores `value` only if its key's revision is still `expected` (`None`:
/// only if the key is absent). The new revision, or `None` when the key
/// had changed and nothing was written.
pub fn set_if(
    kv: &dyn KvBackend,
    charge: &Charge<'_>,
    value: &CheckedValue<'_>,
    expected: Option<&str>,
) -> Result<Option<String>, KvError> {
    let mut written = None;
    kv.transact(charge, &mut |txn| {
        let current = txn.get(value.key())?;
        written = None;
        if current.as_ref().map(|entry| entry.revision.as_str()) == expected {
            written = Some(txn.put(value)?);
        }
        Ok(())
    })?;
    Ok(written)
}

/// Stores every value, all or none (at most [`MAX_BATCH`]).
pub fn set_many(
    kv: &dyn KvBackend,
    charge: &Charge<'_>,
    values: &[CheckedValue<'_>],
) -> Result<(), KvError> {
    check_count(values.len(), MAX_BATCH)?;
    let keys: Vec<&str> = values.iter().map(|value| value.key()).collect();
    kv.transact(charge, &mut |txn| {
        txn.prefetch(&keys)?;
        for value in values {
            txn.put(value)?;
        }
        Ok(())
    })
}

/// Removes `key`; whether it was there.
pub fn delete(kv: &dyn KvBackend, charge: &Charge<'_>, key: &str) -> Result<bool, KvError> {
    check_key(key)?;
    let mut existed = false;
    kv.transact(charge, &mut |txn| {
        existed = txn.delete(key)?;
        Ok(())
    })?;
    Ok(existed)
}

/// Removes every key, all or none (at most [`MAX_BATCH`]); how many were there.
pub fn delete_many(
    kv: &dyn KvBackend,
    charge: &Charge<'_>,
    keys: &[String],
) -> Result<u32, KvError> {
    check_count(keys.len(), MAX_BATCH)?;
    for key in keys {
        check_key(key)?;
    }
    let mut removed = 0;
    let names: Vec<&str> = keys.iter().map(String::as_str).collect();
    kv.transact(charge, &mut |txn| {
        txn.prefetch(&names)?;
        removed = 0;
        for key in keys {
            removed += u32::from(txn.delete(key)?);
        }
        Ok(())
    })?;
    Ok(removed)
}

/// Adds `by` to the integer under `key` (absent: 0) and returns the sum;
/// two increments never lose one.
pub fn increment(
    kv: &dyn KvBackend,
    charge: &Charge<'_>,
    key: &str,
    by: i64,
) -> Result<i64, KvError> {
    check_key(key)?;
    let mut sum = 0;
    kv.transact(charge, &mut |txn| {
        let now = match txn.get(key)? {
            None => 0,
            Some(entry) => match serde_json::from_str::<serde_json::Value>(&entry.value) {
                Ok(serde_json::Value::Number(n)) if n.is_i64() => n.as_i64().unwrap_or_default(),
                _ => {
                    return Err(KvError::NotCounter {
                        key: key.to_owned(),
                        reason: "its value is not an integer".to_owned(),
                    });
                }
            },
        };
        sum = now.checked_add(by).ok_or_else(|| KvError::NotCounter {
            key: key.to_owned(),
            reason: format!("{now} + {by} overflows a 64-bit integer"),
        })?;
        let text = sum.to_string();
        txn.put(&CheckedValue::new(key, &text)?)?;
        Ok(())
    })?;
    Ok(sum)
}

/// One page of the keys starting with `prefix`, after `cursor` (at most
/// `limit`, itself 1 to [`MAX_PAGE`]).
pub fn list_page(
    kv: &dyn KvBackend,
    prefix: &str,
    cursor: Option<&str>,
    limit: usize,
    deadline: Instant,
) -> Result<Page, KvError> {
    check_prefix(prefix)?;
    if let Some(cursor) = cursor {
        check_key(cursor)?;
    }
    if limit == 0 {
        return Err(KvError::EmptyPage);
    }
    check_count(limit, MAX_PAGE)?;
    kv.list(prefix, cursor, limit, deadline)
}

/// Every key starting with `prefix`, when there are at most [`MAX_PAGE`];
/// more is `limit`, pointing to [`list_page`].
pub fn list_all(
    kv: &dyn KvBackend,
    prefix: &str,
    deadline: Instant,
) -> Result<Vec<String>, KvError> {
    let page = list_page(kv, prefix, None, MAX_PAGE, deadline)?;
    if let Some(cursor) = &page.cursor
        && !kv.list(prefix, Some(cursor), 1, deadline)?.keys.is_empty()
    {
        return Err(KvError::ListTooLong {
            prefix: prefix.to_owned(),
        });
    }
    Ok(page.keys)
}
/// Whether the JSON text `json` nests arrays and objects more than `max`
/// deep. One pass over the bytes, skipping strings; `json` is valid JSON.
fn deeper_than(json: &str, max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in json.as_bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A value that passed every check of a write: a good key, at most
/// [`MAX_VALUE`] bytes, JSON, at most [`MAX_DEPTH`] deep. The readers'
/// limits, checked once, before anything is charged or written.
#[derive(Debug)]
pub struct CheckedValue<'a> {
    key: &'a str,
    value: &'a str,
}

impl<'a> CheckedValue<'a> {
    /// Checks `value` for `key`.
    pub fn new(key: &'a str, value: &'a str) -> Result<CheckedValue<'a>, KvError> {
        check_key(key)?;
        if value.len() > MAX_VALUE {
            return Err(KvError::TooLarge {
                key: key.to_owned(),
                size: value.len(),
            });
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(value) {
            return Err(KvError::NotJson {
                key: key.to_owned(),
                reason: e.to_string(),
            });
        }
        // `IgnoredAny` skips a value at any depth; readers do not.
        if deeper_than(value, MAX_DEPTH) {
            return Err(KvError::TooDeep {
                key: key.to_owned(),
            });
        }
        Ok(CheckedValue { key, value })
    }

    /// Its size, in bytes.
    pub fn bytes(&self) -> usize {
        self.value.len()
    }

    /// Its key.
    pub fn key(&self) -> &'a str {
        self.key
    }

    /// The JSON text.
    pub fn value(&self) -> &'a str {
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// One store of each backend, in `tmp`.
    fn backends(tmp: &std::path::Path) -> Vec<Box<dyn KvBackend>> {
        let dir = tmp.join("kv");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        vec![
            Box::new(FsKv::new(
                move || Dir::open_ambient_dir(&dir, cap_std::ambient_authority()),
                "bob",
            )),
            Box::new(SqliteKv::new(
                &tmp.join(sqlite::FILE),
                sqlite::Synchronous::Normal,
            )),
        ]
    }

    use cap_std::fs::Dir;

    use crate::moto::{self, Moto};

    fn s3(moto: &Moto, tmp: &std::path::Path) -> Box<dyn KvBackend> {
        let credentials = tmp.join("s3.toml");
        std::fs::write(&credentials, moto::CREDENTIALS).unwrap_or_else(|e| panic!("{e}"));
        let config = s3::S3Config {
            bucket: moto::BUCKET.to_owned(),
            prefix: Some(format!(
                "t/{}",
                tmp.file_name().and_then(|n| n.to_str()).unwrap_or("x")
            )),
            endpoint: Some(moto.endpoint.clone()),
            region: None,
            credentials: Some("s3.toml".into()),
        };
        Box::new(s3::S3Kv::new(&config, "bob", tmp))
    }

    /// The same suite on S3 (moto on loopback): every operation, paging,
    /// quotas and concurrent writers.
    #[test]
    fn the_s3_backend_keeps_the_same_operations() {
        let Some(moto) = Moto::start() else { return };
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let kv = s3(&moto, tmp.path());
        ok(kv.check());
        operations(kv.as_ref());
        let kv: std::sync::Arc<dyn KvBackend> = std::sync::Arc::from(kv);
        concurrent(kv);
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        quotas(s3(&moto, tmp.path()).as_ref());
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        pages(s3(&moto, tmp.path()).as_ref());
        // An endpoint nobody answers: a typed failure, not a panic.
        let config = s3::S3Config {
            bucket: "peerhost-test".to_owned(),
            prefix: None,
            endpoint: Some("http://127.0.0.1:9".to_owned()),
            region: None,
            credentials: Some("s3.toml".into()),
        };
        std::fs::write(
            tmp.path().join("s3.toml"),
            "access_key_id = \"a\"\nsecret_access_key = \"b\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let down = s3::S3Kv::new(&config, "bob", tmp.path());
        assert!(matches!(
            down.check(),
            Err(KvError::Backend { backend: "s3", .. })
        ));
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    fn ok<T>(result: Result<T, KvError>) -> T {
        result.unwrap_or_else(|e| panic!("{e}"))
    }

    fn value<'a>(key: &'a str, text: &'a str) -> CheckedValue<'a> {
        ok(CheckedValue::new(key, text))
    }

    #[test]
    fn every_backend_keeps_the_same_operations() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for kv in backends(tmp.path()) {
            operations(kv.as_ref());
        }
    }

    fn operations(kv: &dyn KvBackend) {
        let name = kv.name();
        let alice = Charge::unlimited("alice");
        assert!(!ok(exists(kv, "a")), "{name}");
        let first = ok(set(kv, &alice, &value("a", "1")));
        assert!(ok(exists(kv, "a")), "{name}");
        let entry = ok(kv.get("a")).unwrap_or_else(|| panic!("{name}: a is gone"));
        assert_eq!(
            (entry.value.as_str(), entry.revision.as_str()),
            ("1", first.as_str())
        );
        assert_eq!(entry.owner, "alice");

        // Compare-and-swap: the revision read, then a stale one, then absent.
        let second = ok(set_if(kv, &alice, &value("a", "2"), Some(&first)));
        let second = second.unwrap_or_else(|| panic!("{name}: set_if with the revision read"));
        assert_ne!(first, second, "{name}");
        assert_eq!(
            ok(set_if(kv, &alice, &value("a", "3"), Some(&first))),
            None,
            "{name}"
        );
        assert_eq!(
            ok(set_if(kv, &alice, &value("a", "3"), None)),
            None,
            "{name}"
        );
        assert!(
            ok(set_if(kv, &alice, &value("new", "0"), None)).is_some(),
            "{name}"
        );
        assert_eq!(
            ok(kv.get("a")).map(|e| e.value).as_deref(),
            Some("2"),
            "{name}"
        );
        // A key deleted and written again never gets an old revision back.
        assert!(ok(delete(kv, &alice, "a")), "{name}");
        assert!(!ok(delete(kv, &alice, "a")), "{name}");
        let third = ok(set(kv, &alice, &value("a", "1")));
        assert!(third != first && third != second, "{name}");

        // Many at once.
        let values = [
            value("m/1", "1"),
            value("m/2", "\"two\""),
            value("m/3", "[3]"),
        ];
        ok(set_many(kv, &alice, &values));
        let keys: Vec<String> = ["m/1", "m/9", "m/3"].map(String::from).to_vec();
        assert_eq!(
            ok(get_many(kv, &keys)),
            [Some("1".to_owned()), None, Some("[3]".to_owned())],
            "{name}"
        );
        assert_eq!(ok(delete_many(kv, &alice, &keys)), 2, "{name}");
        assert_eq!(ok(list_all(kv, "m/", later())), ["m/2"], "{name}");

        // Counters.
        assert_eq!(ok(increment(kv, &alice, "n", 5)), 5, "{name}");
        assert_eq!(ok(increment(kv, &alice, "n", -7)), -2, "{name}");
        assert!(matches!(
            increment(kv, &alice, "m/2", 1),
            Err(KvError::NotCounter { .. })
        ));
        ok(set(kv, &alice, &value("big", &i64::MAX.to_string())));
        assert!(matches!(
            increment(kv, &alice, "big", 1),
            Err(KvError::NotCounter { .. })
        ));
        assert_eq!(
            ok(kv.get("big")).map(|e| e.value),
            Some(i64::MAX.to_string())
        );
    }

    #[test]
    fn a_failed_transaction_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for kv in backends(tmp.path()) {
            let kv = kv.as_ref();
            let charge = Charge {
                owner: "alice",
                peer: KvQuota::default(),
                owner_quota: KvQuota {
                    bytes: None,
                    keys: Some(2),
                },
            };
            let values = [value("x/1", "1"), value("x/2", "2"), value("x/3", "3")];
            let refused = set_many(kv, &charge, &values);
            assert!(
                matches!(
                    refused,
                    Err(KvError::Quota {
                        figure: "kv_keys",
                        ..
                    })
                ),
                "{refused:?}"
            );
            assert!(ok(list_all(kv, "x/", later())).is_empty(), "{}", kv.name());
            assert_eq!(ok(kv.usage(None)), Usage::default(), "{}", kv.name());
        }
    }

    #[test]
    fn pages_cover_every_key_once_in_order() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for kv in backends(tmp.path()) {
            pages(kv.as_ref());
        }
    }

    fn pages(kv: &dyn KvBackend) {
        let owner = Charge::unlimited("bob");
        let keys: Vec<String> = (0..250).map(|i| format!("p/{i:04}")).collect();
        for chunk in keys.chunks(MAX_BATCH) {
            let values: Vec<CheckedValue<'_>> = chunk.iter().map(|k| value(k, "0")).collect();
            ok(set_many(kv, &owner, &values));
        }
        ok(set(kv, &owner, &value("p0", "0")));
        ok(set(kv, &owner, &value("o", "0")));
        let (mut seen, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let page = ok(list_page(kv, "p/", cursor.as_deref(), 64, later()));
            pages += 1;
            seen.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, keys, "{}", kv.name());
        assert_eq!(pages, 4, "{}", kv.name());
        assert!(matches!(
            list_page(kv, "", None, MAX_PAGE + 1, later()),
            Err(KvError::TooMany { .. })
        ));
        let everything = ok(list_page(kv, "", None, MAX_PAGE, later()));
        assert_eq!(everything.keys.len(), 252);
        assert_eq!(everything.cursor, None);
    }

    #[test]
    fn quotas_charge_the_owner_and_the_peer() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for kv in backends(tmp.path()) {
            quotas(kv.as_ref());
        }
    }

    fn quotas(kv: &dyn KvBackend) {
        let name = kv.name();
        let quota = |owner| Charge {
            owner,
            peer: KvQuota {
                bytes: Some(100),
                keys: None,
            },
            owner_quota: KvQuota {
                bytes: Some(60),
                keys: None,
            },
        };
        let (alice, carol) = (quota("alice"), quota("carol"));
        // 1 + 48 bytes each: alice may store one.
        let fill = format!("\"{}\"", "a".repeat(46));
        ok(set(kv, &alice, &value("a", &fill)));
        let refused = set(kv, &alice, &value("b", &fill));
        match refused {
            Err(KvError::Quota {
                figure,
                scope,
                limit,
                now,
                after,
            }) => {
                assert_eq!(
                    (figure, limit, now, after),
                    ("kv_bytes", 60, 49, 98),
                    "{name}"
                );
                assert_eq!(scope, "caller `alice`");
            }
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(ok(kv.get("b")), None);
        // Overwriting with less is always allowed.
        ok(set(kv, &alice, &value("a", "1")));
        ok(set(kv, &alice, &value("a", &fill)));
        ok(set(kv, &carol, &value("c", &fill)));
        // The peer's 100 bytes hold 98: carol's next 3 are refused by the peer.
        let refused = set(kv, &carol, &value("d", "12"));
        assert!(
            matches!(&refused, Err(KvError::Quota { scope, .. }) if scope == "the peer"),
            "{name}: {refused:?}"
        );
        assert_eq!(ok(kv.usage(Some("alice"))), Usage { bytes: 49, keys: 1 });
        assert_eq!(ok(kv.usage(None)), Usage { bytes: 98, keys: 2 });
        // Carol writing over alice's key takes it over, and pays for it.
        ok(set(kv, &carol, &value("a", "2")));
        assert_eq!(ok(kv.usage(Some("alice"))), Usage::default(), "{name}");
        assert_eq!(ok(kv.usage(Some("carol"))), Usage { bytes: 51, keys: 2 });
        let owners = ok(kv.owners());
        assert_eq!(
            owners,
            [("carol".to_owned(), Usage { bytes: 51, keys: 2 })],
            "{name}"
        );
    }

    #[test]
    fn concurrent_increments_and_swaps_lose_nothing() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for kv in backends(tmp.path()) {
            concurrent_boxed(kv);
        }
    }

    fn concurrent_boxed(kv: Box<dyn KvBackend>) {
        concurrent(std::sync::Arc::from(kv));
    }

    fn concurrent(kv: std::sync::Arc<dyn KvBackend>) {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    let charge = Charge::unlimited("alice");
                    for _ in 0..50 {
                        ok(increment(kv.as_ref(), &charge, "count", 1));
                        // A counter kept with compare-and-swap, retried on conflict.
                        loop {
                            let entry = ok(kv.get("swapped"));
                            let now: i64 =
                                entry.as_ref().map_or(0, |e| e.value.parse().unwrap_or(0));
                            let text = (now + 1).to_string();
                            let expected = entry.as_ref().map(|e| e.revision.as_str());
                            if ok(set_if(
                                kv.as_ref(),
                                &charge,
                                &value("swapped", &text),
                                expected,
                            ))
                            .is_some()
                            {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread
                .join()
                .unwrap_or_else(|_| panic!("a writer panicked"));
        }
        assert_eq!(
            ok(kv.get("count")).map(|e| e.value).as_deref(),
            Some("400"),
            "{}",
            kv.name()
        );
        assert_eq!(
            ok(kv.get("swapped")).map(|e| e.value).as_deref(),
            Some("400"),
            "{}",
            kv.name()
        );
    }

    #[test]
    fn bad_keys_are_refused_by_every_backend_alike() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let long = "k".repeat(10_000);
        let bad = [
            "",
            "a\0b",
            "tab\there",
            "line\nbreak",
            "..",
            "a/../b",
            "../up",
            "\u{7f}",
            long.as_str(),
        ];
        for kv in backends(tmp.path()) {
            let kv = kv.as_ref();
            let alice = Charge::unlimited("alice");
            for key in bad {
                assert!(
                    matches!(kv.get(key), Err(KvError::BadKey { .. })),
                    "{}: {key:?}",
                    kv.name()
                );
                assert!(matches!(
                    CheckedValue::new(key, "1"),
                    Err(KvError::BadKey { .. })
                ));
                assert!(matches!(
                    delete(kv, &alice, key),
                    Err(KvError::BadKey { .. })
                ));
                assert!(matches!(
                    increment(kv, &alice, key, 1),
                    Err(KvError::BadKey { .. })
                ));
            }
            for key in ["a.b", "...", "ünïcode key", "%41", "-_", "a/b/"] {
                ok(set(kv, &alice, &value(key, "1")));
                assert!(ok(exists(kv, key)), "{}: {key:?}", kv.name());
            }
            assert!(matches!(
                CheckedValue::new("big", &"1".repeat(MAX_VALUE + 1)),
                Err(KvError::TooLarge { .. })
            ));
            assert!(matches!(
                CheckedValue::new("nj", "{"),
                Err(KvError::NotJson { .. })
            ));
            let e = check_key(&long).map_err(GuestError::from);
            assert!(
                matches!(e, Err(GuestError::Invalid(ref m)) if m.len() < 1_000),
                "{e:?}"
            );
        }
    }

    #[test]
    fn keys_round_trip_through_file_names() {
        for key in ["public/motd", "a.b", "ünïcode key", "%41", "-_"] {
            let name = fs::encode_key(key);
            assert!(
                !name.is_empty() && !name.contains('/') && !name.starts_with('.'),
                "{name}"
            );
            assert_eq!(fs::decode_key(&name).as_deref(), Some(key));
        }
        assert_eq!(fs::decode_key(".tmp.1.2"), None);
        assert_eq!(fs::decode_key(".usage"), None);
    }

    #[test]
    fn an_earlier_versions_files_are_read_as_revision_zero_of_the_peer() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().join("kv");
        ok(std::fs::create_dir_all(&dir).map_err(KvError::from));
        ok(std::fs::write(dir.join("public%2Fmotd"), "\"hello\"").map_err(KvError::from));
        let kv = FsKv::new(
            move || Dir::open_ambient_dir(&dir, cap_std::ambient_authority()),
            "bob",
        );
        let entry = ok(kv.get("public/motd")).unwrap_or_else(|| panic!("the old value is gone"));
        assert_eq!(
            (
                entry.value.as_str(),
                entry.revision.as_str(),
                entry.owner.as_str()
            ),
            ("\"hello\"", "0", "bob")
        );
        assert_eq!(ok(kv.usage(Some("bob"))), Usage { bytes: 18, keys: 1 });
        assert!(
            ok(set_if(
                &kv,
                &Charge::unlimited("bob"),
                &value("public/motd", "1"),
                Some("0")
            ))
            .is_some()
        );
    }

    #[test]
    fn class_10_a_listing_past_its_deadline_is_refused() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.path().to_owned();
        let store = FsKv::new(
            move || Dir::open_ambient_dir(&path, cap_std::ambient_authority()),
            "bob",
        );
        ok(set(&store, &Charge::unlimited("bob"), &value("a", "1")));
        assert_eq!(ok(list_all(&store, "", later())), ["a"]);
        let past = Instant::now();
        assert!(matches!(
            store.list("", None, 10, past),
            Err(KvError::Deadline { seen: 0, .. })
        ));
    }

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn class_16_a_value_nested_past_the_readers_limit_is_refused_on_write() {
        // The guest's own reader, natively: what `kv::get` hands a script.
        let read = |text: &str| peerhost_rhai_guest::convert::from_json(text, "kv value");
        let deepest = nested(MAX_DEPTH);
        assert!(
            read(&deepest).is_ok(),
            "the reader refuses {MAX_DEPTH} deep"
        );
        assert!(CheckedValue::new("deep", &deepest).is_ok());

        let too_deep = nested(MAX_DEPTH + 1);
        assert!(read(&too_deep).is_err(), "the reader reads deeper");
        let objects = format!(
            "{}1{}",
            "{\"a\":[".repeat(MAX_DEPTH / 2 + 1),
            "]}".repeat(MAX_DEPTH / 2 + 1)
        );
        assert!(read(&format!("[{objects}]")).is_err());
        for value in [too_deep, format!("[{objects}]")] {
            match CheckedValue::new("deeper", &value).map_err(GuestError::from) {
                Err(GuestError::Invalid(message)) => {
                    assert!(message.contains("nested more than 127"), "{message}")
                }
                other => panic!("a value past the readers' depth: {other:?}"),
            }
        }
        // Brackets inside strings are text, not nesting.
        let text = format!("[\"{}\\\"{}\"]", "[".repeat(500), "{".repeat(500));
        assert!(CheckedValue::new("text", &text).is_ok());
        assert!(read(&text).is_ok());
    }
}
