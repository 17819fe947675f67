//! Files as the host reads and writes them: regular files only, opened
//! without blocking and bounded in size; replaced atomically (a synced
//! temporary file renamed into place); versions told apart by a [`Stamp`];
//! blocking work kept off the async threads ([`off_async`]).

use std::path::Path;
use std::time::SystemTime;

/// How recent a modification must be, when the files are read, for the
/// version not to be trusted yet.
pub const RACY: std::time::Duration = std::time::Duration::from_millis(100);

/// What a file looked like when it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    /// The stamp of the file at `path`, if it can be read.
    pub fn at(path: &Path) -> Option<Stamp> {
        std::fs::metadata(path).ok().map(|m| Stamp::of(&m))
    }

    /// Whether the file was modified within [`RACY`] of `now`.
    pub fn racy(&self, now: SystemTime) -> bool {
        self.modified.is_none_or(|m| m + RACY > now)
    }

    /// The stamp as one word (`len.nanoseconds.inode`), for an index on
    /// disk: equal words are equal stamps.
    pub fn word(&self) -> String {
        let nanos = self
            .modified
            .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        format!("{}.{nanos}.{}", self.len, self.inode)
    }

    /// The stamp of a file from its metadata.
    pub fn of(metadata: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(metadata);
        #[cfg(not(unix))]
        let inode = 0;
        Stamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            inode,
        }
    }
}

/// Runs `work`, which blocks (file reads, compiles), where it holds up no
/// async task: on a multi-threaded tokio runtime the worker thread hands its
/// other tasks over first (`block_in_place`); elsewhere it runs in place.
pub fn off_async<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Reads the regular file at `path`, at most `max` bytes, without ever
/// blocking on it: it is opened non-blocking and anything but a regular
/// file (a FIFO, a device, a socket planted in `logic/`) is refused before
/// a byte is read, so no planted file can stall the thread reading it.
pub fn read_regular(path: &Path, max: u64) -> std::io::Result<(std::fs::Metadata, String)> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (only regular files are read)",
        ));
    }
    if metadata.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("{} bytes", metadata.len()),
        ));
    }
    let mut source = String::new();
    file.take(max + 1).read_to_string(&mut source)?;
    if source.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("over {max} bytes"),
        ));
    }
    Ok((metadata, source))
}

/// `O_NONBLOCK` on Linux (x86-64 and aarch64): an open that cannot block on
/// a FIFO without a writer.
const O_NONBLOCK: i32 = 0o4000;

/// `text` in a new temporary file of `dir`, synced, to be renamed into
/// place (removed if dropped instead).
pub fn temporary(dir: &Path, text: &str) -> std::io::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(text.as_bytes())?;
    file.as_file().sync_all()?;
    Ok(file)
}

/// Writes `text` to `path` through a temporary file in the same directory
/// and a rename: a reader sees the old file or the new one, never a part.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    temporary(dir, text)?.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// How long a version found unchanged through a [`Watch`] is trusted
/// without looking at its files: edits the kernel does not report (made on
/// another machine of a network file system) are seen within it.
pub const TRUSTED: std::time::Duration = std::time::Duration::from_secs(1);

/// Changes in one directory as the kernel reports them (inotify, one
/// instance per process, read without blocking): a number that grows when
/// a file in it is written and closed, created, removed, renamed or has its
/// attributes changed. A version read at one number is unchanged while the
/// number stays, so the files need not be looked at on every use; the
/// kernel queues the event before the writer's call returns, so an edit
/// made before [`Watch::generation`] is always counted. Not watched (not
/// Linux, no watch left, the directory gone): [`Watch::generation`] is
/// `None`, and the files are looked at every time.
#[derive(Debug)]
pub struct Watch {
    counter: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

/// A counter no longer watched (its directory was removed).
const UNWATCHED: u64 = u64::MAX;

impl Watch {
    /// Watches `dir`.
    pub fn new(dir: &Path) -> Watch {
        Watch {
            counter: watcher::add(dir),
        }
    }

    /// The directory's number now, the kernel's queue read first.
    pub fn generation(&self) -> Option<u64> {
        let counter = self.counter.as_ref()?;
        watcher::drain();
        let now = counter.load(std::sync::atomic::Ordering::Acquire);
        (now != UNWATCHED).then_some(now)
    }
}

#[cfg(target_os = "linux")]
mod watcher {
    use super::UNWATCHED;
    use rustix::fs::inotify;
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    struct Watcher {
        fd: rustix::fd::OwnedFd,
        counters: Mutex<HashMap<i32, Arc<AtomicU64>>>,
    }

    fn watcher() -> Option<&'static Watcher> {
        static WATCHER: OnceLock<Option<Watcher>> = OnceLock::new();
        WATCHER
            .get_or_init(|| {
                let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
                    .map_err(|e| tracing::warn!(target: "peerhost::files", "no inotify, files are looked at on every use: {e}"))
                    .ok()?;
                Some(Watcher {
                    fd,
                    counters: Mutex::new(HashMap::new()),
                })
            })
            .as_ref()
    }

    pub(super) fn add(dir: &Path) -> Option<Arc<AtomicU64>> {
        let watcher = watcher()?;
        let flags = inotify::WatchFlags::CLOSE_WRITE
            | inotify::WatchFlags::CREATE
            | inotify::WatchFlags::DELETE
            | inotify::WatchFlags::MOVED_FROM
            | inotify::WatchFlags::MOVED_TO
            | inotify::WatchFlags::ATTRIB
            | inotify::WatchFlags::DELETE_SELF
            | inotify::WatchFlags::MOVE_SELF
            | inotify::WatchFlags::ONLYDIR;
        let mut counters = watcher.counters.lock().unwrap_or_else(|p| p.into_inner());
        match inotify::add_watch(&watcher.fd, dir, flags) {
            Ok(wd) => Some(
                counters
                    .entry(wd)
                    .or_insert_with(|| Arc::new(AtomicU64::new(0)))
                    .clone(),
            ),
            Err(e) => {
                tracing::debug!(target: "peerhost::files", dir = %dir.display(), "not watched, looked at on every use: {e}");
                None
            }
        }
    }

    /// Reads every queued event and counts it against its directory.
    pub(super) fn drain() {
        let Some(watcher) = watcher() else {
            return;
        };
        let counters = watcher.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(&watcher.fd, &mut buf);
        // Bounded: the kernel's queue holds at most max_queued_events.
        for _ in 0..1_000_000 {
            let event = match reader.next() {
                Ok(event) => event,
                // EAGAIN: nothing more queued; anything else: count all.
                Err(rustix::io::Errno::AGAIN) => return,
                Err(_) => {
                    bump_all(&counters);
                    return;
                }
            };
            let flags = event.events();
            if flags.contains(inotify::ReadFlags::QUEUE_OVERFLOW) {
                bump_all(&counters);
                continue;
            }
            if let Some(counter) = counters.get(&event.wd()) {
                if flags.intersects(
                    inotify::ReadFlags::IGNORED
                        | inotify::ReadFlags::DELETE_SELF
                        | inotify::ReadFlags::MOVE_SELF,
                ) {
                    counter.store(UNWATCHED, Ordering::Release);
                } else {
                    bump(counter);
                }
            }
        }
        bump_all(&counters);
    }

    fn bump(counter: &AtomicU64) {
        let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < UNWATCHED - 1).then_some(n + 1)
        });
    }

    fn bump_all(counters: &HashMap<i32, Arc<AtomicU64>>) {
        for counter in counters.values() {
            bump(counter);
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod watcher {
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    pub(super) fn add(_dir: &Path) -> Option<Arc<AtomicU64>> {
        None
    }

    pub(super) fn drain() {}
}

#[cfg(test)]
mod watch_tests {
    use super::*;

    #[test]
    fn a_watch_counts_every_completed_edit_before_it_is_asked() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let watch = Watch::new(tmp.path());
        let Some(start) = watch.generation() else {
            eprintln!("!!! no inotify here: Watch falls back to stats !!!");
            return;
        };
        assert_eq!(watch.generation(), Some(start), "nothing happened");
        let file = tmp.path().join("policy.cedar");
        std::fs::write(&file, "a").unwrap_or_else(|e| panic!("{e}"));
        let written = watch.generation().unwrap_or_else(|| panic!("watched"));
        assert!(written > start, "a write and close is counted at once");
        // Replaced by a rename, as pushes do.
        let temp = tmp.path().join(".tmp");
        std::fs::write(&temp, "b").unwrap_or_else(|e| panic!("{e}"));
        let before = watch.generation().unwrap_or_else(|| panic!("watched"));
        std::fs::rename(&temp, &file).unwrap_or_else(|e| panic!("{e}"));
        assert!(watch.generation().unwrap_or_else(|| panic!("watched")) > before);
        let before = watch.generation().unwrap_or_else(|| panic!("watched"));
        std::fs::remove_file(&file).unwrap_or_else(|e| panic!("{e}"));
        assert!(watch.generation().unwrap_or_else(|| panic!("watched")) > before);
        // Two watches of one directory see the same events.
        let other = Watch::new(tmp.path());
        let (a, b) = (watch.generation(), other.generation());
        std::fs::write(tmp.path().join("x"), "x").unwrap_or_else(|e| panic!("{e}"));
        assert!(watch.generation() > a && other.generation() > b);
        // The directory gone: not watched any more.
        let dir = tmp.path().join("sub");
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        let sub = Watch::new(&dir);
        assert!(sub.generation().is_some());
        std::fs::remove_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sub.generation(), None);
        assert_eq!(Watch::new(&tmp.path().join("missing")).generation(), None);
    }
}
