//! The `peerhost` command line: init, serve, call, eval.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use peerhost::deployment::Deployment;
use peerhost::error::{InvocationError, parse_json};
use peerhost::runtime::{Invocation, Runtime};
use peerhost::worker::Worker;
use serde_json::Value;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "peerhost",
    version,
    about = "WebAssembly-sandboxed execution host for decentralized backend ownership",
    long_about = "Hosts peers, each with its own namespace, Rhai logic and Cedar policy, in wasmtime sandboxes.\n\n\
Exit codes: 0 ok, 1 error, 2 usage, 3 denied, 4 not-found, 5 invalid, 6 limit, 7 failed."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a demo deployment with peers alice and bob.
    #[command(after_help = "Example:\n  peerhost init demo && peerhost serve --dir demo")]
    Init {
        /// Directory to create the deployment in (created if missing; never overwritten).
        dir: PathBuf,
    },
    /// Serve a deployment's peers over HTTP until Ctrl-C.
    #[command(
        after_help = "Examples:\n  peerhost serve --dir demo\n  peerhost serve --dir demo --listen 127.0.0.1:0 --peer alice   # isolated worker"
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
    },
    /// Call a peer's exported logic function; prints the JSON result.
    #[command(
        after_help = "Examples:\n  peerhost call --dir demo alice greet '[\"bob\"]'\n  peerhost call --url http://127.0.0.1:7070 --as alice bob get_public '[\"motd\"]'"
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
        after_help = "Examples:\n  peerhost eval --dir demo alice -e 'kv::list(\"\")'\n  peerhost eval --dir demo --as alice bob -e 'kv::get(params.key)' --params '{\"key\":\"public/motd\"}'\n  peerhost eval --dir demo alice script.rhai"
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
}

/// Where an invocation runs: in this process over a deployment, or at a server.
#[derive(Args)]
struct Target {
    /// Run in-process over this deployment directory (default: the current directory).
    #[arg(long, env = "PEERHOST_DIR")]
    dir: Option<PathBuf>,
    /// Send to a running `peerhost serve` at this URL (wins over --dir).
    #[arg(long, env = "PEERHOST_URL")]
    url: Option<String>,
    /// The caller (unsigned for now; default: the target peer itself, its owner).
    #[arg(long = "as", value_name = "PEER")]
    caller: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init { dir } => {
            peerhost::scaffold::init(&dir)?;
            println!(
                "created a demo deployment in {} with peers alice and bob",
                dir.display()
            );
            println!("next: peerhost serve --dir {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { dir, listen, peers } => serve(dir, listen, peers),
        Command::Call {
            target,
            peer,
            function,
            args,
        } => {
            let invocation = parse_json(args.as_bytes(), "ARGS_JSON")
                .map(|args| Invocation::Call { function, args });
            invoke(target, &peer, invocation)
        }
        Command::Eval {
            target,
            peer,
            script_file,
            expression,
            params,
        } => {
            let script = match (script_file, expression) {
                (_, Some(script)) => Ok(script),
                (Some(file), None) => std::fs::read_to_string(&file).map_err(|e| {
                    InvocationError::invalid(format!("cannot read script {}: {e}", file.display()))
                }),
                (None, None) => Err(InvocationError::invalid("give a SCRIPT_FILE or -e SCRIPT")),
            };
            let invocation = script.and_then(|script| {
                parse_json(params.as_bytes(), "--params")
                    .map(|params| Invocation::Script { script, params })
            });
            invoke(target, &peer, invocation)
        }
    }
}

fn async_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn invoke(
    target: Target,
    peer: &str,
    invocation: Result<Invocation, InvocationError>,
) -> anyhow::Result<ExitCode> {
    let invocation = match invocation {
        Ok(invocation) => invocation,
        Err(e) => return Ok(report(Err(e))),
    };
    let caller = target.caller.unwrap_or_else(|| peer.to_owned());
    let result = match target.url {
        Some(url) => peerhost::client::invoke(&url, peer, &caller, &invocation),
        None => {
            let dir = target.dir.unwrap_or_else(|| PathBuf::from("."));
            let deployment = Deployment::load(&dir, &[])?;
            if std::io::stderr().is_terminal() {
                eprintln!("compiling the guest component…");
            }
            let worker = Worker::new(deployment, Arc::new(Runtime::new()?));
            async_runtime()?.block_on(worker.invoke(peer, &caller, invocation))
        }
    };
    Ok(report(result))
}

/// Prints a result on stdout, or the error kind and message on stderr.
fn report(result: Result<Value, InvocationError>) -> ExitCode {
    match result {
        Ok(value) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string())
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {}", e.kind, e.message);
            ExitCode::from(e.kind.exit_code())
        }
    }
}

fn serve(dir: PathBuf, listen: Option<SocketAddr>, peers: Vec<String>) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let deployment = Deployment::load(&dir, &peers)?;
    let listen = listen.unwrap_or(deployment.config.listen);
    let runtime = Arc::new(Runtime::new()?);
    let worker = Arc::new(Worker::new(deployment, runtime));
    let names = worker.peer_names();
    async_runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let shutdown = shutdown_signal()?;
        let mode = if peers.is_empty() {
            "shared"
        } else {
            "isolated"
        };
        println!(
            "peerhost serving {} peer(s) ({}) at http://{addr} [{mode} worker, ready in {:.2?}]",
            names.len(),
            names.join(", "),
            started.elapsed()
        );
        peerhost::server::serve(listener, worker, shutdown).await?;
        eprintln!("peerhost: drained, bye");
        Ok(ExitCode::SUCCESS)
    })
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when
/// this is called, before the worker announces itself, so a signal sent
/// right after the banner already drains rather than kills.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        eprintln!("peerhost: shutting down, draining requests");
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("peerhost: shutting down, draining requests");
    })
}
