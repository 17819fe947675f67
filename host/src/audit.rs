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
//!
//! # Bounds
//!
//! Every string field of a line this host writes is cut to [`MAX_FIELD`]
//! bytes (records carry client strings: function names, petnames, hook
//! verdicts), so one line is a few KiB at most. A line read may still be of
//! any length (logs written before the cut may hold long lines). A writer
//! that finds the file changed since its own last write looks for the last
//! line backwards, 64 KiB at a time, until a newline or the start of the
//! file, and hashes it in 64 KiB pieces: it holds one piece of the line in
//! memory, or the parsed record when it checks that a newline-terminated
//! last line is one.
//! That costs reads in proportion to the last line, once per process and
//! after each write by another. `audit verify` reads the whole log into
//! memory.
//!
//! # Torn lines
//!
//! A write cut short (a crash, a full disk) leaves a last line that is not
//! a record, usually without its newline. The next append does not glue its
//! record onto it: it ends the torn line with a newline and writes a
//! [`TORN`] marker first, whose `prev` is the hash of the torn bytes (as of
//! any line) and whose `resource`, `AuditLine::"after <hash>"`, names the
//! line before the torn one, so the torn line is chained on both sides.
//! `verify` accepts a line that is not a record only when such a marker
//! chained to it follows at once; a torn line without one (nothing appended
//! since the crash, or the marker dropped) is reported. A second crash
//! inside the write of a marker leaves two such lines in a row, which
//! `verify` reports too: nothing vouches for the link between them.

use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
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
    /// The W3C trace id of the invocation's chain (32 hex digits): every
    /// line of one delegation chain has the same, on every worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// Why, for refusals that are not policy decisions (a bad envelope, a hook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// SHA-256 (hex) of the previous line; set by [`AuditLog::append`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
}

pub use crate::error::MAX_FIELD;

/// `prev` of a log's first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The `action` of the marker written after a torn line (see the module doc).
pub const TORN: &str = "audit.torn";

/// The hash a line is chained by: SHA-256 of its bytes without the newline.
fn line_hash(line: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(line))
}

/// The `resource` of a [`TORN`] marker after a torn line that follows the
/// line hashed `before`.
fn torn_resource(before: &str) -> String {
    format!("AuditLine::\"after {before}\"")
}

mod verify;
pub use verify::{ChainError, verify};

impl Record {
    /// Cuts every string field to [`MAX_FIELD`] bytes.
    pub fn cut_fields(&mut self) {
        let cut = |text: &mut String| crate::error::truncate_with_ellipsis(text, MAX_FIELD);
        let Record {
            time,
            peer,
            caller: CallerRecord { name, id },
            principal,
            action,
            resource,
            decision,
            policies,
            script,
            depth: _,
            trace,
            reason,
            prev,
        } = self;
        for text in [time, peer, name, principal, action, resource, decision] {
            cut(text);
        }
        for text in policies
            .iter_mut()
            .chain(id)
            .chain(script)
            .chain(trace)
            .chain(reason)
            .chain(prev)
        {
            cut(text);
        }
    }

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
    /// Whether the last append failed (cleared by the next that succeeds);
    /// set until a first append succeeds.
    failing: std::sync::atomic::AtomicBool,
}

/// The open file, its length after this process's last write, and the hash
/// of its last line.
#[derive(Debug)]
struct Open {
    file: File,
    len: u64,
    last: String,
}

/// Piece in which a log is read backwards to find its last line, and in
/// which that line is hashed.
const CHUNK: usize = 64 * 1024;

/// The byte range `start..end` of the last non-empty line of `file` that
/// ends at or before `end` (without its newline), if it has one. Reads
/// backwards [`CHUNK`] bytes at a time: a line may be of any length.
fn last_line(file: &mut File, end: u64) -> std::io::Result<Option<(u64, u64)>> {
    let mut buf = vec![0; CHUNK];
    let mut pos = end;
    let mut line_end = None;
    while pos > 0 {
        let n = usize::try_from(pos).map_or(CHUNK, |pos| pos.min(CHUNK));
        let from = pos - n as u64;
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut buf[..n])?;
        let mut chunk = &buf[..n];
        if line_end.is_none() {
            // Skip the newline that ends the line, and any empty lines
            // (which `verify` skips too).
            let Some(last) = chunk.iter().rposition(|b| *b != b'\n') else {
                pos = from;
                continue;
            };
            line_end = Some(from + last as u64 + 1);
            chunk = &chunk[..last];
        }
        if let (Some(at), Some(line_end)) = (chunk.iter().rposition(|b| *b == b'\n'), line_end) {
            return Ok(Some((from + at as u64 + 1, line_end)));
        }
        pos = from;
    }
    Ok(line_end.map(|line_end| (0, line_end)))
}

/// [`line_hash`] of the bytes `start..end` of `file`, read [`CHUNK`] bytes
/// at a time.
fn range_hash(file: &mut File, (start, end): (u64, u64)) -> std::io::Result<String> {
    file.seek(SeekFrom::Start(start))?;
    let mut reader = file.take(end - start);
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0; CHUNK];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    if reader.limit() != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the audit file shrank while its last line was read",
        ));
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Whether the bytes `start..end` of `file` are one audit record.
fn is_record(file: &mut File, (start, end): (u64, u64)) -> std::io::Result<bool> {
    file.seek(SeekFrom::Start(start))?;
    let reader = std::io::BufReader::with_capacity(CHUNK, file.take(end - start));
    Ok(serde_json::from_reader::<_, Record>(reader).is_ok())
}

/// The end of a log as the next append finds it.
#[derive(Debug)]
enum Tail {
    /// The last line is a whole record (or there is none): the hash to
    /// chain to.
    Whole(String),
    /// The last line is not a record: a write was cut short.
    Torn {
        /// Whether it still lacks its newline.
        unterminated: bool,
        /// Its length in bytes.
        len: u64,
        /// Its hash, as of any line.
        hash: String,
        /// The hash of the line before it ([`GENESIS`] if none).
        before: String,
    },
}

/// How `file`, `len` bytes long, ends.
fn tail(file: &mut File, len: u64) -> std::io::Result<Tail> {
    let Some(last) = last_line(file, len)? else {
        return Ok(Tail::Whole(GENESIS.to_owned()));
    };
    let unterminated = last.1 == len;
    let hash = range_hash(file, last)?;
    if !unterminated && is_record(file, last)? {
        return Ok(Tail::Whole(hash));
    }
    let before = match last_line(file, last.0)? {
        Some(line) => range_hash(file, line)?,
        None => GENESIS.to_owned(),
    };
    Ok(Tail::Torn {
        unterminated,
        len: last.1 - last.0,
        hash,
        before,
    })
}

impl Record {
    /// A line, now, saying that at `peer`, `principal` (asked by `caller`)
    /// was allowed or denied `action` on `resource`; no policies, script,
    /// depth or reason yet (set them with struct update syntax).
    pub fn decision(
        peer: &str,
        caller: CallerRecord,
        principal: &str,
        action: &str,
        resource: String,
        allowed: bool,
    ) -> Record {
        Record {
            time: Record::now(),
            peer: peer.to_owned(),
            caller,
            principal: principal.to_owned(),
            action: action.to_owned(),
            resource,
            decision: if allowed { "allow" } else { "deny" }.to_owned(),
            policies: Vec::new(),
            script: None,
            depth: 0,
            trace: None,
            reason: None,
            prev: None,
        }
    }

    /// The marker written after a torn line of `peer`'s log (see the module
    /// doc).
    fn torn(peer: &str, len: u64, hash: &str, before: &str) -> Record {
        let host = CallerRecord {
            name: "peerhost".to_owned(),
            id: None,
        };
        Record {
            reason: Some(format!(
                "the line before ({len} bytes) is not an audit record: a write was cut short; it is kept as written"
            )),
            prev: Some(hash.to_owned()),
            ..Record::decision(peer, host, "peerhost", TORN, torn_resource(before), false)
        }
    }
}

impl AuditLog {
    /// The audit log at `path` (see [`path`]).
    pub fn new(path: PathBuf) -> AuditLog {
        AuditLog {
            path,
            file: Mutex::new(None),
            failing: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Whether the last append failed, or none was made yet: a writer
    /// holding lines writes at once instead, and so learns whether the log
    /// takes them now.
    pub fn failing(&self) -> bool {
        self.failing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where the lines go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record`, its fields cut to [`MAX_FIELD`], as one line, in
    /// one write, chained to the line before it; after a torn last line, a
    /// [`TORN`] marker first, in the same write. Returns the bytes written.
    pub fn append(&self, record: &Record) -> std::io::Result<u64> {
        self.append_records(std::slice::from_ref(record), true)
    }

    /// Appends `records` in order, chained as [`AuditLog::append`] chains
    /// one, all in one write under one lock: a crash leaves none of them,
    /// all, or a torn last line that the next append marks. Returns the
    /// bytes written.
    pub fn append_all(&self, records: &[Record]) -> std::io::Result<u64> {
        self.append_records(records, true)
    }

    /// [`AuditLog::append_all`], cutting the fields when `cut` (tests write
    /// the long lines of older logs without it).
    fn append_records(&self, records: &[Record], cut: bool) -> std::io::Result<u64> {
        if records.is_empty() {
            return Ok(0);
        }
        let written = self.append_locked(records, cut);
        self.failing
            .store(written.is_err(), std::sync::atomic::Ordering::Relaxed);
        written
    }

    fn append_locked(&self, records: &[Record], cut: bool) -> std::io::Result<u64> {
        let Some(first) = records.first() else {
            return Ok(0);
        };
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
            let mut lines = Vec::new();
            let mut last = open.last.clone();
            if len != open.len {
                match tail(&mut open.file, len)? {
                    Tail::Whole(hash) => last = hash,
                    Tail::Torn {
                        unterminated,
                        len,
                        hash,
                        before,
                    } => {
                        // End the torn line and account for it, so the
                        // record is neither glued onto it nor unchained.
                        if unterminated {
                            lines.push(b'\n');
                        }
                        let marker = Record::torn(&first.peer, len, &hash, &before);
                        let marker = serde_json::to_vec(&marker).map_err(std::io::Error::other)?;
                        last = line_hash(&marker);
                        lines.extend_from_slice(&marker);
                        lines.push(b'\n');
                    }
                }
            }
            for record in records {
                let mut record = record.clone();
                if cut {
                    record.cut_fields();
                }
                record.prev = Some(last);
                let line = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
                last = line_hash(&line);
                lines.extend_from_slice(&line);
                lines.push(b'\n');
            }
            open.file.write_all(&lines)?;
            open.last = last;
            open.len = len + lines.len() as u64;
            Ok(lines.len() as u64)
        })();
        let unlocked = open.file.unlock();
        written.and_then(|bytes| unlocked.map(|()| bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(action: &str, reason: Option<String>) -> Record {
        Record {
            time: Record::now(),
            peer: "bob".to_owned(),
            caller: CallerRecord {
                name: "alice".to_owned(),
                id: None,
            },
            principal: "alice".to_owned(),
            action: action.to_owned(),
            resource: "Key::\"k\"".to_owned(),
            decision: "allow".to_owned(),
            policies: vec!["p".to_owned()],
            script: None,
            depth: 0,
            trace: None,
            reason,
            prev: None,
        }
    }

    /// A log in a fresh temporary directory.
    fn log() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = path(dir.path());
        (dir, path)
    }

    /// Appends as a writer that just opened the log would (a new process).
    fn append_fresh(path: &Path, record: &Record) {
        AuditLog::new(path.to_owned())
            .append(record)
            .unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
    }

    /// Appends a record with long fields as a writer before [`MAX_FIELD`]
    /// did: older logs may hold such lines.
    fn append_long(path: &Path, record: &Record) {
        AuditLog::new(path.to_owned())
            .append_records(std::slice::from_ref(record), false)
            .unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
    }

    /// Appends `bytes` as they are, as a write cut short would leave them.
    fn append_raw(path: &Path, bytes: &[u8]) {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        file.write_all(bytes)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    fn lines(path: &Path) -> Vec<Vec<u8>> {
        let text = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert!(text.ends_with(b"\n"), "the log ends without a newline");
        text[..text.len() - 1]
            .split(|b| *b == b'\n')
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn parse(line: &[u8]) -> Record {
        serde_json::from_slice(line).unwrap_or_else(|e| panic!("not a record: {e}"))
    }

    #[test]
    fn a_batch_is_one_chain_continued_by_single_appends_and_by_other_writers() {
        let (_dir, path) = log();
        let log = AuditLog::new(path.clone());
        let batch: Vec<Record> = (0..5).map(|i| record(&format!("a{i}"), None)).collect();
        let written = log.append_all(&batch).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            written,
            std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        );
        assert_eq!(log.append_all(&[]).unwrap_or_else(|e| panic!("{e}")), 0);
        log.append(&record("single", None))
            .unwrap_or_else(|e| panic!("{e}"));
        append_fresh(&path, &record("other writer", None));
        log.append_all(&batch[..2])
            .unwrap_or_else(|e| panic!("{e}"));
        let all = lines(&path);
        assert_eq!(all.len(), 9);
        let (count, _) = verify::verify(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(count, 9);
        // Each line names the hash of the one before, across the batches.
        for pair in all.windows(2) {
            assert_eq!(parse(&pair[1]).prev, Some(line_hash(&pair[0])));
        }
    }

    fn write_lines(path: &Path, lines: &[Vec<u8>]) {
        let mut text = lines.join(&b'\n');
        text.push(b'\n');
        std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    #[test]
    fn class_11_a_line_over_256_kib_keeps_the_chain() {
        let (_dir, path) = log();
        append_fresh(&path, &record("kv.get", None));
        // Over 256 KiB and over four 64 KiB pieces, not on a piece boundary.
        append_long(&path, &record("kv.get", Some("x".repeat(300 * 1024 + 7))));
        append_fresh(&path, &record("kv.get", None));
        let (count, last) = verify(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(count, 3);
        let lines = lines(&path);
        assert!(lines[1].len() > 256 * 1024);
        assert_eq!(parse(&lines[2]).prev, Some(line_hash(&lines[1])));
        assert_eq!(last, line_hash(&lines[2]));
    }

    #[test]
    fn class_11_a_torn_tail_is_marked_not_merged() {
        let (_dir, path) = log();
        let writer = AuditLog::new(path.clone());
        writer
            .append(&record("kv.get", None))
            .unwrap_or_else(|e| panic!("{e}"));
        let whole = serde_json::to_vec(&record("kv.set", None)).expect("json");
        let torn = &whole[..40];
        append_raw(&path, torn);
        // The same writer sees that another wrote since, and looks again.
        writer
            .append(&record("kv.list", None))
            .unwrap_or_else(|e| panic!("{e}"));
        let lines = lines(&path);
        assert_eq!(
            lines.len(),
            4,
            "{:?}",
            String::from_utf8_lossy(&lines.concat())
        );
        assert_eq!(lines[1], torn, "the torn line is kept as written, alone");
        let marker = parse(&lines[2]);
        assert_eq!(marker.action, TORN);
        assert_eq!(marker.prev, Some(line_hash(torn)));
        assert_eq!(marker.resource, torn_resource(&line_hash(&lines[0])));
        assert!(
            marker
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("(40 bytes)")),
            "{:?}",
            marker.reason
        );
        let next = parse(&lines[3]);
        assert_eq!(next.action, "kv.list");
        assert_eq!(next.prev, Some(line_hash(&lines[2])));
        assert_eq!(
            verify(&path).unwrap_or_else(|e| panic!("{e}")),
            (4, line_hash(&lines[3]))
        );
        // Later writers chain on as usual.
        append_fresh(&path, &record("kv.get", None));
        assert_eq!(verify(&path).unwrap_or_else(|e| panic!("{e}")).0, 5);
    }

    #[test]
    fn class_11_a_long_torn_tail_after_a_long_line_is_marked() {
        let (_dir, path) = log();
        append_long(&path, &record("kv.get", Some("y".repeat(200 * 1024))));
        append_raw(&path, &[b'z'; 150 * 1024]);
        append_fresh(&path, &record("kv.get", None));
        let lines = lines(&path);
        assert_eq!(lines.len(), 4);
        let marker = parse(&lines[2]);
        assert_eq!(marker.prev, Some(line_hash(&lines[1])));
        assert_eq!(marker.resource, torn_resource(&line_hash(&lines[0])));
        assert_eq!(verify(&path).unwrap_or_else(|e| panic!("{e}")).0, 4);
    }

    #[test]
    fn class_11_a_terminated_line_that_is_no_record_is_marked() {
        // The newline of a torn line landed, its marker did not.
        let (_dir, path) = log();
        append_fresh(&path, &record("kv.get", None));
        append_raw(&path, b"{\"time\":\"2025\n");
        append_fresh(&path, &record("kv.get", None));
        let lines = lines(&path);
        assert_eq!(lines.len(), 4);
        assert_eq!(parse(&lines[2]).action, TORN);
        assert_eq!(verify(&path).unwrap_or_else(|e| panic!("{e}")).0, 4);
    }

    #[test]
    fn class_11_empty_lines_at_the_end_are_skipped_as_verify_skips_them() {
        let (_dir, path) = log();
        append_fresh(&path, &record("kv.get", None));
        append_raw(&path, b"\n\n");
        append_fresh(&path, &record("kv.get", None));
        assert_eq!(verify(&path).unwrap_or_else(|e| panic!("{e}")).0, 2);
    }

    #[test]
    fn class_11_tampering_is_still_reported_after_a_torn_tail() {
        let (_dir, path) = log();
        append_fresh(&path, &record("kv.get", None));
        append_fresh(&path, &record("kv.set", None));
        append_raw(
            &path,
            b"{\"time\":\"2025-01-01T00:00:00.000Z\",\"peer\":\"bo",
        );
        append_fresh(&path, &record("kv.list", None));
        let original = lines(&path);
        assert_eq!(original.len(), 5, "records 1, 2, torn, marker, record 3");
        assert_eq!(parse(&original[3]).action, TORN);
        let (_, last) = verify(&path).unwrap_or_else(|e| panic!("{e}"));

        let check = |lines: &[Vec<u8>]| {
            write_lines(&path, lines);
            verify(&path)
        };
        let broken_at = |lines: Vec<Vec<u8>>, at: usize, what: &str| match check(&lines) {
            Err(ChainError::Broken { line, .. }) if line == at => {}
            other => panic!("{what}: expected a break at line {at}, got {other:?}"),
        };
        let not_a_record_at = |lines: Vec<Vec<u8>>, at: usize, what: &str| match check(&lines) {
            Err(ChainError::NotARecord { line, .. }) if line == at => {}
            other => panic!("{what}: expected line {at} not a record, got {other:?}"),
        };
        let edit = |line: &[u8]| -> Vec<u8> {
            String::from_utf8_lossy(line)
                .replacen("\"allow\"", "\"deny\"", 1)
                .into_bytes()
        };
        let without = |index: usize| {
            let mut lines = original.clone();
            lines.remove(index);
            lines
        };
        let replaced = |index: usize, line: Vec<u8>| {
            let mut lines = original.clone();
            lines[index] = line;
            lines
        };

        broken_at(replaced(0, edit(&original[0])), 2, "first record edited");
        broken_at(
            replaced(1, edit(&original[1])),
            3,
            "record before the torn line edited",
        );
        broken_at(without(1), 2, "record before the torn line dropped");
        broken_at(
            replaced(2, b"{\"time\":\"1999".to_vec()),
            4,
            "torn line edited",
        );
        broken_at(without(2), 3, "torn line dropped");
        not_a_record_at(without(3), 3, "marker dropped");
        let mut swapped = original.clone();
        swapped.swap(2, 3);
        broken_at(swapped, 3, "torn line and marker swapped");
        not_a_record_at(
            replaced(1, b"garbage".to_vec()),
            2,
            "a record replaced by garbage",
        );
        // Garbage in place of a record, with a forged marker: the real
        // marker still names the record it followed.
        let mut forged = original.clone();
        forged[1] = b"garbage".to_vec();
        let marker = Record::torn("bob", 7, &line_hash(b"garbage"), &line_hash(&original[0]));
        forged.insert(2, serde_json::to_vec(&marker).expect("json"));
        broken_at(
            forged,
            4,
            "a record replaced by garbage and a forged marker",
        );
        // The last line is vouched for only by its hash, kept elsewhere.
        let (_, changed) = check(&replaced(4, edit(&original[4])))
            .unwrap_or_else(|e| panic!("last line edited: {e}"));
        assert_ne!(changed, last);
        // A torn last line with no marker yet is reported, with the cause.
        std::fs::write(&path, [&original[0][..], b"\n{\"time\""].concat())
            .unwrap_or_else(|e| panic!("{e}"));
        match verify(&path) {
            Err(e @ ChainError::NotARecord { line: 2, .. }) => {
                assert!(e.to_string().contains("a write was cut short"), "{e}")
            }
            other => panic!("torn last line: {other:?}"),
        }
    }

    #[test]
    fn class_7_every_string_field_of_an_audit_line_is_cut() {
        let (_dir, path) = log();
        let long = "é".repeat(MAX_FIELD);
        let mut huge = record(&long, Some(long.clone()));
        huge.resource = format!("Function::\"{long}\"");
        huge.caller.name = long.clone();
        huge.caller.id = Some(long.clone());
        huge.principal = long.clone();
        huge.policies = vec![long.clone(), "p".to_owned()];
        huge.script = Some(long.clone());
        let writer = AuditLog::new(path.clone());
        let written = writer.append(&huge).unwrap_or_else(|e| panic!("{e}"));
        let lines = lines(&path);
        assert_eq!(written, lines[0].len() as u64 + 1);
        // Ten fields of at most MAX_FIELD bytes and the JSON around them.
        assert!(lines[0].len() < 11 * MAX_FIELD, "{} bytes", lines[0].len());
        let line = parse(&lines[0]);
        for field in [
            &line.action,
            &line.resource,
            &line.caller.name,
            &line.principal,
            &line.policies[0],
        ]
        .into_iter()
        .chain(&line.caller.id)
        .chain(&line.script)
        .chain(&line.reason)
        {
            assert!(
                field.len() <= MAX_FIELD + '…'.len_utf8() && field.ends_with('…'),
                "{} bytes",
                field.len()
            );
        }
        assert_eq!(line.policies[1], "p");
        assert!(line.resource.starts_with("Function::\"é"));
        assert_eq!(verify(&path).unwrap_or_else(|e| panic!("{e}")).0, 1);
    }
}
