//! `make bench`: latency of a trivial invocation (alice's `ping`, and the
//! script `1`) on a fresh Store each time, policy check included, measured
//! in-process and over HTTP on loopback in the same run. Prints percentiles
//! and one JSON line to compare runs; asserts nothing about time.

use peerhost::deployment::Deployment;
use peerhost::runtime::{Invocation, Runtime};
use peerhost::worker::Worker;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WARMUP: usize = 50;
const SAMPLES: usize = 1_000;

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    (at(0.5), at(0.99), samples[samples.len() - 1])
}

fn report(name: &str, samples: Vec<Duration>, results: &mut Vec<Value>) {
    let (p50, p99, max) = percentiles(samples);
    println!("{name:<40} p50 {p50:>10.1?}   p99 {p99:>10.1?}   max {max:>10.1?}");
    results.push(
        json!({"name": name, "p50_us": p50.as_secs_f64() * 1e6, "p99_us": p99.as_secs_f64() * 1e6}),
    );
}

fn main() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("demo");
    peerhost::scaffold::init(&dir)?;
    println!("compiling the guest component…");
    let started = Instant::now();
    let runtime = Arc::new(Runtime::new()?);
    println!(
        "runtime ready in {:.0?}; {SAMPLES} samples per figure after {WARMUP} warm-up runs",
        started.elapsed()
    );
    let worker = Arc::new(Worker::new(Deployment::load(&dir, &[])?, runtime));
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut results = Vec::new();

    let ping = || Invocation::Call {
        function: "ping".into(),
        args: json!([]),
    };
    let script = || Invocation::Script {
        script: "1".into(),
        params: Value::Null,
    };
    for (name, make) in [
        (
            "in-process call alice.ping",
            &ping as &dyn Fn() -> Invocation,
        ),
        ("in-process script `1`", &script),
    ] {
        let samples = tokio.block_on(async {
            let mut samples = Vec::with_capacity(SAMPLES);
            for i in 0..WARMUP + SAMPLES {
                let t = Instant::now();
                let result = worker.invoke("alice", "alice", make()).await;
                if i >= WARMUP {
                    samples.push(t.elapsed());
                }
                assert!(result.is_ok(), "{result:?}");
            }
            samples
        });
        report(name, samples, &mut results);
    }

    let listener = tokio.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio.spawn(peerhost::server::serve(listener, worker.clone(), async {
        let _ = stopped.await;
    }));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{addr}/v1/peers/alice/call/ping");
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..WARMUP + SAMPLES {
        let t = Instant::now();
        let mut response = agent
            .post(&url)
            .header("peerhost-caller", "alice")
            .send("[]")?;
        let body = response.body_mut().read_to_string()?;
        if i >= WARMUP {
            samples.push(t.elapsed());
        }
        assert_eq!(body, "\"pong\"");
    }
    report("HTTP call alice.ping (1 connection)", samples, &mut results);
    let _ = stop.send(());
    let _ = tokio.block_on(server);
    println!("{}", json!({ "bench": "invoke", "results": results }));
    Ok(())
}
