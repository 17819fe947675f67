//! `peerhost init`: a demo deployment with peers alice and bob, who know
//! each other, and a library module `lib/text.rhai`; `peerhost peer new`: one more peer with a fresh key.

use crate::config::DeploymentError;
use crate::identity::{PeerId, PeerKey};
use crate::kv::KvBackend;
use crate::namespace::Namespace;
use crate::peer::{key_path, valid_name};
use crate::policy::DEFAULT_POLICY;
use std::path::Path;

const WORKER_TOML: &str = r#"# peerhost worker configuration (see README.md).
# Where `peerhost serve` listens unless --listen says otherwise.
listen = "127.0.0.1:7070"

# The peers of this deployment; every directory of peers/ when absent.
peers = ["alice", "bob"]

# A fresh guest instance per invocation ("fresh"), or one reused by the same
# caller at the same peer ("per-caller": faster, never shared between callers).
instances = "fresh"

# After this many fresh instances of one version of a peer's logic, the worker
# compiles a snapshot of the guest with that version parsed (about a second of
# one core, in the background; cached beside the compiled guest), and later
# fresh instances start from it. 0: never.
snapshot_after = 16

# Default limits of one invocation; a peer.toml may narrow them.
[limits]
wall_time_ms = 1000
memory_mib = 64
operations = 50000000   # Rhai operations per request

# What one HTTP client may hold: connections at once, and how long it may
# take to send headers and body, or stay silent (see README.md).
[http]
max_connections = 1024
header_timeout_ms = 10000
body_timeout_ms = 30000
idle_timeout_ms = 120000

# GET /metrics (Prometheus) is served to loopback clients on the API's
# address; [metrics] may give it its own address and name peers in labels.
# [metrics]
# listen = "127.0.0.1:9464"
# peers = ["alice", "bob"]

# Spans of every invocation to an OpenTelemetry collector (OTLP over HTTP).
# [traces]
# endpoint = "http://127.0.0.1:4318"
"#;

const BOB_POLICY: &str = include_str!("../../policies/bob.cedar");

fn peer_toml(id: PeerId, description: &str, owner: &str) -> String {
    format!(
        "# One peer: its identity, owner, storage and limits (see README.md).\nid = \"{id}\"\ndescription = \"{description}\"\n\n[owner]\nname = \"{owner}\"\ncontact = \"\"\n\n[storage]\nkv = \"sqlite\"\n"
    )
}

const CONTACTS_HEADER: &str = "# This peer's address book: petname -> peer id, and the URL of the worker\n\
# hosting that peer when it is not this one. Policies name peers by petname.\n";

fn contact_entry(petname: &str, id: PeerId, url: Option<&str>) -> String {
    let url = url.map(|u| format!("url = \"{u}\"\n")).unwrap_or_default();
    format!("\n[{petname}]\nid = \"{id}\"\n{url}")
}

/// Minimal logic of a new peer.
const NEW_LOGIC: &str = "// This peer's logic: every `fn` not marked `private` is exported.\n\n\
/// Answers \"pong\".\nfn ping() {\n    \"pong\"\n}\n";

/// Creates a key for peer `name` in `dir/keys/` and, when the peer has no
/// directory yet, the peer itself (owner-only policy, empty contacts, a
/// `ping` function). A peer whose `peer.toml` has no `id` gets one. Keys
/// are never overwritten. Returns the new id.
pub fn new_peer(dir: &Path, name: &str) -> Result<PeerId, DeploymentError> {
    let peer_dir = dir.join("peers").join(name);
    if !valid_name(name) {
        return Err(DeploymentError::file(
            &peer_dir,
            format!("`{name}` is not a valid peer name: use 1 to 63 of a-z, 0-9, `-`, `_`"),
        ));
    }
    let config = peer_dir.join("peer.toml");
    let existing = match std::fs::read_to_string(&config) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(DeploymentError::file(&config, format!("cannot read: {e}"))),
    };
    if let Some(text) = &existing {
        let parsed: crate::config::PeerConfig = crate::config::parse_toml(&config, text)?;
        if let Some(id) = parsed.id {
            return Err(DeploymentError::file(
                &config,
                format!("peer `{name}` has an id already ({id}); its key belongs where it signs"),
            ));
        }
    }
    let key = create_key(dir, name)?;
    let write = |path: &Path, text: &str| write_new(path, text);
    match existing {
        Some(text) => std::fs::write(&config, format!("id = \"{}\"\n{text}", key.id()))
            .map_err(|e| DeploymentError::file(&config, format!("cannot write: {e}")))?,
        None => {
            write(&config, &peer_toml(key.id(), "", ""))?;
            write(&peer_dir.join("policy.cedar"), DEFAULT_POLICY)?;
            write(&peer_dir.join("contacts.toml"), CONTACTS_HEADER)?;
            write(&peer_dir.join("logic").join("main.rhai"), NEW_LOGIC)?;
            Namespace::open(&peer_dir, name, &crate::config::Storage::default())?;
            crate::kv::open(&peer_dir, name, &new_storage())?;
        }
    }
    Ok(key.id())
}

fn create_key(dir: &Path, name: &str) -> Result<PeerKey, DeploymentError> {
    let path = key_path(dir, name);
    let key = PeerKey::generate()
        .map_err(|e| DeploymentError::file(&path, format!("no randomness to make a key: {e}")))?;
    key.create_file(&path, name)
        .map_err(|e| DeploymentError::file(&path, e.to_string()))?;
    Ok(key)
}

/// Writes a new file, creating its directory; never replaces one.
fn write_new(path: &Path, text: &str) -> Result<(), DeploymentError> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| DeploymentError::file(parent, format!("cannot create: {e}")))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|e| DeploymentError::file(path, format!("cannot write: {e}")))
}

/// Writes the demo deployment into `dir`, which must not hold one already:
/// nothing existing is overwritten.
pub fn init(dir: &Path) -> Result<(), DeploymentError> {
    let config = dir.join("peerhost.toml");
    if config.exists() {
        return Err(DeploymentError::file(
            &config,
            "already exists: a deployment is there, nothing was changed",
        ));
    }
    let peers = [
        (
            "alice",
            "Alice's backend: greetings and notes",
            "Alice",
            DEFAULT_POLICY,
            include_str!("scaffold/alice.rhai"),
        ),
        (
            "bob",
            "Bob's backend: public and private values",
            "Bob",
            BOB_POLICY,
            include_str!("scaffold/bob.rhai"),
        ),
    ];
    let library = dir.join("lib").join("text.rhai");
    if library.exists() {
        return Err(DeploymentError::file(
            &library,
            "already exists: nothing was changed",
        ));
    }
    for (name, ..) in &peers {
        for path in [dir.join("peers").join(name), key_path(dir, name)] {
            if path.exists() {
                return Err(DeploymentError::file(
                    &path,
                    "already exists: nothing was changed",
                ));
            }
        }
    }
    let mut ids = Vec::new();
    for (name, ..) in &peers {
        ids.push((*name, create_key(dir, name)?.id()));
    }
    for ((name, description, owner, policy, logic), (_, id)) in peers.into_iter().zip(&ids) {
        let id = *id;
        let peer_dir = dir.join("peers").join(name);
        write_new(
            &peer_dir.join("peer.toml"),
            &peer_toml(id, description, owner),
        )?;
        write_new(&peer_dir.join("policy.cedar"), policy)?;
        write_new(&peer_dir.join("logic").join("main.rhai"), logic)?;
        let mut contacts = CONTACTS_HEADER.to_owned();
        for (other, other_id) in ids.iter().filter(|(n, _)| *n != name) {
            contacts.push_str(&contact_entry(other, *other_id, Some(DEMO_URL)));
        }
        write_new(&peer_dir.join("contacts.toml"), &contacts)?;
        Namespace::open(&peer_dir, name, &crate::config::Storage::default())?;
        let kv = crate::kv::open(&peer_dir, name, &new_storage())?;
        if name == "bob" {
            seed(kv.as_ref(), &peer_dir)?;
            write_new(
                &peer_dir.join(crate::policy_tools::TESTS_FILE),
                include_str!("../../policies/bob.tests.toml"),
            )?;
        }
    }
    write_new(
        &dir.join("lib").join("text.rhai"),
        include_str!("scaffold/lib/text.rhai"),
    )?;
    write_new(&config, WORKER_TOML)?;
    Ok(())
}

/// Where the demo's worker listens, as its contacts name it.
const DEMO_URL: &str = "http://127.0.0.1:7070";

/// What `peer_toml` writes: a new peer's kv is SQLite.
fn new_storage() -> crate::config::Storage {
    crate::config::Storage {
        kv: crate::config::Backend::Sqlite,
        ..Default::default()
    }
}

fn seed(kv: &dyn KvBackend, peer_dir: &Path) -> Result<(), DeploymentError> {
    for (key, value) in [
        ("public/motd", "\"Hello from bob\""),
        ("private/diary", "\"alice must never read this\""),
    ] {
        let value = crate::kv::CheckedValue::new(key, value);
        let written = value
            .and_then(|value| crate::kv::set(kv, &crate::kv::Charge::unlimited("bob"), &value));
        written.map_err(|e| {
            DeploymentError::file(&peer_dir.join("data"), format!("cannot seed kv: {e}"))
        })?;
    }
    Ok(())
}
