//! Label intents ([`LabelStore`]): which `<pipeline>/queued` labels GitHub
//! should show, and which of those it already does.
//!
//! The engine's reconciliation writes `wanted`; the label worker sends the
//! difference to GitHub and records `applied`. Completion writes are upserts
//! so a label added while the intent was withdrawn is remembered and removed.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use dispatcher_core::domain::PullRequestRef;
use dispatcher_core::ports::{LabelStore, LabelTask, StoreError};
use time::OffsetDateTime;

use crate::error;
use crate::pool::Database;
use crate::schema::pr_labels;

/// Label intents in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgLabels {
    db: Database,
}

impl PgLabels {
    pub(crate) fn new(db: Database) -> Self {
        Self { db }
    }
}

impl LabelStore for PgLabels {
    async fn due_label_tasks(
        &mut self,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<LabelTask>, StoreError> {
        let mut conn = self.db.conn().await?;
        let rows: Vec<(String, i64, String, bool, i32)> = pr_labels::table
            .filter(pr_labels::wanted.ne(pr_labels::applied))
            .filter(pr_labels::next_attempt_at.le(now))
            .order(pr_labels::next_attempt_at)
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .select((
                pr_labels::repository_full_name,
                pr_labels::pull_request_number,
                pr_labels::label,
                pr_labels::wanted,
                pr_labels::attempts,
            ))
            .load(&mut conn)
            .await
            .map_err(error::query)?;
        Ok(rows
            .into_iter()
            .map(|(repository, number, label, wanted, attempts)| LabelTask {
                pr: PullRequestRef { repository, number },
                label,
                wanted,
                attempts: u32::try_from(attempts).unwrap_or_default(),
            })
            .collect())
    }

    async fn finish_label_task(
        &mut self,
        task: &LabelTask,
        error: Option<String>,
        retry_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        let mut conn = self.db.conn().await?;
        let key = pr_labels::table
            .filter(pr_labels::repository_full_name.eq(&task.pr.repository))
            .filter(pr_labels::pull_request_number.eq(task.pr.number))
            .filter(pr_labels::label.eq(&task.label));
        let now = OffsetDateTime::now_utc();
        if let Some(error) = error {
            // Only if the intent is still the one that failed: a reconciliation
            // may have flipped it (and reset the schedule) meanwhile.
            diesel::update(key.filter(pr_labels::wanted.eq(task.wanted)))
                .set((
                    pr_labels::attempts.eq(pr_labels::attempts + 1),
                    pr_labels::last_error.eq(error::storable(&error)),
                    pr_labels::next_attempt_at.eq(retry_at.unwrap_or(now)),
                    pr_labels::updated_at.eq(now),
                ))
                .execute(&mut conn)
                .await
                .map_err(error::query)?;
        } else if task.wanted {
            // Added on GitHub: remember that even if the intent changed meanwhile.
            diesel::insert_into(pr_labels::table)
                .values((
                    pr_labels::repository_full_name.eq(&task.pr.repository),
                    pr_labels::pull_request_number.eq(task.pr.number),
                    pr_labels::label.eq(&task.label),
                    pr_labels::wanted.eq(false),
                    pr_labels::applied.eq(true),
                ))
                .on_conflict((
                    pr_labels::repository_full_name,
                    pr_labels::pull_request_number,
                    pr_labels::label,
                ))
                .do_update()
                .set((
                    pr_labels::applied.eq(true),
                    pr_labels::attempts.eq(0),
                    pr_labels::last_error.eq(None::<String>),
                    pr_labels::updated_at.eq(now),
                ))
                .execute(&mut conn)
                .await
                .map_err(error::query)?;
        } else {
            // Removed on GitHub: forget the row unless the label is wanted again.
            diesel::delete(key.filter(pr_labels::wanted.eq(false)))
                .execute(&mut conn)
                .await
                .map_err(error::query)?;
            diesel::update(key.filter(pr_labels::wanted.eq(true)))
                .set((pr_labels::applied.eq(false), pr_labels::updated_at.eq(now)))
                .execute(&mut conn)
                .await
                .map_err(error::query)?;
        }
        Ok(())
    }

    async fn next_label_retry(&mut self) -> Result<Option<OffsetDateTime>, StoreError> {
        let mut conn = self.db.conn().await?;
        pr_labels::table
            .filter(pr_labels::wanted.ne(pr_labels::applied))
            .select(diesel::dsl::min(pr_labels::next_attempt_at))
            .first(&mut conn)
            .await
            .map_err(error::query)
    }
}

/// Brings `pr_labels.wanted` in line with the queue for `scope`: a PR wants
/// `<pipeline>/queued` while a dispatch of it waits in that pipeline's pool
/// (queued, or being retried: a first attempt in flight never waited, so
/// dispatching at once never labels). Returns how many intents changed.
pub(crate) async fn reconcile(
    conn: &mut diesel_async::AsyncPgConnection,
    now: OffsetDateTime,
    scope: dispatcher_core::ports::LabelScope<'_>,
) -> Result<u64, diesel::result::Error> {
    use diesel::sql_types::{Array, Int8, Text, Timestamptz};
    use dispatcher_core::ports::LabelScope;

    use crate::prepared::Prepared;

    #[derive(QueryableByName)]
    struct Changed {
        #[diesel(sql_type = Int8)]
        changed: i64,
    }
    // `$2`/`$3`: the PRs in scope (unused by the statement for every PR).
    macro_rules! reconcile_sql {
        ($waiting:literal, $withdrawn:literal) => {
            concat!(
                "WITH wanted AS (
                     SELECT DISTINCT d.repository_full_name, d.pull_request_number, d.queued_label AS label
                       FROM dispatches d ",
                $waiting,
                "        AND (d.state = 'queued' OR (d.state = 'triggering' AND d.attempts > 1))
                 ), added AS (
                     INSERT INTO pr_labels AS p (repository_full_name, pull_request_number, label, wanted, next_attempt_at, updated_at)
                     SELECT w.repository_full_name, w.pull_request_number, w.label, TRUE, $1, $1
                       FROM wanted w
                      -- Already wanted: nothing to write (an upsert of every
                      -- waiting PR's label cost ~1.5 s at 100,000 waiting).
                      WHERE NOT EXISTS (
                          SELECT 1 FROM pr_labels q
                           WHERE q.repository_full_name = w.repository_full_name
                             AND q.pull_request_number = w.pull_request_number
                             AND q.label = w.label AND q.wanted)
                     ON CONFLICT (repository_full_name, pull_request_number, label)
                     DO UPDATE SET wanted = TRUE, attempts = 0, next_attempt_at = $1, updated_at = $1
                     WHERE NOT p.wanted
                     RETURNING 1
                 ), removed AS (
                     UPDATE pr_labels p SET wanted = FALSE, attempts = 0, next_attempt_at = $1, updated_at = $1
                      WHERE p.wanted ",
                $withdrawn,
                "       AND NOT EXISTS (
                          SELECT 1 FROM wanted w
                           WHERE w.repository_full_name = p.repository_full_name
                             AND w.pull_request_number = p.pull_request_number AND w.label = p.label)
                     RETURNING 1
                 )
                 SELECT (SELECT count(*) FROM added) + (SELECT count(*) FROM removed) AS changed"
            )
        };
    }
    const ALL: &str = reconcile_sql!("WHERE d.state IN ('queued', 'triggering')", "");
    // Through the primary keys' prefix (repository, PR) of both tables.
    const SOME: &str = reconcile_sql!(
        "WHERE (d.repository_full_name, d.pull_request_number) IN
                (SELECT * FROM unnest($2::text[], $3::int8[]))
            AND d.state IN ('queued', 'triggering')",
        "AND (p.repository_full_name, p.pull_request_number) IN
                (SELECT * FROM unnest($2::text[], $3::int8[]))"
    );
    let (sql, prs): (&'static str, &[PullRequestRef]) = match scope {
        LabelScope::All => (ALL, &[]),
        LabelScope::PullRequests(prs) => (SOME, prs),
    };
    let repositories: Vec<&str> = prs.iter().map(|p| p.repository.as_str()).collect();
    let numbers: Vec<i64> = prs.iter().map(|p| p.number).collect();
    let changed: Changed = Prepared(
        diesel::sql_query(sql)
            .bind::<Timestamptz, _>(now)
            .bind::<Array<Text>, _>(repositories)
            .bind::<Array<Int8>, _>(numbers),
    )
    .get_result(conn)
    .await?;
    Ok(u64::try_from(changed.changed).unwrap_or_default())
}
