//! Caller pays: each peer's per-caller quotas and usage.
//!
//! A target sets in its `peer.toml` how much every caller may ask of it —
//! invocations per second and milliseconds of invocation time per minute —
//! and may give named callers (by their principal: petname, `anonymous` or
//! `did:key:…`) other figures, and all strangers together a budget:
//!
//! ```toml
//! [quotas]
//! invocations_per_second = 50
//! cpu_ms_per_minute = 10000
//!
//! [quotas.callers.alice]
//! invocations_per_second = 200
//! wall_time_ms = 200          # limits narrower than the peer's, for alice
//!
//! [quotas.strangers]          # every caller without a petname, together
//! invocations_per_second = 20
//! ```
//!
//! The peer itself is not held to the defaults, only to figures given under
//! its own name. Time is the invocation's wall time at the target, nested
//! delegations included (a delegated script is charged to its caller at the
//! target, not to the target). An invocation is decided first (`call` or
//! `script.accept`, by the policy) and only then admitted: one over quota
//! does not start; it is a `limit` error with a retry-after hint (HTTP 429
//! with `Retry-After`).
//!
//! # Strangers
//!
//! A key costs nothing to make, so a quota per identity alone is no bound:
//! 20 fresh keys would get 20 times a caller's quota. A *stranger* — a
//! caller the peer does not know by a petname in its `contacts.toml`, whose
//! principal is its `did:key` — is charged to its own account and to the
//! one account all strangers share, `[quotas.strangers]` (by default the
//! same figures as `[quotas]`; limits there narrow every stranger's
//! invocations). Unsigned callers need no such account: they all share the
//! one principal `anonymous` already.
//!
//! A stranger's own account lives in memory only: at most
//! [`MAX_STRANGERS`] per peer, each dropped once idle past its window (when
//! it is back in a fresh account's state, so dropping it loosens nothing);
//! when all are in use, the longest idle are evicted — evicting costs a
//! stranger no more than minting a new key would gain it, while refusing
//! newcomers would let a burst of keys lock every stranger out. Only an
//! admitted invocation has one: a refused entry, or a refusal by the shared
//! account, creates none.
//!
//! Usage is kept per worker process and written to
//! `peers/<name>/audit/usage.json` — known callers by name and the
//! `strangers` total, never a stranger's own — which `peerhost peer stats`
//! prints.
//!
//! # A peer on several workers
//!
//! Workers of a cluster hosting one peer tell each other, every
//! [`SHARE_EVERY`], what each known caller and the strangers together
//! spent since they last told ([`Usage::take_spent`]); each counts the
//! others' spending against its own meters ([`Usage::spent_elsewhere`]).
//! So the workers together hold a caller near its figures, not k times
//! them. Approximate: a worker learns of the others' spending up to one
//! interval late (plus the network), so a caller may exceed its figures by
//! what it spends at the other workers in that time; a per-second bucket
//! a worker has not used yet starts full; a stranger's own account stays
//! per worker (the strangers' shared account is summed). `peer stats`
//! shows each worker's own usage.

mod meter;
mod usage;

pub use usage::{CallerUsage, MAX_REPORTED, Spent, Usage};

use crate::config::DeploymentError;
use crate::identity::{Caller, DID_KEY_PREFIX, PeerId};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the usage of the peer in `peer_dir` is kept.
pub fn usage_path(peer_dir: &Path) -> PathBuf {
    peer_dir.join("audit").join("usage.json")
}

/// The name of the account all strangers share, in `usage.json` and
/// `peerhost peer stats` (reserved: no contact may be petnamed so).
pub const STRANGERS: &str = "strangers";

/// How often a worker tells the peer's other workers what was spent.
pub const SHARE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Most strangers with an account of their own at one peer. An account is
/// 104 bytes (a public key and a meter) in a table of at most 16,384
/// slots: under 2 MB per peer at worst. That many are only in use at once
/// when the shared budget admits more than 10,000 strangers per window (a
/// second; two minutes with a time quota).
pub const MAX_STRANGERS: usize = 10_000;

/// Whether `principal` names a stranger: its id, not a petname (petnames
/// and peer names have no `:`).
pub fn is_stranger(principal: &str) -> bool {
    principal.starts_with(DID_KEY_PREFIX)
}

/// One caller's quota; an absent figure is unlimited.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Invocations started per second (bursts of up to this many).
    pub invocations_per_second: Option<u64>,
    /// Milliseconds of invocation time per minute.
    pub cpu_ms_per_minute: Option<u64>,
    /// A wall time per invocation narrower than the peer's (named callers
    /// and strangers only).
    pub wall_time_ms: Option<u64>,
    /// Linear memory narrower than the peer's, in MiB (named callers and
    /// strangers only).
    pub memory_mib: Option<u64>,
    /// Fewer Rhai operations than the peer allows (named callers and
    /// strangers only).
    pub operations: Option<u64>,
    /// Bytes of kv keys and values this caller may own at the peer (named
    /// callers, and strangers all together).
    pub kv_bytes: Option<u64>,
    /// Keys this caller may own at the peer.
    pub kv_keys: Option<u64>,
}

impl Quota {
    /// Whether any figure is given, so that usage must be metered at all.
    fn meters(&self) -> bool {
        self.invocations_per_second.is_some() || self.cpu_ms_per_minute.is_some()
    }

    /// This quota's figures, and `defaults`' where it gives none.
    fn over(self, defaults: Quota) -> Quota {
        Quota {
            invocations_per_second: self
                .invocations_per_second
                .or(defaults.invocations_per_second),
            cpu_ms_per_minute: self.cpu_ms_per_minute.or(defaults.cpu_ms_per_minute),
            ..self
        }
    }
}

/// `[quotas]` of a `peer.toml`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Invocations per second of every caller but the peer itself.
    pub invocations_per_second: Option<u64>,
    /// Milliseconds per minute of every caller but the peer itself.
    pub cpu_ms_per_minute: Option<u64>,
    /// Bytes of kv keys and values the peer stores in all, whoever wrote them.
    pub kv_bytes: Option<u64>,
    /// Keys the peer stores in all.
    pub kv_keys: Option<u64>,
    /// Bytes of the regular files in the peer's namespace (`data/`), in all.
    pub fs_bytes: Option<u64>,
    /// Figures for named callers, each overriding the defaults it gives.
    #[serde(default)]
    pub callers: BTreeMap<String, Quota>,
    /// Figures for all strangers together, each overriding the default it
    /// gives; its limits narrow every stranger's invocations.
    #[serde(default)]
    pub strangers: Quota,
}

/// Largest figure a quota may give.
pub const MAX_FIGURE: u64 = 1_000_000_000;

/// Largest storage figure (`kv_bytes`, `kv_keys`, `fs_bytes`): 1 PiB.
pub const MAX_STORED: u64 = 1 << 50;

impl Quotas {
    /// Who owns, and pays for, what `caller` writes at this peer: its
    /// principal, or [`STRANGERS`] for every stranger together.
    pub fn kv_owner(caller: &str) -> &str {
        if is_stranger(caller) {
            STRANGERS
        } else {
            caller
        }
    }

    /// The storage figures of the peer as a whole, and of `owner` (a
    /// principal, or [`STRANGERS`]).
    pub fn kv(&self, owner: &str) -> (crate::kv::KvQuota, crate::kv::KvQuota) {
        let peer = crate::kv::KvQuota {
            bytes: self.kv_bytes,
            keys: self.kv_keys,
        };
        let own = if owner == STRANGERS {
            Some(&self.strangers)
        } else {
            self.callers.get(owner)
        };
        let own = own.map_or_else(crate::kv::KvQuota::default, |q| crate::kv::KvQuota {
            bytes: q.kv_bytes,
            keys: q.kv_keys,
        });
        (peer, own)
    }
}

impl Quotas {
    /// The quota of `caller` at peer `peer`.
    pub fn of(&self, peer: &str, caller: &str) -> Quota {
        let defaults = if caller == peer {
            Quota::default()
        } else {
            self.defaults()
        };
        match self.callers.get(caller) {
            Some(own) => own.over(defaults),
            None => defaults,
        }
    }

    /// The budget all strangers share: `[quotas.strangers]`, where a figure
    /// left out is the default per-caller one.
    pub fn for_strangers(&self) -> Quota {
        self.strangers.over(self.defaults())
    }

    /// The limits narrower than the peer's that `caller`'s invocations run
    /// under: its entry in `[quotas.callers]` and, for a stranger,
    /// `[quotas.strangers]` (the narrower of the two, figure by figure).
    pub fn narrowing(&self, caller: &str) -> Option<Quota> {
        let own = self.callers.get(caller).copied();
        let shared = is_stranger(caller).then_some(self.strangers);
        match (own, shared) {
            (Some(own), Some(shared)) => {
                let narrower = |a: Option<u64>, b: Option<u64>| match (a, b) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                Some(Quota {
                    wall_time_ms: narrower(own.wall_time_ms, shared.wall_time_ms),
                    memory_mib: narrower(own.memory_mib, shared.memory_mib),
                    operations: narrower(own.operations, shared.operations),
                    ..own
                })
            }
            (own, shared) => own.or(shared),
        }
    }

    fn defaults(&self) -> Quota {
        Quota {
            invocations_per_second: self.invocations_per_second,
            cpu_ms_per_minute: self.cpu_ms_per_minute,
            ..Quota::default()
        }
    }

    /// Every figure in range (1 to [`MAX_FIGURE`]; limits as in `[limits]`).
    pub fn validate(&self, path: &Path, text: &str) -> Result<(), DeploymentError> {
        use crate::config::{MAX_MEMORY_MIB, MAX_OPERATIONS, MAX_WALL_TIME_MS, check_range};
        let quotas = [self.defaults(), self.strangers]
            .into_iter()
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
                ("kv_bytes", quota.kv_bytes, MAX_STORED),
                ("kv_keys", quota.kv_keys, MAX_STORED),
            ] {
                check_range(path, text, name, value, max)?;
            }
        }
        check_range(path, text, "kv_bytes", self.kv_bytes, MAX_STORED)?;
        check_range(path, text, "kv_keys", self.kv_keys, MAX_STORED)?;
        check_range(path, text, "fs_bytes", self.fs_bytes, MAX_STORED)?;
        Ok(())
    }
}

/// Whose account an invocation is charged to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payer {
    /// A caller the peer knows by name (itself, a contact by petname, or
    /// `anonymous`): one account each, kept in `usage.json`.
    Known(String),
    /// A caller known only by its id: charged to an account of its own,
    /// in memory, and to the one all strangers share.
    Stranger(PeerId),
}

impl Payer {
    /// Who pays for `caller`'s invocations.
    pub fn of(caller: &Caller) -> Payer {
        match caller.id {
            Some(id) if is_stranger(&caller.principal) => Payer::Stranger(id),
            _ => Payer::Known(caller.principal.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn known(name: &str) -> Payer {
        Payer::Known(name.to_owned())
    }

    fn stranger() -> PeerId {
        crate::identity::PeerKey::generate()
            .unwrap_or_else(|e| panic!("{e}"))
            .id()
    }

    fn rate(n: u64) -> Quota {
        Quota {
            invocations_per_second: Some(n),
            ..Quota::default()
        }
    }

    fn usage() -> (tempfile::TempDir, Usage) {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let usage = Usage::new(tmp.path().join("audit/usage.json"));
        (tmp, usage)
    }

    fn quotas(toml: &str) -> Quotas {
        toml::from_str(toml).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_per_second_quota_refuses_the_burst_beyond_it_with_a_hint() {
        let (_tmp, usage) = usage();
        let quota = rate(3);
        for _ in 0..3 {
            assert!(usage.admit(&known("alice"), quota, quota).is_ok());
        }
        let refused = usage.admit(&known("alice"), quota, quota);
        let Err(error) = refused else {
            panic!("a fourth invocation in the same second was admitted")
        };
        assert_eq!(error.kind, crate::error::ErrorKind::Limit);
        assert!(error.retry_after_ms.is_some_and(|ms| ms > 0 && ms <= 1000));
        // Another caller has its own bucket.
        assert!(usage.admit(&known("carol"), quota, quota).is_ok());
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
        assert!(usage.admit(&known("alice"), quota, quota).is_ok());
        usage.charge(&known("alice"), Duration::from_millis(150));
        let refused = usage.admit(&known("alice"), quota, quota);
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

    /// Two workers of one peer, each told what the other spent: together
    /// they admit one quota, not two; what a worker was told is not told
    /// again, and its own figures stay its own.
    #[test]
    fn workers_of_one_peer_hold_a_caller_to_one_quota_between_them() {
        let ((_a, one), (_b, two)) = (usage(), usage());
        let quota = Quota {
            invocations_per_second: Some(4),
            cpu_ms_per_minute: Some(100),
            ..Quota::default()
        };
        let now = Instant::now();
        // Both buckets started (full) before alice spends at worker one.
        assert!(two.admit_at(&known("alice"), quota, quota, now).is_ok());
        for _ in 0..3 {
            assert!(one.admit_at(&known("alice"), quota, quota, now).is_ok());
        }
        let spent = one.take_spent();
        assert_eq!(spent["alice"].invocations, 3);
        assert!(one.take_spent().is_empty(), "told twice");
        two.spent_elsewhere_at(&spent, now);
        // 4 - 1 - 3: nothing left at worker two in this second.
        assert!(two.admit_at(&known("alice"), quota, quota, now).is_err());
        assert!(two.take_spent()["alice"].invocations == 1, "only its own");
        // Time spent at one counts in two's minute.
        let later = now + Duration::from_secs(2);
        one.charge_at(&known("alice"), Duration::from_millis(120), later);
        two.spent_elsewhere_at(&one.take_spent(), later);
        let refused = two.admit_at(&known("alice"), quota, quota, later);
        assert!(
            matches!(&refused, Err(e) if e.message.contains("of invocation time in the last minute")),
            "{refused:?}"
        );
        assert_eq!(two.snapshot()["alice"].invocations, 1);
        // Names that are no caller are not counted.
        let odd: BTreeMap<String, Spent> = [(
            "did:key:z6Mk".to_owned(),
            Spent {
                invocations: 9,
                time_ms: 9.0,
            },
        )]
        .into();
        two.spent_elsewhere_at(&odd, later);
        assert!(!two.snapshot().contains_key("did:key:z6Mk"));
    }

    #[test]
    fn named_callers_override_the_defaults_and_the_owner_is_exempt() {
        let quotas = quotas(
            "invocations_per_second = 5\ncpu_ms_per_minute = 1000\n\
             [callers.alice]\ninvocations_per_second = 50\n",
        );
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

    /// The review's case: 20 fresh keys against a 2/s quota got 20
    /// invocations; now they share one budget of 2/s.
    #[test]
    fn class_5_fresh_keys_share_the_strangers_budget() {
        let (_tmp, usage) = usage();
        let quotas = quotas("invocations_per_second = 2\n");
        let shared = quotas.for_strangers();
        assert_eq!(shared, rate(2), "by default, the per-caller figures");
        let now = Instant::now();
        let mut admitted = 0;
        let mut refusal = None;
        for _ in 0..20 {
            let id = stranger();
            let quota = quotas.of("bob", &id.to_string());
            match usage.admit_at(&Payer::Stranger(id), quota, shared, now) {
                Ok(()) => admitted += 1,
                Err(e) => refusal = Some(e),
            }
        }
        assert_eq!(admitted, 2, "20 fresh keys, one budget of 2 per second");
        let Some(refusal) = refusal else {
            panic!("no stranger was refused")
        };
        assert_eq!(refusal.kind, crate::error::ErrorKind::Limit);
        assert!(
            refusal
                .retry_after_ms
                .is_some_and(|ms| ms > 0 && ms <= 1000)
        );
        assert!(refusal.message.contains("strangers"), "{}", refusal.message);
        // Known callers keep their own budgets: a contact, and the unsigned
        // callers, who share `anonymous` already.
        for name in ["alice", "anonymous", "alice", "anonymous"] {
            let quota = quotas.of("bob", name);
            assert!(usage.admit_at(&known(name), quota, shared, now).is_ok());
        }
        // A second later the budget has refilled: two more strangers.
        let later = now + Duration::from_secs(1);
        let admitted = (0..5)
            .filter(|_| {
                let id = stranger();
                let quota = quotas.of("bob", &id.to_string());
                usage
                    .admit_at(&Payer::Stranger(id), quota, shared, later)
                    .is_ok()
            })
            .count();
        assert_eq!(admitted, 2);
        let stats = usage.snapshot();
        assert_eq!(
            (stats[STRANGERS].invocations, stats[STRANGERS].over_quota),
            (4, 21)
        );
        assert_eq!(stats["alice"].invocations, 2);
    }

    #[test]
    fn class_5_the_owner_sets_the_strangers_budget_and_limits() {
        let quotas = quotas(
            "invocations_per_second = 100\ncpu_ms_per_minute = 5000\n\
             [strangers]\ninvocations_per_second = 3\nwall_time_ms = 50\n\
             [callers.alice]\nwall_time_ms = 200\n",
        );
        assert_eq!(
            quotas.for_strangers(),
            Quota {
                invocations_per_second: Some(3),
                cpu_ms_per_minute: Some(5000),
                wall_time_ms: Some(50),
                ..Quota::default()
            }
        );
        let id = stranger().to_string();
        // Each stranger's own figures stay the per-caller ones ...
        assert_eq!(quotas.of("bob", &id).invocations_per_second, Some(100));
        // ... and the strangers' limits narrow each stranger's invocations.
        assert_eq!(quotas.narrowing(&id).and_then(|q| q.wall_time_ms), Some(50));
        assert_eq!(
            quotas.narrowing("alice").and_then(|q| q.wall_time_ms),
            Some(200)
        );
        assert_eq!(quotas.narrowing("anonymous"), None);
        // The same ranges as any quota.
        let text = "[strangers]\ninvocations_per_second = 0\n";
        let error = quotas_error(text);
        assert!(error.contains("out of range"), "{error}");
        let unknown: Result<Quotas, _> = toml::from_str("[strangers]\nbytes = 1\n");
        assert!(unknown.is_err(), "unknown fields are refused");
    }

    fn quotas_error(text: &str) -> String {
        match quotas(text).validate(Path::new("peer.toml"), text) {
            Ok(()) => panic!("{text} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    /// A stranger refused by its own quota leaves the shared budget to the
    /// others; one refused by the shared budget gets no account at all.
    #[test]
    fn class_5_each_account_is_asked_before_either_is_charged() {
        let (_tmp, usage) = usage();
        let now = Instant::now();
        let greedy = stranger();
        let (own, shared) = (rate(1), rate(3));
        assert!(
            usage
                .admit_at(&Payer::Stranger(greedy), own, shared, now)
                .is_ok()
        );
        for _ in 0..5 {
            assert!(
                usage
                    .admit_at(&Payer::Stranger(greedy), own, shared, now)
                    .is_err()
            );
        }
        // Two of the shared three are left for the others.
        let others: Vec<PeerId> = (0..4).map(|_| stranger()).collect();
        let admitted: Vec<bool> = others
            .iter()
            .map(|id| {
                usage
                    .admit_at(&Payer::Stranger(*id), own, shared, now)
                    .is_ok()
            })
            .collect();
        assert_eq!(admitted, [true, true, false, false]);
        assert!(
            !usage.has_account(&others[3]),
            "refused by the shared budget"
        );
        assert_eq!(usage.strangers_with_accounts(), 3);
    }

    #[test]
    fn class_6_stranger_accounts_are_bounded_evicting_the_longest_idle() {
        let (_tmp, usage) = usage();
        let start = Instant::now();
        let (own, shared) = (rate(1), rate(MAX_FIGURE));
        let first = stranger();
        assert!(
            usage
                .admit_at(&Payer::Stranger(first), own, shared, start)
                .is_ok()
        );
        // All within the same second: none has expired.
        let mut last = first;
        for i in 1..MAX_STRANGERS + 100 {
            last = stranger();
            let now = start + Duration::from_micros(i as u64);
            assert!(
                usage
                    .admit_at(&Payer::Stranger(last), own, shared, now)
                    .is_ok()
            );
            assert!(usage.strangers_with_accounts() <= MAX_STRANGERS);
        }
        assert!(!usage.has_account(&first), "the longest idle went first");
        assert!(usage.has_account(&last));
        assert!(usage.strangers_with_accounts() > MAX_STRANGERS - EVICTED);
    }

    const EVICTED: usize = MAX_STRANGERS / 8;

    #[test]
    fn class_6_idle_stranger_accounts_expire_after_their_window() {
        let (_tmp, usage) = usage();
        let now = Instant::now();
        let shared = Quota::default();
        let ids: Vec<PeerId> = (0..50).map(|_| stranger()).collect();
        for id in &ids {
            assert!(
                usage
                    .admit_at(&Payer::Stranger(*id), rate(2), shared, now)
                    .is_ok()
            );
        }
        let timed = Quota {
            cpu_ms_per_minute: Some(100),
            ..Quota::default()
        };
        let slow = stranger();
        assert!(
            usage
                .admit_at(&Payer::Stranger(slow), timed, shared, now)
                .is_ok()
        );
        usage.charge_at(&Payer::Stranger(slow), Duration::from_millis(150), now);
        assert_eq!(usage.strangers_with_accounts(), 51);
        assert_eq!(usage.expire_at(now + Duration::from_millis(900)), 0);
        // A full bucket is a fresh one's: gone after a second idle.
        assert_eq!(usage.expire_at(now + Duration::from_secs(1)), 50);
        // A time window lasts two minutes: until then the stranger stays
        // refused, and dropping it would have let it in.
        let later = now + Duration::from_secs(61);
        assert_eq!(usage.expire_at(later), 0);
        assert!(
            usage
                .admit_at(&Payer::Stranger(slow), timed, shared, later)
                .is_err()
        );
        assert_eq!(usage.expire_at(later + 2 * MINUTE), 1);
        assert_eq!(usage.strangers_with_accounts(), 0);
        // With no figure to meter, a stranger gets no account at all.
        assert!(
            usage
                .admit_at(&Payer::Stranger(stranger()), Quota::default(), rate(5), now)
                .is_ok()
        );
        assert_eq!(usage.strangers_with_accounts(), 0);
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn class_6_strangers_leave_no_permanent_usage() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.path().join("audit/usage.json");
        let usage = Usage::new(path.clone());
        let quota = rate(10);
        assert!(usage.admit(&known("alice"), quota, quota).is_ok());
        for _ in 0..200 {
            let payer = Payer::Stranger(stranger());
            assert!(usage.admit(&payer, quota, rate(MAX_FIGURE)).is_ok());
            usage.charge(&payer, Duration::from_millis(2));
        }
        usage.save().unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!text.contains("did:key"), "{text}");
        assert!(text.len() < 512, "{} bytes: {text}", text.len());
        let saved = Usage::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(saved.keys().collect::<Vec<_>>(), ["alice", STRANGERS]);
        assert_eq!(saved[STRANGERS].invocations, 200);
        assert_eq!(saved[STRANGERS].accounts, Some(200));
        assert!(saved[STRANGERS].time_ms > 399.0);
        // A new process keeps the total and no stranger's account.
        let again = Usage::new(path);
        assert_eq!(again.strangers_with_accounts(), 0);
        assert_eq!(again.snapshot()[STRANGERS].invocations, 200);
    }

    /// A usage.json of 3,000 strangers' entries, as the old worker wrote
    /// it (416 KB), still loads: their figures join the total, and the
    /// next save writes them no more.
    #[test]
    fn class_6_an_old_usage_json_folds_strangers_into_the_total() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.path().join("audit/usage.json");
        let entry = |n: u64| CallerUsage {
            invocations: n,
            over_quota: 1,
            time_ms: 0.5,
            accounts: None,
        };
        let mut old: BTreeMap<String, CallerUsage> = (0..3_000)
            .map(|i| (format!("did:key:z6Mk{i:044}"), entry(2)))
            .collect();
        old.insert("alice".to_owned(), entry(7));
        let text = serde_json::to_string_pretty(&old).unwrap_or_else(|e| panic!("{e}"));
        assert!(text.len() > 300_000, "{}", text.len());
        std::fs::create_dir_all(tmp.path().join("audit")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        for shown in [
            Usage::load(&path).unwrap_or_else(|e| panic!("{e}")),
            Usage::new(path.clone()).snapshot(),
        ] {
            assert_eq!(
                shown.len(),
                2,
                "{:?}",
                shown.keys().take(3).collect::<Vec<_>>()
            );
            assert_eq!(shown["alice"].invocations, 7);
            assert_eq!(shown[STRANGERS].invocations, 6_000);
            assert_eq!(shown[STRANGERS].over_quota, 3_000);
        }
        Usage::new(path.clone())
            .save()
            .unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!text.contains("did:key") && text.len() < 512, "{text}");
    }

    /// Only an admitted stranger costs memory, and a bounded amount.
    #[test]
    fn class_6_a_stranger_account_is_small() {
        let entry = std::mem::size_of::<([u8; 32], usage::StrangerMeter)>();
        assert!(entry <= 128, "{entry} bytes an account");
    }
}
