//! Every reservation ever made, by id: an id → slot index map over an arena of fixed-size
//! chunks.
//!
//! Why not one `HashMap<Uuid, Reservation>`: the map doubles as it grows and each doubling
//! moves every entry into freshly faulted-in memory, which dominated replay time. Here the
//! map's entries are 20 bytes and a reservation is written once into a chunk that never moves.
//! The index is sharded ([`ShardedMap`]): it is written by the log writer between an fsync and
//! its acknowledgements, where moving the whole index at once would hold up every reply.

use uuid::Uuid;

use crate::memory::ShardedMap;

use super::Reservation;

/// Reservations per chunk: big enough that the chunk list stays short.
const CHUNK_LEN: usize = 4096;

#[derive(Debug, Default)]
pub struct Reservations {
    index: ShardedMap<u32>,
    chunks: Vec<Vec<Reservation>>,
    len: usize,
}

impl Reservations {
    pub fn contains_key(&self, id: &Uuid) -> bool {
        self.index.contains_key(id)
    }

    /// Adds a reservation not yet known (the caller checked).
    pub fn insert(&mut self, id: Uuid, reservation: Reservation) {
        let slot = u32::try_from(self.len).expect("fewer than 2^32 reservations in memory");
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK_LEN) {
            self.chunks.push(Vec::with_capacity(CHUNK_LEN));
        }
        let chunk = self.chunks.last_mut().expect("pushed above");
        chunk.push(reservation);
        self.len += 1;
        let previous = self.index.insert(id, slot);
        assert!(previous.is_none(), "reservation {id} inserted twice");
    }

    fn at(&self, slot: u32) -> &Reservation {
        let slot = slot as usize;
        &self.chunks[slot / CHUNK_LEN][slot % CHUNK_LEN]
    }

    pub fn get(&self, id: &Uuid) -> Option<&Reservation> {
        self.index.get(id).map(|&slot| self.at(slot))
    }

    pub fn get_mut(&mut self, id: &Uuid) -> Option<&mut Reservation> {
        let slot = *self.index.get(id)? as usize;
        Some(&mut self.chunks[slot / CHUNK_LEN][slot % CHUNK_LEN])
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Uuid, &Reservation)> + '_ {
        self.index.iter().map(|(id, &slot)| (id, self.at(slot)))
    }

    pub fn values(&self) -> impl Iterator<Item = &Reservation> + '_ {
        self.chunks.iter().flatten()
    }
}
