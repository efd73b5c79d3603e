//! The engine in-process (no HTTP): an injected clock makes "expired while down" testable
//! without sleeping, and acknowledged reserves are checked against the segment files directly.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use stockd::clock::Clock;
use stockd::config::EngineConfig;
use stockd::engine::requests::{Cancel, Complete, PutProduct, Reserve};
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
    Reserve::one(sku, quantity, ttl_seconds)
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

/// A fresh data directory, an engine config on it (idle actors passivate after
/// `passivate_after_ms`; 0: never), and a clock at real time.
fn setup(passivate_after_ms: u64) -> (tempfile::TempDir, EngineConfig, Arc<ShiftedClock>) {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        data_dir: dir.path().join("data"),
        passivate_after_ms,
        ..EngineConfig::default()
    };
    let clock = Arc::new(ShiftedClock {
        offset_ms: AtomicI64::new(0),
    });
    (dir, config, clock)
}

#[test]
fn holds_past_their_time_on_the_injected_clock_are_released_at_start() {
    // Products start passive (holds and all).
    holds_past_their_time_are_released_at_start(EngineConfig::default().passivate_after_ms);
}

#[test]
fn holds_past_their_time_are_released_at_start_without_passivation() {
    // Products with holds start live.
    holds_past_their_time_are_released_at_start(0);
}

fn holds_past_their_time_are_released_at_start(passivate_after_ms: u64) {
    let (_dir, config, clock) = setup(passivate_after_ms);
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
    let (_dir, config, clock) = setup(EngineConfig::default().passivate_after_ms);
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

/// A product with more than PASSIVE_HOLDS_MAX holds stays live (reviving it would rebuild them
/// all under its registry lock); one with fewer passivates, holds and all.
#[test]
fn only_products_with_few_holds_passivate() {
    use stockd::domain::limits::PASSIVE_HOLDS_MAX;
    let (_dir, config, clock) = setup(50);
    let (rt, engine) = open(&config, clock);
    let census = |engine: &Engine| {
        let m = engine.metrics();
        (m.live_actors.get(), m.passive_products.get())
    };
    rt.block_on(async {
        for (sku, on_hand) in [("HOT", 10_000), ("COLD", 10)] {
            let product = PutProduct {
                on_hand: Some(on_hand),
                ..PutProduct::default()
            };
            engine.put_product("t", sku, product, None).await.unwrap();
        }
        let mut hot = Vec::new();
        for _ in 0..=PASSIVE_HOLDS_MAX {
            hot.push(engine.reserve("t", reserve("HOT", 1, 600)).await.unwrap());
        }
        engine.reserve("t", reserve("COLD", 1, 600)).await.unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while census(&engine).1 < 1 {
            assert!(std::time::Instant::now() < until, "COLD never passivated");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Many idle periods later, HOT is still live.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(census(&engine), (1, 1), "HOT stays live with its holds");
        // One hold fewer: HOT passivates too, and its holds are all still there.
        let first = hot.pop().unwrap();
        let cancel = stockd::engine::requests::Cancel { reason: None };
        engine.cancel("t", first.id, cancel).await.unwrap();
        while census(&engine).1 < 2 {
            assert!(std::time::Instant::now() < until, "HOT never passivated");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(census(&engine), (0, 2));
    });
    let p = engine.product("HOT").unwrap();
    assert_eq!((p.on_hand, p.reserved), (10_000, PASSIVE_HOLDS_MAX as u64));
    engine.check_invariants().unwrap();
}

/// Thousands of holds expired at start end at once, and the product's actor drops its ended
/// reservations a bounded number per message: for a while some are answered from the actor
/// and some from the ledger. Both must answer alike, and the counts stay right.
#[test]
fn ended_reservations_answer_alike_while_the_actor_drops_them_in_steps() {
    const HOLDS: usize = 3000; // about three messages' worth of dropping
    let (_dir, config, clock) = setup(0);
    let (rt, engine) = open(&config, clock.clone());
    let ids = rt.block_on(async {
        let product = PutProduct {
            on_hand: Some(HOLDS as u64),
            ..PutProduct::default()
        };
        engine.put_product("t", "E", product, None).await.unwrap();
        let tasks: Vec<_> = (0..HOLDS)
            .map(|_| {
                let engine = engine.clone();
                tokio::spawn(async move { engine.reserve("t", reserve("E", 1, 3600)).await })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap().unwrap().id);
        }
        ids
    });
    assert_eq!(engine.product("E").unwrap().reserved, HOLDS as u64);
    drop(engine);
    drop(rt);

    clock.offset_ms.store(2 * 3600 * 1000, Ordering::Relaxed);
    let (rt, engine) = open(&config, clock);
    let p = engine.product("E").unwrap();
    assert_eq!((p.reserved, p.available), (0, HOLDS as u64));
    rt.block_on(async {
        // Each cancel is a message to the actor: the first ones find their reservation still
        // kept there, the later ones only in the ledger (or the other way round).
        for id in &ids {
            let r = engine
                .cancel("t", *id, Cancel::default())
                .await
                .expect("cancelling an expired reservation answers its status");
            assert_eq!(r.status, "expired", "{id}");
        }
        // Completing an expired hold takes the stock again while it is there.
        let first = engine
            .complete("t", ids[0], Complete::default())
            .await
            .expect("re-acquired");
        assert_eq!((first.status, first.reacquired), ("completed", true));
        let last = engine
            .complete("t", ids[HOLDS - 1], Complete::default())
            .await
            .expect("re-acquired");
        assert_eq!((last.status, last.reacquired), ("completed", true));
    });
    let p = engine.product("E").unwrap();
    assert_eq!(
        (p.on_hand, p.reserved, p.available),
        (HOLDS as u64 - 2, 0, HOLDS as u64 - 2)
    );
    for id in &ids[1..HOLDS - 1] {
        assert_eq!(engine.reservation(id).unwrap().status, "expired");
    }
    engine.check_invariants().unwrap();
}

/// The ids stockd makes name the slot their hold is kept in at the product, and a slot is
/// reused once its reservation has ended and been dropped there. An ended reservation whose
/// slot now keeps another must still answer as itself, before a restart and after one (which
/// draws new slots for the holds it finds).
#[test]
fn reservations_whose_slots_were_reused_each_answer_as_themselves() {
    const ROUNDS: usize = 6;
    const PER_ROUND: usize = 50;
    const KEPT_PER_ROUND: usize = 10;
    let (_dir, config, clock) = setup(0);
    let (rt, engine) = open(&config, clock.clone());
    let (ended, held) = rt.block_on(async {
        let product = PutProduct {
            on_hand: Some(10_000),
            ..PutProduct::default()
        };
        engine.put_product("t", "S", product, None).await.unwrap();
        let (mut ended, mut held) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let mut ids = Vec::new();
            for _ in 0..PER_ROUND {
                ids.push(engine.reserve("t", reserve("S", 1, 3600)).await.unwrap().id);
            }
            for id in &ids[KEPT_PER_ROUND..] {
                let r = engine.cancel("t", *id, Cancel::default()).await.unwrap();
                assert_eq!(r.status, "cancelled");
            }
            held.extend_from_slice(&ids[..KEPT_PER_ROUND]);
            ended.extend_from_slice(&ids[KEPT_PER_ROUND..]);
        }
        (ended, held)
    });
    // The ids no longer show their slots (a keyed mask hides them), so that 200 of these
    // 300 reservations took the slot of an ended one is checked where slots can be seen:
    // `later_ids_take_the_slots_of_removed_ones` in src/actor/homes.rs, in this same pattern.
    let all: std::collections::HashSet<_> = held.iter().chain(&ended).collect();
    assert_eq!(all.len(), ROUNDS * PER_ROUND, "ids are distinct");

    let check = |rt: &tokio::runtime::Runtime, engine: &Engine| {
        rt.block_on(async {
            for id in &ended {
                let r = engine.cancel("t", *id, Cancel::default()).await.unwrap();
                assert_eq!((r.id, r.status), (*id, "cancelled"));
            }
            for id in &held {
                let r = engine.reservation(id).unwrap();
                assert_eq!((r.id, r.status), (*id, "active"));
            }
        });
        let p = engine.product("S").unwrap();
        assert_eq!(p.reserved, held.len() as u64);
        engine.check_invariants().unwrap();
    };
    check(&rt, &engine);
    drop(engine);
    drop(rt);

    let (rt, engine) = open(&config, clock);
    check(&rt, &engine);
    rt.block_on(async {
        // New holds on the restarted engine, beside those it found.
        let mut after = Vec::new();
        for _ in 0..PER_ROUND {
            after.push(engine.reserve("t", reserve("S", 1, 3600)).await.unwrap().id);
        }
        for id in held.iter().chain(&after) {
            let r = engine
                .complete("t", *id, Complete::default())
                .await
                .unwrap();
            assert_eq!((r.id, r.status), (*id, "completed"));
        }
        for id in &ended {
            assert_eq!(engine.reservation(id).unwrap().status, "cancelled");
        }
    });
    let p = engine.product("S").unwrap();
    let sold = (held.len() + PER_ROUND) as u64;
    assert_eq!((p.on_hand, p.reserved), (10_000 - sold, 0));
    engine.check_invariants().unwrap();
}
