//! `peerhost audit grants`: who may do what to a peer's data, derived from
//! its Cedar policy with Cedar's own type-aware partial evaluation (TPE),
//! never by re-reading the policy text.
//!
//! For each principal (the peer itself, each contact by petname,
//! `anonymous`, and *anyone else*: a peer the policy does not name, such as
//! a stranger known only by its id) and each action of
//! the schema, the policy is partially evaluated against:
//! - a placeholder resource of the action's type, inside the peer's
//!   namespace, whose attributes are unknown: `Allow` means *every* resource
//!   of that type, a residual names the condition on the resource;
//! - every entity literal of that type the policies name (`Key::"notes"`):
//!   exact grants, and exceptions to an "every".
//!
//! The report flags over-broad grants (anyone or anonymous may write, run
//! scripts or delegate) and policies that apply to none of the principals
//! listed, and prints as a table, JSON, or one WIT world per principal
//! importing exactly the granted functions.

use crate::policy::{Action, PeerPolicy, schema};
use cedar_policy::{
    Context, Decision, EntityId, EntityTypeName, EntityUid, PartialEntities, PartialEntity,
    PartialEntityUid, PartialRequest, PolicyId, PolicySet, RestrictedExpression,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::str::FromStr;

/// Who a row of the report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Who {
    /// The peer itself: its owner.
    Owner,
    /// A petname of the peer's contacts.
    Contact,
    /// An unsigned request.
    Anonymous,
    /// Any other peer: one the policy does not name (a stranger known by
    /// its id), signed.
    Anyone,
}

/// Resources of one action granted to one principal, by one or more policies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Scope {
    /// `every Key`, `Key::"notes"`, or `Key` with a condition.
    pub resource: String,
    /// The residual condition on the resource, in Cedar.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Resources named by a policy that are refused although "every" is granted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    /// Conditions of forbid policies that may still refuse.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unless: Vec<String>,
    /// The `@id`s of the permitting policies.
    pub policies: Vec<String>,
}

/// What one principal may do.
#[derive(Clone, Debug, Serialize)]
pub struct PrincipalGrants {
    /// The principal's name as policies write it (`anyone` for any other peer).
    pub principal: String,
    /// Which kind of principal.
    pub who: Who,
    /// Granted actions and their resources, in schema order.
    pub grants: Vec<(String, Vec<Scope>)>,
}

/// The whole report for one peer.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The peer.
    pub peer: String,
    /// Per principal, owner first, then contacts, anonymous and anyone.
    pub principals: Vec<PrincipalGrants>,
    /// Over-broad grants, policies that never apply, validator warnings.
    pub warnings: Vec<String>,
}

/// Why the analysis could not run.
#[derive(Debug, thiserror::Error)]
#[error("cannot analyse the policy: {0}")]
pub struct GrantsError(String);

fn err(e: impl std::fmt::Display) -> GrantsError {
    GrantsError(e.to_string())
}

/// The entity type of an action's resource.
fn resource_type(action: Action) -> &'static str {
    match action {
        Action::KvGet
        | Action::KvSet
        | Action::KvDelete
        | Action::KvList
        | Action::KvExists
        | Action::KvSetIf
        | Action::KvGetMany
        | Action::KvSetMany
        | Action::KvDeleteMany
        | Action::KvIncrement => "Key",
        Action::FsRead | Action::FsWrite | Action::FsList => "Path",
        Action::Call => "Function",
        Action::PeersSend | Action::PeersCall => "Contact",
        Action::LogWrite | Action::ContextGet | Action::ScriptAccept | Action::LogicRead => "Peer",
    }
}

/// The attribute naming a resource of `ty`.
fn name_attribute(ty: &str) -> &'static str {
    if ty == "Path" { "path" } else { "name" }
}

/// Actions that change data, run code, or speak for the peer: flagged when
/// granted to anyone or to anonymous.
fn sensitive(action: Action) -> bool {
    matches!(
        action,
        Action::KvSet
            | Action::KvDelete
            | Action::FsWrite
            | Action::ScriptAccept
            | Action::PeersSend
            | Action::PeersCall
    )
}

fn uid(ty: &str, id: &str) -> Result<EntityUid, GrantsError> {
    Ok(EntityUid::from_type_name_and_id(
        EntityTypeName::from_str(ty).map_err(err)?,
        EntityId::new(id),
    ))
}

/// The id of the placeholder resource: any resource not named by a policy.
const PLACEHOLDER: &str = "*";

/// The id of "anyone else": a peer no policy names.
const STRANGER: &str = "did:key:(any other peer)";

/// One partial evaluation's result.
struct Outcome {
    decision: Option<Decision>,
    /// Permits that hold outright.
    permits: Vec<PolicyId>,
    /// Residual permits and forbids: id and condition.
    residual_permits: Vec<(PolicyId, String)>,
    residual_forbids: Vec<(PolicyId, String)>,
    /// Every policy that holds or may hold.
    applies: Vec<PolicyId>,
}

/// The condition of a residual policy, as Cedar prints it.
fn condition(policy: &cedar_policy::Policy) -> String {
    let text = policy.to_string();
    let body = match text.split_once("when {") {
        Some((_, rest)) => rest.rsplit_once('}').map(|(c, _)| c).unwrap_or(rest),
        None => text.as_str(),
    };
    body.split_whitespace().collect::<Vec<_>>().join(" ")
}

struct Analysis<'a> {
    set: &'a PolicySet,
    peer: String,
}

impl Analysis<'_> {
    /// Partially evaluates `action` by `principal` on `resource` (type, id,
    /// whether its attributes are known).
    fn evaluate(
        &self,
        principal: &str,
        action: Action,
        resource: (&str, &str, bool),
    ) -> Result<Outcome, GrantsError> {
        let schema = schema();
        let owner = uid("Peer", &self.peer)?;
        let (ty, id, known) = resource;
        let resource_uid = uid(ty, id)?;
        let mut entities = Vec::new();
        let concrete = |uid: EntityUid, attrs: BTreeMap<_, _>, parents: HashSet<EntityUid>| {
            PartialEntity::new(
                uid,
                Some(attrs),
                Some(parents),
                Some(BTreeMap::new()),
                schema,
            )
            .map_err(err)
        };
        entities.push(concrete(owner.clone(), BTreeMap::new(), HashSet::new())?);
        if principal != self.peer {
            entities.push(concrete(
                uid("Peer", principal)?,
                BTreeMap::new(),
                HashSet::new(),
            )?);
        }
        if ty != "Peer" {
            let parents = HashSet::from([owner.clone()]);
            let entity = if known {
                let attrs = BTreeMap::from([(
                    name_attribute(ty).into(),
                    RestrictedExpression::new_string(id.to_owned()),
                )]);
                concrete(resource_uid.clone(), attrs, parents)?
            } else {
                PartialEntity::new(
                    resource_uid.clone(),
                    None,
                    Some(parents),
                    Some(BTreeMap::new()),
                    schema,
                )
                .map_err(err)?
            };
            entities.push(entity);
        }
        let entities = PartialEntities::from_partial_entities(entities, schema).map_err(err)?;
        let request = PartialRequest::new(
            PartialEntityUid::from_concrete(uid("Peer", principal)?),
            uid("Action", action.name())?,
            PartialEntityUid::from_concrete(resource_uid),
            Some(Context::empty()),
            schema,
        )
        .map_err(err)?;
        let response = self.set.tpe(&request, &entities, schema).map_err(err)?;
        // The placeholder stands for any resource: the residual names it `resource`.
        let placeholder = format!("{ty}::{PLACEHOLDER:?}");
        let residual = |ids: Vec<PolicyId>| -> Vec<(PolicyId, String)> {
            ids.into_iter()
                .map(|id| {
                    let when = response
                        .get_policy(&id)
                        .map(|p| condition(&p))
                        .unwrap_or_default();
                    let when = if known {
                        when
                    } else {
                        when.replace(&placeholder, "resource")
                    };
                    (id, when)
                })
                .collect()
        };
        let permits: Vec<PolicyId> = response.true_permits().cloned().collect();
        let residual_permits = residual(response.residual_permits().cloned().collect());
        let residual_forbids = residual(response.residual_forbids().cloned().collect());
        let mut applies = permits.clone();
        applies.extend(response.true_forbids().cloned());
        applies.extend(residual_permits.iter().map(|(id, _)| id.clone()));
        applies.extend(residual_forbids.iter().map(|(id, _)| id.clone()));
        Ok(Outcome {
            decision: response.decision(),
            permits,
            residual_permits,
            residual_forbids,
            applies,
        })
    }

    fn name(&self, id: &PolicyId) -> String {
        self.set
            .annotation(id, "id")
            .map(str::to_owned)
            .unwrap_or_else(|| id.to_string())
    }

    fn names(&self, ids: &[PolicyId]) -> Vec<String> {
        let mut names: Vec<String> = ids.iter().map(|id| self.name(id)).collect();
        names.sort();
        names.dedup();
        names
    }

    /// The entity literals of type `ty` the policies name.
    fn literals(&self, ty: &str) -> BTreeSet<String> {
        self.set
            .policies()
            .flat_map(|p| p.entity_literals())
            .filter(|uid| uid.type_name().to_string() == ty)
            .map(|uid| uid.id().unescaped().to_owned())
            .filter(|id| id != PLACEHOLDER)
            .collect()
    }

    /// The rows one evaluation grants: `every` when permits hold outright
    /// (with `except`, and the conditions of forbids that may still
    /// refuse), and `conditional` with each residual permit's condition.
    fn rows(
        &self,
        outcome: &Outcome,
        every: String,
        conditional: &str,
        except: Vec<String>,
    ) -> Vec<Scope> {
        if outcome.decision == Some(Decision::Deny) {
            return Vec::new();
        }
        let unless: Vec<String> = outcome
            .residual_forbids
            .iter()
            .map(|(id, when)| format!("{when} ({})", self.name(id)))
            .collect();
        let mut rows = Vec::new();
        if !outcome.permits.is_empty() {
            rows.push(Scope {
                resource: every,
                when: None,
                except,
                unless: unless.clone(),
                policies: self.names(&outcome.permits),
            });
        }
        if outcome.decision.is_none() {
            for (id, when) in &outcome.residual_permits {
                rows.push(Scope {
                    resource: conditional.to_owned(),
                    when: Some(when.clone()),
                    except: Vec::new(),
                    unless: unless.clone(),
                    policies: vec![self.name(id)],
                });
            }
        }
        rows
    }

    /// What `principal` may do with `action`, and the policies that applied.
    fn scopes(
        &self,
        principal: &str,
        action: Action,
        applied: &mut HashSet<PolicyId>,
    ) -> Result<Vec<Scope>, GrantsError> {
        let ty = resource_type(action);
        if ty == "Peer" {
            let outcome = self.evaluate(principal, action, ("Peer", &self.peer, true))?;
            applied.extend(outcome.applies.iter().cloned());
            let resource = format!("Peer::{:?}", self.peer);
            return Ok(self.rows(&outcome, resource.clone(), &resource, Vec::new()));
        }
        let any = self.evaluate(principal, action, (ty, PLACEHOLDER, false))?;
        applied.extend(any.applies.iter().cloned());
        // The permits behind the rows printed for "any resource": a named
        // resource they allow needs no row of its own.
        let emitted: HashSet<&PolicyId> = match any.decision {
            None => any
                .permits
                .iter()
                .chain(any.residual_permits.iter().map(|(id, _)| id))
                .collect(),
            _ => HashSet::new(),
        };
        let mut exact = Vec::new();
        let mut except = Vec::new();
        for literal in &self.literals(ty) {
            let outcome = self.evaluate(principal, action, (ty, literal, true))?;
            applied.extend(outcome.applies.iter().cloned());
            let shown = format!("{ty}::{literal:?}");
            match outcome.decision {
                Some(Decision::Allow) => {
                    let covered = any.decision == Some(Decision::Allow)
                        || outcome.permits.iter().all(|id| emitted.contains(id));
                    if !covered {
                        exact.push(Scope {
                            resource: shown,
                            when: None,
                            except: Vec::new(),
                            unless: Vec::new(),
                            policies: self.names(&outcome.permits),
                        });
                    }
                }
                Some(Decision::Deny) => except.push(shown),
                None => {}
            }
        }
        let mut scopes = self.rows(&any, format!("every {ty}"), ty, except);
        scopes.extend(exact);
        Ok(scopes)
    }
}

/// The grants of `policy` at peer `peer`, whose contacts are `petnames`.
pub fn analyse(
    peer: &str,
    policy: &PeerPolicy,
    petnames: &[String],
) -> Result<Report, GrantsError> {
    let set = policy.set();
    let analysis = Analysis {
        set: &set,
        peer: peer.to_owned(),
    };
    let mut principals: Vec<(String, Who)> = vec![(peer.to_owned(), Who::Owner)];
    principals.extend(petnames.iter().map(|p| (p.clone(), Who::Contact)));
    principals.push((crate::policy::ANONYMOUS.to_owned(), Who::Anonymous));
    principals.push(("anyone".to_owned(), Who::Anyone));
    let mut applied = HashSet::new();
    let mut warnings = Vec::new();
    let mut report = Vec::new();
    for (name, who) in principals {
        // Any other peer: an id no policy names.
        let known = if who == Who::Anyone {
            STRANGER
        } else {
            name.as_str()
        };
        let mut grants = Vec::new();
        for action in Action::ALL {
            let scopes = analysis.scopes(known, action, &mut applied)?;
            if scopes.is_empty() {
                continue;
            }
            if sensitive(action) && matches!(who, Who::Anyone | Who::Anonymous) {
                for scope in &scopes {
                    let whom = if who == Who::Anyone {
                        "anyone (any peer the policy does not name)"
                    } else {
                        "anonymous (unsigned requests)"
                    };
                    warnings.push(format!(
                        "over-broad: {whom} may {} on {}{} (policy {})",
                        action.name(),
                        scope.resource,
                        scope
                            .when
                            .as_ref()
                            .map(|w| format!(" when {w}"))
                            .unwrap_or_default(),
                        scope.policies.join(", ")
                    ));
                }
            }
            grants.push((action.name().to_owned(), scopes));
        }
        report.push(PrincipalGrants {
            principal: name,
            who,
            grants,
        });
    }
    // Policies that held or might hold for none of the principals listed.
    let known: BTreeSet<String> = std::iter::once(peer.to_owned())
        .chain(petnames.iter().cloned())
        .chain([crate::policy::ANONYMOUS.to_owned()])
        .collect();
    for p in set.policies() {
        if applied.contains(p.id()) {
            continue;
        }
        let strangers: Vec<String> = p
            .entity_literals()
            .into_iter()
            .filter(|uid| uid.type_name().to_string() == "Peer")
            .map(|uid| uid.id().unescaped().to_owned())
            .filter(|name| !known.contains(name))
            .collect();
        let why = if strangers.is_empty() {
            String::from("it holds for none of the principals listed")
        } else {
            format!(
                "it names {}, neither `{peer}`, a contact's petname nor anonymous",
                strangers
                    .iter()
                    .map(|s| format!("Peer::{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        warnings.push(format!(
            "never applies: {} `{}`: {why}",
            match p.effect() {
                cedar_policy::Effect::Permit => "permit",
                cedar_policy::Effect::Forbid => "forbid",
            },
            analysis.name(p.id())
        ));
    }
    Ok(Report {
        peer: peer.to_owned(),
        principals: report,
        warnings,
    })
}

mod render;

#[cfg(test)]
mod tests {
    use super::*;

    fn report(text: &str, petnames: &[&str]) -> Report {
        let policy = PeerPolicy::parse(std::path::Path::new("test.cedar"), text)
            .unwrap_or_else(|e| panic!("{e}"));
        let petnames: Vec<String> = petnames.iter().map(|p| (*p).to_owned()).collect();
        analyse("bob", &policy, &petnames).unwrap_or_else(|e| panic!("{e}"))
    }

    fn scopes(report: &Report, principal: &str, action: &str) -> Vec<String> {
        report
            .principals
            .iter()
            .filter(|p| p.principal == principal)
            .flat_map(|p| &p.grants)
            .filter(|(a, _)| a == action)
            .flat_map(|(_, scopes)| scopes.iter().map(Scope::describe))
            .collect()
    }

    #[test]
    fn forbids_show_as_exceptions_and_conditions() {
        let report = report(
            r#"
            @id("owner") permit (principal, action, resource) when { resource in principal };
            @id("no-secret") forbid (principal, action, resource == Key::"secret");
            @id("no-tmp") forbid (principal, action == Action::"kv.set", resource) when { resource.name like "tmp/*" };
            "#,
            &[],
        );
        assert_eq!(
            scopes(&report, "bob", "kv.get"),
            ["every Key except Key::\"secret\""]
        );
        assert_eq!(
            scopes(&report, "bob", "kv.set"),
            ["every Key except Key::\"secret\" unless resource.name like \"tmp/*\" (no-tmp)"]
        );
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    }

    #[test]
    fn a_named_resource_allowed_under_a_forbid_is_listed() {
        let report = report(
            r#"
            @id("o") permit (principal == Peer::"alice", action == Action::"kv.get", resource) when { resource.name like "o*" };
            @id("only-ok") forbid (principal, action == Action::"kv.get", resource) unless { resource == Key::"ok" };
            @id("signed-write") permit (principal, action == Action::"kv.set", resource) when { principal != Peer::"anonymous" };
            "#,
            &["alice"],
        );
        assert_eq!(scopes(&report, "alice", "kv.get"), ["Key::\"ok\""]);
        assert!(scopes(&report, "anonymous", "kv.set").is_empty());
        assert_eq!(scopes(&report, "anyone", "kv.set"), ["every Key"]);
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.starts_with("over-broad: anyone")),
            "{:?}",
            report.warnings
        );
    }

    #[test]
    fn anyone_is_what_holds_whoever_asks() {
        let report = report(
            r#"
            @id("alice-writes") permit (principal == Peer::"alice", action == Action::"kv.set", resource);
            @id("all-read-public") permit (principal, action == Action::"kv.get", resource) when { resource.name like "public/*" };
            "#,
            &["alice"],
        );
        assert_eq!(scopes(&report, "alice", "kv.set"), ["every Key"]);
        assert!(scopes(&report, "anyone", "kv.set").is_empty());
        assert_eq!(
            scopes(&report, "anyone", "kv.get"),
            ["Key when resource.name like \"public/*\""]
        );
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    }
}
