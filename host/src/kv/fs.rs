//! The `fs` backend: one file per key in `peers/<name>/kv/`, the layout of
//! earlier deployments.
//!
//! A key's file is named by percent-encoding the key and written atomically
//! (a temporary file, then a rename), so a reader never sees half a value
//! and needs no lock. It holds a header line with the value's revision and
//! owner, then the JSON text; a file of an earlier version holds the JSON
//! alone (revision `0`, owned by the peer).
//!
//! Writers take `.lock` (a `flock`, so several workers may share the
//! directory) and keep the usage of every owner and the next revision in
//! `.usage`. While a transaction's files are being renamed into place,
//! `.dirty` says so: a worker that finds it (after a crash half way) counts
//! the usage again from the files. A transaction of several keys is atomic
//! against other writers, not against a crash half way: the SQLite backend
//! is, and is the default.

use super::{Charge, CheckedValue, Entry, KvBackend, KvError, Ledger, Page, Txn, Usage};
use cap_std::fs::Dir;
use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// The first bytes of a value file with a header.
const HEADER: &str = "#peerhost-kv 1 ";

/// The ledger of usage and revisions.
const LEDGER: &str = ".usage";

/// Present while a transaction's files are renamed into place.
const DIRTY: &str = ".dirty";

/// The writers' lock.
const LOCK: &str = ".lock";

/// A peer's key-value data in a directory it cannot reach otherwise. The
/// directory is opened on first use: an idle peer holds no descriptor, so
/// thousands of registered peers stay within a process's descriptor limit.
pub struct FsKv {
    dir: OnceLock<Dir>,
    open: Box<dyn Fn() -> io::Result<Dir> + Send + Sync>,
    /// Owner of values written by an earlier version (the peer).
    legacy_owner: String,
    /// One writer of this process at a time holds the `flock`.
    writer: Mutex<Option<std::fs::File>>,
}

impl std::fmt::Debug for FsKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsKv")
            .field("open", &self.dir.get().is_some())
            .finish_non_exhaustive()
    }
}

fn is_plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

/// The file name of `key`: `[A-Za-z0-9_-]` kept, every other byte `%XX`.
pub fn encode_key(key: &str) -> String {
    let mut name = String::with_capacity(key.len() * 3);
    for &byte in key.as_bytes() {
        if is_plain(byte) {
            name.push(byte as char);
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    name
}

/// The key of file `name`, or `None` for a file that is not a key (a
/// temporary file, the ledger, the lock).
pub fn decode_key(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = name.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if is_plain(b) => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// A value file's text as an entry.
fn parse(key: &str, text: String, legacy_owner: &str) -> Result<Entry, KvError> {
    let Some(rest) = text.strip_prefix(HEADER) else {
        return Ok(Entry {
            value: text,
            revision: "0".to_owned(),
            owner: legacy_owner.to_owned(),
        });
    };
    let corrupt = |reason: &str| KvError::Corrupt {
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    let (header, value) = rest
        .split_once('\n')
        .ok_or_else(|| corrupt("a header without its value"))?;
    let (revision, owner) = header
        .split_once(' ')
        .ok_or_else(|| corrupt("a header without its owner"))?;
    if revision.parse::<u64>().is_err() {
        return Err(corrupt("a revision that is not a number"));
    }
    let owner = decode_key(owner).ok_or_else(|| corrupt("a badly encoded owner"))?;
    Ok(Entry {
        value: value.to_owned(),
        revision: revision.to_owned(),
        owner,
    })
}

fn file_text(entry: &Entry) -> String {
    format!(
        "{HEADER}{} {}\n{}",
        entry.revision,
        encode_key(&entry.owner),
        entry.value
    )
}

fn temporary_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        ".tmp.{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Writes `text` to `name` in `dir` atomically.
fn write_atomically(dir: &Dir, name: &str, text: &str) -> io::Result<()> {
    let temp = temporary_name();
    dir.write(&temp, text)?;
    if let Err(e) = dir.rename(&temp, dir, name) {
        let _ = dir.remove_file(&temp);
        return Err(e);
    }
    Ok(())
}

fn read_optional(dir: &Dir, name: &str) -> io::Result<Option<String>> {
    match dir.read_to_string(name) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl FsKv {
    /// A store over the directory `open` opens, on first use; values of an
    /// earlier version belong to `legacy_owner` (the peer).
    pub fn new(
        open: impl Fn() -> io::Result<Dir> + Send + Sync + 'static,
        legacy_owner: &str,
    ) -> FsKv {
        FsKv {
            dir: OnceLock::new(),
            open: Box::new(open),
            legacy_owner: legacy_owner.to_owned(),
            writer: Mutex::new(None),
        }
    }

    fn dir(&self) -> io::Result<&Dir> {
        if let Some(dir) = self.dir.get() {
            return Ok(dir);
        }
        let dir = (self.open)()?;
        Ok(self.dir.get_or_init(|| dir))
    }

    /// The ledger, counted again from the files when it is missing or a
    /// transaction was cut half way. Called with the writers' lock held.
    fn ledger(&self, dir: &Dir) -> Result<Ledger, KvError> {
        let dirty = read_optional(dir, DIRTY)?;
        if dirty.is_none()
            && let Some(text) = read_optional(dir, LEDGER)?
            && let Ok(ledger) = serde_json::from_str::<Ledger>(&text)
        {
            return Ok(ledger);
        }
        let floor = dirty
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let mut ledger = Ledger::default();
        let mut highest = 0;
        for entry in dir.entries()? {
            let name = entry?.file_name();
            let Some(key) = name.to_str().and_then(decode_key) else {
                continue;
            };
            let Some(text) = read_optional(dir, &encode_key(&key))? else {
                continue;
            };
            let entry = parse(&key, text, &self.legacy_owner)?;
            highest = highest.max(entry.revision.parse::<u64>().unwrap_or(0));
            ledger.count(&entry.owner, (key.len() + entry.value.len()) as u64, true);
        }
        ledger.next_revision = highest.max(floor) + 1;
        write_atomically(dir, LEDGER, &ledger_text(&ledger)?)?;
        match dir.remove_file(DIRTY) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        Ok(ledger)
    }

    fn lock_file(&self, dir: &Dir, slot: &mut Option<std::fs::File>) -> io::Result<()> {
        if slot.is_none() {
            let file = dir
                .open_with(
                    LOCK,
                    cap_std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true),
                )?
                .into_std();
            *slot = Some(file);
        }
        Ok(())
    }
}

fn ledger_text(ledger: &Ledger) -> Result<String, KvError> {
    serde_json::to_string(ledger).map_err(|e| KvError::Backend {
        backend: "fs",
        message: format!("cannot write the usage ledger: {e}"),
    })
}

/// Releases the `flock` when a transaction ends, however it ends.
struct Locked<'a>(&'a std::fs::File);

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

struct FsTxn<'a> {
    kv: &'a FsKv,
    charge: &'a Charge<'a>,
    ledger: Ledger,
    staged: HashMap<String, Option<Entry>>,
}

impl Txn for FsTxn<'_> {
    fn get(&mut self, key: &str) -> Result<Option<Entry>, KvError> {
        if let Some(staged) = self.staged.get(key) {
            return Ok(staged.clone());
        }
        self.kv.get(key)
    }

    fn put(&mut self, value: &CheckedValue<'_>) -> Result<String, KvError> {
        let key = value.key();
        let old = self.get(key)?;
        self.ledger.put(self.charge, old.as_ref(), value)?;
        let owner = self.charge.owner;
        let revision = self.ledger.next_revision;
        self.ledger.next_revision += 1;
        let entry = Entry {
            value: value.value().to_owned(),
            revision: revision.to_string(),
            owner: owner.to_owned(),
        };
        self.staged.insert(key.to_owned(), Some(entry));
        Ok(revision.to_string())
    }

    fn delete(&mut self, key: &str) -> Result<bool, KvError> {
        let Some(old) = self.get(key)? else {
            return Ok(false);
        };
        self.ledger
            .count(&old.owner, (key.len() + old.value.len()) as u64, false);
        self.staged.insert(key.to_owned(), None);
        Ok(true)
    }
}

impl KvBackend for FsKv {
    fn name(&self) -> &'static str {
        "fs"
    }

    fn check(&self) -> Result<(), KvError> {
        self.dir()?;
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        super::check_key(key)?;
        match read_optional(self.dir()?, &encode_key(key))? {
            Some(text) => Ok(Some(parse(key, text, &self.legacy_owner)?)),
            None => Ok(None),
        }
    }

    /// Reads the whole directory (the scan is linear in the stored keys, so
    /// it checks the clock every [`super::DEADLINE_EVERY`] entries).
    fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        deadline: Instant,
    ) -> Result<Page, KvError> {
        let mut keys = Vec::new();
        for (seen, entry) in self.dir()?.entries()?.enumerate() {
            if seen % super::DEADLINE_EVERY == 0 && Instant::now() >= deadline {
                return Err(KvError::Deadline {
                    prefix: prefix.to_owned(),
                    seen,
                });
            }
            let name = entry?.file_name();
            if let Some(key) = name.to_str().and_then(decode_key)
                && key.starts_with(prefix)
                && after.is_none_or(|after| key.as_str() > after)
            {
                keys.push(key);
            }
        }
        keys.sort_unstable();
        Ok(Page::of(keys, limit))
    }

    fn usage(&self, owner: Option<&str>) -> Result<Usage, KvError> {
        let ledger = self.locked(|dir| self.ledger(dir))?;
        Ok(ledger.usage(owner))
    }

    fn owners(&self) -> Result<Vec<(String, Usage)>, KvError> {
        let ledger = self.locked(|dir| self.ledger(dir))?;
        Ok(ledger.into_owners())
    }

    fn transact(
        &self,
        charge: &Charge<'_>,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<(), KvError>,
    ) -> Result<(), KvError> {
        self.locked(|dir| {
            let mut txn = FsTxn {
                kv: self,
                charge,
                ledger: self.ledger(dir)?,
                staged: HashMap::new(),
            };
            body(&mut txn)?;
            let FsTxn { ledger, staged, .. } = txn;
            if staged.is_empty() {
                return Ok(());
            }
            // Revisions up to the ledger's next are given: never again,
            // whatever happens now.
            write_atomically(dir, DIRTY, &ledger.next_revision.to_string())?;
            for (key, entry) in &staged {
                let name = encode_key(key);
                match entry {
                    Some(entry) => write_atomically(dir, &name, &file_text(entry))?,
                    None => match dir.remove_file(&name) {
                        Err(e) if e.kind() != ErrorKind::NotFound => return Err(e.into()),
                        _ => {}
                    },
                }
            }
            write_atomically(dir, LEDGER, &ledger_text(&ledger)?)?;
            dir.remove_file(DIRTY)?;
            Ok(())
        })
    }
}

impl FsKv {
    /// Runs `work` holding the writers' lock of this process and the
    /// directory's `flock`.
    fn locked<T>(&self, work: impl FnOnce(&Dir) -> Result<T, KvError>) -> Result<T, KvError> {
        let dir = self.dir()?;
        let mut slot = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.lock_file(dir, &mut slot)?;
        let Some(file) = slot.as_ref() else {
            return Err(KvError::Io(io::Error::other("the lock file is not open")));
        };
        file.lock()?;
        let _locked = Locked(file);
        work(dir)
    }
}
