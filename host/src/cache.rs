//! The compiled guest component, cached on disk so that a process starts in
//! milliseconds instead of compiling for a second.
//!
//! The cache is a directory (`$PEERHOST_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/peerhost`, else `~/.cache/peerhost`) holding one file per
//! compiled component, named by the SHA-256 of the component and of the
//! engine's compatibility hash (wasmtime version and configuration). Files
//! are written to a temporary name and renamed, so concurrent processes never
//! see half a file; they are loaded with mmap.
//!
//! A compiled artifact is native code: whoever can write the cache can run
//! code in the host. The directory is created private (0700) and used only
//! while neither it nor the file is writable by group or others; otherwise
//! the host compiles in memory and says so. `PEERHOST_CACHE_DIR=off`
//! disables the cache.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;
use wasmtime::Engine;
use wasmtime::component::Component;

/// The cache directory, or none when disabled or without a home.
pub fn dir() -> Option<PathBuf> {
    match std::env::var_os("PEERHOST_CACHE_DIR") {
        Some(dir) if dir == "off" => None,
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("peerhost")),
    }
}

/// The name of the cached artifact of `wasm` for `engine`.
pub fn file_name(engine: &Engine, wasm: &[u8]) -> String {
    name("guest", engine, &[wasm])
}

/// `<prefix>-<hash>.cwasm`, the hash of `parts`, of this module's
/// pre-initialisation version and of `engine`'s compatibility.
pub fn name(prefix: &str, engine: &Engine, parts: &[&[u8]]) -> String {
    // SipHash with fixed keys: stable for one build of this binary, which
    // is all the key must be (a new build may change the engine anyway).
    let mut engine_hash = std::hash::DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    let mut key = Sha256::new();
    key.update(engine_hash.finish().to_le_bytes());
    key.update(crate::preinit::VERSION.as_bytes());
    for part in parts {
        key.update((part.len() as u64).to_le_bytes());
        key.update(part);
    }
    format!("{prefix}-{}.cwasm", hex::encode(&key.finalize()[..16]))
}

/// The guest component for `engine`: from the cache when a valid artifact
/// is there, else compiled (and cached when possible).
pub fn component(engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Component> {
    compiled(engine, &file_name(engine, wasm), "guest component", || {
        preinitialized(engine, wasm)
    })
}

/// Snapshots of logic versions kept in the cache directory (about 8 MB
/// each).
pub const KEPT_SNAPSHOTS: usize = 64;

/// Artifacts of one kind (the prefix of their name) kept in the cache
/// directory: the most recently used, by modification time (a load from
/// the cache touches the file). Snapshots of logic versions are many; the
/// guest and its instrumented form change with the binary only.
fn keep(name: &str) -> usize {
    match name.split('-').next() {
        Some("logic") => KEPT_SNAPSHOTS,
        _ => 4,
    }
}

/// The component cached as `name` when a valid artifact is there, else the
/// one `produce` makes, compiled (and cached when possible, the least
/// recently used artifacts of its kind beyond [`keep`] removed). `what`
/// names it in the log ("guest component").
pub fn compiled<'a>(
    engine: &Engine,
    name: &str,
    what: &str,
    produce: impl FnOnce() -> wasmtime::Result<std::borrow::Cow<'a, [u8]>>,
) -> wasmtime::Result<Component> {
    let Some(dir) = dir().filter(|d| private_dir(d)) else {
        tracing::info!("preparing the {what} for this machine (no cache: every start does)");
        let wasm = produce()?;
        let started = Instant::now();
        let component = Component::new(engine, &wasm)?;
        tracing::info!(
            "compiled the {what} ({} KiB) in {:.2?}, no cache",
            wasm.len() / 1024,
            started.elapsed()
        );
        return Ok(component);
    };
    let path = dir.join(name);
    if private_file(&path) {
        let started = Instant::now();
        match load(engine, &path) {
            Ok(component) => {
                // Recently used: the last to be pruned.
                if let Ok(file) = std::fs::File::options().write(true).open(&path) {
                    let _ = file.set_modified(std::time::SystemTime::now());
                }
                tracing::info!(
                    "loaded the compiled {what} from {} in {:.2?}",
                    path.display(),
                    started.elapsed()
                );
                return Ok(component);
            }
            Err(e) => {
                tracing::warn!("ignoring the cached {}: {e}", path.display());
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    tracing::info!(
        "preparing the {what} for this machine (the first start takes a few seconds; later ones load it from {})",
        dir.display()
    );
    let wasm = produce()?;
    let started = Instant::now();
    let artifact = engine.precompile_component(&wasm)?;
    tracing::info!(
        "compiled the {what} ({} KiB) in {:.2?} into {}",
        wasm.len() / 1024,
        started.elapsed(),
        dir.display()
    );
    if let Err(e) = store(&path, &artifact) {
        tracing::warn!("cannot cache the compiled {what} in {}: {e}", dir.display());
        return deserialize(engine, &artifact);
    }
    if let Some(prefix) = name.split('-').next() {
        prune(prefix, keep(name));
    }
    load(engine, &path).or_else(|_| deserialize(engine, &artifact))
}

/// Removes the oldest `<prefix>-*.cwasm` files of the cache beyond `keep`.
pub fn prune(prefix: &str, keep: usize) {
    let Some(dir) = dir() else { return };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let start = format!("{prefix}-");
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&start) && n.ends_with(".cwasm"))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= keep {
        return;
    }
    files.sort();
    for (_, path) in &files[..files.len() - keep] {
        let _ = std::fs::remove_file(path);
    }
}

/// `wasm` pre-initialised when it exports `wizer-initialize`, else as it is.
fn preinitialized<'a>(
    engine: &Engine,
    wasm: &'a [u8],
) -> wasmtime::Result<std::borrow::Cow<'a, [u8]>> {
    let started = Instant::now();
    Ok(match crate::preinit::preinitialize(engine, wasm)? {
        Some(snapshot) => {
            tracing::info!(
                "pre-initialised the guest component in {:.2?} ({} KiB snapshot)",
                started.elapsed(),
                snapshot.len() / 1024
            );
            std::borrow::Cow::Owned(snapshot)
        }
        None => std::borrow::Cow::Borrowed(wasm),
    })
}

#[allow(
    unsafe_code,
    reason = "deserialising native code: the file was written by this host into a private directory, and wasmtime checks its engine compatibility"
)]
fn load(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: `path` is in a directory only this user can write (checked by
    // `private_dir`), written by `store` from `Engine::precompile_component`;
    // wasmtime refuses artifacts of another version or configuration.
    unsafe { Component::deserialize_file(engine, path) }
}

#[allow(
    unsafe_code,
    reason = "deserialising native code this process compiled a moment ago"
)]
fn deserialize(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `artifact` was produced by `engine.precompile_component` in
    // this process and has not left its memory.
    unsafe { Component::deserialize(engine, artifact) }
}

fn store(path: &Path, artifact: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(artifact)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Creates `dir` (0700) when missing; true when it is not writable by group or others.
fn private_dir(dir: &Path) -> bool {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    if let Err(e) = builder.create(dir) {
        tracing::warn!("cannot create the cache {}: {e}", dir.display());
        return false;
    }
    let private = not_shared(dir);
    if !private {
        tracing::warn!(
            "not using the cache {}: it is writable by group or others",
            dir.display()
        );
    }
    private
}

fn private_file(path: &Path) -> bool {
    path.is_file() && not_shared(path)
}

#[cfg(unix)]
fn not_shared(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o022 == 0)
}

#[cfg(not(unix))]
fn not_shared(path: &Path) -> bool {
    path.exists()
}
