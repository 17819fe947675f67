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
