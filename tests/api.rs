//! Every endpoint over real HTTP: success paths, each error code, and no state change on error.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Snapshot of everything an error must not change: the products and their history.
async fn snapshot(s: &Server, skus: &[&str]) -> Vec<Value> {
    let mut out = Vec::new();
    for sku in skus {
        out.push(s.get(&format!("/v1/products/{sku}")).await.1);
        out.push(
            s.get(&format!("/v1/products/{sku}/history?limit=1000"))
                .await
                .1,
        );
    }
    out
}

async fn expect_error(
    s: &Server,
    skus: &[&str],
    call: impl std::future::Future<Output = (StatusCode, Value)>,
    status: StatusCode,
    code: &str,
) -> Value {
    let before = snapshot(s, skus).await;
    let (got, body) = call.await;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(
        snapshot(s, skus).await,
        before,
        "state changed after a {code} error"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_crud_errors_and_etags() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir.path().join("data"));
    let c = &s.client;

    assert_eq!(s.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(s.get("/readyz").await.0, StatusCode::OK);

    // Create: defaults, then update (an audited set).
    let (st, p) = s.put("/v1/products/SKU-1", json!({"name": "Shoe"})).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(
        (
            p["on_hand"].as_u64(),
            p["low_stock_threshold"].as_u64(),
            p["status"].as_str()
        ),
        (Some(0), Some(10), Some("out_of_stock"))
    );
    let (st, p) = s
        .put(
            "/v1/products/SKU-1",
            json!({"on_hand": 50, "low_stock_threshold": 5}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{p}");
    assert_eq!(
        (
            p["on_hand"].as_u64(),
            p["available"].as_u64(),
            p["status"].as_str(),
            p["version"].as_u64()
        ),
        (Some(50), Some(50), Some("in_stock"), Some(2))
    );
    assert_eq!(p["name"], "Shoe");

    // GET with ETag.
    let r = c.get(s.url("/v1/products/SKU-1")).send().await.unwrap();
    assert_eq!(r.headers()["etag"], "\"2\"");
    let skus = ["SKU-1"];

    // Bad input on PUT: each refused, nothing changed.
    expect_error(
        &s,
        &skus,
        s.put("/v1/products/SKU-1", json!({"on_hand": -1})),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_error(
        &s,
        &skus,
        s.put(
            "/v1/products/SKU-1",
            json!({"on_hand": 1_000_000_000_001u64}),
        ),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_error(
        &s,
        &skus,
        s.put("/v1/products/SKU-1", json!({"colour": "red"})),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_error(
        &s,
        &skus,
        s.put("/v1/products/bad%20sku", json!({})),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_error(
        &s,
        &skus,
        s.put(&format!("/v1/products/{}", "x".repeat(65)), json!({})),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_error(
        &s,
        &skus,
        async {
            decode(
                c.put(s.url("/v1/products/SKU-1"))
                    .header("content-type", "text/plain")
                    .body("{}")
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        },
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    expect_error(
        &s,
        &skus,
        async {
            let big = format!("{{\"name\": \"{}\"}}", "x".repeat(70_000));
            decode(
                c.put(s.url("/v1/products/SKU-1"))
                    .header("content-type", "application/json")
                    .body(big)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        },
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    expect_error(
        &s,
        &skus,
        async {
            decode(
                c.put(s.url("/v1/products/SKU-1"))
                    .header("content-type", "application/json")
                    .body("{not json")
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        },
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;

    // If-Match: stale → 412, current → 200.
    expect_error(
        &s,
        &skus,
        async {
            decode(
                c.put(s.url("/v1/products/SKU-1"))
                    .header("if-match", "\"1\"")
                    .json(&json!({"on_hand": 7}))
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        },
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
    )
    .await;
    expect_error(
        &s,
        &skus,
        async {
            decode(
                c.post(s.url("/v1/products/SKU-1/restock"))
                    .header("if-match", "\"1\"")
                    .json(&json!({"quantity": 7}))
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        },
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
    )
    .await;
    expect_error(
        &s,
        &skus,
        async {
            decode(
                c.post(s.url("/v1/products/SKU-1/adjust"))
                    .header("if-match", "nonsense")
                    .json(&json!({"delta": 1, "reason": "x"}))
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        },
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    let r = c
        .post(s.url("/v1/products/SKU-1/restock"))
        .header("if-match", "\"2\"")
        .json(&json!({"quantity": 10, "reference": "PO-1", "note": "truck"}))
        .send()
        .await
        .unwrap();
    let (st, p) = decode(r).await;
    assert_eq!(st, StatusCode::OK, "{p}");
    assert_eq!(
        (p["on_hand"].as_u64(), p["version"].as_u64()),
        (Some(60), Some(3))
    );

    // Restock errors.
    expect_error(
        &s,
        &skus,
        s.post("/v1/products/SKU-1/restock", json!({"quantity": 0})),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_error(
        &s,
        &skus,
        s.post(
            "/v1/products/SKU-1/restock",
            json!({"quantity": 1_000_000_001u64}),
        ),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_error(
        &s,
        &skus,
        s.post("/v1/products/NOPE/restock", json!({"quantity": 1})),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_error(
        &s,
        &skus,
        s.post("/v1/products/SKU-1/restock", json!({})),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;

    // Adjust: both signs; refused below reserved or zero.
    let (st, p) = s
        .post(
            "/v1/products/SKU-1/adjust",
            json!({"delta": -5, "reason": "damaged"}),
        )
        .await;
    assert_eq!((st, p["on_hand"].as_u64()), (StatusCode::OK, Some(55)));
    let (st, p) = s
        .post(
            "/v1/products/SKU-1/adjust",
            json!({"delta": 2, "reason": "found"}),
        )
        .await;
    assert_eq!((st, p["on_hand"].as_u64()), (StatusCode::OK, Some(57)));
    let (st, res) = s.reserve(&[("SKU-1", 50)], 600).await;
    assert_eq!(st, StatusCode::CREATED, "{res}");
    expect_error(
        &s,
        &skus,
        s.post(
            "/v1/products/SKU-1/adjust",
            json!({"delta": -8, "reason": "x"}),
        ),
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    expect_error(
        &s,
        &skus,
        s.put("/v1/products/SKU-1", json!({"on_hand": 49})),
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    expect_error(
        &s,
        &skus,
        s.post(
            "/v1/products/SKU-1/adjust",
            json!({"delta": 0, "reason": "x"}),
        ),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_error(
        &s,
        &skus,
        s.post("/v1/products/SKU-1/adjust", json!({"delta": 3})),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_error(
        &s,
        &skus,
        s.post(
            "/v1/products/SKU-1/adjust",
            json!({"delta": 3, "reason": " "}),
        ),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_error(
        &s,
        &skus,
        s.post(
            "/v1/products/NOPE/adjust",
            json!({"delta": 3, "reason": "x"}),
        ),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let (st, p) = s
        .post(
            "/v1/products/SKU-1/adjust",
            json!({"delta": -7, "reason": "exactly to reserved"}),
        )
        .await;
    assert_eq!(
        (
            st,
            p["on_hand"].as_u64(),
            p["available"].as_u64(),
            p["status"].as_str()
        ),
        (StatusCode::OK, Some(50), Some(0), Some("out_of_stock"))
    );
    // on_hand ceiling.
    s.put("/v1/products/BIG", json!({"on_hand": 1_000_000_000_000u64}))
        .await;
    expect_error(
        &s,
        &["BIG"],
        s.post("/v1/products/BIG/restock", json!({"quantity": 1})),
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;

    // Returns.
    let (st, p) = s
        .post(
            "/v1/products/SKU-1/returns",
            json!({"quantity": 3, "reference": "RMA-9"}),
        )
        .await;
    assert_eq!((st, p["on_hand"].as_u64()), (StatusCode::OK, Some(53)));
    expect_error(
        &s,
        &skus,
        s.post("/v1/products/SKU-1/returns", json!({"quantity": 0})),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_error(
        &s,
        &skus,
        s.post("/v1/products/NOPE/returns", json!({"quantity": 1})),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // GET errors.
    assert_eq!(s.get("/v1/products/NOPE").await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.get("/v1/products/a%20b").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(s.get("/v1/nothing-here").await.1["code"], "not_found");
    let r = c.delete(s.url("/v1/products/SKU-1")).send().await.unwrap();
    assert_eq!(decode(r).await.0, StatusCode::METHOD_NOT_ALLOWED);

    // History: newest first, chained, paged, filtered.
    let (st, h) = s.get("/v1/products/SKU-1/history").await;
    assert_eq!(st, StatusCode::OK);
    let entries = h["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["return", "adjust", "reserve", "adjust", "adjust", "restock", "set", "create"]
    );
    for pair in entries.windows(2) {
        assert_eq!(
            pair[0]["seq"].as_u64().unwrap(),
            pair[1]["seq"].as_u64().unwrap() + 1
        );
        assert_eq!(pair[0]["quantity_before"], pair[1]["quantity_after"]);
        assert_eq!(pair[0]["reserved_before"], pair[1]["reserved_after"]);
    }
    let restock = &entries[5];
    assert_eq!(
        (
            restock["reference"].as_str(),
            restock["note"].as_str(),
            restock["change"].as_i64(),
            restock["actor"].as_str()
        ),
        (Some("PO-1"), Some("truck"), Some(10), Some("anonymous"))
    );
    assert_eq!(entries[3]["metadata"]["reason"], "found");
    assert_eq!(entries[4]["metadata"]["reason"], "damaged");
    assert_eq!(entries[2]["reservation_id"], res["id"]);
    let (_, page) = s.get("/v1/products/SKU-1/history?limit=3").await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 3);
    let next = page["next"].as_u64().unwrap();
    let (_, page2) = s
        .get(&format!("/v1/products/SKU-1/history?limit=3&before={next}"))
        .await;
    assert_eq!(page2["entries"][0]["seq"].as_u64().unwrap(), next - 1);
    let (_, adjusts) = s.get("/v1/products/SKU-1/history?action=adjust").await;
    assert_eq!(adjusts["entries"].as_array().unwrap().len(), 3);
    assert_eq!(
        s.get("/v1/products/SKU-1/history?action=fly").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.get("/v1/products/SKU-1/history?limit=0").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.get("/v1/products/SKU-1/history?bogus=1").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.get("/v1/products/NOPE/history").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_list_filters_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir.path().join("data"));
    // Created out of SKU order: listing is in SKU order, not the order created.
    s.product("D", 50).await; // in_stock
    s.product("B", 5).await; // low_stock
    s.product("A", 100).await; // in_stock
    s.product("C", 0).await; // out_of_stock
    let (st, all) = s.get("/v1/products").await;
    assert_eq!(st, StatusCode::OK);
    let skus: Vec<&str> = all["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sku"].as_str().unwrap())
        .collect();
    assert_eq!(skus, ["A", "B", "C", "D"]);
    assert!(all["next"].is_null());
    let (_, low) = s.get("/v1/products?status=low_stock").await;
    assert_eq!(low["products"][0]["sku"], "B");
    assert_eq!(low["products"].as_array().unwrap().len(), 1);
    let (_, out) = s.get("/v1/products?status=out_of_stock").await;
    assert_eq!(out["products"][0]["sku"], "C");
    let (_, page) = s.get("/v1/products?limit=2").await;
    assert_eq!(page["next"], "B");
    let (_, page2) = s.get("/v1/products?limit=2&after=B").await;
    let skus: Vec<&str> = page2["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sku"].as_str().unwrap())
        .collect();
    assert_eq!(skus, ["C", "D"]);
    let (_, instock) = s.get("/v1/products?status=in_stock&limit=1").await;
    assert_eq!(
        (
            instock["products"][0]["sku"].as_str(),
            instock["next"].as_str()
        ),
        (Some("A"), Some("A"))
    );
    for bad in [
        "/v1/products?status=rare",
        "/v1/products?limit=1001",
        "/v1/products?limit=x",
        "/v1/products?after=a%20b",
    ] {
        let (st, body) = s.get(bad).await;
        assert_eq!(
            (st, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{bad}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_lifecycle_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir.path().join("data"));
    s.product("H", 10).await;
    s.product("K", 4).await;
    s.product("Z", 0).await;
    let skus = ["H", "K", "Z"];

    // Create with everything.
    let (st, r) = s
        .post("/v1/reservations", json!({"items": [{"sku": "K", "quantity": 2}, {"sku": "H", "quantity": 3}], "ttl_seconds": 300,
            "session_id": "sess", "user_id": "u1", "reference": "cart-7", "metadata": {"channel": "web"}}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    assert_eq!(
        (
            r["status"].as_str(),
            r["session_id"].as_str(),
            r["user_id"].as_str(),
            r["reference"].as_str()
        ),
        (Some("active"), Some("sess"), Some("u1"), Some("cart-7"))
    );
    assert_eq!(r["metadata"]["channel"], "web");
    let id = r["id"].as_str().unwrap().to_string();
    let created = chrono::DateTime::parse_from_rfc3339(r["created_at"].as_str().unwrap()).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(r["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - created).num_seconds(), 300);
    assert!(r["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(s.get(&format!("/v1/reservations/{id}")).await.1, r);
    let h = s.product_state("H").await;
    assert_eq!(
        (h["reserved"].as_u64(), h["available"].as_u64()),
        (Some(3), Some(7))
    );

    // Refusals: all or nothing, per-item report.
    let body = expect_error(
        &s,
        &skus,
        s.reserve(&[("H", 1), ("K", 3)], 60),
        StatusCode::CONFLICT,
        "insufficient_stock",
    )
    .await;
    assert_eq!(
        body["items"],
        json!([
        {"sku": "H", "requested": 1, "available": 7, "error": null},
        {"sku": "K", "requested": 3, "available": 2, "error": "insufficient_stock"}])
    );
    let body = expect_error(
        &s,
        &skus,
        s.reserve(&[("Z", 1)], 60),
        StatusCode::CONFLICT,
        "insufficient_stock",
    )
    .await;
    assert_eq!(body["items"][0]["error"], "out_of_stock");
    let body = expect_error(
        &s,
        &skus,
        s.reserve(&[("H", 1), ("NOPE", 1)], 60),
        StatusCode::CONFLICT,
        "insufficient_stock",
    )
    .await;
    assert_eq!(body["items"][1]["error"], "not_found");
    let body = expect_error(
        &s,
        &skus,
        s.reserve(&[("AAA", 1), ("H", 1)], 60),
        StatusCode::CONFLICT,
        "insufficient_stock",
    )
    .await;
    assert_eq!(body["items"][0]["error"], "not_found");
    for bad in [
        json!({"items": []}),
        json!({"items": [{"sku": "H", "quantity": 0}]}),
        json!({"items": [{"sku": "H", "quantity": 1}, {"sku": "H", "quantity": 1}]}),
        json!({"items": [{"sku": "H", "quantity": 1}], "ttl_seconds": 0}),
        json!({"items": [{"sku": "H", "quantity": 1}], "ttl_seconds": 86401}),
        json!({"items": [{"sku": "bad sku", "quantity": 1}]}),
        json!({"items": [{"sku": "H", "quantity": 1}], "user_id": "u".repeat(2000)}),
        json!({"items": [{"sku": "H", "quantity": 1}], "metadata": {"blob": "m".repeat(5000)}}),
        json!({"items": [{"sku": "H", "quantity": 1}], "extra": true}),
        json!({"items": (0..101).map(|i| json!({"sku": format!("S{i}"), "quantity": 1})).collect::<Vec<_>>()}),
        json!({"id": "not-a-uuid", "items": [{"sku": "H", "quantity": 1}]}),
    ] {
        expect_error(
            &s,
            &skus,
            s.post("/v1/reservations", bad.clone()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }
    assert_eq!(
        s.get("/v1/reservations/not-a-uuid").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.get(&format!("/v1/reservations/{}", uuid::Uuid::new_v4()))
            .await
            .1["code"],
        "not_found"
    );

    // Extend while active.
    let (st, ext) = s
        .post(
            &format!("/v1/reservations/{id}/extend"),
            json!({"ttl_seconds": 1200}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{ext}");
    assert!(ext["expires_at"].as_str().unwrap() > r["expires_at"].as_str().unwrap());
    expect_error(
        &s,
        &skus,
        s.post(
            &format!("/v1/reservations/{id}/extend"),
            json!({"ttl_seconds": 0}),
        ),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_error(
        &s,
        &skus,
        s.post(
            &format!("/v1/reservations/{}/extend", uuid::Uuid::new_v4()),
            json!({"ttl_seconds": 5}),
        ),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // Partial completion: sell 1 of H's 3, none of K; the rest is released.
    expect_error(
        &s,
        &skus,
        s.post(
            &format!("/v1/reservations/{id}/complete"),
            json!({"items": [{"sku": "H", "quantity": 4}]}),
        ),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_error(
        &s,
        &skus,
        s.post(
            &format!("/v1/reservations/{id}/complete"),
            json!({"items": [{"sku": "Z", "quantity": 1}]}),
        ),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    let (st, done) = s
        .post(
            &format!("/v1/reservations/{id}/complete"),
            json!({"items": [{"sku": "H", "quantity": 1}], "reference": "pay-1"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "completed");
    assert_eq!(
        done["sold_items"],
        json!([{"sku": "K", "quantity": 0}, {"sku": "H", "quantity": 1}])
    );
    let (h, k) = (s.product_state("H").await, s.product_state("K").await);
    assert_eq!(
        (h["on_hand"].as_u64(), h["reserved"].as_u64()),
        (Some(9), Some(0))
    );
    assert_eq!(
        (k["on_hand"].as_u64(), k["reserved"].as_u64()),
        (Some(4), Some(0))
    );
    // Completing again: 200, no second sale.
    let (st, again) = s
        .post(&format!("/v1/reservations/{id}/complete"), json!({}))
        .await;
    assert_eq!(
        (st, again["status"].as_str()),
        (StatusCode::OK, Some("completed"))
    );
    assert_eq!(s.product_state("H").await["on_hand"], 9);
    // Cancel / extend a completed one: invalid transition.
    expect_error(
        &s,
        &skus,
        s.post(&format!("/v1/reservations/{id}/cancel"), json!({})),
        StatusCode::CONFLICT,
        "invalid_transition",
    )
    .await;
    expect_error(
        &s,
        &skus,
        s.post(
            &format!("/v1/reservations/{id}/extend"),
            json!({"ttl_seconds": 5}),
        ),
        StatusCode::CONFLICT,
        "invalid_transition",
    )
    .await;

    // Cancel: releases; repeat is 200; completing a cancelled one is refused.
    let (_, r2) = s.reserve(&[("H", 2)], 300).await;
    let id2 = r2["id"].as_str().unwrap();
    let (st, c) = s
        .post(
            &format!("/v1/reservations/{id2}/cancel"),
            json!({"reason": "payment failed"}),
        )
        .await;
    assert_eq!(
        (st, c["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    let r = s
        .client
        .post(s.url(&format!("/v1/reservations/{id2}/cancel")))
        .send()
        .await
        .unwrap();
    let (st, c) = decode(r).await;
    assert_eq!(
        (st, c["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    expect_error(
        &s,
        &skus,
        s.post(&format!("/v1/reservations/{id2}/complete"), json!({})),
        StatusCode::CONFLICT,
        "invalid_transition",
    )
    .await;
    assert_eq!(s.product_state("H").await["reserved"], 0);
    let (_, hist) = s.get("/v1/products/H/history?action=release").await;
    assert_eq!(hist["entries"][0]["metadata"]["reason"], "cancelled");
    assert_eq!(hist["entries"][0]["note"], "payment failed");
    expect_error(
        &s,
        &skus,
        s.post(
            &format!("/v1/reservations/{}/cancel", uuid::Uuid::new_v4()),
            json!({}),
        ),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_error(
        &s,
        &skus,
        s.post(
            &format!("/v1/reservations/{}/complete", uuid::Uuid::new_v4()),
            json!({}),
        ),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_reservations_reacquire_or_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir.path().join("data"));
    s.product("E", 3).await;
    s.product("F", 5).await;
    let (_, r1) = s.reserve(&[("E", 2), ("F", 1)], 1).await;
    let (_, r2) = s.reserve(&[("E", 1)], 1).await;
    let (id1, id2) = (
        r1["id"].as_str().unwrap().to_string(),
        r2["id"].as_str().unwrap().to_string(),
    );
    for id in [&id1, &id2] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            if s.reservation(id).await["status"] == "expired" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "reservation {id} never expired"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    // Extend an expired one: reservation_expired. Cancel: 200 with its status.
    let (st, b) = s
        .post(
            &format!("/v1/reservations/{id1}/extend"),
            json!({"ttl_seconds": 10}),
        )
        .await;
    assert_eq!(
        (st, b["code"].as_str()),
        (StatusCode::CONFLICT, Some("reservation_expired"))
    );
    let (st, b) = s
        .post(&format!("/v1/reservations/{id2}/cancel"), json!({}))
        .await;
    assert_eq!(
        (st, b["status"].as_str()),
        (StatusCode::OK, Some("expired"))
    );
    // Someone takes 2 of E: id1 (needs 2 of E) can no longer re-acquire.
    let (st, _) = s.reserve(&[("E", 2)], 300).await;
    assert_eq!(st, StatusCode::CREATED);
    let before = (s.product_state("E").await, s.product_state("F").await);
    let (st, b) = s
        .post(&format!("/v1/reservations/{id1}/complete"), json!({}))
        .await;
    assert_eq!(
        (st, b["code"].as_str()),
        (StatusCode::CONFLICT, Some("reservation_expired")),
        "{b}"
    );
    assert_eq!(
        (s.product_state("E").await, s.product_state("F").await),
        before
    );
    // id2 (1 of E) still fits: completed with reacquired = true.
    let (st, b) = s
        .post(&format!("/v1/reservations/{id2}/complete"), json!({}))
        .await;
    assert_eq!(
        (st, b["status"].as_str(), b["reacquired"].as_bool()),
        (StatusCode::OK, Some("completed"), Some(true)),
        "{b}"
    );
    let e = s.product_state("E").await;
    assert_eq!(
        (
            e["on_hand"].as_u64(),
            e["reserved"].as_u64(),
            e["available"].as_u64()
        ),
        (Some(2), Some(2), Some(0))
    );
    let (_, hist) = s.get("/v1/products/E/history?limit=1").await;
    assert_eq!(
        (
            hist["entries"][0]["action"].as_str(),
            hist["entries"][0]["metadata"]["reacquired"].as_bool()
        ),
        (Some("complete"), Some(true))
    );
    // The multi-item id1 can complete partially once F alone is asked for.
    let (st, b) = s
        .post(
            &format!("/v1/reservations/{id1}/complete"),
            json!({"items": [{"sku": "F", "quantity": 1}]}),
        )
        .await;
    assert_eq!(
        (st, b["reacquired"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{b}"
    );
    assert_eq!(s.product_state("F").await["on_hand"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sales_and_availability() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir.path().join("data"));
    s.product("P", 5).await;
    s.product("Q", 1).await;
    let skus = ["P", "Q"];
    let (st, a) = s.post("/v1/availability", json!({"items": [{"sku": "P", "quantity": 5}, {"sku": "Q", "quantity": 2}, {"sku": "R", "quantity": 1}]})).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        a,
        json!({"ok": false, "items": [
        {"sku": "P", "requested": 5, "available": 5, "error": null},
        {"sku": "Q", "requested": 2, "available": 1, "error": "insufficient_stock"},
        {"sku": "R", "requested": 1, "available": 0, "error": "not_found"}]})
    );
    let (_, a) = s
        .post(
            "/v1/availability",
            json!({"items": [{"sku": "P", "quantity": 1}]}),
        )
        .await;
    assert_eq!(a["ok"], true);
    expect_error(
        &s,
        &skus,
        s.post("/v1/availability", json!({"items": []})),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;

    let (st, sale) = s.post("/v1/sales", json!({"items": [{"sku": "P", "quantity": 2}, {"sku": "Q", "quantity": 1}], "reference": "pos-1"})).await;
    assert_eq!(st, StatusCode::CREATED, "{sale}");
    assert_eq!(sale["reference"], "pos-1");
    assert_eq!(
        s.get(&format!("/v1/sales/{}", sale["id"].as_str().unwrap()))
            .await
            .1,
        sale
    );
    assert_eq!(
        (
            s.product_state("P").await["on_hand"].as_u64(),
            s.product_state("Q").await["on_hand"].as_u64()
        ),
        (Some(3), Some(0))
    );
    let body = expect_error(
        &s,
        &skus,
        s.post(
            "/v1/sales",
            json!({"items": [{"sku": "P", "quantity": 1}, {"sku": "Q", "quantity": 1}]}),
        ),
        StatusCode::CONFLICT,
        "insufficient_stock",
    )
    .await;
    assert_eq!(body["items"][1]["error"], "out_of_stock");
    expect_error(
        &s,
        &skus,
        s.post("/v1/sales", json!({"items": [{"sku": "P", "quantity": 0}]})),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    let (_, hist) = s.get("/v1/products/P/history?limit=1").await;
    assert_eq!(
        (
            hist["entries"][0]["action"].as_str(),
            hist["entries"][0]["change"].as_i64()
        ),
        (Some("sale"), Some(-2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operation_ids_are_idempotent_also_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = start(&data);
    s.product("I", 10).await;
    let rid = uuid::Uuid::new_v4();
    let body = json!({"id": rid, "items": [{"sku": "I", "quantity": 2}], "ttl_seconds": 600});
    let (st1, first) = s.post("/v1/reservations", body.clone()).await;
    let (st2, second) = s.post("/v1/reservations", body.clone()).await;
    assert_eq!((st1, st2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(first, second);
    assert_eq!(first["id"], rid.to_string());
    assert_eq!(s.product_state("I").await["reserved"], 2);
    let mut other = body.clone();
    other["items"][0]["quantity"] = json!(3);
    assert_eq!(
        s.post("/v1/reservations", other.clone()).await.1["code"],
        "id_reused"
    );

    let restock_id = uuid::Uuid::new_v4();
    let restock = json!({"id": restock_id, "quantity": 5, "reference": "PO"});
    let (_, p1) = s.post("/v1/products/I/restock", restock.clone()).await;
    let (_, p2) = s.post("/v1/products/I/restock", restock.clone()).await;
    assert_eq!(p1, p2);
    assert_eq!(s.product_state("I").await["on_hand"], 15);
    // Same id, another kind of operation: reused.
    assert_eq!(
        s.post("/v1/products/I/returns", restock.clone()).await.1["code"],
        "id_reused"
    );
    assert_eq!(
        s.post(
            "/v1/products/I/restock",
            json!({"id": restock_id, "quantity": 6})
        )
        .await
        .1["code"],
        "id_reused"
    );

    let sale_id = uuid::Uuid::new_v4();
    let sale = json!({"id": sale_id, "items": [{"sku": "I", "quantity": 1}]});
    let (st, s1) = s.post("/v1/sales", sale.clone()).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(s.post("/v1/sales", sale.clone()).await.1, s1);
    assert_eq!(s.product_state("I").await["on_hand"], 14);

    // Concurrent repeats of one new id: one effect.
    let adjust_id = uuid::Uuid::new_v4();
    let adjust = json!({"id": adjust_id, "delta": -1, "reason": "count"});
    let mut handles = Vec::new();
    for _ in 0..20 {
        let (client, url, body) = (
            s.client.clone(),
            s.url("/v1/products/I/adjust"),
            adjust.clone(),
        );
        handles.push(tokio::spawn(async move {
            decode(client.post(url).json(&body).send().await.unwrap()).await
        }));
    }
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.unwrap());
    }
    assert!(
        results
            .iter()
            .all(|(st, b)| *st == StatusCode::OK || b["code"] == "conflict"),
        "{results:?}"
    );
    assert_eq!(s.product_state("I").await["on_hand"], 13);

    let before = s.product_state("I").await;
    s.kill9();
    let s = start(&data);
    assert_eq!(s.product_state("I").await, before);
    assert_eq!(
        s.post("/v1/reservations", body).await,
        (StatusCode::CREATED, first)
    );
    assert_eq!(
        s.post("/v1/reservations", other).await.1["code"],
        "id_reused"
    );
    assert_eq!(
        s.post("/v1/products/I/restock", restock).await,
        (StatusCode::OK, p1)
    );
    assert_eq!(s.post("/v1/sales", sale).await, (StatusCode::CREATED, s1));
    assert_eq!(
        s.post("/v1/products/I/adjust", adjust).await.0,
        StatusCode::OK
    );
    assert_eq!(
        s.product_state("I").await,
        before,
        "repeats after restart must not apply again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_routes() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir.path().join("data"));
    let (st, doc) = s.get("/openapi.json").await;
    assert_eq!(st, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, methods) in paths {
        // Each route has a metrics label of its own (not the catch-all "other").
        assert_eq!(stockd::metrics::route_label(path), path.as_str());
        let concrete = path
            .replace("{sku}", "DOC-1")
            .replace("{id}", &uuid::Uuid::new_v4().to_string());
        for method in methods.as_object().unwrap().keys() {
            operations += 1;
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = s
                .client
                .request(method.clone(), s.url(&concrete))
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let (status, body) = decode(r).await;
            // Whatever the answer (400 for an empty body, 404 for an unknown product...), it
            // must come from the documented route, not from the router's fallbacks.
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} documented but not routed"
            );
            assert_ne!(
                body["detail"], "no such route",
                "{method} {path} documented but not routed"
            );
        }
    }
    // Every route the server has is documented: 7 product, 1 availability, 5 reservation and
    // 2 sale operations, plus /healthz, /readyz, /openapi.json and /metrics.
    assert_eq!(operations, 19, "{:?}", paths.keys().collect::<Vec<_>>());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["responses"]["Problem"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_requests_group_commit_and_stock() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir.path().join("data"));
    s.product("M1", 10).await;
    s.product("M2", 10).await;
    let (_, r) = s.reserve(&[("M1", 2)], 600).await;
    s.reserve(&[("M2", 1)], 600).await;
    s.post(
        &format!("/v1/reservations/{}/cancel", r["id"].as_str().unwrap()),
        json!({}),
    )
    .await;
    s.reserve(&[("M1", 99)], 600).await; // refused
    let text = s.metrics().await;
    let value = |name: &str| metric(&text, name);
    assert_eq!(value("stockd_products "), 2.0);
    assert_eq!(value("stockd_active_reservations "), 1.0);
    // 5 records (2 products, 2 reservations, 1 cancel) in at least one fsync.
    assert_eq!(value("stockd_log_records_per_fsync_sum "), 5.0);
    assert!(value("stockd_log_records_per_fsync_count ") >= 1.0);
    assert!(value("stockd_log_fsync_seconds_count ") >= 1.0);
    assert!(value("stockd_log_written_bytes_total ") > 5.0 * 8.0);
    assert_eq!(value("stockd_mailbox_rejections_total "), 0.0);
    assert_eq!(value("stockd_http_requests_total{method=\"POST\",route=\"/v1/reservations\",status=\"201\"} "), 2.0);
    assert_eq!(value("stockd_http_requests_total{method=\"POST\",route=\"/v1/reservations\",status=\"409\"} "), 1.0);
    // Latency by route and status too: the refusals are timed apart from the holds.
    let timed = |status: &str| {
        value(&format!(
            "stockd_http_request_seconds_count{{method=\"POST\",route=\"/v1/reservations\",status=\"{status}\"}} "
        ))
    };
    assert_eq!(timed("201"), 2.0);
    assert_eq!(timed("409"), 1.0);
}
