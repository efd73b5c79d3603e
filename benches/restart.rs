//! Restart time of a large log (not a criterion bench: it times whole launches of the server).
//!
//!   cargo bench --bench restart -- [--records 10000000] [--launches 5] [--data-dir DIR]
//!
//! With `--data-dir` the log is written there and kept, and a later run that names the same
//! directory launches on it without writing it again; `STOCKD_BIN=path` launches another
//! build, so that two builds can take turns on one log.
//!
//! Writes a log through the engine as a busy checkout would (1,000 products, then reserve +
//! complete flows from 1,024 concurrent callers, random ids, every record fdatasynced), then
//! launches the release `stockd serve` on it several times and times each from the launch to
//! its first answer (`GET /readyz`), which comes only once the whole log is replayed. Prints
//! the median and range, and each launch's peak resident memory. The launches read the log
//! from the page cache (it was just written), as a restart on a machine with free memory
//! does. Bounded: at most 20,000,000 records and 9 launches; writing stops after 300 s and a
//! launch is given 60 s.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stockd::config::EngineConfig;

#[global_allocator]
static ALLOCATOR: stockd::memory::Allocator = stockd::memory::Allocator;

const STOCKD: &str = env!("CARGO_BIN_EXE_stockd");
const RECORDS_MAX: u64 = 20_000_000;
const LAUNCHES_MAX: u8 = 9;
const SKUS: usize = 1000;
const CALLERS: usize = 1024;
const WRITE_SECONDS_MAX: u64 = 300;
const LAUNCH_SECONDS_MAX: u64 = 60;

/// A log written through the engine, then launches of the server on it, timed.
#[derive(clap::Parser)]
struct Args {
    /// Records to write (about: flows are two records each).
    #[arg(long, default_value_t = 10_000_000,
          value_parser = clap::value_parser!(u64).range(SKUS as u64 + 2..=RECORDS_MAX))]
    records: u64,
    /// Launches of the server on the log.
    #[arg(long, default_value_t = 5,
          value_parser = clap::value_parser!(u8).range(1..=LAUNCHES_MAX as i64))]
    launches: u8,
    /// Write the log here and keep it; a directory with a log already is launched on as is.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Passed by `cargo bench` to every target.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Writes about `records` records into `data_dir` through the engine; returns how many.
fn write_log(data_dir: &Path, records: u64) -> u64 {
    let (runtime, _, _) = stockd::server::runtime(0).expect("runtime");
    let config = EngineConfig {
        data_dir: data_dir.to_path_buf(),
        ..EngineConfig::default()
    };
    runtime.block_on(async {
        let engine = common::open_engine(&config).await;
        let skus: Arc<Vec<String>> = Arc::new((0..SKUS).map(|i| format!("SKU-{i:05}")).collect());
        common::put_products(&engine, &skus).await;
        // Each flow is two records: the reserve and its completion.
        let flows = (records - SKUS as u64) / 2;
        let next = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + Duration::from_secs(WRITE_SECONDS_MAX);
        let callers: Vec<_> = (0..CALLERS)
            .map(|_| {
                let (engine, skus, next, stop) =
                    (engine.clone(), skus.clone(), next.clone(), stop.clone());
                tokio::spawn(async move {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= flows || stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if n % 4096 == 0 && Instant::now() >= deadline {
                            stop.store(true, Ordering::Relaxed);
                        }
                        let sku = &skus[(n as usize * 7919) % SKUS];
                        common::checkout_flow(&engine, "checkout", sku).await;
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.expect("caller");
        }
        let (_, written) = engine.log_counters();
        engine.close().await.expect("close");
        written
    })
}

struct Launch {
    to_first_answer: Duration,
    peak_rss_mib: f64,
}

/// Starts `stockd serve` on `data_dir`, times it to its first answer, then stops it.
fn launch(data_dir: &Path) -> Launch {
    let started = Instant::now();
    let stockd = std::env::var("STOCKD_BIN").unwrap_or_else(|_| STOCKD.to_string());
    let mut child = Command::new(stockd)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start stockd");
    // A launch that never answers is killed after LAUNCH_SECONDS_MAX. The child is not reaped
    // before the watchdog is gone, so its pid cannot name another process meanwhile.
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        let limit = Duration::from_secs(LAUNCH_SECONDS_MAX);
        if watch.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: kill(2) with our unreaped child's pid and a signal number.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    let outcome = first_answer(&mut child, started);
    let peak_rss_mib = common::status_mib(Some(child.id()), "VmHWM");
    drop(done);
    watchdog.join().expect("watchdog");
    stop(&mut child);
    match outcome {
        Ok(to_first_answer) => Launch {
            to_first_answer,
            peak_rss_mib,
        },
        Err(e) => panic!("stockd did not answer: {e}"),
    }
}

fn first_answer(child: &mut Child, started: Instant) -> Result<Duration, String> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    // The address line comes once the log is replayed; the read is bounded by the watchdog.
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .strip_prefix("stockd listening on http://")
        .ok_or(format!("unexpected first line {line:?}"))?
        .to_string();
    let mut stream = TcpStream::connect(&addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(LAUNCH_SECONDS_MAX)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /readyz HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| e.to_string())?;
    let took = started.elapsed();
    if &head[..] != b"HTTP/1.1 200" {
        return Err(format!(
            "/readyz answered {:?}",
            String::from_utf8_lossy(&head)
        ));
    }
    Ok(took)
}

/// SIGTERM (a clean stop leaves the log as it was), SIGKILL if it is not gone in 10 s.
fn stop(child: &mut Child) {
    // SAFETY: kill(2) with the pid of our own child and a signal number.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// (segments, bytes) of the log in `data_dir`; (0, 0) where there is none.
fn segments_in(data_dir: &Path) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return (0, 0);
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .fold((0, 0), |(n, b), e| {
            (n + 1, b + e.metadata().map_or(0, |m| m.len()))
        })
}

/// The records of a log written by an earlier run, counted by replaying it read-only.
fn verified_records(data_dir: &Path) -> u64 {
    let (_, outcome) =
        stockd::ledger::Ledger::replay(data_dir, stockd::wal::replay::Mode::ReadOnly)
            .expect("the log in --data-dir replays");
    outcome.records
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    stockd::memory::prefer_small_pages();
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = args.data_dir.clone().unwrap_or(dir.path().join("data"));
    let records = if segments_in(&data_dir).0 > 0 {
        let records = verified_records(&data_dir);
        println!(
            "restart: {records} records already in {}",
            data_dir.display()
        );
        records
    } else {
        let writing = Instant::now();
        let records = write_log(&data_dir, args.records);
        println!(
            "restart: wrote {records} records through the engine in {:.1} s",
            writing.elapsed().as_secs_f64()
        );
        records
    };
    let (segments, bytes) = segments_in(&data_dir);
    println!(
        "restart: the log is {segments} segments, {:.0} MiB",
        bytes as f64 / (1024.0 * 1024.0)
    );
    let mut times = Vec::new();
    for n in 1..=args.launches {
        let launch = launch(&data_dir);
        println!(
            "launch {n}: first answer after {:.2} s, peak RSS {:.0} MiB",
            launch.to_first_answer.as_secs_f64(),
            launch.peak_rss_mib
        );
        times.push(launch.to_first_answer.as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "launch to first answer: median {:.2} s ({:.2}–{:.2} s) over {} launches, {:.1}M records/s",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        times.len(),
        records as f64 / times[times.len() / 2] / 1e6
    );
}
