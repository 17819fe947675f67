//! JSON ↔ Rhai values, and Rhai errors → the typed errors of `wit/peer.wit`.
//!
//! A capability error reaches a script as a thrown object map
//! `#{kind, message, action, resource}`, so `try { … } catch (e) { e.kind }`
//! works; uncaught, it becomes the invocation's typed error again.

use peerhost_guest_sdk::{Error, ErrorKind};
use rhai::{Dynamic, EvalAltResult, Map, ParseError, Position};

/// Parses a JSON text into a Rhai value; `what` names the input in errors.
pub fn from_json(text: &str, what: &str) -> Result<Dynamic, Error> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        Error::Invalid(format!(
            "{what} is not valid JSON: {e} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    rhai::serde::to_dynamic(&value).map_err(|e| Error::Invalid(format!("{what}: {e}")))
}

/// Call arguments: a JSON array is the positional arguments; any other JSON
/// value is the one argument.
pub fn args(text: &str) -> Result<Vec<Dynamic>, Error> {
    let value = from_json(text, "args")?;
    Ok(match value.try_cast_result::<rhai::Array>() {
        Ok(array) => array,
        Err(value) => vec![value],
    })
}

/// A Rhai value as a JSON text.
pub fn to_json(value: &Dynamic) -> Result<String, Error> {
    let json: serde_json::Value = rhai::serde::from_dynamic(value)
        .map_err(|e| Error::Failed(format!("the result cannot be expressed as JSON: {e}")))?;
    serde_json::to_string(&json)
        .map_err(|e| Error::Failed(format!("the result cannot be expressed as JSON: {e}")))
}

/// A capability error as the value a script can catch.
pub fn throw(error: Error) -> Box<EvalAltResult> {
    let mut map = Map::new();
    map.insert("kind".into(), error.kind().as_str().into());
    map.insert("message".into(), error.message().into());
    if let Error::Denied(denial) = &error {
        map.insert("action".into(), denial.action.clone().into());
        map.insert("resource".into(), denial.resource.clone().into());
    }
    Box::new(EvalAltResult::ErrorRuntime(map.into(), Position::NONE))
}

/// A Rhai syntax error in `source`, with line and column.
pub fn parse_error(source: &str, error: ParseError) -> Error {
    let ParseError(kind, pos) = error;
    Error::Invalid(format!("{source}: syntax error{}: {kind}", at(pos)))
}

fn at(pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(line), Some(column)) => format!(" at line {line}, column {column}"),
        (Some(line), None) => format!(" at line {line}"),
        _ => String::new(),
    }
}

/// An evaluation error as a typed error: a thrown capability error keeps its
/// kind; limits become `limit`; everything else is `failed`.
#[allow(
    clippy::boxed_local,
    reason = "Rhai hands its errors over boxed; this is the map_err callback"
)]
pub fn eval_error(error: Box<EvalAltResult>) -> Error {
    match *error {
        EvalAltResult::ErrorRuntime(value, pos) => match typed(&value) {
            Some(error) => error,
            None => Error::Failed(format!("script error{}: {value}", at(pos))),
        },
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
        | EvalAltResult::ErrorInModule(_, inner, _) => eval_error(inner),
        EvalAltResult::ErrorModuleNotFound(module, pos) => Error::NotFound(format!(
            "no module `{module}`{} (modules are logic/<name>.rhai, then the library's lib/<name>.rhai)",
            at(pos)
        )),
        EvalAltResult::ErrorFunctionNotFound(signature, pos) => Error::NotFound(format!(
            "no function {signature}{} (a module's functions are those it defines, or its library namesake's when it extends it)",
            at(pos)
        )),
        EvalAltResult::ErrorParsing(kind, pos) => {
            Error::Invalid(format!("syntax error{}: {kind}", at(pos)))
        }
        ref e @ (EvalAltResult::ErrorTooManyOperations(_)
        | EvalAltResult::ErrorTooManyModules(_)
        | EvalAltResult::ErrorTooManyVariables(_)
        | EvalAltResult::ErrorStackOverflow(_)
        | EvalAltResult::ErrorDataTooLarge(..)
        | EvalAltResult::ErrorTerminated(..)) => Error::Limit(e.to_string()),
        e => Error::Failed(e.to_string()),
    }
}

fn typed(value: &Dynamic) -> Option<Error> {
    let map = value.read_lock::<Map>()?;
    let kind = ErrorKind::parse(map.get("kind")?.clone().into_string().ok()?.as_str())?;
    let field = |name: &str| {
        map.get(name)
            .and_then(|v| v.clone().into_string().ok())
            .unwrap_or_default()
    };
    Some(match kind {
        ErrorKind::Denied if !field("action").is_empty() => {
            Error::denied(field("action"), field("resource"))
        }
        kind => Error::new(kind, field("message")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> rhai::Engine {
        let mut engine = rhai::Engine::new_raw();
        engine.set_max_operations(1_000);
        engine
    }

    #[test]
    fn a_thrown_capability_error_keeps_its_kind() {
        let error = eval_error(throw(Error::denied("kv.get", "Key::\"x\"")));
        assert!(
            matches!(&error, Error::Denied(d) if d.action == "kv.get" && d.resource == "Key::\"x\""),
            "{error:?}"
        );
        let error = eval_error(throw(Error::NotFound("gone".into())));
        assert!(
            matches!(&error, Error::NotFound(m) if m == "gone"),
            "{error:?}"
        );
    }

    #[test]
    fn syntax_errors_are_invalid_with_line_and_column() {
        let Err(e) = engine().compile("let a = 1;\nlet b = ;") else {
            panic!("compiled");
        };
        let Error::Invalid(message) = parse_error("script", e) else {
            panic!("not invalid");
        };
        assert!(
            message.starts_with("script: syntax error at line 2, column"),
            "{message}"
        );
    }

    #[test]
    fn limits_are_limit_and_throws_are_failed() {
        let Err(e) = engine().eval::<()>("loop {}") else {
            panic!("ran")
        };
        assert!(matches!(eval_error(e), Error::Limit(_)));
        let Err(e) = engine().eval::<()>("throw \"boom\"") else {
            panic!("ran")
        };
        assert!(matches!(eval_error(e), Error::Failed(m) if m.contains("boom")));
    }

    #[test]
    fn args_are_positional_for_arrays_and_single_otherwise() {
        assert_eq!(args("[1, \"a\"]").map(|a| a.len()).ok(), Some(2));
        assert_eq!(args("{\"k\": 1}").map(|a| a.len()).ok(), Some(1));
        assert!(matches!(args("[1,"), Err(Error::Invalid(_))));
    }

    #[test]
    fn json_is_read_to_json_depth_and_no_deeper() {
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let depth = crate::limits::JSON_DEPTH;
        assert!(from_json(&nested(depth), "deepest").is_ok());
        assert!(matches!(
            from_json(&nested(depth + 1), "too deep"),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn results_round_trip_through_json() {
        let value =
            from_json("{\"a\": [1, 2.5, null, true, \"x\"]}", "test").map_err(|e| e.message());
        let value = value.unwrap_or_default();
        assert_eq!(
            to_json(&value).ok().as_deref(),
            Some("{\"a\":[1,2.5,null,true,\"x\"]}")
        );
    }
}
