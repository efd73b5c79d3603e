//! The catalog as the log tells it: every product, found by SKU.
//!
//! Every record applied looks up one product per item, in replay and on the log writer's
//! thread after each fsync. A `BTreeMap<Sku, Product>` made each lookup a dozen string
//! comparisons down the tree (~14% of replay's applying thread); here a hash lookup finds
//! the product's slot in an [`Arena`], and a B-tree of slots keeps the SKU order that listing
//! pages need. Products are never removed.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::domain::Sku;
use crate::memory::GrowingMap;

use super::arena::Arena;
use super::Product;

#[derive(Debug, Default)]
pub(super) struct Products {
    arena: Arena<Product>,
    /// Grows a few entries per insert, so loading a large catalog never stops the writer.
    by_sku: GrowingMap<Sku, u32>,
    order: BTreeMap<Sku, u32>,
}

impl Products {
    pub(super) fn contains(&self, sku: &str) -> bool {
        self.by_sku.contains_key(sku)
    }

    /// Adds a product not yet known (the caller checked).
    pub(super) fn insert(&mut self, product: Product) {
        let sku = product.sku.clone();
        let slot = self.arena.push(product);
        let previous = self.by_sku.insert(sku.clone(), slot);
        assert!(previous.is_none(), "product {sku} inserted twice");
        self.order.insert(sku, slot);
    }

    pub(super) fn get(&self, sku: &str) -> Option<&Product> {
        self.by_sku.get(sku).map(|&slot| self.arena.get(slot))
    }

    pub(super) fn get_mut(&mut self, sku: &str) -> Option<&mut Product> {
        self.slot_mut(sku).map(|(_, product)| product)
    }

    /// The product and its slot, which stays its own for good (products are never removed):
    /// reservations keep the slot instead of the SKU.
    pub(super) fn slot_mut(&mut self, sku: &str) -> Option<(u32, &mut Product)> {
        let slot = *self.by_sku.get(sku)?;
        Some((slot, self.arena.get_mut(slot)))
    }

    /// The product at `slot`, as [`Products::slot_mut`] gave it.
    pub(super) fn at(&self, slot: u32) -> &Product {
        self.arena.get(slot)
    }

    pub(super) fn at_mut(&mut self, slot: u32) -> &mut Product {
        self.arena.get_mut(slot)
    }

    pub(super) fn len(&self) -> usize {
        self.arena.len()
    }

    /// In SKU order, from `lower` on.
    pub(super) fn from(&self, lower: Bound<&str>) -> impl Iterator<Item = &Product> + '_ {
        self.order
            .range::<str, _>((lower, Bound::Unbounded))
            .map(|(_, &slot)| self.arena.get(slot))
    }

    /// In the order created.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Product> + '_ {
        self.arena.iter()
    }
}
