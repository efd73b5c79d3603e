//! The log writer: one thread, one open segment, group commit.
//!
//! Producers (actors) push their record onto the staging list, under one short lock that
//! also hands out the log sequence number (LSN) ordering it. The writer swaps the staging
//! list for an empty one, encodes what it took into one buffer, writes it with one `write`,
//! calls `fdatasync` once, locks the read model ([`crate::ledger::Ledger`]), publishes the
//! new durable LSN, which wakes every reply waiting for it, and applies the batch to the read
//! model under that lock: whoever reads after a reply sees its change. A
//! write or sync error is fatal: nothing more is acknowledged and the server exits so a
//! supervisor restarts it and replay decides.
//!
//! Why a staging buffer and not a channel of records: a channel message per record meant a
//! frame allocated per record, the record copied into and out of the channel and into the
//! batch, and a free on another thread; in a flash sale the writer spent more time on those
//! copies than on applying the batch to the ledger.
//!
//! Why the writer encodes and not the actor: a hot product's actor and the HTTP front share
//! one core and are the bottleneck, while the writer waits on `fdatasync` most of the time;
//! moving the encoding to it (~650 instructions a reserve) made 2M hot-SKU reserves ~6%
//! faster. What waits stays bounded in bytes by [`Record::frame_bytes_bound`], computed
//! without encoding; being an upper bound, it fills sooner than the frames would (~165
//! bytes for a one-item reserve whose frame is ~60).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::oneshot;

use super::frame::encode_record;
use super::lock::DirLock;
use super::record::Record;
use super::segment;
use super::storage::{SegmentFile, Storage};
use super::WalError;
use crate::ledger::Ledger;
use crate::metrics::Metrics;

/// The write buffer's first capacity; it grows to the largest batch seen, up to the bound.
const WRITE_BUFFER_BYTES_INITIAL: usize = 64 * 1024;

/// Zeros written ahead of the last record at a time (see `Writer::write_zeros_ahead`).
const ZERO_AHEAD_BYTES: u64 = 1024 * 1024;

/// Log sequence number: the order in which records were handed to the writer (in memory only).
pub type Lsn = u64;

#[derive(Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    /// A segment is closed and a new one started once it reaches this size.
    pub segment_size_bytes: u64,
    /// Records that may wait for the writer; beyond it appends are refused (503 overloaded).
    pub channel_capacity: usize,
    /// Bytes that may wait for the writer, which is also the bound on one batch (one write +
    /// one fdatasync): beyond it appends are refused (503 overloaded). One record is always
    /// taken, whatever its size.
    pub batch_max_bytes: usize,
    /// The file layer ([`Disk`](super::storage::Disk) but in fault-injection tests).
    pub storage: Arc<dyn Storage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("the log writer's queue is full")]
    Overloaded,
    #[error("the log cannot be written")]
    Unavailable,
}

/// Records handed to the writer and not yet taken by it.
struct Staged {
    /// The records in LSN order, for the writer to encode, write and, once durable, apply to
    /// the ledger.
    records: Vec<Record>,
    /// At least the bytes their frames will take ([`Record::frame_bytes_bound`]).
    bytes_bound: usize,
    /// LSN of the last record staged; the next one gets one more.
    last_lsn: Lsn,
    /// Shutdown began: nothing more is appended.
    closed: bool,
    /// Shutdown's last request: end the segment at the last record, then say so and stop.
    close: Option<oneshot::Sender<()>>,
    /// Every [`Log`] handle is gone: the writer writes what is staged and stops.
    handles_gone: bool,
    /// The writer waits on [`LogShared::ready`]; whoever stages something must wake it.
    writer_waiting: bool,
    /// The writer stopped after a failure: nothing staged now is ever written.
    writer_failed: bool,
}

/// Durability watermark shared by the writer (publisher) and every waiting reply.
///
/// Waiters are kept ordered by the LSN they wait for, so an fsync wakes exactly the replies
/// it made durable (a broadcast would wake all of them after every fsync, for nothing).
#[derive(Clone)]
pub struct Durability {
    inner: Arc<DurabilityInner>,
}

struct DurabilityInner {
    durable_lsn: AtomicU64,
    failed: AtomicBool,
    waiters: Mutex<BTreeMap<Lsn, Vec<oneshot::Sender<bool>>>>,
    /// Group-commit counters: records per fsync = records_synced / fsyncs.
    fsyncs: AtomicU64,
    records_synced: AtomicU64,
}

impl Durability {
    fn new(lsn: Lsn) -> Self {
        Durability {
            inner: Arc::new(DurabilityInner {
                durable_lsn: AtomicU64::new(lsn),
                failed: AtomicBool::new(false),
                waiters: Mutex::new(BTreeMap::new()),
                fsyncs: AtomicU64::new(0),
                records_synced: AtomicU64::new(0),
            }),
        }
    }

    pub fn durable_lsn(&self) -> Lsn {
        self.inner.durable_lsn.load(Ordering::Acquire)
    }

    pub fn is_failed(&self) -> bool {
        self.inner.failed.load(Ordering::Acquire)
    }

    /// Resolves once every record up to `lsn` is fsynced; `Err` if the log failed first.
    pub async fn wait(&self, lsn: Lsn) -> Result<(), AppendError> {
        // True already for callers whose (busy) actor held the reply until it was durable.
        if self.durable_lsn() >= lsn && !self.is_failed() {
            return Ok(());
        }
        match self.watch(lsn)? {
            None => Ok(()),
            Some(rx) => match rx.await {
                Ok(true) => Ok(()),
                _ => Err(AppendError::Unavailable),
            },
        }
    }

    /// A receiver told `true` once every record up to `lsn` is fsynced, `false` if the log
    /// failed first; `None` if that is so already.
    pub fn watch(&self, lsn: Lsn) -> Result<Option<oneshot::Receiver<bool>>, AppendError> {
        let mut waiters = self.inner.waiters.lock();
        // Checked under the lock that `publish` and `fail` take: no wake-up can be missed.
        if self.is_failed() {
            return Err(AppendError::Unavailable);
        }
        if self.durable_lsn() >= lsn {
            return Ok(None);
        }
        let (tx, rx) = oneshot::channel();
        waiters.entry(lsn).or_default().push(tx);
        Ok(Some(rx))
    }

    /// (fsyncs, records made durable) since start.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.inner.fsyncs.load(Ordering::Relaxed),
            self.inner.records_synced.load(Ordering::Relaxed),
        )
    }

    fn publish(&self, lsn: Lsn, records: u64) {
        self.inner.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.inner
            .records_synced
            .fetch_add(records, Ordering::Relaxed);
        let ready = {
            let mut waiters = self.inner.waiters.lock();
            self.inner.durable_lsn.store(lsn, Ordering::Release);
            let later = waiters.split_off(&(lsn + 1));
            std::mem::replace(&mut *waiters, later)
        };
        for tx in ready.into_values().flatten() {
            let _ = tx.send(true);
        }
    }

    fn fail(&self) {
        let all = {
            let mut waiters = self.inner.waiters.lock();
            self.inner.failed.store(true, Ordering::Release);
            std::mem::take(&mut *waiters)
        };
        for tx in all.into_values().flatten() {
            let _ = tx.send(false);
        }
    }
}

/// Handle for appending records. Cheap to clone; every actor holds one.
#[derive(Clone)]
pub struct Log {
    shared: Arc<LogShared>,
    /// Dropped with the last handle, which tells the writer to stop.
    _handles: Arc<LastHandle>,
}

struct LogShared {
    staged: Mutex<Staged>,
    /// Signalled when the writer waits and something was staged (or close / last handle).
    ready: Condvar,
    records_max: usize,
    bytes_max: usize,
    durability: Durability,
}

impl LogShared {
    /// Wakes the writer if it waits (called with the staging lock held).
    fn wake_writer(&self, staged: &mut Staged) {
        if staged.writer_waiting {
            staged.writer_waiting = false;
            self.ready.notify_one();
        }
    }

    /// The writer stopped for good: fails every waiting reply and refuses further appends.
    fn writer_failed(&self) {
        self.durability.fail();
        let mut staged = self.staged.lock();
        staged.writer_failed = true;
        // A close asked meanwhile is answered (by dropping it): there is nothing to end.
        staged.close = None;
    }
}

/// A writer thread that panics (a broken invariant) fails the log on its way out, so that no
/// reply waits for it forever.
struct FailOnUnwind<'a>(&'a LogShared);

impl Drop for FailOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.writer_failed();
        }
    }
}

struct LastHandle(Arc<LogShared>);

impl Drop for LastHandle {
    fn drop(&mut self) {
        let mut staged = self.0.staged.lock();
        staged.handles_gone = true;
        self.0.wake_writer(&mut staged);
    }
}

/// Called once, from the writer thread, when the log has failed for good.
pub type FatalHook = Box<dyn FnOnce(String) + Send>;

impl Log {
    /// Starts the writer thread, appending to `last` (from replay) or a new first segment.
    pub fn start(
        config: LogConfig,
        dir_lock: DirLock,
        last: Option<(u64, PathBuf, u64)>,
        ledger: Arc<RwLock<Ledger>>,
        metrics: Arc<Metrics>,
        on_fatal: FatalHook,
    ) -> Result<Log, WalError> {
        let (index, path, file, len) = match last {
            Some((index, path, len)) => {
                let file = config
                    .storage
                    .open_write(&path)
                    .map_err(|e| WalError::io("cannot open log segment for writing", &path, e))?;
                (index, path, file, len)
            }
            None => {
                let (file, path) = segment::create(config.storage.as_ref(), &config.dir, 1)?;
                (1, path, file, segment::HEADER_BYTES as u64)
            }
        };
        let shared = Arc::new(LogShared {
            staged: Mutex::new(Staged {
                records: Vec::new(),
                bytes_bound: 0,
                last_lsn: 0,
                closed: false,
                close: None,
                handles_gone: false,
                writer_waiting: false,
                writer_failed: false,
            }),
            ready: Condvar::new(),
            records_max: config.channel_capacity.max(1),
            bytes_max: config.batch_max_bytes.max(1),
            durability: Durability::new(0),
        });
        let writer = Writer {
            config,
            index,
            path,
            file,
            len,
            zeroed_until: len,
            zero_ahead: true,
            ledger,
            metrics,
            _dir_lock: dir_lock,
        };
        let for_writer = shared.clone();
        std::thread::Builder::new()
            .name("stockd-log".into())
            .spawn(move || writer.run(&for_writer, on_fatal))
            .map_err(|e| WalError::io("cannot start the log writer thread", "", e))?;
        Ok(Log {
            _handles: Arc::new(LastHandle(shared.clone())),
            shared,
        })
    }

    /// Stages the record for the writer. Never blocks on the disk: a full staging list (in
    /// records or bytes) is `Overloaded`.
    pub fn append(&self, record: Record) -> Result<Lsn, AppendError> {
        let mut staged = self.shared.staged.lock();
        if staged.closed || self.shared.durability.is_failed() {
            return Err(AppendError::Unavailable);
        }
        if !staged.records.is_empty()
            && (staged.records.len() >= self.shared.records_max
                || staged.bytes_bound >= self.shared.bytes_max)
        {
            return Err(AppendError::Overloaded);
        }
        staged.bytes_bound += record.frame_bytes_bound();
        staged.records.push(record);
        staged.last_lsn += 1;
        let lsn = staged.last_lsn;
        self.shared.wake_writer(&mut staged);
        Ok(lsn)
    }

    pub fn durability(&self) -> &Durability {
        &self.shared.durability
    }

    /// The LSN of the last record handed to the writer.
    pub fn last_lsn(&self) -> Lsn {
        self.shared.staged.lock().last_lsn
    }

    /// Graceful shutdown: refuses further appends, waits for everything appended to be
    /// durable, then has the writer end the segment at its last record and stop, so that a
    /// cleanly stopped server leaves no zeros behind.
    pub async fn close(&self) -> Result<(), AppendError> {
        let last = {
            let mut staged = self.shared.staged.lock();
            staged.closed = true;
            staged.last_lsn
        };
        self.shared.durability.wait(last).await?;
        let (done, closed) = oneshot::channel();
        {
            let mut staged = self.shared.staged.lock();
            if staged.writer_failed {
                // Stopped without ending the segment: replay cuts the zeros it left.
                return Ok(());
            }
            staged.close = Some(done);
            self.shared.wake_writer(&mut staged);
        }
        let _ = closed.await;
        Ok(())
    }

    /// Waits until everything appended so far is durable (shutdown, startup).
    pub async fn flush(&self) -> Result<(), AppendError> {
        let lsn = self.last_lsn();
        self.shared.durability.wait(lsn).await
    }
}

struct Writer {
    config: LogConfig,
    index: u64,
    path: PathBuf,
    file: Box<dyn SegmentFile>,
    /// Where the next record goes: the end of the last one.
    len: u64,
    /// The file's size: zeros from `len` up to here, written ahead.
    zeroed_until: u64,
    /// Zeros are written ahead unless that failed in this segment.
    zero_ahead: bool,
    ledger: Arc<RwLock<Ledger>>,
    metrics: Arc<Metrics>,
    /// The data directory stays locked for as long as this thread may write to it.
    _dir_lock: DirLock,
}

impl Writer {
    fn run(mut self, shared: &LogShared, on_fatal: FatalHook) {
        let _unwinding = FailOnUnwind(shared);
        // Reused each batch, so it keeps its capacity; the record list is swapped with the
        // staging one for the same reason.
        let mut bytes: Vec<u8> = Vec::with_capacity(WRITE_BUFFER_BYTES_INITIAL);
        let mut records: Vec<Record> = Vec::new();
        loop {
            let (last_lsn, close, handles_gone) = {
                let mut staged = shared.staged.lock();
                while staged.records.is_empty() && staged.close.is_none() && !staged.handles_gone {
                    staged.writer_waiting = true;
                    shared.ready.wait(&mut staged);
                }
                std::mem::swap(&mut staged.records, &mut records);
                staged.bytes_bound = 0;
                (staged.last_lsn, staged.close.take(), staged.handles_gone)
            };
            // `close` comes only once every record is durable, so never with records; if it
            // did, they would be written first.
            if !records.is_empty() {
                for record in &records {
                    if let Err(e) = encode_record(record, &mut bytes) {
                        // Our own types always encode: a bug, not an operating condition.
                        panic!("record failed to encode: {e}");
                    }
                }
                let count = records.len() as u64;
                let started = std::time::Instant::now();
                if let Err(e) = self.write_batch(&bytes) {
                    // Report first, then fail the waiters: whoever sees a 503 can count on the
                    // failure being logged and the shutdown under way.
                    let message = describe_failure(&e);
                    tracing::error!("{message}");
                    on_fatal(message);
                    shared.writer_failed();
                    return;
                }
                self.metrics
                    .batch_synced(records.len(), bytes.len(), started.elapsed());
                {
                    // The replies go out before the batch is applied, so that the callers'
                    // next requests (on the event loop) overlap the apply (on this thread):
                    // with 1,024 callers on one product, batches grew from ~420 to ~480
                    // records and durable reserves/s by ~5%. Read-your-writes still holds:
                    // the ledger is locked before the publish, so a read that starts after
                    // a reply waits for the apply.
                    let mut ledger = self.ledger.write();
                    shared.durability.publish(last_lsn, count);
                    let first_lsn = last_lsn + 1 - count;
                    if let Err((i, e)) = ledger.apply_batch(&records) {
                        // The actors decided this change against the same counts: a
                        // broken invariant.
                        panic!(
                            "durable record {} contradicts the ledger: {e}",
                            first_lsn + i as u64
                        );
                    }
                }
                // Outside the lock: freeing the records holds up no reader.
                records.clear();
                bytes.clear();
            }
            if let Some(done) = close {
                self.end_segment();
                let _ = done.send(());
                return;
            }
            // With every handle gone nothing more can be staged: what was is written now.
            if handles_gone {
                self.end_segment();
                return;
            }
        }
    }

    /// Cuts the zeros written ahead: the segment ends at its last record. Best effort (at
    /// shutdown): replay cuts them too.
    fn end_segment(&mut self) {
        if self.zeroed_until > self.len {
            let _ = self.file.set_len(self.len);
            let _ = self.file.sync_data();
            self.zeroed_until = self.len;
        }
    }

    fn write_batch(&mut self, buf: &[u8]) -> Result<(), WalError> {
        let header = segment::HEADER_BYTES as u64;
        if self.len > header && self.len + buf.len() as u64 > self.config.segment_size_bytes {
            // A full segment ends at its last record: only the last segment may have zeros
            // after it (replay treats anything else in an earlier segment as damage).
            self.file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data())
                .map_err(|e| WalError::io("cannot close log segment", &self.path, e))?;
            let (file, path) = segment::create(
                self.config.storage.as_ref(),
                &self.config.dir,
                self.index + 1,
            )?;
            self.index += 1;
            self.file = file;
            self.path = path;
            self.len = header;
            self.zeroed_until = header;
            self.zero_ahead = true;
        }
        let end = self.len + buf.len() as u64;
        if end > self.zeroed_until && self.zero_ahead {
            self.write_zeros_ahead(end);
        }
        if let Err(e) = self.file.write_all_at(buf, self.len) {
            // Leave no half-written frame behind if we can; replay would cut it anyway.
            let _ = self.file.set_len(self.len);
            return Err(WalError::io("cannot write to log segment", &self.path, e));
        }
        if let Err(e) = self.file.sync_data() {
            // The log stops here: leave no zeros after the batch, as if never written ahead.
            let _ = self.file.set_len(end);
            return Err(WalError::io("cannot fdatasync log segment", &self.path, e));
        }
        self.len = end;
        self.zeroed_until = self.zeroed_until.max(end);
        Ok(())
    }

    /// Writes zeros from the end of the file to ZERO_AHEAD_BYTES past `end` (within the
    /// segment), so that the batches written over them until then do not change the file's
    /// size: their `fdatasync` then has no metadata to flush (93 µs instead of 140 µs per
    /// fdatasync of a 1.5 KB write on this machine's disk). Only an optimisation: if it fails
    /// (a disk about to fill), the zeros are cut back and this segment is simply appended to.
    fn write_zeros_ahead(&mut self, end: u64) {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let target = (end + ZERO_AHEAD_BYTES).min(self.config.segment_size_bytes.max(end));
        let mut at = self.zeroed_until;
        while at < target {
            let chunk = (target - at).min(ZEROS.len() as u64) as usize;
            if self.file.write_all_at(&ZEROS[..chunk], at).is_err() {
                let _ = self.file.set_len(self.len);
                self.zeroed_until = self.len;
                self.zero_ahead = false;
                return;
            }
            at += chunk as u64;
        }
        self.zeroed_until = target;
    }
}

fn describe_failure(e: &WalError) -> String {
    let disk_full = matches!(e, WalError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull);
    if disk_full {
        format!(
            "log write failed, disk full: {e}. Nothing further is acknowledged; stockd exits. \
             Free space on the data directory's file system and restart: replay keeps every \
             acknowledged change."
        )
    } else {
        format!(
            "log write failed: {e}. Nothing further is acknowledged; stockd exits (a failed fsync \
             cannot be retried safely). Check the disk, then restart: replay keeps every \
             acknowledged change."
        )
    }
}
