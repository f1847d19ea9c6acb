//! §9, WASI 0.3: the `wasi:http@0.3` hello of `guest-examples/rust-p3`, a fresh instance per
//! request, against `wasmtime serve` on the same component (which reuses instances by default),
//! Amphi's own WASI 0.2 hello, the same component with `reuse`, and the bare hyper floor.

use std::path::Path;

use anyhow::Result;
use serde_json::json;

use crate::load::{alternated, warm_up};
use crate::report::{Goal, Section};
use crate::servers::{Admin, ChildServer, GatewayOptions};
use crate::{Plan, temp_data};

/// How many times `wasmtime serve`'s throughput Amphi's fresh-instance p3 hello should reach.
const GOAL_OF_WASMTIME: f64 = 1.5;

const SERVERS: [&str; 5] = [
    "bare hyper (floor)",
    "Amphi p3 hello, fresh instance per request",
    "Amphi p3 hello, `reuse` (128 requests, 16 at once)",
    "Amphi p2 hello (rust-http), fresh instance per request",
    "`wasmtime serve` p3 hello (reuses: 128 requests, 16 at once)",
];

/// Runs the section.
pub async fn run(plan: &Plan) -> Result<Section> {
    let p3 = Path::new(amphi_guest_artifacts::RUST_P3_COMPONENT);
    let data = temp_data("p3")?;
    let floor = ChildServer::floor()?;
    let gateway = ChildServer::gateway(&data, &GatewayOptions::default())?;
    let wasmtime = ChildServer::wasmtime_serve(p3)?;
    let admin = Admin::new(gateway.addr);
    let digest = admin.upload(std::fs::read(p3)?, "application/wasm").await?;
    admin.deploy("p3", &digest, json!({})).await?;
    admin.deploy("p3-reuse", &digest, json!({ "reuse": {} })).await?;
    admin.deploy_wasm("p2", Path::new(amphi_guest_artifacts::RUST_HTTP_COMPONENT)).await?;
    let urls = [
        format!("http://{}/", floor.addr),
        format!("http://{}/fn/p3", gateway.addr),
        format!("http://{}/fn/p3-reuse", gateway.addr),
        format!("http://{}/fn/p2", gateway.addr),
        format!("http://{}/", wasmtime.addr),
    ];
    warm_up(&urls, 1).await?;

    let mut section = Section::new(
        "9. WASI 0.3 components",
        format!(
            "`wrk -t1 -cN -d{}s --latency`, loopback, the five servers alternated in each of {} \
             round(s); medians of the rounds. The p3 hello is `GET /` of `guest-examples/rust-p3` \
             (an async `wasi:http/handler@0.3.0` export writing its body from a spawned task). \
             `wasmtime serve` {} runs the same component with `-Scli -Opooling-allocator=y` and its \
             defaults for WASI 0.3, which reuse an instance for up to 128 requests, 16 at once. The \
             p2 hello is `guest-examples/rust-http`.",
            plan.seconds,
            plan.rounds,
            crate::servers::WASMTIME_VERSION,
        ),
    );
    section.columns(&[
        "connections",
        "server",
        "req/s",
        "p50",
        "p99",
        "req/s ÷ floor",
        "req/s ÷ wasmtime serve",
    ]);
    let mut figures = serde_json::Map::new();
    for connections in [1u32, 16] {
        let medians = alternated(&urls, connections, plan.seconds, plan.rounds)?;
        let (floor_run, wasmtime_run) = (medians[0], medians[4]);
        for (name, run) in SERVERS.iter().zip(&medians) {
            section.row(vec![
                connections.to_string(),
                name.to_string(),
                format!("{:.0}", run.rps),
                format!("{:.0} µs", run.p50_us),
                format!("{:.0} µs", run.p99_us),
                format!("{:.2}", run.rps / floor_run.rps),
                format!("{:.2}", run.rps / wasmtime_run.rps),
            ]);
        }
        let amphi = medians[1];
        match connections {
            1 => section.goals.push(Goal::unchecked(
                "p3 hello p50 at 1 connection (reported against the others)",
                format!(
                    "{:.0} µs; `wasmtime serve` {:.0} µs, p2 hello {:.0} µs, floor {:.0} µs",
                    amphi.p50_us, wasmtime_run.p50_us, medians[3].p50_us, floor_run.p50_us
                ),
            )),
            _ => {
                let ratio = amphi.rps / wasmtime_run.rps;
                section.goals.push(Goal::new(
                    format!(
                        "p3 hello throughput at 16 connections, a fresh instance per request, ≥ \
                         {GOAL_OF_WASMTIME}× `wasmtime serve` with reuse"
                    ),
                    format!("{:.0} vs {:.0} req/s: {ratio:.2}×", amphi.rps, wasmtime_run.rps),
                    ratio >= GOAL_OF_WASMTIME,
                ));
            }
        }
        let runs: Vec<_> =
            SERVERS.iter().zip(&medians).map(|(n, r)| json!({ "server": n, "median": r })).collect();
        figures.insert(format!("c{connections}"), json!(runs));
    }
    let stats = admin.stats().await?;
    section.figures = json!({ "runs": figures, "gateway_stats": stats["wasm"] });
    drop(gateway);
    let _ = std::fs::remove_dir_all(&data);
    Ok(section)
}
