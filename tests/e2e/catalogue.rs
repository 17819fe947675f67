//! The capability catalogue must be the same in wit/peer.wit (what a guest
//! can import) and policies/peerhost.cedarschema (what a policy can grant).

use std::collections::BTreeSet;
use std::path::Path;

fn read(relative: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(relative),
    )
    .expect(relative)
}

/// The capability interfaces of wit/peer.wit.
const INTERFACES: [&str; 4] = ["kv", "log", "context", "peers"];

/// For every function of the capability interfaces of wit/peer.wit:
/// `interface.function` and the Cedar action its doc comment names
/// (``Action `kv.get` …``).
fn wit_capabilities() -> Vec<(String, String)> {
    let wit = read("wit/peer.wit");
    let mut capabilities = Vec::new();
    let mut interface = None;
    let mut action = None;
    for line in wit.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("interface ") {
            interface = rest.split_whitespace().next().map(str::to_owned);
        } else if line.starts_with("world ") {
            // World-level exports such as `wizer-initialize` are not capabilities.
            interface = None;
        } else if let Some(doc) = line.strip_prefix("///") {
            if let Some((_, rest)) = doc.split_once("Action `") {
                action = rest.split('`').next().map(str::to_owned);
            }
        } else if let (Some(iface), Some((name, _))) = (&interface, line.split_once(": func("))
            && INTERFACES.contains(&iface.as_str())
        {
            let function = format!("{iface}.{}", name.trim_start_matches('%'));
            let named = action
                .take()
                .unwrap_or_else(|| panic!("{function} names no Cedar action in its doc comment"));
            capabilities.push((function, named));
        } else if line.is_empty() {
            action = None;
        }
    }
    capabilities
}

/// Every quoted action name of policies/peerhost.cedarschema.
fn schema_actions() -> BTreeSet<String> {
    let schema = read("policies/peerhost.cedarschema");
    let mut actions = BTreeSet::new();
    for line in schema
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("action "))
    {
        let names = line
            .trim_start_matches("action ")
            .split("appliesTo")
            .next()
            .unwrap_or_default();
        for name in names.split(',') {
            actions.insert(name.trim().trim_matches('"').to_owned());
        }
    }
    actions
}

#[test]
fn every_wit_capability_has_a_cedar_action_and_back() {
    let capabilities = wit_capabilities();
    let actions = schema_actions();
    for (function, action) in &capabilities {
        assert!(
            actions.contains(action),
            "{function} names action {action}, which policies/peerhost.cedarschema lacks"
        );
        // Each capability's action is its own name, except `call-local`,
        // which is the `call` of a function like any other, and the kv
        // reads that differ only in what they return.
        let same_as = [
            ("peers.call-local", "call"),
            ("kv.get-entry", "kv.get"),
            ("kv.list-page", "kv.list"),
        ];
        if let Some((_, other)) = same_as.iter().find(|(f, _)| f == function) {
            assert_eq!(action, other, "{function} should be decided as {other}");
        } else {
            assert_eq!(function, action, "{function} should be decided as itself");
        }
    }
    assert!(capabilities.len() >= 9, "{capabilities:?}");
    // Back: every action is a WIT capability, a WASI filesystem class, or a
    // decision the host makes on its own (`call`, `script.accept`,
    // `logic.read`).
    let named: BTreeSet<String> = capabilities.into_iter().map(|(_, a)| a).collect();
    let host_only: BTreeSet<String> = [
        "fs.read",
        "fs.write",
        "fs.list",
        "call",
        "script.accept",
        "logic.read",
    ]
    .map(String::from)
    .into();
    let expected: BTreeSet<String> = named.union(&host_only).cloned().collect();
    assert_eq!(
        actions, expected,
        "wit/peer.wit and policies/peerhost.cedarschema differ"
    );
}
