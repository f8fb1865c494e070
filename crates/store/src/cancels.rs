//! Run cancellations (`run_cancellations`): the work of items with
//! `cancel_superseded` or `cancel_on_close`.
//!
//! The engine finds candidates ([`load_candidates`]) and records its
//! decisions through the leader session ([`apply`], in the transaction of
//! the other outcomes of the pass); the cancel worker then reads due rows and
//! records each attempt ([`PgRunCancels`]). A dispatch whose run is cancelled
//! while it is still in flight stays `triggering`/`triggered` (holding its
//! slot) and becomes `cancelled` when its run is seen (in the statement that
//! confirms it, `leader::answers`).

use diesel::prelude::*;
use diesel::sql_types::{Array, Bool, Double, Int4, Int8, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use dispatcher_core::config::{PoolKey, TektonApiVersion};
use dispatcher_core::domain::{DispatchId, DispatchState, EventId, TimelineKind, rfc3339};
use dispatcher_core::planner::CancelReason;
use dispatcher_core::ports::{
    CancelCandidate, CancelQuery, RunCancelResult, RunCancelStore, RunCancelTask, RunTarget,
    StoreError,
};
use dispatcher_core::timeline::fact;
use time::OffsetDateTime;

use crate::error;
use crate::pool::Database;
use crate::schema::sql_types;
use crate::vocab::DbDispatchState;

fn db(state: DispatchState) -> DbDispatchState {
    DbDispatchState(state)
}

#[derive(QueryableByName)]
struct CandidateRow {
    #[diesel(sql_type = Int8)]
    id: i64,
    #[diesel(sql_type = Int8)]
    event_id: i64,
    #[diesel(sql_type = Text)]
    item_name: String,
    #[diesel(sql_type = Text)]
    pool: String,
    #[diesel(sql_type = sql_types::DispatchState)]
    state: DbDispatchState,
    #[diesel(sql_type = Nullable<Int8>)]
    newer_event: Option<i64>,
    #[diesel(sql_type = Nullable<Int8>)]
    closed_by: Option<i64>,
}

/// See [`dispatcher_core::ports::DispatchStore::cancel_candidates`].
pub(crate) async fn load_candidates(
    conn: &mut AsyncPgConnection,
    query: &CancelQuery,
) -> QueryResult<Vec<CancelCandidate>> {
    let rows: Vec<CandidateRow> = diesel::sql_query(
        "SELECT * FROM (
             SELECT d.id, d.event_id, d.item_name, d.pool, d.state,
                    -- A forced replay runs despite newer events and closes.
                    CASE WHEN d.forced THEN NULL ELSE (
                        SELECT max(n.event_id) FROM dispatches n
                         WHERE n.repository_full_name = d.repository_full_name
                           AND n.pull_request_number = d.pull_request_number
                           AND n.item_name = d.item_name
                           AND n.event_id > d.event_id) END AS newer_event,
                    CASE WHEN d.forced OR NOT d.item_name = ANY($2) THEN NULL ELSE (
                        SELECT max(e.id) FROM webhook_events e
                         WHERE e.action = 'closed'
                           AND e.repository_full_name = d.repository_full_name
                           AND e.pull_request_number = d.pull_request_number
                           AND e.id > d.event_id
                           AND e.planned_at IS NOT NULL) END AS closed_by
               FROM dispatches d
              WHERE (d.item_name = ANY($1) OR d.item_name = ANY($2))
                AND ((d.state = $5 AND d.item_name = ANY($2))
                     OR (d.state = ANY($6)
                         AND NOT EXISTS (SELECT 1 FROM run_cancellations c WHERE c.dispatch_id = d.id))
                     OR (d.state = $7 AND (d.listener_event_id = ANY($3) OR d.id = ANY($4))
                         AND NOT EXISTS (SELECT 1 FROM run_cancellations c WHERE c.dispatch_id = d.id)))
         ) c
         WHERE (c.newer_event IS NOT NULL AND c.item_name = ANY($1))
            OR c.closed_by IS NOT NULL
         ORDER BY c.id",
    )
    .bind::<Array<Text>, _>(&query.superseded_items)
    .bind::<Array<Text>, _>(&query.close_items)
    .bind::<Array<Text>, _>(&query.running_event_ids)
    .bind::<Array<Int8>, _>(&query.running_dispatch_ids)
    .bind::<sql_types::DispatchState, _>(db(DispatchState::Queued))
    .bind::<Array<sql_types::DispatchState>, _>(vec![
        db(DispatchState::Triggering),
        db(DispatchState::Triggered),
    ])
    .bind::<sql_types::DispatchState, _>(db(DispatchState::Confirmed))
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| CancelCandidate {
            id: DispatchId(r.id),
            event_id: EventId(r.event_id),
            item: r.item_name,
            pool: PoolKey(r.pool),
            state: r.state.0,
            newer_event: r.newer_event.map(EventId),
            closed_by: r.closed_by.map(EventId),
        })
        .collect())
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = sql_types::DispatchState)]
    state: DbDispatchState,
    #[diesel(sql_type = Int8)]
    event_id: i64,
}

/// Applies one `CancelRun` decision: a queued dispatch becomes `cancelled`;
/// one in flight or confirmed gets a pending run cancellation, and a
/// confirmed one (its run is counted from Kubernetes until it finishes)
/// becomes `cancelled` at once. Writes the timeline entry naming the event
/// that caused it. Returns the event whose status may have changed.
pub(crate) async fn apply(
    conn: &mut AsyncPgConnection,
    dispatch: DispatchId,
    reason: CancelReason,
    by_event: EventId,
    target: &RunTarget,
    now: OffsetDateTime,
) -> QueryResult<Option<i64>> {
    let locked: Option<Locked> =
        diesel::sql_query("SELECT state, event_id FROM dispatches WHERE id = $1 FOR UPDATE")
            .bind::<Int8, _>(dispatch.0)
            .get_result(conn)
            .await
            .optional()?;
    let Some(Locked { state, event_id }) = locked else {
        return Ok(None);
    };
    let state = state.0;
    let queued = state == DispatchState::Queued;
    if !matches!(
        state,
        DispatchState::Queued
            | DispatchState::Triggering
            | DispatchState::Triggered
            | DispatchState::Confirmed
    ) {
        return Ok(None);
    }
    if !queued {
        let inserted = diesel::sql_query(
            "INSERT INTO run_cancellations
                 (dispatch_id, reason, by_event_id, namespace, api_version, dispatch_label,
                  next_attempt_at, requested_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
             ON CONFLICT (dispatch_id) DO NOTHING",
        )
        .bind::<Int8, _>(dispatch.0)
        .bind::<Text, _>(reason.as_str())
        .bind::<Int8, _>(by_event.0)
        .bind::<Text, _>(&target.namespace)
        .bind::<Text, _>(target.api_version.as_str())
        .bind::<Nullable<Text>, _>(target.dispatch_label.as_deref())
        .bind::<Timestamptz, _>(now)
        .execute(conn)
        .await?;
        if inserted == 0 {
            return Ok(None);
        }
    }
    let changed = if matches!(state, DispatchState::Queued | DispatchState::Confirmed) {
        diesel::sql_query(
            "UPDATE dispatches SET state = $2, finished_at = $3 WHERE id = $1 AND state = $4",
        )
        .bind::<Int8, _>(dispatch.0)
        .bind::<sql_types::DispatchState, _>(db(DispatchState::Cancelled))
        .bind::<Timestamptz, _>(now)
        .bind::<sql_types::DispatchState, _>(db(state))
        .execute(conn)
        .await?
            > 0
    } else {
        false
    };
    diesel::sql_query(
        "INSERT INTO event_timeline (event_id, dispatch_id, at, kind, detail)
         SELECT $1, $2, $3, $4,
                jsonb_build_object('reason', $5::text, 'queued', $6,
                                   'by_event', (SELECT e.uuid::text FROM webhook_events e WHERE e.id = $7))",
    )
    .bind::<Int8, _>(event_id)
    .bind::<Int8, _>(dispatch.0)
    .bind::<Timestamptz, _>(now)
    .bind::<Text, _>(TimelineKind::RunCancelRequested.as_str())
    .bind::<Text, _>(reason.as_str())
    .bind::<Bool, _>(queued)
    .bind::<Int8, _>(by_event.0)
    .execute(conn)
    .await?;
    Ok(changed.then_some(event_id))
}

/// Pending run cancellations in PostgreSQL, for the cancel worker. Its
/// writes touch only `run_cancellations` and the timeline, never a
/// dispatch's state, so they need no leader fencing.
#[derive(Debug, Clone)]
pub struct PgRunCancels {
    db: Database,
}

impl PgRunCancels {
    pub(crate) fn new(db: Database) -> Self {
        Self { db }
    }
}

#[derive(QueryableByName)]
struct DueRow {
    #[diesel(sql_type = Int8)]
    dispatch_id: i64,
    #[diesel(sql_type = Int8)]
    event_id: i64,
    #[diesel(sql_type = Text)]
    pool: String,
    #[diesel(sql_type = Text)]
    reason: String,
    #[diesel(sql_type = Text)]
    namespace: String,
    #[diesel(sql_type = Text)]
    api_version: String,
    #[diesel(sql_type = Nullable<Text>)]
    dispatch_label: Option<String>,
    #[diesel(sql_type = sql_types::DispatchState)]
    state: DbDispatchState,
    #[diesel(sql_type = Bool)]
    run_seen: bool,
    #[diesel(sql_type = Nullable<Text>)]
    listener_event_id: Option<String>,
    #[diesel(sql_type = Int4)]
    attempts: i32,
}

#[derive(QueryableByName)]
struct Wait {
    #[diesel(sql_type = Nullable<Double>)]
    seconds: Option<f64>,
}

impl RunCancelStore for PgRunCancels {
    async fn due_run_cancels(&mut self, limit: usize) -> Result<Vec<RunCancelTask>, StoreError> {
        let mut conn = self.db.conn().await?;
        let rows: Vec<DueRow> = diesel::sql_query(
            "SELECT c.dispatch_id, d.event_id, d.pool, c.reason, c.namespace, c.api_version, c.dispatch_label,
                    d.state, d.confirmed_at IS NOT NULL AS run_seen, d.listener_event_id, c.attempts
               FROM run_cancellations c JOIN dispatches d ON d.id = c.dispatch_id
              WHERE c.done_at IS NULL AND c.next_attempt_at <= now()
              ORDER BY c.next_attempt_at, c.dispatch_id
              LIMIT $1",
        )
        .bind::<Int8, _>(i64::try_from(limit).unwrap_or(i64::MAX))
        .load(&mut conn)
        .await
        .map_err(error::query)?;
        Ok(rows
            .into_iter()
            .map(|r| RunCancelTask {
                dispatch: DispatchId(r.dispatch_id),
                event_id: EventId(r.event_id),
                pool: PoolKey(r.pool),
                reason: if r.reason == CancelReason::Closed.as_str() {
                    CancelReason::Closed
                } else {
                    CancelReason::Superseded
                },
                target: RunTarget {
                    namespace: r.namespace,
                    api_version: if r.api_version == TektonApiVersion::V1Beta1.as_str() {
                        TektonApiVersion::V1Beta1
                    } else {
                        TektonApiVersion::V1
                    },
                    dispatch_label: r.dispatch_label,
                },
                state: r.state.0,
                run_seen: r.run_seen,
                listener_event_id: r.listener_event_id,
                attempts: u32::try_from(r.attempts).unwrap_or_default(),
            })
            .collect())
    }

    async fn finish_run_cancel(
        &mut self,
        task: &RunCancelTask,
        result: &RunCancelResult,
    ) -> Result<(), StoreError> {
        let mut conn = self.db.conn().await?;
        let attempt = i32::try_from(task.attempts).unwrap_or(i32::MAX);
        let (done, error, retry_secs, runs) = match result {
            RunCancelResult::Done { runs } => (true, None, None, Some(runs.join(","))),
            RunCancelResult::Retry { error, retry_in } => (
                false,
                Some(error::storable(error)),
                Some(retry_in.as_secs_f64()),
                None,
            ),
            RunCancelResult::GaveUp { error } => (true, Some(error::storable(error)), None, None),
        };
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            #[derive(QueryableByName)]
            struct Next {
                #[diesel(sql_type = Timestamptz)]
                now: OffsetDateTime,
                #[diesel(sql_type = Timestamptz)]
                next_attempt_at: OffsetDateTime,
            }
            let updated: Option<Next> = diesel::sql_query(
                "UPDATE run_cancellations
                    SET attempts = attempts + 1,
                        done_at = CASE WHEN $3 THEN now() ELSE NULL END,
                        last_error = COALESCE($4, last_error),
                        next_attempt_at = now() + make_interval(secs => COALESCE($5, 0)),
                        runs = COALESCE($6, runs)
                  WHERE dispatch_id = $1 AND attempts = $2 AND done_at IS NULL
                  RETURNING now() AS now, next_attempt_at",
            )
            .bind::<Int8, _>(task.dispatch.0)
            .bind::<Int4, _>(attempt)
            .bind::<Bool, _>(done)
            .bind::<Nullable<Text>, _>(error.as_deref())
            .bind::<Nullable<Double>, _>(retry_secs)
            .bind::<Nullable<Text>, _>(runs.as_deref())
            .get_result(conn)
            .await
            .optional()?;
            let Some(next) = updated else {
                return Ok(());
            };
            let (kind, detail) = match result {
                RunCancelResult::Done { runs } => (
                    TimelineKind::RunCancelled,
                    serde_json::json!({ fact::RUN: <[String]>::first(runs) }),
                ),
                RunCancelResult::Retry { error, .. } => (
                    TimelineKind::RunCancelFailed,
                    serde_json::json!({
                        fact::ATTEMPT: task.attempts + 1,
                        fact::ERROR: error::storable(error),
                        fact::NEXT_ATTEMPT_AT: rfc3339::format(next.next_attempt_at),
                    }),
                ),
                RunCancelResult::GaveUp { error } => (
                    TimelineKind::RunCancelFailed,
                    serde_json::json!({
                        fact::ATTEMPT: task.attempts + 1,
                        fact::ERROR: error::storable(error),
                    }),
                ),
            };
            crate::timeline::append(
                conn,
                next.now,
                &[crate::timeline::Note::dispatch(
                    task.event_id.0,
                    task.dispatch.0,
                    kind,
                    detail,
                )],
            )
            .await
        })
        .await
        .map_err(error::query)
    }

    async fn next_run_cancel(&mut self) -> Result<Option<std::time::Duration>, StoreError> {
        let mut conn = self.db.conn().await?;
        let wait: Wait = diesel::sql_query(
            "SELECT extract(epoch FROM min(next_attempt_at) - now())::float8 AS seconds
               FROM run_cancellations WHERE done_at IS NULL",
        )
        .get_result(&mut conn)
        .await
        .map_err(error::query)?;
        Ok(wait
            .seconds
            .map(|s| std::time::Duration::from_secs_f64(s.max(0.0))))
    }
}
