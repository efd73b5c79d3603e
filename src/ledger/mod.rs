//! The ledger: the state implied by the durable log, applied record by record in log order.
//!
//! The log writer applies each batch here right after its fdatasync, under a write lock it
//! takes before it wakes the waiting replies (so a read that starts after a reply sees its
//! change), and replay at start applies the same records through the same function. So
//! every read (product, list, history, reservation, availability) shows durable state only
//! (invariant 6), and the history chain after a restart is the one clients saw before
//! (invariant 7). The actors hold the live, possibly not-yet-durable counts that decisions
//! are made against; the ledger is what may be shown.

mod arena;
mod history;
mod products;
mod reservations;
pub mod views;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

// foldhash, seeded per process: several times faster than SipHash on these small keys, and
// still not predictable by a client choosing ids.
use foldhash::HashMap;
use smallvec::SmallVec;
use uuid::Uuid;

use crate::domain::limits::{
    HISTORY_SCAN_ENTRIES_MAX, LOW_STOCK_THRESHOLD_DEFAULT, ON_HAND_MAX, OPERATION_ID_RETENTION_MS,
};
use crate::domain::{classify, Item, ReleaseReason, ReservationStatus, Sku, SkuRef, StockStatus};
use crate::wal::record::{EventRef, RecordRef};
use crate::wal::replay::{replay_batches, Mode, ReplayOutcome};
use crate::wal::{Event, Record, WalError};
use reservations::{Located, MadeTwice, ReplayIndex};
pub use views::{HistoryView, ItemReport, ProductView, ReservationView, SaleView};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Create,
    Set,
    Restock,
    Adjust,
    Return,
    Sale,
    Reserve,
    Complete,
    Release,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Set => "set",
            Action::Restock => "restock",
            Action::Adjust => "adjust",
            Action::Return => "return",
            Action::Sale => "sale",
            Action::Reserve => "reserve",
            Action::Complete => "complete",
            Action::Release => "release",
        }
    }

    pub fn parse(text: &str) -> Option<Action> {
        [
            Action::Create,
            Action::Set,
            Action::Restock,
            Action::Adjust,
            Action::Return,
            Action::Sale,
            Action::Reserve,
            Action::Complete,
            Action::Release,
        ]
        .into_iter()
        .find(|a| a.as_str() == text)
    }
}

/// Who and why, for the history entries of one record. Copied into each entry of a
/// multi-item record: the actor is an index into the interned names, and the free text and
/// the reservation are slots in the ledger's arenas, so nothing is allocated per entry.
#[derive(Debug, Clone, Copy)]
struct Tag {
    actor: u32,
    reservation: Option<Slot>,
    marker: Marker,
    detail: Option<Slot>,
}

/// A slot in one of the ledger's arenas, stored plus one so that `Option<Slot>` takes 4
/// bytes, not the 8 of an `Option<u32>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot(std::num::NonZeroU32);

impl Slot {
    fn new(slot: u32) -> Slot {
        let stored = slot
            .checked_add(1)
            .expect("fewer than 2^32 - 1 entries in memory");
        Slot(std::num::NonZeroU32::new(stored).expect("one more than a u32 is never zero"))
    }

    fn get(self) -> u32 {
        self.0.get() - 1
    }
}

#[derive(Debug, Clone, Copy)]
enum Marker {
    None,
    Released(ReleaseReason),
    Reacquired,
    Adjusted,
}

#[derive(Debug)]
struct Detail {
    reference: Option<String>,
    note: Option<String>,
    /// An adjustment's reason.
    reason: Option<String>,
}

/// One history entry: 32 bytes, because every reserve and every end adds one and they are
/// all kept (a 10M-record log makes 10M of them). Only the counts *after* are stored: the
/// counts before are the previous entry's after (or zero for the first), so the chain of
/// invariant 7 holds by construction. Both counts are at most `ON_HAND_MAX` (< 2^40), so each
/// is kept as its low 32 bits and one high byte; the reservation id and the free text are
/// slots in the ledger's arenas. (It was 56 bytes with the counts as `u64`s, the id inline
/// and the text behind an `Arc`: the README's Benchmarks say what the 24 bytes bought.)
#[derive(Debug, Clone)]
struct HistoryEntry {
    at_ms: i64,
    on_hand_low: u32,
    reserved_low: u32,
    reservation: Option<Slot>,
    detail: Option<Slot>,
    actor: u32,
    /// The high bytes of `on_hand` and `reserved`.
    high: [u8; 2],
    action: Action,
    marker: Marker,
}

const _: () = assert!(std::mem::size_of::<HistoryEntry>() == 32);
const _: () = assert!(
    ON_HAND_MAX < 1 << 40,
    "a count fits in 32 bits and a high byte"
);

impl HistoryEntry {
    fn new(at_ms: i64, action: Action, on_hand: u64, reserved: u64, tag: Tag) -> HistoryEntry {
        // The ledger refuses any count above ON_HAND_MAX before it gets here.
        assert!(
            on_hand <= ON_HAND_MAX && reserved <= ON_HAND_MAX,
            "counts within ON_HAND_MAX: {on_hand}, {reserved}"
        );
        HistoryEntry {
            at_ms,
            on_hand_low: on_hand as u32,
            reserved_low: reserved as u32,
            reservation: tag.reservation,
            detail: tag.detail,
            actor: tag.actor,
            high: [(on_hand >> 32) as u8, (reserved >> 32) as u8],
            action,
            marker: tag.marker,
        }
    }

    fn on_hand(&self) -> u64 {
        u64::from(self.high[0]) << 32 | u64::from(self.on_hand_low)
    }

    fn reserved(&self) -> u64 {
        u64::from(self.high[1]) << 32 | u64::from(self.reserved_low)
    }

    fn metadata(&self, detail: Option<&Detail>) -> Option<serde_json::Value> {
        match self.marker {
            Marker::None => None,
            Marker::Released(reason) => Some(serde_json::json!({ "reason": reason.as_str() })),
            Marker::Reacquired => Some(serde_json::json!({ "reacquired": true })),
            Marker::Adjusted => {
                Some(serde_json::json!({ "reason": detail.and_then(|d| d.reason.clone()) }))
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Product {
    /// The map's own key, shared with the items of sales (no copy each); reservations keep
    /// the product's slot instead.
    sku: Sku,
    name: Option<String>,
    low_stock_threshold: u64,
    on_hand: u64,
    reserved: u64,
    updated_at_ms: i64,
    history: history::History,
}

impl Product {
    fn version(&self) -> u64 {
        self.history.len() as u64
    }

    fn view(&self) -> ProductView {
        let available = self.on_hand - self.reserved;
        ProductView {
            sku: self.sku.to_string(),
            name: self.name.clone(),
            on_hand: self.on_hand,
            reserved: self.reserved,
            available,
            low_stock_threshold: self.low_stock_threshold,
            status: classify(available, self.low_stock_threshold),
            version: self.version(),
            updated_at: views::Timestamp(self.updated_at_ms),
        }
    }
}

/// A reservation as the log tells it. Kept for every reservation ever made (ids are
/// answered forever), so it is compact: one item inline, optional text boxed only when sent.
/// Handed out as a [`ReservationRef`], which names its items' products.
#[derive(Debug, Clone)]
pub struct Reservation {
    items: SmallVec<[Held; 1]>,
    pub status: ReservationStatus,
    pub reacquired: bool,
    pub fingerprint: u32,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub original_expires_at_ms: i64,
    /// Units sold of each item, when a completion sold less than the whole hold of some
    /// item. `None` before completion and when every item sold its whole hold, the usual
    /// case: no allocation, and 8 bytes where a `SmallVec` of the counts took 24. Boxed
    /// twice so that the pointer is thin; partial sales are rare.
    #[allow(clippy::box_collection)] // the box is the point: see above
    sold_less: Option<Box<Vec<u64>>>,
    text: Option<PackedText>,
}

// Kept for every reservation ever made: a 10M-record log of checkouts has 5M of them.
const _: () = assert!(std::mem::size_of::<Reservation>() == 72);

/// An item as a reservation keeps it: its product's slot, not its SKU. The hold's end finds
/// its product without a hash lookup and a string comparison (in replay, half the records
/// are ends), and the item takes 16 bytes where the SKU's shared pointer made it 24.
#[derive(Debug, Clone, Copy)]
struct Held {
    product: u32,
    quantity: u64,
}

impl Reservation {
    /// Units sold of each item, in the order of [`ReservationRef::items`], once completed.
    fn sold(&self) -> Option<impl Iterator<Item = u64> + '_> {
        (self.status == ReservationStatus::Completed).then(|| {
            self.items.iter().enumerate().map(|(n, item)| {
                self.sold_less
                    .as_ref()
                    .map_or(item.quantity, |sold| sold[n])
            })
        })
    }

    fn text(&self, field: TextField) -> Option<String> {
        self.text
            .as_ref()
            .and_then(|t| t.field(field as usize))
            .map(str::to_string)
    }
}

/// A reservation and the catalog its items' slots point into: what the ledger hands out.
#[derive(Debug, Clone, Copy)]
pub struct ReservationRef<'a> {
    reservation: &'a Reservation,
    products: &'a products::Products,
}

impl std::ops::Deref for ReservationRef<'_> {
    type Target = Reservation;

    fn deref(&self) -> &Reservation {
        self.reservation
    }
}

impl<'a> ReservationRef<'a> {
    /// Each item's SKU (the product's own) and the units held, in the order reserved.
    pub fn held(&self) -> impl Iterator<Item = (&'a Sku, u64)> + 'a {
        let products = self.products;
        self.reservation
            .items
            .iter()
            .map(move |held| (&products.at(held.product).sku, held.quantity))
    }

    /// The items as reserved, each with its SKU (a clone of the product's, no copy).
    pub fn items(&self) -> SmallVec<[Item; 1]> {
        self.held()
            .map(|(sku, quantity)| Item {
                sku: sku.clone(),
                quantity,
            })
            .collect()
    }

    /// The SKU of its home actor: see [`home_of`].
    pub fn home(&self) -> &'a Sku {
        smallest(self.held().map(|(sku, _)| sku))
    }
}

#[derive(Clone, Copy)]
enum TextField {
    SessionId = 0,
    UserId = 1,
    Reference = 2,
    Metadata = 3,
}

/// A reservation's optional free text (session id, user id, reference, metadata) in one
/// buffer instead of four strings: four u32 lengths (u32::MAX = absent), then the bytes.
/// Boxed twice so that the pointer each reservation keeps is thin (8 bytes, not 16): most
/// reservations carry no text, and those that do pay one more small allocation.
#[derive(Debug, Clone)]
struct PackedText(Box<Box<[u8]>>);

impl PackedText {
    const FIELDS: usize = 4;
    const HEADER_BYTES: usize = 4 * Self::FIELDS;

    fn pack(fields: [Option<&str>; Self::FIELDS]) -> Option<PackedText> {
        if fields.iter().all(Option::is_none) {
            return None;
        }
        let text_bytes: usize = fields.iter().flatten().map(|f| f.len()).sum();
        let mut bytes = Vec::with_capacity(Self::HEADER_BYTES + text_bytes);
        for field in &fields {
            let len = field.as_ref().map_or(u32::MAX, |f| {
                u32::try_from(f.len()).expect("free text is bounded far below 4 GiB")
            });
            bytes.extend_from_slice(&len.to_le_bytes());
        }
        for field in fields.iter().flatten() {
            bytes.extend_from_slice(field.as_bytes());
        }
        Some(PackedText(Box::new(bytes.into_boxed_slice())))
    }

    fn field(&self, index: usize) -> Option<&str> {
        let mut start = Self::HEADER_BYTES;
        for i in 0..Self::FIELDS {
            let mut len = [0u8; 4];
            len.copy_from_slice(&self.0[i * 4..i * 4 + 4]);
            let len = u32::from_le_bytes(len);
            if len == u32::MAX {
                if i == index {
                    return None;
                }
                continue;
            }
            let end = start + len as usize;
            if i == index {
                let text = std::str::from_utf8(&self.0[start..end]);
                return Some(text.expect("packed from strings, split at their lengths"));
            }
            start = end;
        }
        None
    }
}

#[derive(Debug, Clone)]
struct Sale {
    items: Vec<Item>,
    at_ms: i64,
    reference: Option<String>,
    fingerprint: u32,
}

/// The outcome of a product operation (PUT, restock, adjust, return), kept for idempotent
/// repeats: the product as it stood right after that record.
#[derive(Debug, Clone)]
pub struct ProductOp {
    pub kind: &'static str,
    pub fingerprint: u32,
    pub created: bool,
    pub view: ProductView,
    pub at_ms: i64,
}

#[derive(Debug, Default)]
pub struct Ledger {
    products: products::Products,
    /// Every product's history entries, in log order; a product keeps their slots
    /// ([`history::History`] says why).
    entries: arena::Arena<HistoryEntry>,
    /// The free text (reference, note, reason) of the records that had some, by slot: shared
    /// by the entries of one record.
    details: arena::Arena<Detail>,
    reservations: reservations::Reservations,
    sales: HashMap<Uuid, Sale>,
    product_ops: HashMap<Uuid, ProductOp>,
    /// Product-op ids in record order, to forget them after the retention period.
    product_op_order: VecDeque<(i64, Uuid)>,
    records: u64,
    /// Active reservations.
    active: usize,
    /// Actor names (token names, `anonymous`, `stockd`): few, so each is stored once and
    /// history entries carry its index.
    actor_names: Vec<Arc<str>>,
    actor_index: HashMap<String, u32>,
    /// Answers of product operations that cannot be repeated (no client id), kept only until
    /// the engine takes them; None during replay, when nobody waits for them.
    answers: Option<HashMap<Uuid, ProductOp>>,
}

fn add(a: u64, b: u64, what: &str) -> Result<u64, String> {
    a.checked_add(b)
        .filter(|v| *v <= ON_HAND_MAX)
        .ok_or_else(|| format!("{what} overflows ({a} + {b})"))
}

fn sub(a: u64, b: u64, what: &str) -> Result<u64, String> {
    a.checked_sub(b)
        .ok_or_else(|| format!("{what} underflows ({a} - {b})"))
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    fn intern(&mut self, actor: &str) -> u32 {
        if let Some(&index) = self.actor_index.get(actor) {
            return index;
        }
        let index = u32::try_from(self.actor_names.len()).expect("fewer than 2^32 token names");
        self.actor_names.push(Arc::from(actor));
        self.actor_index.insert(actor.to_string(), index);
        index
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// Applies durable records in log order: the log writer's batch (replay has its own
    /// way to the index, [`Ledger::replay`]).
    /// `Err` gives the index of the record that contradicts the log before it, as
    /// [`Ledger::apply`] does; the ledger is then not to be used again.
    ///
    /// The ids of the batch's new reservations go into the reservation index first, in a loop
    /// of their own ([`reservations`] says why), up to the first one known already: that
    /// record is then refused when it is applied, in its place.
    pub fn apply_batch<'a, I>(&mut self, records: I) -> Result<(), (usize, String)>
    where
        I: IntoIterator<Item = &'a Record>,
        I::IntoIter: Clone,
    {
        let records = records.into_iter();
        assert_eq!(self.reservations.indexed_ahead(), 0, "one batch at a time");
        for record in records.clone() {
            if let Event::Reserved { .. } = record.event {
                if !self.reservations.index_ahead(record.op_id) {
                    break;
                }
            }
        }
        for (i, record) in records.enumerate() {
            self.apply(record).map_err(|reason| (i, reason))?;
        }
        assert_eq!(
            self.reservations.indexed_ahead(),
            0,
            "every id indexed ahead was applied"
        );
        Ok(())
    }

    /// Applies one durable record. `Err` means the log contradicts itself (a bug, or a log
    /// that was edited): replay reports it as corruption at that record. After an `Err` the
    /// ledger is not to be used again (an operation of several items may be half applied).
    /// The ledger applies records borrowed ([`RecordRef`]) and copies what it keeps (strings
    /// are rare and small): replay decodes them so, without copying their text, and the
    /// log writer's records are viewed so here.
    pub fn apply(&mut self, record: &Record) -> Result<(), String> {
        // A product the writer creates keeps the record's SKU, shared with the actor's, not a
        // copy: a copy made a catalog of 1M products 30 MiB larger.
        let created = match &record.event {
            Event::ProductPut {
                sku, created: true, ..
            } => Some(sku),
            _ => None,
        };
        self.apply_located(&record.borrowed(), None, created)
    }

    /// Replays the log in `dir` into a new ledger. The reading thread works out where each
    /// reservation goes as it decodes ([`reservations::ReplayIndex`] says why) and gives each
    /// record its reservation's slot; this thread applies the records in order.
    pub fn replay(dir: &Path, mode: Mode) -> Result<(Ledger, ReplayOutcome), WalError> {
        let mut ledger = Ledger::new();
        let mut index = ReplayIndex::default();
        let outcome = replay_batches(
            dir,
            mode,
            &mut |record| index.locate(record),
            |records, located, _| {
                for (i, ((record, _), &located)) in records.iter().zip(located).enumerate() {
                    ledger
                        .apply_located(record, Some(located), None)
                        .map_err(|reason| (i, reason))?;
                }
                Ok(())
            },
        )?;
        match index.finish() {
            Ok((index, made)) => ledger.reservations.adopt(index, made),
            Err(twice) => return Err(made_twice_at(dir, twice)),
        }
        Ok((ledger, outcome))
    }

    /// [`Ledger::apply`], finding the record's reservation at the slot replay's index gave
    /// when `located` is set, else in the ledger's own index. A product created is given
    /// `owned_sku` (the record's own) if there is one, else a copy of the record's text.
    fn apply_located(
        &mut self,
        record: &RecordRef<'_>,
        located: Option<Located>,
        owned_sku: Option<&Sku>,
    ) -> Result<(), String> {
        let RecordRef {
            at_ms,
            actor,
            op_id,
            ref event,
        } = *record;
        let actor = self.intern(actor);
        let details = &mut self.details;
        let mut meta = |reference: Option<&str>,
                        note: Option<&str>,
                        reservation,
                        marker,
                        reason: Option<&str>| {
            let detail = (reference.is_some() || note.is_some() || reason.is_some()).then(|| {
                Slot::new(details.push(Detail {
                    reference: reference.map(str::to_string),
                    note: note.map(str::to_string),
                    reason: reason.map(str::to_string),
                }))
            });
            Tag {
                actor,
                reservation,
                marker,
                detail,
            }
        };
        let restock = matches!(event, EventRef::Restocked { .. });
        match *event {
            EventRef::ProductPut {
                sku,
                created,
                name,
                low_stock_threshold,
                on_hand,
                fingerprint,
            } => {
                let m = meta(None, None, None, Marker::None, None);
                if created {
                    if self.products.contains(sku.as_str()) {
                        return Err(format!("product {sku} created twice"));
                    }
                    let on_hand = on_hand.unwrap_or(0);
                    let sku = match owned_sku {
                        Some(owned) => {
                            debug_assert_eq!(owned.as_str(), sku.as_str());
                            owned.clone()
                        }
                        None => sku.to_sku(),
                    };
                    let mut p = Product {
                        sku,
                        name: name.map(str::to_string),
                        low_stock_threshold: low_stock_threshold
                            .unwrap_or(LOW_STOCK_THRESHOLD_DEFAULT),
                        on_hand: 0,
                        reserved: 0,
                        updated_at_ms: at_ms,
                        history: history::History::default(),
                    };
                    push(
                        &mut self.entries,
                        &mut p,
                        at_ms,
                        Action::Create,
                        add(0, on_hand, "on_hand")?,
                        0,
                        m,
                    );
                    self.products.insert(p);
                } else {
                    let p = product_in(&mut self.products, sku)?;
                    if let Some(name) = name {
                        p.name = Some(name.to_string());
                    }
                    if let Some(t) = low_stock_threshold {
                        p.low_stock_threshold = t;
                    }
                    let new_on_hand = on_hand.unwrap_or(p.on_hand);
                    if new_on_hand < p.reserved {
                        return Err(format!(
                            "{sku}: set on_hand {new_on_hand} below reserved {}",
                            p.reserved
                        ));
                    }
                    let reserved = p.reserved;
                    push(
                        &mut self.entries,
                        p,
                        at_ms,
                        Action::Set,
                        new_on_hand,
                        reserved,
                        m,
                    );
                }
                self.remember_op(at_ms, op_id, sku, "product_put", fingerprint, created);
            }
            // Stock received, or returned by a customer: on_hand grows, nothing else changes.
            EventRef::Restocked {
                sku,
                quantity,
                reference,
                note,
                fingerprint,
            }
            | EventRef::Returned {
                sku,
                quantity,
                reference,
                note,
                fingerprint,
            } => {
                let (action, kind) = if restock {
                    (Action::Restock, "restock")
                } else {
                    (Action::Return, "return")
                };
                let p = product_in(&mut self.products, sku)?;
                let on_hand = add(p.on_hand, quantity, "on_hand")?;
                let reserved = p.reserved;
                let m = meta(reference, note, None, Marker::None, None);
                push(&mut self.entries, p, at_ms, action, on_hand, reserved, m);
                self.remember_op(at_ms, op_id, sku, kind, fingerprint, false);
            }
            EventRef::Adjusted {
                sku,
                delta,
                reason,
                reference,
                note,
                fingerprint,
            } => {
                let p = product_in(&mut self.products, sku)?;
                let on_hand = if delta >= 0 {
                    add(p.on_hand, delta.unsigned_abs(), "on_hand")?
                } else {
                    sub(p.on_hand, delta.unsigned_abs(), "on_hand")?
                };
                if on_hand < p.reserved {
                    return Err(format!(
                        "{sku}: adjust leaves on_hand {on_hand} below reserved {}",
                        p.reserved
                    ));
                }
                let reserved = p.reserved;
                let m = meta(reference, note, None, Marker::Adjusted, Some(reason));
                push(
                    &mut self.entries,
                    p,
                    at_ms,
                    Action::Adjust,
                    on_hand,
                    reserved,
                    m,
                );
                self.remember_op(at_ms, op_id, sku, "adjust", fingerprint, false);
            }
            EventRef::Sold {
                ref items,
                reference,
                fingerprint,
            } => {
                let m = meta(reference, None, None, Marker::None, None);
                let mut kept = Vec::with_capacity(items.len());
                for item in items {
                    let p = product_in(&mut self.products, item.sku)?;
                    let on_hand = sub(p.on_hand, item.quantity, "on_hand")?;
                    if on_hand < p.reserved {
                        return Err(format!("{}: sale takes reserved stock", item.sku));
                    }
                    let reserved = p.reserved;
                    push(
                        &mut self.entries,
                        p,
                        at_ms,
                        Action::Sale,
                        on_hand,
                        reserved,
                        m,
                    );
                    kept.push(interned(p, item.quantity));
                }
                self.sales.insert(
                    op_id,
                    Sale {
                        items: kept,
                        at_ms,
                        reference: reference.map(str::to_string),
                        fingerprint,
                    },
                );
            }
            EventRef::Reserved {
                ref items,
                expires_at_ms,
                session_id,
                user_id,
                reference,
                metadata,
                fingerprint,
            } => {
                let twice = || format!("reservation {op_id} created twice");
                let slot = match located {
                    Some(located) => Some(located.slot().ok_or_else(twice)?),
                    None if self.reservations.is_new(&op_id) => None,
                    None => return Err(twice()),
                };
                let made_at = Slot::new(slot.unwrap_or_else(|| self.reservations.next_slot()));
                let m = meta(reference, None, Some(made_at), Marker::None, None);
                let mut kept: SmallVec<[Held; 1]> = SmallVec::with_capacity(items.len());
                for item in items {
                    let (product, p) = self
                        .products
                        .slot_mut(item.sku.as_str())
                        .ok_or_else(|| unknown_product(item.sku))?;
                    let reserved = add(p.reserved, item.quantity, "reserved")?;
                    if reserved > p.on_hand {
                        return Err(format!(
                            "{}: reserved {reserved} exceeds on_hand {}",
                            item.sku, p.on_hand
                        ));
                    }
                    let on_hand = p.on_hand;
                    push(
                        &mut self.entries,
                        p,
                        at_ms,
                        Action::Reserve,
                        on_hand,
                        reserved,
                        m,
                    );
                    kept.push(Held {
                        product,
                        quantity: item.quantity,
                    });
                }
                self.active += 1;
                let text = PackedText::pack([session_id, user_id, reference, metadata]);
                let reservation = Reservation {
                    items: kept,
                    status: ReservationStatus::Active,
                    reacquired: false,
                    fingerprint,
                    created_at_ms: at_ms,
                    expires_at_ms,
                    original_expires_at_ms: expires_at_ms,
                    sold_less: None,
                    text,
                };
                match slot {
                    Some(slot) => self.reservations.insert_located(slot, op_id, reservation),
                    None => self.reservations.insert(op_id, reservation),
                }
            }
            EventRef::Completed {
                reservation_id,
                ref sold,
                reacquired,
                reference,
            } => {
                let (slot, r) = self
                    .reservations
                    .find_mut(&reservation_id, located)
                    .ok_or_else(|| unknown("completion", &reservation_id, located))?;
                let expected = if reacquired {
                    ReservationStatus::Expired
                } else {
                    ReservationStatus::Active
                };
                if r.status != expected || sold.len() != r.items.len() {
                    return Err(format!(
                        "completion of reservation {reservation_id} in state {:?}",
                        r.status
                    ));
                }
                let marker = if reacquired {
                    Marker::Reacquired
                } else {
                    Marker::None
                };
                let m = meta(reference, None, Some(Slot::new(slot)), marker, None);
                for (item, sold_qty) in r.items.iter().zip(sold) {
                    let p = self.products.at_mut(item.product);
                    if *sold_qty > item.quantity {
                        return Err(format!(
                            "{}: sold {sold_qty} of a hold of {}",
                            p.sku, item.quantity
                        ));
                    }
                    let reserved = if reacquired {
                        p.reserved
                    } else {
                        sub(p.reserved, item.quantity, "reserved")?
                    };
                    let on_hand = sub(p.on_hand, *sold_qty, "on_hand")?;
                    if reserved > on_hand {
                        return Err(format!(
                            "{}: completion leaves reserved above on_hand",
                            p.sku
                        ));
                    }
                    push(
                        &mut self.entries,
                        p,
                        at_ms,
                        Action::Complete,
                        on_hand,
                        reserved,
                        m,
                    );
                }
                r.status = ReservationStatus::Completed;
                let all_sold = r.items.iter().zip(sold).all(|(i, q)| i.quantity == *q);
                r.sold_less = (!all_sold).then(|| Box::new(sold.to_vec()));
                r.reacquired = reacquired;
                if !reacquired {
                    self.active -= 1;
                }
            }
            EventRef::Released {
                reservation_id,
                reason,
                note,
            } => {
                let (slot, r) = self
                    .reservations
                    .find_mut(&reservation_id, located)
                    .ok_or_else(|| unknown("release", &reservation_id, located))?;
                if r.status != ReservationStatus::Active {
                    return Err(format!(
                        "release of reservation {reservation_id} in state {:?}",
                        r.status
                    ));
                }
                let m = meta(
                    None,
                    note,
                    Some(Slot::new(slot)),
                    Marker::Released(reason),
                    None,
                );
                for item in &r.items {
                    let p = self.products.at_mut(item.product);
                    let reserved = sub(p.reserved, item.quantity, "reserved")?;
                    let on_hand = p.on_hand;
                    push(
                        &mut self.entries,
                        p,
                        at_ms,
                        Action::Release,
                        on_hand,
                        reserved,
                        m,
                    );
                }
                r.status = match reason {
                    ReleaseReason::Expired => ReservationStatus::Expired,
                    ReleaseReason::Cancelled | ReleaseReason::Aborted => {
                        ReservationStatus::Cancelled
                    }
                };
                self.active -= 1;
            }
            EventRef::Extended {
                reservation_id,
                expires_at_ms,
            } => {
                let (_, r) = self
                    .reservations
                    .find_mut(&reservation_id, located)
                    .ok_or_else(|| unknown("extension", &reservation_id, located))?;
                if r.status != ReservationStatus::Active {
                    return Err(format!(
                        "extension of reservation {reservation_id} in state {:?}",
                        r.status
                    ));
                }
                r.expires_at_ms = expires_at_ms;
            }
        }
        self.records += 1;
        Ok(())
    }

    fn remember_op(
        &mut self,
        at_ms: i64,
        op_id: Uuid,
        sku: SkuRef<'_>,
        kind: &'static str,
        fingerprint: u32,
        created: bool,
    ) {
        // Fingerprint 0: the client gave no id, so the operation can never be repeated and
        // only the engine, answering it now, needs its outcome.
        if fingerprint == 0 {
            if let Some(answers) = &mut self.answers {
                let view = view_of_applied(&self.products, sku);
                let op = ProductOp {
                    kind,
                    fingerprint,
                    created,
                    view,
                    at_ms,
                };
                answers.insert(op_id, op);
            }
            return;
        }
        let view = view_of_applied(&self.products, sku);
        self.product_ops.insert(
            op_id,
            ProductOp {
                kind,
                fingerprint,
                created,
                view,
                at_ms,
            },
        );
        self.product_op_order.push_back((at_ms, op_id));
        // Forget product-op ids past the retention period (bounded memory).
        let horizon = at_ms - OPERATION_ID_RETENTION_MS;
        while let Some((at, id)) = self.product_op_order.front().copied() {
            if at >= horizon {
                break;
            }
            self.product_op_order.pop_front();
            self.product_ops.remove(&id);
        }
    }

    // ---- reads ----

    pub fn product(&self, sku: &str) -> Option<ProductView> {
        self.products.get(sku).map(Product::view)
    }

    pub fn product_count(&self) -> usize {
        self.products.len()
    }

    /// Products in SKU order after `after`, optionally filtered by status.
    pub fn list_products(
        &self,
        status: Option<StockStatus>,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<ProductView>, Option<String>) {
        use std::ops::Bound;
        let lower = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        for p in self.products.from(lower) {
            let view = p.view();
            if status.is_some_and(|s| s != view.status) {
                continue;
            }
            if out.len() == limit {
                more = true;
                break;
            }
            out.push(view);
        }
        let next = if more {
            out.last().map(|v| v.sku.clone())
        } else {
            None
        };
        (out, next)
    }

    /// History newest first, entries with `seq < before`, optionally one action only. Looks
    /// at most [`HISTORY_SCAN_ENTRIES_MAX`] entries: a filtered page may come back short (even
    /// empty) with a `next`, and only the last page has none.
    pub fn history(
        &self,
        sku: &str,
        before: Option<u64>,
        action: Option<Action>,
        limit: usize,
    ) -> Option<(Vec<HistoryView>, Option<u64>)> {
        let p = self.products.get(sku)?;
        let end = before.map_or(p.history.len(), |b| {
            (b.saturating_sub(1) as usize).min(p.history.len())
        });
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut next = None;
        for (scanned, index) in (0..end).rev().enumerate() {
            if scanned == HISTORY_SCAN_ENTRIES_MAX {
                // Not looked at yet: the next page starts with this entry.
                next = Some(index as u64 + 2);
                break;
            }
            let e = self.history_entry(p, index);
            if action.is_some_and(|a| a != e.action) {
                continue;
            }
            if out.len() == limit {
                next = out.last().map(|v: &HistoryView| v.seq);
                break;
            }
            let (on_hand_before, reserved_before) = match index.checked_sub(1) {
                Some(previous) => {
                    let previous = self.history_entry(p, previous);
                    (previous.on_hand(), previous.reserved())
                }
                None => (0, 0),
            };
            let detail = e.detail.map(|slot| self.details.get(slot.get()));
            out.push(HistoryView {
                seq: index as u64 + 1,
                at: views::Timestamp(e.at_ms),
                action: e.action.as_str(),
                quantity_before: on_hand_before,
                quantity_after: e.on_hand(),
                change: e.on_hand() as i64 - on_hand_before as i64,
                reserved_before,
                reserved_after: e.reserved(),
                actor: self.actor_names[e.actor as usize].to_string(),
                reference: detail.and_then(|d| d.reference.clone()),
                reservation_id: e
                    .reservation
                    .map(|slot| self.reservations.id_at(slot.get())),
                note: detail.and_then(|d| d.note.clone()),
                metadata: e.metadata(detail),
            });
        }
        Some((out, next))
    }

    /// `p`'s history entry at `index` (`seq - 1`), through the slot the product keeps.
    fn history_entry(&self, p: &Product, index: usize) -> &HistoryEntry {
        self.entries.get(p.history.get(index))
    }

    pub fn reservation(&self, id: &Uuid) -> Option<ReservationRef<'_>> {
        let reservation = self.reservations.get(id)?;
        Some(self.with_products(reservation))
    }

    fn with_products<'a>(&'a self, reservation: &'a Reservation) -> ReservationRef<'a> {
        ReservationRef {
            reservation,
            products: &self.products,
        }
    }

    /// The reservation as it stands now.
    pub fn reservation_view(&self, id: &Uuid) -> Option<ReservationView> {
        let r = self.reservation(id)?;
        Some(reservation_view(id, r, r.status, r.expires_at_ms))
    }

    /// The reservation as its creation answered it (for idempotent repeats of the create).
    pub fn reservation_created_view(&self, id: &Uuid) -> Option<ReservationView> {
        let r = self.reservation(id)?;
        Some(ReservationView::created(
            *id,
            r.items().into_vec(),
            r.created_at_ms,
            r.original_expires_at_ms,
            r.text(TextField::SessionId),
            r.text(TextField::UserId),
            r.text(TextField::Reference),
            parse_metadata(r.text(TextField::Metadata).as_deref()),
        ))
    }

    pub fn sale_view(&self, id: &Uuid) -> Option<SaleView> {
        let s = self.sales.get(id)?;
        Some(SaleView {
            id: *id,
            items: s.items.clone(),
            at: views::Timestamp(s.at_ms),
            reference: s.reference.clone(),
        })
    }

    pub fn sale_fingerprint(&self, id: &Uuid) -> Option<u32> {
        self.sales.get(id).map(|s| s.fingerprint)
    }

    /// From now on, keep the answers of unrepeatable product operations for the engine to take
    /// (after replay: during it, nobody waits for them).
    pub fn serve_answers(&mut self) {
        self.answers.get_or_insert_with(HashMap::default);
    }

    /// The outcome of an unrepeatable product operation, handed over once.
    pub fn take_answer(&mut self, id: &Uuid) -> Option<ProductOp> {
        self.answers.as_mut()?.remove(id)
    }

    pub fn product_op(&self, id: &Uuid) -> Option<&ProductOp> {
        self.product_ops.get(id)
    }

    pub fn available(&self, sku: &str) -> Option<u64> {
        self.products.get(sku).map(|p| p.on_hand - p.reserved)
    }

    /// Products with their counts and version, for starting the actors.
    pub fn product_counts(&self) -> impl Iterator<Item = (&Sku, u64, u64, u64)> + '_ {
        self.products
            .iter()
            .map(|p| (&p.sku, p.on_hand, p.reserved, p.version()))
    }

    pub fn reservations(&self) -> impl Iterator<Item = (&Uuid, ReservationRef<'_>)> + '_ {
        self.reservations
            .iter()
            .map(|(id, r)| (id, self.with_products(r)))
    }

    /// Reservations holding stock (kept as records apply: read at every metrics scrape).
    pub fn active_reservations(&self) -> usize {
        self.active
    }

    /// Invariants 1 and 7 over the whole ledger: 0 <= reserved <= on_hand, reserved equals the
    /// sum of active holds, and each product's history chains (before = previous after).
    pub fn check_invariants(&self) -> Result<(), String> {
        let active = self
            .reservations
            .values()
            .filter(|r| r.status == ReservationStatus::Active)
            .count();
        if active != self.active {
            return Err(format!(
                "{active} active reservations, counted {}",
                self.active
            ));
        }
        let mut held: HashMap<&Sku, u64> = HashMap::default();
        for (_, r) in self
            .reservations()
            .filter(|(_, r)| r.status == ReservationStatus::Active)
        {
            for (sku, quantity) in r.held() {
                *held.entry(sku).or_default() += quantity;
            }
        }
        for p in self.products.iter() {
            let sku = &p.sku;
            if p.reserved > p.on_hand || p.on_hand > ON_HAND_MAX {
                return Err(format!(
                    "{sku}: reserved {} on_hand {}",
                    p.reserved, p.on_hand
                ));
            }
            let h = held.get(sku).copied().unwrap_or(0);
            if h != p.reserved {
                return Err(format!(
                    "{sku}: reserved {} but active holds sum to {h}",
                    p.reserved
                ));
            }
            // Entries store only the counts after; before is the previous entry's, so the
            // chain holds by construction and only its end needs checking.
            let last = p.history.last().map_or((0, 0), |slot| {
                let e = self.entries.get(slot);
                (e.on_hand(), e.reserved())
            });
            if last != (p.on_hand, p.reserved) {
                return Err(format!("{sku}: history does not end at the current counts"));
            }
        }
        Ok(())
    }
}

/// Why a record that names a reservation cannot be applied when the reservation is not to be
/// found. Replay's index ([`reservations::ReplayIndex`]) keeps only the reservations that a
/// later record may still name, so there "unknown" also covers one that has ended.
fn unknown(what: &str, id: &Uuid, located: Option<Located>) -> String {
    match located {
        None => format!("{what} of unknown reservation {id}"),
        Some(_) => format!("{what} of unknown reservation {id} (never made, or ended before)"),
    }
}

/// The corruption error for an id made twice that replay found only once the log was read
/// (its first reservation had ended by then, so nothing before had noticed): the log is read
/// again, up to the record that made reservation number `slot`. Only a log that contradicts
/// itself gets here.
fn made_twice_at(dir: &Path, twice: MadeTwice) -> WalError {
    let mut made = 0u32;
    let read = crate::wal::replay::replay(dir, Mode::ReadOnly, |record, _| {
        if let Event::Reserved { .. } = record.event {
            if made == twice.slot {
                return Err(format!("reservation {} created twice", twice.id));
            }
            made += 1;
        }
        Ok(())
    });
    match read {
        Err(e) => e,
        Ok(_) => WalError::Corrupt {
            path: dir.to_path_buf(),
            offset: 0,
            reason: format!(
                "reservation {} created twice, but a second reading did not find it: the log changed while it was read",
                twice.id
            ),
        },
    }
}

fn product_in<'a>(
    products: &'a mut products::Products,
    sku: SkuRef<'_>,
) -> Result<&'a mut Product, String> {
    products
        .get_mut(sku.as_str())
        .ok_or_else(|| unknown_product(sku))
}

fn unknown_product(sku: SkuRef<'_>) -> String {
    format!("record names unknown product {sku}")
}

/// The view of a product that the record just applied names.
fn view_of_applied(products: &products::Products, sku: SkuRef<'_>) -> ProductView {
    products
        .get(sku.as_str())
        .expect("the record just applied names this product")
        .view()
}

/// The item as kept: its SKU shared with the product's own key, not the decoded copy.
fn interned(p: &Product, quantity: u64) -> Item {
    Item {
        sku: p.sku.clone(),
        quantity,
    }
}

fn push(
    entries: &mut arena::Arena<HistoryEntry>,
    p: &mut Product,
    at_ms: i64,
    action: Action,
    on_hand: u64,
    reserved: u64,
    tag: Tag,
) {
    let slot = entries.push(HistoryEntry::new(at_ms, action, on_hand, reserved, tag));
    p.history.push(slot);
    p.on_hand = on_hand;
    p.reserved = reserved;
    p.updated_at_ms = at_ms;
}

fn reservation_view(
    id: &Uuid,
    r: ReservationRef<'_>,
    status: ReservationStatus,
    expires_at_ms: i64,
) -> ReservationView {
    ReservationView {
        id: *id,
        status: status.as_str(),
        items: r.items().into_vec(),
        created_at: views::Timestamp(r.created_at_ms),
        expires_at: views::Timestamp(expires_at_ms),
        session_id: r.text(TextField::SessionId),
        user_id: r.text(TextField::UserId),
        reference: r.text(TextField::Reference),
        metadata: parse_metadata(r.text(TextField::Metadata).as_deref()),
        sold_items: r.sold().map(|sold| {
            r.held()
                .zip(sold)
                .map(|((sku, _), quantity)| Item {
                    sku: sku.clone(),
                    quantity,
                })
                .collect()
        }),
        reacquired: r.reacquired,
    }
}

/// Client metadata is kept as JSON text in the log.
fn parse_metadata(text: Option<&str>) -> Option<serde_json::Value> {
    text.and_then(|m| serde_json::from_str(m).ok())
}

/// The actor that owns a reservation's status and timer: the one of its smallest SKU.
pub fn home_of(items: &[Item]) -> &Sku {
    smallest(items.iter().map(|item| &item.sku))
}

fn smallest<'a>(skus: impl Iterator<Item = &'a Sku>) -> &'a Sku {
    skus.min().expect("a reservation has at least one item")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64, op_id: Uuid, event: Event) -> Record {
        Record {
            at_ms: 1_763_700_000_000 + n as i64,
            actor: "anonymous".into(),
            op_id,
            event,
        }
    }

    fn create(ledger: &mut Ledger, sku: &str) {
        let event = Event::ProductPut {
            sku: Sku::parse(sku).expect("valid"),
            created: true,
            name: None,
            low_stock_threshold: None,
            on_hand: Some(1_000_000),
            fingerprint: 0,
        };
        let n = ledger.records();
        ledger
            .apply(&record(n, Uuid::new_v4(), event))
            .expect("applies");
    }

    /// Holds `quantity` of `sku` under a new id, which it returns.
    fn reserve(ledger: &mut Ledger, sku: &str, quantity: u64) -> Uuid {
        let id = Uuid::new_v4();
        let event = Event::Reserved {
            items: smallvec::smallvec![Item {
                sku: Sku::parse(sku).expect("valid"),
                quantity,
            }],
            expires_at_ms: i64::MAX,
            session_id: None,
            user_id: None,
            reference: None,
            metadata: None,
            fingerprint: 0,
        };
        let n = ledger.records();
        ledger.apply(&record(n, id, event)).expect("applies");
        id
    }

    /// Token names are stored once and entries keep an index: runs of one name and switches
    /// between names must each read back as the record's own.
    #[test]
    fn each_history_entry_names_its_own_records_token() {
        let mut ledger = Ledger::new();
        create(&mut ledger, "TOKENS-1");
        let names = ["shop", "shop", "admin", "shop", "ops", "ops", "admin"];
        for name in names {
            let n = ledger.records();
            let mut restock = record(
                n,
                Uuid::new_v4(),
                Event::Restocked {
                    sku: Sku::parse("TOKENS-1").expect("valid"),
                    quantity: 1,
                    reference: None,
                    note: None,
                    fingerprint: 0,
                },
            );
            restock.actor = name.into();
            ledger.apply(&restock).expect("applies");
        }
        let (entries, _) = ledger
            .history("TOKENS-1", None, None, 100)
            .expect("the product");
        // Newest first; the oldest entry is the product's creation by "anonymous".
        let read: Vec<&str> = entries.iter().rev().map(|e| e.actor.as_str()).collect();
        let mut expected = vec!["anonymous"];
        expected.extend(names);
        assert_eq!(read, expected);
    }

    /// A product the log writer creates shares the record's SKU string (and so the actor's)
    /// instead of keeping a copy; one replayed has its own. (SKUs of up to 23 bytes are kept
    /// inline, with nothing to share: this one is longer, so it has a string on the heap.)
    #[test]
    fn a_product_created_by_the_writer_shares_the_records_sku() {
        let sku = Sku::parse("SHARED-1-LONGER-THAN-23-BYTES").expect("valid");
        let event = Event::ProductPut {
            sku: sku.clone(),
            created: true,
            name: None,
            low_stock_threshold: None,
            on_hand: Some(5),
            fingerprint: 0,
        };
        let mut ledger = Ledger::new();
        ledger
            .apply(&record(0, Uuid::new_v4(), event))
            .expect("applies");
        let kept = &ledger
            .products
            .get("SHARED-1-LONGER-THAN-23-BYTES")
            .expect("created")
            .sku;
        assert_eq!(kept, &sku);
        assert!(
            std::ptr::eq(kept.as_str(), sku.as_str()),
            "the ledger's SKU is the record's, not a copy"
        );
    }

    #[test]
    fn each_product_reads_back_its_own_entries_from_the_shared_arena() {
        // Three products' entries interleave in the ledger's one arena; "A" gets most of them,
        // so its slots cross from the small head into chunks. Each product must read back
        // exactly its own entries, in its own order, chained.
        let skus = ["A", "B", "C"];
        let mut ledger = Ledger::new();
        for sku in skus {
            create(&mut ledger, sku);
        }
        let mut made: HashMap<&str, Vec<Uuid>> = HashMap::default();
        for n in 0..5_000u64 {
            let sku = skus[[0, 0, 1, 0, 2][n as usize % 5]];
            let id = reserve(&mut ledger, sku, n % 7 + 1);
            made.entry(sku).or_default().push(id);
        }
        assert!(
            made["A"].len() > 2 * 1024 + 1,
            "A's slots fill the head and reach a second chunk"
        );
        for sku in skus {
            let ids = &made[sku];
            let (entries, next) = ledger
                .history(sku, None, None, ids.len() + 1)
                .expect("product exists");
            assert_eq!(next, None);
            assert_eq!(
                entries.len(),
                ids.len() + 1,
                "{sku}: create + one per reserve"
            );
            // Newest first: the reserves in reverse order of making, then the create.
            let reserved: Vec<Option<Uuid>> = entries[..ids.len()]
                .iter()
                .map(|e| e.reservation_id)
                .collect();
            let expected: Vec<Option<Uuid>> = ids.iter().rev().map(|id| Some(*id)).collect();
            assert_eq!(reserved, expected, "{sku}: its own reservations in order");
            assert_eq!(entries.last().map(|e| e.action), Some("create"));
            for pair in entries.windows(2) {
                assert_eq!(pair[0].seq, pair[1].seq + 1);
                assert_eq!(pair[0].reserved_before, pair[1].reserved_after);
                assert_eq!(pair[0].quantity_before, pair[1].quantity_after);
            }
            let product = ledger.products.get(sku).expect("exists");
            assert_eq!(entries[0].reserved_after, product.reserved);
        }
        ledger.check_invariants().expect("consistent");
    }

    #[test]
    fn compact_entries_keep_counts_past_32_bits_ids_and_text() {
        // Counts either side of 2^32 and at ON_HAND_MAX, stored as 32 bits and a high byte;
        // the reservation id and the free text, stored as slots: each must read back whole.
        let mut ledger = Ledger::new();
        create(&mut ledger, "A");
        let n = ledger.records();
        let restock = Event::Restocked {
            sku: Sku::parse("A").expect("valid"),
            quantity: ON_HAND_MAX - 1_000_000,
            reference: Some("po-7".into()),
            note: Some("dock 2".into()),
            fingerprint: 0,
        };
        ledger
            .apply(&record(n, Uuid::new_v4(), restock))
            .expect("applies");
        let below = (1u64 << 32) - 1;
        let held = [
            reserve(&mut ledger, "A", below),
            reserve(&mut ledger, "A", 2),
        ];
        let n = ledger.records();
        let release = Event::Released {
            reservation_id: held[0],
            reason: ReleaseReason::Cancelled,
            note: Some("changed mind".into()),
        };
        ledger
            .apply(&record(n, Uuid::new_v4(), release))
            .expect("applies");
        let (entries, _) = ledger.history("A", None, None, 10).expect("exists");
        let counts: Vec<_> = entries
            .iter()
            .rev()
            .map(|e| (e.action, e.quantity_after, e.reserved_after))
            .collect();
        assert_eq!(
            counts,
            [
                ("create", 1_000_000, 0),
                ("restock", ON_HAND_MAX, 0),
                ("reserve", ON_HAND_MAX, below),
                ("reserve", ON_HAND_MAX, below + 2),
                ("release", ON_HAND_MAX, 2),
            ]
        );
        let ids: Vec<_> = entries.iter().rev().map(|e| e.reservation_id).collect();
        assert_eq!(
            ids,
            [None, None, Some(held[0]), Some(held[1]), Some(held[0])]
        );
        let restocked = &entries[3];
        assert_eq!(
            (restocked.reference.as_deref(), restocked.note.as_deref()),
            (Some("po-7"), Some("dock 2"))
        );
        assert_eq!(entries[0].note.as_deref(), Some("changed mind"));
        assert_eq!(entries[0].reference, None);
        assert_eq!(
            entries[0].metadata,
            Some(serde_json::json!({ "reason": "cancelled" }))
        );
        ledger.check_invariants().expect("consistent");
    }

    #[test]
    fn sold_units_are_kept_only_when_a_completion_sold_less_than_held() {
        let mut ledger = Ledger::new();
        create(&mut ledger, "A");
        let (whole, part) = (reserve(&mut ledger, "A", 3), reserve(&mut ledger, "A", 5));
        fn sold(ledger: &Ledger, id: &Uuid) -> Option<Vec<u64>> {
            let view = ledger.reservation_view(id).expect("made");
            view.sold_items
                .map(|items| items.iter().map(|i| i.quantity).collect())
        }
        assert_eq!(sold(&ledger, &whole), None, "not completed yet");
        assert_eq!(sold(&ledger, &part), None, "not completed yet");
        for (id, units) in [(whole, 3), (part, 2)] {
            let n = ledger.records();
            let event = Event::Completed {
                reservation_id: id,
                sold: smallvec::smallvec![units],
                reacquired: false,
                reference: None,
            };
            ledger
                .apply(&record(n, Uuid::new_v4(), event))
                .expect("applies");
        }
        assert!(ledger
            .reservations
            .get(&whole)
            .expect("made")
            .sold_less
            .is_none());
        assert_eq!(sold(&ledger, &whole), Some(vec![3]));
        assert_eq!(sold(&ledger, &part), Some(vec![2]));
        let p = ledger.products.get("A").expect("exists");
        assert_eq!((p.on_hand, p.reserved), (1_000_000 - 5, 0));
        ledger.check_invariants().expect("consistent");
    }

    #[test]
    fn packed_text_keeps_each_field_absent_empty_or_set() {
        let fields = [
            Some("session-1".to_string()),
            None,
            Some(String::new()),
            Some("{\"k\":\"ü\"}".to_string()),
        ];
        let packed = PackedText::pack(fields.each_ref().map(Option::as_deref)).expect("some text");
        for (i, field) in fields.iter().enumerate() {
            assert_eq!(packed.field(i), field.as_deref(), "field {i}");
        }
        assert!(PackedText::pack([None, None, None, None]).is_none());
    }

    #[test]
    fn a_filtered_page_looks_at_a_bounded_number_of_entries_and_says_where_to_go_on() {
        let mut ledger = Ledger::new();
        create(&mut ledger, "A");
        let reserves = HISTORY_SCAN_ENTRIES_MAX + 10;
        for _ in 0..reserves {
            reserve(&mut ledger, "A", 1);
        }
        // The only `create` is the oldest entry, past what one page may look at.
        let (first, next) = ledger
            .history("A", None, Some(Action::Create), 50)
            .expect("product exists");
        assert!(first.is_empty());
        let next = next.expect("a page cut short says where to go on");
        // Everything newer than `next` was looked at, nothing older.
        assert_eq!(next, (reserves + 1 - HISTORY_SCAN_ENTRIES_MAX + 1) as u64);
        let (second, last) = ledger
            .history("A", Some(next), Some(Action::Create), 50)
            .expect("product exists");
        assert_eq!(
            second.iter().map(|e| (e.seq, e.action)).collect::<Vec<_>>(),
            [(1, "create")]
        );
        assert_eq!(last, None);
        // Unfiltered pages are bounded by their limit and unaffected.
        let (page, next) = ledger.history("A", None, None, 1000).expect("exists");
        assert_eq!((page.len(), next), (1000, Some(page[999].seq)));
    }
}
