//! The reservations homed at one product, by id: an id → slot map over chunks of slots.
//!
//! Why not one map of id → [`Home`]: a hot product gathers a hold per reserve, and every
//! insert lands on a random bucket of a table that outgrows the caches (and, with small
//! pages, the TLB) within seconds of a sale. With the 48-byte home inside each bucket the
//! table of a million holds was ~65 MB, rewritten into freshly faulted-in memory at each
//! growth. Here a bucket is 20 bytes (id and slot) and the homes go one after another into
//! chunks that never move. Inserting 4M random ids with their homes (examples, small pages):
//! 300-426 ns each into the map of homes, 163-167 ns into this.
//!
//! A slot freed by a removal is reused by the next insert, so the chunks hold at most as many
//! slots as there were homes at once. When the last home goes, the chunks go too, but for a
//! small first one: a product whose holds come and go one at a time allocates nothing per hold.

use std::ops::Index;

use uuid::Uuid;

use super::product::Home;
use crate::memory::GrowingMap;

/// Slots per chunk (48 bytes each: ~48 KiB a chunk). The first chunk grows to this as
/// needed; later ones are allocated whole. (Small in unit tests, so that they cross chunks.)
#[cfg(not(test))]
const CHUNK_SLOTS: usize = 1024;
#[cfg(test)]
const CHUNK_SLOTS: usize = 8;
/// A lone first chunk left empty is kept up to this capacity, and freed above it.
#[cfg(not(test))]
const KEPT_CHUNK_SLOTS_MAX: usize = 16;
#[cfg(test)]
const KEPT_CHUNK_SLOTS_MAX: usize = 4;

/// Invariants: `slots` maps every id here to a distinct occupied slot; every other slot below
/// the end of the last chunk is vacant and in `free`; only the last chunk may be shorter than
/// `CHUNK_SLOTS`.
#[derive(Debug, Default)]
pub struct Homes {
    slots: GrowingMap<Uuid, u32>,
    chunks: Vec<Vec<Option<Home>>>,
    free: Vec<u32>,
}

impl Homes {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn contains_key(&self, id: &Uuid) -> bool {
        self.slots.contains_key(id)
    }

    pub fn get(&self, id: &Uuid) -> Option<&Home> {
        let slot = *self.slots.get(id)?;
        Some(self.occupied(slot))
    }

    pub fn get_mut(&mut self, id: &Uuid) -> Option<&mut Home> {
        let slot = *self.slots.get(id)?;
        let (chunk, at) = position(slot);
        Some(
            self.chunks[chunk][at]
                .as_mut()
                .expect("a mapped slot is occupied"),
        )
    }

    /// Adds or replaces the home of `id`; the one it replaced, if any.
    pub fn insert(&mut self, id: Uuid, home: Home) -> Option<Home> {
        // One probe of the map (an entry), not a look-up and then an insert: every reserve
        // inserts a new id, and the map is the hot product's largest table.
        let vacant = match self.slots.entry(id) {
            griddle::hash_map::Entry::Occupied(entry) => {
                let (chunk, at) = position(*entry.get());
                return self.chunks[chunk][at].replace(home);
            }
            griddle::hash_map::Entry::Vacant(vacant) => vacant,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                let (chunk, at) = position(slot);
                let vacant = &mut self.chunks[chunk][at];
                debug_assert!(vacant.is_none(), "a free slot is vacant");
                *vacant = Some(home);
                slot
            }
            None => Self::push(&mut self.chunks, home),
        };
        vacant.insert(slot);
        None
    }

    pub fn remove(&mut self, id: &Uuid) -> Option<Home> {
        let slot = self.slots.remove(id)?;
        let (chunk, at) = position(slot);
        let home = self.chunks[chunk][at]
            .take()
            .expect("a mapped slot is occupied");
        if self.slots.is_empty() {
            self.release();
        } else {
            self.free.push(slot);
        }
        Some(home)
    }

    /// Every (id, home), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Uuid, &Home)> + '_ {
        self.slots
            .iter()
            .map(|(id, &slot)| (id, self.occupied(slot)))
    }

    pub fn values(&self) -> impl Iterator<Item = &Home> + '_ {
        self.iter().map(|(_, home)| home)
    }

    fn occupied(&self, slot: u32) -> &Home {
        let (chunk, at) = position(slot);
        self.chunks[chunk][at]
            .as_ref()
            .expect("a mapped slot is occupied")
    }

    /// A new slot at the end of the last chunk (or of a new one).
    fn push(chunks: &mut Vec<Vec<Option<Home>>>, home: Home) -> u32 {
        if chunks.last().is_none_or(|c| c.len() == CHUNK_SLOTS) {
            let capacity = if chunks.is_empty() { 0 } else { CHUNK_SLOTS };
            chunks.push(Vec::with_capacity(capacity));
        }
        let full_chunks = chunks.len() - 1;
        let chunk = chunks.last_mut().expect("pushed above");
        let slot = full_chunks * CHUNK_SLOTS + chunk.len();
        chunk.push(Some(home));
        u32::try_from(slot).expect("fewer than 2^32 homes at one product")
    }

    /// Nothing is homed here any more: frees the chunks (all slots are vacant), keeping a
    /// small first one for the next home.
    fn release(&mut self) {
        debug_assert!(self.chunks.iter().flatten().all(Option::is_none));
        self.free.clear();
        self.free.shrink_to(0);
        self.chunks.truncate(1);
        match self.chunks.first_mut() {
            Some(first) if first.capacity() <= KEPT_CHUNK_SLOTS_MAX => first.clear(),
            _ => self.chunks.clear(),
        }
    }
}

impl Index<&Uuid> for Homes {
    type Output = Home;

    fn index(&self, id: &Uuid) -> &Home {
        self.get(id).expect("no home for this id")
    }
}

fn position(slot: u32) -> (usize, usize) {
    let slot = slot as usize;
    (slot / CHUNK_SLOTS, slot % CHUNK_SLOTS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actor::product::HomeItems;
    use crate::domain::ReservationStatus;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn home(units: u64) -> Home {
        Home {
            items: HomeItems::Own(units),
            status: ReservationStatus::Active,
            deadline: tokio::time::Instant::now(),
            end_lsn: units,
            busy: false,
        }
    }

    fn slots_held(homes: &Homes) -> usize {
        homes.chunks.iter().map(Vec::len).sum()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u64),
        Remove(u8),
        Update(u8, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (any::<u8>(), any::<u64>()).prop_map(|(id, u)| Op::Insert(id % 32, u)),
            2 => any::<u8>().prop_map(|id| Op::Remove(id % 32)),
            1 => (any::<u8>(), any::<u64>()).prop_map(|(id, u)| Op::Update(id % 32, u)),
        ]
    }

    proptest! {
        /// The same answers as a map of homes, and never more slots than homes held at once.
        #[test]
        fn agrees_with_a_map(ops in prop::collection::vec(op(), 1..400)) {
            let mut homes = Homes::default();
            let mut model: HashMap<Uuid, u64> = HashMap::new();
            let mut most_at_once = 0;
            for op in ops {
                match op {
                    Op::Insert(id, units) => {
                        let id = Uuid::from_u128(id.into());
                        let before = homes.insert(id, home(units)).map(|h| h.end_lsn);
                        prop_assert_eq!(before, model.insert(id, units));
                    }
                    Op::Remove(id) => {
                        let id = Uuid::from_u128(id.into());
                        let removed = homes.remove(&id).map(|h| h.end_lsn);
                        prop_assert_eq!(removed, model.remove(&id));
                    }
                    Op::Update(id, units) => {
                        let id = Uuid::from_u128(id.into());
                        if let Some(h) = homes.get_mut(&id) {
                            h.end_lsn = units;
                        }
                        if let Some(u) = model.get_mut(&id) {
                            *u = units;
                        }
                    }
                }
                most_at_once = most_at_once.max(model.len());
                prop_assert_eq!(homes.len(), model.len());
                for (id, units) in &model {
                    prop_assert!(homes.contains_key(id));
                    prop_assert_eq!(homes[id].end_lsn, *units);
                }
                let mut listed: Vec<(Uuid, u64)> =
                    homes.iter().map(|(id, h)| (*id, h.end_lsn)).collect();
                listed.sort_unstable();
                let mut expected: Vec<(Uuid, u64)> = model.iter().map(|(i, u)| (*i, *u)).collect();
                expected.sort_unstable();
                prop_assert_eq!(listed, expected);
                prop_assert!(slots_held(&homes) <= most_at_once);
                prop_assert_eq!(slots_held(&homes), homes.len() + homes.free.len());
            }
        }
    }

    #[test]
    fn the_last_removal_frees_the_chunks_but_a_small_first_one() {
        let mut homes = Homes::default();
        homes.insert(Uuid::from_u128(1), home(1));
        homes.remove(&Uuid::from_u128(1));
        assert_eq!(
            homes.chunks.len(),
            1,
            "a small chunk is kept for the next home"
        );
        let ids: Vec<Uuid> = (0..3 * CHUNK_SLOTS as u128).map(Uuid::from_u128).collect();
        for id in &ids {
            homes.insert(*id, home(2));
        }
        assert_eq!(homes.chunks.len(), 3);
        for id in &ids {
            assert_eq!(homes.remove(id).map(|h| h.end_lsn), Some(2));
        }
        assert!(homes.is_empty());
        assert!(homes.chunks.is_empty() && homes.free.is_empty());
    }
}
