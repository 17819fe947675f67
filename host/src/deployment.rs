//! A deployment on disk: `peerhost.toml`, `peers/<name>/…` and the Rhai
//! library `lib/*.rhai` every peer may import from.

use crate::config::{DeploymentError, WorkerConfig, load_toml};
use crate::peer::Peer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A loaded deployment: the worker configuration and the peers to host.
#[derive(Debug)]
pub struct Deployment {
    /// The deployment directory.
    pub root: PathBuf,
    /// `peerhost.toml`.
    pub config: WorkerConfig,
    /// The hosted peers by name.
    pub peers: BTreeMap<String, Arc<Peer>>,
}

impl Deployment {
    /// Loads the deployment at `root`. With `only` non-empty, hosts just
    /// those peers (an isolated worker); otherwise every configured peer.
    /// Every file is validated; the first bad one is reported.
    pub fn load(root: &Path, only: &[String]) -> Result<Deployment, DeploymentError> {
        let config_path = root.join("peerhost.toml");
        if !config_path.exists() {
            return Err(DeploymentError::file(
                &config_path,
                "missing: not a peerhost deployment (create one with `peerhost init DIR`)",
            ));
        }
        let config: WorkerConfig = load_toml(&config_path)?;
        let peers_dir = root.join("peers");
        let configured = match &config.peers {
            Some(names) => names.clone(),
            None => list_peer_dirs(&peers_dir)?,
        };
        let names: Vec<String> = if only.is_empty() {
            configured
        } else {
            for name in only {
                if !configured.contains(name) {
                    return Err(DeploymentError::file(
                        &peers_dir.join(name),
                        format!(
                            "no peer `{name}` in this deployment (peers: {})",
                            configured.join(", ")
                        ),
                    ));
                }
            }
            only.to_vec()
        };
        // The library every peer may import from, read on first use.
        let library = Arc::new(crate::logic::Logic::library(root.join("lib")));
        let mut peers = BTreeMap::new();
        for name in names {
            let peer = Peer::load(root, &name, config.limits, &library)?;
            peers.insert(name, Arc::new(peer));
        }
        Ok(Deployment {
            root: root.to_owned(),
            config,
            peers,
        })
    }
}

impl Deployment {
    /// Opens every hosted peer's kv store: the peers whose store cannot be
    /// opened, with the backend's name and the cause.
    pub fn storage_errors(&self) -> Vec<(String, &'static str, crate::kv::KvError)> {
        self.peers
            .iter()
            .filter_map(|(name, peer)| {
                peer.kv
                    .check()
                    .err()
                    .map(|e| (name.clone(), peer.kv.name(), e))
            })
            .collect()
    }
}

fn list_peer_dirs(peers_dir: &Path) -> Result<Vec<String>, DeploymentError> {
    let entries = std::fs::read_dir(peers_dir)
        .map_err(|e| DeploymentError::file(peers_dir, format!("cannot list peers: {e}")))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|e| DeploymentError::file(peers_dir, format!("cannot list peers: {e}")))?;
        if entry.path().join("peer.toml").exists() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}
