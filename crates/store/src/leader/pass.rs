//! One transaction per dispatch pass (`DispatchStore::begin_pass`): the
//! writes of a pass join it instead of committing one by one, and what every
//! step would have repeated (refreshing the events' statuses) is done once,
//! at the commit.

use time::OffsetDateTime;

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
