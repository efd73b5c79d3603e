//! The engine: stockd without HTTP. It validates a request, claims its operation id, asks
//! the product actors, waits until the resulting record is durable, and answers from the
//! ledger (durable state). Benches and tests drive it directly; the HTTP layer is a thin
//! mapping onto it.
//!
//! Multi-item operations: the actors of all items but the home one (the smallest SKU) are
//! asked for tentative holds in SKU order; then the home actor checks its own item and logs
//! ONE record for the whole operation; then the tentative holds are committed (or, on any
//! refusal, aborted and nothing is logged). Each step that must not be lost runs in a task of
//! its own, so a client hanging up midway cannot leave a tentative hold behind.

pub mod requests;

use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::RwLock;
use smol_str::SmolStr;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::actor::messages::*;
use crate::actor::product;
use crate::actor::registry::{Held, Passive};
use crate::actor::{Registry, Shared};
use crate::clock::Clock;
use crate::config::EngineConfig;
use crate::domain::limits::PASSIVE_HOLDS_MAX;
use crate::domain::{Item, ReservationStatus, Sku, StockStatus};
use crate::ledger::{
    home_of, Action, HistoryView, ItemReport, Ledger, ProductView, ReservationView, SaleView,
};
use crate::metrics::Metrics;
use crate::wal::lock;
use crate::wal::replay::{self, Mode, ReplayOutcome};
use crate::wal::storage::{Disk, Storage};
use crate::wal::{writer::FatalHook, Log, LogConfig, Lsn, WalError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("not enough stock for every item")]
    InsufficientStock(Vec<ItemReport>),
    #[error("{0}")]
    ReservationExpired(String),
    #[error("{0}")]
    InvalidTransition(String),
    #[error("this operation id was already used with a different request")]
    IdReused,
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("the server is overloaded; retry shortly")]
    Overloaded,
    #[error("the log cannot be written; the server is stopping")]
    Unavailable,
}

/// An answer to a product operation: the product right after it, and whether it created it.
#[derive(Debug, Clone)]
pub struct ProductAnswer {
    pub created: bool,
    pub product: ProductView,
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    ledger: Arc<RwLock<Ledger>>,
    /// Operation ids being executed right now, with their request fingerprint. Finished
    /// operations are found in the ledger instead.
    claims: DashMap<Uuid, u32>,
}

/// Removes an operation-id claim when the operation is over (done or refused).
struct Claim {
    engine: Engine,
    id: Uuid,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.engine.inner.claims.remove(&self.id);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Product(&'static str),
    Reserve,
    Sale,
}

/// What was found on start-up, for the server to report.
#[derive(Debug)]
pub struct Startup {
    pub replay: ReplayOutcome,
    pub products: usize,
    pub active_reservations: usize,
    pub expired_at_start: usize,
}

impl Engine {
    /// Replays the data directory, starts the log writer and one actor per product, and
    /// releases holds whose time passed while the server was down (durably) before returning.
    pub async fn open(
        config: &EngineConfig,
        clock: Arc<dyn Clock>,
        on_fatal: FatalHook,
    ) -> Result<(Engine, Startup), WalError> {
        Self::open_with_storage(config, clock, Arc::new(Disk), on_fatal).await
    }

    /// [`Engine::open`] over a given file layer (fault-injection tests).
    pub async fn open_with_storage(
        config: &EngineConfig,
        clock: Arc<dyn Clock>,
        storage: Arc<dyn Storage>,
        on_fatal: FatalHook,
    ) -> Result<(Engine, Startup), WalError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| WalError::io("cannot create data directory", &config.data_dir, e))?;
        // Before replay, which may cut a torn tail: another server's live tail is not torn.
        let dir_lock = lock::lock(&config.data_dir)?;
        let (mut ledger, outcome) = Ledger::replay(&config.data_dir, Mode::Repair)?;
        if let Some(torn) = outcome
            .torn_tail
            .as_ref()
            .filter(|t| t.reason == replay::ZEROS)
        {
            tracing::info!(
                "cut {} bytes of zeros after the last record of {}",
                torn.dropped_bytes,
                torn.path.display()
            );
        } else if let Some(torn) = &outcome.torn_tail {
            tracing::warn!(
                "log tail was torn ({}): cut {} bytes at offset {} of {}",
                torn.reason,
                torn.dropped_bytes,
                torn.offset,
                torn.path.display()
            );
        }
        let (states, overdue_homes) = start_states(&ledger, clock.as_ref());
        let products = ledger.product_count();
        let active_reservations = ledger.active_reservations();
        ledger.serve_answers();
        let ledger = Arc::new(RwLock::new(ledger));
        let metrics = Arc::new(Metrics::new());
        let log = Log::start(
            LogConfig {
                dir: config.data_dir.clone(),
                segment_size_bytes: config.segment_size_bytes,
                channel_capacity: config.log_channel_capacity,
                batch_max_bytes: config.log_batch_max_bytes,
                storage,
            },
            dir_lock,
            outcome.last.clone(),
            ledger.clone(),
            metrics.clone(),
            on_fatal,
        )?;
        let passivation = config.passivate_after_ms > 0;
        let shared = Arc::new(Shared {
            log,
            metrics: metrics.clone(),
            clock,
            registry: Registry::default(),
            alarms: Arc::default(),
            ledger: ledger.clone(),
            mailbox_capacity: config.mailbox_capacity,
            deferred_capacity: config.deferred_capacity,
            passivate_after: (config.passivate_after_ms > 0)
                .then(|| std::time::Duration::from_millis(config.passivate_after_ms)),
        });
        for (sku, mut state) in states {
            // Every product starts passive (but hot ones, see PASSIVE_HOLDS_MAX): a large
            // catalog, or many holds, cost a few bytes each after a restart, not an actor per
            // product. Products that are home to active reservations get an alarm at their
            // earliest expiry.
            let holds = state.held.as_ref().map_or(0, |h| h.holds.len());
            if passivation && holds <= PASSIVE_HOLDS_MAX {
                if let Some(at) = state.held.as_ref().and_then(|h| h.alarm_at) {
                    shared.alarms.set(at, sku.clone());
                }
                shared.registry.insert_passive(sku, state);
                continue;
            }
            // Live from the start, with its own timer: no alarm is pending for it.
            if let Some(held) = state.held.as_mut() {
                held.alarm_at = None;
            }
            let shared_for_actor = shared.clone();
            let key = sku.clone();
            shared.registry.insert_live(sku, move |incarnation| {
                let seed = crate::actor::seed_from_passive(&shared_for_actor, &key, state);
                product::spawn(key, seed, shared_for_actor, incarnation)
            });
        }
        tokio::spawn(crate::actor::alarms::run(
            shared.alarms.clone(),
            Arc::downgrade(&shared),
        ));
        tokio::spawn(crate::memory::return_freed_memory(
            Arc::downgrade(&shared),
            |shared: &Shared| {
                (
                    shared.metrics.log_bytes.get(),
                    shared.metrics.live_actors.get(),
                )
            },
        ));
        let engine = Engine {
            inner: Arc::new(Inner {
                shared,
                metrics,
                ledger,
                claims: DashMap::new(),
            }),
        };
        let expired_at_start = overdue_homes.len();
        engine.expire_overdue(overdue_homes).await?;
        Ok((
            engine,
            Startup {
                replay: outcome,
                products,
                active_reservations,
                expired_at_start,
            },
        ))
    }

    async fn expire_overdue(&self, mut homes: Vec<Sku>) -> Result<(), WalError> {
        homes.sort();
        homes.dedup();
        for sku in homes {
            let (reply, rx) = oneshot::channel();
            crate::actor::deliver(&self.inner.shared, &sku, Msg::ExpireOverdue { reply }).await;
            let _ = rx.await;
        }
        // Holds of other items are released by the home actors' fan-out tasks; the record
        // that ends each reservation must be durable before we call the start-up done.
        self.inner.shared.log.flush().await.map_err(|_| {
            WalError::io(
                "cannot write expiry records at start",
                "",
                std::io::Error::other("log failed"),
            )
        })
    }

    /// Graceful shutdown: nothing more is logged; everything logged is durable, and the last
    /// segment ends at its last record.
    pub async fn close(&self) -> Result<(), EngineError> {
        self.inner
            .shared
            .log
            .close()
            .await
            .map_err(|_| EngineError::Unavailable)
    }

    /// The metrics, with the gauges read from the ledger now.
    pub fn metrics(&self) -> &Metrics {
        let (products, active) = {
            let ledger = self.inner.ledger.read();
            (ledger.product_count(), ledger.active_reservations())
        };
        self.inner.metrics.products.set(products as i64);
        let (live, passive) = self.inner.shared.registry.census();
        self.inner.metrics.live_actors.set(live as i64);
        self.inner.metrics.passive_products.set(passive as i64);
        let alarms = self.inner.shared.alarms.len();
        self.inner.metrics.expiry_alarms.set(alarms as i64);
        self.inner.metrics.active_reservations.set(active as i64);
        &self.inner.metrics
    }

    /// Metrics without refreshing the gauges (hot path).
    pub fn counters(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// (fsyncs, records made durable) since start: records per fsync is their ratio.
    pub fn log_counters(&self) -> (u64, u64) {
        self.inner.shared.log.durability().counters()
    }

    pub fn log_failed(&self) -> bool {
        self.inner.shared.log.durability().is_failed()
    }

    // ---------------------------------------------------------------- plumbing

    async fn wait(&self, lsn: Lsn) -> Result<(), EngineError> {
        self.inner
            .shared
            .log
            .durability()
            .wait(lsn)
            .await
            .map_err(|_| EngineError::Unavailable)
    }

    fn actor(&self, sku: &str) -> Option<mpsc::Sender<Msg>> {
        crate::actor::mailbox(&self.inner.shared, sku)
    }

    /// Sends without waiting for mailbox space (a full mailbox is overload), then waits for
    /// the answer. The message goes out when `ask` is called, not at its future's first poll;
    /// every caller awaits it at once, so that is the same moment. Its future then holds only
    /// the reply's receiver: as an `async fn` it kept the closure that builds the message, in
    /// it and in every future around it (~160 bytes of a reservation's, at each level).
    fn ask(
        &self,
        sku: &Sku,
        make: impl FnOnce(Reply) -> Msg,
    ) -> impl std::future::Future<Output = Result<Answer, Refusal>> {
        answered(self.send(sku, make))
    }

    fn send(
        &self,
        sku: &Sku,
        make: impl FnOnce(Reply) -> Msg,
    ) -> Result<oneshot::Receiver<Result<Answer, Refusal>>, Refusal> {
        let (reply, rx) = oneshot::channel();
        let mut msg = make(reply);
        // A closed mailbox hands the message back: its actor passivated meanwhile, and the
        // next lookup revives the product. Bounded: an actor that just revived stays a while.
        for _ in 0..8 {
            let Some(sent) = crate::actor::try_send(&self.inner.shared, sku.as_str(), msg) else {
                return Err(Refusal::NotFound);
            };
            match sent {
                Ok(()) => return Ok(rx),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.inner.metrics.mailbox_rejections.inc();
                    return Err(Refusal::Overloaded);
                }
                Err(mpsc::error::TrySendError::Closed(back)) => msg = back,
            }
        }
        Err(Refusal::Overloaded)
    }

    /// Maps an actor's refusal to an error, first waiting until the state it reflects is durable.
    async fn refusal(&self, refusal: Refusal) -> EngineError {
        if let Err(e) = self.wait(refusal.depends_on()).await {
            return e;
        }
        match refusal {
            Refusal::NotFound => EngineError::NotFound("no such product".into()),
            Refusal::Stock { .. } => EngineError::Conflict("not enough stock".into()),
            Refusal::Conflict { detail, .. } => EngineError::Conflict(detail),
            Refusal::PreconditionFailed { .. } => EngineError::PreconditionFailed(
                "the product changed since the version given in If-Match".into(),
            ),
            Refusal::Invalid(detail) => EngineError::Invalid(detail),
            Refusal::InvalidTransition { status, .. } => {
                EngineError::InvalidTransition(format!("the reservation is {}", status.as_str()))
            }
            Refusal::ReservationExpired { .. } => {
                EngineError::ReservationExpired("the reservation has expired".into())
            }
            Refusal::Busy => EngineError::Conflict(
                "another completion of this reservation is in progress; retry".into(),
            ),
            Refusal::Overloaded => EngineError::Overloaded,
            Refusal::Unavailable => EngineError::Unavailable,
        }
    }

    /// Runs `work` in a task of its own so that it finishes even if the caller goes away.
    /// Spawned at the call, like [`Self::ask`]'s message: so the caller's future holds the
    /// task's handle, not a copy of `work` (as an `async fn` argument would).
    fn detached<T: Send + 'static>(
        work: impl std::future::Future<Output = Result<T, EngineError>> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, EngineError>> {
        let task = tokio::spawn(work);
        async move { task.await.unwrap_or(Err(EngineError::Unavailable)) }
    }

    /// `Some(Ok)` if `id` names a finished operation made with the same request (a repeat),
    /// `Some(Err(IdReused))` if with another request, `None` if unknown.
    fn finished(&self, id: &Uuid, kind: OpKind, fp: u32) -> Option<Result<(), EngineError>> {
        let ledger = self.inner.ledger.read();
        let found = if let Some(r) = ledger.reservation(id) {
            Some((OpKind::Reserve, r.fingerprint))
        } else if let Some(fp) = ledger.sale_fingerprint(id) {
            Some((OpKind::Sale, fp))
        } else {
            ledger
                .product_op(id)
                .map(|op| (OpKind::Product(op.kind), op.fingerprint))
        };
        found.map(|(k, f)| {
            if k == kind && f == fp {
                Ok(())
            } else {
                Err(EngineError::IdReused)
            }
        })
    }

    /// Claims a client-given operation id. `Ok(None)`: it is a repeat of a finished operation.
    fn claim(&self, id: Uuid, kind: OpKind, fp: u32) -> Result<Option<Claim>, EngineError> {
        if let Some(done) = self.finished(&id, kind, fp) {
            return done.map(|_| None);
        }
        match self.inner.claims.entry(id) {
            dashmap::Entry::Occupied(e) => {
                return Err(if *e.get() != fp {
                    EngineError::IdReused
                } else {
                    EngineError::Conflict("an operation with this id is in progress; retry".into())
                });
            }
            dashmap::Entry::Vacant(v) => {
                v.insert(fp);
            }
        }
        let claim = Claim {
            engine: self.clone(),
            id,
        };
        // Finished between our first look and the claim: the ledger has it now.
        if let Some(done) = self.finished(&id, kind, fp) {
            drop(claim);
            return done.map(|_| None);
        }
        Ok(Some(claim))
    }

    /// The outcome of a durable product operation: remembered for repeats if the client gave
    /// an id, else handed over once.
    fn product_answer(&self, op_id: &Uuid, repeatable: bool) -> Result<ProductAnswer, EngineError> {
        let op = if repeatable {
            self.inner.ledger.read().product_op(op_id).cloned()
        } else {
            self.inner.ledger.write().take_answer(op_id)
        };
        let op = op.ok_or(EngineError::Unavailable)?;
        Ok(ProductAnswer {
            created: op.created,
            product: op.view,
        })
    }

    // ---------------------------------------------------------------- product operations

    async fn product_op(
        &self,
        kind: &'static str,
        id: Option<Uuid>,
        fp: u32,
        sku: Sku,
        make: impl FnOnce(OpCtx, Reply) -> Msg + Send + 'static,
        actor: &str,
    ) -> Result<ProductAnswer, EngineError> {
        let (op_id, claim) = match id {
            Some(id) => match self.claim(id, OpKind::Product(kind), fp)? {
                Some(claim) => (id, Some(claim)),
                None => return self.product_answer(&id, true),
            },
            None => (Uuid::new_v4(), None),
        };
        let repeatable = id.is_some();
        let op = OpCtx {
            op_id,
            actor: SmolStr::new(actor),
            fingerprint: fp,
        };
        let engine = self.clone();
        Self::detached(async move {
            let _claim = claim;
            match engine.ask(&sku, |reply| make(op, reply)).await {
                Ok(Answer::Durable(lsn)) => {
                    engine.wait(lsn).await?;
                    engine.product_answer(&op_id, repeatable)
                }
                Ok(other) => unreachable!("product operation answered {other:?}"),
                Err(Refusal::NotFound) => Err(EngineError::NotFound(format!(
                    "no product {}",
                    "with this sku"
                ))),
                Err(r) => Err(engine.refusal(r).await),
            }
        })
        .await
    }

    /// PUT /v1/products/{sku}: create, or update (an audited `set` when on_hand is given).
    pub async fn put_product(
        &self,
        actor: &str,
        sku: &str,
        req: requests::PutProduct,
        if_match: Option<u64>,
    ) -> Result<ProductAnswer, EngineError> {
        let sku = requests::parse_sku(sku)?;
        req.validate()?;
        // PUT carries no operation id: nothing to compare a repeat with.
        let fp = 0;
        crate::actor::mailbox_or_create(&self.inner.shared, &sku);
        let target = sku.clone();
        self.product_op(
            "product_put",
            None,
            fp,
            target,
            move |op, reply| {
                Msg::Put(Box::new(PutMsg {
                    op,
                    name: req.name,
                    low_stock_threshold: req.low_stock_threshold,
                    on_hand: req.on_hand,
                    if_match,
                    reply,
                }))
            },
            actor,
        )
        .await
    }

    fn existing(&self, sku: &Sku) -> Result<Sku, EngineError> {
        self.actor(sku.as_str())
            .map(|_| sku.clone())
            .ok_or_else(|| EngineError::NotFound(format!("no product {sku}")))
    }

    pub async fn restock(
        &self,
        actor: &str,
        sku: &str,
        req: requests::QuantityChange,
        if_match: Option<u64>,
    ) -> Result<ProductView, EngineError> {
        self.add(actor, sku, req, if_match, CountChange::Restock, "restock")
            .await
    }

    pub async fn record_return(
        &self,
        actor: &str,
        sku: &str,
        req: requests::QuantityChange,
    ) -> Result<ProductView, EngineError> {
        self.add(actor, sku, req, None, CountChange::Return, "return")
            .await
    }

    async fn add(
        &self,
        actor: &str,
        sku: &str,
        req: requests::QuantityChange,
        if_match: Option<u64>,
        change: CountChange,
        kind: &'static str,
    ) -> Result<ProductView, EngineError> {
        let sku = requests::parse_sku(sku)?;
        req.validate()?;
        let fp = requests::fingerprint_of(kind, sku.as_str(), &req);
        let target = self.existing(&sku)?;
        let answer = self
            .product_op(
                kind,
                req.id,
                fp,
                target,
                move |op, reply| {
                    Msg::Add(Box::new(AddMsg {
                        op,
                        change,
                        quantity: req.quantity,
                        reference: req.reference,
                        note: req.note,
                        if_match,
                        reply,
                    }))
                },
                actor,
            )
            .await?;
        Ok(answer.product)
    }

    pub async fn adjust(
        &self,
        actor: &str,
        sku: &str,
        req: requests::Adjust,
        if_match: Option<u64>,
    ) -> Result<ProductView, EngineError> {
        let sku = requests::parse_sku(sku)?;
        req.validate()?;
        let fp = requests::fingerprint_of("adjust", sku.as_str(), &req);
        let target = self.existing(&sku)?;
        let answer = self
            .product_op(
                "adjust",
                req.id,
                fp,
                target,
                move |op, reply| {
                    Msg::Adjust(Box::new(AdjustMsg {
                        op,
                        delta: req.delta,
                        reason: req.reason,
                        reference: req.reference,
                        note: req.note,
                        if_match,
                        reply,
                    }))
                },
                actor,
            )
            .await?;
        Ok(answer.product)
    }

    // ---------------------------------------------------------------- reservations and sales

    /// Builds the 409 body: the refusing item with what its actor saw, the others from the ledger.
    fn stock_report(
        &self,
        items: &[Item],
        refused: Option<(&Sku, Option<u64>)>,
    ) -> Vec<ItemReport> {
        let ledger = self.inner.ledger.read();
        items
            .iter()
            .map(|item| {
                let available = match refused {
                    Some((sku, seen)) if *sku == item.sku => seen,
                    _ => ledger.available(item.sku.as_str()),
                };
                ItemReport::judge(item.sku.as_str(), item.quantity, available)
            })
            .collect()
    }

    /// Takes tentative holds at every non-home item, in SKU order. On refusal, aborts those
    /// taken and returns the error to answer with.
    async fn take_tentatives(
        &self,
        key: Uuid,
        items: &[Item],
        home: &Sku,
        quantities: impl Fn(usize) -> u64,
        kind: TentativeKind,
    ) -> Result<Vec<Sku>, EngineError> {
        let mut order: Vec<usize> = (0..items.len())
            .filter(|i| items[*i].sku != *home)
            .collect();
        order.sort_by(|a, b| items[*a].sku.cmp(&items[*b].sku));
        let mut granted = Vec::with_capacity(order.len());
        for index in order {
            let item = &items[index];
            let refusal = match self.actor(item.sku.as_str()) {
                None => Refusal::NotFound,
                Some(_) => {
                    let quantity = quantities(index);
                    match self
                        .ask(&item.sku, |reply| {
                            Msg::Tentative(TentativeMsg {
                                key,
                                quantity,
                                kind,
                                reply,
                            })
                        })
                        .await
                    {
                        Ok(_) => {
                            granted.push(item.sku.clone());
                            continue;
                        }
                        Err(r) => r,
                    }
                }
            };
            self.settle(&granted, key, None).await;
            return Err(self.item_refusal(items, &item.sku, refusal).await);
        }
        Ok(granted)
    }

    /// Commits (`lsn` given) or aborts the tentative holds. Waits for mailbox space: these
    /// messages must arrive.
    async fn settle(&self, granted: &[Sku], key: Uuid, lsn: Option<Lsn>) {
        if granted.is_empty() {
            return;
        }
        // Boxed: only multi-item operations get here, and the deliveries' state would
        // otherwise take ~480 bytes of every operation's future, copied each time it moves.
        Box::pin(self.deliver_all(granted, key, lsn)).await
    }

    async fn deliver_all(&self, granted: &[Sku], key: Uuid, lsn: Option<Lsn>) {
        for sku in granted {
            let msg = match lsn {
                Some(lsn) => Msg::Commit { key, lsn },
                None => Msg::Abort { key },
            };
            crate::actor::deliver(&self.inner.shared, sku, msg).await;
        }
    }

    async fn item_refusal(&self, items: &[Item], sku: &Sku, refusal: Refusal) -> EngineError {
        match refusal {
            Refusal::NotFound => {
                EngineError::InsufficientStock(self.stock_report(items, Some((sku, None))))
            }
            Refusal::Stock {
                available,
                depends_on,
            } => match self.wait(depends_on).await {
                Ok(()) => EngineError::InsufficientStock(
                    self.stock_report(items, Some((sku, Some(available)))),
                ),
                Err(e) => e,
            },
            other => self.refusal(other).await,
        }
    }

    /// Admits a new reservation or sale: tentative holds, one record at the home actor, commit.
    async fn admit(
        &self,
        op: OpCtx,
        items: &[Item],
        kind: FinishKind,
        reference: Option<String>,
    ) -> Result<Answer, EngineError> {
        let home = home_of(items).clone();
        let key = op.op_id;
        let tentative_kind = match kind {
            FinishKind::Reserve { .. } => TentativeKind::Hold,
            FinishKind::Sell => TentativeKind::Sale,
        };
        // Boxed, as are refusals below: a one-item operation (the usual one) has no other
        // items to hold, and their state would triple the size of its future (~2 KB to move).
        let granted = if items.len() > 1 {
            let quantity = |i: usize| items[i].quantity;
            Box::pin(self.take_tentatives(key, items, &home, quantity, tentative_kind)).await?
        } else {
            Vec::new()
        };
        // No look-up of the home's actor here: `ask` looks it up to send, and a product that
        // does not exist comes back as `Refusal::NotFound`, which `item_refusal` turns into
        // the same stock report (a second look-up was ~170 instructions of every reserve).
        let finish = finish_msg(op, items, kind, reference);
        match self.finish_at_home(&home, finish, &granted, key).await {
            Ok(answer) => Ok(answer),
            Err(refusal) => Err(Box::pin(self.item_refusal(items, &home, refusal)).await),
        }
    }

    /// The last step of a multi-item operation: the home actor logs the one record; then the
    /// other actors' tentative holds are committed at its LSN, or aborted if it refused.
    /// Not an `async fn`, for the reason [`Self::ask`] gives: the message is sent at the call.
    fn finish_at_home<'a>(
        &'a self,
        home: &Sku,
        make: impl FnOnce(Reply) -> Msg + 'a,
        granted: &'a [Sku],
        key: Uuid,
    ) -> impl std::future::Future<Output = Result<Answer, Refusal>> + 'a {
        let asked = self.ask(home, make);
        async move {
            match asked.await {
                Ok(answer) => {
                    let lsn = answer.lsn().expect("the home actor logs the operation");
                    self.settle(granted, key, Some(lsn)).await;
                    Ok(answer)
                }
                Err(refusal) => {
                    self.settle(granted, key, None).await;
                    Err(refusal)
                }
            }
        }
    }

    /// POST /v1/reservations.
    ///
    /// One item and no operation id (a flash sale's request) is a single message to one
    /// actor, with nothing to clean up if the client goes away, and the home actor may make
    /// the reservation's id. That path is kept lean: its future holds the request, the items
    /// and the reply's receiver, ~1.3 KB before (perf: writing that state was most of the
    /// reserve future's ~22% of the event loop's samples with 1,024 callers).
    pub async fn reserve(
        &self,
        actor: &str,
        req: requests::Reserve,
    ) -> Result<ReservationView, EngineError> {
        let (items, metadata_text) = req.validate()?;
        if req.items.len() != 1 || req.id.is_some() {
            // Boxed: the general path's state (claim, tentative holds, a task of its own)
            // would otherwise sit in every reservation's future.
            return Box::pin(self.reserve_any(actor, req, items, metadata_text)).await;
        }
        // In one statement, so that the answer's temporaries are not kept across the wait.
        let reserved = match self
            .ask_reserve_one(actor, &req, &items, metadata_text)
            .await
        {
            Ok(answer) => Reserved::from(answer),
            Err(refusal) => {
                let home = &items[0].sku;
                return Err(Box::pin(self.item_refusal(&items, home, refusal)).await);
            }
        };
        self.wait(reserved.lsn).await?;
        Ok(reserved.view(req, items))
    }

    /// Sends a one-item reservation to its actor at the call, as [`Self::ask`] does (not
    /// through it: its future would hold the borrow of `items` that its message closure has).
    fn ask_reserve_one(
        &self,
        actor: &str,
        req: &requests::Reserve,
        items: &[Item],
        metadata_text: Option<String>,
    ) -> impl std::future::Future<Output = Result<Answer, Refusal>> {
        let op = OpCtx {
            op_id: Uuid::new_v4(),
            actor: SmolStr::new(actor),
            fingerprint: 0,
        };
        let kind = reserve_kind(req, true, metadata_text);
        let reference = req.reference.clone();
        answered(self.send(&items[0].sku, finish_msg(op, items, kind, reference)))
    }

    /// Any reservation: several items, or a client's operation id (claimed, so that a retry
    /// finds it), done on a task of its own so that it completes if the client goes away.
    async fn reserve_any(
        &self,
        actor: &str,
        req: requests::Reserve,
        items: Vec<Item>,
        metadata_text: Option<String>,
    ) -> Result<ReservationView, EngineError> {
        let fp = requests::fingerprint_of("reserve", "", &req);
        let (op_id, claim) = match req.id {
            Some(id) => match self.claim(id, OpKind::Reserve, fp)? {
                Some(claim) => (id, Some(claim)),
                None => return self.created_reservation(&id),
            },
            None => (Uuid::new_v4(), None),
        };
        let op = OpCtx {
            op_id,
            actor: SmolStr::new(actor),
            fingerprint: fp,
        };
        let kind = reserve_kind(&req, false, metadata_text);
        let engine = self.clone();
        let work = async move {
            let _claim = claim;
            let answer = engine
                .admit(op, &items, kind, req.reference.clone())
                .await?;
            let reserved = Reserved::from(answer);
            engine.wait(reserved.lsn).await?;
            Ok(reserved.view(req, items))
        };
        Self::detached(work).await
    }

    fn created_reservation(&self, id: &Uuid) -> Result<ReservationView, EngineError> {
        self.inner
            .ledger
            .read()
            .reservation_created_view(id)
            .ok_or(EngineError::Unavailable)
    }

    /// POST /v1/sales.
    pub async fn sell(&self, actor: &str, req: requests::Sale) -> Result<SaleView, EngineError> {
        let items = requests::parse_items(&req.items)?;
        requests::check_text("reference", &req.reference)?;
        let fp = requests::fingerprint_of("sale", "", &req);
        let (op_id, claim) = match req.id {
            Some(id) => match self.claim(id, OpKind::Sale, fp)? {
                Some(claim) => (id, Some(claim)),
                None => return self.sale(&id).ok_or(EngineError::Unavailable),
            },
            None => (Uuid::new_v4(), None),
        };
        let op = OpCtx {
            op_id,
            actor: SmolStr::new(actor),
            fingerprint: fp,
        };
        let engine = self.clone();
        Self::detached(async move {
            let _claim = claim;
            let lsn = engine
                .admit(op, &items, FinishKind::Sell, req.reference)
                .await?
                .lsn()
                .expect("a sale is logged");
            engine.wait(lsn).await?;
            engine.sale(&op_id).ok_or(EngineError::Unavailable)
        })
        .await
    }

    /// The home actor of a durable reservation.
    fn home_actor(&self, id: &Uuid) -> Result<(Sku, Vec<Item>), EngineError> {
        let items = self
            .inner
            .ledger
            .read()
            .reservation(id)
            .map(|r| r.items().into_vec())
            .ok_or_else(|| EngineError::NotFound(format!("no reservation {id}")))?;
        Ok((home_of(&items).clone(), items))
    }

    fn reservation_now(&self, id: &Uuid) -> Result<ReservationView, EngineError> {
        self.reservation(id).ok_or(EngineError::Unavailable)
    }

    /// POST /v1/reservations/{id}/complete.
    pub async fn complete(
        &self,
        actor: &str,
        id: Uuid,
        req: requests::Complete,
    ) -> Result<ReservationView, EngineError> {
        let partial = match &req.items {
            Some(items) => Some(requests::parse_items(items)?),
            None => None,
        };
        requests::check_text("reference", &req.reference)?;
        let (home, items) = self.home_actor(&id)?;
        let engine = self.clone();
        let actor = SmolStr::new(actor);
        Self::detached(async move {
            let reference = req.reference.clone();
            let answer = engine
                .ask(&home, |reply| {
                    Msg::Complete(Box::new(CompleteMsg {
                        id,
                        actor: actor.clone(),
                        items: partial,
                        reference: reference.clone(),
                        reply,
                    }))
                })
                .await;
            let lsn = match answer {
                Ok(Answer::Durable(lsn)) => lsn,
                Ok(Answer::Reacquire(sold)) => {
                    engine
                        .reacquire(id, actor, &home, items, sold, reference)
                        .await?
                }
                Ok(other) => unreachable!("complete answered {other:?}"),
                Err(r) => return Err(engine.refusal(r).await),
            };
            engine.wait(lsn).await?;
            engine.reservation_now(&id)
        })
        .await
    }

    /// Completes an expired reservation by taking its stock again, if it is there.
    async fn reacquire(
        &self,
        id: Uuid,
        actor: SmolStr,
        home_sku: &Sku,
        items: Vec<Item>,
        sold: Vec<u64>,
        reference: Option<String>,
    ) -> Result<Lsn, EngineError> {
        let home = home_of(&items).clone();
        // A fresh key: the old hold's release may still be travelling under the reservation id.
        let key = Uuid::new_v4();
        let expired = || {
            EngineError::ReservationExpired(
                "the reservation expired and its stock is no longer available".into(),
            )
        };
        let granted = match self
            .take_tentatives(key, &items, &home, |i| sold[i], TentativeKind::Sale)
            .await
        {
            Ok(granted) => granted,
            Err(e) => {
                crate::actor::deliver(&self.inner.shared, home_sku, Msg::ReacquireAbort { id })
                    .await;
                return Err(match e {
                    EngineError::InsufficientStock(_) => expired(),
                    other => other,
                });
            }
        };
        let finish = |reply| {
            Msg::ReacquireFinish(Box::new(ReacquireMsg {
                id,
                actor,
                sold,
                reference,
                reply,
            }))
        };
        match self.finish_at_home(home_sku, finish, &granted, key).await {
            Ok(answer) => Ok(answer.lsn().expect("a completion is logged")),
            Err(refusal) => {
                if matches!(refusal, Refusal::Overloaded) {
                    // Never reached the actor: it still marks the reservation busy.
                    crate::actor::deliver(&self.inner.shared, home_sku, Msg::ReacquireAbort { id })
                        .await;
                }
                Err(match refusal {
                    Refusal::Stock { depends_on, .. } => match self.wait(depends_on).await {
                        Ok(()) => expired(),
                        Err(e) => e,
                    },
                    other => self.refusal(other).await,
                })
            }
        }
    }

    /// POST /v1/reservations/{id}/cancel.
    pub async fn cancel(
        &self,
        actor: &str,
        id: Uuid,
        req: requests::Cancel,
    ) -> Result<ReservationView, EngineError> {
        requests::check_text("reason", &req.reason)?;
        let actor = SmolStr::new(actor);
        self.decide_at_home(id, move |reply| {
            Msg::Cancel(Box::new(CancelMsg {
                id,
                actor,
                note: req.reason,
                reply,
            }))
        })
        .await
    }

    /// POST /v1/reservations/{id}/extend.
    pub async fn extend(
        &self,
        actor: &str,
        id: Uuid,
        req: requests::Extend,
    ) -> Result<ReservationView, EngineError> {
        requests::check_ttl(req.ttl_seconds)?;
        let actor = SmolStr::new(actor);
        self.decide_at_home(id, move |reply| {
            Msg::Extend(Box::new(ExtendMsg {
                id,
                actor,
                ttl_ms: req.ttl_seconds * 1000,
                reply,
            }))
        })
        .await
    }

    /// Asks a reservation's home actor to decide (cancel, extend), waits until the decision
    /// is durable, and answers with the reservation as it then stands.
    async fn decide_at_home(
        &self,
        id: Uuid,
        make: impl FnOnce(Reply) -> Msg + Send + 'static,
    ) -> Result<ReservationView, EngineError> {
        let (home, _) = self.home_actor(&id)?;
        let engine = self.clone();
        Self::detached(async move {
            match engine.ask(&home, make).await {
                Ok(Answer::Durable(lsn)) => engine.wait(lsn).await?,
                Ok(other) => unreachable!("the home actor answered {other:?}"),
                Err(r) => return Err(engine.refusal(r).await),
            }
            engine.reservation_now(&id)
        })
        .await
    }

    // ---------------------------------------------------------------- reads (durable state)

    pub fn product(&self, sku: &str) -> Option<ProductView> {
        self.inner.ledger.read().product(sku)
    }

    pub fn list_products(
        &self,
        status: Option<StockStatus>,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<ProductView>, Option<String>) {
        self.inner.ledger.read().list_products(status, after, limit)
    }

    pub fn history(
        &self,
        sku: &str,
        before: Option<u64>,
        action: Option<Action>,
        limit: usize,
    ) -> Option<(Vec<HistoryView>, Option<u64>)> {
        self.inner.ledger.read().history(sku, before, action, limit)
    }

    pub fn reservation(&self, id: &Uuid) -> Option<ReservationView> {
        self.inner.ledger.read().reservation_view(id)
    }

    pub fn sale(&self, id: &Uuid) -> Option<SaleView> {
        self.inner.ledger.read().sale_view(id)
    }

    /// POST /v1/availability: durable availability of each item; changes nothing.
    pub fn availability(
        &self,
        req: &requests::Availability,
    ) -> Result<(bool, Vec<ItemReport>), EngineError> {
        let items = requests::parse_items(&req.items)?;
        let report = self.stock_report(&items, None);
        let ok = report.iter().all(|r| r.error.is_none());
        Ok((ok, report))
    }

    /// Checks the ledger's invariants (tests, `verify`).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.inner.ledger.read().check_invariants()
    }
}

/// Actor start states from the replayed ledger.
/// Each product's state to start from, as a passive slot keeps it (counts, the holds on it,
/// the earliest expiry of the reservations homed there), and the products home to
/// reservations whose time passed while the server was down. One pass over the reservations;
/// ended ones are not kept: their home actor finds them in the ledger on demand.
fn start_states(ledger: &Ledger, clock: &dyn Clock) -> (Vec<(Sku, Passive)>, Vec<Sku>) {
    let now_ms = clock.now_ms();
    #[derive(Default)]
    struct Holding {
        /// (reservation id, units) of each hold on the product.
        holds: Vec<(Uuid, u64)>,
        /// The earliest expiry of the reservations homed there.
        earliest_ms: Option<i64>,
    }
    let mut held: std::collections::HashMap<&Sku, Holding> = std::collections::HashMap::new();
    let mut overdue_homes = Vec::new();
    for (id, r) in ledger.reservations() {
        if r.status != ReservationStatus::Active {
            continue;
        }
        for (sku, quantity) in r.held() {
            held.entry(sku).or_default().holds.push((*id, quantity));
        }
        let home = r.home();
        let earliest = &mut held.entry(home).or_default().earliest_ms;
        *earliest = Some(earliest.map_or(r.expires_at_ms, |e| e.min(r.expires_at_ms)));
        if r.expires_at_ms <= now_ms {
            overdue_homes.push(home.clone());
        }
    }
    let states = ledger
        .product_counts()
        .map(|(sku, on_hand, reserved, version)| {
            let held = held.remove(sku).map(|h| {
                Box::new(Held {
                    reserved,
                    holds: h.holds.into_boxed_slice(),
                    alarm_at: h.earliest_ms.map(|ms| product::deadline_at(ms, clock)),
                })
            });
            let state = Passive {
                on_hand,
                version,
                held,
            };
            (sku.clone(), state)
        })
        .collect();
    (states, overdue_homes)
}

/// What the home actor answered a new reservation with.
struct Reserved {
    id: Uuid,
    lsn: Lsn,
    at_ms: i64,
    expires_at_ms: i64,
}

impl From<Answer> for Reserved {
    fn from(answer: Answer) -> Reserved {
        let Answer::Reserved {
            id,
            lsn,
            at_ms,
            expires_at_ms,
        } = answer
        else {
            unreachable!("a reservation was answered {answer:?}")
        };
        Reserved {
            id,
            lsn,
            at_ms,
            expires_at_ms,
        }
    }
}

impl Reserved {
    /// Built from what was logged: the same view the ledger answers a repeat with.
    fn view(&self, req: requests::Reserve, items: Vec<Item>) -> ReservationView {
        let metadata = req.metadata.filter(|m| !m.is_null());
        ReservationView::created(
            self.id,
            items,
            self.at_ms,
            self.expires_at_ms,
            req.session_id,
            req.user_id,
            req.reference,
            metadata,
        )
    }
}

/// What the home actor is asked to do for a reservation (`id_here`: see [`FinishKind`]).
fn reserve_kind(req: &requests::Reserve, id_here: bool, metadata: Option<String>) -> FinishKind {
    FinishKind::Reserve {
        id_here,
        ttl_ms: req.ttl_seconds() * 1000,
        session_id: req.session_id.clone(),
        user_id: req.user_id.clone(),
        metadata,
    }
}

/// The message that has the home actor decide and log a new reservation or sale.
fn finish_msg(
    op: OpCtx,
    items: &[Item],
    kind: FinishKind,
    reference: Option<String>,
) -> impl FnOnce(Reply) -> Msg + '_ {
    move |reply| {
        // The one copy of the items for the actor: the caller keeps its own for the answer.
        Msg::Finish(Box::new(FinishMsg {
            op,
            items: items.to_vec(),
            kind,
            reference,
            reply,
        }))
    }
}

/// The answer to a message [`Engine::send`] sent, or why it was not sent.
async fn answered(
    sent: Result<oneshot::Receiver<Result<Answer, Refusal>>, Refusal>,
) -> Result<Answer, Refusal> {
    match sent {
        Ok(rx) => rx.await.unwrap_or(Err(Refusal::Unavailable)),
        Err(refusal) => Err(refusal),
    }
}
