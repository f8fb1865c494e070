//! The leader/standby loop: contend for leadership; while leading, run
//! engine passes whenever something may have changed (a stored delivery, a
//! PipelineRun change, a trigger answer, a retry or reservation deadline, the
//! slow safety timer), heartbeat while idle, and push labels beside it.
//!
//! A term ends when the session is lost (connection gone, pass timed out,
//! heartbeat failed) or on shutdown. Trigger tasks outlive the term: their
//! answers are awaited and recorded in the next term (lost session) or
//! before returning (shutdown).
//!
//! Every pass runs in a `dispatch_pass` span whose `pass` field counts the
//! passes of this process (across terms), so the engine's journal lines and
//! the pass summary of one pass share it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dispatcher_core::engine::{Engine, PassReport, TriggerResult};
use dispatcher_core::ports::{ActiveSession, CapacitySource, LeaderElection, StoreError, Trigger};
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::pacing::PassPacer;
use crate::status::{Role, until};
use crate::triggers::Triggers;
use crate::{
    CancelWorkerFactory, CatchUpWorkerFactory, LabelWorkerFactory, RetentionWorkerFactory, Runtime,
};
use dispatcher_metrics::{FinishStatus, PoolGauges};

/// Pause after a pass failed for a reason other than losing the database.
const PASS_ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// Slack on top of the trigger timeout when waiting for POSTs in flight.
const DRAIN_SLACK: Duration = Duration::from_secs(2);
/// How long a trigger answer or a PipelineRun change may wait for the next
/// pass while no work waits for a slot. Such a pass is bookkeeping (recording
/// a 202, confirming a run); run at once it is what a delivery arriving a
/// moment later queues behind (each pass is some twenty round trips). Waiting
/// this long, it rides along with the delivery's own pass, or with others
/// like it. With work waiting, a freed slot is used at once.
const BOOKKEEPING_DELAY: Duration = Duration::from_millis(20);

/// Why a leadership term ended.
enum TermEnd {
    /// The session (and the lock with it) is gone.
    Lost,
    /// Shutdown was requested.
    Shutdown,
}

pub(crate) async fn run<L, C, T>(runtime: Runtime<L, C, T>, mut shutdown: watch::Receiver<bool>)
where
    L: LeaderElection,
    C: CapacitySource + 'static,
    T: Trigger + Clone + 'static,
{
    let Runtime {
        settings,
        election,
        capacity,
        trigger,
        labels,
        statuses,
        retention,
        catch_up,
        run_cancels,
        preparation,
        status,
        metrics,
        updates,
    } = runtime;
    // Without reloads, a channel nobody sends on (kept open, so waiting on
    // it never fires).
    let (keep_open, fixed) = watch::channel(Arc::clone(&settings));
    let updates = updates.unwrap_or(fixed);
    if let Some((what, step)) = preparation
        && !prepare(&what, &step, &settings, &status, &mut shutdown).await
    {
        status.set_role(Role::Stopping);
        return;
    }
    let parts = Parts {
        settings: updates,
        _keep_open: keep_open,
        capacity,
        trigger: Arc::new(trigger),
        labels,
        statuses,
        retention,
        catch_up,
        run_cancels,
        status: Arc::clone(&status),
        metrics: Arc::clone(&metrics),
        passes: AtomicU64::new(0),
    };
    for pool in settings.pools.values().filter(|p| p.is_paused()) {
        tracing::warn!(pool = %pool.key, "max_capacity is 0: this pool is paused; its events queue and nothing is dispatched");
    }
    let mut engine = Engine::new(Arc::clone(&settings));
    let mut triggers = Triggers::new(Arc::clone(&metrics), Arc::clone(&settings));
    let retry = settings.dispatch.leader_retry_interval;
    let mut announced_standby = false;
    while !*shutdown.borrow() {
        status.tick();
        match election.try_lead().await {
            Ok(Some(session)) => {
                announced_standby = false;
                status.set_problem(None);
                status.set_role(Role::Leader);
                metrics.set_leader(true);
                tracing::info!("this replica is now the active dispatcher");
                let end = parts
                    .term(&mut engine, session, &mut triggers, &mut shutdown)
                    .await;
                metrics.set_leader(false);
                match end {
                    TermEnd::Shutdown => {
                        status.set_role(Role::Stopping);
                        return;
                    }
                    TermEnd::Lost => {
                        status.set_role(Role::Standby);
                        parts.keep_answers(&mut engine, &mut triggers).await;
                        continue;
                    }
                }
            }
            Ok(None) => {
                if !announced_standby {
                    tracing::info!("another replica is dispatching; standing by");
                    announced_standby = true;
                }
                status.set_problem(None);
                status.set_role(Role::Standby);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot contend for the dispatcher lock; retrying");
                status.set_problem(Some(format!("cannot reach the database: {e}")));
                status.set_role(Role::Standby);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            _ = shutdown.changed() => {}
        }
    }
    status.set_role(Role::Stopping);
    if engine.unrecorded() > 0 {
        tracing::warn!(
            outcomes = engine.unrecorded(),
            "stopping with trigger outcomes unrecorded; the active replica settles them from their PipelineRuns"
        );
    }
}

/// Runs the preparation step until it succeeds; false when shutdown came first.
async fn prepare(
    what: &str,
    step: &crate::Preparation,
    settings: &dispatcher_core::config::Settings,
    status: &crate::DispatcherStatus,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let retry = settings
        .dispatch
        .leader_retry_interval
        .max(Duration::from_secs(1));
    while !*shutdown.borrow() {
        status.tick();
        match step().await {
            Ok(()) => {
                status.set_problem(None);
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed; retrying");
                status.set_problem(Some(format!("{what}: {e}")));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            _ = shutdown.changed() => {}
        }
    }
    false
}

/// The runtime's parts, shared by every term.
struct Parts<C, T> {
    /// The configuration in force (reloads arrive here).
    settings: watch::Receiver<Arc<dispatcher_core::config::Settings>>,
    _keep_open: watch::Sender<Arc<dispatcher_core::config::Settings>>,
    capacity: Arc<C>,
    trigger: Arc<T>,
    labels: Option<LabelWorkerFactory>,
    /// The queue status worker (`github.queue_status`), started like the label worker.
    statuses: Option<LabelWorkerFactory>,
    retention: Option<RetentionWorkerFactory>,
    catch_up: Option<CatchUpWorkerFactory>,
    run_cancels: Option<CancelWorkerFactory>,
    status: Arc<crate::DispatcherStatus>,
    metrics: Arc<dispatcher_metrics::Metrics>,
    /// Passes started by this process, for the `dispatch_pass` span.
    passes: AtomicU64,
}

impl<C, T> Parts<C, T>
where
    C: CapacitySource + 'static,
    T: Trigger + 'static,
{
    /// One leadership term.
    async fn term<S: ActiveSession>(
        &self,
        engine: &mut Engine,
        mut session: S,
        triggers: &mut Triggers,
        shutdown: &mut watch::Receiver<bool>,
    ) -> TermEnd {
        // Fixed for the term: the heartbeat follows the session's idle timeout.
        let heartbeat_every = self.current().dispatch.heartbeat_interval();
        let mut updates = self.settings.clone();
        updates.borrow_and_update();
        let mut updates_open = true;
        let lease = session.lease();
        let label_wake = Arc::new(Notify::new());
        let _label_worker = self.labels.as_ref().map(|start| {
            AbortOnDrop(tokio::spawn(start(
                Arc::clone(&label_wake),
                Arc::clone(&self.metrics),
            )))
        });
        let status_wake = Arc::new(Notify::new());
        let _status_worker = self.statuses.as_ref().map(|start| {
            AbortOnDrop(tokio::spawn(start(
                Arc::clone(&status_wake),
                Arc::clone(&self.metrics),
            )))
        });
        let _retention_worker = self
            .retention
            .as_ref()
            .map(|start| AbortOnDrop(tokio::spawn(start(Arc::clone(&self.metrics)))));
        let _catch_up_worker = self
            .catch_up
            .as_ref()
            .map(|start| AbortOnDrop(tokio::spawn(start(Arc::clone(&self.metrics)))));
        let _cancel_worker = self
            .run_cancels
            .as_ref()
            .map(|start| AbortOnDrop(tokio::spawn(start(Arc::clone(&self.metrics)))));
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pacer = PassPacer::new(tokio::time::Instant::now());
        let mut answers: Vec<TriggerResult> = Vec::new();
        // Whether the last pass left work waiting for a slot (unknown after
        // a failed pass: then every wake-up counts).
        let mut work_waiting: bool;
        loop {
            if *shutdown.borrow() {
                return self.stop(engine, &mut session, triggers, answers).await;
            }
            let settings = self.current();
            if !engine.uses(&settings) {
                tracing::info!("dispatching with the reloaded configuration");
                engine.reload(Arc::clone(&settings));
                triggers.set_settings(Arc::clone(&settings));
            }
            let d = &settings.dispatch;
            // Batch a flood of wake-ups into fewer passes (dispatch.min_pass_interval).
            let wait = pacer.delay(tokio::time::Instant::now(), d.min_pass_interval);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            answers.extend(triggers.finished());
            let span = self.pass_span();
            let started = std::time::Instant::now();
            let pass = tokio::time::timeout(
                d.pass_timeout(),
                // Records the answers and plans, in one commit.
                engine.pass(&mut session, &*self.capacity, std::mem::take(&mut answers)),
            )
            .instrument(span.clone())
            .await;
            self.metrics.pass_finished(started.elapsed());
            let next_wakeup = match pass {
                Err(_) => {
                    tracing::error!(
                        timeout_secs = d.pass_timeout().as_secs(),
                        "dispatch pass timed out; giving up leadership"
                    );
                    return TermEnd::Lost;
                }
                Ok(Ok((report, jobs))) => {
                    // Work this pass starts is not waiting: the answers and
                    // PipelineRuns it brings are bookkeeping, not a slot to fill.
                    work_waiting = report.usage.iter().any(|u| u.left_waiting() > 0);
                    span.in_scope(|| self.after_pass(&report, &label_wake, &status_wake));
                    for job in jobs {
                        let url = engine.callback_url(&job).cloned();
                        triggers.spawn(&self.trigger, url, job, lease.clone(), report.now);
                    }
                    report
                        .next_wakeup
                        .map_or(d.safety_pass_interval, until)
                        .min(d.safety_pass_interval)
                }
                Ok(Err(StoreError::LostLeadership | StoreError::Unavailable(_))) => {
                    tracing::warn!("lost the database session; no longer the active dispatcher");
                    return TermEnd::Lost;
                }
                Ok(Err(e)) => {
                    work_waiting = true;
                    tracing::error!(error = %e, "dispatch pass failed; retrying");
                    if session.heartbeat().await.is_err() {
                        return TermEnd::Lost;
                    }
                    PASS_ERROR_BACKOFF
                }
            };
            let sleep = tokio::time::sleep(next_wakeup);
            tokio::pin!(sleep);
            let bookkeeping = |sleep: &mut std::pin::Pin<&mut tokio::time::Sleep>| {
                let due = tokio::time::Instant::now() + BOOKKEEPING_DELAY;
                if due < sleep.deadline() {
                    sleep.as_mut().reset(due);
                }
            };
            // Wait for a reason to run the next pass; heartbeats keep the session alive meanwhile.
            loop {
                self.status.tick();
                tokio::select! {
                    _ = shutdown.changed() => break,
                    woke = session.wait_for_wakeup() => {
                        if woke.is_err() {
                            tracing::warn!("lost the database session; no longer the active dispatcher");
                            return TermEnd::Lost;
                        }
                        break;
                    }
                    answer = triggers.next() => {
                        answers.push(answer);
                        if work_waiting {
                            break;
                        }
                        bookkeeping(&mut sleep);
                    }
                    () = self.capacity.changed() => {
                        if work_waiting {
                            break;
                        }
                        bookkeeping(&mut sleep);
                    }
                    () = &mut sleep => break,
                    // A reload: the next pass uses it (a raised capacity at once).
                    changed = updates.changed(), if updates_open => {
                        // The sender is gone: no more reloads, nothing to wait for.
                        updates_open = changed.is_ok();
                        if updates_open {
                            break;
                        }
                    }
                    _ = heartbeat.tick() => {
                        if let Err(e) = session.heartbeat().await {
                            tracing::warn!(error = %e, "heartbeat failed; no longer the active dispatcher");
                            return TermEnd::Lost;
                        }
                    }
                }
            }
        }
    }

    /// Shutdown while leading: no new triggers; wait for the POSTs already
    /// sent and record them so the next leader need not treat them as orphans.
    async fn stop<S: ActiveSession>(
        &self,
        engine: &mut Engine,
        session: &mut S,
        triggers: &mut Triggers,
        mut answers: Vec<TriggerResult>,
    ) -> TermEnd {
        self.status.set_role(Role::Stopping);
        tracing::info!(in_flight = triggers.len(), "stopping the dispatcher");
        let settings = self.current();
        let d = &settings.dispatch;
        let drain = triggers.drain(d.trigger_timeout + DRAIN_SLACK);
        tokio::pin!(drain);
        // Heartbeats keep the session (and the lock) while a slow answer is
        // awaited: PostgreSQL would end an idle session, and the answer could
        // not be recorded.
        let mut heartbeat = tokio::time::interval(d.heartbeat_interval());
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut alive = true;
        let drained = loop {
            tokio::select! {
                done = &mut drain => break done,
                _ = heartbeat.tick(), if alive => {
                    if let Err(e) = session.heartbeat().await {
                        tracing::warn!(error = %e, "heartbeat failed while waiting for trigger answers");
                        alive = false;
                    }
                }
            }
        };
        answers.extend(drained);
        if !answers.is_empty() {
            let recording = engine
                .record_triggers(session, answers)
                .instrument(self.pass_span());
            match recording.await {
                Ok(recorded) => {
                    self.metrics
                        .finished(FinishStatus::Processed, recorded.triggered);
                    self.metrics.finished(FinishStatus::Failed, recorded.failed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not record the last trigger answers; the next leader settles them from their PipelineRuns");
                }
            }
        }
        TermEnd::Shutdown
    }

    /// After a lost session: wait for the POSTs still in flight and keep
    /// their answers for the next term (each write is guarded by state and
    /// attempt, so one a newer leader has overtaken changes nothing).
    async fn keep_answers(&self, engine: &mut Engine, triggers: &mut Triggers) {
        if triggers.len() == 0 {
            return;
        }
        let answers = triggers
            .drain(self.current().dispatch.trigger_timeout + DRAIN_SLACK)
            .await;
        tracing::info!(
            answers = answers.len(),
            "keeping trigger answers that arrived after the session was lost"
        );
        engine.carry_over(answers, OffsetDateTime::now_utc());
    }

    /// The configuration in force now.
    fn current(&self) -> Arc<dispatcher_core::config::Settings> {
        Arc::clone(&self.settings.borrow())
    }

    /// The span of the next pass (or of the last recording at shutdown).
    fn pass_span(&self) -> tracing::Span {
        let pass = self.passes.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info_span!("dispatch_pass", pass)
    }

    fn after_pass(&self, report: &PassReport, label_wake: &Notify, status_wake: &Notify) {
        // Metrics first: whoever sees the pass in the status sees its gauges too.
        let now = OffsetDateTime::now_utc();
        for u in &report.usage {
            let oldest_queued_secs = u.oldest_waiting.map_or(0, |since| {
                u64::try_from((now - since).whole_seconds()).unwrap_or(0)
            });
            self.metrics.set_pool(
                &u.pool.0,
                PoolGauges {
                    capacity: u.max_capacity,
                    running: u.running,
                    reserved: u.reserved,
                    waiting: u.waiting,
                    oldest_queued_secs,
                },
            );
        }
        // Finishes this pass decided (counted once: a pass is committed before its report).
        for (status, count) in [
            (FinishStatus::Processed, report.triggered),
            (FinishStatus::Cancelled, report.superseded),
            (FinishStatus::Aborted, report.aborted),
            (FinishStatus::Failed, report.failed),
        ] {
            self.metrics.finished(status, count);
        }
        let waiting = report
            .usage
            .iter()
            .map(|u| (u.pool.0.clone(), u.waiting))
            .collect();
        self.status.pass_done(waiting);
        if report.labels_changed > 0 {
            label_wake.notify_one();
        }
        if report.statuses_changed > 0 {
            status_wake.notify_one();
        }
        let busy =
            report.planned + report.triggered + report.retried + report.failed + report.confirmed
                > 0;
        if busy {
            tracing::info!(
                planned = report.planned,
                aborted = report.aborted,
                superseded = report.superseded,
                triggered = report.triggered,
                retried = report.retried,
                failed = report.failed,
                confirmed = report.confirmed,
                "dispatch pass"
            );
        }
        for u in &report.usage {
            tracing::debug!(pool = %u.pool, running = ?u.running, reserved = u.reserved, max = u.max_capacity, waiting = u.waiting, "pool usage");
        }
    }
}

/// Aborts a task when dropped (the label worker lives only while leading).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
