//! Reads of the open set: the whole of it (a full pass, the operators'
//! queue view) and the parts an incremental pass needs
//! (`dispatcher_core::open_set` says what each part means; the tests below
//! hold these queries to it).
//!
//! Every statement is a constant text kept prepared ([`Prepared`]), and
//! names the dispatch states as literals, not binds: a generic plan of a
//! prepared statement can use a partial index only when its predicate is
//! visible in the text (`dispatches_open_idx`, `dispatches_in_flight_idx`).

use std::collections::BTreeMap;

use diesel::QueryableByName;
use diesel::result::Error as DieselError;
use diesel::sql_types::{Array, Bool, Int8, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use dispatcher_core::config::PoolKey;
use dispatcher_core::domain::{DispatchState, PullRequestRef};
use dispatcher_core::open_set::{HeadRequest, QueueSummary};
use dispatcher_core::ports::{OpenDispatch, OpenExtras};
use time::OffsetDateTime;

use crate::leader::{OpenRow, open_from_row};
use crate::prepared::Prepared;
use crate::schema::sql_types;
use crate::vocab::DbDispatchState;

/// The columns of an open dispatch, with `has_newer` and the extras. Binds
/// `$1` (the queued state), `$2` (labels wanted), `$3` (recent triggers
/// wanted), `$4` (how many); each query's own binds start at `$5`.
macro_rules! open_columns {
    () => {
        "SELECT d.id, d.event_id, d.item_name, d.pool, d.repository_full_name, d.pull_request_number,
                d.state, d.queue_position, d.attempts, d.next_attempt_at, d.listener_event_id,
                d.trigger_started_at, d.triggered_at,
                -- Queued work only (work in flight is never superseded; a
                -- thousand reservations cost no probes). A forced replay
                -- runs despite newer events.
                d.state = $1 AND NOT d.forced AND EXISTS (SELECT 1 FROM dispatches n
                         WHERE n.repository_full_name = d.repository_full_name
                           AND n.pull_request_number = d.pull_request_number
                           AND n.item_name = d.item_name
                           AND n.event_id > d.event_id) AS has_newer,
                -- Waiting work, only when a pool's order needs it ($2/$3 are
                -- false otherwise and the subqueries never run): the PR's
                -- labels as of its newest event that carried a label list
                -- (a later `labeled` delivery counts even when no item
                -- matches it), for dispatcher.priority_labels ...
                CASE WHEN $2 AND d.state = $1 THEN COALESCE((
                    SELECT e.labels FROM webhook_events e
                     WHERE e.repository_full_name = d.repository_full_name
                       AND e.pull_request_number = d.pull_request_number
                       AND e.labels IS NOT NULL
                     ORDER BY e.id DESC LIMIT 1), '{}') ELSE '{}' END AS labels,
                -- ... and its repository's most recent trigger starts in this
                -- pool, for round_robin_repository turns across passes.
                CASE WHEN $3 AND d.state = $1 THEN ARRAY(
                    SELECT s.trigger_started_at FROM dispatches s
                     WHERE s.pool = d.pool
                       AND s.repository_full_name = d.repository_full_name
                       AND s.trigger_started_at IS NOT NULL
                     ORDER BY s.trigger_started_at DESC LIMIT $4) ELSE '{}' END AS recent_triggers
         "
    };
}

#[derive(QueryableByName)]
struct OpenWithSiblings {
    #[diesel(embed)]
    dispatch: OpenRow,
    #[diesel(sql_type = Bool)]
    has_newer: bool,
    #[diesel(sql_type = Array<Text>)]
    labels: Vec<String>,
    #[diesel(sql_type = Array<Timestamptz>)]
    recent_triggers: Vec<OffsetDateTime>,
}

impl From<OpenWithSiblings> for OpenDispatch {
    fn from(r: OpenWithSiblings) -> Self {
        OpenDispatch {
            has_newer: r.has_newer,
            labels: r.labels,
            recent_triggers: r.recent_triggers,
            ..open_from_row(r.dispatch)
        }
    }
}

/// `$sql` (built on [`open_columns`]) with its first four binds (a macro:
/// diesel does not name the type of a bound `sql_query`).
macro_rules! open_query {
    ($sql:expr, $extras:expr) => {
        diesel::sql_query($sql)
            .bind::<sql_types::DispatchState, _>(DbDispatchState(DispatchState::Queued))
            .bind::<Bool, _>($extras.labels)
            .bind::<Bool, _>($extras.recent_triggers)
            .bind::<Int8, _>(i64::from(dispatcher_core::config::MAX_WEIGHT))
    };
}

fn into_open(rows: Vec<OpenWithSiblings>) -> Vec<OpenDispatch> {
    rows.into_iter().map(OpenDispatch::from).collect()
}

/// Queued and triggering dispatches plus triggered ones newer than
/// `reservation_cutoff` with the `extras` asked for, in pool FIFO order (a
/// full pass; the operators' queue view reads the same).
pub(crate) async fn load_open(
    mut conn: &AsyncPgConnection,
    reservation_cutoff: OffsetDateTime,
    extras: OpenExtras,
) -> Result<Vec<OpenDispatch>, DieselError> {
    const SQL: &str = concat!(
        open_columns!(),
        "FROM dispatches d
          WHERE d.state IN ('queued', 'triggering')
             OR (d.state = 'triggered' AND d.triggered_at > $5)
          ORDER BY d.pool, d.queue_position, d.id"
    );
    let rows = Prepared(open_query!(SQL, extras).bind::<Timestamptz, _>(reservation_cutoff))
        .load(&mut conn)
        .await?;
    Ok(into_open(rows))
}

/// Triggering dispatches and those triggered after `reservation_cutoff`
/// (through `dispatches_in_flight_idx`: a few rows however deep the queue).
pub(crate) async fn load_in_flight(
    conn: &mut AsyncPgConnection,
    reservation_cutoff: OffsetDateTime,
) -> Result<Vec<OpenDispatch>, DieselError> {
    const SQL: &str = concat!(
        open_columns!(),
        "FROM dispatches d
          WHERE d.state IN ('triggering', 'triggered')
            AND (d.state = 'triggering' OR d.triggered_at > $5)
          ORDER BY d.pool, d.queue_position, d.id"
    );
    let rows =
        Prepared(open_query!(SQL, OpenExtras::NONE).bind::<Timestamptz, _>(reservation_cutoff))
            .load(conn)
            .await?;
    Ok(into_open(rows))
}

/// The open dispatches of `prs` (through `dispatches_pr_item_idx`).
pub(crate) async fn load_of_prs(
    conn: &mut AsyncPgConnection,
    reservation_cutoff: OffsetDateTime,
    prs: &[PullRequestRef],
) -> Result<Vec<OpenDispatch>, DieselError> {
    const SQL: &str = concat!(
        open_columns!(),
        "FROM dispatches d
          WHERE (d.repository_full_name, d.pull_request_number) IN
                (SELECT * FROM unnest($5::text[], $6::int8[]))
            AND (d.state IN ('queued', 'triggering')
                 OR (d.state = 'triggered' AND d.triggered_at > $7))
          ORDER BY d.pool, d.queue_position, d.id"
    );
    let repositories: Vec<&str> = prs.iter().map(|p| p.repository.as_str()).collect();
    let numbers: Vec<i64> = prs.iter().map(|p| p.number).collect();
    let rows = Prepared(
        open_query!(SQL, OpenExtras::NONE)
            .bind::<Array<Text>, _>(repositories)
            .bind::<Array<Int8>, _>(numbers)
            .bind::<Timestamptz, _>(reservation_cutoff),
    )
    .load(conn)
    .await?;
    Ok(into_open(rows))
}

/// The heads of the requested pools' queues: per pool one walk of
/// `dispatches_open_idx` in queue order that stops after its limit, so a
/// pool costs its limit, not its depth.
pub(crate) async fn load_heads(
    conn: &mut AsyncPgConnection,
    requests: &[HeadRequest],
    now: OffsetDateTime,
    extras: OpenExtras,
) -> Result<Vec<OpenDispatch>, DieselError> {
    const SQL: &str = concat!(
        open_columns!(),
        "FROM unnest($5::text[], $6::int8[]) AS w(pool, lim)
          CROSS JOIN LATERAL (
              SELECT * FROM dispatches q
               WHERE q.pool = w.pool AND q.state = 'queued'
                 AND (w.lim IS NULL OR q.next_attempt_at <= $7)
               ORDER BY q.queue_position, q.id
               LIMIT w.lim) d
          ORDER BY d.pool, d.queue_position, d.id"
    );
    let pools: Vec<&str> = requests.iter().map(|r| r.pool.0.as_str()).collect();
    let limits: Vec<Option<i64>> = requests.iter().map(|r| r.limit.map(i64::from)).collect();
    let rows = Prepared(
        open_query!(SQL, extras)
            .bind::<Array<Text>, _>(pools)
            .bind::<Array<Nullable<Int8>>, _>(limits)
            .bind::<Timestamptz, _>(now),
    )
    .load(conn)
    .await?;
    Ok(into_open(rows))
}

/// Queued dispatches whose `(item, pool)` is none of `placements` (one scan
/// of the queue, once per term and per reload).
pub(crate) async fn load_misplaced(
    conn: &mut AsyncPgConnection,
    placements: &[(String, PoolKey)],
    extras: OpenExtras,
) -> Result<Vec<OpenDispatch>, DieselError> {
    const SQL: &str = concat!(
        open_columns!(),
        "FROM dispatches d
          WHERE d.state = 'queued'
            AND (d.item_name, d.pool) NOT IN (SELECT * FROM unnest($5::text[], $6::text[]))
          ORDER BY d.pool, d.queue_position, d.id"
    );
    let items: Vec<&str> = placements.iter().map(|(i, _)| i.as_str()).collect();
    let pools: Vec<&str> = placements.iter().map(|(_, p)| p.0.as_str()).collect();
    let rows = Prepared(
        open_query!(SQL, extras)
            .bind::<Array<Text>, _>(items)
            .bind::<Array<Text>, _>(pools),
    )
    .load(conn)
    .await?;
    Ok(into_open(rows))
}

#[derive(QueryableByName)]
struct SummaryRow {
    #[diesel(sql_type = Text)]
    pool: String,
    #[diesel(sql_type = Int8)]
    waiting: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    oldest: Option<OffsetDateTime>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    next_retry: Option<OffsetDateTime>,
}

/// Waiting work per pool (one aggregate over the queued dispatches).
pub(crate) async fn load_summary(
    conn: &mut AsyncPgConnection,
    now: OffsetDateTime,
) -> Result<BTreeMap<PoolKey, QueueSummary>, DieselError> {
    let rows: Vec<SummaryRow> = Prepared(
        diesel::sql_query(
            "SELECT pool, count(*) AS waiting, min(next_attempt_at) AS oldest,
                    min(next_attempt_at) FILTER (WHERE next_attempt_at > $1) AS next_retry
               FROM dispatches WHERE state = 'queued' GROUP BY pool",
        )
        .bind::<Timestamptz, _>(now),
    )
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                PoolKey(r.pool),
                QueueSummary {
                    waiting: u32::try_from(r.waiting).unwrap_or(u32::MAX),
                    oldest_waiting: r.oldest,
                    next_retry: r.next_retry,
                },
            )
        })
        .collect())
}
