//! The namespace on every backend: the same Rhai `fs` script gives the
//! same answers with bob's files in `data/` (`fs = "dir"`), in his
//! `kv.sqlite` (`fs = "sqlite"`) and in an S3 bucket (`fs = "s3"`, moto on
//! loopback; said loudly and left out without it); paths outside the
//! namespace are refused on all; sqlite and s3 keep nothing in `data/` and
//! survive a restart; `fs_bytes` holds on each; a peer whose kv and files
//! are on s3 is served by a second worker with nothing of the first's disk.

use crate::moto::Moto;
use crate::support::{Demo, Server, kind, peerhost, text};
use serde_json::{Value, json};

/// The namespace backends, with the S3 server the s3 runs use.
struct Backends {
    moto: Option<Moto>,
}

impl Backends {
    fn start() -> Backends {
        Backends {
            moto: Moto::start(),
        }
    }

    /// `dir` and `sqlite`, and `s3` when moto runs; `dir` left out when
    /// `all` is false.
    fn names(&self, all: bool) -> Vec<&'static str> {
        let mut names = vec!["sqlite"];
        if all {
            names.push("dir");
        }
        if self.moto.is_some() {
            names.push("s3");
        }
        names
    }

    /// A demo whose bob keeps his namespace on `fs`. The suites check what
    /// the backends do, not how fast: moto answers in milliseconds, so
    /// scripts get 30 s of wall time instead of the demo's one.
    fn demo(&self, fs: &str) -> Demo {
        let demo = Demo::new();
        let host = demo.dir().join("peerhost.toml");
        let text = std::fs::read_to_string(&host).expect("peerhost.toml");
        assert!(text.contains("wall_time_ms = 1000"), "{text}");
        std::fs::write(
            &host,
            text.replace("wall_time_ms = 1000", "wall_time_ms = 30000"),
        )
        .expect("peerhost.toml");
        if let ("s3", Some(moto)) = (fs, &self.moto) {
            demo.set_s3("bob", moto);
        }
        demo.set_fs("bob", fs);
        demo
    }
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
fn the_fs_module_answers_the_same_on_a_directory_in_sqlite_and_in_s3() {
    let backends = Backends::start();
    for fs in backends.names(true) {
        let demo = backends.demo(fs);
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
                "{fs} keeps nothing in data/: {in_data:?}"
            ),
        }
    }
}

#[test]
fn a_namespace_in_sqlite_or_s3_keeps_its_files_across_a_restart_and_other_peers_stay_out() {
    let backends = Backends::start();
    for fs in backends.names(false) {
        let demo = backends.demo(fs);
        let server = demo.serve(&[]);
        let (status, answer) = server.eval(
            "bob",
            Some("bob"),
            r#"fs::mkdir("notes"); fs::write("notes/a.txt", "kept"); 1"#,
        );
        assert_eq!(status, 200, "{fs}: {answer}");
        drop(server);
        let server = demo.serve(&[]);
        let (status, answer) = server.eval("bob", Some("bob"), r#"fs::read("notes/a.txt")"#);
        assert_eq!((status, &answer), (200, &json!("kept")), "{fs}: {answer}");
        // alice's namespace is her own directory: bob's files are not there.
        let (_, answer) = server.eval("alice", Some("alice"), r#"fs::read("notes/a.txt")"#);
        assert_eq!(kind(&answer), "not-found", "{fs}: {answer}");
        // A stranger's script at bob is decided by bob's policy, as on a
        // directory.
        let (_, answer) = server.eval("bob", Some("alice"), r#"fs::read("notes/a.txt")"#);
        assert_eq!(kind(&answer), "denied", "{fs}: {answer}");
    }
}

/// bob's `fs_bytes` on each backend: writes within it land, the one past it
/// is `limit` with the figures and none of its bytes, removals and
/// overwrites give bytes back, `peer stats` counts what the backend holds.
#[test]
fn fs_bytes_holds_on_sqlite_and_s3() {
    let backends = Backends::start();
    for fs in backends.names(false) {
        let demo = backends.demo(fs);
        let config = demo.dir().join("peers/bob/peer.toml");
        let mut toml = std::fs::read_to_string(&config).expect("peer.toml");
        toml.push_str("\n[quotas]\nfs_bytes = 3000\n");
        std::fs::write(&config, toml).expect("peer.toml");
        let server = demo.serve(&[]);
        let write = |server: &Server, path: &str, bytes: usize| {
            server.eval(
                "bob",
                Some("bob"),
                &format!("let s = \"\"; s.pad({bytes}, 'x'); fs::write(\"{path}\", s); {bytes}"),
            )
        };
        assert_eq!(write(&server, "a.txt", 1000), (200, json!(1000)), "{fs}");
        assert_eq!(write(&server, "b.txt", 1500), (200, json!(1500)), "{fs}");
        let (status, body) = write(&server, "c.txt", 1000);
        assert_eq!((status, kind(&body)), (413, "limit"), "{fs}: {body}");
        let figures =
            "fs_bytes quota of the peer: 3000; stored 2500, this write would make it 3500";
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(figures)),
            "{fs}: {body}"
        );
        let (status, body) = server.eval(
            "bob",
            Some("bob"),
            r#"[fs::stat("a.txt").size, fs::stat("c.txt").size]"#,
        );
        assert_eq!((status, body), (200, json!([1000, 0])), "{fs}");
        assert_eq!(write(&server, "a.txt", 1400), (200, json!(1400)), "{fs}");
        let (status, body) = server.eval("bob", Some("bob"), r#"fs::remove("b.txt"); 0"#);
        assert_eq!(status, 200, "{fs}: {body}");
        assert_eq!(write(&server, "c.txt", 1000), (200, json!(1000)), "{fs}");
        drop(server);
        let out = peerhost()
            .args(["peer", "stats", "--dir"])
            .arg(demo.dir())
            .arg("bob")
            .output()
            .expect("peer stats");
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{fs}: {stderr}");
        assert!(
            stdout.contains("namespace: 2400 bytes of 3000 (fs_bytes)"),
            "{fs}: {stdout}"
        );
    }
}

/// Copies the deployment at `from` to `to`, leaving out bob's files of
/// this machine: his `data/`, databases, kv directory and state.
fn copy_without_bobs_disk(from: &std::path::Path, to: &std::path::Path) {
    let bob = from.join("peers/bob");
    let mut pending = vec![from.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let target = to.join(dir.strip_prefix(from).expect("under"));
        std::fs::create_dir_all(&target).expect("mkdir");
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            let local = [
                "data",
                "kv",
                "state",
                "kv.sqlite",
                "kv.sqlite-wal",
                "kv.sqlite-shm",
            ]
            .iter()
            .any(|name| path == bob.join(name));
            if local || path.file_name().is_some_and(|n| n == "state") {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else {
                std::fs::copy(&path, target.join(entry.file_name())).expect("copy");
            }
        }
    }
}

/// bob's kv and files both in the bucket: a first worker writes them and is
/// stopped; a second worker, on a copy of the deployment without any of
/// bob's local files, serves every key and file, and its writes are seen by
/// the first when it comes back.
#[test]
fn a_peer_on_s3_is_served_by_a_second_worker_with_all_its_data() {
    let backends = Backends::start();
    if backends.moto.is_none() {
        return;
    }
    let demo = backends.demo("s3");
    let config = demo.dir().join("peers/bob/peer.toml");
    let toml = std::fs::read_to_string(&config).expect("peer.toml");
    std::fs::write(&config, toml.replace("kv = \"sqlite\"", "kv = \"s3\"")).expect("peer.toml");
    const WRITE: &str = r#"
        kv::set("count", 41);
        kv::set("notes/first", #{ text: "from worker 1" });
        fs::mkdir("docs");
        let big = ""; for i in 0..20000 { big += "0123456789"; }
        fs::write("docs/big.txt", big);
        fs::write("docs/small.txt", "small");
        fs::rename("docs/small.txt", "docs/renamed.txt");
        1
    "#;
    const READ: &str = r#"
        kv::increment("count", 1);
        [kv::get("count"), kv::get("notes/first").text, fs::list("docs"),
         fs::stat("docs/big.txt").size, fs::read_at("docs/big.txt", 199990, 10),
         fs::read("docs/renamed.txt")]
    "#;
    {
        let first = demo.serve(&[]);
        let (status, body) = first.eval("bob", Some("bob"), WRITE);
        assert_eq!((status, &body), (200, &json!(1)), "{body}");
    }
    let second = tempfile::tempdir().expect("temp dir");
    let second_dir = second.path().join("demo");
    copy_without_bobs_disk(&demo.dir(), &second_dir);
    assert!(!second_dir.join("peers/bob/kv.sqlite").exists());
    {
        let worker = Server::start(&second_dir, &[]);
        let (status, body) = worker.eval("bob", Some("bob"), READ);
        assert_eq!(
            (status, body),
            (
                200,
                json!([
                    42,
                    "from worker 1",
                    ["big.txt", "renamed.txt"],
                    200000,
                    "0123456789",
                    "small"
                ])
            )
        );
        let (status, body) = worker.eval(
            "bob",
            Some("bob"),
            r#"fs::write("docs/second.txt", "2"); 1"#,
        );
        assert_eq!(status, 200, "{body}");
    }
    let first = demo.serve(&[]);
    let (status, body) = first.eval(
        "bob",
        Some("bob"),
        r#"[kv::get("count"), fs::read("docs/second.txt")]"#,
    );
    assert_eq!((status, body), (200, json!([42, "2"])));
}
