//! Product actors: one tokio task per SKU owns that product's live counts, its holds and their
//! expiry, and serialises every change to them. Nothing here touches the disk: an actor hands
//! its record to the log writer (early lock release) and moves on; the caller waits for the
//! record to be durable before answering the client.

pub mod messages;
pub mod product;
pub mod registry;

use std::sync::Arc;

pub use messages::{Answer, HoldOutcome, Msg, OpCtx, Refusal, Reply, TentativeKind};
pub use registry::Registry;

use crate::clock::Clock;
use crate::wal::Log;

/// What every actor shares.
pub struct Shared {
    pub log: Log,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub clock: Arc<dyn Clock>,
    pub registry: Registry,
    /// Requests an actor may park while multi-item operations settle (bounded).
    pub deferred_capacity: usize,
}

/// The `actor` recorded for the server's own decisions (expiry).
pub const SYSTEM_ACTOR: &str = "stockd";
