//! `make bench`: every figure beside its reference, measured side by side in
//! one run, ratios first and absolute times as context. Asserts nothing
//! about time. Sections:
//!
//! 1. sandboxed vs native Rhai on the same scripts (trivial, loop, string
//!    building, map/array work, kv-heavy): native Rhai with the guest's own
//!    engine settings; the sandbox warm (one instance reused by one caller)
//!    and fresh (a new instance per invocation, the default);
//! 2. invocation latency: policy decisions, in-process calls and scripts
//!    (fresh and reused instances), envelopes, delegation in one worker and
//!    across two, over HTTP;
//! 3. HTTP throughput of the real `peerhost serve`: wrk (an external load
//!    generator, `make wrk`) against `call/ping` with fresh and reused
//!    instances beside `/healthz` of the same server; then 64 connections, shared
//!    worker vs isolated worker, fresh vs reused instances;
//! 4. scale: time to ready with 1,000 peers, RSS of 10,000 idle peers, RSS
//!    per active instance;
//! 5. fairness: a neighbour's latency alone and beside a peer running
//!    `loop {}` scripts at full rate (`make bench-fairness`);
//! 6. the replay guard: admitting a nonce on disk (locked, shared by the
//!    peer's workers) vs in memory only;
//! 7. kv backends (sqlite with `synchronous` full and normal, fs, and s3 on
//!    moto's server on loopback when `make s3-server` installed it): the
//!    kv-heavy script in the sandbox vs the same 20 sets and 20 gets from
//!    native Rust on the same backend (its physical limit); set and get
//!    p50; a page of 1,000 keys out of 10,000;
//! 8. namespace backends (dir, sqlite, s3 on moto when installed):
//!    `fs::write` + `fs::read` of 1 KiB and 1 MiB in the sandbox vs the same
//!    open, write, read (and sync) from native Rust on the same backend;
//! 9. transports between two workers: an envelope (trivial script, sealed
//!    each time) and its answer over HTTP, WebSocket and NATS (on a
//!    `nats-server` of `make nats-server`) vs the same envelope verified
//!    and run in-process, 1 and 64 in flight: p50, p99 and envelopes/s;
//!
//! Results are written to `target/bench/latest.json` (and a copy named by
//! the commit); `make bench-compare BASE=file.json` prints the ratios of
//! the latest run against another.
//!
//! Arguments (after `--`): `--quick` (fewer samples, smaller scale);
//! `--only 1,2` (those sections); `--scripts trivial,loop` (those scripts in 1);
//! `--idle-peers N` (how many idle peers section 4 registers);
//! `--compare BASE NEW` (no run: compares two result files).

use peerhost::{
    Caller, Deployment, Envelope, Invocation, InvocationRequest, Peer, Runtime, Worker,
};
use serde_json::{Value, json};

/// moto's S3 server, for the s3 row of section 7.
#[path = "../../tests/common/moto.rs"]
#[allow(dead_code)]
mod moto;
/// nats-server, for the NATS rows of section 9.
#[path = "../../tests/common/nats.rs"]
#[allow(dead_code)]
mod nats;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How many runs each latency figure takes.
#[derive(Clone, Copy)]
struct Scale {
    warmup: usize,
    samples: usize,
    http_seconds: u64,
    ready_peers: usize,
    idle_peers: usize,
    active_instances: usize,
}

const FULL: Scale = Scale {
    warmup: 50,
    samples: 1_000,
    http_seconds: 3,
    ready_peers: 1_000,
    idle_peers: 10_000,
    active_instances: 1_000,
};

const QUICK: Scale = Scale {
    warmup: 10,
    samples: 100,
    http_seconds: 1,
    ready_peers: 100,
    idle_peers: 1_000,
    active_instances: 100,
};

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    (at(0.5), at(0.99), samples[samples.len() - 1])
}

/// Every figure of the run, printed as it is measured and saved as JSON.
struct Report {
    figures: Vec<Value>,
}

impl Report {
    fn latency(&mut self, name: &str, samples: Vec<Duration>) -> Duration {
        let (p50, p99, max) = percentiles(samples);
        println!("  {name:<56} p50 {p50:>9.1?}  p99 {p99:>9.1?}  max {max:>9.1?}");
        self.figures.push(json!({
            "name": name,
            "unit": "us",
            "p50": p50.as_secs_f64() * 1e6,
            "p99": p99.as_secs_f64() * 1e6,
        }));
        p50
    }

    fn value(&mut self, name: &str, value: f64, unit: &str) {
        println!("  {name:<56} {value:>12.1} {unit}");
        self.figures
            .push(json!({ "name": name, "unit": unit, "value": value }));
    }

    fn ratio(&mut self, name: &str, ratio: f64, target: Option<f64>) {
        let verdict = match target {
            Some(t) if ratio <= t => format!("(target ≤ {t}×: met)"),
            Some(t) => format!(
                "(target ≤ {t}×: missed by {:.0} %)",
                (ratio / t - 1.0) * 100.0
            ),
            None => String::new(),
        };
        println!("  {name:<56} {ratio:>8.2}×  {verdict}");
        self.figures
            .push(json!({ "name": name, "unit": "ratio", "value": ratio }));
    }
}

fn measure(scale: Scale, mut run: impl FnMut()) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(scale.samples);
    for i in 0..scale.warmup + scale.samples {
        let t = Instant::now();
        run();
        if i >= scale.warmup {
            samples.push(t.elapsed());
        }
    }
    samples
}

fn owner(worker: &Worker, name: &str) -> Caller {
    let peer = &worker.deployment.peers[name];
    peer.caller(peer.id)
}

/// The scripts run both natively and in the sandbox.
const SCRIPTS: [(&str, &str); 5] = [
    ("trivial", "1"),
    ("loop", "let x = 0; for i in 0..100 { x += i } x"),
    (
        "string",
        "let s = \"\"; for i in 0..100 { s += i.to_string(); s += \",\"; } s.len()",
    ),
    (
        "map/array",
        "let a = []; for i in 0..100 { a.push(#{ k: `k${i}`, v: i * 2 }); } \
         let t = 0; for m in a { t += m.v; } let m = #{}; for i in 0..50 { m[`k${i}`] = i; } t + m.len()",
    ),
    (
        "kv-heavy",
        "for i in 0..20 { kv::set(`bench/${i}`, i); } let t = 0; for i in 0..20 { t += kv::get(`bench/${i}`); } t",
    ),
];

/// Native Rhai with the guest's engine settings; `kv` goes straight to the
/// peer's store (no policy, no audit, no sandbox).
fn native_engine(peer: &Arc<Peer>) -> rhai::Engine {
    let mut engine = peerhost_rhai_guest::engine();
    let mut kv = rhai::Module::new();
    let store = peer.clone();
    kv.set_native_fn(
        "get",
        move |key: &str| -> Result<rhai::Dynamic, Box<rhai::EvalAltResult>> {
            match store.kv.get(key).map_err(|e| e.to_string())? {
                Some(entry) => Ok(serde_json::from_str::<Value>(&entry.value)
                    .map_err(|e| e.to_string())
                    .and_then(|v| rhai::serde::to_dynamic(v).map_err(|e| e.to_string()))?),
                None => Ok(rhai::Dynamic::UNIT),
            }
        },
    );
    let store = peer.clone();
    kv.set_native_fn(
        "set",
        move |key: &str, value: rhai::Dynamic| -> Result<(), Box<rhai::EvalAltResult>> {
            let value: Value = rhai::serde::from_dynamic(&value)?;
            let text = value.to_string();
            let checked = peerhost::kv::CheckedValue::new(key, &text).map_err(|e| e.to_string())?;
            let charge = peerhost::kv::Charge::unlimited(&store.name);
            peerhost::kv::set(store.kv.as_ref(), &charge, &checked).map_err(|e| e.to_string())?;
            Ok(())
        },
    );
    engine.register_static_module("kv", kv.into());
    engine
}

fn native_eval(engine: &rhai::Engine, script: &str) -> rhai::Dynamic {
    let mut scope = rhai::Scope::new();
    scope.push_constant("params", rhai::Dynamic::UNIT);
    let ast = engine
        .compile_with_scope(&scope, script)
        .map_err(|e| e.to_string());
    let value = ast.and_then(|ast| {
        engine
            .eval_ast_with_scope::<rhai::Dynamic>(&mut scope, &ast)
            .map_err(|e| e.to_string())
    });
    match value {
        Ok(value) => value,
        Err(e) => panic!("native {script}: {e}"),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--compare") {
        let (Some(base), Some(new)) = (args.get(i + 1), args.get(i + 2)) else {
            anyhow::bail!("usage: --compare BASE.json NEW.json");
        };
        return compare(Path::new(base), Path::new(new));
    }
    // `--only 1,3` runs those sections.
    let only: Option<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    // `--scripts trivial,loop` runs only those scripts in section 1.
    let scripts: Option<String> = args
        .iter()
        .position(|a| a == "--scripts")
        .and_then(|i| args.get(i + 1).cloned());
    let wants = |section: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|s| s == section))
    };
    let mut scale = if args.iter().any(|a| a == "--quick") {
        QUICK
    } else {
        FULL
    };
    // `--idle-peers 100000` sets how many idle peers section 4 registers.
    if let Some(count) = args
        .iter()
        .position(|a| a == "--idle-peers")
        .and_then(|i| args.get(i + 1))
    {
        scale.idle_peers = count.parse()?;
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("demo");
    peerhost::init(&dir)?;
    let logic = dir.join("peers/alice/logic/main.rhai");
    let mut text = std::fs::read_to_string(&logic)?;
    text.push_str("\nfn relay() { peers::send(\"bob\", \"1\") }\n");
    std::fs::write(&logic, text)?;
    // Unsigned HTTP requests run as `anonymous`: let it call `ping`.
    let policy = dir.join("peers/alice/policy.cedar");
    let mut text = std::fs::read_to_string(&policy)?;
    text.push_str(
        "\n@id(\"bench-anonymous-ping\")\npermit (principal == Peer::\"anonymous\", action == Action::\"call\", resource == Function::\"ping\");\n",
    );
    std::fs::write(&policy, text)?;

    // A deployment at rest: logic files modified just now are re-read at
    // every invocation until they are older than this.
    std::thread::sleep(peerhost::logic::RACY + Duration::from_millis(50));

    println!("preparing the guest component (pre-initialised, compiled or from the cache)…");
    let started = Instant::now();
    // Fresh instances `prepare` the logic in this runtime; the one with
    // snapshots is measured beside it in section 1.
    let runtime = Arc::new(Runtime::new()?.snapshot_after(0));
    println!(
        "runtime ready in {:.0?}; {} samples per latency after {} warm-up runs",
        started.elapsed(),
        scale.samples,
        scale.warmup
    );
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut report = Report {
        figures: Vec::new(),
    };

    // Bob's worker first, on a port alice's contacts can name; then one
    // worker hosting both, and one hosting only alice.
    let bob_listener = tokio.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let bob_url = format!("http://{}", bob_listener.local_addr()?);
    let contacts = dir.join("peers/alice/contacts.toml");
    let text = std::fs::read_to_string(&contacts)?;
    std::fs::write(&contacts, text.replace("http://127.0.0.1:7070", &bob_url))?;
    let shared = Worker::new(Deployment::load(&dir, &[])?, runtime.clone(), http());
    let alice_only = Worker::new(
        Deployment::load(&dir, &["alice".into()])?,
        runtime.clone(),
        http(),
    );
    let bob_only = Worker::new(
        Deployment::load(&dir, &["bob".into()])?,
        runtime.clone(),
        http(),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shutdown = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.changed().await;
    };
    let bob_server = tokio.spawn(peerhost::serve(
        bob_listener,
        bob_only.clone(),
        shutdown(stopped.clone()),
    ));

    let alice = shared.deployment.peers["alice"].clone();
    if wants("1") {
        // 1. Sandboxed vs native Rhai.
        println!("\n1. sandboxed vs native Rhai (same scripts, same engine limits; owner alice)");
        let native = native_engine(&alice);
        let mut session =
            tokio.block_on(runtime.session(&shared, &alice, owner(&shared, "alice")))?;
        let mut ratios = Vec::new();
        for (name, script) in SCRIPTS {
            if scripts
                .as_deref()
                .is_some_and(|s| !s.split(',').any(|s| s == name))
            {
                continue;
            }
            let expected = native_eval(&native, script).to_string();
            let invocation = Invocation::Script {
                script: script.into(),
                params: Value::Null,
            };
            let native_p50 = report.latency(
                &format!("native Rhai: {name}"),
                measure(scale, || {
                    let _ = std::hint::black_box(native_eval(&native, script));
                }),
            );
            let warm = report.latency(
                &format!("sandbox, warm instance: {name}"),
                measure(scale, || {
                    let result = tokio.block_on(session.run(invocation.clone()));
                    match result {
                        Ok(value) => assert_eq!(value.to_string(), expected, "{name}"),
                        Err(e) => panic!("{name}: {e:?}"),
                    }
                }),
            );
            let fresh = report.latency(
                &format!("sandbox, fresh instance: {name}"),
                measure(scale, || {
                    let invoke = InvocationRequest {
                        caller: owner(&shared, "alice"),
                        invocation: invocation.clone(),
                        depth: 0,
                        deadline: None,
                        trace: None,
                    };
                    let result = tokio.block_on(shared.run(&alice, invoke));
                    assert!(result.is_ok(), "{name}: {result:?}");
                }),
            );
            ratios.push((name, native_p50, warm, fresh));
        }
        drop(session);
        println!("  ratios (p50):");
        for (name, native_p50, warm, fresh) in ratios {
            let target = matches!(name, "loop" | "string").then_some(1.3);
            report.ratio(
                &format!("warm sandbox / native: {name}"),
                ratio(warm, native_p50),
                target,
            );
            report.ratio(
                &format!("fresh sandbox / native: {name}"),
                ratio(fresh, native_p50),
                None,
            );
        }
    }
    if wants("2") {
        // 2. Latency of invocations, envelopes and delegation.
        println!(
            "\n2. invocation latency (fresh instance each, policy check and audit line included)"
        );
        let alice_key = shared.deployment.peers["alice"]
            .key()
            .map_err(|e| anyhow::anyhow!(e))?
            .ok_or_else(|| anyhow::anyhow!("alice has no key"))?;
        let bob_id = shared.deployment.peers["bob"].id;
        let one = Invocation::Script {
            script: "1".into(),
            params: Value::Null,
        };
        let seal = report.latency(
            "seal (sign) one envelope",
            measure(scale, || {
                let envelope = Envelope::seal(alice_key, bob_id, &one, 0, SystemTime::now());
                assert!(envelope.is_ok());
            }),
        );
        let bob = shared.deployment.peers["bob"].clone();
        let (action, resource) = (
            peerhost::policy::Action::ScriptAccept,
            &peerhost::policy::Resource::Peer,
        );
        let uncached = report.latency(
            "policy decision, uncached, on a fresh stack (as in a host call)",
            measure(scale, || {
                let decision = bob
                    .policy()
                    .decide_uncached("bob", "alice", action, resource);
                assert!(decision.allowed);
            }),
        );
        // A new key every time: a miss of the cache, evaluated in place.
        let mut n = 0u64;
        let thread_stack = report.latency(
            "policy decision, uncached, on the thread's stack (before entry)",
            measure(scale, || {
                n += 1;
                let key = peerhost::policy::Resource::Key(format!("bench/{n}"));
                let policy = bob.policy();
                std::hint::black_box(policy.decide_on_thread_stack(
                    "bob",
                    "alice",
                    peerhost::policy::Action::KvGet,
                    &key,
                ));
            }),
        );
        let cached = report.latency(
            "policy decision, cached (the same request again)",
            measure(scale, || {
                let decision = bob.policy().decide("bob", "alice", action, resource);
                assert!(decision.allowed);
            }),
        );
        report.ratio(
            "decision: uncached on a fresh stack / thread stack",
            ratio(uncached, thread_stack),
            None,
        );
        report.ratio(
            "decision: uncached (fresh stack) / cached",
            ratio(uncached, cached),
            None,
        );
        // What noticing an edit costs every invocation: a stat of
        // policy.cedar, and of logic/ and lib/ and their files.
        report.latency(
            "current policy (unchanged: the directory watch asked)",
            measure(scale, || drop(bob.policy())),
        );
        report.latency(
            "current logic (unchanged: the logic/ and lib/ watches asked)",
            measure(scale, || assert!(bob.logic.modules().is_ok())),
        );
        let sealed = Envelope::seal(alice_key, bob_id, &one, 0, SystemTime::now())?;
        let open = report.latency(
            "open (verify) one envelope",
            measure(scale, || assert!(sealed.open(SystemTime::now()).is_ok())),
        );
        let run = |worker: &Arc<Worker>, peer: &str, caller: Caller, invocation: &Invocation| {
            let peer = worker.deployment.peers[peer].clone();
            let invoke = InvocationRequest {
                caller,
                invocation: invocation.clone(),
                depth: 0,
                deadline: None,
                trace: None,
            };
            let result = tokio.block_on(worker.run(&peer, invoke));
            assert!(result.is_ok(), "{result:?}");
        };
        let ping = Invocation::Call {
            function: "ping".into(),
            args: json!([]),
        };
        let relay = Invocation::Call {
            function: "relay".into(),
            args: json!([]),
        };
        let direct = report.latency(
            "in-process call alice.ping (owner)",
            measure(scale, || {
                run(&shared, "alice", owner(&shared, "alice"), &ping)
            }),
        );
        let alice_at_bob = shared.deployment.peers["bob"].caller(alice_key.id());
        let script_at_bob = report.latency(
            "in-process script `1` alice→bob (delegated, trivial)",
            measure(scale, || run(&shared, "bob", alice_at_bob.clone(), &one)),
        );
        // The same, each fresh instance started from a snapshot of the
        // logic compiled (built at the first invocation here, waited for).
        let snapshotting = Arc::new(Runtime::new()?.snapshot_after(1));
        let from_snapshot = Worker::new(Deployment::load(&dir, &[])?, snapshotting.clone(), http());
        let alice_at_bob_snapshot = from_snapshot.deployment.peers["bob"].caller(alice_key.id());
        run(
            &from_snapshot,
            "alice",
            owner(&from_snapshot, "alice"),
            &ping,
        );
        run(&from_snapshot, "bob", alice_at_bob_snapshot.clone(), &one);
        let waited = Instant::now();
        while snapshotting.snapshots_ready() < 2 && waited.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(20));
        }
        println!(
            "  ({} snapshots of logic ready after {:.1?})",
            snapshotting.snapshots_ready(),
            waited.elapsed()
        );
        if snapshotting.snapshots_ready() < 2 {
            eprintln!(
                "!!! WARNING: no snapshot of the logic was built (a guest without `prepared`, or a failed build: `peerhost serve` with RUST_LOG=peerhost=info logs why); the snapshot rows below are of `prepare` !!!"
            );
        }
        let direct_snapshot = report.latency(
            "in-process call alice.ping (owner), fresh from the logic's snapshot",
            measure(scale, || {
                run(
                    &from_snapshot,
                    "alice",
                    owner(&from_snapshot, "alice"),
                    &ping,
                )
            }),
        );
        let script_snapshot = report.latency(
            "in-process script `1` alice→bob, fresh from the logic's snapshot",
            measure(scale, || {
                run(&from_snapshot, "bob", alice_at_bob_snapshot.clone(), &one)
            }),
        );
        report.ratio(
            "call alice.ping fresh: prepare / snapshot",
            ratio(direct, direct_snapshot),
            None,
        );
        report.ratio(
            "script alice→bob fresh: prepare / snapshot",
            ratio(script_at_bob, script_snapshot),
            None,
        );
        drop(from_snapshot);
        // The same on an engine that maps memory per instance instead of
        // pooling slots.
        let on_demand = Arc::new(Runtime::with_component(
            peerhost::runtime::GUEST_COMPONENT,
            peerhost::runtime::Allocation::OnDemand,
        )?);
        let unpooled = Worker::new(Deployment::load(&dir, &[])?, on_demand, http());
        let alice_at_bob_unpooled = unpooled.deployment.peers["bob"].caller(alice_key.id());
        let script_unpooled = report.latency(
            "in-process script `1` alice→bob, on-demand allocation",
            measure(scale, || {
                run(&unpooled, "bob", alice_at_bob_unpooled.clone(), &one)
            }),
        );
        report.ratio(
            "fresh instance: on-demand / pooled allocation",
            ratio(script_unpooled, script_at_bob),
            None,
        );
        drop(unpooled);
        // The same with `instances = "per-caller"`: an instance reused by
        // the same caller.
        let mut deployment = Deployment::load(&dir, &[])?;
        deployment.config.instances = peerhost::config::Instances::PerCaller;
        let reusing = Worker::new(deployment, runtime.clone(), http());
        let direct_reused = report.latency(
            "in-process call alice.ping (owner), reused instance",
            measure(scale, || {
                run(&reusing, "alice", owner(&reusing, "alice"), &ping)
            }),
        );
        let alice_at_bob_reusing = reusing.deployment.peers["bob"].caller(alice_key.id());
        let script_reused = report.latency(
            "in-process script `1` alice→bob, reused instance",
            measure(scale, || {
                run(&reusing, "bob", alice_at_bob_reusing.clone(), &one)
            }),
        );
        report.ratio(
            "call alice.ping: fresh / reused instance",
            ratio(direct, direct_reused),
            None,
        );
        report.ratio(
            "script alice→bob: fresh / reused instance",
            ratio(script_at_bob, script_reused),
            None,
        );
        let accepted = report.latency(
            "in-process envelope alice→bob `1` (seal+open+run)",
            measure(scale, || {
                let envelope = Envelope::seal(alice_key, bob_id, &one, 0, SystemTime::now())
                    .expect("randomness");
                let result = tokio.block_on(shared.accept(&envelope));
                assert!(result.is_ok(), "{result:?}");
            }),
        );
        let delegated_local = report.latency(
            "alice.relay → peers::send bob `1`, one worker",
            measure(scale, || {
                run(&shared, "alice", owner(&shared, "alice"), &relay)
            }),
        );
        let delegated_remote = report.latency(
            "alice.relay → peers::send bob `1`, two workers (HTTP)",
            measure(scale, || {
                run(&alice_only, "alice", owner(&alice_only, "alice"), &relay)
            }),
        );
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let envelopes = format!("{bob_url}/v1/envelopes");
        let http = report.latency(
            "HTTP envelope alice→bob `1` (1 connection)",
            measure(scale, || {
                let envelope = Envelope::seal(alice_key, bob_id, &one, 0, SystemTime::now())
                    .expect("randomness");
                let body = agent
                    .post(&envelopes)
                    .send_json(&envelope)
                    .and_then(|mut r| r.body_mut().read_to_string());
                assert_eq!(body.ok().as_deref(), Some("1"));
            }),
        );
        println!("  ratios (p50):");
        report.value(
            "signature share of an in-process envelope",
            100.0 * (seal + open).as_secs_f64() / accepted.as_secs_f64(),
            "%",
        );
        report.ratio(
            "envelope / host-routed script at bob",
            ratio(accepted, script_at_bob),
            None,
        );
        report.ratio(
            "delegation via logic / direct call, one worker",
            ratio(delegated_local, direct),
            None,
        );
        report.ratio(
            "delegation via logic / direct call, two workers",
            ratio(delegated_remote, direct),
            None,
        );
        report.ratio(
            "HTTP envelope / in-process envelope",
            ratio(http, accepted),
            None,
        );
        report.value(
            "delegated trivial script p50, snapshot (target ≤ 25 µs)",
            script_snapshot.as_secs_f64() * 1e6,
            "µs",
        );
    }
    let _ = stop.send(true);
    let _ = tokio.block_on(bob_server);

    if wants("3") {
        // 3. HTTP throughput of the real binary.
        println!(
            "\n3. HTTP: `POST /v1/peers/alice/call/ping` from 64 connections for {} s (real `peerhost serve`)",
            scale.http_seconds
        );
        let mut throughput = Vec::new();
        let config = dir.join("peerhost.toml");
        let fresh_config = std::fs::read_to_string(&config)?;
        // Snapshots of alice's logic: built in section 1 into the cache,
        // loaded at the first invocation here.
        for (mode, only, instances, snapshot_after) in [
            ("shared, no snapshots", None, "fresh", 0),
            ("shared", None, "fresh", 1),
            ("isolated", Some("alice"), "fresh", 1),
            ("shared, reused instances", None, "per-caller", 1),
        ] {
            std::fs::write(
                &config,
                fresh_config
                    .replace(
                        "instances = \"fresh\"",
                        &format!("instances = \"{instances}\""),
                    )
                    .replace(
                        &format!(
                            "snapshot_after = {}",
                            peerhost::config::DEFAULT_SNAPSHOT_AFTER
                        ),
                        &format!("snapshot_after = {snapshot_after}"),
                    ),
            )?;
            let server = Server::start(&dir, only)?;
            // The snapshot loaded before the figures count.
            load(server.addr, 4, Duration::from_millis(300))?;
            if only.is_none() {
                // The same server under wrk, an external load generator,
                // beside its `/healthz` (the HTTP front's own limit).
                let seconds = scale.http_seconds;
                match (
                    wrk(
                        server.addr,
                        "POST",
                        "/v1/peers/alice/call/ping",
                        seconds,
                        tmp.path(),
                    ),
                    wrk(server.addr, "GET", "/healthz", seconds, tmp.path()),
                ) {
                    (Some(call), Some(health)) => {
                        let target = if instances == "fresh" {
                            20_000.0
                        } else {
                            35_000.0
                        };
                        report.value(
                            &format!("wrk, {mode} worker: call/ping req/s (target ≥ {target:.0})"),
                            call.0,
                            "req/s",
                        );
                        report.value(
                            &format!("wrk, {mode} worker: call/ping p99 (target ≤ 5 ms)"),
                            call.1 * 1e6,
                            "µs",
                        );
                        report.value(
                            &format!("wrk, {mode} worker: GET /healthz req/s"),
                            health.0,
                            "req/s",
                        );
                        report.ratio(
                            &format!("wrk, {mode} worker: call/ping / healthz throughput"),
                            call.0 / health.0,
                            None,
                        );
                    }
                    _ => println!(
                        "  (wrk is not installed or failed: `make wrk` installs it; the figures below are this bench's own load generator)"
                    ),
                }
            }
            let (rate, p50, p99, errors) =
                load(server.addr, 64, Duration::from_secs(scale.http_seconds))?;
            report.value(
                &format!("{mode} worker: requests per second"),
                rate,
                "req/s",
            );
            report.value(
                &format!("{mode} worker: p50"),
                p50.as_secs_f64() * 1e6,
                "µs",
            );
            report.value(
                &format!("{mode} worker: p99 (target ≤ 5 ms)"),
                p99.as_secs_f64() * 1e6,
                "µs",
            );
            if errors > 0 {
                report.value(
                    &format!("{mode} worker: failed requests"),
                    errors as f64,
                    "",
                );
            }
            throughput.push(rate);
        }
        std::fs::write(&config, fresh_config)?;
        report.ratio(
            "isolated / shared worker throughput",
            throughput[1] / throughput[0],
            None,
        );
        report.ratio(
            "reused / fresh instances throughput",
            throughput[2] / throughput[0],
            None,
        );
    }
    if wants("4") {
        // 4. Scale.
        println!("\n4. scale");
        let many = tmp.path().join("many");
        peerhost::init(&many)?;
        add_peers(&many, scale.ready_peers)?;
        let server = Server::start(&many, None)?;
        report.value(
            &format!(
                "serve with {} peers: ready (target ≤ 300 ms)",
                scale.ready_peers
            ),
            server.ready.as_secs_f64() * 1e3,
            "ms",
        );
        drop(server);
        add_peers(&many, scale.idle_peers)?;
        let baseline = Server::start(&dir, None)?;
        let baseline_rss = baseline.rss_kib()?;
        drop(baseline);
        // The first start reads every new peer whole and indexes it; the
        // next reads the index and stats each peer.toml and contacts.toml.
        let first = Server::start(&many, None)?;
        report.value(
            &format!(
                "serve with {} peers, first start (every peer read): ready",
                scale.idle_peers
            ),
            first.ready.as_secs_f64() * 1e3,
            "ms",
        );
        drop(first);
        let server = Server::start(&many, None)?;
        let rss = server.rss_kib()?;
        report.value(
            &format!(
                "serve with {} peers, indexed: ready (target ≤ 500 ms at 100,000)",
                scale.idle_peers
            ),
            server.ready.as_secs_f64() * 1e3,
            "ms",
        );
        report.value(
            &format!(
                "RSS, {} idle peers (target ≤ 250 MiB at 100,000)",
                scale.idle_peers
            ),
            rss as f64 / 1024.0,
            "MiB",
        );
        report.value(
            "RSS per idle peer (over a 2-peer worker)",
            (rss.saturating_sub(baseline_rss)) as f64 / (scale.idle_peers - 2) as f64,
            "KiB",
        );
        drop(server);
        // Instances kept alive at once (the pool's slots are fresh: no
        // earlier invocation has dirtied them in this process but a few).
        let before = rss_kib(std::process::id())?;
        let mut sessions = Vec::with_capacity(scale.active_instances);
        for _ in 0..scale.active_instances {
            let mut session =
                tokio.block_on(runtime.session(&shared, &alice, owner(&shared, "alice")))?;
            let result = tokio.block_on(session.run(Invocation::Script {
                script: SCRIPTS[0].1.into(),
                params: Value::Null,
            }));
            assert!(result.is_ok(), "{result:?}");
            sessions.push(session);
        }
        let trivial = rss_kib(std::process::id())?;
        report.value(
            &format!(
                "RSS per active instance, {} instances after `1` (target ≤ 300 KiB)",
                scale.active_instances
            ),
            trivial.saturating_sub(before) as f64 / scale.active_instances as f64,
            "KiB",
        );
        for session in &mut sessions {
            let result = tokio.block_on(session.run(Invocation::Script {
                script: SCRIPTS[3].1.into(),
                params: Value::Null,
            }));
            assert!(result.is_ok(), "{result:?}");
        }
        let busy = rss_kib(std::process::id())?;
        report.value(
            "RSS per active instance, after a map/array script too",
            busy.saturating_sub(before) as f64 / scale.active_instances as f64,
            "KiB",
        );
        drop(sessions);
    }
    if wants("5") {
        // 5. Fairness.
        let noisy_clients = 4;
        println!(
            "\n5. fairness: alice.ping from one connection, alone and while {noisy_clients} clients send mallory `loop {{}}` scripts"
        );
        let fair = tmp.path().join("fair");
        peerhost::init(&fair)?;
        peerhost::new_peer(&fair, "mallory")?;
        host_every_peer(&fair)?;
        for (peer, grant) in [
            (
                "alice",
                "action == Action::\"call\", resource == Function::\"ping\"",
            ),
            ("mallory", "action == Action::\"script.accept\", resource"),
        ] {
            let policy = fair.join("peers").join(peer).join("policy.cedar");
            let mut text = std::fs::read_to_string(&policy)?;
            text.push_str(&format!(
                "\npermit (principal == Peer::\"anonymous\", {grant});\n"
            ));
            std::fs::write(&policy, text)?;
        }
        let server = Server::start(&fair, None)?;
        let window = Duration::from_secs(scale.http_seconds.max(2));
        let (_, alone_p50, alone_p99, _) = load(server.addr, 1, window)?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let noise: Vec<_> = (0..noisy_clients)
            .map(|_| {
                let stop = stop.clone();
                let addr = server.addr;
                std::thread::spawn(move || noisy(addr, &stop))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let (_, busy_p50, busy_p99, errors) = load(server.addr, 1, window)?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut runaway = 0;
        for thread in noise {
            runaway += thread.join().unwrap_or(0);
        }
        report.value("neighbour alone: p50", alone_p50.as_secs_f64() * 1e6, "µs");
        report.value("neighbour alone: p99", alone_p99.as_secs_f64() * 1e6, "µs");
        report.value(
            "neighbour beside the noisy peer: p50",
            busy_p50.as_secs_f64() * 1e6,
            "µs",
        );
        report.value(
            "neighbour beside the noisy peer: p99",
            busy_p99.as_secs_f64() * 1e6,
            "µs",
        );
        report.value(
            "noisy scripts stopped by their wall-time limit",
            runaway as f64,
            "",
        );
        if errors > 0 {
            report.value("neighbour: failed requests", errors as f64, "");
        }
        report.ratio(
            "neighbour p99: beside the noisy peer / alone",
            ratio(busy_p99, alone_p99),
            Some(2.0),
        );
    }
    if wants("6") {
        // 6. The replay guard: on disk and shared by workers vs memory only.
        println!("\n6. replay guard: an envelope's nonce admitted on disk vs in memory");
        let key = peerhost::PeerKey::generate()?;
        let target = peerhost::PeerKey::generate()?.id();
        let invocation = Invocation::Script {
            script: "1".into(),
            params: Value::Null,
        };
        let now = SystemTime::now();
        let opened: Vec<_> = (0..scale.warmup + scale.samples)
            .map(|_| -> anyhow::Result<_> {
                let envelope = Envelope::seal(&key, target, &invocation, 0, now)
                    .map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
                Ok(envelope.open(now)?)
            })
            .collect::<anyhow::Result<_>>()?;
        let admit = |guard: &peerhost::replay::ReplayGuard| {
            let mut next = opened.iter();
            measure(scale, || {
                if let Some(opened) = next.next() {
                    let _ = guard.admit(opened, now);
                }
            })
        };
        let memory = report.latency("admit, memory only", admit(&Default::default()));
        let disk = report.latency(
            "admit, on disk (state/nonces, locked)",
            admit(&peerhost::replay::ReplayGuard::at(tmp.path().join("state"))),
        );
        report.ratio(
            "replay guard: on disk / memory only",
            ratio(disk, memory),
            None,
        );
    }
    if wants("7") {
        // 7. kv backends: the sandbox vs the same operations natively.
        println!(
            "\n7. kv backends: kv-heavy script in the sandbox vs the same operations natively"
        );
        let kv_heavy = SCRIPTS
            .iter()
            .find(|(name, _)| *name == "kv-heavy")
            .map(|(_, script)| *script)
            .unwrap_or("1");
        let invocation = Invocation::Script {
            script: kv_heavy.into(),
            params: Value::Null,
        };
        for (label, storage) in [
            (
                "sqlite (synchronous = full)",
                "kv = \"sqlite\"\nsynchronous = \"full\"",
            ),
            (
                "sqlite (synchronous = normal)",
                "kv = \"sqlite\"\nsynchronous = \"normal\"",
            ),
            ("fs", "kv = \"fs\""),
            ("s3 (moto on loopback)", "kv = \"s3\""),
        ] {
            let s3 = storage == "kv = \"s3\"";
            let moto = if s3 { moto::Moto::start() } else { None };
            if s3 && moto.is_none() {
                continue;
            }
            let dir = tmp.path().join(format!("kv-{}", report.figures.len()));
            peerhost::init(&dir)?;
            let config = dir.join("peers/alice/peer.toml");
            let mut text = std::fs::read_to_string(&config)?.replace("kv = \"sqlite\"", storage);
            if let Some(moto) = &moto {
                on_moto(&dir, &mut text, moto, "bench/alice")?;
            }
            std::fs::write(&config, text)?;
            // A round trip per request on s3: fewer samples.
            let scale = if s3 {
                Scale {
                    samples: scale.samples.min(20),
                    ..scale
                }
            } else {
                scale
            };
            let worker = Worker::new(
                Deployment::load(&dir, &["alice".into()])?,
                runtime.clone(),
                http(),
            );
            let peer = worker.deployment.peers["alice"].clone();
            let kv = peer.kv.as_ref();
            let charge = peerhost::kv::Charge::unlimited("alice");
            let keys: Vec<String> = (0..20).map(|i| format!("bench/{i}")).collect();
            let texts: Vec<String> = (0..20).map(|i| i.to_string()).collect();
            let native = report.latency(
                &format!("{label}: native, 20 sets + 20 gets"),
                measure(scale, || {
                    for (key, text) in keys.iter().zip(&texts) {
                        if let Ok(value) = peerhost::kv::CheckedValue::new(key, text) {
                            let _ = peerhost::kv::set(kv, &charge, &value);
                        }
                    }
                    for key in &keys {
                        let _ = std::hint::black_box(kv.get(key));
                    }
                }),
            );
            let mut session =
                tokio.block_on(runtime.session(&worker, &peer, owner(&worker, "alice")))?;
            let sandbox = report.latency(
                &format!("{label}: sandbox, warm instance, kv-heavy"),
                measure(scale, || {
                    if let Err(e) = tokio.block_on(session.run(invocation.clone())) {
                        panic!("kv-heavy on {label}: {e:?}");
                    }
                }),
            );
            report.ratio(
                &format!("kv-heavy on {label}: sandbox / native"),
                ratio(sandbox, native),
                label.starts_with("sqlite").then_some(1.5),
            );
            let one = peerhost::kv::CheckedValue::new("one", "1")?;
            report.latency(
                &format!("{label}: native set"),
                measure(scale, || {
                    let _ = peerhost::kv::set(kv, &charge, &one);
                }),
            );
            report.latency(
                &format!("{label}: native get"),
                measure(scale, || {
                    let _ = std::hint::black_box(kv.get("one"));
                }),
            );
            let many: Vec<String> = (0..10_000).map(|i| format!("list/{i:05}")).collect();
            for chunk in many.chunks(peerhost::kv::MAX_BATCH) {
                let values = chunk
                    .iter()
                    .map(|key| peerhost::kv::CheckedValue::new(key, "0"))
                    .collect::<Result<Vec<_>, _>>()?;
                peerhost::kv::set_many(kv, &charge, &values)?;
            }
            let deadline = Instant::now() + Duration::from_secs(3600);
            report.latency(
                &format!("{label}: native list page, 1,000 of 10,000 keys"),
                measure(
                    Scale {
                        samples: scale.samples.min(100),
                        ..scale
                    },
                    || {
                        let _ = std::hint::black_box(peerhost::kv::list_page(
                            kv,
                            "list/",
                            Some("list/04000"),
                            1_000,
                            deadline,
                        ));
                    },
                ),
            );
        }
    }
    if wants("9") {
        transports(&tokio, &dir, &runtime, scale, &mut report)?;
    }
    if wants("8") {
        // 8. namespace backends: the sandbox vs the same operations natively.
        println!(
            "\n8. namespace backends: fs::write + fs::read in the sandbox vs the same operations \
             natively on the same backend"
        );
        for fs in ["dir", "sqlite", "s3"] {
            let moto = if fs == "s3" {
                moto::Moto::start()
            } else {
                None
            };
            if fs == "s3" && moto.is_none() {
                continue;
            }
            let dir = tmp.path().join(format!("fs-{fs}"));
            peerhost::init(&dir)?;
            let config = dir.join("peers/alice/peer.toml");
            let mut text = std::fs::read_to_string(&config)?.replace(
                "kv = \"sqlite\"",
                &format!("kv = \"sqlite\"\nfs = \"{fs}\""),
            );
            if let Some(moto) = &moto {
                on_moto(&dir, &mut text, moto, "bench/alice-fs")?;
            }
            std::fs::write(&config, text)?;
            let worker = Worker::new(
                Deployment::load(&dir, &["alice".into()])?,
                runtime.clone(),
                http(),
            );
            let peer = worker.deployment.peers["alice"].clone();
            let mut session =
                tokio.block_on(runtime.session(&worker, &peer, owner(&worker, "alice")))?;
            let path = peerhost::namespace::backend::NsPath::parse("/bench.bin")?;
            let truncate = peerhost::namespace::backend::OpenMode {
                create: true,
                exclusive: false,
                truncate: true,
            };
            for (size_label, size) in [("1 KiB", 1usize << 10), ("1 MiB", 1 << 20)] {
                // A caller writes at most 64 MiB a minute at a peer, and s3
                // takes a round trip per request: fewer samples there.
                let scale = if size > 1 << 10 || fs == "s3" {
                    Scale {
                        warmup: 3,
                        samples: scale.samples.min(20),
                        ..scale
                    }
                } else {
                    scale
                };
                let bytes = vec![b'x'; size];
                // What the guest's std::fs does: open truncating, write,
                // read back; the sync the host makes when an invocation ends.
                let native = report.latency(
                    &format!("{fs}: native, write + read {size_label}"),
                    measure(scale, || match &peer.namespace.backend {
                        None => {
                            let file = peer.namespace.data.join("bench.bin");
                            let _ = std::fs::write(&file, &bytes);
                            let _ = std::hint::black_box(std::fs::read(&file));
                        }
                        Some(ns) => {
                            let _ = ns.open(&path, truncate);
                            let _ = ns.write(&path, 0, &bytes);
                            let _ = std::hint::black_box(ns.read(&path, 0, size as u64));
                            let _ = ns.sync();
                        }
                    }),
                );
                let invocation = Invocation::Script {
                    // The bytes by doubling: memcpy speed (`pad` pushes a
                    // character at a time, 25 ms for 1 MiB).
                    script: format!(
                        "let s = \"x\"; while s.len() < {size} {{ s += s; }} \
                         fs::write(\"bench.bin\", s); fs::read(\"bench.bin\").len()"
                    ),
                    params: Value::Null,
                };
                let sandbox = report.latency(
                    &format!("{fs}: sandbox, warm instance, write + read {size_label}"),
                    measure(scale, || {
                        if let Err(e) = tokio.block_on(session.run(invocation.clone())) {
                            panic!("fs::write + fs::read {size_label} on {fs}: {e:?}");
                        }
                    }),
                );
                report.ratio(
                    &format!("fs {size_label} on {fs}: sandbox / native"),
                    ratio(sandbox, native),
                    (fs != "s3").then_some(1.5),
                );
            }
        }
    }
    save(&report)?;
    Ok(())
}

/// Gives alice of the deployment at `dir` moto's bucket under `prefix`
/// (`text` is her peer.toml), and the deployment more wall time than the
/// demo's: milliseconds per request.
fn on_moto(dir: &Path, text: &mut String, moto: &moto::Moto, prefix: &str) -> anyhow::Result<()> {
    text.push_str(&moto.section(prefix));
    std::fs::write(dir.join("peers/alice/s3.toml"), moto::CREDENTIALS)?;
    let host = dir.join("peerhost.toml");
    let config = std::fs::read_to_string(&host)?;
    std::fs::write(
        &host,
        config.replace("wall_time_ms = 1000", "wall_time_ms = 60000"),
    )?;
    Ok(())
}

/// Sends mallory `loop {}` scripts on one connection until `stop`; returns
/// how many came back as `limit`.
fn noisy(addr: std::net::SocketAddr, stop: &std::sync::atomic::AtomicBool) -> usize {
    let body = "{\"script\": \"loop { }\"}";
    let request = format!(
        "POST /v1/peers/mallory/eval HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let Ok(reader) = stream.try_clone() else {
        return 0;
    };
    let mut reader = BufReader::new(reader);
    let mut limited = 0;
    // Bounded by `stop` and by count.
    for _ in 0..10_000 {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        if stream.write_all(request.as_bytes()).is_err() {
            break;
        }
        let mut status = String::new();
        let mut length = 0;
        if reader.read_line(&mut status).is_err() {
            break;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).is_err() || header.trim_end().is_empty() {
                break;
            }
            if let Some((name, value)) = header.trim_end().split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut answer = vec![0; length];
        if reader.read_exact(&mut answer).is_err() {
            break;
        }
        if status.contains(" 413 ") {
            limited += 1;
        }
    }
    limited
}

/// Hosts every directory of `peers/` (drops `peers = [...]` from peerhost.toml).
fn host_every_peer(dir: &Path) -> anyhow::Result<()> {
    let config = dir.join("peerhost.toml");
    let text = std::fs::read_to_string(&config)?;
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("peers ="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&config, text)?;
    Ok(())
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// Adds peers `p00001`… to the deployment at `dir` until it has `count`
/// (each with a key, the owner-only policy and a `ping` function).
fn add_peers(dir: &Path, count: usize) -> anyhow::Result<()> {
    let existing = std::fs::read_dir(dir.join("peers"))?.count();
    for i in existing..count {
        peerhost::new_peer(dir, &format!("p{i:05}"))?;
    }
    host_every_peer(dir)
}

/// A real `peerhost serve` process, killed when dropped. It shares the
/// bench's guest cache, so it starts warm.
struct Server {
    child: Child,
    addr: std::net::SocketAddr,
    ready: Duration,
}

impl Server {
    fn start(dir: &Path, only: Option<&str>) -> anyhow::Result<Server> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_peerhost"));
        // Its stderr beside the deployment, shown when it does not start.
        let log = dir.with_extension("serve.log");
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        if let Some(peer) = only {
            command.args(["--peer", peer]);
        }
        let started = Instant::now();
        let mut child = command.spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let ready = started.elapsed();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: String = said.lines().rev().take(5).collect::<Vec<_>>().join("\n");
                anyhow::anyhow!("unexpected banner {line:?}; serve said:\n{tail}")
            })?;
        Ok(Server { child, addr, ready })
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.child.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident set of process `pid`, from /proc.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))
}

/// `connections` keep-alive HTTP/1.1 clients on threads, each posting
/// `call/ping` in a loop until `duration` is over. Returns requests per
/// second, p50, p99 and the number of failed requests.
/// `wrk` from 64 connections on 2 threads for `seconds` against `path`
/// (`POST` with an empty body, or `GET`): requests per second and the p99
/// in seconds; none without wrk, or when it fails or reports errors.
fn wrk(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    seconds: u64,
    tmp: &Path,
) -> Option<(f64, f64)> {
    let script = tmp.join(format!("wrk-{method}.lua"));
    std::fs::write(
        &script,
        format!("wrk.method = \"{method}\"\nwrk.headers[\"Content-Length\"] = \"0\"\n"),
    )
    .ok()?;
    let out = Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{seconds}s"), "--latency", "-s"])
        .arg(&script)
        .arg(format!("http://{addr}{path}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("  wrk {method} {path}: {text}");
        return None;
    }
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|line| line.strip_prefix(prefix))
            .map(|rest| rest.trim().to_owned())
    };
    let rate: f64 = field("Requests/sec:")?.parse().ok()?;
    let p99 = field("99%")?;
    let (number, unit) = p99.split_at(p99.find(|c: char| c.is_ascii_alphabetic())?);
    let scale = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        _ => return None,
    };
    Some((rate, number.parse::<f64>().ok()? * scale))
}

fn load(
    addr: std::net::SocketAddr,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<(f64, Duration, Duration, usize)> {
    let request = format!(
        "POST /v1/peers/alice/call/ping HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    );
    let started = Instant::now();
    let end = started + duration;
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let request = request.clone();
            std::thread::spawn(move || -> anyhow::Result<(Vec<Duration>, usize)> {
                let mut stream = std::net::TcpStream::connect(addr)?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut reader = BufReader::new(stream.try_clone()?);
                let mut samples = Vec::new();
                let mut errors = 0;
                let mut body = Vec::new();
                // Bounded in time and in count.
                while Instant::now() < end && samples.len() < 1_000_000 {
                    let t = Instant::now();
                    stream.write_all(request.as_bytes())?;
                    let mut length = 0;
                    let mut status = String::new();
                    reader.read_line(&mut status)?;
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header)?;
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse()?;
                        }
                    }
                    body.resize(length, 0);
                    reader.read_exact(&mut body)?;
                    samples.push(t.elapsed());
                    if !status.contains(" 200 ") || body != b"\"pong\"" {
                        errors += 1;
                    }
                }
                Ok((samples, errors))
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut errors = 0;
    for thread in threads {
        let (mut s, e) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        samples.append(&mut s);
        errors += e;
    }
    let elapsed = started.elapsed();
    let count = samples.len();
    let (p50, p99, _) = percentiles(samples);
    Ok((count as f64 / elapsed.as_secs_f64(), p50, p99, errors))
}

fn results_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("bench")
}

fn save(report: &Report) -> anyhow::Result<()> {
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let results = json!({
        "bench": "invoke",
        "commit": commit,
        "time": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        "figures": report.figures,
    });
    let dir = results_dir();
    std::fs::create_dir_all(&dir)?;
    let text = serde_json::to_string_pretty(&results)?;
    std::fs::write(dir.join(format!("{commit}.json")), &text)?;
    std::fs::write(dir.join("latest.json"), &text)?;
    println!(
        "\nresults: {} (compare two runs: make bench-compare BASE={})",
        dir.join("latest.json").display(),
        dir.join(format!("{commit}.json")).display()
    );
    Ok(())
}

/// Prints each figure of `new` beside the same figure of `base`.
fn compare(base: &Path, new: &Path) -> anyhow::Result<()> {
    let read = |path: &Path| -> anyhow::Result<Value> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    };
    let (base, new_run) = (read(base)?, read(new)?);
    println!(
        "{:<64} {:>12} {:>12} {:>8}",
        format!("figure ({} → {})", base["commit"], new_run["commit"]),
        "base",
        "new",
        "new/base"
    );
    let figures = |v: &Value| v["figures"].as_array().cloned().unwrap_or_default();
    let base_figures = figures(&base);
    let mut rows = Vec::new();
    for figure in figures(&new_run) {
        let name = figure["name"].as_str().unwrap_or("?");
        let number = |f: &Value| f["p50"].as_f64().or_else(|| f["value"].as_f64());
        let Some(value) = number(&figure) else {
            continue;
        };
        let old = base_figures
            .iter()
            .find(|f| f["name"] == figure["name"])
            .and_then(number);
        match old {
            Some(old) => println!("{name:<64} {old:>12.1} {value:>12.1} {:>7.2}×", value / old),
            None => println!("{name:<64} {:>12} {value:>12.1}", "-"),
        }
        rows.push((name.to_owned(), old, value));
    }
    let page = new.parent().unwrap_or(Path::new(".")).join("compare.html");
    std::fs::write(&page, compare_page(&base, &new_run, &rows))
        .map_err(|e| anyhow::anyhow!("{}: {e}", page.display()))?;
    println!("the two runs as bar charts: {}", page.display());
    Ok(())
}

/// The figures of two runs as an HTML page: one pair of bars per figure
/// (base grey, new blue), each pair scaled to its larger value.
fn compare_page(base: &Value, new: &Value, rows: &[(String, Option<f64>, f64)]) -> String {
    let escape = |text: &str| {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let commit = |run: &Value| escape(run["commit"].as_str().unwrap_or("?"));
    let mut html = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>peerhost bench: {} → {}</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:1.5rem}}td{{padding:.15rem .5rem}}\
         .r{{text-align:right;font-variant-numeric:tabular-nums}}</style></head><body>\
         <h1>peerhost bench: {} → {}</h1><p><span style=\"color:#999\">■</span> base \
         <span style=\"color:#36c\">■</span> new; each figure's bars to its own scale</p><table>",
        commit(base),
        commit(new),
        commit(base),
        commit(new)
    );
    for (name, old, value) in rows {
        let top = old.unwrap_or(0.0).max(*value).max(f64::MIN_POSITIVE);
        let bar = |v: f64, colour: &str| {
            format!(
                "<svg width=\"300\" height=\"8\"><rect width=\"{:.1}\" height=\"8\" fill=\"{colour}\"></rect></svg>",
                (v / top * 300.0).max(0.0)
            )
        };
        let ratio = old.map_or(String::from("new"), |old| format!("{:.2}×", value / old));
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}<br>{}</td><td class=\"r\">{}</td><td class=\"r\">{value:.1}</td><td class=\"r\">{ratio}</td></tr>",
            escape(name),
            old.map_or(String::new(), |old| bar(old, "#999")),
            bar(*value, "#36c"),
            old.map_or(String::from("-"), |old| format!("{old:.1}")),
        ));
    }
    html.push_str("</table></body></html>\n");
    html
}

/// How one envelope reaches bob: sealed by alice, sent, answered.
type Sender = Arc<
    dyn Fn(Envelope) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        + Send
        + Sync,
>;

/// Sends `total` envelopes through `send`, `in_flight` at once, after a
/// warm-up: each one's latency, and envelopes per second over the whole.
fn drive(
    tokio: &tokio::runtime::Runtime,
    seal: &Arc<dyn Fn() -> Envelope + Send + Sync>,
    send: &Sender,
    total: usize,
    in_flight: usize,
) -> anyhow::Result<(Vec<Duration>, f64)> {
    tokio.block_on(async {
        for _ in 0..in_flight.max(20) {
            anyhow::ensure!(send(seal()).await, "a warm-up envelope failed");
        }
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..in_flight {
            let (seal, send) = (seal.clone(), send.clone());
            let each = total / in_flight;
            tasks.spawn(async move {
                let mut samples = Vec::with_capacity(each);
                for _ in 0..each {
                    // Sealing (the signature) is part of every row.
                    let t = Instant::now();
                    if !send(seal()).await {
                        return Err(anyhow::anyhow!("an envelope failed"));
                    }
                    samples.push(t.elapsed());
                }
                Ok(samples)
            });
        }
        let mut samples = Vec::with_capacity(total);
        while let Some(done) = tasks.join_next().await {
            samples.extend(done??);
        }
        let rate = samples.len() as f64 / started.elapsed().as_secs_f64();
        Ok((samples, rate))
    })
}

/// Section 9: envelopes between two workers over each transport, beside
/// the same envelope sealed, verified and run in-process.
fn transports(
    tokio: &tokio::runtime::Runtime,
    dir: &Path,
    runtime: &Arc<Runtime>,
    scale: Scale,
    report: &mut Report,
) -> anyhow::Result<()> {
    println!(
        "\n9. transports between two workers: an envelope (script `1`) sealed, sent and answered, \
         vs the same sealed, verified and run in-process"
    );
    let bob = Worker::new(
        Deployment::load(dir, &["bob".into()])?,
        runtime.clone(),
        http(),
    );
    let alice = Worker::new(
        Deployment::load(dir, &["alice".into()])?,
        runtime.clone(),
        http(),
    );
    let signer = alice.deployment.peers["alice"].clone();
    anyhow::ensure!(
        signer.key().map_err(anyhow::Error::msg)?.is_some(),
        "alice has no key"
    );
    let bob_id = bob.deployment.peers["bob"].id;
    let one = Invocation::Script {
        script: "1".into(),
        params: Value::Null,
    };
    let seal: Arc<dyn Fn() -> Envelope + Send + Sync> = Arc::new(move || {
        let key = signer.key().ok().flatten().expect("alice's key");
        Envelope::seal(key, bob_id, &one, 0, SystemTime::now()).expect("randomness")
    });
    let listener = tokio.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = tokio.spawn(peerhost::serve(listener, bob.clone(), async move {
        let mut stopped = stopped;
        let _ = stopped.changed().await;
    }));
    let timeout = Duration::from_secs(10);
    let answered = |result: Result<Value, peerhost::InvocationError>| matches!(result, Ok(Value::Number(n)) if n.as_i64() == Some(1));
    let mut rows: Vec<(&str, Sender)> = Vec::new();
    {
        let bob = bob.clone();
        rows.push((
            "in-process (seal, verify, replay check, run)",
            Arc::new(move |e: Envelope| {
                let bob = bob.clone();
                Box::pin(async move { answered(bob.accept(&e).await) })
            }),
        ));
    }
    for (name, url) in [
        ("HTTP (a request each)", format!("http://{addr}")),
        ("WebSocket (one connection)", format!("ws://{addr}")),
    ] {
        let transport = peerhost::client::Transports::default();
        rows.push((
            name,
            Arc::new(move |e: Envelope| {
                let sending = peerhost::Transport::send(&transport, &url, e, timeout);
                Box::pin(async move { answered(sending.await) })
            }),
        ));
    }
    // The WebSocket floor: peerhost's client against a server that answers
    // each frame at once, running nothing.
    {
        let listener = tokio.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let url = format!("ws://{}", listener.local_addr()?);
        tokio.spawn(async move {
            use futures::{SinkExt, StreamExt};
            use tokio_tungstenite::tungstenite::Message;
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(Message::Text(frame))) = socket.next().await {
                        let id = serde_json::from_str::<Value>(&frame)
                            .map(|f| f["id"].clone())
                            .unwrap_or(Value::Null);
                        let answer = json!({ "id": id, "result": 1 }).to_string();
                        if socket.send(Message::text(answer)).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let transport = peerhost::client::Transports::default();
        rows.push((
            "WebSocket answered at once (the transport alone)",
            Arc::new(move |e: Envelope| {
                let sending = peerhost::Transport::send(&transport, &url, e, timeout);
                Box::pin(async move { answered(sending.await) })
            }),
        ));
    }
    // A NATS server; bob's worker of the cluster is another worker over the
    // same peer, so the rows above pay no cluster-wide nonce.
    let cluster = nats::NatsCluster::start(1, None);
    let mut serving = None;
    if let Some(cluster) = &cluster {
        let config = peerhost::config::ClusterConfig::with_servers(None, &cluster.nodes[0].url);
        let bob_in_cluster = Worker::new(
            Deployment::load(dir, &["bob".into()])?,
            runtime.clone(),
            http(),
        );
        let (served, sender) = tokio.block_on(async {
            let at_bob = peerhost::cluster::Nats::connect(&config, dir, "bench-bob").await?;
            bob_in_cluster.join(Arc::new(at_bob.clone()));
            let serving = at_bob.serve(bob_in_cluster.clone(), 1_024).await?;
            let sender = peerhost::cluster::Nats::connect(&config, dir, "bench-alice").await?;
            anyhow::Ok((serving, sender))
        })?;
        serving = Some(served);
        {
            let bob = bob_in_cluster.clone();
            rows.push((
                "in-process, in a cluster (+ the nonce in JetStream)",
                Arc::new(move |e: Envelope| {
                    let bob = bob.clone();
                    Box::pin(async move { answered(bob.accept(&e).await) })
                }),
            ));
        }
        // The floor: the same request/reply, echoed by a bare subscriber.
        let echo = tokio.block_on(async {
            let url = cluster.nodes[0].url.clone();
            let answering = async_nats::connect(url.as_str()).await?;
            let asking = async_nats::connect(url.as_str()).await?;
            let mut asked = answering.subscribe("bench.echo").await?;
            answering.flush().await?;
            tokio::spawn(async move {
                use futures::StreamExt;
                while let Some(message) = asked.next().await {
                    if let Some(reply) = message.reply {
                        let _ = answering.publish(reply, message.payload).await;
                    }
                }
            });
            anyhow::Ok(asking)
        })?;
        let payload = bytes::Bytes::from(serde_json::to_vec(&seal())?);
        rows.push((
            "NATS request/reply echoed (the transport alone)",
            Arc::new(move |_: Envelope| {
                let (echo, payload) = (echo.clone(), payload.clone());
                Box::pin(async move { echo.request("bench.echo", payload).await.is_ok() })
            }),
        ));
        rows.push((
            "NATS (request/reply, + the nonce in JetStream)",
            Arc::new(move |e: Envelope| {
                let sending = peerhost::Cluster::send(&sender, e, timeout);
                Box::pin(async move { sending.await.is_ok_and(|v| v == json!(1)) })
            }),
        ));
    } else {
        println!("  NATS rows skipped: no nats-server (`make nats-server` installs it)");
    }
    let total = scale.samples * 4;
    let mut p50s = std::collections::HashMap::new();
    for in_flight in [1, 64] {
        println!("  {in_flight} in flight, {total} envelopes each:");
        for (name, send) in &rows {
            let (samples, rate) = drive(tokio, &seal, send, total, in_flight)?;
            let p50 = report.latency(&format!("{name}, {in_flight} in flight"), samples);
            report.value(
                &format!("{name}, {in_flight} in flight: envelopes/s"),
                rate,
                "/s",
            );
            p50s.insert((*name, in_flight), p50);
        }
    }
    let base = p50s[&("in-process (seal, verify, replay check, run)", 1)];
    for (name, against, target) in [
        (
            "HTTP (a request each)",
            "in-process (seal, verify, replay check, run)",
            None,
        ),
        (
            "WebSocket (one connection)",
            "in-process (seal, verify, replay check, run)",
            Some(1.5),
        ),
        (
            "NATS (request/reply, + the nonce in JetStream)",
            "in-process, in a cluster (+ the nonce in JetStream)",
            Some(1.5),
        ),
    ] {
        if let (Some(&p50), Some(&reference)) = (p50s.get(&(name, 1)), p50s.get(&(against, 1))) {
            report.ratio(
                &format!("{name} / {against}, p50"),
                ratio(p50, reference),
                target,
            );
        }
    }
    if let Some(&nats) = p50s.get(&("NATS (request/reply, + the nonce in JetStream)", 1)) {
        report.ratio(
            "NATS with the nonce / in-process without a cluster, p50",
            ratio(nats, base),
            None,
        );
    }
    if let Some(serving) = serving {
        tokio.block_on(serving.stop(Duration::from_secs(5)));
    }
    let _ = stop.send(true);
    let _ = tokio.block_on(server);
    drop(cluster);
    Ok(())
}

/// The transport between workers: HTTP, as `peerhost serve` uses.
fn http() -> Arc<dyn peerhost::Transport> {
    Arc::new(peerhost::Http)
}
