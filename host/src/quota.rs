//! Caller pays: each peer's per-caller quotas and usage.
//!
//! A target sets in its `peer.toml` how much every caller may ask of it —
//! invocations per second and milliseconds of invocation time per minute —
//! and may give named callers (by their principal: petname, `anonymous` or
//! `did:key:…`) other figures:
//!
//! ```toml
//! [quotas]
//! invocations_per_second = 50
//! cpu_ms_per_minute = 10000
//!
//! [quotas.callers.alice]
//! invocations_per_second = 200
//! wall_time_ms = 200          # limits narrower than the peer's, for alice
//! ```
//!
//! The peer itself is not held to the defaults, only to figures given under
//! its own name. Time is the invocation's wall time at the target, nested
//! delegations included (a delegated script is charged to its caller at the
//! target, not to the target). An invocation over quota does not start: it
//! is a `limit` error with a retry-after hint (HTTP 429 with `Retry-After`).
//! Usage is kept per worker process and written to
//! `peers/<name>/audit/usage.json`, which `peerhost peer stats` prints.

use crate::config::DeploymentError;
use crate::error::InvocationError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where the usage of the peer in `peer_dir` is kept.
pub fn usage_path(peer_dir: &Path) -> PathBuf {
    peer_dir.join("audit").join("usage.json")
}

/// One caller's quota; an absent figure is unlimited.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Invocations started per second (bursts of up to this many).
    pub invocations_per_second: Option<u64>,
    /// Milliseconds of invocation time per minute.
    pub cpu_ms_per_minute: Option<u64>,
    /// A wall time per invocation narrower than the peer's (named callers only).
    pub wall_time_ms: Option<u64>,
    /// Linear memory narrower than the peer's, in MiB (named callers only).
    pub memory_mib: Option<u64>,
    /// Fewer Rhai operations than the peer allows (named callers only).
    pub operations: Option<u64>,
}

/// `[quotas]` of a `peer.toml`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Invocations per second of every caller but the peer itself.
    pub invocations_per_second: Option<u64>,
    /// Milliseconds per minute of every caller but the peer itself.
    pub cpu_ms_per_minute: Option<u64>,
    /// Figures for named callers, each overriding the defaults it gives.
    #[serde(default)]
    pub callers: BTreeMap<String, Quota>,
}

/// Largest figure a quota may give.
pub const MAX_FIGURE: u64 = 1_000_000_000;

impl Quotas {
    /// The quota of `caller` at peer `peer`.
    pub fn of(&self, peer: &str, caller: &str) -> Quota {
        let defaults = if caller == peer {
            Quota::default()
        } else {
            Quota {
                invocations_per_second: self.invocations_per_second,
                cpu_ms_per_minute: self.cpu_ms_per_minute,
                ..Quota::default()
            }
        };
        match self.callers.get(caller) {
            Some(own) => Quota {
                invocations_per_second: own
                    .invocations_per_second
                    .or(defaults.invocations_per_second),
                cpu_ms_per_minute: own.cpu_ms_per_minute.or(defaults.cpu_ms_per_minute),
                wall_time_ms: own.wall_time_ms,
                memory_mib: own.memory_mib,
                operations: own.operations,
            },
            None => defaults,
        }
    }

    /// Every figure in range (1 to [`MAX_FIGURE`]; limits as in `[limits]`).
    pub fn validate(&self, path: &Path, text: &str) -> Result<(), DeploymentError> {
        use crate::config::{MAX_MEMORY_MIB, MAX_OPERATIONS, MAX_WALL_TIME_MS, check_range};
        let quotas = std::iter::once(Quota {
            invocations_per_second: self.invocations_per_second,
            cpu_ms_per_minute: self.cpu_ms_per_minute,
            ..Quota::default()
        })
        .chain(self.callers.values().copied());
        for quota in quotas {
            for (name, value, max) in [
                (
                    "invocations_per_second",
                    quota.invocations_per_second,
                    MAX_FIGURE,
                ),
                ("cpu_ms_per_minute", quota.cpu_ms_per_minute, MAX_FIGURE),
                ("wall_time_ms", quota.wall_time_ms, MAX_WALL_TIME_MS),
                ("memory_mib", quota.memory_mib, MAX_MEMORY_MIB),
                ("operations", quota.operations, MAX_OPERATIONS),
            ] {
                check_range(path, text, name, value, max)?;
            }
        }
        Ok(())
    }
}

/// What one caller has used at one peer, as `peerhost peer stats` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CallerUsage {
    /// Invocations that started.
    pub invocations: u64,
    /// Invocations refused for being over quota.
    pub over_quota: u64,
    /// Milliseconds of invocation time, in all.
    pub time_ms: f64,
}

/// A caller's usage and the state of its quota.
#[derive(Debug, Default)]
struct Account {
    usage: CallerUsage,
    /// Token bucket of the per-second quota: tokens and when last filled.
    tokens: Option<(f64, Instant)>,
    /// The current minute's start and time charged in it, and the time of
    /// the minute before (a sliding-window estimate).
    minute: Option<(Instant, f64, f64)>,
}

const MINUTE: Duration = Duration::from_secs(60);

impl Account {
    /// Milliseconds charged in the last minute (sliding-window estimate).
    fn last_minute(&mut self, now: Instant) -> f64 {
        let (start, current, previous) = self.minute.get_or_insert((now, 0.0, 0.0));
        let mut elapsed = now.saturating_duration_since(*start);
        if elapsed >= MINUTE {
            let minutes = elapsed.as_secs() / 60;
            *previous = if minutes == 1 { *current } else { 0.0 };
            *current = 0.0;
            *start += MINUTE * u32::try_from(minutes).unwrap_or(u32::MAX);
            elapsed = now.saturating_duration_since(*start);
        }
        let weight = 1.0 - elapsed.as_secs_f64() / MINUTE.as_secs_f64();
        *current + *previous * weight
    }
}

/// Every caller's account at one peer.
#[derive(Debug)]
pub struct Usage {
    path: PathBuf,
    accounts: Mutex<BTreeMap<String, Account>>,
    dirty: std::sync::atomic::AtomicBool,
}

impl Usage {
    /// Usage written to `path` (`peers/<name>/audit/usage.json`), starting
    /// from what that file holds.
    pub fn new(path: PathBuf) -> Usage {
        let saved: BTreeMap<String, CallerUsage> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        let accounts = saved
            .into_iter()
            .map(|(caller, usage)| {
                (
                    caller,
                    Account {
                        usage,
                        ..Account::default()
                    },
                )
            })
            .collect();
        Usage {
            path,
            accounts: Mutex::new(accounts),
            dirty: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Admits one invocation of `caller` under `quota`, or says when to retry.
    pub fn admit(&self, caller: &str, quota: Quota) -> Result<(), InvocationError> {
        let now = Instant::now();
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let account = accounts.entry(caller.to_owned()).or_default();
        let refusal = Self::check(account, quota, now);
        self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        match refusal {
            None => {
                account.usage.invocations += 1;
                Ok(())
            }
            Some((message, retry)) => {
                account.usage.over_quota += 1;
                Err(InvocationError::limit(message).retry_after(retry))
            }
        }
    }

    fn check(account: &mut Account, quota: Quota, now: Instant) -> Option<(String, Duration)> {
        if let Some(budget) = quota.cpu_ms_per_minute {
            let used = account.last_minute(now);
            if used >= budget as f64 {
                let (start, _, _) = account.minute.unwrap_or((now, 0.0, 0.0));
                let retry = (start + MINUTE).saturating_duration_since(now);
                return Some((
                    format!(
                        "over quota: {used:.0} ms of invocation time in the last minute; the quota is {budget} ms per minute"
                    ),
                    retry.max(Duration::from_secs(1)),
                ));
            }
        }
        if let Some(rate) = quota.invocations_per_second {
            let rate = rate as f64;
            let (tokens, last) = account.tokens.get_or_insert((rate, now));
            let refill = now.saturating_duration_since(*last).as_secs_f64() * rate;
            *tokens = (*tokens + refill).min(rate);
            *last = now;
            if *tokens < 1.0 {
                let retry = Duration::from_secs_f64((1.0 - *tokens) / rate);
                return Some((
                    format!("over quota: more than {rate} invocations per second"),
                    retry.max(Duration::from_millis(1)),
                ));
            }
            *tokens -= 1.0;
        }
        None
    }

    /// Charges `spent` of invocation time to `caller`.
    pub fn charge(&self, caller: &str, spent: Duration) {
        let now = Instant::now();
        let ms = spent.as_secs_f64() * 1e3;
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let account = accounts.entry(caller.to_owned()).or_default();
        account.last_minute(now);
        if let Some((_, current, _)) = account.minute.as_mut() {
            *current += ms;
        }
        account.usage.time_ms += ms;
        self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every caller's usage so far.
    pub fn snapshot(&self) -> BTreeMap<String, CallerUsage> {
        let accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        accounts
            .iter()
            .map(|(caller, account)| (caller.clone(), account.usage.clone()))
            .collect()
    }

    /// Writes the usage to its file when it changed since the last write
    /// (atomically: a temporary file, then a rename).
    pub fn save(&self) -> std::io::Result<()> {
        if !self.dirty.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let text = serde_json::to_string_pretty(&self.snapshot()).map_err(std::io::Error::other)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let temp = tempfile::NamedTempFile::new_in(dir)?;
        std::fs::write(temp.path(), text)?;
        temp.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }

    /// The usage saved in `path`, for `peerhost peer stats`.
    pub fn load(path: &Path) -> std::io::Result<BTreeMap<String, CallerUsage>> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_second_quota_refuses_the_burst_beyond_it_with_a_hint() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let usage = Usage::new(tmp.path().join("usage.json"));
        let quota = Quota {
            invocations_per_second: Some(3),
            ..Quota::default()
        };
        for _ in 0..3 {
            assert!(usage.admit("alice", quota).is_ok());
        }
        let refused = usage.admit("alice", quota);
        let Err(error) = refused else {
            panic!("a fourth invocation in the same second was admitted")
        };
        assert_eq!(error.kind, crate::error::ErrorKind::Limit);
        assert!(error.retry_after_ms.is_some_and(|ms| ms > 0 && ms <= 1000));
        // Another caller has its own bucket.
        assert!(usage.admit("carol", quota).is_ok());
        let stats = usage.snapshot();
        assert_eq!(
            (stats["alice"].invocations, stats["alice"].over_quota),
            (3, 1)
        );
    }

    #[test]
    fn the_time_quota_refuses_once_the_minute_is_spent_and_usage_is_saved() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.path().join("audit/usage.json");
        let usage = Usage::new(path.clone());
        let quota = Quota {
            cpu_ms_per_minute: Some(100),
            ..Quota::default()
        };
        assert!(usage.admit("alice", quota).is_ok());
        usage.charge("alice", Duration::from_millis(150));
        let refused = usage.admit("alice", quota);
        assert!(
            matches!(&refused, Err(e) if e.retry_after_ms.is_some_and(|ms| ms >= 1000)),
            "{refused:?}"
        );
        usage.save().unwrap_or_else(|e| panic!("{e}"));
        let saved = Usage::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(saved["alice"].over_quota, 1);
        assert!((saved["alice"].time_ms - 150.0).abs() < 1.0);
        // A new process starts from the saved totals.
        assert_eq!(Usage::new(path).snapshot()["alice"].invocations, 1);
    }

    #[test]
    fn named_callers_override_the_defaults_and_the_owner_is_exempt() {
        let quotas = Quotas {
            invocations_per_second: Some(5),
            cpu_ms_per_minute: Some(1000),
            callers: BTreeMap::from([(
                "alice".to_owned(),
                Quota {
                    invocations_per_second: Some(50),
                    ..Quota::default()
                },
            )]),
        };
        assert_eq!(
            quotas.of("bob", "alice"),
            Quota {
                invocations_per_second: Some(50),
                cpu_ms_per_minute: Some(1000),
                ..Quota::default()
            }
        );
        assert_eq!(quotas.of("bob", "bob"), Quota::default());
        assert_eq!(
            quotas.of("bob", "anonymous").invocations_per_second,
            Some(5)
        );
    }
}
