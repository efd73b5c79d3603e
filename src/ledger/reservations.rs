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
//! On the log writer, new ids are indexed a batch ahead ([`Reservations::index_ahead`]): the
//! ledger enters the ids of a batch's reservations in one tight loop before it applies the
//! batch. Each entry lands in a part of the index long out of the caches; interleaved with the
//! rest of applying, every one of those misses was waited for alone (two per id: the control
//! bytes and the entry), while in a loop of nothing else the CPU has several under way at once.
//! That was measured in replay, which used it until replay got its own way (below): `verify`
//! of the 10M-record log 3.35-4.49 s before, 2.76-3.83 s after. The writer's batches are
//! smaller (17-60 records per fsync in the benchmarks), so there it gains less; not measured
//! on its own.
//!
//! Replay does not insert ids one by one at all: [`ReplayIndex`] collects them on the reading
//! thread and builds the index once the log is read, a shard at a time in the caches, and the
//! ledger adopts it. Verifying a 10M-record log, 5 runs alternating with the build before:
//! median 4.56 s before (3.54-6.08), 3.23 s after (2.64-3.74), faster in all 5.

use uuid::Uuid;

use crate::domain::ReleaseReason;
use crate::memory::{ShardedMap, ShardedMapBuilder};
use crate::wal::record::{EventRef, RecordRef};

use super::arena::Arena;
use super::Reservation;

/// Entries of the recent table: a power of two. With ~500 new reservations between a hold
/// and its end, 8,192 entries keep ~94% of them (each new one overwrites a random entry).
const RECENT_LEN: usize = 8192;
/// Marks an entry of the recent table that holds nothing yet.
const NO_SLOT: u32 = u32::MAX;

/// Where an id sits in the recent table. Mixes all 16 bytes: client-chosen ids may vary in
/// any of them. Ids that collide only miss the table, never get a wrong answer.
fn recent_at(id: &Uuid) -> usize {
    let (high, low) = id.as_u64_pair();
    let mixed = (high ^ low).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> (64 - RECENT_LEN.trailing_zeros())) as usize
}

/// The index itself: id → slot, with the recent table in front. Filled by [`Reservations`]
/// as records are applied, or built by [`ReplayIndex`] at the end of a replay.
#[derive(Debug)]
pub struct Index {
    map: ShardedMap<u32>,
    /// Recently inserted (id, slot) pairs, at [`recent_at`] of the id.
    recent: Box<[(Uuid, u32)]>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            map: ShardedMap::default(),
            recent: vec![(Uuid::nil(), NO_SLOT); RECENT_LEN].into_boxed_slice(),
        }
    }
}

impl Index {
    /// The slot of `id`: from the recent table if it is there, else from the map.
    fn slot(&self, id: &Uuid) -> Option<u32> {
        let (recent_id, slot) = self.recent[recent_at(id)];
        if slot != NO_SLOT && recent_id == *id {
            debug_assert_eq!(self.map.get(id), Some(&slot));
            return Some(slot);
        }
        self.map.get(id).copied()
    }

    fn remember(&mut self, id: Uuid, slot: u32) {
        self.recent[recent_at(&id)] = (id, slot);
    }
}

#[derive(Debug, Default)]
pub struct Reservations {
    index: Index,
    arena: Arena<Reservation>,
    /// Each reservation's id, at the same slot: history entries keep the 4-byte slot and
    /// find the id here when shown.
    ids: Arena<Uuid>,
    /// Ids indexed ahead of their reservation: the next this many inserts are already in
    /// the index, at the slots they will take.
    indexed_ahead: u32,
}

/// The reservation index of a replay, built on its reading thread
/// ([`replay_batches`](crate::wal::replay::replay_batches)) ahead of the applying thread,
/// which was the slower one. In a sound log every `Reserved` record makes the next
/// reservation, so the n-th id made gets slot n, and each record that ends or extends a
/// reservation names one that is still active or expired (a hold that expired may still be
/// completed): `live` holds those, a small map that stays in the caches. Every id made goes
/// to `made_ids`, which becomes the full index at the end
/// ([`ShardedMapBuilder`] says why that is cheaper). The applying thread finds each
/// record's reservation at the slot given ([`Located`]) and takes the index over at the end
/// ([`Reservations::adopt`]).
#[derive(Default)]
pub struct ReplayIndex {
    made_ids: ShardedMapBuilder<u32>,
    live: foldhash::HashMap<Uuid, u32>,
    /// Reservations made so far: the slot of the next.
    made: u32,
}

/// What [`ReplayIndex::locate`] found for a record: its reservation's slot, or
/// [`Located::NONE`] for an id made twice, an id not made yet or already ended, or a record
/// that names no reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located(u32);

impl Located {
    pub const NONE: Located = Located(NO_SLOT);

    pub fn slot(self) -> Option<u32> {
        (self != Located::NONE).then_some(self.0)
    }
}

/// An id that two `Reserved` records made, found only when the index was built: the slot of
/// the later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MadeTwice {
    pub id: Uuid,
    pub slot: u32,
}

impl ReplayIndex {
    /// For a `Reserved` record, the slot its reservation takes; for one that completes,
    /// releases or extends a reservation, that reservation's slot.
    pub fn locate(&mut self, record: &RecordRef<'_>) -> Located {
        let found = match record.event {
            EventRef::Reserved { .. } => {
                let slot = self.made;
                if slot == NO_SLOT {
                    return Located::NONE;
                }
                match self.live.entry(record.op_id) {
                    std::collections::hash_map::Entry::Occupied(_) => return Located::NONE,
                    std::collections::hash_map::Entry::Vacant(entry) => entry.insert(slot),
                };
                self.made_ids.push(record.op_id, slot);
                self.made += 1;
                Some(slot)
            }
            // Ended for good: nothing can name it again.
            EventRef::Completed { reservation_id, .. }
            | EventRef::Released {
                reservation_id,
                reason: ReleaseReason::Cancelled | ReleaseReason::Aborted,
                ..
            } => self.live.remove(&reservation_id),
            EventRef::Released {
                reservation_id,
                reason: ReleaseReason::Expired,
                ..
            }
            | EventRef::Extended { reservation_id, .. } => self.live.get(&reservation_id).copied(),
            _ => None,
        };
        found.map_or(Located::NONE, Located)
    }

    /// The index of every reservation made, and how many were. `Err` names an id made twice
    /// (the first such record in the log), which a sound log never has.
    pub fn finish(self) -> Result<(Index, u32), MadeTwice> {
        match self.made_ids.build() {
            Ok(map) => Ok((
                Index {
                    map,
                    ..Index::default()
                },
                self.made,
            )),
            Err(twice) => {
                let (id, slot) = twice
                    .into_iter()
                    .min_by_key(|&(_, slot)| slot)
                    .expect("an error names at least one id");
                Err(MadeTwice { id, slot })
            }
        }
    }
}

impl Reservations {
    /// Whether `id` may be inserted next: an id indexed ahead is the next insert's and was
    /// checked then; any other must be unknown.
    pub fn is_new(&self, id: &Uuid) -> bool {
        if self.indexed_ahead > 0 {
            debug_assert_eq!(
                self.index.map.get(id).map(|&slot| slot as usize),
                Some(self.arena.len()),
                "the id indexed ahead next is the one inserted next"
            );
            return true;
        }
        !self.index.map.contains_key(id)
    }

    /// Indexes `id` at the slot of the next insert not yet indexed. `false`, and nothing
    /// done, if the id is known already (that insert will be refused when it comes). The
    /// inserts must then come in the same order, before anything else is indexed ahead.
    pub fn index_ahead(&mut self, id: Uuid) -> bool {
        let slot = self.arena.len() + self.indexed_ahead as usize;
        let slot = u32::try_from(slot).expect("fewer than 2^32 reservations in memory");
        let fresh = self.index.map.try_insert(id, slot);
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
        self.ids.push(id);
        if self.indexed_ahead > 0 {
            self.indexed_ahead -= 1;
            debug_assert_eq!(
                self.index.map.get(&id),
                Some(&slot),
                "inserted out of order"
            );
        } else {
            let fresh = self.index.map.try_insert(id, slot);
            assert!(fresh, "reservation {id} inserted twice");
        }
        self.index.remember(id, slot);
    }

    /// Adds reservation `id`, which replay's index put at `slot`: the next one.
    pub fn insert_located(&mut self, slot: u32, id: Uuid, reservation: Reservation) {
        let pushed = self.arena.push(reservation);
        assert_eq!(
            pushed, slot,
            "replay's reservations are made in the order indexed"
        );
        self.ids.push(id);
    }

    /// The slot the next reservation inserted takes.
    pub fn next_slot(&self) -> u32 {
        u32::try_from(self.arena.len()).expect("fewer than 2^32 reservations in memory")
    }

    /// The id of the reservation at `slot` (one handed out by an insert).
    pub fn id_at(&self, slot: u32) -> Uuid {
        *self.ids.get(slot)
    }

    /// Reservation `id` and its slot: at the slot replay's index gave, if it gave one
    /// (`None` for [`Located::NONE`]), else looked up.
    pub fn find_mut(
        &mut self,
        id: &Uuid,
        located: Option<Located>,
    ) -> Option<(u32, &mut Reservation)> {
        let slot = match located {
            Some(located) => located
                .slot()
                .filter(|&slot| (slot as usize) < self.arena.len())?,
            None => self.slot(id)?,
        };
        debug_assert!(located.is_none() || self.id_at(slot) == *id);
        Some((slot, self.arena.get_mut(slot)))
    }

    /// Takes over the index replay built ([`ReplayIndex::finish`]) for the `made`
    /// reservations inserted since ([`Reservations::insert_located`]): from now on ids are
    /// found through it.
    pub fn adopt(&mut self, index: Index, made: u32) {
        assert!(
            self.index.map.is_empty() && self.indexed_ahead == 0,
            "replay's index is adopted by a ledger that has indexed nothing itself"
        );
        assert_eq!(
            made as usize,
            self.arena.len(),
            "every reservation replay indexed was inserted"
        );
        self.index = index;
    }

    /// The slot of `id`. An id indexed ahead but not inserted yet is not there.
    fn slot(&self, id: &Uuid) -> Option<u32> {
        let slot = self.index.slot(id)?;
        ((slot as usize) < self.arena.len()).then_some(slot)
    }

    pub fn get(&self, id: &Uuid) -> Option<&Reservation> {
        self.slot(id).map(|slot| self.arena.get(slot))
    }

    /// In the order made. Walks the ids beside the reservations, both in slot order: a walk
    /// of the index instead would visit the reservations in hash order, a cache miss each
    /// (start-up walks all of them once).
    pub fn iter(&self) -> impl Iterator<Item = (&Uuid, &Reservation)> + '_ {
        debug_assert_eq!(self.ids.len(), self.arena.len());
        self.ids.iter().zip(self.arena.iter())
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
            sold_less: None,
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
            let (slot, r) = reservations.find_mut(id, None).expect("inserted");
            assert_eq!(slot, i as u32);
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
