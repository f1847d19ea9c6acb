//! The whole conformance matrix again, against a server whose registry and artifacts are in a
//! real PostgreSQL (`--store`), started for this test: the contract does not depend on where the
//! platform keeps its state.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_passes_on_every_binding_with_a_postgres_store() {
    let postgres = amphi_test_services::Postgres::start();
    common::run_matrix(Some(postgres.url())).await;
}
