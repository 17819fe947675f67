//! A peer as the host holds it: its name, configuration, policy, namespace
//! and kv store, loaded from `peers/<name>/`.

use crate::capability::kv::KvStore;
use crate::config::{DeploymentError, Limits, PeerConfig, load_toml};
use crate::namespace::Namespace;
use crate::policy::{ANONYMOUS, PeerPolicy};
use std::path::Path;

/// One hosted peer.
#[derive(Debug)]
pub struct Peer {
    /// The peer's name: its directory under `peers/` and its principal in policies.
    pub name: String,
    /// `peer.toml`.
    pub config: PeerConfig,
    /// The worker's limits narrowed by the peer's.
    pub limits: Limits,
    /// The host directories of the namespace.
    pub namespace: Namespace,
    /// The `kv` capability's data.
    pub kv: KvStore,
    policy: PeerPolicy,
}

/// Whether `name` can name a peer: 1 to 63 of `[a-z0-9_-]`, starting with a
/// letter or digit, and not the reserved `anonymous`.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
        && name != ANONYMOUS
}

impl Peer {
    /// Loads peer `name` from `peers_dir/<name>/` with the worker's `limits`.
    pub fn load(peers_dir: &Path, name: &str, limits: Limits) -> Result<Peer, DeploymentError> {
        let dir = peers_dir.join(name);
        if !valid_name(name) {
            return Err(DeploymentError::file(
                &dir,
                format!(
                    "`{name}` is not a valid peer name: use 1 to 63 of a-z, 0-9, `-`, `_` (not `anonymous`)"
                ),
            ));
        }
        let config_path = dir.join("peer.toml");
        if !config_path.exists() {
            return Err(DeploymentError::file(
                &config_path,
                "missing: every peer needs a peer.toml",
            ));
        }
        let config: PeerConfig = load_toml(&config_path)?;
        let policy = PeerPolicy::load(&dir.join("policy.cedar"))?;
        let (namespace, kv) = Namespace::open(&dir)?;
        Ok(Peer {
            name: name.to_owned(),
            limits: limits.narrowed(&config.limits),
            config,
            namespace,
            kv,
            policy,
        })
    }

    /// The peer's policy.
    pub fn policy(&self) -> &PeerPolicy {
        &self.policy
    }
}
