//! Every bound the server enforces, in one place, with units in the names (TIGER_STYLE).
//! The HTTP layer refuses anything outside these with a 400 before any state is touched.

/// SKU length: 1 ..= 64 bytes of `A-Z a-z 0-9 . _ -`.
pub const SKU_MAX_BYTES: usize = 64;
/// A single quantity in a request: 1 ..= 10^9.
pub const QUANTITY_MAX: u64 = 1_000_000_000;
/// `on_hand` of one product never leaves 0 ..= 10^12.
pub const ON_HAND_MAX: u64 = 1_000_000_000_000;
/// Items in one reservation or sale (each SKU at most once).
pub const ITEMS_PER_OPERATION_MAX: usize = 100;
/// Reservation time-to-live bounds and default.
pub const TTL_SECONDS_MIN: u64 = 1;
pub const TTL_SECONDS_MAX: u64 = 86_400;
pub const TTL_SECONDS_DEFAULT: u64 = 900;
/// Request bodies above this are refused with 413.
pub const REQUEST_BODY_MAX_BYTES: usize = 64 * 1024;
/// Free-text fields (name, reference, note, reason, session_id, user_id).
pub const TEXT_MAX_BYTES: usize = 1024;
/// Client metadata attached to a reservation, as serialized JSON.
pub const METADATA_MAX_BYTES: usize = 4096;
/// Low-stock threshold default and bound.
pub const LOW_STOCK_THRESHOLD_DEFAULT: u64 = 10;
/// Page sizes for list endpoints.
pub const PAGE_LIMIT_MAX: usize = 1000;
pub const PRODUCTS_PAGE_LIMIT_DEFAULT: usize = 100;
pub const HISTORY_PAGE_LIMIT_DEFAULT: usize = 50;
/// History entries one page may look at when filtering by action. The scan holds the
/// ledger's read lock, which the log writer needs between each fsync and its replies; a
/// product can have millions of entries, and 65,536 take well under a millisecond. A page
/// that stops here may hold fewer entries than asked for, with `next` to go on from.
pub const HISTORY_SCAN_ENTRIES_MAX: usize = 65_536;
/// A single encoded record never exceeds this (checked when writing and when reading).
pub const RECORD_MAX_BYTES: usize = 1 << 20;
/// A product passivates with at most this many holds. Reviving it rebuilds them while the
/// registry entry of that SKU is locked, so the rebuild must stay short; a product with more
/// holds is hot, and its actor (a few KB) is small next to its holds anyway.
pub const PASSIVE_HOLDS_MAX: usize = 4096;
/// Ended reservations a product's actor drops per message at most (it drops them once their
/// end is durable, before each message, on the event loop every connection shares): ~80 µs of
/// map removals. Each message ends at most one reservation (expiry excepted), so a backlog
/// shrinks by at least 1,023 a message.
pub const PRUNE_ENDED_PER_MESSAGE_MAX: usize = 1024;
/// Messages already queued that a product's actor handles in one pass of its loop, the first
/// included. A pass also re-arms timers and sends replies held for durability (at most
/// [`DURABLE_REPLIES_PER_PASS_MAX`] of them): timers wait at most this many messages, and a
/// held reply that is durable at most this many per pass ahead of it.
pub const DRAIN_MESSAGES_MAX: usize = 32;
/// Replies held for durability that a product's actor sends in one pass before it lets the
/// callers it woke run (it yields to the event loop). Sending a whole fsync's worth at once
/// (up to a thousand) queued every caller ahead of the actor, so the next records reached the
/// log writer only after all of them had run, and the writer and the loop took turns instead
/// of overlapping. The same as [`DRAIN_MESSAGES_MAX`], so that a pass takes in about as many
/// new requests as it lets go.
pub const DURABLE_REPLIES_PER_PASS_MAX: usize = DRAIN_MESSAGES_MAX;
/// Non-reservation operation ids are remembered at least this long for idempotency.
pub const OPERATION_ID_RETENTION_MS: i64 = 24 * 3600 * 1000;
