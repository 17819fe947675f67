//! The wasmtime side: the engine, the guest component compiled once per
//! process and pre-instantiated, and one fresh Store per invocation.
//!
//! An invocation: decide `call` (for a call), build a Store whose WASI
//! context preopens only the peer's namespace, instantiate, `prepare` (the
//! guest loads `/logic`), switch to [`Phase::Running`], `invoke`, and drop the
//! Store, whatever happened. An epoch ticker interrupts a guest past its
//! wall-time limit; the Store that trapped is never reused.

use crate::bindings::{
    CallRequest, GuestError, GuestLimits, InvocationKind, LogicModule, PeerPre, Request,
    ScriptRequest,
};
use crate::capability::Admission;
use crate::capability::filesystem::CheckedFilesystem;
use crate::capability::{Authority, InvocationLimits, InvocationState, Phase, Router, WasiState};
use crate::error::InvocationError;
use crate::identity::Caller;
pub use crate::invocation::{Invocation, InvocationRequest, MAX_RESULT};
use crate::logic::Modules;
use crate::peer::Peer;
use crate::policy::{Action, Resource};
pub use crate::session::Session;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap, UpdateDeadline};

/// The default guest component, built by `host/build.rs`.
pub const GUEST_COMPONENT: &[u8] = include_bytes!(env!("PEERHOST_GUEST_WASM"));

/// How often the epoch advances: the granularity of wall-time limits and
/// of yields to other tasks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Most resources (descriptors, streams) a guest may hold in its table.
pub const MAX_TABLE: usize = 4096;

fn table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_TABLE);
    table
}

/// Stack the guest may use.
pub const MAX_WASM_STACK: usize = 1 << 20;

/// The logic's hook that may refuse a delegated script.
pub const ON_SCRIPT: &str = "on_script";

/// The engine and the pre-instantiated guest, shared by every peer.
pub struct Runtime {
    engine: Engine,
    pre: PeerPre<InvocationState>,
    long_runners: Arc<tokio::sync::Semaphore>,
    snapshots: snapshot::Snapshots,
    allocation: Allocation,
}

/// Epoch ticks an invocation runs freely before it counts as long-running:
/// two ticks, more than 10 ms of guest time.
pub const FREE_TICKS: u32 = 2;

/// Threads long-running invocations may occupy at once: all but one of the
/// machine's, so that short invocations (most of them) always find a core
/// while other peers run `loop {}` at full rate. Long runners take turns,
/// a tick each, in arrival order; the wait counts against their own wall
/// time, not anyone else's.
fn long_runner_lanes() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .max(1)
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

mod engine;
pub use engine::{Allocation, POOLED_INSTANCES, RuntimeError};
pub mod snapshot;
use engine::{config, link, runtime_error, spawn_epoch_ticker};

impl Runtime {
    /// A runtime for the default guest component, pooled; on demand when
    /// the pool cannot be reserved (a low address-space limit).
    pub fn new() -> Result<Runtime, RuntimeError> {
        Runtime::with_component(GUEST_COMPONENT, Allocation::default()).or_else(|e| {
            tracing::warn!("cannot reserve the instance pool ({e}); allocating on demand");
            Runtime::with_component(GUEST_COMPONENT, Allocation::OnDemand)
        })
    }

    /// A runtime for the guest component `wasm` (which must target world
    /// `peer`), allocating instances as `allocation` says.
    pub fn with_component(wasm: &[u8], allocation: Allocation) -> Result<Runtime, RuntimeError> {
        let engine =
            Engine::new(&config(allocation)).map_err(runtime_error("configuring wasmtime"))?;
        let component = crate::cache::component(&engine, wasm)
            .map_err(runtime_error("compiling the guest component"))?;
        let mut linker = Linker::<InvocationState>::new(&engine);
        link(&mut linker).map_err(runtime_error("linking capabilities"))?;
        let pre = linker.instantiate_pre(&component).map_err(runtime_error(
            "the guest component does not fit the peer world",
        ))?;
        let pre = PeerPre::new(pre).map_err(runtime_error(
            "the guest component does not export `invocation`",
        ))?;
        spawn_epoch_ticker(&engine);
        let snapshots = snapshot::Snapshots::new(
            &engine,
            &linker,
            wasm,
            &component,
            crate::config::DEFAULT_SNAPSHOT_AFTER,
        );
        Ok(Runtime {
            engine,
            pre,
            long_runners: Arc::new(tokio::sync::Semaphore::new(long_runner_lanes())),
            snapshots,
            allocation,
        })
    }

    /// The instances that may be alive at once: the pool's size, or `None`
    /// when instances are allocated on demand.
    pub fn instance_slots(&self) -> Option<u32> {
        match self.allocation {
            Allocation::Pooling { instances } => Some(instances),
            Allocation::OnDemand => None,
        }
    }

    /// This runtime, building a snapshot of a logic version after `after`
    /// fresh instances of it (`snapshot_after` of `peerhost.toml`; 0:
    /// never). See [`snapshot`].
    pub fn snapshot_after(mut self, after: u32) -> Runtime {
        self.snapshots.set_after(after);
        self
    }

    /// Snapshots of logic versions ready now.
    pub fn snapshots_ready(&self) -> usize {
        self.snapshots.ready()
    }

    /// Fresh instances started from a snapshot of their logic so far.
    pub fn snapshot_starts(&self) -> u64 {
        self.snapshots.starts()
    }

    /// Runs `invoke` in `peer`'s sandbox, on a fresh instance. Decides
    /// first: `call` on the function for a call (which then runs with the
    /// peer's authority), `script.accept` for a script (which keeps the
    /// caller's); then admits it under quota. Nothing is built for an
    /// invocation refused either way: no Store, no account.
    pub async fn invoke<R: Router + 'static>(
        &self,
        router: &Arc<R>,
        peer: &Arc<Peer>,
        invoke: InvocationRequest,
    ) -> Result<Value, InvocationError> {
        let InvocationRequest {
            caller,
            invocation,
            depth,
            deadline: outer,
            trace,
        } = invoke;
        let mut authority = Authority::new(peer, caller, depth);
        authority.trace = trace;
        // Charged to the caller when dropped, after the run.
        let (request, _admission) = decide(&mut authority, invocation)?;
        let mut store = self.store(Arc::downgrade(router) as _, authority, outer)?;
        let result = run(&mut store, Guest::Fresh(self), &request).await;
        // The Store is dropped on every return path, trapped or not.
        result.map_err(|e| failure(&mut store, e))
    }

    /// Instantiates `peer`'s guest once for `caller` and keeps it for
    /// several invocations: the reused-instance mode that `make bench`
    /// compares with a fresh instance per invocation. Every decision and
    /// audit line is the same as in [`Runtime::invoke`]; the instance
    /// serves this one caller only, so nothing it keeps between runs (the
    /// guest's heap, evaluated modules, the cached `ctx`) can reach another
    /// caller. A run that traps or times out ends the session.
    pub async fn session<R: Router + 'static>(
        &self,
        router: &Arc<R>,
        peer: &Arc<Peer>,
        caller: Caller,
    ) -> Result<Session, InvocationError> {
        let mut store = self.store(
            Arc::downgrade(router) as _,
            Authority::new(peer, caller, 0),
            None,
        )?;
        let budget = store
            .data()
            .deadline
            .saturating_duration_since(Instant::now())
            + EPOCH_TICK;
        match bounded(budget, self.instantiate(&mut store)).await {
            Ok((instance, exported, logic)) => Ok(Session::new(store, instance, exported, logic)),
            Err(e) => Err(failure(&mut store, e)),
        }
    }

    /// A Store for one instance of the guest of `authority`'s peer, with
    /// the caller's limits and a deadline within `outer`, the parent's, if
    /// any.
    fn store(
        &self,
        router: std::sync::Weak<dyn Router>,
        authority: Authority,
        outer: Option<Instant>,
    ) -> Result<Store<InvocationState>, InvocationError> {
        let peer = authority.peer.clone();
        let limits = authority.limits;
        let deadline = deadline(Duration::from_millis(limits.wall_time_ms), outer);
        let memory =
            usize::try_from(limits.memory_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        let wasi = peer.namespace.wasi_ctx().map_err(|e| {
            InvocationError::failed(format!("cannot open the namespace of `{}`: {e}", peer.name))
        })?;

        let in_use = peer.metrics.instance();
        let state = InvocationState {
            in_use,
            wasi: WasiState {
                ctx: wasi,
                table: table(),
            },
            authority,
            descriptors: HashMap::new(),
            listings: Default::default(),
            limits: InvocationLimits::new(memory),
            timed_out: false,
            log_lines: 0,
            ticks: 0,
            lane: Default::default(),
            deadline,
            router,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(1);
        let lanes = self.long_runners.clone();
        store.epoch_deadline_callback(move |mut ctx| {
            let state = ctx.data_mut();
            if Instant::now() >= state.deadline {
                state.timed_out = true;
                let peer = &state.authority.peer;
                peer.metrics
                    .epoch_interruptions
                    .get_or_create(&crate::metrics::PeerLabels {
                        peer: peer.label.clone(),
                    })
                    .inc();
                return Ok(UpdateDeadline::Interrupt);
            }
            state.ticks = state.ticks.saturating_add(1);
            if state.ticks <= FREE_TICKS {
                return Ok(UpdateDeadline::Yield(1));
            }
            // A long runner gives up its lane at every tick and queues for
            // one again behind the other long runners.
            let lane = state.lane.clone();
            drop(lane.lock().unwrap_or_else(|p| p.into_inner()).take());
            let lanes = lanes.clone();
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(async move {
                    if let Ok(permit) = lanes.acquire_owned().await {
                        *lane.lock().unwrap_or_else(|p| p.into_inner()) = Some(permit);
                    }
                }),
            ))
        });
        Ok(store)
    }

    /// Instantiates the guest and runs `prepare` with the peer's current
    /// logic; returns the instance and the logic's hooks, in phase `Running`.
    async fn instantiate(
        &self,
        store: &mut Store<InvocationState>,
    ) -> Result<(crate::bindings::Peer, Vec<String>, Arc<Modules>), Failure> {
        let started = Instant::now();
        store.data_mut().authority.phase = Phase::Loading;
        let peer = store.data().authority.peer.clone();
        let logic = peer.logic.modules().map_err(|e| {
            Failure::Guest(GuestError::Failed(format!("cannot read the logic: {e}")))
        })?;
        let limits = GuestLimits {
            operations: store.data().authority.limits.operations,
        };
        let memory = store.data().limits.memory;
        let snapshot = self.snapshots.get(&logic, &peer.name, memory);
        let (instance, exported) = match snapshot {
            Some(snapshot) => snapshot.instantiate(store, limits).await?,
            None => {
                let instance = self
                    .pre
                    .instantiate_async(&mut *store)
                    .await
                    .map_err(Failure::Trap)?;
                let exported = instance
                    .peerhost_peer_invocation()
                    .call_prepare(&mut *store, &logic, limits)
                    .await
                    .map_err(Failure::Trap)?
                    .map_err(Failure::Guest)?;
                (instance, exported)
            }
        };
        store.data_mut().authority.phase = Phase::Running;
        tracing::debug!(
            target: "peerhost::runtime",
            peer = %store.data().authority.peer.name,
            ready = ?started.elapsed(),
            "instance ready"
        );
        Ok((instance, exported, logic))
    }
}

/// The deadline of an invocation that may run for `wall_time`, within its
/// parent's deadline `outer` if it has one: a nested invocation never
/// outlives its parent. (`wall_time_ms` is validated to at most an hour.)
pub(crate) fn deadline(wall_time: Duration, outer: Option<Instant>) -> Instant {
    let own = Instant::now() + wall_time;
    outer.map_or(own, |outer| outer.min(own))
}

/// Decides whether `invocation` may start and turns it into the guest's
/// request: `call` on the function (then the peer's own authority, definer
/// rights), or `script.accept` (the caller's authority, invoker rights).
/// Only an allowed entry is admitted under quota (see [`crate::quota`]):
/// a caller the policy refuses costs no account.
pub(crate) fn decide(
    authority: &mut Authority,
    invocation: Invocation,
) -> Result<(Request, Admission), InvocationError> {
    authority.begin();
    // Every line of the invocation, the entry decision's first, goes out
    // in one append when it ends; refused here, they go out now.
    authority.hold_lines();
    let decided = decide_entry(authority, invocation);
    if decided.is_err() {
        let _ = authority.finish();
    }
    decided
}

fn decide_entry(
    authority: &mut Authority,
    invocation: Invocation,
) -> Result<(Request, Admission), InvocationError> {
    authority.principal = authority.caller.principal.clone();
    authority.kind = InvocationKind::Script;
    authority.script = None;
    Ok(match invocation {
        Invocation::Call { function, args } => {
            authority
                .check_before_entry(Action::Call, &Resource::Function(function.clone()))
                .map_err(InvocationError::from)?;
            let admission = crate::capability::admit(authority)?;
            authority.principal = authority.peer.name.clone();
            authority.kind = InvocationKind::Call;
            let request = Request::Call(CallRequest {
                function,
                args: args.to_string(),
            });
            (request, admission)
        }
        Invocation::ShowLogic { .. }
        | Invocation::PushLogic { .. }
        | Invocation::PushPolicy { .. } => {
            return Err(InvocationError::invalid(
                "the host answers this itself; no guest runs it",
            ));
        }
        Invocation::Script { script, params } => {
            authority.script = Some(crate::envelope::sha256(&script));
            authority
                .check_before_entry(Action::ScriptAccept, &Resource::Peer)
                .map_err(InvocationError::from)?;
            let admission = crate::capability::admit(authority)?;
            let request = Request::Script(ScriptRequest {
                script,
                params: params.to_string(),
            });
            (request, admission)
        }
    })
}

/// Epoch interruption cannot stop a guest blocked inside a host call (a
/// poll, a delegation): the same deadline bounds the whole future.
async fn bounded<T>(
    budget: Duration,
    run: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(budget, run).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Timeout),
    }
}

/// Where the guest of one run comes from.
pub(crate) enum Guest<'a> {
    /// A new instance, made inside the run's deadline.
    Fresh(&'a Runtime),
    /// A session's instance, prepared before.
    Kept {
        instance: &'a crate::bindings::Peer,
        exported: &'a [String],
    },
}

/// Runs `request`, decided and admitted, on `guest` in `store`: the one
/// path of fresh and reused instances alike. The Store's deadline bounds it
/// (epoch ticks inside the guest, a timeout around host calls); the audit
/// lines of the invocation (held since [`decide`]) are written in one
/// append after it, whatever happened, before its answer is returned.
pub(crate) async fn run(
    store: &mut Store<InvocationState>,
    guest: Guest<'_>,
    request: &Request,
) -> Result<Value, Failure> {
    let budget = store
        .data()
        .deadline
        .saturating_duration_since(Instant::now())
        + EPOCH_TICK;
    let result = bounded(budget, async {
        match guest {
            Guest::Fresh(runtime) => {
                let (instance, exported, _) = runtime.instantiate(store).await?;
                execute(store, &instance, &exported, request).await
            }
            Guest::Kept { instance, exported } => execute(store, instance, exported, request).await,
        }
    })
    .await;
    // No answer before its files are stored (a backend may hold writes:
    // the S3 one puts whole objects) and its audit lines written: either
    // failing makes a success `failed` (an error stays the error it was).
    let stored = match &store.data().authority.peer.namespace.backend {
        Some(ns) => ns.sync().map_err(|e| {
            tracing::warn!(target: "peerhost::sandbox", "the namespace's writes are not stored: {e}");
            GuestError::Failed(format!("the namespace's writes are not stored: {e}"))
        }),
        None => Ok(()),
    };
    match (stored, store.data().authority.finish(), result) {
        (_, Err(e), Ok(_)) | (Err(e), _, Ok(_)) => Err(Failure::Guest(e)),
        (_, _, result) => result,
    }
}

/// The caller's error for a run that failed.
pub(crate) fn failure(store: &mut Store<InvocationState>, e: Failure) -> InvocationError {
    let wall_time = store.data().wall_time();
    match e {
        Failure::Guest(e) => InvocationError::from(e),
        Failure::Timeout => {
            store.data_mut().timed_out = true;
            trap_error(
                store.data(),
                &wasmtime::Error::msg("wall-time limit reached in a host call"),
                wall_time,
            )
        }
        Failure::Trap(e) => trap_error(store.data(), &e, wall_time),
    }
}

/// Runs `request` on a prepared instance: the logic's `on_script` hook
/// first for a script, then `invoke`; checks the result's size and JSON.
async fn execute(
    store: &mut Store<InvocationState>,
    instance: &crate::bindings::Peer,
    exported: &[String],
    request: &Request,
) -> Result<Value, Failure> {
    let started = Instant::now();
    let invocation = instance.peerhost_peer_invocation();
    if let Request::Script(script) = request
        && exported.iter().any(|f| f == ON_SCRIPT)
    {
        on_script(store, invocation, &script.script).await?;
    }
    let text = invocation
        .call_invoke(&mut *store, request)
        .await
        .map_err(Failure::Trap)?
        .map_err(Failure::Guest)?;
    tracing::debug!(
        target: "peerhost::runtime",
        peer = %store.data().authority.peer.name,
        invoke = ?started.elapsed(),
        "invocation timings"
    );
    if text.len() > MAX_RESULT {
        return Err(Failure::Guest(GuestError::Limit(format!(
            "the result is {} bytes; the limit is {MAX_RESULT}",
            text.len()
        ))));
    }
    serde_json::from_str(&text).map_err(|e| {
        Failure::Guest(GuestError::Failed(format!(
            "the guest returned invalid JSON: {e}"
        )))
    })
}

/// Runs the logic's `on_script(ctx, script)` with the peer's own authority,
/// in the instance that will run the script, before any of the script runs.
/// Anything but `true` refuses the script; the verdict is audited.
async fn on_script(
    store: &mut Store<InvocationState>,
    invocation: &crate::bindings::exports::peerhost::peer::invocation::Guest,
    script: &str,
) -> Result<(), Failure> {
    let authority = &mut store.data_mut().authority;
    let caller_principal = std::mem::replace(&mut authority.principal, authority.peer.name.clone());
    let verdict = invocation
        .call_invoke(&mut *store, &Request::OnScript(script.to_owned()))
        .await
        .map_err(Failure::Trap)?;
    let authority = &mut store.data_mut().authority;
    authority.principal = caller_principal;
    let refusal = match verdict {
        Ok(text) if text == "true" => None,
        Ok(text) => Some(format!("on_script returned {text}")),
        Err(e) => Some(format!(
            "on_script failed: {}",
            InvocationError::from(e).message
        )),
    }
    .map(|mut reason| {
        // The hook's words are the logic's and the script's: cut for the
        // audit line and the trace alike.
        crate::error::truncate_with_ellipsis(&mut reason, crate::audit::MAX_FIELD);
        reason
    });
    let resource = Resource::Peer.display(&authority.peer.name);
    authority
        .record(
            Action::ScriptAccept.name(),
            &resource,
            refusal.is_none(),
            vec![ON_SCRIPT.to_owned()],
            refusal.clone(),
        )
        .map_err(Failure::Guest)?;
    match refusal {
        None => Ok(()),
        Some(reason) => {
            tracing::info!(
                target: "peerhost::decision",
                peer = %authority.peer.name, caller = %authority.caller.principal,
                "script refused by on_script: {reason}"
            );
            Err(Failure::Guest(GuestError::Denied(
                crate::bindings::Denial {
                    action: Action::ScriptAccept.name().to_owned(),
                    resource,
                },
            )))
        }
    }
}

pub(crate) enum Failure {
    Guest(GuestError),
    Trap(wasmtime::Error),
    /// The deadline passed while the guest waited in a host call.
    Timeout,
}

impl Failure {
    /// Whether the Store cannot be entered again (a trap or a timeout, not
    /// an error the guest returned).
    pub(crate) fn is_trap(&self) -> bool {
        !matches!(self, Failure::Guest(_))
    }
}

fn trap_error(
    state: &InvocationState,
    e: &wasmtime::Error,
    wall_time: Duration,
) -> InvocationError {
    if state.timed_out {
        InvocationError::limit(format!(
            "the invocation ran past its wall-time limit of {wall_time:?}"
        ))
    } else if let Some(limit) = e.downcast_ref::<crate::budget::WriteLimit>() {
        // A file write past a byte bound traps (see `crate::budget`).
        InvocationError::limit(limit.to_string())
    } else if let Some(quota) = e.downcast_ref::<crate::namespace::FsQuotaError>() {
        // So does one past the namespace's `fs_bytes`: audited, like every
        // refusal of a quota.
        state.authority.record_quota_refusal(&quota.to_string());
        InvocationError::limit(quota.to_string())
    } else if state.limits.hit {
        InvocationError::limit("the guest reached its memory limit".to_owned())
    } else if let Some(pool) = e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
        InvocationError::limit(format!(
            "the worker is running as many instances as it may at once ({pool}); retry shortly"
        ))
    } else if matches!(e.downcast_ref::<Trap>(), Some(Trap::StackOverflow)) {
        InvocationError::limit("the guest overflowed its stack".to_owned())
    } else {
        InvocationError::failed(format!("the guest trapped: {e:?}"))
    }
}

/// The end of a raw guest component in the text format, for tests: world
/// `peer`'s `invocation` export (its types, `prepare` and `invoke` lifted
/// from core instance `$main` with memory `$mem` and function `$realloc`).
#[cfg(test)]
pub(crate) const RAW_INVOCATION_EXPORT: &str = r#"
  (type $denial (record (field "action" string) (field "resource" string)))
  (type $error (variant
    (case "denied" $denial) (case "not-found" string) (case "invalid" string)
    (case "limit" string) (case "failed" string)))
  (type $logic-module (record (field "name" string) (field "source" string)))
  (type $call-request (record (field "function" string) (field "args" string)))
  (type $script-request (record (field "script" string) (field "params" string)))
  (type $request (variant
    (case "call" $call-request) (case "script" $script-request) (case "on-script" string)))
  (type $logic (list $logic-module))
  (type $guest-limits (record (field "operations" u64)))
  (type $names (list string))
  (type $prepared (result $names (error $error)))
  (type $invoked (result string (error $error)))
  (func $prepare (param "logic" $logic) (param "limits" $guest-limits) (result $prepared)
    (canon lift (core func $main "prepare") (memory $mem) (realloc $realloc)))
  (func $invoke (param "request" $request) (result $invoked)
    (canon lift (core func $main "invoke") (memory $mem) (realloc $realloc)))
  (instance $invocation
    (export "denial" (type $denial))
    (export "error" (type $error))
    (export "logic-module" (type $logic-module))
    (export "guest-limits" (type $guest-limits))
    (export "call-request" (type $call-request))
    (export "script-request" (type $script-request))
    (export "request" (type $request))
    (export "prepare" (func $prepare))
    (export "invoke" (func $invoke)))
  (export "peerhost:peer/invocation@0.1.0" (instance $invocation))
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::Deployment;
    use crate::worker::Worker;

    /// A raw guest component of world `peer`, written in the text format:
    /// no Rhai, no guest-sdk, whatever `prepare_body` does as its `prepare`.
    fn raw_guest(prepare_body: &str) -> Vec<u8> {
        let text = format!(
            r#"(component
              (core module $m
                (memory (export "memory") 1)
                (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
                (func (export "prepare") (param i32 i32 i64) (result i32) {prepare_body})
                (func (export "invoke") (param i32 i32 i32 i32 i32) (result i32) (unreachable)))
              (core instance $main (instantiate $m))
              (alias core export $main "memory" (core memory $mem))
              (alias core export $main "realloc" (core func $realloc))
              {RAW_INVOCATION_EXPORT})"#
        );
        match wat::parse_str(text) {
            Ok(wasm) => wasm,
            Err(e) => panic!("raw guest: {e}"),
        }
    }

    /// Runs a script at alice on `wasm` and returns the error.
    fn run_raw(wasm: &[u8]) -> InvocationError {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().join("demo");
        crate::scaffold::init(&dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            dir.join("peers/alice/peer.toml"),
            std::fs::read_to_string(dir.join("peers/alice/peer.toml")).unwrap_or_default()
                + "\n[limits]\nwall_time_ms = 100\nmemory_mib = 8\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let runtime =
            Runtime::with_component(wasm, Allocation::OnDemand).unwrap_or_else(|e| panic!("{e}"));
        let worker = Worker::new(
            Deployment::load(&dir, &[]).unwrap_or_else(|e| panic!("{e}")),
            Arc::new(runtime),
            Arc::new(crate::client::Http),
        );
        let alice = worker.deployment.peers["alice"].clone();
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let invoke = InvocationRequest {
            caller: alice.caller(alice.id),
            invocation: Invocation::Script {
                script: "1".into(),
                params: Value::Null,
            },
            depth: 0,
            deadline: None,
            trace: None,
        };
        let started = Instant::now();
        let result = tokio.block_on(Worker::run(&worker, &alice, invoke));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not stopped in time"
        );
        match result {
            Err(e) => e,
            Ok(value) => panic!("the raw guest returned {value}"),
        }
    }

    #[test]
    fn a_raw_infinite_loop_is_stopped_by_the_epoch() {
        let error = run_raw(&raw_guest("(loop $spin (br $spin)) (unreachable)"));
        assert_eq!(error.kind, crate::error::ErrorKind::Limit, "{error:?}");
        assert!(error.message.contains("wall-time"), "{error:?}");
    }

    #[test]
    fn memory_grow_past_the_limit_is_a_limit() {
        // Grow a page at a time until refused, then trap.
        let error = run_raw(&raw_guest(
            "(block $full (loop $grow \
               (br_if $full (i32.eq (memory.grow (i32.const 1)) (i32.const -1))) \
               (br $grow))) \
             (unreachable)",
        ));
        assert_eq!(error.kind, crate::error::ErrorKind::Limit, "{error:?}");
        assert!(error.message.contains("memory"), "{error:?}");
    }
}
