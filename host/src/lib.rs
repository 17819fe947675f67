//! # peerhost
//!
//! A WebAssembly-sandboxed execution host for decentralized backend
//! ownership. Each peer owns its namespace, its Rhai logic and its Cedar
//! policy; every invocation runs in a fresh wasmtime Store of the default
//! guest component, and every capability the guest touches is an import the
//! host checks against the peer's policy.
//!
//! # Layout
//! Floors, lowest first; a module uses only its own floor and those below
//! (the table is `FLOORS` in `layering.rs`, whose test fails on an upward
//! import):
//! 0. base: [`error`] (the typed invocation error, cuts), `bindings` (WIT).
//! 1. identity: [`identity`]: keys, `did:key` ids, callers, `anonymous`, name rules.
//! 2. invocation: [`invocation`] (what is invoked, depth and result bounds),
//!    [`envelope`] (signed invocations between peers).
//! 3. config and storage: [`config`] (`peerhost.toml`, `peer.toml`, errors with
//!    file and line), [`quota`] (caller-pays quotas, the strangers' budget, usage),
//!    [`contacts`] (petnames), [`audit`] (the per-peer decision log), [`files`] (bounded, non-blocking
//!    reads and atomic writes), [`logic`] (a peer's Rhai modules, read and cached), [`replay`] (nonces on disk, push
//!    order), [`namespace`] (the only module that opens host directories), [`kv`]
//!    (the [`kv::KvBackend`] trait and the file backend).
//! 4. policy: [`policy`] (the Cedar schema, decisions), [`grants`] (who may do
//!    what), [`policy_tools`] (policy check and test).
//! 5. peer: [`peer`] (one peer as the host holds it), [`budget`] (bytes and
//!    audit lines an invocation and a caller may write), [`deployment`],
//!    [`scaffold`] (`peerhost init`'s demo).
//! 6. runtime: [`preinit`], [`cache`], [`capability`] (one module per WIT
//!    interface, the checked WASI filesystem, [`capability::Router`] for nested
//!    invocations), [`runtime`] (engine, one Store per invocation, limits),
//!    [`session`] (instances reused by one caller, opt-in).
//! 7. worker: [`host_operations`] (answered by the host, no guest), [`worker`] (the peers one process
//!    hosts; [`worker::Transport`] to reach other workers).
//! 8. edge: [`server`] (the HTTP API), [`client`] (HTTP client and transport),
//!    [`cluster`] (NATS: peers reached by id, envelopes as requests),
//!    [`fuzz`] (entry points of the fuzz targets, replayed by `make test`).
#![deny(missing_docs)]

pub mod audit;
mod bindings;
pub mod budget;
pub mod cache;
pub mod capability;
pub mod client;
pub mod cluster;
pub mod collections;
pub mod config;
pub mod console;
pub mod contacts;
pub mod deployment;
pub mod envelope;
pub mod error;
pub mod files;
pub mod fuzz;
pub mod grants;
pub mod host_operations;
pub mod identity;
pub mod invocation;
pub mod kv;
#[cfg(test)]
mod layering;
pub mod logic;
pub mod metrics;
/// moto's S3 server for the S3 tests, shared with the e2e suite.
#[cfg(test)]
#[path = "../../tests/common/moto.rs"]
#[allow(dead_code)]
mod moto;
pub mod namespace;
pub mod otlp;
pub mod peer;
pub mod policy;
pub mod policy_tools;
pub mod preinit;
pub mod quota;
pub mod records;
pub mod replay;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod session;
pub mod trace;
pub mod websocket;
pub mod worker;

// The facade: what a program that hosts peers itself (the benches, the
// tests, an embedder) needs, without knowing which floor holds it.
pub use client::Http;
pub use deployment::Deployment;
pub use envelope::Envelope;
pub use error::{ErrorKind, InvocationError};
pub use identity::{Caller, PeerId, PeerKey};
pub use invocation::{Invocation, InvocationRequest};
pub use peer::Peer;
pub use runtime::Runtime;
pub use scaffold::{init, new_peer};
pub use server::serve;
pub use worker::{Cluster, Transport, Worker};
