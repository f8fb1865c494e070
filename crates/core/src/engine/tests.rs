//! Engine passes over in-memory ports.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use futures_executor::block_on;
use serde_json::json;
use time::OffsetDateTime;
use time::macros::datetime;

use super::*;
use crate::config::{PoolSpec, parse};
use crate::domain::{DispatchId, DispatchState, EventId, PullRequestRef};
use crate::planner::{IntakePlan, NewDispatch};
use crate::ports::{Clock, OpenDispatch, RunView, TriggerError, TriggerJob, UnplannedEvent};

const T0: OffsetDateTime = datetime!(2026-11-28 12:00 UTC);

fn settings(cap: u32, max_attempts: u32) -> Arc<Settings> {
    settings_with_filter(cap, max_attempts, None)
}

fn settings_with_filter(cap: u32, max_attempts: u32, filter: Option<&str>) -> Arc<Settings> {
    let mut ops = item("ops", "p", cap);
    ops["filter"] = json!({"cel_expression": filter});
    with_items(&[ops], &json!({"max_attempts": max_attempts}))
}

/// One item for `o/r`'s `opened` and `synchronize` events on `pipeline`.
fn item(name: &str, pipeline: &str, cap: u32) -> serde_json::Value {
    json!({
        "name": name, "events": ["opened", "synchronize"], "full_repository_name": "o/r",
        "callback_url": "http://el:8080/",
        "capacity": {"type": "ocp_tekton", "pipeline_name": pipeline, "max_capacity": cap, "namespace": "ns"},
    })
}

fn with_items(items: &[serde_json::Value], dispatch: &serde_json::Value) -> Arc<Settings> {
    let v = json!({
        "dispatcher": {"items": items},
        "security": {"verify_signatures": false},
        "dispatch": dispatch,
    });
    let (raw, _) = parse(v).expect("parses");
    Arc::new(build(raw))
}

/// Settings for these tests. The module runs twice: as `tests` with the
/// default (full passes over a small queue) and as `incremental_tests` with
/// every pass incremental, which must decide the same.
fn build(mut raw: crate::config::RawConfig) -> Settings {
    if module_path!().ends_with("incremental_tests") {
        raw.dispatch.incremental_pass_above = 0;
    }
    Settings::from_raw(raw).expect("valid")
}

#[derive(Default)]
struct MemStore {
    events: Vec<(UnplannedEvent, bool)>,
    payloads: HashMap<EventId, String>,
    payload_reads: usize,
    dispatches: BTreeMap<i64, (OpenDispatch, Option<String>)>,
    aborted: HashSet<EventId>,
    fail_record: bool,
    reject_record: bool,
    /// Pass commits still to refuse (a query error, as a deadlock would be).
    fail_commits: u32,
    /// The state as of `begin_pass`, put back by `abort_pass`.
    snapshot: Option<Snapshot>,
    clock: ManualClock,
    /// Dispatches with a run cancellation (`CancelRun` of a non-queued one).
    run_cancels: Vec<i64>,
}

/// What a pass transaction of [`MemStore`] can roll back.
type Snapshot = (
    Vec<(UnplannedEvent, bool)>,
    BTreeMap<i64, (OpenDispatch, Option<String>)>,
    HashSet<EventId>,
    Vec<i64>,
);

impl MemStore {
    fn snapshot(&self) -> Snapshot {
        (
            self.events.clone(),
            self.dispatches.clone(),
            self.aborted.clone(),
            self.run_cancels.clone(),
        )
    }

    fn add_event(&mut self, id: i64, pr: i64, action: &str) {
        let e = UnplannedEvent {
            id: EventId(id),
            action: action.into(),
            pr: PullRequestRef {
                repository: "o/r".into(),
                number: pr,
            },
            headers: vec![("X-GitHub-Event".into(), "pull_request".into())],
            labels: None,
        };
        self.payloads.insert(EventId(id), format!("{{\"n\":{id}}}"));
        self.events.push((e, false));
    }

    fn states(&self) -> Vec<(i64, DispatchState)> {
        self.dispatches
            .values()
            .map(|(d, _)| (d.event_id.0, d.state))
            .collect()
    }
}

impl DispatchStore for MemStore {
    async fn begin_pass(&mut self) -> Result<OffsetDateTime, StoreError> {
        self.snapshot = Some(self.snapshot());
        Ok(self.clock.now())
    }

    async fn commit_pass(&mut self) -> Result<(), StoreError> {
        if self.fail_commits > 0 {
            self.fail_commits -= 1;
            self.abort_pass().await;
            return Err(StoreError::Query("deadlock detected".into()));
        }
        self.snapshot = None;
        Ok(())
    }

    async fn abort_pass(&mut self) {
        if let Some((events, dispatches, aborted, run_cancels)) = self.snapshot.take() {
            self.events = events;
            self.dispatches = dispatches;
            self.aborted = aborted;
            self.run_cancels = run_cancels;
        }
    }

    async fn database_now(&mut self) -> Result<OffsetDateTime, StoreError> {
        Ok(self.clock.now())
    }

    async fn claimed_listener_event_ids(
        &mut self,
        ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        Ok(self
            .dispatches
            .values()
            .filter_map(|(d, _)| d.listener_event_id.clone())
            .filter(|id| ids.contains(id))
            .collect())
    }

    async fn event_payloads(
        &mut self,
        ids: &[EventId],
    ) -> Result<HashMap<EventId, String>, StoreError> {
        self.payload_reads += ids.len();
        Ok(ids
            .iter()
            .filter_map(|id| Some((*id, self.payloads.get(id)?.clone())))
            .collect())
    }

    async fn unplanned_events(&mut self, limit: usize) -> Result<Vec<UnplannedEvent>, StoreError> {
        Ok(self
            .events
            .iter()
            .filter(|(_, planned)| !planned)
            .take(limit)
            .map(|(e, _)| e.clone())
            .collect())
    }

    async fn open_dispatches(
        &mut self,
        cutoff: OffsetDateTime,
        _extras: OpenExtras,
    ) -> Result<Vec<OpenDispatch>, StoreError> {
        let all: Vec<&OpenDispatch> = self.dispatches.values().map(|(d, _)| d).collect();
        Ok(all
            .iter()
            .filter(|d| match d.state {
                DispatchState::Queued | DispatchState::Triggering => true,
                DispatchState::Triggered => d.triggered_at.is_some_and(|t| t > cutoff),
                _ => false,
            })
            .map(|d| {
                let mut d = (*d).clone();
                d.has_newer = all
                    .iter()
                    .any(|o| o.pr == d.pr && o.item == d.item && o.event_id > d.event_id);
                d
            })
            .collect())
    }

    async fn apply_intake(
        &mut self,
        plan: &IntakePlan,
        now: OffsetDateTime,
    ) -> Result<Vec<OpenDispatch>, StoreError> {
        let mut created = Vec::new();
        for (e, planned) in &mut self.events {
            if plan.planned.contains(&e.id) {
                *planned = true;
            }
        }
        self.aborted.extend(plan.aborted.iter().copied());
        for id in &plan.superseded {
            if let Some((d, _)) = self.dispatches.get_mut(&id.0) {
                d.state = DispatchState::Cancelled;
            }
        }
        for NewDispatch {
            event_id,
            item,
            pool,
            pr,
            queue_position,
            state,
            ..
        } in plan.new_dispatches.iter().cloned()
        {
            let id = self.dispatches.len() as i64 + 1;
            let d = OpenDispatch {
                id: DispatchId(id),
                event_id,
                item,
                pool,
                pr,
                state,
                queue_position,
                attempts: 0,
                next_attempt_at: now,
                listener_event_id: None,
                trigger_started_at: None,
                triggered_at: None,
                has_newer: false,
                labels: Vec::new(),
                recent_triggers: Vec::new(),
            };
            if d.state == DispatchState::Queued {
                created.push(d.clone());
            }
            self.dispatches.insert(id, (d, None));
        }
        Ok(created)
    }

    async fn begin_triggers(
        &mut self,
        ids: &[DispatchId],
        now: OffsetDateTime,
    ) -> Result<Vec<TriggerJob>, StoreError> {
        let mut jobs = Vec::new();
        for id in ids {
            let (d, _) = self
                .dispatches
                .get_mut(&id.0)
                .ok_or(StoreError::LostLeadership)?;
            if d.state != DispatchState::Queued {
                continue;
            }
            d.state = DispatchState::Triggering;
            d.attempts += 1;
            d.trigger_started_at = Some(now);
            let (e, _) = self
                .events
                .iter()
                .find(|(e, _)| e.id == d.event_id)
                .ok_or(StoreError::LostLeadership)?;
            let payload = self.payloads.get(&e.id).cloned().unwrap_or_default();
            jobs.push(TriggerJob {
                dispatch: d.id,
                event_id: d.event_id,
                item: d.item.clone(),
                pr: d.pr.clone(),
                attempt: d.attempts,
                // Every test event is stored at T0.
                accepted_at: T0,
                payload,
                headers: e.headers.clone(),
                resign: false,
            });
        }
        Ok(jobs)
    }

    async fn record_outcomes(
        &mut self,
        outcomes: &[DispatchOutcome],
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        if self.reject_record {
            return Err(StoreError::Query("value rejected".into()));
        }
        if self.fail_record {
            return Err(StoreError::Unavailable("database went away".into()));
        }
        for o in outcomes {
            let (d, err) = self
                .dispatches
                .get_mut(&o.id().0)
                .ok_or(StoreError::LostLeadership)?;
            match o {
                DispatchOutcome::Triggered {
                    listener_event_id, ..
                } => {
                    d.state = DispatchState::Triggered;
                    d.listener_event_id = listener_event_id.clone();
                    d.triggered_at = Some(now);
                }
                DispatchOutcome::Retry {
                    next_attempt_at,
                    error,
                    ..
                } => {
                    d.state = DispatchState::Queued;
                    d.next_attempt_at = *next_attempt_at;
                    *err = Some(error.clone());
                }
                DispatchOutcome::Failed { error, .. } => {
                    d.state = DispatchState::Failed;
                    *err = Some(error.clone());
                }
                DispatchOutcome::Confirmed {
                    listener_event_id, ..
                } => {
                    d.state = DispatchState::Confirmed;
                    if d.listener_event_id.is_none() {
                        d.listener_event_id = listener_event_id.clone();
                    }
                }
                DispatchOutcome::Superseded { .. } => d.state = DispatchState::Cancelled,
                DispatchOutcome::Unanswered { error, .. } => *err = Some(error.clone()),
                DispatchOutcome::Moved { pool, .. } => d.pool = pool.clone(),
                DispatchOutcome::CancelRun { .. } if d.state == DispatchState::Queued => {
                    d.state = DispatchState::Cancelled;
                }
                DispatchOutcome::CancelRun { id, .. } => self.run_cancels.push(id.0),
            }
        }
        Ok(())
    }

    async fn paused_pools(
        &mut self,
    ) -> Result<std::collections::BTreeSet<crate::config::PoolKey>, StoreError> {
        Ok(std::collections::BTreeSet::new())
    }

    async fn reconcile_labels(
        &mut self,
        _now: OffsetDateTime,
        _scope: crate::ports::LabelScope<'_>,
    ) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn cancel_candidates(
        &mut self,
        query: &crate::ports::CancelQuery,
    ) -> Result<Vec<crate::ports::CancelCandidate>, StoreError> {
        let all: Vec<&OpenDispatch> = self.dispatches.values().map(|(d, _)| d).collect();
        let closes: Vec<(&PullRequestRef, EventId)> = self
            .events
            .iter()
            .filter(|(e, planned)| *planned && e.action == "closed")
            .map(|(e, _)| (&e.pr, e.id))
            .collect();
        Ok(all
            .iter()
            .filter(|d| match d.state {
                DispatchState::Queued => true,
                DispatchState::Triggering | DispatchState::Triggered => {
                    !self.run_cancels.contains(&d.id.0)
                }
                DispatchState::Confirmed => {
                    !self.run_cancels.contains(&d.id.0)
                        && d.listener_event_id
                            .as_ref()
                            .is_some_and(|e| query.running_event_ids.contains(e))
                }
                _ => false,
            })
            .map(|d| crate::ports::CancelCandidate {
                id: d.id,
                event_id: d.event_id,
                item: d.item.clone(),
                pool: d.pool.clone(),
                state: d.state,
                newer_event: all
                    .iter()
                    .filter(|o| o.pr == d.pr && o.item == d.item && o.event_id > d.event_id)
                    .map(|o| o.event_id)
                    .max(),
                closed_by: closes
                    .iter()
                    .filter(|(pr, id)| **pr == d.pr && *id > d.event_id)
                    .map(|(_, id)| *id)
                    .max(),
            })
            .filter(|c| c.newer_event.is_some() || c.closed_by.is_some())
            .collect())
    }
}

struct FixedCapacity(Mutex<PoolState>);

impl CapacitySource for FixedCapacity {
    fn pool_state(&self, _pool: &PoolSpec) -> PoolState {
        self.0
            .lock()
            .map(|s| s.clone())
            .unwrap_or(PoolState::Unknown {
                reason: "poisoned".into(),
            })
    }

    async fn changed(&self) {}
}

/// `n` unfinished runs; `seen` are the eventIDs of the pool's runs, created at T0.
fn running(n: u32, seen: &[&str]) -> FixedCapacity {
    runs_at(n, seen, T0)
}

fn runs_at(n: u32, seen: &[&str], created: OffsetDateTime) -> FixedCapacity {
    FixedCapacity(Mutex::new(PoolState::Known {
        running: n,
        runs: seen
            .iter()
            .map(|s| RunView {
                event_id: Some((*s).to_owned()),
                dispatch_id: None,
                created_at: Some(created),
                ..RunView::default()
            })
            .collect(),
    }))
}

/// One pass the way the runtime drives it: plan and commit, POST every job,
/// record the answers.
async fn pass<C: CapacitySource, T: Trigger>(
    engine: &mut Engine,
    store: &mut MemStore,
    capacity: &C,
    trigger: &T,
) -> Result<PassReport, StoreError> {
    let (mut report, jobs) = engine.plan_pass(store, capacity).await?;
    let mut results = Vec::new();
    for job in jobs {
        let result = send_trigger(trigger, engine.callback_url(&job), &job).await;
        results.push((job, result));
    }
    let recorded = engine.record_triggers(store, results).await?;
    report.triggered += recorded.triggered;
    report.retried += recorded.retried;
    report.failed += recorded.failed;
    report.next_wakeup = earliest(report.next_wakeup, recorded.next_wakeup);
    Ok(report)
}

/// Records every POST; answers from a script (default: 202 with eventID `ev-<n>`).
#[derive(Default)]
struct ScriptedTrigger {
    calls: Mutex<Vec<String>>,
    failures_left: Mutex<u32>,
    /// Answers lost after sending (timeouts) before the failures.
    lost_left: Mutex<u32>,
}

impl Trigger for ScriptedTrigger {
    async fn trigger(&self, request: TriggerRequest<'_>) -> Result<Option<String>, TriggerError> {
        let mut calls = self.calls.lock().map_err(|_| TriggerError::Timeout)?;
        calls.push(request.payload.to_owned());
        let mut lost = self.lost_left.lock().map_err(|_| TriggerError::Timeout)?;
        if *lost > 0 {
            *lost -= 1;
            return Err(TriggerError::Timeout);
        }
        let mut failures = self
            .failures_left
            .lock()
            .map_err(|_| TriggerError::Timeout)?;
        if *failures > 0 {
            *failures -= 1;
            return Err(TriggerError::Rejected {
                status: 503,
                body: "busy".into(),
            });
        }
        Ok(Some(format!("ev-{}", calls.len())))
    }
}

struct ManualClock(Mutex<OffsetDateTime>);

impl Default for ManualClock {
    fn default() -> Self {
        Self(Mutex::new(T0))
    }
}

impl ManualClock {
    fn advance(&self, d: Duration) {
        if let Ok(mut t) = self.0.lock() {
            *t += d;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        self.0.lock().map(|t| *t).unwrap_or(T0)
    }
}

#[test]
fn dispatches_within_capacity_and_supersedes_waiting_events() {
    let mut engine = Engine::new(settings(1, 5));
    let mut store = MemStore::default();
    let trigger = ScriptedTrigger::default();
    store.add_event(1, 10, "opened");
    store.add_event(2, 11, "opened");
    store.add_event(3, 12, "closed");

    let report = block_on(pass(&mut engine, &mut store, &running(0, &[]), &trigger)).expect("pass");
    assert_eq!(
        (report.planned, report.aborted, report.triggered),
        (3, 1, 1)
    );
    assert_eq!(
        store.states(),
        [(1, DispatchState::Triggered), (2, DispatchState::Queued)]
    );
    assert!(store.aborted.contains(&EventId(3)));

    // A push to PR 11 while it waits: the newer event takes its place.
    store.add_event(4, 11, "synchronize");
    let report = block_on(pass(
        &mut engine,
        &mut store,
        &running(1, &["ev-1"]),
        &trigger,
    ))
    .expect("pass");
    assert_eq!(
        (report.superseded, report.triggered, report.confirmed),
        (1, 0, 1)
    );
    assert_eq!(
        store.states(),
        [
            (1, DispatchState::Confirmed),
            (2, DispatchState::Cancelled),
            (4, DispatchState::Queued)
        ]
    );

    // The run finishes: the slot goes to the superseding event, with the old position.
    let report = block_on(pass(
        &mut engine,
        &mut store,
        &running(0, &["ev-1"]),
        &trigger,
    ))
    .expect("pass");
    assert_eq!(report.triggered, 1);
    let calls = trigger.calls.lock().map(|c| c.clone()).unwrap_or_default();
    assert_eq!(calls, ["{\"n\":1}", "{\"n\":4}"]);
}

#[test]
fn failed_triggers_back_off_then_fail() {
    let mut engine = Engine::new(settings(2, 3));
    let mut store = MemStore::default();
    let trigger = ScriptedTrigger {
        failures_left: Mutex::new(10),
        ..Default::default()
    };
    store.add_event(1, 10, "opened");
    let cap = running(0, &[]);

    let report = block_on(pass(&mut engine, &mut store, &cap, &trigger)).expect("pass");
    assert_eq!(report.retried, 1);
    let wake = report.next_wakeup.expect("retry scheduled");
    assert!(wake > T0 && wake <= T0 + Duration::from_secs(1), "{wake}");

    // Not due yet: nothing is sent.
    let report = block_on(pass(&mut engine, &mut store, &cap, &trigger)).expect("pass");
    assert_eq!(report.retried, 0);

    store.clock.advance(Duration::from_secs(1));
    let report = block_on(pass(&mut engine, &mut store, &cap, &trigger)).expect("pass");
    assert_eq!(report.retried, 1);
    store.clock.advance(Duration::from_secs(2));
    let report = block_on(pass(&mut engine, &mut store, &cap, &trigger)).expect("pass");
    assert_eq!(report.failed, 1);
    assert_eq!(store.states(), [(1, DispatchState::Failed)]);
    let err = store.dispatches[&1].1.clone().unwrap_or_default();
    assert!(
        err.contains("gave up after 3 attempts") && err.contains("503"),
        "{err}"
    );
    assert_eq!(trigger.calls.lock().map(|c| c.len()).unwrap_or_default(), 3);
}

#[test]
fn unknown_kubernetes_state_triggers_nothing() {
    let mut engine = Engine::new(settings(5, 5));
    let mut store = MemStore::default();
    let trigger = ScriptedTrigger::default();
    store.add_event(1, 10, "opened");
    let down = FixedCapacity(Mutex::new(PoolState::Unknown {
        reason: "api unreachable".into(),
    }));
    let report = block_on(pass(&mut engine, &mut store, &down, &trigger)).expect("pass");
    assert_eq!(report.triggered, 0);
    assert_eq!(report.usage[0].blocked.as_deref(), Some("api unreachable"));
    assert!(
        trigger
            .calls
            .lock()
            .map(|c| c.is_empty())
            .unwrap_or_default()
    );
    let report = block_on(pass(&mut engine, &mut store, &running(0, &[]), &trigger)).expect("pass");
    assert_eq!(report.triggered, 1);
}

#[test]
fn outcomes_that_could_not_be_recorded_are_recorded_next_pass() {
    let mut engine = Engine::new(settings(1, 5));
    let mut store = MemStore::default();
    let trigger = ScriptedTrigger::default();
    store.add_event(1, 10, "opened");
    store.fail_record = true;
    assert!(block_on(pass(&mut engine, &mut store, &running(0, &[]), &trigger)).is_err());
    assert_eq!(store.states(), [(1, DispatchState::Triggering)]);

    store.fail_record = false;
    let report = block_on(pass(&mut engine, &mut store, &running(0, &[]), &trigger)).expect("pass");
    assert_eq!(
        report.triggered, 0,
        "the accepted trigger is not sent again"
    );
    assert_eq!(store.states(), [(1, DispatchState::Triggered)]);
    assert_eq!(trigger.calls.lock().map(|c| c.len()).unwrap_or_default(), 1);
}

/// One event triggered by a pass, and the listener's answer to it (202),
/// not recorded yet.
fn answered_first_trigger() -> (
    Engine,
    MemStore,
    ScriptedTrigger,
    FixedCapacity,
    TriggerResult,
) {
    let mut engine = Engine::new(settings(1, 5));
    let mut store = MemStore::default();
    let trigger = ScriptedTrigger::default();
    let cap = running(0, &[]);
    store.add_event(1, 10, "opened");
    let (_, mut jobs) = block_on(engine.pass(&mut store, &cap, Vec::new())).expect("pass");
    assert_eq!(jobs.len(), 1);
    let job = jobs.remove(0);
    let result = block_on(send_trigger(&trigger, engine.callback_url(&job), &job));
    (engine, store, trigger, cap, (job, result))
}

/// The way the runtime drives it: answers go to the next pass, which
/// records them in its own transaction; a pass that fails keeps them.
#[test]
fn answers_handed_to_a_failing_pass_are_recorded_by_the_next() {
    let (mut engine, mut store, trigger, cap, answer) = answered_first_trigger();
    store.fail_record = true;
    let failed = block_on(engine.pass(&mut store, &cap, vec![answer]));
    assert!(failed.is_err());
    assert_eq!(engine.unrecorded(), 1, "kept for the next pass");
    assert_eq!(store.states(), [(1, DispatchState::Triggering)]);

    store.fail_record = false;
    let (_, jobs) = block_on(engine.pass(&mut store, &cap, Vec::new())).expect("pass");
    assert!(jobs.is_empty(), "the accepted trigger is not sent again");
    assert_eq!(engine.unrecorded(), 0);
    assert_eq!(store.states(), [(1, DispatchState::Triggered)]);
    assert_eq!(trigger.calls.lock().map(|c| c.len()).unwrap_or_default(), 1);
}

/// A pass that keeps failing for another reason (here its commit) never
/// costs the answers it was handed: they are recorded on their own first.
#[test]
fn answers_survive_passes_that_keep_failing_for_another_reason() {
    let (mut engine, mut store, trigger, cap, answer) = answered_first_trigger();
    store.fail_commits = 5;
    let mut answers = vec![answer];
    for _ in 0..5 {
        let failed = block_on(engine.pass(&mut store, &cap, std::mem::take(&mut answers)));
        assert!(failed.is_err());
    }
    assert_eq!(
        store.states(),
        [(1, DispatchState::Triggered)],
        "recorded despite five failed passes"
    );
    assert_eq!(engine.unrecorded(), 0);
    let (_, jobs) = block_on(engine.pass(&mut store, &cap, Vec::new())).expect("pass");
    assert!(jobs.is_empty());
    assert_eq!(trigger.calls.lock().map(|c| c.len()).unwrap_or_default(), 1);
}

/// At shutdown the runtime records the answers still in flight; those kept
/// from a failed pass go with them.
#[test]
fn recording_answers_alone_records_those_kept_from_a_failed_pass() {
    let (mut engine, mut store, _, cap, answer) = answered_first_trigger();
    store.fail_commits = 1;
    assert!(block_on(engine.pass(&mut store, &cap, vec![answer])).is_err());
    assert_eq!(store.states(), [(1, DispatchState::Triggering)]);
    block_on(engine.record_triggers(&mut store, Vec::new())).expect("recorded");
    assert_eq!(store.states(), [(1, DispatchState::Triggered)]);
    assert_eq!(engine.unrecorded(), 0);
}

#[test]
fn payloads_are_read_only_for_filters() {
    let trigger = ScriptedTrigger::default();

    let mut engine = Engine::new(settings(5, 5));
    let mut store = MemStore::default();
    store.add_event(1, 10, "opened");
    block_on(pass(&mut engine, &mut store, &running(0, &[]), &trigger)).expect("pass");
    assert_eq!(store.payload_reads, 0, "no filter, no payload read");

    let mut engine = Engine::new(settings_with_filter(5, 5, Some("body.n == 2")));
    let mut store = MemStore::default();
    store.add_event(1, 10, "opened");
    store.add_event(2, 11, "opened");
    store.add_event(3, 12, "closed");
    let report = block_on(pass(&mut engine, &mut store, &running(0, &[]), &trigger)).expect("pass");
    assert_eq!(
        store.payload_reads, 2,
        "only events a filtered item could match"
    );
    assert_eq!((report.aborted, report.triggered), (2, 1));
    assert_eq!(store.states(), [(2, DispatchState::Triggered)]);
}

#[test]
fn a_retried_dispatch_loses_to_a_newer_event() {
    let mut engine = Engine::new(settings(2, 5));
    let mut store = MemStore::default();
    let trigger = ScriptedTrigger {
        failures_left: Mutex::new(1),
        ..Default::default()
    };
    let cap = running(0, &[]);
    store.add_event(1, 10, "opened");
    let report = block_on(pass(&mut engine, &mut store, &cap, &trigger)).expect("pass");
    assert_eq!(report.retried, 1, "first attempt fails; back to the queue");

    // A push arrives while the first event waits for its retry.
    store.add_event(2, 10, "synchronize");
    store.clock.advance(Duration::from_secs(2));
    block_on(pass(&mut engine, &mut store, &cap, &trigger)).expect("pass");
    block_on(pass(&mut engine, &mut store, &cap, &trigger)).expect("pass");
    assert_eq!(
        store.states(),
        [(1, DispatchState::Cancelled), (2, DispatchState::Triggered)]
    );
    let calls = trigger.calls.lock().map(|c| c.clone()).unwrap_or_default();
    assert_eq!(
        calls,
        ["{\"n\":1}", "{\"n\":2}"],
        "the old event is not retried"
    );
}

#[test]
fn outcomes_the_database_keeps_rejecting_are_dropped_not_replayed_forever() {
    let mut engine = Engine::new(settings(1, 5));
    let mut store = MemStore::default();
    let trigger = ScriptedTrigger::default();
    let cap = running(0, &[]);
    store.add_event(1, 10, "opened");
    store.reject_record = true;
    // The failing pass, then two failing replays; the third replay gives up.
    for _ in 0..3 {
        assert!(block_on(pass(&mut engine, &mut store, &cap, &trigger)).is_err());
    }
    assert!(block_on(pass(&mut engine, &mut store, &cap, &trigger)).is_ok());
    store.reject_record = false;
    store.add_event(2, 11, "opened");
    let report = block_on(pass(&mut engine, &mut store, &cap, &trigger)).expect("pass resumes");
    assert_eq!(report.planned, 1);
    assert_eq!(
        store.states()[0],
        (1, DispatchState::Triggering),
        "left for orphan recovery"
    );
}

#[test]
fn a_lost_answer_keeps_the_slot_and_the_run_confirms_it() {
    let mut engine = Engine::new(settings(1, 5));
    let mut store = MemStore::default();
    let trigger = ScriptedTrigger {
        lost_left: Mutex::new(1),
        ..Default::default()
    };
    store.add_event(1, 10, "opened");
    store.add_event(2, 11, "opened");
    let report = block_on(pass(&mut engine, &mut store, &running(0, &[]), &trigger)).expect("pass");
    assert_eq!(report.triggered, 0);
    assert_eq!(
        store.states(),
        [(1, DispatchState::Triggering), (2, DispatchState::Queued)],
        "the slot stays reserved for the unanswered trigger"
    );

    // Past the in-flight bound, before the reservation ends: still reserved,
    // nothing retried, nothing else triggered.
    store.clock.advance(Duration::from_secs(30));
    block_on(pass(&mut engine, &mut store, &running(0, &[]), &trigger)).expect("pass");
    assert_eq!(trigger.calls.lock().map(|c| c.len()).unwrap_or_default(), 1);

    // Its run appears, created after the trigger, with an eventID nobody holds.
    let cap = runs_at(1, &["ev-lost"], T0 + Duration::from_secs(1));
    let report = block_on(pass(&mut engine, &mut store, &cap, &trigger)).expect("pass");
    assert_eq!(report.confirmed, 1);
    assert_eq!(store.dispatches[&1].0.state, DispatchState::Confirmed);
    assert_eq!(
        store.dispatches[&1].0.listener_event_id.as_deref(),
        Some("ev-lost")
    );
    assert_eq!(
        trigger.calls.lock().map(|c| c.len()).unwrap_or_default(),
        1,
        "never sent twice; the pool is full with the confirmed run"
    );
}

#[test]
fn an_unanswered_trigger_without_a_run_is_retried_after_the_reservation() {
    let mut engine = Engine::new(settings(1, 5));
    let mut store = MemStore::default();
    let trigger = ScriptedTrigger {
        lost_left: Mutex::new(1),
        ..Default::default()
    };
    store.add_event(1, 10, "opened");
    block_on(pass(&mut engine, &mut store, &running(0, &[]), &trigger)).expect("pass");
    // A run that existed before the trigger is no evidence.
    let cap = runs_at(0, &["ev-old"], T0 - Duration::from_secs(5));
    store.clock.advance(Duration::from_secs(119));
    block_on(pass(&mut engine, &mut store, &cap, &trigger)).expect("pass");
    assert_eq!(store.states(), [(1, DispatchState::Triggering)]);
    store.clock.advance(Duration::from_secs(1));
    let report = block_on(pass(&mut engine, &mut store, &cap, &trigger)).expect("pass");
    assert_eq!(report.retried, 1);
    block_on(pass(&mut engine, &mut store, &cap, &trigger)).expect("pass");
    assert_eq!(store.states(), [(1, DispatchState::Triggered)]);
    assert_eq!(trigger.calls.lock().map(|c| c.len()).unwrap_or_default(), 2);
}

#[test]
fn results_carried_over_from_a_lost_session_are_recorded_by_the_next_pass() {
    let mut engine = Engine::new(settings(2, 5));
    let mut store = MemStore::default();
    let trigger = ScriptedTrigger::default();
    store.add_event(1, 10, "opened");
    let (_, jobs) = block_on(engine.plan_pass(&mut store, &running(0, &[]))).expect("plan");
    assert_eq!(jobs.len(), 1);
    // The session died while the POST was in flight; its answer arrives later.
    let answer = Ok(Some("ev-9".to_owned()));
    engine.carry_over(vec![(jobs[0].clone(), answer)], T0);
    assert_eq!(engine.unrecorded(), 1);
    let report = block_on(pass(&mut engine, &mut store, &running(1, &[]), &trigger)).expect("pass");
    assert_eq!(report.triggered, 0);
    assert_eq!(engine.unrecorded(), 0);
    assert_eq!(store.states(), [(1, DispatchState::Triggered)]);
    assert_eq!(
        store.dispatches[&1].0.listener_event_id.as_deref(),
        Some("ev-9")
    );
    assert!(
        trigger
            .calls
            .lock()
            .map(|c| c.is_empty())
            .unwrap_or_default()
    );
}

use super::test_log::logged;

#[test]
fn every_state_change_is_logged_once_with_its_reason_and_fields() {
    let lines = logged(|| {
        let mut engine = Engine::new(settings(1, 5));
        let mut store = MemStore::default();
        let trigger = ScriptedTrigger::default();
        store.add_event(1, 10, "opened");
        store.add_event(2, 11, "opened");
        store.add_event(3, 12, "closed");
        block_on(pass(&mut engine, &mut store, &running(0, &[]), &trigger)).expect("pass");
        store.add_event(4, 11, "synchronize");
        block_on(pass(
            &mut engine,
            &mut store,
            &running(1, &["ev-1"]),
            &trigger,
        ))
        .expect("pass");
        block_on(pass(
            &mut engine,
            &mut store,
            &running(0, &["ev-1"]),
            &trigger,
        ))
        .expect("pass");
    });
    let changes: Vec<(String, String)> = lines
        .iter()
        .filter(|l| {
            l["target"]
                .as_str()
                .is_some_and(|t| t.ends_with("engine::journal"))
        })
        .map(|l| {
            (
                l["message"].as_str().unwrap_or_default().to_owned(),
                l["event"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("event aborted", "3"),
        ("dispatch queued", "1"),
        ("dispatch queued", "2"),
        ("dispatch triggering", "1"),
        ("dispatch triggered", "1"),
        ("dispatch cancelled", "2"),
        ("dispatch queued", "4"),
        ("dispatch confirmed", "1"),
        ("dispatch triggering", "4"),
        ("dispatch triggered", "4"),
    ];
    let mut got = changes.clone();
    got.sort();
    let mut want: Vec<(String, String)> = expected
        .iter()
        .map(|(m, e)| ((*m).to_owned(), (*e).to_owned()))
        .collect();
    want.sort();
    assert_eq!(got, want, "each change exactly once: {changes:?}");
    for l in lines.iter().filter(|l| {
        l["target"]
            .as_str()
            .is_some_and(|t| t.ends_with("engine::journal"))
    }) {
        assert!(l["reason"].is_string(), "a reason: {l}");
        assert_eq!(l["repo"], "o/r", "{l}");
        assert!(l["pr"].is_i64(), "{l}");
        if l["message"] != "event aborted" {
            assert_eq!(l["pool"], "ns/p", "{l}");
            assert_eq!(l["item"], "ops", "{l}");
            assert!(l["dispatch"].is_string(), "{l}");
        }
    }
}

fn settings_cancelling(cap: u32) -> Arc<Settings> {
    let mut ops = item("ops", "p", cap);
    ops["cancel_superseded"] = json!(true);
    ops["cancel_on_close"] = json!(true);
    with_items(&[ops], &json!({}))
}

#[test]
fn closing_clears_the_queue_and_a_push_cancels_the_running_run_keeping_its_slot() {
    let mut engine = Engine::new(settings_cancelling(1));
    let mut store = MemStore::default();
    let trigger = ScriptedTrigger::default();
    store.add_event(1, 10, "opened");
    store.add_event(2, 11, "opened");
    let report = block_on(pass(&mut engine, &mut store, &running(0, &[]), &trigger)).expect("pass");
    assert_eq!(report.triggered, 1);
    // PR 11 is closed (no item matches `closed`): its queued dispatch is cancelled.
    store.add_event(3, 11, "closed");
    let report = block_on(pass(
        &mut engine,
        &mut store,
        &running(1, &["ev-1"]),
        &trigger,
    ))
    .expect("pass");
    assert_eq!((report.aborted, report.run_cancels), (1, 1));
    assert_eq!(
        store.states(),
        [(1, DispatchState::Confirmed), (2, DispatchState::Cancelled)]
    );
    // A push to PR 10 while its run is running: the run is to be cancelled
    // (the store marks the dispatch `cancelled`; this one only records the
    // request), its run keeps the slot (capacity 1 is full), the newer one waits.
    store.add_event(4, 10, "synchronize");
    let report = block_on(pass(
        &mut engine,
        &mut store,
        &running(1, &["ev-1"]),
        &trigger,
    ))
    .expect("pass");
    assert_eq!((report.run_cancels, report.triggered), (1, 0));
    assert_eq!(store.run_cancels, [1]);
    assert_eq!(
        store.states(),
        [
            (1, DispatchState::Confirmed),
            (2, DispatchState::Cancelled),
            (4, DispatchState::Queued)
        ]
    );
    // Decided once.
    let report = block_on(pass(
        &mut engine,
        &mut store,
        &running(1, &["ev-1"]),
        &trigger,
    ))
    .expect("pass");
    assert_eq!((report.run_cancels, report.triggered), (0, 0));
    // Its run finished: the newer one starts.
    let report = block_on(pass(&mut engine, &mut store, &running(0, &[]), &trigger)).expect("pass");
    assert_eq!(report.triggered, 1);
    assert_eq!(trigger.calls.lock().map(|c| c.len()).unwrap_or(0), 2);
}

#[test]
fn without_the_flags_nothing_is_cancelled() {
    let mut engine = Engine::new(settings(1, 5));
    let mut store = MemStore::default();
    let trigger = ScriptedTrigger::default();
    store.add_event(1, 10, "opened");
    store.add_event(2, 11, "opened");
    store.add_event(3, 11, "closed");
    store.add_event(4, 10, "synchronize");
    let report = block_on(pass(&mut engine, &mut store, &running(0, &[]), &trigger)).expect("pass");
    assert_eq!(report.run_cancels, 0);
    assert!(store.run_cancels.is_empty());
    // Newest-wins as always (4 takes 1's place); the close cancels nothing.
    assert_eq!(
        store.states(),
        [
            (1, DispatchState::Cancelled),
            (2, DispatchState::Queued),
            (4, DispatchState::Triggered)
        ]
    );
}

#[test]
fn a_closed_event_an_item_matches_is_planned_as_usual() {
    let v = json!({
        "dispatcher": {"items": [
            {
                "name": "ops", "events": ["opened"], "full_repository_name": "o/r",
                "callback_url": "http://el:8080/",
                "capacity": {"type": "ocp_tekton", "pipeline_name": "p", "max_capacity": 0, "namespace": "ns"},
                "cancel_on_close": true,
            },
            {
                "name": "release", "events": ["closed"], "full_repository_name": "o/r",
                "callback_url": "http://el:8081/",
                "capacity": {"type": "ocp_tekton", "pipeline_name": "rel", "max_capacity": 1, "namespace": "ns"},
                "cancel_on_close": true,
            },
        ]},
        "security": {"verify_signatures": false},
    });
    let (raw, _) = parse(v).expect("parses");
    let mut engine = Engine::new(Arc::new(build(raw)));
    let mut store = MemStore::default();
    let trigger = ScriptedTrigger::default();
    // ops is paused (capacity 0): PR 10's dispatch waits.
    store.add_event(1, 10, "opened");
    block_on(pass(&mut engine, &mut store, &running(0, &[]), &trigger)).expect("pass");
    store.add_event(2, 10, "closed");
    let report = block_on(pass(&mut engine, &mut store, &running(0, &[]), &trigger)).expect("pass");
    // The waiting ops dispatch is cancelled; the release runs.
    assert_eq!((report.run_cancels, report.triggered), (1, 1));
    assert_eq!(
        store.states(),
        [(1, DispatchState::Cancelled), (2, DispatchState::Triggered)]
    );
}

fn settings_on(name: &str, pipeline: &str, cap: u32) -> Arc<Settings> {
    with_items(&[item(name, pipeline, cap)], &json!({}))
}

/// A reload moves waiting work to its item's new pool (where it may start
/// at once) and fails work whose item is gone; incremental passes find it
/// through `misplaced`, full passes in the open set.
#[test]
fn a_reload_moves_waiting_work_to_the_new_pool_and_fails_orphaned_items() {
    let mut engine = Engine::new(settings_on("ops", "p", 1));
    let mut store = MemStore::default();
    let trigger = ScriptedTrigger::default();
    store.add_event(1, 10, "opened");
    store.add_event(2, 11, "opened");
    // One foreign run fills the pool: both wait.
    let full = running(1, &[]);
    block_on(pass(&mut engine, &mut store, &full, &trigger)).expect("pass");
    assert_eq!(
        store.states(),
        [(1, DispatchState::Queued), (2, DispatchState::Queued)]
    );

    // The item moves to pipeline q with room for one more.
    engine.reload(settings_on("ops", "q", 2));
    let report = block_on(pass(&mut engine, &mut store, &full, &trigger)).expect("pass");
    assert_eq!(report.triggered, 1, "{report:?}");
    assert_eq!(
        store.states(),
        [(1, DispatchState::Triggered), (2, DispatchState::Queued)]
    );
    assert!(
        store
            .dispatches
            .values()
            .all(|(d, _)| d.pool == PoolKey("ns/q".into())),
        "both moved"
    );

    // The item is renamed: the waiting one can never run.
    engine.reload(settings_on("ops-renamed", "q", 2));
    let report = block_on(pass(&mut engine, &mut store, &full, &trigger)).expect("pass");
    assert_eq!(report.failed, 1, "{report:?}");
    assert_eq!(store.states()[1], (2, DispatchState::Failed));
}
