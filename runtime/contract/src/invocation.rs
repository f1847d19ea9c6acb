//! One call in flight: its metadata, its log capture, and the record it leaves behind.
//!
//! The gateway makes an [`Invocation`] when it admits a call and hands it to a backend. The
//! backend feeds the function's output into [`Invocation::log`] and calls [`Invocation::finish`]
//! when the function is done. An invocation dropped unfinished (the client went away, the server
//! is shutting down) still leaves a record, so no call goes unaccounted.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::function::FunctionVersion;
use crate::record::{BackendKind, InvocationRecord, LogLine, LogStream, Outcome, StartKind};

/// Where invocation records and log lines go (the log store, in a server).
///
/// Implementations must not block: they are called on the request path.
pub trait TelemetrySink: Send + Sync + 'static {
    /// Stores one log line.
    fn log_line(&self, line: LogLine);
    /// Stores one invocation record.
    fn invocation(&self, record: InvocationRecord);
}

/// Microseconds since the Unix epoch, now.
pub fn now_unix_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// What a backend reports when a call ends.
#[derive(Debug, Clone)]
pub struct Finish {
    /// The status the caller received.
    pub status: u16,
    /// How it ended.
    pub outcome: Outcome,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// How the instance that served the call was obtained.
    pub start: StartKind,
    /// How long making it ready took.
    pub init: Option<Duration>,
}

/// One call in flight.
pub struct Invocation {
    /// The invocation id (UUIDv7).
    pub id: String,
    /// The function version being run.
    pub function: Arc<FunctionVersion>,
    /// The backend that runs it.
    pub backend: BackendKind,
    /// The request method.
    pub method: String,
    /// The path the function sees, with the query.
    pub path: String,
    /// When the gateway admitted the call.
    pub admitted: Instant,
    /// When the call must be over.
    pub deadline: Instant,
    /// The deadline in milliseconds since the Unix epoch, as in the `amphi-deadline-ms` header.
    pub deadline_unix_ms: u64,
    start_us: u64,
    /// The function's stdout and stderr, line by line.
    pub log: LogCapture,
    sink: Arc<dyn TelemetrySink>,
    finished: bool,
}

impl Invocation {
    /// Admits a call of `function` on `backend` now, with its deadline from the function's timeout.
    pub fn new(
        function: Arc<FunctionVersion>,
        backend: BackendKind,
        method: String,
        path: String,
        sink: Arc<dyn TelemetrySink>,
        log_limit_bytes: usize,
    ) -> Self {
        let id = uuid::Uuid::now_v7().to_string();
        let admitted = Instant::now();
        let start_us = now_unix_us();
        let timeout = function.config.timeout();
        let log = LogCapture::new(sink.clone(), function.name.clone(), id.clone(), log_limit_bytes);
        Self {
            id,
            deadline: admitted + timeout,
            deadline_unix_ms: (start_us / 1000).saturating_add(timeout.as_millis() as u64),
            function,
            backend,
            method,
            path,
            admitted,
            start_us,
            log,
            sink,
            finished: false,
        }
    }

    /// Starts the call's clock again now that it is admitted (its body read, a slot taken): the
    /// timeout covers the function's work, not a slow client or the queue.
    pub fn admit(&mut self) {
        let timeout = self.function.config.timeout();
        self.deadline = Instant::now() + timeout;
        self.deadline_unix_ms = (now_unix_us() / 1000).saturating_add(timeout.as_millis() as u64);
    }

    /// Writes the invocation record. Call once, when the function is done.
    pub fn finish(mut self, finish: Finish) {
        self.finished = true;
        self.write_record(finish);
    }

    fn write_record(&mut self, finish: Finish) {
        if let Some(error) = &finish.error {
            self.log.platform_line(error);
        }
        let (log_lines, log_truncated) = self.log.close();
        self.sink.invocation(InvocationRecord {
            id: self.id.clone(),
            function: self.function.name.clone(),
            version: self.function.version,
            backend: self.backend,
            trigger: "http".into(),
            method: self.method.clone(),
            path: self.path.clone(),
            start_us: self.start_us,
            duration_us: self.admitted.elapsed().as_micros() as u64,
            init_us: finish.init.map(|d| d.as_micros() as u64),
            cold_start: finish.start == StartKind::Cold,
            start: finish.start,
            outcome: finish.outcome,
            status: finish.status,
            error: finish.error,
            log_lines,
            log_truncated,
        });
    }
}

impl Drop for Invocation {
    fn drop(&mut self) {
        if !self.finished {
            self.write_record(Finish {
                status: 499,
                outcome: Outcome::PlatformError,
                error: Some(
                    "the call was abandoned before it finished (client gone or server stopping)".into(),
                ),
                start: StartKind::Warm,
                init: None,
            });
        }
    }
}

/// Splits a function's output into lines and sends them to the sink, within a byte budget.
///
/// Cheap to clone: every clone writes to the same capture (one for stdout, one for stderr).
#[derive(Clone)]
pub struct LogCapture {
    inner: Arc<Mutex<CaptureState>>,
}

struct CaptureState {
    sink: Arc<dyn TelemetrySink>,
    function: String,
    invocation_id: String,
    budget: usize,
    limit: usize,
    lines: u64,
    truncated: bool,
    closed: bool,
    partial_stdout: Vec<u8>,
    partial_stderr: Vec<u8>,
}

/// Longest line kept whole; a longer one is split so one line cannot hold the whole budget hostage.
const MAX_LINE: usize = 16 * 1024;

impl LogCapture {
    fn new(sink: Arc<dyn TelemetrySink>, function: String, invocation_id: String, limit: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(CaptureState {
                sink,
                function,
                invocation_id,
                budget: limit,
                limit,
                lines: 0,
                truncated: false,
                closed: false,
                partial_stdout: Vec::new(),
                partial_stderr: Vec::new(),
            })),
        }
    }

    /// Takes bytes the function wrote to `stream` (stdout or stderr).
    pub fn write(&self, stream: LogStream, bytes: &[u8]) {
        let mut state = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if state.closed {
            return;
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let partial = state.partial(stream);
            match rest.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    partial.extend_from_slice(&rest[..end]);
                    rest = &rest[end + 1..];
                    state.emit_line(stream);
                }
                None => {
                    partial.extend_from_slice(rest);
                    rest = &[];
                    if state.partial(stream).len() >= MAX_LINE {
                        state.emit_line(stream);
                    }
                }
            }
        }
    }

    /// Adds a line written by the platform about this call.
    pub fn platform_line(&self, text: &str) {
        let mut state = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.closed {
            state.send(LogStream::Platform, text.to_string());
        }
    }

    /// Flushes unfinished lines and stops capturing; returns (lines kept, truncated).
    fn close(&self) -> (u64, bool) {
        let mut state = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.closed {
            for stream in [LogStream::Stdout, LogStream::Stderr] {
                // An unfinished last line counts; nothing after the last line break does not.
                if !state.partial(stream).is_empty() {
                    state.emit_line(stream);
                }
            }
            state.closed = true;
        }
        (state.lines, state.truncated)
    }
}

impl CaptureState {
    fn partial(&mut self, stream: LogStream) -> &mut Vec<u8> {
        match stream {
            LogStream::Stderr => &mut self.partial_stderr,
            _ => &mut self.partial_stdout,
        }
    }

    /// Sends the line gathered for `stream` (an empty one too: a blank line is output).
    fn emit_line(&mut self, stream: LogStream) {
        let bytes = std::mem::take(self.partial(stream));
        if self.truncated {
            return;
        }
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if text.ends_with('\r') {
            text.pop();
        }
        // A line naming this very invocation loses its prefix; one naming another is kept as written.
        if let Some((id, rest)) = crate::record::split_attribution(&text)
            && id == self.invocation_id
        {
            text = rest.to_string();
        }
        if text.len() > self.budget {
            if !self.truncated {
                self.truncated = true;
                let note = format!("log truncated: this call wrote more than {} bytes", self.limit);
                self.send(LogStream::Platform, note);
            }
            return;
        }
        self.budget -= text.len();
        self.send(stream, text);
    }

    fn send(&mut self, stream: LogStream, line: String) {
        self.lines += 1;
        self.sink.log_line(LogLine {
            seq: 0,
            ts_us: now_unix_us(),
            function: self.function.clone(),
            invocation_id: self.invocation_id.clone(),
            stream,
            line,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::function::{ArtifactKind, FunctionConfig};

    #[derive(Default)]
    struct Collect {
        lines: Mutex<Vec<LogLine>>,
        records: Mutex<Vec<InvocationRecord>>,
    }

    impl TelemetrySink for Collect {
        fn log_line(&self, line: LogLine) {
            self.lines.lock().expect("lock").push(line);
        }
        fn invocation(&self, record: InvocationRecord) {
            self.records.lock().expect("lock").push(record);
        }
    }

    fn invocation(sink: Arc<Collect>, limit: usize) -> Invocation {
        let function = Arc::new(FunctionVersion {
            name: "f".into(),
            version: 1,
            digest: "sha256:00".into(),
            kind: ArtifactKind::CgiModule,
            config: FunctionConfig::default(),
            created_at_ms: 0,
        });
        Invocation::new(function, BackendKind::Wasm, "GET".into(), "/".into(), sink, limit)
    }

    #[test]
    fn lines_are_split_joined_and_attributed() {
        let sink = Arc::new(Collect::default());
        let call = invocation(sink.clone(), 1024);
        call.log.write(LogStream::Stdout, b"one\ntw");
        call.log.write(LogStream::Stderr, b"err\r\n");
        call.log.write(LogStream::Stdout, b"o\nthree");
        let id = call.id.clone();
        call.finish(Finish {
            status: 200,
            outcome: Outcome::Success,
            error: None,
            start: StartKind::Warm,
            init: None,
        });
        let lines = sink.lines.lock().expect("lock");
        let texts: Vec<_> = lines.iter().map(|l| (l.stream, l.line.as_str())).collect();
        assert_eq!(
            texts,
            [
                (LogStream::Stdout, "one"),
                (LogStream::Stderr, "err"),
                (LogStream::Stdout, "two"),
                (LogStream::Stdout, "three")
            ]
        );
        assert!(lines.iter().all(|l| l.invocation_id == id));
        let records = sink.records.lock().expect("lock");
        assert_eq!(records[0].log_lines, 4);
        assert!(!records[0].log_truncated);
    }

    #[test]
    fn output_past_the_budget_is_dropped_and_noted() {
        let sink = Arc::new(Collect::default());
        let call = invocation(sink.clone(), 10);
        call.log.write(LogStream::Stdout, b"12345\n123456789\nmore\n");
        drop(call);
        let lines = sink.lines.lock().expect("lock");
        assert_eq!(lines[0].line, "12345");
        assert_eq!(lines[1].stream, LogStream::Platform);
        assert!(lines[1].line.contains("truncated"));
        let records = sink.records.lock().expect("lock");
        assert!(records[0].log_truncated);
        assert_eq!(records[0].outcome, Outcome::PlatformError, "dropped unfinished");
    }

    #[test]
    fn blank_lines_are_output_too() {
        let sink = Arc::new(Collect::default());
        let call = invocation(sink.clone(), 1024);
        call.log.write(LogStream::Stdout, b"a\n\n\r\nb\n");
        drop(call);
        let lines = sink.lines.lock().expect("lock");
        let texts: Vec<_> =
            lines.iter().filter(|l| l.stream == LogStream::Stdout).map(|l| l.line.as_str()).collect();
        assert_eq!(texts, ["a", "", "", "b"]);
    }
}
