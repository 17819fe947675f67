use crate::support::{Demo, agent, kind, peerhost, text};
use std::path::Path;

#[test]
fn malformed_requests_get_typed_errors() {
    let demo = Demo::new();
    // Unsigned requests run as `anonymous`: let it act at alice, so that the
    // cases below reach the input they are about.
    std::fs::write(
        demo.dir().join("peers/alice/policy.cedar"),
        "@id(\"owner\") permit (principal, action, resource) when { resource in principal };\n\
         @id(\"open\") permit (principal == Peer::\"anonymous\", action, resource)\n\
         when { resource in Peer::\"alice\" };",
    )
    .expect("policy");
    let server = demo.serve(&[]);
    let cases: [(&str, &str, u16, &str, &str); 9] = [
        (
            "/v1/peers/carol/call/greet",
            "[]",
            404,
            "not-found",
            "no peer `carol`",
        ),
        (
            "/v1/peers/alice/call/nope",
            "[]",
            404,
            "not-found",
            "no function `nope`",
        ),
        (
            "/v1/peers/alice/call/greet",
            "[1, 2]",
            400,
            "invalid",
            "takes 1 argument",
        ),
        (
            "/v1/peers/alice/call/greet",
            "[\"x\",",
            400,
            "invalid",
            "line 1, column",
        ),
        (
            "/v1/peers/alice/eval",
            "{\"params\": 1}",
            400,
            "invalid",
            "script",
        ),
        (
            "/v1/peers/alice/eval",
            "{\"script\": \"let x = 1;\\nlet y = ;\"}",
            400,
            "invalid",
            "line 2, column",
        ),
        (
            "/v1/peers/alice/eval",
            "{\"script\": \"loop {}\"}",
            413,
            "limit",
            "",
        ),
        (
            "/v1/peers/alice/eval",
            "{\"script\": \"throw \\\"boom\\\"\"}",
            500,
            "failed",
            "boom",
        ),
        (
            "/v1/peers/alice/eval",
            "{\"script\": \"kv::get(\\\"\\\")\"}",
            400,
            "invalid",
            "invalid key",
        ),
    ];
    for (path, body, status, expected_kind, fragment) in cases {
        let (got, answer) = server.post(path, body);
        assert_eq!(
            (got, kind(&answer)),
            (status, expected_kind),
            "{path} {body}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(fragment),
            "{path} {body}: {message:?} lacks {fragment:?}"
        );
    }
    // Over the body limit.
    let big = format!(
        "{{\"script\": \"1\", \"params\": \"{}\"}}",
        "x".repeat(2 << 20)
    );
    // 413, or the connection closed before the whole body was sent.
    if let Ok((status, answer)) = server.try_post("/v1/peers/alice/eval", &big) {
        assert_eq!((status, kind(&answer)), (413, "limit"), "{answer}");
    }
    // A wrong method is a typed error too.
    let (status, answer) = server.get("/v1/peers/alice/eval");
    assert_eq!(status, 405, "{answer}");
    assert!(answer.contains("\"kind\":\"invalid\""), "{answer}");
    // An unsigned claim to be a peer is refused, not believed.
    let mut response = agent()
        .post(&format!("{}/v1/peers/alice/call/greet", server.url))
        .header("peerhost-caller", "alice")
        .send("[\"x\"]")
        .expect("HTTP");
    let answer: serde_json::Value = response.body_mut().read_json().expect("JSON");
    assert_eq!(
        (response.status().as_u16(), kind(&answer)),
        (400, "invalid"),
        "{answer}"
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("sign an envelope")),
        "{answer}"
    );
    // After all of that the server still answers.
    let (status, _) = server.call("alice", "greet", Some("alice"), "[\"x\"]");
    assert_eq!(status, 200);
}

/// Each case of tests/ui/invalid: `serve` refuses to start, naming the file and line.
#[test]
fn invalid_deployments_are_refused_with_file_and_line() {
    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ui/invalid");
    let mut ran = 0;
    for case in std::fs::read_dir(&cases).expect("tests/ui/invalid") {
        let case = case.expect("entry").path();
        if !case.is_dir() {
            continue;
        }
        let demo = Demo::new();
        for file in std::fs::read_dir(&case).expect("case") {
            let file = file.expect("entry").path();
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let (name, remove) = match name.strip_suffix(".remove") {
                Some(name) => (name.to_owned(), true),
                None => (name, false),
            };
            let destination = match name.as_str() {
                "peerhost.toml" => demo.dir().join(&name),
                "peer.toml" | "policy.cedar" | "contacts.toml" | "collections.toml" => {
                    demo.dir().join("peers/alice").join(&name)
                }
                _ => continue,
            };
            if remove {
                std::fs::remove_file(destination).expect("remove case file");
            } else {
                std::fs::copy(&file, destination).expect("copy case file");
            }
        }
        let out = peerhost()
            .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(demo.dir())
            .output()
            .expect("run serve");
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", case.display());
        let expected = std::fs::read_to_string(case.join("expected.txt")).expect("expected.txt");
        for line in expected.lines().filter(|l| !l.is_empty()) {
            assert!(
                stderr.contains(line),
                "{}: stderr {stderr:?} lacks {line:?}",
                case.display()
            );
        }
        ran += 1;
    }
    assert!(ran >= 12, "only {ran} cases found in {}", cases.display());
}

#[test]
fn init_never_overwrites_a_deployment() {
    let demo = Demo::new();
    let policy = demo.dir().join("peers/alice/policy.cedar");
    std::fs::write(&policy, "// mine\n").expect("write");
    let out = peerhost()
        .arg("init")
        .arg(demo.dir())
        .output()
        .expect("run init");
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    assert!(text(&out).1.contains("already exists"), "{:?}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&policy).ok().as_deref(),
        Some("// mine\n")
    );
}

/// A peer's SQLite kv store that is not a database: `serve` names the peer,
/// the backend and the cause and exits non-zero; with `[storage] on_error =
/// "isolate"` it serves the others, and that peer's kv calls are `failed`.
#[test]
fn a_corrupt_kv_database_stops_serve_or_isolates_its_peer() {
    let demo = Demo::new();
    let database = demo.dir().join("peers/bob/kv.sqlite");
    for stale in ["kv.sqlite-wal", "kv.sqlite-shm"] {
        let _ = std::fs::remove_file(demo.dir().join("peers/bob").join(stale));
    }
    std::fs::write(&database, vec![0x5a; 8192]).expect("garbage");
    let out = peerhost()
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(demo.dir())
        .output()
        .expect("run serve");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(
        stderr.contains("peer `bob`: its sqlite kv store cannot be opened")
            && stderr.contains("not a database"),
        "{stderr}"
    );

    let config = demo.dir().join("peerhost.toml");
    let mut text_ = std::fs::read_to_string(&config).expect("peerhost.toml");
    text_.push_str("\n[storage]\non_error = \"isolate\"\n");
    std::fs::write(&config, text_).expect("write");
    let server = demo.serve(&[]);
    let (status, _) = server.call("alice", "greet", Some("alice"), "[\"x\"]");
    assert_eq!(status, 200, "alice is served");
    let (status, answer) = server.eval("bob", Some("bob"), "kv::get(\"public/motd\")");
    assert_eq!(kind(&answer), "failed", "{status} {answer}");
    // The garbage is still there: nothing was written over it.
    assert_eq!(std::fs::read(&database).expect("read"), vec![0x5a; 8192]);
}
