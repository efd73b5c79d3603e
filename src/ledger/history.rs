//! One product's history entries, in order, addressed by index (`seq - 1`).
//!
//! Why not a `Vec`: a hot product gathers millions of entries, and a doubling vector copies
//! them all at each doubling into freshly faulted-in memory and keeps up to half its capacity
//! unused. Here the first `CHUNK_ENTRIES` entries are a small vector that grows as needed
//! (most products never fill it), and every later entry goes into an [`Arena`] of chunks of
//! `CHUNK_ENTRIES`, allocated whole, which never move.

use super::arena::Arena;
use super::HistoryEntry;

const CHUNK_ENTRIES: usize = 1024;
/// Below this, grow by one entry at a time (most products have one or two).
const SMALL_ENTRIES: usize = 8;

#[derive(Debug, Clone, Default)]
pub(super) struct History {
    head: Vec<HistoryEntry>,
    /// The entries after the head. Boxed: most products never have one, and a catalog of a
    /// million products pays 8 bytes each for this field, not 32.
    tail: Option<Box<Arena<HistoryEntry, CHUNK_ENTRIES>>>,
}

impl History {
    pub(super) fn len(&self) -> usize {
        self.head.len() + self.tail.as_ref().map_or(0, |t| t.len())
    }

    pub(super) fn push(&mut self, entry: HistoryEntry) {
        if self.head.len() < CHUNK_ENTRIES {
            if self.head.len() == self.head.capacity() && self.head.len() < SMALL_ENTRIES {
                self.head.reserve_exact(1);
            }
            self.head.push(entry);
            return;
        }
        self.tail.get_or_insert_with(Box::default).push(entry);
    }

    pub(super) fn get(&self, index: usize) -> &HistoryEntry {
        if index < CHUNK_ENTRIES {
            return &self.head[index];
        }
        let tail = self
            .tail
            .as_deref()
            .expect("an index past the head has a tail");
        let slot = u32::try_from(index - CHUNK_ENTRIES).expect("fewer than 2^32 entries");
        tail.get(slot)
    }

    pub(super) fn last(&self) -> Option<&HistoryEntry> {
        self.len().checked_sub(1).map(|i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> HistoryEntry {
        HistoryEntry {
            at_ms: n as i64,
            on_hand: n,
            reserved: 0,
            detail: None,
            reservation_id: None,
            actor: 0,
            action: super::super::Action::Restock,
            marker: super::super::Marker::None,
        }
    }

    #[test]
    fn entries_keep_their_index_across_chunks() {
        let mut h = History::default();
        assert!(h.last().is_none());
        let n = 3 * CHUNK_ENTRIES + 5;
        for i in 0..n {
            h.push(entry(i as u64));
            assert_eq!(h.len(), i + 1);
            assert_eq!(h.last().map(|e| e.on_hand), Some(i as u64));
        }
        for i in 0..n {
            assert_eq!(h.get(i).on_hand, i as u64);
        }
    }
}
