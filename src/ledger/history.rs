//! One product's history entries, in order, addressed by index (`seq - 1`).
//!
//! Why not a `Vec`: a hot product gathers millions of entries, and a doubling vector copies
//! them all at each doubling into freshly faulted-in memory and keeps up to half its capacity
//! unused. Here the first `CHUNK_ENTRIES` entries are a small vector that grows as needed
//! (most products never fill it), and every later entry goes into chunks of `CHUNK_ENTRIES`
//! allocated whole, which never move.

use super::HistoryEntry;

const CHUNK_ENTRIES: usize = 1024;
/// Below this, grow by one entry at a time (most products have one or two).
const SMALL_ENTRIES: usize = 8;

#[derive(Debug, Clone, Default)]
pub(super) struct History {
    head: Vec<HistoryEntry>,
    /// Full chunks, then the one filling up. Boxed: most products never have one, and a
    /// catalog of a million products pays 8 bytes each for this field, not 24.
    #[allow(clippy::box_collection)]
    tail: Option<Box<Vec<Vec<HistoryEntry>>>>,
}

impl History {
    pub(super) fn len(&self) -> usize {
        match self
            .tail
            .as_deref()
            .and_then(|t| t.last().map(|last| (t.len(), last.len())))
        {
            None => self.head.len(),
            Some((chunks, last)) => CHUNK_ENTRIES * chunks + last,
        }
    }

    pub(super) fn push(&mut self, entry: HistoryEntry) {
        if self.head.len() < CHUNK_ENTRIES {
            if self.head.len() == self.head.capacity() && self.head.len() < SMALL_ENTRIES {
                self.head.reserve_exact(1);
            }
            self.head.push(entry);
            return;
        }
        let tail = self.tail.get_or_insert_with(Box::default);
        if tail.last().is_none_or(|c| c.len() == CHUNK_ENTRIES) {
            tail.push(Vec::with_capacity(CHUNK_ENTRIES));
        }
        let chunk = tail.last_mut().expect("pushed above");
        chunk.push(entry);
        debug_assert!(chunk.len() <= CHUNK_ENTRIES && chunk.capacity() == CHUNK_ENTRIES);
    }

    pub(super) fn get(&self, index: usize) -> &HistoryEntry {
        if index < CHUNK_ENTRIES {
            return &self.head[index];
        }
        let index = index - CHUNK_ENTRIES;
        let tail = self
            .tail
            .as_deref()
            .expect("an index past the head has a tail");
        &tail[index / CHUNK_ENTRIES][index % CHUNK_ENTRIES]
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
