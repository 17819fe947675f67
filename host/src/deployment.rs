//! A deployment on disk: `peerhost.toml`, `peers/<name>/…` and the Rhai
//! library `lib/*.rhai` every peer may import from.

use crate::config::{DeploymentError, Limits, WorkerConfig, load_toml};
use crate::files::Stamp;
use crate::identity::PeerId;
use crate::logic::Logic;
use crate::peer::Peer;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// A loaded deployment: the worker configuration and the peers to host.
#[derive(Debug)]
pub struct Deployment {
    /// The deployment directory.
    pub root: PathBuf,
    /// `peerhost.toml`.
    pub config: WorkerConfig,
    /// The hosted peers by name, each loaded at its first use.
    pub peers: Peers,
    /// The worker's metrics, shared by its peers.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Deployment {
    /// Loads the deployment at `root`. With `only` non-empty, hosts just
    /// those peers (an isolated worker); otherwise every configured peer.
    /// `peerhost.toml` and every new or changed peer are read now, the
    /// first bad one reported; the peers [`Peers`] knows from its index are
    /// read at their first use.
    pub fn load(root: &Path, only: &[String]) -> Result<Deployment, DeploymentError> {
        Deployment::open(root, only, false).map(|(deployment, _)| deployment)
    }

    /// Loads the deployment at `root` reading every peer now, as
    /// `peerhost check` does: the peers that cannot be read are left out
    /// and returned, each with its error, instead of failing the load.
    pub fn check(
        root: &Path,
    ) -> Result<(Deployment, Vec<(String, DeploymentError)>), DeploymentError> {
        Deployment::open(root, &[], true)
    }

    fn open(
        root: &Path,
        only: &[String],
        check: bool,
    ) -> Result<(Deployment, Vec<(String, DeploymentError)>), DeploymentError> {
        let config_path = root.join("peerhost.toml");
        if !config_path.exists() {
            return Err(DeploymentError::file(
                &config_path,
                "missing: not a peerhost deployment (create one with `peerhost init DIR`)",
            ));
        }
        let config: WorkerConfig = load_toml(&config_path)?;
        let peers_dir = root.join("peers");
        // Listed peers must have their files; found directories without a
        // peer.toml are not peers.
        let (configured, scanned) = match &config.peers {
            Some(names) => (names.clone(), false),
            None => (list_peer_dirs(&peers_dir)?, true),
        };
        let mut names: Vec<String> = if only.is_empty() {
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
        // A name given twice is one peer.
        let mut seen = std::collections::HashSet::new();
        names.retain(|name| seen.insert(name.clone()));
        // The library every peer may import from, read on first use.
        let library = Arc::new(Logic::library(root.join("lib")));
        // The worker's own registry: what its peers count, `/metrics` shows.
        let metrics = Arc::new(crate::metrics::Metrics::new(
            config.metrics.peers.iter().cloned(),
        ));
        let (peers, failed) = Peers::open(
            root,
            names,
            Hosting {
                scanned,
                partial: !only.is_empty(),
                check,
            },
            config.limits,
            library,
            metrics.clone(),
        )?;
        let deployment = Deployment {
            root: root.to_owned(),
            config,
            peers,
            metrics,
        };
        Ok((deployment, failed))
    }
}

impl Deployment {
    /// Opens every hosted peer's kv store: the peers whose store cannot be
    /// opened, with the backend's name and the cause.
    pub fn storage_errors(&self) -> Vec<(String, &'static str, crate::kv::KvError)> {
        self.peers
            .loaded()
            .filter_map(|peer| {
                peer.kv
                    .check()
                    .err()
                    .map(|e| (peer.name.clone(), peer.kv.name(), e))
            })
            .collect()
    }
}

/// The directories of `peers/` (by the entry's type: no stat each); those
/// without a `peer.toml` are left out by [`Peers::open`].
fn list_peer_dirs(peers_dir: &Path) -> Result<Vec<String>, DeploymentError> {
    let entries = std::fs::read_dir(peers_dir)
        .map_err(|e| DeploymentError::file(peers_dir, format!("cannot list peers: {e}")))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|e| DeploymentError::file(peers_dir, format!("cannot list peers: {e}")))?;
        let dir = match entry.file_type() {
            Ok(kind) if kind.is_symlink() => entry.path().is_dir(),
            Ok(kind) => kind.is_dir(),
            Err(_) => false,
        };
        if dir {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// The peers of a deployment, each read from its files at its first use.
///
/// At start a worker reads only `state/peers.index` (name, the stamps of
/// `peer.toml` and `contacts.toml`, and id of every peer it has read whole
/// before) and stats those two files of each peer: a peer whose files are
/// as indexed is known by its id and read at its first invocation; a new or
/// changed peer is read (and its storage checked by `serve`) at start, as
/// is every peer when there is no index. `peerhost check` reads them all.
pub struct Peers {
    root: PathBuf,
    limits: Limits,
    library: Arc<Logic>,
    metrics: Arc<crate::metrics::Metrics>,
    slots: BTreeMap<String, Slot>,
    by_id: HashMap<[u8; 32], String>,
    /// Set once a peer's id was found changed and the index removed.
    index_dropped: AtomicBool,
}

/// Which peers a worker hosts: `scanned` when they are the directories of
/// `peers/` (not listed in `peerhost.toml`), `partial` when only some of
/// the deployment's (`--peer`); `check` to read every one now and collect
/// the errors.
#[derive(Clone, Copy)]
struct Hosting {
    scanned: bool,
    partial: bool,
    check: bool,
}

struct Slot {
    id: [u8; 32],
    peer: OnceLock<Arc<Peer>>,
    /// Held while the peer is read at its first use (one reader per peer;
    /// other peers are read meanwhile), holding the last failure to read it.
    failure: Mutex<Option<Box<Failure>>>,
}

impl Slot {
    fn new(id: [u8; 32], peer: OnceLock<Arc<Peer>>) -> Slot {
        Slot {
            id,
            peer,
            failure: Mutex::new(None),
        }
    }
}

/// Why a peer could not be read, and when.
struct Failure {
    error: DeploymentError,
    at: Instant,
}

/// How long a peer that cannot be read answers with the same error before
/// its files are read again: a fixed file is in force within this, and a
/// stream of requests to a broken peer reads its files once per period.
pub const RETRY: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("peers", &self.slots.len())
            .field("loaded", &self.loaded().count())
            .finish_non_exhaustive()
    }
}

/// Where the index of a deployment's peers is kept.
pub fn index_path(root: &Path) -> PathBuf {
    root.join("state").join("peers.index")
}

const INDEX_HEADER: &str = "peerhost peers index 1";

/// One line of the index: the stamps of `peer.toml` and `contacts.toml`
/// (`-` when missing) and the id's 32 bytes.
#[derive(Clone, PartialEq, Eq)]
struct Indexed {
    stamps: (String, String),
    id: [u8; 32],
}

fn read_index(root: &Path) -> HashMap<String, Indexed> {
    let Ok(text) = std::fs::read_to_string(index_path(root)) else {
        return HashMap::new();
    };
    let mut lines = text.lines();
    if lines.next() != Some(INDEX_HEADER) {
        return HashMap::new();
    }
    let mut index = HashMap::new();
    for line in lines {
        let mut fields = line.split('\t');
        let (Some(name), Some(toml), Some(contacts), Some(id), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            // Not written by this worker: read every peer again.
            return HashMap::new();
        };
        let mut bytes = [0u8; 32];
        if hex::decode_to_slice(id, &mut bytes).is_err() {
            return HashMap::new();
        }
        index.insert(
            name.to_owned(),
            Indexed {
                stamps: (toml.to_owned(), contacts.to_owned()),
                id: bytes,
            },
        );
    }
    index
}

fn write_index(root: &Path, index: &BTreeMap<&str, Indexed>) -> std::io::Result<()> {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(64 + index.len() * 160);
    text.push_str(INDEX_HEADER);
    text.push('\n');
    for (name, entry) in index {
        let _ = writeln!(
            text,
            "{name}\t{}\t{}\t{}",
            entry.stamps.0,
            entry.stamps.1,
            hex::encode(entry.id)
        );
    }
    let path = index_path(root);
    let dir = path.parent().unwrap_or(root);
    std::fs::create_dir_all(dir)?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut temp, text.as_bytes())?;
    temp.as_file().sync_all()?;
    temp.persist(&path).map_err(|e| e.error)?;
    Ok(())
}

/// What the start learns of a peer without reading it: the stamps of its
/// `peer.toml` and `contacts.toml` (`-` when missing), whether either was
/// modified too recently to be trusted at the next start, and whether it
/// has a `peer.toml` at all.
struct Look {
    stamps: (String, String),
    racy: bool,
    has_toml: bool,
}

fn look(dir: &Path, now: SystemTime) -> Look {
    let word = |stamp: &Option<Stamp>| stamp.as_ref().map_or_else(|| "-".to_owned(), Stamp::word);
    let toml = Stamp::at(&dir.join("peer.toml"));
    let contacts = Stamp::at(&dir.join("contacts.toml"));
    Look {
        racy: toml.as_ref().is_none_or(|s| s.racy(now))
            || contacts.as_ref().is_some_and(|s| s.racy(now)),
        has_toml: toml.is_some(),
        stamps: (word(&toml), word(&contacts)),
    }
}

/// [`look`] at every peer of `names`, on a few threads: stats are most of
/// a start, and the kernel serves them in parallel.
fn look_all(peers_dir: &Path, names: &[String], now: SystemTime) -> Vec<Look> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let chunk = names.len().div_ceil(threads).max(1024);
    if names.len() <= chunk {
        return names
            .iter()
            .map(|n| look(&peers_dir.join(n), now))
            .collect();
    }
    std::thread::scope(|scope| {
        let parts: Vec<_> = names
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|n| look(&peers_dir.join(n), now))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|part| match part.join() {
                Ok(looks) => looks,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

fn id_bytes(id: &PeerId) -> [u8; 32] {
    id.key().to_bytes()
}

impl Peers {
    /// The peers `names` of the deployment at `root`: those indexed with
    /// their files unchanged are known by id, the others read now (all of
    /// them with `hosting.check`, which leaves out and returns the peers
    /// that cannot be read instead of failing).
    fn open(
        root: &Path,
        names: Vec<String>,
        hosting: Hosting,
        limits: Limits,
        library: Arc<Logic>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<(Peers, Vec<(String, DeploymentError)>), DeploymentError> {
        let old = read_index(root);
        let now = SystemTime::now();
        let peers_dir = root.join("peers");
        let looks = look_all(&peers_dir, &names, now);
        let mut slots = Vec::with_capacity(names.len());
        let mut in_old = 0usize;
        let mut read = 0usize;
        // Whether the index on disk must be written again.
        let mut changed = false;
        let mut indexed: Vec<(&str, Indexed)> = Vec::with_capacity(names.len());
        let mut failed = Vec::new();
        for (name, look) in names.iter().zip(looks) {
            // A directory without peer.toml is no peer, unless named.
            if hosting.scanned && !hosting.partial && !look.has_toml {
                continue;
            }
            let entry = old.get(name.as_str());
            in_old += usize::from(entry.is_some());
            let known = entry.filter(|e| !hosting.check && e.stamps == look.stamps);
            let slot = match known {
                Some(entry) => Slot::new(entry.id, OnceLock::new()),
                None => {
                    changed = true;
                    let peer = match Peer::load(root, name, limits, &library, &metrics) {
                        Ok(peer) => Arc::new(peer),
                        Err(e) if hosting.check => {
                            failed.push((name.clone(), e));
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    read += 1;
                    Slot::new(id_bytes(&peer.id), OnceLock::from(peer))
                }
            };
            if look.racy {
                changed |= known.is_some();
            } else {
                indexed.push((
                    name,
                    Indexed {
                        stamps: look.stamps,
                        id: slot.id,
                    },
                ));
            }
            slots.push((name.clone(), slot));
        }
        // Sorted already: built in one pass.
        let slots: BTreeMap<String, Slot> = slots.into_iter().collect();
        // Entries of peers this worker does not host stay for the other
        // workers of the deployment; a whole-deployment worker drops them.
        let others = old.len() > in_old;
        changed |= others && !hosting.partial;
        if changed {
            let mut index: BTreeMap<&str, Indexed> = indexed.into_iter().collect();
            if hosting.partial {
                for (name, entry) in &old {
                    if !slots.contains_key(name) {
                        index.insert(name, entry.clone());
                    }
                }
            }
            if let Err(e) = write_index(root, &index) {
                tracing::debug!("cannot write {}: {e}", index_path(root).display());
            }
        }
        if read > 0 && !old.is_empty() {
            tracing::info!(
                "read {read} new or changed peer(s) at start; {} known from the index",
                slots.len().saturating_sub(read)
            );
        }
        let by_id = slots
            .iter()
            .map(|(name, slot)| (slot.id, name.clone()))
            .collect();
        let peers = Peers {
            root: root.to_owned(),
            limits,
            library,
            metrics,
            slots,
            by_id,
            index_dropped: AtomicBool::new(false),
        };
        Ok((peers, failed))
    }

    /// The peer `name` if it has been read; `Some(None)` when it is hosted
    /// but not read yet (then [`Peers::get`] reads it, a blocking call),
    /// `None` when it is not hosted.
    pub fn read_yet(&self, name: &str) -> Option<Option<Arc<Peer>>> {
        self.slots.get(name).map(|slot| slot.peer.get().cloned())
    }

    /// The peer `name`, read now if this is its first use; `None` when the
    /// deployment does not host it.
    pub fn get(&self, name: &str) -> Option<Result<Arc<Peer>, DeploymentError>> {
        let slot = self.slots.get(name)?;
        Some(match slot.peer.get() {
            Some(peer) => Ok(peer.clone()),
            None => self.load(name, slot),
        })
    }

    /// The hosted peer whose id is `id`.
    pub fn by_id(&self, id: &PeerId) -> Option<Result<Arc<Peer>, DeploymentError>> {
        self.get(self.name_of(id)?)
    }

    /// The name of the hosted peer whose id is `id`.
    pub fn name_of(&self, id: &PeerId) -> Option<&str> {
        self.by_id.get(&id_bytes(id)).map(String::as_str)
    }

    /// The ids of the hosted peers, with their names, sorted by name.
    pub fn ids(&self) -> Vec<(&str, PeerId)> {
        self.slots
            .iter()
            .filter_map(|(name, slot)| {
                let key = ed25519_dalek::VerifyingKey::from_bytes(&slot.id).ok()?;
                Some((name.as_str(), PeerId::from_key(key).ok()?))
            })
            .collect()
    }

    /// Whether a peer of this id is hosted here.
    pub fn hosts(&self, id: &PeerId) -> bool {
        self.by_id.contains_key(&id_bytes(id))
    }

    /// Reads the peer of `slot` unless it is read or failed less than
    /// [`RETRY`] ago (then the same error).
    fn load(&self, name: &str, slot: &Slot) -> Result<Arc<Peer>, DeploymentError> {
        let mut failure = slot.failure.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(peer) = slot.peer.get() {
            return Ok(peer.clone());
        }
        if let Some(failure) = failure.as_ref()
            && failure.at.elapsed() < RETRY
        {
            return Err(failure.error.clone());
        }
        match self.read(name, slot) {
            Ok(peer) => {
                *failure = None;
                Ok(slot.peer.get_or_init(|| Arc::new(peer)).clone())
            }
            Err(error) => {
                tracing::warn!("peer `{name}` cannot be read: {error}");
                *failure = Some(Box::new(Failure {
                    error: error.clone(),
                    at: Instant::now(),
                }));
                Err(error)
            }
        }
    }

    /// Reads the files of the peer of `slot`, which must still have the id
    /// this worker started with.
    fn read(&self, name: &str, slot: &Slot) -> Result<Peer, DeploymentError> {
        let peer = Peer::load(&self.root, name, self.limits, &self.library, &self.metrics)?;
        if id_bytes(&peer.id) != slot.id {
            // The index no longer describes the files: the next start
            // reads every peer.
            if !self.index_dropped.swap(true, Ordering::Relaxed) {
                let _ = std::fs::remove_file(index_path(&self.root));
            }
            return Err(DeploymentError::file(
                &self.root.join("peers").join(name).join("peer.toml"),
                format!(
                    "the peer's id is now {}, not the one this worker started with: restart the worker",
                    peer.id
                ),
            ));
        }
        Ok(peer)
    }

    /// The names of the hosted peers, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.keys().map(String::as_str)
    }

    /// Whether the deployment hosts `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.slots.contains_key(name)
    }

    /// How many peers are hosted.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no peer is hosted.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The peers read so far.
    pub fn loaded(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.slots.values().filter_map(|slot| slot.peer.get())
    }
}

/// `deployment.peers["name"]`, for tests and benchmarks: panics when the
/// peer is not hosted or cannot be read, as a map's index does.
impl std::ops::Index<&str> for Peers {
    type Output = Arc<Peer>;

    fn index(&self, name: &str) -> &Arc<Peer> {
        let Some(slot) = self.slots.get(name) else {
            panic!("no peer `{name}` is hosted")
        };
        if let Err(e) = self.load(name, slot) {
            panic!("peer `{name}`: {e}")
        }
        match slot.peer.get() {
            Some(peer) => peer,
            None => panic!("peer `{name}` was not kept"),
        }
    }
}
