use crate::support::{Demo, kind};

/// Plants symlinks in alice's namespace that lead out of it, then tries to
/// read, write, list and remove through them and through `..` and absolute
/// paths. Every attempt fails with a typed error, and nothing outside the
/// namespace is read or changed.
#[test]
fn scripts_cannot_leave_their_namespace() {
    cannot_leave_the_namespace_on("dir");
}

/// The same attempts with alice's namespace in her SQLite database (the
/// symlinks planted in `data/` are not in it at all).
#[test]
fn scripts_cannot_leave_their_namespace_in_sqlite() {
    cannot_leave_the_namespace_on("sqlite");
}

/// The same attempts with alice's namespace in an S3 bucket (moto on
/// loopback), next to her kv objects.
#[test]
fn scripts_cannot_leave_their_namespace_in_s3() {
    cannot_leave_the_namespace_on("s3");
}

fn cannot_leave_the_namespace_on(fs: &str) {
    let demo = Demo::new();
    let moto = match fs {
        "s3" => match crate::moto::Moto::start() {
            Some(moto) => Some(moto),
            None => return,
        },
        _ => None,
    };
    if let Some(moto) = &moto {
        demo.set_s3("alice", moto);
    }
    demo.set_fs("alice", fs);
    let canary_dir = demo.tmp.path().join("canary");
    std::fs::create_dir(&canary_dir).expect("mkdir");
    std::fs::write(canary_dir.join("secret.txt"), "CANARY-CONTENT-7731").expect("write canary");
    std::fs::write(demo.data("bob").join("secret.txt"), "BOB-SECRET-4412")
        .expect("write bob secret");
    let alice = demo.data("alice");
    #[cfg(unix)]
    {
        use std::os::unix::fs::symlink;
        symlink(&canary_dir, alice.join("out_abs")).expect("symlink");
        symlink(canary_dir.join("secret.txt"), alice.join("secret_link")).expect("symlink");
        symlink("../../bob/data", alice.join("out_rel")).expect("symlink");
        std::fs::create_dir(alice.join("sub")).expect("mkdir");
        symlink("../sub/../../../bob/data/", alice.join("sub/chain")).expect("symlink");
        symlink("sub/chain/", alice.join("chain")).expect("symlink");
    }
    let server = demo.serve(&[]);
    let canary_path = canary_dir.join("secret.txt");
    let canary_abs = canary_path.to_str().expect("utf-8");
    let attempts = [
        "fs::read(\"../bob/data/secret.txt\")".to_owned(),
        "fs::read(\"/../../bob/data/secret.txt\")".to_owned(),
        "fs::read(\"sub/../../bob/data/secret.txt\")".to_owned(),
        format!("fs::read({canary_abs:?})"),
        format!("fs::write({canary_abs:?}, \"pwned\")"),
        "fs::read(\"out_abs/secret.txt\")".to_owned(),
        "fs::write(\"out_abs/secret.txt\", \"pwned\")".to_owned(),
        "fs::write(\"out_abs/new.txt\", \"pwned\")".to_owned(),
        "fs::list(\"out_abs\")".to_owned(),
        "fs::list(\"out_abs/\")".to_owned(),
        "fs::remove(\"out_abs/secret.txt\")".to_owned(),
        "fs::read(\"secret_link\")".to_owned(),
        "fs::write(\"secret_link\", \"pwned\")".to_owned(),
        "fs::read(\"out_rel/secret.txt\")".to_owned(),
        "fs::write(\"out_rel/secret.txt\", \"pwned\")".to_owned(),
        "fs::list(\"out_rel\")".to_owned(),
        "fs::read(\"chain/secret.txt\")".to_owned(),
        "fs::read(\"chain//secret.txt\")".to_owned(),
        "fs::write(\"chain/secret.txt\", \"pwned\")".to_owned(),
        "fs::list(\"chain/\")".to_owned(),
        // The kv store's files and the read-only logic are out of reach too.
        "fs::read(\".kv/greetings\")".to_owned(),
        "fs::write(\".kv/greetings\", \"666\")".to_owned(),
        "fs::list(\".kv\")".to_owned(),
        "fs::write(\"/logic/main.rhai\", \"fn greet(n) { 0 }\")".to_owned(),
        "fs::remove(\"/logic/main.rhai\")".to_owned(),
    ];
    for script in &attempts {
        let (status, body) = server.eval("alice", Some("alice"), script);
        let text = body.to_string();
        // In SQLite and S3, `secret_link` is no link: writing it makes a
        // file of that name inside alice's namespace, which is no escape.
        let inside = fs != "dir" && script.starts_with("fs::write(\"secret_link\"");
        if !inside {
            assert_ne!(status, 200, "{script} succeeded: {text}");
            assert!(
                ["invalid", "not-found", "denied"].contains(&kind(&body)),
                "{script}: unexpected error {text}"
            );
        }
        assert!(
            !text.contains("CANARY-CONTENT") && !text.contains("BOB-SECRET-4412"),
            "{script} leaked: {text}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&canary_path).ok().as_deref(),
        Some("CANARY-CONTENT-7731")
    );
    assert_eq!(
        std::fs::read_dir(&canary_dir).map(|d| d.count()).ok(),
        Some(1),
        "a file appeared outside"
    );
    assert_eq!(
        std::fs::read_to_string(demo.data("bob").join("secret.txt"))
            .ok()
            .as_deref(),
        Some("BOB-SECRET-4412")
    );
    assert_eq!(
        std::fs::read_dir(demo.data("bob")).map(|d| d.count()).ok(),
        Some(1),
        "bob's data changed"
    );
    let logic =
        std::fs::read_to_string(demo.dir().join("peers/alice/logic/main.rhai")).expect("logic");
    assert!(logic.contains("fn greet(name)"));

    // The kv store is not in the namespace root, and the server still answers.
    let (status, body) = server.eval("alice", Some("alice"), "fs::list(\"/\")");
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains(".kv"), "{body}");
}

/// Two peers on one worker: alice's script cannot reach bob's namespace by
/// any of the paths that would name it from alice's.
#[test]
fn a_peer_cannot_reach_another_peers_directory() {
    let demo = Demo::new();
    let bob = demo.data("bob");
    std::fs::write(bob.join("secret.txt"), "BOB-SECRET-4412").expect("write");
    let server = demo.serve(&[]);
    let bob_abs = bob.join("secret.txt");
    for path in [
        "../../bob/data/secret.txt",
        "/peers/bob/data/secret.txt",
        bob_abs.to_str().expect("utf-8"),
    ] {
        let (status, body) = server.eval("alice", Some("alice"), &format!("fs::read({path:?})"));
        assert_ne!(status, 200, "{path}: {body}");
        assert!(
            !body.to_string().contains("BOB-SECRET-4412"),
            "{path} leaked: {body}"
        );
    }
    // bob's own script reads it: the file is there.
    let (status, body) = server.eval("bob", Some("bob"), "fs::read(\"secret.txt\")");
    assert_eq!((status, body), (200, serde_json::json!("BOB-SECRET-4412")));
}

/// Two peers in one bucket, side by side under their prefixes: no name
/// alice's script can give reaches bob's objects, his kv or the rename
/// journal; her own file named like them is hers.
#[test]
fn a_peer_cannot_reach_another_peers_objects_in_one_bucket() {
    let Some(moto) = crate::moto::Moto::start() else {
        return;
    };
    let demo = Demo::new();
    for peer in ["alice", "bob"] {
        demo.set_s3(peer, &moto);
        demo.set_fs(peer, "s3");
    }
    let server = demo.serve(&[]);
    let (status, body) = server.eval(
        "bob",
        Some("bob"),
        "fs::write(\"secret.txt\", \"BOB-SECRET-4412\"); kv::set(\"k\", \"BOB-KV-1\"); 1",
    );
    assert_eq!(status, 200, "{body}");
    for path in [
        "../bob/fs/secret.txt",
        "../../bob/fs/secret.txt",
        "%2E%2E/bob/fs/secret.txt",
        "..%2Fbob%2Ffs%2Fsecret.txt",
        "/../kv",
        "../fs.rename",
        "~dir",
        "secret.txt",
    ] {
        let (status, body) = server.eval("alice", Some("alice"), &format!("fs::read({path:?})"));
        assert_ne!(status, 200, "{path}: {body}");
        assert!(
            ["invalid", "not-found"].contains(&kind(&body)),
            "{path}: {body}"
        );
        let (_, body) = server.eval("alice", Some("alice"), &format!("fs::list({path:?})"));
        let text = body.to_string();
        assert!(!text.contains("BOB-"), "{path} leaked: {text}");
    }
    let (status, body) = server.eval(
        "alice",
        Some("alice"),
        "fs::write(\"~dir\", \"mine\"); fs::write(\"%2E%2E\", \"mine too\"); [fs::list(\"/\"), fs::read(\"~dir\")]",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, serde_json::json!([["%2E%2E", "~dir"], "mine"]));
    let (status, body) = server.eval(
        "bob",
        Some("bob"),
        "[fs::read(\"secret.txt\"), fs::list(\"/\")]",
    );
    assert_eq!(
        (status, body),
        (200, serde_json::json!(["BOB-SECRET-4412", ["secret.txt"]]))
    );
}
