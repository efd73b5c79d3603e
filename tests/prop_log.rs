//! Property tests over the record decoder and replay: random bytes, truncations, bit flips
//! and garbage never panic, and replay only ever yields a prefix of the records written.

use proptest::prelude::*;
use stockd::domain::{Item, ReleaseReason, Sku};
use stockd::wal::frame::{encode_record, read_frame, Frame};
use stockd::wal::record::decode_payload;
use stockd::wal::replay::{replay, Mode};
use stockd::wal::segment::{file_name, header, HEADER_BYTES};
use stockd::wal::{Event, Record};
use uuid::Uuid;

fn sku() -> impl Strategy<Value = Sku> {
    "[A-Za-z0-9._-]{1,16}".prop_map(|s| Sku::parse(&s).unwrap())
}

fn text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[ -~]{0,40}")
}

fn items() -> impl Strategy<Value = Vec<Item>> {
    proptest::collection::vec(
        (sku(), 1u64..=1_000_000_000).prop_map(|(sku, quantity)| Item { sku, quantity }),
        1..4,
    )
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (
            sku(),
            any::<bool>(),
            text(),
            proptest::option::of(0u64..100),
            proptest::option::of(0u64..1_000_000),
            any::<u32>()
        )
            .prop_map(
                |(sku, created, name, low_stock_threshold, on_hand, fingerprint)| {
                    Event::ProductPut {
                        sku,
                        created,
                        name,
                        low_stock_threshold,
                        on_hand,
                        fingerprint,
                    }
                }
            ),
        (sku(), 1u64..1_000_000_000, text(), text(), any::<u32>()).prop_map(
            |(sku, quantity, reference, note, fingerprint)| Event::Restocked {
                sku,
                quantity,
                reference,
                note,
                fingerprint
            }
        ),
        (
            sku(),
            -1_000_000_000i64..1_000_000_000,
            "[a-z ]{1,20}",
            text(),
            any::<u32>()
        )
            .prop_map(
                |(sku, delta, reason, reference, fingerprint)| Event::Adjusted {
                    sku,
                    delta,
                    reason,
                    reference,
                    note: None,
                    fingerprint
                }
            ),
        (items(), any::<i64>(), text(), text(), text(), any::<u32>()).prop_map(
            |(items, expires_at_ms, session_id, user_id, metadata, fingerprint)| Event::Reserved {
                items: items.into(),
                expires_at_ms,
                session_id,
                user_id,
                reference: None,
                metadata,
                fingerprint
            }
        ),
        (items(), text(), any::<u32>()).prop_map(|(items, reference, fingerprint)| Event::Sold {
            items: items.into(),
            reference,
            fingerprint
        }),
        (
            any::<u128>(),
            proptest::collection::vec(0u64..10, 1..4),
            any::<bool>()
        )
            .prop_map(|(id, sold, reacquired)| Event::Completed {
                reservation_id: Uuid::from_u128(id),
                sold: sold.into(),
                reacquired,
                reference: None
            }),
        (
            any::<u128>(),
            prop_oneof![
                Just(ReleaseReason::Cancelled),
                Just(ReleaseReason::Expired),
                Just(ReleaseReason::Aborted)
            ],
            text()
        )
            .prop_map(|(id, reason, note)| Event::Released {
                reservation_id: Uuid::from_u128(id),
                reason,
                note
            }),
        (any::<u128>(), any::<i64>()).prop_map(|(id, expires_at_ms)| Event::Extended {
            reservation_id: Uuid::from_u128(id),
            expires_at_ms
        }),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (any::<i64>(), "[a-z]{1,12}", any::<u128>(), event()).prop_map(|(at_ms, actor, id, event)| {
        Record {
            at_ms,
            actor: actor.into(),
            op_id: Uuid::from_u128(id),
            event,
        }
    })
}

/// A segment holding `records`, and where each frame ends.
fn segment_bytes(records: &[Record]) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = header().to_vec();
    let mut ends = Vec::new();
    for r in records {
        encode_record(r, &mut bytes).unwrap();
        ends.push(bytes.len());
    }
    (bytes, ends)
}

/// Replays a one-segment log; `Ok(records)` or `Err` for corruption. Never panics.
fn replay_bytes(bytes: &[u8]) -> Result<Vec<Record>, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(file_name(1)), bytes).unwrap();
    let mut out = Vec::new();
    replay(dir.path(), Mode::ReadOnly, |r, _| {
        out.push(r.clone());
        Ok(())
    })
    .map(|_| out)
    .map_err(|e| e.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), at in 0usize..64) {
        let _ = decode_payload(&bytes);
        let at = at.min(bytes.len());
        let _ = read_frame(&bytes, at);
        let mut segment = header().to_vec();
        segment.extend_from_slice(&bytes);
        let _ = replay_bytes(&segment);
    }

    /// The log bounds what waits for its writer by this estimate, not by encoding: it must
    /// never be below what a frame takes.
    #[test]
    fn a_frame_never_exceeds_its_records_bound(record in record()) {
        let mut bytes = Vec::new();
        encode_record(&record, &mut bytes).unwrap();
        prop_assert!(bytes.len() <= record.frame_bytes_bound(), "{} > {}", bytes.len(), record.frame_bytes_bound());
    }

    #[test]
    fn records_round_trip(records in proptest::collection::vec(record(), 0..12)) {
        let (bytes, _) = segment_bytes(&records);
        prop_assert_eq!(replay_bytes(&bytes).unwrap(), records);
    }

    #[test]
    fn truncation_keeps_exactly_the_whole_records(records in proptest::collection::vec(record(), 1..12), cut in any::<prop::sample::Index>()) {
        let (bytes, ends) = segment_bytes(&records);
        let cut = HEADER_BYTES + cut.index(bytes.len() - HEADER_BYTES + 1);
        let got = replay_bytes(&bytes[..cut]).expect("a truncated tail is recoverable");
        let whole = ends.iter().filter(|e| **e <= cut).count();
        prop_assert_eq!(&got[..], &records[..whole]);
    }

    #[test]
    fn a_bit_flip_never_yields_a_record_not_written(records in proptest::collection::vec(record(), 1..12), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let (mut bytes, _) = segment_bytes(&records);
        let at = at.index(bytes.len());
        bytes[at] ^= 1 << bit;
        if let Ok(got) = replay_bytes(&bytes) {
            // Only a flip in the final record can pass (as a torn tail): a strict prefix.
            prop_assert!(got.len() < records.len());
            prop_assert_eq!(&got[..], &records[..got.len()]);
        }
    }

    #[test]
    fn garbage_after_the_last_record_is_a_torn_tail(records in proptest::collection::vec(record(), 1..8), garbage in proptest::collection::vec(any::<u8>(), 1..300)) {
        let (mut bytes, _) = segment_bytes(&records);
        bytes.extend_from_slice(&garbage);
        match replay_bytes(&bytes) {
            Ok(got) => prop_assert_eq!(got, records),
            // Garbage that happens to contain a valid frame is (rightly) called corruption.
            Err(e) => prop_assert!(e.contains("corrupt"), "{}", e),
        }
    }
}

#[test]
fn frames_of_a_clean_segment_are_all_valid() {
    let (bytes, ends) = segment_bytes(&[Record {
        at_ms: 1,
        actor: "a".into(),
        op_id: Uuid::nil(),
        event: Event::Extended {
            reservation_id: Uuid::nil(),
            expires_at_ms: 2,
        },
    }]);
    assert!(
        matches!(read_frame(&bytes, HEADER_BYTES), Frame::Valid { next, .. } if next == ends[0])
    );
}
