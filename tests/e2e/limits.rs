use crate::support::{Demo, kind};

/// Limits stop runaway scripts with a typed `limit` error, the Store is
/// thrown away, and the worker goes on answering.
#[test]
fn runaway_scripts_hit_limits_and_the_worker_survives() {
    let demo = Demo::new();
    // alice narrows the worker's limits to 200 ms of wall time; bob's 1 MiB
    // of memory is less than the guest needs to start.
    std::fs::write(
        demo.dir().join("peers/alice/peer.toml"),
        "description = \"alice, narrowed\"\n\n[limits]\nwall_time_ms = 200\n",
    )
    .expect("write peer.toml");
    std::fs::write(
        demo.dir().join("peers/bob/peer.toml"),
        "[limits]\nmemory_mib = 1\n",
    )
    .expect("write peer.toml");
    let server = demo.serve(&[]);
    let cases = [
        // The epoch deadline interrupts the guest before Rhai's operation limit.
        ("let x = 0; loop { x += 1; }", "wall-time"),
        // Rhai's own limits.
        ("fn f(n) { f(n + 1) } f(0)", "Stack overflow"),
        ("let s = \"xx\"; loop { s += s; }", "Length of string"),
        // A result over 1 MiB.
        // A result over 1 MiB: 600,000 quotes are 1.2 MB of escaped JSON.
        ("let s = \"q\"; s.pad(600000, \"\\\"\"); s", "the limit is"),
        // Rhai counts the strings inside an array against its size limits.
        (
            "let a = []; for i in 0..100 { let s = \"x\"; s.pad(60000, \"y\"); a.push(s); } a.len()",
            "too large",
        ),
    ];
    for (script, fragment) in cases {
        let (status, body) = server.eval("alice", Some("alice"), script);
        assert_eq!((status, kind(&body)), (413, "limit"), "{script}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(fragment),
            "{script}: {message:?} lacks {fragment:?}"
        );
        let (status, _) = server.call("alice", "greet", Some("alice"), "[\"still here\"]");
        assert_eq!(status, 200, "the worker stopped answering after {script}");
    }
    // Linear memory past the limit is refused: bob cannot even start.
    let (status, body) = server.eval("bob", Some("bob"), "1");
    assert_eq!((status, kind(&body)), (413, "limit"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("memory"),
        "{body}"
    );
    // alice's one-second default is gone, but a short loop is fine.
    let (status, body) = server.eval(
        "alice",
        Some("alice"),
        "let x = 0; for i in 0..10000 { x += i; } x",
    );
    assert_eq!((status, body), (200, serde_json::json!(49995000)));
}

/// Nothing in the engine blocks: `sleep` would hold the Store inside a host
/// call, out of reach of epoch interruption.
#[test]
fn scripts_cannot_sleep() {
    let demo = Demo::new();
    let server = demo.serve(&[]);
    for script in ["sleep(30)", "sleep(30.0)"] {
        let (status, body) = server.eval("alice", Some("alice"), script);
        assert_eq!((status, kind(&body)), (400, "invalid"), "{script}: {body}");
        assert!(
            body.to_string().contains("sleep is not available"),
            "{body}"
        );
    }
    let (status, body) = server.eval("alice", Some("alice"), "eval(\"1\")");
    assert_eq!(status, 400, "{body}");
}

/// Overflow and division by zero are script errors, not host failures.
#[test]
fn arithmetic_errors_are_failed_not_fatal() {
    let demo = Demo::new();
    let server = demo.serve(&[]);
    for script in ["9223372036854775807 + 1", "1 / 0", "let a = [1]; a[5]"] {
        let (status, body) = server.eval("alice", Some("alice"), script);
        assert_eq!((status, kind(&body)), (500, "failed"), "{script}: {body}");
    }
    let (status, _) = server.call("alice", "greet", Some("alice"), "[\"x\"]");
    assert_eq!(status, 200);
}

/// A huge thrown message is cut, not copied whole into the answer.
#[test]
fn huge_error_messages_are_cut() {
    let demo = Demo::new();
    let server = demo.serve(&[]);
    let (status, body) = server.eval(
        "alice",
        Some("alice"),
        "let s = \"e\"; s.pad(900000, \"e\"); throw s;",
    );
    assert_eq!(
        (status, kind(&body)),
        (500, "failed"),
        "{}",
        &body.to_string()[..200]
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.len() <= 64 * 1024 + 4 && message.ends_with('…'),
        "{} bytes",
        message.len()
    );
}
