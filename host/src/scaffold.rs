//! `peerhost init`: a demo deployment with peers alice and bob.

use crate::capability::kv::KvStore;
use crate::config::DeploymentError;
use crate::namespace::Namespace;
use crate::policy::DEFAULT_POLICY;
use std::path::Path;

const WORKER_TOML: &str = r#"# peerhost worker configuration (see README.md).
# Where `peerhost serve` listens unless --listen says otherwise.
listen = "127.0.0.1:7070"

# The peers of this deployment; every directory of peers/ when absent.
peers = ["alice", "bob"]

# Default limits of one invocation; a peer.toml may narrow them.
[limits]
wall_time_ms = 1000
memory_mib = 64
"#;

const BOB_POLICY: &str = include_str!("../../policies/bob.cedar");

fn peer_toml(description: &str, owner: &str) -> String {
    format!(
        "# One peer: its owner, storage and limits (see README.md).\ndescription = \"{description}\"\n\n[owner]\nname = \"{owner}\"\ncontact = \"\"\n\n[storage]\nbackend = \"fs\"\n"
    )
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
    for (name, ..) in &peers {
        let peer_dir = dir.join("peers").join(name);
        if peer_dir.exists() {
            return Err(DeploymentError::file(
                &peer_dir,
                "already exists: nothing was changed",
            ));
        }
    }
    let write = |path: &Path, text: &str| {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| DeploymentError::file(parent, format!("cannot create: {e}")))?;
        }
        std::fs::write(path, text)
            .map_err(|e| DeploymentError::file(path, format!("cannot write: {e}")))
    };
    for (name, description, owner, policy, logic) in peers {
        let peer_dir = dir.join("peers").join(name);
        write(&peer_dir.join("peer.toml"), &peer_toml(description, owner))?;
        write(&peer_dir.join("policy.cedar"), policy)?;
        write(&peer_dir.join("logic").join("main.rhai"), logic)?;
        let (_, kv) = Namespace::open(&peer_dir)?;
        if name == "bob" {
            seed(&kv, &peer_dir)?;
        }
    }
    write(&config, WORKER_TOML)?;
    Ok(())
}

fn seed(kv: &KvStore, peer_dir: &Path) -> Result<(), DeploymentError> {
    for (key, value) in [
        ("public/motd", "\"Hello from bob\""),
        ("private/diary", "\"alice must never read this\""),
    ] {
        kv.set(key, value).map_err(|e| {
            DeploymentError::file(&peer_dir.join("data"), format!("cannot seed kv: {e}"))
        })?;
    }
    Ok(())
}
