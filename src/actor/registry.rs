//! SKU → actor mailbox. The only global map besides the log (see DESIGN: partitioning by SKU
//! later means one registry per node).

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::mpsc;

use super::Msg;
use crate::domain::Sku;

#[derive(Clone, Default)]
pub struct Registry {
    actors: Arc<DashMap<Sku, mpsc::Sender<Msg>>>,
}

impl Registry {
    pub fn get(&self, sku: &str) -> Option<mpsc::Sender<Msg>> {
        self.actors.get(sku).map(|s| s.value().clone())
    }

    /// The mailbox for `sku`, starting an actor with `spawn` if there is none yet.
    pub fn get_or_spawn(
        &self,
        sku: &Sku,
        spawn: impl FnOnce() -> mpsc::Sender<Msg>,
    ) -> mpsc::Sender<Msg> {
        self.actors
            .entry(sku.clone())
            .or_insert_with(spawn)
            .value()
            .clone()
    }

    pub fn insert(&self, sku: Sku, tx: mpsc::Sender<Msg>) {
        self.actors.insert(sku, tx);
    }

    pub fn len(&self) -> usize {
        self.actors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.actors.is_empty()
    }
}
