//! The command line's arguments, as clap parses them (`peerhost --help`).

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "peerhost",
    version,
    about = "WebAssembly-sandboxed execution host for decentralized backend ownership",
    long_about = "Hosts peers, each with its own namespace, Rhai logic and Cedar policy, in wasmtime sandboxes.\n\n\
Exit codes: 0 ok, 1 error, 2 usage, 3 denied, 4 not-found, 5 invalid, 6 limit, 7 failed.\n\n\
The guest component is pre-initialised and compiled on a build's first start (about 3 s), then cached in $PEERHOST_CACHE_DIR (default: $XDG_CACHE_HOME/peerhost or ~/.cache/peerhost; `off` disables it). PEERHOST_LOG (else RUST_LOG) filters the log (e.g. PEERHOST_LOG=info,peerhost::decision=debug); --log-format json writes one JSON object a line."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How log lines (on stderr) are written: `text` (colours only on a
    /// terminal) or `json` (one object a line; the lines of an invocation
    /// carry its id in `span.invocation`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PEERHOST_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a demo deployment with peers alice and bob.
    #[command(after_help = "Example:\n  peerhost init demo && peerhost serve --dir demo")]
    Init {
        /// Directory to create the deployment in (created if missing; never overwritten).
        dir: PathBuf,
    },
    /// Create or show peer identities, and what callers used at a peer.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Serve a deployment's peers over HTTP until Ctrl-C (limits: [http] and
    /// [limits] in peerhost.toml; quotas: [quotas] in peer.toml).
    #[command(
        after_help = "A logic version called `snapshot_after` times (peerhost.toml, default 16) is snapshotted parsed in the background (about 2 s of CPU, cached with the compiled guest); its later fresh instances start from it.\n\nExamples:\n  peerhost serve --dir demo\n  peerhost serve --dir demo --listen 127.0.0.1:0 --peer alice   # isolated worker\n  peerhost serve --dir demo --nats nats://127.0.0.1:4222         # in a cluster: peers reached by id\n\nIn a cluster each hosted peer is subscribed on peerhost.peer.<its did:key without `did:key:`> in the queue group `peerhost`; a contact needs only its id (routing: hosted here, then the cluster, then its url).\n\nMetrics: GET /metrics (Prometheus text; OpenMetrics when Accept asks), to loopback clients on the API's address, or on [metrics] listen in peerhost.toml. Spans: to the OTLP collector of [traces] endpoint (else OTEL_EXPORTER_OTLP_ENDPOINT), none without one (see README.md, Operating a worker)."
    )]
    Serve {
        /// The deployment directory.
        #[arg(long, default_value = ".", env = "PEERHOST_DIR")]
        dir: PathBuf,
        /// Address to listen on (port 0 picks a free port); default: `listen` of peerhost.toml.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Host only this peer (repeatable): an isolated worker. Default: all peers.
        #[arg(long = "peer", value_name = "NAME")]
        peers: Vec<String>,
        /// Join the NATS cluster of these servers (comma-separated
        /// nats:// URLs); default: `[cluster]` of peerhost.toml, if any.
        #[arg(long, value_name = "URLS", env = "PEERHOST_NATS")]
        nats: Option<String>,
    },
    /// Call a peer's exported logic function; prints the JSON result.
    #[command(
        after_help = "Signed with the key of --as (default: the called peer, i.e. its owner) from the deployment's keys/.\n\nExamples:\n  peerhost call --dir demo alice greet '[\"bob\"]'\n  peerhost call --dir demo --url http://127.0.0.1:7070 --as alice bob get_public '[\"motd\"]'\n  peerhost call --url http://127.0.0.1:7070 --anonymous alice ping"
    )]
    Call {
        #[command(flatten)]
        target: Target,
        /// The peer to call.
        peer: String,
        /// The exported function in the peer's logic/main.rhai.
        function: String,
        /// Arguments: a JSON array of positional arguments, or one JSON value.
        #[arg(default_value = "[]")]
        args: String,
    },
    /// Evaluate a Rhai script at a peer; prints the JSON result.
    #[command(
        after_help = "Signed with the key of --as (default: the peer itself, i.e. its owner) from the deployment's keys/.\n\nExamples:\n  peerhost eval --dir demo alice -e 'kv::list(\"\")'\n  peerhost eval --dir demo --as alice bob -e 'kv::get(params.key)' --params '{\"key\":\"public/motd\"}'\n  peerhost eval --dir demo alice script.rhai"
    )]
    Eval {
        #[command(flatten)]
        target: Target,
        /// The peer to run the script at.
        peer: String,
        /// A file holding the script.
        #[arg(required_unless_present = "expression", conflicts_with = "expression")]
        script_file: Option<PathBuf>,
        /// The script itself.
        #[arg(short = 'e', long = "expression", value_name = "SCRIPT")]
        expression: Option<String>,
        /// JSON bound as `params` in the script.
        #[arg(long, default_value = "null")]
        params: String,
    },
    /// Sign a script with a peer's key and run it at another peer; prints the JSON result.
    #[command(
        after_help = "--to is a petname of the sender's contacts or a peer of the deployment. The script runs at the target with the sender as caller, under the target's policy.\n\nExamples:\n  peerhost send --dir demo --from alice --to bob -e 'kv::get(\"public/motd\")'\n  peerhost send --dir demo --url http://127.0.0.1:7070 --from alice --to bob script.rhai --params '{}'"
    )]
    Send {
        /// The deployment holding the sender's key (default: the current directory).
        #[arg(long, env = "PEERHOST_DIR")]
        dir: Option<PathBuf>,
        /// Send to a running `peerhost serve` at this URL instead of running in-process.
        #[arg(long, env = "PEERHOST_URL")]
        url: Option<String>,
        /// The sending peer: its key signs the envelope.
        #[arg(long, value_name = "PEER")]
        from: String,
        /// The target peer.
        #[arg(long, value_name = "PEER")]
        to: String,
        /// A file holding the script.
        #[arg(required_unless_present = "expression", conflicts_with = "expression")]
        script_file: Option<PathBuf>,
        /// The script itself.
        #[arg(short = 'e', long = "expression", value_name = "SCRIPT")]
        expression: Option<String>,
        /// JSON bound as `params` in the script.
        #[arg(long, default_value = "null")]
        params: String,
    },
    /// Read a peer's audit log; verify it; print who may do what.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Show, check and replace a peer's Rhai logic.
    #[command(subcommand)]
    Logic(LogicCommand),
    /// Check, test and replace a peer's Cedar policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Move a peer's kv store or files to another backend; remove what migrations left.
    #[command(subcommand)]
    Storage(StorageCommand),
    /// Read every peer of a deployment whole and report what is wrong.
    #[command(
        after_help = "A worker reads a peer's files at its first invocation (and at start only when the peer is new or its peer.toml or contacts.toml changed since state/peers.index was written): this reads them all now, keys, policies, logic and kv stores included, and names every problem. Exit 0 when there is none, 1 otherwise.\n\nExample:\n  peerhost check --dir demo"
    )]
    Check {
        /// The deployment directory.
        #[arg(long, default_value = ".", env = "PEERHOST_DIR")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum StorageCommand {
    /// Copy every key of a peer's kv store (value and owner) to another
    /// backend (`--to`), or every directory and file of its namespace
    /// (`--fs`), or both; check the copy (count and SHA-256), then switch
    /// peer.toml's `[storage] kv` or `fs`. The old store stays until
    /// `storage clean`. Refused while a worker serves the peer.
    #[command(
        after_help = "Examples:\n  peerhost storage migrate --dir demo bob --to fs\n  peerhost storage migrate --dir demo bob --fs sqlite\n  peerhost storage migrate --dir demo bob --to s3 --fs s3"
    )]
    Migrate {
        /// The deployment directory.
        #[arg(long, default_value = ".", env = "PEERHOST_DIR")]
        dir: PathBuf,
        /// The peer.
        peer: String,
        /// The kv backend to move to.
        #[arg(long, value_enum, required_unless_present = "fs")]
        to: Option<KvBackendName>,
        /// The namespace backend to move the files to.
        #[arg(long, value_enum)]
        fs: Option<FsBackendName>,
    },
    /// Remove the kv stores and files of the backends a peer does not use,
    /// left by `storage migrate` (the kv directory, the SQLite database or
    /// the other's tables in it, the kv and file objects under the
    /// `[storage.s3]` prefix, the files of `data/`). Refused while a worker
    /// serves the peer.
    #[command(after_help = "Example:\n  peerhost storage clean --dir demo bob")]
    Clean {
        /// The deployment directory.
        #[arg(long, default_value = ".", env = "PEERHOST_DIR")]
        dir: PathBuf,
        /// The peer.
        peer: String,
    },
}

/// A kv backend, as `--to` names it.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum KvBackendName {
    /// `peers/<name>/kv.sqlite`.
    Sqlite,
    /// One file per key in `peers/<name>/kv/`.
    Fs,
    /// The bucket of `[storage.s3]` in peer.toml.
    S3,
}

/// A namespace backend, as `--fs` names it.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum FsBackendName {
    /// The host directory `peers/<name>/data`.
    Dir,
    /// Rows of `peers/<name>/kv.sqlite`.
    Sqlite,
    /// Objects in the bucket of `[storage.s3]` in peer.toml.
    S3,
}

#[derive(Subcommand)]
pub enum LogicCommand {
    /// List a peer's modules (its own logic/, then the deployment's lib/),
    /// their exported functions with doc comments, and (for one MODULE) the
    /// source. Decided as `logic.read` on the peer: its owner may, others
    /// where its policy grants it.
    #[command(
        after_help = "Examples:\n  peerhost logic show --dir demo alice\n  peerhost logic show --dir demo alice main\n  peerhost logic show --url http://127.0.0.1:7070 --as alice bob"
    )]
    Show {
        #[command(flatten)]
        target: Target,
        /// The peer.
        peer: String,
        /// One module: `main`, a module name, or `lib/<name>`.
        module: Option<String>,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Replace or add logic modules of a running worker (or on disk with
    /// --dir alone), signed with the peer's own key: each file must compile
    /// or nothing changes. Invocations in flight finish on the old version.
    #[command(
        after_help = "Each FILE is logic/<name>.rhai by its file name.\n\nExamples:\n  peerhost logic push --dir demo --url http://127.0.0.1:7070 alice main.rhai\n  peerhost logic push --dir demo alice main.rhai text.rhai"
    )]
    Push {
        #[command(flatten)]
        target: Target,
        /// The peer.
        peer: String,
        /// The module files (`<name>.rhai`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Compile every module of a peer's logic/ and of the deployment's lib/;
    /// print each error with its file:line (exit code 5 if any).
    #[command(after_help = "Example:\n  peerhost logic check --dir demo alice")]
    Check {
        /// The deployment directory.
        #[arg(long, default_value = ".", env = "PEERHOST_DIR")]
        dir: PathBuf,
        /// The peer.
        peer: String,
    },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Replace a peer's policy on a running worker (or on disk with --dir
    /// alone), signed with the peer's own key: it must parse and validate
    /// against the schema or nothing changes.
    #[command(
        after_help = "Example:\n  peerhost policy push --dir demo --url http://127.0.0.1:7070 bob bob.cedar"
    )]
    Push {
        #[command(flatten)]
        target: Target,
        /// The peer.
        peer: String,
        /// The new policy.cedar.
        file: PathBuf,
    },
    /// Validate policy files against the schema and lint them: over-broad
    /// grants, policies that never apply, validator warnings. A directory
    /// is searched for *.cedar files. Exit code 5 on an error, 0 otherwise
    /// (warnings are printed).
    #[command(
        after_help = "Examples:\n  peerhost policy check demo/peers/bob/policy.cedar\n  peerhost policy check demo"
    )]
    Check {
        /// A policy file, or a directory to search.
        path: PathBuf,
    },
    /// Run the cases of peers/PEER/policy.tests.toml (principal, action,
    /// resource, expected decision) through the peer's policy; exit code 1
    /// if any fails.
    #[command(
        after_help = "A case:\n  [[case]]\n  principal = \"alice\"\n  action = \"kv.get\"\n  resource = 'Key::\"public/motd\"'\n  expect = \"allow\"\n\nExample:\n  peerhost policy test --dir demo bob"
    )]
    Test {
        /// The deployment directory.
        #[arg(long, default_value = ".", env = "PEERHOST_DIR")]
        dir: PathBuf,
        /// The peer.
        peer: String,
    },
}

#[derive(Subcommand)]
pub enum PeerCommand {
    /// Create a key for a peer in keys/NAME.key (never overwritten), and the
    /// peer itself when it does not exist yet.
    #[command(after_help = "Example:\n  peerhost peer new --dir demo carol")]
    New {
        /// The deployment directory.
        #[arg(long, default_value = ".", env = "PEERHOST_DIR")]
        dir: PathBuf,
        /// The peer's name.
        name: String,
    },
    /// Show a peer's id, key and contacts.
    #[command(after_help = "Example:\n  peerhost peer show --dir demo alice")]
    Show {
        /// The deployment directory.
        #[arg(long, default_value = ".", env = "PEERHOST_DIR")]
        dir: PathBuf,
        /// The peer's name.
        name: String,
    },
    /// Show what each caller has used at a peer (invocations, time, refusals
    /// over quota), from peers/NAME/audit/usage.json, which workers update
    /// every 2 seconds.
    #[command(after_help = "Example:\n  peerhost peer stats --dir demo bob")]
    Stats {
        /// The deployment directory.
        #[arg(long, default_value = ".", env = "PEERHOST_DIR")]
        dir: PathBuf,
        /// The peer's name.
        name: String,
        /// Print the usage as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Print a peer's decisions, oldest first.
    #[command(
        after_help = "Each line: time, allow|deny, principal, action, resource, the deciding policies, the script's hash.\n\nExample:\n  peerhost audit log --dir demo bob --follow"
    )]
    Log {
        /// The deployment directory.
        #[arg(long, default_value = ".", env = "PEERHOST_DIR")]
        dir: PathBuf,
        /// The peer.
        peer: String,
        /// Keep printing new decisions as they are written (until Ctrl-C).
        #[arg(long, short)]
        follow: bool,
        /// Print the raw JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Check that no line of a peer's audit log was edited, dropped,
    /// inserted or reordered (each line carries the hash of the one before);
    /// prints the hash of the last line, to keep elsewhere. Exit code 1 and
    /// the first broken line otherwise.
    #[command(after_help = "Example:\n  peerhost audit verify --dir demo bob")]
    Verify {
        /// The deployment directory.
        #[arg(long, default_value = ".", env = "PEERHOST_DIR")]
        dir: PathBuf,
        /// The peer.
        peer: String,
    },
    /// Who may do what at a peer: for the peer itself, each contact,
    /// anonymous and anyone, the actions and resources its policy permits,
    /// derived by Cedar's partial evaluation. Flags over-broad grants and
    /// policies that never apply.
    #[command(
        after_help = "Formats: table (default), json, wit (one WIT world per principal importing exactly the granted functions).\n\nExample:\n  peerhost audit grants --dir demo bob --format wit"
    )]
    Grants {
        /// The deployment directory.
        #[arg(long, default_value = ".", env = "PEERHOST_DIR")]
        dir: PathBuf,
        /// The peer.
        peer: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: GrantsFormat,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum GrantsFormat {
    Table,
    Json,
    Wit,
}

/// Where an invocation runs and who signs it.
#[derive(Args)]
pub struct Target {
    /// The deployment: run in-process over it, and read signing keys from
    /// its keys/ (default: the current directory).
    #[arg(long, env = "PEERHOST_DIR")]
    pub dir: Option<PathBuf>,
    /// Send to a running `peerhost serve` at this URL instead of running in-process.
    #[arg(long, env = "PEERHOST_URL")]
    pub url: Option<String>,
    /// Sign as this peer (default: the target peer itself, its owner).
    #[arg(long = "as", value_name = "PEER", conflicts_with = "anonymous")]
    pub caller: Option<String>,
    /// Send unsigned: runs as `anonymous`.
    #[arg(long)]
    pub anonymous: bool,
}
