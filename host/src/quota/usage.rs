//! What each caller has used at one peer: known callers' accounts (kept in
//! `usage.json`), the strangers' total, and strangers' own meters, in
//! memory only and bounded (see the [`quota`](super) module).

use super::meter::Meter;
use super::{MAX_STRANGERS, Payer, Quota, STRANGERS, is_stranger};
use crate::error::InvocationError;
use crate::identity::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most callers of one other worker's report that are counted.
pub const MAX_REPORTED: usize = 4_096;

/// How many of the longest-idle strangers' accounts are evicted at once
/// when all [`MAX_STRANGERS`] are in use: one scan makes room for many.
const EVICTED_AT_ONCE: usize = if MAX_STRANGERS >= 16 {
    MAX_STRANGERS / 16
} else {
    1
};

/// What one caller has used at one peer, as `peerhost peer stats` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CallerUsage {
    /// Invocations that started.
    pub invocations: u64,
    /// Invocations refused for being over quota.
    pub over_quota: u64,
    /// Milliseconds of invocation time, in all.
    pub time_ms: f64,
    /// For the `strangers` total only: how many strangers had an account
    /// of their own, in memory, when the usage was written (at most
    /// [`MAX_STRANGERS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounts: Option<u64>,
}

impl CallerUsage {
    fn add(&mut self, other: &CallerUsage) {
        self.invocations = self.invocations.saturating_add(other.invocations);
        self.over_quota = self.over_quota.saturating_add(other.over_quota);
        self.time_ms += other.time_ms;
    }
}

/// What an account spent at one worker since that worker last told the
/// others of a peer's workers (see [`Usage::take_spent`]).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Spent {
    /// Invocations admitted.
    pub invocations: u64,
    /// Milliseconds of invocation time charged.
    pub time_ms: f64,
}

impl Spent {
    fn is_nothing(&self) -> bool {
        self.invocations == 0 && self.time_ms == 0.0
    }
}

/// A known caller's usage and the state of its quota.
#[derive(Debug, Default)]
struct Account {
    usage: CallerUsage,
    meter: Meter,
    /// Spent here since last taken, for the peer's other workers.
    unshared: Spent,
}

impl Account {
    fn spend(&mut self, ms: f64, now: Instant) {
        self.meter.spend(ms, now);
        self.usage.time_ms += ms;
        self.unshared.time_ms += ms;
    }

    fn admitted(&mut self) {
        self.meter.take();
        self.usage.invocations += 1;
        self.unshared.invocations += 1;
    }
}

/// A stranger's own account: its meter only (its usage counts in the
/// `strangers` total), and when it was last used.
#[derive(Debug)]
pub(super) struct StrangerMeter {
    meter: Meter,
    last_used: Instant,
}

impl StrangerMeter {
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_used) >= self.meter.window()
    }
}

/// Every account at one peer.
#[derive(Debug, Default)]
struct Accounts {
    /// Known callers, by name.
    known: BTreeMap<String, Account>,
    /// What all strangers have used together, against `[quotas.strangers]`.
    strangers: Account,
    /// Strangers' own meters, by public key; at most [`MAX_STRANGERS`].
    each_stranger: HashMap<[u8; 32], StrangerMeter>,
}

impl Accounts {
    /// Admits a stranger: the shared account first, then its own, each
    /// asked before either is charged; its own account is created only
    /// when both admit, and only when its quota meters anything.
    fn admit_stranger(
        &mut self,
        id: PeerId,
        quota: Quota,
        shared: Quota,
        now: Instant,
    ) -> Result<(), InvocationError> {
        if let Some((why, retry)) = self.strangers.meter.check(shared, now) {
            self.strangers.usage.over_quota += 1;
            return Err(InvocationError::limit(format!(
                "over the quota all strangers share here (callers without a petname in its contacts): {why}"
            ))
            .retry_after(retry));
        }
        if quota.meters() {
            let key = *id.key().as_bytes();
            // An expired meter is in a fresh one's state: start afresh.
            let kept = self
                .each_stranger
                .remove(&key)
                .filter(|own| !own.expired(now));
            let had = kept.is_some();
            let mut own = kept.unwrap_or(StrangerMeter {
                meter: Meter::default(),
                last_used: now,
            });
            if let Some((why, retry)) = own.meter.check(quota, now) {
                self.strangers.usage.over_quota += 1;
                // (A fresh meter admits one at least: only a kept one refuses.)
                if had {
                    self.each_stranger.insert(key, own);
                }
                return Err(InvocationError::limit(format!("over quota: {why}")).retry_after(retry));
            }
            own.meter.take();
            own.last_used = now;
            if !had {
                self.make_room(now);
            }
            self.each_stranger.insert(key, own);
        }
        self.strangers.admitted();
        Ok(())
    }

    /// Keeps strangers' accounts under [`MAX_STRANGERS`] for one more: the
    /// expired go, then, if none did, the [`EVICTED_AT_ONCE`] longest idle.
    fn make_room(&mut self, now: Instant) {
        if self.each_stranger.len() < MAX_STRANGERS {
            return;
        }
        self.expire(now);
        if self.each_stranger.len() < MAX_STRANGERS {
            return;
        }
        let mut idle: Vec<Instant> = self.each_stranger.values().map(|s| s.last_used).collect();
        let (_, cutoff, _) = idle.select_nth_unstable(EVICTED_AT_ONCE - 1);
        let cutoff = *cutoff;
        self.each_stranger.retain(|_, s| s.last_used > cutoff);
    }

    /// Drops the strangers' accounts idle past their window, and gives
    /// back the table's memory once it is mostly empty.
    fn expire(&mut self, now: Instant) -> usize {
        let before = self.each_stranger.len();
        self.each_stranger.retain(|_, s| !s.expired(now));
        let left = self.each_stranger.len();
        if left < self.each_stranger.capacity() / 4 {
            self.each_stranger.shrink_to(left * 2);
        }
        before - left
    }
}

/// Every caller's account at one peer.
#[derive(Debug)]
pub struct Usage {
    path: PathBuf,
    accounts: Mutex<Accounts>,
    dirty: AtomicBool,
}

/// Splits saved usage into known callers and the strangers' total; a
/// stranger's own entry (as an older worker wrote them) joins the total.
fn fold(saved: BTreeMap<String, CallerUsage>) -> (BTreeMap<String, CallerUsage>, CallerUsage) {
    let mut strangers = CallerUsage::default();
    let mut known = BTreeMap::new();
    for (name, usage) in saved {
        if name == STRANGERS {
            strangers.add(&usage);
            strangers.accounts = usage.accounts;
        } else if is_stranger(&name) {
            strangers.add(&usage);
        } else {
            known.insert(name, usage);
        }
    }
    (known, strangers)
}

impl Usage {
    /// Usage written to `path` (`peers/<name>/audit/usage.json`), starting
    /// from what that file holds.
    pub fn new(path: PathBuf) -> Usage {
        let saved: BTreeMap<String, CallerUsage> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        // Strangers' own entries an older worker wrote are folded into the
        // total, and the file is rewritten without them at the next save.
        let folded = saved.keys().any(|name| is_stranger(name));
        let (known, strangers) = fold(saved);
        let account = |usage: CallerUsage| Account {
            usage: CallerUsage {
                accounts: None,
                ..usage
            },
            meter: Meter::default(),
            unshared: Spent::default(),
        };
        let accounts = Accounts {
            known: known
                .into_iter()
                .map(|(name, usage)| (name, account(usage)))
                .collect(),
            strangers: account(strangers),
            each_stranger: HashMap::new(),
        };
        Usage {
            path,
            accounts: Mutex::new(accounts),
            dirty: AtomicBool::new(folded),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Accounts> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits one invocation of `payer` under its own `quota` and, for a
    /// stranger, the `strangers` budget; or says when to retry.
    pub fn admit(
        &self,
        payer: &Payer,
        quota: Quota,
        strangers: Quota,
    ) -> Result<(), InvocationError> {
        self.admit_at(payer, quota, strangers, Instant::now())
    }

    pub(super) fn admit_at(
        &self,
        payer: &Payer,
        quota: Quota,
        strangers: Quota,
        now: Instant,
    ) -> Result<(), InvocationError> {
        let mut accounts = self.lock();
        self.dirty.store(true, Ordering::Relaxed);
        match payer {
            Payer::Known(name) => {
                let account = accounts.known.entry(name.clone()).or_default();
                match account.meter.check(quota, now) {
                    None => {
                        account.admitted();
                        Ok(())
                    }
                    Some((why, retry)) => {
                        account.usage.over_quota += 1;
                        Err(InvocationError::limit(format!("over quota: {why}")).retry_after(retry))
                    }
                }
            }
            Payer::Stranger(id) => accounts.admit_stranger(*id, quota, strangers, now),
        }
    }

    /// Charges `spent` of invocation time to `payer`: a stranger's to the
    /// `strangers` total, and to its own account while it has one.
    pub fn charge(&self, payer: &Payer, spent: Duration) {
        self.charge_at(payer, spent, Instant::now());
    }

    pub(super) fn charge_at(&self, payer: &Payer, spent: Duration, now: Instant) {
        let ms = spent.as_secs_f64() * 1e3;
        let mut accounts = self.lock();
        match payer {
            Payer::Known(name) => accounts
                .known
                .entry(name.clone())
                .or_default()
                .spend(ms, now),
            Payer::Stranger(id) => {
                accounts.strangers.spend(ms, now);
                if let Some(own) = accounts.each_stranger.get_mut(id.key().as_bytes()) {
                    // Only a meter with a time quota keeps a window.
                    if own.meter.minute.is_some() {
                        own.meter.spend(ms, now);
                    }
                    own.last_used = now;
                }
            }
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// What each known caller (and the strangers together, as
    /// `strangers`) spent at this worker since the last call, for the
    /// peer's other workers; those who spent nothing are left out.
    pub fn take_spent(&self) -> BTreeMap<String, Spent> {
        let mut accounts = self.lock();
        let mut spent = BTreeMap::new();
        let strangers = std::mem::take(&mut accounts.strangers.unshared);
        if !strangers.is_nothing() {
            spent.insert(STRANGERS.to_owned(), strangers);
        }
        for (name, account) in accounts.known.iter_mut() {
            let unshared = std::mem::take(&mut account.unshared);
            if !unshared.is_nothing() {
                spent.insert(name.clone(), unshared);
            }
        }
        spent
    }

    /// Counts against this worker's quotas what another worker of the peer
    /// reported (`take_spent` there): its invocations take tokens of the
    /// per-second buckets, its time goes into the minute windows, so the
    /// workers of a peer together hold each caller near its figures. Their
    /// usage figures (`peer stats`) stay this worker's own. At most
    /// [`MAX_REPORTED`] callers of one report are counted (the caller
    /// picks which: the cluster, only the peer's known callers).
    pub fn spent_elsewhere(&self, spent: &BTreeMap<String, Spent>) {
        self.spent_elsewhere_at(spent, Instant::now());
    }

    pub(super) fn spent_elsewhere_at(&self, spent: &BTreeMap<String, Spent>, now: Instant) {
        let mut accounts = self.lock();
        for (name, spent) in spent.iter().take(MAX_REPORTED) {
            let meter = if name == STRANGERS {
                &mut accounts.strangers.meter
            } else if crate::identity::valid_name(name) {
                &mut accounts.known.entry(name.clone()).or_default().meter
            } else {
                continue; // a stranger's own, or no caller at all
            };
            if let Some((tokens, _)) = meter.tokens.as_mut() {
                // Down to empty, not below: a report leaves a caller at most
                // where spending its whole bucket here would.
                *tokens = (*tokens - spent.invocations as f64).max(0.0);
            }
            if spent.time_ms.is_finite() && spent.time_ms > 0.0 {
                meter.spend(spent.time_ms.min(86_400_000.0), now);
            }
        }
    }

    /// How many strangers have an account of their own now.
    pub fn strangers_with_accounts(&self) -> usize {
        self.lock().each_stranger.len()
    }

    /// Drops the strangers' accounts idle past their window at `now`;
    /// returns how many went.
    pub(super) fn expire_at(&self, now: Instant) -> usize {
        let dropped = self.lock().expire(now);
        if dropped > 0 {
            self.dirty.store(true, Ordering::Relaxed);
        }
        dropped
    }

    /// Whether `id` has an account of its own.
    #[cfg(test)]
    pub(super) fn has_account(&self, id: &PeerId) -> bool {
        self.lock().each_stranger.contains_key(id.key().as_bytes())
    }

    /// Every known caller's usage so far, and the `strangers` total once
    /// any stranger came.
    pub fn snapshot(&self) -> BTreeMap<String, CallerUsage> {
        let accounts = self.lock();
        let mut usage: BTreeMap<String, CallerUsage> = accounts
            .known
            .iter()
            .map(|(caller, account)| (caller.clone(), account.usage.clone()))
            .collect();
        if accounts.strangers.usage != CallerUsage::default() || !accounts.each_stranger.is_empty()
        {
            usage.insert(
                STRANGERS.to_owned(),
                CallerUsage {
                    accounts: Some(accounts.each_stranger.len() as u64),
                    ..accounts.strangers.usage.clone()
                },
            );
        }
        usage
    }

    /// Drops the strangers' accounts idle past their window, then writes
    /// the usage to its file when it changed since the last write
    /// (atomically: a temporary file, then a rename).
    pub fn save(&self) -> std::io::Result<()> {
        self.expire_at(Instant::now());
        if !self.dirty.swap(false, Ordering::Relaxed) {
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

    /// The usage saved in `path`, for `peerhost peer stats` (strangers'
    /// own entries an older worker wrote shown in the `strangers` total).
    pub fn load(path: &Path) -> std::io::Result<BTreeMap<String, CallerUsage>> {
        let text = std::fs::read_to_string(path)?;
        let saved = serde_json::from_str(&text).map_err(std::io::Error::other)?;
        let (mut known, strangers) = fold(saved);
        if strangers != CallerUsage::default() {
            known.insert(STRANGERS.to_owned(), strangers);
        }
        Ok(known)
    }
}
