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
//! first `CHUNK_ENTRIES` slots are a small vector that grows as needed (most products never
//! fill it), and every later slot goes into an [`Arena`] of chunks that never move.

use super::arena::Arena;

const CHUNK_ENTRIES: usize = 1024;

#[derive(Debug, Clone, Default)]
pub(super) struct History {
    head: Vec<u32>,
    /// The slots after the head. Boxed: most products never have one, and a catalog of a
    /// million products pays 8 bytes each for this field, not 32.
    tail: Option<Box<Arena<u32, CHUNK_ENTRIES>>>,
}

impl History {
    pub(super) fn len(&self) -> usize {
        self.head.len() + self.tail.as_ref().map_or(0, |t| t.len())
    }

    /// Appends the slot of the product's newest entry.
    pub(super) fn push(&mut self, slot: u32) {
        if self.head.len() < CHUNK_ENTRIES {
            self.head.push(slot);
            return;
        }
        self.tail.get_or_insert_with(Box::default).push(slot);
    }

    /// The slot of the entry at `index`.
    pub(super) fn get(&self, index: usize) -> u32 {
        if index < CHUNK_ENTRIES {
            return self.head[index];
        }
        let tail = self
            .tail
            .as_deref()
            .expect("an index past the head has a tail");
        let at = u32::try_from(index - CHUNK_ENTRIES).expect("fewer than 2^32 entries");
        *tail.get(at)
    }

    pub(super) fn last(&self) -> Option<u32> {
        self.len().checked_sub(1).map(|i| self.get(i))
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
