//! Workers in a NATS cluster: peers reached by id alone, envelopes and
//! answers bigger than a NATS message, a node of three lost.

use crate::delegation::{audit, chain_fixture, sha256_hex};
use crate::nats::NatsCluster;
use crate::support::{Demo, Server, kind, peer_id, peerhost, sign, text};
use peerhost::Invocation;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// Drops every `url = …` of every peer's contacts.toml: ids only.
fn ids_only(dir: &Path) {
    for entry in std::fs::read_dir(dir.join("peers")).expect("peers/") {
        let path = entry.expect("entry").path().join("contacts.toml");
        let Ok(contacts) = std::fs::read_to_string(&path) else {
            continue;
        };
        let kept: String = contacts
            .lines()
            .filter(|line| !line.trim_start().starts_with("url"))
            .map(|line| format!("{line}\n"))
            .collect();
        std::fs::write(&path, kept).expect("contacts");
    }
}

/// Gives the deployment at `dir` a `[cluster]` keeping `replicas` copies of
/// its shared state (the servers come from `--nats`).
fn replicas(dir: &Path, replicas: u8) {
    let config = dir.join("peerhost.toml");
    let mut worker = std::fs::read_to_string(&config).expect("peerhost.toml");
    worker.push_str(&format!(
        "\n[cluster]\nservers = [\"nats://127.0.0.1:4222\"]\nreplicas = {replicas}\n"
    ));
    std::fs::write(&config, worker).expect("peerhost.toml");
}

/// A copy of the deployment at `dir` (same keys, same peers): another
/// machine's, sharing nothing on disk with the first.
fn copy_of(dir: &Path, into: &Path) -> std::path::PathBuf {
    let copy = into.join("copy");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(dir)
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(status.success());
    copy
}

fn append(path: &Path, text: &str) {
    let mut all = std::fs::read_to_string(path).expect("read");
    all.push_str(text);
    std::fs::write(path, all).expect("write");
}

fn script(text: &str) -> Invocation {
    Invocation::Script {
        script: text.to_owned(),
        params: Value::Null,
    }
}

/// An audit log with what differs between runs (the time, and the chain
/// that hashes it) left out.
pub(crate) fn normalised(dir: &Path, peer: &str) -> Vec<Value> {
    audit(dir, peer)
        .into_iter()
        .map(|mut line| {
            line["time"] = Value::Null;
            line["prev"] = Value::Null;
            // Each run is a trace of its own.
            line["trace"] = Value::Null;
            line
        })
        .collect()
}

fn clear_audit(dir: &Path, peers: &[&str]) {
    for peer in peers {
        let _ = std::fs::remove_file(dir.join("peers").join(peer).join("audit/audit.jsonl"));
    }
}

/// alice, bob and carol each on a worker of their own, their contacts
/// holding ids only: scripts, calls, chains through two and three workers
/// and the depth limit answer as in one worker, with the same audit lines.
#[test]
fn workers_in_a_cluster_reach_peers_by_id_alone_like_one_worker() {
    let Some(cluster) = NatsCluster::start(3, None) else {
        return;
    };
    let demo = Demo::new();
    chain_fixture(&demo);
    let dir = demo.dir();
    ids_only(&dir);
    let run = |alice: &Server, bob: &Server| -> Vec<(u16, Value)> {
        vec![
            bob.send(&sign(
                &dir,
                "alice",
                "bob",
                &script("kv::get(\"public/motd\")"),
            )),
            bob.send(&sign(
                &dir,
                "alice",
                "bob",
                &script("kv::get(\"private/diary\")"),
            )),
            alice.call("alice", "ask_bob", Some("alice"), "[]"),
            bob.call("bob", "relay", Some("alice"), "[]"),
            alice.call("alice", "bounce", Some("alice"), "[]"),
            alice.eval(
                "alice",
                Some("alice"),
                "peers::send(\"bob\", \"kv::get(`public/motd`)\")",
            ),
        ]
    };
    let peers = ["alice", "bob", "carol"];

    let shared = demo.serve(&[]);
    let one = run(&shared, &shared);
    drop(shared);
    let one_audit: Vec<_> = peers.iter().map(|p| normalised(&dir, p)).collect();
    clear_audit(&dir, &peers);

    // Each worker talks to a different node of the cluster.
    let node = |i: usize| cluster.nodes[i].url.clone();
    let alice = Server::start(&dir, &["--peer", "alice", "--nats", &node(0)]);
    let bob = Server::start(&dir, &["--peer", "bob", "--nats", &node(1)]);
    let carol = Server::start(&dir, &["--peer", "carol", "--nats", &node(2)]);
    assert!(
        bob.banner.contains("in the NATS cluster of"),
        "{}",
        bob.banner
    );
    let two = run(&alice, &bob);
    assert_eq!(one, two, "results differ between one worker and three");
    assert_eq!(one[0], (200, json!("Hello from bob")));
    assert_eq!(one[1].0, 403);
    assert_eq!(one[2], (200, json!("pong")));
    assert_eq!(one[3], (200, json!("pong")));
    assert_eq!(one[4].0, 413, "{:?}", one[4]);
    assert_eq!(one[5], (200, json!("Hello from bob")));
    let three_audit: Vec<_> = peers.iter().map(|p| normalised(&dir, p)).collect();
    assert_eq!(
        one_audit, three_audit,
        "audit lines differ between one worker and three"
    );
    let bob_lines = normalised(&dir, "bob");
    assert!(
        bob_lines
            .iter()
            .any(|l| l["script"] == sha256_hex("kv::get(`public/motd`)")
                && l["action"] == "kv.get"
                && l["decision"] == "allow"),
        "{bob_lines:?}"
    );
    drop(carol);
    // carol's worker is gone and her contact has no URL: a typed not-found
    // that says so, after a short wait for a worker to subscribe.
    let (status, body) = bob.call("bob", "relay", Some("alice"), "[]");
    assert_eq!((status, kind(&body)), (404, "not-found"), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no worker of the cluster hosts it") && message.contains("has no `url`"),
        "{message}"
    );
    drop((alice, bob));
}

/// With the servers' `max_payload` at 16 KiB, an envelope of 600 KB and an
/// answer of 300 KB travel in parts, whole.
#[test]
fn envelopes_and_answers_bigger_than_a_nats_message_travel_in_parts() {
    let Some(cluster) = NatsCluster::start(1, Some(16 * 1024)) else {
        return;
    };
    let demo = Demo::new();
    let dir = demo.dir();
    ids_only(&dir);
    let urls = cluster.urls();
    let alice = Server::start(&dir, &["--peer", "alice", "--nats", &urls]);
    let bob = Server::start(&dir, &["--peer", "bob", "--nats", &urls]);
    // A script of 600 KB (a comment), answering 300 KB of text: sent by
    // alice's worker to bob's through the cluster.
    let filler = "x".repeat(600_000);
    let big = format!(
        "// {filler}\nlet s = \"ab\"; while s.len() < 300000 {{ s += s; }} s.sub_string(0, 300000)"
    );
    let at_alice = "let r = peers::send(\"bob\", params.script); [r.len(), r.sub_string(0, 4)]";
    let envelope = crate::support::sign_with_params(
        &dir,
        "alice",
        "alice",
        at_alice,
        json!({ "script": big }),
    );
    let (status, body) = alice.send(&envelope);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!([300_000, "abab"]));
    // bob's audit names the whole script's hash: all of it arrived.
    let bob_lines = audit(&dir, "bob");
    assert!(
        bob_lines
            .iter()
            .any(|l| l["script"] == sha256_hex(&big) && l["action"] == "script.accept"),
        "{:?}",
        bob_lines.last()
    );
    drop((alice, bob));
}

/// Three nodes; alice's worker and bob's are given only the first, which
/// is killed: they move to the nodes they learnt of, and calls go on.
#[test]
fn a_cluster_of_three_losing_a_node_goes_on() {
    let Some(mut cluster) = NatsCluster::start(3, None) else {
        return;
    };
    let demo = Demo::new();
    chain_fixture(&demo);
    let dir = demo.dir();
    ids_only(&dir);
    // Three copies of the shared state: the nonces outlive the node.
    replicas(&dir, 3);
    // Both are given the node that dies, and learn the others from it.
    let first = cluster.nodes[0].url.clone();
    let alice = Server::start(&dir, &["--peer", "alice", "--nats", &first]);
    let bob = Server::start(&dir, &["--peer", "bob", "--nats", &first]);
    let ask = || alice.call("alice", "ask_bob", Some("alice"), "[]");
    assert_eq!(ask(), (200, json!("pong")));
    cluster.kill(0);
    let killed = Instant::now();
    // Calls in the first moments may fail (typed); then 20 in a row pass.
    let mut in_a_row = 0;
    let mut failures = Vec::new();
    while in_a_row < 20 {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "calls did not resume after a node was lost: {failures:?}"
        );
        let (status, body) = ask();
        if status == 200 {
            assert_eq!(body, json!("pong"));
            in_a_row += 1;
        } else {
            assert!(
                ["failed", "not-found", "limit"].contains(&kind(&body)),
                "an untyped error: {body}"
            );
            failures.push(body);
            in_a_row = 0;
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!(
        "a node lost: {} call(s) failed, resumed within {:.1?}",
        failures.len(),
        killed.elapsed()
    );
    drop((alice, bob));
}

/// `peer show` says how each contact is reached, in the order tried.
#[test]
fn peer_show_says_how_each_contact_is_reached() {
    let demo = Demo::new();
    let dir = demo.dir();
    let show = || {
        let out = peerhost()
            .args(["peer", "show", "--dir"])
            .arg(&dir)
            .arg("alice")
            .output()
            .expect("peer show");
        assert!(out.status.success(), "{:?}", text(&out));
        text(&out).0
    };
    let bob = peer_id(&dir, "bob");
    let shown = show();
    assert!(
        shown.contains(&format!(
            "bob {bob} http://127.0.0.1:7070 (reached by in-process where one worker serves both, then http://127.0.0.1:7070)"
        )),
        "{shown}"
    );
    // A stranger known by id only, and a [cluster].
    let stranger = peerhost::PeerKey::generate().expect("randomness").id();
    let contacts = dir.join("peers/alice/contacts.toml");
    let mut text_contacts = std::fs::read_to_string(&contacts).expect("contacts");
    text_contacts.push_str(&format!("\n[carol]\nid = \"{stranger}\"\n"));
    std::fs::write(&contacts, text_contacts).expect("contacts");
    assert!(
        show().contains(&format!(
            "carol {stranger} (unreachable: not in this deployment, no [cluster]"
        )),
        "{}",
        show()
    );
    let config = dir.join("peerhost.toml");
    let mut worker = std::fs::read_to_string(&config).expect("peerhost.toml");
    worker.push_str("\n[cluster]\nservers = [\"nats://127.0.0.1:4222\"]\n");
    std::fs::write(&config, &worker).expect("peerhost.toml");
    assert!(
        show().contains(&format!(
            "carol {stranger} (reached by the cluster ([cluster] of peerhost.toml))"
        )),
        "{}",
        show()
    );
    // A bad [cluster] is refused with the file and the line.
    std::fs::write(
        &config,
        worker.replace("nats://127.0.0.1:4222", "http://127.0.0.1:4222"),
    )
    .expect("peerhost.toml");
    let out = peerhost()
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&dir)
        .output()
        .expect("serve");
    assert!(!out.status.success());
    let stderr = text(&out).1;
    assert!(
        stderr.contains("peerhost.toml:") && stderr.contains("not a nats:// or tls:// URL"),
        "{stderr}"
    );
}

/// A worker whose cluster cannot be reached says so and does not serve.
#[test]
fn a_worker_whose_cluster_is_down_says_so_and_exits() {
    let demo = Demo::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a port");
    let out = peerhost()
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(demo.dir())
        .args(["--nats", &format!("nats://127.0.0.1:{port}")])
        .output()
        .expect("serve");
    assert!(!out.status.success());
    let stderr = text(&out).1;
    assert!(
        stderr.contains("cannot connect to the NATS cluster at nats://127.0.0.1:"),
        "{stderr}"
    );
}

/// bob on two workers with nothing on disk in common (two copies of the
/// deployment): an envelope accepted at one is refused as a replay at the
/// other, and the refusal is in the second's audit log.
#[test]
fn a_replayed_envelope_is_refused_at_the_other_worker() {
    let Some(cluster) = NatsCluster::start(2, None) else {
        return;
    };
    let demo = Demo::new();
    let dir = demo.dir();
    let other = tempfile::tempdir().expect("tempdir");
    let copy = copy_of(&dir, other.path());
    let one = Server::start(&dir, &["--peer", "bob", "--nats", &cluster.nodes[0].url]);
    let two = Server::start(&copy, &["--peer", "bob", "--nats", &cluster.nodes[1].url]);
    let motd = script("kv::get(\"public/motd\")");
    let envelope = sign(&dir, "alice", "bob", &motd);
    assert_eq!(one.send(&envelope), (200, json!("Hello from bob")));
    let (status, body) = two.send(&envelope);
    assert_eq!((status, kind(&body)), (400, "invalid"), "{body}");
    assert!(body.to_string().contains("replay refused"), "{body}");
    // A new envelope is welcome at either.
    assert_eq!(
        two.send(&sign(&dir, "alice", "bob", &motd)),
        (200, json!("Hello from bob"))
    );
    let refused = audit(&copy, "bob");
    assert!(
        refused.iter().any(|l| l["decision"] == "deny"
            && l["reason"]
                .as_str()
                .is_some_and(|r| r.contains("replay refused"))),
        "{refused:?}"
    );
    drop((one, two));
}

/// bob on two workers (two copies of the deployment): his owner's policy
/// push at the first takes alice's grant away at the second within a
/// second, and a third worker started afterwards from the old copy starts
/// with the new policy.
#[test]
fn a_policy_push_at_one_worker_is_in_force_at_every_worker_of_the_peer() {
    let Some(cluster) = NatsCluster::start(2, None) else {
        return;
    };
    let demo = Demo::new();
    let dir = demo.dir();
    let other = tempfile::tempdir().expect("tempdir");
    let copy = copy_of(&dir, other.path());
    let late = tempfile::tempdir().expect("tempdir");
    let late = copy_of(&dir, late.path());
    let one = Server::start(&dir, &["--peer", "bob", "--nats", &cluster.nodes[0].url]);
    let two = Server::start(&copy, &["--peer", "bob", "--nats", &cluster.nodes[1].url]);
    let motd = script("kv::get(\"public/motd\")");
    let ask = |server: &Server| server.send(&sign(&dir, "alice", "bob", &motd));
    assert_eq!(ask(&two), (200, json!("Hello from bob")));

    let policy = std::fs::read_to_string(dir.join("peers/bob/policy.cedar")).expect("policy");
    let (kept, _) = policy
        .split_once("@id(\"alice-reads-public\")")
        .expect("the grant to take away");
    let file = demo.tmp.path().join("revoked.cedar");
    std::fs::write(&file, kept).expect("write policy");
    let out = peerhost()
        .args(["policy", "push", "--dir"])
        .arg(&dir)
        .args(["--url", &one.url, "bob"])
        .arg(&file)
        .output()
        .expect("policy push");
    assert!(out.status.success(), "{:?}", text(&out));
    let pushed = Instant::now();
    let mut answers = Vec::new();
    loop {
        let (status, body) = ask(&two);
        if status == 403 {
            break;
        }
        answers.push((status, body));
        assert!(
            pushed.elapsed() < Duration::from_secs(1),
            "the grant still holds at the other worker 1 s after the push: {answers:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "revoked at the other worker {:.0?} after the push returned",
        pushed.elapsed()
    );
    assert_eq!(
        std::fs::read_to_string(copy.join("peers/bob/policy.cedar")).expect("policy"),
        kept
    );
    assert_eq!(ask(&one).0, 403);
    // A worker that was down during the push starts with it.
    let three = Server::start(&late, &["--peer", "bob", "--nats", &cluster.nodes[0].url]);
    let (status, body) = ask(&three);
    assert_eq!((status, kind(&body)), (403, "denied"), "{body}");
    drop((one, two, three));
}

/// bob on two workers (two copies of the deployment) over one S3 bucket,
/// alice on a third: four clients call alice, who has bob record each
/// number, while one of bob's workers is killed. Every call answered 200
/// is in bob's kv afterwards, the others got typed errors, and the calls
/// go on within 2 s.
#[test]
fn a_peer_on_two_workers_over_shared_storage_loses_one_and_nothing_acknowledged() {
    let Some(cluster) = NatsCluster::start(3, None) else {
        return;
    };
    let Some(moto) = crate::moto::Moto::start() else {
        return;
    };
    let demo = Demo::new();
    let dir = demo.dir();
    demo.set_s3("bob", &moto);
    let bob_toml = dir.join("peers/bob/peer.toml");
    let config = std::fs::read_to_string(&bob_toml).expect("peer.toml");
    std::fs::write(&bob_toml, config.replace("kv = \"sqlite\"", "kv = \"s3\"")).expect("peer.toml");
    ids_only(&dir);
    append(
        &dir.join("peers/bob/logic/main.rhai"),
        "\nfn record(i) { kv::set(`log/${i}`, i); i }\n",
    );
    append(
        &dir.join("peers/bob/policy.cedar"),
        "\n@id(\"alice-records\") permit (principal == Peer::\"alice\", action == Action::\"call\", \
         resource == Function::\"record\");\n",
    );
    append(
        &dir.join("peers/alice/logic/main.rhai"),
        "\nfn write(i) { peers::invoke(\"bob\", \"record\", [i]) }\n",
    );
    let other = tempfile::tempdir().expect("tempdir");
    let copy = copy_of(&dir, other.path());
    let alice = Server::start(&dir, &["--peer", "alice", "--nats", &cluster.nodes[0].url]);
    let first = Server::start(&dir, &["--peer", "bob", "--nats", &cluster.nodes[1].url]);
    let second = Server::start(&copy, &["--peer", "bob", "--nats", &cluster.nodes[2].url]);
    assert_eq!(
        alice.call("alice", "write", Some("alice"), "[0]"),
        (200, json!(0))
    );

    let started = Instant::now();
    let killed_at = std::sync::OnceLock::<Instant>::new();
    let outcomes = std::sync::Mutex::new(Vec::<(i64, Instant, u16, Value)>::new());
    let mut first = Some(first);
    std::thread::scope(|scope| {
        for client in 0..4i64 {
            let (alice, killed_at, outcomes) = (&alice, &killed_at, &outcomes);
            scope.spawn(move || {
                for n in 1..=400i64 {
                    let done = killed_at
                        .get()
                        .is_some_and(|k| k.elapsed() > Duration::from_secs(3));
                    if done || started.elapsed() > Duration::from_secs(40) {
                        break;
                    }
                    let i = client * 1_000 + n;
                    let (status, body) =
                        alice.call("alice", "write", Some("alice"), &format!("[{i}]"));
                    outcomes
                        .lock()
                        .expect("outcomes")
                        .push((i, Instant::now(), status, body));
                }
            });
        }
        // Kill one of bob's workers once calls flow.
        while outcomes.lock().expect("outcomes").len() < 40
            && started.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(first.take());
        let _ = killed_at.set(Instant::now());
    });
    let killed = *killed_at.get().expect("killed");
    let outcomes = outcomes.into_inner().expect("outcomes");
    let mut acked = Vec::new();
    let mut last_failure = None;
    for (i, at, status, body) in &outcomes {
        if *status == 200 {
            assert_eq!(body, &json!(i));
            acked.push(*i);
        } else {
            assert!(
                ["failed", "not-found", "limit"].contains(&kind(body)),
                "an untyped error: {status} {body}"
            );
            last_failure = Some(*at);
        }
    }
    let after: Vec<_> = outcomes
        .iter()
        .filter(|o| o.1 > killed && o.2 == 200)
        .collect();
    assert!(
        after.len() >= 20,
        "too few calls answered after the kill: {}",
        after.len()
    );
    let resumed = last_failure.map_or(Duration::ZERO, |at| at.saturating_duration_since(killed));
    assert!(
        resumed < Duration::from_secs(2),
        "calls failed until {resumed:.1?} after the kill"
    );
    eprintln!(
        "one of bob's workers killed: {} calls, {} acknowledged, {} failed (typed), last failure {resumed:.0?} after the kill",
        outcomes.len(),
        acked.len(),
        outcomes.len() - acked.len()
    );
    // Every acknowledged write is in bob's kv, read through the survivor.
    let (status, stored) = second.eval(
        "bob",
        Some("bob"),
        "let keys = []; let cursor = (); \
         loop { let page = kv::list_page(\"log/\", cursor); keys += page.keys; \
         cursor = page.cursor; if type_of(cursor) == \"()\" { break; } } keys",
    );
    assert_eq!(status, 200, "{stored}");
    let stored: std::collections::HashSet<String> = stored
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|i| !stored.contains(&format!("log/{i}")))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    drop((alice, second));
}

/// bob on two workers (two copies of the deployment), alice held to 200 ms
/// of invocation time a minute: once she has spent it at the first, the
/// second refuses her too, within a few reports, though what she spends
/// there (a few scripts `1`) is far from it.
#[test]
fn a_callers_quota_is_counted_across_the_workers_of_a_peer() {
    let Some(cluster) = NatsCluster::start(2, None) else {
        return;
    };
    let demo = Demo::new();
    let dir = demo.dir();
    append(
        &dir.join("peers/bob/peer.toml"),
        "\n[quotas.callers.alice]\ncpu_ms_per_minute = 200\n",
    );
    let other = tempfile::tempdir().expect("tempdir");
    let copy = copy_of(&dir, other.path());
    let one = Server::start(&dir, &["--peer", "bob", "--nats", &cluster.nodes[0].url]);
    let two = Server::start(&copy, &["--peer", "bob", "--nats", &cluster.nodes[1].url]);
    let busy = script("let x = 0; for i in 0..200000 { x += i; } x");
    let mut spent = 0;
    loop {
        let (status, body) = one.send(&sign(&dir, "alice", "bob", &busy));
        if status == 429 {
            break;
        }
        assert_eq!(status, 200, "{body}");
        spent += 1;
        assert!(
            spent < 200,
            "alice never ran out of time at the first worker"
        );
    }
    let tiny = script("1");
    let started = Instant::now();
    let mut admitted = 0;
    loop {
        let (status, body) = two.send(&sign(&dir, "alice", "bob", &tiny));
        if status == 429 {
            assert!(
                body.to_string()
                    .contains("of invocation time in the last minute"),
                "{body}"
            );
            break;
        }
        assert_eq!(status, 200, "{body}");
        admitted += 1;
        assert!(
            admitted < 20,
            "the second worker still admits alice {:.1?} after she spent her quota at the first",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "quota spent at one worker in {spent} scripts; refused at the other after {admitted} more, {:.0?}",
        started.elapsed()
    );
    drop((one, two));
}

/// At most once. alice's worker asks bob through the cluster and bob's
/// worker dies mid-invocation: alice's call ends at her deadline, typed. An envelope
/// POSTed to a worker that dies mid-invocation, sent again to bob's other
/// worker, is refused as a replay there: nothing runs twice.
#[test]
fn a_worker_dying_mid_invocation_leaves_a_typed_failure_and_a_retry_is_refused() {
    let Some(cluster) = NatsCluster::start(2, None) else {
        return;
    };
    let demo = Demo::new();
    let dir = demo.dir();
    let config = dir.join("peerhost.toml");
    let text = std::fs::read_to_string(&config).expect("peerhost.toml");
    assert!(text.contains("wall_time_ms = 1000"), "{text}");
    std::fs::write(
        &config,
        text.replace("wall_time_ms = 1000", "wall_time_ms = 3000"),
    )
    .expect("peerhost.toml");
    ids_only(&dir);
    append(
        &dir.join("peers/bob/logic/main.rhai"),
        "\nfn slow() { let x = 0; for i in 0..500000000 { x += i; } x }\n",
    );
    append(
        &dir.join("peers/bob/policy.cedar"),
        "\n@id(\"alice-slow\") permit (principal == Peer::\"alice\", action == Action::\"call\", \
         resource == Function::\"slow\");\n",
    );
    append(
        &dir.join("peers/alice/logic/main.rhai"),
        "\nfn ask_slow() { peers::invoke(\"bob\", \"slow\") }\n",
    );
    let other = tempfile::tempdir().expect("tempdir");
    let copy = copy_of(&dir, other.path());
    let alice = Server::start(&dir, &["--peer", "alice", "--nats", &cluster.nodes[0].url]);
    let bob = Server::start(&dir, &["--peer", "bob", "--nats", &cluster.nodes[1].url]);
    let (status, body) = std::thread::scope(|scope| {
        let call = scope.spawn(|| alice.call("alice", "ask_slow", Some("alice"), "[]"));
        std::thread::sleep(Duration::from_millis(300));
        drop(bob);
        call.join().expect("call")
    });
    // The delegation waits as long as alice's invocation may run: whichever
    // deadline is seen first, hers (`limit`) or the delegation's
    // (`failed`, "may have run"), the call ends then, typed.
    let message = body["error"]["message"].as_str().unwrap_or_default();
    match (status, kind(&body)) {
        (413, "limit") => assert!(message.contains("wall-time limit"), "{message}"),
        (500, "failed") => assert!(
            message.contains("may have run") && message.contains("refused as a replay"),
            "{message}"
        ),
        _ => panic!("an unexpected answer: {status} {body}"),
    }

    // The same envelope, once to a worker that dies, then to the other.
    let first = Server::start(&dir, &["--peer", "bob", "--nats", &cluster.nodes[1].url]);
    let second = Server::start(&copy, &["--peer", "bob", "--nats", &cluster.nodes[0].url]);
    let envelope = sign(
        &dir,
        "alice",
        "bob",
        &Invocation::Call {
            function: "slow".into(),
            args: json!([]),
        },
    );
    let url = format!("{}/v1/envelopes", first.url);
    let cut = std::thread::scope(|scope| {
        let sent = scope.spawn(|| crate::support::agent().post(&url).send_json(&envelope));
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
        sent.join().expect("send")
    });
    assert!(
        cut.is_err(),
        "the dying worker answered: {:?}",
        cut.map(|r| r.status())
    );
    let (status, body) = second.send(&envelope);
    assert_eq!((status, kind(&body)), (400, "invalid"), "{body}");
    assert!(body.to_string().contains("replay refused"), "{body}");
    let ran = audit(&copy, "bob")
        .into_iter()
        .filter(|l| l["action"] == "call" && l["decision"] == "allow")
        .count();
    assert_eq!(ran, 0, "the retried envelope ran at the other worker");
    drop(second);
}

/// What a worker takes from the pushes bucket is verified: a push signed
/// by someone other than the owner, or put under another peer's or kind's
/// key, is not put in force; the owner's own push is.
#[test]
fn a_worker_takes_only_the_owners_genuine_pushes_from_the_cluster() {
    let Some(cluster) = NatsCluster::start(1, None) else {
        return;
    };
    let demo = Demo::new();
    let dir = demo.dir();
    let bob = Server::start(&dir, &["--peer", "bob", "--nats", &cluster.nodes[0].url]);
    let diary = || {
        bob.send(&sign(
            &dir,
            "alice",
            "bob",
            &script("kv::get(\"private/diary\")"),
        ))
    };
    assert_eq!(diary().0, 403);
    let policy = std::fs::read_to_string(dir.join("peers/bob/policy.cedar")).expect("policy");
    let open = format!(
        "{policy}\n@id(\"alice-reads-all\") permit (principal == Peer::\"alice\", action == Action::\"kv.get\", resource);\n"
    );
    let push = |signer: &str| {
        peerhost::Envelope::seal(
            &crate::support::key(&dir, signer),
            peer_id(&dir, "bob"),
            &Invocation::PushPolicy { text: open.clone() },
            0,
            std::time::SystemTime::now(),
        )
        .expect("seal")
    };
    let bob_key = peer_id(&dir, "bob").to_string();
    let bob_key = bob_key.trim_start_matches("did:key:").to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let put = |key: String, envelope: &peerhost::Envelope| {
        let value = serde_json::to_vec(envelope).expect("JSON");
        runtime.block_on(async {
            let client = async_nats::connect(cluster.nodes[0].url.as_str())
                .await
                .expect("connect");
            let pushes = async_nats::jetstream::new(client)
                .get_key_value("peerhost-pushes")
                .await
                .expect("the bucket");
            pushes.put(key, value.into()).await.expect("put");
        })
    };
    // alice signs a push of bob's policy: not the owner's.
    put(format!("{bob_key}.policy"), &push("alice"));
    // bob's own, under the logic key: not a push of that kind.
    put(format!("{bob_key}.logic"), &push("bob"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        diary().0,
        403,
        "a forged or misplaced push was put in force"
    );
    // bob's own under the right key is.
    put(format!("{bob_key}.policy"), &push("bob"));
    let put_at = Instant::now();
    while diary().0 != 200 {
        assert!(
            put_at.elapsed() < Duration::from_secs(5),
            "the owner's push from the bucket was not put in force"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(bob);
}
