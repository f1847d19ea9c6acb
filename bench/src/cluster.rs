//! §10, gateways sharing PostgreSQL (`--store`): how soon a deploy made through one gateway is
//! served by the others, what the shared store costs a call, throughput behind HAProxy, and how
//! fast a backlog of async jobs drains with one executor and with three.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

use crate::load::{Percentiles, alternated, warm_up};
use crate::report::{Goal, Section};
use crate::servers::{Admin, ChildServer, GatewayOptions, Http, http};
use crate::{Plan, temp_data};
use amphi_test_services::Haproxy;

/// Most a deploy may take to be served by every gateway.
const GOAL_SERVED_EVERYWHERE_MS: f64 = 1000.0;
/// Most throughput the shared store may cost a call.
const GOAL_STORE_COST: f64 = 0.10;

/// Runs the section.
pub async fn run(plan: &Plan) -> Result<Section> {
    let deploys = if plan.rounds > 1 { 50 } else { 10 };
    let mut section = Section::new(
        "10. Gateways sharing PostgreSQL",
        format!(
            "A PostgreSQL 15 server of the run's own (initdb in a temporary directory, loopback, \
             default settings), three gateways with `--store` on it (`A`, `B`, `C`, each its own \
             data directory). {deploys} deploys of `guest-examples/rust-http` through A, each with a \
             new `VERSION_TAG`: the time from sending the `PUT` until B and C both answer \
             `/sleep?ms=0` with the new tag (polled every millisecond). Then the wasm hello at 16 \
             connections: one embedded gateway, gateway A alone, and HAProxy (round robin, \
             Debian's) in front of 1, 2 and 3 of the gateways, alternated in {} round(s) of {} s, \
             medians.",
            plan.rounds, plan.seconds
        ),
    );
    section.columns(&["what", "p50", "p99", "note"]);

    let postgres = amphi_test_services::Postgres::start();
    let data = temp_data("cluster")?;
    let gateways = ["a", "b", "c"]
        .iter()
        .map(|name| ChildServer::gateway_with_store(&data.join(name), &postgres.url()))
        .collect::<Result<Vec<_>>>()?;
    let admin = Admin::new(gateways[0].addr);
    let component = Path::new(amphi_guest_artifacts::RUST_HTTP_COMPONENT);
    let digest = admin.upload(std::fs::read(component)?, "application/wasm").await?;
    let client = http();
    let mut served_ms = Vec::new();
    for round in 0..deploys {
        let tag = format!("v{round}");
        let began = Instant::now();
        admin.deploy("hello", &digest, json!({ "env": { "VERSION_TAG": tag } })).await?;
        for other in &gateways[1..] {
            let url = format!("http://{}/fn/hello/sleep?ms=0", other.addr);
            loop {
                if body_of(&client, &url).await? == tag {
                    break;
                }
                if began.elapsed() > Duration::from_secs(30) {
                    bail!("{} did not serve {tag} within 30 s", other.addr);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        served_ms.push(began.elapsed().as_secs_f64() * 1e3);
    }
    let served = Percentiles::of(served_ms);
    section.row(vec![
        "deploy through A → served by B and C".into(),
        format!("{:.1} ms", served.p50),
        format!("{:.1} ms", served.p99),
        format!("{deploys} deploys; includes the deploy itself (compile cached, one PostgreSQL transaction)"),
    ]);
    section.goals.push(Goal::new(
        format!("a deploy is served by every gateway within {GOAL_SERVED_EVERYWHERE_MS:.0} ms (p99)"),
        format!("p50 {:.1} ms, p99 {:.1} ms", served.p50, served.p99),
        served.p99 <= GOAL_SERVED_EVERYWHERE_MS,
    ));
    let embedded = ChildServer::gateway(&data.join("embedded"), &GatewayOptions::default())?;
    Admin::new(embedded.addr).deploy_wasm("hello", component).await?;
    let addrs: Vec<_> = gateways.iter().map(|g| g.addr).collect();
    let balancers: Vec<_> = (1..=addrs.len()).map(|n| Haproxy::start(&addrs[..n])).collect();
    let mut urls =
        vec![format!("http://{}/fn/hello", embedded.addr), format!("http://{}/fn/hello", addrs[0])];
    urls.extend(balancers.iter().map(|b| format!("http://{}/fn/hello", b.addr)));
    warm_up(&urls, 16).await?;
    let medians = alternated(&urls, 16, plan.seconds, plan.rounds)?;
    let (alone, with_store) = (medians[0], medians[1]);
    let cost = 1.0 - with_store.rps / alone.rps;
    let mut names = vec!["one embedded gateway".to_string(), "one gateway with `--store`".to_string()];
    names.extend((1..=addrs.len()).map(|n| format!("HAProxy → {n} gateway(s) with `--store`")));
    for (name, run) in names.iter().zip(&medians) {
        section.row(vec![
            format!("hello, {name}"),
            format!("{:.0} µs", run.p50_us),
            format!("{:.0} µs", run.p99_us),
            format!(
                "{:.0} req/s at 16 connections, {:.2}× the embedded gateway",
                run.rps,
                run.rps / alone.rps
            ),
        ]);
    }
    section.notes.push(format!(
        "This machine has {} vCPUs, shared by wrk, HAProxy, PostgreSQL and every gateway: more \
         gateways add processes competing for the same cores, not capacity, so throughput behind \
         the balancer cannot grow with the number of gateways here; per core, one gateway alone \
         serves {:.0} req/s. What scaling out buys on this machine is surviving a node's loss \
         (runtime/cli/tests/cluster.rs), not throughput.",
        std::thread::available_parallelism().map_or(0, usize::from),
        alone.rps / std::thread::available_parallelism().map_or(1, usize::from) as f64,
    ));
    section.goals.push(Goal::new(
        format!("`--store postgres` costs ≤ {:.0}% of a call's throughput", GOAL_STORE_COST * 100.0),
        format!(
            "{:.0} vs {:.0} req/s: {:+.1}% (records and log lines shipped to PostgreSQL in batches \
             beside the calls, routes from the shared registry)",
            with_store.rps,
            alone.rps,
            -cost * 100.0
        ),
        cost <= GOAL_STORE_COST,
    ));
    drop((balancers, gateways, embedded));
    drop(postgres);

    let backlog = if plan.rounds > 1 { 6000 } else { 2000 };
    let (one, three) = drain_rates(&data, backlog).await?;
    section.row(vec![
        format!("backlog of {backlog} async jobs drained, 1 gateway"),
        format!("{one:.0} jobs/s"),
        String::new(),
        "queued through the gateway, due at one instant, claimed with `FOR UPDATE SKIP LOCKED`".into(),
    ]);
    section.row(vec![
        format!("backlog of {backlog} async jobs drained, 3 gateways"),
        format!("{three:.0} jobs/s"),
        String::new(),
        format!("{:.2}× one gateway: every node's executor claims from the same queue", three / one),
    ]);
    section.notes.push(
        "Jobs drained: a backlog queued through gateway A with `amphi-not-before` set past the \
         end of the enqueue, then timed from that instant until no job of the function is queued or \
         running (`/v1/jobs?state=…`). First with A the only gateway on a fresh PostgreSQL, then \
         with B and C started beside it (a second function, the same backlog)."
            .into(),
    );
    std::fs::remove_dir_all(&data).context("removing the run's data")?;
    Ok(section)
}

/// Jobs per second a backlog of `backlog` drains at with one gateway, then with three.
async fn drain_rates(data: &Path, backlog: u64) -> Result<(f64, f64)> {
    let postgres = amphi_test_services::Postgres::start();
    let a = ChildServer::gateway_with_store(&data.join("jobs-a"), &postgres.url())?;
    let admin = Admin::new(a.addr);
    let component = Path::new(amphi_guest_artifacts::RUST_HTTP_COMPONENT);
    admin.deploy_wasm("alone", component).await?;
    let one = drain_rate(&admin, "alone", backlog).await?;
    let others = ["jobs-b", "jobs-c"]
        .iter()
        .map(|name| ChildServer::gateway_with_store(&data.join(name), &postgres.url()))
        .collect::<Result<Vec<_>>>()?;
    admin.deploy_wasm("shared", component).await?;
    let three = drain_rate(&admin, "shared", backlog).await?;
    drop((others, a, postgres));
    Ok((one, three))
}

/// Queues `backlog` jobs of `function` through `admin`'s gateway, due at one instant after the
/// enqueue, and returns the jobs per second from that instant until none is left.
async fn drain_rate(admin: &Admin, function: &str, backlog: u64) -> Result<f64> {
    let lead = Duration::from_secs_f64(backlog as f64 / 1_000.0 + 2.0);
    let due = Instant::now() + lead;
    let not_before = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now() + lead).to_rfc3339();
    let url = format!("http://{}/async/fn/{function}/", admin.addr);
    crate::jobs::enqueue_backlog(&url, backlog, &not_before).await?;
    if Instant::now() > due {
        bail!("the enqueue of {backlog} jobs took longer than {lead:?}; the drain would overlap it");
    }
    tokio::time::sleep_until(due.into()).await;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut left = 0;
        for state in ["queued", "running"] {
            let jobs = admin
                .request(
                    "GET",
                    &format!("/jobs?function={function}&state={state}&limit=1"),
                    Bytes::new(),
                    "application/json",
                )
                .await?;
            left += jobs.as_array().map_or(0, Vec::len);
        }
        if left == 0 {
            return Ok(backlog as f64 / due.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!("the backlog of {function} did not drain within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The body of a GET of `url`, whatever its status.
async fn body_of(client: &Http, url: &str) -> Result<String> {
    let response = client.request(hyper::Request::get(url).body(Full::new(Bytes::new()))?).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}
