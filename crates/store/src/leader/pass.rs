//! One transaction per dispatch pass (`DispatchStore::begin_pass`): the
//! writes of a pass join it instead of committing one by one, and what every
//! step would have repeated (refreshing the events' statuses) is done once,
//! at the commit.
//!
//! The transaction is begun and ended with plain `BEGIN` / `COMMIT` /
//! `ROLLBACK`, not diesel's transaction manager: `BEGIN` can then go out
//! with the pass's clock reading and `COMMIT` with its last write
//! (pipelined on the one connection, executed in the order sent) instead of
//! taking a round trip each of their own. Inside a pass nothing uses diesel's
//! `transaction` (see [`in_transaction`]), so its manager never nests a
//! `BEGIN` into this one.

use diesel::QueryableByName;
use diesel::result::QueryResult;
use diesel::sql_types::Timestamptz;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::future::{try_join, try_join3};
use time::OffsetDateTime;

use crate::prepared::Prepared;
use crate::status;

/// What the open pass transaction still owes its commit.
#[derive(Debug, Default)]
pub(super) struct PassWrites {
    /// Events whose dispatches changed: their statuses are refreshed once,
    /// from the final states, right before the commit.
    touched: Vec<i64>,
    /// The pass's clock, for `processed_at`.
    now: Option<OffsetDateTime>,
    /// Whether the pass wrote more than intake (planned events, new queued
    /// dispatches). Only such a commit waits for its WAL flush: a trigger is
    /// sent, a label or status changed, an outcome recorded on the strength
    /// of it. Intake alone lost in a crash is planned again, identically.
    durable: bool,
}

impl PassWrites {
    /// Events to refresh at the commit, at `now`.
    pub(super) fn touch(&mut self, events: &[i64], now: OffsetDateTime) {
        self.touched.extend_from_slice(events);
        self.now = Some(now);
    }

    /// The commit must wait for its WAL flush.
    pub(super) fn needs_flush(&mut self) {
        self.durable = true;
    }

    pub(super) fn durable(&self) -> bool {
        self.durable
    }

    /// The events to refresh (sorted, once each) and the time to refresh them at.
    pub(super) fn take_touched(&mut self) -> Option<(Vec<i64>, OffsetDateTime)> {
        let now = self.now?;
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        (!touched.is_empty()).then_some((touched, now))
    }
}

/// Runs `$body`, an async closure over the connection, in a transaction of
/// its own, or inside the pass transaction when one is open (`$in_pass`):
/// diesel would nest a savepoint there, two more round trips for nothing.
macro_rules! in_transaction {
    ($in_pass:expr, $conn:expr, $body:expr) => {{
        let body = $body;
        if $in_pass {
            body($conn).await
        } else {
            $conn.transaction::<_, diesel::result::Error, _>(body).await
        }
    }};
}
pub(super) use in_transaction;

/// The database's clock (`clock_timestamp()`: it moves within a transaction).
pub(super) async fn read_clock(mut conn: &AsyncPgConnection) -> QueryResult<OffsetDateTime> {
    #[derive(QueryableByName)]
    struct Clock {
        #[diesel(sql_type = Timestamptz)]
        now: OffsetDateTime,
    }
    Prepared(diesel::sql_query("SELECT clock_timestamp() AS now"))
        .get_result::<Clock>(&mut conn)
        .await
        .map(|c| c.now)
}

/// `BEGIN` and the database clock, in one round trip.
pub(super) async fn begin(conn: &AsyncPgConnection) -> QueryResult<OffsetDateTime> {
    let ((), now) = try_join(
        async {
            let mut c = conn;
            c.batch_execute("BEGIN").await
        },
        read_clock(conn),
    )
    .await?;
    Ok(now)
}

/// Which statements of [`commit`] this connection has prepared.
#[derive(Debug, Default)]
pub(super) struct CommitStatements {
    refold: bool,
    relax: bool,
}

/// Refolds the touched events' statuses and commits, in one round trip
/// when it can (`COMMIT` after a failed statement ends the transaction as
/// a `ROLLBACK` without an error of its own: the failed write's error is
/// what the caller sees).
///
/// Statements sent together run in the order they are *sent*. diesel-async
/// 0.9 sends them in the order they are polled (its statement cache stays
/// locked while one is being prepared, so a prepared `COMMIT` waits behind
/// an unprepared refold), but that is an implementation detail, and a
/// `COMMIT` overtaking the refold would commit the pass without it. So the
/// statements go together only when every one before the `COMMIT` has been
/// prepared on this connection already (`prepared`, kept by the caller per
/// connection); otherwise one at a time. (A statement failing in the client,
/// before it is sent, would still let the `COMMIT` go: the refold binds only
/// integers, a timestamp and fixed text, which always encode.)
pub(super) async fn commit(
    conn: &AsyncPgConnection,
    writes: &mut PassWrites,
    prepared: &mut CommitStatements,
) -> QueryResult<()> {
    let touched = writes.take_touched();
    let refolds = touched.is_some();
    // (A pass that wrote nothing has no WAL to flush anyway.)
    let relaxes = refolds && !writes.durable();
    let refold = async {
        match &touched {
            Some((events, now)) => status::refresh(conn, events, *now).await,
            None => Ok(()),
        }
    };
    let relax = async {
        if relaxes {
            let mut c = conn;
            Prepared(diesel::sql_query("SET LOCAL synchronous_commit = off"))
                .execute(&mut c)
                .await?;
        }
        Ok(())
    };
    let commit = async {
        let mut c = conn;
        Prepared(diesel::sql_query("COMMIT"))
            .execute(&mut c)
            .await
            .map(drop)
    };
    if (!refolds || prepared.refold) && (!relaxes || prepared.relax) {
        try_join3(refold, relax, commit).await?;
    } else {
        refold.await?;
        relax.await?;
        commit.await?;
    }
    prepared.refold |= refolds;
    prepared.relax |= relaxes;
    Ok(())
}

/// Ends the pass transaction without its writes (a warning, not an error,
/// when a failed `COMMIT` already ended it).
pub(super) async fn rollback(conn: &AsyncPgConnection) -> QueryResult<()> {
    let mut c = conn;
    c.batch_execute("ROLLBACK").await
}
