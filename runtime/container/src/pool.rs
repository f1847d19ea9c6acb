//! The instance pool of one function version.
//!
//! Every call queues as a waiter; `Pool::dispatch` hands free capacity to waiters in arrival
//! order: a slot on a running instance (warm), else a paused instance resumed (unpause), else a
//! new instance while fewer than `max_instances` exist or are starting (cold). So the pool grows to
//! N = ceil(in_flight / concurrency) instances, and callers beyond `max_instances` wait until a
//! slot frees or their queue timeout passes. An instance is handed out only after it is ready.
//! Idle instances above `min_instances` are paused after `pause_after_ms` and removed after
//! `idle_timeout_ms` ([`Pool::sweep`]).
//!
//! The pool drives its instances through a [`Driver`] (containers, in a server; a fake in the
//! tests below) and keeps time with tokio's clock, so its logic is tested without Docker and
//! without waiting.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use amphi_contract::function::FunctionVersion;
use amphi_contract::{BackendError, Call, InstanceView, ProblemKind, StartKind};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::instance::StartError;

/// How often a call past its queue timeout looks whether an instance is still starting for it.
const START_RECHECK: Duration = Duration::from_millis(25);

/// What the pool asks of the instances it manages, all for one function version.
pub trait Driver: Send + Sync + 'static {
    /// One instance.
    type Instance: Send + Sync + 'static;

    /// Starts an instance and waits until it is ready for calls.
    fn start(&self) -> impl Future<Output = Result<Arc<Self::Instance>, StartError>> + Send;

    /// Pauses an idle instance.
    fn pause(&self, instance: &Self::Instance) -> impl Future<Output = Result<(), StartError>> + Send;

    /// Resumes a paused instance.
    fn unpause(&self, instance: &Self::Instance) -> impl Future<Output = Result<(), StartError>> + Send;

    /// Removes an instance for good.
    fn remove(&self, instance: &Self::Instance) -> impl Future<Output = ()> + Send;

    /// Whether the instance is known to have stopped on its own (crashed, killed).
    fn is_gone(&self, instance: &Self::Instance) -> bool;

    /// The instance's id, for the API.
    fn id(instance: &Self::Instance) -> &str;
}

/// A pool of instances of one function version.
pub struct Pool<D: Driver> {
    /// The version the instances run.
    pub function: Arc<FunctionVersion>,
    driver: Arc<D>,
    state: Mutex<State<D>>,
}

struct State<D: Driver> {
    slots: Vec<Slot<D>>,
    starting: u32,
    waiters: VecDeque<oneshot::Sender<Grant<D>>>,
    retired: bool,
}

struct Slot<D: Driver> {
    instance: Arc<D::Instance>,
    status: Status,
    in_flight: u32,
    idle_since: Instant,
    /// How long the instance took to start, until its first call takes it.
    first_call_init: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Running,
    Pausing,
    Paused,
    Unpausing,
}

enum Grant<D: Driver> {
    Lease(Lease<D>),
    /// No instance for this call: why, and how the attempt it paid for went.
    Failed(BackendError, StartKind, Duration),
}

/// One call's hold on an instance; released when dropped.
pub struct Lease<D: Driver> {
    pool: Arc<Pool<D>>,
    /// The instance to call.
    pub instance: Arc<D::Instance>,
    /// How the instance was obtained.
    pub start: StartKind,
    /// How long obtaining it took (starting or resuming).
    pub init: Duration,
    healthy: bool,
    armed: bool,
}

impl<D: Driver> Lease<D> {
    /// Marks the instance broken: it is removed instead of reused when the lease ends.
    pub fn discard(&mut self) {
        self.healthy = false;
    }
}

impl<D: Driver> Drop for Lease<D> {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            self.pool.release(&self.instance, self.healthy);
        }
    }
}

impl<D: Driver> Pool<D> {
    /// An empty pool for `function`, whose instances `driver` runs.
    pub fn new(function: Arc<FunctionVersion>, driver: Arc<D>) -> Arc<Self> {
        let state = State { slots: Vec::new(), starting: 0, waiters: VecDeque::new(), retired: false };
        Arc::new(Self { function, driver, state: Mutex::new(state) })
    }

    fn state(&self) -> MutexGuard<'_, State<D>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for capacity for `call`: at most `queue_timeout` for busy instances to free up,
    /// longer while an instance is starting for the waiting calls, and never past the call's
    /// deadline. Reports on the call how its instance was obtained and the time spent waiting for
    /// busy instances (a start is counted as init, not as queueing).
    pub async fn acquire(self: &Arc<Self>, call: &Call) -> Result<Lease<D>, BackendError> {
        let deadline = Instant::from_std(call.deadline);
        let queued_at = Instant::now();
        let (tx, mut rx) = oneshot::channel();
        {
            let mut state = self.state();
            state.waiters.push_back(tx);
            self.dispatch(&mut state);
        }
        let mut limit = (queued_at + self.function.config.container.queue_timeout()).min(deadline);
        loop {
            let error = match tokio::time::timeout_at(limit, &mut rx).await {
                Ok(Ok(Grant::Lease(lease))) => {
                    call.started(lease.start, (lease.start != StartKind::Warm).then_some(lease.init));
                    call.queued(queued_at.elapsed().saturating_sub(lease.init));
                    return Ok(lease);
                }
                Ok(Ok(Grant::Failed(error, start, init))) => {
                    call.started(start, Some(init));
                    error
                }
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
    fn dispatch(self: &Arc<Self>, state: &mut State<D>) {
        let config = &self.function.config.container;
        loop {
            state.waiters.retain(|w| !w.is_closed());
            if state.waiters.is_empty() {
                return;
            }
            let running = state.slots.iter().position(|s| {
                s.status == Status::Running
                    && s.in_flight < config.instance_concurrency
                    && !self.driver.is_gone(&s.instance)
            });
            if let Some(at) = running {
                let Some(waiter) = state.waiters.pop_front() else { return };
                let slot = &mut state.slots[at];
                slot.in_flight += 1;
                let (start, init) = match slot.first_call_init.take() {
                    Some(took) => (StartKind::Cold, took),
                    None => (StartKind::Warm, Duration::ZERO),
                };
                let lease = self.lease(slot.instance.clone(), start, init);
                if let Err(Grant::Lease(mut lease)) = waiter.send(Grant::Lease(lease)) {
                    // The waiter gave up a moment ago: undo without re-entering the lock.
                    lease.armed = false;
                    let slot = &mut state.slots[at];
                    slot.in_flight -= 1;
                    slot.first_call_init = (start == StartKind::Cold).then_some(init);
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
            if live < config.max_instances && state.starting * config.instance_concurrency < waiting {
                state.starting += 1;
                tokio::spawn(self.clone().start_instance(None, true));
                continue;
            }
            return;
        }
    }

    fn lease(self: &Arc<Self>, instance: Arc<D::Instance>, start: StartKind, init: Duration) -> Lease<D> {
        Lease { pool: self.clone(), instance, start, init, healthy: true, armed: true }
    }

    async fn resume(self: Arc<Self>, instance: Arc<D::Instance>, waiter: oneshot::Sender<Grant<D>>) {
        let began = Instant::now();
        let resumed = self.driver.unpause(&instance).await;
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
                let error = unavailable_or_failed(&e.to_string(), matches!(e, StartError::Unavailable(_)));
                let _ = waiter.send(Grant::Failed(error, StartKind::Unpause, began.elapsed()));
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
        let started = self.driver.start().await;
        let mut state = self.state();
        state.starting -= 1;
        let result = match started {
            Ok(instance) => {
                state.slots.push(Slot {
                    instance,
                    status: Status::Running,
                    in_flight: 0,
                    idle_since: Instant::now(),
                    first_call_init: for_waiters.then(|| began.elapsed()),
                });
                Ok(())
            }
            Err(e) => {
                let error = match e {
                    StartError::Unavailable(why) => unavailable_or_failed(&why, true),
                    StartError::Failed(why) => unavailable_or_failed(
                        &format!("a new instance of `{}` did not start: {why}", self.function.name),
                        false,
                    ),
                };
                // The oldest waiter hears why, and paid for the attempt: a cold start, failed. The
                // others keep waiting for another try.
                state.waiters.retain(|w| !w.is_closed());
                if let Some(waiter) = state.waiters.pop_front() {
                    let _ = waiter.send(Grant::Failed(error.clone(), StartKind::Cold, began.elapsed()));
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

    fn release(self: &Arc<Self>, instance: &Arc<D::Instance>, healthy: bool) {
        let mut state = self.state();
        if let Some(at) = state.slots.iter().position(|s| Arc::ptr_eq(&s.instance, instance)) {
            let slot = &mut state.slots[at];
            slot.in_flight = slot.in_flight.saturating_sub(1);
            slot.idle_since = Instant::now();
            let idle = slot.in_flight == 0;
            let retired_and_idle = state.retired && idle && state.waiters.is_empty();
            if !healthy || self.driver.is_gone(instance) || retired_and_idle {
                let slot = state.slots.remove(at);
                tokio::spawn(self.clone().discard(slot.instance));
            }
        }
        self.dispatch(&mut state);
    }

    async fn discard(self: Arc<Self>, instance: Arc<D::Instance>) {
        self.driver.remove(&instance).await;
    }

    /// Starts instances until `min_instances` exist; resolves when they are ready or failed.
    pub async fn start_reserved(self: &Arc<Self>) -> Result<(), BackendError> {
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
    pub fn sweep(self: &Arc<Self>) -> bool {
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
            (0..state.slots.len()).filter(|&i| self.driver.is_gone(&state.slots[i].instance)).collect();
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

    async fn pause(self: Arc<Self>, instance: Arc<D::Instance>) {
        let paused = self.driver.pause(&instance).await;
        let mut state = self.state();
        let Some(at) = state.slots.iter().position(|s| Arc::ptr_eq(&s.instance, &instance)) else { return };
        match paused {
            Ok(()) => state.slots[at].status = Status::Paused,
            Err(e) => {
                tracing::warn!(instance = D::id(&instance), error = %e, "cannot pause an idle instance; removing it");
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

    fn drain_idle(self: &Arc<Self>, state: &mut State<D>) {
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
                id: D::id(&s.instance).to_string(),
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

#[cfg(test)]
mod tests {
    //! The pool against a fake driver, on tokio's paused clock: deterministic, no Docker, no
    //! sleeping (the clock jumps to the next timer whenever every task waits).

    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use amphi_contract::function::{ArtifactKind, ContainerConfig, FunctionConfig};
    use amphi_contract::record::{InvocationRecord, LogLine};
    use amphi_contract::{LogCapture, TelemetrySink};

    use super::*;

    /// Instances that start after `start_time`, fail to start while `failing` is set, and can be
    /// marked crashed; everything done to them is written down.
    #[derive(Default)]
    struct FakeDriver {
        start_time: Duration,
        failing: AtomicBool,
        started: AtomicU32,
        events: Mutex<Vec<String>>,
    }

    struct FakeInstance {
        id: String,
        crashed: AtomicBool,
    }

    impl FakeDriver {
        fn note(&self, event: String) {
            self.events.lock().expect("lock").push(event);
        }

        fn events(&self) -> Vec<String> {
            self.events.lock().expect("lock").clone()
        }
    }

    impl Driver for FakeDriver {
        type Instance = FakeInstance;

        async fn start(&self) -> Result<Arc<FakeInstance>, StartError> {
            tokio::time::sleep(self.start_time).await;
            if self.failing.load(Ordering::Relaxed) {
                return Err(StartError::Failed("the function exited with status 1".into()));
            }
            let id = format!("i{}", self.started.fetch_add(1, Ordering::Relaxed) + 1);
            self.note(format!("start {id}"));
            Ok(Arc::new(FakeInstance { id, crashed: AtomicBool::new(false) }))
        }

        async fn pause(&self, instance: &FakeInstance) -> Result<(), StartError> {
            self.note(format!("pause {}", instance.id));
            Ok(())
        }

        async fn unpause(&self, instance: &FakeInstance) -> Result<(), StartError> {
            self.note(format!("unpause {}", instance.id));
            Ok(())
        }

        async fn remove(&self, instance: &FakeInstance) {
            self.note(format!("remove {}", instance.id));
        }

        fn is_gone(&self, instance: &FakeInstance) -> bool {
            instance.crashed.load(Ordering::Relaxed)
        }

        fn id(instance: &FakeInstance) -> &str {
            &instance.id
        }
    }

    struct Nowhere;

    impl TelemetrySink for Nowhere {
        fn log_line(&self, _: LogLine, _: usize) -> bool {
            true
        }
        fn invocation(&self, _: InvocationRecord) {}
    }

    fn pool(container: ContainerConfig, driver: FakeDriver) -> (Arc<Pool<FakeDriver>>, Arc<FakeDriver>) {
        let function = Arc::new(FunctionVersion {
            name: "f".into(),
            version: 1,
            digest: "sha256:00".into(),
            kind: ArtifactKind::ContainerImage,
            config: FunctionConfig { container, ..Default::default() },
            created_at_ms: 0,
            init: None,
        });
        let driver = Arc::new(driver);
        (Pool::new(function, driver.clone()), driver)
    }

    fn call(pool: &Pool<FakeDriver>) -> Call {
        let function = pool.function.clone();
        let log = LogCapture::new(Arc::new(Nowhere), "f".into(), "id".into(), 1024);
        let deadline = std::time::Instant::now() + function.config.timeout();
        Call::new("id".into(), function, deadline, log)
    }

    /// Lets every spawned task run until all of them wait (on the paused clock, a timer or a lock).
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    fn one_at_a_time() -> ContainerConfig {
        ContainerConfig { max_instances: 1, instance_concurrency: 1, ..Default::default() }
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_calls_are_served_in_arrival_order() {
        let (pool, driver) = pool(one_at_a_time(), FakeDriver::default());
        let first = pool.acquire(&call(&pool)).await.expect("a lease");
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut waiting = Vec::new();
        for n in 1..=3 {
            let (pool, served) = (pool.clone(), served.clone());
            waiting.push(tokio::spawn(async move {
                let lease = pool.acquire(&call(&pool)).await.expect("a lease");
                served.lock().expect("lock").push(n);
                drop(lease);
            }));
            settle().await;
        }
        assert!(served.lock().expect("lock").is_empty(), "the only instance is busy");
        drop(first);
        for task in waiting {
            task.await.expect("task");
        }
        assert_eq!(*served.lock().expect("lock"), [1, 2, 3]);
        assert_eq!(driver.events(), ["start i1"], "one instance served everyone");
    }

    #[tokio::test(start_paused = true)]
    async fn the_pool_grows_to_max_instances_and_queues_beyond() {
        let config = ContainerConfig { max_instances: 3, instance_concurrency: 1, ..Default::default() };
        let driver = FakeDriver { start_time: Duration::from_millis(300), ..Default::default() };
        let (pool, driver) = pool(config, driver);
        let calls: Vec<Call> = (0..5).map(|_| call(&pool)).collect();
        let acquiring: Vec<_> = calls
            .iter()
            .map(|call| {
                let (pool, call) = (pool.clone(), call.clone());
                tokio::spawn(async move { pool.acquire(&call).await })
            })
            .collect();
        settle().await;
        tokio::time::advance(Duration::from_millis(300)).await;
        settle().await;
        assert_eq!(driver.started.load(Ordering::Relaxed), 3, "N = ceil(5 / 1), capped at 3");
        let mut leases = Vec::new();
        let mut pending = Vec::new();
        for task in acquiring {
            if task.is_finished() {
                leases.push(task.await.expect("task").expect("a lease"));
            } else {
                pending.push(task);
            }
        }
        assert_eq!((leases.len(), pending.len()), (3, 2));
        assert!(leases.iter().all(|l| l.start == StartKind::Cold), "each started for a waiting call");
        leases.pop();
        let next = pending.remove(0).await.expect("task").expect("a lease");
        assert_eq!(next.start, StartKind::Warm, "a freed instance is warm");
        assert_eq!(driver.started.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_waits_at_most_its_queue_timeout() {
        let config = ContainerConfig { queue_timeout_ms: 100, ..one_at_a_time() };
        let (pool, _) = pool(config, FakeDriver::default());
        let _busy = pool.acquire(&call(&pool)).await.expect("a lease");
        let began = Instant::now();
        let refused = pool.acquire(&call(&pool)).await.err().expect("refused");
        assert_eq!(refused.kind, ProblemKind::OverCapacity, "{refused}");
        assert_eq!(began.elapsed(), Duration::from_millis(100), "exactly its queue timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_instances_are_paused_resumed_for_a_call_then_removed() {
        let config = ContainerConfig { pause_after_ms: 1_000, idle_timeout_ms: 10_000, ..one_at_a_time() };
        let (pool, driver) = pool(config, FakeDriver::default());
        drop(pool.acquire(&call(&pool)).await.expect("a lease"));
        tokio::time::advance(Duration::from_millis(999)).await;
        pool.sweep();
        settle().await;
        assert_eq!(pool.view()[0].state, "running", "not idle long enough");
        tokio::time::advance(Duration::from_millis(1)).await;
        pool.sweep();
        settle().await;
        assert_eq!(pool.view()[0].state, "paused");

        let resumed = call(&pool);
        drop(pool.acquire(&resumed).await.expect("a lease"));
        assert_eq!(resumed.facts().start, StartKind::Unpause);
        assert_eq!(driver.events(), ["start i1", "pause i1", "unpause i1"]);

        tokio::time::advance(Duration::from_secs(1)).await;
        pool.sweep();
        settle().await;
        tokio::time::advance(Duration::from_secs(10)).await;
        pool.sweep();
        settle().await;
        assert!(pool.view().is_empty(), "removed after its idle timeout");
        assert_eq!(driver.events().last().map(String::as_str), Some("remove i1"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retired_pool_keeps_a_busy_instance_until_its_call_ends() {
        let config = ContainerConfig { max_instances: 2, ..one_at_a_time() };
        let (pool, driver) = pool(config, FakeDriver::default());
        let busy = pool.acquire(&call(&pool)).await.expect("a lease");
        let idle = pool.acquire(&call(&pool)).await.expect("a lease");
        drop(idle);
        pool.retire();
        settle().await;
        assert_eq!(driver.events(), ["start i1", "start i2", "remove i2"], "the idle one goes at once");
        assert!(!pool.sweep(), "not finished while a call runs");
        drop(busy);
        settle().await;
        assert_eq!(driver.events().last().map(String::as_str), Some("remove i1"));
        assert!(pool.sweep(), "finished once empty");
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_that_crashes_while_busy_is_replaced() {
        let (pool, driver) = pool(one_at_a_time(), FakeDriver::default());
        let lease = pool.acquire(&call(&pool)).await.expect("a lease");
        lease.instance.crashed.store(true, Ordering::Relaxed);
        drop(lease);
        settle().await;
        let next = call(&pool);
        let lease = pool.acquire(&next).await.expect("a lease");
        assert_eq!(lease.instance.id, "i2");
        assert_eq!(next.facts().start, StartKind::Cold);
        assert_eq!(driver.events(), ["start i1", "remove i1", "start i2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_start_is_told_to_the_call_it_was_for() {
        let driver = FakeDriver { start_time: Duration::from_millis(50), ..Default::default() };
        driver.failing.store(true, Ordering::Relaxed);
        let (pool, _) = pool(one_at_a_time(), driver);
        let failed = call(&pool);
        let error = pool.acquire(&failed).await.err().expect("no instance");
        assert_eq!(error.kind, ProblemKind::FunctionFailed);
        assert!(error.detail.contains("did not start: the function exited"), "{error}");
        let facts = failed.facts();
        assert_eq!((facts.start, facts.init), (StartKind::Cold, Some(Duration::from_millis(50))));
    }
}
