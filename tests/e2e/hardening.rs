//! One test (or more) per hardening class, named after it: each input once
//! broke a shared worker; now it gets a typed refusal and the worker goes on.

use crate::support::*;
use serde_json::json;
use std::path::Path;

/// `peerhost WHAT push [REST…]` against `server`: exit code, stderr.
fn push(server: &Server, what: &str, rest: &[&str]) -> (Option<i32>, String) {
    let out = peerhost()
        .args([what, "push", "--dir"])
        .arg(&server.dir)
        .args(["--url", &server.url])
        .args(rest)
        .output()
        .expect("run peerhost");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A policy a few hundred brackets deep: 1 KB that once overflowed the
/// stack of whichever thread parsed it.
fn deep_policy() -> String {
    format!(
        "permit(principal, action, resource) when {{ {}true{} }};\n",
        "(".repeat(400),
        ")".repeat(400)
    )
}

/// The worker still serves bob.
fn still_answers(server: &mut Server) {
    assert!(server.try_wait().is_none(), "the worker exited");
    let (status, body) = server.call("bob", "get_public", Some("alice"), "[\"motd\"]");
    assert_eq!((status, body), (200, json!("Hello from bob")));
}

#[test]
fn class_1_a_deep_policy_is_refused_on_push_reload_and_check() {
    let demo = Demo::new();
    let mut server = demo.serve(&[]);
    let file = demo.tmp.path().join("deep.cedar");
    std::fs::write(&file, deep_policy()).expect("write");

    let (code, stderr) = push(&server, "policy", &["bob", path(&file)]);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(stderr.contains("nested more than 32 brackets"), "{stderr}");
    still_answers(&mut server);

    // A hot reload of the same text is refused; the version before stays.
    std::fs::write(demo.dir().join("peers/bob/policy.cedar"), deep_policy()).expect("write");
    still_answers(&mut server);

    let out = peerhost()
        .args(["policy", "check"])
        .arg(&file)
        .output()
        .expect("run");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("deep.cedar:1"), "{stderr}");
    assert!(stderr.contains("nested more than 32 brackets"), "{stderr}");
}
