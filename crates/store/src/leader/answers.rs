//! The outcomes every trigger brings, a 202 (`Triggered`) and later its run
//! (`Confirmed`), recorded for any number of dispatches in one statement
//! per kind, timeline fact included: a pass records the previous pass's
//! answers and the runs it sees confirmed in one round trip instead of two
//! or three per dispatch. The other outcomes are rarer and go one by one
//! (`LeaderSession::record_outcomes`). This is the only place these two are
//! recorded.
//!
//! Each statement guards its writes by the state (and attempt) it expects,
//! like the one-by-one path, so a stale outcome from before a leadership
//! change cannot undo newer work, and writes a fact only for the dispatches
//! it changed.

use std::collections::HashSet;

use diesel::QueryableByName;
use diesel::result::QueryResult;
use diesel::sql_types::{Array, Int4, Int8, Jsonb, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use dispatcher_core::domain::{DispatchState, TimelineKind};
use dispatcher_core::planner::DispatchOutcome;
use serde_json::Value;
use time::OffsetDateTime;

use crate::error;
use crate::prepared::Prepared;
use crate::schema::sql_types;
use crate::vocab::DbDispatchState;

use super::{attempt_i32, outcome_fact};

/// A run of outcomes for distinct dispatches: those recorded here, and the
/// rest, in their order.
#[derive(Debug, Default)]
pub(super) struct Segment<'a> {
    pub(super) triggered: Vec<&'a DispatchOutcome>,
    pub(super) confirmed: Vec<&'a DispatchOutcome>,
    pub(super) rest: Vec<&'a DispatchOutcome>,
}

/// Cuts `outcomes` into segments in which no dispatch appears twice (one,
/// nearly always), each to be recorded before the next: statements sent
/// together are not ordered per dispatch, segments are.
pub(super) fn segments(outcomes: &[DispatchOutcome]) -> Vec<Segment<'_>> {
    let mut segments = vec![Segment::default()];
    let mut seen = HashSet::with_capacity(outcomes.len());
    for outcome in outcomes {
        if !seen.insert(outcome.id()) {
            seen.clear();
            seen.insert(outcome.id());
            segments.push(Segment::default());
        }
        let Some(segment) = segments.last_mut() else {
            continue;
        };
        match outcome {
            DispatchOutcome::Triggered { .. } => segment.triggered.push(outcome),
            DispatchOutcome::Confirmed { .. } => segment.confirmed.push(outcome),
            _ => segment.rest.push(outcome),
        }
    }
    segments
}

#[derive(QueryableByName)]
struct Changed {
    #[diesel(sql_type = Int8)]
    event_id: i64,
}

/// `triggering` → `triggered` with the EventListener's eventID, for the
/// attempt answered. Returns the events of the dispatches changed.
pub(super) async fn record_triggered(
    mut conn: &AsyncPgConnection,
    outcomes: &[&DispatchOutcome],
    now: OffsetDateTime,
) -> QueryResult<Vec<i64>> {
    let mut ids = Vec::with_capacity(outcomes.len());
    let mut attempts = Vec::with_capacity(outcomes.len());
    let mut listener_event_ids = Vec::with_capacity(outcomes.len());
    let mut details = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        if let DispatchOutcome::Triggered {
            id,
            attempt,
            listener_event_id,
            ..
        } = outcome
        {
            ids.push(id.0);
            attempts.push(attempt_i32(*attempt));
            listener_event_ids.push(listener_event_id.as_deref().map(error::storable));
            details.push(outcome_fact(outcome).1);
        }
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let changed: Vec<Changed> = Prepared(
        diesel::sql_query(
            "WITH v AS (
                SELECT * FROM unnest($1, $2, $3, $4) WITH ORDINALITY
                    AS v(id, attempt, listener_event_id, detail, n)
             ), changed AS (
                UPDATE dispatches d
                   SET state = $5, listener_event_id = v.listener_event_id, triggered_at = $7
                  FROM v
                 WHERE d.id = v.id AND d.state = $6 AND d.attempts = v.attempt
                RETURNING d.id, d.event_id, v.detail, v.n
             ), noted AS (
                INSERT INTO event_timeline (event_id, dispatch_id, at, kind, detail)
                SELECT event_id, id, $7, $8, detail FROM changed ORDER BY n
             )
             SELECT event_id FROM changed",
        )
        .bind::<Array<Int8>, _>(&ids)
        .bind::<Array<Int4>, _>(&attempts)
        .bind::<Array<Nullable<Text>>, _>(&listener_event_ids)
        .bind::<Array<Jsonb>, _>(&details)
        .bind::<sql_types::DispatchState, _>(DbDispatchState(DispatchState::Triggered))
        .bind::<sql_types::DispatchState, _>(DbDispatchState(DispatchState::Triggering))
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(TimelineKind::Accepted.as_str()),
    )
    .load(&mut conn)
    .await?;
    Ok(changed.into_iter().map(|c| c.event_id).collect())
}

/// `triggering`/`triggered` → `confirmed` now that the run is visible, or
/// `cancelled` when its run was to be cancelled while it was in flight (the
/// run, counted from now on, is cancelled by the cancel worker). Confirmed
/// from its run after the answer was lost, the dispatch keeps the run's
/// eventID (it claims the run) and gets a trigger time. Returns the events
/// of the dispatches changed.
pub(super) async fn record_confirmed(
    mut conn: &AsyncPgConnection,
    outcomes: &[&DispatchOutcome],
    now: OffsetDateTime,
) -> QueryResult<Vec<i64>> {
    let mut ids = Vec::with_capacity(outcomes.len());
    let mut listener_event_ids = Vec::with_capacity(outcomes.len());
    let mut details: Vec<Value> = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        if let DispatchOutcome::Confirmed {
            id,
            listener_event_id,
            ..
        } = outcome
        {
            ids.push(id.0);
            listener_event_ids.push(listener_event_id.as_deref().map(error::storable));
            details.push(outcome_fact(outcome).1);
        }
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let changed: Vec<Changed> = Prepared(
        diesel::sql_query(
            "WITH v AS (
                SELECT v.*, EXISTS (SELECT 1 FROM run_cancellations c WHERE c.dispatch_id = v.id)
                            AS cancel
                  FROM unnest($1, $2, $3) WITH ORDINALITY AS v(id, listener_event_id, detail, n)
             ), changed AS (
                UPDATE dispatches d
                   SET state = CASE WHEN v.cancel THEN $6 ELSE $5 END,
                       confirmed_at = $8,
                       finished_at = CASE WHEN v.cancel THEN $8 ELSE d.finished_at END,
                       listener_event_id = COALESCE(d.listener_event_id, v.listener_event_id),
                       triggered_at = CASE WHEN v.listener_event_id IS NULL THEN d.triggered_at
                                           ELSE COALESCE(d.triggered_at, $8) END
                  FROM v
                 WHERE d.id = v.id AND d.state IN ($4, $7)
                RETURNING d.id, d.event_id, v.detail, v.n
             ), noted AS (
                INSERT INTO event_timeline (event_id, dispatch_id, at, kind, detail)
                SELECT event_id, id, $8, $9, detail FROM changed ORDER BY n
             )
             SELECT event_id FROM changed",
        )
        .bind::<Array<Int8>, _>(&ids)
        .bind::<Array<Nullable<Text>>, _>(&listener_event_ids)
        .bind::<Array<Jsonb>, _>(&details)
        .bind::<sql_types::DispatchState, _>(DbDispatchState(DispatchState::Triggering))
        .bind::<sql_types::DispatchState, _>(DbDispatchState(DispatchState::Confirmed))
        .bind::<sql_types::DispatchState, _>(DbDispatchState(DispatchState::Cancelled))
        .bind::<sql_types::DispatchState, _>(DbDispatchState(DispatchState::Triggered))
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(TimelineKind::Confirmed.as_str()),
    )
    .load(&mut conn)
    .await?;
    Ok(changed.into_iter().map(|c| c.event_id).collect())
}
