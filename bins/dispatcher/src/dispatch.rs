//! The dispatch loop: contend for leadership; while leading, run engine
//! passes whenever something may have changed (a stored delivery, a
//! PipelineRun change, a retry or reservation deadline, the slow safety
//! timer) and push label changes to GitHub beside it.

use std::sync::Arc;
use std::time::Duration;

use dispatcher_capacity::{EventListenerClient, KubeCapacity};
use dispatcher_core::config::Settings;
use dispatcher_core::engine::{Engine, PassReport, TriggerReport, send_trigger};
use dispatcher_core::labels::{LABEL_BATCH, run_label_pass};
use dispatcher_core::ports::{StoreError, SystemClock, TriggerError, TriggerJob};
use dispatcher_github::GithubLabels;
use dispatcher_store::{Database, LeaderSession, PgLabels};
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc, watch};

use crate::status::{DispatcherStatus, Role};

/// A finished POST: the job and what the EventListener said.
type TriggerResult = (TriggerJob, Result<Option<String>, TriggerError>);

/// Pause after a pass failed for a reason other than losing the database.
const PASS_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Everything the loop needs.
pub(crate) struct Dispatcher {
    /// Validated configuration.
    pub(crate) settings: Arc<Settings>,
    /// The database.
    pub(crate) db: Database,
    /// Pool usage.
    pub(crate) capacity: Arc<KubeCapacity>,
    /// EventListener client.
    pub(crate) trigger: EventListenerClient,
    /// GitHub labels, when a token is configured.
    pub(crate) github: Option<GithubLabels>,
    /// Shared status for readiness.
    pub(crate) status: Arc<DispatcherStatus>,
}

fn until(t: OffsetDateTime) -> Duration {
    let d = t - OffsetDateTime::now_utc();
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

impl Dispatcher {
    /// Runs until `shutdown` turns true.
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut engine = Engine::new(Arc::clone(&self.settings));
        let retry = self.settings.dispatch.leader_retry_interval;
        let mut announced_standby = false;
        while !*shutdown.borrow() {
            match self.db.try_lead(self.github.is_some()).await {
                Ok(Some(session)) => {
                    announced_standby = false;
                    self.status.set_role(Role::Leader);
                    tracing::info!("this replica is now the active dispatcher");
                    self.lead(&mut engine, session, &mut shutdown).await;
                    self.status.set_role(Role::Standby);
                    continue;
                }
                Ok(None) => {
                    if !announced_standby {
                        tracing::info!("another replica is dispatching; standing by");
                        announced_standby = true;
                    }
                    self.status.set_role(Role::Standby);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot contend for the dispatcher lock");
                    self.status.set_role(Role::Standby);
                }
            }
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn lead(
        &self,
        engine: &mut Engine,
        mut session: LeaderSession,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let label_wake = Arc::new(Notify::new());
        let _label_worker = self.github.clone().map(|github| {
            AbortOnDrop(tokio::spawn(label_worker(
                self.db.labels(),
                github,
                Arc::clone(&label_wake),
            )))
        });
        let capacity_changed = self.capacity.changed();
        let safety = self.settings.dispatch.safety_pass_interval;
        let min_interval = self.settings.dispatch.min_pass_interval;
        let mut last_pass = tokio::time::Instant::now() - min_interval;
        // POSTs run as tasks so a slow EventListener never holds up other pools;
        // their results come back here and are recorded before the next pass.
        let (results_tx, mut results_rx) = mpsc::unbounded_channel::<TriggerResult>();
        let mut in_flight = 0usize;
        let mut finished: Vec<TriggerResult> = Vec::new();
        loop {
            // Batch a flood of wake-ups into fewer passes (see dispatch.min_pass_interval).
            tokio::time::sleep_until(last_pass + min_interval).await;
            last_pass = tokio::time::Instant::now();
            while let Ok(result) = results_rx.try_recv() {
                finished.push(result);
            }
            in_flight -= finished.len();
            let next_wakeup = match self
                .pass(engine, &mut session, std::mem::take(&mut finished))
                .await
            {
                Ok((report, jobs)) => {
                    self.after_pass(&report, &label_wake);
                    for job in jobs {
                        in_flight += 1;
                        self.send(engine, job, results_tx.clone());
                    }
                    report.next_wakeup.map_or(safety, until).min(safety)
                }
                Err(StoreError::LostLeadership | StoreError::Unavailable(_)) => {
                    tracing::warn!("lost the database connection; no longer the active dispatcher");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "dispatch pass failed; retrying");
                    if session.check().await.is_err() {
                        return;
                    }
                    PASS_ERROR_BACKOFF
                }
            };
            tokio::select! {
                woke = session.wait_for_wakeup() => if woke.is_err() {
                    tracing::warn!("lost the database connection; no longer the active dispatcher");
                    return;
                },
                Some(result) = results_rx.recv() => finished.push(result),
                () = capacity_changed.notified() => {}
                () = tokio::time::sleep(next_wakeup) => {}
                _ = shutdown.changed() => {
                    tracing::info!(in_flight, "stopping the dispatcher");
                    let received = std::mem::take(&mut finished);
                    self.finish_in_flight(engine, &mut session, &mut results_rx, received, in_flight).await;
                    return;
                }
            }
        }
    }

    /// Records finished triggers, then plans and commits the next pass.
    async fn pass(
        &self,
        engine: &mut Engine,
        session: &mut LeaderSession,
        finished: Vec<TriggerResult>,
    ) -> Result<(PassReport, Vec<TriggerJob>), StoreError> {
        let recorded = if finished.is_empty() {
            TriggerReport::default()
        } else {
            engine
                .record_triggers(session, finished, &SystemClock)
                .await?
        };
        let (mut report, jobs) = engine
            .plan_pass(session, &*self.capacity, &SystemClock)
            .await?;
        report.triggered += recorded.triggered;
        report.retried += recorded.retried;
        report.failed += recorded.failed;
        report.next_wakeup = match (report.next_wakeup, recorded.next_wakeup) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok((report, jobs))
    }

    /// POSTs one job in its own task; the result is sent back to the loop.
    fn send(
        &self,
        engine: &Engine,
        job: TriggerJob,
        results: mpsc::UnboundedSender<TriggerResult>,
    ) {
        let trigger = self.trigger.clone();
        let url = engine.callback_url(&job).cloned();
        tokio::spawn(async move {
            let result = send_trigger(&trigger, url.as_ref(), &job).await;
            let _ = results.send((job, result));
        });
    }

    /// On shutdown, waits for POSTs already sent (each is bounded by the
    /// trigger timeout) and records them, so the next leader does not have to
    /// treat them as orphans and send them again.
    async fn finish_in_flight(
        &self,
        engine: &mut Engine,
        session: &mut LeaderSession,
        results: &mut mpsc::UnboundedReceiver<TriggerResult>,
        mut finished: Vec<TriggerResult>,
        in_flight: usize,
    ) {
        let deadline = tokio::time::Instant::now()
            + self.settings.dispatch.trigger_timeout
            + Duration::from_secs(1);
        // `finished` holds results already received but not yet recorded.
        let mut in_flight = in_flight - finished.len();
        while in_flight > 0 {
            match tokio::time::timeout_at(deadline, results.recv()).await {
                Ok(Some(result)) => {
                    finished.push(result);
                    in_flight -= 1;
                }
                _ => break,
            }
        }
        if !finished.is_empty()
            && let Err(e) = engine
                .record_triggers(session, finished, &SystemClock)
                .await
        {
            tracing::warn!(error = %e, "could not record the last trigger results; they will be retried");
        }
    }

    fn after_pass(&self, report: &PassReport, label_wake: &Notify) {
        let waiting = report
            .usage
            .iter()
            .map(|u| (u.pool.0.clone(), u.waiting))
            .collect();
        self.status.pass_done(waiting);
        if report.labels_changed > 0 {
            label_wake.notify_one();
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

async fn label_worker(mut labels: PgLabels, github: GithubLabels, wake: Arc<Notify>) {
    loop {
        let wait = match run_label_pass(&mut labels, &github, &SystemClock).await {
            Ok(report) if report.applied + report.failed >= LABEL_BATCH => Duration::ZERO,
            Ok(report) => report.next_retry.map_or(Duration::from_secs(300), until),
            Err(e) => {
                tracing::warn!(error = %e, "label pass failed");
                Duration::from_secs(5)
            }
        };
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}
