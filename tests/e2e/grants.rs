//! `peerhost audit grants`, `policy check` and `policy test` over the demo
//! deployment: who may do what, derived by Cedar's partial evaluation.

use crate::support::{Demo, peerhost, text};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

fn run(dir: &Path, words: [&str; 2], rest: &[&str]) -> Output {
    peerhost()
        .args(words)
        .arg("--dir")
        .arg(dir)
        .args(rest)
        .output()
        .expect("run peerhost")
}

fn grants(demo: &Demo, peer: &str, format: &str) -> String {
    let out = run(
        &demo.dir(),
        ["audit", "grants"],
        &[peer, "--format", format],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    stdout
}

/// The demo's grants, as an auditor reads them. A change to the demo
/// policies, the schema or the analysis shows here.
#[test]
fn demo_grants_snapshot() {
    let demo = Demo::new();
    insta::assert_snapshot!("bob_table", grants(&demo, "bob", "table"));
    insta::assert_snapshot!("alice_table", grants(&demo, "alice", "table"));
    insta::assert_snapshot!("bob_wit", grants(&demo, "bob", "wit"));
    let json: serde_json::Value =
        serde_json::from_str(&grants(&demo, "bob", "json")).expect("JSON");
    assert_eq!(json["peer"], "bob");
    assert_eq!(json["warnings"], serde_json::json!([]));
}

/// The worlds `--format wit` prints resolve against wit/, and each imports
/// exactly the functions its principal is granted.
#[test]
fn grant_worlds_resolve_and_import_exactly_the_granted_functions() {
    let demo = Demo::new();
    let wit = grants(&demo, "bob", "wit");
    let mut resolve = wit_parser::Resolve::new();
    resolve
        .push_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit"))
        .expect("wit/ resolves");
    let package = resolve
        .push_str("grants.wit", &wit)
        .unwrap_or_else(|e| panic!("{e:?}\n{wit}"));
    // The world's own imports (`import kv: interface {…}`), by name; and
    // whether it imports the WASI filesystem.
    let imports = |world: &str| -> BTreeMap<String, Vec<String>> {
        let id = resolve
            .select_world(&[package], Some(world))
            .unwrap_or_else(|e| panic!("{world}: {e}"));
        let mut out = BTreeMap::new();
        for (key, item) in &resolve.worlds[id].imports {
            let named = matches!(key, wit_parser::WorldKey::Name(_));
            let filesystem = resolve.name_world_key(key).starts_with("wasi:filesystem/");
            if let wit_parser::WorldItem::Interface { id, .. } = item
                && (named || filesystem)
            {
                let mut functions: Vec<String> =
                    resolve.interfaces[*id].functions.keys().cloned().collect();
                functions.sort();
                out.insert(resolve.name_world_key(key), functions);
            }
        }
        out
    };
    let alice = imports("alice");
    assert_eq!(
        alice,
        BTreeMap::from([
            ("context".to_owned(), vec!["get".to_owned()]),
            (
                "kv".to_owned(),
                vec!["get".to_owned(), "get-entry".to_owned()]
            ),
            ("peers".to_owned(), vec!["call-local".to_owned()]),
        ]),
        "{wit}"
    );
    assert!(imports("anonymous").is_empty(), "{wit}");
    assert!(imports("anyone").is_empty(), "{wit}");
    let owner = imports("bob-owner");
    assert_eq!(
        owner["kv"],
        [
            "delete",
            "delete-many",
            "exists",
            "get",
            "get-entry",
            "get-many",
            "increment",
            "list",
            "list-page",
            "set",
            "set-if",
            "set-many"
        ],
        "{wit}"
    );
    assert!(
        owner.contains_key("wasi:filesystem/types@0.2.12"),
        "{owner:?}"
    );
}

/// Over-broad grants and policies that never apply are flagged, by
/// `audit grants` and by `policy check`; a policy that does not validate is
/// refused with its line; `policy test` runs the owner's table.
#[test]
fn lints_flag_over_broad_grants_and_policies_that_never_apply() {
    let demo = Demo::new();
    let policy = demo.dir().join("peers/bob/policy.cedar");
    let mut text_ = std::fs::read_to_string(&policy).expect("policy");
    text_.push_str(
        "\n@id(\"anyone-writes-inbox\")\npermit (principal, action == Action::\"kv.set\", resource) when { resource.name like \"inbox/*\" };\n\
         @id(\"for-mallory\")\npermit (principal == Peer::\"mallory\", action, resource);\n",
    );
    std::fs::write(&policy, &text_).expect("write");
    let table = grants(&demo, "bob", "table");
    assert!(
        table.contains("warning: over-broad: anyone (any peer the policy does not name) may kv.set on Key when resource.name like \"inbox/*\" (policy anyone-writes-inbox)"),
        "{table}"
    );
    assert!(
        table.contains("warning: never applies: permit `for-mallory`: it names Peer::\"mallory\""),
        "{table}"
    );
    let out = peerhost()
        .args(["policy", "check"])
        .arg(demo.dir())
        .output()
        .expect("run");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("warning: over-broad: anonymous"),
        "{stdout}"
    );
    assert!(stdout.contains("for-mallory"), "{stdout}");

    std::fs::write(
        &policy,
        format!("{text_}\npermit (principal, action == Action::\"kv.nope\", resource);\n"),
    )
    .expect("write");
    let out = peerhost()
        .args(["policy", "check"])
        .arg(&policy)
        .output()
        .expect("run");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    let line = text_.lines().count() + 2;
    assert!(
        stderr.contains(&format!("policy.cedar:{line}")),
        "line {line}: {stderr}"
    );

    // The owner's table: the demo's passes, a wrong expectation fails.
    std::fs::write(&policy, &text_).expect("write");
    let out = run(&demo.dir(), ["policy", "test"], &["bob"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("7 of 7 cases as expected"), "{stdout}");
    let tests = demo.dir().join("peers/bob/policy.tests.toml");
    let mut cases = std::fs::read_to_string(&tests).expect("tests");
    cases.push_str("\n[[case]]\nprincipal = \"mallory\"\naction = \"kv.get\"\nresource = 'Key::\"private/diary\"'\nexpect = \"deny\"\n");
    std::fs::write(&tests, cases).expect("write");
    let out = run(&demo.dir(), ["policy", "test"], &["bob"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "FAIL  mallory kv.get Key::\"private/diary\": expected deny, got allow (for-mallory)"
        ),
        "{stdout}"
    );
}
