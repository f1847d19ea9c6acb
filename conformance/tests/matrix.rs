//! The whole conformance matrix against a real server (started here on a loopback port), real
//! wasmtime and a real Docker engine.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_passes_on_every_binding() {
    common::run_matrix(None).await;
}
