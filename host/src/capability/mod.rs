//! The capabilities of `wit/peer.wit`, one module per interface, and the
//! state every capability call decides with.
//!
//! - [`kv`]: `peerhost:peer/kv` over the peer's storage backend.
//! - [`log`]: `peerhost:peer/log` into the worker's tracing.
//! - [`context`]: the `peerhost:peer/context` interface.
//! - [`peers`]: `peerhost:peer/peers`, delegation to other peers.
//! - [`filesystem`]: `wasi:filesystem`, checked, then delegated to wasmtime-wasi.
//! - [`budget`]: what an invocation may write: audit lines, and bytes per
//!   invocation and per caller per minute.

pub use crate::budget;
pub mod context;
pub mod filesystem;
pub mod kv;
pub mod log;
pub mod peers;

use crate::audit::{CallerRecord, Record};
use crate::bindings::{Denial, GuestError, InvocationKind};
use crate::identity::Caller;
use crate::peer::Peer;
use crate::policy::{Action, Resource};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// A nested invocation's future, as a [`Router`] returns it.
pub type Routed<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<serde_json::Value, crate::error::InvocationError>>
            + Send
            + 'a,
    >,
>;

/// Runs the invocations a capability starts (`peers::send`, `peers::call`,
/// `peers::call_local`): the worker implements it, so no capability names
/// the worker, and a capability cannot tell a peer hosted here from one
/// reached over a transport.
pub trait Router: Send + Sync {
    /// Routes `invocation` from `from` to its contact `petname`, whose
    /// policy has already allowed it, within `deadline`; `chain` is the
    /// nested invocation's depth and the sender's place in its trace.
    fn delegate<'a>(
        self: Arc<Self>,
        from: &'a Arc<Peer>,
        petname: &'a str,
        contact: &'a crate::contacts::Contact,
        invocation: crate::invocation::Invocation,
        chain: crate::invocation::Chain,
        deadline: std::time::Instant,
    ) -> Routed<'a>;

    /// Runs `invoke` at `peer`, hosted here.
    fn run<'a>(
        self: Arc<Self>,
        peer: &'a Arc<Peer>,
        invoke: crate::invocation::InvocationRequest,
    ) -> Routed<'a>;
}

/// Which step of an invocation the guest is in; decided by the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `prepare`: the guest takes the logic the host read; no script code runs.
    Loading,
    /// `invoke`: logic and scripts run; every access is checked.
    Running,
}

/// Who acts in an invocation, and under which policy.
#[derive(Debug)]
pub struct Authority {
    /// The peer whose namespace and policy this is.
    pub peer: Arc<Peer>,
    /// Whose grants apply: the caller for a script (invoker rights), the
    /// peer itself for a call of its function (definer rights).
    pub principal: String,
    /// Who asked for the invocation.
    pub caller: Caller,
    /// The caller's id as text (`did:key:…`), encoded once per invocation
    /// rather than for every audit line.
    pub caller_id: Option<String>,
    /// Call or script.
    pub kind: InvocationKind,
    /// The current step.
    pub phase: Phase,
    /// SHA-256 of the script, for a script.
    pub script: Option<[u8; 32]>,
    /// How many delegations led here.
    pub depth: u32,
    /// The limits of this caller at this peer (worker, peer, caller narrowed).
    pub limits: crate::config::Limits,
    /// The peer's policy as it was when the invocation began: a policy
    /// replaced meanwhile applies from the next invocation on.
    pub policy: Arc<crate::policy::PeerPolicy>,
    /// The invocation's place in its trace: its id goes on every audit
    /// line, its context to every delegation.
    pub trace: Option<crate::trace::TraceContext>,
    /// The audit lines of this invocation, capped at
    /// [`budget::MAX_AUDIT_LINES`].
    pub lines: budget::AuditLines,
    /// The bytes this invocation wrote, shared with its file output streams.
    pub writes: Arc<budget::Writes>,
    /// The audit lines held while the guest runs, written together when it
    /// ends ([`Authority::finish`]); none: each line is written at once.
    held: Mutex<Option<Vec<Record>>>,
}

impl Drop for Authority {
    /// Lines still held (an invocation that ended on a path that did not
    /// finish it: refused at entry, no Store) are written now.
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Audit lines held at most before they are written mid-invocation.
pub const MAX_HELD: usize = 64;

impl Authority {
    /// The authority of an invocation by `caller` at `peer`, `depth`
    /// delegations deep: the caller as principal (a call switches to the
    /// peer's own), the caller's limits there, the policy in force now; in
    /// phase `Loading`.
    pub fn new(peer: &Arc<Peer>, caller: Caller, depth: u32) -> Authority {
        let writes = Arc::new(budget::Writes::new(peer, &caller));
        Authority {
            limits: peer.limits_for(&caller.principal),
            peer: peer.clone(),
            principal: caller.principal.clone(),
            caller_id: caller.id.map(|id| id.to_string()),
            caller,
            kind: InvocationKind::Script,
            phase: Phase::Loading,
            script: None,
            depth,
            policy: peer.policy(),
            trace: None,
            lines: budget::AuditLines::default(),
            writes,
            held: Mutex::new(None),
        }
    }

    /// Starts a new invocation's counts of audit lines and bytes (a reused
    /// instance runs several on one Authority).
    pub fn begin(&self) {
        let _ = self.lines.take_summary();
        self.writes.reset();
    }

    /// Holds the audit lines of the invocation from now on (its entry
    /// decision, the guest's), to write them together when it ends
    /// ([`Authority::finish`], or when the Authority is dropped), or once
    /// [`MAX_HELD`] are held. While the log's last append failed, each line
    /// is written at once instead: no invocation starts while its log is
    /// known not to take lines.
    pub fn hold_lines(&self) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
    }

    /// Ends an invocation: writes the lines held since
    /// [`Authority::hold_lines`] and one [`budget::DROPPED`] line saying how
    /// many decisions past [`budget::MAX_AUDIT_LINES`] had no line, if any,
    /// in one write. An error means the invocation's lines are not in the
    /// log: its answer must not be a success.
    pub fn finish(&self) -> Result<(), GuestError> {
        let mut batch = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default();
        if let Some((denied, reason)) = self.lines.take_summary() {
            batch.push(self.line(
                budget::DROPPED,
                &crate::policy::Resource::Peer.display(&self.peer.name),
                !denied,
                vec!["limits".to_owned()],
                Some(reason),
            ));
        }
        self.write_all(&batch)
    }

    /// Appends one decision to the peer's audit log (or holds it, see
    /// [`Authority::hold_lines`]), or only counts it past
    /// [`budget::MAX_AUDIT_LINES`] lines in this invocation (the decision
    /// stands either way, and is counted in the worker's metrics). The log
    /// is not optional: when it cannot be written, the action is refused.
    pub fn record(
        &self,
        action: &'static str,
        resource: &str,
        allowed: bool,
        policies: Vec<String>,
        reason: Option<String>,
    ) -> Result<(), GuestError> {
        self.peer.metrics.decided(&self.peer.label, action, allowed);
        if !self.lines.admit(action, allowed) {
            return Ok(());
        }
        let record = self.line(action, resource, allowed, policies, reason);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.as_mut() {
            Some(lines) => {
                lines.push(record);
                if lines.len() < MAX_HELD && !self.peer.audit.failing() {
                    return Ok(());
                }
                let batch = std::mem::take(lines);
                drop(held);
                self.write_all(&batch)
            }
            None => {
                drop(held);
                self.write_all(std::slice::from_ref(&record))
            }
        }
    }

    /// Audits a refusal under `[quotas]` (`quota`, deny, on the peer) with
    /// `reason`, its figures. The refusal stands even when the audit log
    /// cannot take the line (`record` says why in the worker's log).
    pub fn record_quota_refusal(&self, reason: &str) {
        self.peer
            .metrics
            .quota_refusals
            .get_or_create(&crate::metrics::PeerLabels {
                peer: self.peer.label.clone(),
            })
            .inc();
        let _ = self.record(
            "quota",
            &Resource::Peer.display(&self.peer.name),
            false,
            vec!["quotas".to_owned()],
            Some(reason.to_owned()),
        );
    }

    fn line(
        &self,
        action: &str,
        resource: &str,
        allowed: bool,
        policies: Vec<String>,
        reason: Option<String>,
    ) -> Record {
        let caller = CallerRecord {
            name: self.caller.principal.clone(),
            id: self.caller_id.clone(),
        };
        Record {
            policies,
            script: self.script.map(hex::encode),
            depth: self.depth,
            trace: self
                .trace
                .as_ref()
                .map(crate::trace::TraceContext::trace_hex),
            reason,
            ..Record::decision(
                &self.peer.name,
                caller,
                &self.principal,
                action,
                resource.to_owned(),
                allowed,
            )
        }
    }

    /// Writes `records`, charging their bytes to the invocation and the
    /// caller.
    fn write_all(&self, records: &[Record]) -> Result<(), GuestError> {
        if records.is_empty() {
            return Ok(());
        }
        let bytes = self.peer.audit.append_all(records).map_err(|e| {
            tracing::error!(
                target: "peerhost::audit",
                peer = %self.peer.name, path = %self.peer.audit.path().display(),
                "cannot write the audit log, refusing: {e}"
            );
            GuestError::Failed(format!(
                "the audit log of `{}` cannot be written; nothing is allowed without it",
                self.peer.name
            ))
        })?;
        self.writes.charge_audit(bytes);
        Ok(())
    }

    /// Decides `action` on `resource` with this principal, records the
    /// decision in the audit log and traces it. For host calls, which run on
    /// a wasmtime fiber.
    pub fn check(&self, action: Action, resource: &Resource) -> Result<(), GuestError> {
        let decision = self
            .policy
            .decide(&self.peer.name, &self.principal, action, resource);
        self.conclude(action, resource, decision)
    }

    /// [`Authority::check`] outside the guest, on the invoking thread's own
    /// stack: whether an invocation may start at all.
    pub fn check_before_entry(
        &self,
        action: Action,
        resource: &Resource,
    ) -> Result<(), GuestError> {
        let decision =
            self.policy
                .decide_on_thread_stack(&self.peer.name, &self.principal, action, resource);
        self.conclude(action, resource, decision)
    }

    fn conclude(
        &self,
        action: Action,
        resource: &Resource,
        decision: crate::policy::PolicyDecision,
    ) -> Result<(), GuestError> {
        // The resource may name a client string (a function, a petname):
        // the audit line, the trace and the denial show it cut alike.
        let mut shown = resource.display(&self.peer.name);
        crate::error::truncate_with_ellipsis(&mut shown, crate::audit::MAX_FIELD);
        self.record(
            action.name(),
            &shown,
            decision.allowed,
            decision.policies.clone(),
            None,
        )?;
        if decision.allowed {
            tracing::debug!(
                target: "peerhost::decision",
                peer = %self.peer.name, principal = %self.principal, caller = %self.caller.principal,
                action = action.name(), resource = %shown, policies = ?decision.policies,
                "allow"
            );
            Ok(())
        } else {
            // Cedar's evaluation errors may quote the resource.
            let errors: Vec<String> = decision
                .errors
                .iter()
                .map(|error| {
                    let mut error = error.clone();
                    crate::error::truncate_with_ellipsis(&mut error, crate::audit::MAX_FIELD);
                    error
                })
                .collect();
            tracing::info!(
                target: "peerhost::decision",
                peer = %self.peer.name, principal = %self.principal, caller = %self.caller.principal,
                action = action.name(), resource = %shown, policies = ?decision.policies,
                errors = ?errors,
                "deny"
            );
            Err(GuestError::Denied(Denial {
                action: action.name().to_owned(),
                resource: shown,
            }))
        }
    }
}

/// The data of one Store: one invocation of one peer.
pub struct InvocationState {
    /// WASI context: the preopens of the namespace and nothing else.
    pub wasi: WasiState,
    /// Who acts, under which policy.
    pub authority: Authority,
    /// Guest paths of open filesystem descriptors.
    pub descriptors: filesystem::Descriptors,
    /// Directory streams of the namespace root (see [`filesystem`]).
    pub listings: std::collections::HashSet<u32>,
    /// Memory, table and instance limits.
    pub limits: InvocationLimits,
    /// Set when the wall-time deadline stopped the guest.
    pub timed_out: bool,
    /// Log lines written in the current invocation.
    pub log_lines: u32,
    /// Epoch ticks the current invocation has run through.
    pub ticks: u32,
    /// The long-runner lane this invocation holds, once it has run longer
    /// than the free ticks (see `runtime`); released with the Store.
    pub lane: Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>,
    /// When the invocation must end, nested delegations included.
    pub deadline: Instant,
    /// Counts this instance in the worker's instances in use while alive.
    pub in_use: crate::metrics::InUse,
    /// What routes nested invocations (the worker). Weak: a worker keeps
    /// idle instances (with `instances = "per-caller"`), whose Stores must
    /// not keep it alive in turn.
    pub router: std::sync::Weak<dyn Router>,
}

/// The WASI part of [`InvocationState`], split out so that the checked
/// filesystem can borrow it beside the [`Authority`].
pub struct WasiState {
    /// The WASI context.
    pub ctx: WasiCtx,
    /// Resources handed to the guest.
    pub table: ResourceTable,
}

impl WasiView for WasiState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi.ctx()
    }
}

/// [`StoreLimits`] that remember whether a limit was hit, so a trap that
/// follows a refused `memory.grow` is reported as `limit`.
pub struct InvocationLimits {
    inner: StoreLimits,
    /// A memory or table growth was refused.
    pub hit: bool,
    /// The most linear memory one memory may have, in bytes.
    pub memory: usize,
}

impl InvocationLimits {
    /// Limits for an instance with at most `memory` bytes of linear memory.
    pub fn new(memory: usize) -> InvocationLimits {
        InvocationLimits {
            inner: wasmtime::StoreLimitsBuilder::new()
                .memory_size(memory)
                .instances(4)
                .tables(16)
                .memories(4)
                .table_elements(100_000)
                .build(),
            hit: false,
            memory,
        }
    }
}

impl ResourceLimiter for InvocationLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        self.hit |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.table_growing(current, desired, maximum)?;
        self.hit |= !allowed;
        Ok(allowed)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

impl crate::bindings::peerhost::peer::types::Host for InvocationState {}

impl InvocationState {
    /// The wall time one invocation of this Store may run.
    pub fn wall_time(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.authority.limits.wall_time_ms)
    }

    /// Starts one run on this Store, fresh or reused: `depth` delegations
    /// deep, ending by its own wall time or `outer`, its parent's deadline;
    /// the counts of the last run (log lines, ticks, the long-runner lane)
    /// cleared, and the peer's policy as it is now.
    pub fn begin_run(&mut self, depth: u32, outer: Option<Instant>) {
        self.deadline = crate::runtime::deadline(self.wall_time(), outer);
        self.timed_out = false;
        self.log_lines = 0;
        self.ticks = 0;
        self.release_lane();
        self.authority.depth = depth;
        self.authority.policy = self.authority.peer.policy();
    }

    /// Gives up the long-runner lane before waiting on another invocation
    /// (a delegation): the nested one may need the lane itself. The guest
    /// queues for a lane again at its next tick.
    pub fn release_lane(&self) {
        drop(self.lane.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    /// The router, while the worker is running.
    pub fn router(&self) -> Result<Arc<dyn Router>, GuestError> {
        self.router
            .upgrade()
            .ok_or_else(|| GuestError::Failed("the worker is shutting down".to_owned()))
    }
}

macro_rules! opaque_debug {
    ($($ty:ty),*) => {$(
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty)).finish_non_exhaustive()
            }
        }
    )*};
}

opaque_debug!(
    InvocationState,
    WasiState,
    InvocationLimits,
    filesystem::CheckedFs<'_>
);

/// An invocation admitted under quota: the time from its admission until
/// this is dropped — however the invocation ends — is charged to its payer.
#[derive(Debug)]
#[must_use = "the invocation's time is charged when its admission is dropped"]
pub struct Admission {
    peer: Arc<Peer>,
    payer: crate::quota::Payer,
    admitted: Instant,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.peer.usage.charge(&self.payer, self.admitted.elapsed());
    }
}

/// Admits the invocation of `authority`, whose entry (`call`,
/// `script.accept`, `logic.read`, a push) has just been allowed: under the
/// caller's quota at the peer and, for a stranger, the strangers' budget.
/// Only now may a stranger get an account. A refusal is audited (`quota`,
/// deny) and says when to retry.
pub fn admit(authority: &Authority) -> Result<Admission, crate::error::InvocationError> {
    let peer = &authority.peer;
    let caller = &authority.caller;
    let payer = crate::quota::Payer::of(caller);
    let quotas = &peer.config.quotas;
    let quota = quotas.of(&peer.name, &caller.principal);
    match peer.usage.admit(&payer, quota, quotas.for_strangers()) {
        Ok(()) => Ok(Admission {
            peer: peer.clone(),
            payer,
            admitted: Instant::now(),
        }),
        Err(e) => {
            tracing::info!(
                target: "peerhost::decision",
                peer = %peer.name, caller = %caller.principal,
                "over quota: {}", e.message
            );
            authority.record_quota_refusal(&e.message);
            Err(e)
        }
    }
}
