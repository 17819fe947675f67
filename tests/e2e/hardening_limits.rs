//! Hardening tests (see the module doc in main.rs): per-invocation bounds.
//! Each test once failed on a shared worker: a client string copied whole
//! into an audit line, a denied call looped into thousands of lines, a
//! delegated script writing without end, a kv value no reader accepts.

use crate::support::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Longest string field of an audit line (`peerhost::audit::MAX_FIELD`),
/// plus the `…` that marks a cut.
const FIELD: usize = 1024 + 3;

/// Longest error message (`peerhost::error::MAX_MESSAGE`), plus the `…`.
const MESSAGE: usize = 4096 + 3;

fn audit_file(demo: &Demo, peer: &str) -> PathBuf {
    demo.dir()
        .join("peers")
        .join(peer)
        .join("audit/audit.jsonl")
}

/// The lines of `peer`'s audit log (none before its first decision).
fn audit_lines(demo: &Demo, peer: &str) -> Vec<String> {
    let path = audit_file(demo, peer);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("{}: {e}", path.display()),
    };
    text.lines().map(str::to_owned).collect()
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a record: {e}: {line:.200}"))
}

/// The length of the longest line of `peer`'s audit log.
fn longest_line(demo: &Demo, peer: &str) -> usize {
    audit_lines(demo, peer)
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(0)
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

fn append(path: &Path, text: &str) {
    let old = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(path, old + text).unwrap_or_else(|e| panic!("{e}"));
}

fn assert_verifies(demo: &Demo, peer: &str) {
    let out = peerhost()
        .args(["audit", "verify", "--dir"])
        .arg(demo.dir())
        .arg(peer)
        .output()
        .expect("run peerhost audit verify");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("chain intact"), "{stdout}");
}

#[test]
fn class_7_client_strings_are_cut_in_audit_lines_and_answers() {
    let demo = Demo::new();
    // bob's hook answers every script with half a megabyte of its own words.
    append(
        &demo.dir().join("peers/bob/logic/main.rhai"),
        "\n/// Refuses every script, at length.\n\
         fn on_script(ctx, script) {\n\
             let s = \"r\"; s.pad(500000, \"r\"); s\n\
         }\n",
    );
    let server = demo.serve(&[]);

    // A signed call of a function named by 600 KB: refused before any guest runs.
    let name = "f".repeat(600_000);
    let (status, body) = server.call("bob", &name, Some("alice"), "[]");
    assert_eq!(
        (status, kind(&body)),
        (403, "denied"),
        "{:.300}",
        body.to_string()
    );
    let resource = body["error"]["resource"].as_str().unwrap_or_default();
    assert!(
        resource.starts_with("Function::\"fff") && resource.ends_with('…'),
        "{resource:.100}"
    );
    assert!(resource.len() <= FIELD, "{} bytes", resource.len());
    assert!(
        message(&body).len() <= MESSAGE,
        "{} bytes",
        message(&body).len()
    );

    // A script naming a contact by 900 KB: decided, not found, all cut.
    let (status, body) = server.eval(
        "alice",
        Some("alice"),
        "let p = \"p\"; p.pad(900000, \"p\"); peers::send(p, \"1\")",
    );
    assert_eq!(
        (status, kind(&body)),
        (404, "not-found"),
        "{:.300}",
        body.to_string()
    );
    assert!(
        message(&body).len() <= MESSAGE,
        "{} bytes",
        message(&body).len()
    );
    assert!(message(&body).ends_with('…'), "{:.100}", message(&body));

    // The hook's verdict is the refusal's reason in bob's audit line.
    let (status, body) = server.eval("bob", Some("alice"), "1");
    assert_eq!(
        (status, kind(&body)),
        (403, "denied"),
        "{:.300}",
        body.to_string()
    );
    let refusal = audit_lines(&demo, "bob")
        .iter()
        .map(|line| parse(line))
        .rfind(|line| line["action"] == "script.accept" && line["decision"] == "deny")
        .unwrap_or_else(|| panic!("the hook's refusal is audited"));
    let reason = refusal["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("on_script returned \"rrr"),
        "{reason:.100}"
    );
    assert!(reason.len() <= FIELD, "{} bytes", reason.len());

    // No line of either log holds a client string whole.
    for peer in ["alice", "bob"] {
        let longest = longest_line(&demo, peer);
        assert!(longest < 8 * 1024, "{peer}: a line of {longest} bytes");
        assert_verifies(&demo, peer);
    }
}

#[test]
fn class_8_a_script_looping_on_a_denied_call_writes_256_audit_lines_and_one_summary() {
    let demo = Demo::new();
    let server = demo.serve(&[]);
    let before = audit_lines(&demo, "bob").len();
    // 600 denied reads, then one allowed: every decision still stands.
    // (Few enough to finish well inside the 1 s wall time on a loaded
    // 2-core debug build.)
    let script = "let denied = 0;\n\
                  for i in 0..600 {\n\
                      try { kv::get(\"private/diary\"); } catch (e) { if e.kind == \"denied\" { denied += 1; } }\n\
                  }\n\
                  [denied, kv::get(\"public/motd\")]";
    let (status, body) = server.eval("bob", Some("alice"), script);
    assert_eq!((status, body), (200, json!([600, "Hello from bob"])));
    let lines = audit_lines(&demo, "bob");
    let new: Vec<Value> = lines[before..].iter().map(|line| parse(line)).collect();
    // script.accept and 255 denials are written, then one summary line.
    assert_eq!(new.len(), 256 + 1, "{} new lines", new.len());
    assert_eq!(new[0]["action"], "script.accept");
    assert!(new[1..256].iter().all(|l| l["decision"] == "deny"));
    let summary = &new[256];
    assert_eq!(summary["action"], "audit.dropped", "{summary}");
    assert_eq!(summary["decision"], "deny", "{summary}");
    assert_eq!(summary["caller"]["name"], "alice", "{summary}");
    let reason = summary["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("346 audit lines of this invocation were not written (256 were")
            && reason.contains("345 deny, 1 allow")
            && reason.contains("kv.get 346"),
        "{reason}"
    );
    assert_verifies(&demo, "bob");

    // The next invocation has lines of its own, and no summary without drops.
    let (status, _) = server.eval(
        "bob",
        Some("alice"),
        "for i in 0..10 { try { kv::get(\"private/diary\"); } catch {} }",
    );
    assert_eq!(status, 200);
    assert_eq!(audit_lines(&demo, "bob").len(), lines.len() + 11);
}

/// `count` values of 1,000,000 bytes (as JSON) under `prefix0`…, as alice at alice.
fn write_values(prefix: &str, count: u32) -> String {
    format!(
        "let s = \"x\"; s.pad(999998, \"x\");\n\
         for i in 0..{count} {{ kv::set(`{prefix}${{i}}`, s); }}\n\
         {count}"
    )
}

#[test]
fn class_9_an_invocation_writing_past_16_mib_is_refused_with_limit() {
    let demo = Demo::new();
    roomy(&demo);
    let server = demo.serve(&[]);
    // kv: 20 values of 1 MB; the 17th would pass 16 MiB.
    let (status, body) = server.eval("alice", Some("alice"), &write_values("big", 20));
    assert_eq!((status, kind(&body)), (413, "limit"), "{body}");
    assert!(
        message(&body).contains("one invocation may write at most 16777216"),
        "{body}"
    );
    let (status, body) = server.eval("alice", Some("alice"), "kv::list(\"big\").len()");
    assert_eq!((status, body), (200, json!(16)));

    // Files: the same through WASI output streams; the write that passes
    // the bound traps and ends the invocation.
    let (status, body) = server.eval(
        "alice",
        Some("alice"),
        "let s = \"x\"; s.pad(1000000, \"x\");\n\
         for i in 0..20 { fs::write(`big${i}.txt`, s); }",
    );
    assert_eq!((status, kind(&body)), (413, "limit"), "{body}");
    assert!(
        message(&body).contains("one invocation may write at most 16777216"),
        "{body}"
    );
    let data = demo.data("alice");
    let size = |name: &str| std::fs::metadata(data.join(name)).map(|m| m.len()).ok();
    assert_eq!(size("big15.txt"), Some(1_000_000));
    assert!(size("big16.txt").is_none_or(|n| n < 1_000_000));
    assert_eq!(size("big17.txt"), None);

    // A new invocation may write again.
    let (status, body) = server.eval("alice", Some("alice"), &write_values("small", 2));
    assert_eq!((status, body), (200, json!(2)));
}

#[test]
fn class_9_a_caller_writing_past_64_mib_a_minute_at_a_peer_is_refused_with_limit() {
    let demo = Demo::new();
    roomy(&demo);
    // bob may run scripts at alice and set her keys.
    append(
        &demo.dir().join("peers/alice/policy.cedar"),
        "\npermit (principal == Peer::\"bob\", \
         action in [Action::\"script.accept\", Action::\"kv.set\"], resource);\n",
    );
    let server = demo.serve(&[]);
    // Four invocations of 15 MB each fit in 64 MiB; the fifth does not.
    for round in 0..4 {
        let (status, body) = server.eval("alice", Some("alice"), &write_values("k", 15));
        assert_eq!((status, body), (200, json!(15)), "round {round}");
    }
    let (status, body) = server.eval("alice", Some("alice"), &write_values("k", 15));
    assert_eq!((status, kind(&body)), (413, "limit"), "{body}");
    assert!(
        message(&body).contains("`alice` has written")
            && message(&body).contains("at `alice` in the last minute"),
        "{body}"
    );
    // Another caller at the same peer has a budget of its own.
    let (status, body) = server.eval("alice", Some("bob"), &write_values("bob", 2));
    assert_eq!((status, body), (200, json!(2)));
}

#[test]
fn class_16_a_kv_value_nested_past_the_readers_limit_is_refused_and_one_at_it_reads_back() {
    let demo = Demo::new();
    let server = demo.serve(&[]);
    let nest = |depth: u32| format!("let v = 0; for i in 0..{depth} {{ v = [v]; }}");
    let depth_read = "let r = kv::get(\"deep\"); let d = 0;\n\
                      while type_of(r) == \"array\" { r = r[0]; d += 1; }\n\
                      d";
    let (status, body) = server.eval(
        "alice",
        Some("alice"),
        &format!("{} kv::set(\"deep\", v); {depth_read}", nest(127)),
    );
    assert_eq!((status, body), (200, json!(127)));
    let (status, body) = server.eval("alice", Some("alice"), depth_read);
    assert_eq!((status, body), (200, json!(127)));

    let (status, body) = server.eval(
        "alice",
        Some("alice"),
        &format!("{} kv::set(\"deeper\", v)", nest(128)),
    );
    assert_eq!((status, kind(&body)), (400, "invalid"), "{body}");
    assert!(
        message(&body).contains("nested more than 127 arrays or objects deep")
            && message(&body).contains("could not be read back"),
        "{body}"
    );
    let (status, body) = server.eval("alice", Some("alice"), "kv::get(\"deeper\")");
    assert_eq!((status, body), (200, Value::Null));
}

/// Gives invocations 20 s of wall time: tens of MiB written on a loaded
/// 2-core debug build must meet the byte bound, not the clock.
fn roomy(demo: &Demo) {
    let path = demo.dir().join("peerhost.toml");
    let text = std::fs::read_to_string(&path).expect("peerhost.toml");
    assert!(text.contains("wall_time_ms = 1000"), "{text}");
    std::fs::write(
        &path,
        text.replace("wall_time_ms = 1000", "wall_time_ms = 20000"),
    )
    .expect("peerhost.toml");
}
