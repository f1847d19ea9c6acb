//! `amphi-conformance`: runs the conformance matrix against a live Amphi server.
//!
//! ```text
//! cargo run -p amphi-conformance -- --target http://127.0.0.1:8080 --token "$AMPHI_TOKEN"
//! cargo run -p amphi-conformance -- --target … --token … --case body --binding wasm
//! ```

use std::process::ExitCode;

use amphi_conformance::{Selection, Target};

const USAGE: &str = "usage: amphi-conformance --target http://HOST:PORT --token TOKEN [--case PART] [--binding PART]\n\
                     (the token may also come from AMPHI_TOKEN)";

#[tokio::main]
async fn main() -> ExitCode {
    let mut url = None;
    let mut token = std::env::var("AMPHI_TOKEN").ok();
    let mut selection = Selection::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            "--target" => &mut url,
            "--token" => &mut token,
            "--case" => &mut selection.case,
            "--binding" => &mut selection.binding,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("error: unknown argument `{other}`\n{USAGE}");
                return ExitCode::from(2);
            }
        };
        match args.next() {
            Some(value) => *slot = Some(value),
            None => {
                eprintln!("error: {arg} needs a value\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(url), Some(token)) = (url, token) else {
        eprintln!("error: --target and --token are required\n{USAGE}");
        return ExitCode::from(2);
    };
    let target = Target { url: url.trim_end_matches('/').to_string(), token };
    match amphi_conformance::run(&target, &selection).await {
        Ok(matrix) => {
            print!("{}", matrix.render());
            if matrix.failures().next().is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
