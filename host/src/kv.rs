//! The kv store behind `peerhost:peer/kv`: the [`KvBackend`] trait every
//! storage backend implements, the checks every backend shares (keys,
//! values), and today's one backend, [`FsKv`].
//!
//! The `fs` backend keeps one file per key in `peers/<name>/kv/`, beside the
//! namespace, named by percent-encoding the key, written atomically
//! (temporary file, then rename). No path the guest can name through WASI
//! leads there, so the only way to its data is this capability and its
//! `kv.*` actions.

use crate::bindings::GuestError;
use cap_std::fs::Dir;
use std::io::{self, ErrorKind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Longest key, in bytes: its encoded file name stays under 255 bytes.
pub const MAX_KEY: usize = 80;

/// How many directory entries a listing reads between looks at the clock.
pub const DEADLINE_EVERY: usize = 1024;

/// Largest value, in bytes of JSON text.
pub const MAX_VALUE: usize = 1 << 20;

/// Deepest nesting of arrays and objects in a value: what the guest's
/// reader accepts (`kv::get` parses with serde_json, which stops at 128),
/// so that no writer stores a value its readers cannot read back.
pub const MAX_DEPTH: usize = peerhost_rhai_guest::limits::JSON_DEPTH;

/// A peer's kv store, whatever keeps it: keys are checked
/// ([`encode_key`]), values checked once into a [`CheckedValue`] before
/// any backend sees them.
pub trait KvBackend: Send + Sync + std::fmt::Debug {
    /// The value under `key`, if any.
    fn get(&self, key: &str) -> Result<Option<String>, KvError>;
    /// Stores a checked value under its key.
    fn put(&self, value: &CheckedValue<'_>) -> Result<(), KvError>;
    /// Removes `key`; whether it was there.
    fn delete(&self, key: &str) -> Result<bool, KvError>;
    /// The keys starting with `prefix`, checking `deadline` as it goes.
    fn list(&self, prefix: &str, deadline: Instant) -> Result<Vec<String>, KvError>;
    /// Checks `value` for `key` and stores it.
    fn set(&self, key: &str, value: &str) -> Result<(), KvError> {
        self.put(&CheckedValue::new(key, value)?)
    }
}

/// A peer's key-value data in a directory it cannot reach otherwise. The
/// directory is opened on first use: an idle peer holds no descriptor, so
/// thousands of registered peers stay within a process's descriptor limit.
pub struct FsKv {
    dir: std::sync::OnceLock<Dir>,
    open: Box<dyn Fn() -> io::Result<Dir> + Send + Sync>,
}

impl std::fmt::Debug for FsKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsKv")
            .field("open", &self.dir.get().is_some())
            .finish_non_exhaustive()
    }
}

/// Why a kv operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The key is empty, too long or contains NUL.
    #[error("invalid key {key:?}: keys are 1 to {MAX_KEY} bytes without NUL")]
    BadKey {
        /// The key.
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
    /// A listing ran into the invocation's deadline.
    #[error("kv list of {prefix:?} ran past the invocation's deadline after {seen} entries")]
    Deadline {
        /// The prefix listed.
        prefix: String,
        /// Directory entries read before the deadline.
        seen: usize,
    },
    /// The storage failed.
    #[error("kv storage: {0}")]
    Io(#[from] io::Error),
}

impl From<KvError> for GuestError {
    fn from(e: KvError) -> GuestError {
        match e {
            KvError::BadKey { .. } | KvError::NotJson { .. } | KvError::TooDeep { .. } => {
                GuestError::Invalid(e.to_string())
            }
            KvError::TooLarge { .. } | KvError::Deadline { .. } => GuestError::Limit(e.to_string()),
            KvError::Io(_) => GuestError::Failed(e.to_string()),
        }
    }
}

fn is_plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

/// The file name of `key`: `[A-Za-z0-9_-]` kept, every other byte `%XX`.
pub fn encode_key(key: &str) -> Result<String, KvError> {
    if key.is_empty() || key.len() > MAX_KEY || key.contains('\0') {
        return Err(KvError::BadKey {
            key: key.to_owned(),
        });
    }
    let mut name = String::with_capacity(key.len() * 3);
    for &byte in key.as_bytes() {
        if is_plain(byte) {
            name.push(byte as char);
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    Ok(name)
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
    name: String,
    value: &'a str,
}

impl<'a> CheckedValue<'a> {
    /// Checks `value` for `key`.
    pub fn new(key: &str, value: &'a str) -> Result<CheckedValue<'a>, KvError> {
        let name = encode_key(key)?;
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
        Ok(CheckedValue { name, value })
    }

    /// Its size, in bytes.
    pub fn bytes(&self) -> usize {
        self.value.len()
    }
}

/// The key of file `name`, or `None` for a file that is not a key (a temporary file).
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

impl FsKv {
    /// A store over the directory `open` opens, on first use.
    pub fn new(open: impl Fn() -> io::Result<Dir> + Send + Sync + 'static) -> FsKv {
        FsKv {
            dir: std::sync::OnceLock::new(),
            open: Box::new(open),
        }
    }

    fn dir(&self) -> io::Result<&Dir> {
        if let Some(dir) = self.dir.get() {
            return Ok(dir);
        }
        let dir = (self.open)()?;
        Ok(self.dir.get_or_init(|| dir))
    }
}

impl KvBackend for FsKv {
    /// The value under `key`.
    fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        match self.dir()?.read_to_string(encode_key(key)?) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores a checked value, atomically.
    fn put(&self, value: &CheckedValue<'_>) -> Result<(), KvError> {
        let CheckedValue { name, value } = value;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let temp = format!(
            ".tmp.{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = self.dir()?;
        dir.write(&temp, value)?;
        if let Err(e) = dir.rename(&temp, dir, name) {
            let _ = dir.remove_file(&temp);
            return Err(e.into());
        }
        Ok(())
    }

    /// Removes `key`; true when it existed.
    fn delete(&self, key: &str) -> Result<bool, KvError> {
        match self.dir()?.remove_file(encode_key(key)?) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Every key starting with `prefix`, sorted; refused once `deadline`
    /// passes (the scan is linear in the stored keys, so it checks the
    /// clock every [`DEADLINE_EVERY`] entries).
    fn list(&self, prefix: &str, deadline: Instant) -> Result<Vec<String>, KvError> {
        let mut keys = Vec::new();
        for (seen, entry) in self.dir()?.entries()?.enumerate() {
            if seen % DEADLINE_EVERY == 0 && Instant::now() >= deadline {
                return Err(KvError::Deadline {
                    prefix: prefix.to_owned(),
                    seen,
                });
            }
            let name = entry?.file_name();
            if let Some(key) = name.to_str().and_then(decode_key)
                && key.starts_with(prefix)
            {
                keys.push(key);
            }
        }
        keys.sort();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_file_names() {
        for key in ["public/motd", "a.b", "..", "ünïcode key", "%41", "-_"] {
            let name = encode_key(key).unwrap_or_default();
            assert!(
                !name.is_empty() && !name.contains('/') && !name.starts_with('.'),
                "{name}"
            );
            assert_eq!(decode_key(&name).as_deref(), Some(key));
        }
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(encode_key("").is_err());
        assert!(encode_key("a\0b").is_err());
        assert!(encode_key(&"k".repeat(MAX_KEY + 1)).is_err());
        assert_eq!(decode_key(".tmp.1.2"), None);
    }

    #[test]
    fn class_10_a_listing_past_its_deadline_is_refused() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.path().to_owned();
        let store = FsKv::new(move || Dir::open_ambient_dir(&path, cap_std::ambient_authority()));
        store.set("a", "1").unwrap_or_else(|e| panic!("{e}"));
        let later = Instant::now() + std::time::Duration::from_secs(60);
        assert_eq!(store.list("", later).unwrap_or_default(), ["a"]);
        let past = Instant::now();
        assert!(matches!(
            store.list("", past),
            Err(KvError::Deadline { seen: 0, .. })
        ));
    }

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn class_16_a_value_nested_past_the_readers_limit_is_refused_on_write() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.path().to_owned();
        let store = FsKv::new(move || Dir::open_ambient_dir(&path, cap_std::ambient_authority()));
        // The guest's own reader, natively: what `kv::get` hands a script.
        let read = |text: &str| peerhost_rhai_guest::convert::from_json(text, "kv value");
        let deepest = nested(MAX_DEPTH);
        assert!(
            read(&deepest).is_ok(),
            "the reader refuses {MAX_DEPTH} deep"
        );
        store
            .set("deep", &deepest)
            .unwrap_or_else(|e| panic!("{e}"));
        let stored = store.get("deep").unwrap_or_default().unwrap_or_default();
        assert!(read(&stored).is_ok());

        let too_deep = nested(MAX_DEPTH + 1);
        assert!(read(&too_deep).is_err(), "the reader reads deeper");
        let objects = format!(
            "{}1{}",
            "{\"a\":[".repeat(MAX_DEPTH / 2 + 1),
            "]}".repeat(MAX_DEPTH / 2 + 1)
        );
        assert!(read(&format!("[{objects}]")).is_err());
        for value in [too_deep, format!("[{objects}]")] {
            let error = store.set("deeper", &value).map_err(GuestError::from);
            match error {
                Err(GuestError::Invalid(message)) => {
                    assert!(message.contains("nested more than 127"), "{message}")
                }
                other => panic!("a value past the readers' depth: {other:?}"),
            }
        }
        assert_eq!(store.get("deeper").unwrap_or_default(), None);
        // Brackets inside strings are text, not nesting.
        let text = format!("[\"{}\\\"{}\"]", "[".repeat(500), "{".repeat(500));
        store.set("text", &text).unwrap_or_else(|e| panic!("{e}"));
        assert!(read(&text).is_ok());
    }
}
