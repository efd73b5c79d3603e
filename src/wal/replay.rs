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
//! Three threads in a pipeline: the file thread reads the segments, a few MiB at a time (see
//! [`Piece`]), and checks every frame's checksum; the reading thread decodes the records; the
//! caller's thread applies them, in log order, in batches. Checking is plain arithmetic over
//! the bytes, a sixth of what one thread did when it also decoded; applying is the busiest of
//! the three, and all three overlap. The caller can move work onto the reading thread too (a
//! `note` taken of each record; the ledger builds its reservation index there).
//! Records are decoded borrowed ([`RecordRef`]): their text points into the pieces of the
//! segment that each batch holds, so decoding allocates nothing for SKUs or strings and
//! nothing is freed per record. (Owned records were ~100 ns each to decode and drop, borrowed ~60, in a
//! loop over the replay bench's log.) Spent batches go back to the reading thread to be
//! refilled, so their lists are not allocated again.

use std::fs::OpenOptions;
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::frame::{read_frame, Frame, FRAME_HEADER_BYTES};
use super::record::{decode_payload_ref, Record, RecordRef};
use super::segment::{self, HEADER_BYTES};
use super::WalError;
use crate::domain::limits::RECORD_MAX_BYTES;

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
/// (~5 MiB) when applying is the slower side, as it is. Deep enough (~6 ms of applying) that
/// the applier keeps busy while the reading thread gives its core to the file thread for a
/// piece. (8 before pieces; at 32 a 10M-record replay was no slower, 1M slightly quicker,
/// both within the machine's noise.)
const BATCHES_IN_FLIGHT: usize = 32;

/// Distinct pieces a batch may hold before it is sent on, whatever its records' count: so
/// that a batch of large records cannot hold every piece the file thread may have, which
/// would leave it waiting for a piece while the batch waits for its frames.
const BATCH_PIECES_MAX: usize = 2;

/// Decoded records, each with its byte offset, and what the reading thread's `note` said of
/// each. The notes are taken in a loop of their own once the batch is full, so that a note
/// that looks things up in a table out of the caches has several misses under way at once.
/// (Measured with a note that inserted each id into the full reservation index: taken
/// between two decodes, `verify` of the 10M-record log took 4.6-5.4 s; in the loop,
/// 3.3-4.3 s. The ledger's note now touches only a small map, see `ReplayIndex`.)
///
/// A batch holds records of one segment only (a segment's end sends what is batched), and
/// holds the pieces of that segment its records borrow from: at most [`BATCH_PIECES_MAX`].
struct Batch<N> {
    /// Borrowed from `bytes`, not for `'static`: handed out only through [`Batch::records`],
    /// which ties them to the batch, and cleared before `bytes` is let go (declared first, so
    /// dropped first too).
    records: Vec<(RecordRef<'static>, u64)>,
    notes: Vec<N>,
    /// The pieces the records borrow from. While these are held no one can change or free
    /// those bytes: a piece's buffer goes back to be read into only when the last `Arc` of
    /// it is dropped.
    bytes: Vec<Arc<Piece>>,
}

impl<N> Batch<N> {
    fn new() -> Batch<N> {
        Batch {
            records: Vec::with_capacity(BATCH_RECORDS),
            notes: Vec::with_capacity(BATCH_RECORDS),
            bytes: Vec::with_capacity(BATCH_PIECES_MAX),
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

    /// Whether adding a record of `piece` would take a piece more than the batch may hold.
    fn is_full_for(&self, piece: &Arc<Piece>) -> bool {
        self.bytes.len() >= BATCH_PIECES_MAX && !self.holds_last(piece)
    }

    fn holds_last(&self, piece: &Arc<Piece>) -> bool {
        self.bytes
            .last()
            .is_some_and(|held| Arc::ptr_eq(held, piece))
    }

    /// Decodes the payload at `range` of `piece` and adds it, taken at `offset`.
    fn push(
        &mut self,
        piece: &Arc<Piece>,
        range: std::ops::Range<usize>,
        offset: u64,
    ) -> Result<(), postcard::Error> {
        if !self.holds_last(piece) {
            self.bytes.push(piece.clone());
        }
        let record = decode_payload_ref(&piece.bytes[range])?;
        // SAFETY: the record borrows the heap buffer of `piece`, which `self.bytes` now holds
        // too: it neither moves nor changes until `clear` (or drop) has removed the record
        // first (a piece's buffer is taken back only when its last `Arc` is dropped).
        // Outside this type the records are only seen as borrowing `self`.
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

    /// Empties the batch and lets go of its pieces.
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
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("stockd-replay-read".into())
            .spawn_scoped(scope, || read_segments(&segments, note, tx, spent_rx))
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
                        // Let go of the pieces now, so the file thread may read into them
                        // again (see `Pool`).
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
        // Hang up first, so that a reading thread waiting to hand over more stops.
        drop(rx);
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
/// checked, on a thread of their own ([`check_segments`]), a few pieces ahead: reading takes
/// time this pipeline otherwise spent waiting, and checking the frames' checksums was a
/// sixth of this thread's work, this thread being the slower side.
fn read_segments<N>(
    segments: &[(u64, PathBuf)],
    note: &mut impl FnMut(&RecordRef<'_>) -> N,
    tx: crossbeam_channel::Sender<Read<N>>,
    spent: crossbeam_channel::Receiver<Batch<N>>,
) {
    let Some((_, first)) = segments.first() else {
        return;
    };
    let (checked_tx, checked_rx) = crossbeam_channel::bounded(CHECKED_IN_FLIGHT);
    // Never sent on: dropped when this thread is done, which stops a file thread that is
    // waiting for a piece (pieces held in the channels are only freed after it has gone).
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    std::thread::scope(|scope| {
        let files = std::thread::Builder::new()
            .name("stockd-replay-file".into())
            .spawn_scoped(scope, move || check_segments(segments, checked_tx, stop_rx));
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
                piece,
                end,
                ..
            } = checked;
            // The batches hold what they borrow from the piece.
            drop(piece);
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
        // Hang up first, so that a file thread waiting to hand over more, or waiting for a
        // piece to read into, stops.
        drop(checked_rx);
        drop(stop_tx);
        if let Err(panic) = files.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

/// Frames checked per message from the file thread: enough that the channel costs nothing
/// per frame, few enough that decoding starts at once.
const CHECKED_FRAMES: usize = 16 * 1024;
/// Messages in flight from the file thread: about a segment of small records, so that the
/// file thread is not held up while the next piece waits. Bounds the offsets held (8 MiB).
const CHECKED_IN_FLIGHT: usize = 64;
/// Bytes read into a piece at a time, after what it carries over from the piece before.
/// Small enough that checking (and so decoding and applying) starts within a few
/// milliseconds of replay's start, where reading a whole 64 MiB segment first took 50-70 ms
/// with every other thread waiting (a fifth of a 1M-record replay); large enough that the
/// pieces' hand-overs cost nothing per record. At least twice the largest frame, so that a
/// piece always takes in a whole frame after the part of one carried over (see
/// [`check_piece`]).
pub const PIECE_READ_BYTES: usize = 4 << 20;
/// The largest frame a segment can hold.
const FRAME_MAX_BYTES: usize = FRAME_HEADER_BYTES + RECORD_MAX_BYTES;
const _: () = assert!(PIECE_READ_BYTES >= 2 * FRAME_MAX_BYTES);
/// Pieces in memory at once (being read, waiting to be decoded, or borrowed by batches not
/// yet applied): bounds replay's read buffers at ~40 MiB, and lets the file thread run
/// ~30 MiB of records ahead. More than a batch may hold ([`BATCH_PIECES_MAX`]) plus the one
/// being decoded and the one being read, so that waiting for a piece always ends.
const PIECES: usize = 8;
const _: () = assert!(PIECES > BATCH_PIECES_MAX + 2);
/// Times the last segment is read again when it shows a fault with a good record after it.
/// `verify` and `dump` take no lock, so they may read a log a server is appending to, and a
/// read that copies one page before a write and the next page after it shows a hole before a
/// good record: corruption to a reader that looks once. The write is done within
/// microseconds, so a second look settles it; a fault still there after these looks is
/// real.
const LAST_SEGMENT_REREADS: usize = 3;
/// Between those looks: ample time for a write in progress to finish.
const REREAD_PAUSE_MS: u64 = 5;

/// A run of a segment's bytes, read in one go: the frames whose checksums the file thread
/// found good in it are decoded from it, and the records borrow from it.
///
/// Why pieces and not whole segments: replay read each 64 MiB segment whole before checking
/// it, so the first segment's read held up every thread, and three segments' buffers
/// (192 MiB) were kept to be read into again. Pieces come from a [`Pool`] of [`PIECES`]
/// buffers; the last holder of a piece to drop it sends its buffer back.
struct Piece {
    bytes: Vec<u8>,
    /// Where `bytes[0]` lies in its segment.
    base: usize,
    /// Where the buffer goes back to: none for a piece made outside a pool.
    pool: Option<crossbeam_channel::Sender<Vec<u8>>>,
}

impl Piece {
    /// A piece of no pool: its buffer is freed with it.
    fn detached(bytes: Vec<u8>, base: usize) -> Arc<Piece> {
        Arc::new(Piece {
            bytes,
            base,
            pool: None,
        })
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            // The channel has room for every buffer; it fails only once the pool is gone,
            // and then the buffer is freed here.
            let _ = pool.try_send(std::mem::take(&mut self.bytes));
        }
    }
}

/// The file thread's read buffers: at most [`PIECES`] exist, each read into again once the
/// piece it was is dropped everywhere.
struct Pool {
    free_tx: crossbeam_channel::Sender<Vec<u8>>,
    free_rx: crossbeam_channel::Receiver<Vec<u8>>,
    made: usize,
}

impl Pool {
    fn new() -> Pool {
        let (free_tx, free_rx) = crossbeam_channel::bounded(PIECES);
        Pool {
            free_tx,
            free_rx,
            made: 0,
        }
    }

    /// An empty buffer with room for a piece: a free one, else a new one while fewer than
    /// [`PIECES`] exist, else the next to come back. None if `stop` hangs up first.
    fn take(&mut self, stop: &crossbeam_channel::Receiver<()>) -> Option<Vec<u8>> {
        let mut buffer = match self.free_rx.try_recv() {
            Ok(buffer) => buffer,
            Err(_) if self.made < PIECES => {
                self.made += 1;
                Vec::new()
            }
            Err(_) => crossbeam_channel::select! {
                recv(self.free_rx) -> buffer => buffer.ok()?,
                recv(stop) -> _ => return None,
            },
        };
        buffer.clear();
        // A piece read to a segment's end after a fault can be larger: not kept as large.
        buffer.shrink_to(PIECE_READ_BYTES + FRAME_MAX_BYTES);
        buffer.reserve(PIECE_READ_BYTES + FRAME_MAX_BYTES);
        Some(buffer)
    }

    fn piece(&self, bytes: Vec<u8>, base: usize) -> Arc<Piece> {
        Arc::new(Piece {
            bytes,
            base,
            pool: Some(self.free_tx.clone()),
        })
    }
}

/// Frames of one piece whose checksums are good, for the reading thread to decode.
struct Checked {
    segment: usize,
    /// The piece, shared by all its messages.
    piece: Arc<Piece>,
    /// Where each frame starts in the piece, then where the last one ends: frame `i` is
    /// `bounds[i]..bounds[i + 1]`.
    bounds: Vec<usize>,
    /// On the segment's last message: how it ends after these frames (a clean end, a torn
    /// tail, or corruption).
    end: Option<Result<SegmentEnd, WalError>>,
}

/// The file thread: reads each segment in order, a piece at a time, checks its header and
/// frames, and hands the good frames on in order, then how the segment ends. Corruption is
/// sent after the frames before it, so that those are decoded (and their own faults
/// reported) first, as if read one by one. Stops at the first error, when the reading thread
/// hangs up, or when `stop` does.
fn check_segments(
    segments: &[(u64, PathBuf)],
    checked_tx: crossbeam_channel::Sender<Checked>,
    stop: crossbeam_channel::Receiver<()>,
) {
    let count = segments.len();
    let mut pool = Pool::new();
    for (segment, (_, path)) in segments.iter().enumerate() {
        let failed = |e: std::io::Error| Checked {
            segment,
            piece: Piece::detached(Vec::new(), 0),
            bounds: Vec::new(),
            end: Some(Err(WalError::io("cannot read log segment", path, e))),
        };
        let mut file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) => {
                let _ = checked_tx.send(failed(e));
                return;
            }
        };
        let is_last = segment + 1 == count;
        let mut rereads = 0;
        // What the next piece starts with: the end of the piece before (a frame it cut), and
        // how it is read: up to `PIECE_READ_BYTES`, or to the file's end.
        let mut carried: Option<(Arc<Piece>, usize)> = None;
        let mut base = 0;
        let mut to_end = false;
        loop {
            let Some(buffer) = pool.take(&stop) else {
                return;
            };
            let carry = carried.as_ref().map_or(&[][..], |(p, at)| &p.bytes[*at..]);
            let (bytes, whole) = match fill(buffer, carry, &mut file, to_end) {
                Ok(read) => read,
                Err(e) => {
                    let _ = checked_tx.send(failed(e));
                    return;
                }
            };
            carried = None;
            let piece = pool.piece(bytes, base);
            let mut send = |bounds: Vec<usize>, end: Option<Result<SegmentEnd, WalError>>| {
                let stop = matches!(end, Some(Err(_)));
                let sent = checked_tx.send(Checked {
                    segment,
                    piece: piece.clone(),
                    bounds,
                    end,
                });
                sent.is_ok() && !stop
            };
            let may_reread = is_last && rereads < LAST_SEGMENT_REREADS;
            let at_end = whole.then_some(may_reread);
            match check_piece(path, &piece, at_end, is_last, &mut send) {
                PieceChecked::Done(true) => break,
                PieceChecked::Done(false) => return,
                PieceChecked::ReadOn { at, to_segment_end } => {
                    base = piece.base + at;
                    to_end = to_segment_end;
                    carried = Some((piece, at));
                }
                PieceChecked::Reread { at } => {
                    // The log only grows, so what was checked before `at` is as it was.
                    std::thread::sleep(std::time::Duration::from_millis(REREAD_PAUSE_MS));
                    rereads += 1;
                    // Past the end only if the file shrank since (a server starting on it
                    // cut a torn tail): then the read starts at its end.
                    let sought = file.metadata().and_then(|m| {
                        let at = (at as u64).min(m.len());
                        file.seek(std::io::SeekFrom::Start(at))
                    });
                    match sought {
                        Ok(at) => base = usize::try_from(at).expect("a segment's size fits"),
                        Err(e) => {
                            let _ = checked_tx.send(failed(e));
                            return;
                        }
                    }
                    to_end = true;
                }
            }
        }
    }
}

/// Fills `buffer` with `carry`, then with what `file` reads next: up to
/// [`PIECE_READ_BYTES`] more, or all of the rest with `to_end`. Also says whether it holds
/// the rest of the file (the read met its end).
fn fill(
    mut buffer: Vec<u8>,
    carry: &[u8],
    file: &mut std::fs::File,
    to_end: bool,
) -> std::io::Result<(Vec<u8>, bool)> {
    buffer.extend_from_slice(carry);
    if to_end {
        file.read_to_end(&mut buffer)?;
        return Ok((buffer, true));
    }
    let limit = u64::try_from(PIECE_READ_BYTES).expect("a piece's size fits");
    let read = file.take(limit).read_to_end(&mut buffer)?;
    // Short of the limit only at the file's end. At exactly the limit the end may be next:
    // then the next piece reads nothing and holds the rest.
    Ok((buffer, read < PIECE_READ_BYTES))
}

/// What checking a piece came to.
#[derive(Debug)]
enum PieceChecked {
    /// Checked to its segment's end, or the fault found was sent: go on if true.
    Done(bool),
    /// The frames before `at` (in the piece) were sent; the rest of the segment is yet to
    /// be read: read on from there, carrying the piece's bytes from `at` over. With
    /// `to_segment_end`, read all of the rest in one piece: the frame at `at` is not good
    /// although it lies whole in this piece, and what it is (a torn tail, zeros written
    /// ahead, corruption) depends on everything after it.
    ReadOn { at: usize, to_segment_end: bool },
    /// A fault with a good record after it, in the last segment: the frames before it were
    /// sent; read the segment again and check on from byte `at` (of the segment).
    Reread { at: usize },
}

/// Checks one piece's frames (and the segment's header, in its first piece), handing on
/// the good frames [`CHECKED_FRAMES`] at a time through `send`. `at_end` is `Some` when the
/// piece holds the rest of its segment: then the piece's end is the segment's, sent as how
/// the segment ends (or the corruption found), and `Some(true)` means a fault that has a
/// good record after it is answered with [`PieceChecked::Reread`] rather than sent (see
/// [`LAST_SEGMENT_REREADS`]). A piece that does not hold the rest stops at its first frame
/// that is not good and asks to read on from there, so that every verdict on a frame that
/// is not good is taken, as before pieces, with all of the segment after it in view.
fn check_piece(
    path: &Path,
    piece: &Piece,
    at_end: Option<bool>,
    is_last: bool,
    send: &mut impl FnMut(Vec<usize>, Option<Result<SegmentEnd, WalError>>) -> bool,
) -> PieceChecked {
    let (bytes, base) = (&piece.bytes[..], piece.base);
    let corrupt = |at: usize, reason| corrupt(path, base + at, reason);
    let done = PieceChecked::Done;
    let is_whole = at_end.is_some();
    if base == 0
        && bytes.len() < HEADER_BYTES
        && is_whole
        && is_last
        && segment::header().starts_with(bytes)
    {
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
    if base == 0 {
        if let Err(reason) = segment::check_header(bytes) {
            return done(send(Vec::new(), Some(Err(corrupt(0, reason)))));
        }
    }
    let mut offset = if base == 0 { HEADER_BYTES } else { 0 };
    let mut bounds = Vec::with_capacity(CHECKED_FRAMES + 1);
    let tail: Option<(usize, String)> = loop {
        let frame = read_frame(bytes, offset);
        if let Frame::Valid { next, .. } = frame {
            bounds.push(offset);
            offset = next;
            if bounds.len() == CHECKED_FRAMES {
                bounds.push(offset);
                let full = std::mem::replace(&mut bounds, Vec::with_capacity(CHECKED_FRAMES + 1));
                if !send(full, None) {
                    return done(false);
                }
            }
            continue;
        }
        if !is_whole {
            // The rest is still to be read: a frame cut by the piece's end is whole in the
            // next piece; anything else is judged with the whole rest in view.
            bounds.push(offset);
            if bounds.len() > 1 && !send(bounds, None) {
                return done(false);
            }
            let to_segment_end = bytes.len() - offset >= FRAME_MAX_BYTES;
            return PieceChecked::ReadOn {
                at: offset,
                to_segment_end,
            };
        }
        match frame {
            Frame::Valid { .. } => unreachable!("handled above"),
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
            if at_end == Some(true) {
                // `bounds` ends where the good frames do: send them if there are any.
                if bounds.len() > 1 && !send(bounds, None) {
                    return done(false);
                }
                return PieceChecked::Reread { at: base + bad_at };
            }
            let reason = format!(
                "{reason}, yet a valid record follows at offset {}",
                base + valid_at
            );
            return done(send(bounds, Some(Err(corrupt(bad_at, reason)))));
        }
        torn = Some(TornTail {
            path: path.to_path_buf(),
            offset: (base + bad_at) as u64,
            dropped_bytes: (bytes.len() - bad_at) as u64,
            reason,
        });
    }
    let end = SegmentEnd {
        valid_bytes: (base + offset) as u64,
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
    let piece = &checked.piece;
    if checked.bounds.len() > 1
        && batch.is_full_for(piece)
        && !send_batch(checked.segment, batch, note, tx, spent)
    {
        return Ok(false);
    }
    for frame in checked.bounds.windows(2) {
        let (at, next) = (frame[0], frame[1]);
        let offset = piece.base + at;
        batch
            .push(piece, at + FRAME_HEADER_BYTES..next, offset as u64)
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
    let mut at = bad_at + 1;
    while at < bytes.len() {
        // A frame's length is never 0, so no frame starts where four zero bytes do: skip a
        // run of zeros at once. Read one offset at a time, a run of zeros followed by data
        // (a hole) cost a scan of the whole run at each of its offsets: quadratic.
        if bytes[at..].starts_with(&[0; 4]) {
            let nonzero = bytes[at..].iter().position(|b| *b != 0)?;
            at += nonzero.saturating_sub(3).max(1);
            continue;
        }
        match read_frame(bytes, at) {
            Frame::Valid { payload, .. } if decode_payload_ref(payload).is_ok() => return Some(at),
            Frame::End => return None,
            _ => {}
        }
        at += 1;
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

    /// What `check_piece` sent: each message's frame bounds, and the end if one came.
    type Sent = Vec<(Vec<usize>, Option<Result<SegmentEnd, WalError>>)>;

    /// Checks `bytes` as the piece of the last segment at `base`; `at_end` as in
    /// `check_piece`.
    fn check_at(bytes: &[u8], base: usize, at_end: Option<bool>) -> (PieceChecked, Sent) {
        let mut sent = Sent::new();
        let mut send = |bounds: Vec<usize>, end: Option<Result<SegmentEnd, WalError>>| {
            let stop = matches!(end, Some(Err(_)));
            sent.push((bounds, end));
            !stop
        };
        let path = Path::new("0000000000000001.log");
        let piece = Piece::detached(bytes.to_vec(), base);
        let checked = check_piece(path, &piece, at_end, true, &mut send);
        (checked, sent)
    }

    /// The rest of a segment from `from`, checked as one piece that holds it.
    fn check(bytes: &[u8], from: usize, may_reread: bool) -> (PieceChecked, Sent) {
        check_at(&bytes[from..], from, Some(may_reread))
    }

    /// A piece's buffer goes back to its pool only when the last holder of the piece drops
    /// it; no more than `PIECES` buffers exist, and a file thread waiting for one stops
    /// when told to.
    #[test]
    fn a_piece_buffer_is_read_into_again_only_once_nothing_holds_it() {
        let mut pool = Pool::new();
        let (stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        let mut pieces = Vec::new();
        for n in 0..PIECES {
            let mut buffer = pool.take(&stop).expect("a new buffer");
            assert!(buffer.is_empty() && buffer.capacity() >= PIECE_READ_BYTES);
            buffer.push(n as u8);
            pieces.push(pool.piece(buffer, n));
        }
        // A piece still held by a batch (a clone) keeps its buffer when the first is dropped.
        let held = pieces[0].clone();
        let first_at = held.bytes.as_ptr();
        drop(pieces.remove(0));
        assert!(pool.free_rx.is_empty(), "still held elsewhere");
        drop(held);
        let again = pool.take(&stop).expect("the buffer given back");
        assert!(again.is_empty() && again.as_ptr() == first_at);
        pieces.insert(0, pool.piece(again, 0));

        // All are held: taking one waits, until told to stop.
        let waited = std::thread::scope(|scope| {
            let waiter = scope.spawn(|| pool.take(&stop));
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(!waiter.is_finished(), "waits for a buffer to come back");
            drop(stop_tx);
            waiter.join().unwrap()
        });
        assert!(waited.is_none());
        assert_eq!(pool.made, PIECES);
    }

    /// A batch's records borrow the pieces it holds (two here: a frame each), which stay
    /// readable until it is cleared; clearing lets go of them (so that their buffers may be
    /// read into again). A batch that holds `BATCH_PIECES_MAX` pieces takes no other.
    #[test]
    fn a_batch_holds_every_piece_its_records_borrow_from() {
        let (a, b) = (frame(1), frame(2));
        let first = Piece::detached([segment::header().as_slice(), &a].concat(), 0);
        let second = Piece::detached(b.clone(), HEADER_BYTES + a.len());
        let mut batch = Batch::<()>::new();
        let at = HEADER_BYTES;
        batch
            .push(&first, at + FRAME_HEADER_BYTES..at + a.len(), at as u64)
            .unwrap();
        assert!(!batch.is_full_for(&second));
        batch
            .push(&second, FRAME_HEADER_BYTES..b.len(), second.base as u64)
            .unwrap();
        assert_eq!(batch.bytes.len(), 2, "both pieces held");
        assert!(
            !batch.is_full_for(&second),
            "the last piece held: room for more of it"
        );
        assert!(batch.is_full_for(&Piece::detached(Vec::new(), 0)));
        let (weak_first, weak_second) = (Arc::downgrade(&first), Arc::downgrade(&second));
        drop((first, second));
        // Read after the pieces' other holders are gone: the actor's name points into them.
        let read: Vec<(u128, &str, u64)> = batch
            .records()
            .iter()
            .map(|(r, at)| (r.op_id.as_u128(), r.actor, *at))
            .collect();
        let second_at = (HEADER_BYTES + a.len()) as u64;
        assert_eq!(read, [(1, "t", HEADER_BYTES as u64), (2, "t", second_at)]);
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
        assert!(matches!(checked, PieceChecked::Reread { at } if at == hole_at));
        assert_eq!(sent.len(), 1, "the good frame before the hole, and no end");
        assert_eq!(sent[0].0, vec![HEADER_BYTES, hole_at]);
        assert!(sent[0].1.is_none());

        let (checked, sent) = check(&whole, hole_at, true);
        assert!(matches!(checked, PieceChecked::Done(true)));
        let c_at = hole_at + b.len();
        assert_eq!(sent.len(), 1);
        // Bounds are within the piece, which starts at the hole.
        assert_eq!(sent[0].0, vec![0, b.len(), whole.len() - hole_at]);
        match &sent[0].1 {
            Some(Ok(end)) => {
                assert_eq!(end.valid_bytes, whole.len() as u64);
                assert!(end.torn.is_none());
            }
            _ => panic!("the segment ends cleanly"),
        }

        let (checked, sent) = check(&torn_read, hole_at, false);
        assert!(matches!(checked, PieceChecked::Done(false)));
        match sent.last() {
            Some((bounds, Some(Err(WalError::Corrupt { offset, reason, .. })))) => {
                assert_eq!(bounds, &vec![0]);
                assert_eq!(*offset, hole_at as u64);
                assert!(reason.contains(&format!("valid record follows at offset {c_at}")));
            }
            _ => panic!("a hole still there at the last look is corruption"),
        }
    }
}
