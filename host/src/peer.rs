//! A peer as the host holds it: its name, identity, configuration, policy,
//! contacts, namespace, kv store and audit log, loaded from `peers/<name>/`
//! and, where the peer signs here, `keys/<name>.key`.

use crate::audit::AuditLog;
use crate::config::{DeploymentError, Limits, PeerConfig, load_toml};
use crate::contacts::Contacts;
use crate::identity::{Caller, PeerId, PeerKey};
use crate::kv::KvBackend;
use crate::namespace::Namespace;
use crate::policy::PeerPolicy;
use crate::replay::ReplayGuard;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One hosted peer.
#[derive(Debug)]
pub struct Peer {
    /// The peer's name: its directory under `peers/` and its principal in policies.
    pub name: String,
    /// The peer's id.
    pub id: PeerId,
    /// The peer's secret key, when present in this deployment's `keys/`:
    /// read when first needed ([`Peer::key`]).
    key: Option<LazyKey>,
    /// The owner's address book.
    pub contacts: Contacts,
    /// Where every decision is recorded.
    pub audit: AuditLog,
    /// Nonces of the envelopes this peer accepted, until they expire.
    pub replays: ReplayGuard,
    /// `peer.toml`.
    pub config: PeerConfig,
    /// The worker's limits narrowed by the peer's.
    pub limits: Limits,
    /// The host directories of the namespace.
    pub namespace: Namespace,
    /// The namespace's bytes, against `[quotas] fs_bytes`.
    pub fs_usage: crate::namespace::FsUsage,
    /// The `kv` capability's data.
    pub kv: Box<dyn KvBackend>,
    /// The peer's Rhai modules.
    pub logic: crate::logic::Logic,
    /// What each caller has used here, against `config.quotas`.
    pub usage: crate::quota::Usage,
    /// Bytes each caller wrote here over the last minute.
    pub written: crate::budget::CallerWrites,
    /// The record collections declared in `collections.toml` (none when
    /// there is no such file).
    pub collections: Arc<crate::collections::Collections>,
    /// The worker's metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Invocations here per minute, for the console.
    pub activity: crate::metrics::Activity,
    /// The peer's value of the `peer` label: its name when
    /// `[metrics] peers` lists it, else `other`.
    pub label: crate::metrics::PeerLabel,
    policy: PolicyFile,
}

/// A key file read when first needed, and checked then: its secret must
/// give the peer's id.
#[derive(Debug)]
struct LazyKey {
    path: PathBuf,
    loaded: std::sync::OnceLock<Result<PeerKey, String>>,
}

impl LazyKey {
    fn get(&self) -> Result<&PeerKey, String> {
        self.loaded
            .get_or_init(|| PeerKey::load(&self.path).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// `policy.cedar` and the version in use: re-read when the file changes;
/// a version that does not validate is refused and the one before it stays.
#[derive(Debug)]
struct PolicyFile {
    path: PathBuf,
    current: std::sync::Mutex<PolicyVersion>,
    /// The peer's directory, watched from the first use on.
    watch: std::sync::OnceLock<crate::files::Watch>,
}

#[derive(Debug)]
struct PolicyVersion {
    stamp: Option<crate::files::Stamp>,
    /// The directory's [`crate::files::Watch`] number when the stamp was
    /// taken, and when that was.
    seen: Option<(u64, std::time::Instant)>,
    racy: bool,
    policy: Arc<PeerPolicy>,
    /// Why the file on disk is not in use.
    refused: Option<String>,
}

impl PolicyFile {
    fn load(path: PathBuf) -> Result<PolicyFile, DeploymentError> {
        let now = std::time::SystemTime::now();
        let stamp = crate::files::Stamp::at(&path);
        let policy = Arc::new(PeerPolicy::load(&path)?);
        Ok(PolicyFile {
            current: std::sync::Mutex::new(PolicyVersion {
                racy: stamp.as_ref().is_some_and(|s| s.racy(now)),
                stamp,
                seen: None,
                policy,
                refused: None,
            }),
            path,
            watch: std::sync::OnceLock::new(),
        })
    }

    fn get(&self) -> Arc<PeerPolicy> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        // Nothing reported in the directory since the file was last looked
        // at (within `files::TRUSTED`): no need to look again.
        let generation = self
            .watch
            .get_or_init(|| crate::files::Watch::new(self.path.parent().unwrap_or(Path::new("."))))
            .generation();
        if !current.racy
            && let (Some(now), Some((then, at))) = (generation, current.seen)
            && now == then
            && at.elapsed() < crate::files::TRUSTED
        {
            return current.policy.clone();
        }
        let stamp = crate::files::Stamp::at(&self.path);
        if !current.racy && stamp == current.stamp {
            current.seen = generation.map(|g| (g, std::time::Instant::now()));
            return current.policy.clone();
        }
        let now = std::time::SystemTime::now();
        match crate::files::off_async(|| PeerPolicy::load(&self.path)) {
            Ok(policy) => {
                if !Arc::ptr_eq(&policy.set(), &current.policy.set()) {
                    tracing::info!(target: "peerhost::policy", path = %self.path.display(), "policy changed on disk, now in use");
                }
                current.policy = Arc::new(policy);
                current.refused = None;
            }
            Err(e) => {
                let refused = e.to_string();
                if current.refused.as_deref() != Some(refused.as_str()) {
                    tracing::warn!(
                        target: "peerhost::policy",
                        "policy edit refused, the version before it stays in use: {refused}"
                    );
                }
                current.refused = Some(refused);
            }
        }
        // A missing file is not racy: it is read again once it appears.
        current.racy = stamp.as_ref().is_some_and(|s| s.racy(now));
        current.stamp = stamp;
        current.seen = generation.map(|g| (g, std::time::Instant::now()));
        current.policy.clone()
    }

    /// Validates `text`, writes it over the file and puts it in use.
    fn replace(&self, text: &str) -> Result<(), DeploymentError> {
        let policy = Arc::new(PeerPolicy::parse(&self.path, text)?);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        crate::files::write_atomically(&self.path, text)
            .map_err(|e| DeploymentError::file(&self.path, format!("cannot write: {e}")))?;
        current.stamp = crate::files::Stamp::at(&self.path);
        current.seen = None;
        current.racy = true;
        current.policy = policy;
        current.refused = None;
        Ok(())
    }
}

pub use crate::identity::valid_name;

/// The key file of peer `name` in the deployment at `root`.
pub fn key_path(root: &Path, name: &str) -> PathBuf {
    root.join("keys").join(format!("{name}.key"))
}

impl Peer {
    /// Loads peer `name` from `root/peers/<name>/` (and `root/keys/<name>.key`
    /// when present) with the worker's `limits` and the deployment's
    /// `library`, counting into the worker's `metrics`.
    pub fn load(
        root: &Path,
        name: &str,
        limits: Limits,
        library: &Arc<crate::logic::Logic>,
        metrics: &Arc<crate::metrics::Metrics>,
    ) -> Result<Peer, DeploymentError> {
        let dir = root.join("peers").join(name);
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
        let key_file = key_path(root, name);
        let key = key_file.exists().then(|| LazyKey {
            path: key_file.clone(),
            loaded: std::sync::OnceLock::new(),
        });
        let id = match (&config.id, &key) {
            // The id the key file names, compared as text: deriving it from
            // the secret (a scalar multiplication, most of a peer's load)
            // waits until the key is first used, which checks it.
            (Some(id), Some(key)) => {
                let named = PeerKey::read_id(&key.path)
                    .map_err(|e| DeploymentError::file(&key.path, e.to_string()))?;
                if named != id.to_string() {
                    return Err(DeploymentError::file(
                        &config_path,
                        format!(
                            "`id` {id} is not the id of {} ({named})",
                            key_file.display()
                        ),
                    ));
                }
                *id
            }
            (Some(id), None) => *id,
            (None, Some(key)) => key
                .get()
                .map_err(|e| DeploymentError::file(&key.path, e))?
                .id(),
            (None, None) => {
                return Err(DeploymentError::file(
                    &config_path,
                    format!(
                        "peer `{name}` has no identity: add its `id` here, or create its key with `peerhost peer new {name}`"
                    ),
                ));
            }
        };
        let policy = PolicyFile::load(dir.join("policy.cedar"))?;
        let collections = Arc::new(crate::collections::Collections::load(&dir)?);
        let contacts_path = dir.join("contacts.toml");
        let contacts = Contacts::load(&contacts_path, name, Some(&id))?;
        let namespace = Namespace::open(&dir, name, &config.storage)?;
        let kv = crate::kv::open(&dir, name, &config.storage)?;
        let fs_usage = crate::namespace::FsUsage::of(&namespace, config.quotas.fs_bytes);
        Ok(Peer {
            collections,
            label: metrics.peer(name),
            activity: Default::default(),
            metrics: metrics.clone(),
            name: name.to_owned(),
            id,
            key,
            contacts,
            audit: AuditLog::new(crate::audit::path(&dir)),
            replays: ReplayGuard::at(dir.join("state")),
            limits: limits.narrowed(&config.limits),
            config,
            logic: crate::logic::Logic::with_library(namespace.logic.clone(), library.clone()),
            usage: crate::quota::Usage::new(crate::quota::usage_path(&dir)),
            written: Default::default(),
            fs_usage,
            namespace,
            kv,
            policy,
        })
    }

    /// The peer's policy as it is now: `policy.cedar`, read again when it
    /// changed (an invocation keeps the version it began with).
    pub fn policy(&self) -> Arc<PeerPolicy> {
        self.policy.get()
    }

    /// Validates `text` against the schema, then makes it the peer's
    /// policy, on disk and in use; an invalid one changes nothing.
    pub fn replace_policy(&self, text: &str) -> Result<(), DeploymentError> {
        self.policy.replace(text)
    }

    /// The limits of an invocation by `caller`: the peer's, narrowed by the
    /// caller's entry in `[quotas.callers]` (a stranger's also by `[quotas.strangers]`).
    pub fn limits_for(&self, caller: &str) -> Limits {
        match self.config.quotas.narrowing(caller) {
            Some(quota) => self.limits.narrowed(&crate::config::PeerLimits {
                wall_time_ms: quota.wall_time_ms,
                memory_mib: quota.memory_mib,
                operations: quota.operations,
            }),
            None => self.limits,
        }
    }
}

impl Peer {
    /// The peer's secret key, when this deployment holds it: read from
    /// `keys/<name>.key` at the first call and checked against the peer's
    /// id (an error names the file and what is wrong with it).
    pub fn key(&self) -> Result<Option<&PeerKey>, String> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let loaded = key.get()?;
        if loaded.id() != self.id {
            return Err(format!(
                "{}: its secret is the key of {}, not of `{}` ({})",
                key.path.display(),
                loaded.id(),
                self.name,
                self.id
            ));
        }
        Ok(Some(loaded))
    }

    /// `id` as this peer knows it: itself, a contact by petname, or a stranger named by its id.
    pub fn caller(&self, id: PeerId) -> Caller {
        let name = if id == self.id {
            self.name.clone()
        } else {
            match self.contacts.petname(&id) {
                Some(petname) => petname.to_owned(),
                None => id.to_string(),
            }
        };
        Caller {
            id: Some(id),
            principal: name,
        }
    }
}
