//! Replay: read every segment in order, check every checksum, hand each record to the caller.
//!
//! Recovery policy (raft-engine's "tolerate tail corruption"): only the end of the LAST segment
//! may be damaged, because only the last, not-yet-synced batch can be torn by a crash. There a
//! cut-short frame, zeros, or garbage with no valid frame after it is a torn tail: it is cut off
//! (in repair mode) and reported. Zeros are also what the writer leaves on purpose: it writes
//! zeros ahead of its records (see the writer), so a crash usually leaves some. Anything else (a bad frame followed by valid ones, damage in an
//! earlier segment, a bad header) is corruption: refuse, naming file and byte offset.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use super::frame::{read_frame, Frame};
use super::record::{decode_payload, Record};
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
}

/// Where a record sits: for error messages.
#[derive(Debug, Clone)]
pub struct Position<'a> {
    pub path: &'a Path,
    pub offset: u64,
}

pub fn replay(
    dir: &Path,
    mode: Mode,
    mut apply: impl FnMut(Record, Position<'_>) -> Result<(), String>,
) -> Result<ReplayOutcome, WalError> {
    let segments = segment::list(dir)?;
    let mut outcome = ReplayOutcome {
        segments: segments.len(),
        ..ReplayOutcome::default()
    };
    let count = segments.len();
    for (i, (index, path)) in segments.into_iter().enumerate() {
        let is_last = i + 1 == count;
        let bytes =
            std::fs::read(&path).map_err(|e| WalError::io("cannot read log segment", &path, e))?;
        let corrupt = |offset: usize, reason: String| WalError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            reason,
        };
        if bytes.len() < HEADER_BYTES && is_last && segment::header().starts_with(&bytes) {
            // Crash while creating the segment: nothing was ever acknowledged in it.
            let torn = TornTail {
                path: path.clone(),
                offset: 0,
                dropped_bytes: bytes.len() as u64,
                reason: "segment header incomplete".into(),
            };
            if mode == Mode::Repair {
                std::fs::remove_file(&path)
                    .map_err(|e| WalError::io("cannot remove torn segment", &path, e))?;
                segment::sync_dir(dir)?;
                outcome.segments -= 1;
            } else {
                outcome.last = Some((index, path.clone(), bytes.len() as u64));
            }
            outcome.torn_tail = Some(torn);
            continue;
        }
        segment::check_header(&bytes).map_err(|reason| corrupt(0, reason))?;
        let mut offset = HEADER_BYTES;
        let tail: Option<(usize, String)> = loop {
            match read_frame(&bytes, offset) {
                Frame::Valid { payload, next } => {
                    let record = decode_payload(payload).map_err(|e| {
                        corrupt(offset, format!("checksum ok but record undecodable: {e}"))
                    })?;
                    apply(
                        record,
                        Position {
                            path: &path,
                            offset: offset as u64,
                        },
                    )
                    .map_err(|reason| {
                        corrupt(
                            offset,
                            format!("record contradicts the log before it: {reason}"),
                        )
                    })?;
                    outcome.records += 1;
                    offset = next;
                }
                Frame::End => break None,
                Frame::ZeroTail => break Some((offset, ZEROS.into())),
                Frame::Incomplete => break Some((offset, "incomplete frame".into())),
                Frame::Bad { reason, .. } => break Some((offset, reason)),
            }
        };
        if let Some((bad_at, reason)) = tail {
            if !is_last {
                return Err(corrupt(bad_at, reason));
            }
            if let Some(valid_at) = find_valid_frame_after(&bytes, bad_at) {
                return Err(corrupt(
                    bad_at,
                    format!("{reason}, yet a valid record follows at offset {valid_at}"),
                ));
            }
            let torn = TornTail {
                path: path.clone(),
                offset: bad_at as u64,
                dropped_bytes: (bytes.len() - bad_at) as u64,
                reason,
            };
            if mode == Mode::Repair {
                let file = OpenOptions::new().write(true).open(&path).map_err(|e| {
                    WalError::io("cannot open log segment to cut its torn tail", &path, e)
                })?;
                file.set_len(bad_at as u64)
                    .and_then(|_| file.sync_all())
                    .map_err(|e| WalError::io("cannot cut torn tail of log segment", &path, e))?;
            }
            outcome.torn_tail = Some(torn);
            offset = bad_at;
        }
        outcome.bytes += offset as u64;
        outcome.last = Some((index, path, offset as u64));
    }
    Ok(outcome)
}

/// The reason given for a tail of zeros: the writer writes zeros ahead of its records, so
/// after a crash these are usually that space, not damage.
pub const ZEROS: &str =
    "zeros after the last record (space written ahead, or a write that never landed)";

/// A torn write leaves no valid frame behind it; a flipped byte in the middle does.
fn find_valid_frame_after(bytes: &[u8], bad_at: usize) -> Option<usize> {
    for at in bad_at + 1..bytes.len() {
        match read_frame(bytes, at) {
            Frame::Valid { payload, .. } if decode_payload(payload).is_ok() => return Some(at),
            // Nothing but zeros from here on (and checking that again at every later offset
            // would be quadratic in the megabyte of zeros the writer keeps ahead).
            Frame::ZeroTail | Frame::End => return None,
            _ => {}
        }
    }
    None
}
