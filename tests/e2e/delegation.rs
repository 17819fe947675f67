//! Identities, signed envelopes and delegation: alice's scripts at bob,
//! invoker and definer rights, chains and cycles, in one worker and across
//! two, each decision in the target's audit log.

use crate::support::{Demo, Server, key, kind, peer_id, peerhost, sign, text};
use peerhost::Invocation;
use peerhost::PeerKey;
use peerhost::envelope::{Envelope, MAX_ENVELOPE};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, SystemTime};

fn append(path: &Path, text: &str) {
    let mut old = std::fs::read_to_string(path).unwrap_or_default();
    old.push_str(text);
    std::fs::write(path, old).expect("append");
}

/// The audit lines of `peer`, as JSON.
pub(crate) fn audit(dir: &Path, peer: &str) -> Vec<Value> {
    let out = peerhost()
        .args(["audit", "log", "--json", "--dir"])
        .arg(dir)
        .arg(peer)
        .output()
        .expect("audit log");
    assert!(out.status.success(), "{:?}", text(&out));
    text(&out)
        .0
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

fn new_peer(demo: &Demo, name: &str) {
    let out = peerhost()
        .args(["peer", "new", "--dir"])
        .arg(demo.dir())
        .arg(name)
        .output()
        .expect("peer new");
    assert!(out.status.success(), "{:?}", text(&out));
    let id = text(&out).0.trim().to_owned();
    assert!(id.starts_with("did:key:z6Mk"), "{id}");
    assert_eq!(peer_id(&demo.dir(), name).to_string(), id);
}

pub(crate) fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Logic and grants for chains: alice.ask_bob → bob.echo_back → alice.ping,
/// bob.relay → carol.ping, and alice.bounce ⇄ bob.bounce without end.
pub(crate) fn chain_fixture(demo: &Demo) {
    new_peer(demo, "carol");
    let dir = demo.dir();
    let carol = peer_id(&dir, "carol");
    let bob = peer_id(&dir, "bob");
    let worker = std::fs::read_to_string(dir.join("peerhost.toml")).expect("worker config");
    std::fs::write(
        dir.join("peerhost.toml"),
        worker.replace(
            "peers = [\"alice\", \"bob\"]",
            "peers = [\"alice\", \"bob\", \"carol\"]",
        ),
    )
    .expect("write worker config");
    append(
        &dir.join("peers/bob/contacts.toml"),
        &format!("\n[carol]\nid = \"{carol}\"\n"),
    );
    append(
        &dir.join("peers/carol/contacts.toml"),
        &format!("\n[bob]\nid = \"{bob}\"\n"),
    );
    append(
        &dir.join("peers/alice/logic/main.rhai"),
        "\nfn ask_bob() { peers::invoke(\"bob\", \"echo_back\") }\n\
         fn bounce() { peers::invoke(\"bob\", \"bounce\") }\n\
         fn depth() { ctx.depth }\n",
    );
    append(
        &dir.join("peers/bob/logic/main.rhai"),
        "\nfn echo_back() { peers::invoke(\"alice\", \"ping\") }\n\
         fn relay() { peers::invoke(\"carol\", \"ping\") }\n\
         fn bounce() { peers::invoke(\"alice\", \"bounce\") }\n",
    );
    append(
        &dir.join("peers/alice/policy.cedar"),
        "\n@id(\"bob-calls\") permit (principal == Peer::\"bob\", action == Action::\"call\", \
         resource) when { [\"ping\", \"bounce\"].contains(resource.name) };\n",
    );
    append(
        &dir.join("peers/bob/policy.cedar"),
        "\n@id(\"alice-calls\") permit (principal == Peer::\"alice\", action == Action::\"call\", \
         resource) when { [\"echo_back\", \"relay\", \"bounce\"].contains(resource.name) };\n",
    );
    append(
        &dir.join("peers/carol/policy.cedar"),
        "\n@id(\"bob-calls\") permit (principal == Peer::\"bob\", action == Action::\"call\", \
         resource == Function::\"ping\");\n",
    );
}

#[test]
fn alice_reads_bobs_public_keys_not_his_private_ones_and_bob_audits_both() {
    let demo = Demo::new();
    let dir = demo.dir();
    let public = "kv::get(\"public/motd\")";
    let out = demo.cli(&["send", "--from", "alice", "--to", "bob", "-e", public]);
    assert_eq!(
        text(&out).0.trim(),
        "\"Hello from bob\"",
        "{:?}",
        text(&out)
    );
    let private = "kv::set(\"private/diary\", \"overwritten\")";
    let out = demo.cli(&["send", "--from", "alice", "--to", "bob", "-e", private]);
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
    assert!(text(&out).1.contains("kv.set on Key::\"private/diary\""));
    // The private value is intact.
    let out = demo.cli(&["eval", "bob", "-e", "kv::get(\"private/diary\")"]);
    assert_eq!(
        text(&out).0.trim(),
        "\"alice must never read this\"",
        "{:?}",
        text(&out)
    );

    let alice = peer_id(&dir, "alice").to_string();
    let lines = audit(&dir, "bob");
    let find = |action: &str, decision: &str, script: &str| {
        lines.iter().find(|l| {
            l["action"] == action && l["decision"] == decision && l["script"] == sha256_hex(script)
        })
    };
    let allowed = find("kv.get", "allow", public).expect("the allowed read is audited");
    assert_eq!(allowed["caller"], json!({"name": "alice", "id": alice}));
    assert_eq!(allowed["principal"], "alice");
    assert_eq!(allowed["resource"], "Key::\"public/motd\"");
    assert_eq!(allowed["policies"], json!(["alice-reads-public"]));
    let denied = find("kv.set", "deny", private).expect("the denied write is audited");
    assert_eq!(denied["caller"]["id"], alice.as_str());
    assert_eq!(denied["resource"], "Key::\"private/diary\"");
    assert!(find("script.accept", "allow", private).is_some());
    // The human-readable form shows the same decisions.
    let out = peerhost()
        .args(["audit", "log", "--dir"])
        .arg(&dir)
        .arg("bob")
        .output()
        .expect("audit log");
    assert!(
        text(&out)
            .0
            .contains("deny  alice kv.set Key::\"private/diary\""),
        "{:?}",
        text(&out)
    );
}

/// Each bad envelope is refused with a typed error and an audit line, and
/// nothing runs: the script would have set `ran` in bob's kv store.
#[test]
fn bad_envelopes_are_refused_and_nothing_runs() {
    let demo = Demo::new();
    let dir = demo.dir();
    let server = demo.serve(&[]);
    let bob = key(&dir, "bob");
    let script = Invocation::Script {
        script: "let n = kv::get(\"ran\") ?? 0; kv::set(\"ran\", n + 1); n + 1".into(),
        params: Value::Null,
    };
    let now = SystemTime::now();
    let seal = |at: SystemTime| Envelope::seal(&bob, bob.id(), &script, 0, at).expect("seal");
    let resign = |e: &mut Envelope| {
        e.signature = hex::encode(bob.sign(&e.signed_bytes()).to_bytes());
    };

    let mut cases: Vec<(&str, Envelope, &str)> = Vec::new();
    let mut forged = seal(now);
    let mallory = PeerKey::generate().expect("randomness");
    forged.signature = hex::encode(mallory.sign(&forged.signed_bytes()).to_bytes());
    cases.push(("forged signature", forged, "signature does not verify"));
    let mut body = seal(now);
    body.body = body.body.replace("n + 1", "n + 100");
    cases.push(("changed body", body, "does not match its SHA-256"));
    let mut params = seal(now);
    params.params = "{\"x\":1}".into();
    cases.push(("changed params", params, "signature does not verify"));
    let mut low_order = seal(now);
    let mut identity = vec![0xed, 0x01, 1];
    identity.extend([0u8; 31]);
    low_order.caller = format!("did:key:z{}", bs58::encode(identity).into_string());
    cases.push(("low-order key", low_order, "low-order"));
    let mut not_a_key = seal(now);
    not_a_key.caller = "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme".into();
    cases.push(("not an Ed25519 key", not_a_key, "not an Ed25519"));
    cases.push(("expired", seal(now - Duration::from_secs(120)), "expired"));
    cases.push((
        "future-dated",
        seal(now + Duration::from_secs(120)),
        "in the future",
    ));
    let mut too_long = seal(now);
    too_long.expires_at += 3_600_000;
    resign(&mut too_long);
    cases.push(("overlong validity", too_long, "validity window"));
    let mut deep = seal(now);
    deep.depth = 9;
    resign(&mut deep);
    cases.push(("too deep", deep, "depth limit"));

    let refusals_before = audit(&dir, "bob")
        .iter()
        .filter(|l| l["action"] == "envelope")
        .count();
    for (name, envelope, fragment) in &cases {
        let (status, body) = server.send(envelope);
        assert!(
            matches!((status, kind(&body)), (400, "invalid") | (413, "limit")),
            "{name}: {status} {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(fragment), "{name}: {message}");
    }
    let refusals = audit(&dir, "bob")
        .iter()
        .filter(|l| l["action"] == "envelope" && l["decision"] == "deny")
        .count();
    assert_eq!(
        refusals - refusals_before,
        cases.len(),
        "one audit line each"
    );

    // A good envelope runs once; the same envelope again is a replay.
    let good = seal(now);
    assert_eq!(server.send(&good), (200, json!(1)));
    let (status, body) = server.send(&good);
    assert_eq!((status, kind(&body)), (400, "invalid"), "{body}");
    assert!(body.to_string().contains("replay"), "{body}");

    // Over the size limit: refused before it is read as JSON.
    let mut big = seal(now);
    big.params = format!("\"{}\"", "x".repeat(MAX_ENVELOPE));
    if let Ok((status, body)) =
        server.try_post("/v1/envelopes", &serde_json::to_string(&big).expect("json"))
    {
        assert_eq!((status, kind(&body)), (413, "limit"), "{body}");
    }

    // Nothing but the one good envelope ran.
    let out = demo.cli(&["eval", "bob", "-e", "kv::get(\"ran\")"]);
    assert_eq!(text(&out).0.trim(), "1", "{:?}", text(&out));
}

/// alice's script at bob carries alice's grants only: not bob's, not
/// carol's, not through bob's functions or bob's contacts.
#[test]
fn a_delegated_script_cannot_borrow_the_targets_or_a_third_peers_grants() {
    let demo = Demo::new();
    let dir = demo.dir();
    new_peer(&demo, "carol");
    let carol = peer_id(&dir, "carol");
    append(
        &dir.join("peers/bob/contacts.toml"),
        &format!("\n[carol]\nid = \"{carol}\"\n"),
    );
    append(
        &dir.join("peers/bob/policy.cedar"),
        "\n@id(\"carol-writes-shared\") permit (principal == Peer::\"carol\", \
         action == Action::\"kv.set\", resource) when { resource.name like \"shared/*\" };\n\
         @id(\"carol-sends\") permit (principal == Peer::\"carol\", \
         action == Action::\"script.accept\", resource);\n",
    );
    let server = demo.serve(&[]);
    for (script, action, resource) in [
        ("kv::set(\"shared/x\", 1)", "kv.set", "Key::\"shared/x\""),
        (
            "kv::set(\"private/diary\", 1)",
            "kv.set",
            "Key::\"private/diary\"",
        ),
        (
            "fs::write(\"x.txt\", \"x\")",
            "fs.write",
            "Path::\"/x.txt\"",
        ),
        (
            "peers::call_local(\"remember\", [\"k\", 1])",
            "call",
            "Function::\"remember\"",
        ),
        (
            "peers::send(\"carol\", \"1\")",
            "peers.send",
            "Contact::\"carol\"",
        ),
        (
            "peers::invoke(\"alice\", \"ping\")",
            "peers.call",
            "Contact::\"alice\"",
        ),
    ] {
        let (status, body) = server.eval("bob", Some("alice"), script);
        assert_eq!(status, 403, "{script}: {body}");
        assert_eq!(
            (
                body["error"]["action"].as_str(),
                body["error"]["resource"].as_str()
            ),
            (Some(action), Some(resource)),
            "{script}: {body}"
        );
    }
    // carol herself holds the grant.
    let (status, body) = server.eval("bob", Some("carol"), "kv::set(\"shared/x\", 1); \"ok\"");
    assert_eq!((status, body), (200, json!("ok")));
    // A function bob's policy lets alice call runs with bob's authority.
    let (status, body) = server.eval(
        "bob",
        Some("alice"),
        "peers::call_local(\"get_public\", \"motd\")",
    );
    assert_eq!((status, body), (200, json!("Hello from bob")));
    // A stranger is named by its id, and holds nothing.
    let (status, body) = server.eval("bob", Some("mallory"), "1");
    assert_eq!((status, kind(&body)), (403, "denied"), "{body}");
    let stranger = key(&dir, "mallory").id().to_string();
    assert!(
        audit(&dir, "bob")
            .iter()
            .any(|l| l["principal"] == stranger.as_str() && l["decision"] == "deny"),
        "the stranger's refusal names its id"
    );
    assert!(!demo.data("bob").join("x.txt").exists());
}

#[test]
fn chains_round_trips_and_cycles_in_one_worker() {
    let demo = Demo::new();
    chain_fixture(&demo);
    let server = demo.serve(&[]);
    // A→B→A.
    assert_eq!(
        server.call("alice", "ask_bob", Some("alice"), "[]"),
        (200, json!("pong"))
    );
    // A→B→C.
    assert_eq!(
        server.call("bob", "relay", Some("alice"), "[]"),
        (200, json!("pong"))
    );
    // A→B→A→… ends at the depth limit, quickly, and the worker answers on.
    let started = std::time::Instant::now();
    let (status, body) = server.call("alice", "bounce", Some("alice"), "[]");
    assert_eq!((status, kind(&body)), (413, "limit"), "{body}");
    assert!(body.to_string().contains("depth limit of 8"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        server.call("alice", "ping", Some("alice"), "[]"),
        (200, json!("pong"))
    );
    // carol saw bob as the caller of ping, at depth 1.
    let lines = audit(&demo.dir(), "carol");
    let call = lines
        .iter()
        .find(|l| l["action"] == "call")
        .expect("carol audited the call");
    assert_eq!(call["principal"], "bob");
    assert_eq!(call["depth"], 1);
}

/// The same exchanges across two workers (one peer each, envelopes over
/// HTTP) give the same results and the same audit lines as in one worker.
#[test]
fn two_workers_exchange_signed_invocations_like_one() {
    let demo = Demo::new();
    chain_fixture(&demo);
    let dir = demo.dir();
    let script = "kv::get(\"public/motd\")";
    let run = |alice: &Server, bob: &Server| -> Vec<(u16, Value)> {
        let send = |server: &Server, script: &str| {
            let envelope = sign(
                &dir,
                "alice",
                "bob",
                &Invocation::Script {
                    script: script.into(),
                    params: Value::Null,
                },
            );
            server.send(&envelope)
        };
        vec![
            send(bob, script),
            send(bob, "kv::get(\"private/diary\")"),
            alice.call("alice", "ask_bob", Some("alice"), "[]"),
            alice.call("alice", "bounce", Some("alice"), "[]"),
        ]
    };
    let normalised = |peer: &str| -> Vec<Value> {
        audit(&dir, peer)
            .into_iter()
            .map(|mut l| {
                l["time"] = Value::Null;
                // The chain hashes the time too.
                l["prev"] = Value::Null;
                // Each run is a trace of its own.
                l["trace"] = Value::Null;
                l
            })
            .collect()
    };
    let clear = |peer: &str| {
        let _ = std::fs::remove_file(dir.join("peers").join(peer).join("audit/audit.jsonl"));
    };

    let shared = demo.serve(&[]);
    let one = run(&shared, &shared);
    drop(shared);
    let one_audit = (normalised("alice"), normalised("bob"));
    clear("alice");
    clear("bob");

    // Two workers on fixed loopback ports, each named in the other's contacts.
    let (pa, pb) = (crate::support::free_port(), crate::support::free_port());
    let contacts = |peer: &str, other: &str, port: u16| {
        let path = dir.join("peers").join(peer).join("contacts.toml");
        let text = std::fs::read_to_string(&path).expect("contacts");
        let id = peer_id(&dir, other);
        let entry = format!("[{other}]\nid = \"{id}\"\nurl = \"http://127.0.0.1:7070\"");
        let replaced = format!("[{other}]\nid = \"{id}\"\nurl = \"http://127.0.0.1:{port}\"");
        assert!(text.contains(&entry), "{text}");
        std::fs::write(&path, text.replace(&entry, &replaced)).expect("contacts");
    };
    contacts("alice", "bob", pb);
    contacts("bob", "alice", pa);
    let alice = Server::start_at(&dir, pa, &["--peer", "alice"]);
    let bob = Server::start_at(&dir, pb, &["--peer", "bob"]);
    assert!(bob.banner.contains("1 peer(s) (bob)"), "{}", bob.banner);
    let two = run(&alice, &bob);
    assert_eq!(one, two, "results differ between one worker and two");
    assert_eq!(one[0], (200, json!("Hello from bob")));
    assert_eq!(one[1].0, 403);
    assert_eq!(one[2], (200, json!("pong")));
    assert_eq!(one[3].0, 413);
    assert_eq!(
        one_audit,
        (normalised("alice"), normalised("bob")),
        "audit lines differ between one worker and two"
    );
    // The CLI signs and sends across workers too.
    let out = peerhost()
        .args(["send", "--dir"])
        .arg(&dir)
        .args([
            "--url", &bob.url, "--from", "alice", "--to", "bob", "-e", script,
        ])
        .output()
        .expect("send");
    assert_eq!(
        text(&out).0.trim(),
        "\"Hello from bob\"",
        "{:?}",
        text(&out)
    );
    let bob_lines = normalised("bob");
    assert!(
        bob_lines.iter().any(|l| l["script"] == sha256_hex(script)
            && l["action"] == "kv.get"
            && l["decision"] == "allow"),
        "{bob_lines:?}"
    );
}

/// bob's `on_script` hook sees the caller and the script, runs with bob's
/// authority (it reads bob's private keys), and may refuse; its verdict is
/// audited. A delegated script sees both identities in `ctx`.
#[test]
fn on_script_may_refuse_and_scripts_see_both_identities() {
    let demo = Demo::new();
    let dir = demo.dir();
    append(
        &dir.join("peers/bob/logic/main.rhai"),
        "\n/// Refuses scripts that list keys, and anything while bob's diary is gone.\n\
         fn on_script(ctx, script) {\n\
             ctx.caller.name == \"alice\" && kv::get(\"private/diary\") != () && !script.contains(\"kv::list\")\n\
         }\n",
    );
    let server = demo.serve(&[]);
    let (status, body) = server.eval(
        "bob",
        Some("alice"),
        "[ctx.caller.name, ctx.caller.id, ctx.target.name, ctx.target.id, ctx.kind, ctx.depth]",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!([
            "alice",
            peer_id(&dir, "alice").to_string(),
            "bob",
            peer_id(&dir, "bob").to_string(),
            "script",
            0
        ])
    );
    let refused = "kv::list(\"public/\")";
    let (status, body) = server.eval("bob", Some("alice"), refused);
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        (
            body["error"]["action"].as_str(),
            body["error"]["resource"].as_str()
        ),
        (Some("script.accept"), Some("Peer::\"bob\""))
    );
    let line = audit(&dir, "bob")
        .into_iter()
        .find(|l| l["script"] == sha256_hex(refused) && l["decision"] == "deny")
        .expect("the refusal is audited");
    assert_eq!(line["policies"], json!(["on_script"]));
    assert_eq!(line["action"], "script.accept");
    // The hook read bob's diary with bob's authority, not alice's.
    assert!(
        audit(&dir, "bob").iter().any(|l| l["action"] == "kv.get"
            && l["resource"] == "Key::\"private/diary\""
            && l["principal"] == "bob"
            && l["decision"] == "allow"),
        "the hook's read is bob's"
    );
    // An unsigned script is `anonymous`, and the demo grants it nothing.
    let (status, body) = server.eval("bob", None, "1");
    assert_eq!((status, kind(&body)), (403, "denied"), "{body}");
}

/// A module the `on_script` hook imported ran with bob's authority: the
/// script that follows in the same instance must evaluate it afresh, with
/// alice's, not reuse what bob's evaluation read.
#[test]
fn a_module_imported_by_on_script_does_not_serve_the_script_bobs_values() {
    let demo = Demo::new();
    let dir = demo.dir();
    std::fs::write(
        dir.join("peers/bob/logic/secret.rhai"),
        "let diary = kv::get(\"private/diary\");\nexport diary;\n",
    )
    .expect("module");
    append(
        &dir.join("peers/bob/logic/main.rhai"),
        "\nfn on_script(ctx, script) {\n    import \"secret\" as s;\n    s::diary != ()\n}\n",
    );
    let server = demo.serve(&[]);
    let (status, body) = server.eval("bob", Some("alice"), "import \"secret\" as s; s::diary");
    assert_eq!((status, kind(&body)), (403, "denied"), "{body}");
    assert_eq!(
        (
            body["error"]["action"].as_str(),
            body["error"]["resource"].as_str()
        ),
        (Some("kv.get"), Some("Key::\"private/diary\""))
    );
    // The hook itself did read the diary, as bob.
    assert!(
        audit(&dir, "bob").iter().any(|l| l["action"] == "kv.get"
            && l["principal"] == "bob"
            && l["decision"] == "allow")
    );
}

/// With instances reused per caller, the decisions and audit lines are the
/// same as with fresh ones, and callers never share an instance's grants.
#[test]
fn reused_instances_decide_and_audit_like_fresh_ones() {
    let demo = Demo::new();
    let dir = demo.dir();
    let config = dir.join("peerhost.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(
        text.contains("instances = \"fresh\""),
        "the default is written out"
    );
    let text = text.replace("instances = \"fresh\"", "instances = \"per-caller\"");
    std::fs::write(&config, text).expect("config");
    let server = demo.serve(&[]);
    for _ in 0..3 {
        let (status, body) = server.eval("bob", Some("alice"), "kv::get(\"public/motto\")");
        assert_eq!(status, 200, "{body}");
        let (status, body) = server.eval("bob", Some("alice"), "kv::get(\"private/diary\")");
        assert_eq!((status, kind(&body)), (403, "denied"), "{body}");
        let (status, body) = server.eval("bob", Some("bob"), "kv::get(\"private/diary\")");
        assert_eq!(status, 200, "bob's own instance has bob's grants: {body}");
    }
    let lines = audit(&dir, "bob");
    let count = |principal: &str, decision: &str| {
        lines
            .iter()
            .filter(|l| {
                l["action"] == "kv.get" && l["principal"] == principal && l["decision"] == decision
            })
            .count()
    };
    assert_eq!(count("alice", "allow"), 3);
    assert_eq!(count("alice", "deny"), 3);
    assert_eq!(count("bob", "allow"), 3);
}

/// A long-running invocation that delegates to another long-running one:
/// the parent gives up its long-runner lane while it waits, so the child
/// can run (with one lane, holding it would stall both to their deadline).
#[test]
fn long_running_invocations_can_delegate_to_long_running_ones() {
    let demo = Demo::new();
    let dir = demo.dir();
    append(
        &dir.join("peers/alice/logic/main.rhai"),
        "\n/// Counts for a while, then has bob count for a while.\n\
         fn slow_relay() {\n\
             let x = 0; for i in 0..400000 { x += 1; }\n\
             x + peers::send(\"bob\", \"let y = 0; for i in 0..400000 { y += 1; } y\")\n\
         }\n",
    );
    let server = demo.serve(&[]);
    let (status, body) = server.call("alice", "slow_relay", Some("alice"), "[]");
    assert_eq!((status, body.as_i64()), (200, Some(800_000)), "{body}");
}

#[test]
fn peer_keys_are_created_once_and_shown() {
    let demo = Demo::new();
    let dir = demo.dir();
    let key_file = dir.join("keys/alice.key");
    let before = std::fs::read(&key_file).expect("alice's key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let out = peerhost()
        .args(["peer", "new", "--dir"])
        .arg(&dir)
        .arg("alice")
        .output()
        .expect("peer new");
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    assert!(text(&out).1.contains("already"), "{:?}", text(&out));
    assert_eq!(std::fs::read(&key_file).expect("alice's key"), before);
    let out = peerhost()
        .args(["peer", "show", "--dir"])
        .arg(&dir)
        .arg("alice")
        .output()
        .expect("peer show");
    let shown = text(&out).0;
    assert!(
        shown.contains(&format!("id: {}", peer_id(&dir, "alice"))),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("bob {}", peer_id(&dir, "bob"))),
        "{shown}"
    );
    // A peer.toml whose id is not its key's is refused at start.
    let config = dir.join("peers/alice/peer.toml");
    let text_config = std::fs::read_to_string(&config).expect("peer.toml");
    let other = PeerKey::generate().expect("randomness").id();
    std::fs::write(
        &config,
        text_config.replace(&peer_id(&dir, "alice").to_string(), &other.to_string()),
    )
    .expect("write");
    let out = peerhost()
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&dir)
        .output()
        .expect("serve");
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    assert!(
        text(&out).1.contains("is not the id of"),
        "{:?}",
        text(&out)
    );
}

#[test]
fn audit_log_follow_prints_new_decisions() {
    let demo = Demo::new();
    let dir = demo.dir();
    let mut follower = peerhost()
        .args(["audit", "log", "--follow", "--dir"])
        .arg(&dir)
        .arg("alice")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("audit log --follow");
    let out = demo.cli(&["call", "alice", "ping"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let stdout = follower.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        line.contains("allow alice call Function::\"ping\""),
        "{line:?}"
    );
}

/// Audit lines are hash-chained: `audit verify` passes on the log as
/// written and names the line where an edit, a dropped line or a swap
/// breaks the chain.
#[test]
fn audit_verify_detects_edited_dropped_and_reordered_lines() {
    let demo = Demo::new();
    let dir = demo.dir();
    let server = demo.serve(&[]);
    for script in [
        "kv::get(\"public/motto\")",
        "kv::get(\"private/diary\")",
        "1",
    ] {
        let _ = server.eval("bob", Some("alice"), script);
    }
    drop(server);
    let log = dir.join("peers/bob/audit/audit.jsonl");
    let verify = || {
        peerhost()
            .args(["audit", "verify", "--dir"])
            .arg(&dir)
            .arg("bob")
            .output()
            .expect("audit verify")
    };
    let out = verify();
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("chain intact"), "{:?}", text(&out));
    let original = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<&str> = original.lines().collect();
    assert!(lines.len() >= 4, "{original}");
    let broken_at = |text: String| {
        std::fs::write(&log, text).expect("tamper");
        let out = verify();
        assert!(!out.status.success(), "tampering was not detected");
        text_of(&out)
    };
    fn text_of(out: &std::process::Output) -> String {
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
    // An edited decision.
    let edited = original.replacen("\"decision\":\"deny\"", "\"decision\":\"allow\"", 1);
    assert_ne!(edited, original);
    let message = broken_at(edited);
    assert!(message.contains("the chain breaks here"), "{message}");
    // A dropped line (the second).
    let mut dropped = lines.clone();
    dropped.remove(1);
    let message = broken_at(dropped.join("\n") + "\n");
    assert!(message.contains("audit.jsonl:2:"), "{message}");
    // Two lines swapped.
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    let message = broken_at(swapped.join("\n") + "\n");
    assert!(message.contains("audit.jsonl:2:"), "{message}");
}

/// A key file is read when the key is first needed: a worker starts without
/// deriving every peer's key, and a key file whose secret is not its id's
/// is refused, naming the file, the moment something signs with it.
#[test]
fn a_key_file_whose_secret_is_not_its_id_is_refused_when_first_used() {
    let demo = Demo::new();
    let dir = demo.dir();
    let key_file = dir.join("keys/alice.key");
    let original = std::fs::read_to_string(&key_file).expect("alice's key");
    let tampered: String = original
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("secret") {
                format!("secret = \"{}\"", "11".repeat(32))
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(tampered.trim(), original.trim());
    std::fs::write(&key_file, tampered).expect("write");
    // The worker starts and serves: nothing needs alice's key yet.
    let server = demo.serve(&[]);
    let (status, body) = server.call("bob", "get_public", Some("bob"), "[\"motd\"]");
    assert_eq!(status, 200, "{body}");
    // Signing as alice is refused, naming the file.
    let out = peerhost()
        .args(["call", "--dir"])
        .arg(&dir)
        .args([
            "--url",
            &server.url,
            "--as",
            "alice",
            "bob",
            "get_public",
            "[\"motd\"]",
        ])
        .output()
        .expect("peerhost call");
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("alice.key") && stderr.contains("is not the id of its secret"),
        "{stderr}"
    );
}
