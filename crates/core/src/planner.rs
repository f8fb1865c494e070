//! The dispatch planner: pure functions from open work and pool usage to
//! decisions (values), which the engine then applies through the ports.
//!
//! * [`plan_intake`] routes newly stored events: abort the unmatched, create
//!   one dispatch per matched item, and let the newest event per
//!   (repository, PR, item) win, cancelling older waiting ones. A superseding
//!   dispatch inherits the queue position of the one it replaces, so pushes to
//!   a PR never send it to the back of the queue.
//! * [`plan_dispatch`] picks what to trigger: per pool, free = max − running −
//!   reserved, oldest queue position first; a pool whose Kubernetes state is
//!   unknown gets nothing (fail closed).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use time::OffsetDateTime;

use crate::config::{PoolKey, Settings};
use crate::domain::{DispatchId, DispatchState, EventId, PullRequestRef};
use crate::ports::{OpenDispatch, PoolState};

/// An event with the items it matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedEvent {
    /// Event id (higher = newer).
    pub id: EventId,
    /// Pull request.
    pub pr: PullRequestRef,
    /// Matched items: (item name, pool, queued label).
    pub items: Vec<MatchedItem>,
}

/// One matched config item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedItem {
    /// Item name.
    pub item: String,
    /// Its pool.
    pub pool: PoolKey,
    /// `<pipeline>/queued`.
    pub queued_label: String,
}

/// A dispatch row to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDispatch {
    /// Its event.
    pub event_id: EventId,
    /// Item name.
    pub item: String,
    /// Pool.
    pub pool: PoolKey,
    /// Label shown while queued.
    pub queued_label: String,
    /// Pull request.
    pub pr: PullRequestRef,
    /// FIFO key.
    pub queue_position: i64,
    /// `Queued`, or `Cancelled` when a newer event in the same batch supersedes it.
    pub state: DispatchState,
}

/// Decisions about newly stored events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntakePlan {
    /// Every event considered (marked planned).
    pub planned: Vec<EventId>,
    /// Events no item matched (`aborted`, `Unsupported event`).
    pub aborted: Vec<EventId>,
    /// Dispatches to create.
    pub new_dispatches: Vec<NewDispatch>,
    /// Existing queued dispatches superseded by a newer event.
    pub superseded: Vec<DispatchId>,
}

/// Routes new events. `events` may come in any order; `open` is the current
/// open work (only queued dispatches can be superseded).
pub fn plan_intake(events: &[MatchedEvent], open: &[OpenDispatch]) -> IntakePlan {
    let mut plan = IntakePlan::default();
    let mut sorted: Vec<&MatchedEvent> = events.iter().collect();
    sorted.sort_by_key(|e| e.id);

    #[derive(Clone, Copy)]
    enum Waiting {
        Existing(DispatchId, i64),
        New(usize, i64),
    }
    type Key = (PullRequestRef, String);
    // Per (repository, PR, item): the queued dispatch, and the newest event
    // with open work. Event ids are assigned at insert, not at commit, so a
    // delivery can be planned after a newer one; it must not win.
    let mut waiting: HashMap<Key, Waiting> = HashMap::new();
    let mut newest: HashMap<Key, EventId> = HashMap::new();
    let mut sorted_open: Vec<&OpenDispatch> = open.iter().collect();
    sorted_open.sort_by_key(|d| (d.event_id, d.id));
    for d in sorted_open {
        let key = (d.pr.clone(), d.item.clone());
        newest.insert(key.clone(), d.event_id);
        if d.state != DispatchState::Queued {
            continue;
        }
        // Invariant: at most one queued dispatch per key; if the store ever holds
        // two, the older one is superseded here and the invariant is restored.
        if let Some(Waiting::Existing(older, _)) =
            waiting.insert(key, Waiting::Existing(d.id, d.queue_position))
        {
            plan.superseded.push(older);
        }
    }

    for event in sorted {
        plan.planned.push(event.id);
        if event.items.is_empty() {
            plan.aborted.push(event.id);
            continue;
        }
        for m in &event.items {
            let key = (event.pr.clone(), m.item.clone());
            let mut new = NewDispatch {
                event_id: event.id,
                item: m.item.clone(),
                pool: m.pool.clone(),
                queued_label: m.queued_label.clone(),
                pr: event.pr.clone(),
                queue_position: event.id.0,
                state: DispatchState::Queued,
            };
            if newest.get(&key).is_some_and(|n| *n > event.id) {
                // A newer event for this PR is already planned: this one is stale.
                new.state = DispatchState::Cancelled;
                plan.new_dispatches.push(new);
                continue;
            }
            match waiting.get(&key) {
                Some(Waiting::Existing(id, position)) => {
                    plan.superseded.push(*id);
                    new.queue_position = *position;
                }
                Some(Waiting::New(index, position)) => {
                    plan.new_dispatches[*index].state = DispatchState::Cancelled;
                    new.queue_position = *position;
                }
                None => {}
            }
            newest.insert(key.clone(), event.id);
            waiting.insert(
                key,
                Waiting::New(plan.new_dispatches.len(), new.queue_position),
            );
            plan.new_dispatches.push(new);
        }
    }
    plan
}

/// A change to one dispatch decided by the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchOutcome {
    /// The EventListener answered 202.
    Triggered {
        /// Dispatch.
        id: DispatchId,
        /// Attempt that succeeded (guards against stale writes).
        attempt: u32,
        /// `eventID` from the answer.
        listener_event_id: Option<String>,
    },
    /// Attempt failed; try again at `next_attempt_at`.
    Retry {
        /// Dispatch.
        id: DispatchId,
        /// Attempt that failed.
        attempt: u32,
        /// When to try again.
        next_attempt_at: OffsetDateTime,
        /// Why it failed.
        error: String,
    },
    /// Out of attempts (or its item vanished from the config).
    Failed {
        /// Dispatch.
        id: DispatchId,
        /// Attempt that failed (0 when it never ran).
        attempt: u32,
        /// Why.
        error: String,
    },
    /// Its PipelineRun was seen.
    Confirmed {
        /// Dispatch.
        id: DispatchId,
    },
    /// A queued dispatch for which a newer event of the same PR and item
    /// exists (it was re-queued for a retry after the newer one arrived).
    Superseded {
        /// Dispatch.
        id: DispatchId,
    },
}

impl DispatchOutcome {
    /// The dispatch it is about.
    pub fn id(&self) -> DispatchId {
        match self {
            Self::Triggered { id, .. }
            | Self::Retry { id, .. }
            | Self::Failed { id, .. }
            | Self::Confirmed { id }
            | Self::Superseded { id } => *id,
        }
    }
}

/// Usage of one pool as seen by a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    /// Pool.
    pub pool: PoolKey,
    /// Unfinished PipelineRuns (None when unknown).
    pub running: Option<u32>,
    /// Triggered dispatches whose PipelineRun is not visible yet, plus in-flight triggers.
    pub reserved: u32,
    /// `max_capacity`.
    pub max_capacity: u32,
    /// Queued dispatches.
    pub waiting: u32,
    /// Why the pool is blocked, when its state is unknown.
    pub blocked: Option<String>,
}

/// Decisions of one dispatch pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispatchPlan {
    /// Dispatches to trigger now, FIFO order per pool.
    pub trigger: Vec<DispatchId>,
    /// Bookkeeping to record before triggering: confirmations, recoveries, failures.
    pub outcomes: Vec<DispatchOutcome>,
    /// Per-pool usage, for logs and readiness.
    pub usage: Vec<PoolUsage>,
    /// When the engine should look again even if nothing wakes it.
    pub next_wakeup: Option<OffsetDateTime>,
}

/// Tunables the dispatch planner needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchLimits {
    /// Reservation after a 202.
    pub reservation_timeout: Duration,
    /// After this long in `triggering` (the POST's own timeout plus a margin),
    /// the dispatcher that sent it is presumed gone and the dispatch is retried.
    pub orphan_after: Duration,
    /// Attempts before `failed`.
    pub max_attempts: u32,
}

/// Picks what to trigger. `pools` holds the state of every configured pool.
pub fn plan_dispatch(
    settings: &Settings,
    open: &[OpenDispatch],
    pools: &BTreeMap<PoolKey, PoolState>,
    limits: DispatchLimits,
    now: OffsetDateTime,
) -> DispatchPlan {
    let mut plan = DispatchPlan::default();
    let wake = |t: OffsetDateTime, plan: &mut DispatchPlan| {
        plan.next_wakeup = Some(plan.next_wakeup.map_or(t, |w| w.min(t)));
    };
    let mut by_pool: BTreeMap<&PoolKey, Vec<&OpenDispatch>> =
        settings.pools.keys().map(|k| (k, Vec::new())).collect();
    for d in open {
        by_pool.entry(&d.pool).or_default().push(d);
    }

    for (key, mut work) in by_pool {
        work.sort_by_key(|d| (d.queue_position, d.id));
        let spec = settings.pools.get(key);
        let state = pools.get(key);
        let seen = match state {
            Some(PoolState::Known { seen_event_ids, .. }) => Some(seen_event_ids),
            _ => None,
        };
        let mut reserved = 0u32;
        let mut eligible = Vec::new();
        let mut waiting = 0u32;
        for d in work {
            match d.state {
                DispatchState::Triggering => {
                    let started = d.trigger_started_at.unwrap_or(d.next_attempt_at);
                    let deadline = started + limits.orphan_after;
                    if deadline <= now {
                        // Its dispatcher died mid-POST; the outcome is unknown. Retrying
                        // risks a duplicate in that narrow window, not retrying loses work.
                        plan.outcomes.push(DispatchOutcome::Retry {
                            id: d.id,
                            attempt: d.attempts,
                            next_attempt_at: now,
                            error: "dispatcher stopped while triggering; outcome unknown, retrying"
                                .to_owned(),
                        });
                        wake(now, &mut plan);
                    } else {
                        wake(deadline, &mut plan);
                    }
                    reserved += 1;
                }
                DispatchState::Triggered => {
                    let confirmed = matches!((seen, &d.listener_event_id), (Some(seen), Some(id)) if seen.contains(id));
                    if confirmed {
                        plan.outcomes.push(DispatchOutcome::Confirmed { id: d.id });
                        continue;
                    }
                    let expires = d.triggered_at.unwrap_or(now) + limits.reservation_timeout;
                    if expires > now {
                        reserved += 1;
                        wake(expires, &mut plan);
                    }
                }
                DispatchState::Queued => {
                    if d.has_newer {
                        plan.outcomes.push(DispatchOutcome::Superseded { id: d.id });
                        continue;
                    }
                    if settings.item(&d.item).is_none() || spec.is_none() {
                        plan.outcomes.push(DispatchOutcome::Failed {
                            id: d.id,
                            attempt: d.attempts,
                            error: format!(
                                "config item '{}' (pool {key}) is no longer configured",
                                d.item
                            ),
                        });
                        continue;
                    }
                    waiting += 1;
                    if d.next_attempt_at <= now {
                        eligible.push(d);
                    } else {
                        wake(d.next_attempt_at, &mut plan);
                    }
                }
                DispatchState::Confirmed | DispatchState::Cancelled | DispatchState::Failed => {}
            }
        }
        let Some(spec) = spec else { continue };
        let (running, blocked) = match state {
            Some(PoolState::Known { running, .. }) => (Some(*running), None),
            Some(PoolState::Unknown { reason }) => (None, Some(reason.clone())),
            None => (None, Some("no capacity information".to_owned())),
        };
        if let Some(running) = running {
            let free = spec
                .max_capacity
                .saturating_sub(running.saturating_add(reserved));
            plan.trigger
                .extend(eligible.iter().take(free as usize).map(|d| d.id));
        }
        plan.usage.push(PoolUsage {
            pool: key.clone(),
            running,
            reserved,
            max_capacity: spec.max_capacity,
            waiting,
            blocked,
        });
    }
    plan
}

#[cfg(test)]
mod tests;
