//! Timed holds: released by the server's own timer, and released at start when their time
//! passed while the server was down. (Kept in a binary of its own: it waits on real time.)

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_second_hold_is_released_and_logged_as_expired() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir.path().join("data"));
    s.product("T", 5).await;
    s.product("U", 5).await;
    let (_, r) = s.reserve(&[("T", 2), ("U", 1)], 1).await;
    let id = r["id"].as_str().unwrap();
    assert_eq!(s.product_state("T").await["reserved"], 2);
    // The contract: released within one second of expires_at. The wait here is generous
    // (shared machines); the bound is checked on the server's own record time below.
    s.wait_status(id, "expired", Duration::from_secs(10)).await;
    for sku in ["T", "U"] {
        let p = s.product_state(sku).await;
        assert_eq!(
            (p["reserved"].as_u64(), p["available"].as_u64()),
            (Some(0), Some(5)),
            "{sku}"
        );
        assert_expiry_logged(&s, sku, &r).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_hold_outlives_its_first_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir.path().join("data"));
    s.product("V", 5).await;
    let (_, r) = s.reserve(&[("V", 1)], 1).await;
    let id = r["id"].as_str().unwrap();
    let (st, _) = s
        .post(
            &format!("/v1/reservations/{id}/extend"),
            serde_json::json!({"ttl_seconds": 600}),
        )
        .await;
    assert_eq!(st, reqwest::StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(s.reservation(id).await["status"], "active");
    assert_eq!(s.product_state("V").await["reserved"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_that_expired_while_down_is_released_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = start(&data);
    s.product("W", 5).await;
    s.product("X", 5).await;
    let (_, short) = s.reserve(&[("W", 1), ("X", 2)], 1).await;
    let (_, long) = s.reserve(&[("W", 2)], 3600).await;
    s.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    let s = start(&data);
    // Released before the server said it was listening: no waiting here.
    let (_, r) = s
        .get(&format!(
            "/v1/reservations/{}",
            short["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(r["status"], "expired");
    assert_eq!(
        s.reservation(long["id"].as_str().unwrap()).await["status"],
        "active"
    );
    let (w, x) = (s.product_state("W").await, s.product_state("X").await);
    assert_eq!(
        (w["reserved"].as_u64(), x["reserved"].as_u64()),
        (Some(2), Some(0))
    );
    let (_, h) = s.get("/v1/products/X/history?limit=1").await;
    assert_eq!(h["entries"][0]["metadata"]["reason"], "expired");
}
