//! What flows into a product actor, and what comes back.

use smol_str::SmolStr;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::domain::{Item, ReservationStatus};
use crate::wal::Lsn;

/// Who asks, under which operation id, with which request fingerprint (for idempotency).
#[derive(Clone, Debug)]
pub struct OpCtx {
    pub op_id: Uuid,
    pub actor: SmolStr,
    pub fingerprint: u32,
}

#[derive(Debug)]
pub enum Answer {
    /// Done; the reply may go out once this LSN is durable.
    Durable(Lsn),
    /// Reservation `id` was logged at `lsn`, created at `at_ms`, expiring at `expires_at_ms`.
    Reserved {
        id: Uuid,
        lsn: Lsn,
        at_ms: i64,
        expires_at_ms: i64,
    },
    /// A tentative hold was taken.
    Tentative,
    /// The reservation had expired: take `sold[i]` of each item again, then finish.
    Reacquire(Vec<u64>),
}

impl Answer {
    /// The LSN to wait for, for answers that logged something.
    pub fn lsn(&self) -> Option<Lsn> {
        match self {
            Answer::Durable(lsn) | Answer::Reserved { lsn, .. } => Some(*lsn),
            Answer::Tentative | Answer::Reacquire(_) => None,
        }
    }
}

#[derive(Debug)]
pub enum Refusal {
    NotFound,
    /// Not enough available here. The refusal shows state up to `depends_on`.
    Stock {
        available: u64,
        depends_on: Lsn,
    },
    Conflict {
        detail: String,
        depends_on: Lsn,
    },
    PreconditionFailed {
        depends_on: Lsn,
    },
    Invalid(String),
    InvalidTransition {
        status: ReservationStatus,
        depends_on: Lsn,
    },
    ReservationExpired {
        depends_on: Lsn,
    },
    /// Another completion of the same reservation is under way.
    Busy,
    Overloaded,
    Unavailable,
}

pub type Reply = oneshot::Sender<Result<Answer, Refusal>>;

/// The LSN a reply reports state up to: it may go out once that is durable (0: nothing).
pub fn depends_on(result: &Result<Answer, Refusal>) -> Lsn {
    match result {
        Ok(answer) => answer.lsn().unwrap_or(0),
        Err(refusal) => refusal.depends_on(),
    }
}

impl Refusal {
    /// The LSN of the state the refusal reflects (0: none).
    pub fn depends_on(&self) -> Lsn {
        match self {
            Refusal::Stock { depends_on, .. }
            | Refusal::Conflict { depends_on, .. }
            | Refusal::PreconditionFailed { depends_on }
            | Refusal::InvalidTransition { depends_on, .. }
            | Refusal::ReservationExpired { depends_on } => *depends_on,
            _ => 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TentativeKind {
    /// Becomes a hold of the reservation named by the key.
    Hold,
    /// Becomes a sale (on_hand drops).
    Sale,
}

/// How a hold ended, as the home actor decided and logged it.
#[derive(Clone, Copy, Debug)]
pub enum HoldOutcome {
    Release,
    Complete { sold: u64 },
}

#[derive(Debug)]
pub struct PutMsg {
    pub op: OpCtx,
    pub name: Option<String>,
    pub low_stock_threshold: Option<u64>,
    pub on_hand: Option<u64>,
    pub if_match: Option<u64>,
    pub reply: Reply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountChange {
    Restock,
    Return,
}

#[derive(Debug)]
pub struct AddMsg {
    pub op: OpCtx,
    pub change: CountChange,
    pub quantity: u64,
    pub reference: Option<String>,
    pub note: Option<String>,
    pub if_match: Option<u64>,
    pub reply: Reply,
}

#[derive(Debug)]
pub struct AdjustMsg {
    pub op: OpCtx,
    pub delta: i64,
    pub reason: String,
    pub reference: Option<String>,
    pub note: Option<String>,
    pub if_match: Option<u64>,
    pub reply: Reply,
}

/// Final step of a new reservation or sale, at the home actor, after the other items' actors
/// granted tentative holds: check the home item, log ONE record for the whole operation.
#[derive(Debug)]
pub struct FinishMsg {
    pub op: OpCtx,
    pub items: Vec<Item>,
    pub kind: FinishKind,
    pub reference: Option<String>,
    pub reply: Reply,
}

#[derive(Debug)]
pub enum FinishKind {
    Reserve {
        /// The home actor makes the reservation's id from the operation id's random bits, so
        /// that the id names the slot of its home (see `homes`). Only for an operation id
        /// stockd drew itself, for a reservation of one item: a client's id is the client's,
        /// and the other items' actors know a multi-item reservation by the operation id.
        id_here: bool,
        ttl_ms: u64,
        session_id: Option<String>,
        user_id: Option<String>,
        metadata: Option<String>,
    },
    Sell,
}

#[derive(Debug)]
pub struct TentativeMsg {
    pub key: Uuid,
    pub quantity: u64,
    pub kind: TentativeKind,
    pub reply: Reply,
}

#[derive(Debug)]
pub struct CompleteMsg {
    pub id: Uuid,
    pub actor: SmolStr,
    /// Partial completion: units to sell per SKU (validated against the hold here).
    pub items: Option<Vec<Item>>,
    pub reference: Option<String>,
    pub reply: Reply,
}

#[derive(Debug)]
pub struct CancelMsg {
    pub id: Uuid,
    pub actor: SmolStr,
    pub note: Option<String>,
    pub reply: Reply,
}

#[derive(Debug)]
pub struct ExtendMsg {
    pub id: Uuid,
    pub actor: SmolStr,
    pub ttl_ms: u64,
    pub reply: Reply,
}

#[derive(Debug)]
pub struct ReacquireMsg {
    pub id: Uuid,
    pub actor: SmolStr,
    pub sold: Vec<u64>,
    pub reference: Option<String>,
    pub reply: Reply,
}

/// Large payloads are boxed: a mailbox allocates its slots in blocks of 32 messages, so the
/// size of `Msg` is paid 32 times by every actor, busy or idle.
#[derive(Debug)]
pub enum Msg {
    Put(Box<PutMsg>),
    Add(Box<AddMsg>),
    Adjust(Box<AdjustMsg>),
    Finish(Box<FinishMsg>),
    Tentative(TentativeMsg),
    /// The operation holding tentative `key` was logged at `lsn`: make it real.
    Commit {
        key: Uuid,
        lsn: Lsn,
    },
    /// The operation holding tentative `key` was not logged: drop it.
    Abort {
        key: Uuid,
    },
    Complete(Box<CompleteMsg>),
    Cancel(Box<CancelMsg>),
    Extend(Box<ExtendMsg>),
    ReacquireFinish(Box<ReacquireMsg>),
    ReacquireAbort {
        id: Uuid,
    },
    /// The home actor ended reservation `reservation_id` at `lsn`: apply it to this item.
    Outcome {
        reservation_id: Uuid,
        outcome: HoldOutcome,
        lsn: Lsn,
    },
    /// Release every hold whose time has passed (start-up), answer with the last LSN.
    ExpireOverdue {
        reply: Reply,
    },
}

impl Msg {
    /// Answers the message's caller with a refusal (overload while parked, shutdown).
    pub fn refuse(self, refusal: Refusal) {
        let reply = match self {
            Msg::Put(m) => m.reply,
            Msg::Add(m) => m.reply,
            Msg::Adjust(m) => m.reply,
            Msg::Finish(m) => m.reply,
            Msg::Tentative(m) => m.reply,
            Msg::Complete(m) => m.reply,
            Msg::Cancel(m) => m.reply,
            Msg::Extend(m) => m.reply,
            Msg::ReacquireFinish(m) => m.reply,
            Msg::ExpireOverdue { reply } => reply,
            Msg::Commit { .. }
            | Msg::Abort { .. }
            | Msg::ReacquireAbort { .. }
            | Msg::Outcome { .. } => return,
        };
        let _ = reply.send(Err(refusal));
    }
}
