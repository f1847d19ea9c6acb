//! Per-call limits a guest runs under: memory and the deadline.

use std::time::Instant;

use wasmtime::{ResourceLimiter, UpdateDeadline};

/// Most table elements a guest may grow to; tables are small in practice.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// What a store knows about its call's limits, and which one the guest ran into.
pub struct CallLimits {
    memory_bytes: usize,
    deadline: Instant,
    /// The guest asked for more memory than its limit.
    pub memory_exceeded: bool,
    /// The guest was stopped at its deadline.
    pub deadline_exceeded: bool,
}

impl CallLimits {
    /// Limits for one call.
    pub fn new(memory_bytes: u64, deadline: Instant) -> Self {
        Self {
            memory_bytes: usize::try_from(memory_bytes).unwrap_or(usize::MAX),
            deadline,
            memory_exceeded: false,
            deadline_exceeded: false,
        }
    }

    /// Moves the deadline: an instance made ahead of its call gets the call's.
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// Called on every epoch tick while the guest runs: yield to other tasks, or stop the guest
    /// when its deadline has passed.
    pub fn on_epoch(&mut self) -> UpdateDeadline {
        if Instant::now() >= self.deadline {
            self.deadline_exceeded = true;
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Yield(1)
        }
    }
}

impl ResourceLimiter for CallLimits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Refusing (rather than trapping) is what `memory.grow` means: the guest sees -1 and may
        // cope. Most guests abort instead; the flag lets the record name the real cause.
        if desired > self.memory_bytes {
            self.memory_exceeded = true;
            return Ok(false);
        }
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
