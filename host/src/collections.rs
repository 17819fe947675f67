//! Declared collections: what records a peer keeps, in
//! `peers/<name>/collections.toml`, and the check every record passes
//! before it is written.
//!
//! ```toml
//! [posts]
//! key = "slug"                 # a required field, or "generated" (the default)
//! indexes = ["author", "published"]
//!
//! [posts.fields]
//! slug = { type = "string", pattern = "^[a-z0-9-]+$", max_length = 80, required = true }
//! title = { type = "string", max_length = 200, required = true }
//! author = { type = "peer", required = true }
//! published = { type = "bool" }
//! score = { type = "int", min = 0, max = 100 }
//! rating = { type = "float", min = 0.0, max = 5.0 }
//! created = { type = "timestamp" }
//! state = { type = "enum", values = ["draft", "live"] }
//! tags = { type = "array", items = { type = "string", max_length = 32 }, max_items = 16 }
//! meta = { type = "object", fields = { source = { type = "string" } } }
//! ```
//!
//! Types: `string` (`max_length` in characters, `pattern` a regular
//! expression that must match), `int` (`min`, `max`, 64-bit), `float`
//! (`min`, `max`, finite), `bool`, `timestamp` (RFC 3339 in UTC, e.g.
//! `2026-12-08T10:00:00Z`), `peer` (a `did:key` id), `enum` (`values`),
//! `array` (`items`, `max_items`) and `object` (`fields`, nested up to
//! [`MAX_DEPTH`]). A field is optional unless `required = true`; a record
//! may hold no field the declaration does not name.
//!
//! A declaration is checked whole when it is read: a bad one is refused
//! with its file and line, and nothing of it is used.

use crate::config::DeploymentError;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use toml::Spanned;

/// The declaration file of a peer, in its directory.
pub const FILE: &str = "collections.toml";

/// Most collections one peer may declare.
pub const MAX_COLLECTIONS: usize = 64;

/// Most fields of one collection or object.
pub const MAX_FIELDS: usize = 256;

/// Deepest nesting of arrays and objects.
pub const MAX_DEPTH: usize = 8;

/// Longest `max_length` of a string, in characters.
pub const MAX_STRING: u64 = 1 << 20;

/// Most items `max_items` may allow.
pub const MAX_ITEMS: u64 = 10_000;

/// Most values of an enum.
pub const MAX_ENUM_VALUES: usize = 1_024;

/// Largest compiled pattern, in bytes (the regex engine's own measure).
pub const MAX_PATTERN: usize = 1 << 20;

/// The types a field may have.
pub const TYPES: &[&str] = &[
    "string",
    "int",
    "float",
    "bool",
    "timestamp",
    "peer",
    "enum",
    "array",
    "object",
];

/// The declared collections of one peer, by name.
#[derive(Clone, Debug, Default)]
pub struct Collections {
    /// Each collection by its name.
    pub by_name: BTreeMap<String, Collection>,
}

/// One declared collection.
#[derive(Clone, Debug)]
pub struct Collection {
    /// Its name.
    pub name: String,
    /// Its fields.
    pub fields: BTreeMap<String, Field>,
    /// How a record's key is chosen.
    pub key: Key,
    /// The fields queries may select and order on.
    pub indexes: Vec<String>,
}

/// How a record's key is chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// The host makes one at insert.
    Generated,
    /// The value of this required field.
    Field(String),
}

/// One declared field.
#[derive(Clone, Debug)]
pub struct Field {
    /// Its type and rules.
    pub kind: FieldType,
    /// Whether every record must have it.
    pub required: bool,
}

/// A field's type, with its rules.
#[derive(Clone, Debug)]
pub enum FieldType {
    /// Text of at most `max_length` characters, matching `pattern`.
    String {
        /// Most characters.
        max_length: Option<u64>,
        /// A pattern the whole value must match, and its source.
        pattern: Option<(regex::Regex, String)>,
    },
    /// A 64-bit integer within `min..=max`.
    Int {
        /// Least value.
        min: Option<i64>,
        /// Greatest value.
        max: Option<i64>,
    },
    /// A finite number within `min..=max`.
    Float {
        /// Least value.
        min: Option<f64>,
        /// Greatest value.
        max: Option<f64>,
    },
    /// `true` or `false`.
    Bool,
    /// An RFC 3339 time in UTC.
    Timestamp,
    /// A peer's `did:key` id.
    Peer,
    /// One of `values`.
    Enum(Vec<String>),
    /// A list of `items`, at most `max_items`.
    Array {
        /// The items' type.
        items: Box<FieldType>,
        /// Most items.
        max_items: Option<u64>,
    },
    /// An object of declared fields.
    Object(BTreeMap<String, Field>),
}

/// A record refused: the field (a path: `meta.source`, `tags[2]`) and
/// the rule it breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{collection}: `{field}` {rule}")]
pub struct RecordError {
    /// The collection.
    pub collection: String,
    /// The field's path, or `(record)` for the record itself.
    pub field: String,
    /// What is wrong.
    pub rule: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CollectionDecl {
    #[serde(default)]
    key: Option<Spanned<String>>,
    #[serde(default)]
    indexes: Vec<Spanned<String>>,
    fields: BTreeMap<String, Spanned<FieldDecl>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldDecl {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    max_length: Option<u64>,
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    min: Option<toml::Value>,
    #[serde(default)]
    max: Option<toml::Value>,
    #[serde(default)]
    values: Option<Vec<String>>,
    #[serde(default)]
    items: Option<Box<FieldDecl>>,
    #[serde(default)]
    max_items: Option<u64>,
    #[serde(default)]
    fields: Option<BTreeMap<String, Spanned<FieldDecl>>>,
}

/// A valid name of a collection or field: a letter or `_`, then letters,
/// digits and `_`, at most 64 in all.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Collections {
    /// Reads `peer_dir/collections.toml`; none declared when it is absent.
    pub fn load(peer_dir: &Path) -> Result<Collections, DeploymentError> {
        let path = peer_dir.join(FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Collections::parse(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Collections::default()),
            Err(e) => Err(DeploymentError::file(&path, format!("cannot read: {e}"))),
        }
    }

    /// Parses and checks the declaration `text` of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Collections, DeploymentError> {
        let decls: BTreeMap<String, Spanned<CollectionDecl>> =
            crate::config::parse_toml(path, text)?;
        let at = |span: std::ops::Range<usize>, message: String| {
            DeploymentError::at_offset(path, text, span.start, message)
        };
        if decls.len() > MAX_COLLECTIONS {
            return Err(DeploymentError::file(
                path,
                format!(
                    "{} collections declared, more than {MAX_COLLECTIONS}",
                    decls.len()
                ),
            ));
        }
        let mut by_name = BTreeMap::new();
        for (name, decl) in decls {
            let span = decl.span();
            let decl = decl.into_inner();
            if !valid_name(&name) {
                return Err(at(
                    span,
                    format!(
                        "`{name}` is not a valid collection name: a letter or `_`, then letters, digits or `_`, at most 64"
                    ),
                ));
            }
            let fields =
                fields(&decl.fields, 1).map_err(|(span, m)| at(span, format!("[{name}] {m}")))?;
            if fields.is_empty() {
                return Err(at(span, format!("[{name}] declares no field")));
            }
            let key = match decl.key {
                None => Key::Generated,
                Some(key) if key.get_ref() == "generated" => Key::Generated,
                Some(key) => {
                    let key_span = key.span();
                    let key = key.into_inner();
                    match fields.get(&key) {
                        Some(Field {
                            required: true,
                            kind:
                                FieldType::String { .. }
                                | FieldType::Int { .. }
                                | FieldType::Peer
                                | FieldType::Enum(_),
                        }) => Key::Field(key),
                        Some(Field {
                            required: false, ..
                        }) => {
                            return Err(at(
                                key_span,
                                format!("[{name}] key `{key}` must be a required field"),
                            ));
                        }
                        Some(_) => {
                            return Err(at(
                                key_span,
                                format!(
                                    "[{name}] key `{key}` must be a string, int, peer or enum field"
                                ),
                            ));
                        }
                        None => {
                            return Err(at(
                                key_span,
                                format!(
                                    "[{name}] key `{key}` is not a field (or say \"generated\")"
                                ),
                            ));
                        }
                    }
                }
            };
            let mut indexes = Vec::new();
            let mut seen = BTreeSet::new();
            for index in decl.indexes {
                let index_span = index.span();
                let index = index.into_inner();
                match fields.get(&index).map(|f| &f.kind) {
                    None => {
                        return Err(at(
                            index_span,
                            format!("[{name}] index `{index}` is not a field"),
                        ));
                    }
                    Some(FieldType::Array { .. } | FieldType::Object(_)) => {
                        return Err(at(
                            index_span,
                            format!(
                                "[{name}] index `{index}` is an array or object: only single values are indexed"
                            ),
                        ));
                    }
                    Some(_) => {}
                }
                if !seen.insert(index.clone()) {
                    return Err(at(
                        index_span,
                        format!("[{name}] index `{index}` is listed twice"),
                    ));
                }
                indexes.push(index);
            }
            by_name.insert(
                name.clone(),
                Collection {
                    name,
                    fields,
                    key,
                    indexes,
                },
            );
        }
        Ok(Collections { by_name })
    }
}

type DeclError = (std::ops::Range<usize>, String);

fn fields(
    decls: &BTreeMap<String, Spanned<FieldDecl>>,
    depth: usize,
) -> Result<BTreeMap<String, Field>, DeclError> {
    if decls.len() > MAX_FIELDS {
        let span = decls.values().next().map_or(0..0, Spanned::span);
        return Err((
            span,
            format!("{} fields, more than {MAX_FIELDS}", decls.len()),
        ));
    }
    let mut out = BTreeMap::new();
    for (name, decl) in decls {
        let span = decl.span();
        if !valid_name(name) {
            return Err((
                span,
                format!(
                    "`{name}` is not a valid field name: a letter or `_`, then letters, digits or `_`, at most 64"
                ),
            ));
        }
        let kind = field_type(decl.get_ref(), depth)
            .map_err(|message| (span.clone(), format!("field `{name}`: {message}")))?;
        out.insert(
            name.clone(),
            Field {
                kind,
                required: decl.get_ref().required,
            },
        );
    }
    Ok(out)
}

fn field_type(decl: &FieldDecl, depth: usize) -> Result<FieldType, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    let kind = decl.kind.as_str();
    // Each option belongs to some types only.
    let allowed: &[&str] = match kind {
        "string" => &["max_length", "pattern"],
        "int" | "float" => &["min", "max"],
        "enum" => &["values"],
        "array" => &["items", "max_items"],
        "object" => &["fields"],
        "bool" | "timestamp" | "peer" => &[],
        other => {
            return Err(format!("type `{other}` is not one of {}", TYPES.join(", ")));
        }
    };
    let given = [
        ("max_length", decl.max_length.is_some()),
        ("pattern", decl.pattern.is_some()),
        ("min", decl.min.is_some()),
        ("max", decl.max.is_some()),
        ("values", decl.values.is_some()),
        ("items", decl.items.is_some()),
        ("max_items", decl.max_items.is_some()),
        ("fields", decl.fields.is_some()),
    ];
    if let Some((option, _)) = given
        .iter()
        .find(|(option, set)| *set && !allowed.contains(option))
    {
        let article = if matches!(kind, "int" | "enum" | "array" | "object") {
            "an"
        } else {
            "a"
        };
        return Err(format!("`{option}` does not apply to {article} {kind}"));
    }
    Ok(match kind {
        "string" => {
            if let Some(max) = decl.max_length
                && !(1..=MAX_STRING).contains(&max)
            {
                return Err(format!("`max_length` = {max} must be 1 to {MAX_STRING}"));
            }
            let pattern = match &decl.pattern {
                None => None,
                Some(source) => {
                    let regex = regex::RegexBuilder::new(source)
                        .size_limit(MAX_PATTERN)
                        .build()
                        .map_err(|e| format!("`pattern` is not a regular expression: {e}"))?;
                    Some((regex, source.clone()))
                }
            };
            FieldType::String {
                max_length: decl.max_length,
                pattern,
            }
        }
        "int" => {
            let (min, max) = bounds(decl, "an int must be an integer", |value| match value {
                toml::Value::Integer(n) => Some(*n),
                _ => None,
            })?;
            FieldType::Int { min, max }
        }
        "float" => {
            let (min, max) = bounds(
                decl,
                "a float must be a finite number",
                |value| match value {
                    toml::Value::Float(x) if x.is_finite() => Some(*x),
                    toml::Value::Integer(n) => Some(*n as f64),
                    _ => None,
                },
            )?;
            FieldType::Float { min, max }
        }
        "bool" => FieldType::Bool,
        "timestamp" => FieldType::Timestamp,
        "peer" => FieldType::Peer,
        "enum" => {
            let values = decl.values.clone().unwrap_or_default();
            if values.is_empty() {
                return Err("an enum needs `values`, at least one".to_owned());
            }
            if values.len() > MAX_ENUM_VALUES {
                return Err(format!("more than {MAX_ENUM_VALUES} `values`"));
            }
            let mut seen = BTreeSet::new();
            if let Some(twice) = values.iter().find(|v| !seen.insert(v.as_str())) {
                return Err(format!("`values` has \"{twice}\" twice"));
            }
            FieldType::Enum(values)
        }
        "array" => {
            let Some(items) = &decl.items else {
                return Err("an array needs `items`, the type of its items".to_owned());
            };
            if items.required {
                return Err("`required` does not apply to `items`".to_owned());
            }
            if let Some(max) = decl.max_items
                && !(1..=MAX_ITEMS).contains(&max)
            {
                return Err(format!("`max_items` = {max} must be 1 to {MAX_ITEMS}"));
            }
            FieldType::Array {
                items: Box::new(field_type(items, depth + 1).map_err(|m| format!("items: {m}"))?),
                max_items: decl.max_items,
            }
        }
        _ => {
            let Some(decls) = &decl.fields else {
                return Err("an object needs `fields`".to_owned());
            };
            let nested = fields(decls, depth + 1).map_err(|(_, m)| m)?;
            if nested.is_empty() {
                return Err("an object needs `fields`, at least one".to_owned());
            }
            FieldType::Object(nested)
        }
    })
}

/// The `min` and `max` of a numeric field, each read by `number`, the one
/// not above the other; `must` completes "`min` of …" when one is not a
/// number of the type.
fn bounds<T: PartialOrd + std::fmt::Display + Copy>(
    decl: &FieldDecl,
    must: &str,
    number: impl Fn(&toml::Value) -> Option<T>,
) -> Result<(Option<T>, Option<T>), String> {
    let read = |value: &Option<toml::Value>, what: &str| match value {
        None => Ok(None),
        Some(value) => number(value)
            .map(Some)
            .ok_or_else(|| format!("`{what}` of {must}, not {value}")),
    };
    let (min, max) = (read(&decl.min, "min")?, read(&decl.max, "max")?);
    if let (Some(min), Some(max)) = (min, max)
        && min > max
    {
        return Err(format!("`min` = {min} is above `max` = {max}"));
    }
    Ok((min, max))
}

impl Collections {
    /// The declaration as `logic show` lists it: per collection its key,
    /// indexes and fields (name, type with its rules, required).
    pub fn describe(&self) -> Value {
        Value::Array(
            self.by_name
                .values()
                .map(|collection| {
                    serde_json::json!({
                        "name": collection.name,
                        "key": match &collection.key {
                            Key::Generated => "generated".to_owned(),
                            Key::Field(field) => field.clone(),
                        },
                        "indexes": collection.indexes,
                        "fields": collection
                            .fields
                            .iter()
                            .map(|(name, field)| serde_json::json!({
                                "name": name,
                                "type": field.kind.describe(),
                                "required": field.required,
                            }))
                            .collect::<Vec<_>>(),
                    })
                })
                .collect(),
        )
    }
}

impl FieldType {
    /// The type and its rules in a few words: `string (max_length 80,
    /// pattern "^[a-z]+$")`, `array of int (0..=9), max_items 3`.
    pub fn describe(&self) -> String {
        match self {
            FieldType::String {
                max_length,
                pattern,
            } => {
                let mut rules = Vec::new();
                if let Some(max) = max_length {
                    rules.push(format!("max_length {max}"));
                }
                if let Some((_, source)) = pattern {
                    rules.push(format!("pattern {source:?}"));
                }
                with_rules("string", &rules)
            }
            FieldType::Int { min, max } => match (min, max) {
                (None, None) => "int".to_owned(),
                _ => format!("int ({})", range(min, max)),
            },
            FieldType::Float { min, max } => match (min, max) {
                (None, None) => "float".to_owned(),
                _ => format!("float ({})", range(min, max)),
            },
            FieldType::Bool => "bool".to_owned(),
            FieldType::Timestamp => "timestamp".to_owned(),
            FieldType::Peer => "peer".to_owned(),
            FieldType::Enum(values) => format!("enum ({})", values.join(" | ")),
            FieldType::Array { items, max_items } => match max_items {
                Some(max) => format!("array of {}, max_items {max}", items.describe()),
                None => format!("array of {}", items.describe()),
            },
            FieldType::Object(fields) => format!(
                "object {{{}}}",
                fields
                    .iter()
                    .map(|(name, field)| format!(
                        "{name}{}: {}",
                        if field.required { "" } else { "?" },
                        field.kind.describe()
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

fn with_rules(kind: &str, rules: &[String]) -> String {
    if rules.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind} ({})", rules.join(", "))
    }
}

impl Collection {
    /// Checks `record` against the declaration: an object holding every
    /// required field and only declared ones, each by its rules.
    pub fn check(&self, record: &Value) -> Result<(), RecordError> {
        let refuse = |field: String, rule: String| RecordError {
            collection: self.name.clone(),
            field,
            rule,
        };
        let Some(object) = record.as_object() else {
            return Err(refuse(
                "(record)".to_owned(),
                format!("must be an object, not {}", kind_of(record)),
            ));
        };
        check_object(&self.fields, object, "").map_err(|(field, rule)| refuse(field, rule))
    }
}

fn check_object(
    fields: &BTreeMap<String, Field>,
    object: &serde_json::Map<String, Value>,
    prefix: &str,
) -> Result<(), (String, String)> {
    let path = |name: &str| {
        if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        }
    };
    for name in object.keys() {
        if !fields.contains_key(name) {
            let mut shown = name.clone();
            crate::error::truncate_with_ellipsis(&mut shown, 64);
            return Err((path(&shown), "is not a declared field".to_owned()));
        }
    }
    for (name, field) in fields {
        match object.get(name) {
            None | Some(Value::Null) if field.required => {
                return Err((path(name), "is required".to_owned()));
            }
            None | Some(Value::Null) => {}
            Some(value) => check_value(&field.kind, value, &path(name))?,
        }
    }
    Ok(())
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_value(kind: &FieldType, value: &Value, path: &str) -> Result<(), (String, String)> {
    let refuse = |rule: String| Err((path.to_owned(), rule));
    match kind {
        FieldType::String {
            max_length,
            pattern,
        } => {
            let Some(text) = value.as_str() else {
                return refuse(format!("must be a string, not {}", kind_of(value)));
            };
            if let Some(max) = max_length
                && text.chars().count() as u64 > *max
            {
                return refuse(format!("is longer than {max} characters (max_length)"));
            }
            if let Some((regex, source)) = pattern
                && !regex.is_match(text)
            {
                return refuse(format!("does not match the pattern {source:?}"));
            }
        }
        FieldType::Int { min, max } => {
            let Some(n) = value.as_i64() else {
                return refuse(format!(
                    "must be a 64-bit integer, not {}",
                    if value.is_number() {
                        "this number"
                    } else {
                        kind_of(value)
                    }
                ));
            };
            if min.is_some_and(|min| n < min) || max.is_some_and(|max| n > max) {
                return refuse(format!("= {n} is outside {}", range(min, max)));
            }
        }
        FieldType::Float { min, max } => {
            let Some(x) = value.as_f64().filter(|x| x.is_finite()) else {
                return refuse(format!("must be a number, not {}", kind_of(value)));
            };
            if min.is_some_and(|min| x < min) || max.is_some_and(|max| x > max) {
                return refuse(format!("= {x} is outside {}", range(min, max)));
            }
        }
        FieldType::Bool => {
            if !value.is_boolean() {
                return refuse(format!("must be true or false, not {}", kind_of(value)));
            }
        }
        FieldType::Timestamp => {
            let valid = value
                .as_str()
                .is_some_and(|text| humantime::parse_rfc3339(text).is_ok());
            if !valid {
                return refuse(
                    "must be an RFC 3339 time in UTC, like \"2026-12-08T10:00:00Z\"".to_owned(),
                );
            }
        }
        FieldType::Peer => {
            let valid = value
                .as_str()
                .is_some_and(|text| text.parse::<crate::identity::PeerId>().is_ok());
            if !valid {
                return refuse("must be a peer's did:key id".to_owned());
            }
        }
        FieldType::Enum(values) => {
            let valid = value
                .as_str()
                .is_some_and(|text| values.iter().any(|v| v == text));
            if !valid {
                return refuse(format!("must be one of {}", values.join(", ")));
            }
        }
        FieldType::Array { items, max_items } => {
            let Some(list) = value.as_array() else {
                return refuse(format!("must be an array, not {}", kind_of(value)));
            };
            if let Some(max) = max_items
                && list.len() as u64 > *max
            {
                return refuse(format!("has more than {max} items (max_items)"));
            }
            for (i, item) in list.iter().enumerate() {
                check_value(items, item, &format!("{path}[{i}]"))?;
            }
        }
        FieldType::Object(fields) => {
            let Some(object) = value.as_object() else {
                return refuse(format!("must be an object, not {}", kind_of(value)));
            };
            check_object(fields, object, path)?;
        }
    }
    Ok(())
}

fn range<T: std::fmt::Display>(min: &Option<T>, max: &Option<T>) -> String {
    match (min, max) {
        (Some(min), Some(max)) => format!("{min}..={max}"),
        (Some(min), None) => format!("{min} and above"),
        (None, Some(max)) => format!("{max} and below"),
        (None, None) => "its range".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POSTS: &str = r#"
[posts]
key = "slug"
indexes = ["author", "published"]

[posts.fields]
slug = { type = "string", pattern = "^[a-z0-9-]+$", max_length = 80, required = true }
title = { type = "string", max_length = 20, required = true }
author = { type = "peer", required = true }
published = { type = "bool" }
score = { type = "int", min = 0, max = 100 }
rating = { type = "float", min = 0.0, max = 5.0 }
created = { type = "timestamp" }
state = { type = "enum", values = ["draft", "live"] }
tags = { type = "array", items = { type = "string", max_length = 8 }, max_items = 3 }
meta = { type = "object", fields = { source = { type = "string", required = true } } }
"#;

    const ALICE: &str = "did:key:z6MkjyHodipydnk4n3marjbTQNNosHhJ2AKXv3r9yR2zYwo7";

    fn posts() -> Collection {
        let collections = Collections::parse(Path::new("collections.toml"), POSTS)
            .unwrap_or_else(|e| panic!("{e}"));
        collections.by_name["posts"].clone()
    }

    fn good() -> Value {
        json!({
            "slug": "hello-world", "title": "Hello", "author": ALICE, "published": true,
            "score": 7, "rating": 4.5, "created": "2026-12-08T10:00:00Z", "state": "live",
            "tags": ["a", "b"], "meta": {"source": "cli"}
        })
    }

    #[test]
    fn a_declaration_of_every_type_is_read_with_its_key_and_indexes() {
        let posts = posts();
        assert_eq!(posts.key, Key::Field("slug".into()));
        assert_eq!(posts.indexes, ["author", "published"]);
        assert_eq!(posts.fields.len(), 10);
        assert!(posts.fields["title"].required && !posts.fields["score"].required);
        assert!(posts.check(&good()).is_ok(), "{:?}", posts.check(&good()));
        // Only the required fields is enough.
        assert!(
            posts
                .check(&json!({"slug": "a", "title": "t", "author": ALICE}))
                .is_ok()
        );
    }

    /// Each record breaks one rule: the error names the field and the rule.
    #[test]
    fn every_rule_refuses_a_record_naming_the_field() {
        let posts = posts();
        let cases: &[(&str, Value, &str)] = &[
            (
                "slug",
                json!("Hello World"),
                "does not match the pattern \"^[a-z0-9-]+$\"",
            ),
            (
                "title",
                json!("x".repeat(21)),
                "is longer than 20 characters (max_length)",
            ),
            ("title", json!(5), "must be a string, not a number"),
            ("author", json!("alice"), "must be a peer's did:key id"),
            (
                "published",
                json!("yes"),
                "must be true or false, not a string",
            ),
            ("score", json!(101), "= 101 is outside 0..=100"),
            (
                "score",
                json!(1.5),
                "must be a 64-bit integer, not this number",
            ),
            ("rating", json!(-1), "= -1 is outside 0..=5"),
            (
                "created",
                json!("yesterday"),
                "must be an RFC 3339 time in UTC, like \"2026-12-08T10:00:00Z\"",
            ),
            ("state", json!("gone"), "must be one of draft, live"),
            (
                "tags",
                json!(["a", "b", "c", "d"]),
                "has more than 3 items (max_items)",
            ),
            ("tags", json!("a"), "must be an array, not a string"),
            ("meta", json!({}), "is required"),
            (
                "meta",
                json!({"source": "x", "extra": 1}),
                "is not a declared field",
            ),
        ];
        for (field, value, rule) in cases {
            let mut record = good();
            record[*field] = value.clone();
            let error = posts.check(&record).expect_err(field);
            assert!(error.rule == *rule, "{field}: {error}");
        }
        let mut record = good();
        record["tags"] = json!(["a", "much too long"]);
        let error = posts.check(&record).expect_err("tags");
        assert_eq!(error.field, "tags[1]");
        let mut record = good();
        record["meta"] = json!({"source": 1});
        assert_eq!(posts.check(&record).expect_err("meta").field, "meta.source");
        let mut record = good();
        record.as_object_mut().map(|o| o.remove("title"));
        assert_eq!(
            posts.check(&record).expect_err("title").to_string(),
            "posts: `title` is required"
        );
        record["title"] = json!("t");
        record["colour"] = json!("red");
        assert_eq!(
            posts.check(&record).expect_err("colour").to_string(),
            "posts: `colour` is not a declared field"
        );
        assert_eq!(
            posts.check(&json!([1])).expect_err("array").to_string(),
            "posts: `(record)` must be an object, not an array"
        );
    }

    /// Bad declarations, each refused with its line and the message.
    #[test]
    fn bad_declarations_are_refused_with_line_and_reason() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "[p.fields]\nx = { type = \"text\" }\n",
                2,
                "[p] field `x`: type `text` is not one of string, int, float, bool, timestamp, peer, enum, array, object",
            ),
            (
                "[p.fields]\nx = { type = \"int\", pattern = \"a\" }\n",
                2,
                "[p] field `x`: `pattern` does not apply to an int",
            ),
            (
                "[p.fields]\nx = { type = \"string\", pattern = \"(\" }\n",
                2,
                "[p] field `x`: `pattern` is not a regular expression",
            ),
            (
                "[p.fields]\nx = { type = \"string\", max_length = 0 }\n",
                2,
                "[p] field `x`: `max_length` = 0 must be 1 to 1048576",
            ),
            (
                "[p.fields]\nx = { type = \"int\", min = 5, max = 1 }\n",
                2,
                "[p] field `x`: `min` = 5 is above `max` = 1",
            ),
            (
                "[p.fields]\nx = { type = \"int\", min = 0.5 }\n",
                2,
                "[p] field `x`: `min` of an int must be an integer, not 0.5",
            ),
            (
                "[p.fields]\nx = { type = \"float\", max = \"big\" }\n",
                2,
                "[p] field `x`: `max` of a float must be a finite number",
            ),
            (
                "[p.fields]\nx = { type = \"enum\" }\n",
                2,
                "[p] field `x`: an enum needs `values`, at least one",
            ),
            (
                "[p.fields]\nx = { type = \"enum\", values = [\"a\", \"a\"] }\n",
                2,
                "[p] field `x`: `values` has \"a\" twice",
            ),
            (
                "[p.fields]\nx = { type = \"array\" }\n",
                2,
                "[p] field `x`: an array needs `items`, the type of its items",
            ),
            (
                "[p.fields]\nx = { type = \"array\", items = { type = \"nope\" } }\n",
                2,
                "[p] field `x`: items: type `nope` is not one of",
            ),
            (
                "[p.fields]\nx = { type = \"object\" }\n",
                2,
                "[p] field `x`: an object needs `fields`",
            ),
            (
                "[p.fields]\n\"a b\" = { type = \"bool\" }\n",
                2,
                "[p] `a b` is not a valid field name",
            ),
            (
                "[\"9p\".fields]\nx = { type = \"bool\" }\n",
                1,
                "`9p` is not a valid collection name",
            ),
            (
                "[p]\nkey = \"x\"\n[p.fields]\nx = { type = \"string\" }\n",
                2,
                "[p] key `x` must be a required field",
            ),
            (
                "[p]\nkey = \"x\"\n[p.fields]\nx = { type = \"bool\", required = true }\n",
                2,
                "[p] key `x` must be a string, int, peer or enum field",
            ),
            (
                "[p]\nkey = \"y\"\n[p.fields]\nx = { type = \"bool\" }\n",
                2,
                "[p] key `y` is not a field (or say \"generated\")",
            ),
            (
                "[p]\nindexes = [\"x\", \"z\"]\n[p.fields]\nx = { type = \"bool\" }\n",
                2,
                "[p] index `z` is not a field",
            ),
            (
                "[p]\nindexes = [\"x\", \"x\"]\n[p.fields]\nx = { type = \"bool\" }\n",
                2,
                "[p] index `x` is listed twice",
            ),
            (
                "[p]\nindexes = [\"t\"]\n[p.fields]\nt = { type = \"array\", items = { type = \"int\" } }\n",
                2,
                "[p] index `t` is an array or object",
            ),
            (
                "[p.fields]\nx = { type = \"bool\", colour = 1 }\n",
                2,
                "unknown field `colour`",
            ),
            ("[p]\nfields = {}\n", 1, "[p] declares no field"),
        ];
        for (text, line, message) in cases {
            let error = Collections::parse(Path::new("collections.toml"), text).expect_err(text);
            let shown = error.to_string();
            assert!(shown.contains(message), "{text:?}: {shown}");
            assert!(
                shown.contains(&format!("collections.toml:{line}")),
                "{text:?} at line {line}: {shown}"
            );
        }
        // Nested deeper than allowed.
        let mut nested = "{ type = \"bool\" }".to_owned();
        for _ in 0..MAX_DEPTH {
            nested = format!("{{ type = \"array\", items = {nested} }}");
        }
        let text = format!("[p.fields]\nx = {nested}\n");
        let error = Collections::parse(Path::new("collections.toml"), &text).expect_err("deep");
        assert!(
            error.to_string().contains("nested deeper than 8 levels"),
            "{error}"
        );
    }

    #[test]
    fn a_declaration_is_described_field_by_field() {
        let collections = Collections::parse(Path::new("collections.toml"), POSTS)
            .unwrap_or_else(|e| panic!("{e}"));
        let described = collections.describe();
        let posts = &described[0];
        assert_eq!(posts["name"], "posts");
        assert_eq!(posts["key"], "slug");
        assert_eq!(posts["indexes"], json!(["author", "published"]));
        let type_of = |name: &str| {
            posts["fields"]
                .as_array()
                .and_then(|fields| fields.iter().find(|f| f["name"] == name))
                .map(|f| f["type"].as_str().unwrap_or_default().to_owned())
                .unwrap_or_default()
        };
        assert_eq!(
            type_of("slug"),
            "string (max_length 80, pattern \"^[a-z0-9-]+$\")"
        );
        assert_eq!(type_of("score"), "int (0..=100)");
        assert_eq!(type_of("state"), "enum (draft | live)");
        assert_eq!(
            type_of("tags"),
            "array of string (max_length 8), max_items 3"
        );
        assert_eq!(type_of("meta"), "object {source: string}");
    }

    #[test]
    fn no_file_declares_no_collection() {
        let dir = tempfile::tempdir().expect("dir");
        let collections = Collections::load(dir.path()).expect("no file");
        assert!(collections.by_name.is_empty());
    }
}
