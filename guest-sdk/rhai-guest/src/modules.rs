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
        Ok(raw_kv::list(prefix)
            .map_err(throw)?
            .into_iter()
            .map(Dynamic::from)
            .collect())
    });
    m
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
        _ => Error::Failed(format!("{path}: {e}")),
    })
}

fn fs_module() -> Module {
    let mut m = Module::new();
    m.set_native_fn("read", |path: &str| -> RhaiResult<ImmutableString> {
        let path = namespace_path(path)?;
        let file = std::fs::File::open(&path).map_err(|e| io_error("fs.read", &path, e))?;
        let mut text = String::new();
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
