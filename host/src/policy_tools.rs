//! `peerhost policy check` and `peerhost policy test`: validating and
//! linting policy files, and running the owner's table of expected
//! decisions through the real decision path.

use crate::config::DeploymentError;
use crate::policy::{Action, PeerPolicy, Resource, schema};
use cedar_policy::{EntityUid, ValidationMode, Validator};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The owner's decision table, beside `policy.cedar`.
pub const TESTS_FILE: &str = "policy.tests.toml";

/// `path` itself; for a deployment directory, each `peers/*/policy.cedar`;
/// for another directory, every `*.cedar` file under it (hidden directories
/// and `target/` skipped). Sorted.
pub fn policy_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    if path.join("peerhost.toml").exists() {
        // Not the namespaces: a peer's data is not its owner's policy.
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path.join("peers"))? {
            let policy = entry?.path().join("policy.cedar");
            if policy.exists() {
                files.push(policy);
            }
        }
        files.sort();
        return Ok(files);
    }
    let mut files = Vec::new();
    let mut pending = vec![path.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    pending.push(path);
                }
            } else if name.ends_with(".cedar") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Validates `file` against the schema (an error names its line) and
/// lints it: Cedar's validator warnings, then what `audit grants` flags
/// (over-broad grants, policies that never apply). A `peers/<name>/policy.cedar`
/// is analysed as peer `name` with the contacts beside it.
pub fn check(file: &Path) -> Result<Vec<String>, DeploymentError> {
    let policy = PeerPolicy::load(file)?;
    let mut warnings: Vec<String> = Validator::new(schema().clone())
        .validate(&policy.set(), ValidationMode::Strict)
        .validation_warnings()
        .map(|w| w.to_string())
        .collect();
    let dir = file.parent().unwrap_or(Path::new("."));
    let in_peer = file.file_name().is_some_and(|n| n == "policy.cedar")
        && dir
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n == "peers");
    let peer = if in_peer {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "owner".into())
    } else {
        "owner".into()
    };
    let contacts = dir.join("contacts.toml");
    let petnames: Vec<String> = if in_peer && contacts.exists() {
        crate::contacts::Contacts::load(&contacts, &peer, None)?
            .iter()
            .map(|(p, _)| p.to_owned())
            .collect()
    } else {
        Vec::new()
    };
    let report = crate::grants::analyse(&peer, &policy, &petnames)
        .map_err(|e| DeploymentError::file(file, e.to_string()))?;
    warnings.extend(report.warnings);
    Ok(warnings)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    #[serde(default)]
    case: Vec<Case>,
}

/// One expected decision.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// The principal's name, as the policy writes it (`alice`, `anonymous`).
    principal: String,
    /// The action (`kv.get`).
    action: String,
    /// The resource in Cedar syntax: `Key::"public/motd"`, `Path::"/notes"`,
    /// `Function::"get_public"`, `Contact::"bob"`, or `Peer::"<this peer>"`.
    resource: String,
    /// `allow` or `deny`.
    expect: Expect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

/// The outcome of one case.
#[derive(Debug)]
pub struct CaseResult {
    /// The decision was the expected one.
    pub passed: bool,
    line: String,
}

impl CaseResult {
    /// One line: ok or FAIL, the case, and the deciding policies.
    pub fn line(&self) -> String {
        self.line.clone()
    }
}

/// Runs the table at `path` through `policy` as peer `peer` decides.
pub fn run_tests(
    path: &Path,
    peer: &str,
    policy: &PeerPolicy,
) -> Result<Vec<CaseResult>, DeploymentError> {
    if !path.exists() {
        return Err(DeploymentError::file(
            path,
            "missing: write the owner's expected decisions here as [[case]] tables (see `peerhost policy test --help`)",
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| DeploymentError::file(path, format!("cannot read: {e}")))?;
    let table: Table = crate::config::parse_toml(path, &text)?;
    let mut results = Vec::new();
    for (index, case) in table.case.iter().enumerate() {
        let bad = |what: String| DeploymentError::file(path, format!("case {}: {what}", index + 1));
        let action = Action::ALL
            .into_iter()
            .find(|a| a.name() == case.action)
            .ok_or_else(|| {
                bad(format!(
                    "unknown action `{}` (actions: {})",
                    case.action,
                    Action::ALL.map(Action::name).join(", ")
                ))
            })?;
        let resource = resource(&case.resource, peer).map_err(bad)?;
        let decision = policy.decide_on_thread_stack(peer, &case.principal, action, &resource);
        let expected = case.expect == Expect::Allow;
        let got = if decision.allowed { "allow" } else { "deny" };
        let policies = if decision.policies.is_empty() {
            String::new()
        } else {
            format!(" ({})", decision.policies.join(", "))
        };
        let passed = decision.allowed == expected;
        let line = if passed {
            format!(
                "ok    {} {} {} -> {got}{policies}",
                case.principal, case.action, case.resource
            )
        } else {
            format!(
                "FAIL  {} {} {}: expected {}, got {got}{policies}",
                case.principal,
                case.action,
                case.resource,
                if expected { "allow" } else { "deny" }
            )
        };
        results.push(CaseResult { passed, line });
    }
    Ok(results)
}

/// A resource in Cedar syntax as the host builds it.
fn resource(text: &str, peer: &str) -> Result<Resource, String> {
    let uid = EntityUid::from_str(text)
        .map_err(|e| format!("`{text}` is not an entity like Key::\"name\": {e}"))?;
    let id = uid.id().unescaped().to_owned();
    Ok(match uid.type_name().to_string().as_str() {
        "Key" => Resource::Key(id),
        "Path" => Resource::Path(id),
        "Function" => Resource::Function(id),
        "Contact" => Resource::Contact(id),
        "Peer" if id == peer => Resource::Peer,
        "Peer" => {
            return Err(format!(
                "a Peer resource is the peer itself, Peer::{peer:?}"
            ));
        }
        other => {
            return Err(format!(
                "no resource type `{other}` (Key, Path, Function, Contact, Peer)"
            ));
        }
    })
}
