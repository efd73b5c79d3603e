//! The reservations homed at one product, by id: chunks of slots, each slot holding an id and
//! its home, and a map for the ids that do not name their own slot.
//!
//! Why not one map of id → [`Home`]: a hot product gathers a hold per reserve, and every
//! insert lands on a random bucket of a table that outgrows the caches (and, with small
//! pages, the TLB) within seconds of a sale. With the 48-byte home inside each bucket the
//! table of a million holds was ~65 MB, rewritten into freshly faulted-in memory at each
//! growth. The homes go one after another into chunks that never move instead.
//!
//! Why the id names its slot: even a map of id → slot (20-byte buckets) was a random write
//! per reserve into a table of millions, with its growth moved a few entries at a time:
//! ~11% of the event loop's time on a hot product, and a reserve without it ran 20-35%
//! faster (steady driver, 2M reserves, 1,024 callers). So an id stockd makes for a
//! reservation homed here carries its slot in its first 32 bits, and is found by reading that
//! slot and comparing the id stored there. The other 90 bits stay random, as in any UUID v4.
//! Ids a client chose, or that were made before a restart, may name any slot, or one taken
//! by another id: those are found through the map, which is empty in the usual case.
//!
//! Why the slot is masked by a keyed hash of the id's other bits: ids must not show how many
//! holds a product has. A fixed key xored with the slot (as at first) hides one id's slot, but
//! two ids of a product xored together give slot ^ slot, which tells roughly how many holds
//! it had at once. The mask here is SipHash (std's `RandomState`: a key from the OS, one for
//! the process) of a random salt drawn per product and the id's 96 other bits, 90 of them
//! random: a fresh mask per id, so ids say nothing about slots to anyone without the key.
//! (One key and a salt, not a `RandomState` per product: std steps the key of each new one
//! by one, and SipHash makes no promise for keys that are related.) It costs one hash
//! (~12 ns) per new id and per lookup.
//!
//! A slot freed by a removal is reused by the next insert, so the chunks hold at most as many
//! slots as there were homes at once. When the last home goes, the chunks go too, but for a
//! small first one: a product whose holds come and go one at a time allocates nothing per hold.

use std::hash::{BuildHasher, RandomState};
use std::ops::Index;
use std::sync::LazyLock;

use uuid::Uuid;

use super::product::Home;
use crate::memory::GrowingMap;

/// Slots per chunk (56 bytes each: 56 KiB a chunk). The first chunk grows to this as
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
/// Tries at an id for a new home before giving up: a try fails only if a random id equals
/// one already here (90 random bits), so a second try is as good as certain.
const NEW_ID_TRIES_MAX: usize = 8;

/// An id made by [`Homes::new_id`], with the slot it names (which costs a hash to find).
#[derive(Clone, Copy, Debug)]
pub struct NewId {
    pub id: Uuid,
    slot: u32,
}

#[derive(Debug)]
struct Slot {
    id: Uuid,
    home: Home,
}

const _: () = assert!(std::mem::size_of::<Option<Slot>>() == 56);

/// Invariants: every id here is in exactly one occupied slot; `others` maps exactly the ids
/// whose slot is not [`Homes::named_slot`]; every other slot below the end of the last chunk
/// is vacant and in `free`; only the last chunk may be shorter than `CHUNK_SLOTS`.
#[derive(Debug)]
pub struct Homes {
    chunks: Vec<Vec<Option<Slot>>>,
    others: GrowingMap<Uuid, u32>,
    free: Vec<u32>,
    len: usize,
    /// Hashed with the id in the mask of its first 32 bits (see [`MASK_KEY`]).
    salt: u64,
}

impl Default for Homes {
    fn default() -> Self {
        Homes {
            chunks: Vec::new(),
            others: GrowingMap::default(),
            free: Vec::new(),
            len: 0,
            // uuid's generator is the one at hand (ChaCha, seeded from the OS).
            salt: Uuid::new_v4().as_u64_pair().0,
        }
    }
}

impl Homes {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains_key(&self, id: &Uuid) -> bool {
        self.find(id).is_some()
    }

    pub fn get(&self, id: &Uuid) -> Option<&Home> {
        let slot = self.find(id)?;
        Some(&self.occupied(slot).home)
    }

    pub fn get_mut(&mut self, id: &Uuid) -> Option<&mut Home> {
        let slot = self.find(id)?;
        Some(&mut self.occupied_mut(slot).home)
    }

    /// An id for the next home, made from `random` (a UUID v4): the next insert of it takes
    /// the slot it names, so it is found without the map.
    pub fn new_id(&self, random: Uuid) -> NewId {
        let slot = self.next_slot();
        let mut id = self.naming(random, slot);
        for _ in 1..NEW_ID_TRIES_MAX {
            // Only an id in the map can be equal: one in its own slot names another slot.
            if self.others.is_empty() || !self.others.contains_key(&id) {
                return NewId { id, slot };
            }
            id = self.naming(Uuid::new_v4(), slot);
        }
        panic!(
            "{NEW_ID_TRIES_MAX} random ids in a row were taken already: the generator is broken"
        );
    }

    /// Adds the home of an id from [`Self::new_id`], straight into the slot it names when
    /// nothing was inserted or removed since (as in a reserve), else as [`Self::insert`] does.
    pub fn insert_new(&mut self, new: NewId, home: Home) {
        if self.next_slot() != new.slot {
            let before = self.insert(new.id, home);
            assert!(before.is_none(), "a new id was already here");
            return;
        }
        debug_assert_eq!(self.named_slot(&new.id), new.slot);
        debug_assert!(self.find_named(&new.id, new.slot).is_none());
        let slot = self.place(Slot { id: new.id, home });
        debug_assert_eq!(slot, new.slot);
    }

    /// Adds or replaces the home of `id`; the one it replaced, if any.
    pub fn insert(&mut self, id: Uuid, home: Home) -> Option<Home> {
        let named = self.named_slot(&id);
        if let Some(slot) = self.find_named(&id, named) {
            return Some(std::mem::replace(&mut self.occupied_mut(slot).home, home));
        }
        let slot = self.place(Slot { id, home });
        if named != slot {
            let before = self.others.insert(id, slot);
            debug_assert!(before.is_none(), "an id not found is not in the map");
        }
        None
    }

    /// Puts a home not here yet into [`Self::next_slot`]; that slot.
    fn place(&mut self, slot: Slot) -> u32 {
        let at = match self.free.pop() {
            Some(at) => {
                let vacant = self.entry_mut(at);
                debug_assert!(vacant.is_none(), "a free slot is vacant");
                *vacant = Some(slot);
                at
            }
            None => self.push(slot),
        };
        self.len += 1;
        at
    }

    pub fn remove(&mut self, id: &Uuid) -> Option<Home> {
        let named = self.named_slot(id);
        let slot = self.find_named(id, named)?;
        if named != slot {
            self.others.remove(id);
        }
        let taken = self
            .entry_mut(slot)
            .take()
            .expect("a found slot is occupied");
        self.len -= 1;
        if self.len == 0 {
            self.release();
        } else {
            self.free.push(slot);
        }
        Some(taken.home)
    }

    /// Every (id, home), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Uuid, &Home)> + '_ {
        self.chunks
            .iter()
            .flatten()
            .flatten()
            .map(|slot| (&slot.id, &slot.home))
    }

    pub fn values(&self) -> impl Iterator<Item = &Home> + '_ {
        self.iter().map(|(_, home)| home)
    }

    /// The slot of `id`, if it is here: the one it names, else the map's.
    fn find(&self, id: &Uuid) -> Option<u32> {
        self.find_named(id, self.named_slot(id))
    }

    /// [`Self::find`] given the slot `id` names (a hash, so worked out once per call).
    fn find_named(&self, id: &Uuid, named: u32) -> Option<u32> {
        let (chunk, at) = position(named);
        let in_named = self.chunks.get(chunk).and_then(|c| c.get(at));
        if in_named.is_some_and(|slot| slot.as_ref().is_some_and(|s| s.id == *id)) {
            return Some(named);
        }
        if self.others.is_empty() {
            return None;
        }
        self.others.get(id).copied()
    }

    /// The slot an id names: its first 32 bits, unmasked.
    fn named_slot(&self, id: &Uuid) -> u32 {
        let first = (id.as_u128() >> REST_BITS) as u32;
        first ^ self.mask(id)
    }

    /// `random` with its first 32 bits naming `slot`.
    fn naming(&self, random: Uuid, slot: u32) -> Uuid {
        let rest = random.as_u128() & REST_MASK;
        let first = slot ^ self.mask(&random);
        Uuid::from_u128(u128::from(first) << REST_BITS | rest)
    }

    /// The mask of the first 32 bits of `id`: a keyed hash of its other bits.
    fn mask(&self, id: &Uuid) -> u32 {
        // The low half of the 64-bit hash; SipHash's bits are equally good anywhere.
        MASK_KEY.hash_one((self.salt, id.as_u128() & REST_MASK)) as u32
    }

    /// The slot the next insert takes (as [`Self::place`] picks): the last freed, or a new
    /// one at the end.
    fn next_slot(&self) -> u32 {
        self.free.last().copied().unwrap_or_else(|| self.end_slot())
    }

    /// The slot after the last one held (free or not).
    fn end_slot(&self) -> u32 {
        let full = self.chunks.len().saturating_sub(1) * CHUNK_SLOTS;
        let last = self.chunks.last().map_or(0, Vec::len);
        u32::try_from(full + last).expect("fewer than 2^32 homes at one product")
    }

    fn occupied(&self, slot: u32) -> &Slot {
        let (chunk, at) = position(slot);
        self.chunks[chunk][at]
            .as_ref()
            .expect("a found slot is occupied")
    }

    fn occupied_mut(&mut self, slot: u32) -> &mut Slot {
        self.entry_mut(slot)
            .as_mut()
            .expect("a found slot is occupied")
    }

    fn entry_mut(&mut self, slot: u32) -> &mut Option<Slot> {
        let (chunk, at) = position(slot);
        &mut self.chunks[chunk][at]
    }

    /// A new slot at the end of the last chunk (or of a new one).
    fn push(&mut self, slot: Slot) -> u32 {
        let at = self.end_slot();
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK_SLOTS) {
            let capacity = if self.chunks.is_empty() {
                0
            } else {
                CHUNK_SLOTS
            };
            self.chunks.push(Vec::with_capacity(capacity));
        }
        self.chunks
            .last_mut()
            .expect("pushed above")
            .push(Some(slot));
        at
    }

    /// Nothing is homed here any more: frees the chunks (all slots are vacant), keeping a
    /// small first one for the next home.
    fn release(&mut self) {
        debug_assert!(self.chunks.iter().flatten().all(Option::is_none));
        debug_assert!(self.others.is_empty());
        if self.others.capacity() > 0 {
            self.others = GrowingMap::default();
        }
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

/// The key of every product's masks, drawn from the OS once.
static MASK_KEY: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// An id's bits after the 32 that name its slot.
const REST_BITS: u32 = 96;
const REST_MASK: u128 = (1 << REST_BITS) - 1;

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
    use std::collections::{HashMap, HashSet};

    fn home(units: u64) -> Home {
        Home {
            items: HomeItems::Own(units),
            status: ReservationStatus::Active,
            deadline: crate::actor::deadlines::Tick::at(tokio::time::Instant::now()),
            end_lsn: units,
            busy: false,
        }
    }

    fn slots_held(homes: &Homes) -> usize {
        homes.chunks.iter().map(Vec::len).sum()
    }

    /// Checks the invariant on `others`: exactly the ids not in the slot they name.
    fn check_others(homes: &Homes) -> Result<(), TestCaseError> {
        let mut outside = 0;
        for (at, slot) in homes.chunks.iter().flatten().enumerate() {
            let Some(slot) = slot else { continue };
            let at = u32::try_from(at).expect("small");
            if homes.named_slot(&slot.id) == at {
                prop_assert!(!homes.others.contains_key(&slot.id));
            } else {
                prop_assert_eq!(homes.others.get(&slot.id), Some(&at));
                outside += 1;
            }
        }
        prop_assert_eq!(homes.others.len(), outside);
        Ok(())
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A home for one of 32 ids chosen elsewhere (by a client, or before a restart).
        Insert(u8, u64),
        /// A home for an id made here by [`Homes::new_id`], with the home of one of the 32
        /// inserted between the two when there is one.
        InsertNew(u64, Option<u8>),
        /// These pick among the 32 ids and those made here so far.
        Remove(usize),
        Update(usize, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (any::<u8>(), any::<u64>()).prop_map(|(id, u)| Op::Insert(id % 32, u)),
            2 => (any::<u64>(), any::<Option<u8>>()).prop_map(|(u, between)| Op::InsertNew(u, between.map(|id| id % 32))),
            2 => any::<usize>().prop_map(Op::Remove),
            1 => (any::<usize>(), any::<u64>()).prop_map(|(id, u)| Op::Update(id, u)),
        ]
    }

    proptest! {
        /// The same answers as a map of homes, never more slots than homes held at once, and
        /// the ids made here found without the map.
        #[test]
        fn agrees_with_a_map(ops in prop::collection::vec(op(), 1..400)) {
            let mut homes = Homes::default();
            let mut model: HashMap<Uuid, u64> = HashMap::new();
            // Ids from elsewhere that name slots 0 to 4, several the same one, so that they
            // meet the slots of ids made here.
            let mut ids: Vec<Uuid> =
                (0..32u32).map(|n| homes.naming(Uuid::from_u128(n.into()), n % 5)).collect();
            let mut most_at_once = 0;
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Insert(id, units) => {
                        let id = ids[usize::from(id)];
                        let before = homes.insert(id, home(units)).map(|h| h.end_lsn);
                        prop_assert_eq!(before, model.insert(id, units));
                    }
                    Op::InsertNew(units, between) => {
                        let new = homes.new_id(Uuid::from_u128(n as u128 + 1_000));
                        let id = new.id;
                        prop_assert!(!model.contains_key(&id));
                        let mut moved = false;
                        if let Some(other) = between {
                            let other = ids[usize::from(other)];
                            moved = homes.insert(other, home(units)).is_none();
                            model.insert(other, units);
                        }
                        homes.insert_new(new, home(units));
                        // Unless another home took its slot first, a new id is in its slot.
                        prop_assert_eq!(homes.others.contains_key(&id), moved);
                        model.insert(id, units);
                        ids.push(id);
                    }
                    Op::Remove(pick) => {
                        let id = ids[pick % ids.len()];
                        let removed = homes.remove(&id).map(|h| h.end_lsn);
                        prop_assert_eq!(removed, model.remove(&id));
                    }
                    Op::Update(pick, units) => {
                        let id = ids[pick % ids.len()];
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
                for id in &ids {
                    prop_assert_eq!(homes.get(id).map(|h| h.end_lsn), model.get(id).copied());
                }
                let mut listed: Vec<(Uuid, u64)> =
                    homes.iter().map(|(id, h)| (*id, h.end_lsn)).collect();
                listed.sort_unstable();
                let mut expected: Vec<(Uuid, u64)> = model.iter().map(|(i, u)| (*i, *u)).collect();
                expected.sort_unstable();
                prop_assert_eq!(listed, expected);
                prop_assert!(slots_held(&homes) <= most_at_once);
                prop_assert_eq!(slots_held(&homes), homes.len() + homes.free.len());
                check_others(&homes)?;
            }
        }
    }

    #[test]
    fn a_new_id_is_a_v4_uuid_whose_first_bits_name_its_slot() {
        let mut homes = Homes::default();
        let random = Uuid::new_v4();
        let id = homes.new_id(random).id;
        assert_eq!(id.get_version_num(), 4);
        assert_eq!(id.as_bytes()[4..], random.as_bytes()[4..]);
        assert_eq!(homes.named_slot(&id), 0);
        homes.insert(id, home(1));
        let second = homes.new_id(random).id;
        assert_ne!(second, id);
        assert_eq!(homes.named_slot(&second), 1);
        assert!(homes.others.is_empty());
    }

    #[test]
    fn ids_say_nothing_of_their_slots() {
        let homes = Homes::default();
        let first = |id: Uuid| (id.as_u128() >> REST_BITS) as u32;
        // With a fixed mask, every id of slot 0 would begin alike, and each id of slot 0
        // xor one of slot 1 would give 1.
        let of_slot_0: HashSet<u32> = (0..100)
            .map(|_| first(homes.naming(Uuid::new_v4(), 0)))
            .collect();
        let xors: HashSet<u32> = (0..100)
            .map(|_| {
                let a = homes.naming(Uuid::new_v4(), 0);
                let b = homes.naming(Uuid::new_v4(), 1);
                first(a) ^ first(b)
            })
            .collect();
        // 100 random 32-bit values repeat with odds of about one in a million.
        assert!(of_slot_0.len() >= 99, "{} distinct", of_slot_0.len());
        assert!(xors.len() >= 99, "{} distinct", xors.len());
        // The mask is salted per product: the same random bits, another product, another id.
        let random = Uuid::new_v4();
        assert_ne!(homes.naming(random, 0), Homes::default().naming(random, 0));
    }

    /// The pattern of tests/engine.rs's `reservations_whose_slots_were_reused_each_answer_as_themselves`,
    /// whose ids cannot show it: rounds of 50 new holds, 40 of each round removed.
    #[test]
    fn later_ids_take_the_slots_of_removed_ones() {
        let mut homes = Homes::default();
        let (mut freed, mut reused) = (HashSet::new(), 0);
        for _ in 0..6 {
            let mut ids = Vec::new();
            for _ in 0..50 {
                let new = homes.new_id(Uuid::new_v4());
                let (id, slot) = (new.id, homes.named_slot(&new.id));
                reused += usize::from(freed.remove(&slot));
                homes.insert_new(new, home(1));
                assert_eq!(homes.find(&id), Some(slot));
                ids.push(id);
            }
            for id in &ids[10..] {
                freed.insert(homes.find(id).expect("held"));
                homes.remove(id);
            }
        }
        assert_eq!(reused, 5 * 40);
        assert_eq!(slots_held(&homes), 50 + 5 * 10);
        assert!(homes.others.is_empty());
    }

    #[test]
    fn a_new_id_equal_to_one_in_the_map_is_drawn_again() {
        let mut homes = Homes::default();
        // Slot 0 holds an id naming slot 1; the id new_id would make from the same random
        // bits for slot 1 is then taken.
        let taken = homes.naming(Uuid::from_u128(7), 1);
        homes.insert(taken, home(1));
        assert_eq!(homes.others.get(&taken), Some(&0));
        let id = homes.new_id(Uuid::from_u128(7)).id;
        assert_ne!(id, taken);
        assert_eq!(homes.named_slot(&id), 1);
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
        assert_eq!(homes.others.capacity(), 0, "the map of others is freed too");
    }
}
