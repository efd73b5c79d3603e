//! The steady hot-SKU driver: durable reserves of one product through the engine, no HTTP,
//! from a fixed set of callers, with the rate printed per window (not a criterion bench).
//!
//!   cargo bench --bench hot_driver -- [--reserves 2048000] [--callers 1024] [--rounds 3]
//!
//! Why beside criterion's `durable_reserve_hot_sku`: criterion's warm-up and samples leave the
//! product with millions of holds and report one figure; this runs a fixed count from a fresh
//! engine each round and prints every window, so a stall (a table doubling, a slow fsync) shows
//! where it happened. Every reserve counts only once its record is fdatasynced. Bounded: at
//! most 16,384,000 reserves, 4,096 callers and 9 rounds, and a round stops after 120 s.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stockd::config::EngineConfig;
use stockd::engine::requests::Reserve;

#[global_allocator]
static ALLOCATOR: stockd::memory::Allocator = stockd::memory::Allocator;

const RESERVES_MAX: u64 = 16_384_000;
const CALLERS_MAX: u16 = 4096;
const ROUNDS_MAX: u8 = 9;
const ROUND_SECONDS_MAX: u64 = 120;
const WINDOW_MS: u64 = 500;

/// Reserves of one SKU from a fixed set of callers, from a fresh engine each round.
#[derive(clap::Parser)]
struct Args {
    /// Durable reserves a round.
    #[arg(long, default_value_t = 2_048_000,
          value_parser = clap::value_parser!(u64).range(1..=RESERVES_MAX))]
    reserves: u64,
    /// Concurrent callers (tokio tasks on the server's runtime).
    #[arg(long, default_value_t = 1024,
          value_parser = clap::value_parser!(u16).range(1..=CALLERS_MAX as i64))]
    callers: u16,
    /// Rounds, each on a fresh engine.
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=ROUNDS_MAX as i64))]
    rounds: u8,
    /// Passed by `cargo bench` to every target.
    #[arg(long, hide = true)]
    bench: bool,
}

struct Round {
    reserves: u64,
    elapsed: Duration,
    records_per_fsync: f64,
    windows_per_s: Vec<f64>,
    /// The engine's `/metrics` text at the end of the round.
    metrics: String,
}

fn round(args: &Args) -> Round {
    // The server's own runtime (one event loop on this machine), as `stockd serve` has it.
    let (runtime, _, _) = stockd::server::runtime(0).expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig {
        data_dir: dir.path().join("data"),
        ..EngineConfig::default()
    };
    runtime.block_on(async {
        let engine = common::open_engine(&config).await;
        common::put_products(&engine, &["HOT".to_string()]).await;
        let (fsyncs_before, records_before) = engine.log_counters();

        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let per_caller = args.reserves.div_ceil(args.callers as u64);
        let start = Instant::now();
        let deadline = start + Duration::from_secs(ROUND_SECONDS_MAX);
        let tasks: Vec<_> = (0..args.callers)
            .map(|_| {
                let (engine, done, stop) = (engine.clone(), done.clone(), stop.clone());
                tokio::spawn(async move {
                    for _ in 0..per_caller {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        engine
                            .reserve("bench", Reserve::one("HOT", 1, 3600))
                            .await
                            .expect("reserve");
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();

        // Sampled from a thread of its own: the event loop is the thing being measured.
        let sampler = {
            let (done, stop) = (done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut windows = Vec::new();
                let mut last = 0;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(WINDOW_MS));
                    let now = done.load(Ordering::Relaxed);
                    windows.push((now - last) as f64 * 1000.0 / WINDOW_MS as f64);
                    last = now;
                    if Instant::now() >= deadline {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                windows
            })
        };
        for t in tasks {
            t.await.expect("caller");
        }
        let elapsed = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        let mut windows_per_s = sampler.join().expect("sampler");
        // The last window is cut short by the end of the run.
        windows_per_s.pop();
        let (fsyncs, records) = engine.log_counters();
        let metrics = engine.metrics().encode();
        engine.close().await.expect("close");
        Round {
            reserves: done.load(Ordering::Relaxed),
            elapsed,
            records_per_fsync: (records - records_before) as f64
                / (fsyncs - fsyncs_before).max(1) as f64,
            windows_per_s,
            metrics,
        }
    })
}

/// A histogram of the metrics text as the share of observations in each bucket that has
/// any ("≤64: 12%"), so a round shows how its batches and fsyncs were spread, not a mean.
fn shares(metrics: &str, histogram: &str, scale: f64, unit: &str) -> String {
    let prefix = format!("{histogram}_bucket{{le=\"");
    let cumulative: Vec<(String, f64)> = metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (bound, count) = rest.split_once("\"} ")?;
            let label = match bound.parse::<f64>() {
                Ok(b) => format!("≤{}{unit}", b * scale),
                Err(_) => format!(">{unit}"),
            };
            Some((label, count.trim().parse().ok()?))
        })
        .collect();
    let total = cumulative.last().map_or(0.0, |(_, c)| *c);
    let mut below = 0.0;
    let mut parts = Vec::new();
    for (label, count) in cumulative {
        let share = (count - below) / total.max(1.0) * 100.0;
        below = count;
        if share >= 0.5 {
            parts.push(format!("{label} {share:.0}%"));
        }
    }
    parts.join(", ")
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    stockd::memory::prefer_small_pages();
    println!(
        "hot_driver: {} reserves of one SKU, {} callers, {} round(s)",
        args.reserves, args.callers, args.rounds
    );
    let mut rates = Vec::new();
    for r in 1..=args.rounds {
        let round = round(&args);
        let rate = round.reserves as f64 / round.elapsed.as_secs_f64();
        rates.push(rate);
        let (low, high) = round
            .windows_per_s
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), w| (lo.min(*w), hi.max(*w)));
        let windows = if round.windows_per_s.is_empty() {
            "no full window".to_string()
        } else {
            format!(
                "{WINDOW_MS} ms windows {:.0}k–{:.0}k/s",
                low / 1e3,
                high / 1e3
            )
        };
        println!(
            "round {r}: {} reserves in {:.2} s = {:.0} reserves/s, {:.1} records per fsync, {windows}",
            round.reserves,
            round.elapsed.as_secs_f64(),
            rate,
            round.records_per_fsync,
        );
        println!(
            "  records per fsync: {}",
            shares(&round.metrics, "stockd_log_records_per_fsync", 1.0, "")
        );
        println!(
            "  fsync: {}",
            shares(&round.metrics, "stockd_log_fsync_seconds", 1e3, " ms")
        );
    }
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    println!("mean over {} round(s): {mean:.0} reserves/s", rates.len());
}
