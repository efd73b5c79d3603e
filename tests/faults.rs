//! Faults in the file layer: a failed fdatasync or write acknowledges nothing of its batch,
//! stops the log for good, and a restart is clean; a real full disk (a small tmpfs) makes the
//! server answer 503 and exit non-zero, and after space is freed it restarts with everything
//! it acknowledged.

mod common;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use stockd::clock::SystemClock;
use stockd::config::EngineConfig;
use stockd::engine::requests::{ItemRequest, PutProduct, Reserve};
use stockd::engine::{Engine, EngineError};
use stockd::wal::storage::{Disk, SegmentFile, Storage};

/// Disk, but a test can make the next fdatasync fail, or writes run out of space halfway.
#[derive(Default)]
struct Faulty {
    fail_sync: Arc<AtomicBool>,
    fail_write: Arc<AtomicBool>,
    /// While held, fdatasync does not return: records are written but not yet durable.
    hold_sync: Arc<Gate>,
}

struct FaultyFile {
    inner: Box<dyn SegmentFile>,
    fail_sync: Arc<AtomicBool>,
    fail_write: Arc<AtomicBool>,
    hold_sync: Arc<Gate>,
}

#[derive(Default)]
struct Gate {
    held: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn hold(&self) {
        *self.held.lock().unwrap() = true;
    }

    fn release(&self) {
        *self.held.lock().unwrap() = false;
        self.opened.notify_all();
    }

    fn pass(&self) {
        let mut held = self.held.lock().unwrap();
        while *held {
            held = self.opened.wait(held).unwrap();
        }
    }
}

impl SegmentFile for FaultyFile {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.fail_write.load(Ordering::SeqCst) {
            // Half the batch reaches the file, then the disk is full.
            self.inner.write_all_at(&buf[..buf.len() / 2], offset)?;
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "No space left on device (injected)",
            ));
        }
        self.inner.write_all_at(buf, offset)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.hold_sync.pass();
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other(
                "Input/output error (injected fdatasync failure)",
            ));
        }
        self.inner.sync_data()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

impl Storage for Faulty {
    fn create(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        self.wrap(Disk.create(path)?)
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        self.wrap(Disk.open_write(path)?)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        Disk.sync_dir(dir)
    }
}

impl Faulty {
    fn wrap(&self, inner: Box<dyn SegmentFile>) -> io::Result<Box<dyn SegmentFile>> {
        Ok(Box::new(FaultyFile {
            inner,
            fail_sync: self.fail_sync.clone(),
            fail_write: self.fail_write.clone(),
            hold_sync: self.hold_sync.clone(),
        }))
    }
}

fn reserve_one() -> Reserve {
    Reserve::one("F", 1, 3600)
}

/// Creates product F with `on_hand` units.
async fn put_f(engine: &Engine, on_hand: u64) {
    let product = PutProduct {
        on_hand: Some(on_hand),
        ..PutProduct::default()
    };
    engine.put_product("t", "F", product, None).await.unwrap();
}

/// An engine over `faulty` (or the real disk), on a runtime of its own; a fatal log error
/// fails the test.
fn open_engine(
    config: &EngineConfig,
    faulty: Option<&Arc<Faulty>>,
) -> (tokio::runtime::Runtime, Engine, stockd::engine::Startup) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let storage: Arc<dyn Storage> = match faulty {
        Some(f) => f.clone(),
        None => Arc::new(Disk),
    };
    let (engine, startup) = rt
        .block_on(Engine::open_with_storage(
            config,
            Arc::new(SystemClock),
            storage,
            Box::new(|m| panic!("{m}")),
        ))
        .unwrap();
    (rt, engine, startup)
}

/// Runs a batch of reserves through an engine whose file layer then fails as `arm` says.
fn fail_then_restart(arm: impl FnOnce(&Faulty), expect_in_message: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        data_dir: dir.path().join("data"),
        ..EngineConfig::default()
    };
    let faulty = Arc::new(Faulty::default());
    let fatal = Arc::new(Mutex::new(None::<String>));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fatal_hook = fatal.clone();
    let (engine, _) = rt
        .block_on(Engine::open_with_storage(
            &config,
            Arc::new(SystemClock),
            faulty.clone(),
            Box::new(move |m| *fatal_hook.lock().unwrap() = Some(m)),
        ))
        .unwrap();
    let acked: Vec<uuid::Uuid> = rt.block_on(async {
        put_f(&engine, 1000).await;
        let mut acked = Vec::new();
        for _ in 0..10 {
            acked.push(engine.reserve("t", reserve_one()).await.unwrap().id);
        }
        acked
    });
    arm(&faulty);
    rt.block_on(async {
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let engine = engine.clone();
                tokio::spawn(async move { engine.reserve("t", reserve_one()).await })
            })
            .collect();
        for t in tasks {
            let result = t.await.unwrap();
            assert!(
                matches!(result, Err(EngineError::Unavailable)),
                "acknowledged a write of a failed batch: {result:?}"
            );
        }
        // The log is stopped for good: no retry of a failed fsync, nothing more acknowledged.
        faulty.fail_sync.store(false, Ordering::SeqCst);
        faulty.fail_write.store(false, Ordering::SeqCst);
        assert!(matches!(
            engine.reserve("t", reserve_one()).await,
            Err(EngineError::Unavailable)
        ));
    });
    assert!(engine.log_failed());
    let message = fatal
        .lock()
        .unwrap()
        .clone()
        .expect("the fatal hook was called");
    assert!(
        message.contains(expect_in_message) && message.contains("restart"),
        "{message}"
    );
    drop(engine);
    drop(rt);

    // Restart on the real disk: clean, with every acknowledged reservation.
    let verify = run_cli(&["verify"], &config.data_dir);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let (_rt, engine, startup) = open_engine(&config, None);
    // A failed write was cut back by the writer; a failed sync came after a whole write.
    assert!(
        startup.replay.torn_tail.is_none(),
        "{:?}",
        startup.replay.torn_tail
    );
    for id in &acked {
        assert_eq!(
            engine
                .reservation(id)
                .expect("acknowledged reservation lost")
                .status,
            "active"
        );
    }
    assert!(engine.product("F").unwrap().reserved >= acked.len() as u64);
    engine.check_invariants().unwrap();
}

#[test]
fn failed_fdatasync_acknowledges_nothing_and_stops_the_log() {
    fail_then_restart(|f| f.fail_sync.store(true, Ordering::SeqCst), "fdatasync");
}

#[test]
fn failed_write_is_cut_back_and_reports_disk_full() {
    // The half-written batch is cut off by the writer: replay finds no torn tail.
    fail_then_restart(|f| f.fail_write.store(true, Ordering::SeqCst), "disk full");
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_path_buf()))
    }

    fn grow(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_answers_503_exits_non_zero_and_restarts_clean() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&dir.path().join("small"), "128k") else {
        // Mounting needs root (CI has it). Say so loudly rather than pass silently.
        eprintln!("SKIPPED full_disk_answers_503...: cannot mount a tmpfs here (not root?)");
        return;
    };
    let data = fs.0.join("data");
    let mut s = start(&data);
    s.product("D", 1_000_000).await;
    let mut acked = Vec::new();
    let refusal = loop {
        let (st, body) = s.reserve(&[("D", 1)], 3600).await;
        if st != StatusCode::CREATED {
            break (st, body);
        }
        acked.push(body["id"].as_str().unwrap().to_string());
        assert!(acked.len() < 100_000, "the disk never filled");
    };
    assert_eq!(
        (refusal.0, refusal.1["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
        "{refusal:?}"
    );
    let status = s
        .wait_exit(Duration::from_secs(20))
        .expect("the server exits after a failed write");
    assert!(!status.success(), "exit status {status:?}");
    let stderr = s.stderr();
    assert!(
        stderr.contains("disk full") && stderr.contains("Free space"),
        "{stderr}"
    );

    fs.grow("8m");
    let out = run_cli(&["verify"], &data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = start(&data);
    for id in &acked {
        assert_eq!(
            s.reservation(id).await["status"],
            "active",
            "acknowledged {id} lost"
        );
    }
    assert_eq!(
        s.product_state("D").await["reserved"].as_u64(),
        Some(acked.len() as u64)
    );
    let (st, _) = s.reserve(&[("D", 1)], 3600).await;
    assert_eq!(
        st,
        StatusCode::CREATED,
        "writes work again once there is space"
    );
}

/// Invariant 6: while a change is written but not yet fsynced, it is not acknowledged, no
/// read shows it, and a refusal that depends on it waits until it is durable.
#[test]
fn nothing_undurable_is_shown_or_refused_against() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        data_dir: dir.path().join("data"),
        ..EngineConfig::default()
    };
    let faulty = Arc::new(Faulty::default());
    let (rt, engine, _) = open_engine(&config, Some(&faulty));
    rt.block_on(async {
        put_f(&engine, 1).await;

        faulty.hold_sync.hold();
        let e = engine.clone();
        let first = tokio::spawn(async move { e.reserve("t", reserve_one()).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !first.is_finished(),
            "acknowledged before its fsync returned"
        );

        // The actor has taken the last unit, but reads show durable state only.
        let p = engine.product("F").unwrap();
        assert_eq!((p.reserved, p.available), (0, 1));
        let availability = stockd::engine::requests::Availability {
            items: vec![ItemRequest {
                sku: "F".into(),
                quantity: 1,
            }],
        };
        let (ok, _) = engine.availability(&availability).unwrap();
        assert!(ok, "availability counts only durable holds");

        // A refusal caused by the pending hold is not answered before that hold is durable.
        let e = engine.clone();
        let second = tokio::spawn(async move { e.reserve("t", reserve_one()).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !second.is_finished(),
            "refused on the strength of an undurable change"
        );

        faulty.hold_sync.release();
        assert!(first.await.unwrap().is_ok());
        assert!(matches!(
            second.await.unwrap(),
            Err(EngineError::InsufficientStock(_))
        ));
        assert_eq!(engine.product("F").unwrap().reserved, 1);
    });
}

/// Holds the next fdatasync and starts a reserve whose batch then hangs in it.
async fn first_reserve_held(
    engine: &Engine,
    faulty: &Faulty,
) -> tokio::task::JoinHandle<Result<stockd::ledger::ReservationView, EngineError>> {
    faulty.hold_sync.hold();
    let e = engine.clone();
    let first = tokio::spawn(async move { e.reserve("t", reserve_one()).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    first
}

/// Waits until the log's queue has refused `refusals` appends (bounded: 10 s).
async fn until_refused(engine: &Engine, refusals: u64) {
    for _ in 0..200 {
        if engine.metrics().log_queue_rejections.get() >= refusals {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Read-your-writes across a large batch: a reservation is in the read model (the ledger)
/// by the time its reply arrives. The log writer wakes a batch's replies before it applies
/// the batch to the ledger, so that the callers' next requests overlap the apply; a read
/// that starts after the reply must still wait for that apply. An fsync is held while
/// hundreds of reserves queue, so that one large batch is applied while its callers read.
#[test]
fn an_acknowledged_reservation_is_readable_at_once() {
    const QUEUE_RECORDS: usize = 1024;
    const CALLERS: usize = QUEUE_RECORDS + 16;
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        data_dir: dir.path().join("data"),
        log_channel_capacity: QUEUE_RECORDS,
        ..EngineConfig::default()
    };
    let faulty = Arc::new(Faulty::default());
    let (rt, engine, _) = open_engine(&config, Some(&faulty));
    rt.block_on(async {
        put_f(&engine, CALLERS as u64 + 1).await;
        let first = first_reserve_held(&engine, &faulty).await;
        let tasks: Vec<_> = (0..CALLERS)
            .map(|_| {
                let e = engine.clone();
                tokio::spawn(async move {
                    let r = e.reserve("t", reserve_one()).await?;
                    Ok::<_, EngineError>(e.reservation(&r.id).map(|seen| seen.status))
                })
            })
            .collect();
        // The queue is full once refusals come: one batch waits.
        until_refused(&engine, 1).await;
        faulty.hold_sync.release();
        assert!(first.await.unwrap().is_ok());
        let (mut seen, mut unseen) = (0, 0);
        for t in tasks {
            match t.await.unwrap() {
                Ok(Some(status)) => {
                    assert_eq!(status, "active");
                    seen += 1;
                }
                Ok(None) => unseen += 1,
                Err(EngineError::Overloaded) => {}
                Err(other) => panic!("unexpected refusal: {other:?}"),
            }
        }
        assert_eq!(
            unseen, 0,
            "acknowledged, yet not in the ledger ({seen} were)"
        );
        assert!(seen >= QUEUE_RECORDS / 2, "only {seen} reserves got in");
        let (fsyncs, records) = engine.log_counters();
        // put, first, then the queued batch (a few more if refusals came early).
        assert!(
            fsyncs * 16 < records,
            "{fsyncs} fsyncs for {records} records"
        );
        engine.check_invariants().unwrap();
    });
}

/// The log's queue is bounded: while an fsync hangs, appends beyond `log_channel_capacity`
/// are refused as overloaded (503), change nothing, and everything accepted is durable once
/// the fsync returns, also after a restart.
#[test]
fn a_full_log_queue_refuses_as_overloaded_and_changes_nothing() {
    const QUEUE_RECORDS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        data_dir: dir.path().join("data"),
        log_channel_capacity: QUEUE_RECORDS,
        ..EngineConfig::default()
    };
    log_queue_holds_exactly(config, QUEUE_RECORDS);
}

/// The queue's bound in bytes holds too, although the writer, not the actor, encodes: with
/// one byte allowed, exactly one record waits (one is always taken, whatever its size).
#[test]
fn a_log_queue_full_in_bytes_refuses_as_overloaded_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        data_dir: dir.path().join("data"),
        log_batch_max_bytes: 1,
        ..EngineConfig::default()
    };
    log_queue_holds_exactly(config, 1);
}

/// Holds an fsync, sends more reserves than `queue_records`, and checks that exactly that
/// many wait (the rest refused as overloaded) and are kept across a restart.
fn log_queue_holds_exactly(config: EngineConfig, queue_records: usize) {
    const CALLERS: usize = 40;
    let faulty = Arc::new(Faulty::default());
    let (rt, engine, _) = open_engine(&config, Some(&faulty));
    let accepted: Vec<uuid::Uuid> = rt.block_on(async {
        put_f(&engine, 1000).await;
        // The first reserve's batch hangs in its fsync; then the queue fills.
        let first = first_reserve_held(&engine, &faulty).await;
        let tasks: Vec<_> = (0..CALLERS)
            .map(|_| {
                let e = engine.clone();
                tokio::spawn(async move { e.reserve("t", reserve_one()).await })
            })
            .collect();
        // Every caller has been answered or is queued once the refusals add up.
        until_refused(&engine, (CALLERS - queue_records) as u64).await;
        faulty.hold_sync.release();
        let mut accepted = vec![first.await.unwrap().expect("the first reserve").id];
        let mut overloaded = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => accepted.push(r.id),
                Err(EngineError::Overloaded) => overloaded += 1,
                Err(other) => panic!("unexpected refusal: {other:?}"),
            }
        }
        assert_eq!(
            accepted.len(),
            1 + queue_records,
            "the queue holds exactly its capacity while the fsync hangs"
        );
        assert_eq!(overloaded, CALLERS - queue_records);
        assert_eq!(engine.product("F").unwrap().reserved, accepted.len() as u64);
        engine.check_invariants().unwrap();
        accepted
    });
    drop(engine);
    drop(rt);

    let (_rt, engine, _) = open_engine(&config, None);
    assert_eq!(engine.product("F").unwrap().reserved, accepted.len() as u64);
    for id in &accepted {
        assert_eq!(
            engine.reservation(id).expect("accepted, so kept").status,
            "active"
        );
    }
}
