//! The record format: one record per client operation, so a multi-item operation is atomic
//! in the log by construction. Encoded with postcard (a specified, stable wire format).
//!
//! Compatibility rule: the outer [`Envelope`] is versioned; new event kinds are appended at
//! the end of [`Event`] and fields are never reordered, so old logs keep decoding.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use smol_str::SmolStr;
use uuid::Uuid;

use crate::domain::{Item, ReleaseReason, Sku};

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

pub fn encode_payload(record: &Record, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
    // `to_io` appends to the vector without an intermediate buffer.
    postcard::to_io(&EnvelopeRef::V1(record), out).map(|_| ())
}

pub fn decode_payload(bytes: &[u8]) -> Result<Record, postcard::Error> {
    match postcard::from_bytes::<Envelope>(bytes)? {
        Envelope::V1(record) => Ok(record),
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
}
