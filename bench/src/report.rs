//! The report of a run: sections of tables, each figure beside its anchor, and the goals met or
//! missed. Written as markdown, as JSON (the same figures, for tools) and as one SVG chart.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use serde::Serialize;
use serde_json::Value;

/// Everything one run measured.
#[derive(Serialize)]
pub struct Report {
    /// `full` or `quick`.
    pub mode: &'static str,
    /// The machine and the date.
    pub machine: String,
    /// The command that produced it.
    pub command: String,
    /// In the order they ran.
    pub sections: Vec<Section>,
}

/// One part of the harness.
#[derive(Serialize, Default)]
pub struct Section {
    /// Its heading.
    pub title: String,
    /// How it was measured, in a sentence or two.
    pub method: String,
    /// The table: column headings, then rows.
    pub columns: Vec<String>,
    /// Rows of already formatted cells.
    pub rows: Vec<Vec<String>>,
    /// The goals it checks.
    pub goals: Vec<Goal>,
    /// Further remarks (what a figure means, what was left out in quick mode).
    pub notes: Vec<String>,
    /// The raw figures, for the JSON report.
    pub figures: Value,
}

/// A goal of issue 5, met or not.
#[derive(Serialize)]
pub struct Goal {
    /// What is wanted, in words ("throughput at 16 connections ≥ 4× `wasmtime serve`").
    pub wanted: String,
    /// What was measured, in words with the ratio.
    pub measured: String,
    /// Whether it was met; `None` when this run could not check it (quick mode).
    pub met: Option<bool>,
}

impl Goal {
    /// A goal checked by `met`.
    pub fn new(wanted: impl Into<String>, measured: impl Into<String>, met: bool) -> Self {
        Self { wanted: wanted.into(), measured: measured.into(), met: Some(met) }
    }

    /// A goal this run did not check.
    pub fn unchecked(wanted: impl Into<String>, why: impl Into<String>) -> Self {
        Self { wanted: wanted.into(), measured: why.into(), met: None }
    }
}

impl Section {
    /// A section with a heading and the sentence that says how it measures.
    pub fn new(title: &str, method: impl Into<String>) -> Self {
        Self { title: title.into(), method: method.into(), figures: Value::Null, ..Self::default() }
    }

    /// Sets the table's columns.
    pub fn columns(&mut self, columns: &[&str]) {
        self.columns = columns.iter().map(|c| c.to_string()).collect();
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

impl Report {
    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Amphi benchmark report ({} run)\n", self.mode);
        let _ = writeln!(out, "Machine: {}  \nCommand: `{}`\n", self.machine, self.command);
        let _ = writeln!(out, "## Goals\n\n| goal | measured | met |\n|---|---|---|");
        for goal in self.sections.iter().flat_map(|s| &s.goals) {
            let met = match goal.met {
                Some(true) => "**met**",
                Some(false) => "**missed**",
                None => "not checked",
            };
            let _ = writeln!(out, "| {} | {} | {met} |", goal.wanted, goal.measured);
        }
        out.push('\n');
        for section in &self.sections {
            let _ = writeln!(out, "## {}\n\n{}\n", section.title, section.method);
            if !section.columns.is_empty() {
                let _ = writeln!(out, "| {} |", section.columns.join(" | "));
                let _ = writeln!(out, "|{}", "---|".repeat(section.columns.len()));
                for row in &section.rows {
                    let _ = writeln!(out, "| {} |", row.join(" | "));
                }
                out.push('\n');
            }
            for note in &section.notes {
                let _ = writeln!(out, "- {note}");
            }
            if !section.notes.is_empty() {
                out.push('\n');
            }
        }
        out
    }

    /// Writes `report.md`, `report.json` and `chart.svg` into `dir`.
    pub fn save(&self, dir: &Path, chart: &Chart) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join("chart.svg"), chart.svg())?;
        Ok(())
    }
}

/// A horizontal bar chart: groups of bars on one scale each.
#[derive(Default)]
pub struct Chart {
    /// The chart's title.
    pub title: String,
    /// Each group has its own scale.
    pub groups: Vec<BarGroup>,
}

/// Bars drawn on one scale.
pub struct BarGroup {
    /// What they show.
    pub heading: String,
    /// The unit of every value.
    pub unit: String,
    /// (label, value) of each bar.
    pub bars: Vec<(String, f64)>,
}

impl Chart {
    /// The chart as a standalone SVG document.
    pub fn svg(&self) -> String {
        const WIDTH: f64 = 760.0;
        const LABEL: f64 = 230.0;
        const BAR: f64 = 22.0;
        const COLOURS: [&str; 5] = ["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"];
        let mut body = String::new();
        let mut y = 40.0;
        for BarGroup { heading, unit, bars } in &self.groups {
            let _ = write!(body, r#"<text x="10" y="{y}" font-weight="bold">{}</text>"#, escape(heading));
            y += 10.0;
            let max = bars.iter().map(|(_, v)| *v).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
            for (index, (label, value)) in bars.iter().enumerate() {
                let length = (WIDTH - LABEL - 120.0) * value / max;
                let colour = COLOURS[index % COLOURS.len()];
                let _ = write!(
                    body,
                    r#"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{LABEL}" y="{y}" width="{length:.1}" height="{}" fill="{colour}"/><text x="{}" y="{}">{} {}</text>"#,
                    LABEL - 8.0,
                    y + BAR * 0.7,
                    escape(label),
                    BAR - 4.0,
                    LABEL + length + 6.0,
                    y + BAR * 0.7,
                    format_value(*value),
                    escape(unit),
                );
                y += BAR;
            }
            y += 28.0;
        }
        format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{y}" font-family="sans-serif" font-size="13"><rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="15" font-weight="bold">{}</text>{body}</svg>
"#,
            escape(&self.title)
        )
    }
}

fn format_value(value: f64) -> String {
    if value >= 100.0 { format!("{value:.0}") } else { format!("{value:.1}") }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
