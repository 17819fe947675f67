//! `peerhost audit verify`: walking a log's hash chain, torn lines and
//! their markers included (see the parent module's doc).

use super::{GENESIS, Record, TORN, line_hash, torn_resource};
use std::path::{Path, PathBuf};

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
/// logs were chained (no `prev`) are accepted before the first chained line;
/// a line that is not a record only with a [`TORN`] marker chained to it
/// right after it.
pub fn verify(path: &Path) -> Result<(usize, String), ChainError> {
    let text = std::fs::read(path).map_err(|source| ChainError::Io {
        path: path.to_owned(),
        source,
    })?;
    /// A line that is not a record, waiting for its marker.
    struct Torn {
        line: usize,
        hash: String,
        before: String,
        reason: String,
    }
    let not_a_record = |torn: Torn| ChainError::NotARecord {
        path: path.to_owned(),
        line: torn.line,
        reason: torn.reason,
    };
    let broken = |line: usize| ChainError::Broken {
        path: path.to_owned(),
        line,
    };
    let mut before = GENESIS.to_owned();
    let mut chained = false;
    let mut count = 0;
    let mut torn: Option<Torn> = None;
    for (index, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let number = index + 1;
        let parsed = serde_json::from_slice::<Record>(line);
        let hash = line_hash(line);
        if let Some(torn) = torn.take() {
            // Only the marker written for it may follow a torn line.
            let marker = match &parsed {
                Ok(record) if record.action == TORN => record,
                _ => {
                    return Err(not_a_record(Torn {
                        reason: format!(
                            "{}; the next line is not an `{TORN}` marker chained to it",
                            torn.reason
                        ),
                        ..torn
                    }));
                }
            };
            if marker.resource != torn_resource(&torn.before) {
                return Err(broken(torn.line));
            }
            if marker.prev.as_deref() != Some(torn.hash.as_str()) {
                return Err(broken(number));
            }
            chained = true;
            before = hash;
            count += 1;
            continue;
        }
        let record = match parsed {
            Ok(record) => record,
            Err(e) => {
                torn = Some(Torn {
                    line: number,
                    hash: hash.clone(),
                    before: std::mem::replace(&mut before, hash),
                    reason: e.to_string(),
                });
                count += 1;
                continue;
            }
        };
        match record.prev {
            Some(prev) if prev == before || (!chained && prev == GENESIS) => chained = true,
            None if !chained => {}
            _ => return Err(broken(number)),
        }
        before = hash;
        count += 1;
    }
    if let Some(torn) = torn {
        let hint = if text.ends_with(b"\n") {
            "no `audit.torn` marker follows it yet; the next append writes one"
        } else {
            "the file ends without a newline: a write was cut short; the next append marks it"
        };
        return Err(not_a_record(Torn {
            reason: format!("{}; {hint}", torn.reason),
            ..torn
        }));
    }
    Ok((count, before))
}
