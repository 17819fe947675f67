//! A worker reads a peer's files at its first use once the deployment is
//! indexed (`state/peers.index`); new or changed peers are read at start;
//! `peerhost check` reads every peer and names every problem.

use crate::support::{Demo, kind, peerhost, text};
use std::time::Duration;

/// Waits out the window in which a just-written file is not indexed.
fn settle() {
    std::thread::sleep(Duration::from_millis(150));
}

#[test]
fn peers_are_read_at_first_use_once_indexed_and_check_reads_them_all() {
    let demo = Demo::new();
    settle();
    let index = demo.dir().join("state/peers.index");
    // The first start reads every peer and indexes them.
    drop(demo.serve(&[]));
    let indexed = std::fs::read_to_string(&index).expect("index written at the first start");
    assert_eq!(indexed.lines().count(), 3, "header, alice, bob: {indexed}");

    // bob's policy broken behind the index's back: the worker starts (bob
    // is not read until used) and says so at bob's first invocation.
    let policy = demo.dir().join("peers/bob/policy.cedar");
    let good = std::fs::read_to_string(&policy).expect("policy");
    std::fs::write(&policy, "permit (principal, action, resource) when {").expect("write");
    let server = demo.serve(&[]);
    let (status, answer) = server.call("alice", "greet", Some("alice"), "[\"x\"]");
    assert_eq!(status, 200, "alice is served: {answer}");
    let (status, answer) = server.eval("bob", Some("bob"), "1");
    assert_eq!(kind(&answer), "failed", "{status} {answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("peer `bob` cannot be read") && message.contains("policy.cedar"),
        "{answer}"
    );
    drop(server);

    // `check` reads everyone now: names bob's policy, exit 1.
    let out = peerhost()
        .args(["check", "--dir"])
        .arg(demo.dir())
        .output()
        .expect("check");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("peer `bob`") && stderr.contains("policy.cedar"),
        "{stderr}"
    );
    assert!(
        stdout.contains("2 peer(s) checked: 1 problem(s)"),
        "{stdout}"
    );

    // A changed peer.toml makes bob new again: read at start, and the
    // start refuses the bad policy as it always did.
    let toml = demo.dir().join("peers/bob/peer.toml");
    let text_ = std::fs::read_to_string(&toml).expect("peer.toml");
    std::fs::write(
        &toml,
        text_.replacen("description = \"", "description = \"Edited. ", 1),
    )
    .expect("write");
    let out = peerhost()
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(demo.dir())
        .output()
        .expect("serve");
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("policy.cedar"), "{stderr}");

    std::fs::write(&policy, good).expect("restore");
    let out = peerhost()
        .args(["check", "--dir"])
        .arg(demo.dir())
        .output()
        .expect("check");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("2 peer(s) checked: no problem"), "{stdout}");
}

/// An index whose ids do not match the files (here: alice's and bob's
/// swapped) is caught at the peer's first use: `failed`, the index
/// removed, and the next start reads every peer again.
#[test]
fn an_index_that_no_longer_matches_the_files_is_caught_and_dropped() {
    let demo = Demo::new();
    settle();
    let index = demo.dir().join("state/peers.index");
    drop(demo.serve(&[]));
    let indexed = std::fs::read_to_string(&index).expect("index");
    let lines: Vec<Vec<&str>> = indexed
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(lines.len(), 2, "{indexed}");
    let swapped: String =
        std::iter::once("peerhost peers index 1".to_owned())
            .chain(lines.iter().zip(lines.iter().rev()).map(|(line, other)| {
                format!("{}\t{}\t{}\t{}", line[0], line[1], line[2], other[3])
            }))
            .map(|l| l + "\n")
            .collect();
    std::fs::write(&index, swapped).expect("swap ids");

    let server = demo.serve(&[]);
    let (status, answer) = server.eval("bob", Some("bob"), "1");
    assert_eq!(kind(&answer), "failed", "{status} {answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("restart the worker")),
        "{answer}"
    );
    assert!(!index.exists(), "the index is dropped");
    drop(server);

    let server = demo.serve(&[]);
    let (status, answer) = server.eval("bob", Some("bob"), "1");
    assert_eq!(status, 200, "{answer}");
}
