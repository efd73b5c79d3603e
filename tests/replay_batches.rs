//! Replay reads and decodes on one thread and applies on the caller's, in batches. These
//! logs are long enough to span many batches and segments, so a record lost, repeated or
//! reordered at a batch boundary, a wrong offset, a torn tail cut in the wrong place, or a
//! reader left running after the applier stopped would each fail a test here.

use std::path::Path;

use stockd::domain::Sku;
use stockd::wal::frame::encode_record;
use stockd::wal::replay::{replay, Mode};
use stockd::wal::segment::{file_name, header};
use stockd::wal::{Event, Record};
use uuid::Uuid;

/// Records per segment: several replay batches each, and not a multiple of the batch size.
const PER_SEGMENT: u64 = 2_500;
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
    let mut bytes = std::fs::read(&last).expect("read");
    let keep = 2_049usize; // past two whole batches of 1,024
    let cut_at = offsets[SEGMENTS as usize - 1][keep] as usize;
    bytes.truncate(cut_at + 5); // the next frame, cut inside its header
    std::fs::write(&last, &bytes).expect("write");

    let mut count = 0u64;
    let outcome = replay(dir.path(), Mode::Repair, |r, _| {
        assert_eq!(r.at_ms as u64, count);
        count += 1;
        Ok(())
    })
    .expect("replay");
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
    let bad = PER_SEGMENT + 1_500; // second segment, in its second batch
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
        text.contains(&format!("offset {}", offsets[1][1_500])),
        "{text}"
    );
    assert!(text.contains("refused"), "{text}");
}

#[test]
fn damage_in_an_earlier_segment_stops_after_applying_what_precedes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let offsets = write_log(dir.path());
    let first = dir.path().join(file_name(1));
    let mut bytes = std::fs::read(&first).expect("read");
    let at = offsets[0][1_800] as usize;
    bytes[at + 10] ^= 0x40; // a payload byte: the checksum no longer matches
    std::fs::write(&first, &bytes).expect("write");

    let mut applied = 0u64;
    let err = replay(dir.path(), Mode::Repair, |_, _| {
        applied += 1;
        Ok(())
    })
    .expect_err("corruption");
    assert_eq!(applied, 1_800);
    let text = err.to_string();
    assert!(text.contains(&file_name(1)), "{text}");
    assert!(text.contains(&format!("offset {at}")), "{text}");
    assert_eq!(
        std::fs::read(&first).expect("read").len(),
        bytes.len(),
        "corruption is reported, never cut"
    );
}
