//! The queue status worker (`github.queue_status: check_run |
//! commit_status`): pushes due check runs or commit statuses to GitHub while
//! this replica leads, coalesced by the store's due query, never blocking
//! dispatching (see `dispatcher_core::queue_status`).

use std::sync::Arc;
use std::time::Duration;

use dispatcher_core::ports::{
    NotifyError, QueueStatusStore, StatusNotifier, StatusTask, SystemClock,
};
use dispatcher_core::queue_status::{STATUS_BATCH, StatusPacer};
use dispatcher_metrics::{GithubResult, Metrics};
use tokio::sync::Notify;

use crate::worker::{PassOutcome, rest};

pub(crate) async fn status_worker<S, N>(
    mut store: S,
    notifier: N,
    wake: Arc<Notify>,
    interval: Duration,
) where
    S: QueueStatusStore,
    N: StatusNotifier,
{
    let mut pacer = StatusPacer::new(interval);
    loop {
        let outcome = pacer
            .run_pass(&mut store, &notifier, &SystemClock)
            .await
            .map(|report| PassOutcome {
                full: report.applied + report.failed >= STATUS_BATCH,
                next_due: report.next_due,
            });
        rest("queue statuses", &wake, outcome).await;
    }
}

/// A [`StatusNotifier`] that counts each GitHub request in
/// `webhook_dispatcher_github_requests_total{result}`.
pub(crate) struct Counted<N> {
    pub(crate) inner: N,
    pub(crate) metrics: Arc<Metrics>,
}

impl<N: StatusNotifier> StatusNotifier for Counted<N> {
    async fn publish_status(&self, task: &StatusTask) -> Result<Option<i64>, NotifyError> {
        let result = self.inner.publish_status(task).await;
        self.metrics.github_request(match &result {
            Ok(_) => GithubResult::Ok,
            Err(e) if e.retry_at.is_some() => GithubResult::RateLimited,
            Err(_) => GithubResult::Error,
        });
        result
    }
}
