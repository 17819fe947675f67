//! The peer's logic: `logic/main.rhai` exports the peer's functions; every
//! other `logic/<name>.rhai` is a module that `import "<name>" as name;` loads.
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
}

/// Resolves `import "name"` to `logic/name.rhai`, compiled in `prepare` and
/// evaluated once per invocation on first import. Ordered maps throughout:
/// nothing in the guest depends on a hash seed.
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
        if let Some(module) = LOADED.with(|l| l.borrow().get(name).cloned()) {
            return Ok(module);
        }
        // No borrow of MODULES is held while a module is compiled or
        // evaluated: a module may import another.
        let Some(source) = MODULES.with(|modules| modules.borrow().get(name).cloned()) else {
            return Err(Box::new(rhai::EvalAltResult::ErrorModuleNotFound(
                format!("{path} (no logic/{name}.rhai)"),
                pos,
            )));
        };
        let ast = match source.ast.get() {
            Some(ast) => ast,
            None => {
                let ast = engine.compile(&source.text).map_err(|e| {
                    convert::throw(convert::parse_error(&format!("logic/{name}.rhai"), e))
                })?;
                source.ast.get_or_init(|| ast)
            }
        };
        let module: SharedModule = Module::eval_ast_as_new(Scope::new(), ast, engine)?.into();
        LOADED.with(|l| l.borrow_mut().insert(name.to_owned(), module.clone()));
        Ok(module)
    }
}
