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
