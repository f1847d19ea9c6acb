//! The one shared wasmtime [`Engine`], configured for a fresh instance per request.
//!
//! Choices, each measured on this project's machines (what each is worth: `bench/README.md`):
//! - the pooling allocator, so an instance's memory slot is reused, not mapped anew; probed at
//!   start, with a fall-back to on-demand allocation and a log line when the host refuses it;
//! - slots kept resident and reset with `pagemap_scan` where the kernel has it: only pages the
//!   guest wrote are reset, with no `madvise` and so no TLB-shootdown interrupts;
//! - by default no guard pages and no signal-based traps: explicit bounds checks, which removes two
//!   `mprotect` calls per request that grows memory. Still memory-safe; the trade-off is the lost
//!   Spectre heap mitigation and slightly slower wasm code. [`WasmSettings::guard_pages`] restores
//!   guard pages;
//! - copy-on-write memory images, and epoch interruption for deadlines (a ticker thread bumps the
//!   epoch every [`EPOCH_TICK`]).

use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of deadlines and of yielding to other tasks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Settings of the wasm backend, shared by every function.
#[derive(Debug, Clone)]
pub struct WasmSettings {
    /// Instances that can be alive at once (pooling allocator slots).
    pub pool_instances: u32,
    /// The largest memory limit a function may ask for; also the size of a pooled memory slot.
    pub max_memory_bytes: u64,
    /// Guard pages and signal-based traps instead of explicit bounds checks.
    pub guard_pages: bool,
    /// Compiled functions kept in memory (the rest are reloaded from disk on use).
    pub cache_entries: u64,
    /// Largest response a CGI module may write to stdout.
    pub max_cgi_response_bytes: usize,
    /// Instances made ahead of their requests.
    pub ready: crate::ReadySettings,
    /// Linear memory all wasm instances may hold together; a grow past it is refused and the
    /// call gets 503.
    pub memory_budget_bytes: u64,
    /// How uploads are compiled (a worker process with limits).
    pub compile: crate::compile::CompileSettings,
}

impl Default for WasmSettings {
    fn default() -> Self {
        Self {
            pool_instances: 1000,
            max_memory_bytes: 512 << 20,
            guard_pages: false,
            cache_entries: 1000,
            max_cgi_response_bytes: 32 << 20,
            ready: crate::ReadySettings::default(),
            compile: crate::compile::CompileSettings::default(),
            memory_budget_bytes: u64::MAX,
        }
    }
}

/// Builds the engine. Returns it with whether the pooling allocator is in use.
pub fn build(settings: &WasmSettings) -> wasmtime::Result<(Engine, bool)> {
    let mut config = base_config(settings);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(settings)));
    match Engine::new(&config) {
        Ok(engine) => Ok((engine, true)),
        Err(error) => {
            tracing::warn!(
                %error,
                "the pooling allocator is not available on this host; using on-demand allocation (slower instantiation)"
            );
            Ok((Engine::new(&base_config(settings))?, false))
        }
    }
}

/// The engine configuration that decides what compiled code looks like; the compile worker
/// builds its engine from it too.
pub(crate) fn base_config(settings: &WasmSettings) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.memory_init_cow(true);
    config.wasm_component_model(true);
    // WASI 0.3: async lifts and lowers, streams and futures.
    config.wasm_component_model_async(true);
    if !settings.guard_pages {
        config.signals_based_traps(false);
        config.memory_guard_size(0);
        config.guard_before_linear_memory(false);
        config.memory_reservation(settings.max_memory_bytes);
        config.memory_reservation_for_growth(0);
    }
    config
}

fn pooling(settings: &WasmSettings) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    let instances = settings.pool_instances;
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(4))
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(4))
        .total_stacks(instances)
        .max_memory_size(settings.max_memory_bytes as usize)
        .linear_memory_keep_resident(2 << 20)
        .table_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto);
    pool
}

/// Starts the thread that advances `engine`'s epoch; it ends when the engine is dropped.
/// Without it no guest would ever yield or meet its deadline, so failing to start it is fatal.
pub fn start_epoch_ticker(engine: &Engine) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new().name("amphi-epoch".into()).spawn(move || {
        while let Some(engine) = weak.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(EPOCH_TICK);
        }
    })?;
    Ok(())
}
