//! Writing Amphi functions in Rust: one handler, two backends.
//!
//! A function is one handler from a [`Request`] to a [`Response`], registered with [`main!`]:
//!
//! ```no_run
//! use amphi_sdk::{Request, Response};
//!
//! fn handle(req: Request) -> Response {
//!     req.logger().log(format_args!("greeting {}", req.path()));
//!     Response::text(format!("Hello from {}!\n", req.invocation().function))
//! }
//!
//! amphi_sdk::main!(handle);
//! ```
//!
//! The same crate (a binary: `src/main.rs`) builds for either backend of Amphi:
//! - for `wasm32-wasip1`, [`main!`] exports `wasi:http/incoming-handler`; made a component with the
//!   preview1 *proxy* adapter (`amphi build --target wasm` does both), it is deployed with
//!   `amphi deploy NAME file.wasm`. Every request gets a fresh instance.
//! - for the native target, [`main!`] writes `fn main` as a small HTTP/1.1 server on `$PORT` for a
//!   container image (`amphi build --target container` writes the image's build context), deployed
//!   with `amphi deploy NAME DIR --dockerfile`. One process serves many requests.
//!
//! An async handler is registered with `main!(async handle)`. On the native target it runs on a
//! multi-threaded tokio runtime (its future must be `Send`); a sync handler runs on tokio's
//! blocking pool, so it may block. On wasm both run on the one thread of the instance; an async
//! handler is driven to completion there, and can await futures of its own, not a native runtime's
//! timers or sockets: one that waits on something nothing in the instance can wake stops the call
//! with a message saying so (a 502 with the reason in the log), rather than spinning until its
//! timeout.
//!
//! State a function builds once (tables, parsed templates, compiled regexes) goes in an
//! initializer, registered with `main!(handle, init = setup)`. On wasm it is the component's
//! `wizer-initialize` export: deployed with `amphi deploy NAME f.wasm --init`, it runs once at
//! deploy and every instance starts from the memory it left. Natively it runs once when the
//! process starts, before the server listens (so before the instance reports ready). Either way a
//! handler finds what it set; nothing a handler writes is seen by the next call on wasm.
//!
//! ```no_run
//! use std::sync::OnceLock;
//! use amphi_sdk::{Request, Response};
//!
//! static WORDS: OnceLock<Vec<String>> = OnceLock::new();
//!
//! fn setup() {
//!     WORDS.get_or_init(|| (0..10_000).map(|n| format!("word{n}")).collect());
//! }
//!
//! fn handle(_req: Request) -> Response {
//!     Response::text(format!("{} words\n", WORDS.get().map_or(0, Vec::len)))
//! }
//!
//! amphi_sdk::main!(handle, init = setup);
//! ```
//!
//! The invocation contract the platform keeps (metadata, limits, errors, logs) is `CONTRACT.md` at
//! the root of the Amphi repository. What the SDK adds to it:
//! - the function's configured environment is visible through [`std::env`] on both backends;
//! - a panic in the handler ends the call as a crash: the platform answers 502 (wasm: the instance
//!   traps; native: the process exits after printing the panic, and the platform replaces it);
//! - [`Logger`] lines name their invocation, so they are attributed to it even when one container
//!   serves several calls at once.

mod invocation;
mod request;
mod response;

#[cfg(any(target_family = "wasm", test))]
mod executor;
#[cfg(not(target_family = "wasm"))]
mod native;
#[cfg(target_family = "wasm")]
mod wasm;

pub use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
pub use invocation::{Invocation, Logger};
pub use request::Request;
pub use response::{Body, Response};

/// Registers the function's handler: `main!(handle)` for `fn handle(Request) -> Response`,
/// `main!(async handle)` for `async fn handle(Request) -> Response`; either may add
/// `init = setup` for an initializer `fn setup()` (see the crate's docs).
///
/// Use it once, at the top level of the binary crate's `src/main.rs`; it writes `fn main`.
///
/// ```no_run
/// use amphi_sdk::{Request, Response};
///
/// async fn handle(req: Request) -> Response {
///     Response::text(format!("{} bytes\n", req.body().len()))
/// }
///
/// amphi_sdk::main!(async handle);
/// ```
#[macro_export]
macro_rules! main {
    // The `async` arms come first: a `path` fragment cannot start with the keyword.
    (async $handler:path, init = $init:path) => {
        $crate::__entry!(async $handler);
        $crate::__initializer!($init);
    };
    (async $handler:path) => {
        $crate::__entry!(async $handler);
        $crate::__initializer!();
    };
    ($handler:path, init = $init:path) => {
        $crate::__entry!(sync $handler);
        $crate::__initializer!($init);
    };
    ($handler:path) => {
        $crate::__entry!(sync $handler);
        $crate::__initializer!();
    };
}

/// What `init = f` of [`main!`] expands to on wasm: the `wizer-initialize` export calling `f`
/// with the function's environment loaded.
#[cfg(target_family = "wasm")]
#[doc(hidden)]
#[macro_export]
macro_rules! __initializer {
    ($init:path) => {
        struct AmphiInitializer;

        impl $crate::__private::initializer::Guest for AmphiInitializer {
            fn wizer_initialize() {
                $crate::__private::run_initializer($init)
            }
        }

        $crate::__private::initializer::__export_initializer!(
            AmphiInitializer with_types_in $crate::__private::initializer
        );
    };
    () => {};
}

/// What `init = f` of [`main!`] expands to natively: `f` runs before the server starts.
#[cfg(not(target_family = "wasm"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __initializer {
    ($init:path) => {
        #[doc(hidden)]
        fn __amphi_initializer() -> Option<fn()> {
            Some($init)
        }
    };
    () => {
        #[doc(hidden)]
        fn __amphi_initializer() -> Option<fn()> {
            None
        }
    };
}

/// What [`main!`] expands to on wasm: the `wasi:http/incoming-handler` export.
#[cfg(target_family = "wasm")]
#[doc(hidden)]
#[macro_export]
macro_rules! __entry {
    ($kind:ident $handler:path) => {
        struct AmphiFunction;

        impl $crate::__private::wasip2::exports::http::incoming_handler::Guest for AmphiFunction {
            fn handle(
                request: $crate::__private::wasip2::http::types::IncomingRequest,
                response_out: $crate::__private::wasip2::http::types::ResponseOutparam,
            ) {
                $crate::__entry!(@call $kind $handler, request, response_out);
            }
        }

        $crate::__private::wasip2::http::proxy::export!(AmphiFunction);

        // A wasm32-wasip1 binary needs a `main`; the component never calls it.
        fn main() {}
    };
    (@call sync $handler:path, $request:ident, $out:ident) => {
        $crate::__private::handle_incoming($request, $out, $handler)
    };
    (@call async $handler:path, $request:ident, $out:ident) => {
        $crate::__private::handle_incoming($request, $out, |request| {
            $crate::__private::block_on($handler(request))
        })
    };
}

/// What [`main!`] expands to natively: `fn main` serving HTTP on `$PORT`.
#[cfg(not(target_family = "wasm"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __entry {
    (sync $handler:path) => {
        fn main() {
            $crate::__private::serve_sync(__amphi_initializer(), $handler)
        }
    };
    (async $handler:path) => {
        fn main() {
            $crate::__private::serve_async(__amphi_initializer(), |request| $handler(request))
        }
    };
}

/// Items [`main!`] expands to; not part of the API.
#[doc(hidden)]
pub mod __private {
    #[cfg(not(target_family = "wasm"))]
    pub use crate::native::{serve_async, serve_sync};
    #[cfg(target_family = "wasm")]
    pub use crate::wasm::{block_on, handle_incoming, initializer, run_initializer};
    #[cfg(target_family = "wasm")]
    pub use wasip2;
}
