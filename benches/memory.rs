//! Memory of a large catalog and many holds (not a criterion bench: it prints RSS figures).
//!
//!   cargo bench --bench memory -- [--skus 1000000]
//!
//! Creates N products through the engine (each durably logged), reports resident memory,
//! then holds one unit of each (N active reservations, one hour each) and reports again,
//! with every actor live and once the products passivated (holds and all).

mod common;

use std::time::Instant;

use stockd::config::EngineConfig;
use stockd::engine::requests::{PutProduct, Reserve};
use stockd::engine::Engine;

#[global_allocator]
static ALLOCATOR: stockd::memory::Allocator = stockd::memory::Allocator;

fn rss_mib() -> f64 {
    common::status_mib(None, "VmRSS")
}

/// Runs `n` operations with 1,024 concurrent callers.
async fn fan_out<F, Fut>(n: usize, op: F)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let callers = 1024.min(n.max(1));
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut i = c;
                while i < n {
                    op(i).await;
                    i += callers;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
}

/// Waits (at most 60 s) until no actor is live, then 2 s more for the allocator to give freed
/// pages back, so that the figure is the state's, not what a moment of passivation left.
async fn settle(engine: &Engine) {
    let until = Instant::now() + std::time::Duration::from_secs(60);
    while engine.metrics().live_actors.get() > 0 && Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let live = engine.metrics().live_actors.get();
    if live > 0 {
        println!("note: {live} actors still live after 60 s");
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
}

fn main() {
    stockd::memory::prefer_small_pages(); // as the server does
    let mut skus = 1_000_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--skus" {
            skus = args.next().and_then(|v| v.parse().ok()).expect("--skus N");
        }
    }
    let skus = skus.clamp(1, 5_000_000);
    // The server's own runtime with its default threads: one event loop on this 2-core
    // machine. (Two workers here, as until 2026-11-21, leave the allocator's per-thread heaps
    // more to keep; README, Memory.)
    let (runtime, workers, _) = stockd::server::runtime(0).expect("runtime");
    println!("runtime: {workers} thread(s), as `stockd serve` would have here");
    let dir = tempfile::tempdir().expect("tempdir");
    // Short idle time so that the catalog passivates during the run, as it would in service.
    let config = EngineConfig {
        data_dir: dir.path().join("data"),
        passivate_after_ms: 1_000,
        ..EngineConfig::default()
    };
    runtime.block_on(async {
        let engine = common::open_engine(&config).await;
        let base = rss_mib();
        let started = Instant::now();
        let e = engine.clone();
        fan_out(skus, move |i| {
            let e = e.clone();
            async move {
                let product = PutProduct {
                    on_hand: Some(10),
                    ..PutProduct::default()
                };
                e.put_product("bench", &format!("SKU-{i:07}"), product, None).await.expect("product");
            }
        })
        .await;
        let live = rss_mib();
        settle(&engine).await;
        let catalog = rss_mib();
        println!("{skus} products: RSS {live:.0} MiB with every actor live, {catalog:.0} MiB once passive");
        println!(
            "{skus} products created in {:.1} s: RSS {:.0} MiB ({:.0} MiB above the empty engine's {:.0} MiB; {:.0} bytes per product)",
            started.elapsed().as_secs_f64(),
            catalog,
            catalog - base,
            base,
            (catalog - base) * 1024.0 * 1024.0 / skus as f64
        );
        let started = Instant::now();
        let e = engine.clone();
        fan_out(skus, move |i| {
            let e = e.clone();
            async move {
                let reserve = Reserve::one(&format!("SKU-{i:07}"), 1, 3600);
                e.reserve("bench", reserve).await.expect("reserve");
            }
        })
        .await;
        let elapsed = started.elapsed();
        let live = rss_mib();
        // The products passivate with their holds (each keeps an alarm at its expiry).
        settle(&engine).await;
        let held = rss_mib();
        println!(
            "{skus} active holds added in {:.1} s: RSS {live:.0} MiB with every actor live, then {:.0} MiB once passive ({:.0} MiB more than the catalog; {:.0} bytes per hold)",
            elapsed.as_secs_f64(),
            held,
            held - catalog,
            (held - catalog) * 1024.0 * 1024.0 / skus as f64
        );
    });
}
