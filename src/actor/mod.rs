//! Product actors: one tokio task per SKU owns that product's live counts, its holds and their
//! expiry, and serialises every change to them. Nothing here touches the disk: an actor hands
//! its record to the log writer (early lock release) and moves on; the caller waits for the
//! record to be durable before answering the client. Idle actors passivate (see [`registry`])
//! and are revived by the next message for their product, or by an alarm when a reservation
//! homed there is due to expire (see [`alarms`]).

pub mod alarms;
pub mod deadlines;
pub mod homes;
pub mod messages;
pub mod product;
pub mod registry;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::mpsc;

pub use messages::{Answer, HoldOutcome, Msg, OpCtx, Refusal, Reply, TentativeKind};
pub use registry::Registry;

use crate::clock::Clock;
use crate::domain::Sku;
use crate::ledger::Ledger;
use crate::wal::Log;

/// What every actor shares.
pub struct Shared {
    pub log: Log,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub clock: Arc<dyn Clock>,
    pub registry: Registry,
    pub alarms: Arc<alarms::Alarms>,
    /// Durable state: where an actor finds reservations it ended and no longer keeps.
    pub ledger: Arc<RwLock<Ledger>>,
    pub mailbox_capacity: usize,
    /// Requests an actor may park while multi-item operations settle (bounded).
    pub deferred_capacity: usize,
    /// An actor idle this long with nothing held passivates; None: never.
    pub passivate_after: Option<Duration>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.alarms.close();
    }
}

/// The `actor` recorded for the server's own decisions (expiry).
pub const SYSTEM_ACTOR: &str = "stockd";

/// Attempts to deliver one message while the target passivates and revives; more means a
/// broken invariant (an actor revived for a message stays live at least its idle time).
const DELIVERY_ATTEMPTS: usize = 8;

fn spawn_for(
    shared: &Arc<Shared>,
) -> impl Fn(Sku, Option<registry::Passive>, u64) -> mpsc::Sender<Msg> + '_ {
    move |sku, passive, incarnation| {
        let seed = match passive {
            Some(p) => seed_from_passive(shared, &sku, p),
            None => product::Seed::default(),
        };
        product::spawn(sku, seed, shared.clone(), incarnation)
    }
}

/// The state to start a product's actor with, from its passive state (a revival, or the start
/// of the server): counts and holds from there, and the reservations homed here from the
/// ledger (which agrees: everything the actor that passivated did was durable, and only this
/// product's actor ends its homes).
pub fn seed_from_passive(shared: &Shared, sku: &Sku, passive: registry::Passive) -> product::Seed {
    let mut seed = product::Seed {
        exists: true,
        on_hand: passive.on_hand,
        version: passive.version,
        ..product::Seed::default()
    };
    let Some(held) = passive.held else {
        return seed;
    };
    seed.reserved = held.reserved;
    seed.alarm_at = held.alarm_at;
    let ledger = shared.ledger.read();
    for &(id, units) in held.holds.iter() {
        let r = ledger
            .reservation(&id)
            .unwrap_or_else(|| panic!("{sku}: held reservation {id} is not in the ledger"));
        if r.home() != sku {
            seed.holds.insert(id, units);
            continue;
        }
        assert_eq!(
            r.status,
            crate::domain::ReservationStatus::Active,
            "{sku}: reservation {id} homed here ended while the product was passive"
        );
        seed.homes
            .insert(id, product::Home::active(r, sku, shared.clock.as_ref()));
    }
    seed
}

/// The mailbox of `sku`'s actor (reviving a passive one); None if there is no such product.
pub fn mailbox(shared: &Arc<Shared>, sku: &str) -> Option<mpsc::Sender<Msg>> {
    shared.registry.get(sku, &spawn_for(shared))
}

/// Sends to `sku`'s actor at once (see [`Registry::try_send`]); `None` if no such product.
pub fn try_send(
    shared: &Arc<Shared>,
    sku: &str,
    msg: Msg,
) -> Option<Result<(), mpsc::error::TrySendError<Msg>>> {
    shared.registry.try_send(sku, msg, &spawn_for(shared))
}

/// The mailbox of `sku`'s actor, starting one for a product about to be created.
pub fn mailbox_or_create(shared: &Arc<Shared>, sku: &Sku) -> mpsc::Sender<Msg> {
    shared.registry.get_or_create(sku, &spawn_for(shared))
}

/// Delivers a message that must arrive (commit, abort, outcome), waiting for mailbox space and
/// following the product to its current incarnation.
pub async fn deliver(shared: &Arc<Shared>, sku: &Sku, mut msg: Msg) {
    for _ in 0..DELIVERY_ATTEMPTS {
        let Some(tx) = mailbox(shared, sku.as_str()) else {
            panic!("{sku}: a protocol message for a product that does not exist");
        };
        match tx.send(msg).await {
            Ok(()) => return,
            Err(mpsc::error::SendError(back)) => msg = back,
        }
    }
    panic!("{sku}: could not deliver a protocol message in {DELIVERY_ATTEMPTS} attempts");
}
