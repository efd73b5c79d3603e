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
    slots: SlotIndex,
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
        if let Some(&slot) = self.slots.get(&id) {
            let (chunk, at) = position(slot);
            return self.chunks[chunk][at].replace(home);
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                let (chunk, at) = position(slot);
                let vacant = &mut self.chunks[chunk][at];
                debug_assert!(vacant.is_none(), "a free slot is vacant");
                *vacant = Some(home);
                slot
            }
            None => self.push(home),
        };
        self.slots.insert(id, slot);
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
            self.slots = SlotIndex::default();
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
    fn push(&mut self, home: Home) -> u32 {
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK_SLOTS) {
            let capacity = if self.chunks.is_empty() {
                0
            } else {
                CHUNK_SLOTS
            };
            self.chunks.push(Vec::with_capacity(capacity));
        }
        let full_chunks = self.chunks.len() - 1;
        let chunk = self.chunks.last_mut().expect("pushed above");
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

/// Shards of a large index: a power of two.
#[cfg(not(test))]
const INDEX_SHARDS: usize = 64;
#[cfg(test)]
const INDEX_SHARDS: usize = 4;
/// An index of this many ids splits into shards.
#[cfg(not(test))]
const SPLIT_AT_LEN: usize = 1 << 16;
#[cfg(test)]
const SPLIT_AT_LEN: usize = 16;

/// Id → slot: one map, split into [`INDEX_SHARDS`] by the id's last byte once it holds
/// [`SPLIT_AT_LEN`] ids, each shard doubling at its own fill ([`grow_in_turn`]).
///
/// Why: a table that doubles is faulted in again, page by page, by the random inserts after
/// it. One table of a hot product doubled at 1.8M, 3.7M and 7.3M holds, and each time the
/// inserts that followed waited on the kernel clearing fresh pages (`clear_page_erms`, 37% of
/// the samples of the stall): ~1 s at ~100k reserves/s against ~460k/s around it. Shards that
/// double in turn fault in the same memory spread over the inserts between those points.
/// Small products keep one map (an empty `Vec` allocates nothing).
#[derive(Debug, Default)]
struct SlotIndex {
    one: GrowingMap<Uuid, u32>,
    shards: Vec<GrowingMap<Uuid, u32>>,
}

impl SlotIndex {
    fn map(&self, id: &Uuid) -> &GrowingMap<Uuid, u32> {
        if self.shards.is_empty() {
            &self.one
        } else {
            &self.shards[shard_of(id)]
        }
    }

    fn len(&self) -> usize {
        self.one.len() + self.shards.iter().map(GrowingMap::len).sum::<usize>()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, id: &Uuid) -> Option<&u32> {
        self.map(id).get(id)
    }

    fn contains_key(&self, id: &Uuid) -> bool {
        self.map(id).contains_key(id)
    }

    fn insert(&mut self, id: Uuid, slot: u32) {
        if self.shards.is_empty() {
            if self.one.len() < SPLIT_AT_LEN {
                self.one.insert(id, slot);
                return;
            }
            self.split();
        }
        let shard = shard_of(&id);
        grow_in_turn(&mut self.shards[shard], shard);
        self.shards[shard].insert(id, slot);
    }

    fn remove(&mut self, id: &Uuid) -> Option<u32> {
        if self.shards.is_empty() {
            self.one.remove(id)
        } else {
            self.shards[shard_of(id)].remove(id)
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&Uuid, &u32)> + '_ {
        self.one.iter().chain(self.shards.iter().flatten())
    }

    /// Moves the one map's ids into shards (once, at [`SPLIT_AT_LEN`] ids: a few ms).
    fn split(&mut self) {
        let each = self.one.len() / INDEX_SHARDS * 2;
        self.shards = (0..INDEX_SHARDS)
            .map(|_| GrowingMap::with_capacity_and_hasher(each, Default::default()))
            .collect();
        for (id, slot) in std::mem::take(&mut self.one) {
            self.shards[shard_of(&id)].insert(id, slot);
        }
    }
}

fn shard_of(id: &Uuid) -> usize {
    id.as_bytes()[15] as usize % INDEX_SHARDS
}

/// Doubles `map` (shard `shard`) early, at its own fill: from half of its capacity (the first
/// shard) to 7/8 of it (the last). Random ids fill shards evenly, so left to themselves they
/// would all double within a few thousand inserts of each other, as one table does.
fn grow_in_turn(map: &mut GrowingMap<Uuid, u32>, shard: usize) {
    let capacity = map.capacity();
    let fill_at = capacity / 2 + capacity / 8 * 3 * shard / INDEX_SHARDS;
    if capacity >= STAGGERED_CAPACITY_MIN && map.len() >= fill_at {
        // One more than it has room for: the table's next size.
        map.reserve(capacity - map.len() + 1);
    }
}

/// Below this capacity a shard grows when full, as maps do: tables that small move quickly.
#[cfg(not(test))]
const STAGGERED_CAPACITY_MIN: usize = 512;
#[cfg(test)]
const STAGGERED_CAPACITY_MIN: usize = 4;

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

    /// Each shard doubles at its own fill, from half of its capacity (the first) up to 7/8
    /// (the last), so that they do not all double at once; and the index shrinks back to one
    /// map when the last id goes.
    #[test]
    fn shards_double_in_turn() {
        let mut index = SlotIndex::default();
        let mut fills: Vec<Vec<f64>> = vec![Vec::new(); INDEX_SHARDS];
        let ids: Vec<Uuid> = (0..20_000u128)
            .map(|n| Uuid::from_u128(n.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)))
            .collect();
        for (n, id) in ids.iter().enumerate() {
            let shard = shard_of(id);
            let before = index.shards.get(shard).map(|m| (m.len(), m.capacity()));
            index.insert(*id, n as u32);
            if let Some((len, capacity)) = before {
                // Past the smallest sizes, where the fill's integer arithmetic is coarse.
                if capacity >= 64 && index.shards[shard].capacity() > capacity {
                    fills[shard].push(len as f64 / capacity as f64);
                }
            }
        }
        assert_eq!(index.len(), ids.len());
        assert!(
            fills.iter().all(|f| f.len() >= 5),
            "every shard grew: {fills:?}"
        );
        for (shard, fills) in fills.iter().enumerate() {
            let expected = 0.5 + 0.375 * shard as f64 / INDEX_SHARDS as f64;
            assert!(
                fills.iter().all(|f| (f - expected).abs() < 0.02),
                "shard {shard} doubles at {expected}: {fills:?}"
            );
        }
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(index.get(id), Some(&(n as u32)));
        }
        let mut homes = Homes::default();
        for id in &ids[..SPLIT_AT_LEN * 2] {
            homes.insert(*id, home(1));
        }
        assert!(!homes.slots.shards.is_empty(), "split past SPLIT_AT_LEN");
        for id in &ids[..SPLIT_AT_LEN * 2] {
            homes.remove(id);
        }
        assert!(homes.slots.shards.is_empty() && homes.is_empty());
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
