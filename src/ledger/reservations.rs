//! Every reservation ever made, by id: an id → slot index map over an [`Arena`].
//!
//! Why not one `HashMap<Uuid, Reservation>`: the map doubles as it grows and each doubling
//! moves every entry into freshly faulted-in memory, which dominated replay time. Here the
//! map's entries are 20 bytes and a reservation is written once into a chunk that never moves.
//! The index is sharded ([`ShardedMap`]): it is written by the log writer between an fsync and
//! its acknowledgements, where moving the whole index at once would hold up every reply.
//!
//! In front of the index sits a small direct-mapped table of recent reservations. A hold
//! usually ends (completed, released) soon after it was made, a few thousand records later
//! at most in a busy sale, while the index of millions of ids is far out of the CPU's caches:
//! in a 10M-record replay the lookup of a completed reservation's index entry was the single
//! largest cost (a quarter of applying). The recent table (160 KiB) stays cached. An entry is
//! only ever a copy of the index's (slots never change), so a miss just asks the index.
//!
//! New ids are indexed a batch ahead ([`Reservations::index_ahead`]): the ledger enters the
//! ids of a batch's reservations in one tight loop before it applies the batch. Each entry
//! lands in a part of the index long out of the caches; interleaved with the rest of applying,
//! every one of those misses was waited for alone (two per id: the control bytes and the
//! entry), while in a loop of nothing else the CPU has several under way at once. Verifying a
//! 10M-record log, runs alternating with the build before: 3.35-4.49 s before, 2.76-3.83 s.

use uuid::Uuid;

use crate::memory::ShardedMap;

use super::arena::Arena;
use super::Reservation;

/// Entries of the recent table: a power of two. With ~500 new reservations between a hold
/// and its end, 8,192 entries keep ~94% of them (each new one overwrites a random entry).
const RECENT_LEN: usize = 8192;
/// Marks an entry of the recent table that holds nothing yet.
const NO_SLOT: u32 = u32::MAX;

#[derive(Debug)]
pub struct Reservations {
    index: ShardedMap<u32>,
    arena: Arena<Reservation>,
    /// Recently inserted (id, slot) pairs, at [`recent_at`] of the id.
    recent: Box<[(Uuid, u32)]>,
    /// Ids indexed ahead of their reservation: the next this many inserts are already in
    /// the index, at the slots they will take.
    indexed_ahead: u32,
}

impl Default for Reservations {
    fn default() -> Self {
        Reservations {
            index: ShardedMap::default(),
            arena: Arena::default(),
            recent: vec![(Uuid::nil(), NO_SLOT); RECENT_LEN].into_boxed_slice(),
            indexed_ahead: 0,
        }
    }
}

/// Where an id sits in the recent table. Mixes all 16 bytes: client-chosen ids may vary in
/// any of them. Ids that collide only miss the table, never get a wrong answer.
fn recent_at(id: &Uuid) -> usize {
    let (high, low) = id.as_u64_pair();
    let mixed = (high ^ low).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> (64 - RECENT_LEN.trailing_zeros())) as usize
}

impl Reservations {
    /// Whether `id` may be inserted next: an id indexed ahead is the next insert's and was
    /// checked then; any other must be unknown.
    pub fn is_new(&self, id: &Uuid) -> bool {
        if self.indexed_ahead > 0 {
            debug_assert_eq!(
                self.index.get(id).map(|&slot| slot as usize),
                Some(self.arena.len()),
                "the id indexed ahead next is the one inserted next"
            );
            return true;
        }
        !self.index.contains_key(id)
    }

    /// Indexes `id` at the slot of the next insert not yet indexed. `false`, and nothing
    /// done, if the id is known already (that insert will be refused when it comes). The
    /// inserts must then come in the same order, before anything else is indexed ahead.
    pub fn index_ahead(&mut self, id: Uuid) -> bool {
        let slot = self.arena.len() + self.indexed_ahead as usize;
        let slot = u32::try_from(slot).expect("fewer than 2^32 reservations in memory");
        let fresh = self.index.try_insert(id, slot);
        if fresh {
            self.indexed_ahead += 1;
        }
        fresh
    }

    /// Ids indexed ahead whose reservation is not in yet: zero between batches.
    pub fn indexed_ahead(&self) -> u32 {
        self.indexed_ahead
    }

    /// Adds a reservation not yet known (the caller checked with [`Reservations::is_new`]).
    pub fn insert(&mut self, id: Uuid, reservation: Reservation) {
        let slot = self.arena.push(reservation);
        if self.indexed_ahead > 0 {
            self.indexed_ahead -= 1;
            debug_assert_eq!(self.index.get(&id), Some(&slot), "inserted out of order");
        } else {
            let fresh = self.index.try_insert(id, slot);
            assert!(fresh, "reservation {id} inserted twice");
        }
        self.recent[recent_at(&id)] = (id, slot);
    }

    /// The slot of `id`: from the recent table if it is there, else from the index. An id
    /// indexed ahead but not inserted yet is not there.
    fn slot(&self, id: &Uuid) -> Option<u32> {
        let (recent_id, slot) = self.recent[recent_at(id)];
        if slot != NO_SLOT && recent_id == *id {
            debug_assert_eq!(self.index.get(id), Some(&slot));
            return Some(slot);
        }
        let slot = *self.index.get(id)?;
        ((slot as usize) < self.arena.len()).then_some(slot)
    }

    pub fn get(&self, id: &Uuid) -> Option<&Reservation> {
        self.slot(id).map(|slot| self.arena.get(slot))
    }

    pub fn get_mut(&mut self, id: &Uuid) -> Option<&mut Reservation> {
        let slot = self.slot(id)?;
        Some(self.arena.get_mut(slot))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Uuid, &Reservation)> + '_ {
        assert_eq!(self.indexed_ahead, 0, "read between the batches only");
        self.index
            .iter()
            .map(|(id, &slot)| (id, self.arena.get(slot)))
    }

    pub fn values(&self) -> impl Iterator<Item = &Reservation> + '_ {
        self.arena.iter()
    }
}

#[cfg(test)]
mod tests {
    use smallvec::SmallVec;

    use super::*;
    use crate::domain::ReservationStatus;

    fn reservation(created_at_ms: i64) -> Reservation {
        Reservation {
            items: SmallVec::new(),
            status: ReservationStatus::Active,
            reacquired: false,
            fingerprint: 0,
            created_at_ms,
            expires_at_ms: 0,
            original_expires_at_ms: 0,
            sold: SmallVec::new(),
            text: None,
        }
    }

    #[test]
    fn every_id_finds_its_own_reservation_past_the_recent_table() {
        // More ids than the recent table has entries, so many share an entry and most have
        // been pushed out of it: each must still find its own reservation. Sequential ids, as
        // a client might choose, and random ones.
        let ids: Vec<Uuid> = (0..3 * RECENT_LEN as u128)
            .map(Uuid::from_u128)
            .chain((0..RECENT_LEN).map(|_| Uuid::new_v4()))
            .collect();
        let mut reservations = Reservations::default();
        for (i, id) in ids.iter().enumerate() {
            reservations.insert(*id, reservation(i as i64));
            // The one just made, and one made long before.
            assert_eq!(
                reservations.get(id).map(|r| r.created_at_ms),
                Some(i as i64)
            );
            let early = i / 7;
            assert_eq!(
                reservations.get(&ids[early]).map(|r| r.created_at_ms),
                Some(early as i64)
            );
        }
        for (i, id) in ids.iter().enumerate() {
            let r = reservations.get_mut(id).expect("inserted");
            assert_eq!(r.created_at_ms, i as i64);
            r.expires_at_ms = -(i as i64);
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                reservations.get(id).map(|r| r.expires_at_ms),
                Some(-(i as i64))
            );
        }
        assert!(reservations.get(&Uuid::from_u128(u128::MAX)).is_none());
        assert!(reservations.is_new(&Uuid::from_u128(u128::MAX)));
        assert!(!reservations.is_new(&ids[0]));
    }

    #[test]
    fn ids_indexed_ahead_are_found_only_once_inserted() {
        let mut reservations = Reservations::default();
        let known = Uuid::from_u128(1);
        reservations.insert(known, reservation(1));
        let ahead: Vec<Uuid> = (10..13).map(Uuid::from_u128).collect();
        for id in &ahead {
            assert!(reservations.index_ahead(*id));
        }
        // Known already, or indexed ahead already: refused, nothing changes.
        assert!(!reservations.index_ahead(known));
        assert!(!reservations.index_ahead(ahead[1]));
        assert_eq!(reservations.indexed_ahead(), 3);
        // Not there before its insert, even though the index has it.
        assert!(reservations.get(&ahead[0]).is_none());
        for (i, id) in ahead.iter().enumerate() {
            assert!(reservations.is_new(id));
            reservations.insert(*id, reservation(20 + i as i64));
            assert_eq!(
                reservations.get(id).map(|r| r.created_at_ms),
                Some(20 + i as i64)
            );
        }
        assert_eq!(reservations.indexed_ahead(), 0);
        assert!(!reservations.is_new(&ahead[2]));
        assert_eq!(reservations.iter().count(), 4);
        assert_eq!(reservations.get(&known).map(|r| r.created_at_ms), Some(1));
    }
}
