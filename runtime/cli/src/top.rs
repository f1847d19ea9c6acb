//! `amphi top`: a live view, per function, of what the server's `/metrics` says: calls a second,
//! the p50 and p99 of the function's own time (the `exec` phase), errors, cold starts, calls in
//! flight and container instances. Redrawn every second on a terminal; on anything else (a pipe,
//! a file) each refresh is printed as plain text after the previous one.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use clap::Args;
use http::Method;

use crate::client::Client;

#[derive(Args)]
pub struct TopArgs {
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Stop after this many refreshes (default: until interrupted).
    #[arg(long)]
    iterations: Option<u64>,
}

/// One sample of a metric: its name, its labels and its value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of an OpenMetrics text exposition (comments and blank lines skipped). Label values
/// are unescaped for `\\`, `\"` and `\n`.
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => (name.to_string(), parse_labels(rest.strip_suffix('}')?)?),
            };
            Some(Sample { name, labels, value })
        })
        .collect()
}

fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

/// What `top` shows of one function over one interval.
#[derive(Debug, Default, Clone, PartialEq)]
struct Row {
    backend: String,
    calls_per_second: f64,
    p50: Option<f64>,
    p99: Option<f64>,
    errors: f64,
    cold: f64,
    in_flight: f64,
    instances: f64,
}

/// Sum of `name` per function, over the samples matching `keep`.
fn per_function(samples: &[Sample], name: &str, keep: impl Fn(&Sample) -> bool) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for sample in samples.iter().filter(|s| s.name == name && keep(s)) {
        if let Some(function) = sample.labels.get("function") {
            *sums.entry(function.clone()).or_default() += sample.value;
        }
    }
    sums
}

/// The quantile `q` of the `exec` phase of `function` between two scrapes, from the histogram's
/// buckets (the upper bound of the bucket it falls in, as Prometheus' `histogram_quantile` would
/// interpolate; here the bound itself).
fn quantile(before: &[Sample], now: &[Sample], function: &str, q: f64) -> Option<f64> {
    let buckets = |samples: &[Sample]| -> Vec<(f64, f64)> {
        let mut found: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| {
                s.name == "amphi_call_duration_seconds_bucket"
                    && s.labels.get("function").map(String::as_str) == Some(function)
                    && s.labels.get("phase").map(String::as_str) == Some("exec")
            })
            .filter_map(|s| {
                let le = s.labels.get("le")?;
                let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((bound, s.value))
            })
            .collect();
        found.sort_by(|a, b| a.0.total_cmp(&b.0));
        found
    };
    let (was, is) = (buckets(before), buckets(now));
    let delta: Vec<(f64, f64)> = is
        .iter()
        .map(|(bound, count)| {
            let earlier = was.iter().find(|(b, _)| b == bound).map_or(0.0, |(_, c)| *c);
            (*bound, count - earlier)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta.iter().find(|(_, count)| *count >= q * total).map(|(bound, _)| *bound)
}

/// The rows of every function the latest scrape knows, over the interval since `before`.
fn rows(before: &[Sample], now: &[Sample], seconds: f64) -> BTreeMap<String, Row> {
    let calls = |s: &[Sample]| per_function(s, "amphi_calls_total", |_| true);
    let errors = |s: &[Sample]| {
        per_function(s, "amphi_calls_total", |x| x.labels.get("outcome").is_some_and(|o| o != "success"))
    };
    let cold = |s: &[Sample]| {
        per_function(s, "amphi_call_starts_total", |x| x.labels.get("start").is_some_and(|o| o == "cold"))
    };
    let delta = |was: &BTreeMap<String, f64>, is: &BTreeMap<String, f64>, function: &str| {
        is.get(function).copied().unwrap_or(0.0) - was.get(function).copied().unwrap_or(0.0)
    };
    let (calls_was, calls_is) = (calls(before), calls(now));
    let (errors_was, errors_is) = (errors(before), errors(now));
    let (cold_was, cold_is) = (cold(before), cold(now));
    let in_flight = per_function(now, "amphi_calls_in_flight", |_| true);
    let instances = per_function(now, "amphi_container_instances", |_| true);
    let mut rows = BTreeMap::new();
    for sample in now.iter().filter(|s| s.name == "amphi_calls_in_flight") {
        let (Some(function), Some(backend)) = (sample.labels.get("function"), sample.labels.get("backend"))
        else {
            continue;
        };
        rows.insert(
            function.clone(),
            Row {
                backend: backend.clone(),
                calls_per_second: delta(&calls_was, &calls_is, function) / seconds,
                p50: quantile(before, now, function, 0.5),
                p99: quantile(before, now, function, 0.99),
                errors: delta(&errors_was, &errors_is, function),
                cold: delta(&cold_was, &cold_is, function),
                in_flight: in_flight.get(function).copied().unwrap_or(0.0),
                instances: instances.get(function).copied().unwrap_or(0.0),
            },
        );
    }
    rows
}

fn duration(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if s.is_infinite() => "slow".into(),
        Some(s) if s < 1e-3 => format!("{:.0}µs", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.2}s"),
    }
}

fn render(rows: &BTreeMap<String, Row>, interval: f64) -> String {
    let mut out = format!(
        "{:<24} {:<9} {:>9} {:>8} {:>8} {:>7} {:>5} {:>9} {:>9}\n",
        "FUNCTION", "BACKEND", "CALLS/S", "P50", "P99", "ERRORS", "COLD", "IN-FLIGHT", "INSTANCES"
    );
    for (function, row) in rows {
        out.push_str(&format!(
            "{:<24} {:<9} {:>9.1} {:>8} {:>8} {:>7} {:>5} {:>9} {:>9}\n",
            function,
            row.backend,
            row.calls_per_second,
            duration(row.p50),
            duration(row.p99),
            row.errors,
            row.cold,
            row.in_flight,
            row.instances
        ));
    }
    if rows.is_empty() {
        out.push_str("(no functions)\n");
    }
    out.push_str(&format!(
        "errors and cold starts in the last {interval}s; p50/p99 of the function's own time (exec)\n"
    ));
    out
}

async fn scrape(client: &Client) -> Result<Vec<Sample>> {
    let reply = client.admin(Method::GET, "/metrics", Bytes::new(), None).await?;
    let text = std::str::from_utf8(&reply.body).context("the metrics are not UTF-8")?;
    Ok(parse(text))
}

pub async fn run(client: &Client, args: TopArgs) -> Result<ExitCode> {
    let interval = Duration::try_from_secs_f64(args.interval)
        .ok()
        .filter(|d| *d >= Duration::from_millis(100))
        .context("--interval must be at least 0.1 seconds")?;
    let terminal = std::io::stdout().is_terminal();
    let mut before = scrape(client).await?;
    let mut taken = Instant::now();
    let mut shown = 0;
    while args.iterations.is_none_or(|n| shown < n) {
        tokio::time::sleep(interval).await;
        let now = scrape(client).await?;
        let seconds = taken.elapsed().as_secs_f64();
        taken = Instant::now();
        let table = render(&rows(&before, &now, seconds), args.interval);
        let mut out = std::io::stdout().lock();
        if terminal {
            // Home and clear, then the table: one screen, redrawn.
            write!(out, "\x1b[H\x1b[2J{}  {}", client.base(), table)?;
        } else {
            writeln!(out, "--- {}", humantime::format_rfc3339_seconds(std::time::SystemTime::now()))?;
            write!(out, "{table}")?;
        }
        out.flush()?;
        before = now;
        shown += 1;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# TYPE amphi_calls counter\n\
        amphi_calls_total{function=\"f\",backend=\"wasm\",outcome=\"success\",status_class=\"2xx\"} 10\n\
        amphi_call_duration_seconds_bucket{function=\"f\",backend=\"wasm\",phase=\"exec\",le=\"0.001\"} 10\n\
        amphi_call_duration_seconds_bucket{function=\"f\",backend=\"wasm\",phase=\"exec\",le=\"0.01\"} 10\n\
        amphi_call_duration_seconds_bucket{function=\"f\",backend=\"wasm\",phase=\"exec\",le=\"+Inf\"} 10\n\
        amphi_calls_in_flight{function=\"f\",backend=\"wasm\"} 0\n# EOF\n";
    const NOW: &str = "amphi_calls_total{function=\"f\",backend=\"wasm\",outcome=\"success\",status_class=\"2xx\"} 108\n\
        amphi_calls_total{function=\"f\",backend=\"wasm\",outcome=\"timeout\",status_class=\"5xx\"} 2\n\
        amphi_call_starts_total{function=\"f\",backend=\"wasm\",start=\"cold\"} 1\n\
        amphi_call_duration_seconds_bucket{function=\"f\",backend=\"wasm\",phase=\"exec\",le=\"0.001\"} 90\n\
        amphi_call_duration_seconds_bucket{function=\"f\",backend=\"wasm\",phase=\"exec\",le=\"0.01\"} 109\n\
        amphi_call_duration_seconds_bucket{function=\"f\",backend=\"wasm\",phase=\"exec\",le=\"+Inf\"} 110\n\
        amphi_calls_in_flight{function=\"f\",backend=\"wasm\"} 3\n# EOF\n";

    #[test]
    fn an_interval_between_two_scrapes_becomes_a_row() {
        let rows = rows(&parse(BEFORE), &parse(NOW), 2.0);
        let row = &rows["f"];
        assert_eq!(row.calls_per_second, 50.0);
        assert_eq!((row.errors, row.cold, row.in_flight), (2.0, 1.0, 3.0));
        assert_eq!(row.p50, Some(0.001), "80 of the 100 new calls took under 1 ms");
        assert_eq!(row.p99, Some(0.01));
    }

    #[test]
    fn label_values_are_unescaped() {
        let samples = parse("m{a=\"x\\\"y\",b=\"1\\\\2\"} 3\n");
        assert_eq!(samples[0].labels["a"], "x\"y");
        assert_eq!(samples[0].labels["b"], "1\\2");
        assert_eq!(samples[0].value, 3.0);
    }
}
