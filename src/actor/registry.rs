//! SKU → product actor. The only global map besides the log (see DESIGN: partitioning by SKU
//! later means one registry per node).
//!
//! An idle actor may *passivate*: its slot then keeps only its counts and the ids of the holds
//! on it (a few bytes instead of a task, a mailbox and its maps), and the next lookup revives
//! it, as virtual-actor systems do. A passive product that is home to active reservations has
//! an alarm at its earliest expiry (see [`super::alarms`]) that revives it to expire them.
//! Each incarnation of an actor has a number, so a passivating actor only ever replaces its
//! own slot.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use super::Msg;
use crate::domain::Sku;

/// What a passivated product keeps. Everything in it is durable (an actor passivates only
/// once its last change is), so reviving it may read the rest from the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passive {
    pub on_hand: u64,
    pub version: u64,
    /// Boxed: most products hold nothing, and their slots stay small.
    pub held: Option<Box<Held>>,
}

/// The holds on a passive product.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub reserved: u64,
    /// (reservation id, units held here) of every active reservation with an item here.
    pub holds: Box<[(Uuid, u64)]>,
    /// When the earliest reservation homed here expires: the alarm that will revive us.
    pub alarm_at: Option<Instant>,
}

enum Slot {
    Live {
        tx: mpsc::Sender<Msg>,
        incarnation: u64,
    },
    Passive(Passive),
}

/// Starts an actor: (sku, passive state to revive from or None for a new product, incarnation).
pub type Spawn<'a> = &'a dyn Fn(Sku, Option<Passive>, u64) -> mpsc::Sender<Msg>;

#[derive(Default)]
pub struct Registry {
    /// Hashed with foldhash, seeded per process: every request looks its products up here,
    /// and the default SipHash was 3% of a durable reserve's instructions.
    slots: DashMap<Sku, Slot, foldhash::fast::RandomState>,
    incarnations: AtomicU64,
    /// Counted at each transition, so a metrics scrape need not walk every slot.
    live: AtomicUsize,
    passive: AtomicUsize,
}

impl Registry {
    fn next_incarnation(&self) -> u64 {
        self.incarnations.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The mailbox of `sku`'s actor, reviving it if it is passive; None if there is no product.
    pub fn get(&self, sku: &str, spawn: Spawn<'_>) -> Option<mpsc::Sender<Msg>> {
        if let Some(slot) = self.slots.get(sku) {
            if let Slot::Live { tx, .. } = slot.value() {
                return Some(tx.clone());
            }
        }
        // Passive (or gone meanwhile): revive under the entry's lock, so only one actor starts.
        let mut slot = self.slots.get_mut(sku)?;
        let key = slot.key().clone();
        match slot.value() {
            Slot::Live { tx, .. } => Some(tx.clone()),
            Slot::Passive(passive) => {
                let incarnation = self.next_incarnation();
                let tx = spawn(key, Some(passive.clone()), incarnation);
                *slot.value_mut() = Slot::Live {
                    tx: tx.clone(),
                    incarnation,
                };
                self.passive.fetch_sub(1, Ordering::Relaxed);
                self.live.fetch_add(1, Ordering::Relaxed);
                Some(tx)
            }
        }
    }

    /// Hands `msg` to `sku`'s actor without waiting for mailbox space, reviving the product
    /// if it is passive; `None` if there is no product. A live actor gets it through the
    /// registry's own sender, under the entry's read lock: cloning and dropping the sender for
    /// every request were four atomic read-modify-writes (`try_send` never waits or calls back).
    pub fn try_send(
        &self,
        sku: &str,
        msg: Msg,
        spawn: Spawn<'_>,
    ) -> Option<Result<(), mpsc::error::TrySendError<Msg>>> {
        if let Some(slot) = self.slots.get(sku) {
            if let Slot::Live { tx, .. } = slot.value() {
                return Some(tx.try_send(msg));
            }
        }
        Some(self.get(sku, spawn)?.try_send(msg))
    }

    /// The mailbox of `sku`'s actor, starting a new (not yet existing) product's actor if none.
    pub fn get_or_create(&self, sku: &Sku, spawn: Spawn<'_>) -> mpsc::Sender<Msg> {
        if let Some(tx) = self.get(sku.as_str(), spawn) {
            return tx;
        }
        let incarnation = self.next_incarnation();
        let slot = self.slots.entry(sku.clone()).or_insert_with(|| {
            self.live.fetch_add(1, Ordering::Relaxed);
            Slot::Live {
                tx: spawn(sku.clone(), None, incarnation),
                incarnation,
            }
        });
        match slot.value() {
            Slot::Live { tx, .. } => tx.clone(),
            Slot::Passive(_) => {
                drop(slot);
                self.get(sku.as_str(), spawn)
                    .expect("a passive product is revived")
            }
        }
    }

    /// Registers an actor started at boot; returns its incarnation.
    pub fn insert_live(&self, sku: Sku, start: impl FnOnce(u64) -> mpsc::Sender<Msg>) {
        let incarnation = self.next_incarnation();
        let slot = Slot::Live {
            tx: start(incarnation),
            incarnation,
        };
        let previous = self.slots.insert(sku, slot);
        assert!(previous.is_none(), "a product is registered once at boot");
        self.live.fetch_add(1, Ordering::Relaxed);
    }

    /// Registers a product that starts passive (nothing held at boot).
    pub fn insert_passive(&self, sku: Sku, state: Passive) {
        let previous = self.slots.insert(sku, Slot::Passive(state));
        assert!(previous.is_none(), "a product is registered once at boot");
        self.passive.fetch_add(1, Ordering::Relaxed);
    }

    /// Revives `sku` if it is passive with its alarm set for `at` (alarms that are out of date
    /// are ignored: the product was revived since, and set a new one if it needs one).
    pub fn wake(&self, sku: &str, at: Instant, spawn: Spawn<'_>) {
        let due = self.slots.get(sku).is_some_and(|slot| {
            matches!(slot.value(), Slot::Passive(Passive { held: Some(h), .. }) if h.alarm_at == Some(at))
        });
        if due {
            // Revives under the entry's lock, re-checking nothing: a revival meanwhile is
            // harmless (the live actor's own timer expires what is due).
            let _ = self.get(sku, spawn);
        }
    }

    /// Replaces the live slot of this incarnation with its passive state. False if the slot is
    /// not (any longer) this incarnation's.
    pub fn passivate(&self, sku: &str, incarnation: u64, state: Passive) -> bool {
        let Some(mut slot) = self.slots.get_mut(sku) else {
            return false;
        };
        match slot.value() {
            Slot::Live { incarnation: i, .. } if *i == incarnation => {
                *slot.value_mut() = Slot::Passive(state);
                self.live.fetch_sub(1, Ordering::Relaxed);
                self.passive.fetch_add(1, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Forgets the slot of an actor whose product was never created.
    pub fn forget(&self, sku: &str, incarnation: u64) -> bool {
        let removed = self
            .slots
            .remove_if(
                sku,
                |_, slot| matches!(slot, Slot::Live { incarnation: i, .. } if *i == incarnation),
            )
            .is_some();
        if removed {
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// (live actors, passive products).
    pub fn census(&self) -> (usize, usize) {
        (
            self.live.load(Ordering::Relaxed),
            self.passive.load(Ordering::Relaxed),
        )
    }
}
