//! `make bench`: latency of trivial invocations on a fresh Store each time,
//! policy checks and audit lines included, side by side in one run:
//! in-process and over HTTP, direct and delegated (in one worker and across
//! two), and the cost of sealing and opening one envelope. Prints
//! percentiles, ratios, and one JSON line to compare runs; asserts nothing
//! about time.

use peerhost::deployment::Deployment;
use peerhost::envelope::Envelope;
use peerhost::identity::Caller;
use peerhost::runtime::{Invocation, Invoke, Runtime};
use peerhost::worker::Worker;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const WARMUP: usize = 50;
const SAMPLES: usize = 1_000;

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    (at(0.5), at(0.99), samples[samples.len() - 1])
}

struct Report {
    results: Vec<Value>,
}

impl Report {
    fn add(&mut self, name: &str, samples: Vec<Duration>) -> Duration {
        let (p50, p99, max) = percentiles(samples);
        println!("{name:<58} p50 {p50:>10.1?}   p99 {p99:>10.1?}   max {max:>10.1?}");
        self.results.push(json!({
            "name": name,
            "p50_us": p50.as_secs_f64() * 1e6,
            "p99_us": p99.as_secs_f64() * 1e6,
        }));
        p50
    }
}

fn measure(mut run: impl FnMut()) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..WARMUP + SAMPLES {
        let t = Instant::now();
        run();
        if i >= WARMUP {
            samples.push(t.elapsed());
        }
    }
    samples
}

fn owner(worker: &Worker, name: &str) -> Caller {
    let peer = &worker.deployment.peers[name];
    peer.caller(peer.id)
}

fn main() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("demo");
    peerhost::scaffold::init(&dir)?;
    let logic = dir.join("peers/alice/logic/main.rhai");
    let mut text = std::fs::read_to_string(&logic)?;
    text.push_str("\nfn relay() { peers::send(\"bob\", \"1\") }\n");
    std::fs::write(&logic, text)?;

    println!("compiling the guest component…");
    let started = Instant::now();
    let runtime = Arc::new(Runtime::new()?);
    println!(
        "runtime ready in {:.0?}; {SAMPLES} samples per figure after {WARMUP} warm-up runs",
        started.elapsed()
    );
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut report = Report {
        results: Vec::new(),
    };

    // Bob's worker first, on a port alice's contacts can name; then one
    // worker hosting both, and one hosting only alice.
    let bob_listener = tokio.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let bob_url = format!("http://{}", bob_listener.local_addr()?);
    let contacts = dir.join("peers/alice/contacts.toml");
    let text = std::fs::read_to_string(&contacts)?;
    std::fs::write(&contacts, text.replace("http://127.0.0.1:7070", &bob_url))?;
    let shared = Worker::new(Deployment::load(&dir, &[])?, runtime.clone());
    let alice_only = Worker::new(Deployment::load(&dir, &["alice".into()])?, runtime.clone());
    let bob_only = Worker::new(Deployment::load(&dir, &["bob".into()])?, runtime.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shutdown = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.changed().await;
    };
    let bob_server = tokio.spawn(peerhost::server::serve(
        bob_listener,
        bob_only.clone(),
        shutdown(stopped.clone()),
    ));

    // Envelopes: the cost of the signature alone.
    let alice_key = shared.deployment.peers["alice"]
        .key
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("alice has no key"))?;
    let bob_id = shared.deployment.peers["bob"].id;
    let one = Invocation::Script {
        script: "1".into(),
        params: Value::Null,
    };
    let seal = report.add(
        "seal (sign) one envelope",
        measure(|| {
            let envelope = Envelope::seal(alice_key, bob_id, &one, 0, SystemTime::now());
            assert!(envelope.is_ok());
        }),
    );
    let sealed = Envelope::seal(alice_key, bob_id, &one, 0, SystemTime::now())?;
    let open = report.add(
        "open (verify) one envelope",
        measure(|| assert!(sealed.open(SystemTime::now()).is_ok())),
    );

    let run = |worker: &Arc<Worker>, peer: &str, caller: Caller, invocation: &Invocation| {
        let peer = worker.deployment.peers[peer].clone();
        let invoke = Invoke {
            caller,
            invocation: invocation.clone(),
            depth: 0,
            deadline: None,
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
    let direct = report.add(
        "in-process call alice.ping (owner)",
        measure(|| run(&shared, "alice", owner(&shared, "alice"), &ping)),
    );
    report.add(
        "in-process script `1` at alice (owner)",
        measure(|| run(&shared, "alice", owner(&shared, "alice"), &one)),
    );
    let alice_at_bob = shared.deployment.peers["bob"].caller(alice_key.id());
    let script_at_bob = report.add(
        "in-process script `1` alice→bob (caller resolved)",
        measure(|| run(&shared, "bob", alice_at_bob.clone(), &one)),
    );
    let accepted = report.add(
        "in-process envelope alice→bob `1` (seal+open+run)",
        measure(|| {
            let envelope =
                Envelope::seal(alice_key, bob_id, &one, 0, SystemTime::now()).expect("randomness");
            let result = tokio.block_on(shared.accept(&envelope));
            assert!(result.is_ok(), "{result:?}");
        }),
    );
    let delegated_local = report.add(
        "alice.relay → peers::send bob `1`, one worker",
        measure(|| run(&shared, "alice", owner(&shared, "alice"), &relay)),
    );
    let delegated_remote = report.add(
        "alice.relay → peers::send bob `1`, two workers (HTTP)",
        measure(|| run(&alice_only, "alice", owner(&alice_only, "alice"), &relay)),
    );

    // The same envelope over HTTP, one connection.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let envelopes = format!("{bob_url}/v1/envelopes");
    let http = report.add(
        "HTTP envelope alice→bob `1` (1 connection)",
        measure(|| {
            let envelope =
                Envelope::seal(alice_key, bob_id, &one, 0, SystemTime::now()).expect("randomness");
            let body = agent
                .post(&envelopes)
                .send_json(&envelope)
                .and_then(|mut r| r.body_mut().read_to_string());
            assert_eq!(body.ok().as_deref(), Some("1"));
        }),
    );
    let _ = stop.send(true);
    let _ = tokio.block_on(bob_server);

    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!();
    println!(
        "signature share of an in-process envelope: {:.1} %",
        100.0 * (seal + open).as_secs_f64() / accepted.as_secs_f64()
    );
    println!(
        "envelope vs host-routed script at bob: {:.2}x",
        ratio(accepted, script_at_bob)
    );
    println!(
        "delegation via logic vs a direct call: {:.2}x (one worker), {:.2}x (two workers)",
        ratio(delegated_local, direct),
        ratio(delegated_remote, direct)
    );
    println!(
        "HTTP envelope vs in-process envelope: {:.2}x",
        ratio(http, accepted)
    );
    println!(
        "{}",
        json!({ "bench": "invoke", "results": report.results })
    );
    Ok(())
}
