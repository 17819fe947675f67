//! How a grants [`Report`] is shown: a table for people, WIT worlds for
//! auditors (`peerhost audit grants --format wit`).

use super::*;

impl Report {
    /// One line per principal, action and scope.
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 4]> = vec![[
            "principal".into(),
            "action".into(),
            "resources".into(),
            "policies".into(),
        ]];
        for p in &self.principals {
            let principal = match p.who {
                Who::Owner => format!("{} (owner)", p.principal),
                Who::Contact => p.principal.clone(),
                Who::Anonymous => "anonymous".into(),
                Who::Anyone => "anyone".into(),
            };
            if p.grants.is_empty() {
                rows.push([principal.clone(), "-".into(), "nothing".into(), "-".into()]);
            }
            for (action, scopes) in &p.grants {
                for scope in scopes {
                    rows.push([
                        principal.clone(),
                        action.clone(),
                        scope.describe(),
                        scope.policies.join(", "),
                    ]);
                }
            }
        }
        let widths: Vec<usize> = (0..3)
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i < 3 {
                    let pad = widths[i] - cell.chars().count() + 2;
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        for warning in &self.warnings {
            out.push_str(&format!("warning: {warning}\n"));
        }
        out
    }

    /// One WIT world per principal, importing exactly the granted functions.
    pub fn wit(&self) -> String {
        let catalogue = Catalogue::parse(WIT);
        let mut out = format!(
            "// What each principal may do at `{}`, from its policy.cedar\n// (`peerhost audit grants {} --format wit`): one world per principal,\n// importing exactly the functions a grant makes usable. Host decisions\n// that are no import (calls from outside, accepting scripts, reading the\n// logic) are listed in each world's doc comment.\npackage peerhost:grants;\n",
            self.peer, self.peer
        );
        for p in &self.principals {
            out.push('\n');
            let whom = match p.who {
                Who::Owner => format!("`{}` itself (the owner)", p.principal),
                Who::Contact => format!("contact `{}`", p.principal),
                Who::Anonymous => "`anonymous` (unsigned requests)".into(),
                Who::Anyone => "anyone else (a peer the policy does not name)".into(),
            };
            out.push_str(&format!("/// What {whom} may do at `{}`.\n", self.peer));
            let mut imports: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            let mut filesystem = Vec::new();
            for (action, scopes) in &p.grants {
                let described: Vec<String> = scopes.iter().map(Scope::describe).collect();
                let line = format!("{action}: {}", described.join("; "));
                match wit_functions(action) {
                    [] if action.starts_with("fs.") => filesystem.push(line),
                    [] => out.push_str(&format!("///\n/// {line}\n")),
                    functions => {
                        for (iface, function) in functions {
                            imports.entry(iface).or_default().push(format!(
                                "        /// {line}\n        {}",
                                catalogue.function(iface, function)
                            ));
                        }
                    }
                }
            }
            out.push_str(&format!("world {} {{\n", world_name(&p.principal, p.who)));
            for (iface, functions) in &imports {
                out.push_str(&format!("    import {iface}: interface {{\n"));
                for used in catalogue.uses(iface) {
                    out.push_str(&format!("        {used}\n"));
                }
                for function in functions {
                    out.push_str(function);
                    out.push('\n');
                }
                out.push_str("    }\n");
            }
            if !filesystem.is_empty() {
                for line in &filesystem {
                    out.push_str(&format!("    /// {line}\n"));
                }
                out.push_str(&format!(
                    "    import wasi:filesystem/types@{WASI};\n    import wasi:filesystem/preopens@{WASI};\n"
                ));
            }
            out.push_str("}\n");
        }
        out
    }
}

impl Scope {
    /// The scope in one line: resources, condition, exceptions.
    pub fn describe(&self) -> String {
        let mut text = self.resource.clone();
        if let Some(when) = &self.when {
            text.push_str(&format!(" when {when}"));
        }
        if !self.except.is_empty() {
            text.push_str(&format!(" except {}", self.except.join(", ")));
        }
        for unless in &self.unless {
            text.push_str(&format!(" unless {unless}"));
        }
        text
    }
}

/// wit/peer.wit, for the signatures of granted functions.
const WIT: &str = include_str!("../../../wit/peer.wit");

/// The WASI version wit/peer.wit imports.
const WASI: &str = "0.2.12";

/// The WIT functions an action makes usable (none: no import).
fn wit_functions(action: &str) -> &'static [(&'static str, &'static str)] {
    match action {
        "kv.get" => &[("kv", "get"), ("kv", "get-entry")],
        "kv.exists" => &[("kv", "exists")],
        "kv.set" => &[("kv", "set")],
        "kv.set-if" => &[("kv", "set-if")],
        "kv.delete" => &[("kv", "delete")],
        "kv.list" => &[("kv", "list"), ("kv", "list-page")],
        "kv.get-many" => &[("kv", "get-many")],
        "kv.set-many" => &[("kv", "set-many")],
        "kv.delete-many" => &[("kv", "delete-many")],
        "kv.increment" => &[("kv", "increment")],
        "log.write" => &[("log", "write")],
        "context.get" => &[("context", "get")],
        "peers.send" => &[("peers", "send")],
        "peers.call" => &[("peers", "call")],
        "call" => &[("peers", "call-local")],
        _ => &[],
    }
}

/// A world name from a principal's name: kebab-case WIT identifier.
fn world_name(principal: &str, who: Who) -> String {
    let words: Vec<String> = principal
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let w = w.to_ascii_lowercase();
            if w.starts_with(|c: char| c.is_ascii_digit()) {
                format!("n{w}")
            } else {
                w
            }
        })
        .collect();
    let name = if words.is_empty() {
        "principal".to_owned()
    } else {
        words.join("-")
    };
    match who {
        Who::Owner => format!("{name}-owner"),
        _ => name,
    }
}

/// The functions and types of wit/peer.wit's interfaces.
struct Catalogue {
    /// The package's version, as foreign `use`s must name it.
    version: String,
    /// Per interface: its `use` lines and type names, and its functions.
    interfaces: BTreeMap<String, Interface>,
}

/// One interface of wit/peer.wit: `use` lines, type names, functions by name.
type Interface = (Vec<String>, Vec<String>, BTreeMap<String, String>);

impl Catalogue {
    fn parse(wit: &str) -> Catalogue {
        let mut interfaces = BTreeMap::new();
        let mut current: Option<String> = None;
        let mut version = String::new();
        for line in wit.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("package ") {
                version = rest
                    .trim_end_matches(';')
                    .split_once('@')
                    .map(|(_, v)| format!("@{v}"))
                    .unwrap_or_default();
                continue;
            }
            if let Some(rest) = line.strip_prefix("interface ") {
                let name = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                interfaces.insert(name.clone(), (Vec::new(), Vec::new(), BTreeMap::new()));
                current = Some(name);
                continue;
            }
            if line.starts_with("world ") {
                current = None;
            }
            let Some(name) = &current else { continue };
            let Some(entry) = interfaces.get_mut(name) else {
                continue;
            };
            if let Some(used) = line.strip_prefix("use ") {
                entry.0.push(used.to_owned());
            } else if let Some((_, rest)) = ["enum ", "record ", "variant ", "flags ", "type "]
                .iter()
                .find_map(|k| line.strip_prefix(k).map(|r| (k, r)))
            {
                let ty = rest
                    .split(|c: char| c.is_whitespace() || c == '{' || c == '=')
                    .next()
                    .unwrap_or_default();
                entry.1.push(ty.to_owned());
            } else if let Some((function, _)) = line.split_once(": func(") {
                entry
                    .2
                    .insert(function.trim_start_matches('%').to_owned(), line.to_owned());
            }
        }
        Catalogue {
            version,
            interfaces,
        }
    }

    /// The `use` lines an inline copy of `iface` needs.
    fn uses(&self, iface: &str) -> Vec<String> {
        let Some((uses, types, _)) = self.interfaces.get(iface) else {
            return Vec::new();
        };
        let version = &self.version;
        let mut out: Vec<String> = uses
            .iter()
            .filter_map(|u| {
                let (from, names) = u.split_once('.')?;
                Some(format!("use peerhost:peer/{from}{version}.{names}"))
            })
            .collect();
        if !types.is_empty() {
            out.push(format!(
                "use peerhost:peer/{iface}{version}.{{{}}};",
                types.join(", ")
            ));
        }
        out
    }

    /// The signature of `function` of `iface`, as wit/peer.wit writes it.
    fn function(&self, iface: &str, function: &str) -> String {
        self.interfaces
            .get(iface)
            .and_then(|(_, _, functions)| functions.get(function))
            .cloned()
            .unwrap_or_else(|| format!("// {iface}.{function}: not in wit/peer.wit"))
    }
}
