//! The deadlines of the active reservations homed at one product, earliest first.
//!
//! Why not just an ordered set: in a sale every hold gets the same time-to-live, so deadlines
//! arrive in order, and a B-tree insert then walks down its right edge comparing against full
//! nodes every time. On a hot product that was ~720 of the ~6,900 instructions a durable
//! reserve costs the event loop (callgrind). Here a deadline later than every queued one is
//! appended to a queue in O(1); only those that arrive out of order (a shorter time-to-live
//! after a longer one, an extension to an earlier time) go to a B-tree on the side.
//!
//! The queue is a deque of chunks of at most [`CHUNK_ENTRIES`], not one vector: a vector
//! doubling under a product with millions of holds would move them all at once, a stall every
//! waiting caller would feel. A hold that ends early is found by binary search (the queue is
//! sorted) and marked dead; dead entries are dropped when they reach the front, and once the
//! dead outnumber the live the queue is rebuilt without them, so it never holds more than
//! twice the live entries plus a few dozen (each removal pays for one entry of the rebuild),
//! and the front chunk's entries already taken.

use std::collections::{BTreeSet, VecDeque};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

/// A deadline and the reservation it ends.
pub type Deadline = (Tick, Uuid);

/// A point on the monotonic clock, in nanoseconds since a base read once per process: 8 bytes
/// where an `Instant` takes 16. An active hold keeps its deadline twice (in its home and in
/// this queue), and those are most of a hot product's memory per hold, each byte written into
/// fresh memory. A point before the base (a hold that expired while stockd was down) counts
/// as the base: due at once either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tick(u64);

/// The top bit of an [`Entry`]'s tick is its live flag; ticks stay below it (292 years).
const LIVE: u64 = 1 << 63;

impl Tick {
    pub fn at(instant: Instant) -> Tick {
        let nanos = instant.saturating_duration_since(base()).as_nanos();
        Tick(u64::try_from(nanos).map_or(LIVE - 1, |n| n.min(LIVE - 1)))
    }

    pub fn instant(self) -> Instant {
        base() + Duration::from_nanos(self.0)
    }

    /// The next point on the clock, a nanosecond later.
    pub fn next(self) -> Tick {
        Tick((self.0 + 1).min(LIVE - 1))
    }

    /// This point plus `ms` milliseconds.
    pub fn after_ms(self, ms: u64) -> Tick {
        let nanos = ms.saturating_mul(1_000_000);
        Tick(self.0.saturating_add(nanos).min(LIVE - 1))
    }
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Entries per chunk of the queue (24 bytes each: 24 KiB a chunk). The first chunk starts
/// small and grows to this, so a product with one hold keeps one small vector; later ones are
/// allocated whole. (Small in unit tests, so
/// that they cross chunks and rebuild often.)
#[cfg(not(test))]
const CHUNK_ENTRIES: usize = 1024;
#[cfg(test)]
const CHUNK_ENTRIES: usize = 8;
/// Dead entries the queue may carry before a rebuild is considered. Small: a product whose
/// front hold lives long (an abandoned cart) while later ones end keeps that many dead
/// entries. A rebuild waits for the dead to outnumber the live, so it stays O(1) a removal.
#[cfg(not(test))]
const DEAD_ENTRIES_MIN: usize = 64;
#[cfg(test)]
const DEAD_ENTRIES_MIN: usize = 8;
/// A lone chunk emptied is kept for the next insert up to this capacity, and freed above it
/// (a product past a burst of holds does not keep ~40 KiB for its next few).
#[cfg(not(test))]
const KEPT_CHUNK_ENTRIES_MAX: usize = 16;
#[cfg(test)]
const KEPT_CHUNK_ENTRIES_MAX: usize = 4;

/// A queued deadline: its tick with the live flag in the top bit, and its id (24 bytes, not
/// the 32 a separate flag would take).
#[derive(Debug, Clone, Copy)]
struct Entry {
    tick_live: u64,
    id: Uuid,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 24);

impl Entry {
    fn live(deadline: Deadline) -> Entry {
        debug_assert!(deadline.0 .0 < LIVE, "ticks stay below the flag");
        Entry {
            tick_live: deadline.0 .0 | LIVE,
            id: deadline.1,
        }
    }

    fn deadline(&self) -> Deadline {
        (Tick(self.tick_live & !LIVE), self.id)
    }

    fn is_live(&self) -> bool {
        self.tick_live & LIVE != 0
    }

    fn kill(&mut self) {
        self.tick_live &= !LIVE;
    }
}

/// Invariants: the queue is strictly increasing across and within chunks; no chunk is empty
/// but a lone, small one; entries of the front chunk before `head` are gone, and the one at `head`
/// (if any) is live.
#[derive(Debug, Default)]
pub struct Deadlines {
    chunks: VecDeque<Vec<Entry>>,
    head: usize,
    queued_live: usize,
    queued_dead: usize,
    /// Deadlines that arrived earlier than the queue's last.
    others: BTreeSet<Deadline>,
}

impl Deadlines {
    /// From deadlines in any order (a product revived from its passive state).
    pub fn from_unsorted(deadlines: impl IntoIterator<Item = Deadline>) -> Deadlines {
        let mut sorted: Vec<Deadline> = deadlines.into_iter().collect();
        sorted.sort_unstable();
        let mut out = Deadlines::default();
        for deadline in sorted {
            out.insert(deadline);
        }
        out
    }

    /// Live deadlines.
    pub fn len(&self) -> usize {
        self.queued_live + self.others.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The earliest live deadline.
    pub fn first(&self) -> Option<Deadline> {
        match (self.front(), self.others.first()) {
            (Some(queued), Some(other)) => Some(queued.min(*other)),
            (queued, other) => queued.or(other.copied()),
        }
    }

    fn front(&self) -> Option<Deadline> {
        let entry = *self.chunks.front()?.get(self.head)?;
        debug_assert!(entry.is_live(), "the queue's front entry is live");
        Some(entry.deadline())
    }

    fn back(&self) -> Option<Deadline> {
        self.chunks.back()?.last().map(Entry::deadline)
    }

    /// Adds a deadline that is not already here.
    pub fn insert(&mut self, deadline: Deadline) {
        if self.back().is_some_and(|back| deadline <= back) {
            let added = self.others.insert(deadline);
            assert!(added, "deadline {deadline:?} inserted twice");
            return;
        }
        debug_assert!(!self.others.contains(&deadline), "deadline inserted twice");
        let entry = Entry::live(deadline);
        match self.chunks.back_mut() {
            Some(chunk) if chunk.len() < CHUNK_ENTRIES => chunk.push(entry),
            _ => {
                // Only a first chunk starts small; one after a full chunk will fill too, and
                // growing it from 4 entries cost 8 reallocations (and copies) per chunk.
                let capacity = if self.chunks.is_empty() {
                    4
                } else {
                    CHUNK_ENTRIES
                };
                let mut chunk = Vec::with_capacity(capacity);
                chunk.push(entry);
                self.chunks.push_back(chunk);
            }
        }
        self.queued_live += 1;
    }

    /// Removes a deadline; false if it was not here (already taken by [`Self::pop_first`]).
    pub fn remove(&mut self, deadline: &Deadline) -> bool {
        if self.others.remove(deadline) {
            return true;
        }
        let at = self
            .chunks
            .partition_point(|c| c.last().is_some_and(|e| e.deadline() < *deadline));
        let Some(chunk) = self.chunks.get_mut(at) else {
            return false;
        };
        let Ok(i) = chunk.binary_search_by(|e| e.deadline().cmp(deadline)) else {
            return false;
        };
        if (at == 0 && i < self.head) || !chunk[i].is_live() {
            return false;
        }
        chunk[i].kill();
        self.queued_live -= 1;
        self.queued_dead += 1;
        self.settle();
        if self.queued_dead >= DEAD_ENTRIES_MIN && self.queued_dead > self.queued_live {
            self.rebuild();
        }
        true
    }

    /// Removes and returns the earliest live deadline.
    pub fn pop_first(&mut self) -> Option<Deadline> {
        let first = self.first()?;
        if self.front() == Some(first) {
            self.head += 1;
            self.queued_live -= 1;
            self.settle();
        } else {
            self.others.pop_first();
        }
        Some(first)
    }

    /// Restores the front invariant: drops gone and dead entries, and emptied chunks but a
    /// small last one, which is kept for the next insert (on a product whose holds come and
    /// go one at a time, freeing it meant an allocation per hold).
    fn settle(&mut self) {
        loop {
            let lone = self.chunks.len() == 1;
            let Some(chunk) = self.chunks.front_mut() else {
                break;
            };
            if self.head == chunk.len() {
                if lone && chunk.capacity() <= KEPT_CHUNK_ENTRIES_MAX {
                    chunk.clear();
                    self.head = 0;
                    break;
                }
                self.chunks.pop_front();
                self.head = 0;
            } else if chunk[self.head].is_live() {
                break;
            } else {
                self.head += 1;
                self.queued_dead -= 1;
            }
        }
    }

    /// The queue's live entries, in order.
    fn queued(&self) -> impl Iterator<Item = &Entry> {
        self.chunks
            .iter()
            .enumerate()
            .flat_map(|(at, c)| &c[if at == 0 { self.head } else { 0 }..])
            .filter(|e| e.is_live())
    }

    /// The queue again without its dead entries.
    fn rebuild(&mut self) {
        let mut chunks: VecDeque<Vec<Entry>> = VecDeque::new();
        let mut chunk = Vec::new();
        for entry in self.queued() {
            if chunk.len() == CHUNK_ENTRIES {
                chunks.push_back(std::mem::replace(
                    &mut chunk,
                    Vec::with_capacity(CHUNK_ENTRIES),
                ));
            }
            chunk.push(*entry);
        }
        if !chunk.is_empty() {
            chunks.push_back(chunk);
        }
        let queued: usize = chunks.iter().map(Vec::len).sum();
        assert_eq!(queued, self.queued_live, "live entries lost in a rebuild");
        self.chunks = chunks;
        self.head = 0;
        self.queued_dead = 0;
    }

    /// Every live deadline, for checks: in order, queued and others merged.
    #[cfg(test)]
    fn to_vec(&self) -> Vec<Deadline> {
        let mut out: Vec<Deadline> = self
            .queued()
            .map(Entry::deadline)
            .chain(self.others.iter().copied())
            .collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[derive(Debug, Clone)]
    enum Op {
        /// A deadline this many ms after the base, for a new id.
        Insert(u16),
        /// The live deadline at this index (modulo), if any.
        Remove(usize),
        /// A deadline never inserted.
        RemoveAbsent(u16),
        PopFirst,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            // Mostly in order, as in a sale: later and later deadlines.
            4 => (0u16..64).prop_map(Op::Insert),
            2 => any::<usize>().prop_map(Op::Remove),
            1 => any::<u16>().prop_map(Op::RemoveAbsent),
            1 => Just(Op::PopFirst),
        ]
    }

    proptest! {
        /// The same answers as an ordered set, whatever the order of inserts and removals.
        #[test]
        fn agrees_with_an_ordered_set(ops in prop::collection::vec(op(), 1..600)) {
            let base = Instant::now();
            let mut deadlines = Deadlines::default();
            let mut model: BTreeSet<Deadline> = BTreeSet::new();
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Insert(step) => {
                        // A clock that moves on: index n plus jitter, so most arrive in order.
                        let at = base + Duration::from_millis(n as u64 * 4 + u64::from(step));
                        let d = (Tick::at(at), Uuid::from_u128(n as u128 + 1));
                        deadlines.insert(d);
                        model.insert(d);
                    }
                    Op::Remove(pick) => {
                        if !model.is_empty() {
                            let d = *model.iter().nth(pick % model.len()).expect("in range");
                            prop_assert!(deadlines.remove(&d));
                            model.remove(&d);
                            prop_assert!(!deadlines.remove(&d), "removed twice");
                        }
                    }
                    Op::RemoveAbsent(step) => {
                        let d = (Tick::at(base + Duration::from_millis(u64::from(step))), Uuid::nil());
                        prop_assert!(!deadlines.remove(&d));
                    }
                    Op::PopFirst => {
                        prop_assert_eq!(deadlines.pop_first(), model.pop_first());
                    }
                }
                prop_assert_eq!(deadlines.len(), model.len());
                prop_assert_eq!(deadlines.first(), model.first().copied());
                let bound = 2 * deadlines.queued_live + DEAD_ENTRIES_MIN + CHUNK_ENTRIES;
                let queued: usize = deadlines.chunks.iter().map(Vec::len).sum();
                prop_assert!(queued <= bound, "queue of {} entries for {} live", queued, deadlines.queued_live);
            }
            prop_assert_eq!(deadlines.to_vec(), model.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn in_order_deadlines_stay_out_of_the_tree_and_early_ends_are_compacted() {
        let base = Instant::now();
        let mut deadlines = Deadlines::default();
        let all: Vec<Deadline> = (0..10_000u64)
            .map(|n| {
                (
                    Tick::at(base + Duration::from_micros(n)),
                    Uuid::from_u128(n.into()),
                )
            })
            .collect();
        for d in &all {
            deadlines.insert(*d);
        }
        assert!(deadlines.others.is_empty());
        assert_eq!(deadlines.chunks.len(), 10_000usize.div_ceil(CHUNK_ENTRIES));
        // Nine in ten end early, from the back (the front is the one that expires next).
        for d in all.iter().rev().filter(|(_, id)| id.as_u128() % 10 != 0) {
            assert!(deadlines.remove(d));
        }
        assert_eq!(deadlines.len(), 1_000);
        let queued: usize = deadlines.chunks.iter().map(Vec::len).sum();
        // Without rebuilds all 10,000 would still be queued.
        assert!(
            queued <= 2 * 1_000 + DEAD_ENTRIES_MIN + CHUNK_ENTRIES,
            "{queued}"
        );
        let expired: Vec<Deadline> = std::iter::from_fn(|| deadlines.pop_first()).collect();
        let kept: Vec<Deadline> = all
            .into_iter()
            .filter(|(_, id)| id.as_u128() % 10 == 0)
            .collect();
        assert_eq!(expired, kept);
        assert!(deadlines.is_empty());
        assert!(deadlines.chunks.len() <= 1 && deadlines.chunks.iter().all(Vec::is_empty));
    }

    /// A deadline `ms` after `base`, for reservation number `ms`.
    fn at_ms(base: Instant, ms: u64) -> Deadline {
        (
            Tick::at(base + Duration::from_millis(ms)),
            Uuid::from_u128(ms.into()),
        )
    }

    /// Deadlines holding one, [`at_ms`] 0 of the base returned.
    fn holding_one() -> (Instant, Deadlines) {
        let base = Instant::now();
        let mut deadlines = Deadlines::default();
        deadlines.insert(at_ms(base, 0));
        (base, deadlines)
    }

    #[test]
    fn a_long_lived_front_hold_does_not_keep_the_dead_behind_it() {
        let (base, mut deadlines) = holding_one();
        let d = |ms| at_ms(base, ms);
        for ms in 1..1_000 {
            deadlines.insert(d(ms));
            assert!(deadlines.remove(&d(ms)));
            let queued: usize = deadlines.chunks.iter().map(Vec::len).sum();
            assert!(
                queued <= 2 + DEAD_ENTRIES_MIN,
                "{queued} queued for one live"
            );
        }
        assert_eq!(deadlines.len(), 1);
        assert_eq!(deadlines.first(), Some(d(0)));
    }

    #[test]
    fn an_emptied_chunk_is_kept_only_if_small() {
        let (base, mut deadlines) = holding_one();
        let d = |ms| at_ms(base, ms);
        assert_eq!(deadlines.pop_first(), Some(d(0)));
        assert_eq!(
            deadlines.chunks.len(),
            1,
            "a small chunk is kept for the next insert"
        );
        for ms in 1..=CHUNK_ENTRIES as u64 {
            deadlines.insert(d(ms));
        }
        while deadlines.pop_first().is_some() {}
        assert!(
            deadlines.chunks.is_empty(),
            "a grown chunk is freed once emptied"
        );
    }

    #[test]
    fn revived_from_any_order() {
        let base = Instant::now();
        let d = |ms: u64, id: u128| {
            (
                Tick::at(base + Duration::from_millis(ms)),
                Uuid::from_u128(id),
            )
        };
        let deadlines = Deadlines::from_unsorted([d(30, 1), d(10, 2), d(20, 3), d(10, 1)]);
        assert_eq!(
            deadlines.to_vec(),
            vec![d(10, 1), d(10, 2), d(20, 3), d(30, 1)]
        );
        assert!(deadlines.others.is_empty());
        assert_eq!(deadlines.first(), Some(d(10, 1)));
    }

    #[test]
    fn ticks_keep_order_and_come_back_as_the_same_instant() {
        // The base is read at first use: before `now`, or `now` would count as the base.
        let _ = base();
        let now = Instant::now();
        let later = now + Duration::from_millis(1500);
        assert!(Tick::at(now) < Tick::at(later));
        assert_eq!(Tick::at(later).instant(), later);
        assert_eq!(Tick::at(now).after_ms(1500), Tick::at(later));
        // Before the base counts as the base: due at once.
        if let Some(before) = base().checked_sub(Duration::from_secs(1)) {
            assert_eq!(Tick::at(before), Tick(0));
        }
        assert!(
            Tick(LIVE - 1).after_ms(u64::MAX).0 < LIVE,
            "ticks stay below the flag"
        );
        // A run's successive deadlines: distinct, in order, a nanosecond apart.
        assert!(Tick::at(now).next() > Tick::at(now));
        assert_eq!(
            Tick::at(now).next().instant(),
            now + Duration::from_nanos(1)
        );
        assert!(Tick(LIVE - 1).next().0 < LIVE, "ticks stay below the flag");
    }
}
