//! The dispatch loop: contend for leadership; while leading, run engine
//! passes whenever something may have changed (a stored delivery, a
//! PipelineRun change, a retry or reservation deadline, the slow safety
//! timer) and push label changes to GitHub beside it.

use std::sync::Arc;
use std::time::Duration;

use dispatcher_capacity::{EventListenerClient, KubeCapacity};
use dispatcher_core::config::Settings;
use dispatcher_core::engine::{Engine, PassReport};
use dispatcher_core::labels::{LABEL_BATCH, run_label_pass};
use dispatcher_core::ports::{StoreError, SystemClock};
use dispatcher_github::GithubLabels;
use dispatcher_store::{Database, LeaderSession, PgLabels};
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};

use crate::status::{DispatcherStatus, Role};

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
        loop {
            // Batch a flood of wake-ups into fewer passes (see dispatch.min_pass_interval).
            tokio::time::sleep_until(last_pass + min_interval).await;
            last_pass = tokio::time::Instant::now();
            let next_wakeup = match engine
                .run_pass(&mut session, &*self.capacity, &self.trigger, &SystemClock)
                .await
            {
                Ok(report) => {
                    self.after_pass(&report, &label_wake);
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
                () = capacity_changed.notified() => {}
                () = tokio::time::sleep(next_wakeup) => {}
                _ = shutdown.changed() => {
                    tracing::info!("stopping the dispatcher");
                    return;
                }
            }
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
