//! Making a WASI preview1 core module a component.

use wasi_preview1_component_adapter_provider as adapters;

use crate::ToolchainError;

/// Which preview1 adapter stands between the module's preview1 imports and WASI 0.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapter {
    /// For `wasi:http/proxy` components: only the proxy world's interfaces (stdio, clocks,
    /// random); no preview1 environment, arguments or files. What SDK functions use.
    Proxy,
    /// The whole WASI 0.2 CLI world behind preview1, for a library-shaped module.
    Reactor,
}

/// Wraps `core_module` into a component with `adapter`.
pub fn componentize(core_module: &[u8], adapter: Adapter) -> Result<Vec<u8>, ToolchainError> {
    let bytes = match adapter {
        Adapter::Proxy => adapters::WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER,
        Adapter::Reactor => adapters::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
    };
    wit_component::ComponentEncoder::default()
        .module(core_module)
        .map_err(invalid)?
        .validate(true)
        .adapter(adapters::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, bytes)
        .map_err(invalid)?
        .encode()
        .map_err(invalid)
}

fn invalid(error: impl std::fmt::Display) -> ToolchainError {
    ToolchainError::Invalid(format!("cannot make a component: {error:#}"))
}
