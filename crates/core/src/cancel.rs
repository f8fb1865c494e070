//! The run-cancel pass: what the cancel worker of the active replica does
//! with pending run cancellations (`cancel_superseded`, `cancel_on_close`).
//!
//! The engine decides a cancellation and stores it in the transaction of
//! that decision (see [`crate::planner::plan_run_cancels`]); this pass then
//! patches the runs, beside the engine: a failing cancel (403, 404, a
//! conflict, the API down) is retried with backoff and never holds up
//! dispatching. The slot of a cancelled run frees only when Kubernetes shows
//! the run finished: the pass changes no dispatch state.

use std::time::Duration;

use crate::backoff::retry_delay;
use crate::config::PoolKey;
use crate::domain::DispatchState;
use crate::planner::CancelReason;
use crate::ports::{
    CancelRunOutcome, RunCancelResult, RunCancelStore, RunCancelTask, RunCanceller, StoreError,
};

/// Cancellations handled per store round trip.
pub const CANCEL_BATCH: usize = 50;
/// Attempts before a cancellation is given up.
pub const MAX_CANCEL_ATTEMPTS: u32 = 12;
/// First retry delay.
pub const CANCEL_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Largest retry delay.
pub const CANCEL_BACKOFF_MAX: Duration = Duration::from_secs(120);

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CancelPassReport {
    /// Cancellations finished (runs patched, or nothing left running).
    pub done: usize,
    /// Runs patched.
    pub runs_cancelled: usize,
    /// Attempts that failed and will be retried.
    pub retried: usize,
    /// Cancellations given up.
    pub given_up: usize,
    /// Runs patched per (pool, reason).
    pub cancelled: Vec<(PoolKey, CancelReason, usize)>,
    /// Failed attempts per pool (retried or given up; waiting for the run of
    /// a trigger in flight to appear is not one).
    pub failures: Vec<PoolKey>,
}

impl CancelPassReport {
    /// Whether the batch was full (there may be more due now).
    pub fn handled(&self) -> usize {
        self.done + self.retried + self.given_up
    }
}

/// Whether a run may still appear for the task's dispatch.
fn run_may_appear(task: &RunCancelTask) -> bool {
    matches!(
        task.state,
        DispatchState::Triggering | DispatchState::Triggered
    )
}

/// What the result of one attempt means (pure).
pub fn cancel_result(
    task: &RunCancelTask,
    outcome: Result<CancelRunOutcome, String>,
) -> RunCancelResult {
    let attempt = task.attempts + 1;
    let error = match outcome {
        Ok(CancelRunOutcome::Cancelled(runs)) => return RunCancelResult::Done { runs },
        Ok(CancelRunOutcome::NothingRunning) => return RunCancelResult::Done { runs: Vec::new() },
        // A run that was seen and is gone now (deleted) has nothing to cancel.
        Ok(CancelRunOutcome::NotFound) if !run_may_appear(task) => {
            return RunCancelResult::Done { runs: Vec::new() };
        }
        Ok(CancelRunOutcome::NotFound) => "its PipelineRun is not visible yet".to_owned(),
        Err(e) => e,
    };
    if attempt >= MAX_CANCEL_ATTEMPTS {
        return RunCancelResult::GaveUp { error };
    }
    let seed = u64::try_from(task.dispatch.0).unwrap_or_default();
    RunCancelResult::Retry {
        error,
        retry_in: retry_delay(CANCEL_BACKOFF_BASE, CANCEL_BACKOFF_MAX, attempt, seed),
    }
}

/// Handles the due cancellations once.
pub async fn run_cancel_pass<S, C>(
    store: &mut S,
    canceller: &C,
) -> Result<CancelPassReport, StoreError>
where
    S: RunCancelStore,
    C: RunCanceller,
{
    let mut report = CancelPassReport::default();
    for task in store.due_run_cancels(CANCEL_BATCH).await? {
        // A dispatch that never had a run (its trigger was retried and then
        // cancelled or failed) has nothing to cancel.
        // Waiting for the run of a trigger in flight to appear is no failure.
        let mut waiting = false;
        let result = if !task.run_seen && !run_may_appear(&task) {
            RunCancelResult::Done { runs: Vec::new() }
        } else {
            let outcome = canceller
                .cancel_run(
                    &task.target,
                    task.dispatch,
                    task.listener_event_id.as_deref(),
                )
                .await;
            waiting = outcome == Ok(CancelRunOutcome::NotFound);
            cancel_result(&task, outcome)
        };
        match &result {
            RunCancelResult::Done { runs } => {
                report.done += 1;
                report.runs_cancelled += runs.len();
                if !runs.is_empty() {
                    report
                        .cancelled
                        .push((task.pool.clone(), task.reason, runs.len()));
                }
                if runs.is_empty() {
                    tracing::info!(dispatch = %task.dispatch, event = %task.event_id, "run cancellation done: nothing left running");
                } else {
                    tracing::info!(dispatch = %task.dispatch, event = %task.event_id, runs = %runs.join(","), "PipelineRun cancelled");
                }
            }
            RunCancelResult::Retry { error, retry_in } => {
                report.retried += 1;
                if !waiting {
                    report.failures.push(task.pool.clone());
                }
                tracing::warn!(
                    dispatch = %task.dispatch, event = %task.event_id, attempt = task.attempts + 1,
                    error = %error, retry_in_ms = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX),
                    "cancelling the PipelineRun failed; retrying"
                );
            }
            RunCancelResult::GaveUp { error } => {
                report.given_up += 1;
                report.failures.push(task.pool.clone());
                tracing::error!(
                    dispatch = %task.dispatch, event = %task.event_id, attempt = task.attempts + 1,
                    error = %error, "gave up cancelling the PipelineRun"
                );
            }
        }
        store.finish_run_cancel(&task, &result).await?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TektonApiVersion;
    use crate::domain::{DispatchId, EventId};
    use crate::ports::RunTarget;

    fn task(state: DispatchState, attempts: u32) -> RunCancelTask {
        RunCancelTask {
            dispatch: DispatchId(7),
            event_id: EventId(3),
            pool: crate::config::PoolKey("ns/p".to_owned()),
            reason: CancelReason::Superseded,
            target: RunTarget {
                namespace: "ns".to_owned(),
                api_version: TektonApiVersion::V1,
                dispatch_label: None,
            },
            state,
            run_seen: true,
            listener_event_id: Some("ev".to_owned()),
            attempts,
        }
    }

    #[test]
    fn results_map_to_done_retry_or_give_up() {
        let t = task(DispatchState::Cancelled, 0);
        assert_eq!(
            cancel_result(&t, Ok(CancelRunOutcome::Cancelled(vec!["r".to_owned()]))),
            RunCancelResult::Done {
                runs: vec!["r".to_owned()]
            }
        );
        assert_eq!(
            cancel_result(&t, Ok(CancelRunOutcome::NotFound)),
            RunCancelResult::Done { runs: Vec::new() }
        );
        // In flight: the run may still appear.
        let flying = task(DispatchState::Triggered, 0);
        assert!(matches!(
            cancel_result(&flying, Ok(CancelRunOutcome::NotFound)),
            RunCancelResult::Retry { .. }
        ));
        assert!(matches!(
            cancel_result(&t, Err("HTTP 403".to_owned())),
            RunCancelResult::Retry { .. }
        ));
        let last = task(DispatchState::Cancelled, MAX_CANCEL_ATTEMPTS - 1);
        assert_eq!(
            cancel_result(&last, Err("HTTP 409".to_owned())),
            RunCancelResult::GaveUp {
                error: "HTTP 409".to_owned()
            }
        );
    }

    struct Store {
        due: Vec<RunCancelTask>,
        finished: Vec<(DispatchId, RunCancelResult)>,
    }

    impl RunCancelStore for Store {
        async fn due_run_cancels(&mut self, _: usize) -> Result<Vec<RunCancelTask>, StoreError> {
            Ok(std::mem::take(&mut self.due))
        }
        async fn finish_run_cancel(
            &mut self,
            task: &RunCancelTask,
            result: &RunCancelResult,
        ) -> Result<(), StoreError> {
            self.finished.push((task.dispatch, result.clone()));
            Ok(())
        }
        async fn next_run_cancel(&mut self) -> Result<Option<Duration>, StoreError> {
            Ok(None)
        }
    }

    /// Answers by dispatch id: 1 cancelled, 2 not found, 3 forbidden.
    struct Canceller(std::sync::Mutex<Vec<DispatchId>>);

    impl RunCanceller for Canceller {
        async fn cancel_run(
            &self,
            _: &RunTarget,
            dispatch: DispatchId,
            _: Option<&str>,
        ) -> Result<CancelRunOutcome, String> {
            if let Ok(mut calls) = self.0.lock() {
                calls.push(dispatch);
            }
            match dispatch.0 {
                1 => Ok(CancelRunOutcome::Cancelled(vec!["run-1".to_owned()])),
                2 => Ok(CancelRunOutcome::NotFound),
                _ => Err("HTTP 403".to_owned()),
            }
        }
    }

    #[test]
    fn a_pass_patches_counts_and_skips_dispatches_that_never_had_a_run() {
        let with = |id: i64, state: DispatchState, run_seen: bool| RunCancelTask {
            dispatch: DispatchId(id),
            run_seen,
            ..task(state, 0)
        };
        let mut store = Store {
            due: vec![
                with(1, DispatchState::Cancelled, true),
                with(2, DispatchState::Triggered, false),
                with(3, DispatchState::Cancelled, true),
                // Retried, then cancelled while queued: never had a run.
                with(4, DispatchState::Cancelled, false),
            ],
            finished: Vec::new(),
        };
        let canceller = Canceller(std::sync::Mutex::new(Vec::new()));
        let report = futures_executor::block_on(run_cancel_pass(&mut store, &canceller))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            canceller.0.lock().map(|c| c.clone()).unwrap_or_default(),
            [DispatchId(1), DispatchId(2), DispatchId(3)]
        );
        assert_eq!(
            (report.done, report.retried, report.runs_cancelled),
            (2, 2, 1)
        );
        assert_eq!(
            report.cancelled,
            [(
                crate::config::PoolKey("ns/p".to_owned()),
                CancelReason::Superseded,
                1
            )]
        );
        // Waiting for an in-flight trigger's run is not a failure; a 403 is.
        assert_eq!(report.failures, [crate::config::PoolKey("ns/p".to_owned())]);
        assert_eq!(store.finished.len(), 4);
    }

    #[test]
    fn retries_back_off() {
        let delay = |attempts| match cancel_result(
            &task(DispatchState::Cancelled, attempts),
            Err("x".to_owned()),
        ) {
            RunCancelResult::Retry { retry_in, .. } => retry_in,
            other => panic!("{other:?}"),
        };
        assert!(delay(0) <= CANCEL_BACKOFF_BASE);
        assert!(delay(5) > delay(0));
        assert!(delay(10) <= CANCEL_BACKOFF_MAX);
    }
}
