//! How an event's status follows from its dispatches.
//!
//! The API keeps the original service's per-event vocabulary while the engine
//! works per dispatch (one event can fan out to several pipelines). This is the
//! meaning of folding one into the other. The store folds in SQL whenever it
//! changes dispatch states, in the same transaction (so the fold goes out with
//! the statements around it), and its tests hold that fold equal to this one
//! over every mix of states.

use crate::domain::{CANCELLED_MESSAGE, DispatchState, EventStatus};

/// The error of a failed dispatch that recorded none.
pub const FAILED_WITHOUT_ERROR: &str = "trigger failed";

/// One dispatch's contribution to its event's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchSummary {
    /// Current state.
    pub state: DispatchState,
    /// Last trigger error, if any.
    pub last_error: Option<String>,
}

/// The event-level view derived from its dispatches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedStatus {
    /// Status shown by the API.
    pub status: EventStatus,
    /// The original's `processed` flag: true for every final status
    /// (`processed`, `cancelled`, `failed`; `aborted` is set at planning),
    /// false while `pending` or `queued`. Whether a listener accepted a
    /// trigger is the status itself and each dispatch's state.
    pub processed: bool,
    /// Shown as `processing_error`.
    pub error: Option<String>,
    /// Whether no dispatch needs the engine any more (sets `processed_at`).
    pub is_final: bool,
}

/// Folds dispatch states into the event status:
/// any dispatch still waiting → `queued`; otherwise any accepted → `processed`;
/// otherwise any failed → `failed`; otherwise (all cancelled) → `cancelled`.
/// An event without dispatches has not been planned yet → `pending`.
pub fn derive_event_status(dispatches: &[DispatchSummary]) -> DerivedStatus {
    let any = |f: fn(DispatchState) -> bool| dispatches.iter().any(|d| f(d.state));
    let accepted = any(DispatchState::was_accepted);
    let failed_error = || {
        dispatches
            .iter()
            .find(|d| d.state == DispatchState::Failed)
            .map(|d| {
                d.last_error
                    .clone()
                    .unwrap_or_else(|| FAILED_WITHOUT_ERROR.to_owned())
            })
    };
    if dispatches.is_empty() {
        return DerivedStatus {
            status: EventStatus::Pending,
            processed: false,
            error: None,
            is_final: false,
        };
    }
    if any(|s| matches!(s, DispatchState::Queued | DispatchState::Triggering)) {
        return DerivedStatus {
            status: EventStatus::Queued,
            processed: false,
            error: None,
            is_final: false,
        };
    }
    if accepted {
        // A partial failure of another target is still worth showing.
        return DerivedStatus {
            status: EventStatus::Processed,
            processed: true,
            error: failed_error(),
            is_final: true,
        };
    }
    if let Some(error) = failed_error() {
        return DerivedStatus {
            status: EventStatus::Failed,
            processed: true,
            error: Some(error),
            is_final: true,
        };
    }
    DerivedStatus {
        status: EventStatus::Cancelled,
        processed: true,
        error: Some(CANCELLED_MESSAGE.to_owned()),
        is_final: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DispatchState::*;

    fn derive(states: &[DispatchState]) -> DerivedStatus {
        let ds: Vec<_> = states
            .iter()
            .map(|s| DispatchSummary {
                state: *s,
                last_error: (*s == Failed).then(|| "HTTP 500".to_owned()),
            })
            .collect();
        derive_event_status(&ds)
    }

    #[test]
    fn folds_states() {
        assert_eq!(derive(&[]).status, EventStatus::Pending);
        assert_eq!(derive(&[Queued]).status, EventStatus::Queued);
        assert_eq!(derive(&[Triggering]).status, EventStatus::Queued);
        let d = derive(&[Triggered]);
        assert_eq!(
            (d.status, d.processed, d.is_final),
            (EventStatus::Processed, true, true)
        );
        assert_eq!(derive(&[Confirmed]).status, EventStatus::Processed);
        let d = derive(&[Cancelled]);
        assert_eq!(
            (d.status, d.error.as_deref(), d.processed),
            (EventStatus::Cancelled, Some(CANCELLED_MESSAGE), true),
            "final statuses are processed, as in the original"
        );
        let d = derive(&[Failed]);
        assert_eq!(
            (d.status, d.error.as_deref(), d.processed),
            (EventStatus::Failed, Some("HTTP 500"), true)
        );
    }

    #[test]
    fn fan_out_mixes() {
        let d = derive(&[Triggered, Queued]);
        assert_eq!(
            (d.status, d.processed, d.is_final),
            (EventStatus::Queued, false, false),
            "not processed while another target waits"
        );
        let d = derive(&[Confirmed, Failed]);
        assert_eq!(
            (d.status, d.error.as_deref()),
            (EventStatus::Processed, Some("HTTP 500"))
        );
        assert_eq!(derive(&[Cancelled, Failed]).status, EventStatus::Failed);
        assert_eq!(
            derive(&[Cancelled, Triggered]).status,
            EventStatus::Processed
        );
    }
}
