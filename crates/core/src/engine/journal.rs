//! The dispatch journal: the one place where every state change of a
//! dispatch, and the abort of an event nothing matched, is logged.
//!
//! Each change is logged exactly once, at `info` or above, where the engine
//! decides it (the store applies decisions silently; the runtime logs only
//! its own concerns), with the reason and the same structured fields
//! everywhere: `event`, `dispatch` (absent for a dispatch cancelled before
//! it got an id), `pool`, `item`, `repo`, `pr`, plus `attempt` where a
//! trigger is involved. The messages name the change (`dispatch queued`,
//! `dispatch cancelled`, `event aborted`, `dispatch triggering`,
//! `dispatch triggered`, `dispatch retry`, `dispatch failed`,
//! `dispatch unanswered`, `dispatch confirmed`, `dispatch moved`), so one
//! filter on the message finds every change of a kind.

use crate::config::Settings;
use crate::domain::{DispatchState, rfc3339};
use crate::planner::{DispatchOutcome, IntakePlan, MatchedEvent};
use crate::ports::{OpenDispatch, TriggerJob, UnplannedEvent};

/// The reason recorded for a dispatch superseded by a newer event.
const SUPERSEDED: &str = "superseded by a newer event of the same pull request";

/// Logs what an applied intake plan changed. `open` is the open work the
/// plan was made from; `created` the queued dispatches the store created
/// (a planned queued dispatch missing from it was cancelled by the store
/// because a newer event of its pull request already had one).
pub(super) fn intake(
    plan: &IntakePlan,
    events: &[UnplannedEvent],
    matched: &[MatchedEvent],
    open: &[OpenDispatch],
    created: &[OpenDispatch],
) {
    for id in &plan.aborted {
        let Some(e) = events.iter().find(|e| e.id == *id) else {
            continue;
        };
        tracing::info!(
            event = %e.id, repo = %e.pr.repository, pr = e.pr.number, action = %e.action,
            reason = "no config item matches", "event aborted"
        );
    }
    for id in &plan.superseded {
        let Some(d) = open.iter().find(|d| d.id == *id) else {
            continue;
        };
        // The event that replaces it: the newest queued dispatch of its PR and item.
        let by = plan
            .new_dispatches
            .iter()
            .filter(|n| n.state == DispatchState::Queued && n.pr == d.pr && n.item == d.item)
            .map(|n| n.event_id)
            .max();
        tracing::info!(
            event = %d.event_id, dispatch = %d.id, pool = %d.pool, item = %d.item,
            repo = %d.pr.repository, pr = d.pr.number,
            superseded_by = by.map(|e| e.0), reason = SUPERSEDED, "dispatch cancelled"
        );
    }
    for n in &plan.new_dispatches {
        let made = created
            .iter()
            .find(|d| d.event_id == n.event_id && d.item == n.item);
        match (n.state, made) {
            (DispatchState::Queued, Some(d)) => {
                let items = matched
                    .iter()
                    .find(|m| m.id == n.event_id)
                    .map_or(0, |m| m.items.len());
                tracing::info!(
                    event = %d.event_id, dispatch = %d.id, pool = %d.pool, item = %d.item,
                    repo = %d.pr.repository, pr = d.pr.number, queue_position = d.queue_position,
                    matched_items = items, reason = "matched a config item", "dispatch queued"
                );
            }
            // Cancelled by the plan, or by the store when a newer event of its
            // PR committed first and was planned already.
            _ => {
                tracing::info!(
                    event = %n.event_id, pool = %n.pool, item = %n.item,
                    repo = %n.pr.repository, pr = n.pr.number,
                    reason = "a newer event of the same pull request was received first",
                    "dispatch cancelled"
                );
            }
        }
    }
}

/// Logs a bookkeeping decision of the dispatch planner (confirmations,
/// orphan retries and failures, moves, late supersessions).
pub(super) fn planned(outcome: &DispatchOutcome, open: &[OpenDispatch]) {
    let Some(d) = open.iter().find(|d| d.id == outcome.id()) else {
        return;
    };
    let (event, dispatch, pool, item) = (d.event_id, d.id, &d.pool, &d.item);
    let (repo, pr) = (&d.pr.repository, d.pr.number);
    match outcome {
        DispatchOutcome::Confirmed {
            listener_event_id, ..
        } => tracing::info!(
            %event, %dispatch, %pool, %item, %repo, pr, attempt = d.attempts,
            listener_event_id = listener_event_id.as_deref().or(d.listener_event_id.as_deref()).unwrap_or("-"),
            reason = "its PipelineRun is visible", "dispatch confirmed"
        ),
        DispatchOutcome::Failed { attempt, error, .. } => tracing::error!(
            %event, %dispatch, %pool, %item, %repo, pr, attempt, reason = %error, "dispatch failed"
        ),
        DispatchOutcome::Retry {
            attempt,
            error,
            next_attempt_at,
            ..
        } => tracing::warn!(
            %event, %dispatch, %pool, %item, %repo, pr, attempt, reason = %error,
            retry_at = %rfc3339::format(*next_attempt_at), "dispatch retry"
        ),
        DispatchOutcome::Superseded { .. } => tracing::info!(
            %event, %dispatch, %pool, %item, %repo, pr,
            reason = "a newer event of the same pull request arrived while it waited to retry",
            "dispatch cancelled"
        ),
        DispatchOutcome::Moved { pool: to, .. } => tracing::info!(
            %event, %dispatch, %pool, to = %to, %item, %repo, pr,
            reason = "its config item now belongs to another pool", "dispatch moved"
        ),
        // Decided from trigger answers only (see `answered`); cancellations
        // are logged by `cancels`.
        DispatchOutcome::Triggered { .. }
        | DispatchOutcome::Unanswered { .. }
        | DispatchOutcome::CancelRun { .. } => {}
    }
}

/// Logs the cancellations decided for items with `cancel_superseded` or
/// `cancel_on_close`.
pub(super) fn cancels(outcomes: &[DispatchOutcome], candidates: &[crate::ports::CancelCandidate]) {
    for outcome in outcomes {
        let DispatchOutcome::CancelRun {
            id,
            reason,
            by_event,
            ..
        } = outcome
        else {
            continue;
        };
        let Some(c) = candidates.iter().find(|c| c.id == *id) else {
            continue;
        };
        let (event, dispatch, pool, item) = (c.event_id, c.id, &c.pool, &c.item);
        if c.state == DispatchState::Queued {
            tracing::info!(
                %event, %dispatch, %pool, %item, by_event = %by_event, reason = reason.as_str(),
                "dispatch cancelled: its pull request was closed"
            );
        } else {
            tracing::info!(
                %event, %dispatch, %pool, %item, state = %c.state, by_event = %by_event,
                reason = reason.as_str(), "dispatch cancelled; cancelling its PipelineRun"
            );
        }
    }
}

/// Logs a dispatch committed as `triggering` (its POST goes out next).
pub(super) fn triggering(settings: &Settings, job: &TriggerJob) {
    tracing::info!(
        event = %job.event_id, dispatch = %job.dispatch, pool = pool_of(settings, job),
        item = %job.item, repo = %job.pr.repository, pr = job.pr.number, attempt = job.attempt,
        reason = "capacity free in its pool, oldest in the queue", "dispatch triggering"
    );
}

/// Logs what the answer to a trigger decided.
pub(super) fn answered(settings: &Settings, job: &TriggerJob, outcome: &DispatchOutcome) {
    let (event, dispatch, pool, item) = (
        job.event_id,
        job.dispatch,
        pool_of(settings, job),
        &job.item,
    );
    let (repo, pr, attempt) = (&job.pr.repository, job.pr.number, job.attempt);
    match outcome {
        DispatchOutcome::Triggered {
            listener_event_id, ..
        } => tracing::info!(
            %event, %dispatch, pool, %item, %repo, pr, attempt,
            listener_event_id = listener_event_id.as_deref().unwrap_or("-"),
            reason = "the EventListener accepted the trigger (202)", "dispatch triggered"
        ),
        DispatchOutcome::Unanswered { error, .. } => tracing::warn!(
            %event, %dispatch, pool, %item, %repo, pr, attempt, reason = %error,
            then = "slot kept until its PipelineRun shows up or the reservation ends",
            "dispatch unanswered"
        ),
        DispatchOutcome::Failed { error, .. } => tracing::error!(
            %event, %dispatch, pool, %item, %repo, pr, attempt, reason = %error,
            "dispatch failed"
        ),
        DispatchOutcome::Retry {
            error,
            next_attempt_at,
            ..
        } => tracing::warn!(
            %event, %dispatch, pool, %item, %repo, pr, attempt, reason = %error,
            retry_at = %rfc3339::format(*next_attempt_at), "dispatch retry"
        ),
        // Decided by the planner only (see `planned`).
        DispatchOutcome::Confirmed { .. }
        | DispatchOutcome::Superseded { .. }
        | DispatchOutcome::Moved { .. }
        | DispatchOutcome::CancelRun { .. } => {}
    }
}

/// The pool of a job's item (`unknown` when the item is no longer configured).
pub(super) fn pool_of<'s>(settings: &'s Settings, job: &TriggerJob) -> &'s str {
    settings
        .item(&job.item)
        .map_or("unknown", |i| i.pool.0.as_str())
}
