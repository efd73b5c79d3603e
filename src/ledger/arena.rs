//! Append-only storage addressed by a `u32` slot, in fixed-size chunks that never move.
//!
//! Why not a `Vec`: the ledger's tables grow to millions of entries, on the log writer's
//! thread between an fsync and its acknowledgements and throughout replay. A doubling vector
//! copies everything into freshly faulted-in memory at each doubling (a stall for every
//! waiting reply, and the largest cost of replay when reservations lived in a growing map)
//! and keeps up to half its capacity unused. Entries are never removed.

/// Entries per chunk unless the user says otherwise: big enough that the chunk list of a
/// table of millions stays short.
const CHUNK_LEN: usize = 4096;

/// Chunks of `CHUNK` entries each, allocated whole.
#[derive(Debug, Clone)]
pub(super) struct Arena<T, const CHUNK: usize = CHUNK_LEN> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T, const CHUNK: usize> Default for Arena<T, CHUNK> {
    fn default() -> Self {
        Arena {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T, const CHUNK: usize> Arena<T, CHUNK> {
    /// Stores `value` and returns its slot.
    pub(super) fn push(&mut self, value: T) -> u32 {
        let slot = u32::try_from(self.len).expect("fewer than 2^32 entries in memory");
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let chunk = self.chunks.last_mut().expect("pushed above");
        chunk.push(value);
        debug_assert!(chunk.len() <= CHUNK && chunk.capacity() == CHUNK);
        self.len += 1;
        slot
    }

    /// Panics on a slot never handed out: slots come only from [`Arena::push`].
    pub(super) fn get(&self, slot: u32) -> &T {
        let slot = slot as usize;
        &self.chunks[slot / CHUNK][slot % CHUNK]
    }

    pub(super) fn get_mut(&mut self, slot: u32) -> &mut T {
        let slot = slot as usize;
        &mut self.chunks[slot / CHUNK][slot % CHUNK]
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// In the order pushed.
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.chunks.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_address_what_was_pushed_across_chunks() {
        let mut arena: Arena<usize> = Arena::default();
        let count = 3 * CHUNK_LEN + 5;
        for i in 0..count {
            assert_eq!(arena.push(i * 2), i as u32);
        }
        assert_eq!(arena.len(), count);
        assert_eq!(*arena.get(CHUNK_LEN as u32), CHUNK_LEN * 2);
        *arena.get_mut(7) = 1;
        assert_eq!(*arena.get(7), 1);
        assert_eq!(arena.iter().count(), count);
        assert_eq!(arena.iter().last(), Some(&((count - 1) * 2)));
    }
}
