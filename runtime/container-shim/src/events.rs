//! What happens inside the instance, as the gateway hears it: one NDJSON event per line.
//!
//! `{"type":"log","invocation":ID,"stream":"stdout"|"stderr","line":TEXT}`: a line of output;
//! `invocation` is empty when no call, or more than one, was in flight.
//! `{"type":"listening","init_us":N}`: the function answers; calls may come.
//! `{"type":"end","invocation":ID}`: every line of that call has been sent before this one.
//! `{"type":"exit","code":N,"oom":bool}`: the function's process ended (`oom`: the kernel killed
//! a process of the container for memory); the instance is going away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use amphi_contract::record::split_attribution;
use bytes::Bytes;
use serde_json::json;
use tokio::sync::{mpsc, watch};

/// Most bytes of log events waiting for the gateway. Past it, lines are dropped (and counted)
/// rather than held: a function flooding its output must not grow the shim's memory, which the
/// container's memory limit also counts.
const MAX_QUEUED_LOG_BYTES: usize = 1 << 20;

/// One event on its way to the gateway; a log event's bytes count against the queue's budget
/// until the gateway's connection takes them.
pub struct Queued {
    /// The NDJSON line.
    pub line: Bytes,
    log: bool,
}

/// The event hub of the instance.
pub struct Events {
    state: Mutex<State>,
    exit: watch::Sender<Option<u8>>,
    queued_log_bytes: Arc<AtomicUsize>,
}

struct State {
    sender: mpsc::UnboundedSender<Queued>,
    /// Taken by the gateway's one events connection; events wait in the channel until then.
    receiver: Option<mpsc::UnboundedReceiver<Queued>>,
    in_flight: Vec<String>,
    /// Lines dropped since the queue was last below its budget, by the invocation they belong to.
    dropped: HashMap<String, u64>,
}

/// The receiving end of the events, for the gateway's connection.
pub struct Receiver {
    inner: mpsc::UnboundedReceiver<Queued>,
    queued_log_bytes: Arc<AtomicUsize>,
}

impl Receiver {
    /// The next event's line, once there is one.
    pub fn poll_line(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Bytes>> {
        self.inner.poll_recv(cx).map(|event| {
            event.map(|queued| {
                if queued.log {
                    self.queued_log_bytes.fetch_sub(queued.line.len(), Ordering::Relaxed);
                }
                queued.line
            })
        })
    }
}

impl Default for Events {
    fn default() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self {
            state: Mutex::new(State {
                sender,
                receiver: Some(receiver),
                in_flight: Vec::new(),
                dropped: HashMap::new(),
            }),
            exit: watch::Sender::new(None),
            queued_log_bytes: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Events {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The event stream, for the first caller only.
    pub fn subscribe(&self) -> Option<Receiver> {
        let inner = self.state().receiver.take()?;
        Some(Receiver { inner, queued_log_bytes: self.queued_log_bytes.clone() })
    }

    fn send(state: &State, event: serde_json::Value) {
        let _ = state.sender.send(Queued { line: ndjson(&event), log: false });
    }

    /// Queues a log event unless the queue is over its budget; once there is room again, says
    /// how many lines each invocation lost meanwhile, in that invocation's log.
    fn send_log(
        &self,
        (sender, dropped): (&mpsc::UnboundedSender<Queued>, &mut HashMap<String, u64>),
        invocation: &str,
        stream: &str,
        line: &str,
    ) {
        let event = json!({"type": "log", "invocation": invocation, "stream": stream, "line": line});
        let line = ndjson(&event);
        if self.queued_log_bytes.load(Ordering::Relaxed) + line.len() > MAX_QUEUED_LOG_BYTES {
            *dropped.entry(invocation.to_string()).or_default() += 1;
            return;
        }
        for (lost, count) in dropped.drain() {
            let note =
                format!("amphi-shim: dropped {count} lines of output the gateway could not take in time");
            let note = ndjson(&json!({"type": "log", "invocation": lost, "stream": "stderr", "line": note}));
            self.queued_log_bytes.fetch_add(note.len(), Ordering::Relaxed);
            let _ = sender.send(Queued { line: note, log: true });
        }
        self.queued_log_bytes.fetch_add(line.len(), Ordering::Relaxed);
        let _ = sender.send(Queued { line, log: true });
    }

    /// A line of the long-running function's output: a line naming a call in flight
    /// (`amphi-invocation=ID text`) goes to that call, prefix removed; any other line to the call
    /// in flight if exactly one is.
    pub fn log(&self, stream: &str, line: &str) {
        let mut state = self.state();
        let State { sender, in_flight, dropped, .. } = &mut *state;
        let (invocation, line) = match split_attribution(line) {
            Some((id, text)) if in_flight.iter().any(|call| call == id) => (id, text),
            _ => match in_flight.as_slice() {
                [only] => (only.as_str(), line),
                _ => ("", line),
            },
        };
        self.send_log((sender, dropped), invocation, stream, line);
    }

    /// A line written by the process serving `invocation` alone (CGI).
    pub fn log_for(&self, invocation: &str, stream: &str, line: &str) {
        let line = match split_attribution(line) {
            Some((id, text)) if id == invocation => text,
            _ => line,
        };
        let mut state = self.state();
        let State { sender, dropped, .. } = &mut *state;
        self.send_log((sender, dropped), invocation, stream, line);
    }

    /// The function answers: calls may come.
    pub fn listening(&self, init: Duration) {
        let state = self.state();
        Self::send(&state, json!({"type": "listening", "init_us": init.as_micros() as u64}));
    }

    /// A call begins.
    pub fn begin(&self, invocation: &str) {
        self.state().in_flight.push(invocation.to_string());
    }

    /// A call ended and all its output has been sent.
    pub fn end(&self, invocation: &str) {
        let mut state = self.state();
        if let Some(at) = state.in_flight.iter().position(|i| i == invocation) {
            state.in_flight.swap_remove(at);
        }
        Self::send(&state, json!({"type": "end", "invocation": invocation}));
    }

    /// The function's process ended with `code`; the shim ends too.
    pub fn exited(&self, code: u8) {
        let oom = code == 137 && killed_for_memory();
        Self::send(&self.state(), json!({"type": "exit", "code": code, "oom": oom}));
        self.exit.send_replace(Some(code));
    }

    /// Resolves with the exit code once the function's process has ended, leaving the gateway a
    /// moment to read the last events.
    pub fn exit_code(&self) -> impl std::future::Future<Output = u8> + 'static {
        let mut exit = self.exit.subscribe();
        async move {
            let code = match exit.wait_for(Option::is_some).await {
                Ok(code) => code.unwrap_or(1),
                Err(_) => 1,
            };
            tokio::time::sleep(Duration::from_millis(100)).await;
            code
        }
    }
}

fn ndjson(event: &serde_json::Value) -> Bytes {
    let mut line = event.to_string().into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

/// Whether the kernel's OOM killer has killed a process of this container: the memory cgroup's
/// `oom_kill` counter, as cgroup v2 (`memory.events`) or v1 (`memory.oom_control`) shows it. The
/// engine's own `OOMKilled` flag only covers the container's first process, which is not the
/// function here.
fn killed_for_memory() -> bool {
    ["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"].iter().any(|file| {
        std::fs::read_to_string(file).is_ok_and(|text| {
            text.lines().any(|line| {
                line.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
        })
    })
}
