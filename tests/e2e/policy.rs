use crate::support::{Demo, kind, text};
use serde_json::json;

#[test]
fn caller_without_grant_is_denied_naming_action_and_resource() {
    let demo = Demo::new();
    let server = demo.serve(&[]);
    // bob's policy grants alice kv.get on public/*, nothing else.
    let (status, body) = server.eval("bob", Some("alice"), "kv::get(\"private/diary\")");
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["kind"], "denied");
    assert_eq!(body["error"]["action"], "kv.get");
    assert_eq!(body["error"]["resource"], "Key::\"private/diary\"");
    assert!(!body.to_string().contains("never read"), "{body}");

    // With the grant, the same capability succeeds.
    let (status, body) = server.eval("bob", Some("alice"), "kv::get(\"public/motd\")");
    assert_eq!((status, body), (200, json!("Hello from bob")));

    // Other capabilities without a grant: each names its action and resource.
    for (script, action, resource) in [
        (
            "kv::set(\"public/motd\", 1)",
            "kv.set",
            "Key::\"public/motd\"",
        ),
        ("kv::list(\"public/\")", "kv.list", "Key::\"public/\""),
        ("fs::read(\"notes.txt\")", "fs.read", "Path::\"/notes.txt\""),
        (
            "fs::write(\"x.txt\", \"x\")",
            "fs.write",
            "Path::\"/x.txt\"",
        ),
        ("fs::list(\"/\")", "fs.list", "Path::\"/\""),
        ("log::info(\"hi\")", "log.write", "Peer::\"bob\""),
    ] {
        let (status, body) = server.eval("bob", Some("alice"), script);
        assert_eq!(status, 403, "{script}: {body}");
        assert_eq!(
            (
                body["error"]["action"].as_str(),
                body["error"]["resource"].as_str()
            ),
            (Some(action), Some(resource)),
            "{script}: {body}"
        );
    }
    assert!(!demo.data("bob").join("x.txt").exists());

    // A script can catch a denial as a typed value and go on.
    let (status, body) = server.eval(
        "bob",
        Some("alice"),
        "try { kv::get(\"private/diary\") } catch (e) { return [e.kind, e.action, e.resource]; }",
    );
    assert_eq!(
        (status, body),
        (200, json!(["denied", "kv.get", "Key::\"private/diary\""]))
    );
}

#[test]
fn default_policy_is_owner_only() {
    let demo = Demo::new();
    let server = demo.serve(&[]);
    let (status, _) = server.call("alice", "greet", Some("alice"), r#"["me"]"#);
    assert_eq!(status, 200);
    for caller in [Some("bob"), None, Some("carol")] {
        let (status, body) = server.call("alice", "greet", caller, r#"["x"]"#);
        assert_eq!((status, kind(&body)), (403, "denied"), "{caller:?}: {body}");
        assert_eq!(body["error"]["resource"], "Function::\"greet\"");
        let (status, body) = server.eval("alice", caller, "kv::get(\"greetings\")");
        assert_eq!((status, kind(&body)), (403, "denied"), "{caller:?}: {body}");
    }
}

/// A call of bob's `get_public` by alice runs with bob's authority: it reads
/// a key alice's own script may read too, but it is `call` that was granted.
/// bob's other functions are not granted to alice.
#[test]
fn call_grant_is_per_function_and_runs_with_the_peers_authority() {
    let demo = Demo::new();
    let out = demo.cli(&["call", "--as", "alice", "bob", "get_public", r#"["motd"]"#]);
    assert_eq!(
        text(&out).0.trim(),
        r#""Hello from bob""#,
        "{:?}",
        text(&out)
    );
    let out = demo.cli(&["call", "--as", "alice", "bob", "list_public"]);
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));

    // Grant alice `call` on list_public: the same call now succeeds, and the
    // function reads with bob's authority although alice has no kv.list grant.
    let policy = demo.dir().join("peers/bob/policy.cedar");
    let mut text_policy = std::fs::read_to_string(&policy).expect("policy");
    text_policy.push_str(
        "\n@id(\"alice-lists\")\npermit (principal == Peer::\"alice\", action == Action::\"call\", resource == Function::\"list_public\");\n",
    );
    std::fs::write(&policy, text_policy).expect("write policy");
    let out = demo.cli(&["call", "--as", "alice", "bob", "list_public"]);
    assert_eq!(
        text(&out).0.split_whitespace().collect::<String>(),
        r#"["public/motd"]"#,
        "{:?}",
        text(&out)
    );
}

/// `fs.list` on a directory lets a caller list it, and nothing more: the
/// entries stay unreadable, and a path the caller may not read is `denied`
/// whether it exists or not.
#[test]
fn list_grant_lists_without_reading() {
    let demo = Demo::new();
    std::fs::write(demo.data("alice").join("notes.txt"), "private notes").expect("write");
    let policy = demo.dir().join("peers/alice/policy.cedar");
    let mut text_policy = std::fs::read_to_string(&policy).expect("policy");
    text_policy.push_str(
        "\n@id(\"bob-lists-root\")\npermit (principal == Peer::\"bob\", action == Action::\"fs.list\", resource == Path::\"/\");\n\
         @id(\"bob-sends\")\npermit (principal == Peer::\"bob\", action == Action::\"script.accept\", resource);\n",
    );
    std::fs::write(&policy, text_policy).expect("write policy");
    let out = demo.cli(&["eval", "--as", "bob", "alice", "-e", "fs::list(\"/\")"]);
    assert_eq!(
        text(&out).0.split_whitespace().collect::<String>(),
        r#"["notes.txt"]"#,
        "{:?}",
        text(&out)
    );
    for path in ["notes.txt", "no-such-file.txt"] {
        let out = demo.cli(&[
            "eval",
            "--as",
            "bob",
            "alice",
            "-e",
            &format!("fs::read({path:?})"),
        ]);
        assert_eq!(out.status.code(), Some(3), "{path}: {:?}", text(&out));
        assert!(
            text(&out)
                .1
                .contains(&format!("fs.read on Path::\"/{path}\"")),
            "{:?}",
            text(&out)
        );
    }
}

/// Decisions are cached per policy version: a repeated one is answered from
/// the cache, still audited every time, and an edit of the policy is in
/// force at the very next decision (denied, then allowed again when put
/// back), with no stale answer in between.
#[test]
fn a_cached_decision_is_audited_each_time_and_an_edit_is_in_force_at_once() {
    let demo = Demo::new();
    let server = demo.serve(&[]);
    let read = "let n = 0; for i in 0..50 { if kv::get(\"public/motd\") != () { n += 1; } } n";
    let reads = || crate::support::audited(&demo.dir(), "bob", "kv.get", "public/motd");
    let (status, body) = server.eval("bob", Some("alice"), read);
    assert_eq!((status, body), (200, json!(50)));
    assert_eq!(reads(), 50, "every cached decision has its audit line");

    let path = demo.dir().join("peers/bob/policy.cedar");
    let policy = std::fs::read_to_string(&path).expect("policy");
    let revoked = policy.replace(
        "resource.name like \"public/*\"",
        "resource.name like \"nothing/*\"",
    );
    assert_ne!(policy, revoked);
    for round in 0..3 {
        std::fs::write(&path, &revoked).expect("revoke");
        let (status, body) = server.eval("bob", Some("alice"), read);
        assert_eq!(
            (status, kind(&body)),
            (403, "denied"),
            "round {round}: {body}"
        );
        std::fs::write(&path, &policy).expect("restore");
        let (status, body) = server.eval("bob", Some("alice"), read);
        assert_eq!((status, body), (200, json!(50)), "round {round}");
    }
}

/// The audit log is not optional: while it cannot be written, nothing runs
/// (bob's own write below never lands), and once it can, invocations run
/// again with their lines in it.
#[test]
fn while_the_audit_log_cannot_be_written_nothing_runs() {
    let demo = Demo::new();
    let log = demo.dir().join("peers/bob/audit/audit.jsonl");
    let _ = std::fs::remove_file(&log);
    // A directory where the log should be: every append fails.
    std::fs::create_dir_all(&log).expect("mkdir");
    let server = demo.serve(&[]);
    for round in 0..3 {
        let (status, body) = server.eval("bob", Some("bob"), "kv::set(\"written\", 1); 1");
        assert_eq!(
            (status, kind(&body)),
            (500, "failed"),
            "round {round}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("audit log of `bob` cannot be written")),
            "{body}"
        );
    }
    std::fs::remove_dir(&log).expect("rmdir");
    let (status, body) = server.eval("bob", Some("bob"), "kv::get(\"written\")");
    assert_eq!(
        (status, body),
        (200, serde_json::Value::Null),
        "nothing ran"
    );
    let text = std::fs::read_to_string(&log).expect("the log again");
    assert!(text.contains("\"action\":\"kv.get\""), "{text}");
}
