//! Snapshots of the guest with one version of a peer's logic compiled, so
//! that a fresh instance of a busy peer does not parse `main.rhai` again.
//!
//! A version counts its fresh instances; at the [`Snapshots::after`]-th, a
//! background thread instantiates the pre-initialised guest (instrumented
//! for wasmtime-wizer), hands it the version's modules through
//! `prepared.compile` (every import trapping: nothing of any request, no
//! randomness, no clock can be in the snapshot), snapshots its memory and
//! compiles that (about a second of one core; cached on disk like the guest
//! itself, keyed by the guest and the modules' digest, so a restart loads
//! it in milliseconds). From then on a fresh instance of that version
//! starts from the snapshot and gets `prepared.resume` (the caller's
//! limits) instead of `prepare`: still one new instance per invocation,
//! dropped after it, as before; only the parse is gone.
//!
//! Versions are known by their content (`logic::Modules::digest`): peers
//! with the same logic share a snapshot; an edit or a push is a new digest,
//! served by `prepare` until it is hot in turn. At most [`MAX_READY`]
//! snapshots are kept (the least recently used is dropped), at most
//! [`MAX_CACHED`] on disk. A build that fails is logged and not retried
//! for that version; its invocations go on with `prepare`, as do those of
//! a caller whose memory limit is below the snapshot's memory (it holds
//! every module of the library compiled, where `prepare` compiles those
//! the logic imports).

use super::*;
use crate::logic::Modules;
use crate::preinit::{Instrumented, PreinitError, failed};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use wasmtime::component::{ComponentExportIndex, InstancePre};

/// The interface a guest that can be snapshotted with its logic exports.
pub const PREPARED: &str = "peerhost:peer/prepared@0.1.0";

/// Snapshots kept in memory (each maps about 8 MB of code, touched as used).
pub const MAX_READY: usize = 32;

/// Snapshot artifacts kept in the cache directory (about 8 MB each).
pub const MAX_CACHED: usize = crate::cache::KEPT_SNAPSHOTS;

/// Versions counted at once; past it, the counts of versions not built are
/// forgotten.
const MAX_COUNTED: usize = 4096;

/// Builds waiting for the builder thread; a version whose build finds the
/// queue full is counted again from zero.
const QUEUED: usize = 16;

/// The guest with one logic version compiled: instantiated per invocation.
pub(super) struct Snapshot {
    /// The linear memory an instance starts with, in bytes.
    memory: usize,
    pre: InstancePre<InvocationState>,
    indices: crate::bindings::PeerIndices,
    resume: ComponentExportIndex,
}

impl Snapshot {
    /// A fresh instance started from the snapshot, `resume`d with `limits`:
    /// the instance and the logic's hooks.
    pub(super) async fn instantiate(
        &self,
        store: &mut Store<InvocationState>,
        limits: GuestLimits,
    ) -> Result<(crate::bindings::Peer, Vec<String>), Failure> {
        let instance = self
            .pre
            .instantiate_async(&mut *store)
            .await
            .map_err(Failure::Trap)?;
        let peer = self
            .indices
            .load(&mut *store, &instance)
            .map_err(Failure::Trap)?;
        let resume = instance
            .get_typed_func::<(GuestLimits,), (Result<Vec<String>, GuestError>,)>(
                &mut *store,
                self.resume,
            )
            .map_err(Failure::Trap)?;
        let (hooks,) = resume
            .call_async(&mut *store, (limits,))
            .await
            .map_err(Failure::Trap)?;
        Ok((peer, hooks.map_err(Failure::Guest)?))
    }
}

enum Entry {
    /// Fresh instances so far.
    Counting(u32),
    Building,
    Ready {
        snapshot: Arc<Snapshot>,
        used: u64,
    },
    Failed,
}

#[derive(Default)]
struct State {
    entries: HashMap<[u8; 32], Entry>,
    /// Bumped at every use of a ready snapshot: its recency.
    clock: u64,
    ready: usize,
}

/// A version to build, and the peer that made it hot (for the log).
struct Job {
    digest: [u8; 32],
    modules: Arc<Modules>,
    peer: String,
}

/// The snapshots of a runtime, and the thread that builds them.
pub(super) struct Snapshots {
    after: u32,
    state: Arc<Mutex<State>>,
    builder: Option<Builder>,
    jobs: std::sync::OnceLock<Option<SyncSender<Job>>>,
    /// Instances started from a snapshot.
    starts: std::sync::atomic::AtomicU64,
}

/// What the builder thread needs.
#[derive(Clone)]
struct Builder {
    engine: Engine,
    linker: Linker<InvocationState>,
    /// The guest component as given (not pre-initialised): instrumented once.
    wasm: Arc<[u8]>,
}

impl Snapshots {
    /// Snapshots of `wasm` (compiled as `component`) after `after` fresh
    /// instances of a version; none when `after` is 0 or the guest does not
    /// export [`PREPARED`].
    pub(super) fn new(
        engine: &Engine,
        linker: &Linker<InvocationState>,
        wasm: &[u8],
        component: &wasmtime::component::Component,
        after: u32,
    ) -> Snapshots {
        let builder = component.get_export_index(None, PREPARED).map(|_| Builder {
            engine: engine.clone(),
            linker: linker.clone(),
            wasm: wasm.into(),
        });
        Snapshots {
            after,
            state: Arc::default(),
            builder,
            jobs: std::sync::OnceLock::new(),
            starts: Default::default(),
        }
    }

    /// Fresh instances of one version before its snapshot is built; 0: never.
    pub(super) fn after(&self) -> u32 {
        if self.builder.is_some() {
            self.after
        } else {
            0
        }
    }

    pub(super) fn set_after(&mut self, after: u32) {
        self.after = after;
    }

    /// Instances started from a snapshot so far.
    pub(super) fn starts(&self) -> u64 {
        self.starts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Snapshots ready now.
    pub(super) fn ready(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).ready
    }

    /// The snapshot of `modules`, when it is ready and starts within
    /// `memory` bytes; counts the fresh instance otherwise, and starts the
    /// build at the threshold.
    pub(super) fn get(
        &self,
        modules: &Arc<Modules>,
        peer: &str,
        memory: usize,
    ) -> Option<Arc<Snapshot>> {
        if self.after() == 0 {
            return None;
        }
        let digest = *modules.digest();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.clock += 1;
        let clock = state.clock;
        if state.entries.len() >= MAX_COUNTED && !state.entries.contains_key(&digest) {
            // Failed builds are remembered (not retried) unless they alone
            // fill the table.
            state
                .entries
                .retain(|_, e| !matches!(e, Entry::Counting(_)));
            if state.entries.len() >= MAX_COUNTED {
                state.entries.retain(|_, e| !matches!(e, Entry::Failed));
            }
        }
        let entry = state.entries.entry(digest).or_insert(Entry::Counting(0));
        match entry {
            Entry::Ready { snapshot, .. } if snapshot.memory > memory => None,
            Entry::Ready { snapshot, used } => {
                *used = clock;
                self.starts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(snapshot.clone())
            }
            Entry::Counting(n) => {
                *n += 1;
                if *n >= self.after {
                    *entry = Entry::Building;
                    let job = Job {
                        digest,
                        modules: modules.clone(),
                        peer: peer.to_owned(),
                    };
                    if !self.send(job) {
                        *entry = Entry::Counting(0);
                    }
                }
                None
            }
            Entry::Building | Entry::Failed => None,
        }
    }

    /// Queues `job` for the builder thread (started at the first job).
    fn send(&self, job: Job) -> bool {
        let jobs = self.jobs.get_or_init(|| {
            let builder = self.builder.clone()?;
            let (send, receive) = sync_channel(QUEUED);
            let state = Arc::downgrade(&self.state);
            std::thread::Builder::new()
                .name("peerhost-snapshots".into())
                .spawn(move || builder.serve(receive, state))
                .map_err(|e| tracing::warn!("cannot start the snapshot builder: {e}"))
                .ok()?;
            Some(send)
        });
        jobs.as_ref().is_some_and(|jobs| jobs.try_send(job).is_ok())
    }
}

impl Builder {
    /// Builds the snapshots asked for until the runtime is dropped.
    fn serve(self, jobs: Receiver<Job>, state: std::sync::Weak<Mutex<State>>) {
        let mut instrumented = None;
        while let Ok(job) = jobs.recv() {
            let started = Instant::now();
            let built = self.build(&job, &mut instrumented);
            let Some(state) = state.upgrade() else { return };
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            match built {
                Ok(snapshot) => {
                    tracing::info!(
                        target: "peerhost::runtime",
                        peer = %job.peer,
                        "snapshot of the logic ({} modules) ready in {:.2?}",
                        job.modules.len(),
                        started.elapsed()
                    );
                    state.clock += 1;
                    let used = state.clock;
                    state.entries.insert(
                        job.digest,
                        Entry::Ready {
                            snapshot: Arc::new(snapshot),
                            used,
                        },
                    );
                    state.ready += 1;
                    if state.ready > MAX_READY {
                        evict_oldest(&mut state);
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        target: "peerhost::runtime",
                        peer = %job.peer,
                        "no snapshot of the logic, instances prepare it as before: {e}"
                    );
                    state.entries.insert(job.digest, Entry::Failed);
                }
            }
        }
    }

    /// The snapshot of `job`'s modules: from the disk cache, or made with
    /// the instrumented guest (`instrumented`, made at the first need).
    fn build<'a>(
        &'a self,
        job: &Job,
        instrumented: &mut Option<Instrumented<'a>>,
    ) -> Result<Snapshot, PreinitError> {
        let name = crate::cache::name("logic", &self.engine, &[&self.wasm, job.modules.digest()]);
        let component = crate::cache::compiled(&self.engine, &name, "snapshot of a logic", || {
            let made = match instrumented.take() {
                Some(made) => made,
                None => self.instrument()?,
            };
            let snapshot = made.snapshot(&self.engine, |store, instance| {
                compile(store, instance, &job.modules)
            });
            *instrumented = Some(made);
            Ok(std::borrow::Cow::Owned(snapshot?))
        })
        .map_err(failed("compiling the snapshot"))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(failed("linking the snapshot"))?;
        let indices =
            crate::bindings::PeerIndices::new(&pre).map_err(failed("the snapshot's exports"))?;
        let memory = initial_memory(&self.engine, &component)?;
        let resume = component
            .get_export_index(None, PREPARED)
            .and_then(|prepared| component.get_export_index(Some(&prepared), "resume"))
            .ok_or_else(|| PreinitError(format!("the snapshot exports no {PREPARED}#resume")))?;
        Ok(Snapshot {
            memory,
            pre,
            indices,
            resume,
        })
    }
}

impl Builder {
    /// The guest instrumented for snapshots and compiled (cached on disk as
    /// well): once per process, at the first snapshot not on disk.
    fn instrument(&self) -> Result<Instrumented<'_>, PreinitError> {
        let wasm: &[u8] = &self.wasm;
        let name = crate::cache::name("instrumented", &self.engine, &[wasm]);
        Instrumented::new(wasm, |bytes| {
            crate::cache::compiled(&self.engine, &name, "instrumented guest", || {
                Ok(std::borrow::Cow::Borrowed(bytes))
            })
        })?
        .ok_or_else(|| PreinitError("the guest exports no wizer-initialize".into()))
    }
}

/// `prepared.compile(modules)` in the instrumented instance.
fn compile(
    store: &mut Store<()>,
    instance: &wasmtime::component::Instance,
    modules: &Modules,
) -> Result<(), PreinitError> {
    let prepared = instance
        .get_export_index(&mut *store, None, PREPARED)
        .and_then(|p| instance.get_export_index(&mut *store, Some(&p), "compile"))
        .ok_or_else(|| PreinitError(format!("no {PREPARED}#compile")))?;
    let compile = instance
        .get_typed_func::<(&[LogicModule],), (Result<(), GuestError>,)>(&mut *store, prepared)
        .map_err(failed("typing compile"))?;
    let (compiled,) = compile
        .call(&mut *store, (&modules[..],))
        .map_err(failed("compile trapped (it may not touch any import)"))?;
    compiled.map_err(|e| PreinitError(format!("the logic does not compile: {e:?}")))
}

/// The linear memory an instance of `component` starts with, in bytes
/// (the largest of its memories): seen by instantiating it once, every
/// import trapping, nothing called.
fn initial_memory(
    engine: &Engine,
    component: &wasmtime::component::Component,
) -> Result<usize, PreinitError> {
    struct Probe(usize);
    impl wasmtime::ResourceLimiter for Probe {
        fn memory_growing(
            &mut self,
            _current: usize,
            desired: usize,
            _maximum: Option<usize>,
        ) -> wasmtime::Result<bool> {
            self.0 = self.0.max(desired);
            Ok(true)
        }

        fn table_growing(
            &mut self,
            _current: usize,
            _desired: usize,
            _maximum: Option<usize>,
        ) -> wasmtime::Result<bool> {
            Ok(true)
        }
    }
    let mut linker = Linker::<Probe>::new(engine);
    linker
        .define_unknown_imports_as_traps(component)
        .map_err(failed("linking the snapshot"))?;
    let mut store = Store::new(engine, Probe(0));
    store.limiter(|probe| probe);
    store.set_epoch_deadline(u64::MAX / 2);
    linker
        .instantiate(&mut store, component)
        .map_err(failed("instantiating the snapshot"))?;
    Ok(store.data().0)
}

fn evict_oldest(state: &mut State) {
    let oldest = state
        .entries
        .iter()
        .filter_map(|(digest, e)| match e {
            Entry::Ready { used, .. } => Some((*used, *digest)),
            _ => None,
        })
        .min();
    if let Some((_, digest)) = oldest {
        state.entries.insert(digest, Entry::Counting(0));
        state.ready -= 1;
    }
}

#[cfg(test)]
mod tests {
    use crate::error::ErrorKind;
    use crate::{Deployment, Invocation, InvocationRequest, Runtime, Worker};
    use serde_json::{Value, json};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn script(text: &str) -> Invocation {
        Invocation::Script {
            script: text.into(),
            params: Value::Null,
        }
    }

    /// A snapshot holds the logic parsed and nothing of any request: each
    /// instance started from it has its own caller, its caller's limits,
    /// runs the logic's hooks, and an edit is in force at once.
    #[test]
    fn fresh_instances_start_from_the_snapshot_of_their_logic_version_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().join("demo");
        crate::scaffold::init(&dir).unwrap_or_else(|e| panic!("{e}"));
        let main = dir.join("peers/bob/logic/main.rhai");
        let logic = std::fs::read_to_string(&main).unwrap_or_default();
        let hooked = logic.clone()
            + "\nfn on_script(ctx, script) { !script.contains(\"forbidden\") }\nfn version() { 1 }\n";
        std::fs::write(&main, &hooked).unwrap_or_else(|e| panic!("{e}"));
        // Not re-read as racy at every use: the version must stay one Arc.
        std::thread::sleep(crate::logic::RACY + Duration::from_millis(50));
        let runtime = Arc::new(
            Runtime::new()
                .unwrap_or_else(|e| panic!("{e}"))
                .snapshot_after(1),
        );
        let toml = dir.join("peers/bob/peer.toml");
        let text = std::fs::read_to_string(&toml).unwrap_or_default();
        std::fs::write(&toml, text + "\n[limits]\noperations = 10000\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let deployment = Deployment::load(&dir, &[]).unwrap_or_else(|e| panic!("{e}"));
        let worker = Worker::new(deployment, runtime.clone(), Arc::new(crate::client::Http));
        let bob = worker.deployment.peers["bob"].clone();
        let alice = bob.caller(worker.deployment.peers["alice"].id);
        let owner = bob.caller(bob.id);
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let run = |caller: &crate::identity::Caller, invocation: Invocation| {
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
        let version = Invocation::Call {
            function: "version".into(),
            args: json!([]),
        };
        assert_eq!(run(&owner, version.clone()).ok(), Some(json!(1)));
        let waited = Instant::now();
        while runtime.snapshots_ready() == 0 && waited.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(runtime.snapshots_ready(), 1, "built within two minutes");

        // A caller whose memory limit is below what the snapshot starts
        // with (it holds the whole library compiled) prepares as before.
        let memory = {
            let state = runtime
                .snapshots
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            state.entries.values().find_map(|e| match e {
                super::Entry::Ready { snapshot, .. } => Some(snapshot.memory),
                _ => None,
            })
        };
        let memory = memory.unwrap_or_else(|| panic!("a ready snapshot"));
        assert!(memory >= 1 << 20, "the probe saw the memory: {memory}");
        let modules = bob.logic.modules().unwrap_or_else(|e| panic!("{e}"));
        assert!(runtime.snapshots.get(&modules, "bob", memory - 1).is_none());
        assert!(runtime.snapshots.get(&modules, "bob", memory).is_some());

        let starts = runtime.snapshot_starts();
        assert_eq!(run(&owner, version.clone()).ok(), Some(json!(1)));
        let who = script("[ctx.caller.name, ctx.kind]");
        assert_eq!(
            run(&alice, who.clone()).ok(),
            Some(json!(["alice", "script"]))
        );
        assert_eq!(run(&owner, who).ok(), Some(json!(["bob", "script"])));
        // The hook of the snapshot's logic runs: the owner's scripts are
        // granted (above), this one the hook refuses.
        let refused = run(&owner, script("\"forbidden\""));
        assert!(
            matches!(&refused, Err(e) if e.kind == ErrorKind::Denied),
            "{refused:?}"
        );
        // The caller's limits, not the snapshot's: 10,000 operations.
        let limited = run(&owner, script("let x = 0; while x < 100000 { x += 1; } x"));
        assert!(
            matches!(&limited, Err(e) if e.kind == ErrorKind::Limit),
            "{limited:?}"
        );
        assert_eq!(
            runtime.snapshot_starts(),
            starts + 5,
            "every one from the snapshot"
        );

        // An edit is a new version: in force at the next invocation,
        // prepared as before until its own snapshot is built.
        std::fs::write(
            &main,
            hooked.replace("fn version() { 1 }", "fn version() { 2 }"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run(&owner, version).ok(), Some(json!(2)));
        assert_eq!(runtime.snapshot_starts(), starts + 5);
    }
}
