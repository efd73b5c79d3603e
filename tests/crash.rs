//! `kill -9` under concurrent load, several rounds: every acknowledged operation survives,
//! unacknowledged ones are wholly there or wholly absent, the counts add up exactly, and
//! `stockd verify` passes.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

const SKUS: [&str; 4] = ["HOT", "P1", "P2", "P3"];
const INITIAL: u64 = 100_000;

#[derive(Default)]
struct Ledger {
    /// Every reservation id ever sent, with its items.
    attempted_reservations: HashMap<Uuid, Vec<(String, u64)>>,
    acked_reservations: Vec<Uuid>,
    /// Reservation id → "completed" / "cancelled", for acknowledged ends.
    acked_ends: HashMap<Uuid, &'static str>,
    attempted_sales: HashMap<Uuid, Vec<(String, u64)>>,
    acked_sales: Vec<Uuid>,
}

async fn worker(base: String, seed: u64, stop: Arc<AtomicBool>, book: Arc<Mutex<Ledger>>) -> usize {
    let client = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut mine: Vec<Uuid> = Vec::new();
    let mut acked = 0;
    while !stop.load(Ordering::Relaxed) {
        let roll: u32 = rng.random_range(0..10);
        let result = if roll < 5 || mine.is_empty() {
            let id = Uuid::new_v4();
            let mut items = vec![("HOT".to_string(), rng.random_range(1..3u64))];
            if rng.random_bool(0.5) {
                items.push((
                    SKUS[rng.random_range(1..4)].to_string(),
                    rng.random_range(1..4u64),
                ));
            }
            book.lock()
                .unwrap()
                .attempted_reservations
                .insert(id, items.clone());
            let body = json!({"id": id, "ttl_seconds": 3600,
                "items": items.iter().map(|(s, q)| json!({"sku": s, "quantity": q})).collect::<Vec<_>>()});
            match client
                .post(format!("{base}/v1/reservations"))
                .json(&body)
                .send()
                .await
            {
                Ok(r) if r.status() == StatusCode::CREATED => {
                    book.lock().unwrap().acked_reservations.push(id);
                    mine.push(id);
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            }
        } else if roll < 8 {
            let id = mine.swap_remove(rng.random_range(0..mine.len()));
            let (action, end) = if roll < 7 {
                ("complete", "completed")
            } else {
                ("cancel", "cancelled")
            };
            match client
                .post(format!("{base}/v1/reservations/{id}/{action}"))
                .json(&json!({}))
                .send()
                .await
            {
                Ok(r) if r.status() == StatusCode::OK => {
                    book.lock().unwrap().acked_ends.insert(id, end);
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            }
        } else {
            let id = Uuid::new_v4();
            let items = vec![(
                SKUS[rng.random_range(0..4)].to_string(),
                rng.random_range(1..3u64),
            )];
            book.lock()
                .unwrap()
                .attempted_sales
                .insert(id, items.clone());
            let body = json!({"id": id, "items": items.iter().map(|(s, q)| json!({"sku": s, "quantity": q})).collect::<Vec<_>>()});
            match client
                .post(format!("{base}/v1/sales"))
                .json(&body)
                .send()
                .await
            {
                Ok(r) if r.status() == StatusCode::CREATED => {
                    book.lock().unwrap().acked_sales.push(id);
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(()) => acked += 1,
            Err(_) => break, // the server is gone
        }
    }
    acked
}

/// Checks the restarted server against everything the clients saw.
async fn check(s: &Server, book: &Ledger) {
    let mut reserved: HashMap<String, u64> = HashMap::new();
    let mut sold: HashMap<String, u64> = HashMap::new();
    for (id, items) in &book.attempted_reservations {
        let (st, r) = s.get(&format!("/v1/reservations/{id}")).await;
        if st == StatusCode::NOT_FOUND {
            assert!(
                !book.acked_reservations.contains(id),
                "acknowledged reservation {id} lost"
            );
            continue;
        }
        assert_eq!(st, StatusCode::OK);
        let got: Vec<(String, u64)> = r["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["sku"].as_str().unwrap().to_string(),
                    i["quantity"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(&got, items, "reservation {id} present but not as sent");
        let status = r["status"].as_str().unwrap();
        if let Some(end) = book.acked_ends.get(id) {
            assert_eq!(status, *end, "acknowledged {end} of {id} lost");
        }
        match status {
            "active" => items
                .iter()
                .for_each(|(sku, q)| *reserved.entry(sku.clone()).or_default() += q),
            "completed" => items
                .iter()
                .for_each(|(sku, q)| *sold.entry(sku.clone()).or_default() += q),
            "cancelled" => {}
            other => panic!("{id}: unexpected status {other}"),
        }
    }
    for (id, items) in &book.attempted_sales {
        let (st, _) = s.get(&format!("/v1/sales/{id}")).await;
        if st == StatusCode::NOT_FOUND {
            assert!(
                !book.acked_sales.contains(id),
                "acknowledged sale {id} lost"
            );
            continue;
        }
        items
            .iter()
            .for_each(|(sku, q)| *sold.entry(sku.clone()).or_default() += q);
    }
    for sku in SKUS {
        let p = s.product_state(sku).await;
        let expected_reserved = reserved.get(sku).copied().unwrap_or(0);
        let expected_on_hand = INITIAL - sold.get(sku).copied().unwrap_or(0);
        assert_eq!(
            p["reserved"].as_u64(),
            Some(expected_reserved),
            "{sku}: reserved != sum of active holds"
        );
        assert_eq!(
            p["on_hand"].as_u64(),
            Some(expected_on_hand),
            "{sku}: on_hand != initial - everything sold"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = start(&data);
    for sku in SKUS {
        s.product(sku, INITIAL).await;
    }
    let book = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let rounds = 6;
    let mut total_acked = 0;
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..32)
            .map(|_| {
                tokio::spawn(worker(
                    s.base.clone(),
                    rng.random(),
                    stop.clone(),
                    book.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..600))).await;
        s.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            total_acked += w.await.unwrap();
        }
        // Every other run passivates actors after 20 ms idle, so that products (holds and
        // all) fold and revive all the time under the load and the kill.
        s = if round % 2 == 0 {
            try_start_with(&data, &["--passivate-after-ms", "20"]).unwrap()
        } else {
            start(&data)
        };
        // Workers are done: take the book out to check it without holding the lock.
        let snapshot = std::mem::take(&mut *book.lock().unwrap());
        check(&s, &snapshot).await;
        *book.lock().unwrap() = snapshot;
        eprintln!("round {round}: {total_acked} operations acknowledged so far");
    }
    assert!(
        total_acked > 100,
        "the load generated too little traffic to mean anything"
    );
    s.kill9();
    let out = run_cli(&["verify"], &data);
    assert!(
        out.status.success(),
        "verify failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_flushes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = start(&data);
    s.product("G", 1000).await;
    let mut acked = Vec::new();
    for _ in 0..50 {
        let (st, r) = s.reserve(&[("G", 1)], 600).await;
        assert_eq!(st, StatusCode::CREATED);
        acked.push(r["id"].as_str().unwrap().to_string());
    }
    let status = s.terminate();
    assert!(status.success(), "exit status {status:?}: {}", s.stderr());
    let s = start(&data);
    for id in &acked {
        assert_eq!(s.reservation(id).await["status"], "active");
    }
    assert_eq!(s.product_state("G").await["reserved"], 50);
}

#[test]
fn refuses_off_loopback_without_tokens_and_too_many_threads_and_reports_port_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let err = try_start_with(&data, &["--listen", "0.0.0.0:0"])
        .err()
        .expect("must refuse");
    assert!(err.contains("loopback"), "{err}");
    let err = try_start_with(&data, &["--worker-threads", "5000"])
        .err()
        .expect("must refuse a runtime of 5,000 threads");
    assert!(err.contains("not in 0..=1024"), "{err}");
    let s = start(&data);
    let port = s.base.rsplit(':').next().unwrap().to_string();
    let other = dir.path().join("other");
    let out = std::process::Command::new(BIN)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot listen") && stderr.contains("--listen"),
        "{stderr}"
    );
}
