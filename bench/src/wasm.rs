//! The wasm backend: a hello call with a fresh instance per request against the bare hyper floor
//! and `wasmtime serve` on the same component (§1), the preview1 CGI binding, instantiation
//! measured inside the server, and deploy-to-first-response, new and after a restart (§2).

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde_json::json;
use wasm_encoder::Section as _;

use crate::load::{Percentiles, WrkRun, alternated, call_ok, warm_up, wrk};
use crate::report::{BarGroup, Chart, Goal, Section};
use crate::servers::{Admin, ChildServer, GatewayOptions, http};
use crate::{Plan, temp_data};

/// The servers of §1, in the order each round runs them.
const SERVERS: [&str; 4] = ["bare hyper (floor)", "Amphi wasm hello", "`wasmtime serve`", "Amphi CGI hello"];

/// §1: latency at 1 connection, throughput at 16 and 64; returns the section and chart groups.
pub async fn hello(plan: &Plan, chart: &mut Chart) -> Result<Section> {
    let component = Path::new(amphi_guest_artifacts::RUST_HTTP_COMPONENT);
    let data = temp_data("wasm-hello")?;
    let floor = ChildServer::floor()?;
    let gateway = ChildServer::gateway(&data, &GatewayOptions::default())?;
    let wasmtime = ChildServer::wasmtime_serve(component)?;
    let admin = Admin::new(gateway.addr);
    admin.deploy_wasm("hello", component).await?;
    admin.deploy_wasm("cgi", Path::new(amphi_guest_artifacts::RUST_CGI_MODULE)).await?;
    let urls = [
        format!("http://{}/", floor.addr),
        format!("http://{}/fn/hello", gateway.addr),
        format!("http://{}/", wasmtime.addr),
        format!("http://{}/fn/cgi", gateway.addr),
    ];
    warm_up(&urls, 1).await?;

    let mut section = Section::new(
        "1. Wasm hello: a fresh instance per request",
        format!(
            "`wrk -t1 -cN -d{}s --latency`, loopback, the four servers alternated in each of {} round(s); \
             medians of the rounds. Every Amphi call gets a brand-new instance (`wasi:http` component \
             `guest-examples/rust-http`, and for CGI the preview1 module `guest-examples/rust-cgi`). \
             `wasmtime serve` {} runs the very same component with `-Scli -Opooling-allocator=y`. \
             The floor is a bare hyper HTTP/1.1 hello-world server on a single-thread runtime.",
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
        "p50 ÷ floor",
        "req/s ÷ wasmtime serve",
    ]);
    let mut figures = serde_json::Map::new();
    let mut goals = Vec::new();
    for connections in [1u32, 16, 64] {
        let medians = alternated(&urls, connections, plan.seconds, plan.rounds)?;
        let (floor_run, wasmtime_run) = (medians[0], medians[2]);
        for (name, run) in SERVERS.iter().zip(&medians) {
            section.row(vec![
                connections.to_string(),
                name.to_string(),
                format!("{:.0}", run.rps),
                format!("{:.0} µs", run.p50_us),
                format!("{:.0} µs", run.p99_us),
                format!("{:.2}", run.rps / floor_run.rps),
                format!("{:.2}", run.p50_us / floor_run.p50_us),
                format!("{:.2}", run.rps / wasmtime_run.rps),
            ]);
        }
        let runs: Vec<_> =
            SERVERS.iter().zip(&medians).map(|(n, r)| json!({ "server": n, "median": r })).collect();
        figures.insert(format!("c{connections}"), json!(runs));
        let amphi = medians[1];
        match connections {
            1 => {
                let ratio = amphi.p50_us / floor_run.p50_us;
                goals.push(Goal::new(
                    "wasm hello latency at 1 connection ≤ 1.5× the floor's (p50)",
                    format!("{:.0} µs vs {:.0} µs: {ratio:.2}×", amphi.p50_us, floor_run.p50_us),
                    ratio <= 1.5,
                ));
                chart.groups.push(BarGroup {
                    heading: "Latency at 1 connection, p50 (lower is better)".into(),
                    unit: "µs".into(),
                    bars: SERVERS.iter().zip(&medians).map(|(n, r)| (n.replace('`', ""), r.p50_us)).collect(),
                });
            }
            16 => {
                let vs_wasmtime = amphi.rps / wasmtime_run.rps;
                let vs_floor = amphi.rps / floor_run.rps;
                goals.push(Goal::new(
                    "wasm hello throughput at 16 connections ≥ 4× `wasmtime serve`",
                    format!("{:.0} vs {:.0} req/s: {vs_wasmtime:.2}×", amphi.rps, wasmtime_run.rps),
                    vs_wasmtime >= 4.0,
                ));
                goals.push(Goal::new(
                    "wasm hello throughput at 16 connections ≥ 30% of the floor",
                    format!("{:.0} vs {:.0} req/s: {:.0}%", amphi.rps, floor_run.rps, vs_floor * 100.0),
                    vs_floor >= 0.3,
                ));
                chart.groups.push(BarGroup {
                    heading: "Throughput at 16 connections (higher is better)".into(),
                    unit: "req/s".into(),
                    bars: SERVERS.iter().zip(&medians).map(|(n, r)| (n.replace('`', ""), r.rps)).collect(),
                });
            }
            _ => {}
        }
    }
    let stats = admin.stats().await?;
    section.notes.push(format!(
        "Gateway counters after the runs: {} instances made, {:.1} µs each on average (store, context \
         and instantiation, wall time, which under load includes waiting for the worker thread; §2 \
         has the cost unloaded); {} calls took a ready instance, {} made their own (under load a \
         call often arrives before the next instance is made).",
        stats["wasm"]["instances_made"],
        stats["wasm"]["instance_mean_ns"].as_f64().unwrap_or(0.0) / 1e3,
        stats["wasm"]["ready_hits"],
        stats["wasm"]["ready_misses"],
    ));
    section.figures = json!({ "runs": figures, "gateway_stats": stats["wasm"] });
    section.goals = goals;
    drop((floor, gateway, wasmtime));
    let _ = std::fs::remove_dir_all(&data);
    Ok(section)
}

/// §2: instantiation per request inside the server; deploy to first response, new and after a
/// restart.
pub async fn startup(plan: &Plan) -> Result<Section> {
    let component = Path::new(amphi_guest_artifacts::RUST_HTTP_COMPONENT);
    let mut section = Section::new(
        "2. Instantiation, deploy and restart",
        format!(
            "Instantiation: {} sequential `GET /fn/hello` on one connection, the gateway's own \
             `Server-Timing: init` of each (the time from the call reaching the wasm backend to an \
             instance ready to run it), with ready instances on (the default) and off \
             (`--wasm-ready-instances 0`: every instance made on the request path). Deploy: upload of \
             a component never seen before (the same code with a unique custom section, so it is \
             compiled), deploy, and its first call answered, {} times. Restart: a new gateway process \
             on the same data directory, from spawn to the first answer of the deployed function, {} \
             times.",
            plan.sequential_calls, plan.rounds, plan.rounds
        ),
    );
    section.columns(&["what", "p50", "p99", "anchor / note"]);

    let mut init = Vec::new();
    for ready_instances in [GatewayOptions::default().ready_instances, 0] {
        let data = temp_data("wasm-init")?;
        let options = GatewayOptions { ready_instances, ..GatewayOptions::default() };
        let gateway = ChildServer::gateway(&data, &options)?;
        let admin = Admin::new(gateway.addr);
        admin.deploy_wasm("hello", component).await?;
        let client = http();
        let url = format!("http://{}/fn/hello", gateway.addr);
        let mut samples = Vec::new();
        for _ in 0..plan.sequential_calls {
            samples.push(call_ok(&client, &url).await?.init_ms() * 1e3);
        }
        let stats = admin.stats().await?;
        init.push((
            Percentiles::of(samples),
            stats["wasm"]["instance_mean_ns"].as_f64().unwrap_or(0.0) / 1e3,
        ));
        drop(gateway);
        let _ = std::fs::remove_dir_all(&data);
    }
    let (ready, inline) = (init[0], init[1]);
    section.row(vec![
        "instantiation on the request path, ready instances on".into(),
        format!("{:.1} µs", ready.0.p50),
        format!("{:.1} µs", ready.0.p99),
        format!("each instance took {:.1} µs (mean) to make, ahead of its request", ready.1),
    ]);
    section.row(vec![
        "instantiation on the request path, ready instances off".into(),
        format!("{:.1} µs", inline.0.p50),
        format!("{:.1} µs", inline.0.p99),
        format!("mean {:.1} µs", inline.1),
    ]);
    section.goals.push(Goal::new(
        "instantiation ≤ 10 µs per request (on the request path, p50)",
        format!(
            "{:.1} µs with ready instances ({:.1} µs when made on the request path)",
            ready.0.p50, inline.0.p50
        ),
        ready.0.p50 <= 10.0,
    ));

    // Deploy to first response, and restart.
    let data = temp_data("wasm-deploy")?;
    let gateway = ChildServer::gateway(&data, &GatewayOptions::default())?;
    let admin = Admin::new(gateway.addr);
    let client = http();
    let base = std::fs::read(component)?;
    let mut deploys = Vec::new();
    for round in 0..plan.rounds {
        let bytes = with_custom_section(&base, &format!("{}-{round}", std::process::id()));
        let began = Instant::now();
        let digest = admin.upload(bytes, "application/wasm").await?;
        admin.deploy("fresh", &digest, json!({})).await?;
        call_ok(&client, &format!("http://{}/fn/fresh", gateway.addr)).await?;
        deploys.push(began.elapsed().as_secs_f64() * 1e3);
    }
    let compiled_before = admin.stats().await?["wasm"]["compiled"].as_u64().unwrap_or(0);
    let addr = gateway.addr;
    drop(gateway);
    let mut restarts = Vec::new();
    let mut recompiled = 0;
    let mut loaded = 0;
    for _ in 0..plan.rounds {
        let began = Instant::now();
        let gateway = ChildServer::gateway_on(addr, &data, &GatewayOptions::default())?;
        call_ok(&client, &format!("http://{addr}/fn/fresh")).await?;
        restarts.push(began.elapsed().as_secs_f64() * 1e3);
        let stats = Admin::new(gateway.addr).stats().await?;
        recompiled += stats["wasm"]["compiled"].as_u64().unwrap_or(0);
        loaded += stats["wasm"]["loaded_from_disk"].as_u64().unwrap_or(0);
    }
    let _ = std::fs::remove_dir_all(&data);
    let (deploy, restart) = (Percentiles::of(deploys), Percentiles::of(restarts));
    section.row(vec![
        "new upload: upload + compile + deploy + first response".into(),
        format!("{:.1} ms", deploy.p50),
        format!("{:.1} ms", deploy.p99),
        format!("{} KiB component; {compiled_before} compilations", base.len() / 1024),
    ]);
    section.row(vec![
        "restart: process start to the first response".into(),
        format!("{:.1} ms", restart.p50),
        format!("{:.1} ms", restart.p99),
        format!("compiled again: {recompiled}; loaded from disk: {loaded}"),
    ]);
    section.goals.push(Goal::new(
        "restart serves a deployed function without recompiling",
        format!("{recompiled} compilations in {} restarts; {loaded} loads of compiled code", plan.rounds),
        recompiled == 0 && loaded > 0,
    ));
    section.figures = json!({
        "init_ready_us": ready.0, "instance_mean_ready_us": ready.1,
        "init_inline_us": inline.0, "instance_mean_inline_us": inline.1,
        "deploy_ms": deploy, "restart_ms": restart,
        "recompiled_after_restart": recompiled, "loaded_from_disk_after_restart": loaded,
    });
    Ok(section)
}

/// `wasm` with a custom section appended: the same code under a new digest.
fn with_custom_section(wasm: &[u8], name: &str) -> Vec<u8> {
    let mut out = wasm.to_vec();
    wasm_encoder::CustomSection { name: name.into(), data: (&[][..]).into() }.append_to(&mut out);
    out
}

/// The gateway's serving choices, each turned off in turn: what each is worth here.
pub async fn choices(plan: &Plan) -> Result<Section> {
    let component = Path::new(amphi_guest_artifacts::RUST_HTTP_COMPONENT);
    let defaults = GatewayOptions::default();
    let variants = [
        ("defaults (ready instances, a worker per CPU)", defaults),
        (
            "no ready instances (`--wasm-ready-instances 0`)",
            GatewayOptions { ready_instances: 0, ..defaults },
        ),
        ("one worker (`--workers 1`)", GatewayOptions { workers: 1, ..defaults }),
    ];
    let mut gateways = Vec::new();
    let mut data_dirs = Vec::new();
    for (index, (_, options)) in variants.iter().enumerate() {
        let data = temp_data(&format!("choices-{index}"))?;
        let gateway = ChildServer::gateway(&data, options)?;
        Admin::new(gateway.addr).deploy_wasm("hello", component).await?;
        let url = format!("http://{}/fn/hello", gateway.addr);
        wrk(&url, 16, 1)?;
        gateways.push((gateway, url));
        data_dirs.push(data);
    }
    let mut section = Section::new(
        "1b. What each serving choice is worth",
        format!(
            "The wasm hello on three gateways that differ in one setting each, alternated in each of \
             {} round(s) of `wrk -t1 -d{}s`; medians. Ratios are to the defaults.",
            plan.rounds, plan.seconds
        ),
    );
    section.columns(&[
        "gateway",
        "p50 at 1 connection",
        "req/s at 16 connections",
        "p50 ÷ defaults",
        "req/s ÷ defaults",
    ]);
    let mut runs: Vec<[Vec<WrkRun>; 2]> = variants.iter().map(|_| Default::default()).collect();
    for _ in 0..plan.rounds {
        for (index, (_, url)) in gateways.iter().enumerate() {
            runs[index][0].push(wrk(url, 1, plan.seconds)?);
            runs[index][1].push(wrk(url, 16, plan.seconds)?);
        }
    }
    let medians: Vec<(WrkRun, WrkRun)> =
        runs.iter().map(|[c1, c16]| (WrkRun::median_of(c1), WrkRun::median_of(c16))).collect();
    let mut figures = Vec::new();
    for ((name, _), (c1, c16)) in variants.iter().zip(&medians) {
        section.row(vec![
            name.to_string(),
            format!("{:.0} µs", c1.p50_us),
            format!("{:.0}", c16.rps),
            format!("{:.2}", c1.p50_us / medians[0].0.p50_us),
            format!("{:.2}", c16.rps / medians[0].1.rps),
        ]);
        figures.push(json!({ "gateway": name, "c1": c1, "c16": c16 }));
    }
    section.figures = json!(figures);
    drop(gateways);
    for data in data_dirs {
        let _ = std::fs::remove_dir_all(data);
    }
    Ok(section)
}
