//! The peer's logic: `logic/main.rhai` exports the peer's functions; every
//! other `logic/<name>.rhai` is a module that `import "<name>" as name;` loads,
//! and so is every `lib/<name>.rhai` of the deployment's library (see
//! [`resolve_name`] for the order).
//! The host reads the files and hands them over in `prepare`; each is
//! compiled when a request first needs it (`main.rhai` for a call or an
//! `on_script` hook, a module when imported), so a script that needs no
//! logic pays for none.

use crate::convert;
use peerhost_guest_sdk::Error;
use rhai::{AST, Engine, Module, ModuleResolver, Position, Scope, Shared};
type SharedModule = Shared<Module>;
use peerhost_guest_sdk::bindings::exports::peerhost::peer::invocation::LogicModule;
use std::cell::{OnceCell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

/// The peer's logic: sources read in `prepare`, compiled on first need.
#[allow(
    missing_debug_implementations,
    reason = "rhai::AST has no useful Debug"
)]
pub struct Logic {
    /// The text of `main.rhai`, when the peer has one.
    main_source: Option<String>,
    /// `main.rhai` compiled (an empty script when the peer has none).
    main: OnceCell<AST>,
}

thread_local! {
    /// The `logic/<name>.rhai` modules other than `main`, by name: source
    /// text until first imported, then compiled.
    static MODULES: RefCell<BTreeMap<String, Rc<Source>>> = const { RefCell::new(BTreeMap::new()) };
    /// Modules evaluated for the current request, by name.
    static LOADED: RefCell<BTreeMap<String, SharedModule>> = const { RefCell::new(BTreeMap::new()) };
}

/// A logic module, compiled once it is first needed.
struct Source {
    text: String,
    ast: OnceCell<AST>,
}

impl Logic {
    /// The logic the host read from `logic/`.
    pub fn new(files: Vec<LogicModule>) -> Logic {
        let mut main_source = None;
        let mut modules = BTreeMap::new();
        for file in files {
            if file.name == "main" {
                main_source = Some(file.source);
            } else {
                modules.insert(
                    file.name,
                    Rc::new(Source {
                        text: file.source,
                        ast: OnceCell::new(),
                    }),
                );
            }
        }
        MODULES.with(|m| *m.borrow_mut() = modules);
        LOADED.with(|l| l.borrow_mut().clear());
        Logic {
            main_source,
            main: OnceCell::new(),
        }
    }

    /// `main.rhai`, compiled on first use.
    pub fn main(&self) -> Result<&AST, Error> {
        if let Some(ast) = self.main.get() {
            return Ok(ast);
        }
        let ast = match &self.main_source {
            Some(text) => crate::with_engine(|engine| engine.compile(text))
                .map_err(|e| convert::parse_error("logic/main.rhai", e))?,
            None => AST::empty(),
        };
        Ok(self.main.get_or_init(|| ast))
    }

    /// Compiles `main.rhai` and every module now, for a snapshot that holds
    /// them compiled (`prepared.compile`). Nothing is evaluated.
    pub fn compile_all(&self) -> Result<(), Error> {
        self.main()?;
        let sources: Vec<(String, Rc<Source>)> = MODULES.with(|m| {
            m.borrow()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        });
        for (key, source) in sources {
            if source.ast.get().is_none() {
                let ast = crate::with_engine(|engine| engine.compile(&source.text))
                    .map_err(|e| convert::parse_error(&file_of(&key), e))?;
                let _ = source.ast.set(ast);
            }
        }
        Ok(())
    }

    /// Whether `main.rhai` may define a function `name`: false only when its
    /// text cannot (it does not contain the name), so no compile is needed.
    pub fn may_define(&self, name: &str) -> bool {
        self.main_source
            .as_deref()
            .is_some_and(|text| text.contains(name))
    }
}

/// Forgets the modules evaluated so far: they were evaluated with the
/// authority of the request that imported them.
pub fn forget_evaluated_modules() {
    LOADED.with(|l| l.borrow_mut().clear());
    EVALUATING.with(|e| e.borrow_mut().clear());
}

/// Where `import "<path>"` finds a module, in this order:
///
/// 1. `"lib/<name>"` names the deployment's library module `lib/<name>.rhai`
///    and nothing else;
/// 2. `"<name>"` names the peer's own `logic/<name>.rhai` when there is one
///    (it overrides the library module of the same name);
/// 3. else the library's `lib/<name>.rhai`.
///
/// A peer module *extends* the library module of its own name by importing
/// it (`import "lib/<name>" as base;`): what it imports as `"<name>"` is
/// then the library module with the peer module's functions and variables
/// added, the peer's replacing the library's where both define one.
/// An import cycle and a missing module are errors naming the files.
pub fn resolve_name(name: &str) -> Option<String> {
    MODULES.with(|modules| {
        let modules = modules.borrow();
        if name.starts_with(LIBRARY) {
            return modules.contains_key(name).then(|| name.to_owned());
        }
        if modules.contains_key(name) {
            return Some(name.to_owned());
        }
        let library = format!("{LIBRARY}{name}");
        modules.contains_key(&library).then_some(library)
    })
}

/// The prefix of the deployment's library modules.
pub const LIBRARY: &str = "lib/";

/// The file a module was read from, for errors.
pub fn file_of(key: &str) -> String {
    if key.starts_with(LIBRARY) {
        format!("{key}.rhai")
    } else {
        format!("logic/{key}.rhai")
    }
}

thread_local! {
    /// The modules being evaluated, outermost first: an import of one of
    /// them is a cycle. The flag says the module imported its library
    /// namesake (it extends it).
    static EVALUATING: RefCell<Vec<(String, bool)>> = const { RefCell::new(Vec::new()) };
}

/// Pops the module off [`EVALUATING`] however its evaluation ends.
struct Evaluating;

impl Evaluating {
    fn enter(key: &str) -> Evaluating {
        EVALUATING.with(|e| e.borrow_mut().push((key.to_owned(), false)));
        Evaluating
    }

    /// Whether the module being evaluated imported its library namesake.
    fn extends(&self) -> bool {
        EVALUATING.with(|e| e.borrow().last().is_some_and(|(_, extends)| *extends))
    }
}

impl Drop for Evaluating {
    fn drop(&mut self) {
        EVALUATING.with(|e| e.borrow_mut().pop());
    }
}

/// Resolves imports (see [`resolve_name`]): each module is compiled once
/// per instance and evaluated once per request on first import. Ordered
/// maps throughout: nothing in the guest depends on a hash seed.
#[derive(Debug)]
pub struct LogicModules;

impl ModuleResolver for LogicModules {
    fn resolve(
        &self,
        engine: &Engine,
        _source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<SharedModule, Box<rhai::EvalAltResult>> {
        let name = path.strip_suffix(".rhai").unwrap_or(path);
        let Some(key) = resolve_name(name) else {
            let searched = if name.starts_with(LIBRARY) {
                format!("no {name}.rhai in the deployment's library")
            } else {
                format!("no logic/{name}.rhai and no lib/{name}.rhai")
            };
            return Err(convert::throw(Error::NotFound(format!(
                "no module `{path}` (import at line {}): {searched}",
                pos.line().unwrap_or(0)
            ))));
        };
        // A peer module importing its library namesake extends it.
        EVALUATING.with(|e| {
            if let Some((importer, extends)) = e.borrow_mut().last_mut()
                && key.strip_prefix(LIBRARY) == Some(importer.as_str())
            {
                *extends = true;
            }
        });
        if let Some(module) = LOADED.with(|l| l.borrow().get(&key).cloned()) {
            return Ok(module);
        }
        let cycle = EVALUATING.with(|e| {
            let e = e.borrow();
            e.iter().position(|(k, _)| *k == key).map(|start| {
                e[start..]
                    .iter()
                    .map(|(k, _)| file_of(k))
                    .chain([file_of(&key)])
                    .collect::<Vec<_>>()
                    .join(" → ")
            })
        });
        if let Some(cycle) = cycle {
            return Err(convert::throw(Error::Invalid(format!(
                "import cycle: {cycle}"
            ))));
        }
        // No borrow of MODULES is held while a module is compiled or
        // evaluated: a module may import another.
        let Some(source) = MODULES.with(|modules| modules.borrow().get(&key).cloned()) else {
            return Err(Box::new(rhai::EvalAltResult::ErrorModuleNotFound(
                path.to_owned(),
                pos,
            )));
        };
        let ast = match source.ast.get() {
            Some(ast) => ast,
            None => {
                let ast = engine
                    .compile(&source.text)
                    .map_err(|e| convert::throw(convert::parse_error(&file_of(&key), e)))?;
                source.ast.get_or_init(|| ast)
            }
        };
        let guard = Evaluating::enter(&key);
        // Wrapped, so that an error inside keeps its own kind and message
        // (Rhai reports a failed import as "module not found" otherwise).
        let mut module = Module::eval_ast_as_new(Scope::new(), ast, engine)
            .map_err(|e| Box::new(rhai::EvalAltResult::ErrorInModule(file_of(&key), e, pos)))?;
        if guard.extends() {
            let library = format!("{LIBRARY}{key}");
            if let Some(base) = LOADED.with(|l| l.borrow().get(&library).cloned()) {
                let mut extended = (*base).clone();
                extended.combine(module);
                module = extended;
            }
        }
        drop(guard);
        let module: SharedModule = module.into();
        LOADED.with(|l| l.borrow_mut().insert(key, module.clone()));
        Ok(module)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)]) {
        Logic::new(
            files
                .iter()
                .map(|(name, source)| LogicModule {
                    name: (*name).to_owned(),
                    source: (*source).to_owned(),
                })
                .collect(),
        );
    }

    fn eval(script: &str) -> Result<String, String> {
        forget_evaluated_modules();
        crate::engine()
            .eval::<rhai::Dynamic>(script)
            .map(|v| v.to_string())
            .map_err(|e| convert::eval_error(e).message())
    }

    const LIBRARY_TEXT: &str = "fn shout(s) { s.to_upper() }\nfn whisper(s) { s.to_lower() }";

    #[test]
    fn a_library_module_is_importable_by_its_name() {
        load(&[("lib/text", LIBRARY_TEXT)]);
        assert_eq!(eval(r#"import "text" as t; t::shout("a")"#), Ok("A".into()));
        assert_eq!(
            eval(r#"import "lib/text" as t; t::whisper("B")"#),
            Ok("b".into())
        );
    }

    #[test]
    fn a_peer_module_overrides_the_library_module_of_its_name() {
        load(&[
            ("lib/text", LIBRARY_TEXT),
            ("text", r#"fn shout(s) { "mine: " + s }"#),
        ]);
        assert_eq!(
            eval(r#"import "text" as t; t::shout("a")"#),
            Ok("mine: a".into())
        );
        // Overridden entirely: the library's other functions are not there.
        assert!(eval(r#"import "text" as t; t::whisper("B")"#).is_err());
        // The library stays reachable by its full name.
        assert_eq!(
            eval(r#"import "lib/text" as t; t::shout("a")"#),
            Ok("A".into())
        );
    }

    #[test]
    fn a_peer_module_extends_the_library_module_it_imports() {
        load(&[
            ("lib/text", LIBRARY_TEXT),
            (
                "text",
                "import \"lib/text\" as base;\nfn shout(s) { base::shout(s) + \"!\" }\nfn twice(s) { s + s }",
            ),
        ]);
        // Added, replaced, and inherited from the library.
        assert_eq!(
            eval(r#"import "text" as t; t::twice("a")"#),
            Ok("aa".into())
        );
        assert_eq!(
            eval(r#"import "text" as t; t::shout("a")"#),
            Ok("A!".into())
        );
        assert_eq!(
            eval(r#"import "text" as t; t::whisper("B")"#),
            Ok("b".into())
        );
    }

    #[test]
    fn import_cycles_and_missing_modules_are_named() {
        load(&[
            ("a", "import \"b\" as b;\nfn x() { 1 }"),
            ("b", "import \"lib/c\" as c;\nfn y() { 2 }"),
            ("lib/c", "import \"a\" as a;\nfn z() { 3 }"),
            ("lonely", "import \"gone\" as g;\nfn w() { 4 }"),
        ]);
        let error = eval(r#"import "a" as a; a::x()"#).expect_err("fails");
        assert!(
            error.contains("import cycle: logic/a.rhai → logic/b.rhai → lib/c.rhai → logic/a.rhai"),
            "{error}"
        );
        let error = eval(r#"import "lonely" as l; l::w()"#).expect_err("fails");
        assert!(
            error.contains("no logic/gone.rhai and no lib/gone.rhai"),
            "{error}"
        );
        let error = eval(r#"import "lib/a" as l; 1"#).expect_err("fails");
        assert!(
            error.contains("no lib/a.rhai in the deployment's library"),
            "{error}"
        );
    }
}
