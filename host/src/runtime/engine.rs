//! The engine's configuration (pooling allocator, epochs, stack), the
//! linker of the guest's imports, and the epoch ticker.

use super::*;

/// The runtime could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct RuntimeError {
    what: &'static str,
    reason: String,
}

pub(super) fn runtime_error(what: &'static str) -> impl FnOnce(wasmtime::Error) -> RuntimeError {
    move |e| RuntimeError {
        what,
        reason: format!("{e:?}"),
    }
}

/// How instances get their memories, tables and stacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// wasmtime's pooling allocator: slots reserved up front for this many
    /// concurrent instances and reused; a freed slot is reset by scanning
    /// for the pages the last instance dirtied (Linux `PAGEMAP_SCAN`), so
    /// the next instance finds the snapshot's pages resident. The default.
    Pooling {
        /// Instances that may be alive at once; one more fails with `limit`.
        instances: u32,
    },
    /// Memory mapped per instance and unmapped when it is dropped.
    OnDemand,
}

/// Concurrent instances of the default pool.
pub const POOLED_INSTANCES: u32 = 1_000;

impl Default for Allocation {
    fn default() -> Self {
        Allocation::Pooling {
            instances: POOLED_INSTANCES,
        }
    }
}

/// Bytes of each freed memory slot reset in place rather than unmapped: the
/// pre-initialised guest touches about this much per invocation.
const KEEP_RESIDENT: usize = 4 << 20;

pub(super) fn config(allocation: Allocation) -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(MAX_WASM_STACK);
    if let Allocation::Pooling { instances } = allocation {
        let mut pool = wasmtime::PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            // The guest's main module plus the small adapter modules
            // wit-component adds.
            .total_core_instances(instances.saturating_mul(8))
            .max_core_instances_per_component(8)
            .total_memories(instances)
            .max_memories_per_component(1)
            .max_memory_size(
                usize::try_from(crate::config::MAX_MEMORY_MIB << 20).unwrap_or(usize::MAX),
            )
            .total_tables(instances.saturating_mul(4))
            .max_tables_per_component(4)
            .table_elements(100_000)
            .total_stacks(instances)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Links every import of world `peer`: this crate's capabilities, the checked
/// filesystem, and the rest of WASI that Rust's standard library expects
/// (clocks, random, I/O streams, and a CLI environment that is empty). No
/// sockets are linked.
pub(super) fn link(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
    use crate::bindings::peerhost::peer;
    use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView as _};
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random};
    use wasmtime_wasi::random::WasiRandom;

    peer::types::add_to_linker::<_, HasSelf<InvocationState>>(linker, |s| s)?;
    peer::kv::add_to_linker::<_, HasSelf<InvocationState>>(linker, |s| s)?;
    peer::log::add_to_linker::<_, HasSelf<InvocationState>>(linker, |s| s)?;
    peer::context::add_to_linker::<_, HasSelf<InvocationState>>(linker, |s| s)?;
    peer::peers::add_to_linker::<_, HasSelf<InvocationState>>(linker, |s| s)?;

    fn checked_fs(state: &mut InvocationState) -> crate::capability::filesystem::CheckedFs<'_> {
        crate::capability::filesystem::CheckedFs {
            inner: wasmtime_wasi::filesystem::WasiFilesystemView::filesystem(&mut state.wasi),
            authority: &state.authority,
            descriptors: &mut state.descriptors,
            listings: &mut state.listings,
        }
    }
    filesystem::types::add_to_linker::<_, CheckedFilesystem>(linker, checked_fs)?;
    filesystem::preopens::add_to_linker::<_, CheckedFilesystem>(linker, checked_fs)?;

    let l = linker;
    wasmtime_wasi_io::bindings::wasi::io::error::add_to_linker::<_, Table>(l, |s| {
        &mut s.wasi.table
    })?;
    wasmtime_wasi_io::bindings::wasi::io::poll::add_to_linker::<_, Table>(l, |s| {
        &mut s.wasi.table
    })?;
    wasmtime_wasi_io::bindings::wasi::io::streams::add_to_linker::<_, Table>(l, |s| {
        &mut s.wasi.table
    })?;
    clocks::wall_clock::add_to_linker::<_, WasiClocks>(l, |s| s.clocks())?;
    clocks::monotonic_clock::add_to_linker::<_, WasiClocks>(l, |s| s.clocks())?;
    random::random::add_to_linker::<_, WasiRandom>(l, |s| s.wasi.ctx.random())?;
    random::insecure::add_to_linker::<_, WasiRandom>(l, |s| s.wasi.ctx.random())?;
    random::insecure_seed::add_to_linker::<_, WasiRandom>(l, |s| s.wasi.ctx.random())?;
    cli::exit::add_to_linker::<_, WasiCli>(l, |s| s.cli())?;
    cli::environment::add_to_linker::<_, WasiCli>(l, |s| s.cli())?;
    cli::stdin::add_to_linker::<_, WasiCli>(l, |s| s.cli())?;
    cli::stdout::add_to_linker::<_, WasiCli>(l, |s| s.cli())?;
    cli::stderr::add_to_linker::<_, WasiCli>(l, |s| s.cli())?;
    cli::terminal_input::add_to_linker::<_, WasiCli>(l, |s| s.cli())?;
    cli::terminal_output::add_to_linker::<_, WasiCli>(l, |s| s.cli())?;
    cli::terminal_stdin::add_to_linker::<_, WasiCli>(l, |s| s.cli())?;
    cli::terminal_stdout::add_to_linker::<_, WasiCli>(l, |s| s.cli())?;
    cli::terminal_stderr::add_to_linker::<_, WasiCli>(l, |s| s.cli())?;
    Ok(())
}

/// The `HasData` marker for interfaces that need only the resource table.
struct Table;

impl wasmtime::component::HasData for Table {
    type Data<'a> = &'a mut ResourceTable;
}

/// Advances the engine's epoch every [`EPOCH_TICK`] for as long as the engine lives.
pub(super) fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("peerhost-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the epoch ticker, wall-time limits will not fire: {e}");
    }
}
