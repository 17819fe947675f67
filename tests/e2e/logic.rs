//! Open logic: the deployment's library (`lib/*.rhai`), overridden and
//! extended by a peer's modules; edits on disk validated before use.

use crate::support::{Demo, kind};
use serde_json::json;
use std::time::Duration;

/// alice imports the library's `text`; bob's `logic/text.rhai` overrides it;
/// carol's extends it (imports `lib/text`, adds and replaces functions).
#[test]
fn the_library_is_imported_overridden_and_extended() {
    let demo = Demo::new();
    let out = run(&demo.dir(), None, ["peer", "new"], &["carol"]);
    assert!(out.status.success(), "{out:?}");
    let config = demo.dir().join("peerhost.toml");
    let text = std::fs::read_to_string(&config).expect("peerhost.toml");
    std::fs::write(
        &config,
        text.replace(
            "peers = [\"alice\", \"bob\"]",
            "peers = [\"alice\", \"bob\", \"carol\"]",
        ),
    )
    .expect("host carol");
    let peers = demo.dir().join("peers");
    std::fs::write(
        peers.join("bob/logic/text.rhai"),
        "fn shout(s) { \"bob says \" + s }\n",
    )
    .expect("write bob's text");
    std::fs::write(
        peers.join("carol/logic/text.rhai"),
        "import \"lib/text\" as base;\n\n/// Shouts twice.\nfn shout(s) { base::shout(s) + base::shout(s) }\nfn whisper(s) { s.to_lower() }\n",
    )
    .expect("write carol's text");
    std::fs::write(
        peers.join("carol/logic/a.rhai"),
        "import \"b\" as b;\nfn x() { 1 }\n",
    )
    .expect("write a");
    std::fs::write(
        peers.join("carol/logic/b.rhai"),
        "import \"a\" as a;\nfn y() { 2 }\n",
    )
    .expect("write b");
    let server = demo.serve(&[]);

    let (status, body) = server.call("alice", "slug", Some("alice"), "\"Hello, World 2\"");
    assert_eq!((status, body), (200, json!("hello-world-2")));
    let (status, body) = server.eval(
        "alice",
        Some("alice"),
        "import \"text\" as t; t::shout(\"a\")",
    );
    assert_eq!((status, body), (200, json!("A!")));

    // bob's module overrides the library's, which stays reachable by its full name.
    let (status, body) = server.eval("bob", Some("bob"), "import \"text\" as t; t::shout(\"a\")");
    assert_eq!((status, body), (200, json!("bob says a")));
    let (status, body) = server.eval("bob", Some("bob"), "import \"text\" as t; t::slug(\"A b\")");
    assert!(
        status == 404 && body.to_string().contains("no function t::slug"),
        "overridden entirely: {body}"
    );
    let (status, body) = server.eval(
        "bob",
        Some("bob"),
        "import \"lib/text\" as t; t::slug(\"A b\")",
    );
    assert_eq!((status, body), (200, json!("a-b")));

    // carol's extends it: replaced, added and inherited functions.
    for (script, expected) in [
        ("t::shout(\"a\")", "A!A!"),
        ("t::whisper(\"AB\")", "ab"),
        ("t::slug(\"A b\")", "a-b"),
    ] {
        let (status, body) = server.eval(
            "carol",
            Some("carol"),
            &format!("import \"text\" as t; {script}"),
        );
        assert_eq!((status, body), (200, json!(expected)), "{script}");
    }

    // A cycle and a missing module are named.
    let (status, body) = server.eval("carol", Some("carol"), "import \"a\" as a; a::x()");
    assert_eq!((status, kind(&body)), (400, "invalid"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("import cycle: logic/a.rhai → logic/b.rhai → logic/a.rhai")),
        "{body}"
    );
    let (status, body) = server.eval("carol", Some("carol"), "import \"nothing\" as n; 1");
    assert_eq!((status, kind(&body)), (404, "not-found"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no logic/nothing.rhai and no lib/nothing.rhai")),
        "{body}"
    );
}

/// An edit on disk that does not compile is refused with its file:line; the
/// version before it stays in use until a good edit replaces it.
#[test]
fn an_edit_on_disk_that_does_not_compile_is_refused_and_the_old_logic_kept() {
    let demo = Demo::new();
    let main = demo.dir().join("peers/alice/logic/main.rhai");
    let server = demo.serve(&[]);
    let (status, body) = server.call("alice", "ping", Some("alice"), "[]");
    assert_eq!((status, body), (200, json!("pong")));

    let good = std::fs::read_to_string(&main).expect("main.rhai");
    std::fs::write(&main, good.replace("\"pong\"", "\"pong\" +")).expect("break main.rhai");
    for _ in 0..3 {
        let (status, body) = server.call("alice", "ping", Some("alice"), "[]");
        assert_eq!((status, body), (200, json!("pong")), "the old logic stays");
    }
    let out = run(&demo.dir(), None, ["logic", "check"], &["alice"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("logic/main.rhai:"), "{stderr}");

    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&main, good.replace("\"pong\"", "\"pong 2\"")).expect("fix main.rhai");
    let (status, body) = server.call("alice", "ping", Some("alice"), "[]");
    assert_eq!(
        (status, body),
        (200, json!("pong 2")),
        "a good edit is used at once"
    );
}

/// `peerhost GROUP VERB --dir DIR [--url URL] REST…`.
fn run(
    dir: &std::path::Path,
    url: Option<&str>,
    words: [&str; 2],
    rest: &[&str],
) -> std::process::Output {
    let mut command = crate::support::peerhost();
    command.args(words).arg("--dir").arg(dir);
    if let Some(url) = url {
        command.args(["--url", url]);
    }
    command.args(rest).output().expect("run peerhost")
}

/// `peerhost logic|policy push PEER FILE` against `server`: exit code, stderr.
fn push(
    demo: &Demo,
    server: &crate::support::Server,
    what: &str,
    peer: &str,
    file: &std::path::Path,
) -> (Option<i32>, String) {
    let out = run(
        &demo.dir(),
        Some(&server.url),
        [what, "push"],
        &[peer, file.to_str().expect("path")],
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A client calls alice in a loop while her logic is pushed: no call fails,
/// the new behaviour answers right after the push returns, an invalid push
/// is refused with its file:line and the logic in use stays.
#[test]
fn logic_pushed_under_load_swaps_without_a_failed_call() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let demo = Demo::new();
    let server = demo.serve(&[]);
    let main = demo.dir().join("peers/alice/logic/main.rhai");
    let good = std::fs::read_to_string(&main).expect("main.rhai");
    let pushed = demo.tmp.path().join("main.rhai");

    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        let url = server.url.clone();
        let dir = demo.dir();
        std::thread::spawn(move || {
            let agent = crate::support::agent();
            let started = std::time::Instant::now();
            let mut answers = Vec::new();
            // Bounded: until told to stop, 20,000 calls or 60 s.
            while !stop.load(Ordering::Relaxed)
                && answers.len() < 20_000
                && started.elapsed() < Duration::from_secs(60)
            {
                let ping = peerhost::Invocation::Call {
                    function: "ping".into(),
                    args: json!([]),
                };
                let envelope = crate::support::sign(&dir, "alice", "alice", &ping);
                let mut response = agent
                    .post(&format!("{url}/v1/envelopes"))
                    .send_json(&envelope)
                    .expect("call ping");
                let status = response.status().as_u16();
                let body: serde_json::Value = response.body_mut().read_json().expect("JSON answer");
                answers.push((status, body));
            }
            answers
        })
    };
    std::thread::sleep(Duration::from_millis(200));

    std::fs::write(&pushed, good.replace("\"pong\"", "\"pong v2\"")).expect("write v2");
    let (code, stderr) = push(&demo, &server, "logic", "alice", &pushed);
    assert_eq!(code, Some(0), "{stderr}");
    // Right after the push returns, the new version answers.
    let (status, body) = server.call("alice", "ping", Some("alice"), "[]");
    assert_eq!((status, body), (200, json!("pong v2")));

    std::fs::write(&pushed, good.replace("\"pong\"", "\"pong\" +")).expect("write broken");
    let (code, stderr) = push(&demo, &server, "logic", "alice", &pushed);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(stderr.contains("logic/main.rhai:"), "{stderr}");
    let (status, body) = server.call("alice", "ping", Some("alice"), "[]");
    assert_eq!(
        (status, body),
        (200, json!("pong v2")),
        "the refused push changed nothing"
    );
    assert!(
        std::fs::read_to_string(&main)
            .expect("main.rhai")
            .contains("pong v2"),
        "the file on disk is the pushed version"
    );
    std::thread::sleep(Duration::from_millis(200));

    stop.store(true, Ordering::Relaxed);
    let answers = client.join().expect("client");
    assert!(
        answers.len() > 10,
        "the client made {} calls",
        answers.len()
    );
    let mut seen_new = false;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "a call failed during the swap: {body}");
        match body.as_str() {
            Some("pong") => assert!(!seen_new, "the old version answered after the new one"),
            Some("pong v2") => seen_new = true,
            _ => panic!("unexpected answer {body}"),
        }
    }
    assert!(seen_new, "the client never saw the new version");
}

/// Only the owner's key may push: alice's signature is refused at bob, and
/// audited; an anonymous push is refused before it is sent.
#[test]
fn only_the_owner_may_push() {
    let demo = Demo::new();
    let server = demo.serve(&[]);
    let file = demo.tmp.path().join("main.rhai");
    std::fs::write(&file, "fn get_public(key) { \"mine now\" }\n").expect("write");
    let out = run(
        &demo.dir(),
        Some(&server.url),
        ["logic", "push"],
        &["--as", "alice", "bob", file.to_str().expect("path")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("only `bob`'s owner"), "{stderr}");
    let audit =
        std::fs::read_to_string(demo.dir().join("peers/bob/audit/audit.jsonl")).expect("audit");
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"logic.push\"") && l.contains("\"deny\"")),
        "{audit}"
    );
    let policy = demo.tmp.path().join("open.cedar");
    std::fs::write(&policy, "permit(principal, action, resource);\n").expect("write");
    let out = run(
        &demo.dir(),
        Some(&server.url),
        ["policy", "push"],
        &["--anonymous", "bob", policy.to_str().expect("path")],
    );
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let (status, body) = server.call("bob", "get_public", Some("alice"), "[\"motd\"]");
    assert_eq!((status, body), (200, json!("Hello from bob")));
}

/// A policy push takes effect at once: alice may read bob's logic only
/// after bob grants `logic.read`; an invalid policy is refused with its line.
#[test]
fn policy_pushed_grants_logic_read_and_an_invalid_one_is_refused() {
    let demo = Demo::new();
    let server = demo.serve(&[]);
    let show = |who: &[&str]| {
        let mut rest = who.to_vec();
        rest.push("bob");
        run(&demo.dir(), Some(&server.url), ["logic", "show"], &rest)
    };
    let out = show(&["--as", "alice"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let (status, body) = server.get("/v1/peers/bob/logic");
    assert_eq!(status, 403, "{body}");

    // Reading /logic from a script is logic.read too: a grant of fs.read on
    // every path does not reveal the logic.
    let policy_path = demo.dir().join("peers/bob/policy.cedar");
    let mut policy = std::fs::read_to_string(&policy_path).expect("policy");
    policy.push_str("\n@id(\"alice-reads-files\")\npermit (principal == Peer::\"alice\", action in [Action::\"fs.read\", Action::\"fs.list\"], resource);\n");
    std::fs::write(&policy_path, &policy).expect("write");
    std::fs::create_dir_all(demo.data("bob").join("docs")).expect("mkdir");
    std::fs::write(demo.data("bob").join("docs/readme.txt"), "hi").expect("write");
    let (status, body) = server.eval("bob", Some("alice"), "fs::read(\"/docs/readme.txt\")");
    assert_eq!((status, body), (200, json!("hi")));
    let (status, body) = server.eval("bob", Some("alice"), "fs::read(\"/logic/main.rhai\")");
    assert_eq!((status, kind(&body)), (403, "denied"), "{body}");
    assert_eq!(body["error"]["action"], "logic.read", "{body}");
    let (status, body) = server.eval("bob", Some("alice"), "fs::list(\"/logic\")");
    assert_eq!((status, kind(&body)), (403, "denied"), "{body}");

    policy.push_str("\n@id(\"alice-reads-logic\")\npermit (principal == Peer::\"alice\", action == Action::\"logic.read\", resource);\n");
    let file = demo.tmp.path().join("bob.cedar");
    std::fs::write(&file, &policy).expect("write");
    let (code, stderr) = push(&demo, &server, "policy", "bob", &file);
    assert_eq!(code, Some(0), "{stderr}");
    let out = show(&["--as", "alice"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("fn get_public(name)"), "{stdout}");
    let out = run(
        &demo.dir(),
        Some(&server.url),
        ["logic", "show"],
        &["--as", "alice", "--json", "bob", "main"],
    );
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let main = &value["modules"][0];
    assert_eq!(main["file"], "logic/main.rhai");
    assert!(
        main["source"]
            .as_str()
            .is_some_and(|s| s.contains("fn get_public"))
    );
    assert!(
        main["functions"].as_array().is_some_and(|f| f
            .iter()
            .any(|f| f["name"] == "get_public" && !f["doc"].as_str().unwrap_or("").is_empty())),
        "{main}"
    );
    // Anonymous still may not; alice's scripts may now read the files too.
    let (status, _) = server.get("/v1/peers/bob/logic/main");
    assert_eq!(status, 403);
    let (status, body) = server.eval("bob", Some("alice"), "fs::read(\"/logic/main.rhai\")");
    assert!(
        status == 200 && body.as_str().is_some_and(|s| s.contains("fn get_public")),
        "{body}"
    );

    std::fs::write(
        &file,
        "permit (principal, action == Action::\"kv.nope\", resource);\n",
    )
    .expect("write");
    let (code, stderr) = push(&demo, &server, "policy", "bob", &file);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(stderr.contains("policy.cedar:1"), "{stderr}");
    let out = show(&["--as", "alice"]);
    assert!(out.status.success(), "the policy in use stayed: {out:?}");
    assert!(
        std::fs::read_to_string(&policy_path)
            .expect("policy")
            .contains("alice-reads-logic")
    );
}

/// An edit of policy.cedar on disk takes effect without a restart; one that
/// does not validate is refused and the policy before it stays.
#[test]
fn policy_edits_on_disk_are_validated_and_picked_up() {
    let demo = Demo::new();
    let server = demo.serve(&[]);
    let policy_path = demo.dir().join("peers/bob/policy.cedar");
    let (status, _) = server.call("bob", "get_public", Some("alice"), "[\"motd\"]");
    assert_eq!(status, 200);
    let good = std::fs::read_to_string(&policy_path).expect("policy");
    std::fs::write(
        &policy_path,
        format!("{good}\npermit (principal, action == Action::\"kv.nope\", resource);\n"),
    )
    .expect("break");
    let (status, _) = server.call("bob", "get_public", Some("alice"), "[\"motd\"]");
    assert_eq!(status, 200, "a broken edit is refused");
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(
        &policy_path,
        good.replace(
            "resource == Function::\"get_public\"",
            "resource == Function::\"nothing\"",
        ),
    )
    .expect("edit");
    let (status, body) = server.call("bob", "get_public", Some("alice"), "[\"motd\"]");
    assert_eq!(status, 403, "the edit is in use: {body}");
}

/// An invocation finishes under the policy it began with: alice's script,
/// busy when bob revokes her read, still reads; the next one is denied.
#[test]
fn an_invocation_in_flight_keeps_the_policy_it_began_with() {
    let demo = Demo::new();
    let server = demo.serve(&[]);
    let script = "let t = timestamp(); while t.elapsed < 0.6 {} kv::get(\"public/motd\")";
    let slow = {
        let url = server.url.clone();
        let dir = demo.dir();
        std::thread::spawn(move || {
            let invocation = peerhost::Invocation::Script {
                script: script.into(),
                params: serde_json::Value::Null,
            };
            let envelope = crate::support::sign(&dir, "alice", "bob", &invocation);
            let mut response = crate::support::agent()
                .post(&format!("{url}/v1/envelopes"))
                .send_json(&envelope)
                .expect("send");
            let status = response.status().as_u16();
            let body: serde_json::Value = response.body_mut().read_json().expect("JSON");
            (status, body)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let policy =
        std::fs::read_to_string(demo.dir().join("peers/bob/policy.cedar")).expect("policy");
    let revoked = policy.replace(
        "resource.name like \"public/*\"",
        "resource.name like \"nothing/*\"",
    );
    assert_ne!(policy, revoked);
    let file = demo.tmp.path().join("bob.cedar");
    std::fs::write(&file, revoked).expect("write");
    let (code, stderr) = push(&demo, &server, "policy", "bob", &file);
    assert_eq!(code, Some(0), "{stderr}");
    let (status, body) = server.eval("bob", Some("alice"), "kv::get(\"public/motd\")");
    assert_eq!(
        (status, kind(&body)),
        (403, "denied"),
        "the new policy is in use: {body}"
    );
    let (status, body) = slow.join().expect("slow script");
    assert_eq!(
        (status, body),
        (200, json!("Hello from bob")),
        "the script in flight finished under the policy it began with"
    );
}

#[test]
fn logic_show_lists_the_declared_collections() {
    let demo = Demo::new();
    std::fs::write(
        demo.dir().join("peers/bob/collections.toml"),
        "[posts]\nkey = \"slug\"\nindexes = [\"author\"]\n\n[posts.fields]\n\
         slug = { type = \"string\", pattern = \"^[a-z-]+$\", required = true }\n\
         author = { type = \"peer\", required = true }\n\
         tags = { type = \"array\", items = { type = \"string\" }, max_items = 4 }\n",
    )
    .expect("collections.toml");
    let out = run(
        &demo.dir(),
        None,
        ["logic", "show"],
        &["--as", "bob", "bob"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("collection posts (key slug; indexes author)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  slug: string (pattern \"^[a-z-]+$\")"),
        "{stdout}"
    );
    assert!(stdout.contains("  author: peer"), "{stdout}");
    assert!(
        stdout.contains("  tags?: array of string, max_items 4"),
        "{stdout}"
    );
    let out = run(
        &demo.dir(),
        None,
        ["logic", "show"],
        &["--as", "bob", "--json", "bob"],
    );
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(value["collections"][0]["name"], "posts");
    assert_eq!(value["collections"][0]["key"], "slug");
}
