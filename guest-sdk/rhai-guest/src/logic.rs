//! The peer's logic: `logic/main.rhai` exports the peer's functions; every
//! other `logic/<name>.rhai` is a module that `import "<name>" as name;` loads.
//! All files are read and compiled in `prepare`, the one step in which the
//! host lets the guest read `/logic` without a policy check.

use crate::convert;
use peerhost_guest_sdk::Error;
use rhai::{AST, Engine, Module, ModuleResolver, Position, Scope, Shared};
type SharedModule = Shared<Module>;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;

/// Where the host preopens the peer's logic, read-only.
pub const LOGIC_DIR: &str = "/logic";

/// Largest logic file read, in bytes.
const MAX_LOGIC_FILE: u64 = 1 << 20;

/// The peer's compiled logic. The engine is the instance's own
/// ([`crate::with_engine`]); its module resolver reads the modules loaded here.
#[allow(
    missing_debug_implementations,
    reason = "rhai::AST has no useful Debug"
)]
pub struct Logic {
    /// `main.rhai`, or an empty script when the peer has none.
    pub main: AST,
}

thread_local! {
    /// The compiled `logic/<name>.rhai` modules other than `main`, by name.
    static MODULES: RefCell<BTreeMap<String, AST>> = const { RefCell::new(BTreeMap::new()) };
    /// Modules evaluated in this invocation, by name.
    static LOADED: RefCell<BTreeMap<String, SharedModule>> = const { RefCell::new(BTreeMap::new()) };
}

impl Logic {
    /// Reads and compiles every `*.rhai` file in `dir`.
    pub fn load(dir: &Path) -> Result<Logic, Error> {
        let mut sources = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(|e| Error::Failed(format!("reading logic/: {e}")))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let Some(module) = name.strip_suffix(".rhai") else {
                        continue;
                    };
                    let path = dir.join(&name);
                    let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    if size > MAX_LOGIC_FILE {
                        return Err(Error::Limit(format!(
                            "logic/{name} is {size} bytes; the limit is {MAX_LOGIC_FILE}"
                        )));
                    }
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| Error::Failed(format!("reading logic/{name}: {e}")))?;
                    sources.push((module.to_owned(), name, text));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Failed(format!("reading logic/: {e}"))),
        }
        let mut main = AST::empty();
        let mut modules = BTreeMap::new();
        for (module, file, text) in sources {
            let ast = crate::with_engine(|engine| engine.compile(&text))
                .map_err(|e| convert::parse_error(&format!("logic/{file}"), e))?;
            if module == "main" {
                main = ast;
            } else {
                modules.insert(module, ast);
            }
        }
        MODULES.with(|m| *m.borrow_mut() = modules);
        LOADED.with(|l| l.borrow_mut().clear());
        Ok(Logic { main })
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
        // Nested imports borrow MODULES again, only ever immutably.
        let module: SharedModule = MODULES.with(|modules| {
            let modules = modules.borrow();
            let Some(ast) = modules.get(name) else {
                return Err(Box::new(rhai::EvalAltResult::ErrorModuleNotFound(
                    format!("{path} (no logic/{name}.rhai)"),
                    pos,
                )));
            };
            Module::eval_ast_as_new(Scope::new(), ast, engine).map(SharedModule::from)
        })?;
        LOADED.with(|l| l.borrow_mut().insert(name.to_owned(), module.clone()));
        Ok(module)
    }
}
