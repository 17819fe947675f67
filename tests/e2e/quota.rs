//! Caller pays: a target's per-caller quotas refuse the excess with 429 and
//! `Retry-After`, audit the refusal, charge the caller's time at the target,
//! and `peerhost peer stats` shows each caller's usage.

use crate::support::{Demo, Server, agent, kind, peerhost, sign, text};
use peerhost::Invocation;
use serde_json::Value;
use std::time::Duration;

/// A demo whose bob has `extra` appended to his peer.toml, served.
fn bob_with(extra: &str) -> (Demo, Server) {
    let demo = Demo::new();
    let config = demo.dir().join("peers/bob/peer.toml");
    let mut text = std::fs::read_to_string(&config).expect("peer.toml");
    text.push('\n');
    text.push_str(extra);
    std::fs::write(&config, text).expect("peer.toml");
    let server = demo.serve(&[]);
    (demo, server)
}

#[test]
fn a_caller_over_its_quota_is_refused_with_a_retry_hint_and_counted() {
    let (demo, server) = bob_with(
        "\n[quotas]\ninvocations_per_second = 100\n\n[quotas.callers.alice]\ninvocations_per_second = 2\n",
    );
    let dir = demo.dir();
    let invocation = Invocation::Script {
        script: "1".into(),
        params: Value::Null,
    };
    let url = format!("{}/v1/envelopes", server.url);
    let mut answers = Vec::new();
    for _ in 0..4 {
        let envelope = sign(&dir, "alice", "bob", &invocation);
        let mut response = agent()
            .post(&url)
            .send_json(&envelope)
            .expect("HTTP request");
        let retry = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body: Value = response.body_mut().read_json().expect("JSON");
        answers.push((response.status().as_u16(), retry, body));
    }
    assert_eq!(answers[0].0, 200, "{:?}", answers[0]);
    assert_eq!(answers[1].0, 200, "{:?}", answers[1]);
    let (status, retry, body) = &answers[2];
    assert_eq!((*status, kind(body)), (429, "limit"), "{body}");
    assert_eq!(retry.as_deref(), Some("1"), "Retry-After in whole seconds");
    assert!(body["error"]["retry_after_ms"].as_u64().is_some(), "{body}");
    // bob himself is not held to the default quota.
    for _ in 0..5 {
        let (status, body) = server.eval("bob", Some("bob"), "1");
        assert_eq!(status, 200, "{body}");
    }
    // The refusal is audited; the usage reaches usage.json within 2 s.
    let audit = std::fs::read_to_string(dir.join("peers/bob/audit/audit.jsonl")).expect("audit");
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"action\":\"quota\"") && l.contains("\"principal\":\"alice\"")),
        "{audit}"
    );
    std::thread::sleep(Duration::from_millis(2600));
    let out = peerhost()
        .args(["peer", "stats", "--json", "--dir"])
        .arg(&dir)
        .arg("bob")
        .output()
        .expect("peer stats");
    assert!(out.status.success(), "{:?}", text(&out));
    let stats: Value = serde_json::from_str(&text(&out).0).expect("stats JSON");
    let admitted = answers.iter().filter(|a| a.0 == 200).count();
    let refused = answers.iter().filter(|a| a.0 == 429).count();
    assert_eq!(admitted + refused, answers.len(), "{answers:?}");
    assert_eq!(stats["alice"]["invocations"], admitted, "{stats}");
    assert_eq!(stats["alice"]["over_quota"], refused, "{stats}");
    assert!(
        stats["alice"]["time_ms"].as_f64().is_some_and(|t| t > 0.0),
        "{stats}"
    );
    assert_eq!(stats["bob"]["invocations"], 5, "{stats}");
    // The demo's seed (two keys) is bob's own, in the kv store.
    assert_eq!(stats["bob"]["kv_keys"], 2, "{stats}");
    assert_eq!(stats["bob"]["kv_bytes"], 68, "{stats}");
    let table = peerhost()
        .args(["peer", "stats", "--dir"])
        .arg(&dir)
        .arg("bob")
        .output()
        .expect("peer stats");
    assert!(text(&table).0.contains("alice"), "{:?}", text(&table));
}

#[test]
fn a_named_caller_runs_under_narrower_limits() {
    let (_demo, server) = bob_with("[quotas.callers.alice]\nwall_time_ms = 60\n");
    let spin = "let x = 0; loop { x += 1; }";
    let (status, body) = server.eval("bob", Some("alice"), spin);
    assert_eq!((status, kind(&body)), (413, "limit"), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("60ms"), "alice's own wall time: {message}");
    // bob keeps the worker's wall time (1 s): his spin is stopped later.
    let (status, body) = server.eval("bob", Some("bob"), spin);
    assert_eq!((status, kind(&body)), (413, "limit"), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("1s"), "bob's wall time: {message}");
}

#[test]
fn rhai_operations_are_narrowed_per_peer_and_per_caller() {
    let (_demo, server) =
        bob_with("[limits]\noperations = 200000\n\n[quotas.callers.alice]\noperations = 2000\n");
    let count = |n: u32| format!("let x = 0; for i in 0..{n} {{ x += 1; }} x");
    // alice: 2,000 operations.
    let (status, body) = server.eval("bob", Some("alice"), &count(100));
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.eval("bob", Some("alice"), &count(5_000));
    assert_eq!((status, kind(&body)), (413, "limit"), "{body}");
    // bob: his peer's 200,000.
    let (status, body) = server.eval("bob", Some("bob"), &count(5_000));
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.eval("bob", Some("bob"), &count(200_000));
    assert_eq!((status, kind(&body)), (413, "limit"), "{body}");
    // alice's own peer keeps the default (50 million).
    let (status, body) = server.eval("alice", Some("alice"), &count(200_000));
    assert_eq!(status, 200, "{body}");
}

/// The bytes of the regular files under `dir`, as the test sees them.
fn bytes_under(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        if meta.is_dir() {
            total += bytes_under(&entry.path());
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}

#[test]
fn a_write_past_fs_bytes_is_limit_with_the_figures_and_removals_give_bytes_back() {
    // bob's namespace may hold what the demo put there and 3,000 bytes more.
    let demo = Demo::new();
    let data = demo.dir().join("peers/bob/data");
    let seed = bytes_under(&data);
    let quota = seed + 3000;
    let config = demo.dir().join("peers/bob/peer.toml");
    let mut toml = std::fs::read_to_string(&config).expect("peer.toml");
    toml.push_str(&format!("\n[quotas]\nfs_bytes = {quota}\n"));
    std::fs::write(&config, toml).expect("peer.toml");
    let write = |server: &Server, path: &str, bytes: usize| {
        server.eval(
            "bob",
            Some("bob"),
            &format!("let s = \"\"; s.pad({bytes}, 'x'); fs::write(\"{path}\", s); {bytes}"),
        )
    };
    let refused = |answer: (u16, Value), now: u64, after: u64| {
        let (status, body) = answer;
        assert_eq!((status, kind(&body)), (413, "limit"), "{body}");
        let expected = format!(
            "fs_bytes quota of the peer: {quota}; stored {now}, this write would make it {after}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(&expected)),
            "{expected}: {body}"
        );
    };
    {
        let server = demo.serve(&[]);
        assert_eq!(write(&server, "a.txt", 1000).1, 1000);
        assert_eq!(write(&server, "b.txt", 1500).1, 1500);
        // 500 bytes are left: 1,000 more are refused, and nothing of them
        // is written (the file is created, empty).
        refused(write(&server, "c.txt", 1000), seed + 2500, seed + 3500);
        assert_eq!(
            std::fs::metadata(data.join("c.txt")).map(|m| m.len()).ok(),
            Some(0)
        );
        assert_eq!(
            std::fs::metadata(data.join("a.txt")).expect("a").len(),
            1000
        );
        assert_eq!(bytes_under(&data), seed + 2500);
        // Overwriting gives the old bytes back first: 1,400 over 1,000 fits.
        assert_eq!(write(&server, "a.txt", 1400).1, 1400);
        // So does a removal.
        let (status, body) = server.eval("bob", Some("bob"), "fs::remove(\"b.txt\"); 0");
        assert_eq!(status, 200, "{body}");
        assert_eq!(write(&server, "c.txt", 1000).1, 1000);
        assert_eq!(bytes_under(&data), seed + 2400);
        // The refusal is audited with its figures.
        let refusal = format!("fs_bytes quota of the peer: {quota}");
        assert!(
            crate::support::audited(&demo.dir(), "bob", "quota", &refusal) > 0,
            "no audit line says {refusal}"
        );
    }
    // Files put there by hand count from the next start on.
    std::fs::write(data.join("by-hand.txt"), [b'h'; 300]).expect("write");
    let server = demo.serve(&[]);
    refused(write(&server, "d.txt", 400), seed + 2700, seed + 3100);
    assert_eq!(write(&server, "d.txt", 300).1, 300);
    assert_eq!(bytes_under(&data), quota);
    let out = peerhost()
        .args(["peer", "stats", "--dir"])
        .arg(demo.dir())
        .arg("bob")
        .output()
        .expect("peer stats");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("namespace: {quota} bytes of {quota} (fs_bytes)")),
        "{stdout}"
    );
}
