//! Per-call limits a guest runs under: memory (its own limit, and the server's budget shared by
//! every call) and the deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use wasmtime::{ResourceLimiter, UpdateDeadline};

/// Most table elements a guest may grow to; tables are small in practice.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Linear memory all wasm instances of the server may hold together. Each instance is charged
/// what it actually grows to (not its function's limit, which most calls never reach), and
/// releases it when its store is dropped; a grow past the budget is refused.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self { limit, used: AtomicU64::new(0) }
    }

    /// The budget.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes charged now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn charge(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// What a store knows about its call's limits, and which one the guest ran into.
pub struct CallLimits {
    memory_bytes: usize,
    deadline: Instant,
    budget: Arc<MemoryBudget>,
    /// Bytes of the budget this store holds.
    charged: u64,
    /// The guest asked for more memory than its limit.
    pub memory_exceeded: bool,
    /// The guest asked for memory the server's budget did not have.
    pub budget_exceeded: bool,
    /// The guest was stopped at its deadline.
    pub deadline_exceeded: bool,
    /// The guest has run a whole epoch slice: it moves off the serving thread
    /// ([`crate::offload`]).
    pub long_running: Arc<AtomicBool>,
}

impl CallLimits {
    /// Limits for one call, its memory charged to `budget`.
    pub fn new(memory_bytes: u64, deadline: Instant, budget: Arc<MemoryBudget>) -> Self {
        Self {
            memory_bytes: usize::try_from(memory_bytes).unwrap_or(usize::MAX),
            deadline,
            budget,
            charged: 0,
            memory_exceeded: false,
            budget_exceeded: false,
            deadline_exceeded: false,
            long_running: Arc::default(),
        }
    }

    /// The server's budget this call draws on.
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Moves the deadline: an instance made ahead of its call gets the call's.
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// The deadline now.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Called on every epoch tick while the guest runs: yield to other tasks, or stop the guest
    /// when its deadline has passed.
    pub fn on_epoch(&mut self) -> UpdateDeadline {
        if Instant::now() >= self.deadline {
            self.deadline_exceeded = true;
            UpdateDeadline::Interrupt
        } else {
            self.long_running.store(true, Ordering::Relaxed);
            UpdateDeadline::Yield(1)
        }
    }
}

impl ResourceLimiter for CallLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Refusing (rather than trapping) is what `memory.grow` means: the guest sees -1 and may
        // cope. Most guests abort instead; the flags let the record name the real cause.
        if desired > self.memory_bytes {
            self.memory_exceeded = true;
            return Ok(false);
        }
        // Called for a memory's creation too (from 0), so every byte is charged.
        let more = desired.saturating_sub(current) as u64;
        if !self.budget.charge(more) {
            self.budget_exceeded = true;
            return Ok(false);
        }
        self.charged += more;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl Drop for CallLimits {
    fn drop(&mut self) {
        self.budget.release(self.charged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_are_charged_to_the_budget_and_released_on_drop() {
        let budget = Arc::new(MemoryBudget::new(10 << 20));
        let deadline = Instant::now();
        let mut one = CallLimits::new(64 << 20, deadline, budget.clone());
        let mut two = CallLimits::new(64 << 20, deadline, budget.clone());
        assert!(one.memory_growing(0, 6 << 20, None).expect("grow"));
        assert!(!two.memory_growing(0, 6 << 20, None).expect("grow"), "past the budget");
        assert!(two.budget_exceeded && !two.memory_exceeded);
        assert!(two.memory_growing(0, 4 << 20, None).expect("grow"));
        assert_eq!(budget.used(), 10 << 20);
        drop(one);
        assert_eq!(budget.used(), 4 << 20);
        assert!(!two.memory_growing(4 << 20, 128 << 20, None).expect("grow"), "past its own limit");
        assert!(two.memory_exceeded);
        drop(two);
        assert_eq!(budget.used(), 0);
    }
}
