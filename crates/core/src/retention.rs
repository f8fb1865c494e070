//! Retention: deleting finished events some time after they finished, and
//! dropping their payloads earlier (`retention:` in the configuration).
//!
//! The decisions live here: which settings are valid, what one pass does
//! (delete finished events older than `max_age`, then drop the payloads of
//! finished events older than `payload_max_age`, each in batches of
//! `batch_size`, until a batch comes back short) and what it reports. The
//! store ([`RetentionStore`]) runs each batch as one short transaction on
//! the database's clock; the runtime runs a pass every `interval` on the
//! active replica.
//!
//! "Finished" is decided by the store with this rule: the event's status is
//! `processed`, `cancelled`, `aborted` or `failed`, no dispatch of it is
//! open (`queued`, `triggering`, or `triggered` and not yet confirmed: a
//! reservation), and its current round finished (`processed_at`) before the
//! cutoff. Nothing open is ever deleted, however old.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use time::OffsetDateTime;

use crate::config::{ConfigError, RetentionSection};
use crate::domain::EventStatus;
use crate::ports::{RetentionStore, StoreError};

/// Statuses of an event whose current round is over (with no dispatch
/// open, see the module documentation, it is finished).
pub const FINISHED_STATUSES: [EventStatus; 4] = [
    EventStatus::Processed,
    EventStatus::Cancelled,
    EventStatus::Aborted,
    EventStatus::Failed,
];

/// Shortest `retention.interval`.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);
/// Largest `retention.batch_size`.
pub const MAX_BATCH_SIZE: u32 = 100_000;

/// The validated `retention:` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Finished events older than this are deleted.
    pub max_age: Duration,
    /// Payloads of finished events older than this are dropped (shorter than `max_age`).
    pub payload_max_age: Option<Duration>,
    /// Time between passes on the active replica.
    pub interval: Duration,
    /// Rows per transaction.
    pub batch_size: u32,
}

impl RetentionPolicy {
    /// The wait before the first pass of a leadership term: shortly after
    /// becoming active, never later than one interval.
    pub fn first_run_delay(&self) -> Duration {
        self.interval.min(Duration::from_secs(10))
    }
}

pub(crate) fn validate(raw: &RetentionSection, errors: &mut Vec<ConfigError>) -> RetentionPolicy {
    if raw.max_age.is_zero() {
        errors.push(ConfigError::new("retention.max_age", "must be positive"));
    }
    if let Some(payload) = raw.payload_max_age {
        if payload.is_zero() {
            errors.push(ConfigError::new(
                "retention.payload_max_age",
                "must be positive",
            ));
        } else if payload >= raw.max_age {
            errors.push(ConfigError::new(
                "retention.payload_max_age",
                format!(
                    "must be shorter than retention.max_age ({}): payloads go with their events at max_age anyway",
                    humantime_serde::re::humantime::format_duration(raw.max_age)
                ),
            ));
        }
    }
    if raw.interval < MIN_INTERVAL {
        errors.push(ConfigError::new(
            "retention.interval",
            "must be at least 1m",
        ));
    }
    if raw.batch_size == 0 || raw.batch_size > MAX_BATCH_SIZE {
        errors.push(ConfigError::new(
            "retention.batch_size",
            format!(
                "must be between 1 and {MAX_BATCH_SIZE} (got {})",
                raw.batch_size
            ),
        ));
    }
    RetentionPolicy {
        max_age: raw.max_age,
        payload_max_age: raw.payload_max_age,
        interval: raw.interval,
        batch_size: raw.batch_size,
    }
}

/// What one batch of deletions removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeletedBatch {
    /// Events deleted (their dispatches and timelines went with them).
    pub events: u64,
    /// Settled `pr_labels` rows of pull requests left without events.
    pub label_rows: u64,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Events deleted.
    pub deleted_events: u64,
    /// Label rows deleted.
    pub deleted_label_rows: u64,
    /// Payloads dropped (rows kept).
    pub dropped_payloads: u64,
    /// Transactions run.
    pub batches: u32,
}

impl RetentionReport {
    /// Nothing was deleted or dropped.
    pub fn is_empty(&self) -> bool {
        self.deleted_events == 0 && self.deleted_label_rows == 0 && self.dropped_payloads == 0
    }
}

/// A pass that stopped at a store error, with what it did before.
#[derive(Debug, thiserror::Error)]
#[error("retention pass failed after {} events and {} payloads: {error}", done.deleted_events, done.dropped_payloads)]
pub struct PassFailed {
    /// What was committed before the error.
    pub done: RetentionReport,
    /// The error.
    #[source]
    pub error: StoreError,
}

/// What a pass would do now (`dispatcher prune --dry-run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPreview {
    /// The database's clock.
    pub now: OffsetDateTime,
    /// Finished events that finished before this go.
    pub event_cutoff: OffsetDateTime,
    /// Payloads of finished events that finished before this are dropped.
    pub payload_cutoff: Option<OffsetDateTime>,
    /// Events that would be deleted, per status.
    pub events_by_status: BTreeMap<EventStatus, u64>,
    /// When the oldest and newest of them finished.
    pub finished_between: Option<(OffsetDateTime, OffsetDateTime)>,
    /// Payloads that would be dropped (of events that stay).
    pub payloads: u64,
}

impl RetentionPreview {
    /// Events that would be deleted.
    pub fn events(&self) -> u64 {
        self.events_by_status.values().sum()
    }
}

/// A duration as the configuration spells it (`30days`, `1h`).
pub fn format_age(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}

/// A batch of `n` rows out of `batch_size`: a full one means more may wait.
pub fn batch_was_full(n: u64, batch_size: u32) -> bool {
    n >= u64::from(batch_size)
}

/// One pass: deletes finished events older than `max_age`, then drops the
/// payloads of finished events older than `payload_max_age`, one short
/// transaction per batch, yielding between batches, until a batch is short.
pub async fn run_pass<S: RetentionStore + ?Sized>(
    store: &S,
    policy: &RetentionPolicy,
) -> Result<RetentionReport, PassFailed> {
    let mut done = RetentionReport::default();
    loop {
        let batch = match store
            .delete_finished(policy.max_age, policy.batch_size)
            .await
        {
            Ok(batch) => batch,
            Err(error) => return Err(PassFailed { done, error }),
        };
        done.batches += 1;
        done.deleted_events += batch.events;
        done.deleted_label_rows += batch.label_rows;
        if !batch_was_full(batch.events, policy.batch_size) {
            break;
        }
        YieldNow(false).await;
    }
    if let Some(age) = policy.payload_max_age {
        loop {
            let n = match store.drop_payloads(age, policy.batch_size).await {
                Ok(n) => n,
                Err(error) => return Err(PassFailed { done, error }),
            };
            done.batches += 1;
            done.dropped_payloads += n;
            if !batch_was_full(n, policy.batch_size) {
                break;
            }
            YieldNow(false).await;
        }
    }
    Ok(done)
}

/// Gives other tasks on this thread a turn (runtime-agnostic).
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use super::*;

    fn section(max_age: u64, payload: Option<u64>, interval: u64, batch: u32) -> RetentionSection {
        RetentionSection {
            max_age: Duration::from_secs(max_age),
            payload_max_age: payload.map(Duration::from_secs),
            interval: Duration::from_secs(interval),
            batch_size: batch,
        }
    }

    #[test]
    fn valid_settings_pass_and_bad_ones_name_their_field() {
        let mut errors = Vec::new();
        let policy = validate(&section(86_400, Some(3600), 3600, 1000), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(policy.first_run_delay(), Duration::from_secs(10));
        for (raw, field) in [
            (
                section(3600, Some(3600), 3600, 10),
                "retention.payload_max_age",
            ),
            (
                section(3600, Some(7200), 3600, 10),
                "retention.payload_max_age",
            ),
            (
                section(3600, Some(0), 3600, 10),
                "retention.payload_max_age",
            ),
            (section(0, None, 3600, 10), "retention.max_age"),
            (section(3600, None, 59, 10), "retention.interval"),
            (section(3600, None, 60, 0), "retention.batch_size"),
            (section(3600, None, 60, 100_001), "retention.batch_size"),
        ] {
            let mut errors = Vec::new();
            validate(&raw, &mut errors);
            assert_eq!(errors.len(), 1, "{raw:?}: {errors:?}");
            assert_eq!(errors[0].field, field, "{raw:?}");
        }
    }

    /// Holds `events` deletable rows and `payloads` droppable payloads.
    struct Fake {
        events: Mutex<u64>,
        payloads: Mutex<u64>,
        calls: Mutex<Vec<&'static str>>,
    }

    impl RetentionStore for Fake {
        async fn delete_finished(
            &self,
            _: Duration,
            limit: u32,
        ) -> Result<DeletedBatch, StoreError> {
            self.calls.lock().unwrap().push("delete");
            let mut left = self.events.lock().unwrap();
            let n = (*left).min(u64::from(limit));
            *left -= n;
            Ok(DeletedBatch {
                events: n,
                label_rows: 0,
            })
        }

        async fn drop_payloads(&self, _: Duration, limit: u32) -> Result<u64, StoreError> {
            self.calls.lock().unwrap().push("drop");
            let mut left = self.payloads.lock().unwrap();
            let n = (*left).min(u64::from(limit));
            *left -= n;
            Ok(n)
        }

        async fn preview(&self, _: &RetentionPolicy) -> Result<RetentionPreview, StoreError> {
            unreachable!()
        }
    }

    #[test]
    fn a_pass_loops_until_a_batch_is_short_deleting_before_dropping() {
        let store = Fake {
            events: Mutex::new(5),
            payloads: Mutex::new(2),
            calls: Mutex::new(Vec::new()),
        };
        let policy = RetentionPolicy {
            max_age: Duration::from_secs(100),
            payload_max_age: Some(Duration::from_secs(10)),
            interval: MIN_INTERVAL,
            batch_size: 2,
        };
        let report = futures_executor::block_on(run_pass(&store, &policy)).unwrap();
        assert_eq!(report.deleted_events, 5);
        assert_eq!(report.dropped_payloads, 2);
        assert_eq!(report.batches, 5);
        assert_eq!(
            *store.calls.lock().unwrap(),
            ["delete", "delete", "delete", "drop", "drop"]
        );
        // Without payload_max_age no payload is touched.
        let store = Fake {
            events: Mutex::new(0),
            payloads: Mutex::new(2),
            calls: Mutex::new(Vec::new()),
        };
        let policy = RetentionPolicy {
            payload_max_age: None,
            ..policy
        };
        let report = futures_executor::block_on(run_pass(&store, &policy)).unwrap();
        assert!(report.is_empty());
        assert_eq!(*store.calls.lock().unwrap(), ["delete"]);
    }
}
