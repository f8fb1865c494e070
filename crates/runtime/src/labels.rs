//! The label worker: pushes pending `<pipeline>/queued` label changes to
//! GitHub while this replica leads. It never blocks dispatching: failures are
//! rescheduled by the label pass, and a GitHub rate limit pauses the worker
//! until GitHub's reset time.

use std::sync::Arc;
use std::time::Duration;

use dispatcher_core::labels::{LABEL_BATCH, LabelPacer};
use dispatcher_core::ports::{LabelStore, PrNotifier, SystemClock};
use tokio::sync::Notify;

use crate::status::until;

/// Sleep when nothing is scheduled (a wake-up comes with every new intent).
const IDLE_WAIT: Duration = Duration::from_secs(300);
/// Pause after the label store itself failed.
const STORE_ERROR_WAIT: Duration = Duration::from_secs(5);

pub(crate) async fn label_worker<S, N>(mut store: S, notifier: N, wake: Arc<Notify>)
where
    S: LabelStore,
    N: PrNotifier,
{
    // The pacer keeps a GitHub rate limit's pause across wake-ups.
    let mut pacer = LabelPacer::new();
    loop {
        let wait = match pacer.run_pass(&mut store, &notifier, &SystemClock).await {
            Ok(report) if report.applied + report.failed >= LABEL_BATCH => Duration::ZERO,
            Ok(report) => report.next_retry.map_or(IDLE_WAIT, until),
            Err(e) => {
                tracing::warn!(error = %e, "label pass failed");
                STORE_ERROR_WAIT
            }
        };
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}
