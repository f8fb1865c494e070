//! Keeps `webhook_events.status` in line with the event's dispatches: the
//! folding rule of `dispatcher_core::status`, in SQL.

use diesel::result::QueryResult;
use diesel::sql_types::{Array, Int8, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use dispatcher_core::domain::{CANCELLED_MESSAGE, DispatchState, EventStatus};
use dispatcher_core::status::FAILED_WITHOUT_ERROR;
use time::OffsetDateTime;

use crate::prepared::Prepared;
use crate::schema::sql_types;
use crate::vocab::{DbDispatchState, DbEventStatus};

/// Recomputes the status of `event_ids` from their dispatches, in one
/// statement (call inside the transaction that changed them; events without
/// dispatches are left alone).
///
/// The fold is written in SQL so that it can go out with the statements
/// around it (a pass sends it with its `COMMIT`) instead of a read and a
/// write of its own. Its meaning is `dispatcher_core::status::derive_event_status`,
/// and the tests below hold the two equal over every mix of states.
pub(crate) async fn refresh(
    mut conn: &AsyncPgConnection,
    event_ids: &[i64],
    now: OffsetDateTime,
) -> QueryResult<()> {
    if event_ids.is_empty() {
        return Ok(());
    }
    let state = |s| DbDispatchState(s);
    let status = |s| DbEventStatus(s);
    Prepared(
        diesel::sql_query(
            // Only the event's current round counts: a replay starts a new one.
            "WITH per_event AS (
                SELECT d.event_id,
                       bool_or(d.state IN ($3, $4)) AS waiting,
                       bool_or(d.state IN ($5, $6)) AS accepted,
                       (array_agg(COALESCE(d.last_error, $13) ORDER BY d.id)
                            FILTER (WHERE d.state = $7))[1] AS failed_error,
                       -- A state this build does not know (a newer one's, or
                       -- a row changed by hand) fails the statement, as
                       -- reading it would, rather than folding into a guess.
                       max(CASE WHEN d.state IN ($3, $4, $5, $6, $7, $14) THEN 0
                                ELSE ('unknown dispatch state ' || quote_literal(d.state))::int
                           END) AS unknown
                  FROM dispatches d
                  JOIN webhook_events w ON w.id = d.event_id AND d.round = w.round
                 WHERE d.event_id = ANY($1)
                 GROUP BY d.event_id
             ), folded AS (
                SELECT event_id,
                       CASE WHEN waiting THEN $8 WHEN accepted THEN $9
                            WHEN failed_error IS NOT NULL THEN $10 ELSE $11 END AS status,
                       NOT waiting AS final,
                       CASE WHEN waiting THEN NULL WHEN failed_error IS NOT NULL THEN failed_error
                            WHEN accepted THEN NULL ELSE $12 END AS error
                  FROM per_event
                 WHERE unknown = 0
             )
             UPDATE webhook_events e
                SET status = f.status, processed = f.final, processing_error = f.error,
                    processed_at = CASE WHEN f.final THEN COALESCE(e.processed_at, $2) ELSE NULL END
               FROM folded f
              WHERE e.id = f.event_id",
        )
        .bind::<Array<Int8>, _>(event_ids)
        .bind::<Timestamptz, _>(now)
        .bind::<sql_types::DispatchState, _>(state(DispatchState::Queued))
        .bind::<sql_types::DispatchState, _>(state(DispatchState::Triggering))
        .bind::<sql_types::DispatchState, _>(state(DispatchState::Triggered))
        .bind::<sql_types::DispatchState, _>(state(DispatchState::Confirmed))
        .bind::<sql_types::DispatchState, _>(state(DispatchState::Failed))
        .bind::<sql_types::EventStatus, _>(status(EventStatus::Queued))
        .bind::<sql_types::EventStatus, _>(status(EventStatus::Processed))
        .bind::<sql_types::EventStatus, _>(status(EventStatus::Failed))
        .bind::<sql_types::EventStatus, _>(status(EventStatus::Cancelled))
        .bind::<Text, _>(CANCELLED_MESSAGE)
        .bind::<Text, _>(FAILED_WITHOUT_ERROR)
        .bind::<sql_types::DispatchState, _>(state(DispatchState::Cancelled)),
    )
    .execute(&mut conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use diesel::QueryableByName;
    use diesel::sql_types::{Bool, Int4, Nullable};
    use dispatcher_core::status::{DispatchSummary, derive_event_status};
    use dispatcher_testdb::TestDatabase;

    use super::*;
    use crate::{ConnectionOptions, connect};

    #[derive(QueryableByName)]
    struct Stored {
        #[diesel(sql_type = sql_types::EventStatus)]
        status: DbEventStatus,
        #[diesel(sql_type = Bool)]
        processed: bool,
        #[diesel(sql_type = Nullable<Text>)]
        processing_error: Option<String>,
        #[diesel(sql_type = Bool)]
        has_processed_at: bool,
    }

    /// Every mix of one to three dispatch states.
    fn mixes() -> Vec<Vec<DispatchState>> {
        let all = DispatchState::ALL;
        let mut mixes: Vec<Vec<DispatchState>> = all.iter().map(|s| vec![*s]).collect();
        for (i, a) in all.iter().enumerate() {
            for (j, b) in all.iter().enumerate().skip(i) {
                mixes.push(vec![*a, *b]);
                for c in &all[j..] {
                    mixes.push(vec![*a, *b, *c]);
                }
            }
        }
        mixes
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_sql_fold_is_the_cores_over_every_mix_of_states() {
        let t = TestDatabase::new();
        let mut conn = connect(t.url(), &ConnectionOptions::default())
            .await
            .unwrap();
        let mut expected = Vec::new();
        for (n, mix) in mixes().into_iter().enumerate() {
            let event: i64 = diesel::sql_query(
                "INSERT INTO webhook_events (delivery_id, event_type, action,
                        repository_full_name, pull_request_number, payload, round)
                 VALUES ($1, 'pull_request', 'opened', 'o/r', $2, '{}', 2) RETURNING id",
            )
            .bind::<Text, _>(format!("d{n}"))
            .bind::<Int8, _>(i64::try_from(n).unwrap())
            .get_result::<Id>(&mut conn)
            .await
            .unwrap()
            .id;
            // A dispatch of the previous round never counts.
            let old_round = [(DispatchState::Queued, None, 1)];
            let mut summaries = Vec::new();
            let current = mix.iter().enumerate().map(|(j, state)| {
                // Failed ones with and without an error (the first one's
                // counts); others keep an error from a retry, which does not.
                let error = match (state, j % 2) {
                    (DispatchState::Failed, 1) => None,
                    (DispatchState::Failed, _) => Some(format!("HTTP 50{j}")),
                    _ => Some("an earlier retry".to_owned()),
                };
                (*state, error, 2)
            });
            for (j, (state, error, round)) in old_round.into_iter().chain(current).enumerate() {
                diesel::sql_query(
                    "INSERT INTO dispatches (event_id, item_name, pool, queued_label,
                            repository_full_name, pull_request_number, state, last_error,
                            queue_position, round)
                     VALUES ($1, $2, 'p', 'p/queued', 'o/r', 1, $3, $4, $1, $5)",
                )
                .bind::<Int8, _>(event)
                .bind::<Text, _>(format!("item{j}"))
                .bind::<sql_types::DispatchState, _>(DbDispatchState(state))
                .bind::<Nullable<Text>, _>(error.clone())
                .bind::<Int4, _>(round)
                .execute(&mut conn)
                .await
                .unwrap();
                if round == 2 {
                    summaries.push(DispatchSummary {
                        state,
                        last_error: error,
                    });
                }
            }
            expected.push((event, mix, derive_event_status(&summaries)));
        }
        let ids: Vec<i64> = expected.iter().map(|(id, ..)| *id).collect();
        refresh(&conn, &ids, OffsetDateTime::now_utc())
            .await
            .unwrap();
        for (event, mix, want) in expected {
            let got: Stored = diesel::sql_query(
                "SELECT status, processed, processing_error, processed_at IS NOT NULL
                        AS has_processed_at
                   FROM webhook_events WHERE id = $1",
            )
            .bind::<Int8, _>(event)
            .get_result(&mut conn)
            .await
            .unwrap();
            assert_eq!(
                (
                    got.status.0,
                    got.processed,
                    got.processing_error,
                    got.has_processed_at
                ),
                (want.status, want.processed, want.error, want.is_final),
                "{mix:?}"
            );
        }
    }

    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = Int8)]
        id: i64,
    }
}
