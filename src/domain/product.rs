//! Stock status of a product, derived from its counts. Kept pure so the ledger (reads) and
//! the tests classify exactly alike.

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StockStatus {
    InStock,
    LowStock,
    OutOfStock,
}

impl StockStatus {
    pub fn parse(text: &str) -> Option<StockStatus> {
        match text {
            "in_stock" => Some(StockStatus::InStock),
            "low_stock" => Some(StockStatus::LowStock),
            "out_of_stock" => Some(StockStatus::OutOfStock),
            _ => None,
        }
    }
}

/// `out_of_stock` when nothing is available, `low_stock` when 0 < available <= threshold.
pub fn classify(available: u64, low_stock_threshold: u64) -> StockStatus {
    if available == 0 {
        StockStatus::OutOfStock
    } else if available <= low_stock_threshold {
        StockStatus::LowStock
    } else {
        StockStatus::InStock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_boundaries() {
        assert_eq!(classify(0, 10), StockStatus::OutOfStock);
        assert_eq!(classify(1, 10), StockStatus::LowStock);
        assert_eq!(classify(10, 10), StockStatus::LowStock);
        assert_eq!(classify(11, 10), StockStatus::InStock);
        assert_eq!(classify(1, 0), StockStatus::InStock);
    }
}
