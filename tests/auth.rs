//! Tokens and roles: every route × every role, no token and a wrong token → the right
//! 401 / 403 / 2xx; nothing changes on a refusal; the token's name is the audit actor.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret-0123456789";
const CHECKOUT: &str = "checkout-secret-0123456789";
const READ: &str = "read-secret-0123456789";
const WRONG: &str = "wrong-secret-0123456789";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Need {
    Read,
    Checkout,
    Admin,
}

fn grants(caller: &str, need: Need) -> bool {
    match caller {
        "ops" => true,
        "shop" => need != Need::Admin,
        "viewer" => need == Need::Read,
        _ => false,
    }
}

fn secret(caller: &str) -> Option<&'static str> {
    match caller {
        "ops" => Some(ADMIN),
        "shop" => Some(CHECKOUT),
        "viewer" => Some(READ),
        "wrong" => Some(WRONG),
        _ => None,
    }
}

async fn call(
    s: &Server,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (StatusCode, Value, bool) {
    let mut req = s.client.request(method, s.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let challenged = r
        .headers()
        .get("www-authenticate")
        .is_some_and(|v| v == "Bearer");
    let (status, value) = decode(r).await;
    (status, value, challenged)
}

async fn as_admin(s: &Server, method: Method, path: &str, body: Value) -> Value {
    let (st, v, _) = call(s, method, path, Some(body), Some(ADMIN)).await;
    assert!(st.is_success(), "{path}: {st} {v}");
    v
}

async fn snapshot(s: &Server, sku: &str) -> Value {
    let (_, product, _) = call(
        s,
        Method::GET,
        &format!("/v1/products/{sku}"),
        None,
        Some(READ),
    )
    .await;
    let (_, history, _) = call(
        s,
        Method::GET,
        &format!("/v1/products/{sku}/history?limit=1000"),
        None,
        Some(READ),
    )
    .await;
    json!([product, history])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_for_every_role() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = format!("ops:admin:{ADMIN},shop:checkout:{CHECKOUT},viewer:read:{READ}");
    let s = try_start_env(&dir.path().join("data"), &[], &[("STOCKD_TOKENS", &tokens)]).unwrap();
    // Probes need no token.
    assert_eq!(
        call(&s, Method::GET, "/healthz", None, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&s, Method::GET, "/readyz", None, None).await.0,
        StatusCode::OK
    );

    let routes: Vec<(&str, Method, &str, Option<Value>, Need)> = vec![
        (
            "get product",
            Method::GET,
            "/v1/products/{sku}",
            None,
            Need::Read,
        ),
        (
            "list products",
            Method::GET,
            "/v1/products",
            None,
            Need::Read,
        ),
        (
            "history",
            Method::GET,
            "/v1/products/{sku}/history",
            None,
            Need::Read,
        ),
        (
            "get reservation",
            Method::GET,
            "/v1/reservations/{rid}",
            None,
            Need::Read,
        ),
        ("get sale", Method::GET, "/v1/sales/{sid}", None, Need::Read),
        (
            "put product",
            Method::PUT,
            "/v1/products/{sku}",
            Some(json!({"on_hand": 120})),
            Need::Admin,
        ),
        (
            "restock",
            Method::POST,
            "/v1/products/{sku}/restock",
            Some(json!({"quantity": 5})),
            Need::Admin,
        ),
        (
            "adjust",
            Method::POST,
            "/v1/products/{sku}/adjust",
            Some(json!({"delta": -1, "reason": "count"})),
            Need::Admin,
        ),
        (
            "returns",
            Method::POST,
            "/v1/products/{sku}/returns",
            Some(json!({"quantity": 1})),
            Need::Checkout,
        ),
        (
            "availability",
            Method::POST,
            "/v1/availability",
            Some(json!({"items": [{"sku": "{sku}", "quantity": 1}]})),
            Need::Checkout,
        ),
        (
            "reserve",
            Method::POST,
            "/v1/reservations",
            Some(json!({"items": [{"sku": "{sku}", "quantity": 1}]})),
            Need::Checkout,
        ),
        (
            "complete",
            Method::POST,
            "/v1/reservations/{rid}/complete",
            Some(json!({})),
            Need::Checkout,
        ),
        (
            "cancel",
            Method::POST,
            "/v1/reservations/{rid}/cancel",
            Some(json!({})),
            Need::Checkout,
        ),
        (
            "extend",
            Method::POST,
            "/v1/reservations/{rid}/extend",
            Some(json!({"ttl_seconds": 1000})),
            Need::Checkout,
        ),
        (
            "sale",
            Method::POST,
            "/v1/sales",
            Some(json!({"items": [{"sku": "{sku}", "quantity": 1}]})),
            Need::Checkout,
        ),
    ];
    let mut n = 0;
    for (label, method, template, body, need) in routes {
        for caller in ["ops", "shop", "viewer", "none", "wrong"] {
            n += 1;
            // Fresh fixtures for every cell: a product, an active reservation, a sale.
            let sku = format!("M{n}");
            as_admin(
                &s,
                Method::PUT,
                &format!("/v1/products/{sku}"),
                json!({"on_hand": 100}),
            )
            .await;
            let (_, r, _) = call(
                &s,
                Method::POST,
                "/v1/reservations",
                Some(json!({"items": [{"sku": sku, "quantity": 2}]})),
                Some(CHECKOUT),
            )
            .await;
            let (_, sale, _) = call(
                &s,
                Method::POST,
                "/v1/sales",
                Some(json!({"items": [{"sku": sku, "quantity": 1}]})),
                Some(CHECKOUT),
            )
            .await;
            let fill = |t: &str| {
                t.replace("{sku}", &sku)
                    .replace("{rid}", r["id"].as_str().unwrap())
                    .replace("{sid}", sale["id"].as_str().unwrap())
            };
            let path = fill(template);
            let body = body
                .as_ref()
                .map(|b| serde_json::from_str(&fill(&b.to_string())).unwrap());
            let before = snapshot(&s, &sku).await;
            let reservation_before = call(
                &s,
                Method::GET,
                &fill("/v1/reservations/{rid}"),
                None,
                Some(READ),
            )
            .await
            .1;
            let (status, value, challenged) =
                call(&s, method.clone(), &path, body, secret(caller)).await;
            let cell = format!("{label} as {caller}");
            if secret(caller).is_none() || caller == "wrong" {
                assert_eq!(
                    (status, value["code"].as_str(), challenged),
                    (StatusCode::UNAUTHORIZED, Some("unauthorized"), true),
                    "{cell}"
                );
            } else if !grants(caller, need) {
                assert_eq!(
                    (status, value["code"].as_str()),
                    (StatusCode::FORBIDDEN, Some("forbidden")),
                    "{cell}"
                );
            } else {
                assert!(status.is_success(), "{cell}: {status} {value}");
                if method != Method::GET && label != "availability" && label != "extend" {
                    let (_, h, _) = call(
                        &s,
                        Method::GET,
                        &format!("/v1/products/{sku}/history?limit=1"),
                        None,
                        Some(READ),
                    )
                    .await;
                    assert_eq!(
                        h["entries"][0]["actor"], caller,
                        "{cell}: the token's name is the actor"
                    );
                }
                continue;
            }
            assert_eq!(
                snapshot(&s, &sku).await,
                before,
                "{cell}: a refusal changed state"
            );
            let reservation_after = call(
                &s,
                Method::GET,
                &fill("/v1/reservations/{rid}"),
                None,
                Some(READ),
            )
            .await
            .1;
            assert_eq!(
                reservation_after, reservation_before,
                "{cell}: a refusal changed the reservation"
            );
        }
    }
    assert!(
        !s.stderr().contains(ADMIN)
            && !s.stderr().contains(WRONG)
            && !s.stderr().contains(CHECKOUT),
        "a secret was logged"
    );
}

/// The token is checked before the method: a wrong method on a protected path is refused
/// like any other request without the right token, and answered 405 only to a caller whose
/// token would be enough for a write there. Unknown paths stay 404 and public routes public.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_checked_before_the_method() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = format!("ops:admin:{ADMIN},shop:checkout:{CHECKOUT},viewer:read:{READ}");
    let s = try_start_env(&dir.path().join("data"), &[], &[("STOCKD_TOKENS", &tokens)]).unwrap();
    let (status, body, challenged) = call(&s, Method::DELETE, "/v1/reservations", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(challenged);
    assert_eq!(body["code"], "unauthorized");
    let (status, body, _) = call(&s, Method::DELETE, "/v1/reservations", None, Some(READ)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    for token in [CHECKOUT, ADMIN] {
        let (status, body, _) =
            call(&s, Method::DELETE, "/v1/reservations", None, Some(token)).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    }
    let (status, body, _) = call(&s, Method::PATCH, "/metrics", None, Some(WRONG)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body, _) = call(&s, Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body, _) = call(&s, Method::GET, "/v1/nothing-here", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "not_found");
    let (status, body, _) = call(&s, Method::POST, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    let (status, _, _) = call(&s, Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn token_file_and_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(
        &file,
        format!("# name role secret\nops admin {ADMIN}\n\nviewer read {READ}\n"),
    )
    .unwrap();
    let s = try_start_with(
        &dir.path().join("data"),
        &["--tokens", file.to_str().unwrap()],
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        assert_eq!(
            call(
                &s,
                Method::PUT,
                "/v1/products/A",
                Some(json!({})),
                Some(ADMIN)
            )
            .await
            .0,
            StatusCode::CREATED
        );
        assert_eq!(
            call(
                &s,
                Method::PUT,
                "/v1/products/A",
                Some(json!({})),
                Some(READ)
            )
            .await
            .0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            call(&s, Method::GET, "/v1/products/A", None, None).await.0,
            StatusCode::UNAUTHORIZED
        );
    });
    drop(s);
    for (bad, why) in [
        ("ops:admin:short", "shorter"),
        ("ops:king:aaaaaaaaaaaaaaaaaaaa", "role"),
        ("ops:admin", "name:role:secret"),
    ] {
        let err = try_start_env(&dir.path().join("data2"), &[], &[("STOCKD_TOKENS", bad)])
            .err()
            .expect("must refuse");
        assert!(
            err.contains("invalid token configuration") && err.contains(why),
            "{bad}: {err}"
        );
        assert!(
            !err.contains("aaaaaaaaaaaaaaaaaaaa"),
            "a secret was printed"
        );
    }
}
