//! A worker reads a peer's files at its first use once the deployment is
//! indexed (`state/peers.index`); new or changed peers are read at start;
//! `peerhost check` reads every peer and names every problem.

use crate::support::{Demo, kind, peerhost, text};
use std::time::Duration;

/// `peerhost check --dir` of `demo`: its exit code, stdout and stderr.
fn check(demo: &Demo) -> (Option<i32>, String, String) {
    let out = peerhost()
        .args(["check", "--dir"])
        .arg(demo.dir())
        .output()
        .expect("check");
    let (stdout, stderr) = text(&out);
    (out.status.code(), stdout, stderr)
}

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
    let (code, stdout, stderr) = check(&demo);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
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
    let (code, stdout, stderr) = check(&demo);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
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

/// With no index, `check` reads every peer and names each one's problem,
/// not only the first.
#[test]
fn check_names_the_problem_of_every_peer_not_only_the_first() {
    let demo = Demo::new();
    for peer in ["alice", "bob"] {
        std::fs::write(
            demo.dir().join(format!("peers/{peer}/policy.cedar")),
            "permit (principal, action, resource) when {",
        )
        .expect("break the policy");
    }
    let (code, stdout, stderr) = check(&demo);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    for peer in ["alice", "bob"] {
        assert!(stderr.contains(&format!("peer `{peer}`: ")), "{stderr}");
    }
    assert!(
        stdout.contains("2 peer(s) checked: 2 problem(s)"),
        "{stdout}"
    );
}

/// A peer whose files broke while it was not in use answers `failed`
/// without its files being read at every request, and is served again
/// within a second of the fix, without a restart.
#[test]
fn a_peer_that_cannot_be_read_is_served_once_its_files_are_fixed() {
    let demo = Demo::new();
    settle();
    drop(demo.serve(&[]));
    let policy = demo.dir().join("peers/bob/policy.cedar");
    let good = std::fs::read_to_string(&policy).expect("policy");
    std::fs::write(&policy, "permit (principal, action, resource) when {").expect("write");
    let server = demo.serve(&[]);
    for _ in 0..3 {
        let (status, answer) = server.eval("bob", Some("bob"), "1");
        assert_eq!(kind(&answer), "failed", "{status} {answer}");
    }
    std::fs::write(&policy, good).expect("fix");
    let fixed = std::time::Instant::now();
    let served = loop {
        let (status, _) = server.eval("bob", Some("bob"), "1");
        if status == 200 || fixed.elapsed() > Duration::from_secs(3) {
            break status == 200;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(served, "bob is served after the fix");
    assert!(
        fixed.elapsed() < Duration::from_millis(2500),
        "within the retry period: {:?}",
        fixed.elapsed()
    );
}

/// `serve --peer` names peers that must exist: a directory without a
/// `peer.toml` is refused, not served as nothing; a name given twice is
/// one peer.
#[test]
fn serve_refuses_a_named_peer_without_peer_toml_and_takes_a_repeated_name_once() {
    let demo = Demo::new();
    // Peers found as the directories of peers/, not listed.
    let config = demo.dir().join("peerhost.toml");
    let listed = std::fs::read_to_string(&config).expect("peerhost.toml");
    let scanned: String = listed
        .lines()
        .filter(|l| !l.starts_with("peers = "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(scanned, listed, "the demo lists its peers");
    std::fs::write(&config, scanned).expect("write");
    settle();
    drop(demo.serve(&[]));
    std::fs::create_dir_all(demo.dir().join("peers/ghost")).expect("mkdir");
    let mut serve = peerhost()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--peer",
            "ghost",
            "--dir",
        ])
        .arg(demo.dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve");
    let started = std::time::Instant::now();
    while serve.try_wait().ok().flatten().is_none() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = serve.kill();
    let out = serve.wait_with_output().expect("serve's output");
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "refused, not served: {stderr}");
    assert!(stderr.contains("peer.toml"), "{stderr}");

    // alice changed: read at start, named twice.
    let toml = demo.dir().join("peers/alice/peer.toml");
    let text_ = std::fs::read_to_string(&toml).expect("peer.toml");
    std::fs::write(
        &toml,
        text_.replacen("description = \"", "description = \"Edited. ", 1),
    )
    .expect("write");
    let server = demo.serve(&["--peer", "alice", "--peer", "alice"]);
    let (status, answer) = server.call("alice", "greet", Some("alice"), "[\"x\"]");
    assert_eq!(status, 200, "{answer}");
}
