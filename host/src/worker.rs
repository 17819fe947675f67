//! A worker: one `peerhost serve` process (or one in-process CLI run)
//! hosting the peers of a deployment, shared or isolated, and routing
//! delegations between peers: in-process when the target is hosted here,
//! else as a signed envelope: through the cluster, when the worker is in
//! one and some worker of it hosts the target, else to the URL in the
//! sender's contacts.
//!
//! Every way in ends in [`Worker::run`]: an unsigned request runs as
//! `anonymous` ([`Worker::invoke_anonymous`]); a signed envelope runs as its
//! verified caller ([`Worker::accept`]); a delegation from a running
//! invocation runs as the sending peer ([`Worker::delegate`]). In-process
//! delegation skips signing and verifying, since the host itself vouches for
//! the sender, but reaches the same decisions and audit lines.

use crate::audit::{CallerRecord, Record};
use crate::contacts::Contact;
use crate::deployment::Deployment;
use crate::envelope::{Envelope, EnvelopeError};
use crate::error::InvocationError;
use crate::identity::{Caller, PeerId};
use crate::invocation::Chain;
use crate::peer::Peer;
use crate::policy::Resource;
use crate::runtime::{Invocation, InvocationRequest, Runtime};
use crate::trace::TraceContext;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub use crate::invocation::MAX_DEPTH;

/// A future answer of a [`Transport`].
pub type Delivering =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, InvocationError>> + Send>>;

/// How a worker reaches a peer hosted by another worker by the URL in a
/// contact: sends a sealed envelope to the worker at `url` and returns its
/// answer. Chosen where the worker is built (`crate::client::Transports`:
/// HTTP, or WebSocket for `ws://`).
pub trait Transport: Send + Sync + std::fmt::Debug {
    /// Sends `envelope` to the worker at `url`, waiting at most `timeout`.
    fn send(&self, url: &str, envelope: Envelope, timeout: std::time::Duration) -> Delivering;
}

/// What a [`Cluster`] answers when it could not hand an envelope over.
#[derive(Debug)]
pub enum Unsent {
    /// No worker of the cluster hosts the target: nothing was delivered,
    /// so the envelope may still go another way.
    NoWorker(String),
    /// The envelope may have been delivered (and run): this is the answer.
    Failed(InvocationError),
}

/// A future answer of a [`Cluster`].
pub type Sending =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, Unsent>> + Send>>;

/// A future change of a [`Cluster`]'s shared state.
pub type Sharing =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), EnvelopeError>> + Send>>;

/// How a worker reaches, by its id alone, a peer hosted by another worker
/// of its cluster, and shares with the other workers hosting one of its
/// peers what must be the same at each (NATS: `crate::cluster::Nats`).
pub trait Cluster: Send + Sync + std::fmt::Debug {
    /// Sends `envelope` to a worker hosting its target, waiting at most
    /// `timeout` for the answer.
    fn send(&self, envelope: Envelope, timeout: std::time::Duration) -> Sending;

    /// Remembers, cluster-wide, the envelope `opened` accepted by this
    /// worker, or refuses it when any worker of the cluster accepted it
    /// before ([`EnvelopeError::Replayed`]); fails closed
    /// ([`EnvelopeError::Storage`]) when the cluster cannot tell.
    fn admit(&self, opened: &crate::envelope::Opened) -> Sharing;

    /// Hands `envelope`, an owner's push of `kind` accepted and now in
    /// force here, to every other worker hosting its target, unless a
    /// later push of that kind is already shared.
    fn pushed(&self, target: &PeerId, kind: &'static str, envelope: &Envelope) -> Sharing;
}

/// The peers hosted here and the runtime that runs them.
#[derive(Debug)]
pub struct Worker {
    /// The deployment, restricted to the hosted peers.
    pub deployment: Deployment,
    /// The shared runtime.
    pub runtime: Arc<Runtime>,
    /// Each caller's reused instances (sessions), when the deployment
    /// runs `instances = "per-caller"`.
    pub sessions: Option<crate::session::CallerSessions>,
    /// How peers of other workers are reached by URL.
    transport: Arc<dyn Transport>,
    /// How peers of other workers are reached by id, once the worker has
    /// joined a cluster.
    cluster: std::sync::OnceLock<Arc<dyn Cluster>>,
    /// When the storage gauges were last measured.
    storage_measured: std::sync::Mutex<Option<Instant>>,
    /// Held while they are measured.
    measuring: std::sync::Mutex<()>,
    /// Set once the worker begins to stop: long answers (the console's
    /// live tail) end.
    stopping: std::sync::atomic::AtomicBool,
    /// Where the spans of invocations go, once the worker exports them.
    spans: std::sync::OnceLock<Arc<dyn crate::trace::Spans>>,
    /// The deployment directory's absolute spellings, dropped from errors
    /// that leave the host.
    host_paths: Vec<String>,
}

impl Worker {
    /// A worker for `deployment` on `runtime`, reaching other workers over
    /// `transport`.
    pub fn new(
        deployment: Deployment,
        runtime: Arc<Runtime>,
        transport: Arc<dyn Transport>,
    ) -> Arc<Worker> {
        let sessions = (deployment.config.instances == crate::config::Instances::PerCaller)
            .then(crate::session::CallerSessions::default);
        let host_paths = crate::error::host_paths(&deployment.root);
        if let Some(slots) = runtime.instance_slots() {
            deployment.metrics.instance_slots.set(i64::from(slots));
        }
        Arc::new(Worker {
            deployment,
            runtime,
            sessions,
            transport,
            cluster: std::sync::OnceLock::new(),
            spans: std::sync::OnceLock::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            storage_measured: std::sync::Mutex::new(None),
            measuring: std::sync::Mutex::new(()),
            host_paths,
        })
    }

    /// Joins `cluster`: from now on a peer not hosted here is looked for
    /// there first. Once; `false` if the worker had joined one already.
    pub fn join(&self, cluster: Arc<dyn Cluster>) -> bool {
        self.cluster.set(cluster).is_ok()
    }

    /// Hands the span of every invocation from now on to `spans`. Once;
    /// `false` if the worker exports spans already.
    pub fn export_spans(&self, spans: Arc<dyn crate::trace::Spans>) -> bool {
        self.spans.set(spans).is_ok()
    }

    /// Marks the worker as stopping: answers that would go on until the
    /// client leaves (the console's live tail) end now.
    pub fn begin_stopping(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the worker is stopping.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the worker is in a cluster.
    pub fn in_cluster(&self) -> bool {
        self.cluster.get().is_some()
    }

    /// `error` as it may leave the host: naming files relative to the
    /// deployment, never by their host path.
    pub fn public(&self, error: InvocationError) -> InvocationError {
        error.relative_to(&self.host_paths)
    }

    /// The names of the hosted peers, sorted.
    pub fn peer_names(&self) -> Vec<String> {
        self.deployment.peers.names().map(str::to_owned).collect()
    }

    /// The hosted peer `name`, its files read (off the async workers) if
    /// this is its first use.
    pub async fn peer(self: &Arc<Self>, name: &str) -> Result<Arc<Peer>, InvocationError> {
        match self.deployment.peers.read_yet(name) {
            Some(Some(peer)) => Ok(peer),
            Some(None) => {
                let worker = self.clone();
                let owned = name.to_owned();
                let read =
                    tokio::task::spawn_blocking(move || worker.deployment.peers.get(&owned)).await;
                match read {
                    Ok(Some(Ok(peer))) => Ok(peer),
                    Ok(Some(Err(e))) => Err(self.unreadable(name, &e)),
                    Ok(None) => Err(not_hosted(name)),
                    Err(e) => Err(InvocationError::failed(format!("the task failed: {e}"))),
                }
            }
            None => Err(not_hosted(name)),
        }
    }

    /// The hosted peer whose id is `id`, if any.
    pub async fn peer_by_id(
        self: &Arc<Self>,
        id: &PeerId,
    ) -> Option<Result<Arc<Peer>, InvocationError>> {
        let name = self.deployment.peers.name_of(id)?;
        Some(self.peer(name).await)
    }

    /// A peer whose files could not be read at its first use: `failed`,
    /// naming the file (logged in full where it was read).
    fn unreadable(&self, name: &str, e: &crate::config::DeploymentError) -> InvocationError {
        self.public(InvocationError::failed(format!(
            "peer `{name}` cannot be read: {e}"
        )))
    }

    /// Runs `invoke` at `peer`: every way in ends here. Caller pays: once
    /// the peer's policy allows the invocation in (`call`, `script.accept`,
    /// `logic.read`, the owner's push), the caller's quota there admits it,
    /// and its time is charged to the caller (see [`crate::capability::admit`]);
    /// a caller refused at the door gets no account.
    pub async fn run(
        self: &Arc<Self>,
        peer: &Arc<Peer>,
        mut invoke: InvocationRequest,
    ) -> Result<Value, InvocationError> {
        use tracing::Instrument;
        // The invocation joins its caller's trace, or starts one.
        let parent = invoke.trace;
        let trace = parent.map_or_else(TraceContext::root, |parent| parent.child());
        invoke.trace = Some(trace);
        // Every log line of the invocation, the guest's included, carries
        // its id, which is its span's (a nested invocation has its own,
        // inside its caller's), and its trace's.
        let span = tracing::info_span!(
            "invocation",
            invocation = %trace.span_hex(),
            trace = %trace.trace_hex(),
            peer = %peer.name,
            caller = %invoke.caller.principal,
            depth = invoke.depth,
        );
        let kind = match &invoke.invocation {
            invocation if invocation.is_host_operation() => "host",
            Invocation::Call { .. } => "call",
            _ => "script",
        };
        let (started, start) = (Instant::now(), SystemTime::now());
        let exported = self
            .spans
            .get()
            .map(|spans| (spans.clone(), invoke.caller.principal.clone(), invoke.depth));
        let result = self
            .run_in_span(peer, invoke, span.clone())
            .instrument(span)
            .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => crate::metrics::outcome(e),
        };
        let took = started.elapsed();
        peer.metrics
            .invoked(&peer.label, kind, outcome, took.as_secs_f64());
        peer.activity.record();
        if let Some((spans, caller, depth)) = exported {
            spans.finished(crate::trace::FinishedSpan {
                context: trace,
                parent,
                name: "invocation",
                start,
                end: start + took,
                peer: peer.name.clone(),
                caller,
                kind,
                outcome,
                depth,
                error: result.as_ref().err().map(|e| e.message.clone()),
            });
        }
        result
    }

    async fn run_in_span(
        self: &Arc<Self>,
        peer: &Arc<Peer>,
        invoke: InvocationRequest,
        span: tracing::Span,
    ) -> Result<Value, InvocationError> {
        if invoke.invocation.is_host_operation() {
            // Files, compiles and fsyncs: off the async workers.
            let (peer, caller) = (peer.clone(), invoke.caller);
            tokio::task::spawn_blocking(move || {
                span.in_scope(|| {
                    crate::host_operations::host_operation(
                        &peer,
                        &caller,
                        Chain {
                            depth: invoke.depth,
                            trace: invoke.trace,
                        },
                        &invoke.invocation,
                    )
                })
            })
            .await
            .unwrap_or_else(|e| Err(InvocationError::failed(format!("the task failed: {e}"))))
        } else {
            match &self.sessions {
                Some(sessions) => sessions.invoke(&self.runtime, self, peer, invoke).await,
                None => self.runtime.invoke(self, peer, invoke).await,
            }
        }
    }

    /// Writes every hosted peer's usage to its `audit/usage.json`.
    pub fn save_usage(&self) {
        for peer in self.deployment.peers.loaded() {
            if let Err(e) = peer.usage.save() {
                tracing::warn!(target: "peerhost::quota", peer = %peer.name, "cannot save usage: {e}");
            }
        }
    }

    /// Sets the storage gauges of the metrics to what the loaded peers
    /// store now: each kv store's bytes, and the namespace's where
    /// `[quotas] fs_bytes` keeps a count. Reads the backends (a query, a
    /// ledger object): call it off the async workers.
    pub fn measure_storage(&self) {
        // One measurement at a time, at most one per MEASURE_EVERY: scrapes
        // in a loop cannot pile reads on the backends.
        {
            let mut last = self
                .storage_measured
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < MEASURE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let Ok(_measuring) = self.measuring.try_lock() else {
            return;
        };
        use crate::metrics::StorageLabels;
        let mut sizes: std::collections::HashMap<StorageLabels, u64> = Default::default();
        for peer in self.deployment.peers.loaded() {
            let mut add = |store, backend, bytes: u64| {
                let labels = StorageLabels {
                    peer: peer.label.clone(),
                    store,
                    backend,
                };
                let size = sizes.entry(labels).or_default();
                *size = size.saturating_add(bytes);
            };
            match peer.kv.usage(None) {
                Ok(usage) => add("kv", peer.kv.name(), usage.bytes),
                Err(e) => tracing::debug!(
                    target: "peerhost::metrics", peer = %peer.name,
                    "the kv store's size is unknown: {e}"
                ),
            }
            if peer.fs_usage.limited() {
                let backend = peer.namespace.backend.as_ref().map_or("dir", |b| b.name());
                add("fs", backend, peer.fs_usage.used());
            }
        }
        let gauges = &self.deployment.metrics.storage_bytes;
        gauges.clear();
        for (labels, bytes) in sizes {
            gauges
                .get_or_create(&labels)
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// Runs an unsigned request at `peer`: its caller is `anonymous`. With
    /// `trace` (a client's `traceparent`), the invocation joins that trace.
    pub async fn invoke_anonymous(
        self: &Arc<Self>,
        peer: &str,
        invocation: Invocation,
        trace: Option<TraceContext>,
    ) -> Result<Value, InvocationError> {
        let peer = self.peer(peer).await?;
        let invoke = InvocationRequest {
            caller: Caller::anonymous(),
            invocation,
            depth: 0,
            deadline: None,
            trace,
        };
        self.run(&peer, invoke).await
    }

    /// Verifies `envelope` and runs it at its target as its caller. A refused
    /// envelope is recorded in the target's audit log and nothing runs.
    pub async fn accept(self: &Arc<Self>, envelope: &Envelope) -> Result<Value, InvocationError> {
        let target_id: PeerId = envelope
            .target
            .parse()
            .map_err(|e| InvocationError::from(EnvelopeError::BadId(format!("target: {e}"))))?;
        let Some(target) = self.peer_by_id(&target_id).await else {
            return Err(InvocationError::not_found(format!(
                "no peer with id {target_id} is hosted here"
            )));
        };
        let target = target?;
        let now = SystemTime::now();
        let cluster = self.cluster.get().cloned();
        let mut push = None;
        let opened = envelope.open(now).and_then(|opened| {
            target.replays.admit(&opened, now)?;
            // The owner's pushes change authority: once each, in order. (A
            // push from anyone else is refused as it runs, and must not
            // move the mark.)
            push = push_kind(&opened.invocation).filter(|_| opened.caller == target.id);
            if let Some(kind) = push {
                target.replays.check_push(kind, opened.issued_at)?;
            }
            Ok(opened)
        });
        // The cluster is asked last: a replay at this worker costs it nothing.
        let opened = match (opened, &cluster) {
            (Ok(opened), Some(cluster)) => cluster.admit(&opened).await.map(|()| opened),
            (opened, _) => opened,
        };
        // A push's mark moves once the envelope is known to be new.
        let opened = opened.and_then(|opened| {
            if let Some(kind) = push {
                target.replays.admit_push(kind, opened.issued_at)?;
            }
            Ok(opened)
        });
        let opened = match opened {
            Ok(opened) => opened,
            Err(e) => {
                refused(&target, envelope, &e);
                return Err(e.into());
            }
        };
        if opened.depth > MAX_DEPTH {
            let e =
                InvocationError::limit(format!("delegation depth limit of {MAX_DEPTH} reached"));
            refused(&target, envelope, &e.message);
            return Err(e);
        }
        let invoke = InvocationRequest {
            caller: target.caller(opened.caller),
            invocation: opened.invocation,
            depth: opened.depth,
            deadline: None,
            trace: opened.trace,
        };
        let result = self.run(&target, invoke).await;
        if let (Ok(_), Some(kind), Some(cluster)) = (&result, push, &cluster)
            && let Err(e) = cluster.pushed(&target.id, kind, envelope).await
        {
            tracing::error!(
                target: "peerhost::cluster", peer = %target.name,
                "the {kind} is in force at this worker, but cannot reach the other workers hosting the peer: {e}"
            );
        }
        result
    }

    /// Puts in force at `target` an owner's push another worker of the
    /// cluster accepted (`envelope`, as shared through
    /// [`Cluster::pushed`]), unless this worker has it or a later one
    /// already. Its signature is verified as of when it was issued: it may
    /// have expired since, but only the owner's key can have made it, and
    /// a push older than the last one in force is refused.
    pub async fn apply_shared_push(
        self: &Arc<Self>,
        envelope: &Envelope,
    ) -> Result<Option<Value>, InvocationError> {
        let target_id: PeerId = envelope
            .target
            .parse()
            .map_err(|e| InvocationError::from(EnvelopeError::BadId(format!("target: {e}"))))?;
        let Some(target) = self.peer_by_id(&target_id).await else {
            return Ok(None);
        };
        let target = target?;
        let issued = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(envelope.issued_at);
        let opened = envelope.open(issued)?;
        let Some(kind) = push_kind(&opened.invocation) else {
            return Err(InvocationError::invalid(
                "a shared push must be a logic or policy push",
            ));
        };
        if opened.caller != target.id {
            return Err(InvocationError::invalid(format!(
                "a shared {kind} must be signed by the peer's own key"
            )));
        }
        match target.replays.check_push(kind, opened.issued_at) {
            Ok(()) => {}
            Err(EnvelopeError::PushOutOfOrder { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let issued_at = opened.issued_at;
        let invoke = InvocationRequest {
            caller: target.caller(opened.caller),
            invocation: opened.invocation,
            depth: opened.depth,
            deadline: None,
            trace: opened.trace,
        };
        // The mark moves once the push is in force: one that failed here
        // is tried again when the cluster hands it over again.
        let value = self.run(&target, invoke).await?;
        match target.replays.admit_push(kind, issued_at) {
            Ok(()) | Err(EnvelopeError::PushOutOfOrder { .. }) => Ok(Some(value)),
            Err(e) => Err(e.into()),
        }
    }

    /// Routes `invocation` from `from` to its contact `petname`: in-process
    /// when the contact is hosted here, else signed with `from`'s key to
    /// the contact's worker. The sender's policy has already allowed it.
    pub async fn delegate(
        self: &Arc<Self>,
        from: &Arc<Peer>,
        petname: &str,
        contact: &Contact,
        invocation: Invocation,
        chain: Chain,
        deadline: Instant,
    ) -> Result<Value, InvocationError> {
        let Chain { depth, trace } = chain;
        if let Some(target) = self.peer_by_id(&contact.id).await {
            let target = target?;
            let invoke = InvocationRequest {
                caller: target.caller(from.id),
                invocation,
                depth,
                deadline: Some(deadline),
                trace,
            };
            return self.run(&target, invoke).await;
        }
        let cluster = self.cluster.get().cloned();
        if cluster.is_none() && contact.url.is_none() {
            return Err(InvocationError::not_found(format!(
                "contact `{petname}` of `{}` is not hosted here and has no `url` in its contacts.toml \
                 (and this worker is in no cluster)",
                from.name
            )));
        }
        let Some(key) = from.key().map_err(InvocationError::failed)? else {
            return Err(InvocationError::failed(format!(
                "`{}` has no key in this deployment's keys/ to sign for {petname}",
                from.name
            )));
        };
        let envelope = Envelope::seal_traced(
            key,
            contact.id,
            &invocation,
            depth,
            trace.as_ref(),
            SystemTime::now(),
        )
        .map_err(|e| InvocationError::failed(format!("no randomness for a nonce: {e}")))?;
        let timeout = deadline.saturating_duration_since(Instant::now());
        let metrics = &self.deployment.metrics;
        let no_worker = match cluster {
            Some(cluster) => {
                let started = Instant::now();
                let sent = cluster.send(envelope.clone(), timeout).await;
                let secs = started.elapsed().as_secs_f64();
                match sent {
                    Ok(value) => {
                        metrics.round_trip("cluster", "ok", secs);
                        return Ok(value);
                    }
                    Err(Unsent::Failed(e)) => {
                        metrics.round_trip("cluster", crate::metrics::outcome(&e), secs);
                        return Err(e);
                    }
                    // Nobody received it: its nonce is unused, it may go by URL.
                    Err(Unsent::NoWorker(why)) => Some(why),
                }
            }
            None => None,
        };
        let Some(url) = contact.url.clone() else {
            return Err(InvocationError::not_found(format!(
                "contact `{petname}` of `{}` is not hosted here, {}, and has no `url` in its contacts.toml",
                from.name,
                no_worker.unwrap_or_default()
            )));
        };
        let timeout = deadline.saturating_duration_since(Instant::now());
        let transport = if url.starts_with("ws://") || url.starts_with("wss://") {
            "websocket"
        } else {
            "http"
        };
        let started = Instant::now();
        let answer = self.transport.send(&url, envelope, timeout).await;
        let outcome = match &answer {
            Ok(_) => "ok",
            Err(e) => crate::metrics::outcome(e),
        };
        metrics.round_trip(transport, outcome, started.elapsed().as_secs_f64());
        answer
    }
}

/// How long storage sizes measured for `/metrics` are served before they
/// are measured again.
pub const MEASURE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The push mark of an owner's push, or `None` for any other invocation.
fn push_kind(invocation: &Invocation) -> Option<&'static str> {
    match invocation {
        Invocation::PushLogic { .. } => Some("logic.push"),
        Invocation::PushPolicy { .. } => Some("policy.push"),
        _ => None,
    }
}

/// Records a refused envelope in `target`'s audit log.
fn refused(target: &Peer, envelope: &Envelope, reason: &dyn std::fmt::Display) {
    let mut claimed = envelope.claimed_caller().to_owned();
    crate::error::truncate_with_ellipsis(&mut claimed, 120);
    let unauthenticated = CallerRecord {
        name: "unauthenticated".to_owned(),
        id: None,
    };
    let record = Record {
        // The claimed hash, when it is one at all.
        script: (envelope.body_sha256.len() == 64
            && envelope.body_sha256.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| envelope.body_sha256.clone()),
        depth: envelope.depth,
        reason: Some(format!("{reason} (claimed caller {claimed})")),
        ..Record::decision(
            &target.name,
            unauthenticated,
            "unauthenticated",
            "envelope",
            Resource::Peer.display(&target.name),
            false,
        )
    };
    tracing::info!(target: "peerhost::decision", peer = %target.name, "envelope refused: {reason}");
    target.metrics.decided(&target.label, "envelope", false);
    if let Err(e) = target.audit.append(&record) {
        tracing::error!(target: "peerhost::audit", peer = %target.name, "cannot write the audit log: {e}");
    }
}

impl crate::capability::Router for Worker {
    fn delegate<'a>(
        self: Arc<Self>,
        from: &'a Arc<Peer>,
        petname: &'a str,
        contact: &'a Contact,
        invocation: Invocation,
        chain: Chain,
        deadline: Instant,
    ) -> crate::capability::Routed<'a> {
        Box::pin(async move {
            Worker::delegate(&self, from, petname, contact, invocation, chain, deadline).await
        })
    }

    fn run<'a>(
        self: Arc<Self>,
        peer: &'a Arc<Peer>,
        invoke: InvocationRequest,
    ) -> crate::capability::Routed<'a> {
        Box::pin(async move { Worker::run(&self, peer, invoke).await })
    }
}

fn not_hosted(name: &str) -> InvocationError {
    InvocationError::not_found(format!("no peer `{name}` is hosted here"))
}
