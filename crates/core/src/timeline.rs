//! Sentences for an event's stored timeline.
//!
//! The store records facts (a [`TimelineKind`] plus a small JSON object, in
//! the transaction that made the change); people read sentences. Rendering at
//! read time keeps the wording in one place and lets it improve without
//! rewriting stored rows.

use serde_json::Value;

use crate::domain::{TimelineEntry, TimelineKind};

/// Facts of a `queued` entry, as the store writes them.
pub mod fact {
    /// Config item name.
    pub const ITEM: &str = "item";
    /// Pool key.
    pub const POOL: &str = "pool";
    /// 1-based place in the pool's queue when it joined.
    pub const POSITION: &str = "position";
    /// Queue length (this dispatch included) when it joined.
    pub const OF: &str = "of";
    /// Public id of the newer event that cancelled this one.
    pub const BY_EVENT: &str = "by_event";
    /// Trigger attempt (1-based).
    pub const ATTEMPT: &str = "attempt";
    /// The EventListener's `eventID`.
    pub const LISTENER_EVENT_ID: &str = "listener_event_id";
    /// The PipelineRun's name.
    pub const RUN: &str = "run";
    /// Why a trigger failed.
    pub const ERROR: &str = "error";
    /// When a retry is due (RFC 3339).
    pub const NEXT_ATTEMPT_AT: &str = "next_attempt_at";
    /// Replay round.
    pub const ROUND: &str = "round";
    /// A replay that overrides newest-wins.
    pub const FORCE: &str = "force";
    /// Final status, or another free text.
    pub const STATUS: &str = "status";
    /// Delivery id.
    pub const DELIVERY_ID: &str = "delivery_id";
    /// `action` of the payload.
    pub const ACTION: &str = "action";
    /// Why a run is cancelled: `superseded` or `closed`.
    pub const REASON: &str = "reason";
    /// The cancelled dispatch was still waiting (no run to cancel).
    pub const QUEUED: &str = "queued";
}

fn text<'a>(detail: &'a Value, key: &str) -> &'a str {
    detail.get(key).and_then(Value::as_str).unwrap_or("?")
}

fn number(detail: &Value, key: &str) -> String {
    detail
        .get(key)
        .and_then(Value::as_i64)
        .map_or_else(|| "?".to_owned(), |n| n.to_string())
}

/// The entry as one sentence for people (the API's `message`, the text of
/// `dispatcher explain`).
pub fn describe(entry: &TimelineEntry) -> String {
    use fact::*;
    let d = &entry.detail;
    let by = entry.actor.as_deref().unwrap_or("an operator");
    match entry.kind {
        TimelineKind::Received => format!(
            "received delivery {} (action {})",
            text(d, DELIVERY_ID),
            text(d, ACTION)
        ),
        TimelineKind::Queued => format!(
            "queued for {} at position {} of {} in pool {}",
            text(d, ITEM),
            number(d, POSITION),
            number(d, OF),
            text(d, POOL)
        ),
        TimelineKind::Aborted => {
            "no configured item matched (repository, action or filter): Unsupported event"
                .to_owned()
        }
        TimelineKind::Superseded => format!(
            "cancelled because of newer event {} of the same pull request",
            text(d, BY_EVENT)
        ),
        TimelineKind::TriggerSent => {
            format!("attempt {}: POST to the EventListener", number(d, ATTEMPT))
        }
        TimelineKind::Accepted => format!(
            "attempt {}: the EventListener answered 202 (eventID {})",
            number(d, ATTEMPT),
            text(d, LISTENER_EVENT_ID)
        ),
        TimelineKind::Retry => format!(
            "attempt {} failed: {}; next attempt at {}",
            number(d, ATTEMPT),
            text(d, ERROR),
            text(d, NEXT_ATTEMPT_AT)
        ),
        TimelineKind::Failed => format!(
            "failed after attempt {}: {}",
            number(d, ATTEMPT),
            text(d, ERROR)
        ),
        TimelineKind::Unanswered => format!(
            "attempt {}: the answer was lost ({}); the slot stays reserved until its PipelineRun shows up",
            number(d, ATTEMPT),
            text(d, ERROR)
        ),
        TimelineKind::Confirmed => match d.get(RUN).and_then(Value::as_str) {
            Some(run) => format!("PipelineRun {run} seen: confirmed"),
            None => format!(
                "PipelineRun of eventID {} seen: confirmed",
                text(d, LISTENER_EVENT_ID)
            ),
        },
        TimelineKind::Moved => format!(
            "moved to pool {} (its item's pool changed in the config)",
            text(d, POOL)
        ),
        TimelineKind::Cancelled => format!("cancelled by {by}"),
        TimelineKind::Replayed => {
            let forced = if d.get(FORCE).and_then(Value::as_bool) == Some(true) {
                ", forced past newer events"
            } else {
                ""
            };
            format!("replayed by {by} as round {}{forced}", number(d, ROUND))
        }
        TimelineKind::PoolPaused => format!("pool {} paused by {by}", text(d, POOL)),
        TimelineKind::PoolResumed => format!("pool {} resumed by {by}", text(d, POOL)),
        TimelineKind::Finished => format!("finished: {}", text(d, STATUS)),
        TimelineKind::RunCancelRequested => {
            let why = match d.get(REASON).and_then(Value::as_str) {
                Some("closed") => {
                    format!("the pull request was closed (event {})", text(d, BY_EVENT))
                }
                _ => format!("newer event {} of the same pull request", text(d, BY_EVENT)),
            };
            if d.get(QUEUED).and_then(Value::as_bool) == Some(true) {
                format!("cancelled while waiting: {why}")
            } else {
                format!("cancelled because of {why}; its PipelineRun is being cancelled")
            }
        }
        TimelineKind::RunCancelled => match d.get(RUN).and_then(Value::as_str) {
            Some(run) => format!("PipelineRun {run} cancelled"),
            None => "no running PipelineRun left to cancel".to_owned(),
        },
        TimelineKind::RunCancelFailed => match d.get(NEXT_ATTEMPT_AT).and_then(Value::as_str) {
            Some(next) => format!(
                "cancelling the PipelineRun failed (attempt {}): {}; next attempt at {next}",
                number(d, ATTEMPT),
                text(d, ERROR)
            ),
            None => format!(
                "gave up cancelling the PipelineRun after attempt {}: {}",
                number(d, ATTEMPT),
                text(d, ERROR)
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DispatchId;

    fn entry(kind: TimelineKind, detail: Value, actor: Option<&str>) -> TimelineEntry {
        TimelineEntry {
            at: time::OffsetDateTime::UNIX_EPOCH,
            dispatch: Some(DispatchId(1)),
            kind,
            detail,
            actor: actor.map(str::to_owned),
        }
    }

    #[test]
    fn sentences_carry_their_facts() {
        let queued = entry(
            TimelineKind::Queued,
            serde_json::json!({"item": "ops", "pool": "ns/p", "position": 3, "of": 4}),
            None,
        );
        assert_eq!(
            describe(&queued),
            "queued for ops at position 3 of 4 in pool ns/p"
        );
        let replay = entry(
            TimelineKind::Replayed,
            serde_json::json!({"round": 2, "force": true}),
            Some("alice"),
        );
        assert_eq!(
            describe(&replay),
            "replayed by alice as round 2, forced past newer events"
        );
        let confirmed = entry(
            TimelineKind::Confirmed,
            serde_json::json!({"listener_event_id": "ev-1"}),
            None,
        );
        assert!(describe(&confirmed).contains("ev-1"));
    }

    #[test]
    fn missing_facts_render_as_question_marks_not_panics() {
        for kind in TimelineKind::ALL {
            let s = describe(&entry(*kind, serde_json::json!({}), None));
            assert!(!s.is_empty());
        }
    }
}
