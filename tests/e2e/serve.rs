use crate::support::{Demo, kind, text};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every file under `root` except those under `skip`, with its contents.
/// Every file under `root` but those under `skip` and the audit logs
/// (which the host appends to on every decision).
fn snapshot(root: &Path, skip: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            // The peer's own namespace, its kv store, audit and replay state.
            let peer = skip.parent().unwrap_or(skip);
            // SQLite's WAL and shared-memory index change on reads too.
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if path.starts_with(skip)
                || path.starts_with(peer.join("kv"))
                || path.starts_with(peer.join("kv.sqlite"))
                || name.ends_with(".sqlite-wal")
                || name.ends_with(".sqlite-shm")
                || path.ends_with("audit")
                || path.ends_with("state")
            {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).expect("read"));
            }
        }
    }
    files
}

#[test]
fn shared_worker_serves_alice_and_bob_over_http() {
    let demo = Demo::new();
    let alice_data = demo.data("alice");
    let before = snapshot(&demo.dir(), &alice_data);
    let server = demo.serve(&[]);
    assert!(server.banner.contains("alice, bob"), "{}", server.banner);

    assert_eq!(server.get("/healthz"), (200, "ok".to_owned()));
    let (status, peers) = server.get("/v1/peers");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&peers).ok(),
        Some(json!({"peers": ["alice", "bob"]}))
    );

    let (status, body) = server.call("alice", "greet", Some("alice"), r#"["carol"]"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!("Hello, carol! This is greeting number 1 from alice.")
    );
    let (_, body) = server.call("alice", "greet", Some("alice"), r#"["dave"]"#);
    assert_eq!(
        body,
        json!("Hello, dave! This is greeting number 2 from alice.")
    );

    let (status, body) = server.call("alice", "note", Some("alice"), r#""buy milk""#);
    assert_eq!((status, body), (200, json!("buy milk\n")));
    let (status, body) = server.call("alice", "files", Some("alice"), "");
    assert_eq!((status, body), (200, json!(["notes.txt"])));

    let (status, body) = server.call("bob", "get_public", Some("alice"), r#"["motd"]"#);
    assert_eq!((status, body), (200, json!("Hello from bob")));

    // alice's writes landed in alice's namespace, and nowhere else changed.
    assert_eq!(
        std::fs::read_to_string(alice_data.join("notes.txt"))
            .ok()
            .as_deref(),
        Some("buy milk\n")
    );
    // The demo's kv is SQLite: the counter is a row of alice's database.
    let db =
        rusqlite::Connection::open(demo.dir().join("peers/alice/kv.sqlite")).expect("kv.sqlite");
    let counter: String = db
        .query_row("SELECT value FROM kv WHERE key = 'greetings'", [], |row| {
            row.get(0)
        })
        .expect("the greetings counter");
    assert_eq!(counter, "2");
    drop(db);
    drop(server);
    assert_eq!(
        snapshot(&demo.dir(), &alice_data),
        before,
        "files outside peers/alice/data changed"
    );
}

#[test]
fn cli_runs_in_process_and_against_a_server() {
    let demo = Demo::new();
    let out = demo.cli(&["call", "alice", "greet", r#"["bob"]"#]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout.trim(),
        r#""Hello, bob! This is greeting number 1 from alice.""#
    );

    let out = demo.cli(&[
        "eval",
        "alice",
        "-e",
        "kv::get(\"greetings\") + params.add",
        "--params",
        r#"{"add": 40}"#,
    ]);
    assert_eq!(text(&out).0.trim(), "41", "{:?}", text(&out));

    let script = demo.tmp.path().join("script.rhai");
    std::fs::write(
        &script,
        "fs::write(\"from-file.txt\", \"hi\");\nfs::list(\"/\")",
    )
    .expect("write script");
    let out = demo.cli(&["eval", "alice", script.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(demo.data("alice").join("from-file.txt").exists());

    let server = demo.serve(&[]);
    let out = server.cli(&["call", "--as", "alice", "bob", "get_public", r#"["motd"]"#]);
    assert_eq!(
        text(&out).0.trim(),
        r#""Hello from bob""#,
        "{:?}",
        text(&out)
    );
    let out = server.cli(&["eval", "alice", "-e", "kv::get(\"greetings\")"]);
    assert_eq!(text(&out).0.trim(), "1", "{:?}", text(&out));

    // Errors: kind and message on stderr, an exit code per kind.
    let out = server.cli(&["call", "--as", "alice", "bob", "remember", r#"["k", 1]"#]);
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
    assert!(
        text(&out)
            .1
            .starts_with("denied: call on Function::\"remember\""),
        "{:?}",
        text(&out)
    );
    let out = demo.cli(&["call", "alice", "no_such_function"]);
    assert_eq!(out.status.code(), Some(4), "{:?}", text(&out));
    let out = demo.cli(&["eval", "alice", "-e", "let x = ;"]);
    assert_eq!(out.status.code(), Some(5), "{:?}", text(&out));
    // Bad JSON on the command line is `invalid` too, before anything runs.
    let out = demo.cli(&["call", "alice", "greet", "[oops"]);
    assert_eq!(out.status.code(), Some(5), "{:?}", text(&out));
    assert!(
        text(&out)
            .1
            .starts_with("invalid: ARGS_JSON is not valid JSON"),
        "{:?}",
        text(&out)
    );
    let out = demo.cli(&["eval", "alice", "/no/such/script.rhai"]);
    assert_eq!(out.status.code(), Some(5), "{:?}", text(&out));
}

#[test]
fn isolated_worker_answers_only_for_its_peer() {
    let demo = Demo::new();
    let server = demo.serve(&["--peer", "alice"]);
    assert!(server.banner.contains("isolated"), "{}", server.banner);
    let (status, _) = server.call("alice", "greet", Some("alice"), r#"["x"]"#);
    assert_eq!(status, 200);
    let (status, body) = server.call("bob", "get_public", Some("alice"), r#"["motd"]"#);
    assert_eq!((status, kind(&body)), (404, "not-found"), "{body}");
    let (_, peers) = server.get("/v1/peers");
    assert_eq!(peers, r#"{"peers":["alice"]}"#);
}

#[test]
fn interrupt_drains_and_exits() {
    let demo = Demo::new();
    let mut server = demo.serve(&[]);
    let pid = server.pid();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = server.try_wait() {
            assert!(status.success(), "serve exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "serve did not exit after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `logic/<name>.rhai` is a module for `import`; `private` functions are not exported.
#[test]
fn logic_modules_are_importable_and_private_functions_hidden() {
    let demo = Demo::new();
    let logic = demo.dir().join("peers/alice/logic");
    std::fs::write(
        logic.join("text.rhai"),
        "fn shout(s) { s.to_upper() + \"!\" }\n",
    )
    .expect("write module");
    let mut main = std::fs::read_to_string(logic.join("main.rhai")).expect("main.rhai");
    main.push_str("\nimport \"text\" as text;\n\n/// Shouts.\nfn loud(x) { text::shout(x) }\n\nprivate fn secret() { 42 }\n");
    std::fs::write(logic.join("main.rhai"), main).expect("write main.rhai");
    let server = demo.serve(&[]);
    let (status, body) = server.call("alice", "loud", Some("alice"), "\"hi\"");
    assert_eq!((status, body), (200, json!("HI!")));
    let (status, body) = server.eval(
        "alice",
        Some("alice"),
        "import \"text\" as t; t::shout(\"yo\")",
    );
    assert_eq!((status, body), (200, json!("YO!")));
    let (status, body) = server.call("alice", "secret", Some("alice"), "[]");
    assert_eq!((status, kind(&body)), (404, "not-found"), "{body}");
    let (status, body) = server.eval("alice", Some("alice"), "import \"nope\" as t; 1");
    assert_eq!((status, kind(&body)), (404, "not-found"), "{body}");
}
