//! The bindings every case runs against: one function, six ways of reaching the contract.

use std::path::PathBuf;

use amphi_guest_artifacts as guests;

/// How a binding's code gets to the server.
#[derive(Debug, Clone)]
pub enum Source {
    /// A `.wasm` file, uploaded as it is.
    Wasm(PathBuf),
    /// A directory with a Dockerfile, packed and built by the server.
    Context(PathBuf),
}

/// One way of writing a function for Amphi.
#[derive(Debug, Clone)]
pub struct Binding {
    /// Its column in the matrix.
    pub name: &'static str,
    /// `wasm` or `container`.
    pub backend: &'static str,
    /// `http` (a server or a wasi:http handler) or `cgi` (a program per request).
    pub protocol: &'static str,
    /// What is deployed.
    pub source: Source,
}

impl Binding {
    /// The tags a case's `when` overrides are keyed by, in the order they apply.
    pub fn tags(&self) -> [&'static str; 2] {
        [self.backend, self.protocol]
    }
}

/// Every binding, built from the sources in `guest-examples/conformance/`.
pub fn all() -> Vec<Binding> {
    vec![
        Binding {
            name: "sdk-wasm",
            backend: "wasm",
            protocol: "http",
            source: Source::Wasm(guests::CONFORMANCE_SDK_COMPONENT.into()),
        },
        Binding {
            name: "p3-wasm",
            backend: "wasm",
            protocol: "http",
            source: Source::Wasm(guests::RUST_P3_COMPONENT.into()),
        },
        Binding {
            name: "sdk-container",
            backend: "container",
            protocol: "http",
            source: Source::Context(guests::CONFORMANCE_SDK_CONTEXT.into()),
        },
        Binding {
            name: "cgi-wasm",
            backend: "wasm",
            protocol: "cgi",
            source: Source::Wasm(guests::CONFORMANCE_CGI_MODULE.into()),
        },
        Binding {
            name: "python-container",
            backend: "container",
            protocol: "http",
            source: Source::Context(guests::CONFORMANCE_PYTHON_CONTEXT.into()),
        },
        Binding {
            name: "cgi-container",
            backend: "container",
            protocol: "cgi",
            source: Source::Context(guests::CONFORMANCE_CGI_CONTEXT.into()),
        },
    ]
}
