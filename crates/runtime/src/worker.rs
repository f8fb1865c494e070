//! The pacing shared by the GitHub workers (labels, queue statuses): after
//! a pass, run the next one at once while passes fill their batch, otherwise
//! at the earliest due time the pass reported (or after [`IDLE_WAIT`]), or
//! as soon as the engine signals new work. A failing store is retried after
//! [`STORE_ERROR_WAIT`]. The loop ends only with its task (the leadership
//! term).

use std::time::Duration;

use dispatcher_core::ports::StoreError;
use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::status::until;

/// Sleep when nothing is scheduled (a wake-up comes with every new intent).
const IDLE_WAIT: Duration = Duration::from_secs(300);
/// Pause after the store itself failed.
const STORE_ERROR_WAIT: Duration = Duration::from_secs(5);

/// What one pass of a worker reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PassOutcome {
    /// The pass handled a whole batch: more may be due right now.
    pub(crate) full: bool,
    /// When the next piece of work is due (a retry, a coalescing window).
    pub(crate) next_due: Option<OffsetDateTime>,
}

/// Waits as the outcome of the last pass asks (see the module); `what`
/// names the worker in logs. Call it between passes.
pub(crate) async fn rest(
    what: &'static str,
    wake: &Notify,
    outcome: Result<PassOutcome, StoreError>,
) {
    let wait = match outcome {
        Ok(outcome) if outcome.full => Duration::ZERO,
        Ok(outcome) => outcome.next_due.map_or(IDLE_WAIT, until),
        Err(e) => {
            tracing::warn!(error = %e, worker = what, "worker pass failed");
            STORE_ERROR_WAIT
        }
    };
    if wait.is_zero() {
        return;
    }
    tokio::select! {
        () = wake.notified() => {}
        () = tokio::time::sleep(wait) => {}
    }
}
