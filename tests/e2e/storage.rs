//! `peerhost storage migrate` and `clean` over the real binary: every value
//! survives fs → sqlite → s3 → sqlite on the demo with 10,000 keys (s3 on
//! moto's server on loopback; fs in its place, said loudly, without it), and
//! a peer being served is refused.

use crate::moto::{CREDENTIALS, Moto};
use crate::support::{Demo, peerhost, text};
use serde_json::json;

/// Writes 500 keys at bob from `params` * 500 (5 `set_many` of 100); run
/// 20 times for 10,000 (one invocation has a second of wall time).
const FILL: &str = "for b in 0..5 { let m = #{}; for i in 0..100 { let n = params * 500 + b * 100 + i; \
                    m[`many/${n}`] = #{ n: n, text: `value ${n}` }; } kv::set_many(m); } 500";

/// Checks one page of 1,000 of bob's `many/` keys after the cursor in
/// `params`: `[keys, bad values, next cursor]`.
const CHECK: &str = "let page = kv::list_page(\"many/\", params, 1000); let bad = 0; \
                     for k in page.keys { let v = kv::get(k); \
                     if v.text != `value ${v.n}` || k != `many/${v.n}` { bad += 1; } } \
                     [page.keys.len(), bad, page.cursor]";

fn migrate(demo: &Demo, to: &str) -> (bool, String, String) {
    let out = peerhost()
        .args(["storage", "migrate", "--dir"])
        .arg(demo.dir())
        .args(["bob", "--to", to])
        .output()
        .expect("run storage migrate");
    let (stdout, stderr) = text(&out);
    (out.status.success(), stdout, stderr)
}

#[test]
fn a_migration_round_trip_keeps_every_one_of_10000_values() {
    let demo = Demo::new();
    let moto = Moto::start();
    let bob = demo.dir().join("peers/bob");
    if let Some(moto) = &moto {
        std::fs::write(bob.join("s3.toml"), CREDENTIALS).expect("s3.toml");
        let mut config = std::fs::read_to_string(bob.join("peer.toml")).expect("peer.toml");
        config.push_str(&moto.section("e2e/migrate"));
        std::fs::write(bob.join("peer.toml"), config).expect("peer.toml");
    }
    {
        let server = demo.serve(&[]);
        for part in 0..20 {
            let invocation = peerhost::Invocation::Script {
                script: FILL.to_owned(),
                params: json!(part),
            };
            let envelope = crate::support::sign(&demo.dir(), "bob", "bob", &invocation);
            let (status, answer) = server.send(&envelope);
            assert_eq!((status, answer), (200, json!(500)), "part {part}");
        }
        // While bob is served, a migration is refused and changes nothing.
        let (ok, _, stderr) = migrate(&demo, "fs");
        assert!(!ok, "migrated while served");
        assert!(
            stderr.contains("peer `bob` is being served by a worker"),
            "{stderr}"
        );
    }
    let config = demo.dir().join("peers/bob/peer.toml");
    assert!(
        std::fs::read_to_string(&config)
            .expect("peer.toml")
            .contains("kv = \"sqlite\"")
    );
    let mut hashes = Vec::new();
    let third = if moto.is_some() { "s3" } else { "fs" };
    for to in ["fs", "sqlite", third, "sqlite"] {
        let (ok, stdout, stderr) = migrate(&demo, to);
        assert!(ok, "to {to}: {stderr}");
        // The seed's two keys beside the 10,000.
        assert!(stdout.contains("10002 keys copied"), "{stdout}");
        let hash = stdout
            .split("sha256 ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .expect("a hash")
            .to_owned();
        hashes.push(hash);
        assert!(
            std::fs::read_to_string(&config)
                .expect("peer.toml")
                .contains(&format!("kv = \"{to}\"")),
            "peer.toml names {to}"
        );
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    let (ok, _, stderr) = migrate(&demo, "sqlite");
    assert!(!ok && stderr.contains("already"), "{stderr}");

    let server = demo.serve(&[]);
    let (mut cursor, mut keys, mut pages) = (serde_json::Value::Null, 0, 0);
    loop {
        let invocation = peerhost::Invocation::Script {
            script: CHECK.to_owned(),
            params: cursor.clone(),
        };
        let envelope = crate::support::sign(&demo.dir(), "bob", "bob", &invocation);
        let (status, answer) = server.send(&envelope);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer[1], 0, "bad values after {cursor}: {answer}");
        keys += answer[0].as_u64().expect("a count");
        pages += 1;
        cursor = answer[2].clone();
        if cursor.is_null() || pages > 20 {
            break;
        }
    }
    assert_eq!((keys, pages), (10_000, 10));
    let (_, motd) = server.eval("bob", Some("bob"), "kv::get(\"public/motd\")");
    assert_eq!(motd, json!("Hello from bob"));
    drop(server);

    // The fs store (and the S3 objects) left behind go with `clean`; the
    // one in use stays.
    let out = peerhost()
        .args(["storage", "clean", "--dir"])
        .arg(demo.dir())
        .arg("bob")
        .output()
        .expect("run storage clean");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("removed") && stdout.contains("peers/bob/kv"),
        "{stdout}"
    );
    if moto.is_some() {
        assert!(
            stdout.contains("removed s3://peerhost-test/e2e/migrate"),
            "{stdout}"
        );
    }
    assert!(!demo.dir().join("peers/bob/kv").exists());
    assert!(demo.dir().join("peers/bob/kv.sqlite").exists());
}

/// bob's files move dir → sqlite → s3 → dir (s3 left out, loudly, without
/// moto): each copy checked by the same hash, the worker reads the same
/// files after, and `clean` removes what the namespace left behind.
#[test]
fn files_move_between_the_namespace_backends_and_clean_removes_what_is_left() {
    let demo = Demo::new();
    let moto = Moto::start();
    if let Some(moto) = &moto {
        demo.set_s3("bob", moto);
    }
    const READ: &str = r#"[fs::list("/"), fs::list("docs"), fs::read("docs/a.txt"),
        fs::stat("docs/big.txt").size, fs::read_at("docs/big.txt", 99995, 5), fs::list("empty")]"#;
    let before = {
        let server = demo.serve(&[]);
        let (status, answer) = server.eval(
            "bob",
            Some("bob"),
            r#"fs::mkdir("docs"); fs::mkdir("empty"); fs::write("docs/a.txt", "alpha");
               let big = ""; for i in 0..10000 { big += "0123456789"; }
               fs::write("docs/big.txt", big); 1"#,
        );
        assert_eq!(status, 200, "{answer}");
        let (status, answer) = server.eval("bob", Some("bob"), READ);
        assert_eq!(status, 200, "{answer}");
        answer
    };
    let config = demo.dir().join("peers/bob/peer.toml");
    let mut hashes = Vec::new();
    let mut hops = vec!["sqlite"];
    if moto.is_some() {
        hops.push("s3");
    }
    hops.push("dir");
    for to in hops {
        let out = peerhost()
            .args(["storage", "migrate", "--dir"])
            .arg(demo.dir())
            .args(["bob", "--fs", to])
            .output()
            .expect("run storage migrate");
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "to {to}: {stderr}");
        assert!(stdout.contains(&format!("copied to {to}")), "{stdout}");
        hashes.push(
            stdout
                .split("sha256 ")
                .nth(1)
                .and_then(|rest| rest.split(')').next())
                .expect("a hash")
                .to_owned(),
        );
        assert!(
            std::fs::read_to_string(&config)
                .expect("peer.toml")
                .contains(&format!("fs = \"{to}\"")),
            "peer.toml names {to}"
        );
        let server = demo.serve(&[]);
        let (status, answer) = server.eval("bob", Some("bob"), READ);
        assert_eq!((status, &answer), (200, &before), "on {to}");
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    let out = peerhost()
        .args(["storage", "clean", "--dir"])
        .arg(demo.dir())
        .arg("bob")
        .output()
        .expect("run storage clean");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("kv.sqlite: its files"), "{stdout}");
    if moto.is_some() {
        assert!(stdout.contains("/fs"), "{stdout}");
    }
    // The kv store stays where it is, and so do the files in use.
    assert!(demo.dir().join("peers/bob/kv.sqlite").exists());
    let server = demo.serve(&[]);
    let (status, answer) = server.eval("bob", Some("bob"), READ);
    assert_eq!((status, &answer), (200, &before));
    let (_, motd) = server.eval("bob", Some("bob"), "kv::get(\"public/motd\")");
    assert_eq!(motd, json!("Hello from bob"));
}
