//! Queue statuses (`github.queue_status: check_run | commit_status`): the
//! leader's pass writes what each waiting pull request should show
//! ([`reconcile`], on the leader session), the status worker reads what is
//! due and records what GitHub shows ([`PgQueueStatus`]).
//!
//! One row per (pull request, pool, head SHA). The head SHA is read from the
//! stored payload (`pull_request.head.sha`); an event without one gets no
//! status. A row whose dispatch no longer waits is settled by the newest
//! dispatch of its pull request and item ([`dispatcher_core::queue_status::settled`]):
//! another head SHA means "Cancelled: superseded by <sha>", a dispatch sent
//! to its EventListener means "Started", anything else "Cancelled". Rows are
//! deleted once their final phase is shown (or needed no call).

use std::time::Duration;

use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sql_types::{Array, Int8, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use dispatcher_core::domain::{DispatchState, PullRequestRef};
use dispatcher_core::ports::{
    QueueStatusStore, StatusOutcome, StatusPhase, StatusTask, StoreError,
};
use dispatcher_core::queue_status::{WantedStatus, settled};
use time::OffsetDateTime;

use crate::error;
use crate::pool::Database;
use crate::schema::pr_queue_status;

/// Writes `wanted` and settles the rows whose dispatch no longer waits;
/// returns how many rows changed. Run inside the leader's transaction.
pub(crate) async fn reconcile(
    conn: &mut AsyncPgConnection,
    wanted: &[WantedStatus],
    now: OffsetDateTime,
) -> Result<u64, DieselError> {
    let ids: Vec<i64> = wanted.iter().map(|w| w.dispatch.0).collect();
    let pools: Vec<String> = wanted.iter().map(|w| w.pool.0.clone()).collect();
    let pipelines: Vec<String> = wanted.iter().map(|w| w.pipeline.clone()).collect();
    let texts: Vec<String> = wanted.iter().map(|w| w.description.clone()).collect();
    let keys: Vec<String> = wanted.iter().map(|w| w.significant.clone()).collect();
    // Rows already showing the dispatch: a new text only when its
    // significant part changed (no payload is read for them).
    let updated = diesel::sql_query(
        "UPDATE pr_queue_status s
            SET description = w.description, significant = w.significant,
                pipeline = w.pipeline, updated_at = $1
           FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[])
                AS w(dispatch_id, pool, pipeline, description, significant)
          WHERE s.dispatch_id = w.dispatch_id AND s.pool = w.pool AND s.phase = 'queued'
            -- A ticking estimate alone changes nothing (see `significant`).
            AND s.significant <> w.significant",
    )
    .bind::<Timestamptz, _>(now)
    .bind::<Array<Int8>, _>(&ids)
    .bind::<Array<Text>, _>(&pools)
    .bind::<Array<Text>, _>(&pipelines)
    .bind::<Array<Text>, _>(&texts)
    .bind::<Array<Text>, _>(&keys)
    .execute(conn)
    .await?;
    // Dispatches without such a row: their head SHA is read from the
    // payload once, and the row for (PR, pool, SHA) is created or taken over.
    let upserted = diesel::sql_query(
        "INSERT INTO pr_queue_status AS s (repository_full_name, pull_request_number, pool, head_sha,
                 pipeline, dispatch_id, phase, description, significant, next_attempt_at, updated_at)
         SELECT d.repository_full_name, d.pull_request_number, w.pool,
                e.payload->'pull_request'->'head'->>'sha', w.pipeline, d.id, 'queued', w.description, w.significant, $1, $1
           FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[])
                AS w(dispatch_id, pool, pipeline, description, significant)
           JOIN dispatches d ON d.id = w.dispatch_id
           JOIN webhook_events e ON e.id = d.event_id
          WHERE NOT EXISTS (SELECT 1 FROM pr_queue_status k
                             WHERE k.dispatch_id = w.dispatch_id AND k.pool = w.pool AND k.phase = 'queued')
            AND e.payload->'pull_request'->'head'->>'sha' IS NOT NULL
         ON CONFLICT (repository_full_name, pull_request_number, pool, head_sha) DO UPDATE
            SET dispatch_id = EXCLUDED.dispatch_id, pipeline = EXCLUDED.pipeline, phase = 'queued',
                description = EXCLUDED.description, significant = EXCLUDED.significant, updated_at = $1,
                -- A finished row waiting again starts a fresh schedule.
                attempts = CASE WHEN s.phase = 'queued' THEN s.attempts ELSE 0 END,
                next_attempt_at = CASE WHEN s.phase = 'queued' THEN s.next_attempt_at ELSE $1 END
          WHERE s.phase <> 'queued' OR s.significant <> EXCLUDED.significant
             OR s.dispatch_id <> EXCLUDED.dispatch_id",
    )
    .bind::<Timestamptz, _>(now)
    .bind::<Array<Int8>, _>(&ids)
    .bind::<Array<Text>, _>(&pools)
    .bind::<Array<Text>, _>(&pipelines)
    .bind::<Array<Text>, _>(&texts)
    .bind::<Array<Text>, _>(&keys)
    .execute(conn)
    .await?;

    #[derive(QueryableByName)]
    struct Gone {
        #[diesel(sql_type = Text)]
        repository_full_name: String,
        #[diesel(sql_type = Int8)]
        pull_request_number: i64,
        #[diesel(sql_type = Text)]
        pool: String,
        #[diesel(sql_type = Text)]
        head_sha: String,
        #[diesel(sql_type = Nullable<Text>)]
        newest_sha: Option<String>,
        #[diesel(sql_type = Nullable<Text>)]
        newest_state: Option<String>,
    }
    let gone: Vec<Gone> = diesel::sql_query(
        "SELECT s.repository_full_name, s.pull_request_number, s.pool, s.head_sha,
                n.sha AS newest_sha, n.state AS newest_state
           FROM pr_queue_status s
           LEFT JOIN dispatches d ON d.id = s.dispatch_id
           LEFT JOIN LATERAL (
               SELECT x.state::text AS state, ex.payload->'pull_request'->'head'->>'sha' AS sha
                 FROM dispatches x JOIN webhook_events ex ON ex.id = x.event_id
                WHERE x.repository_full_name = d.repository_full_name
                  AND x.pull_request_number = d.pull_request_number
                  AND x.item_name = d.item_name AND x.event_id >= d.event_id
                ORDER BY x.event_id DESC, x.id DESC
                LIMIT 1) n ON TRUE
          WHERE s.phase = 'queued' AND NOT (s.dispatch_id = ANY($1))",
    )
    .bind::<Array<Int8>, _>(&ids)
    .load(conn)
    .await?;
    let mut changed = updated + upserted;
    for g in gone {
        let state = g
            .newest_state
            .as_deref()
            .and_then(|s| s.parse::<DispatchState>().ok());
        let (phase, text) = settled(&g.head_sha, g.newest_sha.as_deref(), state);
        changed += diesel::update(
            pr_queue_status::table
                .filter(pr_queue_status::repository_full_name.eq(&g.repository_full_name))
                .filter(pr_queue_status::pull_request_number.eq(g.pull_request_number))
                .filter(pr_queue_status::pool.eq(&g.pool))
                .filter(pr_queue_status::head_sha.eq(&g.head_sha)),
        )
        .set((
            pr_queue_status::phase.eq(phase.as_str()),
            pr_queue_status::significant.eq(text.clone()),
            pr_queue_status::description.eq(text),
            pr_queue_status::attempts.eq(0),
            pr_queue_status::next_attempt_at.eq(now),
            pr_queue_status::updated_at.eq(now),
        ))
        .execute(conn)
        .await?;
    }
    Ok(u64::try_from(changed).unwrap_or_default())
}

/// Queue statuses in PostgreSQL, for the status worker.
#[derive(Debug, Clone)]
pub struct PgQueueStatus {
    db: Database,
}

impl PgQueueStatus {
    pub(crate) fn new(db: Database) -> Self {
        Self { db }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A row differs from what GitHub shows.
const PENDING: &str =
    "(applied_phase IS DISTINCT FROM phase OR applied_description IS DISTINCT FROM description)";

#[derive(QueryableByName)]
struct TaskRow {
    #[diesel(sql_type = Text)]
    repository_full_name: String,
    #[diesel(sql_type = Int8)]
    pull_request_number: i64,
    #[diesel(sql_type = Text)]
    pool: String,
    #[diesel(sql_type = Text)]
    head_sha: String,
    #[diesel(sql_type = Text)]
    pipeline: String,
    #[diesel(sql_type = Text)]
    phase: String,
    #[diesel(sql_type = Text)]
    description: String,
    #[diesel(sql_type = Nullable<Text>)]
    applied_phase: Option<String>,
    #[diesel(sql_type = Nullable<Int8>)]
    check_run_id: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Int4)]
    attempts: i32,
}

impl QueueStatusStore for PgQueueStatus {
    async fn due_status_tasks(
        &mut self,
        now: OffsetDateTime,
        interval: Duration,
        limit: usize,
    ) -> Result<Vec<StatusTask>, StoreError> {
        let mut conn = self.db.conn().await?;
        let rows: Vec<TaskRow> = diesel::sql_query(format!(
            "SELECT repository_full_name, pull_request_number, pool, head_sha, pipeline, phase,
                    description, applied_phase, check_run_id, attempts
               FROM pr_queue_status
              WHERE {PENDING} AND next_attempt_at <= $1
                -- A position change waits for the coalescing window; final ones go at once.
                AND (phase <> 'queued' OR pushed_at IS NULL
                     OR pushed_at + $2 * interval '1 millisecond' <= $1)
              ORDER BY next_attempt_at
              LIMIT $3"
        ))
        .bind::<Timestamptz, _>(now)
        .bind::<Int8, _>(millis(interval))
        .bind::<Int8, _>(i64::try_from(limit).unwrap_or(i64::MAX))
        .load(&mut conn)
        .await
        .map_err(error::query)?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                Some(StatusTask {
                    pr: PullRequestRef {
                        repository: r.repository_full_name,
                        number: r.pull_request_number,
                    },
                    pool: r.pool,
                    pipeline: r.pipeline,
                    head_sha: r.head_sha,
                    phase: StatusPhase::parse(&r.phase)?,
                    description: r.description,
                    applied_phase: r.applied_phase.as_deref().and_then(StatusPhase::parse),
                    check_run_id: r.check_run_id,
                    attempts: u32::try_from(r.attempts).unwrap_or_default(),
                })
            })
            .collect())
    }

    async fn finish_status_task(
        &mut self,
        task: &StatusTask,
        result: StatusOutcome,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut conn = self.db.conn().await?;
        let key = pr_queue_status::table
            .filter(pr_queue_status::repository_full_name.eq(&task.pr.repository))
            .filter(pr_queue_status::pull_request_number.eq(task.pr.number))
            .filter(pr_queue_status::pool.eq(&task.pool))
            .filter(pr_queue_status::head_sha.eq(&task.head_sha));
        match result {
            Err((message, retry_at)) => {
                diesel::update(key)
                    .set((
                        pr_queue_status::attempts.eq(pr_queue_status::attempts + 1),
                        pr_queue_status::last_error.eq(error::storable(&message)),
                        pr_queue_status::next_attempt_at.eq(retry_at),
                        pr_queue_status::updated_at.eq(now),
                    ))
                    .execute(&mut conn)
                    .await
                    .map_err(error::query)?;
            }
            Ok(check_run_id) => {
                if task.phase.is_final() {
                    // Shown and final: forget it, unless it waits again meanwhile.
                    let deleted = diesel::delete(
                        key.filter(pr_queue_status::phase.eq(task.phase.as_str()))
                            .filter(pr_queue_status::description.eq(&task.description)),
                    )
                    .execute(&mut conn)
                    .await
                    .map_err(error::query)?;
                    if deleted > 0 {
                        return Ok(());
                    }
                }
                diesel::update(key)
                    .set((
                        pr_queue_status::applied_phase.eq(task.phase.as_str()),
                        pr_queue_status::applied_description.eq(&task.description),
                        pr_queue_status::check_run_id.eq(check_run_id.or(task.check_run_id)),
                        pr_queue_status::pushed_at.eq(now),
                        pr_queue_status::attempts.eq(0),
                        pr_queue_status::last_error.eq(None::<String>),
                        pr_queue_status::updated_at.eq(now),
                    ))
                    .execute(&mut conn)
                    .await
                    .map_err(error::query)?;
            }
        }
        Ok(())
    }

    async fn next_status_due(
        &mut self,
        interval: Duration,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        #[derive(QueryableByName)]
        struct Due {
            #[diesel(sql_type = Nullable<Timestamptz>)]
            due: Option<OffsetDateTime>,
        }
        let mut conn = self.db.conn().await?;
        let due: Due = diesel::sql_query(format!(
            "SELECT min(CASE WHEN phase = 'queued' AND pushed_at IS NOT NULL
                             THEN GREATEST(next_attempt_at, pushed_at + $1 * interval '1 millisecond')
                             ELSE next_attempt_at END) AS due
               FROM pr_queue_status WHERE {PENDING}"
        ))
        .bind::<Int8, _>(millis(interval))
        .get_result(&mut conn)
        .await
        .map_err(error::query)?;
        Ok(due.due)
    }
}
