//! The `peerhost` command line: init, peer, serve, call, eval, send, audit.

use anyhow::Context;
use clap::Parser;
use peerhost::deployment::Deployment;
use peerhost::error::{ErrorKind as InvocationErrorKind, InvocationError, parse_json};
use peerhost::runtime::{Invocation, Runtime};
use peerhost::worker::Worker;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[path = "cli/args.rs"]
mod args;
use args::*;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    init_logs(cli.log_format, default_level);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Logs to stderr, filtered by `PEERHOST_LOG` (else `RUST_LOG`, else
/// `default_level`), as text (coloured on a terminal only) or JSON lines.
fn init_logs(format: LogFormat, default_level: &str) {
    use std::io::IsTerminal;
    let filter = ["PEERHOST_LOG", "RUST_LOG"]
        .iter()
        .find_map(|name| {
            let value = std::env::var(name).ok()?;
            match tracing_subscriber::EnvFilter::try_new(&value) {
                Ok(filter) => Some(filter),
                Err(e) => {
                    eprintln!(
                        "warning: {name}={value:?} is not a log filter ({e}); using {default_level}"
                    );
                    None
                }
            }
        })
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
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
        Command::Peer(PeerCommand::New { dir, name }) => {
            let id = peerhost::scaffold::new_peer(&dir, &name)?;
            println!("{id}");
            eprintln!(
                "peer `{name}`: key in {}",
                peerhost::peer::key_path(&dir, &name).display()
            );
            let config: Option<peerhost::config::WorkerConfig> =
                peerhost::config::load_toml(&dir.join("peerhost.toml")).ok();
            if let Some(listed) = config.and_then(|c| c.peers)
                && !listed.contains(&name)
            {
                eprintln!("note: add \"{name}\" to `peers` in peerhost.toml to host it");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { dir } => check(&dir),
        Command::Storage(StorageCommand::Migrate { dir, peer, to, fs }) => {
            existing_peer(&dir, &peer)?;
            if let Some(to) = to {
                let to = match to {
                    KvBackendName::Sqlite => peerhost::config::Backend::Sqlite,
                    KvBackendName::Fs => peerhost::config::Backend::Fs,
                    KvBackendName::S3 => peerhost::config::Backend::S3,
                };
                // A bar on a terminal; nothing when stderr is not one.
                let bar = indicatif::ProgressBar::new(0).with_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:40}] {pos}/{len} keys ({per_sec}, {eta} left)",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar.set_message(format!("copying {peer}'s kv store to {}", to.name()));
                let done = peerhost::kv::migrate::migrate_with_progress(
                    &dir,
                    &peer,
                    to,
                    &mut |copied, total| {
                        bar.set_length(total);
                        bar.set_position(copied);
                    },
                );
                bar.finish_and_clear();
                let done = done?;
                if done.replaced > 0 {
                    println!(
                        "replaced {} keys an earlier migration left in the {} store",
                        done.replaced,
                        to.name()
                    );
                }
                println!(
                    "peer `{peer}`: {} keys copied to {} and checked (sha256 {}); peer.toml now says \
                     kv = \"{}\"; the old store stays until `peerhost storage clean --dir {} {peer}`",
                    done.keys,
                    to.name(),
                    done.hash,
                    to.name(),
                    dir.display()
                );
            }
            if let Some(fs) = fs {
                let to = match fs {
                    FsBackendName::Dir => peerhost::config::FsBackend::Dir,
                    FsBackendName::Sqlite => peerhost::config::FsBackend::Sqlite,
                    FsBackendName::S3 => peerhost::config::FsBackend::S3,
                };
                let spinner = indicatif::ProgressBar::new_spinner();
                spinner.set_message(format!("copying {peer}'s files to {}", to.name()));
                spinner.enable_steady_tick(std::time::Duration::from_millis(120));
                let done = peerhost::namespace::migrate::migrate(&dir, &peer, to);
                spinner.finish_and_clear();
                let done = done?;
                if done.replaced > 0 {
                    println!(
                        "replaced {} files and directories an earlier migration left in {}",
                        done.replaced,
                        to.name()
                    );
                }
                println!(
                    "peer `{peer}`: {} files and directories ({} bytes) copied to {} and checked \
                     (sha256 {}); peer.toml now says fs = \"{}\"; the old files stay until \
                     `peerhost storage clean --dir {} {peer}`",
                    done.entries,
                    done.bytes,
                    to.name(),
                    done.hash,
                    to.name(),
                    dir.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Storage(StorageCommand::Clean { dir, peer }) => {
            existing_peer(&dir, &peer)?;
            let removed = peerhost::kv::migrate::clean(&dir, &peer)?;
            if removed.is_empty() {
                println!("peer `{peer}`: nothing to remove");
            }
            for path in removed {
                println!("removed {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Peer(PeerCommand::Show { dir, name }) => {
            show_peer(&dir, &name)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Peer(PeerCommand::Stats { dir, name, json }) => {
            peer_stats(&dir, &name, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Log {
            dir,
            peer,
            follow,
            json,
        }) => audit_log(&dir, &peer, follow, json),
        Command::Audit(AuditCommand::Verify { dir, peer }) => {
            let path = peerhost::audit::path(&dir.join("peers").join(&peer));
            let (lines, last) = peerhost::audit::verify(&path)?;
            println!(
                "{}: {lines} lines, chain intact; last line {last}",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Grants { dir, peer, format }) => {
            let deployment = Deployment::load(&dir, std::slice::from_ref(&peer))?;
            let Some(hosted) = deployment.peers.get(&peer).transpose()? else {
                anyhow::bail!("no peer `{peer}` in {}", dir.display());
            };
            let petnames: Vec<String> = hosted.contacts.iter().map(|(p, _)| p.to_owned()).collect();
            let report = peerhost::grants::analyse(&peer, &hosted.policy(), &petnames)?;
            match format {
                GrantsFormat::Table => print!("{}", report.table()),
                GrantsFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                GrantsFormat::Wit => print!("{}", report.wit()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logic(LogicCommand::Show {
            target,
            peer,
            module,
            json,
        }) => {
            let result = invoke_value(
                target,
                &peer,
                Ok(Invocation::ShowLogic {
                    module: module.clone(),
                }),
            )?;
            match (json, result) {
                (false, Ok(value)) => {
                    print!(
                        "{}",
                        peerhost::host_operations::render(&value, module.is_some())
                    );
                    Ok(ExitCode::SUCCESS)
                }
                (_, result) => Ok(report(result)),
            }
        }
        Command::Logic(LogicCommand::Push {
            target,
            peer,
            files,
        }) => {
            let invocation = read_modules(&files).map(|files| Invocation::PushLogic { files });
            invoke(target, &peer, invocation)
        }
        Command::Logic(LogicCommand::Check { dir, peer }) => logic_check(&dir, &peer),
        Command::Policy(PolicyCommand::Push { target, peer, file }) => {
            let invocation = std::fs::read_to_string(&file)
                .map(|text| Invocation::PushPolicy { text })
                .map_err(|e| {
                    InvocationError::invalid(format!("cannot read {}: {e}", file.display()))
                });
            invoke(target, &peer, invocation)
        }
        Command::Policy(PolicyCommand::Check { path }) => policy_check(&path),
        Command::Policy(PolicyCommand::Test { dir, peer }) => policy_test(&dir, &peer),
        Command::Serve {
            dir,
            listen,
            peers,
            nats,
        } => serve(dir, listen, peers, nats),
        Command::Send {
            dir,
            url,
            from,
            to,
            script_file,
            expression,
            params,
        } => {
            let invocation = script_invocation(script_file, expression, &params);
            let target = Target {
                dir,
                url,
                caller: Some(from),
                anonymous: false,
            };
            invoke(target, &to, invocation)
        }
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
            let invocation = script_invocation(script_file, expression, &params);
            invoke(target, &peer, invocation)
        }
    }
}

fn script_invocation(
    script_file: Option<PathBuf>,
    expression: Option<String>,
    params: &str,
) -> Result<Invocation, InvocationError> {
    let script = match (script_file, expression) {
        (_, Some(script)) => Ok(script),
        (Some(file), None) => std::fs::read_to_string(&file).map_err(|e| {
            InvocationError::invalid(format!("cannot read script {}: {e}", file.display()))
        }),
        (None, None) => Err(InvocationError::invalid("give a SCRIPT_FILE or -e SCRIPT")),
    };
    script.and_then(|script| {
        parse_json(params.as_bytes(), "--params")
            .map(|params| Invocation::Script { script, params })
    })
}

/// `dir/peers/name`, when it holds a peer.
fn existing_peer(dir: &std::path::Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let peer_dir = dir.join("peers").join(name);
    if !peer_dir.join("peer.toml").exists() {
        anyhow::bail!("no peer `{name}` in {}", dir.display());
    }
    Ok(peer_dir)
}

fn peer_stats(dir: &std::path::Path, name: &str, json: bool) -> anyhow::Result<()> {
    let peer_dir = dir.join("peers").join(name);
    if !peer_dir.join("peer.toml").exists() {
        anyhow::bail!("no peer `{name}` in {}", dir.display());
    }
    let path = peerhost::quota::usage_path(&peer_dir);
    let usage = match peerhost::quota::Usage::load(&path) {
        Ok(usage) => usage,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    // What each caller owns in the kv store (caller pays), beside its
    // invocations.
    let config: peerhost::config::PeerConfig =
        peerhost::config::load_toml(&peer_dir.join("peer.toml"))?;
    let kv = peerhost::kv::open(&peer_dir, name, &config.storage)?;
    let stored = kv
        .owners()
        .map_err(|e| anyhow::anyhow!("cannot read the {} kv store: {e}", kv.name()))?;
    let mut table: std::collections::BTreeMap<String, serde_json::Value> = usage
        .iter()
        .map(|(caller, usage)| Ok((caller.clone(), serde_json::to_value(usage)?)))
        .collect::<Result<_, serde_json::Error>>()?;
    for (owner, used) in &stored {
        let entry = table.entry(owner.clone()).or_insert_with(
            || serde_json::json!({"invocations": 0, "over_quota": 0, "time_ms": 0.0}),
        );
        entry["kv_bytes"] = used.bytes.into();
        entry["kv_keys"] = used.keys.into();
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&table)?);
        return Ok(());
    }
    let quota = config
        .quotas
        .fs_bytes
        .map_or_else(String::new, |q| format!(" of {q} (fs_bytes)"));
    match peerhost::namespace::Namespace::backend(&peer_dir, name, &config.storage)? {
        None => {
            let data = peer_dir.join("data");
            println!(
                "namespace: {} bytes{quota} in {}",
                peerhost::namespace::count(&data),
                data.display()
            );
        }
        Some(ns) => {
            let bytes = ns.usage().map_err(|e| {
                anyhow::anyhow!("cannot count the {} namespace's bytes: {e}", ns.name())
            })?;
            println!("namespace: {bytes} bytes{quota} on {}", ns.name());
        }
    }
    if table.is_empty() {
        eprintln!("no usage recorded yet ({})", path.display());
        return Ok(());
    }
    println!(
        "{:<40} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "caller", "invocations", "over quota", "time (ms)", "kv bytes", "kv keys"
    );
    let figure = |value: &serde_json::Value, name: &str| value[name].as_u64().unwrap_or(0);
    for (caller, usage) in &table {
        println!(
            "{caller:<40} {:>12} {:>12} {:>12.1} {:>12} {:>8}",
            figure(usage, "invocations"),
            figure(usage, "over_quota"),
            usage["time_ms"].as_f64().unwrap_or(0.0),
            figure(usage, "kv_bytes"),
            figure(usage, "kv_keys"),
        );
    }
    Ok(())
}

fn show_peer(dir: &std::path::Path, name: &str) -> anyhow::Result<()> {
    let peer_dir = dir.join("peers").join(name);
    let config: peerhost::config::PeerConfig =
        peerhost::config::load_toml(&peer_dir.join("peer.toml"))?;
    let key_file = peerhost::peer::key_path(dir, name);
    let key = if key_file.exists() {
        Some(peerhost::identity::PeerKey::load(&key_file)?)
    } else {
        None
    };
    let id = config
        .id
        .or(key.as_ref().map(|k| k.id()))
        .ok_or_else(|| anyhow::anyhow!("peer `{name}` has no id and no key"))?;
    println!("name: {name}");
    println!("id: {id}");
    match &key {
        Some(_) => println!("key: {} (signs here)", key_file.display()),
        None => println!(
            "key: none in {} (cannot sign here)",
            dir.join("keys").display()
        ),
    }
    let contacts =
        peerhost::contacts::Contacts::load(&peer_dir.join("contacts.toml"), name, Some(&id))?;
    // How a worker serving this deployment reaches each contact, in the
    // order it tries: hosted by the same worker, the cluster, the URL.
    let worker: Option<peerhost::config::WorkerConfig> =
        peerhost::config::load_toml(&dir.join("peerhost.toml")).ok();
    let clustered = worker.as_ref().is_some_and(|w| w.cluster.is_some());
    let in_deployment = |id: &peerhost::PeerId| {
        let Ok(entries) = std::fs::read_dir(dir.join("peers")) else {
            return false;
        };
        entries.flatten().any(|entry| {
            peerhost::config::load_toml::<peerhost::config::PeerConfig>(
                &entry.path().join("peer.toml"),
            )
            .is_ok_and(|config| config.id.as_ref() == Some(id))
        })
    };
    println!("contacts:");
    for (petname, contact) in contacts.iter() {
        let mut ways = Vec::new();
        if in_deployment(&contact.id) {
            ways.push("in-process where one worker serves both".to_owned());
        }
        if clustered {
            ways.push("the cluster ([cluster] of peerhost.toml)".to_owned());
        }
        if let Some(url) = &contact.url {
            ways.push(url.clone());
        }
        let reached = if ways.is_empty() {
            "unreachable: not in this deployment, no [cluster] (or serve --nats), no url".to_owned()
        } else {
            format!("reached by {}", ways.join(", then "))
        };
        match &contact.url {
            Some(url) => println!("  {petname} {} {url} ({reached})", contact.id),
            None => println!("  {petname} {} ({reached})", contact.id),
        }
    }
    Ok(())
}

fn audit_log(
    dir: &std::path::Path,
    peer: &str,
    follow: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::{BufRead, Seek};
    let peer_dir = dir.join("peers").join(peer);
    if !peer_dir.join("peer.toml").exists() {
        anyhow::bail!("no peer `{peer}` in {}", dir.display());
    }
    let path = peerhost::audit::path(&peer_dir);
    let print = |line: &str| {
        if json {
            println!("{line}");
        } else {
            match serde_json::from_str::<peerhost::audit::Record>(line) {
                Ok(record) => println!("{}", record.display()),
                Err(_) => println!("{line}"),
            }
        }
    };
    let mut offset = 0u64;
    let mut pending = String::new();
    loop {
        match std::fs::File::open(&path) {
            Ok(mut file) => {
                let len = file.metadata()?.len();
                if len < offset {
                    // Truncated or replaced: start over.
                    offset = 0;
                }
                file.seek(std::io::SeekFrom::Start(offset))?;
                let mut reader = std::io::BufReader::new(file);
                loop {
                    let read = reader.read_line(&mut pending)?;
                    if read == 0 {
                        break;
                    }
                    offset += read as u64;
                    if pending.ends_with('\n') {
                        print(pending.trim_end());
                        pending.clear();
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !follow {
                    eprintln!("no decisions recorded yet ({})", path.display());
                }
            }
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
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
    Ok(report(invoke_value(target, peer, invocation)?))
}

/// Reads module files for a push: `<name>.rhai` each.
fn read_modules(files: &[PathBuf]) -> Result<Vec<(String, String)>, InvocationError> {
    let mut modules = Vec::new();
    for file in files {
        let name = match (file.file_stem(), file.extension()) {
            (Some(stem), Some(ext)) if ext == "rhai" => stem.to_string_lossy().into_owned(),
            _ => {
                return Err(InvocationError::invalid(format!(
                    "{}: a logic file is named <module>.rhai",
                    file.display()
                )));
            }
        };
        let source = std::fs::read_to_string(file).map_err(|e| {
            InvocationError::invalid(format!("cannot read {}: {e}", file.display()))
        })?;
        modules.push((name, source));
    }
    Ok(modules)
}

/// `peerhost check`: every peer read whole; each problem on stderr.
fn check(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let (deployment, failed) = Deployment::check(dir)?;
    let mut problems: Vec<String> = failed
        .iter()
        .map(|(name, e)| format!("peer `{name}`: {e}"))
        .collect();
    for peer in deployment.peers.loaded() {
        if let Err(e) = peer.key() {
            problems.push(format!("peer `{}`: {e}", peer.name));
        }
        if let Err(e) = peer.kv.check() {
            problems.push(format!(
                "peer `{}`: its {} kv store cannot be opened: {e}",
                peer.name,
                peer.kv.name()
            ));
        }
        if let Some(ns) = &peer.namespace.backend
            && let Err(e) = ns.check()
        {
            problems.push(format!(
                "peer `{}`: its {} namespace cannot be used: {e}",
                peer.name,
                ns.name()
            ));
        }
        match peer.logic.check_files() {
            Ok(files) => problems.extend(
                files
                    .into_iter()
                    .filter_map(|(_, e)| e.map(|e| format!("peer `{}`: {e}", peer.name))),
            ),
            Err(e) => problems.push(format!("peer `{}`: {e}", peer.name)),
        }
    }
    for problem in &problems {
        eprintln!("{problem}");
    }
    let peers = deployment.peers.len() + failed.len();
    if problems.is_empty() {
        println!("{peers} peer(s) checked: no problem");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{peers} peer(s) checked: {} problem(s)", problems.len());
        Ok(ExitCode::FAILURE)
    }
}

fn logic_check(dir: &std::path::Path, peer: &str) -> anyhow::Result<ExitCode> {
    let deployment = Deployment::load(dir, &[peer.to_owned()])?;
    let Some(hosted) = deployment.peers.get(peer).transpose()? else {
        anyhow::bail!("no peer `{peer}` in {}", dir.display());
    };
    let files = hosted.logic.check_files()?;
    let errors: Vec<&String> = files.iter().filter_map(|(_, e)| e.as_ref()).collect();
    for error in &errors {
        eprintln!("{error}");
    }
    if !errors.is_empty() {
        eprintln!("{} of {} files do not compile", errors.len(), files.len());
        return Ok(ExitCode::from(InvocationErrorKind::Invalid.exit_code()));
    }
    println!("{} files compile", files.len());
    Ok(ExitCode::SUCCESS)
}

fn policy_check(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let files = peerhost::policy_tools::policy_files(path)?;
    if files.is_empty() {
        anyhow::bail!("no .cedar file in {}", path.display());
    }
    let mut failed = false;
    for file in &files {
        match peerhost::policy_tools::check(file) {
            Ok(warnings) => {
                println!("{}: ok", file.display());
                for warning in warnings {
                    println!("  warning: {warning}");
                }
            }
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(InvocationErrorKind::Invalid.exit_code())
    } else {
        ExitCode::SUCCESS
    })
}

fn policy_test(dir: &std::path::Path, peer: &str) -> anyhow::Result<ExitCode> {
    let deployment = Deployment::load(dir, &[peer.to_owned()])?;
    let Some(hosted) = deployment.peers.get(peer).transpose()? else {
        anyhow::bail!("no peer `{peer}` in {}", dir.display());
    };
    let path = dir
        .join("peers")
        .join(peer)
        .join(peerhost::policy_tools::TESTS_FILE);
    let results = peerhost::policy_tools::run_tests(&path, peer, &hosted.policy())?;
    let mut failed = 0;
    for result in &results {
        println!("{}", result.line());
        if !result.passed {
            failed += 1;
        }
    }
    println!(
        "{} of {} cases as expected",
        results.len() - failed,
        results.len()
    );
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn invoke_value(
    target: Target,
    peer: &str,
    invocation: Result<Invocation, InvocationError>,
) -> anyhow::Result<Result<Value, InvocationError>> {
    let invocation = match invocation {
        Ok(invocation) => invocation,
        Err(e) => return Ok(Err(e)),
    };
    let dir = target.dir.unwrap_or_else(|| PathBuf::from("."));
    if target.anonymous {
        let result = match &target.url {
            Some(url) => peerhost::client::invoke_anonymous(url, peer, &invocation),
            None => {
                let worker = local_worker(&dir)?;
                let result =
                    async_runtime()?.block_on(worker.invoke_anonymous(peer, invocation, None));
                worker.save_usage();
                result
            }
        };
        return Ok(result);
    }
    let signer = target.caller.unwrap_or_else(|| peer.to_owned());
    let deployment = Deployment::load(&dir, &[])?;
    let Some(from) = deployment.peers.get(&signer).transpose()? else {
        anyhow::bail!(
            "no peer `{signer}` in the deployment at {} to sign with (pass --dir, or --anonymous to send unsigned)",
            dir.display()
        );
    };
    let Some(key) = from.key().map_err(|e| anyhow::anyhow!(e))? else {
        anyhow::bail!(
            "no key for `{signer}` at {} (pass --dir to the deployment holding it, or --anonymous to send unsigned)",
            peerhost::peer::key_path(&dir, &signer).display()
        );
    };
    // The target: a petname of the signer's contacts, or a peer of the deployment.
    let (target_id, contact_url) = match (
        from.contacts.get(peer),
        deployment.peers.get(peer).transpose()?,
    ) {
        (Some(contact), _) => (contact.id, contact.url.clone()),
        (None, Some(hosted)) => (hosted.id, None),
        (None, None) => {
            return Ok(Err(InvocationError::not_found(format!(
                "`{peer}` is neither a contact of `{signer}` nor a peer of {}",
                dir.display()
            ))));
        }
    };
    let envelope = peerhost::envelope::Envelope::seal(
        key,
        target_id,
        &invocation,
        0,
        std::time::SystemTime::now(),
    )
    .map_err(|e| anyhow::anyhow!("no randomness for the envelope's nonce: {e}"))?;
    let hosted_here = deployment.peers.hosts(&target_id);
    let result = match (target.url, contact_url) {
        (Some(url), _) => peerhost::client::send(&url, &envelope, None),
        (None, Some(url)) if !hosted_here => peerhost::client::send(&url, &envelope, None),
        (None, _) if invocation.is_host_operation() => {
            // Answered by the host: no guest, so no runtime to start. The
            // caller is the signer, as the target knows it.
            match deployment.peers.by_id(&target_id).transpose()? {
                Some(target) => {
                    let caller = target.caller(key.id());
                    peerhost::host_operations::host_operation(
                        &target,
                        &caller,
                        peerhost::invocation::Chain::default(),
                        &invocation,
                    )
                }
                None => Err(InvocationError::not_found(format!(
                    "`{peer}` is not hosted in {}",
                    dir.display()
                ))),
            }
        }
        (None, _) => {
            let worker = worker_for(deployment)?;
            let result = async_runtime()?.block_on(worker.accept(&envelope));
            worker.save_usage();
            result
        }
    };
    Ok(result)
}

fn local_worker(dir: &std::path::Path) -> anyhow::Result<Arc<Worker>> {
    worker_for(Deployment::load(dir, &[])?)
}

fn worker_for(deployment: Deployment) -> anyhow::Result<Arc<Worker>> {
    Ok(Worker::new(
        deployment,
        Arc::new(Runtime::new()?),
        Arc::new(peerhost::client::Transports::default()),
    ))
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
            match e.retry_after_ms {
                Some(ms) => eprintln!("{}: {} (retry after {ms} ms)", e.kind, e.message),
                None => eprintln!("{}: {}", e.kind, e.message),
            }
            ExitCode::from(e.kind.exit_code())
        }
    }
}

fn serve(
    dir: PathBuf,
    listen: Option<SocketAddr>,
    peers: Vec<String>,
    nats: Option<String>,
) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let deployment = Deployment::load(&dir, &peers)?;
    let broken = deployment.storage_errors();
    for (peer, backend, cause) in &broken {
        eprintln!("peerhost: peer `{peer}`: its {backend} kv store cannot be opened: {cause}");
    }
    if !broken.is_empty() {
        use peerhost::config::OnStorageError;
        match deployment.config.storage.on_error {
            OnStorageError::Exit => {
                eprintln!(
                    "peerhost: not serving ([storage] on_error = \"isolate\" in peerhost.toml \
                     serves the other peers)"
                );
                return Ok(ExitCode::from(peerhost::ErrorKind::Failed.exit_code()));
            }
            OnStorageError::Isolate => {
                eprintln!("peerhost: serving the other peers; kv calls at those above fail")
            }
        }
    }
    // Held while serving: `storage migrate` refuses a peer being served.
    // One lock for a worker serving the whole deployment (one file
    // descriptor, however many peers), one per peer for `--peer`.
    let locked: Vec<std::path::PathBuf> = if peers.is_empty() {
        vec![dir.clone()]
    } else {
        deployment
            .peers
            .names()
            .map(|name| dir.join("peers").join(name))
            .collect()
    };
    let _serving = locked
        .iter()
        .map(|locked| {
            peerhost::kv::migrate::hold_serving(locked).with_context(|| {
                format!(
                    "cannot lock {}",
                    peerhost::kv::migrate::serving_lock_path(locked).display()
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let listen = listen.unwrap_or(deployment.config.listen);
    let runtime = Arc::new(Runtime::new()?.snapshot_after(deployment.config.snapshot_after));
    let cluster = match &nats {
        Some(servers) => {
            let cluster = peerhost::config::ClusterConfig::with_servers(
                deployment.config.cluster.as_ref(),
                servers,
            );
            if let Some(problem) = cluster.problem() {
                anyhow::bail!("--nats: {problem}");
            }
            Some(cluster)
        }
        None => deployment.config.cluster.clone(),
    };
    let worker = Worker::new(
        deployment,
        runtime,
        Arc::new(peerhost::client::Transports::default()),
    );
    let names = worker.peer_names();
    // Spans to a collector, when one is named. Built before the async
    // runtime: the exporter's HTTP client is a blocking one, on its own
    // thread.
    let endpoint = worker
        .deployment
        .config
        .traces
        .endpoint
        .clone()
        .or_else(|| {
            std::env::var(peerhost::otlp::ENDPOINT_ENV)
                .ok()
                .filter(|e| !e.trim().is_empty())
        });
    let exporter = match endpoint {
        Some(endpoint) => {
            let otlp = Arc::new(peerhost::otlp::Otlp::start(&endpoint)?);
            worker.export_spans(otlp.clone());
            Some(otlp)
        }
        None => None,
    };
    let exported_to = exporter
        .as_ref()
        .map(|_| "; spans exported over OTLP".to_owned())
        .unwrap_or_default();
    let served = async_runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let metrics_config = &worker.deployment.config.metrics;
        // `/metrics` on an address of its own, when `[metrics] listen` says.
        let mut metrics_at = String::new();
        let metrics_server = match (metrics_config.enabled, metrics_config.listen) {
            (true, Some(at)) => {
                let listener = tokio::net::TcpListener::bind(at)
                    .await
                    .with_context(|| format!("cannot listen on {at} ([metrics] listen)"))?;
                metrics_at = format!("; metrics at http://{}/metrics", listener.local_addr()?);
                let worker = worker.clone();
                Some(tokio::spawn(async move {
                    let never = std::future::pending::<()>();
                    if let Err(e) = peerhost::server::serve_metrics(listener, worker, never).await {
                        tracing::error!(target: "peerhost::metrics", "the metrics address stopped: {e}");
                    }
                }))
            }
            (true, None) => {
                metrics_at = format!("; metrics at http://{addr}/metrics (loopback clients)");
                None
            }
            (false, _) => None,
        };
        let signal = shutdown_signal()?;
        let mut joined = String::new();
        let serving = match &cluster {
            Some(config) => {
                let name = format!("peerhost {addr}");
                let nats =
                    peerhost::cluster::Nats::connect(config, &worker.deployment.root, &name)
                        .await?;
                worker.join(Arc::new(nats.clone()));
                let serving = nats.serve(worker.clone(), config.max_in_flight).await?;
                joined = format!(" in the NATS cluster of {}", nats.servers());
                Some(serving)
            }
            None => None,
        };
        // On a signal the cluster stops sending this worker envelopes (the
        // peers' other workers take them), then HTTP drains.
        let shutdown = async move {
            signal.await;
            if let Some(serving) = serving {
                serving.stop(std::time::Duration::from_secs(30)).await;
            }
        };
        let mode = if peers.is_empty() {
            "shared"
        } else {
            "isolated"
        };
        // The console's token exists before the worker says it is ready;
        // made at the first start, the banner shows it that once (stderr
        // is the log's, JSON lines and all).
        let token_file = worker.deployment.root.join(peerhost::console::TOKEN_FILE);
        let console = match peerhost::console::token_or_new(&worker.deployment.root) {
            Ok((token, created)) => format!(
                "; console at http://{addr}/console (token in {}{})",
                token_file.display(),
                if created {
                    format!(", made now: {token}")
                } else {
                    String::new()
                }
            ),
            Err(e) => {
                tracing::warn!(target: "peerhost::console", "no console: {e}");
                String::new()
            }
        };
        // Named up to SHOWN; a worker hosting thousands says how many more.
        const SHOWN: usize = 10;
        let mut shown = names
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if names.len() > SHOWN {
            shown.push_str(&format!(" and {} more", names.len() - SHOWN));
        }
        println!(
            "peerhost serving {} peer(s) ({shown}) at http://{addr}{joined} [{mode} worker, ready in {:.2?}]{metrics_at}{console}{exported_to}",
            names.len(),
            started.elapsed()
        );
        peerhost::server::serve(listener, worker, shutdown).await?;
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
        }
        Ok::<_, anyhow::Error>(())
    });
    // The spans still waiting go out before the worker says goodbye.
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    served?;
    eprintln!("peerhost: drained, bye");
    Ok(ExitCode::SUCCESS)
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
