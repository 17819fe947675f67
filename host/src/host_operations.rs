//! What the host answers itself, with no guest: showing a peer's logic
//! (decided as `logic.read`, audited) and the owner's pushes of logic and
//! policy (signed with the owner's key, validated before anything changes).

use crate::capability::{Authority, Phase};
use crate::error::InvocationError;
use crate::identity::Caller;
use crate::logic::{InstallError, LIBRARY, file_of};
use crate::peer::Peer;
use crate::policy::{Action, Resource};
use serde_json::{Value, json};
use std::sync::Arc;

/// Answers a host operation (`logic show`, a push) at `peer` for
/// `caller`; a call or script is refused here (a guest runs those).
pub fn host_operation(
    peer: &Arc<Peer>,
    caller: &Caller,
    chain: crate::invocation::Chain,
    invocation: &crate::runtime::Invocation,
) -> Result<Value, InvocationError> {
    use crate::invocation::Invocation;
    match invocation {
        Invocation::ShowLogic { module } => show_logic(peer, caller, chain, module.as_deref()),
        Invocation::PushLogic { files } => push_logic(peer, caller, chain, files),
        Invocation::PushPolicy { text } => push_policy(peer, caller, chain, text),
        Invocation::Call { .. } | Invocation::Script { .. } => Err(InvocationError::invalid(
            "a call or a script runs in a guest, not as a host operation",
        )),
    }
}

/// One exported function of a module, as `logic show` lists it.
#[derive(Debug, serde::Serialize)]
pub struct FunctionDoc {
    /// The function's name.
    pub name: String,
    /// Its parameters.
    pub params: Vec<String>,
    /// Its `///` doc comment, without the leaders.
    pub doc: String,
}

/// The exported (not `private`) functions of `source` with their doc
/// comments, compiled with the guest's engine.
pub fn functions(name: &str, source: &str) -> Result<Vec<FunctionDoc>, String> {
    let ast = crate::logic::check(name, source)?;
    let mut out: Vec<FunctionDoc> = ast
        .iter_functions()
        .filter(|f| matches!(f.access, rhai::FnAccess::Public))
        .map(|f| FunctionDoc {
            name: f.name.to_owned(),
            params: f.params.iter().map(|p| (*p).to_owned()).collect(),
            doc: f
                .comments
                .iter()
                .flat_map(|c| c.lines())
                .map(|line| {
                    let line = line.trim();
                    let line = line
                        .strip_prefix("///")
                        .or_else(|| line.strip_prefix("/**"))
                        .unwrap_or(line);
                    let line = line.strip_suffix("*/").unwrap_or(line);
                    line.strip_prefix(' ').unwrap_or(line).trim_end().to_owned()
                })
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
                .to_owned(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The authority of a host operation by `caller` at `peer`.
fn authority(peer: &Arc<Peer>, caller: &Caller, chain: crate::invocation::Chain) -> Authority {
    let mut authority = Authority::new(peer, caller.clone(), chain.depth);
    authority.trace = chain.trace;
    authority.phase = Phase::Running;
    authority
}

/// `logic.read`: the peer's modules (its own, then the library's), each
/// with its exported functions, doc comments and source; or one of them.
pub fn show_logic(
    peer: &Arc<Peer>,
    caller: &Caller,
    chain: crate::invocation::Chain,
    module: Option<&str>,
) -> Result<Value, InvocationError> {
    let authority = authority(peer, caller, chain);
    authority
        .check_before_entry(Action::LogicRead, &Resource::Peer)
        .map_err(InvocationError::from)?;
    let _admission = crate::capability::admit(&authority)?;
    let modules = peer
        .logic
        .modules()
        .map_err(|e| InvocationError::failed(format!("cannot read the logic: {e}")))?;
    // The library's modules a peer module overrides are not in effect.
    let effective = |name: &str| {
        name.strip_prefix(LIBRARY)
            .is_none_or(|own| !modules.iter().any(|m| m.name == own))
    };
    let mut shown = Vec::new();
    for m in modules.iter() {
        if let Some(wanted) = module
            && wanted != m.name
        {
            continue;
        }
        let (functions, error) = match functions(&m.name, &m.source) {
            Ok(functions) => (functions, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        shown.push(json!({
            "name": m.name,
            "file": file_of(&m.name),
            "library": m.name.starts_with(LIBRARY),
            "overridden": !effective(&m.name),
            "functions": functions,
            "error": error,
            // Sources of one module at a time: all of them could be
            // hundreds of files.
            "source": module.map(|_| m.source.clone()),
        }));
    }
    if let Some(wanted) = module
        && shown.is_empty()
    {
        return Err(InvocationError::not_found(format!(
            "`{}` has no module `{wanted}` (modules: {})",
            peer.name,
            modules
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let value = json!({
        "peer": peer.name,
        "modules": shown,
        "refused": peer.logic.refused(),
        "collections": peer.collections.describe(),
    });
    let size = value.to_string().len();
    if size > crate::runtime::MAX_RESULT {
        return Err(InvocationError::limit(format!(
            "the answer is {size} bytes, over the {} byte limit of a result: ask for one module",
            crate::runtime::MAX_RESULT
        )));
    }
    Ok(value)
}

/// Whether `caller` is the peer's owner: it signed with the peer's own key
/// (or runs in-process as the peer); the owner is then admitted under its
/// quota, if it set itself one.
fn owner_only(
    peer: &Arc<Peer>,
    caller: &Caller,
    chain: crate::invocation::Chain,
    action: &'static str,
    resource: &str,
) -> Result<(Authority, crate::capability::Admission), InvocationError> {
    let authority = authority(peer, caller, chain);
    let owner = caller.id == Some(peer.id) && chain.depth == 0;
    let reason = (!owner).then(|| {
        format!(
            "only `{}`'s owner, signing with its key, may push (the caller is `{}`)",
            peer.name, caller.principal
        )
    });
    authority
        .record(action, resource, owner, Vec::new(), reason.clone())
        .map_err(InvocationError::from)?;
    match reason {
        None => {
            let admission = crate::capability::admit(&authority)?;
            Ok((authority, admission))
        }
        Some(reason) => Err(InvocationError {
            message: reason,
            ..InvocationError::denied(action, resource)
        }),
    }
}

/// The owner replaces or adds logic modules: each compiles first, or
/// nothing changes and the error names its file:line.
pub fn push_logic(
    peer: &Arc<Peer>,
    caller: &Caller,
    chain: crate::invocation::Chain,
    files: &[(String, String)],
) -> Result<Value, InvocationError> {
    let (authority, _admission) = owner_only(peer, caller, chain, "logic.push", "/logic")?;
    match peer.logic.install(files) {
        Ok(_) => {
            let names: Vec<String> = files.iter().map(|(name, _)| file_of(name)).collect();
            tracing::info!(target: "peerhost::logic", peer = %peer.name, files = ?names, "logic pushed, in use");
            authority
                .record(
                    "logic.push",
                    &names.join(" "),
                    true,
                    Vec::new(),
                    Some("in use".into()),
                )
                .map_err(InvocationError::from)?;
            Ok(json!({ "peer": peer.name, "updated": names }))
        }
        Err(InstallError::Invalid(message)) => Err(InvocationError::invalid(format!(
            "logic push refused, the logic in use is unchanged: {message}"
        ))),
        Err(InstallError::Io(e)) => Err(InvocationError::failed(format!("logic push failed: {e}"))),
    }
}

/// The owner replaces the policy: it parses and validates against the
/// schema first, or nothing changes and the error names its line.
pub fn push_policy(
    peer: &Arc<Peer>,
    caller: &Caller,
    chain: crate::invocation::Chain,
    text: &str,
) -> Result<Value, InvocationError> {
    let (authority, _admission) = owner_only(peer, caller, chain, "policy.push", "policy.cedar")?;
    peer.replace_policy(text).map_err(|e| {
        InvocationError::invalid(format!(
            "policy push refused, the policy in use is unchanged: {e}"
        ))
    })?;
    tracing::info!(target: "peerhost::policy", peer = %peer.name, "policy pushed, in use");
    authority
        .record(
            "policy.push",
            "policy.cedar",
            true,
            Vec::new(),
            Some("in use".into()),
        )
        .map_err(InvocationError::from)?;
    Ok(json!({ "peer": peer.name, "updated": ["policy.cedar"] }))
}

/// The strings of a JSON array (none for anything else).
fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// `logic show` for people: each module, its exported functions with their
/// doc comments, and the sources when `sources`.
pub fn render(value: &Value, sources: bool) -> String {
    let mut out = String::new();
    let peer = value["peer"].as_str().unwrap_or_default();
    let modules = value["modules"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!("logic of {peer}: {} module(s)\n", modules.len()));
    if let Some(refused) = value["refused"].as_str() {
        out.push_str(&format!(
            "note: an edit on disk is not in use (it does not compile): {refused}\n"
        ));
    }
    for module in &modules {
        let file = module["file"].as_str().unwrap_or_default();
        let mut notes = Vec::new();
        if module["library"].as_bool() == Some(true) {
            notes.push("library");
        }
        if module["overridden"].as_bool() == Some(true) {
            notes.push("overridden by the peer's module of that name");
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join(", "))
        };
        out.push_str(&format!("\n{file}{notes}\n"));
        if let Some(error) = module["error"].as_str() {
            out.push_str(&format!("  does not compile: {error}\n"));
        }
        for function in module["functions"].as_array().into_iter().flatten() {
            let params = strings(&function["params"]);
            out.push_str(&format!(
                "  fn {}({})\n",
                function["name"].as_str().unwrap_or_default(),
                params.join(", ")
            ));
            for line in function["doc"].as_str().unwrap_or_default().lines() {
                out.push_str(&format!("      {line}\n"));
            }
        }
        if sources {
            out.push_str(&format!("\n--- {file} ---\n"));
            out.push_str(module["source"].as_str().unwrap_or_default());
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    // The record collections of collections.toml.
    for collection in value["collections"].as_array().into_iter().flatten() {
        let indexes = strings(&collection["indexes"]);
        out.push_str(&format!(
            "\ncollection {} (key {}{})\n",
            collection["name"].as_str().unwrap_or_default(),
            collection["key"].as_str().unwrap_or_default(),
            if indexes.is_empty() {
                String::new()
            } else {
                format!("; indexes {}", indexes.join(", "))
            }
        ));
        for field in collection["fields"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  {}{}: {}\n",
                field["name"].as_str().unwrap_or_default(),
                if field["required"].as_bool() == Some(true) {
                    ""
                } else {
                    "?"
                },
                field["type"].as_str().unwrap_or_default()
            ));
        }
    }
    out
}
