//! Keeps `webhook_events.status` in line with the event's dispatches, using
//! the one folding rule in `dispatcher_core::status`.

use std::collections::BTreeMap;

use diesel::prelude::*;
use diesel::sql_types::{Array, Bool, Int8, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use dispatcher_core::status::{DispatchSummary, derive_event_status};
use time::OffsetDateTime;

use crate::prepared::Prepared;
use crate::schema::{dispatches, sql_types, webhook_events};
use crate::vocab::{DbDispatchState, DbEventStatus};

/// Recomputes the status of `event_ids` from their dispatches (call inside
/// the transaction that changed them).
pub(crate) async fn refresh(
    conn: &mut AsyncPgConnection,
    event_ids: &[i64],
    now: OffsetDateTime,
) -> QueryResult<()> {
    if event_ids.is_empty() {
        return Ok(());
    }
    // Only the event's current round counts: a replay starts a new one.
    let rows: Vec<(i64, DbDispatchState, Option<String>)> = dispatches::table
        .inner_join(webhook_events::table)
        .filter(dispatches::event_id.eq_any(event_ids))
        .filter(dispatches::round.eq(webhook_events::round))
        .order((dispatches::event_id, dispatches::id))
        .select((
            dispatches::event_id,
            dispatches::state,
            dispatches::last_error,
        ))
        .load(conn)
        .await?;
    let mut per_event: BTreeMap<i64, Vec<DispatchSummary>> = BTreeMap::new();
    for (event_id, DbDispatchState(state), last_error) in rows {
        per_event
            .entry(event_id)
            .or_default()
            .push(DispatchSummary { state, last_error });
    }
    let mut ids = Vec::with_capacity(per_event.len());
    let mut statuses = Vec::with_capacity(per_event.len());
    let mut processed = Vec::with_capacity(per_event.len());
    let mut errors = Vec::with_capacity(per_event.len());
    let mut finals = Vec::with_capacity(per_event.len());
    for (id, summaries) in per_event {
        let derived = derive_event_status(&summaries);
        ids.push(id);
        statuses.push(DbEventStatus(derived.status));
        processed.push(derived.processed);
        errors.push(derived.error);
        finals.push(derived.is_final);
    }
    Prepared(
        diesel::sql_query(
            "UPDATE webhook_events e
            SET status = v.status, processed = v.processed, processing_error = v.error,
                processed_at = CASE WHEN v.final THEN COALESCE(e.processed_at, $6) ELSE NULL END
           FROM unnest($1, $2, $3, $4, $5) AS v(id, status, processed, error, final)
          WHERE e.id = v.id",
        )
        .bind::<Array<Int8>, _>(ids)
        .bind::<Array<sql_types::EventStatus>, _>(statuses)
        .bind::<Array<Bool>, _>(processed)
        .bind::<Array<Nullable<Text>>, _>(errors)
        .bind::<Array<Bool>, _>(finals)
        .bind::<Timestamptz, _>(now),
    )
    .execute(conn)
    .await?;
    Ok(())
}
