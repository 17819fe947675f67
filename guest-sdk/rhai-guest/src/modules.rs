//! The Rhai modules a script or a logic function sees: `kv`, `fs`, `log`,
//! `peers`, and the lazily fetched `ctx` map. Each native function is a thin call to
//! a capability; the host checks the policy, not this code.

use crate::convert::{self, throw};
use peerhost_guest_sdk::Error;
use peerhost_guest_sdk::bindings::peerhost::peer::{kv as raw_kv, peers as raw_peers};
use peerhost_guest_sdk::log::Level;
use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, Map, Module};
use std::cell::RefCell;
use std::io::Read;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// Largest file `fs::read` returns, in bytes.
const MAX_READ: u64 = 1 << 20;

/// WASI errno for "permission denied": what the host answers for a policy denial.
const EACCES: i32 = 2;

/// Registers `kv`, `fs`, `log` and `peers` as static modules.
pub fn register(engine: &mut Engine) {
    engine.register_static_module("kv", kv_module().into());
    engine.register_static_module("fs", fs_module().into());
    engine.register_static_module("log", log_module().into());
    engine.register_static_module("peers", peers_module().into());
}

/// A JSON result of a peer as a Rhai value.
fn peer_result(result: Result<String, Error>) -> RhaiResult<Dynamic> {
    let text = result.map_err(throw)?;
    convert::from_json(&text, "a peer's result").map_err(throw)
}

fn json(value: &Dynamic) -> RhaiResult<String> {
    convert::to_json(value).map_err(throw)
}

/// `peers::send(peer, script[, params])`, `peers::invoke(peer, function[, args])`
/// (the WIT `peers.call`: `call` is a reserved word in Rhai) and
/// `peers::call_local(function[, args])`. Arguments are an array of
/// positional arguments or one value.
fn peers_module() -> Module {
    let mut m = Module::new();
    m.set_native_fn("send", |peer: &str, script: &str| -> RhaiResult<Dynamic> {
        peer_result(raw_peers::send(peer, script, "null"))
    });
    m.set_native_fn(
        "send",
        |peer: &str, script: &str, params: Dynamic| -> RhaiResult<Dynamic> {
            peer_result(raw_peers::send(peer, script, &json(&params)?))
        },
    );
    m.set_native_fn(
        "invoke",
        |peer: &str, function: &str| -> RhaiResult<Dynamic> {
            peer_result(raw_peers::call(peer, function, "[]"))
        },
    );
    m.set_native_fn(
        "invoke",
        |peer: &str, function: &str, args: Dynamic| -> RhaiResult<Dynamic> {
            peer_result(raw_peers::call(peer, function, &json(&args)?))
        },
    );
    m.set_native_fn("call_local", |function: &str| -> RhaiResult<Dynamic> {
        peer_result(raw_peers::call_local(function, "[]"))
    });
    m.set_native_fn(
        "call_local",
        |function: &str, args: Dynamic| -> RhaiResult<Dynamic> {
            peer_result(raw_peers::call_local(function, &json(&args)?))
        },
    );
    m
}

fn kv_module() -> Module {
    let mut m = Module::new();
    m.set_native_fn("get", |key: &str| -> RhaiResult<Dynamic> {
        match raw_kv::get(key).map_err(throw)? {
            None => Ok(Dynamic::UNIT),
            Some(text) => {
                convert::from_json(&text, &format!("kv value under `{key}`")).map_err(throw)
            }
        }
    });
    m.set_native_fn("set", |key: &str, value: Dynamic| -> RhaiResult<()> {
        let text = convert::to_json(&value).map_err(throw)?;
        raw_kv::set(key, &text).map_err(throw)
    });
    m.set_native_fn("delete", |key: &str| -> RhaiResult<bool> {
        raw_kv::delete(key).map_err(throw)
    });
    m.set_native_fn("list", |prefix: &str| -> RhaiResult<Array> {
        Ok(strings(raw_kv::list(prefix).map_err(throw)?))
    });
    m.set_native_fn(
        "list_page",
        |prefix: &str, cursor: Dynamic| -> RhaiResult<Map> {
            list_page(prefix, cursor, DEFAULT_PAGE)
        },
    );
    m.set_native_fn(
        "list_page",
        |prefix: &str, cursor: Dynamic, limit: i64| -> RhaiResult<Map> {
            let limit = u32::try_from(limit).map_err(|_| {
                throw(Error::Invalid(format!(
                    "a page of {limit} keys: give 1 to 1000"
                )))
            })?;
            list_page(prefix, cursor, limit)
        },
    );
    m.set_native_fn("exists", |key: &str| -> RhaiResult<bool> {
        raw_kv::exists(key).map_err(throw)
    });
    m.set_native_fn("get_entry", |key: &str| -> RhaiResult<Dynamic> {
        let Some(entry) = raw_kv::get_entry(key).map_err(throw)? else {
            return Ok(Dynamic::UNIT);
        };
        let mut map = Map::new();
        let value =
            convert::from_json(&entry.value, &format!("kv value under `{key}`")).map_err(throw)?;
        map.insert("value".into(), value);
        map.insert("revision".into(), entry.revision.into());
        Ok(map.into())
    });
    m.set_native_fn(
        "set_if",
        |key: &str, value: Dynamic, revision: Dynamic| -> RhaiResult<Dynamic> {
            let revision = optional_string(revision, "a revision")?;
            let text = convert::to_json(&value).map_err(throw)?;
            Ok(
                match raw_kv::set_if(key, &text, revision.as_deref()).map_err(throw)? {
                    Some(revision) => revision.into(),
                    None => Dynamic::UNIT,
                },
            )
        },
    );
    m.set_native_fn("increment", |key: &str| -> RhaiResult<i64> {
        raw_kv::increment(key, 1).map_err(throw)
    });
    m.set_native_fn("increment", |key: &str, by: i64| -> RhaiResult<i64> {
        raw_kv::increment(key, by).map_err(throw)
    });
    m.set_native_fn("get_many", |keys: Array| -> RhaiResult<Array> {
        let keys = key_list(keys)?;
        let values = raw_kv::get_many(&keys).map_err(throw)?;
        keys.iter()
            .zip(values)
            .map(|(key, value)| match value {
                None => Ok(Dynamic::UNIT),
                Some(text) => {
                    convert::from_json(&text, &format!("kv value under `{key}`")).map_err(throw)
                }
            })
            .collect()
    });
    m.set_native_fn("set_many", |entries: Map| -> RhaiResult<()> {
        let entries = entries
            .into_iter()
            .map(|(key, value)| Ok((key.to_string(), convert::to_json(&value).map_err(throw)?)))
            .collect::<RhaiResult<Vec<_>>>()?;
        raw_kv::set_many(&entries).map_err(throw)
    });
    m.set_native_fn("delete_many", |keys: Array| -> RhaiResult<i64> {
        Ok(i64::from(
            raw_kv::delete_many(&key_list(keys)?).map_err(throw)?,
        ))
    });
    m
}

/// Keys a page holds when a script names no limit.
const DEFAULT_PAGE: u32 = 100;

fn strings(items: Vec<String>) -> Array {
    items.into_iter().map(Dynamic::from).collect()
}

fn optional_string(value: Dynamic, what: &str) -> RhaiResult<Option<String>> {
    if value.is_unit() {
        return Ok(None);
    }
    value
        .into_immutable_string()
        .map(|s| Some(s.to_string()))
        .map_err(|ty| {
            throw(Error::Invalid(format!(
                "{what} is a string or (), not {ty}"
            )))
        })
}

fn key_list(keys: Array) -> RhaiResult<Vec<String>> {
    keys.into_iter()
        .map(|key| {
            key.into_immutable_string()
                .map(|s| s.to_string())
                .map_err(|ty| throw(Error::Invalid(format!("a key is a string, not {ty}"))))
        })
        .collect()
}

/// `kv::list_page(prefix, cursor[, limit])`: `#{keys, cursor}`, the cursor
/// `()` on the last page.
fn list_page(prefix: &str, cursor: Dynamic, limit: u32) -> RhaiResult<Map> {
    let cursor = optional_string(cursor, "a cursor")?;
    let page = raw_kv::list_page(prefix, cursor.as_deref(), limit).map_err(throw)?;
    let mut map = Map::new();
    map.insert("keys".into(), strings(page.keys).into());
    map.insert(
        "cursor".into(),
        page.cursor.map_or(Dynamic::UNIT, Dynamic::from),
    );
    Ok(map)
}

/// A namespace path as the guest sees it: absolute, no `..`, no NUL; an
/// empty path is the namespace root.
fn namespace_path(path: &str) -> RhaiResult<String> {
    if path.contains('\0') {
        return Err(throw(Error::Invalid(format!("bad path {path:?}"))));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(throw(Error::Invalid(format!(
            "path {path:?} is refused: `..` is not allowed, paths stay inside the namespace"
        ))));
    }
    Ok(if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    })
}

fn io_error(action: &str, path: &str, e: std::io::Error) -> Box<EvalAltResult> {
    throw(match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::NotFound(format!("{path}: no such file or directory"))
        }
        // The host decides reads of the logic as `logic.read` on the peer.
        std::io::ErrorKind::PermissionDenied
            if e.raw_os_error() == Some(EACCES)
                && (path == "/logic" || path.starts_with("/logic/")) =>
        {
            Error::denied("logic.read", format!("this peer's logic ({path})"))
        }
        std::io::ErrorKind::PermissionDenied if e.raw_os_error() == Some(EACCES) => {
            Error::denied(action, format!("Path::{path:?}"))
        }
        std::io::ErrorKind::PermissionDenied => {
            Error::Invalid(format!("{path}: refused by the namespace sandbox ({e})"))
        }
        std::io::ErrorKind::AlreadyExists
        | std::io::ErrorKind::DirectoryNotEmpty
        | std::io::ErrorKind::IsADirectory
        | std::io::ErrorKind::NotADirectory
        | std::io::ErrorKind::InvalidInput => Error::Invalid(format!("{path}: {e}")),
        // WASI's errno: EEXIST, EISDIR, ENOTDIR, ENOTEMPTY, EINVAL (not
        // all have a kind of their own in std on wasi).
        _ if matches!(e.raw_os_error(), Some(20 | 28 | 31 | 54 | 55)) => {
            Error::Invalid(format!("{path}: {e}"))
        }
        _ => Error::Failed(format!("{path}: {e}")),
    })
}

fn fs_module() -> Module {
    let mut m = Module::new();
    m.set_native_fn("read", |path: &str| -> RhaiResult<ImmutableString> {
        let path = namespace_path(path)?;
        let file = std::fs::File::open(&path).map_err(|e| io_error("fs.read", &path, e))?;
        // Room for the whole file: one read of it, not a read per doubling.
        let size = file.metadata().map_or(0, |m| m.len()).min(MAX_READ);
        let mut text = String::with_capacity(usize::try_from(size).unwrap_or(0) + 1);
        let read = file
            .take(MAX_READ + 1)
            .read_to_string(&mut text)
            .map_err(|e| io_error("fs.read", &path, e))?;
        if read as u64 > MAX_READ {
            return Err(throw(Error::Limit(format!(
                "{path} is larger than {MAX_READ} bytes"
            ))));
        }
        Ok(text.into())
    });
    m.set_native_fn("write", |path: &str, text: &str| -> RhaiResult<()> {
        let path = namespace_path(path)?;
        std::fs::write(&path, text).map_err(|e| io_error("fs.write", &path, e))
    });
    m.set_native_fn("list", |path: &str| -> RhaiResult<Array> {
        let path = namespace_path(path)?;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&path).map_err(|e| io_error("fs.list", &path, e))? {
            let entry = entry.map_err(|e| io_error("fs.list", &path, e))?;
            let mut name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                name.push('/');
            }
            names.push(name);
        }
        names.sort();
        Ok(names.into_iter().map(Dynamic::from).collect())
    });
    m.set_native_fn("remove", |path: &str| -> RhaiResult<()> {
        let path = namespace_path(path)?;
        std::fs::remove_file(&path).map_err(|e| io_error("fs.write", &path, e))
    });
    m.set_native_fn(
        "read_at",
        |path: &str, offset: i64, len: i64| -> RhaiResult<ImmutableString> {
            use std::io::{Seek, SeekFrom};
            let path = namespace_path(path)?;
            let (Ok(offset), Ok(len)) = (u64::try_from(offset), u64::try_from(len)) else {
                return Err(throw(Error::Invalid(format!(
                    "{path}: a negative offset or length"
                ))));
            };
            if len > MAX_READ {
                return Err(throw(Error::Limit(format!(
                    "{path}: at most {MAX_READ} bytes at once"
                ))));
            }
            let mut file = std::fs::File::open(&path).map_err(|e| io_error("fs.read", &path, e))?;
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| io_error("fs.read", &path, e))?;
            let mut bytes = Vec::new();
            file.take(len)
                .read_to_end(&mut bytes)
                .map_err(|e| io_error("fs.read", &path, e))?;
            Ok(String::from_utf8_lossy(&bytes).into_owned().into())
        },
    );
    m.set_native_fn("append", |path: &str, text: &str| -> RhaiResult<()> {
        use std::io::Write;
        let path = namespace_path(path)?;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .map_err(|e| io_error("fs.write", &path, e))
    });
    m.set_native_fn("mkdir", |path: &str| -> RhaiResult<()> {
        let path = namespace_path(path)?;
        std::fs::create_dir_all(&path).map_err(|e| io_error("fs.write", &path, e))
    });
    m.set_native_fn("rmdir", |path: &str| -> RhaiResult<()> {
        let path = namespace_path(path)?;
        std::fs::remove_dir(&path).map_err(|e| io_error("fs.write", &path, e))
    });
    m.set_native_fn("rename", |from: &str, to: &str| -> RhaiResult<()> {
        let from = namespace_path(from)?;
        let to = namespace_path(to)?;
        std::fs::rename(&from, &to).map_err(|e| io_error("fs.write", &from, e))
    });
    m.set_native_fn("stat", |path: &str| -> RhaiResult<Map> {
        let path = namespace_path(path)?;
        let meta = std::fs::metadata(&path).map_err(|e| io_error("fs.read", &path, e))?;
        let mut stat = Map::new();
        // A directory's size is the host's business: 0 on every backend.
        let (kind, size) = if meta.is_dir() {
            ("dir", 0)
        } else {
            ("file", i64::try_from(meta.len()).unwrap_or(i64::MAX))
        };
        stat.insert("kind".into(), kind.into());
        stat.insert("size".into(), Dynamic::from(size));
        Ok(stat)
    });
    m
}

/// Writes one log line; a denied `log.write` is dropped silently so that
/// `print` never fails a script.
pub fn log_line(level: Level, text: &str) {
    let _ = peerhost_guest_sdk::log::write(level, text);
}

fn log_module() -> Module {
    let mut m = Module::new();
    for (name, level) in [
        ("trace", Level::Trace),
        ("debug", Level::Debug),
        ("info", Level::Info),
        ("warn", Level::Warn),
        ("error", Level::Error),
    ] {
        m.set_native_fn(name, move |message: &str| -> RhaiResult<()> {
            peerhost_guest_sdk::log::write(level, message).map_err(throw)
        });
    }
    m
}

thread_local! {
    static CONTEXT: RefCell<Option<Map>> = const { RefCell::new(None) };
}

/// Forgets the fetched `ctx`: the next request may have another kind or depth.
pub fn forget_context() {
    CONTEXT.with(|cached| *cached.borrow_mut() = None);
}

/// The `ctx` map, fetched through the `context` capability on first use.
pub fn context_value() -> RhaiResult<Dynamic> {
    CONTEXT.with(|cached| {
        if let Some(map) = cached.borrow().as_ref() {
            return Ok(map.clone().into());
        }
        let ctx = peerhost_guest_sdk::context::get().map_err(throw)?;
        let map = crate::context_map(&ctx);
        *cached.borrow_mut() = Some(map.clone());
        Ok(map.into())
    })
}
