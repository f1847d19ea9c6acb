//! The conformance suite of Amphi's invocation contract (CONTRACT.md).
//!
//! Each case is a small TOML file in `cases/`: the function config, the calls to make, and what
//! each must get back (status, headers, body, problem type, invocation record, log lines). Every
//! case runs against every binding of [`binding::all`], the same conformance function written
//! six ways, and [`Matrix`] prints the result, case × binding. A case may expect different
//! answers from different kinds of binding only where CONTRACT.md says so, and names the clause.
//!
//! `cargo test -p amphi-conformance` runs the matrix against a server it starts itself;
//! `cargo run -p amphi-conformance -- --target http://host:port --token T` against a live one.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub mod binding;
pub mod case;
pub mod runner;

pub use runner::{CaseResult, Target};

/// Why the suite could not run (as opposed to a case failing).
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// A case file is unreadable or invalid.
    #[error("case files: {0}")]
    Cases(String),
    /// The server refused an upload or a deploy.
    #[error("server: {0}")]
    Server(String),
    /// The HTTP client failed.
    #[error("HTTP client: {0}")]
    Client(reqwest::Error),
}

/// The folder of case files.
pub fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cases")
}

/// Which cases and bindings to run: all, or those whose names contain the filters.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Part of a case name.
    pub case: Option<String>,
    /// Part of a binding name.
    pub binding: Option<String>,
}

/// Runs the selected cases against the selected bindings on `target`.
pub async fn run(target: &Target, selection: &Selection) -> Result<Matrix, SuiteError> {
    let mut cases = case::load_cases(&cases_dir())?;
    if let Some(filter) = &selection.case {
        cases.retain(|c| c.name.contains(filter.as_str()));
    }
    let mut bindings = binding::all();
    if let Some(filter) = &selection.binding {
        bindings.retain(|b| b.name.contains(filter.as_str()));
    }
    let mut results = Vec::new();
    for binding in &bindings {
        results.extend(runner::run_binding(target, binding, &cases).await?);
    }
    Ok(Matrix {
        cases: cases.iter().map(|c| (c.name.clone(), c.allowed_difference.clone())).collect(),
        bindings: bindings.iter().map(|b| b.name).collect(),
        results,
    })
}

/// Every case's result on every binding.
#[derive(Debug, Clone)]
pub struct Matrix {
    cases: Vec<(String, Option<String>)>,
    bindings: Vec<&'static str>,
    results: Vec<CaseResult>,
}

impl Matrix {
    /// The results that failed.
    pub fn failures(&self) -> impl Iterator<Item = &CaseResult> {
        self.results.iter().filter(|r| !r.failures.is_empty())
    }

    /// The matrix as a Markdown table (`pass`, `pass*` where an allowed difference applied,
    /// `FAIL`), then the allowed differences and the failures in full.
    pub fn render(&self) -> String {
        let width = self.cases.iter().map(|(name, _)| name.len()).max().unwrap_or(4).max(4);
        let mut out = format!("| {:width$} |", "case");
        for binding in &self.bindings {
            let _ = write!(out, " {binding} |");
        }
        let _ = write!(out, "\n|{}|", "-".repeat(width + 2));
        for binding in &self.bindings {
            let _ = write!(out, "{}|", "-".repeat(binding.len() + 2));
        }
        out.push('\n');
        for (case, _) in &self.cases {
            let _ = write!(out, "| {case:width$} |");
            for binding in &self.bindings {
                let cell = match self.results.iter().find(|r| &r.case == case && r.binding == *binding) {
                    None => "-",
                    Some(r) if !r.failures.is_empty() => "FAIL",
                    Some(r) if r.allowed_difference => "pass*",
                    Some(_) => "pass",
                };
                let _ = write!(out, " {cell:w$} |", w = binding.len());
            }
            out.push('\n');
        }
        let allowed: Vec<_> = self.cases.iter().filter_map(|(c, a)| Some((c, a.as_ref()?))).collect();
        if !allowed.is_empty() {
            out.push_str("\npass* = passed under an expectation CONTRACT.md allows to differ:\n");
            for (case, why) in allowed {
                let _ = writeln!(out, "- {case}: {why}");
            }
        }
        let failures: Vec<_> = self.failures().collect();
        if !failures.is_empty() {
            out.push_str("\nFailures:\n");
            for result in failures {
                for failure in &result.failures {
                    let _ = writeln!(out, "- {} on {}: {failure}", result.case, result.binding);
                }
            }
        }
        let passed = self.results.len() - self.failures().count();
        let _ = writeln!(out, "\n{passed} of {} case runs passed", self.results.len());
        out
    }
}
