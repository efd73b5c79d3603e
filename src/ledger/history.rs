//! One product's history: the slots of its entries, in order, addressed by index (`seq - 1`).
//!
//! The entries themselves live in one arena for the whole ledger, in log order
//! ([`super::Ledger`]), and a product keeps only their 4-byte slots. Why: with entries stored
//! per product, applying a record wrote into as many places as there were busy products, each
//! a cache line of its own that had left the caches since that product's last entry (a page
//! zeroed by the kernel 70-odd entries of that product earlier); in a 10M-record replay over
//! 1,000 products those stores were a tenth of the time. In log order every entry goes right
//! after the previous one, and a product's slots fill a line per 16 entries.
//!
//! Why not a `Vec` for the slots: a hot product gathers millions of entries, and a doubling
//! vector copies them all at each doubling and keeps up to half its capacity unused. Here the
//! slots go in chunks of `CHUNK_ENTRIES` that never move: the one being filled sits in the
//! product itself (the first grows as needed: most products never fill it), the full ones in a
//! list beside it. Appending touches only the product and the end of its chunk. (It went
//! through a boxed arena of chunks before: three more dependent loads per entry, each likely a
//! cache miss with a thousand busy products; a 10M-record replay is ~4% faster without them.)

const CHUNK_ENTRIES: usize = 1024;

#[derive(Debug, Clone, Default)]
pub(super) struct History {
    /// The chunk being filled: slots from `full.len() * CHUNK_ENTRIES` on. Never empty after
    /// the first push (a full chunk is set aside only when the next slot comes).
    current: Vec<u32>,
    /// The full chunks before it, in order. Boxed: most products never fill one, and a
    /// catalog of a million products pays 8 bytes each for this field, not 24.
    #[allow(clippy::box_collection)] // the box is the point: see above
    full: Option<Box<Vec<Box<[u32]>>>>,
}

// Every product has one, so its size is a catalog's memory: a vector and one pointer.
const _: () = assert!(std::mem::size_of::<History>() == 32);

impl History {
    fn full_chunks(&self) -> usize {
        self.full.as_ref().map_or(0, |f| f.len())
    }

    pub(super) fn len(&self) -> usize {
        self.full_chunks() * CHUNK_ENTRIES + self.current.len()
    }

    /// Appends the slot of the product's newest entry.
    pub(super) fn push(&mut self, slot: u32) {
        if self.current.len() == CHUNK_ENTRIES {
            let chunk = std::mem::replace(&mut self.current, Vec::with_capacity(CHUNK_ENTRIES));
            self.full
                .get_or_insert_with(Box::default)
                .push(chunk.into_boxed_slice());
        }
        self.current.push(slot);
        debug_assert!(self.current.len() <= CHUNK_ENTRIES);
    }

    /// The slot of the entry at `index` (< [`History::len`]).
    pub(super) fn get(&self, index: usize) -> u32 {
        let (chunk, at) = (index / CHUNK_ENTRIES, index % CHUNK_ENTRIES);
        if chunk == self.full_chunks() {
            return self.current[at];
        }
        let full = self
            .full
            .as_deref()
            .expect("an index past the current chunk");
        full[chunk][at]
    }

    pub(super) fn last(&self) -> Option<u32> {
        self.current.last().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_their_index_across_chunks() {
        let mut h = History::default();
        assert!(h.last().is_none());
        let n = 3 * CHUNK_ENTRIES + 5;
        // Slots of a shared arena: not the index, and not in any simple relation to it.
        let slot = |i: usize| (i * 7 + 3) as u32;
        for i in 0..n {
            h.push(slot(i));
            assert_eq!(h.len(), i + 1);
            assert_eq!(h.last(), Some(slot(i)));
        }
        for i in 0..n {
            assert_eq!(h.get(i), slot(i));
        }
    }
}
