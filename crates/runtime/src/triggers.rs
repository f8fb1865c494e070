//! Trigger tasks: each POST runs in its own task so a slow EventListener
//! never holds up other pools or the next pass. The set outlives leadership
//! terms: when a session is lost with POSTs in flight, their answers are
//! still awaited and handed to the engine to record in the next term.
//!
//! Each task runs in a `trigger` span (`event`, `dispatch`, `pool`,
//! `attempt`); what the answer decided is logged once, by the engine, when
//! it is recorded. The task counts `webhook_dispatcher_triggers_total` and,
//! for a 202, observes `webhook_dispatcher_queue_wait_seconds`.

use std::sync::Arc;
use std::time::Duration;

use dispatcher_core::config::Settings;
use dispatcher_core::engine::{TriggerResult, send_trigger};
use dispatcher_core::planner::{DispatchOutcome, RetryPolicy, trigger_outcome};
use dispatcher_core::ports::{Lease, Trigger, TriggerError, TriggerJob};
use dispatcher_metrics::{Metrics, TriggerOutcome};
use time::OffsetDateTime;
use tokio::task::JoinSet;
use tracing::Instrument;
use url::Url;

/// Trigger tasks in flight.
pub(crate) struct Triggers {
    tasks: JoinSet<TriggerResult>,
    metrics: Arc<Metrics>,
    settings: Arc<Settings>,
}

impl Triggers {
    pub(crate) fn new(metrics: Arc<Metrics>, settings: Arc<Settings>) -> Self {
        Self {
            tasks: JoinSet::new(),
            metrics,
            settings,
        }
    }

    /// Uses `settings` for the triggers spawned from now on (a reload).
    pub(crate) fn set_settings(&mut self, settings: Arc<Settings>) {
        self.settings = settings;
    }

    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }

    /// POSTs `job` in its own task. The lease is checked right before the
    /// request leaves: a replica that was frozen past its database session's
    /// idle timeout (another replica may lead by now) sends nothing.
    ///
    /// `planned_at` is the database clock of the pass that committed the job
    /// as `triggering` ([`PassReport::now`](dispatcher_core::engine::PassReport::now)).
    /// The queue wait of an accepted trigger is `planned_at − accepted_at`
    /// (both on the database's clock, so no clock skew between replicas and
    /// the database enters) plus the time from here to the 202 on this
    /// process's monotonic clock.
    pub(crate) fn spawn<T, L>(
        &mut self,
        trigger: &Arc<T>,
        url: Option<Url>,
        job: TriggerJob,
        lease: L,
        planned_at: Option<OffsetDateTime>,
    ) where
        T: Trigger + 'static,
        L: Lease,
    {
        let trigger = Arc::clone(trigger);
        let metrics = Arc::clone(&self.metrics);
        let pool = self
            .settings
            .item(&job.item)
            .map_or_else(|| "unknown".to_owned(), |i| i.pool.0.clone());
        let d = &self.settings.dispatch;
        let policy = RetryPolicy {
            max_attempts: d.max_attempts,
            backoff_base: d.retry_backoff_base,
            backoff_max: d.retry_backoff_max,
        };
        // Before the task starts: what the job waited until now, on the database's clock.
        let queued_for =
            planned_at.map(|at| Duration::try_from(at - job.accepted_at).unwrap_or_default());
        let span = tracing::info_span!(
            "trigger",
            event = %job.event_id,
            dispatch = %job.dispatch,
            pool = %pool,
            attempt = job.attempt,
        );
        let spawned = std::time::Instant::now();
        let task = async move {
            let started = std::time::Instant::now();
            let (result, took) = if lease.is_valid() {
                let result = send_trigger(&*trigger, url.as_ref(), &job).await;
                (result, Some(started.elapsed()))
            } else {
                // Debug only: the engine logs the retry this causes, with this reason.
                tracing::debug!("leadership lease expired; not sending the trigger");
                let not_sent = TriggerError::Transport(
                    "not sent: this replica's leadership lease had expired".to_owned(),
                );
                (Err(not_sent), None)
            };
            let outcome = metric_outcome(&job, &result, policy);
            metrics.trigger(&pool, outcome, took);
            if outcome == TriggerOutcome::Accepted
                && let Some(queued_for) = queued_for
            {
                metrics.queue_wait(&pool, queued_for + spawned.elapsed());
            }
            (job, result)
        };
        self.tasks.spawn(task.instrument(span));
    }

    /// Results already finished, without waiting.
    pub(crate) fn finished(&mut self) -> Vec<TriggerResult> {
        let mut done = Vec::new();
        while let Some(joined) = self.tasks.try_join_next() {
            done.extend(keep(joined));
        }
        done
    }

    /// The next result (pending forever when nothing is in flight, so it can
    /// sit in a `select!`).
    pub(crate) async fn next(&mut self) -> TriggerResult {
        loop {
            match self.tasks.join_next().await {
                Some(joined) => {
                    if let Some(result) = keep(joined) {
                        return result;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Waits for every POST in flight, at most `limit` (each POST has its
    /// own timeout, so the limit only guards against a stuck task).
    pub(crate) async fn drain(&mut self, limit: Duration) -> Vec<TriggerResult> {
        let mut done = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(joined)) => done.extend(keep(joined)),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        outstanding = self.tasks.len(),
                        "trigger tasks did not finish in time; their dispatches will be settled as orphans"
                    );
                    break;
                }
            }
        }
        done
    }
}

/// The `webhook_dispatcher_triggers_total` result: what the planner will
/// record for this answer ([`trigger_outcome`]).
fn metric_outcome(
    job: &TriggerJob,
    result: &Result<Option<String>, TriggerError>,
    policy: RetryPolicy,
) -> TriggerOutcome {
    let now = OffsetDateTime::UNIX_EPOCH;
    match trigger_outcome(job.dispatch, job.attempt, result.clone(), policy, now) {
        DispatchOutcome::Triggered { .. } => TriggerOutcome::Accepted,
        DispatchOutcome::Retry { .. } => TriggerOutcome::Retry,
        DispatchOutcome::Failed { .. } => TriggerOutcome::Failed,
        _ => TriggerOutcome::Unanswered,
    }
}

fn keep(joined: Result<TriggerResult, tokio::task::JoinError>) -> Option<TriggerResult> {
    match joined {
        Ok(result) => Some(result),
        Err(e) => {
            // A panicking or aborted task: its dispatch stays `triggering` and
            // is settled as an orphan (confirmed from its run, or retried).
            tracing::error!(error = %e, "trigger task ended abnormally");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use dispatcher_core::domain::{DispatchId, EventId, PullRequestRef};
    use dispatcher_core::ports::TriggerRequest;

    use super::*;

    /// Counts the POSTs that reach it and accepts each one.
    #[derive(Default)]
    struct Counting {
        sent: AtomicUsize,
    }

    impl Trigger for Counting {
        async fn trigger(
            &self,
            request: TriggerRequest<'_>,
        ) -> Result<Option<String>, TriggerError> {
            self.sent.fetch_add(1, Ordering::SeqCst);
            Ok(Some(format!("ev-{}", request.dispatch)))
        }
    }

    #[derive(Clone)]
    struct FixedLease(bool);

    impl Lease for FixedLease {
        fn is_valid(&self) -> bool {
            self.0
        }
    }

    fn job() -> TriggerJob {
        TriggerJob {
            dispatch: DispatchId(7),
            event_id: EventId(3),
            item: "ops".to_owned(),
            pr: PullRequestRef {
                repository: "o/r".to_owned(),
                number: 1,
            },
            attempt: 1,
            accepted_at: OffsetDateTime::UNIX_EPOCH,
            payload: "{}".to_owned(),
            headers: vec![],
            resign: false,
        }
    }

    fn settings() -> Arc<Settings> {
        let (raw, _) = dispatcher_core::config::parse(serde_json::json!({
            "dispatcher": {"items": [{
                "name": "ops",
                "events": ["opened"],
                "full_repository_name": "o/r",
                "callback_url": "http://127.0.0.1:9/hook",
                "capacity": {"type": "ocp_tekton", "pipeline_name": "p",
                             "max_capacity": 1, "namespace": "ns"},
            }]},
            "security": {"github_webhook_secret": "s"},
        }))
        .unwrap();
        Arc::new(Settings::from_raw(raw).unwrap())
    }

    async fn next(triggers: &mut Triggers) -> TriggerResult {
        tokio::time::timeout(Duration::from_secs(10), triggers.next())
            .await
            .expect("the trigger task finished")
    }

    #[tokio::test]
    async fn an_expired_lease_sends_nothing() {
        let trigger = Arc::new(Counting::default());
        let url: Url = "http://127.0.0.1:9/hook".parse().unwrap();
        let metrics = Arc::new(Metrics::new("test"));
        let mut triggers = Triggers::new(Arc::clone(&metrics), settings());

        // Planned 90 s after the delivery was accepted.
        let planned_at = Some(OffsetDateTime::UNIX_EPOCH + Duration::from_secs(90));
        triggers.spawn(
            &trigger,
            Some(url.clone()),
            job(),
            FixedLease(false),
            planned_at,
        );
        let (answered, result) = next(&mut triggers).await;
        assert_eq!(answered, job());
        let Err(error) = result else {
            panic!("sent without a valid lease: {result:?}");
        };
        assert!(
            matches!(error, TriggerError::Transport(_)),
            "not sent, so safe to retry: {error:?}"
        );
        assert!(!error.may_have_reached_listener());
        assert_eq!(trigger.sent.load(Ordering::SeqCst), 0, "nothing was sent");
        assert_eq!(triggers.len(), 0);

        // The same job with a valid lease goes out.
        triggers.spawn(&trigger, Some(url), job(), FixedLease(true), planned_at);
        let (_, result) = next(&mut triggers).await;
        assert_eq!(result, Ok(Some("ev-7".to_owned())));
        assert_eq!(trigger.sent.load(Ordering::SeqCst), 1);

        // Both results were counted under the item's pool; only the sent one was timed.
        let text = metrics.encode();
        assert!(
            text.contains("webhook_dispatcher_triggers_total{pool=\"ns/p\",result=\"retry\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "webhook_dispatcher_triggers_total{pool=\"ns/p\",result=\"accepted\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("webhook_dispatcher_trigger_duration_seconds_count{pool=\"ns/p\"} 1\n"),
            "{text}"
        );
        // Only the accepted one waited in the queue: 90 s before the pass, plus the POST.
        assert!(
            text.contains("webhook_dispatcher_queue_wait_seconds_count{pool=\"ns/p\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "webhook_dispatcher_queue_wait_seconds_bucket{le=\"60.0\",pool=\"ns/p\"} 0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "webhook_dispatcher_queue_wait_seconds_bucket{le=\"120.0\",pool=\"ns/p\"} 1\n"
            ),
            "{text}"
        );
    }
}
