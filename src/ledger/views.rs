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
