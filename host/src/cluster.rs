//! The cluster: workers joined through NATS, so that any worker reaches any
//! peer by its id alone (`[cluster]` in `peerhost.toml`, `serve --nats`).
//!
//! Each worker subscribes, for every peer it hosts, to the subject
//! [`subject`] of the peer's id (`peerhost.peer.z6Mk…`) in the queue group
//! [`QUEUE`]: when several workers host one peer, each envelope goes to
//! one of them. An envelope travels as a NATS request and its answer as
//! the reply.
//!
//! ## The exchange
//!
//! - The request's payload is the envelope's JSON (as `POST /v1/envelopes`
//!   takes it). An envelope bigger than one message (the server's
//!   `max_payload`, 1 MiB by default, less room for headers) is cut in
//!   parts: the first goes to the peer's subject with the header
//!   `Peerhost-Parts: n`; the worker answering replies with
//!   `Peerhost-Next: <subject>`, a subject of its own, to which the sender
//!   sends parts 2 to n as requests, in order, each acknowledged, the last
//!   one answered with the answer.
//! - The answer carries `Peerhost-Status: ok` and the result's JSON, or
//!   `Peerhost-Status: error` and `{"error": {"kind", "message", …}}` as
//!   the HTTP API answers. An answer bigger than one message comes with
//!   `Peerhost-Parts: n` and `Peerhost-Next`; the sender asks that subject
//!   for parts 2 to n (the payload of each request: the part's number).
//! - No worker subscribed (NATS's "no responders"): nothing was delivered,
//!   and the worker tries the contact's URL, if it has one.
//! - No answer within the time the invocation has left: `failed`. The
//!   envelope may have run; sending it again is refused as a replay, so a
//!   script never runs twice (at most once).
//!
//! ## Shared state (JetStream key-value buckets)
//!
//! - [`NONCES`]: every envelope a worker of the cluster accepts leaves the
//!   key `<peer key>.<record>` (the hash of caller and nonce the local
//!   replay file keeps), created only if absent, kept as long as an
//!   envelope can live ([`MAX_LIFETIME`]) and twice the clock skew, since
//!   the servers' clock ages it and each worker's judges the envelope. An envelope
//!   whose key exists is refused as a replay, at whichever worker it
//!   arrives; when the bucket cannot answer the envelope is refused too
//!   (fail closed). In memory on the servers, `replicas` copies.
//! - Usage: every [`crate::quota::SHARE_EVERY`] each worker publishes on
//!   [`usage_subject`] of each peer what its callers spent there since the
//!   last report; the peer's other workers count it against their quotas
//!   (approximate, see [`crate::quota`]). Plain NATS messages: a report
//!   lost is spending not counted elsewhere.
//! - [`PUSHES`]: the owner's last `logic.push` and `policy.push` of each
//!   peer (`<peer key>.logic`, `<peer key>.policy`), the signed envelope
//!   itself, written by the worker that accepted it once it is in force
//!   there. Every worker watches the keys of the peers it hosts and puts
//!   each push in force in turn (verified again, and only when later than
//!   its last); a worker that starts reads the last ones first.

use crate::config::ClusterConfig;
use crate::envelope::{CLOCK_SKEW, Envelope, EnvelopeError, MAX_ENVELOPE, MAX_LIFETIME, Opened};
use crate::error::InvocationError;
use crate::identity::PeerId;
use crate::invocation::MAX_RESULT;
use crate::worker::{Cluster, Sending, Sharing, Unsent, Worker};
use async_nats::jetstream::kv;
use async_nats::{HeaderMap, Message, Request, RequestErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The first tokens of every peer's subject.
pub const SUBJECT_PREFIX: &str = "peerhost.peer";

/// The queue group of every worker: one of the workers hosting a peer
/// answers each envelope.
pub const QUEUE: &str = "peerhost";

const PARTS: &str = "Peerhost-Parts";
const NEXT: &str = "Peerhost-Next";
const STATUS: &str = "Peerhost-Status";

/// Room left in each message for its headers.
const HEADROOM: usize = 2_048;

/// How long either side of a parted exchange waits for the other's next
/// part before giving up on it.
const PART_WAIT: Duration = Duration::from_secs(10);

/// How long a worker gathers the parts of one envelope, at most.
const GATHER_WAIT: Duration = Duration::from_secs(60);

/// The smallest part a sender makes (all but the last of an envelope).
const MIN_PART: usize = 1_024;

/// Messages a subscription holds for a worker at `max_in_flight`; more
/// are dropped (their senders time out: nothing ran).
const SUBSCRIPTION_CAPACITY: usize = 4_096;

/// How long a sender keeps asking when no worker answers for a peer with
/// no URL: a worker's subscription takes a moment to reach the other
/// servers of the cluster.
const NO_RESPONDERS_WAIT: Duration = Duration::from_millis(500);

/// The bucket of the nonces of the envelopes accepted.
pub const NONCES: &str = "peerhost-nonces";

/// The bucket of the owners' last pushes.
pub const PUSHES: &str = "peerhost-pushes";

/// How long a worker keeps asking a bucket that does not answer (a server
/// lost, its streams electing a new leader) before it gives up.
const SHARED_WAIT: Duration = Duration::from_secs(3);

/// The key token of the peer `id`: its multibase key, `z6Mk…`.
fn key_of(id: &PeerId) -> String {
    let id = id.to_string();
    id.strip_prefix("did:key:").unwrap_or(&id).to_owned()
}

/// The subject on which the workers of the peer `id` tell each other
/// what its callers spent: `peerhost.usage.<multibase key>`.
pub fn usage_subject(id: &PeerId) -> String {
    format!("peerhost.usage.{}", key_of(id))
}

/// The subject of the peer `id`: `peerhost.peer.<multibase key>`.
pub fn subject(id: &PeerId) -> String {
    let id = id.to_string();
    format!(
        "{SUBJECT_PREFIX}.{}",
        id.strip_prefix("did:key:").unwrap_or(&id)
    )
}

/// Why a worker could not join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The credentials file cannot be read.
    #[error("cannot read the NATS credentials file {path}: {source}")]
    Credentials {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// No server of the list answered.
    #[error("cannot connect to the NATS cluster at {servers}: {message}")]
    Connect {
        /// The servers tried.
        servers: String,
        /// Why.
        message: String,
    },
    /// The cluster has no JetStream, or a bucket cannot be made.
    #[error(
        "cannot open the cluster's shared bucket {bucket} (is JetStream enabled on the NATS servers?): {message}"
    )]
    Shared {
        /// The bucket.
        bucket: &'static str,
        /// Why.
        message: String,
    },
    /// A subscription was refused.
    #[error("cannot subscribe to {subject}: {message}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// Why.
        message: String,
    },
}

/// A worker's connection to its NATS cluster.
#[derive(Clone)]
pub struct Nats {
    client: async_nats::Client,
    /// Bytes of payload in one message.
    part: usize,
    servers: String,
    nonces: kv::Store,
    pushes: kv::Store,
    /// This connection's mark in the nonces it records, to know its own
    /// record after an acknowledgement lost.
    token: Bytes,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("servers", &self.servers)
            .field("part", &self.part)
            .finish_non_exhaustive()
    }
}

impl Nats {
    /// Connects to the cluster of `config` (credentials relative to
    /// `root`, the deployment), naming the connection `name`.
    pub async fn connect(
        config: &ClusterConfig,
        root: &Path,
        name: &str,
    ) -> Result<Nats, ClusterError> {
        let servers = config.servers.join(",");
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            // Each exchange has its own deadline: the invocation's.
            .request_timeout(None)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!(target: "peerhost::cluster", "connected to NATS")
                    }
                    event => tracing::warn!(target: "peerhost::cluster", "NATS: {event}"),
                }
            });
        if let Some(path) = &config.credentials {
            let path = root.join(path);
            options = options.credentials_file(&path).await.map_err(|source| {
                ClusterError::Credentials {
                    path: path.display().to_string(),
                    source,
                }
            })?;
        }
        let client = options
            .connect(config.servers.as_slice())
            .await
            .map_err(|e| ClusterError::Connect {
                servers: servers.clone(),
                message: e.to_string(),
            })?;
        let part = client.max_payload().saturating_sub(HEADROOM).max(MIN_PART);
        let mut jetstream = async_nats::jetstream::new(client.clone());
        jetstream.set_timeout(Duration::from_secs(1));
        let replicas = usize::from(config.replicas);
        let nonces = bucket(
            &jetstream,
            kv::Config {
                bucket: NONCES.to_owned(),
                description: "peerhost: the envelopes accepted, until they expire".to_owned(),
                history: 1,
                // Judged by the servers' clock, not the workers': a
                // worker's clock may lag by the skew allowed.
                max_age: MAX_LIFETIME + 2 * CLOCK_SKEW,
                storage: async_nats::jetstream::stream::StorageType::Memory,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let pushes = bucket(
            &jetstream,
            kv::Config {
                bucket: PUSHES.to_owned(),
                description: "peerhost: each peer's last logic and policy push".to_owned(),
                history: 1,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let mut token = [0u8; 16];
        getrandom::fill(&mut token).map_err(|e| ClusterError::Shared {
            bucket: NONCES,
            message: format!("no randomness: {e}"),
        })?;
        Ok(Nats {
            client,
            part,
            servers,
            nonces,
            pushes,
            token: Bytes::from(hex::encode(token)),
        })
    }

    /// Records `opened` in [`NONCES`], or refuses it as a replay.
    async fn admit_nonce(&self, key: String, nonce: String) -> Result<(), EnvelopeError> {
        let give_up = Instant::now() + SHARED_WAIT;
        let mut pause = Duration::from_millis(20);
        loop {
            let error = match self.nonces.create(&key, self.token.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    // Ours when an earlier try was recorded but its
                    // acknowledgement lost.
                    return match self.nonces.get(&key).await {
                        Ok(Some(mark)) if mark == self.token => Ok(()),
                        Ok(_) => Err(EnvelopeError::Replayed(nonce)),
                        Err(e) => Err(EnvelopeError::Storage(format!(
                            "the cluster's nonces cannot be read: {e}"
                        ))),
                    };
                }
                Err(e) => e,
            };
            if Instant::now() + pause > give_up {
                return Err(EnvelopeError::Storage(format!(
                    "the cluster's nonces do not answer (bucket {NONCES}): {error}"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// Writes `envelope` as the last push of its kind at `target`, unless
    /// a later one is there.
    async fn share_push(
        &self,
        target: PeerId,
        kind: &'static str,
        envelope: Bytes,
        issued_at: u64,
    ) -> Result<(), EnvelopeError> {
        let key = format!(
            "{}.{}",
            key_of(&target),
            kind.strip_suffix(".push").unwrap_or(kind)
        );
        let give_up = Instant::now() + SHARED_WAIT;
        loop {
            let written = match self.pushes.entry(&key).await {
                Ok(Some(last)) if last.operation == kv::Operation::Put => {
                    // Only the owner's genuine push of this kind counts as
                    // later; anything else there is written over.
                    if genuine_push(&last.value, &target, kind).is_some_and(|l| l >= issued_at) {
                        return Ok(());
                    }
                    self.pushes
                        .update(&key, envelope.clone(), last.revision)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
                Ok(_) => self
                    .pushes
                    .create(&key, envelope.clone())
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match written {
                Ok(()) => return Ok(()),
                // Another worker wrote in between: look again.
                Err(e) if Instant::now() > give_up => {
                    return Err(EnvelopeError::Storage(format!(
                        "cannot write the {kind} to the cluster (bucket {PUSHES}): {e}"
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Tells, every [`crate::quota::SHARE_EVERY`], the other workers of
    /// each peer loaded here what its callers spent here since the last
    /// time (see [`crate::quota`]).
    async fn share_spending(&self, worker: Arc<Worker>) {
        let mut every = tokio::time::interval(crate::quota::SHARE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            for peer in worker.deployment.peers.loaded() {
                let spent = peer.usage.take_spent();
                if spent.is_empty() {
                    continue;
                }
                let report =
                    json!({ "from": String::from_utf8_lossy(&self.token), "spent": spent });
                let payload = Bytes::from(report.to_string());
                if let Err(e) = self.client.publish(usage_subject(&peer.id), payload).await {
                    tracing::warn!(target: "peerhost::cluster", peer = %peer.name, "cannot share usage: {e}");
                }
            }
        }
    }

    /// Counts a report of another worker of the peer `id` against this
    /// worker's quotas.
    async fn spent_elsewhere(&self, worker: &Arc<Worker>, id: &PeerId, payload: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Report {
            from: String,
            spent: std::collections::BTreeMap<String, crate::quota::Spent>,
        }
        let report: Report = match serde_json::from_slice(payload) {
            Ok(report) => report,
            Err(e) => {
                tracing::warn!(target: "peerhost::cluster", "a usage report is not one: {e}");
                return;
            }
        };
        if report.from.as_bytes() == &self.token[..] {
            return; // this worker's own
        }
        if let Some(Ok(peer)) = worker.peer_by_id(id).await {
            // Only callers this peer knows: its contacts, itself, the
            // anonymous and the strangers together.
            let known: std::collections::BTreeMap<_, _> = report
                .spent
                .into_iter()
                .filter(|(name, _)| {
                    name == crate::quota::STRANGERS
                        || name == crate::identity::ANONYMOUS
                        || *name == peer.name
                        || peer.contacts.get(name).is_some()
                })
                .collect();
            peer.usage.spent_elsewhere(&known);
        }
    }

    /// Puts in force at `worker` the last pushes shared for the peer `id`
    /// (before the worker answers its first envelope).
    async fn catch_up(&self, worker: &Arc<Worker>, id: &PeerId) {
        for kind in ["logic", "policy"] {
            let key = format!("{}.{kind}", key_of(id));
            match self.pushes.entry(&key).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                    self.apply(worker, &entry).await
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(target: "peerhost::cluster", "cannot read {key}: {e}"),
            }
        }
    }

    /// Puts in force the push of `entry`, saying what came of it.
    async fn apply(&self, worker: &Arc<Worker>, entry: &kv::Entry) {
        let applied = match Envelope::from_json(&entry.value) {
            // The key names the peer and the kind the envelope must have.
            Ok(envelope) if push_key(&envelope).as_deref() != Some(entry.key.as_str()) => {
                Err(InvocationError::invalid(format!(
                    "the push under {} is not a push of that kind for that peer",
                    entry.key
                )))
            }
            Ok(envelope) => worker.apply_shared_push(&envelope).await,
            Err(e) => Err(e.into()),
        };
        match applied {
            Ok(Some(_)) => tracing::info!(
                target: "peerhost::cluster",
                "a push from the cluster is in force: {}", entry.key
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                target: "peerhost::cluster",
                "a push from the cluster was refused ({}): {e}", entry.key
            ),
        }
    }

    /// Puts in force at `worker` each push shared for the peer `id`, the
    /// last ones first, then every new one, until stopped.
    async fn follow_pushes(&self, worker: Arc<Worker>, id: PeerId) {
        let keys = format!("{}.*", key_of(&id));
        let mut pause = Duration::from_millis(100);
        loop {
            match self.pushes.watch_with_history(&keys).await {
                Ok(mut watch) => {
                    pause = Duration::from_millis(100);
                    while let Some(entry) = watch.next().await {
                        let entry = match entry {
                            Ok(entry) => entry,
                            Err(e) => {
                                tracing::warn!(target: "peerhost::cluster", "watching {keys}: {e}");
                                break;
                            }
                        };
                        if entry.operation == kv::Operation::Put {
                            self.apply(&worker, &entry).await;
                        }
                    }
                }
                Err(e) => tracing::warn!(target: "peerhost::cluster", "cannot watch {keys}: {e}"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// The servers this connection was made from.
    pub fn servers(&self) -> &str {
        &self.servers
    }

    /// Subscribes for every peer `worker` hosts and answers their envelopes
    /// until the returned [`Serving`] is stopped: at most `max_in_flight`
    /// at once.
    pub async fn serve(
        &self,
        worker: Arc<Worker>,
        max_in_flight: u32,
    ) -> Result<Serving, ClusterError> {
        let permits = Arc::new(Semaphore::new(max_in_flight as usize));
        let mut tasks = tokio::task::JoinSet::new();
        {
            let (nats, worker) = (self.clone(), worker.clone());
            tasks.spawn(async move { nats.share_spending(worker).await });
        }
        for (_, id) in worker.deployment.peers.ids() {
            self.catch_up(&worker, &id).await;
            let usage = usage_subject(&id);
            let mut reports = self.client.subscribe(usage.clone()).await.map_err(|e| {
                ClusterError::Subscribe {
                    subject: usage,
                    message: e.to_string(),
                }
            })?;
            let (nats, counter) = (self.clone(), worker.clone());
            tasks.spawn(async move {
                while let Some(report) = reports.next().await {
                    nats.spent_elsewhere(&counter, &id, &report.payload).await;
                }
            });
            let (nats, follower) = (self.clone(), worker.clone());
            tasks.spawn(async move { nats.follow_pushes(follower, id).await });
            let subject = subject(&id);
            let mut subscriber = self
                .client
                .queue_subscribe(subject.clone(), QUEUE.to_owned())
                .await
                .map_err(|e| ClusterError::Subscribe {
                    subject: subject.clone(),
                    message: e.to_string(),
                })?;
            let (nats, worker, permits) = (self.clone(), worker.clone(), permits.clone());
            tasks.spawn(async move {
                // A permit first: a worker at `max_in_flight` takes no more
                // messages (they wait in the subscription's bounded buffer).
                loop {
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        break;
                    };
                    let Some(message) = subscriber.next().await else {
                        break;
                    };
                    let (nats, worker) = (nats.clone(), worker.clone());
                    tokio::spawn(async move {
                        nats.answer(&worker, message).await;
                        drop(permit);
                    });
                }
            });
        }
        // Once the server has the subscriptions, the banner may say ready.
        self.client
            .flush()
            .await
            .map_err(|e| ClusterError::Subscribe {
                subject: format!("{SUBJECT_PREFIX}.*"),
                message: e.to_string(),
            })?;
        Ok(Serving {
            nats: self.clone(),
            tasks,
            permits,
            max_in_flight,
        })
    }

    /// Answers one request for a hosted peer.
    async fn answer(&self, worker: &Arc<Worker>, message: Message) {
        let Some(reply) = message.reply.clone() else {
            return; // a publish, not a request: nobody to answer
        };
        let (body, reply) = match self.gather(message, reply.to_string()).await {
            Ok(gathered) => gathered,
            Err((e, reply)) => {
                self.respond(&reply, Err(e)).await;
                return;
            }
        };
        let result = match Envelope::from_json(&body) {
            Ok(envelope) => worker.accept(&envelope).await,
            Err(e) => Err(e.into()),
        };
        self.respond(&reply, result.map_err(|e| worker.public(e)))
            .await;
    }

    /// The whole envelope of a request, its parts gathered, and the subject
    /// its answer goes to.
    async fn gather(
        &self,
        first: Message,
        reply: String,
    ) -> Result<(Bytes, String), (InvocationError, String)> {
        let parts = match header(&first, PARTS) {
            None => return Ok((first.payload, reply)),
            Some(parts) => parts,
        };
        let parts: usize = match parts.parse() {
            Ok(n) if n >= 1 => n,
            _ => {
                let e = InvocationError::invalid(format!("`{PARTS}: {parts}` is not a count"));
                return Err((e, reply));
            }
        };
        // Parts hold at most one message's payload each, every one but
        // the last full, and a sender's part is at least MIN_PART.
        if parts > 1 && first.payload.len() < MIN_PART {
            let e = InvocationError::invalid(format!(
                "an envelope in {parts} parts whose first is {} bytes (parts are at least {MIN_PART})",
                first.payload.len()
            ));
            return Err((e, reply));
        }
        if (parts - 1).saturating_mul(first.payload.len()) > MAX_ENVELOPE {
            let e = InvocationError::from(crate::envelope::EnvelopeError::TooLarge(
                (parts - 1).saturating_mul(first.payload.len()),
            ));
            return Err((e, reply));
        }
        let inbox = self.client.new_inbox();
        let mut parts_in = match self.client.subscribe(inbox.clone()).await {
            Ok(subscriber) => subscriber,
            Err(e) => {
                let e = InvocationError::failed(format!("cannot take the envelope's parts: {e}"));
                return Err((e, reply));
            }
        };
        let gathered_by = Instant::now() + GATHER_WAIT;
        let mut body = first.payload.to_vec();
        let mut headers = HeaderMap::new();
        headers.insert(NEXT, inbox.as_str());
        let mut ack_to = reply;
        let mut ack = Some(headers);
        for _ in 1..parts {
            let sent = match ack.take() {
                Some(headers) => {
                    self.client
                        .publish_with_headers(ack_to.clone(), headers, Bytes::new())
                        .await
                }
                None => self.client.publish(ack_to.clone(), Bytes::new()).await,
            };
            if let Err(e) = sent {
                let e = InvocationError::failed(format!("cannot ask for the next part: {e}"));
                return Err((e, ack_to));
            }
            let wait = PART_WAIT.min(gathered_by.saturating_duration_since(Instant::now()));
            let next = tokio::time::timeout(wait, parts_in.next()).await;
            let Ok(Some(part)) = next else {
                // The sender went away: nobody is left to answer.
                let e = InvocationError::failed("the envelope's next part did not come");
                return Err((e, ack_to));
            };
            let Some(reply) = part.reply.clone() else {
                let e = InvocationError::invalid("an envelope's part came without a reply subject");
                return Err((e, ack_to));
            };
            ack_to = reply.to_string();
            body.extend_from_slice(&part.payload);
            if body.len() > MAX_ENVELOPE {
                let e = InvocationError::from(crate::envelope::EnvelopeError::TooLarge(body.len()));
                return Err((e, ack_to));
            }
        }
        let _ = parts_in.unsubscribe().await;
        Ok((Bytes::from(body), ack_to))
    }

    /// Sends the answer `result` to `reply`, in parts when it is bigger
    /// than a message.
    async fn respond(&self, reply: &str, result: Result<Value, InvocationError>) {
        let (status, value) = match result {
            Ok(value) => ("ok", value),
            Err(error) => ("error", json!({ "error": error })),
        };
        let body = match serde_json::to_vec(&value) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                tracing::error!(target: "peerhost::cluster", "cannot encode an answer: {e}");
                return;
            }
        };
        let mut headers = HeaderMap::new();
        headers.insert(STATUS, status);
        if body.len() <= self.part {
            if let Err(e) = self
                .client
                .publish_with_headers(reply.to_owned(), headers, body)
                .await
            {
                tracing::warn!(target: "peerhost::cluster", "cannot send an answer: {e}");
            }
            return;
        }
        let count = body.len().div_ceil(self.part);
        let inbox = self.client.new_inbox();
        let mut asks = match self.client.subscribe(inbox.clone()).await {
            Ok(subscriber) => subscriber,
            Err(e) => {
                tracing::warn!(target: "peerhost::cluster", "cannot send an answer in parts: {e}");
                return;
            }
        };
        headers.insert(PARTS, count.to_string());
        headers.insert(NEXT, inbox.as_str());
        let part = |i: usize| body.slice(i * self.part..((i + 1) * self.part).min(body.len()));
        if let Err(e) = self
            .client
            .publish_with_headers(reply.to_owned(), headers, part(0))
            .await
        {
            tracing::warn!(target: "peerhost::cluster", "cannot send an answer: {e}");
            return;
        }
        let mut sent = 1;
        while sent < count {
            let Ok(Some(ask)) = tokio::time::timeout(PART_WAIT, asks.next()).await else {
                tracing::warn!(target: "peerhost::cluster", "the caller stopped taking an answer's parts");
                break;
            };
            let Some(to) = ask.reply else { continue };
            let index = std::str::from_utf8(&ask.payload)
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|&i| i >= 1 && i < count);
            let payload = index.map(part).unwrap_or_default();
            let _ = self.client.publish(to, payload).await;
            if index == Some(count - 1) {
                sent = count;
            } else if index.is_some() {
                sent += 1;
            }
        }
        let _ = asks.unsubscribe().await;
    }

    /// One request of an exchange, within `deadline`.
    async fn request(
        &self,
        subject: String,
        headers: Option<HeaderMap>,
        payload: Bytes,
        deadline: Instant,
    ) -> Result<Message, async_nats::RequestError> {
        let mut request = Request::new()
            .payload(payload)
            .timeout(Some(deadline.saturating_duration_since(Instant::now())));
        if let Some(headers) = headers {
            request = request.headers(headers);
        }
        self.client.send_request(subject, request).await
    }

    /// Sends `envelope` and waits for its answer until `deadline`.
    async fn exchange(&self, envelope: Envelope, deadline: Instant) -> Result<Value, Unsent> {
        let target = envelope.target.clone();
        let lost = |e: async_nats::RequestError| -> Unsent {
            Unsent::Failed(match e.kind() {
                RequestErrorKind::TimedOut => InvocationError::failed(format!(
                    "no answer from the cluster for {target} in the time left: it may have run; \
                     sending it again would be refused as a replay"
                )),
                RequestErrorKind::NoResponders => InvocationError::failed(format!(
                    "the worker taking an envelope for {target} went away: it did not run"
                )),
                _ => InvocationError::failed(format!(
                    "cannot send an envelope for {target} through the cluster: {e}"
                )),
            })
        };
        let id: PeerId = envelope.target.parse().map_err(|e| {
            Unsent::Failed(InvocationError::invalid(format!("envelope target: {e}")))
        })?;
        let body = serde_json::to_vec(&envelope).map_err(|e| {
            Unsent::Failed(InvocationError::failed(format!(
                "cannot encode the envelope: {e}"
            )))
        })?;
        let body = Bytes::from(body);
        let count = body.len().div_ceil(self.part).max(1);
        let part = |i: usize| body.slice(i * self.part..((i + 1) * self.part).min(body.len()));
        let headers = (count > 1).then(|| {
            let mut headers = HeaderMap::new();
            headers.insert(PARTS, count.to_string());
            headers
        });
        // The first part finds a worker: until one has subscribed on every
        // server of the cluster, NATS may say nobody has.
        let asked = Instant::now();
        let mut pause = Duration::from_millis(5);
        let mut reply = loop {
            match self
                .request(subject(&id), headers.clone(), part(0), deadline)
                .await
            {
                Ok(reply) => break reply,
                Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                    let waited = asked.elapsed();
                    if waited >= NO_RESPONDERS_WAIT || Instant::now() + pause >= deadline {
                        return Err(Unsent::NoWorker(format!(
                            "no worker of the cluster hosts it (asked for {waited:.0?})"
                        )));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(e) => return Err(lost(e)),
            }
        };
        if count > 1 && header(&reply, STATUS).is_none() {
            let Some(next) = header(&reply, NEXT).map(str::to_owned) else {
                return Err(Unsent::Failed(InvocationError::failed(
                    "the worker taking a parted envelope named no subject for its next part",
                )));
            };
            for i in 1..count {
                reply = self
                    .request(next.clone(), None, part(i), deadline)
                    .await
                    .map_err(lost)?;
                if header(&reply, STATUS).is_some() {
                    break; // the answer (before the last part: a refusal)
                }
            }
        }
        self.answer_of(reply, deadline)
            .await
            .map_err(Unsent::Failed)
    }

    /// The answer `reply` carries, its parts fetched.
    async fn answer_of(&self, reply: Message, deadline: Instant) -> Result<Value, InvocationError> {
        let status = header(&reply, STATUS).map(str::to_owned);
        let mut body = reply.payload.to_vec();
        if let Some(parts) = header(&reply, PARTS) {
            let count = parts
                .parse::<usize>()
                .ok()
                .filter(|&n| n >= 1 && (n - 1).saturating_mul(self.part) <= MAX_RESULT + HEADROOM)
                .ok_or_else(|| {
                    InvocationError::failed(format!("an answer of `{PARTS}: {parts}` parts"))
                })?;
            let next = header(&reply, NEXT)
                .ok_or_else(|| InvocationError::failed("a parted answer named no subject"))?
                .to_owned();
            for i in 1..count {
                let part = self
                    .request(next.clone(), None, Bytes::from(i.to_string()), deadline)
                    .await
                    .map_err(|e| {
                        InvocationError::failed(format!("cannot take an answer's part {i}: {e}"))
                    })?;
                body.extend_from_slice(&part.payload);
            }
        }
        let value: Value = serde_json::from_slice(&body).map_err(|e| {
            InvocationError::failed(format!(
                "the cluster answered with a body that is not JSON: {e}"
            ))
        })?;
        match status.as_deref() {
            Some("ok") => Ok(value),
            Some("error") => Err(crate::client::error_of(&value)),
            other => Err(InvocationError::failed(format!(
                "the cluster answered with `{STATUS}: {}`",
                other.unwrap_or("(none)")
            ))),
        }
    }
}

impl Cluster for Nats {
    fn send(&self, envelope: Envelope, timeout: Duration) -> Sending {
        let nats = self.clone();
        let deadline = Instant::now() + timeout;
        Box::pin(async move { nats.exchange(envelope, deadline).await })
    }

    fn admit(&self, opened: &Opened) -> Sharing {
        let nats = self.clone();
        let key = format!(
            "{}.{}",
            key_of(&opened.target),
            hex::encode(crate::replay::record_key(opened))
        );
        let nonce = hex::encode(opened.nonce);
        Box::pin(async move { nats.admit_nonce(key, nonce).await })
    }

    fn pushed(&self, target: &PeerId, kind: &'static str, envelope: &Envelope) -> Sharing {
        let nats = self.clone();
        let (target, issued_at) = (*target, envelope.issued_at);
        let json = serde_json::to_vec(envelope).map(Bytes::from);
        Box::pin(async move {
            let json = json.map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
            nats.share_push(target, kind, json, issued_at).await
        })
    }
}

/// The key in [`PUSHES`] of the push `envelope`: `<peer key>.logic` or
/// `<peer key>.policy`; `None` for any other envelope.
fn push_key(envelope: &Envelope) -> Option<String> {
    let kind = match envelope.kind {
        crate::envelope::Kind::LogicPush => "logic",
        crate::envelope::Kind::PolicyPush => "policy",
        _ => return None,
    };
    let target: PeerId = envelope.target.parse().ok()?;
    Some(format!("{}.{kind}", key_of(&target)))
}

/// When the push stored as `value` was issued, if it is a genuine push of
/// `kind` (`logic.push`, `policy.push`) signed by `target` itself.
fn genuine_push(value: &[u8], target: &PeerId, kind: &str) -> Option<u64> {
    let envelope = Envelope::from_json(value).ok()?;
    let issued = std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(envelope.issued_at);
    let opened = envelope.open(issued).ok()?;
    let its_kind = match opened.invocation {
        crate::invocation::Invocation::PushLogic { .. } => "logic.push",
        crate::invocation::Invocation::PushPolicy { .. } => "policy.push",
        _ => return None,
    };
    (opened.caller == *target && opened.target == *target && its_kind == kind)
        .then_some(opened.issued_at)
}

/// The bucket of `config`, made when no worker has made it yet.
async fn bucket(
    jetstream: &async_nats::jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, ClusterError> {
    let name: &'static str = if config.bucket == NONCES {
        NONCES
    } else {
        PUSHES
    };
    if let Ok(store) = jetstream.get_key_value(&config.bucket).await {
        return Ok(store);
    }
    match jetstream.create_key_value(config).await {
        Ok(store) => Ok(store),
        // Another worker made it in between.
        Err(created) => jetstream
            .get_key_value(name)
            .await
            .map_err(|_| ClusterError::Shared {
                bucket: name,
                message: created.to_string(),
            }),
    }
}

/// The value of header `name` of `message`.
fn header<'m>(message: &'m Message, name: &str) -> Option<&'m str> {
    Some(message.headers.as_ref()?.get(name)?.as_str())
}

/// A worker answering its peers' envelopes from the cluster.
#[derive(Debug)]
pub struct Serving {
    nats: Nats,
    tasks: tokio::task::JoinSet<()>,
    permits: Arc<Semaphore>,
    max_in_flight: u32,
}

impl Serving {
    /// Stops taking envelopes (the subscriptions end, so the cluster sends
    /// them to the peers' other workers) and waits, at most `grace`, for
    /// those in flight to be answered.
    pub async fn stop(mut self, grace: Duration) {
        // A subscriber dropped is unsubscribed; the connection stays up for
        // the delegations of the invocations still running.
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let _ = self.nats.client.flush().await;
        let _ = tokio::time::timeout(grace, self.permits.acquire_many(self.max_in_flight)).await;
        if let Err(e) = self.nats.client.drain().await {
            tracing::warn!(target: "peerhost::cluster", "cannot drain the NATS connection: {e}");
        }
    }
}
