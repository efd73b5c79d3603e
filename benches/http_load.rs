//! HTTP load benchmark: starts stockd (release build) on 127.0.0.1 with a fresh data directory,
//! drives it with N keep-alive connections for T seconds (bounded, stops by itself), and prints
//! throughput, p50 / p99 / p99.9 latency and the records per fsync the server reports.
//!
//! Workloads: `flash` (every request reserves 1 unit of one SKU), `checkout` (reserve then
//! complete, or cancel 20%, over 10,000 SKUs), `sellout` (stock 1,000, 10,000 buyers: time to
//! sell out, exactly 1,000 holds). With `--redis-port` / `--pg-port` the flash workload also
//! runs against Redis (Lua check-decrement-record, appendfsync always) and PostgreSQL
//! (SELECT ... FOR UPDATE + UPDATE + INSERT, synchronous_commit on), same connections, same time.
//!
//!   cargo bench --bench http_load -- [--workload flash|checkout|sellout|all] [--connections 64]
//!                                    [--seconds 10] [--rounds 1] [--redis-port P] [--pg-port P]
//!
//! With `--rounds N` every system runs N times, taking turns, and each reports its median round
//! and the range (this shared machine varies by about ±8% from run to run).
//!
//! `STOCKD_BIN=path` runs that stockd binary instead of this build's (to compare two builds).
//!
//! `benches/compare.sh` installs and starts Redis and PostgreSQL, then runs this.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use bytes::Bytes;
use bytes::BytesMut;
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

const STOCKD: &str = env!("CARGO_BIN_EXE_stockd");
/// Hard cap on a run, whatever is asked: load tests stop by themselves.
const MAX_SECONDS: u64 = 120;
const MAX_CONNECTIONS: usize = 4096;
/// Rounds per workload (each runs every system once).
const MAX_ROUNDS: usize = 9;

struct Args {
    workloads: Vec<String>,
    connections: usize,
    seconds: u64,
    redis_port: Option<u16>,
    pg_port: Option<u16>,
    rounds: usize,
}

fn args() -> Args {
    let mut a = Args {
        workloads: vec!["flash".into(), "checkout".into(), "sellout".into()],
        connections: 64,
        seconds: 10,
        redis_port: None,
        pg_port: None,
        rounds: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--workload" => {
                let w = value();
                a.workloads = if w == "all" {
                    a.workloads.clone()
                } else {
                    vec![w]
                };
            }
            "--connections" => a.connections = value().parse().expect("--connections N"),
            "--seconds" => a.seconds = value().parse().expect("--seconds N"),
            "--redis-port" => a.redis_port = Some(value().parse().expect("--redis-port P")),
            "--pg-port" => a.pg_port = Some(value().parse().expect("--pg-port P")),
            "--rounds" => a.rounds = value().parse().expect("--rounds N"),
            _ => {} // cargo passes --bench; ignore what is not ours
        }
    }
    a.connections = a.connections.clamp(1, MAX_CONNECTIONS);
    a.seconds = a.seconds.clamp(1, MAX_SECONDS);
    a.rounds = a.rounds.clamp(1, MAX_ROUNDS);
    a
}

/// One measured run.
struct Outcome {
    system: &'static str,
    workload: String,
    ops: u64,
    refused: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    records_per_fsync: Option<f64>,
    note: String,
    /// With several rounds: (rounds, lowest, highest ops/s); this outcome is the median one.
    spread: Option<(usize, f64, f64)>,
}

impl Outcome {
    fn ops_per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    fn q(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// The run with the median throughput among one system's rounds, with their range.
fn median_round(mut rounds: Vec<Outcome>) -> Option<Outcome> {
    rounds.sort_by(|x, y| x.ops_per_second().total_cmp(&y.ops_per_second()));
    let n = rounds.len();
    let low = rounds.first()?.ops_per_second();
    let high = rounds.last()?.ops_per_second();
    let mut median = rounds.swap_remove(n / 2);
    if n > 1 {
        median.spread = Some((n, low, high));
    }
    Some(median)
}

/// (succeeded, refused) for one operation.
fn tally(won: bool) -> (u64, u64) {
    if won {
        (1, 0)
    } else {
        (0, 1)
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

// ------------------------------------------------------------------ stockd over HTTP

struct Stockd {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Stockd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_stockd() -> Stockd {
    let dir = tempfile::tempdir().expect("tempdir");
    // STOCKD_BIN runs another build (to compare two builds with the same load generator).
    let stockd = std::env::var("STOCKD_BIN").unwrap_or_else(|_| STOCKD.to_string());
    let mut child = Command::new(stockd)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start stockd");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read address");
    let addr = line
        .trim()
        .strip_prefix("stockd listening on http://")
        .expect("stockd did not start")
        .to_string();
    Stockd {
        child,
        addr,
        _dir: dir,
    }
}

/// One keep-alive HTTP/1.1 connection, driven by the task that calls it: each request is one
/// write, the response is read into a reused buffer and its head parsed with httparse.
///
/// Why not hyper's client: the load generator shares the two cores with the server it
/// measures, and hyper's client (a connection task beside each caller, a request and a
/// response object per call) took a third of the machine's CPU in the flash run, about 15 µs
/// per request; every microsecond it takes is one the server does not get. The Redis peer
/// gets a client as lean ([`RespConn`]), so the comparison stays even.
struct Conn {
    stream: TcpStream,
    host: String,
    out: Vec<u8>,
    buf: BytesMut,
}

/// Response heads are small; the biggest body read here is /metrics.
const HEADERS_MAX: usize = 32;

impl Conn {
    async fn open(addr: &str) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Conn {
            stream,
            host: addr.to_string(),
            out: Vec::with_capacity(512),
            buf: BytesMut::with_capacity(8192),
        }
    }

    async fn call(&mut self, method: Method, path: &str, body: Bytes) -> (StatusCode, Bytes) {
        self.out.clear();
        write!(
            self.out,
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.host,
            body.len()
        )
        .expect("write to a Vec");
        self.out.extend_from_slice(&body);
        self.stream
            .write_all(&self.out)
            .await
            .expect("send request");
        loop {
            if let Some((status, head_bytes, body_bytes)) = self.parsed_head() {
                if self.buf.len() >= head_bytes + body_bytes {
                    let mut message = self.buf.split_to(head_bytes + body_bytes);
                    let body = message.split_off(head_bytes).freeze();
                    return (status, body);
                }
            }
            self.buf.reserve(8192);
            let read = self.stream.read_buf(&mut self.buf).await.expect("receive");
            assert!(read > 0, "the server closed the connection mid-response");
        }
    }

    /// (status, head length, body length) once the whole head is in the buffer.
    fn parsed_head(&self) -> Option<(StatusCode, usize, usize)> {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut response = httparse::Response::new(&mut headers);
        let head_bytes = match response
            .parse(&self.buf)
            .expect("an HTTP/1.1 response head")
        {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => return None,
        };
        let status = StatusCode::from_u16(response.code.expect("status")).expect("status code");
        let length = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| {
                std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
                    .expect("a numeric content-length")
            })
            .expect("stockd sends content-length on every response");
        Some((status, head_bytes, length))
    }
}

async fn put_products(
    addr: &str,
    skus: impl Iterator<Item = String>,
    on_hand: u64,
    connections: usize,
) {
    let skus: Vec<String> = skus.collect();
    let chunks: Vec<Vec<String>> = skus
        .chunks(skus.len().div_ceil(connections).max(1))
        .map(|c| c.to_vec())
        .collect();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let addr = addr.to_string();
            tokio::spawn(async move {
                let mut c = Conn::open(&addr).await;
                for sku in chunk {
                    let body = Bytes::from(format!("{{\"on_hand\": {on_hand}}}"));
                    let (st, _) = c
                        .call(Method::PUT, &format!("/v1/products/{sku}"), body)
                        .await;
                    assert!(st.is_success(), "create {sku}: {st}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("setup");
    }
}

/// (records, fsyncs) from the server's metrics.
async fn fsync_counters(addr: &str) -> (f64, f64) {
    let mut c = Conn::open(addr).await;
    let (_, body) = c.call(Method::GET, "/metrics", Bytes::new()).await;
    let text = String::from_utf8_lossy(&body);
    let read = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .map(|v| v.trim().parse::<f64>().unwrap_or(0.0))
            })
            .unwrap_or(0.0)
    };
    (
        read("stockd_log_records_per_fsync_sum "),
        read("stockd_log_records_per_fsync_count "),
    )
}

/// Runs `connections` loops of `step` until `deadline`, merging their latency histograms.
async fn drive<S, F>(
    connections: usize,
    seconds: u64,
    mut make: impl FnMut(usize) -> S,
    step: F,
) -> (u64, u64, Duration, Histogram<u64>)
where
    S: Send + 'static,
    F: for<'a> Fn(
            &'a mut S,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = (u64, u64)> + Send + 'a>>
        + Send
        + Sync
        + Copy
        + 'static,
{
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let mut state = make(i);
            tokio::spawn(async move {
                let mut hist = histogram();
                let (mut ok, mut refused) = (0u64, 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let (o, r) = step(&mut state).await;
                    hist.saturating_record(t.elapsed().as_micros() as u64);
                    ok += o;
                    refused += r;
                }
                (ok, refused, hist)
            })
        })
        .collect();
    let mut merged = histogram();
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (o, r, h) = t.await.expect("load task");
        ok += o;
        refused += r;
        merged.add(h).expect("merge");
    }
    (ok, refused, start.elapsed(), merged)
}

async fn stockd_flash(connections: usize, seconds: u64) -> Outcome {
    let server = start_stockd();
    put_products(
        &server.addr,
        std::iter::once("HOT".to_string()),
        1_000_000_000_000,
        1,
    )
    .await;
    let mut conns = Vec::new();
    for _ in 0..connections {
        conns.push(Some(Conn::open(&server.addr).await));
    }
    let before = fsync_counters(&server.addr).await;
    let body = Bytes::from_static(br#"{"items":[{"sku":"HOT","quantity":1}],"ttl_seconds":900}"#);
    let (ok, refused, elapsed, hist) = drive(
        connections,
        seconds,
        |i| (conns[i].take().expect("connection"), body.clone()),
        |(c, body)| {
            Box::pin(async move {
                let (st, _) = c.call(Method::POST, "/v1/reservations", body.clone()).await;
                tally(st == StatusCode::CREATED)
            })
        },
    )
    .await;
    let after = fsync_counters(&server.addr).await;
    Outcome {
        system: "stockd",
        workload: "flash".into(),
        ops: ok,
        refused,
        elapsed,
        latency_us: hist,
        records_per_fsync: Some((after.0 - before.0) / (after.1 - before.1).max(1.0)),
        note: String::new(),
        spread: None,
    }
}

async fn stockd_checkout(connections: usize, seconds: u64) -> Outcome {
    const SKUS: usize = 10_000;
    let server = start_stockd();
    put_products(
        &server.addr,
        (0..SKUS).map(|i| format!("SKU-{i:05}")),
        1_000_000_000,
        64,
    )
    .await;
    let mut conns = Vec::new();
    for _ in 0..connections {
        conns.push(Some(Conn::open(&server.addr).await));
    }
    let before = fsync_counters(&server.addr).await;
    let counter = Arc::new(AtomicU64::new(0));
    let (ok, refused, elapsed, hist) = drive(
        connections,
        seconds,
        |i| (conns[i].take().expect("connection"), counter.clone()),
        |(c, counter)| {
            Box::pin(async move {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                // A cheap, well-spread choice of SKU and ending (no shared RNG).
                let mixed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let sku = (mixed >> 20) as usize % SKUS;
                let body = format!("{{\"items\":[{{\"sku\":\"SKU-{sku:05}\",\"quantity\":1}}],\"ttl_seconds\":900}}");
                let (st, bytes) = c.call(Method::POST, "/v1/reservations", Bytes::from(body)).await;
                if st != StatusCode::CREATED {
                    return (0, 1);
                }
                let v: Value = serde_json::from_slice(&bytes).expect("reservation json");
                let id = v["id"].as_str().expect("id");
                let end = if (mixed >> 8) % 5 == 0 { "cancel" } else { "complete" };
                let (st, _) = c.call(Method::POST, &format!("/v1/reservations/{id}/{end}"), Bytes::from_static(b"{}")).await;
                tally(st == StatusCode::OK)
            })
        },
    )
    .await;
    let after = fsync_counters(&server.addr).await;
    Outcome {
        system: "stockd",
        workload: "checkout".into(),
        ops: ok,
        refused,
        elapsed,
        latency_us: hist,
        records_per_fsync: Some((after.0 - before.0) / (after.1 - before.1).max(1.0)),
        note: "ops = reserve+complete/cancel flows (2 requests each); latency per flow".into(),
        spread: None,
    }
}

async fn stockd_sellout(connections: usize) -> Outcome {
    const STOCK: u64 = 1_000;
    const BUYERS: u64 = 10_000;
    let server = start_stockd();
    put_products(&server.addr, std::iter::once("DROP".to_string()), STOCK, 1).await;
    let mut conns = Vec::new();
    for _ in 0..connections {
        conns.push(Conn::open(&server.addr).await);
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let next = next.clone();
            tokio::spawn(async move {
                let body = Bytes::from_static(
                    br#"{"items":[{"sku":"DROP","quantity":1}],"ttl_seconds":900}"#,
                );
                let mut hist = histogram();
                let (mut won, mut lost, mut last_win) = (0u64, 0u64, Duration::ZERO);
                while next.fetch_add(1, Ordering::Relaxed) < BUYERS {
                    let t = Instant::now();
                    let (st, _) = c.call(Method::POST, "/v1/reservations", body.clone()).await;
                    hist.saturating_record(t.elapsed().as_micros() as u64);
                    match st {
                        StatusCode::CREATED => {
                            won += 1;
                            last_win = start.elapsed();
                        }
                        StatusCode::CONFLICT => lost += 1,
                        other => panic!("unexpected answer {other}"),
                    }
                }
                (won, lost, last_win, hist)
            })
        })
        .collect();
    let mut merged = histogram();
    let (mut won, mut lost, mut sold_out_at) = (0, 0, Duration::ZERO);
    for t in tasks {
        let (w, l, at, h) = t.await.expect("buyer");
        won += w;
        lost += l;
        sold_out_at = sold_out_at.max(at);
        merged.add(h).expect("merge");
    }
    let elapsed = start.elapsed();
    let mut c = Conn::open(&server.addr).await;
    let (_, product) = c.call(Method::GET, "/v1/products/DROP", Bytes::new()).await;
    let product: Value = serde_json::from_slice(&product).expect("product");
    assert_eq!(won, STOCK, "exactly the stock is sold");
    assert_eq!(
        product["reserved"].as_u64(),
        Some(STOCK),
        "exactly {STOCK} holds"
    );
    Outcome {
        system: "stockd",
        workload: "sellout".into(),
        ops: won + lost,
        refused: lost,
        elapsed,
        latency_us: merged,
        records_per_fsync: None,
        note: format!(
            "{BUYERS} buyers, {won} holds (reserved = {}), sold out after {:.1} ms, all answered after {:.1} ms",
            product["reserved"],
            sold_out_at.as_secs_f64() * 1000.0,
            elapsed.as_secs_f64() * 1000.0
        ),
        spread: None,
    }
}

// ------------------------------------------------------------------ peers

/// Checks, decrements and records the hold with its expiry, atomically (Lua runs alone).
const REDIS_RESERVE: &str = r#"
local available = tonumber(redis.call('HGET', KEYS[1], 'available'))
local quantity = tonumber(ARGV[1])
if available == nil or available < quantity then return 0 end
redis.call('HINCRBY', KEYS[1], 'available', -quantity)
redis.call('HSET', KEYS[2], 'sku', ARGV[3], 'quantity', quantity)
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"#;

/// One Redis connection driven by the task that calls it: a packed command is one write, and
/// the reply (a single line here: an integer or an error) is read into a reused buffer. As
/// lean as [`Conn`], for the same reason.
struct RespConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RespConn {
    async fn open(port: u16) -> RespConn {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("redis connection");
        stream.set_nodelay(true).expect("nodelay");
        RespConn {
            stream,
            buf: Vec::with_capacity(256),
        }
    }

    /// Sends one packed command and answers its integer reply.
    async fn integer(&mut self, packed: &[u8]) -> i64 {
        self.stream.write_all(packed).await.expect("send command");
        self.buf.clear();
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = std::str::from_utf8(&self.buf[..end]).expect("a text reply");
                return match line.strip_prefix(':') {
                    Some(n) => n.parse().expect("an integer reply"),
                    None => panic!("redis answered {line:?}"),
                };
            }
            let read = self.stream.read_buf(&mut self.buf).await.expect("receive");
            assert!(read > 0, "redis closed the connection mid-reply");
        }
    }
}

async fn redis_flash(port: u16, connections: usize, seconds: u64) -> Outcome {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("redis url");
    let mut setup = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut setup)
        .await
        .expect("flush");
    let _: () = redis::cmd("HSET")
        .arg("stock:HOT")
        .arg("available")
        .arg(1_000_000_000_000u64)
        .query_async(&mut setup)
        .await
        .expect("stock");
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(REDIS_RESERVE)
        .query_async(&mut setup)
        .await
        .expect("load script");
    let mut conns = Vec::new();
    for _ in 0..connections {
        // A connection of its own each: the same concurrency as the HTTP clients.
        conns.push(Some(RespConn::open(port).await));
    }
    let (ok, refused, elapsed, hist) = drive(
        connections,
        seconds,
        |i| (conns[i].take().expect("connection"), sha.clone()),
        |(con, sha)| {
            Box::pin(async move {
                let command = redis::cmd("EVALSHA")
                    .arg(&*sha)
                    .arg(2)
                    .arg("stock:HOT")
                    .arg(format!("hold:{}", Uuid::new_v4()))
                    .arg(1)
                    .arg(900_000)
                    .arg("HOT")
                    .get_packed_command();
                let won = con.integer(&command).await;
                tally(won == 1)
            })
        },
    )
    .await;
    Outcome {
        system: "redis",
        workload: "flash".into(),
        ops: ok,
        refused,
        elapsed,
        latency_us: hist,
        records_per_fsync: None,
        note: "appendonly yes, appendfsync always; Lua check + HINCRBY + HSET hold + PEXPIRE (EVALSHA)"
            .into(),
        spread: None,
    }
}

async fn pg_connect(port: u16) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("postgres connection");
    tokio::spawn(connection);
    client
}

async fn pg_flash(port: u16, connections: usize, seconds: u64) -> Outcome {
    let setup = pg_connect(port).await;
    setup
        .batch_execute(
            "DROP TABLE IF EXISTS holds; DROP TABLE IF EXISTS stock;
             CREATE TABLE stock (sku text PRIMARY KEY, available bigint NOT NULL);
             CREATE TABLE holds (id uuid PRIMARY KEY, sku text NOT NULL, quantity int NOT NULL, expires_at timestamptz NOT NULL);
             INSERT INTO stock VALUES ('HOT', 1000000000000);",
        )
        .await
        .expect("schema");
    let mut conns = Vec::new();
    for _ in 0..connections {
        let client = pg_connect(port).await;
        let select = client
            .prepare("SELECT available FROM stock WHERE sku = $1 FOR UPDATE")
            .await
            .expect("prepare");
        let update = client
            .prepare("UPDATE stock SET available = available - $2 WHERE sku = $1")
            .await
            .expect("prepare");
        let insert = client
            .prepare("INSERT INTO holds VALUES ($1, $2, $3, now() + interval '15 minutes')")
            .await
            .expect("prepare");
        conns.push(Some((client, select, update, insert)));
    }
    let (ok, refused, elapsed, hist) = drive(
        connections,
        seconds,
        |i| conns[i].take().expect("connection"),
        |(client, select, update, insert)| {
            Box::pin(async move {
                let tx = client.transaction().await.expect("begin");
                let available: i64 = tx
                    .query_one(&*select, &[&"HOT"])
                    .await
                    .expect("select")
                    .get(0);
                let won = available >= 1;
                if won {
                    tx.execute(&*update, &[&"HOT", &1i64])
                        .await
                        .expect("update");
                    tx.execute(&*insert, &[&Uuid::new_v4(), &"HOT", &1i32])
                        .await
                        .expect("insert");
                }
                tx.commit().await.expect("commit");
                tally(won)
            })
        },
    )
    .await;
    // Write out what the run left dirty in PostgreSQL's buffers now, not in the next run.
    setup.batch_execute("CHECKPOINT").await.expect("checkpoint");
    Outcome {
        system: "postgresql",
        workload: "flash".into(),
        ops: ok,
        refused,
        elapsed,
        latency_us: hist,
        records_per_fsync: None,
        note: "synchronous_commit on, fsync on; SELECT FOR UPDATE + UPDATE + INSERT hold".into(),
        spread: None,
    }
}

/// Before each run: flush what earlier runs left dirty in the page cache, and give the disk a
/// moment, so that no system's fsyncs compete with the write-back of the one before it.
async fn quiet_disk() {
    let _ = tokio::task::spawn_blocking(|| Command::new("sync").status()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
}

// ------------------------------------------------------------------ report

fn main() {
    let a = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Every round runs every system in turn, so that a slow spell of the shared machine
    // hits them alike; each system's median round is reported, with the range.
    let mut runs: Vec<Vec<Outcome>> = Vec::new();
    runtime.block_on(async {
        for w in &a.workloads {
            let mut by_system: Vec<Vec<Outcome>> = Vec::new();
            for _ in 0..a.rounds {
                quiet_disk().await;
                let mut round = vec![match w.as_str() {
                    "flash" => stockd_flash(a.connections, a.seconds).await,
                    "checkout" => stockd_checkout(a.connections, a.seconds).await,
                    "sellout" => stockd_sellout(a.connections).await,
                    other => panic!("unknown workload {other}: flash, checkout, sellout or all"),
                }];
                if w == "flash" {
                    if let Some(port) = a.redis_port {
                        quiet_disk().await;
                        round.push(redis_flash(port, a.connections, a.seconds).await);
                    }
                    if let Some(port) = a.pg_port {
                        quiet_disk().await;
                        round.push(pg_flash(port, a.connections, a.seconds).await);
                    }
                }
                by_system.resize_with(round.len(), Vec::new);
                for (i, outcome) in round.into_iter().enumerate() {
                    by_system[i].push(outcome);
                }
            }
            runs.extend(by_system);
        }
    });
    let outcomes: Vec<Outcome> = runs.into_iter().filter_map(median_round).collect();
    let flash = outcomes
        .iter()
        .find(|o| o.system == "stockd" && o.workload == "flash")
        .map(|o| o.ops_per_second());
    println!(
        "\n{} connections, {} s per run, {} cores",
        a.connections,
        a.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| workload | system | ops/s | p50 ms | p99 ms | p99.9 ms | records/fsync | stockd ÷ system | refused | rounds: ops/s range |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for o in &outcomes {
        let ratio = match (o.workload.as_str(), flash) {
            ("flash", Some(f)) => format!("{:.2}×", f / o.ops_per_second()),
            _ => "".into(),
        };
        let spread = o.spread.map_or(String::new(), |(n, low, high)| {
            format!("{n}: {low:.0}–{high:.0}")
        });
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |",
            o.workload,
            o.system,
            o.ops_per_second(),
            o.q(0.5),
            o.q(0.99),
            o.q(0.999),
            o.records_per_fsync
                .map_or(String::new(), |r| format!("{r:.1}")),
            ratio,
            o.refused,
            spread
        );
    }
    for o in outcomes.iter().filter(|o| !o.note.is_empty()) {
        println!("- {} {}: {}", o.system, o.workload, o.note);
    }
}
