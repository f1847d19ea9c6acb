//! Paths to the guests of `guest-examples/`, built from source by this crate's build script.
//!
//! Tests and benchmarks depend on this crate to get real wasm binaries without committing any.

/// `guest-examples/rust-http` as a `wasi:http/incoming-handler` component.
pub const RUST_HTTP_COMPONENT: &str = env!("AMPHI_GUEST_RUST_HTTP_COMPONENT");
/// `guest-examples/rust-p3` as a `wasi:http/handler@0.3.0` component (WASI 0.3); also the
/// conformance suite's `p3-wasm` binding.
pub const RUST_P3_COMPONENT: &str = env!("AMPHI_GUEST_RUST_P3_COMPONENT");
/// `guest-examples/rust-cgi` as a preview1 command module speaking CGI.
pub const RUST_CGI_MODULE: &str = env!("AMPHI_GUEST_RUST_CGI_MODULE");
/// `guest-examples/c-cgi` (C, wasi-libc) as a preview1 command module speaking CGI.
pub const C_CGI_MODULE: &str = env!("AMPHI_GUEST_C_CGI_MODULE");
/// `guest-examples/sdk-hello`, an SDK function, as a component (`amphi build --target wasm`).
pub const SDK_HELLO_COMPONENT: &str = env!("AMPHI_GUEST_SDK_HELLO_COMPONENT");
/// `guest-examples/sdk-init`, an SDK function with an initializer (`main!(…, init = setup)`), as a
/// component.
pub const SDK_INIT_COMPONENT: &str = env!("AMPHI_GUEST_SDK_INIT_COMPONENT");
/// The SDK conformance function as a component.
pub const CONFORMANCE_SDK_COMPONENT: &str = env!("AMPHI_GUEST_CONFORMANCE_SDK_COMPONENT");
/// The SDK conformance function, from the same source, as a container build context.
pub const CONFORMANCE_SDK_CONTEXT: &str = env!("AMPHI_GUEST_CONFORMANCE_SDK_CONTEXT");
/// The C conformance function as a preview1 CGI module.
pub const CONFORMANCE_CGI_MODULE: &str = env!("AMPHI_GUEST_CONFORMANCE_CGI_MODULE");
/// The C conformance function, from the same source, as a CGI container's build context.
pub const CONFORMANCE_CGI_CONTEXT: &str = env!("AMPHI_GUEST_CONFORMANCE_CGI_CONTEXT");
/// The Python conformance function: a container serving HTTP on `$PORT`.
pub const CONFORMANCE_PYTHON_CONTEXT: &str = env!("AMPHI_GUEST_CONFORMANCE_PYTHON_CONTEXT");
