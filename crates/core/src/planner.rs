//! The dispatch planner: pure functions from open work and pool usage to
//! decisions (values), which the engine then applies through the ports.
//!
//! * [`plan_intake`] routes newly stored events: abort the unmatched, create
//!   one dispatch per matched item, and let the newest event per
//!   (repository, PR, item) win, cancelling older waiting ones. A superseding
//!   dispatch inherits the queue position of the one it replaces, so pushes to
//!   a PR never send it to the back of the queue.
//! * [`plan_dispatch`] picks what to trigger: per pool, free = max − running −
//!   reserved, in the pool's order ([`dispatch_order`]: priorities, then
//!   `fifo` or `round_robin_repository`); a pool whose Kubernetes state is
//!   unknown gets nothing (fail closed). It also settles triggers whose
//!   outcome is open: a run carrying the dispatch id (pool `dispatch_label`)
//!   confirms its dispatch exactly; without the label an orphaned trigger is
//!   matched to an unclaimed run created after it ([`orphan_candidates`]);
//!   one still unmatched at `reservation_timeout` is retried.
//! * [`trigger_outcome`] turns the listener's answer into a decision: success,
//!   lost answer (slot stays reserved), retry with backoff, or failure.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use time::OffsetDateTime;

use crate::backoff::retry_delay;
use crate::config::{PoolKey, PoolSpec, Settings};
use crate::domain::{DispatchId, DispatchState, EventId, PullRequestRef};
use crate::fairness::dispatch_order;
use crate::ports::{
    CancelCandidate, CancelQuery, OpenDispatch, PoolState, RunTarget, RunView, TriggerError,
};

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
    /// Its PipelineRun was seen (from `triggered`, or from `triggering` when
    /// the answer to its trigger was lost and the run shows it was accepted).
    Confirmed {
        /// Dispatch.
        id: DispatchId,
        /// The run's `triggers-eventid`, recorded when the dispatch has none yet.
        listener_event_id: Option<String>,
        /// The run's name, for the event's timeline.
        run: Option<String>,
    },
    /// The trigger was sent but its answer was lost (timeout, reset): the
    /// dispatch stays `triggering`, holding its slot, until its run shows up
    /// or `reservation_timeout` passes.
    Unanswered {
        /// Dispatch.
        id: DispatchId,
        /// Attempt whose answer was lost.
        attempt: u32,
        /// What happened.
        error: String,
    },
    /// A queued dispatch whose item now belongs to another pool (the config
    /// changed): it waits in the new pool, keeping its queue position.
    Moved {
        /// Dispatch.
        id: DispatchId,
        /// The item's pool now.
        pool: PoolKey,
        /// That pool's `<pipeline>/queued` label.
        queued_label: String,
    },
    /// A queued dispatch for which a newer event of the same PR and item
    /// exists (it was re-queued for a retry after the newer one arrived).
    Superseded {
        /// Dispatch.
        id: DispatchId,
    },
    /// Its item cancels superseded or closed work (`cancel_superseded`,
    /// `cancel_on_close`): a queued dispatch becomes `cancelled`; one with a
    /// trigger in flight or a running PipelineRun gets a pending run
    /// cancellation (the cancel worker patches the run) and becomes
    /// `cancelled` once its run is seen, so its slot is counted until the run
    /// finishes.
    CancelRun {
        /// Dispatch.
        id: DispatchId,
        /// Why.
        reason: CancelReason,
        /// The newer event, or the `closed` event.
        by_event: EventId,
        /// Where its run is.
        target: RunTarget,
    },
}

/// Why a dispatch's work is cancelled by its item's opt-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// A newer event of the same PR and item was planned (`cancel_superseded`).
    Superseded,
    /// The pull request was closed (`cancel_on_close`).
    Closed,
}

impl CancelReason {
    /// The stored spelling (timeline facts, run cancellations).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Superseded => "superseded",
            Self::Closed => "closed",
        }
    }
}

impl DispatchOutcome {
    /// The dispatch it is about.
    pub fn id(&self) -> DispatchId {
        match self {
            Self::Triggered { id, .. }
            | Self::Retry { id, .. }
            | Self::Failed { id, .. }
            | Self::Confirmed { id, .. }
            | Self::Unanswered { id, .. }
            | Self::Moved { id, .. }
            | Self::Superseded { id }
            | Self::CancelRun { id, .. } => *id,
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
    /// Of those, how many this pass starts (its triggers from this pool).
    pub starting: u32,
    /// Queued since: the earliest `next_attempt_at` of the queued dispatches
    /// (their creation, or the end of a retry's backoff), `None` when none waits.
    pub oldest_waiting: Option<OffsetDateTime>,
    /// Why the pool is blocked, when its state is unknown.
    pub blocked: Option<String>,
    /// An operator paused the pool: it queues but triggers nothing.
    pub paused: bool,
}

impl PoolUsage {
    /// Queued dispatches this pass leaves waiting for a slot.
    pub fn left_waiting(&self) -> u32 {
        self.waiting.saturating_sub(self.starting)
    }
}

/// Decisions of one dispatch pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispatchPlan {
    /// Dispatches to trigger now, in each pool's dispatch order.
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
    /// How long a slot stays reserved for a trigger whose PipelineRun has not
    /// appeared: after a 202, and after a trigger whose answer was lost.
    pub reservation_timeout: Duration,
    /// Longest a trigger can still be in flight (the POST's own timeout plus
    /// a margin). A `triggering` dispatch older than this is an orphan: its
    /// answer was lost, or the replica that sent it died.
    pub in_flight_for: Duration,
    /// Attempts before `failed`.
    pub max_attempts: u32,
}

impl From<&crate::config::DispatchTuning> for DispatchLimits {
    fn from(d: &crate::config::DispatchTuning) -> Self {
        Self {
            reservation_timeout: d.reservation_timeout,
            in_flight_for: d.trigger_timeout + IN_FLIGHT_GRACE,
            max_attempts: d.max_attempts,
        }
    }
}

/// Margin on top of the trigger timeout before a `triggering` dispatch
/// counts as an orphan (its POST cannot still be in flight).
pub const IN_FLIGHT_GRACE: Duration = Duration::from_secs(5);

/// Picks what to trigger. `pools` holds the state of every configured pool;
/// `paused` the pools an operator paused (they confirm and settle, but
/// trigger nothing); `claimed` the `triggers-eventid`s that some dispatch has
/// recorded (only the ones the caller asked the store about: see
/// [`orphan_candidates`]). `now` is the database clock.
pub fn plan_dispatch(
    settings: &Settings,
    open: &[OpenDispatch],
    pools: &BTreeMap<PoolKey, PoolState>,
    paused: &BTreeSet<PoolKey>,
    claimed: &HashSet<String>,
    limits: DispatchLimits,
    now: OffsetDateTime,
) -> DispatchPlan {
    let mut plan = DispatchPlan::default();
    let mut by_pool: BTreeMap<PoolKey, Vec<&OpenDispatch>> = settings
        .pools
        .keys()
        .map(|k| (k.clone(), Vec::new()))
        .collect();
    for d in open {
        let key = match moved_to(settings, d) {
            Some(spec) => {
                plan.outcomes.push(DispatchOutcome::Moved {
                    id: d.id,
                    pool: spec.key.clone(),
                    queued_label: spec.queued_label(),
                });
                spec.key.clone()
            }
            None => d.pool.clone(),
        };
        by_pool.entry(key).or_default().push(d);
    }
    for (key, work) in by_pool {
        plan_pool(
            settings,
            &key,
            work,
            pools.get(&key),
            paused.contains(&key),
            claimed,
            limits,
            now,
            &mut plan,
        );
    }
    plan
}

/// The pool a queued dispatch must move to because its item's pool changed.
fn moved_to<'s>(settings: &'s Settings, d: &OpenDispatch) -> Option<&'s PoolSpec> {
    if d.state != DispatchState::Queued {
        return None;
    }
    let item = settings.item(&d.item)?;
    (item.pool != d.pool)
        .then(|| settings.pools.get(&item.pool))
        .flatten()
}

fn wake(plan: &mut DispatchPlan, t: OffsetDateTime) {
    plan.next_wakeup = Some(plan.next_wakeup.map_or(t, |w| w.min(t)));
}

/// A `triggering` dispatch no POST can still be in flight for.
fn is_orphan(d: &OpenDispatch, limits: DispatchLimits, now: OffsetDateTime) -> bool {
    d.state == DispatchState::Triggering && trigger_started(d) + limits.in_flight_for <= now
}

fn trigger_started(d: &OpenDispatch) -> OffsetDateTime {
    d.trigger_started_at.unwrap_or(d.next_attempt_at)
}

/// Kubernetes `creationTimestamp`s have whole seconds: a run created in the
/// same second as its trigger was sent shows a time up to 1 s before it.
const CREATION_PRECISION: Duration = Duration::from_secs(1);

/// Whether a run created at `created` may come from a trigger sent at `started`.
fn created_after(created: OffsetDateTime, started: OffsetDateTime) -> bool {
    created + CREATION_PRECISION > started
}

/// The `triggers-eventid`s whose claim status [`plan_dispatch`] needs: those
/// of runs that could belong to an orphan (pools without a `dispatch_label`,
/// runs created after the oldest orphan's trigger, ids no open dispatch
/// holds). Empty when there are no orphans, which is nearly always.
pub fn orphan_candidates(
    settings: &Settings,
    open: &[OpenDispatch],
    pools: &BTreeMap<PoolKey, PoolState>,
    limits: DispatchLimits,
    now: OffsetDateTime,
) -> Vec<String> {
    let held: HashSet<&str> = open
        .iter()
        .filter_map(|d| d.listener_event_id.as_deref())
        .collect();
    // The oldest orphan's trigger per pool, in one walk over the open work
    // (not one per pool: a thousand pools times a thousand in flight).
    let mut oldest_orphan: HashMap<&PoolKey, OffsetDateTime> = HashMap::new();
    for d in open.iter().filter(|d| is_orphan(d, limits, now)) {
        let started = trigger_started(d);
        oldest_orphan
            .entry(&d.pool)
            .and_modify(|t| *t = (*t).min(started))
            .or_insert(started);
    }
    let mut out = Vec::new();
    for (key, state) in pools {
        let Some(spec) = settings.pools.get(key) else {
            continue;
        };
        let PoolState::Known { runs, .. } = state else {
            continue;
        };
        if spec.dispatch_label.is_some() {
            continue;
        }
        let Some(&oldest) = oldest_orphan.get(key) else {
            continue;
        };
        out.extend(
            runs.iter()
                .filter(|r| r.created_at.is_some_and(|c| created_after(c, oldest)))
                .filter_map(|r| r.event_id.as_deref())
                .filter(|id| !held.contains(id))
                .map(str::to_owned),
        );
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Matches orphans to runs without a dispatch label: one to one, oldest
/// orphan first, each to the oldest run created after its trigger whose
/// `triggers-eventid` no dispatch holds. An inference, exact only while this
/// dispatcher is the only producer of runs in the pool (see ARCHITECTURE.md).
fn infer_orphan_runs<'r>(
    orphans: &[&OpenDispatch],
    runs: &'r [RunView],
    open_held: &HashSet<&str>,
    claimed: &HashSet<String>,
) -> HashMap<DispatchId, &'r str> {
    let mut free: Vec<(OffsetDateTime, &str)> = runs
        .iter()
        .filter_map(|r| Some((r.created_at?, r.event_id.as_deref()?)))
        .filter(|(_, id)| !open_held.contains(id) && !claimed.contains(*id))
        .collect();
    free.sort_unstable();
    let mut sorted: Vec<&&OpenDispatch> = orphans.iter().collect();
    sorted.sort_by_key(|d| (trigger_started(d), d.id));
    let mut matched = HashMap::new();
    for d in sorted {
        let started = trigger_started(d);
        if let Some(i) = free
            .iter()
            .position(|(created, _)| created_after(*created, started))
        {
            matched.insert(d.id, free.remove(i).1);
        }
    }
    matched
}

#[allow(clippy::too_many_arguments)]
fn plan_pool(
    settings: &Settings,
    key: &PoolKey,
    mut work: Vec<&OpenDispatch>,
    state: Option<&PoolState>,
    paused: bool,
    claimed: &HashSet<String>,
    limits: DispatchLimits,
    now: OffsetDateTime,
    plan: &mut DispatchPlan,
) {
    work.sort_by_key(|d| (d.queue_position, d.id));
    let spec = settings.pools.get(key);
    // Runs are only looked at while the pool's state is current: without it
    // nothing is confirmed, inferred, retried as an orphan or triggered.
    let runs: Option<&[RunView]> = match state {
        Some(PoolState::Known { runs, .. }) => Some(runs),
        _ => None,
    };
    let labelled = spec.is_some_and(|s| s.dispatch_label.is_some());
    let by_dispatch: HashMap<&str, &RunView> = runs
        .unwrap_or_default()
        .iter()
        .filter_map(|r| Some((r.dispatch_id.as_deref()?, r)))
        .collect();
    // Run names by `triggers-eventid`, for the timeline of what they confirm.
    let by_event: HashMap<&str, Option<&String>> = runs
        .unwrap_or_default()
        .iter()
        .filter_map(|r| Some((r.event_id.as_deref()?, r.name.as_ref())))
        .collect();
    let inferred = match runs {
        Some(runs) if !labelled => {
            let orphans: Vec<&OpenDispatch> = work
                .iter()
                .copied()
                .filter(|d| is_orphan(d, limits, now))
                .collect();
            let held: HashSet<&str> = work
                .iter()
                .filter_map(|d| d.listener_event_id.as_deref())
                .collect();
            infer_orphan_runs(&orphans, runs, &held, claimed)
        }
        _ => HashMap::new(),
    };
    let mut reserved = 0u32;
    let mut queued = Vec::new();
    let mut waiting = 0u32;
    let mut oldest_waiting: Option<OffsetDateTime> = None;
    for d in work {
        let own_run = by_dispatch.get(d.id.to_string().as_str()).copied();
        match d.state {
            DispatchState::Triggering => {
                if let Some(run) = own_run.filter(|_| runs.is_some()) {
                    plan.outcomes.push(DispatchOutcome::Confirmed {
                        id: d.id,
                        listener_event_id: run.event_id.clone(),
                        run: run.name.clone(),
                    });
                    continue;
                }
                if let Some(event_id) = inferred.get(&d.id) {
                    plan.outcomes.push(DispatchOutcome::Confirmed {
                        id: d.id,
                        listener_event_id: Some((*event_id).to_owned()),
                        run: by_event.get(*event_id).copied().flatten().cloned(),
                    });
                    continue;
                }
                reserved += 1;
                let started = trigger_started(d);
                if started + limits.in_flight_for > now {
                    wake(plan, started + limits.in_flight_for);
                    continue;
                }
                // An orphan: its answer was lost or its replica died. The slot
                // stays reserved until a run shows up or the reservation ends.
                let deadline = started + limits.reservation_timeout;
                if deadline > now {
                    wake(plan, deadline);
                } else if runs.is_some() {
                    plan.outcomes.push(DispatchOutcome::Retry {
                        id: d.id,
                        attempt: d.attempts,
                        next_attempt_at: now,
                        error:
                            "no PipelineRun appeared for a trigger whose answer was lost; retrying"
                                .to_owned(),
                    });
                    wake(plan, now);
                }
            }
            DispatchState::Triggered => {
                let by_its_event = d
                    .listener_event_id
                    .as_deref()
                    .and_then(|id| by_event.get(id).copied());
                if runs.is_some() && (own_run.is_some() || by_its_event.is_some()) {
                    let run = own_run
                        .and_then(|r| r.name.as_ref())
                        .or(by_its_event.flatten());
                    plan.outcomes.push(DispatchOutcome::Confirmed {
                        id: d.id,
                        listener_event_id: None,
                        run: run.cloned(),
                    });
                    continue;
                }
                let expires = d.triggered_at.unwrap_or(now) + limits.reservation_timeout;
                if expires > now {
                    reserved += 1;
                    wake(plan, expires);
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
                oldest_waiting = Some(
                    oldest_waiting.map_or(d.next_attempt_at, |t: OffsetDateTime| {
                        t.min(d.next_attempt_at)
                    }),
                );
                if d.next_attempt_at > now {
                    wake(plan, d.next_attempt_at);
                }
                queued.push(d);
            }
            DispatchState::Confirmed | DispatchState::Cancelled | DispatchState::Failed => {}
        }
    }
    let Some(spec) = spec else { return };
    // The pool's order (priorities, fairness) over all its waiting work, the
    // order operators see; work waiting for a retry keeps its place.
    let eligible: Vec<&OpenDispatch> = dispatch_order(spec, &settings.priority_labels, &queued)
        .into_iter()
        .filter(|d| d.next_attempt_at <= now)
        .collect();
    let (running, blocked) = match state {
        Some(PoolState::Known { running, .. }) => (Some(*running), None),
        Some(PoolState::Unknown { reason }) => (None, Some(reason.clone())),
        None => (None, Some("no capacity information".to_owned())),
    };
    let mut starting = 0u32;
    if let Some(running) = running.filter(|_| !paused) {
        let free = spec
            .max_capacity
            .saturating_sub(running.saturating_add(reserved));
        let before = plan.trigger.len();
        plan.trigger
            .extend(eligible.iter().take(free as usize).map(|d| d.id));
        starting = u32::try_from(plan.trigger.len() - before).unwrap_or(u32::MAX);
    }
    plan.usage.push(PoolUsage {
        pool: key.clone(),
        running,
        reserved,
        max_capacity: spec.max_capacity,
        waiting,
        starting,
        oldest_waiting,
        blocked,
        paused,
    });
}

/// Retry policy for failed triggers (from `dispatch:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before `failed`.
    pub max_attempts: u32,
    /// First retry delay.
    pub backoff_base: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
}

/// What the answer to one trigger means for its dispatch: 202 → `Triggered`;
/// an answer lost after sending → `Unanswered` (the slot stays reserved);
/// a refusal or a request that never left → `Retry` with backoff, or `Failed`
/// once `max_attempts` are used.
pub fn trigger_outcome(
    dispatch: DispatchId,
    attempt: u32,
    result: Result<Option<String>, TriggerError>,
    policy: RetryPolicy,
    now: OffsetDateTime,
) -> DispatchOutcome {
    match result {
        Ok(listener_event_id) => DispatchOutcome::Triggered {
            id: dispatch,
            attempt,
            listener_event_id,
        },
        Err(e) if e.may_have_reached_listener() => DispatchOutcome::Unanswered {
            id: dispatch,
            attempt,
            error: e.to_string(),
        },
        Err(e) if attempt >= policy.max_attempts => DispatchOutcome::Failed {
            id: dispatch,
            attempt,
            error: format!("gave up after {attempt} attempts: {e}"),
        },
        Err(e) => {
            let seed = u64::try_from(dispatch.0).unwrap_or_default();
            DispatchOutcome::Retry {
                id: dispatch,
                attempt,
                next_attempt_at: now
                    + retry_delay(policy.backoff_base, policy.backoff_max, attempt, seed),
                error: e.to_string(),
            }
        }
    }
}

/// What the store must be asked for run cancellations this pass, or `None`
/// when no item cancels anything (the default: nothing is asked). Runs are
/// taken from pools whose state is known only: a confirmed dispatch counts as
/// running while its run is unfinished there.
pub fn cancel_query(
    settings: &Settings,
    pools: &BTreeMap<PoolKey, PoolState>,
) -> Option<CancelQuery> {
    let superseded_items: Vec<String> = settings
        .items
        .iter()
        .filter(|i| i.cancel_superseded)
        .map(|i| i.name.clone())
        .collect();
    let close_items: Vec<String> = settings
        .items
        .iter()
        .filter(|i| i.cancel_on_close)
        .map(|i| i.name.clone())
        .collect();
    if superseded_items.is_empty() && close_items.is_empty() {
        return None;
    }
    let mut query = CancelQuery {
        superseded_items,
        close_items,
        ..CancelQuery::default()
    };
    for state in pools.values() {
        let PoolState::Known { runs, .. } = state else {
            continue;
        };
        for run in runs.iter().filter(|r| !r.finished) {
            query.running_event_ids.extend(run.event_id.clone());
            query.running_dispatch_ids.extend(
                run.dispatch_id
                    .as_deref()
                    .and_then(|d| d.parse::<i64>().ok()),
            );
        }
    }
    query.running_event_ids.sort_unstable();
    query.running_event_ids.dedup();
    query.running_dispatch_ids.sort_unstable();
    query.running_dispatch_ids.dedup();
    Some(query)
}

/// Decides which candidates' work is cancelled: a newer event wins for
/// items with `cancel_superseded` (a queued dispatch is left to newest-wins,
/// which already cancels it), a newer `closed` event of the PR for items
/// with `cancel_on_close`. Candidates whose item or pool is no longer
/// configured are left alone.
pub fn plan_run_cancels(
    settings: &Settings,
    candidates: &[CancelCandidate],
) -> Vec<DispatchOutcome> {
    let mut out = Vec::new();
    for c in candidates {
        let Some(item) = settings.item(&c.item) else {
            continue;
        };
        let Some(pool) = settings.pools.get(&c.pool) else {
            continue;
        };
        let superseded = item.cancel_superseded
            && c.state != DispatchState::Queued
            && c.newer_event.is_some_and(|n| n > c.event_id);
        let closed = item.cancel_on_close && c.closed_by.is_some_and(|n| n > c.event_id);
        let (reason, by_event) = match (superseded, closed, c.newer_event, c.closed_by) {
            (true, _, Some(newer), _) => (CancelReason::Superseded, newer),
            (_, true, _, Some(close)) => (CancelReason::Closed, close),
            _ => continue,
        };
        out.push(DispatchOutcome::CancelRun {
            id: c.id,
            reason,
            by_event,
            target: RunTarget {
                namespace: pool.namespace.clone(),
                api_version: pool.api_version,
                dispatch_label: pool.dispatch_label.clone(),
            },
        });
    }
    out
}

#[cfg(test)]
mod tests;
