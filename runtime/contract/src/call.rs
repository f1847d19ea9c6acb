//! One call as a backend sees it, and how the backend says what happened to it.
//!
//! The gateway owns a call's invocation record and writes it in one place. A backend never
//! writes a record: it gets a [`Call`] (who is called, until when, where the output goes), tells
//! the call how its instance was obtained as soon as it knows ([`Call::started`],
//! [`Call::queued`]), and answers with a response and a [`Completion`] that resolves with the
//! call's [`Ending`] once the function is done with it (for a streamed body, after the last byte).
//! Facts reported on the call survive the call being abandoned half-way, so even the record of a
//! call whose client went away says how its instance started.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::backend::BackendError;
use crate::capture::LogCapture;
use crate::function::FunctionVersion;
use crate::record::{Outcome, StartKind};

/// One call, as handed to a backend. Cheap to clone: clones share the log capture and the facts.
#[derive(Clone)]
pub struct Call {
    /// The invocation id (UUIDv7).
    pub id: Arc<str>,
    /// The function version being run.
    pub function: Arc<FunctionVersion>,
    /// When the call must be over.
    pub deadline: Instant,
    /// The function's stdout and stderr, line by line.
    pub log: LogCapture,
    facts: Arc<Mutex<StartFacts>>,
}

/// How the instance that serves a call was obtained, as its backend reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartFacts {
    /// Warm unless the backend said otherwise.
    pub start: StartKind,
    /// Time spent making the instance ready, if the backend measured it.
    pub init: Option<Duration>,
    /// Time spent waiting inside the backend for a free instance.
    pub queued: Duration,
}

impl Default for StartFacts {
    fn default() -> Self {
        Self { start: StartKind::Warm, init: None, queued: Duration::ZERO }
    }
}

impl Call {
    /// A call of `function` whose output goes to `log`, due by `deadline`.
    pub fn new(id: Arc<str>, function: Arc<FunctionVersion>, deadline: Instant, log: LogCapture) -> Self {
        Self { id, function, deadline, log, facts: Arc::default() }
    }

    /// Reports how the call's instance was obtained and how long making it ready took.
    pub fn started(&self, start: StartKind, init: Option<Duration>) {
        let mut facts = self.facts.lock().unwrap_or_else(PoisonError::into_inner);
        facts.start = start;
        facts.init = init;
    }

    /// Reports how long the call waited inside the backend for a free instance.
    pub fn queued(&self, queued: Duration) {
        self.facts.lock().unwrap_or_else(PoisonError::into_inner).queued = queued;
    }

    /// What the backend has reported so far.
    pub fn facts(&self) -> StartFacts {
        *self.facts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How a call that produced a response ended, as its backend saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// Success, or what kind of failure cut the response short.
    pub outcome: Outcome,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

impl Ending {
    /// The function ran to its end and its response was sent whole.
    pub fn success() -> Self {
        Self { outcome: Outcome::Success, error: None }
    }

    /// The response started, then `error` cut it short.
    pub fn failed(error: &BackendError) -> Self {
        Self { outcome: error.outcome(), error: Some(error.detail.clone()) }
    }

    /// The response started, then broke off for `why`, counted as `outcome`.
    pub fn cut(outcome: Outcome, why: impl Into<String>) -> Self {
        Self { outcome, error: Some(why.into()) }
    }
}

/// Resolves with the call's [`Ending`] once the function is done with the call; `None` when the
/// backend gave the call up without saying (its response body was dropped unfinished).
pub struct Completion(CompletionState);

enum CompletionState {
    Over(Ending),
    Waiting(tokio::sync::oneshot::Receiver<Ending>),
}

/// The backend's side of a [`Completion`].
pub struct Completer(tokio::sync::oneshot::Sender<Ending>);

impl Completion {
    /// A call that is already over (its whole response is in hand).
    pub fn over(ending: Ending) -> Self {
        Self(CompletionState::Over(ending))
    }

    /// A completion the backend resolves later with the returned [`Completer`].
    pub fn pending() -> (Completer, Self) {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        (Completer(sender), Self(CompletionState::Waiting(receiver)))
    }

    /// The ending, if the call is over already.
    pub fn now(&mut self) -> Option<Ending> {
        match &mut self.0 {
            CompletionState::Over(ending) => Some(ending.clone()),
            CompletionState::Waiting(receiver) => receiver.try_recv().ok(),
        }
    }

    /// Waits for the ending.
    pub async fn wait(self) -> Option<Ending> {
        match self.0 {
            CompletionState::Over(ending) => Some(ending),
            CompletionState::Waiting(receiver) => receiver.await.ok(),
        }
    }
}

impl Completer {
    /// Says how the call ended.
    pub fn complete(self, ending: Ending) {
        let _ = self.0.send(ending);
    }
}
