//! What the platform says about the call in flight, and a logger that names it.

use std::fmt::Display;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

/// The invocation id header (a UUIDv7).
const INVOCATION_ID: &str = "amphi-invocation-id";
/// The function name header.
const FUNCTION: &str = "amphi-function";
/// The function version header.
const FUNCTION_VERSION: &str = "amphi-function-version";
/// The deadline header: milliseconds since the Unix epoch.
const DEADLINE: &str = "amphi-deadline-ms";

/// The prefix that attributes a log line to an invocation (CONTRACT.md, "Logs").
const ATTRIBUTION_PREFIX: &str = "amphi-invocation=";

/// The call in flight, as the platform describes it in the `amphi-*` request headers.
///
/// Outside Amphi (a unit test, a plain `curl` to the server) the fields are empty and
/// `deadline_unix_ms` is 0.
///
/// ```
/// use amphi_sdk::{Request, Method};
///
/// let req = Request::new(Method::GET, "/")
///     .with_header("amphi-invocation-id", "019ab3c2-0000-7000-8000-000000000001")
///     .with_header("amphi-function", "resize")
///     .with_header("amphi-function-version", "4")
///     .with_header("amphi-deadline-ms", "1795577822668");
/// let invocation = req.invocation();
/// assert_eq!(invocation.function, "resize");
/// assert_eq!(invocation.version, 4);
/// assert_eq!(invocation.deadline_unix_ms, 1795577822668);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Invocation {
    /// The invocation id: the same in the invocation record, the log lines and the response's
    /// `amphi-invocation-id` header.
    pub id: String,
    /// The function's name.
    pub function: String,
    /// The function version being run (1, 2, …).
    pub version: u64,
    /// When the platform will cut the call off, in milliseconds since the Unix epoch.
    pub deadline_unix_ms: u64,
}

impl Invocation {
    /// Reads the metadata from the request headers.
    ///
    /// ```
    /// let mut headers = amphi_sdk::HeaderMap::new();
    /// headers.insert("amphi-function", "hello".parse().unwrap());
    /// let invocation = amphi_sdk::Invocation::from_headers(&headers);
    /// assert_eq!(invocation.function, "hello");
    /// assert_eq!(invocation.version, 0);
    /// ```
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        Self {
            id: text(INVOCATION_ID),
            function: text(FUNCTION),
            version: text(FUNCTION_VERSION).parse().unwrap_or(0),
            deadline_unix_ms: text(DEADLINE).parse().unwrap_or(0),
        }
    }

    /// Time left before the deadline: zero once it has passed, `None` without a deadline.
    ///
    /// ```
    /// let invocation = amphi_sdk::Invocation { deadline_unix_ms: 1, ..Default::default() };
    /// assert_eq!(invocation.remaining(), Some(std::time::Duration::ZERO));
    /// assert_eq!(amphi_sdk::Invocation::default().remaining(), None);
    /// ```
    pub fn remaining(&self) -> Option<Duration> {
        if self.deadline_unix_ms == 0 {
            return None;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        Some(Duration::from_millis(self.deadline_unix_ms.saturating_sub(now)))
    }

    /// A logger whose lines are attributed to this invocation.
    ///
    /// ```
    /// let invocation = amphi_sdk::Invocation::default();
    /// invocation.logger().log("starting");
    /// ```
    pub fn logger(&self) -> Logger {
        Logger { invocation_id: self.id.clone() }
    }
}

/// Writes log lines attributed to one invocation.
///
/// Each message goes to stderr, one log line per line of the message, as
/// `amphi-invocation=ID message`; the platform stores it for that invocation with the prefix
/// removed. Plain `println!`/`eprintln!` lines are logs too, attributed to the call in flight when
/// the platform can tell which one it is (always on wasm; on a container instance serving one call
/// at a time, the default).
///
/// ```
/// use amphi_sdk::{Request, Method};
///
/// let req = Request::new(Method::POST, "/orders");
/// let log = req.logger();
/// log.log("order received");
/// log.log(format_args!("{} bytes", req.body().len()));
/// ```
#[derive(Debug, Clone)]
pub struct Logger {
    invocation_id: String,
}

impl Logger {
    /// Writes `message` to the invocation's log.
    ///
    /// ```
    /// amphi_sdk::Invocation::default().logger().log("two\nlines");
    /// ```
    pub fn log(&self, message: impl Display) {
        let text = message.to_string();
        let mut out = Vec::with_capacity(text.len() + 64);
        for line in text.lines() {
            if !self.invocation_id.is_empty() {
                out.extend_from_slice(ATTRIBUTION_PREFIX.as_bytes());
                out.extend_from_slice(self.invocation_id.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        // One write, so lines of concurrent calls do not interleave mid-line; a log that cannot be
        // written is not worth failing the call for.
        let _ = std::io::stderr().lock().write_all(&out);
    }
}
