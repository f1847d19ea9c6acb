//! The instance pool of one function version.
//!
//! Every call queues as a waiter; `Pool::dispatch` hands free capacity to waiters in arrival
//! order: a slot on a running instance (warm), else a paused instance resumed (unpause), else a
//! new instance while fewer than `max_instances` exist or are starting (cold). So the pool grows to
//! N = ceil(in_flight / concurrency) instances, and callers beyond `max_instances` wait until a
//! slot frees or their queue timeout passes. An instance is handed out only after it is ready.
//! Idle instances above `min_instances` are paused after `pause_after_ms` and removed after
//! `idle_timeout_ms` ([`Pool::tidy`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use amphi_contract::function::{ContainerProtocol, FunctionVersion};
use amphi_contract::{BackendError, ProblemKind, StartKind};
use tokio::sync::{OnceCell, oneshot};

use crate::image;
use crate::instance::{Instance, Launch, Shared, StartError};

/// How often a call past its queue timeout looks whether an instance is still starting for it.
const START_RECHECK: Duration = Duration::from_millis(25);

/// The image label that says how the image speaks the contract when the config does not.
pub const PROTOCOL_LABEL: &str = "amphi.protocol";

/// A pool of instances of one function version.
pub struct Pool {
    /// The version the instances run.
    pub function: Arc<FunctionVersion>,
    shared: Arc<Shared>,
    launch: OnceCell<Launch>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    starting: u32,
    waiters: VecDeque<oneshot::Sender<Grant>>,
    retired: bool,
}

struct Slot {
    instance: Arc<Instance>,
    status: Status,
    in_flight: u32,
    idle_since: Instant,
    /// How long the instance took to start, until its first call takes it.
    fresh: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Running,
    Pausing,
    Paused,
    Unpausing,
}

enum Grant {
    Lease(Lease),
    Failed(BackendError),
}

/// What one instance looks like from outside, for the API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceView {
    /// The instance's id.
    pub id: String,
    /// `running`, `paused`, `pausing` or `unpausing`.
    pub state: &'static str,
    /// Calls it is serving.
    pub in_flight: u32,
    /// How long it has been idle, in milliseconds (0 while busy).
    pub idle_ms: u64,
}

/// One call's hold on an instance; released when dropped.
pub struct Lease {
    pool: Arc<Pool>,
    /// The instance to call.
    pub instance: Arc<Instance>,
    /// How the instance was obtained.
    pub start: StartKind,
    /// How long obtaining it took (starting or resuming).
    pub init: Duration,
    healthy: bool,
    armed: bool,
}

impl Lease {
    /// Marks the instance broken: it is removed instead of reused when the lease ends.
    pub fn discard(&mut self) {
        self.healthy = false;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            self.pool.release(&self.instance, self.healthy);
        }
    }
}

impl Pool {
    /// An empty pool for `function`.
    pub fn new(function: Arc<FunctionVersion>, shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Self { function, shared, launch: OnceCell::new(), state: Mutex::default() })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for capacity: at most `queue_timeout` for busy instances to free up, longer while an
    /// instance is starting for the waiting calls, and never past `deadline`. Returns the lease and
    /// the time spent waiting for busy instances (a start is counted as `init`, not as queueing).
    pub async fn acquire(self: &Arc<Self>, deadline: Instant) -> Result<(Lease, Duration), BackendError> {
        let queued_at = Instant::now();
        let (tx, mut rx) = oneshot::channel();
        {
            let mut state = self.state();
            state.waiters.push_back(tx);
            self.dispatch(&mut state);
        }
        let mut limit = (queued_at + self.function.config.container.queue_timeout()).min(deadline);
        loop {
            let error = match tokio::time::timeout_at(limit.into(), &mut rx).await {
                Ok(Ok(Grant::Lease(lease))) => {
                    let waited = queued_at.elapsed().saturating_sub(lease.init);
                    return Ok((lease, waited));
                }
                Ok(Ok(Grant::Failed(error))) => error,
                Ok(Err(_)) => {
                    BackendError::new(ProblemKind::Internal, "the instance pool dropped a waiting call")
                }
                Err(_) if Instant::now() >= deadline => {
                    let timeout = self.function.config.timeout_ms;
                    let detail = if self.state().starting > 0 {
                        format!(
                            "no instance was ready within the timeout of {timeout}ms: a new one is still \
                             starting (does the function answer on $PORT={}?)",
                            self.function.config.container.port
                        )
                    } else {
                        format!("no instance became free within the timeout of {timeout}ms")
                    };
                    BackendError::new(ProblemKind::DeadlineExceeded, detail)
                }
                Err(_) if self.state().starting > 0 => {
                    // Not beyond max_instances while an instance is on its way to the waiting
                    // calls: look again shortly, and give up once none is starting.
                    limit = (Instant::now() + START_RECHECK).min(deadline);
                    continue;
                }
                Err(_) => BackendError::new(
                    ProblemKind::OverCapacity,
                    format!(
                        "all {} instances of `{}` are busy; waited {}ms in the queue",
                        self.function.config.container.max_instances,
                        self.function.name,
                        queued_at.elapsed().as_millis()
                    ),
                ),
            };
            return Err(error);
        }
    }

    /// Hands free capacity to waiters, oldest first; starts instances when there is none.
    fn dispatch(self: &Arc<Self>, state: &mut State) {
        let config = &self.function.config.container;
        loop {
            state.waiters.retain(|w| !w.is_closed());
            if state.waiters.is_empty() {
                return;
            }
            let running = state.slots.iter().position(|s| {
                s.status == Status::Running && s.in_flight < config.concurrency && !s.instance.is_gone()
            });
            if let Some(at) = running {
                let Some(waiter) = state.waiters.pop_front() else { return };
                let slot = &mut state.slots[at];
                slot.in_flight += 1;
                let (start, init) = match slot.fresh.take() {
                    Some(took) => (StartKind::Cold, took),
                    None => (StartKind::Warm, Duration::ZERO),
                };
                let lease = self.lease(slot.instance.clone(), start, init);
                if let Err(Grant::Lease(mut lease)) = waiter.send(Grant::Lease(lease)) {
                    // The waiter gave up a moment ago: undo without re-entering the lock.
                    lease.armed = false;
                    let slot = &mut state.slots[at];
                    slot.in_flight -= 1;
                    slot.fresh = (start == StartKind::Cold).then_some(init);
                }
                continue;
            }
            if let Some(at) = state.slots.iter().position(|s| s.status == Status::Paused) {
                let Some(waiter) = state.waiters.pop_front() else { return };
                let slot = &mut state.slots[at];
                slot.status = Status::Unpausing;
                slot.in_flight += 1;
                tokio::spawn(self.clone().resume(slot.instance.clone(), waiter));
                continue;
            }
            let live = state.slots.len() as u32 + state.starting;
            // N = ceil(waiting / concurrency) instances on their way covers everyone waiting.
            let waiting = state.waiters.len() as u32;
            if live < config.max_instances && state.starting * config.concurrency < waiting {
                state.starting += 1;
                tokio::spawn(self.clone().start_instance(None, true));
                continue;
            }
            return;
        }
    }

    fn lease(self: &Arc<Self>, instance: Arc<Instance>, start: StartKind, init: Duration) -> Lease {
        Lease { pool: self.clone(), instance, start, init, healthy: true, armed: true }
    }

    async fn resume(self: Arc<Self>, instance: Arc<Instance>, waiter: oneshot::Sender<Grant>) {
        let began = Instant::now();
        let resumed = instance.unpause(&self.shared.engine).await;
        let mut state = self.state();
        let Some(at) = state.slots.iter().position(|s| Arc::ptr_eq(&s.instance, &instance)) else { return };
        match resumed {
            Ok(()) => {
                state.slots[at].status = Status::Running;
                let lease = self.lease(instance, StartKind::Unpause, began.elapsed());
                if let Err(Grant::Lease(mut lease)) = waiter.send(Grant::Lease(lease)) {
                    lease.armed = false;
                    state.slots[at].in_flight -= 1;
                    state.slots[at].idle_since = Instant::now();
                }
            }
            Err(e) => {
                let slot = state.slots.remove(at);
                let mut error =
                    unavailable_or_failed(&e.to_string(), matches!(e, crate::EngineError::Unavailable(_)));
                (error.start, error.init) = (StartKind::Unpause, Some(began.elapsed()));
                let _ = waiter.send(Grant::Failed(error));
                tokio::spawn(self.clone().discard(slot.instance));
            }
        }
        self.dispatch(&mut state);
    }

    /// Starts one instance; `done` hears whether it became ready. Counted in `starting` already.
    /// An instance started for waiting calls is a cold start for the first of them; a reserved
    /// one, started ahead of calls, is warm when a call takes it.
    async fn start_instance(
        self: Arc<Self>,
        done: Option<oneshot::Sender<Result<(), BackendError>>>,
        for_waiters: bool,
    ) {
        let began = Instant::now();
        let started = match self.launch().await {
            Ok(launch) => Instance::start(&self.shared, &self.function, launch).await,
            Err(e) => Err(e),
        };
        let mut state = self.state();
        state.starting -= 1;
        let result = match started {
            Ok(instance) => {
                state.slots.push(Slot {
                    instance,
                    status: Status::Running,
                    in_flight: 0,
                    idle_since: Instant::now(),
                    fresh: for_waiters.then(|| began.elapsed()),
                });
                Ok(())
            }
            Err(e) => {
                let mut error = match e {
                    StartError::Unavailable(why) => unavailable_or_failed(&why, true),
                    StartError::Failed(why) => unavailable_or_failed(
                        &format!("a new instance of `{}` did not start: {why}", self.function.name),
                        false,
                    ),
                };
                // The waiter that hears of it paid for the attempt: a cold start, failed.
                (error.start, error.init) = (StartKind::Cold, Some(began.elapsed()));
                // The oldest waiter hears why; the others keep waiting for another try.
                state.waiters.retain(|w| !w.is_closed());
                if let Some(waiter) = state.waiters.pop_front() {
                    let _ = waiter.send(Grant::Failed(error.clone()));
                }
                Err(error)
            }
        };
        if state.retired && state.waiters.is_empty() {
            self.drain_idle(&mut state);
        }
        self.dispatch(&mut state);
        drop(state);
        if let Some(done) = done {
            let _ = done.send(result);
        }
    }

    /// What instances run: the configured command and protocol, else the image's entrypoint and
    /// command and its `amphi.protocol` label.
    async fn launch(&self) -> Result<&Launch, StartError> {
        self.launch
            .get_or_try_init(|| async {
                let config = &self.function.config.container;
                let image = image::inspect(&self.shared.engine, &self.function.digest).await?;
                let command = config.command.clone().unwrap_or(image.command);
                if command.is_empty() {
                    return Err(StartError::Failed(
                        "the image has no entrypoint or command; set container.command".into(),
                    ));
                }
                let labelled = image.labels.get(PROTOCOL_LABEL).map(String::as_str);
                let protocol = match (config.protocol, labelled) {
                    (Some(protocol), _) => protocol,
                    (None, Some(label)) => ContainerProtocol::parse(label).ok_or_else(|| {
                        StartError::Failed(format!(
                            "the image's {PROTOCOL_LABEL} label is `{label}`, not http or cgi"
                        ))
                    })?,
                    (None, None) => ContainerProtocol::Http,
                };
                let user = match &config.user {
                    Some(user) => user.clone(),
                    None => default_user(&image.user),
                };
                Ok(Launch { command, protocol, user })
            })
            .await
    }

    fn release(self: &Arc<Self>, instance: &Arc<Instance>, healthy: bool) {
        let mut state = self.state();
        if let Some(at) = state.slots.iter().position(|s| Arc::ptr_eq(&s.instance, instance)) {
            let slot = &mut state.slots[at];
            slot.in_flight = slot.in_flight.saturating_sub(1);
            slot.idle_since = Instant::now();
            let idle = slot.in_flight == 0;
            let retired_and_idle = state.retired && idle && state.waiters.is_empty();
            if !healthy || instance.is_gone() || retired_and_idle {
                let slot = state.slots.remove(at);
                tokio::spawn(self.clone().discard(slot.instance));
            }
        }
        self.dispatch(&mut state);
    }

    async fn discard(self: Arc<Self>, instance: Arc<Instance>) {
        instance.remove(&self.shared).await;
    }

    /// Starts instances until `min_instances` exist; resolves when they are ready or failed.
    pub async fn warm(self: &Arc<Self>) -> Result<(), BackendError> {
        let wanted = self.function.config.container.min_instances;
        let mut pending = Vec::new();
        {
            let mut state = self.state();
            if state.retired {
                return Ok(());
            }
            while (state.slots.len() as u32 + state.starting) < wanted {
                state.starting += 1;
                let (done, heard) = oneshot::channel();
                tokio::spawn(self.clone().start_instance(Some(done), false));
                pending.push(heard);
            }
        }
        for heard in pending {
            if let Ok(Err(error)) = heard.await {
                return Err(error);
            }
        }
        Ok(())
    }

    /// Pauses and removes idle instances above `min_instances`, replaces missing reserved ones,
    /// and empties a retired pool. Returns whether the pool is finished (retired and empty).
    pub fn tidy(self: &Arc<Self>) -> bool {
        let config = &self.function.config.container;
        let mut state = self.state();
        let now = Instant::now();
        if state.retired {
            if state.waiters.is_empty() {
                self.drain_idle(&mut state);
            }
            return state.slots.is_empty() && state.starting == 0 && state.waiters.is_empty();
        }
        let gone: Vec<usize> =
            (0..state.slots.len()).filter(|&i| state.slots[i].instance.is_gone()).collect();
        for at in gone.into_iter().rev() {
            let slot = state.slots.remove(at);
            tokio::spawn(self.clone().discard(slot.instance));
        }
        let reserved = config.min_instances as usize;
        let mut index = 0;
        while index < state.slots.len() {
            let keep = index < reserved;
            let slot = &mut state.slots[index];
            let idle = now.saturating_duration_since(slot.idle_since);
            let removable = slot.in_flight == 0 && !keep;
            if removable && slot.status == Status::Paused && idle >= config.idle_timeout() {
                let slot = state.slots.remove(index);
                tokio::spawn(self.clone().discard(slot.instance));
                continue;
            }
            if removable && slot.status == Status::Running && idle >= config.pause_after() {
                if config.idle_timeout() <= config.pause_after() {
                    let slot = state.slots.remove(index);
                    tokio::spawn(self.clone().discard(slot.instance));
                    continue;
                }
                slot.status = Status::Pausing;
                tokio::spawn(self.clone().pause(slot.instance.clone()));
            }
            index += 1;
        }
        let live = state.slots.len() as u32 + state.starting;
        if live < config.min_instances {
            for _ in live..config.min_instances {
                state.starting += 1;
                tokio::spawn(self.clone().start_instance(None, false));
            }
        }
        false
    }

    async fn pause(self: Arc<Self>, instance: Arc<Instance>) {
        let paused = instance.pause(&self.shared.engine).await;
        let mut state = self.state();
        let Some(at) = state.slots.iter().position(|s| Arc::ptr_eq(&s.instance, &instance)) else { return };
        match paused {
            Ok(()) => state.slots[at].status = Status::Paused,
            Err(e) => {
                tracing::warn!(instance = %instance.id, error = %e, "cannot pause an idle instance; removing it");
                state.slots.remove(at);
                tokio::spawn(self.clone().discard(instance));
            }
        }
        self.dispatch(&mut state);
    }

    /// Stops taking new instances; idle ones go now, busy ones when their calls end.
    pub fn retire(self: &Arc<Self>) {
        let mut state = self.state();
        state.retired = true;
        if state.waiters.is_empty() {
            self.drain_idle(&mut state);
        }
    }

    fn drain_idle(self: &Arc<Self>, state: &mut State) {
        let mut index = 0;
        while index < state.slots.len() {
            if state.slots[index].in_flight == 0 && state.slots[index].status != Status::Unpausing {
                let slot = state.slots.remove(index);
                tokio::spawn(self.clone().discard(slot.instance));
            } else {
                index += 1;
            }
        }
    }

    /// The instances, for the API.
    pub fn view(&self) -> Vec<InstanceView> {
        let state = self.state();
        state
            .slots
            .iter()
            .map(|s| InstanceView {
                id: s.instance.id.clone(),
                state: match s.status {
                    Status::Running => "running",
                    Status::Pausing => "pausing",
                    Status::Paused => "paused",
                    Status::Unpausing => "unpausing",
                },
                in_flight: s.in_flight,
                idle_ms: if s.in_flight == 0 { s.idle_since.elapsed().as_millis() as u64 } else { 0 },
            })
            .collect()
    }
}

fn unavailable_or_failed(why: &str, unavailable: bool) -> BackendError {
    if unavailable {
        BackendError::new(ProblemKind::BackendUnavailable, why)
    } else {
        BackendError::new(ProblemKind::FunctionFailed, why)
    }
}

/// The user an instance runs as when the function does not name one: the image's own, unless
/// that is root (named or by default), which becomes nobody. A process that escaped the shim's
/// supervision as root would own whatever the image left writable.
fn default_user(image_user: &str) -> String {
    let name = image_user.split(':').next().unwrap_or("");
    if name.is_empty() || name == "root" || name == "0" { NOBODY.to_string() } else { image_user.to_string() }
}

/// The unprivileged user (and group) of most distributions.
const NOBODY: &str = "65534:65534";

#[cfg(test)]
mod user_tests {
    use super::default_user;

    #[test]
    fn root_images_run_as_nobody_others_as_themselves() {
        for root in ["", "root", "0", "0:0", "root:root"] {
            assert_eq!(default_user(root), "65534:65534", "{root}");
        }
        assert_eq!(default_user("app"), "app");
        assert_eq!(default_user("1000:1000"), "1000:1000");
    }
}
