//! The deployment's configuration files: `peerhost.toml` (the worker) and
//! `peers/<name>/peer.toml` (one peer). Unknown fields are rejected; every
//! error names the file and the line.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A deployment file or directory that cannot be used: a configuration or
/// policy file that does not parse or validate, or a directory that cannot be
/// read, created or written.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct DeploymentError {
    /// The file.
    pub path: PathBuf,
    /// The 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong and, where possible, what to do.
    pub message: String,
}

impl DeploymentError {
    /// An error about `path` as a whole.
    pub fn file(path: &Path, message: impl Into<String>) -> DeploymentError {
        DeploymentError {
            path: path.to_owned(),
            line: None,
            message: message.into(),
        }
    }

    /// An error at byte `offset` of `text`, the contents of `path`.
    pub fn at_offset(
        path: &Path,
        text: &str,
        offset: usize,
        message: impl Into<String>,
    ) -> DeploymentError {
        let line = text.get(..offset).unwrap_or(text).matches('\n').count() + 1;
        DeploymentError {
            path: path.to_owned(),
            line: Some(line),
            message: message.into(),
        }
    }
}

/// `peerhost.toml`: how one worker runs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Where `peerhost serve` listens unless `--listen` says otherwise.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The peers this deployment hosts; every directory of `peers/` when absent.
    #[serde(default)]
    pub peers: Option<Vec<String>>,
    /// Default limits of every invocation.
    #[serde(default)]
    pub limits: Limits,
    /// Whether an invocation gets a fresh guest instance or may reuse one.
    #[serde(default)]
    pub instances: Instances,
    /// Fresh instances of one version of a peer's logic before the worker
    /// builds a snapshot of the guest with that version compiled (about a
    /// second of one core in the background, about 8 MB in the compiled
    /// guest's cache directory); later fresh instances of the version start
    /// from it. 0: never.
    #[serde(default = "default_snapshot_after")]
    pub snapshot_after: u32,
    /// Limits of the HTTP front.
    #[serde(default)]
    pub http: HttpLimits,
    /// What `serve` does about a peer whose storage cannot be opened.
    #[serde(default)]
    pub storage: WorkerStorage,
    /// The NATS cluster this worker joins, if any (`serve --nats` too).
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// The Prometheus endpoint, `GET /metrics`.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Where spans are exported, if anywhere.
    #[serde(default)]
    pub traces: TracesConfig,
}

/// `[traces]` of `peerhost.toml`: the OpenTelemetry collector that gets a
/// span of every invocation (OTLP over HTTP, JSON), if any.
///
/// ```toml
/// [traces]
/// endpoint = "http://127.0.0.1:4318"   # spans go to /v1/traces under it
/// ```
///
/// Without it, `OTEL_EXPORTER_OTLP_ENDPOINT` names the collector; without
/// either, no span leaves the worker (trace ids are in the audit and the
/// log all the same).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TracesConfig {
    /// The collector's base URL, `http://` or `https://`.
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// `[metrics]` of `peerhost.toml`: the worker's `GET /metrics` (see
/// `crate::metrics`).
///
/// ```toml
/// [metrics]
/// enabled = true                 # the default
/// listen = "127.0.0.1:9464"      # optional: its own address
/// peers = ["alice", "bob"]       # named in labels; the others are `other`
/// ```
///
/// Without `listen`, `/metrics` is served on the API's address to loopback
/// clients only; with it, on that address alone, to whoever reaches it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Whether `/metrics` is served at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// An address of its own for `/metrics`.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The peers named in labels (at most [`MAX_METRIC_PEERS`]); every
    /// other peer is counted as `other`, so series stay few.
    #[serde(default)]
    pub peers: Vec<String>,
}

/// Most peers `[metrics] peers` may name.
pub const MAX_METRIC_PEERS: usize = 256;

fn default_true() -> bool {
    true
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: None,
            peers: Vec::new(),
        }
    }
}

/// `[cluster]` of `peerhost.toml`: the NATS cluster a serving worker joins.
/// Each hosted peer is then reached by its id alone, from any worker of
/// the cluster (see `crate::cluster`).
///
/// ```toml
/// [cluster]
/// servers = ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]
/// credentials = "nats.creds"   # optional, relative to the deployment
/// replicas = 3                  # copies of the shared state (JetStream)
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers (`nats://host:port` or `tls://host:port`): the client
    /// connects to one and learns the others from it.
    pub servers: Vec<String>,
    /// A NATS credentials file (JWT and NKey seed), relative to the
    /// deployment directory.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// Envelopes from the cluster run at once by this worker; more wait.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Copies the cluster keeps of its shared state (the nonces of every
    /// envelope accepted, the owners' last pushes): 1 to 5, at most the
    /// number of servers; 3 survives the loss of one server.
    #[serde(default = "default_replicas")]
    pub replicas: u8,
}

fn default_replicas() -> u8 {
    1
}

fn default_max_in_flight() -> u32 {
    1_024
}

/// Most envelopes `max_in_flight` may allow.
pub const MAX_IN_FLIGHT: u64 = 65_536;

impl ClusterConfig {
    /// A `[cluster]` of `servers` given on the command line
    /// (`nats://a:4222,nats://b:4222`), with the file's other settings.
    pub fn with_servers(file: Option<&ClusterConfig>, servers: &str) -> ClusterConfig {
        ClusterConfig {
            servers: servers
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            credentials: file.and_then(|f| f.credentials.clone()),
            max_in_flight: file.map_or_else(default_max_in_flight, |f| f.max_in_flight),
            replicas: file.map_or_else(default_replicas, |f| f.replicas),
        }
    }

    /// Why these settings cannot be used, if they cannot.
    pub fn problem(&self) -> Option<String> {
        if self.servers.is_empty() {
            return Some("`servers` names no NATS server".to_owned());
        }
        if let Some(bad) = self.servers.iter().find(|s| {
            !(s.starts_with("nats://") || s.starts_with("tls://"))
                || s.contains(char::is_whitespace)
        }) {
            return Some(format!(
                "`{bad}` is not a nats:// or tls:// URL of a NATS server"
            ));
        }
        if self.max_in_flight == 0 || u64::from(self.max_in_flight) > MAX_IN_FLIGHT {
            return Some(format!(
                "`max_in_flight` = {} must be 1 to {MAX_IN_FLIGHT}",
                self.max_in_flight
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Some(format!("`replicas` = {} must be 1 to 5", self.replicas));
        }
        None
    }
}

/// `[storage]` of `peerhost.toml`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WorkerStorage {
    /// What `serve` does when a peer's kv store cannot be opened at start
    /// (a corrupt database, a file of a newer version).
    #[serde(default)]
    pub on_error: OnStorageError,
}

/// See [`WorkerStorage::on_error`].
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnStorageError {
    /// Name the peer, the backend and the cause, and exit non-zero.
    #[default]
    Exit,
    /// Say so, serve the other peers, and answer that peer's kv calls with
    /// `failed`.
    Isolate,
}

/// Limits of the HTTP front (`[http]` in `peerhost.toml`): what a slow or
/// greedy client may hold.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpLimits {
    /// Connections served at once; further clients wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: u64,
    /// Time a client has to send a request's headers, in milliseconds:
    /// counted from accept for a connection's first request (bytes that
    /// start no request, such as HTTP/2 PINGs, do not stop the clock), and
    /// from the first byte of the head for later HTTP/1 requests.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Time a client has to send a request's body, in milliseconds.
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// Time a connection may stay without a request in flight, counted
    /// from its last answer being ready, in milliseconds. Only requests
    /// count: bytes such as HTTP/2 PINGs keep no connection open.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: default_max_connections(),
            header_timeout_ms: default_header_timeout_ms(),
            body_timeout_ms: default_body_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
        }
    }
}

fn default_max_connections() -> u64 {
    1_024
}

fn default_header_timeout_ms() -> u64 {
    10_000
}

fn default_body_timeout_ms() -> u64 {
    30_000
}

fn default_idle_timeout_ms() -> u64 {
    120_000
}

/// Most connections `max_connections` may allow.
pub const MAX_CONNECTIONS: u64 = 65_536;

/// Longest of the HTTP timeouts, in milliseconds (an hour).
pub const MAX_HTTP_TIMEOUT_MS: u64 = 3_600_000;

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            listen: default_listen(),
            peers: None,
            limits: Limits::default(),
            instances: Instances::default(),
            snapshot_after: DEFAULT_SNAPSHOT_AFTER,
            http: HttpLimits::default(),
            storage: WorkerStorage::default(),
            cluster: None,
            metrics: MetricsConfig::default(),
            traces: TracesConfig::default(),
        }
    }
}

/// How invocations get their guest instance (`instances` in `peerhost.toml`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Instances {
    /// A fresh instance for every invocation, dropped afterwards: nothing
    /// but the namespace on disk survives an invocation. The default.
    #[default]
    Fresh,
    /// An instance may serve later invocations of the same caller at the
    /// same peer (never another caller's), until it traps, the logic
    /// changes or it has served 1,000; faster, most for calls of logic
    /// functions, whose compiled logic it keeps.
    PerCaller,
}

/// `snapshot_after` when `peerhost.toml` does not say.
pub const DEFAULT_SNAPSHOT_AFTER: u32 = 16;

fn default_snapshot_after() -> u32 {
    DEFAULT_SNAPSHOT_AFTER
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7070))
}

/// Limits of one invocation. In `peer.toml` each may only narrow the worker's.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Wall time of one invocation, in milliseconds.
    #[serde(default = "default_wall_time_ms")]
    pub wall_time_ms: u64,
    /// Linear memory of one instance, in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Rhai operations of one invocation (each request of it: the
    /// `on_script` hook and the script count separately).
    #[serde(default = "default_operations")]
    pub operations: u64,
}

fn default_operations() -> u64 {
    50_000_000
}

/// Most Rhai operations a limit may allow.
pub const MAX_OPERATIONS: u64 = 10_000_000_000;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            operations: default_operations(),
            wall_time_ms: default_wall_time_ms(),
            memory_mib: default_memory_mib(),
        }
    }
}

fn default_wall_time_ms() -> u64 {
    1_000
}

fn default_memory_mib() -> u64 {
    64
}

/// Optional limits in `peer.toml`, each narrowing the worker's.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerLimits {
    /// Narrower wall time, in milliseconds.
    pub wall_time_ms: Option<u64>,
    /// Narrower memory, in MiB.
    pub memory_mib: Option<u64>,
    /// Fewer Rhai operations.
    pub operations: Option<u64>,
}

impl Limits {
    /// These limits narrowed by a peer's: the smaller of each.
    pub fn narrowed(self, peer: &PeerLimits) -> Limits {
        Limits {
            wall_time_ms: peer
                .wall_time_ms
                .map_or(self.wall_time_ms, |v| v.min(self.wall_time_ms)),
            memory_mib: peer
                .memory_mib
                .map_or(self.memory_mib, |v| v.min(self.memory_mib)),
            operations: peer
                .operations
                .map_or(self.operations, |v| v.min(self.operations)),
        }
    }
}

/// `peers/<name>/peer.toml`: one peer.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's id (`did:key:z6Mk…`); may be left out where the peer's
    /// key (`keys/<name>.key`) is present, which then defines it.
    #[serde(default)]
    pub id: Option<crate::identity::PeerId>,
    /// A line saying what this peer is for.
    #[serde(default)]
    pub description: String,
    /// Who owns the peer, for people reading the deployment.
    #[serde(default)]
    pub owner: Owner,
    /// Where the `kv` capability keeps data.
    #[serde(default)]
    pub storage: Storage,
    /// Limits narrower than the worker's.
    #[serde(default)]
    pub limits: PeerLimits,
    /// What each caller may ask of this peer (caller pays).
    #[serde(default)]
    pub quotas: crate::quota::Quotas,
}

/// Owner metadata of a peer.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    /// The owner's name.
    #[serde(default)]
    pub name: String,
    /// How to reach the owner.
    #[serde(default)]
    pub contact: String,
}

/// `[storage]` of a `peer.toml`: where the `kv` capability keeps data.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// The kv backend (`backend`, its name in earlier versions, is read
    /// too). Without `[storage]`, `fs`: what earlier deployments have.
    #[serde(default, alias = "backend")]
    pub kv: Backend,
    /// SQLite's `synchronous` mode (see [`crate::kv::sqlite`]).
    #[serde(default)]
    pub synchronous: crate::kv::sqlite::Synchronous,
    /// The bucket, for `kv = "s3"` or `fs = "s3"` (see [`crate::kv::s3`]).
    #[serde(default)]
    pub s3: Option<crate::kv::s3::S3Config>,
    /// Where the namespace (the guest's `/`) is kept.
    #[serde(default)]
    pub fs: FsBackend,
}

/// Known namespace backends.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FsBackend {
    /// The host directory `peers/<name>/data`.
    #[default]
    Dir,
    /// Rows of the peer's `kv.sqlite` (see [`crate::namespace::sqlite`]).
    Sqlite,
    /// Objects in the bucket of `[storage.s3]` (see [`crate::namespace::s3`]).
    S3,
}

impl FsBackend {
    /// Its name in `peer.toml`.
    pub fn name(self) -> &'static str {
        match self {
            FsBackend::Dir => "dir",
            FsBackend::Sqlite => "sqlite",
            FsBackend::S3 => "s3",
        }
    }
}

/// Known kv backends.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One file per key in `peers/<name>/kv/`.
    #[default]
    Fs,
    /// One SQLite database, `peers/<name>/kv.sqlite`: what new peers get.
    Sqlite,
    /// Objects in an S3 bucket, `[storage.s3]`.
    S3,
}

impl Backend {
    /// Its name in `peer.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Fs => "fs",
            Backend::Sqlite => "sqlite",
            Backend::S3 => "s3",
        }
    }
}

/// Largest `wall_time_ms`: one hour.
pub const MAX_WALL_TIME_MS: u64 = 3_600_000;

/// Largest `memory_mib`: the 4 GiB of a 32-bit linear memory.
pub const MAX_MEMORY_MIB: u64 = 4096;

pub(crate) fn check_range(
    path: &Path,
    text: &str,
    name: &str,
    value: Option<u64>,
    max: u64,
) -> Result<(), DeploymentError> {
    match value {
        Some(v) if v == 0 || v > max => {
            let offset = text.find(name).unwrap_or(0);
            Err(DeploymentError::at_offset(
                path,
                text,
                offset,
                format!("`{name}` = {v} is out of range 1..={max}"),
            ))
        }
        _ => Ok(()),
    }
}

/// A configuration file whose values can be range-checked after parsing.
pub trait Validate {
    /// Checks ranges; `text` is the file's contents, for line numbers.
    fn validate(&self, path: &Path, text: &str) -> Result<(), DeploymentError>;
}

fn check_limits(
    path: &Path,
    text: &str,
    wall_time_ms: Option<u64>,
    memory_mib: Option<u64>,
) -> Result<(), DeploymentError> {
    check_range(path, text, "wall_time_ms", wall_time_ms, MAX_WALL_TIME_MS)?;
    check_range(path, text, "memory_mib", memory_mib, MAX_MEMORY_MIB)
}

impl Validate for WorkerConfig {
    fn validate(&self, path: &Path, text: &str) -> Result<(), DeploymentError> {
        let Limits {
            wall_time_ms,
            memory_mib,
            operations,
        } = self.limits;
        check_limits(path, text, Some(wall_time_ms), Some(memory_mib))?;
        check_range(path, text, "operations", Some(operations), MAX_OPERATIONS)?;
        let http = self.http;
        check_range(
            path,
            text,
            "max_connections",
            Some(http.max_connections),
            MAX_CONNECTIONS,
        )?;
        for (name, value) in [
            ("header_timeout_ms", http.header_timeout_ms),
            ("body_timeout_ms", http.body_timeout_ms),
            ("idle_timeout_ms", http.idle_timeout_ms),
        ] {
            check_range(path, text, name, Some(value), MAX_HTTP_TIMEOUT_MS)?;
        }
        if http.idle_timeout_ms <= wall_time_ms {
            // A connection is silent while its invocation runs.
            return Err(DeploymentError::at_offset(
                path,
                text,
                text.find("idle_timeout_ms").unwrap_or(0),
                format!(
                    "`idle_timeout_ms` = {} must be longer than `wall_time_ms` = {wall_time_ms}: \
                     a connection is silent while its invocation runs",
                    http.idle_timeout_ms
                ),
            ));
        }
        if let Some(endpoint) = &self.traces.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(DeploymentError::at_offset(
                path,
                text,
                text.find("endpoint").unwrap_or(0),
                format!("[traces]: `endpoint` = {endpoint:?} must be an http:// or https:// URL"),
            ));
        }
        if self.metrics.peers.len() > MAX_METRIC_PEERS {
            return Err(DeploymentError::at_offset(
                path,
                text,
                text.find("[metrics]").unwrap_or(0),
                format!(
                    "[metrics]: `peers` names {} peers, more than {MAX_METRIC_PEERS}: \
                     one series per peer is for the few an operator watches",
                    self.metrics.peers.len()
                ),
            ));
        }
        if let Some(problem) = self.cluster.as_ref().and_then(ClusterConfig::problem) {
            return Err(DeploymentError::at_offset(
                path,
                text,
                text.find("[cluster]").unwrap_or(0),
                format!("[cluster]: {problem}"),
            ));
        }
        Ok(())
    }
}

impl Validate for PeerConfig {
    fn validate(&self, path: &Path, text: &str) -> Result<(), DeploymentError> {
        check_limits(path, text, self.limits.wall_time_ms, self.limits.memory_mib)?;
        check_range(
            path,
            text,
            "operations",
            self.limits.operations,
            MAX_OPERATIONS,
        )?;
        self.quotas.validate(path, text)
    }
}

/// Reads, parses and validates a TOML file, naming file and line on failure.
pub fn load_toml<T: for<'de> Deserialize<'de> + Validate>(
    path: &Path,
) -> Result<T, DeploymentError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DeploymentError::file(path, format!("cannot read: {e}")))?;
    let value: T = parse_toml(path, &text)?;
    value.validate(path, &text)?;
    Ok(value)
}

/// Parses TOML `text` read from `path`.
pub fn parse_toml<T: for<'de> Deserialize<'de>>(
    path: &Path,
    text: &str,
) -> Result<T, DeploymentError> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().to_owned();
        match e.span() {
            Some(span) => DeploymentError::at_offset(path, text, span.start, message),
            None => DeploymentError::file(path, message),
        }
    })
}
