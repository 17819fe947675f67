//! Replay protection that survives a restart and is shared by every worker
//! serving a peer.
//!
//! Each accepted envelope leaves a 24-byte record in
//! `peers/<name>/state/nonces`: 16 bytes of SHA-256 over caller and nonce,
//! then the envelope's expiry (ms since the Unix epoch, little-endian). A
//! worker holds the live records in memory and, under an exclusive lock on
//! `state/nonces.lock`, reads what other workers appended since it last
//! looked, decides, and appends its own. A restarted worker reads the file
//! again, so an envelope captured before the restart is still refused until
//! it expires ([`crate::envelope::MAX_LIFETIME`] at most). When most records
//! have expired the file is rewritten with the live ones only (renamed over
//! the old; the others notice the new inode and read it whole).
//!
//! Bounds: at most [`MAX_REMEMBERED`] live nonces per peer (then
//! [`EnvelopeError::Busy`]), about 40 bytes of memory and 24 bytes of disk
//! each; the file is compacted once it holds more than
//! [`COMPACT_AFTER`] records and twice the live ones. A torn last record
//! (a crash mid-append) is cut off before the next append.
//!
//! Pushes (`logic.push`, `policy.push`) change the peer's authority and are
//! also ordered: `state/pushes` keeps, per kind, the `issued_at` of the last
//! push accepted; a push issued at or before it is refused, so a captured
//! push never undoes a later one, even after its nonce has expired.

use crate::envelope::{EnvelopeError, Opened, unix_ms};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

/// Most live nonces one peer remembers; past it new envelopes wait.
pub const MAX_REMEMBERED: usize = 1_000_000;

/// Records in the file before it is worth compacting.
pub const COMPACT_AFTER: u64 = 65_536;

/// Bytes of one record.
const RECORD: u64 = 24;

/// Expired nonces are swept from memory at most this often (ms), so a
/// guard near its bound does not scan on every envelope.
const SWEEP_EVERY_MS: u64 = 1_000;

/// The envelopes a peer accepted, until they expire.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    /// `peers/<name>/state`, or `None` for a guard in memory only.
    dir: Option<PathBuf>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    seen: HashMap<[u8; 16], u64>,
    /// The records file, its inode, and how far it has been read.
    file: Option<(File, u64, u64)>,
    next_sweep: u64,
}

fn storage(what: &str, e: std::io::Error) -> EnvelopeError {
    EnvelopeError::Storage(format!("{what}: {e}"))
}

impl ReplayGuard {
    /// A guard kept in `dir` (`peers/<name>/state`), created when first used.
    pub fn at(dir: PathBuf) -> ReplayGuard {
        ReplayGuard {
            dir: Some(dir),
            inner: Mutex::default(),
        }
    }

    /// Remembers `opened`'s nonce, or refuses it when seen before, by this
    /// worker or any other serving the peer, before or after a restart.
    pub fn admit(&self, opened: &Opened, now: SystemTime) -> Result<(), EnvelopeError> {
        let now = unix_ms(now);
        let key = record_key(opened);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(dir) = &self.dir else {
            return inner.admit(key, opened, now, false);
        };
        let lock = lock(dir)?;
        let result = inner
            .catch_up(dir, now)
            .and_then(|()| inner.admit(key, opened, now, true));
        if result.is_ok() {
            inner.compact_if_worth(dir, now)?;
        }
        drop(lock);
        result
    }

    /// Accepts a push of `kind` issued at `issued_at` only when it is later
    /// than the last push of that kind accepted, and records it.
    pub fn admit_push(&self, kind: &str, issued_at: u64) -> Result<(), EnvelopeError> {
        self.push_mark(kind, issued_at, true)
    }

    /// Whether a push of `kind` issued at `issued_at` is later than the
    /// last push of that kind accepted; records nothing.
    pub fn check_push(&self, kind: &str, issued_at: u64) -> Result<(), EnvelopeError> {
        self.push_mark(kind, issued_at, false)
    }

    fn push_mark(&self, kind: &str, issued_at: u64, record: bool) -> Result<(), EnvelopeError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let _inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _lock = lock(dir)?;
        let path = dir.join("pushes");
        let mut marks: HashMap<String, u64> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                EnvelopeError::Storage(format!("{} is not a map of marks: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(storage("cannot read the push marks", e)),
        };
        if let Some(&last) = marks.get(kind)
            && issued_at <= last
        {
            return Err(EnvelopeError::PushOutOfOrder {
                kind: kind.to_owned(),
                issued_at,
                last,
            });
        }
        if !record {
            return Ok(());
        }
        marks.insert(kind.to_owned(), issued_at);
        let text = serde_json::to_string(&marks)
            .map_err(|e| EnvelopeError::Storage(format!("cannot encode the push marks: {e}")))?;
        crate::files::write_atomically(&path, &text)
            .map_err(|e| storage("cannot write the push marks", e))
    }
}

/// What identifies an envelope: caller and nonce, hashed to 16 bytes.
pub fn record_key(opened: &Opened) -> [u8; 16] {
    let mut hash = Sha256::new();
    hash.update(opened.caller.to_string().as_bytes());
    hash.update(opened.nonce);
    let digest = hash.finalize();
    let mut key = [0; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// The exclusive lock every worker takes around a decision.
fn lock(dir: &std::path::Path) -> Result<Locked, EnvelopeError> {
    std::fs::create_dir_all(dir).map_err(|e| storage("cannot create the state directory", e))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("nonces.lock"))
        .map_err(|e| storage("cannot open nonces.lock", e))?;
    file.lock()
        .map_err(|e| storage("cannot lock nonces.lock", e))?;
    Ok(Locked(file))
}

/// Unlocks when dropped.
struct Locked(File);

impl Drop for Locked {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl Inner {
    fn admit(
        &mut self,
        key: [u8; 16],
        opened: &Opened,
        now: u64,
        persist: bool,
    ) -> Result<(), EnvelopeError> {
        if self.seen.get(&key).is_some_and(|expires| *expires > now) {
            return Err(EnvelopeError::Replayed(hex::encode(opened.nonce)));
        }
        if self.seen.len() >= MAX_REMEMBERED / 2 && now >= self.next_sweep {
            self.seen.retain(|_, expires| *expires > now);
            self.next_sweep = now + SWEEP_EVERY_MS;
        }
        if self.seen.len() >= MAX_REMEMBERED {
            return Err(EnvelopeError::Busy);
        }
        if persist {
            let Some((file, _, read)) = &mut self.file else {
                return Err(EnvelopeError::Storage("the nonces file is not open".into()));
            };
            let mut record = [0u8; RECORD as usize];
            record[..16].copy_from_slice(&key);
            record[16..].copy_from_slice(&opened.expires_at.to_le_bytes());
            file.write_all(&record)
                .map_err(|e| storage("cannot record the nonce", e))?;
            *read += RECORD;
        }
        self.seen.insert(key, opened.expires_at);
        Ok(())
    }

    /// Opens the records file (again, when another worker replaced it) and
    /// reads the records appended since the last look.
    fn catch_up(&mut self, dir: &std::path::Path, now: u64) -> Result<(), EnvelopeError> {
        let path = dir.join("nonces");
        let on_disk = match std::fs::metadata(&path) {
            Ok(meta) => Some(meta.ino()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(storage("cannot stat the nonces", e)),
        };
        if self.file.as_ref().map(|(_, ino, _)| Some(*ino)) != Some(on_disk) {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)
                .map_err(|e| storage("cannot open the nonces", e))?;
            let ino = file
                .metadata()
                .map_err(|e| storage("cannot stat the nonces", e))?
                .ino();
            self.seen.clear();
            self.file = Some((file, ino, 0));
        }
        let Some((file, _, read)) = &mut self.file else {
            return Err(EnvelopeError::Storage("the nonces file is not open".into()));
        };
        let len = file
            .metadata()
            .map_err(|e| storage("cannot stat the nonces", e))?
            .len();
        if len % RECORD != 0 {
            // A torn last record: cut it, so appends stay aligned.
            file.set_len(len - len % RECORD)
                .map_err(|e| storage("cannot cut a torn nonce record", e))?;
        }
        let whole = len - len % RECORD;
        if whole > *read {
            file.seek(SeekFrom::Start(*read))
                .map_err(|e| storage("cannot read the nonces", e))?;
            let mut bytes = Vec::new();
            (&mut *file)
                .take(whole - *read)
                .read_to_end(&mut bytes)
                .map_err(|e| storage("cannot read the nonces", e))?;
            for record in bytes.chunks_exact(RECORD as usize) {
                let mut key = [0; 16];
                key.copy_from_slice(&record[..16]);
                let mut expires = [0; 8];
                expires.copy_from_slice(&record[16..]);
                let expires = u64::from_le_bytes(expires);
                if expires > now {
                    self.seen.insert(key, expires);
                }
            }
            *read += bytes.len() as u64;
        }
        Ok(())
    }

    /// Rewrites the file with the live records once most have expired.
    fn compact_if_worth(&mut self, dir: &std::path::Path, now: u64) -> Result<(), EnvelopeError> {
        let Some((_, _, read)) = &self.file else {
            return Ok(());
        };
        let records = read / RECORD;
        if records <= COMPACT_AFTER || (self.seen.len() as u64) * 2 > records {
            return Ok(());
        }
        self.seen.retain(|_, expires| *expires > now);
        let mut bytes = Vec::with_capacity(self.seen.len() * RECORD as usize);
        for (key, expires) in &self.seen {
            bytes.extend_from_slice(key);
            bytes.extend_from_slice(&expires.to_le_bytes());
        }
        let path = dir.join("nonces");
        let tmp = dir.join("nonces.compacting");
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| storage("cannot compact the nonces", e))?;
        // Read the new file from its start on the next decision.
        self.file = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use crate::identity::PeerKey;
    use crate::invocation::Invocation;

    fn opened(now: SystemTime) -> Opened {
        let (alice, bob) = (
            PeerKey::generate().expect("randomness"),
            PeerKey::generate().expect("randomness"),
        );
        let script = Invocation::Script {
            script: "1".into(),
            params: serde_json::json!({}),
        };
        Envelope::seal(&alice, bob.id(), &script, 0, now)
            .expect("seal")
            .open(now)
            .expect("open")
    }

    #[test]
    fn a_replayed_nonce_is_refused_until_it_expires() {
        let now = SystemTime::now();
        let guard = ReplayGuard::default();
        let opened = opened(now);
        assert_eq!(guard.admit(&opened, now), Ok(()));
        assert!(matches!(
            guard.admit(&opened, now),
            Err(EnvelopeError::Replayed(_))
        ));
        let later = now + crate::envelope::MAX_LIFETIME + std::time::Duration::from_secs(1);
        assert_eq!(guard.admit(&opened, later), Ok(()));
    }

    #[test]
    fn class_2_a_nonce_is_refused_after_a_restart_and_by_another_worker() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let now = SystemTime::now();
        let (first, second) = (opened(now), opened(now));
        let worker = ReplayGuard::at(tmp.path().join("state"));
        assert_eq!(worker.admit(&first, now), Ok(()));
        // Another worker on the same peer, running all along.
        let other = ReplayGuard::at(tmp.path().join("state"));
        assert_eq!(other.admit(&second, now), Ok(()));
        assert!(matches!(
            worker.admit(&second, now),
            Err(EnvelopeError::Replayed(_))
        ));
        drop((worker, other));
        // Restarted: both nonces are still known; a torn record is cut.
        let path = tmp.path().join("state/nonces");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        file.write_all(&[7; 5]).expect("tear");
        let restarted = ReplayGuard::at(tmp.path().join("state"));
        for opened in [&first, &second] {
            assert!(matches!(
                restarted.admit(opened, now),
                Err(EnvelopeError::Replayed(_))
            ));
        }
        assert_eq!(restarted.admit(&self::opened(now), now), Ok(()));
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 3 * RECORD);
    }

    #[test]
    fn class_2_expired_nonces_are_compacted_away() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let guard = ReplayGuard::at(tmp.path().join("state"));
        let now = SystemTime::now();
        let one = opened(now);
        let path = tmp.path().join("state/nonces");
        // COMPACT_AFTER expired records, as if written long ago.
        std::fs::create_dir_all(tmp.path().join("state")).expect("mkdir");
        let mut old = Vec::new();
        for i in 0..=COMPACT_AFTER {
            old.extend_from_slice(&[0; 8]);
            old.extend_from_slice(&i.to_le_bytes());
            old.extend_from_slice(&1u64.to_le_bytes());
        }
        std::fs::write(&path, &old).expect("write");
        assert_eq!(guard.admit(&one, now), Ok(()));
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), RECORD);
        let other = ReplayGuard::at(tmp.path().join("state"));
        assert!(matches!(
            other.admit(&one, now),
            Err(EnvelopeError::Replayed(_))
        ));
    }

    #[test]
    fn class_2_a_push_is_accepted_once_and_in_order() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let guard = ReplayGuard::at(tmp.path().join("state"));
        assert_eq!(guard.admit_push("policy.push", 1_000), Ok(()));
        assert_eq!(guard.admit_push("logic.push", 900), Ok(()));
        for stale in [1_000, 999] {
            assert!(matches!(
                guard.admit_push("policy.push", stale),
                Err(EnvelopeError::PushOutOfOrder { last: 1_000, .. })
            ));
        }
        let restarted = ReplayGuard::at(tmp.path().join("state"));
        assert!(restarted.admit_push("policy.push", 1_000).is_err());
        assert_eq!(restarted.admit_push("policy.push", 1_001), Ok(()));
    }
}
