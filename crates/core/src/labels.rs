//! Pull-request label feedback: pushes pending `<pipeline>/queued` label
//! changes to GitHub. Runs beside the dispatch engine and never blocks it: a
//! GitHub failure only schedules a retry of that one change.
//!
//! A rate-limited answer (the notifier's error carries
//! [`NotifyError::retry_at`](crate::ports::NotifyError)) is not the change's
//! fault: the pass stops there, leaves that change's attempt count alone and
//! reports the end of the pause. [`LabelPacer`] remembers the pause across
//! passes, so a worker woken early makes no GitHub call before it ends.

use std::time::Duration;

use time::OffsetDateTime;

use crate::backoff::retry_delay;
use crate::ports::{Clock, LabelStore, PrNotifier, RateLimitPause, StoreError};

/// Label changes sent per pass (a full batch means more may be due).
pub const LABEL_BATCH: usize = 50;
const LABEL_RETRY_BASE: Duration = Duration::from_secs(2);
const LABEL_RETRY_MAX: Duration = Duration::from_secs(300);
/// Shortest pause after a rate limit (a reset time already past, or clock skew).
const MIN_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause after a rate limit (GitHub's windows are an hour; a larger
/// value is a bogus header and must not silence labels for longer).
const MAX_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(3600);

/// What one label pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelReport {
    /// Changes applied on GitHub.
    pub applied: usize,
    /// Changes that failed and were rescheduled.
    pub failed: usize,
    /// When the next pass is worth running: the earliest rescheduled change,
    /// or the end of a rate-limit pause.
    pub next_retry: Option<OffsetDateTime>,
    /// Set when GitHub rate-limited a call: the pass stopped there and no
    /// GitHub call should be made before this time.
    pub paused_until: Option<OffsetDateTime>,
}

/// Sends due label changes. GitHub errors are logged and retried with
/// backoff; the first rate-limited answer ends the pass (see the module docs).
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
            Err(e) if e.retry_at.is_some() => {
                let now = clock.now();
                let until = e
                    .retry_at
                    .unwrap_or(now)
                    .clamp(now + MIN_RATE_LIMIT_PAUSE, now + MAX_RATE_LIMIT_PAUSE);
                // The change stays due with its attempts untouched; the pause holds every change.
                tracing::warn!(repo = %task.pr.repository, pr = task.pr.number, label = %task.label, added = task.wanted, paused_until = %until, error = %e, "GitHub rate limit; pausing label updates");
                report.paused_until = Some(until);
                report.next_retry = Some(until);
                return Ok(report);
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

/// Runs successive label passes and holds a GitHub rate-limit pause between
/// them: while paused, [`run_pass`](Self::run_pass) makes no call and
/// reports the pause end, however often the worker is woken. One per label
/// worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelPacer {
    pause: RateLimitPause,
}

impl LabelPacer {
    /// A pacer with no pause.
    pub fn new() -> Self {
        Self::default()
    }

    /// The end of the current rate-limit pause, if one was reported.
    pub fn paused_until(&self) -> Option<OffsetDateTime> {
        self.pause.until()
    }

    /// [`run_label_pass`], unless a rate-limit pause is still running: then
    /// nothing is read or sent and the report's `next_retry` and
    /// `paused_until` are the pause end.
    pub async fn run_pass<S, N, K>(
        &mut self,
        store: &mut S,
        notifier: &N,
        clock: &K,
    ) -> Result<LabelReport, StoreError>
    where
        S: LabelStore,
        N: PrNotifier,
        K: Clock,
    {
        if let Some(until) = self.pause.running(clock.now()) {
            return Ok(LabelReport {
                next_retry: Some(until),
                paused_until: Some(until),
                ..LabelReport::default()
            });
        }
        let report = run_label_pass(store, notifier, clock).await?;
        self.pause.set(report.paused_until);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::VecDeque;
    use std::sync::Mutex;

    use futures_executor::block_on;
    use time::macros::datetime;

    use super::*;
    use crate::domain::PullRequestRef;
    use crate::ports::{LabelTask, NotifyError};

    struct Clocked(Mutex<OffsetDateTime>);

    impl Clocked {
        fn set(&self, t: OffsetDateTime) {
            *self.0.lock().unwrap() = t;
        }
    }

    impl Clock for Clocked {
        fn now(&self) -> OffsetDateTime {
            *self.0.lock().unwrap()
        }
    }

    #[derive(Default)]
    struct Store {
        due: Vec<LabelTask>,
        finished: Vec<(String, Option<String>, Option<OffsetDateTime>)>,
        reads: usize,
    }

    impl LabelStore for Store {
        async fn due_label_tasks(
            &mut self,
            _now: OffsetDateTime,
            limit: usize,
        ) -> Result<Vec<LabelTask>, StoreError> {
            self.reads += 1;
            Ok(self.due.iter().take(limit).cloned().collect())
        }

        async fn finish_label_task(
            &mut self,
            task: &LabelTask,
            error: Option<String>,
            retry_at: Option<OffsetDateTime>,
        ) -> Result<(), StoreError> {
            self.due.retain(|t| t.label != task.label);
            self.finished.push((task.label.clone(), error, retry_at));
            Ok(())
        }

        async fn next_label_retry(&mut self) -> Result<Option<OffsetDateTime>, StoreError> {
            Ok(self.finished.iter().filter_map(|f| f.2).min())
        }
    }

    /// Answers calls from a script; every call is recorded.
    #[derive(Default)]
    struct Notifier {
        answers: Mutex<VecDeque<Result<(), NotifyError>>>,
        calls: Mutex<Vec<String>>,
    }

    impl Notifier {
        fn answer(&self, label: &str) -> Result<(), NotifyError> {
            self.calls.lock().unwrap().push(label.to_owned());
            self.answers.lock().unwrap().pop_front().unwrap_or(Ok(()))
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl PrNotifier for Notifier {
        async fn add_label(&self, _pr: &PullRequestRef, label: &str) -> Result<(), NotifyError> {
            self.answer(label)
        }
        async fn remove_label(&self, _pr: &PullRequestRef, label: &str) -> Result<(), NotifyError> {
            self.answer(label)
        }
    }

    fn task(label: &str, attempts: u32) -> LabelTask {
        LabelTask {
            pr: PullRequestRef {
                repository: "o/r".into(),
                number: 1,
            },
            label: label.into(),
            wanted: true,
            attempts,
        }
    }

    const NOW: OffsetDateTime = datetime!(2026-12-01 12:00 UTC);

    #[test]
    fn a_rate_limit_stops_the_pass_and_leaves_the_task_alone() {
        let reset = NOW + Duration::from_secs(600);
        let mut store = Store {
            due: vec![task("a", 0), task("b", 2), task("c", 0)],
            ..Store::default()
        };
        let notifier = Notifier::default();
        notifier.answers.lock().unwrap().extend([
            Ok(()),
            Err(NotifyError::rate_limited("rate limited", reset)),
        ]);
        let clock = Clocked(Mutex::new(NOW));
        let report = block_on(run_label_pass(&mut store, &notifier, &clock)).unwrap();
        assert_eq!(
            report,
            LabelReport {
                applied: 1,
                failed: 0,
                next_retry: Some(reset),
                paused_until: Some(reset),
            }
        );
        assert_eq!(notifier.calls(), ["a", "b"], "c is not tried");
        assert_eq!(store.finished.len(), 1, "only a is recorded");
        assert_eq!(
            store.due,
            [task("b", 2), task("c", 0)],
            "b keeps its attempts and stays due"
        );
    }

    #[test]
    fn the_pacer_makes_no_call_until_the_pause_ends() {
        let reset = NOW + Duration::from_secs(60);
        let mut store = Store {
            due: vec![task("a", 0)],
            ..Store::default()
        };
        let notifier = Notifier::default();
        notifier
            .answers
            .lock()
            .unwrap()
            .push_back(Err(NotifyError::rate_limited("slow down", reset)));
        let clock = Clocked(Mutex::new(NOW));
        let mut pacer = LabelPacer::new();
        let first = block_on(pacer.run_pass(&mut store, &notifier, &clock)).unwrap();
        assert_eq!(first.paused_until, Some(reset));
        assert_eq!(pacer.paused_until(), Some(reset));

        for t in [NOW, NOW + Duration::from_secs(59)] {
            clock.set(t);
            let report = block_on(pacer.run_pass(&mut store, &notifier, &clock)).unwrap();
            assert_eq!(report.next_retry, Some(reset));
            assert_eq!(report.applied + report.failed, 0);
        }
        assert_eq!(notifier.calls().len(), 1, "no call during the pause");
        assert_eq!(store.reads, 1, "not even the store is read");

        clock.set(reset);
        let report = block_on(pacer.run_pass(&mut store, &notifier, &clock)).unwrap();
        assert_eq!(report.applied, 1);
        assert_eq!(report.paused_until, None);
        assert_eq!(pacer.paused_until(), None);
        assert_eq!(notifier.calls(), ["a", "a"]);
    }

    #[test]
    fn pauses_are_bounded() {
        let clock = Clocked(Mutex::new(NOW));
        for (given, expected) in [
            (NOW - Duration::from_secs(5), NOW + MIN_RATE_LIMIT_PAUSE),
            (
                NOW + Duration::from_secs(86_400),
                NOW + MAX_RATE_LIMIT_PAUSE,
            ),
        ] {
            let mut store = Store {
                due: vec![task("a", 0)],
                ..Store::default()
            };
            let notifier = Notifier::default();
            notifier
                .answers
                .lock()
                .unwrap()
                .push_back(Err(NotifyError::rate_limited("x", given)));
            let report = block_on(run_label_pass(&mut store, &notifier, &clock)).unwrap();
            assert_eq!(report.paused_until, Some(expected));
        }
    }

    #[test]
    fn ordinary_failures_are_rescheduled_and_counted() {
        let mut store = Store {
            due: vec![task("a", 0), task("b", 0)],
            ..Store::default()
        };
        let notifier = Notifier::default();
        notifier
            .answers
            .lock()
            .unwrap()
            .push_back(Err(NotifyError::new("HTTP 502")));
        let clock = Clocked(Mutex::new(NOW));
        let report = block_on(run_label_pass(&mut store, &notifier, &clock)).unwrap();
        assert_eq!((report.applied, report.failed), (1, 1));
        assert_eq!(report.paused_until, None);
        let (label, error, retry_at) = &store.finished[0];
        assert_eq!(label, "a");
        assert_eq!(error.as_deref(), Some("HTTP 502"));
        assert!(retry_at.is_some_and(|t| t > NOW));
        assert_eq!(report.next_retry, *retry_at);
    }
}
