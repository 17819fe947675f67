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

/// The owner's policy push for `bob`, sealed `ago` seconds in the past.
fn policy_push(demo: &Demo, text: &str, ago: u64) -> peerhost::envelope::Envelope {
    let invocation = peerhost::Invocation::PushPolicy {
        text: text.to_owned(),
    };
    let at = std::time::SystemTime::now() - std::time::Duration::from_secs(ago);
    peerhost::Envelope::seal(
        &key(&demo.dir(), "bob"),
        peer_id(&demo.dir(), "bob"),
        &invocation,
        0,
        at,
    )
    .expect("seal")
}

fn refused_as(answer: (u16, serde_json::Value), needle: &str) {
    let (status, body) = answer;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains(needle), "{body}");
}

#[test]
fn class_2_a_captured_push_does_not_replay_after_a_restart_nor_out_of_order() {
    let demo = Demo::new();
    let policy =
        std::fs::read_to_string(demo.dir().join("peers/bob/policy.cedar")).expect("policy");
    let granting = format!(
        "{policy}\npermit(principal == Peer::\"alice\", action == Action::\"kv.set\", resource);\n"
    );
    let grant = policy_push(&demo, &granting, 20);
    let older = policy_push(&demo, &granting, 30);
    let revoke = policy_push(&demo, &policy, 10);
    let server = demo.serve(&[]);
    assert_eq!(server.send(&grant).0, 200);
    assert_eq!(server.send(&revoke).0, 200);
    // Sealed before the revocation, never sent: still refused.
    refused_as(server.send(&older), "accepted once and in order");
    drop(server);

    let server = demo.serve(&[]);
    refused_as(server.send(&grant), "replay refused");
    let on_disk =
        std::fs::read_to_string(demo.dir().join("peers/bob/policy.cedar")).expect("policy");
    assert_eq!(on_disk, policy, "the revoked grant came back");
}

#[test]
fn class_2_an_envelope_runs_once_when_two_workers_serve_one_peer() {
    let demo = Demo::new();
    let (one, two) = (demo.serve(&[]), demo.serve(&[]));
    let invocation = peerhost::Invocation::Script {
        script: "40 + 2".into(),
        params: serde_json::Value::Null,
    };
    let envelope = sign(&demo.dir(), "alice", "bob", &invocation);
    assert_eq!(one.send(&envelope), (200, json!(42)));
    refused_as(two.send(&envelope), "replay refused");
    refused_as(one.send(&envelope), "replay refused");
}

#[test]
fn class_13_a_symlink_planted_in_the_namespace_does_not_reach_the_kv_store() {
    let demo = Demo::new();
    let server = demo.serve(&[]);
    let (status, _) = server.eval("alice", Some("alice"), "kv::set(\"secret\", \"kept\")");
    assert_eq!(status, 200);
    let data = demo.data("alice");
    std::os::unix::fs::symlink(".kv", data.join("old")).expect("symlink");
    std::os::unix::fs::symlink("../kv", data.join("up")).expect("symlink");
    std::os::unix::fs::symlink(demo.dir().join("peers/alice/kv"), data.join("abs"))
        .expect("symlink");
    for link in ["old", "up", "abs"] {
        for script in [
            format!("fs::read(\"{link}/secret\")"),
            format!("fs::write(\"{link}/secret\", \"changed\")"),
            format!("fs::list(\"{link}\")"),
        ] {
            let (status, body) = server.eval("alice", Some("alice"), &script);
            assert_ne!(status, 200, "{script}: {body}");
        }
    }
    let (status, body) = server.eval("alice", Some("alice"), "kv::get(\"secret\")");
    assert_eq!((status, body), (200, json!("kept")));
}

#[test]
fn class_4_a_contact_petnamed_like_the_peer_itself_is_refused_at_load() {
    let demo = Demo::new();
    let alice = peer_id(&demo.dir(), "alice");
    let contacts = demo.dir().join("peers/bob/contacts.toml");
    for petname in ["bob", "anonymous", "unauthenticated"] {
        std::fs::write(&contacts, format!("[{petname}]\nid = \"{alice}\"\n")).expect("write");
        let out = peerhost()
            .args(["peer", "show", "--dir"])
            .arg(demo.dir())
            .arg("bob")
            .output()
            .expect("run");
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "[{petname}] accepted");
        assert!(stderr.contains("contacts.toml"), "{stderr}");
        assert!(stderr.contains(petname), "{stderr}");
        let out = peerhost()
            .args(["serve", "--dir"])
            .arg(demo.dir())
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .expect("run");
        assert!(!out.status.success(), "a worker served [{petname}]");
    }
}

/// Makes a FIFO at `path` (nothing ever writes to it).
fn fifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo");
    assert!(status.success());
}

#[test]
fn class_12_a_fifo_planted_in_logic_or_as_policy_stalls_nothing() {
    let demo = Demo::new();
    let mut server = demo.serve(&[]);
    fifo(&demo.dir().join("peers/bob/logic/trap.rhai"));
    let started = std::time::Instant::now();
    let (status, body) = server.call("bob", "get_public", Some("alice"), "[\"motd\"]");
    assert_ne!(status, 200, "{body}");
    assert!(body.to_string().contains("trap.rhai"), "{body}");
    std::fs::remove_file(demo.dir().join("peers/bob/logic/trap.rhai")).expect("rm");
    let policy = demo.dir().join("peers/bob/policy.cedar");
    std::fs::remove_file(&policy).expect("rm");
    fifo(&policy);
    still_answers(&mut server);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the worker stalled on a FIFO"
    );
    // SIGTERM still stops it.
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while server.try_wait().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGTERM did not stop the worker"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn class_15_errors_that_leave_the_host_name_files_relative_to_the_deployment() {
    let demo = Demo::new();
    let server = demo.serve(&[]);
    let root = demo.dir().canonicalize().expect("canonical");
    let file = demo.tmp.path().join("deep.cedar");
    std::fs::write(&file, deep_policy()).expect("write");
    let (_, stderr) = push(&server, "policy", &["bob", path(&file)]);
    assert!(stderr.contains("peers/bob/policy.cedar:1"), "{stderr}");
    fifo(&demo.dir().join("peers/bob/logic/trap.rhai"));
    let (_, body) = server.call("bob", "get_public", Some("alice"), "[\"motd\"]");
    let (_, shown) = server.get("/v1/peers/bob/logic");
    for text in [stderr, body.to_string(), shown] {
        for host in [
            root.to_string_lossy(),
            demo.dir().to_string_lossy(),
            demo.tmp.path().to_string_lossy(),
        ] {
            assert!(
                !text.contains(host.as_ref()),
                "a host path left the host: {text}"
            );
        }
    }
}

#[test]
fn class_14_a_redirect_from_a_remote_worker_is_not_followed() {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    let demo = Demo::new();
    let dir = demo.dir();
    // The internal address the redirect points at: it must see nothing.
    let internal = TcpListener::bind("127.0.0.1:0").expect("bind");
    internal.set_nonblocking(true).expect("nonblocking");
    let internal_port = internal.local_addr().expect("addr").port();
    // bob's "worker": answers every request with a 302 to the internal one.
    let stub = TcpListener::bind("127.0.0.1:0").expect("bind");
    let stub_port = stub.local_addr().expect("addr").port();
    let redirects = std::thread::spawn(move || {
        stub.set_nonblocking(true).expect("nonblocking");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut answered = 0;
        while std::time::Instant::now() < deadline && answered < 1 {
            match stub.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false).expect("blocking");
                    stream
                        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                        .expect("timeout");
                    let mut head = [0u8; 65536];
                    let _ = stream.read(&mut head);
                    let answer = format!(
                        "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{internal_port}/secret\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = stream.write_all(answer.as_bytes());
                    answered += 1;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        answered
    });
    let path = dir.join("peers/alice/contacts.toml");
    let contacts = std::fs::read_to_string(&path).expect("contacts");
    std::fs::write(
        &path,
        contacts.replace(
            "http://127.0.0.1:7070",
            &format!("http://127.0.0.1:{stub_port}"),
        ),
    )
    .expect("contacts");
    let alice = Server::start(&dir, &["--peer", "alice"]);
    let (status, body) = alice.eval("alice", Some("alice"), "peers::send(\"bob\", \"1\")");
    assert_ne!(status, 200, "{body}");
    assert!(body.to_string().contains("redirect"), "{body}");
    assert_eq!(
        redirects.join().expect("stub"),
        1,
        "the stub saw no request"
    );
    assert!(internal.accept().is_err(), "the redirect was followed");
}
