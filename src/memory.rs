//! How stockd's state grows without pauses. State grows with traffic (every hold, every
//! history entry), and the threads that grow it are the ones every request waits on: a hot
//! product's actor, and the log writer between an fsync and its acknowledgements. Measured in
//! a flash sale (one actor, ~50k holds/s): a `HashMap` that doubled stalled the actor for up
//! to 130 ms at a few hundred thousand holds, and the writer's update of the ledger took up
//! to 27 ms.

/// The hash map for state that grows with traffic (a product's holds, the reservation index).
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
