//! A function's concurrency limit: one per function name, shared by all its versions.
//!
//! A redeploy or a PATCH changes the limit in place instead of making a new one, so calls still
//! running on the old version count against the new limit: in-flight calls never exceed it by
//! more than the calls that were already running when it was lowered.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots of one function.
pub struct Capacity {
    semaphore: Arc<Semaphore>,
    /// The limit now.
    limit: AtomicUsize,
    /// Slots to take out of circulation as they come back (the limit was lowered while they were
    /// in use).
    debt: Arc<AtomicUsize>,
    /// Slots held now: calls in flight.
    in_use: Arc<AtomicUsize>,
}

/// One slot, held for a call's whole life (its response body included).
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    debt: Arc<AtomicUsize>,
    in_use: Arc<AtomicUsize>,
}

impl Capacity {
    /// `limit` slots.
    pub fn new(limit: u32) -> Self {
        let limit = limit as usize;
        Self {
            semaphore: Arc::new(Semaphore::new(limit)),
            limit: AtomicUsize::new(limit),
            debt: Arc::new(AtomicUsize::new(0)),
            in_use: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Changes the limit to `limit`. Call under the deploy lock (one resize at a time).
    pub fn resize(&self, limit: u32) {
        let new = limit as usize;
        let old = self.limit.swap(new, Ordering::SeqCst);
        if new > old {
            let mut more = new - old;
            // Pay back debt first: those slots were never returned to the semaphore.
            while more > 0 {
                let debt = self.debt.load(Ordering::SeqCst);
                if debt == 0 {
                    break;
                }
                let paid = debt.min(more);
                if self.debt.compare_exchange(debt, debt - paid, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    more -= paid;
                }
            }
            self.semaphore.add_permits(more);
        } else if old > new {
            let fewer = old - new;
            let forgotten = self.semaphore.forget_permits(fewer);
            self.debt.fetch_add(fewer - forgotten, Ordering::SeqCst);
        }
    }

    /// Waits up to `patience` for a slot; `None` if none came free (0 means: only a free one now).
    pub async fn acquire(&self, patience: Duration) -> Option<Slot> {
        let permit = match self.semaphore.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) if patience.is_zero() => return None,
            Err(_) => {
                tokio::time::timeout(patience, self.semaphore.clone().acquire_owned()).await.ok()?.ok()?
            }
        };
        self.in_use.fetch_add(1, Ordering::Relaxed);
        Some(Slot { permit: Some(permit), debt: self.debt.clone(), in_use: self.in_use.clone() })
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// Calls holding a slot now (their responses may still be streaming).
    pub fn in_flight(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else { return };
        self.in_use.fetch_sub(1, Ordering::Relaxed);
        let owed = self.debt.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| d.checked_sub(1)).is_ok();
        if owed {
            permit.forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lowering_the_limit_while_slots_are_held_takes_effect_as_they_return() {
        let capacity = Capacity::new(3);
        let held: Vec<Slot> = futures_slots(&capacity, 3).await;
        capacity.resize(1);
        assert!(capacity.acquire(Duration::ZERO).await.is_none());
        drop(held);
        assert_eq!(capacity.available(), 1, "two of the three returned slots were retired");
        let one = capacity.acquire(Duration::ZERO).await.expect("one slot");
        assert!(capacity.acquire(Duration::ZERO).await.is_none());
        drop(one);

        capacity.resize(4);
        assert_eq!(capacity.available(), 4);
    }

    #[tokio::test]
    async fn raising_the_limit_pays_back_debt_first() {
        let capacity = Capacity::new(2);
        let held = futures_slots(&capacity, 2).await;
        capacity.resize(0);
        capacity.resize(1);
        drop(held);
        assert_eq!(capacity.available(), 1);
    }

    #[tokio::test]
    async fn a_waiting_call_gets_a_slot_that_comes_free_within_its_patience() {
        let capacity = Arc::new(Capacity::new(1));
        let slot = capacity.acquire(Duration::ZERO).await.expect("slot");
        let waiter = {
            let capacity = capacity.clone();
            tokio::spawn(async move { capacity.acquire(Duration::from_secs(5)).await.is_some() })
        };
        tokio::task::yield_now().await;
        drop(slot);
        assert!(waiter.await.expect("join"));
        let _held = capacity.acquire(Duration::ZERO).await.expect("slot");
        assert!(capacity.acquire(Duration::from_millis(20)).await.is_none());
    }

    async fn futures_slots(capacity: &Capacity, n: usize) -> Vec<Slot> {
        let mut slots = Vec::new();
        for _ in 0..n {
            slots.push(capacity.acquire(Duration::ZERO).await.expect("slot"));
        }
        slots
    }
}
