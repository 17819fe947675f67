//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, `make fuzz`):
//! each takes arbitrary bytes the way the host takes them from the network
//! or from a deployment, and must return (an error is fine), never panic.
//! `make test` replays every input saved in `fuzz/corpus/<target>/` through
//! the same functions (the test at the end of this file), so a crash the
//! fuzzer found and saved stays fixed.

use crate::config::{DeploymentError, PeerConfig, Validate, WorkerConfig};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// An envelope as `POST /v1/envelopes` receives it: JSON, then opened
/// (hash, validity window, signature) at a fixed time.
pub fn envelope(data: &[u8]) {
    let Ok(envelope) = serde_json::from_slice::<crate::envelope::Envelope>(data) else {
        return;
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let _ = envelope.open(now);
    let _ = envelope.claimed_caller();
}

/// A policy file as a worker loads it: parsed, then validated against the
/// schema.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::policy::PeerPolicy::parse(Path::new("fuzz.cedar"), text);
}

/// `peerhost.toml` and `peer.toml` as a worker loads them.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let _ = load::<WorkerConfig>(path, text);
    let _ = load::<PeerConfig>(path, text);
}

fn load<T: for<'de> serde::Deserialize<'de> + Validate>(
    path: &Path,
    text: &str,
) -> Result<T, DeploymentError> {
    let value: T = crate::config::parse_toml(path, text)?;
    value.validate(path, text)?;
    Ok(value)
}

/// A kv key as a script names it, turned into the file name it is stored
/// under: every key that is accepted must come back unchanged, and no file
/// name may leave the kv directory.
pub fn kv_key(data: &[u8]) {
    let Ok(key) = std::str::from_utf8(data) else {
        return;
    };
    if crate::kv::check_key(key).is_ok() {
        let name = crate::kv::fs::encode_key(key);
        assert!(
            !name.contains('/') && name != "." && name != ".." && !name.contains('\0'),
            "key {key:?} became the unsafe file name {name:?}"
        );
        assert_eq!(
            crate::kv::fs::decode_key(&name).as_deref(),
            Some(key),
            "key {key:?} does not round-trip through {name:?}"
        );
    }
}

/// `contacts.toml` as a worker loads it for peer `bob`: parsed, checked
/// (petnames, URLs, duplicate ids, the owner's own name).
pub fn contacts(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::contacts::Contacts::parse(Path::new("contacts.toml"), text, "bob", None);
}

/// A fuzz target: arbitrary bytes in, nothing out, never a panic.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, as in `fuzz/fuzz_targets/`.
pub const TARGETS: [(&str, Target); 5] = [
    ("envelope", envelope),
    ("policy", policy),
    ("config", config),
    ("kv_key", kv_key),
    ("contacts", contacts),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every saved input of every target runs without a panic.
    #[test]
    fn the_fuzz_corpus_replays_cleanly() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let mut replayed = 0;
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                panic!("no corpus for fuzz target `{name}` in {}", dir.display());
            };
            for entry in entries.flatten() {
                let data = std::fs::read(entry.path()).unwrap_or_default();
                target(&data);
                replayed += 1;
            }
        }
        assert!(replayed >= TARGETS.len(), "the corpus is empty");
    }
}
