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

fn script(text: &str) -> Invocation {
    Invocation::Script {
        script: text.to_owned(),
        params: Value::Null,
    }
}

/// An audit log with what differs between runs (the time, and the chain
/// that hashes it) left out.
fn normalised(dir: &Path, peer: &str) -> Vec<Value> {
    audit(dir, peer)
        .into_iter()
        .map(|mut line| {
            line["time"] = Value::Null;
            line["prev"] = Value::Null;
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
