//! Test harness: the real `stockd` binary as a child process on 127.0.0.1 (port 0), with a
//! real data directory, talked to over real HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use reqwest::StatusCode;
use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_stockd");

pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub data_dir: PathBuf,
    pub stderr_path: PathBuf,
    pub client: reqwest::Client,
}

/// Starts stockd on `data_dir`; `Err(stderr)` if it exits instead of listening.
pub fn try_start(data_dir: &Path) -> Result<Server, String> {
    try_start_with(data_dir, &[])
}

pub fn try_start_with(data_dir: &Path, extra: &[&str]) -> Result<Server, String> {
    try_start_env(data_dir, extra, &[])
}

pub fn try_start_env(
    data_dir: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Result<Server, String> {
    let stderr_path = data_dir.with_extension(format!("stderr.{}", rand::random::<u32>()));
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let listen: &[&str] = if extra.contains(&"--listen") {
        &[]
    } else {
        &["--listen", "127.0.0.1:0"]
    };
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(listen)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "info")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("spawn stockd");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read stdout");
    let Some(addr) = line.trim().strip_prefix("stockd listening on ") else {
        let _ = child.wait();
        return Err(std::fs::read_to_string(&stderr_path).unwrap_or_default());
    };
    Ok(Server {
        child: Some(child),
        base: addr.to_string(),
        data_dir: data_dir.to_path_buf(),
        stderr_path,
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()
            .expect("client"),
    })
}

pub fn start(data_dir: &Path) -> Server {
    try_start(data_dir).unwrap_or_else(|stderr| panic!("stockd did not start: {stderr}"))
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `kill -9`: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        child.wait().expect("wait")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let until = std::time::Instant::now() + limit;
        let child = self.child.as_mut()?;
        while std::time::Instant::now() < until {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let r = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        r.text().await.expect("metrics body")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.client.get(self.url(path)).send().await.expect("GET");
        decode(r).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("POST");
        decode(r).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .client
            .put(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("PUT");
        decode(r).await
    }

    /// Creates a product with `on_hand` units.
    pub async fn product(&self, sku: &str, on_hand: u64) -> Value {
        let (status, body) = self
            .put(
                &format!("/v1/products/{sku}"),
                json!({ "on_hand": on_hand }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    pub async fn product_state(&self, sku: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/products/{sku}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// A reservation as the API answers it (asserting it exists).
    pub async fn reservation(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/reservations/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Waits (bounded by `limit`) until reservation `id` has `status`; returns it.
    pub async fn wait_status(&self, id: &str, status: &str, limit: std::time::Duration) -> Value {
        let until = std::time::Instant::now() + limit;
        loop {
            let r = self.reservation(id).await;
            if r["status"] == status {
                return r;
            }
            assert!(
                std::time::Instant::now() < until,
                "reservation {id} not {status} after {limit:?}: {r}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub async fn reserve(&self, items: &[(&str, u64)], ttl_seconds: u64) -> (StatusCode, Value) {
        let items: Vec<Value> = items
            .iter()
            .map(|(s, q)| json!({"sku": s, "quantity": q}))
            .collect();
        self.post(
            "/v1/reservations",
            json!({ "items": items, "ttl_seconds": ttl_seconds }),
        )
        .await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub async fn decode(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let problem = r.headers().get("content-type").is_some_and(|v| {
        v.to_str()
            .unwrap_or("")
            .starts_with("application/problem+json")
    });
    let text = r.text().await.expect("body");
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        assert!(problem, "error {status} without problem+json: {value}");
        assert_eq!(
            value["status"].as_u64(),
            Some(status.as_u16() as u64),
            "{value}"
        );
        assert!(
            value["code"].is_string() && value["title"].is_string() && value["detail"].is_string()
        );
    }
    (status, value)
}

pub fn run_cli(args: &[&str], data_dir: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run stockd")
}

/// Segment files in order.
pub fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir)
        .expect("data dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// The value of one sample in a Prometheus text (`name` includes labels, then a space).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

/// An RFC 3339 timestamp of the API in milliseconds since the epoch.
pub fn ms(rfc3339: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().expect("a timestamp"))
        .expect("RFC 3339")
        .timestamp_millis()
}

/// The newest history entry of `sku` is the server's expiry of `reservation`, recorded at most
/// 1 s after its `expires_at` (the contract's bound).
pub async fn assert_expiry_logged(s: &Server, sku: &str, reservation: &Value) {
    let (_, h) = s.get(&format!("/v1/products/{sku}/history?limit=1")).await;
    let e = &h["entries"][0];
    assert_eq!(
        (
            e["action"].as_str(),
            e["metadata"]["reason"].as_str(),
            e["actor"].as_str(),
            e["reservation_id"].as_str()
        ),
        (
            Some("release"),
            Some("expired"),
            Some("stockd"),
            reservation["id"].as_str()
        ),
        "{sku}: {h}"
    );
    let late_ms = ms(&e["at"]) - ms(&reservation["expires_at"]);
    assert!(
        (0..=1000).contains(&late_ms),
        "{sku}: released {late_ms} ms after expires_at"
    );
}
