//! §8, pre-initialization: a guest whose initializer takes about half a second
//! (`guest-examples/sdk-init`), called with its table built at deploy (`init`), and the same
//! artifact initializing lazily in every call (a fresh instance per request), against the plain
//! SDK hello; the deploy with `--init` and the snapshot's size.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::load::{Percentiles, call_ok};
use crate::report::{Goal, Section};
use crate::servers::{Admin, ChildServer, GatewayOptions, http, installed_wasmtime_cli};
use crate::{Plan, temp_data};

/// How many times faster a pre-initialized call should be than one initializing lazily.
const GOAL_SPEEDUP: f64 = 100.0;
/// How much slower than the plain hello a pre-initialized call may be.
const GOAL_OF_HELLO: f64 = 1.2;

/// Runs the section.
pub async fn run(plan: &Plan) -> Result<Section> {
    let calls = plan.sequential_calls;
    let lazy_calls = if plan.rounds > 1 { 20 } else { 5 };
    let mut section = Section::new(
        "8. Pre-initialization",
        format!(
            "`sdk-init` builds a 65,536-entry table in its initializer (about half a second). One \
             gateway, three functions: `eager` (deployed with `init`: the table is in the snapshot), \
             `lazy` (the same artifact without it: every call, a fresh instance, builds the table \
             first) and `hello` (`sdk-hello`, the plain SDK function). Calls are sequential GETs on \
             one connection, timed to the end of the body: {calls} of `/lookup?key=7` on `eager` \
             and of `/` on `hello`, alternated in {rounds} rounds, and {lazy_calls} on `lazy`. The \
             deploy is timed from the PUT to its answer (the artifact already uploaded and \
             compiled). `wasmtime serve -Scli` on the same artifact where its CLI is installed.",
            rounds = plan.rounds
        ),
    );
    section.columns(&["what", "p50", "p99", "note"]);

    let data = temp_data("preinit")?;
    let gateway = ChildServer::gateway(&data, &GatewayOptions::default())?;
    let admin = Admin::new(gateway.addr);
    let init_wasm = std::fs::read(amphi_guest_artifacts::SDK_INIT_COMPONENT).context("sdk-init built")?;
    let digest = admin.upload(init_wasm, "application/wasm").await?;
    admin.deploy_wasm("hello", Path::new(amphi_guest_artifacts::SDK_HELLO_COMPONENT)).await?;
    admin.deploy("lazy", &digest, json!({})).await?;
    let began = Instant::now();
    let body = serde_json::to_vec(&json!({ "digest": digest, "config": { "init": "wizer-initialize" } }))?;
    let eager: Value = admin.request("PUT", "/functions/eager", body.into(), "application/json").await?;
    let deploy_ms = began.elapsed().as_secs_f64() * 1e3;
    let init = &eager["init"];

    let http = http();
    let url = |name: &str, path: &str| format!("http://{}/fn/{name}{path}", gateway.addr);
    let (eager_url, hello_url, lazy_url) =
        (url("eager", "/lookup?key=7"), url("hello", "/"), url("lazy", "/lookup?key=7"));
    for _ in 0..50 {
        call_ok(&http, &eager_url).await?;
        call_ok(&http, &hello_url).await?;
    }
    let (mut eager_ms, mut hello_ms) = (Vec::new(), Vec::new());
    for _ in 0..plan.rounds {
        for _ in 0..calls / plan.rounds {
            eager_ms.push(call_ok(&http, &eager_url).await?.ms());
            hello_ms.push(call_ok(&http, &hello_url).await?.ms());
        }
    }
    let mut lazy_ms = Vec::new();
    for _ in 0..lazy_calls {
        lazy_ms.push(call_ok(&http, &lazy_url).await?.ms());
    }
    drop(gateway);
    let _ = std::fs::remove_dir_all(&data);

    let (eager, hello, lazy) =
        (Percentiles::of(eager_ms), Percentiles::of(hello_ms), Percentiles::of(lazy_ms));
    let speedup = lazy.p50 / eager.p50;
    let of_hello = eager.p50 / hello.p50;
    section.row(vec![
        "pre-initialized (`init`), /lookup".into(),
        format!("{:.3} ms", eager.p50),
        format!("{:.3} ms", eager.p99),
        format!("{speedup:.0}× faster than lazy; {of_hello:.2}× the plain hello"),
    ]);
    section.row(vec![
        "initializing lazily in each call, /lookup".into(),
        format!("{:.1} ms", lazy.p50),
        format!("{:.1} ms", lazy.p99),
        format!("{lazy_calls} calls: each fresh instance builds the table"),
    ]);
    section.row(vec![
        "plain SDK hello, /".into(),
        format!("{:.3} ms", hello.p50),
        format!("{:.3} ms", hello.p99),
        "the anchor".into(),
    ]);
    section.row(vec![
        "deploy with `init`".into(),
        format!("{deploy_ms:.0} ms"),
        String::new(),
        format!(
            "the initializer ran {} ms of it (the rest: instrumenting, compiling the instrumented \
             and the snapshot); snapshot {:.2} MiB (artifact {:.2} MiB)",
            init["init_ms"],
            init["size"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
            std::fs::metadata(amphi_guest_artifacts::SDK_INIT_COMPONENT)?.len() as f64 / (1 << 20) as f64
        ),
    ]);
    if installed_wasmtime_cli().is_some() {
        let serve = ChildServer::wasmtime_serve(Path::new(amphi_guest_artifacts::SDK_INIT_COMPONENT))?;
        let serve_url = format!("http://{}/lookup?key=7", serve.addr);
        // As many calls as the lazy run: `wasmtime serve` 48 makes a wasi:http 0.2 component a
        // fresh instance per request too, so each of its calls may build the table.
        call_ok(&http, &serve_url).await?;
        let mut serve_ms = Vec::new();
        for _ in 0..lazy_calls {
            serve_ms.push(call_ok(&http, &serve_url).await?.ms());
        }
        let serve = Percentiles::of(serve_ms);
        section.row(vec![
            "`wasmtime serve` on sdk-init, /lookup".into(),
            format!("{:.3} ms", serve.p50),
            format!("{:.3} ms", serve.p99),
            format!("{lazy_calls} calls; {:.0}× the pre-initialized p50", serve.p50 / eager.p50),
        ]);
    } else {
        section.row(vec![
            "`wasmtime serve` on sdk-init".into(),
            "not measured".into(),
            String::new(),
            "the wasmtime 48 CLI is not installed on this machine (`cargo install wasmtime-cli@48.0.8`)"
                .into(),
        ]);
    }
    section.goals.push(Goal::new(
        format!("pre-initialized p50 ≥ {GOAL_SPEEDUP:.0}× faster than initializing lazily per call"),
        format!("{:.3} ms vs {:.1} ms: {speedup:.0}×", eager.p50, lazy.p50),
        speedup >= GOAL_SPEEDUP,
    ));
    section.goals.push(Goal::new(
        format!("pre-initialized p50 within {GOAL_OF_HELLO}× of the plain hello's"),
        format!("{:.3} ms vs {:.3} ms: {of_hello:.2}×", eager.p50, hello.p50),
        of_hello <= GOAL_OF_HELLO,
    ));
    Ok(section)
}
