//! The invocation record and the log line: one shape for every backend.

use serde::{Deserialize, Serialize};

/// Which backend served a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// WebAssembly, a fresh instance per request.
    Wasm,
    /// A Docker container from a warm pool.
    Container,
}

impl BackendKind {
    /// The name in headers, records and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wasm => "wasm",
            Self::Container => "container",
        }
    }
}

/// How the instance that served a call was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartKind {
    /// A ready instance (a wasm instance from a prepared component; a running container).
    Warm,
    /// A paused container, resumed for the call.
    Unpause,
    /// A new instance: a wasm component compiled or loaded for the first time, a container started.
    Cold,
}

impl StartKind {
    /// The name in records, `Server-Timing` and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warm => "warm",
            Self::Unpause => "unpause",
            Self::Cold => "cold",
        }
    }

    /// Parses [`StartKind::as_str`] back.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Warm, Self::Unpause, Self::Cold].into_iter().find(|s| s.as_str() == text)
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The function produced a response (of any status).
    Success,
    /// The function failed: trap, crash, memory limit, malformed response.
    FunctionError,
    /// The platform refused or failed the call: over capacity, body too large, backend down.
    PlatformError,
    /// The function ran past its timeout and was stopped.
    Timeout,
}

impl Outcome {
    /// The name in records and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::FunctionError => "function_error",
            Self::PlatformError => "platform_error",
            Self::Timeout => "timeout",
        }
    }

    /// Parses [`Outcome::as_str`] back.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Success, Self::FunctionError, Self::PlatformError, Self::Timeout]
            .into_iter()
            .find(|o| o.as_str() == text)
    }
}

/// One record per call, written when the call ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationRecord {
    /// The invocation id (UUIDv7), as in the `amphi-invocation-id` header.
    pub id: String,
    /// The function's name.
    pub function: String,
    /// The function version that ran (0 when the call was refused before a version was chosen).
    pub version: u64,
    /// Which backend served it.
    pub backend: BackendKind,
    /// What triggered it: `http`, or `async` for an attempt of a job.
    pub trigger: String,
    /// For an attempt of a job (`trigger: async`): the job, the attempt and the schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobRef>,
    /// The request method.
    pub method: String,
    /// The path the function saw, with the query.
    pub path: String,
    /// When the call was admitted, in microseconds since the Unix epoch.
    pub start_us: u64,
    /// From admission to the end of the call, in microseconds.
    pub duration_us: u64,
    /// Time spent making a new instance ready, on cold starts.
    pub init_us: Option<u64>,
    /// Whether this call paid for a new instance's initialisation (`start` is `cold`).
    pub cold_start: bool,
    /// How the instance that served the call was obtained.
    pub start: StartKind,
    /// How the call ended.
    pub outcome: Outcome,
    /// The HTTP status the caller received.
    pub status: u16,
    /// What went wrong, when something did.
    pub error: Option<String>,
    /// How many log lines the call wrote (kept ones).
    pub log_lines: u64,
    /// Whether the call wrote more log than its cap and the rest was dropped.
    pub log_truncated: bool,
    /// Lines within the cap that the log store could not take (it fell behind); the call's log
    /// then ends with a `platform` line saying how many.
    #[serde(default)]
    pub log_lines_dropped: u64,
}

/// The job an async call was an attempt of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRef {
    /// The job id (the `amphi-invocation-id` of the 202 that accepted it).
    pub id: String,
    /// The attempt's number, 1 for the first.
    pub attempt: u32,
    /// The schedule that made the job, if a schedule did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// The function's standard output.
    Stdout,
    /// The function's standard error.
    Stderr,
    /// A line the platform wrote about the call (truncation, failure reason).
    Platform,
    /// Output of building the function's container image.
    Build,
    /// Output of the function's initializer, run once at deploy (pre-initialization).
    Init,
}

impl LogStream {
    /// The name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Platform => "platform",
            Self::Build => "build",
            Self::Init => "init",
        }
    }

    /// Parses [`LogStream::as_str`] back.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Stdout, Self::Stderr, Self::Platform, Self::Build, Self::Init]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One line of a function's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Position in the log store; increases with every line stored (0 until stored).
    pub seq: u64,
    /// When the line was written, in microseconds since the Unix epoch.
    pub ts_us: u64,
    /// The function's name.
    pub function: String,
    /// The invocation that wrote it; empty for lines written outside any call (a container
    /// instance starting, an image build).
    pub invocation_id: String,
    /// stdout, stderr or platform.
    pub stream: LogStream,
    /// The text, without its line break (invalid UTF-8 replaced).
    pub line: String,
}

/// The prefix that attributes a log line to an invocation: a function writes
/// `amphi-invocation=ID text`, and `text` is stored for invocation `ID` (CONTRACT.md §9).
pub const ATTRIBUTION_PREFIX: &str = "amphi-invocation=";

/// Splits a line written as `amphi-invocation=ID text` into the id and the text.
pub fn split_attribution(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix(ATTRIBUTION_PREFIX)?;
    Some(rest.split_once(' ').unwrap_or((rest, "")))
}

#[cfg(test)]
mod attribution_tests {
    use super::split_attribution;

    #[test]
    fn a_prefixed_line_names_its_invocation() {
        assert_eq!(
            split_attribution("amphi-invocation=01ab resized 3 images"),
            Some(("01ab", "resized 3 images"))
        );
        assert_eq!(split_attribution("amphi-invocation=01ab"), Some(("01ab", "")));
        assert_eq!(split_attribution("plain line"), None);
    }
}
