//! The reservation state machine. Every transition of a hold is decided here, by the one
//! actor that owns the reservation, so complete / cancel / expire / extend cannot both win.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    Active,
    Completed,
    Cancelled,
    Expired,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Active => "active",
            ReservationStatus::Completed => "completed",
            ReservationStatus::Cancelled => "cancelled",
            ReservationStatus::Expired => "expired",
        }
    }
}

/// Why a hold was released. Part of the record format: append only, never reorder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    Cancelled,
    Expired,
    Aborted,
}

impl ReleaseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Cancelled => "cancelled",
            ReleaseReason::Expired => "expired",
            ReleaseReason::Aborted => "aborted",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum CompleteDecision {
    /// Active: sell what is held.
    Complete,
    /// Already completed: answer 200 again, change nothing.
    AlreadyCompleted,
    /// Expired: the hold is gone; take the stock again if it is there.
    Reacquire,
    /// Cancelled: 409 invalid_transition.
    Refuse,
}

pub fn decide_complete(status: ReservationStatus) -> CompleteDecision {
    match status {
        ReservationStatus::Active => CompleteDecision::Complete,
        ReservationStatus::Completed => CompleteDecision::AlreadyCompleted,
        ReservationStatus::Expired => CompleteDecision::Reacquire,
        ReservationStatus::Cancelled => CompleteDecision::Refuse,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum CancelDecision {
    Cancel,
    /// Cancelled or expired already: 200 with that status, change nothing.
    AlreadyEnded,
    /// Completed: 409 invalid_transition.
    Refuse,
}

pub fn decide_cancel(status: ReservationStatus) -> CancelDecision {
    match status {
        ReservationStatus::Active => CancelDecision::Cancel,
        ReservationStatus::Cancelled | ReservationStatus::Expired => CancelDecision::AlreadyEnded,
        ReservationStatus::Completed => CancelDecision::Refuse,
    }
}

/// Expiry only ends an active hold; anything else means the timer entry is stale.
pub fn may_expire(status: ReservationStatus) -> bool {
    status == ReservationStatus::Active
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReservationStatus::*;

    #[test]
    fn complete_transitions() {
        assert_eq!(decide_complete(Active), CompleteDecision::Complete);
        assert_eq!(
            decide_complete(Completed),
            CompleteDecision::AlreadyCompleted
        );
        assert_eq!(decide_complete(Expired), CompleteDecision::Reacquire);
        assert_eq!(decide_complete(Cancelled), CompleteDecision::Refuse);
    }

    #[test]
    fn cancel_transitions() {
        assert_eq!(decide_cancel(Active), CancelDecision::Cancel);
        assert_eq!(decide_cancel(Cancelled), CancelDecision::AlreadyEnded);
        assert_eq!(decide_cancel(Expired), CancelDecision::AlreadyEnded);
        assert_eq!(decide_cancel(Completed), CancelDecision::Refuse);
    }

    #[test]
    fn only_active_holds_expire() {
        assert!(may_expire(Active));
        assert!(!may_expire(Completed) && !may_expire(Cancelled) && !may_expire(Expired));
    }
}
