//! Hardening tests (see the module doc in main.rs), class 11: the audit
//! chain survives a line longer than any tail a writer might read, and a
//! torn last line left by a write cut short.

use crate::support::*;
use sha2::Digest;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `peers/<peer>/audit/audit.jsonl` of the demo.
fn audit_file(demo: &Demo, peer: &str) -> PathBuf {
    demo.dir()
        .join("peers")
        .join(peer)
        .join("audit/audit.jsonl")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn append(path: &Path, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(bytes))
        .unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
}

/// A call at alice, in its own process: each starts with no memory of the
/// log and finds its last line in the file.
fn greet(demo: &Demo) {
    let out = demo.cli(&["call", "alice", "greet", r#"["bob"]"#]);
    assert!(out.status.success(), "{:?}", text(&out));
}

/// `peerhost audit verify --dir DEMO PEER` (`Demo::cli` puts `--dir`
/// after the first word, before `verify`).
fn verify(demo: &Demo, peer: &str) -> std::process::Output {
    peerhost()
        .args(["audit", "verify", "--dir"])
        .arg(demo.dir())
        .arg(peer)
        .output()
        .expect("run peerhost audit verify")
}

fn assert_verifies(demo: &Demo, peer: &str) -> String {
    let out = verify(demo, peer);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "audit verify failed: {stderr}");
    assert!(stdout.contains("chain intact"), "{stdout}");
    stdout
}

fn sha256_hex(line: &str) -> String {
    hex::encode(sha2::Sha256::digest(line.as_bytes()))
}

#[test]
fn class_11_a_torn_tail_is_marked_and_the_next_call_keeps_the_chain() {
    let demo = Demo::new();
    let log = audit_file(&demo, "alice");
    greet(&demo);
    // A write cut short: a record's first bytes, no newline.
    let torn = r#"{"time":"2025-01-01T00:00:00.000Z","peer":"alice","caller":{"na"#;
    append(&log, torn.as_bytes());
    greet(&demo);
    assert_verifies(&demo, "alice");
    let text = read(&log);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|line| *line == torn)
        .unwrap_or_else(|| panic!("the torn line is not a line of its own:\n{text}"));
    let marker: serde_json::Value = serde_json::from_str(lines[at + 1])
        .unwrap_or_else(|e| panic!("the line after the torn one: {e}"));
    assert_eq!(marker["action"], "audit.torn", "{marker}");
    assert_eq!(marker["prev"], sha256_hex(torn), "{marker}");
    let next: serde_json::Value = serde_json::from_str(lines[at + 2])
        .unwrap_or_else(|e| panic!("the line after the marker: {e}"));
    assert_eq!(next["action"], "call", "{next}");
    assert_eq!(next["prev"], sha256_hex(lines[at + 1]), "{next}");

    // The torn line is accepted only with its marker after it.
    let without_marker: String = lines
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != at + 1)
        .map(|(_, line)| format!("{line}\n"))
        .collect();
    std::fs::write(&log, without_marker).unwrap_or_else(|e| panic!("{e}"));
    let out = verify(&demo, "alice");
    assert!(
        !out.status.success(),
        "a torn line without its marker was accepted"
    );
    let (_, stderr) = crate::support::text(&out);
    assert!(
        stderr.contains(&format!("audit.jsonl:{}:", at + 1)),
        "{stderr}"
    );
}

#[test]
fn class_11_a_line_over_256_kib_keeps_the_chain_across_processes() {
    let demo = Demo::new();
    let log = audit_file(&demo, "alice");
    greet(&demo);
    // A record longer than 256 KiB, chained to the last line, as any
    // writer may leave it (client strings reach `resource` and `reason`).
    let text = read(&log);
    let last = text.lines().last().expect("a line");
    let long = serde_json::json!({
        "time": "2025-01-01T00:00:00.000Z",
        "peer": "alice",
        "caller": {"name": "bob"},
        "principal": "bob",
        "action": "call",
        "resource": format!("Function::\"{}\"", "f".repeat(300 * 1024)),
        "decision": "deny",
        "policies": [],
        "depth": 0,
        "prev": sha256_hex(last),
    })
    .to_string();
    append(&log, format!("{long}\n").as_bytes());
    assert_verifies(&demo, "alice");
    greet(&demo);
    let stdout = assert_verifies(&demo, "alice");
    let text = read(&log);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|line| *line == long)
        .expect("the long line");
    let next: serde_json::Value =
        serde_json::from_str(lines[at + 1]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(next["prev"], sha256_hex(&long), "{next}");
    assert!(
        stdout.contains(&sha256_hex(lines[lines.len() - 1])),
        "{stdout}"
    );
}
