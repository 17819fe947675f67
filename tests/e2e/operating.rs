//! Operating a worker: JSON log lines carrying their invocation's id, and
//! `GET /metrics` counting exactly what a scripted load did.

use crate::support::{Demo, Server, agent, sign};
use peerhost::Invocation;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The JSON log lines of `server` once `marks` all appear (at most 10 s).
fn log_with(server: &Server, marks: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.log();
        if marks.iter().all(|mark| log.contains(mark)) || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn with_json_logs_every_line_parses_and_one_invocations_lines_share_its_id() {
    let demo = Demo::new();
    let server = Server::start_with(
        &demo.dir(),
        0,
        &["--log-format", "json"],
        &[("PEERHOST_LOG", "info,peerhost::decision=debug")],
    );
    // Two invocations at once, each logging twice around a decision.
    let script = |mark: &str| {
        format!(
            r#"log::info("{mark}-first"); kv::set("private/{mark}", 1); log::info("{mark}-second"); 1"#
        )
    };
    let (a, b) = (script("mark-a"), script("mark-b"));
    std::thread::scope(|scope| {
        let one = scope.spawn(|| server.eval("bob", Some("bob"), &a));
        let two = scope.spawn(|| server.eval("bob", Some("bob"), &b));
        for answer in [one.join(), two.join()] {
            let (status, body) = answer.expect("thread");
            assert_eq!(status, 200, "{body}");
        }
    });
    let marks = ["mark-a-second", "mark-b-second"];
    let log = log_with(&server, &marks);
    let lines: Vec<Value> = log
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect();
    // The invocation id of the lines whose message has `mark`.
    let ids_of = |mark: &str| -> BTreeSet<String> {
        lines
            .iter()
            .filter(|line| {
                line["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(mark))
            })
            .map(|line| {
                line["span"]["invocation"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a line with no invocation id: {line}"))
                    .to_owned()
            })
            .collect()
    };
    let (ids_a, ids_b) = (ids_of("mark-a-"), ids_of("mark-b-"));
    assert_eq!(ids_a.len(), 1, "both of a's lines carry one id: {log}");
    assert_eq!(ids_b.len(), 1, "both of b's lines carry one id: {log}");
    assert_ne!(ids_a, ids_b, "two invocations, two ids");
    let id_a = ids_a.first().expect("an id");
    assert_eq!(id_a.len(), 16, "{id_a}");
    // The decisions of a's invocation (its kv.set, its log.write) carry a's
    // id too, and say which peer.
    let decisions_of_a: Vec<&Value> = lines
        .iter()
        .filter(|line| line["span"]["invocation"].as_str() == Some(id_a.as_str()))
        .filter(|line| line["target"] == "peerhost::decision")
        .collect();
    assert!(
        decisions_of_a
            .iter()
            .any(|line| line["fields"]["action"] == "kv.set"),
        "{log}"
    );
    assert!(
        decisions_of_a
            .iter()
            .all(|line| line["span"]["peer"] == "bob" && line["span"]["caller"] == "bob"),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "no colour codes in a file: {log}");
}

/// One answer of the server: status and the body as sent.
struct Answer {
    status: u16,
    body: String,
}

/// POSTs `body` to `path`, counting what went each way.
fn post(server: &Server, path: &str, body: &str, sent: &mut u64, received: &mut u64) -> Answer {
    let mut response = agent()
        .post(&format!("{}{path}", server.url))
        .header("content-type", "application/json")
        .send(body)
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = response.status().as_u16();
    let body_out = response.body_mut().read_to_string().expect("body");
    *sent += body.len() as u64;
    *received += body_out.len() as u64;
    Answer {
        status,
        body: body_out,
    }
}

/// The samples of an exposition: metric name and sorted labels → value.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

/// `/metrics` of `server`, parsed by a Prometheus text parser.
fn scrape(server: &Server) -> (Samples, String) {
    let mut response = agent()
        .get(&format!("{}/metrics", server.url))
        .call()
        .expect("GET /metrics");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.body_mut().read_to_string().expect("body");
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("not the Prometheus text format ({e}):\n{text}"));
    let mut samples = Samples::new();
    for sample in parsed.samples {
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            // Histograms: their count, under the family's name.
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.last().map_or(0.0, |bucket| bucket.count)
            }
            prometheus_parse::Value::Summary(_) => continue,
        };
        let mut labels: Vec<(String, String)> = sample
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        samples.insert((sample.metric, labels), value);
    }
    (samples, text)
}

/// The value of `metric` with exactly `labels`, 0 when absent.
fn value(samples: &Samples, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    samples
        .get(&(metric.to_owned(), labels))
        .copied()
        .unwrap_or(0.0)
}

#[test]
fn metrics_count_exactly_what_a_scripted_load_did() {
    let demo = Demo::new();
    let dir = demo.dir();
    // bob is named in labels, alice is `other`; alice has 6 invocations a
    // second at bob.
    let config = dir.join("peerhost.toml");
    let toml = std::fs::read_to_string(&config).expect("peerhost.toml");
    // Scripts may run as many operations as there are: a `loop {}` runs to
    // its wall time.
    let toml = toml.replace("operations = 50000000", "operations = 10000000000");
    let mut toml = toml;
    toml.push_str("\n[metrics]\npeers = [\"bob\"]\n");
    std::fs::write(&config, toml).expect("peerhost.toml");
    let bob_toml = dir.join("peers/bob/peer.toml");
    let mut toml = std::fs::read_to_string(&bob_toml).expect("peer.toml");
    toml.push_str("\n[quotas.callers.alice]\ninvocations_per_second = 6\n");
    std::fs::write(&bob_toml, toml).expect("peer.toml");
    let server = demo.serve(&[]);
    let (before, _) = scrape(&server);
    assert_eq!(value(&before, "peerhost_instance_slots", &[]), 1000.0);

    let (mut sent, mut received) = (0u64, 0u64);
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut send = |path: &str, body: String| {
        let answer = post(&server, path, &body, &mut sent, &mut received);
        *statuses.entry(answer.status).or_default() += 1;
        answer
    };
    let envelope = |caller: &str, target: &str, invocation: &Invocation| {
        serde_json::to_string(&sign(&dir, caller, target, invocation)).expect("JSON")
    };
    let script = |text: &str| Invocation::Script {
        script: text.to_owned(),
        params: Value::Null,
    };
    // bob publishes (his own script: 2 ok).
    for value in ["one", "two"] {
        let body = envelope(
            "bob",
            "bob",
            &script(&format!(r#"kv::set("public/{value}", "{value}")"#)),
        );
        let answer = send("/v1/envelopes", body);
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    // Anonymous: an eval and a call refused at the door (2 denied).
    let answer = send("/v1/peers/bob/eval", r#"{"script": "1"}"#.to_owned());
    assert_eq!(answer.status, 403, "{}", answer.body);
    let answer = send("/v1/peers/bob/call/get_public", r#"["one"]"#.to_owned());
    assert_eq!(answer.status, 403, "{}", answer.body);
    // alice calls get_public (1 ok), reads a public key (1 ok) and tries
    // a private one (1 denied inside the script).
    let body = envelope(
        "alice",
        "bob",
        &Invocation::Call {
            function: "get_public".into(),
            args: serde_json::json!(["one"]),
        },
    );
    let answer = send("/v1/envelopes", body);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = send(
        "/v1/envelopes",
        envelope("alice", "bob", &script(r#"kv::get("public/two")"#)),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = send(
        "/v1/envelopes",
        envelope("alice", "bob", &script(r#"kv::get("private/x")"#)),
    );
    assert_eq!(answer.status, 403, "{}", answer.body);
    // alice's `loop {}` is stopped at its wall time (1 limit, 1 epoch
    // interruption).
    let answer = send(
        "/v1/envelopes",
        envelope("alice", "bob", &script("loop {}")),
    );
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert!(answer.body.contains("wall-time"), "{}", answer.body);
    // alice until her quota refuses one (1 quota), at most 20 tries.
    let mut quick_ok = 0;
    let mut refused = false;
    for _ in 0..20 {
        let answer = send("/v1/envelopes", envelope("alice", "bob", &script("1")));
        match answer.status {
            200 => quick_ok += 1,
            429 => {
                refused = true;
                break;
            }
            other => panic!("{other}: {}", answer.body),
        }
    }
    assert!(refused, "alice's quota never refused her");
    // A replayed envelope is refused before anything runs (not an
    // invocation; an `envelope` decision).
    let replayed = envelope("alice", "bob", &script("1"));
    let first = send("/v1/envelopes", replayed.clone());
    let second = send("/v1/envelopes", replayed);
    assert!(first.status == 200 || first.status == 429, "{}", first.body);
    let first_ok = u64::from(first.status == 200);
    let first_quota = u64::from(first.status == 429);
    assert_eq!(second.status, 400, "{}", second.body);

    // Storage sizes are measured at most once a second (the `loop {}`
    // alone took that long since the first scrape).
    let (after, text) = scrape(&server);
    let invocations = |peer, kind, outcome| {
        value(
            &after,
            "peerhost_invocations_total",
            &[("peer", peer), ("kind", kind), ("outcome", outcome)],
        )
    };
    assert_eq!(
        invocations("bob", "script", "ok"),
        (2 + 1 + quick_ok + first_ok) as f64,
        "{text}"
    );
    assert_eq!(invocations("bob", "call", "ok"), 1.0, "{text}");
    assert_eq!(invocations("bob", "script", "denied"), 2.0, "{text}");
    assert_eq!(invocations("bob", "call", "denied"), 1.0, "{text}");
    assert_eq!(invocations("bob", "script", "limit"), 1.0, "{text}");
    assert_eq!(
        invocations("bob", "script", "quota"),
        (1 + first_quota) as f64,
        "{text}"
    );
    assert_eq!(
        value(
            &after,
            "peerhost_invocation_seconds_count",
            &[("peer", "bob"), ("kind", "script")]
        ),
        (8 + quick_ok) as f64,
        "{text}"
    );
    assert_eq!(
        value(&after, "peerhost_quota_refusals_total", &[("peer", "bob")]),
        (1 + first_quota) as f64,
        "{text}"
    );
    assert_eq!(
        value(
            &after,
            "peerhost_epoch_interruptions_total",
            &[("peer", "bob")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(&after, "peerhost_instances_in_use", &[]),
        0.0,
        "{text}"
    );
    // Decisions: exactly the audit log's lines, by action and effect.
    let audit = std::fs::read_to_string(dir.join("peers/bob/audit/audit.jsonl")).expect("audit");
    let mut audited: BTreeMap<(String, &str), f64> = BTreeMap::new();
    for line in audit.lines() {
        let record: Value = serde_json::from_str(line).expect("audit line");
        let effect = if record["decision"] == "allow" {
            "allow"
        } else {
            "deny"
        };
        let action = record["action"].as_str().expect("action").to_owned();
        *audited.entry((action, effect)).or_default() += 1.0;
    }
    let counted: BTreeMap<(String, &str), f64> = after
        .iter()
        .filter(|((metric, _), _)| metric == "peerhost_decisions_total")
        .map(|((_, labels), value)| {
            let label = |name: &str| {
                labels
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            assert_eq!(label("peer"), "bob", "{text}");
            let effect = if label("effect") == "allow" {
                "allow"
            } else {
                "deny"
            };
            ((label("action"), effect), *value)
        })
        .collect();
    assert_eq!(counted, audited, "{text}");
    assert_eq!(
        counted.get(&("quota".to_owned(), "deny")),
        Some(&((1 + first_quota) as f64))
    );
    assert_eq!(counted.get(&("envelope".to_owned(), "deny")), Some(&1.0));
    // HTTP: every answer by status, and the bytes of every body each way
    // (the first scrape's answer included, not this one's).
    for (status, count) in &statuses {
        let status = status.to_string();
        assert_eq!(
            value(
                &after,
                "peerhost_http_requests_total",
                &[("status", &status)]
            ),
            *count as f64 + if status == "200" { 1.0 } else { 0.0 },
            "{status}: {text}"
        );
    }
    assert_eq!(
        value(&after, "peerhost_http_received_bytes_total", &[]),
        sent as f64,
        "{text}"
    );
    let first_scrape_bytes = value(&after, "peerhost_http_sent_bytes_total", &[]) - received as f64;
    assert!(
        first_scrape_bytes > 1000.0,
        "the sent bytes are the answers' plus the first scrape's: {text}"
    );
    assert!(
        value(&after, "peerhost_http_connections_total", &[]) >= 1.0,
        "{text}"
    );
    // Storage: bob's kv bytes as `peer stats` counts them.
    let kv_bytes = value(
        &after,
        "peerhost_storage_bytes",
        &[("peer", "bob"), ("store", "kv"), ("backend", "sqlite")],
    );
    let stats = crate::support::peerhost()
        .args(["peer", "stats", "--dir"])
        .arg(&dir)
        .args(["bob", "--json"])
        .output()
        .expect("peer stats");
    let stats: Value = serde_json::from_slice(&stats.stdout).expect("peer stats --json");
    let stored: u64 = stats
        .as_object()
        .expect("callers")
        .values()
        .filter_map(|caller| caller["kv_bytes"].as_u64())
        .sum();
    assert!(stored > 0, "{stats}");
    assert_eq!(kv_bytes, stored as f64, "{stats}\n{text}");
    // No per-caller or per-stranger series, and alice (unlisted) is `other`.
    assert!(
        !text.contains("alice") && !text.contains("did:key"),
        "{text}"
    );
}

#[test]
fn metrics_are_served_in_openmetrics_when_asked_and_on_their_own_address() {
    let demo = Demo::new();
    let dir = demo.dir();
    let port = crate::support::free_port();
    let config = dir.join("peerhost.toml");
    let mut toml = std::fs::read_to_string(&config).expect("peerhost.toml");
    toml.push_str(&format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    std::fs::write(&config, toml).expect("peerhost.toml");
    let server = demo.serve(&[]);
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    assert!(server.banner.contains(&metrics_url), "{}", server.banner);
    // Not on the API's address any more.
    let response = agent()
        .get(&format!("{}/metrics", server.url))
        .call()
        .expect("GET");
    assert_eq!(response.status().as_u16(), 404);
    let (status, body) = server.eval("bob", Some("bob"), "1");
    assert_eq!(status, 200, "{body}");
    let mut response = agent()
        .get(&metrics_url)
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .call()
        .expect("GET /metrics");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.body_mut().read_to_string().expect("body");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE peerhost_invocations counter\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "peerhost_invocations_total{peer=\"other\",kind=\"script\",outcome=\"ok\"} 1\n"
        ),
        "{text}"
    );
}

/// The trace ids of `peer`'s audit lines recording `action` at `depth`.
fn traces_of(dir: &std::path::Path, peer: &str, action: &str, depth: u64) -> BTreeSet<String> {
    crate::delegation::audit(dir, peer)
        .iter()
        .filter(|line| line["action"] == action && line["depth"] == depth)
        .map(|line| {
            line["trace"]
                .as_str()
                .unwrap_or_else(|| panic!("an audit line with no trace: {line}"))
                .to_owned()
        })
        .collect()
}

/// Points `peer`'s contact `other` at the worker on loopback `port`.
fn retarget(dir: &std::path::Path, peer: &str, other: &str, port: u16) {
    let path = dir.join("peers").join(peer).join("contacts.toml");
    let text = std::fs::read_to_string(&path).expect("contacts");
    let id = crate::support::peer_id(dir, other);
    let start = text.find(&format!("[{other}]")).expect("the contact");
    let mut entry_end = text[start..]
        .find("\n\n")
        .map_or(text.len(), |end| start + end);
    if entry_end < text.len() {
        entry_end += 1;
    }
    let entry = format!("[{other}]\nid = \"{id}\"\nurl = \"http://127.0.0.1:{port}\"\n");
    let text = format!("{}{entry}{}", &text[..start], &text[entry_end..]);
    std::fs::write(&path, text).expect("contacts");
}

/// alice's call of `target`'s `function` (no arguments), sealed as part
/// of the trace of `traceparent`.
fn traced_call(
    dir: &std::path::Path,
    target: &str,
    function: &str,
    traceparent: &str,
) -> (peerhost::trace::TraceContext, peerhost::Envelope) {
    let trace = peerhost::trace::TraceContext::parse(traceparent).expect("traceparent");
    let envelope = peerhost::Envelope::seal_traced(
        &crate::support::key(dir, "alice"),
        crate::support::peer_id(dir, target),
        &Invocation::Call {
            function: function.into(),
            args: serde_json::json!([]),
        },
        0,
        Some(&trace),
        std::time::SystemTime::now(),
    )
    .expect("seal");
    (trace, envelope)
}

#[test]
fn a_chain_across_two_workers_is_one_trace_in_every_audit_log() {
    let demo = Demo::new();
    crate::delegation::chain_fixture(&demo);
    let dir = demo.dir();
    let (pa, pb) = (crate::support::free_port(), crate::support::free_port());
    // alice.via_bob → bob.relay → carol.ping: alice and carol on one
    // worker, bob on the other, so the chain crosses twice.
    let append = |path: &str, text: &str| {
        let path = dir.join(path);
        let mut old = std::fs::read_to_string(&path).expect("read");
        old.push_str(text);
        std::fs::write(&path, old).expect("write");
    };
    append(
        "peers/alice/logic/main.rhai",
        "\nfn via_bob() { peers::invoke(\"bob\", \"relay\") }\n",
    );
    retarget(&dir, "alice", "bob", pb);
    retarget(&dir, "bob", "carol", pa);
    let a = Server::start_at(&dir, pa, &["--peer", "alice", "--peer", "carol"]);
    let b = Server::start_at(&dir, pb, &["--peer", "bob"]);

    // A chain started at alice's worker: a trace of its own.
    let (status, body) = a.call("alice", "via_bob", Some("alice"), "[]");
    assert_eq!((status, &body), (200, &serde_json::json!("pong")), "{body}");
    // A chain whose envelope names the trace it is part of.
    let (trace, envelope) = traced_call(
        &dir,
        "alice",
        "via_bob",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    let (status, body) = a.send(&envelope);
    assert_eq!(status, 200, "{body}");

    let given = trace.trace_hex();
    let at_alice = traces_of(&dir, "alice", "call", 0);
    let at_bob = traces_of(&dir, "bob", "call", 1);
    let at_carol = traces_of(&dir, "carol", "call", 2);
    assert_eq!(at_alice.len(), 2, "two chains, two traces: {at_alice:?}");
    assert!(at_alice.contains(&given), "{at_alice:?}");
    assert_eq!(at_alice, at_bob, "bob's worker saw the same traces");
    assert_eq!(at_alice, at_carol, "so did carol, back at the first worker");
    for id in &at_alice {
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    }
    // Each worker sent two envelopes over HTTP, one per chain, and counted
    // their round trips.
    for (worker, name) in [(&a, "alice and carol's"), (&b, "bob's")] {
        let (samples, text) = scrape(worker);
        assert_eq!(
            value(
                &samples,
                "peerhost_transport_round_trips_total",
                &[("transport", "http"), ("outcome", "ok")]
            ),
            2.0,
            "{name} worker: {text}"
        );
        assert_eq!(
            value(
                &samples,
                "peerhost_transport_round_trip_seconds_count",
                &[("transport", "http")]
            ),
            2.0,
            "{name} worker: {text}"
        );
    }
    // bob's own decision to delegate on is in the trace too.
    assert!(
        traces_of(&dir, "bob", "peers.call", 1).contains(&given),
        "{:?}",
        crate::delegation::audit(&dir, "bob")
    );
    // An unsigned request joins the trace of its `traceparent` header; a
    // malformed one is ignored and the invocation starts its own.
    let post = |traceparent: &str| {
        agent()
            .post(&format!("{}/v1/peers/bob/eval", b.url))
            .header("traceparent", traceparent)
            .send(r#"{"script": "1"}"#)
            .expect("POST")
            .status()
            .as_u16()
    };
    let header_trace = "0af7651916cd43dd8448eb211c80319c";
    assert_eq!(post(&format!("00-{header_trace}-b7ad6b7169203331-01")), 403);
    assert_eq!(post("00-not-a-trace"), 403);
    let refused = traces_of(&dir, "bob", "script.accept", 0);
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused.contains(header_trace), "{refused:?}");
}

/// An OTLP/HTTP collector on loopback for one test: keeps the JSON body of
/// every `POST /v1/traces`, answers 200; stops when dropped.
struct Collector {
    url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Collector {
    fn start() -> Collector {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (kept, stopping) = (bodies.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let kept = kept.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut writer = stream.try_clone().expect("clone");
                    let mut reader = BufReader::new(stream);
                    // One request after another on the connection.
                    for _ in 0..1000 {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut length = 0usize;
                        loop {
                            let mut header = String::new();
                            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                                return;
                            }
                            let header = header.trim_end();
                            if header.is_empty() {
                                break;
                            }
                            if let Some((name, value)) = header.split_once(':')
                                && name.eq_ignore_ascii_case("content-length")
                            {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0u8; length.min(16 << 20)];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        if line.starts_with("POST /v1/traces")
                            && let Ok(json) = serde_json::from_slice::<Value>(&body)
                        {
                            kept.lock().expect("lock").push(json);
                        }
                        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                        if writer.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Collector { url, bodies, stop }
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Value> {
        let bodies = self.bodies.lock().expect("lock");
        bodies
            .iter()
            .flat_map(|body| {
                body["resourceSpans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .flat_map(|resource| {
                resource["scopeSpans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .flat_map(|scope| scope["spans"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The string value of attribute `key` of an OTLP/JSON span.
fn attribute(span: &Value, key: &str) -> Value {
    span["attributes"]
        .as_array()
        .and_then(|attributes| attributes.iter().find(|a| a["key"] == key))
        .map(|a| {
            let value = &a["value"];
            value
                .get("stringValue")
                .or_else(|| value.get("intValue"))
                .cloned()
                .unwrap_or(Value::Null)
        })
        .unwrap_or(Value::Null)
}

#[test]
fn with_an_otlp_endpoint_a_chain_across_two_workers_is_exported_as_one_trace_of_nested_spans() {
    let demo = Demo::new();
    crate::delegation::chain_fixture(&demo);
    let dir = demo.dir();
    let collector = Collector::start();
    let config = dir.join("peerhost.toml");
    let mut toml = std::fs::read_to_string(&config).expect("peerhost.toml");
    toml.push_str(&format!("\n[traces]\nendpoint = \"{}\"\n", collector.url));
    std::fs::write(&config, toml).expect("peerhost.toml");
    let (pa, pb) = (crate::support::free_port(), crate::support::free_port());
    // bob's relay reaches carol on the first worker: bob's worker sends
    // carol an envelope, and carol's span is bob's child.
    retarget(&dir, "bob", "carol", pa);
    let a = Server::start_at(&dir, pa, &["--peer", "alice", "--peer", "carol"]);
    let b = Server::start_at(&dir, pb, &["--peer", "bob"]);
    let (trace, envelope) = traced_call(
        &dir,
        "bob",
        "relay",
        "00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-01",
    );
    let (status, body) = b.send(&envelope);
    assert_eq!((status, &body), (200, &serde_json::json!("pong")), "{body}");
    // Both workers export within a few seconds.
    let given = trace.trace_hex();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ours = loop {
        let ours: Vec<Value> = collector
            .spans()
            .into_iter()
            .filter(|span| span["traceId"] == given.as_str())
            .collect();
        if ours.len() >= 2 || Instant::now() > deadline {
            break ours;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let at = |peer: &str| {
        ours.iter()
            .find(|span| attribute(span, "peerhost.peer") == peer)
            .unwrap_or_else(|| panic!("no span of {peer}: {ours:#?}"))
            .clone()
    };
    let (bob, carol) = (at("bob"), at("carol"));
    assert_eq!(ours.len(), 2, "{ours:#?}");
    // bob's span is the child of the sender's; carol's of bob's.
    assert_eq!(bob["parentSpanId"], trace.span_hex().as_str(), "{bob:#}");
    assert_eq!(carol["parentSpanId"], bob["spanId"], "{carol:#}");
    assert_eq!(attribute(&bob, "peerhost.caller"), "alice");
    assert_eq!(attribute(&carol, "peerhost.caller"), "bob");
    assert_eq!(attribute(&carol, "peerhost.kind"), "call");
    assert_eq!(attribute(&carol, "peerhost.outcome"), "ok");
    // The spans' ids are the audit lines' trace.
    assert!(traces_of(&dir, "carol", "call", 1).contains(&given));
    drop((a, b));
}
