//! The audit log of a peer: `peers/<name>/audit/audit.jsonl`, one JSON line
//! per decision (each capability call, each accepted or refused script or
//! envelope). It lives outside every preopen: no guest can reach it.
//!
//! A line: `{"time", "peer", "caller": {"name", "id"}, "principal",
//! "action", "resource", "decision": "allow"|"deny", "policies": [...],
//! "script"?: SHA-256 of the delegated script, "depth", "reason"?}`.
//! `peerhost audit log PEER` prints it.

use serde::{Deserialize, Serialize};
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
    file: Mutex<Option<File>>,
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

    /// Appends `record` as one line, in one write.
    pub fn append(&self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            *file = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        match file.as_mut() {
            Some(file) => file.write_all(&line),
            None => Err(std::io::Error::other("audit file not open")),
        }
    }
}
