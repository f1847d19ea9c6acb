//! Cron schedules: each tick of a schedule enqueues exactly one job, also across restarts.
//!
//! The queue keeps, per schedule, the last tick that enqueued a job; a tick is taken in the same
//! transaction that stores its job ([`amphi_queue::JobQueue::fire_schedule`]). The scheduler
//! looks for the latest tick at or before now, and fires it if it is later than the last one
//! taken (and than the schedule's own creation): ticks missed while the server was down run
//! once at start, not once per missed tick. Cron expressions have 5 fields (minutes) or 6
//! (seconds first), in the schedule's time zone; parsing and tick arithmetic are `croner`'s.

use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use amphi_contract::function::validate_name;
use amphi_contract::now_unix_us;
use amphi_queue::{JobRequest, NewJob, StoredSchedule};
use bytes::Bytes;
use chrono::{DateTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};

use crate::platform::Platform;

/// Longest the scheduler sleeps before it looks at the schedules again unasked.
const RECHECK: Duration = Duration::from_secs(60);

/// A schedule as `PUT /v1/schedules/{name}` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// The function each tick calls.
    pub function: String,
    /// When: 5 fields (`0 3 * * *`) or 6 with seconds first (`*/10 * * * * *`).
    pub cron: String,
    /// The request's method (POST unless given).
    #[serde(default = "default_method")]
    pub method: String,
    /// The path the function sees, with the query (`/` unless given).
    #[serde(default = "default_path")]
    pub path: String,
    /// Header fields of the request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The request's body.
    #[serde(default)]
    pub body: String,
    /// The IANA time zone the cron expression is read in (`UTC` unless given).
    #[serde(default = "default_timezone")]
    pub timezone: String,
}

fn default_method() -> String {
    "POST".into()
}

fn default_path() -> String {
    "/".into()
}

fn default_timezone() -> String {
    "UTC".into()
}

/// A checked schedule: its expression parsed and its zone found.
pub struct Checked {
    cron: Cron,
    zone: Tz,
}

impl ScheduleSpec {
    /// Checks every field; the error names the field.
    pub fn check(&self) -> Result<Checked, String> {
        validate_name(&self.function).map_err(|e| format!("function: {e}"))?;
        let cron = Cron::from_str(self.cron.trim())
            .map_err(|e| format!("cron: `{}` is not a cron expression of 5 or 6 fields ({e})", self.cron))?;
        let zone = Tz::from_str(&self.timezone).map_err(|_| {
            format!("timezone: `{}` is not an IANA time zone such as Europe/Berlin", self.timezone)
        })?;
        if !matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE" | "GET") {
            return Err(format!("method: `{}` is not one of POST, PUT, PATCH, DELETE, GET", self.method));
        }
        if !self.path.starts_with('/') || self.path.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(format!("path: `{}` is not a path starting with /", self.path));
        }
        if crate::trigger::control_character(&self.path).is_some() {
            return Err("path: holds a control character once percent-decoded".into());
        }
        for (name, value) in &self.headers {
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("headers: `{name}` is not a header name"))?;
            http::HeaderValue::from_str(value)
                .map_err(|_| format!("headers: the value of `{name}` is not allowed"))?;
            if name.to_ascii_lowercase().starts_with(amphi_contract::headers::RESERVED_PREFIX) {
                return Err(format!("headers: `{name}` is reserved for the platform"));
            }
        }
        Ok(Checked { cron, zone })
    }
}

impl Checked {
    /// The latest tick at or before `now_us`, in µs since the Unix epoch.
    fn latest_tick(&self, now_us: u64) -> Option<u64> {
        let now = self.zone.from_utc_datetime(&micros_to_utc(now_us)?.naive_utc());
        let tick = self.cron.find_previous_occurrence(&now, true).ok()?;
        u64::try_from(tick.timestamp_micros()).ok()
    }

    /// The first tick after `now_us`.
    pub fn next_tick(&self, now_us: u64) -> Option<u64> {
        let now = self.zone.from_utc_datetime(&micros_to_utc(now_us)?.naive_utc());
        let tick = self.cron.find_next_occurrence(&now, false).ok()?;
        u64::try_from(tick.timestamp_micros()).ok()
    }
}

/// `us` as a time, cut to its whole second: cron expressions count in seconds, and a tick must
/// be the same instant whichever node computes it, whenever within that second it looks (croner
/// would keep the fraction of an instant that itself matches).
fn micros_to_utc(us: u64) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_micros(i64::try_from(us - us % 1_000_000).ok()?)
}

/// A schedule as the API shows it.
#[derive(Debug, Serialize)]
pub struct ScheduleView {
    /// Its name.
    pub name: String,
    /// What it runs and when.
    #[serde(flatten)]
    pub spec: ScheduleSpec,
    /// When it was made or last replaced (µs since the Unix epoch).
    pub updated_us: u64,
    /// The last tick that enqueued a job.
    pub last_tick_us: Option<u64>,
    /// The next tick.
    pub next_tick_us: Option<u64>,
}

impl ScheduleView {
    /// The view of a stored schedule (`None` if its definition no longer parses).
    pub fn of(stored: StoredSchedule) -> Option<Self> {
        let spec: ScheduleSpec = serde_json::from_str(&stored.spec).ok()?;
        let next_tick_us = spec.check().ok().and_then(|c| c.next_tick(now_unix_us()));
        Some(Self {
            name: stored.name,
            spec,
            updated_us: stored.updated_us,
            last_tick_us: stored.last_tick_us,
            next_tick_us,
        })
    }
}

/// Starts the scheduler.
pub fn start(platform: &Arc<Platform>) {
    let platform = platform.clone();
    tokio::spawn(async move {
        let mut shutdown = platform.shutdown_signal();
        loop {
            let wait = match tick(&platform).await {
                Ok(wait) => wait,
                Err(error) => {
                    tracing::warn!(%error, "the scheduler cannot read the schedules");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = platform.jobs.schedules_changed.notified() => {}
                _ = shutdown.wait_for(|stopping| *stopping) => return,
            }
        }
    });
}

/// Fires every schedule whose latest tick is not yet taken; returns how long to sleep until the
/// next tick of any.
async fn tick(platform: &Arc<Platform>) -> Result<Duration, amphi_queue::QueueError> {
    let queue = &platform.jobs.queue;
    let now = now_unix_us();
    let mut next = now + RECHECK.as_micros() as u64;
    for stored in queue.schedules().await? {
        let Ok(spec) = serde_json::from_str::<ScheduleSpec>(&stored.spec) else {
            tracing::warn!(schedule = stored.name, "a stored schedule does not parse");
            continue;
        };
        let Ok(checked) = spec.check() else { continue };
        let taken = stored.last_tick_us.unwrap_or(0).max(stored.updated_us);
        if let Some(latest) = checked.latest_tick(now)
            && latest > taken
        {
            let job = NewJob {
                id: uuid::Uuid::now_v7().to_string(),
                function: spec.function.clone(),
                request: JobRequest {
                    method: spec.method.clone(),
                    path: spec.path.clone(),
                    headers: spec
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
                        .collect(),
                    body: Bytes::from(spec.body.clone()),
                },
                created_us: now,
                not_before_us: now,
                idempotency_key: None,
                callback_url: None,
                schedule: Some(stored.name.clone()),
            };
            match queue.fire_schedule(&stored.name, stored.updated_us, latest, job).await {
                Ok(true) => platform.jobs.wake(platform, &spec.function),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, schedule = stored.name, "a schedule's tick could not be queued")
                }
            }
        }
        if let Some(at) = checked.next_tick(now) {
            next = next.min(at);
        }
    }
    Ok(Duration::from_micros(next.saturating_sub(now_unix_us())))
}

impl super::Jobs {
    /// Wakes the scheduler (a schedule was put or deleted).
    pub fn schedules_changed(&self) {
        self.schedules_changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cron: &str) -> ScheduleSpec {
        serde_json::from_value(serde_json::json!({ "function": "report", "cron": cron })).expect("spec")
    }

    #[test]
    fn expressions_zones_and_fields_are_checked() {
        assert!(spec("0 3 * * *").check().is_ok());
        assert!(spec("* * * * * *").check().is_ok(), "every second");
        for (bad, field) in [
            (spec("every day"), "cron:"),
            (ScheduleSpec { timezone: "Mars/Olympus".into(), ..spec("0 3 * * *") }, "timezone:"),
            (ScheduleSpec { path: "run".into(), ..spec("0 3 * * *") }, "path:"),
            (ScheduleSpec { method: "TRACE".into(), ..spec("0 3 * * *") }, "method:"),
            (ScheduleSpec { function: "Bad Name".into(), ..spec("0 3 * * *") }, "function:"),
        ] {
            let why = bad.check().err().expect("refused");
            assert!(why.starts_with(field), "{why}");
        }
    }

    #[test]
    fn a_tick_is_a_whole_second_whenever_within_it_it_is_computed() {
        let every_second = spec("* * * * * *").check().expect("valid");
        let second = 1_796_378_400_000_000;
        for now in [second, second + 1, second + 500_000, second + 999_999] {
            assert_eq!(every_second.latest_tick(now), Some(second), "at {now}");
            assert_eq!(every_second.next_tick(now), Some(second + 1_000_000), "at {now}");
        }
    }

    #[test]
    fn the_latest_tick_is_one_tick_however_many_were_missed() {
        let nightly = spec("0 3 * * *").check().expect("valid");
        // 2026-12-04T10:00:00Z: the latest 03:00 tick is that morning's.
        let now = 1_796_378_400_000_000;
        assert_eq!(nightly.latest_tick(now), Some(1_796_353_200_000_000));
        assert_eq!(nightly.next_tick(now), Some(1_796_353_200_000_000 + 86_400_000_000));
        let berlin =
            ScheduleSpec { timezone: "Europe/Berlin".into(), ..spec("0 3 * * *") }.check().expect("valid");
        assert_eq!(
            berlin.latest_tick(now),
            Some(1_796_353_200_000_000 - 3_600_000_000),
            "03:00 in Berlin is 02:00Z"
        );
    }
}
