//! Connections are bounded: past `--max-connections` a new connection is answered 503 with
//! Retry-After and closed while the open ones keep working, and a client that does not send
//! its request head within `--header-read-timeout-ms` (nothing at all, a head trickled a byte
//! at a time, or silence after an answer on a kept-alive connection) is disconnected. Raw TCP
//! to a real server, so that the test controls exactly which bytes go out and when.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Generous: a liveness bound on a shared machine, not a timing assertion.
const WAIT: Duration = Duration::from_secs(20);

fn connect(s: &Server) -> TcpStream {
    let addr = s.base.strip_prefix("http://").expect("http base");
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream
}

/// One response: status, lower-cased headers, body (by Content-Length) as JSON.
fn read_response(stream: &mut TcpStream) -> (u16, Vec<(String, String)>, Value) {
    let (status, headers, body) = read_raw_response(stream);
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// One response: status, lower-cased headers, body bytes (by Content-Length).
fn read_raw_response(stream: &mut TcpStream) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read the response head");
        assert_eq!(n, 1, "connection closed mid-head after {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).expect("utf-8 head");
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().expect("content-length"))
        .expect("content-length header");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("body");
    (status, headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn request(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, Value) {
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: stockd\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    read_response(stream)
}

fn get(stream: &mut TcpStream, path: &str) -> (u16, Vec<(String, String)>, Value) {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: stockd\r\n\r\n").expect("send");
    read_response(stream)
}

/// True once the server has closed `stream`: a read gives end-of-file or a reset.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
        ),
    }
}

#[test]
fn connections_past_the_limit_are_refused_and_the_open_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let s = try_start_with(&dir.path().join("data"), &["--max-connections", "4"]).unwrap();
    // Raw connections only (no client pool holding one of the four places).
    let mut open: Vec<TcpStream> = (0..4).map(|_| connect(&s)).collect();
    let (status, _, product) = request(
        &mut open[0],
        "PUT",
        "/v1/products/SKU-1",
        r#"{"on_hand":10}"#,
    );
    assert_eq!(status, 201, "{product}");
    for c in open.iter_mut() {
        assert_eq!(get(c, "/healthz").0, 200);
    }

    // A fifth asks for a reservation: refused whole, nothing held, and closed.
    let mut refused = connect(&s);
    let (status, headers, problem) = request(
        &mut refused,
        "POST",
        "/v1/reservations",
        r#"{"items":[{"sku":"SKU-1","quantity":3}],"ttl_seconds":60}"#,
    );
    assert_eq!(status, 503, "{problem}");
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/problem+json")
    );
    assert_eq!(header(&headers, "connection"), Some("close"));
    assert_eq!(problem["code"], "overloaded", "{problem}");
    assert_eq!(problem["status"], 503, "{problem}");
    assert!(
        closed_by_server(&mut refused),
        "a refused connection is closed"
    );

    // The open ones still work, and the refused request changed nothing.
    for c in open.iter_mut() {
        assert_eq!(get(c, "/healthz").0, 200);
    }
    let (status, _, product) = get(&mut open[0], "/v1/products/SKU-1");
    assert_eq!(status, 200);
    assert_eq!(product["reserved"], 0, "{product}");
    assert_eq!(product["available"], 10, "{product}");
    write!(open[1], "GET /metrics HTTP/1.1\r\nHost: stockd\r\n\r\n").unwrap();
    let (status, _, metrics) = read_raw_response(&mut open[1]);
    assert_eq!(status, 200);
    let text = String::from_utf8(metrics).expect("utf-8 metrics");
    let text = text.as_str();
    assert!(metric(text, "stockd_http_connections_refused_total") >= 1.0);
    assert_eq!(metric(text, "stockd_http_connections"), 4.0);

    // One closes: a new connection is served again once the server has seen it go.
    drop(open.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = connect(&s);
        let (status, _, _) = get(&mut c, "/healthz");
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            Instant::now() < deadline,
            "a freed place was never given to a new connection"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_request_head_that_does_not_arrive_in_time_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let s = try_start_with(
        &dir.path().join("data"),
        &["--header-read-timeout-ms", "300"],
    )
    .unwrap();

    // Nothing at all.
    let mut silent = connect(&s);
    assert!(
        closed_by_server(&mut silent),
        "a silent connection stays open"
    );

    // Half a head, then nothing.
    let mut half = connect(&s);
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: stockd\r\n")
        .unwrap();
    assert!(closed_by_server(&mut half), "a half-sent head stays open");

    // A head trickled a byte every 50 ms: the bound is on the whole head, so it is cut off
    // although bytes keep arriving (the head would take 1.6 s).
    let mut trickle = connect(&s);
    let started = Instant::now();
    let mut cut_off = false;
    for byte in b"GET /healthz HTTP/1.1\r\nHost: stockd\r\n\r\n" {
        if trickle.write_all(&[*byte]).is_err() {
            cut_off = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    trickle
        .set_read_timeout(Some(WAIT.saturating_sub(started.elapsed())))
        .unwrap();
    assert!(
        cut_off || closed_by_server(&mut trickle),
        "a trickled head was served"
    );

    // A kept-alive connection that goes quiet after its answer is closed too.
    let mut idle = connect(&s);
    assert_eq!(get(&mut idle, "/healthz").0, 200);
    assert!(closed_by_server(&mut idle), "an idle connection stays open");

    // A prompt client is served as before.
    let mut prompt = connect(&s);
    for _ in 0..3 {
        assert_eq!(get(&mut prompt, "/healthz").0, 200);
    }
}
