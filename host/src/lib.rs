//! # peerhost
//!
//! A WebAssembly-sandboxed execution host for decentralized backend
//! ownership. Each peer owns its namespace, its Rhai logic and its Cedar
//! policy; every invocation runs in a fresh wasmtime Store of the default
//! guest component, and every capability the guest touches is an import the
//! host checks against the peer's policy.
//!
//! # Layout
//! - [`identity`]: Ed25519 keys and `did:key` peer ids; [`contacts`]: petnames.
//! - [`envelope`]: signed invocations between peers, replay protection.
//! - [`audit`]: the per-peer decision log; [`quota`]: caller-pays quotas, the strangers' shared budget, usage.
//! - [`config`]: `peerhost.toml` and `peer.toml`, strict, errors with file and line.
//! - [`deployment`]: a deployment directory and the peers it hosts.
//! - [`peer`]: one peer: name, limits, policy, namespace, kv store.
//! - [`namespace`]: the only module that opens host directories.
//! - [`logic`]: a peer's Rhai modules, read and cached by the host.
//! - [`policy`]: the Cedar schema, a peer's policy, decisions.
//! - [`capability`]: one module per WIT interface, and the checked WASI filesystem.
//! - [`preinit`]: pre-initialising the guest (wasmtime-wizer) before it is compiled.
//! - [`cache`]: the compiled guest component on disk.
//! - [`runtime`]: engine, compiled guest, one Store per invocation, limits.
//! - [`session`]: instances reused by one caller, opt-in.
//! - [`worker`]: the peers one process hosts.
//! - [`server`]: the HTTP API; [`client`]: the CLI's client for it.
//! - [`scaffold`]: `peerhost init`'s demo deployment.
//! - [`error`]: the typed invocation error.
//! - [`fuzz`]: entry points of the fuzz targets in `fuzz/`, replayed by `make test`.
#![deny(missing_docs)]

pub mod audit;
mod bindings;
pub mod budget;
pub mod cache;
pub mod capability;
pub mod client;
pub mod config;
pub mod contacts;
pub mod deployment;
pub mod envelope;
pub mod error;
pub mod fuzz;
pub mod grants;
pub mod identity;
pub mod invocation;
pub mod kv;
#[cfg(test)]
mod layering;
pub mod logic;
pub mod manage;
pub mod namespace;
pub mod peer;
pub mod policy;
pub mod policy_tools;
pub mod preinit;
pub mod quota;
pub mod replay;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod session;
pub mod worker;
