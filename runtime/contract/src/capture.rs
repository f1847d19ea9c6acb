//! A call's output as the platform keeps it: stdout and stderr split into lines, within a byte
//! budget, sent to a [`TelemetrySink`] (the log store, in a server) as they come. Lines the sink
//! could not take are counted, so the call's record says how many are missing.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::record::{InvocationRecord, LogLine, LogStream};

/// Where invocation records and log lines go (the log store, in a server).
///
/// Implementations must not block: they are called on the request path.
pub trait TelemetrySink: Send + Sync + 'static {
    /// Stores one log line; `false` when the sink dropped it (it is full: the disk cannot keep
    /// up), so the caller can count it. `logged_before` is how many bytes the line's call had
    /// logged before it (0 outside a call): a filling sink refuses the heaviest loggers first.
    fn log_line(&self, line: LogLine, logged_before: usize) -> bool;
    /// Stores one invocation record. Records are never dropped.
    fn invocation(&self, record: InvocationRecord);
}

/// What became of a call's output, for its record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureCounts {
    /// Lines handed to the sink and taken.
    pub kept: u64,
    /// Whether the call wrote more than its budget (the rest was not kept, and a platform line
    /// says so).
    pub truncated: bool,
    /// Lines within the budget that the sink could not take.
    pub dropped: u64,
}

/// Microseconds since the Unix epoch, now.
pub fn now_unix_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
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
    counts: CaptureCounts,
    closed: bool,
    partial_stdout: Vec<u8>,
    partial_stderr: Vec<u8>,
}

/// Longest line kept whole; a longer one is split so one line cannot hold the whole budget hostage.
const MAX_LINE: usize = 16 * 1024;

impl LogCapture {
    /// A capture of the output of invocation `invocation_id` of `function`, keeping at most
    /// `limit` bytes of it.
    pub fn new(sink: Arc<dyn TelemetrySink>, function: String, invocation_id: String, limit: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(CaptureState {
                sink,
                function,
                invocation_id,
                budget: limit,
                limit,
                counts: CaptureCounts::default(),
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

    /// Flushes unfinished lines and stops capturing; returns what became of the output. Later
    /// writes are ignored; closing again returns the same counts.
    pub fn close(&self) -> CaptureCounts {
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
        state.counts
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
        if self.counts.truncated {
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
        // The line break counts too, so a call cannot store unbounded numbers of blank lines.
        let cost = text.len() + 1;
        if cost > self.budget {
            self.counts.truncated = true;
            let note = format!("log truncated: this call wrote more than {} bytes", self.limit);
            self.send(LogStream::Platform, note);
            return;
        }
        self.budget -= cost;
        self.send(stream, text);
    }

    fn send(&mut self, stream: LogStream, line: String) {
        let logged_before = self.limit - self.budget;
        let taken = self.sink.log_line(
            LogLine {
                seq: 0,
                ts_us: now_unix_us(),
                function: self.function.clone(),
                invocation_id: self.invocation_id.clone(),
                stream,
                line,
            },
            logged_before,
        );
        if taken {
            self.counts.kept += 1;
        } else {
            self.counts.dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect {
        lines: Mutex<Vec<LogLine>>,
    }

    impl TelemetrySink for Collect {
        fn log_line(&self, line: LogLine, _: usize) -> bool {
            self.lines.lock().expect("lock").push(line);
            true
        }
        fn invocation(&self, _: InvocationRecord) {}
    }

    fn capture(sink: Arc<Collect>, limit: usize) -> LogCapture {
        LogCapture::new(sink, "f".into(), "0192-id".into(), limit)
    }

    #[test]
    fn lines_are_split_joined_and_attributed() {
        let sink = Arc::new(Collect::default());
        let log = capture(sink.clone(), 1024);
        log.write(LogStream::Stdout, b"one\ntw");
        log.write(LogStream::Stderr, b"err\r\n");
        log.write(LogStream::Stdout, b"o\nthree");
        assert_eq!(log.close(), CaptureCounts { kept: 4, truncated: false, dropped: 0 });
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
        assert!(lines.iter().all(|l| l.invocation_id == "0192-id"));
    }

    #[test]
    fn output_past_the_budget_is_dropped_and_noted() {
        let sink = Arc::new(Collect::default());
        let log = capture(sink.clone(), 10);
        log.write(LogStream::Stdout, b"12345\n123456789\nmore\n");
        assert_eq!(log.close(), CaptureCounts { kept: 2, truncated: true, dropped: 0 });
        let lines = sink.lines.lock().expect("lock");
        assert_eq!(lines[0].line, "12345");
        assert_eq!(lines[1].stream, LogStream::Platform);
        assert!(lines[1].line.contains("truncated"));
    }

    #[test]
    fn blank_lines_are_output_too() {
        let sink = Arc::new(Collect::default());
        let log = capture(sink.clone(), 1024);
        log.write(LogStream::Stdout, b"a\n\n\r\nb\n");
        log.close();
        let lines = sink.lines.lock().expect("lock");
        let texts: Vec<_> =
            lines.iter().filter(|l| l.stream == LogStream::Stdout).map(|l| l.line.as_str()).collect();
        assert_eq!(texts, ["a", "", "", "b"]);
    }

    /// A sink that takes every other line.
    #[derive(Default)]
    struct Full {
        offered: std::sync::atomic::AtomicU64,
    }

    impl TelemetrySink for Full {
        fn log_line(&self, _: LogLine, _: usize) -> bool {
            self.offered.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(2)
        }
        fn invocation(&self, _: InvocationRecord) {}
    }

    #[test]
    fn lines_the_sink_drops_are_counted_apart_from_the_kept_ones() {
        let log = LogCapture::new(Arc::new(Full::default()), "f".into(), "id".into(), 1024);
        log.write(LogStream::Stdout, b"1\n2\n3\n4\n5\n");
        assert_eq!(log.close(), CaptureCounts { kept: 3, truncated: false, dropped: 2 });
    }

    #[test]
    fn blank_lines_cost_their_line_break() {
        let sink = Arc::new(Collect::default());
        let log = capture(sink.clone(), 4);
        log.write(LogStream::Stdout, &[b'\n'; 100]);
        let counts = log.close();
        assert_eq!((counts.kept, counts.truncated), (5, true), "four blank lines, then the note");
    }
}
