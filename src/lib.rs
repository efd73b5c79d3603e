//! stockd: a stock server for flash-sale checkout.
//!
//! Module map, from the inside out:
//! - [`domain`]: pure types and rules (SKU, limits, stock status, the reservation state machine).
//! - [`wal`]: the append-only log: record format, framing, segments, the group-commit writer, replay,
//!   and the lock that keeps one server per data directory.
//! - [`ledger`]: the durable state, applied in log order; every read is served from it.
//! - [`actor`]: one tokio task per product owning its live counts, holds and expiry timers.
//! - [`engine`]: the operations (validation, idempotency, multi-item coordination, durability waits).
//! - [`http`]: the axum front, a thin mapping onto the engine.
//! - [`auth`]: bearer tokens and roles. [`metrics`]: Prometheus metrics.
//! - [`memory`]: state that grows without pauses.
//! - [`server`], [`cli`], [`config`], [`clock`]: process plumbing.

pub mod actor;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod engine;
pub mod http;
pub mod ledger;
pub mod memory;
pub mod metrics;
pub mod server;
pub mod wal;
