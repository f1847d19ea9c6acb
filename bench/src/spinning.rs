//! §4b, spinning guests: the wasm hello measured alone and while 8 wasm guests spin in endless
//! loops on the same gateway, alternated round by round. A guest that runs long must not take
//! the serving threads from everyone else (issue 11, point 4).

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::load::{WrkRun, call, wrk};
use crate::report::{Goal, Section};
use crate::servers::{Admin, ChildServer, GatewayOptions, http};
use crate::{Plan, temp_data};

/// Guests spinning at once during the loaded rounds.
const SPINNERS: usize = 8;
/// The goal: the hello's p50 at 1 connection with them spinning, over its p50 alone.
const MAX_SLOWDOWN: f64 = 2.0;

/// Runs the section.
pub async fn run(plan: &Plan) -> Result<Section> {
    let data = temp_data("spinning")?;
    let gateway = ChildServer::gateway(&data, &GatewayOptions::default())?;
    let admin = Admin::new(gateway.addr);
    let component = std::path::Path::new(amphi_guest_artifacts::RUST_HTTP_COMPONENT);
    admin.deploy_wasm("hello", component).await?;
    let digest = admin.upload(std::fs::read(component)?, "application/wasm").await?;
    admin.deploy("spin", &digest, json!({ "timeout_ms": 600_000, "concurrency": 100 })).await?;
    let hello = format!("http://{}/fn/hello", gateway.addr);
    let spin = format!("http://{}/fn/spin/loop", gateway.addr);
    wrk(&hello, 1, 1)?;

    let mut alone: [Vec<WrkRun>; 2] = Default::default();
    let mut spinning: [Vec<WrkRun>; 2] = Default::default();
    for _ in 0..plan.rounds {
        for (index, connections) in [1, 16].into_iter().enumerate() {
            alone[index].push(wrk(&hello, connections, plan.seconds)?);
            // Each spinner is a call left running; aborting its task hangs up, which stops the guest.
            let spinners: Vec<_> = (0..SPINNERS)
                .map(|_| {
                    let (client, url) = (http(), spin.clone());
                    tokio::spawn(async move {
                        tokio::time::timeout(Duration::from_secs(120), call(&client, &url)).await
                    })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(300)).await;
            spinning[index].push(wrk(&hello, connections, plan.seconds)?);
            for spinner in spinners {
                spinner.abort();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    drop(gateway);
    let _ = std::fs::remove_dir_all(&data);

    let (alone_1, spinning_1) = (WrkRun::median_of(&alone[0]), WrkRun::median_of(&spinning[0]));
    let (alone_16, spinning_16) = (WrkRun::median_of(&alone[1]), WrkRun::median_of(&spinning[1]));
    let mut section = Section::new(
        "4b. Spinning guests: wasm calls while 8 wasm guests loop forever",
        format!(
            "One gateway (its default worker threads) serves the wasm hello and, in the loaded \
             rounds, {SPINNERS} calls of `rust-http`'s `/loop` that never end on their own. Each \
             round runs `wrk -t1 -d{}s` on the hello alone, then again while the {SPINNERS} guests \
             spin; {} round(s), medians.",
            plan.seconds, plan.rounds
        ),
    );
    section.columns(&["wasm hello", "alone", "with 8 spinning guests", "ratio"]);
    for (what, a, s) in [
        ("p50 at 1 connection", alone_1.p50_us, spinning_1.p50_us),
        ("p99 at 1 connection", alone_1.p99_us, spinning_1.p99_us),
    ] {
        section.row(vec![what.into(), format!("{a:.0} µs"), format!("{s:.0} µs"), format!("{:.2}×", s / a)]);
    }
    section.row(vec![
        "req/s at 16 connections".into(),
        format!("{:.0}", alone_16.rps),
        format!("{:.0}", spinning_16.rps),
        format!("{:.2}×", spinning_16.rps / alone_16.rps),
    ]);
    let slowdown = spinning_1.p50_us / alone_1.p50_us;
    section.goals.push(Goal::new(
        format!("8 spinning guests leave the hello p50 at 1 kept-alive connection ≤ {MAX_SLOWDOWN}× alone"),
        format!("{:.0} vs {:.0} µs: {slowdown:.2}×", spinning_1.p50_us, alone_1.p50_us),
        slowdown <= MAX_SLOWDOWN,
    ));
    section.figures = json!({
        "alone": { "c1": alone_1, "c16": alone_16 },
        "spinning": { "c1": spinning_1, "c16": spinning_16 },
    });
    Ok(section)
}
