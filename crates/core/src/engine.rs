//! The engine: one dispatch pass over the ports. It reads open work, asks the
//! planner for decisions, and applies them: record, trigger, record again.
//!
//! Ordering is what makes a pass crash-safe: a dispatch is committed as
//! `triggering` *before* its POST and as `triggered` right after the 202, so
//! a restarted dispatcher never re-sends an accepted trigger; the only
//! ambiguous window is a crash during the POST itself (see
//! [`crate::planner::DispatchLimits::orphan_after`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use time::OffsetDateTime;
use url::Url;

use crate::backoff::retry_delay;
use crate::config::{PoolKey, Settings};
use crate::domain::{DispatchState, EventId};
use crate::planner::{
    DispatchLimits, DispatchOutcome, MatchedEvent, MatchedItem, PoolUsage, plan_dispatch,
    plan_intake,
};
use crate::ports::{
    CapacitySource, Clock, DispatchStore, PoolState, StoreError, Trigger, TriggerError, TriggerJob,
    TriggerRequest,
};
use crate::rules::{EventFacts, match_items, needs_payload};

/// Events matched per store round trip.
const PLAN_BATCH: usize = 500;
/// Margin on top of the trigger timeout before an in-flight trigger of a dead
/// dispatcher is retried; generous, because the replica that retries compares
/// its own clock with the one that started the trigger.
const ORPHAN_GRACE: Duration = Duration::from_secs(30);
/// Passes that may fail to record kept outcomes before they are dropped.
const MAX_RECORD_REPLAYS: u32 = 3;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Events matched against the config.
    pub planned: usize,
    /// Events no item matched.
    pub aborted: usize,
    /// Queued dispatches cancelled by newer events.
    pub superseded: usize,
    /// Dispatches accepted by their EventListener.
    pub triggered: usize,
    /// Failed attempts that will be retried.
    pub retried: usize,
    /// Dispatches that ran out of attempts.
    pub failed: usize,
    /// Dispatches whose PipelineRun appeared.
    pub confirmed: usize,
    /// Label intents changed.
    pub labels_changed: u64,
    /// Pool usage at planning time.
    pub usage: Vec<PoolUsage>,
    /// When to run again if nothing else wakes the engine.
    pub next_wakeup: Option<OffsetDateTime>,
}

/// What recording a batch of trigger results did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TriggerReport {
    /// Accepted by their EventListener.
    pub triggered: usize,
    /// Failed attempts that will be retried.
    pub retried: usize,
    /// Out of attempts.
    pub failed: usize,
    /// The earliest retry.
    pub next_wakeup: Option<OffsetDateTime>,
}

/// POSTs one job to its EventListener (`url`: its item's `callback_url`,
/// `None` when the item is no longer configured).
pub async fn send_trigger<T: Trigger>(
    trigger: &T,
    url: Option<&Url>,
    job: &TriggerJob,
) -> Result<Option<String>, TriggerError> {
    match url {
        Some(url) => {
            trigger
                .trigger(TriggerRequest {
                    url,
                    payload: &job.payload,
                    headers: &job.headers,
                })
                .await
        }
        None => Err(TriggerError::Transport(format!(
            "item '{}' is no longer configured",
            job.item
        ))),
    }
}

fn earliest(a: Option<OffsetDateTime>, b: Option<OffsetDateTime>) -> Option<OffsetDateTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The dispatch engine of the active replica.
#[derive(Debug)]
pub struct Engine {
    settings: Arc<Settings>,
    limits: DispatchLimits,
    /// Outcomes of POSTs already sent whose recording failed; recorded first
    /// thing next pass so an accepted trigger is not mistaken for an orphan.
    unrecorded: Vec<DispatchOutcome>,
    /// Consecutive passes that failed to record `unrecorded`.
    unrecorded_failures: u32,
}

impl Engine {
    /// An engine for `settings`.
    pub fn new(settings: Arc<Settings>) -> Self {
        let d = &settings.dispatch;
        let limits = DispatchLimits {
            reservation_timeout: d.reservation_timeout,
            orphan_after: d.trigger_timeout + ORPHAN_GRACE,
            max_attempts: d.max_attempts,
        };
        Self {
            settings,
            limits,
            unrecorded: Vec::new(),
            unrecorded_failures: 0,
        }
    }

    /// The configuration in use.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Runs one pass and sends its triggers, waiting for them: plan, POST
    /// concurrently, record. Store errors abort the pass; everything already
    /// committed stays valid and the next pass continues from there.
    pub async fn run_pass<S, C, T, K>(
        &mut self,
        store: &mut S,
        capacity: &C,
        trigger: &T,
        clock: &K,
    ) -> Result<PassReport, StoreError>
    where
        S: DispatchStore,
        C: CapacitySource,
        T: Trigger,
        K: Clock,
    {
        let (mut report, jobs) = self.plan_pass(store, capacity, clock).await?;
        if jobs.is_empty() {
            return Ok(report);
        }
        let this = &*self;
        let results = join_all(jobs.into_iter().map(|job| async move {
            let result = send_trigger(trigger, this.callback_url(&job), &job).await;
            (job, result)
        }))
        .await;
        let recorded = self.record_triggers(store, results, clock).await?;
        report.triggered += recorded.triggered;
        report.retried += recorded.retried;
        report.failed += recorded.failed;
        report.next_wakeup = earliest(report.next_wakeup, recorded.next_wakeup);
        report.labels_changed += store.reconcile_labels(clock.now()).await?;
        Ok(report)
    }

    /// The EventListener URL of a job's item.
    pub fn callback_url(&self, job: &TriggerJob) -> Option<&Url> {
        self.settings.item(&job.item).map(|i| &i.callback_url)
    }

    /// Plans a pass and commits its decisions; returns the triggers to send.
    /// Each returned job is committed as `triggering` (counted against its
    /// pool). The caller POSTs them, concurrently and without holding up later
    /// passes, and hands the results to [`Engine::record_triggers`].
    pub async fn plan_pass<S, C, K>(
        &mut self,
        store: &mut S,
        capacity: &C,
        clock: &K,
    ) -> Result<(PassReport, Vec<TriggerJob>), StoreError>
    where
        S: DispatchStore,
        C: CapacitySource,
        K: Clock,
    {
        let mut report = PassReport::default();
        if !self.unrecorded.is_empty() {
            match store.record_outcomes(&self.unrecorded, clock.now()).await {
                Ok(()) => {
                    self.unrecorded.clear();
                    self.unrecorded_failures = 0;
                }
                // The database rejects these writes themselves: keeping them would
                // stop every later pass. Their dispatches stay `triggering` and are
                // retried as orphans (at worst one duplicate each).
                Err(StoreError::Query(e)) if self.unrecorded_failures + 1 >= MAX_RECORD_REPLAYS => {
                    tracing::error!(
                        error = %e, outcomes = self.unrecorded.len(),
                        "giving up recording trigger outcomes; their dispatches will be retried"
                    );
                    self.unrecorded.clear();
                    self.unrecorded_failures = 0;
                }
                Err(e) => {
                    self.unrecorded_failures += 1;
                    return Err(e);
                }
            }
        }

        let mut now = clock.now();
        let mut open = store
            .open_dispatches(now - self.limits.reservation_timeout)
            .await?;
        loop {
            let events = store.unplanned_events(PLAN_BATCH).await?;
            if events.is_empty() {
                break;
            }
            let batch_len = events.len();
            let wanted: Vec<EventId> = events
                .iter()
                .filter(|e| needs_payload(&self.settings, &e.pr.repository, &e.action))
                .map(|e| e.id)
                .collect();
            let payloads = if wanted.is_empty() {
                HashMap::new()
            } else {
                store.event_payloads(&wanted).await?
            };
            let matched: Vec<MatchedEvent> = events
                .iter()
                .map(|e| self.match_event(e, payloads.get(&e.id).map_or(&[][..], |p| p.as_bytes())))
                .collect();
            let plan = plan_intake(&matched, &open);
            report.planned += plan.planned.len();
            report.aborted += plan.aborted.len();
            report.superseded += plan.superseded.len()
                + plan
                    .new_dispatches
                    .iter()
                    .filter(|d| d.state == DispatchState::Cancelled)
                    .count();
            let created = store.apply_intake(&plan, now).await?;
            open.retain(|d| !plan.superseded.contains(&d.id));
            open.extend(created);
            now = clock.now();
            if batch_len < PLAN_BATCH {
                break;
            }
        }

        let pools: BTreeMap<PoolKey, PoolState> = self
            .settings
            .pools
            .values()
            .map(|p| (p.key.clone(), capacity.pool_state(p)))
            .collect();
        let plan = plan_dispatch(&self.settings, &open, &pools, self.limits, now);
        for outcome in &plan.outcomes {
            match outcome {
                DispatchOutcome::Confirmed { .. } => report.confirmed += 1,
                DispatchOutcome::Failed { id, error, .. } => {
                    report.failed += 1;
                    tracing::warn!(dispatch_id = %id, %error, "dispatch failed");
                }
                DispatchOutcome::Retry { id, error, .. } => {
                    report.retried += 1;
                    tracing::warn!(dispatch_id = %id, %error, "retrying dispatch");
                }
                DispatchOutcome::Superseded { id } => {
                    report.superseded += 1;
                    tracing::info!(dispatch_id = %id, "dispatch superseded by a newer event while waiting to retry");
                }
                DispatchOutcome::Triggered { .. } => {}
            }
        }
        if !plan.outcomes.is_empty() {
            store.record_outcomes(&plan.outcomes, now).await?;
        }
        for u in &plan.usage {
            if let Some(reason) = &u.blocked
                && u.waiting > 0
            {
                tracing::warn!(pool = %u.pool, waiting = u.waiting, %reason, "pool state unknown; dispatching nothing for it");
            }
        }
        report.usage = plan.usage;
        report.next_wakeup = plan.next_wakeup;

        let jobs = if plan.trigger.is_empty() {
            Vec::new()
        } else {
            store.begin_triggers(&plan.trigger, clock.now()).await?
        };
        report.labels_changed = store.reconcile_labels(clock.now()).await?;
        Ok((report, jobs))
    }

    /// Records the results of POSTs started by [`Engine::plan_pass`]: 202 →
    /// `triggered`; otherwise a retry with backoff, or `failed` after
    /// `max_attempts`. If recording fails, the outcomes are kept and recorded
    /// first by the next pass.
    pub async fn record_triggers<S, K>(
        &mut self,
        store: &mut S,
        results: Vec<(TriggerJob, Result<Option<String>, TriggerError>)>,
        clock: &K,
    ) -> Result<TriggerReport, StoreError>
    where
        S: DispatchStore,
        K: Clock,
    {
        let mut report = TriggerReport::default();
        let done = clock.now();
        let outcomes: Vec<DispatchOutcome> = results
            .into_iter()
            .map(|(job, result)| self.outcome(&job, result, done, &mut report))
            .collect();
        if outcomes.is_empty() {
            return Ok(report);
        }
        if let Err(e) = store.record_outcomes(&outcomes, done).await {
            self.unrecorded.extend(outcomes);
            return Err(e);
        }
        Ok(report)
    }

    fn outcome(
        &self,
        job: &TriggerJob,
        result: Result<Option<String>, TriggerError>,
        done: OffsetDateTime,
        report: &mut TriggerReport,
    ) -> DispatchOutcome {
        match result {
            Ok(listener_event_id) => {
                report.triggered += 1;
                tracing::info!(
                    dispatch_id = %job.dispatch, event_id = %job.event_id, repo = %job.pr.repository,
                    pr = job.pr.number, item = %job.item, attempt = job.attempt,
                    listener_event_id = listener_event_id.as_deref().unwrap_or("-"),
                    "triggered pipeline"
                );
                DispatchOutcome::Triggered {
                    id: job.dispatch,
                    attempt: job.attempt,
                    listener_event_id,
                }
            }
            Err(e) if job.attempt >= self.limits.max_attempts => {
                report.failed += 1;
                tracing::error!(
                    dispatch_id = %job.dispatch, event_id = %job.event_id, repo = %job.pr.repository,
                    pr = job.pr.number, item = %job.item, attempt = job.attempt, error = %e,
                    "trigger failed; out of attempts"
                );
                DispatchOutcome::Failed {
                    id: job.dispatch,
                    attempt: job.attempt,
                    error: format!("gave up after {} attempts: {e}", job.attempt),
                }
            }
            Err(e) => {
                report.retried += 1;
                let d = &self.settings.dispatch;
                let seed = u64::try_from(job.dispatch.0).unwrap_or_default();
                let next_attempt_at = done
                    + retry_delay(d.retry_backoff_base, d.retry_backoff_max, job.attempt, seed);
                tracing::warn!(
                    dispatch_id = %job.dispatch, event_id = %job.event_id, repo = %job.pr.repository,
                    pr = job.pr.number, item = %job.item, attempt = job.attempt, error = %e,
                    retry_at = %crate::domain::rfc3339::format(next_attempt_at), "trigger failed; will retry"
                );
                report.next_wakeup = earliest(report.next_wakeup, Some(next_attempt_at));
                DispatchOutcome::Retry {
                    id: job.dispatch,
                    attempt: job.attempt,
                    next_attempt_at,
                    error: e.to_string(),
                }
            }
        }
    }

    fn match_event(&self, e: &crate::ports::UnplannedEvent, payload: &[u8]) -> MatchedEvent {
        let facts = EventFacts {
            action: &e.action,
            repository: &e.pr.repository,
            payload,
            headers: &e.headers,
        };
        let matches = match_items(&self.settings, &facts);
        for p in &matches.problems {
            tracing::warn!(
                event_id = %e.id, repo = %e.pr.repository, pr = e.pr.number, item = %p.item, error = %p.error,
                "CEL filter could not be evaluated; treating as no match"
            );
        }
        if matches.items.is_empty() {
            tracing::info!(event_id = %e.id, repo = %e.pr.repository, pr = e.pr.number, action = %e.action, "no config item matches; aborting event");
        }
        MatchedEvent {
            id: e.id,
            pr: e.pr.clone(),
            items: matches
                .items
                .iter()
                .filter_map(|item| {
                    let pool = self.settings.pools.get(&item.pool)?;
                    Some(MatchedItem {
                        item: item.name.clone(),
                        pool: pool.key.clone(),
                        queued_label: pool.queued_label(),
                    })
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
