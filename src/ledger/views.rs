//! JSON shapes of what clients read. Built only from the ledger, i.e. from durable state.

use serde::{Serialize, Serializer};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{Item, StockStatus};

/// `2026-11-21T10:15:00.123Z`. chrono does the calendar; the digits are written here,
/// because chrono's formatter (through `core::fmt`) was 12% of the instructions of a whole
/// durable reserve, which answers with two timestamps.
pub fn rfc3339_ms(at_ms: i64) -> String {
    with_rfc3339_ms(at_ms, str::to_owned)
}

/// Hands `use_text` the time as text, written on the stack. Years outside 0..=9999 (which
/// stockd never makes) are left to chrono, which writes them in its own way.
fn with_rfc3339_ms<R>(at_ms: i64, use_text: impl FnOnce(&str) -> R) -> R {
    use chrono::{Datelike, Timelike};
    let at = chrono::DateTime::from_timestamp_millis(at_ms).unwrap_or_default();
    let year = at.year();
    if !(0..=9999).contains(&year) {
        return use_text(&at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    }
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut value: u32| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year as u32);
    put(5, 2, at.month());
    put(8, 2, at.day());
    put(11, 2, at.hour());
    put(14, 2, at.minute());
    put(17, 2, at.second());
    put(20, 3, at.timestamp_subsec_millis());
    use_text(std::str::from_utf8(&out).expect("ASCII digits and separators"))
}

/// A time in a view: milliseconds since the epoch, serialized as [`rfc3339_ms`] straight into
/// the answer, so a view costs no `String` per timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp(pub i64);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        with_rfc3339_ms(self.0, |text| serializer.serialize_str(text))
    }
}

#[cfg(test)]
mod tests {
    use super::{rfc3339_ms, Timestamp};

    fn chrono_says(at_ms: i64) -> String {
        chrono::DateTime::from_timestamp_millis(at_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    #[test]
    fn writes_what_chrono_writes() {
        let mut samples = vec![0, 1, 999, 1_000, -1, 951_782_400_000, 4_107_542_399_999];
        // 2026-11-21 and a walk over 400 years in uneven steps (leap days, month ends).
        samples.push(1_795_256_100_123);
        let mut at = -62_135_596_800_000i64; // 0001-01-01
        while at < 253_402_300_799_999 {
            samples.push(at);
            at += 86_399_999 * 7 + 12_345;
        }
        samples.push(253_402_300_799_999); // 9999-12-31T23:59:59.999Z
        samples.push(253_402_300_800_000); // year 10000: chrono's own format
        samples.push(i64::MIN); // out of range: the epoch, as before
        for at in samples {
            assert_eq!(rfc3339_ms(at), chrono_says(at), "at {at} ms");
            let json = serde_json::to_string(&Timestamp(at)).expect("serialize");
            assert_eq!(json, format!("\"{}\"", chrono_says(at)), "at {at} ms");
        }
    }
}

#[cfg(test)]
mod reservation_json_tests {
    use proptest::prelude::*;
    use uuid::Uuid;

    use super::{ReservationView, Timestamp};
    use crate::domain::{Item, Sku};

    /// Text a client may send: mostly plain, sometimes with quotes, backslashes, control
    /// characters and non-ASCII, which serde_json escapes or passes through.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[A-Za-z0-9 _.-]{0,24}",
            any::<String>(),
            "[\"\\\\\u{0}-\u{1f}\u{7f}é€😀a]{0,12}",
        ]
    }

    fn items() -> impl Strategy<Value = Vec<Item>> {
        prop::collection::vec(
            ("[A-Za-z0-9._-]{1,64}", any::<u64>()).prop_map(|(sku, quantity)| Item {
                sku: Sku::parse(&sku).expect("a valid SKU"),
                quantity,
            }),
            0..4,
        )
    }

    fn metadata() -> impl Strategy<Value = Option<serde_json::Value>> {
        prop::option::of(prop_oneof![
            text().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            prop::collection::btree_map(text(), text(), 0..4).prop_map(|map| {
                serde_json::Value::Object(
                    map.into_iter()
                        .map(|(k, v)| (k, serde_json::Value::from(v)))
                        .collect(),
                )
            }),
        ])
    }

    proptest! {
        #[test]
        fn the_hand_written_answer_is_serde_jsons(
            id in any::<u128>(),
            status in prop::sample::select(vec!["active", "completed", "released", "expired"]),
            items in items(),
            created_at_ms in any::<i64>(),
            expires_at_ms in prop_oneof![any::<i64>(), 0i64..4_102_444_800_000],
            session_id in prop::option::of(text()),
            user_id in prop::option::of(text()),
            reference in prop::option::of(text()),
            metadata in metadata(),
            sold_items in prop::option::of(items()),
            reacquired in any::<bool>(),
        ) {
            let view = ReservationView {
                id: Uuid::from_u128(id),
                status,
                items,
                created_at: Timestamp(created_at_ms),
                expires_at: Timestamp(expires_at_ms),
                session_id,
                user_id,
                reference,
                metadata,
                sold_items,
                reacquired,
            };
            let mut written = Vec::new();
            view.write_json(&mut written).expect("written");
            let serde = serde_json::to_vec(&view).expect("serialized");
            prop_assert_eq!(String::from_utf8_lossy(&written), String::from_utf8_lossy(&serde));
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, ToSchema)]
pub struct ProductView {
    pub sku: String,
    pub name: Option<String>,
    pub on_hand: u64,
    pub reserved: u64,
    pub available: u64,
    pub low_stock_threshold: u64,
    pub status: StockStatus,
    pub version: u64,
    #[schema(value_type = String)]
    pub updated_at: Timestamp,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HistoryView {
    pub seq: u64,
    #[schema(value_type = String)]
    pub at: Timestamp,
    #[schema(value_type = String, example = "reserve")]
    pub action: &'static str,
    pub quantity_before: u64,
    pub quantity_after: u64,
    pub change: i64,
    pub reserved_before: u64,
    pub reserved_after: u64,
    pub actor: String,
    pub reference: Option<String>,
    pub reservation_id: Option<Uuid>,
    pub note: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ReservationView {
    pub id: Uuid,
    #[schema(value_type = String, example = "active")]
    pub status: &'static str,
    pub items: Vec<Item>,
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    #[schema(value_type = String)]
    pub expires_at: Timestamp,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub reference: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Units sold per item, once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sold_items: Option<Vec<Item>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reacquired: bool,
}

impl ReservationView {
    /// The view as JSON, byte for byte what `serde_json::to_writer` writes for it (a test
    /// holds the two equal), appended to `out`.
    ///
    /// Why by hand: this is the answer of every reserve, complete and cancel, and through
    /// serde_json it cost ~3,100 instructions of a ~31,000-instruction HTTP reserve
    /// (callgrind): serde_json scans every byte of every string for escapes, the eleven keys
    /// included, one call per string. Here the keys, the id, the status and the timestamps,
    /// which never need escaping, are copied as they are, and only the client's strings are
    /// checked.
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let mut uuid_text = Uuid::encode_buffer();
        out.extend_from_slice(b"{\"id\":\"");
        out.extend_from_slice(self.id.hyphenated().encode_lower(&mut uuid_text).as_bytes());
        out.extend_from_slice(b"\",\"status\":");
        write_json_str(out, self.status)?;
        out.extend_from_slice(b",\"items\":");
        write_json_items(out, &self.items)?;
        out.extend_from_slice(b",\"created_at\":");
        write_json_time(out, self.created_at);
        out.extend_from_slice(b",\"expires_at\":");
        write_json_time(out, self.expires_at);
        out.extend_from_slice(b",\"session_id\":");
        write_json_opt_str(out, self.session_id.as_deref())?;
        out.extend_from_slice(b",\"user_id\":");
        write_json_opt_str(out, self.user_id.as_deref())?;
        out.extend_from_slice(b",\"reference\":");
        write_json_opt_str(out, self.reference.as_deref())?;
        out.extend_from_slice(b",\"metadata\":");
        match &self.metadata {
            Some(metadata) => serde_json::to_writer(&mut *out, metadata)?,
            None => out.extend_from_slice(b"null"),
        }
        if let Some(sold_items) = &self.sold_items {
            out.extend_from_slice(b",\"sold_items\":");
            write_json_items(out, sold_items)?;
        }
        if self.reacquired {
            out.extend_from_slice(b",\"reacquired\":true");
        }
        out.push(b'}');
        Ok(())
    }

    /// A reservation as its creation answers it. The engine (live) and the ledger (repeats
    /// of the same operation id) both build it here, so both answers are the same.
    #[allow(clippy::too_many_arguments)]
    pub fn created(
        id: Uuid,
        items: Vec<Item>,
        created_at_ms: i64,
        expires_at_ms: i64,
        session_id: Option<String>,
        user_id: Option<String>,
        reference: Option<String>,
        metadata: Option<serde_json::Value>,
    ) -> ReservationView {
        ReservationView {
            id,
            status: "active",
            items,
            created_at: Timestamp(created_at_ms),
            expires_at: Timestamp(expires_at_ms),
            session_id,
            user_id,
            reference,
            metadata,
            sold_items: None,
            reacquired: false,
        }
    }
}

/// `text` as a JSON string. serde_json escapes only `"`, `\\` and control characters, and
/// passes everything else through as it is: a string with none of those is copied between
/// quotes, and any other is left to serde_json, so the bytes are always serde_json's.
fn write_json_str(out: &mut Vec<u8>, text: &str) -> serde_json::Result<()> {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, text)
    }
}

fn write_json_opt_str(out: &mut Vec<u8>, text: Option<&str>) -> serde_json::Result<()> {
    match text {
        Some(text) => write_json_str(out, text),
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    }
}

fn write_json_time(out: &mut Vec<u8>, at: Timestamp) {
    with_rfc3339_ms(at.0, |text| {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    });
}

fn write_json_items(out: &mut Vec<u8>, items: &[Item]) -> serde_json::Result<()> {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"sku\":");
        write_json_str(out, item.sku.as_str())?;
        out.extend_from_slice(b",\"quantity\":");
        out.extend_from_slice(itoa::Buffer::new().format(item.quantity).as_bytes());
        out.push(b'}');
    }
    out.push(b']');
    Ok(())
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SaleView {
    pub id: Uuid,
    pub items: Vec<Item>,
    #[schema(value_type = String)]
    pub at: Timestamp,
    pub reference: Option<String>,
}

/// Per-item answer of availability checks and stock refusals.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct ItemReport {
    pub sku: String,
    pub requested: u64,
    pub available: u64,
    /// `out_of_stock`, `insufficient_stock`, `not_found`, or null when the item fits.
    #[schema(value_type = Option<String>)]
    pub error: Option<&'static str>,
}

impl ItemReport {
    pub fn judge(sku: &str, requested: u64, available: Option<u64>) -> ItemReport {
        let (available, error) = match available {
            None => (0, Some("not_found")),
            Some(0) => (0, Some("out_of_stock")),
            Some(a) if a < requested => (a, Some("insufficient_stock")),
            Some(a) => (a, None),
        };
        ItemReport {
            sku: sku.to_string(),
            requested,
            available,
            error,
        }
    }
}
