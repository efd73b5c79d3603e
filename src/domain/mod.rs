//! Pure types and rules: no I/O, no async. Everything here can be unit-tested in isolation,
//! and everything above (actors, log, HTTP) leans on these rules instead of re-deriving them.

pub mod limits;
pub mod product;
pub mod reservation;
pub mod sku;

pub use product::{classify, StockStatus};
pub use reservation::{ReleaseReason, ReservationStatus};
pub use sku::{Sku, SkuRef};

/// One line of a multi-item operation: a SKU and how many units.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Item {
    #[schema(value_type = String, example = "SHOE-42")]
    pub sku: Sku,
    pub quantity: u64,
}
