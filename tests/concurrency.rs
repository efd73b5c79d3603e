//! Real concurrency over many connections: no oversell, and exactly one end per hold.

mod common;

use std::collections::HashMap;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Fires all `bodies` at once, each on a client of its own (many connections).
async fn fire(s: &Server, path: &str, bodies: Vec<Value>) -> Vec<(StatusCode, Value)> {
    let clients: Vec<reqwest::Client> = (0..16).map(|_| reqwest::Client::new()).collect();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(bodies.len()));
    let handles: Vec<_> = bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let (client, url, barrier) = (
                clients[i % clients.len()].clone(),
                s.url(path),
                barrier.clone(),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                decode(client.post(url).json(&body).send().await.expect("request")).await
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

/// A server whose actors run on four runtime threads at once: on this suite's small machines the
/// default is one event-loop thread, which would never run two actors in parallel.
fn start_parallel(data_dir: &std::path::Path) -> Server {
    let s = try_start_with(data_dir, &["--worker-threads", "4"]).expect("server starts");
    // A new thread names itself once it first runs, which on a busy machine can be after the
    // server says it is listening: look again for a bounded while before judging.
    let mut workers = 0;
    for _ in 0..WORKER_NAME_LOOKS_MAX {
        workers = runtime_threads(&s);
        if workers == 4 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        workers,
        4,
        "the server runs four runtime threads; its threads: {:?}",
        thread_names(&s)
    );
    s
}

/// 500 looks, 20 ms apart: ten seconds for the threads to be scheduled at all.
const WORKER_NAME_LOOKS_MAX: usize = 500;

/// How many of the server's threads carry tokio's worker name (the server spawns no blocking
/// tasks, which would share it).
fn runtime_threads(s: &Server) -> usize {
    thread_names(s)
        .iter()
        .filter(|name| *name == "tokio-rt-worker")
        .count()
}

fn thread_names(s: &Server) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{}/task", s.pid()))
        .expect("the server's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

/// reserved == sum of the active holds we know of, for every product named.
async fn assert_holds_match(s: &Server, reservations: &[Value]) {
    let mut held: HashMap<String, u64> = HashMap::new();
    for r in reservations {
        let (_, now) = s
            .get(&format!("/v1/reservations/{}", r["id"].as_str().unwrap()))
            .await;
        if now["status"] == "active" {
            for item in now["items"].as_array().unwrap() {
                *held
                    .entry(item["sku"].as_str().unwrap().into())
                    .or_default() += item["quantity"].as_u64().unwrap();
            }
        }
    }
    for (sku, sum) in held {
        let p = s.product_state(&sku).await;
        assert_eq!(
            p["reserved"].as_u64(),
            Some(sum),
            "{sku}: reserved vs holds"
        );
        assert!(p["reserved"].as_u64() <= p["on_hand"].as_u64());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_oversell_single_item() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_parallel(&dir.path().join("data"));
    s.product("HOT", 100).await;
    let bodies = (0..400)
        .map(|_| json!({"items": [{"sku": "HOT", "quantity": 1}], "ttl_seconds": 600}))
        .collect();
    let results = fire(&s, "/v1/reservations", bodies).await;
    let won: Vec<Value> = results
        .iter()
        .filter(|(st, _)| *st == StatusCode::CREATED)
        .map(|(_, b)| b.clone())
        .collect();
    let lost = results
        .iter()
        .filter(|(st, b)| *st == StatusCode::CONFLICT && b["code"] == "insufficient_stock")
        .count();
    assert_eq!(won.len(), 100, "exactly the stock is held");
    assert_eq!(
        lost,
        300,
        "every other request is refused for stock: {:?}",
        results
            .iter()
            .find(|(st, _)| *st != StatusCode::CREATED && *st != StatusCode::CONFLICT)
    );
    let p = s.product_state("HOT").await;
    assert_eq!(
        (
            p["available"].as_u64(),
            p["reserved"].as_u64(),
            p["on_hand"].as_u64()
        ),
        (Some(0), Some(100), Some(100))
    );
    assert_holds_match(&s, &won).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_oversell_two_items_sharing_the_hot_sku() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_parallel(&dir.path().join("data"));
    s.product("HOT", 100).await;
    // Some partners sort before HOT (so HOT is not always the home actor), some after.
    let partners = ["AAA", "BBB", "XXX", "YYY"];
    for p in partners {
        s.product(p, 1000).await;
    }
    let bodies = (0..400)
        .map(|i| json!({"items": [{"sku": partners[i % 4], "quantity": 1}, {"sku": "HOT", "quantity": 1}], "ttl_seconds": 600}))
        .collect();
    let results = fire(&s, "/v1/reservations", bodies).await;
    let won: Vec<Value> = results
        .iter()
        .filter(|(st, _)| *st == StatusCode::CREATED)
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(won.len(), 100);
    assert!(results
        .iter()
        .all(|(st, b)| *st == StatusCode::CREATED || b["code"] == "insufficient_stock"));
    assert_eq!(s.product_state("HOT").await["available"], 0);
    let partner_reserved: u64 = {
        let mut sum = 0;
        for p in partners {
            sum += s.product_state(p).await["reserved"].as_u64().unwrap();
        }
        sum
    };
    assert_eq!(
        partner_reserved, 100,
        "no partner hold left behind by a refused reservation"
    );
    assert_holds_match(&s, &won).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_oversell_when_both_items_are_scarce() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_parallel(&dir.path().join("data"));
    s.product("HOT", 60).await;
    s.product("AAA", 25).await;
    s.product("ZZZ", 25).await;
    let bodies = (0..300)
        .map(|i| {
            let partner = if i % 2 == 0 { "AAA" } else { "ZZZ" };
            json!({"items": [{"sku": "HOT", "quantity": 1}, {"sku": partner, "quantity": 1}], "ttl_seconds": 600})
        })
        .collect();
    let results = fire(&s, "/v1/reservations", bodies).await;
    let won: Vec<Value> = results
        .iter()
        .filter(|(st, _)| *st == StatusCode::CREATED)
        .map(|(_, b)| b.clone())
        .collect();
    // Partners limit it to 50; HOT (60) never runs out, so every partner unit is sold.
    assert_eq!(won.len(), 50);
    let hot = s.product_state("HOT").await;
    assert_eq!(
        (hot["reserved"].as_u64(), hot["available"].as_u64()),
        (Some(50), Some(10))
    );
    assert_holds_match(&s, &won).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_and_cancel_race_has_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_parallel(&dir.path().join("data"));
    s.product("R", 1000).await;
    s.product("S", 1000).await;
    let rounds = 60;
    let mut completed = 0u64;
    for round in 0..rounds {
        let items: &[(&str, u64)] = if round % 2 == 0 {
            &[("R", 2)]
        } else {
            &[("R", 2), ("S", 3)]
        };
        let (_, r) = s.reserve(items, 600).await;
        let id = r["id"].as_str().unwrap().to_string();
        let (c, x) = (s.client.clone(), s.client.clone());
        let (cu, xu) = (
            s.url(&format!("/v1/reservations/{id}/complete")),
            s.url(&format!("/v1/reservations/{id}/cancel")),
        );
        let complete =
            tokio::spawn(
                async move { decode(c.post(cu).json(&json!({})).send().await.unwrap()).await },
            );
        let cancel =
            tokio::spawn(
                async move { decode(x.post(xu).json(&json!({})).send().await.unwrap()).await },
            );
        let (complete, cancel) = (complete.await.unwrap(), cancel.await.unwrap());
        let (_, now) = s.get(&format!("/v1/reservations/{id}")).await;
        match now["status"].as_str().unwrap() {
            "completed" => {
                completed += 1;
                assert_eq!(complete.0, StatusCode::OK);
                assert_eq!(
                    (cancel.0, cancel.1["code"].as_str()),
                    (StatusCode::CONFLICT, Some("invalid_transition"))
                );
            }
            "cancelled" => {
                assert_eq!(cancel.0, StatusCode::OK);
                assert_eq!(
                    (complete.0, complete.1["code"].as_str()),
                    (StatusCode::CONFLICT, Some("invalid_transition"))
                );
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let r = s.product_state("R").await;
    assert_eq!(
        (r["on_hand"].as_u64(), r["reserved"].as_u64()),
        (Some(1000 - 2 * completed), Some(0))
    );
    let (_, hist) = s.get("/v1/products/R/history?limit=1000").await;
    let ends = hist["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "complete" || e["action"] == "release")
        .count();
    assert_eq!(ends, rounds, "exactly one end logged per reservation");
}
