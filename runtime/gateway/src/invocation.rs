//! The one place invocation records are written: the life of a call's record, from the moment
//! the trigger takes the request until the function is done with it.
//!
//! The trigger makes an [`Invocation`] for every request it routes to a function. From there a
//! call ends in one of three ways, and each writes exactly one record:
//! - refused or failed without a response: [`Invocation::fail`];
//! - answered: [`Invocation::into_body`] wraps the response body, and the record is written when
//!   the body has ended (or the caller went away) and the backend's [`Completion`] says how the
//!   function ended;
//! - dropped unfinished (the caller left before the response, the server stopped): the record
//!   says the call was abandoned.
//!
//! Backends never write records: what the record needs from them (how the instance started,
//! init and queue time) they report on the [`Call`] as soon as they know it, so it is there
//! whichever way the call ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use amphi_contract::record::{BackendKind, InvocationRecord, JobRef, Outcome, StartKind};
use amphi_contract::{
    BackendError, BoxError, Call, Completion, Ending, FunctionVersion, LogCapture, ResponseBody, StartFacts,
    TelemetrySink, now_unix_us,
};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;

use crate::capacity::Slot;
use crate::metrics::Metrics;

/// Status recorded for a call whose caller went away, or that the server stopped (nginx's 499).
const ABANDONED: u16 = 499;

/// Where a call comes from, as its record tells.
pub struct Origin {
    /// The invocation id.
    pub id: Arc<str>,
    /// The job, for an attempt of one (`trigger: async`); `None` for an HTTP call.
    pub job: Option<JobRef>,
    /// The request's method.
    pub method: String,
    /// The path the function sees, with the query (as records keep it).
    pub path: String,
}

impl Origin {
    /// An HTTP call arriving now, under a new invocation id.
    pub fn http(method: String, path: String) -> Self {
        Self { id: uuid::Uuid::now_v7().to_string().into(), job: None, method, path }
    }
}

/// One call's record in the making.
pub struct Invocation {
    call: Call,
    backend: BackendKind,
    job: Option<JobRef>,
    method: String,
    path: String,
    admitted: Instant,
    start_us: u64,
    deadline_unix_ms: u64,
    sink: Arc<dyn TelemetrySink>,
    metrics: Arc<Metrics>,
    finished: bool,
}

impl Invocation {
    /// A call from `origin` of `function` on `backend` arriving now, its output captured up to
    /// `log_limit_bytes`; its record goes to `sink` and is counted in `metrics`.
    pub fn new(
        origin: Origin,
        function: Arc<FunctionVersion>,
        backend: BackendKind,
        sink: Arc<dyn TelemetrySink>,
        metrics: Arc<Metrics>,
        log_limit_bytes: usize,
    ) -> Self {
        let Origin { id, job, method, path } = origin;
        let log = LogCapture::new(sink.clone(), function.name.clone(), id.to_string(), log_limit_bytes);
        let admitted = Instant::now();
        let call = Call::new(id, function, admitted, log);
        let mut invocation = Self {
            call,
            backend,
            job,
            method,
            path,
            admitted,
            start_us: now_unix_us(),
            deadline_unix_ms: 0,
            sink,
            metrics,
            finished: false,
        };
        invocation.admit();
        invocation
    }

    /// Starts the call's clock again now that it is admitted (its body read, a slot taken): the
    /// timeout covers the function's work, not a slow client or the queue.
    pub fn admit(&mut self) {
        let timeout = self.call.function.config.timeout();
        self.call.deadline = Instant::now() + timeout;
        self.deadline_unix_ms = (now_unix_us() / 1000).saturating_add(timeout.as_millis() as u64);
    }

    /// The invocation id.
    pub fn id(&self) -> &str {
        &self.call.id
    }

    /// The backend that runs it.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// The function version called.
    pub fn function(&self) -> &Arc<FunctionVersion> {
        &self.call.function
    }

    /// The deadline in milliseconds since the Unix epoch, as in the `amphi-deadline-ms` header.
    pub fn deadline_unix_ms(&self) -> u64 {
        self.deadline_unix_ms
    }

    /// The call as the backend gets it.
    pub fn call(&self) -> Call {
        self.call.clone()
    }

    /// What the backend reported about the call's instance so far.
    pub fn facts(&self) -> StartFacts {
        self.call.facts()
    }

    /// Ends the call with `error` and no response from the function.
    pub fn fail(self, error: &BackendError) {
        self.finish(error.kind.status(), Ending::failed(error));
    }

    /// Wraps the response `body` (status `status`): the record is written when it has been sent,
    /// or dropped, and `completion` says how the function ended. `slot` is released with the body.
    pub fn into_body(
        self,
        status: u16,
        body: ResponseBody,
        completion: Completion,
        slot: Slot,
    ) -> ResponseBody {
        RecordingBody { inner: body, pending: Some((self, completion)), status, _slot: slot }.boxed_unsync()
    }

    fn finish(mut self, status: u16, ending: Ending) {
        self.finished = true;
        self.write_record(status, ending);
    }

    fn write_record(&mut self, status: u16, ending: Ending) {
        if let Some(error) = &ending.error {
            self.call.log.platform_line(error);
        }
        let log = self.call.log.close();
        let facts = self.call.facts();
        let record = InvocationRecord {
            id: self.call.id.to_string(),
            function: self.call.function.name.clone(),
            version: self.call.function.version,
            backend: self.backend,
            trigger: if self.job.is_some() { "async" } else { "http" }.into(),
            job: self.job.take(),
            method: std::mem::take(&mut self.method),
            path: std::mem::take(&mut self.path),
            start_us: self.start_us,
            duration_us: self.admitted.elapsed().as_micros() as u64,
            init_us: facts.init.map(|d| d.as_micros() as u64),
            cold_start: facts.start == StartKind::Cold,
            start: facts.start,
            outcome: ending.outcome,
            status,
            error: ending.error,
            log_lines: log.kept,
            log_truncated: log.truncated,
            log_lines_dropped: log.dropped,
        };
        self.metrics.call_ended(&record);
        self.sink.invocation(record);
    }
}

impl Drop for Invocation {
    fn drop(&mut self) {
        if !self.finished {
            let why = "the call was abandoned before it finished (client gone or server stopping)";
            self.write_record(ABANDONED, Ending::cut(Outcome::PlatformError, why));
        }
    }
}

/// A response body that writes its call's record once it has ended and the backend has said how
/// the function ended, and holds the call's concurrency slot until it is sent or dropped.
struct RecordingBody {
    inner: ResponseBody,
    pending: Option<(Invocation, Completion)>,
    status: u16,
    _slot: Slot,
}

impl RecordingBody {
    /// The body is over (sent, broken off, or dropped): record the call once the backend says
    /// how it ended; a backend that gives up without saying leaves it recorded as abandoned.
    fn ended(&mut self) {
        let Some((invocation, mut completion)) = self.pending.take() else { return };
        let status = self.status;
        if let Some(ending) = completion.now() {
            invocation.finish(status, ending);
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Some(ending) = completion.wait().await {
                    invocation.finish(status, ending);
                }
            });
        }
    }
}

impl Body for RecordingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None | Some(Err(_))) => self.ended(),
            // hyper stops polling a body whose length is reached: the call ends here then.
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.ended(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RecordingBody {
    fn drop(&mut self) {
        self.ended();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use amphi_contract::record::LogLine;
    use amphi_contract::{ArtifactKind, FunctionConfig, LogStream};
    use http_body_util::Full;

    use super::*;
    use crate::capacity::Capacity;

    #[derive(Default)]
    struct Collect {
        lines: Mutex<Vec<LogLine>>,
        records: Mutex<Vec<InvocationRecord>>,
    }

    impl TelemetrySink for Collect {
        fn log_line(&self, line: LogLine, _: usize) -> bool {
            self.lines.lock().expect("lock").push(line);
            true
        }
        fn invocation(&self, record: InvocationRecord) {
            self.records.lock().expect("lock").push(record);
        }
    }

    fn invocation(sink: &Arc<Collect>) -> Invocation {
        let function = Arc::new(FunctionVersion {
            name: "f".into(),
            version: 1,
            digest: "sha256:00".into(),
            kind: ArtifactKind::CgiModule,
            config: FunctionConfig::default(),
            created_at_ms: 0,
            init: None,
        });
        let metrics = Arc::default();
        let origin = Origin::http("GET".into(), "/".into());
        Invocation::new(origin, function, BackendKind::Wasm, sink.clone(), metrics, 1024)
    }

    fn body(text: &'static str) -> ResponseBody {
        Full::new(Bytes::from_static(text.as_bytes())).map_err(|never| match never {}).boxed_unsync()
    }

    #[test]
    fn a_dropped_call_is_recorded_abandoned_with_what_the_backend_reported() {
        let sink = Arc::new(Collect::default());
        let call = invocation(&sink);
        call.call().started(StartKind::Cold, Some(std::time::Duration::from_millis(7)));
        call.call().log.write(LogStream::Stdout, b"partial");
        drop(call);
        let records = sink.records.lock().expect("lock");
        let record = &records[0];
        assert_eq!(
            (record.status, record.outcome, record.start),
            (499, Outcome::PlatformError, StartKind::Cold)
        );
        assert_eq!((record.init_us, record.log_lines), (Some(7000), 2), "the partial line and the note");
    }

    #[test]
    fn a_failure_is_recorded_once_with_its_reason_in_the_log() {
        let sink = Arc::new(Collect::default());
        let error = BackendError::new(amphi_contract::ProblemKind::DeadlineExceeded, "too slow");
        invocation(&sink).fail(&error);
        let records = sink.records.lock().expect("lock");
        assert_eq!(records.len(), 1);
        assert_eq!((records[0].status, records[0].outcome), (504, Outcome::Timeout));
        let lines = sink.lines.lock().expect("lock");
        assert_eq!((lines[0].stream, lines[0].line.as_str()), (LogStream::Platform, "too slow"));
    }

    #[tokio::test]
    async fn a_response_is_recorded_when_its_body_ends_and_the_backend_says_how() {
        let sink = Arc::new(Collect::default());
        let capacity = Capacity::new(1);
        let slot = capacity.acquire(std::time::Duration::ZERO).await.expect("a free slot");
        let (completer, completion) = Completion::pending();
        let body = invocation(&sink).into_body(201, body("hello"), completion, slot);
        let sent = body.collect().await.expect("body").to_bytes();
        assert_eq!(sent.as_ref(), b"hello");
        assert!(sink.records.lock().expect("lock").is_empty(), "not before the backend says so");
        assert!(capacity.acquire(std::time::Duration::ZERO).await.is_some(), "the slot went with the body");
        completer.complete(Ending::cut(Outcome::FunctionError, "after the response started: trap"));
        let record = loop {
            if let Some(record) = sink.records.lock().expect("lock").first().cloned() {
                break record;
            }
            tokio::task::yield_now().await;
        };
        assert_eq!((record.status, record.outcome), (201, Outcome::FunctionError));
        assert_eq!(record.error.as_deref(), Some("after the response started: trap"));
    }

    #[tokio::test]
    async fn a_backend_that_gives_a_call_up_leaves_it_abandoned() {
        let sink = Arc::new(Collect::default());
        let capacity = Capacity::new(1);
        let slot = capacity.acquire(std::time::Duration::ZERO).await.expect("a free slot");
        let (completer, completion) = Completion::pending();
        let body = invocation(&sink).into_body(200, body("x"), completion, slot);
        drop(body);
        drop(completer);
        let record = loop {
            if let Some(record) = sink.records.lock().expect("lock").first().cloned() {
                break record;
            }
            tokio::task::yield_now().await;
        };
        assert_eq!((record.status, record.outcome), (499, Outcome::PlatformError));
    }
}
