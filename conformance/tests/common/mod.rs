//! Runs the whole conformance matrix against a real server started here on a loopback port.

use amphi_conformance::{Selection, Target};
use amphi_gateway::{ServeConfig, Server};

/// Starts a server on a fresh data directory (with `store`, when given), runs the selected cases
/// (`AMPHI_CONFORMANCE_CASE`, `AMPHI_CONFORMANCE_BINDING`) on every binding, and fails on any
/// failure.
pub async fn run_matrix(store: Option<String>) {
    let data = tempfile::tempdir().expect("temp dir");
    let mut config = ServeConfig::new("127.0.0.1:0".parse().expect("address"), data.path().to_path_buf());
    config.token = Some("conformance-token-0123456789".into());
    config.store = store;
    let server = Server::bind(config).await.expect("the server binds");
    let target = Target {
        url: format!("http://{}", server.local_addr().expect("address")),
        token: server.token().0.to_string(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let selection = Selection {
        case: std::env::var("AMPHI_CONFORMANCE_CASE").ok(),
        binding: std::env::var("AMPHI_CONFORMANCE_BINDING").ok(),
    };
    let matrix = amphi_conformance::run(&target, &selection).await;

    let _ = stop.send(());
    serving.await.expect("the server task").expect("the server shuts down cleanly");
    let matrix = matrix.expect("the suite runs");
    println!("{}", matrix.render());
    assert!(matrix.failures().next().is_none(), "conformance failures:\n{}", matrix.render());
}
