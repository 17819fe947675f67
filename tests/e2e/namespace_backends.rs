//! The namespace on every backend: the same Rhai `fs` script gives the
//! same answers with bob's files in `data/` (`fs = "dir"`) and in his
//! `kv.sqlite` (`fs = "sqlite"`); paths outside the namespace are refused
//! on both; a sqlite namespace keeps nothing in `data/` and survives a
//! restart.

use crate::support::{Demo, kind};
use serde_json::{Value, json};

/// A demo whose bob keeps his namespace on `fs`.
fn demo_on(fs: &str) -> Demo {
    let demo = Demo::new();
    demo.set_fs("bob", fs);
    demo
}

/// Every operation of the `fs` module, its answers in one array.
const CONFORMANCE: &str = r#"
let out = [];
fs::write("a.txt", "hello world");
out.push(fs::read("a.txt"));
fs::write("a.txt", "HELLO");
out.push(fs::read("a.txt"));
fs::append("a.txt", " again");
fs::append("new.txt", "created by append");
out.push(fs::read("a.txt"));
out.push(fs::read("new.txt"));
out.push(fs::read_at("a.txt", 6, 3));
out.push(fs::read_at("a.txt", 100, 3));
out.push(fs::stat("a.txt"));
fs::mkdir("d/e/f");
fs::write("d/e/f/deep.txt", "deep");
out.push(fs::stat("d/e"));
out.push(fs::list("/"));
out.push(fs::list("d/e"));
let big = "";
for i in 0..2000 { big += "0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"; }
fs::write("big.txt", big);
out.push(fs::stat("big.txt").size);
out.push(fs::read("big.txt") == big);
out.push(fs::read_at("big.txt", 65530, 12));
fs::write("b.txt", "bee");
fs::rename("b.txt", "a.txt");
out.push(fs::read("a.txt"));
out.push(fs::list("/"));
fs::rename("d", "moved");
out.push(fs::read("moved/e/f/deep.txt"));
for bad in [
    || fs::rmdir("moved"),
    || fs::read("missing.txt"),
    || fs::read("../kv.sqlite"),
    || fs::read("a\x00b"),
    || fs::remove("moved"),
    || fs::mkdir("a.txt/sub"),
] {
    try { bad.call(); out.push("no error"); } catch (e) { out.push(e.kind); }
}
fs::remove("moved/e/f/deep.txt");
fs::rmdir("moved/e/f");
fs::rmdir("moved/e");
fs::rmdir("moved");
fs::remove("big.txt");
out.push(fs::list("/"));
out
"#;

fn expected() -> Value {
    json!([
        "hello world",
        "HELLO",
        "HELLO again",
        "created by append",
        "aga",
        "",
        {"kind": "file", "size": 11},
        {"kind": "dir", "size": 0},
        ["a.txt", "d/", "new.txt"],
        ["f/"],
        144000,
        true,
        "abcdefghijkl",
        "bee",
        ["a.txt", "big.txt", "d/", "new.txt"],
        "deep",
        "invalid",
        "not-found",
        "invalid",
        "invalid",
        "invalid",
        "invalid",
        ["a.txt", "new.txt"],
    ])
}

#[test]
fn the_fs_module_answers_the_same_on_a_directory_and_in_sqlite() {
    for fs in ["sqlite", "dir"] {
        let demo = demo_on(fs);
        let server = demo.serve(&[]);
        let (status, answer) = server.eval("bob", Some("bob"), CONFORMANCE);
        assert_eq!(status, 200, "{fs}: {answer}");
        let got = &answer;
        let want = expected();
        for (i, (g, w)) in got
            .as_array()
            .into_iter()
            .flatten()
            .zip(want.as_array().into_iter().flatten())
            .enumerate()
        {
            assert_eq!(g, w, "{fs}: answer {i} of {got}");
        }
        assert_eq!(got, &want, "{fs}");
        let in_data: Vec<_> = std::fs::read_dir(demo.data("bob"))
            .expect("data/")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        match fs {
            "dir" => assert_eq!(in_data.len(), 2, "{in_data:?}"),
            _ => assert!(
                in_data.is_empty(),
                "sqlite keeps nothing in data/: {in_data:?}"
            ),
        }
    }
}

#[test]
fn a_sqlite_namespace_keeps_its_files_across_a_restart_and_other_peers_stay_out() {
    let demo = demo_on("sqlite");
    let server = demo.serve(&[]);
    let (status, answer) = server.eval(
        "bob",
        Some("bob"),
        r#"fs::mkdir("notes"); fs::write("notes/a.txt", "kept"); 1"#,
    );
    assert_eq!(status, 200, "{answer}");
    drop(server);
    let server = demo.serve(&[]);
    let (status, answer) = server.eval("bob", Some("bob"), r#"fs::read("notes/a.txt")"#);
    assert_eq!((status, &answer), (200, &json!("kept")), "{answer}");
    // alice's namespace is her own directory: bob's files are not there.
    let (_, answer) = server.eval("alice", Some("alice"), r#"fs::read("notes/a.txt")"#);
    assert_eq!(kind(&answer), "not-found", "{answer}");
    // A stranger's script at bob is decided by bob's policy, as on a directory.
    let (_, answer) = server.eval("bob", Some("alice"), r#"fs::read("notes/a.txt")"#);
    assert_eq!(kind(&answer), "denied", "{answer}");
}
