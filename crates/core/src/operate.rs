//! What operators see: each pool's usage and its queue in order, why each
//! waiting dispatch waits right now, and when it may start.
//!
//! Pure functions over a [`QueueSnapshot`] (read from the database by any
//! replica) and the pools' Kubernetes state. Usage comes from the same
//! [`plan_dispatch`] the active dispatcher runs, so the numbers an operator
//! reads are the numbers the dispatcher decides with.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::time::Duration;

use time::OffsetDateTime;

use crate::config::{PoolKey, PoolSpec, Settings};
use crate::domain::{DispatchId, DispatchState, EventUuid, PullRequestRef};
use crate::fairness::dispatch_order;
use crate::planner::{DispatchLimits, PoolUsage, plan_dispatch};
use crate::ports::{OpenDispatch, PoolState};

/// Who paused a pool, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseInfo {
    /// The admin token's name.
    pub by: String,
    /// When (database clock).
    pub at: OffsetDateTime,
}

/// Display facts of one open dispatch that the planner does not need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingFacts {
    /// The event's public id.
    pub event: EventUuid,
    /// When the dispatch joined the queue.
    pub queued_at: OffsetDateTime,
    /// Why its last attempt failed, when it is waiting for a retry.
    pub last_error: Option<String>,
}

/// The open work as stored, read in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// The database clock at the read.
    pub now: OffsetDateTime,
    /// Queued, triggering and recently triggered dispatches.
    pub open: Vec<OpenDispatch>,
    /// Display facts of the open dispatches.
    pub facts: HashMap<DispatchId, WaitingFacts>,
    /// Pools an operator paused.
    pub paused: BTreeMap<PoolKey, PauseInfo>,
}

/// Why a queued dispatch is not running right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// An operator paused the pool.
    Paused {
        /// Who.
        by: String,
    },
    /// The pool's PipelineRuns are not known to be current: nothing is
    /// dispatched for it (fail closed).
    KubernetesUnknown {
        /// Why.
        reason: String,
    },
    /// Its last attempt failed; the next one is due at `at`.
    RetryAt {
        /// When.
        at: OffsetDateTime,
    },
    /// Every slot is taken (or promised to work ahead of it).
    PoolFull {
        /// Unfinished PipelineRuns.
        running: u32,
        /// Triggers whose PipelineRun is not visible yet.
        reserved: u32,
        /// `max_capacity`.
        capacity: u32,
    },
    /// A slot is free: the next pass (within milliseconds) triggers it.
    Starting,
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Paused { by } => write!(f, "pool paused by {by}"),
            Self::KubernetesUnknown { reason } => {
                write!(
                    f,
                    "Kubernetes state unknown ({reason}): nothing is dispatched"
                )
            }
            Self::RetryAt { at } => {
                write!(f, "next retry at {}", crate::domain::rfc3339::format(*at))
            }
            Self::PoolFull {
                running,
                reserved,
                capacity,
            } => write!(
                f,
                "pool full: {running} running + {reserved} reserved of capacity {capacity}"
            ),
            Self::Starting => f.write_str("a slot is free: starting now"),
        }
    }
}

/// One queued dispatch as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedWork {
    /// 1-based place in its pool's queue.
    pub position: u32,
    /// Dispatch.
    pub dispatch: DispatchId,
    /// Its event's public id (`None` only if the row vanished meanwhile).
    pub event: Option<EventUuid>,
    /// Config item.
    pub item: String,
    /// Pull request.
    pub pr: PullRequestRef,
    /// Its priority (`dispatcher.priority_labels` from the PR's labels; 0 without).
    pub priority: i32,
    /// When it joined the queue.
    pub queued_at: Option<OffsetDateTime>,
    /// Why the last attempt failed (a retry).
    pub last_error: Option<String>,
    /// Why it waits now.
    pub reason: WaitReason,
    /// When it should start, from the pool's typical run duration; `None`
    /// while that is unknown, the pool is paused or Kubernetes is unknown.
    pub estimated_start: Option<OffsetDateTime>,
}

/// One pool as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolOverview {
    /// The configured pool.
    pub spec: PoolSpec,
    /// Running, reserved, capacity and the Kubernetes state, as the planner sees them.
    pub usage: PoolUsage,
    /// Set when an operator paused it.
    pub paused: Option<PauseInfo>,
    /// Median duration of its recently finished PipelineRuns.
    pub typical_run: Option<Duration>,
    /// Age of its oldest queued dispatch.
    pub oldest_wait: Option<Duration>,
    /// Its queue, first to start first.
    pub queue: Vec<QueuedWork>,
}

/// How many finished runs the typical duration looks at.
const RECENT_RUNS: usize = 20;

/// Every configured pool's overview. `states` holds each pool's Kubernetes
/// state (this replica's watch).
pub fn overview(
    settings: &Settings,
    snapshot: &QueueSnapshot,
    states: &BTreeMap<PoolKey, PoolState>,
) -> Vec<PoolOverview> {
    let now = snapshot.now;
    let paused: BTreeSet<PoolKey> = snapshot.paused.keys().cloned().collect();
    let plan = plan_dispatch(
        settings,
        &snapshot.open,
        states,
        &paused,
        &HashSet::new(),
        DispatchLimits::from(&settings.dispatch),
        now,
    );
    let mut usage: HashMap<PoolKey, PoolUsage> = plan
        .usage
        .into_iter()
        .map(|u| (u.pool.clone(), u))
        .collect();
    settings
        .pools
        .values()
        .filter_map(|spec| {
            let usage = usage.remove(&spec.key)?;
            let typical_run = states.get(&spec.key).and_then(typical_run);
            let waiting: Vec<&OpenDispatch> = snapshot
                .open
                .iter()
                .filter(|d| d.pool == spec.key && d.state == DispatchState::Queued && !d.has_newer)
                .collect();
            let waiting = dispatch_order(spec, &settings.priority_labels, &waiting);
            let pause = snapshot.paused.get(&spec.key).cloned();
            let starts = estimate_starts(
                spec.max_capacity,
                states.get(&spec.key),
                usage.reserved,
                typical_run,
                &waiting,
                now,
            );
            let free = usage.running.map(|r| {
                spec.max_capacity
                    .saturating_sub(r.saturating_add(usage.reserved))
            });
            let mut ready_ahead = 0u32;
            let queue = waiting
                .iter()
                .zip(1u32..)
                .map(|(d, position)| {
                    let facts = snapshot.facts.get(&d.id);
                    let reason = if let Some(p) = &pause {
                        WaitReason::Paused { by: p.by.clone() }
                    } else if let Some(reason) = &usage.blocked {
                        WaitReason::KubernetesUnknown {
                            reason: reason.clone(),
                        }
                    } else if d.next_attempt_at > now {
                        WaitReason::RetryAt {
                            at: d.next_attempt_at,
                        }
                    } else {
                        ready_ahead += 1;
                        if free.is_some_and(|f| ready_ahead <= f) {
                            WaitReason::Starting
                        } else {
                            WaitReason::PoolFull {
                                running: usage.running.unwrap_or_default(),
                                reserved: usage.reserved,
                                capacity: spec.max_capacity,
                            }
                        }
                    };
                    QueuedWork {
                        position,
                        dispatch: d.id,
                        event: facts.map(|f| f.event),
                        item: d.item.clone(),
                        pr: d.pr.clone(),
                        priority: settings.priority_labels.priority(&d.labels),
                        queued_at: facts.map(|f| f.queued_at),
                        last_error: facts.and_then(|f| f.last_error.clone()),
                        reason,
                        estimated_start: if pause.is_some() {
                            None
                        } else {
                            starts.get(&d.id).copied()
                        },
                    }
                })
                .collect();
            Some(PoolOverview {
                spec: spec.clone(),
                oldest_wait: usage.oldest_waiting.map(|t| since(t, now)),
                usage,
                paused: pause,
                typical_run,
                queue,
            })
        })
        .collect()
}

fn since(t: OffsetDateTime, now: OffsetDateTime) -> Duration {
    Duration::try_from(now - t).unwrap_or_default()
}

/// The median duration of the pool's most recently finished runs.
pub fn typical_run(state: &PoolState) -> Option<Duration> {
    let PoolState::Known { runs, .. } = state else {
        return None;
    };
    let mut finished: Vec<(OffsetDateTime, Duration)> = runs
        .iter()
        .filter_map(|r| {
            let (start, end) = (r.created_at?, r.finished_at?);
            Some((end, Duration::try_from(end - start).ok()?))
        })
        .collect();
    finished.sort_by_key(|(end, _)| Reverse(*end));
    let mut recent: Vec<Duration> = finished
        .into_iter()
        .take(RECENT_RUNS)
        .map(|(_, d)| d)
        .collect();
    recent.sort_unstable();
    recent.get(recent.len() / 2).copied()
}

/// Start estimates for `waiting` (in queue order): every busy slot frees
/// when its run reaches the typical duration (reservations count as just
/// started), and each queued dispatch takes the first free slot at or after
/// its next attempt (in queue order among those due). Empty when the typical duration or the pool's state is
/// unknown.
fn estimate_starts(
    capacity: u32,
    state: Option<&PoolState>,
    reserved: u32,
    typical: Option<Duration>,
    waiting: &[&OpenDispatch],
    now: OffsetDateTime,
) -> HashMap<DispatchId, OffsetDateTime> {
    let (Some(typical), Some(PoolState::Known { runs, .. })) = (typical, state) else {
        return HashMap::new();
    };
    if capacity == 0 {
        return HashMap::new();
    }
    let mut busy: BinaryHeap<Reverse<OffsetDateTime>> = runs
        .iter()
        .filter(|r| !r.finished)
        .map(|r| Reverse((r.created_at.unwrap_or(now) + typical).max(now)))
        .chain((0..reserved).map(|_| Reverse(now + typical)))
        .collect();
    // Work waiting for a retry holds no slot until it is due: the planner
    // skips it, so it goes after everything that is due earlier.
    let mut order: Vec<&OpenDispatch> = waiting.to_vec();
    order.sort_by_key(|d| d.next_attempt_at.max(now));
    let mut clock = now;
    let mut starts = HashMap::new();
    for d in order {
        while busy.len() >= capacity as usize {
            let Some(Reverse(free_at)) = busy.pop() else {
                break;
            };
            clock = clock.max(free_at);
        }
        let start = clock.max(d.next_attempt_at);
        busy.push(Reverse(start + typical));
        starts.insert(d.id, start);
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::domain::EventId;
    use crate::ports::RunView;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-12-02 12:00 UTC);

    fn settings(capacity: u32) -> Settings {
        let v = serde_json::json!({
            "dispatcher": {"items": [{
                "name": "ops", "events": ["opened"], "full_repository_name": "o/r",
                "callback_url": "http://el:8080",
                "capacity": {"type": "ocp_tekton", "pipeline_name": "p", "max_capacity": capacity, "namespace": "ns"},
            }]},
            "security": {"verify_signatures": false},
        });
        let (raw, _) = parse(v).unwrap_or_else(|e| panic!("{e}"));
        Settings::from_raw(raw).unwrap_or_else(|e| panic!("{e}"))
    }

    fn queued(id: i64, next_attempt_at: OffsetDateTime) -> OpenDispatch {
        OpenDispatch {
            id: DispatchId(id),
            event_id: EventId(id),
            item: "ops".into(),
            pool: PoolKey("ns/p".into()),
            pr: PullRequestRef {
                repository: "o/r".into(),
                number: id,
            },
            state: DispatchState::Queued,
            queue_position: id,
            attempts: 0,
            next_attempt_at,
            listener_event_id: None,
            trigger_started_at: None,
            triggered_at: None,
            has_newer: false,
            labels: Vec::new(),
            recent_triggers: Vec::new(),
        }
    }

    fn minutes(n: i64) -> time::Duration {
        time::Duration::minutes(n)
    }

    /// One run started 4 minutes ago and two finished ones of 10 minutes.
    fn state() -> PoolState {
        let finished = |end: OffsetDateTime| RunView {
            created_at: Some(end - minutes(10)),
            finished: true,
            finished_at: Some(end),
            ..RunView::default()
        };
        PoolState::Known {
            running: 1,
            runs: vec![
                RunView {
                    name: Some("run-1".into()),
                    created_at: Some(NOW - minutes(4)),
                    ..RunView::default()
                },
                finished(NOW - minutes(20)),
                finished(NOW - minutes(30)),
            ],
        }
    }

    fn snapshot(open: Vec<OpenDispatch>) -> QueueSnapshot {
        QueueSnapshot {
            now: NOW,
            open,
            facts: HashMap::new(),
            paused: BTreeMap::new(),
        }
    }

    fn states(state: PoolState) -> BTreeMap<PoolKey, PoolState> {
        [(PoolKey("ns/p".into()), state)].into()
    }

    #[test]
    fn positions_reasons_and_estimates_follow_the_queue() {
        let s = settings(2);
        let open = vec![queued(3, NOW), queued(1, NOW), queued(2, NOW + minutes(30))];
        let pools = overview(&s, &snapshot(open), &states(state()));
        let pool = &pools[0];
        assert_eq!(pool.typical_run, Some(Duration::from_secs(600)));
        let seen: Vec<(i64, u32, WaitReason, Option<OffsetDateTime>)> = pool
            .queue
            .iter()
            .map(|w| {
                (
                    w.dispatch.0,
                    w.position,
                    w.reason.clone(),
                    w.estimated_start,
                )
            })
            .collect();
        let full = WaitReason::PoolFull {
            running: 1,
            reserved: 0,
            capacity: 2,
        };
        assert_eq!(
            seen,
            [
                (1, 1, WaitReason::Starting, Some(NOW)),
                (
                    2,
                    2,
                    WaitReason::RetryAt {
                        at: NOW + minutes(30)
                    },
                    Some(NOW + minutes(30))
                ),
                // The running run ends in 6 minutes; dispatch 1 holds the other slot.
                (3, 3, full, Some(NOW + minutes(6))),
            ]
        );
    }

    #[test]
    fn paused_and_unknown_pools_say_so_and_estimate_nothing() {
        let s = settings(2);
        let mut snap = snapshot(vec![queued(1, NOW)]);
        snap.paused.insert(
            PoolKey("ns/p".into()),
            PauseInfo {
                by: "alice".into(),
                at: NOW,
            },
        );
        let pools = overview(&s, &snap, &states(state()));
        assert_eq!(
            pools[0].queue[0].reason,
            WaitReason::Paused { by: "alice".into() }
        );
        assert_eq!(pools[0].queue[0].estimated_start, None);
        assert!(pools[0].usage.paused);

        let unknown = PoolState::Unknown {
            reason: "watch failed".into(),
        };
        let pools = overview(&s, &snapshot(vec![queued(1, NOW)]), &states(unknown));
        assert!(matches!(
            pools[0].queue[0].reason,
            WaitReason::KubernetesUnknown { .. }
        ));
        assert_eq!(pools[0].queue[0].estimated_start, None);
    }

    /// Positions follow the order the planner dispatches in: a priority PR
    /// first (and shown with its priority), then the pool's fairness.
    #[test]
    fn positions_show_priorities_and_follow_the_dispatch_order() {
        let v = serde_json::json!({
            "dispatcher": {
                "items": [{
                    "name": "ops", "events": ["opened"], "full_repository_name": "o/r",
                    "callback_url": "http://el:8080",
                    "capacity": {"type": "ocp_tekton", "pipeline_name": "p", "max_capacity": 1, "namespace": "ns"},
                }],
                "priority_labels": [{"label": "urgent", "priority": 5}],
            },
            "security": {"verify_signatures": false},
        });
        let (raw, _) = parse(v).unwrap_or_else(|e| panic!("{e}"));
        let s = Settings::from_raw(raw).unwrap_or_else(|e| panic!("{e}"));
        let mut urgent = queued(3, NOW);
        urgent.labels = vec!["urgent".into()];
        let open = vec![queued(1, NOW), queued(2, NOW), urgent];
        let pools = overview(&s, &snapshot(open.clone()), &states(state()));
        let seen: Vec<(i64, u32, i32)> = pools[0]
            .queue
            .iter()
            .map(|w| (w.dispatch.0, w.position, w.priority))
            .collect();
        assert_eq!(seen, [(3, 1, 5), (1, 2, 0), (2, 3, 0)]);
        let plan = plan_dispatch(
            &s,
            &open,
            &states(PoolState::Known {
                running: 0,
                runs: vec![],
            }),
            &BTreeSet::new(),
            &HashSet::new(),
            DispatchLimits::from(&s.dispatch),
            NOW,
        );
        assert_eq!(plan.trigger, [DispatchId(3)]);
    }
}
