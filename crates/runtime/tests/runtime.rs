//! The runtime against real PostgreSQL (`PgLeaderElection`, one database per
//! test) with in-memory fakes of the other ports: a capacity source whose
//! pool state the test sets, and a scripted EventListener that records every
//! request and can hold its answers until the test releases them.
//!
//! Covers: queued events are triggered within pool capacity, each trigger
//! carrying its dispatch id; answers that arrive after the leader's database
//! session was terminated are recorded in the next term with the listener's
//! own eventIDs, and nothing is sent twice; shutdown waits for a held answer
//! and records it before `run` returns, also when the answer takes longer
//! than the session's idle timeout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dispatcher_core::config::{PoolKey, PoolSpec, Settings, parse};
use dispatcher_core::domain::{DispatchId, DispatchRecord, DispatchState, EventId};
use dispatcher_core::intake::NewEvent;
use dispatcher_core::ports::{
    CapacitySource, EventRepository, PoolState, RecordOutcome, RunView, Trigger, TriggerError,
    TriggerRequest,
};
use dispatcher_runtime::{DispatcherStatus, Role, Runtime};
use dispatcher_store::{Database, LeaderOptions, PgLeaderElection, PoolOptions};
use dispatcher_testdb::TestDatabase;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};

/// Upper bound of every wait in these tests.
const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` until it yields a value, failing after [`DEADLINE`].
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Pool state set by the test; `changed()` fires on every `set`.
struct FakeCapacity {
    pools: Mutex<HashMap<PoolKey, PoolState>>,
    changed: Notify,
}

impl FakeCapacity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            pools: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        })
    }

    fn set(&self, pool: &PoolKey, running: u32, runs: Vec<RunView>) {
        self.pools
            .lock()
            .unwrap()
            .insert(pool.clone(), PoolState::Known { running, runs });
        self.changed.notify_one();
    }
}

impl CapacitySource for FakeCapacity {
    fn pool_state(&self, pool: &PoolSpec) -> PoolState {
        self.pools
            .lock()
            .unwrap()
            .get(&pool.key)
            .cloned()
            .unwrap_or(PoolState::Unknown {
                reason: "not set by the test".to_owned(),
            })
    }

    fn changed(&self) -> impl Future<Output = ()> + Send + '_ {
        self.changed.notified()
    }
}

/// One POST as the fake EventListener saw it.
#[derive(Debug, Clone)]
struct Sent {
    dispatch: DispatchId,
    url: String,
    payload: String,
    /// The `eventID` this POST is answered with.
    event_id: String,
}

/// A scripted EventListener: records every request and answers 202 with an
/// eventID of its own, at once or, while held, once released.
#[derive(Clone)]
struct FakeTrigger {
    inner: Arc<TriggerState>,
}

struct TriggerState {
    sent: Mutex<Vec<Sent>>,
    count: watch::Sender<usize>,
    /// Answers go out while true.
    open: watch::Sender<bool>,
}

impl FakeTrigger {
    fn new() -> Self {
        Self {
            inner: Arc::new(TriggerState {
                sent: Mutex::new(Vec::new()),
                count: watch::Sender::new(0),
                open: watch::Sender::new(true),
            }),
        }
    }

    fn hold(&self) {
        self.inner.open.send_replace(false);
    }

    fn release(&self) {
        self.inner.open.send_replace(true);
    }

    fn sent(&self) -> Vec<Sent> {
        self.inner.sent.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived.
    async fn wait_for_requests(&self, n: usize) {
        let mut count = self.inner.count.subscribe();
        let arrived = tokio::time::timeout(DEADLINE, count.wait_for(|c| *c >= n)).await;
        assert!(
            matches!(arrived, Ok(Ok(_))),
            "{n} trigger requests never arrived (got {})",
            self.sent().len()
        );
    }
}

impl Trigger for FakeTrigger {
    async fn trigger(&self, request: TriggerRequest<'_>) -> Result<Option<String>, TriggerError> {
        let sent = {
            let mut all = self.inner.sent.lock().unwrap();
            let sent = Sent {
                dispatch: request.dispatch,
                url: request.url.to_string(),
                payload: request.payload.to_owned(),
                event_id: format!("listener-{}-{}", all.len() + 1, request.dispatch),
            };
            all.push(sent.clone());
            sent
        };
        self.inner.count.send_modify(|c| *c += 1);
        let mut open = self.inner.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
        Ok(Some(sent.event_id))
    }
}

const CALLBACK: &str = "http://127.0.0.1:9/ops";

fn settings(max_capacity: u32, trigger_timeout: &str) -> Arc<Settings> {
    let (raw, unknown) = parse(serde_json::json!({
        "dispatcher": {"items": [{
            "name": "ops",
            "events": ["opened", "synchronize"],
            "full_repository_name": "o/r",
            "callback_url": CALLBACK,
            "capacity": {"type": "ocp_tekton", "pipeline_name": "ops-pipeline",
                         "max_capacity": max_capacity, "namespace": "ns"},
        }]},
        "security": {"github_webhook_secret": "test-secret"},
        "dispatch": {
            "trigger_timeout": trigger_timeout,
            "failover_timeout": "3s",
            "leader_retry_interval": "100ms",
        },
    }))
    .unwrap();
    assert!(unknown.is_empty(), "{unknown:?}");
    Arc::new(Settings::from_raw(raw).unwrap())
}

/// A runtime on its own database, leading through `PgLeaderElection`.
struct Harness {
    test: TestDatabase,
    db: Database,
    settings: Arc<Settings>,
    pool: PoolKey,
    capacity: Arc<FakeCapacity>,
    trigger: FakeTrigger,
    status: Arc<DispatcherStatus>,
    metrics: Arc<dispatcher_http::Metrics>,
    stop: watch::Sender<bool>,
    runtime: Option<Runtime<PgLeaderElection, FakeCapacity, FakeTrigger>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    /// A runtime that is not running yet: store events, then [`Harness::start`].
    fn new(max_capacity: u32) -> Self {
        Self::with_trigger_timeout(max_capacity, "2s")
    }

    fn with_trigger_timeout(max_capacity: u32, trigger_timeout: &str) -> Self {
        let test = TestDatabase::new();
        let db = Database::connect(test.url(), PoolOptions::default()).unwrap();
        let settings = settings(max_capacity, trigger_timeout);
        let pool = settings.pools.keys().next().unwrap().clone();
        let capacity = FakeCapacity::new();
        capacity.set(&pool, 0, Vec::new());
        let trigger = FakeTrigger::new();
        let d = &settings.dispatch;
        let idle = d.leader_idle_timeout();
        // As the binary derives them from the settings.
        let options = LeaderOptions {
            idle_session_timeout: idle,
            heartbeat_interval: d.heartbeat_interval(),
            lease_margin: idle * 3 / 10,
        };
        let election = PgLeaderElection::new(db.clone(), false, options);
        let runtime = Runtime::new(
            Arc::clone(&settings),
            election,
            Arc::clone(&capacity),
            trigger.clone(),
        );
        let metrics = Arc::new(dispatcher_http::Metrics::new("test"));
        let runtime = runtime.with_metrics(Arc::clone(&metrics));
        Self {
            metrics,
            test,
            db,
            pool,
            capacity,
            trigger,
            status: runtime.status(),
            settings,
            stop: watch::Sender::new(false),
            runtime: Some(runtime),
            task: None,
        }
    }

    fn start(&mut self) {
        let runtime = self.runtime.take().expect("started once");
        self.task = Some(tokio::spawn(runtime.run(self.stop.subscribe())));
    }

    async fn event(&self, pr: i64) -> EventId {
        let stored = self
            .db
            .events()
            .record(NewEvent {
                delivery_id: format!("delivery-{pr}"),
                event_type: "pull_request".to_owned(),
                action: "opened".to_owned(),
                repository_full_name: "o/r".to_owned(),
                pull_request_number: pr,
                labels: None,
                payload: format!("{{\"action\":\"opened\",\"number\":{pr}}}"),
                headers: vec![("X-GitHub-Event".to_owned(), "pull_request".to_owned())],
            })
            .await
            .unwrap();
        match stored {
            RecordOutcome::Created(e) => e.id,
            other => panic!("expected a new row, got {other:?}"),
        }
    }

    /// The one dispatch of `event`, once it has one.
    async fn dispatch(&self, event: EventId) -> Option<DispatchRecord> {
        let detail = self.db.events().detail(event).await.unwrap()?;
        assert!(detail.dispatches.len() <= 1, "{detail:?}");
        detail.dispatches.into_iter().next()
    }

    async fn wait_for_state(&self, event: EventId, state: DispatchState) -> DispatchRecord {
        eventually(
            &format!("event {event}'s dispatch to be {state}"),
            || async { self.dispatch(event).await.filter(|d| d.state == state) },
        )
        .await
    }

    async fn wait_for_role(&self, role: Role) {
        eventually(&format!("the runtime to be {role:?}"), || async {
            (self.status.role() == role).then_some(())
        })
        .await;
    }

    /// Queued dispatches as of the last pass (its readiness report).
    fn waiting(&self) -> Option<u64> {
        let report = self.status.report(&self.settings, &*self.capacity);
        report.details["pools"][0]["queued"].as_u64()
    }

    /// Waits until a pass has seen `n` queued dispatches, failing as soon as
    /// more than `sent_at_most` triggers were sent.
    async fn wait_for_waiting(&self, n: u64, sent_at_most: usize) {
        eventually(&format!("a pass with {n} queued"), || async {
            let sent = self.trigger.sent().len();
            assert!(
                sent <= sent_at_most,
                "{sent} triggers sent, capacity allows {sent_at_most}"
            );
            (self.waiting() == Some(n)).then_some(())
        })
        .await;
    }

    /// When the last pass ended, as the readiness report shows it.
    fn last_pass(&self) -> serde_json::Value {
        let report = self.status.report(&self.settings, &*self.capacity);
        report.details["last_pass_at"].clone()
    }

    /// Stops the runtime and waits for `run` to return.
    async fn shutdown(&mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let stopped = tokio::time::timeout(DEADLINE, task).await;
            assert!(matches!(stopped, Ok(Ok(()))), "run did not return");
        }
    }

    /// A plain SQL client on the test database.
    async fn sql(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(self.test.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }
}

/// Backend pids holding an advisory lock in this database (the leader's session).
async fn lock_holders(client: &tokio_postgres::Client) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_locks
              WHERE locktype = 'advisory' AND granted
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// A finished or running PipelineRun created from `sent`.
fn run_of(sent: &Sent) -> RunView {
    RunView {
        event_id: Some(sent.event_id.clone()),
        dispatch_id: None,
        created_at: Some(OffsetDateTime::now_utc()),
        ..RunView::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_events_are_triggered_within_capacity_with_their_dispatch_ids() {
    let mut h = Harness::new(2);
    let mut events = Vec::new();
    for pr in 1..=4 {
        events.push(h.event(pr).await);
    }
    h.start();

    // Two slots: the two oldest go out, the others wait.
    h.trigger.wait_for_requests(2).await;
    for event in &events[..2] {
        h.wait_for_state(*event, DispatchState::Triggered).await;
    }
    // A pass after both answers: the triggered ones hold their slots.
    h.wait_for_waiting(2, 2).await;
    let text = h.metrics.encode();
    let value = |series: String| {
        text.lines()
            .find_map(|line| line.strip_prefix(series.as_str())?.strip_prefix(' '))
            .map(|v| v.parse::<f64>().unwrap())
    };
    let pool = &h.pool.0;
    assert_eq!(
        value("webhook_dispatcher_leader".into()),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(format!(
            "webhook_dispatcher_pool_capacity{{pool=\"{pool}\"}}"
        )),
        Some(2.0),
        "max_capacity: {text}"
    );
    assert_eq!(
        value(format!("webhook_dispatcher_queue_depth{{pool=\"{pool}\"}}")),
        Some(2.0)
    );
    assert_eq!(
        value(format!(
            "webhook_dispatcher_kubernetes_up{{pool=\"{pool}\"}}"
        )),
        Some(1.0)
    );
    let oldest = value(format!(
        "webhook_dispatcher_oldest_queued_seconds{{pool=\"{pool}\"}}"
    ));
    assert!(
        oldest.is_some_and(|s| (0.0..60.0).contains(&s)),
        "two wait since the test began: {text}"
    );
    assert_eq!(h.trigger.sent().len(), 2);
    for event in &events[2..] {
        assert_eq!(
            h.dispatch(*event).await.unwrap().state,
            DispatchState::Queued
        );
    }

    // Both runs show up; one of them already finished: one slot frees.
    let sent = h.trigger.sent();
    h.capacity
        .set(&h.pool, 1, sent.iter().map(run_of).collect());
    h.trigger.wait_for_requests(3).await;
    h.wait_for_state(events[2], DispatchState::Triggered).await;
    h.wait_for_waiting(1, 3).await;
    assert_eq!(h.trigger.sent().len(), 3);
    for event in &events[..2] {
        h.wait_for_state(*event, DispatchState::Confirmed).await;
    }

    // Everything finished: the last one goes out.
    let sent = h.trigger.sent();
    h.capacity
        .set(&h.pool, 0, sent.iter().map(run_of).collect());
    h.trigger.wait_for_requests(4).await;
    h.wait_for_state(events[3], DispatchState::Triggered).await;
    h.wait_for_waiting(0, 4).await;

    let sent = h.trigger.sent();
    assert_eq!(sent.len(), 4, "{sent:?}");
    for (pr, (event, request)) in (1..).zip(events.iter().zip(&sent)) {
        let dispatch = h.dispatch(*event).await.unwrap();
        assert_eq!(
            request.dispatch, dispatch.id,
            "oldest first, own dispatch id"
        );
        assert_eq!(request.url, CALLBACK);
        assert!(
            request.payload.contains(&format!("\"number\":{pr}")),
            "{request:?}"
        );
        assert_eq!(
            dispatch.listener_event_id.as_deref(),
            Some(request.event_id.as_str())
        );
        assert_eq!(dispatch.attempts, 1);
    }
    h.shutdown().await;
    // Every accepted trigger is recorded by the time `run` returns.
    let text = h.metrics.encode();
    assert!(
        text.contains("webhook_dispatcher_events_finished_total{status=\"processed\"} 4\n"),
        "{text}"
    );
    assert!(!text.contains("status=\"failed\""), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_after_a_terminated_session_are_recorded_in_the_next_term() {
    let mut h = Harness::new(5);
    h.trigger.hold();
    let events = [h.event(1).await, h.event(2).await];
    h.start();
    h.trigger.wait_for_requests(2).await;
    for event in events {
        h.wait_for_state(event, DispatchState::Triggering).await;
    }
    h.wait_for_role(Role::Leader).await;

    // Terminate the session holding the dispatcher lock.
    let client = h.sql().await;
    let holders = lock_holders(&client).await;
    assert_eq!(holders.len(), 1, "one leader session: {holders:?}");
    let terminated = client
        .query_one("SELECT pg_terminate_backend($1)", &[&holders[0]])
        .await
        .unwrap();
    assert!(terminated.get::<_, bool>(0));
    // The runtime notices, and waits for the POSTs in flight as a standby.
    h.wait_for_role(Role::Standby).await;
    for event in events {
        assert_eq!(
            h.dispatch(event).await.unwrap().state,
            DispatchState::Triggering
        );
    }

    h.trigger.release();
    let sent = h.trigger.sent();
    let answered: HashMap<DispatchId, String> = sent
        .iter()
        .map(|s| (s.dispatch, s.event_id.clone()))
        .collect();
    for event in events {
        let dispatch = h.wait_for_state(event, DispatchState::Triggered).await;
        assert_eq!(
            dispatch.listener_event_id.as_ref(),
            answered.get(&dispatch.id),
            "the listener's own answer is recorded"
        );
        assert_eq!(dispatch.attempts, 1);
        assert!(dispatch.last_error.is_none(), "{dispatch:?}");
    }
    // Recorded by this runtime's new term, on a new session.
    assert_eq!(h.status.role(), Role::Leader);
    let new_holders = lock_holders(&client).await;
    assert_eq!(new_holders.len(), 1);
    assert_ne!(new_holders[0], holders[0]);

    // Another pass of the new term, with both answers recorded: nothing re-sent.
    let recorded_by = h.last_pass();
    h.capacity.set(&h.pool, 0, Vec::new());
    eventually("another pass", || async {
        (h.last_pass() != recorded_by).then_some(())
    })
    .await;
    h.shutdown().await;
    let sent = h.trigger.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    let distinct: HashSet<DispatchId> = sent.iter().map(|s| s.dispatch).collect();
    assert_eq!(distinct.len(), 2, "{sent:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_waits_for_a_held_answer_and_records_it() {
    let mut h = Harness::new(2);
    h.trigger.hold();
    let event = h.event(1).await;
    h.start();
    h.trigger.wait_for_requests(1).await;
    h.wait_for_state(event, DispatchState::Triggering).await;

    h.stop.send_replace(true);
    h.wait_for_role(Role::Stopping).await;
    let task = h.task.take().unwrap();
    assert!(!task.is_finished(), "run returned with an answer in flight");
    assert_eq!(
        h.dispatch(event).await.unwrap().state,
        DispatchState::Triggering
    );

    h.trigger.release();
    let stopped = tokio::time::timeout(DEADLINE, task).await;
    assert!(matches!(stopped, Ok(Ok(()))), "run did not return");
    let dispatch = h.dispatch(event).await.unwrap();
    assert_eq!(dispatch.state, DispatchState::Triggered, "{dispatch:?}");
    let sent = h.trigger.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        dispatch.listener_event_id.as_deref(),
        Some(sent[0].event_id.as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_keeps_the_session_while_an_answer_outlasts_its_idle_timeout() {
    // Room to wait out the session's idle timeout (2 s) within the time
    // shutdown waits for answers (the trigger timeout and a slack).
    let mut h = Harness::with_trigger_timeout(2, "5s");
    h.trigger.hold();
    let event = h.event(1).await;
    h.start();
    h.trigger.wait_for_requests(1).await;
    h.wait_for_state(event, DispatchState::Triggering).await;
    h.wait_for_role(Role::Leader).await;
    let client = h.sql().await;
    let leader = lock_holders(&client).await;
    assert_eq!(leader.len(), 1);

    h.stop.send_replace(true);
    h.wait_for_role(Role::Stopping).await;
    let stopping: String = client
        .query_one("SELECT clock_timestamp()::text", &[])
        .await
        .unwrap()
        .get(0);
    // PostgreSQL ends a session idle for `idle_session_timeout`: wait until the
    // leader's session has shown activity later than that after shutdown began.
    let idle = format!(
        "{} milliseconds",
        h.settings.dispatch.leader_idle_timeout().as_millis()
    );
    eventually(
        "the leader's session to outlive its idle timeout",
        || async {
            let rows = client
                .query(
                    "SELECT state_change > $2::text::timestamptz + $3::text::interval
                   FROM pg_stat_activity WHERE pid = $1",
                    &[&leader[0], &stopping, &idle],
                )
                .await
                .unwrap();
            assert_eq!(
                rows.len(),
                1,
                "the leader's session ended while shutdown waited for an answer"
            );
            rows[0].get::<_, bool>(0).then_some(())
        },
    )
    .await;
    assert_eq!(lock_holders(&client).await, leader, "still the leader");

    h.trigger.release();
    let task = h.task.take().unwrap();
    let stopped = tokio::time::timeout(DEADLINE, task).await;
    assert!(matches!(stopped, Ok(Ok(()))), "run did not return");
    let dispatch = h.dispatch(event).await.unwrap();
    assert_eq!(dispatch.state, DispatchState::Triggered, "{dispatch:?}");
    assert_eq!(
        dispatch.listener_event_id.as_deref(),
        Some(h.trigger.sent()[0].event_id.as_str())
    );
}

/// A retention store that counts passes and deletes one event per pass.
#[derive(Clone, Default)]
struct CountingRetention {
    passes: Arc<Mutex<u32>>,
}

impl dispatcher_core::ports::RetentionStore for CountingRetention {
    async fn delete_finished(
        &self,
        _: Duration,
        _: u32,
    ) -> Result<dispatcher_core::retention::DeletedBatch, dispatcher_core::ports::StoreError> {
        *self.passes.lock().unwrap() += 1;
        Ok(dispatcher_core::retention::DeletedBatch {
            events: 1,
            label_rows: 0,
        })
    }

    async fn drop_payloads(
        &self,
        _: Duration,
        _: u32,
    ) -> Result<u64, dispatcher_core::ports::StoreError> {
        Ok(2)
    }

    async fn preview(
        &self,
        _: &dispatcher_core::retention::RetentionPolicy,
    ) -> Result<dispatcher_core::retention::RetentionPreview, dispatcher_core::ports::StoreError>
    {
        unreachable!("the runtime never previews")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_runs_on_the_active_replica_only_and_stops_with_it() {
    let mut h = Harness::new(1);
    let store = CountingRetention::default();
    // Shorter than the configuration allows (1m): the runtime takes any policy.
    let policy = dispatcher_core::retention::RetentionPolicy {
        max_age: Duration::from_secs(1),
        payload_max_age: Some(Duration::from_millis(500)),
        interval: Duration::from_millis(50),
        batch_size: 10,
    };
    h.runtime = h
        .runtime
        .take()
        .map(|r| r.with_retention(store.clone(), policy));
    // Another session holds the lock: this replica stands by and prunes nothing.
    let other =
        h.db.try_lead(false, LeaderOptions::default())
            .await
            .unwrap()
            .expect("the test leads first");
    h.start();
    h.wait_for_role(Role::Standby).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*store.passes.lock().unwrap(), 0, "a standby pruned");
    drop(other);
    h.wait_for_role(Role::Leader).await;
    eventually("two retention passes", || async {
        (*store.passes.lock().unwrap() >= 2).then_some(())
    })
    .await;
    let text = h.metrics.encode();
    let sample = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    assert!(sample("webhook_dispatcher_retention_deleted_events_total ") >= 2.0);
    assert!(sample("webhook_dispatcher_retention_dropped_payloads_total ") >= 4.0);
    assert!(sample("webhook_dispatcher_retention_last_run_timestamp_seconds ") > 1.7e9);
    h.shutdown().await;
    let after = *store.passes.lock().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        *store.passes.lock().unwrap(),
        after,
        "pruned after the term ended"
    );
}
