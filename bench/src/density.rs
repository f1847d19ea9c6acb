//! §5, density: thousands of small wasm functions deployed on one gateway; its resident memory,
//! and the first call of functions picked at random.
//!
//! Every function has its own code (a tiny preview1 CGI module whose answer names it), so each
//! is a separate artifact, compiled at upload and stored; most first calls then load compiled
//! code from disk, as they would on a server with that many functions.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, Result, bail};
use rand::seq::SliceRandom as _;
use serde_json::json;
use wasm_encoder::{
    CodeSection, ConstExpr, DataSection, EntityType, ExportKind, ExportSection, Function, FunctionSection,
    ImportSection, Instruction, MemArg, MemoryType, Module, TypeSection, ValType,
};

use crate::load::{Percentiles, call_ok};
use crate::report::{Goal, Section};
use crate::servers::{Admin, ChildServer, GatewayOptions, http};
use crate::{Plan, temp_data};

/// Uploads in flight at once while deploying.
const DEPLOYERS: usize = 8;
/// Functions first-called at random after each step.
const SAMPLED: usize = 200;

/// Runs the section.
pub async fn run(plan: &Plan) -> Result<Section> {
    let data = temp_data("density")?;
    let gateway = ChildServer::gateway(&data, &GatewayOptions::default())?;
    let admin = Admin::new(gateway.addr);
    let client = http();
    let empty_rss = gateway.resident_bytes()?;
    let mut section = Section::new(
        "5. Density: many small wasm functions on one gateway",
        format!(
            "Each function is its own artifact: a {}-byte preview1 CGI module that names itself, \
             uploaded (compiled and stored) and deployed through the admin API, {DEPLOYERS} at a \
             time. After each step: the gateway's resident memory (VmRSS), then the first call of \
             {SAMPLED} functions picked at random among those never called, sequentially; the \
             gateway keeps compiled code of 1,000 artifacts in memory, so most of these load theirs \
             from disk (`cold` in the table).",
            tiny_function(0).len()
        ),
    );
    section.columns(&["functions", "deploy rate", "gateway RSS", "first call p50", "first call p99", "cold"]);
    section.row(vec!["0".into(), String::new(), mib(empty_rss), String::new(), String::new(), String::new()]);
    let mut figures = vec![json!({ "functions": 0, "rss_bytes": empty_rss })];
    let mut deployed = 0;
    let mut called = std::collections::HashSet::new();
    let mut last = None;
    for &step in &plan.density_steps {
        let began = std::time::Instant::now();
        deploy_range(&admin, deployed, step).await?;
        let rate = (step - deployed) as f64 / began.elapsed().as_secs_f64();
        deployed = step;
        let rss = gateway.resident_bytes()?;
        let mut candidates: Vec<usize> = (0..deployed).filter(|i| !called.contains(i)).collect();
        candidates.shuffle(&mut rand::rng());
        let mut latencies = Vec::new();
        let mut cold = 0;
        for &index in candidates.iter().take(SAMPLED) {
            let answer = call_ok(&client, &format!("http://{}/fn/{}", gateway.addr, name(index))).await?;
            cold += usize::from(answer.init_desc() == "cold");
            latencies.push(answer.ms());
            called.insert(index);
        }
        let first = Percentiles::of(latencies);
        section.row(vec![
            step.to_string(),
            format!("{rate:.0}/s"),
            mib(rss),
            format!("{:.2} ms", first.p50),
            format!("{:.2} ms", first.p99),
            format!("{cold} of {SAMPLED}"),
        ]);
        figures.push(json!({ "functions": step, "deploys_per_second": rate, "rss_bytes": rss,
            "first_call_ms": first, "cold_first_calls": cold }));
        last = Some((step, rss, first));
    }
    drop(gateway);
    let _ = std::fs::remove_dir_all(&data);

    let wanted_rss = "10,000 deployed wasm functions: gateway RSS ≤ 2 GiB";
    let wanted_call = "10,000 deployed wasm functions: random first call p50 ≤ 5 ms";
    match last {
        Some((10_000, rss, first)) => {
            section.goals.push(Goal::new(wanted_rss, mib(rss), rss <= 2 << 30));
            section.goals.push(Goal::new(wanted_call, format!("{:.2} ms", first.p50), first.p50 <= 5.0));
        }
        _ => {
            let why = format!("quick run: {} functions only", plan.density_steps.last().unwrap_or(&0));
            section.goals.push(Goal::unchecked(wanted_rss, why.clone()));
            section.goals.push(Goal::unchecked(wanted_call, why));
        }
    }
    section.figures = json!(figures);
    Ok(section)
}

fn name(index: usize) -> String {
    format!("f{index:05}")
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Deploys functions `from..to`, [`DEPLOYERS`] at a time.
async fn deploy_range(admin: &Admin, from: usize, to: usize) -> Result<()> {
    let next = Arc::new(AtomicUsize::new(from));
    let mut deployers = Vec::new();
    for _ in 0..DEPLOYERS {
        let (admin, next) = (admin.clone(), next.clone());
        deployers.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= to {
                    return Ok::<_, anyhow::Error>(());
                }
                let digest = admin.upload(tiny_function(index), "application/wasm").await?;
                admin.deploy(&name(index), &digest, json!({})).await?;
            }
        }));
    }
    for deployer in deployers {
        deployer.await.context("a deploy task panicked")??;
    }
    if next.load(Ordering::Relaxed) < to {
        bail!("deploying stopped early");
    }
    Ok(())
}

/// A preview1 CGI command module that answers `hello from fNNNNN`.
fn tiny_function(index: usize) -> Vec<u8> {
    let response = format!("Content-Type: text/plain\r\n\r\nhello from {}\n", name(index));
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32; 4], [ValType::I32]); // fd_write
    types.ty().function([], []); // _start
    let mut imports = ImportSection::new();
    imports.import("wasi_snapshot_preview1", "fd_write", EntityType::Function(0));
    let mut functions = FunctionSection::new();
    functions.function(1);
    let mut memory = wasm_encoder::MemorySection::new();
    memory.memory(MemoryType {
        minimum: 1,
        maximum: Some(1),
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports.export("memory", ExportKind::Memory, 0);
    exports.export("_start", ExportKind::Func, 1);
    // One iovec at 0: (pointer 16, length); fd_write(stdout, iovs 0, 1 iovec, written at 8).
    let store = MemArg { offset: 0, align: 2, memory_index: 0 };
    let mut start = Function::new([]);
    start
        .instruction(&Instruction::I32Const(0))
        .instruction(&Instruction::I32Const(16))
        .instruction(&Instruction::I32Store(store))
        .instruction(&Instruction::I32Const(4))
        .instruction(&Instruction::I32Const(response.len() as i32))
        .instruction(&Instruction::I32Store(store))
        .instruction(&Instruction::I32Const(1))
        .instruction(&Instruction::I32Const(0))
        .instruction(&Instruction::I32Const(1))
        .instruction(&Instruction::I32Const(8))
        .instruction(&Instruction::Call(0))
        .instruction(&Instruction::Drop)
        .instruction(&Instruction::End);
    let mut code = CodeSection::new();
    code.function(&start);
    let mut data = DataSection::new();
    data.active(0, &ConstExpr::i32_const(16), response.into_bytes());
    let mut module = Module::new();
    module
        .section(&types)
        .section(&imports)
        .section(&functions)
        .section(&memory)
        .section(&exports)
        .section(&code)
        .section(&data);
    module.finish()
}
