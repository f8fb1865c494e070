//! Retention ([`RetentionStore`] for [`PgRetention`]): deletes finished
//! events and drops their payloads, one short transaction per batch.
//!
//! Each batch picks its rows with `FOR UPDATE SKIP LOCKED`, so it never
//! waits for a row another transaction holds (an operator's replay, the
//! dispatcher's pass) and nothing waits long for it: no table lock, and the
//! intake's insert touches none of the rows it locks. Cutoffs are taken on
//! the database's clock (`now() - max_age`). Which events are finished is
//! decided by `dispatcher_core::retention`'s rule, spelled out in SQL here.

use std::collections::BTreeMap;
use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Int8, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use dispatcher_core::domain::DispatchState;
use dispatcher_core::ports::{RetentionStore, StoreError};
use dispatcher_core::retention::{
    DeletedBatch, FINISHED_STATUSES, RetentionPolicy, RetentionPreview,
};
use time::OffsetDateTime;

use crate::error;
use crate::pool::Database;
use crate::schema::sql_types;
use crate::vocab::{DbDispatchState, DbEventStatus};

/// Retention on the pool's connections (run by the active replica, or by
/// `dispatcher prune`).
#[derive(Debug, Clone)]
pub struct PgRetention {
    db: Database,
}

impl PgRetention {
    pub(crate) fn new(db: Database) -> Self {
        Self { db }
    }
}

/// The finished rule for the event aliased `e`, finished before `$1`
/// milliseconds ago: `$2` the finished statuses, `$3` the open dispatch states.
const FINISHED: &str = "e.status = ANY($2)
       AND e.processed_at < now() - $1 * interval '1 millisecond'
       AND NOT EXISTS (SELECT 1 FROM dispatches d WHERE d.event_id = e.id AND d.state = ANY($3))";

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn finished_statuses() -> Vec<DbEventStatus> {
    FINISHED_STATUSES
        .iter()
        .copied()
        .map(DbEventStatus)
        .collect()
}

fn open_states() -> Vec<DbDispatchState> {
    DispatchState::ALL
        .iter()
        .copied()
        .filter(|s| s.is_open())
        .map(DbDispatchState)
        .collect()
}

#[derive(QueryableByName)]
struct Pr {
    #[diesel(sql_type = Text)]
    repository_full_name: String,
    #[diesel(sql_type = Int8)]
    pull_request_number: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

async fn delete_batch(
    conn: &mut AsyncPgConnection,
    older_than: Duration,
    limit: u32,
) -> diesel::QueryResult<DeletedBatch> {
    // Dispatches and timeline entries go with their event (ON DELETE CASCADE).
    let gone: Vec<Pr> = diesel::sql_query(format!(
        "DELETE FROM webhook_events WHERE id IN (
             SELECT e.id FROM webhook_events e WHERE {FINISHED}
              ORDER BY e.processed_at, e.id LIMIT $4 FOR UPDATE SKIP LOCKED)
         RETURNING repository_full_name, pull_request_number"
    ))
    .bind::<Int8, _>(millis(older_than))
    .bind::<Array<sql_types::EventStatus>, _>(finished_statuses())
    .bind::<Array<sql_types::DispatchState>, _>(open_states())
    .bind::<Int8, _>(i64::from(limit))
    .load(conn)
    .await?;
    let events = count(gone.len());
    let prs: BTreeMap<(String, i64), ()> = gone
        .into_iter()
        .map(|p| ((p.repository_full_name, p.pull_request_number), ()))
        .collect();
    if prs.is_empty() {
        return Ok(DeletedBatch {
            events,
            label_rows: 0,
        });
    }
    let (repos, numbers): (Vec<String>, Vec<i64>) = prs.into_keys().unzip();
    // Label rows of a pull request left without events, with nothing left to
    // do on GitHub (neither wanted nor applied). A new event of the PR
    // arriving meanwhile is seen by the NOT EXISTS or reconciles afresh.
    let label_rows = diesel::sql_query(
        "DELETE FROM pr_labels l USING unnest($1::text[], $2::bigint[]) AS p(repo, number)
          WHERE l.repository_full_name = p.repo AND l.pull_request_number = p.number
            AND NOT l.wanted AND NOT l.applied
            AND NOT EXISTS (SELECT 1 FROM webhook_events e
                             WHERE e.repository_full_name = p.repo AND e.pull_request_number = p.number)",
    )
    .bind::<Array<Text>, _>(repos)
    .bind::<Array<Int8>, _>(numbers)
    .execute(conn)
    .await?;
    Ok(DeletedBatch {
        events,
        label_rows: count(label_rows),
    })
}

impl RetentionStore for PgRetention {
    async fn delete_finished(
        &self,
        older_than: Duration,
        limit: u32,
    ) -> Result<DeletedBatch, StoreError> {
        let mut conn = self.db.conn().await?;
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            delete_batch(conn, older_than, limit).await
        })
        .await
        .map_err(error::query)
    }

    async fn drop_payloads(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError> {
        let mut conn = self.db.conn().await?;
        // One statement: its own short transaction.
        let n = diesel::sql_query(format!(
            "UPDATE webhook_events SET payload = 'null'::json, payload_dropped_at = now()
              WHERE id IN (
                  SELECT e.id FROM webhook_events e WHERE {FINISHED} AND e.payload_dropped_at IS NULL
                   ORDER BY e.processed_at, e.id LIMIT $4 FOR UPDATE SKIP LOCKED)"
        ))
        .bind::<Int8, _>(millis(older_than))
        .bind::<Array<sql_types::EventStatus>, _>(finished_statuses())
        .bind::<Array<sql_types::DispatchState>, _>(open_states())
        .bind::<Int8, _>(i64::from(limit))
        .execute(&mut conn)
        .await
        .map_err(error::query)?;
        Ok(count(n))
    }

    async fn preview(&self, policy: &RetentionPolicy) -> Result<RetentionPreview, StoreError> {
        #[derive(QueryableByName)]
        struct Cutoffs {
            #[diesel(sql_type = Timestamptz)]
            now: OffsetDateTime,
            #[diesel(sql_type = Timestamptz)]
            events: OffsetDateTime,
            #[diesel(sql_type = Nullable<Timestamptz>)]
            payloads: Option<OffsetDateTime>,
        }
        #[derive(QueryableByName)]
        struct PerStatus {
            #[diesel(sql_type = sql_types::EventStatus)]
            status: DbEventStatus,
            #[diesel(sql_type = BigInt)]
            n: i64,
            #[diesel(sql_type = Timestamptz)]
            oldest: OffsetDateTime,
            #[diesel(sql_type = Timestamptz)]
            newest: OffsetDateTime,
        }
        let mut conn = self.db.conn().await?;
        let events_ms = millis(policy.max_age);
        let payloads_ms = policy.payload_max_age.map(millis);
        conn.build_transaction()
            .read_only()
            .repeatable_read()
            .run::<_, diesel::result::Error, _>(async |conn| {
                let cutoffs: Cutoffs = diesel::sql_query(
                    "SELECT now() AS now, now() - $1 * interval '1 millisecond' AS events,
                            now() - $2 * interval '1 millisecond' AS payloads",
                )
                .bind::<Int8, _>(events_ms)
                .bind::<Nullable<Int8>, _>(payloads_ms)
                .get_result(conn)
                .await?;
                let per_status: Vec<PerStatus> = diesel::sql_query(format!(
                    "SELECT e.status, count(*) AS n, min(e.processed_at) AS oldest,
                            max(e.processed_at) AS newest
                       FROM webhook_events e WHERE {FINISHED} GROUP BY e.status"
                ))
                .bind::<Int8, _>(events_ms)
                .bind::<Array<sql_types::EventStatus>, _>(finished_statuses())
                .bind::<Array<sql_types::DispatchState>, _>(open_states())
                .load(conn)
                .await?;
                let payloads = match payloads_ms {
                    None => 0,
                    Some(ms) => {
                        // Of the events that stay: the rest go whole.
                        let c: Count = diesel::sql_query(format!(
                            "SELECT count(*) AS n FROM webhook_events e
                              WHERE {FINISHED} AND e.payload_dropped_at IS NULL
                                AND e.processed_at >= now() - $4 * interval '1 millisecond'"
                        ))
                        .bind::<Int8, _>(ms)
                        .bind::<Array<sql_types::EventStatus>, _>(finished_statuses())
                        .bind::<Array<sql_types::DispatchState>, _>(open_states())
                        .bind::<Int8, _>(events_ms)
                        .get_result(conn)
                        .await?;
                        u64::try_from(c.n).unwrap_or_default()
                    }
                };
                let finished_between = per_status
                    .iter()
                    .map(|s| (s.oldest, s.newest))
                    .reduce(|(a, b), (c, d)| (a.min(c), b.max(d)));
                Ok(RetentionPreview {
                    now: cutoffs.now,
                    event_cutoff: cutoffs.events,
                    payload_cutoff: cutoffs.payloads,
                    events_by_status: per_status
                        .iter()
                        .map(|s| (s.status.0, u64::try_from(s.n).unwrap_or_default()))
                        .collect(),
                    finished_between,
                    payloads,
                })
            })
            .await
            .map_err(error::query)
    }
}
