//! Replay reads files and checks frames on one thread, decodes on a second and applies on the
//! caller's, in batches. These logs are long enough to span many batches, several hand-overs
//! of checked frames (16,384 a time) and segments, so a record lost, repeated or reordered at
//! a boundary, a wrong offset, a torn tail cut in the wrong place, or a reader left running
//! after the applier stopped would each fail a test here.

use std::path::Path;

use stockd::domain::Sku;
use stockd::wal::frame::encode_record;
use stockd::wal::replay::{replay, Mode, PIECE_READ_BYTES};
use stockd::wal::segment::{file_name, header};
use stockd::wal::{Event, Record};
use uuid::Uuid;

/// Records per segment: many replay batches and three hand-overs of checked frames each, and
/// a multiple of neither size.
const PER_SEGMENT: u64 = 40_000;
const SEGMENTS: u64 = 3;

fn record(n: u64) -> Record {
    Record {
        at_ms: n as i64,
        actor: "bench".into(),
        op_id: Uuid::from_u128(u128::from(n) + 1),
        event: Event::Restocked {
            sku: Sku::parse("SKU-1").expect("valid sku"),
            quantity: n + 1,
            reference: None,
            note: None,
            fingerprint: 0,
        },
    }
}

/// Rewrites segment `n` (numbered from 1) of the log in `dir` as `edit` changes its bytes.
fn edit_segment(dir: &Path, n: u64, edit: impl FnOnce(&mut Vec<u8>)) {
    let path = dir.join(file_name(n));
    let mut bytes = std::fs::read(&path).expect("read segment");
    edit(&mut bytes);
    std::fs::write(&path, &bytes).expect("write segment");
}

/// Writes the log; returns, per segment, the offset of each record's frame.
fn write_log(dir: &Path) -> Vec<Vec<u64>> {
    let mut offsets = Vec::new();
    for s in 0..SEGMENTS {
        let mut bytes = header().to_vec();
        let mut at = Vec::new();
        for i in 0..PER_SEGMENT {
            at.push(bytes.len() as u64);
            encode_record(&record(s * PER_SEGMENT + i), &mut bytes).expect("encode");
        }
        std::fs::write(dir.join(file_name(s + 1)), bytes).expect("write segment");
        offsets.push(at);
    }
    offsets
}

/// Replays the log in `dir` in repair mode, checking that records come in order (record `n`
/// has `at_ms` n); returns how many came, and the outcome.
fn repair_in_order(dir: &Path) -> (u64, stockd::wal::replay::ReplayOutcome) {
    let mut count = 0u64;
    let outcome = replay(dir, Mode::Repair, |r, _| {
        assert_eq!(r.at_ms as u64, count);
        count += 1;
        Ok(())
    })
    .expect("replay");
    (count, outcome)
}

#[test]
fn every_record_arrives_once_in_order_with_its_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let offsets = write_log(dir.path());
    let mut seen = Vec::new();
    let outcome = replay(dir.path(), Mode::ReadOnly, |r, at| {
        let segment = at
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string);
        seen.push((r.at_ms as u64, segment, at.offset));
        Ok(())
    })
    .expect("replay");
    assert_eq!(outcome.records, SEGMENTS * PER_SEGMENT);
    assert_eq!(outcome.segments, SEGMENTS as usize);
    assert!(outcome.torn_tail.is_none());
    assert_eq!(seen.len() as u64, SEGMENTS * PER_SEGMENT);
    for (n, (at_ms, segment, offset)) in seen.into_iter().enumerate() {
        let n = n as u64;
        let s = n / PER_SEGMENT;
        assert_eq!(at_ms, n, "record {n} out of order");
        assert_eq!(segment.as_deref(), Some(file_name(s + 1).as_str()));
        assert_eq!(offset, offsets[s as usize][(n % PER_SEGMENT) as usize]);
    }
    let last = outcome.last.expect("a last segment");
    assert_eq!(last.0, SEGMENTS);
}

#[test]
fn a_torn_tail_after_many_batches_is_cut_there_and_keeps_everything_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let offsets = write_log(dir.path());
    let last = dir.path().join(file_name(SEGMENTS));
    let keep = 34_817usize; // past two hand-overs of checked frames, and 2,049 records more
    let cut_at = offsets[SEGMENTS as usize - 1][keep] as usize;
    // The next frame, cut inside its header.
    edit_segment(dir.path(), SEGMENTS, |bytes| bytes.truncate(cut_at + 5));

    let (count, outcome) = repair_in_order(dir.path());
    let expected = (SEGMENTS - 1) * PER_SEGMENT + keep as u64;
    assert_eq!(count, expected);
    assert_eq!(outcome.records, expected);
    let torn = outcome.torn_tail.expect("torn tail reported");
    assert_eq!(torn.offset, cut_at as u64);
    assert_eq!(torn.dropped_bytes, 5);
    assert_eq!(outcome.last.map(|l| l.2), Some(cut_at as u64));
    assert_eq!(
        std::fs::metadata(&last).expect("stat").len(),
        cut_at as u64,
        "repair cuts the file at the last whole record"
    );
}

#[test]
fn an_apply_error_stops_replay_at_that_record_and_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let offsets = write_log(dir.path());
    let bad = PER_SEGMENT + 17_500; // second segment, in its second hand-over
    let mut applied = 0u64;
    let err = replay(dir.path(), Mode::ReadOnly, |r, _| {
        if r.at_ms as u64 == bad {
            return Err("refused".into());
        }
        applied += 1;
        Ok(())
    })
    .expect_err("the refusal is an error");
    assert_eq!(applied, bad, "nothing after the refused record is applied");
    let text = err.to_string();
    assert!(text.contains(&file_name(2)), "{text}");
    assert!(
        text.contains(&format!("offset {}", offsets[1][17_500])),
        "{text}"
    );
    assert!(text.contains("refused"), "{text}");
}

#[test]
fn damage_in_an_earlier_segment_stops_after_applying_what_precedes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let offsets = write_log(dir.path());
    // In the second hand-over of checked frames; a payload byte, so the checksum no longer
    // matches.
    let at = offsets[0][20_000] as usize;
    edit_segment(dir.path(), 1, |bytes| bytes[at + 10] ^= 0x40);
    let first = dir.path().join(file_name(1));
    let damaged_len = std::fs::metadata(&first).expect("stat").len();

    let mut applied = 0u64;
    let err = replay(dir.path(), Mode::Repair, |_, _| {
        applied += 1;
        Ok(())
    })
    .expect_err("corruption");
    assert_eq!(applied, 20_000);
    let text = err.to_string();
    assert!(text.contains(&file_name(1)), "{text}");
    assert!(text.contains(&format!("offset {at}")), "{text}");
    assert_eq!(
        std::fs::metadata(&first).expect("stat").len(),
        damaged_len,
        "corruption is reported, never cut"
    );
}

/// A log of one product and `holds` reservations of one unit each, ids 1..=holds, in one
/// segment, with the records `edit` changes; returns the segment's dir and each frame's offset.
fn reservations_log(holds: u64, edit: impl Fn(u64, &mut Record)) -> (tempfile::TempDir, Vec<u64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sku = Sku::parse("HOT").expect("valid sku");
    let mut bytes = header().to_vec();
    let mut offsets = Vec::new();
    let put = Record {
        at_ms: 0,
        actor: "test".into(),
        op_id: Uuid::from_u128(u128::MAX),
        event: Event::ProductPut {
            sku: sku.clone(),
            created: true,
            name: None,
            low_stock_threshold: None,
            on_hand: Some(holds),
            fingerprint: 0,
        },
    };
    offsets.push(bytes.len() as u64);
    encode_record(&put, &mut bytes).expect("encode");
    for n in 1..=holds {
        let mut record = Record {
            at_ms: n as i64,
            actor: "test".into(),
            op_id: Uuid::from_u128(u128::from(n)),
            event: Event::Reserved {
                items: smallvec::smallvec![stockd::domain::Item {
                    sku: sku.clone(),
                    quantity: 1,
                }],
                expires_at_ms: i64::MAX / 2,
                session_id: None,
                user_id: None,
                reference: None,
                metadata: None,
                fingerprint: 1,
            },
        };
        edit(n, &mut record);
        offsets.push(bytes.len() as u64);
        encode_record(&record, &mut bytes).expect("encode");
    }
    std::fs::write(dir.path().join(file_name(1)), bytes).expect("write segment");
    (dir, offsets)
}

/// The ledger enters a batch's new reservation ids into its index before applying the batch
/// (`Ledger::apply_batch`). A log that repeats an id, or completes a reservation before the
/// record that makes it, must still be refused at that very record, whether the earlier
/// record is in the same batch or an earlier one, and a sound log must replay whole.
#[test]
fn a_reservation_made_twice_or_ended_before_it_is_made_is_refused_at_that_record() {
    const HOLDS: u64 = 3_000;
    let (sound, _) = reservations_log(HOLDS, |_, _| {});
    let summary = stockd::cli::verify(sound.path()).expect("a sound log verifies");
    assert!(
        summary.contains(&format!("{} records", HOLDS + 1))
            && summary.contains(&format!("{HOLDS} active")),
        "{summary}"
    );

    // Record n makes reservation `repeats` again: the same batch (replay batches are 1,024
    // records), or one well before.
    for (n, repeats) in [(1_500u64, 1_400u64), (2_500, 10), (1_030, 1_025)] {
        let (dir, offsets) = reservations_log(HOLDS, |i, r| {
            if i == n {
                r.op_id = Uuid::from_u128(u128::from(repeats));
            }
        });
        let err = stockd::cli::verify(dir.path()).expect_err("an id made twice");
        assert!(
            err.contains(&format!("offset {}", offsets[n as usize])),
            "{err}"
        );
        assert!(err.contains("created twice"), "{err}");
    }

    // Record 1,600 completes reservation 1,700, made later in the same batch.
    let (dir, offsets) = reservations_log(HOLDS, |i, r| {
        if i == 1_600 {
            r.event = Event::Completed {
                reservation_id: Uuid::from_u128(1_700),
                sold: smallvec::smallvec![1],
                reacquired: false,
                reference: None,
            };
        }
    });
    let err = stockd::cli::verify(dir.path()).expect_err("an end before the start");
    assert!(err.contains(&format!("offset {}", offsets[1_600])), "{err}");
    assert!(err.contains("unknown reservation"), "{err}");

    // Record 1,000 completes reservation 10; then record `n` makes id 10 again (found only
    // once the whole log is read: replay no longer follows an ended reservation), or
    // completes it a second time.
    let complete_10 = Event::Completed {
        reservation_id: Uuid::from_u128(10),
        sold: smallvec::smallvec![1],
        reacquired: false,
        reference: None,
    };
    for (n, again, expected) in [
        (2_000u64, None, "created twice"),
        (1_001, None, "created twice"),
        (1_500, Some(complete_10.clone()), "unknown reservation"),
    ] {
        let (dir, offsets) = reservations_log(HOLDS, |i, r| {
            if i == 1_000 {
                r.event = complete_10.clone();
            } else if i == n {
                match &again {
                    Some(event) => r.event = event.clone(),
                    None => r.op_id = Uuid::from_u128(10),
                }
            }
        });
        let err = stockd::cli::verify(dir.path()).expect_err("a reservation made or ended twice");
        assert!(
            err.contains(&format!("offset {}", offsets[n as usize])),
            "record {n}: {err}"
        );
        assert!(err.contains(expected), "record {n}: {err}");
    }
}

/// A frame whose checksum is good but whose payload is no record: refused at that frame,
/// after every record before it (the frames are checked on one thread and decoded on another,
/// and the first fault in log order is the one reported).
#[test]
fn an_undecodable_record_with_a_good_checksum_stops_replay_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let offsets = write_log(dir.path());
    let at = offsets[1][17_000] as usize; // in the second hand-over of checked frames
    let payload = [0xFFu8; 12]; // a variant index no envelope has
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), &payload);
    let mut frame = len.to_vec();
    frame.extend_from_slice(&crc.to_le_bytes());
    frame.extend_from_slice(&payload);
    edit_segment(dir.path(), 2, |bytes| {
        bytes.splice(at..at, frame);
    });

    let mut applied = 0u64;
    let err = replay(dir.path(), Mode::ReadOnly, |r, _| {
        assert_eq!(r.at_ms as u64, applied, "in order, none lost");
        applied += 1;
        Ok(())
    })
    .expect_err("an undecodable record");
    assert_eq!(applied, PER_SEGMENT + 17_000);
    let text = err.to_string();
    assert!(text.contains(&file_name(2)), "{text}");
    assert!(text.contains(&format!("offset {at}")), "{text}");
    assert!(text.contains("undecodable"), "{text}");
}

/// A segment several pieces long (replay reads a segment `PIECE_READ_BYTES` at a time):
/// records of varied sizes, a few of them large, so that frames are cut by the pieces' ends
/// at different places. Returns each frame's offset.
fn long_segment(dir: &Path) -> (Vec<u64>, Vec<u8>) {
    let mut bytes = header().to_vec();
    let mut at = Vec::new();
    let mut n = 0u64;
    while bytes.len() < 3 * PIECE_READ_BYTES + PIECE_READ_BYTES / 2 {
        at.push(bytes.len() as u64);
        let mut r = record(n);
        // Mostly short records; every 5,000th a large one (up to ~600 KB).
        let note_bytes = if n % 5_000 == 4_999 {
            100_000 + (n as usize * 7_919) % 500_000
        } else {
            (n as usize * 31) % 300
        };
        if let Event::Restocked { note, .. } = &mut r.event {
            *note = Some("n".repeat(note_bytes));
        }
        encode_record(&r, &mut bytes).expect("encode");
        n += 1;
    }
    std::fs::write(dir.join(file_name(1)), &bytes).expect("write segment");
    (at, bytes)
}

/// The first frame that a piece's end cuts: the one holding byte `boundary`.
fn frame_across(offsets: &[u64], boundary: usize) -> usize {
    offsets
        .iter()
        .rposition(|&at| at as usize <= boundary)
        .expect("a frame before the boundary")
}

#[test]
fn a_segment_read_in_pieces_gives_every_record_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (offsets, bytes) = long_segment(dir.path());
    // The test means something only if frames straddle the pieces' ends.
    assert!(offsets.iter().all(|&at| at as usize != PIECE_READ_BYTES));
    let mut seen = Vec::new();
    let outcome = replay(dir.path(), Mode::ReadOnly, |r, at| {
        seen.push((r.at_ms as u64, at.offset));
        Ok(())
    })
    .expect("replay");
    assert!(outcome.torn_tail.is_none());
    assert_eq!(outcome.records, offsets.len() as u64);
    assert_eq!(outcome.bytes, bytes.len() as u64);
    let expected: Vec<(u64, u64)> = offsets
        .iter()
        .enumerate()
        .map(|(n, &at)| (n as u64, at))
        .collect();
    assert_eq!(seen, expected);
}

#[test]
fn a_tail_torn_inside_a_frame_across_a_piece_end_is_cut_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (offsets, _) = long_segment(dir.path());
    // The log ends inside the frame that the second piece's end cuts: the piece then holds
    // part of it, and the next read finds the file's end.
    let torn = frame_across(&offsets, 2 * PIECE_READ_BYTES);
    let cut_at = offsets[torn] as usize;
    let end = (cut_at + offsets[torn + 1] as usize) / 2;
    edit_segment(dir.path(), 1, |bytes| bytes.truncate(end));
    let (count, outcome) = repair_in_order(dir.path());
    assert_eq!(count, torn as u64);
    let tail = outcome.torn_tail.expect("torn tail reported");
    assert_eq!(tail.offset, cut_at as u64);
    assert_eq!(tail.dropped_bytes, (end - cut_at) as u64);
    let len = std::fs::metadata(dir.path().join(file_name(1)))
        .expect("stat")
        .len();
    assert_eq!(len, cut_at as u64, "cut at the last whole record");
}

#[test]
fn zeros_written_ahead_across_pieces_are_a_torn_tail_and_a_record_after_them_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (offsets, bytes) = long_segment(dir.path());
    // Zeros from just before the first piece's end on, for more than a piece: as the writer
    // leaves them ahead of its records.
    let from = offsets[frame_across(&offsets, PIECE_READ_BYTES) - 3] as usize;
    let zeros = PIECE_READ_BYTES + 12_345;
    edit_segment(dir.path(), 1, |b| {
        b.truncate(from);
        b.resize(from + zeros, 0);
    });
    let outcome = replay(dir.path(), Mode::ReadOnly, |_, _| Ok(())).expect("replay");
    let expected = offsets.iter().filter(|&&at| (at as usize) < from).count() as u64;
    assert_eq!(outcome.records, expected);
    let tail = outcome.torn_tail.expect("zeros reported");
    assert_eq!(tail.offset, from as u64);
    assert_eq!(tail.dropped_bytes, zeros as u64);
    assert_eq!(tail.reason, stockd::wal::replay::ZEROS);

    // A good record after those zeros: a hole, not a tail (after the last segment's looks
    // again, which find the same).
    edit_segment(dir.path(), 1, |b| {
        b.extend_from_slice(&bytes[offsets[0] as usize..offsets[1] as usize]);
    });
    let err = replay(dir.path(), Mode::ReadOnly, |_, _| Ok(())).expect_err("a hole");
    let text = err.to_string();
    assert!(text.contains(&format!("offset {from}")), "{text}");
    assert!(
        text.contains(&format!("valid record follows at offset {}", from + zeros)),
        "{text}"
    );
}

#[test]
fn damage_just_past_a_piece_end_is_reported_at_its_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (offsets, _) = long_segment(dir.path());
    // The frame cut by the first piece's end: its payload's last byte lies in the next read.
    let bad = frame_across(&offsets, PIECE_READ_BYTES);
    let at = offsets[bad] as usize;
    let last_byte = offsets[bad + 1] as usize - 1;
    assert!(last_byte >= PIECE_READ_BYTES);
    edit_segment(dir.path(), 1, |b| b[last_byte] ^= 0x40);
    let mut applied = 0u64;
    let err = replay(dir.path(), Mode::Repair, |_, _| {
        applied += 1;
        Ok(())
    })
    .expect_err("corruption");
    assert_eq!(applied, bad as u64);
    let text = err.to_string();
    assert!(text.contains(&format!("offset {at}")), "{text}");
    assert!(text.contains("checksum mismatch"), "{text}");
}
