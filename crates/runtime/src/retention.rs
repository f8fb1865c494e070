//! The retention worker: while this replica leads, deletes old finished
//! events (and drops payloads earlier) every `retention.interval`, the first
//! time shortly after the term starts. What a pass does is
//! `dispatcher_core::retention::run_pass`; each batch is its own short
//! transaction, so ending the term (which aborts this task) loses nothing.

use std::sync::Arc;
use std::time::Instant;

use dispatcher_core::ports::RetentionStore;
use dispatcher_core::retention::{RetentionPolicy, run_pass};
use dispatcher_metrics::Metrics;
use time::OffsetDateTime;

pub(crate) async fn retention_worker<S: RetentionStore>(
    store: S,
    policy: RetentionPolicy,
    metrics: Arc<Metrics>,
) {
    tokio::time::sleep(policy.first_run_delay()).await;
    loop {
        let started = Instant::now();
        match run_pass(&store, &policy).await {
            Ok(report) => {
                metrics.retention(report.deleted_events, report.dropped_payloads);
                metrics.retention_completed(OffsetDateTime::now_utc().unix_timestamp());
                let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                if report.is_empty() {
                    tracing::debug!(took_ms, "retention: nothing to delete");
                } else {
                    tracing::info!(
                        deleted_events = report.deleted_events,
                        deleted_label_rows = report.deleted_label_rows,
                        dropped_payloads = report.dropped_payloads,
                        batches = report.batches,
                        took_ms,
                        "retention: old finished events pruned"
                    );
                }
            }
            Err(failed) => {
                metrics.retention(failed.done.deleted_events, failed.done.dropped_payloads);
                tracing::warn!(
                    error = %failed.error,
                    deleted_events = failed.done.deleted_events,
                    dropped_payloads = failed.done.dropped_payloads,
                    "retention pass failed; retrying at the next interval"
                );
            }
        }
        tokio::time::sleep(policy.interval).await;
    }
}
