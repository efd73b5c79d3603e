//! Durable reserves through the engine (no HTTP): one hot SKU, many concurrent callers.
//! Every measured reserve is acknowledged only after its record is fdatasynced.
//! Prints records per fsync for each concurrency level next to criterion's figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use stockd::clock::SystemClock;
use stockd::config::EngineConfig;
use stockd::engine::requests::{ItemRequest, PutProduct, Reserve};
use stockd::engine::Engine;

fn reserve_request() -> Reserve {
    Reserve {
        id: None,
        items: vec![ItemRequest {
            sku: "HOT".into(),
            quantity: 1,
        }],
        ttl_seconds: Some(3600),
        session_id: None,
        user_id: None,
        reference: None,
        metadata: None,
    }
}

fn hot_sku(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig {
        data_dir: dir.path().join("data"),
        ..EngineConfig::default()
    };
    let engine = runtime.block_on(async {
        let (engine, _) = Engine::open(&config, Arc::new(SystemClock), Box::new(|m| panic!("{m}")))
            .await
            .expect("open");
        let product = PutProduct {
            on_hand: Some(1_000_000_000_000),
            ..PutProduct::default()
        };
        engine
            .put_product("bench", "HOT", product, None)
            .await
            .expect("product");
        engine
    });

    let mut group = c.benchmark_group("durable_reserve_hot_sku");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for callers in [1usize, 64, 1024] {
        let (fsyncs_before, records_before) = engine.log_counters();
        group.bench_with_input(
            BenchmarkId::from_parameter(callers),
            &callers,
            |b, &callers| {
                b.iter_custom(|iters| {
                    let engine = engine.clone();
                    runtime.block_on(async move {
                        let per_caller = (iters as usize).div_ceil(callers);
                        let start = Instant::now();
                        let tasks: Vec<_> = (0..callers)
                            .map(|_| {
                                let engine = engine.clone();
                                tokio::spawn(async move {
                                    for _ in 0..per_caller {
                                        engine
                                            .reserve("bench", reserve_request())
                                            .await
                                            .expect("reserve");
                                    }
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await.expect("task");
                        }
                        // Time per reserve, as if exactly `iters` were done.
                        start
                            .elapsed()
                            .mul_f64(iters as f64 / (per_caller * callers) as f64)
                    })
                })
            },
        );
        let (fsyncs, records) = engine.log_counters();
        let ratio = (records - records_before) as f64 / (fsyncs - fsyncs_before).max(1) as f64;
        eprintln!("durable_reserve_hot_sku/{callers}: {ratio:.1} records per fsync");
    }
    group.finish();
}

criterion_group!(benches, hot_sku);
criterion_main!(benches);
