//! # peerhost-rhai-guest
//!
//! The default guest component: one locked-down Rhai engine per instance,
//! running the peer's logic and delegated scripts. The host instantiates it
//! fresh for every invocation, calls `prepare` (load `/logic/*.rhai`) and then
//! `invoke`. Nothing here decides authority: every capability this guest
//! touches is an import the host checks against the peer's policy.
//!
//! # Layout
//! - this file: the exported `invocation` interface and the engine set-up.
//! - [`modules`]: the Rhai modules `kv`, `fs` and `log` over the capabilities.
//! - [`convert`]: JSON ↔ Rhai values and Rhai errors → typed errors.
//! - [`logic`]: loading the peer's logic and resolving `import`.

#![deny(missing_docs)]

pub mod convert;
pub mod logic;
pub mod modules;

use peerhost_guest_sdk::bindings::exports::peerhost::peer::invocation::{
    CallRequest, Guest, GuestLimits, LogicModule, Request, ScriptRequest,
};
use peerhost_guest_sdk::{Error, InvocationKind};
use rhai::{CallFnOptions, Dynamic, Engine, FnAccess, Map, Scope};
use std::cell::RefCell;

/// Limits of the Rhai engine. Zero means unlimited in Rhai, so every one is set.
pub mod limits {
    /// Rhai operations per request until the host says otherwise in
    /// `prepare`; the host's epoch deadline bounds wall time too.
    pub const OPERATIONS: u64 = 50_000_000;
    /// The most operations a host may allow per request.
    pub const OPERATIONS_CEILING: u64 = 10_000_000_000;
    /// Nested function calls.
    pub const CALL_LEVELS: usize = 48;
    /// Expression nesting at global level and inside functions.
    pub const EXPR_DEPTHS: (usize, usize) = (96, 48);
    /// Bytes in one string.
    pub const STRING_SIZE: usize = 1 << 20;
    /// Elements in one array.
    pub const ARRAY_SIZE: usize = 100_000;
    /// Entries in one object map.
    pub const MAP_SIZE: usize = 100_000;
    /// Modules loaded by `import` in one invocation.
    pub const MODULES: usize = 32;
    /// Functions defined in one script or module.
    pub const FUNCTIONS: usize = 1_000;
    /// Variables in scope.
    pub const VARIABLES: usize = 1_000;
    /// Interned strings.
    pub const STRINGS_INTERNED: usize = 1_024;
    /// Deepest nesting of arrays and objects in a JSON value this guest
    /// reads ([`crate::convert::from_json`]: kv values, arguments, a peer's
    /// results): serde_json's recursion limit refuses 128 levels. The host
    /// refuses to store a kv value nested deeper, so every value written can
    /// be read back.
    pub const JSON_DEPTH: usize = 127;
}

struct RhaiGuest;

peerhost_guest_sdk::bindings::export!(RhaiGuest);

thread_local! {
    /// The engine of this instance. The host pre-initialises the component
    /// (`wizer-initialize`, then a memory snapshot), so every instance starts
    /// with it built; without pre-initialisation it is built on first use.
    static ENGINE: RefCell<Engine> = RefCell::new(engine());
    static PEER: RefCell<Option<logic::Logic>> = const { RefCell::new(None) };
}

/// Runs `f` with this instance's engine.
pub fn with_engine<R>(f: impl FnOnce(&Engine) -> R) -> R {
    ENGINE.with(|engine| f(&engine.borrow()))
}

/// Applies the host's limits for this instance's caller. Called in
/// `prepare`, never while the engine evaluates.
fn apply(limits: GuestLimits) {
    ENGINE.with(|engine| {
        // Zero means unlimited in Rhai: never let it through.
        engine
            .borrow_mut()
            .set_max_operations(limits.operations.clamp(1, limits::OPERATIONS_CEILING));
    });
}

/// Keys of Rhai's function-name hashes. Rhai would otherwise draw them from
/// WASI randomness on first use, which pre-initialisation would freeze into
/// the snapshot anyway; fixed and public, they are the same in every
/// instance by design. They key only lookups of functions by name (a
/// collision with an existing name needs a 64-bit second preimage), never a
/// table a script fills with its own keys: Rhai's object maps are B-trees.
pub const HASHING_SEED: [u64; 4] = [
    0x7065_6572_686f_7374,
    0x7268_6169_2d67_7565,
    0x7374_2d68_6173_6831,
    0x7072_652d_696e_6974,
];

impl peerhost_guest_sdk::bindings::Guest for RhaiGuest {
    /// Builds the engine and runs one script through it, so that the
    /// snapshot holds a ready engine. Touches no import: the host makes every
    /// import trap while this runs.
    fn wizer_initialize() {
        with_engine(|engine| {
            let _ = engine.eval::<rhai::INT>("let x = [1, 2]; x.len() + `${x}`.len()");
        });
    }
}

/// A locked-down engine: no packages beyond the standard library (less
/// `sleep` and `eval`), no optimiser pass, every limit set, `print` routed to the `log` capability, `ctx` resolved lazily through
/// the `context` capability.
pub fn engine() -> Engine {
    // Before anything hashes; a second call (a second engine) keeps the seed.
    let _ = rhai::config::hashing::set_hashing_seed(Some(HASHING_SEED));
    let mut engine = Engine::new_raw();
    // Every script and logic file is compiled for one invocation: the
    // optimiser's pass costs more than it saves (measured: a call of a
    // 40-line logic file 138 -> 119 µs, loops no slower).
    engine.set_optimization_level(rhai::OptimizationLevel::None);
    engine.register_global_module(rhai::packages::Package::as_shared_module(
        &rhai::packages::StandardPackage::new(),
    ));
    engine
        .set_max_operations(limits::OPERATIONS)
        .set_max_call_levels(limits::CALL_LEVELS)
        .set_max_expr_depths(limits::EXPR_DEPTHS.0, limits::EXPR_DEPTHS.1)
        .set_max_string_size(limits::STRING_SIZE)
        .set_max_array_size(limits::ARRAY_SIZE)
        .set_max_map_size(limits::MAP_SIZE)
        .set_max_modules(limits::MODULES)
        .set_max_functions(limits::FUNCTIONS)
        .set_max_variables(limits::VARIABLES)
        .set_max_strings_interned(limits::STRINGS_INTERNED);
    // Nothing may block: `sleep` would hold the Store inside a host call,
    // where epoch interruption cannot reach it. `eval` is off as well.
    let mut no_sleep = rhai::Module::new();
    no_sleep.set_native_fn(
        "sleep",
        |_: rhai::INT| -> Result<(), Box<rhai::EvalAltResult>> {
            Err(convert::throw(Error::Invalid(
                "sleep is not available: scripts may not block".into(),
            )))
        },
    );
    no_sleep.set_native_fn(
        "sleep",
        |_: rhai::FLOAT| -> Result<(), Box<rhai::EvalAltResult>> {
            Err(convert::throw(Error::Invalid(
                "sleep is not available: scripts may not block".into(),
            )))
        },
    );
    engine.register_global_module(no_sleep.into());
    engine.disable_symbol("eval");
    modules::register(&mut engine);
    engine.set_module_resolver(logic::LogicModules);
    engine.on_print(|text| modules::log_line(peerhost_guest_sdk::log::Level::Info, text));
    engine.on_debug(|text, _, _| modules::log_line(peerhost_guest_sdk::log::Level::Debug, text));
    #[allow(
        deprecated,
        reason = "Engine::on_var is stable in behaviour, only marked volatile"
    )]
    engine.on_var(|name, _, _| match name {
        "ctx" => modules::context_value().map(Some),
        _ => Ok(None),
    });
    engine
}

/// The hooks the host runs itself that `logic` exports (`on_script`);
/// compiling main.rhai waits for a request that needs it unless it may
/// define one.
fn hooks(logic: &logic::Logic) -> Result<Vec<String>, Error> {
    if !logic.may_define(ON_SCRIPT) {
        return Ok(Vec::new());
    }
    Ok(logic
        .main()?
        .iter_functions()
        .filter(|f| f.name == ON_SCRIPT && matches!(f.access, FnAccess::Public))
        .map(|f| f.name.to_owned())
        .take(1)
        .collect())
}

impl peerhost_guest_sdk::bindings::exports::peerhost::peer::prepared::Guest for RhaiGuest {
    /// Compiles every module of `files` for the snapshot the host takes
    /// next. Touches no import (the host makes every import trap).
    fn compile(files: Vec<LogicModule>) -> Result<(), Error> {
        let loaded = logic::Logic::new(files);
        loaded.compile_all()?;
        PEER.with(|peer| *peer.borrow_mut() = Some(loaded));
        Ok(())
    }

    fn resume(limits: GuestLimits) -> Result<Vec<String>, Error> {
        apply(limits);
        PEER.with(|peer| match peer.borrow().as_ref() {
            Some(logic) => hooks(logic),
            None => Err(Error::Failed(
                "resume: no logic was compiled before the snapshot".into(),
            )),
        })
    }
}

impl Guest for RhaiGuest {
    fn prepare(files: Vec<LogicModule>, limits: GuestLimits) -> Result<Vec<String>, Error> {
        apply(limits);
        let loaded = logic::Logic::new(files);
        let hooks = hooks(&loaded)?;
        PEER.with(|peer| *peer.borrow_mut() = Some(loaded));
        Ok(hooks)
    }

    fn invoke(request: Request) -> Result<String, Error> {
        // Each invoke may run with another authority (the `on_script` hook
        // with the peer's, then the script with the caller's): nothing
        // evaluated or fetched under one may serve the next.
        logic::forget_evaluated_modules();
        modules::forget_context();
        PEER.with(|peer| {
            let peer = peer.borrow();
            let Some(peer) = peer.as_ref() else {
                return Err(Error::Failed("the host invoked before prepare".into()));
            };
            let value = match request {
                Request::Call(call) => run_call(peer, call, None)?,
                Request::Script(script) => run_script(script)?,
                Request::OnScript(script) => run_call(
                    peer,
                    CallRequest {
                        function: ON_SCRIPT.into(),
                        args: String::new(),
                    },
                    Some(vec![
                        modules::context_value().map_err(convert::eval_error)?,
                        script.into(),
                    ]),
                )?,
            };
            convert::to_json(&value)
        })
    }
}

/// The hook a peer's logic may define to refuse delegated scripts.
const ON_SCRIPT: &str = "on_script";

fn run_call(
    peer: &logic::Logic,
    call: CallRequest,
    values: Option<Vec<Dynamic>>,
) -> Result<Dynamic, Error> {
    let args = match values {
        Some(values) => values,
        None => convert::args(&call.args)?,
    };
    let main = peer.main()?;
    let Some(function) = main
        .iter_functions()
        .find(|f| f.name == call.function && matches!(f.access, FnAccess::Public))
    else {
        return Err(Error::NotFound(format!(
            "logic/main.rhai exports no function `{}`",
            call.function
        )));
    };
    if function.params.len() != args.len() {
        return Err(Error::Invalid(format!(
            "function `{}` takes {} argument(s) ({}), got {}",
            call.function,
            function.params.len(),
            function.params.join(", "),
            args.len()
        )));
    }
    let mut scope = Scope::new();
    with_engine(|engine| {
        engine.call_fn_with_options::<Dynamic>(
            CallFnOptions::new(),
            &mut scope,
            main,
            &call.function,
            args,
        )
    })
    .map_err(convert::eval_error)
}

fn run_script(script: ScriptRequest) -> Result<Dynamic, Error> {
    let params = convert::from_json(&script.params, "params")?;
    let mut scope = Scope::new();
    scope.push_constant("params", params);
    with_engine(|engine| {
        let ast = engine
            .compile_with_scope(&scope, &script.script)
            .map_err(|e| convert::parse_error("script", e))?;
        engine
            .eval_ast_with_scope::<Dynamic>(&mut scope, &ast)
            .map_err(convert::eval_error)
    })
}

fn peer_map(peer: &peerhost_guest_sdk::context::PeerRef) -> Map {
    let mut map = Map::new();
    map.insert("name".into(), peer.name.clone().into());
    map.insert(
        "id".into(),
        peer.id.clone().map_or(Dynamic::UNIT, Dynamic::from),
    );
    map
}

/// The `ctx` object map for the given invocation context:
/// `#{caller: #{name, id}, target: #{name, id}, kind, depth}`.
pub fn context_map(ctx: &peerhost_guest_sdk::context::InvocationContext) -> Map {
    let mut map = Map::new();
    map.insert("caller".into(), peer_map(&ctx.caller).into());
    map.insert("target".into(), peer_map(&ctx.target).into());
    map.insert("depth".into(), rhai::INT::from(ctx.depth).into());
    let kind = match ctx.kind {
        InvocationKind::Call => "call",
        InvocationKind::Script => "script",
    };
    map.insert("kind".into(), kind.into());
    map
}
