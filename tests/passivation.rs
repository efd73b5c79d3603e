//! Passivation: idle actors fold into a few bytes and are revived by the next request (or, for
//! a product home to active reservations, by an alarm at the earliest expiry), and no client
//! can tell: holds are kept and expire on time, ended reservations still answer from the log,
//! versions continue, and concurrent requests racing a revival never oversell.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

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

/// Waits (bounded) until reservation `id` has expired; returns it.
async fn wait_expired(s: &Server, id: &str) -> Value {
    s.wait_status(id, "expired", Duration::from_secs(15)).await
}

/// Waits (bounded) until no product actor is live.
async fn wait_all_passive(s: &Server) {
    let until = Instant::now() + Duration::from_secs(20);
    while gauge(s, "stockd_live_actors ").await > 0.0 {
        assert!(Instant::now() < until, "actors never passivated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// kill -9, `stockd verify` on the log, and a restart with the same passivation setting.
fn kill_verify_restart(s: &mut Server, data: &std::path::Path) -> Server {
    s.kill9();
    let out = run_cli(&["verify"], data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    try_start_with(data, &["--passivate-after-ms", "100"]).unwrap()
}

/// Sends `body` to `path` from `n` concurrent clients at once; returns how many got 201.
async fn concurrent_creates(s: &Server, path: &str, body: Value, n: usize) -> u64 {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url, body) = (reqwest::Client::new(), s.url(path), body.clone());
            tokio::spawn(async move {
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
    won
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_with_holds_passivate_and_their_holds_expire_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = try_start_with(&data, &["--passivate-after-ms", "100"]).unwrap();
    s.product("H1", 10).await;
    s.product("H2", 10).await;
    let (_, both) = s.reserve(&[("H1", 2), ("H2", 3)], 600).await;
    let (_, short) = s.reserve(&[("H2", 1)], 2).await;
    let (_, extended) = s.reserve(&[("H2", 1)], 2).await;
    let extended_id = extended["id"].as_str().unwrap().to_string();
    let (_, two_items_short) = s.reserve(&[("H1", 1), ("H2", 2)], 3).await;
    let (_, kept) = s.reserve(&[("H1", 1)], 600).await;

    // Both products go passive while holding stock; nothing a client reads changes.
    wait_all_passive(&s).await;
    assert_eq!(gauge(&s, "stockd_passive_products ").await, 2.0);
    // Each product is home to a reservation: each waits on an alarm.
    assert!(gauge(&s, "stockd_expiry_alarms ").await >= 2.0);
    let (h1, h2) = (s.product_state("H1").await, s.product_state("H2").await);
    assert_eq!(
        (h1["reserved"].as_u64(), h2["reserved"].as_u64()),
        (Some(4), Some(7))
    );
    // Extending a hold on a passive product moves its alarm: the first deadline passes
    // without effect, the new one expires it.
    let (st, extended) = s
        .post(
            &format!("/v1/reservations/{extended_id}/extend"),
            json!({"ttl_seconds": 5}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{extended}");
    wait_all_passive(&s).await;

    // Holds homed at passive products expire on time: an alarm revives the product.
    let short = wait_expired(&s, short["id"].as_str().unwrap()).await;
    assert_expiry_logged(&s, "H2", &short).await;
    wait_all_passive(&s).await;
    let two_items_short = wait_expired(&s, two_items_short["id"].as_str().unwrap()).await;
    // The home (H1) expired it and released the hold at H2, which was passive too.
    assert_expiry_logged(&s, "H1", &two_items_short).await;
    assert_expiry_logged(&s, "H2", &two_items_short).await;
    let (_, r) = s.get(&format!("/v1/reservations/{extended_id}")).await;
    assert_eq!(r["status"], "active", "expired at its first deadline: {r}");
    let extended = wait_expired(&s, &extended_id).await;
    assert_expiry_logged(&s, "H2", &extended).await;
    let (h1, h2) = (s.product_state("H1").await, s.product_state("H2").await);
    assert_eq!(
        (h1["reserved"].as_u64(), h2["reserved"].as_u64()),
        (Some(3), Some(3))
    );

    // A completion reaching two passive products sells exactly what was held.
    wait_all_passive(&s).await;
    let id = both["id"].as_str().unwrap();
    let (st, r) = s
        .post(&format!("/v1/reservations/{id}/complete"), json!({}))
        .await;
    assert_eq!(
        (st, r["status"].as_str()),
        (StatusCode::OK, Some("completed"))
    );
    let (h1, h2) = (s.product_state("H1").await, s.product_state("H2").await);
    assert_eq!(
        (h1["on_hand"].as_u64(), h1["reserved"].as_u64()),
        (Some(8), Some(1))
    );
    assert_eq!(
        (h2["on_hand"].as_u64(), h2["reserved"].as_u64()),
        (Some(7), Some(0))
    );

    // Concurrent buyers racing the revival of a passive product that holds stock: exactly
    // the available units are reserved.
    wait_all_passive(&s).await;
    let body = json!({"items": [{"sku": "H1", "quantity": 1}], "ttl_seconds": 600});
    let won = concurrent_creates(&s, "/v1/reservations", body, 50).await;
    assert_eq!(won, 7, "available was 8 - 1");
    let (_, after_restart) = s.reserve(&[("H2", 1)], 6).await;

    // After kill -9 every product starts passive, holds intact, and the alarm still fires.
    wait_all_passive(&s).await;
    let before = (s.product_state("H1").await, s.product_state("H2").await);
    let s = kill_verify_restart(&mut s, &data);
    assert_eq!(gauge(&s, "stockd_live_actors ").await, 0.0);
    assert_eq!(
        (s.product_state("H1").await, s.product_state("H2").await),
        before
    );
    let after_restart_id = after_restart["id"].as_str().unwrap();
    assert_eq!(
        s.get(&format!("/v1/reservations/{after_restart_id}"))
            .await
            .1["status"],
        "active",
        "the restart took longer than the 6 s hold"
    );
    assert_eq!(
        s.reservation(kept["id"].as_str().unwrap()).await["status"],
        "active"
    );
    let after_restart = wait_expired(&s, after_restart_id).await;
    assert_expiry_logged(&s, "H2", &after_restart).await;
    assert_eq!(s.product_state("H2").await["reserved"], 0);
    assert_eq!(s.product_state("H1").await["reserved"], 8);
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
    let (_, held) = s.reserve(&[("P2", 3)], 600).await;
    let (_, expiring) = s.reserve(&[("P3", 4)], 1).await;
    let expiring = expiring["id"].as_str().unwrap().to_string();

    // P1 idles with nothing held, P2 with its hold, P3 once its hold expired.
    wait_expired(&s, &expiring).await;
    wait_passive(&s, 3.0).await;
    assert_eq!(
        gauge(&s, "stockd_live_actors ").await,
        0.0,
        "a product with holds passivates too"
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
        let body = json!({"items": [{"sku": "P1", "quantity": 1}]});
        let won = concurrent_creates(&s, "/v1/sales", body, 60).await;
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
    let s = kill_verify_restart(&mut s, &data);
    // Every product starts passive, P2 with its hold.
    let census = (
        gauge(&s, "stockd_live_actors ").await,
        gauge(&s, "stockd_passive_products ").await,
    );
    assert_eq!(census, (0.0, 3.0));
    assert_eq!(
        (
            s.product_state("P1").await,
            s.product_state("P2").await,
            s.product_state("P3").await
        ),
        before
    );
    assert_eq!(
        s.reservation(held["id"].as_str().unwrap()).await["status"],
        "active"
    );
}
