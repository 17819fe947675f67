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

/// `interface.function` for every function of the capability interfaces of wit/peer.wit.
fn wit_capabilities() -> BTreeSet<String> {
    let wit = read("wit/peer.wit");
    let mut capabilities = BTreeSet::new();
    let mut interface = None;
    for line in wit.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("interface ") {
            interface = rest.split_whitespace().next().map(str::to_owned);
        } else if let (Some(iface), Some((name, _))) = (&interface, line.split_once(": func("))
            && ["kv", "log", "context"].contains(&iface.as_str())
        {
            capabilities.insert(format!("{iface}.{}", name.trim_start_matches('%')));
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
    let wit = wit_capabilities();
    assert!(
        wit.contains("kv.get") && wit.contains("log.write") && wit.contains("context.get"),
        "{wit:?}"
    );
    let actions = schema_actions();
    let fs_and_call: BTreeSet<String> = ["fs.read", "fs.write", "fs.list", "call"]
        .map(String::from)
        .into();
    let expected: BTreeSet<String> = wit.union(&fs_and_call).cloned().collect();
    assert_eq!(
        actions, expected,
        "wit/peer.wit and policies/peerhost.cedarschema differ"
    );
}
