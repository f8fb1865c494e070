//! The active dispatcher's session: a dedicated connection that holds the
//! leader advisory lock, listens for wake-ups and carries every engine write.
//!
//! Routing all engine writes through the lock-holding connection is the
//! fence: if the connection dies, the lock is released *and* this replica can
//! no longer change anything, so two replicas never dispatch at once.

use std::collections::HashMap;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{Array, Int8, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use dispatcher_core::config::PoolKey;
use dispatcher_core::domain::{
    DispatchId, DispatchState, EventId, PullRequestRef, UNSUPPORTED_MESSAGE,
};
use dispatcher_core::planner::{DispatchOutcome, IntakePlan};
use dispatcher_core::ports::{DispatchStore, OpenDispatch, StoreError, TriggerJob, UnplannedEvent};
use futures_util::{FutureExt, StreamExt};
use time::OffsetDateTime;

use crate::error;
use crate::events::headers_from_json;
use crate::raw_json::RawJson;
use crate::schema::{dispatches, webhook_events};
use crate::status;
use crate::wakeup::WAKEUP_CHANNEL;

/// Advisory lock key of the active dispatcher ("dispatch").
const LEADER_LOCK: i64 = 0x6469_7370_6174_6368;

/// The active dispatcher's connection. Dropping it releases leadership.
pub struct LeaderSession {
    conn: AsyncPgConnection,
    labels_enabled: bool,
}

impl std::fmt::Debug for LeaderSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderSession").finish_non_exhaustive()
    }
}

#[derive(Insertable)]
#[diesel(table_name = dispatches)]
struct NewDispatchRow<'a> {
    event_id: i64,
    item_name: &'a str,
    pool: &'a str,
    queued_label: &'a str,
    repository_full_name: &'a str,
    pull_request_number: i64,
    state: &'a str,
    queue_position: i64,
    next_attempt_at: OffsetDateTime,
    created_at: OffsetDateTime,
    finished_at: Option<OffsetDateTime>,
}

#[derive(Queryable, QueryableByName, Selectable)]
#[diesel(table_name = dispatches)]
struct OpenRow {
    id: i64,
    event_id: i64,
    item_name: String,
    pool: String,
    repository_full_name: String,
    pull_request_number: i64,
    state: String,
    queue_position: i64,
    attempts: i32,
    next_attempt_at: OffsetDateTime,
    listener_event_id: Option<String>,
    trigger_started_at: Option<OffsetDateTime>,
    triggered_at: Option<OffsetDateTime>,
}

#[derive(QueryableByName)]
struct OpenWithSiblings {
    #[diesel(embed)]
    dispatch: OpenRow,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    has_newer: bool,
}

impl LeaderSession {
    pub(crate) async fn try_acquire(
        url: &str,
        connect_timeout: Duration,
        labels_enabled: bool,
    ) -> Result<Option<Self>, StoreError> {
        let mut conn = tokio::time::timeout(connect_timeout, AsyncPgConnection::establish(url))
            .await
            .map_err(|_| StoreError::Unavailable("timed out connecting to the database".into()))?
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        let locked: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
            "pg_try_advisory_lock({LEADER_LOCK})"
        )))
        .get_result(&mut conn)
        .await
        .map_err(error::query)?;
        if !locked {
            return Ok(None);
        }
        diesel::sql_query(format!("LISTEN {WAKEUP_CHANNEL}"))
            .execute(&mut conn)
            .await
            .map_err(error::query)?;
        Ok(Some(Self {
            conn,
            labels_enabled,
        }))
    }

    /// Waits for the next insert notification, then swallows any others
    /// already queued (one pass handles them all). An error means the
    /// connection, and with it leadership, is gone.
    pub async fn wait_for_wakeup(&mut self) -> Result<(), StoreError> {
        let mut stream = std::pin::pin!(self.conn.notifications_stream());
        match stream.next().await {
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(StoreError::LostLeadership),
        }
        while let Some(Some(item)) = stream.next().now_or_never() {
            if item.is_err() {
                return Err(StoreError::LostLeadership);
            }
        }
        Ok(())
    }

    /// Checks that the connection (and so the lock) is still alive.
    pub async fn check(&mut self) -> Result<(), StoreError> {
        diesel::sql_query("SELECT 1")
            .execute(&mut self.conn)
            .await
            .map_err(error::leader)?;
        Ok(())
    }
}

fn open_from_row(r: OpenRow) -> OpenDispatch {
    OpenDispatch {
        id: DispatchId(r.id),
        event_id: EventId(r.event_id),
        item: r.item_name,
        pool: PoolKey(r.pool),
        pr: PullRequestRef {
            repository: r.repository_full_name,
            number: r.pull_request_number,
        },
        state: r.state.parse().unwrap_or(DispatchState::Failed),
        queue_position: r.queue_position,
        attempts: u32::try_from(r.attempts).unwrap_or_default(),
        next_attempt_at: r.next_attempt_at,
        listener_event_id: r.listener_event_id,
        trigger_started_at: r.trigger_started_at,
        triggered_at: r.triggered_at,
        has_newer: false,
    }
}

impl DispatchStore for LeaderSession {
    async fn unplanned_events(&mut self, limit: usize) -> Result<Vec<UnplannedEvent>, StoreError> {
        let rows: Vec<(i64, String, String, i64, serde_json::Value)> = webhook_events::table
            .filter(webhook_events::planned_at.is_null())
            .order(webhook_events::id)
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .select((
                webhook_events::id,
                webhook_events::action,
                webhook_events::repository_full_name,
                webhook_events::pull_request_number,
                webhook_events::headers,
            ))
            .load(&mut self.conn)
            .await
            .map_err(error::leader)?;
        Ok(rows
            .into_iter()
            .map(|(id, action, repository, number, headers)| UnplannedEvent {
                id: EventId(id),
                action,
                pr: PullRequestRef { repository, number },
                headers: headers_from_json(&headers),
            })
            .collect())
    }

    async fn event_payloads(
        &mut self,
        ids: &[EventId],
    ) -> Result<HashMap<EventId, String>, StoreError> {
        let ids: Vec<i64> = ids.iter().map(|e| e.0).collect();
        let rows: Vec<(i64, RawJson)> = webhook_events::table
            .filter(webhook_events::id.eq_any(&ids))
            .select((webhook_events::id, webhook_events::payload))
            .load(&mut self.conn)
            .await
            .map_err(error::leader)?;
        Ok(rows
            .into_iter()
            .map(|(id, payload)| (EventId(id), payload.0))
            .collect())
    }

    async fn open_dispatches(
        &mut self,
        reservation_cutoff: OffsetDateTime,
    ) -> Result<Vec<OpenDispatch>, StoreError> {
        let rows: Vec<OpenWithSiblings> = diesel::sql_query(
            "SELECT d.id, d.event_id, d.item_name, d.pool, d.repository_full_name, d.pull_request_number,
                    d.state, d.queue_position, d.attempts, d.next_attempt_at, d.listener_event_id,
                    d.trigger_started_at, d.triggered_at,
                    EXISTS (SELECT 1 FROM dispatches n
                             WHERE n.repository_full_name = d.repository_full_name
                               AND n.pull_request_number = d.pull_request_number
                               AND n.item_name = d.item_name
                               AND n.event_id > d.event_id) AS has_newer
               FROM dispatches d
              WHERE d.state IN ('queued', 'triggering')
                 OR (d.state = 'triggered' AND d.triggered_at > $1)
              ORDER BY d.pool, d.queue_position, d.id",
        )
        .bind::<Timestamptz, _>(reservation_cutoff)
        .load(&mut self.conn)
        .await
        .map_err(error::leader)?;
        Ok(rows
            .into_iter()
            .map(|r| OpenDispatch {
                has_newer: r.has_newer,
                ..open_from_row(r.dispatch)
            })
            .collect())
    }

    async fn apply_intake(
        &mut self,
        plan: &IntakePlan,
        now: OffsetDateTime,
    ) -> Result<Vec<OpenDispatch>, StoreError> {
        let planned: Vec<i64> = plan.planned.iter().map(|e| e.0).collect();
        let aborted: Vec<i64> = plan.aborted.iter().map(|e| e.0).collect();
        let superseded: Vec<i64> = plan.superseded.iter().map(|d| d.0).collect();
        let rows: Vec<NewDispatchRow<'_>> = plan
            .new_dispatches
            .iter()
            .map(|d| {
                let cancelled = d.state == DispatchState::Cancelled;
                NewDispatchRow {
                    event_id: d.event_id.0,
                    item_name: &d.item,
                    pool: &d.pool.0,
                    queued_label: &d.queued_label,
                    repository_full_name: &d.pr.repository,
                    pull_request_number: d.pr.number,
                    state: d.state.as_str(),
                    queue_position: d.queue_position,
                    next_attempt_at: now,
                    created_at: now,
                    finished_at: cancelled.then_some(now),
                }
            })
            .collect();
        self.conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                // One statement marks every event planned and the unmatched ones aborted.
                diesel::sql_query(
                    "UPDATE webhook_events
                        SET planned_at = $1,
                            status = CASE WHEN id = ANY($3) THEN 'aborted' ELSE status END,
                            processing_error = CASE WHEN id = ANY($3) THEN $4 ELSE processing_error END,
                            processed_at = CASE WHEN id = ANY($3) THEN $1 ELSE processed_at END
                      WHERE id = ANY($2)",
                )
                .bind::<Timestamptz, _>(now)
                .bind::<Array<Int8>, _>(&planned)
                .bind::<Array<Int8>, _>(&aborted)
                .bind::<Text, _>(UNSUPPORTED_MESSAGE)
                .execute(conn)
                .await?;
                let mut touched: Vec<i64> = if superseded.is_empty() {
                    Vec::new()
                } else {
                    diesel::update(
                        dispatches::table
                            .filter(dispatches::id.eq_any(&superseded))
                            .filter(dispatches::state.eq("queued")),
                    )
                    .set((dispatches::state.eq("cancelled"), dispatches::finished_at.eq(now)))
                    .returning(dispatches::event_id)
                    .get_results(conn)
                    .await?
                };
                let created: Vec<OpenRow> = if rows.is_empty() {
                    Vec::new()
                } else {
                    diesel::insert_into(dispatches::table)
                        .values(&rows)
                        .on_conflict((dispatches::event_id, dispatches::item_name))
                        .do_nothing()
                        .returning(OpenRow::as_returning())
                        .get_results(conn)
                        .await?
                };
                touched.extend(rows.iter().map(|r| r.event_id));
                touched.sort_unstable();
                touched.dedup();
                status::refresh(conn, &touched, now).await?;
                Ok(created.into_iter().filter(|d| d.state == "queued").map(open_from_row).collect())
            })
            .await
            .map_err(error::leader)
    }

    async fn begin_triggers(
        &mut self,
        ids: &[DispatchId],
        now: OffsetDateTime,
    ) -> Result<Vec<TriggerJob>, StoreError> {
        let ids: Vec<i64> = ids.iter().map(|d| d.0).collect();
        self.conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                let started: Vec<(i64, i64, String, String, i64, i32)> = diesel::update(
                    dispatches::table
                        .filter(dispatches::id.eq_any(&ids))
                        .filter(dispatches::state.eq("queued")),
                )
                .set((
                    dispatches::state.eq("triggering"),
                    dispatches::attempts.eq(dispatches::attempts + 1),
                    dispatches::trigger_started_at.eq(now),
                ))
                .returning((
                    dispatches::id,
                    dispatches::event_id,
                    dispatches::item_name,
                    dispatches::repository_full_name,
                    dispatches::pull_request_number,
                    dispatches::attempts,
                ))
                .get_results(conn)
                .await?;
                let event_ids: Vec<i64> = started.iter().map(|s| s.1).collect();
                let payloads: Vec<(i64, RawJson, serde_json::Value)> = webhook_events::table
                    .filter(webhook_events::id.eq_any(&event_ids))
                    .select((
                        webhook_events::id,
                        webhook_events::payload,
                        webhook_events::headers,
                    ))
                    .load(conn)
                    .await?;
                let mut by_event: std::collections::HashMap<i64, (String, Vec<(String, String)>)> =
                    payloads
                        .into_iter()
                        .map(|(id, payload, headers)| {
                            (id, (payload.0, headers_from_json(&headers)))
                        })
                        .collect();
                // Keep the caller's (FIFO) order.
                let mut jobs: Vec<TriggerJob> = started
                    .into_iter()
                    .filter_map(|(id, event_id, item, repository, number, attempts)| {
                        let (payload, headers) = match by_event.get(&event_id) {
                            Some(p) if event_ids.iter().filter(|e| **e == event_id).count() > 1 => {
                                p.clone()
                            }
                            _ => by_event.remove(&event_id)?,
                        };
                        Some(TriggerJob {
                            dispatch: DispatchId(id),
                            event_id: EventId(event_id),
                            item,
                            pr: PullRequestRef { repository, number },
                            attempt: u32::try_from(attempts).unwrap_or_default(),
                            payload,
                            headers,
                        })
                    })
                    .collect();
                jobs.sort_by_key(|j| ids.iter().position(|i| *i == j.dispatch.0));
                Ok(jobs)
            })
            .await
            .map_err(error::leader)
    }

    async fn record_outcomes(
        &mut self,
        outcomes: &[DispatchOutcome],
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                let mut touched = Vec::with_capacity(outcomes.len());
                for outcome in outcomes {
                    let target = dispatches::table.filter(dispatches::id.eq(outcome.id().0));
                    // Each write is guarded by the state (and attempt) it expects, so a
                    // stale outcome from before a leadership change cannot undo newer work.
                    let changed: Option<i64> = match outcome {
                        DispatchOutcome::Triggered {
                            attempt,
                            listener_event_id,
                            ..
                        } => diesel::update(
                            target
                                .filter(dispatches::state.eq("triggering"))
                                .filter(dispatches::attempts.eq(attempt_i32(*attempt))),
                        )
                        .set((
                            dispatches::state.eq("triggered"),
                            dispatches::listener_event_id
                                .eq(listener_event_id.as_deref().map(error::storable)),
                            dispatches::triggered_at.eq(now),
                        ))
                        .returning(dispatches::event_id)
                        .get_result(conn)
                        .await
                        .optional()?,
                        DispatchOutcome::Retry {
                            attempt,
                            next_attempt_at,
                            error,
                            ..
                        } => diesel::update(
                            target
                                .filter(dispatches::state.eq("triggering"))
                                .filter(dispatches::attempts.eq(attempt_i32(*attempt))),
                        )
                        .set((
                            dispatches::state.eq("queued"),
                            dispatches::next_attempt_at.eq(next_attempt_at),
                            dispatches::last_error.eq(error::storable(error)),
                        ))
                        .returning(dispatches::event_id)
                        .get_result(conn)
                        .await
                        .optional()?,
                        DispatchOutcome::Failed { attempt, error, .. } => diesel::update(
                            target
                                .filter(dispatches::state.eq_any(["triggering", "queued"]))
                                .filter(dispatches::attempts.eq(attempt_i32(*attempt))),
                        )
                        .set((
                            dispatches::state.eq("failed"),
                            dispatches::last_error.eq(error::storable(error)),
                            dispatches::finished_at.eq(now),
                        ))
                        .returning(dispatches::event_id)
                        .get_result(conn)
                        .await
                        .optional()?,
                        DispatchOutcome::Confirmed { .. } => {
                            diesel::update(target.filter(dispatches::state.eq("triggered")))
                                .set((
                                    dispatches::state.eq("confirmed"),
                                    dispatches::confirmed_at.eq(now),
                                ))
                                .returning(dispatches::event_id)
                                .get_result(conn)
                                .await
                                .optional()?
                        }
                        DispatchOutcome::Superseded { .. } => {
                            diesel::update(target.filter(dispatches::state.eq("queued")))
                                .set((
                                    dispatches::state.eq("cancelled"),
                                    dispatches::finished_at.eq(now),
                                ))
                                .returning(dispatches::event_id)
                                .get_result(conn)
                                .await
                                .optional()?
                        }
                    };
                    touched.extend(changed);
                }
                touched.sort_unstable();
                touched.dedup();
                status::refresh(conn, &touched, now).await
            })
            .await
            .map_err(error::leader)
    }

    async fn reconcile_labels(&mut self, now: OffsetDateTime) -> Result<u64, StoreError> {
        if !self.labels_enabled {
            return Ok(0);
        }
        #[derive(QueryableByName)]
        struct Changed {
            #[diesel(sql_type = Int8)]
            changed: i64,
        }
        let result: Changed = diesel::sql_query(
            "WITH wanted AS (
                 SELECT DISTINCT repository_full_name, pull_request_number, queued_label AS label
                   FROM dispatches
                  -- Waiting: queued, or being retried (a first attempt in flight
                  -- never waited, so dispatching at once never labels).
                  WHERE state = 'queued' OR (state = 'triggering' AND attempts > 1)
             ), added AS (
                 INSERT INTO pr_labels AS p (repository_full_name, pull_request_number, label, wanted, next_attempt_at, updated_at)
                 SELECT repository_full_name, pull_request_number, label, TRUE, $1, $1 FROM wanted
                 ON CONFLICT (repository_full_name, pull_request_number, label)
                 DO UPDATE SET wanted = TRUE, attempts = 0, next_attempt_at = $1, updated_at = $1
                 WHERE NOT p.wanted
                 RETURNING 1
             ), removed AS (
                 UPDATE pr_labels p SET wanted = FALSE, attempts = 0, next_attempt_at = $1, updated_at = $1
                  WHERE p.wanted AND NOT EXISTS (
                      SELECT 1 FROM wanted w
                       WHERE w.repository_full_name = p.repository_full_name
                         AND w.pull_request_number = p.pull_request_number AND w.label = p.label)
                 RETURNING 1
             )
             SELECT (SELECT count(*) FROM added) + (SELECT count(*) FROM removed) AS changed",
        )
        .bind::<Timestamptz, _>(now)
        .get_result(&mut self.conn)
        .await
        .map_err(error::leader)?;
        Ok(u64::try_from(result.changed).unwrap_or_default())
    }
}

fn attempt_i32(attempt: u32) -> i32 {
    i32::try_from(attempt).unwrap_or(i32::MAX)
}
