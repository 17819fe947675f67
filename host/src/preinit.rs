//! Pre-initialisation of a guest component (wasmtime-wizer): the host runs
//! the guest's `wizer-initialize` export once, snapshots its memory and
//! globals, and compiles the snapshot instead of the original. Every
//! instance then starts with what initialisation built (for the Rhai guest,
//! its engine: measured 280 µs per fresh instance before, a few µs after).
//!
//! Nothing that must differ per instance may be frozen into the snapshot:
//! every import of the component traps while `wizer-initialize` runs, so an
//! initialiser that draws randomness, reads the clock, the environment or a
//! file fails here, loudly, instead of baking one value into every
//! instance. A component without the export is used as it is.

use std::future::Future;
use std::task::{Context, Poll, Waker};
use wasmtime::component::{Component, Instance, Linker, WasmList, types::ComponentItem};
use wasmtime::{Engine, Store};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

/// The export a pre-initialisable guest provides (world `preinitialized-peer`).
pub const INIT_FUNC: &str = "wizer-initialize";

/// Bumped whenever what this module produces changes, so that cached
/// artifacts of an older pre-initialisation are not reused.
pub const VERSION: &str = "preinit-1";

/// Pre-initialisation failed: the guest's initialiser trapped (or touched
/// an import), or the snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
#[error("pre-initialising the guest component: {0}")]
pub struct PreinitError(pub(crate) String);

pub(crate) fn failed(what: &'static str) -> impl FnOnce(wasmtime::Error) -> PreinitError {
    move |e| PreinitError(format!("{what}: {e:?}"))
}

/// The pre-initialised form of `wasm`, or `None` when the component does not
/// export [`INIT_FUNC`].
pub fn preinitialize(engine: &Engine, wasm: &[u8]) -> Result<Option<Vec<u8>>, PreinitError> {
    let compile = |instrumented: &[u8]| Component::new(engine, instrumented);
    match Instrumented::new(wasm, compile)? {
        Some(instrumented) => instrumented.snapshot(engine, |_, _| Ok(())).map(Some),
        None => Ok(None),
    }
}

/// A component instrumented for snapshots, compiled: each [`Instrumented::snapshot`]
/// instantiates it, runs [`INIT_FUNC`] and what the caller adds, and
/// returns the snapshot.
pub struct Instrumented<'a> {
    wizer: Wizer,
    cx: wasmtime_wizer::ComponentContext<'a>,
    component: Component,
    init: wasmtime::component::ComponentExportIndex,
}

impl std::fmt::Debug for Instrumented<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instrumented").finish_non_exhaustive()
    }
}

impl<'a> Instrumented<'a> {
    /// `wasm` instrumented and compiled by `compile`, or `None` when it does
    /// not export [`INIT_FUNC`].
    pub fn new(
        wasm: &'a [u8],
        compile: impl FnOnce(&[u8]) -> wasmtime::Result<Component>,
    ) -> Result<Option<Instrumented<'a>>, PreinitError> {
        let mut wizer = Wizer::new();
        // The export stays (the world declares it); the host never calls it again.
        wizer.init_func(INIT_FUNC).keep_init_func(true);
        let (cx, instrumented) = wizer
            .instrument_component(wasm)
            .map_err(failed("instrumenting"))?;
        let component =
            compile(&instrumented).map_err(failed("compiling the instrumented guest"))?;
        let Some((ComponentItem::ComponentFunc(ty), init)) = component.get_export(None, INIT_FUNC)
        else {
            return Ok(None);
        };
        if ty.params().len() != 0 || ty.results().len() != 0 {
            return Err(PreinitError(format!(
                "`{INIT_FUNC}` must take and return nothing"
            )));
        }
        Ok(Some(Instrumented {
            wizer,
            cx,
            component,
            init,
        }))
    }

    /// The component the instrumented guest is.
    pub fn component(&self) -> &Component {
        &self.component
    }

    /// A fresh instance initialised by [`INIT_FUNC`], then by `then`, every
    /// import trapping throughout, snapshotted.
    pub fn snapshot(
        &self,
        engine: &Engine,
        then: impl FnOnce(&mut Store<()>, &Instance) -> Result<(), PreinitError>,
    ) -> Result<Vec<u8>, PreinitError> {
        let mut linker = Linker::<()>::new(engine);
        linker
            .define_unknown_imports_as_traps(&self.component)
            .map_err(failed("linking"))?;
        let mut store = Store::new(engine, ());
        // Interrupted only if it runs away: initialisation is the host's own
        // (or compiles logic that the host compiled natively already).
        store.set_epoch_deadline(INIT_TICKS);
        let instance = linker
            .instantiate(&mut store, &self.component)
            .map_err(failed("instantiating"))?;
        let init = instance
            .get_func(&mut store, self.init)
            .ok_or_else(|| PreinitError(format!("`{INIT_FUNC}` is not a function")))?;
        init.call(&mut store, &[], &mut []).map_err(failed(
            "`wizer-initialize` trapped (it may not touch any import)",
        ))?;
        then(&mut store, &instance)?;
        let mut state = Snapshotting {
            store: &mut store,
            instance,
            error: None,
        };
        let snapshot = now(self.wizer.snapshot_component(&self.cx, &mut state))
            .ok_or_else(|| PreinitError("the snapshot did not complete".into()))?
            .map_err(failed("snapshotting"))?;
        match state.error {
            Some(e) => Err(e),
            None => Ok(snapshot),
        }
    }
}

/// Epoch ticks a pre-initialisation may take (a minute at 10 ms a tick).
const INIT_TICKS: u64 = 6_000;

/// Polls `future` once: every future here is synchronous underneath (the
/// calls it makes are plain, non-async wasmtime calls).
fn now<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// What wizer reads the instance's state through: the accessor functions
/// its instrumentation exported. A failed call is kept in `error` (the trait
/// has no error path) and answered with zero.
struct Snapshotting<'a> {
    store: &'a mut Store<()>,
    instance: Instance,
    error: Option<PreinitError>,
}

impl Snapshotting<'_> {
    fn call<R>(&mut self, instance: &str, func: &str) -> Option<(R,)>
    where
        R: wasmtime::component::ComponentType + wasmtime::component::Lift + Send + Sync + 'static,
    {
        let result = (|| {
            let parent = self
                .instance
                .get_export_index(&mut *self.store, None, instance)
                .ok_or_else(|| wasmtime::Error::msg(format!("no export {instance}")))?;
            let index = self
                .instance
                .get_export_index(&mut *self.store, Some(&parent), func)
                .ok_or_else(|| wasmtime::Error::msg(format!("no export {instance}#{func}")))?;
            let func = self
                .instance
                .get_typed_func::<(), (R,)>(&mut *self.store, index)?;
            func.call(&mut *self.store, ())
        })();
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.error
                    .get_or_insert(PreinitError(format!("reading {instance}#{func}: {e:?}")));
                None
            }
        }
    }
}

impl ComponentInstanceState for Snapshotting<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        match self.call::<WasmList<u8>>(instance, func) {
            Some((list,)) => contents(list.as_le_slice(&*self.store)),
            None => contents(&[]),
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call::<i32>(instance, func).map_or(0, |(v,)| v)
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call::<i64>(instance, func).map_or(0, |(v,)| v)
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call::<f32>(instance, func)
            .map_or(0, |(v,)| v.to_bits())
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call::<f64>(instance, func)
            .map_or(0, |(v,)| v.to_bits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::Config;

    /// A component whose `wizer-initialize` stores 42 (or, with `random`,
    /// a value drawn from an import) in a global that `get` returns.
    fn component(init: &str) -> Vec<u8> {
        let text = format!(
            r#"(component
              (import "draw" (func $draw (result u32)))
              (core module $m
                (import "host" "draw" (func $draw (result i32)))
                (memory (export "memory") 1)
                (global $g (mut i32) (i32.const 0))
                (func (export "fixed") (global.set $g (i32.const 42)))
                (func (export "random") (global.set $g (call $draw)))
                (func (export "get") (result i32) (global.get $g)))
              (core func $draw_lowered (canon lower (func $draw)))
              (core instance $host (export "draw" (func $draw_lowered)))
              (core instance $i (instantiate $m (with "host" (instance $host))))
              (func (export "{INIT_FUNC}") (canon lift (core func $i "{init}")))
              (func (export "get") (result u32) (canon lift (core func $i "get"))))"#
        );
        match wat::parse_str(text) {
            Ok(wasm) => wasm,
            Err(e) => panic!("test component: {e}"),
        }
    }

    fn engine() -> Engine {
        let mut config = Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        match Engine::new(&config) {
            Ok(engine) => engine,
            Err(e) => panic!("engine: {e:?}"),
        }
    }

    /// Instantiates `wasm` with `draw` answering 7 and returns `get()`.
    fn get(engine: &Engine, wasm: &[u8]) -> u32 {
        let run = || -> wasmtime::Result<u32> {
            let component = Component::new(engine, wasm)?;
            let mut linker = Linker::<()>::new(engine);
            linker.root().func_wrap("draw", |_, ()| Ok((7u32,)))?;
            let mut store = Store::new(engine, ());
            store.set_epoch_deadline(1 << 40);
            let instance = linker.instantiate(&mut store, &component)?;
            let get = instance.get_typed_func::<(), (u32,)>(&mut store, "get")?;
            Ok(get.call(&mut store, ())?.0)
        };
        match run() {
            Ok(value) => value,
            Err(e) => panic!("running the test component: {e:?}"),
        }
    }

    #[test]
    fn the_snapshot_starts_every_instance_initialised() {
        let engine = engine();
        let wasm = component("fixed");
        assert_eq!(get(&engine, &wasm), 0, "not initialised before");
        let snapshot = match preinitialize(&engine, &wasm) {
            Ok(Some(snapshot)) => snapshot,
            other => panic!("{other:?}"),
        };
        assert_eq!(get(&engine, &snapshot), 42);
        assert_eq!(get(&engine, &snapshot), 42, "every instance");
    }

    #[test]
    fn an_initialiser_that_touches_an_import_is_refused() {
        // A value drawn from the host (randomness, time) would be frozen
        // into every instance: pre-initialisation must fail instead.
        let engine = engine();
        let error = match preinitialize(&engine, &component("random")) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("pre-initialised with an import call"),
        };
        assert!(error.contains("wizer-initialize"), "{error}");
    }

    #[test]
    fn a_component_without_the_export_is_used_as_it_is() {
        let engine = engine();
        let text = r#"(component
            (core module $m (func (export "f") (result i32) (i32.const 1)))
            (core instance $i (instantiate $m))
            (func (export "get") (result u32) (canon lift (core func $i "f"))))"#;
        let wasm = match wat::parse_str(text) {
            Ok(wasm) => wasm,
            Err(e) => panic!("{e}"),
        };
        assert!(matches!(preinitialize(&engine, &wasm), Ok(None)));
    }

    #[test]
    fn the_default_guest_is_preinitialised() {
        let engine = engine();
        assert!(matches!(
            preinitialize(&engine, crate::runtime::GUEST_COMPONENT),
            Ok(Some(_))
        ));
    }
}
