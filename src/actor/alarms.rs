//! Alarms for passive products: when the earliest reservation homed at a passive product is
//! due to expire, the product is revived and its own timer expires it.
//!
//! One task and one heap for every passive product, instead of a sleeping task each: that is
//! what lets a product with holds passivate at all. Entries are never removed early: an alarm
//! that is out of date (the product was revived since, or set a later one) is ignored when it
//! comes due (see [`super::registry::Registry::wake`]). Each passivation adds at most one
//! entry, and an entry lives at most one reservation time-to-live, so the heap stays bounded
//! by the reservations made within that time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Shared;
use crate::domain::Sku;

#[derive(Default)]
pub struct Alarms {
    heap: Mutex<BinaryHeap<Reverse<(Instant, Sku)>>>,
    earlier: Notify,
    closed: AtomicBool,
}

impl Alarms {
    /// Revive `sku` at `at` (if it is still passive with this alarm then).
    pub fn set(&self, at: Instant, sku: Sku) {
        let earliest = {
            let mut heap = self.heap.lock();
            let earliest = heap.peek().is_none_or(|Reverse((first, _))| at < *first);
            heap.push(Reverse((at, sku)));
            earliest
        };
        if earliest {
            self.earlier.notify_one();
        }
    }

    /// Stops the alarm task (the engine is gone).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.earlier.notify_one();
    }

    /// Alarms pending (a metrics gauge: it shows the bound holding).
    pub fn len(&self) -> usize {
        self.heap.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Alarms due at `now`, removed from the heap.
    fn take_due(&self, now: Instant) -> Vec<(Instant, Sku)> {
        let mut heap = self.heap.lock();
        let mut due = Vec::new();
        while heap.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            let Some(Reverse(alarm)) = heap.pop() else {
                break;
            };
            due.push(alarm);
        }
        due
    }

    fn next(&self) -> Option<Instant> {
        self.heap.lock().peek().map(|Reverse((at, _))| *at)
    }
}

/// The alarm task: sleeps until the earliest alarm (or until an earlier one is set), then
/// revives the products whose alarms are due. It does not keep the engine alive: it ends
/// when the engine's shared state is dropped.
pub async fn run(alarms: Arc<Alarms>, shared: Weak<Shared>) {
    loop {
        let earlier = alarms.earlier.notified();
        if alarms.closed.load(Ordering::Acquire) {
            return;
        }
        match alarms.next() {
            None => earlier.await,
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = earlier => continue,
                }
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        for (at, sku) in alarms.take_due(shared.clock.now()) {
            shared
                .registry
                .wake(sku.as_str(), at, &super::spawn_for(&shared));
        }
    }
}
