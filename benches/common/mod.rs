//! Helpers shared by the bench targets (each includes this module; not all use every item).
#![allow(dead_code)]

use std::sync::Arc;

use stockd::clock::SystemClock;
use stockd::config::EngineConfig;
use stockd::engine::requests::{Complete, PutProduct, Reserve};
use stockd::engine::Engine;

/// Product puts in flight at once while an engine is set up.
const SETUP_PUTS_IN_FLIGHT_MAX: usize = 512;

/// Opens an engine on the system clock; a fatal log failure panics (a bench has no supervisor
/// to restart it, and its figures would mean nothing after one).
pub async fn open_engine(config: &EngineConfig) -> Engine {
    let (engine, _) = Engine::open(config, Arc::new(SystemClock), Box::new(|m| panic!("{m}")))
        .await
        .expect("open");
    engine
}

/// Puts every SKU with ample stock, many at a time so that they share fsyncs: one at a time,
/// 10,001 products took minutes on a machine whose fdatasync is ~0.5 ms.
pub async fn put_products(engine: &Engine, skus: &[String]) {
    let mut puts = tokio::task::JoinSet::new();
    for sku in skus {
        if puts.len() >= SETUP_PUTS_IN_FLIGHT_MAX {
            puts.join_next().await.expect("a put").expect("put task");
        }
        let (engine, sku) = (engine.clone(), sku.clone());
        puts.spawn(async move {
            let product = PutProduct {
                on_hand: Some(1_000_000_000_000),
                ..PutProduct::default()
            };
            engine
                .put_product("bench", &sku, product, None)
                .await
                .expect("product");
        });
    }
    while let Some(put) = puts.join_next().await {
        put.expect("put task");
    }
}

/// A memory figure of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...) in MiB; 0 if unreadable.
pub fn status_mib(pid: Option<u32>, field: &str) -> f64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// One checkout: holds 1 unit of `sku` for an hour, then completes the hold (two records).
pub async fn checkout_flow(engine: &Engine, actor: &str, sku: &str) {
    let held = engine
        .reserve(actor, Reserve::one(sku, 1, 3600))
        .await
        .expect("reserve");
    engine
        .complete(actor, held.id, Complete::default())
        .await
        .expect("complete");
}
