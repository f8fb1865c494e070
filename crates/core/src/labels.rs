//! Pull-request label feedback: pushes pending `<pipeline>/queued` label
//! changes to GitHub. Runs beside the dispatch engine and never blocks it: a
//! GitHub failure only schedules a retry of that one change.

use std::time::Duration;

use time::OffsetDateTime;

use crate::backoff::retry_delay;
use crate::ports::{Clock, LabelStore, PrNotifier, StoreError};

/// Label changes sent per pass (a full batch means more may be due).
pub const LABEL_BATCH: usize = 50;
const LABEL_RETRY_BASE: Duration = Duration::from_secs(2);
const LABEL_RETRY_MAX: Duration = Duration::from_secs(300);

/// What one label pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelReport {
    /// Changes applied on GitHub.
    pub applied: usize,
    /// Changes that failed and were rescheduled.
    pub failed: usize,
    /// When the earliest rescheduled change is due.
    pub next_retry: Option<OffsetDateTime>,
}

/// Sends due label changes. GitHub errors are logged and retried with backoff.
pub async fn run_label_pass<S, N, K>(
    store: &mut S,
    notifier: &N,
    clock: &K,
) -> Result<LabelReport, StoreError>
where
    S: LabelStore,
    N: PrNotifier,
    K: Clock,
{
    let mut report = LabelReport::default();
    let tasks = store.due_label_tasks(clock.now(), LABEL_BATCH).await?;
    for task in &tasks {
        let result = if task.wanted {
            notifier.add_label(&task.pr, &task.label).await
        } else {
            notifier.remove_label(&task.pr, &task.label).await
        };
        match result {
            Ok(()) => {
                report.applied += 1;
                tracing::info!(repo = %task.pr.repository, pr = task.pr.number, label = %task.label, added = task.wanted, "updated pull request label");
                store.finish_label_task(task, None, None).await?;
            }
            Err(e) => {
                report.failed += 1;
                let attempts = task.attempts + 1;
                let seed = u64::try_from(task.pr.number).unwrap_or_default();
                let retry_at =
                    clock.now() + retry_delay(LABEL_RETRY_BASE, LABEL_RETRY_MAX, attempts, seed);
                tracing::warn!(repo = %task.pr.repository, pr = task.pr.number, label = %task.label, added = task.wanted, attempts, error = %e, "GitHub label update failed; will retry");
                store
                    .finish_label_task(task, Some(e.to_string()), Some(retry_at))
                    .await?;
            }
        }
    }
    report.next_retry = store.next_label_retry().await?;
    Ok(report)
}
