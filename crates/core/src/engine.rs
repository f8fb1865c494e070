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

use crate::backoff::retry_delay;
use crate::config::{PoolKey, Settings};
use crate::domain::{DispatchState, EventId};
use crate::planner::{
    DispatchLimits, DispatchOutcome, MatchedEvent, MatchedItem, PoolUsage, plan_dispatch,
    plan_intake,
};
use crate::ports::{
    CapacitySource, Clock, DispatchStore, PoolState, StoreError, Trigger, TriggerRequest,
};
use crate::rules::{EventFacts, match_items, needs_payload};

/// Events matched per store round trip.
const PLAN_BATCH: usize = 500;
/// Margin on top of the trigger timeout before an in-flight trigger of a dead dispatcher is retried.
const ORPHAN_GRACE: Duration = Duration::from_secs(5);

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

/// The dispatch engine of the active replica.
#[derive(Debug)]
pub struct Engine {
    settings: Arc<Settings>,
    limits: DispatchLimits,
    /// Outcomes of POSTs already sent whose recording failed; recorded first
    /// thing next pass so an accepted trigger is not mistaken for an orphan.
    unrecorded: Vec<DispatchOutcome>,
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
        }
    }

    /// The configuration in use.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Runs one pass. Store errors abort the pass; everything already
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
        let mut report = PassReport::default();
        if !self.unrecorded.is_empty() {
            store.record_outcomes(&self.unrecorded, clock.now()).await?;
            self.unrecorded.clear();
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

        if !plan.trigger.is_empty() {
            let jobs = store.begin_triggers(&plan.trigger, clock.now()).await?;
            let settings = &*self.settings;
            let results = join_all(jobs.iter().map(|job| async move {
                let url = settings.item(&job.item).map(|i| &i.callback_url);
                let result = match url {
                    Some(url) => {
                        trigger
                            .trigger(TriggerRequest {
                                url,
                                payload: &job.payload,
                                headers: &job.headers,
                            })
                            .await
                    }
                    None => Err(crate::ports::TriggerError::Transport(format!(
                        "item '{}' vanished",
                        job.item
                    ))),
                };
                (job, result)
            }))
            .await;
            let done = clock.now();
            let mut outcomes = Vec::with_capacity(results.len());
            for (job, result) in results {
                let outcome = match result {
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
                            + retry_delay(
                                d.retry_backoff_base,
                                d.retry_backoff_max,
                                job.attempt,
                                seed,
                            );
                        tracing::warn!(
                            dispatch_id = %job.dispatch, event_id = %job.event_id, repo = %job.pr.repository,
                            pr = job.pr.number, item = %job.item, attempt = job.attempt, error = %e,
                            retry_at = %crate::domain::rfc3339::format(next_attempt_at), "trigger failed; will retry"
                        );
                        report.next_wakeup = Some(
                            report
                                .next_wakeup
                                .map_or(next_attempt_at, |w| w.min(next_attempt_at)),
                        );
                        DispatchOutcome::Retry {
                            id: job.dispatch,
                            attempt: job.attempt,
                            next_attempt_at,
                            error: e.to_string(),
                        }
                    }
                };
                outcomes.push(outcome);
            }
            if let Err(e) = store.record_outcomes(&outcomes, done).await {
                self.unrecorded = outcomes;
                return Err(e);
            }
        }

        report.labels_changed = store.reconcile_labels(clock.now()).await?;
        Ok(report)
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
