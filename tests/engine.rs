//! The engine in-process (no HTTP): an injected clock makes "expired while down" testable
//! without sleeping, and acknowledged reserves are checked against the segment files directly.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use stockd::clock::Clock;
use stockd::config::EngineConfig;
use stockd::engine::requests::{ItemRequest, PutProduct, Reserve};
use stockd::engine::Engine;
use stockd::wal::replay::{replay, Mode};
use stockd::wal::Event;

/// Wall clock = real clock + an offset the test moves.
struct ShiftedClock {
    offset_ms: AtomicI64,
}

impl Clock for ShiftedClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis() + self.offset_ms.load(Ordering::Relaxed)
    }
}

fn reserve(sku: &str, quantity: u64, ttl_seconds: u64) -> Reserve {
    Reserve {
        id: None,
        items: vec![ItemRequest {
            sku: sku.into(),
            quantity,
        }],
        ttl_seconds: Some(ttl_seconds),
        session_id: None,
        user_id: None,
        reference: None,
        metadata: None,
    }
}

fn open(config: &EngineConfig, clock: Arc<ShiftedClock>) -> (tokio::runtime::Runtime, Engine) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (engine, _) = rt
        .block_on(Engine::open(config, clock, Box::new(|m| panic!("{m}"))))
        .expect("open");
    (rt, engine)
}

#[test]
fn holds_past_their_time_on_the_injected_clock_are_released_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        data_dir: dir.path().join("data"),
        ..EngineConfig::default()
    };
    let clock = Arc::new(ShiftedClock {
        offset_ms: AtomicI64::new(0),
    });
    let (rt, engine) = open(&config, clock.clone());
    let (hour, day) = rt.block_on(async {
        let product = PutProduct {
            on_hand: Some(10),
            ..PutProduct::default()
        };
        engine.put_product("t", "K", product, None).await.unwrap();
        let hour = engine.reserve("t", reserve("K", 3, 3600)).await.unwrap();
        let day = engine.reserve("t", reserve("K", 2, 86_400)).await.unwrap();
        (hour, day)
    });
    assert_eq!(engine.product("K").unwrap().reserved, 5);
    drop(engine);
    drop(rt); // stops the actors, as a crash would (everything acknowledged is already durable)

    // Two hours later on the injected clock: the one-hour hold is released at start.
    clock.offset_ms.store(2 * 3600 * 1000, Ordering::Relaxed);
    let (_rt, engine) = open(&config, clock);
    assert_eq!(engine.reservation(&hour.id).unwrap().status, "expired");
    assert_eq!(engine.reservation(&day.id).unwrap().status, "active");
    let p = engine.product("K").unwrap();
    assert_eq!((p.on_hand, p.reserved, p.available), (10, 2, 8));
    let (history, _) = engine.history("K", None, None, 1).unwrap();
    assert_eq!(history[0].action, "release");
    assert_eq!(history[0].actor, "stockd");
    engine.check_invariants().unwrap();
}

#[test]
fn every_acknowledged_reserve_is_already_in_the_segment_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        data_dir: dir.path().join("data"),
        ..EngineConfig::default()
    };
    let clock = Arc::new(ShiftedClock {
        offset_ms: AtomicI64::new(0),
    });
    let (rt, engine) = open(&config, clock);
    rt.block_on(async {
        let product = PutProduct {
            on_hand: Some(1000),
            ..PutProduct::default()
        };
        engine.put_product("t", "D", product, None).await.unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let engine = engine.clone();
                let data_dir = config.data_dir.clone();
                tokio::spawn(async move {
                    let r = engine.reserve("t", reserve("D", 1, 600)).await.unwrap();
                    // Acknowledged: the record must be readable from disk right now.
                    let mut found = false;
                    replay(&data_dir, Mode::ReadOnly, |record, _| {
                        found |=
                            record.op_id == r.id && matches!(record.event, Event::Reserved { .. });
                        Ok(())
                    })
                    .unwrap();
                    assert!(found, "acknowledged reservation {} not in the log", r.id);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let (fsyncs, records) = engine.log_counters();
    assert_eq!(records, 201);
    assert!(fsyncs <= records);
}
