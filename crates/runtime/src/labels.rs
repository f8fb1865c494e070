//! The label worker: pushes pending `<pipeline>/queued` label changes to
//! GitHub while this replica leads. It never blocks dispatching: failures are
//! rescheduled by the label pass, and a GitHub rate limit pauses the worker
//! until GitHub's reset time.

use std::sync::Arc;

use dispatcher_core::domain::PullRequestRef;
use dispatcher_core::labels::{LABEL_BATCH, LabelPacer};
use dispatcher_core::ports::{LabelStore, NotifyError, PrNotifier, SystemClock};
use dispatcher_metrics::{GithubResult, Metrics};
use tokio::sync::Notify;

use crate::worker::{PassOutcome, rest};

pub(crate) async fn label_worker<S, N>(mut store: S, notifier: N, wake: Arc<Notify>)
where
    S: LabelStore,
    N: PrNotifier,
{
    // The pacer keeps a GitHub rate limit's pause across wake-ups.
    let mut pacer = LabelPacer::new();
    loop {
        let outcome = pacer
            .run_pass(&mut store, &notifier, &SystemClock)
            .await
            .map(|report| PassOutcome {
                full: report.applied + report.failed >= LABEL_BATCH,
                next_due: report.next_retry,
            });
        rest("labels", &wake, outcome).await;
    }
}

/// A [`PrNotifier`] that counts each GitHub request in
/// `webhook_dispatcher_github_requests_total{result}`.
pub(crate) struct Counted<N> {
    pub(crate) inner: N,
    pub(crate) metrics: Arc<Metrics>,
}

impl<N> Counted<N> {
    fn count(&self, result: Result<(), NotifyError>) -> Result<(), NotifyError> {
        self.metrics.github_request(match &result {
            Ok(()) => GithubResult::Ok,
            Err(e) if e.retry_at.is_some() => GithubResult::RateLimited,
            Err(_) => GithubResult::Error,
        });
        result
    }
}

impl<N: PrNotifier> PrNotifier for Counted<N> {
    async fn add_label(&self, pr: &PullRequestRef, label: &str) -> Result<(), NotifyError> {
        let result = self.inner.add_label(pr, label).await;
        self.count(result)
    }

    async fn remove_label(&self, pr: &PullRequestRef, label: &str) -> Result<(), NotifyError> {
        let result = self.inner.remove_label(pr, label).await;
        self.count(result)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// Answers by label name: `ok`, `limit` (rate-limited) or anything else (error).
    struct ByLabel;

    impl PrNotifier for ByLabel {
        async fn add_label(&self, _: &PullRequestRef, label: &str) -> Result<(), NotifyError> {
            match label {
                "ok" => Ok(()),
                "limit" => Err(NotifyError::rate_limited(
                    "rate limited",
                    time::OffsetDateTime::UNIX_EPOCH,
                )),
                _ => Err(NotifyError::new("boom")),
            }
        }

        async fn remove_label(&self, pr: &PullRequestRef, label: &str) -> Result<(), NotifyError> {
            self.add_label(pr, label).await
        }
    }

    #[tokio::test]
    async fn github_requests_are_counted_by_result() {
        let metrics = Arc::new(Metrics::new("test"));
        let counted = Counted {
            inner: ByLabel,
            metrics: Arc::clone(&metrics),
        };
        let pr = PullRequestRef {
            repository: "o/r".to_owned(),
            number: 1,
        };
        counted.add_label(&pr, "ok").await.unwrap();
        counted.remove_label(&pr, "ok").await.unwrap();
        counted.add_label(&pr, "limit").await.unwrap_err();
        counted.remove_label(&pr, "x").await.unwrap_err();
        let text = metrics.encode();
        for (result, n) in [("ok", 2), ("rate_limited", 1), ("error", 1)] {
            let line =
                format!("webhook_dispatcher_github_requests_total{{result=\"{result}\"}} {n}\n");
            assert!(text.contains(&line), "{line} in {text}");
        }
    }
}
