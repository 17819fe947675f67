//! Reused instances: a [`Session`] is one guest instance kept for several
//! invocations by one caller at one peer, and [`CallerSessions`] keeps idle
//! sessions for a worker configured with `instances = "per-caller"`.
//!
//! A fresh instance per invocation is the default and the safe choice. A
//! session serves exactly the caller it was opened for (its Store's
//! authority is fixed at creation), so nothing an instance keeps between
//! runs (the guest's heap, compiled logic) can reach another caller; what
//! the guest derives from one request's authority (evaluated modules, the
//! `ctx` map) is dropped by the guest before the next request. Every run is
//! decided and audited like a fresh invocation. A run that traps or times
//! out ends the session; so does a change of the peer's logic, and
//! [`MAX_RUNS`] runs.

use crate::capability::{InvocationState, Router};
use crate::error::InvocationError;
use crate::identity::{Caller, PeerId};
use crate::logic::Modules;
use crate::peer::Peer;
use crate::runtime::{Guest, Invocation, InvocationRequest, decide, failure, run};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmtime::Store;

/// Runs after which a reused instance is dropped anyway, so that its heap
/// (fragmentation, the allocator's high-water mark) does not grow forever.
pub const MAX_RUNS: u32 = 1_000;

/// Idle instances kept per (peer, caller).
pub const MAX_IDLE_PER_CALLER: usize = 4;

/// Idle instances kept in all.
pub const MAX_IDLE: usize = 256;

/// A guest instance kept for several invocations by one caller at one peer
/// (see [`crate::runtime::Runtime::session`]).
pub struct Session {
    store: Option<Store<InvocationState>>,
    instance: crate::bindings::Peer,
    exported: Vec<String>,
    logic: Arc<Modules>,
    runs: u32,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("live", &self.store.is_some())
            .field("runs", &self.runs)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(
        store: Store<InvocationState>,
        instance: crate::bindings::Peer,
        exported: Vec<String>,
        logic: Arc<Modules>,
    ) -> Session {
        Session {
            store: Some(store),
            instance,
            exported,
            logic,
            runs: 0,
        }
    }

    /// Whether the instance can run again (it has not trapped).
    pub fn is_live(&self) -> bool {
        self.store.is_some()
    }

    /// Runs `invocation` on the session's instance, with the caller it was
    /// opened for, decided and audited like a fresh invocation.
    pub async fn run(&mut self, invocation: Invocation) -> Result<Value, InvocationError> {
        self.run_nested(invocation, crate::invocation::Chain::default(), None)
            .await
    }

    /// [`Session::run`] for an invocation `chain.depth` delegations deep, in
    /// `chain.trace`, that must end by `outer`, its parent's deadline.
    pub async fn run_nested(
        &mut self,
        invocation: Invocation,
        chain: crate::invocation::Chain,
        outer: Option<Instant>,
    ) -> Result<Value, InvocationError> {
        let Some(store) = self.store.as_mut() else {
            return Err(InvocationError::failed(
                "this session's instance trapped or timed out and was dropped; open a new one"
                    .to_owned(),
            ));
        };
        self.runs += 1;
        store.data_mut().begin_run(chain.depth, outer);
        store.data_mut().authority.trace = chain.trace;
        // Charged to the caller when dropped, after the run.
        let (request, _admission) = decide(&mut store.data_mut().authority, invocation)?;
        let guest = Guest::Kept {
            instance: &self.instance,
            exported: &self.exported,
        };
        match run(store, guest, &request).await {
            Ok(value) => Ok(value),
            Err(e) => {
                let trapped = e.is_trap();
                let error = failure(store, e);
                if trapped {
                    // A Store that trapped is never entered again.
                    self.store = None;
                }
                Err(error)
            }
        }
    }
}

/// Who an idle instance may serve: one caller at one peer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CallerAtPeer {
    peer: String,
    caller: String,
    id: Option<PeerId>,
}

/// Idle sessions of one worker, by (peer, caller).
#[derive(Debug, Default)]
pub struct CallerSessions {
    idle: Mutex<HashMap<CallerAtPeer, Vec<Session>>>,
    created: AtomicU64,
}

impl CallerSessions {
    /// Runs `invoke` at `peer` on an idle instance of the same caller when
    /// there is one still on the peer's current logic, else on a new one
    /// that is kept afterwards.
    pub async fn invoke<R: Router + 'static>(
        &self,
        runtime: &crate::runtime::Runtime,
        router: &Arc<R>,
        peer: &Arc<Peer>,
        invoke: InvocationRequest,
    ) -> Result<Value, InvocationError> {
        let InvocationRequest {
            caller,
            invocation,
            depth,
            deadline,
            trace,
        } = invoke;
        let key = CallerAtPeer {
            peer: peer.name.clone(),
            caller: caller.principal.clone(),
            id: caller.id,
        };
        let logic = peer
            .logic
            .modules()
            .map_err(|e| InvocationError::failed(format!("cannot read the logic: {e}")))?;
        let mut session = match self.take(&key, &logic) {
            Some(session) => session,
            None => self.open(runtime, router, peer, caller).await?,
        };
        let chain = crate::invocation::Chain { depth, trace };
        let result = session.run_nested(invocation, chain, deadline).await;
        self.keep(key, session);
        result
    }

    /// How many instances this pool has created.
    pub fn created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    async fn open<R: Router + 'static>(
        &self,
        runtime: &crate::runtime::Runtime,
        router: &Arc<R>,
        peer: &Arc<Peer>,
        caller: Caller,
    ) -> Result<Session, InvocationError> {
        self.created.fetch_add(1, Ordering::Relaxed);
        runtime.session(router, peer, caller).await
    }

    /// An idle session of `key` prepared with `logic`; sessions on older
    /// logic are dropped.
    fn take(&self, key: &CallerAtPeer, logic: &Arc<Modules>) -> Option<Session> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let sessions = idle.get_mut(key)?;
        sessions.retain(|s| Arc::ptr_eq(&s.logic, logic));
        let session = sessions.pop();
        if sessions.is_empty() {
            idle.remove(key);
        }
        session
    }

    fn keep(&self, key: CallerAtPeer, session: Session) {
        if !session.is_live() || session.runs >= MAX_RUNS {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = idle.values().map(Vec::len).sum();
        let sessions = idle.entry(key).or_default();
        if sessions.len() < MAX_IDLE_PER_CALLER && total < MAX_IDLE {
            sessions.push(session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Instances;
    use crate::deployment::Deployment;
    use crate::runtime::Runtime;
    use crate::worker::Worker;
    use serde_json::json;

    fn script(text: &str) -> Invocation {
        Invocation::Script {
            script: text.into(),
            params: Value::Null,
        }
    }

    /// A demo deployment in a temporary directory.
    fn demo() -> (tempfile::TempDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().join("demo");
        crate::scaffold::init(&dir).unwrap_or_else(|e| panic!("{e}"));
        (tmp, dir)
    }

    /// A reused instance serves one caller; each run gets its own `ctx`,
    /// its own decisions, and a run that hits the wall-time limit ends it.
    #[test]
    fn a_session_keeps_its_caller_and_ends_when_its_instance_traps() {
        let (_tmp, dir) = demo();
        std::fs::write(
            dir.join("peers/bob/peer.toml"),
            std::fs::read_to_string(dir.join("peers/bob/peer.toml")).unwrap_or_default()
                + "\n[limits]\nwall_time_ms = 20\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let runtime = Arc::new(Runtime::new().unwrap_or_else(|e| panic!("{e}")));
        let worker = Worker::new(
            Deployment::load(&dir, &[]).unwrap_or_else(|e| panic!("{e}")),
            runtime.clone(),
            Arc::new(crate::client::Http),
        );
        let bob = worker.deployment.peers["bob"].clone();
        let alice = worker.deployment.peers["alice"].id;
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        tokio.block_on(async {
            let mut session = runtime
                .session(&worker, &bob, bob.caller(alice))
                .await
                .unwrap_or_else(|e| panic!("{e:?}"));
            let who = script("[ctx.caller.name, ctx.kind]");
            assert_eq!(
                session.run(who.clone()).await.ok(),
                Some(json!(["alice", "script"]))
            );
            // alice may call get_public at bob (definer rights), then scripts again.
            let call = Invocation::Call {
                function: "get_public".into(),
                args: json!(["motto"]),
            };
            assert!(session.run(call).await.is_ok());
            assert_eq!(
                session.run(who.clone()).await.ok(),
                Some(json!(["alice", "script"]))
            );
            // Still alice's grants: bob's private keys stay closed.
            let denied = session.run(script("kv::get(\"private/diary\")")).await;
            assert!(
                matches!(&denied, Err(e) if e.kind == crate::error::ErrorKind::Denied),
                "{denied:?}"
            );
            let limit = session.run(script("loop { }")).await;
            assert!(
                matches!(&limit, Err(e) if e.kind == crate::error::ErrorKind::Limit),
                "{limit:?}"
            );
            let after = session.run(who).await;
            assert!(
                matches!(&after, Err(e) if e.message.contains("open a new one")),
                "{after:?}"
            );
        });
    }

    #[test]
    fn reused_instances_never_serve_another_caller_or_old_logic() {
        let (_tmp, dir) = demo();
        let mut deployment = Deployment::load(&dir, &[]).unwrap_or_else(|e| panic!("{e}"));
        deployment.config.instances = Instances::PerCaller;
        let runtime = Arc::new(Runtime::new().unwrap_or_else(|e| panic!("{e}")));
        let worker = Worker::new(deployment, runtime, Arc::new(crate::client::Http));
        let bob = worker.deployment.peers["bob"].clone();
        let alice = bob.caller(worker.deployment.peers["alice"].id);
        let owner = bob.caller(bob.id);
        let warm = worker
            .sessions
            .as_ref()
            .unwrap_or_else(|| panic!("per-caller"));
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let run = |caller: &Caller, invocation: Invocation| {
            tokio.block_on(Worker::run(
                &worker,
                &bob,
                InvocationRequest {
                    caller: caller.clone(),
                    invocation,
                    depth: 0,
                    deadline: None,
                    trace: None,
                },
            ))
        };
        let who = script("ctx.caller.name");
        assert_eq!(run(&alice, who.clone()).ok(), Some(json!("alice")));
        assert_eq!(run(&alice, who.clone()).ok(), Some(json!("alice")));
        assert_eq!(warm.created(), 1, "alice's second run reuses her instance");
        // bob's own invocation gets an instance of its own, with bob's grants.
        assert_eq!(run(&owner, who.clone()).ok(), Some(json!("bob")));
        assert_eq!(warm.created(), 2);
        assert!(run(&owner, script("kv::get(\"private/diary\")")).is_ok());
        // alice, after bob, still has only her grants and her name.
        let denied = run(&alice, script("kv::get(\"private/diary\")"));
        assert!(
            matches!(&denied, Err(e) if e.kind == crate::error::ErrorKind::Denied),
            "{denied:?}"
        );
        assert_eq!(run(&alice, who.clone()).ok(), Some(json!("alice")));
        assert_eq!(warm.created(), 2);
        // New logic: the old instance is not used again.
        std::fs::write(
            dir.join("peers/bob/logic/extra.rhai"),
            "export const answer = 42;",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let imported = run(&alice, script("import \"extra\" as x; x::answer"));
        assert_eq!(imported.ok(), Some(json!(42)));
        assert_eq!(warm.created(), 3);
    }
}
