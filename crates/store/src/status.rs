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
    conn: &AsyncPgConnection,
    event_ids: &[i64],
    now: OffsetDateTime,
) -> QueryResult<()> {
    let folded = fold(conn, event_ids).await?;
    folded.write(conn, now).await
}

/// The statuses of some events, folded from their dispatches' states and
/// not yet written.
#[derive(Debug, Default)]
pub(crate) struct Folded {
    ids: Vec<i64>,
    statuses: Vec<DbEventStatus>,
    processed: Vec<bool>,
    errors: Vec<Option<String>>,
    finals: Vec<bool>,
}

/// Reads the dispatches of `event_ids` and folds each event's status (one
/// round trip; none for no events).
pub(crate) async fn fold(conn: &AsyncPgConnection, event_ids: &[i64]) -> QueryResult<Folded> {
    if event_ids.is_empty() {
        return Ok(Folded::default());
    }
    let mut conn = conn;
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
        .load(&mut conn)
        .await?;
    let mut per_event: BTreeMap<i64, Vec<DispatchSummary>> = BTreeMap::new();
    for (event_id, DbDispatchState(state), last_error) in rows {
        per_event
            .entry(event_id)
            .or_default()
            .push(DispatchSummary { state, last_error });
    }
    let mut folded = Folded::default();
    for (id, summaries) in per_event {
        let derived = derive_event_status(&summaries);
        folded.ids.push(id);
        folded.statuses.push(DbEventStatus(derived.status));
        folded.processed.push(derived.processed);
        folded.errors.push(derived.error);
        folded.finals.push(derived.is_final);
    }
    Ok(folded)
}

impl Folded {
    /// Writes the statuses (one statement; none when there are none), at `now`.
    pub(crate) async fn write(
        self,
        conn: &AsyncPgConnection,
        now: OffsetDateTime,
    ) -> QueryResult<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let mut conn = conn;
        Prepared(
            diesel::sql_query(
                "UPDATE webhook_events e
                SET status = v.status, processed = v.processed, processing_error = v.error,
                    processed_at = CASE WHEN v.final THEN COALESCE(e.processed_at, $6) ELSE NULL END
               FROM unnest($1, $2, $3, $4, $5) AS v(id, status, processed, error, final)
              WHERE e.id = v.id",
            )
            .bind::<Array<Int8>, _>(self.ids)
            .bind::<Array<sql_types::EventStatus>, _>(self.statuses)
            .bind::<Array<Bool>, _>(self.processed)
            .bind::<Array<Nullable<Text>>, _>(self.errors)
            .bind::<Array<Bool>, _>(self.finals)
            .bind::<Timestamptz, _>(now),
        )
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}
