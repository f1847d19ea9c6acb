//! Paths to the guests of `guest-examples/`, built from source by this crate's build script.
//!
//! Tests and benchmarks depend on this crate to get real wasm binaries without committing any.

/// `guest-examples/rust-http` as a `wasi:http/incoming-handler` component.
pub const RUST_HTTP_COMPONENT: &str = env!("AMPHI_GUEST_RUST_HTTP_COMPONENT");
/// `guest-examples/rust-cgi` as a preview1 command module speaking CGI.
pub const RUST_CGI_MODULE: &str = env!("AMPHI_GUEST_RUST_CGI_MODULE");
/// `guest-examples/c-cgi` (C, wasi-libc) as a preview1 command module speaking CGI.
pub const C_CGI_MODULE: &str = env!("AMPHI_GUEST_C_CGI_MODULE");
