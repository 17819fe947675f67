//! The only module that opens host directories for a peer.
//!
//! A peer's namespace is `peers/<name>/data`, which its guest sees as the WASI
//! preopen `/`; its logic `peers/<name>/logic` is preopened read-only as
//! `/logic`. Nothing else of the host is handed to a guest. Everything else
//! in peerhost receives an opened [`Dir`] or a [`WasiCtx`] built here.

use crate::config::DeploymentError;
use std::path::{Path, PathBuf};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

/// The guest path of the logic preopen.
pub const LOGIC_PREOPEN: &str = "/logic";

/// The host directories of one peer.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// `peers/<name>/data`: the namespace root.
    pub data: PathBuf,
    /// `peers/<name>/logic`: the peer's Rhai modules.
    pub logic: PathBuf,
}

impl Namespace {
    /// Opens the namespace of the peer in `peer_dir`, creating `data/` and
    /// `logic/` when missing. The kv store (see [`crate::kv::open`]) sits
    /// beside the namespace, not in it: nothing a guest names under `/` can
    /// reach its data.
    pub fn open(peer_dir: &Path) -> Result<Namespace, DeploymentError> {
        let data = peer_dir.join("data");
        let logic = peer_dir.join("logic");
        for dir in [&data, &logic] {
            std::fs::create_dir_all(dir)
                .map_err(|e| DeploymentError::file(dir, format!("cannot create directory: {e}")))?;
        }
        Ok(Namespace { data, logic })
    }

    /// A WASI context whose only preopens are `data/` as `/` (read-write)
    /// and `logic/` as `/logic` (read-only); no environment, arguments,
    /// network or standard input. File I/O runs on the invoking thread.
    ///
    /// # Ambient Authority
    /// wasmtime-wasi opens both directories by host path.
    pub fn wasi_ctx(&self) -> wasmtime::Result<WasiCtx> {
        let mut builder = WasiCtxBuilder::new();
        // Namespace files are small and local: doing their I/O on the
        // invoking thread costs microseconds, a hop to tokio's blocking pool
        // costs a thread wake-up per call (measured: most of an invocation).
        builder.allow_blocking_current_thread(true);
        builder
            .preopened_dir(&self.data, "/", FsPerms::ReadWrite)?
            .preopened_dir(&self.logic, LOGIC_PREOPEN, FsPerms::ReadOnly)?;
        Ok(builder.build())
    }
}
