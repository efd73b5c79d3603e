//! Replay: read every segment in order, check every checksum, hand each record to the caller.
//!
//! Recovery policy (raft-engine's "tolerate tail corruption"): only the end of the LAST segment
//! may be damaged, because only the last, not-yet-synced batch can be torn by a crash. There a
//! cut-short frame, zeros, or garbage with no valid frame after it is a torn tail: it is cut off
//! (in repair mode) and reported. Zeros are also what the writer leaves on purpose: it writes
//! zeros ahead of its records (see the writer), so a crash usually leaves some. Anything else
//! (a bad frame followed by valid ones, damage in an earlier segment, a bad header) is
//! corruption: refuse, naming file and byte offset.
//!
//! Three threads in a pipeline: the file thread reads the segments and checks every frame's
//! checksum; the reading thread decodes the records; the caller's thread applies them, in log
//! order, in batches. Checking is plain arithmetic over the bytes, a sixth of what one thread
//! did when it also decoded; off that thread, decoding and applying are about even and all
//! three overlap. The caller can move work onto the reading thread too (a `note` taken of
//! each record; the ledger builds its reservation index there).
//! Records are decoded borrowed ([`RecordRef`]): their text points into the segment's bytes,
//! which each batch holds, so decoding allocates nothing for SKUs or strings and nothing is
//! freed per record. (Owned records were ~100 ns each to decode and drop, borrowed ~60, in a
//! loop over the replay bench's log.) Spent batches go back to the reading thread to be
//! refilled, so their lists are not allocated again.

use std::fs::OpenOptions;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::frame::{read_frame, Frame, FRAME_HEADER_BYTES};
use super::record::{decode_payload_ref, Record, RecordRef};
use super::segment::{self, HEADER_BYTES};
use super::WalError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Server start: cut a torn tail off the last segment.
    Repair,
    /// `stockd verify`: change nothing, only report.
    ReadOnly,
}

#[derive(Debug, Clone)]
pub struct TornTail {
    pub path: PathBuf,
    pub offset: u64,
    pub dropped_bytes: u64,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct ReplayOutcome {
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    pub torn_tail: Option<TornTail>,
    /// The last segment (index, path, valid length) for the writer to continue.
    pub last: Option<(u64, PathBuf, u64)>,
    /// Wall time from the first read to the last record applied.
    pub elapsed_ms: u64,
}

impl ReplayOutcome {
    /// Records applied per second of [`ReplayOutcome::elapsed_ms`], for the start-up report.
    pub fn records_per_second(&self) -> u64 {
        self.records * 1000 / self.elapsed_ms.max(1)
    }
}

/// Where a record sits: for error messages.
#[derive(Debug, Clone)]
pub struct Position<'a> {
    pub path: &'a Path,
    pub offset: u64,
}

/// Records per message from the reading thread to the applying one: large enough that the
/// channel costs nothing per record, small enough that the applier starts at once.
const BATCH_RECORDS: usize = 1024;
/// Batches in flight between the two threads: bounds the decoded records held in memory
/// (a few MiB) when applying is the slower side, as it is.
const BATCHES_IN_FLIGHT: usize = 8;

/// Decoded records, each with its byte offset, and what the reading thread's `note` said of
/// each. The notes are taken in a loop of their own once the batch is full, so that a note
/// that looks things up in a table out of the caches has several misses under way at once.
/// (Measured with a note that inserted each id into the full reservation index: taken
/// between two decodes, `verify` of the 10M-record log took 4.6-5.4 s; in the loop,
/// 3.3-4.3 s. The ledger's note now touches only a small map, see `ReplayIndex`.)
///
/// A batch holds records of one segment only (a segment's end sends what is batched), and
/// holds that segment's bytes, which its records borrow: one read of them, or more when the
/// last segment was read again (see [`LAST_SEGMENT_REREADS`]).
struct Batch<N> {
    /// Borrowed from `bytes`, not for `'static`: handed out only through [`Batch::records`],
    /// which ties them to the batch, and cleared before `bytes` is let go (declared first, so
    /// dropped first too).
    records: Vec<(RecordRef<'static>, u64)>,
    notes: Vec<N>,
    /// The reads of the segment the records borrow from. While these are held no one can
    /// change or free those bytes: an `Arc<Vec<u8>>` is only unwrapped or changed when
    /// nothing else holds it. At most 1 + [`LAST_SEGMENT_REREADS`].
    bytes: Vec<Arc<Vec<u8>>>,
}

impl<N> Batch<N> {
    fn new() -> Batch<N> {
        Batch {
            records: Vec::with_capacity(BATCH_RECORDS),
            notes: Vec::with_capacity(BATCH_RECORDS),
            bytes: Vec::with_capacity(1),
        }
    }

    fn records(&self) -> &[(RecordRef<'_>, u64)] {
        // SAFETY: only shortens the records' borrow to that of the batch, which holds their
        // bytes; through a shared slice nothing shorter-lived can be stored in them. (Needed
        // because `SmallVec` makes `RecordRef` invariant over its lifetime.)
        unsafe {
            std::mem::transmute::<&[(RecordRef<'static>, u64)], &[(RecordRef<'_>, u64)]>(
                &self.records,
            )
        }
    }

    /// Decodes the payload at `range` of `bytes` and adds it, taken at `offset`.
    fn push(
        &mut self,
        bytes: &Arc<Vec<u8>>,
        range: std::ops::Range<usize>,
        offset: u64,
    ) -> Result<(), postcard::Error> {
        if !self
            .bytes
            .last()
            .is_some_and(|held| Arc::ptr_eq(held, bytes))
        {
            self.bytes.push(bytes.clone());
        }
        let record = decode_payload_ref(&bytes[range])?;
        // SAFETY: the record borrows the heap buffer of `bytes`, which `self.bytes` now holds
        // too: it neither moves nor changes until `clear` (or drop) has removed the record
        // first. Outside this type the records are only seen as borrowing `self`.
        let record = unsafe { std::mem::transmute::<RecordRef<'_>, RecordRef<'static>>(record) };
        self.records.push((record, offset));
        Ok(())
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Empties the batch and lets go of its segment's bytes.
    fn clear(&mut self) {
        self.records.clear();
        self.notes.clear();
        self.bytes.clear();
    }

    fn take_notes(&mut self, note: &mut impl FnMut(&RecordRef<'_>) -> N) {
        debug_assert!(self.notes.is_empty());
        self.notes
            .extend(self.records.iter().map(|(record, _)| note(record)));
    }
}

/// What the reading thread hands on, in log order.
enum Read<N> {
    /// Checked and decoded records of segment `segment` (an index into the segment list),
    /// each with its byte offset and note.
    Records {
        segment: usize,
        batch: Batch<N>,
    },
    /// The end of segment `segment`: everything in it before `end.valid_bytes` has been sent.
    SegmentEnd {
        segment: usize,
        end: SegmentEnd,
    },
    Failed(WalError),
}

/// How a segment ends.
struct SegmentEnd {
    valid_bytes: u64,
    torn: Option<TornTail>,
    /// A torn tail that is the segment's own header: the whole file goes.
    header_torn: bool,
}

/// Reads the log in `dir`, checks every frame, and calls `apply` on each record in log
/// order, on the caller's thread.
pub fn replay(
    dir: &Path,
    mode: Mode,
    mut apply: impl FnMut(&Record, Position<'_>) -> Result<(), String>,
) -> Result<ReplayOutcome, WalError> {
    replay_batches(dir, mode, &mut |_| (), |records, _, path| {
        for (i, &(ref record, offset)) in records.iter().enumerate() {
            apply(&record.to_record(), Position { path, offset }).map_err(|reason| (i, reason))?;
        }
        Ok(())
    })
}

/// [`replay`] a batch of records at a time (each with its byte offset in `path`), for the
/// ledger's [`replay`](crate::ledger::Ledger::replay). `note` runs on the reading thread,
/// once per record in log order, and what it returns goes with the record: work moved off
/// the applying thread, which is the slower one. `Err((i, reason))` says the batch's record
/// `i` contradicts the log before it.
pub fn replay_batches<N: Send>(
    dir: &Path,
    mode: Mode,
    note: &mut (impl FnMut(&RecordRef<'_>) -> N + Send),
    mut apply: impl FnMut(&[(RecordRef<'_>, u64)], &[N], &Path) -> Result<(), (usize, String)>,
) -> Result<ReplayOutcome, WalError> {
    let started = std::time::Instant::now();
    let segments = segment::list(dir)?;
    let mut outcome = ReplayOutcome {
        segments: segments.len(),
        ..ReplayOutcome::default()
    };
    let (tx, rx) = crossbeam_channel::bounded(BATCHES_IN_FLIGHT);
    // Room for every batch that can exist at once, so handing one back never waits.
    let (spent_tx, spent_rx) = crossbeam_channel::bounded::<Batch<N>>(BATCHES_IN_FLIGHT + 2);
    // One token per segment read and not yet applied: the file thread puts one in before it
    // reads a segment, this thread takes one out at each segment's end, which comes after
    // all its records. A batch borrows its segment's bytes, so the bytes held are at most
    // SEGMENTS_HELD segments, whatever the records' sizes (big records make few batches).
    let (held_tx, held_rx) = crossbeam_channel::bounded::<()>(SEGMENTS_HELD);
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("stockd-replay-read".into())
            .spawn_scoped(scope, || {
                read_segments(&segments, note, tx, spent_rx, held_tx)
            })
            .map_err(|e| WalError::io("cannot start the replay thread for", dir, e))?;
        // Applying stops at the first error; dropping `rx` then stops the reader.
        let applied = (|| {
            for read in rx.iter() {
                match read {
                    Read::Records { segment, mut batch } => {
                        let path = &segments[segment].1;
                        let records = batch.records();
                        apply(records, &batch.notes, path).map_err(|(i, reason)| {
                            WalError::Corrupt {
                                path: path.clone(),
                                offset: records[i].1,
                                reason: format!("record contradicts the log before it: {reason}"),
                            }
                        })?;
                        outcome.records += records.len() as u64;
                        // Let go of the segment's bytes now, so the file thread may read
                        // another segment into them (see `Kept`).
                        batch.clear();
                        // Full only if the reader has stopped: then the batch is freed here.
                        let _ = spent_tx.try_send(batch);
                    }
                    Read::SegmentEnd {
                        segment,
                        end:
                            SegmentEnd {
                                valid_bytes,
                                torn,
                                header_torn,
                            },
                    } => {
                        // Every record of it is applied: the file thread may read another.
                        let _ = held_rx.try_recv();
                        let (index, path) = &segments[segment];
                        if mode == Mode::Repair {
                            if let Some(torn) = &torn {
                                repair(dir, path, torn, header_torn)?;
                            }
                        }
                        if header_torn && mode == Mode::Repair {
                            // Removed: nothing in it was ever acknowledged.
                            outcome.segments -= 1;
                        } else {
                            if !header_torn {
                                outcome.bytes += valid_bytes;
                            }
                            outcome.last = Some((*index, path.clone(), valid_bytes));
                        }
                        if torn.is_some() {
                            outcome.torn_tail = torn;
                        }
                    }
                    Read::Failed(e) => return Err(e),
                }
            }
            Ok(())
        })();
        // Hang up first, so that a reading or file thread waiting to hand over more, or to
        // read more, stops.
        drop(rx);
        drop(held_rx);
        let read = reader.join();
        applied?;
        // The reader ends only after its last message, or on an error it sent, or because
        // applying stopped: a panic there is a bug, shown as one.
        if let Err(panic) = read {
            std::panic::resume_unwind(panic);
        }
        outcome.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(outcome)
    })
}

/// Cuts the torn tail of the last segment (or removes a segment whose header is torn).
fn repair(dir: &Path, path: &Path, torn: &TornTail, header_torn: bool) -> Result<(), WalError> {
    if header_torn {
        std::fs::remove_file(path)
            .map_err(|e| WalError::io("cannot remove torn segment", path, e))?;
        return segment::sync_dir(dir);
    }
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| WalError::io("cannot open log segment to cut its torn tail", path, e))?;
    file.set_len(torn.offset)
        .and_then(|_| file.sync_all())
        .map_err(|e| WalError::io("cannot cut torn tail of log segment", path, e))
}

/// The reading side of [`replay`]: every segment in order, as batches of decoded records,
/// each segment closed by a [`Read::SegmentEnd`]. Stops at the first corruption (sent as
/// [`Read::Failed`]) or when the applying side hangs up. The files are read, and their frames
/// checked, on a thread of their own ([`check_segments`]), up to a segment ahead: reading a
/// 64 MiB segment takes tens of milliseconds, which this pipeline otherwise spent waiting,
/// and checking the frames' checksums was a sixth of this thread's work, this thread being
/// the slower side.
fn read_segments<N>(
    segments: &[(u64, PathBuf)],
    note: &mut impl FnMut(&RecordRef<'_>) -> N,
    tx: crossbeam_channel::Sender<Read<N>>,
    spent: crossbeam_channel::Receiver<Batch<N>>,
    held_tx: crossbeam_channel::Sender<()>,
) {
    let Some((_, first)) = segments.first() else {
        return;
    };
    let (checked_tx, checked_rx) = crossbeam_channel::bounded(CHECKED_IN_FLIGHT);
    std::thread::scope(|scope| {
        let files = std::thread::Builder::new()
            .name("stockd-replay-file".into())
            .spawn_scoped(scope, move || check_segments(segments, checked_tx, held_tx));
        let files = match files {
            Ok(handle) => handle,
            Err(e) => {
                let _ = tx.send(Read::Failed(WalError::io(
                    "cannot start the replay thread for",
                    first,
                    e,
                )));
                return;
            }
        };
        let mut batch = Batch::new();
        for checked in checked_rx.iter() {
            let path = &segments[checked.segment].1;
            let go_on = decode_frames(&checked, path, &mut batch, note, &tx, &spent);
            let Checked {
                segment,
                bytes,
                end,
                ..
            } = checked;
            // The batches hold what they borrow from the segment's bytes.
            drop(bytes);
            let end = match (go_on, end) {
                (Ok(false), _) => break,
                (Ok(true), None) => continue,
                (Err(e), _) | (Ok(true), Some(Err(e))) => Err(e),
                (Ok(true), Some(Ok(end))) => Ok(end),
            };
            // A segment's records go before its end, and records before a fault before the
            // fault (`dump` shows them).
            if !batch.is_empty() && !send_batch(segment, &mut batch, note, &tx, &spent) {
                break;
            }
            let read = match end {
                Ok(end) => Read::SegmentEnd { segment, end },
                Err(e) => Read::Failed(e),
            };
            let failed = matches!(read, Read::Failed(_));
            if tx.send(read).is_err() || failed {
                break;
            }
        }
        // Hang up first, so that a file thread waiting to hand over more, or to read more,
        // stops.
        drop(checked_rx);
        if let Err(panic) = files.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

/// Frames checked per message from the file thread: enough that the channel costs nothing
/// per frame, few enough that decoding starts at once.
const CHECKED_FRAMES: usize = 16 * 1024;
/// Messages in flight from the file thread: about a segment of small records, so that the
/// file thread is not held up while the next segment waits. Bounds the offsets held (8 MiB).
const CHECKED_IN_FLIGHT: usize = 64;
/// Segments read and not yet applied: one being applied, one being decoded and the next,
/// read and checked meanwhile. Bounds the segments' bytes held (batches borrow from them).
const SEGMENTS_HELD: usize = 3;
/// Times the last segment is read again when it shows a fault with a good record after it.
/// `verify` and `dump` take no lock, so they may read a log a server is appending to, and a
/// read that copies one page before a write and the next page after it shows a hole before a
/// good record: corruption to a reader that looks once. The write is done within
/// microseconds, so a second look settles it; a fault still there after these looks is
/// real. (Each look holds the segment's bytes once more until its frames are decoded.)
const LAST_SEGMENT_REREADS: usize = 3;
/// Between those looks: ample time for a write in progress to finish.
const REREAD_PAUSE_MS: u64 = 5;

/// Frames of one segment whose checksums are good, for the reading thread to decode.
struct Checked {
    segment: usize,
    /// The whole segment, shared by all its messages.
    bytes: Arc<Vec<u8>>,
    /// Where each frame starts, then where the last one ends: frame `i` is
    /// `bounds[i]..bounds[i + 1]`.
    bounds: Vec<usize>,
    /// On the segment's last message: how it ends after these frames (a clean end, a torn
    /// tail, or corruption).
    end: Option<Result<SegmentEnd, WalError>>,
}

/// The file thread: reads each segment in order, checks its header and frames, and hands
/// the good frames on in order, then how the segment ends. Corruption is sent after the
/// frames before it, so that those are decoded (and their own faults reported) first, as
/// if read one by one. Stops at the first error or when the reading thread hangs up. Puts a
/// token in `held` before reading each segment (see [`replay_batches`]).
fn check_segments(
    segments: &[(u64, PathBuf)],
    checked_tx: crossbeam_channel::Sender<Checked>,
    held: crossbeam_channel::Sender<()>,
) {
    let count = segments.len();
    let mut kept = Kept::for_segments(segments);
    for (segment, (_, path)) in segments.iter().enumerate() {
        if held.send(()).is_err() {
            return;
        }
        let is_last = segment + 1 == count;
        // Where checking starts: the header, or, after a re-read, the fault seen before.
        let mut from = 0;
        let mut rereads = 0;
        loop {
            let bytes = match read_into(path, kept.spare()) {
                Ok(bytes) => kept.keep(bytes),
                Err(e) => {
                    let _ = checked_tx.send(Checked {
                        segment,
                        bytes: Arc::default(),
                        bounds: Vec::new(),
                        end: Some(Err(WalError::io("cannot read log segment", path, e))),
                    });
                    return;
                }
            };
            let mut send = |bounds: Vec<usize>, end: Option<Result<SegmentEnd, WalError>>| {
                let stop = matches!(end, Some(Err(_)));
                let sent = checked_tx.send(Checked {
                    segment,
                    bytes: bytes.clone(),
                    bounds,
                    end,
                });
                sent.is_ok() && !stop
            };
            let may_reread = is_last && rereads < LAST_SEGMENT_REREADS;
            match check_segment(path, &bytes, from, may_reread, is_last, &mut send) {
                SegmentChecked::Done(true) => break,
                SegmentChecked::Done(false) => return,
                SegmentChecked::Reread { at } => {
                    // The log only grows, so what was checked before `at` is as it was.
                    from = at;
                    rereads += 1;
                    std::thread::sleep(std::time::Duration::from_millis(REREAD_PAUSE_MS));
                }
            }
        }
    }
}

/// Buffers of the segments read last, so that the next is read into one whose segment is
/// decoded instead of into fresh memory: the kernel clears every page of fresh memory on its
/// first touch. Reading the 10M-record log into a new buffer per segment faulted in ~90k
/// pages on the file thread, a third of the replay's faults; with these, ~33k (the first two
/// segments). The process as a whole saves less than that, as the allocator used to hand
/// the freed segments' memory on to the ledger, which now faults in its own.
struct Kept {
    buffers: Vec<Arc<Vec<u8>>>,
    /// Room in each new buffer: the largest segment's size when replay began. Segments
    /// differ by a few bytes, and a buffer a little short would be grown by doubling.
    capacity_bytes: usize,
}

impl Kept {
    fn for_segments(segments: &[(u64, PathBuf)]) -> Kept {
        let largest = segments
            .iter()
            .filter_map(|(_, path)| std::fs::metadata(path).ok())
            .map(|metadata| metadata.len())
            .max();
        Kept {
            buffers: Vec::with_capacity(Self::BUFFERS),
            capacity_bytes: largest.map_or(0, |bytes| usize::try_from(bytes).unwrap_or(0)),
        }
    }

    /// A segment is read only while fewer than [`SEGMENTS_HELD`] segments read before it
    /// wait to be applied (the held tokens), so one of the last this many is free.
    const BUFFERS: usize = SEGMENTS_HELD;

    /// An empty buffer: a kept one that nothing else holds any more (its segment decoded),
    /// else a new one.
    fn spare(&mut self) -> Vec<u8> {
        let Some(free) = self.buffers.iter().position(|b| Arc::strong_count(b) == 1) else {
            return Vec::with_capacity(self.capacity_bytes);
        };
        // Only this thread holds it, so nothing can take another hold of it meanwhile.
        let mut buffer = Arc::try_unwrap(self.buffers.remove(free))
            .expect("a buffer only this thread holds unwraps");
        buffer.clear();
        buffer
    }

    /// Shares `bytes` and keeps them to read a later segment into, dropping the oldest kept.
    fn keep(&mut self, bytes: Vec<u8>) -> Arc<Vec<u8>> {
        let bytes = Arc::new(bytes);
        if self.buffers.len() == Self::BUFFERS {
            self.buffers.remove(0);
        }
        self.buffers.push(bytes.clone());
        bytes
    }
}

/// Reads the whole file at `path` into `buffer` (emptied), growing it only if it is short
/// (a segment being written may have grown since replay began).
fn read_into(path: &Path, mut buffer: Vec<u8>) -> std::io::Result<Vec<u8>> {
    buffer.clear();
    std::fs::File::open(path)?.read_to_end(&mut buffer)?;
    Ok(buffer)
}

/// What checking a segment came to.
enum SegmentChecked {
    /// Checked to its end, or the fault found was sent: go on if true.
    Done(bool),
    /// A fault with a good record after it, in the last segment: the frames before it were
    /// sent; read the segment again and check on from byte `at`.
    Reread { at: usize },
}

/// Checks one segment's header and frames from byte `from` (0: the header first), handing on
/// the good frames [`CHECKED_FRAMES`] at a time through `send`, and last how the segment ends
/// (or the corruption found). With `may_reread`, a fault that has a good record after it is
/// not sent but answered with [`SegmentChecked::Reread`] (see [`LAST_SEGMENT_REREADS`]).
fn check_segment(
    path: &Path,
    bytes: &[u8],
    from: usize,
    may_reread: bool,
    is_last: bool,
    send: &mut impl FnMut(Vec<usize>, Option<Result<SegmentEnd, WalError>>) -> bool,
) -> SegmentChecked {
    let corrupt = |offset, reason| corrupt(path, offset, reason);
    let done = SegmentChecked::Done;
    if from == 0 && bytes.len() < HEADER_BYTES && is_last && segment::header().starts_with(bytes) {
        // Crash while creating the segment: nothing was ever acknowledged in it.
        let end = SegmentEnd {
            valid_bytes: bytes.len() as u64,
            torn: Some(TornTail {
                path: path.to_path_buf(),
                offset: 0,
                dropped_bytes: bytes.len() as u64,
                reason: "segment header incomplete".into(),
            }),
            header_torn: true,
        };
        return done(send(Vec::new(), Some(Ok(end))));
    }
    if from == 0 {
        if let Err(reason) = segment::check_header(bytes) {
            return done(send(Vec::new(), Some(Err(corrupt(0, reason)))));
        }
    }
    // Past the end only if the file shrank since the first look (a server starting on it
    // cut a torn tail): then nothing more is read from it.
    let mut offset = from.max(HEADER_BYTES).min(bytes.len());
    let mut bounds = Vec::with_capacity(CHECKED_FRAMES + 1);
    let tail: Option<(usize, String)> = loop {
        match read_frame(bytes, offset) {
            Frame::Valid { next, .. } => {
                bounds.push(offset);
                offset = next;
                if bounds.len() == CHECKED_FRAMES {
                    bounds.push(offset);
                    let full =
                        std::mem::replace(&mut bounds, Vec::with_capacity(CHECKED_FRAMES + 1));
                    if !send(full, None) {
                        return done(false);
                    }
                }
            }
            Frame::End => break None,
            Frame::ZeroTail => break Some((offset, ZEROS.into())),
            Frame::Incomplete => break Some((offset, "incomplete frame".into())),
            Frame::Bad { reason, .. } => break Some((offset, reason)),
        }
    };
    bounds.push(offset);
    let mut torn = None;
    if let Some((bad_at, reason)) = tail {
        if !is_last {
            return done(send(bounds, Some(Err(corrupt(bad_at, reason)))));
        }
        if let Some(valid_at) = find_valid_frame_after(bytes, bad_at) {
            if may_reread {
                // `bounds` ends where the good frames do: send them if there are any.
                if bounds.len() > 1 && !send(bounds, None) {
                    return done(false);
                }
                return SegmentChecked::Reread { at: bad_at };
            }
            let reason = format!("{reason}, yet a valid record follows at offset {valid_at}");
            return done(send(bounds, Some(Err(corrupt(bad_at, reason)))));
        }
        torn = Some(TornTail {
            path: path.to_path_buf(),
            offset: bad_at as u64,
            dropped_bytes: (bytes.len() - bad_at) as u64,
            reason,
        });
    }
    let end = SegmentEnd {
        valid_bytes: offset as u64,
        torn,
        header_torn: false,
    };
    done(send(bounds, Some(Ok(end))))
}

/// Decodes one message's frames into `batch`, sending it on whenever it is full. Returns
/// whether to go on: false once the applying side has hung up.
fn decode_frames<N>(
    checked: &Checked,
    path: &Path,
    batch: &mut Batch<N>,
    note: &mut impl FnMut(&RecordRef<'_>) -> N,
    tx: &crossbeam_channel::Sender<Read<N>>,
    spent: &crossbeam_channel::Receiver<Batch<N>>,
) -> Result<bool, WalError> {
    for frame in checked.bounds.windows(2) {
        let (offset, next) = (frame[0], frame[1]);
        batch
            .push(
                &checked.bytes,
                offset + FRAME_HEADER_BYTES..next,
                offset as u64,
            )
            .map_err(|e| {
                corrupt(
                    path,
                    offset,
                    format!("checksum ok but record undecodable: {e}"),
                )
            })?;
        if batch.len() == BATCH_RECORDS && !send_batch(checked.segment, batch, note, tx, spent) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Takes the notes of `batch` and sends it on, leaving a spent (or new) batch in its place.
/// Returns false if the applying side has hung up.
fn send_batch<N>(
    segment: usize,
    batch: &mut Batch<N>,
    note: &mut impl FnMut(&RecordRef<'_>) -> N,
    tx: &crossbeam_channel::Sender<Read<N>>,
    spent: &crossbeam_channel::Receiver<Batch<N>>,
) -> bool {
    // A batch the applier is done with (emptied there), refilled instead of allocated.
    let next = match spent.try_recv() {
        Ok(batch) => {
            debug_assert!(batch.is_empty() && batch.notes.is_empty() && batch.bytes.is_empty());
            batch
        }
        Err(_) => Batch::new(),
    };
    let mut full = std::mem::replace(batch, next);
    full.take_notes(note);
    tx.send(Read::Records {
        segment,
        batch: full,
    })
    .is_ok()
}

/// Corruption at byte `offset` of the segment at `path`: found by the file thread's checks
/// or by decoding, reported the same way.
fn corrupt(path: &Path, offset: usize, reason: String) -> WalError {
    WalError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    }
}

/// The reason given for a tail of zeros: the writer writes zeros ahead of its records, so
/// after a crash these are usually that space, not damage.
pub const ZEROS: &str =
    "zeros after the last record (space written ahead, or a write that never landed)";

/// A torn write leaves no valid frame behind it; a flipped byte in the middle does.
fn find_valid_frame_after(bytes: &[u8], bad_at: usize) -> Option<usize> {
    for at in bad_at + 1..bytes.len() {
        match read_frame(bytes, at) {
            Frame::Valid { payload, .. } if decode_payload_ref(payload).is_ok() => return Some(at),
            // Nothing but zeros from here on (and checking that again at every later offset
            // would be quadratic in the megabyte of zeros the writer keeps ahead).
            Frame::ZeroTail | Frame::End => return None,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::frame::encode_record;
    use crate::wal::Event;

    fn frame(n: u128) -> Vec<u8> {
        let record = Record {
            at_ms: 1,
            actor: "t".into(),
            op_id: uuid::Uuid::from_u128(n),
            event: Event::Extended {
                reservation_id: uuid::Uuid::from_u128(n),
                expires_at_ms: 2,
            },
        };
        let mut out = Vec::new();
        encode_record(&record, &mut out).unwrap();
        out
    }

    /// What `check_segment` sent: each message's frame bounds, and the end if one came.
    type Sent = Vec<(Vec<usize>, Option<Result<SegmentEnd, WalError>>)>;

    fn check(bytes: &[u8], from: usize, may_reread: bool) -> (SegmentChecked, Sent) {
        let mut sent = Sent::new();
        let mut send = |bounds: Vec<usize>, end: Option<Result<SegmentEnd, WalError>>| {
            let stop = matches!(end, Some(Err(_)));
            sent.push((bounds, end));
            !stop
        };
        let path = Path::new("0000000000000001.log");
        let checked = check_segment(path, bytes, from, may_reread, true, &mut send);
        (checked, sent)
    }

    /// A segment's buffer is read into again only once nothing else holds it (its frames
    /// are decoded), and a buffer shorter than the file grows to take it all.
    #[test]
    fn a_segment_buffer_is_reused_only_once_nothing_else_holds_it() {
        let mut kept = Kept {
            buffers: Vec::new(),
            capacity_bytes: 64,
        };
        let dir = tempfile::tempdir().unwrap();
        let (short, long) = (dir.path().join("short"), dir.path().join("long"));
        std::fs::write(&short, [7u8; 10]).unwrap();
        std::fs::write(&long, [9u8; 100]).unwrap();

        let read = |kept: &mut Kept, path: &Path| {
            let spare = kept.spare();
            kept.keep(read_into(path, spare).unwrap())
        };
        let first = read(&mut kept, &short);
        assert!(first.capacity() >= 64 && first[..] == [7u8; 10]);
        let second = read(&mut kept, &long);
        assert_eq!(
            second[..],
            [9u8; 100],
            "grown past its capacity to the whole file"
        );

        // Both still held (as by messages not yet decoded): a new buffer.
        let fresh = kept.spare();
        assert!(fresh.is_empty() && fresh.as_ptr() != first.as_ptr());
        assert!(fresh.as_ptr() != second.as_ptr());

        // The first decoded: its buffer comes back, emptied.
        let first_at = first.as_ptr();
        drop(first);
        let reused = kept.spare();
        assert!(reused.is_empty() && reused.as_ptr() == first_at);

        // No more than `Kept::BUFFERS` are kept: the oldest go.
        let mut newest = vec![kept.keep(reused), kept.keep(fresh)];
        while newest.len() < Kept::BUFFERS {
            newest.push(kept.keep(Vec::new()));
        }
        assert_eq!(kept.buffers.len(), Kept::BUFFERS);
        assert!(kept.buffers.iter().all(|b| !Arc::ptr_eq(b, &second)));
        assert!(kept
            .buffers
            .iter()
            .zip(&newest)
            .all(|(k, n)| Arc::ptr_eq(k, n)));
    }

    /// A batch's records borrow the bytes it holds: from one read of a segment, or from two
    /// when the segment was read again mid-batch. They stay readable until it is cleared,
    /// and clearing lets go of the bytes (so that `Kept` may read the next segment into them).
    #[test]
    fn a_batch_holds_every_read_its_records_borrow_from() {
        let (a, b) = (frame(1), frame(2));
        let first_read = Arc::new([segment::header().as_slice(), &a].concat());
        let second_read = Arc::new([segment::header().as_slice(), &a, &b].concat());
        let mut batch = Batch::<()>::new();
        let at = HEADER_BYTES;
        batch
            .push(
                &first_read,
                at + FRAME_HEADER_BYTES..at + a.len(),
                at as u64,
            )
            .unwrap();
        let at = HEADER_BYTES + a.len();
        batch
            .push(
                &second_read,
                at + FRAME_HEADER_BYTES..at + b.len(),
                at as u64,
            )
            .unwrap();
        assert_eq!(batch.bytes.len(), 2, "both reads held");
        let (weak_first, weak_second) = (Arc::downgrade(&first_read), Arc::downgrade(&second_read));
        drop((first_read, second_read));
        // Read after the buffers' other holders are gone: the actor's name points into them.
        let read: Vec<(u128, &str)> = batch
            .records()
            .iter()
            .map(|(r, _)| (r.op_id.as_u128(), r.actor))
            .collect();
        assert_eq!(read, [(1, "t"), (2, "t")]);
        assert!(weak_first.upgrade().is_some() && weak_second.upgrade().is_some());
        batch.clear();
        assert!(batch.is_empty());
        assert!(weak_first.upgrade().is_none() && weak_second.upgrade().is_none());
    }

    /// A read of the last segment that copied a page before a write and the next after it
    /// shows a hole before a good record. Checked again from the hole, once the write has
    /// landed, the segment is whole; a hole still there at the last look is corruption.
    #[test]
    fn a_hole_before_a_good_record_in_the_last_segment_is_looked_at_again() {
        let (a, b, c) = (frame(1), frame(2), frame(3));
        let hole_at = HEADER_BYTES + a.len();
        let mut whole = segment::header().to_vec();
        for f in [&a, &b, &c] {
            whole.extend_from_slice(f);
        }
        let mut torn_read = whole.clone();
        torn_read[hole_at..hole_at + b.len()].fill(0);

        let (checked, sent) = check(&torn_read, 0, true);
        assert!(matches!(checked, SegmentChecked::Reread { at } if at == hole_at));
        assert_eq!(sent.len(), 1, "the good frame before the hole, and no end");
        assert_eq!(sent[0].0, vec![HEADER_BYTES, hole_at]);
        assert!(sent[0].1.is_none());

        let (checked, sent) = check(&whole, hole_at, true);
        assert!(matches!(checked, SegmentChecked::Done(true)));
        let c_at = hole_at + b.len();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, vec![hole_at, c_at, whole.len()]);
        match &sent[0].1 {
            Some(Ok(end)) => {
                assert_eq!(end.valid_bytes, whole.len() as u64);
                assert!(end.torn.is_none());
            }
            _ => panic!("the segment ends cleanly"),
        }

        let (checked, sent) = check(&torn_read, hole_at, false);
        assert!(matches!(checked, SegmentChecked::Done(false)));
        match sent.last() {
            Some((bounds, Some(Err(WalError::Corrupt { offset, reason, .. })))) => {
                assert_eq!(bounds, &vec![hole_at]);
                assert_eq!(*offset, hole_at as u64);
                assert!(reason.contains(&format!("valid record follows at offset {c_at}")));
            }
            _ => panic!("a hole still there at the last look is corruption"),
        }
    }
}
