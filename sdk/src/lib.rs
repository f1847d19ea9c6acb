//! Writing Amphi functions in Rust.
//!
//! Today this crate reads what the platform tells every call (CONTRACT.md, "Metadata headers in"),
//! with no dependencies, so it builds for `wasm32-wasip1` and for containers alike. The one
//! handler API that compiles to both backends is tracked as its own issue and will live here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The invocation id header (a UUIDv7).
pub const INVOCATION_ID: &str = "amphi-invocation-id";
/// The function name header.
pub const FUNCTION: &str = "amphi-function";
/// The function version header.
pub const FUNCTION_VERSION: &str = "amphi-function-version";
/// The deadline header: milliseconds since the Unix epoch.
pub const DEADLINE: &str = "amphi-deadline-ms";

/// What the platform says about the call in flight.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InvocationMeta {
    /// The invocation id, as in the invocation record and the log lines.
    pub id: String,
    /// The function's name.
    pub function: String,
    /// The version being run.
    pub version: u64,
    /// When the platform will cut the call off, in milliseconds since the Unix epoch.
    pub deadline_unix_ms: u64,
}

impl InvocationMeta {
    /// Reads the metadata from request headers, given as (name, value) pairs in any case.
    ///
    /// ```
    /// let meta = amphi_sdk::InvocationMeta::from_headers([
    ///     ("Amphi-Invocation-Id", "01a210a2-9ebf-73cd-bd4d-79b30276e719"),
    ///     ("amphi-function", "hello"),
    ///     ("amphi-function-version", "3"),
    ///     ("amphi-deadline-ms", "1790000000000"),
    /// ]);
    /// assert_eq!(meta.function, "hello");
    /// assert_eq!(meta.version, 3);
    /// ```
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut meta = Self::default();
        for (name, value) in headers {
            match name.to_ascii_lowercase().as_str() {
                INVOCATION_ID => meta.id = value.to_string(),
                FUNCTION => meta.function = value.to_string(),
                FUNCTION_VERSION => meta.version = value.parse().unwrap_or(0),
                DEADLINE => meta.deadline_unix_ms = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        meta
    }

    /// Reads the metadata from the CGI environment (`HTTP_AMPHI_*` variables).
    ///
    /// ```
    /// // In a CGI function: let meta = amphi_sdk::InvocationMeta::from_cgi_env(std::env::vars());
    /// let meta = amphi_sdk::InvocationMeta::from_cgi_env([("HTTP_AMPHI_FUNCTION".to_string(), "cgi".to_string())]);
    /// assert_eq!(meta.function, "cgi");
    /// ```
    pub fn from_cgi_env(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let pairs: Vec<(String, String)> = vars
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("HTTP_")?.to_ascii_lowercase().replace('_', "-"), v)))
            .collect();
        Self::from_headers(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// Time left before the deadline (zero once it has passed).
    ///
    /// ```
    /// let meta = amphi_sdk::InvocationMeta { deadline_unix_ms: 0, ..Default::default() };
    /// assert_eq!(meta.remaining(), std::time::Duration::ZERO);
    /// ```
    pub fn remaining(&self) -> Duration {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        Duration::from_millis(self.deadline_unix_ms.saturating_sub(now))
    }
}
