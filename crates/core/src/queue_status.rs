//! Queue position and estimated start on the pull request
//! (`github.queue_status: check_run | commit_status`).
//!
//! The leader's pass computes, for every waiting dispatch, the text GitHub
//! should show ("Queued: 3rd of 7 for operator-hosted-pipeline, estimated
//! start in about 12 min") from the same [`operate::overview`] the explain
//! API answers with, so the pull request and the API agree. The store keeps
//! one row per (pull request, pool, head SHA); [`StatusPacer`] pushes the
//! changes to GitHub beside the engine, coalesced to one position update per
//! `github.queue_status_interval`, while the final "Started" or
//! "Cancelled: superseded by <sha>" goes at once. Like labels, GitHub
//! failures are retried with backoff and a rate limit pauses every update;
//! dispatching never waits for any of it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use time::OffsetDateTime;

use crate::backoff::retry_delay;
use crate::config::{PoolKey, Settings};
use crate::domain::{DispatchId, DispatchState, PullRequestRef};
use crate::operate::{self, PauseInfo, PoolOverview, QueueSnapshot, QueuedWork, WaitReason};
use crate::ports::{
    Clock, OpenDispatch, PoolState, QueueStatusStore, RateLimitPause, StatusNotifier, StatusPhase,
    StoreError,
};

/// Status updates sent per pass (a full batch means more may be due).
pub const STATUS_BATCH: usize = 50;
const STATUS_RETRY_BASE: Duration = Duration::from_secs(2);
const STATUS_RETRY_MAX: Duration = Duration::from_secs(300);
const MIN_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(1);
const MAX_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(3600);
/// GitHub's limit on a commit status description.
pub const MAX_DESCRIPTION: usize = 140;

/// The text of a dispatch that was triggered.
pub const STARTED: &str = "Started";

/// What one waiting dispatch should show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedStatus {
    /// The waiting dispatch (its event carries the head SHA).
    pub dispatch: DispatchId,
    /// Its pool.
    pub pool: PoolKey,
    /// The pool's pipeline name.
    pub pipeline: String,
    /// Pull request.
    pub pr: PullRequestRef,
    /// "Queued: 3rd of 7 for …".
    pub description: String,
    /// The part of `description` whose change is worth a GitHub update:
    /// everything but the estimate's minutes, so a position change (which
    /// refreshes the estimate) is sent and a ticking estimate alone is not.
    pub significant: String,
}

/// `1st`, `2nd`, `3rd`, `4th`, `11th`, `12th`, `13th`, `21st`, `112th`, ….
pub fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// "about N min" for a wait (rounded up, at least one minute).
pub fn about(wait: Duration) -> String {
    let minutes = wait.as_secs().div_ceil(60).max(1);
    format!("about {minutes} min")
}

/// The text of a waiting dispatch: its place, the queue's length, the
/// pipeline and when it should start (the explain API's estimate).
pub fn queued_text(
    position: u32,
    total: u32,
    pipeline: &str,
    reason: &WaitReason,
    estimated_start: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> String {
    queued_texts(position, total, pipeline, reason, estimated_start, now).0
}

/// [`queued_text`] and its significant part (see [`WantedStatus::significant`]).
fn queued_texts(
    position: u32,
    total: u32,
    pipeline: &str,
    reason: &WaitReason,
    estimated_start: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> (String, String) {
    let when = match (reason, estimated_start) {
        (WaitReason::Paused { .. }, _) => "pipeline paused".to_owned(),
        (WaitReason::KubernetesUnknown { .. }, _) => "no estimate yet".to_owned(),
        (WaitReason::Starting, _) => "starting now".to_owned(),
        (_, Some(start)) if start <= now => "starting now".to_owned(),
        (_, Some(start)) => format!(
            "estimated start in {}",
            about(Duration::try_from(start - now).unwrap_or_default())
        ),
        (_, None) => "no estimate yet".to_owned(),
    };
    let place = format!("Queued: {} of {total} for {pipeline}", ordinal(position));
    let kind = if when.starts_with("estimated start") {
        "estimated start"
    } else {
        when.as_str()
    };
    (
        truncate(&format!("{place}, {when}")),
        format!("{place}, {kind}"),
    )
}

/// "Cancelled: superseded by <sha>", or "Cancelled" when no newer commit took its place.
pub fn cancelled_text(superseded_by: Option<&str>) -> String {
    match superseded_by {
        Some(sha) => truncate(&format!("Cancelled: superseded by {sha}")),
        None => "Cancelled".to_owned(),
    }
}

/// At most [`MAX_DESCRIPTION`] characters.
fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_DESCRIPTION {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(MAX_DESCRIPTION - 1).collect();
    out.push('…');
    out
}

/// The wanted statuses of `overviews` (one per pull request and pool: its
/// first place when several items of one pool wait for it).
pub fn wanted_from(overviews: &[PoolOverview], now: OffsetDateTime) -> Vec<WantedStatus> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for pool in overviews {
        let total = u32::try_from(pool.queue.len()).unwrap_or(u32::MAX);
        for QueuedWork {
            position,
            dispatch,
            pr,
            reason,
            estimated_start,
            ..
        } in &pool.queue
        {
            if !seen.insert((pr.clone(), pool.spec.key.clone())) {
                continue;
            }
            let (description, significant) = queued_texts(
                *position,
                total,
                &pool.spec.pipeline_name,
                reason,
                *estimated_start,
                now,
            );
            out.push(WantedStatus {
                dispatch: *dispatch,
                pool: pool.spec.key.clone(),
                pipeline: pool.spec.pipeline_name.clone(),
                pr: pr.clone(),
                description,
                significant,
            });
        }
    }
    out
}

/// The wanted statuses after a pass: `open` as it stands once the pass's
/// triggers are committed, through [`operate::overview`] (the explain API's
/// positions, reasons and estimates).
pub fn wanted_statuses(
    settings: &Settings,
    open: &[OpenDispatch],
    pools: &BTreeMap<PoolKey, PoolState>,
    paused: &BTreeSet<PoolKey>,
    now: OffsetDateTime,
) -> Vec<WantedStatus> {
    if !open.iter().any(|d| d.state == DispatchState::Queued) {
        return Vec::new();
    }
    let snapshot = QueueSnapshot {
        now,
        open: open.to_vec(),
        facts: Default::default(),
        paused: paused
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    PauseInfo {
                        by: String::new(),
                        at: now,
                    },
                )
            })
            .collect(),
    };
    wanted_from(&operate::overview(settings, &snapshot, pools), now)
}

/// What one status pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusReport {
    /// Statuses now shown on GitHub (or settled without a call).
    pub applied: usize,
    /// Updates that failed and were rescheduled.
    pub failed: usize,
    /// When the next pass is worth running.
    pub next_due: Option<OffsetDateTime>,
    /// Set when GitHub rate-limited a call.
    pub paused_until: Option<OffsetDateTime>,
}

/// Sends due status updates (see the module docs).
pub async fn run_status_pass<S, N, K>(
    store: &mut S,
    notifier: &N,
    clock: &K,
    interval: Duration,
) -> Result<StatusReport, StoreError>
where
    S: QueueStatusStore,
    N: StatusNotifier,
    K: Clock,
{
    let mut report = StatusReport::default();
    let tasks = store
        .due_status_tasks(clock.now(), interval, STATUS_BATCH)
        .await?;
    for task in &tasks {
        // Finished before anything was shown: nothing to complete on GitHub.
        if task.phase.is_final() && task.applied_phase.is_none() {
            report.applied += 1;
            store
                .finish_status_task(task, Ok(None), clock.now())
                .await?;
            continue;
        }
        match notifier.publish_status(task).await {
            Ok(id) => {
                report.applied += 1;
                tracing::info!(repo = %task.pr.repository, pr = task.pr.number, pipeline = %task.pipeline, sha = %task.head_sha, status = %task.description, "updated pull request queue status");
                store.finish_status_task(task, Ok(id), clock.now()).await?;
            }
            Err(e) if e.retry_at.is_some() => {
                let now = clock.now();
                let until = e
                    .retry_at
                    .unwrap_or(now)
                    .clamp(now + MIN_RATE_LIMIT_PAUSE, now + MAX_RATE_LIMIT_PAUSE);
                tracing::warn!(repo = %task.pr.repository, pr = task.pr.number, pipeline = %task.pipeline, paused_until = %until, error = %e, "GitHub rate limit; pausing queue status updates");
                report.paused_until = Some(until);
                report.next_due = Some(until);
                return Ok(report);
            }
            Err(e) => {
                report.failed += 1;
                let attempts = task.attempts + 1;
                let seed = u64::try_from(task.pr.number).unwrap_or_default();
                let now = clock.now();
                let retry_at =
                    now + retry_delay(STATUS_RETRY_BASE, STATUS_RETRY_MAX, attempts, seed);
                tracing::warn!(repo = %task.pr.repository, pr = task.pr.number, pipeline = %task.pipeline, attempts, error = %e, "GitHub queue status update failed; will retry");
                store
                    .finish_status_task(task, Err((e.to_string(), retry_at)), now)
                    .await?;
            }
        }
    }
    report.next_due = store.next_status_due(interval).await?;
    Ok(report)
}

/// Runs successive status passes and holds a GitHub rate-limit pause
/// between them (as [`crate::labels::LabelPacer`] does for labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPacer {
    interval: Duration,
    pause: RateLimitPause,
}

impl StatusPacer {
    /// A pacer coalescing position updates to one per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            pause: RateLimitPause::default(),
        }
    }

    /// [`run_status_pass`], unless a rate-limit pause is still running.
    pub async fn run_pass<S, N, K>(
        &mut self,
        store: &mut S,
        notifier: &N,
        clock: &K,
    ) -> Result<StatusReport, StoreError>
    where
        S: QueueStatusStore,
        N: StatusNotifier,
        K: Clock,
    {
        if let Some(until) = self.pause.running(clock.now()) {
            return Ok(StatusReport {
                next_due: Some(until),
                paused_until: Some(until),
                ..StatusReport::default()
            });
        }
        let report = run_status_pass(store, notifier, clock, self.interval).await?;
        self.pause.set(report.paused_until);
        Ok(report)
    }
}

/// The phase and text of a status whose dispatch no longer waits: the
/// newest dispatch of its pull request and item decides (`newest_sha`,
/// `newest_state`).
pub fn settled(
    head_sha: &str,
    newest_sha: Option<&str>,
    newest_state: Option<DispatchState>,
) -> (StatusPhase, String) {
    match (newest_sha, newest_state) {
        (Some(sha), _) if sha != head_sha => (StatusPhase::Cancelled, cancelled_text(Some(sha))),
        (
            _,
            Some(
                DispatchState::Triggering
                | DispatchState::Triggered
                | DispatchState::Confirmed
                | DispatchState::Failed,
            ),
        ) => (StatusPhase::Started, STARTED.to_owned()),
        _ => (StatusPhase::Cancelled, cancelled_text(None)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Mutex;

    use futures_executor::block_on;
    use time::macros::datetime;

    use super::*;
    use crate::ports::{NotifyError, StatusOutcome, StatusTask};

    const NOW: OffsetDateTime = datetime!(2026-12-02 12:00 UTC);

    #[test]
    fn ordinals() {
        let cases = [
            (1, "1st"),
            (2, "2nd"),
            (3, "3rd"),
            (4, "4th"),
            (10, "10th"),
            (11, "11th"),
            (12, "12th"),
            (13, "13th"),
            (21, "21st"),
            (22, "22nd"),
            (23, "23rd"),
            (101, "101st"),
            (111, "111th"),
            (112, "112th"),
            (113, "113th"),
        ];
        for (n, text) in cases {
            assert_eq!(ordinal(n), text);
        }
    }

    #[test]
    fn wording_of_a_waiting_dispatch() {
        let full = WaitReason::PoolFull {
            running: 1,
            reserved: 0,
            capacity: 1,
        };
        let p = "operator-hosted-pipeline";
        let at = |secs: i64| Some(NOW + time::Duration::seconds(secs));
        assert_eq!(
            queued_text(3, 7, p, &full, at(12 * 60), NOW),
            "Queued: 3rd of 7 for operator-hosted-pipeline, estimated start in about 12 min"
        );
        assert_eq!(
            queued_text(3, 7, p, &full, at(11 * 60 + 1), NOW),
            "Queued: 3rd of 7 for operator-hosted-pipeline, estimated start in about 12 min",
            "rounded up"
        );
        assert_eq!(
            queued_text(2, 2, p, &full, at(5), NOW),
            "Queued: 2nd of 2 for operator-hosted-pipeline, estimated start in about 1 min"
        );
        assert_eq!(
            queued_text(1, 1, p, &full, None, NOW),
            "Queued: 1st of 1 for operator-hosted-pipeline, no estimate yet"
        );
        assert_eq!(
            queued_text(1, 1, p, &WaitReason::Starting, at(0), NOW),
            "Queued: 1st of 1 for operator-hosted-pipeline, starting now"
        );
        let paused = WaitReason::Paused { by: "alice".into() };
        assert_eq!(
            queued_text(11, 13, p, &paused, None, NOW),
            "Queued: 11th of 13 for operator-hosted-pipeline, pipeline paused"
        );
        let long = "p".repeat(200);
        assert_eq!(
            queued_text(1, 1, &long, &full, None, NOW).chars().count(),
            MAX_DESCRIPTION
        );
    }

    #[test]
    fn wanted_statuses_follow_the_explained_queue() {
        use crate::config::parse;
        use crate::domain::EventId;
        use crate::ports::RunView;
        let v = serde_json::json!({
            "dispatcher": {"items": [{
                "name": "ops", "events": ["opened"], "full_repository_name": "o/r",
                "callback_url": "http://el:8080",
                "capacity": {"type": "ocp_tekton", "pipeline_name": "p", "max_capacity": 1, "namespace": "ns"},
            }]},
            "security": {"verify_signatures": false},
        });
        let settings = Settings::from_raw(parse(v).unwrap().0).unwrap();
        let pool = PoolKey("ns/p".into());
        let dispatch = |id: i64, state: DispatchState, has_newer: bool| OpenDispatch {
            id: DispatchId(id),
            event_id: EventId(id),
            item: "ops".into(),
            pool: pool.clone(),
            pr: PullRequestRef {
                repository: "o/r".into(),
                number: id,
            },
            state,
            queue_position: id,
            attempts: 0,
            next_attempt_at: NOW,
            listener_event_id: None,
            trigger_started_at: None,
            triggered_at: None,
            has_newer,
            labels: Vec::new(),
            recent_triggers: Vec::new(),
        };
        let open = vec![
            dispatch(1, DispatchState::Triggering, false),
            dispatch(2, DispatchState::Queued, false),
            dispatch(3, DispatchState::Queued, true),
            dispatch(4, DispatchState::Queued, false),
        ];
        // One run of 10 minutes finished; the one running started 4 minutes ago.
        let state = PoolState::Known {
            running: 1,
            runs: vec![
                RunView {
                    created_at: Some(NOW - time::Duration::minutes(4)),
                    ..RunView::default()
                },
                RunView {
                    created_at: Some(NOW - time::Duration::minutes(30)),
                    finished: true,
                    finished_at: Some(NOW - time::Duration::minutes(20)),
                    ..RunView::default()
                },
            ],
        };
        let pools = [(pool.clone(), state)].into();
        let wanted = wanted_statuses(&settings, &open, &pools, &BTreeSet::new(), NOW);
        let texts: Vec<(i64, &str)> = wanted
            .iter()
            .map(|w| (w.dispatch.0, w.description.as_str()))
            .collect();
        assert_eq!(
            texts,
            [
                // The explain API's estimate: the trigger in flight counts as
                // just started (10 min), after the running run (6 min left).
                (2, "Queued: 1st of 2 for p, estimated start in about 10 min"),
                (4, "Queued: 2nd of 2 for p, estimated start in about 20 min"),
            ],
            "in flight and superseded work shows nothing"
        );
        let paused = wanted_statuses(&settings, &open, &pools, &[pool].into(), NOW);
        assert_eq!(
            paused[0].description,
            "Queued: 1st of 2 for p, pipeline paused"
        );
        assert!(wanted_statuses(&settings, &open[..1], &pools, &BTreeSet::new(), NOW).is_empty());
    }

    #[test]
    fn a_ticking_estimate_alone_is_not_significant() {
        let full = WaitReason::PoolFull {
            running: 1,
            reserved: 0,
            capacity: 1,
        };
        let at = |m: i64| Some(NOW + time::Duration::minutes(m));
        let (a, key_a) = queued_texts(3, 7, "p", &full, at(12), NOW);
        let (b, key_b) = queued_texts(3, 7, "p", &full, at(11), NOW);
        assert_ne!(a, b);
        assert_eq!(key_a, key_b);
        assert_eq!(key_a, "Queued: 3rd of 7 for p, estimated start");
        let (_, moved) = queued_texts(2, 7, "p", &full, at(11), NOW);
        assert_ne!(moved, key_a);
        let (_, unknown) = queued_texts(3, 7, "p", &full, None, NOW);
        assert_ne!(unknown, key_a, "an estimate appearing is sent");
        let (_, paused) =
            queued_texts(3, 7, "p", &WaitReason::Paused { by: "a".into() }, None, NOW);
        assert_eq!(paused, "Queued: 3rd of 7 for p, pipeline paused");
    }

    #[test]
    fn a_settled_status_says_why() {
        let started = settled("aaa", Some("aaa"), Some(DispatchState::Triggered));
        assert_eq!(started, (StatusPhase::Started, "Started".to_owned()));
        let superseded = settled("aaa", Some("bbb"), Some(DispatchState::Queued));
        assert_eq!(
            superseded,
            (
                StatusPhase::Cancelled,
                "Cancelled: superseded by bbb".to_owned()
            )
        );
        let closed = settled("aaa", Some("aaa"), Some(DispatchState::Cancelled));
        assert_eq!(closed, (StatusPhase::Cancelled, "Cancelled".to_owned()));
        let gone = settled("aaa", None, None);
        assert_eq!(gone.0, StatusPhase::Cancelled);
    }

    struct Fixed;
    impl Clock for Fixed {
        fn now(&self) -> OffsetDateTime {
            NOW
        }
    }

    #[derive(Default)]
    struct Store {
        due: Vec<StatusTask>,
        finished: Vec<(String, StatusOutcome)>,
    }

    impl QueueStatusStore for Store {
        async fn due_status_tasks(
            &mut self,
            _now: OffsetDateTime,
            _interval: Duration,
            limit: usize,
        ) -> Result<Vec<StatusTask>, StoreError> {
            Ok(self.due.iter().take(limit).cloned().collect())
        }
        async fn finish_status_task(
            &mut self,
            task: &StatusTask,
            result: StatusOutcome,
            _now: OffsetDateTime,
        ) -> Result<(), StoreError> {
            self.due.retain(|t| t.head_sha != task.head_sha);
            self.finished.push((task.head_sha.clone(), result));
            Ok(())
        }
        async fn next_status_due(
            &mut self,
            _interval: Duration,
        ) -> Result<Option<OffsetDateTime>, StoreError> {
            Ok(None)
        }
    }

    #[derive(Default)]
    struct Notifier {
        calls: Mutex<Vec<String>>,
    }

    impl StatusNotifier for Notifier {
        async fn publish_status(&self, task: &StatusTask) -> Result<Option<i64>, NotifyError> {
            self.calls.lock().unwrap().push(task.head_sha.clone());
            match task.head_sha.as_str() {
                "limit" => Err(NotifyError::rate_limited(
                    "slow",
                    NOW + Duration::from_secs(60),
                )),
                "boom" => Err(NotifyError::new("HTTP 502")),
                _ => Ok(Some(7)),
            }
        }
    }

    fn task(sha: &str, phase: StatusPhase, applied: Option<StatusPhase>) -> StatusTask {
        StatusTask {
            pr: PullRequestRef {
                repository: "o/r".into(),
                number: 1,
            },
            pool: "ns/p".into(),
            pipeline: "p".into(),
            head_sha: sha.into(),
            phase,
            description: "x".into(),
            applied_phase: applied,
            check_run_id: None,
            attempts: 0,
        }
    }

    #[test]
    fn a_pass_sends_skips_retries_and_pauses() {
        let mut store = Store {
            due: vec![
                task("never-shown", StatusPhase::Started, None),
                task("ok", StatusPhase::Queued, None),
                task("boom", StatusPhase::Queued, None),
                task("limit", StatusPhase::Queued, None),
                task("after", StatusPhase::Queued, None),
            ],
            ..Store::default()
        };
        let notifier = Notifier::default();
        let mut pacer = StatusPacer::new(Duration::from_secs(30));
        let report = block_on(pacer.run_pass(&mut store, &notifier, &Fixed)).unwrap();
        assert_eq!(report.applied, 2);
        assert_eq!(report.failed, 1);
        assert_eq!(report.paused_until, Some(NOW + Duration::from_secs(60)));
        assert_eq!(
            *notifier.calls.lock().unwrap(),
            ["ok", "boom", "limit"],
            "a status never shown is not completed on GitHub; nothing after the limit"
        );
        assert_eq!(store.finished[0], ("never-shown".into(), Ok(None)));
        assert_eq!(store.finished[1], ("ok".into(), Ok(Some(7))));
        assert!(matches!(&store.finished[2].1, Err((e, at)) if e == "HTTP 502" && *at > NOW));
        let again = block_on(pacer.run_pass(&mut store, &notifier, &Fixed)).unwrap();
        assert_eq!(again.applied + again.failed, 0, "paused");
        assert_eq!(notifier.calls.lock().unwrap().len(), 3);
    }
}
