//! The active dispatcher's session: a dedicated connection that holds the
//! leader advisory lock, listens for wake-ups and carries every engine write.
//!
//! Routing all engine writes through the lock-holding connection is the
//! fence: if the connection dies, the lock is released *and* this replica can
//! no longer change anything, so two replicas never dispatch at once.
//!
//! Side effects outside the database (triggers) are fenced by time instead:
//! the session runs with `idle_session_timeout` (and its in-transaction
//! twin), so PostgreSQL itself ends the session of a leader that stopped
//! answering, and the [`Lease`] tells the leader, without a round trip,
//! whether that may already have happened.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sql_types::{Array, Bool, Int4, Int8, Text, Timestamptz};
use diesel_async::pooled_connection::PoolableConnection;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use dispatcher_core::config::PoolKey;
use dispatcher_core::domain::{
    DispatchId, DispatchState, EventId, EventStatus, PullRequestRef, TimelineKind,
    UNSUPPORTED_MESSAGE, rfc3339,
};
use dispatcher_core::open_set::{HeadRequest, QueueSummary};
use dispatcher_core::planner::{DispatchOutcome, IntakePlan, NewDispatch};
use dispatcher_core::ports::{
    CancelCandidate, CancelQuery, DispatchStore, LabelScope, OpenDispatch, OpenExtras, PassReads,
    StoreError, TriggerJob, UnplannedEvent,
};
use dispatcher_core::timeline::fact;
use futures_util::future::{try_join, try_join3, try_join4};
use futures_util::{FutureExt, StreamExt};
use time::OffsetDateTime;

use crate::cancels;
use crate::connect;
use crate::error;
use crate::events::headers_from_json;
use crate::lease::Lease;
use crate::open_set;
use crate::prepared::Prepared;
use crate::raw_json::RawJson;
use crate::schema::{dispatches, pool_controls, sql_types, webhook_events};
use crate::status;
use crate::timeline::{self, Note};
use crate::vocab::{DbDispatchState, DbEventStatus};
use crate::wakeup::LocalLeader;
use crate::wakeup::WAKEUP_CHANNEL;

mod answers;
mod pass;
use pass::{PassWrites, in_transaction};

/// Advisory lock key of the active dispatcher ("dispatch").
const LEADER_LOCK: i64 = 0x6469_7370_6174_6368;

/// Liveness settings of the leader session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderOptions {
    /// PostgreSQL ends the leader session, releasing the lock, once it has
    /// waited this long for the leader's next statement (`idle_session_timeout`
    /// and `idle_in_transaction_session_timeout`, PostgreSQL 14+). Bounds how
    /// long a frozen leader keeps the lock; keep it below the failover target.
    pub idle_session_timeout: Duration,
    /// How often the runtime calls [`LeaderSession::heartbeat`] while idle;
    /// must be well below `idle_session_timeout - lease_margin`.
    pub heartbeat_interval: Duration,
    /// Safety margin: the [`Lease`] runs out this long before PostgreSQL may
    /// end the session (covers a trigger already on its way and timer slack).
    pub lease_margin: Duration,
}

impl Default for LeaderOptions {
    fn default() -> Self {
        Self {
            idle_session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(2),
            lease_margin: Duration::from_secs(3),
        }
    }
}

impl LeaderOptions {
    /// How long one successful round trip keeps the lease valid:
    /// `idle_session_timeout - lease_margin` (zero if the margin is larger).
    pub fn lease_duration(&self) -> Duration {
        self.idle_session_timeout.saturating_sub(self.lease_margin)
    }
}

/// The active dispatcher's connection. Dropping it releases leadership.
///
/// Every successful round trip (a [`DispatchStore`] method or
/// [`heartbeat`](Self::heartbeat)) renews the [`lease`](Self::lease). Once the
/// connection is found gone the lease is revoked and every method returns
/// [`StoreError::LostLeadership`] without touching the database.
pub struct LeaderSession {
    conn: AsyncPgConnection,
    /// In-process wake-ups from this process's intake (see crate::wakeup).
    local: Arc<LocalLeader>,
    labels_enabled: bool,
    options: LeaderOptions,
    lease: Lease,
    backend_pid: i32,
    /// The open pass transaction, if any ([`DispatchStore::begin_pass`]).
    pass: Option<PassWrites>,
    /// The commit statements prepared on this connection (see [`pass::commit`]).
    commit_statements: pass::CommitStatements,
}

impl std::fmt::Debug for LeaderSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderSession")
            .field("backend_pid", &self.backend_pid)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Drop for LeaderSession {
    fn drop(&mut self) {
        // The connection (and with it the lock) goes with the session.
        self.lease.revoke();
    }
}

#[derive(Queryable, QueryableByName, Selectable)]
#[diesel(table_name = dispatches)]
pub(crate) struct OpenRow {
    id: i64,
    event_id: i64,
    item_name: String,
    pool: String,
    repository_full_name: String,
    pull_request_number: i64,
    state: DbDispatchState,
    queue_position: i64,
    attempts: i32,
    next_attempt_at: OffsetDateTime,
    listener_event_id: Option<String>,
    trigger_started_at: Option<OffsetDateTime>,
    triggered_at: Option<OffsetDateTime>,
}

#[derive(QueryableByName)]
struct SessionSetup {
    #[diesel(sql_type = Int4)]
    backend_pid: i32,
    #[diesel(sql_type = Int4)]
    server_version: i32,
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

impl LeaderSession {
    pub(crate) async fn try_acquire(
        config: &crate::connect::Target,
        connect_timeout: Duration,
        labels_enabled: bool,
        options: LeaderOptions,
        local: Arc<LocalLeader>,
    ) -> Result<Option<Self>, StoreError> {
        let mut conn = connect::open(config, connect_timeout).await?;
        // Limits first: from the moment the lock is held, a leader that stops
        // answering loses the session (and the lock) after the timeout.
        let started = Instant::now();
        let timeout = format!("{}ms", connect::millis(options.idle_session_timeout));
        // `idle_session_timeout` exists from PostgreSQL 14 on; older servers
        // (12, 13) still get the in-transaction timeout and server-side TCP
        // keepalives, which end the session of a partitioned leader but not of
        // a frozen one (its kernel keeps answering): see ARCHITECTURE.md.
        let setup: SessionSetup = diesel::sql_query(
            "SELECT pg_backend_pid() AS backend_pid,
                    current_setting('server_version_num')::int AS server_version,
                    CASE WHEN current_setting('server_version_num')::int >= 140000
                         THEN set_config('idle_session_timeout', $1, false) END,
                    set_config('idle_in_transaction_session_timeout', $1, false),
                    set_config('tcp_keepalives_idle', '5', false),
                    set_config('tcp_keepalives_interval', '2', false),
                    set_config('tcp_keepalives_count', '3', false),
                    set_config('tcp_user_timeout', $1, false)",
        )
        .bind::<Text, _>(&timeout)
        .get_result(&mut conn)
        .await
        .map_err(error::query)?;
        let Locked { locked } = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
            .bind::<Int8, _>(LEADER_LOCK)
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
        let lease_duration = options.lease_duration();
        if options.heartbeat_interval >= lease_duration {
            tracing::warn!(
                heartbeat_interval = ?options.heartbeat_interval,
                lease = ?lease_duration,
                "the leader heartbeat is not more frequent than its lease lasts; triggers will be held back"
            );
        }
        if setup.server_version < 140_000 {
            tracing::warn!(
                server_version = setup.server_version,
                "PostgreSQL before 14 has no idle_session_timeout: a frozen active replica keeps the dispatcher lock until its process dies (a crashed or partitioned one still loses it)"
            );
        }
        tracing::debug!(
            backend_pid = setup.backend_pid,
            idle_session_timeout = ?options.idle_session_timeout,
            "holding the dispatcher lock"
        );
        let lease = Lease::new(started, lease_duration);
        local.holding(lease.clone());
        Ok(Some(Self {
            conn,
            local,
            labels_enabled,
            options,
            lease,
            backend_pid: setup.backend_pid,
            pass: None,
            commit_statements: pass::CommitStatements::default(),
        }))
    }

    /// A handle on this session's lease, to check before sending anything.
    pub fn lease(&self) -> Lease {
        self.lease.clone()
    }

    /// The interval at which the runtime should call [`heartbeat`](Self::heartbeat)
    /// (from [`LeaderOptions::heartbeat_interval`]).
    pub fn heartbeat_interval(&self) -> Duration {
        self.options.heartbeat_interval
    }

    /// Process id of the session's PostgreSQL backend (for logs and operators).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// One cheap round trip (`SELECT 1`): keeps PostgreSQL from ending the
    /// idle session and renews the lease. No answer within
    /// `idle_session_timeout` counts as a lost connection. An error means
    /// leadership is gone ([`StoreError::LostLeadership`]) or, rarely, a
    /// failure of the statement itself ([`StoreError::Query`]).
    pub async fn heartbeat(&mut self) -> Result<(), StoreError> {
        self.ensure_held()?;
        let started = Instant::now();
        let answered = tokio::time::timeout(
            self.options.idle_session_timeout,
            diesel::sql_query("SELECT 1").execute(&mut self.conn),
        )
        .await;
        match answered {
            Ok(result) => self.settle(started, result.map(drop)).await,
            Err(_) => {
                // A statement abandoned mid-flight leaves the connection unusable.
                self.lease.revoke();
                Err(StoreError::LostLeadership)
            }
        }
    }

    /// Waits for the next insert notification, then swallows any others
    /// already queued (one pass handles them all). An error means the
    /// connection, and with it leadership, is gone. Waiting is not a round
    /// trip: call [`heartbeat`](Self::heartbeat) meanwhile.
    pub async fn wait_for_wakeup(&mut self) -> Result<(), StoreError> {
        self.ensure_held()?;
        let local = Arc::clone(&self.local);
        let lost = {
            let mut stream = std::pin::pin!(self.conn.notifications_stream());
            let next = tokio::select! {
                next = stream.next() => next,
                // A delivery stored by this process: no NOTIFY was sent.
                () = local.woken() => return Ok(()),
            };
            match next {
                Some(Ok(_)) => {
                    let mut lost = false;
                    while let Some(Some(item)) = stream.next().now_or_never() {
                        if item.is_err() {
                            lost = true;
                            break;
                        }
                    }
                    lost
                }
                Some(Err(_)) | None => true,
            }
        };
        if lost {
            self.lease.revoke();
            return Err(StoreError::LostLeadership);
        }
        Ok(())
    }

    fn ensure_held(&self) -> Result<(), StoreError> {
        if self.lease.is_revoked() {
            Err(StoreError::LostLeadership)
        } else {
            Ok(())
        }
    }

    /// Turns the result of a round trip sent at `started` into the port's
    /// result, renewing or revoking the lease.
    async fn settle<T>(
        &mut self,
        started: Instant,
        result: Result<T, DieselError>,
    ) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                self.lease.renew(started);
                Ok(value)
            }
            Err(e) => Err(self.classify(e).await),
        }
    }

    /// A failed statement: leadership is lost if the connection is, otherwise
    /// it is the statement's own error. A server's FATAL message (terminated
    /// backend, idle timeout) is not told apart from other errors by diesel,
    /// so when in doubt the session is asked once more.
    async fn classify(&mut self, e: DieselError) -> StoreError {
        // A failed statement aborts the pass transaction: end it, or the
        // probe below would be refused too (and so would every later write).
        if self.pass.take().is_some() {
            let _ = pass::rollback(&self.conn).await;
        }
        if error::is_connection_lost(&e) || self.conn.is_broken() || !self.probe().await {
            self.lease.revoke();
            tracing::debug!(error = %e, "the leader session is gone");
            return StoreError::LostLeadership;
        }
        error::query(e)
    }

    /// Whether the connection still answers (renews the lease if so).
    async fn probe(&mut self) -> bool {
        let started = Instant::now();
        let answered = tokio::time::timeout(
            self.options.idle_session_timeout,
            diesel::sql_query("SELECT 1").execute(&mut self.conn),
        )
        .await;
        if matches!(answered, Ok(Ok(_))) {
            self.lease.renew(started);
            true
        } else {
            false
        }
    }
}

pub(crate) fn open_from_row(r: OpenRow) -> OpenDispatch {
    OpenDispatch {
        id: DispatchId(r.id),
        event_id: EventId(r.event_id),
        item: r.item_name,
        pool: PoolKey(r.pool),
        pr: PullRequestRef {
            repository: r.repository_full_name,
            number: r.pull_request_number,
        },
        state: r.state.0,
        queue_position: r.queue_position,
        attempts: u32::try_from(r.attempts).unwrap_or_default(),
        next_attempt_at: r.next_attempt_at,
        listener_event_id: r.listener_event_id,
        trigger_started_at: r.trigger_started_at,
        triggered_at: r.triggered_at,
        has_newer: false,
        labels: Vec::new(),
        recent_triggers: Vec::new(),
    }
}

/// `(id, action, repository, pull request number, headers)` of an unplanned event.
type UnplannedRow = (
    i64,
    String,
    String,
    i64,
    serde_json::Value,
    Option<Vec<String>>,
);

impl DispatchStore for LeaderSession {
    async fn begin_pass(&mut self) -> Result<OffsetDateTime, StoreError> {
        self.ensure_held()?;
        if self.pass.is_some() {
            // A pass the caller neither committed nor aborted: drop its writes.
            self.abort_pass().await;
        }
        let started = Instant::now();
        let result = pass::begin(&self.conn).await;
        // Set before settling: should the BEGIN have gone through and the
        // clock failed, `classify` rolls it back.
        self.pass = Some(PassWrites::default());
        let now = self.settle(started, result).await?;
        Ok(now)
    }

    async fn commit_pass(&mut self) -> Result<(), StoreError> {
        if self.pass.is_none() {
            return Ok(());
        }
        // The pass stays in `self.pass` until the commit succeeded, so a
        // failure (through `classify`, or the caller's `abort_pass`) rolls
        // the transaction back.
        self.ensure_held()?;
        let started = Instant::now();
        let result = match self.pass.as_mut() {
            Some(writes) => pass::commit(&self.conn, writes, &mut self.commit_statements).await,
            None => Ok(()),
        };
        if result.is_ok() {
            self.pass = None;
        }
        self.settle(started, result).await
    }

    async fn abort_pass(&mut self) {
        if self.pass.take().is_some() {
            let _ = pass::rollback(&self.conn).await;
        }
    }

    async fn database_now(&mut self) -> Result<OffsetDateTime, StoreError> {
        self.ensure_held()?;
        let started = Instant::now();
        let result = pass::read_clock(&self.conn).await;
        self.settle(started, result).await
    }

    async fn claimed_listener_event_ids(
        &mut self,
        listener_event_ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        self.ensure_held()?;
        let started = Instant::now();
        let result: Result<Vec<Option<String>>, _> = dispatches::table
            .filter(dispatches::listener_event_id.eq_any(listener_event_ids))
            .select(dispatches::listener_event_id)
            .load(&mut self.conn)
            .await;
        let claimed = self.settle(started, result).await?;
        Ok(claimed.into_iter().flatten().collect())
    }

    async fn unplanned_events(&mut self, limit: usize) -> Result<Vec<UnplannedEvent>, StoreError> {
        self.ensure_held()?;
        let started = Instant::now();
        let result = load_unplanned(&self.conn, limit).await;
        self.settle(started, result).await
    }

    async fn event_payloads(
        &mut self,
        ids: &[EventId],
    ) -> Result<HashMap<EventId, String>, StoreError> {
        self.ensure_held()?;
        let ids: Vec<i64> = ids.iter().map(|e| e.0).collect();
        let started = Instant::now();
        let rows: Result<Vec<(i64, RawJson)>, _> = webhook_events::table
            .filter(webhook_events::id.eq_any(&ids))
            .select((webhook_events::id, webhook_events::payload))
            .load(&mut self.conn)
            .await;
        let rows = self.settle(started, rows).await?;
        Ok(rows
            .into_iter()
            .map(|(id, payload)| (EventId(id), payload.0))
            .collect())
    }

    async fn open_dispatches(
        &mut self,
        reservation_cutoff: OffsetDateTime,
        extras: OpenExtras,
    ) -> Result<Vec<OpenDispatch>, StoreError> {
        self.ensure_held()?;
        let started = Instant::now();
        let rows = open_set::load_open(&self.conn, reservation_cutoff, extras).await;
        self.settle(started, rows).await
    }

    async fn open_of_prs(
        &mut self,
        reservation_cutoff: OffsetDateTime,
        prs: &[PullRequestRef],
    ) -> Result<Vec<OpenDispatch>, StoreError> {
        self.ensure_held()?;
        let started = Instant::now();
        let rows = open_set::load_of_prs(&mut self.conn, reservation_cutoff, prs).await;
        self.settle(started, rows).await
    }

    async fn in_flight(
        &mut self,
        reservation_cutoff: OffsetDateTime,
    ) -> Result<Vec<OpenDispatch>, StoreError> {
        self.ensure_held()?;
        let started = Instant::now();
        let rows = open_set::load_in_flight(&mut self.conn, reservation_cutoff).await;
        self.settle(started, rows).await
    }

    async fn queue_heads(
        &mut self,
        requests: &[HeadRequest],
        now: OffsetDateTime,
        extras: OpenExtras,
    ) -> Result<Vec<OpenDispatch>, StoreError> {
        self.ensure_held()?;
        let started = Instant::now();
        let rows = open_set::load_heads(&mut self.conn, requests, now, extras).await;
        self.settle(started, rows).await
    }

    async fn misplaced(
        &mut self,
        placements: &[(String, PoolKey)],
        extras: OpenExtras,
    ) -> Result<Vec<OpenDispatch>, StoreError> {
        self.ensure_held()?;
        let started = Instant::now();
        let rows = open_set::load_misplaced(&mut self.conn, placements, extras).await;
        self.settle(started, rows).await
    }

    async fn queue_summary(
        &mut self,
        now: OffsetDateTime,
    ) -> Result<BTreeMap<PoolKey, QueueSummary>, StoreError> {
        self.ensure_held()?;
        let started = Instant::now();
        let rows = open_set::load_summary(&mut self.conn, now).await;
        self.settle(started, rows).await
    }

    async fn apply_intake(
        &mut self,
        plan: &IntakePlan,
        now: OffsetDateTime,
    ) -> Result<Vec<OpenDispatch>, StoreError> {
        let planned: Vec<i64> = plan.planned.iter().map(|e| e.0).collect();
        let aborted: Vec<i64> = plan.aborted.iter().map(|e| e.0).collect();
        let superseded: Vec<i64> = plan.superseded.iter().map(|d| d.0).collect();
        self.ensure_held()?;
        let started = Instant::now();
        let in_pass = self.pass.is_some();
        let result = in_transaction!(
            in_pass,
            &mut self.conn,
            async |conn: &mut AsyncPgConnection| {
                // Three round trips whatever the plan: the independent
                // writes together, the stale check (it needs the new rows),
                // then the timeline facts together (they need both).
                let shared: &AsyncPgConnection = conn;
                // Nothing outside the database acts on this commit alone:
                // every trigger is sent only after `begin_triggers` commits
                // synchronously, which flushes the WAL up to and including
                // this transaction. Lost in a crash, it is planned again from
                // the same events with the same outcome; so it need not wait
                // for its own WAL flush (one fsync less per pass). Inside a
                // pass transaction the commit decides (see `PassWrites`).
                let commit_async = async {
                    let mut c = shared;
                    if !in_pass {
                        Prepared(diesel::sql_query("SET LOCAL synchronous_commit = off"))
                            .execute(&mut c)
                            .await?;
                    }
                    Ok::<_, DieselError>(())
                };
                // One statement marks every event planned and the unmatched ones aborted.
                let mark_planned = async {
                    let mut c = shared;
                    Prepared(diesel::sql_query(
                        "UPDATE webhook_events
                            SET planned_at = $1,
                                status = CASE WHEN id = ANY($3) THEN $5 ELSE status END,
                                processing_error = CASE WHEN id = ANY($3) THEN $4 ELSE processing_error END,
                                processed_at = CASE WHEN id = ANY($3) THEN $1 ELSE processed_at END,
                                processed = processed OR id = ANY($3)
                          WHERE id = ANY($2)",
                    )
                    .bind::<Timestamptz, _>(now)
                    .bind::<Array<Int8>, _>(&planned)
                    .bind::<Array<Int8>, _>(&aborted)
                    .bind::<Text, _>(UNSUPPORTED_MESSAGE)
                    .bind::<sql_types::EventStatus, _>(DbEventStatus(EventStatus::Aborted)))
                    .execute(&mut c)
                    .await
                };
                let cancel_superseded = async {
                    let mut c = shared;
                    if superseded.is_empty() {
                        return Ok(Vec::new());
                    }
                    diesel::update(
                        dispatches::table
                            .filter(dispatches::id.eq_any(&superseded))
                            .filter(dispatches::state.eq(DbDispatchState(DispatchState::Queued))),
                    )
                    .set((
                        dispatches::state.eq(DbDispatchState(DispatchState::Cancelled)),
                        dispatches::finished_at.eq(now),
                    ))
                    .returning((dispatches::id, dispatches::event_id))
                    .get_results::<(i64, i64)>(&mut c)
                    .await
                };
                let ((), _, cancelled, created) = try_join4(
                    commit_async,
                    mark_planned,
                    cancel_superseded,
                    insert_dispatches(shared, &plan.new_dispatches, now),
                )
                .await?;
                let stale = cancel_stale(shared, &created, now).await?;
                let aborted_notes: Vec<Note> = aborted
                    .iter()
                    .map(|e| Note {
                        event_id: *e,
                        dispatch_id: None,
                        kind: TimelineKind::Aborted,
                        detail: serde_json::json!({}),
                        actor: None,
                    })
                    .collect();
                let queued: Vec<i64> = created
                    .iter()
                    .filter(|d| d.state.0 == DispatchState::Queued && !stale.contains(&d.id))
                    .map(|d| d.id)
                    .collect();
                let superseded_now: Vec<i64> = cancelled
                    .iter()
                    .map(|c| c.0)
                    .chain(stale.iter().copied())
                    .chain(
                        created
                            .iter()
                            .filter(|d| d.state.0 == DispatchState::Cancelled)
                            .map(|d| d.id),
                    )
                    .collect();
                try_join3(
                    timeline::append(shared, now, &aborted_notes),
                    timeline::note_queued(shared, &queued, now, None),
                    timeline::note_superseded(shared, &superseded_now, now),
                )
                .await?;
                let mut touched: Vec<i64> = cancelled.iter().map(|c| c.1).collect();
                touched.extend(plan.new_dispatches.iter().map(|d| d.event_id.0));
                touched.sort_unstable();
                touched.dedup();
                if !in_pass {
                    status::refresh(conn, &touched, now).await?;
                }
                let queued: Vec<OpenDispatch> = created
                    .into_iter()
                    .filter(|d| d.state.0 == DispatchState::Queued && !stale.contains(&d.id))
                    .map(open_from_row)
                    .collect();
                Ok((queued, touched))
            }
        );
        let result = result.map(|(queued, touched)| {
            if let Some(pass) = self.pass.as_mut() {
                pass.touch(&touched, now);
            }
            queued
        });
        self.settle(started, result).await
    }

    async fn begin_triggers(
        &mut self,
        ids: &[DispatchId],
        now: OffsetDateTime,
    ) -> Result<Vec<TriggerJob>, StoreError> {
        self.ensure_held()?;
        let ids: Vec<i64> = ids.iter().map(|d| d.0).collect();
        let sent = Instant::now();
        let in_pass = self.pass.is_some();
        let result = in_transaction!(
            in_pass,
            &mut self.conn,
            async |conn: &mut AsyncPgConnection| {
                type Row = (i64, RawJson, serde_json::Value, bool, OffsetDateTime);
                let shared: &AsyncPgConnection = conn;
                // The payloads of the dispatches' events, whichever of them
                // start: it needs nothing from the update, so both go in one
                // round trip.
                let load_payloads = async {
                    let mut c = shared;
                    webhook_events::table
                        .filter(
                            webhook_events::id.eq_any(
                                dispatches::table
                                    .filter(dispatches::id.eq_any(&ids))
                                    .select(dispatches::event_id),
                            ),
                        )
                        .select((
                            webhook_events::id,
                            webhook_events::payload,
                            webhook_events::headers,
                            webhook_events::adopted,
                            webhook_events::received_at,
                        ))
                        .load::<Row>(&mut c)
                        .await
                };
                let (started, payloads) =
                    try_join(start_triggers(shared, &ids, now), load_payloads).await?;
                let event_ids: Vec<i64> = started.iter().map(|s| s.event_id).collect();
                type Stored = (String, Vec<(String, String)>, bool, OffsetDateTime);
                let mut by_event: std::collections::HashMap<i64, Stored> = payloads
                    .into_iter()
                    .map(|(id, payload, headers, adopted, at)| {
                        (id, (payload.0, headers_from_json(&headers), adopted, at))
                    })
                    .collect();
                // Keep the caller's (FIFO) order.
                let mut jobs: Vec<TriggerJob> = started
                    .into_iter()
                    .filter_map(|started| {
                        let Started {
                            id,
                            event_id,
                            item,
                            repository,
                            number,
                            attempts,
                        } = started;
                        let (payload, headers, resign, at) = match by_event.get(&event_id) {
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
                            accepted_at: at,
                            payload,
                            headers,
                            resign,
                        })
                    })
                    .collect();
                jobs.sort_by_key(|j| ids.iter().position(|i| *i == j.dispatch.0));
                Ok(jobs)
            }
        );
        if let (Some(pass), Ok(jobs)) = (self.pass.as_mut(), &result)
            && !jobs.is_empty()
        {
            pass.needs_flush();
        }
        self.settle(sent, result).await
    }

    async fn record_outcomes(
        &mut self,
        outcomes: &[DispatchOutcome],
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.ensure_held()?;
        let started = Instant::now();
        let in_pass = self.pass.is_some();
        let result = in_transaction!(
            in_pass,
            &mut self.conn,
            async |conn: &mut AsyncPgConnection| {
                let mut touched = Vec::with_capacity(outcomes.len());
                for segment in answers::segments(outcomes) {
                    let shared: &AsyncPgConnection = conn;
                    let (triggered, confirmed) = try_join(
                        answers::record_triggered(shared, &segment.triggered, now),
                        answers::record_confirmed(shared, &segment.confirmed, now),
                    )
                    .await?;
                    touched.extend(triggered);
                    touched.extend(confirmed);
                    touched.extend(record_one_by_one(conn, &segment.rest, now).await?);
                }
                touched.sort_unstable();
                touched.dedup();
                if !in_pass {
                    status::refresh(conn, &touched, now).await?;
                }
                Ok(touched)
            }
        );
        let result = result.map(|touched| {
            if let Some(pass) = self.pass.as_mut() {
                pass.touch(&touched, now);
                pass.needs_flush();
            }
        });
        self.settle(started, result).await
    }

    async fn paused_pools(&mut self) -> Result<BTreeSet<PoolKey>, StoreError> {
        self.ensure_held()?;
        let started = Instant::now();
        let result = load_paused(&self.conn).await;
        self.settle(started, result).await
    }

    async fn pass_reads(
        &mut self,
        reservation_cutoff: OffsetDateTime,
        open: Option<OpenExtras>,
        unplanned_limit: usize,
    ) -> Result<PassReads, StoreError> {
        self.ensure_held()?;
        let started = Instant::now();
        let conn = &self.conn;
        // Sent together, one round trip: none depends on another.
        let result = try_join3(
            async {
                match open {
                    Some(extras) => open_set::load_open(conn, reservation_cutoff, extras).await,
                    None => Ok(Vec::new()),
                }
            },
            load_unplanned(conn, unplanned_limit),
            load_paused(conn),
        )
        .await;
        let (open, unplanned, paused) = self.settle(started, result).await?;
        Ok(PassReads {
            open,
            unplanned,
            paused,
        })
    }

    async fn reconcile_labels(
        &mut self,
        now: OffsetDateTime,
        scope: LabelScope<'_>,
    ) -> Result<u64, StoreError> {
        self.ensure_held()?;
        if !self.labels_enabled {
            return Ok(0);
        }
        let started = Instant::now();
        let result = crate::labels::reconcile(&mut self.conn, now, scope).await;
        if let (Some(pass), Ok(1..)) = (self.pass.as_mut(), &result) {
            pass.needs_flush();
        }
        self.settle(started, result).await
    }

    async fn reconcile_queue_status(
        &mut self,
        wanted: &[dispatcher_core::queue_status::WantedStatus],
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        self.ensure_held()?;
        let started = Instant::now();
        let in_pass = self.pass.is_some();
        let result = in_transaction!(
            in_pass,
            &mut self.conn,
            async |conn: &mut AsyncPgConnection| {
                crate::queue_status::reconcile(conn, wanted, now).await
            }
        );
        if let (Some(pass), Ok(1..)) = (self.pass.as_mut(), &result) {
            pass.needs_flush();
        }
        self.settle(started, result).await
    }

    async fn cancel_candidates(
        &mut self,
        query: &CancelQuery,
    ) -> Result<Vec<CancelCandidate>, StoreError> {
        self.ensure_held()?;
        let started = Instant::now();
        let result = cancels::load_candidates(&mut self.conn, query).await;
        self.settle(started, result).await
    }
}

/// Records the outcomes `answers` does not, one statement each (for
/// distinct dispatches), with their timeline facts. Returns the events whose
/// status may have changed.
async fn record_one_by_one(
    conn: &mut AsyncPgConnection,
    outcomes: &[&DispatchOutcome],
    now: OffsetDateTime,
) -> QueryResult<Vec<i64>> {
    let mut touched = Vec::with_capacity(outcomes.len());
    let mut notes = Vec::with_capacity(outcomes.len());
    let mut superseded = Vec::new();
    for outcome in outcomes {
        let target = dispatches::table.filter(dispatches::id.eq(outcome.id().0));
        // Each write is guarded by the state (and attempt) it expects, so a
        // stale outcome from before a leadership change cannot undo newer work.
        let changed: Option<i64> = match outcome {
            // Recorded by `answers`; the caller never passes them here.
            DispatchOutcome::Triggered { .. } | DispatchOutcome::Confirmed { .. } => None,
            DispatchOutcome::Retry {
                attempt,
                next_attempt_at,
                error,
                ..
            } => Prepared(
                diesel::update(
                    target
                        .filter(dispatches::state.eq(DbDispatchState(DispatchState::Triggering)))
                        .filter(dispatches::attempts.eq(attempt_i32(*attempt))),
                )
                .set((
                    dispatches::state.eq(DbDispatchState(DispatchState::Queued)),
                    dispatches::next_attempt_at.eq(next_attempt_at),
                    dispatches::last_error.eq(error::storable(error)),
                ))
                .returning(dispatches::event_id),
            )
            .get_result(conn)
            .await
            .optional()?,
            DispatchOutcome::Failed { attempt, error, .. } => diesel::update(
                target
                    .filter(dispatches::state.eq_any([
                        DbDispatchState(DispatchState::Triggering),
                        DbDispatchState(DispatchState::Queued),
                    ]))
                    .filter(dispatches::attempts.eq(attempt_i32(*attempt))),
            )
            .set((
                dispatches::state.eq(DbDispatchState(DispatchState::Failed)),
                dispatches::last_error.eq(error::storable(error)),
                dispatches::finished_at.eq(now),
            ))
            .returning(dispatches::event_id)
            .get_result(conn)
            .await
            .optional()?,
            DispatchOutcome::Unanswered { attempt, error, .. } => {
                let changed: Option<i64> = diesel::update(
                    target
                        .filter(dispatches::state.eq(DbDispatchState(DispatchState::Triggering)))
                        .filter(dispatches::attempts.eq(attempt_i32(*attempt))),
                )
                .set(dispatches::last_error.eq(error::storable(error)))
                .returning(dispatches::event_id)
                .get_result(conn)
                .await
                .optional()?;
                // The event's status does not change: only the timeline.
                if let Some(event_id) = changed {
                    notes.push(outcome_note(outcome, event_id));
                }
                None
            }
            DispatchOutcome::Moved {
                pool, queued_label, ..
            } => diesel::update(
                target.filter(dispatches::state.eq(DbDispatchState(DispatchState::Queued))),
            )
            .set((
                dispatches::pool.eq(&pool.0),
                dispatches::queued_label.eq(queued_label),
            ))
            .returning(dispatches::event_id)
            .get_result(conn)
            .await
            .optional()?,
            DispatchOutcome::Superseded { .. } => diesel::update(
                target.filter(dispatches::state.eq(DbDispatchState(DispatchState::Queued))),
            )
            .set((
                dispatches::state.eq(DbDispatchState(DispatchState::Cancelled)),
                dispatches::finished_at.eq(now),
            ))
            .returning(dispatches::event_id)
            .get_result(conn)
            .await
            .optional()?,
            DispatchOutcome::CancelRun {
                reason,
                by_event,
                target,
                ..
            } => {
                // Writes its own timeline entry (naming the event).
                let changed =
                    cancels::apply(conn, outcome.id(), *reason, *by_event, target, now).await?;
                touched.extend(changed);
                None
            }
        };
        if let Some(event_id) = changed {
            if matches!(outcome, DispatchOutcome::Superseded { .. }) {
                superseded.push(outcome.id().0);
            } else {
                notes.push(outcome_note(outcome, event_id));
            }
        }
        touched.extend(changed);
    }
    try_join(
        timeline::append(conn, now, &notes),
        timeline::note_superseded(conn, &superseded, now),
    )
    .await?;
    Ok(touched)
}

/// A dispatch `queued` → `triggering` ([`start_triggers`]).
#[derive(QueryableByName)]
struct Started {
    #[diesel(sql_type = Int8)]
    id: i64,
    #[diesel(sql_type = Int8)]
    event_id: i64,
    #[diesel(sql_type = Text)]
    item: String,
    #[diesel(sql_type = Text)]
    repository: String,
    #[diesel(sql_type = Int8)]
    number: i64,
    #[diesel(sql_type = Int4)]
    attempts: i32,
}

/// Moves the queued ones of `ids` to `triggering` (one more attempt) and
/// writes a `trigger_sent` fact for each, in one statement.
async fn start_triggers(
    mut conn: &AsyncPgConnection,
    ids: &[i64],
    now: OffsetDateTime,
) -> Result<Vec<Started>, DieselError> {
    Prepared(
        diesel::sql_query(
            "WITH started AS (
                UPDATE dispatches d
                   SET state = $2, attempts = d.attempts + 1, trigger_started_at = $4
                 WHERE d.id = ANY($1) AND d.state = $3
                RETURNING d.id, d.event_id, d.item_name AS item,
                          d.repository_full_name AS repository,
                          d.pull_request_number AS number, d.attempts
             ), noted AS (
                INSERT INTO event_timeline (event_id, dispatch_id, at, kind, detail)
                SELECT event_id, id, $4, $5, jsonb_build_object($6::text, attempts)
                  FROM started ORDER BY id
             )
             SELECT * FROM started",
        )
        .bind::<Array<Int8>, _>(ids)
        .bind::<sql_types::DispatchState, _>(DbDispatchState(DispatchState::Triggering))
        .bind::<sql_types::DispatchState, _>(DbDispatchState(DispatchState::Queued))
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(TimelineKind::TriggerSent.as_str())
        .bind::<Text, _>(fact::ATTEMPT),
    )
    .load(&mut conn)
    .await
}

/// The oldest `limit` unplanned events.
async fn load_unplanned(
    mut conn: &AsyncPgConnection,
    limit: usize,
) -> Result<Vec<UnplannedEvent>, DieselError> {
    let rows: Vec<UnplannedRow> = webhook_events::table
        .filter(webhook_events::planned_at.is_null())
        .order(webhook_events::id)
        .limit(i64::try_from(limit).unwrap_or(i64::MAX))
        .select((
            webhook_events::id,
            webhook_events::action,
            webhook_events::repository_full_name,
            webhook_events::pull_request_number,
            webhook_events::headers,
            webhook_events::labels,
        ))
        .load(&mut conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, action, repository, number, headers, labels)| UnplannedEvent {
                id: EventId(id),
                action,
                pr: PullRequestRef { repository, number },
                headers: headers_from_json(&headers),
                labels,
            },
        )
        .collect())
}

/// The pools an operator paused.
async fn load_paused(mut conn: &AsyncPgConnection) -> Result<BTreeSet<PoolKey>, DieselError> {
    let pools: Vec<String> = pool_controls::table
        .filter(pool_controls::paused)
        .select(pool_controls::pool)
        .load(&mut conn)
        .await?;
    Ok(pools.into_iter().map(PoolKey).collect())
}

/// Inserts `new` (skipping any already made for its event, item and round)
/// and returns the rows made, in order. One constant statement over arrays
/// whatever the number of rows, so it stays prepared (see
/// [`timeline::append`]).
async fn insert_dispatches(
    mut conn: &AsyncPgConnection,
    new: &[NewDispatch],
    now: OffsetDateTime,
) -> Result<Vec<OpenRow>, DieselError> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let column = |f: fn(&NewDispatch) -> &str| -> Vec<&str> { new.iter().map(f).collect() };
    let event_ids: Vec<i64> = new.iter().map(|d| d.event_id.0).collect();
    let numbers: Vec<i64> = new.iter().map(|d| d.pr.number).collect();
    let positions: Vec<i64> = new.iter().map(|d| d.queue_position).collect();
    let states: Vec<DbDispatchState> = new.iter().map(|d| DbDispatchState(d.state)).collect();
    Prepared(
        diesel::sql_query(
            "INSERT INTO dispatches (event_id, item_name, pool, queued_label, repository_full_name,
                                     pull_request_number, state, queue_position, next_attempt_at,
                                     created_at, finished_at)
             SELECT t.event_id, t.item_name, t.pool, t.queued_label, t.repository_full_name,
                    t.pull_request_number, t.state, t.queue_position, $9, $9,
                    CASE WHEN t.state = $10 THEN $9 END
               FROM unnest($1, $2, $3, $4, $5, $6, $7, $8) WITH ORDINALITY
                    AS t(event_id, item_name, pool, queued_label, repository_full_name,
                         pull_request_number, state, queue_position, n)
              ORDER BY t.n
             ON CONFLICT (event_id, item_name, round) DO NOTHING
             RETURNING id, event_id, item_name, pool, repository_full_name, pull_request_number,
                       state, queue_position, attempts, next_attempt_at, listener_event_id,
                       trigger_started_at, triggered_at",
        )
        .bind::<Array<Int8>, _>(&event_ids)
        .bind::<Array<Text>, _>(column(|d| &d.item))
        .bind::<Array<Text>, _>(column(|d| &d.pool.0))
        .bind::<Array<Text>, _>(column(|d| &d.queued_label))
        .bind::<Array<Text>, _>(column(|d| &d.pr.repository))
        .bind::<Array<Int8>, _>(&numbers)
        .bind::<Array<sql_types::DispatchState>, _>(&states)
        .bind::<Array<Int8>, _>(&positions)
        .bind::<Timestamptz, _>(now)
        .bind::<sql_types::DispatchState, _>(DbDispatchState(DispatchState::Cancelled)),
    )
    .load(&mut conn)
    .await
}

/// Cancels new queued dispatches for which a newer event of the same PR and
/// item already has a dispatch in any state: a delivery whose insert
/// committed after a newer one was planned (even triggered and finished)
/// must never run. Returns their ids.
async fn cancel_stale(
    mut conn: &AsyncPgConnection,
    created: &[OpenRow],
    now: OffsetDateTime,
) -> Result<Vec<i64>, DieselError> {
    let queued: Vec<i64> = created
        .iter()
        .filter(|d| d.state.0 == DispatchState::Queued)
        .map(|d| d.id)
        .collect();
    if queued.is_empty() {
        return Ok(Vec::new());
    }
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = Int8)]
        id: i64,
    }
    let stale: Vec<Id> = Prepared(
        diesel::sql_query(
            "UPDATE dispatches d SET state = $2, finished_at = $3
          WHERE d.id = ANY($1) AND d.state = $4
            AND EXISTS (SELECT 1 FROM dispatches n
                         WHERE n.repository_full_name = d.repository_full_name
                           AND n.pull_request_number = d.pull_request_number
                           AND n.item_name = d.item_name
                           AND n.event_id > d.event_id)
          RETURNING d.id",
        )
        .bind::<Array<Int8>, _>(&queued)
        .bind::<sql_types::DispatchState, _>(DbDispatchState(DispatchState::Cancelled))
        .bind::<Timestamptz, _>(now)
        .bind::<sql_types::DispatchState, _>(DbDispatchState(DispatchState::Queued)),
    )
    .load(&mut conn)
    .await?;
    if !stale.is_empty() {
        // Debug only: the engine's journal logs each of these as cancelled.
        tracing::debug!(
            dispatches = stale.len(),
            "cancelled deliveries that arrived after a newer event of their pull request"
        );
    }
    Ok(stale.into_iter().map(|r| r.id).collect())
}

/// The timeline fact of a recorded outcome (`Superseded` is written by
/// [`timeline::note_superseded`], which names the newer event).
fn outcome_note(outcome: &DispatchOutcome, event_id: i64) -> Note {
    let (kind, detail) = outcome_fact(outcome);
    Note::dispatch(event_id, outcome.id().0, kind, detail)
}

/// What the timeline says of `outcome`.
fn outcome_fact(outcome: &DispatchOutcome) -> (TimelineKind, serde_json::Value) {
    match outcome {
        DispatchOutcome::Triggered {
            attempt,
            listener_event_id,
            ..
        } => (
            TimelineKind::Accepted,
            serde_json::json!({ fact::ATTEMPT: attempt, fact::LISTENER_EVENT_ID: listener_event_id }),
        ),
        DispatchOutcome::Retry {
            attempt,
            next_attempt_at,
            error,
            ..
        } => (
            TimelineKind::Retry,
            serde_json::json!({
                fact::ATTEMPT: attempt,
                fact::ERROR: error::storable(error),
                fact::NEXT_ATTEMPT_AT: rfc3339::format(*next_attempt_at),
            }),
        ),
        DispatchOutcome::Failed { attempt, error, .. } => (
            TimelineKind::Failed,
            serde_json::json!({ fact::ATTEMPT: attempt, fact::ERROR: error::storable(error) }),
        ),
        DispatchOutcome::Unanswered { attempt, error, .. } => (
            TimelineKind::Unanswered,
            serde_json::json!({ fact::ATTEMPT: attempt, fact::ERROR: error::storable(error) }),
        ),
        DispatchOutcome::Confirmed {
            listener_event_id,
            run,
            ..
        } => (
            TimelineKind::Confirmed,
            serde_json::json!({ fact::RUN: run, fact::LISTENER_EVENT_ID: listener_event_id }),
        ),
        DispatchOutcome::Moved { pool, .. } => (
            TimelineKind::Moved,
            serde_json::json!({ fact::POOL: pool.0 }),
        ),
        DispatchOutcome::Superseded { .. } => (TimelineKind::Superseded, serde_json::json!({})),
        DispatchOutcome::CancelRun { reason, .. } => (
            TimelineKind::RunCancelRequested,
            serde_json::json!({ fact::REASON: reason.as_str() }),
        ),
    }
}

fn attempt_i32(attempt: u32) -> i32 {
    i32::try_from(attempt).unwrap_or(i32::MAX)
}
