//! The adversarial suite: 35 hostile scripts and an unknown principal. Each
//! gets its typed error, changes nothing outside the target's namespace (a
//! canary beside the deployment and bob's data stay byte-identical), and
//! leaves the worker answering. More cases live beside the features they
//! attack: `isolation.rs` (25 escapes: `..`, absolute paths, symlinks out),
//! `limits.rs` (memory, narrowed wall time), `http_front.rs` (slow and
//! greedy clients, a 64 MiB envelope), `bad_input.rs` (bad envelopes,
//! configs and policies), and raw Wasm guests in `host/src/runtime.rs`.

use crate::support::{Demo, Server, kind};
use std::path::PathBuf;

/// A served demo with a canary outside every namespace and a secret in
/// bob's; `intact` checks both afterwards.
struct Arena {
    demo: Demo,
    server: Server,
    canary: PathBuf,
    bob_secret: PathBuf,
}

const CANARY: &str = "CANARY-1b9e";
const BOB_SECRET: &str = "BOB-SECRET-77aa";

impl Arena {
    fn new() -> Arena {
        let demo = Demo::new();
        let canary = demo.tmp.path().join("canary.txt");
        std::fs::write(&canary, CANARY).expect("canary");
        let bob_secret = demo.data("bob").join("secret.txt");
        std::fs::write(&bob_secret, BOB_SECRET).expect("bob's secret");
        let server = demo.serve(&[]);
        Arena {
            demo,
            server,
            canary,
            bob_secret,
        }
    }

    /// Runs `script` at alice as alice; expects `status` and `kind`.
    fn expect(&self, script: &str, status: u16, expected: &str) -> serde_json::Value {
        let (got, body) = self.server.eval("alice", Some("alice"), script);
        assert_eq!(
            (got, kind(&body)),
            (status, expected),
            "{script:.80}: {body:.300}"
        );
        self.intact(script);
        body
    }

    fn intact(&self, after: &str) {
        assert_eq!(
            std::fs::read_to_string(&self.canary).ok().as_deref(),
            Some(CANARY),
            "the canary changed after {after:.80}"
        );
        assert_eq!(
            std::fs::read_to_string(&self.bob_secret).ok().as_deref(),
            Some(BOB_SECRET),
            "bob's data changed after {after:.80}"
        );
        let (status, body) = self.server.eval("alice", Some("alice"), "40 + 2");
        assert_eq!(
            (status, body.as_i64()),
            (200, Some(42)),
            "the worker stopped answering after {after:.80}"
        );
    }
}

#[test]
fn hostile_scripts_get_typed_errors_and_harm_nothing() {
    let arena = Arena::new();
    let deep_expression = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
    let long_name = format!("fs::write(\"{}\", \"x\")", "n".repeat(5_000));
    let cases: Vec<(String, u16, &str)> =
        vec![
        // Nested array doubling: data size, not a crash.
        (
            "let a = [1]; loop { a = [a, a]; }".into(),
            413,
            "limit",
        ),
        // A 10,000-deep expression is refused while parsing.
        (deep_expression, 400, "invalid"),
        // A million closures: the array limit, not the host's memory.
        (
            "let a = []; for i in 0..1000000 { a.push(|x| x + i); } a.len()".into(),
            413,
            "limit",
        ),
        // A result near 1 GiB is refused before it crosses the boundary.
        (
            "let a = []; for i in 0..1100 { let s = \"x\"; s.pad(1000000, \"y\"); a.push(s); } a"
                .into(),
            413,
            "limit",
        ),
        // Log flooding: lines are cut and counted.
        (
            "let s = \"x\"; s.pad(100000, \"y\"); for i in 0..2000 { log::info(s); } 1".into(),
            413,
            "limit",
        ),
        // NUL bytes and 5,000-character names.
        ("fs::write(\"a\\0b\", \"x\")".into(), 400, "invalid"),
        (long_name, 500, "failed"),
        // Peer A reaching peer B's directory by every spelling.
        ("fs::read(\"/../bob/data/secret.txt\")".into(), 400, "invalid"),
        ("fs::read(\"../../bob/data/secret.txt\")".into(), 400, "invalid"),
        // The kv store's files are not in the namespace.
        ("fs::list(\"/.kv\")".into(), 404, "not-found"),
        ("fs::list(\"/../kv\")".into(), 400, "invalid"),
        // Logic cannot be rewritten from inside.
        (
            "fs::write(\"/logic/main.rhai\", \"fn ping() { 1 }\")".into(),
            400,
            "invalid",
        ),
        // Integer overflow and division by zero are errors, not traps.
        ("9223372036854775807 * 2".into(), 500, "failed"),
        ("let x = 0; 10 % x".into(), 500, "failed"),
        // Runaway growth and recursion.
        ("let s = \"xx\"; loop { s += s; }".into(), 413, "limit"),
        ("\"x\".pad(2000000, \"y\")".into(), 413, "limit"),
        ("let a = []; a.pad(200000, 0); a.len()".into(), 413, "limit"),
        (
            "let m = #{}; for i in 0..200000 { m[`k${i}`] = i; } m.len()".into(),
            413,
            "limit",
        ),
        ("fn f(n) { f(n + 1) } f(0)".into(), 413, "limit"),
        (
            "fn f(n) { if n == 0 { 0 } else { 1 + f(n - 1) } } f(10000)".into(),
            413,
            "limit",
        ),
        ("loop { }".into(), 413, "limit"),
        // Bad keys and reserved paths.
        ("kv::set(\"\", 1)".into(), 400, "invalid"),
        ("let k = \"k\"; k.pad(200, \"y\"); kv::set(k, 1)".into(), 400, "invalid"),
        ("fs::list(\"/logic/../..\")".into(), 400, "invalid"),
        ("fs::read(\"/etc/passwd\")".into(), 404, "not-found"),
        // Escapes from the engine.
        ("sleep(10)".into(), 400, "invalid"),
        ("eval(\"1\")".into(), 400, "invalid"),
        ("import \"nothing\" as x; 1".into(), 404, "not-found"),
        // Delegation to strangers and to what is not granted.
        ("peers::send(\"nobody\", \"1\")".into(), 404, "not-found"),
        ("peers::invoke(\"bob\", \"list_public\")".into(), 403, "denied"),
        ("peers::send(\"bob\", \"kv::get(\\\"private/diary\\\")\")".into(), 403, "denied"),
        ("peers::send(\"bob\", \"loop { }\")".into(), 413, "limit"),
        // Plain script errors stay errors.
        ("throw \"boom\"".into(), 500, "failed"),
        ("[1, 2, 3][10]".into(), 500, "failed"),
        // A thrown fake denial is not a host decision.
        (
            "throw #{kind: \"denied\", action: \"kv.get\", resource: \"Key::\\\"x\\\"\"}".into(),
            403,
            "denied",
        ),
    ];
    for (script, status, expected) in &cases {
        arena.expect(script, *status, expected);
    }
    // The logic is unchanged and still answers.
    let (status, body) = arena.server.call("alice", "ping", Some("alice"), "[]");
    assert_eq!((status, body.as_str()), (200, Some("pong")));
    assert!(
        !arena.demo.data("alice").join("a").exists(),
        "a NUL-byte name left a truncated file"
    );
    // The audit log holds host decisions only: the thrown fake denial of
    // `Key::"x"` is not one.
    let log = std::fs::read_to_string(arena.demo.dir().join("peers/alice/audit/audit.jsonl"))
        .expect("alice's audit log");
    assert!(
        !log.contains("Key::\\\"x\\\""),
        "a script forged an audit line"
    );
    // Log lines past the per-invocation cap left no audit lines either.
    let log_writes = log.lines().filter(|l| l.contains("\"log.write\"")).count();
    assert!(
        log_writes <= 1_000,
        "{log_writes} log.write decisions recorded"
    );
}

#[test]
fn an_unknown_principal_gets_nothing_and_is_audited_by_id() {
    let arena = Arena::new();
    // A key nobody's contacts know: its id is the principal.
    let stranger = peerhost::PeerKey::generate().expect("randomness");
    let bob = crate::support::peer_id(&arena.demo.dir(), "bob");
    let invocation = peerhost::Invocation::Script {
        script: "kv::get(\"public/motto\")".into(),
        params: serde_json::Value::Null,
    };
    let envelope =
        peerhost::Envelope::seal(&stranger, bob, &invocation, 0, std::time::SystemTime::now())
            .expect("seal");
    let (status, body) = arena.server.send(&envelope);
    assert_eq!((status, kind(&body)), (403, "denied"), "{body}");
    assert_eq!(body["error"]["action"], "script.accept");
    let log = std::fs::read_to_string(arena.demo.dir().join("peers/bob/audit/audit.jsonl"))
        .expect("bob's audit log");
    assert!(
        log.lines()
            .any(|l| l.contains(&stranger.id().to_string()) && l.contains("\"decision\":\"deny\"")),
        "the stranger's refusal is audited under its id"
    );
    arena.intact("an unknown principal");
}
