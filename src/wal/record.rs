//! The record format: one record per client operation, so a multi-item operation is atomic
//! in the log by construction. Encoded with postcard (a specified, stable wire format).
//!
//! Compatibility rule: the outer [`Envelope`] is versioned; new event kinds are appended at
//! the end of [`Event`] and fields are never reordered, so old logs keep decoding.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use smol_str::SmolStr;
use uuid::Uuid;

use crate::domain::sku::text_of;
use crate::domain::{Item, ReleaseReason, Sku, SkuRef};

/// A record's items. Most operations name one SKU: kept inline, so decoding a record in
/// replay does not allocate for its list (written exactly like a `Vec`).
pub type Items = SmallVec<[Item; 1]>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Envelope {
    V1(Record),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Wall-clock UTC, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Name of the token that asked for the change (`anonymous` without auth, `stockd` for
    /// the server's own decisions such as expiry). Inline up to 23 bytes, as names usually
    /// are: neither a request nor a decoded record allocates for it (written as a string).
    pub actor: SmolStr,
    /// The operation id: the client's `id` when given, else generated. For a reservation or
    /// a sale it is also the reservation's / sale's id.
    pub op_id: Uuid,
    pub event: Event,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// PUT /v1/products/{sku}: create (`created`) or update. `on_hand` set means an audited `set`.
    ProductPut {
        sku: Sku,
        created: bool,
        name: Option<String>,
        low_stock_threshold: Option<u64>,
        on_hand: Option<u64>,
        fingerprint: u32,
    },
    Restocked {
        sku: Sku,
        quantity: u64,
        reference: Option<String>,
        note: Option<String>,
        fingerprint: u32,
    },
    Adjusted {
        sku: Sku,
        delta: i64,
        reason: String,
        reference: Option<String>,
        note: Option<String>,
        fingerprint: u32,
    },
    Returned {
        sku: Sku,
        quantity: u64,
        reference: Option<String>,
        note: Option<String>,
        fingerprint: u32,
    },
    /// A direct sale; the sale id is the record's `op_id`.
    Sold {
        items: Items,
        reference: Option<String>,
        fingerprint: u32,
    },
    /// A new hold; the reservation id is the record's `op_id`.
    Reserved {
        items: Items,
        expires_at_ms: i64,
        session_id: Option<String>,
        user_id: Option<String>,
        reference: Option<String>,
        /// Client metadata as JSON text (postcard cannot carry arbitrary JSON values).
        metadata: Option<String>,
        fingerprint: u32,
    },
    /// `sold[i]` units of the reservation's item `i` left on_hand; the rest of each hold was
    /// released. `reacquired`: the hold had expired and the stock was taken again.
    Completed {
        reservation_id: Uuid,
        sold: SmallVec<[u64; 1]>,
        reacquired: bool,
        reference: Option<String>,
    },
    Released {
        reservation_id: Uuid,
        reason: ReleaseReason,
        note: Option<String>,
    },
    Extended {
        reservation_id: Uuid,
        expires_at_ms: i64,
    },
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::ProductPut { .. } => "product_put",
            Event::Restocked { .. } => "restocked",
            Event::Adjusted { .. } => "adjusted",
            Event::Returned { .. } => "returned",
            Event::Sold { .. } => "sold",
            Event::Reserved { .. } => "reserved",
            Event::Completed { .. } => "completed",
            Event::Released { .. } => "released",
            Event::Extended { .. } => "extended",
        }
    }
}

impl Record {
    /// At least the bytes its frame takes, cheaply (no encoding): the log bounds what waits
    /// for its writer with it, and the writer, not the actor, encodes (tested against the
    /// encoder in `tests/prop_log.rs`). postcard writes a string or list as a varint length
    /// (at most 5 bytes) and its contents, an integer in at most 10, an option's tag in 1;
    /// `FIXED_BYTES` covers the frame header, the envelope, `at_ms`, `op_id` and every
    /// scalar field of the largest event.
    pub fn frame_bytes_bound(&self) -> usize {
        const FIXED_BYTES: usize = 128;
        const LEN_BYTES: usize = 5;
        const INT_BYTES: usize = 10;
        let text = |t: &str| LEN_BYTES + t.len();
        let opt = |t: &Option<String>| t.as_deref().map_or(0, text);
        let items = |items: &Items| {
            LEN_BYTES
                + items
                    .iter()
                    .map(|i| text(i.sku.as_str()) + INT_BYTES)
                    .sum::<usize>()
        };
        let event = match &self.event {
            Event::ProductPut { sku, name, .. } => text(sku.as_str()) + opt(name),
            Event::Restocked {
                sku,
                reference,
                note,
                ..
            }
            | Event::Returned {
                sku,
                reference,
                note,
                ..
            } => text(sku.as_str()) + opt(reference) + opt(note),
            Event::Adjusted {
                sku,
                reason,
                reference,
                note,
                ..
            } => text(sku.as_str()) + text(reason) + opt(reference) + opt(note),
            Event::Sold {
                items: i,
                reference,
                ..
            } => items(i) + opt(reference),
            Event::Reserved {
                items: i,
                session_id,
                user_id,
                reference,
                metadata,
                ..
            } => items(i) + opt(session_id) + opt(user_id) + opt(reference) + opt(metadata),
            Event::Completed {
                sold, reference, ..
            } => LEN_BYTES + sold.len() * INT_BYTES + opt(reference),
            Event::Released { note, .. } => opt(note),
            Event::Extended { .. } => 0,
        };
        FIXED_BYTES + text(&self.actor) + event
    }
}

pub fn encode_payload(record: &Record, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
    // `to_io` appends to the vector without an intermediate buffer.
    postcard::to_io(&EnvelopeRef::V1(record), out).map(|_| ())
}

pub fn decode_payload(bytes: &[u8]) -> Result<Record, postcard::Error> {
    match postcard::from_bytes::<Envelope>(bytes)? {
        Envelope::V1(record) => Ok(record),
    }
}

/// A record borrowed from the bytes it was decoded from: its text (SKUs, names, references)
/// points into them. Replay decodes every record this way and the ledger applies it as
/// such: the ledger copies only what it keeps, so an owned record's strings would be
/// allocated, moved and freed for nothing. Decodes exactly what [`Record`] does (the same
/// fields in the same order, checked by tests) and is what the ledger applies.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct RecordRef<'a> {
    pub at_ms: i64,
    #[serde(deserialize_with = "borrowed_text")]
    pub actor: &'a str,
    pub op_id: Uuid,
    #[serde(borrow)]
    pub event: EventRef<'a>,
}

/// An item of a [`RecordRef`].
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
pub struct ItemRef<'a> {
    #[serde(borrow)]
    pub sku: SkuRef<'a>,
    pub quantity: u64,
}

/// Items of a [`RecordRef`], one inline.
pub type ItemRefs<'a> = SmallVec<[ItemRef<'a>; 1]>;

/// [`Event`], borrowed: the same variants and fields, in the same order.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub enum EventRef<'a> {
    ProductPut {
        #[serde(borrow)]
        sku: SkuRef<'a>,
        created: bool,
        name: Option<&'a str>,
        low_stock_threshold: Option<u64>,
        on_hand: Option<u64>,
        fingerprint: u32,
    },
    Restocked {
        #[serde(borrow)]
        sku: SkuRef<'a>,
        quantity: u64,
        reference: Option<&'a str>,
        note: Option<&'a str>,
        fingerprint: u32,
    },
    Adjusted {
        #[serde(borrow)]
        sku: SkuRef<'a>,
        delta: i64,
        reason: &'a str,
        reference: Option<&'a str>,
        note: Option<&'a str>,
        fingerprint: u32,
    },
    Returned {
        #[serde(borrow)]
        sku: SkuRef<'a>,
        quantity: u64,
        reference: Option<&'a str>,
        note: Option<&'a str>,
        fingerprint: u32,
    },
    Sold {
        #[serde(borrow)]
        items: ItemRefs<'a>,
        reference: Option<&'a str>,
        fingerprint: u32,
    },
    Reserved {
        #[serde(borrow)]
        items: ItemRefs<'a>,
        expires_at_ms: i64,
        session_id: Option<&'a str>,
        user_id: Option<&'a str>,
        reference: Option<&'a str>,
        metadata: Option<&'a str>,
        fingerprint: u32,
    },
    Completed {
        reservation_id: Uuid,
        sold: SmallVec<[u64; 1]>,
        reacquired: bool,
        reference: Option<&'a str>,
    },
    Released {
        reservation_id: Uuid,
        reason: ReleaseReason,
        note: Option<&'a str>,
    },
    Extended {
        reservation_id: Uuid,
        expires_at_ms: i64,
    },
}

#[derive(Deserialize)]
enum EnvelopeIn<'a> {
    V1(#[serde(borrow)] RecordRef<'a>),
}

/// Text borrowed from the input, as `&str` decodes it but quicker ([`text_of`] says why): on
/// every record's actor name.
fn borrowed_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<&'de str, D::Error> {
    let bytes = <&'de [u8]>::deserialize(d)?;
    text_of(bytes).map_err(serde::de::Error::custom)
}

/// Decodes a payload without copying its text (see [`RecordRef`]).
pub fn decode_payload_ref(bytes: &[u8]) -> Result<RecordRef<'_>, postcard::Error> {
    match postcard::from_bytes::<EnvelopeIn>(bytes)? {
        EnvelopeIn::V1(record) => Ok(record),
    }
}

fn item_refs(items: &[Item]) -> ItemRefs<'_> {
    items
        .iter()
        .map(|i| ItemRef {
            sku: i.sku.borrowed(),
            quantity: i.quantity,
        })
        .collect()
}

fn items_of(items: &[ItemRef<'_>]) -> Items {
    items
        .iter()
        .map(|i| Item {
            sku: i.sku.to_sku(),
            quantity: i.quantity,
        })
        .collect()
}

impl Record {
    /// This record as the ledger applies it (the log writer's path: nothing is copied but
    /// the items' list, inline for one).
    pub fn borrowed(&self) -> RecordRef<'_> {
        fn o(s: &Option<String>) -> Option<&str> {
            s.as_deref()
        }
        let event = match &self.event {
            Event::ProductPut {
                sku,
                created,
                name,
                low_stock_threshold,
                on_hand,
                fingerprint,
            } => EventRef::ProductPut {
                sku: sku.borrowed(),
                created: *created,
                name: o(name),
                low_stock_threshold: *low_stock_threshold,
                on_hand: *on_hand,
                fingerprint: *fingerprint,
            },
            Event::Restocked {
                sku,
                quantity,
                reference,
                note,
                fingerprint,
            } => EventRef::Restocked {
                sku: sku.borrowed(),
                quantity: *quantity,
                reference: o(reference),
                note: o(note),
                fingerprint: *fingerprint,
            },
            Event::Adjusted {
                sku,
                delta,
                reason,
                reference,
                note,
                fingerprint,
            } => EventRef::Adjusted {
                sku: sku.borrowed(),
                delta: *delta,
                reason,
                reference: o(reference),
                note: o(note),
                fingerprint: *fingerprint,
            },
            Event::Returned {
                sku,
                quantity,
                reference,
                note,
                fingerprint,
            } => EventRef::Returned {
                sku: sku.borrowed(),
                quantity: *quantity,
                reference: o(reference),
                note: o(note),
                fingerprint: *fingerprint,
            },
            Event::Sold {
                items,
                reference,
                fingerprint,
            } => EventRef::Sold {
                items: item_refs(items),
                reference: o(reference),
                fingerprint: *fingerprint,
            },
            Event::Reserved {
                items,
                expires_at_ms,
                session_id,
                user_id,
                reference,
                metadata,
                fingerprint,
            } => EventRef::Reserved {
                items: item_refs(items),
                expires_at_ms: *expires_at_ms,
                session_id: o(session_id),
                user_id: o(user_id),
                reference: o(reference),
                metadata: o(metadata),
                fingerprint: *fingerprint,
            },
            Event::Completed {
                reservation_id,
                sold,
                reacquired,
                reference,
            } => EventRef::Completed {
                reservation_id: *reservation_id,
                sold: sold.clone(),
                reacquired: *reacquired,
                reference: o(reference),
            },
            Event::Released {
                reservation_id,
                reason,
                note,
            } => EventRef::Released {
                reservation_id: *reservation_id,
                reason: *reason,
                note: o(note),
            },
            Event::Extended {
                reservation_id,
                expires_at_ms,
            } => EventRef::Extended {
                reservation_id: *reservation_id,
                expires_at_ms: *expires_at_ms,
            },
        };
        RecordRef {
            at_ms: self.at_ms,
            actor: &self.actor,
            op_id: self.op_id,
            event,
        }
    }
}

impl RecordRef<'_> {
    /// An owned copy, for callers that keep records or print them (`dump`, tests).
    pub fn to_record(&self) -> Record {
        let s = |t: &Option<&str>| t.map(str::to_string);
        let event = match &self.event {
            EventRef::ProductPut {
                sku,
                created,
                name,
                low_stock_threshold,
                on_hand,
                fingerprint,
            } => Event::ProductPut {
                sku: sku.to_sku(),
                created: *created,
                name: s(name),
                low_stock_threshold: *low_stock_threshold,
                on_hand: *on_hand,
                fingerprint: *fingerprint,
            },
            EventRef::Restocked {
                sku,
                quantity,
                reference,
                note,
                fingerprint,
            } => Event::Restocked {
                sku: sku.to_sku(),
                quantity: *quantity,
                reference: s(reference),
                note: s(note),
                fingerprint: *fingerprint,
            },
            EventRef::Adjusted {
                sku,
                delta,
                reason,
                reference,
                note,
                fingerprint,
            } => Event::Adjusted {
                sku: sku.to_sku(),
                delta: *delta,
                reason: reason.to_string(),
                reference: s(reference),
                note: s(note),
                fingerprint: *fingerprint,
            },
            EventRef::Returned {
                sku,
                quantity,
                reference,
                note,
                fingerprint,
            } => Event::Returned {
                sku: sku.to_sku(),
                quantity: *quantity,
                reference: s(reference),
                note: s(note),
                fingerprint: *fingerprint,
            },
            EventRef::Sold {
                items,
                reference,
                fingerprint,
            } => Event::Sold {
                items: items_of(items),
                reference: s(reference),
                fingerprint: *fingerprint,
            },
            EventRef::Reserved {
                items,
                expires_at_ms,
                session_id,
                user_id,
                reference,
                metadata,
                fingerprint,
            } => Event::Reserved {
                items: items_of(items),
                expires_at_ms: *expires_at_ms,
                session_id: s(session_id),
                user_id: s(user_id),
                reference: s(reference),
                metadata: s(metadata),
                fingerprint: *fingerprint,
            },
            EventRef::Completed {
                reservation_id,
                sold,
                reacquired,
                reference,
            } => Event::Completed {
                reservation_id: *reservation_id,
                sold: sold.clone(),
                reacquired: *reacquired,
                reference: s(reference),
            },
            EventRef::Released {
                reservation_id,
                reason,
                note,
            } => Event::Released {
                reservation_id: *reservation_id,
                reason: *reason,
                note: s(note),
            },
            EventRef::Extended {
                reservation_id,
                expires_at_ms,
            } => Event::Extended {
                reservation_id: *reservation_id,
                expires_at_ms: *expires_at_ms,
            },
        };
        Record {
            at_ms: self.at_ms,
            actor: SmolStr::new(self.actor),
            op_id: self.op_id,
            event,
        }
    }
}

/// Borrowing twin of [`Envelope`] so encoding does not clone the record. Must serialize
/// exactly like `Envelope` (checked by a test).
#[derive(Serialize)]
enum EnvelopeRef<'a> {
    V1(&'a Record),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            at_ms: 1_763_700_000_123,
            actor: "anonymous".into(),
            op_id: Uuid::from_u128(42),
            event: Event::Reserved {
                items: smallvec::smallvec![Item {
                    sku: Sku::parse("A-1").unwrap(),
                    quantity: 3,
                }],
                expires_at_ms: 1_763_700_900_123,
                session_id: Some("s".into()),
                user_id: None,
                reference: None,
                metadata: Some("{\"k\":1}".into()),
                fingerprint: 7,
            },
        }
    }

    #[test]
    fn round_trip_and_borrowed_envelope_matches_owned() {
        let record = sample();
        let mut borrowed = Vec::new();
        encode_payload(&record, &mut borrowed).unwrap();
        let owned = postcard::to_stdvec(&Envelope::V1(record.clone())).unwrap();
        assert_eq!(borrowed, owned);
        assert_eq!(decode_payload(&borrowed).unwrap(), record);
    }

    /// Logs written before items, `sold` and names were kept inline must still decode: each
    /// inline type is written exactly as the vector or string it replaced.
    #[test]
    fn inline_types_are_written_like_the_heap_ones() {
        fn bytes<T: Serialize>(value: &T) -> Vec<u8> {
            postcard::to_stdvec(value).unwrap()
        }
        let item = |sku: &str| Item {
            sku: Sku::parse(sku).unwrap(),
            quantity: 7,
        };
        // Past a `SmolStr`'s 23 inline bytes, so a long name is checked on the heap too.
        let long = "L".repeat(40);
        for items in [vec![item("A-1")], vec![item("A-1"), item(&long), item("B")]] {
            let inline: Items = SmallVec::from_vec(items.clone());
            assert_eq!(bytes(&inline), bytes(&items));
        }
        for sold in [vec![3u64], vec![1, 2, 300]] {
            let inline: SmallVec<[u64; 1]> = SmallVec::from_vec(sold.clone());
            assert_eq!(bytes(&inline), bytes(&sold));
        }
        for name in ["anonymous", long.as_str()] {
            assert_eq!(bytes(&SmolStr::new(name)), bytes(&name.to_string()));
            assert_eq!(bytes(&Sku::parse(name).unwrap()), bytes(&name.to_string()));
        }
    }
    /// One record of every event kind, with every optional field set in some and not in
    /// others, and a multi-item list (on the heap of a `SmallVec`).
    fn one_of_each() -> Vec<Record> {
        let sku = |s: &str| Sku::parse(s).unwrap();
        let item = |s: &str, quantity| Item {
            sku: sku(s),
            quantity,
        };
        let text = |t: &str| Some(t.to_string());
        let id = Uuid::from_u128(9);
        let events = vec![
            Event::ProductPut {
                sku: sku("A-1"),
                created: true,
                name: text("Runner"),
                low_stock_threshold: Some(5),
                on_hand: None,
                fingerprint: 3,
            },
            Event::Restocked {
                sku: sku("A-1"),
                quantity: 10,
                reference: text("PO-7"),
                note: None,
                fingerprint: 0,
            },
            Event::Adjusted {
                sku: sku("B.2"),
                delta: -3,
                reason: "damaged".into(),
                reference: None,
                note: text("dropped"),
                fingerprint: 1,
            },
            Event::Returned {
                sku: sku("B.2"),
                quantity: 1,
                reference: None,
                note: None,
                fingerprint: 0,
            },
            Event::Sold {
                items: smallvec::smallvec![item("A-1", 1), item("B.2", 2)],
                reference: text("order-1"),
                fingerprint: 4,
            },
            sample().event,
            Event::Reserved {
                items: smallvec::smallvec![item("A-1", 1), item("B.2", 2), item("C_3", 3)],
                expires_at_ms: 5,
                session_id: None,
                user_id: text("u-17"),
                reference: text("cart"),
                metadata: None,
                fingerprint: 0,
            },
            Event::Completed {
                reservation_id: id,
                sold: smallvec::smallvec![1, 0],
                reacquired: true,
                reference: text("pay-9"),
            },
            Event::Released {
                reservation_id: id,
                reason: ReleaseReason::Expired,
                note: text("card declined"),
            },
            Event::Extended {
                reservation_id: id,
                expires_at_ms: 99,
            },
        ];
        events
            .into_iter()
            .map(|event| Record { event, ..sample() })
            .collect()
    }

    /// Replay decodes borrowed and the ledger applies that: it must read exactly what the
    /// owned decoding reads, and the writer's borrowed view of a record must be the same.
    #[test]
    fn borrowed_decoding_reads_what_owned_decoding_does() {
        for record in one_of_each() {
            let mut bytes = Vec::new();
            encode_payload(&record, &mut bytes).unwrap();
            let borrowed = decode_payload_ref(&bytes).unwrap();
            assert_eq!(borrowed.to_record(), decode_payload(&bytes).unwrap());
            assert_eq!(borrowed.to_record(), record);
            assert_eq!(record.borrowed(), borrowed, "{}", record.event.kind());
        }
    }

    /// A SKU is checked when decoded borrowed as when decoded owned.
    #[test]
    fn a_bad_sku_is_undecodable_borrowed_too() {
        let record = sample();
        let mut bytes = Vec::new();
        encode_payload(&record, &mut bytes).unwrap();
        // The same record with its SKU "A-1" written as "A 1".
        let at = bytes.windows(3).position(|w| w == b"A-1").unwrap();
        bytes[at + 1] = b' ';
        assert!(decode_payload(&bytes).is_err());
        assert!(decode_payload_ref(&bytes).is_err());
        assert!(decode_payload_ref(&[]).is_err());
        // And a SKU byte that is not ASCII at all (the borrowed SKU is decoded as bytes).
        bytes[at + 1] = 0xC3;
        assert!(decode_payload(&bytes).is_err());
        assert!(decode_payload_ref(&bytes).is_err());
    }

    /// The actor name is decoded borrowed with an ASCII shortcut: text beyond ASCII reads
    /// the same as owned decoding reads it, and bytes that are not UTF-8 are refused by both.
    #[test]
    fn actor_names_decode_borrowed_as_owned_and_bad_utf8_is_refused() {
        for actor in [
            "anonymous",
            "caf\u{e9}-\u{1f6d2}",
            "",
            "x".repeat(200).as_str(),
        ] {
            let mut record = sample();
            record.actor = actor.into();
            let mut bytes = Vec::new();
            encode_payload(&record, &mut bytes).unwrap();
            assert_eq!(decode_payload_ref(&bytes).unwrap().actor, actor);
            assert_eq!(decode_payload_ref(&bytes).unwrap().to_record(), record);
        }
        let mut record = sample();
        record.actor = "ops-\u{e9}".into();
        let mut bytes = Vec::new();
        encode_payload(&record, &mut bytes).unwrap();
        // "é" is 0xC3 0xA9; 0xC3 followed by ASCII is not UTF-8.
        let at = bytes.iter().position(|&b| b == 0xC3).unwrap();
        bytes[at + 1] = b'A';
        assert!(decode_payload(&bytes).is_err());
        assert!(decode_payload_ref(&bytes).is_err());
    }
}
