//! The peer's logic: `logic/main.rhai` exports the peer's functions; every
//! other `logic/<name>.rhai` is a module that `import "<name>" as name;` loads.
//! All files are read and compiled in `prepare`, the one step in which the
//! host lets the guest read `/logic` without a policy check.

use crate::convert;
use peerhost_guest_sdk::Error;
use rhai::{AST, Engine, Module, ModuleResolver, Position, Scope, Shared};
type SharedModule = Shared<Module>;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

/// Where the host preopens the peer's logic, read-only.
pub const LOGIC_DIR: &str = "/logic";

/// Largest logic file read, in bytes.
const MAX_LOGIC_FILE: u64 = 1 << 20;

/// The peer's compiled logic and the engine that runs it.
#[allow(missing_debug_implementations, reason = "rhai::Engine has no Debug")]
pub struct Logic {
    /// The engine, with the logic's modules as its module resolver.
    pub engine: Engine,
    /// `main.rhai`, or an empty script when the peer has none.
    pub main: AST,
}

impl Logic {
    /// Reads and compiles every `*.rhai` file in `dir`.
    pub fn load(dir: &Path) -> Result<Logic, Error> {
        let mut engine = crate::engine();
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
        let mut modules = HashMap::new();
        for (module, file, text) in sources {
            let ast = engine
                .compile(&text)
                .map_err(|e| convert::parse_error(&format!("logic/{file}"), e))?;
            if module == "main" {
                main = ast;
            } else {
                modules.insert(module, ast);
            }
        }
        engine.set_module_resolver(LogicModules {
            asts: modules,
            loaded: RefCell::new(HashMap::new()),
        });
        Ok(Logic { engine, main })
    }
}

/// Resolves `import "name"` to `logic/name.rhai`, compiled in `prepare` and
/// evaluated once per invocation on first import.
struct LogicModules {
    asts: HashMap<String, AST>,
    loaded: RefCell<HashMap<String, SharedModule>>,
}

impl ModuleResolver for LogicModules {
    fn resolve(
        &self,
        engine: &Engine,
        _source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<SharedModule, Box<rhai::EvalAltResult>> {
        let name = path.strip_suffix(".rhai").unwrap_or(path);
        if let Some(module) = self.loaded.borrow().get(name) {
            return Ok(module.clone());
        }
        let Some(ast) = self.asts.get(name) else {
            return Err(Box::new(rhai::EvalAltResult::ErrorModuleNotFound(
                format!("{path} (no logic/{name}.rhai)"),
                pos,
            )));
        };
        let module: SharedModule = Module::eval_ast_as_new(Scope::new(), ast, engine)?.into();
        self.loaded
            .borrow_mut()
            .insert(name.to_owned(), module.clone());
        Ok(module)
    }
}
