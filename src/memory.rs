//! How stockd's state grows without pauses. State grows with traffic (every hold, every
//! history entry), and the threads that grow it are the ones every request waits on: a hot
//! product's actor, and the log writer between an fsync and its acknowledgements. Measured in
//! a flash sale (one actor, ~50k holds/s): a `HashMap` that doubled stalled the actor for up
//! to 130 ms at a few hundred thousand holds, and the writer's update of the ledger took up
//! to 27 ms. Also here: the global allocator, and handing the memory it holds freed back to
//! the kernel, so that resident memory follows the state when the server falls quiet.

use uuid::Uuid;

/// The hash map for a product's holds, which grow with traffic on that product.
/// A `HashMap` grows by moving every entry into a table twice the size in one go; griddle
/// moves a few entries per insert instead, so no single insert pays for the whole table
/// (the longest of a million inserts fell from 92 ms to 0.6 ms). Hashed with foldhash, seeded
/// per process.
pub type GrowingMap<K, V> = griddle::HashMap<K, V, foldhash::fast::RandomState>;

/// Asks the kernel for ordinary 4 KiB pages only. The allocator (mimalloc) asks for
/// transparent huge pages, and the first touch of each 2 MiB page is cleared in one go with
/// the thread stopped: ~4 ms on this VM, several times a second as the ledger grows, always
/// on a thread that others wait for. Small pages spread the same clearing thinly (inserting a
/// million map entries: 180 ns each instead of 628). Best effort: a kernel that refuses keeps
/// huge pages and nothing else changes.
pub fn prefer_small_pages() {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    let status = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if status != 0 {
        tracing::debug!(
            "could not turn transparent huge pages off: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The global allocator: mimalloc, called the way its fast path expects.
///
/// Why not the `mimalloc` crate's wrapper: it sends every request through
/// `mi_malloc_aligned`. In mimalloc 3 that call takes the plain path only while the size
/// class's page has a free block ready; otherwise, for any size whose block is not a power of
/// two (48, 80, 1,500 bytes...), it over-allocates by the alignment from the next size class
/// up. Measured under HTTP flash load: 9 of these slow calls per request, 4% of the server's
/// instructions, and each such block a size class larger than asked for.
///
/// Rust asks for an alignment of at most 16 for nearly everything, and every mimalloc block
/// of 16 bytes or more is 16-aligned (its size classes are multiples of 16 from there, and a
/// page's first block is 16-aligned), smaller ones 8-aligned: the rule std's own `System`
/// allocator applies to malloc. Anything else (tokio's 128-aligned task cells, say) still
/// goes through the aligned calls. Up to 1 KiB the call is `mi_malloc_small`: plain
/// `mi_malloc` goes through one more function in mimalloc 3, which made record decoding (a
/// few small allocations a record) 7% slower than with the crate's wrapper; the small call
/// made it 2% faster.
pub struct Allocator;

/// The alignment every mimalloc block of at least this many bytes has (`MI_MAX_ALIGN_SIZE`).
const MIMALLOC_NATURAL_ALIGN_BYTES: usize = 16;

fn naturally_aligned(size: usize, align: usize) -> bool {
    align <= MIMALLOC_NATURAL_ALIGN_BYTES && align <= size
}

/// A new block: from `small` (up to `MI_SMALL_SIZE_MAX`, 1 KiB) or `plain` where mimalloc's
/// natural alignment suffices, else from `aligned`.
///
/// # Safety
/// As [`std::alloc::GlobalAlloc::alloc`]: `layout` has a non-zero size.
#[inline]
unsafe fn allocate(
    layout: std::alloc::Layout,
    small: unsafe extern "C" fn(usize) -> *mut std::ffi::c_void,
    plain: unsafe extern "C" fn(usize) -> *mut std::ffi::c_void,
    aligned: unsafe extern "C" fn(usize, usize) -> *mut std::ffi::c_void,
) -> *mut u8 {
    let (size, align) = (layout.size(), layout.align());
    if !naturally_aligned(size, align) {
        aligned(size, align).cast()
    } else if size <= libmimalloc_sys::MI_SMALL_SIZE_MAX {
        small(size).cast()
    } else {
        plain(size).cast()
    }
}

// SAFETY: every block comes from mimalloc and goes back to it; the plain calls are used only
// where mimalloc's blocks already have the alignment asked for (see `naturally_aligned`).
unsafe impl std::alloc::GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        allocate(
            layout,
            libmimalloc_sys::mi_malloc_small,
            libmimalloc_sys::mi_malloc,
            libmimalloc_sys::mi_malloc_aligned,
        )
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        allocate(
            layout,
            libmimalloc_sys::mi_zalloc_small,
            libmimalloc_sys::mi_zalloc,
            libmimalloc_sys::mi_zalloc_aligned,
        )
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        libmimalloc_sys::mi_free(ptr.cast());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        if naturally_aligned(new_size, align) {
            libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast()
        } else {
            libmimalloc_sys::mi_realloc_aligned(ptr.cast(), new_size, align).cast()
        }
    }
}

/// How often the allocator is asked to hand freed memory back (see [`return_freed_memory`]).
pub const RETURN_FREED_EVERY_MS: u64 = 1_000;

/// Runs while `alive` can be upgraded: every [`RETURN_FREED_EVERY_MS`], asks the allocator
/// (mimalloc) to hand back to the kernel the memory it holds freed. mimalloc does that lazily,
/// on its next calls, so a server that falls quiet after a million products passivated kept
/// their actors' freed memory resident: the 1M-SKU catalog read 739 MiB idle, 614 MiB after
/// one such call (the live data is the same). Each call collects the heap of the worker it
/// runs on (tasks move between workers) and the process-wide free ranges. With another
/// global allocator the call only touches mimalloc's own, unused, state.
///
/// The ordinary call skips pages that were full when other threads freed blocks in them:
/// after a million holds passivated, those kept 100-200 MiB resident in some runs and not in
/// others. A forced call visits every page but stops the worker for 5-40 ms (measured with
/// ~0.7-1.4 GiB resident), so it runs once each time the server falls quiet: when `activity`
/// (the log's bytes and the live actors, say) is the same two ticks running for the first
/// time since it last changed.
pub async fn return_freed_memory<T, A: PartialEq + Copy>(
    alive: std::sync::Weak<T>,
    activity: impl Fn(&T) -> A,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(RETURN_FREED_EVERY_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut quiet = Quiet::default();
    loop {
        tick.tick().await;
        let Some(now) = alive.upgrade().map(|shared| activity(&shared)) else {
            return;
        };
        let force = quiet.fell_quiet(now);
        let started = std::time::Instant::now();
        // SAFETY: mi_collect takes a flag and only walks the allocator's own structures.
        unsafe { libmimalloc_sys::mi_collect(force) };
        if force {
            let took_ms = started.elapsed().as_secs_f64() * 1e3;
            tracing::debug!("quiet: handed freed memory back in {took_ms:.1} ms");
        }
    }
}

/// Tells, tick by tick, when an activity value stops changing: once per quiet spell.
#[derive(Debug)]
struct Quiet<A> {
    last_seen: Option<A>,
    /// The value changed since the last spell was reported (or none was yet).
    moved: bool,
}

impl<A> Default for Quiet<A> {
    fn default() -> Self {
        Quiet {
            last_seen: None,
            moved: true,
        }
    }
}

impl<A: PartialEq + Copy> Quiet<A> {
    /// True on the first tick that sees the same value as the tick before, after a change.
    fn fell_quiet(&mut self, now: A) -> bool {
        let unchanged = self.last_seen == Some(now);
        self.last_seen = Some(now);
        if !unchanged {
            self.moved = true;
            return false;
        }
        std::mem::take(&mut self.moved)
    }
}

/// Shards of [`ShardedMap`]: a power of two. With 5M entries a shard holds ~20k, and moving
/// that many 20-byte entries takes well under a millisecond.
const SHARDS: usize = 256;

/// A map by id, written in bulk at start (replay) and then one entry per request: the
/// reservation index. Split into [`SHARDS`] ordinary maps by the id's last byte (random in
/// the ids stockd makes; an id a client chose cannot make things worse than one map), so a
/// growth step moves one shard, not the whole index. Not a [`GrowingMap`]: that spreads each
/// move over later inserts but makes every insert dearer, and replay does millions of them
/// (a 10M-record log started in 7.8-8.1 s with it, in 7.5-7.7 s with this, and in 7.3-7.4 s
/// with one unsharded map).
#[derive(Debug)]
pub struct ShardedMap<V> {
    shards: Box<[foldhash::HashMap<Uuid, V>]>,
}

impl<V> Default for ShardedMap<V> {
    fn default() -> Self {
        ShardedMap {
            shards: (0..SHARDS).map(|_| foldhash::HashMap::default()).collect(),
        }
    }
}

impl<V> ShardedMap<V> {
    fn shard(key: &Uuid) -> usize {
        key.as_bytes()[15] as usize % SHARDS
    }

    pub fn get(&self, key: &Uuid) -> Option<&V> {
        self.shards[Self::shard(key)].get(key)
    }

    pub fn get_mut(&mut self, key: &Uuid) -> Option<&mut V> {
        self.shards[Self::shard(key)].get_mut(key)
    }

    pub fn contains_key(&self, key: &Uuid) -> bool {
        self.shards[Self::shard(key)].contains_key(key)
    }

    pub fn insert(&mut self, key: Uuid, value: V) -> Option<V> {
        self.shards[Self::shard(&key)].insert(key, value)
    }

    /// Inserts only a key not there yet (one lookup, not two); `false` if it was there.
    pub fn try_insert(&mut self, key: Uuid, value: V) -> bool {
        insert_new(&mut self.shards[Self::shard(&key)], key, value).is_none()
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.is_empty())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Uuid, &V)> + '_ {
        self.shards.iter().flatten()
    }
}

/// Inserts `key` into one shard only if it is not there yet; gives the entry back if it was.
fn insert_new<V>(shard: &mut foldhash::HashMap<Uuid, V>, key: Uuid, value: V) -> Option<(Uuid, V)> {
    match shard.entry(key) {
        std::collections::hash_map::Entry::Vacant(slot) => {
            slot.insert(value);
            None
        }
        std::collections::hash_map::Entry::Occupied(_) => Some((key, value)),
    }
}

/// Collects the entries of a [`ShardedMap`] by shard and builds it in one go: replay's
/// reservation index. Inserting millions of ids one at a time into a map far out of the
/// caches waited on two cache misses per id, and the tables it outgrew were copied and
/// faulted in again. Here each id is appended to its shard's list (a write next to the
/// previous one), and at the end each shard is built at its final size, in one pass over a
/// table small enough to stay in the core's cache. 5M random ids, scratch measurement:
/// 558-720 ms inserted one by one, 107-146 ms appended plus 103-143 ms to build.
pub struct ShardedMapBuilder<V> {
    pending: Box<[Vec<(Uuid, V)>]>,
}

impl<V> Default for ShardedMapBuilder<V> {
    fn default() -> Self {
        ShardedMapBuilder {
            pending: (0..SHARDS).map(|_| Vec::new()).collect(),
        }
    }
}

impl<V: Send> ShardedMapBuilder<V> {
    pub fn push(&mut self, key: Uuid, value: V) {
        self.pending[ShardedMap::<V>::shard(&key)].push((key, value));
    }

    /// The map, with its shards built on two threads (the other half on this one). `Err`
    /// holds each entry whose key an earlier entry already had, and no map.
    pub fn build(self) -> Result<ShardedMap<V>, Vec<(Uuid, V)>> {
        let mut pending = self.pending.into_vec();
        let later = pending.split_off(pending.len() / 2);
        let build_all = |lists: Vec<Vec<(Uuid, V)>>| {
            let mut twice = Vec::new();
            let shards: Vec<_> = lists
                .into_iter()
                .map(|list| {
                    let mut shard = foldhash::HashMap::with_capacity_and_hasher(
                        list.len(),
                        foldhash::fast::RandomState::default(),
                    );
                    for (key, value) in list {
                        twice.extend(insert_new(&mut shard, key, value));
                    }
                    shard
                })
                .collect();
            (shards, twice)
        };
        let (work_tx, work_rx) = crossbeam_channel::bounded(1);
        let ((mut shards, mut twice), (later_shards, later_twice)) = std::thread::scope(|scope| {
            let helper = std::thread::Builder::new()
                .name("stockd-index-build".into())
                .spawn_scoped(scope, move || work_rx.recv().map(build_all));
            let Ok(helper) = helper else {
                // No second thread to be had: the same work, on this one.
                return (build_all(pending), build_all(later));
            };
            work_tx
                .send(later)
                .expect("the helper waits for its half until it has it");
            let first = build_all(pending);
            match helper.join() {
                Ok(second) => (first, second.expect("its half was sent above")),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        });
        shards.extend(later_shards);
        twice.extend(later_twice);
        if !twice.is_empty() {
            return Err(twice);
        }
        assert_eq!(shards.len(), SHARDS, "every shard built");
        Ok(ShardedMap {
            shards: shards.into_boxed_slice(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::*;

    /// Every block the allocator hands out has the alignment asked for, on each of its paths
    /// (small, plain and aligned), through growth and shrinking, and keeps its bytes when moved.
    #[test]
    fn allocator_blocks_have_the_alignment_asked_for_and_keep_their_bytes() {
        let sizes = [
            1, 7, 8, 15, 16, 24, 40, 48, 56, 80, 100, 1000, 1024, 1500, 5000, 70_000,
        ];
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for &size in &sizes {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: non-zero sizes; each block is written within its size, then
                // reallocated or freed once with the layout it has at that moment.
                unsafe {
                    for zeroed in [false, true] {
                        let p = if zeroed {
                            Allocator.alloc_zeroed(layout)
                        } else {
                            Allocator.alloc(layout)
                        };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        if zeroed {
                            assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                        }
                        for i in 0..size {
                            *p.add(i) = (i % 251) as u8;
                        }
                        let mut block = (p, layout);
                        // Bytes written at the start and never cut off since.
                        let mut valid = size;
                        for &new_size in &sizes {
                            let moved = Allocator.realloc(block.0, block.1, new_size);
                            assert!(!moved.is_null());
                            assert_eq!(
                                moved as usize % align,
                                0,
                                "realloc {new_size} align {align}"
                            );
                            valid = valid.min(new_size);
                            for i in 0..valid {
                                assert_eq!(*moved.add(i), (i % 251) as u8);
                            }
                            block = (
                                moved,
                                Layout::from_size_align(new_size, align).expect("layout"),
                            );
                        }
                        Allocator.dealloc(block.0, block.1);
                    }
                }
            }
        }
    }

    #[test]
    fn quiet_is_reported_once_per_spell_without_change() {
        let mut quiet = Quiet::default();
        let ticks = [
            (1, 0),
            (1, 0),
            (1, 0),
            (2, 5),
            (3, 4),
            (3, 4),
            (3, 4),
            (3, 3),
            (3, 4),
            (3, 4),
        ];
        let reported: Vec<bool> = ticks.iter().map(|&t| quiet.fell_quiet(t)).collect();
        // Quiet at the second sight running of a value, not again while it lasts, and again
        // after any change, even back to a value reported before.
        assert_eq!(
            reported,
            [false, true, false, false, false, true, false, false, false, true]
        );
    }

    #[test]
    fn a_built_sharded_map_finds_each_entry_and_names_every_key_given_twice() {
        let id = |k: u64| Uuid::from_u128(u128::from(k) * 0x9E37_79B9_7F4A_7C15);
        let mut builder = ShardedMapBuilder::default();
        for k in 0..20_000u64 {
            builder.push(id(k), k);
        }
        let map = builder.build().expect("no key twice");
        assert_eq!(map.len(), 20_000);
        assert!((0..20_000u64).all(|k| map.get(&id(k)) == Some(&k)));
        assert!(map.get(&id(20_000)).is_none());
        // Both halves of the shards (built on two threads) report what they find twice.
        let mut builder = ShardedMapBuilder::default();
        for k in 0..1_000u64 {
            builder.push(id(k), k);
        }
        let repeated: Vec<u64> = (0..1_000).step_by(97).collect();
        for &k in &repeated {
            builder.push(id(k), 5_000 + k);
        }
        let mut twice = builder.build().expect_err("keys given twice");
        twice.sort_by_key(|&(_, v)| v);
        let expected: Vec<(Uuid, u64)> = repeated.iter().map(|&k| (id(k), 5_000 + k)).collect();
        assert_eq!(twice, expected);
        let halves = |key: &Uuid| ShardedMap::<u64>::shard(key) < SHARDS / 2;
        assert!(twice.iter().any(|(k, _)| halves(k)) && twice.iter().any(|(k, _)| !halves(k)));
    }

    #[test]
    fn sharded_map_finds_what_it_holds() {
        let id = |k: u64| Uuid::from_u128(u128::from(k) * 0x9E37_79B9_7F4A_7C15);
        let mut map: ShardedMap<u64> = ShardedMap::default();
        for k in 0..10_000u64 {
            assert_eq!(map.insert(id(k), k * 2), None);
        }
        assert_eq!(map.insert(id(7), 1), Some(14));
        assert_eq!(map.len(), 10_000);
        assert_eq!(map.get(&id(7)), Some(&1));
        *map.get_mut(&id(8)).expect("present") = 3;
        assert_eq!(map.get(&id(8)), Some(&3));
        assert!(map.contains_key(&id(9_999)) && !map.contains_key(&id(10_000)));
        assert_eq!(map.iter().count(), 10_000);
        // A key already there is left as it is.
        assert!(!map.try_insert(id(7), 5) && map.get(&id(7)) == Some(&1));
        assert!(map.try_insert(id(10_000), 5) && map.get(&id(10_000)) == Some(&5));
        assert_eq!(map.len(), 10_001);
        // Random ids spread over every shard.
        let mut spread: ShardedMap<()> = ShardedMap::default();
        for _ in 0..10_000 {
            spread.insert(Uuid::new_v4(), ());
        }
        assert!(spread.shards.iter().all(|s| !s.is_empty()));
    }
}
