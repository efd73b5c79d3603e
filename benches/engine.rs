//! Engine benches (criterion), no HTTP. Every measured reserve is answered only after its
//! record is fdatasynced. Prints records per fsync next to criterion's figures. Each durable
//! benchmark starts from a fresh engine (10,001 products of ample stock, nothing held).
//!
//! - durable reserves, one hot SKU and uniform over 10,000 SKUs, 1 / 64 / 1,024 callers
//! - reserve + complete flows, 64 callers
//! - record encode / decode (borrowed, as replay does, and owned)
//! - replay of a 1,000,000-record log (records/s)

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use stockd::config::EngineConfig;
use stockd::domain::{Item, Sku};
use stockd::engine::requests::Reserve;
use stockd::engine::Engine;
use stockd::ledger::Ledger;
use stockd::wal::frame::{encode_record, read_frame, Frame};
use stockd::wal::record::{decode_payload, decode_payload_ref};
use stockd::wal::replay::Mode;
use stockd::wal::segment::{file_name, header};
use stockd::wal::{Event, Record};
use uuid::Uuid;

const UNIFORM_SKUS: usize = 10_000;

/// The server's allocator, so the figures are the server's.
#[global_allocator]
static ALLOCATOR: stockd::memory::Allocator = stockd::memory::Allocator;

fn reserve(sku: String) -> Reserve {
    Reserve::one(&sku, 1, 3600)
}

/// The server's own runtime with its default threads (one event loop on a machine of up to 2
/// cores), so that callers and actors are scheduled as they are in `stockd serve`.
fn runtime() -> tokio::runtime::Runtime {
    let (runtime, workers, _) = stockd::server::runtime(0).expect("runtime");
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| eprintln!("runtime: {workers} thread(s), as `stockd serve` would have here"));
    runtime
}

/// An engine on a fresh directory with `skus` products of ample stock.
fn engine_with(
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    skus: &[String],
) -> Engine {
    let config = EngineConfig {
        data_dir: dir.join("data"),
        ..EngineConfig::default()
    };
    runtime.block_on(async {
        let engine = common::open_engine(&config).await;
        common::put_products(&engine, skus).await;
        engine
    })
}

/// Runs `per_caller` operations on each of `callers` tasks; time per operation as if `iters`.
fn run_callers<F, Fut>(
    runtime: &tokio::runtime::Runtime,
    iters: u64,
    callers: usize,
    op: F,
) -> Duration
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    runtime.block_on(async move {
        let per_caller = (iters as usize).div_ceil(callers);
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let (op, next) = (op.clone(), next.clone());
                tokio::spawn(async move {
                    for _ in 0..per_caller {
                        op(next.fetch_add(1, Ordering::Relaxed)).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        start
            .elapsed()
            .mul_f64(iters as f64 / (per_caller * callers) as f64)
    })
}

/// A runtime and an engine of its own for one benchmark, so that none measures against the
/// holds and history an earlier one left (dropping the runtime stops the old actors).
fn fresh(skus: &[String]) -> (tokio::runtime::Runtime, tempfile::TempDir, Engine) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_with(&rt, dir.path(), skus);
    (rt, dir, engine)
}

fn durable_reserves(c: &mut Criterion) {
    let uniform: Vec<String> = (0..UNIFORM_SKUS).map(|i| format!("SKU-{i:05}")).collect();
    let mut skus = uniform.clone();
    skus.push("HOT".into());
    let uniform = Arc::new(uniform);

    for (group_name, hot) in [
        ("durable_reserve_hot_sku", true),
        ("durable_reserve_uniform_10k_skus", false),
    ] {
        let mut group = c.benchmark_group(group_name);
        group.throughput(Throughput::Elements(1));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(6));
        for callers in [1usize, 64, 1024] {
            let (rt, _dir, engine) = fresh(&skus);
            let (fsyncs_before, records_before) = engine.log_counters();
            group.bench_with_input(
                BenchmarkId::from_parameter(callers),
                &callers,
                |b, &callers| {
                    b.iter_custom(|iters| {
                        let (engine, uniform) = (engine.clone(), uniform.clone());
                        run_callers(&rt, iters, callers, move |n| {
                            let (engine, uniform) = (engine.clone(), uniform.clone());
                            async move {
                                let sku = if hot {
                                    "HOT".to_string()
                                } else {
                                    uniform[(n as usize * 7919) % UNIFORM_SKUS].clone()
                                };
                                engine
                                    .reserve("bench", reserve(sku))
                                    .await
                                    .expect("reserve");
                            }
                        })
                    })
                },
            );
            let (fsyncs, records) = engine.log_counters();
            let ratio = (records - records_before) as f64 / (fsyncs - fsyncs_before).max(1) as f64;
            eprintln!("{group_name}/{callers}: {ratio:.1} records per fsync");
        }
        group.finish();
    }

    let (rt, _dir, engine) = fresh(&skus);
    let mut group = c.benchmark_group("durable_reserve_then_complete");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(6));
    group.bench_function("64_callers_uniform_10k_skus", |b| {
        b.iter_custom(|iters| {
            let (engine, uniform) = (engine.clone(), uniform.clone());
            run_callers(&rt, iters, 64, move |n| {
                let (engine, uniform) = (engine.clone(), uniform.clone());
                async move {
                    let sku = &uniform[(n as usize * 7919) % UNIFORM_SKUS];
                    common::checkout_flow(&engine, "bench", sku).await;
                }
            })
        })
    });
    group.finish();
}

fn sample_record(i: u64, id: Uuid) -> Record {
    Record {
        at_ms: 1_795_000_000_000 + i as i64,
        actor: "checkout".into(),
        op_id: id,
        event: Event::Reserved {
            items: smallvec::smallvec![Item {
                sku: Sku::parse(&format!("SKU-{:05}", i % 1000)).expect("sku"),
                quantity: 1,
            }],
            expires_at_ms: 1_795_000_900_000 + i as i64,
            session_id: Some("session-1234".into()),
            user_id: None,
            reference: None,
            metadata: None,
            fingerprint: 0,
        },
    }
}

fn codec(c: &mut Criterion) {
    let record = sample_record(7, Uuid::from_u128(8));
    let mut framed = Vec::new();
    encode_record(&record, &mut framed).expect("encode");
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_framed", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            encode_record(std::hint::black_box(&record), &mut out).expect("encode");
        })
    });
    // Borrowed, as replay decodes: the record's text points into the frame.
    group.bench_function("check_and_decode", |b| {
        b.iter(|| match read_frame(std::hint::black_box(&framed), 0) {
            Frame::Valid { payload, .. } => {
                std::hint::black_box(decode_payload_ref(payload).expect("decode"));
            }
            other => panic!("{other:?}"),
        })
    });
    // Owned (strings and SKUs copied, then dropped), as replay decoded until borrowed records.
    group.bench_function("check_and_decode_owned", |b| {
        b.iter(|| match read_frame(std::hint::black_box(&framed), 0) {
            Frame::Valid { payload, .. } => decode_payload(payload).expect("decode"),
            other => panic!("{other:?}"),
        })
    });
    group.finish();
    eprintln!(
        "record: a single-item reservation frames to {} bytes",
        framed.len()
    );
}

/// Holds open at once in [`write_log`]: a completion comes this many holds after its reserve.
const OPEN_HOLDS: usize = 512;

/// A log as a busy checkout writes it: 1,000 products, then reserves and completions taking
/// turns, with [`OPEN_HOLDS`] holds open at once, so a completion lands ~1,000 records after
/// its hold (the median in a log written through the engine by 1,024 concurrent buyers), and
/// random ids, as the server makes them. Not a completion right after each hold with
/// sequential ids: that kept every lookup in the CPU's caches and flattered replay ~1.3x.
fn write_log(dir: &std::path::Path, records: u64) {
    let mut bytes = header().to_vec();
    for p in 0..1000u64 {
        let put = Record {
            at_ms: 1_795_000_000_000,
            actor: "admin".into(),
            op_id: Uuid::new_v4(),
            event: Event::ProductPut {
                sku: Sku::parse(&format!("SKU-{p:05}")).expect("sku"),
                created: true,
                name: None,
                low_stock_threshold: None,
                on_hand: Some(1_000_000_000_000),
                fingerprint: 0,
            },
        };
        encode_record(&put, &mut bytes).expect("encode");
    }
    let mut open = std::collections::VecDeque::with_capacity(OPEN_HOLDS);
    for i in 0..records - 1000 {
        let record = match open.front() {
            Some(&held) if open.len() >= OPEN_HOLDS && i % 2 == 1 => {
                open.pop_front();
                Record {
                    at_ms: 1_795_000_000_000 + i as i64,
                    actor: "checkout".into(),
                    op_id: Uuid::new_v4(),
                    event: Event::Completed {
                        reservation_id: held,
                        sold: smallvec::smallvec![1],
                        reacquired: false,
                        reference: None,
                    },
                }
            }
            _ => {
                let id = Uuid::new_v4();
                open.push_back(id);
                sample_record(i, id)
            }
        };
        encode_record(&record, &mut bytes).expect("encode");
    }
    std::fs::write(dir.join(file_name(1)), &bytes).expect("write log");
}

fn replay_speed(c: &mut Criterion) {
    const RECORDS: u64 = 1_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), RECORDS);
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(RECORDS));
    group.sample_size(10);
    group.bench_function("1m_records_into_ledger", |b| {
        // The ledger is kept after a real replay: dropping it is not part of the start-up.
        b.iter_with_large_drop(|| {
            let (ledger, outcome) = Ledger::replay(dir.path(), Mode::ReadOnly).expect("replay");
            assert_eq!(outcome.records, RECORDS);
            ledger
        })
    });
    group.finish();
}

criterion_group!(benches, codec, replay_speed, durable_reserves);

// criterion_main!, plus the server's page setting, so the figures are the server's.
fn main() {
    stockd::memory::prefer_small_pages();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
