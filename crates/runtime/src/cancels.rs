//! The cancel worker: while this replica leads, patches the PipelineRuns of
//! work cancelled by `cancel_superseded` or `cancel_on_close` (pending rows
//! the engine wrote with its decisions). It never blocks dispatching: a
//! failed cancel (403, 404, a conflict, the API down) is retried with
//! backoff by `dispatcher_core::cancel`, and the engine's passes go on
//! meanwhile.

use std::time::Duration;

use dispatcher_core::cancel::{CANCEL_BATCH, run_cancel_pass};
use dispatcher_core::ports::{RunCancelStore, RunCanceller};

/// Longest sleep between looks at the table: new cancellations are picked
/// up within this (the engine does not wake the worker).
const POLL: Duration = Duration::from_secs(1);
/// Pause after the store itself failed.
const STORE_ERROR_WAIT: Duration = Duration::from_secs(5);

pub(crate) async fn cancel_worker<S, C>(
    mut store: S,
    canceller: std::sync::Arc<C>,
    metrics: std::sync::Arc<dispatcher_metrics::Metrics>,
) where
    S: RunCancelStore,
    C: RunCanceller,
{
    loop {
        let wait = match run_cancel_pass(&mut store, &*canceller).await {
            Ok(report) if report.handled() >= CANCEL_BATCH => {
                count(&metrics, &report);
                Duration::ZERO
            }
            Ok(report) => {
                count(&metrics, &report);
                match store.next_run_cancel().await {
                    Ok(next) => next.map_or(POLL, |n| n.min(POLL)),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading pending run cancellations failed");
                        STORE_ERROR_WAIT
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "run cancel pass failed");
                STORE_ERROR_WAIT
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

fn count(
    metrics: &dispatcher_metrics::Metrics,
    report: &dispatcher_core::cancel::CancelPassReport,
) {
    for (pool, reason, runs) in &report.cancelled {
        metrics.runs_cancelled(
            &pool.0,
            reason.as_str(),
            u64::try_from(*runs).unwrap_or(u64::MAX),
        );
    }
    for pool in &report.failures {
        metrics.run_cancel_failed(&pool.0);
    }
}
