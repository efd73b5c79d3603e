//! Overload: at ten times the concurrency the server admits, it answers 503 overloaded with
//! Retry-After instead of queueing, its memory stays bounded, the counts stay exact, and it
//! serves normally once the load drops.

mod common;

use std::collections::HashMap;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_the_load_is_shed_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    let admitted = 32;
    let s = try_start_with(
        &dir.path().join("data"),
        &[
            "--max-concurrent-requests",
            &admitted.to_string(),
            "--mailbox-capacity",
            "16",
        ],
    )
    .unwrap();
    s.product("HOT", 1_000_000).await;
    let rss_before = s.rss_kib();

    let connections = admitted * 10;
    let per_connection = 20;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let url = s.url("/v1/reservations");
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut seen: Vec<(StatusCode, Option<String>, String)> = Vec::new();
                for _ in 0..per_connection {
                    let r = client
                        .post(&url)
                        .json(
                            &json!({"items": [{"sku": "HOT", "quantity": 1}], "ttl_seconds": 3600}),
                        )
                        .send()
                        .await
                        .expect("the server answers, even when overloaded");
                    let retry_after = r
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_string());
                    let (status, body) = decode(r).await;
                    seen.push((
                        status,
                        retry_after,
                        body["code"].as_str().unwrap_or("").to_string(),
                    ));
                }
                seen
            })
        })
        .collect();
    let mut counts: HashMap<StatusCode, u64> = HashMap::new();
    for t in tasks {
        for (status, retry_after, code) in t.await.unwrap() {
            *counts.entry(status).or_default() += 1;
            if status != StatusCode::CREATED {
                assert_eq!(
                    (status, code.as_str()),
                    (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
                );
                assert_eq!(retry_after.as_deref(), Some("1"), "503 without Retry-After");
            }
        }
    }
    let created = counts.get(&StatusCode::CREATED).copied().unwrap_or(0);
    let shed = counts
        .get(&StatusCode::SERVICE_UNAVAILABLE)
        .copied()
        .unwrap_or(0);
    eprintln!(
        "{created} admitted, {shed} shed; RSS {rss_before} KiB before, {} KiB after",
        s.rss_kib()
    );
    assert_eq!(created + shed, (connections * per_connection) as u64);
    assert!(
        shed > 0,
        "ten times the admitted concurrency must shed something"
    );
    assert!(created > 0, "and still serve");
    // Bounded: a few hundred requests in flight at most, not an unbounded queue.
    assert!(
        s.rss_kib() < rss_before + 200 * 1024,
        "memory grew by more than 200 MiB"
    );
    // Exact: every admitted reservation is held, nothing else.
    assert_eq!(
        s.product_state("HOT").await["reserved"].as_u64(),
        Some(created)
    );
    // Recovers once the load drops.
    for _ in 0..20 {
        let (st, body) = s.reserve(&[("HOT", 1)], 3600).await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_times_out_with_408_and_changes_nothing() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let s = try_start_with(&dir.path().join("data"), &["--request-timeout-ms", "300"]).unwrap();
    s.product("SLOW", 10).await;
    let before = s.product_state("SLOW").await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
        let partial = "{\"items\": [{\"sku\": \"SLOW\",";
        write!(
            stream,
            "POST /v1/reservations HTTP/1.1\r\nHost: stockd\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{partial}"
        )
        .unwrap();
        // ... and the rest never comes.
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("request_timeout") && answer.contains("application/problem+json"),
        "{answer}"
    );
    assert_eq!(s.product_state("SLOW").await, before);
}
