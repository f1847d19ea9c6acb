//! `GET /metrics`: what the platform did and holds, in the Prometheus/OpenMetrics text format, for
//! the monitoring operators already run.
//!
//! Calls are counted where their record is written (one per record, so the counter and the log
//! store agree) and their phases observed when the response head goes out; everything that is a
//! level rather than an event (calls in flight, instances by state, jobs by state, the log
//! store's queue, the backends' own counters) is read from the platform at scrape time. The encoding is
//! `prometheus-client`'s.

use std::sync::atomic::Ordering;
use std::time::Duration;

use amphi_contract::record::{BackendKind, InvocationRecord, Outcome, StartKind};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::platform::Platform;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    function: String,
    backend: &'static str,
    outcome: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StartLabels {
    function: String,
    backend: &'static str,
    start: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    function: String,
    backend: &'static str,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    function: String,
    backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    function: String,
    state: &'static str,
}

/// Phase histograms' buckets: 10 µs to about 84 s, doubling.
fn phase_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 24))
}

/// The platform's event counters; levels are read at scrape time.
pub struct Metrics {
    calls: Family<CallLabels, Counter>,
    starts: Family<StartLabels, Counter>,
    phases: Family<PhaseLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            starts: Family::default(),
            phases: Family::new_with_constructor(phase_histogram as fn() -> Histogram),
        }
    }
}

impl Metrics {
    /// Counts a call whose record is being written.
    pub fn call_ended(&self, record: &InvocationRecord) {
        let backend = record.backend.as_str();
        self.calls
            .get_or_create(&CallLabels {
                function: record.function.clone(),
                backend,
                outcome: record.outcome.as_str(),
                status_class: status_class(record.status),
            })
            .inc();
        if record.outcome != Outcome::PlatformError || record.init_us.is_some() {
            self.starts
                .get_or_create(&StartLabels {
                    function: record.function.clone(),
                    backend,
                    start: record.start.as_str(),
                })
                .inc();
        }
    }

    /// Observes the phases of a call whose response head is going out, as `Server-Timing` says
    /// them: waiting for a slot or an instance, making the instance ready, the function's work.
    pub fn call_answered(
        &self,
        function: &str,
        backend: BackendKind,
        queue: Duration,
        start: (StartKind, Duration),
        exec: Duration,
    ) {
        let backend = backend.as_str();
        let observe = |phase: &'static str, took: Duration| {
            self.phases
                .get_or_create(&PhaseLabels { function: function.to_string(), backend, phase })
                .observe(took.as_secs_f64());
        };
        observe("queue", queue);
        if start.0 != StartKind::Warm {
            observe("init", start.1);
        }
        observe("exec", exec);
    }

    /// The exposition of everything, counters and the platform's levels now.
    pub fn encode(&self, platform: &Platform) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::with_prefix("amphi");
        registry.register(
            "calls",
            "Calls that ended, by outcome and status class (one per invocation record)",
            self.calls.clone(),
        );
        registry.register(
            "call_starts",
            "Calls by how their instance was obtained: warm, unpause or cold",
            self.starts.clone(),
        );
        registry.register_with_unit(
            "call_duration",
            "Phases of answered calls, as in Server-Timing: queue, init (cold and unpause starts) and exec",
            Unit::Seconds,
            self.phases.clone(),
        );

        let in_flight = Family::<FunctionLabels, Gauge>::default();
        for (function, backend, calls) in platform.in_flight_by_function() {
            in_flight
                .get_or_create(&FunctionLabels { function, backend: backend.as_str() })
                .set(calls as i64);
        }
        registry.register("calls_in_flight", "Calls admitted and not yet ended", in_flight);

        let jobs = Family::<JobLabels, Gauge>::default();
        let counts = platform.jobs.queue.counts();
        for state in amphi_queue::JobState::ALL {
            jobs.get_or_create(&JobLabels { state: state.as_str() }).set(counts.of(state) as i64);
        }
        registry.register(
            "jobs",
            "Async jobs in the queue by state (finished ones until --job-retention)",
            jobs,
        );

        let instances = Family::<InstanceLabels, Gauge>::default();
        for (function, views) in platform.instances_by_function() {
            for state in ["running", "idle", "paused"] {
                let count = views.iter().filter(|v| instance_state(v) == state).count();
                instances
                    .get_or_create(&InstanceLabels { function: function.clone(), state })
                    .set(count as i64);
            }
        }
        registry.register("container_instances", "Container instances by state", instances);

        let wasm = platform.backend_stats().into_iter().find(|(name, _)| *name == "wasm").map(|(_, v)| v);
        let wasm_counter = |key: &str| {
            let counter = Counter::<u64>::default();
            counter.inc_by(wasm.as_ref().and_then(|w| w[key].as_u64()).unwrap_or(0));
            counter
        };
        registry.register(
            "wasm_instances_made",
            "Wasm instances made (ahead of calls or for them)",
            wasm_counter("instances_made"),
        );
        registry.register("wasm_compilations", "Wasm artifacts compiled", wasm_counter("compiled"));
        registry.register(
            "wasm_loads_from_disk",
            "Compiled wasm code loaded from disk into the cache",
            wasm_counter("loaded_from_disk"),
        );

        let logs = platform.logs.stats();
        let counter = |value: u64| {
            let counter = Counter::<u64>::default();
            counter.inc_by(value);
            counter
        };
        let gauge = |value: u64| {
            let gauge = Gauge::<i64>::default();
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            gauge
        };
        registry.register(
            "log_lines_stored",
            "Log lines committed to the log store",
            counter(logs.lines_stored),
        );
        registry.register(
            "log_records_stored",
            "Invocation records committed to the log store",
            counter(logs.records_stored),
        );
        registry.register(
            "log_lines_dropped",
            "Log lines the store could not take (each counted on its call's record)",
            counter(logs.lines_dropped),
        );
        registry.register(
            "log_records_dropped",
            "Invocation records given up after the database refused them for seconds on end",
            counter(logs.records_dropped),
        );
        registry.register_with_unit(
            "log_queue_lines",
            "Log lines waiting for the store's writer",
            Unit::Bytes,
            gauge(logs.queued_line_bytes),
        );
        registry.register(
            "log_queue_records",
            "Invocation records waiting for the store's writer",
            gauge(logs.queued_records),
        );
        registry.register(
            "log_follower_catch_ups",
            "Times a log follower fell behind the live feed and was caught up from the store",
            counter(platform.follower_catch_ups.load(Ordering::Relaxed)),
        );

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        Ok(text)
    }
}

/// `2xx`, `4xx`, …
fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// An instance's state as the metrics name it: a running container serving no call is idle;
/// one being paused counts as paused, one being resumed as running.
fn instance_state(view: &amphi_contract::InstanceView) -> &'static str {
    match view.state {
        "paused" | "pausing" => "paused",
        _ if view.in_flight == 0 => "idle",
        _ => "running",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(
            [status_class(200), status_class(404), status_class(503), status_class(101)],
            ["2xx", "4xx", "5xx", "1xx"]
        );
    }
}
