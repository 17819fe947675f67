//! The crate's floors, and the test that keeps them.
//!
//! Every module of `host/src` sits on one floor of [`FLOORS`], lowest first.
//! A module may use modules of its own floor and of the floors below, never
//! one above: identity does not know about policy, policy does not know about
//! the runtime, and nothing but the edge (server, client, fuzz) sees the
//! worker. That keeps each floor testable with only what is under it, and
//! keeps cycles out of the crate as it grows.
//!
//! A module is the first path component under `host/src`:
//! `capability/kv.rs` and `capability/mod.rs` are `capability`, `quota.rs`
//! and `quota/usage.rs` are `quota`. `lib.rs`, `main.rs` (the binary) and
//! this file are on no floor.
//!
//! The check reads the source, not the compiler's view: it blanks comments,
//! string and char literals, drops items under `#[cfg(test)]` (tests may use
//! anything), and then looks at every `crate::NAME` and `crate::{a, b::{..}}`.
//! `super::` inside `host/src/X/…` is `X` itself and is fine; `super::NAME`
//! at the top of a top-level file, where `NAME` is a module, is the crate
//! root and is checked like `crate::NAME`; `super::super::` is refused:
//! write `crate::NAME`.
//!
//! To add a module: put its name on the lowest floor whose modules cover
//! everything it uses. A `.rs` file on no floor fails the test. A module
//! listed here need not exist yet.

use std::path::Path;

/// The floors, lowest first: (floor name, its modules).
#[rustfmt::skip]
pub(crate) const FLOORS: &[(&str, &[&str])] = &[
    ("base", &["error", "bindings", "metrics", "trace"]),
    ("identity", &["identity"]),
    ("invocation", &["invocation", "envelope"]),
    ("config and storage", &["config", "collections", "records", "quota", "contacts", "audit", "files", "logic", "replay", "namespace", "kv"]),
    ("policy", &["policy", "grants", "policy_tools"]),
    ("peer", &["peer", "budget", "deployment", "scaffold"]),
    ("runtime", &["preinit", "cache", "capability", "runtime", "session"]),
    ("worker", &["host_operations", "worker"]),
    ("edge", &["server", "console", "client", "cluster", "websocket", "otlp", "fuzz", "cli"]),
];

/// A module's floor: its index and its name.
fn floor_of(module: &str) -> Option<(usize, &'static str)> {
    FLOORS
        .iter()
        .enumerate()
        .find(|(_, (_, modules))| modules.contains(&module))
        .map(|(index, (name, _))| (index, *name))
}

/// `text` with comments, string and char literals blanked; newlines stay, so
/// line numbers do.
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut end = 0; // of the literal or comment `c[i]` is in
    let blank = |(i, &ch): (usize, &char)| {
        if i >= end {
            end = i + literal_len(&c, i);
        }
        if i < end && ch != '\n' { ' ' } else { ch }
    };
    c.iter().enumerate().map(blank).collect()
}

/// The length of the comment, string or char literal at `c[i]`, 0 if none.
/// `'a` (a lifetime or a label) is none.
fn literal_len(c: &[char], i: usize) -> usize {
    let s = &c[i..];
    let at = |k: usize| s.get(k).copied();
    let find = |from: usize, ch: char| (from..s.len()).find(|&k| s[k] == ch).unwrap_or(s.len());
    let ident = |k: Option<usize>| k.is_some_and(|k| c[k].is_alphanumeric() || c[k] == '_');
    // `r"`, `r#"`, also after `b` or `c`; not `r#ident`, not `bar"`.
    let raw = match i.checked_sub(1).map(|k| c[k]) {
        Some('b' | 'c') => !ident(i.checked_sub(2)),
        _ => !ident(i.checked_sub(1)),
    };
    let hashes = s[1..].iter().take_while(|&&ch| ch == '#').count();
    match (s[0], at(1), at(2)) {
        ('/', Some('/'), _) => find(0, '\n'),
        ('/', Some('*'), _) => {
            let (mut depth, mut k) = (0, 0); // block comments nest
            while k < s.len() {
                match (s[k], at(k + 1)) {
                    ('/', Some('*')) => (depth, k) = (depth + 1, k + 2),
                    ('*', Some('/')) if depth == 1 => return k + 2,
                    ('*', Some('/')) => (depth, k) = (depth - 1, k + 2),
                    _ => k += 1,
                }
            }
            k
        }
        ('r', ..) if raw && at(1 + hashes) == Some('"') => {
            let closes = |k: usize| s[k] == '"' && (1..=hashes).all(|h| at(k + h) == Some('#'));
            (2 + hashes..s.len())
                .find(|&k| closes(k))
                .map_or(s.len(), |k| k + 1 + hashes)
        }
        ('"', ..) => {
            let mut k = 1;
            while k < s.len() && s[k] != '"' {
                k += if s[k] == '\\' { 2 } else { 1 };
            }
            k + 1
        }
        ('\'', Some('\\'), _) => find(3, '\'') + 1, // `'\n'`, `'\''`, `'\u{..}'`
        ('\'', _, Some('\'')) => 3,
        _ => 0,
    }
}

/// Identifiers, `::` and single punctuation characters, each with its line.
fn tokens(stripped: &str) -> Vec<(String, usize)> {
    let is_ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut toks = Vec::new();
    let mut line = 1;
    let mut chars = stripped.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch == '\n' {
            line += 1;
        } else if is_ident(ch) {
            let mut word = String::from(ch);
            while let Some(next) = chars.next_if(|&n| is_ident(n)) {
                word.push(next);
            }
            toks.push((word, line));
        } else if ch == ':' && chars.next_if_eq(&':').is_some() {
            toks.push(("::".to_owned(), line));
        } else if !ch.is_whitespace() {
            toks.push((ch.to_string(), line));
        }
    }
    toks
}

/// `toks` without the items under `#[cfg(test)]`: each runs to the end of
/// its first brace block, or to its `;`, or to the end of the block it is in.
fn skip_test_items(toks: Vec<(String, usize)>) -> Vec<(String, usize)> {
    const CFG_TEST: [&str; 7] = ["#", "[", "cfg", "(", "test", ")", "]"];
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let is = |k: usize, w: &str| toks.get(i + k).is_some_and(|t| t.0 == w);
        if !CFG_TEST.iter().enumerate().all(|(k, w)| is(k, w)) {
            out.push(toks[i].clone());
            i += 1;
            continue;
        }
        let mut depth = 0usize;
        i += CFG_TEST.len();
        while let Some((t, _)) = toks.get(i) {
            depth = match t.as_str() {
                "(" | "[" | "{" => depth + 1,
                ")" | "]" | "}" if depth == 0 => break, // the enclosing block's end
                ")" | "]" | "}" => depth - 1,
                _ => depth,
            };
            i += 1;
            if depth == 0 && (t == "}" || t == ";") {
                break;
            }
        }
    }
    out
}

/// A path to another module, found by [`references`].
#[derive(Debug, PartialEq)]
enum Ref {
    /// `crate::NAME`, or a first segment of `crate::{..}`.
    Crate(String),
    /// `super::NAME`.
    Super(String),
    /// `super::super::`.
    SuperSuper,
}

/// The module paths in `text` outside comments, literals and test items,
/// each with its line, in order.
fn references(text: &str) -> Vec<(usize, Ref)> {
    let toks = skip_test_items(tokens(&strip(text)));
    let word = |k: usize| toks.get(k).map_or("", |t| t.0.as_str());
    let is_name =
        |w: &str| w.starts_with(|ch: char| ch.is_alphabetic() || ch == '_') && w != "self";
    let mut refs = Vec::new();
    for (i, (tok, line)) in toks.iter().enumerate() {
        if word(i + 1) != "::" || (i > 0 && word(i - 1) == "::") {
            continue;
        }
        match (tok.as_str(), word(i + 2)) {
            ("super", "super") => refs.push((*line, Ref::SuperSuper)),
            ("super", name) if is_name(name) => refs.push((*line, Ref::Super(name.to_owned()))),
            ("crate", "{") => {
                let (mut depth, mut first) = (0, false);
                for (t, l) in &toks[i + 2..] {
                    match t.as_str() {
                        "{" => (depth, first) = (depth + 1, depth == 0),
                        "}" if depth == 1 => break,
                        "}" => (depth, first) = (depth - 1, false),
                        "," => first = depth == 1,
                        name if first && is_name(name) => {
                            refs.push((*l, Ref::Crate(name.to_owned())));
                            first = false;
                        }
                        _ => first = false,
                    }
                }
            }
            ("crate", name) if is_name(name) => refs.push((*line, Ref::Crate(name.to_owned()))),
            _ => {}
        }
    }
    refs
}

/// The layering violations in `files`, (path under `host/src`, text) pairs.
pub(crate) fn check(files: &[(impl AsRef<str>, impl AsRef<str>)]) -> Vec<String> {
    let mut violations = Vec::new();
    for (path, text) in files {
        let (path, text) = (path.as_ref(), text.as_ref());
        let own = path.split(['/', '.']).next().unwrap_or_default();
        let Some((floor, floor_name)) = floor_of(own) else {
            violations.push(format!(
                "host/src/{path}: module {own} is on no floor; place it in FLOORS in host/src/layering.rs"
            ));
            continue;
        };
        let top_level =
            !path.contains('/') || path.matches('/').count() == 1 && path.ends_with("/mod.rs");
        for (line, reference) in references(text) {
            let target = match reference {
                Ref::Crate(name) => name,
                Ref::Super(name) if top_level && name != own && floor_of(&name).is_some() => name,
                Ref::Super(_) => continue,
                Ref::SuperSuper => {
                    violations.push(format!(
                        "host/src/{path}:{line}: {own} uses super::super::; write crate::NAME so the layering test can check it"
                    ));
                    continue;
                }
            };
            match floor_of(&target) {
                Some((to, to_name)) if to > floor => violations.push(format!(
                    "host/src/{path}:{line}: {own} (floor {floor} {floor_name}) uses crate::{target} (floor {to} {to_name})"
                )),
                Some(_) => {}
                None => violations.push(format!(
                    "host/src/{path}:{line}: {own} (floor {floor} {floor_name}) uses crate::{target}, which is on no floor"
                )),
            }
        }
    }
    violations
}

/// The floor table, as the failures print it.
fn table() -> String {
    let head = "floors, lowest first (a module may use its own floor and those below):\n";
    let rows = FLOORS.iter().enumerate();
    let rows = rows.map(|(i, (name, modules))| format!("  {i} {name}: {}\n", modules.join(", ")));
    std::iter::once(head.to_owned()).chain(rows).collect()
}

/// Every `.rs` file under `dir` (path under `host/src`, text) into `out`;
/// `prefix` is `dir`'s own path under `host/src`.
fn rust_files(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        let rel = format!("{prefix}{}", path.file_name().unwrap_or_default().display());
        if path.is_dir() {
            rust_files(&path, &format!("{rel}/"), out);
        } else if rel.ends_with(".rs") && !["lib.rs", "main.rs", "layering.rs"].contains(&&*rel) {
            let text = std::fs::read_to_string(&path);
            out.push((
                rel,
                text.unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            ));
        }
    }
}

#[test]
fn the_scanner_skips_comments_strings_and_tests() {
    let text = r####"//! Module doc: crate::doc_line
/// Item doc: crate::doc_item
use crate::{a::X, b,
    c::{d, crate_e::Y}, /* crate::block /* nested */ crate::still */
    f};
fn g<'a>(s: &'a str) -> char { let _ = "crate::string \" crate::escaped"; 'x' }
const R: &str = r#"crate::raw "crate::quoted" "#;
const Q: char = '\''; const B: &[u8] = br"crate::bytes";
#[cfg(test)]
mod tests { use crate::tested; fn h() { crate::deep::f(); } }
#[cfg(test)] use crate::test_use;
pub(crate) fn i() { crate::h::f(); super::j(); super::super::k(); }
"####;
    let refs: Vec<_> = references(text)
        .iter()
        .map(|(l, r)| format!("{l}:{r:?}"))
        .collect();
    let expected = r#"3:Crate("a") 3:Crate("b") 4:Crate("c") 5:Crate("f") 12:Crate("h") 12:Super("j") 12:SuperSuper"#;
    assert_eq!(refs.join(" "), expected, "stripped:\n{}", strip(text));
}

#[test]
fn a_planted_upward_import_is_reported() {
    let files = [
        ("identity.rs", "use crate::error::E; use crate::worker::W;"),
        ("identity.rs", "use super::identity::Id;"),
        ("capability/kv.rs", "use super::super::policy::P;"),
        ("capability/kv.rs", "use super::InvocationState;"),
        ("policy.rs", "fn f() { super::runtime::E::new(); }"),
        ("newcomer/mod.rs", "use crate::error::Error;"),
    ];
    let expected = [
        "host/src/identity.rs:1: identity (floor 1 identity) uses crate::worker (floor 7 worker)",
        "host/src/capability/kv.rs:1: capability uses super::super::; write crate::NAME so the layering test can check it",
        "host/src/policy.rs:1: policy (floor 4 policy) uses crate::runtime (floor 6 runtime)",
        "host/src/newcomer/mod.rs: module newcomer is on no floor; place it in FLOORS in host/src/layering.rs",
    ];
    assert_eq!(check(&files), expected);
}

#[test]
fn no_module_imports_a_higher_floor() {
    let modules: Vec<&str> = FLOORS.iter().flat_map(|f| f.1.iter().copied()).collect();
    let twice = modules
        .iter()
        .filter(|m| modules.iter().filter(|n| n == m).count() > 1);
    assert_eq!(twice.count(), 0, "a module is on two floors\n{}", table());
    let mut files = Vec::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    rust_files(&src, "", &mut files);
    files.sort();
    let violations = check(&files);
    let report = format!(
        "layering violations:\n{}\n\n{}",
        violations.join("\n"),
        table()
    );
    assert!(violations.is_empty(), "{report}");
}
