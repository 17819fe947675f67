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
    let out = demo.cli(&["peer", "new", "carol"]);
    assert!(out.status.success(), "{out:?}");
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
    assert_eq!(status, 404, "overridden entirely: {body}");
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
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("import cycle: logic/a.rhai → logic/b.rhai → logic/a.rhai")),
        "{body}"
    );
    let (status, body) = server.eval("carol", Some("carol"), "import \"nothing\" as n; 1");
    assert_eq!((status, kind(&body)), (404, "not-found"), "{body}");
    assert!(
        body["message"]
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
    let out = demo.cli(&["logic", "check", "alice"]);
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
