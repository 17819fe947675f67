//! The audit log of a peer: `peers/<name>/audit/audit.jsonl`, one JSON line
//! per decision (each capability call, each accepted or refused script or
//! envelope). It lives outside every preopen: no guest can reach it.
//!
//! A line: `{"time", "peer", "caller": {"name", "id"}, "principal",
//! "action", "resource", "decision": "allow"|"deny", "policies": [...],
//! "script"?: SHA-256 of the delegated script, "depth", "reason"?, "prev"}`.
//!
//! Tamper evidence: `prev` is the SHA-256 of the line before (64 zeros for
//! the first), so an edited, dropped, inserted or reordered line breaks the
//! chain at the line after it; `peerhost audit verify PEER` says where.
//! Writers of one log (a server and an in-process CLI) take an exclusive
//! lock around each append and re-read the last line when another process
//! wrote since, so the chain does not fork. The last line itself can only be
//! vouched for by a copy of its hash kept elsewhere (`audit verify` prints
//! it). `peerhost audit log PEER` prints the log.

use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// The audit file of a peer directory.
pub fn path(peer_dir: &Path) -> PathBuf {
    peer_dir.join("audit").join("audit.jsonl")
}

/// Who asked, as an audit line names them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerRecord {
    /// The principal name at this peer (petname, own name, id, or `anonymous`).
    pub name: String,
    /// The authenticated peer id, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// One decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// The peer whose policy decided.
    pub peer: String,
    /// Who asked for the invocation.
    pub caller: CallerRecord,
    /// Whose grants applied (the caller for a script, the peer for its own functions).
    pub principal: String,
    /// The Cedar action.
    pub action: String,
    /// The Cedar resource.
    pub resource: String,
    /// `allow` or `deny`.
    pub decision: String,
    /// The ids of the deciding policies (`on_script` for the logic's hook).
    pub policies: Vec<String>,
    /// SHA-256 of the delegated script, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// Delegation depth of the invocation.
    pub depth: u32,
    /// Why, for refusals that are not policy decisions (a bad envelope, a hook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// SHA-256 (hex) of the previous line; set by [`AuditLog::append`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
}

/// `prev` of a log's first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn line_hash(line: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(line))
}

/// Where an audit log's chain breaks.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The log cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The log.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not an audit record.
    #[error("{path}:{line}: not an audit record: {reason}")]
    NotARecord {
        /// The log.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// Why.
        reason: String,
    },
    /// A line does not name the line before it.
    #[error(
        "{path}:{line}: the chain breaks here: this line does not follow line {before} (a line at or before it was edited, dropped, inserted or reordered)",
        before = line - 1
    )]
    Broken {
        /// The log.
        path: PathBuf,
        /// 1-based line.
        line: usize,
    },
}

/// Checks the chain of the audit log at `path`; returns the number of lines
/// and the hash of the last one (to keep elsewhere). Lines written before
/// logs were chained (no `prev`) are accepted before the first chained line.
pub fn verify(path: &Path) -> Result<(usize, String), ChainError> {
    let text = std::fs::read(path).map_err(|source| ChainError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut before = GENESIS.to_owned();
    let mut chained = false;
    let mut count = 0;
    for (index, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let number = index + 1;
        let record: Record = serde_json::from_slice(line).map_err(|e| ChainError::NotARecord {
            path: path.to_owned(),
            line: number,
            reason: e.to_string(),
        })?;
        match record.prev {
            Some(prev) if prev == before || (!chained && prev == GENESIS) => chained = true,
            None if !chained => {}
            _ => {
                return Err(ChainError::Broken {
                    path: path.to_owned(),
                    line: number,
                });
            }
        }
        before = line_hash(line);
        count += 1;
    }
    Ok((count, before))
}

impl Record {
    /// The current time as audit lines write it.
    pub fn now() -> String {
        humantime::format_rfc3339_millis(SystemTime::now()).to_string()
    }

    /// One human-readable line.
    pub fn display(&self) -> String {
        let mut line = format!(
            "{} {:5} {} {} {}",
            self.time, self.decision, self.principal, self.action, self.resource
        );
        if self.caller.name != self.principal {
            line.push_str(&format!(" caller={}", self.caller.name));
        }
        if !self.policies.is_empty() {
            line.push_str(&format!(" by={}", self.policies.join(",")));
        }
        if let Some(script) = &self.script {
            let short: String = script.chars().take(12).collect();
            line.push_str(&format!(" script={short}"));
        }
        if let Some(reason) = &self.reason {
            line.push_str(&format!(" reason={reason:?}"));
        }
        line
    }
}

/// The append-only audit file of one peer, opened on first use.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<Option<Open>>,
}

/// The open file, its length after this process's last write, and the hash
/// of its last line.
#[derive(Debug)]
struct Open {
    file: File,
    len: u64,
    last: String,
}

/// Longest tail read to find the last line of a log (lines are far shorter).
const TAIL: u64 = 256 * 1024;

/// The hash of the last line of `file`, or [`GENESIS`] when it has none.
fn last_line_hash(file: &mut File) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.take(TAIL).read_to_end(&mut tail)?;
    let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
    Ok(match body.iter().rposition(|b| *b == b'\n') {
        Some(at) => line_hash(&body[at + 1..]),
        None if body.is_empty() => GENESIS.to_owned(),
        None if start == 0 => line_hash(body),
        None => GENESIS.to_owned(),
    })
}

impl AuditLog {
    /// The audit log at `path` (see [`path`]).
    pub fn new(path: PathBuf) -> AuditLog {
        AuditLog {
            path,
            file: Mutex::new(None),
        }
    }

    /// Where the lines go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` as one line, in one write, chained to the line
    /// before it.
    pub fn append(&self, record: &Record) -> std::io::Result<()> {
        let mut open = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if open.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&self.path)?;
            *open = Some(Open {
                file,
                len: u64::MAX,
                last: GENESIS.to_owned(),
            });
        }
        let Some(open) = open.as_mut() else {
            return Err(std::io::Error::other("audit file not open"));
        };
        // Another process may append to the same log: one writer at a time,
        // and the chain continues from the file's true last line.
        open.file.lock()?;
        let written = (|| {
            let len = open.file.metadata()?.len();
            if len != open.len {
                open.last = last_line_hash(&mut open.file)?;
            }
            let mut record = record.clone();
            record.prev = Some(open.last.clone());
            let mut line = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
            let hash = line_hash(&line);
            line.push(b'\n');
            open.file.write_all(&line)?;
            open.last = hash;
            open.len = len + line.len() as u64;
            Ok(())
        })();
        let unlocked = open.file.unlock();
        written.and(unlocked)
    }
}
