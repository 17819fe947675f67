//! The kv store on each of its backends (`[storage] kv = "sqlite" | "fs" |
//! "s3"` in bob's `peer.toml`, s3 on moto's server on loopback), through the real worker over HTTP: every operation
//! behaves alike, concurrent writers lose nothing, acknowledged writes
//! survive `kill -9`, storage quotas refuse the excess and keep the rest, and
//! a corrupt database is a `failed` answer from a worker that goes on.

use crate::moto::{CREDENTIALS, Moto};
use crate::support::{Demo, Server, kind, sign};
use peerhost::Invocation;
use serde_json::{Value, json};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The backends a peer may name in `[storage] kv`, with the S3 server the
/// s3 runs use (none, said loudly, when moto is not installed: then only
/// sqlite and fs run).
struct Backends {
    moto: Option<Moto>,
}

impl Backends {
    fn start() -> Backends {
        Backends {
            moto: Moto::start(),
        }
    }

    fn names(&self) -> Vec<&'static str> {
        let mut names = vec!["sqlite", "fs"];
        if self.moto.is_some() {
            names.push("s3");
        }
        names
    }

    /// A fresh demo whose bob keeps his kv store in `backend`: see
    /// [`demo_on`]; on s3 under a prefix of the demo's own.
    fn demo(&self, backend: &str, extra: &str) -> Demo {
        match (backend, &self.moto) {
            ("s3", Some(moto)) => {
                let demo = demo_on(backend, extra);
                let bob = demo.dir().join("peers/bob");
                std::fs::write(bob.join("s3.toml"), CREDENTIALS).expect("s3.toml");
                let prefix = format!(
                    "e2e/{}",
                    demo.dir()
                        .parent()
                        .and_then(|p| p.file_name())
                        .and_then(|n| n.to_str())
                        .expect("a temp dir name")
                );
                let mut config = std::fs::read_to_string(bob.join("peer.toml")).expect("peer.toml");
                config.push_str(&moto.section(&prefix));
                std::fs::write(bob.join("peer.toml"), config).expect("peer.toml");
                demo
            }
            ("s3", None) => panic!("s3 without moto"),
            _ => demo_on(backend, extra),
        }
    }
}

/// The suites check what the backends do, not how fast: moto answers in
/// milliseconds, and the fs store syncs every file it writes (over a
/// second for 1,100 keys on a busy disk), so scripts get 30 s instead of
/// the demo's one.
fn generous_wall_time(demo: &Demo) {
    let host = demo.dir().join("peerhost.toml");
    let text = std::fs::read_to_string(&host).expect("peerhost.toml");
    assert!(text.contains("wall_time_ms = 1000"), "{text}");
    let text = text.replace("wall_time_ms = 1000", "wall_time_ms = 30000");
    std::fs::write(&host, text).expect("peerhost.toml");
}

/// A fresh demo whose bob keeps his kv store in `backend` (his `[storage]`
/// rewritten, the rest of his `peer.toml` kept), with `extra` appended.
fn demo_on(backend: &str, extra: &str) -> Demo {
    let demo = Demo::new();
    generous_wall_time(&demo);
    let path = demo.dir().join("peers/bob/peer.toml");
    let text = std::fs::read_to_string(&path).expect("peer.toml");
    assert!(
        text.lines().any(|l| l.trim() == "[storage]"),
        "the demo's bob names his storage: {text}"
    );
    let mut kept = String::new();
    let mut in_storage = false;
    for line in text.lines() {
        if line.trim_start().starts_with('[') {
            in_storage = line.trim() == "[storage]";
        }
        if !in_storage {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept.push_str(&format!("\n[storage]\nkv = \"{backend}\"\n"));
    kept.push_str(extra);
    std::fs::write(&path, kept).expect("peer.toml");
    demo
}

/// Evaluates `script` at `peer` as `caller` (signed), with `params`.
fn eval_with(
    server: &Server,
    peer: &str,
    caller: &str,
    script: &str,
    params: Value,
) -> (u16, Value) {
    let invocation = Invocation::Script {
        script: script.to_owned(),
        params,
    };
    server.send(&sign(&server.dir, caller, peer, &invocation))
}

/// bob's answer to his own `script` with `params`, which must be a 200.
fn bob(server: &Server, backend: &str, script: &str, params: Value) -> Value {
    let (status, body) = eval_with(server, "bob", "bob", script, params);
    assert_eq!(status, 200, "{backend}: {script}\n{body}");
    body
}

/// A Rhai function that runs one kv operation on key `k` (value `v`) and
/// answers `"ok"` or the kind of the error it threw.
const KIND_OF: &str = r#"
fn kind_of(op, k, v) {
    let r = "ok";
    try {
        switch op {
            "set" => kv::set(k, v),
            "get" => kv::get(k),
            "exists" => kv::exists(k),
            "delete" => kv::delete(k),
            "increment" => kv::increment(k),
            "get_entry" => kv::get_entry(k),
            "set_if" => kv::set_if(k, v, ()),
            "get_many" => kv::get_many([k]),
            "set_many" => { let m = #{}; m[k] = v; kv::set_many(m) },
            "delete_many" => kv::delete_many([k]),
            "list" => kv::list(k),
            "list_page" => kv::list_page(k, ()),
            _ => throw "no such op: " + op,
        };
    } catch (e) {
        r = if type_of(e) == "map" { e.kind } else { `thrown: ${e}` };
    }
    r
}
"#;

#[test]
fn the_kv_conformance_suite_passes_on_every_backend() {
    let backends = Backends::start();
    for backend in backends.names() {
        let demo = backends.demo(backend, "");
        let server = demo.serve(&[]);

        // set / get / exists / delete, with JSON values of every shape.
        let body = bob(
            &server,
            backend,
            r#"
            let value = #{n: 1, s: "x", list: [1, 2.5, true, ()], nested: #{a: "b"}};
            kv::set("c/a", value);
            kv::set("c/null", ());
            #{
                got: kv::get("c/a"),
                exists: kv::exists("c/a"),
                null_exists: kv::exists("c/null"),
                absent: kv::get("c/none"),
                absent_exists: kv::exists("c/none"),
                deleted: kv::delete("c/a"),
                deleted_again: kv::delete("c/a"),
                exists_after: kv::exists("c/a"),
                get_after: kv::get("c/a"),
            }
            "#,
            Value::Null,
        );
        assert_eq!(
            body,
            json!({
                "got": {"n": 1, "s": "x", "list": [1, 2.5, true, null], "nested": {"a": "b"}},
                "exists": true,
                "null_exists": true,
                "absent": null,
                "absent_exists": false,
                "deleted": true,
                "deleted_again": false,
                "exists_after": false,
                "get_after": null,
            }),
            "{backend}"
        );

        // get_entry and compare-and-swap with the right, a stale and the
        // absent (`()`) revision.
        let body = bob(
            &server,
            backend,
            r#"
            fn kind_of_revision() {
                let r = "ok";
                try { kv::set_if("cas", 7, 12); } catch (e) { r = e.kind; }
                r
            }
            let first = kv::set_if("cas", 1, ());
            let absent_on_existing = kv::set_if("cas", 99, ());
            let entry = kv::get_entry("cas");
            let second = kv::set_if("cas", 2, entry.revision);
            let stale = kv::set_if("cas", 3, entry.revision);
            let now = kv::get_entry("cas");
            kv::set("cas", 4);
            let after_set = kv::get_entry("cas");
            kv::delete("cas");
            let stale_on_deleted = kv::set_if("cas", 5, after_set.revision);
            let third = kv::set_if("cas", 6, ());
            let bad_revision = kind_of_revision();
            #{
                first: first, absent_on_existing: absent_on_existing, entry: entry,
                second: second, stale: stale, now: now, after_set: after_set,
                stale_on_deleted: stale_on_deleted, third: third,
                value: kv::get("cas"), missing: kv::get_entry("no/such"),
                bad_revision: bad_revision,
            }
            "#,
            Value::Null,
        );
        let revision = |name: &str| -> String {
            body[name]
                .as_str()
                .unwrap_or_else(|| panic!("{backend}: {name} is a revision: {body}"))
                .to_owned()
        };
        let (first, second, third) = (revision("first"), revision("second"), revision("third"));
        assert_eq!(body["absent_on_existing"], Value::Null, "{backend}: {body}");
        assert_eq!(
            body["entry"],
            json!({"value": 1, "revision": first}),
            "{backend}"
        );
        assert_eq!(body["stale"], Value::Null, "{backend}: {body}");
        assert_eq!(
            body["now"],
            json!({"value": 2, "revision": second}),
            "{backend}"
        );
        assert_eq!(body["after_set"]["value"], 4, "{backend}: {body}");
        let after_set = body["after_set"]["revision"]
            .as_str()
            .expect("a revision")
            .to_owned();
        assert_eq!(body["stale_on_deleted"], Value::Null, "{backend}: {body}");
        assert_eq!(body["value"], 6, "{backend}: {body}");
        assert_eq!(body["missing"], Value::Null, "{backend}: {body}");
        assert_eq!(body["bad_revision"], "invalid", "{backend}: {body}");
        // Every write gives a revision never given before, even to a key
        // deleted and written again.
        let mut revisions = vec![first, second, after_set, third];
        revisions.sort();
        revisions.dedup();
        assert_eq!(revisions.len(), 4, "{backend}: {body}");

        // increment: absent counts as 0; a value that is not an integer is
        // `invalid` and stays as it was; past i64 too.
        let body = bob(
            &server,
            backend,
            &format!(
                "{KIND_OF}\n{}",
                r#"
                kv::set("word", "text");
                kv::set("float", 1.5);
                kv::set("max", 9223372036854775807);
                #{
                    one: kv::increment("cnt"),
                    six: kv::increment("cnt", 5),
                    minus: kv::increment("cnt", -10),
                    by: kv::increment("fresh", 7),
                    word: kind_of("increment", "word", ()),
                    float: kind_of("increment", "float", ()),
                    max: kind_of("increment", "max", ()),
                    word_after: kv::get("word"),
                    max_after: kv::get("max"),
                    cnt: kv::get("cnt"),
                }
                "#
            ),
            Value::Null,
        );
        assert_eq!(
            body,
            json!({
                "one": 1, "six": 6, "minus": -4, "by": 7,
                "word": "invalid", "float": "invalid", "max": "invalid",
                "word_after": "text", "max_after": i64::MAX, "cnt": -4,
            }),
            "{backend}"
        );

        // get_many / set_many / delete_many, all or none, at most 100 keys.
        let body = bob(
            &server,
            backend,
            &format!(
                "{KIND_OF}\n{}",
                r#"
                kv::set_many(#{"m/1": 1, "m/2": "two", "m/3": [3]});
                let got = kv::get_many(["m/1", "m/9", "m/3"]);
                let removed = kv::delete_many(["m/1", "m/9", "m/3"]);
                let left = kv::list("m/");
                let bad_batch = "ok";
                try { kv::set_many(#{"m/4": 4, "m/../x": 5}); } catch (e) { bad_batch = e.kind; }
                let many = [];
                for i in 0..101 { many.push(`m/x${i}`); }
                let too_many_get = "ok";
                try { kv::get_many(many); } catch (e) { too_many_get = e.kind; }
                let too_many_set = "ok";
                let map = #{};
                for k in many { map[k] = 1; }
                try { kv::set_many(map); } catch (e) { too_many_set = e.kind; }
                let too_many_delete = "ok";
                try { kv::delete_many(many); } catch (e) { too_many_delete = e.kind; }
                many.pop();
                let map = #{};
                for k in many { map[k] = 1; }
                kv::set_many(map);
                let hundred_got = kv::get_many(many);
                #{
                    got: got, removed: removed, left: left, bad_batch: bad_batch,
                    m4: kv::exists("m/4"), too_many_get: too_many_get,
                    too_many_set: too_many_set, too_many_delete: too_many_delete,
                    x100: kv::exists("m/x100"), hundred: hundred_got.len(),
                    hundred_sum: hundred_got.reduce(|sum, v| sum + v, 0),
                    hundred_deleted: kv::delete_many(many),
                    left_after: kv::list("m/"),
                }
                "#
            ),
            Value::Null,
        );
        assert_eq!(
            body,
            json!({
                "got": [1, null, [3]], "removed": 2, "left": ["m/2"],
                "bad_batch": "invalid", "m4": false,
                "too_many_get": "invalid", "too_many_set": "invalid",
                "too_many_delete": "invalid", "x100": false,
                "hundred": 100, "hundred_sum": 100, "hundred_deleted": 100,
                "left_after": ["m/2"],
            }),
            "{backend}"
        );

        // list and list_page over 250 keys, pages of 64, with neighbours
        // just outside the prefix.
        let body = bob(
            &server,
            backend,
            r#"
            for chunk in 0..3 {
                let map = #{};
                let end = (chunk + 1) * 100;
                if end > 250 { end = 250; }
                for i in (chunk * 100)..end {
                    let digits = `${i}`;
                    while digits.len() < 3 { digits = "0" + digits; }
                    map[`p/${digits}`] = i;
                }
                kv::set_many(map);
            }
            kv::set_many(#{"p": 0, "p0": 0, "o/1": 0, "p.": 0});
            #{done: true}
            "#,
            Value::Null,
        );
        assert_eq!(body, json!({"done": true}), "{backend}");
        let body = bob(
            &server,
            backend,
            r#"
            fn pages(limit) {
                let all = [];
                let cursor = ();
                let pages = [];
                loop {
                    let page = if limit == 0 { kv::list_page("p/", cursor) } else { kv::list_page("p/", cursor, limit) };
                    pages.push(page.keys.len());
                    all += page.keys;
                    cursor = page.cursor;
                    if type_of(cursor) == "()" || pages.len() > 50 { break; }
                }
                #{keys: all, pages: pages}
            }
            let big = "ok";
            try { kv::list_page("p/", (), 1001); } catch (e) { big = e.kind; }
            let negative = "ok";
            try { kv::list_page("p/", (), -1); } catch (e) { negative = e.kind; }
            let zero = "ok";
            try { kv::list_page("p/", (), 0); } catch (e) { zero = e.kind; }
            #{
                by_64: pages(64),
                by_default: pages(0),
                by_1000: pages(1000),
                list: kv::list("p/"),
                after_last: kv::list_page("p/", "p/249", 10),
                big: big,
                negative: negative,
                zero: zero,
            }
            "#,
            Value::Null,
        );
        let expected: Vec<String> = (0..250).map(|i| format!("p/{i:03}")).collect();
        assert_eq!(body["by_64"]["keys"], json!(expected), "{backend}");
        assert_eq!(body["by_64"]["pages"], json!([64, 64, 64, 58]), "{backend}");
        assert_eq!(body["by_default"]["keys"], json!(expected), "{backend}");
        assert_eq!(
            body["by_default"]["pages"],
            json!([100, 100, 50]),
            "{backend}"
        );
        assert_eq!(body["by_1000"]["pages"], json!([250]), "{backend}");
        assert_eq!(body["list"], json!(expected), "{backend}");
        assert_eq!(
            body["after_last"],
            json!({"keys": [], "cursor": null}),
            "{backend}"
        );
        assert_eq!(body["big"], "invalid", "{backend}: {body}");
        assert_eq!(body["negative"], "invalid", "{backend}: {body}");
        assert_eq!(body["zero"], "invalid", "{backend}: {body}");

        // More than 1,000 keys under one prefix: `list` is `limit`, pointing
        // to list_page; list_page still pages through them all.
        bob(
            &server,
            backend,
            r#"
            for chunk in 0..11 {
                let map = #{};
                for i in 0..100 { map[`l/${chunk}/${i}`] = i; }
                kv::set_many(map);
            }
            "#,
            Value::Null,
        );
        let (status, body) = eval_with(&server, "bob", "bob", "kv::list(\"l/\")", Value::Null);
        assert_eq!((status, kind(&body)), (413, "limit"), "{backend}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("list_page"), "{backend}: {message}");
        let body = bob(
            &server,
            backend,
            r#"
            let first = kv::list_page("l/", (), 1000);
            let rest = kv::list_page("l/", first.cursor, 1000);
            [first.keys.len(), type_of(first.cursor), rest.keys.len(), type_of(rest.cursor)]
            "#,
            Value::Null,
        );
        assert_eq!(body, json!([1000, "string", 100, "()"]), "{backend}");
        let body = bob(
            &server,
            backend,
            r#"
            let removed = 0;
            for chunk in 0..11 {
                let keys = [];
                for i in 0..100 { keys.push(`l/${chunk}/${i}`); }
                removed += kv::delete_many(keys);
            }
            [removed, kv::list("l/")]
            "#,
            Value::Null,
        );
        assert_eq!(body, json!([1100, []]), "{backend}");

        // Keys no store keeps are `invalid` for every operation, on every
        // backend; the longest key (80 bytes) and odd but good ones are kept.
        let long = "k".repeat(81);
        let bad = [
            "",
            "\t",
            "line\nbreak",
            "a\u{0}b",
            "\u{7f}",
            "..",
            "a/../b",
            "../up",
            &long,
        ];
        let ops = [
            "set",
            "get",
            "exists",
            "delete",
            "increment",
            "get_entry",
            "set_if",
            "get_many",
            "set_many",
            "delete_many",
        ];
        let body = bob(
            &server,
            backend,
            &format!(
                "{KIND_OF}\n{}",
                r#"
                let out = #{};
                for k in params.bad {
                    let kinds = [];
                    for op in params.ops { kinds.push(kind_of(op, k, 1)); }
                    out[k] = kinds;
                }
                out
                "#
            ),
            json!({"bad": bad, "ops": ops}),
        );
        for key in bad {
            assert_eq!(
                body[key],
                json!(vec!["invalid"; ops.len()]),
                "{backend}: key {key:?} (ops {ops:?}): {body}"
            );
        }
        let body = bob(
            &server,
            backend,
            &format!(
                "{KIND_OF}\n{}",
                r#"
                let long = "";
                long.pad(81, "x");
                [kind_of("list", "\t", ()), kind_of("list_page", "\t", ()),
                 kind_of("list", long, ()), kind_of("list", "", ())]
                "#
            ),
            Value::Null,
        );
        assert_eq!(
            body,
            json!(["invalid", "invalid", "invalid", "ok"]),
            "{backend}"
        );
        let longest_ascii = "k".repeat(80);
        let longest_encoded = "é".repeat(40);
        let good = [
            longest_ascii.as_str(),
            longest_encoded.as_str(),
            "a.b",
            "...",
            ".hidden",
            "%41",
            "-_",
            "a/b/",
            "ünïcode key",
            ".usage",
            ".lock",
        ];
        let body = bob(
            &server,
            backend,
            r#"
            let out = [];
            for k in params {
                kv::set(k, `value of ${k}`);
                let got = kv::get(k);
                let exists = kv::exists(k);
                let listed = k in kv::list(k);
                kv::set(k, 41);
                out.push([got, exists, listed, kv::increment(k)]);
            }
            let listed = kv::list("");
            for k in params { kv::delete(k); }
            #{out: out, listed: listed}
            "#,
            json!(good),
        );
        for (i, key) in good.iter().enumerate() {
            assert_eq!(
                body["out"][i],
                json!([format!("value of {key}"), true, true, 42]),
                "{backend}: key {key:?}: {body}"
            );
            assert!(
                body["listed"]
                    .as_array()
                    .is_some_and(|l| l.contains(&json!(key))),
                "{backend}: {key:?} is listed: {}",
                body["listed"]
            );
        }

        // Values: at most 1 MiB of JSON; one byte more is `limit`.
        let body = bob(
            &server,
            backend,
            r#"
            let s = "";
            s.pad(1048574, "x");
            kv::set("v/edge", s);
            let back = kv::get("v/edge");
            s += "x";
            let over = #{kind: "ok"};
            try { kv::set("v/over", s); } catch (e) { over = e; }
            // 600,000 quotes: a short string, twice as long in JSON.
            let quotes = "";
            quotes.pad(600000, "\"");
            let escaped = #{kind: "ok"};
            try { kv::set("v/edge", quotes); } catch (e) { escaped = e; }
            let many = #{kind: "ok"};
            try { kv::set_many(#{"v/a": 1, "v/b": quotes}); } catch (e) { many = e; }
            #{
                back: back.len(), back_same: back == s.sub_string(0, 1048574),
                over: over, escaped: escaped, many: many,
                over_exists: kv::exists("v/over"), a_exists: kv::exists("v/a"),
                edge_still: kv::get("v/edge").len(),
            }
            "#,
            Value::Null,
        );
        assert_eq!(body["back"], 1048574, "{backend}: {body}");
        assert_eq!(body["back_same"], true, "{backend}");
        for refused in ["over", "escaped", "many"] {
            assert_eq!(
                body[refused]["kind"], "limit",
                "{backend}: {refused}: {body}"
            );
            let message = body[refused]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("1048576"),
                "{backend}: {refused}: {message}"
            );
        }
        assert_eq!(body["over_exists"], false, "{backend}");
        assert_eq!(
            body["a_exists"], false,
            "{backend}: set_many is all or none"
        );
        assert_eq!(body["edge_still"], 1048574, "{backend}");
        // Uncaught, the refusal is the answer: 413 `limit`.
        let (status, body) = eval_with(
            &server,
            "bob",
            "bob",
            "let s = \"\"; s.pad(1048575, \"x\"); kv::set(\"v/over\", s)",
            Value::Null,
        );
        assert_eq!((status, kind(&body)), (413, "limit"), "{backend}: {body}");

        // Denied: alice (a contact) may send bob scripts and read public/,
        // nothing else; a denial writes nothing.
        for (script, action, resource) in [
            ("kv::increment(\"n\")", "kv.increment", "Key::\"n\""),
            ("kv::set(\"public/x\", 1)", "kv.set", "Key::\"public/x\""),
            (
                "kv::set_many(#{\"public/y\": 1})",
                "kv.set-many",
                "Key::\"public/y\"",
            ),
            (
                "kv::set_if(\"public/z\", 1, ())",
                "kv.set-if",
                "Key::\"public/z\"",
            ),
            (
                "kv::exists(\"public/motd\")",
                "kv.exists",
                "Key::\"public/motd\"",
            ),
            (
                "kv::get_entry(\"private/diary\")",
                "kv.get",
                "Key::\"private/diary\"",
            ),
            (
                "kv::list_page(\"public/\", ())",
                "kv.list",
                "Key::\"public/\"",
            ),
            (
                "kv::delete_many([\"cnt\"])",
                "kv.delete-many",
                "Key::\"cnt\"",
            ),
        ] {
            let (status, body) = eval_with(&server, "bob", "alice", script, Value::Null);
            assert_eq!(
                (status, kind(&body)),
                (403, "denied"),
                "{backend}: {script}: {body}"
            );
            assert_eq!(
                body["error"]["action"], action,
                "{backend}: {script}: {body}"
            );
            assert_eq!(
                body["error"]["resource"], resource,
                "{backend}: {script}: {body}"
            );
        }
        let (status, body) = eval_with(
            &server,
            "bob",
            "alice",
            "let r = \"written\"; try { kv::increment(\"n\"); } catch (e) { r = [e.kind, e.action]; } r",
            Value::Null,
        );
        assert_eq!(
            (status, body),
            (200, json!(["denied", "kv.increment"])),
            "{backend}"
        );
        let body = bob(
            &server,
            backend,
            "[kv::exists(\"n\"), kv::exists(\"public/x\"), kv::exists(\"public/y\"), \
             kv::exists(\"public/z\"), kv::get(\"cnt\")]",
            Value::Null,
        );
        assert_eq!(body, json!([false, false, false, false, -4]), "{backend}");
        // What alice is granted works on both; only the sqlite store holds
        // the demo's seed.
        let (status, body) = eval_with(
            &server,
            "bob",
            "alice",
            "kv::get(\"public/motd\")",
            Value::Null,
        );
        let seed = if backend == "sqlite" {
            json!("Hello from bob")
        } else {
            Value::Null
        };
        assert_eq!((status, body), (200, seed), "{backend}");

        // The backend named is the one that holds the data.
        let file = demo.dir().join("peers/bob/kv/p%2F000");
        assert_eq!(
            file.exists(),
            backend == "fs",
            "{backend}: {}",
            file.display()
        );
    }
}

#[test]
fn concurrent_increments_and_swaps_from_eight_clients_are_exact() {
    const CLIENTS: usize = 8;
    const EACH: usize = 25;
    let script = r#"
        let n = kv::increment("n");
        let tries = 0;
        let swapped = ();
        while type_of(swapped) == "()" {
            tries += 1;
            if tries > 1000 { throw "no swap in 1000 tries"; }
            let entry = kv::get_entry("swapped");
            let now = 0;
            let revision = ();
            if type_of(entry) != "()" { now = entry.value; revision = entry.revision; }
            if type_of(kv::set_if("swapped", now + 1, revision)) != "()" { swapped = now + 1; }
        }
        #{n: n, swapped: swapped, tries: tries}
    "#;
    let backends = Backends::start();
    for backend in backends.names() {
        let demo = backends.demo(backend, "");
        let server = demo.serve(&[]);
        let started = Instant::now();
        let answers: Vec<Value> = std::thread::scope(|scope| {
            let clients: Vec<_> = (0..CLIENTS)
                .map(|_| {
                    let (server, script) = (&server, &script);
                    scope.spawn(move || {
                        (0..EACH)
                            .map(|_| {
                                let (status, body) =
                                    eval_with(server, "bob", "bob", script, Value::Null);
                                assert_eq!(status, 200, "{backend}: {body}");
                                body
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            clients
                .into_iter()
                .flat_map(|c| c.join().expect("a client panicked"))
                .collect()
        });
        let elapsed = started.elapsed();
        let total = CLIENTS * EACH;
        assert_eq!(answers.len(), total);
        // Every increment and every successful swap gave a number no other
        // gave: together exactly 1..=200.
        for field in ["n", "swapped"] {
            let mut seen: Vec<i64> = answers
                .iter()
                .map(|a| a[field].as_i64().expect("a number"))
                .collect();
            seen.sort_unstable();
            assert_eq!(
                seen,
                (1..=total as i64).collect::<Vec<_>>(),
                "{backend}: {field}"
            );
        }
        let retries: i64 = answers
            .iter()
            .map(|a| a["tries"].as_i64().unwrap_or(0) - 1)
            .sum();
        eprintln!(
            "{backend}: {total} invocations from {CLIENTS} clients in {elapsed:?}, {retries} swap retries"
        );
        let body = bob(
            &server,
            backend,
            "[kv::get(\"n\"), kv::get(\"swapped\")]",
            Value::Null,
        );
        assert_eq!(body, json!([total, total]), "{backend}");
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    const MAX_WRITES: usize = 500;
    const KILL_AFTER: usize = 100;
    for backend in ["sqlite", "fs"] {
        let demo = demo_on(backend, "");
        let mut server = demo.serve(&[]);
        let acknowledged = AtomicUsize::new(0);
        let (acked, unexpected, cut) = std::thread::scope(|scope| {
            let writer = scope.spawn(|| {
                let (mut acked, mut unexpected, mut cut) = (Vec::new(), Vec::new(), false);
                let started = Instant::now();
                for i in 0..MAX_WRITES {
                    if started.elapsed() > Duration::from_secs(20) {
                        break;
                    }
                    let invocation = Invocation::Script {
                        script: format!(
                            "kv::set(\"w/{i}\", #{{i: {i}, text: \"value {i}\"}}); {i}"
                        ),
                        params: Value::Null,
                    };
                    let envelope = sign(&server.dir, "bob", "bob", &invocation);
                    let body = serde_json::to_string(&envelope).expect("envelope JSON");
                    match server.try_post("/v1/envelopes", &body) {
                        Ok((200, answer)) if answer == json!(i) => {
                            acked.push(i);
                            acknowledged.store(acked.len(), Ordering::SeqCst);
                        }
                        Ok(other) => unexpected.push((i, other)),
                        // The worker is gone.
                        Err(_) => {
                            cut = true;
                            break;
                        }
                    }
                }
                (acked, unexpected, cut)
            });
            // Kill it while the writer writes.
            let started = Instant::now();
            while acknowledged.load(Ordering::SeqCst) < KILL_AFTER
                && started.elapsed() < Duration::from_secs(10)
                && !writer.is_finished()
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            let status = std::process::Command::new("kill")
                .args(["-9", &server.pid().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -9 {}", server.pid());
            writer.join().expect("the writer panicked")
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let exit = loop {
            if let Some(exit) = server.try_wait() {
                break exit;
            }
            assert!(
                Instant::now() < deadline,
                "{backend}: kill -9 did not end the worker"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(exit.signal(), Some(9), "{backend}: {exit:?}");
        drop(server);
        assert!(
            unexpected.is_empty(),
            "{backend}: answers before the kill: {unexpected:?}"
        );
        assert!(
            acked.len() >= KILL_AFTER,
            "{backend}: only {} writes acknowledged",
            acked.len()
        );
        assert!(
            cut,
            "{backend}: the kill came after the last write, not during the writes"
        );
        eprintln!(
            "{backend}: {} writes acknowledged before kill -9",
            acked.len()
        );

        let server = Server::start(&demo.dir(), &[]);
        for chunk in acked.chunks(100) {
            let keys: Vec<String> = chunk.iter().map(|i| format!("w/{i}")).collect();
            let body = bob(&server, backend, "kv::get_many(params)", json!(keys));
            let expected: Vec<Value> = chunk
                .iter()
                .map(|i| json!({"i": i, "text": format!("value {i}")}))
                .collect();
            assert_eq!(
                body,
                json!(expected),
                "{backend}: acknowledged writes after kill -9"
            );
        }
        // The store is whole: it lists, and takes new writes.
        let body = bob(
            &server,
            backend,
            "let listed = kv::list(\"w/\").len(); kv::set(\"after\", 1); [listed, kv::increment(\"after\")]",
            Value::Null,
        );
        let listed = body[0].as_u64().expect("a count") as usize;
        // At most the one write in flight at the kill is there unacknowledged.
        assert!(
            (acked.len()..=acked.len() + 1).contains(&listed),
            "{backend}: {listed} keys listed, {} acknowledged",
            acked.len()
        );
        assert_eq!(body[1], 2, "{backend}: {body}");
    }
}

#[test]
fn a_caller_past_its_storage_quota_gets_limit_and_other_data_stays() {
    const QUOTA: u64 = 2000;
    let backends = Backends::start();
    for backend in backends.names() {
        let demo = backends.demo(
            backend,
            &format!("\n[quotas.callers.bob]\nkv_bytes = {QUOTA}\n"),
        );
        let server = demo.serve(&[]);
        // The demo's seed (68 bytes, bob's) is in the sqlite store only.
        let seed: u64 = if backend == "sqlite" { 68 } else { 0 };
        let body = bob(
            &server,
            backend,
            r#"
            let v = "";
            v.pad(100, "x");
            let written = [];
            let error = ();
            for i in 0..100 {
                if type_of(error) == "()" {
                    let k = `q/${i}`;
                    try { kv::set(k, v); written.push(k); } catch (e) { error = e; }
                }
            }
            #{written: written, error: error}
            "#,
            Value::Null,
        );
        let written: Vec<String> = body["written"]
            .as_array()
            .expect("written keys")
            .iter()
            .map(|k| k.as_str().expect("a key").to_owned())
            .collect();
        // Each key costs its bytes and those of its value's JSON text.
        let cost = |key: &str| key.len() as u64 + 102;
        let stored: u64 = seed + written.iter().map(|k| cost(k)).sum::<u64>();
        let refused = format!("q/{}", written.len());
        assert!(!written.is_empty(), "{backend}: {body}");
        assert!(
            stored <= QUOTA && stored + cost(&refused) > QUOTA,
            "{backend}: stored {stored}, refused {refused}: {body}"
        );
        assert_eq!(body["error"]["kind"], "limit", "{backend}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(
            message,
            format!(
                "kv_bytes quota of caller `bob`: {QUOTA}; stored {stored}, this write would make \
                 it {}",
                stored + cost(&refused)
            ),
            "{backend}"
        );
        // The refusal is audited with its figures.
        let refusal = format!("kv_bytes quota of caller `bob`: {QUOTA}");
        assert!(
            crate::support::audited(&demo.dir(), "bob", "quota", &refusal) > 0,
            "{backend}: no audit line says {refusal}"
        );

        // Uncaught, the same refusal is a 413 naming the figure.
        let (status, answer) = eval_with(
            &server,
            "bob",
            "bob",
            "let v = \"\"; v.pad(100, \"x\"); kv::set(\"q/over\", v)",
            Value::Null,
        );
        assert_eq!(
            (status, kind(&answer)),
            (413, "limit"),
            "{backend}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("kv_bytes"), "{backend}: {message}");
        // A set_many and an increment of new keys are refused too.
        let body = bob(
            &server,
            backend,
            r#"
            let v = "";
            v.pad(100, "x");
            let kinds = [];
            try { kv::set_many(#{"q/m1": 1, "q/m2": v}); kinds.push("ok"); } catch (e) { kinds.push(e.kind); }
            try { kv::set_if("q/cas", v, ()); kinds.push("ok"); } catch (e) { kinds.push(e.kind); }
            kinds
            "#,
            Value::Null,
        );
        assert_eq!(body, json!(["limit", "limit"]), "{backend}");

        // Nothing refused was written; everything before is intact.
        let body = bob(
            &server,
            backend,
            "[kv::get_many(params), kv::exists(\"q/over\"), kv::exists(\"q/m1\"), \
             kv::exists(\"q/cas\"), kv::get(\"public/motd\")]",
            json!(written),
        );
        let x100 = "x".repeat(100);
        assert_eq!(
            body[0],
            json!(vec![x100.as_str(); written.len()]),
            "{backend}"
        );
        assert_eq!(
            [&body[1], &body[2], &body[3]],
            [false, false, false],
            "{backend}: refused writes wrote nothing"
        );
        let motd = if backend == "sqlite" {
            json!("Hello from bob")
        } else {
            Value::Null
        };
        assert_eq!(body[4], motd, "{backend}");

        // At the limit a write that stores less is allowed, and so is one
        // of the same size; freed bytes can be used again.
        let body = bob(
            &server,
            backend,
            r#"
            let v = "";
            v.pad(100, "x");
            let w = "";
            w.pad(100, "w");
            kv::set(params[0], "small");
            kv::set(params[1], w);
            kv::delete(params[2]);
            kv::set("q/over", v);
            [kv::get(params[0]), kv::get(params[1]), kv::exists(params[2]), kv::get("q/over").len()]
            "#,
            json!([&written[0], &written[1], &written[2]]),
        );
        assert_eq!(
            body,
            json!(["small", "w".repeat(100), false, 100]),
            "{backend}"
        );
        // bob's other data stays: every value but the three touched.
        let rest = &written[3..];
        let body = bob(&server, backend, "kv::get_many(params)", json!(rest));
        assert_eq!(body, json!(vec![x100.as_str(); rest.len()]), "{backend}");
    }
}

/// The page of table `table` in the SQLite file at `path` (root page
/// number and page size), read before the file is damaged.
fn root_page(path: &std::path::Path, table: &str) -> (u64, u64) {
    let db = rusqlite::Connection::open(path).expect("open the demo's database");
    let root: i64 = db
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |row| row.get(0),
        )
        .expect("the kv table");
    let size: i64 = db
        .query_row("PRAGMA page_size", [], |row| row.get(0))
        .expect("page size");
    db.close().map_err(|(_, e)| e).expect("close");
    (root as u64, size as u64)
}

#[test]
fn a_corrupt_sqlite_database_is_a_failed_answer_not_a_panic() {
    // 1. A database whose header and schema are sound but whose kv table
    // is garbage: the worker starts (the store opens), and a read of the
    // table is `failed` at query time.
    let demo = Demo::new();
    let bob_dir = demo.dir().join("peers/bob");
    let database = bob_dir.join("kv.sqlite");
    assert!(
        !bob_dir.join("kv.sqlite-wal").exists(),
        "the demo's seed is checkpointed into kv.sqlite"
    );
    let (root, size) = root_page(&database, "kv");
    let mut bytes = std::fs::read(&database).expect("read the database");
    let page = ((root - 1) * size) as usize..(root * size) as usize;
    assert!(page.end <= bytes.len(), "{} bytes", bytes.len());
    bytes[page].fill(0x5a);
    std::fs::write(&database, &bytes).expect("damage the kv table");
    let mut server = demo.serve(&[]);
    for script in [
        "kv::get(\"public/motd\")",
        "kv::get_entry(\"public/motd\")",
        "kv::exists(\"private/diary\")",
        "kv::list(\"public/\")",
        "kv::list_page(\"\", ())",
        "kv::get_many([\"public/motd\"])",
        "kv::set(\"public/motd\", 1)",
        "kv::increment(\"n\")",
        "kv::delete(\"public/motd\")",
    ] {
        let (status, body) = eval_with(&server, "bob", "bob", script, Value::Null);
        assert_eq!(
            (status, kind(&body)),
            (500, "failed"),
            "damaged table: {script}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("sqlite"), "{script}: {message}");
        // A script sees it as a typed error it can catch.
        let caught = format!("let r = \"ok\"; try {{ {script}; }} catch (e) {{ r = e.kind; }} r");
        let (status, body) = eval_with(&server, "bob", "bob", &caught, Value::Null);
        assert_eq!((status, body), (200, json!("failed")), "{caught}");
    }
    assert!(server.try_wait().is_none(), "the worker died");
    let (status, body) = server.call("alice", "greet", Some("alice"), "[\"x\"]");
    assert_eq!(status, 200, "alice is served: {body}");
    let (status, body) = eval_with(&server, "bob", "bob", "40 + 2", Value::Null);
    assert_eq!(
        (status, body),
        (200, json!(42)),
        "bob's scripts without kv run"
    );
    assert_eq!(server.get("/healthz").0, 200);
    drop(server);

    // 2. A file that is not a database at all: with `[storage] on_error =
    // "isolate"` the worker serves, bob's kv calls are `failed`, and nothing
    // is written over the garbage.
    let demo = Demo::new();
    let database = demo.dir().join("peers/bob/kv.sqlite");
    std::fs::write(&database, vec![0x5a; 8192]).expect("garbage");
    let config = demo.dir().join("peerhost.toml");
    let mut text = std::fs::read_to_string(&config).expect("peerhost.toml");
    text.push_str("\n[storage]\non_error = \"isolate\"\n");
    std::fs::write(&config, text).expect("peerhost.toml");
    let mut server = demo.serve(&[]);
    for script in [
        "kv::get(\"public/motd\")",
        "kv::set(\"k\", 1)",
        "kv::set_if(\"k\", 1, ())",
        "kv::increment(\"k\")",
        "kv::list_page(\"\", ())",
        "kv::set_many(#{\"a\": 1, \"b\": 2})",
        "kv::delete_many([\"a\"])",
    ] {
        let (status, body) = eval_with(&server, "bob", "bob", script, Value::Null);
        assert_eq!(
            (status, kind(&body)),
            (500, "failed"),
            "not a database: {script}: {body}"
        );
    }
    assert!(server.try_wait().is_none(), "the worker died");
    let (status, body) = server.call("alice", "greet", Some("alice"), "[\"x\"]");
    assert_eq!(status, 200, "alice is served: {body}");
    assert_eq!(std::fs::read(&database).expect("read"), vec![0x5a; 8192]);
}
