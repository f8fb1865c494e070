//! The order in which a pool's waiting work is dispatched: one pure
//! function, [`dispatch_order`], used by the planner (what is triggered) and
//! by [`crate::operate`] (the positions operators see), so both agree.
//!
//! * **Priorities first.** A waiting dispatch's priority is the highest
//!   `dispatcher.priority_labels` priority among its pull request's labels
//!   (0 without one). Higher priorities come first; work of equal priority
//!   keeps the pool's fairness order. Only waiting work is ordered: running
//!   work is never preempted.
//! * **`fifo`** (default): oldest queue position first, as the original.
//! * **`round_robin_repository`**: repositories take turns, each with its
//!   oldest waiting work, so one busy repository cannot starve another. A
//!   repository with weight N (`capacity.weights`) gets N consecutive turns
//!   per round. The turns are kept across passes without state of their own:
//!   a repository's next turn is due when its N-th most recent dispatch in
//!   the pool (the stored trigger starts, [`OpenDispatch::recent_triggers`])
//!   is the oldest; a repository with fewer than N dispatches so far is due
//!   at once. Ties (two repositories never served) go to the one whose
//!   oldest waiting work is older, then by repository name. Work placed in
//!   this pass's order counts as served after everything stored, so one pass
//!   orders the whole queue the way passes will drain it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};

use time::OffsetDateTime;

use crate::config::{Fairness, PoolKey, PoolSpec, PriorityLabels};
use crate::domain::{DispatchState, EventId, PullRequestRef};
use crate::ports::{OpenDispatch, OpenExtras, UnplannedEvent};

/// Brings what the pass holds in memory up to date after intake, for the
/// extras that were read ([`OpenExtras`]): a delivery of this batch that
/// carried a label list (matched by an item or not: a `labeled` event
/// usually is not) gives its PR's waiting work those labels, the newest
/// delivery last; and work that joined a pool in this pass takes its
/// repository's recent trigger starts from waiting work of the same
/// repository and pool read at the start of the pass.
pub fn refresh_after_intake(
    open: &mut [OpenDispatch],
    batch: &[UnplannedEvent],
    extras: OpenExtras,
) {
    if extras.labels {
        let mut newest: HashMap<&PullRequestRef, (EventId, &[String])> = HashMap::new();
        for event in batch {
            if let Some(labels) = &event.labels {
                newest
                    .entry(&event.pr)
                    .and_modify(|(id, l)| {
                        if event.id > *id {
                            *id = event.id;
                            *l = labels;
                        }
                    })
                    .or_insert((event.id, labels));
            }
        }
        for d in open.iter_mut().filter(|d| d.state == DispatchState::Queued) {
            if let Some((_, labels)) = newest.get(&d.pr) {
                d.labels = labels.to_vec();
            }
        }
    }
    if extras.recent_triggers {
        let mut known: HashMap<(PoolKey, String), Vec<OffsetDateTime>> = HashMap::new();
        for d in open.iter().filter(|d| !d.recent_triggers.is_empty()) {
            known
                .entry((d.pool.clone(), d.pr.repository.clone()))
                .or_insert_with(|| d.recent_triggers.clone());
        }
        for d in open
            .iter_mut()
            .filter(|d| d.state == DispatchState::Queued && d.recent_triggers.is_empty())
        {
            if let Some(recent) = known.get(&(d.pool.clone(), d.pr.repository.clone())) {
                d.recent_triggers.clone_from(recent);
            }
        }
    }
}

/// A dispatch of a repository, as far as turns go: stored ones by when their
/// trigger started, then the ones placed earlier in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Turn {
    Stored(OffsetDateTime),
    Placed(u64),
}

/// The waiting work of one pool (queued dispatches that may run) in the
/// order it is to be dispatched. `priorities` is `dispatcher.priority_labels`.
pub fn dispatch_order<'a>(
    spec: &PoolSpec,
    priorities: &PriorityLabels,
    waiting: &[&'a OpenDispatch],
) -> Vec<&'a OpenDispatch> {
    let mut fifo: Vec<&'a OpenDispatch> = waiting.to_vec();
    fifo.sort_by_key(|d| (d.queue_position, d.id));
    let mut levels: BTreeMap<Reverse<i32>, Vec<&'a OpenDispatch>> = BTreeMap::new();
    for d in fifo {
        levels
            .entry(Reverse(priorities.priority(&d.labels)))
            .or_default()
            .push(d);
    }
    match &spec.fairness {
        Fairness::Fifo => levels.into_values().flatten().collect(),
        fairness @ Fairness::RoundRobinRepository { .. } => {
            let mut turns = Turns::default();
            let mut out = Vec::with_capacity(waiting.len());
            for level in levels.into_values() {
                turns.order(fairness, level, &mut out);
            }
            out
        }
    }
}

/// Each repository's dispatches, newest first.
#[derive(Default)]
struct Turns<'a> {
    served: BTreeMap<&'a str, Vec<Turn>>,
    placed: u64,
}

impl<'a> Turns<'a> {
    /// Appends `level` (one priority, FIFO order) to `out` in turn order.
    fn order(
        &mut self,
        fairness: &Fairness,
        level: Vec<&'a OpenDispatch>,
        out: &mut Vec<&'a OpenDispatch>,
    ) {
        let mut queues: BTreeMap<&'a str, VecDeque<&'a OpenDispatch>> = BTreeMap::new();
        for d in level {
            let repo = d.pr.repository.as_str();
            self.served.entry(repo).or_insert_with(|| {
                d.recent_triggers
                    .iter()
                    .copied()
                    .map(Turn::Stored)
                    .collect()
            });
            queues.entry(repo).or_default().push_back(d);
        }
        loop {
            let next = queues
                .iter()
                .filter_map(|(repo, q)| {
                    let head = q.front()?;
                    let weight = fairness.weight(repo).max(1) as usize;
                    let due = self
                        .served
                        .get(repo)
                        .and_then(|s| s.get(weight - 1))
                        .copied();
                    Some((due, head.queue_position, head.id, *repo))
                })
                .min();
            let Some((_, _, _, repo)) = next else { break };
            let Some(d) = queues.get_mut(repo).and_then(VecDeque::pop_front) else {
                break;
            };
            self.placed += 1;
            self.served
                .entry(repo)
                .or_default()
                .insert(0, Turn::Placed(self.placed));
            out.push(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PoolKey, TektonApiVersion};
    use crate::domain::{DispatchId, DispatchState, EventId, PullRequestRef};
    use proptest::prelude::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-12-02 12:00 UTC);

    fn spec(fairness: Fairness) -> PoolSpec {
        PoolSpec {
            key: PoolKey("ns/p".into()),
            namespace: "ns".into(),
            pipeline_name: "p".into(),
            annotation_selector: BTreeMap::new(),
            api_version: TektonApiVersion::V1,
            max_capacity: 1,
            dispatch_label: None,
            fairness,
        }
    }

    fn rr(weights: &[(&str, u32)]) -> Fairness {
        Fairness::RoundRobinRepository {
            weights: weights.iter().map(|(r, w)| ((*r).to_owned(), *w)).collect(),
        }
    }

    fn work(id: i64, repo: &str) -> OpenDispatch {
        OpenDispatch {
            id: DispatchId(id),
            event_id: EventId(id),
            item: "ops".into(),
            pool: PoolKey("ns/p".into()),
            pr: PullRequestRef {
                repository: repo.into(),
                number: id,
            },
            state: DispatchState::Queued,
            queue_position: id,
            attempts: 0,
            next_attempt_at: T0,
            listener_event_id: None,
            trigger_started_at: None,
            triggered_at: None,
            has_newer: false,
            labels: Vec::new(),
            recent_triggers: Vec::new(),
        }
    }

    fn ids(order: &[&OpenDispatch]) -> Vec<i64> {
        order.iter().map(|d| d.id.0).collect()
    }

    fn order(fairness: Fairness, prio: &PriorityLabels, open: &[OpenDispatch]) -> Vec<i64> {
        let refs: Vec<&OpenDispatch> = open.iter().collect();
        ids(&dispatch_order(&spec(fairness), prio, &refs))
    }

    /// Repository A has 10 PRs queued before B's 2.
    fn busy_a() -> Vec<OpenDispatch> {
        (1..=10)
            .map(|i| work(i, "o/a"))
            .chain([work(11, "o/b"), work(12, "o/b")])
            .collect()
    }

    fn delivery(id: i64, pr: &OpenDispatch, labels: Option<&[&str]>) -> UnplannedEvent {
        UnplannedEvent {
            id: EventId(id),
            action: "labeled".into(),
            pr: pr.pr.clone(),
            headers: Vec::new(),
            labels: labels.map(|l| l.iter().map(|s| (*s).to_owned()).collect()),
        }
    }

    #[test]
    fn intake_refreshes_labels_and_recent_triggers_only_when_read() {
        let mut open = vec![
            work(1, "o/a"),
            work(2, "o/b"),
            work(3, "o/a"),
            work(4, "o/a"),
        ];
        open[0].labels = vec!["old".into()];
        open[0].recent_triggers = vec![T0];
        open[2].state = DispatchState::Triggering;
        let pr1 = open[0].clone();
        let pr2 = open[1].clone();
        // Out of id order on purpose; a delivery without a list changes nothing.
        let batch = [
            delivery(12, &pr2, Some(&["b"])),
            delivery(10, &pr1, Some(&["a"])),
            delivery(11, &pr1, None),
            delivery(9, &pr2, Some(&["older"])),
        ];
        let untouched = open.clone();
        refresh_after_intake(&mut open, &batch, OpenExtras::NONE);
        assert_eq!(open, untouched);

        let both = OpenExtras {
            labels: true,
            recent_triggers: true,
        };
        refresh_after_intake(&mut open, &batch, both);
        assert_eq!(open[0].labels, ["a"]);
        assert_eq!(open[1].labels, ["b"], "the newest delivery wins");
        assert!(open[2].labels.is_empty(), "work in flight is not ordered");
        assert_eq!(open[3].recent_triggers, [T0], "same repository and pool");
        assert!(open[1].recent_triggers.is_empty(), "another repository");
        assert!(open[2].recent_triggers.is_empty());
    }

    #[test]
    fn fifo_is_queue_position_then_id() {
        let mut open = busy_a();
        open.reverse();
        open[0].queue_position = 0; // 12 superseded an early event: it keeps its place
        let got = order(Fairness::Fifo, &PriorityLabels::default(), &open);
        assert_eq!(got, [12, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    }

    #[test]
    fn round_robin_interleaves_repositories_by_their_oldest_work() {
        let got = order(rr(&[]), &PriorityLabels::default(), &busy_a());
        assert_eq!(got, [1, 11, 2, 12, 3, 4, 5, 6, 7, 8, 9, 10]);
    }

    /// Capacity 1, draining one by one: each pass triggers the first of the
    /// order, whose trigger is then stored. B is not starved by A's backlog.
    #[test]
    fn round_robin_turns_carry_across_passes() {
        let mut open = busy_a();
        let mut dispatched = Vec::new();
        let mut clock = T0;
        while !open.is_empty() {
            let first = order(rr(&[]), &PriorityLabels::default(), &open)[0];
            let i = open.iter().position(|d| d.id.0 == first).unwrap();
            let done = open.remove(i);
            clock += time::Duration::seconds(1);
            for d in open
                .iter_mut()
                .filter(|d| d.pr.repository == done.pr.repository)
            {
                d.recent_triggers.insert(0, clock);
            }
            dispatched.push(first);
        }
        assert_eq!(dispatched[..4], [1, 11, 2, 12]);
        assert_eq!(dispatched[4..], [3, 4, 5, 6, 7, 8, 9, 10]);
    }

    #[test]
    fn weights_give_consecutive_turns() {
        let open: Vec<OpenDispatch> = (1..=6)
            .map(|i| work(i, "o/a"))
            .chain((7..=9).map(|i| work(i, "o/b")))
            .collect();
        let got = order(rr(&[("o/a", 2)]), &PriorityLabels::default(), &open);
        assert_eq!(got, [1, 2, 7, 3, 4, 8, 5, 6, 9]);
        // The same 2:1 across passes, draining one by one.
        let mut open = open;
        let mut dispatched = Vec::new();
        for tick in 1..=9 {
            let first = order(rr(&[("o/a", 2)]), &PriorityLabels::default(), &open)[0];
            let i = open.iter().position(|d| d.id.0 == first).unwrap();
            let done = open.remove(i);
            for d in open
                .iter_mut()
                .filter(|d| d.pr.repository == done.pr.repository)
            {
                d.recent_triggers
                    .insert(0, T0 + time::Duration::seconds(tick));
            }
            dispatched.push(first);
        }
        assert_eq!(dispatched, [1, 2, 7, 3, 4, 8, 5, 6, 9]);
    }

    #[test]
    fn a_repository_served_recently_waits_for_the_others() {
        let mut open = busy_a();
        for d in open.iter_mut().filter(|d| d.pr.repository == "o/a") {
            d.recent_triggers = vec![T0];
        }
        let got = order(rr(&[]), &PriorityLabels::default(), &open);
        assert_eq!(got[..4], [11, 1, 12, 2]);
    }

    #[test]
    fn priorities_come_first_and_keep_the_fairness_order() {
        let prio = PriorityLabels::new([("priority/critical", 100), ("priority/high", 10)]);
        let mut open = busy_a();
        open[9].labels = vec!["Priority/High".into()]; // 10
        open[11].labels = vec!["priority/high".into(), "priority/critical".into()]; // 12
        open[4].labels = vec!["priority/high".into()]; // 5
        open[2].labels = vec!["other".into()]; // 3
        assert_eq!(
            order(Fairness::Fifo, &prio, &open),
            [12, 5, 10, 1, 2, 3, 4, 6, 7, 8, 9, 11]
        );
        // o/b's turn (12) came before o/a's two (5, 10): o/b goes first after them.
        assert_eq!(
            order(rr(&[]), &prio, &open),
            [12, 5, 10, 11, 1, 2, 3, 4, 6, 7, 8, 9]
        );
    }

    fn arb_open() -> impl Strategy<Value = Vec<OpenDispatch>> {
        proptest::collection::vec((0usize..3, 0i64..40, 0usize..3), 0..25).prop_map(|rows| {
            rows.into_iter()
                .enumerate()
                .map(|(i, (repo, pos, label))| {
                    let id = i64::try_from(i).unwrap_or_default() + 1;
                    let mut d = work(id, ["o/a", "o/b", "x/c"][repo]);
                    d.queue_position = pos;
                    d.labels = [vec![], vec!["p1".into()], vec!["p2".into()]][label].clone();
                    d
                })
                .map(|mut d| {
                    d.recent_triggers = match d.pr.repository.as_str() {
                        "o/a" => vec![T0],
                        "o/b" => vec![T0 - time::Duration::seconds(1)],
                        _ => vec![],
                    };
                    d
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn every_order_is_a_permutation_respecting_priority_and_repository_fifo(
            open in arb_open(),
            weight in 1u32..4,
            round_robin in any::<bool>(),
        ) {
            let prio = PriorityLabels::new([("p1", 1), ("p2", 2)]);
            let fairness = if round_robin { rr(&[("o/a", weight)]) } else { Fairness::Fifo };
            let refs: Vec<&OpenDispatch> = open.iter().collect();
            let got = dispatch_order(&spec(fairness), &prio, &refs);
            let mut seen = ids(&got);
            seen.sort_unstable();
            let mut all: Vec<i64> = open.iter().map(|d| d.id.0).collect();
            all.sort_unstable();
            prop_assert_eq!(seen, all);
            for pair in got.windows(2) {
                let (pa, pb) = (prio.priority(&pair[0].labels), prio.priority(&pair[1].labels));
                prop_assert!(pa >= pb, "priority descends");
            }
            // Within a repository and a priority, FIFO always holds.
            for x in &got {
                for y in &got {
                    let (ix, iy) = (
                        got.iter().position(|d| d.id == x.id),
                        got.iter().position(|d| d.id == y.id),
                    );
                    if x.pr.repository == y.pr.repository
                        && prio.priority(&x.labels) == prio.priority(&y.labels)
                        && (x.queue_position, x.id) < (y.queue_position, y.id)
                    {
                        prop_assert!(ix < iy);
                    }
                }
            }
            if !round_robin {
                let mut expected: Vec<&OpenDispatch> = open.iter().collect();
                expected.sort_by_key(|d| (Reverse(prio.priority(&d.labels)), d.queue_position, d.id));
                prop_assert_eq!(ids(&got), ids(&expected));
            }
        }

        /// Under round robin, between two consecutive turns of one
        /// repository (same priority) every other repository that still has
        /// work of that priority waiting gets at most its weight.
        #[test]
        fn round_robin_never_lets_a_repository_wait_more_than_a_round(
            open in arb_open(),
        ) {
            let open: Vec<OpenDispatch> = open.into_iter().map(|mut d| { d.labels.clear(); d.recent_triggers.clear(); d }).collect();
            let refs: Vec<&OpenDispatch> = open.iter().collect();
            let got = dispatch_order(&spec(rr(&[])), &PriorityLabels::default(), &refs);
            let repos: Vec<&str> = got.iter().map(|d| d.pr.repository.as_str()).collect();
            // Count of each repository's remaining items after each position.
            for (i, repo) in repos.iter().enumerate() {
                let remaining_own = repos[i..].iter().filter(|r| *r == repo).count();
                if remaining_own == 0 { continue; }
                // Before `repo`'s next appearance, no other repository appears twice.
                if let Some(next) = repos[i + 1..].iter().position(|r| r == repo) {
                    let between = &repos[i + 1..i + 1 + next];
                    for other in between {
                        prop_assert!(between.iter().filter(|r| *r == other).count() <= 1);
                    }
                }
            }
        }
    }
}
