//! What operators read and do ([`OperatorStore`] for [`PgEvents`]): the
//! timeline, the queue snapshot, replay, cancel, pause and resume.
//!
//! Every replica serves these; writes are ordinary transactions on a pool
//! connection, guarded by the state they expect (a dispatch the active
//! dispatcher moved on meanwhile is left alone), and they wake the
//! dispatcher after commit.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{Array, Bool, Int4, Int8, Text, Timestamptz};
use diesel_async::{AsyncConnection, RunQueryDsl};
use dispatcher_core::config::PoolKey;
use dispatcher_core::domain::{
    DispatchId, DispatchState, EventId, EventStatus, EventUuid, TimelineEntry, TimelineKind,
};
use dispatcher_core::operate::{PauseInfo, QueueSnapshot, WaitingFacts};
use dispatcher_core::ports::{
    CancelOutcome, OpenExtras, OperatorStore, ReplayOutcome, ReplayRequest, StoreError,
};
use dispatcher_core::timeline::fact;
use time::OffsetDateTime;

use crate::PgEvents;
use crate::error;
use crate::open_set::load_open;
use crate::raw_json::RawJson;
use crate::schema::{dispatches, pool_controls, sql_types, webhook_events};
use crate::status;
use crate::timeline::{self, Note};
use crate::vocab::{DbDispatchState, DbEventStatus};

#[derive(QueryableByName)]
struct Now {
    #[diesel(sql_type = Timestamptz)]
    now: OffsetDateTime,
}

/// Why a replay cannot happen, decided inside its transaction.
enum Refusal {
    NotFinished(EventStatus),
    Newer(EventUuid),
    PayloadDropped(OffsetDateTime),
}

impl OperatorStore for PgEvents {
    async fn timeline(&self, event: EventId) -> Result<Vec<TimelineEntry>, StoreError> {
        let mut conn = self.db.conn().await?;
        timeline::load(&mut conn, event.0)
            .await
            .map_err(error::query)
    }

    async fn payload(&self, event: EventId) -> Result<Option<String>, StoreError> {
        let mut conn = self.db.conn().await?;
        let payload: Option<(RawJson, Option<OffsetDateTime>)> = webhook_events::table
            .filter(webhook_events::id.eq(event.0))
            .select((webhook_events::payload, webhook_events::payload_dropped_at))
            .first(&mut conn)
            .await
            .optional()
            .map_err(error::query)?;
        // A payload dropped by retention is gone, not `null`.
        Ok(payload.and_then(|(p, dropped)| dropped.is_none().then_some(p.0)))
    }

    async fn queue_snapshot(
        &self,
        reservation_timeout: Duration,
        extras: OpenExtras,
    ) -> Result<QueueSnapshot, StoreError> {
        let mut conn = self.db.conn().await?;
        let result = conn
            .build_transaction()
            .read_only()
            .repeatable_read()
            .run::<_, diesel::result::Error, _>(async |conn| {
                let Now { now } = diesel::sql_query("SELECT now() AS now")
                    .get_result(conn)
                    .await?;
                let open = load_open(conn, now - reservation_timeout, extras).await?;
                let ids: Vec<i64> = open.iter().map(|d| d.id.0).collect();
                let facts: Vec<(i64, uuid::Uuid, OffsetDateTime, Option<String>)> =
                    dispatches::table
                        .inner_join(webhook_events::table)
                        .filter(dispatches::id.eq_any(&ids))
                        .select((
                            dispatches::id,
                            webhook_events::uuid,
                            dispatches::created_at,
                            dispatches::last_error,
                        ))
                        .load(conn)
                        .await?;
                let paused: Vec<(String, String, OffsetDateTime)> = pool_controls::table
                    .filter(pool_controls::paused)
                    .select((
                        pool_controls::pool,
                        pool_controls::changed_by,
                        pool_controls::changed_at,
                    ))
                    .load(conn)
                    .await?;
                Ok(QueueSnapshot {
                    now,
                    open,
                    facts: facts
                        .into_iter()
                        .map(|(id, uuid, queued_at, last_error)| {
                            (
                                DispatchId(id),
                                WaitingFacts {
                                    event: EventUuid(uuid),
                                    queued_at,
                                    last_error,
                                },
                            )
                        })
                        .collect::<HashMap<_, _>>(),
                    paused: paused
                        .into_iter()
                        .map(|(pool, by, at)| (PoolKey(pool), PauseInfo { by, at }))
                        .collect::<BTreeMap<_, _>>(),
                })
            })
            .await;
        result.map_err(error::query)
    }

    async fn replay(
        &self,
        event: EventId,
        request: &ReplayRequest,
    ) -> Result<Option<ReplayOutcome>, StoreError> {
        let mut conn = self.db.conn().await?;
        let result = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                // Lock the event: two replays of one event cannot both start round N+1.
                let found: Option<(DbEventStatus, i32, String, i64, Option<OffsetDateTime>)> =
                    webhook_events::table
                        .filter(webhook_events::id.eq(event.0))
                        .select((
                            webhook_events::status,
                            webhook_events::round,
                            webhook_events::repository_full_name,
                            webhook_events::pull_request_number,
                            webhook_events::payload_dropped_at,
                        ))
                        .for_update()
                        .first(conn)
                        .await
                        .optional()?;
                let Some((DbEventStatus(status), round, repository, number, dropped)) = found
                else {
                    return Ok(None);
                };
                if let Some(at) = dropped {
                    return Ok(Some(Err(Refusal::PayloadDropped(at))));
                }
                let open: i64 = dispatches::table
                    .filter(dispatches::event_id.eq(event.0))
                    .filter(dispatches::state.eq_any([
                        DbDispatchState(DispatchState::Queued),
                        DbDispatchState(DispatchState::Triggering),
                        DbDispatchState(DispatchState::Triggered),
                    ]))
                    .count()
                    .get_result(conn)
                    .await?;
                if open > 0 || matches!(status, EventStatus::Pending | EventStatus::Queued) {
                    return Ok(Some(Err(Refusal::NotFinished(status))));
                }
                let items: Vec<&str> = request.targets.iter().map(|t| t.item.as_str()).collect();
                if !request.force {
                    let newer: Option<uuid::Uuid> = dispatches::table
                        .inner_join(webhook_events::table)
                        .filter(dispatches::repository_full_name.eq(&repository))
                        .filter(dispatches::pull_request_number.eq(number))
                        .filter(dispatches::item_name.eq_any(&items))
                        .filter(dispatches::event_id.gt(event.0))
                        .order(dispatches::event_id.desc())
                        .select(webhook_events::uuid)
                        .first(conn)
                        .await
                        .optional()?;
                    if let Some(newer) = newer {
                        return Ok(Some(Err(Refusal::Newer(EventUuid(newer)))));
                    }
                }
                let Now { now } = diesel::sql_query("SELECT now() AS now")
                    .get_result(conn)
                    .await?;
                let round = round + 1;
                diesel::update(webhook_events::table.filter(webhook_events::id.eq(event.0)))
                    .set(webhook_events::round.eq(round))
                    .execute(conn)
                    .await?;
                timeline::append(
                    conn,
                    now,
                    &[Note {
                        event_id: event.0,
                        dispatch_id: None,
                        kind: TimelineKind::Replayed,
                        detail: serde_json::json!({ fact::ROUND: round, fact::FORCE: request.force }),
                        actor: Some(request.actor.clone()),
                    }],
                )
                .await?;
                // A replay waits behind everything already queued: its queue
                // position is the newest event's, ties going to older dispatches.
                #[derive(QueryableByName)]
                struct Created {
                    #[diesel(sql_type = Int8)]
                    id: i64,
                }
                let pools: Vec<&str> = request.targets.iter().map(|t| t.pool.0.as_str()).collect();
                let labels: Vec<&str> =
                    request.targets.iter().map(|t| t.queued_label.as_str()).collect();
                let created: Vec<Created> = diesel::sql_query(
                    "INSERT INTO dispatches (event_id, item_name, pool, queued_label, repository_full_name,
                                             pull_request_number, state, queue_position, next_attempt_at,
                                             created_at, round, forced)
                     SELECT $1, t.item, t.pool, t.label, $5, $6, $7,
                            (SELECT COALESCE(max(id), 0) FROM webhook_events), $8, $8, $9, $10
                       FROM unnest($2::text[], $3::text[], $4::text[]) AS t(item, pool, label)
                     RETURNING id",
                )
                .bind::<Int8, _>(event.0)
                .bind::<Array<Text>, _>(&items)
                .bind::<Array<Text>, _>(&pools)
                .bind::<Array<Text>, _>(&labels)
                .bind::<Text, _>(&repository)
                .bind::<Int8, _>(number)
                .bind::<sql_types::DispatchState, _>(DbDispatchState(DispatchState::Queued))
                .bind::<Timestamptz, _>(now)
                .bind::<Int4, _>(round)
                .bind::<Bool, _>(request.force)
                .load(conn)
                .await?;
                let ids: Vec<i64> = created.iter().map(|c| c.id).collect();
                timeline::note_queued(conn, &ids, now, Some(&request.actor)).await?;
                status::refresh(conn, &[event.0], now).await?;
                Ok(Some(Ok(ReplayOutcome::Replayed {
                    round,
                    dispatches: ids.into_iter().map(DispatchId).collect(),
                })))
            })
            .await
            .map_err(error::query)?;
        Ok(result.map(|r| match r {
            Ok(replayed) => {
                self.db.wake_dispatcher();
                replayed
            }
            Err(Refusal::NotFinished(status)) => ReplayOutcome::NotFinished(status),
            Err(Refusal::Newer(uuid)) => ReplayOutcome::NewerEventExists(uuid),
            Err(Refusal::PayloadDropped(at)) => ReplayOutcome::PayloadDropped(at),
        }))
    }

    async fn cancel(
        &self,
        event: EventId,
        actor: &str,
    ) -> Result<Option<CancelOutcome>, StoreError> {
        let mut conn = self.db.conn().await?;
        let result = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                // Its dispatches first, then the event: the order a dispatch
                // pass takes them in (it changes a dispatch, then writes the
                // event's timeline fact, which key-share locks the event,
                // and refolds its status at the commit), so the two never
                // wait for each other in a circle, even when the cancel
                // comes between a pass's two statements.
                let _: Vec<i64> = dispatches::table
                    .filter(dispatches::event_id.eq(event.0))
                    .order(dispatches::id)
                    .select(dispatches::id)
                    .for_update()
                    .load(conn)
                    .await?;
                let status: Option<DbEventStatus> = webhook_events::table
                    .filter(webhook_events::id.eq(event.0))
                    .select(webhook_events::status)
                    .for_update()
                    .first(conn)
                    .await
                    .optional()?;
                let Some(DbEventStatus(status)) = status else {
                    return Ok(None);
                };
                let Now { now } = diesel::sql_query("SELECT now() AS now")
                    .get_result(conn)
                    .await?;
                // Only waiting work: a trigger in flight or accepted is the
                // pipeline's business now.
                let cancelled: Vec<i64> = diesel::update(
                    dispatches::table
                        .filter(dispatches::event_id.eq(event.0))
                        .filter(dispatches::state.eq(DbDispatchState(DispatchState::Queued))),
                )
                .set((
                    dispatches::state.eq(DbDispatchState(DispatchState::Cancelled)),
                    dispatches::finished_at.eq(now),
                ))
                .returning(dispatches::id)
                .get_results(conn)
                .await?;
                if cancelled.is_empty() {
                    return Ok(Some(CancelOutcome::NothingWaiting(status)));
                }
                let notes: Vec<Note> = cancelled
                    .iter()
                    .map(|id| Note {
                        actor: Some(actor.to_owned()),
                        ..Note::dispatch(
                            event.0,
                            *id,
                            TimelineKind::Cancelled,
                            serde_json::json!({}),
                        )
                    })
                    .collect();
                timeline::append(conn, now, &notes).await?;
                status::refresh(conn, &[event.0], now).await?;
                Ok(Some(CancelOutcome::Cancelled(
                    cancelled.into_iter().map(DispatchId).collect(),
                )))
            })
            .await
            .map_err(error::query)?;
        if matches!(result, Some(CancelOutcome::Cancelled(_))) {
            // The dispatcher takes the `<pipeline>/queued` labels off.
            self.db.wake_dispatcher();
        }
        Ok(result)
    }

    async fn set_paused(
        &self,
        pool: &PoolKey,
        paused: bool,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.db.conn().await?;
        let changed = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                let Now { now } = diesel::sql_query("SELECT now() AS now")
                    .get_result(conn)
                    .await?;
                // A pool never paused has no row: resuming it changes nothing.
                let sql = if paused {
                    "INSERT INTO pool_controls AS c (pool, paused, changed_by, changed_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (pool) DO UPDATE
                        SET paused = EXCLUDED.paused, changed_by = EXCLUDED.changed_by,
                            changed_at = EXCLUDED.changed_at
                      WHERE c.paused <> EXCLUDED.paused"
                } else {
                    "UPDATE pool_controls SET paused = $2, changed_by = $3, changed_at = $4
                      WHERE pool = $1 AND paused"
                };
                let changed = diesel::sql_query(sql)
                    .bind::<Text, _>(&pool.0)
                    .bind::<Bool, _>(paused)
                    .bind::<Text, _>(actor)
                    .bind::<Timestamptz, _>(now)
                    .execute(conn)
                    .await?;
                if changed == 0 {
                    return Ok(false);
                }
                // Every dispatch waiting in the pool tells why it stopped (or went on).
                let waiting: Vec<(i64, i64)> = dispatches::table
                    .filter(dispatches::pool.eq(&pool.0))
                    .filter(dispatches::state.eq(DbDispatchState(DispatchState::Queued)))
                    .select((dispatches::id, dispatches::event_id))
                    .load(conn)
                    .await?;
                let kind = if paused {
                    TimelineKind::PoolPaused
                } else {
                    TimelineKind::PoolResumed
                };
                let notes: Vec<Note> = waiting
                    .into_iter()
                    .map(|(id, event_id)| Note {
                        actor: Some(actor.to_owned()),
                        ..Note::dispatch(
                            event_id,
                            id,
                            kind,
                            serde_json::json!({ fact::POOL: pool.0 }),
                        )
                    })
                    .collect();
                timeline::append(conn, now, &notes).await?;
                Ok(true)
            })
            .await
            .map_err(error::query)?;
        if changed {
            self.db.wake_dispatcher();
        }
        Ok(changed)
    }
}
