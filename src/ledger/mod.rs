//! The ledger: the state implied by the durable log, applied record by record in log order.
//!
//! The log writer applies each batch here right after its fdatasync and before it wakes the
//! waiting replies, and replay at start applies the same records through the same function.
//! So every read (product, list, history, reservation, availability) shows durable state
//! only (invariant 6), and the history chain after a restart is the one clients saw before
//! (invariant 7). The actors hold the live, possibly not-yet-durable counts that decisions
//! are made against; the ledger is what may be shown.

pub mod views;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use uuid::Uuid;

use crate::domain::limits::{LOW_STOCK_THRESHOLD_DEFAULT, ON_HAND_MAX, OPERATION_ID_RETENTION_MS};
use crate::domain::{classify, Item, ReleaseReason, ReservationStatus, Sku, StockStatus};
use crate::wal::{Event, Record};
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

/// Who and why, for the history entries of one record. Compact and cheap to clone (one per
/// item of a multi-item record): the actor name is interned, free text is allocated only when
/// a record has some, and `metadata` is rendered to JSON only when read.
#[derive(Debug, Clone)]
struct Tag {
    actor: Arc<str>,
    reservation_id: Option<Uuid>,
    marker: Marker,
    detail: Option<Arc<Detail>>,
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

impl Tag {
    fn metadata(&self) -> Option<serde_json::Value> {
        match self.marker {
            Marker::None => None,
            Marker::Released(reason) => Some(serde_json::json!({ "reason": reason.as_str() })),
            Marker::Reacquired => Some(serde_json::json!({ "reacquired": true })),
            Marker::Adjusted => Some(
                serde_json::json!({ "reason": self.detail.as_ref().and_then(|d| d.reason.clone()) }),
            ),
        }
    }
}

#[derive(Debug, Clone)]
struct HistoryEntry {
    at_ms: i64,
    action: Action,
    on_hand_before: u64,
    on_hand_after: u64,
    reserved_before: u64,
    reserved_after: u64,
    tag: Tag,
}

#[derive(Debug, Clone)]
struct Product {
    name: Option<String>,
    low_stock_threshold: u64,
    on_hand: u64,
    reserved: u64,
    updated_at_ms: i64,
    history: Vec<HistoryEntry>,
}

impl Product {
    fn version(&self) -> u64 {
        self.history.len() as u64
    }

    fn view(&self, sku: &Sku) -> ProductView {
        let available = self.on_hand - self.reserved;
        ProductView {
            sku: sku.to_string(),
            name: self.name.clone(),
            on_hand: self.on_hand,
            reserved: self.reserved,
            available,
            low_stock_threshold: self.low_stock_threshold,
            status: classify(available, self.low_stock_threshold),
            version: self.version(),
            updated_at: views::rfc3339_ms(self.updated_at_ms),
        }
    }
}

/// A reservation as the log tells it.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub items: Vec<Item>,
    pub status: ReservationStatus,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub original_expires_at_ms: i64,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub reference: Option<String>,
    pub metadata: Option<String>,
    pub fingerprint: u32,
    pub sold: Option<Vec<u64>>,
    pub reacquired: bool,
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
    products: BTreeMap<Sku, Product>,
    reservations: HashMap<Uuid, Reservation>,
    sales: HashMap<Uuid, Sale>,
    product_ops: HashMap<Uuid, ProductOp>,
    /// Product-op ids in record order, to forget them after the retention period.
    product_op_order: VecDeque<(i64, Uuid)>,
    records: u64,
    /// Active reservations.
    active: usize,
    /// Actor names (token names, `anonymous`, `stockd`): few, so each is stored once.
    actors: HashMap<String, Arc<str>>,
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

    fn intern(&mut self, actor: &str) -> Arc<str> {
        if let Some(a) = self.actors.get(actor) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(actor);
        self.actors.insert(actor.to_string(), a.clone());
        a
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// Applies one durable record. `Err` means the log contradicts itself (a bug, or a log
    /// that was edited): replay reports it as corruption at that record.
    pub fn apply(&mut self, record: &Record) -> Result<(), String> {
        let at_ms = record.at_ms;
        let actor = self.intern(&record.actor);
        let meta = |reference: Option<&String>,
                    note: Option<&String>,
                    reservation_id,
                    marker,
                    reason: Option<&String>| {
            let detail = (reference.is_some() || note.is_some() || reason.is_some()).then(|| {
                Arc::new(Detail {
                    reference: reference.cloned(),
                    note: note.cloned(),
                    reason: reason.cloned(),
                })
            });
            Tag {
                actor: actor.clone(),
                reservation_id,
                marker,
                detail,
            }
        };
        match &record.event {
            Event::ProductPut {
                sku,
                created,
                name,
                low_stock_threshold,
                on_hand,
                fingerprint,
            } => {
                let m = meta(None, None, None, Marker::None, None);
                if *created {
                    if self.products.contains_key(sku) {
                        return Err(format!("product {sku} created twice"));
                    }
                    let on_hand = on_hand.unwrap_or(0);
                    let mut p = Product {
                        name: name.clone(),
                        low_stock_threshold: low_stock_threshold
                            .unwrap_or(LOW_STOCK_THRESHOLD_DEFAULT),
                        on_hand: 0,
                        reserved: 0,
                        updated_at_ms: at_ms,
                        // Most products have few entries: no room for four up front.
                        history: Vec::with_capacity(1),
                    };
                    push(
                        &mut p,
                        at_ms,
                        Action::Create,
                        add(0, on_hand, "on_hand")?,
                        0,
                        m,
                    );
                    self.products.insert(sku.clone(), p);
                } else {
                    let p = self.product_mut(sku)?;
                    if let Some(name) = name {
                        p.name = Some(name.clone());
                    }
                    if let Some(t) = low_stock_threshold {
                        p.low_stock_threshold = *t;
                    }
                    let new_on_hand = on_hand.unwrap_or(p.on_hand);
                    if new_on_hand < p.reserved {
                        return Err(format!(
                            "{sku}: set on_hand {new_on_hand} below reserved {}",
                            p.reserved
                        ));
                    }
                    let reserved = p.reserved;
                    push(p, at_ms, Action::Set, new_on_hand, reserved, m);
                }
                self.remember_op(record, sku, "product_put", *fingerprint, *created);
            }
            // Stock received, or returned by a customer: on_hand grows, nothing else changes.
            Event::Restocked {
                sku,
                quantity,
                reference,
                note,
                fingerprint,
            }
            | Event::Returned {
                sku,
                quantity,
                reference,
                note,
                fingerprint,
            } => {
                let (action, kind) = match &record.event {
                    Event::Restocked { .. } => (Action::Restock, "restock"),
                    _ => (Action::Return, "return"),
                };
                let p = self.product_mut(sku)?;
                let on_hand = add(p.on_hand, *quantity, "on_hand")?;
                let reserved = p.reserved;
                let m = meta(reference.as_ref(), note.as_ref(), None, Marker::None, None);
                push(p, at_ms, action, on_hand, reserved, m);
                self.remember_op(record, sku, kind, *fingerprint, false);
            }
            Event::Adjusted {
                sku,
                delta,
                reason,
                reference,
                note,
                fingerprint,
            } => {
                let p = self.product_mut(sku)?;
                let on_hand = if *delta >= 0 {
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
                let m = meta(
                    reference.as_ref(),
                    note.as_ref(),
                    None,
                    Marker::Adjusted,
                    Some(reason),
                );
                push(p, at_ms, Action::Adjust, on_hand, reserved, m);
                self.remember_op(record, sku, "adjust", *fingerprint, false);
            }
            Event::Sold {
                items,
                reference,
                fingerprint,
            } => {
                let m = meta(reference.as_ref(), None, None, Marker::None, None);
                for item in items {
                    let p = self.product_mut(&item.sku)?;
                    let on_hand = sub(p.on_hand, item.quantity, "on_hand")?;
                    if on_hand < p.reserved {
                        return Err(format!("{}: sale takes reserved stock", item.sku));
                    }
                    let reserved = p.reserved;
                    push(p, at_ms, Action::Sale, on_hand, reserved, m.clone());
                }
                self.sales.insert(
                    record.op_id,
                    Sale {
                        items: items.clone(),
                        at_ms,
                        reference: reference.clone(),
                        fingerprint: *fingerprint,
                    },
                );
            }
            Event::Reserved {
                items,
                expires_at_ms,
                session_id,
                user_id,
                reference,
                metadata,
                fingerprint,
            } => {
                if self.reservations.contains_key(&record.op_id) {
                    return Err(format!("reservation {} created twice", record.op_id));
                }
                let m = meta(
                    reference.as_ref(),
                    None,
                    Some(record.op_id),
                    Marker::None,
                    None,
                );
                for item in items {
                    let p = self.product_mut(&item.sku)?;
                    let reserved = add(p.reserved, item.quantity, "reserved")?;
                    if reserved > p.on_hand {
                        return Err(format!(
                            "{}: reserved {reserved} exceeds on_hand {}",
                            item.sku, p.on_hand
                        ));
                    }
                    let on_hand = p.on_hand;
                    push(p, at_ms, Action::Reserve, on_hand, reserved, m.clone());
                }
                self.active += 1;
                self.reservations.insert(
                    record.op_id,
                    Reservation {
                        items: items.clone(),
                        status: ReservationStatus::Active,
                        created_at_ms: at_ms,
                        expires_at_ms: *expires_at_ms,
                        original_expires_at_ms: *expires_at_ms,
                        session_id: session_id.clone(),
                        user_id: user_id.clone(),
                        reference: reference.clone(),
                        metadata: metadata.clone(),
                        fingerprint: *fingerprint,
                        sold: None,
                        reacquired: false,
                    },
                );
            }
            Event::Completed {
                reservation_id,
                sold,
                reacquired,
                reference,
            } => {
                let r = self
                    .reservations
                    .get(reservation_id)
                    .ok_or_else(|| format!("completion of unknown reservation {reservation_id}"))?;
                let expected = if *reacquired {
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
                let items = r.items.clone();
                let marker = if *reacquired {
                    Marker::Reacquired
                } else {
                    Marker::None
                };
                let m = meta(
                    reference.as_ref(),
                    None,
                    Some(*reservation_id),
                    marker,
                    None,
                );
                for (item, sold_qty) in items.iter().zip(sold) {
                    if *sold_qty > item.quantity {
                        return Err(format!(
                            "{}: sold {sold_qty} of a hold of {}",
                            item.sku, item.quantity
                        ));
                    }
                    let p = self.product_mut(&item.sku)?;
                    let reserved = if *reacquired {
                        p.reserved
                    } else {
                        sub(p.reserved, item.quantity, "reserved")?
                    };
                    let on_hand = sub(p.on_hand, *sold_qty, "on_hand")?;
                    if reserved > on_hand {
                        return Err(format!(
                            "{}: completion leaves reserved above on_hand",
                            item.sku
                        ));
                    }
                    push(p, at_ms, Action::Complete, on_hand, reserved, m.clone());
                }
                let r = self
                    .reservations
                    .get_mut(reservation_id)
                    .expect("checked above");
                r.status = ReservationStatus::Completed;
                r.sold = Some(sold.clone());
                r.reacquired = *reacquired;
                if !*reacquired {
                    self.active -= 1;
                }
            }
            Event::Released {
                reservation_id,
                reason,
                note,
            } => {
                let r = self
                    .reservations
                    .get(reservation_id)
                    .ok_or_else(|| format!("release of unknown reservation {reservation_id}"))?;
                if r.status != ReservationStatus::Active {
                    return Err(format!(
                        "release of reservation {reservation_id} in state {:?}",
                        r.status
                    ));
                }
                let items = r.items.clone();
                let m = meta(
                    None,
                    note.as_ref(),
                    Some(*reservation_id),
                    Marker::Released(*reason),
                    None,
                );
                for item in &items {
                    let p = self.product_mut(&item.sku)?;
                    let reserved = sub(p.reserved, item.quantity, "reserved")?;
                    let on_hand = p.on_hand;
                    push(p, at_ms, Action::Release, on_hand, reserved, m.clone());
                }
                let r = self
                    .reservations
                    .get_mut(reservation_id)
                    .expect("checked above");
                r.status = match reason {
                    ReleaseReason::Expired => ReservationStatus::Expired,
                    ReleaseReason::Cancelled | ReleaseReason::Aborted => {
                        ReservationStatus::Cancelled
                    }
                };
                self.active -= 1;
            }
            Event::Extended {
                reservation_id,
                expires_at_ms,
            } => {
                let r = self
                    .reservations
                    .get_mut(reservation_id)
                    .ok_or_else(|| format!("extension of unknown reservation {reservation_id}"))?;
                if r.status != ReservationStatus::Active {
                    return Err(format!(
                        "extension of reservation {reservation_id} in state {:?}",
                        r.status
                    ));
                }
                r.expires_at_ms = *expires_at_ms;
            }
        }
        self.records += 1;
        Ok(())
    }

    fn product_mut(&mut self, sku: &Sku) -> Result<&mut Product, String> {
        self.products
            .get_mut(sku)
            .ok_or_else(|| format!("record names unknown product {sku}"))
    }

    fn remember_op(
        &mut self,
        record: &Record,
        sku: &Sku,
        kind: &'static str,
        fingerprint: u32,
        created: bool,
    ) {
        // Fingerprint 0: the client gave no id, so the operation can never be repeated and
        // only the engine, answering it now, needs its outcome.
        if fingerprint == 0 {
            if let Some(answers) = &mut self.answers {
                let view = self.products[sku].view(sku);
                let op = ProductOp {
                    kind,
                    fingerprint,
                    created,
                    view,
                    at_ms: record.at_ms,
                };
                answers.insert(record.op_id, op);
            }
            return;
        }
        let view = self.products[sku].view(sku);
        self.product_ops.insert(
            record.op_id,
            ProductOp {
                kind,
                fingerprint,
                created,
                view,
                at_ms: record.at_ms,
            },
        );
        self.product_op_order
            .push_back((record.at_ms, record.op_id));
        // Forget product-op ids past the retention period (bounded memory).
        let horizon = record.at_ms - OPERATION_ID_RETENTION_MS;
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
        self.products.get_key_value(sku).map(|(k, p)| p.view(k))
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
        for (sku, p) in self.products.range::<str, _>((lower, Bound::Unbounded)) {
            let view = p.view(sku);
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

    /// History newest first, entries with `seq < before`, optionally one action only.
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
        for index in (0..end).rev() {
            let e = &p.history[index];
            if action.is_some_and(|a| a != e.action) {
                continue;
            }
            if out.len() == limit {
                next = out.last().map(|v: &HistoryView| v.seq);
                break;
            }
            out.push(HistoryView {
                seq: index as u64 + 1,
                at: views::rfc3339_ms(e.at_ms),
                action: e.action.as_str(),
                quantity_before: e.on_hand_before,
                quantity_after: e.on_hand_after,
                change: e.on_hand_after as i64 - e.on_hand_before as i64,
                reserved_before: e.reserved_before,
                reserved_after: e.reserved_after,
                actor: e.tag.actor.to_string(),
                reference: e.tag.detail.as_ref().and_then(|d| d.reference.clone()),
                reservation_id: e.tag.reservation_id,
                note: e.tag.detail.as_ref().and_then(|d| d.note.clone()),
                metadata: e.tag.metadata(),
            });
        }
        Some((out, next))
    }

    pub fn reservation(&self, id: &Uuid) -> Option<&Reservation> {
        self.reservations.get(id)
    }

    /// The reservation as it stands now.
    pub fn reservation_view(&self, id: &Uuid) -> Option<ReservationView> {
        let r = self.reservations.get(id)?;
        Some(reservation_view(id, r, r.status, r.expires_at_ms))
    }

    /// The reservation as its creation answered it (for idempotent repeats of the create).
    pub fn reservation_created_view(&self, id: &Uuid) -> Option<ReservationView> {
        let r = self.reservations.get(id)?;
        Some(ReservationView::created(
            *id,
            r.items.clone(),
            r.created_at_ms,
            r.original_expires_at_ms,
            r.session_id.clone(),
            r.user_id.clone(),
            r.reference.clone(),
            parse_metadata(r.metadata.as_deref()),
        ))
    }

    pub fn sale_view(&self, id: &Uuid) -> Option<SaleView> {
        let s = self.sales.get(id)?;
        Some(SaleView {
            id: *id,
            items: s.items.clone(),
            at: views::rfc3339_ms(s.at_ms),
            reference: s.reference.clone(),
        })
    }

    pub fn sale_fingerprint(&self, id: &Uuid) -> Option<u32> {
        self.sales.get(id).map(|s| s.fingerprint)
    }

    /// From now on, keep the answers of unrepeatable product operations for the engine to take
    /// (after replay: during it, nobody waits for them).
    pub fn serve_answers(&mut self) {
        self.answers.get_or_insert_with(HashMap::new);
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
            .map(|(s, p)| (s, p.on_hand, p.reserved, p.version()))
    }

    pub fn reservations(&self) -> impl Iterator<Item = (&Uuid, &Reservation)> + '_ {
        self.reservations.iter()
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
        let mut held: HashMap<&Sku, u64> = HashMap::new();
        for r in self
            .reservations
            .values()
            .filter(|r| r.status == ReservationStatus::Active)
        {
            for item in &r.items {
                *held.entry(&item.sku).or_default() += item.quantity;
            }
        }
        for (sku, p) in &self.products {
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
            let mut prev = (0u64, 0u64);
            for (i, e) in p.history.iter().enumerate() {
                if (e.on_hand_before, e.reserved_before) != prev {
                    return Err(format!("{sku}: history entry {} does not chain", i + 1));
                }
                prev = (e.on_hand_after, e.reserved_after);
            }
            if prev != (p.on_hand, p.reserved) {
                return Err(format!("{sku}: history does not end at the current counts"));
            }
        }
        Ok(())
    }
}

fn push(p: &mut Product, at_ms: i64, action: Action, on_hand: u64, reserved: u64, tag: Tag) {
    p.history.push(HistoryEntry {
        at_ms,
        action,
        on_hand_before: p.on_hand,
        on_hand_after: on_hand,
        reserved_before: p.reserved,
        reserved_after: reserved,
        tag,
    });
    p.on_hand = on_hand;
    p.reserved = reserved;
    p.updated_at_ms = at_ms;
}

fn reservation_view(
    id: &Uuid,
    r: &Reservation,
    status: ReservationStatus,
    expires_at_ms: i64,
) -> ReservationView {
    ReservationView {
        id: *id,
        status: status.as_str(),
        items: r.items.clone(),
        created_at: views::rfc3339_ms(r.created_at_ms),
        expires_at: views::rfc3339_ms(expires_at_ms),
        session_id: r.session_id.clone(),
        user_id: r.user_id.clone(),
        reference: r.reference.clone(),
        metadata: parse_metadata(r.metadata.as_deref()),
        sold_items: r.sold.as_ref().map(|sold| {
            r.items
                .iter()
                .zip(sold)
                .map(|(i, q)| Item {
                    sku: i.sku.clone(),
                    quantity: *q,
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
    &items
        .iter()
        .min_by(|a, b| a.sku.cmp(&b.sku))
        .expect("a reservation has at least one item")
        .sku
}
