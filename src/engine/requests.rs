//! Request bodies as clients send them, and their validation against the limits. Shared by
//! the HTTP layer (which deserializes them) and by benches/tests that drive the engine directly.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::EngineError;
use crate::domain::limits::*;
use crate::domain::{Item, Sku};

fn invalid(detail: impl Into<String>) -> EngineError {
    EngineError::Invalid(detail.into())
}

pub fn check_text(field: &str, value: &Option<String>) -> Result<(), EngineError> {
    match value {
        Some(v) if v.len() > TEXT_MAX_BYTES => Err(invalid(format!(
            "{field} is longer than {TEXT_MAX_BYTES} bytes"
        ))),
        _ => Ok(()),
    }
}

/// `field` is formatted only for the error (a reserve's items are checked on every request).
pub fn check_quantity(field: impl std::fmt::Display, quantity: u64) -> Result<(), EngineError> {
    if (1..=QUANTITY_MAX).contains(&quantity) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field} must be between 1 and {QUANTITY_MAX}"
        )))
    }
}

pub fn parse_sku(text: &str) -> Result<Sku, EngineError> {
    Sku::parse(text).map_err(|e| invalid(format!("sku {text:?}: {e}")))
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemRequest {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$", example = "SHOE-42")]
    pub sku: String,
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub quantity: u64,
}

/// 1 ..= 100 items, valid SKUs and quantities, each SKU once.
pub fn parse_items(items: &[ItemRequest]) -> Result<Vec<Item>, EngineError> {
    if items.is_empty() || items.len() > ITEMS_PER_OPERATION_MAX {
        return Err(invalid(format!(
            "items must hold 1 to {ITEMS_PER_OPERATION_MAX} entries"
        )));
    }
    let mut out: Vec<Item> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let sku = Sku::parse(&item.sku).map_err(|e| invalid(format!("items[{i}].sku: {e}")))?;
        check_quantity(format_args!("items[{i}].quantity"), item.quantity)?;
        if out.iter().any(|o| o.sku == sku) {
            return Err(invalid(format!(
                "items[{i}]: sku {sku} appears more than once"
            )));
        }
        out.push(Item {
            sku,
            quantity: item.quantity,
        });
    }
    Ok(out)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutProduct {
    #[schema(max_length = 1024)]
    pub name: Option<String>,
    #[schema(maximum = 1_000_000_000_000u64)]
    pub on_hand: Option<u64>,
    #[schema(maximum = 1_000_000_000_000u64)]
    pub low_stock_threshold: Option<u64>,
}

impl PutProduct {
    pub fn validate(&self) -> Result<(), EngineError> {
        check_text("name", &self.name)?;
        if self.on_hand.is_some_and(|v| v > ON_HAND_MAX) {
            return Err(invalid(format!(
                "on_hand must be between 0 and {ON_HAND_MAX}"
            )));
        }
        if self.low_stock_threshold.is_some_and(|v| v > ON_HAND_MAX) {
            return Err(invalid(format!(
                "low_stock_threshold must be between 0 and {ON_HAND_MAX}"
            )));
        }
        Ok(())
    }
}

/// Body of restock and returns.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuantityChange {
    /// Operation id for safe retries.
    #[serde(default)]
    pub id: Option<Uuid>,
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub quantity: u64,
    pub reference: Option<String>,
    pub note: Option<String>,
}

impl QuantityChange {
    pub fn validate(&self) -> Result<(), EngineError> {
        check_quantity("quantity", self.quantity)?;
        check_text("reference", &self.reference)?;
        check_text("note", &self.note)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Adjust {
    /// Operation id for safe retries.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// Signed, non-zero, within ±10^9.
    #[schema(minimum = -1_000_000_000, maximum = 1_000_000_000)]
    pub delta: i64,
    #[schema(min_length = 1, max_length = 1024)]
    pub reason: String,
    pub reference: Option<String>,
    pub note: Option<String>,
}

impl Adjust {
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.delta == 0 || self.delta.unsigned_abs() > QUANTITY_MAX {
            return Err(invalid(format!(
                "delta must be non-zero and within ±{QUANTITY_MAX}"
            )));
        }
        if self.reason.trim().is_empty() {
            return Err(invalid("reason must not be empty"));
        }
        check_text("reason", &Some(self.reason.clone()))?;
        check_text("reference", &self.reference)?;
        check_text("note", &self.note)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reserve {
    /// Operation id for safe retries.
    #[serde(default)]
    pub id: Option<Uuid>,
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<ItemRequest>,
    /// 1..=86400, default 900.
    #[schema(minimum = 1, maximum = 86_400)]
    pub ttl_seconds: Option<u64>,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub reference: Option<String>,
    /// A JSON object kept with the reservation (at most 4 KiB).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

impl Reserve {
    /// A hold of `quantity` of one SKU for `ttl_seconds`, nothing else set (no operation id).
    pub fn one(sku: &str, quantity: u64, ttl_seconds: u64) -> Reserve {
        Reserve {
            id: None,
            items: vec![ItemRequest {
                sku: sku.to_string(),
                quantity,
            }],
            ttl_seconds: Some(ttl_seconds),
            session_id: None,
            user_id: None,
            reference: None,
            metadata: None,
        }
    }

    pub fn ttl_seconds(&self) -> u64 {
        self.ttl_seconds.unwrap_or(TTL_SECONDS_DEFAULT)
    }

    /// Validated items and the metadata as JSON text.
    pub fn validate(&self) -> Result<(Vec<Item>, Option<String>), EngineError> {
        let items = parse_items(&self.items)?;
        check_ttl(self.ttl_seconds())?;
        check_text("session_id", &self.session_id)?;
        check_text("user_id", &self.user_id)?;
        check_text("reference", &self.reference)?;
        let metadata = match &self.metadata {
            None | Some(serde_json::Value::Null) => None,
            Some(v) if !v.is_object() => return Err(invalid("metadata must be a JSON object")),
            Some(v) => {
                let text = v.to_string();
                if text.len() > METADATA_MAX_BYTES {
                    return Err(invalid(format!(
                        "metadata is larger than {METADATA_MAX_BYTES} bytes"
                    )));
                }
                Some(text)
            }
        };
        Ok((items, metadata))
    }
}

pub fn check_ttl(ttl_seconds: u64) -> Result<(), EngineError> {
    if (TTL_SECONDS_MIN..=TTL_SECONDS_MAX).contains(&ttl_seconds) {
        Ok(())
    } else {
        Err(invalid(format!(
            "ttl_seconds must be between {TTL_SECONDS_MIN} and {TTL_SECONDS_MAX}"
        )))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Sale {
    /// Operation id for safe retries.
    #[serde(default)]
    pub id: Option<Uuid>,
    pub items: Vec<ItemRequest>,
    pub reference: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Complete {
    pub reference: Option<String>,
    pub items: Option<Vec<ItemRequest>>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Extend {
    #[schema(minimum = 1, maximum = 86_400)]
    pub ttl_seconds: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Availability {
    pub items: Vec<ItemRequest>,
}

/// Requests that may carry an operation id.
pub trait Identified: Serialize + Clone {
    fn id(&self) -> Option<Uuid>;
    fn clear_id(&mut self);
}

macro_rules! identified {
    ($($t:ty),*) => {$(
        impl Identified for $t {
            fn id(&self) -> Option<Uuid> {
                self.id
            }
            fn clear_id(&mut self) {
                self.id = None;
            }
        }
    )*};
}

identified!(QuantityChange, Adjust, Reserve, Sale);

/// The fingerprint of a request with its id left out; 0 when it has no id (then it cannot be
/// repeated, and nothing compares it).
pub fn fingerprint_of<T: Identified>(kind: &str, target: &str, req: &T) -> u32 {
    if req.id().is_none() {
        return 0;
    }
    let mut body = req.clone();
    body.clear_id();
    fingerprint(kind, target, &body)
}

/// A stable fingerprint of a request (its operation kind, target and canonical body, not the
/// id): the same id with a different fingerprint is `409 id_reused`. CRC32C of the postcard
/// encoding: stable across builds, unlike std's hasher.
/// Never 0: the log records 0 for operations without a client id.
pub fn fingerprint<T: Serialize>(kind: &str, target: &str, body: &T) -> u32 {
    let bytes = postcard::to_stdvec(&(kind, target, body)).unwrap_or_default();
    crc32c::crc32c(&bytes).max(1)
}
