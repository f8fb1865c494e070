//! The parts of the open set an incremental pass reads, and what they mean.
//!
//! A pass over a deep queue must not read every waiting dispatch: with 1,000
//! full pools and 100,000 waiting dispatches only the work in flight can
//! change, and only a pool with room can start anything. So past
//! `dispatch.incremental_pass_above` waiting dispatches a pass reads
//!
//! * the open dispatches of the pull requests it is planning deliveries for
//!   ([`of_prs`], for newest-wins),
//! * the work in flight ([`in_flight`]: triggering, or triggered within the
//!   reservation), which decides every pool's room,
//! * the heads of the queues of pools with free slots once the work in
//!   flight is counted ([`head_requests`], [`heads`]),
//! * after a start or a reload, queued work its item no longer sends to
//!   that pool ([`misplaced`]), so it is moved or failed as a full pass
//!   would,
//! * now and then a per-pool count for metrics ([`summary`]).
//!
//! The functions here are the reference meaning of those reads, over the
//! whole open set: the in-memory store of the engine's tests answers with
//! them, and the PostgreSQL store's queries are tested against them.

use std::collections::{BTreeMap, HashSet};

use time::OffsetDateTime;

use crate::config::{Fairness, PoolKey, Settings};
use crate::domain::{DispatchState, PullRequestRef};
use crate::planner::PoolUsage;
use crate::ports::OpenDispatch;

/// The head of one pool's queue to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadRequest {
    /// The pool.
    pub pool: PoolKey,
    /// At most this many dispatches whose retry time has come, in queue
    /// order; `None`: all its waiting work, also in backoff (a pool whose
    /// order depends on more than queue position: priorities, fairness).
    pub limit: Option<u32>,
}

/// Waiting work of one pool, counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSummary {
    /// Queued dispatches.
    pub waiting: u32,
    /// The earliest `next_attempt_at` among them.
    pub oldest_waiting: Option<OffsetDateTime>,
    /// The earliest `next_attempt_at` still in the future (a retry in backoff).
    pub next_retry: Option<OffsetDateTime>,
}

/// Triggering dispatches and triggered ones (the open set holds only those
/// within the reservation).
pub fn in_flight(open: Vec<OpenDispatch>) -> Vec<OpenDispatch> {
    open.into_iter()
        .filter(|d| d.state != DispatchState::Queued)
        .collect()
}

/// The open dispatches of `prs`.
pub fn of_prs(open: Vec<OpenDispatch>, prs: &[PullRequestRef]) -> Vec<OpenDispatch> {
    let prs: HashSet<&PullRequestRef> = prs.iter().collect();
    open.into_iter().filter(|d| prs.contains(&d.pr)).collect()
}

/// The queued dispatches of each requested pool in queue order (position,
/// then id): with a limit, the first `limit` whose time has come (`now`).
pub fn heads(
    open: Vec<OpenDispatch>,
    requests: &[HeadRequest],
    now: OffsetDateTime,
) -> Vec<OpenDispatch> {
    let mut by_pool: BTreeMap<&PoolKey, Vec<OpenDispatch>> = BTreeMap::new();
    let limits: BTreeMap<&PoolKey, Option<u32>> =
        requests.iter().map(|r| (&r.pool, r.limit)).collect();
    for d in open {
        if d.state != DispatchState::Queued {
            continue;
        }
        if let Some((pool, limit)) = limits.get_key_value(&d.pool)
            && (limit.is_none() || d.next_attempt_at <= now)
        {
            by_pool.entry(pool).or_default().push(d);
        }
    }
    let mut out = Vec::new();
    for (pool, mut work) in by_pool {
        work.sort_by_key(|d| (d.queue_position, d.id));
        let take = limits[pool].map_or(usize::MAX, |l| l as usize);
        out.extend(work.into_iter().take(take));
    }
    out
}

/// Queued dispatches whose `(item, pool)` is not one of `placements` (each
/// configured item with its pool): their item moved to another pool or is
/// gone.
pub fn misplaced(open: Vec<OpenDispatch>, placements: &[(String, PoolKey)]) -> Vec<OpenDispatch> {
    let placed: HashSet<(&str, &PoolKey)> =
        placements.iter().map(|(i, p)| (i.as_str(), p)).collect();
    open.into_iter()
        .filter(|d| {
            d.state == DispatchState::Queued && !placed.contains(&(d.item.as_str(), &d.pool))
        })
        .collect()
}

/// Each configured item with its pool, for [`misplaced`].
pub fn placements(settings: &Settings) -> Vec<(String, PoolKey)> {
    settings
        .items
        .iter()
        .filter_map(|i| Some((i.name.clone(), settings.pools.get(&i.pool)?.key.clone())))
        .collect()
}

/// Waiting work per pool.
pub fn summary(open: &[OpenDispatch], now: OffsetDateTime) -> BTreeMap<PoolKey, QueueSummary> {
    let mut out: BTreeMap<PoolKey, QueueSummary> = BTreeMap::new();
    for d in open.iter().filter(|d| d.state == DispatchState::Queued) {
        let s = out.entry(d.pool.clone()).or_insert(QueueSummary {
            waiting: 0,
            oldest_waiting: None,
            next_retry: None,
        });
        s.waiting += 1;
        s.oldest_waiting = Some(
            s.oldest_waiting
                .map_or(d.next_attempt_at, |t| t.min(d.next_attempt_at)),
        );
        if d.next_attempt_at > now {
            s.next_retry = Some(
                s.next_retry
                    .map_or(d.next_attempt_at, |t| t.min(d.next_attempt_at)),
            );
        }
    }
    out
}

/// The queue heads a pass needs, from the usage the planner computes over
/// the work in flight alone (`in_flight_usage`): pools whose state is
/// known, not paused, with free slots. A FIFO pool needs as many heads as
/// it has free slots; a pool ordered by priorities or fairness needs all
/// its waiting work, as a full pass reads it.
pub fn head_requests(settings: &Settings, in_flight_usage: &[PoolUsage]) -> Vec<HeadRequest> {
    let ordered_by_labels = !settings.priority_labels.is_empty();
    in_flight_usage
        .iter()
        .filter(|u| !u.paused)
        .filter_map(|u| {
            let spec = settings.pools.get(&u.pool)?;
            let busy = u.running?.saturating_add(u.reserved);
            let free = u.max_capacity.saturating_sub(busy);
            if free == 0 {
                return None;
            }
            let fifo = spec.fairness == Fairness::Fifo && !ordered_by_labels;
            Some(HeadRequest {
                pool: u.pool.clone(),
                limit: fifo.then_some(free),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DispatchId, EventId};

    fn at(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + s).unwrap()
    }

    fn queued(id: i64, pool: &str, position: i64, next: i64) -> OpenDispatch {
        OpenDispatch {
            id: DispatchId(id),
            event_id: EventId(id),
            item: format!("item-{pool}"),
            pool: PoolKey(pool.to_owned()),
            pr: PullRequestRef {
                repository: "o/r".to_owned(),
                number: id,
            },
            state: DispatchState::Queued,
            queue_position: position,
            attempts: 0,
            next_attempt_at: at(next),
            listener_event_id: None,
            trigger_started_at: None,
            triggered_at: None,
            has_newer: false,
            labels: Vec::new(),
            recent_triggers: Vec::new(),
        }
    }

    #[test]
    fn heads_take_the_first_ready_dispatches_in_queue_order() {
        let open = vec![
            queued(1, "a", 30, 0),
            queued(2, "a", 10, 0),
            queued(3, "a", 20, 99), // in backoff: skipped by a limited request
            queued(4, "a", 40, 0),
            queued(5, "b", 5, 0),
        ];
        let request = |limit| HeadRequest {
            pool: PoolKey("a".to_owned()),
            limit,
        };
        let ids = |v: Vec<OpenDispatch>| v.iter().map(|d| d.id.0).collect::<Vec<_>>();
        assert_eq!(ids(heads(open.clone(), &[request(Some(2))], at(1))), [2, 1]);
        assert_eq!(
            ids(heads(open.clone(), &[request(None)], at(1))),
            [2, 3, 1, 4]
        );
        assert!(heads(open, &[], at(1)).is_empty());
    }

    #[test]
    fn summary_counts_waiting_work_and_the_next_retry() {
        let open = vec![
            queued(1, "a", 1, 0),
            queued(2, "a", 2, 50),
            queued(3, "b", 3, 5),
        ];
        let s = summary(&open, at(10));
        assert_eq!(
            s[&PoolKey("a".to_owned())],
            QueueSummary {
                waiting: 2,
                oldest_waiting: Some(at(0)),
                next_retry: Some(at(50))
            }
        );
        assert_eq!(s[&PoolKey("b".to_owned())].next_retry, None);
    }

    #[test]
    fn misplaced_finds_work_whose_item_left_its_pool() {
        let open = vec![queued(1, "a", 1, 0), queued(2, "b", 2, 0)];
        let placements = [("item-a".to_owned(), PoolKey("a".to_owned()))];
        let found = misplaced(open, &placements);
        assert_eq!(found.iter().map(|d| d.id.0).collect::<Vec<_>>(), [2]);
    }
}
