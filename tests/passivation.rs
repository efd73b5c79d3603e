//! Passivation: idle actors that hold nothing fold into a few bytes and are revived by the next
//! request, and no client can tell: ended reservations still answer from the log, versions
//! continue, and concurrent requests racing a revival never oversell.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::json;

async fn gauge(s: &Server, name: &str) -> f64 {
    metric(&s.metrics().await, name)
}

/// Waits until at least `n` products are passive.
async fn wait_passive(s: &Server, n: f64) {
    let until = Instant::now() + Duration::from_secs(20);
    while gauge(s, "stockd_passive_products ").await < n {
        assert!(Instant::now() < until, "products never passivated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_products_answer_exactly_as_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = try_start_with(&data, &["--passivate-after-ms", "100"]).unwrap();
    s.product("P1", 10).await;
    s.product("P2", 10).await;
    s.product("P3", 10).await;
    let (_, done) = s.reserve(&[("P1", 2)], 600).await;
    let done = done["id"].as_str().unwrap().to_string();
    s.post(&format!("/v1/reservations/{done}/complete"), json!({}))
        .await;
    let (_, cancelled) = s.reserve(&[("P1", 1), ("P2", 1)], 600).await;
    let cancelled = cancelled["id"].as_str().unwrap().to_string();
    s.post(&format!("/v1/reservations/{cancelled}/cancel"), json!({}))
        .await;
    let (_, held) = s.reserve(&[("P2", 3)], 600).await; // P2 holds stock: stays live
    let (_, expiring) = s.reserve(&[("P3", 4)], 1).await;
    let expiring = expiring["id"].as_str().unwrap().to_string();

    // P1 idles with nothing held; P3 once its hold expired.
    wait_passive(&s, 2.0).await;
    assert_eq!(
        gauge(&s, "stockd_live_actors ").await,
        1.0,
        "P2 holds stock and stays live"
    );
    let before = (s.product_state("P1").await, s.product_state("P3").await);

    // Ended reservations homed on passive products answer from the log.
    let (st, r) = s
        .post(&format!("/v1/reservations/{done}/complete"), json!({}))
        .await;
    assert_eq!(
        (st, r["status"].as_str()),
        (StatusCode::OK, Some("completed"))
    );
    let (st, r) = s
        .post(&format!("/v1/reservations/{done}/cancel"), json!({}))
        .await;
    assert_eq!(
        (st, r["code"].as_str()),
        (StatusCode::CONFLICT, Some("invalid_transition"))
    );
    let (st, r) = s
        .post(&format!("/v1/reservations/{cancelled}/complete"), json!({}))
        .await;
    assert_eq!(
        (st, r["code"].as_str()),
        (StatusCode::CONFLICT, Some("invalid_transition"))
    );
    let (st, r) = s
        .post(&format!("/v1/reservations/{cancelled}/cancel"), json!({}))
        .await;
    assert_eq!(
        (st, r["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    let (st, r) = s
        .post(
            &format!("/v1/reservations/{expiring}/extend"),
            json!({"ttl_seconds": 60}),
        )
        .await;
    assert_eq!(
        (st, r["code"].as_str()),
        (StatusCode::CONFLICT, Some("reservation_expired"))
    );
    assert_eq!(
        (s.product_state("P1").await, s.product_state("P3").await),
        before,
        "answers changed nothing"
    );
    // An expired reservation whose home passivated can still be completed if stock is there.
    let (st, r) = s
        .post(&format!("/v1/reservations/{expiring}/complete"), json!({}))
        .await;
    assert_eq!(
        (st, r["reacquired"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{r}"
    );
    assert_eq!(s.product_state("P3").await["on_hand"], 6);

    // The revived product continues its version: If-Match with the version read before works.
    let version = s.product_state("P1").await["version"].as_u64().unwrap();
    let r = s
        .client
        .post(s.url("/v1/products/P1/restock"))
        .header("if-match", format!("\"{version}\""))
        .json(&json!({"quantity": 40}))
        .send()
        .await
        .unwrap();
    let (st, p) = decode(r).await;
    assert_eq!(
        (st, p["on_hand"].as_u64(), p["version"].as_u64()),
        (StatusCode::OK, Some(48), Some(version + 1))
    );

    // Concurrent sales racing the revival of a passive product: exactly the stock is sold.
    let mut sold = 0;
    for round in 0..3 {
        wait_passive(&s, 2.0).await;
        let stock = s.product_state("P1").await["available"].as_u64().unwrap();
        let tasks: Vec<_> = (0..60)
            .map(|_| {
                let (client, url) = (reqwest::Client::new(), s.url("/v1/sales"));
                tokio::spawn(async move {
                    let body = json!({"items": [{"sku": "P1", "quantity": 1}]});
                    decode(client.post(url).json(&body).send().await.unwrap())
                        .await
                        .0
                })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            if t.await.unwrap() == StatusCode::CREATED {
                won += 1;
            }
        }
        assert_eq!(won, stock.min(60), "round {round}");
        sold += won;
        // Top up for the next round.
        s.post("/v1/products/P1/restock", json!({"quantity": 20}))
            .await;
    }
    assert!(sold > 0);
    let p1 = s.product_state("P1").await;
    assert_eq!(p1["on_hand"].as_u64().unwrap(), 48 + 60 - sold);

    // Everything survives a restart.
    let before = (
        s.product_state("P1").await,
        s.product_state("P2").await,
        s.product_state("P3").await,
    );
    s.kill9();
    let out = run_cli(&["verify"], &data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = try_start_with(&data, &["--passivate-after-ms", "100"]).unwrap();
    // Products holding nothing start passive; P2 (a hold) starts live.
    let census = (
        gauge(&s, "stockd_live_actors ").await,
        gauge(&s, "stockd_passive_products ").await,
    );
    assert_eq!(census, (1.0, 2.0));
    assert_eq!(
        (
            s.product_state("P1").await,
            s.product_state("P2").await,
            s.product_state("P3").await
        ),
        before
    );
    assert_eq!(
        s.get(&format!(
            "/v1/reservations/{}",
            held["id"].as_str().unwrap()
        ))
        .await
        .1["status"],
        "active"
    );
}
