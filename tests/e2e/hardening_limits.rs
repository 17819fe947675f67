//! Hardening tests (see the module doc in main.rs): per-invocation bounds.
//! Each test once failed on a shared worker: a client string copied whole
//! into an audit line, a denied call looped into thousands of lines, a
//! delegated script writing without end, a kv value no reader accepts.

use crate::support::*;
use serde_json::{Value, json};

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

#[test]
fn class_16_a_kv_value_nested_past_the_readers_limit_is_refused_and_one_at_it_reads_back() {
    let demo = Demo::new();
    let server = demo.serve(&[]);
    let nest = |depth: u32| format!("let v = 0; for i in 0..{depth} {{ v = [v]; }}");
    let depth_read = "let r = kv::get(\"deep\"); let d = 0;\n\
                      while type_of(r) == \"array\" { r = r[0]; d += 1; }\n\
                      d";
    let (status, body) = server.eval(
        "alice",
        Some("alice"),
        &format!("{} kv::set(\"deep\", v); {depth_read}", nest(127)),
    );
    assert_eq!((status, body), (200, json!(127)));
    let (status, body) = server.eval("alice", Some("alice"), depth_read);
    assert_eq!((status, body), (200, json!(127)));

    let (status, body) = server.eval(
        "alice",
        Some("alice"),
        &format!("{} kv::set(\"deeper\", v)", nest(128)),
    );
    assert_eq!((status, kind(&body)), (400, "invalid"), "{body}");
    assert!(
        message(&body).contains("nested more than 127 arrays or objects deep")
            && message(&body).contains("could not be read back"),
        "{body}"
    );
    let (status, body) = server.eval("alice", Some("alice"), "kv::get(\"deeper\")");
    assert_eq!((status, body), (200, Value::Null));
}
