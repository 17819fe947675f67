//! Cedar answers already given, so that a repeated decision costs a hash
//! lookup instead of an evaluation.
//!
//! An answer is a function of the policy version and of the request alone:
//! the peer (the owner entity every resource is `in`), the principal, the
//! action and the resource (whose only attribute is its own id); requests
//! carry no context. The key holds all of them, with the version as a
//! number no other version of any peer's policy is given
//! ([`next_version`]), so an edited policy is never answered from the
//! version before it: its first decision is evaluated afresh.
//!
//! Bounded: [`SHARDS`] shards of at most [`PER_SHARD`] answers, a shard
//! emptied when full; requests naming more than [`MAX_KEY`] bytes are not
//! kept. Answers with evaluation errors are not kept either (they are rare,
//! and an error may speak of the evaluation rather than of the request).

use super::{Action, PolicyDecision, Resource};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Shards of the cache, each under its own lock.
pub const SHARDS: usize = 16;

/// Answers one shard keeps before it is emptied.
pub const PER_SHARD: usize = 4096;

/// Longest request kept, in bytes of peer, principal and resource.
pub const MAX_KEY: usize = 512;

/// A number for a newly parsed policy version, never given before in
/// this process.
pub fn next_version() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

struct Kept {
    version: u64,
    peer: Box<str>,
    principal: Box<str>,
    action: Action,
    resource: Resource,
    answer: Arc<PolicyDecision>,
}

impl Kept {
    fn is(
        &self,
        version: u64,
        peer: &str,
        principal: &str,
        action: Action,
        resource: &Resource,
    ) -> bool {
        self.version == version
            && self.action == action
            && *self.peer == *peer
            && *self.principal == *principal
            && self.resource == *resource
    }
}

type Shard = Mutex<HashMap<u64, Kept>>;

fn shards() -> &'static [Shard; SHARDS] {
    static SHARDS_: OnceLock<[Shard; SHARDS]> = OnceLock::new();
    SHARDS_.get_or_init(|| std::array::from_fn(|_| Mutex::new(HashMap::new())))
}

fn hasher() -> &'static std::collections::hash_map::RandomState {
    static STATE: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    STATE.get_or_init(Default::default)
}

fn key_hash(version: u64, peer: &str, principal: &str, action: Action, resource: &Resource) -> u64 {
    let mut h = hasher().build_hasher();
    version.hash(&mut h);
    peer.hash(&mut h);
    principal.hash(&mut h);
    action.hash(&mut h);
    match resource {
        Resource::Key(k) => (0u8, k.as_str()).hash(&mut h),
        Resource::Path(p) => (1u8, p.as_str()).hash(&mut h),
        Resource::Function(f) => (2u8, f.as_str()).hash(&mut h),
        Resource::Contact(c) => (3u8, c.as_str()).hash(&mut h),
        Resource::Peer => 4u8.hash(&mut h),
    }
    h.finish()
}

fn resource_len(resource: &Resource) -> usize {
    match resource {
        Resource::Key(s) | Resource::Path(s) | Resource::Function(s) | Resource::Contact(s) => {
            s.len()
        }
        Resource::Peer => 0,
    }
}

/// The answer of policy `version` to the request, from the cache or from
/// `evaluate` (then kept).
pub fn answer(
    version: u64,
    peer: &str,
    principal: &str,
    action: Action,
    resource: &Resource,
    evaluate: impl FnOnce() -> PolicyDecision,
) -> Arc<PolicyDecision> {
    if peer.len() + principal.len() + resource_len(resource) > MAX_KEY {
        return Arc::new(evaluate());
    }
    let hash = key_hash(version, peer, principal, action, resource);
    let shard = &shards()[(hash as usize) % SHARDS];
    if let Some(kept) = shard
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&hash)
        .filter(|kept| kept.is(version, peer, principal, action, resource))
    {
        return kept.answer.clone();
    }
    // Evaluated outside the lock: another thread may evaluate the same
    // request meanwhile, and both answers are the same.
    let answer = Arc::new(evaluate());
    if answer.errors.is_empty() {
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= PER_SHARD {
            map.clear();
        }
        map.insert(
            hash,
            Kept {
                version,
                peer: peer.into(),
                principal: principal.into(),
                action,
                resource: resource.clone(),
                answer: answer.clone(),
            },
        );
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(allowed: bool) -> PolicyDecision {
        PolicyDecision {
            allowed,
            policies: vec!["p".into()],
            errors: Vec::new(),
        }
    }

    #[test]
    fn a_repeated_request_is_answered_from_the_cache_and_another_version_is_not() {
        let (v1, v2) = (next_version(), next_version());
        assert_ne!(v1, v2);
        let key = Resource::Key("public/motd".into());
        let mut evaluated = 0;
        for _ in 0..3 {
            let answer = answer(v1, "bob", "alice", Action::KvGet, &key, || {
                evaluated += 1;
                decision(true)
            });
            assert!(answer.allowed);
        }
        assert_eq!(evaluated, 1, "evaluated once, then kept");
        // Another version, action, principal, resource: each evaluated.
        let other = answer(v2, "bob", "alice", Action::KvGet, &key, || decision(false));
        assert!(!other.allowed, "a new version is evaluated afresh");
        let mut again = 0;
        for (principal, action, resource) in [
            ("alice", Action::KvSet, key.clone()),
            ("carol", Action::KvGet, key.clone()),
            ("alice", Action::KvGet, Resource::Path("public/motd".into())),
            ("alice", Action::KvGet, Resource::Key("public/motd2".into())),
        ] {
            answer(v1, "bob", principal, action, &resource, || {
                again += 1;
                decision(false)
            });
        }
        assert_eq!(again, 4);
    }

    #[test]
    fn answers_with_errors_and_long_requests_are_not_kept() {
        let version = next_version();
        let mut evaluated = 0;
        for _ in 0..2 {
            answer(
                version,
                "bob",
                "alice",
                Action::KvGet,
                &Resource::Peer,
                || {
                    evaluated += 1;
                    PolicyDecision {
                        allowed: false,
                        policies: Vec::new(),
                        errors: vec!["an error".into()],
                    }
                },
            );
        }
        let long = Resource::Path("x".repeat(MAX_KEY));
        for _ in 0..2 {
            answer(version, "bob", "alice", Action::FsRead, &long, || {
                evaluated += 1;
                decision(true)
            });
        }
        assert_eq!(evaluated, 4);
    }

    #[test]
    fn a_full_shard_is_emptied_and_stays_bounded() {
        let version = next_version();
        for i in 0..(SHARDS * PER_SHARD * 2) {
            answer(
                version,
                "bob",
                "alice",
                Action::KvGet,
                &Resource::Key(format!("k{i}")),
                || decision(true),
            );
        }
        for shard in shards() {
            assert!(shard.lock().unwrap_or_else(|p| p.into_inner()).len() <= PER_SHARD);
        }
    }
}
