use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;
use time::OffsetDateTime;
use time::macros::datetime;

use super::*;
use crate::config::{Settings, parse};

const NOW: OffsetDateTime = datetime!(2026-11-28 12:00 UTC);

fn limits() -> DispatchLimits {
    DispatchLimits {
        reservation_timeout: Duration::from_secs(120),
        orphan_after: Duration::from_secs(15),
        max_attempts: 5,
    }
}

/// Two items on one repository: "a" in pool ns/pa (capacity `cap_a`), "b" in ns/pb (capacity 1).
fn settings(cap_a: u32) -> Settings {
    let item = |name: &str, pipeline: &str, cap: u32| {
        json!({
            "name": name, "events": ["opened", "synchronize"], "full_repository_name": "o/r",
            "callback_url": "http://el:8080",
            "capacity": {"type": "ocp_tekton", "pipeline_name": pipeline, "max_capacity": cap, "namespace": "ns"},
        })
    };
    let v = json!({
        "dispatcher": {"items": [item("a", "pa", cap_a), item("b", "pb", 1)]},
        "security": {"verify_signatures": false},
    });
    let (raw, _) = parse(v).expect("parses");
    Settings::from_raw(raw).expect("valid")
}

fn pool(name: &str) -> PoolKey {
    PoolKey(format!("ns/{name}"))
}

fn pr(n: i64) -> PullRequestRef {
    PullRequestRef {
        repository: "o/r".into(),
        number: n,
    }
}

fn matched(id: i64, pr_number: i64, items: &[&str]) -> MatchedEvent {
    MatchedEvent {
        id: EventId(id),
        pr: pr(pr_number),
        items: items
            .iter()
            .map(|i| MatchedItem {
                item: (*i).into(),
                pool: pool(&format!("p{i}")),
                queued_label: format!("p{i}/queued"),
            })
            .collect(),
    }
}

fn queued(id: i64, event: i64, pr_number: i64, item: &str, position: i64) -> OpenDispatch {
    OpenDispatch {
        id: DispatchId(id),
        event_id: EventId(event),
        item: item.into(),
        pool: pool(&format!("p{item}")),
        pr: pr(pr_number),
        state: DispatchState::Queued,
        queue_position: position,
        attempts: 0,
        next_attempt_at: NOW,
        listener_event_id: None,
        trigger_started_at: None,
        triggered_at: None,
        has_newer: false,
    }
}

fn known(running: u32, seen: &[&str]) -> PoolState {
    PoolState::Known {
        running,
        seen_event_ids: seen.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn pools(a: PoolState, b: PoolState) -> BTreeMap<PoolKey, PoolState> {
    BTreeMap::from([(pool("pa"), a), (pool("pb"), b)])
}

#[test]
fn unmatched_events_are_aborted_and_supersede_nothing() {
    let open = [queued(1, 10, 7, "a", 10)];
    let plan = plan_intake(&[matched(11, 7, &[])], &open);
    assert_eq!(plan.aborted, [EventId(11)]);
    assert!(plan.superseded.is_empty());
    assert!(plan.new_dispatches.is_empty());
    assert_eq!(plan.planned, [EventId(11)]);
}

#[test]
fn newer_event_supersedes_and_keeps_the_queue_position() {
    let open = [queued(1, 10, 7, "a", 4)];
    let plan = plan_intake(&[matched(12, 7, &["a", "b"])], &open);
    assert_eq!(plan.superseded, [DispatchId(1)]);
    let positions: Vec<_> = plan
        .new_dispatches
        .iter()
        .map(|d| (d.item.as_str(), d.queue_position, d.state))
        .collect();
    assert_eq!(
        positions,
        [
            ("a", 4, DispatchState::Queued),
            ("b", 12, DispatchState::Queued)
        ]
    );
}

#[test]
fn within_one_batch_only_the_newest_stays_queued() {
    let plan = plan_intake(
        &[
            matched(21, 3, &["a"]),
            matched(20, 3, &["a"]),
            matched(22, 4, &["a"]),
        ],
        &[],
    );
    let rows: Vec<_> = plan
        .new_dispatches
        .iter()
        .map(|d| (d.event_id.0, d.queue_position, d.state))
        .collect();
    assert_eq!(
        rows,
        [
            (20, 20, DispatchState::Cancelled),
            (21, 20, DispatchState::Queued),
            (22, 22, DispatchState::Queued)
        ]
    );
}

#[test]
fn an_event_planned_after_a_newer_one_never_wins() {
    // Ids are assigned at insert, commits can land in another order.
    let open = [queued(1, 11, 7, "a", 11)];
    let plan = plan_intake(&[matched(10, 7, &["a"])], &open);
    assert!(plan.superseded.is_empty(), "the newer queued event stays");
    assert_eq!(plan.new_dispatches[0].state, DispatchState::Cancelled);

    let mut running = queued(1, 11, 7, "a", 11);
    running.state = DispatchState::Triggered;
    let plan = plan_intake(&[matched(10, 7, &["a"])], &[running]);
    assert_eq!(
        plan.new_dispatches[0].state,
        DispatchState::Cancelled,
        "nor runs after it"
    );
}

#[test]
fn queued_dispatches_with_a_newer_sibling_are_superseded() {
    let s = settings(3);
    let mut stale = queued(1, 10, 7, "a", 10);
    stale.has_newer = true;
    let plan = plan_dispatch(
        &s,
        &[stale, queued(2, 11, 7, "a", 11)],
        &pools(known(0, &[]), known(0, &[])),
        limits(),
        NOW,
    );
    assert_eq!(
        plan.outcomes,
        [DispatchOutcome::Superseded { id: DispatchId(1) }]
    );
    assert_eq!(plan.trigger, [DispatchId(2)]);
}

#[test]
fn in_flight_dispatches_are_never_superseded() {
    let mut running = queued(1, 10, 7, "a", 10);
    running.state = DispatchState::Triggered;
    let plan = plan_intake(&[matched(11, 7, &["a"])], &[running]);
    assert!(plan.superseded.is_empty());
    assert_eq!(plan.new_dispatches[0].queue_position, 11);
}

#[test]
fn fills_free_slots_oldest_first() {
    let s = settings(2);
    let open = [
        queued(3, 30, 3, "a", 30),
        queued(1, 10, 1, "a", 10),
        queued(2, 20, 2, "a", 5),
    ];
    let plan = plan_dispatch(
        &s,
        &open,
        &pools(known(0, &[]), known(0, &[])),
        limits(),
        NOW,
    );
    assert_eq!(plan.trigger, [DispatchId(2), DispatchId(1)]);
    let plan = plan_dispatch(
        &s,
        &open,
        &pools(known(1, &[]), known(0, &[])),
        limits(),
        NOW,
    );
    assert_eq!(plan.trigger, [DispatchId(2)]);
    let plan = plan_dispatch(
        &s,
        &open,
        &pools(known(5, &[]), known(0, &[])),
        limits(),
        NOW,
    );
    assert!(plan.trigger.is_empty());
}

#[test]
fn unknown_pool_state_dispatches_nothing() {
    let s = settings(5);
    let open = [queued(1, 10, 1, "a", 10), queued(2, 11, 1, "b", 11)];
    let plan = plan_dispatch(
        &s,
        &open,
        &pools(
            PoolState::Unknown {
                reason: "api down".into(),
            },
            known(0, &[]),
        ),
        limits(),
        NOW,
    );
    assert_eq!(plan.trigger, [DispatchId(2)]);
    let a = plan
        .usage
        .iter()
        .find(|u| u.pool == pool("pa"))
        .expect("usage of pa");
    assert_eq!(a.blocked.as_deref(), Some("api down"));
}

#[test]
fn reservations_hold_slots_until_seen_or_expired() {
    let s = settings(1);
    let mut triggered = queued(1, 10, 1, "a", 10);
    triggered.state = DispatchState::Triggered;
    triggered.listener_event_id = Some("ev-1".into());
    triggered.triggered_at = Some(NOW - Duration::from_secs(10));
    let open = [triggered.clone(), queued(2, 11, 2, "a", 11)];

    let plan = plan_dispatch(
        &s,
        &open,
        &pools(known(0, &[]), known(0, &[])),
        limits(),
        NOW,
    );
    assert!(plan.trigger.is_empty(), "reservation holds the only slot");
    assert_eq!(plan.next_wakeup, Some(NOW + Duration::from_secs(110)));

    let plan = plan_dispatch(
        &s,
        &open,
        &pools(known(0, &["ev-1"]), known(0, &[])),
        limits(),
        NOW,
    );
    assert_eq!(
        plan.outcomes,
        [DispatchOutcome::Confirmed { id: DispatchId(1) }]
    );
    assert_eq!(
        plan.trigger,
        [DispatchId(2)],
        "seen and already finished: slot is free"
    );

    let plan = plan_dispatch(
        &s,
        &open,
        &pools(known(1, &["ev-1"]), known(0, &[])),
        limits(),
        NOW,
    );
    assert!(
        plan.trigger.is_empty(),
        "seen and running: counted once, by Kubernetes"
    );

    let mut old = triggered;
    old.triggered_at = Some(NOW - Duration::from_secs(121));
    let plan = plan_dispatch(
        &s,
        &[old, queued(2, 11, 2, "a", 11)],
        &pools(known(0, &[]), known(0, &[])),
        limits(),
        NOW,
    );
    assert_eq!(
        plan.trigger,
        [DispatchId(2)],
        "expired reservation frees the slot"
    );
}

#[test]
fn orphaned_triggers_are_retried_after_the_grace_period() {
    let s = settings(1);
    let mut t = queued(1, 10, 1, "a", 10);
    t.state = DispatchState::Triggering;
    t.attempts = 1;
    t.trigger_started_at = Some(NOW - Duration::from_secs(5));
    let plan = plan_dispatch(
        &s,
        std::slice::from_ref(&t),
        &pools(known(0, &[]), known(0, &[])),
        limits(),
        NOW,
    );
    assert!(plan.outcomes.is_empty());
    assert_eq!(plan.next_wakeup, Some(NOW + Duration::from_secs(10)));
    t.trigger_started_at = Some(NOW - Duration::from_secs(16));
    let plan = plan_dispatch(
        &s,
        &[t],
        &pools(known(0, &[]), known(0, &[])),
        limits(),
        NOW,
    );
    assert!(matches!(
        plan.outcomes[..],
        [DispatchOutcome::Retry {
            id: DispatchId(1),
            attempt: 1,
            ..
        }]
    ));
}

#[test]
fn backoff_and_vanished_items() {
    let s = settings(3);
    let mut later = queued(1, 10, 1, "a", 10);
    later.next_attempt_at = NOW + Duration::from_secs(4);
    let gone = queued(2, 11, 2, "zzz", 11);
    let plan = plan_dispatch(
        &s,
        &[later, gone, queued(3, 12, 3, "a", 12)],
        &pools(known(0, &[]), known(0, &[])),
        limits(),
        NOW,
    );
    assert_eq!(plan.trigger, [DispatchId(3)]);
    assert_eq!(plan.next_wakeup, Some(NOW + Duration::from_secs(4)));
    assert!(matches!(
        plan.outcomes[..],
        [DispatchOutcome::Failed {
            id: DispatchId(2),
            ..
        }]
    ));
}

// ---- property tests over a small in-memory model of the store ----

#[derive(Debug, Clone)]
enum Step {
    /// A new event for PR `pr` (1..=5) matching items by mask (bit0 = a, bit1 = b; 0 = unmatched).
    Event { pr: i64, mask: u8 },
    /// `n` running PipelineRuns of pool a finish (pool b's one always does).
    Finish { n: u32 },
    /// A dispatch pass.
    Pass,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1i64..=5, 0u8..4).prop_map(|(pr, mask)| Step::Event { pr, mask }),
        (0u32..3).prop_map(|n| Step::Finish { n }),
        Just(Step::Pass),
    ]
}

#[derive(Default)]
struct Model {
    next_event: i64,
    next_dispatch: i64,
    dispatches: BTreeMap<i64, OpenDispatch>,
    events: Vec<MatchedEvent>,
    unplanned: Vec<MatchedEvent>,
    running: BTreeMap<PoolKey, u32>,
    dispatched: Vec<OpenDispatch>,
}

impl Model {
    fn open(&self) -> Vec<OpenDispatch> {
        self.dispatches
            .values()
            .filter(|d| d.state == DispatchState::Queued)
            .map(|d| {
                let mut d = d.clone();
                d.has_newer = self
                    .dispatches
                    .values()
                    .any(|o| o.pr == d.pr && o.item == d.item && o.event_id > d.event_id);
                d
            })
            .collect()
    }

    fn pass(&mut self, s: &Settings) -> Result<(), TestCaseError> {
        let plan = plan_intake(&self.unplanned, &self.open());
        self.unplanned.clear();
        for id in &plan.superseded {
            let d = self
                .dispatches
                .get_mut(&id.0)
                .ok_or_else(|| TestCaseError::fail("unknown dispatch"))?;
            prop_assert_eq!(
                d.state,
                DispatchState::Queued,
                "only queued dispatches are superseded"
            );
            d.state = DispatchState::Cancelled;
        }
        for nd in plan.new_dispatches {
            self.next_dispatch += 1;
            let d = OpenDispatch {
                id: DispatchId(self.next_dispatch),
                event_id: nd.event_id,
                item: nd.item,
                pool: nd.pool,
                pr: nd.pr,
                state: nd.state,
                queue_position: nd.queue_position,
                attempts: 0,
                next_attempt_at: NOW,
                listener_event_id: None,
                trigger_started_at: None,
                triggered_at: None,
                has_newer: false,
            };
            self.dispatches.insert(d.id.0, d);
        }
        let states: BTreeMap<PoolKey, PoolState> = s
            .pools
            .keys()
            .map(|k| (k.clone(), known(*self.running.get(k).unwrap_or(&0), &[])))
            .collect();
        let open = self.open();
        let plan = plan_dispatch(s, &open, &states, limits(), NOW);

        // Never more than free capacity per pool.
        let mut per_pool: HashMap<&PoolKey, u32> = HashMap::new();
        for id in &plan.trigger {
            *per_pool.entry(&self.dispatches[&id.0].pool).or_default() += 1;
        }
        for (key, n) in &per_pool {
            let free = s.pools[*key]
                .max_capacity
                .saturating_sub(*self.running.get(*key).unwrap_or(&0));
            prop_assert!(*n <= free, "pool {key}: dispatched {n} with {free} free");
        }
        // Free slots go to the oldest waiting work of the pool, and none stay idle while work waits.
        for key in s.pools.keys() {
            let mut waiting: Vec<&OpenDispatch> = open.iter().filter(|d| &d.pool == key).collect();
            waiting.sort_by_key(|d| (d.queue_position, d.id));
            let chosen: Vec<DispatchId> = plan
                .trigger
                .iter()
                .copied()
                .filter(|id| &self.dispatches[&id.0].pool == key)
                .collect();
            let free = s.pools[key]
                .max_capacity
                .saturating_sub(*self.running.get(key).unwrap_or(&0))
                as usize;
            prop_assert_eq!(chosen.len(), free.min(waiting.len()));
            let expected: Vec<DispatchId> =
                waiting.iter().take(chosen.len()).map(|d| d.id).collect();
            prop_assert_eq!(chosen, expected);
        }
        for id in plan.trigger {
            let d = self
                .dispatches
                .get_mut(&id.0)
                .ok_or_else(|| TestCaseError::fail("unknown dispatch"))?;
            d.state = DispatchState::Confirmed;
            *self.running.entry(d.pool.clone()).or_default() += 1;
            self.dispatched.push(d.clone());
        }
        Ok(())
    }
}

proptest! {
    #[test]
    fn planner_properties(steps in proptest::collection::vec(step(), 1..60), cap in 1u32..4) {
        let s = settings(cap);
        let mut m = Model::default();
        for st in steps {
            match st {
                Step::Event { pr: number, mask } => {
                    m.next_event += 1;
                    let items: Vec<&str> =
                        [("a", 1u8), ("b", 2u8)].iter().filter(|(_, bit)| mask & bit != 0).map(|(i, _)| *i).collect();
                    let e = matched(m.next_event, number, &items);
                    m.events.push(e.clone());
                    m.unplanned.push(e);
                }
                Step::Finish { n } => {
                    let r = m.running.entry(pool("pa")).or_default();
                    *r = r.saturating_sub(n);
                    m.running.insert(pool("pb"), 0);
                }
                Step::Pass => m.pass(&s)?,
            }
        }
        m.pass(&s)?;

        // At most one queued dispatch per (PR, item), and it belongs to the newest matching event.
        let mut newest: HashMap<(i64, String), EventId> = HashMap::new();
        for e in &m.events {
            for it in &e.items {
                newest.insert((e.pr.number, it.item.clone()), e.id);
            }
        }
        let mut queued_keys = HashSet::new();
        for d in m.dispatches.values().filter(|d| d.state == DispatchState::Queued) {
            prop_assert!(queued_keys.insert((d.pr.number, d.item.clone())), "two queued for one key");
            prop_assert_eq!(newest[&(d.pr.number, d.item.clone())], d.event_id);
        }
        // An older event is never dispatched after a newer one of the same key.
        for d in &m.dispatched {
            let newer_first = m.dispatched.iter().any(|o| o.pr == d.pr && o.item == d.item && o.event_id > d.event_id && o.id < d.id);
            prop_assert!(!newer_first, "older event dispatched after a newer one");
        }
        // Unmatched events never cancel anything: every cancellation has a newer matching event.
        for d in m.dispatches.values().filter(|d| d.state == DispatchState::Cancelled) {
            let replaced = m.events.iter().any(|e| e.pr == d.pr && e.id > d.event_id && e.items.iter().any(|i| i.item == d.item));
            prop_assert!(replaced, "dispatch {:?} cancelled without a newer matching event", d.id);
        }
        // A superseding dispatch keeps its PR's place: its position is an earlier event of the same key.
        for d in m.dispatches.values() {
            prop_assert!(d.queue_position <= d.event_id.0);
            let same_key = m.events.iter().any(|e| e.id.0 == d.queue_position && e.pr == d.pr && e.items.iter().any(|i| i.item == d.item));
            prop_assert!(same_key, "position {} is not an event of {:?}", d.queue_position, d.pr);
        }
    }
}
