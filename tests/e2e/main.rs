//! End-to-end tests: each drives the real `peerhost` binary (CLI in-process
//! over a deployment, or `peerhost serve` on a free loopback port over HTTP)
//! on a fresh `peerhost init` deployment in a temporary directory.

/// moto's S3 server on loopback, shared with the kv unit tests.
#[path = "../common/moto.rs"]
#[allow(dead_code)]
mod moto;
/// A NATS cluster on loopback, shared with the bench.
#[path = "../common/nats.rs"]
#[allow(dead_code)]
mod nats;
/// Fixtures: demo deployments, the CLI, a server, an HTTP client.
mod support;

/// The adversarial suite: hostile scripts and requests get typed errors, nothing outside changes, the worker answers.
mod adversarial;
/// Malformed requests, scripts, configs and policies get typed, located errors.
mod bad_input;
/// The compiled guest component cached on disk.
mod cache;
/// wit/peer.wit and policies/peerhost.cedarschema name the same capabilities.
mod catalogue;
/// Workers in a NATS cluster: peers by id alone, envelopes in parts, a node lost.
mod cluster;
/// The web console in headless Chromium: sign in, grants, the live audit tail; 401 without the token.
mod console;
/// Signed envelopes, delegation between peers in one worker and across two, audit lines.
mod delegation;
/// Who may do what: audit grants (Cedar partial evaluation), policy check and test.
mod grants;
/// Issue-12 hardening: deep policies, replayed envelopes, tenants' strings, quotas and files.
mod hardening;
/// Issue-12 hardening, audit chain: long lines and torn tails never break `audit verify`.
mod hardening_audit;
/// Issue-12 hardening, HTTP front: connections that never send a request, or go quiet, are closed.
mod hardening_http;
/// Issue-12 hardening, per-invocation bounds: client strings cut, audit lines and bytes written capped, kv values readable.
mod hardening_limits;
/// Issue-12 hardening, strangers: one aggregate budget, bounded and expiring per-stranger state.
mod hardening_quota;
/// Slow and greedy HTTP clients are held to the `[http]` limits.
mod http_front;
/// A script cannot leave its namespace on any backend: `..`, absolute paths, symlinks out, another peer's objects.
mod isolation;
/// The kv store on each backend (sqlite, fs, s3): the same operations, exact under concurrent writers, durable across kill -9, within quotas, `failed` when corrupt.
mod kv_backends;
/// Peers read at first use once indexed; `peerhost check` reads them all.
mod lazy_peers;
/// Runaway scripts hit typed limits; the worker survives.
mod limits;
/// The library, overrides and extensions; logic edits validated, pushed, shown.
mod logic;
/// The namespace on a directory, in SQLite and in S3: the same answers, fs_bytes on each, a peer on s3 served by a second worker.
mod namespace_backends;
/// Operating a worker: JSON logs with invocation ids, `/metrics` counting exactly.
mod operating;
/// Every capability call is decided by the target's Cedar policy.
mod policy;
/// Caller pays: per-caller quotas, 429 with Retry-After, usage per caller.
mod quota;
/// Serve the demo, call alice and bob over HTTP and the CLI; data lands in the namespace.
mod serve;
/// `peerhost storage migrate` and `clean`: every value and file kept, a served peer refused.
mod storage;
/// The WebSocket transport between workers: the delegation suite over it, reconnection, its limits.
mod websocket;
