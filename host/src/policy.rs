//! Cedar policy: the peer's rules, checked on every capability call.
//!
//! A request is `(principal, action, resource)`: the principal is the peer
//! whose authority the invocation carries (`Peer::"alice"`, or
//! `Peer::"anonymous"`), the action is the capability (`kv.set`), the
//! resource a `Key`, `Path`, `Function` or the `Peer` itself, always `in` the
//! peer whose namespace it belongs to. Policies are validated against
//! `policies/peerhost.cedarschema` when loaded; a file that does not validate
//! is refused with its file and line.

use crate::config::DeploymentError;
use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// The Cedar schema source, kept in step with `wit/peer.wit`.
pub const SCHEMA: &str = include_str!("../../policies/peerhost.cedarschema");

/// The default policy `peerhost init` writes: owner only.
pub const DEFAULT_POLICY: &str = include_str!("../../policies/default.cedar");

/// Largest `policy.cedar`, in bytes.
pub const MAX_POLICY: u64 = 1 << 20;

/// Stack on which one decision is evaluated.
const DECISION_STACK: usize = 512 * 1024;

/// Deepest bracket nesting (`(`, `[`, `{`) a policy may have.
pub const MAX_NESTING: usize = 32;

/// Most operators (`&&`, `==`, `.`, `if`, `in`, ...) one policy statement
/// may hold. With [`MAX_NESTING`] this bounds the depth of the expression
/// tree Cedar builds, validates, evaluates and drops recursively.
pub const MAX_OPERATORS: usize = 256;

/// Stack of the thread a policy is parsed and validated on: reserved, and
/// touched only as deep as the bounds above let Cedar recurse.
const PARSE_STACK: usize = 64 * 1024 * 1024;

pub use crate::identity::ANONYMOUS;

pub mod decisions;

/// The parsed schema, built once per process.
pub fn schema() -> &'static Schema {
    static SCHEMA_CELL: OnceLock<Schema> = OnceLock::new();
    SCHEMA_CELL.get_or_init(|| match Schema::from_cedarschema_str(SCHEMA) {
        Ok((schema, _warnings)) => schema,
        // The schema is compiled into the binary and tested; a broken one is a build defect.
        Err(e) => panic!("policies/peerhost.cedarschema does not parse: {e}"),
    })
}

/// One capability of `wit/peer.wit`, as a Cedar action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `kv.get`
    KvGet,
    /// `kv.set`
    KvSet,
    /// `kv.delete`
    KvDelete,
    /// `kv.list` (also `list-page`)
    KvList,
    /// `kv.exists`
    KvExists,
    /// `kv.set-if`: compare-and-swap
    KvSetIf,
    /// `kv.get-many`, decided per key
    KvGetMany,
    /// `kv.set-many`, decided per key
    KvSetMany,
    /// `kv.delete-many`, decided per key
    KvDeleteMany,
    /// `kv.increment`
    KvIncrement,
    /// `fs.read`: WASI reads and stats.
    FsRead,
    /// `fs.write`: WASI writes, create, truncate, unlink, rename, mkdir.
    FsWrite,
    /// `fs.list`: WASI directory reads.
    FsList,
    /// `log.write`
    LogWrite,
    /// `context.get`
    ContextGet,
    /// `call`: calling an exported logic function.
    Call,
    /// `script.accept`: running a delegated script at all.
    ScriptAccept,
    /// `peers.send`: sending a script to a contact.
    PeersSend,
    /// `peers.call`: calling a contact's function.
    PeersCall,
    /// `logic.read`: reading the peer's logic (`logic show`, `GET …/logic`).
    LogicRead,
}

impl Action {
    /// Every action, in schema order.
    pub const ALL: [Action; 20] = [
        Action::KvGet,
        Action::KvSet,
        Action::KvDelete,
        Action::KvList,
        Action::KvExists,
        Action::KvSetIf,
        Action::KvGetMany,
        Action::KvSetMany,
        Action::KvDeleteMany,
        Action::KvIncrement,
        Action::FsRead,
        Action::FsWrite,
        Action::FsList,
        Action::LogWrite,
        Action::ContextGet,
        Action::Call,
        Action::ScriptAccept,
        Action::PeersSend,
        Action::PeersCall,
        Action::LogicRead,
    ];

    /// The Cedar action id, the capability's name.
    pub fn name(self) -> &'static str {
        match self {
            Action::KvGet => "kv.get",
            Action::KvSet => "kv.set",
            Action::KvDelete => "kv.delete",
            Action::KvList => "kv.list",
            Action::KvExists => "kv.exists",
            Action::KvSetIf => "kv.set-if",
            Action::KvGetMany => "kv.get-many",
            Action::KvSetMany => "kv.set-many",
            Action::KvDeleteMany => "kv.delete-many",
            Action::KvIncrement => "kv.increment",
            Action::FsRead => "fs.read",
            Action::FsWrite => "fs.write",
            Action::FsList => "fs.list",
            Action::LogWrite => "log.write",
            Action::ContextGet => "context.get",
            Action::Call => "call",
            Action::ScriptAccept => "script.accept",
            Action::PeersSend => "peers.send",
            Action::PeersCall => "peers.call",
            Action::LogicRead => "logic.read",
        }
    }
}

/// What an action is applied to, inside the namespace of one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    /// A kv key (or prefix, for `kv.list`).
    Key(String),
    /// A namespace path as the guest sees it.
    Path(String),
    /// An exported logic function.
    Function(String),
    /// A petname of the peer's contacts, as the target of a delegation.
    Contact(String),
    /// The peer itself.
    Peer,
}

impl Resource {
    fn type_and_attr(&self) -> Option<(&'static str, &'static str, &str)> {
        match self {
            Resource::Key(k) => Some(("Key", "name", k)),
            Resource::Path(p) => Some(("Path", "path", p)),
            Resource::Function(f) => Some(("Function", "name", f)),
            Resource::Contact(c) => Some(("Contact", "name", c)),
            Resource::Peer => None,
        }
    }

    /// The resource as Cedar writes it, e.g. `Key::"public/motd"`.
    pub fn display(&self, peer: &str) -> String {
        match self.type_and_attr() {
            Some((ty, _, id)) => format!("{ty}::{id:?}"),
            None => format!("Peer::{peer:?}"),
        }
    }
}

/// The outcome of one request, with the policies that decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyDecision {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// The `@id` (or position id) of every policy that determined the decision.
    pub policies: Vec<String>,
    /// Evaluation errors, which Cedar treats as "policy does not apply".
    pub errors: Vec<String>,
}

/// A peer's parsed and validated policy.
#[derive(Debug)]
pub struct PeerPolicy {
    set: Arc<PolicySet>,
    /// The set's number in the [`decisions`] cache.
    version: u64,
}

/// A parsed set, held weakly, and its number in the [`decisions`] cache.
type Parsed = (Weak<PolicySet>, u64);

/// Policies already parsed and validated, by the SHA-256 of their text:
/// thousands of peers with the default policy parse it once. Held weakly, so
/// a policy no peer uses any more is freed.
fn parsed() -> &'static Mutex<HashMap<[u8; 32], Parsed>> {
    static PARSED: OnceLock<Mutex<HashMap<[u8; 32], Parsed>>> = OnceLock::new();
    PARSED.get_or_init(Default::default)
}

/// The entity types this module names, parsed once: Cedar parses a type
/// name with its full policy parser, which would otherwise run three times
/// per decision.
const ENTITY_TYPES: [&str; 6] = ["Peer", "Action", "Key", "Path", "Function", "Contact"];

fn uid(ty: &str, id: &str) -> EntityUid {
    static TYPES: OnceLock<Vec<EntityTypeName>> = OnceLock::new();
    let types = TYPES.get_or_init(|| {
        ENTITY_TYPES
            .iter()
            // The type names are this module's constants, valid by construction.
            .map(|ty| {
                EntityTypeName::from_str(ty).unwrap_or_else(|_| panic!("entity type {ty} is valid"))
            })
            .collect()
    });
    let name = match ENTITY_TYPES.iter().position(|t| *t == ty) {
        Some(index) => types[index].clone(),
        None => {
            EntityTypeName::from_str(ty).unwrap_or_else(|_| panic!("entity type {ty} is valid"))
        }
    };
    EntityUid::from_type_name_and_id(name, EntityId::new(id))
}

/// Byte offset of the first labelled span of a Cedar diagnostic.
fn first_offset(diagnostic: &dyn Diagnostic) -> Option<usize> {
    diagnostic.labels()?.next().map(|label| label.offset())
}

impl PeerPolicy {
    /// Loads and validates the policy file at `path`.
    pub fn load(path: &Path) -> Result<PeerPolicy, DeploymentError> {
        // Non-blocking and regular files only: a FIFO planted as
        // policy.cedar cannot stall the worker.
        let (_, text) = crate::files::read_regular(path, MAX_POLICY)
            .map_err(|e| DeploymentError::file(path, format!("cannot read policy: {e}")))?;
        PeerPolicy::parse(path, &text)
    }

    /// Parses and validates `text`; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<PeerPolicy, DeploymentError> {
        let hash = crate::envelope::sha256(text);
        let cached = parsed()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
            .and_then(|(set, version)| Some((set.upgrade()?, *version)));
        if let Some((set, version)) = cached {
            return Ok(PeerPolicy { set, version });
        }
        if text.len() as u64 > MAX_POLICY {
            return Err(DeploymentError::file(
                path,
                format!(
                    "policy is {} bytes, more than the {MAX_POLICY} a policy may have",
                    text.len()
                ),
            ));
        }
        if let Err((offset, message)) = check_shape(text) {
            return Err(DeploymentError::at_offset(path, text, offset, message));
        }
        // Cedar parses, validates and drops expressions recursively: on a
        // thread of its own with a stack sized for the bounds above, never
        // on a runtime thread's 2 MiB.
        let set = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("policy-parse".into())
                .stack_size(PARSE_STACK)
                .spawn_scoped(scope, || parse_and_validate(path, text))
                .map_err(|e| {
                    DeploymentError::file(path, format!("cannot start the policy parser: {e}"))
                })?
                .join()
                .unwrap_or_else(|_| {
                    Err(DeploymentError::file(
                        path,
                        "the policy parser failed on this policy",
                    ))
                })
        })?;
        let set = Arc::new(set);
        let version = decisions::next_version();
        let mut cache = parsed().lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, (set, _)| set.strong_count() > 0);
        cache.insert(hash, (Arc::downgrade(&set), version));
        Ok(PeerPolicy { set, version })
    }

    /// The parsed set, shared by every peer with the same policy text.
    pub fn set(&self) -> Arc<PolicySet> {
        self.set.clone()
    }

    /// Decides whether `principal` may do `action` on `resource` in `peer`'s
    /// namespace, from inside a host call (on a wasmtime fiber).
    ///
    /// Runs on a stack of its own: host calls run on wasmtime's fiber
    /// stacks, where Cedar's recursion guard cannot measure the remaining
    /// stack (and refuses to evaluate, or worse, believes it has plenty); on
    /// a `stacker` stack it can, so a deeply nested policy is refused rather
    /// than overflowing. The fresh stack costs about 24 µs (mmap, page
    /// faults, munmap); [`PeerPolicy::decide_on_thread_stack`] avoids it
    /// where it can. A request this version answered before is answered
    /// from the [`decisions`] cache, on no stack of its own.
    pub fn decide(
        &self,
        peer: &str,
        principal: &str,
        action: Action,
        resource: &Resource,
    ) -> PolicyDecision {
        self.cached(peer, principal, action, resource, || {
            self.decide_uncached(peer, principal, action, resource)
        })
    }

    /// The answer this version gave the request before, or `evaluate`'s.
    fn cached(
        &self,
        peer: &str,
        principal: &str,
        action: Action,
        resource: &Resource,
        evaluate: impl FnOnce() -> PolicyDecision,
    ) -> PolicyDecision {
        PolicyDecision::clone(&decisions::answer(
            self.version,
            peer,
            principal,
            action,
            resource,
            evaluate,
        ))
    }

    /// [`PeerPolicy::decide`] evaluated by Cedar whatever was answered
    /// before (what a cache miss costs).
    pub fn decide_uncached(
        &self,
        peer: &str,
        principal: &str,
        action: Action,
        resource: &Resource,
    ) -> PolicyDecision {
        stacker::grow(DECISION_STACK, || {
            self.decide_here(peer, principal, action, resource)
        })
    }

    /// [`PeerPolicy::decide`] for a caller known to run on a thread's own
    /// stack (never inside a guest's host call), where Cedar's guard
    /// measures correctly: the decision runs in place when enough stack is
    /// left, on a fresh stack otherwise.
    pub fn decide_on_thread_stack(
        &self,
        peer: &str,
        principal: &str,
        action: Action,
        resource: &Resource,
    ) -> PolicyDecision {
        self.cached(peer, principal, action, resource, || {
            stacker::maybe_grow(DECISION_STACK / 2, DECISION_STACK, || {
                self.decide_here(peer, principal, action, resource)
            })
        })
    }

    fn decide_here(
        &self,
        peer: &str,
        principal: &str,
        action: Action,
        resource: &Resource,
    ) -> PolicyDecision {
        let deny = |error: String| PolicyDecision {
            allowed: false,
            policies: Vec::new(),
            errors: vec![error],
        };
        let owner = uid("Peer", peer);
        let principal_uid = uid("Peer", principal);
        let mut entities = vec![Entity::new_no_attrs(owner.clone(), HashSet::new())];
        if principal != peer {
            entities.push(Entity::new_no_attrs(principal_uid.clone(), HashSet::new()));
        }
        let resource_uid = match resource.type_and_attr() {
            Some((ty, attr, id)) => {
                let uid = uid(ty, id);
                let attrs = HashMap::from([(
                    attr.to_owned(),
                    RestrictedExpression::new_string(id.to_owned()),
                )]);
                match Entity::new(uid.clone(), attrs, HashSet::from([owner.clone()])) {
                    Ok(entity) => entities.push(entity),
                    Err(e) => return deny(e.to_string()),
                }
                uid
            }
            None => owner,
        };
        let entities = match Entities::from_entities(entities, Some(schema())) {
            Ok(entities) => entities,
            Err(e) => return deny(e.to_string()),
        };
        let request = match Request::new(
            principal_uid,
            uid("Action", action.name()),
            resource_uid,
            Context::empty(),
            Some(schema()),
        ) {
            Ok(request) => request,
            Err(e) => return deny(e.to_string()),
        };
        let response = Authorizer::new().is_authorized(&request, &self.set, &entities);
        let policies = response
            .diagnostics()
            .reason()
            .map(|id| {
                self.set
                    .annotation(id, "id")
                    .map(str::to_owned)
                    .unwrap_or_else(|| id.to_string())
            })
            .collect();
        PolicyDecision {
            allowed: response.decision() == Decision::Allow,
            policies,
            errors: response
                .diagnostics()
                .errors()
                .map(|e| e.to_string())
                .collect(),
        }
    }
}

/// Parses and validates `text` (already checked by [`check_shape`]).
fn parse_and_validate(path: &Path, text: &str) -> Result<PolicySet, DeploymentError> {
    let set = PolicySet::from_str(text).map_err(|errors| {
        let message = format!("policy syntax error: {}", errors.to_string().trim());
        match first_offset(&errors) {
            Some(offset) => DeploymentError::at_offset(path, text, offset, message),
            None => DeploymentError::file(path, message),
        }
    })?;
    let validator = Validator::new(schema().clone());
    let result = validator.validate(&set, ValidationMode::Strict);
    if let Some(error) = result.validation_errors().next() {
        let message = format!(
            "policy does not validate against policies/peerhost.cedarschema: {error}{}",
            error.help().map(|h| format!(" ({h})")).unwrap_or_default()
        );
        return Err(match first_offset(error) {
            Some(offset) => DeploymentError::at_offset(path, text, offset, message),
            None => DeploymentError::file(path, message),
        });
    }
    Ok(set)
}

/// Refuses a policy nested deeper than [`MAX_NESTING`] brackets or with more
/// than [`MAX_OPERATORS`] operators in one statement, before Cedar sees it:
/// the offset and message of the first excess. Strings and `//` comments are
/// skipped; the scan is linear and does not recurse.
fn check_shape(text: &str) -> Result<(), (usize, String)> {
    const OPERATOR: &[u8] = b"&|=!<>+-*.";
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut operators = 0usize;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'"' => {
                at += 1;
                while at < bytes.len() && bytes[at] != b'"' {
                    at += if bytes[at] == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if bytes.get(at + 1) == Some(&b'/') => {
                while at < bytes.len() && bytes[at] != b'\n' {
                    at += 1;
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err((
                        at,
                        format!("policy is nested more than {MAX_NESTING} brackets deep"),
                    ));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b';' if depth == 0 => operators = 0,
            c if OPERATOR.contains(&c) => {
                while bytes.get(at + 1).is_some_and(|c| OPERATOR.contains(c)) {
                    at += 1;
                }
                operators += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = at;
                while bytes
                    .get(at + 1)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    at += 1;
                }
                if matches!(&bytes[start..=at], b"if" | b"in" | b"has" | b"like" | b"is") {
                    operators += 1;
                }
            }
            _ => {}
        }
        if operators > MAX_OPERATORS {
            return Err((
                at.min(bytes.len().saturating_sub(1)),
                format!("a policy statement has more than {MAX_OPERATORS} operators"),
            ));
        }
        at += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> PeerPolicy {
        PeerPolicy::parse(Path::new("test.cedar"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_action_is_in_the_schema() {
        for action in Action::ALL {
            assert!(
                SCHEMA.contains(&format!("\"{}\"", action.name())),
                "{}",
                action.name()
            );
        }
    }

    #[test]
    fn default_policy_is_owner_only() {
        let default = policy(DEFAULT_POLICY);
        for (action, resource) in [
            (Action::KvSet, Resource::Key("k".into())),
            (Action::FsWrite, Resource::Path("/a".into())),
            (Action::Call, Resource::Function("f".into())),
            (Action::LogWrite, Resource::Peer),
        ] {
            let owner = default.decide("alice", "alice", action, &resource);
            assert!(owner.allowed, "{action:?}");
            assert_eq!(owner.policies, vec!["owner".to_owned()]);
            for stranger in ["bob", ANONYMOUS] {
                assert!(
                    !default.decide("alice", stranger, action, &resource).allowed,
                    "{stranger} {action:?}"
                );
            }
        }
    }

    #[test]
    fn bob_demo_policy_grants_alice_exactly_two_things() {
        let bob = policy(include_str!("../../policies/bob.cedar"));
        let decide =
            |action, resource: Resource| bob.decide("bob", "alice", action, &resource).allowed;
        assert!(decide(
            Action::Call,
            Resource::Function("get_public".into())
        ));
        assert!(decide(Action::KvGet, Resource::Key("public/motd".into())));
        assert!(!decide(
            Action::KvGet,
            Resource::Key("private/diary".into())
        ));
        assert!(!decide(Action::KvSet, Resource::Key("public/motd".into())));
        assert!(!decide(Action::Call, Resource::Function("remember".into())));
    }

    #[test]
    fn forbid_overrides_permit() {
        let p = policy(
            "permit (principal, action, resource) when { resource in principal };\n\
             forbid (principal, action == Action::\"kv.delete\", resource);",
        );
        assert!(
            p.decide("alice", "alice", Action::KvSet, &Resource::Key("k".into()))
                .allowed
        );
        assert!(
            !p.decide(
                "alice",
                "alice",
                Action::KvDelete,
                &Resource::Key("k".into())
            )
            .allowed
        );
    }

    #[test]
    fn errors_name_the_line() {
        let Err(e) = PeerPolicy::parse(
            Path::new("p.cedar"),
            "\n\npermit (principal, action, resource)\n",
        ) else {
            panic!("parsed");
        };
        assert_eq!(e.line, Some(3), "{e}");
        let Err(e) = PeerPolicy::parse(
            Path::new("p.cedar"),
            "permit (principal, action == Action::\"kv.nope\", resource);",
        ) else {
            panic!("validated");
        };
        assert!(e.to_string().contains("does not validate"), "{e}");
    }

    /// `depth` brackets around `true`, in a permit.
    fn nested(depth: usize) -> String {
        format!(
            "permit(principal, action, resource) when {{ {}true{} }};\n",
            "(".repeat(depth),
            ")".repeat(depth)
        )
    }

    #[test]
    fn class_1_a_policy_nested_hundreds_deep_is_refused_not_fatal() {
        // On a thread with a runtime worker's stack, as a push would.
        let refused = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(|| {
                [
                    nested(400),
                    nested(100_000),
                    format!("{}{}", "[".repeat(200_000), "]"),
                ]
                .iter()
                .map(|text| PeerPolicy::parse(Path::new("deep.cedar"), text).map(|_| ()))
                .collect::<Vec<_>>()
            })
            .unwrap_or_else(|e| panic!("{e}"))
            .join()
            .unwrap_or_else(|_| panic!("parsing a deep policy aborted the thread"));
        for result in refused {
            let Err(e) = result else {
                panic!("a deep policy was accepted")
            };
            assert!(e.to_string().contains("nested more than 32"), "{e}");
        }
    }

    #[test]
    fn class_1_a_long_operator_chain_is_refused() {
        let chain = vec!["principal == Peer::\"a\""; 2_000].join(" || ");
        let text = format!("permit(principal, action, resource) when {{ {chain} }};\n");
        let Err(e) = PeerPolicy::parse(Path::new("long.cedar"), &text) else {
            panic!("a 4,000-operator statement was accepted")
        };
        assert!(e.to_string().contains("more than 256 operators"), "{e}");
        // Operators inside strings and comments are not counted, and the
        // count starts again at each statement.
        let quoted = format!(
            "// {}\n{}",
            "&&".repeat(5_000),
            "permit(principal, action, resource) when { context has \"&&&&\" };\n".repeat(600)
        );
        let _ = PeerPolicy::parse(Path::new("quoted.cedar"), &quoted)
            .map_err(|e| assert!(!e.to_string().contains("operators"), "{e}"));
    }

    #[test]
    fn class_1_the_deepest_accepted_policy_decides_and_drops_on_a_small_stack() {
        let clauses = vec!["principal == Peer::\"a\""; MAX_OPERATORS / 2 - 20].join(" || ");
        let depth = MAX_NESTING - 2;
        let text = format!(
            "permit(principal, action, resource) when {{ {}{clauses} || principal == Peer::\"alice\"{} }};\n",
            "(".repeat(depth),
            ")".repeat(depth)
        );
        let accepted = policy(&text);
        let decision = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                let decision = accepted.decide_on_thread_stack(
                    "bob",
                    "alice",
                    Action::KvGet,
                    &Resource::Key("x".into()),
                );
                drop(accepted);
                decision
            })
            .unwrap_or_else(|e| panic!("{e}"))
            .join()
            .unwrap_or_else(|_| panic!("deciding or dropping the policy aborted the thread"));
        assert!(decision.allowed, "{decision:?}");
    }
}
