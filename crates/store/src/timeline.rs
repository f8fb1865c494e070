//! The stored timeline of an event (`event_timeline`): facts appended in the
//! same transaction as the change they record, so they survive restarts and
//! failover and never describe a change that was rolled back. The wording is
//! `dispatcher_core::timeline`'s.

use diesel::prelude::*;
use diesel::sql_types::{Array, Int8, Jsonb, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use dispatcher_core::domain::{DispatchId, DispatchState, TimelineEntry, TimelineKind};
use serde_json::Value;
use time::OffsetDateTime;

use crate::prepared::Prepared;
use crate::schema::{event_timeline, sql_types};
use crate::vocab::DbDispatchState;

/// One fact to append.
#[derive(Debug, Clone)]
pub(crate) struct Note {
    pub(crate) event_id: i64,
    pub(crate) dispatch_id: Option<i64>,
    pub(crate) kind: TimelineKind,
    pub(crate) detail: Value,
    pub(crate) actor: Option<String>,
}

impl Note {
    /// A fact about one dispatch, by the dispatcher itself.
    pub(crate) fn dispatch(
        event_id: i64,
        dispatch_id: i64,
        kind: TimelineKind,
        detail: Value,
    ) -> Self {
        Self {
            event_id,
            dispatch_id: Some(dispatch_id),
            kind,
            detail,
            actor: None,
        }
    }
}

/// Appends `notes` at `at`, in their order.
///
/// The writers here take a shared connection so that a caller can send
/// several of them at once (diesel-async pipelines futures polled
/// together): PostgreSQL runs them in the order they were sent.
///
/// One constant statement over arrays whatever the number of notes, so it
/// stays prepared: diesel's multi-row `INSERT` has a text per row count and
/// is parsed again on every call (a round trip of its own, two or three
/// times per pass).
pub(crate) async fn append(
    mut conn: &AsyncPgConnection,
    at: OffsetDateTime,
    notes: &[Note],
) -> QueryResult<()> {
    if notes.is_empty() {
        return Ok(());
    }
    let event_ids: Vec<i64> = notes.iter().map(|n| n.event_id).collect();
    let dispatch_ids: Vec<Option<i64>> = notes.iter().map(|n| n.dispatch_id).collect();
    let kinds: Vec<&str> = notes.iter().map(|n| n.kind.as_str()).collect();
    let details: Vec<&Value> = notes.iter().map(|n| &n.detail).collect();
    let actors: Vec<Option<&str>> = notes.iter().map(|n| n.actor.as_deref()).collect();
    Prepared(
        diesel::sql_query(
            "INSERT INTO event_timeline (event_id, dispatch_id, at, kind, detail, actor)
             SELECT t.event_id, t.dispatch_id, $6, t.kind, t.detail, t.actor
               FROM unnest($1, $2, $3, $4, $5) WITH ORDINALITY
                    AS t(event_id, dispatch_id, kind, detail, actor, n)
              ORDER BY t.n",
        )
        .bind::<Array<Int8>, _>(&event_ids)
        .bind::<Array<Nullable<Int8>>, _>(&dispatch_ids)
        .bind::<Array<Text>, _>(&kinds)
        .bind::<Array<Jsonb>, _>(&details)
        .bind::<Array<Nullable<Text>>, _>(&actors)
        .bind::<Timestamptz, _>(at),
    )
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// Records where each of `dispatch_ids` (just queued) joined its pool's
/// queue: position and queue length, counted in the same transaction.
pub(crate) async fn note_queued(
    mut conn: &AsyncPgConnection,
    dispatch_ids: &[i64],
    at: OffsetDateTime,
    actor: Option<&str>,
) -> QueryResult<()> {
    if dispatch_ids.is_empty() {
        return Ok(());
    }
    // One ordered scan of the affected pools' queues (window functions), not
    // two counts per new dispatch: a burst of hundreds joining a long queue
    // stays linear.
    Prepared(diesel::sql_query(
        "WITH queue AS (
             SELECT q.id, q.event_id, q.item_name, q.pool,
                    row_number() OVER (PARTITION BY q.pool ORDER BY q.queue_position, q.id) AS position,
                    count(*) OVER (PARTITION BY q.pool) AS of
               FROM dispatches q
              WHERE q.state = $4
                AND q.pool IN (SELECT pool FROM dispatches WHERE id = ANY($1))
         )
         INSERT INTO event_timeline (event_id, dispatch_id, at, kind, detail, actor)
         SELECT event_id, id, $2, $3,
                jsonb_build_object('item', item_name, 'pool', pool, 'position', position, 'of', of),
                $5
           FROM queue
          WHERE id = ANY($1)
          ORDER BY id",
    )
    .bind::<Array<Int8>, _>(dispatch_ids)
    .bind::<Timestamptz, _>(at)
    .bind::<Text, _>(TimelineKind::Queued.as_str())
    .bind::<sql_types::DispatchState, _>(DbDispatchState(DispatchState::Queued))
    .bind::<diesel::sql_types::Nullable<Text>, _>(actor))
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// Records that `dispatch_ids` were cancelled by a newer event of their pull
/// request and item, naming that event.
pub(crate) async fn note_superseded(
    mut conn: &AsyncPgConnection,
    dispatch_ids: &[i64],
    at: OffsetDateTime,
) -> QueryResult<()> {
    if dispatch_ids.is_empty() {
        return Ok(());
    }
    Prepared(
        diesel::sql_query(
            "INSERT INTO event_timeline (event_id, dispatch_id, at, kind, detail)
         SELECT d.event_id, d.id, $2, $3,
                jsonb_build_object('by_event', (
                    SELECT e.uuid::text FROM dispatches n JOIN webhook_events e ON e.id = n.event_id
                     WHERE n.repository_full_name = d.repository_full_name
                       AND n.pull_request_number = d.pull_request_number
                       AND n.item_name = d.item_name AND n.event_id > d.event_id
                     ORDER BY n.event_id DESC LIMIT 1))
           FROM dispatches d
          WHERE d.id = ANY($1)
          ORDER BY d.id",
        )
        .bind::<Array<Int8>, _>(dispatch_ids)
        .bind::<Timestamptz, _>(at)
        .bind::<Text, _>(TimelineKind::Superseded.as_str()),
    )
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// The stored entries of one event, oldest first.
pub(crate) async fn load(
    conn: &mut AsyncPgConnection,
    event_id: i64,
) -> QueryResult<Vec<TimelineEntry>> {
    /// dispatch, at, kind, detail, actor.
    type Row = (Option<i64>, OffsetDateTime, String, Value, Option<String>);
    let rows: Vec<Row> = event_timeline::table
        .filter(event_timeline::event_id.eq(event_id))
        .order(event_timeline::id)
        .select((
            event_timeline::dispatch_id,
            event_timeline::at,
            event_timeline::kind,
            event_timeline::detail,
            event_timeline::actor,
        ))
        .load(conn)
        .await?;
    // A kind this version does not know (written by a newer one) is skipped,
    // not an error: the rest of the timeline still explains the event.
    Ok(rows
        .into_iter()
        .filter_map(|(dispatch, at, kind, detail, actor)| {
            Some(TimelineEntry {
                at,
                dispatch: dispatch.map(DispatchId),
                kind: kind.parse().ok()?,
                detail,
                actor,
            })
        })
        .collect())
}
